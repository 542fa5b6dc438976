//! The lock that keeps two deploys of one environment apart.

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
    /// The CI job that runs the deploy, when the environment names one (`CI_JOB_URL` on
    /// GitLab, the run's URL on GitHub Actions, `BUILD_URL` on Jenkins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job: Option<String>,
}

impl LockInfo {
    /// This process, for run `run_id`: the user, the machine, the pid, now, and the CI job.
    pub fn this_process(run_id: &str) -> Self {
        Self {
            owner: user_name(),
            pid: std::process::id(),
            host: host_name(),
            started_at: SystemTime::now(),
            run_id: run_id.to_owned(),
            ci_job: ci_job(),
        }
    }
}

/// The CI job this process runs in, from the variables CI systems set.
pub(crate) fn ci_job() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("CI_JOB_URL").or_else(|| var("BUILD_URL")).or_else(|| {
        Some(format!(
            "{}/{}/actions/runs/{}",
            var("GITHUB_SERVER_URL")?,
            var("GITHUB_REPOSITORY")?,
            var("GITHUB_RUN_ID")?
        ))
    })
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
        )?;
        match &self.ci_job {
            Some(job) => write!(f, ", CI job {job}"),
            None => Ok(()),
        }
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

/// The user running this process, for lock files: `$USER`, `$LOGNAME`, else the name
/// `/etc/passwd` gives this process's uid, else `uid <n>`.
pub(crate) fn user_name() -> String {
    if let Ok(u) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"))
        && !u.is_empty()
    {
        return u;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        });
    let Some(uid) = uid else {
        return "unknown-user".to_owned();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}
