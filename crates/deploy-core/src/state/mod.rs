//! Where the engine keeps what outlives a process: the environment's lock, each run's journal,
//! the operator's control requests, finished reports and the history of runs.
//!
//! [`StateStore`] is the contract; [`LocalStateStore`] (a state directory on the deploying
//! machine) is the embedded default. A store shared by every machine that deploys an
//! environment (the team's PostgreSQL, in `deploy-postgres`) makes one lock, one journal and one
//! history hold across laptops and CI runners.
//!
//! # The contract
//!
//! - **One holder.** [`StateStore::lock`] gives at most one live [`Lease`] per environment at a
//!   time, across every process and machine using the store. A holder that is gone (its
//!   process died, or its lease expired without renewal) is *stale*: its lock is taken over only
//!   with [`Takeover::IfStale`], never silently. With [`LockOptions::wait`] a caller queues
//!   behind a live holder until it lets go or the wait ends ([`DeployError::Locked`]).
//! - **Fenced writes.** Each lease has a token, greater than every token given before for that
//!   environment. A [`JournalWriter`] opened under a lease refuses every append once another
//!   holder took the lock over ([`DeployError::LeaseLost`]), and [`Lease::lost`] says so as soon
//!   as the store knows: the run then acts no further — no next step, no undo — and the new
//!   holder resumes or rolls back from the shared journal.
//! - **Durable journal.** An append that returns `Ok` is read back by [`StateStore::journal`]
//!   from any process; a failed append leaves no partial record.
//! - **Requests addressed to one run.** A control request names its run; the store keeps at
//!   most one per environment, and [`StateStore::take_request`] hands it out once.
//! - **History.** Every finished run is recorded ([`HistoryEntry`]) and listed oldest first.
//!
//! `deploy_core::testing::conformance::state_store` checks a store against this contract.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::{
    AddressedRequest, DeployError, JournalState, LockInfo, Outcome, Record, Report,
};
use crate::model::{BackupId, TargetId, Version};
use crate::strategy::Snapshot;

pub mod local;

pub use local::LocalStateStore;

/// The run a step belongs to, for adapters that record who changed what (a release directory's
/// `revisions.log`). Set by the engine for the life of each run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunContext {
    /// The run.
    pub run_id: String,
    /// Who runs it.
    pub user: String,
    /// From which machine.
    pub host: String,
}

tokio::task_local! {
    static RUN: RunContext;
}

/// The run the calling task acts for, when the engine runs one.
pub fn current_run() -> Option<RunContext> {
    RUN.try_with(Clone::clone).ok()
}

/// Run `fut` as part of run `ctx`.
pub(crate) async fn in_run<F: std::future::Future>(ctx: RunContext, fut: F) -> F::Output {
    RUN.scope(ctx, fut).await
}

/// Whether a stale lock (its holder is gone) may be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Takeover {
    /// Never: a stale lock is [`DeployError::StaleLock`].
    #[default]
    Never,
    /// When its holder is gone (dead process, expired lease); a live holder is never displaced.
    IfStale,
}

/// How to take an environment's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockOptions {
    /// Queue behind a live holder for up to this long (`None`: fail at once).
    pub wait: Option<Duration>,
    /// Whether a stale lock may be taken over.
    pub takeover: Takeover,
}

/// Who holds an environment's lock, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// Who.
    pub info: LockInfo,
    /// Its holder is gone (process dead, lease expired): the lock is stale.
    pub stale: bool,
    /// When its lease ends unless renewed (`None` for a store whose locks end with their
    /// process).
    pub expires_at: Option<SystemTime>,
}

impl Holder {
    /// A holder.
    pub fn new(info: LockInfo, stale: bool, expires_at: Option<SystemTime>) -> Self {
        Self {
            info,
            stale,
            expires_at,
        }
    }
}

/// A held lock.
#[async_trait]
pub trait Lease: Send + Sync + fmt::Debug {
    /// Its fencing token: greater than every token given before for the environment.
    fn token(&self) -> u64;

    /// Why the lease is lost — another holder took it over, or it expired unrenewed — once the
    /// store knows; `None` while it holds.
    fn lost(&self) -> Option<String>;

    /// A receiver that turns `Some(why)` when the lease is lost, for a store that learns it
    /// in the background (a heartbeat): the engine then stops the run at once, even in the
    /// middle of a wait. `None` (the default) when only [`lost`](Self::lost) says it.
    fn lost_signal(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        None
    }

    /// Release the lock: the run ended.
    async fn release(self: Box<Self>);

    /// Let go without releasing: the lock stays, stale, so that the next deploy is told that a
    /// run needs recovering.
    async fn abandon(self: Box<Self>);
}

/// The journal of one run, open for appending under a lease.
#[async_trait]
pub trait JournalWriter: Send + Sync + fmt::Debug {
    /// Append `record`, durably before returning when the engine acts on it next. Refused with
    /// [`DeployError::LeaseLost`] once the lease it was opened under is lost. A record that
    /// cannot be written whole leaves nothing, and every later append fails.
    async fn append(&mut self, record: &Record) -> Result<(), DeployError>;

    /// Where it is, for messages (a file path, `postgres://…/run/<id>`).
    fn location(&self) -> String;
}

/// One finished run, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The run.
    pub run_id: String,
    /// The environment.
    pub environment: String,
    /// The release it deployed.
    pub version: Version,
    /// The strategy.
    pub strategy: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Who ran it.
    pub user: String,
    /// From which machine.
    pub host: String,
    /// The CI job, when the environment named one (`CI_JOB_URL`, GitHub's run URL, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job: Option<String>,
    /// When it started.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// How long it took.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The environment as the run found it: each target's version, the weights, the schema.
    pub before: Snapshot,
    /// The environment as the run left it, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Snapshot>,
    /// The backup taken before migrating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupId>,
    /// The targets the run gave up on ([`Outcome::PromotedWithFailures`]): out of the traffic,
    /// on the release they ran before; `deploy retry` deploys to them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_targets: Vec<TargetId>,
}

impl HistoryEntry {
    /// The newest run of `history` (oldest first) that left a release in the traffic:
    /// promoted, with or without failures. A run that rolled back changed nothing.
    pub fn newest_promoted(history: &[HistoryEntry]) -> Option<&HistoryEntry> {
        history.iter().rev().find(|h| h.outcome.is_promoted())
    }
}

/// Where the engine keeps what outlives a process; see the [module documentation](self).
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Where it keeps state, for messages (`/var/lib/deploy/shop`, `postgres://db/deploy`);
    /// never a secret.
    fn location(&self) -> String;

    /// Take the lock of `environment` for `holder`.
    ///
    /// [`DeployError::Locked`] when a live holder has it (after waiting `options.wait`);
    /// [`DeployError::StaleLock`] when a gone holder left it and `options.takeover` is
    /// [`Takeover::Never`].
    async fn lock(
        &self,
        environment: &str,
        holder: &LockInfo,
        options: LockOptions,
    ) -> Result<Box<dyn Lease>, DeployError>;

    /// Who holds the lock of `environment`, if anyone.
    async fn holder(&self, environment: &str) -> Result<Option<Holder>, DeployError>;

    /// Create the journal of the new run `run_id` under `lease`.
    async fn create_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError>;

    /// Open the journal of `run_id` to append to it under `lease` (a recovery).
    async fn reopen_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError>;

    /// The runs journaled for `environment`, oldest first.
    async fn runs(&self, environment: &str) -> Result<Vec<String>, DeployError>;

    /// Replay the journal of `run_id`; `Ok(None)` when it holds no complete record (the run died
    /// before its first).
    async fn journal(
        &self,
        environment: &str,
        run_id: &str,
    ) -> Result<Option<JournalState>, DeployError>;

    /// Where the journal of `run_id` is, for messages.
    fn journal_location(&self, environment: &str, run_id: &str) -> String;

    /// Leave `request` for the run it names, replacing any request left before.
    async fn put_request(
        &self,
        environment: &str,
        request: &AddressedRequest,
    ) -> Result<(), DeployError>;

    /// Take the request left for `environment`, if any (it is removed).
    async fn take_request(
        &self,
        environment: &str,
    ) -> Result<Option<AddressedRequest>, DeployError>;

    /// Keep the finished report of a run; returns where it is.
    async fn save_report(&self, environment: &str, report: &Report) -> Result<String, DeployError>;

    /// Where the report of `run_id` is kept, for messages (the file's path for a store of
    /// files).
    fn report_location(&self, environment: &str, run_id: &str) -> String {
        format!(
            "{} (report of run {run_id} in {environment})",
            self.location()
        )
    }

    /// The report of `run_id`, if it was kept.
    async fn report(&self, environment: &str, run_id: &str) -> Result<Option<Report>, DeployError>;

    /// Record a finished run in the history.
    async fn record_history(&self, entry: &HistoryEntry) -> Result<(), DeployError>;

    /// The history of `environment`, oldest first.
    async fn history(&self, environment: &str) -> Result<Vec<HistoryEntry>, DeployError>;
}
