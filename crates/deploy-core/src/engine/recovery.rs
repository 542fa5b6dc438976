//! Operations on the state store: status, control requests, stale locks, history, recovery of
//! a run a dead process left behind.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::difference::describe;
use crate::strategy::{Snapshot, Step};

use super::budget::without_targets;
use super::control::{AddressedRequest, ControlRequest};
use super::journal::JournalState;
use super::lock::LockInfo;
use super::report::{Outcome, Report};
use super::run::Run;
use super::status::RunStatus;
use super::{DeployError, Engine, Recovery};
use crate::state::{HistoryEntry, LockOptions, StateStore, Takeover};

impl Engine {
    /// Take over a stale lock (its process is gone, or its lease expired) without recovering
    /// its run, and release it. Returns who held it, or `None` when nobody did. A lock held by
    /// a live process is never broken: that is [`DeployError::Locked`].
    pub async fn break_stale_lock(&self) -> Result<Option<LockInfo>, DeployError> {
        let store = self.require_store("break stale lock")?;
        let Some(holder) = store.holder(&self.env.name).await? else {
            return Ok(None);
        };
        let me = LockInfo::this_process("break-stale-lock");
        let lease = store
            .lock(
                &self.env.name,
                &me,
                LockOptions {
                    wait: None,
                    takeover: Takeover::IfStale,
                },
            )
            .await?;
        lease.release().await;
        tracing::warn!(target: "deploy", "broke the stale lock of environment {}: {}", self.env.name, holder.info);
        Ok(Some(holder.info))
    }

    /// Ask the run in progress in this environment — in this process or another, on this
    /// machine or another that shares the state store — to promote (end the pause it is in) or
    /// abort (roll back). The request names that run, and a promotion names its pause, so it
    /// can never act on another run or a later pause; the running engine picks it up within a
    /// quarter of a second. Returns the run it was addressed to.
    ///
    /// Refused ([`DeployError::Refused`], nothing written) when no live process holds the
    /// environment's lock, or, for a promotion, when that run is not paused.
    pub async fn request(&self, request: &ControlRequest) -> Result<String, DeployError> {
        let operation = match request {
            ControlRequest::Promote => "promote",
            ControlRequest::Abort { .. } => "abort",
        };
        let store = self.require_store(operation)?;
        let refused = |cause: String| DeployError::Refused {
            operation,
            environment: self.env.name.clone(),
            cause,
        };
        let holder = match store.holder(&self.env.name).await? {
            Some(h) if !h.stale => h.info,
            Some(h) => {
                return Err(refused(format!(
                    "no run is in progress: run {} died without finishing (its lock is stale); \
                     resume it or roll it back",
                    h.info.run_id
                )));
            }
            None => {
                return Err(refused(format!(
                    "no run is in progress in {}",
                    store.location()
                )));
            }
        };
        let pause = match request {
            ControlRequest::Abort { .. } => None,
            ControlRequest::Promote => {
                let st = store
                    .journal(&self.env.name, &holder.run_id)
                    .await?
                    .ok_or_else(|| {
                        refused(format!(
                            "run {} has not started its first step; nothing to promote",
                            holder.run_id
                        ))
                    })?;
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
        store
            .put_request(
                &self.env.name,
                &AddressedRequest {
                    run_id: holder.run_id.clone(),
                    pause,
                    request: request.clone(),
                },
            )
            .await?;
        Ok(holder.run_id.clone())
    }

    /// The newest run journaled in the store, with what its journal says; `None` when no run
    /// was ever journaled. Only the newest run matters (only it may be unfinished), so an
    /// unreadable journal of an older run is never read; a journal with no complete record is
    /// a run that died before its first step and is passed over.
    async fn newest_run(
        &self,
        operation: &'static str,
    ) -> Result<Option<(String, JournalState)>, DeployError> {
        let store = self.require_store(operation)?;
        for run_id in store.runs(&self.env.name).await?.into_iter().rev() {
            match store.journal(&self.env.name, &run_id).await? {
                Some(st) => return Ok(Some((run_id, st))),
                None => {
                    tracing::warn!(target: "deploy", "passed over run {run_id}: its journal holds no complete record (the run died before its first step)");
                }
            }
        }
        Ok(None)
    }

    /// Where the newest run of this environment stands (from its journal), and who holds the
    /// lock; `None` when no run was ever journaled.
    pub async fn status(&self) -> Result<Option<RunStatus>, DeployError> {
        let store = self.require_store("read status")?;
        let Some((run_id, st)) = self.newest_run("read status").await? else {
            return Ok(None);
        };
        let holder = store.holder(&self.env.name).await?;
        let stale = holder.as_ref().is_some_and(|h| h.stale);
        Ok(Some(RunStatus::from_journal(
            store.journal_location(&self.env.name, &run_id),
            &st,
            holder.map(|h| h.info),
            stale,
        )))
    }

    /// The newest run if it did not finish, if any.
    pub async fn unfinished_run(&self) -> Result<Option<String>, DeployError> {
        Ok(self
            .newest_run("find unfinished run")
            .await?
            .filter(|(_, st)| st.outcome.is_none())
            .map(|(id, _)| id))
    }

    /// The newest run if [`Engine::recover`] has work to do on it: it did not finish, or it
    /// ended `failed` (its rollback can be tried again).
    pub async fn recoverable_run(&self) -> Result<Option<String>, DeployError> {
        Ok(self
            .newest_run("find a run to recover")
            .await?
            .filter(|(_, st)| matches!(st.outcome, None | Some(Outcome::Failed)))
            .map(|(id, _)| id))
    }

    /// The history of this environment's runs, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, DeployError> {
        self.require_store("read history")?
            .history(&self.env.name)
            .await
    }

    pub(super) fn require_store(
        &self,
        operation: &'static str,
    ) -> Result<&Arc<dyn StateStore>, DeployError> {
        self.store.as_ref().ok_or_else(|| DeployError::Usage {
            operation,
            environment: self.env.name.clone(),
            cause: "the engine has no state store (with_state_dir or with_state_store)".to_owned(),
        })
    }

    /// Finish the run a dead process left behind — or retry the rollback of a run that ended
    /// `failed` — by resuming it or rolling it back. Takes over the dead run's lock (a stale
    /// lock: its process is gone, or its lease expired). `Ok(None)` when there is nothing to
    /// recover; a stale lock left by a run that did finish is then cleared.
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
        let store = self.require_store("recover")?.clone();
        let Some(run_id) = self.recoverable_run().await? else {
            if store.holder(&self.env.name).await?.is_some_and(|h| h.stale) {
                // A recovery or run killed after `finished` but before unlocking.
                if let Some(holder) = self.break_stale_lock().await? {
                    tracing::warn!(target: "deploy", "cleared the stale lock of run {}, which had finished", holder.run_id);
                }
            }
            return Ok(None);
        };
        let location = store.journal_location(&self.env.name, &run_id);
        let st = store
            .journal(&self.env.name, &run_id)
            .await?
            .expect("newest_run returns runs with a journal");
        if st.plan.environment != self.env.name {
            return Err(DeployError::Usage {
                operation: "recover",
                environment: self.env.name.clone(),
                cause: format!(
                    "journal {location} is for environment {}",
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
        let lease = store
            .lock(
                &self.env.name,
                &LockInfo::this_process(&st.run_id),
                LockOptions {
                    wait: self.lock_wait,
                    takeover: Takeover::IfStale,
                },
            )
            .await?;
        let journal = match store
            .reopen_journal(lease.as_ref(), &self.env.name, &run_id)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                lease.abandon().await;
                return Err(e);
            }
        };
        let mut run = Run::new(
            self,
            st.run_id.clone(),
            st.plan.clone(),
            Some(journal),
            Some(lease),
            st.started_at,
        );
        run.recovering = true;
        run.inverses = st.inverses.clone();
        run.undone = st.undone.clone();
        run.backup = st.backup.clone();
        run.recorded = st.inverses.iter().map(|(i, _)| *i).collect();
        run.given_up = st.given_up.clone();
        run.schema_kept = st
            .inverses
            .iter()
            .any(|(i, inv)| matches!(st.plan.steps.get(*i), Some(Step::Migrate)) && inv.is_empty());
        run.note(format!(
            "recovered from journal {location} by pid {} on {}",
            std::process::id(),
            super::lock::host_name()
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
                    if let Some(l) = run.lease.take() {
                        l.abandon().await;
                    }
                    return Err(e);
                }
            },
        };
        run.execute(from, cancel, forced).await.map(Some)
    }
}

/// Where a run to resume stands, from the journal and the live world together: the journal's
/// point when the world is there; otherwise the last point of the plan the world matches (from
/// the first of the steps that leave it unchanged, so health checks and analyses are done
/// again); a rollback when the world matches no point of the plan.
fn reconcile(run: &mut Run<'_>, st: &JournalState, live: &Snapshot) -> (usize, Option<String>) {
    let plan = &st.plan;
    // The plan's states and the live one without the targets the run gave up on: one may still
    // be on its way out (the process died while taking it out), and resuming takes it out
    // again whatever it is.
    let gone: Vec<_> = run.given_up.iter().map(|(t, _)| t.clone()).collect();
    let at = |k: usize| without_targets(plan.expected_after(k), &gone);
    let live = &without_targets(live.clone(), &gone);
    // The journal's point, up to the end of the batch that had started: its steps may or may
    // not have acted (each, independently) when the process died.
    let journal_point = at(st.next_index);
    let in_flight_end = st
        .inverses
        .iter()
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0)
        .clamp(st.next_index, plan.steps.len());
    let contradiction = journal_point.differences_between(&at(in_flight_end), live);
    if contradiction.is_empty() {
        return (st.next_index, None);
    }
    let said = describe(&contradiction);
    let Some(mut k) = (0..st.next_index)
        .rev()
        .find(|k| at(*k).differences(live).is_empty())
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
    let here = at(k);
    while k > 0 && at(k - 1).differences(&here).is_empty() {
        k -= 1;
    }
    run.note(format!(
        "the live state contradicts the journal ({said}); it matches the plan before step {}, \
         so the run resumes from there",
        k + 1
    ));
    (k, None)
}
