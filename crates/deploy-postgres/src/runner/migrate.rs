//! Migrating: applying the pending migrations, then the repeatable ones, each with its history
//! row; repair, baseline and verify.

use std::collections::{HashMap, HashSet};

use deploy_core::{Error, ErrorKind, Result};

use super::PgMigrationRunner;
use super::apply::{Batched, Record, Run};
use super::status::{BASELINE_NAME, Inspection, RepeatableState};
use crate::migrations::{Migration, Shape, Transaction};
use crate::tools::literal;

/// What [`PgMigrationRunner::repair`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Versions whose failed (unfinished) rows were removed.
    pub removed_failed: Vec<String>,
    /// Versions whose checksum was re-stamped from the file.
    pub restamped: Vec<String>,
}

impl PgMigrationRunner {
    /// Terminate migration sessions left by a runner that died: their transaction rolls back,
    /// so a rerun starts from a consistent history. Called only while holding the lock.
    async fn terminate_orphans(&self) -> Result<()> {
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = {} AND pid <> pg_backend_pid();",
            literal(&self.apply_app())
        );
        self.tools
            .exec(None, &sql, "end sessions of a dead runner on")
            .await
            .map(drop)
    }

    pub(super) async fn migrate_locked(&self) -> Result<Option<String>> {
        self.terminate_orphans().await?;
        self.ensure_history().await?;
        let Inspection {
            report,
            folder,
            shapes,
            refused,
            ..
        } = self.inspect().await?;
        if let Some(e) = refused {
            return Err(e);
        }
        let refuse = |cause: String| {
            Err(Error::new(
                ErrorKind::Rejected,
                "migrate",
                self.object(),
                cause,
            ))
        };
        if let Some(d) = report.drifted.first() {
            return refuse(format!(
                "applied migration {} changed since it was applied ({}: checksum {} recorded, {} now); \
                 revert the edit, or run repair if the change is intended",
                d.version,
                d.path.display(),
                short(&d.recorded),
                short(&d.actual)
            ));
        }
        if let Some(f) = report.failed.first() {
            return refuse(format!(
                "migration {} ({}) started outside a transaction and did not finish; check the schema, \
                 then run repair to clear its row",
                f.version, f.name
            ));
        }
        if !report.out_of_order.is_empty() {
            return refuse(format!(
                "pending migrations {} are older than the current version {}",
                report.out_of_order.join(", "),
                report.current.clone().unwrap_or_default()
            ));
        }
        if !self.opts.allow_destructive {
            let incompatible = report
                .pending
                .iter()
                .map(|p| (&p.label, &p.compatibility))
                .chain(
                    report
                        .pending_repeatables()
                        .map(|r| (&r.label, &r.compatibility)),
                )
                .find(|(_, c)| c.reason().is_some());
            if let Some((label, c)) = incompatible {
                return refuse(format!(
                    "migration {label} is destructive: {}; allow destructive migrations to run it",
                    c.reason().unwrap_or_default()
                ));
            }
        }
        let pending: HashSet<&str> = report.pending.iter().map(|p| p.version.as_str()).collect();
        let mut current = report.current.clone();
        let todo: Vec<(String, &Migration)> = folder
            .migrations
            .iter()
            .map(|m| (m.version.to_string(), m))
            .filter(|(v, _)| pending.contains(v.as_str()))
            .collect();
        // Runs of plain, self-contained files share one psql session; the rest run one by one.
        let mut i = 0;
        while i < todo.len() {
            let batchable = |(v, _): &(String, &Migration)| {
                let (transaction, shape) = &shapes[v];
                *transaction == Transaction::Wrapped && shape.self_contained
            };
            let run = todo[i..].iter().take_while(|t| batchable(t)).count();
            if run >= 2 {
                let group = &todo[i..i + run];
                self.apply_batch(group, &shapes).await?;
                current = group.last().map(|(v, _)| v.clone());
                i += run;
                continue;
            }
            let (v, m) = &todo[i];
            self.apply_one(v, m, &shapes[v]).await?;
            current = Some(v.clone());
            i += 1;
        }
        let due: HashSet<&str> = report
            .pending_repeatables()
            .map(|r| r.name.as_str())
            .collect();
        for r in folder
            .repeatables
            .iter()
            .filter(|r| due.contains(r.description.as_str()))
        {
            let version = r.version();
            let (transaction, shape) = &shapes[&version];
            let again = report
                .repeatables
                .iter()
                .any(|s| s.name == r.description && s.state == RepeatableState::Changed);
            tracing::info!(migration = %r.label, again, "applying the repeatable migration");
            self.run_file(Run {
                what: format!("repeatable migration {}", r.label),
                sql: &r.sql,
                transaction,
                shape,
                record: Record::Upsert {
                    version: &version,
                    name: &r.description,
                    checksum: &r.checksum,
                },
            })
            .await?;
        }
        Ok(current)
    }

    /// Apply one versioned migration with its row.
    async fn apply_one(
        &self,
        v: &str,
        m: &Migration,
        (transaction, shape): &(Transaction, Shape),
    ) -> Result<()> {
        tracing::info!(migration = %m.label, %transaction, "applying");
        self.run_file(Run {
            what: format!("migration {}", m.label),
            sql: &m.up_sql,
            transaction,
            shape,
            record: Record::Insert {
                version: v,
                name: &m.name,
                checksum: &m.checksum,
            },
        })
        .await
    }

    /// Apply `group` in one psql session. When that fails, the migrations it applied are
    /// read back from the history and the rest run one by one: the failing one fails again
    /// with its own message (or succeeds, after a lock timeout, on a retry).
    async fn apply_batch(
        &self,
        group: &[(String, &Migration)],
        shapes: &HashMap<String, (Transaction, Shape)>,
    ) -> Result<()> {
        let first = group
            .first()
            .map(|(_, m)| m.label.as_str())
            .unwrap_or_default();
        let last = group
            .last()
            .map(|(_, m)| m.label.as_str())
            .unwrap_or_default();
        tracing::info!(first, last, count = group.len(), "applying in one session");
        let batch: Vec<Batched<'_>> = group
            .iter()
            .map(|(v, m)| Batched {
                label: &m.label,
                version: v,
                name: &m.name,
                checksum: &m.checksum,
                sql: &m.up_sql,
            })
            .collect();
        let Err(e) = self.run_batch(&batch).await else {
            return Ok(());
        };
        tracing::info!("the session stopped ({e}); applying the rest one by one");
        let versions = group
            .iter()
            .map(|(v, _)| literal(v))
            .collect::<Vec<_>>()
            .join(", ");
        let applied: Vec<String> = self
            .tools
            .query_json(
                None,
                &format!(
                    "SELECT coalesce(json_agg(version), '[]') FROM {} WHERE version IN ({versions})",
                    self.table_sql()
                ),
                "read the history of",
            )
            .await?;
        for (v, m) in group.iter().filter(|(v, _)| !applied.contains(v)) {
            self.apply_one(v, m, &shapes[v]).await?;
        }
        Ok(())
    }

    /// Re-stamp the checksums of applied migrations from their files and remove the rows of
    /// unfinished no-transaction migrations. Holds the migration lock.
    pub async fn repair(&self) -> Result<RepairReport> {
        let lock = self.lock().await?;
        let r = self.repair_locked().await;
        lock.release().await;
        r
    }

    async fn repair_locked(&self) -> Result<RepairReport> {
        self.ensure_history().await?;
        let Inspection { report, folder, .. } = self.inspect().await?;
        let t = self.table_sql();
        let mut sql = String::from("BEGIN;\n");
        let mut out = RepairReport::default();
        for f in &report.failed {
            sql.push_str(&format!(
                "DELETE FROM {t} WHERE version = {} AND NOT success;\n",
                literal(&f.version)
            ));
            out.removed_failed.push(f.version.clone());
        }
        for d in &report.drifted {
            let m = folder
                .migrations
                .iter()
                .find(|m| m.version.to_string() == d.version);
            if let Some(m) = m {
                sql.push_str(&format!(
                    "UPDATE {t} SET checksum = {} WHERE version = {};\n",
                    literal(&m.checksum),
                    literal(&d.version)
                ));
                out.restamped.push(d.version.clone());
            }
        }
        sql.push_str("COMMIT;\n");
        self.tools
            .exec(None, &sql, "repair the history table of")
            .await?;
        Ok(out)
    }

    /// Mark an existing schema as being at `version`: migrations up to it are treated as
    /// applied. Refused when the history table already has rows. Holds the migration lock.
    pub async fn baseline(&self, version: &str) -> Result<()> {
        let layout = self.load()?.layout;
        let v = self
            .parse_version(layout, version)
            .map_err(|e| e.context(format!("baseline at {version}"), self.object()))?;
        let lock = self.lock().await?;
        let r = async {
            self.ensure_history().await?;
            let rows = self.history(None).await?;
            if !rows.is_empty() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("baseline at {v}"),
                    self.object(),
                    format!("the history table already has {} rows", rows.len()),
                )
                .permanent());
            }
            let sql = format!(
                "INSERT INTO {} (version, name, checksum, success) VALUES ({}, {}, '', true);",
                self.table_sql(),
                literal(&v.to_string()),
                literal(BASELINE_NAME)
            );
            self.tools
                .exec(None, &sql, "write the baseline of")
                .await
                .map(drop)
        }
        .await;
        lock.release().await;
        r
    }

    /// Check that the schema is at `expected`.
    pub(super) async fn verify_at(&self, expected: Option<&str>) -> Result<()> {
        let current = self.current_version().await?;
        if current.as_deref() == expected {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Rejected,
            format!("verify schema version {}", expected.unwrap_or("(none)")),
            self.object(),
            format!(
                "the schema is at {}",
                current.as_deref().unwrap_or("no version (no history)")
            ),
        ))
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}
