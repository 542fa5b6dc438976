//! Back to a release the history recorded: a new run of that version by the fastest path the
//! live state allows, refused when the schema moved on in a way its code cannot run against.
//!
//! The path: targets that still run the version are only health-checked and switched back to
//! (blue-green's other slot); targets that kept its release directory activate it (prepare is a
//! no-op there, nothing is uploaded); any other target needs the artifact, as an ordinary
//! deploy does. The schema: unchanged since that release, or changed only by migrations its
//! code runs against (compatible), it stays; changed by an incompatible migration, the rollback
//! is refused unless the backup to restore is named, and then the schema is restored to what
//! that release had before the run starts.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::model::{BackupId, Release, SchemaVersion, Version};
use crate::state::HistoryEntry;
use crate::strategy::{Plan, PlanOptions, Strategy};

use super::report::Report;
use super::{DeployError, Engine};

/// Which recorded release to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// The newest promoted run of this version.
    Version(Version),
    /// The release promoted before the one the environment runs now.
    Previous,
}

/// What happens to the schema on a rollback to a recorded release.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaDecision {
    /// No migration ran since that release, or there is no migration runner.
    Unchanged,
    /// Migrations ran since, all compatible with that release's code: the schema stays.
    Kept {
        /// Those migrations (`version name`).
        since: Vec<String>,
    },
    /// An incompatible migration ran since: the backup is restored to the recorded schema
    /// before the run starts.
    Restore {
        /// The backup.
        backup: BackupId,
        /// The schema that release ran against.
        to: Option<SchemaVersion>,
    },
}

/// A rollback to a recorded release, planned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReleaseRollback {
    /// The run that promoted the release.
    pub recorded: HistoryEntry,
    /// What happens to the schema.
    pub schema: SchemaDecision,
    /// The plan of the new run.
    pub plan: Plan,
    /// The path it takes, in words, one line per target.
    pub path: Vec<String>,
}

impl Engine {
    /// Plan a rollback to a recorded release; nothing is changed.
    ///
    /// The path: targets that still run the version are only health-checked and switched back
    /// to (blue-green's other slot); targets that kept its release directory activate it
    /// (prepare is a no-op there, nothing is uploaded); any other target needs the artifact.
    /// No migration runs. The schema: unchanged since that release, or changed only by
    /// migrations its code runs against (compatible), it stays ([`SchemaDecision::Kept`]);
    /// changed by an incompatible migration, the rollback is refused
    /// ([`DeployError::Refused`], naming the migrations and the backups the history recorded)
    /// unless the backup to restore is named ([`SchemaDecision::Restore`]). `artifact` is used for targets that kept no release directory of it;
    /// `restore` names the backup to restore when the schema moved on incompatibly.
    pub async fn plan_rollback_to(
        &self,
        to: &RollbackTo,
        strategy: &Strategy,
        options: &PlanOptions,
        artifact: Option<PathBuf>,
        restore: Option<BackupId>,
    ) -> Result<ReleaseRollback, DeployError> {
        let refused = |cause: String| DeployError::Refused {
            operation: "roll back to a recorded release",
            environment: self.env.name.clone(),
            cause,
        };
        let history = self.history().await?;
        let live = self.snapshot().await?;
        let promoted: Vec<(usize, &HistoryEntry)> = history
            .iter()
            .enumerate()
            .filter(|(_, h)| h.outcome.is_promoted())
            .collect();
        let found = match to {
            RollbackTo::Version(v) => promoted.iter().rev().find(|(_, h)| &h.version == v),
            RollbackTo::Previous => {
                // The newest promoted release that is not what the environment runs now.
                let running: Vec<&Version> = live
                    .targets
                    .iter()
                    .filter_map(|t| t.current.as_ref())
                    .collect();
                let newest = promoted.last().map(|(_, h)| &h.version);
                promoted.iter().rev().find(|(_, h)| {
                    Some(&h.version) != newest && !running.iter().all(|r| *r == &h.version)
                })
            }
        };
        let Some(&(at, recorded)) = found else {
            return Err(refused(match to {
                RollbackTo::Version(v) => {
                    format!("no promoted run of {v} is recorded in the history")
                }
                RollbackTo::Previous => {
                    "the history records no earlier promoted release".to_owned()
                }
            }));
        };
        // The schema that release ran against, and what ran since.
        let recorded_schema = recorded
            .after
            .as_ref()
            .and_then(|s| s.migrations.as_ref())
            .map(|m| m.current.clone());
        let live_schema = live.migrations.as_ref().map(|m| m.current.clone());
        let mut since = Vec::new();
        let mut incompatible = Vec::new();
        let mut backups = Vec::new();
        for later in history[at + 1..].iter().filter(|h| h.outcome.is_promoted()) {
            if let Some(m) = &later.before.migrations {
                for p in &m.pending {
                    since.push(format!("{} {}", p.version.0, p.name));
                    if let Some(why) = &p.destructive {
                        incompatible.push(format!(
                            "{} {} (run {}): {why}",
                            p.version.0, p.name, later.run_id
                        ));
                        if let Some(b) = &later.backup {
                            backups.push(format!("{} (taken by run {})", b.0, later.run_id));
                        }
                    }
                }
            }
        }
        let schema = match (&recorded_schema, &live_schema) {
            (Some(r), Some(l)) if r != l => {
                if incompatible.is_empty() {
                    SchemaDecision::Kept { since }
                } else if let Some(backup) = restore {
                    SchemaDecision::Restore {
                        backup,
                        to: r.clone(),
                    }
                } else {
                    return Err(refused(format!(
                        "the schema moved on since {} with migrations its code may not run \
                         against: {}; name the backup to restore{}",
                        recorded.version,
                        incompatible.join("; "),
                        if backups.is_empty() {
                            String::new()
                        } else {
                            format!(" (recorded: {})", backups.join(", "))
                        }
                    )));
                }
            }
            _ => SchemaDecision::Unchanged,
        };
        let mut release = Release::new(recorded.version.clone());
        if let Some(a) = artifact {
            release = release.with_artifact(a);
        }
        // The release runs against the schema as it is (or as restored): no migration runs.
        let mut options = options.clone();
        options.skip_migrations = true;
        self.check_switch().await?;
        let plan = self.plan_from(strategy, &release, &live, &options)?;
        let path = live
            .targets
            .iter()
            .map(|t| {
                if t.current.as_ref() == Some(&recorded.version) {
                    format!(
                        "{}: runs {} still; health-checked and switched back to, nothing uploaded",
                        t.id, recorded.version
                    )
                } else if release.artifact.is_some() {
                    format!(
                        "{}: activates its kept release directory of {}, or unpacks the artifact",
                        t.id, recorded.version
                    )
                } else {
                    format!(
                        "{}: activates its kept release directory of {} (without one, the run \
                         fails at prepare and rolls back: give the artifact)",
                        t.id, recorded.version
                    )
                }
            })
            .collect();
        Ok(ReleaseRollback {
            recorded: recorded.clone(),
            schema,
            plan,
            path,
        })
    }

    /// Roll back to a recorded release: hold the lock, plan it (see
    /// [`plan_rollback_to`](Self::plan_rollback_to)), restore the schema when that was decided,
    /// and run the plan as a new run.
    pub async fn rollback_to(
        &self,
        to: &RollbackTo,
        strategy: &Strategy,
        options: &PlanOptions,
        artifact: Option<PathBuf>,
        restore: Option<BackupId>,
        cancel: &CancellationToken,
    ) -> Result<(ReleaseRollback, Report), DeployError> {
        let run_id = super::new_run_id();
        let lease = self.lock_for(&run_id).await?;
        let planned = async {
            let rb = self
                .plan_rollback_to(to, strategy, options, artifact, restore)
                .await?;
            if let SchemaDecision::Restore { backup, to } = &rb.schema {
                let runner =
                    self.env
                        .migrations
                        .as_ref()
                        .ok_or_else(|| DeployError::Usage {
                            operation: "restore the schema",
                            environment: self.env.name.clone(),
                            cause: "the environment has no migration runner".to_owned(),
                        })?;
                tracing::warn!(target: "deploy", "restoring backup {} to schema {:?} before rolling back to {}", backup.0, to, rb.recorded.version);
                runner
                    .revert(to.as_ref(), Some(backup))
                    .await
                    .map_err(|e| DeployError::Refused {
                        operation: "restore the schema before rolling back",
                        environment: self.env.name.clone(),
                        cause: e.to_string(),
                    })?;
            }
            // Planned again after a restore: the schema is part of the state the plan checks.
            let plan = match &rb.schema {
                SchemaDecision::Restore { .. } => {
                    self.plan(strategy, &rb.plan.release, &rb.plan.options)
                        .await?
                }
                _ => rb.plan.clone(),
            };
            Ok::<_, DeployError>((rb, plan))
        }
        .await;
        let (rb, plan) = match planned {
            Ok(p) => p,
            Err(e) => {
                super::release_lease(lease).await;
                return Err(e);
            }
        };
        let report = self.start(run_id, plan, lease, cancel).await?;
        Ok((rb, report))
    }
}
