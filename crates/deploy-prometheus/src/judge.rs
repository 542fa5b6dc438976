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
/// .lookback(Duration::from_secs(600))
/// .step(Duration::from_secs(10))
/// .direction(Direction::Increase)
/// .build()?;
/// # let _ = judge; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Judge {
    name: String,
    source: Source,
    comparison: Comparison,
    /// The largest range of the rendered query (Prometheus judges), computed when built.
    query_lookback: Duration,
}

/// How a judge compares the two samples: the settings both kinds of judge share.
#[derive(Debug, Clone, Copy)]
struct Comparison {
    direction: Direction,
    confidence: f64,
    min_effect: f64,
    min_samples: usize,
}

impl Default for Comparison {
    fn default() -> Self {
        Self {
            direction: Direction::Increase,
            confidence: 0.98,
            min_effect: 0.1,
            min_samples: 10,
        }
    }
}

impl Comparison {
    fn check(&self, problems: &mut Vec<String>) {
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
    }
}

/// The setters of [`Comparison`], the same on both builders.
macro_rules! comparison_setters {
    () => {
        /// Which change is a regression (default [`Direction::Increase`]).
        pub fn direction(mut self, direction: Direction) -> Self {
            self.comparison.direction = direction;
            self
        }

        /// Confidence of the test, in `(0, 1)` (default 0.98): fail only when
        /// p < 1 - confidence.
        pub fn confidence(mut self, confidence: f64) -> Self {
            self.comparison.confidence = confidence;
            self
        }

        /// Minimum effect size as a relative change of the mean (default 0.1, i.e. the
        /// canary's mean must be at least 10 % worse to fail).
        pub fn min_effect(mut self, min_effect: f64) -> Self {
            self.comparison.min_effect = min_effect;
            self
        }

        /// Fewer samples than `n` in either group is Inconclusive (default 10; Kayenta's docs
        /// advise 50).
        pub fn min_samples(mut self, n: usize) -> Self {
            self.comparison.min_samples = n;
            self
        }
    };
}

/// Builds a [`Judge`] over Prometheus ([`Judge::prometheus`]); [`build`](Self::build) checks
/// everything at once.
#[derive(Debug, Clone)]
#[must_use]
pub struct PromQlJudgeBuilder {
    name: String,
    client: PrometheusClient,
    query: String,
    lookback: Duration,
    step: Duration,
    window: Duration,
    vars: BTreeMap<String, String>,
    comparison: Comparison,
}

/// Builds a [`Judge`] from repeated scrapes ([`Judge::scrape`]); [`build`](Self::build) checks
/// everything at once.
#[derive(Debug, Clone)]
#[must_use]
pub struct ScrapeJudgeBuilder {
    name: String,
    measure: ScrapeMeasure,
    samples: usize,
    interval: Duration,
    metrics_path: String,
    timeout: Duration,
    max_page_size: u64,
    comparison: Comparison,
}

impl Judge {
    /// A judge over Prometheus: `query` is a template whose `{{target}}` is rendered once with
    /// the canary ids and once with the baseline ids; every point of its range over the
    /// [lookback](PromQlJudgeBuilder::lookback) is a sample.
    pub fn prometheus(
        name: impl Into<String>,
        client: PrometheusClient,
        query: impl Into<String>,
    ) -> PromQlJudgeBuilder {
        PromQlJudgeBuilder {
            name: name.into(),
            client,
            query: query.into(),
            lookback: Duration::from_secs(600),
            step: Duration::from_secs(10),
            window: Duration::from_secs(60),
            vars: BTreeMap::new(),
            comparison: Comparison::default(),
        }
    }

    /// A judge without Prometheus: scrapes the canary and the baseline endpoints
    /// [`samples`](ScrapeJudgeBuilder::samples) + 1 times,
    /// [`interval`](ScrapeJudgeBuilder::interval) apart; each value of `measure` between two
    /// consecutive scrapes is a sample.
    pub fn scrape(name: impl Into<String>, measure: ScrapeMeasure) -> ScrapeJudgeBuilder {
        ScrapeJudgeBuilder {
            name: name.into(),
            measure,
            samples: 20,
            interval: Duration::from_secs(5),
            metrics_path: "/metrics".to_owned(),
            timeout: Duration::from_secs(5),
            max_page_size: crate::ScrapeGate::DEFAULT_MAX_PAGE_SIZE,
            comparison: Comparison::default(),
        }
    }

    fn condition(&self) -> String {
        let alt = match self.comparison.direction {
            Direction::Increase => "higher",
            Direction::Decrease => "lower",
            Direction::Either => "different",
        };
        format!(
            "canary not significantly {alt} than baseline (Mann-Whitney U at confidence {}, min effect {}%)",
            self.comparison.confidence,
            self.comparison.min_effect * 100.0
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
                client.shown_url()
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
        if c.len() < self.comparison.min_samples || b.len() < self.comparison.min_samples {
            return Verdict::new(
                VerdictKind::Inconclusive,
                Some(ratio),
                cond,
                source,
                format!(
                    "too few samples: {} canary and {} baseline, at least {} each are needed",
                    c.len(),
                    b.len(),
                    self.comparison.min_samples
                ),
            );
        }
        let alt = match self.comparison.direction {
            Direction::Increase => Alternative::Greater,
            Direction::Decrease => Alternative::Less,
            Direction::Either => Alternative::TwoSided,
        };
        // Both samples are non-empty here.
        let Some(t) = mann_whitney(&c, &b, alt) else {
            return Verdict::no_data(cond, source);
        };
        let alpha = 1.0 - self.comparison.confidence;
        let significant = t.p < alpha;
        let up = ratio >= 1.0 + self.comparison.min_effect;
        let down = ratio <= 1.0 - self.comparison.min_effect
            || (self.comparison.min_effect >= 1.0 && ratio == 0.0);
        let large = match self.comparison.direction {
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
                 canary n = {} mean = {}, baseline n = {} mean = {}{}",
                t.u1,
                t.z,
                t.p,
                c.len(),
                deploy_core::units::number(mc),
                b.len(),
                deploy_core::units::number(mb),
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

impl PromQlJudgeBuilder {
    /// Read the points of the last `lookback` (default 10 min).
    pub fn lookback(mut self, lookback: Duration) -> Self {
        self.lookback = lookback;
        self
    }

    /// The time between two points of the range (default 10 s).
    pub fn step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// The value of `{{window}}` (default 1 min).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// A custom template variable `{{name}}`.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    comparison_setters!();

    /// Check everything and build the judge; the error lists every problem found.
    pub fn build(self) -> Result<Judge> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_owned());
        }
        self.comparison.check(&mut problems);
        for k in self.vars.keys() {
            if crate::template::BUILTIN.contains(&k.as_str()) {
                problems.push(format!("variable `{k}` is built in and cannot be set"));
            }
        }
        if self.step.is_zero() || self.lookback < self.step {
            problems.push(format!(
                "lookback {:?} and step {:?}: the step must be > 0 and <= the lookback",
                self.lookback, self.step
            ));
        }
        if self.window.is_zero() {
            problems.push("the window is 0".to_owned());
        }
        let query = Template::parse(&self.query, self.vars.keys())
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        match query {
            Some(query) if problems.is_empty() => {
                // Every variable but the targets and the version is known now, and those
                // render inside label matchers, where no range is.
                let query_lookback = query_lookback(&query.render(&variables(
                    &self.vars,
                    self.window,
                    &[],
                    &[],
                    "",
                )));
                Ok(Judge {
                    name: self.name,
                    source: Source::Prometheus {
                        client: self.client,
                        query,
                        lookback: self.lookback,
                        step: self.step,
                        window: self.window,
                        vars: self.vars,
                    },
                    comparison: self.comparison,
                    query_lookback,
                })
            }
            _ => Err(build_error(&self.name, &problems)),
        }
    }
}

impl ScrapeJudgeBuilder {
    /// How many samples to take (default 20).
    pub fn samples(mut self, n: usize) -> Self {
        self.samples = n;
        self
    }

    /// Time between scrapes (default 5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The metrics path on each endpoint (default `/metrics`).
    pub fn metrics_path(mut self, path: impl Into<String>) -> Self {
        self.metrics_path = path.into();
        self
    }

    /// Time limit of each scrape (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuse a page of more than `bytes` bytes (default
    /// [`ScrapeGate::DEFAULT_MAX_PAGE_SIZE`](crate::ScrapeGate::DEFAULT_MAX_PAGE_SIZE),
    /// 16 MiB), reading no further than that.
    pub fn max_page_size(mut self, bytes: u64) -> Self {
        self.max_page_size = bytes;
        self
    }

    comparison_setters!();

    /// Check everything and build the judge; the error lists every problem found.
    pub fn build(self) -> Result<Judge> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_owned());
        }
        self.comparison.check(&mut problems);
        if self.samples < 2 {
            problems.push(format!("{} samples is below 2", self.samples));
        }
        if self.interval.is_zero() {
            problems.push("the scrape interval is 0".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("the scrape timeout is 0".to_owned());
        }
        if self.max_page_size == 0 {
            problems.push("the page size limit is 0".to_owned());
        }
        if !self.metrics_path.starts_with('/') {
            problems.push(format!(
                "metrics path {:?} does not start with '/'",
                self.metrics_path
            ));
        }
        let scraper = Scraper::new(self.timeout, self.max_page_size)
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        match scraper {
            Some(scraper) if problems.is_empty() => Ok(Judge {
                name: self.name,
                source: Source::Scrape {
                    measure: self.measure,
                    samples: self.samples,
                    interval: self.interval,
                    metrics_path: self.metrics_path,
                    scraper,
                },
                comparison: self.comparison,
                query_lookback: Duration::ZERO,
            }),
            _ => Err(build_error(&self.name, &problems)),
        }
    }
}

fn build_error(name: &str, problems: &[String]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "build",
        format!("judge {name:?}"),
        problems.join("; "),
    )
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

    /// A Prometheus judge reads points over its [lookback](PromQlJudgeBuilder::lookback), each of
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
    fn a_prometheus_judge_checks_its_own_parameters() {
        let client = PrometheusClient::new("http://127.0.0.1:9").unwrap();
        let e = Judge::prometheus("p", client.clone(), "rate(x{a=\"{{nope}}\"}[1m])")
            .lookback(Duration::from_secs(5))
            .step(Duration::from_secs(10))
            .window(Duration::ZERO)
            .var("target", "x")
            .confidence(0.0)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        for part in [
            "unknown variable",
            "the step must be > 0 and <= the lookback",
            "window is 0",
            "`target` is built in",
            "confidence 0",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        let j = Judge::prometheus("p", client, "rate(x[{{window}}])")
            .lookback(Duration::from_secs(60))
            .step(Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(j.lookback(), Duration::from_secs(120));
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
