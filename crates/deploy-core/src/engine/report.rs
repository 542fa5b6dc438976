//! What a run tells the world: typed events as they happen, and a report at the end.

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
    /// A step, gate, timeout or cancellation failed the run and every change was undone.
    RolledBack,
    /// The run failed and undoing it failed too: the environment needs attention.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Promoted => "promoted",
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
                    fmt_duration(*duration)
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
                    fmt_duration(*duration)
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
                fmt_duration(*duration)
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
            Self::RollbackStep { step, error: None } => write!(f, "  undo: {step}: done"),
            Self::RollbackStep {
                step,
                error: Some(e),
            } => write!(f, "  undo: {step}: FAILED: {e}"),
            Self::RunFinished { outcome } => write!(f, "run finished: {outcome}"),
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Receives the engine's events as they happen (a terminal renderer, a webhook, a test).
///
/// Called synchronously from the engine's task: keep it quick, hand slow work to a channel.
pub trait Observer: fmt::Debug + Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &Event);
}

/// The result of one step in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepRecord {
    /// Index in the plan.
    pub index: usize,
    /// The step.
    pub step: Step,
    /// When it started.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// How long it took.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// `None` on success, the error otherwise (as data: kind, retry status, context).
    pub error: Option<ErrorRecord>,
}

/// One undo step of a rollback in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UndoRecord {
    /// The step that undid something.
    pub step: Step,
    /// `None` on success, the error otherwise.
    pub error: Option<ErrorRecord>,
}

/// One verdict in a report.
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
    /// Each undo step, in the order it ran, with its error if it failed.
    pub steps: Vec<UndoRecord>,
    /// Differences between the state after rolling back and the state before the run (empty when
    /// the environment is back where it was).
    pub mismatches: Vec<String>,
}

/// The report of a finished run (serde: JSON for machines, `Display` for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// How long it took.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Every step run, in order.
    pub steps: Vec<StepRecord>,
    /// Every gate verdict, in order.
    pub verdicts: Vec<VerdictRecord>,
    /// The rollback, if there was one.
    pub rollback: Option<RollbackRecord>,
    /// Notes (a schema kept on rollback, a drain that timed out).
    pub notes: Vec<String>,
    /// The state of the environment at the end, when it could be read.
    pub final_state: Option<Snapshot>,
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
            fmt_duration(self.duration)
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
                fmt_duration(s.duration)
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
