//! Promote or abort a run from another process: a request file in the state directory that the
//! running engine polls, and the status of the newest run read from its journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::journal::{JournalState, LockInfo};
use super::{Control, DeployError, Outcome};
use crate::model::Version;
use crate::strategy::Step;

/// What an operator asks of a run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ControlRequest {
    /// End the current (or next) pause.
    Promote,
    /// Roll back.
    Abort {
        /// Why, for the report.
        reason: String,
    },
}

/// The request file of a state directory.
pub(crate) fn request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.json")
}

/// Write `request` atomically where the running engine will find it.
pub(crate) fn write_request(state_dir: &Path, request: &ControlRequest) -> Result<(), DeployError> {
    let path = request_path(state_dir);
    let body = serde_json::to_vec(request).unwrap_or_default();
    std::fs::create_dir_all(state_dir)
        .and_then(|()| super::write_atomic(&path, &body))
        .map_err(|e| DeployError::Journal {
            path: path.clone(),
            cause: format!("write control request: {e}"),
        })
}

/// Poll the request file every `every` and apply what it asks to `control`; never returns.
pub(crate) async fn watch(state_dir: PathBuf, control: Control, every: Duration) {
    let path = request_path(&state_dir);
    loop {
        tokio::time::sleep(every).await;
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let _ = std::fs::remove_file(&path);
        match serde_json::from_slice::<ControlRequest>(&bytes) {
            Ok(ControlRequest::Promote) => {
                tracing::info!(target: "deploy", "promote requested through {}", path.display());
                control.promote();
            }
            Ok(ControlRequest::Abort { reason }) => {
                tracing::warn!(target: "deploy", "abort requested through {}: {reason}", path.display());
                control.abort(format!("aborted by the operator: {reason}"));
            }
            Err(e) => {
                tracing::warn!(target: "deploy", "ignored malformed control request {}: {e}", path.display())
            }
        }
    }
}

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
    /// Whether the lock file is stale (its process died): the run needs `recover`.
    pub lock_stale: bool,
    /// The journal.
    pub journal: PathBuf,
}

impl RunStatus {
    pub(crate) fn from_journal(
        journal: PathBuf,
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
            journal,
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
        match (&self.lock, self.lock_stale) {
            (Some(l), false) => write!(f, "; locked by {l}")?,
            (Some(l), true) => write!(f, "; STALE lock of {l}: its process is gone, run recover")?,
            (None, _) => {}
        }
        Ok(())
    }
}
