//! Notifications: an [`Observer`] that posts the engine's events as JSON to a webhook, filtered
//! by severity. Step-level events are off by default; the start and end of a run and every
//! rollback are always sent (users of Flagger ask for less noise, never for fewer rollbacks).

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::{Event, Observer, Severity};
use crate::error::{Error, ErrorKind, Result};

/// What a notification looks like on the wire.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    environment: &'a str,
    severity: Severity,
    message: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// Posts events to a webhook from a background task; the engine never waits for it.
pub struct WebhookNotifier {
    url: String,
    environment: String,
    min_severity: Severity,
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    task: Mutex<Option<JoinHandle<NotifierStats>>>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &crate::redact::url_without_path(&self.url))
            .field("environment", &self.environment)
            .field("min_severity", &self.min_severity)
            .finish_non_exhaustive()
    }
}

/// What a notifier did, from [`WebhookNotifier::close`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotifierStats {
    /// Notifications the webhook accepted (2xx).
    pub sent: u64,
    /// Notifications that failed (after one retry); each failure is logged.
    pub failed: u64,
}

impl WebhookNotifier {
    /// Start a notifier posting events of `environment` to `url` with severity at least
    /// `Warning` (plus run start/end and rollbacks). Must be called inside a tokio runtime.
    pub fn spawn(url: impl Into<String>, environment: impl Into<String>) -> Result<Self> {
        Self::spawn_with(url, environment, Severity::Warning, Duration::from_secs(10))
    }

    /// As [`spawn`](Self::spawn), with the lowest severity sent and a time limit per post.
    pub fn spawn_with(
        url: impl Into<String>,
        environment: impl Into<String>,
        min_severity: Severity,
        timeout: Duration,
    ) -> Result<Self> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "start notifier for",
                crate::redact::url_without_path(&url),
                "the URL must start with http:// or https://",
            ));
        }
        let client = crate::http::client(
            Some(timeout),
            "start notifier for",
            &crate::redact::url_without_path(&url),
        )?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let target = url.clone();
        let task = tokio::spawn(async move {
            let mut stats = NotifierStats::default();
            while let Some(body) = rx.recv().await {
                let mut ok = false;
                for attempt in 0..2 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let r = client
                        .post(&target)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            ok = true;
                            break;
                        }
                        Ok(resp) => {
                            tracing::warn!(target: "deploy", "notify {}: HTTP {}", crate::redact::url_without_path(&target), resp.status())
                        }
                        Err(e) => {
                            tracing::warn!(target: "deploy", "notify {}: {}", crate::redact::url_without_path(&target), e.without_url())
                        }
                    }
                }
                if ok {
                    stats.sent += 1;
                } else {
                    stats.failed += 1;
                }
            }
            stats
        });
        Ok(Self {
            url,
            environment: environment.into(),
            min_severity,
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        })
    }

    /// Whether `event` is sent.
    pub fn wants(&self, event: &Event) -> bool {
        matches!(
            event,
            Event::RunStarted { .. } | Event::RunFinished { .. } | Event::RollbackStarted { .. }
        ) || event.severity() >= self.min_severity
    }

    /// Send what is queued and stop; returns what was sent. Events after this are dropped.
    pub async fn close(&self) -> NotifierStats {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        match task {
            Some(t) => t.await.unwrap_or_default(),
            None => NotifierStats::default(),
        }
    }
}

impl Observer for WebhookNotifier {
    fn on_event(&self, event: &Event) {
        if !self.wants(event) {
            return;
        }
        let envelope = Envelope {
            environment: &self.environment,
            severity: event.severity(),
            message: event.to_string(),
            event,
        };
        let Ok(body) = serde_json::to_vec(&envelope) else {
            return;
        };
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(body);
        }
    }
}
