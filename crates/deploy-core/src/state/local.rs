//! The state directory on the deploying machine: the embedded default [`StateStore`].
//!
//! ```text
//! <dir>/lock                    who holds the lock (JSON), under an OS file lock (flock)
//! <dir>/lock.seq                the last fencing token given
//! <dir>/control.json            a control request for the run in progress
//! <dir>/runs/<run>.jsonl        each run's journal (JSON lines, fsynced before acting)
//! <dir>/runs/<run>.report.json  each finished run's report
//! <dir>/history.jsonl           one line per finished run
//! ```
//!
//! The OS releases a file lock when its process dies, so a lock file whose file lock is free
//! belongs to a dead run: it is stale. One directory holds one environment's state; it works
//! for every process of one machine, not across machines (use a shared store for that).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{HistoryEntry, Holder, JournalWriter, Lease, LockOptions, StateStore, Takeover};
use crate::engine::{AddressedRequest, DeployError, JournalState, LockInfo, Record, Report};

/// A state directory; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct LocalStateStore {
    dir: PathBuf,
}

impl LocalStateStore {
    /// The store in `dir` (created, private to its owner, on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }

    fn journal_path(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(format!("{run_id}.jsonl"))
    }

    fn request_path(&self) -> PathBuf {
        self.dir.join("control.json")
    }

    fn history_path(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
}

fn file_err(path: &Path, what: &str, err: std::io::Error) -> DeployError {
    DeployError::Journal {
        path: path.to_owned(),
        cause: what.to_owned(),
        source: Some(err),
    }
}

fn file_problem(path: &Path, what: String) -> DeployError {
    DeployError::Journal {
        path: path.to_owned(),
        cause: what,
        source: None,
    }
}

/// The lock file's content.
#[derive(Debug, Serialize, Deserialize)]
struct LockFile {
    #[serde(default)]
    token: u64,
    #[serde(flatten)]
    info: LockInfo,
}

fn read_lock_file(path: &Path) -> Option<LockFile> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether nobody holds the OS lock of the lock file at `path` (so a holder recorded in it is
/// dead). Takes and drops the lock at once when it is free.
fn lock_is_free(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => f.try_lock_shared().is_ok(),
        Err(_) => true,
    }
}

/// What one attempt at the lock found.
enum Attempt {
    Held(File),
    Busy,
}

fn try_lock(path: &Path) -> Result<Attempt, DeployError> {
    use std::fs::TryLockError;
    use std::os::unix::fs::MetadataExt;
    for _ in 0..5 {
        let file = crate::fs::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| file_err(path, "open the lock", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Attempt::Busy),
            Err(TryLockError::Error(e)) => return Err(file_err(path, "lock", e)),
        }
        // The holder removes the file before releasing; if we locked a file that was removed
        // meanwhile, the lock is worthless: open the path again.
        let ours = file
            .metadata()
            .map_err(|e| file_err(path, "stat the lock", e))?;
        match std::fs::metadata(path) {
            Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                return Ok(Attempt::Held(file));
            }
            _ => continue,
        }
    }
    Err(file_problem(
        path,
        "lock: the lock file keeps being replaced".to_owned(),
    ))
}

/// A lock held in a state directory. Dropping it without [`Lease::release`] or
/// [`Lease::abandon`] (a panic) leaves the holder in the file: once the file handle is gone the
/// lock is stale, and the next deploy is told to recover the run.
#[derive(Debug)]
pub(crate) struct LocalLease {
    path: PathBuf,
    file: Option<File>,
    token: u64,
}

#[async_trait]
impl Lease for LocalLease {
    fn token(&self) -> u64 {
        self.token
    }

    fn lost(&self) -> Option<String> {
        // The OS lock is ours until this process lets go or dies.
        None
    }

    async fn release(mut self: Box<Self>) {
        if let Some(file) = self.file.take() {
            // Remove while still holding the OS lock, so no one sees an empty-but-unlocked
            // file as someone else's.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }

    async fn abandon(mut self: Box<Self>) {
        drop(self.file.take());
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        // Neither released nor abandoned: the run did not end as it should. The holder stays
        // in the file, and the lock is stale once the handle closes below.
        drop(self.file.take());
    }
}

/// An open journal file that records are appended to.
///
/// A record that cannot be written whole (disk full, file-size limit, I/O error) is cut off
/// again, so the journal never holds a torn line in its middle, and the journal is *broken*:
/// every later append fails at once with the first error.
#[derive(Debug)]
pub(crate) struct LocalJournal {
    path: PathBuf,
    file: File,
    broken: Option<String>,
    /// The lock file and the token of the lease it was opened under: an append is refused once
    /// the lock file names another token (a takeover).
    fence: (PathBuf, u64),
    /// The environment and the run, for errors.
    names: (String, String),
}

impl LocalJournal {
    fn create(
        path: &Path,
        fence: (PathBuf, u64),
        names: (String, String),
    ) -> Result<Self, DeployError> {
        if let Some(dir) = path.parent() {
            crate::fs::private_dir(dir).map_err(|e| file_err(dir, "create directory", e))?;
        }
        let file = crate::fs::private_file()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| file_err(path, "create", e))?;
        if let Some(dir) = path.parent() {
            crate::fs::sync_dir(dir).map_err(|e| file_err(dir, "sync directory", e))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            broken: None,
            fence,
            names,
        })
    }

    /// Reopen an existing journal to append to it, cutting off a torn last line first (so the
    /// next record starts on a line of its own).
    fn reopen(
        path: &Path,
        fence: (PathBuf, u64),
        names: (String, String),
    ) -> Result<Self, DeployError> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, "read", e))?;
        let file = crate::fs::private_file()
            .append(true)
            .open(path)
            .map_err(|e| file_err(path, "open", e))?;
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            file.set_len(whole as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| file_err(path, "cut off the torn last line", e))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            broken: None,
            fence,
            names,
        })
    }
}

#[async_trait]
impl JournalWriter for LocalJournal {
    /// Append one record; fsync it when it must be durable before the engine acts (`started`,
    /// `step_started`, `rollback_started`, `finished`). A `step_finished` or `undo_finished`
    /// lost in a crash only makes recovery repeat an idempotent step, and the next fsync covers
    /// it.
    async fn append(&mut self, record: &Record) -> Result<(), DeployError> {
        if let Some(first) = &self.broken {
            return Err(file_problem(
                &self.path,
                format!("append: the journal is broken since an earlier write failed ({first})"),
            ));
        }
        let (lock, token) = &self.fence;
        if let Some(now) = read_lock_file(lock).filter(|l| l.token != *token) {
            return Err(DeployError::LeaseLost {
                environment: self.names.0.clone(),
                run_id: self.names.1.clone(),
                cause: format!("the lock was taken over by {}", now.info),
            });
        }
        let mut line = serde_json::to_vec(record)
            .map_err(|e| file_problem(&self.path, format!("serialise record: {e}")))?;
        line.push(b'\n');
        let before = self.file.metadata().map(|m| m.len());
        let written = self.file.write_all(&line).and_then(|()| {
            if record.must_be_durable() {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut the partial record off again; whatever happens, write nothing more.
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
            self.broken = Some(e.to_string());
            return Err(file_err(&self.path, "append", e));
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Append `line` (one JSON value) to `path` as one write, fsynced.
fn append_line(path: &Path, value: &impl Serialize) -> Result<(), DeployError> {
    if let Some(dir) = path.parent() {
        crate::fs::private_dir(dir).map_err(|e| file_err(dir, "create directory", e))?;
    }
    let mut line =
        serde_json::to_vec(value).map_err(|e| file_problem(path, format!("serialise: {e}")))?;
    line.push(b'\n');
    let mut file = crate::fs::private_file()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| file_err(path, "open", e))?;
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .map_err(|e| file_err(path, "append", e))
}

#[async_trait]
impl StateStore for LocalStateStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn lock(
        &self,
        environment: &str,
        holder: &LockInfo,
        options: LockOptions,
    ) -> Result<Box<dyn Lease>, DeployError> {
        let path = self.lock_path();
        crate::fs::private_dir(&self.dir)
            .map_err(|e| file_err(&self.dir, "create directory", e))?;
        let deadline = options.wait.map(|w| Instant::now() + w);
        let file = loop {
            match try_lock(&path)? {
                Attempt::Held(file) => break file,
                Attempt::Busy => {
                    if deadline.is_some_and(|d| Instant::now() < d) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    return Err(DeployError::Locked {
                        environment: environment.to_owned(),
                        location: path.display().to_string(),
                        holder: read_lock_file(&path).map(|l| Box::new(l.info)),
                    });
                }
            }
        };
        // We hold the OS lock. A non-empty file means a previous holder died without releasing.
        let previous = std::fs::read(&path).unwrap_or_default();
        if !previous.is_empty() && options.takeover == Takeover::Never {
            let holder = serde_json::from_slice::<LockFile>(&previous)
                .ok()
                .map(|l| Box::new(l.info));
            return Err(DeployError::StaleLock {
                environment: environment.to_owned(),
                location: path.display().to_string(),
                holder,
            });
        }
        let seq = self.dir.join("lock.seq");
        let token = std::fs::read_to_string(&seq)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        crate::fs::write_atomic(&seq, token.to_string().as_bytes(), Some(0o600))
            .map_err(|e| file_err(&seq, "write the lock's token", e))?;
        let body = serde_json::to_vec_pretty(&LockFile {
            token,
            info: holder.clone(),
        })
        .unwrap_or_default();
        let mut file = file;
        file.set_len(0)
            .and_then(|()| file.write_all(&body))
            .and_then(|()| file.sync_all())
            .map_err(|e| file_err(&path, "write the lock", e))?;
        Ok(Box::new(LocalLease {
            path,
            file: Some(file),
            token,
        }))
    }

    async fn holder(&self, _environment: &str) -> Result<Option<Holder>, DeployError> {
        let path = self.lock_path();
        Ok(read_lock_file(&path).map(|l| Holder::new(l.info, lock_is_free(&path), None)))
    }

    async fn create_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        Ok(Box::new(LocalJournal::create(
            &self.journal_path(run_id),
            (self.lock_path(), lease.token()),
            (environment.to_owned(), run_id.to_owned()),
        )?))
    }

    async fn reopen_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        Ok(Box::new(LocalJournal::reopen(
            &self.journal_path(run_id),
            (self.lock_path(), lease.token()),
            (environment.to_owned(), run_id.to_owned()),
        )?))
    }

    async fn runs(&self, _environment: &str) -> Result<Vec<String>, DeployError> {
        let dir = self.runs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(file_err(&dir, "list", e)),
        };
        // Run ids begin with the time the run started (`20261121T234912123Z-…`), so the order of
        // their names is the order the runs started.
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".jsonl"))
                    .map(str::to_owned)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn journal(
        &self,
        _environment: &str,
        run_id: &str,
    ) -> Result<Option<JournalState>, DeployError> {
        let path = self.journal_path(run_id);
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, "read", e))?;
        match JournalState::from_bytes(&bytes) {
            Ok(st) => Ok(Some(st)),
            // A journal without a complete record: the run died before its first.
            Err(_) if !bytes.contains(&b'\n') => Ok(None),
            Err(cause) => Err(file_problem(&path, cause)),
        }
    }

    fn journal_location(&self, _environment: &str, run_id: &str) -> String {
        self.journal_path(run_id).display().to_string()
    }

    fn report_location(&self, _environment: &str, run_id: &str) -> String {
        self.runs_dir()
            .join(format!("{run_id}.report.json"))
            .display()
            .to_string()
    }

    async fn put_request(
        &self,
        _environment: &str,
        request: &AddressedRequest,
    ) -> Result<(), DeployError> {
        let path = self.request_path();
        let body = serde_json::to_vec(request).unwrap_or_default();
        crate::fs::write_atomic(&path, body.as_slice(), Some(0o600))
            .map_err(|e| file_err(&path, "write control request", e))
    }

    async fn take_request(
        &self,
        _environment: &str,
    ) -> Result<Option<AddressedRequest>, DeployError> {
        let path = self.request_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_err(&path, "read control request", e)),
        };
        let _ = std::fs::remove_file(&path);
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| file_problem(&path, format!("malformed control request: {e}")))
    }

    async fn save_report(
        &self,
        _environment: &str,
        report: &Report,
    ) -> Result<String, DeployError> {
        let path = self
            .runs_dir()
            .join(format!("{}.report.json", report.run_id));
        crate::fs::private_dir(&self.runs_dir())
            .map_err(|e| file_err(&self.runs_dir(), "create directory", e))?;
        let body = serde_json::to_vec_pretty(report).unwrap_or_default();
        crate::fs::write_atomic(&path, body.as_slice(), Some(0o600))
            .map_err(|e| file_err(&path, "write report", e))?;
        Ok(path.display().to_string())
    }

    async fn report(
        &self,
        _environment: &str,
        run_id: &str,
    ) -> Result<Option<Report>, DeployError> {
        let path = self.runs_dir().join(format!("{run_id}.report.json"));
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| file_problem(&path, format!("malformed report: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err(&path, "read report", e)),
        }
    }

    async fn record_history(&self, entry: &HistoryEntry) -> Result<(), DeployError> {
        append_line(&self.history_path(), entry)
    }

    async fn history(&self, environment: &str) -> Result<Vec<HistoryEntry>, DeployError> {
        let path = self.history_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(file_err(&path, "read history", e)),
        };
        // A torn last line (a crash while appending) is passed over.
        Ok(bytes
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<HistoryEntry>(l).ok())
            .filter(|h| h.environment == environment)
            .collect())
    }
}
