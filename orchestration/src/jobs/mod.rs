//! The job types sluice ships. Each is a parameter schema plus a flow of components.

mod wordcount;

pub use wordcount::Wordcount;
