//! Promote or abort a run: in process through [`Control`], from another process (or machine)
//! through a request left in the state store, which the running engine polls.
//!
//! A request belongs to one run: it names the run (and, for a promotion, the pause it ends).
//! The running engine applies only requests addressed to it and discards any other, so a
//! request that found no run, or a run that has ended since, can never act on a later run.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::state::StateStore;

/// What an operator asks of a run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ControlRequest {
    /// End the pause the run is in.
    Promote,
    /// Roll back.
    Abort {
        /// Why, for the report.
        reason: String,
    },
}

/// A request as left in the state store: addressed to one run, and for a promotion to one
/// pause of it (the index of its step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressedRequest {
    /// The run it is for.
    pub run_id: String,
    /// For a promotion: the step whose pause it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<usize>,
    /// What is asked.
    #[serde(flatten)]
    pub request: ControlRequest,
}

/// Remove a request left in `store` for `environment`: at the start and the end of a run, a
/// request is not addressed to a run in progress.
pub(crate) async fn discard_request(store: &dyn StateStore, environment: &str) {
    match store.take_request(environment).await {
        Ok(Some(r)) => {
            tracing::info!(target: "deploy", "discarded a control request that no run in progress is addressed by: {r:?}")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(target: "deploy", "discard control requests: {e}"),
    }
}

/// Poll `store` every `every` and apply to `control` what is addressed to `run_id`; never
/// returns.
pub(crate) async fn watch(
    store: Arc<dyn StateStore>,
    environment: String,
    run_id: String,
    control: Control,
    every: Duration,
) {
    let at = store.location();
    loop {
        tokio::time::sleep(every).await;
        let request = match store.take_request(&environment).await {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(target: "deploy", "ignored a control request: {e}");
                continue;
            }
        };
        match request {
            r if r.run_id != run_id => {
                tracing::warn!(target: "deploy", "discarded a control request for run {} (this is run {run_id})", r.run_id);
            }
            AddressedRequest {
                request: ControlRequest::Promote,
                pause,
                ..
            } => {
                let now = control.paused_at();
                if pause.is_some() && pause != now {
                    tracing::warn!(target: "deploy", "discarded a promotion of a pause that has ended (step {})", pause.map_or(0, |p| p + 1));
                } else if control.promote() {
                    tracing::info!(target: "deploy", "promoted through {at}");
                } else {
                    tracing::warn!(target: "deploy", "discarded a promotion: the run is not paused");
                }
            }
            AddressedRequest {
                request: ControlRequest::Abort { reason },
                ..
            } => {
                tracing::warn!(target: "deploy", "abort requested through {at}: {reason}");
                control.abort(format!("aborted by the operator: {reason}"));
            }
        }
    }
}

/// Lets another task promote a paused run or abort a run in progress.
///
/// Both act only on a run in progress: [`Control::promote`] ends the pause the run is in now
/// (and does nothing when it is not paused), [`Control::abort`] rolls back the run in progress
/// (and does nothing between runs). Neither is remembered for a later pause or run.
#[derive(Debug, Clone, Default)]
pub struct Control {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    state: Mutex<ControlState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct ControlState {
    /// The run in progress.
    run: Option<String>,
    /// The step whose pause the run is in.
    paused: Option<usize>,
    /// The current pause was ended by the operator.
    promoted: bool,
    /// Cancelled when the run in progress is aborted; a fresh token per run.
    abort: CancellationToken,
    abort_reason: Option<String>,
}

impl Control {
    /// A new control.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, ControlState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// End the pause the run is in now. Returns `false`, and changes nothing, when no run is
    /// paused.
    pub fn promote(&self) -> bool {
        let mut s = self.state();
        if s.paused.is_none() || s.promoted {
            return false;
        }
        s.promoted = true;
        drop(s);
        self.inner.notify.notify_waiters();
        true
    }

    /// Stop the run in progress and roll it back. Returns `false`, and changes nothing, when no
    /// run is in progress.
    pub fn abort(&self, reason: impl Into<String>) -> bool {
        let mut s = self.state();
        if s.run.is_none() {
            return false;
        }
        s.abort_reason.get_or_insert_with(|| reason.into());
        s.abort.cancel();
        true
    }

    /// The run in progress, if any.
    pub fn running(&self) -> Option<String> {
        self.state().run.clone()
    }

    /// The index of the step whose pause the run is in, if it is paused.
    pub fn paused_at(&self) -> Option<usize> {
        self.state().paused
    }

    /// A run starts: nothing asked before it applies to it.
    pub(super) fn begin_run(&self, run_id: &str) {
        let mut s = self.state();
        *s = ControlState {
            run: Some(run_id.to_owned()),
            ..ControlState::default()
        };
    }

    /// The run ended (its rollback included).
    pub(super) fn end_run(&self) {
        let mut s = self.state();
        s.run = None;
        s.paused = None;
        s.promoted = false;
    }

    /// Wait in the pause of step `index` until the operator promotes.
    pub(super) async fn pause(&self, index: usize) {
        {
            let mut s = self.state();
            s.paused = Some(index);
            s.promoted = false;
        }
        let _left = PauseGuard(self);
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().promoted {
                return;
            }
            notified.await;
        }
    }

    /// The abort token of the run in progress.
    pub(super) fn abort_token(&self) -> CancellationToken {
        self.state().abort.clone()
    }

    pub(super) fn is_aborted(&self) -> bool {
        self.state().abort.is_cancelled()
    }

    pub(super) fn abort_reason(&self) -> String {
        self.state()
            .abort_reason
            .clone()
            .unwrap_or_else(|| "aborted".to_owned())
    }
}

/// Leaves the pause however the wait ends (promoted, timer, abort, cancellation).
struct PauseGuard<'a>(&'a Control);

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.paused = None;
        s.promoted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn promote_and_abort_act_only_on_a_run_in_progress() {
        let c = Control::new();
        assert!(!c.promote(), "no run is paused");
        assert!(!c.abort("no run"), "no run is in progress");
        c.begin_run("r1");
        assert!(!c.is_aborted(), "an abort between runs is not remembered");
        assert!(!c.promote(), "the run is not paused");
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.pause(3).await })
        };
        while c.paused_at() != Some(3) {
            tokio::task::yield_now().await;
        }
        assert!(c.promote());
        waiter.await.unwrap();
        assert_eq!(c.paused_at(), None);
        assert!(!c.promote(), "a promotion is not kept for the next pause");
        assert!(c.abort("stop"));
        assert!(c.is_aborted());
        assert_eq!(c.abort_reason(), "stop");
        c.end_run();
        c.begin_run("r2");
        assert!(!c.is_aborted(), "the next run starts clean");
    }

    #[test]
    fn requests_on_disk_name_their_run_and_pause() {
        let r = AddressedRequest {
            run_id: "r1".into(),
            pause: Some(4),
            request: ControlRequest::Promote,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"run_id":"r1","pause":4,"request":"promote"}"#);
        assert_eq!(serde_json::from_str::<AddressedRequest>(&text).unwrap(), r);
        // A request without a run (as older versions wrote them) is never applied.
        assert!(serde_json::from_str::<AddressedRequest>(r#"{"request":"promote"}"#).is_err());
    }
}
