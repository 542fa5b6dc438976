//! [`PrometheusClient`]: instant and range queries over Prometheus' HTTP API.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploy_core::{Error, ErrorKind, ExposeSecret, Result, SecretString, http, redact};
use reqwest::Url;
use serde::Deserialize;

/// How the client authenticates to Prometheus (or the proxy in front of it). The password and
/// the token are [`SecretString`]s: `Debug` shows `[REDACTED]`, and they are exposed only
/// when a request's `Authorization` header is made (a header reqwest marks sensitive).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: SecretString,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
}

impl Auth {
    /// Basic authentication as `username` with `password`.
    pub fn basic(username: impl Into<String>, password: impl Into<SecretString>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A bearer token.
    pub fn bearer(token: impl Into<SecretString>) -> Self {
        Self::Bearer(token.into())
    }
}

/// Equal when the same kind of authentication carries the same credentials (for tests and
/// configuration checks; nothing is shown).
impl PartialEq for Auth {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Basic { username, password },
                Self::Basic {
                    username: u,
                    password: p,
                },
            ) => username == u && password.expose_secret() == p.expose_secret(),
            (Self::Bearer(a), Self::Bearer(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}

impl Eq for Auth {}

impl Auth {
    /// What a peer could echo back of these credentials: the password or token itself, and the
    /// `user:password` pair as the basic `Authorization` header carries it (base64).
    fn echoes(&self) -> Vec<String> {
        match self {
            Self::Basic { username, password } => {
                let p = password.expose_secret();
                if p.is_empty() {
                    return Vec::new();
                }
                vec![p.to_owned(), base64(format!("{username}:{p}").as_bytes())]
            }
            Self::Bearer(token) => vec![token.expose_secret().to_owned()],
        }
    }
}

/// Standard base64 with padding, as HTTP basic authentication encodes `user:password`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// `bytes` for messages: `16 MiB`, `512 KiB`, or `1000 bytes` when not a whole number of either.
pub(crate) fn size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

/// `16 MiB (16777216 bytes)`, or `1000 bytes` when that is all there is to say.
pub(crate) fn size_exactly(bytes: u64) -> String {
    let shown = size(bytes);
    if shown.ends_with(" bytes") {
        shown
    } else {
        format!("{shown} ({bytes} bytes)")
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It is longer than the limit (by its `Content-Length`, or by what arrived).
    TooLarge,
    /// Reading it failed.
    Read(reqwest::Error),
}

/// Read `resp`'s body, chunk by chunk as it arrives, refusing it as soon as it is known to be
/// longer than `limit` bytes: a `Content-Length` above the limit is refused before any of the
/// body is read, and a body without one is read no further than the chunk that crosses the
/// limit. Dropping the response then closes the connection instead of reading the rest.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: u64,
) -> std::result::Result<Vec<u8>, BodyError> {
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let capacity = declared.unwrap_or(0).min(limit).min(MIB);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The message of a body over its limit: `what` (`page`, `answer`), the limit, and the
/// setting (`key`) that raises it.
pub(crate) fn too_large(what: &str, limit: u64, key: &str) -> String {
    format!(
        "the {what} is larger than the limit of {}, so it was not read further; \
         raise `{key}` if it really is that large",
        size_exactly(limit)
    )
}

/// Percent-decoded URL user info; `None` when the bytes are not UTF-8.
fn percent_decoded(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One series of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (may be NaN or infinite).
    pub value: f64,
}

/// One series of a range vector: its labels and `(unix seconds, value)` points.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its points in time order.
    pub points: Vec<(f64, f64)>,
}

/// The result of a query, by Prometheus' `resultType`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum QueryResult {
    /// An instant vector: one value per series.
    Vector(Vec<Sample>),
    /// A range vector: points per series.
    Matrix(Vec<Series>),
    /// One number.
    Scalar(f64),
    /// A string.
    String(String),
}

impl QueryResult {
    /// The name Prometheus gives this result type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Vector(_) => "vector",
            Self::Matrix(_) => "matrix",
            Self::Scalar(_) => "scalar",
            Self::String(_) => "string",
        }
    }
}

/// A client of Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`), over reqwest with
/// rustls, with a time limit per request, a size limit per answer (64 MiB by default, read as
/// it arrives and refused at the limit), and optional basic or bearer authentication.
///
/// Errors name the operation, the query and the server (its URL as `deploy_core::redact::url`
/// shows it) and are typed by [`ErrorKind`]: `Unavailable` (cannot connect, HTTP 5xx;
/// retryable), `Timeout`, `PermissionDenied` (401/403), `Rejected` (Prometheus answered
/// `status: "error"`, e.g. a PromQL syntax error), `Protocol` (the answer is not the JSON
/// Prometheus sends, or is larger than the limit).
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use deploy_prometheus::{PrometheusClient, QueryResult};
/// let client = PrometheusClient::new("http://127.0.0.1:9090")?;
/// if let QueryResult::Vector(v) = client.query("up").await? {
///     println!("{} targets", v.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PrometheusClient {
    base: Url,
    /// `base` as messages, sources and `Debug` show it.
    shown: String,
    http: reqwest::Client,
    timeout: Duration,
    max_answer_size: u64,
    auth: Option<Auth>,
}

impl fmt::Debug for PrometheusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusClient")
            .field("base", &self.shown)
            .field("timeout", &self.timeout)
            .field("max_answer_size", &self.max_answer_size)
            .field("auth", &self.auth)
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct RawVectorItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct RawMatrixItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// Prometheus writes sample values as strings: `"0.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

impl PrometheusClient {
    /// The default limit of one answer: 64 MiB. A range query over a day at a 15 s step is
    /// 5,760 points per series, about 150 KiB of JSON; 64 MiB holds some 400 such series, more
    /// than any gate's query should return.
    pub const DEFAULT_MAX_ANSWER_SIZE: u64 = 64 * MIB;

    /// A client of the Prometheus at `base_url` (`http://host:9090`, or with a path prefix
    /// `https://host/prometheus/`), with a 10 s time limit per request and a 64 MiB limit per
    /// answer. Credentials in the URL (`http://user:pass@host`, percent-encoded) become basic
    /// authentication and are removed from the URL; no error shows any part of them (a URL
    /// with an `@` after its host, which an unescaped `/`, `?`, `#` or `@` in a password makes,
    /// is refused without being shown).
    pub fn new(base_url: &str) -> Result<Self> {
        const OPERATION: &str = "configure Prometheus client for";
        let bad = |cause: String| {
            Error::new(
                ErrorKind::InvalidInput,
                OPERATION,
                redact::url(base_url),
                cause,
            )
        };
        let mut base =
            Url::parse(base_url).map_err(|e| bad("not a valid URL".to_owned()).with_source(e))?;
        // `http://user:pa/ss@host` parses with host `user`, port `pa`... or, with digits, with
        // part of the password in the path, and `pa@ss/x@host` gives a host `ss` that is part
        // of the password: no part of such a URL may be shown, its host included.
        let after_host = [Some(base.path()), base.query(), base.fragment()];
        if after_host.iter().flatten().any(|part| part.contains('@')) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                OPERATION,
                "a URL not shown (it may hold part of a password)",
                "it has an '@' after its host, which an unescaped '/', '?', '#' or '@' in a \
                 password makes: percent-encode them in the password (%2F, %3F, %23, %40)",
            ));
        }
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!(
                "scheme {:?} is not http or https",
                base.scheme()
            )));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("the URL must not have a query or a fragment".into()));
        }
        let mut auth = None;
        if !base.username().is_empty() || base.password().is_some() {
            let (Some(username), Some(password)) = (
                percent_decoded(base.username()),
                percent_decoded(base.password().unwrap_or("")),
            ) else {
                return Err(bad(
                    "the user name or password in the URL is not UTF-8 once percent-decoded".into(),
                ));
            };
            auth = Some(Auth::basic(username, password));
            // Cannot fail for http(s) URLs.
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // Each request gets its own time limit (`with_timeout`), so the client has none.
        let http = http::client(None, OPERATION, &redact::url(base_url))?;
        Ok(Self {
            shown: redact::url(base.as_str()),
            base,
            http,
            timeout: Duration::from_secs(10),
            max_answer_size: Self::DEFAULT_MAX_ANSWER_SIZE,
            auth,
        })
    }

    /// Limit each request to `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Authenticate with `auth` (in place of credentials the URL held).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Refuse an answer of more than `bytes` bytes (default
    /// [`DEFAULT_MAX_ANSWER_SIZE`](Self::DEFAULT_MAX_ANSWER_SIZE), 64 MiB), reading no further
    /// than that.
    pub fn with_max_answer_size(mut self, bytes: u64) -> Self {
        self.max_answer_size = bytes;
        self
    }

    /// The limit of one answer, in bytes.
    pub fn max_answer_size(&self) -> u64 {
        self.max_answer_size
    }

    /// The base URL, without credentials (but with its whole path: to show it, use
    /// `deploy_core::redact::url`, as this crate's messages do).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The base URL as messages, verdict sources and `Debug` show it.
    pub(crate) fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The time limit per request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How it authenticates.
    pub(crate) fn auth(&self) -> Option<&Auth> {
        self.auth.as_ref()
    }

    /// Evaluate `query` at the current time (`/api/v1/query`).
    pub async fn query(&self, query: &str) -> Result<QueryResult> {
        self.call(
            "query",
            "api/v1/query",
            query,
            vec![("query", query.to_owned())],
        )
        .await
    }

    /// Evaluate `query` over `[start, end]` every `step` (`/api/v1/query_range`).
    pub async fn query_range(
        &self,
        query: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<Series>> {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .unwrap_or_else(|_| "0".to_owned())
        };
        let form = vec![
            ("query", query.to_owned()),
            ("start", secs(start)),
            ("end", secs(end)),
            ("step", format!("{:.3}", step.as_secs_f64())),
        ];
        match self
            .call("range query", "api/v1/query_range", query, form)
            .await?
        {
            QueryResult::Matrix(m) => Ok(m),
            other => Err(Error::new(
                ErrorKind::Protocol,
                "range query",
                self.object(query),
                format!(
                    "Prometheus answered a {} where a matrix was expected",
                    other.type_name()
                ),
            )),
        }
    }

    fn object(&self, query: &str) -> String {
        format!("`{query}` on Prometheus {}", self.shown)
    }

    async fn call(
        &self,
        operation: &'static str,
        path: &str,
        query: &str,
        form: Vec<(&'static str, String)>,
    ) -> Result<QueryResult> {
        let object = || self.object(query);
        let url = self.base.join(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                operation,
                object(),
                "cannot form the API URL",
            )
            .with_source(e)
        })?;
        tracing::debug!(url = %redact::url(url.as_str()), query, "Prometheus {operation}");
        let mut req = self.http.post(url).timeout(self.timeout).form(&form);
        match &self.auth {
            Some(Auth::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password.expose_secret()));
            }
            Some(Auth::Bearer(token)) => req = req.bearer_auth(token.expose_secret()),
            None => {}
        }
        let resp = req.send().await.map_err(|e| {
            request_failed(
                operation,
                object(),
                self.timeout,
                "cannot reach Prometheus",
                e,
            )
        })?;
        let status = resp.status();
        let body = read_body(resp, self.max_answer_size)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Error::new(
                    ErrorKind::Protocol,
                    operation,
                    object(),
                    too_large("answer", self.max_answer_size, "max_answer_size"),
                ),
                BodyError::Read(e) => request_failed(
                    operation,
                    object(),
                    self.timeout,
                    "reading the answer failed",
                    e,
                ),
            })?;
        let scrub = |text: String| self.scrub(text);
        read_answer_with(status, &body, &scrub)
            .map_err(|(kind, cause)| Error::new(kind, operation, object(), self.scrub(cause)))
    }

    /// `text` (what a server answered) without any echo of the credentials: a proxy that
    /// quotes the request's `Authorization` header in its error page must not put the token
    /// into an error message, a verdict or a report.
    fn scrub(&self, mut text: String) -> String {
        for echo in self.auth.iter().flat_map(Auth::echoes) {
            if !echo.is_empty() && text.contains(&echo) {
                text = text.replace(&echo, "[REDACTED]");
            }
        }
        text
    }
}

/// [`read_answer_with`] with nothing to scrub.
#[cfg(test)]
fn read_answer(
    status: reqwest::StatusCode,
    body: &[u8],
) -> std::result::Result<QueryResult, (ErrorKind, String)> {
    read_answer_with(status, body, &|text| text)
}

/// What an answer of the HTTP API says: the result, or the kind of failure and its cause.
/// Any bytes are read without panicking: Prometheus' JSON, its error JSON with any status, or
/// whatever a proxy in front of it answers. The part of a non-JSON answer quoted in the cause
/// goes through `scrub` first (whole, before it is shortened, so no part of a secret is left).
fn read_answer_with(
    status: reqwest::StatusCode,
    body: &[u8],
    scrub: &dyn Fn(String) -> String,
) -> std::result::Result<QueryResult, (ErrorKind, String)> {
    let envelope: std::result::Result<Envelope, _> = serde_json::from_slice(body);
    // Prometheus answers errors as JSON with 400/422/503; prefer its words.
    if let Ok(env) = &envelope
        && env.status == "error"
    {
        let kind = if status.is_server_error() {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Rejected
        };
        return Err((
            kind,
            format!(
                "Prometheus answered HTTP {} {}: {}",
                status.as_u16(),
                env.error_type.as_deref().unwrap_or("error"),
                env.error.as_deref().unwrap_or("(no message)")
            ),
        ));
    }
    if !status.is_success() {
        let kind = match status.as_u16() {
            401 | 403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            s if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Rejected,
        };
        let text = scrub(String::from_utf8_lossy(body).trim().to_owned());
        let snippet: String = text.chars().take(200).collect();
        return Err((kind, format!("HTTP {status}: {snippet}")));
    }
    let protocol = |cause: String| (ErrorKind::Protocol, cause);
    let env =
        envelope.map_err(|e| protocol(format!("the answer is not Prometheus API JSON: {e}")))?;
    if env.status != "success" {
        return Err(protocol(format!("unknown status {:?}", env.status)));
    }
    let data = env
        .data
        .ok_or_else(|| protocol("the answer has no `data`".into()))?;
    parse_result(&data.result_type, data.result).map_err(protocol)
}

fn parse_result(
    result_type: &str,
    result: serde_json::Value,
) -> std::result::Result<QueryResult, String> {
    let bad_value = |s: &str| format!("sample value {s:?} is not a number");
    match result_type {
        "vector" => {
            let items: Vec<RawVectorItem> =
                serde_json::from_value(result).map_err(|e| format!("bad vector: {e}"))?;
            items
                .into_iter()
                .map(|i| {
                    Ok(Sample {
                        value: parse_value(&i.value.1).ok_or_else(|| bad_value(&i.value.1))?,
                        labels: i.metric,
                    })
                })
                .collect::<std::result::Result<_, String>>()
                .map(QueryResult::Vector)
        }
        "matrix" => {
            let items: Vec<RawMatrixItem> =
                serde_json::from_value(result).map_err(|e| format!("bad matrix: {e}"))?;
            items
                .into_iter()
                .map(|i| {
                    let points = i
                        .values
                        .iter()
                        .map(|(t, v)| Ok((*t, parse_value(v).ok_or_else(|| bad_value(v))?)))
                        .collect::<std::result::Result<_, String>>()?;
                    Ok(Series {
                        labels: i.metric,
                        points,
                    })
                })
                .collect::<std::result::Result<_, String>>()
                .map(QueryResult::Matrix)
        }
        "scalar" => {
            let (_, v): (f64, String) =
                serde_json::from_value(result).map_err(|e| format!("bad scalar: {e}"))?;
            Ok(QueryResult::Scalar(
                parse_value(&v).ok_or_else(|| bad_value(&v))?,
            ))
        }
        "string" => {
            let (_, v): (f64, String) =
                serde_json::from_value(result).map_err(|e| format!("bad string: {e}"))?;
            Ok(QueryResult::String(v))
        }
        other => Err(format!("unknown resultType {other:?}")),
    }
}

/// A request that got no usable answer, as an error of `operation` on `object`: its kind by the
/// workspace's one mapping ([`http::error_kind`]); a timeout says the limit, anything else says
/// `why` (this crate's words) and keeps reqwest's error, without its URL, as the source.
pub(crate) fn request_failed(
    operation: &'static str,
    object: String,
    timeout: Duration,
    why: &str,
    e: reqwest::Error,
) -> Error {
    let kind = http::error_kind(&e);
    if kind == ErrorKind::Timeout {
        return Error::new(
            kind,
            operation,
            object,
            format!("no answer within {}", humantime::format_duration(timeout)),
        );
    }
    Error::new(kind, operation, object, why).with_source(e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_redacted_basic_auth() {
        let c = PrometheusClient::new("http://alice:s3cret@127.0.0.1:9090/prom").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:9090/prom/");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
        let c = c.with_auth(Auth::Bearer("tok-123".into()));
        assert!(!format!("{c:?}").contains("tok-123"));
    }

    #[test]
    fn percent_encoded_credentials_are_decoded_and_a_password_is_never_shown() {
        let c =
            PrometheusClient::new("http://al%20ice:p%40ss%2Fw%3Fo%23rd@127.0.0.1:9090").unwrap();
        assert_eq!(c.auth(), Some(&Auth::basic("al ice", "p@ss/w?o#rd")));
        assert_eq!(c.base_url(), "http://127.0.0.1:9090/");
        // A password alone (no user name) is basic authentication too.
        let c = PrometheusClient::new("http://:Zq9CANARY@127.0.0.1:9090").unwrap();
        assert_eq!(c.auth(), Some(&Auth::basic("", "Zq9CANARY")));
        assert!(!format!("{c:?}").contains("Zq9CANARY"));
        // Unescaped '/', '?', '#' or '@' in a password: refused, and no part of it (nor the
        // host the parser would make of it) is in the error.
        for (url, parts) in [
            (
                "http://alice:1234/Zq9CANARY@127.0.0.1:9090",
                &["Zq9CANARY"][..],
            ),
            (
                "http://alice:Zq9@CANARY/x@prom.internal:9090",
                &["Zq9", "CANARY", "prom"],
            ),
            ("http://alice:1?Zq9CANARY@127.0.0.1:9090", &["Zq9CANARY"]),
            ("http://alice:1#Zq9CANARY@127.0.0.1:9090", &["Zq9CANARY"]),
            ("http://alice:Zq9/CANARY@127.0.0.1:9090", &["Zq9", "CANARY"]),
            ("http://alice:Zq9?CANARY@127.0.0.1:9090", &["Zq9", "CANARY"]),
            ("http://alice:%ff%fe@127.0.0.1:9090", &["%ff"]),
        ] {
            let e = PrometheusClient::new(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}");
            let text = format!("{e} {e:?}");
            for p in parts {
                assert!(!text.contains(p), "{p} shown for {url}: {text}");
            }
        }
    }

    #[test]
    fn sizes_and_base64_are_written_as_expected() {
        assert_eq!(size(16 * MIB), "16 MiB");
        assert_eq!(size(64 * MIB), "64 MiB");
        assert_eq!(size(2 * GIB), "2 GiB");
        assert_eq!(size(1536), "1536 bytes");
        assert_eq!(size(512 * KIB), "512 KiB");
        assert_eq!(size(0), "0 bytes");
        // RFC 4648's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn an_echo_of_the_credentials_in_an_answer_is_scrubbed_before_it_is_shortened() {
        let c = PrometheusClient::new("http://alice:Zq9CANARY@127.0.0.1:9090").unwrap();
        // A proxy quoting the request headers, the secret past the 200 characters shown.
        let page = format!(
            "{}Authorization: Basic {} pw=Zq9CANARY",
            "x".repeat(190),
            base64(b"alice:Zq9CANARY")
        );
        let scrub = |t: String| c.scrub(t);
        let (_, cause) =
            read_answer_with(StatusCode::UNAUTHORIZED, page.as_bytes(), &scrub).unwrap_err();
        assert!(
            !cause.contains("Zq9") && !cause.contains("YWxpY2U6"),
            "{cause}"
        );
        let c = c.with_auth(Auth::bearer("tok-Zq9CANARY"));
        let (_, cause) = read_answer_with(
            StatusCode::BAD_GATEWAY,
            b"upstream said: bad token tok-Zq9CANARY",
            &|t| c.scrub(t),
        )
        .unwrap_err();
        assert_eq!(
            cause,
            "HTTP 502 Bad Gateway: upstream said: bad token [REDACTED]"
        );
    }

    #[test]
    fn bad_urls_are_invalid_input_without_the_password() {
        let e = PrometheusClient::new("ftp://u:pw@host").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(PrometheusClient::new("not a url").is_err());
        assert!(PrometheusClient::new("http://h:9090/?x=1").is_err());
    }

    #[test]
    fn parses_every_result_type() {
        let v = parse_result(
            "vector",
            serde_json::json!([{"metric": {"a": "b"}, "value": [1.5, "NaN"]}]),
        )
        .unwrap();
        let QueryResult::Vector(v) = v else { panic!() };
        assert!(v[0].value.is_nan());
        assert_eq!(v[0].labels["a"], "b");
        let m = parse_result(
            "matrix",
            serde_json::json!([{"metric": {}, "values": [[1, "1"], [2, "+Inf"]]}]),
        )
        .unwrap();
        assert_eq!(
            m,
            QueryResult::Matrix(vec![Series {
                labels: BTreeMap::new(),
                points: vec![(1.0, 1.0), (2.0, f64::INFINITY)]
            }])
        );
        assert_eq!(
            parse_result("scalar", serde_json::json!([1, "0.25"])).unwrap(),
            QueryResult::Scalar(0.25)
        );
        assert!(parse_result("vector", serde_json::json!({"x": 1})).is_err());
        assert!(parse_result("vector", serde_json::json!([{"value": [1, "abc"]}])).is_err());
        assert!(parse_result("weird", serde_json::json!([])).is_err());
    }

    // ---- property tests of the answer reader ----

    use proptest::prelude::*;
    use reqwest::StatusCode;
    use serde_json::{Value, json};

    /// A sample value as Prometheus writes it (Go's `FormatFloat(v, 'f', -1, 64)` spelling of
    /// the specials).
    fn prom_value(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v == f64::INFINITY {
            "+Inf".into()
        } else if v == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            format!("{v}")
        }
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            ".*".prop_map(Value::String),
            prop_oneof![
                Just("NaN"),
                Just("+Inf"),
                Just("1.5"),
                Just("vector"),
                Just("success")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("metric".to_owned()),
                        Just("value".to_owned()),
                        Just("values".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn status() -> impl Strategy<Value = StatusCode> {
        prop_oneof![
            Just(StatusCode::OK),
            (100u16..600).prop_map(|s| StatusCode::from_u16(s).unwrap()),
        ]
    }

    fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,6}", any::<String>(), 0..4)
    }

    fn values() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_a_result_or_a_clear_error(
            status in status(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Err((kind, cause)) = read_answer(status, &body) {
                prop_assert!(!cause.is_empty());
                if status.is_success() {
                    prop_assert_eq!(kind, ErrorKind::Protocol, "{}", cause);
                }
            }
        }

        #[test]
        fn hostile_json_is_a_result_or_a_clear_error(
            status in status(),
            result_type in prop_oneof![
                Just("vector".to_owned()),
                Just("matrix".to_owned()),
                Just("scalar".to_owned()),
                Just("string".to_owned()),
                ".{0,8}",
            ],
            result in any_json(),
            whole in any_json(),
            wrap in any::<bool>(),
        ) {
            let body = if wrap {
                json!({"status": "success", "data": {"resultType": result_type, "result": result}})
            } else {
                whole
            };
            if let Err((_, cause)) = read_answer(status, body.to_string().as_bytes()) {
                prop_assert!(!cause.is_empty());
            }
        }

        #[test]
        fn valid_answers_parse_exactly(
            vector in proptest::collection::vec((labels(), -1e10..1e10f64, values()), 0..5),
            matrix in proptest::collection::vec(
                (labels(), proptest::collection::vec((0i64..4_000_000_000_000, values()), 0..5)),
                0..4,
            ),
            scalar in values(),
        ) {
            let body = json!({"status": "success", "data": {"resultType": "vector", "result":
                vector.iter().map(|(l, t, v)| json!({"metric": l, "value": [t, prom_value(*v)]})).collect::<Vec<_>>()
            }});
            let Ok(QueryResult::Vector(got)) = read_answer(StatusCode::OK, body.to_string().as_bytes()) else {
                return Err(TestCaseError::fail(format!("not a vector: {body}")));
            };
            prop_assert_eq!(got.len(), vector.len());
            for (g, (l, _, v)) in got.iter().zip(&vector) {
                prop_assert_eq!(&g.labels, l);
                prop_assert!(same(g.value, *v), "{} != {}", g.value, v);
            }

            let body = json!({"status": "success", "data": {"resultType": "matrix", "result":
                matrix.iter().map(|(l, pts)| json!({"metric": l, "values":
                    pts.iter().map(|(t, v)| json!([*t as f64 / 1000.0, prom_value(*v)])).collect::<Vec<_>>()
                })).collect::<Vec<_>>()
            }});
            let Ok(QueryResult::Matrix(got)) = read_answer(StatusCode::OK, body.to_string().as_bytes()) else {
                return Err(TestCaseError::fail(format!("not a matrix: {body}")));
            };
            prop_assert_eq!(got.len(), matrix.len());
            for (g, (l, pts)) in got.iter().zip(&matrix) {
                prop_assert_eq!(&g.labels, l);
                prop_assert_eq!(g.points.len(), pts.len());
                for (gp, p) in g.points.iter().zip(pts) {
                    // Timestamps are seconds with milliseconds; serde_json reads them to
                    // within a microsecond (its default float parsing is not exact).
                    prop_assert!((gp.0 - p.0 as f64 / 1000.0).abs() < 1e-6, "{} vs {}", gp.0, p.0);
                    prop_assert!(same(gp.1, p.1));
                }
            }

            let body = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.5, prom_value(scalar)]}});
            let Ok(QueryResult::Scalar(got)) = read_answer(StatusCode::OK, body.to_string().as_bytes()) else {
                return Err(TestCaseError::fail(format!("not a scalar: {body}")));
            };
            prop_assert!(same(got, scalar));
        }
    }

    #[test]
    fn deeply_nested_or_huge_answers_are_errors_not_crashes() {
        let deep = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (kind, cause) = read_answer(StatusCode::OK, deep.as_bytes()).unwrap_err();
        assert_eq!(kind, ErrorKind::Protocol);
        assert!(cause.contains("recursion limit"), "{cause}");
        let (kind, cause) = read_answer(StatusCode::OK, b"").unwrap_err();
        assert_eq!(kind, ErrorKind::Protocol);
        assert!(cause.contains("not Prometheus API JSON"), "{cause}");
        let e = read_answer(
            StatusCode::BAD_GATEWAY,
            "<html>\u{0}\u{202e}".repeat(1000).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.0, ErrorKind::Unavailable);
        assert!(e.1.chars().count() < 250, "{}", e.1);
    }
}
