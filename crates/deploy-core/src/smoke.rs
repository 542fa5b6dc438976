//! Smoke checks: the post-deploy checklist (front page loads, login works, creating a record
//! works, health says ok) as HTTP requests with expected status and body fragments, run as a
//! [`MetricGate`] against the targets on the new release — before they take full traffic
//! (a pre-switch analysis, a canary step) and during the bake.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Endpoint, Verdict, VerdictKind};
use crate::traits::{GateContext, MetricGate};

/// One HTTP check.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SmokeCheck {
    /// A name for reports ("login works").
    pub name: String,
    /// `GET`, `POST`, ...
    #[serde(default = "default_method")]
    pub method: String,
    /// Path on the target (`/login`).
    pub path: String,
    /// Request headers (values are never printed).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default)]
    pub body: Option<String>,
    /// Lowest accepted status.
    #[serde(default = "default_min")]
    pub status_min: u16,
    /// Highest accepted status.
    #[serde(default = "default_max")]
    pub status_max: u16,
    /// Fragments the body must contain.
    #[serde(default)]
    pub body_contains: Vec<String>,
}

fn default_method() -> String {
    "GET".to_owned()
}
fn default_min() -> u16 {
    200
}
fn default_max() -> u16 {
    299
}

impl fmt::Debug for SmokeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("SmokeCheck")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("body_bytes", &self.body.as_ref().map(String::len))
            .field("status", &(self.status_min..=self.status_max))
            .field("body_contains", &self.body_contains)
            .finish()
    }
}

impl SmokeCheck {
    /// `GET path` expecting a 2xx.
    pub fn get(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            method: default_method(),
            path: path.into(),
            headers: BTreeMap::new(),
            body: None,
            status_min: 200,
            status_max: 299,
            body_contains: Vec::new(),
        }
    }

    /// `POST path` with `body`, expecting a 2xx.
    pub fn post(name: impl Into<String>, path: impl Into<String>, body: impl Into<String>) -> Self {
        let mut c = Self::get(name, path);
        c.method = "POST".to_owned();
        c.body = Some(body.into());
        c
    }

    /// Expect a status in `range`.
    pub fn expect_status(mut self, range: RangeInclusive<u16>) -> Self {
        self.status_min = *range.start();
        self.status_max = *range.end();
        self
    }

    /// Expect the body to contain `fragment`.
    pub fn expect_body(mut self, fragment: impl Into<String>) -> Self {
        self.body_contains.push(fragment.into());
        self
    }

    /// Send a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// A [`MetricGate`] that runs every [`SmokeCheck`] against every canary endpoint: Pass when all
/// pass (value: the number of checks run), Fail otherwise (value: the number that failed, reason:
/// which and why).
#[derive(Debug, Clone)]
pub struct SmokeGate {
    name: String,
    checks: Vec<SmokeCheck>,
    client: reqwest::Client,
    timeout: Duration,
}

impl SmokeGate {
    /// A gate named `name` running `checks`, each with a 10 s time limit.
    pub fn new(name: impl Into<String>, checks: Vec<SmokeCheck>) -> Result<Self> {
        let name = name.into();
        let mut problems = Vec::new();
        if checks.is_empty() {
            problems.push("no checks".to_owned());
        }
        for c in &checks {
            if !c.path.starts_with('/') {
                problems.push(format!(
                    "check {:?}: path {:?} must start with '/'",
                    c.name, c.path
                ));
            }
            if reqwest::Method::from_bytes(c.method.as_bytes()).is_err() {
                problems.push(format!("check {:?}: bad method {:?}", c.name, c.method));
            }
            if c.status_min > c.status_max {
                problems.push(format!(
                    "check {:?}: status range {}..={} is empty",
                    c.name, c.status_min, c.status_max
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build smoke gate",
                name,
                problems.join("; "),
            ));
        }
        let client = crate::http::client(None, "build smoke gate", &name)?;
        Ok(Self {
            name,
            checks,
            client,
            timeout: Duration::from_secs(10),
        })
    }

    /// Use this time limit per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run one check against one endpoint; `Err(reason)` when it fails.
    async fn check(&self, endpoint: &Endpoint, c: &SmokeCheck) -> std::result::Result<(), String> {
        let url = endpoint.url(&c.path);
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.client.request(method, &url).timeout(self.timeout);
        for (n, v) in &c.headers {
            req = req.header(n, v);
        }
        if let Some(b) = &c.body {
            req = req.body(b.clone());
        }
        let t = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{} {url}: {}", c.method, e.without_url()))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(c.status_min..=c.status_max).contains(&status) {
            return Err(format!(
                "{} {url}: HTTP {status}, expected {}-{}",
                c.method, c.status_min, c.status_max
            ));
        }
        for frag in &c.body_contains {
            if !body.contains(frag.as_str()) {
                return Err(format!(
                    "{} {url}: HTTP {status} but the body lacks {frag:?}",
                    c.method
                ));
            }
        }
        tracing::debug!(target: "deploy", "smoke {}: {} {url}: HTTP {status} in {:?}", c.name, c.method, t.elapsed());
        Ok(())
    }
}

#[async_trait]
impl MetricGate for SmokeGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let source = format!(
            "smoke checks: {}",
            self.checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let condition = "every check passes on every new target".to_owned();
        if ctx.canary_endpoints.is_empty() {
            return Ok(Verdict::no_data(condition, source));
        }
        let mut failures = Vec::new();
        let mut runs = 0u32;
        for endpoint in &ctx.canary_endpoints {
            for c in &self.checks {
                runs += 1;
                if let Err(reason) = self.check(endpoint, c).await {
                    failures.push(format!("{}: {reason}", c.name));
                }
            }
        }
        Ok(if failures.is_empty() {
            Verdict::new(
                VerdictKind::Pass,
                Some(f64::from(runs)),
                condition,
                source,
                format!("{runs} checks passed"),
            )
        } else {
            let n = failures.len();
            Verdict::new(
                VerdictKind::Fail,
                Some(n as f64),
                condition,
                source,
                format!("{n} of {runs} failed: {}", failures.join("; ")),
            )
        })
    }
}
