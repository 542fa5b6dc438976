//! The run journal (JSON lines, fsynced before each step acts) and the environment lock.
//!
//! A deploy killed mid-way leaves a journal without a `finished` record. A new process reads it
//! ([`JournalState::read`]) and either resumes the run or undoes it, using the inverses that were
//! recorded before each step acted.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::BackupId;
use crate::strategy::{Plan, Step};

use super::files::sync_dir;
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
    /// The run ended (a failed run whose rollback is retried ends again).
    Finished {
        /// How.
        outcome: Outcome,
    },
    /// The run waits for the operator in step `index` (a pause, or an inconclusive analysis).
    PauseStarted {
        /// The step.
        index: usize,
        /// Why it waits.
        reason: String,
    },
    /// The wait of step `index` ended (promoted, timed out, aborted).
    PauseEnded {
        /// The step.
        index: usize,
    },
}

/// An open journal file that records are appended to.
///
/// A record that cannot be written whole (disk full, file-size limit, I/O error) is cut off
/// again, so the journal never holds a torn line in its middle, and the journal is *broken*:
/// every later append fails at once with the first error. The engine then stops acting and
/// rolls back from what it holds in memory.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    broken: Option<String>,
}

fn journal_err(path: &Path, what: &str, err: std::io::Error) -> super::DeployError {
    super::DeployError::Journal {
        path: path.to_owned(),
        cause: what.to_owned(),
        source: Some(err),
    }
}

fn journal_problem(path: &Path, what: String) -> super::DeployError {
    super::DeployError::Journal {
        path: path.to_owned(),
        cause: what,
        source: None,
    }
}

impl Journal {
    /// Create a new journal at `path` (which must not exist).
    pub(crate) fn create(path: &Path) -> Result<Self, super::DeployError> {
        if let Some(dir) = path.parent() {
            crate::fs::private_dir(dir).map_err(|e| journal_err(dir, "create directory", e))?;
        }
        let file = crate::fs::private_file()
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
            broken: None,
        })
    }

    /// Reopen an existing journal to append to it, cutting off a torn last line first (so the
    /// next record starts on a line of its own).
    pub(crate) fn reopen(path: &Path) -> Result<Self, super::DeployError> {
        let bytes = std::fs::read(path).map_err(|e| journal_err(path, "read", e))?;
        let file = crate::fs::private_file()
            .append(true)
            .open(path)
            .map_err(|e| journal_err(path, "open", e))?;
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            file.set_len(whole as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| journal_err(path, "cut off the torn last line", e))?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            broken: None,
        })
    }

    /// Append one record; fsync it when it must be durable before the engine acts (`started`,
    /// `step_started`, `rollback_started`, `finished`). A `step_finished` or `undo_finished` lost
    /// in a crash only makes recovery repeat an idempotent step, and the next fsync covers it.
    pub(crate) fn append(&mut self, record: &Record) -> Result<(), super::DeployError> {
        if let Some(first) = &self.broken {
            return Err(journal_problem(
                &self.path,
                format!("append: the journal is broken since an earlier write failed ({first})"),
            ));
        }
        let mut line = serde_json::to_vec(record)
            .map_err(|e| journal_problem(&self.path, format!("serialise record: {e}")))?;
        line.push(b'\n');
        let before = self.file.metadata().map(|m| m.len());
        let durable = !matches!(
            record,
            Record::StepFinished { .. } | Record::UndoFinished { .. } | Record::PauseEnded { .. }
        );
        let written = self.file.write_all(&line).and_then(|()| {
            if durable {
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
            return Err(journal_err(&self.path, "append", e));
        }
        Ok(())
    }

    /// The journal's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
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
    /// The step whose pause the run is waiting in, and why, when it is waiting for the
    /// operator.
    pub paused: Option<(usize, String)>,
}

impl JournalState {
    /// Read and replay the journal at `path`. A torn last line (the process died, or the disk
    /// filled, while writing it — cut anywhere, inside a UTF-8 sequence too, or just before its
    /// newline) is ignored; any other malformed line is an error.
    pub fn read(path: &Path) -> Result<Self, super::DeployError> {
        let bytes = std::fs::read(path).map_err(|e| journal_err(path, "read", e))?;
        let bad = |n: usize, cause: String| journal_problem(path, format!("line {n}: {cause}"));
        // A record counts once its line is whole, newline included: what follows the last
        // newline is a write that did not finish (and `reopen` cuts it off).
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<(usize, &[u8])> = bytes[..whole]
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.trim_ascii().is_empty())
            .collect();
        let mut records = Vec::new();
        let count = lines.len();
        for (i, (n, line)) in lines.iter().enumerate() {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(_) if i + 1 == count => break, // torn write at the end
                Err(e) => return Err(bad(n + 1, e.to_string())),
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
            paused: None,
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
                Record::RollbackStarted { reason } => {
                    // Also a retried rollback of a run that ended `failed`.
                    st.rollback_reason = Some(reason);
                    st.outcome = None;
                }
                Record::UndoFinished {
                    index,
                    position,
                    error: None,
                } => {
                    st.undone.insert((index, position));
                }
                Record::UndoFinished { .. } => {}
                Record::Finished { outcome } => st.outcome = Some(outcome),
                Record::PauseStarted { index, reason } => st.paused = Some((index, reason)),
                Record::PauseEnded { .. } => st.paused = None,
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

/// The journals in `runs`, oldest first. Run ids begin with the time the run started
/// (`20261121T234912123Z-…`), so the order of their names is the order the runs started, even
/// when a journal cannot be read.
pub(crate) fn journals(runs: &Path) -> Result<Vec<PathBuf>, super::DeployError> {
    let entries = match std::fs::read_dir(runs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(journal_err(runs, "list", e)),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
        .collect();
    out.sort();
    Ok(out)
}
