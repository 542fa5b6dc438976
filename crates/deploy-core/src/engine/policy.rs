//! The engine's policies: how long to wait, how often to look, what to tolerate.
//!
//! These live in the engine, not in the adapters, so every probe, gate and switch is treated the
//! same way. Argo Rollouts' analysis model is the reference for [`AnalysisPolicy`]; consecutive
//! failure limits and a no-data policy are added because its users keep asking for them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::strategy::ConfigProblem;

/// How health is awaited.
///
/// A wait ends healthy after [`healthy_threshold`](Self::healthy_threshold) healthy checks in a
/// row. It fails:
/// - after [`unhealthy_threshold`](Self::unhealthy_threshold) checks in a row that the target
///   *answered* and said it is unhealthy (a 503, a field that says `down`): a broken release is
///   found within that many intervals;
/// - at the first answer that reports another version than the one activated: it can never
///   become healthy (an activation returns only once the new release is what answers, see
///   [`Target`](crate::traits::Target));
/// - at the [`deadline`](Self::deadline) otherwise. Checks that get no answer at all
///   (connection refused, no answer in time) count only toward the deadline and neither add to
///   nor reset the unhealthy count: a service refuses connections for a moment while it
///   restarts, and one that is slow to start is still waited for until the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProbePolicy {
    /// Time between two checks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time limit of one check.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive healthy checks needed.
    pub healthy_threshold: u32,
    /// Consecutive answered unhealthy checks that fail the wait at once; 0 waits for the
    /// deadline only. A healthy check starts the count again; a check without an answer leaves
    /// it as it is.
    pub unhealthy_threshold: u32,
    /// Give up (and roll back) when not healthy after this long.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            deadline: Duration::from_secs(60),
        }
    }
}

/// What a verdict that found no data at all counts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// Counts as Inconclusive (the default: no traffic is no evidence either way).
    #[default]
    Inconclusive,
    /// Counts as a failure (Flagger's behaviour).
    Fail,
    /// Counts as a pass.
    Pass,
    /// Is not counted at all; the analysis measures again at the next interval.
    Ignore,
}

/// What the engine does when an analysis ends Inconclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusiveAction {
    /// Roll back (the default: nobody confirmed the release is good).
    #[default]
    Rollback,
    /// Pause until the operator promotes or aborts (Argo Rollouts' behaviour).
    Pause,
    /// Carry on as if it passed.
    Proceed,
}

/// How gates are evaluated during an `Analyze` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AnalysisPolicy {
    /// Time between two measurements; the first is taken one interval after the step starts.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Number of measurements; when absent, the step's duration divided by the interval (at
    /// least one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Failures tolerated per gate; one more fails the analysis.
    pub failure_limit: u32,
    /// Consecutive failures tolerated per gate; one more fails the analysis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failure_limit: Option<u32>,
    /// Inconclusive measurements tolerated per gate; one more ends the analysis Inconclusive.
    pub inconclusive_limit: u32,
    /// Consecutive errors tolerated per gate (metrics source unreachable...); one more ends the
    /// analysis in Error, which rolls back.
    pub consecutive_error_limit: u32,
    /// What a measurement without any data counts as.
    pub no_data: NoDataPolicy,
    /// What an Inconclusive analysis leads to.
    pub on_inconclusive: InconclusiveAction,
    /// Time limit of one gate evaluation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The gates, by name, that judge blue-green's pre-switch analysis; all of them when
    /// absent. Before the switch the idle slot serves no requests, so a gate that judges served
    /// traffic (an error rate, a latency) has nothing to judge there; the smoke checks (gate
    /// `smoke`) make their own requests and do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_switch_gates: Option<Vec<String>>,
    /// Something sends the idle slot traffic before the switch (a load generator, mirrored
    /// requests), so gates that judge served traffic can judge the pre-switch analysis. The
    /// engine does not read it; a plan file's validation does.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idle_traffic: bool,
}

impl Default for AnalysisPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            count: None,
            failure_limit: 0,
            consecutive_failure_limit: None,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            no_data: NoDataPolicy::default(),
            on_inconclusive: InconclusiveAction::default(),
            timeout: Duration::from_secs(10),
            pre_switch_gates: None,
            idle_traffic: false,
        }
    }
}

impl AnalysisPolicy {
    /// Whether the gate named `gate` judges the analysis named `analysis` (every gate judges
    /// every analysis, except that [`pre_switch_gates`](Self::pre_switch_gates) chooses those
    /// of blue-green's pre-switch analysis).
    pub fn judges(&self, analysis: &str, gate: &str) -> bool {
        match &self.pre_switch_gates {
            Some(names) if analysis == crate::strategy::Step::PRE_SWITCH => {
                names.iter().any(|n| n == gate)
            }
            _ => true,
        }
    }

    /// How many measurements an analysis of `duration` takes.
    pub fn measurements(&self, duration: Duration) -> u32 {
        if let Some(c) = self.count {
            return c.max(1);
        }
        if self.interval.is_zero() {
            return 1;
        }
        let n = duration.as_nanos() / self.interval.as_nanos();
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    /// The time between the ends of two measurements of an analysis of `duration`: the
    /// interval when a count is set, otherwise the duration shared out evenly.
    pub fn spacing(&self, duration: Duration) -> Duration {
        if self.count.is_some() {
            self.interval
        } else {
            duration / self.measurements(duration)
        }
    }

    /// How long an analysis of `duration` really takes when its slowest gate needs
    /// `evaluation` for one measurement (a scrape window): measurements cannot end closer
    /// together than that. Time spent in calls comes on top.
    pub fn wall_time(&self, duration: Duration, evaluation: Duration) -> Duration {
        self.spacing(duration)
            .max(evaluation)
            .saturating_mul(self.measurements(duration))
    }
}

/// Retries of calls that failed with a retryable error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between retries (the wait doubles each time).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The longest wait before retry number `retry` (1-based): the initial backoff doubled
    /// each time, up to the maximum.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The wait before retry number `retry`, with jitter: between half of
    /// [`RetryPolicy::backoff`] and all of it, drawn at random, so that several deploys (or
    /// the steps of one batch) that failed together do not retry in lock-step.
    pub fn jittered_backoff(&self, retry: u32) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let cap = self.backoff(retry);
        // A fresh `RandomState` is seeded from the OS: enough randomness for spreading retries.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let fraction = 0.5 + 0.5 * (r as f64 / u64::MAX as f64);
        cap.mul_f64(fraction)
    }
}

/// What happens when sessions do not reach zero within the drain timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainTimeoutAction {
    /// Carry on and report the sessions left (the default: long-lived connections are common).
    #[default]
    Proceed,
    /// Fail the step, which rolls back.
    Fail,
    /// Close the remaining sessions through the switch ([`TrafficSwitch::cut_sessions`]: HAProxy
    /// puts the server in maintenance and shuts its sessions down), then carry on.
    ///
    /// [`TrafficSwitch::cut_sessions`]: crate::traits::TrafficSwitch::cut_sessions
    Cut,
}

/// How targets are drained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DrainPolicy {
    /// Longest wait for sessions to reach zero.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time between two reads of the session count.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// What happens past the timeout.
    pub on_timeout: DrainTimeoutAction,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            on_timeout: DrainTimeoutAction::default(),
        }
    }
}

impl Policies {
    /// Everything wrong with these policies on their own: a time of zero where a wait, a time
    /// limit or an interval is meant, a count of zero where at least one is meant. The key
    /// paths are relative to the policies (`probe.interval`).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut positive = |path: &str, d: Duration, what: &str, example: &str| {
            if d.is_zero() {
                problems.push(ConfigProblem::new(
                    path,
                    format!("0 {what}; give a duration such as `{example}`"),
                ));
            }
        };
        let p = &self.probe;
        positive(
            "probe.interval",
            p.interval,
            "would probe again without any pause",
            "1s",
        );
        positive(
            "probe.timeout",
            p.timeout,
            "leaves a health check no time to answer",
            "5s",
        );
        positive(
            "probe.deadline",
            p.deadline,
            "leaves a target no time to become healthy",
            "90s",
        );
        let a = &self.analysis;
        positive(
            "analysis.interval",
            a.interval,
            "would take every measurement at once",
            "30s",
        );
        positive(
            "analysis.timeout",
            a.timeout,
            "leaves a gate no time to measure",
            "10s",
        );
        positive(
            "drain.poll_interval",
            self.drain.poll_interval,
            "would read the sessions without any pause",
            "500ms",
        );
        positive(
            "timeouts.call",
            self.timeouts.call,
            "leaves a call no time",
            "60s",
        );
        positive(
            "timeouts.long_call",
            self.timeouts.long_call,
            "leaves a long call (upload, backup, migration) no time",
            "30m",
        );
        if let Some(d) = self.deadline {
            positive("deadline", d, "leaves the run no time", "1h");
        }
        let mut at_least_one = |path: &str, n: u64, what: &str| {
            if n == 0 {
                problems.push(ConfigProblem::new(
                    path,
                    format!("0 {what}; give a whole number of at least 1"),
                ));
            }
        };
        at_least_one(
            "probe.healthy_threshold",
            u64::from(p.healthy_threshold),
            "healthy checks would call any target healthy",
        );
        if let Some(c) = a.count {
            at_least_one(
                "analysis.count",
                u64::from(c),
                "measurements would judge nothing",
            );
        }
        at_least_one(
            "retry.attempts",
            u64::from(self.retry.attempts),
            "attempts would never make a call (1 is no retry)",
        );
        at_least_one(
            "parallelism",
            self.parallelism as u64,
            "steps at a time would never act",
        );
        problems
    }

    /// What in these policies is allowed but probably not meant: an unhealthy threshold that
    /// the deadline comes before (its checks take longer than the deadline, so only the
    /// deadline ever fails a wait). Key paths as in [`problems`](Self::problems).
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut warnings = Vec::new();
        let p = &self.probe;
        if p.unhealthy_threshold > 0
            && p.interval.saturating_mul(p.unhealthy_threshold) > p.deadline
        {
            warnings.push(ConfigProblem::new(
                "probe.unhealthy_threshold",
                format!(
                    "{} checks {} apart take longer than the deadline of {}: the deadline \
                     always comes first, so the threshold never fails a wait; give a smaller \
                     threshold or interval, or 0 to wait for the deadline only",
                    p.unhealthy_threshold,
                    humantime::format_duration(p.interval),
                    humantime::format_duration(p.deadline)
                ),
            ));
        }
        warnings
    }
}

/// All of the engine's policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Policies {
    /// Health probing.
    pub probe: ProbePolicy,
    /// Gate analysis.
    pub analysis: AnalysisPolicy,
    /// Retries.
    pub retry: RetryPolicy,
    /// Draining.
    pub drain: DrainPolicy,
    /// Time limits of calls.
    pub timeouts: Timeouts,
    /// How many steps of one kind on distinct targets (a rolling batch's drains, activations,
    /// health checks; a recreate's stops) run at the same time; 1 runs every step alone.
    pub parallelism: usize,
    /// The whole run must finish within this, or it rolls back.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

fn default_parallelism() -> usize {
    16
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            probe: ProbePolicy::default(),
            analysis: AnalysisPolicy::default(),
            retry: RetryPolicy::default(),
            drain: DrainPolicy::default(),
            timeouts: Timeouts::default(),
            parallelism: default_parallelism(),
            deadline: None,
        }
    }
}

/// Time limits of individual calls to targets, switches, runners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Timeouts {
    /// Quick calls: weights, current version, maintenance, start/stop, activate.
    #[serde(with = "humantime_serde")]
    pub call: Duration,
    /// Long calls: prepare (upload), backup, migrate, revert.
    #[serde(with = "humantime_serde")]
    pub long_call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            call: Duration::from_secs(60),
            long_call: Duration::from_secs(30 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy::default();
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(400));
        assert_eq!(r.backoff(10), Duration::from_secs(5));
        let waits: Vec<Duration> = (0..50).map(|_| r.jittered_backoff(2)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_millis(200) && *w <= Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(
            waits.iter().any(|w| *w != waits[0]),
            "jitter varies: {waits:?}"
        );
    }

    #[test]
    fn measurements_follow_duration_or_count() {
        let mut a = AnalysisPolicy {
            interval: Duration::from_secs(10),
            ..AnalysisPolicy::default()
        };
        assert_eq!(a.measurements(Duration::from_secs(60)), 6);
        assert_eq!(a.measurements(Duration::from_secs(5)), 1);
        assert_eq!(a.spacing(Duration::from_secs(60)), Duration::from_secs(10));
        // A 30 s scrape window makes each of the six measurements take 30 s.
        assert_eq!(
            a.wall_time(Duration::from_secs(60), Duration::from_secs(30)),
            Duration::from_secs(180)
        );
        a.count = Some(3);
        assert_eq!(a.measurements(Duration::from_secs(60)), 3);
        assert_eq!(a.spacing(Duration::from_secs(60)), Duration::from_secs(10));
    }

    #[test]
    fn zero_times_and_counts_are_problems_at_their_keys() {
        let mut p = Policies::default();
        assert!(p.problems().is_empty());
        p.probe.interval = Duration::ZERO;
        p.probe.deadline = Duration::ZERO;
        p.analysis.count = Some(0);
        let paths: Vec<String> = p.problems().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["probe.interval", "probe.deadline", "analysis.count"]
        );
    }

    #[test]
    fn the_unhealthy_threshold_is_three_answers_by_default_and_warned_about_past_the_deadline() {
        let mut p = Policies::default();
        assert_eq!(p.probe.unhealthy_threshold, 3);
        assert!(p.warnings().is_empty());
        p.probe.interval = Duration::from_secs(30);
        let w = p.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "probe.unhealthy_threshold");
        assert!(w[0].message.contains("deadline of 1m"), "{}", w[0].message);
        p.probe.unhealthy_threshold = 0;
        assert!(p.warnings().is_empty(), "0 turns the threshold off");
        assert!(p.problems().is_empty(), "a warning, not a problem");
        let p: Policies = serde_json::from_str(r#"{"probe":{"unhealthy_threshold":5}}"#).unwrap();
        assert_eq!(p.probe.unhealthy_threshold, 5);
        assert_eq!(p.probe.healthy_threshold, 2);
    }

    #[test]
    fn pre_switch_gates_choose_the_gates_of_the_pre_switch_analysis_only() {
        let mut a = AnalysisPolicy::default();
        assert!(a.judges("pre-switch", "error-rate"));
        a.pre_switch_gates = Some(vec!["smoke".into()]);
        assert!(!a.judges(crate::Step::PRE_SWITCH, "error-rate"));
        assert!(a.judges(crate::Step::PRE_SWITCH, "smoke"));
        assert!(a.judges("bake", "error-rate"));
    }

    #[test]
    fn policies_parse_from_partial_json_with_humane_durations() {
        let p: Policies = serde_json::from_str(
            r#"{"probe":{"deadline":"2m"},"analysis":{"failure_limit":2,"no_data":"ignore"}}"#,
        )
        .unwrap();
        assert_eq!(p.probe.deadline, Duration::from_secs(120));
        assert_eq!(p.probe.interval, Duration::from_secs(1));
        assert_eq!(p.analysis.failure_limit, 2);
        assert_eq!(p.analysis.no_data, NoDataPolicy::Ignore);
        assert!(serde_json::from_str::<Policies>(r#"{"probe":{"dedline":"2m"}}"#).is_err());
    }
}
