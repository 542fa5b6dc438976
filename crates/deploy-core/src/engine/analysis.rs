//! Gate analysis: measure every gate at intervals and apply the limits of [`AnalysisPolicy`].

use std::time::Duration;

use tokio::time::Instant;

use super::call::{Failure, with_timeout};
use super::journal::Record;
use super::policy::{AnalysisPolicy, InconclusiveAction, NoDataPolicy};
use super::report::{Event, VerdictRecord};
use super::run::Run;
use crate::error::ErrorKind;
use crate::model::{TargetId, Verdict, VerdictKind};
use crate::traits::GateContext;

/// What an analysis takes: how many measurements, how far apart, how long the slowest gate
/// needs for one, and the wall time all that adds up to (time spent in calls comes on top).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AnalysisTime {
    /// Measurements per gate (0 without gates: the analysis only waits).
    pub measurements: u32,
    /// Time between the ends of two measurements, as the policy asks.
    #[serde(with = "humantime_serde")]
    pub spacing: Duration,
    /// What the slowest gate needs for one measurement (a scrape window).
    #[serde(with = "humantime_serde")]
    pub evaluation: Duration,
    /// The whole analysis.
    #[serde(with = "humantime_serde")]
    pub wall: Duration,
}

impl std::fmt::Display for AnalysisTime {
    /// `6 measurements, one every 10s, each needing 30s (a gate's window): takes 3m`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = humantime::format_duration;
        if self.measurements == 0 {
            return write!(f, "no gates: waits {}", d(self.wall));
        }
        write!(
            f,
            "{} measurement{} per gate, one every {}",
            self.measurements,
            if self.measurements == 1 { "" } else { "s" },
            d(self.spacing)
        )?;
        if self.evaluation > self.spacing {
            write!(
                f,
                ", but each needs {} (a gate's window)",
                d(self.evaluation)
            )?;
        }
        write!(f, ": takes {}", d(self.wall))
    }
}

/// Counters of one gate during one analysis.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) failures: u32,
    pub(crate) consecutive_failures: u32,
    pub(crate) inconclusive: u32,
    pub(crate) consecutive_errors: u32,
}

/// What one more verdict means for the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Continue,
    Fail(String),
    Error(String),
    Inconclusive(String),
}

impl Tally {
    /// Count `kind` (already mapped through the no-data policy) and decide.
    pub(crate) fn count(&mut self, kind: VerdictKind, policy: &AnalysisPolicy) -> Decision {
        match kind {
            VerdictKind::Pass => {
                self.consecutive_failures = 0;
                self.consecutive_errors = 0;
            }
            VerdictKind::Fail => {
                self.failures += 1;
                self.consecutive_failures += 1;
                self.consecutive_errors = 0;
                if self.failures > policy.failure_limit {
                    return Decision::Fail(format!(
                        "{} failure(s), more than the failure limit of {}",
                        self.failures, policy.failure_limit
                    ));
                }
                if let Some(limit) = policy.consecutive_failure_limit
                    && self.consecutive_failures > limit
                {
                    return Decision::Fail(format!(
                        "{} consecutive failure(s), more than the consecutive failure limit of {limit}",
                        self.consecutive_failures
                    ));
                }
            }
            VerdictKind::Inconclusive => {
                self.inconclusive += 1;
                self.consecutive_errors = 0;
                if self.inconclusive > policy.inconclusive_limit {
                    return Decision::Inconclusive(format!(
                        "{} inconclusive measurement(s), more than the inconclusive limit of {}",
                        self.inconclusive, policy.inconclusive_limit
                    ));
                }
            }
            VerdictKind::Error => {
                self.consecutive_errors += 1;
                if self.consecutive_errors > policy.consecutive_error_limit {
                    return Decision::Error(format!(
                        "{} consecutive error(s), more than the consecutive error limit of {}",
                        self.consecutive_errors, policy.consecutive_error_limit
                    ));
                }
            }
        }
        Decision::Continue
    }
}

/// What one gate measured during one analysis, whatever the limits did: the evidence.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evidence {
    pub(crate) passes: u32,
    pub(crate) failures: u32,
    pub(crate) inconclusive: u32,
    pub(crate) errors: u32,
    pub(crate) uncounted: u32,
}

impl Evidence {
    fn add(&mut self, kind: Option<VerdictKind>) {
        match kind {
            Some(VerdictKind::Pass) => self.passes += 1,
            Some(VerdictKind::Fail) => self.failures += 1,
            Some(VerdictKind::Inconclusive) => self.inconclusive += 1,
            Some(VerdictKind::Error) => self.errors += 1,
            None => self.uncounted += 1,
        }
    }
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.passes, "passed"),
            (self.failures, "failed"),
            (self.inconclusive, "inconclusive"),
            (self.errors, "could not measure"),
            (self.uncounted, "without data, not counted"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            f.write_str("no measurement")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The kind a verdict counts as under the no-data policy; `None` means "not counted".
pub(crate) fn counted_kind(verdict: &Verdict, policy: NoDataPolicy) -> Option<VerdictKind> {
    if !verdict.no_data {
        return Some(verdict.kind);
    }
    match policy {
        NoDataPolicy::Inconclusive => Some(VerdictKind::Inconclusive),
        NoDataPolicy::Fail => Some(VerdictKind::Fail),
        NoDataPolicy::Pass => Some(VerdictKind::Pass),
        NoDataPolicy::Ignore => None,
    }
}

impl Run<'_> {
    /// Measure every gate `measurements` times over `duration` and apply the limits. The
    /// gates of one measurement run together, each started so that it ends when the
    /// measurement is due (a gate that needs a window starts a window early), and each within
    /// its own time limit: the policy's timeout plus what the gate needs.
    ///
    /// The analysis passes only on evidence: every gate must have passed at least once and no
    /// limit may have been crossed. A gate that only erred, or only found nothing, leaves the
    /// analysis inconclusive, which goes to `on_inconclusive` (rollback by default).
    pub(super) async fn analyze(
        &mut self,
        name: &str,
        duration: Duration,
        canary: &[TargetId],
        baseline: &[TargetId],
    ) -> Result<(), Failure> {
        let engine = self.engine;
        let env = self.env();
        let policy = &engine.policies.analysis;
        let gates: Vec<_> = env
            .gates
            .iter()
            .filter(|g| policy.judges(name, g.name()))
            .collect();
        if gates.is_empty() {
            // Nothing to measure: still give the release its bake time.
            if !duration.is_zero() {
                tokio::time::sleep(duration).await;
            }
            return Ok(());
        }
        let n = policy.measurements(duration);
        let spacing = policy.spacing(duration);
        let mut ctx = GateContext::new(
            self.plan.release.version.clone(),
            canary.to_vec(),
            baseline.to_vec(),
        );
        for t in canary {
            ctx.canary_endpoints.push(env.target(t)?.endpoint());
        }
        for t in baseline {
            ctx.baseline_endpoints.push(env.target(t)?.endpoint());
        }
        let mut tallies = vec![Tally::default(); gates.len()];
        let mut evidence = vec![Evidence::default(); gates.len()];
        let t0 = Instant::now();
        for k in 1..=n {
            let due = t0 + spacing.saturating_mul(k);
            let verdicts = futures_util::future::join_all(gates.iter().map(|gate| {
                let mut ctx = ctx.clone();
                async move {
                    let need = gate.evaluation_time();
                    let start = due.checked_sub(need).unwrap_or(t0);
                    // A timer that is already due still waits for the timer wheel's next tick
                    // (about a millisecond): only sleep when there is time to wait.
                    if start > Instant::now() {
                        tokio::time::sleep_until(start).await;
                    }
                    ctx.elapsed = t0.elapsed();
                    match with_timeout(
                        "evaluate gate",
                        gate.name(),
                        policy.timeout.saturating_add(need),
                        gate.evaluate(&ctx),
                    )
                    .await
                    {
                        Ok(v) => v,
                        Err(e) => {
                            Verdict::new(VerdictKind::Error, None, "", gate.name(), e.chain())
                        }
                    }
                }
            }))
            .await;
            // Every verdict of the measurement is recorded before any decides (a smoke
            // check's too, when another gate was inconclusive), and a failure outranks an
            // error, which outranks an inconclusive gate.
            let mut decisions = Vec::new();
            for (i, verdict) in verdicts.into_iter().enumerate() {
                let gate = gates[i];
                engine.emit(&Event::GateVerdict {
                    gate: gate.name().to_owned(),
                    analysis: name.to_owned(),
                    verdict: verdict.clone(),
                });
                self.verdicts.push(VerdictRecord {
                    gate: gate.name().to_owned(),
                    analysis: name.to_owned(),
                    verdict: verdict.clone(),
                });
                // For `status` only: a measurement lost from the journal loses nothing else.
                self.record_for_status(&Record::Measured {
                    gate: gate.name().to_owned(),
                    analysis: name.to_owned(),
                    verdict: verdict.clone(),
                })
                .await;
                let kind = counted_kind(&verdict, policy.no_data);
                evidence[i].add(kind);
                let Some(kind) = kind else {
                    continue;
                };
                match tallies[i].count(kind, policy) {
                    Decision::Continue => {}
                    decision => decisions.push((i, decision, verdict)),
                }
            }
            decisions.sort_by_key(|(_, d, _)| match d {
                Decision::Fail(_) => 0,
                Decision::Error(_) => 1,
                Decision::Inconclusive(_) | Decision::Continue => 2,
            });
            for (i, decision, verdict) in decisions {
                let gate = gates[i];
                match decision {
                    Decision::Continue => {}
                    Decision::Fail(why) => {
                        return Err(Failure::engine(
                            ErrorKind::Rejected,
                            format!(
                                "gate {} failed ({why}); last verdict: {verdict}",
                                gate.name()
                            ),
                        ));
                    }
                    Decision::Error(why) => {
                        return Err(Failure::engine(
                            ErrorKind::Unavailable,
                            format!(
                                "gate {} could not measure ({why}); last verdict: {verdict}",
                                gate.name()
                            ),
                        ));
                    }
                    Decision::Inconclusive(why) => {
                        let msg = format!(
                            "gate {} is inconclusive ({why}); last verdict: {verdict}",
                            gate.name()
                        );
                        self.inconclusive(msg).await?;
                        tallies[i] = Tally::default();
                    }
                }
            }
        }
        let silent: Vec<String> = gates
            .iter()
            .zip(&evidence)
            .filter(|(_, e)| e.passes == 0)
            .map(|(g, e)| format!("{} ({e})", g.name()))
            .collect();
        if !silent.is_empty() {
            let msg = format!(
                "no evidence that the release is good: gate(s) {} never passed in {n} measurement(s)",
                silent.join(", ")
            );
            self.inconclusive(msg).await?;
        }
        Ok(())
    }

    /// An analysis is inconclusive: roll back, carry on, or wait for the operator, as the
    /// policy says.
    async fn inconclusive(&mut self, msg: String) -> Result<(), Failure> {
        match self.engine.policies.analysis.on_inconclusive {
            InconclusiveAction::Rollback => Err(Failure::engine(ErrorKind::Other, msg)),
            InconclusiveAction::Proceed => {
                self.note(format!("{msg}; carried on (on_inconclusive = proceed)"));
                Ok(())
            }
            InconclusiveAction::Pause => {
                let reason = format!("{msg}; promote to carry on, abort to roll back");
                self.wait_for_operator(reason, None).await;
                self.note(format!("{msg}; promoted by the operator"));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn policy() -> AnalysisPolicy {
        AnalysisPolicy {
            failure_limit: 3,
            consecutive_failure_limit: Some(1),
            inconclusive_limit: 1,
            consecutive_error_limit: 2,
            ..AnalysisPolicy::default()
        }
    }

    #[test]
    pub(super) fn consecutive_failures_trip_before_the_total_limit() {
        let p = policy();
        let mut t = Tally::default();
        assert_eq!(t.count(VerdictKind::Fail, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Pass, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Fail, &p), Decision::Continue);
        assert!(
            matches!(t.count(VerdictKind::Fail, &p), Decision::Fail(w) if w.contains("2 consecutive"))
        );
    }

    #[test]
    pub(super) fn total_failures_trip_the_failure_limit() {
        let p = AnalysisPolicy {
            consecutive_failure_limit: None,
            ..policy()
        };
        let mut t = Tally::default();
        for _ in 0..3 {
            assert_eq!(t.count(VerdictKind::Fail, &p), Decision::Continue);
            assert_eq!(t.count(VerdictKind::Pass, &p), Decision::Continue);
        }
        assert!(
            matches!(t.count(VerdictKind::Fail, &p), Decision::Fail(w) if w.contains("4 failure(s)"))
        );
    }

    #[test]
    pub(super) fn errors_reset_on_success_and_trip_when_consecutive() {
        let p = policy();
        let mut t = Tally::default();
        assert_eq!(t.count(VerdictKind::Error, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Error, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Pass, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Error, &p), Decision::Continue);
        assert_eq!(t.count(VerdictKind::Error, &p), Decision::Continue);
        assert!(matches!(
            t.count(VerdictKind::Error, &p),
            Decision::Error(_)
        ));
    }

    #[test]
    fn analysis_time_says_what_an_analysis_takes() {
        let t = AnalysisTime {
            measurements: 6,
            spacing: Duration::from_secs(10),
            evaluation: Duration::from_secs(30),
            wall: Duration::from_secs(180),
        };
        assert_eq!(
            t.to_string(),
            "6 measurements per gate, one every 10s, but each needs 30s (a gate's window): takes 3m"
        );
    }

    #[test]
    pub(super) fn no_data_policy_maps_verdicts() {
        let v = Verdict::no_data("< 0.01", "q");
        assert_eq!(
            counted_kind(&v, NoDataPolicy::Inconclusive),
            Some(VerdictKind::Inconclusive)
        );
        assert_eq!(
            counted_kind(&v, NoDataPolicy::Fail),
            Some(VerdictKind::Fail)
        );
        assert_eq!(counted_kind(&v, NoDataPolicy::Ignore), None);
        let real = Verdict::new(VerdictKind::Fail, Some(0.05), "< 0.01", "q", "too high");
        assert_eq!(
            counted_kind(&real, NoDataPolicy::Pass),
            Some(VerdictKind::Fail)
        );
    }
}
