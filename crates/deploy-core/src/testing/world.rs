//! A whole fake environment in one value, for engine tests and for consumers' pipeline tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Environment, EnvironmentBuilder};
use crate::model::{SchemaVersion, Version, Weights};
use crate::traits::{DynMetricGate, DynTarget};

use super::fakes::{FakeGate, FakeMaintenance, FakeMigrations, FakeProbe, FakeSwitch, FakeTarget};

/// Targets, a switch, a probe, a migration runner, a maintenance page and gates, all fakes and
/// all inspectable.
#[derive(Debug)]
pub struct FakeWorld {
    /// The targets, in order.
    pub targets: Vec<Arc<FakeTarget>>,
    /// The switch.
    pub switch: Arc<FakeSwitch>,
    /// The probe (asks the targets).
    pub probe: Arc<FakeProbe>,
    /// The migration runner.
    pub migrations: Arc<FakeMigrations>,
    /// The maintenance page.
    pub maintenance: Arc<FakeMaintenance>,
    /// The gates.
    pub gates: Vec<Arc<FakeGate>>,
}

/// What a [`FakeWorld`] looks like at one moment, for comparing before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldState {
    /// Version of each target.
    pub versions: BTreeMap<String, Option<Version>>,
    /// Whether each target runs.
    pub running: BTreeMap<String, bool>,
    /// The switch's weights.
    pub weights: Weights,
    /// The schema version.
    pub schema: Option<SchemaVersion>,
    /// Whether maintenance is on.
    pub maintenance: bool,
}

impl FakeWorld {
    fn from_targets(targets: Vec<Arc<FakeTarget>>, weights: &[(&str, u32)]) -> Self {
        Self {
            switch: Arc::new(FakeSwitch::new(weights)),
            probe: Arc::new(FakeProbe::new(targets.clone())),
            migrations: Arc::new(FakeMigrations::new(&[("1", "init")], &[])),
            maintenance: Arc::new(FakeMaintenance::new()),
            gates: Vec::new(),
            targets,
        }
    }

    /// Two slots: `blue` runs `live` with weight 100, `green` runs `idle` with weight 0.
    pub fn slots(live: &str, idle: &str) -> Self {
        let targets = vec![
            Arc::new(FakeTarget::new("blue").with_current(live)),
            Arc::new(FakeTarget::new("green").with_current(idle)),
        ];
        Self::from_targets(targets, &[("blue", 100), ("green", 0)])
    }

    /// `n` instances `web-1` … `web-n`, all running `version` with weight 1.
    pub fn fleet(n: usize, version: &str) -> Self {
        let names: Vec<String> = (1..=n).map(|i| format!("web-{i}")).collect();
        let targets = names
            .iter()
            .map(|n| Arc::new(FakeTarget::new(n).with_current(version)))
            .collect();
        let weights: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        Self::from_targets(targets, &weights)
    }

    /// Replace the migration runner with one that has `pending` migrations
    /// (`(version, name, destructive reason)`) on top of `1 init`.
    pub fn with_pending_migrations(mut self, pending: &[(&str, &str, Option<&str>)]) -> Self {
        self.migrations = Arc::new(FakeMigrations::new(&[("1", "init")], pending));
        self
    }

    /// Add a gate.
    pub fn with_gate(mut self, gate: FakeGate) -> Self {
        self.gates.push(Arc::new(gate));
        self
    }

    /// The target named `id`.
    pub fn target(&self, id: &str) -> &Arc<FakeTarget> {
        self.targets
            .iter()
            .find(|t| t.id().as_str() == id)
            .unwrap_or_else(|| panic!("no fake target {id}"))
    }

    /// An [`Environment`] named `name` over all of these fakes.
    pub fn environment(&self, name: &str) -> Environment {
        self.environment_builder(name)
            .build()
            .expect("a valid fake environment")
    }

    /// The builder of [`environment`](Self::environment), to add hooks or more before building.
    pub fn environment_builder(&self, name: &str) -> EnvironmentBuilder {
        let mut b = Environment::builder(name)
            .switch(self.switch.clone())
            .probe(self.probe.clone())
            .migrations(self.migrations.clone())
            .maintenance(self.maintenance.clone());
        for t in &self.targets {
            b = b.target(Arc::clone(t) as DynTarget);
        }
        for g in &self.gates {
            b = b.gate(Arc::clone(g) as DynMetricGate);
        }
        b
    }

    /// The state now.
    pub fn state(&self) -> WorldState {
        WorldState {
            versions: self
                .targets
                .iter()
                .map(|t| (t.id().to_string(), t.version()))
                .collect(),
            running: self
                .targets
                .iter()
                .map(|t| (t.id().to_string(), t.is_running()))
                .collect(),
            weights: self.switch.current(),
            schema: self.migrations.current(),
            maintenance: self.maintenance.is_on(),
        }
    }
}

use crate::traits::Target as _;
