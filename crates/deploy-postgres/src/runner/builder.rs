//! [`PgMigrationRunnerBuilder`]: every setting of a [`PgMigrationRunner`], checked together by
//! [`build`](PgMigrationRunnerBuilder::build).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{DynHost, Error, ErrorKind, LocalHost, Result};

use super::{Options, PgMigrationRunner, RestoreMode};
use crate::connection::PgConfig;
use crate::tools::Tools;

/// Builds a [`PgMigrationRunner`] from connection settings and a migrations folder; every
/// setter has a default, and [`build`](PgMigrationRunnerBuilder::build) checks them all.
#[derive(Debug, Clone)]
pub struct PgMigrationRunnerBuilder {
    config: PgConfig,
    host: Option<DynHost>,
    bin_dir: Option<PathBuf>,
    query_timeout: Duration,
    opts: Options,
}

impl PgMigrationRunnerBuilder {
    /// Run the tools on `host` (default: [`LocalHost`]).
    pub fn host(mut self, host: DynHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Take `psql`, `pg_dump`, `pg_restore` from `dir` as they are (default: the directory on
    /// the host whose major version fits the server, see [`PgMigrationRunner::tools`]). A
    /// backup is refused, before it starts, when `dir`'s `pg_dump` is older than the server.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The history table, optionally schema-qualified (default `schema_version`).
    pub fn history_table(mut self, table: impl Into<String>) -> Self {
        self.opts.table = table.into();
        self
    }

    /// Where backups are written, on the host (required for [`MigrationRunner::backup`](deploy_core::MigrationRunner::backup)).
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

    /// How long a second runner waits for the migration lock before it gives up with a
    /// retryable `Conflict` (default 60 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.opts.lock_wait = wait;
        self
    }

    /// How often a waiting runner asks for the migration lock again (default 500 ms).
    pub fn lock_poll(mut self, poll: Duration) -> Self {
        self.opts.lock_poll = poll;
        self
    }

    /// `lock_timeout` for migration DDL (default 5 s): a migration waiting longer for a table
    /// lock rolls back, and is retried up to [`lock_retries`](Self::lock_retries) times.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.opts.lock_timeout = timeout;
        self
    }

    /// How often a migration that hit `lock_timeout` is retried (default 3).
    pub fn lock_retries(mut self, retries: u32) -> Self {
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

    /// Let `revert` run down migrations that lose data — a down file dropping a column or a
    /// table, deleting or rewriting rows, or undoing a migration that removed data — when no
    /// backup is given (default: such a revert needs the backup). It also lets a revert leave
    /// the definitions of repeatable migrations applied since the target version (their rows
    /// are removed, so the next migrate applies them again).
    pub fn allow_data_loss(mut self, allow: bool) -> Self {
        self.opts.allow_data_loss = allow;
        self
    }

    /// Keep the database a successful swap restore replaced, as `<db>_replaced_<stamp>`
    /// (default: drop it once the restored one is in place). A revert after a failed release
    /// always keeps it, as `<db>_failed_<stamp>`.
    pub fn keep_replaced_database(mut self, keep: bool) -> Self {
        self.opts.keep_replaced_database = keep;
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

    /// Every problem with the settings, each naming its setting; empty when they are usable.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = self.config.problems();
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
                "history_table {t:?}: must be [schema.]name in lower-case letters, digits and '_'"
            ));
        }
        if self.opts.keep_backups == 0 {
            problems.push("keep_backups: must be at least 1".into());
        }
        if self.opts.jobs == 0 {
            problems.push("restore_jobs: must be at least 1".into());
        }
        if self.opts.compression.is_some_and(|c| c > 9) {
            problems.push("compression: must be 0 to 9".into());
        }
        if self.opts.lock_poll.is_zero() {
            problems.push("lock_poll: must not be zero".into());
        }
        if self.query_timeout.is_zero() {
            problems.push("query_timeout: must not be zero".into());
        }
        if self.config.dbname.contains('$') {
            problems.push("database name: must not contain '$'".into());
        }
        problems
    }

    /// Check every setting — all problems are reported at once, in one `InvalidInput` error —
    /// and build the runner.
    pub fn build(self) -> Result<PgMigrationRunner> {
        let problems = self.problems();
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
            learned: Default::default(),
        };
        Ok(PgMigrationRunner {
            tools,
            opts: self.opts,
        })
    }
}

impl PgMigrationRunner {
    /// A builder for the database `config` with migrations in `dir`.
    pub fn builder(config: PgConfig, dir: impl Into<PathBuf>) -> PgMigrationRunnerBuilder {
        PgMigrationRunnerBuilder {
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
                allow_data_loss: false,
                keep_replaced_database: false,
                drop_invalid_indexes: false,
                restore_mode: RestoreMode::Swap,
            },
        }
    }
}
