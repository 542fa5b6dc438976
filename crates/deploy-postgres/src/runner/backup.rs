//! Backup and restore: `pg_dump -Fc` into a checked, private archive with retention, and
//! `pg_restore` into a fresh database that is verified and swapped in (or in place).

use std::path::{Path, PathBuf};

use deploy_core::{Command, Error, ErrorKind, FileKind, HostExt, Result};
use serde::{Deserialize, Serialize};

use super::PgMigrationRunner;
use crate::tools::{self, ident, literal};

/// How [`PgMigrationRunner::restore`] puts a backup back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Restore into a fresh database, verify it, then swap names; the replaced database is
    /// dropped, or kept (as `<db>_failed_<stamp>` after a failed release, or as asked) for
    /// inspection. Needs room for a second copy.
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

impl PgMigrationRunner {
    /// Take a `pg_dump -Fc` backup: created 0600 under a temporary name, checked with
    /// `pg_restore -l`, renamed into place; older backups beyond the retention are removed. A
    /// backup directory that does not exist yet is created 0700.
    pub async fn take_backup(&self) -> Result<PathBuf> {
        let dir = self.opts.backup_dir.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "back up",
                self.object(),
                "no backup directory is configured (the backup_dir setting)",
            )
        })?;
        self.tools.check_pg_dump("back up", &self.object()).await?;
        let host = &self.tools.host;
        self.ensure_backup_dir(&dir).await?;
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

    /// Create the backup directory readable by its owner only (0700; missing parents with the
    /// host's defaults), as `mkdir -p -m 700` on the host. A directory that exists is left as
    /// it is: it may be shared (`/var/backups`), and the backups in it are 0600 whatever it is.
    async fn ensure_backup_dir(&self, dir: &Path) -> Result<()> {
        let host = &self.tools.host;
        if matches!(
            host.file_kind(dir).await?,
            Some(FileKind::Dir | FileKind::Symlink)
        ) {
            return Ok(());
        }
        let mkdir = Command::new("mkdir")
            .args(["-p", "-m", "700", "--"])
            .arg(dir.as_os_str());
        host.run_checked(&mkdir)
            .await
            .map(drop)
            .map_err(|e| e.context("create the backup directory", dir.display().to_string()))
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
    /// `expected` when given (`Some(None)`: an empty schema). Swapping, the replaced database
    /// is dropped once the restored one is in place, unless
    /// [`keep_replaced_database`](super::PgMigrationRunnerBuilder::keep_replaced_database)
    /// asks to keep it (as `<db>_replaced_<stamp>`).
    pub async fn restore(
        &self,
        backup: &Path,
        mode: RestoreMode,
        expected: Option<Option<&str>>,
    ) -> Result<RestoreReport> {
        let keep = self.opts.keep_replaced_database.then_some("replaced");
        self.restore_as(backup, mode, expected, keep).await
    }

    /// [`restore`](Self::restore) for a revert after a failed release: the replaced database
    /// is kept as `<db>_failed_<stamp>` for inspection.
    pub(super) async fn restore_keeping_failed(
        &self,
        backup: &Path,
        mode: RestoreMode,
        expected: Option<Option<&str>>,
    ) -> Result<RestoreReport> {
        self.restore_as(backup, mode, expected, Some("failed"))
            .await
    }

    /// Restore; swapping, keep the replaced database as `<db>_<keep>_<stamp>` if `keep`.
    async fn restore_as(
        &self,
        backup: &Path,
        mode: RestoreMode,
        expected: Option<Option<&str>>,
        keep: Option<&str>,
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
        let kept = format!("{base}_{}_{stamp}", keep.unwrap_or("replaced"));
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
        if keep.is_none() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", ident(&kept));
            if let Err(e) = self
                .tools
                .exec(Some(&maint), &sql, "drop the replaced database")
                .await
            {
                // Nothing is lost: the restore is in place; the old copy stays, and says so.
                tracing::warn!(database = %kept, "the replaced database could not be dropped: {e}");
                return Ok(RestoreReport {
                    database: db,
                    kept_as: Some(kept),
                    version,
                });
            }
        }
        Ok(RestoreReport {
            database: db,
            kept_as: keep.map(|_| kept),
            version,
        })
    }
}
