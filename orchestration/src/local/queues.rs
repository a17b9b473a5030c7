//! SqliteQueues: TODO (helper)
pub struct SqliteQueues;
