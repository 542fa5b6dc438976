//! The plan-file sections of the gates: `[[gates]]` with `kind = "promql"`
//! ([`PromQlGateConfig`]) or `kind = "scrape"` ([`ScrapeGateConfig`]), each built by one
//! constructor ([`PromQlGate::from_config`], [`ScrapeGate::from_config`]).

use std::fmt;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, Result, redact};
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
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PromQlGateConfig {
    /// `name`: the name of a `query` gate in reports and events (default `promql`). A preset
    /// names its gate itself (`error-rate`, `p99-latency`), so a preset refuses it.
    pub name: Option<String>,
    /// `prometheus` (required): the base URL of the Prometheus server (`http://host:9090`, or
    /// with a path prefix). Credentials in the URL (`http://user:pass@host`) become basic
    /// authentication.
    pub prometheus: Option<String>,
    /// `bearer_token_env`: the environment variable holding a bearer token for Prometheus (or
    /// the proxy in front of it), read when the gate is built.
    pub bearer_token_env: Option<String>,
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
            .finish()
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
    /// or a query with its condition, asking the Prometheus at `prometheus`, with the bearer
    /// token read from `bearer_token_env` now. Every problem is reported at once, as an
    /// `InvalidInput` error naming each key.
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
                Ok(client) => Some(client),
                Err(e) => {
                    problems.push(match std::error::Error::source(&e) {
                        Some(source) => format!("prometheus: {}: {source}", e.message()),
                        None => format!("prometheus: {}", e.message()),
                    });
                    None
                }
            },
        };
        let client = match (client, &c.bearer_token_env) {
            (Some(client), Some(var)) => match std::env::var(var) {
                Ok(token) => Some(client.with_auth(Auth::Bearer(token))),
                Err(std::env::VarError::NotPresent) => {
                    problems.push(format!(
                        "bearer_token_env: the environment variable {var} is not set"
                    ));
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    problems.push(format!(
                        "bearer_token_env: the environment variable {var} is not UTF-8"
                    ));
                    None
                }
            },
            (client, _) => client,
        };
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
        for key in ["urls = []", "metrics_path = \"/metrics\"", "maximum = 1"] {
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
            e.contains("bearer_token_env: the environment variable DEPLOY_PROMETHEUS_TEST_NO_SUCH_VARIABLE is not set"),
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
