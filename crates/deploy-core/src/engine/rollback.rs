//! Undoing a run: every recorded inverse in reverse order, then a comparison with the state
//! before the run.

use tracing::Instrument;

use crate::strategy::{Snapshot, Step};

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
        for (index, inverse) in inverses.iter().rev() {
            for (position, step) in inverse.iter().enumerate() {
                // An undo recorded as done is skipped; when recovering a run another process
                // left, only if the world confirms it (what was undone may have been changed
                // again since).
                if self.lease_is_lost() {
                    // The lock is another run's now: it undoes, not us.
                    return Outcome::Failed;
                }
                if self.undone.contains(&(*index, position))
                    && (!self.recovering || self.undo_already_done(step).await)
                {
                    continue;
                }
                let span = tracing::info_span!("undo", index = index + 1, op = step.op());
                let (started_at, t0) = (std::time::SystemTime::now(), tokio::time::Instant::now());
                self.undoing = true;
                let result = self.act(step).instrument(span).await;
                self.undoing = false;
                let duration = t0.elapsed();
                let error = result.err().map(|f| f.error);
                failed |= error.is_some();
                let text = error.as_ref().map(crate::error::Error::chain);
                self.record(&Record::UndoFinished {
                    index: *index,
                    position,
                    error: text.clone(),
                })
                .await;
                self.engine.emit(&Event::RollbackStep {
                    step: step.clone(),
                    error: text,
                });
                if error.is_none() {
                    self.undone.insert((*index, position));
                    if let Step::Stop { target } = step {
                        self.stopped_by_undo.insert(target.clone());
                    }
                }
                undo_log.push(UndoRecord {
                    step: step.clone(),
                    started_at,
                    duration,
                    error: error.as_ref().map(crate::error::Error::record),
                });
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
            started_at: rollback_started,
            steps: undo_log,
            mismatches,
        });
        outcome
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
