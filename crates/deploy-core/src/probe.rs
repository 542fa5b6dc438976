//! Built-in health probes: [`HttpProbe`] (status, JSON fields, version, latency) and
//! [`TcpProbe`] (the port accepts connections).

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Health, Version};
use crate::traits::{HealthProbe, ProbeRequest};

/// At most this much of an answer's body is read for JSON checks.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Checks a target over HTTP(S): `GET <scheme>://<endpoint><path>`, then the status code, JSON
/// fields, the reported version and the latency.
///
/// Redirects are not followed (a 3xx is judged by the status range like any other code) and
/// system proxies are not used: the probe talks to the target itself. A target that answers
/// wrongly (a status outside the range, a JSON field, a version, the latency budget) is
/// [`Health::unhealthy`]; one that gives no answer (the request could not be sent, no answer
/// within the timeout, the connection broke off while the answer was read) is
/// [`Health::unreachable`]. The probe fails with `Err` only when it cannot run (an endpoint
/// scheme other than `http`/`https`).
///
/// ```no_run
/// # fn demo() -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_core::HttpProbe;
/// let probe = HttpProbe::builder()
///     .path("/health")
///     .expect_field("status", "ok")
///     .version_field("version")
///     .latency_budget(Duration::from_secs(2))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    path: String,
    status: RangeInclusive<u16>,
    fields: Vec<(String, String)>,
    version_field: Option<String>,
    latency_budget: Option<Duration>,
    timeout: Duration,
    headers: HeaderMap,
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be credentials: show names only.
        let headers: Vec<_> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("HttpProbe")
            .field("path", &self.path)
            .field("status", &self.status)
            .field("fields", &self.fields)
            .field("version_field", &self.version_field)
            .field("latency_budget", &self.latency_budget)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .finish()
    }
}

/// Builds an [`HttpProbe`]; see [`HttpProbe::builder`].
#[derive(Clone)]
pub struct HttpProbeBuilder {
    path: String,
    status: RangeInclusive<u16>,
    fields: Vec<(String, String)>,
    version_field: Option<String>,
    latency_budget: Option<Duration>,
    timeout: Duration,
    headers: Vec<(String, String)>,
}

impl fmt::Debug for HttpProbeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self.headers.iter().map(|(n, _)| n).collect();
        f.debug_struct("HttpProbeBuilder")
            .field("path", &self.path)
            .field("status", &self.status)
            .field("fields", &self.fields)
            .field("version_field", &self.version_field)
            .field("latency_budget", &self.latency_budget)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .finish()
    }
}

impl Default for HttpProbeBuilder {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            status: 200..=299,
            fields: Vec::new(),
            version_field: None,
            latency_budget: None,
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }
}

impl HttpProbe {
    /// A builder with the defaults: path `/health`, status `200..=299`, no JSON checks, no
    /// latency budget, 5 s per-request timeout.
    pub fn builder() -> HttpProbeBuilder {
        HttpProbeBuilder::default()
    }
}

impl HttpProbeBuilder {
    /// The path to request, starting with `/` (query allowed). Default `/health`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Status codes that count as healthy. Default `200..=299`.
    pub fn expect_status(mut self, range: RangeInclusive<u16>) -> Self {
        self.status = range;
        self
    }

    /// Require the JSON answer's field `name` to be the string `value`. A dotted name
    /// (`checks.db`) looks into nested objects. May be given several times.
    pub fn expect_field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((name.into(), value.into()));
        self
    }

    /// Read the version from the JSON answer's field `name` (dotted for nested objects); it is
    /// reported in [`Health::version`] and compared to [`ProbeRequest::expected_version`].
    pub fn version_field(mut self, name: impl Into<String>) -> Self {
        self.version_field = Some(name.into());
        self
    }

    /// Answers slower than `budget` are unhealthy. Default: no budget.
    pub fn latency_budget(mut self, budget: Duration) -> Self {
        self.latency_budget = Some(budget);
        self
    }

    /// Give up on one request after `timeout` (the target is then unhealthy). Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Send header `name: value` with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Validate everything and build the probe; every problem found is reported in one error.
    pub fn build(self) -> Result<HttpProbe> {
        let mut problems = Vec::new();
        if !self.path.starts_with('/') {
            problems.push(format!("path {:?} must start with '/'", self.path));
        }
        if self
            .path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            problems.push(format!(
                "path {:?} must not contain spaces, control characters or '#'",
                self.path
            ));
        }
        let (lo, hi) = (*self.status.start(), *self.status.end());
        if lo < 100 || hi > 599 || lo > hi {
            problems.push(format!(
                "status range {lo}..={hi} must be a non-empty range within 100..=599"
            ));
        }
        for (name, _) in &self.fields {
            if !valid_field_name(name) {
                problems.push(format!(
                    "JSON field name {name:?} must not be empty or have empty parts"
                ));
            }
        }
        if let Some(name) = &self.version_field
            && !valid_field_name(name)
        {
            problems.push(format!(
                "version field name {name:?} must not be empty or have empty parts"
            ));
        }
        if self.timeout.is_zero() {
            problems.push("timeout must be greater than zero".to_owned());
        }
        if self.latency_budget.is_some_and(|b| b.is_zero()) {
            problems.push("latency budget must be greater than zero".to_owned());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            match (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.append(n, v);
                }
                (Err(_), _) => problems.push(format!("header name {name:?} is invalid")),
                // The value is not shown: it may be a credential.
                (_, Err(_)) => problems.push(format!("value of header {name:?} is invalid")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                "HTTP probe",
                problems.join("; "),
            ));
        }
        let client = crate::http::client(Some(self.timeout), "build", "HTTP probe")?;
        Ok(HttpProbe {
            client,
            path: self.path,
            status: self.status,
            fields: self.fields,
            version_field: self.version_field,
            latency_budget: self.latency_budget,
            timeout: self.timeout,
            headers,
        })
    }
}

pub(crate) fn valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(|p| !p.is_empty())
}

/// The value at dotted `name` in `json`, if any.
pub(crate) fn lookup<'a>(json: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    name.split('.').try_fold(json, |v, part| v.get(part))
}

/// A duration for reasons: `2.3 s`, `2 s`, `350 ms`.
pub(crate) fn human_secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{} ms", d.as_millis());
    }
    let s = format!("{:.1}", d.as_secs_f64());
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} s")
}

/// Why a request failed, in words, naming `url`.
fn describe_failure(err: &reqwest::Error, url: &str, timeout: Duration) -> String {
    if crate::http::error_kind(err) == crate::error::ErrorKind::Timeout {
        return format!("no answer within {} from {url}", human_secs(timeout));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let what = match io.kind() {
                K::ConnectionRefused => Some("connection refused"),
                K::ConnectionReset => Some("connection reset"),
                K::TimedOut => Some("connection timed out"),
                K::HostUnreachable => Some("host unreachable"),
                K::NetworkUnreachable => Some("network unreachable"),
                _ => None,
            };
            if let Some(what) = what {
                return format!("{what} to {url}");
            }
        }
        source = e.source();
    }
    // The chain of a reqwest error holds the useful part (DNS failure, TLS) deep down.
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let t = e.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = e.source();
    }
    format!("request to {url} failed: {text}")
}

/// A JSON value for reasons: strings quoted, everything else as JSON.
fn show(v: &serde_json::Value) -> String {
    v.to_string()
}

#[async_trait]
impl HealthProbe for HttpProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let endpoint = &request.endpoint;
        if endpoint.scheme != "http" && endpoint.scheme != "https" {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "probe",
                format!("target {} at {endpoint}", request.target),
                format!("scheme {:?} is not http or https", endpoint.scheme),
            ));
        }
        let url = endpoint.url(&self.path);
        let started = Instant::now();
        let sent = self
            .client
            .get(&url)
            .headers(self.headers.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Ok(Health::unreachable(
                    describe_failure(&e, &url, self.timeout),
                    started.elapsed(),
                ));
            }
        };
        let code = response.status().as_u16();
        let needs_body = !self.fields.is_empty() || self.version_field.is_some();
        let mut body = Vec::new();
        let mut body_problem = None;
        // An answer that broke off (connection reset or closed, no more bytes within the
        // timeout) is no answer; one too large or that cannot be decoded is a wrong answer.
        let mut body_broke_off = false;
        if needs_body {
            let (read, problem) = read_body(&mut response, MAX_BODY).await;
            body = read;
            body_problem = problem.map(|p| match p {
                BodyProblem::TooLarge => {
                    format!("answer from {url} is larger than {MAX_BODY} bytes")
                }
                BodyProblem::Failed(e) => {
                    body_broke_off = !e.is_decode();
                    describe_failure(&e, &url, self.timeout)
                }
            });
        }
        let latency = started.elapsed();

        // The version is read whenever possible, even from an unhealthy answer.
        let json: Option<serde_json::Value> = if needs_body && body_problem.is_none() {
            serde_json::from_slice(&body).ok()
        } else {
            None
        };
        let raw_version = match (&json, &self.version_field) {
            (Some(j), Some(name)) => lookup(j, name).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => None,
        };
        let version = raw_version.as_deref().and_then(|v| Version::new(v).ok());
        let unhealthy =
            |reason: String| Ok(Health::unhealthy(reason, latency).with_version(version.clone()));

        if !self.status.contains(&code) {
            return unhealthy(format!(
                "HTTP {code}, expected {}-{}",
                self.status.start(),
                self.status.end()
            ));
        }
        if let Some(problem) = body_problem {
            if body_broke_off {
                return Ok(Health::unreachable(problem, latency));
            }
            return unhealthy(problem);
        }
        let mut notes = vec![format!("HTTP {code}")];
        if needs_body {
            let Some(json) = &json else {
                let err = serde_json::from_slice::<serde_json::Value>(&body)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                return unhealthy(format!("answer is not JSON: {err}"));
            };
            for (name, expected) in &self.fields {
                match lookup(json, name) {
                    Some(serde_json::Value::String(s)) if s == expected => {
                        notes.push(format!("{name} {s}"));
                    }
                    Some(other) => {
                        return unhealthy(format!(
                            "field {name} is {}, expected {expected:?}",
                            show(other)
                        ));
                    }
                    None => {
                        return unhealthy(format!(
                            "field {name} is missing, expected {expected:?}"
                        ));
                    }
                }
            }
        }
        if let Some(name) = &self.version_field {
            match (&raw_version, &version, &request.expected_version) {
                (Some(raw), None, _) => {
                    return unhealthy(format!(
                        "field {name} is {raw:?}, which is not a valid version"
                    ));
                }
                (None, _, Some(expected)) => {
                    return unhealthy(format!(
                        "field {name} is missing, expected version {expected}"
                    ));
                }
                (_, Some(got), Some(expected)) if got != expected => {
                    return unhealthy(format!("version {got}, expected {expected}"));
                }
                (_, Some(got), _) => notes.push(format!("version {got}")),
                (None, _, None) => {}
            }
        }
        if let Some(budget) = self.latency_budget
            && latency > budget
        {
            return unhealthy(format!(
                "took {}, budget {}",
                human_secs(latency),
                human_secs(budget)
            ));
        }
        Ok(Health::healthy(notes.join(", "), latency).with_version(version))
    }
}

/// Checks that a target's port accepts TCP connections within a timeout (default 5 s).
///
/// A connection that fails or is not made in time is [`Health::unreachable`]: this probe never
/// gets an answer that says unhealthy, so only the deadline gives up on a target. It cannot
/// read a version, so [`Health::version`] stays `None` and `expected_version` is not
/// checked.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    timeout: Duration,
}

impl Default for TcpProbe {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
        }
    }
}

impl TcpProbe {
    /// A probe with a 5 s connect timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Give up connecting after `timeout` (the target is then unhealthy).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl HealthProbe for TcpProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let authority = request.endpoint.authority();
        let started = Instant::now();
        let connect = tokio::net::TcpStream::connect(authority.as_str());
        let result = tokio::time::timeout(self.timeout, connect).await;
        let latency = started.elapsed();
        Ok(match result {
            Ok(Ok(_stream)) => Health::healthy(format!("connected to {authority}"), latency),
            Ok(Err(e)) => {
                let reason = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("connection refused to {authority}")
                    }
                    _ => format!("cannot connect to {authority}: {e}"),
                };
                Health::unreachable(reason, latency)
            }
            Err(_) => Health::unreachable(
                format!(
                    "no connection to {authority} within {}",
                    human_secs(self.timeout)
                ),
                latency,
            ),
        })
    }
}

/// Why an answer's body was not read whole.
#[derive(Debug)]
pub(crate) enum BodyProblem {
    /// It is larger than the limit.
    TooLarge,
    /// Reading it failed.
    Failed(reqwest::Error),
}

/// Read `response`'s body, at most `max` bytes: what was read, and why it stopped early.
pub(crate) async fn read_body(
    response: &mut reqwest::Response,
    max: usize,
) -> (Vec<u8>, Option<BodyProblem>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return (body, Some(BodyProblem::TooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, None),
            Err(e) => return (body, Some(BodyProblem::Failed(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_reasons() {
        assert_eq!(human_secs(Duration::from_millis(2300)), "2.3 s");
        assert_eq!(human_secs(Duration::from_secs(2)), "2 s");
        assert_eq!(human_secs(Duration::from_millis(350)), "350 ms");
    }

    #[test]
    #[allow(
        clippy::reversed_empty_ranges,
        reason = "an empty range is what this test feeds the builder"
    )]
    fn build_reports_every_problem_at_once() {
        let e = HttpProbe::builder()
            .path("health")
            .expect_status(300..=200)
            .expect_field("a..b", "x")
            .timeout(Duration::ZERO)
            .header("bad header", "v")
            .header("x-token", "line\nbreak-secret")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        for part in [
            "path \"health\"",
            "300..=200",
            "\"a..b\"",
            "timeout",
            "\"bad header\"",
            "header \"x-token\"",
        ] {
            assert!(msg.contains(part), "{part} missing in {msg}");
        }
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn debug_hides_header_values() {
        let p = HttpProbe::builder()
            .header("authorization", "Bearer s3cr3t")
            .build()
            .unwrap();
        let d = format!("{p:?}");
        assert!(d.contains("authorization") && !d.contains("s3cr3t"), "{d}");
    }

    #[test]
    fn dotted_lookup() {
        let j = serde_json::json!({"checks": {"db": "ok"}});
        assert_eq!(lookup(&j, "checks.db"), Some(&serde_json::json!("ok")));
        assert_eq!(lookup(&j, "checks.cache"), None);
    }
}
