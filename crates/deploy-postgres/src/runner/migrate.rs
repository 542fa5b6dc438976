//! Migrating: reading the folder and the history table (status, drift, classification),
//! applying each migration with its history row, repair, baseline, verify, and reverting by
//! down migrations.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deploy_core::{BackupId, Error, ErrorKind, Result, SchemaVersion};
use serde::{Deserialize, Serialize};

use super::PgMigrationRunner;
use crate::migrations::{self, Classification, Layout, LoadOptions, Migration, MigrationVersion};
use crate::tools::{self, APPLY_APP, ident, literal};

/// The name of the history row that [`PgMigrationRunner::baseline`] writes.
pub const BASELINE_NAME: &str = "<< baseline >>";

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// SHA-256 of the file when it was applied (empty for a baseline).
    pub checksum: String,
    /// When it was applied (server time, ISO 8601).
    pub installed_at: String,
    /// How long it ran, in milliseconds.
    pub execution_ms: i64,
    /// `false` for a no-transaction migration that started and did not finish.
    pub success: bool,
}

/// A migration not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMigration {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// Runs outside a transaction.
    pub no_transaction: bool,
    /// Additive or destructive, with the reason.
    pub classification: Classification,
}

/// An applied migration whose file changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Version.
    pub version: String,
    /// The file as it is now.
    pub path: PathBuf,
    /// Checksum in the history table.
    pub recorded: String,
    /// Checksum of the file now.
    pub actual: String,
}

/// Where the schema stands, in full: what [`PgMigrationRunner::report`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaReport {
    /// The folder's layout.
    pub layout: Layout,
    /// The latest successfully applied version.
    pub current: Option<String>,
    /// Successfully applied migrations (baseline included), oldest first.
    pub applied: Vec<AppliedMigration>,
    /// Migrations to apply, in order, classified.
    pub pending: Vec<PendingMigration>,
    /// Applied migrations whose file changed.
    pub drifted: Vec<Drift>,
    /// No-transaction migrations that started and did not finish.
    pub failed: Vec<AppliedMigration>,
    /// Applied migrations that have no file any more.
    pub missing: Vec<AppliedMigration>,
    /// Pending migrations older than the current version (applying them would be out of order).
    pub out_of_order: Vec<String>,
}

/// What [`PgMigrationRunner::repair`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Versions whose failed (unfinished) rows were removed.
    pub removed_failed: Vec<String>,
    /// Versions whose checksum was re-stamped from the file.
    pub restamped: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct HistoryRow {
    version: String,
    name: String,
    checksum: Option<String>,
    installed_at: String,
    execution_ms: Option<i64>,
    success: bool,
}

/// Everything read for one decision.
struct Inspection {
    report: SchemaReport,
    migrations: Vec<Migration>,
}

impl PgMigrationRunner {
    /// The history rows, oldest first; none when the table does not exist. One psql call: the
    /// existence check and the read are one script (`\gset`, `\if`).
    async fn history(&self, db: Option<&str>) -> Result<Vec<HistoryRow>> {
        let script = format!(
            "SELECT to_regclass({}) IS NOT NULL AS history_exists \\gset\n\
             \\if :history_exists\n\
             SELECT coalesce(json_agg(json_build_object('version', version, 'name', name, \
             'checksum', checksum, 'installed_at', installed_at, 'execution_ms', execution_ms, \
             'success', success) ORDER BY string_to_array(version, '.')::numeric[]), '[]') FROM {};\n\
             \\else\nSELECT '[]';\n\\endif\n",
            literal(&self.table_sql()),
            self.table_sql()
        );
        self.tools
            .query_json_script(db, &script, "read the history table of")
            .await
    }

    async fn ensure_history(&self) -> Result<()> {
        let t = self.table_sql();
        let schema = self
            .opts
            .table
            .split_once('.')
            .map(|(s, _)| format!("CREATE SCHEMA IF NOT EXISTS {};\n", ident(s)))
            .unwrap_or_default();
        let sql = format!(
            "{schema}CREATE TABLE IF NOT EXISTS {t} (\n  version text PRIMARY KEY,\n  name text NOT NULL,\n  \
             checksum text,\n  installed_at timestamptz NOT NULL DEFAULT now(),\n  installed_by text NOT NULL DEFAULT current_user,\n  \
             execution_ms bigint NOT NULL DEFAULT 0,\n  success boolean NOT NULL\n);\n"
        );
        self.tools
            .exec(None, &sql, "create the history table in")
            .await
            .map(drop)
    }

    pub(super) fn load(&self) -> Result<(Layout, Vec<Migration>)> {
        migrations::load(
            &self.opts.dir,
            LoadOptions {
                allow_gaps: self.opts.allow_gaps,
            },
        )
    }

    async fn validated_not_null(&self) -> Result<HashSet<String>> {
        // Validated CHECK constraints of the form (col IS NOT NULL), as `table.col`.
        let sql = "SELECT coalesce(json_agg(json_build_array(c.relname, pg_get_constraintdef(k.oid))), '[]') \
                   FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
                   WHERE k.contype = 'c' AND k.convalidated";
        let rows: Vec<(String, String)> = self
            .tools
            .query_json(None, sql, "read the constraints of")
            .await?;
        let mut set = HashSet::new();
        for (table, def) in rows {
            let def = def.to_lowercase().replace(['(', ')', '"'], " ");
            let words: Vec<&str> = def.split_whitespace().collect();
            for w in words.windows(4) {
                if w[1] == "is" && w[2] == "not" && w[3] == "null" {
                    set.insert(format!("{}.{}", table.to_lowercase(), w[0]));
                }
            }
        }
        Ok(set)
    }

    async fn inspect(&self) -> Result<Inspection> {
        let (layout, migrations) = self.load()?;
        let rows = self.history(None).await?;
        let by_version: BTreeMap<MigrationVersion, &Migration> =
            migrations.iter().map(|m| (m.version.clone(), m)).collect();
        let to_applied = |r: &HistoryRow| AppliedMigration {
            version: r.version.clone(),
            name: r.name.clone(),
            checksum: r.checksum.clone().unwrap_or_default(),
            installed_at: r.installed_at.clone(),
            execution_ms: r.execution_ms.unwrap_or(0),
            success: r.success,
        };
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        let mut missing = Vec::new();
        let mut drifted = Vec::new();
        let mut recorded: HashSet<MigrationVersion> = HashSet::new();
        let mut current: Option<MigrationVersion> = None;
        let mut baseline: Option<MigrationVersion> = None;
        for r in &rows {
            let Some(v) = MigrationVersion::parse(&r.version) else {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "read the history table of",
                    self.object(),
                    format!("version {:?} is not a number", r.version),
                ));
            };
            recorded.insert(v.clone());
            if !r.success {
                failed.push(to_applied(r));
                continue;
            }
            applied.push(to_applied(r));
            if current.as_ref().is_none_or(|c| &v > c) {
                current = Some(v.clone());
            }
            if r.name == BASELINE_NAME {
                baseline = Some(v);
                continue;
            }
            match by_version.get(&v) {
                None => missing.push(to_applied(r)),
                Some(m) => {
                    if r.checksum.as_deref() != Some(m.checksum.as_str()) {
                        drifted.push(Drift {
                            version: r.version.clone(),
                            path: m.up_path.clone(),
                            recorded: r.checksum.clone().unwrap_or_default(),
                            actual: m.checksum.clone(),
                        });
                    }
                }
            }
        }
        let pending_ms: Vec<&Migration> = migrations
            .iter()
            .filter(|m| !recorded.contains(&m.version))
            .filter(|m| baseline.as_ref().is_none_or(|b| &m.version > b))
            .collect();
        let needs_checks = pending_ms
            .iter()
            .any(|m| m.up_sql.to_uppercase().contains("NOT NULL"));
        let validated = if needs_checks {
            self.validated_not_null().await?
        } else {
            HashSet::new()
        };
        let mut created = HashSet::new();
        let mut pending = Vec::new();
        let mut out_of_order = Vec::new();
        for m in pending_ms {
            if current.as_ref().is_some_and(|c| &m.version < c) {
                out_of_order.push(m.version.to_string());
            }
            pending.push(PendingMigration {
                version: m.version.to_string(),
                name: m.name.clone(),
                no_transaction: m.no_transaction,
                classification: migrations::classify(&m.up_sql, &mut created, &validated),
            });
        }
        Ok(Inspection {
            report: SchemaReport {
                layout,
                current: current.map(|c| c.to_string()),
                applied,
                pending,
                drifted,
                failed,
                missing,
                out_of_order,
            },
            migrations,
        })
    }

    /// The full status: applied, pending (classified), drifted, failed and missing migrations.
    /// No side effects.
    pub async fn report(&self) -> Result<SchemaReport> {
        Ok(self.inspect().await?.report)
    }

    /// The version the database is at (the latest successful history row).
    pub async fn current_version(&self) -> Result<Option<String>> {
        self.current_in(None).await
    }

    pub(super) async fn current_in(&self, db: Option<&str>) -> Result<Option<String>> {
        let rows = self.history(db).await?;
        Ok(rows
            .iter()
            .filter(|r| r.success)
            .filter_map(|r| MigrationVersion::parse(&r.version))
            .max()
            .map(|v| v.to_string()))
    }

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

    /// `application_name` of this runner's migration sessions: per history table, so that a
    /// runner of another table in the same database is never taken for a dead one.
    fn apply_app(&self) -> String {
        let mut name = format!("{APPLY_APP}:{}", self.opts.table);
        name.truncate(63);
        name
    }

    fn apply_psql(&self) -> deploy_core::Command {
        self.tools.psql(None, &self.apply_app())
    }

    fn settings_sql(&self, local: bool) -> String {
        let scope = if local { "LOCAL " } else { "" };
        format!(
            "SET {scope}lock_timeout = '{}ms'; SET {scope}statement_timeout = 0;",
            self.opts.lock_timeout.as_millis()
        )
    }

    async fn apply(&self, m: &Migration) -> Result<()> {
        let t = self.table_sql();
        let what = format!("migration {} ({})", m.version, tools::file_name(&m.up_path));
        let operation = format!("apply {what} to");
        if !m.no_transaction {
            let insert = format!(
                "INSERT INTO {t} (version, name, checksum, execution_ms, success) VALUES ({}, {}, {}, \
                 (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint, true)",
                literal(&m.version.to_string()),
                literal(&m.name),
                literal(&m.checksum)
            );
            let cmd = self
                .apply_psql()
                .arg("--single-transaction")
                .args(["-c", &self.settings_sql(true)])
                .args(["-f", "-"])
                .args(["-c", &insert])
                .stdin(m.up_sql.as_bytes().to_vec());
            let mut attempt = 0;
            loop {
                match self.tools.run(&cmd, &operation, &self.object()).await {
                    Ok(_) => return Ok(()),
                    Err(e)
                        if e.kind() == ErrorKind::Conflict && attempt < self.opts.lock_retries =>
                    {
                        attempt += 1;
                        tracing::warn!(migration = %m.version, attempt, "lock timeout, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Outside a transaction: a not-successful row first, the file, then the row completed.
        let v = literal(&m.version.to_string());
        let start = format!(
            "INSERT INTO {t} (version, name, checksum, success) VALUES ({v}, {}, {}, false) \
             ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, \
             installed_at = now(), success = false;",
            literal(&m.name),
            literal(&m.checksum)
        );
        self.tools.exec(None, &start, "record the start of").await?;
        let started = Instant::now();
        let cmd = self
            .apply_psql()
            .args(["-c", &self.settings_sql(false)])
            .args(["-f", "-"])
            .stdin(m.up_sql.as_bytes().to_vec());
        if let Err(e) = self.tools.run(&cmd, &operation, &self.object()).await {
            // The same error, with the indexes the failure left (a failed CONCURRENTLY build).
            let invalid = self.invalid_indexes().await.unwrap_or_default();
            if invalid.is_empty() {
                return Err(e);
            }
            let names = invalid.join(", ");
            if !self.opts.drop_invalid_indexes {
                return Err(e.with_context(
                    "invalid indexes",
                    format!("{names} (it left them; drop them with drop_invalid_indexes)"),
                ));
            }
            return Err(match self.drop_invalid_indexes().await {
                Ok(_) => e.with_context("dropped the invalid indexes it left", names),
                Err(d) => e.with_context(
                    "invalid indexes",
                    format!("{names} (it left them; dropping them failed: {d})"),
                ),
            });
        }
        let done = format!(
            "UPDATE {t} SET success = true, execution_ms = {} WHERE version = {v};",
            started.elapsed().as_millis()
        );
        self.tools
            .exec(None, &done, "record the end of")
            .await
            .map(drop)
    }

    /// Indexes that are not valid (left by a failed `CREATE INDEX CONCURRENTLY`), as
    /// `schema.index`.
    pub async fn invalid_indexes(&self) -> Result<Vec<String>> {
        let sql = "SELECT coalesce(json_agg(format('%I.%I', n.nspname, c.relname) ORDER BY 1), '[]') \
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid";
        self.tools
            .query_json(None, sql, "list invalid indexes of")
            .await
    }

    /// Drop every invalid index (`DROP INDEX CONCURRENTLY`); returns their names.
    pub async fn drop_invalid_indexes(&self) -> Result<Vec<String>> {
        let names = self.invalid_indexes().await?;
        for n in &names {
            // `n` comes from format('%I.%I'), so it is already quoted.
            let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {n};");
            self.tools
                .exec(None, &sql, "drop an invalid index of")
                .await?;
        }
        Ok(names)
    }

    pub(super) async fn migrate_locked(&self) -> Result<Option<String>> {
        self.terminate_orphans().await?;
        self.ensure_history().await?;
        let Inspection { report, migrations } = self.inspect().await?;
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
        if !self.opts.allow_destructive
            && let Some(p) = report
                .pending
                .iter()
                .find(|p| p.classification.reason().is_some())
        {
            return refuse(format!(
                "migration {} ({}) is destructive: {}; allow destructive migrations to run it",
                p.version,
                p.name,
                p.classification.reason().unwrap_or_default()
            ));
        }
        let pending: HashSet<&str> = report.pending.iter().map(|p| p.version.as_str()).collect();
        let mut current = report.current.clone();
        for m in &migrations {
            let v = m.version.to_string();
            if !pending.contains(v.as_str()) {
                continue;
            }
            tracing::info!(migration = %v, name = %m.name, "applying");
            self.apply(m).await?;
            current = Some(v);
        }
        Ok(current)
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
        let Inspection { report, migrations } = self.inspect().await?;
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
            let m = migrations
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
        let v = MigrationVersion::parse(version).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "baseline",
                self.object(),
                format!("version {version:?} is not a number"),
            )
        })?;
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

    pub(super) async fn revert_locked(
        &self,
        to: Option<&SchemaVersion>,
        backup: Option<&BackupId>,
    ) -> Result<bool> {
        let Inspection { report, migrations } = self.inspect().await?;
        let to_v = match to {
            Some(v) => Some(MigrationVersion::parse(&v.0).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "revert",
                    self.object(),
                    format!("version {:?} is not a number", v.0),
                )
            })?),
            None => None,
        };
        let above: Vec<&AppliedMigration> = report
            .applied
            .iter()
            .rev()
            .filter(|a| {
                let v = MigrationVersion::parse(&a.version);
                to_v.as_ref()
                    .is_none_or(|t| v.as_ref().is_some_and(|v| v > t))
            })
            .collect();
        if above.is_empty() && report.failed.is_empty() {
            return Ok(false);
        }
        // Down migrations only when every one exists and undoes an additive migration: undoing
        // a destructive one cannot bring back the data it removed.
        let mut downs = Vec::new();
        let mut why_backup = None;
        if !report.failed.is_empty() {
            why_backup = Some(format!(
                "migration {} did not finish",
                report.failed[0].version
            ));
        }
        for a in &above {
            let m = migrations
                .iter()
                .find(|m| m.version.to_string() == a.version);
            match m {
                None => {
                    why_backup.get_or_insert(format!("migration {} has no file", a.version));
                }
                Some(m) if m.down_sql.is_none() => {
                    why_backup
                        .get_or_insert(format!("migration {} has no down migration", a.version));
                }
                Some(m) => {
                    let c = migrations::classify(&m.up_sql, &mut HashSet::new(), &HashSet::new());
                    if let Some(r) = c.reason() {
                        why_backup
                            .get_or_insert(format!("migration {} is destructive ({r})", a.version));
                    }
                    downs.push(m);
                }
            }
        }
        if why_backup.is_none() {
            let t = self.table_sql();
            for m in downs {
                let delete = format!(
                    "DELETE FROM {t} WHERE version = {}",
                    literal(&m.version.to_string())
                );
                let cmd = self
                    .apply_psql()
                    .arg("--single-transaction")
                    .args(["-c", &self.settings_sql(true)])
                    .args(["-f", "-"])
                    .args(["-c", &delete])
                    .stdin(m.down_sql.clone().unwrap_or_default().into_bytes());
                let what = format!(
                    "down migration {} ({})",
                    m.version,
                    m.down_path
                        .as_deref()
                        .map(tools::file_name)
                        .unwrap_or_default()
                );
                self.tools
                    .run(&cmd, &format!("apply {what} to"), &self.object())
                    .await?;
            }
            return Ok(false);
        }
        let why = why_backup.unwrap_or_default();
        let Some(backup) = backup else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "revert to {}",
                    to.map(|v| v.0.as_str()).unwrap_or("an empty schema")
                ),
                self.object(),
                format!("{why}, and no backup was given"),
            ));
        };
        tracing::info!(%why, backup = %backup.0, "reverting by restoring the backup");
        Ok(true)
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
