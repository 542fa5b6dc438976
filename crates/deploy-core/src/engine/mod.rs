//! The engine: runs a plan step by step and undoes it when anything goes wrong.
//!
//! Life cycle of a step: compute its inverse from the live state → append `step_started` with the
//! inverse to the journal and fsync → act (with a timeout, retrying retryable errors) → append
//! `step_finished`. On a failed step, a failed gate, a timeout, the run's deadline, an abort or a
//! cancellation, the engine runs the recorded inverses in reverse order, then compares the
//! environment with the snapshot taken before the run. The run ends [`Outcome::Promoted`],
//! [`Outcome::RolledBack`] (back exactly where it was) or [`Outcome::Failed`] (undoing failed:
//! the report says what is left).

mod analysis;
mod control_file;
mod journal;
mod policy;
mod report;

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, ErrorKind};
use crate::hooks::{Hook, HookContext, HookPoint};
use crate::model::{BackupId, Release, TargetId, Version, Weights};
use crate::strategy::{
    Capabilities, Plan, PlanError, PlanOptions, SchemaRollback, Snapshot, Step, Strategy,
    TargetState,
};
use crate::traits::{
    DynHealthProbe, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTarget, DynTrafficSwitch,
    ProbeRequest,
};

pub use control_file::{ControlRequest, RunStatus};
pub use journal::{JournalState, LockInfo, Record};
pub use policy::{
    AnalysisPolicy, DrainPolicy, DrainTimeoutAction, InconclusiveAction, NoDataPolicy, Policies,
    ProbePolicy, RetryPolicy, Timeouts,
};
pub use report::{
    Event, Observer, Outcome, Report, RollbackRecord, Severity, StepRecord, VerdictRecord,
};

use journal::{EnvLock, Journal, Takeover};

/// Why the engine could not run (as opposed to a run that rolled back, which is a [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The strategy could not plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The state of the environment could not be read before planning.
    #[error("read the state of environment {environment}: {source}")]
    Snapshot {
        /// The environment.
        environment: String,
        /// The failing call.
        #[source]
        source: Error,
    },
    /// Another deploy holds the environment's lock.
    #[error("lock environment {environment} at {}: held by {}", .path.display(), .holder.as_ref().map_or("an unknown holder".to_owned(), ToString::to_string))]
    Locked {
        /// The environment.
        environment: String,
        /// The lock file.
        path: PathBuf,
        /// Its holder, when readable.
        holder: Option<Box<LockInfo>>,
    },
    /// A dead deploy left its lock behind; resume or roll it back, or take the lock over.
    #[error(
        "lock environment {environment} at {}: a stale lock of {} is left (that process is gone); \
         resume or roll back its run, or take the lock over explicitly",
        .path.display(), .holder.as_ref().map_or("an unknown run".to_owned(), ToString::to_string)
    )]
    StaleLock {
        /// The environment.
        environment: String,
        /// The lock file.
        path: PathBuf,
        /// Its holder, when readable.
        holder: Option<Box<LockInfo>>,
    },
    /// The journal could not be written or read.
    #[error("journal {}: {cause}", .path.display())]
    Journal {
        /// The journal (or lock) file.
        path: PathBuf,
        /// What failed.
        cause: String,
    },
    /// The engine was asked to do something that needs a state directory, a run, etc.
    #[error("{operation} for environment {environment}: {cause}")]
    Usage {
        /// What was asked.
        operation: &'static str,
        /// The environment.
        environment: String,
        /// Why it cannot be done.
        cause: String,
    },
}

/// Everything a deploy touches: targets, and optionally a switch, a probe, gates, a migration
/// runner and a maintenance page.
#[derive(Debug, Clone)]
pub struct Environment {
    name: String,
    targets: Vec<DynTarget>,
    switch: Option<DynTrafficSwitch>,
    probe: Option<DynHealthProbe>,
    gates: Vec<DynMetricGate>,
    migrations: Option<DynMigrationRunner>,
    maintenance: Option<DynMaintenance>,
    hooks: Vec<Hook>,
}

impl Environment {
    /// Start describing the environment `name` (a valid file name: it names lock and journal).
    pub fn builder(name: impl Into<String>) -> EnvironmentBuilder {
        EnvironmentBuilder {
            env: Environment {
                name: name.into(),
                targets: Vec::new(),
                switch: None,
                probe: None,
                gates: Vec::new(),
                migrations: None,
                maintenance: None,
                hooks: Vec::new(),
            },
        }
    }

    /// The environment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its targets, in order.
    pub fn targets(&self) -> &[DynTarget] {
        &self.targets
    }

    fn target(&self, id: &TargetId) -> Result<&DynTarget, Error> {
        self.targets.iter().find(|t| t.id() == id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "find target",
                id.to_string(),
                format!("environment {} has no such target", self.name),
            )
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            self.switch.is_some(),
            self.maintenance.is_some(),
            self.migrations.is_some(),
        )
    }
}

/// Builds an [`Environment`].
#[derive(Debug)]
pub struct EnvironmentBuilder {
    env: Environment,
}

impl EnvironmentBuilder {
    /// Add a target.
    pub fn target(mut self, target: DynTarget) -> Self {
        self.env.targets.push(target);
        self
    }

    /// Set the traffic switch.
    pub fn switch(mut self, switch: DynTrafficSwitch) -> Self {
        self.env.switch = Some(switch);
        self
    }

    /// Set the health probe.
    pub fn probe(mut self, probe: DynHealthProbe) -> Self {
        self.env.probe = Some(probe);
        self
    }

    /// Add a metric gate.
    pub fn gate(mut self, gate: DynMetricGate) -> Self {
        self.env.gates.push(gate);
        self
    }

    /// Set the migration runner.
    pub fn migrations(mut self, runner: DynMigrationRunner) -> Self {
        self.env.migrations = Some(runner);
        self
    }

    /// Add a hook (a command or webhook before or after a kind of step, or the whole run).
    pub fn hook(mut self, hook: Hook) -> Self {
        self.env.hooks.push(hook);
        self
    }

    /// Set the maintenance page.
    pub fn maintenance(mut self, maintenance: DynMaintenance) -> Self {
        self.env.maintenance = Some(maintenance);
        self
    }

    /// Check and build: a valid name, at least one target, no duplicate target ids.
    pub fn build(self) -> Result<Environment, Error> {
        let env = self.env;
        let mut problems = Vec::new();
        if let Err(e) = Version::new(env.name.clone()) {
            problems.push(format!("name: {}", e.cause()));
        }
        if env.targets.is_empty() {
            problems.push("no targets".to_owned());
        }
        let mut seen = HashSet::new();
        for t in &env.targets {
            if !seen.insert(t.id().clone()) {
                problems.push(format!("target {} is listed twice", t.id()));
            }
        }
        if problems.is_empty() {
            Ok(env)
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                "build environment",
                env.name.clone(),
                problems.join("; "),
            ))
        }
    }
}

/// Lets another task promote a paused run or abort a run.
#[derive(Debug, Clone, Default)]
pub struct Control {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    promoted: AtomicBool,
    notify: Notify,
    abort: CancellationToken,
    abort_reason: Mutex<Option<String>>,
}

impl Control {
    /// A new control.
    pub fn new() -> Self {
        Self::default()
    }

    /// End the current (or next) pause and carry on.
    pub fn promote(&self) {
        self.inner.promoted.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Stop the run and roll back.
    pub fn abort(&self, reason: impl Into<String>) {
        *self
            .inner
            .abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
        self.inner.abort.cancel();
    }

    async fn promoted(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.promoted.swap(false, Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn abort_reason(&self) -> String {
        self.inner
            .abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "aborted".to_owned())
    }
}

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
            owner: journal::user_name(),
            pid: std::process::id(),
            host: journal::host_name(),
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
                    host: journal::host_name(),
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

    /// Take over a stale lock (its process is gone) without recovering its run, and release it.
    /// Returns who held it, or `None` when there was no lock file. A lock held by a live process
    /// is never broken: that is [`DeployError::Locked`].
    pub fn break_stale_lock(&self) -> Result<Option<LockInfo>, DeployError> {
        let path = self.require_state_dir("break stale lock")?.join("lock");
        let holder = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<LockInfo>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path,
                    cause: format!("read lock: {e}"),
                });
            }
        };
        let me = self.lock_info("break-stale-lock");
        let lock = EnvLock::acquire(&self.env.name, &path, &me, Takeover::IfStale)?;
        drop(lock);
        tracing::warn!(target: "deploy", "broke the stale lock of environment {}: {:?}", self.env.name, holder);
        Ok(holder)
    }

    /// Ask the run in progress in this environment's state directory — in this process or
    /// another — to promote (end its pause) or abort (roll back). The running engine picks the
    /// request up within a quarter of a second.
    pub fn request(&self, request: &ControlRequest) -> Result<(), DeployError> {
        let dir = self.require_state_dir("send a control request")?;
        control_file::write_request(dir, request)
    }

    /// Where the newest run of this environment stands (from its journal), and who holds the
    /// lock; `None` when no run was ever journaled here.
    pub fn status(&self) -> Result<Option<RunStatus>, DeployError> {
        let dir = self.require_state_dir("read status")?.to_owned();
        let runs = dir.join("runs");
        let mut newest: Option<(SystemTime, PathBuf, JournalState)> = None;
        let entries = match std::fs::read_dir(&runs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path: runs,
                    cause: format!("list: {e}"),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let st = JournalState::read(&path)?;
            if newest.as_ref().is_none_or(|(t, _, _)| st.started_at > *t) {
                newest = Some((st.started_at, path, st));
            }
        }
        let Some((_, path, st)) = newest else {
            return Ok(None);
        };
        let lock_path = dir.join("lock");
        let lock = journal::read_holder(&lock_path).map(|b| *b);
        let stale = lock.is_some() && journal::lock_is_free(&lock_path);
        Ok(Some(RunStatus::from_journal(path, &st, lock, stale)))
    }

    /// The journal of the newest run in the state directory that did not finish, if any.
    pub fn unfinished_run(&self) -> Result<Option<PathBuf>, DeployError> {
        let dir = self.require_state_dir("find unfinished run")?.join("runs");
        let mut newest: Option<(SystemTime, PathBuf)> = None;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path: dir,
                    cause: format!("list: {e}"),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let st = JournalState::read(&path)?;
            if st.outcome.is_none() && newest.as_ref().is_none_or(|(t, _)| st.started_at > *t) {
                newest = Some((st.started_at, path));
            }
        }
        Ok(newest.map(|(_, p)| p))
    }

    fn require_state_dir(&self, operation: &'static str) -> Result<&Path, DeployError> {
        self.state_dir.as_deref().ok_or_else(|| DeployError::Usage {
            operation,
            environment: self.env.name.clone(),
            cause: "the engine has no state directory (with_state_dir)".to_owned(),
        })
    }

    /// Finish the run a dead process left behind in the state directory: resume it or roll it
    /// back. Takes over the dead run's lock. `Ok(None)` when there is nothing to recover.
    pub async fn recover(
        &self,
        mode: Recovery,
        cancel: &CancellationToken,
    ) -> Result<Option<Report>, DeployError> {
        let dir = self.require_state_dir("recover")?.to_owned();
        let Some(path) = self.unfinished_run()? else {
            return Ok(None);
        };
        let st = JournalState::read(&path)?;
        if st.plan.environment != self.env.name {
            return Err(DeployError::Usage {
                operation: "recover",
                environment: self.env.name.clone(),
                cause: format!(
                    "journal {} is for environment {}",
                    path.display(),
                    st.plan.environment
                ),
            });
        }
        for s in &st.plan.steps {
            if let Some(t) = s.target()
                && self.env.target(t).is_err()
            {
                return Err(DeployError::Usage {
                    operation: "recover",
                    environment: self.env.name.clone(),
                    cause: format!("the run's plan names target {t}, which this environment lacks"),
                });
            }
        }
        let lock = EnvLock::acquire(
            &self.env.name,
            &dir.join("lock"),
            &self.lock_info(&st.run_id),
            Takeover::IfStale,
        )?;
        let journal = Journal::reopen(&path)?;
        let mut run = Run::new(
            self,
            st.run_id.clone(),
            st.plan.clone(),
            Some(journal),
            st.started_at,
        );
        run.inverses = st.inverses.clone();
        run.undone = st.undone.clone();
        run.backup = st.backup.clone();
        run.recorded = st.inverses.iter().map(|(i, _)| *i).collect();
        run.schema_kept = st
            .inverses
            .iter()
            .any(|(i, inv)| matches!(st.plan.steps.get(*i), Some(Step::Migrate)) && inv.is_empty());
        run.note(format!(
            "recovered from journal {} by pid {}",
            path.display(),
            std::process::id()
        ));
        let forced = match (mode, &st.rollback_reason, &st.failed) {
            (Recovery::Rollback, _, _) => {
                Some("rollback requested after the deploying process died".to_owned())
            }
            (Recovery::Resume, Some(r), _) => {
                Some(format!("the run was already rolling back ({r})"))
            }
            (Recovery::Resume, None, Some((i, e))) => {
                Some(format!("step {} had failed: {e}", i + 1))
            }
            (Recovery::Resume, None, None) => None,
        };
        let report = run.execute(st.next_index, cancel, forced).await;
        drop(lock);
        report.map(Some)
    }

    fn emit(&self, event: &Event) {
        match event.severity() {
            Severity::Error => tracing::error!(target: "deploy", "{event}"),
            Severity::Warning => tracing::warn!(target: "deploy", "{event}"),
            Severity::Info => tracing::info!(target: "deploy", "{event}"),
        }
        for o in &self.observers {
            o.on_event(event);
        }
    }

    /// Call `f` with the call time limit, retrying retryable errors per the retry policy.
    async fn call<T, F, Fut>(
        &self,
        operation: &str,
        object: &str,
        timeout: Duration,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let attempts = self.policies.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            match with_timeout(operation, object, timeout, f()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    self.emit(&Event::Retrying {
                        operation: format!("{operation} {object}"),
                        attempt,
                        error: e.chain(),
                    });
                    tokio::time::sleep(self.policies.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn with_timeout<T>(
    operation: &str,
    object: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            operation.to_owned(),
            object.to_owned(),
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

/// Why a step failed.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self(e.chain())
    }
}

/// One run in progress.
struct Run<'e> {
    engine: &'e Engine,
    run_id: String,
    plan: Plan,
    journal: Option<Journal>,
    started_at: SystemTime,
    start: Instant,
    steps: Vec<StepRecord>,
    verdicts: Vec<VerdictRecord>,
    notes: Vec<String>,
    inverses: Vec<(usize, Vec<Step>)>,
    recorded: HashSet<usize>,
    undone: HashSet<(usize, usize)>,
    backup: Option<BackupId>,
    rollback_record: Option<RollbackRecord>,
    journal_failed: bool,
    /// A migrate step chose to keep its (additive) migrations on rollback.
    schema_kept: bool,
    /// Targets that an undo stopped (they ran nothing before the run).
    stopped_by_undo: HashSet<TargetId>,
    /// The state read after rolling back, reused as the report's final state.
    final_state: Option<Snapshot>,
}

impl<'e> Run<'e> {
    fn new(
        engine: &'e Engine,
        run_id: String,
        plan: Plan,
        journal: Option<Journal>,
        started_at: SystemTime,
    ) -> Self {
        Self {
            engine,
            run_id,
            plan,
            journal,
            started_at,
            start: Instant::now(),
            steps: Vec::new(),
            verdicts: Vec::new(),
            notes: Vec::new(),
            inverses: Vec::new(),
            recorded: HashSet::new(),
            undone: HashSet::new(),
            backup: None,
            rollback_record: None,
            journal_failed: false,
            schema_kept: false,
            stopped_by_undo: HashSet::new(),
            final_state: None,
        }
    }

    fn env(&self) -> &'e Environment {
        &self.engine.env
    }

    fn note(&mut self, note: String) {
        tracing::info!(target: "deploy", "note: {note}");
        self.notes.push(note);
    }

    /// Append to the journal. A failure is noted (once) and reported as `false`; it never stops
    /// an undo in progress.
    fn record(&mut self, record: &Record) -> bool {
        let Some(j) = &mut self.journal else {
            return true;
        };
        match j.append(record) {
            Ok(()) => true,
            Err(e) => {
                if !self.journal_failed {
                    self.journal_failed = true;
                    self.note(format!(
                        "{e}; this run cannot be recovered from its journal"
                    ));
                }
                false
            }
        }
    }

    async fn execute(
        mut self,
        from: usize,
        cancel: &CancellationToken,
        forced_rollback: Option<String>,
    ) -> Result<Report, DeployError> {
        let span = tracing::info_span!("deploy", run = %self.run_id, env = %self.plan.environment, version = %self.plan.release.version);
        async move {
            self.engine.emit(&Event::RunStarted {
                run_id: self.run_id.clone(),
                environment: self.plan.environment.clone(),
                version: self.plan.release.version.clone(),
                strategy: self.plan.strategy.name().to_owned(),
                steps: self.plan.steps.len(),
            });
            let failure = match forced_rollback {
                Some(reason) => Some(reason),
                None => {
                    // Another process may ask to promote or abort through the state directory.
                    let watcher = async {
                        match &self.engine.state_dir {
                            Some(dir) => {
                                control_file::watch(
                                    dir.clone(),
                                    self.engine.control.clone(),
                                    Duration::from_millis(250),
                                )
                                .await
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        failure = self.forward(from, cancel) => failure,
                        () = watcher => None,
                    }
                }
            };
            let outcome = match failure {
                None => Outcome::Promoted,
                Some(reason) => self.rollback(reason).await,
            };
            Ok(self.finish(outcome).await)
        }
        .instrument(span)
        .await
    }

    /// Run the steps from `from`; `Some(reason)` when the run must roll back.
    async fn forward(&mut self, from: usize, cancel: &CancellationToken) -> Option<String> {
        let deadline = self.engine.policies.deadline.map(|d| self.start + d);
        if from == 0
            && let Err(reason) = self.run_hooks(HookPoint::Before, None).await
        {
            return Some(format!("stopped before the first step: {reason}"));
        }
        let mut index = from;
        while index < self.plan.steps.len() {
            let end = self.batch_end(index);
            if let Some(reason) = self.forward_batch(index, end, cancel, deadline).await {
                return Some(reason);
            }
            index = end;
        }
        if let Err(reason) = self.run_hooks(HookPoint::After, None).await {
            return Some(format!("every step done, but {reason}"));
        }
        None
    }

    /// The end (exclusive) of the batch of steps starting at `index` that may run together:
    /// consecutive steps of the same kind, each touching one distinct target (prepare,
    /// activate, stop, start, await healthy, drain), at most `policies.parallelism` of them.
    /// Any other step is a batch of its own.
    fn batch_end(&self, index: usize) -> usize {
        let steps = &self.plan.steps;
        let limit = self.engine.policies.parallelism.max(1);
        let Some(first) = steps.get(index) else {
            return index;
        };
        let Some(t) = first.target() else {
            return index + 1;
        };
        let mut seen = HashSet::from([t.clone()]);
        let mut end = index + 1;
        while end < steps.len() && end - index < limit {
            let s = &steps[end];
            match s.target() {
                Some(t) if s.op() == first.op() && seen.insert(t.clone()) => end += 1,
                _ => break,
            }
        }
        end
    }

    /// Run the steps `start..end`: each step's `before` hooks run and its inverse is computed
    /// and journaled before any of them acts (unless a previous process already journaled it:
    /// the state it saw is the one to return to); then they act — concurrently when there are
    /// several — raced against cancellation, abort and the run's deadline; then each one's
    /// `after` hooks run and it is finished, in plan order. `Some(reason)` to roll back.
    async fn forward_batch(
        &mut self,
        start: usize,
        end: usize,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Option<String> {
        let engine = self.engine;
        let control = engine.control.clone();
        if cancel.is_cancelled() {
            return Some("cancelled".to_owned());
        }
        if control.inner.abort.is_cancelled() {
            return Some(control.abort_reason());
        }
        let steps: Vec<Step> = self.plan.steps[start..end].to_vec();
        let mut begun: Vec<(usize, SystemTime, Instant)> = Vec::new();
        for (offset, step) in steps.iter().enumerate() {
            let index = start + offset;
            let (started_at, t0) = (SystemTime::now(), Instant::now());
            engine.emit(&Event::StepStarted {
                index,
                step: step.clone(),
            });
            let mut failure = self.run_hooks(HookPoint::Before, Some(step)).await.err();
            if failure.is_none() && !self.recorded.contains(&index) {
                let span = tracing::info_span!("step", index = index + 1, op = step.op());
                match self.inverse_of(step).instrument(span).await {
                    Ok(inverse) => {
                        if self.record(&Record::StepStarted {
                            index,
                            inverse: inverse.clone(),
                        }) {
                            self.recorded.insert(index);
                            self.inverses.push((index, inverse));
                        } else {
                            failure = Some("its inverse could not be journaled".to_owned());
                        }
                    }
                    Err(f) => failure = Some(f.0),
                }
            }
            if let Some(reason) = failure {
                self.finish_step(index, step, started_at, t0, Some(reason.clone()));
                for (i, at, t) in begun {
                    let why = format!(
                        "not run: step {} of its batch failed before acting",
                        index + 1
                    );
                    self.finish_step(i, &self.plan.steps[i].clone(), at, t, Some(why));
                }
                return Some(format!(
                    "step {} ({step}) stopped before it acted: {reason}",
                    index + 1
                ));
            }
            begun.push((index, started_at, t0));
        }
        let guard = Interrupts {
            cancel,
            control: &control,
            deadline,
            run_deadline: engine.policies.deadline,
        };
        let results: Vec<Result<Vec<String>, Failure>> = if let [step] = steps.as_slice() {
            let span = tracing::info_span!("step", index = start + 1, op = step.op());
            match guard.race(self.act(step).instrument(span)).await {
                Ok(r) => vec![r.map(|()| Vec::new())],
                Err(why) => vec![Err(Failure(why))],
            }
        } else {
            let this = &*self;
            let acts =
                futures_util::future::join_all(steps.iter().enumerate().map(|(offset, s)| {
                    let span = tracing::info_span!("step", index = start + offset + 1, op = s.op());
                    this.act_shared(s).instrument(span)
                }));
            match guard.race(acts).await {
                Ok(r) => r,
                Err(why) => steps.iter().map(|_| Err(Failure(why.clone()))).collect(),
            }
        };
        let mut first_failure: Option<String> = None;
        for ((step, (index, started_at, t0)), result) in steps.iter().zip(begun).zip(results) {
            let (error, why) = match result {
                Ok(notes) => {
                    for n in notes {
                        self.note(n);
                    }
                    match self.run_hooks(HookPoint::After, Some(step)).await {
                        Ok(()) => (None, None),
                        Err(reason) => {
                            let why = format!("step {} ({step}) done, but {reason}", index + 1);
                            (Some(reason), Some(why))
                        }
                    }
                }
                Err(Failure(reason)) => {
                    let why = if reason == "cancelled"
                        || reason.starts_with("the run's deadline")
                        || control.inner.abort.is_cancelled()
                    {
                        format!("{reason} during step {} ({step})", index + 1)
                    } else {
                        format!("step {} ({step}) failed: {reason}", index + 1)
                    };
                    (Some(reason), Some(why))
                }
            };
            if first_failure.is_none() {
                first_failure = why;
            }
            self.finish_step(index, step, started_at, t0, error);
        }
        first_failure
    }

    /// Run the hooks of `point` of `step` (or of the run), in order; the first failure stops.
    async fn run_hooks(&mut self, point: HookPoint, step: Option<&Step>) -> Result<(), String> {
        let env = self.env();
        for hook in env.hooks.iter().filter(|h| h.applies(point, step)) {
            let ctx = HookContext {
                run_id: self.run_id.clone(),
                environment: self.plan.environment.clone(),
                version: self.plan.release.version.clone(),
                point,
                step: step.cloned(),
            };
            let result = hook.run(&ctx).await;
            let error = result.as_ref().err().map(Error::chain);
            self.engine.emit(&Event::HookRan {
                hook: hook.name().to_owned(),
                point,
                step: step.cloned(),
                error: error.clone(),
            });
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }

    fn finish_step(
        &mut self,
        index: usize,
        step: &Step,
        started_at: SystemTime,
        t0: Instant,
        error: Option<String>,
    ) {
        let duration = t0.elapsed();
        let backup = if matches!(step, Step::Backup) && error.is_none() {
            self.backup.clone()
        } else {
            None
        };
        self.record(&Record::StepFinished {
            index,
            error: error.clone(),
            backup,
        });
        self.engine.emit(&Event::StepFinished {
            index,
            step: step.clone(),
            duration,
            error: error.clone(),
        });
        self.steps.push(StepRecord {
            index,
            step: step.clone(),
            started_at,
            duration,
            error,
        });
    }

    /// Undo every recorded inverse in reverse order; say how it ended.
    async fn rollback(&mut self, reason: String) -> Outcome {
        self.engine.emit(&Event::RollbackStarted {
            reason: reason.clone(),
        });
        self.record(&Record::RollbackStarted {
            reason: reason.clone(),
        });
        let mut undo_log = Vec::new();
        let mut failed = false;
        let inverses = self.inverses.clone();
        for (index, inverse) in inverses.iter().rev() {
            for (position, step) in inverse.iter().enumerate() {
                if self.undone.contains(&(*index, position)) {
                    continue;
                }
                let span = tracing::info_span!("undo", index = index + 1, op = step.op());
                let result = self.act(step).instrument(span).await;
                let error = result.err().map(|f| f.0);
                failed |= error.is_some();
                self.record(&Record::UndoFinished {
                    index: *index,
                    position,
                    error: error.clone(),
                });
                self.engine.emit(&Event::RollbackStep {
                    step: step.clone(),
                    error: error.clone(),
                });
                if error.is_none() {
                    self.undone.insert((*index, position));
                    if let Step::Stop { target } = step {
                        self.stopped_by_undo.insert(target.clone());
                    }
                }
                undo_log.push((step.clone(), error));
            }
        }
        // Compare with the state before the run.
        let mismatches = match self.engine.snapshot().await {
            Ok(now) => {
                let m = self.compare_with_before(&now);
                self.final_state = Some(now);
                m
            }
            Err(e) => vec![format!("could not read the state after rolling back: {e}")],
        };
        let outcome = if failed || !mismatches.is_empty() {
            Outcome::Failed
        } else {
            Outcome::RolledBack
        };
        self.rollback_record = Some(RollbackRecord {
            reason,
            steps: undo_log,
            mismatches,
        });
        outcome
    }

    fn compare_with_before(&self, now: &Snapshot) -> Vec<String> {
        let before = &self.plan.snapshot;
        let mut out = Vec::new();
        for t in &before.targets {
            let after = now.version_of(&t.id);
            // A target that ran nothing before is back there once its undo stopped it (a
            // release directory keeps its `current` link, but nothing serves it).
            let stopped = t.current.is_none() && self.stopped_by_undo.contains(&t.id);
            if after != t.current.as_ref() && !stopped {
                out.push(format!(
                    "target {} runs {} but ran {} before",
                    t.id,
                    after.map_or("nothing".to_owned(), ToString::to_string),
                    t.current
                        .as_ref()
                        .map_or("nothing".to_owned(), ToString::to_string)
                ));
            }
        }
        if let (Some(b), Some(a)) = (&before.weights, &now.weights) {
            let b = b.only(
                &before
                    .targets
                    .iter()
                    .map(|t| t.id.clone())
                    .collect::<Vec<_>>(),
            );
            let a = a.only(
                &before
                    .targets
                    .iter()
                    .map(|t| t.id.clone())
                    .collect::<Vec<_>>(),
            );
            if a != b {
                out.push(format!("weights are {a} but were {b} before"));
            }
        }
        if let (Some(b), Some(a)) = (&before.migrations, &now.migrations)
            && !self.schema_kept
            && a.current != b.current
        {
            out.push(format!(
                "schema is at {} but was at {} before",
                a.current
                    .as_ref()
                    .map_or("empty".to_owned(), ToString::to_string),
                b.current
                    .as_ref()
                    .map_or("empty".to_owned(), ToString::to_string)
            ));
        }
        if let (Some(b), Some(a)) = (before.maintenance, now.maintenance)
            && a != b
        {
            out.push(format!(
                "maintenance page is {} but was {} before",
                on_off(a),
                on_off(b)
            ));
        }
        out
    }

    async fn finish(mut self, outcome: Outcome) -> Report {
        self.record(&Record::Finished { outcome });
        self.engine.emit(&Event::RunFinished { outcome });
        let final_state = match self.final_state.take() {
            Some(s) => Some(s),
            None => self.engine.snapshot().await.ok(),
        };
        let report = Report {
            run_id: self.run_id.clone(),
            environment: self.plan.environment.clone(),
            version: self.plan.release.version.clone(),
            strategy: self.plan.strategy.name().to_owned(),
            outcome,
            started_at: self.started_at,
            duration: self.start.elapsed(),
            steps: std::mem::take(&mut self.steps),
            verdicts: std::mem::take(&mut self.verdicts),
            rollback: self.rollback_record.take(),
            notes: std::mem::take(&mut self.notes),
            final_state,
        };
        if let Some(j) = &self.journal {
            let path = j.path().with_extension("report.json");
            let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
            if let Err(e) = write_atomic(&path, &body) {
                tracing::warn!(target: "deploy", "write report {}: {e}", path.display());
            }
        }
        report
    }

    /// Work out what undoes `step`, from the live state.
    async fn inverse_of(&mut self, step: &Step) -> Result<Vec<Step>, Failure> {
        let t = self.engine.policies.timeouts.call;
        let env = self.env();
        Ok(match step {
            Step::Prepare { .. }
            | Step::AwaitHealthy { .. }
            | Step::Analyze { .. }
            | Step::Pause { .. }
            | Step::Backup => Vec::new(),
            Step::RevertSchema { .. } | Step::Start { .. } => Vec::new(),
            Step::Activate { target, version } => {
                let tg = env.target(target)?;
                let current = self
                    .engine
                    .call("read current version of", target.as_str(), t, || {
                        tg.current()
                    })
                    .await?;
                match current {
                    Some(v) if &v == version => Vec::new(),
                    Some(old) => vec![
                        Step::Activate {
                            target: target.clone(),
                            version: old.clone(),
                        },
                        Step::AwaitHealthy {
                            target: target.clone(),
                            version: Some(old),
                        },
                    ],
                    None => vec![Step::Stop {
                        target: target.clone(),
                    }],
                }
            }
            Step::Stop { target } => vec![Step::Start {
                target: target.clone(),
            }],
            Step::MaintenanceOn | Step::MaintenanceOff => {
                let m = self.maintenance()?;
                let on = self
                    .engine
                    .call("read state of", "the maintenance page", t, || {
                        m.is_enabled()
                    })
                    .await?;
                match (step, on) {
                    (Step::MaintenanceOn, false) => vec![Step::MaintenanceOff],
                    (Step::MaintenanceOff, true) => vec![Step::MaintenanceOn],
                    _ => Vec::new(),
                }
            }
            Step::Migrate => {
                let m = self.migrations()?;
                let status = self
                    .engine
                    .call(
                        "read migration status of",
                        "the database",
                        self.engine.policies.timeouts.long_call,
                        || m.status(),
                    )
                    .await?;
                let destructive = status.destructive().count() > 0;
                // Planning refuses this too, but a plan may be old (journaled, resumed, built by
                // hand) and the schema may have changed since: check what is pending now.
                if destructive
                    && self.plan.strategy.is_zero_downtime()
                    && !self.plan.options.allow_destructive_migrations
                {
                    let names: Vec<String> = status
                        .destructive()
                        .map(|m| format!("{} {}", m.version, m.name))
                        .collect();
                    return Err(Failure(format!(
                        "refused: destructive migration(s) {} pending in a {} deploy (allow_destructive_migrations is off)",
                        names.join(", "),
                        self.plan.strategy.name()
                    )));
                }
                if status.pending.is_empty() {
                    Vec::new()
                } else if destructive || self.plan.options.schema_rollback == SchemaRollback::Revert
                {
                    vec![Step::RevertSchema {
                        to: status.current.clone(),
                        backup: self.backup.clone(),
                    }]
                } else {
                    self.schema_kept = true;
                    self.note(format!(
                        "{} additive migration(s) are kept if the deploy rolls back: they are compatible with the old release (schema_rollback = keep_additive)",
                        status.pending.len()
                    ));
                    Vec::new()
                }
            }
            Step::Drain { target } => {
                let s = self.switch()?;
                let weights = self
                    .engine
                    .call("read weights of", "the switch", t, || s.weights())
                    .await?;
                let w = weights.get(target).ok_or_else(|| {
                    Failure(format!(
                        "the switch does not know target {target} (it knows {weights})"
                    ))
                })?;
                vec![Step::SetWeights {
                    weights: Weights::new().with(target.clone(), w),
                }]
            }
            Step::SetWeights { weights } => {
                let s = self.switch()?;
                let now = self
                    .engine
                    .call("read weights of", "the switch", t, || s.weights())
                    .await?;
                let names: Vec<TargetId> = weights.iter().map(|(t, _)| t.clone()).collect();
                let before = now.only(&names);
                if before.0.len() != names.len() {
                    let missing: Vec<_> = names
                        .iter()
                        .filter(|n| before.get(n).is_none())
                        .map(ToString::to_string)
                        .collect();
                    return Err(Failure(format!(
                        "the switch does not know target(s) {}",
                        missing.join(", ")
                    )));
                }
                vec![Step::SetWeights { weights: before }]
            }
        })
    }

    fn maintenance(&self) -> Result<&'e DynMaintenance, Failure> {
        self.env()
            .maintenance
            .as_ref()
            .ok_or_else(|| Failure("the environment has no maintenance page".to_owned()))
    }

    fn migrations(&self) -> Result<&'e DynMigrationRunner, Failure> {
        self.env()
            .migrations
            .as_ref()
            .ok_or_else(|| Failure("the environment has no migration runner".to_owned()))
    }

    fn switch(&self) -> Result<&'e DynTrafficSwitch, Failure> {
        self.env()
            .switch
            .as_ref()
            .ok_or_else(|| Failure("the environment has no traffic switch".to_owned()))
    }

    /// Do one step (forward or undo).
    async fn act(&mut self, step: &Step) -> Result<(), Failure> {
        let engine = self.engine;
        let t = engine.policies.timeouts.call;
        let long = engine.policies.timeouts.long_call;
        match step {
            Step::Prepare { .. }
            | Step::Activate { .. }
            | Step::Stop { .. }
            | Step::Start { .. }
            | Step::AwaitHealthy { .. }
            | Step::Drain { .. } => {
                for note in self.act_shared(step).await? {
                    self.note(note);
                }
            }
            Step::MaintenanceOn => {
                let m = self.maintenance()?;
                engine
                    .call("enable", "the maintenance page", t, || m.enable())
                    .await?;
            }
            Step::MaintenanceOff => {
                let m = self.maintenance()?;
                engine
                    .call("disable", "the maintenance page", t, || m.disable())
                    .await?;
            }
            Step::Backup => {
                let m = self.migrations()?;
                let id = engine
                    .call("back up", "the database", long, || m.backup())
                    .await?;
                self.note(format!("database backup {id}"));
                self.backup = Some(id);
            }
            Step::Migrate => {
                let m = self.migrations()?;
                let reached = engine
                    .call("migrate", "the database", long, || m.migrate())
                    .await?;
                engine
                    .call("verify schema of", "the database", t, || {
                        m.verify(reached.as_ref())
                    })
                    .await?;
            }
            Step::RevertSchema { to, backup } => {
                let m = self.migrations()?;
                engine
                    .call("revert schema of", "the database", long, || {
                        m.revert(to.as_ref(), backup.as_ref())
                    })
                    .await?;
                engine
                    .call("verify schema of", "the database", t, || {
                        m.verify(to.as_ref())
                    })
                    .await?;
            }
            Step::SetWeights { weights } => {
                let s = self.switch()?;
                engine
                    .call("set weights on", "the switch", t, || s.set_weights(weights))
                    .await?;
                let now = engine
                    .call("read weights of", "the switch", t, || s.weights())
                    .await?;
                let names: Vec<TargetId> = weights.iter().map(|(t, _)| t.clone()).collect();
                if &now.only(&names) != weights {
                    return Err(Failure(format!(
                        "the switch reports {} after setting {weights}",
                        now.only(&names)
                    )));
                }
                engine.emit(&Event::WeightsChanged { weights: now });
            }
            Step::Analyze {
                name,
                duration,
                canary,
                baseline,
            } => {
                self.analyze(name, *duration, canary, baseline).await?;
            }
            Step::Pause { duration: Some(d) } => {
                engine.emit(&Event::Paused {
                    reason: format!("for {} (promote to skip)", humantime::format_duration(*d)),
                });
                tokio::select! {
                    () = tokio::time::sleep(*d) => {}
                    () = engine.control.promoted() => {}
                }
            }
            Step::Pause { duration: None } => {
                engine.emit(&Event::Paused {
                    reason: "until promoted".to_owned(),
                });
                engine.control.promoted().await;
            }
        }
        Ok(())
    }

    async fn await_healthy(
        &self,
        target: &TargetId,
        version: Option<&Version>,
    ) -> Result<(), Failure> {
        let engine = self.engine;
        let Some(probe) = &self.env().probe else {
            return Ok(());
        };
        let tg = self.env().target(target)?;
        let p = &engine.policies.probe;
        let request = ProbeRequest::new(target.clone(), tg.endpoint(), version.cloned());
        let deadline = Instant::now() + p.deadline;
        let mut healthy_in_a_row = 0;
        let mut checks = 0u32;
        loop {
            checks += 1;
            let (healthy, reason) = match with_timeout(
                "probe",
                target.as_str(),
                p.timeout,
                probe.check(&request),
            )
            .await
            {
                Ok(h) => (h.healthy, h.reason),
                Err(e) => (false, e.chain()),
            };
            engine.emit(&Event::HealthChecked {
                target: target.clone(),
                healthy,
                reason: reason.clone(),
            });
            if healthy {
                healthy_in_a_row += 1;
                if healthy_in_a_row >= p.healthy_threshold.max(1) {
                    return Ok(());
                }
            } else {
                healthy_in_a_row = 0;
            }
            if Instant::now() + p.interval > deadline {
                return Err(Failure(format!(
                    "{target} not healthy within {} ({checks} checks); last: {reason}",
                    humantime::format_duration(p.deadline)
                )));
            }
            tokio::time::sleep(p.interval).await;
        }
    }

    async fn drain(&self, target: &TargetId) -> Result<Vec<String>, Failure> {
        let engine = self.engine;
        let s = self.switch()?;
        let t = engine.policies.timeouts.call;
        let p = &engine.policies.drain;
        let t0 = Instant::now();
        engine
            .call("drain", target.as_str(), t, || s.drain(target))
            .await?;
        let deadline = t0 + p.timeout;
        let left = loop {
            let n = engine
                .call("read sessions of", target.as_str(), t, || {
                    s.active_sessions(target)
                })
                .await?;
            if n == 0 || Instant::now() >= deadline {
                break n;
            }
            tokio::time::sleep(
                p.poll_interval
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(1)),
            )
            .await;
        };
        let duration = t0.elapsed();
        engine.emit(&Event::Drained {
            target: target.clone(),
            duration,
            sessions_left: left,
        });
        if left > 0 {
            let msg = format!(
                "{target} still had {left} session(s) after the drain timeout of {}",
                humantime::format_duration(p.timeout)
            );
            return match p.on_timeout {
                DrainTimeoutAction::Proceed => Ok(vec![format!("{msg}; carried on")]),
                DrainTimeoutAction::Fail => Err(Failure(msg)),
            };
        }
        Ok(Vec::new())
    }

    /// Do a step that touches one target only; needs no `&mut self`, so the steps of one batch
    /// run concurrently. Returns notes for the report.
    async fn act_shared(&self, step: &Step) -> Result<Vec<String>, Failure> {
        let engine = self.engine;
        let env = self.env();
        let t = engine.policies.timeouts.call;
        let long = engine.policies.timeouts.long_call;
        match step {
            Step::Prepare { target, version } => {
                let tg = env.target(target)?;
                let release = if version == &self.plan.release.version {
                    self.plan.release.clone()
                } else {
                    Release::new(version.clone())
                };
                engine
                    .call(
                        &format!("prepare {version} on"),
                        target.as_str(),
                        long,
                        || tg.prepare(&release),
                    )
                    .await?;
            }
            Step::Activate { target, version } => {
                let tg = env.target(target)?;
                engine
                    .call(
                        &format!("activate {version} on"),
                        target.as_str(),
                        t,
                        || tg.activate(version),
                    )
                    .await?;
            }
            Step::Stop { target } => {
                let tg = env.target(target)?;
                engine
                    .call("stop", target.as_str(), t, || tg.stop())
                    .await?;
            }
            Step::Start { target } => {
                let tg = env.target(target)?;
                engine
                    .call("start", target.as_str(), t, || tg.start())
                    .await?;
            }
            Step::AwaitHealthy { target, version } => {
                self.await_healthy(target, version.as_ref()).await?
            }
            Step::Drain { target } => return self.drain(target).await,
            other => return Err(Failure(format!("{other} cannot run as part of a batch"))),
        }
        Ok(Vec::new())
    }
}

/// What may interrupt a step: cancellation (Ctrl-C), the operator's abort, the run's deadline.
struct Interrupts<'a> {
    cancel: &'a CancellationToken,
    control: &'a Control,
    deadline: Option<Instant>,
    run_deadline: Option<Duration>,
}

impl Interrupts<'_> {
    /// Run `fut` unless interrupted first; `Err(why)` when interrupted.
    async fn race<F: Future>(&self, fut: F) -> Result<F::Output, String> {
        let until_deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err("cancelled".to_owned()),
            () = self.control.inner.abort.cancelled() => Err(self.control.abort_reason()),
            () = until_deadline => Err(format!(
                "the run's deadline of {} passed",
                humantime::format_duration(self.run_deadline.unwrap_or_default())
            )),
            out = fut => Ok(out),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
