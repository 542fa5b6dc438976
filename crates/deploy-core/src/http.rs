//! The one way this workspace makes HTTP clients and turns their failures into [`Error`]s:
//! probes, smoke checks, webhooks, notifications, Prometheus and nginx checks all share it.

use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::redact;

/// A client builder with the settings every caller here wants: rustls, no proxy from the
/// environment (the targets are the machines named in the plan, not the internet), and no
/// redirects (an answer is judged as given).
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// Build a client from [`client_builder`], with `timeout` for a whole request if given, for
/// `operation` on `object` (its failure is an [`Error`]).
pub fn client(
    timeout: Option<Duration>,
    operation: &'static str,
    object: &str,
) -> Result<reqwest::Client, Error> {
    let mut b = client_builder();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| {
        Error::new(
            ErrorKind::Other,
            operation,
            object.to_owned(),
            "cannot build the HTTP client",
        )
        .with_source(e.without_url())
    })
}

/// The kind of a failed request: a timeout is [`ErrorKind::Timeout`], a connection that could
/// not be made or was cut is [`ErrorKind::Unavailable`], an answer that could not be read is
/// [`ErrorKind::Protocol`].
pub fn error_kind(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() || e.is_request() {
        ErrorKind::Unavailable
    } else if e.is_decode() || e.is_body() {
        ErrorKind::Protocol
    } else if e.is_builder() {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Unavailable
    }
}

/// A failed request as an [`Error`] for `operation` on `url` (shown as [`redact::url`] shows
/// it): the kind from [`error_kind`], a message naming the timeout when there was one, and the
/// request error (without its URL, which may hold secrets) as the source.
pub fn request_error(
    operation: impl Into<std::borrow::Cow<'static, str>>,
    url: &str,
    timeout: Option<Duration>,
    e: reqwest::Error,
) -> Error {
    request_error_on(operation, redact::url(url), timeout, e)
}

/// [`request_error`] for an object the caller names itself (a URL already redacted another
/// way, `redact::url_without_path` for a webhook).
pub fn request_error_on(
    operation: impl Into<std::borrow::Cow<'static, str>>,
    object: String,
    timeout: Option<Duration>,
    e: reqwest::Error,
) -> Error {
    let kind = error_kind(&e);
    let err = Error::new(kind, operation, object, "");
    match (kind, timeout) {
        (ErrorKind::Timeout, Some(t)) => Error::new(
            kind,
            err.operation().to_owned(),
            err.object().to_owned(),
            format!("no answer within {}", humantime::format_duration(t)),
        ),
        _ => err.with_source(e.without_url()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_said_once() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://u:secret@127.0.0.1:{port}/health?token=abc");
        let c = client(Some(Duration::from_secs(2)), "probe", "test").unwrap();
        let e = c.get(&url).send().await.unwrap_err();
        let err = request_error("probe", &url, Some(Duration::from_secs(2)), e);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(!text.contains("secret") && !text.contains("abc"), "{text}");
        assert!(
            text.starts_with(&format!("probe http://127.0.0.1:{port}/")),
            "{text}"
        );
    }
}
