//! sluice orchestration: everything that is not an entry point.
//!
//! Codemap:
//! - [`ports`]: the capabilities the core needs (`JobStore`, `Queues`, `Blobs`, `Mappings`).
//! - [`local`]: the embedded engine's adapters on SQLite and files, and the local ESM runtime.

pub mod ports;
pub mod local;
