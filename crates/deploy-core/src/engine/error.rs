//! Why the engine could not run, as opposed to a run that rolled back.

use std::path::PathBuf;

use crate::difference::Difference;
use crate::error::Error;
use crate::strategy::PlanError;

use super::lock::LockInfo;

/// Why the engine could not run (as opposed to a run that rolled back, which is a
/// [`Report`](super::Report)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The strategy could not plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The state of the environment could not be read before planning.
    #[error("read the state of environment {environment}: {source}")]
    Snapshot {
        /// The environment.
        environment: String,
        /// The failing call.
        #[source]
        source: Error,
    },
    /// The load balancer is not set up as the switch relies on (a sticky canary's lines are
    /// missing, say): nothing was planned or changed.
    #[error("check the switch of environment {environment} before planning: {source}")]
    SwitchCheck {
        /// The environment.
        environment: String,
        /// What the switch found.
        #[source]
        source: Error,
    },
    /// Another deploy holds the environment's lock.
    #[error("lock environment {environment} at {location}: held by {}", .holder.as_ref().map_or("an unknown holder".to_owned(), ToString::to_string))]
    Locked {
        /// The environment.
        environment: String,
        /// Where the lock is (the lock file, the shared store).
        location: String,
        /// Its holder, when readable.
        holder: Option<Box<LockInfo>>,
    },
    /// A dead deploy left its lock behind; resume or roll it back, or take the lock over.
    #[error(
        "lock environment {environment} at {location}: a stale lock of {} is left (that process \
         is gone, or its lease expired); resume or roll back its run, or take the lock over explicitly",
        .holder.as_ref().map_or("an unknown run".to_owned(), ToString::to_string)
    )]
    StaleLock {
        /// The environment.
        environment: String,
        /// Where the lock is (the lock file, the shared store).
        location: String,
        /// Its holder, when readable.
        holder: Option<Box<LockInfo>>,
    },
    /// The plan was made from a state the environment is no longer in (another deploy, or a
    /// person, changed it since): running it could act on the wrong slot. Plan again.
    #[error(
        "run plan for environment {environment}: the environment changed since the plan was made ({}); plan again",
        crate::difference::describe(.differences)
    )]
    StalePlan {
        /// The environment.
        environment: String,
        /// How the live state differs from the state the plan was made from.
        differences: Vec<Difference>,
    },
    /// A request that does not fit the state of the environment: a promotion with no paused
    /// run, an abort with no run in progress. Nothing was changed or left behind.
    #[error("{operation} in environment {environment}: {cause}")]
    Refused {
        /// What was asked.
        operation: &'static str,
        /// The environment.
        environment: String,
        /// Why it does not apply.
        cause: String,
    },
    /// The journal, the lock or another file of the state directory could not be written or
    /// read.
    #[error(
        "journal {}: {cause}{}",
        .path.display(),
        .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    Journal {
        /// The journal (or lock, or request) file.
        path: PathBuf,
        /// What failed.
        cause: String,
        /// The I/O error behind it, when there is one.
        #[source]
        source: Option<std::io::Error>,
    },

    /// The run's lease on the environment's lock was lost: another holder took it over (after
    /// it expired unrenewed). The run acted no further and undid nothing; the new holder
    /// resumes or rolls it back from the shared journal.
    #[error(
        "run {run_id} of environment {environment} lost its lock: {cause}; it acted no further \
         and undid nothing (the new holder resumes or rolls it back)"
    )]
    LeaseLost {
        /// The environment.
        environment: String,
        /// The run that lost it.
        run_id: String,
        /// Why (who took it over).
        cause: String,
    },
    /// A shared state store could not be reached, read or written.
    #[error("state store {location}: {cause}")]
    Store {
        /// The store (never with a secret).
        location: String,
        /// What failed.
        cause: String,
        /// The error behind it.
        #[source]
        source: Option<crate::error::BoxError>,
    },

    /// The engine was asked to do something that needs a state directory, a run, etc.
    #[error("{operation} for environment {environment}: {cause}")]
    Usage {
        /// What was asked.
        operation: &'static str,
        /// The environment.
        environment: String,
        /// Why it cannot be done.
        cause: String,
    },
}
