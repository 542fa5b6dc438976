//! Undoing a run: every recorded inverse in reverse order, then a comparison with the state
//! before the run.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::Instrument;

use crate::model::TargetId;
use crate::strategy::{Snapshot, Step};

use super::call::Failure;
use super::journal::Record;
use super::report::{Event, Outcome, RollbackRecord, UndoRecord};
use super::run::Run;

impl Run<'_> {
    /// Undo every recorded inverse in reverse order; say how it ended.
    pub(super) async fn rollback(&mut self, reason: String) -> Outcome {
        let rollback_started = std::time::SystemTime::now();
        self.engine.emit(&Event::RollbackStarted {
            reason: reason.clone(),
        });
        self.record(&Record::RollbackStarted {
            reason: reason.clone(),
        })
        .await;
        let mut undo_log = Vec::new();
        let mut failed = false;
        let inverses = self.inverses.clone();
        let limit = self.engine.policies.parallelism.max(1);
        // Targets whose old release could not be put back (their re-activation, health wait or
        // start failed).
        let mut not_back: HashSet<TargetId> = HashSet::new();
        // The batch each step of the plan was done in: a group never spans two.
        let mut batch_of = vec![0; self.plan.steps.len()];
        let mut i = 0;
        while i < batch_of.len() {
            let end = self.batch_end(i).max(i + 1);
            batch_of[i..end].fill(i);
            i = end;
        }
        for group in undo_groups(&inverses, limit, &batch_of) {
            // A group's undo steps act together, position by position, as its batch did:
            // every "activate the old version", then every health wait.
            let depth = group.iter().map(|(_, inv)| inv.len()).max().unwrap_or(0);
            for position in 0..depth {
                if self.lease_is_lost() {
                    // The lock is another run's now: it undoes, not us.
                    return Outcome::Failed;
                }
                let todo: Vec<(usize, &Step)> = group
                    .iter()
                    .filter_map(|(index, inv)| inv.get(position).map(|s| (*index, s)))
                    .collect();
                // An undo recorded as done is skipped; when recovering a run another process
                // left, only if the world confirms it (what was undone may have been changed
                // again since).
                let this = &*self;
                let done = self
                    .engine
                    .in_parallel(todo.iter().map(|&(index, step)| async move {
                        this.undone.contains(&(index, position))
                            && (!this.recovering || this.undo_already_done(step).await)
                    }))
                    .await;
                // Weights never go back to a target whose old release could not be put back:
                // it stays out of the traffic, and the undo counts as failed (a retried
                // rollback gives it its weight once its re-activation works).
                let todo: Vec<(usize, Step, Vec<TargetId>)> = todo
                    .into_iter()
                    .zip(done)
                    .filter(|(_, done)| !done)
                    .map(|((index, step), _)| {
                        let (step, held) = withhold(step, &not_back);
                        (index, step, held)
                    })
                    .collect();
                let acting: Vec<(usize, &Step)> =
                    todo.iter().map(|(index, step, _)| (*index, step)).collect();
                let results = self.undo_together(&acting).await;
                for ((index, step, held), (result, started_at, duration)) in
                    todo.into_iter().zip(results)
                {
                    let step = &step;
                    let mut error = match result {
                        Ok(notes) => {
                            for n in notes {
                                self.note(n);
                            }
                            None
                        }
                        Err(f) => Some(f.error),
                    };
                    if error.is_none() && !held.is_empty() {
                        let names: Vec<String> = held.iter().map(ToString::to_string).collect();
                        error = Some(crate::error::Error::new(
                            crate::error::ErrorKind::Rejected,
                            "give traffic back to",
                            names.join(", "),
                            "kept out of the traffic: its old release could not be put back",
                        ));
                    }
                    if error.is_some()
                        && let Step::Activate { target, .. }
                        | Step::AwaitHealthy { target, .. }
                        | Step::Start { target } = step
                    {
                        not_back.insert(target.clone());
                    }
                    failed |= error.is_some();
                    self.undo_finished(index, position, step, error.as_ref())
                        .await;
                    undo_log.push(UndoRecord {
                        step: step.clone(),
                        started_at,
                        duration,
                        error: error.as_ref().map(crate::error::Error::record),
                    });
                }
            }
        }
        // A target given up on was taken out of the traffic by a weight change no inverse
        // records (one given up before its drain has no drain to undo): its weight goes back.
        let weights_before = self.plan.snapshot.weights.clone().unwrap_or_default();
        for (target, _) in self.given_up.clone() {
            let Some(w) = weights_before.get(&target) else {
                continue;
            };
            if not_back.contains(&target) {
                failed = true;
                continue;
            }
            if self.lease_is_lost() {
                return Outcome::Failed;
            }
            let step = Step::SetWeights {
                weights: crate::model::Weights::new().with(target, w),
            };
            let (started_at, t0) = (SystemTime::now(), Instant::now());
            let error = self.act_undo(&step).await.err().map(|f| f.error);
            failed |= error.is_some();
            self.engine.emit(&Event::RollbackStep {
                step: step.clone(),
                error: error.as_ref().map(crate::error::Error::chain),
            });
            undo_log.push(UndoRecord {
                step,
                started_at,
                duration: t0.elapsed(),
                error: error.as_ref().map(crate::error::Error::record),
            });
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
            started_at: rollback_started,
            steps: undo_log,
            mismatches,
        });
        outcome
    }

    /// Act `step` as an undo (a weight goes back wherever a balancer answers; a health wait
    /// waits for the deadline only).
    pub(super) async fn act_undo(&mut self, step: &Step) -> Result<(), Failure> {
        self.undoing = true;
        let result = self.act(step).await;
        self.undoing = false;
        result
    }

    /// Undo step `position` of forward step `index` ended with `error`: journaled, shown, and
    /// when it was done, remembered (a target it stopped too).
    pub(super) async fn undo_finished(
        &mut self,
        index: usize,
        position: usize,
        step: &Step,
        error: Option<&crate::error::Error>,
    ) {
        let text = error.map(crate::error::Error::chain);
        self.record(&Record::UndoFinished {
            index,
            position,
            error: text.clone(),
        })
        .await;
        self.engine.emit(&Event::RollbackStep {
            step: step.clone(),
            error: text,
        });
        if error.is_none() {
            self.undone.insert((index, position));
            if let Step::Stop { target } = step {
                self.stopped_by_undo.insert(target.clone());
            }
        }
    }

    /// Act `undo` steps together (one alone through [`act`](Self::act), several — each on its
    /// own target — concurrently); each one's result, start and duration, in order.
    async fn undo_together(
        &mut self,
        undo: &[(usize, &Step)],
    ) -> Vec<(Result<Vec<String>, Failure>, SystemTime, Duration)> {
        if let [(index, step)] = undo {
            let span = tracing::info_span!("undo", index = index + 1, op = step.op());
            let (started_at, t0) = (SystemTime::now(), Instant::now());
            let result = self.act_undo(step).instrument(span).await;
            return vec![(result.map(|()| Vec::new()), started_at, t0.elapsed())];
        }
        let this = &*self;
        futures_util::future::join_all(undo.iter().map(|&(index, step)| {
            let span = tracing::info_span!("undo", index = index + 1, op = step.op());
            async move {
                let (started_at, t0) = (SystemTime::now(), Instant::now());
                let result = this.act_shared(step, true).await;
                (result, started_at, t0.elapsed())
            }
            .instrument(span)
        }))
        .await
    }

    /// How the live state differs from the state before the run, leaving out what the
    /// rollback meant to leave: additive migrations kept (`schema_kept`), and a target that ran
    /// nothing before and that its undo stopped (a release directory keeps its `current` link,
    /// but nothing serves it).
    pub(super) fn compare_with_before(&self, now: &Snapshot) -> Vec<String> {
        let mut before = self.plan.snapshot.clone();
        for t in &mut before.targets {
            if t.current.is_none() && self.stopped_by_undo.contains(&t.id) {
                t.current = now.version_of(&t.id).cloned();
            }
        }
        if self.schema_kept {
            before.migrations = None;
        }
        before
            .differences(now)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// When recovering a run another process left: whether the world still shows `undo`, which
    /// the journal records as done, so that it need not act again (an activation restarts a
    /// service). Only undo steps whose effect can be read are confirmed; the others are
    /// idempotent and run again.
    async fn undo_already_done(&self, undo: &Step) -> bool {
        let t = self.engine.policies.timeouts.call;
        let env = self.env();
        match undo {
            Step::Activate { target, version } => match env.target(target) {
                Ok(tg) => self
                    .engine
                    .call("read current version of", target.as_str(), t, || {
                        tg.current()
                    })
                    .await
                    .is_ok_and(|v| v.as_ref() == Some(version)),
                Err(_) => false,
            },
            Step::SetWeights { weights } => match &env.switch {
                Some(s) => {
                    let names: Vec<_> = weights.iter().map(|(t, _)| t.clone()).collect();
                    self.engine
                        .call("read weights of", "the switch", t, || s.weights())
                        .await
                        .is_ok_and(|now| &now.only(&names) == weights)
                }
                None => false,
            },
            _ => false,
        }
    }
}

/// `step` without the weights above 0 it would give targets of `not_back`, and those targets.
fn withhold(step: &Step, not_back: &HashSet<TargetId>) -> (Step, Vec<TargetId>) {
    let Step::SetWeights { weights } = step else {
        return (step.clone(), Vec::new());
    };
    let mut kept = crate::model::Weights::new();
    let mut held = Vec::new();
    for (t, w) in weights.iter() {
        if w > 0 && not_back.contains(t) {
            held.push(t.clone());
        } else {
            kept.set(t.clone(), w);
        }
    }
    (Step::SetWeights { weights: kept }, held)
}

/// The recorded inverses in the order they are undone (the last step's first), grouped: an
/// entry whose undo touches one target only (activate the old version and wait for it, start,
/// stop) joins the group before it when that group is of such entries on other targets, of the
/// same forward batch (`batch_of[index]`), and has fewer than `limit`; any other entry
/// (weights, the schema, the maintenance page) is a group of its own. Entries with nothing to
/// undo are left out. So a rolling batch's activations are undone together, as they were done —
/// never two batches at once, even with nothing between them to undo — and everything else
/// keeps its order.
fn undo_groups(
    inverses: &[(usize, Vec<Step>)],
    limit: usize,
    batch_of: &[usize],
) -> Vec<Vec<(usize, Vec<Step>)>> {
    fn one_target(inverse: &[Step]) -> Option<&crate::model::TargetId> {
        let first = inverse.first()?.target()?;
        inverse
            .iter()
            .all(|s| {
                matches!(
                    s,
                    Step::Activate { .. }
                        | Step::AwaitHealthy { .. }
                        | Step::Start { .. }
                        | Step::Stop { .. }
                ) && s.target() == Some(first)
            })
            .then_some(first)
    }
    let mut groups: Vec<Vec<(usize, Vec<Step>)>> = Vec::new();
    let mut targets: HashSet<crate::model::TargetId> = HashSet::new();
    let mut open = false;
    for (index, inverse) in inverses.iter().rev() {
        if inverse.is_empty() {
            continue;
        }
        let entry = (*index, inverse.clone());
        match one_target(inverse) {
            Some(target) => {
                let batch = |i: usize| batch_of.get(i).copied().unwrap_or(i);
                let joins = open
                    && !targets.contains(target)
                    && groups.last().is_some_and(|g| {
                        g.len() < limit
                            && g.first().is_some_and(|(j, _)| batch(*j) == batch(*index))
                    });
                if !joins {
                    groups.push(Vec::new());
                    targets.clear();
                }
                targets.insert(target.clone());
                groups.last_mut().expect("a group was pushed").push(entry);
                open = true;
            }
            None => {
                groups.push(vec![entry]);
                open = false;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TargetId, Version, Weights};

    fn id(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    fn activate(t: &str) -> Vec<Step> {
        vec![
            Step::Activate {
                target: id(t),
                version: Version::new("1.0.0").unwrap(),
            },
            Step::AwaitHealthy {
                target: id(t),
                version: Some(Version::new("1.0.0").unwrap()),
            },
        ]
    }

    fn weights(t: &str) -> Vec<Step> {
        vec![Step::SetWeights {
            weights: Weights::new().with(id(t), 1),
        }]
    }

    fn shape(groups: &[Vec<(usize, Vec<Step>)>]) -> Vec<Vec<usize>> {
        groups
            .iter()
            .map(|g| g.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn a_rolling_batch_is_undone_together_and_everything_else_in_order() {
        // drain a, drain b, activate a, activate b, await a, await b, weights back.
        let inverses = vec![
            (0, weights("a")),
            (1, weights("b")),
            (2, activate("a")),
            (3, activate("b")),
            (4, Vec::new()),
            (5, Vec::new()),
            (6, weights("a")),
        ];
        let batches = [0, 0, 2, 2, 4, 4, 6];
        assert_eq!(
            shape(&undo_groups(&inverses, 16, &batches)),
            vec![vec![6], vec![3, 2], vec![1], vec![0]]
        );
    }

    #[test]
    fn a_group_holds_each_target_once_and_at_most_the_limit() {
        let stop = |t: &str| vec![Step::Start { target: id(t) }];
        // Recreate: stop a, stop b, activate a, activate b → undo: activate b, a; then start b, a.
        let inverses = vec![
            (0, stop("a")),
            (1, stop("b")),
            (2, activate("a")),
            (3, activate("b")),
        ];
        assert_eq!(
            shape(&undo_groups(&inverses, 16, &[0, 0, 2, 2])),
            vec![vec![3, 2], vec![1, 0]]
        );
        let many: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i, activate(t)))
            .collect();
        assert_eq!(
            shape(&undo_groups(&many, 2, &[0, 0, 0])),
            vec![vec![2, 1], vec![0]]
        );
    }

    #[test]
    fn two_batches_are_never_undone_at_once() {
        // Rolling one target at a time without a switch: activate a, await a, activate b, …
        // Nothing between two activations has an undo, yet each is its own batch.
        let inverses = vec![
            (0, activate("a")),
            (1, Vec::new()),
            (2, activate("b")),
            (3, Vec::new()),
            (4, activate("c")),
            (5, Vec::new()),
        ];
        assert_eq!(
            shape(&undo_groups(&inverses, 16, &[0, 1, 2, 3, 4, 5])),
            vec![vec![4], vec![2], vec![0]]
        );
    }
}
