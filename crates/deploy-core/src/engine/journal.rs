//! The run journal (JSON lines, fsynced before each step acts) and the environment lock.
//!
//! A deploy killed mid-way leaves a journal without a `finished` record. A new process reads it
//! ([`JournalState::read`]) and either resumes the run or undoes it, using the inverses that were
//! recorded before each step acted.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::BackupId;
use crate::strategy::{Plan, Step};

use super::report::Outcome;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// The run started with this plan.
    Started {
        /// The run.
        run_id: String,
        /// The plan.
        plan: Box<Plan>,
        /// When.
        #[serde(with = "humantime_serde")]
        at: SystemTime,
        /// The process that ran it.
        pid: u32,
        /// The machine it ran on.
        host: String,
    },
    /// A step is about to act; `inverse` undoes it.
    StepStarted {
        /// Index in the plan.
        index: usize,
        /// The steps that undo it, in order.
        inverse: Vec<Step>,
    },
    /// A step finished.
    StepFinished {
        /// Index in the plan.
        index: usize,
        /// `None` on success, the reason otherwise.
        error: Option<String>,
        /// A backup taken by this step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<BackupId>,
    },
    /// The run is being undone.
    RollbackStarted {
        /// Why.
        reason: String,
    },
    /// One undo step finished.
    UndoFinished {
        /// The forward step it undoes.
        index: usize,
        /// Its position in that step's inverse.
        position: usize,
        /// `None` on success, the reason otherwise.
        error: Option<String>,
    },
    /// The run ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

/// An open journal file that records are appended to.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
}

fn journal_err(path: &Path, what: &str, err: std::io::Error) -> super::DeployError {
    super::DeployError::Journal {
        path: path.to_owned(),
        cause: format!("{what}: {err}"),
    }
}

impl Journal {
    /// Create a new journal at `path` (which must not exist).
    pub(crate) fn create(path: &Path) -> Result<Self, super::DeployError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| journal_err(dir, "create directory", e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| journal_err(path, "create", e))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(|e| journal_err(dir, "sync directory", e))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Reopen an existing journal to append to it.
    pub(crate) fn reopen(path: &Path) -> Result<Self, super::DeployError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| journal_err(path, "open", e))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Append one record; fsync it when it must be durable before the engine acts (`started`,
    /// `step_started`, `rollback_started`, `finished`). A `step_finished` or `undo_finished` lost
    /// in a crash only makes recovery repeat an idempotent step, and the next fsync covers it.
    pub(crate) fn append(&mut self, record: &Record) -> Result<(), super::DeployError> {
        let mut line = serde_json::to_vec(record).map_err(|e| super::DeployError::Journal {
            path: self.path.clone(),
            cause: format!("serialise record: {e}"),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| journal_err(&self.path, "append", e))?;
        let durable = !matches!(
            record,
            Record::StepFinished { .. } | Record::UndoFinished { .. }
        );
        if durable {
            self.file
                .sync_data()
                .map_err(|e| journal_err(&self.path, "fsync", e))?;
        }
        Ok(())
    }

    /// The journal's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a journal says about its run, replayed record by record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JournalState {
    /// The run.
    pub run_id: String,
    /// Its plan.
    pub plan: Plan,
    /// When it started.
    pub started_at: SystemTime,
    /// The inverses recorded, by forward step index, in the order the steps started.
    pub inverses: Vec<(usize, Vec<Step>)>,
    /// Steps that finished successfully.
    pub completed: HashSet<usize>,
    /// The first step that did not finish successfully (`plan.steps.len()` when all did).
    pub next_index: usize,
    /// A step that finished with an error, and why.
    pub failed: Option<(usize, String)>,
    /// Undo steps that finished successfully: (forward index, position).
    pub undone: HashSet<(usize, usize)>,
    /// Why a rollback started, if one did.
    pub rollback_reason: Option<String>,
    /// The last backup taken.
    pub backup: Option<BackupId>,
    /// How the run ended, if it did.
    pub outcome: Option<Outcome>,
}

impl JournalState {
    /// Read and replay the journal at `path`. A torn last line (the process died while writing
    /// it) is ignored; any other malformed line is an error.
    pub fn read(path: &Path) -> Result<Self, super::DeployError> {
        let file = File::open(path).map_err(|e| journal_err(path, "open", e))?;
        let mut lines: Vec<String> = Vec::new();
        for line in BufReader::new(file).lines() {
            lines.push(line.map_err(|e| journal_err(path, "read", e))?);
        }
        let bad = |n: usize, cause: String| super::DeployError::Journal {
            path: path.to_owned(),
            cause: format!("line {n}: {cause}"),
        };
        let mut records = Vec::new();
        let count = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(r) => records.push(r),
                Err(_) if i + 1 == count => break, // torn write at the end
                Err(e) => return Err(bad(i + 1, e.to_string())),
            }
        }
        let mut it = records.into_iter();
        let Some(Record::Started {
            run_id, plan, at, ..
        }) = it.next()
        else {
            return Err(bad(
                1,
                "the journal does not begin with a `started` record".into(),
            ));
        };
        let mut st = JournalState {
            run_id,
            plan: *plan,
            started_at: at,
            inverses: Vec::new(),
            completed: HashSet::new(),
            next_index: 0,
            failed: None,
            undone: HashSet::new(),
            rollback_reason: None,
            backup: None,
            outcome: None,
        };
        for r in it {
            match r {
                Record::Started { .. } => return Err(bad(0, "a second `started` record".into())),
                Record::StepStarted { index, inverse } => {
                    if !st.inverses.iter().any(|(i, _)| *i == index) {
                        st.inverses.push((index, inverse));
                    }
                }
                Record::StepFinished {
                    index,
                    error,
                    backup,
                } => {
                    if backup.is_some() {
                        st.backup = backup;
                    }
                    match error {
                        None => {
                            st.completed.insert(index);
                        }
                        Some(e) => st.failed = Some((index, e)),
                    }
                }
                Record::RollbackStarted { reason } => st.rollback_reason = Some(reason),
                Record::UndoFinished {
                    index,
                    position,
                    error: None,
                } => {
                    st.undone.insert((index, position));
                }
                Record::UndoFinished { .. } => {}
                Record::Finished { outcome } => st.outcome = Some(outcome),
            }
        }
        st.next_index = (0..st.plan.steps.len())
            .find(|i| !st.completed.contains(i))
            .unwrap_or(st.plan.steps.len());
        Ok(st)
    }

    /// Whether the run can be resumed (it neither failed nor started rolling back nor ended).
    pub fn resumable(&self) -> bool {
        self.outcome.is_none() && self.failed.is_none() && self.rollback_reason.is_none()
    }
}

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
            std::fs::create_dir_all(dir)
                .map_err(|e| lock_err(environment, path, "create directory", e))?;
        }
        let mut attempts = 0;
        let file = loop {
            attempts += 1;
            let file = OpenOptions::new()
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

impl Drop for EnvLock {
    fn drop(&mut self) {
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
        cause: format!("{what} the lock of environment {environment}: {err}"),
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
