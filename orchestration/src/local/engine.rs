//! The embedded engine: every port on SQLite and files under one state directory, the
//! static resources a deployment would have (control queue, its DLQ and its mapping to the
//! daemon), and the local ESM runtime that invokes the same handlers Lambda would.
//!
//! When the runtime stops, the engine empties its databases' WALs into them
//! ([`super::truncate_wal`]) once they pass [`super::RECLAIM_BYTES`]: the next command to
//! open the state directory (a cached answer, `status`) then has little log to recover,
//! and the directory holds what is kept, not the logs of the jobs that ran. Queue shards
//! give their pages back as queues are deleted (`queues` module docs).

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
    #[error("{0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
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
    /// The embedded queues, when the engine owns them (not over AWS).
    queues: Option<Arc<SqliteQueues>>,
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
            queues: queues.clone(),
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
            queues: Some(queues),
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
            queues: None,
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
        if let Err(e) = self.reclaim().await {
            tracing::warn!(error = %e, "emptying the state directory's WAL files failed");
        }
    }

    /// Empties the WAL of every database under the state directory into it, and gives
    /// back what the queue shards can (module docs).
    pub async fn reclaim(&self) -> Result<(), EngineError> {
        self.log.flush().await;
        if let Some(queues) = &self.queues {
            queues.reclaim().await?;
        }
        for file in [STORE_FILE, MAPPINGS_FILE, INVOCATIONS_FILE] {
            let path = self.state_dir.join(file);
            // A small WAL is recovered in no time; emptying it would cost fsyncs on every
            // short run. (Over AWS only the invocation log is here.)
            if super::wal_bytes(&path) < super::RECLAIM_BYTES {
                continue;
            }
            let started = std::time::Instant::now();
            let truncated = super::open_sqlite(&path)
                .and_then(|conn| super::truncate_wal(&conn))
                .map_err(|e| EngineError::Sqlite(path.clone(), e))?;
            tracing::debug!(
                file,
                truncated,
                ms = started.elapsed().as_millis() as u64,
                "WAL emptied (false: another process is reading)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ports::{Condition, Key};

    fn wal_bytes(dir: &Path) -> Vec<(String, u64)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with("-wal"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().len())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_engine_leaves_no_log_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default())
            .await
            .unwrap();
        let item = json!({"s": "x".repeat(200_000)});
        for i in 0..30 {
            engine
                .services
                .store
                .put(
                    &Key::new("p", format!("{i}")),
                    item.as_object().unwrap().clone(),
                    Condition::Always,
                )
                .await
                .unwrap();
        }
        let store_wal = wal_bytes(dir.path())
            .into_iter()
            .find(|(name, _)| name == "store.db-wal")
            .unwrap();
        assert!(store_wal.1 > 6_000_000, "{store_wal:?}");

        engine.run(async {}).await;
        let wals = wal_bytes(dir.path());
        assert!(wals.len() >= 4, "{wals:?}");
        // The large one is emptied; the small ones are not worth the fsyncs.
        assert!(wals.contains(&("store.db-wal".into(), 0)), "{wals:?}");
        assert!(
            wals.iter()
                .all(|(_, len)| *len < crate::local::RECLAIM_BYTES),
            "{wals:?}"
        );
        // The data is in the database itself.
        let store = SqliteJobStore::open(&dir.path().join(STORE_FILE)).unwrap();
        let item = crate::ports::JobStore::get(&store, &Key::new("p", "29"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.attrs["s"].as_str().unwrap().len(), 200_000);
    }
}
