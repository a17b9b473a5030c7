//! End-to-end tests: the `sluice` binary and the embedded engine, as a user drives them.

mod api;
mod cli;
mod engine;
mod support;
mod tweets;
