//! Where the newest run of an environment stands, read from its journal and the lock.

use serde::Serialize;

use super::Outcome;
use super::journal::JournalState;
use super::lock::LockInfo;
use crate::model::Version;
use crate::strategy::Step;

/// Where the newest run of an environment stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RunStatus {
    /// The run.
    pub run_id: String,
    /// The version it deploys.
    pub version: Version,
    /// The strategy's name.
    pub strategy: String,
    /// Steps in its plan.
    pub steps_total: usize,
    /// Steps finished successfully.
    pub steps_done: usize,
    /// The step it is at (or stopped at), if any.
    pub current_step: Option<Step>,
    /// Why it is rolling back (or rolled back).
    pub rollback_reason: Option<String>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// Who holds the environment's lock now; `None` when nobody does.
    pub lock: Option<LockInfo>,
    /// Whether the lock is stale (its process died, or its lease expired): the run needs
    /// recovering.
    pub lock_stale: bool,
    /// Why the run waits for the operator, when it is paused.
    pub paused: Option<String>,
    /// Where its journal is (a file, a row set in the shared store).
    pub journal: String,
    /// When the current step started, when the journal says.
    pub step_started_at: Option<std::time::SystemTime>,
    /// The weights the last finished traffic step set (`None` before any).
    pub weights: Option<crate::model::Weights>,
    /// The last verdict of each gate.
    pub last_verdicts: Vec<super::VerdictRecord>,
}

impl RunStatus {
    pub(crate) fn from_journal(
        journal: String,
        st: &JournalState,
        lock: Option<LockInfo>,
        lock_stale: bool,
    ) -> Self {
        Self {
            run_id: st.run_id.clone(),
            version: st.plan.release.version.clone(),
            strategy: st.plan.strategy.name().to_owned(),
            steps_total: st.plan.steps.len(),
            steps_done: st.completed.len(),
            current_step: st.plan.steps.get(st.next_index).cloned(),
            rollback_reason: st.rollback_reason.clone(),
            outcome: st.outcome,
            lock,
            lock_stale,
            paused: st.paused.as_ref().map(|(_, why)| why.clone()),
            journal,
            step_started_at: st.started.get(&st.next_index).copied(),
            weights: (0..st.plan.steps.len())
                .rev()
                .filter(|i| st.completed.contains(i))
                .find_map(|i| match &st.plan.steps[i] {
                    Step::SetWeights { weights } => Some(weights.clone()),
                    _ => None,
                }),
            last_verdicts: st.last_verdicts.clone(),
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {}: {} of {} — ",
            self.run_id, self.strategy, self.version
        )?;
        match (&self.outcome, &self.rollback_reason) {
            (Some(o), _) => write!(f, "finished: {o}")?,
            (None, Some(r)) => write!(f, "rolling back ({r})")?,
            (None, None) => write!(f, "{} of {} steps done", self.steps_done, self.steps_total)?,
        }
        if self.outcome.is_none()
            && let Some(s) = &self.current_step
        {
            write!(f, "; at: {s}")?;
        }
        if let Some(why) = &self.paused {
            write!(f, "; PAUSED ({why})")?;
        }
        match (&self.lock, self.lock_stale) {
            (Some(l), false) => write!(f, "; locked by {l}")?,
            (Some(l), true) => write!(
                f,
                "; STALE lock of {l}: its process is gone (or its lease expired); resume the run or roll it back"
            )?,
            (None, _) if self.outcome.is_none() => write!(
                f,
                "; no process holds the lock: the run stopped before it could finish its journal; \
                 resume it or roll it back"
            )?,
            (None, _) if self.outcome == Some(Outcome::Failed) => write!(
                f,
                "; undoing it failed: roll it back again once the cause is fixed"
            )?,
            (None, _) => {}
        }
        Ok(())
    }
}
