//! The environment a deploy touches, and its builder.

use std::collections::HashSet;

use crate::error::{Error, ErrorKind};
use crate::hooks::Hook;
use crate::model::{TargetId, Version};
use crate::served::ServedCheck;
use crate::strategy::Capabilities;
use crate::traits::{
    DynHealthProbe, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTarget, DynTrafficSwitch,
};

/// Everything a deploy touches: targets, and optionally a switch, a probe, gates, a migration
/// runner and a maintenance page.
#[derive(Debug, Clone)]
pub struct Environment {
    pub(super) name: String,
    pub(super) targets: Vec<DynTarget>,
    pub(super) switch: Option<DynTrafficSwitch>,
    pub(super) probe: Option<DynHealthProbe>,
    pub(super) gates: Vec<DynMetricGate>,
    pub(super) migrations: Option<DynMigrationRunner>,
    pub(super) maintenance: Option<DynMaintenance>,
    pub(super) hooks: Vec<Hook>,
    pub(super) served_check: Option<ServedCheck>,
}

impl Environment {
    /// Start describing the environment `name` (a valid file name: it names lock and journal).
    pub fn builder(name: impl Into<String>) -> EnvironmentBuilder {
        EnvironmentBuilder {
            env: Environment {
                name: name.into(),
                targets: Vec::new(),
                switch: None,
                probe: None,
                gates: Vec::new(),
                migrations: None,
                maintenance: None,
                hooks: Vec::new(),
                served_check: None,
            },
        }
    }

    /// The environment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its targets, in order.
    pub fn targets(&self) -> &[DynTarget] {
        &self.targets
    }

    /// The served-version check run after every traffic step, if any.
    pub fn served_check(&self) -> Option<&ServedCheck> {
        self.served_check.as_ref()
    }

    pub(super) fn target(&self, id: &TargetId) -> Result<&DynTarget, Error> {
        self.targets.iter().find(|t| t.id() == id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "find target",
                id.to_string(),
                format!("environment {} has no such target", self.name),
            )
        })
    }

    pub(super) fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            self.switch.is_some(),
            self.maintenance.is_some(),
            self.migrations.is_some(),
        )
    }
}

/// Builds an [`Environment`].
#[derive(Debug)]
pub struct EnvironmentBuilder {
    env: Environment,
}

impl EnvironmentBuilder {
    /// Add a target.
    pub fn target(mut self, target: DynTarget) -> Self {
        self.env.targets.push(target);
        self
    }

    /// Set the traffic switch.
    pub fn switch(mut self, switch: DynTrafficSwitch) -> Self {
        self.env.switch = Some(switch);
        self
    }

    /// Set the health probe.
    pub fn probe(mut self, probe: DynHealthProbe) -> Self {
        self.env.probe = Some(probe);
        self
    }

    /// Add a metric gate.
    pub fn gate(mut self, gate: DynMetricGate) -> Self {
        self.env.gates.push(gate);
        self
    }

    /// Set the migration runner.
    pub fn migrations(mut self, runner: DynMigrationRunner) -> Self {
        self.env.migrations = Some(runner);
        self
    }

    /// Add a hook (a command or webhook before or after a kind of step, or the whole run).
    pub fn hook(mut self, hook: Hook) -> Self {
        self.env.hooks.push(hook);
        self
    }

    /// Set the maintenance page.
    pub fn maintenance(mut self, maintenance: DynMaintenance) -> Self {
        self.env.maintenance = Some(maintenance);
        self
    }

    /// After every traffic step (`SetWeights`) of a run, check at the front door that the
    /// answers carry the versions the weights promise (see [`ServedCheck`]); a mismatch fails
    /// the step.
    pub fn served_check(mut self, check: ServedCheck) -> Self {
        self.env.served_check = Some(check);
        self
    }

    /// Check and build: a valid name, at least one target, no duplicate target ids, a valid
    /// served-version check.
    pub fn build(self) -> Result<Environment, Error> {
        let env = self.env;
        let mut problems = Vec::new();
        if let Err(e) = Version::new(env.name.clone()) {
            problems.push(format!("name: {}", e.message()));
        }
        if env.targets.is_empty() {
            problems.push("no targets".to_owned());
        }
        let mut seen = HashSet::new();
        for t in &env.targets {
            if !seen.insert(t.id().clone()) {
                problems.push(format!("target {} is listed twice", t.id()));
            }
        }
        if let Some(c) = &env.served_check {
            for p in c.problems() {
                problems.push(format!("served check: {}: {}", p.path, p.message));
            }
        }
        if problems.is_empty() {
            Ok(env)
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                "build environment",
                env.name.clone(),
                problems.join("; "),
            ))
        }
    }
}
