//! SqliteMappings: TODO (helper)
pub struct SqliteMappings;
