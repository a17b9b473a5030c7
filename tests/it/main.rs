//! End-to-end tests: the `sluice` binary and the embedded engine, as a user drives them.

mod api;
mod aws;
mod bench;
mod cli;
mod contract;
mod dashboard;
mod engine;
mod keyed;
mod moto;
mod pipelines;
mod real_tweets;
mod signed;
mod simulate;
mod support;
mod template;
mod tweets;
