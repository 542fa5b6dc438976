//! Calls to adapters: each with a time limit, retried when the error says it may be.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

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
            // An observer that panics must not stop the run (or its rollback) half-way.
            if let Err(panic) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| o.on_event(event)))
            {
                tracing::error!(target: "deploy", "observer {o:?} panicked on {event}: {}", panic_message(&*panic));
            }
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
                    tokio::time::sleep(self.policies.retry.jittered_backoff(attempt)).await;
                    attempt += 1;
                }
                // Retries ran out: say so, and that it is no longer worth retrying.
                Err(e) if e.is_retryable() && attempts > 1 => return Err(e.persistent()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Await `fut` within `timeout`. A panic inside it (a bug in an adapter, a gate, a hook) is
/// contained: it becomes an error of this call, so the step fails and the run rolls back
/// instead of the process dying with traffic half-moved.
pub(super) async fn with_timeout<T>(
    operation: &str,
    object: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let fut = AssertUnwindSafe(fut).catch_unwind();
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => Err(Error::new(
            ErrorKind::Other,
            operation.to_owned(),
            object.to_owned(),
            format!("panicked: {}", panic_message(&*panic)),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            operation.to_owned(),
            object.to_owned(),
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

/// Await `fut` with no time limit of its own (it has one inside, as a hook does), containing
/// a panic as [`with_timeout`] does.
pub(super) async fn contained<T>(
    operation: &str,
    object: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => Err(Error::new(
            ErrorKind::Other,
            operation.to_owned(),
            object.to_owned(),
            format!("panicked: {}", panic_message(&*panic)),
        )),
    }
}

/// Why a step failed: the error, and whether the run was interrupted (cancelled, aborted, past
/// its deadline) rather than the step failing by itself.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) interrupted: bool,
}

impl Failure {
    /// A failure the engine finds itself (no adapter call failed): of `kind`, in `message`.
    pub(super) fn engine(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::from(Error::new(kind, "", "", message))
    }

    /// The run was interrupted while the step ran.
    pub(super) fn interrupted(error: Error) -> Self {
        Self {
            error,
            interrupted: true,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self {
            error,
            interrupted: false,
        }
    }
}

/// The message a panic was raised with.
pub(super) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
