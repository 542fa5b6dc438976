//! Operations on the state directory: status, control requests, stale locks, recovery of a
//! run a dead process left behind.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::strategy::Step;

use super::control::{self, ControlRequest};
use super::journal::{Journal, JournalState};
use super::lock::{self, EnvLock, LockInfo, Takeover};
use super::report::Report;
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
                    cause: format!("read lock: {e}"),
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
    /// another — to promote (end its pause) or abort (roll back). The running engine picks the
    /// request up within a quarter of a second.
    pub fn request(&self, request: &ControlRequest) -> Result<(), DeployError> {
        let dir = self.require_state_dir("send a control request")?;
        control::write_request(dir, request)
    }

    /// Where the newest run of this environment stands (from its journal), and who holds the
    /// lock; `None` when no run was ever journaled here.
    pub fn status(&self) -> Result<Option<RunStatus>, DeployError> {
        let dir = self.require_state_dir("read status")?.to_owned();
        let runs = dir.join("runs");
        let mut newest: Option<(SystemTime, PathBuf, JournalState)> = None;
        let entries = match std::fs::read_dir(&runs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path: runs,
                    cause: format!("list: {e}"),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let st = JournalState::read(&path)?;
            if newest.as_ref().is_none_or(|(t, _, _)| st.started_at > *t) {
                newest = Some((st.started_at, path, st));
            }
        }
        let Some((_, path, st)) = newest else {
            return Ok(None);
        };
        let lock_path = dir.join("lock");
        let lock = lock::read_holder(&lock_path).map(|b| *b);
        let stale = lock.is_some() && lock::lock_is_free(&lock_path);
        Ok(Some(RunStatus::from_journal(path, &st, lock, stale)))
    }

    /// The journal of the newest run in the state directory that did not finish, if any.
    pub fn unfinished_run(&self) -> Result<Option<PathBuf>, DeployError> {
        let dir = self.require_state_dir("find unfinished run")?.join("runs");
        let mut newest: Option<(SystemTime, PathBuf)> = None;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::Journal {
                    path: dir,
                    cause: format!("list: {e}"),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let st = JournalState::read(&path)?;
            if st.outcome.is_none() && newest.as_ref().is_none_or(|(t, _)| st.started_at > *t) {
                newest = Some((st.started_at, path));
            }
        }
        Ok(newest.map(|(_, p)| p))
    }

    pub(super) fn require_state_dir(&self, operation: &'static str) -> Result<&Path, DeployError> {
        self.state_dir.as_deref().ok_or_else(|| DeployError::Usage {
            operation,
            environment: self.env.name.clone(),
            cause: "the engine has no state directory (with_state_dir)".to_owned(),
        })
    }

    /// Finish the run a dead process left behind in the state directory: resume it or roll it
    /// back. Takes over the dead run's lock. `Ok(None)` when there is nothing to recover.
    pub async fn recover(
        &self,
        mode: Recovery,
        cancel: &CancellationToken,
    ) -> Result<Option<Report>, DeployError> {
        let dir = self.require_state_dir("recover")?.to_owned();
        let Some(path) = self.unfinished_run()? else {
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
        let journal = Journal::reopen(&path)?;
        let mut run = Run::new(
            self,
            st.run_id.clone(),
            st.plan.clone(),
            Some(journal),
            st.started_at,
        );
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
        let forced = match (mode, &st.rollback_reason, &st.failed) {
            (Recovery::Rollback, _, _) => {
                Some("rollback requested after the deploying process died".to_owned())
            }
            (Recovery::Resume, Some(r), _) => {
                Some(format!("the run was already rolling back ({r})"))
            }
            (Recovery::Resume, None, Some((i, e))) => {
                Some(format!("step {} had failed: {e}", i + 1))
            }
            (Recovery::Resume, None, None) => None,
        };
        let report = run.execute(st.next_index, cancel, forced).await;
        drop(lock);
        report.map(Some)
    }
}
