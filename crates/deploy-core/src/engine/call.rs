//! Calls to adapters: each with a time limit, retried when the error says it may be.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

use super::Engine;
use super::report::{Event, Severity};

impl Engine {
    pub(super) fn emit(&self, event: &Event) {
        match event.severity() {
            Severity::Error => tracing::error!(target: "deploy", "{event}"),
            Severity::Warning => tracing::warn!(target: "deploy", "{event}"),
            Severity::Info => tracing::info!(target: "deploy", "{event}"),
        }
        for o in &self.observers {
            o.on_event(event);
        }
    }

    /// Call `f` with the call time limit, retrying retryable errors per the retry policy.
    pub(super) async fn call<T, F, Fut>(
        &self,
        operation: &str,
        object: &str,
        timeout: Duration,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let attempts = self.policies.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            match with_timeout(operation, object, timeout, f()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    self.emit(&Event::Retrying {
                        operation: format!("{operation} {object}"),
                        attempt,
                        error: e.chain(),
                    });
                    tokio::time::sleep(self.policies.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

pub(super) async fn with_timeout<T>(
    operation: &str,
    object: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            operation.to_owned(),
            object.to_owned(),
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

/// Why a step failed.
pub(super) struct Failure(pub(super) String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self(e.chain())
    }
}
