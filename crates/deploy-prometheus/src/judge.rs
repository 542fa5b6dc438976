//! [`Judge`]: baseline versus canary, compared with a Mann-Whitney U test, as Kayenta does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::{
    Error, ErrorKind, GateContext, MetricGate, Result, TargetId, Verdict, VerdictKind,
};

use crate::Condition;
use crate::client::PrometheusClient;
use crate::promql::{error_verdict, variables};
use crate::scrape::{ScrapeMeasure, Scraper};
use crate::stats::{Alternative, mann_whitney};
use crate::template::{Template, query_lookback};

/// Which change of the canary against the baseline is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Direction {
    /// Higher is worse (latency, errors): fail when the canary is significantly higher.
    #[default]
    Increase,
    /// Lower is worse (throughput, success rate): fail when the canary is significantly lower.
    Decrease,
    /// Any significant change fails.
    Either,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Increase => "increase",
            Self::Decrease => "decrease",
            Self::Either => "either",
        })
    }
}

#[derive(Debug, Clone)]
enum Source {
    Prometheus {
        client: PrometheusClient,
        query: Template,
        lookback: Duration,
        step: Duration,
        window: Duration,
        vars: BTreeMap<String, String>,
    },
    Scrape {
        measure: ScrapeMeasure,
        samples: usize,
        interval: Duration,
        metrics_path: String,
        scraper: Scraper,
    },
}

/// A baseline-versus-canary judge, like Spinnaker Kayenta's: takes the same metric for the
/// baseline targets and for the canary over the analysis window — points of a PromQL
/// `query_range` rendered once per group, or values between repeated scrapes — and compares
/// the two samples with a Mann-Whitney U test (normal approximation with tie and continuity
/// corrections).
///
/// - **Fail** when the difference in the regressing [`Direction`] is significant at the
///   configured confidence (default 0.98, Kayenta's) *and* the effect size — the ratio of the
///   canary's mean to the baseline's — is at least the minimum effect (default 10 %).
/// - **Pass** otherwise.
/// - **Inconclusive** when either group has fewer than the minimum samples (default 10), or no
///   data at all (`no_data`), or the context names no baseline.
/// - **Error** when the metrics cannot be read.
///
/// The verdict's value is the effect size (canary mean / baseline mean); its reason gives U, z,
/// the p-value, the sample sizes and means.
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_prometheus::{Direction, Judge, PrometheusClient};
/// let client = PrometheusClient::new("http://127.0.0.1:9090")?;
/// let judge = Judge::prometheus(
///     "latency-vs-baseline",
///     client,
///     r#"sum(rate(http_request_duration_seconds_sum{target=~"{{target}}"}[1m]))
///        / sum(rate(http_request_duration_seconds_count{target=~"{{target}}"}[1m]))"#,
/// )
/// .lookback(Duration::from_secs(600), Duration::from_secs(10))
/// .direction(Direction::Increase)
/// .build()?;
/// # let _ = judge; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Judge {
    name: String,
    source: Source,
    direction: Direction,
    confidence: f64,
    min_effect: f64,
    min_samples: usize,
    /// The largest range of the rendered query (Prometheus judges), computed when built.
    query_lookback: Duration,
}

/// Builds a [`Judge`].
#[derive(Debug, Clone)]
#[must_use]
pub struct JudgeBuilder {
    name: String,
    query: Option<String>,
    client: Option<PrometheusClient>,
    measure: Option<ScrapeMeasure>,
    lookback: Duration,
    step: Duration,
    window: Duration,
    vars: BTreeMap<String, String>,
    samples: usize,
    interval: Duration,
    metrics_path: String,
    timeout: Duration,
    direction: Direction,
    confidence: f64,
    min_effect: f64,
    min_samples: usize,
}

impl Judge {
    /// A judge over Prometheus: `query` is a template whose `{{target}}` is rendered once with
    /// the canary ids and once with the baseline ids; every point of its range over the
    /// lookback is a sample.
    pub fn prometheus(
        name: impl Into<String>,
        client: PrometheusClient,
        query: impl Into<String>,
    ) -> JudgeBuilder {
        let mut b = JudgeBuilder::new(name.into());
        b.client = Some(client);
        b.query = Some(query.into());
        b
    }

    /// A judge without Prometheus: scrapes the canary and the baseline endpoints
    /// [`samples`](JudgeBuilder::samples) + 1 times, [`interval`](JudgeBuilder::interval) apart;
    /// each value of `measure` between two consecutive scrapes is a sample.
    pub fn scrape(name: impl Into<String>, measure: ScrapeMeasure) -> JudgeBuilder {
        let mut b = JudgeBuilder::new(name.into());
        b.measure = Some(measure);
        b
    }

    fn condition(&self) -> String {
        let alt = match self.direction {
            Direction::Increase => "higher",
            Direction::Decrease => "lower",
            Direction::Either => "different",
        };
        format!(
            "canary not significantly {alt} than baseline (Mann-Whitney U at confidence {}, min effect {}%)",
            self.confidence,
            self.min_effect * 100.0
        )
    }

    fn source_text(&self, ctx: &GateContext) -> String {
        match &self.source {
            Source::Prometheus {
                client,
                query,
                lookback,
                step,
                ..
            } => format!(
                "{} for canary [{}] vs baseline [{}], range {:?} step {:?} @ {}",
                query.text(),
                join(&ctx.canary),
                join(&ctx.baseline),
                lookback,
                step,
                client.base_url()
            ),
            Source::Scrape {
                measure,
                samples,
                interval,
                metrics_path,
                ..
            } => format!(
                "{} from {} scrapes {:?} apart of canary [{}] vs baseline [{}] {}",
                measure.describe(),
                samples + 1,
                interval,
                join(&ctx.canary),
                join(&ctx.baseline),
                metrics_path
            ),
        }
    }

    /// The two samples `(canary, baseline)`.
    async fn samples(&self, ctx: &GateContext) -> Result<(Vec<f64>, Vec<f64>)> {
        match &self.source {
            Source::Prometheus {
                client,
                query,
                lookback,
                step,
                window,
                vars,
            } => {
                let end = SystemTime::now();
                let start = end.checked_sub(*lookback).unwrap_or(SystemTime::UNIX_EPOCH);
                let render = |ids: &[TargetId]| {
                    let v = variables(vars, *window, ids, &ctx.baseline, ctx.version.as_str());
                    query.render(&v)
                };
                let (cq, bq) = (render(&ctx.canary), render(&ctx.baseline));
                let (c, b) = tokio::join!(
                    client.query_range(&cq, start, end, *step),
                    client.query_range(&bq, start, end, *step)
                );
                let points = |s: Vec<crate::Series>| -> Vec<f64> {
                    s.into_iter()
                        .flat_map(|s| s.points.into_iter().map(|p| p.1))
                        .collect()
                };
                Ok((points(c?), points(b?)))
            }
            Source::Scrape {
                measure,
                samples,
                interval,
                metrics_path,
                scraper,
            } => {
                let urls = |eps: &[deploy_core::Endpoint]| -> Vec<String> {
                    eps.iter().map(|e| e.url(metrics_path)).collect()
                };
                let (cu, bu) = (urls(&ctx.canary_endpoints), urls(&ctx.baseline_endpoints));
                if cu.is_empty() || bu.is_empty() {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "judge",
                        format!("gate {}", self.name),
                        "the context has no canary or no baseline endpoints to scrape",
                    ));
                }
                let mut all = cu.clone();
                all.extend(bu.iter().cloned());
                let mut prev = scraper.scrape_all(&all).await?;
                let mut at = tokio::time::Instant::now();
                let (mut c, mut b) = (Vec::new(), Vec::new());
                let mut ticker = tokio::time::interval_at(at + *interval, *interval);
                for _ in 0..*samples {
                    ticker.tick().await;
                    let cur = scraper.scrape_all(&all).await?;
                    let now = tokio::time::Instant::now();
                    let n = cu.len();
                    let m = |range: std::ops::Range<usize>| {
                        measure.measure(&prev[range.clone()], &cur[range], now - at)
                    };
                    if let Some(v) = m(0..n)?.value {
                        c.push(v);
                    }
                    if let Some(v) = m(n..all.len())?.value {
                        b.push(v);
                    }
                    prev = cur;
                    at = now;
                }
                Ok((c, b))
            }
        }
    }

    /// Judge the two samples.
    fn judge(&self, canary: &[f64], baseline: &[f64], source: &str) -> Verdict {
        let cond = self.condition();
        // Kayenta's default NaN strategy: remove.
        let c: Vec<f64> = canary.iter().copied().filter(|v| v.is_finite()).collect();
        let b: Vec<f64> = baseline.iter().copied().filter(|v| v.is_finite()).collect();
        let dropped = canary.len() - c.len() + baseline.len() - b.len();
        if c.is_empty() || b.is_empty() {
            let mut v = Verdict::no_data(cond, source);
            v.reason = format!(
                "no data: {} canary and {} baseline values ({dropped} NaN or infinite removed)",
                c.len(),
                b.len()
            );
            return v;
        }
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let (mc, mb) = (mean(&c), mean(&b));
        let ratio = if mb == 0.0 {
            if mc == 0.0 { 1.0 } else { f64::INFINITY }
        } else {
            mc / mb
        };
        if c.len() < self.min_samples || b.len() < self.min_samples {
            return Verdict::new(
                VerdictKind::Inconclusive,
                Some(ratio),
                cond,
                source,
                format!(
                    "too few samples: {} canary and {} baseline, at least {} each are needed",
                    c.len(),
                    b.len(),
                    self.min_samples
                ),
            );
        }
        let alt = match self.direction {
            Direction::Increase => Alternative::Greater,
            Direction::Decrease => Alternative::Less,
            Direction::Either => Alternative::TwoSided,
        };
        // Both samples are non-empty here.
        let Some(t) = mann_whitney(&c, &b, alt) else {
            return Verdict::no_data(cond, source);
        };
        let alpha = 1.0 - self.confidence;
        let significant = t.p < alpha;
        let up = ratio >= 1.0 + self.min_effect;
        let down = ratio <= 1.0 - self.min_effect || (self.min_effect >= 1.0 && ratio == 0.0);
        let large = match self.direction {
            Direction::Increase => up,
            Direction::Decrease => down,
            Direction::Either => up || down,
        };
        let kind = if significant && large {
            VerdictKind::Fail
        } else {
            VerdictKind::Pass
        };
        let why = match (significant, large) {
            (true, true) => "significant and large enough: the canary regressed",
            (true, false) => "significant but smaller than the minimum effect",
            (false, _) => "not significant",
        };
        Verdict::new(
            kind,
            Some(ratio),
            cond,
            source,
            format!(
                "{why}: U = {}, z = {:.3}, p = {:.3e} (alpha {alpha:.3}), effect size (mean ratio) = {ratio:.3}; \
                 canary n = {} mean = {mc:.6}, baseline n = {} mean = {mb:.6}{}",
                t.u1,
                t.z,
                t.p,
                c.len(),
                b.len(),
                if dropped > 0 {
                    format!("; {dropped} NaN or infinite values removed")
                } else {
                    String::new()
                }
            ),
        )
    }
}

fn join(ids: &[TargetId]) -> String {
    ids.iter()
        .map(TargetId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl JudgeBuilder {
    fn new(name: String) -> Self {
        Self {
            name,
            query: None,
            client: None,
            measure: None,
            lookback: Duration::from_secs(600),
            step: Duration::from_secs(10),
            window: Duration::from_secs(60),
            vars: BTreeMap::new(),
            samples: 20,
            interval: Duration::from_secs(5),
            metrics_path: "/metrics".to_owned(),
            timeout: Duration::from_secs(5),
            direction: Direction::Increase,
            confidence: 0.98,
            min_effect: 0.1,
            min_samples: 10,
        }
    }

    /// Prometheus judges: the range `[now - lookback, now]` and its step (default 10 min, 10 s).
    pub fn lookback(mut self, lookback: Duration, step: Duration) -> Self {
        self.lookback = lookback;
        self.step = step;
        self
    }

    /// Prometheus judges: the value of `{{window}}` (default 1 min).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Prometheus judges: a custom template variable.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Scrape judges: how many samples to take (default 20).
    pub fn samples(mut self, n: usize) -> Self {
        self.samples = n;
        self
    }

    /// Scrape judges: time between scrapes (default 5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Scrape judges: the metrics path on each endpoint (default `/metrics`).
    pub fn metrics_path(mut self, path: impl Into<String>) -> Self {
        self.metrics_path = path.into();
        self
    }

    /// Scrape judges: time limit of each scrape (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Which change is a regression (default [`Direction::Increase`]).
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Confidence of the test, in `(0, 1)` (default 0.98): fail only when p < 1 - confidence.
    pub fn confidence(mut self, confidence: f64) -> Self {
        self.confidence = confidence;
        self
    }

    /// Minimum effect size as a relative change of the mean (default 0.1, i.e. the canary's
    /// mean must be at least 10 % worse to fail).
    pub fn min_effect(mut self, min_effect: f64) -> Self {
        self.min_effect = min_effect;
        self
    }

    /// Fewer samples than `n` in either group is Inconclusive (default 10; Kayenta's docs
    /// advise 50).
    pub fn min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }

    /// Check everything and build the judge.
    pub fn build(self) -> Result<Judge> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_owned());
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            problems.push(format!("confidence {} is not in (0, 1)", self.confidence));
        }
        if !(self.min_effect.is_finite() && self.min_effect >= 0.0) {
            problems.push(format!(
                "min effect {} is not a number >= 0",
                self.min_effect
            ));
        }
        if self.min_samples < 2 {
            problems.push(format!("min samples {} is below 2", self.min_samples));
        }
        let source = match (self.client, self.query, self.measure) {
            (Some(client), Some(query), None) => {
                let custom: Vec<String> = self.vars.keys().cloned().collect();
                if self.step.is_zero() || self.lookback < self.step {
                    problems.push(format!(
                        "lookback {:?} and step {:?}: the step must be > 0 and <= the lookback",
                        self.lookback, self.step
                    ));
                }
                match Template::parse(&query, &custom) {
                    Ok(query) => Some(Source::Prometheus {
                        client,
                        query,
                        lookback: self.lookback,
                        step: self.step,
                        window: self.window,
                        vars: self.vars,
                    }),
                    Err(e) => {
                        problems.push(e.to_string());
                        None
                    }
                }
            }
            (None, None, Some(measure)) => {
                if self.samples < 2 {
                    problems.push(format!("{} samples is below 2", self.samples));
                }
                if self.interval.is_zero() {
                    problems.push("the scrape interval is 0".to_owned());
                }
                Some(Source::Scrape {
                    measure,
                    samples: self.samples,
                    interval: self.interval,
                    metrics_path: self.metrics_path,
                    scraper: Scraper::new(self.timeout),
                })
            }
            _ => {
                problems.push("a judge reads either Prometheus or scrapes".to_owned());
                None
            }
        };
        match source {
            Some(source) if problems.is_empty() => Ok(Judge {
                query_lookback: match &source {
                    Source::Prometheus {
                        query,
                        window,
                        vars,
                        ..
                    } => query_lookback(&query.render(&variables(vars, *window, &[], &[], ""))),
                    Source::Scrape { .. } => Duration::ZERO,
                },
                name: self.name,
                source,
                direction: self.direction,
                confidence: self.confidence,
                min_effect: self.min_effect,
                min_samples: self.min_samples,
            }),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("judge {:?}", self.name),
                problems.join("; "),
            )),
        }
    }
}

#[async_trait]
impl MetricGate for Judge {
    fn name(&self) -> &str {
        &self.name
    }

    /// A scrape judge takes its samples one interval apart: samples × interval. A Prometheus
    /// judge asks two range queries: zero.
    fn evaluation_time(&self) -> Duration {
        match &self.source {
            Source::Prometheus { .. } => Duration::ZERO,
            Source::Scrape {
                samples, interval, ..
            } => interval.saturating_mul(u32::try_from(*samples).unwrap_or(u32::MAX)),
        }
    }

    /// A Prometheus judge reads points over its [lookback](JudgeBuilder::lookback), each of
    /// which looks back over the query's own largest range: their sum. A scrape judge reads
    /// only what happens while it samples: zero.
    fn lookback(&self) -> Duration {
        match &self.source {
            Source::Prometheus { lookback, .. } => lookback.saturating_add(self.query_lookback),
            Source::Scrape { .. } => Duration::ZERO,
        }
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let source = self.source_text(ctx);
        let missing = match &self.source {
            Source::Prometheus { .. } if ctx.canary.is_empty() => Some("canary"),
            Source::Prometheus { .. } if ctx.baseline.is_empty() => Some("baseline"),
            Source::Scrape { .. } if ctx.canary_endpoints.is_empty() => Some("canary endpoint"),
            Source::Scrape { .. } if ctx.baseline_endpoints.is_empty() => Some("baseline endpoint"),
            _ => None,
        };
        if let Some(what) = missing {
            return Ok(Verdict::new(
                VerdictKind::Inconclusive,
                None,
                self.condition(),
                source,
                format!("the context names no {what}: there is nothing to compare"),
            ));
        }
        let verdict = match self.samples(ctx).await {
            Ok((c, b)) => self.judge(&c, &b, &source),
            Err(e) => {
                let mut v = error_verdict(&Condition::AtMost(0.0), &source, &e);
                v.condition = self.condition();
                v
            }
        };
        tracing::debug!(gate = %self.name, %verdict, "judge evaluated");
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HttpMetrics;

    fn judge(direction: Direction) -> Judge {
        Judge::scrape("j", ScrapeMeasure::mean_latency(&HttpMetrics::default()))
            .direction(direction)
            .min_samples(5)
            .build()
            .unwrap()
    }

    #[test]
    fn fails_a_slower_canary_and_passes_an_equal_one() {
        let base: Vec<f64> = (0..20).map(|i| 0.020 + f64::from(i % 5) * 0.001).collect();
        let slow: Vec<f64> = base.iter().map(|v| v * 3.0).collect();
        let j = judge(Direction::Increase);
        let v = j.judge(&slow, &base, "s");
        assert_eq!(v.kind, VerdictKind::Fail, "{v}");
        assert!((v.value.unwrap() - 3.0).abs() < 1e-9);
        assert!(v.reason.contains("p = "), "{}", v.reason);
        let v = j.judge(&base, &base, "s");
        assert_eq!(v.kind, VerdictKind::Pass, "{v}");
        // Faster is no regression when higher is worse, but is for Either.
        let fast: Vec<f64> = base.iter().map(|v| v / 3.0).collect();
        assert_eq!(j.judge(&fast, &base, "s").kind, VerdictKind::Pass);
        assert_eq!(
            judge(Direction::Either).judge(&fast, &base, "s").kind,
            VerdictKind::Fail
        );
        assert_eq!(
            judge(Direction::Decrease).judge(&fast, &base, "s").kind,
            VerdictKind::Fail
        );
    }

    #[test]
    fn small_significant_differences_pass_below_the_min_effect() {
        let base: Vec<f64> = (0..30).map(|i| 1.0 + f64::from(i % 3) * 0.001).collect();
        let canary: Vec<f64> = base.iter().map(|v| v * 1.05).collect();
        let v = judge(Direction::Increase).judge(&canary, &base, "s");
        assert_eq!(v.kind, VerdictKind::Pass);
        assert!(
            v.reason.starts_with("significant but smaller"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn too_few_or_no_samples_are_inconclusive() {
        let j = judge(Direction::Increase);
        let v = j.judge(&[1.0, 2.0], &[1.0; 10], "s");
        assert_eq!(v.kind, VerdictKind::Inconclusive);
        assert!(v.reason.contains("too few samples"), "{}", v.reason);
        let v = j.judge(&[f64::NAN; 3], &[1.0; 10], "s");
        assert!(v.no_data && v.kind == VerdictKind::Inconclusive);
    }

    #[tokio::test]
    async fn a_context_without_baseline_is_inconclusive() {
        let j = judge(Direction::Increase);
        let ctx = GateContext::new(
            deploy_core::Version::new("1").unwrap(),
            vec![TargetId::new("green").unwrap()],
            vec![],
        );
        let v = j.evaluate(&ctx).await.unwrap();
        assert_eq!(v.kind, VerdictKind::Inconclusive);
        assert!(v.reason.contains("no canary endpoint"), "{}", v.reason);
        deploy_core::testing::conformance::metric_gate(&j, &ctx, VerdictKind::Inconclusive).await;
    }

    #[test]
    fn build_checks_the_parameters() {
        let e = Judge::scrape("", ScrapeMeasure::request_rate(&HttpMetrics::default()))
            .confidence(1.0)
            .min_effect(-1.0)
            .min_samples(1)
            .samples(1)
            .build()
            .unwrap_err();
        let msg = e.to_string();
        for part in [
            "name",
            "confidence",
            "min effect",
            "min samples",
            "1 samples",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
    }
}
