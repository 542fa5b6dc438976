//! One run in progress: the forward path, batch by batch, with hooks and the journal.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, ErrorKind};
use crate::hooks::{HookContext, HookPoint};
use crate::model::{BackupId, TargetId};
use crate::strategy::{Plan, Snapshot, Step};

use super::call::{Failure, contained, panic_message};
use super::control::{self, Control};
use super::journal::Record;
use super::report::{
    Event, FailedTarget, Outcome, Report, RollbackRecord, StepRecord, VerdictRecord,
};
use super::{DeployError, Engine, Environment};
use crate::state::{HistoryEntry, JournalWriter, Lease};

/// One run in progress.
pub(super) struct Run<'e> {
    pub(super) engine: &'e Engine,
    pub(super) run_id: String,
    pub(super) plan: Plan,
    pub(super) journal: Option<Box<dyn JournalWriter>>,
    /// The environment's lock, held for the run's life.
    pub(super) lease: Option<Box<dyn Lease>>,
    /// Why the lease was lost (another holder took the lock over): from then on the run acts
    /// no further — no step, no undo — and ends with [`DeployError::LeaseLost`].
    pub(super) lease_lost: Option<String>,
    pub(super) started_at: SystemTime,
    pub(super) start: Instant,
    pub(super) steps: Vec<StepRecord>,
    pub(super) verdicts: Vec<VerdictRecord>,
    pub(super) notes: Vec<String>,
    pub(super) inverses: Vec<(usize, Vec<Step>)>,
    pub(super) recorded: HashSet<usize>,
    pub(super) undone: HashSet<(usize, usize)>,
    pub(super) backup: Option<BackupId>,
    pub(super) rollback_record: Option<RollbackRecord>,
    /// The first failed journal write: from then on the run acts no further and rolls back
    /// from memory.
    pub(super) journal_error: Option<String>,
    /// The step being run (pauses journal which step waits).
    pub(super) current_index: usize,
    /// Recovering a run another process left: the journal says what was attempted, the world
    /// says what is, so an undo is checked against the world before it acts.
    /// Whether the steps acted now are a rollback's undo steps.
    pub(super) undoing: bool,
    pub(super) recovering: bool,
    /// A migrate step chose to keep its (additive) migrations on rollback.
    pub(super) schema_kept: bool,
    /// Targets that an undo stopped (they ran nothing before the run).
    pub(super) stopped_by_undo: HashSet<TargetId>,
    /// The state read after rolling back, reused as the report's final state.
    pub(super) final_state: Option<Snapshot>,
    /// The targets a failure budget gave up on, and why.
    pub(super) given_up: Vec<(TargetId, String)>,
}

impl<'e> Run<'e> {
    pub(super) fn new(
        engine: &'e Engine,
        run_id: String,
        plan: Plan,
        journal: Option<Box<dyn JournalWriter>>,
        lease: Option<Box<dyn Lease>>,
        started_at: SystemTime,
    ) -> Self {
        Self {
            engine,
            run_id,
            plan,
            journal,
            lease,
            lease_lost: None,
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
            journal_error: None,
            current_index: 0,
            recovering: false,
            undoing: false,
            schema_kept: false,
            stopped_by_undo: HashSet::new(),
            final_state: None,
            given_up: Vec::new(),
        }
    }

    pub(super) fn env(&self) -> &'e Environment {
        &self.engine.env
    }

    pub(super) fn note(&mut self, note: String) {
        tracing::info!(target: "deploy", "note: {note}");
        self.notes.push(note);
    }

    /// Whether the lease is lost (checked with the store's last word, without a round trip).
    pub(super) fn lease_is_lost(&mut self) -> bool {
        if self.lease_lost.is_none()
            && let Some(why) = self.lease.as_ref().and_then(|l| l.lost())
        {
            tracing::error!(target: "deploy", "run {} lost its lock: {why}; acting no further", self.run_id);
            self.lease_lost = Some(why);
        }
        self.lease_lost.is_some()
    }

    /// Append to the journal. A failure is noted (once) and reported as `false`; the forward
    /// path then stops before its next step and rolls back from memory, while an undo in
    /// progress carries on. A write refused because the lease was lost stops everything.
    pub(super) async fn record(&mut self, record: &Record) -> bool {
        if self.lease_is_lost() {
            return false;
        }
        let Some(j) = &mut self.journal else {
            return true;
        };
        match j.append(record).await {
            Ok(()) => true,
            Err(DeployError::LeaseLost { cause, .. }) => {
                tracing::error!(target: "deploy", "run {} lost its lock: {cause}; acting no further", self.run_id);
                self.lease_lost = Some(cause);
                false
            }
            Err(e) => {
                if self.journal_error.is_none() {
                    self.journal_error = Some(e.to_string());
                    self.note(format!(
                        "{e}; the run acted no further, rolled back from memory, and its journal \
                         ends before this point (recovery reads the live state to know where it stands)"
                    ));
                }
                false
            }
        }
    }

    /// Append a record kept only for `status` (a measurement): a failure to write it is logged
    /// and changes nothing else — a journal that really cannot be written fails the next
    /// record that matters.
    pub(super) async fn record_for_status(&mut self, record: &Record) {
        if self.lease_is_lost() {
            return;
        }
        if let Some(j) = &mut self.journal
            && let Err(e) = j.append(record).await
        {
            match e {
                DeployError::LeaseLost { cause, .. } => {
                    tracing::error!(target: "deploy", "run {} lost its lock: {cause}; acting no further", self.run_id);
                    self.lease_lost = Some(cause);
                }
                e => {
                    tracing::warn!(target: "deploy", "run {}: a measurement was not journaled: {e}", self.run_id)
                }
            }
        }
    }

    pub(super) async fn execute(
        mut self,
        from: usize,
        cancel: &CancellationToken,
        forced_rollback: Option<String>,
    ) -> Result<Report, DeployError> {
        let span = tracing::info_span!("deploy", run = %self.run_id, env = %self.plan.environment, version = %self.plan.release.version);
        let run_id_for_context = self.run_id.clone();
        let run = async move {
            self.engine.emit(&Event::RunStarted {
                run_id: self.run_id.clone(),
                environment: self.plan.environment.clone(),
                version: self.plan.release.version.clone(),
                strategy: self.plan.strategy.name().to_owned(),
                steps: self.plan.steps.len(),
            });
            let control = self.engine.control.clone();
            control.begin_run(&self.run_id);
            let store = self.engine.store.clone();
            if let Some(store) = &store {
                // A request left behind by an operator when no run was there is not for us.
                control::discard_request(store.as_ref(), &self.plan.environment).await;
            }
            let mut failure = match forced_rollback {
                Some(reason) => Some(reason),
                None => {
                    // Another process may ask to promote or abort through the state store.
                    let (store, run_id) = (store.clone(), self.run_id.clone());
                    let environment = self.plan.environment.clone();
                    let watcher = async {
                        match store {
                            Some(store) => {
                                control::watch(
                                    store,
                                    environment,
                                    run_id,
                                    control.clone(),
                                    Duration::from_millis(250),
                                )
                                .await
                            }
                            None => std::future::pending().await,
                        }
                    };
                    // A lease lost in the background (another holder took the lock over)
                    // stops the run where it is, even in the middle of a step or a wait.
                    let lost = self.lease.as_ref().and_then(|l| l.lost_signal());
                    let lost_watch = async {
                        match lost {
                            Some(mut rx) => {
                                if rx.wait_for(Option::is_some).await.is_err() {
                                    // The store stopped watching: only `lost()` tells now.
                                    std::future::pending::<()>().await;
                                }
                            }
                            None => std::future::pending().await,
                        }
                    };
                    // A panic in the engine itself is contained like one in an adapter: the
                    // run rolls back instead of leaving the world half-changed.
                    let forward = AssertUnwindSafe(self.forward(from, cancel)).catch_unwind();
                    tokio::select! {
                        failure = forward => failure.unwrap_or_else(|panic| Some(format!(
                            "the engine panicked: {}", panic_message(&*panic)
                        ))),
                        () = watcher => None,
                        () = lost_watch => Some("the run lost its lock".to_owned()),
                    }
                }
            };
            if failure.is_none() && !self.lease_is_lost() {
                failure = self.verify_end_state().await;
            }
            let outcome = match failure {
                _ if self.lease_is_lost() => None,
                None if self.given_up.is_empty() => Some(Outcome::Promoted),
                None => Some(Outcome::PromotedWithFailures),
                Some(reason) => Some(self.rollback(reason).await),
            };
            let Some(outcome) = outcome.filter(|_| !self.lease_is_lost()) else {
                control.end_run();
                return Err(self.lost_lease_error().await);
            };
            let report = self.finish(outcome).await;
            control.end_run();
            if let Some(store) = &store {
                control::discard_request(store.as_ref(), &report.environment).await;
            }
            Ok(report)
        }
        .instrument(span);
        let ctx = crate::state::RunContext {
            run_id: run_id_for_context,
            user: super::lock::user_name(),
            host: super::lock::host_name(),
        };
        crate::state::in_run(ctx, run).await
    }

    /// Wait in the current step until the operator promotes (or `limit` passes); journaled, so
    /// that another process can tell the run is paused and address its promotion to this
    /// pause.
    pub(super) async fn wait_for_operator(&mut self, reason: String, limit: Option<Duration>) {
        let index = self.current_index;
        self.engine.emit(&Event::Paused {
            reason: reason.clone(),
        });
        self.record(&Record::PauseStarted { index, reason }).await;
        let control = self.engine.control.clone();
        match limit {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = control.pause(index) => {}
                }
            }
            None => control.pause(index).await,
        }
        self.record(&Record::PauseEnded { index }).await;
    }

    /// Before a run is called promoted: read the live state and compare it with the state the
    /// plan ends in. `Some(reason)` (a rollback) when they differ or the state cannot be read.
    async fn verify_end_state(&mut self) -> Option<String> {
        match self.engine.snapshot().await {
            Ok(live) => {
                let expected = self.with_given_up(self.plan.expected_end(), &live);
                let differences = expected.differences(&live);
                self.final_state = Some(live);
                if differences.is_empty() {
                    None
                } else {
                    Some(format!(
                        "every step was done, but the live state is not the plan's end state: {}",
                        crate::difference::describe(&differences)
                    ))
                }
            }
            Err(e) => Some(format!(
                "every step was done, but the live state could not be read to confirm it: {e}"
            )),
        }
    }

    /// Run the steps from `from`; `Some(reason)` when the run must roll back.
    pub(super) async fn forward(
        &mut self,
        from: usize,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let deadline = self.engine.policies.deadline.map(|d| self.start + d);
        if from == 0
            && let Err(reason) = self.run_hooks(HookPoint::Before, None).await
        {
            return Some(format!("stopped before the first step: {reason}"));
        }
        // A resumed run makes sure the targets it gave up on are out and back (the process
        // may have died while it took one out).
        for (target, _) in self.given_up.clone() {
            if let Err(e) = self.isolate(&target).await {
                return Some(format!("giving {target} up failed: {e}"));
            }
        }
        let mut index = from;
        // The next batch's prepares, started beside a batch's health waits: they run on beside
        // the steps that follow (the batch's weights, its analysis) and end before a step that
        // needs them or their targets.
        let mut ahead: Option<Ahead<'e>> = None;
        while index < self.plan.steps.len() {
            let end = self.batch_end(index);
            let group = &self.plan.steps[index..end];
            // Prepares that did not fit beside the health waits (a batch of more than half of
            // `parallelism`) join the ones running, in the background too.
            let background =
                ahead.is_some() && group.iter().all(|s| matches!(s, Step::Prepare { .. }));
            let limit = self.engine.policies.parallelism.max(1);
            if let Some(a) = ahead.take_if(|a| {
                !a.may_run_beside(group) || (background && a.prepares.len() + group.len() > limit)
            }) && let Some(reason) = self.end_ahead(a, cancel, deadline).await
            {
                return Some(reason);
            }
            // Boxed: a batch's future is large, and `beside` holds it beside the prepares'.
            let batch = Box::pin(self.forward_batch(index, end, cancel, deadline, background));
            let (failed, started) = beside(&mut ahead, batch).await;
            if let Some(reason) = failed {
                for a in ahead.into_iter().chain(started) {
                    self.abandon_ahead(a).await;
                }
                return Some(reason);
            }
            if let Some(started) = started {
                ahead = Some(match ahead.take() {
                    Some(running) => running.merge(started),
                    None => started,
                });
            }
            index = end;
        }
        if let Some(a) = ahead
            && let Some(reason) = self.end_ahead(a, cancel, deadline).await
        {
            return Some(reason);
        }
        if let Err(reason) = self.run_hooks(HookPoint::After, None).await {
            return Some(format!("every step done, but {reason}"));
        }
        None
    }

    /// The end (exclusive) of the batch of steps starting at `index` that may run together:
    /// consecutive steps of the same kind, each touching one distinct target (prepare,
    /// activate, stop, start, await healthy, drain) — health waits followed by prepares of
    /// other targets too ([`PrepareOrder::BatchAhead`](crate::PrepareOrder::BatchAhead)) —, at
    /// most `policies.parallelism` of them. Any other step is a batch of its own.
    pub(super) fn batch_end(&self, index: usize) -> usize {
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
            // Prepares of other targets join health waits (a batch prepared ahead, beside the
            // health checks of the batch before it): neither moves traffic.
            let joins = s.op() == first.op()
                || (matches!(first, Step::AwaitHealthy { .. })
                    && matches!(s, Step::Prepare { .. }));
            match s.target() {
                Some(t) if joins && seen.insert(t.clone()) => end += 1,
                _ => break,
            }
        }
        end
    }

    /// Run the steps `start..end`: each step's `before` hooks run, then the inverses of all of
    /// them are read from the live state (concurrently when there are several) and journaled,
    /// in plan order, before any of them acts (unless a previous process already journaled
    /// one: the state it saw is the one to return to); then they act — concurrently when there
    /// are several — raced against cancellation, abort and the run's deadline; then each one's
    /// `after` hooks run and it is finished, in plan order, with its own start and end.
    /// `Some(reason)` to roll back.
    pub(super) async fn forward_batch(
        &mut self,
        start: usize,
        end: usize,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        background: bool,
    ) -> (Option<String>, Option<Ahead<'e>>) {
        let engine = self.engine;
        let control = engine.control.clone();
        if cancel.is_cancelled() {
            return (Some("cancelled".to_owned()), None);
        }
        if control.is_aborted() {
            return (Some(control.abort_reason()), None);
        }
        if let Some(e) = &self.journal_error {
            return (
                Some(format!("the journal could not be written ({e})")),
                None,
            );
        }
        if self.lease_is_lost() {
            return (Some("the run lost its lock".to_owned()), None);
        }
        self.current_index = start;
        // A target given up on takes no further step; the weights and analyses leave it out.
        let (idx, steps): (Vec<usize>, Vec<Step>) = (start..end)
            .filter_map(|i| self.without_given_up(&self.plan.steps[i]).map(|s| (i, s)))
            .unzip();
        if steps.is_empty() {
            return (None, None);
        }
        // 1. Each step starts and its `before` hooks run, in plan order.
        let mut begun: Vec<Begun> = Vec::new();
        for (offset, step) in steps.iter().enumerate() {
            let index = idx[offset];
            let (started_at, t0) = (SystemTime::now(), Instant::now());
            engine.emit(&Event::StepStarted {
                index,
                step: step.clone(),
            });
            begun.push(Begun {
                index,
                step: step.clone(),
                started_at,
                t0,
            });
            if let Err(reason) = self.run_hooks(HookPoint::Before, Some(step)).await {
                return (Some(self.not_acted(begun, offset, reason).await), None);
            }
        }
        // 2. What undoes each one, read from the live state before any acts.
        let fresh: Vec<usize> = (0..steps.len())
            .filter(|&o| !self.recorded.contains(&idx[o]))
            .collect();
        let inverses: Vec<Result<Vec<Step>, Failure>> = if let [step] = steps.as_slice() {
            let span = tracing::info_span!("step", index = idx[0] + 1, op = step.op());
            if fresh.is_empty() {
                Vec::new()
            } else {
                vec![self.inverse_of(step).instrument(span).await]
            }
        } else {
            let this = &*self;
            engine
                .in_parallel(fresh.iter().map(|&o| {
                    let span = tracing::info_span!("step", index = idx[o] + 1, op = steps[o].op());
                    this.inverse_shared(&steps[o]).instrument(span)
                }))
                .await
        };
        // 3. Journaled in plan order: a step acts only once its inverse is on disk.
        for (&o, inverse) in fresh.iter().zip(inverses) {
            let index = idx[o];
            let inverse = match inverse {
                Ok(inverse) => inverse,
                Err(f) => return (Some(self.not_acted(begun, o, f.error).await), None),
            };
            if self
                .record(&Record::StepStarted {
                    index,
                    inverse: inverse.clone(),
                    at: Some(SystemTime::now()),
                })
                .await
            {
                self.recorded.insert(index);
                self.inverses.push((index, inverse));
            } else {
                let why = Error::new(ErrorKind::Io, "", "", "its inverse could not be journaled");
                return (Some(self.not_acted(begun, o, why).await), None);
            }
        }
        for (o, step) in steps.iter().enumerate() {
            if !fresh.contains(&o) && matches!(step, Step::Analyze { .. } | Step::Pause { .. }) {
                // A resumed wait starts again: `status` counts its time left from now (the
                // replay keeps the inverse recorded first).
                self.record_for_status(&Record::StepStarted {
                    index: idx[o],
                    inverse: Vec::new(),
                    at: Some(SystemTime::now()),
                })
                .await;
            }
        }
        // 4. They act, each one's end taken when it ends. Prepares beside health waits (a batch
        // prepared ahead) start now and run on past this batch's end.
        let guard = Interrupts {
            cancel,
            control: &control,
            deadline,
            run_deadline: engine.policies.deadline,
        };
        let (steps, begun, mut ahead) = self.split_ahead(steps, begun, background);
        let results: Vec<Acted> = if let [step] = steps.as_slice() {
            let span = tracing::info_span!("step", index = begun[0].index + 1, op = step.op());
            let act = guard.race(self.act_forward(step).instrument(span));
            match beside(&mut ahead, act).await {
                Ok(r) => vec![(r.map(|()| Vec::new()), Instant::now())],
                Err(why) => vec![(Err(Failure::interrupted(why.error())), Instant::now())],
            }
        } else {
            let this = &*self;
            let acts = futures_util::future::join_all(steps.iter().zip(&begun).map(|(s, b)| {
                let span = tracing::info_span!("step", index = b.index + 1, op = s.op());
                async move { (this.act_shared(s, false).await, Instant::now()) }.instrument(span)
            }));
            match beside(&mut ahead, guard.race(acts)).await {
                Ok(r) => r,
                Err(why) => {
                    let now = Instant::now();
                    steps
                        .iter()
                        .map(|_| (Err(Failure::interrupted(why.error())), now))
                        .collect()
                }
            }
        };
        // 5. `after` hooks and the end of each step, in plan order (prepares ahead go on).
        let concluded = beside(&mut ahead, Box::pin(self.conclude(&steps, begun, results))).await;
        (concluded, ahead)
    }

    /// Steps `steps` (begun as `begun`) acted with `results`: each one's `after` hooks run and
    /// it is finished, in plan order, with its own start and end; then its failures are given
    /// up on, as far as the failure budget lasts. `Some(reason)` to roll back.
    async fn conclude(
        &mut self,
        steps: &[Step],
        begun: Vec<Begun>,
        results: Vec<Acted>,
    ) -> Option<String> {
        // Each failure: the target a failure budget may give up on (none: not tolerable), why,
        // and its step.
        let mut failures: Vec<(Option<TargetId>, String, usize)> = Vec::new();
        for ((step, begun), (result, ended)) in steps.iter().zip(begun).zip(results) {
            let index = begun.index;
            let (error, why, tolerable) = match result {
                Ok(notes) => {
                    for n in notes {
                        self.note(n);
                    }
                    match self.run_hooks(HookPoint::After, Some(step)).await {
                        Ok(()) => (None, None, false),
                        Err(reason) => {
                            let why = format!("step {} ({step}) done, but {reason}", index + 1);
                            (Some(reason), Some(why), false)
                        }
                    }
                }
                Err(Failure { error, interrupted }) => {
                    let why = if interrupted {
                        format!("{error} during step {} ({step})", index + 1)
                    } else {
                        format!("step {} ({step}) failed: {error}", index + 1)
                    };
                    let tolerable = !interrupted
                        && matches!(
                            step,
                            Step::Prepare { .. }
                                | Step::Activate { .. }
                                | Step::AwaitHealthy { .. }
                        );
                    (Some(error), Some(why), tolerable)
                }
            };
            let duration = ended.saturating_duration_since(begun.t0);
            self.finish_step(index, step, begun.started_at, duration, error.as_ref())
                .await;
            if let Some(why) = why {
                failures.push((step.target().filter(|_| tolerable).cloned(), why, index));
            }
        }
        let first = failures.first()?.1.clone();
        // A failure budget takes failed targets out, one by one, while it lasts; any other
        // failure, or one too many, rolls the whole run back.
        let mut targets: Vec<(TargetId, String, Vec<usize>)> = Vec::new();
        for (target, why, index) in failures {
            let Some(target) = target else {
                return Some(why);
            };
            match targets.iter_mut().find(|(t, _, _)| *t == target) {
                Some((_, _, steps)) => steps.push(index),
                None => targets.push((target, why, vec![index])),
            }
        }
        let budget = self.failure_budget();
        if self.given_up.len() + targets.len() > budget {
            return Some(if budget == 0 {
                first
            } else {
                format!(
                    "{first} — {} target(s) failed in all, more than max_failed_targets allows ({budget})",
                    self.given_up.len() + targets.len()
                )
            });
        }
        for (target, why, steps) in targets {
            if let Err(e) = self.give_up(&target, &why, steps).await {
                return Some(format!("{why}; giving {target} up failed: {e}"));
            }
        }
        None
    }

    /// A step of a batch stopped before anything acted (its `before` hook failed, or its
    /// inverse could not be read or journaled): it is finished with `reason`, every other step
    /// of the batch that had started is finished as not run, and the run rolls back.
    async fn not_acted(&mut self, begun: Vec<Begun>, failed: usize, reason: Error) -> String {
        let step = begun[failed].step.clone();
        let index = begun[failed].index;
        for (o, b) in begun.into_iter().enumerate() {
            let s = b.step.clone();
            let duration = b.t0.elapsed();
            if o == failed {
                self.finish_step(b.index, &s, b.started_at, duration, Some(&reason))
                    .await;
            } else {
                let why = Error::new(
                    ErrorKind::Cancelled,
                    "",
                    "",
                    format!(
                        "not run: step {} of its batch failed before acting",
                        index + 1
                    ),
                );
                self.finish_step(b.index, &s, b.started_at, duration, Some(&why))
                    .await;
            }
        }
        format!(
            "step {} ({step}) stopped before it acted: {reason}",
            index + 1
        )
    }

    /// Run the hooks of `point` of `step` (or of the run), in order; the first failure stops.
    pub(super) async fn run_hooks(
        &mut self,
        point: HookPoint,
        step: Option<&Step>,
    ) -> Result<(), Error> {
        let env = self.env();
        for hook in env.hooks.iter().filter(|h| h.applies(point, step)) {
            let ctx = HookContext {
                run_id: self.run_id.clone(),
                environment: self.plan.environment.clone(),
                version: self.plan.release.version.clone(),
                point,
                step: step.cloned(),
            };
            let result = contained("run hook", hook.name(), hook.run(&ctx)).await;
            self.engine.emit(&Event::HookRan {
                hook: hook.name().to_owned(),
                point,
                step: step.cloned(),
                error: result.as_ref().err().map(Error::chain),
            });
            result?;
        }
        Ok(())
    }

    pub(super) async fn finish_step(
        &mut self,
        index: usize,
        step: &Step,
        started_at: SystemTime,
        duration: Duration,
        error: Option<&Error>,
    ) {
        let backup = if matches!(step, Step::Backup) && error.is_none() {
            self.backup.clone()
        } else {
            None
        };
        self.record(&Record::StepFinished {
            index,
            error: error.map(Error::chain),
            backup,
        })
        .await;
        self.report_step(index, step, started_at, duration, error);
    }

    /// Tell the observers and the report that step `index` ended (the journal is the caller's).
    fn report_step(
        &mut self,
        index: usize,
        step: &Step,
        started_at: SystemTime,
        duration: Duration,
        error: Option<&Error>,
    ) {
        self.engine.emit(&Event::StepFinished {
            index,
            step: step.clone(),
            duration,
            error: error.map(Error::chain),
        });
        self.steps.push(StepRecord {
            index,
            step: step.clone(),
            started_at,
            duration,
            error: error.map(Error::record),
        });
    }

    pub(super) async fn finish(mut self, outcome: Outcome) -> Report {
        self.record(&Record::Finished { outcome }).await;
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
            failed_targets: if outcome == Outcome::PromotedWithFailures {
                self.given_up
                    .iter()
                    .map(|(t, why)| FailedTarget::new(t.clone(), why.clone()))
                    .collect()
            } else {
                Vec::new()
            },
            notes: std::mem::take(&mut self.notes),
            initial_state: Some(self.plan.snapshot.clone()),
            final_state,
        };
        if let Some(store) = &self.engine.store {
            match store.save_report(&report.environment, &report).await {
                Ok(at) => tracing::info!(target: "deploy", "report kept at {at}"),
                Err(e) => tracing::warn!(target: "deploy", "keep the report: {e}"),
            }
            let entry = HistoryEntry {
                run_id: report.run_id.clone(),
                environment: report.environment.clone(),
                version: report.version.clone(),
                strategy: report.strategy.clone(),
                outcome,
                user: super::lock::user_name(),
                host: super::lock::host_name(),
                ci_job: super::lock::ci_job(),
                started_at: report.started_at,
                duration: report.duration,
                before: self.plan.snapshot.clone(),
                after: report.final_state.clone(),
                backup: self.backup.clone(),
                failed_targets: report
                    .failed_targets
                    .iter()
                    .map(|f| f.target.clone())
                    .collect(),
            };
            if let Err(e) = store.record_history(&entry).await {
                tracing::warn!(target: "deploy", "record the run in the history: {e}");
            }
        }
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
        report
    }

    /// The error a run that lost its lease ends with; the lease is let go without releasing
    /// (the lock is the new holder's).
    pub(super) async fn lost_lease_error(&mut self) -> DeployError {
        if let Some(lease) = self.lease.take() {
            lease.abandon().await;
        }
        let cause = self.lease_lost.clone().unwrap_or_default();
        self.engine.emit(&Event::RunFinished {
            outcome: Outcome::Failed,
        });
        DeployError::LeaseLost {
            environment: self.plan.environment.clone(),
            run_id: self.run_id.clone(),
            cause,
        }
    }
}

/// A step of a batch that has started: its place in the plan and when it started.
pub(super) struct Begun {
    index: usize,
    /// The step as it runs (without the targets given up on).
    step: Step,
    started_at: SystemTime,
    t0: Instant,
}

/// What a step came to: its result (notes for the report) and when it ended.
type Acted = (Result<Vec<String>, Failure>, Instant);

/// A prepare running ahead, kept with its result once it has one.
type Preparing<'e> = futures_util::future::MaybeDone<futures_util::future::BoxFuture<'e, Acted>>;

/// The prepares of the next batch, started beside a batch's health waits
/// ([`PrepareOrder::BatchAhead`](crate::PrepareOrder::BatchAhead)): they run on beside the
/// steps after that batch (its weights, its analysis) — driven by [`beside`] — and are ended
/// ([`Run::end_ahead`]) before a step that is not one of those, so that a batch taken out of
/// the traffic never waits for them and a batch never acts unprepared.
pub(super) struct Ahead<'e> {
    /// Each prepare as it began, and as it runs.
    prepares: Vec<(Begun, Preparing<'e>)>,
}

impl<'e> Ahead<'e> {
    /// Run the prepares to their end; safe to stop and call again (each keeps its result).
    async fn drive(&mut self) {
        futures_util::future::join_all(self.prepares.iter_mut().map(|(_, p)| p)).await;
    }

    /// Whether every prepare has its result.
    fn done(&self) -> bool {
        self.prepares
            .iter()
            .all(|(_, p)| matches!(p, futures_util::future::MaybeDone::Done(_)))
    }

    /// Whether `group` may act while these prepares still run: a batch's weights (of other
    /// targets), an analysis whose baseline is not being prepared (an unpacking host would
    /// skew it), prepares of other targets; anything else waits for them.
    fn may_run_beside(&self, group: &[Step]) -> bool {
        let mine = |t: &TargetId| {
            self.prepares
                .iter()
                .any(|(b, _)| b.step.target() == Some(t))
        };
        group.iter().all(|s| match s {
            Step::SetWeights { weights } => weights.iter().all(|(t, _)| !mine(t)),
            Step::Analyze { baseline, .. } => baseline.iter().all(|t| !mine(t)),
            Step::Prepare { target, .. } => !mine(target),
            _ => false,
        })
    }

    /// These prepares and `other`'s, as one.
    fn merge(mut self, other: Ahead<'e>) -> Ahead<'e> {
        self.prepares.extend(other.prepares);
        self
    }
}

/// Await `fut`, driving the prepares `ahead` meanwhile: they run beside it, never hold it up.
async fn beside<F: Future>(ahead: &mut Option<Ahead<'_>>, fut: F) -> F::Output {
    let Some(a) = ahead.as_mut().filter(|a| !a.done()) else {
        return fut.await;
    };
    tokio::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return out,
        () = a.drive() => {}
    }
    fut.await
}

impl<'e> Run<'e> {
    /// Split a batch's prepares that follow its health waits (a batch prepared ahead), or all of
    /// a batch of prepares to run in the `background`, off `steps` and `begun`, and start them;
    /// the rest is returned to act as the batch.
    fn split_ahead(
        &self,
        steps: Vec<Step>,
        begun: Vec<Begun>,
        background: bool,
    ) -> (Vec<Step>, Vec<Begun>, Option<Ahead<'e>>) {
        let mixed = matches!(steps.first(), Some(Step::AwaitHealthy { .. }))
            && steps.iter().any(|s| matches!(s, Step::Prepare { .. }));
        let all_prepares = steps.iter().all(|s| matches!(s, Step::Prepare { .. }));
        if !(mixed || background && all_prepares) {
            return (steps, begun, None);
        }
        let (mut now, mut prepares) = ((Vec::new(), Vec::new()), Vec::new());
        for (step, b) in steps.into_iter().zip(begun) {
            let Step::Prepare { target, version } = &step else {
                now.0.push(step);
                now.1.push(b);
                continue;
            };
            let span = tracing::info_span!("step", index = b.index + 1, op = step.op());
            let running = match self.prepare(target, version) {
                Ok(prepare) => async move { (prepare.await.map(|()| Vec::new()), Instant::now()) }
                    .instrument(span)
                    .boxed(),
                Err(f) => futures_util::future::ready((Err(f), Instant::now())).boxed(),
            };
            prepares.push((b, futures_util::future::maybe_done(running)));
        }
        (now.0, now.1, Some(Ahead { prepares }))
    }

    /// Let the prepares `ahead` end (raced against cancellation, abort and the run's deadline)
    /// and conclude them as a batch of their own. `Some(reason)` to roll back.
    async fn end_ahead(
        &mut self,
        mut ahead: Ahead<'e>,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Option<String> {
        let control = self.engine.control.clone();
        let guard = Interrupts {
            cancel,
            control: &control,
            deadline,
            run_deadline: self.engine.policies.deadline,
        };
        let interrupted = guard.race(ahead.drive()).await.err();
        let (mut steps, mut begun, mut acted) = (Vec::new(), Vec::new(), Vec::new());
        for (b, mut p) in ahead.prepares {
            let out = match (&interrupted, std::pin::Pin::new(&mut p).take_output()) {
                (None, Some(out)) => out,
                (why, _) => {
                    let why = why.as_ref().map_or_else(
                        || Error::new(ErrorKind::Other, "prepare", "", "ended without a result"),
                        Interruption::error,
                    );
                    (Err(Failure::interrupted(why)), Instant::now())
                }
            };
            steps.push(b.step.clone());
            begun.push(b);
            acted.push(out);
        }
        self.conclude(&steps, begun, acted).await
    }

    /// The run rolls back while the prepares `ahead` may still run: they stop, and each is
    /// finished as it ended — or, unless all had ended, reported as stopped.
    async fn abandon_ahead(&mut self, ahead: Ahead<'e>) {
        let done = ahead.done();
        for (b, mut p) in ahead.prepares {
            match std::pin::Pin::new(&mut p).take_output().filter(|_| done) {
                Some((result, ended)) => {
                    let duration = ended.saturating_duration_since(b.t0);
                    let error = result.err().map(|f| f.error);
                    self.finish_step(b.index, &b.step, b.started_at, duration, error.as_ref())
                        .await;
                }
                // Stopped: reported, and left unfinished in the journal as a step in flight
                // when a process dies (its failure would read as the run's).
                None => {
                    let stopped = Error::new(
                        ErrorKind::Cancelled,
                        "prepare",
                        "",
                        "stopped: the run rolls back",
                    );
                    let duration = b.t0.elapsed();
                    self.report_step(b.index, &b.step, b.started_at, duration, Some(&stopped));
                }
            }
        }
    }
}

/// Why a step was interrupted: its kind (cancelled, or timed out at the run's deadline) and
/// the reason.
#[derive(Debug, Clone)]
pub(super) struct Interruption(ErrorKind, String);

impl Interruption {
    fn error(&self) -> Error {
        Error::new(self.0, "", "", self.1.clone())
    }
}

/// What may interrupt a step: cancellation (Ctrl-C), the operator's abort, the run's deadline.
pub(super) struct Interrupts<'a> {
    pub(super) cancel: &'a CancellationToken,
    pub(super) control: &'a Control,
    pub(super) deadline: Option<Instant>,
    pub(super) run_deadline: Option<Duration>,
}

impl Interrupts<'_> {
    /// Run `fut` unless interrupted first; `Err(why)` when interrupted.
    pub(super) async fn race<F: Future>(&self, fut: F) -> Result<F::Output, Interruption> {
        let abort = self.control.abort_token();
        let until_deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Interruption(ErrorKind::Cancelled, "cancelled".to_owned())),
            () = abort.cancelled() => Err(Interruption(ErrorKind::Cancelled, self.control.abort_reason())),
            () = until_deadline => Err(Interruption(ErrorKind::Timeout, format!(
                "the run's deadline of {} passed",
                humantime::format_duration(self.run_deadline.unwrap_or_default())
            ))),
            out = fut => Ok(out),
        }
    }
}
