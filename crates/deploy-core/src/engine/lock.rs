//! The lock that keeps two deploys of one environment apart.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Who holds an environment's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The user that started the deploy.
    pub owner: String,
    /// Its process id.
    pub pid: u32,
    /// The machine.
    pub host: String,
    /// When it took the lock.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// The run.
    pub run_id: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} by {} (pid {} on {}, since {})",
            self.run_id,
            self.owner,
            self.pid,
            self.host,
            humantime::format_rfc3339_seconds(self.started_at)
        )
    }
}

/// The lock that keeps two deploys of one environment apart: a file holding [`LockInfo`] and an
/// OS file lock (`flock`) on it. The OS releases the file lock when the process dies, so a lock
/// file whose file lock is free belongs to a dead run: it is *stale*, and is only taken over when
/// the caller says so. Dropping the guard removes the file.
#[derive(Debug)]
pub(crate) struct EnvLock {
    path: PathBuf,
    file: Option<File>,
}

/// What to do with a stale lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takeover {
    Never,
    IfStale,
}

impl EnvLock {
    pub(crate) fn acquire(
        environment: &str,
        path: &Path,
        info: &LockInfo,
        takeover: Takeover,
    ) -> Result<Self, super::DeployError> {
        use std::fs::TryLockError;
        use std::os::unix::fs::MetadataExt;
        if let Some(dir) = path.parent() {
            crate::fs::private_dir(dir)
                .map_err(|e| lock_err(environment, path, "create directory", e))?;
        }
        let mut attempts = 0;
        let file = loop {
            attempts += 1;
            let file = crate::fs::private_file()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| lock_err(environment, path, "open", e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = read_holder(path);
                    return Err(super::DeployError::Locked {
                        environment: environment.to_owned(),
                        path: path.to_owned(),
                        holder,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(lock_err(environment, path, "lock", e)),
            }
            // The holder removes the file before releasing; if we locked a file that was removed
            // meanwhile, the lock is worthless: open the path again.
            let ours = file
                .metadata()
                .map_err(|e| lock_err(environment, path, "stat", e))?;
            match std::fs::metadata(path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => break file,
                _ if attempts < 5 => continue,
                Ok(_) | Err(_) => {
                    return Err(lock_err(
                        environment,
                        path,
                        "lock",
                        std::io::Error::other("the lock file keeps being replaced"),
                    ));
                }
            }
        };
        // We hold the OS lock. A non-empty file means a previous holder died without releasing.
        let previous = std::fs::read(path).unwrap_or_default();
        if !previous.is_empty() && takeover == Takeover::Never {
            let holder = serde_json::from_slice(&previous).ok();
            return Err(super::DeployError::StaleLock {
                environment: environment.to_owned(),
                path: path.to_owned(),
                holder,
            });
        }
        let mut file = file;
        let body = serde_json::to_vec_pretty(info).unwrap_or_default();
        file.set_len(0)
            .map_err(|e| lock_err(environment, path, "truncate", e))?;
        file.write_all(&body)
            .map_err(|e| lock_err(environment, path, "write", e))?;
        file.sync_all()
            .map_err(|e| lock_err(environment, path, "fsync", e))?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }
}

impl EnvLock {
    /// Let go of the OS lock but leave the file: the lock is stale, so the next deploy is told
    /// that a run needs recovering.
    pub(crate) fn leave(mut self) {
        drop(self.file.take());
    }
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The run did not end as it should: leave the holder in the file. Once the OS
            // lock is gone with the file handle, the lock is stale, and the next deploy is told
            // to resume or roll back this run instead of starting on an unknown state.
            return;
        }
        if let Some(file) = self.file.take() {
            // Remove while still holding the OS lock, so no one sees an empty-but-unlocked file
            // as someone else's.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// Whether nobody holds the OS lock of the lock file at `path` (so a holder recorded in it is
/// dead). Takes and drops the lock at once when it is free.
pub(crate) fn lock_is_free(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => f.try_lock_shared().is_ok(),
        Err(_) => true,
    }
}

pub(crate) fn read_holder(path: &Path) -> Option<Box<LockInfo>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn lock_err(environment: &str, path: &Path, what: &str, err: std::io::Error) -> super::DeployError {
    super::DeployError::Journal {
        path: path.to_owned(),
        cause: format!("{what} the lock of environment {environment}"),
        source: Some(err),
    }
}

/// This machine's name, for lock files and journals.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// The user running this process, for lock files.
pub(crate) fn user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown-user".to_owned())
}
