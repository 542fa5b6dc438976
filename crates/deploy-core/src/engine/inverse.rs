//! What undoes each step, computed from the live state before the step acts.

use crate::model::{TargetId, Weights};
use crate::strategy::{SchemaRollback, Step};

use super::call::Failure;
use super::run::Run;
use crate::error::ErrorKind;

impl<'e> Run<'e> {
    /// Work out what undoes `step`, from the live state.
    pub(super) async fn inverse_of(&mut self, step: &Step) -> Result<Vec<Step>, Failure> {
        let t = self.engine.policies.timeouts.call;
        Ok(match step {
            Step::Analyze { .. }
            | Step::Pause { .. }
            | Step::Backup
            | Step::RevertSchema { .. } => Vec::new(),
            // One target each: the same answer a batch reads for them concurrently.
            Step::Prepare { .. }
            | Step::AwaitHealthy { .. }
            | Step::Activate { .. }
            | Step::Drain { .. }
            | Step::Start { .. }
            | Step::Stop { .. } => {
                return self.inverse_shared(step).await;
            }
            Step::MaintenanceOn | Step::MaintenanceOff => {
                let m = self.maintenance()?;
                let on = self
                    .engine
                    .call("read state of", "the maintenance page", t, || {
                        m.is_enabled()
                    })
                    .await?;
                match (step, on) {
                    (Step::MaintenanceOn, false) => vec![Step::MaintenanceOff],
                    (Step::MaintenanceOff, true) => vec![Step::MaintenanceOn],
                    _ => Vec::new(),
                }
            }
            Step::Migrate => {
                let m = self.migrations()?;
                let status = self
                    .engine
                    .call(
                        "read migration status of",
                        "the database",
                        self.engine.policies.timeouts.long_call,
                        || m.status(),
                    )
                    .await?;
                let destructive = status.destructive().count() > 0;
                // Planning refuses this too, but a plan may be old (journaled, resumed, built by
                // hand) and the schema may have changed since: check what is pending now.
                if destructive
                    && self.plan.strategy.is_zero_downtime()
                    && !self.plan.options.allow_destructive_migrations
                {
                    let names: Vec<String> = status
                        .destructive()
                        .map(|m| format!("{} {}", m.version, m.name))
                        .collect();
                    return Err(Failure::engine(
                        ErrorKind::Rejected,
                        format!(
                            "refused: destructive migration(s) {} pending in a {} deploy (allow_destructive_migrations is off)",
                            names.join(", "),
                            self.plan.strategy.name()
                        ),
                    ));
                }
                if status.pending.is_empty() {
                    Vec::new()
                } else if destructive || self.plan.options.schema_rollback == SchemaRollback::Revert
                {
                    vec![Step::RevertSchema {
                        to: status.current.clone(),
                        backup: self.backup.clone(),
                    }]
                } else {
                    self.schema_kept = true;
                    self.note(format!(
                        "{} additive migration(s) are kept if the deploy rolls back: they are compatible with the old release (schema_rollback = keep_additive)",
                        status.pending.len()
                    ));
                    Vec::new()
                }
            }
            Step::SetWeights { weights } => {
                let s = self.switch()?;
                let now = self
                    .engine
                    .call("read weights of", "the switch", t, || s.weights())
                    .await?;
                let names: Vec<TargetId> = weights.iter().map(|(t, _)| t.clone()).collect();
                let before = now.only(&names);
                if before.0.len() != names.len() {
                    let missing: Vec<_> = names
                        .iter()
                        .filter(|n| before.get(n).is_none())
                        .map(ToString::to_string)
                        .collect();
                    return Err(Failure::engine(
                        ErrorKind::NotFound,
                        format!("the switch does not know target(s) {}", missing.join(", ")),
                    ));
                }
                vec![Step::SetWeights { weights: before }]
            }
        })
    }

    /// What undoes a step that touches one target only (those a batch runs together): needs
    /// no `&mut self`, so a batch's inverses are read concurrently.
    pub(super) async fn inverse_shared(&self, step: &Step) -> Result<Vec<Step>, Failure> {
        let t = self.engine.policies.timeouts.call;
        let env = self.env();
        Ok(match step {
            Step::Prepare { .. } | Step::AwaitHealthy { .. } | Step::Start { .. } => Vec::new(),
            Step::Stop { target } => vec![Step::Start {
                target: target.clone(),
            }],
            Step::Activate { target, version } => {
                let tg = env.target(target)?;
                let current = self
                    .engine
                    .call("read current version of", target.as_str(), t, || {
                        tg.current()
                    })
                    .await?;
                match current {
                    Some(v) if &v == version => Vec::new(),
                    Some(old) => vec![
                        Step::Activate {
                            target: target.clone(),
                            version: old.clone(),
                        },
                        Step::AwaitHealthy {
                            target: target.clone(),
                            version: Some(old),
                        },
                    ],
                    None => vec![Step::Stop {
                        target: target.clone(),
                    }],
                }
            }
            Step::Drain { target } => {
                let s = self.switch()?;
                let w = self
                    .engine
                    .call("read the weight of", target.as_str(), t, || {
                        s.weight_of(target)
                    })
                    .await?;
                let Some(w) = w else {
                    let known = match self
                        .engine
                        .call("read weights of", "the switch", t, || s.weights())
                        .await
                    {
                        Ok(weights) => format!(" (it knows {weights})"),
                        Err(_) => String::new(),
                    };
                    return Err(Failure::engine(
                        ErrorKind::NotFound,
                        format!("the switch does not know target {target}{known}"),
                    ));
                };
                vec![Step::SetWeights {
                    weights: Weights::new().with(target.clone(), w),
                }]
            }
            other => {
                return Err(Failure::engine(
                    ErrorKind::Other,
                    format!("{other} is not a step of one target"),
                ));
            }
        })
    }
}
