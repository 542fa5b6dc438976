//! The engine: runs a plan step by step and undoes it when anything goes wrong.
//!
//! Life cycle of a step: compute its inverse from the live state → append `step_started` with the
//! inverse to the journal and fsync → act (with a timeout, retrying retryable errors) → append
//! `step_finished`. On a failed step, a failed gate, a timeout, the run's deadline, an abort or a
//! cancellation, the engine runs the recorded inverses in reverse order, then compares the
//! environment with the snapshot taken before the run. The run ends [`Outcome::Promoted`],
//! [`Outcome::RolledBack`] (back exactly where it was) or [`Outcome::Failed`] (undoing failed:
//! the report says what is left).

mod act;
mod analysis;
mod call;
mod control;
mod environment;
mod error;
mod files;
mod inverse;
mod journal;
mod lock;
mod policy;
mod recovery;
mod report;
mod rollback;
mod run;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::model::Release;
use crate::strategy::{Plan, PlanOptions, Snapshot, Strategy, TargetState};

pub use control::{Control, ControlRequest};
pub use environment::{Environment, EnvironmentBuilder};
pub use error::DeployError;
pub use journal::{JournalState, Record};
pub use lock::LockInfo;
pub use policy::{
    AnalysisPolicy, DrainPolicy, DrainTimeoutAction, InconclusiveAction, NoDataPolicy, Policies,
    ProbePolicy, RetryPolicy, Timeouts,
};
pub use report::{
    Event, Observer, Outcome, Report, RollbackRecord, Severity, StepRecord, VerdictRecord,
};
pub use status::RunStatus;

use journal::Journal;
use lock::{EnvLock, Takeover};
use run::Run;

/// How to finish a run that a dead process left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Carry on from the first unfinished step (or roll back if the run had already failed).
    Resume,
    /// Undo everything the run did.
    Rollback,
}

/// Runs plans against an [`Environment`].
#[derive(Debug, Clone)]
pub struct Engine {
    env: Arc<Environment>,
    policies: Policies,
    observers: Vec<Arc<dyn Observer>>,
    state_dir: Option<PathBuf>,
    control: Control,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_run_id() -> String {
    // 2026-11-21T23:49:12.123Z -> 20261121T234912123Z: sortable, and a plain file name.
    let stamp: String = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{stamp}-{}-{n}", std::process::id())
}

impl Engine {
    /// An engine for `env` with default policies, no observer and no journal.
    pub fn new(env: Environment) -> Self {
        Self {
            env: Arc::new(env),
            policies: Policies::default(),
            observers: Vec::new(),
            state_dir: None,
            control: Control::new(),
        }
    }

    /// Use these policies.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    /// Send events to `observer` too.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Keep the lock (`<dir>/lock`), the journals (`<dir>/runs/<run>.jsonl`) and the reports
    /// (`<dir>/runs/<run>.report.json`) in `dir`. Without it a run is neither locked nor
    /// journaled, and cannot be recovered by another process.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The handle that promotes or aborts this engine's runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The environment.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// The policies.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Read the state of every target, the switch, the schema and the maintenance page.
    pub async fn snapshot(&self) -> Result<Snapshot, DeployError> {
        let t = self.policies.timeouts.call;
        let snap_err = |source| DeployError::Snapshot {
            environment: self.env.name.clone(),
            source,
        };
        let mut targets = Vec::new();
        for target in &self.env.targets {
            let current = self
                .call("read current version of", target.id().as_str(), t, || {
                    target.current()
                })
                .await
                .map_err(snap_err)?;
            targets.push(TargetState::new(
                target.id().clone(),
                target.endpoint(),
                current,
            ));
        }
        let weights = match &self.env.switch {
            Some(s) => Some(
                self.call("read weights of", "the switch", t, || s.weights())
                    .await
                    .map_err(snap_err)?,
            ),
            None => None,
        };
        let migrations = match &self.env.migrations {
            Some(m) => Some(
                self.call(
                    "read migration status of",
                    "the database",
                    self.policies.timeouts.long_call,
                    || m.status(),
                )
                .await
                .map_err(snap_err)?,
            ),
            None => None,
        };
        let maintenance = match &self.env.maintenance {
            Some(m) => Some(
                self.call("read state of", "the maintenance page", t, || {
                    m.is_enabled()
                })
                .await
                .map_err(snap_err)?,
            ),
            None => None,
        };
        Ok(Snapshot::new(targets, weights, migrations, maintenance))
    }

    /// Plan a deploy of `release` with `strategy` from the environment's live state, without
    /// changing anything (a dry run prints this).
    pub async fn plan(
        &self,
        strategy: &Strategy,
        release: &Release,
        options: &PlanOptions,
    ) -> Result<Plan, DeployError> {
        let snapshot = self.snapshot().await?;
        Ok(strategy.plan(
            &self.env.name,
            release,
            &snapshot,
            self.env.capabilities(),
            options,
        )?)
    }

    /// Plan and run.
    pub async fn deploy(
        &self,
        strategy: &Strategy,
        release: &Release,
        options: &PlanOptions,
        cancel: &CancellationToken,
    ) -> Result<Report, DeployError> {
        let plan = self.plan(strategy, release, options).await?;
        self.run(plan, cancel).await
    }

    fn lock_info(&self, run_id: &str) -> LockInfo {
        LockInfo {
            owner: lock::user_name(),
            pid: std::process::id(),
            host: lock::host_name(),
            started_at: SystemTime::now(),
            run_id: run_id.to_owned(),
        }
    }

    /// Run `plan`. Returns a report whatever the outcome; `Err` only when the run could not
    /// start (lock held, journal not writable).
    pub async fn run(&self, plan: Plan, cancel: &CancellationToken) -> Result<Report, DeployError> {
        if plan.environment != self.env.name {
            return Err(DeployError::Usage {
                operation: "run plan",
                environment: self.env.name.clone(),
                cause: format!("the plan is for environment {}", plan.environment),
            });
        }
        let run_id = new_run_id();
        let (lock, journal) = match &self.state_dir {
            Some(dir) => {
                let lock = EnvLock::acquire(
                    &self.env.name,
                    &dir.join("lock"),
                    &self.lock_info(&run_id),
                    Takeover::Never,
                )?;
                let mut journal =
                    Journal::create(&dir.join("runs").join(format!("{run_id}.jsonl")))?;
                journal.append(&Record::Started {
                    run_id: run_id.clone(),
                    plan: Box::new(plan.clone()),
                    at: SystemTime::now(),
                    pid: std::process::id(),
                    host: lock::host_name(),
                })?;
                (Some(lock), Some(journal))
            }
            None => (None, None),
        };
        let run = Run::new(self, run_id, plan, journal, SystemTime::now());
        let report = run.execute(0, cancel, None).await;
        drop(lock);
        report
    }
}
