//! What a run would cost on AWS: list prices applied to the requests and billed time the
//! run used. The embedded engine counts the requests at its ports ([`crate::meter`]) and
//! times every invocation; this module turns those counts into GB-seconds and dollars.
//!
//! Measured locally, an invocation's duration has no network in it: on AWS every API call a
//! function makes waits a round trip. The model adds [`latency`] per call made inside a
//! function to the measured duration, and models the event-source mapping's own empty
//! polls (`ReceiveMessage` long polls, which AWS bills) instead of counting the local
//! runtime's, which poll far more often than Lambda's pollers do.

use serde::{Deserialize, Serialize};

/// List prices, us-east-1, from `../shared/AWS-FACTS.md` (AWS pricing pages, 2026).
pub mod price {
    /// Lambda: $0.20 per 1M requests.
    pub const LAMBDA_REQUEST_USD: f64 = 0.20 / 1e6;
    /// Lambda on arm64 (the template's architecture): $0.0000133334 per GB-s, billed per ms.
    pub const LAMBDA_GB_S_USD: f64 = 0.000_013_333_4;
    /// SQS standard: $0.40 per 1M requests; each 64 KB chunk of a payload is one request.
    pub const SQS_REQUEST_USD: f64 = 0.40 / 1e6;
    pub const SQS_CHUNK_BYTES: u64 = 64 * 1024;
    /// DynamoDB on-demand: $0.625 per 1M write request units, $0.125 per 1M read units.
    pub const DYNAMODB_WRITE_UNIT_USD: f64 = 0.625 / 1e6;
    pub const DYNAMODB_READ_UNIT_USD: f64 = 0.125 / 1e6;
    /// S3 standard: PUT, COPY, POST, LIST $0.005 per 1,000; GET $0.0004 per 1,000;
    /// DELETE is free.
    pub const S3_WRITE_REQUEST_USD: f64 = 0.005 / 1e3;
    pub const S3_READ_REQUEST_USD: f64 = 0.0004 / 1e3;
    /// Provisioned mode of SQS event-source mappings: $0.00925 per Event Poller Unit-hour,
    /// one SQS event poller per EPU, billed per second with a 1-minute minimum (AWS Lambda
    /// pricing page, aws.amazon.com/lambda/pricing, "Provisioned Mode for Event Source
    /// Mapping (ESM) Pricing", the SQS example, US East (N. Virginia); AWS-FACTS.md says
    /// to check that page for the SQS rate).
    pub const EPU_HOUR_USD: f64 = 0.009_25;
    pub const EPU_MIN_BILLED_S: f64 = 60.0;
}

/// Modelled round-trip times of the AWS APIs from a function in the same Region. These are
/// assumptions, not measurements: DynamoDB documents "single-digit millisecond" latency;
/// S3's performance guidelines give 100–200 ms to first byte for large objects and much
/// less for small ones; SQS calls take tens of milliseconds at the tail. Re-check against
/// CloudWatch once deployed.
pub mod latency {
    pub const SQS_MS: f64 = 10.0;
    pub const DYNAMODB_MS: f64 = 5.0;
    pub const S3_MS: f64 = 30.0;
}

/// How Lambda's pollers read an SQS queue (AWS-FACTS.md: an ESM starts with 5 concurrent
/// batches; pollers long-poll for up to 20 s, and empty receives are billed).
pub mod polling {
    pub const POLLERS_PER_MAPPING: u64 = 5;
    pub const LONG_POLL_S: f64 = 20.0;
}

/// Memory of each function, as `template.yaml` sets it (a test checks they agree).
pub fn memory_mb(function: &str) -> u32 {
    match function {
        "daemon" | "sweeper" | "api" => 256,
        _ => 512,
    }
}

/// Lambda usage of one function.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionUsage {
    pub function: String,
    pub memory_mb: u32,
    /// Invocations billed (throttled batches never ran).
    pub requests: u64,
    /// Billed duration measured here, rounded up per invocation to 1 ms.
    pub measured_ms: u64,
    /// API calls the function made during its invocations, by service.
    pub sqs_calls: u64,
    pub dynamodb_calls: u64,
    pub s3_calls: u64,
}

impl FunctionUsage {
    /// The duration AWS would bill: measured compute plus a modelled round trip per call.
    pub fn modelled_ms(&self) -> f64 {
        self.measured_ms as f64
            + self.sqs_calls as f64 * latency::SQS_MS
            + self.dynamodb_calls as f64 * latency::DYNAMODB_MS
            + self.s3_calls as f64 * latency::S3_MS
    }

    pub fn gb_s(&self) -> f64 {
        self.modelled_ms() / 1e3 * f64::from(self.memory_mb) / 1024.0
    }
}

/// What a run used, in the units AWS bills.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub functions: Vec<FunctionUsage>,
    /// SQS requests made (64 KB chunks counted), without empty receives.
    pub sqs_requests: u64,
    /// Empty receives the event-source mappings' pollers would make (modelled).
    pub sqs_empty_receives: u64,
    pub dynamodb_write_units: u64,
    pub dynamodb_read_units: u64,
    pub s3_write_requests: u64,
    pub s3_read_requests: u64,
}

impl Usage {
    /// Adds the empty long polls of `mappings` event-source mappings over `seconds`.
    pub fn with_polling(mut self, mappings: u64, seconds: f64) -> Self {
        let polls_each = (seconds / polling::LONG_POLL_S).ceil().max(1.0) as u64;
        self.sqs_empty_receives += mappings * polling::POLLERS_PER_MAPPING * polls_each;
        self
    }

    /// Adds the empty long polls of a job of `stages` stages over `seconds`: one mapping
    /// per stage, and the daemon's on the control queue.
    pub fn with_job_polling(self, stages: usize, seconds: f64) -> Self {
        self.with_polling(stages as u64 + 1, seconds)
    }

    pub fn estimate(&self) -> Estimate {
        let requests: u64 = self.functions.iter().map(|f| f.requests).sum();
        let gb_s: f64 = self.functions.iter().map(FunctionUsage::gb_s).sum();
        let billed_s = self
            .functions
            .iter()
            .map(FunctionUsage::modelled_ms)
            .sum::<f64>()
            / 1e3;
        let lambda_usd =
            requests as f64 * price::LAMBDA_REQUEST_USD + gb_s * price::LAMBDA_GB_S_USD;
        let sqs_usd = (self.sqs_requests + self.sqs_empty_receives) as f64 * price::SQS_REQUEST_USD;
        let dynamodb_usd = self.dynamodb_write_units as f64 * price::DYNAMODB_WRITE_UNIT_USD
            + self.dynamodb_read_units as f64 * price::DYNAMODB_READ_UNIT_USD;
        let s3_usd = self.s3_write_requests as f64 * price::S3_WRITE_REQUEST_USD
            + self.s3_read_requests as f64 * price::S3_READ_REQUEST_USD;
        Estimate {
            lambda_requests: requests,
            lambda_billed_s: billed_s,
            lambda_gb_s: gb_s,
            lambda_usd,
            sqs_usd,
            dynamodb_usd,
            s3_usd,
            epu_hours: 0.0,
            pollers_usd: 0.0,
            total_usd: lambda_usd + sqs_usd + dynamodb_usd + s3_usd,
        }
    }
}

/// The dollar estimate of a [`Usage`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub lambda_requests: u64,
    /// Modelled billed duration, summed over invocations (the paper's "billed time").
    pub lambda_billed_s: f64,
    pub lambda_gb_s: f64,
    pub lambda_usd: f64,
    pub sqs_usd: f64,
    pub dynamodb_usd: f64,
    pub s3_usd: f64,
    /// Event pollers of mappings in provisioned mode (poller-hours, and their price).
    #[serde(default)]
    pub epu_hours: f64,
    #[serde(default)]
    pub pollers_usd: f64,
    pub total_usd: f64,
}

impl Estimate {
    /// Adds `epu_hours` of provisioned event pollers.
    pub fn with_pollers(mut self, epu_hours: f64) -> Self {
        let usd = epu_hours * price::EPU_HOUR_USD;
        self.epu_hours += epu_hours;
        self.pollers_usd += usd;
        self.total_usd += usd;
        self
    }
}

/// One stage's Lambda usage and cost, from its invocation statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageCost {
    pub stage: String,
    pub function: String,
    pub memory_mb: u32,
    pub requests: u64,
    pub billed_s: f64,
    pub gb_s: f64,
    pub usd: f64,
}

/// A job's Lambda cost at list prices: its invocations and their billed time (measured,
/// without [`latency`]'s modelled round trips), per stage. Its queue, table and bucket
/// requests are metered per engine, not per job, so they are not in it; `sluice run` prints
/// a lone job's whole bill.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LambdaCost {
    pub requests: u64,
    pub billed_s: f64,
    pub gb_s: f64,
    pub usd: f64,
    pub stages: Vec<StageCost>,
    /// The prices applied: USD per request, per GB-s.
    pub request_usd: f64,
    pub gb_s_usd: f64,
}

/// The Lambda cost of a job's stages; `None` without statistics.
pub fn lambda_cost(stats: &[crate::ports::StageStats]) -> Option<LambdaCost> {
    if stats.is_empty() {
        return None;
    }
    let stages: Vec<StageCost> = stats
        .iter()
        .map(|s| {
            let memory_mb = memory_mb(&s.function);
            let billed_s = s.billed_ms as f64 / 1e3;
            let gb_s = billed_s * f64::from(memory_mb) / 1024.0;
            // Throttled batches never ran: not billed.
            let requests = s.invocations.saturating_sub(s.throttles);
            StageCost {
                stage: s.stage.clone(),
                function: s.function.clone(),
                memory_mb,
                requests,
                billed_s,
                gb_s,
                usd: requests as f64 * price::LAMBDA_REQUEST_USD + gb_s * price::LAMBDA_GB_S_USD,
            }
        })
        .collect();
    Some(LambdaCost {
        requests: stages.iter().map(|s| s.requests).sum(),
        billed_s: stages.iter().map(|s| s.billed_s).sum(),
        gb_s: stages.iter().map(|s| s.gb_s).sum(),
        usd: stages.iter().map(|s| s.usd).sum(),
        stages,
        request_usd: price::LAMBDA_REQUEST_USD,
        gb_s_usd: price::LAMBDA_GB_S_USD,
    })
}

/// DynamoDB write request units of one write of an item of `bytes` (1 KB each, rounded up).
pub fn write_units(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(1024).max(1)
}

/// Strongly consistent read units of reading `bytes` (4 KB each, rounded up).
pub fn read_units(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4096).max(1)
}

/// SQS requests one call carrying `bytes` of payload is billed as.
pub fn sqs_chunks(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(price::SQS_CHUNK_BYTES).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_up_as_aws_bills_them() {
        assert_eq!(write_units(0), 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(read_units(4096), 1);
        assert_eq!(read_units(4097), 2);
        assert_eq!(sqs_chunks(10), 1);
        assert_eq!(sqs_chunks(64 * 1024), 1);
        assert_eq!(sqs_chunks(64 * 1024 + 1), 2);
        assert_eq!(sqs_chunks(256 * 1024), 4);
    }

    #[test]
    fn a_million_requests_of_each_kind_costs_the_list_price() {
        let usage = Usage {
            functions: vec![FunctionUsage {
                function: "count".into(),
                memory_mb: 1024,
                requests: 1_000_000,
                measured_ms: 1_000_000, // 1,000 s at 1 GB
                ..Default::default()
            }],
            sqs_requests: 1_000_000,
            sqs_empty_receives: 0,
            dynamodb_write_units: 1_000_000,
            dynamodb_read_units: 1_000_000,
            s3_write_requests: 1_000,
            s3_read_requests: 1_000,
        };
        let e = usage.estimate();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(e.lambda_gb_s, 1_000.0));
        assert!(close(e.lambda_usd, 0.20 + 0.0133334), "{}", e.lambda_usd);
        assert!(close(e.sqs_usd, 0.40));
        assert!(close(e.dynamodb_usd, 0.625 + 0.125));
        assert!(close(e.s3_usd, 0.005 + 0.0004));
        assert!(close(
            e.total_usd,
            e.lambda_usd + e.sqs_usd + e.dynamodb_usd + e.s3_usd
        ));
    }

    #[test]
    fn calls_inside_a_function_add_their_round_trips_to_its_billed_time() {
        let f = FunctionUsage {
            function: "reduce".into(),
            memory_mb: 512,
            requests: 1,
            measured_ms: 3,
            sqs_calls: 1,
            dynamodb_calls: 2,
            s3_calls: 1,
        };
        let want = 3.0 + latency::SQS_MS + 2.0 * latency::DYNAMODB_MS + latency::S3_MS;
        assert!((f.modelled_ms() - want).abs() < 1e-9);
        assert!((f.gb_s() - want / 1e3 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn provisioned_pollers_cost_their_poller_hours() {
        let e = Usage::default().estimate();
        assert_eq!(e.total_usd, 0.0);
        // 100 pollers for 6 minutes: 10 EPU-hours.
        let e = e.with_pollers(10.0);
        assert!((e.pollers_usd - 0.0925).abs() < 1e-12, "{e:?}");
        assert!((e.total_usd - 0.0925).abs() < 1e-12);
        assert_eq!(e.epu_hours, 10.0);
    }

    #[test]
    fn a_jobs_lambda_cost_is_its_billed_time_at_list_prices() {
        assert_eq!(lambda_cost(&[]), None);
        let stats = [crate::ports::StageStats {
            stage: "count".into(),
            function: "count".into(),
            invocations: 1_000_001,
            throttles: 1,
            billed_ms: 2_048_000, // 2,048 s at 512 MB: 1,024 GB-s
            ..Default::default()
        }];
        let c = lambda_cost(&stats).unwrap();
        assert_eq!(c.requests, 1_000_000);
        assert!((c.gb_s - 1_024.0).abs() < 1e-9);
        let want = 0.20 + 1_024.0 * price::LAMBDA_GB_S_USD;
        assert!((c.usd - want).abs() < 1e-9, "{}", c.usd);
        assert_eq!(c.stages.len(), 1);
    }

    #[test]
    fn empty_polls_are_modelled_per_mapping_and_long_poll() {
        let u = Usage::default().with_polling(4, 41.0);
        assert_eq!(u.sqs_empty_receives, 4 * polling::POLLERS_PER_MAPPING * 3);
        let u = Usage::default().with_polling(4, 0.2);
        assert_eq!(u.sqs_empty_receives, 4 * polling::POLLERS_PER_MAPPING);
    }
}
