//! Where the schema stands: the folder read against the history table — applied, pending,
//! repeatable, drifted, unfinished and missing migrations, each judged for compatibility and
//! reversibility, and how each pending one will run with respect to transactions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use super::PgMigrationRunner;
use crate::migrations::{
    self, Compatibility, Folder, Layout, LoadOptions, Migration, MigrationVersion,
    REPEATABLE_PREFIX, Reversibility, Shape, Transaction,
};
use crate::tools::{ident, literal};

/// The name of the history row that [`PgMigrationRunner::baseline`] writes.
pub const BASELINE_NAME: &str = "<< baseline >>";

/// One applied migration: its history row, and what its files say of it now.
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
    /// Whether its down file undoes it without loss; `None` when its file is gone (or for a
    /// baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversibility: Option<Reversibility>,
}

/// A migration not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMigration {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// How its tool names it: its file, or diesel's folder.
    pub label: String,
    /// How it will run with respect to transactions.
    pub transaction: Transaction,
    /// Whether it can run while the previous release serves (what zero-downtime strategies
    /// gate on).
    pub compatibility: Compatibility,
    /// Whether its down file can undo it without losing data (what `revert` gates on).
    pub reversibility: Reversibility,
}

/// Where a repeatable migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatableState {
    /// Never applied: the next migrate applies it.
    New,
    /// Its file changed since it was applied: the next migrate applies it again.
    Changed,
    /// Applied as the file is now.
    UpToDate,
}

/// A Flyway repeatable migration (`R__<description>.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatableMigration {
    /// Its description, as the history table's `name`; its version there is
    /// `R__<description>`.
    pub name: String,
    /// Its file name.
    pub label: String,
    /// Whether the next migrate applies it.
    pub state: RepeatableState,
    /// How it runs with respect to transactions.
    pub transaction: Transaction,
    /// Whether it can run while the previous release serves.
    pub compatibility: Compatibility,
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
    /// Successfully applied versioned migrations (baseline included), oldest first.
    pub applied: Vec<AppliedMigration>,
    /// Versioned migrations to apply, in order, judged.
    pub pending: Vec<PendingMigration>,
    /// Repeatable migrations (Flyway), in the order they apply: after the versioned ones.
    pub repeatables: Vec<RepeatableMigration>,
    /// Applied migrations whose file changed.
    pub drifted: Vec<Drift>,
    /// No-transaction migrations that started and did not finish.
    pub failed: Vec<AppliedMigration>,
    /// Applied migrations that have no file any more.
    pub missing: Vec<AppliedMigration>,
    /// Pending migrations older than the current version (applying them would be out of order).
    pub out_of_order: Vec<String>,
}

impl SchemaReport {
    /// The repeatable migrations the next migrate applies.
    pub fn pending_repeatables(&self) -> impl Iterator<Item = &RepeatableMigration> {
        self.repeatables
            .iter()
            .filter(|r| r.state != RepeatableState::UpToDate)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryRow {
    pub(super) version: String,
    pub(super) name: String,
    pub(super) checksum: Option<String>,
    pub(super) installed_at: String,
    pub(super) execution_ms: Option<i64>,
    pub(super) success: bool,
}

#[derive(Debug, Deserialize)]
struct History {
    /// `server_version_num`.
    server: u32,
    rows: Vec<HistoryRow>,
}

/// Everything read for one decision.
pub(super) struct Inspection {
    pub(super) report: SchemaReport,
    pub(super) folder: Folder,
    /// How each pending versioned migration and each pending repeatable runs, by version.
    pub(super) shapes: HashMap<String, (Transaction, Shape)>,
    /// The history rows of repeatable migrations, by description.
    pub(super) repeatable_rows: BTreeMap<String, HistoryRow>,
    /// The first pending file that cannot run all-or-nothing, naming its line: `status` and
    /// `migrate` refuse while there is one; `repair` and `revert` need not.
    pub(super) refused: Option<Error>,
}

impl PgMigrationRunner {
    /// The history rows, oldest first (by time), and the server's version; no rows when the
    /// table does not exist. One psql call: the existence check and the read are one script.
    async fn history_and_server(&self, db: Option<&str>) -> Result<History> {
        let script = format!(
            "SELECT to_regclass({}) IS NOT NULL AS history_exists \\gset\n\
             \\if :history_exists\n\
             SELECT json_build_object('server', current_setting('server_version_num')::int, \
             'rows', coalesce(json_agg(json_build_object('version', version, 'name', name, \
             'checksum', checksum, 'installed_at', installed_at, 'execution_ms', execution_ms, \
             'success', success) ORDER BY installed_at, version), '[]')) FROM {};\n\
             \\else\nSELECT json_build_object('server', current_setting('server_version_num')::int, 'rows', '[]'::json);\n\\endif\n",
            literal(&self.table_sql()),
            self.table_sql()
        );
        let h: History = self
            .tools
            .query_json_script(db, &script, "read the history table of")
            .await?;
        self.tools.note_server_version(h.server);
        Ok(h)
    }

    pub(super) async fn history(&self, db: Option<&str>) -> Result<Vec<HistoryRow>> {
        Ok(self.history_and_server(db).await?.rows)
    }

    pub(super) async fn ensure_history(&self) -> Result<()> {
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

    pub(super) fn load(&self) -> Result<Folder> {
        migrations::load(
            &self.opts.dir,
            LoadOptions {
                allow_gaps: self.opts.allow_gaps,
            },
        )
    }

    /// A version of the history table (or given by a caller) as the folder's layout reads it.
    pub(super) fn parse_version(&self, layout: Layout, v: &str) -> Result<MigrationVersion> {
        MigrationVersion::parse(layout, v).ok_or_else(|| {
            let form = match layout {
                Layout::Flyway => "numbers separated by dots (1.2.10)",
                Layout::GolangMigrate => "a number",
                Layout::Diesel => "a diesel timestamp (digits, dashes dropped)",
            };
            Error::new(
                ErrorKind::InvalidInput,
                "read the version",
                format!("{v:?}"),
                format!("a {layout:?} version is {form}"),
            )
        })
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

    /// How a pending file runs on a server of version `server` (`server_version_num`).
    fn effective(shape: &Shape, server: u32, path: &std::path::Path) -> Result<Transaction> {
        let Some(line) = shape.adds_enum_value.filter(|_| server < 120_000) else {
            return Ok(shape.mode.clone());
        };
        let why = format!(
            "`ALTER TYPE … ADD VALUE` (line {line}) cannot run inside a transaction block before PostgreSQL 12"
        );
        match &shape.mode {
            Transaction::Wrapped => Ok(Transaction::Outside(why)),
            Transaction::Own => Err(Error::new(
                ErrorKind::InvalidInput,
                "read migration",
                path.display().to_string(),
                format!(
                    "{why}, and the file's own transaction holds it; move it to a file of its own"
                ),
            )),
            outside => Ok(outside.clone()),
        }
    }

    pub(super) async fn inspect(&self) -> Result<Inspection> {
        let folder = self.load()?;
        let layout = folder.layout;
        let History { server, rows } = self.history_and_server(None).await?;
        let by_version: BTreeMap<MigrationVersion, &Migration> = folder
            .migrations
            .iter()
            .map(|m| (m.version.clone(), m))
            .collect();
        // Tables created by the pending migrations before the one judged: the previous
        // release does not use them yet.
        let mut created = HashSet::new();
        let mut reversibility = HashMap::new();
        for m in &folder.migrations {
            reversibility.insert(
                m.version.clone(),
                migrations::reversibility(&m.up_sql, m.down_sql.as_deref()),
            );
        }
        let to_applied = |r: &HistoryRow, rev: Option<Reversibility>| AppliedMigration {
            version: r.version.clone(),
            name: r.name.clone(),
            checksum: r.checksum.clone().unwrap_or_default(),
            installed_at: r.installed_at.clone(),
            execution_ms: r.execution_ms.unwrap_or(0),
            success: r.success,
            reversibility: rev,
        };
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        let mut missing = Vec::new();
        let mut drifted = Vec::new();
        let mut recorded: HashSet<MigrationVersion> = HashSet::new();
        let mut current: Option<MigrationVersion> = None;
        let mut baseline: Option<MigrationVersion> = None;
        let mut repeatable_rows = BTreeMap::new();
        let mut versioned: Vec<(MigrationVersion, HistoryRow)> = Vec::new();
        for r in rows {
            if let Some(description) = r.version.strip_prefix(REPEATABLE_PREFIX) {
                repeatable_rows.insert(description.to_owned(), r);
                continue;
            }
            let v = self.parse_version(layout, &r.version).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    "read the history table of",
                    self.object(),
                    format!(
                        "version {:?} does not fit the folder's {layout:?} layout: {}",
                        r.version,
                        e.message()
                    ),
                )
            })?;
            versioned.push((v, r));
        }
        versioned.sort_by(|a, b| a.0.cmp(&b.0));
        for (v, r) in &versioned {
            recorded.insert(v.clone());
            let rev = by_version.get(v).map(|_| reversibility[v].clone());
            if !r.success {
                failed.push(to_applied(r, rev));
                continue;
            }
            if current.as_ref().is_none_or(|c| v > c) {
                current = Some(v.clone());
            }
            if r.name == BASELINE_NAME {
                applied.push(to_applied(r, None));
                baseline = Some(v.clone());
                continue;
            }
            applied.push(to_applied(r, rev));
            match by_version.get(v) {
                None => missing.push(to_applied(r, None)),
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
        let is_pending = |m: &Migration| {
            !recorded.contains(&m.version) && baseline.as_ref().is_none_or(|b| &m.version > b)
        };
        let needs_checks = folder
            .migrations
            .iter()
            .filter(|m| is_pending(m))
            .map(|m| m.up_sql.as_str())
            .chain(folder.repeatables.iter().map(|r| r.sql.as_str()))
            .any(|sql| sql.to_uppercase().contains("NOT NULL"));
        let validated = if needs_checks {
            self.validated_not_null().await?
        } else {
            HashSet::new()
        };
        let mut shapes = HashMap::new();
        let mut refused = None;
        let mut pending = Vec::new();
        let mut out_of_order = Vec::new();
        for m in &folder.migrations {
            if !is_pending(m) {
                continue;
            }
            if current.as_ref().is_some_and(|c| &m.version < c) {
                out_of_order.push(m.version.to_string());
            }
            let transaction = match m
                .shape()
                .and_then(|shape| Ok((Self::effective(shape, server, &m.up_path)?, shape)))
            {
                Ok((transaction, shape)) => {
                    shapes.insert(m.version.to_string(), (transaction.clone(), shape.clone()));
                    transaction
                }
                Err(e) => {
                    refused.get_or_insert(e);
                    continue;
                }
            };
            pending.push(PendingMigration {
                version: m.version.to_string(),
                name: m.name.clone(),
                label: m.label.clone(),
                transaction,
                compatibility: migrations::classify(&m.up_sql, &mut created, &validated),
                reversibility: reversibility[&m.version].clone(),
            });
        }
        let mut repeatables = Vec::new();
        for r in &folder.repeatables {
            let state = match repeatable_rows.get(&r.description) {
                None => RepeatableState::New,
                Some(row) if !row.success || row.checksum.as_deref() != Some(&r.checksum) => {
                    RepeatableState::Changed
                }
                Some(_) => RepeatableState::UpToDate,
            };
            let transaction = match r
                .shape()
                .and_then(|shape| Ok((Self::effective(shape, server, &r.path)?, shape)))
            {
                Ok((transaction, shape)) => {
                    if state != RepeatableState::UpToDate {
                        shapes.insert(r.version(), (transaction.clone(), shape.clone()));
                    }
                    transaction
                }
                Err(e) => {
                    if state != RepeatableState::UpToDate {
                        refused.get_or_insert(e);
                    }
                    continue;
                }
            };
            repeatables.push(RepeatableMigration {
                name: r.description.clone(),
                label: r.label.clone(),
                state,
                transaction,
                compatibility: migrations::classify(&r.sql, &mut created, &validated),
            });
        }
        Ok(Inspection {
            report: SchemaReport {
                layout,
                current: current.map(|c| c.to_string()),
                applied,
                pending,
                repeatables,
                drifted,
                failed,
                missing,
                out_of_order,
            },
            folder,
            shapes,
            repeatable_rows,
            refused,
        })
    }

    /// The full status: applied, pending (judged), repeatable, drifted, failed and missing
    /// migrations. No side effects. A pending migration that cannot run all-or-nothing (a
    /// file mixing its own transactions with other statements) is an error naming its file and
    /// line.
    pub async fn report(&self) -> Result<SchemaReport> {
        let inspection = self.inspect().await?;
        match inspection.refused {
            Some(e) => Err(e),
            None => Ok(inspection.report),
        }
    }

    /// The version the database is at (the latest successful history row).
    pub async fn current_version(&self) -> Result<Option<String>> {
        self.current_in(None).await
    }

    pub(super) async fn current_in(&self, db: Option<&str>) -> Result<Option<String>> {
        let layout = self.load()?.layout;
        let rows = self.history(db).await?;
        let mut best: Option<MigrationVersion> = None;
        for r in rows.iter().filter(|r| r.success) {
            if r.version.starts_with(REPEATABLE_PREFIX) {
                continue;
            }
            let v = self.parse_version(layout, &r.version)?;
            if best.as_ref().is_none_or(|b| &v > b) {
                best = Some(v);
            }
        }
        Ok(best.map(|v| v.to_string()))
    }
}
