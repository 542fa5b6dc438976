//! The served-version check at the front door: after a traffic step, requests through the load
//! balancer's frontend must carry the versions the weights promise ("switched" is not "served":
//! a cached or stale worker may keep serving the old code after a switch).
//!
//! The engine runs a [`ServedCheck`] given to the environment
//! ([`EnvironmentBuilder::served_check`](crate::EnvironmentBuilder::served_check)) right after
//! every `SetWeights` step of the forward path, as part of that step: a mismatch fails the step,
//! and the run rolls back (the step's inverse puts the weights back).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::model::Version;
use crate::redact;
use crate::strategy::ConfigProblem;

/// At most this many requests per check: the check must stay a sample, not a load test.
pub const MAX_REQUESTS: u32 = 10_000;

/// Where each answer carries the version that served it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionReader {
    /// A response header (`X-Version`).
    Header(String),
    /// A field of the JSON body (`version`, or a dotted path such as `build.version`).
    JsonField(String),
}

impl fmt::Display for VersionReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(h) => write!(f, "header {h}"),
            Self::JsonField(j) => write!(f, "JSON field {j}"),
        }
    }
}

/// The check: `requests` GETs of `url` (the load balancer's frontend, or its health endpoint),
/// one at a time, each on a new connection and within `timeout`; the version of each answer is
/// read from the header `header` or the JSON field `json_field` (exactly one of them). The share
/// of answers of each version must be within `tolerance` (an absolute share: `0.1` is ± 10
/// points) of the share of weight on the targets that run it, and no answer may carry another
/// version or none.
///
/// In a plan file it is the `[served_check]` section:
///
/// ```toml
/// [served_check]
/// url = "http://127.0.0.1:8080/"
/// requests = 300
/// header = "X-Version"
/// tolerance = 0.1
/// timeout = "2s"
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServedCheck {
    /// The URL to request (through the load balancer).
    #[serde(serialize_with = "shown_url")]
    pub url: String,
    /// How many requests (1 to [`MAX_REQUESTS`]). Default 300.
    #[serde(default = "default_requests")]
    pub requests: u32,
    /// The response header carrying the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The JSON field of the body carrying the version (dotted for a nested one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_field: Option<String>,
    /// How far each version's share of answers may be from its share of weight (0 to 1).
    /// Default 0.1.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Time limit of each request. Default 5 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// 300 requests: at 50/50 the share seen varies by 0.029 when requests are placed at random,
/// so the default tolerance (0.1) is about 3.5 standard deviations.
fn default_requests() -> u32 {
    300
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl fmt::Debug for ServedCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCheck")
            .field("url", &redact::url(&self.url))
            .field("requests", &self.requests)
            .field("header", &self.header)
            .field("json_field", &self.json_field)
            .field("tolerance", &self.tolerance)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ServedCheck {
    /// Read the version from response header `name` of answers from `url`; 300 requests,
    /// tolerance 0.1, 5 s per request.
    pub fn header(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            requests: default_requests(),
            header: Some(name.into()),
            json_field: None,
            tolerance: default_tolerance(),
            timeout: default_timeout(),
        }
    }

    /// Read the version from the JSON field `name` of the bodies of answers from `url` (a
    /// health endpoint); otherwise as [`header`](Self::header).
    pub fn json_field(url: impl Into<String>, name: impl Into<String>) -> Self {
        let mut c = Self::header(url, "");
        c.header = None;
        c.json_field = Some(name.into());
        c
    }

    /// Send `requests` requests.
    pub fn with_requests(mut self, requests: u32) -> Self {
        self.requests = requests;
        self
    }

    /// Accept shares within `tolerance` (an absolute share, 0 to 1) of the weights' shares.
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Give each request `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the version is read (`None` when neither or both of `header` and `json_field` are
    /// given, which [`problems`](Self::problems) reports).
    pub fn reader(&self) -> Option<VersionReader> {
        match (&self.header, &self.json_field) {
            (Some(h), None) => Some(VersionReader::Header(h.clone())),
            (None, Some(j)) => Some(VersionReader::JsonField(j.clone())),
            _ => None,
        }
    }

    /// What is wrong with this check, each problem with its key (`tolerance`), in plain words.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => problems.push(ConfigProblem::new(
                "url",
                format!(
                    "{} is not an http:// or https:// URL with a host",
                    redact::url(&self.url)
                ),
            )),
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            problems.push(ConfigProblem::new(
                "requests",
                format!("{} requests; give 1 to {MAX_REQUESTS}", self.requests),
            ));
        }
        match (&self.header, &self.json_field) {
            (None, None) => problems.push(ConfigProblem::new(
                "header",
                "missing: give header (a response header such as \"X-Version\") or json_field \
                 (a field of the JSON body such as \"version\")",
            )),
            (Some(_), Some(_)) => problems.push(ConfigProblem::new(
                "json_field",
                "give header or json_field, not both",
            )),
            (Some(h), None) => {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    problems.push(ConfigProblem::new(
                        "header",
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
            (None, Some(j)) => {
                if !crate::probe::valid_field_name(j) {
                    problems.push(ConfigProblem::new(
                        "json_field",
                        format!("{j:?} must not be empty or have empty parts"),
                    ));
                }
            }
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            problems.push(ConfigProblem::new(
                "tolerance",
                format!(
                    "{} is not a share from 0 up to (not including) 1; 0.1 accepts ± 10 points",
                    self.tolerance
                ),
            ));
        }
        if self.timeout.is_zero() {
            problems.push(ConfigProblem::new(
                "timeout",
                "0 leaves a request no time to answer; give a duration such as `2s`",
            ));
        }
        problems
    }

    /// Send the requests and count the versions the answers carry. Fails only when the check
    /// is misconfigured ([`problems`](Self::problems)); an answer without a version, or a
    /// request that fails, is counted as such.
    pub async fn sample(&self) -> Result<ServedSample, Error> {
        let object = redact::url(&self.url);
        let (reader, problems) = (self.reader(), self.problems());
        let Some(reader) = reader.filter(|_| problems.is_empty()) else {
            let text: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect();
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "check the served versions at",
                object,
                text.join("; "),
            ));
        };
        // A new connection per request, as distinct users would make: a balancer that keeps a
        // connection on one server would otherwise skew the sample.
        let client = crate::http::client_builder()
            .timeout(self.timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    "check the served versions at",
                    object.clone(),
                    "cannot build the HTTP client",
                )
                .with_source(e.without_url())
            })?;
        let mut sample = ServedSample::default();
        for _ in 0..self.requests {
            match self.one(&client, &reader).await {
                Ok(v) => *sample.versions.entry(v).or_default() += 1,
                Err(why) => {
                    sample.without_version += 1;
                    sample.last_problem = Some(why);
                }
            }
        }
        Ok(sample)
    }

    /// One request: the version its answer carries, or why there is none.
    async fn one(
        &self,
        client: &reqwest::Client,
        reader: &VersionReader,
    ) -> Result<String, String> {
        let mut resp = client.get(&self.url).send().await.map_err(|e| {
            crate::http::request_error("GET", &self.url, Some(self.timeout), e).chain()
        })?;
        let status = resp.status();
        match reader {
            VersionReader::Header(name) => {
                let value = resp
                    .headers()
                    .get(name.as_str())
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned());
                // Read the body (bounded) so that the answer is complete before the next one.
                let _ = crate::probe::read_body(&mut resp, crate::probe::MAX_BODY).await;
                value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("HTTP {} without header {name}", status.as_u16()))
            }
            VersionReader::JsonField(name) => {
                let body = match crate::probe::read_body(&mut resp, crate::probe::MAX_BODY).await {
                    (body, None) => body,
                    (_, Some(crate::probe::BodyProblem::TooLarge)) => {
                        return Err(format!(
                            "HTTP {}: body larger than {} bytes",
                            status.as_u16(),
                            crate::probe::MAX_BODY
                        ));
                    }
                    (_, Some(crate::probe::BodyProblem::Failed(e))) => {
                        return Err(format!(
                            "HTTP {}: body not read: {}",
                            status.as_u16(),
                            e.without_url()
                        ));
                    }
                };
                let json: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|_| format!("HTTP {}: the body is not JSON", status.as_u16()))?;
                match crate::probe::lookup(&json, name) {
                    Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                        Ok(s.trim().to_owned())
                    }
                    Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                    _ => Err(format!(
                        "HTTP {}: no JSON field {name} in the body",
                        status.as_u16()
                    )),
                }
            }
        }
    }

    /// Sample and judge against `promised` (each version's share of the weight, summing to 1):
    /// `Ok(summary)` for the report, or an error saying what was expected and what was seen.
    pub async fn check(&self, promised: &BTreeMap<Version, f64>) -> Result<String, Error> {
        let sample = self.sample().await?;
        let summary = format!(
            "served through {}: {sample} (expected {})",
            redact::url(&self.url),
            expected_text(promised, self.tolerance)
        );
        match sample.judge(promised, self.tolerance) {
            Ok(()) => Ok(summary),
            Err(why) => Err(Error::new(
                ErrorKind::Rejected,
                "check the served versions at",
                redact::url(&self.url),
                format!(
                    "{why}: expected {}; seen {sample}",
                    expected_text(promised, self.tolerance)
                ),
            )),
        }
    }
}

/// `2.0.0 10 %, 1.0.0 90 % (± 10 %)`.
fn expected_text(promised: &BTreeMap<Version, f64>, tolerance: f64) -> String {
    let mut parts: Vec<(&Version, f64)> = promised.iter().map(|(v, s)| (v, *s)).collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = parts
        .iter()
        .map(|(v, s)| format!("{v} {}", percent(*s)))
        .collect();
    format!("{} ± {}", parts.join(", "), percent(tolerance))
}

fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{} %", p.round())
    } else {
        format!("{p:.1} %")
    }
}

/// What a [`ServedCheck`] saw: how many answers carried each version, and how many carried
/// none (the request failed, or the header or field was missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServedSample {
    /// Answers per version, as the answers spelled it.
    pub versions: BTreeMap<String, u32>,
    /// Requests whose answer carried no version.
    pub without_version: u32,
    /// Why the last of those carried none.
    pub last_problem: Option<String>,
}

impl ServedSample {
    /// The number of requests.
    pub fn total(&self) -> u32 {
        self.versions.values().sum::<u32>() + self.without_version
    }

    /// `Err(why)` when an answer carried a version that is not promised or none, or a promised
    /// version's share of the answers is further than `tolerance` from its promised share.
    pub fn judge(&self, promised: &BTreeMap<Version, f64>, tolerance: f64) -> Result<(), String> {
        let total = self.total();
        if total == 0 {
            return Err("no request was sent".to_owned());
        }
        let unexpected: Vec<String> = self
            .versions
            .iter()
            .filter(|(v, _)| !promised.keys().any(|p| p.as_str() == v.as_str()))
            .map(|(v, n)| format!("{v} × {n}"))
            .collect();
        if !unexpected.is_empty() {
            return Err(format!(
                "answers carried a version no target should serve ({})",
                unexpected.join(", ")
            ));
        }
        if self.without_version > 0 {
            return Err(format!(
                "{} of {total} answers carried no version (last: {})",
                self.without_version,
                self.last_problem.as_deref().unwrap_or("unknown")
            ));
        }
        let mut off = Vec::new();
        for (v, want) in promised {
            let seen =
                f64::from(self.versions.get(v.as_str()).copied().unwrap_or(0)) / f64::from(total);
            // A little slack for the binary representation of shares such as 0.1.
            if (seen - want).abs() > tolerance + 1e-9 {
                off.push(format!(
                    "{v} {} instead of {}",
                    percent(seen),
                    percent(*want)
                ));
            }
        }
        if off.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the shares of answers are not the weights' ({})",
                off.join(", ")
            ))
        }
    }
}

impl fmt::Display for ServedSample {
    /// `2.0.0 × 91, 1.0.0 × 9`, most frequent first, then `no version × 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<(&String, u32)> = self.versions.iter().map(|(v, n)| (v, *n)).collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut parts: Vec<String> = parts.iter().map(|(v, n)| format!("{v} × {n}")).collect();
        if self.without_version > 0 {
            parts.push(format!("no version × {}", self.without_version));
        }
        if parts.is_empty() {
            f.write_str("no answers")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The URL as messages show it (credentials and query removed): a serialised check holds no
/// secret.
fn shown_url<S: serde::Serializer>(url: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promised(v: &[(&str, f64)]) -> BTreeMap<Version, f64> {
        v.iter()
            .map(|(v, s)| (Version::new(*v).unwrap(), *s))
            .collect()
    }

    fn sample(v: &[(&str, u32)], none: u32) -> ServedSample {
        ServedSample {
            versions: v.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect(),
            without_version: none,
            last_problem: (none > 0).then(|| "HTTP 502 without header X-Version".to_owned()),
        }
    }

    #[test]
    fn shares_within_the_tolerance_pass_and_outside_fail() {
        let p = promised(&[("2.0.0", 0.1), ("1.0.0", 0.9)]);
        assert_eq!(
            sample(&[("2.0.0", 12), ("1.0.0", 88)], 0).judge(&p, 0.1),
            Ok(())
        );
        assert_eq!(
            sample(&[("2.0.0", 20), ("1.0.0", 80)], 0).judge(&p, 0.1),
            Ok(())
        );
        let e = sample(&[("2.0.0", 30), ("1.0.0", 70)], 0)
            .judge(&p, 0.1)
            .unwrap_err();
        assert!(e.contains("2.0.0 30 % instead of 10 %"), "{e}");
        assert!(e.contains("1.0.0 70 % instead of 90 %"), "{e}");
    }

    #[test]
    fn a_version_no_target_serves_or_no_version_fails() {
        let p = promised(&[("2.0.0", 1.0)]);
        let e = sample(&[("2.0.0", 99), ("1.0.0", 1)], 0)
            .judge(&p, 0.1)
            .unwrap_err();
        assert!(e.contains("no target should serve (1.0.0 × 1)"), "{e}");
        let e = sample(&[("2.0.0", 99)], 1).judge(&p, 0.1).unwrap_err();
        assert!(e.contains("1 of 100 answers carried no version"), "{e}");
        assert!(e.contains("HTTP 502"), "{e}");
    }

    #[test]
    fn the_sample_and_the_promise_read_plainly() {
        let s = sample(&[("1.0.0", 9), ("2.0.0", 91)], 0);
        assert_eq!(s.to_string(), "2.0.0 × 91, 1.0.0 × 9");
        let p = promised(&[("2.0.0", 0.1), ("1.0.0", 0.9)]);
        assert_eq!(expected_text(&p, 0.1), "1.0.0 90 %, 2.0.0 10 % ± 10 %");
    }

    #[test]
    fn problems_name_their_keys() {
        let mut c = ServedCheck::header("ftp://x/", "X Version")
            .with_requests(0)
            .with_tolerance(1.5)
            .with_timeout(Duration::ZERO);
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.path).collect();
        assert_eq!(keys, ["url", "requests", "header", "tolerance", "timeout"]);
        c.json_field = Some("version".into());
        assert!(c.problems().iter().any(|p| p.path == "json_field"));
        assert!(
            ServedCheck::json_field("http://127.0.0.1:8080/health", "version")
                .problems()
                .is_empty()
        );
    }
}
