//! [`Mappings`] over the AWS Lambda control plane: SQS event-source mappings and function
//! reserved concurrency.
//!
//! Functions are named by their logical names in the port (`feed`, `daemon`) and deployed as
//! `{prefix}-{name}`. Mappings are tagged with the job, attempt and stage they belong to.
//!
//! Against an emulator that cannot run functions ([`Triggers::Local`]), a mapping must never
//! be enabled in the emulator (moto would receive the queue's messages itself, inside every
//! `SendMessage`, and push them to the DLQ): the mapping is created disabled there, the local
//! ESM runtime polls the queue, and the enabled state the caller asked for lives in the tag
//! `sluice:enabled`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::types::{FunctionResponseType, ProvisionedPollerConfig, ScalingConfig};
use aws_sdk_lambda::Client;
use tracing::debug;

use super::config::{function_name, logical_function};
use super::sqs::SqsQueues;
use crate::ports::{
    Mapping, MappingConfig, MappingError, Mappings, ProvisionedPollers, QueueError,
};

/// Who runs the mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Triggers {
    /// Lambda polls the queues (a real deployment).
    Lambda,
    /// A local ESM runtime polls them; the emulator's mappings stay disabled.
    Local,
}

const ENABLED_TAG: &str = "sluice:enabled";

pub struct LambdaMappings {
    client: Client,
    queues: Arc<SqsQueues>,
    prefix: String,
    triggers: Triggers,
    /// The most reserved concurrency one function may be given: the account's concurrency
    /// less the 100 that must stay unreserved (AWS-FACTS.md).
    max_reserved: u32,
    /// Tags by mapping ARN: they never change except `sluice:enabled`, which we write.
    tags: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

/// The fields of a mapping the port needs, from any of the SDK's mapping shapes.
struct Raw {
    uuid: Option<String>,
    arn: Option<String>,
    function_arn: Option<String>,
    source_arn: Option<String>,
    batch_size: Option<i32>,
    window: Option<i32>,
    max_concurrency: Option<i32>,
    /// `ProvisionedPollerConfig`'s (MinimumPollers, MaximumPollers).
    pollers: Option<(Option<i32>, Option<i32>)>,
    state: Option<String>,
}

macro_rules! raw_from {
    ($($t:ty),*) => {$(
        impl From<&$t> for Raw {
            fn from(m: &$t) -> Self {
                Raw {
                    uuid: m.uuid().map(str::to_owned),
                    arn: m.event_source_mapping_arn().map(str::to_owned),
                    function_arn: m.function_arn().map(str::to_owned),
                    source_arn: m.event_source_arn().map(str::to_owned),
                    batch_size: m.batch_size(),
                    window: m.maximum_batching_window_in_seconds(),
                    max_concurrency: m.scaling_config().and_then(|s| s.maximum_concurrency()),
                    pollers: m
                        .provisioned_poller_config()
                        .map(|p| (p.minimum_pollers(), p.maximum_pollers())),
                    state: m.state().map(str::to_owned),
                }
            }
        }
    )*};
}

raw_from!(
    aws_sdk_lambda::operation::create_event_source_mapping::CreateEventSourceMappingOutput,
    aws_sdk_lambda::operation::update_event_source_mapping::UpdateEventSourceMappingOutput,
    aws_sdk_lambda::types::EventSourceMappingConfiguration
);

fn backend<E, R>(what: &str, e: SdkError<E, R>) -> MappingError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("InvalidParameterValueException") => {
            MappingError::Invalid(format!("{what}: {}", DisplayErrorContext(&e)))
        }
        _ => MappingError::Backend(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

fn queue_error(e: QueueError) -> MappingError {
    match e {
        QueueError::NoSuchQueue(q) => MappingError::Invalid(format!("no such queue: {q}")),
        other => MappingError::Backend(other.to_string()),
    }
}

fn scaling_config(max_concurrency: u32) -> ScalingConfig {
    ScalingConfig::builder()
        .maximum_concurrency(max_concurrency as i32)
        .build()
}

fn poller_config(p: ProvisionedPollers) -> ProvisionedPollerConfig {
    ProvisionedPollerConfig::builder()
        .minimum_pollers(p.minimum as i32)
        .maximum_pollers(p.maximum as i32)
        .build()
}

fn is_not_found(code: Option<&str>) -> bool {
    code == Some("ResourceNotFoundException")
}

impl LambdaMappings {
    pub fn new(
        client: Client,
        queues: Arc<SqsQueues>,
        prefix: impl Into<String>,
        triggers: Triggers,
        account_concurrency: u32,
    ) -> Self {
        Self {
            client,
            queues,
            prefix: prefix.into(),
            triggers,
            max_reserved: account_concurrency.saturating_sub(100),
            tags: Mutex::new(HashMap::new()),
        }
    }

    pub fn triggers(&self) -> Triggers {
        self.triggers
    }

    fn physical(&self, function: &str) -> String {
        function_name(&self.prefix, function)
    }

    /// The mapping's tags; `None` when it was deleted after it was listed (a sweeper or
    /// another daemon may delete it at any time).
    async fn tags_of(&self, arn: &str) -> Result<Option<BTreeMap<String, String>>, MappingError> {
        if let Some(tags) = self.tags.lock().ok().and_then(|t| t.get(arn).cloned()) {
            return Ok(Some(tags));
        }
        let out = match self.client.list_tags().resource(arn).send().await {
            Ok(out) => out,
            Err(e) if is_not_found(e.code()) => return Ok(None),
            Err(e) => return Err(backend("ListTags", e)),
        };
        let tags: BTreeMap<String, String> = out.tags.unwrap_or_default().into_iter().collect();
        if let Ok(mut cache) = self.tags.lock() {
            cache.insert(arn.to_owned(), tags.clone());
        }
        Ok(Some(tags))
    }

    /// The port's view of a mapping; `None` for a mapping being deleted or one that is not
    /// this deployment's.
    async fn mapping(&self, raw: Raw) -> Result<Option<Mapping>, MappingError> {
        if raw.state.as_deref() == Some("Deleting") {
            return Ok(None);
        }
        let (Some(id), Some(source_arn), Some(function_arn)) =
            (raw.uuid, raw.source_arn, raw.function_arn)
        else {
            return Ok(None);
        };
        let Some(function) = logical_function(&self.prefix, &function_arn) else {
            return Ok(None);
        };
        let mut tags = match &raw.arn {
            Some(arn) => match self.tags_of(arn).await? {
                Some(tags) => tags,
                // Deleted since it was listed.
                None => return Ok(None),
            },
            None => BTreeMap::new(),
        };
        let enabled = match self.triggers {
            Triggers::Lambda => matches!(
                raw.state.as_deref(),
                Some("Enabled" | "Enabling" | "Creating" | "Updating")
            ),
            Triggers::Local => tags.get(ENABLED_TAG).is_some_and(|v| v == "true"),
        };
        tags.remove(ENABLED_TAG);
        let queue_url = match self.queues.queue_url_for_arn(&source_arn).await {
            Ok(Some(url)) => url,
            // The queue is gone (a torn-down job): the mapping is a leftover to delete.
            Ok(None) => source_arn.clone(),
            Err(e) => return Err(queue_error(e)),
        };
        Ok(Some(Mapping {
            id,
            queue_url,
            function: function.to_owned(),
            config: MappingConfig {
                batch_size: raw.batch_size.unwrap_or(10).max(0) as u32,
                batching_window_secs: raw.window.unwrap_or(0).max(0) as u32,
                max_concurrency: raw.max_concurrency.map(|n| n.max(0) as u32),
                provisioned_pollers: raw.pollers.and_then(|p| match p {
                    // An empty structure is provisioned mode switched off.
                    (Some(minimum), Some(maximum)) => Some(ProvisionedPollers {
                        minimum: minimum.max(0) as u32,
                        maximum: maximum.max(0) as u32,
                    }),
                    _ => None,
                }),
                enabled,
            },
            tags,
        }))
    }

    /// What the service is told to do with `config.enabled`.
    fn service_enabled(&self, config: &MappingConfig) -> bool {
        config.enabled && self.triggers == Triggers::Lambda
    }
}

#[async_trait]
impl Mappings for LambdaMappings {
    async fn create_mapping(
        &self,
        queue_url: &str,
        function: &str,
        config: MappingConfig,
        mut tags: BTreeMap<String, String>,
    ) -> Result<Mapping, MappingError> {
        config.validate()?;
        let source_arn = self
            .queues
            .queue_arn(queue_url)
            .await
            .map_err(queue_error)?;
        if self.triggers == Triggers::Local {
            tags.insert(ENABLED_TAG.into(), config.enabled.to_string());
        }
        let out = self
            .client
            .create_event_source_mapping()
            .event_source_arn(&source_arn)
            .function_name(self.physical(function))
            .batch_size(config.batch_size as i32)
            .maximum_batching_window_in_seconds(config.batching_window_secs as i32)
            .set_scaling_config(config.max_concurrency.map(scaling_config))
            .set_provisioned_poller_config(config.provisioned_pollers.map(poller_config))
            .function_response_types(FunctionResponseType::ReportBatchItemFailures)
            .enabled(self.service_enabled(&config))
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| backend("CreateEventSourceMapping", e))?;
        let raw = Raw::from(&out);
        if let (Some(arn), Ok(mut cache)) = (&raw.arn, self.tags.lock()) {
            cache.insert(arn.clone(), tags);
        }
        self.mapping(raw).await?.ok_or_else(|| {
            MappingError::Backend("CreateEventSourceMapping: incomplete answer".into())
        })
    }

    async fn update_mapping(
        &self,
        id: &str,
        config: MappingConfig,
    ) -> Result<Mapping, MappingError> {
        config.validate()?;
        let out = self
            .client
            .update_event_source_mapping()
            .uuid(id)
            .batch_size(config.batch_size as i32)
            .maximum_batching_window_in_seconds(config.batching_window_secs as i32)
            // Both, always: the one not in use goes as an empty structure, which clears it,
            // so a mapping switches between MaximumConcurrency and provisioned mode in one
            // call (AWS refuses the two together).
            .scaling_config(
                config
                    .max_concurrency
                    .map_or_else(|| ScalingConfig::builder().build(), scaling_config),
            )
            .provisioned_poller_config(
                config
                    .provisioned_pollers
                    .map_or_else(|| ProvisionedPollerConfig::builder().build(), poller_config),
            )
            .enabled(self.service_enabled(&config))
            .send()
            .await
            .map_err(|e| {
                if is_not_found(e.code()) {
                    MappingError::NotFound(id.to_owned())
                } else {
                    backend("UpdateEventSourceMapping", e)
                }
            })?;
        let raw = Raw::from(&out);
        if self.triggers == Triggers::Local {
            if let Some(arn) = &raw.arn {
                let wanted = config.enabled.to_string();
                let Some(tags) = self.tags_of(arn).await? else {
                    return Err(MappingError::NotFound(id.to_owned()));
                };
                if tags.get(ENABLED_TAG) != Some(&wanted) {
                    self.client
                        .tag_resource()
                        .resource(arn)
                        .tags(ENABLED_TAG, &wanted)
                        .send()
                        .await
                        .map_err(|e| backend("TagResource", e))?;
                    if let Ok(mut cache) = self.tags.lock() {
                        cache
                            .entry(arn.clone())
                            .or_default()
                            .insert(ENABLED_TAG.into(), wanted);
                    }
                }
            }
        }
        self.mapping(raw)
            .await?
            .ok_or_else(|| MappingError::NotFound(id.to_owned()))
    }

    async fn delete_mapping(&self, id: &str) -> Result<(), MappingError> {
        match self
            .client
            .delete_event_source_mapping()
            .uuid(id)
            .send()
            .await
        {
            Ok(out) => {
                if let (Some(arn), Ok(mut cache)) =
                    (out.event_source_mapping_arn(), self.tags.lock())
                {
                    cache.remove(arn);
                }
                Ok(())
            }
            Err(e) if is_not_found(e.code()) => Ok(()),
            Err(e) => Err(backend("DeleteEventSourceMapping", e)),
        }
    }

    async fn list_mappings(&self, queue_url: Option<&str>) -> Result<Vec<Mapping>, MappingError> {
        let source_arn = match queue_url {
            Some(url) => match self.queues.queue_arn(url).await {
                Ok(arn) => Some(arn),
                // No queue, so no mapping reads it.
                Err(QueueError::NoSuchQueue(_)) => return Ok(Vec::new()),
                Err(e) => return Err(queue_error(e)),
            },
            None => None,
        };
        let mut raws = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_event_source_mappings()
                .set_event_source_arn(source_arn.clone())
                .max_items(100)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| backend("ListEventSourceMappings", e))?;
            raws.extend(out.event_source_mappings().iter().map(Raw::from));
            marker = out.next_marker;
            if marker.is_none() {
                break;
            }
        }
        let mut mappings = Vec::with_capacity(raws.len());
        for raw in raws {
            if let Some(m) = self.mapping(raw).await? {
                mappings.push(m);
            }
        }
        mappings.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(mappings)
    }

    async fn put_reserved_concurrency(&self, function: &str, n: u32) -> Result<(), MappingError> {
        if n > self.max_reserved {
            return Err(MappingError::Invalid(format!(
                "reserved concurrency {n} for {function} exceeds {}: the account's concurrency \
                 less the 100 that must stay unreserved",
                self.max_reserved
            )));
        }
        self.client
            .put_function_concurrency()
            .function_name(self.physical(function))
            .reserved_concurrent_executions(n as i32)
            .send()
            .await
            .map_err(|e| backend("PutFunctionConcurrency", e))?;
        Ok(())
    }

    async fn get_reserved_concurrency(&self, function: &str) -> Result<Option<u32>, MappingError> {
        match self
            .client
            .get_function_concurrency()
            .function_name(self.physical(function))
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reserved_concurrent_executions()
                .map(|n| n.max(0) as u32)),
            Err(e) if is_not_found(e.code()) => {
                debug!(function, "no such function");
                Ok(None)
            }
            Err(e) => Err(backend("GetFunctionConcurrency", e)),
        }
    }

    async fn delete_reserved_concurrency(&self, function: &str) -> Result<(), MappingError> {
        match self
            .client
            .delete_function_concurrency()
            .function_name(self.physical(function))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(e.code()) => Ok(()),
            Err(e) => Err(backend("DeleteFunctionConcurrency", e)),
        }
    }
}
