//! [`ScrapeGate`]: the same judgements without a Prometheus server, from two scrapes of each
//! target's `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{Error, ErrorKind, GateContext, MetricGate, Result, Verdict, VerdictKind};
use regex::Regex;

use crate::client::error_chain;
use crate::condition::Condition;
use crate::metrics::HttpMetrics;
use crate::promql::{Reduce, error_verdict, judge_values};

/// A series' labels, sorted by name.
type LabelSet = Vec<(String, String)>;

/// One parsed scrape of one target: counter-like values and histograms, by series.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Counters, gauges and untyped samples (histogram `_sum`/`_count` included), keyed by
    /// metric name and then by the series' sorted labels.
    values: HashMap<String, BTreeMap<LabelSet, f64>>,
    /// Histogram buckets `(le, cumulative count)`, keyed by base name and labels without `le`.
    histograms: HashMap<String, BTreeMap<LabelSet, Vec<(f64, f64)>>>,
}

impl Snapshot {
    /// Parse the Prometheus text format.
    pub(crate) fn parse(text: &str) -> Self {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            // Reading from an in-memory iterator of `Ok` lines cannot fail.
            .unwrap_or(prometheus_parse::Scrape {
                docs: HashMap::new(),
                samples: Vec::new(),
            });
        let mut snap = Self::default();
        for s in scrape.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            use prometheus_parse::Value as V;
            match s.value {
                V::Counter(v) | V::Gauge(v) | V::Untyped(v) => {
                    snap.values.entry(s.metric).or_default().insert(labels, v);
                }
                V::Histogram(buckets) => {
                    let b = buckets.iter().map(|h| (h.less_than, h.count)).collect();
                    snap.histograms
                        .entry(s.metric)
                        .or_default()
                        .insert(labels, b);
                }
                V::Summary(_) => {}
            }
        }
        snap
    }
}

/// The increase of a counter between two readings, as PromQL's `increase` sees a reset: a
/// value lower than before means the counter restarted from 0.
fn counter_increase(prev: Option<f64>, cur: f64) -> f64 {
    match prev {
        Some(p) if cur >= p => cur - p,
        _ => cur,
    }
}

/// The summed increase of every series of `metric` whose labels satisfy `keep`, and whether the
/// metric exists at all in the current scrapes. Series new in `cur` count from 0.
fn increase(
    prev: &[Snapshot],
    cur: &[Snapshot],
    metric: &str,
    keep: impl Fn(&[(String, String)]) -> bool,
) -> (f64, bool) {
    let mut total = 0.0;
    let mut found = false;
    for (p, c) in prev.iter().zip(cur) {
        let Some(series) = c.values.get(metric) else {
            continue;
        };
        found = true;
        for (labels, v) in series {
            if keep(labels) {
                let before = p.values.get(metric).and_then(|m| m.get(labels)).copied();
                total += counter_increase(before, *v);
            }
        }
    }
    (total, found)
}

/// The increase of every bucket of histogram `name`, summed over series and targets:
/// `(le, cumulative count)` sorted by `le`, or `None` if the histogram does not exist.
fn histogram_increase(prev: &[Snapshot], cur: &[Snapshot], name: &str) -> Option<Vec<(f64, f64)>> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    let mut found = false;
    for (p, c) in prev.iter().zip(cur) {
        let Some(series) = c.histograms.get(name) else {
            continue;
        };
        found = true;
        for (labels, buckets) in series {
            let before = p.histograms.get(name).and_then(|m| m.get(labels));
            let total = |b: &[(f64, f64)]| b.iter().map(|x| x.1).fold(0.0, f64::max);
            // A histogram whose total went down was reset: count from 0.
            let reset = before.is_some_and(|b| total(b) > total(buckets));
            for &(le, count) in buckets {
                let prev_count = if reset {
                    None
                } else {
                    before
                        .and_then(|b| b.iter().find(|x| x.0 == le))
                        .map(|x| x.1)
                };
                let d = counter_increase(prev_count, count);
                match sum.iter_mut().find(|x| x.0 == le) {
                    Some(x) => x.1 += d,
                    None => sum.push((le, d)),
                }
            }
        }
    }
    sum.sort_by(|a, b| a.0.total_cmp(&b.0));
    found.then_some(sum)
}

/// The `q`-quantile of a histogram given as `(upper bound, cumulative count)` pairs, by linear
/// interpolation within the bucket, exactly as PromQL's `histogram_quantile` computes it
/// (Prometheus 2.x `bucketQuantile`): NaN without a `+Inf` bucket, with fewer than two buckets
/// or with no observations; the upper bound of the last finite bucket when the rank falls in
/// `+Inf`; a lower bound of 0 for the first bucket.
pub(crate) fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.last().is_none_or(|x| x.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Merge equal bounds, then make the counts monotonic (Prometheus does both).
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (le, c) in b {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for x in &mut merged {
        if x.1 < max {
            x.1 = max;
        } else {
            max = x.1;
        }
    }
    let n = merged.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = merged[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let i = merged.partition_point(|x| x.1 < rank);
    if i == n - 1 {
        return merged[n - 2].0;
    }
    if i == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[i].0, merged[i].1);
    if i > 0 {
        start = merged[i - 1].0;
        count -= merged[i - 1].1;
        rank -= merged[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// What a scrape gate or a scrape judge measures between two scrapes: an error ratio, a
/// histogram quantile or mean, or a request rate. Build one with its constructors.
#[derive(Clone)]
pub struct ScrapeMeasure(Measure);

#[derive(Clone)]
enum Measure {
    /// Requests with an error status / all requests.
    ErrorRatio {
        requests_total: String,
        status_label: String,
        /// Error statuses, anchored.
        error_status: Regex,
    },
    /// A quantile of a latency histogram, as `histogram_quantile`.
    Quantile { histogram: String, q: f64 },
    /// The mean of a histogram: increase of `_sum` / increase of `_count`.
    Mean { histogram: String },
    /// Requests per second.
    RequestRate { requests_total: String },
}

impl fmt::Debug for ScrapeMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A measurement between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    /// `None` when the metric is absent; NaN when nothing happened in between.
    pub(crate) value: Option<f64>,
    /// Requests (or observations) per second in between.
    pub(crate) traffic: f64,
}

impl ScrapeMeasure {
    /// Error statuses / all requests, with `metrics`' names.
    pub fn error_ratio(metrics: &HttpMetrics) -> Result<Self> {
        let error_status = Regex::new(&format!("^(?:{})$", metrics.error_status)).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                "compile",
                format!("error status pattern {:?}", metrics.error_status),
                e.to_string(),
            )
        })?;
        Ok(Self(Measure::ErrorRatio {
            requests_total: metrics.requests_total.clone(),
            status_label: metrics.status_label.clone(),
            error_status,
        }))
    }

    /// The `q`-quantile of `metrics`' latency histogram.
    pub fn quantile(metrics: &HttpMetrics, q: f64) -> Self {
        Self(Measure::Quantile {
            histogram: metrics.duration_histogram.clone(),
            q,
        })
    }

    /// The mean latency of `metrics`' latency histogram.
    pub fn mean_latency(metrics: &HttpMetrics) -> Self {
        Self(Measure::Mean {
            histogram: metrics.duration_histogram.clone(),
        })
    }

    /// Requests per second of `metrics`' request counter.
    pub fn request_rate(metrics: &HttpMetrics) -> Self {
        Self(Measure::RequestRate {
            requests_total: metrics.requests_total.clone(),
        })
    }

    /// A PromQL-like description for reports.
    pub fn describe(&self) -> String {
        match &self.0 {
            Measure::ErrorRatio {
                requests_total,
                status_label,
                error_status,
            } => {
                let re = error_status.as_str();
                let re = re
                    .strip_prefix("^(?:")
                    .and_then(|r| r.strip_suffix(")$"))
                    .unwrap_or(re);
                format!(
                    "increase({requests_total}{{{status_label}=~\"{re}\"}}) / increase({requests_total})"
                )
            }
            Measure::Quantile { histogram, q } => {
                format!("histogram_quantile({q}, increase({histogram}_bucket))")
            }
            Measure::Mean { histogram } => {
                format!("increase({histogram}_sum) / increase({histogram}_count)")
            }
            Measure::RequestRate { requests_total } => format!("rate({requests_total})"),
        }
    }

    /// Measure between `prev` and `cur` (one snapshot per target, in the same order), taken
    /// `elapsed` apart.
    pub(crate) fn measure(
        &self,
        prev: &[Snapshot],
        cur: &[Snapshot],
        elapsed: Duration,
    ) -> Measured {
        let secs = elapsed.as_secs_f64().max(1e-9);
        match &self.0 {
            Measure::ErrorRatio {
                requests_total,
                status_label,
                error_status,
            } => {
                let (all, found) = increase(prev, cur, requests_total, |_| true);
                let (errors, _) = increase(prev, cur, requests_total, |labels| {
                    labels
                        .iter()
                        .find(|(k, _)| k == status_label)
                        .is_some_and(|(_, v)| error_status.is_match(v))
                });
                Measured {
                    value: found.then(|| if all > 0.0 { errors / all } else { f64::NAN }),
                    traffic: all / secs,
                }
            }
            Measure::Quantile { histogram, q } => match histogram_increase(prev, cur, histogram) {
                None => Measured {
                    value: None,
                    traffic: 0.0,
                },
                Some(b) => Measured {
                    value: Some(bucket_quantile(*q, &b)),
                    traffic: b.last().map_or(0.0, |x| x.1) / secs,
                },
            },
            Measure::Mean { histogram } => {
                let (sum, found_sum) = increase(prev, cur, &format!("{histogram}_sum"), |_| true);
                let (count, found_count) =
                    increase(prev, cur, &format!("{histogram}_count"), |_| true);
                Measured {
                    value: (found_sum && found_count)
                        .then(|| if count > 0.0 { sum / count } else { f64::NAN }),
                    traffic: count / secs,
                }
            }
            Measure::RequestRate { requests_total } => {
                let (all, found) = increase(prev, cur, requests_total, |_| true);
                Measured {
                    value: found.then_some(all / secs),
                    traffic: all / secs,
                }
            }
        }
    }
}

/// Fetches and parses `/metrics` pages.
#[derive(Debug, Clone)]
pub(crate) struct Scraper {
    http: reqwest::Client,
    timeout: Duration,
}

impl Scraper {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::new(),
            timeout,
        }
    }

    pub(crate) async fn scrape(&self, url: &str) -> Result<Snapshot> {
        let op = "scrape metrics from";
        let resp = self
            .http
            .get(url)
            .header("accept", "text/plain;version=0.0.4")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                let (kind, cause) = if e.is_timeout() {
                    (
                        ErrorKind::Timeout,
                        format!("no answer within {:?}", self.timeout),
                    )
                } else {
                    (
                        ErrorKind::Unavailable,
                        format!("cannot connect: {}", error_chain(&e)),
                    )
                };
                Error::new(kind, op, url.to_owned(), cause).with_source(e)
            })?;
        let status = resp.status();
        if !status.is_success() {
            let kind = if status.is_server_error() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Rejected
            };
            return Err(Error::new(
                kind,
                op,
                url.to_owned(),
                format!("HTTP {status}"),
            ));
        }
        let text = resp.text().await.map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                op,
                url.to_owned(),
                format!("reading the page failed: {e}"),
            )
            .with_source(e)
        })?;
        Ok(Snapshot::parse(&text))
    }

    /// Scrape every URL concurrently, in order.
    pub(crate) async fn scrape_all(&self, urls: &[String]) -> Result<Vec<Snapshot>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, url) in urls.iter().enumerate() {
            let (this, url) = (self.clone(), url.clone());
            set.spawn(async move { (i, this.scrape(&url).await) });
        }
        let mut out: Vec<Option<Snapshot>> = vec![None; urls.len()];
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| {
                Error::new(ErrorKind::Other, "scrape metrics", "task", e.to_string())
            })?;
            out[i] = Some(r?);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// A metric gate without a Prometheus server: scrapes each canary target's `/metrics`
/// (`prometheus-parse`), waits the window, scrapes again, and judges what happened in between:
/// counter increases (a counter lower than before restarted from 0), error ratios from the
/// status label, histogram quantiles interpolated within buckets as `histogram_quantile` does.
///
/// The targets are the explicit [`url`](ScrapeGateBuilder::url)s if any, otherwise the canary
/// endpoints of the [`GateContext`] with the [metrics path](ScrapeGateBuilder::metrics_path).
/// Values are summed over targets as `sum(rate(...))` would. One evaluation takes the window.
///
/// Outcomes as [`PromQlGate`](crate::PromQlGate): Pass/Fail by the condition; Inconclusive
/// when the metric is absent (`no_data`), nothing happened between the scrapes (NaN), or the
/// traffic is below [`min_traffic`](ScrapeGateBuilder::min_traffic); Error when a target cannot
/// be scraped.
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_prometheus::{HttpMetrics, ScrapeGate};
/// let gate = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())?
///     .url("http://10.0.0.7:8080/metrics")
///     .window(Duration::from_secs(30))
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ScrapeGate {
    name: String,
    measure: ScrapeMeasure,
    condition: Condition,
    window: Duration,
    urls: Vec<String>,
    metrics_path: String,
    min_traffic: f64,
    scraper: Scraper,
}

/// Builds a [`ScrapeGate`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ScrapeGateBuilder {
    name: String,
    measure: ScrapeMeasure,
    condition: Option<std::result::Result<Condition, String>>,
    window: Duration,
    urls: Vec<String>,
    metrics_path: String,
    min_traffic: f64,
    timeout: Duration,
}

impl ScrapeGateBuilder {
    /// The condition for a pass, as text (`"< 0.01"`).
    pub fn condition(mut self, condition: &str) -> Self {
        self.condition = Some(condition.parse::<Condition>().map_err(|e| e.to_string()));
        self
    }

    /// The condition for a pass.
    pub fn condition_is(mut self, condition: Condition) -> Self {
        self.condition = Some(Ok(condition));
        self
    }

    /// Time between the two scrapes (default 10 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Scrape this URL (repeatable) instead of the context's canary endpoints.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// The path of the metrics page on canary endpoints (default `/metrics`).
    pub fn metrics_path(mut self, path: impl Into<String>) -> Self {
        self.metrics_path = path.into();
        self
    }

    /// Fewer requests per second than `min` between the scrapes is Inconclusive (default: any
    /// traffic above 0).
    pub fn min_traffic(mut self, min: f64) -> Self {
        self.min_traffic = min;
        self
    }

    /// Time limit of each scrape (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Check everything and build the gate.
    pub fn build(self) -> Result<ScrapeGate> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_owned());
        }
        let condition = match self.condition {
            None => {
                problems.push("no condition".to_owned());
                None
            }
            Some(Err(e)) => {
                problems.push(e);
                None
            }
            Some(Ok(c)) => Some(c),
        };
        if self.window.is_zero() {
            problems.push("the window is 0".to_owned());
        }
        if !self.metrics_path.starts_with('/') {
            problems.push(format!(
                "metrics path {:?} does not start with '/'",
                self.metrics_path
            ));
        }
        for u in &self.urls {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(format!(
                    "{:?} is not an http(s) URL",
                    crate::client::redact_url(u)
                )),
            }
        }
        if !self.min_traffic.is_finite() || self.min_traffic < 0.0 {
            problems.push(format!(
                "min traffic {} is not a number >= 0",
                self.min_traffic
            ));
        }
        match condition {
            Some(condition) if problems.is_empty() => Ok(ScrapeGate {
                name: self.name,
                measure: self.measure,
                condition,
                window: self.window,
                urls: self.urls,
                metrics_path: self.metrics_path,
                min_traffic: self.min_traffic,
                scraper: Scraper::new(self.timeout),
            }),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("scrape gate {:?}", self.name),
                problems.join("; "),
            )),
        }
    }
}

impl ScrapeGate {
    /// A builder for a gate named `name` measuring `measure`.
    pub fn builder(name: impl Into<String>, measure: ScrapeMeasure) -> ScrapeGateBuilder {
        ScrapeGateBuilder {
            name: name.into(),
            measure,
            condition: None,
            window: Duration::from_secs(10),
            urls: Vec::new(),
            metrics_path: "/metrics".to_owned(),
            min_traffic: 0.0,
            timeout: Duration::from_secs(5),
        }
    }

    /// The error-rate preset (`error-rate`, at most `max`), as
    /// [`PromQlGate::error_rate_below`](crate::PromQlGate::error_rate_below).
    pub fn error_rate_below(max: f64, metrics: &HttpMetrics) -> Result<ScrapeGateBuilder> {
        Ok(
            Self::builder("error-rate", ScrapeMeasure::error_ratio(metrics)?)
                .condition_is(Condition::AtMost(max)),
        )
    }

    /// The p99 preset (`p99-latency`, at most `max`), as
    /// [`PromQlGate::p99_latency_below`](crate::PromQlGate::p99_latency_below).
    pub fn p99_latency_below(max: Duration, metrics: &HttpMetrics) -> ScrapeGateBuilder {
        Self::builder("p99-latency", ScrapeMeasure::quantile(metrics, 0.99))
            .condition_is(Condition::AtMost(max.as_secs_f64()))
    }

    /// The URLs this gate scrapes for `ctx`.
    pub fn urls(&self, ctx: &GateContext) -> Vec<String> {
        if self.urls.is_empty() {
            ctx.canary_endpoints
                .iter()
                .map(|e| e.url(&self.metrics_path))
                .collect()
        } else {
            self.urls.clone()
        }
    }
}

#[async_trait]
impl MetricGate for ScrapeGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let urls = self.urls(ctx);
        let source = format!(
            "{} over {:?} from {}",
            self.measure.describe(),
            self.window,
            if urls.is_empty() {
                "(no endpoints)".to_owned()
            } else {
                urls.join(", ")
            }
        );
        if urls.is_empty() {
            let e = Error::new(
                ErrorKind::InvalidInput,
                "scrape",
                format!("gate {}", self.name),
                "no URL configured and the context has no canary endpoints",
            );
            return Ok(error_verdict(&self.condition, &source, &e));
        }
        let first = match self.scraper.scrape_all(&urls).await {
            Ok(s) => s,
            Err(e) => return Ok(error_verdict(&self.condition, &source, &e)),
        };
        let started = tokio::time::Instant::now();
        tokio::time::sleep(self.window).await;
        let second = match self.scraper.scrape_all(&urls).await {
            Ok(s) => s,
            Err(e) => return Ok(error_verdict(&self.condition, &source, &e)),
        };
        let m = self.measure.measure(&first, &second, started.elapsed());
        let verdict = match m.value {
            None => judge_values(
                &[],
                &self.condition,
                Reduce::Worst,
                1,
                &source,
                "the scrape",
            ),
            Some(v) if !v.is_nan() && (m.traffic <= 0.0 || m.traffic < self.min_traffic) => {
                Verdict::new(
                    VerdictKind::Inconclusive,
                    Some(v),
                    self.condition.to_string(),
                    &source,
                    format!(
                        "traffic {:.3}/s is below the floor (at least {}/s and more than 0)",
                        m.traffic, self.min_traffic
                    ),
                )
            }
            Some(v) => {
                let mut verdict = judge_values(
                    &[v],
                    &self.condition,
                    Reduce::Worst,
                    1,
                    &source,
                    "the scrape",
                );
                if v.is_nan() {
                    verdict.reason =
                        "nothing was recorded between the two scrapes (the value is 0/0)".into();
                } else {
                    verdict.reason = format!("{} at {:.3} requests/s", verdict.reason, m.traffic);
                }
                verdict
            }
        };
        tracing::debug!(gate = %self.name, %verdict, "scrape gate evaluated");
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE1: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{status="200"} 90
http_requests_total{status="503"} 10
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 50
http_request_duration_seconds_bucket{le="0.5"} 90
http_request_duration_seconds_bucket{le="1"} 100
http_request_duration_seconds_bucket{le="+Inf"} 100
http_request_duration_seconds_sum 20
http_request_duration_seconds_count 100
"#;

    #[test]
    fn histogram_quantile_matches_prometheus() {
        // Cumulative buckets as Prometheus stores them.
        let b = [
            (0.1, 50.0),
            (0.5, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 50 falls at the top of the first bucket; its lower bound is 0.
        assert_eq!(bucket_quantile(0.5, &b), 0.1);
        // rank 25: halfway through the first bucket.
        assert!((bucket_quantile(0.25, &b) - 0.05).abs() < 1e-12);
        // rank 99: (99-90)/10 of the way from 0.5 to 1.
        assert!((bucket_quantile(0.99, &b) - 0.95).abs() < 1e-12);
        // The rank in +Inf answers the last finite bound.
        let b2 = [(0.1, 5.0), (1.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.9, &b2), 1.0);
        assert!(bucket_quantile(0.5, &[(0.1, 1.0)]).is_nan());
        assert!(bucket_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]).is_nan());
        assert_eq!(bucket_quantile(-1.0, &b), f64::NEG_INFINITY);
        assert_eq!(bucket_quantile(2.0, &b), f64::INFINITY);
        // Non-monotonic counts are clamped upwards as Prometheus does.
        let b3 = [(1.0, 10.0), (2.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.5, &b3), 0.5);
    }

    #[test]
    fn error_ratio_and_quantile_between_scrapes_with_a_reset() {
        let first = Snapshot::parse(PAGE1);
        // 40 more 200s, 10 more 503s, and a new series of 500s.
        let page2 = PAGE1
            .replace("{status=\"200\"} 90", "{status=\"200\"} 130")
            .replace(
                "{status=\"503\"} 10",
                "{status=\"503\"} 20\nhttp_requests_total{status=\"500\"} 5",
            );
        let second = Snapshot::parse(&page2);
        let m = ScrapeMeasure::error_ratio(&HttpMetrics::default()).unwrap();
        let r = m.measure(
            std::slice::from_ref(&first),
            std::slice::from_ref(&second),
            Duration::from_secs(5),
        );
        assert_eq!(r.value, Some(15.0 / 55.0));
        assert_eq!(r.traffic, 11.0);
        // A restarted process: counters lower than before count from 0.
        let restarted = Snapshot::parse(
            "# TYPE http_requests_total counter\nhttp_requests_total{status=\"200\"} 3\nhttp_requests_total{status=\"503\"} 1\n",
        );
        let r = m.measure(&[second], &[restarted], Duration::from_secs(1));
        assert_eq!(r.value, Some(0.25));
        // Histogram: the increase is 100 -> 200 with every new observation in (0.5, 1].
        let page3 = PAGE1
            .replace("le=\"1\"} 100", "le=\"1\"} 200")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200")
            .replace("_sum 20", "_sum 100")
            .replace("_count 100", "_count 200");
        let third = Snapshot::parse(&page3);
        let q = ScrapeMeasure::quantile(&HttpMetrics::default(), 0.99);
        let r = q.measure(
            std::slice::from_ref(&first),
            std::slice::from_ref(&third),
            Duration::from_secs(10),
        );
        assert!((r.value.unwrap() - 0.995).abs() < 1e-12, "{r:?}");
        assert_eq!(r.traffic, 10.0);
        let mean = ScrapeMeasure::mean_latency(&HttpMetrics::default());
        assert_eq!(
            mean.measure(
                std::slice::from_ref(&first),
                &[third],
                Duration::from_secs(1)
            )
            .value,
            Some(0.8)
        );
        // Nothing happened: NaN; metric absent: None.
        assert!(
            m.measure(
                std::slice::from_ref(&first),
                std::slice::from_ref(&first),
                Duration::from_secs(1)
            )
            .value
            .unwrap()
            .is_nan()
        );
        let other =
            ScrapeMeasure::request_rate(&HttpMetrics::default().requests_total("nope_total"));
        assert_eq!(
            other
                .measure(
                    std::slice::from_ref(&first),
                    std::slice::from_ref(&first),
                    Duration::from_secs(1)
                )
                .value,
            None
        );
    }

    proptest! {
        #[test]
        fn quantiles_are_monotonic_and_within_bounds(
            counts in proptest::collection::vec(0u32..100, 1..8),
            q1 in 0.0f64..=1.0,
            q2 in 0.0f64..=1.0,
        ) {
            let mut cum = 0.0;
            let mut b: Vec<(f64, f64)> = counts.iter().enumerate().map(|(i, c)| {
                cum += f64::from(*c);
                ((i + 1) as f64 * 0.1, cum)
            }).collect();
            b.push((f64::INFINITY, cum + 1.0));
            let (lo, hi) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
            let (a, z) = (bucket_quantile(lo, &b), bucket_quantile(hi, &b));
            prop_assert!(a <= z + 1e-12, "q{lo} = {a} > q{hi} = {z}");
            prop_assert!((0.0..=counts.len() as f64 * 0.1 + 1e-9).contains(&z));
        }
    }
}
