//! The error type every trait of this crate returns, built the way OpenDAL builds its own: an
//! operation, key–value context, a message, a kind and a retry status, and the underlying error
//! as its source. Wrapping an error in an outer operation adds to the same error instead of
//! nesting a copy of its text, so a message never says the same thing twice.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A boxed error, for sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is; the engine decides what to do from it and from the retry
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Whether trying the same call again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorStatus {
    /// It will fail the same way again.
    Permanent,
    /// It may succeed if tried again (a connection refused during a reload).
    Temporary,
    /// It was temporary, but the retries allowed ran out.
    Persistent,
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permanent => "permanent",
            Self::Temporary => "temporary",
            Self::Persistent => "persistent",
        })
    }
}

/// An error from a deployment operation: what was attempted, on what, and why.
///
/// Displayed as `"<operation> <object>: <message>: <source>"`, e.g.
/// `set weights on haproxy /run/haproxy/admin.sock: HAProxy answered 'No such server.'` — the
/// message is this crate's words, the source (kept as [`std::error::Error::source`]) says the
/// rest, and each is printed once. An error wrapped by an outer operation
/// ([`Error::context`]) prints that operation first: `prepare 2.0.0 on target green: upload
/// /srv/app/releases/2.0.0.tar on host web-1: …`. Further context ([`Error::with_context`])
/// follows in brackets. One pointer wide, so `Result<T, Error>` stays small.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    status: ErrorStatus,
    operation: Cow<'static, str>,
    object: String,
    /// Outer operations and their objects, outermost first.
    outer: Vec<(Cow<'static, str>, String)>,
    context: Vec<(&'static str, String)>,
    message: String,
    source: Option<BoxError>,
}

/// `operation object`, or whichever of the two is not empty.
fn frame(operation: &str, object: &str) -> String {
    match (operation.is_empty(), object.is_empty()) {
        (false, false) => format!("{operation} {object}"),
        (false, true) => operation.to_owned(),
        (true, _) => object.to_owned(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        let mut parts: Vec<String> = e
            .outer
            .iter()
            .map(|(operation, object)| frame(operation, object))
            .chain(std::iter::once(frame(&e.operation, &e.object)))
            .filter(|p| !p.is_empty())
            .collect();
        if !e.message.is_empty() {
            parts.push(e.message.clone());
        }
        f.write_str(&parts.join(": "))?;
        if !e.context.is_empty() {
            f.write_str(" [")?;
            for (i, (k, v)) in e.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str("]")?;
        }
        let mut source = e
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
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
            .field("status", &e.status)
            .field("operation", &e.operation)
            .field("object", &e.object);
        if !e.outer.is_empty() {
            d.field("outer", &e.outer);
        }
        if !e.context.is_empty() {
            d.field("context", &e.context);
        }
        d.field("message", &e.message);
        if let Some(source) = &e.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl Error {
    /// A new error of `kind` for `operation` (a verb phrase: "activate 2.1.0") on `object`
    /// (what it acted on: "target blue", "/srv/app/current"), because of `message` (this
    /// crate's words; keep the underlying error's own text for [`Error::with_source`]).
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<Cow<'static, str>>,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Inner {
            kind,
            status: if kind.is_retryable_by_default() {
                ErrorStatus::Temporary
            } else {
                ErrorStatus::Permanent
            },
            operation: operation.into(),
            object: object.into(),
            outer: Vec::new(),
            context: Vec::new(),
            message: message.into(),
            source: None,
        }))
    }

    /// Keep `source` as the underlying error; its text follows this error's message.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Add a fact about the failure (`"status"`, `"503"`), shown after the message.
    pub fn with_context(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.0.context.push((key, value.into()));
        self
    }

    /// Mark this error as worth retrying, whatever its kind.
    pub fn retryable(mut self) -> Self {
        self.0.status = ErrorStatus::Temporary;
        self
    }

    /// Mark this error as final, whatever its kind.
    pub fn permanent(mut self) -> Self {
        self.0.status = ErrorStatus::Permanent;
        self
    }

    /// Say that this temporary error stayed after every retry allowed: it is no longer worth
    /// retrying, and reports show that retries ran.
    pub fn persistent(mut self) -> Self {
        if self.0.status == ErrorStatus::Temporary {
            self.0.status = ErrorStatus::Persistent;
        }
        self
    }

    /// Say which outer operation this error happened in (`"prepare 2.0.0 on"`, `"target
    /// blue"`): the same error, with that operation printed before its own. Kind, status,
    /// message and source are kept.
    pub fn context(
        mut self,
        operation: impl Into<Cow<'static, str>>,
        object: impl Into<String>,
    ) -> Self {
        self.0.outer.insert(0, (operation.into(), object.into()));
        self
    }

    /// An error from an I/O error, classified by [`std::io::ErrorKind`]; the I/O error is the
    /// source and says why.
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
            K::FileTooLarge => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        let e = Self::new(kind, operation, object, "").with_source(err);
        if kind == ErrorKind::Conflict {
            // An existing file will still exist on the next attempt.
            e.permanent()
        } else {
            e
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Whether retrying the same call may succeed. The engine's retry policy reads only this.
    pub fn is_retryable(&self) -> bool {
        self.0.status == ErrorStatus::Temporary
    }

    /// Whether it may succeed later, and whether retries already ran.
    pub fn status(&self) -> ErrorStatus {
        self.0.status
    }

    /// The operation that failed ("activate 2.1.0").
    pub fn operation(&self) -> &str {
        &self.0.operation
    }

    /// The object it acted on ("target blue").
    pub fn object(&self) -> &str {
        &self.0.object
    }

    /// Why it failed, in this crate's words (the source's text is not part of it).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The facts added with [`Error::with_context`].
    pub fn context_values(&self) -> &[(&'static str, String)] {
        &self.0.context
    }

    /// The whole message: outer operations, this operation, the message, the context and
    /// every source, each once (the same as `Display`).
    pub fn chain(&self) -> String {
        self.to_string()
    }

    /// This error as data, for reports and journals.
    pub fn record(&self) -> ErrorRecord {
        let mut context = BTreeMap::new();
        if !self.0.object.is_empty() {
            context.insert("object".to_owned(), self.0.object.clone());
        }
        for (k, v) in &self.0.context {
            context.insert((*k).to_owned(), v.clone());
        }
        ErrorRecord {
            kind: self.0.kind,
            status: self.0.status,
            operation: self.0.operation.to_string(),
            context,
            message: self.to_string(),
        }
    }
}

/// An error as data: what a report stores of a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorRecord {
    /// Its kind.
    pub kind: ErrorKind,
    /// Whether trying again could help, and whether retries ran.
    pub status: ErrorStatus,
    /// The operation that failed.
    pub operation: String,
    /// Facts about it: the object it acted on (`object`) and any others.
    pub context: BTreeMap<String, String>,
    /// The whole message, as an operator reads it.
    pub message: String,
}

impl ErrorRecord {
    /// Whether trying again could help.
    pub fn is_retryable(&self) -> bool {
        self.status == ErrorStatus::Temporary
    }
}

impl fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&Error> for ErrorRecord {
    fn from(e: &Error) -> Self {
        e.record()
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
    fn context_adds_the_outer_operation_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let inner = Error::io("connect to", "/run/haproxy.sock", io);
        let outer = inner.context("drain", "app/green");
        assert_eq!(outer.kind(), ErrorKind::Unavailable);
        assert!(outer.is_retryable());
        assert_eq!(
            outer.to_string(),
            "drain app/green: connect to /run/haproxy.sock: refused"
        );
        assert_eq!(outer.chain(), outer.to_string(), "nothing is repeated");
        // The source is the I/O error itself, not a copy of the inner error.
        assert_eq!(
            std::error::Error::source(&outer).unwrap().to_string(),
            "refused"
        );
        let twice = outer.context("deploy 2.0.0 to", "production");
        assert_eq!(
            twice.to_string(),
            "deploy 2.0.0 to production: drain app/green: connect to /run/haproxy.sock: refused"
        );
    }

    #[test]
    fn io_errors_are_classified_and_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::io("connect", "127.0.0.1:9", io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.message(), "");
        let e = e.persistent();
        assert!(!e.is_retryable());
        assert_eq!(e.status(), ErrorStatus::Persistent);
        assert_eq!(e.permanent().status(), ErrorStatus::Permanent);
    }

    #[test]
    fn context_values_follow_the_message_and_the_record_holds_them_as_data() {
        let e = Error::new(
            ErrorKind::Protocol,
            "query",
            "prometheus http://p:9090",
            "bad answer",
        )
        .with_context("status", "502")
        .with_context("query", "up");
        assert_eq!(
            e.to_string(),
            "query prometheus http://p:9090: bad answer [status: 502, query: up]"
        );
        let r = e.record();
        assert_eq!(r.kind, ErrorKind::Protocol);
        assert_eq!(r.status, ErrorStatus::Permanent);
        assert_eq!(r.operation, "query");
        assert_eq!(r.context["object"], "prometheus http://p:9090");
        assert_eq!(r.context["status"], "502");
        assert_eq!(r.context["query"], "up");
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""kind":"protocol","status":"permanent""#),
            "{json}"
        );
    }
}
