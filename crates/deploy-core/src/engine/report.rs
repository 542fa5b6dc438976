//! What a run tells the world: typed events as they happen, and a report at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::ErrorRecord;
use crate::model::{TargetId, Verdict, Version, Weights};
use crate::strategy::{Snapshot, Step};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step completed: the new release is live.
    Promoted,
    /// A rolling deploy with a failure budget (`max_failed_targets`) completed, but gave up on
    /// some targets: each was taken out of the traffic (weight 0) and rolled back alone, and
    /// [`Report::failed_targets`] names them. Every target in the traffic runs the new release.
    PromotedWithFailures,
    /// A step, gate, timeout or cancellation failed the run and every change was undone.
    RolledBack,
    /// The run failed and undoing it failed too: the environment needs attention.
    Failed,
}

impl Outcome {
    /// Whether the new release is what the traffic reaches: [`Promoted`](Self::Promoted), or
    /// [`PromotedWithFailures`](Self::PromotedWithFailures).
    pub fn is_promoted(self) -> bool {
        matches!(self, Self::Promoted | Self::PromotedWithFailures)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Promoted => "promoted",
            Self::PromotedWithFailures => "promoted_with_failures",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        })
    }
}

/// How important an event is; notification sinks filter by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Step-level progress.
    Info,
    /// Something an operator may want to know (a drain that timed out, a failed measurement).
    Warning,
    /// A rollback, or a failure.
    Error,
}

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run started.
    RunStarted {
        /// The run.
        run_id: String,
        /// The environment.
        environment: String,
        /// The version being deployed.
        version: Version,
        /// The strategy's name.
        strategy: String,
        /// Number of steps.
        steps: usize,
    },
    /// A step started.
    StepStarted {
        /// Its index in the plan.
        index: usize,
        /// The step.
        step: Step,
    },
    /// A step finished.
    StepFinished {
        /// Its index in the plan.
        index: usize,
        /// The step.
        step: Step,
        /// How long it took.
        #[serde(with = "humantime_serde")]
        duration: Duration,
        /// `None` on success, the reason otherwise.
        error: Option<String>,
    },
    /// One health check.
    HealthChecked {
        /// The target.
        target: TargetId,
        /// Healthy or not.
        healthy: bool,
        /// Why.
        reason: String,
    },
    /// The switch's weights changed.
    WeightsChanged {
        /// The weights now.
        weights: Weights,
    },
    /// A target was drained.
    Drained {
        /// The target.
        target: TargetId,
        /// How long draining took.
        #[serde(with = "humantime_serde")]
        duration: Duration,
        /// Sessions still open when the engine stopped waiting.
        sessions_left: u64,
    },
    /// A gate measured.
    GateVerdict {
        /// The gate's name.
        gate: String,
        /// The analysis ("bake", "canary at 10%").
        analysis: String,
        /// The verdict.
        verdict: Verdict,
    },
    /// A hook ran.
    HookRan {
        /// The hook's name.
        hook: String,
        /// Before or after.
        point: crate::hooks::HookPoint,
        /// The step, or `None` for the whole run.
        step: Option<Step>,
        /// `None` on success, the reason otherwise.
        error: Option<String>,
    },
    /// Waiting for the operator to promote.
    Paused {
        /// Why.
        reason: String,
    },
    /// A call failed and will be tried again.
    Retrying {
        /// What failed.
        operation: String,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Why.
        error: String,
    },
    /// A rolling deploy with a failure budget gave up on a target: it was taken out of the
    /// traffic and rolled back alone, and the run goes on without it.
    TargetGivenUp {
        /// The target.
        target: TargetId,
        /// Why (its step's failure).
        reason: String,
    },
    /// The engine starts undoing the run.
    RollbackStarted {
        /// Why.
        reason: String,
    },
    /// One undo step finished.
    RollbackStep {
        /// The step undone.
        step: Step,
        /// `None` on success, the reason otherwise.
        error: Option<String>,
    },
    /// The run ended.
    RunFinished {
        /// How.
        outcome: Outcome,
    },
}

impl Event {
    /// How important this event is.
    pub fn severity(&self) -> Severity {
        match self {
            Self::RollbackStarted { .. } => Severity::Error,
            Self::TargetGivenUp { .. } => Severity::Error,
            Self::RunFinished {
                outcome: Outcome::PromotedWithFailures,
            } => Severity::Warning,
            Self::RunFinished {
                outcome: Outcome::Promoted,
            } => Severity::Info,
            Self::RunFinished { .. } => Severity::Error,
            Self::RollbackStep { error: Some(_), .. } => Severity::Error,
            Self::StepFinished { error: Some(_), .. } => Severity::Error,
            Self::HookRan { error: Some(_), .. } => Severity::Error,
            Self::Retrying { .. } | Self::Paused { .. } => Severity::Warning,
            Self::Drained { sessions_left, .. } if *sessions_left > 0 => Severity::Warning,
            Self::GateVerdict { verdict, .. }
                if verdict.kind != crate::model::VerdictKind::Pass =>
            {
                Severity::Warning
            }
            Self::HealthChecked { healthy: false, .. } => Severity::Info,
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RunStarted {
                run_id,
                environment,
                version,
                strategy,
                steps,
            } => {
                write!(
                    f,
                    "run {run_id}: deploy {version} to {environment} ({strategy}, {steps} steps)"
                )
            }
            Self::StepStarted { index, step } => write!(f, "step {}: {step}", index + 1),
            Self::StepFinished {
                index,
                step,
                duration,
                error: None,
            } => {
                write!(
                    f,
                    "step {}: {step}: done in {}",
                    index + 1,
                    crate::units::duration(*duration)
                )
            }
            Self::StepFinished {
                index,
                step,
                duration,
                error: Some(e),
            } => {
                write!(
                    f,
                    "step {}: {step}: FAILED after {}: {e}",
                    index + 1,
                    crate::units::duration(*duration)
                )
            }
            Self::HealthChecked {
                target,
                healthy,
                reason,
            } => {
                write!(
                    f,
                    "  health {target}: {} ({reason})",
                    if *healthy { "healthy" } else { "unhealthy" }
                )
            }
            Self::WeightsChanged { weights } => write!(f, "  weights now {weights}"),
            Self::Drained {
                target,
                duration,
                sessions_left,
            } => write!(
                f,
                "  drained {target} in {} ({sessions_left} sessions left)",
                crate::units::duration(*duration)
            ),
            Self::GateVerdict {
                gate,
                analysis,
                verdict,
            } => write!(f, "  gate {gate} [{analysis}]: {verdict}"),
            Self::HookRan {
                hook,
                point,
                step,
                error,
            } => {
                let on = step
                    .as_ref()
                    .map_or("the run".to_owned(), ToString::to_string);
                match error {
                    None => write!(f, "  hook {hook} ({point} {on}): ok"),
                    Some(e) => write!(f, "  hook {hook} ({point} {on}): FAILED: {e}"),
                }
            }
            Self::Paused { reason } => write!(f, "  paused: {reason}"),
            Self::Retrying {
                operation,
                attempt,
                error,
            } => write!(f, "  retrying {operation} after attempt {attempt}: {error}"),
            Self::RollbackStarted { reason } => write!(f, "ROLLBACK: {reason}"),
            Self::TargetGivenUp { target, reason } => write!(
                f,
                "GIVEN UP: {target} taken out of the traffic and rolled back alone: {reason}"
            ),
            Self::RollbackStep { step, error: None } => write!(f, "  undo: {step}: done"),
            Self::RollbackStep {
                step,
                error: Some(e),
            } => write!(f, "  undo: {step}: FAILED: {e}"),
            Self::RunFinished { outcome } => write!(f, "run finished: {outcome}"),
        }
    }
}

/// Receives the engine's events as they happen (a terminal renderer, a webhook, a test).
///
/// Called synchronously from the engine's task: keep it quick, hand slow work to a channel.
pub trait Observer: fmt::Debug + Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &Event);
}

/// The version of the report's JSON form this build writes (the `schema_version` field), described
/// by `schemas/report-v1.schema.json` at the root of the repository.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The result of one step in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepRecord {
    /// Index in the plan.
    pub index: usize,
    /// The step (in JSON an object named by `op`, its durations in `duration_ms`).
    #[serde(with = "wire::step")]
    pub step: Step,
    /// When it started (RFC 3339 in JSON).
    #[serde(with = "wire::time")]
    pub started_at: SystemTime,
    /// How long it took (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", alias = "duration", with = "wire::millis")]
    pub duration: Duration,
    /// `None` on success, the error otherwise (as data: kind, retry status, context).
    pub error: Option<ErrorRecord>,
}

/// One undo step of a rollback in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UndoRecord {
    /// The step that undid something (in JSON as in [`StepRecord::step`]).
    #[serde(with = "wire::step")]
    pub step: Step,
    /// When it started (RFC 3339 in JSON; the Unix epoch in a report written before version 1).
    #[serde(default = "wire::epoch", with = "wire::time")]
    pub started_at: SystemTime,
    /// How long it took (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", default, with = "wire::millis")]
    pub duration: Duration,
    /// `None` on success, the error otherwise.
    pub error: Option<ErrorRecord>,
}

/// One verdict in a report.
///
/// In JSON it also has `step_index` and `measured_at`, which [`Report::verdict_times`] derives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VerdictRecord {
    /// The gate's name.
    pub gate: String,
    /// The analysis it belonged to.
    pub analysis: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RollbackRecord {
    /// Why the run rolled back.
    pub reason: String,
    /// When the rollback started (RFC 3339 in JSON; the Unix epoch in a report written before
    /// version 1).
    #[serde(default = "wire::epoch", with = "wire::time")]
    pub started_at: SystemTime,
    /// Each undo step, in the order it ran, with its error if it failed.
    pub steps: Vec<UndoRecord>,
    /// Differences between the state after rolling back and the state before the run (empty when
    /// the environment is back where it was).
    pub mismatches: Vec<String>,
}

/// The report of a finished run (serde: JSON for machines, `Display` for people).
///
/// Its JSON form is version [`REPORT_SCHEMA_VERSION`] (`"schema_version": 1`), described by
/// `schemas/report-v1.schema.json` at the root of the repository: durations are numbers of
/// milliseconds (`duration_ms`, fractional: nanoseconds are kept), timestamps are RFC 3339
/// strings in UTC, every step and undo is an object, errors are objects (kind, status, operation,
/// context, message). Two derived parts are written for readers that draw the run
/// ([`verdict_times`](Self::verdict_times) as each verdict's `measured_at` and `step_index`,
/// [`weights_over_time`](Self::weights_over_time) as `weights_over_time`), and ignored when read.
/// A report written before version 1 (durations as text) is still read.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The run.
    pub run_id: String,
    /// The environment.
    pub environment: String,
    /// The version deployed.
    pub version: Version,
    /// The strategy's name.
    pub strategy: String,
    /// How it ended.
    pub outcome: Outcome,
    /// When it started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Every step run, in order.
    pub steps: Vec<StepRecord>,
    /// Every gate verdict, in order.
    pub verdicts: Vec<VerdictRecord>,
    /// The rollback, if there was one.
    pub rollback: Option<RollbackRecord>,
    /// The targets a rolling deploy with a failure budget gave up on (taken out of the traffic
    /// and rolled back alone), when it ended [`Outcome::PromotedWithFailures`].
    pub failed_targets: Vec<FailedTarget>,
    /// Notes (a schema kept on rollback, a drain that timed out).
    pub notes: Vec<String>,
    /// The state of the environment before the run, as the plan read it.
    pub initial_state: Option<Snapshot>,
    /// The state of the environment at the end, when it could be read.
    pub final_state: Option<Snapshot>,
}

/// A target a run gave up on ([`Report::failed_targets`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailedTarget {
    /// The target.
    pub target: TargetId,
    /// Why: the failure of its step.
    pub reason: String,
}

impl FailedTarget {
    /// `target` given up on because of `reason`.
    pub fn new(target: TargetId, reason: impl Into<String>) -> Self {
        Self {
            target,
            reason: reason.into(),
        }
    }
}

/// Where a point of [`Report::weights_over_time`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    /// The weights before the run.
    Initial,
    /// A step of the run set them (`set_weights`) or drained a target (its weight 0).
    Step,
    /// An undo step of the rollback set them.
    Undo,
    /// The weights read at the end of the run, when they differ from the last point.
    Final,
}

/// The switch's weights from one moment of a run on (derived from the report's steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WeightPoint {
    /// When they took effect: the end of the step that set them, the start of a drain.
    #[serde(with = "wire::time")]
    pub at: SystemTime,
    /// Every target's weight from then on.
    pub weights: Weights,
    /// What set them.
    pub source: WeightSource,
    /// The step (its index in the plan) for `step`; the undone step's position in the rollback
    /// for `undo`.
    pub step_index: Option<usize>,
}

impl Report {
    /// When each verdict (in the order of [`verdicts`](Self::verdicts)) was measured, and the
    /// index of the analysis step it belongs to; `None` when no step of the report matches its
    /// analysis.
    ///
    /// Derived, not recorded: an analysis takes its measurements evenly spaced and stops right
    /// after the measurement that fails it, so the k-th of a gate's n measurements in an
    /// analysis step ended at `started_at + duration × k / n` (to within the time its calls took).
    pub fn verdict_times(&self) -> Vec<Option<(usize, SystemTime)>> {
        let mut out = vec![None; self.verdicts.len()];
        let analyses: Vec<&StepRecord> = self
            .steps
            .iter()
            .filter(|s| matches!(s.step, Step::Analyze { .. }))
            .collect();
        let name_of = |s: &StepRecord| match &s.step {
            Step::Analyze { name, .. } => name.clone(),
            _ => String::new(),
        };
        let mut next = 0;
        let mut i = 0;
        while i < self.verdicts.len() {
            let analysis = &self.verdicts[i].analysis;
            let end = i + self.verdicts[i..]
                .iter()
                .take_while(|v| &v.analysis == analysis)
                .count();
            if let Some(k) = analyses[next..]
                .iter()
                .position(|s| &name_of(s) == analysis)
            {
                let step = analyses[next + k];
                next += k + 1;
                let block = &self.verdicts[i..end];
                let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
                let rounds: Vec<u32> = block
                    .iter()
                    .map(|v| {
                        let n = seen.entry(v.gate.as_str()).or_insert(0);
                        *n += 1;
                        *n
                    })
                    .collect();
                let total = seen.values().copied().max().unwrap_or(1).max(1);
                for (j, round) in rounds.into_iter().enumerate() {
                    let at = step.started_at
                        + step.duration.mul_f64(f64::from(round) / f64::from(total));
                    out[i + j] = Some((step.index, at));
                }
            }
            i = end;
        }
        out
    }

    /// The switch's weights over the run: before it, after each step that changed them (a
    /// `set_weights`, a drain), after each undo that set them, and at the end when they differ
    /// from the last point. Steps that failed are left out (what they changed is unknown).
    pub fn weights_over_time(&self) -> Vec<WeightPoint> {
        let mut points: Vec<WeightPoint> = Vec::new();
        let mut now = Weights::new();
        if let Some(w) = self.initial_state.as_ref().and_then(|s| s.weights.as_ref()) {
            now = w.clone();
            points.push(WeightPoint {
                at: self.started_at,
                weights: now.clone(),
                source: WeightSource::Initial,
                step_index: None,
            });
        }
        let mut apply = |step: &Step, started: SystemTime, duration: Duration| match step {
            Step::SetWeights { weights } => {
                for (t, w) in &weights.0 {
                    now.0.insert(t.clone(), *w);
                }
                Some((now.clone(), started + duration))
            }
            Step::Drain { target } => {
                now.0.insert(target.clone(), 0);
                Some((now.clone(), started))
            }
            _ => None,
        };
        for s in self.steps.iter().filter(|s| s.error.is_none()) {
            if let Some((weights, at)) = apply(&s.step, s.started_at, s.duration) {
                points.push(WeightPoint {
                    at,
                    weights,
                    source: WeightSource::Step,
                    step_index: Some(s.index),
                });
            }
        }
        if let Some(r) = &self.rollback {
            for (i, u) in r
                .steps
                .iter()
                .enumerate()
                .filter(|(_, u)| u.error.is_none())
            {
                if let Some((weights, at)) = apply(&u.step, u.started_at, u.duration) {
                    points.push(WeightPoint {
                        at,
                        weights,
                        source: WeightSource::Undo,
                        step_index: Some(i),
                    });
                }
            }
        }
        if let Some(w) = self.final_state.as_ref().and_then(|s| s.weights.as_ref())
            && points.last().is_none_or(|p| &p.weights != w)
        {
            points.push(WeightPoint {
                at: self.started_at + self.duration,
                weights: w.clone(),
                source: WeightSource::Final,
                step_index: None,
            });
        }
        points
    }
}

/// The JSON form of a report: what [`Report`]'s `Serialize` writes.
#[derive(Serialize)]
struct ReportOut<'a> {
    schema_version: u32,
    run_id: &'a str,
    environment: &'a str,
    version: &'a Version,
    strategy: &'a str,
    outcome: Outcome,
    #[serde(with = "wire::time")]
    started_at: SystemTime,
    #[serde(with = "wire::time")]
    finished_at: SystemTime,
    #[serde(with = "wire::millis")]
    duration_ms: Duration,
    steps: &'a [StepRecord],
    verdicts: Vec<VerdictOut<'a>>,
    weights_over_time: Vec<WeightPoint>,
    rollback: Option<&'a RollbackRecord>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    failed_targets: &'a [FailedTarget],
    notes: &'a [String],
    initial_state: Option<&'a Snapshot>,
    final_state: Option<&'a Snapshot>,
}

#[derive(Serialize)]
struct VerdictOut<'a> {
    gate: &'a str,
    analysis: &'a str,
    step_index: Option<usize>,
    #[serde(with = "wire::time_opt")]
    measured_at: Option<SystemTime>,
    verdict: &'a Verdict,
}

/// What [`Report`]'s `Deserialize` reads: version 1, or a report written before it (no
/// `schema_version`, durations as text). Derived parts are ignored.
#[derive(Deserialize)]
struct ReportIn {
    #[serde(default)]
    schema_version: u32,
    run_id: String,
    environment: String,
    version: Version,
    strategy: String,
    outcome: Outcome,
    #[serde(with = "wire::time")]
    started_at: SystemTime,
    #[serde(rename = "duration_ms", alias = "duration", with = "wire::millis")]
    duration: Duration,
    steps: Vec<StepRecord>,
    verdicts: Vec<VerdictRecord>,
    rollback: Option<RollbackRecord>,
    #[serde(default)]
    failed_targets: Vec<FailedTarget>,
    notes: Vec<String>,
    #[serde(default)]
    initial_state: Option<Snapshot>,
    final_state: Option<Snapshot>,
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let times = self.verdict_times();
        ReportOut {
            schema_version: REPORT_SCHEMA_VERSION,
            run_id: &self.run_id,
            environment: &self.environment,
            version: &self.version,
            strategy: &self.strategy,
            outcome: self.outcome,
            started_at: self.started_at,
            finished_at: self.started_at + self.duration,
            duration_ms: self.duration,
            steps: &self.steps,
            verdicts: self
                .verdicts
                .iter()
                .zip(times)
                .map(|(v, t)| VerdictOut {
                    gate: &v.gate,
                    analysis: &v.analysis,
                    step_index: t.map(|(i, _)| i),
                    measured_at: t.map(|(_, at)| at),
                    verdict: &v.verdict,
                })
                .collect(),
            weights_over_time: self.weights_over_time(),
            rollback: self.rollback.as_ref(),
            failed_targets: &self.failed_targets,
            notes: &self.notes,
            initial_state: self.initial_state.as_ref(),
            final_state: self.final_state.as_ref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Report {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let r = ReportIn::deserialize(deserializer)?;
        if r.schema_version > REPORT_SCHEMA_VERSION {
            return Err(serde::de::Error::custom(format!(
                "report schema_version {} is newer than this build reads ({REPORT_SCHEMA_VERSION})",
                r.schema_version
            )));
        }
        Ok(Self {
            run_id: r.run_id,
            environment: r.environment,
            version: r.version,
            strategy: r.strategy,
            outcome: r.outcome,
            started_at: r.started_at,
            duration: r.duration,
            steps: r.steps,
            verdicts: r.verdicts,
            rollback: r.rollback,
            failed_targets: r.failed_targets,
            notes: r.notes,
            initial_state: r.initial_state,
            final_state: r.final_state,
        })
    }
}

/// The report's JSON forms of durations, times and steps.
mod wire {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The Unix epoch: the start time of an undo in a report written before version 1.
    pub(super) fn epoch() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    /// A duration as a number of milliseconds (fractional: nanoseconds are kept); read back
    /// from such a number or from text (`"7s 677ms"`, reports before version 1).
    pub(super) mod millis {
        use super::*;

        pub(crate) fn to_ms(d: Duration) -> f64 {
            // Exact to the nanosecond for durations below about three months (2^53 ns).
            d.as_nanos() as f64 / 1e6
        }

        pub(crate) fn from_ms(ms: f64) -> Result<Duration, String> {
            if !ms.is_finite() || ms < 0.0 {
                return Err(format!("{ms} is not a duration in milliseconds"));
            }
            Ok(Duration::from_nanos((ms * 1e6).round() as u64))
        }

        pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            to_ms(*d).serialize(s)
        }

        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Ms(f64),
            Text(String),
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            match Either::deserialize(d)? {
                Either::Ms(ms) => from_ms(ms).map_err(serde::de::Error::custom),
                Either::Text(t) => humantime::parse_duration(&t)
                    .map_err(|e| serde::de::Error::custom(format!("duration {t:?}: {e}"))),
            }
        }
    }

    /// A time as an RFC 3339 string in UTC (`2026-11-29T06:37:48.636123456Z`).
    pub(super) mod time {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_rfc3339(*t))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            let t = String::deserialize(d)?;
            humantime::parse_rfc3339_weak(&t)
                .map_err(|e| serde::de::Error::custom(format!("time {t:?}: {e}")))
        }
    }

    /// An optional time, as [`time`] or `null`.
    pub(super) mod time_opt {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.collect_str(&humantime::format_rfc3339(*t)),
                None => s.serialize_none(),
            }
        }
    }

    /// A step as an object named by `op`, its duration (analyze, pause) in `duration_ms` rather
    /// than as the plan file's text.
    pub(super) mod step {
        use serde_json::Value;

        use super::*;
        use crate::strategy::Step;

        pub(crate) fn serialize<S: Serializer>(step: &Step, s: S) -> Result<S::Ok, S::Error> {
            let mut v = serde_json::to_value(step).map_err(serde::ser::Error::custom)?;
            if let Value::Object(o) = &mut v
                && let Some(Value::String(text)) = o.remove("duration")
            {
                let d = humantime::parse_duration(&text).map_err(serde::ser::Error::custom)?;
                o.insert("duration_ms".to_owned(), super::millis::to_ms(d).into());
            }
            v.serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
            let mut v = Value::deserialize(d)?;
            if let Value::Object(o) = &mut v
                && let Some(ms) = o.remove("duration_ms")
            {
                let ms = ms
                    .as_f64()
                    .ok_or_else(|| serde::de::Error::custom("duration_ms is not a number"))?;
                let d = super::millis::from_ms(ms).map_err(serde::de::Error::custom)?;
                o.insert(
                    "duration".to_owned(),
                    humantime::format_duration(d).to_string().into(),
                );
            }
            serde_json::from_value(v).map_err(serde::de::Error::custom)
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Run {}: {} of {} to {} ({}) in {}",
            self.run_id,
            self.outcome,
            self.version,
            self.environment,
            self.strategy,
            crate::units::duration(self.duration)
        )?;
        for s in &self.steps {
            let status = s
                .error
                .as_ref()
                .map_or("ok".to_owned(), |e| format!("FAILED: {e}"));
            writeln!(
                f,
                "  {:>3}. {:<50} {:>10}  {status}",
                s.index + 1,
                s.step.to_string(),
                crate::units::duration(s.duration)
            )?;
        }
        let failed = self
            .verdicts
            .iter()
            .filter(|v| v.verdict.kind != crate::model::VerdictKind::Pass)
            .count();
        if !self.verdicts.is_empty() {
            writeln!(
                f,
                "  gates: {} verdicts, {failed} not pass",
                self.verdicts.len()
            )?;
        }
        if let Some(r) = &self.rollback {
            writeln!(f, "  rolled back because: {}", r.reason)?;
            for u in &r.steps {
                match &u.error {
                    None => writeln!(f, "    undo {}: ok", u.step)?,
                    Some(e) => writeln!(f, "    undo {}: {e}", u.step)?,
                }
            }
            for m in &r.mismatches {
                writeln!(f, "    MISMATCH: {m}")?;
            }
        }
        for t in &self.failed_targets {
            writeln!(
                f,
                "  given up: {} (out of the traffic, rolled back alone): {}",
                t.target, t.reason
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if let Some(s) = &self.final_state {
            for t in &s.targets {
                let v = t
                    .current
                    .as_ref()
                    .map_or("nothing".to_owned(), ToString::to_string);
                let w = s
                    .weights
                    .as_ref()
                    .and_then(|w| w.get(&t.id))
                    .map_or(String::new(), |w| format!(", weight {w}"));
                writeln!(f, "  final: {} runs {v}{w}", t.id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::model::{Endpoint, VerdictKind};
    use crate::strategy::TargetState;

    fn id(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    fn snapshot(blue: u32, green: u32) -> Snapshot {
        Snapshot::new(
            vec![
                TargetState::new(id("blue"), Endpoint::http("127.0.0.1", 1), None),
                TargetState::new(id("green"), Endpoint::http("127.0.0.1", 2), None),
            ],
            Some(
                Weights::new()
                    .with(id("blue"), blue)
                    .with(id("green"), green),
            ),
            None,
            None,
        )
    }

    fn step(index: usize, step: Step, start: u64, ms: u64) -> StepRecord {
        StepRecord {
            index,
            step,
            started_at: at(start),
            duration: Duration::from_millis(ms),
            error: None,
        }
    }

    fn verdict(gate: &str, analysis: &str, kind: VerdictKind, value: f64) -> VerdictRecord {
        VerdictRecord {
            gate: gate.into(),
            analysis: analysis.into(),
            verdict: Verdict::new(kind, Some(value), "< 0.01", "fake", "scripted"),
        }
    }

    /// A canary at 10 % whose analysis failed at its second measurement, then rolled back.
    fn rolled_back() -> Report {
        let analyze = Step::Analyze {
            name: "canary at 10%".into(),
            duration: Duration::from_secs(60),
            canary: vec![id("green")],
            baseline: vec![id("blue")],
        };
        let mut failed = step(1, analyze, 1_000, 20_000);
        let error = Error::new(
            ErrorKind::Rejected,
            "analyse",
            "canary at 10%",
            "gate failed",
        );
        failed.error = Some(error.record());
        Report {
            run_id: "r1".into(),
            environment: "prod".into(),
            version: Version::new("3.0.0").unwrap(),
            strategy: "canary".into(),
            outcome: Outcome::RolledBack,
            started_at: at(0),
            duration: Duration::from_micros(22_500_250),
            steps: vec![
                step(
                    0,
                    Step::SetWeights {
                        weights: Weights::new().with(id("blue"), 90).with(id("green"), 10),
                    },
                    0,
                    1_000,
                ),
                failed,
            ],
            verdicts: vec![
                verdict("errors", "canary at 10%", VerdictKind::Pass, 0.001),
                verdict("latency", "canary at 10%", VerdictKind::Pass, 0.2),
                verdict("errors", "canary at 10%", VerdictKind::Fail, 0.05),
            ],
            rollback: Some(RollbackRecord {
                reason: "gate errors failed".into(),
                started_at: at(21_000),
                steps: vec![UndoRecord {
                    step: Step::SetWeights {
                        weights: Weights::new().with(id("blue"), 100).with(id("green"), 0),
                    },
                    started_at: at(21_000),
                    duration: Duration::from_millis(500),
                    error: None,
                }],
                mismatches: vec![],
            }),
            failed_targets: vec![],
            notes: vec![],
            initial_state: Some(snapshot(100, 0)),
            final_state: Some(snapshot(100, 0)),
        }
    }

    #[test]
    fn json_v1_has_numbers_times_and_objects() {
        let r = rolled_back();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["duration_ms"], 22_500.25);
        assert_eq!(v["started_at"], "2027-01-15T08:00:00Z");
        assert_eq!(v["finished_at"], "2027-01-15T08:00:22.500250000Z");
        let analyze = &v["steps"][1];
        assert_eq!(analyze["duration_ms"], 20_000.0);
        assert_eq!(analyze["step"]["op"], "analyze");
        assert_eq!(analyze["step"]["duration_ms"], 60_000.0);
        assert!(analyze["step"].get("duration").is_none());
        assert_eq!(analyze["error"]["kind"], "rejected");
        assert_eq!(analyze["error"]["operation"], "analyse");
        let undo = &v["rollback"]["steps"][0];
        assert!(undo.is_object(), "{undo}");
        assert_eq!(undo["step"]["op"], "set_weights");
        assert_eq!(undo["duration_ms"], 500.0);
        assert_eq!(undo["started_at"], "2027-01-15T08:00:21Z");
        assert_eq!(v["rollback"]["started_at"], "2027-01-15T08:00:21Z");
        // The second errors measurement failed the analysis: it ended with the step.
        assert_eq!(v["verdicts"][0]["measured_at"], "2027-01-15T08:00:11Z");
        assert_eq!(v["verdicts"][1]["measured_at"], "2027-01-15T08:00:11Z");
        assert_eq!(v["verdicts"][2]["measured_at"], "2027-01-15T08:00:21Z");
        assert_eq!(v["verdicts"][2]["step_index"], 1);
        let w = v["weights_over_time"].as_array().unwrap();
        let sources: Vec<_> = w.iter().map(|p| p["source"].as_str().unwrap()).collect();
        assert_eq!(sources, ["initial", "step", "undo"]);
        assert_eq!(w[1]["weights"]["green"], 10);
        assert_eq!(w[1]["at"], "2027-01-15T08:00:01Z");
        assert_eq!(w[2]["weights"]["green"], 0);
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let r = rolled_back();
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_report_from_before_version_1_is_still_read() {
        let old = r#"{"run_id":"r0","environment":"prod","version":"1.0.0","strategy":"canary",
            "outcome":"rolled_back","started_at":"2026-11-29T06:37:48.636123456Z",
            "duration":"7s 677ms 522us 835ns",
            "steps":[{"index":0,"step":{"op":"pause","duration":"30s"},
                      "started_at":"2026-11-29T06:37:48Z","duration":"30s","error":null}],
            "verdicts":[],
            "rollback":{"reason":"aborted","steps":[{"step":{"op":"maintenance_off"},"error":null}],
                        "mismatches":[]},
            "notes":[],"final_state":null}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!(r.duration, Duration::new(7, 677_522_835));
        assert_eq!(
            r.steps[0].step,
            Step::Pause {
                duration: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            r.rollback.unwrap().steps[0].started_at,
            SystemTime::UNIX_EPOCH
        );
    }

    #[test]
    fn a_newer_report_version_is_refused_by_name() {
        let mut v = serde_json::to_value(rolled_back()).unwrap();
        v["schema_version"] = 2.into();
        let e = serde_json::from_value::<Report>(v).unwrap_err().to_string();
        assert!(e.contains("schema_version 2"), "{e}");
    }
}
