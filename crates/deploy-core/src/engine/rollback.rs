//! Undoing a run: every recorded inverse in reverse order, then a comparison with the state
//! before the run.

use tracing::Instrument;

use crate::strategy::{Snapshot, Step};

use super::journal::Record;
use super::report::{Event, Outcome, RollbackRecord};
use super::run::Run;

impl Run<'_> {
    /// Undo every recorded inverse in reverse order; say how it ended.
    pub(super) async fn rollback(&mut self, reason: String) -> Outcome {
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

    pub(super) fn compare_with_before(&self, now: &Snapshot) -> Vec<String> {
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
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
