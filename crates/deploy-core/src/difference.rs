//! Comparing states of an environment: what a plan expects the world to look like after some of
//! its steps, and how a live [`Snapshot`] differs from an expected one.
//!
//! The engine trusts the live world over its own records: before it reports a run promoted it
//! compares the world with the plan's end state, before it runs a plan it compares the world
//! with the state the plan was made from, and when it recovers a run it looks for the point of
//! the plan that the world is at. All three use [`Snapshot::differences`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{MigrationStatus, SchemaVersion};
use crate::strategy::{Plan, Snapshot, Step};

/// One way a live state differs from an expected one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Difference {
    /// What differs ("target green", "weights", "schema", "maintenance page").
    pub subject: String,
    /// What was expected.
    pub expected: String,
    /// What the live world shows.
    pub live: String,
}

impl Difference {
    fn new(
        subject: impl Into<String>,
        expected: impl Into<String>,
        live: impl Into<String>,
    ) -> Self {
        Self {
            subject: subject.into(),
            expected: expected.into(),
            live: live.into(),
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, live {}",
            self.subject, self.expected, self.live
        )
    }
}

/// Join differences for a message: `a; b; c`.
pub(crate) fn describe(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn or_nothing<T: ToString>(v: Option<&T>) -> String {
    v.map_or_else(|| "nothing".to_owned(), ToString::to_string)
}

fn schema(v: Option<&SchemaVersion>) -> String {
    v.map_or_else(|| "an empty schema".to_owned(), |v| format!("schema {v}"))
}

fn pending(m: &MigrationStatus) -> Vec<&str> {
    m.pending.iter().map(|p| p.version.0.as_str()).collect()
}

impl Snapshot {
    /// How `live` differs from this state, taken as the expected one: each target's version,
    /// the weights of this state's targets, the schema (applied version and pending
    /// migrations) and the maintenance page. A part that either side lacks (no switch, no
    /// migration runner) is not compared.
    pub fn differences(&self, live: &Snapshot) -> Vec<Difference> {
        let mut out = Vec::new();
        for t in &self.targets {
            let now = live.version_of(&t.id);
            if now != t.current.as_ref() {
                out.push(Difference::new(
                    format!("target {}", t.id),
                    or_nothing(t.current.as_ref()),
                    or_nothing(now),
                ));
            }
        }
        if let (Some(e), Some(l)) = (&self.weights, &live.weights) {
            let ids: Vec<_> = self.targets.iter().map(|t| t.id.clone()).collect();
            let (e, l) = (e.only(&ids), l.only(&ids));
            if e != l {
                out.push(Difference::new("weights", e.to_string(), l.to_string()));
            }
        }
        if let (Some(e), Some(l)) = (&self.migrations, &live.migrations) {
            if e.current != l.current {
                out.push(Difference::new(
                    "schema",
                    schema(e.current.as_ref()),
                    schema(l.current.as_ref()),
                ));
            } else if pending(e) != pending(l) {
                out.push(Difference::new(
                    "pending migrations",
                    format!("[{}]", pending(e).join(", ")),
                    format!("[{}]", pending(l).join(", ")),
                ));
            }
        }
        if let (Some(e), Some(l)) = (self.maintenance, live.maintenance)
            && e != l
        {
            let on_off = |b: bool| if b { "on" } else { "off" };
            out.push(Difference::new("maintenance page", on_off(e), on_off(l)));
        }
        out
    }
}

impl Snapshot {
    /// How `live` differs from a state between this one and `further` (the same snapshot a few
    /// steps on): each target's version, each weight, the schema and the maintenance page may
    /// be as here or as in `further`, independently. This is what a batch of steps that started
    /// together, on distinct targets, can leave behind when its process dies part-way.
    pub fn differences_between(&self, further: &Snapshot, live: &Snapshot) -> Vec<Difference> {
        let mut mixed = further.clone();
        for t in &mut mixed.targets {
            if live.version_of(&t.id) == self.version_of(&t.id) {
                t.current = self.version_of(&t.id).cloned();
            }
        }
        if let (Some(m), Some(a), Some(l)) = (&mut mixed.weights, &self.weights, &live.weights) {
            for (t, w) in a.iter() {
                if l.get(t) == Some(w) {
                    m.set(t.clone(), w);
                }
            }
        }
        if let (Some(a), Some(l)) = (&self.migrations, &live.migrations)
            && a.current == l.current
            && pending(a) == pending(l)
        {
            mixed.migrations = Some(a.clone());
        }
        if let (Some(a), Some(l)) = (self.maintenance, live.maintenance)
            && a == l
        {
            mixed.maintenance = Some(a);
        }
        mixed.differences(live)
    }
}

impl Plan {
    /// The state the plan expects the environment to be in after its first `steps` steps (all
    /// of them when `steps` is past the end): the snapshot it was planned from, with each step's
    /// visible effect applied — an activation changes a target's version, a drain sets its
    /// weight to 0, weights are set, migrations bring the schema to the last pending version,
    /// the maintenance page goes on and off. Preparing, stopping, starting, health checks,
    /// analyses and pauses change nothing a snapshot shows.
    pub fn expected_after(&self, steps: usize) -> Snapshot {
        let mut s = self.snapshot.clone();
        for step in self.steps.iter().take(steps) {
            match step {
                Step::Activate { target, version } => {
                    if let Some(t) = s.targets.iter_mut().find(|t| &t.id == target) {
                        t.current = Some(version.clone());
                    }
                }
                Step::Drain { target } => {
                    if let Some(w) = &mut s.weights {
                        w.set(target.clone(), 0);
                    }
                }
                Step::SetWeights { weights } => {
                    if let Some(w) = &mut s.weights {
                        for (t, v) in weights.iter() {
                            w.set(t.clone(), v);
                        }
                    }
                }
                Step::Migrate => {
                    if let Some(m) = &mut s.migrations
                        && let Some(last) = m.pending.last()
                    {
                        m.current = Some(last.version.clone());
                        m.pending.clear();
                    }
                }
                Step::RevertSchema { to, .. } => {
                    if let Some(m) = &mut s.migrations {
                        m.current = to.clone();
                    }
                }
                Step::MaintenanceOn => s.maintenance = s.maintenance.map(|_| true),
                Step::MaintenanceOff => s.maintenance = s.maintenance.map(|_| false),
                Step::Prepare { .. }
                | Step::Stop { .. }
                | Step::Start { .. }
                | Step::AwaitHealthy { .. }
                | Step::Backup
                | Step::Analyze { .. }
                | Step::Pause { .. } => {}
            }
        }
        s
    }

    /// The state the plan ends in.
    pub fn expected_end(&self) -> Snapshot {
        self.expected_after(self.steps.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, MigrationInfo, Release, TargetId, Version, Weights};
    use crate::strategy::{CanaryStep, Capabilities, PlanOptions, Strategy, TargetState};

    fn id(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    fn snapshot() -> Snapshot {
        Snapshot::new(
            vec![
                TargetState::new(
                    id("blue"),
                    Endpoint::http("127.0.0.1", 1),
                    Some(Version::new("1.0.0").unwrap()),
                ),
                TargetState::new(id("green"), Endpoint::http("127.0.0.1", 2), None),
            ],
            Some(Weights::new().with(id("blue"), 100).with(id("green"), 0)),
            Some(MigrationStatus::new(
                None,
                vec![
                    MigrationInfo::new("1", "a", None),
                    MigrationInfo::new("2", "b", None),
                ],
            )),
            None,
        )
    }

    #[test]
    fn a_canary_plan_ends_on_the_new_release_with_all_traffic_and_the_schema_migrated() {
        let plan = Strategy::Canary {
            steps: vec![CanaryStep::SetWeight(10), CanaryStep::PauseUntilPromoted],
        }
        .plan(
            "prod",
            &Release::new(Version::new("2.0.0").unwrap()),
            &snapshot(),
            Capabilities::new(true, false, true),
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(plan.expected_after(0), plan.snapshot);
        let end = plan.expected_end();
        assert_eq!(end.version_of(&id("green")).unwrap().as_str(), "2.0.0");
        assert_eq!(end.version_of(&id("blue")).unwrap().as_str(), "1.0.0");
        assert_eq!(
            end.weights.as_ref().unwrap().to_string(),
            "blue=0,green=100"
        );
        let m = end.migrations.as_ref().unwrap();
        assert_eq!(m.current.as_ref().unwrap().0, "2");
        assert!(m.pending.is_empty());
        // The live world after a rollback differs from the end in version and weights.
        let diffs = end.differences(&plan.snapshot);
        let text = describe(&diffs);
        assert!(
            text.contains("target green: expected 2.0.0, live nothing"),
            "{text}"
        );
        assert!(
            text.contains("weights: expected blue=0,green=100, live blue=100,green=0"),
            "{text}"
        );
        assert!(
            text.contains("schema: expected schema 2, live an empty schema"),
            "{text}"
        );
        assert!(plan.snapshot.differences(&plan.snapshot).is_empty());
    }
}
