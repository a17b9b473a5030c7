//! The embedded engine: every port on SQLite and files under one state directory, the
//! static resources a deployment would have (control queue, its DLQ and its mapping to the
//! daemon), and the local ESM runtime that invokes the same handlers Lambda would.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cost::Usage;
use crate::daemon::Daemon;
use crate::faults::Faults;
use crate::flow::{Function, Registry};
use crate::meter::{Meter, MeteredBlobs, MeteredQueues, MeteredStore};
use crate::ports::{
    BlobError, DeadLetter, MappingConfig, MappingError, Mappings, QueueError, QueueSpec, Queues,
    StoreError, SystemClock,
};
use crate::services::{Services, Settings};
use crate::worker::StageHandler;

use super::invocations::{InvocationLog, LogError};
use super::runtime::{EsmRuntime, RuntimeConfig};
use super::{FileBlobs, SqliteJobStore, SqliteMappings, SqliteQueues};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("state directory {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Log(#[from] LogError),
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub faults: Faults,
    /// The job types (default: every job type sluice ships).
    pub registry: Option<Registry>,
    pub settings: Option<Settings>,
    pub runtime: RuntimeConfig,
}

pub struct Engine {
    pub services: Arc<Services>,
    pub log: InvocationLog,
    /// What this engine has asked of its ports since it opened, in AWS's billing units.
    pub meter: Arc<Meter>,
    opened_ms: u64,
    /// Where the runtime learns of mapping changes at once (the embedded mappings' change
    /// feed); without one it re-lists mappings every `resync_interval`.
    changes: Option<tokio::sync::watch::Receiver<u64>>,
    runtime: RuntimeConfig,
    state_dir: PathBuf,
}

pub const CONTROL_QUEUE: &str = "control";
/// Files under the state directory.
pub const STORE_FILE: &str = "store.db";
pub const QUEUES_FILE: &str = "queues.db";
pub const MAPPINGS_FILE: &str = "mappings.db";
pub const INVOCATIONS_FILE: &str = "invocations.db";
pub const BLOBS_DIR: &str = "blobs";

/// The services with the store, queues and blobs counted by `meter`.
fn metered(services: Services, meter: &Arc<Meter>) -> Arc<Services> {
    Arc::new(Services {
        store: Arc::new(MeteredStore::new(services.store.clone(), meter.clone())),
        queues: Arc::new(MeteredQueues::new(services.queues.clone(), meter.clone())),
        blobs: Arc::new(MeteredBlobs::new(services.blobs.clone(), meter.clone())),
        ..services
    })
}

impl Engine {
    /// Opens (or creates) the engine's state under `state_dir`. Call inside a Tokio runtime.
    pub async fn open(state_dir: &Path, options: EngineOptions) -> Result<Self, EngineError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| EngineError::StateDir(state_dir.to_owned(), e))?;
        let store = Arc::new(SqliteJobStore::open(&state_dir.join(STORE_FILE))?);
        let queues = Arc::new(SqliteQueues::open(&state_dir.join(QUEUES_FILE))?);
        let blobs = Arc::new(FileBlobs::open(state_dir.join(BLOBS_DIR))?);
        let mappings = Arc::new(SqliteMappings::open(&state_dir.join(MAPPINGS_FILE))?);
        let log = InvocationLog::open(&state_dir.join(INVOCATIONS_FILE))?;
        let mut settings = options.settings.unwrap_or_default();

        // What `sam deploy` creates in AWS: the control queue, its DLQ, its mapping.
        let control_dlq = queues
            .create_queue(&QueueSpec {
                name: format!("{}-{CONTROL_QUEUE}-dlq", settings.prefix),
                visibility_timeout: Duration::from_secs(30),
                dead_letter: None,
            })
            .await?;
        settings.control_queue_url = queues
            .create_queue(&QueueSpec {
                name: format!("{}-{CONTROL_QUEUE}", settings.prefix),
                // Short: a tick that died (or found the lease busy) is retried soon.
                visibility_timeout: Duration::from_secs(1),
                dead_letter: Some(DeadLetter {
                    queue_url: control_dlq,
                    // A chain tick waits out a dead daemon's lease by failing; give it room.
                    max_receive_count: 100,
                }),
            })
            .await?;
        let control_mapping = MappingConfig {
            batch_size: 10,
            batching_window_secs: 0,
            max_concurrency: Some(10),
            provisioned_pollers: None,
            enabled: true,
        };
        let existing = mappings
            .list_mappings(Some(&settings.control_queue_url))
            .await?;
        if existing.is_empty() {
            mappings
                .create_mapping(
                    &settings.control_queue_url,
                    Function::Daemon.as_str(),
                    control_mapping,
                    Default::default(),
                )
                .await?;
        }

        let changes = Some(mappings.subscribe());
        let services = Services {
            store,
            queues,
            blobs,
            mappings,
            telemetry: Arc::new(log.clone()),
            clock: Arc::new(SystemClock),
            registry: options.registry.unwrap_or_default(),
            settings,
            faults: options.faults,
        };
        let meter = Meter::new();
        Ok(Self {
            services: metered(services, &meter),
            log,
            meter,
            opened_ms: super::now_ms(),
            changes,
            runtime: options.runtime,
            state_dir: state_dir.to_owned(),
        })
    }

    /// An engine over services that live elsewhere (the AWS adapters, against AWS or an
    /// emulator): the local runtime polls their queues and reads their mappings, and
    /// invocations are logged under `state_dir`.
    pub fn with_services(
        state_dir: &Path,
        services: Arc<Services>,
        runtime: RuntimeConfig,
    ) -> Result<Self, EngineError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| EngineError::StateDir(state_dir.to_owned(), e))?;
        let log = InvocationLog::open(&state_dir.join(INVOCATIONS_FILE))?;
        let meter = Meter::new();
        Ok(Self {
            services: metered((*services).clone(), &meter),
            log,
            meter,
            opened_ms: super::now_ms(),
            changes: None,
            runtime,
            state_dir: state_dir.to_owned(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// What the engine has used since it opened (every job it ran, its daemon ticks), in
    /// AWS's units; add the mappings' polling with [`Usage::with_polling`].
    pub async fn usage(&self) -> Result<Usage, LogError> {
        self.log.flush().await;
        let invocations = self.log.function_totals(self.opened_ms)?;
        Ok(self.meter.usage(&invocations))
    }

    /// Runs the local ESM runtime (every stage function and the daemon) until `shutdown`.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let svc = &self.services;
        let mut runtime = EsmRuntime::new(
            svc.queues.clone(),
            svc.mappings.clone(),
            self.changes.clone(),
            self.log.clone(),
            self.runtime.clone(),
        );
        for function in Function::STAGE_FUNCTIONS {
            runtime.register(
                function.as_str(),
                Arc::new(StageHandler::new(svc.clone(), function)),
            );
        }
        runtime.register(
            Function::Daemon.as_str(),
            Arc::new(Daemon::new(svc.clone())),
        );
        let sweeping = async {
            let Some(every) = self.runtime.sweep_interval else {
                return std::future::pending().await;
            };
            let sweeper = crate::sweeper::Sweeper::new(svc.clone());
            loop {
                tokio::time::sleep(every).await;
                match sweeper.sweep().await {
                    Ok(report) if !report.restarted.is_empty() => {
                        tracing::warn!(jobs = ?report.restarted, "restarted silent jobs");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
        };
        tokio::select! {
            () = runtime.run(shutdown) => {}
            () = sweeping => {}
        }
    }
}
