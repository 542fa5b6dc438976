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
