//! SqliteJobStore: TODO (helper)
pub struct SqliteJobStore;
