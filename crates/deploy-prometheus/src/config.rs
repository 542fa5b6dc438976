//! The plan-file sections of the gates: `[[gates]]` with `kind = "promql"`
//! ([`PromQlGateConfig`]) or `kind = "scrape"` ([`ScrapeGateConfig`]), each built by one
//! constructor ([`PromQlGate::from_config`], [`ScrapeGate::from_config`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, ExposeSecret, Result, SecretString, redact};
use serde::Deserialize;

use crate::client::{Auth, PrometheusClient};
use crate::condition::Condition;
use crate::metrics::HttpMetrics;
use crate::promql::PromQlGate;
use crate::scrape::ScrapeGate;

/// The `kind` of a [`PromQlGateConfig`] section in a plan file.
pub const PROMQL_KIND: &str = "promql";

/// The `kind` of a [`ScrapeGateConfig`] section in a plan file.
pub const SCRAPE_KIND: &str = "scrape";

/// A ready-made gate: the usual alert rule of an HTTP service, read from [`HttpMetrics`]'
/// default names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Preset {
    /// `error_rate`: the share of requests answered with a 5xx status must be at most
    /// `max_error_rate` (a gate named `error-rate`).
    ErrorRate,
    /// `p99_latency`: the 99th percentile of the request latency must be at most `max_latency`
    /// (a gate named `p99-latency`).
    P99Latency,
}

impl Preset {
    /// The plan-file spelling.
    fn key(self) -> &'static str {
        match self {
            Self::ErrorRate => "error_rate",
            Self::P99Latency => "p99_latency",
        }
    }
}

/// A `[[gates]]` section with `kind = "promql"`: a [`PromQlGate`] asking Prometheus, either a
/// [`Preset`] or a query of your own. Every key is optional to serde; what a gate needs is
/// checked by [`PromQlGate::from_config`], which reports every problem at once. Unknown keys
/// are refused.
///
/// ```toml
/// [[gates]]
/// kind = "promql"
/// prometheus = "http://prometheus.internal:9090"
/// bearer_token_env = "PROMETHEUS_TOKEN"
/// preset = "error_rate"
/// max_error_rate = 0.01
/// window = "2m"
/// min_traffic = 0.2
/// ```
///
/// Secrets never stand in the plan itself: a bearer token comes from `bearer_token_env` or
/// `bearer_token_file`, a basic-auth password from `basic_auth_password_env` or
/// `basic_auth_password_file`. A password written into the `prometheus` URL is still accepted
/// (and moved into basic authentication, never shown), with a warning.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PromQlGateConfig {
    /// `name`: the name of a `query` gate in reports and events (default `promql`). A preset
    /// names its gate itself (`error-rate`, `p99-latency`), so a preset refuses it.
    pub name: Option<String>,
    /// `prometheus` (required): the base URL of the Prometheus server (`http://host:9090`, or
    /// with a path prefix). Credentials in the URL (`http://user:pass@host`, percent-encoded)
    /// become basic authentication; a password there draws a warning.
    pub prometheus: Option<String>,
    /// `bearer_token_env`: the environment variable holding a bearer token for Prometheus (or
    /// the proxy in front of it), read when the gate is built.
    pub bearer_token_env: Option<String>,
    /// `bearer_token_file`: a file holding the bearer token (surrounding whitespace and the
    /// final newline are not part of it), read when the gate is built; at most 64 KiB.
    pub bearer_token_file: Option<PathBuf>,
    /// `basic_auth_user`: the user name of basic authentication (or give it in the URL).
    pub basic_auth_user: Option<String>,
    /// `basic_auth_password_env`: the environment variable holding the basic-auth password.
    pub basic_auth_password_env: Option<String>,
    /// `basic_auth_password_file`: a file holding the basic-auth password (as
    /// `bearer_token_file`).
    pub basic_auth_password_file: Option<PathBuf>,
    /// `max_answer_size`: the largest answer read from Prometheus, in bytes (`67108864`) or
    /// with a unit (`"64 MiB"`, `"512 KiB"`, `"1 GiB"`); default 64 MiB. A larger answer is an
    /// Error verdict, and is not read further.
    #[serde(deserialize_with = "byte_size::option")]
    pub max_answer_size: Option<u64>,
    /// `preset`: `error_rate` or `p99_latency`; give this or `query`.
    pub preset: Option<Preset>,
    /// `max_error_rate`: the `error_rate` preset's limit, a share (0.01 = 1 %).
    pub max_error_rate: Option<f64>,
    /// `max_latency`: the `p99_latency` preset's limit (`"800ms"`).
    #[serde(with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    /// `query`: a PromQL query template (`{{target}}`, `{{baseline}}`, `{{version}}`,
    /// `{{window}}`); give this or `preset`.
    pub query: Option<String>,
    /// `condition`: what the value of `query` must satisfy (`"< 0.01"`, `"> 0.3"`,
    /// `"0.5..2"`); required with `query`.
    pub condition: Option<Condition>,
    /// `window`: the value of `{{window}}`, the range the presets' rates cover (default `5m`).
    #[serde(with = "humantime_serde")]
    pub window: Option<Duration>,
    /// `min_traffic`: a preset's least traffic, in requests per second, below which the
    /// verdict is Inconclusive (default: anything above 0).
    pub min_traffic: Option<f64>,
    /// `target_label`: the label naming the target in a preset's series (default `target`);
    /// `""` judges every series together.
    pub target_label: Option<String>,
}

impl fmt::Debug for PromQlGateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromQlGateConfig")
            .field("name", &self.name)
            .field("prometheus", &self.prometheus.as_deref().map(redact::url))
            .field("bearer_token_env", &self.bearer_token_env)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("basic_auth_user", &self.basic_auth_user)
            .field("basic_auth_password_env", &self.basic_auth_password_env)
            .field("basic_auth_password_file", &self.basic_auth_password_file)
            .field("max_answer_size", &self.max_answer_size)
            .field("preset", &self.preset)
            .field("max_error_rate", &self.max_error_rate)
            .field("max_latency", &self.max_latency)
            .field("query", &self.query)
            .field("condition", &self.condition)
            .field("window", &self.window)
            .field("min_traffic", &self.min_traffic)
            .field("target_label", &self.target_label)
            .finish()
    }
}

/// A `[[gates]]` section with `kind = "scrape"`: a [`ScrapeGate`] reading each canary's
/// `/metrics` page twice, a window apart, without a Prometheus server. Every key is optional
/// to serde; what a gate needs is checked by [`ScrapeGate::from_config`], which reports every
/// problem at once. Unknown keys are refused.
///
/// ```toml
/// [[gates]]
/// kind = "scrape"
/// preset = "p99_latency"
/// max_latency = "500ms"
/// window = "30s"
/// ```
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ScrapeGateConfig {
    /// `preset` (required): `error_rate` or `p99_latency`.
    pub preset: Option<Preset>,
    /// `max_error_rate`: the `error_rate` preset's limit, a share (0.01 = 1 %).
    pub max_error_rate: Option<f64>,
    /// `max_latency`: the `p99_latency` preset's limit (`"500ms"`).
    #[serde(with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    /// `window`: the time between the two scrapes (default `10s`); one measurement takes it.
    #[serde(with = "humantime_serde")]
    pub window: Option<Duration>,
    /// `min_traffic`: the least traffic between the scrapes, in requests per second, below
    /// which the verdict is Inconclusive (default: anything above 0).
    pub min_traffic: Option<f64>,
    /// `urls`: metrics pages to scrape instead of the canary endpoints.
    pub urls: Vec<String>,
    /// `metrics_path`: the path of the metrics page on each canary endpoint (default
    /// `/metrics`).
    pub metrics_path: Option<String>,
    /// `max_page_size`: the largest `/metrics` page read, in bytes (`16777216`) or with a unit
    /// (`"16 MiB"`, `"512 KiB"`); default 16 MiB. A larger page is an Error verdict, and is
    /// not read further.
    #[serde(deserialize_with = "byte_size::option")]
    pub max_page_size: Option<u64>,
}

impl fmt::Debug for ScrapeGateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact::url(u)).collect();
        f.debug_struct("ScrapeGateConfig")
            .field("preset", &self.preset)
            .field("max_error_rate", &self.max_error_rate)
            .field("max_latency", &self.max_latency)
            .field("window", &self.window)
            .field("min_traffic", &self.min_traffic)
            .field("urls", &urls)
            .field("metrics_path", &self.metrics_path)
            .field("max_page_size", &self.max_page_size)
            .finish()
    }
}

/// Sizes in a plan file: a number of bytes, or a string with a binary unit (`"16 MiB"`).
mod byte_size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    /// `text` as a number of bytes: digits, then optionally `B`, `KiB`, `MiB` or `GiB`.
    pub(super) fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} does not start with a number of bytes"))?;
        let unit = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}: use B, KiB, MiB or GiB"
                ));
            }
        };
        number
            .checked_mul(unit)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    struct Size;

    impl Visitor<'_> for Size {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes (16777216) or with a unit (\"16 MiB\", \"512 KiB\")")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).map_err(E::custom)
        }
    }

    pub(super) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(Size).map(Some)
    }
}

/// A secret given by one of the keys `*_env` and `*_file`, or by neither.
fn read_secret(
    (env_key, env): (&str, Option<&String>),
    (file_key, file): (&str, Option<&PathBuf>),
    problems: &mut Vec<String>,
) -> Option<SecretString> {
    let read = match (env, file) {
        (Some(_), Some(_)) => Err(format!("{env_key}, {file_key}: give one of them, not both")),
        (Some(var), None) => {
            deploy_core::secret::from_env(var).map_err(|why| format!("{env_key}: {why}"))
        }
        (None, Some(path)) => {
            deploy_core::secret::from_file(path).map_err(|why| format!("{file_key}: {why}"))
        }
        (None, None) => return None,
    };
    read.map_err(|p| problems.push(p)).ok()
}

/// How a promql section authenticates, from its keys and its URL's credentials (`url_auth`,
/// already taken out of the URL by the client). `None` with problems when the keys conflict.
fn section_auth(
    c: &PromQlGateConfig,
    url_auth: Option<Auth>,
    problems: &mut Vec<String>,
) -> Option<Auth> {
    let bearer = read_secret(
        ("bearer_token_env", c.bearer_token_env.as_ref()),
        ("bearer_token_file", c.bearer_token_file.as_ref()),
        problems,
    );
    let password = read_secret(
        (
            "basic_auth_password_env",
            c.basic_auth_password_env.as_ref(),
        ),
        (
            "basic_auth_password_file",
            c.basic_auth_password_file.as_ref(),
        ),
        problems,
    );
    let password_key_given =
        c.basic_auth_password_env.is_some() || c.basic_auth_password_file.is_some();
    let (url_user, url_password) = match url_auth {
        Some(Auth::Basic { username, password }) => (Some(username), Some(password)),
        _ => (None, None),
    };
    let url_password = url_password.filter(|p| !p.expose_secret().is_empty());
    if c.basic_auth_user.is_some() && url_user.as_deref().is_some_and(|u| !u.is_empty()) {
        problems.push("basic_auth_user: the prometheus URL names a user already".into());
    }
    if password_key_given && url_password.is_some() {
        problems.push(
            "basic_auth_password_env, basic_auth_password_file: the prometheus URL holds a password already"
                .into(),
        );
    }
    let user = c
        .basic_auth_user
        .clone()
        .or(url_user)
        .filter(|u| !u.is_empty());
    let basic_given = user.is_some() || password_key_given || url_password.is_some();
    let bearer_given = c.bearer_token_env.is_some() || c.bearer_token_file.is_some();
    if basic_given && bearer_given {
        problems.push(
            "bearer_token_env, bearer_token_file: give a bearer token or basic authentication (a user and a password), not both"
                .into(),
        );
        return None;
    }
    if bearer_given {
        return bearer.map(Auth::Bearer);
    }
    if password_key_given && user.is_none() {
        problems.push(
            "basic_auth_user: basic authentication needs a user name (here or in the prometheus URL)"
                .into(),
        );
        return None;
    }
    let user = user?;
    match password.or(url_password) {
        Some(p) => Some(Auth::basic(user, p)),
        // A user without a password, as the URL `http://user@host` says.
        None if !password_key_given => Some(Auth::basic(user, "")),
        None => None,
    }
}

/// A preset's limit, checked against the keys given: the preset's own key is required, the
/// other preset's is refused.
#[derive(Debug, Clone, Copy)]
enum Limit {
    ErrorRate(f64),
    Latency(Duration),
}

fn preset_limit(
    preset: Preset,
    max_error_rate: Option<f64>,
    max_latency: Option<Duration>,
    problems: &mut Vec<String>,
) -> Option<Limit> {
    let (needed, other) = match preset {
        Preset::ErrorRate => ("max_error_rate", max_latency.map(|_| "max_latency")),
        Preset::P99Latency => ("max_latency", max_error_rate.map(|_| "max_error_rate")),
    };
    if let Some(other) = other {
        problems.push(format!(
            "{other}: the {} preset does not use it",
            preset.key()
        ));
    }
    let limit = match preset {
        Preset::ErrorRate => max_error_rate.map(Limit::ErrorRate),
        Preset::P99Latency => max_latency.map(Limit::Latency),
    };
    match limit {
        None => problems.push(format!("{needed}: the {} preset needs it", preset.key())),
        Some(Limit::ErrorRate(x)) if !(0.0..=1.0).contains(&x) => problems.push(format!(
            "max_error_rate: {x} is not a share between 0 and 1"
        )),
        Some(_) => {}
    }
    limit
}

/// The gate name a preset gives.
fn preset_name(preset: Preset) -> &'static str {
    match preset {
        Preset::ErrorRate => "error-rate",
        Preset::P99Latency => "p99-latency",
    }
}

fn config_error(kind: &str, name: &str, problems: &[String]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "configure",
        format!("{kind} gate {name:?}"),
        problems.join("; "),
    )
}

impl PromQlGate {
    /// The gate a `kind = "promql"` plan-file section describes: a preset
    /// ([`error_rate_below`](Self::error_rate_below), [`p99_latency_below`](Self::p99_latency_below))
    /// or a query with its condition, asking the Prometheus at `prometheus`, with the secrets
    /// (a bearer token, or a basic-auth password) read from their `*_env` or `*_file` keys now.
    /// Every problem is reported at once, as an `InvalidInput` error naming each key; no
    /// message shows a secret. A password written in the URL draws a warning (`tracing`).
    pub fn from_config(config: PromQlGateConfig) -> Result<Self> {
        let c = config;
        let mut problems = Vec::new();
        let name = match (c.preset, &c.name) {
            (Some(p), _) => preset_name(p).to_owned(),
            (None, Some(n)) => n.clone(),
            (None, None) => PROMQL_KIND.to_owned(),
        };
        match (c.preset, &c.query) {
            (Some(_), Some(_)) => problems.push("preset, query: give one of them, not both".into()),
            (None, None) => problems.push("preset, query: give one of them".into()),
            _ => {}
        }
        let limit = match c.preset {
            Some(preset) => {
                if c.name.is_some() {
                    problems.push(
                        "name: a preset names its gate (error-rate, p99-latency); name is for a query"
                            .into(),
                    );
                }
                if c.condition.is_some() {
                    problems.push(format!(
                        "condition: the {} preset has its own; its limit is {}",
                        preset.key(),
                        match preset {
                            Preset::ErrorRate => "max_error_rate",
                            Preset::P99Latency => "max_latency",
                        }
                    ));
                }
                preset_limit(preset, c.max_error_rate, c.max_latency, &mut problems)
            }
            None => {
                if c.query.is_some() && c.condition.is_none() {
                    problems.push("condition: a query needs one".into());
                }
                for (key, given) in [
                    ("max_error_rate", c.max_error_rate.is_some()),
                    ("max_latency", c.max_latency.is_some()),
                    ("min_traffic", c.min_traffic.is_some()),
                    ("target_label", c.target_label.is_some()),
                ] {
                    if given && c.query.is_some() {
                        problems.push(format!("{key}: only a preset uses it, not a query"));
                    }
                }
                None
            }
        };
        let client = match &c.prometheus {
            None => {
                problems.push("prometheus: missing (the Prometheus server's URL)".into());
                None
            }
            Some(url) => match PrometheusClient::new(url) {
                Ok(client) => {
                    if client
                        .auth()
                        .is_some_and(|a| matches!(a, Auth::Basic { password, .. } if !password.expose_secret().is_empty()))
                    {
                        tracing::warn!(
                            prometheus = %redact::url(url),
                            "the prometheus URL of promql gate {name:?} holds a password, so the plan file holds a secret; \
                             use basic_auth_password_env or basic_auth_password_file"
                        );
                    }
                    Some(client)
                }
                Err(e) => {
                    problems.push(match std::error::Error::source(&e) {
                        Some(source) => format!("prometheus: {}: {source}", e.message()),
                        None => format!("prometheus: {}", e.message()),
                    });
                    None
                }
            },
        };
        let url_auth = client.as_ref().and_then(|c| c.auth().cloned());
        let auth = section_auth(&c, url_auth, &mut problems);
        if c.max_answer_size == Some(0) {
            problems.push("max_answer_size: 0 bytes lets no answer through".into());
        }
        let client = client.map(|mut client| {
            if let Some(auth) = auth {
                client = client.with_auth(auth);
            }
            if let Some(limit) = c.max_answer_size {
                client = client.with_max_answer_size(limit);
            }
            client
        });
        let metrics = match c.target_label.as_deref() {
            Some("") => HttpMetrics::new().without_target_label(),
            Some(label) => HttpMetrics::new().target_label(label),
            None => HttpMetrics::new(),
        };
        let builder = match (client, limit, c.query, c.condition) {
            (Some(client), Some(Limit::ErrorRate(max)), None, _) => {
                Some(PromQlGate::error_rate_below(client, max, &metrics))
            }
            (Some(client), Some(Limit::Latency(max)), None, _) => {
                Some(PromQlGate::p99_latency_below(client, max, &metrics))
            }
            (Some(client), None, Some(query), Some(condition)) if c.preset.is_none() => Some(
                PromQlGate::builder(name.clone(), client)
                    .query(query)
                    .condition_is(condition),
            ),
            _ => None,
        };
        if let Some(mut b) = builder {
            if let Some(w) = c.window {
                b = b.window(w);
            }
            if let Some(m) = c.min_traffic {
                b = b.min_traffic(m);
            }
            match b.build() {
                Ok(gate) if problems.is_empty() => return Ok(gate),
                Ok(_) => {}
                Err(e) => problems.push(e.message().to_owned()),
            }
        }
        Err(config_error(PROMQL_KIND, &name, &problems))
    }
}

impl ScrapeGate {
    /// The gate a `kind = "scrape"` plan-file section describes: a preset
    /// ([`error_rate_below`](Self::error_rate_below), [`p99_latency_below`](Self::p99_latency_below))
    /// scraping `urls`, or each canary endpoint's `metrics_path`. Every problem is reported at
    /// once, as an `InvalidInput` error naming each key.
    pub fn from_config(config: ScrapeGateConfig) -> Result<Self> {
        let c = config;
        let mut problems = Vec::new();
        let limit = match c.preset {
            None => {
                problems
                    .push("preset: a scrape gate needs one (error_rate or p99_latency)".to_owned());
                None
            }
            Some(preset) => preset_limit(preset, c.max_error_rate, c.max_latency, &mut problems),
        };
        let name = c.preset.map_or(SCRAPE_KIND, preset_name);
        let metrics = HttpMetrics::new();
        let builder = match limit {
            Some(Limit::ErrorRate(max)) => match ScrapeGate::error_rate_below(max, &metrics) {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Some(Limit::Latency(max)) => Some(ScrapeGate::p99_latency_below(max, &metrics)),
            None => None,
        };
        if let Some(mut b) = builder {
            if let Some(w) = c.window {
                b = b.window(w);
            }
            if let Some(m) = c.min_traffic {
                b = b.min_traffic(m);
            }
            for u in c.urls {
                b = b.url(u);
            }
            if let Some(p) = c.metrics_path {
                b = b.metrics_path(p);
            }
            if let Some(limit) = c.max_page_size {
                b = b.max_page_size(limit);
            }
            match b.build() {
                Ok(gate) if problems.is_empty() => return Ok(gate),
                Ok(_) => {}
                Err(e) => problems.push(e.message().to_owned()),
            }
        }
        Err(config_error(SCRAPE_KIND, name, &problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::{GateContext, MetricGate, TargetId, Version};
    use serde::de::DeserializeOwned;

    /// A plan-file section as the facade hands it over: parsed, `kind` checked and removed.
    fn section<T: DeserializeOwned>(kind: &str, text: &str) -> std::result::Result<T, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        assert_eq!(
            table
                .remove("kind")
                .and_then(|k| k.as_str().map(str::to_owned))
                .as_deref(),
            Some(kind)
        );
        table.try_into().map_err(|e: toml::de::Error| e.to_string())
    }

    fn promql(text: &str) -> Result<PromQlGate> {
        PromQlGate::from_config(section(PROMQL_KIND, text).unwrap())
    }

    fn scrape(text: &str) -> Result<ScrapeGate> {
        ScrapeGate::from_config(section(SCRAPE_KIND, text).unwrap())
    }

    fn ctx() -> GateContext {
        GateContext::new(
            Version::new("2.0.0").unwrap(),
            vec![TargetId::new("green").unwrap()],
            vec![TargetId::new("blue").unwrap()],
        )
    }

    #[test]
    fn the_shipped_promql_sections_build_their_gates() {
        // examples/plans/blue-green.toml
        let g = promql(
            r#"kind = "promql"
prometheus = "http://127.0.0.1:9090"
preset = "error_rate"
max_error_rate = 0.01
window = "1m"
min_traffic = 0.5"#,
        )
        .unwrap();
        assert_eq!(g.name(), "error-rate");
        assert_eq!(g.condition(), Condition::AtMost(0.01));
        assert_eq!(g.lookback(), Duration::from_secs(60));
        assert!(
            g.render(&ctx()).contains(r#"target=~"green"}[1m]"#),
            "{}",
            g.render(&ctx())
        );
        let g = promql(
            r#"kind = "promql"
prometheus = "http://127.0.0.1:9090"
preset = "p99_latency"
max_latency = "800ms"
window = "1m""#,
        )
        .unwrap();
        assert_eq!(g.name(), "p99-latency");
        assert_eq!(g.condition(), Condition::AtMost(0.8));
        // examples/plans/canary.toml, with a variable every test process has.
        let g = promql(
            r#"kind = "promql"
prometheus = "http://prometheus.internal:9090"
bearer_token_env = "CARGO_PKG_NAME"
preset = "p99_latency"
max_latency = "800ms"
window = "2m"
target_label = "target""#,
        )
        .unwrap();
        assert_eq!(
            g.client().auth(),
            Some(&Auth::Bearer("deploy-prometheus".into()))
        );
        let g = promql(
            r#"kind = "promql"
name = "checkout conversions"
prometheus = "http://prometheus.internal:9090"
bearer_token_env = "CARGO_PKG_NAME"
query = 'sum(rate(checkout_completed_total{target="{{target}}"}[5m])) / sum(rate(checkout_started_total{target="{{target}}"}[5m]))'
condition = "> 0.3""#,
        )
        .unwrap();
        assert_eq!(g.name(), "checkout conversions");
        assert_eq!(g.condition(), Condition::Above(0.3));
        assert_eq!(g.lookback(), Duration::from_secs(300));
        assert!(
            g.render(&ctx())
                .starts_with(r#"sum(rate(checkout_completed_total{target="green"}[5m]))"#)
        );
    }

    #[test]
    fn target_label_selects_the_series_of_a_preset() {
        let g = promql(
            "kind = \"promql\"\nprometheus = \"http://127.0.0.1:9090\"\npreset = \"error_rate\"\n\
             max_error_rate = 0.02\ntarget_label = \"\"",
        )
        .unwrap();
        assert!(!g.render(&ctx()).contains("green"), "{}", g.render(&ctx()));
        let g = promql(
            "kind = \"promql\"\nprometheus = \"http://127.0.0.1:9090\"\npreset = \"error_rate\"\n\
             max_error_rate = 0.02\ntarget_label = \"slot\"",
        )
        .unwrap();
        assert!(
            g.render(&ctx()).contains(r#"slot=~"green""#),
            "{}",
            g.render(&ctx())
        );
    }

    #[test]
    fn the_shipped_scrape_sections_build_their_gates() {
        // examples/plans/rolling.toml
        let g = scrape(
            "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"30s\"\nmin_traffic = 1",
        )
        .unwrap();
        assert_eq!(g.name(), "error-rate");
        assert_eq!(g.evaluation_time(), Duration::from_secs(30));
        let g = scrape(
            "kind = \"scrape\"\npreset = \"p99_latency\"\nmax_latency = \"500ms\"\nwindow = \"30s\"",
        )
        .unwrap();
        assert_eq!(g.name(), "p99-latency");
        let mut c = ctx();
        c.canary_endpoints = vec![deploy_core::Endpoint::http("10.0.0.7", 8080)];
        assert_eq!(g.urls(&c), ["http://10.0.0.7:8080/metrics"]);
        let g = scrape(
            "kind = \"scrape\"\npreset = \"p99_latency\"\nmax_latency = \"2s\"\n\
             urls = [\"http://10.0.0.8:9100/metrics\"]\nmetrics_path = \"/prom\"",
        )
        .unwrap();
        assert_eq!(g.urls(&c), ["http://10.0.0.8:9100/metrics"]);
    }

    #[test]
    fn a_key_the_kind_does_not_use_is_unknown() {
        for key in [
            "name = \"errors\"",
            "target_label = \"target\"",
            "prometheus = \"http://127.0.0.1:9090\"",
            "query = \"up\"",
            "condition = \"< 1\"",
            "bearer_token_env = \"T\"",
            "bearer_token_file = \"/t\"",
            "basic_auth_password_env = \"T\"",
            "max_answer_size = 1",
            "kind = \"scrape\"",
        ] {
            let text =
                format!("kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\n{key}");
            let mut table: toml::Table = match toml::from_str(&text) {
                Ok(t) => t,
                // `kind` twice is no TOML at all.
                Err(_) => continue,
            };
            table.remove("kind");
            let e = table
                .try_into::<ScrapeGateConfig>()
                .unwrap_err()
                .to_string();
            let name = key.split(' ').next().unwrap();
            assert!(e.contains(&format!("unknown field `{name}`")), "{key}: {e}");
        }
        for key in [
            "urls = []",
            "metrics_path = \"/metrics\"",
            "maximum = 1",
            "max_page_size = 1",
        ] {
            let text = format!(
                "kind = \"promql\"\nprometheus = \"http://127.0.0.1:9090\"\npreset = \"error_rate\"\n\
                 max_error_rate = 0.01\n{key}"
            );
            let e = section::<PromQlGateConfig>(PROMQL_KIND, &text).unwrap_err();
            let name = key.split(' ').next().unwrap();
            assert!(e.contains(&format!("unknown field `{name}`")), "{key}: {e}");
        }
        // Typed values are checked while reading: a condition, a duration, a preset.
        for (bad, said) in [
            ("condition = \"== 3\"", "expected `< x`"),
            ("window = \"5 parsecs\"", "window"),
            ("preset = \"p50\"", "unknown variant `p50`"),
        ] {
            let text =
                format!("kind = \"promql\"\nprometheus = \"http://h:9090\"\nquery = \"up\"\n{bad}");
            let e = section::<PromQlGateConfig>(PROMQL_KIND, &text).unwrap_err();
            assert!(e.contains(said), "{bad}: {e}");
        }
    }

    #[test]
    fn every_problem_of_a_promql_section_is_reported_at_once_by_its_key() {
        let e = promql(
            "kind = \"promql\"\nname = \"errors\"\npreset = \"error_rate\"\nquery = \"up\"\n\
             max_latency = \"1s\"\nbearer_token_env = \"DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE\"",
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let text = e.to_string();
        assert!(
            text.starts_with("configure promql gate \"error-rate\": "),
            "{text}"
        );
        for part in [
            "preset, query: give one of them, not both",
            "name: a preset names its gate",
            "max_latency: the error_rate preset does not use it",
            "max_error_rate: the error_rate preset needs it",
            "prometheus: missing",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let e = promql(
            "kind = \"promql\"\nprometheus = \"ftp://u:pw@h\"\nquery = \"up\"\nmin_traffic = 1\n\
             target_label = \"slot\"",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "condition: a query needs one",
            "min_traffic: only a preset uses it",
            "target_label: only a preset uses it",
            "prometheus: scheme \"ftp\" is not http or https",
        ] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        assert!(!e.contains("pw"), "{e}");
        let e = promql(
            "kind = \"promql\"\nprometheus = \"http://h:9090\"\npreset = \"p99_latency\"\n\
             max_latency = \"2s\"\nbearer_token_env = \"DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bearer_token_env: environment variable DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE is not set"),
            "{e}"
        );
        // What the builder finds is reported too: an unknown template variable, a zero window.
        let e = promql(
            "kind = \"promql\"\nprometheus = \"http://h:9090\"\nquery = \"up{a=\\\"{{nope}}\\\"}\"\n\
             condition = \"< 1\"\nwindow = \"0s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown variable") && e.contains("window is 0"),
            "{e}"
        );
        assert!(
            promql("kind = \"promql\"\nprometheus = \"http://h:9090\"")
                .unwrap_err()
                .to_string()
                .contains("preset, query: give one of them")
        );
    }

    #[test]
    fn every_problem_of_a_scrape_section_is_reported_at_once_by_its_key() {
        let e = scrape("kind = \"scrape\"\nmax_error_rate = 0.01").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("preset: a scrape gate needs one"),
            "{e}"
        );
        let e = scrape(
            "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 1.5\nmax_latency = \"1s\"\n\
             urls = [\"ftp://x/metrics\"]\nmetrics_path = \"metrics\"",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "max_error_rate: 1.5 is not a share between 0 and 1",
            "max_latency: the error_rate preset does not use it",
            "ftp://x/metrics is not an http(s) URL",
            "metrics path \"metrics\" does not start with '/'",
        ] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        let e = scrape("kind = \"scrape\"\npreset = \"p99_latency\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_latency: the p99_latency preset needs it"),
            "{e}"
        );
    }

    #[test]
    fn sizes_in_a_section_are_bytes_or_a_binary_unit() {
        for (text, bytes) in [
            ("4096", 4096),
            ("\"2 MiB\"", 2 << 20),
            ("\"512KiB\"", 512 << 10),
            ("\"1 GiB\"", 1 << 30),
            ("\"100 B\"", 100),
        ] {
            let g = promql(&format!(
                "kind = \"promql\"\nprometheus = \"http://h:9090\"\nquery = \"up\"\n\
                 condition = \"< 1\"\nmax_answer_size = {text}"
            ))
            .unwrap();
            assert_eq!(g.client().max_answer_size(), bytes, "{text}");
        }
        let g = promql(
            "kind = \"promql\"\nprometheus = \"http://h:9090\"\nquery = \"up\"\ncondition = \"< 1\"",
        )
        .unwrap();
        assert_eq!(g.client().max_answer_size(), 64 << 20);
        let g = scrape(
            "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nmax_page_size = \"1 KiB\"",
        )
        .unwrap();
        assert!(format!("{g:?}").contains("max_page_size: 1024"), "{g:?}");
        for (bad, said) in [
            ("\"16 MB\"", "unknown unit \"MB\""),
            ("-1", "cannot be negative"),
            ("\"lots\"", "does not start with a number"),
            ("\"99999999999 GiB\"", "too large"),
            ("1.5", "a size in bytes"),
        ] {
            let text = format!(
                "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nmax_page_size = {bad}"
            );
            let e = section::<ScrapeGateConfig>(SCRAPE_KIND, &text).unwrap_err();
            assert!(
                e.contains(said) && e.contains("max_page_size"),
                "{bad}: {e}"
            );
        }
        let e = scrape(
            "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nmax_page_size = 0",
        )
        .unwrap_err();
        assert!(e.to_string().contains("page size limit is 0"), "{e}");
        let e = promql(
            "kind = \"promql\"\nprometheus = \"http://h:9090\"\nquery = \"up\"\ncondition = \"< 1\"\n\
             max_answer_size = 0",
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_answer_size: 0 bytes"), "{e}");
    }

    /// A promql section asking `http://h:9090` (or `url`) with `keys` added.
    fn promql_with(url: &str, keys: &str) -> Result<PromQlGate> {
        promql(&format!(
            "kind = \"promql\"\nprometheus = \"{url}\"\nquery = \"up\"\ncondition = \"< 1\"\n{keys}"
        ))
    }

    fn toml_path(p: &std::path::Path) -> String {
        format!("{:?}", p.display().to_string())
    }

    /// Write a secret file readable by its owner only, as secret files must be.
    fn write_secret(p: &std::path::Path, content: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, content).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn secrets_come_from_an_environment_variable_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        write_secret(&token, "tok-Zq9CANARY\n");
        let g = promql_with(
            "http://h:9090",
            &format!("bearer_token_file = {}", toml_path(&token)),
        )
        .unwrap();
        assert_eq!(g.client().auth(), Some(&Auth::bearer("tok-Zq9CANARY")));
        assert!(!format!("{g:?}").contains("Zq9CANARY"), "{g:?}");

        let password = dir.path().join("password");
        write_secret(&password, "pw-Zq9CANARY");
        let g = promql_with(
            "http://h:9090",
            &format!(
                "basic_auth_user = \"alice\"\nbasic_auth_password_file = {}",
                toml_path(&password)
            ),
        )
        .unwrap();
        assert_eq!(
            g.client().auth(),
            Some(&Auth::basic("alice", "pw-Zq9CANARY"))
        );
        // The user may be in the URL, the password from the environment.
        let g = promql_with(
            "http://bob@h:9090",
            "basic_auth_password_env = \"CARGO_PKG_NAME\"",
        )
        .unwrap();
        assert_eq!(
            g.client().auth(),
            Some(&Auth::basic("bob", "deploy-prometheus"))
        );
        assert_eq!(g.client().base_url(), "http://h:9090/");
        // A password written in the URL still works (with a warning).
        let g = promql_with("http://bob:pw-Zq9CANARY@h:9090", "").unwrap();
        assert_eq!(g.client().auth(), Some(&Auth::basic("bob", "pw-Zq9CANARY")));
    }

    #[test]
    fn every_problem_of_the_secret_keys_is_named_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        write_secret(&big, "Zq9CANARY".repeat(10_000));
        let empty = dir.path().join("empty");
        write_secret(&empty, "\n");
        let shared = dir.path().join("shared");
        std::fs::write(&shared, "tok-Zq9CANARY").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let binary = dir.path().join("binary");
        write_secret(&binary, b"Zq9CANARY\xff");
        let missing = dir.path().join("missing");
        let token = dir.path().join("token");
        write_secret(&token, "tok-Zq9CANARY");
        for (url, keys, said) in [
            (
                "http://h:9090",
                format!("bearer_token_file = {}", toml_path(&big)),
                format!("bearer_token_file: {}: larger than the limit of 64 KiB for a secret file", big.display()),
            ),
            (
                "http://h:9090",
                format!("bearer_token_file = {}", toml_path(&empty)),
                format!("bearer_token_file: {}: it is empty", empty.display()),
            ),
            (
                "http://h:9090",
                format!("basic_auth_user = \"a\"\nbasic_auth_password_file = {}", toml_path(&binary)),
                format!("basic_auth_password_file: {}: it is not UTF-8", binary.display()),
            ),
            (
                "http://h:9090",
                format!("bearer_token_file = {}", toml_path(&shared)),
                format!("bearer_token_file: {}: its mode 0644 lets group or others read it", shared.display()),
            ),
            (
                "http://h:9090",
                format!("bearer_token_file = {}", toml_path(&missing)),
                format!("bearer_token_file: {}: cannot open it", missing.display()),
            ),
            (
                "http://h:9090",
                format!(
                    "bearer_token_file = {}\nbearer_token_env = \"CARGO_PKG_NAME\"",
                    toml_path(&token)
                ),
                "bearer_token_env, bearer_token_file: give one of them, not both".to_owned(),
            ),
            (
                "http://alice:Zq9CANARY@h:9090",
                "bearer_token_env = \"CARGO_PKG_NAME\"".to_owned(),
                "give a bearer token or basic authentication".to_owned(),
            ),
            (
                "http://h:9090",
                "basic_auth_user = \"a\"\nbearer_token_env = \"CARGO_PKG_NAME\"".to_owned(),
                "give a bearer token or basic authentication".to_owned(),
            ),
            (
                "http://alice:Zq9CANARY@h:9090",
                "basic_auth_password_env = \"CARGO_PKG_NAME\"".to_owned(),
                "the prometheus URL holds a password already".to_owned(),
            ),
            (
                "http://alice@h:9090",
                "basic_auth_user = \"bob\"".to_owned(),
                "basic_auth_user: the prometheus URL names a user already".to_owned(),
            ),
            (
                "http://h:9090",
                format!("basic_auth_password_file = {}", toml_path(&token)),
                "basic_auth_user: basic authentication needs a user name".to_owned(),
            ),
            (
                "http://h:9090",
                "basic_auth_user = \"a\"\nbasic_auth_password_env = \"DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE\"".to_owned(),
                "basic_auth_password_env: environment variable DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE is not set".to_owned(),
            ),
        ] {
            let e = promql_with(url, &keys).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let text = format!("{e} {e:?}");
            assert!(text.contains(&said), "{said:?} missing from {text}");
            assert!(!text.contains("Zq9CANARY"), "{text}");
        }
    }

    #[test]
    fn debug_hides_credentials_in_urls() {
        let c: PromQlGateConfig = section(
            PROMQL_KIND,
            "kind = \"promql\"\nprometheus = \"http://alice:s3cret@h:9090\"\npreset = \"error_rate\"",
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
        let c: ScrapeGateConfig = section(
            SCRAPE_KIND,
            "kind = \"scrape\"\nurls = [\"http://h:9100/metrics?token=abc\"]",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("abc"), "{c:?}");
    }
}
