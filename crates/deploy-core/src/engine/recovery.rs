//! Operations on the state directory: status, control requests, stale locks, recovery of a
//! run a dead process left behind.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::difference::describe;
use crate::strategy::{Snapshot, Step};

use super::control::{self, AddressedRequest, ControlRequest};
use super::journal::{self, Journal, JournalState};
use super::lock::{self, EnvLock, LockInfo, Takeover};
use super::report::{Outcome, Report};
use super::run::Run;
use super::status::RunStatus;
use super::{DeployError, Engine, Recovery};

impl Engine {
    /// Take over a stale lock (its process is gone) without recovering its run, and release it.
    /// Returns who held it, or `None` when there was no lock file. A lock held by a live process
    /// is never broken: that is [`DeployError::Locked`].
    pub fn break_stale_lock(&self) -> Result<Option<LockInfo>, DeployError> {
        let path = self.require_state_dir("break stale lock")?.join("lock");
        let holder = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<LockInfo>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path,
                    cause: "read lock".to_owned(),
                    source: Some(e),
                });
            }
        };
        let me = self.lock_info("break-stale-lock");
        let lock = EnvLock::acquire(&self.env.name, &path, &me, Takeover::IfStale)?;
        drop(lock);
        tracing::warn!(target: "deploy", "broke the stale lock of environment {}: {:?}", self.env.name, holder);
        Ok(holder)
    }

    /// Ask the run in progress in this environment's state directory — in this process or
    /// another — to promote (end the pause it is in) or abort (roll back). The request names
    /// that run, and a promotion names its pause, so it can never act on another run or a later
    /// pause; the running engine picks it up within a quarter of a second. Returns the run it
    /// was addressed to.
    ///
    /// Refused ([`DeployError::Refused`], nothing written) when no live process holds the
    /// environment's lock, or, for a promotion, when that run is not paused.
    pub fn request(&self, request: &ControlRequest) -> Result<String, DeployError> {
        let operation = match request {
            ControlRequest::Promote => "promote",
            ControlRequest::Abort { .. } => "abort",
        };
        let dir = self.require_state_dir(operation)?;
        let refused = |cause: String| DeployError::Refused {
            operation,
            environment: self.env.name.clone(),
            cause,
        };
        let lock_path = dir.join("lock");
        let holder = match lock::read_holder(&lock_path) {
            Some(h) if !lock::lock_is_free(&lock_path) => h,
            Some(h) => {
                return Err(refused(format!(
                    "no run is in progress: run {} died without finishing (its lock is stale); \
                     resume it or roll it back",
                    h.run_id
                )));
            }
            None => {
                return Err(refused(format!(
                    "no run is in progress in {}",
                    dir.display()
                )));
            }
        };
        let journal = dir.join("runs").join(format!("{}.jsonl", holder.run_id));
        let pause = match request {
            ControlRequest::Abort { .. } => None,
            ControlRequest::Promote => {
                let st = JournalState::read(&journal)?;
                match st.paused {
                    Some((index, _)) => Some(index),
                    None => {
                        let at = st
                            .plan
                            .steps
                            .get(st.next_index)
                            .map_or("its end".to_owned(), |s| {
                                format!("step {} ({s})", st.next_index + 1)
                            });
                        return Err(refused(format!(
                            "run {} is not paused (it is at {at}); nothing to promote",
                            holder.run_id
                        )));
                    }
                }
            }
        };
        control::write_request(
            dir,
            &AddressedRequest {
                run_id: holder.run_id.clone(),
                pause,
                request: request.clone(),
            },
        )?;
        Ok(holder.run_id.clone())
    }

    /// The newest journal in the state directory that holds a run, with what it says; `None`
    /// when no run was ever journaled here. Only the newest run matters (only it may be
    /// unfinished), so an unreadable journal of an older run is never read; a journal with no
    /// complete record is a run that died before its first step and is passed over.
    fn newest_run(
        &self,
        operation: &'static str,
    ) -> Result<Option<(PathBuf, JournalState)>, DeployError> {
        let runs = self.require_state_dir(operation)?.join("runs");
        for path in journal::journals(&runs)?.into_iter().rev() {
            match JournalState::read(&path) {
                Ok(st) => return Ok(Some((path, st))),
                Err(e) => {
                    let started = std::fs::read(&path).is_ok_and(|b| b.contains(&b'\n'));
                    if started {
                        return Err(e);
                    }
                    tracing::warn!(target: "deploy", "passed over {}: it holds no complete record (the run died before its first step)", path.display());
                }
            }
        }
        Ok(None)
    }

    /// Where the newest run of this environment stands (from its journal), and who holds the
    /// lock; `None` when no run was ever journaled here.
    pub fn status(&self) -> Result<Option<RunStatus>, DeployError> {
        let dir = self.require_state_dir("read status")?.to_owned();
        let Some((path, st)) = self.newest_run("read status")? else {
            return Ok(None);
        };
        let lock_path = dir.join("lock");
        let lock = lock::read_holder(&lock_path).map(|b| *b);
        let stale = lock.is_some() && lock::lock_is_free(&lock_path);
        Ok(Some(RunStatus::from_journal(path, &st, lock, stale)))
    }

    /// The journal of the newest run in the state directory if it did not finish, if any.
    pub fn unfinished_run(&self) -> Result<Option<PathBuf>, DeployError> {
        Ok(self
            .newest_run("find unfinished run")?
            .filter(|(_, st)| st.outcome.is_none())
            .map(|(p, _)| p))
    }

    /// The journal of the newest run if [`Engine::recover`] has work to do on it: it did not
    /// finish, or it ended `failed` (its rollback can be tried again).
    pub fn recoverable_run(&self) -> Result<Option<PathBuf>, DeployError> {
        Ok(self
            .newest_run("find a run to recover")?
            .filter(|(_, st)| matches!(st.outcome, None | Some(Outcome::Failed)))
            .map(|(p, _)| p))
    }

    pub(super) fn require_state_dir(&self, operation: &'static str) -> Result<&Path, DeployError> {
        self.state_dir.as_deref().ok_or_else(|| DeployError::Usage {
            operation,
            environment: self.env.name.clone(),
            cause: "the engine has no state directory (with_state_dir)".to_owned(),
        })
    }

    /// Finish the run a dead process left behind in the state directory — or retry the
    /// rollback of a run that ended `failed` — by resuming it or rolling it back. Takes over
    /// the dead run's lock. `Ok(None)` when there is nothing to recover; a stale lock left by
    /// a run that did finish is then cleared.
    ///
    /// The live world decides, not the journal alone. `Resume` reads the live state first: if
    /// it is not where the journal says the run stands (a rollback whose records were lost, a
    /// person's change), the run resumes from the last point of its plan that the world
    /// matches, and rolls back when it matches none. `Rollback` checks each undo against the
    /// world and skips only what the world already shows undone. The outcome reported is
    /// what the world shows at the end.
    pub async fn recover(
        &self,
        mode: Recovery,
        cancel: &CancellationToken,
    ) -> Result<Option<Report>, DeployError> {
        let dir = self.require_state_dir("recover")?.to_owned();
        let Some(path) = self.recoverable_run()? else {
            let lock_path = dir.join("lock");
            if lock::read_holder(&lock_path).is_some() && lock::lock_is_free(&lock_path) {
                // A recovery or run killed after `finished` but before unlocking.
                if let Some(holder) = self.break_stale_lock()? {
                    tracing::warn!(target: "deploy", "cleared the stale lock of run {}, which had finished", holder.run_id);
                }
            }
            return Ok(None);
        };
        let st = JournalState::read(&path)?;
        if st.plan.environment != self.env.name {
            return Err(DeployError::Usage {
                operation: "recover",
                environment: self.env.name.clone(),
                cause: format!(
                    "journal {} is for environment {}",
                    path.display(),
                    st.plan.environment
                ),
            });
        }
        for s in &st.plan.steps {
            if let Some(t) = s.target()
                && self.env.target(t).is_err()
            {
                return Err(DeployError::Usage {
                    operation: "recover",
                    environment: self.env.name.clone(),
                    cause: format!("the run's plan names target {t}, which this environment lacks"),
                });
            }
        }
        let lock = EnvLock::acquire(
            &self.env.name,
            &dir.join("lock"),
            &self.lock_info(&st.run_id),
            Takeover::IfStale,
        )?;
        let journal = match Journal::reopen(&path) {
            Ok(j) => j,
            Err(e) => {
                lock.leave();
                return Err(e);
            }
        };
        let mut run = Run::new(
            self,
            st.run_id.clone(),
            st.plan.clone(),
            Some(journal),
            st.started_at,
        );
        run.recovering = true;
        run.inverses = st.inverses.clone();
        run.undone = st.undone.clone();
        run.backup = st.backup.clone();
        run.recorded = st.inverses.iter().map(|(i, _)| *i).collect();
        run.schema_kept = st
            .inverses
            .iter()
            .any(|(i, inv)| matches!(st.plan.steps.get(*i), Some(Step::Migrate)) && inv.is_empty());
        run.note(format!(
            "recovered from journal {} by pid {}",
            path.display(),
            std::process::id()
        ));
        let forced = match (mode, &st.outcome, &st.rollback_reason, &st.failed) {
            (_, Some(outcome), _, _) => Some(format!(
                "retrying the rollback of a run that ended {outcome} (an undo had failed)"
            )),
            (Recovery::Rollback, None, _, _) => {
                Some("rollback requested after the deploying process died".to_owned())
            }
            (Recovery::Resume, None, Some(r), _) => {
                Some(format!("the run was already rolling back ({r})"))
            }
            (Recovery::Resume, None, None, Some((i, e))) => {
                Some(format!("step {} had failed: {e}", i + 1))
            }
            (Recovery::Resume, None, None, None) => None,
        };
        let (from, forced) = match forced {
            Some(reason) => (st.next_index, Some(reason)),
            None => match self.snapshot().await {
                Ok(live) => reconcile(&mut run, &st, &live),
                Err(e) => {
                    lock.leave();
                    return Err(e);
                }
            },
        };
        let report = run.execute(from, cancel, forced).await;
        drop(lock);
        report.map(Some)
    }
}

/// Where a run to resume stands, from the journal and the live world together: the journal's
/// point when the world is there; otherwise the last point of the plan the world matches (from
/// the first of the steps that leave it unchanged, so health checks and analyses are done
/// again); a rollback when the world matches no point of the plan.
fn reconcile(run: &mut Run<'_>, st: &JournalState, live: &Snapshot) -> (usize, Option<String>) {
    let plan = &st.plan;
    // The journal's point, up to the end of the batch that had started: its steps may or may
    // not have acted (each, independently) when the process died.
    let journal_point = plan.expected_after(st.next_index);
    let in_flight_end = st
        .inverses
        .iter()
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0)
        .clamp(st.next_index, plan.steps.len());
    let contradiction =
        journal_point.differences_between(&plan.expected_after(in_flight_end), live);
    if contradiction.is_empty() {
        return (st.next_index, None);
    }
    let said = describe(&contradiction);
    let Some(mut k) = (0..st.next_index)
        .rev()
        .find(|k| plan.expected_after(*k).differences(live).is_empty())
    else {
        return (
            st.next_index,
            Some(format!(
                "the live state matches no point of the run's plan ({said}, where the journal \
                 says {} of {} steps are done)",
                st.completed.len(),
                plan.steps.len()
            )),
        );
    };
    let here = plan.expected_after(k);
    while k > 0 && plan.expected_after(k - 1).differences(&here).is_empty() {
        k -= 1;
    }
    run.note(format!(
        "the live state contradicts the journal ({said}); it matches the plan before step {}, \
         so the run resumes from there",
        k + 1
    ));
    (k, None)
}
