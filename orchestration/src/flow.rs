//! Flows: a job type's ordered stages, and the registry of job types.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::components::{Reduce, Source, Transform};
use crate::job::{JobId, JobRequest, ValidationError};

/// The Lambda functions of a deployment. A stage runs in the function of its component's
/// role; one function serves every job's stages of that role: a source (planning and
/// emitting partitions), a transform (any job's record steps: a word count's filter and
/// count, a pipeline's steps), a reduce (the ledger's fold, a keyed job's merges).
/// (Named after the word count's stages before: feed, filter, count; those names are read
/// as the roles they were.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    #[serde(alias = "feed")]
    Source,
    #[serde(alias = "filter", alias = "count")]
    Transform,
    Reduce,
    Daemon,
}

impl Function {
    pub const STAGE_FUNCTIONS: [Function; 3] = [Self::Source, Self::Transform, Self::Reduce];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Transform => "transform",
            Self::Reduce => "reduce",
            Self::Daemon => "daemon",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Function {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "feed" => return Ok(Self::Source),
            "filter" | "count" => return Ok(Self::Transform),
            _ => {}
        }
        [Self::Source, Self::Transform, Self::Reduce, Self::Daemon]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown function `{s}`"))
    }
}

#[derive(Clone)]
pub enum Step {
    Source(Arc<dyn Source>),
    Transform(Arc<dyn Transform>),
    Reduce(Arc<dyn Reduce>),
    /// A keyed flow's last stage: reduce partition `r` of the shuffle, merged and sorted.
    Merge,
}

#[derive(Clone)]
pub struct Stage {
    /// Unique within the flow; names the stage's queue.
    pub name: String,
    pub function: Function,
    /// The component's name (`synthetic-text`, `word-count`, ...), for humans.
    pub component: &'static str,
    pub step: Step,
}

/// A validated job's pipeline: a source, transforms, and a reduce, in that order (and, for
/// a keyed flow, the merge of its reduce partitions).
#[derive(Clone)]
pub struct Flow {
    pub stages: Vec<Stage>,
    /// The job's input size n (messages, records): what static policies scale with.
    pub size: u64,
    /// The partials' keyed fields (counts per word, per city): shuffled into reduce
    /// partitions and merged into result objects, never held in one item.
    pub keyed: Option<crate::keyed::Spec>,
}

impl Flow {
    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().find(|(_, s)| s.name == name)
    }

    pub fn source(&self) -> Option<&Arc<dyn Source>> {
        match self.stages.first().map(|s| &s.step) {
            Some(Step::Source(source)) => Some(source),
            _ => None,
        }
    }

    pub fn reduce(&self) -> Option<&Arc<dyn Reduce>> {
        self.stages.iter().rev().find_map(|s| match &s.step {
            Step::Reduce(reduce) => Some(reduce),
            _ => None,
        })
    }

    /// The index of the reduce stage.
    pub fn reduce_index(&self) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| matches!(s.step, Step::Reduce(_)))
    }

    /// The merge stage of a keyed flow.
    pub fn merge_stage(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| matches!(s.step, Step::Merge))
    }

    /// Makes the flow keyed: its reduce's partials carry `spec`'s fields as maps, shuffled
    /// and merged by a `merge` stage in the reduce function.
    pub fn keyed(mut self, spec: crate::keyed::Spec) -> Self {
        self.stages.push(Stage {
            name: "merge".into(),
            function: Function::Reduce,
            component: "merge",
            step: Step::Merge,
        });
        self.keyed = Some(spec);
        self
    }
}

/// A kind of job: its parameters and its flow. Adding a job type means implementing this
/// and listing it in [`Registry::default`]; the engine does not change.
pub trait JobType: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bump when the flow's output for the same params changes: it is part of the job id.
    fn flow_version(&self) -> u32;
    /// Checks the params and returns them normalized (defaults filled in).
    fn normalize(&self, params: &Value) -> Result<Value, ValidationError>;
    /// Builds the flow from normalized params.
    fn flow(&self, params: &Value) -> Result<Flow, ValidationError>;
    /// A job that is the merge of other jobs (the per-day parts of a date range, say)
    /// returns their requests. Each part is a job of its own, cached under its own id and
    /// shared with every other job that needs it; the daemon submits the parts, waits for
    /// them, and folds their results with this job's reduce. `None`: the job runs its flow.
    fn parts(&self, _params: &Value) -> Result<Option<Vec<JobRequest>>, ValidationError> {
        Ok(None)
    }
    /// The params as a JSON Schema (`type`, `properties`, `minimum`, `maximum`,
    /// `maxLength`, `default`, `description`, `examples`): what a form is built from
    /// (`GET /job-types`). Validation stays in [`JobType::normalize`]; `jobs::tests` checks
    /// that the two name the same fields. Without properties a form takes the params as JSON.
    fn params_schema(&self) -> Value {
        serde_json::json!({ "type": "object" })
    }
    /// A job type written as data returns its canonical definition: it is part of the job
    /// id, so an edited definition never serves a result the old one computed.
    fn definition(&self) -> Option<Value> {
        None
    }
    /// The scaling policy and least coverage a request without its own runs with (a
    /// definition's `settings`); `None`: the API's defaults.
    fn default_options(&self, _params: &Value) -> (Option<crate::policy::Policy>, Option<f64>) {
        (None, None)
    }
}

/// A request that passed validation: its normalized params and its id.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRequest {
    pub request: JobRequest,
    pub id: JobId,
}

#[derive(Clone)]
pub struct Registry {
    types: Vec<Arc<dyn JobType>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        let mut types: Vec<Arc<dyn JobType>> = vec![
            Arc::new(crate::jobs::Wordcount),
            Arc::new(crate::jobs::FireTweets),
            Arc::new(crate::pipeline::AdHocPipeline),
        ];
        types.extend(crate::pipeline::shipped_types());
        Self { types }
    }
}

impl Registry {
    /// This registry with the pipelines of `dir` (`*.toml`), which replace shipped ones of
    /// the same name: what `sluice` runs when the project's `pipelines/` is at hand, so an
    /// edited definition runs without a rebuild. A file that does not compile is an error.
    pub fn with_pipelines_in(mut self, dir: &std::path::Path) -> Result<Self, String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(self);
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let pipeline = crate::pipeline::Pipeline::from_toml(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let named = crate::pipeline::NamedPipeline::new(pipeline);
            self.types.retain(|t| t.name() != named.name());
            self.types.push(Arc::new(named));
        }
        Ok(self)
    }

    /// A registry of exactly these job types.
    pub fn new(types: Vec<Arc<dyn JobType>>) -> Self {
        Self { types }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|t| t.name()).collect()
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn JobType>, ValidationError> {
        self.types.iter().find(|t| t.name() == name).ok_or_else(|| {
            ValidationError::new(
                "type",
                format!(
                    "unknown job type `{name}`; known types: {}",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// Validates a request and computes its id.
    pub fn validate(&self, request: &JobRequest) -> Result<ValidRequest, ValidationError> {
        let job_type = self.get(&request.job_type)?;
        let params = job_type.normalize(&request.params)?;
        let id = match job_type.definition() {
            Some(definition) => JobId::compute_with(
                job_type.name(),
                &params,
                job_type.flow_version(),
                &definition,
            ),
            None => JobId::compute(job_type.name(), &params, job_type.flow_version()),
        };
        Ok(ValidRequest {
            request: JobRequest {
                job_type: request.job_type.clone(),
                params,
            },
            id,
        })
    }

    /// The flow of an already validated (normalized) request.
    pub fn flow(&self, request: &JobRequest) -> Result<Flow, ValidationError> {
        self.get(&request.job_type)?.flow(&request.params)
    }

    /// Each job type's name and params schema, in registry order.
    pub fn schemas(&self) -> Vec<(&'static str, Value)> {
        self.types
            .iter()
            .map(|t| (t.name(), t.params_schema()))
            .collect()
    }

    /// The parts of a composite request (see [`JobType::parts`]).
    pub fn parts(&self, request: &JobRequest) -> Result<Option<Vec<JobRequest>>, ValidationError> {
        self.get(&request.job_type)?.parts(&request.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_type_lists_known_ones() {
        let err = Registry::default()
            .validate(&JobRequest {
                job_type: "nope".into(),
                params: json!({}),
            })
            .unwrap_err();
        assert_eq!(err.field, "type");
        assert!(err.message.contains("wordcount"), "{err}");
    }

    #[test]
    fn defaults_do_not_change_the_id() {
        let r = Registry::default();
        let a = r
            .validate(&JobRequest {
                job_type: "wordcount".into(),
                params: json!({"messages": 10}),
            })
            .unwrap();
        let b = r
            .validate(&JobRequest {
                job_type: "wordcount".into(),
                params: json!({"messages": 10, "text": "the quick brown fox"}),
            })
            .unwrap();
        assert_eq!(a.id, b.id);
    }

    #[test]
    fn function_names_round_trip() {
        for f in Function::STAGE_FUNCTIONS {
            assert_eq!(f.as_str().parse::<Function>().unwrap(), f);
        }
    }
}
