//! [`ScrapeGate`]: the same judgements without a Prometheus server, from two scrapes of each
//! target's `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::units::{self, Unit};
use deploy_core::{
    Error, ErrorKind, GateContext, MetricGate, Result, Verdict, VerdictKind, http, redact,
};
use regex::Regex;

use crate::client::{BodyError, read_body, request_failed, too_large};
use crate::condition::Condition;
use crate::exposition;
use crate::metrics::HttpMetrics;
use crate::promql::{Reduce, error_verdict, judge_values};

/// A series' labels, sorted by name.
type LabelSet = Vec<(String, String)>;

/// Checks one value of a series: `(snapshot, metric, labels, value)`.
type Check = fn(&Snapshot, &str, &[(String, String)], f64) -> Result<()>;

/// One parsed scrape of one target: every sample's value, by series.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Where the page came from (its URL), for messages.
    source: String,
    /// Values keyed by metric name (`x_bucket`, `x_sum` as written) and then by the series'
    /// sorted labels.
    values: HashMap<String, BTreeMap<LabelSet, f64>>,
}

impl Snapshot {
    /// Read a page in the Prometheus text format served at `source`. A page that breaks the
    /// format, or that holds one series twice, is refused: its values cannot be trusted.
    pub(crate) fn parse(source: &str, text: &str) -> std::result::Result<Self, String> {
        let page = exposition::parse(text).map_err(|e| e.to_string())?;
        let mut values: HashMap<String, BTreeMap<LabelSet, f64>> = HashMap::new();
        for sample in page.samples {
            let mut labels = sample.labels;
            labels.sort_unstable();
            if !values.contains_key(&sample.name) {
                values.insert(sample.name.clone(), BTreeMap::new());
            }
            let Some(series) = values.get_mut(&sample.name) else {
                continue;
            };
            if series.contains_key(&labels) {
                return Err(format!(
                    "line {}: the series {} appears a second time",
                    sample.line,
                    series_name(&sample.name, &labels)
                ));
            }
            series.insert(labels, sample.value);
        }
        Ok(Self {
            source: source.to_owned(),
            values,
        })
    }

    /// The number of series read.
    #[cfg(feature = "testing")]
    pub(crate) fn len(&self) -> usize {
        self.values.values().map(BTreeMap::len).sum()
    }
}

/// `name{a="x",b="y"}`, label values escaped as the exposition format writes them.
fn series_name(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// A value that no counter can have (negative, NaN, infinite) is nonsense: refuse it rather
/// than judge it.
fn check_counter(snap: &Snapshot, name: &str, labels: &[(String, String)], v: f64) -> Result<()> {
    let why = if v.is_nan() {
        "is NaN"
    } else if v.is_infinite() {
        "is infinite"
    } else if v < 0.0 {
        "is negative"
    } else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::Protocol,
        "read counter",
        format!("{} from {}", series_name(name, labels), snap.source),
        format!("its value {v} {why}, which a counter never is"),
    ))
}

/// A histogram's `_sum` may go down (negative observations) but must be a number.
fn check_finite(snap: &Snapshot, name: &str, labels: &[(String, String)], v: f64) -> Result<()> {
    if v.is_finite() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Protocol,
        "read sum",
        format!("{} from {}", series_name(name, labels), snap.source),
        format!("its value {v} is not a finite number"),
    ))
}

/// The increase of a counter between two readings, as Prometheus' `increase` reads each
/// series: a value lower than before means the counter restarted from 0, so all of the new
/// value is increase. A series new in the second reading counts from 0.
fn counter_increase(prev: Option<f64>, cur: f64) -> f64 {
    match prev {
        Some(p) if cur >= p => cur - p,
        _ => cur,
    }
}

/// The summed increase of every series of `metric` whose labels satisfy `keep`, and whether the
/// metric exists at all in the current scrapes. Each value must be a valid counter (`check`).
fn increase(
    prev: &[Snapshot],
    cur: &[Snapshot],
    metric: &str,
    keep: impl Fn(&[(String, String)]) -> bool,
    check: Check,
) -> Result<(f64, bool)> {
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
                check(c, metric, labels, *v)?;
                if let Some(b) = before {
                    check(p, metric, labels, b)?;
                }
                total += counter_increase(before, *v);
            }
        }
    }
    Ok((total, found))
}

/// The increase of every bucket of histogram `name` between the scrapes, summed over series and
/// targets by upper bound, as `sum by (le) (increase(name_bucket[...]))`: `(le, increase)` in
/// no particular order, or `None` if the histogram does not exist. Each bucket series is its
/// own counter, so a reset is detected per bucket, as Prometheus does; bucket series without a
/// numeric `le` are skipped, as `histogram_quantile` skips them. Refused: counts that no counter
/// can have, and a histogram without its `+Inf` bucket.
fn histogram_increase(
    prev: &[Snapshot],
    cur: &[Snapshot],
    name: &str,
) -> Result<Option<Vec<(f64, f64)>>> {
    let metric = format!("{name}_bucket");
    let mut sum: Vec<(f64, f64)> = Vec::new();
    let mut found = false;
    for (p, c) in prev.iter().zip(cur) {
        let Some(series) = c.values.get(&metric) else {
            continue;
        };
        // Each histogram of this target (its labels without `le`): has it a `+Inf` bucket?
        let mut has_inf: BTreeMap<LabelSet, bool> = BTreeMap::new();
        for (labels, count) in series {
            let Some(le) = labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| exposition::parse_go_float(v))
                .filter(|le| !le.is_nan())
            else {
                continue;
            };
            found = true;
            let group: LabelSet = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            *has_inf.entry(group).or_default() |= le == f64::INFINITY;
            let before = p.values.get(&metric).and_then(|m| m.get(labels)).copied();
            check_counter(c, &metric, labels, *count)?;
            if let Some(b) = before {
                check_counter(p, &metric, labels, b)?;
            }
            let d = counter_increase(before, *count);
            match sum.iter_mut().find(|x| x.0 == le) {
                Some(x) => x.1 += d,
                None => sum.push((le, d)),
            }
        }
        if let Some((g, _)) = has_inf.iter().find(|(_, inf)| !**inf) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "read histogram",
                format!("{} from {}", series_name(name, g), c.source),
                "it has no bucket with le=\"+Inf\", so its total is unknown",
            ));
        }
    }
    Ok(found.then_some(sum))
}

/// The `q`-quantile of a histogram given as `(upper bound, cumulative count)` pairs in any
/// order, exactly as Prometheus 2.42's `histogram_quantile` computes it (`bucketQuantile`):
/// sort by bound, merge equal bounds, make the counts monotonic (each count at least the one
/// before it), then interpolate linearly within the bucket where the rank falls. NaN without a
/// `+Inf` bucket, with fewer than two buckets or with no observations; the upper bound of the
/// last finite bucket when the rank falls in `+Inf`; a lower bound of 0 for the first bucket
/// (or its own bound if that is not positive). Never panics, whatever the input: callers
/// refuse NaN and negative counts before, as nonsense.
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
    // coalesceBuckets: equal bounds are one bucket.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (le, c) in b {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    // ensureMonotonic (Prometheus 2.42): a count below the largest before it is raised to it.
    // The maximum starts at the first count, so a NaN there disables the fix, and a NaN later
    // is left alone without moving the maximum (both checked against Prometheus in the tests).
    let mut max = merged.first().map_or(f64::NAN, |x| x.1);
    for x in merged.iter_mut().skip(1) {
        if x.1 > max {
            max = x.1;
        } else if x.1 < max {
            x.1 = max;
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
    // Go's `sort.Search(n-1, count >= rank)`, probe for probe: the answer is at most n - 1
    // even when the counts are not sorted (NaN) or the rank is above every count (negative).
    let (mut lo, mut hi) = (0, n - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if merged[mid].1 >= rank {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let i = lo;
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
                "not a regular expression",
            )
            .with_source(e)
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
    ) -> Result<Measured> {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Ok(match &self.0 {
            Measure::ErrorRatio {
                requests_total,
                status_label,
                error_status,
            } => {
                let (all, found) = increase(prev, cur, requests_total, |_| true, check_counter)?;
                let is_error = |labels: &[(String, String)]| {
                    labels
                        .iter()
                        .find(|(k, _)| k == status_label)
                        .is_some_and(|(_, v)| error_status.is_match(v))
                };
                let (errors, _) = increase(prev, cur, requests_total, is_error, check_counter)?;
                Measured {
                    value: found.then(|| if all > 0.0 { errors / all } else { f64::NAN }),
                    traffic: all / secs,
                }
            }
            Measure::Quantile { histogram, q } => match histogram_increase(prev, cur, histogram)? {
                None => Measured {
                    value: None,
                    traffic: 0.0,
                },
                Some(b) => Measured {
                    value: Some(bucket_quantile(*q, &b)),
                    // Every observation is in the +Inf bucket (checked to exist).
                    traffic: b.iter().find(|x| x.0 == f64::INFINITY).map_or(0.0, |x| x.1) / secs,
                },
            },
            Measure::Mean { histogram } => {
                let all = |_: &[(String, String)]| true;
                let sum_name = format!("{histogram}_sum");
                let count_name = format!("{histogram}_count");
                let (sum, found_sum) = increase(prev, cur, &sum_name, all, check_finite)?;
                let (count, found_count) = increase(prev, cur, &count_name, all, check_counter)?;
                Measured {
                    value: (found_sum && found_count)
                        .then(|| if count > 0.0 { sum / count } else { f64::NAN }),
                    traffic: count / secs,
                }
            }
            Measure::RequestRate { requests_total } => {
                let (all, found) = increase(prev, cur, requests_total, |_| true, check_counter)?;
                Measured {
                    value: found.then_some(all / secs),
                    traffic: all / secs,
                }
            }
        })
    }
}

/// Fetches and parses `/metrics` pages, each read up to a size limit.
#[derive(Debug, Clone)]
pub(crate) struct Scraper {
    http: reqwest::Client,
    timeout: Duration,
    max_page_size: u64,
}

impl Scraper {
    pub(crate) fn new(timeout: Duration, max_page_size: u64) -> Result<Self> {
        // Each request gets the time limit, so the client has none.
        let http = http::client(None, "configure", "the scrape client")?;
        Ok(Self {
            http,
            timeout,
            max_page_size,
        })
    }

    pub(crate) async fn scrape(&self, url: &str) -> Result<Snapshot> {
        let op = "scrape metrics from";
        let shown = redact::url(url);
        let resp = self
            .http
            .get(url)
            .header("accept", "text/plain;version=0.0.4")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| request_failed(op, shown.clone(), self.timeout, "cannot connect", e))?;
        let status = resp.status();
        if !status.is_success() {
            let kind = if status.is_server_error() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Rejected
            };
            return Err(Error::new(kind, op, shown, format!("HTTP {status}")));
        }
        // We ask for the text format 0.0.4; a server that answers another format anyway would
        // be misread by this parser, so say so rather than guess.
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("application/vnd.google.protobuf")
        {
            return Err(Error::new(
                ErrorKind::Unsupported,
                op,
                shown,
                format!(
                    "the page is {content_type:?}; only the Prometheus text format (text/plain; version=0.0.4) is read"
                ),
            ));
        }
        let body = read_body(resp, self.max_page_size)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Error::new(
                    ErrorKind::Protocol,
                    op,
                    shown.clone(),
                    too_large("page", self.max_page_size, "max_page_size"),
                ),
                BodyError::Read(e) => request_failed(
                    op,
                    shown.clone(),
                    self.timeout,
                    "reading the page failed",
                    e,
                ),
            })?;
        let protocol = |cause: String| Error::new(ErrorKind::Protocol, op, shown.clone(), cause);
        let text = std::str::from_utf8(&body).map_err(|e| {
            protocol(format!(
                "the page is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Snapshot::parse(&shown, text).map_err(|e| {
            protocol(format!(
                "the page is not in the Prometheus text format: {e}"
            ))
        })
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
                Error::new(
                    ErrorKind::Other,
                    "scrape metrics",
                    "",
                    "a scrape task did not finish",
                )
                .with_source(e)
            })?;
            out[i] = Some(r?);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// A metric gate without a Prometheus server: scrapes each canary target's `/metrics` (the
/// Prometheus text format 0.0.4, read as its specification says), waits the window, scrapes
/// again, and judges what happened in between: counter increases (each series that went down
/// restarted from 0, as Prometheus' `increase` reads it), error ratios from the status label,
/// histogram quantiles exactly as `histogram_quantile` computes them.
///
/// The targets are the explicit [`url`](ScrapeGateBuilder::url)s if any, otherwise the canary
/// endpoints of the [`GateContext`] with the [metrics path](ScrapeGateBuilder::metrics_path).
/// Values are summed over targets as `sum(rate(...))` would. One evaluation takes the window
/// ([`MetricGate::evaluation_time`]), so the engine's time limit for it is the window plus the
/// analysis timeout.
///
/// Outcomes as [`PromQlGate`](crate::PromQlGate): Pass/Fail by the condition; Inconclusive
/// when the metric is absent (`no_data`), nothing happened between the scrapes (NaN), or the
/// traffic is below [`min_traffic`](ScrapeGateBuilder::min_traffic); Error when a target cannot
/// be scraped, when its page breaks the text format (the line and the reason are given), or when
/// the values measured are nonsense (a negative or NaN counter or bucket count, a histogram
/// without its `+Inf` bucket), or when a page is larger than the
/// [limit](ScrapeGateBuilder::max_page_size) (16 MiB by default; it is read as it arrives and
/// refused there). URLs are shown as `deploy_core::redact::url` shows them, in messages,
/// verdict sources and `Debug`.
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
#[derive(Clone)]
pub struct ScrapeGate {
    name: String,
    measure: ScrapeMeasure,
    condition: Condition,
    window: Duration,
    urls: Vec<String>,
    metrics_path: String,
    min_traffic: f64,
    scraper: Scraper,
    unit: Option<Unit>,
}

/// URLs as messages show them.
fn shown_urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| redact::url(u)).collect()
}

impl fmt::Debug for ScrapeGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeGate")
            .field("name", &self.name)
            .field("measure", &self.measure)
            .field("condition", &self.condition)
            .field("window", &self.window)
            .field("urls", &shown_urls(&self.urls))
            .field("metrics_path", &self.metrics_path)
            .field("min_traffic", &self.min_traffic)
            .field("scraper", &self.scraper)
            .finish()
    }
}

/// Builds a [`ScrapeGate`].
#[derive(Clone)]
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
    max_page_size: u64,
    unit: Option<Unit>,
}

impl fmt::Debug for ScrapeGateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeGateBuilder")
            .field("name", &self.name)
            .field("measure", &self.measure)
            .field("condition", &self.condition)
            .field("window", &self.window)
            .field("urls", &shown_urls(&self.urls))
            .field("metrics_path", &self.metrics_path)
            .field("min_traffic", &self.min_traffic)
            .field("timeout", &self.timeout)
            .field("max_page_size", &self.max_page_size)
            .finish()
    }
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

    /// What the measured value is in, so that verdicts show it with its unit; the presets set
    /// it.
    pub fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
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

    /// Refuse a page of more than `bytes` bytes (default
    /// [`ScrapeGate::DEFAULT_MAX_PAGE_SIZE`], 16 MiB), reading no further than that: the
    /// verdict is then Error, naming the URL and the limit.
    pub fn max_page_size(mut self, bytes: u64) -> Self {
        self.max_page_size = bytes;
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
                _ => problems.push(format!("{} is not an http(s) URL", redact::url(u))),
            }
        }
        if !self.min_traffic.is_finite() || self.min_traffic < 0.0 {
            problems.push(format!(
                "min traffic {} is not a number >= 0",
                self.min_traffic
            ));
        }
        if self.timeout.is_zero() {
            problems.push("the scrape timeout is 0".to_owned());
        }
        if self.max_page_size == 0 {
            problems.push("the page size limit is 0".to_owned());
        }
        let scraper = Scraper::new(self.timeout, self.max_page_size)
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        match (condition, scraper) {
            (Some(condition), Some(scraper)) if problems.is_empty() => Ok(ScrapeGate {
                name: self.name,
                measure: self.measure,
                condition,
                window: self.window,
                urls: self.urls,
                metrics_path: self.metrics_path,
                min_traffic: self.min_traffic,
                scraper,
                unit: self.unit,
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
    /// The default limit of one `/metrics` page: 16 MiB. A large exporter (a busy
    /// kube-state-metrics, a node exporter with many devices) serves a few MB; a page beyond
    /// this is a misconfiguration or a peer that never stops, not metrics to judge.
    pub const DEFAULT_MAX_PAGE_SIZE: u64 = 16 * 1024 * 1024;

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
            max_page_size: Self::DEFAULT_MAX_PAGE_SIZE,
            unit: None,
        }
    }

    /// The error-rate preset (`error-rate`, at most `max`), as
    /// [`PromQlGate::error_rate_below`](crate::PromQlGate::error_rate_below).
    pub fn error_rate_below(max: f64, metrics: &HttpMetrics) -> Result<ScrapeGateBuilder> {
        Ok(
            Self::builder("error-rate", ScrapeMeasure::error_ratio(metrics)?)
                .condition_is(Condition::AtMost(max))
                .unit(Unit::Ratio),
        )
    }

    /// The p99 preset (`p99-latency`, at most `max`), as
    /// [`PromQlGate::p99_latency_below`](crate::PromQlGate::p99_latency_below).
    pub fn p99_latency_below(max: Duration, metrics: &HttpMetrics) -> ScrapeGateBuilder {
        Self::builder("p99-latency", ScrapeMeasure::quantile(metrics, 0.99))
            .condition_is(Condition::AtMost(max.as_secs_f64()))
            .unit(Unit::Seconds)
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

    /// The window: one evaluation scrapes, waits the window and scrapes again.
    fn evaluation_time(&self) -> Duration {
        self.window
    }

    /// Zero: the gate judges only what happens between its own two scrapes.
    fn lookback(&self) -> Duration {
        Duration::ZERO
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
                shown_urls(&urls).join(", ")
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
        let m = match self.measure.measure(&first, &second, started.elapsed()) {
            Ok(m) => m,
            Err(e) => return Ok(error_verdict(&self.condition, &source, &e)),
        };
        let verdict = match m.value {
            None => judge_values(
                &[],
                &self.condition,
                Reduce::Worst,
                1,
                &source,
                "the scrape",
                self.unit,
            ),
            Some(v) if !v.is_nan() && (m.traffic <= 0.0 || m.traffic < self.min_traffic) => {
                Verdict::new(
                    VerdictKind::Inconclusive,
                    Some(v),
                    self.condition.to_string(),
                    &source,
                    format!(
                        "traffic {}/s is below the floor (at least {}/s and more than 0)",
                        units::number(m.traffic),
                        units::number(self.min_traffic)
                    ),
                )
                .with_unit(self.unit)
            }
            Some(v) => {
                let mut verdict = judge_values(
                    &[v],
                    &self.condition,
                    Reduce::Worst,
                    1,
                    &source,
                    "the scrape",
                    self.unit,
                );
                if v.is_nan() {
                    verdict.reason =
                        "nothing was recorded between the two scrapes (the value is 0/0)".into();
                } else {
                    verdict.reason = format!(
                        "{} at {} requests/s",
                        verdict.reason,
                        units::number(m.traffic)
                    );
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

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse("http://test/metrics", text).unwrap()
    }

    fn one(m: &ScrapeMeasure, prev: &Snapshot, cur: &Snapshot, secs: u64) -> Result<Measured> {
        m.measure(
            std::slice::from_ref(prev),
            std::slice::from_ref(cur),
            Duration::from_secs(secs),
        )
    }

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
        assert!(bucket_quantile(0.5, &[]).is_nan());
        assert_eq!(bucket_quantile(-1.0, &b), f64::NEG_INFINITY);
        assert_eq!(bucket_quantile(2.0, &b), f64::INFINITY);
        // Non-monotonic counts are raised as Prometheus does; equal bounds are merged.
        let b3 = [(1.0, 10.0), (2.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.5, &b3), 0.5);
        let b4 = [(f64::INFINITY, 4.0), (1.0, 1.0), (1.0, 1.0)];
        assert_eq!(bucket_quantile(0.25, &b4), 0.5);
        // A first bucket with a bound <= 0 answers its bound.
        assert_eq!(
            bucket_quantile(0.1, &[(-1.0, 5.0), (f64::INFINITY, 10.0)]),
            -1.0
        );
        // What made the gate panic: negative counts (an int32 counter that wrapped). Now an
        // answer (Prometheus' own), and the gate refuses such counts before asking.
        let wrapped = [(0.1, -5.0), (0.5, -2.0), (1.0, -1.0), (f64::INFINITY, -1.0)];
        assert_eq!(bucket_quantile(0.99, &wrapped), 1.0);
    }

    #[test]
    fn error_ratio_and_quantile_between_scrapes_with_a_reset() {
        let first = snap(PAGE1);
        // 40 more 200s, 10 more 503s, and a new series of 500s.
        let page2 = PAGE1
            .replace("{status=\"200\"} 90", "{status=\"200\"} 130")
            .replace(
                "{status=\"503\"} 10",
                "{status=\"503\"} 20\nhttp_requests_total{status=\"500\"} 5",
            );
        let second = snap(&page2);
        let m = ScrapeMeasure::error_ratio(&HttpMetrics::default()).unwrap();
        let r = one(&m, &first, &second, 5).unwrap();
        assert_eq!(r.value, Some(15.0 / 55.0));
        assert_eq!(r.traffic, 11.0);
        // A restarted process: counters lower than before count from 0.
        let restarted = snap(
            "# TYPE http_requests_total counter\nhttp_requests_total{status=\"200\"} 3\nhttp_requests_total{status=\"503\"} 1\n",
        );
        let r = one(&m, &second, &restarted, 1).unwrap();
        assert_eq!(r.value, Some(0.25));
        // Histogram: the increase is 100 -> 200 with every new observation in (0.5, 1].
        let page3 = PAGE1
            .replace("le=\"1\"} 100", "le=\"1\"} 200")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200")
            .replace("_sum 20", "_sum 100")
            .replace("_count 100", "_count 200");
        let third = snap(&page3);
        let q = ScrapeMeasure::quantile(&HttpMetrics::default(), 0.99);
        let r = one(&q, &first, &third, 10).unwrap();
        assert!((r.value.unwrap() - 0.995).abs() < 1e-12, "{r:?}");
        assert_eq!(r.traffic, 10.0);
        let mean = ScrapeMeasure::mean_latency(&HttpMetrics::default());
        assert_eq!(one(&mean, &first, &third, 1).unwrap().value, Some(0.8));
        // Nothing happened: NaN; metric absent: None.
        assert!(one(&m, &first, &first, 1).unwrap().value.unwrap().is_nan());
        let other =
            ScrapeMeasure::request_rate(&HttpMetrics::default().requests_total("nope_total"));
        assert_eq!(one(&other, &first, &first, 1).unwrap().value, None);
    }

    #[test]
    fn nonsense_values_are_errors_naming_the_series_and_the_url() {
        let m = ScrapeMeasure::error_ratio(&HttpMetrics::default()).unwrap();
        let ok = snap("http_requests_total{status=\"200\"} 5\n");
        for bad in ["-1", "NaN", "+Inf"] {
            let page = snap(&format!("http_requests_total{{status=\"200\"}} {bad}\n"));
            let e = one(&m, &ok, &page, 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            let text = e.to_string();
            assert!(
                text.contains("http_requests_total{status=\"200\"} from http://test/metrics"),
                "{text}"
            );
            // Also when the earlier scrape had it.
            assert!(one(&m, &page, &ok, 1).is_err());
        }
        let q = ScrapeMeasure::quantile(&HttpMetrics::default(), 0.5);
        let no_inf = snap("http_request_duration_seconds_bucket{le=\"1\",route=\"/a\"} 5\n");
        let e = one(&q, &no_inf, &no_inf, 1).unwrap_err();
        assert!(e.to_string().contains("le=\"+Inf\""), "{e}");
        assert!(e.to_string().contains("route=\"/a\""), "{e}");
        let nan_sum =
            snap("http_request_duration_seconds_sum NaN\nhttp_request_duration_seconds_count 1\n");
        let mean = ScrapeMeasure::mean_latency(&HttpMetrics::default());
        assert!(one(&mean, &nan_sum, &nan_sum, 1).is_err());
        // A series twice on one page is refused when the page is read.
        let e = Snapshot::parse("u", "x{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 2\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("x{a=\"1\",b=\"2\"}"),
            "{e}"
        );
    }

    /// `histogram_quantile` as Prometheus 2.42 defines it, written plainly (a linear search) as
    /// an oracle for valid input: non-negative finite counts, finite bounds and `+Inf`.
    fn reference_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
        let mut b = buckets.to_vec();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut m: Vec<(f64, f64)> = Vec::new();
        for (le, c) in b {
            if let Some(last) = m.last_mut().filter(|l| l.0 == le) {
                last.1 += c;
            } else {
                m.push((le, c));
            }
        }
        for i in 1..m.len() {
            m[i].1 = m[i].1.max(m[i - 1].1);
        }
        if m.len() < 2 || m.last().unwrap().0 != f64::INFINITY || m.last().unwrap().1 == 0.0 {
            return f64::NAN;
        }
        let total = m.last().unwrap().1;
        let rank = q * total;
        let b = (0..m.len() - 1)
            .find(|&i| m[i].1 >= rank)
            .unwrap_or(m.len() - 1);
        if b == m.len() - 1 {
            return m[m.len() - 2].0;
        }
        if b == 0 && m[0].0 <= 0.0 {
            return m[0].0;
        }
        let (lo, lo_count) = if b == 0 { (0.0, 0.0) } else { m[b - 1] };
        lo + (m[b].0 - lo) * ((rank - lo_count) / (m[b].1 - lo_count))
    }

    fn valid_buckets() -> impl Strategy<Value = Vec<(f64, f64)>> {
        (
            proptest::collection::vec(
                (
                    prop_oneof![(-5i32..20).prop_map(|i| f64::from(i) * 0.25), -1e6..1e6f64],
                    prop_oneof![(0u32..100).prop_map(f64::from), 0.0..1e9f64],
                ),
                1..10,
            ),
            prop_oneof![(0u32..100).prop_map(f64::from), 0.0..1e9f64],
        )
            .prop_map(|(mut b, inf)| {
                b.push((f64::INFINITY, inf));
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn quantiles_of_arbitrary_buckets_never_panic(
            q in prop_oneof![any::<f64>(), 0.0..=1.0f64],
            buckets in proptest::collection::vec((any::<f64>(), any::<f64>()), 0..10),
            with_inf in any::<bool>(),
        ) {
            let mut b = buckets;
            if with_inf {
                b.push((f64::INFINITY, 1.0));
            }
            let _ = bucket_quantile(q, &b);
        }

        #[test]
        fn quantiles_of_valid_buckets_are_prometheus_and_within_the_bounds(
            b in valid_buckets(),
            q1 in 0.0f64..=1.0,
            q2 in 0.0f64..=1.0,
        ) {
            let (lo, hi) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
            let (a, z) = (bucket_quantile(lo, &b), bucket_quantile(hi, &b));
            for (q, got) in [(lo, a), (hi, z)] {
                let want = reference_quantile(q, &b);
                prop_assert!(
                    (got.is_nan() && want.is_nan()) || (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "q{q}: {got} vs {want} for {b:?}"
                );
            }
            if a.is_nan() {
                // Only when nothing was observed (or everything fell at one bound).
                prop_assert!(z.is_nan() || b.iter().all(|x| x.1 == 0.0) || z == a);
            } else {
                let finite = b.iter().map(|x| x.0).filter(|x| x.is_finite());
                let top = finite.clone().fold(f64::NEG_INFINITY, f64::max);
                let bottom = finite.fold(0.0, f64::min);
                prop_assert!(a <= z + 1e-9 * z.abs().max(1.0), "q{lo} = {a} > q{hi} = {z}");
                prop_assert!((bottom..=top).contains(&a) && (bottom..=top).contains(&z),
                    "{a}, {z} outside [{bottom}, {top}] for {b:?}");
            }
        }

        #[test]
        fn measuring_arbitrary_histogram_pages_never_panics(
            before in proptest::collection::vec(any::<f64>(), 4),
            after in proptest::collection::vec(prop_oneof![any::<f64>(), (0u32..1000).prop_map(f64::from)], 4),
            drop_inf in any::<bool>(),
        ) {
            let page = |counts: &[f64]| {
                let mut s = String::new();
                for (le, c) in ["0.1", "0.5", "1", "+Inf"].iter().zip(counts) {
                    if drop_inf && *le == "+Inf" {
                        continue;
                    }
                    let v = if c.is_nan() { "NaN".to_owned() } else if c.is_infinite() {
                        if *c > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
                    } else { format!("{c:e}") };
                    s.push_str(&format!("http_request_duration_seconds_bucket{{le=\"{le}\"}} {v}\n"));
                }
                snap(&s)
            };
            let q = ScrapeMeasure::quantile(&HttpMetrics::default(), 0.99);
            let (p, c) = (page(&before), page(&after));
            match one(&q, &p, &c, 1) {
                Ok(m) => {
                    let v = m.value.unwrap();
                    prop_assert!(!drop_inf);
                    prop_assert!(before.iter().chain(&after).all(|x| x.is_finite() && *x >= 0.0));
                    prop_assert!(v.is_nan() || (0.0..=1.0).contains(&v), "{v}");
                }
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.contains("http://test/metrics"), "{text}");
                    prop_assert!(drop_inf || before.iter().chain(&after).any(|x| !x.is_finite() || *x < 0.0), "{text}");
                }
            }
        }
    }

    /// The same bucket sets through a real Prometheus 2.42's `histogram_quantile`: the buckets
    /// are built in PromQL (`label_replace(vector(count), "le", bound, "", "")`), one `case`
    /// label per set, so one query answers every set for one q.
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn quantiles_agree_with_a_real_prometheus() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let prom = crate::testing::PrometheusServer::start(&[]).await.unwrap();
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        );
        // Valid sets, plus unsorted and non-monotonic ones, negative and NaN counts.
        let strategy = proptest::collection::vec(
            (
                (-4i32..12).prop_map(|i| f64::from(i) * 0.25),
                prop_oneof![
                    6 => (0u32..50).prop_map(f64::from),
                    1 => (-20i32..0).prop_map(f64::from),
                    1 => Just(f64::NAN),
                ],
            ),
            1..7,
        );
        let mut sets: Vec<Vec<(f64, f64)>> = Vec::new();
        for _ in 0..40 {
            let mut b = strategy.new_tree(&mut runner).unwrap().current();
            b.push((f64::INFINITY, f64::from(sets.len() as u32 % 60)));
            sets.push(b);
        }
        let promql_number = |v: f64| {
            if v.is_nan() {
                "NaN".to_owned()
            } else {
                format!("{v}")
            }
        };
        // A bound repeated in a set is spelled with more decimals each time ("0.50", "0.500"):
        // distinct series for PromQL, one bound once parsed, which Prometheus then merges.
        let mut parts = Vec::new();
        for (case, set) in sets.iter().enumerate() {
            let mut seen: Vec<f64> = Vec::new();
            for (le, count) in set {
                let repeats = seen.iter().filter(|x| *x == le).count();
                seen.push(*le);
                let bound = if le.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    format!("{le:.prec$}", prec = 2 + repeats)
                };
                parts.push(format!(
                    r#"label_replace(label_replace(vector({}), "le", "{bound}", "", ""), "case", "{case}", "", "")"#,
                    promql_number(*count),
                ));
            }
        }
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let query = format!("histogram_quantile({q}, {})", parts.join(" or "));
            let crate::QueryResult::Vector(answer) = prom.client().query(&query).await.unwrap()
            else {
                panic!("not a vector");
            };
            assert_eq!(answer.len(), sets.len(), "{answer:?}");
            for sample in answer {
                let case: usize = sample.labels["case"].parse().unwrap();
                let ours = bucket_quantile(q, &sets[case]);
                let theirs = sample.value;
                assert!(
                    (ours.is_nan() && theirs.is_nan())
                        || ours == theirs
                        || (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
                    "q = {q}, buckets {:?}: Prometheus says {theirs}, we say {ours}",
                    sets[case]
                );
            }
        }
    }
}
