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
mod budget;
mod call;
mod control;
mod environment;
mod error;
mod inverse;
mod journal;
mod lock;
mod policy;
mod recovery;
mod release_rollback;
mod report;
mod rollback;
mod run;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::model::Release;
use crate::strategy::{Plan, PlanError, PlanOptions, Snapshot, Step, Strategy, TargetState};

pub use analysis::AnalysisTime;
pub use control::{AddressedRequest, Control, ControlRequest};
pub use environment::{Environment, EnvironmentBuilder};
pub use error::DeployError;
pub use journal::{JournalState, Record};
pub use lock::LockInfo;
pub use policy::{
    AnalysisPolicy, DrainPolicy, DrainTimeoutAction, InconclusiveAction, NoDataPolicy, Policies,
    ProbePolicy, RetryPolicy, Timeouts,
};
pub use release_rollback::{ReleaseRollback, RollbackTo, SchemaDecision};
pub use report::{
    Event, FailedTarget, Observer, Outcome, REPORT_SCHEMA_VERSION, Report, RollbackRecord,
    Severity, StepRecord, UndoRecord, VerdictRecord, WeightPoint, WeightSource,
};
pub use status::RunStatus;

use crate::state::{Lease, LocalStateStore, LockOptions, StateStore, Takeover};
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
    store: Option<Arc<dyn StateStore>>,
    lock_wait: Option<Duration>,
    control: Control,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn new_run_id() -> String {
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
            store: None,
            lock_wait: None,
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

    /// Keep the lock, the journals, the reports and the history in the state directory `dir`
    /// on this machine ([`LocalStateStore`]). Without a store a run is neither locked nor
    /// journaled, and cannot be recovered by another process.
    pub fn with_state_dir(self, dir: impl Into<PathBuf>) -> Self {
        self.with_state_store(Arc::new(LocalStateStore::new(dir)))
    }

    /// Keep the lock, the journals, the reports and the history in `store` — one shared by
    /// every machine that deploys the environment makes them hold across machines.
    pub fn with_state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Queue behind another run holding the environment's lock for up to `wait`, instead of
    /// failing at once with [`DeployError::Locked`].
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// The state store, if there is one.
    pub fn state_store(&self) -> Option<&Arc<dyn StateStore>> {
        self.store.as_ref()
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

    /// Run `futures` at most [`Policies::parallelism`] at a time; their outputs in order.
    pub(super) async fn in_parallel<F: std::future::Future>(
        &self,
        futures: impl IntoIterator<Item = F>,
    ) -> Vec<F::Output> {
        use futures_util::StreamExt;
        // Collected first: an iterator kept across an await makes the caller's future lose
        // `Send` to a higher-ranked lifetime.
        let futures: Vec<F> = futures.into_iter().collect();
        futures_util::stream::iter(futures)
            .buffered(self.policies.parallelism.max(1))
            .collect()
            .await
    }

    /// Read the state of every target, the switch, the schema and the maintenance page.
    pub async fn snapshot(&self) -> Result<Snapshot, DeployError> {
        let t = self.policies.timeouts.call;
        let snap_err = |source| DeployError::Snapshot {
            environment: self.env.name.clone(),
            source,
        };
        // Every read at once — the targets at most `parallelism` at a time, in the
        // environment's order (over SSH, each is that host's first connection), beside the
        // switch, the schema and the maintenance page.
        let targets = async {
            self.in_parallel(self.env.targets.iter().map(|target| async move {
                let current = self
                    .call("read current version of", target.id().as_str(), t, || {
                        target.current()
                    })
                    .await?;
                Ok(TargetState::new(
                    target.id().clone(),
                    target.endpoint(),
                    current,
                ))
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, crate::error::Error>>()
        };
        let weights = async {
            match &self.env.switch {
                Some(s) => self
                    .call("read weights of", "the switch", t, || s.weights())
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let migrations = async {
            match &self.env.migrations {
                Some(m) => self
                    .call(
                        "read migration status of",
                        "the database",
                        self.policies.timeouts.long_call,
                        || m.status(),
                    )
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let maintenance = async {
            match &self.env.maintenance {
                Some(m) => self
                    .call("read state of", "the maintenance page", t, || {
                        m.is_enabled()
                    })
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (targets, weights, migrations, maintenance) =
            tokio::join!(targets, weights, migrations, maintenance);
        let (targets, weights, migrations, maintenance) = (
            targets.map_err(snap_err)?,
            weights.map_err(snap_err)?,
            migrations.map_err(snap_err)?,
            maintenance.map_err(snap_err)?,
        );
        Ok(Snapshot::new(targets, weights, migrations, maintenance))
    }

    /// Plan a deploy of `release` with `strategy` from the environment's live state, without
    /// changing anything (a dry run prints this). Refuses an analysis that a gate cannot
    /// judge (one shorter than the gate's lookback).
    pub async fn plan(
        &self,
        strategy: &Strategy,
        release: &Release,
        options: &PlanOptions,
    ) -> Result<Plan, DeployError> {
        self.check_switch().await?;
        let snapshot = self.snapshot().await?;
        let options = self.back_in_traffic(strategy, &snapshot, options).await;
        self.plan_from(strategy, release, &snapshot, &options)
    }

    /// `options` for a rolling deploy that also gives the targets the newest promoted run gave
    /// up on (out of the traffic at weight 0 since) the weight they had before: deploying the
    /// next release to them would otherwise give them 0 back and keep them out for good.
    async fn back_in_traffic(
        &self,
        strategy: &Strategy,
        snapshot: &Snapshot,
        options: &PlanOptions,
    ) -> PlanOptions {
        let mut options = options.clone();
        if !matches!(strategy, Strategy::Rolling { .. }) || options.weights_back.is_some() {
            return options;
        }
        let Some(store) = &self.store else {
            return options;
        };
        let Ok(history) = store.history(&self.env.name).await else {
            return options;
        };
        let Some(last) = crate::state::HistoryEntry::newest_promoted(&history) else {
            return options;
        };
        let out: Vec<crate::model::TargetId> = last
            .failed_targets
            .iter()
            .filter(|t| snapshot.weights.as_ref().and_then(|w| w.get(t)) == Some(0))
            .cloned()
            .collect();
        if !out.is_empty() {
            options.weights_back = Some(budget::weights_before_given_up(&history, &out));
        }
        options
    }

    /// The switch's own check ([`TrafficSwitch::check`](crate::TrafficSwitch::check)): the
    /// balancer is set up as the switch relies on (a sticky canary's lines), before any plan.
    pub(super) async fn check_switch(&self) -> Result<(), DeployError> {
        match &self.env.switch {
            Some(switch) => switch
                .check()
                .await
                .map_err(|source| DeployError::SwitchCheck {
                    environment: self.env.name.clone(),
                    source,
                }),
            None => Ok(()),
        }
    }

    /// [`plan`](Self::plan) from a state already read.
    pub(super) fn plan_from(
        &self,
        strategy: &Strategy,
        release: &Release,
        snapshot: &Snapshot,
        options: &PlanOptions,
    ) -> Result<Plan, DeployError> {
        let plan = strategy.plan(
            &self.env.name,
            release,
            snapshot,
            self.env.capabilities(),
            options,
        )?;
        self.check_gates(&plan)?;
        Ok(plan)
    }

    /// Every analysis of `plan` can be judged by every gate: none is shorter than what a gate
    /// looks back over (it would judge traffic from before the analysis began).
    fn check_gates(&self, plan: &Plan) -> Result<(), PlanError> {
        for step in &plan.steps {
            let Step::Analyze { name, duration, .. } = step else {
                continue;
            };
            for gate in &self.env.gates {
                let lookback = gate.lookback();
                if lookback > *duration {
                    return Err(PlanError::GateCannotMeasure {
                        strategy: plan.strategy.name(),
                        version: plan.release.version.clone(),
                        gate: gate.name().to_owned(),
                        analysis: name.clone(),
                        reason: format!(
                            "it looks back over {} but the analysis lasts {}, so it would judge \
                             traffic from before the analysis began; make the analysis at least \
                             {} long or the gate's range shorter",
                            humantime::format_duration(lookback),
                            humantime::format_duration(*duration),
                            humantime::format_duration(lookback),
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// What an analysis of `duration` takes with this engine's gates and analysis policy:
    /// `plan` shows it, because a gate that needs a window per measurement stretches it.
    pub fn analysis_time(&self, duration: Duration) -> AnalysisTime {
        self.analysis_time_of("", duration)
    }

    /// [`analysis_time`](Self::analysis_time) of the analysis named `name` (a plan's
    /// `Step::Analyze` name), counting only the gates that judge in it
    /// ([`AnalysisPolicy::judges`](crate::policy::AnalysisPolicy::judges): a blue-green's
    /// analysis before the switch may be judged by the smoke checks alone).
    pub fn analysis_time_of(&self, name: &str, duration: Duration) -> AnalysisTime {
        let policy = &self.policies.analysis;
        let gates: Vec<_> = self
            .env
            .gates
            .iter()
            .filter(|g| policy.judges(name, g.name()))
            .collect();
        let evaluation = gates
            .iter()
            .map(|g| g.evaluation_time())
            .max()
            .unwrap_or_default();
        AnalysisTime {
            measurements: if gates.is_empty() {
                0
            } else {
                policy.measurements(duration)
            },
            spacing: policy.spacing(duration),
            evaluation,
            wall: if gates.is_empty() {
                duration
            } else {
                policy.wall_time(duration, evaluation)
            },
        }
    }

    /// Plan and run, holding the environment's lock from before the live state is read until
    /// the run has ended, so that nothing can change the environment between plan and run.
    pub async fn deploy(
        &self,
        strategy: &Strategy,
        release: &Release,
        options: &PlanOptions,
        cancel: &CancellationToken,
    ) -> Result<Report, DeployError> {
        self.plan_and_start(self.plan(strategy, release, options), cancel)
            .await
    }

    /// Take the environment's lock, then make the plan with `planning` under it and run it (the
    /// lock is let go if planning fails).
    pub(super) async fn plan_and_start(
        &self,
        planning: impl std::future::Future<Output = Result<Plan, DeployError>>,
        cancel: &CancellationToken,
    ) -> Result<Report, DeployError> {
        let run_id = new_run_id();
        let lease = self.lock_for(&run_id).await?;
        match planning.await {
            Ok(plan) => self.start(run_id, plan, lease, cancel).await,
            Err(e) => {
                release_lease(lease).await;
                Err(e)
            }
        }
    }

    /// Take the environment's lock for run `run_id` (nothing without a state store).
    pub(super) async fn lock_for(
        &self,
        run_id: &str,
    ) -> Result<Option<Box<dyn Lease>>, DeployError> {
        match &self.store {
            Some(store) => Ok(Some(
                store
                    .lock(
                        &self.env.name,
                        &LockInfo::this_process(run_id),
                        LockOptions {
                            wait: self.lock_wait,
                            takeover: Takeover::Never,
                        },
                    )
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Run `plan`. Returns a report whatever the outcome; `Err` only when the run could not
    /// start: the lock is held, the journal cannot be written, or the plan is stale — the
    /// environment is no longer in the state the plan was made from
    /// ([`DeployError::StalePlan`]), which is checked under the lock before the first step.
    pub async fn run(&self, plan: Plan, cancel: &CancellationToken) -> Result<Report, DeployError> {
        if plan.environment != self.env.name {
            return Err(DeployError::Usage {
                operation: "run plan",
                environment: self.env.name.clone(),
                cause: format!("the plan is for environment {}", plan.environment),
            });
        }
        let run_id = new_run_id();
        let lease = self.lock_for(&run_id).await?;
        let checked = async {
            self.check_gates(&plan)?;
            let live = self.snapshot().await?;
            let differences = plan.snapshot.differences(&live);
            if !differences.is_empty() {
                return Err(DeployError::StalePlan {
                    environment: self.env.name.clone(),
                    differences,
                });
            }
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            release_lease(lease).await;
            return Err(e);
        }
        self.start(run_id, plan, lease, cancel).await
    }

    pub(super) async fn start(
        &self,
        run_id: String,
        plan: Plan,
        lease: Option<Box<dyn Lease>>,
        cancel: &CancellationToken,
    ) -> Result<Report, DeployError> {
        if let Some(other) = self.control.running() {
            release_lease(lease).await;
            return Err(DeployError::Usage {
                operation: "run plan",
                environment: self.env.name.clone(),
                cause: format!("this engine is already running run {other}"),
            });
        }
        let journal = match (&self.store, &lease) {
            (Some(store), Some(l)) => {
                let opened = async {
                    let mut journal = store
                        .create_journal(l.as_ref(), &self.env.name, &run_id)
                        .await?;
                    journal
                        .append(&Record::Started {
                            run_id: run_id.clone(),
                            plan: Box::new(plan.clone()),
                            at: SystemTime::now(),
                            pid: std::process::id(),
                            host: lock::host_name(),
                        })
                        .await?;
                    Ok::<_, DeployError>(journal)
                }
                .await;
                match opened {
                    Ok(j) => Some(j),
                    Err(e) => {
                        release_lease(lease).await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let run = Run::new(self, run_id, plan, journal, lease, SystemTime::now());
        run.execute(0, cancel, None).await
    }
}

/// Release `lease`, if any (a run that did not start).
pub(super) async fn release_lease(lease: Option<Box<dyn Lease>>) {
    if let Some(l) = lease {
        l.release().await;
    }
}
