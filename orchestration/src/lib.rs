//! sluice orchestration: everything that is not an entry point.
//!
//! Codemap:
//! - [`api`]: the job API as one function from request to response (HTTP-agnostic).
//! - [`aws`]: the ports over aws-sdk-rust (DynamoDB, SQS, S3, Lambda), the deployment's
//!   configuration, and provisioning for an emulator.
//! - [`job`]: requests, validation, the job id, the job lifecycle.
//! - [`flow`]: flows (ordered stages), the Lambda functions, the job-type registry.
//! - [`jobs`]: the job types sluice ships (`wordcount`, `fire-tweets`).
//! - [`components`]: reusable sources, transforms and reduces.
//! - [`jsonl`]: reading only the fields a job needs from JSON lines (sonic-rs, SIMD).
//! - [`tweets`]: tweets in the Twitter v1.1 format: reading, keyword matching, dates, and
//!   the generator behind `sluice gen tweets`.
//! - [`envelope`]: the message every stage queue carries; claim-checks for large payloads.
//! - [`policy`]: scaling policies, pure functions from observation to levers.
//! - [`cost`]: the AWS cost model: list prices applied to a run's requests and billed time.
//! - [`meter`]: port decorators that count requests in AWS's billing units.
//! - [`metrics`]: CloudWatch Embedded Metric Format lines (the alarms' metrics).
//! - [`ledger`]: exactly-once aggregation (partition markers + aggregate in one transaction).
//! - [`keyed`]: keyed aggregation: map-side combining, the shuffle into R reduce partitions
//!   through the blob store, merging, sorted result objects and their pages.
//! - [`reserve`]: reserved concurrency across jobs (grants under one budget, first come
//!   first served, conditional writes).
//! - [`sim`]: a discrete-event model of AWS running the real policy and reservation code.
//! - [`record`]: the stored job record and the store's key layout.
//! - [`services`]: settings and the ports bundle handed to every handler; the tick message.
//! - [`faults`]: fault injection (`duplicate`, `crash`, `daemon-crash`, `poison`).
//! - [`status`]: a job as seen from outside (progress per stage, timings, coverage).
//! - [`submit`]: one job per request (conditional create; join, cache or restart).
//! - [`sweeper`]: the scheduled safety net: restarts silent daemons, deletes leaked queues.
//! - [`worker`]: stage batch handling (`SqsEvent` in, `SqsBatchResponse` out).
//! - [`daemon`]: the per-job daemon, one tick at a time, fenced by a lease.
//! - [`ports`]: the capabilities the core needs (`JobStore`, `Queues`, `Blobs`, `Mappings`).
//! - [`local`]: the embedded engine's adapters on SQLite and files, and the local ESM runtime.

pub mod api;
pub mod aws;
pub mod components;
pub mod cost;
pub mod cpu;
pub mod daemon;
pub mod envelope;
pub mod faults;
pub mod flow;
pub mod job;
pub mod jobs;
pub mod jsonl;
pub mod keyed;
pub mod ledger;
pub mod local;
pub mod meter;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod record;
pub mod reserve;
pub mod services;
pub mod sim;
pub mod status;
pub mod submit;
pub mod sweeper;
pub mod timeline;
pub mod tweets;
pub mod worker;
