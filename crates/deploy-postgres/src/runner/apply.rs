//! Running one migration file as its transaction mode says, with its history row:
//!
//! - [`Transaction::Wrapped`]: `psql --single-transaction -c <settings> -f - -c <row>`, so
//!   a failure leaves neither the migration nor its row;
//! - [`Transaction::Own`]: the file's own `BEGIN … COMMIT`, with the settings spliced in just
//!   after its `BEGIN` and the row just before its `COMMIT` (on the same lines, so psql's line
//!   numbers are the file's);
//! - [`Transaction::Outside`]: an unfinished row first, the file statement by statement, the
//!   row completed after; a failure says from which line on nothing ran.
//!
//! Consecutive wrapped files that are self-contained ([`Shape::self_contained`]) share one psql
//! session ([`PgMigrationRunner::run_batch`]): each still its own transaction with its row, the
//! session reset (`DISCARD ALL`) between them, so that what one file `SET`s never reaches the
//! next. One psql start per run of plain files instead of one per file.

use std::time::{Duration, Instant};

use deploy_core::{Command, ErrorKind, Result};

use super::PgMigrationRunner;
use crate::migrations::{Shape, Transaction};
use crate::tools::{APPLY_APP, literal};

/// What a file does to the history table when it succeeds.
pub(super) enum Record<'a> {
    /// A versioned migration applied: a new row.
    Insert {
        version: &'a str,
        name: &'a str,
        checksum: &'a str,
    },
    /// A repeatable migration applied: its row written or rewritten.
    Upsert {
        version: &'a str,
        name: &'a str,
        checksum: &'a str,
    },
    /// A down migration applied: its up's row removed.
    Delete { version: &'a str },
}

/// One file to run.
pub(super) struct Run<'a> {
    /// For messages: `migration V2__add_orders.sql`, `down migration 2026-…_add_orders`.
    pub(super) what: String,
    pub(super) sql: &'a str,
    pub(super) transaction: &'a Transaction,
    pub(super) shape: &'a Shape,
    pub(super) record: Record<'a>,
}

/// A migration of a batch ([`PgMigrationRunner::run_batch`]).
pub(super) struct Batched<'a> {
    pub(super) label: &'a str,
    pub(super) version: &'a str,
    pub(super) name: &'a str,
    pub(super) checksum: &'a str,
    pub(super) sql: &'a str,
}

/// The time since the transaction started, in milliseconds, as SQL.
const ELAPSED_MS: &str = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint";

impl PgMigrationRunner {
    /// `application_name` of this runner's migration sessions: per history table, so that a
    /// runner of another table in the same database is never taken for a dead one.
    pub(super) fn apply_app(&self) -> String {
        let mut name = format!("{APPLY_APP}:{}", self.opts.table);
        name.truncate(63);
        name
    }

    fn apply_psql(&self) -> Command {
        self.tools.psql(None, &self.apply_app())
    }

    fn settings_sql(&self, local: bool) -> String {
        let scope = if local { "LOCAL " } else { "" };
        format!(
            "SET {scope}lock_timeout = '{}ms'; SET {scope}statement_timeout = 0;",
            self.opts.lock_timeout.as_millis()
        )
    }

    /// The statements recording `record` inside the file's transaction. The file may have
    /// changed `search_path` (pg_dump's output sets it to `''`), so it is reset first: the
    /// history table is found where it was created.
    fn record_sql(&self, record: &Record<'_>) -> String {
        format!("RESET search_path; {}", self.record_statement(record))
    }

    fn record_statement(&self, record: &Record<'_>) -> String {
        let t = self.table_sql();
        match record {
            Record::Insert {
                version,
                name,
                checksum,
            } => format!(
                "INSERT INTO {t} (version, name, checksum, execution_ms, success) VALUES ({}, {}, {}, {ELAPSED_MS}, true)",
                literal(version),
                literal(name),
                literal(checksum)
            ),
            Record::Upsert {
                version,
                name,
                checksum,
            } => format!(
                "INSERT INTO {t} (version, name, checksum, execution_ms, success) VALUES ({}, {}, {}, {ELAPSED_MS}, true) \
                 ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, \
                 installed_at = now(), installed_by = current_user, execution_ms = EXCLUDED.execution_ms, success = true",
                literal(version),
                literal(name),
                literal(checksum)
            ),
            Record::Delete { version } => {
                format!("DELETE FROM {t} WHERE version = {}", literal(version))
            }
        }
    }

    /// Run `run`; see the module documentation.
    pub(super) async fn run_file(&self, run: Run<'_>) -> Result<()> {
        let operation = format!("apply {} to", run.what);
        let record = self.record_sql(&run.record);
        let cmd = match (run.transaction, run.shape.own) {
            (Transaction::Wrapped, _) => self
                .apply_psql()
                .arg("--single-transaction")
                .args(["-c", &self.settings_sql(true)])
                .args(["-f", "-"])
                .args(["-c", &record])
                .stdin(run.sql.as_bytes().to_vec()),
            (Transaction::Own, Some((after_begin, commit))) => {
                let sql = run.sql;
                let spliced = format!(
                    "{} {}{}{record}; {}",
                    &sql[..after_begin],
                    self.settings_sql(true),
                    &sql[after_begin..commit],
                    &sql[commit..]
                );
                self.apply_psql()
                    .args(["-f", "-"])
                    .stdin(spliced.into_bytes())
            }
            (Transaction::Own, None) => unreachable!("an Own shape knows its BEGIN and COMMIT"),
            (Transaction::Outside(_), _) => return self.run_outside(run, &operation).await,
        };
        let mut attempt = 0;
        loop {
            match self.tools.run(&cmd, &operation, &self.object()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Conflict && attempt < self.opts.lock_retries => {
                    attempt += 1;
                    tracing::warn!(what = %run.what, attempt, "lock timeout, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Apply `batch` (versioned, wrapped, self-contained migrations, in order) in one psql
    /// session, each as `BEGIN; <settings> <file> <row>; COMMIT; DISCARD ALL;`. psql stops at
    /// the first error: the migrations before it are committed with their rows, the failing
    /// one left nothing. The caller finds out which were applied and runs the rest one by one.
    pub(super) async fn run_batch(&self, batch: &[Batched<'_>]) -> Result<()> {
        let mut script = String::new();
        for b in batch {
            script.push_str("BEGIN;\n");
            script.push_str(&self.settings_sql(true));
            script.push('\n');
            script.push_str(b.sql);
            if !b.sql.ends_with('\n') {
                script.push('\n');
            }
            script.push_str(&self.record_sql(&Record::Insert {
                version: b.version,
                name: b.name,
                checksum: b.checksum,
            }));
            script.push_str(";\nCOMMIT;\nDISCARD ALL;\n");
        }
        let (first, last) = (
            batch.first().map_or("", |b| b.label),
            batch.last().map_or("", |b| b.label),
        );
        let operation = format!("apply migrations {first} … {last} to");
        let cmd = self
            .apply_psql()
            .args(["-f", "-"])
            .stdin(script.into_bytes());
        self.tools
            .run(&cmd, &operation, &self.object())
            .await
            .map(drop)
    }

    /// A file outside a transaction: an unfinished row first (for an up), the file, then the
    /// row completed (or, for a down, removed).
    async fn run_outside(&self, run: Run<'_>, operation: &str) -> Result<()> {
        let t = self.table_sql();
        let start = match &run.record {
            Record::Insert {
                version,
                name,
                checksum,
            }
            | Record::Upsert {
                version,
                name,
                checksum,
            } => Some(format!(
                "INSERT INTO {t} (version, name, checksum, success) VALUES ({}, {}, {}, false) \
                 ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, \
                 installed_at = now(), success = false;",
                literal(version),
                literal(name),
                literal(checksum)
            )),
            Record::Delete { .. } => None,
        };
        let done = |ms: u128| match &run.record {
            Record::Insert { version, .. } | Record::Upsert { version, .. } => format!(
                "UPDATE {t} SET success = true, execution_ms = {ms} WHERE version = {};",
                literal(version)
            ),
            Record::Delete { .. } => format!("{};", self.record_sql(&run.record)),
        };
        if let Some(start) = start {
            self.tools.exec(None, &start, "record the start of").await?;
        }
        let started = Instant::now();
        let cmd = self
            .apply_psql()
            .args(["-c", &self.settings_sql(false)])
            .args(["-f", "-"])
            .stdin(run.sql.as_bytes().to_vec());
        if let Err(e) = self.tools.run(&cmd, operation, &self.object()).await {
            let stayed = match crate::tools::input_line(&e) {
                Some(line) => format!(
                    "it ran outside a transaction: what it did before line {line} stays committed"
                ),
                None => {
                    "it ran outside a transaction: what it did before the failure stays committed"
                        .to_owned()
                }
            };
            let next = match &run.record {
                Record::Delete { .. } => "the history still lists it as applied",
                _ => "its history row is left unfinished: check the schema, then run repair",
            };
            let e = e.with_context("outside a transaction", format!("{stayed}; {next}"));
            // The indexes the failure left (a failed CONCURRENTLY build).
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
        self.tools
            .exec(
                None,
                &done(started.elapsed().as_millis()),
                "record the end of",
            )
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
}
