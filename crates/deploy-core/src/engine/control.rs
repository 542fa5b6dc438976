//! Promote or abort a run: in process through [`Control`], from another process through a
//! request file in the state directory that the running engine polls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::DeployError;

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
        .and_then(|()| super::files::write_atomic(&path, &body))
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

/// Lets another task promote a paused run or abort a run.
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub(super) inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
pub(super) struct ControlInner {
    pub(super) promoted: AtomicBool,
    pub(super) notify: Notify,
    pub(super) abort: CancellationToken,
    pub(super) abort_reason: Mutex<Option<String>>,
}

impl Control {
    /// A new control.
    pub fn new() -> Self {
        Self::default()
    }

    /// End the current (or next) pause and carry on.
    pub fn promote(&self) {
        self.inner.promoted.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Stop the run and roll back.
    pub fn abort(&self, reason: impl Into<String>) {
        *self
            .inner
            .abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
        self.inner.abort.cancel();
    }

    pub(super) async fn promoted(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.promoted.swap(false, Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn abort_reason(&self) -> String {
        self.inner
            .abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "aborted".to_owned())
    }
}
