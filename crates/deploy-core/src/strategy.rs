//! Strategies as data, and how each turns a snapshot of the environment into a [`Plan`].
//!
//! A strategy decides *what* to do; the engine ([`crate::engine`]) decides *how* (retries,
//! timeouts, probes, gates) and undoes it on failure. A plan is plain data: it can be printed,
//! serialised, journaled and resumed by another process.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Endpoint;
use crate::model::{
    BackupId, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId, Version, Weights,
};

/// How many targets a rolling deploy changes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// This many targets per batch (at least 1).
    Count(#[serde(deserialize_with = "whole::count")] u32),
    /// This percentage of the fleet per batch (1 to 100), rounded up, at least one target ("max
    /// unavailable").
    Percent(#[serde(deserialize_with = "whole::percent")] u8),
}

impl BatchSize {
    /// The number of targets per batch for a fleet of `n` (a batch size out of range, which
    /// [`Strategy::problems`] reports and planning refuses, is brought into 1..=n).
    pub fn of(self, n: usize) -> usize {
        let size = match self {
            Self::Count(c) => c as usize,
            Self::Percent(p) => (n * usize::from(p)).div_ceil(100),
        };
        size.clamp(1, n.max(1))
    }
}

/// How many targets of a rolling deploy may fail while the rest go on (`max_failed_targets`): a
/// failed target is taken out of the traffic and rolled back alone, and the run ends
/// [`Outcome::PromotedWithFailures`](crate::Outcome::PromotedWithFailures) naming it; one more
/// failure than this rolls the whole fleet back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetBudget {
    /// At most this many targets.
    Count(#[serde(deserialize_with = "whole::budget_count")] u32),
    /// At most this percentage of the fleet (0 to 100), rounded down.
    Percent(#[serde(deserialize_with = "whole::budget_percent")] u8),
}

impl TargetBudget {
    /// How many targets of a fleet of `n` may fail; always fewer than `n`, so that a run that
    /// carries on leaves at least one target on the new release.
    pub fn of(self, n: usize) -> usize {
        let k = match self {
            Self::Count(c) => c as usize,
            Self::Percent(p) => n * usize::from(p.min(100)) / 100,
        };
        k.min(n.saturating_sub(1))
    }
}

/// When a rolling deploy prepares its targets (`prepare`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrepareOrder {
    /// Every target before the first batch acts: a target that cannot be prepared (a full
    /// disk, a broken artifact) fails before any batch is drained (the fleet untouched, or a
    /// failure budget takes that target out of the traffic). The default.
    #[default]
    AllFirst,
    /// The first batch before it acts, then each next batch from the start of the health
    /// waits of the batch before it: its prepares run beside those waits and on beside that
    /// batch's weights (those that do not fit beside the waits within `parallelism` start
    /// when the waits end), and end before it is drained — and before an analysis that
    /// measures them as its baseline. With a batch of at most `parallelism` a batch's weights
    /// never wait for them, so a slow prepare costs time, never capacity. A target that cannot
    /// be prepared is found
    /// when its batch comes, after earlier batches changed, and fails like any other step (the
    /// fleet rolls back, or a failure budget takes it out before it is drained). With
    /// migrations pending, every target is still prepared first (the plan says so): a prepare
    /// failing after the migration would cost a restore.
    BatchAhead,
}

impl PrepareOrder {
    fn is_all_first(&self) -> bool {
        *self == Self::AllFirst
    }
}

/// Whole numbers of a strategy, read with what they mean in the message ("a whole number from
/// 0 to 100"), never the Rust type. Every value of the type is read (a value out of the range
/// the text names is for [`Strategy::problems`] to report, with its key).
mod whole {
    use serde::Deserializer;
    use serde::de::{Error, Unexpected, Visitor};

    pub(super) fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let text = "a whole number from 0 to 100 (a percentage of the traffic)";
        bounded(d, u8::MAX.into(), text).map(|v| v as u8)
    }

    pub(super) fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let text = "a whole number from 1 to 100 (a percentage of the targets)";
        bounded(d, u8::MAX.into(), text).map(|v| v as u8)
    }

    pub(super) fn budget_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = "a whole number of at least 0 (targets that may fail)";
        bounded(d, u32::MAX.into(), text).map(|v| v as u32)
    }

    pub(super) fn budget_percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let text = "a whole number from 0 to 100 (a percentage of the targets that may fail)";
        bounded(d, u8::MAX.into(), text).map(|v| v as u8)
    }

    pub(super) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = "a whole number of at least 1 (targets per batch)";
        bounded(d, u32::MAX.into(), text).map(|v| v as u32)
    }

    fn bounded<'de, D: Deserializer<'de>>(
        d: D,
        max: u64,
        what: &'static str,
    ) -> Result<u64, D::Error> {
        struct V {
            max: u64,
            what: &'static str,
        }
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.what)
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
                if v <= self.max {
                    Ok(v)
                } else {
                    Err(E::invalid_value(Unexpected::Unsigned(v), &self))
                }
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
        }
        d.deserialize_u64(V { max, what })
    }
}

/// One step of a canary strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStep {
    /// Send this percentage of traffic (0–100) to the canary.
    SetWeight(#[serde(deserialize_with = "whole::weight")] u8),
    /// Run the gates for this long; a failed analysis rolls back.
    Analyze(#[serde(with = "humantime_serde")] Duration),
    /// Wait this long.
    Pause(#[serde(with = "humantime_serde")] Duration),
    /// Wait until the operator promotes (or aborts).
    PauseUntilPromoted,
}

/// A deployment strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Maintenance window: maintenance on → stop → backup → migrate → activate → healthy →
    /// maintenance off. The only strategy where destructive migrations are allowed by default.
    Recreate {},
    /// Batch by batch: drain → wait until sessions reach 0 → activate → healthy → restore weight.
    Rolling {
        /// Targets per batch.
        batch: BatchSize,
        /// Run the gates for this long after each batch (none when absent).
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        analysis: Option<Duration>,
        /// How many targets may fail (be taken out of the traffic and rolled back alone) while
        /// the others go on; none when absent: the first failure rolls back the fleet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_failed_targets: Option<TargetBudget>,
        /// When the targets are prepared: all before the first batch (the default), or each
        /// batch while the one before it waits to be healthy.
        #[serde(default, skip_serializing_if = "PrepareOrder::is_all_first")]
        prepare: PrepareOrder,
    },
    /// Prepare and activate the idle slot → healthy → optional pre-switch analysis → switch
    /// 100 % → bake with gates.
    BlueGreen {
        /// Run the gates on the idle slot for this long before switching.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        pre_switch_analysis: Option<Duration>,
        /// Run the gates for this long after the switch; a failure switches back.
        #[serde(default, with = "humantime_serde")]
        bake: Duration,
    },
    /// Prepare and activate the idle slot, then shift traffic step by step, then promote.
    Canary {
        /// The steps, in order.
        steps: Vec<CanaryStep>,
    },
}

/// One thing wrong with a strategy or a policy, found before anything is touched: the key it
/// is at, relative to the strategy or the policies (`steps[1].set_weight`, `probe.interval`),
/// and what is wrong, in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The key path inside the strategy (`steps[1].set_weight`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigProblem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Strategy {
    /// Everything wrong with this strategy on its own, whatever the environment: a canary
    /// without steps or whose weights go down or above 100, a rolling batch of no target or of
    /// more than the whole fleet, an analysis of no time. [`Strategy::plan`] refuses such a
    /// strategy; a plan file reports each problem with its key path.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let zero = |path: &str| {
            ConfigProblem::new(
                path,
                "an analysis of no time judges nothing; give a duration such as `2m`, or leave \
                 the key out for no analysis",
            )
        };
        match self {
            Self::Recreate {} => {}
            Self::Rolling {
                batch,
                analysis,
                max_failed_targets,
                ..
            } => {
                if let Some(TargetBudget::Percent(p)) = max_failed_targets
                    && *p > 100
                {
                    problems.push(ConfigProblem::new(
                        "max_failed_targets.percent",
                        format!(
                            "{p} is more than 100; give a whole number from 0 to 100 (the \
                             percentage of targets that may fail)"
                        ),
                    ));
                }
                match batch {
                    BatchSize::Count(0) => problems.push(ConfigProblem::new(
                        "batch.count",
                        "0 targets per batch would change nothing; give a whole number of at \
                         least 1",
                    )),
                    BatchSize::Percent(p) if !(1..=100).contains(p) => {
                        problems.push(ConfigProblem::new(
                            "batch.percent",
                            format!(
                                "{p} is not a share of the fleet; give a whole number from 1 to \
                                 100 (the percentage of targets changed at once)"
                            ),
                        ))
                    }
                    _ => {}
                }
                if analysis.is_some_and(|d| d.is_zero()) {
                    problems.push(zero("analysis"));
                }
            }
            Self::BlueGreen {
                pre_switch_analysis,
                ..
            } => {
                if pre_switch_analysis.is_some_and(|d| d.is_zero()) {
                    problems.push(zero("pre_switch_analysis"));
                }
            }
            Self::Canary { steps } => {
                if steps.is_empty() {
                    problems.push(ConfigProblem::new(
                        "steps",
                        "no steps: the canary would go straight to 100 %; give at least one \
                         step, such as [{ set_weight = 10 }, { analyze = \"5m\" }]",
                    ));
                }
                let mut last: Option<(usize, u8)> = None;
                for (i, s) in steps.iter().enumerate() {
                    match s {
                        CanaryStep::SetWeight(p) if *p > 100 => {
                            problems.push(ConfigProblem::new(
                                format!("steps[{i}].set_weight"),
                                format!(
                                    "{p} is more than 100; give a percentage of the traffic \
                                     from 0 to 100"
                                ),
                            ));
                        }
                        CanaryStep::SetWeight(p) => {
                            if let Some((j, before)) = last
                                && *p < before
                            {
                                problems.push(ConfigProblem::new(
                                    format!("steps[{i}].set_weight"),
                                    format!(
                                        "{p} is less than the {before} of steps[{j}]: a canary's \
                                         share of the traffic only grows (to go back, let a \
                                         gate fail or abort)"
                                    ),
                                ));
                            }
                            last = Some((i, *p));
                        }
                        CanaryStep::Analyze(d) if d.is_zero() => {
                            problems.push(zero(&format!("steps[{i}].analyze")));
                        }
                        _ => {}
                    }
                }
            }
        }
        problems
    }

    /// Short name: `recreate`, `rolling`, `blue_green`, `canary`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Recreate {} => "recreate",
            Self::Rolling { .. } => "rolling",
            Self::BlueGreen { .. } => "blue_green",
            Self::Canary { .. } => "canary",
        }
    }

    /// Whether users keep being served throughout (every strategy but `Recreate`).
    pub fn is_zero_downtime(&self) -> bool {
        !matches!(self, Self::Recreate {})
    }
}

/// What the schema does when a deploy rolls back after migrations ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaRollback {
    /// Keep additive migrations (they are compatible with the old release, and reverting could
    /// drop data the new release wrote); revert when any applied migration was destructive.
    #[default]
    KeepAdditive,
    /// Always bring the schema back to where it was.
    Revert,
}

/// Options that change what a plan contains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Allow destructive migrations in a zero-downtime strategy (expand/contract says they
    /// belong to `Recreate` or to a later release).
    pub allow_destructive_migrations: bool,
    /// Skip the backup before migrating.
    pub skip_backup: bool,
    /// What the schema does on rollback.
    pub schema_rollback: SchemaRollback,
    /// Run no migration: the release runs against the schema as it is (a rollback to a
    /// recorded release, whose code ran against it or an older one).
    pub skip_migrations: bool,
    /// A rolling deploy of these targets only, the others left as they are (retrying the
    /// targets a run with a failure budget gave up on); every target when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_targets: Option<Vec<TargetId>>,
    /// The weight a rolling batch gives each of these targets back, instead of the one it has
    /// when the plan is made (a target given up on was taken out of the traffic: weight 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_back: Option<Weights>,
}

/// One thing the engine does. Steps are idempotent: running one twice is the same as once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    /// Install the release on a target without activating it.
    Prepare {
        /// The target.
        target: TargetId,
        /// The version installed.
        version: Version,
    },
    /// Make a version current on a target.
    Activate {
        /// The target.
        target: TargetId,
        /// The version activated.
        version: Version,
    },
    /// Stop a target.
    Stop {
        /// The target.
        target: TargetId,
    },
    /// Start a target on its current version.
    Start {
        /// The target.
        target: TargetId,
    },
    /// Probe a target until it is healthy; it fails after the probe policy's `unhealthy_threshold`
    /// answered unhealthy checks in a row, at an answer reporting another version, or at the
    /// probe deadline.
    AwaitHealthy {
        /// The target.
        target: TargetId,
        /// The version it must report.
        version: Option<Version>,
    },
    /// Show the maintenance page.
    MaintenanceOn,
    /// Hide the maintenance page.
    MaintenanceOff,
    /// Back up the database.
    Backup,
    /// Apply the pending migrations.
    Migrate,
    /// Bring the schema back (only ever an inverse).
    RevertSchema {
        /// The version to return to.
        to: Option<SchemaVersion>,
        /// The backup to restore if down migrations cannot.
        backup: Option<BackupId>,
    },
    /// Stop new traffic to a target and wait until its sessions reach 0 (or the drain timeout).
    Drain {
        /// The target.
        target: TargetId,
    },
    /// Set traffic weights.
    SetWeights {
        /// The weights of the targets named; others are left alone.
        weights: Weights,
    },
    /// Run the gates for a while.
    Analyze {
        /// What this analysis is for ("bake", "canary at 10%").
        name: String,
        /// How long.
        #[serde(with = "humantime_serde")]
        duration: Duration,
        /// Targets on the new version.
        canary: Vec<TargetId>,
        /// Targets on the old version.
        baseline: Vec<TargetId>,
    },
    /// Wait for a while, or until promoted when `duration` is absent.
    Pause {
        /// How long; absent means until the operator promotes or aborts.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        duration: Option<Duration>,
    },
}

impl Step {
    /// The one target this step touches, if it touches exactly one (prepare, activate, stop,
    /// start, await healthy, drain). Such steps of one kind on distinct targets may run together.
    pub fn target(&self) -> Option<&TargetId> {
        match self {
            Self::Prepare { target, .. }
            | Self::Activate { target, .. }
            | Self::Stop { target }
            | Self::Start { target }
            | Self::AwaitHealthy { target, .. }
            | Self::Drain { target } => Some(target),
            _ => None,
        }
    }

    /// The name of blue-green's analysis of the idle slot before the switch
    /// ([`AnalysisPolicy::pre_switch_gates`](crate::policy::AnalysisPolicy::pre_switch_gates)
    /// chooses its gates).
    pub const PRE_SWITCH: &'static str = "pre-switch";

    /// Every kind of step, as [`op`](Self::op) names them.
    pub const KINDS: &'static [&'static str] = &[
        "prepare",
        "activate",
        "stop",
        "start",
        "await_healthy",
        "maintenance_on",
        "maintenance_off",
        "backup",
        "migrate",
        "revert_schema",
        "drain",
        "set_weights",
        "analyze",
        "pause",
    ];

    /// A stable short name for the kind of step (`activate`, `set_weights`...), one of
    /// [`KINDS`](Self::KINDS).
    pub fn op(&self) -> &'static str {
        match self {
            Self::Prepare { .. } => "prepare",
            Self::Activate { .. } => "activate",
            Self::Stop { .. } => "stop",
            Self::Start { .. } => "start",
            Self::AwaitHealthy { .. } => "await_healthy",
            Self::MaintenanceOn => "maintenance_on",
            Self::MaintenanceOff => "maintenance_off",
            Self::Backup => "backup",
            Self::Migrate => "migrate",
            Self::RevertSchema { .. } => "revert_schema",
            Self::Drain { .. } => "drain",
            Self::SetWeights { .. } => "set_weights",
            Self::Analyze { .. } => "analyze",
            Self::Pause { .. } => "pause",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepare { target, version } => write!(f, "prepare {version} on {target}"),
            Self::Activate { target, version } => write!(f, "activate {version} on {target}"),
            Self::Stop { target } => write!(f, "stop {target}"),
            Self::Start { target } => write!(f, "start {target}"),
            Self::AwaitHealthy {
                target,
                version: Some(v),
            } => write!(f, "wait until {target} is healthy on {v}"),
            Self::AwaitHealthy {
                target,
                version: None,
            } => write!(f, "wait until {target} is healthy"),
            Self::MaintenanceOn => f.write_str("turn maintenance page on"),
            Self::MaintenanceOff => f.write_str("turn maintenance page off"),
            Self::Backup => f.write_str("back up the database"),
            Self::Migrate => f.write_str("apply pending migrations"),
            Self::RevertSchema { to, backup } => {
                write!(
                    f,
                    "revert schema to {}",
                    to.as_ref().map_or("empty".to_owned(), ToString::to_string)
                )?;
                if let Some(b) = backup {
                    write!(f, " (backup {b})")?;
                }
                Ok(())
            }
            Self::Drain { target } => write!(f, "drain {target}"),
            Self::SetWeights { weights } => write!(f, "set weights {weights}"),
            Self::Analyze {
                name,
                duration,
                canary,
                ..
            } => write!(
                f,
                "analyze {} for {} ({name})",
                join(canary),
                humantime::format_duration(*duration)
            ),
            Self::Pause { duration: Some(d) } => {
                write!(f, "pause {}", humantime::format_duration(*d))
            }
            Self::Pause { duration: None } => f.write_str("pause until promoted"),
        }
    }
}

fn join(ids: &[TargetId]) -> String {
    ids.iter()
        .map(TargetId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// One target as the engine saw it before planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetState {
    /// The target.
    pub id: TargetId,
    /// Where it serves.
    pub endpoint: Endpoint,
    /// Its current version.
    pub current: Option<Version>,
}

/// The state of an environment: what every target runs, the weights, the schema, maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Every target, in configuration order.
    pub targets: Vec<TargetState>,
    /// The switch's weights, when there is a switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// The schema, when there is a migration runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationStatus>,
    /// Whether the maintenance page is on, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,
}

impl Snapshot {
    /// A snapshot (for strategies tested without an engine).
    pub fn new(
        targets: Vec<TargetState>,
        weights: Option<Weights>,
        migrations: Option<MigrationStatus>,
        maintenance: Option<bool>,
    ) -> Self {
        Self {
            targets,
            weights,
            migrations,
            maintenance,
        }
    }

    /// The current version of `target`.
    pub fn version_of(&self, target: &TargetId) -> Option<&Version> {
        self.targets
            .iter()
            .find(|t| &t.id == target)
            .and_then(|t| t.current.as_ref())
    }
}

impl TargetState {
    /// A target state.
    pub fn new(id: TargetId, endpoint: Endpoint, current: Option<Version>) -> Self {
        Self {
            id,
            endpoint,
            current,
        }
    }
}

/// A plan: the steps a strategy chose for one release, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// The environment's name.
    pub environment: String,
    /// The release.
    pub release: Release,
    /// The strategy it came from.
    pub strategy: Strategy,
    /// Options it was planned with.
    pub options: PlanOptions,
    /// The state it was planned from.
    pub snapshot: Snapshot,
    /// The steps.
    pub steps: Vec<Step>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Deploy {} to {} with {} ({} steps):",
            self.release.version,
            self.environment,
            self.strategy.name(),
            self.steps.len()
        )?;
        for t in &self.snapshot.targets {
            let v = t
                .current
                .as_ref()
                .map_or("nothing".to_owned(), ToString::to_string);
            let w = self
                .snapshot
                .weights
                .as_ref()
                .and_then(|w| w.get(&t.id))
                .map_or(String::new(), |w| format!(", weight {w}"));
            writeln!(f, "  now: {} runs {v} at {}{w}", t.id, t.endpoint)?;
        }
        if let Some(m) = &self.snapshot.migrations {
            let cur = m
                .current
                .as_ref()
                .map_or("empty".to_owned(), ToString::to_string);
            writeln!(f, "  now: schema at {cur}, {} pending", m.pending.len())?;
            for p in &m.pending {
                match &p.destructive {
                    Some(why) => {
                        writeln!(f, "       {} {} (destructive: {why})", p.version, p.name)?
                    }
                    None => writeln!(f, "       {} {} (additive)", p.version, p.name)?,
                }
            }
        }
        if matches!(
            self.strategy,
            Strategy::Rolling {
                prepare: PrepareOrder::BatchAhead,
                ..
            }
        ) && self.steps.iter().any(|s| matches!(s, Step::Migrate))
        {
            writeln!(
                f,
                "  prepare = \"batch_ahead\" set aside: with migrations pending, every target is \
                 prepared before them"
            )?;
        }
        let width = self.steps.len().to_string().len();
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>width$}. {s}", i + 1)?;
        }
        Ok(())
    }
}

/// Why a strategy cannot plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The environment lacks something the strategy needs, or its state does not fit.
    #[error("plan {strategy} deploy of {version}: {reason}")]
    Unfit {
        /// The strategy.
        strategy: &'static str,
        /// The version.
        version: Version,
        /// What is missing or wrong.
        reason: String,
    },
    /// Destructive migrations are pending and the strategy keeps users served.
    #[error(
        "plan {strategy} deploy of {version}: refused, destructive migrations pending: {}; \
         run them under the recreate strategy or in a later (contract) release, or set \
         allow_destructive_migrations",
        .migrations.iter().map(|m| format!("{} {} ({})", m.version, m.name, m.destructive.as_deref().unwrap_or(""))).collect::<Vec<_>>().join(", ")
    )]
    DestructiveMigration {
        /// The strategy.
        strategy: &'static str,
        /// The version.
        version: Version,
        /// The destructive migrations.
        migrations: Vec<MigrationInfo>,
    },
    /// A gate cannot measure what an analysis of the plan asks of it.
    #[error(
        "plan {strategy} deploy of {version}: gate {gate} cannot judge the analysis \"{analysis}\": {reason}"
    )]
    GateCannotMeasure {
        /// The strategy.
        strategy: &'static str,
        /// The version.
        version: Version,
        /// The gate.
        gate: String,
        /// The analysis.
        analysis: String,
        /// Why.
        reason: String,
    },
}

/// What planning needs to know about the environment besides its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A traffic switch is configured.
    pub switch: bool,
    /// A maintenance page is configured.
    pub maintenance: bool,
    /// A migration runner is configured.
    pub migrations: bool,
}

impl Capabilities {
    /// Capabilities.
    pub fn new(switch: bool, maintenance: bool, migrations: bool) -> Self {
        Self {
            switch,
            maintenance,
            migrations,
        }
    }
}

impl Strategy {
    /// Turn this strategy into a plan for `release`, given the environment's state.
    pub fn plan(
        &self,
        environment: &str,
        release: &Release,
        snapshot: &Snapshot,
        caps: Capabilities,
        options: &PlanOptions,
    ) -> Result<Plan, PlanError> {
        let version = &release.version;
        let unfit = |reason: String| PlanError::Unfit {
            strategy: self.name(),
            version: version.clone(),
            reason,
        };
        let problems = self.problems();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(unfit(text.join("; ")));
        }
        if snapshot.targets.is_empty() {
            return Err(unfit("the environment has no targets".into()));
        }
        let mut ids: Vec<TargetId> = snapshot.targets.iter().map(|t| t.id.clone()).collect();
        if let Some(only) = &options.only_targets {
            if !matches!(self, Self::Rolling { .. }) {
                return Err(unfit(format!(
                    "only a rolling deploy can be limited to some targets ({})",
                    join(only)
                )));
            }
            let unknown: Vec<TargetId> =
                only.iter().filter(|t| !ids.contains(t)).cloned().collect();
            if !unknown.is_empty() {
                return Err(unfit(format!(
                    "the environment has no target {}",
                    join(&unknown)
                )));
            }
            ids.retain(|t| only.contains(t));
            if ids.is_empty() {
                return Err(unfit("no target to deploy to".into()));
            }
        }

        // Migration safety (expand/contract).
        let pending = match &snapshot.migrations {
            Some(m) if !options.skip_migrations => m.pending.clone(),
            _ => Vec::new(),
        };
        let destructive: Vec<MigrationInfo> = pending
            .iter()
            .filter(|m| m.destructive.is_some())
            .cloned()
            .collect();
        if self.is_zero_downtime()
            && !destructive.is_empty()
            && !options.allow_destructive_migrations
        {
            return Err(PlanError::DestructiveMigration {
                strategy: self.name(),
                version: version.clone(),
                migrations: destructive,
            });
        }
        let mut migrate = Vec::new();
        if caps.migrations && !pending.is_empty() {
            if !options.skip_backup {
                migrate.push(Step::Backup);
            }
            migrate.push(Step::Migrate);
        }

        let mut steps = Vec::new();
        match self {
            Self::Recreate {} => {
                steps.extend(ids.iter().map(|t| Step::Prepare {
                    target: t.clone(),
                    version: version.clone(),
                }));
                if caps.maintenance {
                    steps.push(Step::MaintenanceOn);
                }
                steps.extend(ids.iter().map(|t| Step::Stop { target: t.clone() }));
                steps.extend(migrate);
                steps.extend(ids.iter().map(|t| Step::Activate {
                    target: t.clone(),
                    version: version.clone(),
                }));
                steps.extend(ids.iter().map(|t| Step::AwaitHealthy {
                    target: t.clone(),
                    version: Some(version.clone()),
                }));
                if caps.maintenance {
                    steps.push(Step::MaintenanceOff);
                }
            }
            Self::Rolling {
                batch,
                analysis,
                max_failed_targets,
                prepare,
            } => {
                if max_failed_targets.is_some() && !caps.switch {
                    return Err(unfit(
                        "max_failed_targets needs a traffic switch, to take a failed target \
                         out of the traffic"
                            .into(),
                    ));
                }
                let weights = if caps.switch {
                    Some(
                        snapshot
                            .weights
                            .clone()
                            .ok_or_else(|| unfit("the switch reported no weights".into()))?,
                    )
                } else {
                    None
                };
                let size = batch.of(ids.len());
                let chunks: Vec<&[TargetId]> = ids.chunks(size).collect();
                // Batch ahead: the first batch now, each next one beside the health waits of
                // the batch before it (the engine runs a batch's health waits and the prepares
                // that follow them together). Pending migrations: everything first.
                let ahead = *prepare == PrepareOrder::BatchAhead && migrate.is_empty();
                let prepares_of = |targets: &[TargetId]| {
                    targets
                        .iter()
                        .map(|t| Step::Prepare {
                            target: t.clone(),
                            version: version.clone(),
                        })
                        .collect::<Vec<_>>()
                };
                steps.extend(prepares_of(if ahead { chunks[0] } else { &ids }));
                steps.extend(migrate);
                let mut done: Vec<TargetId> = Vec::new();
                for (i, &chunk) in chunks.iter().enumerate() {
                    if weights.is_some() {
                        steps.extend(chunk.iter().map(|t| Step::Drain { target: t.clone() }));
                    }
                    steps.extend(chunk.iter().map(|t| Step::Activate {
                        target: t.clone(),
                        version: version.clone(),
                    }));
                    steps.extend(chunk.iter().map(|t| Step::AwaitHealthy {
                        target: t.clone(),
                        version: Some(version.clone()),
                    }));
                    if ahead && let Some(next) = chunks.get(i + 1) {
                        steps.extend(prepares_of(next));
                    }
                    if let Some(w) = &weights {
                        let mut back = w.only(chunk);
                        if let Some(given) = &options.weights_back {
                            for t in chunk {
                                if let Some(g) = given.get(t) {
                                    back.set(t.clone(), g);
                                }
                            }
                        }
                        steps.push(Step::SetWeights { weights: back });
                    }
                    done.extend(chunk.iter().cloned());
                    if let Some(d) = analysis {
                        let baseline = ids.iter().filter(|t| !done.contains(t)).cloned().collect();
                        steps.push(Step::Analyze {
                            name: format!("after batch of {}", join(chunk)),
                            duration: *d,
                            canary: done.clone(),
                            baseline,
                        });
                    }
                }
            }
            Self::BlueGreen {
                pre_switch_analysis,
                bake,
            } => {
                let (live, idle, weight) = slots(self.name(), version, snapshot, caps)?;
                steps.extend(migrate);
                push_idle_up(&mut steps, &idle, version, snapshot);
                if let Some(d) = pre_switch_analysis {
                    steps.push(Step::Analyze {
                        name: Step::PRE_SWITCH.into(),
                        duration: *d,
                        canary: idle.clone(),
                        baseline: live.clone(),
                    });
                }
                steps.push(Step::SetWeights {
                    weights: switch_all(&idle, &live, weight),
                });
                if !bake.is_zero() {
                    steps.push(Step::Analyze {
                        name: "bake".into(),
                        duration: *bake,
                        canary: idle.clone(),
                        baseline: Vec::new(),
                    });
                }
            }
            Self::Canary {
                steps: canary_steps,
            } => {
                let (live, idle, weight) = slots(self.name(), version, snapshot, caps)?;
                steps.extend(migrate);
                push_idle_up(&mut steps, &idle, version, snapshot);
                let mut pct = 0u8;
                for s in canary_steps {
                    match s {
                        CanaryStep::SetWeight(p) => {
                            pct = *p;
                            steps.push(Step::SetWeights {
                                weights: canary_weights(&idle, &live, pct),
                            });
                        }
                        CanaryStep::Analyze(d) => steps.push(Step::Analyze {
                            name: format!("canary at {pct}%"),
                            duration: *d,
                            canary: idle.clone(),
                            baseline: live.clone(),
                        }),
                        CanaryStep::Pause(d) => steps.push(Step::Pause { duration: Some(*d) }),
                        CanaryStep::PauseUntilPromoted => {
                            steps.push(Step::Pause { duration: None })
                        }
                    }
                }
                steps.push(Step::SetWeights {
                    weights: switch_all(&idle, &live, weight),
                });
            }
        }
        Ok(Plan {
            environment: environment.to_owned(),
            release: release.clone(),
            strategy: self.clone(),
            options: options.clone(),
            snapshot: snapshot.clone(),
            steps,
        })
    }
}

/// Split the targets into live (weight > 0) and idle (weight 0) slots; return the weight the
/// idle slots get when they take over.
fn slots(
    strategy: &'static str,
    version: &Version,
    snapshot: &Snapshot,
    caps: Capabilities,
) -> Result<(Vec<TargetId>, Vec<TargetId>, u32), PlanError> {
    let unfit = |reason: String| PlanError::Unfit {
        strategy,
        version: version.clone(),
        reason,
    };
    if !caps.switch {
        return Err(unfit("it needs a traffic switch".into()));
    }
    let weights = snapshot
        .weights
        .as_ref()
        .ok_or_else(|| unfit("the switch reported no weights".into()))?;
    let mut live = Vec::new();
    let mut idle = Vec::new();
    for t in &snapshot.targets {
        match weights.get(&t.id) {
            Some(0) => idle.push(t.id.clone()),
            Some(_) => live.push(t.id.clone()),
            None => {
                return Err(unfit(format!(
                    "the switch does not know target {} (it knows {})",
                    t.id,
                    match weights
                        .iter()
                        .map(|(t, _)| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                    {
                        known if known.is_empty() => "none".to_owned(),
                        known => known,
                    }
                )));
            }
        }
    }
    if live.is_empty() {
        return Err(unfit(
            "no target takes traffic (all weights are 0), so there is no live slot".into(),
        ));
    }
    if idle.is_empty() {
        return Err(unfit(format!(
            "no idle slot: every target takes traffic ({weights}); set one slot's weight to 0"
        )));
    }
    let weight = live
        .iter()
        .filter_map(|t| weights.get(t))
        .max()
        .unwrap_or(1)
        .max(1);
    Ok((live, idle, weight))
}

/// Bring the idle slots up on `version`: prepare and activate those that do not run it yet
/// (one that still runs it — a switch back to the previous release — is only health-checked),
/// then wait until each is healthy.
fn push_idle_up(steps: &mut Vec<Step>, idle: &[TargetId], version: &Version, snapshot: &Snapshot) {
    let runs_it = |t: &TargetId| {
        snapshot
            .targets
            .iter()
            .any(|s| &s.id == t && s.current.as_ref() == Some(version))
    };
    let behind: Vec<&TargetId> = idle.iter().filter(|t| !runs_it(t)).collect();
    steps.extend(behind.iter().map(|t| Step::Prepare {
        target: (*t).clone(),
        version: version.clone(),
    }));
    steps.extend(behind.iter().map(|t| Step::Activate {
        target: (*t).clone(),
        version: version.clone(),
    }));
    steps.extend(idle.iter().map(|t| Step::AwaitHealthy {
        target: t.clone(),
        version: Some(version.clone()),
    }));
}

fn switch_all(to: &[TargetId], from: &[TargetId], weight: u32) -> Weights {
    to.iter()
        .map(|t| (t.clone(), weight))
        .chain(from.iter().map(|t| (t.clone(), 0)))
        .collect()
}

/// Per-target weights so that the canary group as a whole gets `pct` percent of the traffic
/// whatever the sizes of the two groups.
fn canary_weights(canary: &[TargetId], stable: &[TargetId], pct: u8) -> Weights {
    let (c, s) = (canary.len() as u64, stable.len() as u64);
    let mut wc = u64::from(pct) * s;
    let mut ws = u64::from(100 - pct) * c;
    let g = gcd(wc, ws);
    if g > 1 {
        wc /= g;
        ws /= g;
    }
    // Keep weights in HAProxy's 0..=256 range for the common cases while preserving the ratio.
    while wc > 256 || ws > 256 {
        wc = wc.div_ceil(2);
        ws = ws.div_ceil(2);
    }
    if pct == 0 {
        wc = 0;
    }
    if pct == 100 {
        ws = 0;
    }
    canary
        .iter()
        .map(|t| (t.clone(), wc as u32))
        .chain(stable.iter().map(|t| (t.clone(), ws as u32)))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    fn snap(weights: &[(&str, u32)], pending: Vec<MigrationInfo>) -> Snapshot {
        Snapshot::new(
            weights
                .iter()
                .map(|(t, _)| {
                    TargetState::new(
                        id(t),
                        Endpoint::http("127.0.0.1", 1),
                        Some(Version::new("1").unwrap()),
                    )
                })
                .collect(),
            Some(weights.iter().map(|(t, w)| (id(t), *w)).collect()),
            Some(MigrationStatus::new(None, pending)),
            Some(false),
        )
    }

    fn release() -> Release {
        Release::new(Version::new("2").unwrap())
    }

    const ALL: Capabilities = Capabilities {
        switch: true,
        maintenance: true,
        migrations: true,
    };

    #[test]
    fn canary_weights_give_the_group_its_share() {
        let w = canary_weights(&[id("c")], &[id("a"), id("b"), id("d")], 10);
        let total = w.total() as f64;
        let share = f64::from(w.get(&id("c")).unwrap()) / total * 100.0;
        assert!((share - 10.0).abs() < 1e-9, "{w}");
        let w = canary_weights(&[id("g")], &[id("b")], 5);
        assert_eq!(w.to_string(), "b=19,g=1");
        assert_eq!(
            canary_weights(&[id("g")], &[id("b")], 100).to_string(),
            "b=0,g=1"
        );
    }

    #[test]
    fn problems_name_their_keys_and_planning_refuses_them() {
        let paths =
            |s: &Strategy| -> Vec<String> { s.problems().into_iter().map(|p| p.path).collect() };
        let canary = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(50),
                CanaryStep::Analyze(Duration::ZERO),
                CanaryStep::SetWeight(10),
                CanaryStep::SetWeight(150),
            ],
        };
        assert_eq!(
            paths(&canary),
            [
                "steps[1].analyze",
                "steps[2].set_weight",
                "steps[3].set_weight"
            ]
        );
        assert_eq!(paths(&Strategy::Canary { steps: vec![] }), ["steps"]);
        for (batch, path) in [
            (BatchSize::Count(0), "batch.count"),
            (BatchSize::Percent(0), "batch.percent"),
            (BatchSize::Percent(150), "batch.percent"),
        ] {
            let s = Strategy::Rolling {
                batch,
                analysis: None,
                max_failed_targets: None,
                prepare: Default::default(),
            };
            assert_eq!(paths(&s), [path]);
            let err = s
                .plan(
                    "prod",
                    &release(),
                    &snap(&[("blue", 100), ("green", 0)], vec![]),
                    Capabilities::new(true, false, false),
                    &PlanOptions::default(),
                )
                .unwrap_err();
            assert!(err.to_string().contains(path), "{err}");
        }
        // Whole numbers are read with what they mean, never the Rust type.
        let e = serde_json::from_str::<CanaryStep>(r#"{"set_weight":300}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected a whole number from 0 to 100"),
            "{e}"
        );
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(BatchSize::Count(2).of(5), 2);
        assert_eq!(BatchSize::Count(0).of(5), 1);
        assert_eq!(BatchSize::Count(9).of(5), 5);
        assert_eq!(BatchSize::Percent(25).of(8), 2);
        assert_eq!(BatchSize::Percent(25).of(5), 2);
    }

    #[test]
    fn destructive_migrations_are_refused_outside_recreate() {
        let pending = vec![MigrationInfo::new(
            "3",
            "drop_old",
            Some("DROP COLUMN".into()),
        )];
        let s = snap(&[("blue", 1), ("green", 0)], pending);
        let bg = Strategy::BlueGreen {
            pre_switch_analysis: None,
            bake: Duration::ZERO,
        };
        let err = bg
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap_err();
        assert!(matches!(err, PlanError::DestructiveMigration { .. }));
        assert!(
            err.to_string().contains("3 drop_old (DROP COLUMN)"),
            "{err}"
        );
        let opts = PlanOptions {
            allow_destructive_migrations: true,
            ..PlanOptions::default()
        };
        assert!(bg.plan("prod", &release(), &s, ALL, &opts).is_ok());
        let plan = Strategy::Recreate {}
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap();
        let ops: Vec<_> = plan.steps.iter().map(Step::op).collect();
        assert_eq!(
            ops,
            [
                "prepare",
                "prepare",
                "maintenance_on",
                "stop",
                "stop",
                "backup",
                "migrate",
                "activate",
                "activate",
                "await_healthy",
                "await_healthy",
                "maintenance_off"
            ]
        );
    }

    #[test]
    fn blue_green_targets_the_idle_slot() {
        let s = snap(&[("blue", 100), ("green", 0)], vec![]);
        let bg = Strategy::BlueGreen {
            pre_switch_analysis: Some(Duration::from_secs(5)),
            bake: Duration::from_secs(60),
        };
        let plan = bg
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap();
        let text = plan.to_string();
        assert!(text.contains("1. prepare 2 on green"), "{text}");
        assert!(text.contains("set weights blue=0,green=100"), "{text}");
        assert!(text.contains("analyze green for 1m (bake)"), "{text}");
        let all_live = snap(&[("blue", 1), ("green", 1)], vec![]);
        let err = bg
            .plan("prod", &release(), &all_live, ALL, &PlanOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("no idle slot"), "{err}");
    }

    #[test]
    fn rolling_batches_drain_activate_and_restore() {
        let s = snap(&[("a", 1), ("b", 1), ("c", 1)], vec![]);
        let r = Strategy::Rolling {
            batch: BatchSize::Count(2),
            analysis: Some(Duration::from_secs(1)),
            max_failed_targets: None,
            prepare: Default::default(),
        };
        let plan = r
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap();
        let ops: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "prepare 2 on a",
                "prepare 2 on b",
                "prepare 2 on c",
                "drain a",
                "drain b",
                "activate 2 on a",
                "activate 2 on b",
                "wait until a is healthy on 2",
                "wait until b is healthy on 2",
                "set weights a=1,b=1",
                "analyze a,b for 1s (after batch of a,b)",
                "drain c",
                "activate 2 on c",
                "wait until c is healthy on 2",
                "set weights c=1",
                "analyze a,b,c for 1s (after batch of c)",
            ]
        );
    }

    #[test]
    fn rolling_batch_ahead_prepares_each_batch_beside_the_health_waits_before_it() {
        let s = snap(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)], vec![]);
        let r = Strategy::Rolling {
            batch: BatchSize::Count(2),
            analysis: None,
            max_failed_targets: None,
            prepare: PrepareOrder::BatchAhead,
        };
        let plan = r
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap();
        let ops: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "prepare 2 on a",
                "prepare 2 on b",
                "drain a",
                "drain b",
                "activate 2 on a",
                "activate 2 on b",
                "wait until a is healthy on 2",
                "wait until b is healthy on 2",
                "prepare 2 on c",
                "prepare 2 on d",
                "set weights a=1,b=1",
                "drain c",
                "drain d",
                "activate 2 on c",
                "activate 2 on d",
                "wait until c is healthy on 2",
                "wait until d is healthy on 2",
                "prepare 2 on e",
                "set weights c=1,d=1",
                "drain e",
                "activate 2 on e",
                "wait until e is healthy on 2",
                "set weights e=1",
            ]
        );
        // A migration pending: every target first, before it (a prepare failing after the
        // migration would cost a restore).
        let pending = vec![MigrationInfo::new("2", "add_note", None)];
        let s = snap(&[("a", 1), ("b", 1), ("c", 1)], pending);
        let plan = r
            .plan("prod", &release(), &s, ALL, &PlanOptions::default())
            .unwrap();
        let ops: Vec<String> = plan.steps.iter().take(5).map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "prepare 2 on a",
                "prepare 2 on b",
                "prepare 2 on c",
                "back up the database",
                "apply pending migrations",
            ]
        );
        assert!(
            plan.to_string()
                .contains("prepare = \"batch_ahead\" set aside"),
            "{plan}"
        );
        // The default is not written out; batch ahead is.
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"rolling","batch":{"count":2},"prepare":"batch_ahead"}"#
        );
        assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), r);
    }

    #[test]
    fn strategies_round_trip_through_serde() {
        let c = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(5),
                CanaryStep::Analyze(Duration::from_secs(120)),
                CanaryStep::Pause(Duration::from_secs(30)),
                CanaryStep::PauseUntilPromoted,
                CanaryStep::SetWeight(50),
            ],
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"canary","steps":[{"set_weight":5},{"analyze":"2m"},{"pause":"30s"},"pause_until_promoted",{"set_weight":50}]}"#
        );
        assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), c);
        let r: Strategy =
            serde_json::from_str(r#"{"kind":"rolling","batch":{"percent":25}}"#).unwrap();
        assert_eq!(
            r,
            Strategy::Rolling {
                batch: BatchSize::Percent(25),
                analysis: None,
                max_failed_targets: None,
                prepare: Default::default(),
            }
        );
        assert!(serde_json::from_str::<Strategy>(r#"{"kind":"recreate","typo":1}"#).is_err());
    }
}
