//! Reverting to a version: by down migrations when every migration above it has one and
//! undoing it loses no data (its [`Reversibility`]), else by restoring the backup. Whether a
//! migration could run while the old release served (its compatibility) plays no part: an
//! index added without `CONCURRENTLY` blocked writes when it was built, and dropping it loses
//! nothing.

use deploy_core::{BackupId, Error, ErrorKind, Result, SchemaVersion};

use super::PgMigrationRunner;
use super::apply::{Record, Run};
use super::status::{AppliedMigration, BASELINE_NAME, Inspection};
use crate::migrations::{
    Migration, MigrationVersion, REPEATABLE_PREFIX, Reversibility, view_drops,
};

/// Why a revert by down migrations cannot be done, and whether allowing data loss would let
/// it run.
struct Obstacle {
    why: String,
    /// `true` when the down migrations exist and would run, but lose data (or leave a
    /// repeatable migration's newer definition): `allow_data_loss` lets them run.
    lossy: bool,
}

impl PgMigrationRunner {
    /// Undo the migrations above `to` by their down files, or say the backup must be restored
    /// (`Ok(true)`): when one has no down file, did not finish, loses data undone (unless
    /// `allow_data_loss`), or a down file fails and a backup is given.
    pub(super) async fn revert_locked(
        &self,
        to: Option<&SchemaVersion>,
        backup: Option<&BackupId>,
    ) -> Result<bool> {
        let Inspection {
            report,
            folder,
            repeatable_rows,
            ..
        } = self.inspect().await?;
        let layout = folder.layout;
        let target = to.map(|v| v.0.as_str()).unwrap_or("an empty schema");
        let operation = format!("revert to {target}");
        let to_v = match to {
            Some(v) => Some(
                self.parse_version(layout, &v.0)
                    .map_err(|e| e.context(operation.clone(), self.object()))?,
            ),
            None => None,
        };
        let mut above: Vec<(MigrationVersion, &AppliedMigration)> = Vec::new();
        for a in &report.applied {
            let v = self.parse_version(layout, &a.version)?;
            if to_v.as_ref().is_none_or(|t| &v > t) {
                above.push((v, a));
            }
        }
        above.sort_by(|a, b| b.0.cmp(&a.0));
        if above.is_empty() && report.failed.is_empty() {
            return Ok(false);
        }
        let mut obstacle: Option<Obstacle> = report.failed.first().map(|f| Obstacle {
            why: format!("migration {} did not finish", f.version),
            lossy: false,
        });
        let mut downs: Vec<&Migration> = Vec::new();
        for (v, a) in &above {
            let found = folder.migrations.iter().find(|m| &m.version == v);
            let why = match found {
                _ if a.name == BASELINE_NAME => Some(Obstacle {
                    why: format!(
                        "version {} is a baseline, which has no down migration",
                        a.version
                    ),
                    lossy: false,
                }),
                None => Some(Obstacle {
                    why: format!("migration {} has no file", a.version),
                    lossy: false,
                }),
                Some(m) => match m.down_shape() {
                    None => Some(Obstacle {
                        why: format!("migration {} has no down migration", m.label),
                        lossy: false,
                    }),
                    Some(Err(e)) => Some(Obstacle {
                        why: format!("its down migration cannot run all-or-nothing: {e}"),
                        lossy: false,
                    }),
                    Some(Ok(_)) => {
                        downs.push(m);
                        match a.reversibility.as_ref() {
                            Some(Reversibility::LosesData(why)) => Some(Obstacle {
                                why: format!("undoing migration {}: {why}", m.label),
                                lossy: true,
                            }),
                            _ => None,
                        }
                    }
                },
            };
            if let Some(o) = why {
                // The first reason that no flag lifts wins; else the first at all.
                match &obstacle {
                    Some(prev) if !prev.lossy || o.lossy => {}
                    _ => obstacle = Some(o),
                }
            }
        }
        // Repeatable migrations applied since the oldest migration being undone: their
        // earlier definitions are not in the folder any more.
        let since = above.iter().map(|(_, a)| a.installed_at.as_str()).min();
        let crossed: Vec<&str> = match since {
            Some(since) => repeatable_rows
                .iter()
                .filter(|(_, r)| r.installed_at.as_str() >= since)
                .map(|(name, _)| name.as_str())
                .collect(),
            None => Vec::new(),
        };
        if let Some(name) = crossed.first()
            && obstacle.is_none()
        {
            obstacle = Some(Obstacle {
                why: format!(
                    "repeatable migration {REPEATABLE_PREFIX}{name} was applied after {target}, and \
                     its earlier definition is not in the folder"
                ),
                lossy: true,
            });
        }
        let by_downs = match &obstacle {
            None => true,
            Some(o) => o.lossy && self.opts.allow_data_loss,
        };
        if by_downs {
            if let Some(o) = &obstacle {
                tracing::warn!(why = %o.why, "reverting by down migrations although data is lost (allow_data_loss)");
            }
            let views = folder
                .repeatables
                .iter()
                .rev()
                .filter(|r| crossed.contains(&r.description.as_str()))
                .flat_map(|r| view_drops(&r.sql))
                .collect::<Vec<_>>();
            return match self.run_downs(&downs, &crossed, &views).await {
                Ok(()) => Ok(false),
                Err(e) if backup.is_some() => {
                    tracing::warn!("a down migration failed, restoring the backup instead: {e}");
                    Ok(true)
                }
                Err(e) => {
                    let now = match self.current_version().await {
                        Ok(v) => v.unwrap_or_else(|| "an empty schema".into()),
                        Err(_) => "unknown (the history could not be read)".into(),
                    };
                    let e = e.context(operation, self.object());
                    let message = format!(
                        "{}; the schema stays at {now}, where the down migrations before it \
                         left it",
                        e.message()
                    );
                    Err(Error::new(
                        e.kind(),
                        e.operation().to_owned(),
                        e.object().to_owned(),
                        message,
                    ))
                }
            };
        }
        let o = obstacle.expect("no obstacle means by_downs");
        if backup.is_some() {
            tracing::info!(why = %o.why, "reverting by restoring the backup");
            return Ok(true);
        }
        let remedy = if o.lossy {
            "give a backup to restore, or allow data loss (allow_data_loss) to run the down migrations anyway"
        } else {
            "give a backup to restore"
        };
        Err(Error::new(
            ErrorKind::InvalidInput,
            operation,
            self.object(),
            format!("{}; {remedy}", o.why),
        ))
    }

    /// Apply the down migrations `downs` (newest first), each removing its up's row. First,
    /// the repeatable migrations applied since the oldest of them (`crossed`) are forgotten
    /// and the views they created dropped (`views`), in one transaction: their definitions
    /// may use what the downs remove, and the next migrate creates them again over the
    /// reverted schema.
    async fn run_downs(
        &self,
        downs: &[&Migration],
        crossed: &[&str],
        views: &[String],
    ) -> Result<()> {
        if !crossed.is_empty() {
            let names = crossed
                .iter()
                .map(|d| crate::tools::literal(&format!("{REPEATABLE_PREFIX}{d}")))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "BEGIN;\n{}\nDELETE FROM {} WHERE version IN ({names});\nCOMMIT;\n",
                views.join("\n"),
                self.table_sql(),
            );
            tracing::info!(repeatables = ?crossed, views = ?views, "forgetting repeatable migrations and dropping their views");
            self.tools
                .exec(None, &sql, "forget the repeatable migrations of")
                .await?;
        }
        for m in downs {
            let Some(Ok(shape)) = m.down_shape() else {
                unreachable!("checked by revert_locked");
            };
            let v = m.version.to_string();
            let label = m
                .down_path
                .as_deref()
                .map(crate::tools::file_name)
                .unwrap_or_default();
            let what = match m.label.ends_with(".sql") {
                true => format!("down migration {label}"),
                false => format!("down migration {} ({label})", m.label),
            };
            tracing::info!(migration = %m.label, "reverting");
            self.run_file(Run {
                what,
                sql: m.down_sql.as_deref().unwrap_or_default(),
                transaction: &shape.mode,
                shape,
                record: Record::Delete { version: &v },
            })
            .await?;
        }
        Ok(())
    }
}
