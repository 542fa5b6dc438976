//! Doing one step: the calls to targets, switch, probe, runner and maintenance page.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{Release, TargetId, Version, Weights};
use crate::strategy::Step;
use crate::traits::{DynMaintenance, DynMigrationRunner, DynTrafficSwitch, ProbeRequest};

use super::call::{Failure, with_timeout};
use super::policy::DrainTimeoutAction;
use super::report::Event;
use super::run::Run;
use crate::error::{Error, ErrorKind};

impl<'e> Run<'e> {
    pub(super) fn maintenance(&self) -> Result<&'e DynMaintenance, Failure> {
        self.env().maintenance.as_ref().ok_or_else(|| {
            Failure::engine(
                ErrorKind::InvalidInput,
                "the environment has no maintenance page",
            )
        })
    }

    pub(super) fn migrations(&self) -> Result<&'e DynMigrationRunner, Failure> {
        self.env().migrations.as_ref().ok_or_else(|| {
            Failure::engine(
                ErrorKind::InvalidInput,
                "the environment has no migration runner",
            )
        })
    }

    pub(super) fn switch(&self) -> Result<&'e DynTrafficSwitch, Failure> {
        self.env().switch.as_ref().ok_or_else(|| {
            Failure::engine(
                ErrorKind::InvalidInput,
                "the environment has no traffic switch",
            )
        })
    }

    /// Do one step of the forward path: [`act`](Self::act), then, after a traffic step, the
    /// served-version check at the front door when the environment has one. The check is part
    /// of the step: its failure fails the step, whose inverse (journaled before it acted) puts
    /// the weights back. An undo is not checked: it must put things back whatever is served.
    pub(super) async fn act_forward(&mut self, step: &Step) -> Result<(), Failure> {
        self.act(step).await?;
        let Some(check) = &self.env().served_check else {
            return Ok(());
        };
        if !matches!(step, Step::SetWeights { .. }) {
            return Ok(());
        }
        let engine = self.engine;
        let s = self.switch()?;
        let weights = engine
            .call(
                "read weights of",
                "the switch",
                engine.policies.timeouts.call,
                || s.weights(),
            )
            .await?;
        match self.promised_versions(&weights) {
            Ok(promised) => {
                let summary = check.check(&promised).await?;
                self.note(summary);
            }
            Err(why) => self.note(format!("served versions not checked: {why}")),
        }
        Ok(())
    }

    /// The share of `weights` each version should get: a target serves the version this run
    /// activated on it (a step before the current one), else the one it ran when the plan was
    /// made. `Err(why)` when that cannot be said (a weighted target whose version is unknown,
    /// or no weight at all).
    fn promised_versions(&self, weights: &Weights) -> Result<BTreeMap<Version, f64>, String> {
        let mut runs: BTreeMap<&TargetId, Option<&Version>> = self
            .plan
            .snapshot
            .targets
            .iter()
            .map(|t| (&t.id, t.current.as_ref()))
            .collect();
        for done in &self.plan.steps[..self.current_index.min(self.plan.steps.len())] {
            if let Step::Activate { target, version } = done {
                runs.insert(target, Some(version));
            }
        }
        let total = weights.total();
        if total == 0 {
            return Err("every weight is 0".to_owned());
        }
        let mut promised: BTreeMap<Version, f64> = BTreeMap::new();
        for (target, w) in weights.iter().filter(|(_, w)| *w > 0) {
            let Some(Some(version)) = runs.get(target) else {
                return Err(format!(
                    "{target} has weight {w} but the version it runs is not known"
                ));
            };
            *promised.entry((*version).clone()).or_default() += f64::from(w) / total as f64;
        }
        Ok(promised)
    }

    /// Do one step (forward or undo).
    pub(super) async fn act(&mut self, step: &Step) -> Result<(), Failure> {
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
                for note in self.act_shared(step, self.undoing).await? {
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
                if self.undoing {
                    // Traffic leaves a failed release wherever a balancer still answers.
                    engine
                        .call("put weights back on", "the switch", t, || {
                            s.restore_weights(weights)
                        })
                        .await?;
                } else {
                    engine
                        .call("set weights on", "the switch", t, || s.set_weights(weights))
                        .await?;
                }
                let now = engine
                    .call("read weights of", "the switch", t, || s.weights())
                    .await?;
                let names: Vec<TargetId> = weights.iter().map(|(t, _)| t.clone()).collect();
                if &now.only(&names) != weights {
                    return Err(Failure::from(Error::new(
                        ErrorKind::Protocol,
                        "set weights on",
                        "the switch",
                        format!("it reports {} after setting {weights}", now.only(&names)),
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
                let reason = format!(
                    "for {}; promote to end the pause early",
                    humantime::format_duration(*d)
                );
                self.wait_for_operator(reason, Some(*d)).await;
            }
            Step::Pause { duration: None } => {
                self.wait_for_operator("until promoted".to_owned(), None)
                    .await;
            }
        }
        Ok(())
    }

    /// Probe `target` until it is healthy (on `version`) `healthy_threshold` times in a row.
    /// On the forward path (`undo` false) it fails after `unhealthy_threshold` answered
    /// unhealthy checks in a row, at the first answer reporting another version, or at the
    /// deadline; an undo waits for the deadline only: it puts back a release that ran before,
    /// which may answer 503 while it warms up, and giving up early would leave the environment
    /// half undone. A check without an answer (connection refused, no answer in time, a probe
    /// error) counts only toward the deadline: a service restarting refuses connections for a
    /// moment, and one slow to start is waited for until the deadline.
    pub(super) async fn await_healthy(
        &self,
        target: &TargetId,
        version: Option<&Version>,
        undo: bool,
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
        let mut unhealthy_in_a_row = 0;
        let mut checks = 0u32;
        let fail = |kind: ErrorKind, message: String| {
            Failure::from(Error::new(
                kind,
                "wait until healthy:",
                target.to_string(),
                message,
            ))
        };
        loop {
            checks += 1;
            let health = with_timeout("probe", target.as_str(), p.timeout, probe.check(&request))
                .await
                .map_err(|e| e.chain());
            let (healthy, reason) = match &health {
                Ok(h) => (h.healthy, h.reason.clone()),
                Err(chain) => (false, chain.clone()),
            };
            engine.emit(&Event::HealthChecked {
                target: target.clone(),
                healthy,
                reason: reason.clone(),
            });
            if let (false, Ok(h), Some(expected)) = (undo, &health, version)
                && let Some(reported) = &h.version
                && reported != expected
            {
                return Err(fail(
                    ErrorKind::Rejected,
                    format!(
                        "reports version {reported} where {expected} was activated: it cannot \
                         become healthy"
                    ),
                ));
            }
            match &health {
                Ok(h) if h.healthy => {
                    unhealthy_in_a_row = 0;
                    healthy_in_a_row += 1;
                    if healthy_in_a_row >= p.healthy_threshold.max(1) {
                        return Ok(());
                    }
                }
                Ok(h) if h.answered => {
                    healthy_in_a_row = 0;
                    unhealthy_in_a_row += 1;
                    if !undo
                        && p.unhealthy_threshold > 0
                        && unhealthy_in_a_row >= p.unhealthy_threshold
                    {
                        return Err(fail(
                            ErrorKind::Rejected,
                            format!(
                                "answered unhealthy {unhealthy_in_a_row} times in a row \
                                 ({reason}); the probe's unhealthy_threshold is {}",
                                p.unhealthy_threshold
                            ),
                        ));
                    }
                }
                // No answer: only the deadline counts it.
                _ => healthy_in_a_row = 0,
            }
            if Instant::now() + p.interval > deadline {
                return Err(fail(
                    ErrorKind::Timeout,
                    format!(
                        "not healthy within {} ({checks} checks); last: {reason}",
                        humantime::format_duration(p.deadline)
                    ),
                ));
            }
            tokio::time::sleep(p.interval).await;
        }
    }

    pub(super) async fn drain(&self, target: &TargetId) -> Result<Vec<String>, Failure> {
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
                DrainTimeoutAction::Fail => Err(Failure::engine(ErrorKind::Timeout, msg)),
                DrainTimeoutAction::Cut => {
                    engine
                        .call("cut the sessions of", target.as_str(), t, || {
                            s.cut_sessions(target)
                        })
                        .await?;
                    let after = engine
                        .call("read sessions of", target.as_str(), t, || {
                            s.active_sessions(target)
                        })
                        .await?;
                    Ok(vec![format!(
                        "{msg}; cut them through the switch ({after} left)"
                    )])
                }
            };
        }
        Ok(Vec::new())
    }

    /// Preparing `version` on `target` as a future that borrows only the engine, not the run: a
    /// batch prepared ahead runs on beside the steps after its group
    /// ([`Ahead`](super::run::Ahead)).
    pub(super) fn prepare(
        &self,
        target: &TargetId,
        version: &Version,
    ) -> Result<impl Future<Output = Result<(), Failure>> + Send + 'e, Failure> {
        let engine = self.engine;
        let tg = self.env().target(target)?;
        let release = if version == &self.plan.release.version {
            self.plan.release.clone()
        } else {
            Release::new(version.clone())
        };
        let (target, version) = (target.clone(), version.clone());
        Ok(async move {
            engine
                .call(
                    &format!("prepare {version} on"),
                    target.as_str(),
                    engine.policies.timeouts.long_call,
                    || tg.prepare(&release),
                )
                .await?;
            Ok(())
        })
    }

    /// Do a step that touches one target only; needs no `&mut self`, so the steps of one batch
    /// run concurrently. Returns notes for the report.
    pub(super) async fn act_shared(&self, step: &Step, undo: bool) -> Result<Vec<String>, Failure> {
        let engine = self.engine;
        let env = self.env();
        let t = engine.policies.timeouts.call;
        match step {
            Step::Prepare { target, version } => self.prepare(target, version)?.await?,
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
                self.await_healthy(target, version.as_ref(), undo).await?
            }
            Step::Drain { target } => return self.drain(target).await,
            other => {
                return Err(Failure::engine(
                    ErrorKind::Other,
                    format!("{other} cannot run as part of a batch"),
                ));
            }
        }
        Ok(Vec::new())
    }
}
