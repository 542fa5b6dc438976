//! [`PgMigrationRunner`]: status, backup, migrate, verify, revert, repair, baseline, restore.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::{
    BackupId, DynHost, Error, ErrorKind, FileKind, LocalHost, MigrationInfo, MigrationRunner,
    MigrationStatus, Result, SchemaVersion,
};
use serde::{Deserialize, Serialize};

use crate::config::PgConfig;
use crate::migrations::{self, Classification, Layout, LoadOptions, Migration, MigrationVersion};
use crate::tools::{self, APPLY_APP, LockSession, Tools, ident, literal};

/// The name of the history row that [`PgMigrationRunner::baseline`] writes.
pub const BASELINE_NAME: &str = "<< baseline >>";

/// How [`PgMigrationRunner::restore`] puts a backup back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Restore into a fresh database, verify it, then swap names; the replaced database is kept
    /// as `<db>_failed_<stamp>` for inspection. Needs room for a second copy.
    #[default]
    Swap,
    /// Drop the database (terminating its sessions), create it again and restore into it. The
    /// current content is lost, and a failed restore leaves an incomplete database.
    InPlace,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The database now serving the restored content.
    pub database: String,
    /// Where the replaced database was kept (swap mode).
    pub kept_as: Option<String>,
    /// The schema version of the restored database.
    pub version: Option<String>,
}

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

#[derive(Debug, Clone)]
struct Options {
    dir: PathBuf,
    table: String,
    backup_dir: Option<PathBuf>,
    keep_backups: usize,
    jobs: u32,
    compression: Option<u8>,
    lock_wait: Duration,
    lock_poll: Duration,
    lock_timeout: Duration,
    lock_retries: u32,
    allow_gaps: bool,
    allow_destructive: bool,
    drop_invalid_indexes: bool,
    restore_mode: RestoreMode,
}

/// Builds a [`PgMigrationRunner`]; [`build`](PgRunnerBuilder::build) validates everything.
#[derive(Debug, Clone)]
pub struct PgRunnerBuilder {
    config: PgConfig,
    host: Option<DynHost>,
    bin_dir: Option<PathBuf>,
    query_timeout: Duration,
    opts: Options,
}

impl PgRunnerBuilder {
    /// Run the tools on `host` (default: [`LocalHost`]).
    pub fn host(mut self, host: DynHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Take `psql`, `pg_dump`, `pg_restore` from `dir` instead of `PATH`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The history table, optionally schema-qualified (default `schema_version`).
    pub fn history_table(mut self, table: impl Into<String>) -> Self {
        self.opts.table = table.into();
        self
    }

    /// Where backups are written, on the host (required for [`MigrationRunner::backup`]).
    pub fn backup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.backup_dir = Some(dir.into());
        self
    }

    /// Keep the newest `n` backups of this database (default 5).
    pub fn keep_backups(mut self, n: usize) -> Self {
        self.opts.keep_backups = n;
        self
    }

    /// Parallel `pg_restore` jobs (default 2).
    pub fn restore_jobs(mut self, jobs: u32) -> Self {
        self.opts.jobs = jobs;
        self
    }

    /// `pg_dump -Z` level 0–9 (default: pg_dump's own, 6 with gzip).
    pub fn compression(mut self, level: u8) -> Self {
        self.opts.compression = Some(level);
        self
    }

    /// How long a second runner waits for the migration lock (default 60 s), polling every
    /// `poll` (default 500 ms).
    pub fn lock_wait(mut self, wait: Duration, poll: Duration) -> Self {
        self.opts.lock_wait = wait;
        self.opts.lock_poll = poll;
        self
    }

    /// `lock_timeout` for migration DDL (default 5 s) and how often a migration that hit it is
    /// retried (default 3).
    pub fn lock_timeout(mut self, timeout: Duration, retries: u32) -> Self {
        self.opts.lock_timeout = timeout;
        self.opts.lock_retries = retries;
        self
    }

    /// Accept sequence numbers with gaps (default: a gap is an error).
    pub fn allow_gaps(mut self, allow: bool) -> Self {
        self.opts.allow_gaps = allow;
        self
    }

    /// Whether `migrate` runs destructive migrations (default true; the engine already refuses
    /// them in zero-downtime strategies at planning). `false` makes the runner refuse them too.
    pub fn allow_destructive(mut self, allow: bool) -> Self {
        self.opts.allow_destructive = allow;
        self
    }

    /// Drop the invalid indexes a failed no-transaction migration left (default: report only).
    pub fn drop_invalid_indexes(mut self, drop: bool) -> Self {
        self.opts.drop_invalid_indexes = drop;
        self
    }

    /// How `revert` restores a backup (default [`RestoreMode::Swap`]).
    pub fn restore_mode(mut self, mode: RestoreMode) -> Self {
        self.opts.restore_mode = mode;
        self
    }

    /// Time limit of each bookkeeping query (default 60 s; migrations themselves have none).
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Check the settings and build the runner.
    pub fn build(self) -> Result<PgMigrationRunner> {
        self.config.validate()?;
        let mut problems = Vec::new();
        let t = &self.opts.table;
        let parts: Vec<&str> = t.split('.').collect();
        let ok_ident = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if parts.len() > 2 || !parts.iter().all(|p| ok_ident(p)) {
            problems.push(format!(
                "history table {t:?} must be [schema.]name in lower-case letters, digits and '_'"
            ));
        }
        if self.opts.keep_backups == 0 {
            problems.push("keep_backups must be at least 1".into());
        }
        if self.opts.jobs == 0 {
            problems.push("restore_jobs must be at least 1".into());
        }
        if self.opts.compression.is_some_and(|c| c > 9) {
            problems.push("compression must be 0 to 9".into());
        }
        if self.opts.lock_poll.is_zero() {
            problems.push("the lock poll interval must not be zero".into());
        }
        if self.config.dbname.contains('$') {
            problems.push("the database name must not contain '$'".into());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("migration runner for {}", self.config),
                problems.join("; "),
            ));
        }
        let tools = Tools {
            host: self.host.unwrap_or_else(|| Arc::new(LocalHost::new())),
            config: self.config,
            bin_dir: self.bin_dir,
            query_timeout: self.query_timeout,
        };
        Ok(PgMigrationRunner {
            tools,
            opts: self.opts,
        })
    }
}

/// A [`MigrationRunner`] over `psql`, `pg_dump` and `pg_restore` run through a
/// [`Host`](deploy_core::Host).
///
/// Migration files are read on this machine; SQL reaches the host through psql's standard
/// input, so the host needs the client tools only. The advisory lock is held by a `psql` session
/// started on this machine (see the crate documentation).
#[derive(Debug, Clone)]
pub struct PgMigrationRunner {
    tools: Tools,
    opts: Options,
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
    /// A builder for the database `config` with migrations in `dir`.
    pub fn builder(config: PgConfig, dir: impl Into<PathBuf>) -> PgRunnerBuilder {
        PgRunnerBuilder {
            config,
            host: None,
            bin_dir: None,
            query_timeout: Duration::from_secs(60),
            opts: Options {
                dir: dir.into(),
                table: "schema_version".into(),
                backup_dir: None,
                keep_backups: 5,
                jobs: 2,
                compression: None,
                lock_wait: Duration::from_secs(60),
                lock_poll: Duration::from_millis(500),
                lock_timeout: Duration::from_secs(5),
                lock_retries: 3,
                allow_gaps: false,
                allow_destructive: true,
                drop_invalid_indexes: false,
                restore_mode: RestoreMode::Swap,
            },
        }
    }

    /// The connection settings.
    pub fn config(&self) -> &PgConfig {
        &self.tools.config
    }

    fn db(&self) -> &str {
        &self.tools.config.dbname
    }

    fn table_sql(&self) -> String {
        self.opts
            .table
            .split('.')
            .map(ident)
            .collect::<Vec<_>>()
            .join(".")
    }

    fn object(&self) -> String {
        format!("database {}", self.db())
    }

    async fn lock(&self) -> Result<LockSession> {
        let key = tools::lock_key(self.db(), &self.opts.table);
        LockSession::acquire(&self.tools, key, self.opts.lock_wait, self.opts.lock_poll).await
    }

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

    fn load(&self) -> Result<(Layout, Vec<Migration>)> {
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

    async fn current_in(&self, db: Option<&str>) -> Result<Option<String>> {
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
            let invalid = self.invalid_indexes().await.unwrap_or_default();
            let mut cause = e.to_string();
            if !invalid.is_empty() {
                if self.opts.drop_invalid_indexes {
                    self.drop_invalid_indexes().await?;
                    cause.push_str(&format!(
                        "; dropped the invalid indexes it left: {}",
                        invalid.join(", ")
                    ));
                } else {
                    cause.push_str(&format!(
                        "; it left invalid indexes: {} (drop them with drop_invalid_indexes)",
                        invalid.join(", ")
                    ));
                }
            }
            return Err(Error::new(e.kind(), operation, self.object(), cause).with_source(e));
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

    async fn migrate_locked(&self) -> Result<Option<String>> {
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

    /// Take a `pg_dump -Fc` backup: created 0600 under a temporary name, checked with
    /// `pg_restore -l`, renamed into place; older backups beyond the retention are removed.
    pub async fn take_backup(&self) -> Result<PathBuf> {
        let dir = self.opts.backup_dir.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "back up",
                self.object(),
                "no backup directory is configured (PgRunnerBuilder::backup_dir)",
            )
        })?;
        let host = &self.tools.host;
        host.create_dir_all(&dir).await?;
        let name = format!("{}-{}.dump", self.db(), tools::utc_stamp());
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.partial"));
        host.write_file(&tmp, b"", Some(0o600)).await?;
        let object = format!("database {} to {}", self.db(), path.display());
        let mut dump = self
            .tools
            .command("pg_dump", None, "deploy-postgres:backup")
            .args(["-Fc", "-f"])
            .arg(tmp.as_os_str());
        if let Some(z) = self.opts.compression {
            dump = dump.arg(format!("-Z{z}"));
        }
        let result = async {
            self.tools.run(&dump, "back up", &object).await?;
            self.check_archive(&tmp).await
        }
        .await;
        if let Err(e) = result {
            let _ = host.remove(&tmp).await;
            return Err(e);
        }
        host.rename(&tmp, &path).await?;
        self.prune_backups(&dir).await?;
        Ok(path)
    }

    async fn check_archive(&self, path: &Path) -> Result<()> {
        let cmd = self
            .tools
            .command("pg_restore", None, "deploy-postgres:check")
            .arg("-l")
            .arg(path.as_os_str());
        let out = self
            .tools
            .run(&cmd, "read the backup archive", &path.display().to_string())
            .await?;
        if !out.stdout_text().contains("Archive created at") {
            return Err(Error::new(
                ErrorKind::Protocol,
                "read the backup archive",
                path.display().to_string(),
                "pg_restore -l printed no table of contents",
            ));
        }
        Ok(())
    }

    async fn prune_backups(&self, dir: &Path) -> Result<()> {
        let prefix = format!("{}-", self.db());
        let mut ours: Vec<String> = self
            .tools
            .host
            .list_dir(dir)
            .await?
            .into_iter()
            .filter(|(n, k)| *k == FileKind::File && n.starts_with(&prefix) && n.ends_with(".dump"))
            .map(|(n, _)| n)
            .filter(|n| {
                // `<db>-<stamp>.dump` exactly, so `app-2-…` backups of database `app-2` are not
                // taken for `app`'s.
                let stamp = &n[prefix.len()..n.len() - 5];
                stamp.len() == 19 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T'
            })
            .collect();
        ours.sort();
        let excess = ours.len().saturating_sub(self.opts.keep_backups);
        for n in &ours[..excess] {
            self.tools.host.remove(&dir.join(n)).await?;
        }
        Ok(())
    }

    /// Restore `backup` with `mode`, and check that the restored history table is at
    /// `expected` when given (`Some(None)`: an empty schema).
    pub async fn restore(
        &self,
        backup: &Path,
        mode: RestoreMode,
        expected: Option<Option<&str>>,
    ) -> Result<RestoreReport> {
        let backup_s = backup.display().to_string();
        match self.tools.host.file_kind(backup).await? {
            Some(FileKind::File) => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "restore",
                    format!("backup {backup_s}"),
                    "no such file on the host",
                ));
            }
        }
        // In place, the live database is dropped first: make sure the archive reads before.
        // Swapping, a bad archive fails pg_restore into the fresh copy, which is dropped.
        if mode == RestoreMode::InPlace {
            self.check_archive(backup).await?;
        }
        let db = self.db().to_owned();
        let stamp: String = tools::utc_stamp()
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        let base: String = db.chars().take(30).collect();
        let maint = self.tools.config.maintenance_db.clone();
        let target = match mode {
            RestoreMode::Swap => format!("{base}_restore_{stamp}"),
            RestoreMode::InPlace => db.clone(),
        };
        // One psql call: read the owner, (drop in place,) create the new database owned alike.
        let drop_live = if mode == RestoreMode::InPlace {
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE);\n", ident(&db))
        } else {
            String::new()
        };
        let create = format!(
            "SELECT coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {}), \
             current_user) AS db_owner \\gset\n{drop_live}\
             CREATE DATABASE {} TEMPLATE template0 OWNER :\"db_owner\";\n",
            literal(&db),
            ident(&target),
        );
        self.tools
            .exec(Some(&maint), &create, "create the restore database")
            .await?;
        let drop_target = || async {
            if mode == RestoreMode::Swap {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", ident(&target));
                let _ = self
                    .tools
                    .exec(Some(&maint), &sql, "drop the restore database")
                    .await;
            }
        };
        let restore = self
            .tools
            .command("pg_restore", Some(&target), "deploy-postgres:restore")
            .arg(format!("--jobs={}", self.opts.jobs))
            .arg("--exit-on-error")
            .arg(format!("--dbname={target}"))
            .arg(backup.as_os_str());
        let object = format!("backup {backup_s} into database {target}");
        if let Err(e) = self.tools.run(&restore, "restore", &object).await {
            drop_target().await;
            return Err(e);
        }
        let version = match self.current_in(Some(&target)).await {
            Ok(v) => v,
            Err(e) => {
                drop_target().await;
                return Err(e);
            }
        };
        if let Some(exp) = expected
            && version.as_deref() != exp
        {
            drop_target().await;
            return Err(Error::new(
                ErrorKind::Rejected,
                "verify the restore of",
                format!("backup {backup_s}"),
                format!(
                    "the restored schema is at {}, expected {}",
                    version.as_deref().unwrap_or("no version"),
                    exp.unwrap_or("no version")
                ),
            ));
        }
        if mode == RestoreMode::InPlace {
            return Ok(RestoreReport {
                database: db,
                kept_as: None,
                version,
            });
        }
        let kept = format!("{base}_failed_{stamp}");
        // Both renames in one transaction: the name `db` always points at a whole database.
        // Sessions are terminated and the rename retried while they go away.
        let swap = format!(
            "DO $swap$\nDECLARE tries int := 0;\nBEGIN\n  LOOP\n    BEGIN\n      \
             PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ({}, {}) AND pid <> pg_backend_pid();\n      \
             ALTER DATABASE {} RENAME TO {};\n      ALTER DATABASE {} RENAME TO {};\n      EXIT;\n    \
             EXCEPTION WHEN object_in_use THEN\n      tries := tries + 1;\n      IF tries > 100 THEN RAISE; END IF;\n      \
             PERFORM pg_sleep(0.05);\n    END;\n  END LOOP;\nEND\n$swap$;\n",
            literal(&db),
            literal(&target),
            ident(&db),
            ident(&kept),
            ident(&target),
            ident(&db)
        );
        if let Err(e) = self
            .tools
            .exec(Some(&maint), &swap, "swap in the restored database for")
            .await
        {
            drop_target().await;
            return Err(e);
        }
        Ok(RestoreReport {
            database: db,
            kept_as: Some(kept),
            version,
        })
    }

    async fn revert_locked(
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
    async fn verify_at(&self, expected: Option<&str>) -> Result<()> {
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

#[async_trait]
impl MigrationRunner for PgMigrationRunner {
    async fn status(&self) -> Result<MigrationStatus> {
        let r = self.report().await?;
        Ok(MigrationStatus::new(
            r.current.map(SchemaVersion),
            r.pending
                .into_iter()
                .map(|p| {
                    MigrationInfo::new(
                        p.version,
                        p.name,
                        p.classification.reason().map(str::to_owned),
                    )
                })
                .collect(),
        ))
    }

    async fn backup(&self) -> Result<BackupId> {
        let path = self.take_backup().await?;
        Ok(BackupId(path.display().to_string()))
    }

    async fn migrate(&self) -> Result<Option<SchemaVersion>> {
        // A bad folder fails before anything touches the database.
        self.load()?;
        let lock = self.lock().await?;
        let r = self.migrate_locked().await;
        lock.release().await;
        Ok(r?.map(SchemaVersion))
    }

    async fn verify(&self, expected: Option<&SchemaVersion>) -> Result<()> {
        self.verify_at(expected.map(|v| v.0.as_str())).await
    }

    async fn revert(&self, to: Option<&SchemaVersion>, backup: Option<&BackupId>) -> Result<()> {
        // The lock is held through the restore (its session is in the maintenance database), so
        // no other runner migrates between the decision to restore and the swap.
        let lock = self.lock().await?;
        let r = async {
            if self.revert_locked(to, backup).await? {
                let backup = backup.expect("checked by revert_locked");
                self.restore(
                    Path::new(&backup.0),
                    self.opts.restore_mode,
                    Some(to.map(|v| v.0.as_str())),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        lock.release().await;
        r?;
        self.verify(to).await
    }
}
