//! [`PgMigrationRunner`], in rooms: [`builder`] (settings and their checks), [`status`] (the
//! folder read against the history table), [`apply`] (one file in its transaction mode, with
//! its history row), [`migrate`] (migrate, repair, baseline, verify), [`revert`] (by down
//! files or the backup) and [`backup`] (pg_dump, pg_restore, restore-and-swap). This module
//! holds the runner itself, what every room shares, and the [`MigrationRunner`] contract.

mod apply;
mod backup;
mod builder;
mod migrate;
mod revert;
mod status;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    BackupId, MigrationInfo, MigrationRunner, MigrationStatus, Result, SchemaVersion,
};

pub use backup::{RestoreMode, RestoreReport};
pub use builder::PgMigrationRunnerBuilder;
pub use migrate::RepairReport;
pub use status::{
    AppliedMigration, BASELINE_NAME, Drift, PendingMigration, RepeatableMigration, RepeatableState,
    SchemaReport,
};

use crate::client_tools::ClientTools;
use crate::connection::PgConfig;
use crate::tools::{self, LockSession, Tools, ident};

/// The runner's settings, as the builder checked them.
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
    allow_data_loss: bool,
    drop_invalid_indexes: bool,
    restore_mode: RestoreMode,
    keep_replaced_database: bool,
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

impl PgMigrationRunner {
    /// The connection settings.
    pub fn config(&self) -> &PgConfig {
        &self.tools.config
    }

    /// The `psql`, `pg_dump` and `pg_restore` this runner runs, chosen at its first use of a
    /// tool (or now): from the configured `bin_dir` as given; else, on the host, from
    /// `pg_config --bindir`, `/usr/lib/postgresql/*/bin` and the directory of the `psql` on
    /// `PATH` (links followed), the directory of the server's major version, else of the
    /// oldest newer one — never Debian's `pg_wrapper` (`/usr/bin/psql` there), a Perl script
    /// that costs 25–140 ms a start. Choosing asks the server its version once.
    ///
    /// A `NotFound` error, naming the server's version, the directories found with theirs and
    /// the package to install, when none is recent enough (`pg_dump` refuses a newer server).
    pub async fn tools(&self) -> Result<ClientTools> {
        self.tools
            .client_tools(&self.tools.config.env(None))
            .await
            .cloned()
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
}

#[async_trait]
impl MigrationRunner for PgMigrationRunner {
    async fn status(&self) -> Result<MigrationStatus> {
        let r = self.report().await?;
        let repeatables: Vec<MigrationInfo> = r
            .pending_repeatables()
            .map(|p| {
                MigrationInfo::new(
                    format!("{}{}", crate::migrations::REPEATABLE_PREFIX, p.name),
                    p.name.clone(),
                    p.compatibility.reason().map(str::to_owned),
                )
            })
            .collect();
        Ok(MigrationStatus::new(
            r.current.map(SchemaVersion),
            r.pending
                .into_iter()
                .map(|p| {
                    MigrationInfo::new(
                        p.version,
                        p.name,
                        p.compatibility.reason().map(str::to_owned),
                    )
                })
                .chain(repeatables)
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
                // The database the failed release left is kept for inspection.
                self.restore_keeping_failed(
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
