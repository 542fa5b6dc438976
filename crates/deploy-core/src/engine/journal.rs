//! The run journal: its records and their replay. Where records are kept (a file of JSON lines,
//! a table) is the [`StateStore`](crate::state::StateStore)'s business.
//!
//! A deploy killed mid-way leaves a journal without a `finished` record. A new process reads it
//! ([`JournalState::read`], [`JournalState::replay`]) and either resumes the run or undoes it, using the inverses that were
//! recorded before each step acted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::{BackupId, TargetId, Verdict};
use crate::strategy::{Plan, Step};

use super::report::{Outcome, VerdictRecord};

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
        /// When it started (for `status`: how long an analysis or a pause has left).
        #[serde(
            default,
            with = "humantime_serde::option",
            skip_serializing_if = "Option::is_none"
        )]
        at: Option<SystemTime>,
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
    /// A rolling deploy with a failure budget gives up on `target`: its failed steps `steps`
    /// count as done, and the target is taken out of the traffic and rolled back alone (its
    /// undo steps are journaled as `undo_finished`). Written before it acts.
    TargetGivenUp {
        /// The target.
        target: TargetId,
        /// Why (its step's failure).
        reason: String,
        /// Its steps that failed, by index in the plan.
        steps: Vec<usize>,
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
    /// A gate measured (for `status`: the last verdict of each gate).
    Measured {
        /// The gate's name.
        gate: String,
        /// The analysis it belongs to.
        analysis: String,
        /// The verdict.
        verdict: Verdict,
    },
    /// A record of a kind this version does not know (written by a newer one): skipped when
    /// replaying, so that an older `deploy` can still read, resume and roll back the run.
    #[serde(other)]
    Unknown,
}

impl Record {
    /// Whether it must be durable before the engine acts on (`started`, `step_started`,
    /// `rollback_started`, `finished`, `pause_started`): a lost `step_finished`,
    /// `undo_finished` or `pause_ended` only makes recovery repeat an idempotent step.
    pub fn must_be_durable(&self) -> bool {
        !matches!(
            self,
            Record::StepFinished { .. }
                | Record::UndoFinished { .. }
                | Record::PauseEnded { .. }
                | Record::Measured { .. }
                | Record::Unknown
        )
    }
}

fn journal_err(path: &Path, what: &str, err: std::io::Error) -> super::DeployError {
    super::DeployError::Journal {
        path: path.to_owned(),
        cause: what.to_owned(),
        source: Some(err),
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
    /// When each step started, where the journal says.
    pub started: HashMap<usize, SystemTime>,
    /// The last verdict of each gate, in the order the gates first measured.
    pub last_verdicts: Vec<VerdictRecord>,
    /// The targets the run gave up on (a failure budget), and why, in order.
    pub given_up: Vec<(TargetId, String)>,
}

impl JournalState {
    /// Read and replay the journal at `path`. A torn last line (the process died, or the disk
    /// filled, while writing it — cut anywhere, inside a UTF-8 sequence too, or just before its
    /// newline) is ignored; any other malformed line is an error.
    pub fn read(path: &Path) -> Result<Self, super::DeployError> {
        let bytes = std::fs::read(path).map_err(|e| journal_err(path, "read", e))?;
        Self::from_bytes(&bytes).map_err(|cause| super::DeployError::Journal {
            path: path.to_owned(),
            cause,
            source: None,
        })
    }

    /// Replay a journal's JSON lines (see [`read`](Self::read)); an error says which line is
    /// malformed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        // A record counts once its line is whole, newline included: what follows the last
        // newline is a write that did not finish (and a reopen cuts it off).
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
                Err(e) => return Err(format!("line {}: {e}", n + 1)),
            }
        }
        Self::replay(records)
    }

    /// Replay `records`, in the order they were appended.
    pub fn replay(records: impl IntoIterator<Item = Record>) -> Result<Self, String> {
        let bad = |n: usize, cause: String| format!("line {n}: {cause}");
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
            started: HashMap::new(),
            last_verdicts: Vec::new(),
            given_up: Vec::new(),
        };
        for r in it {
            match r {
                Record::Started { .. } => return Err(bad(0, "a second `started` record".into())),
                Record::StepStarted { index, inverse, at } => {
                    if !st.inverses.iter().any(|(i, _)| *i == index) {
                        st.inverses.push((index, inverse));
                    }
                    if let Some(at) = at {
                        st.started.insert(index, at);
                    }
                }
                Record::Measured {
                    gate,
                    analysis,
                    verdict,
                } => {
                    let record = VerdictRecord {
                        gate,
                        analysis,
                        verdict,
                    };
                    match st.last_verdicts.iter_mut().find(|v| v.gate == record.gate) {
                        Some(v) => *v = record,
                        None => st.last_verdicts.push(record),
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
                Record::TargetGivenUp {
                    target,
                    reason,
                    steps,
                } => {
                    // Its failed steps are settled: the run goes on without it.
                    if st.failed.as_ref().is_some_and(|(i, _)| steps.contains(i)) {
                        st.failed = None;
                    }
                    st.completed.extend(steps);
                    if !st.given_up.iter().any(|(t, _)| *t == target) {
                        st.given_up.push((target, reason));
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
                Record::Unknown => {}
            }
        }
        // The steps skipped once targets were given up on count as done.
        let gone: Vec<TargetId> = st.given_up.iter().map(|(t, _)| t.clone()).collect();
        for (i, step) in st.plan.steps.iter().enumerate() {
            if !gone.is_empty() && super::budget::skipped_without(step, &gone) {
                st.completed.insert(i);
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
