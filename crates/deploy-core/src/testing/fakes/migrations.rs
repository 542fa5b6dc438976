//! A fake [`MigrationRunner`](crate::traits::MigrationRunner).

use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{BackupId, MigrationInfo, MigrationStatus, SchemaVersion};
use crate::traits::MigrationRunner;

use super::{Faults, finish, lock};

#[derive(Debug, Default)]
struct MigrationsInner {
    applied: Vec<MigrationInfo>,
    available: Vec<MigrationInfo>,
    backups: Vec<(BackupId, Vec<MigrationInfo>)>,
    fail_at: Option<SchemaVersion>,
}

/// A fake [`MigrationRunner`]: an applied list, an available list, backups as copies.
/// Methods for [`Faults`]: `status`, `backup`, `migrate`, `verify`, `revert`.
#[derive(Debug, Default)]
pub struct FakeMigrations {
    inner: Mutex<MigrationsInner>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeMigrations {
    /// A runner with `applied` already applied and `pending` waiting, as `(version, name,
    /// destructive reason)`.
    pub fn new(applied: &[(&str, &str)], pending: &[(&str, &str, Option<&str>)]) -> Self {
        let applied: Vec<MigrationInfo> = applied
            .iter()
            .map(|(v, n)| MigrationInfo::new(*v, *n, None))
            .collect();
        let mut available = applied.clone();
        available.extend(
            pending
                .iter()
                .map(|(v, n, d)| MigrationInfo::new(*v, *n, d.map(str::to_owned))),
        );
        Self {
            inner: Mutex::new(MigrationsInner {
                applied,
                available,
                ..MigrationsInner::default()
            }),
            faults: Faults::new(),
        }
    }

    /// Make the migration `version` fail: the ones before it are applied, it and later are not.
    pub fn fail_at(&self, version: &str) {
        lock(&self.inner).fail_at = Some(SchemaVersion(version.to_owned()));
    }

    /// The latest applied version.
    pub fn current(&self) -> Option<SchemaVersion> {
        lock(&self.inner).applied.last().map(|m| m.version.clone())
    }

    /// Migrations not applied yet.
    pub fn pending(&self) -> Vec<MigrationInfo> {
        self.status_now().pending
    }

    /// Backups taken.
    pub fn backups(&self) -> Vec<BackupId> {
        lock(&self.inner)
            .backups
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn status_now(&self) -> MigrationStatus {
        let g = lock(&self.inner);
        let pending = g
            .available
            .iter()
            .filter(|m| !g.applied.contains(m))
            .cloned()
            .collect();
        MigrationStatus::new(g.applied.last().map(|m| m.version.clone()), pending)
    }
}

#[async_trait]
impl MigrationRunner for FakeMigrations {
    async fn status(&self) -> Result<MigrationStatus> {
        let after = self.faults.enter("fake database", "status").await?;
        finish(after, Ok(self.status_now())).await
    }

    async fn backup(&self) -> Result<BackupId> {
        let after = self.faults.enter("fake database", "backup").await?;
        let id = {
            let mut g = lock(&self.inner);
            let id = BackupId(format!("backup-{}", g.backups.len() + 1));
            let copy = g.applied.clone();
            g.backups.push((id.clone(), copy));
            id
        };
        finish(after, Ok(id)).await
    }

    async fn migrate(&self) -> Result<Option<SchemaVersion>> {
        let after = self.faults.enter("fake database", "migrate").await?;
        {
            let mut g = lock(&self.inner);
            let pending: Vec<MigrationInfo> = g
                .available
                .iter()
                .filter(|m| !g.applied.contains(m))
                .cloned()
                .collect();
            for m in pending {
                if g.fail_at.as_ref() == Some(&m.version) {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        format!("apply migration {} {}", m.version, m.name),
                        "on fake database",
                        "ERROR: scripted failure (nothing of this migration was applied)",
                    ));
                }
                g.applied.push(m);
            }
        }
        finish(after, Ok(self.current())).await
    }

    async fn verify(&self, expected: Option<&SchemaVersion>) -> Result<()> {
        let after = self.faults.enter("fake database", "verify").await?;
        let cur = self.current();
        if cur.as_ref() != expected {
            return Err(Error::new(
                ErrorKind::Rejected,
                "verify schema of",
                "fake database",
                format!("at {cur:?}, expected {expected:?}"),
            ));
        }
        finish(after, Ok(())).await
    }

    async fn revert(&self, to: Option<&SchemaVersion>, backup: Option<&BackupId>) -> Result<()> {
        let after = self.faults.enter("fake database", "revert").await?;
        {
            let mut g = lock(&self.inner);
            let restored = backup.and_then(|b| {
                g.backups
                    .iter()
                    .find(|(id, _)| id == b)
                    .map(|(_, a)| a.clone())
            });
            match restored {
                Some(applied) => g.applied = applied,
                None => {
                    let keep = match to {
                        None => 0,
                        Some(v) => g
                            .applied
                            .iter()
                            .position(|m| &m.version == v)
                            .map_or(g.applied.len(), |i| i + 1),
                    };
                    g.applied.truncate(keep);
                }
            }
        }
        finish(after, Ok(())).await
    }
}
