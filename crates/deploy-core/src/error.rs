//! The one error type every trait in this crate returns, with an explicit retry decision.

use std::borrow::Cow;
use std::fmt;

/// A boxed error kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in classes the engine and the caller can act on.
///
/// The class decides the default retry decision ([`ErrorKind::is_retryable_by_default`]); an
/// adapter can override it per error with [`Error::retryable`] / [`Error::permanent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input or configuration is wrong (a bad version string, an unknown target).
    InvalidInput,
    /// The thing named does not exist (a file, a server in a backend, a release).
    NotFound,
    /// The remote side answered and refused (HAProxy's "No such server.", a failed `nginx -t`).
    Rejected,
    /// Could not reach the other side (connection refused, socket missing, host down).
    Unavailable,
    /// The call did not finish within its time limit.
    Timeout,
    /// The other side answered something this crate cannot understand.
    Protocol,
    /// A command ran and exited unsuccessfully.
    CommandFailed,
    /// Not permitted (file permissions, HAProxy socket below `admin` level).
    PermissionDenied,
    /// Someone else holds the thing (a deploy lock, a migration lock).
    Conflict,
    /// The operation was cancelled.
    Cancelled,
    /// Local or remote I/O failed.
    Io,
    /// The operation is not supported by this implementation or server version.
    Unsupported,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether errors of this kind are worth retrying when the adapter said nothing more.
    ///
    /// Transient conditions (`Unavailable`, `Timeout`, `Conflict`) are; everything that will
    /// answer the same way the next time (`InvalidInput`, `Rejected`, ...) is not.
    pub fn is_retryable_by_default(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Conflict)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timed out",
            Self::Protocol => "protocol error",
            Self::CommandFailed => "command failed",
            Self::PermissionDenied => "permission denied",
            Self::Conflict => "conflict",
            Self::Cancelled => "cancelled",
            Self::Io => "I/O error",
            Self::Unsupported => "unsupported",
            Self::Other => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a deployment operation: what was attempted, on what, and why.
///
/// Displayed as `"<operation> <object>: <cause>"`, e.g.
/// `set weights on haproxy /run/haproxy/admin.sock: HAProxy answered 'No such server.'`.
/// The underlying error, if any, is kept as [`std::error::Error::source`]. One pointer wide, so
/// `Result<T, Error>` stays small.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    operation: Cow<'static, str>,
    object: String,
    cause: String,
    retryable: bool,
    source: Option<BoxError>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.operation, self.0.object, self.0.cause
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        let mut d = f.debug_struct("Error");
        d.field("kind", &e.kind)
            .field("operation", &e.operation)
            .field("object", &e.object)
            .field("cause", &e.cause)
            .field("retryable", &e.retryable);
        if let Some(source) = &e.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl Error {
    /// A new error of `kind` for `operation` (a verb phrase: "activate 2.1.0") on `object`
    /// (what it acted on: "target blue", "/srv/app/current"), because of `cause`.
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<Cow<'static, str>>,
        object: impl Into<String>,
        cause: impl Into<String>,
    ) -> Self {
        Self(Box::new(Inner {
            kind,
            operation: operation.into(),
            object: object.into(),
            cause: cause.into(),
            retryable: kind.is_retryable_by_default(),
            source: None,
        }))
    }

    /// Keep `source` as the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Mark this error as worth retrying, whatever its kind.
    pub fn retryable(mut self) -> Self {
        self.0.retryable = true;
        self
    }

    /// Mark this error as final, whatever its kind.
    pub fn permanent(mut self) -> Self {
        self.0.retryable = false;
        self
    }

    /// Wrap this error in an outer operation (`"prepare 2.0.0 on"`, `"target blue"`): the new
    /// error keeps this one's kind and retry decision, says this one's message as its cause, and
    /// keeps this one as its source.
    pub fn context(
        self,
        operation: impl Into<Cow<'static, str>>,
        object: impl Into<String>,
    ) -> Self {
        let kind = self.0.kind;
        let retryable = self.0.retryable;
        let cause = self.to_string();
        let mut e = Self::new(kind, operation, object, cause);
        e.0.retryable = retryable;
        e.0.source = Some(Box::new(self));
        e
    }

    /// Build an error from an I/O error, classifying it by [`std::io::ErrorKind`].
    pub fn io(
        operation: impl Into<Cow<'static, str>>,
        object: impl Into<String>,
        err: std::io::Error,
    ) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::AddrNotAvailable => ErrorKind::Unavailable,
            K::TimedOut => ErrorKind::Timeout,
            K::InvalidInput | K::InvalidData => ErrorKind::InvalidInput,
            K::AlreadyExists => ErrorKind::Conflict,
            _ => ErrorKind::Io,
        };
        let cause = err.to_string();
        let mut e = Self::new(kind, operation, object, cause).with_source(err);
        if kind == ErrorKind::Conflict {
            // An existing file will still exist on the next attempt.
            e.0.retryable = false;
        }
        e
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Whether retrying the same call may succeed. The engine's retry policy reads only this.
    pub fn is_retryable(&self) -> bool {
        self.0.retryable
    }

    /// The operation that failed ("activate 2.1.0").
    pub fn operation(&self) -> &str {
        &self.0.operation
    }

    /// The object it acted on ("target blue").
    pub fn object(&self) -> &str {
        &self.0.object
    }

    /// Why it failed, in words.
    pub fn cause(&self) -> &str {
        &self.0.cause
    }

    /// This error's message followed by every source in the chain, joined by ": ".
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let text = s.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            src = s.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_operation_object_and_cause() {
        let e = Error::new(
            ErrorKind::Rejected,
            "set weights",
            "on haproxy /run/haproxy/admin.sock",
            "HAProxy answered 'No such server.'",
        );
        assert_eq!(
            e.to_string(),
            "set weights on haproxy /run/haproxy/admin.sock: HAProxy answered 'No such server.'"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn context_keeps_kind_and_retryability() {
        let inner = Error::new(
            ErrorKind::Unavailable,
            "connect to",
            "/run/haproxy.sock",
            "refused",
        );
        let outer = inner.context("drain", "app/green");
        assert_eq!(outer.kind(), ErrorKind::Unavailable);
        assert!(outer.is_retryable());
        assert_eq!(
            outer.to_string(),
            "drain app/green: connect to /run/haproxy.sock: refused"
        );
        assert!(std::error::Error::source(&outer).is_some());
    }

    #[test]
    fn io_errors_are_classified_and_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::io("connect", "127.0.0.1:9", io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert!(std::error::Error::source(&e).is_some());
        let e = e.permanent();
        assert!(!e.is_retryable());
    }
}
