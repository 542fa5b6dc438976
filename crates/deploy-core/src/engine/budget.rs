//! A rolling deploy's failure budget (`max_failed_targets`): a target whose own step failed is
//! taken out of the traffic and rolled back alone while the others go on, as long as the budget
//! lasts.

use tokio_util::sync::CancellationToken;

use crate::model::{Release, TargetId, Weights};
use crate::strategy::{PlanOptions, Snapshot, Step, Strategy};

use super::journal::Record;
use super::report::{Event, Report};
use super::run::Run;
use super::{DeployError, Engine};

impl Engine {
    /// Deploy `release` again to the targets the newest promoted run gave up on (it ended
    /// [`Outcome::PromotedWithFailures`](crate::Outcome::PromotedWithFailures); a retry that
    /// rolled back since changed nothing), and
    /// to them only, with `strategy` (a rolling one):
    /// each gets back the weight it had before it was taken out of the traffic. Refused when
    /// the newest run gave up on no target, or deployed another release.
    pub async fn retry_failed(
        &self,
        strategy: &Strategy,
        release: &Release,
        options: &PlanOptions,
        cancel: &CancellationToken,
    ) -> Result<Report, DeployError> {
        self.plan_and_start(
            async {
                let options = self.retry_options(release, options).await?;
                self.plan(strategy, release, &options).await
            },
            cancel,
        )
        .await
    }

    /// `options` limited to the targets the newest promoted run gave up on, each given back the
    /// weight it had before ([`retry_failed`](Self::retry_failed)).
    async fn retry_options(
        &self,
        release: &Release,
        options: &PlanOptions,
    ) -> Result<PlanOptions, DeployError> {
        let refused = |cause: String| DeployError::Refused {
            operation: "retry the targets given up on",
            environment: self.env.name.clone(),
            cause,
        };
        let history = self.history().await?;
        // The newest run that left a release in the traffic says what is given up on now (a
        // retry that rolled back changed nothing).
        let Some(last) = crate::state::HistoryEntry::newest_promoted(&history) else {
            return Err(refused("no run promoted a release yet".to_owned()));
        };
        if last.failed_targets.is_empty() {
            return Err(refused(format!(
                "the newest promoted run, {}, gave up on no target",
                last.run_id
            )));
        }
        if last.version != release.version {
            return Err(refused(format!(
                "the newest promoted run, {}, deployed {}, not {}: a retry deploys the same release",
                last.run_id, last.version, release.version
            )));
        }
        let mut options = options.clone();
        options.weights_back = Some(weights_before_given_up(&history, &last.failed_targets));
        options.only_targets = Some(last.failed_targets.clone());
        Ok(options)
    }
}

impl Run<'_> {
    /// How many targets this run may give up on (0 without `max_failed_targets`).
    pub(super) fn failure_budget(&self) -> usize {
        match &self.plan.strategy {
            Strategy::Rolling {
                max_failed_targets: Some(budget),
                ..
            } => {
                let mut targets: Vec<&TargetId> = self
                    .plan
                    .steps
                    .iter()
                    .filter(|s| matches!(s, Step::Activate { .. }))
                    .filter_map(Step::target)
                    .collect();
                targets.sort();
                targets.dedup();
                budget.of(targets.len())
            }
            _ => 0,
        }
    }

    /// `step` as it runs once targets were given up on: `None` when it is skipped
    /// ([`skipped_without`]); weights and analyses without them.
    pub(super) fn without_given_up(&self, step: &Step) -> Option<Step> {
        if self.given_up.is_empty() {
            return Some(step.clone());
        }
        let gone: Vec<TargetId> = self.given_up.iter().map(|(t, _)| t.clone()).collect();
        if skipped_without(step, &gone) {
            return None;
        }
        match step {
            Step::SetWeights { weights } => {
                let mut kept = Weights::new();
                for (t, w) in weights.iter().filter(|(t, _)| !gone.contains(t)) {
                    kept.set(t.clone(), w);
                }
                Some(Step::SetWeights { weights: kept })
            }
            Step::Analyze {
                name,
                duration,
                canary,
                baseline,
            } => Some(Step::Analyze {
                name: name.clone(),
                duration: *duration,
                canary: canary
                    .iter()
                    .filter(|t| !gone.contains(t))
                    .cloned()
                    .collect(),
                baseline: baseline
                    .iter()
                    .filter(|t| !gone.contains(t))
                    .cloned()
                    .collect(),
            }),
            other => Some(other.clone()),
        }
    }

    /// Give up on `target`, whose steps `steps` failed with `reason`: journaled first, then it
    /// is taken out of the traffic and rolled back alone ([`isolate`](Self::isolate)).
    pub(super) async fn give_up(
        &mut self,
        target: &TargetId,
        reason: &str,
        steps: Vec<usize>,
    ) -> Result<(), String> {
        if !self
            .record(&Record::TargetGivenUp {
                target: target.clone(),
                reason: reason.to_owned(),
                steps,
            })
            .await
        {
            return Err("the journal could not be written".to_owned());
        }
        self.given_up.push((target.clone(), reason.to_owned()));
        self.engine.emit(&Event::TargetGivenUp {
            target: target.clone(),
            reason: reason.to_owned(),
        });
        self.isolate(target).await
    }

    /// Take `target` out of the traffic (weight 0), then undo what this run did to it, the last
    /// first — every step of it but its drain, whose undo would give it traffic again (a
    /// rollback of the whole run still does that). Idempotent: a resumed run does it again.
    pub(super) async fn isolate(&mut self, target: &TargetId) -> Result<(), String> {
        let out = Step::SetWeights {
            weights: Weights::new().with(target.clone(), 0),
        };
        self.act(&out)
            .await
            .map_err(|f| format!("taking it out of the traffic: {}", f.error))?;
        let own: Vec<(usize, Vec<Step>)> =
            self.inverses
                .iter()
                .rev()
                .filter(|(i, _)| {
                    self.plan.steps.get(*i).is_some_and(|s| {
                        s.target() == Some(target) && !matches!(s, Step::Drain { .. })
                    })
                })
                .cloned()
                .collect();
        for (index, inverse) in own {
            for (position, step) in inverse.iter().enumerate() {
                if self.lease_is_lost() {
                    return Err("the run lost its lock".to_owned());
                }
                if self.undone.contains(&(index, position)) {
                    continue;
                }
                let error = self.act_undo(step).await.err().map(|f| f.error);
                self.undo_finished(index, position, step, error.as_ref())
                    .await;
                if let Some(e) = error {
                    return Err(format!("rolling it back alone: {step}: {}", e.chain()));
                }
            }
        }
        let back = self
            .plan
            .snapshot
            .version_of(target)
            .map_or("nothing".to_owned(), ToString::to_string);
        self.note(format!(
            "{target} was given up on: taken out of the traffic (weight 0) and rolled back to \
             {back} alone"
        ));
        Ok(())
    }

    /// `expected` (a state the plan reaches) with the targets given up on as they are left:
    /// on the release they ran before the run, out of the traffic. A target that ran nothing
    /// before was stopped instead, and keeps the version `live` reads (a release directory
    /// keeps its `current` link; nothing serves it).
    pub(super) fn with_given_up(&self, mut expected: Snapshot, live: &Snapshot) -> Snapshot {
        for (target, _) in &self.given_up {
            let before = match self.plan.snapshot.version_of(target) {
                None if self.stopped_by_undo.contains(target) => live.version_of(target),
                v => v,
            }
            .cloned();
            if let Some(t) = expected.targets.iter_mut().find(|t| &t.id == target) {
                t.current = before;
            }
            if let Some(w) = &mut expected.weights {
                w.set(target.clone(), 0);
            }
        }
        expected
    }
}

/// Whether `step` is skipped once the targets `gone` were given up on: a step of one of them,
/// weights of them only, an analysis whose canaries are all among them (it would judge no
/// target). The journal's replay counts such steps as done.
pub(crate) fn skipped_without(step: &Step, gone: &[TargetId]) -> bool {
    let out = |t: &TargetId| gone.contains(t);
    match step {
        Step::SetWeights { weights } => {
            !weights.0.is_empty() && weights.iter().all(|(t, _)| out(t))
        }
        Step::Analyze { canary, .. } => !canary.is_empty() && canary.iter().all(out),
        other => other.target().is_some_and(out),
    }
}

/// `snapshot` without the targets `gone` (their versions and weights): what recovery compares
/// while a target given up on may still be on its way out.
pub(crate) fn without_targets(mut snapshot: Snapshot, gone: &[TargetId]) -> Snapshot {
    snapshot.targets.retain(|t| !gone.contains(&t.id));
    if let Some(w) = &mut snapshot.weights {
        for t in gone {
            w.0.remove(t);
        }
    }
    snapshot
}

/// The weight each of `targets` had before a run took it out of the traffic: the newest run
/// whose state before it shows the target with a weight above 0 (a retry that failed again took
/// it out at weight 0 too).
pub(crate) fn weights_before_given_up(
    history: &[crate::state::HistoryEntry],
    targets: &[TargetId],
) -> Weights {
    let mut back = Weights::new();
    for target in targets {
        if let Some(w) = history.iter().rev().find_map(|h| {
            h.before
                .weights
                .as_ref()
                .and_then(|w| w.get(target))
                .filter(|w| *w > 0)
        }) {
            back.set(target.clone(), w);
        }
    }
    back
}
