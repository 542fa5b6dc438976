//! [`PromQlGate`]: a PromQL query judged by a [`Condition`], with a traffic floor.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::{
    Error, ErrorKind, GateContext, MetricGate, Result, TargetId, Verdict, VerdictKind,
};

use deploy_core::units::{Quantity, Unit};

use crate::client::{PrometheusClient, QueryResult};
use crate::condition::Condition;
use crate::metrics::HttpMetrics;
use crate::template::{Template, ids_regex, promql_duration, query_lookback};

/// How a gate turns several values (series of a vector, points of a range) into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Reduce {
    /// The value furthest on the failing side of the condition: the maximum for `<`/`<=`, the
    /// minimum for `>`/`>=`, whichever end leaves a range first.
    #[default]
    Worst,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
    /// The arithmetic mean.
    Mean,
    /// The sum.
    Sum,
}

impl Reduce {
    pub(crate) fn apply(self, values: &[f64], condition: &Condition) -> f64 {
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        match self {
            Self::Max => max,
            Self::Min => min,
            Self::Sum => values.iter().sum(),
            Self::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Self::Worst => match condition {
                Condition::Below(_) | Condition::AtMost(_) => max,
                Condition::Above(_) | Condition::AtLeast(_) => min,
                Condition::Between(lo, _) => {
                    if min < *lo {
                        min
                    } else {
                        max
                    }
                }
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Floor {
    query: Template,
    min: f64,
}

/// A metric gate over Prometheus: renders its query template for the canary, runs it (instant,
/// or over a lookback range), and judges the value by its condition.
///
/// Outcomes, each carrying the rendered query (as `source`), the value and the condition:
/// - **Pass** / **Fail**: the condition holds / does not hold for the value.
/// - **Inconclusive**: no series at all (`no_data`), only NaN values (a 0/0 rate with no
///   requests), fewer values than [`min_samples`](PromQlGateBuilder::min_samples), or traffic
///   below the [floor](PromQlGateBuilder::traffic_floor).
/// - **Error**: Prometheus unreachable, an HTTP error, `status: "error"` JSON, malformed JSON, or
///   a result type the condition cannot use (a string, a range vector from an instant query).
///
/// Template variables: `{{target}}` (the canary ids as a regular expression for `=~`, e.g.
/// `blue|green`), `{{baseline}}` (the same for the baseline), `{{version}}`, `{{window}}` (the
/// gate's window as a PromQL duration such as `5m`), and custom ones from
/// [`var`](PromQlGateBuilder::var).
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_prometheus::{HttpMetrics, PrometheusClient, PromQlGate};
/// let client = PrometheusClient::new("http://127.0.0.1:9090")?;
/// let errors = PromQlGate::error_rate_below(client.clone(), 0.01, &HttpMetrics::default())
///     .window(Duration::from_secs(300))
///     .build()?;
/// let custom = PromQlGate::builder("queue-depth", client)
///     .query(r#"max(queue_depth{slot=~"{{target}}"})"#)
///     .condition("< 100")
///     .build()?;
/// # let _ = (errors, custom); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PromQlGate {
    name: String,
    client: PrometheusClient,
    query: Template,
    condition: Condition,
    window: Duration,
    vars: BTreeMap<String, String>,
    reduce: Reduce,
    min_samples: usize,
    floor: Option<Floor>,
    range: Option<(Duration, Duration)>,
    /// How far back one evaluation looks, computed when built (see [`MetricGate::lookback`]).
    lookback: Duration,
    unit: Option<Unit>,
}

/// Builds a [`PromQlGate`]; [`build`](PromQlGateBuilder::build) checks everything at once.
#[derive(Debug, Clone)]
#[must_use]
pub struct PromQlGateBuilder {
    name: String,
    client: PrometheusClient,
    query: Option<String>,
    condition: Option<std::result::Result<Condition, String>>,
    window: Duration,
    vars: BTreeMap<String, String>,
    reduce: Reduce,
    min_samples: usize,
    floor: Option<String>,
    min_traffic: Option<f64>,
    range: Option<Duration>,
    range_step: Option<Duration>,
    unit: Option<Unit>,
}

/// The step of a range gate unless [`range_step`](PromQlGateBuilder::range_step) says otherwise.
const DEFAULT_RANGE_STEP: Duration = Duration::from_secs(10);

impl PromQlGateBuilder {
    /// The PromQL query template (required).
    pub fn query(mut self, template: impl Into<String>) -> Self {
        self.query = Some(template.into());
        self
    }

    /// The condition for a pass, as text (`"< 0.01"`, `"<= 2"`, `"0.5..2"`).
    pub fn condition(mut self, condition: &str) -> Self {
        self.condition = Some(condition.parse::<Condition>().map_err(|e| e.to_string()));
        self
    }

    /// The condition for a pass.
    pub fn condition_is(mut self, condition: Condition) -> Self {
        self.condition = Some(Ok(condition));
        self
    }

    /// What the query's value measures, so that verdicts show it with its unit (`4.9 %`,
    /// `4.95 ms`); the presets set it.
    pub fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    /// The value of `{{window}}` (default 5 minutes).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// A custom template variable `{{name}}`.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// How several values become one (default [`Reduce::Worst`]).
    pub fn reduce(mut self, reduce: Reduce) -> Self {
        self.reduce = reduce;
        self
    }

    /// Fewer values than `n` (series of an instant vector, points of a range) is Inconclusive
    /// (default 1).
    pub fn min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }

    /// A precondition: `query` (a template answering one number, such as requests per second)
    /// must be above 0 and at least [`min_traffic`](Self::min_traffic), otherwise the verdict
    /// is Inconclusive. The presets set one.
    pub fn traffic_floor(mut self, query: impl Into<String>) -> Self {
        self.floor = Some(query.into());
        self
    }

    /// The least traffic the [traffic floor](Self::traffic_floor) accepts (default: anything
    /// above 0), in its query's unit (requests per second for the presets).
    pub fn min_traffic(mut self, min: f64) -> Self {
        self.min_traffic = Some(min);
        self
    }

    /// Judge every point of `query_range` over the last `lookback` instead of one instant
    /// value; the points are [`range_step`](Self::range_step) apart.
    pub fn range(mut self, lookback: Duration) -> Self {
        self.range = Some(lookback);
        self
    }

    /// The time between the points of a [range](Self::range) gate (default 10 s).
    pub fn range_step(mut self, step: Duration) -> Self {
        self.range_step = Some(step);
        self
    }

    /// Check everything and build the gate; the error lists every problem found.
    pub fn build(self) -> Result<PromQlGate> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("the name is empty".to_owned());
        }
        let custom: Vec<String> = self.vars.keys().cloned().collect();
        for k in &custom {
            if crate::template::BUILTIN.contains(&k.as_str()) {
                problems.push(format!("variable `{k}` is built in and cannot be set"));
            }
        }
        let query = match &self.query {
            None => {
                problems.push("no query".to_owned());
                None
            }
            Some(q) => Template::parse(q, &custom)
                .map_err(|e| problems.push(e.to_string()))
                .ok(),
        };
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
        let min = self.min_traffic.unwrap_or(0.0);
        if !min.is_finite() || min < 0.0 {
            problems.push(format!("min traffic {min} is not a number >= 0"));
        }
        let floor = match &self.floor {
            None => {
                if self.min_traffic.is_some() {
                    problems.push("min traffic is set, but there is no traffic floor".to_owned());
                }
                None
            }
            Some(q) => Template::parse(q, &custom)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
                .map(|query| Floor { query, min }),
        };
        if self.window.is_zero() {
            problems.push("the window is 0".to_owned());
        }
        let range = match (self.range, self.range_step) {
            (None, None) => None,
            (None, Some(_)) => {
                problems.push("a range step is set, but no range".to_owned());
                None
            }
            (Some(lookback), step) => {
                let step = step.unwrap_or(DEFAULT_RANGE_STEP);
                if step.is_zero() || lookback < step {
                    problems.push(format!(
                        "range {lookback:?} and step {step:?}: the step must be > 0 and <= the range"
                    ));
                }
                Some((lookback, step))
            }
        };
        match (query, condition, problems.is_empty()) {
            (Some(query), Some(condition), true) => {
                // Every variable but the targets and the version is known now, and those
                // render inside label matchers, where no range is.
                let vars = variables(&self.vars, self.window, &[], &[], "");
                let lookback = range
                    .map_or(Duration::ZERO, |(lookback, _)| lookback)
                    .saturating_add(query_lookback(&query.render(&vars)))
                    .max(
                        floor
                            .as_ref()
                            .map_or(Duration::ZERO, |f| query_lookback(&f.query.render(&vars))),
                    );
                Ok(PromQlGate {
                    name: self.name,
                    client: self.client,
                    query,
                    condition,
                    window: self.window,
                    vars: self.vars,
                    reduce: self.reduce,
                    min_samples: self.min_samples.max(1),
                    floor,
                    range,
                    lookback,
                    unit: self.unit,
                })
            }
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("PromQL gate {:?}", self.name),
                problems.join("; "),
            )),
        }
    }
}

impl PromQlGate {
    /// A builder for a gate named `name` querying `client`.
    pub fn builder(name: impl Into<String>, client: PrometheusClient) -> PromQlGateBuilder {
        PromQlGateBuilder {
            name: name.into(),
            client,
            query: None,
            condition: None,
            window: Duration::from_secs(300),
            vars: BTreeMap::new(),
            reduce: Reduce::Worst,
            min_samples: 1,
            floor: None,
            min_traffic: None,
            range: None,
            range_step: None,
            unit: None,
        }
    }

    /// The usual error-rate alert rule as a gate named `error-rate`: the share of requests with
    /// an error status over `{{window}}` must be at most `max` (the alert
    /// `rate(errors[5m]) / rate(requests[5m]) > max` fires exactly when this gate fails). The
    /// error rate is `or vector(0)`, because client libraries create the error series only at
    /// the first error: without it, a service with no errors would have no data. No requests
    /// in the window is Inconclusive; raise the floor with
    /// [`min_traffic`](PromQlGateBuilder::min_traffic).
    pub fn error_rate_below(
        client: PrometheusClient,
        max: f64,
        metrics: &HttpMetrics,
    ) -> PromQlGateBuilder {
        let errors = metrics.selector(&[format!(
            "{}=~\"{}\"",
            metrics.status_label, metrics.error_status
        )]);
        let all = metrics.selector(&[]);
        let total = format!("sum(rate({}{all}[{{{{window}}}}]))", metrics.requests_total);
        Self::builder("error-rate", client)
            .query(format!(
                "(sum(rate({}{errors}[{{{{window}}}}])) or vector(0)) / {total}",
                metrics.requests_total
            ))
            .condition_is(Condition::AtMost(max))
            .unit(Unit::Ratio)
            .traffic_floor(total)
    }

    /// The usual latency alert rule as a gate named `p99-latency`: the 99th percentile of the
    /// latency histogram over `{{window}}` must be at most `max` (in seconds, as the histogram
    /// records them). No requests in the window is Inconclusive.
    pub fn p99_latency_below(
        client: PrometheusClient,
        max: Duration,
        metrics: &HttpMetrics,
    ) -> PromQlGateBuilder {
        Self::latency_quantile_below("p99-latency", client, 0.99, max, metrics)
    }

    /// Like [`p99_latency_below`](Self::p99_latency_below) for any quantile `q` in `[0, 1]`.
    pub fn latency_quantile_below(
        name: &str,
        client: PrometheusClient,
        q: f64,
        max: Duration,
        metrics: &HttpMetrics,
    ) -> PromQlGateBuilder {
        let sel = metrics.selector(&[]);
        let h = &metrics.duration_histogram;
        Self::builder(name, client)
            .query(format!(
                "histogram_quantile({q}, sum by (le) (rate({h}_bucket{sel}[{{{{window}}}}])))"
            ))
            .condition_is(Condition::AtMost(max.as_secs_f64()))
            .unit(Unit::Seconds)
            .traffic_floor(format!("sum(rate({h}_count{sel}[{{{{window}}}}]))"))
    }

    /// The query template as configured.
    pub fn query_template(&self) -> &str {
        self.query.text()
    }

    /// The condition for a pass.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// The query as it runs for `ctx`'s canary.
    pub fn render(&self, ctx: &GateContext) -> String {
        self.query.render(&self.variables(ctx, &ctx.canary))
    }

    /// The client it queries.
    pub fn client(&self) -> &PrometheusClient {
        &self.client
    }

    fn variables(&self, ctx: &GateContext, targets: &[TargetId]) -> BTreeMap<String, String> {
        variables(
            &self.vars,
            self.window,
            targets,
            &ctx.baseline,
            ctx.version.as_str(),
        )
    }

    /// Values of `query`: series of the vector or the scalar (instant), or every point (range).
    async fn values(&self, query: &str) -> Result<Vec<f64>> {
        if let Some((lookback, step)) = self.range {
            let end = SystemTime::now();
            let start = end.checked_sub(lookback).unwrap_or(SystemTime::UNIX_EPOCH);
            let series = self.client.query_range(query, start, end, step).await?;
            return Ok(series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .collect());
        }
        match self.client.query(query).await? {
            QueryResult::Vector(v) => Ok(v.iter().map(|s| s.value).collect()),
            QueryResult::Scalar(x) => Ok(vec![x]),
            other => Err(Error::new(
                ErrorKind::Unsupported,
                "judge",
                format!("`{query}`"),
                format!(
                    "the query answers a {}, and a condition can only judge an instant vector or a scalar",
                    other.type_name()
                ),
            )),
        }
    }
}

/// The values of a template's variables: the custom ones, then the built-in ones.
pub(crate) fn variables(
    custom: &BTreeMap<String, String>,
    window: Duration,
    targets: &[TargetId],
    baseline: &[TargetId],
    version: &str,
) -> BTreeMap<String, String> {
    let mut vars = custom.clone();
    vars.insert("target".into(), ids_regex(targets));
    vars.insert("baseline".into(), ids_regex(baseline));
    vars.insert("version".into(), version.to_owned());
    vars.insert("window".into(), promql_duration(window));
    vars
}

/// Judge `values` by `condition`: the shared tail of both gates.
pub(crate) fn judge_values(
    values: &[f64],
    condition: &Condition,
    reduce: Reduce,
    min_samples: usize,
    source: &str,
    what: &str,
    unit: Option<Unit>,
) -> Verdict {
    judge_values_unitless(values, condition, reduce, min_samples, source, what, unit)
        .with_unit(unit)
}

fn judge_values_unitless(
    values: &[f64],
    condition: &Condition,
    reduce: Reduce,
    min_samples: usize,
    source: &str,
    what: &str,
    unit: Option<Unit>,
) -> Verdict {
    // The verdict keeps the condition as data (`<= 0.01`); its reason reads with the unit.
    let cond = condition.to_string();
    if values.is_empty() {
        let mut v = Verdict::no_data(cond, source);
        v.reason = format!("no data: {what} returned no series");
        return v;
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if finite.is_empty() {
        return Verdict::new(
            VerdictKind::Inconclusive,
            None,
            cond,
            source,
            format!(
                "all {} values are NaN (e.g. 0/0 with no requests in the window)",
                values.len()
            ),
        );
    }
    let value = reduce.apply(&finite, condition);
    if finite.len() < min_samples {
        return Verdict::new(
            VerdictKind::Inconclusive,
            Some(value),
            cond,
            source,
            format!(
                "only {} samples, at least {min_samples} are needed",
                finite.len()
            ),
        );
    }
    let nan_note = if finite.len() < values.len() {
        format!(" ({} NaN values ignored)", values.len() - finite.len())
    } else {
        String::new()
    };
    let (kind, verb) = if condition.holds(value) {
        (VerdictKind::Pass, "holds")
    } else {
        (VerdictKind::Fail, "does not hold")
    };
    Verdict::new(
        kind,
        Some(value),
        &cond,
        source,
        format!(
            "value {} over {} samples: `{}` {verb}{nan_note}",
            Quantity(value, unit),
            finite.len(),
            deploy_core::units::condition(&cond, unit)
        ),
    )
}

pub(crate) fn error_verdict(condition: &Condition, source: &str, e: &Error) -> Verdict {
    Verdict::new(
        VerdictKind::Error,
        None,
        condition.to_string(),
        source,
        format!("{} ({})", e.chain(), e.kind()),
    )
}

#[async_trait]
impl MetricGate for PromQlGate {
    fn name(&self) -> &str {
        &self.name
    }

    /// Zero: an evaluation is one or two queries, limited by the client's timeout.
    fn evaluation_time(&self) -> Duration {
        Duration::ZERO
    }

    /// The largest range of the rendered query (`[5m]`, with any `offset` and subquery),
    /// plus the [range](PromQlGateBuilder::range) of a range gate, or the traffic floor's
    /// range if that is larger: an analysis shorter than this would judge traffic from before
    /// it began.
    fn lookback(&self) -> Duration {
        self.lookback
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let vars = self.variables(ctx, &ctx.canary);
        let query = self.query.render(&vars);
        let source = format!("{query} @ {}", self.client.shown_url());
        if let Some(floor) = &self.floor {
            let fq = floor.query.render(&vars);
            let traffic = match self.client.query(&fq).await {
                Ok(QueryResult::Vector(v)) if v.is_empty() => {
                    // The request counter does not exist yet: nothing was ever served.
                    let mut verdict = Verdict::no_data(self.condition.to_string(), &source);
                    verdict.reason =
                        format!("no data: the traffic query `{fq}` returned no series");
                    return Ok(verdict);
                }
                Ok(QueryResult::Vector(v)) => {
                    v.iter().map(|s| s.value).filter(|x| !x.is_nan()).sum()
                }
                Ok(QueryResult::Scalar(x)) => x,
                Ok(other) => {
                    let e = Error::new(
                        ErrorKind::Unsupported,
                        "read traffic floor",
                        format!("`{fq}`"),
                        format!(
                            "the query answers a {}, a number was expected",
                            other.type_name()
                        ),
                    );
                    return Ok(error_verdict(&self.condition, &source, &e));
                }
                Err(e) => return Ok(error_verdict(&self.condition, &source, &e)),
            };
            if traffic.is_nan() || traffic <= 0.0 || traffic < floor.min {
                return Ok(Verdict::new(
                    VerdictKind::Inconclusive,
                    None,
                    self.condition.to_string(),
                    &source,
                    format!(
                        "traffic {traffic}/s is below the floor (at least {}/s and more than 0) by `{fq}`",
                        floor.min
                    ),
                ));
            }
        }
        let verdict = match self.values(&query).await {
            Ok(values) => judge_values(
                &values,
                &self.condition,
                self.reduce,
                self.min_samples,
                &source,
                "the query",
                self.unit,
            ),
            Err(e) => error_verdict(&self.condition, &source, &e),
        };
        tracing::debug!(gate = %self.name, %verdict, "PromQL gate evaluated");
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::Version;

    fn client() -> PrometheusClient {
        PrometheusClient::new("http://127.0.0.1:9").unwrap()
    }

    #[test]
    fn presets_render_the_alert_rules_for_the_canary() {
        let ctx = GateContext::new(
            Version::new("2.1.0").unwrap(),
            vec![TargetId::new("green").unwrap()],
            vec![TargetId::new("blue").unwrap()],
        );
        let g = PromQlGate::error_rate_below(client(), 0.01, &HttpMetrics::default())
            .build()
            .unwrap();
        assert_eq!(
            g.render(&ctx),
            r#"(sum(rate(http_requests_total{status=~"5..",target=~"green"}[5m])) or vector(0)) / sum(rate(http_requests_total{target=~"green"}[5m]))"#
        );
        assert_eq!(g.condition().to_string(), "<= 0.01");
        let g = PromQlGate::p99_latency_below(
            client(),
            Duration::from_secs(2),
            &HttpMetrics::default().without_target_label(),
        )
        .window(Duration::from_secs(60))
        .build()
        .unwrap();
        assert_eq!(
            g.render(&ctx),
            "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))"
        );
        assert_eq!(g.condition().to_string(), "<= 2");
    }

    #[test]
    fn build_reports_every_problem() {
        let e = PromQlGate::builder("", client())
            .condition("== 3")
            .var("target", "x")
            .window(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        for part in [
            "name is empty",
            "no query",
            "condition",
            "built in",
            "window is 0",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        let e = PromQlGate::builder("x", client())
            .query("up{a=\"{{nope}}\"}")
            .condition("< 1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("unknown variable"), "{e}");
        // A minimum without a floor, a step without a range: settings that would do nothing.
        let e = PromQlGate::builder("x", client())
            .query("up")
            .condition("< 1")
            .min_traffic(2.0)
            .range_step(Duration::from_secs(1))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no traffic floor") && e.contains("no range"),
            "{e}"
        );
        let e = PromQlGate::builder("x", client())
            .query("up")
            .condition("< 1")
            .range(Duration::from_secs(5))
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("the step must be > 0 and <= the range"), "{e}");
        let g = PromQlGate::builder("x", client())
            .query("rate(up[1m])")
            .condition("< 1")
            .traffic_floor("sum(rate(requests[2m]))")
            .min_traffic(0.5)
            .range(Duration::from_secs(60))
            .build()
            .unwrap();
        assert_eq!(g.lookback(), Duration::from_secs(120));
    }

    #[test]
    fn judging_values() {
        let c = Condition::AtMost(0.01);
        let v = judge_values(&[], &c, Reduce::Worst, 1, "q", "the query", None);
        assert!(v.no_data && v.kind == VerdictKind::Inconclusive);
        let v = judge_values(&[f64::NAN], &c, Reduce::Worst, 1, "q", "the query", None);
        assert_eq!(v.kind, VerdictKind::Inconclusive);
        assert!(!v.no_data);
        let v = judge_values(&[0.001, 0.02], &c, Reduce::Worst, 1, "q", "the query", None);
        assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(0.02)));
        let v = judge_values(&[0.001, 0.02], &c, Reduce::Min, 1, "q", "the query", None);
        assert_eq!((v.kind, v.value), (VerdictKind::Pass, Some(0.001)));
        let v = judge_values(
            &[0.001, 0.002],
            &c,
            Reduce::Worst,
            3,
            "q",
            "the query",
            None,
        );
        assert_eq!(v.kind, VerdictKind::Inconclusive);
        assert!(v.reason.contains("only 2 samples"), "{}", v.reason);
        let between = Condition::Between(1.0, 2.0);
        assert_eq!(Reduce::Worst.apply(&[0.5, 1.5], &between), 0.5);
        assert_eq!(Reduce::Worst.apply(&[1.5, 2.5], &between), 2.5);
        assert_eq!(
            Reduce::Worst.apply(&[1.0, 3.0], &Condition::AtLeast(2.0)),
            1.0
        );
    }
}
