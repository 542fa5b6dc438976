//! [`Fleet`]: one operation on many hosts, with bounded concurrency, per-host time limits and a
//! result per host; [`rolling_deploy`]: batches of targets activated concurrently.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::{DynTarget, Error, ErrorKind, Host, Release, Result, Version};
use futures::StreamExt;

/// What one host (or target) gave.
#[derive(Debug)]
#[non_exhaustive]
pub struct HostResult<T> {
    /// The host's name ([`Host::name`]) or the target's id.
    pub host: String,
    /// The operation's value, or its error as the operation returned it. The errors of
    /// [`SshHost`](crate::SshHost) name the host and those of `ReleaseDirTarget` the target; a
    /// per-host time limit's error names the host.
    pub result: Result<T>,
    /// How long it took on this host.
    pub elapsed: Duration,
}

/// The results of one fleet operation, in the order of the hosts.
#[derive(Debug)]
#[non_exhaustive]
pub struct FleetReport<T> {
    /// One result per host, in the fleet's order.
    pub results: Vec<HostResult<T>>,
    /// Wall time of the whole operation.
    pub elapsed: Duration,
}

impl<T> FleetReport<T> {
    /// Whether every host succeeded.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|r| r.result.is_ok())
    }

    /// The hosts that failed, with their errors.
    pub fn failures(&self) -> Vec<(&str, &Error)> {
        self.results
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| (r.host.as_str(), e)))
            .collect()
    }

    /// Every value, or one error with the message of every failure, in the fleet's order (the
    /// errors of [`SshHost`](crate::SshHost) name their host). Retryable only if every failure
    /// is.
    pub fn into_result(self) -> Result<Vec<T>> {
        let failed = self.failures().len();
        if failed == 0 {
            return Ok(self
                .results
                .into_iter()
                .filter_map(|r| r.result.ok())
                .collect());
        }
        let total = self.results.len();
        let mut causes = Vec::new();
        let mut retryable = true;
        let mut kind = ErrorKind::Other;
        for r in self.results {
            if let Err(e) = r.result {
                retryable &= e.is_retryable();
                kind = e.kind();
                causes.push(e.to_string());
            }
        }
        let e = Error::new(
            kind,
            "run on fleet",
            format!("{failed} of {total} hosts"),
            causes.join("; "),
        );
        Err(if retryable {
            e.retryable()
        } else {
            e.permanent()
        })
    }
}

/// Run `op` on every `(name, item)`, at most `concurrency` at once, each within `timeout`.
pub(crate) async fn bounded<I, T, F, Fut>(
    items: Vec<(String, I)>,
    concurrency: usize,
    timeout: Option<Duration>,
    op: F,
) -> FleetReport<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let op = &op;
    let mut results: Vec<(usize, HostResult<T>)> =
        futures::stream::iter(items.into_iter().enumerate())
            .map(|(i, (name, item))| async move {
                let t0 = Instant::now();
                let result = match timeout {
                    Some(limit) => match tokio::time::timeout(limit, op(item)).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::new(
                            ErrorKind::Timeout,
                            "run on fleet",
                            format!("host {name}"),
                            format!(
                                "no result within {} (per-host limit)",
                                humantime::format_duration(limit)
                            ),
                        )),
                    },
                    None => op(item).await,
                };
                (
                    i,
                    HostResult {
                        host: name,
                        result,
                        elapsed: t0.elapsed(),
                    },
                )
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    results.sort_by_key(|(i, _)| *i);
    FleetReport {
        results: results.into_iter().map(|(_, r)| r).collect(),
        elapsed: started.elapsed(),
    }
}

/// Many hosts, one operation at a time on all of them: at most `concurrency` hosts at once
/// (default 16), each within the per-host time limit (default none), one result per host.
///
/// ```no_run
/// # async fn demo(hosts: Vec<std::sync::Arc<deploy_ssh::SshHost>>) -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_core::{Command, Host, HostExt};
/// let fleet = deploy_ssh::Fleet::new(hosts)
///     .concurrency(8)
///     .per_host_timeout(Duration::from_secs(30));
/// let report = fleet
///     .run(|h| async move { h.run_checked(&Command::new("uptime")).await })
///     .await;
/// for r in &report.results {
///     println!("{}: {}", r.host, if r.result.is_ok() { "ok" } else { "FAILED" });
/// }
/// # Ok(()) }
/// ```
pub struct Fleet<H: ?Sized = dyn Host> {
    hosts: Vec<Arc<H>>,
    concurrency: usize,
    per_host_timeout: Option<Duration>,
}

impl<H: Host + ?Sized> fmt::Debug for Fleet<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field(
                "hosts",
                &self.hosts.iter().map(|h| h.name()).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("per_host_timeout", &self.per_host_timeout)
            .finish()
    }
}

impl<H: Host + ?Sized> Fleet<H> {
    /// A fleet of `hosts`.
    pub fn new(hosts: impl IntoIterator<Item = Arc<H>>) -> Self {
        Self {
            hosts: hosts.into_iter().collect(),
            concurrency: 16,
            per_host_timeout: None,
        }
    }

    /// At most `n` hosts at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Give each host at most `limit`; a host over it gets a `Timeout` error.
    pub fn per_host_timeout(mut self, limit: Duration) -> Self {
        self.per_host_timeout = Some(limit);
        self
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Arc<H>] {
        &self.hosts
    }

    /// Run `op` on every host; one result per host, in the fleet's order.
    pub async fn run<T, F, Fut>(&self, op: F) -> FleetReport<T>
    where
        F: Fn(Arc<H>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let items = self
            .hosts
            .iter()
            .map(|h| (h.name().to_owned(), Arc::clone(h)))
            .collect();
        bounded(items, self.concurrency, self.per_host_timeout, op).await
    }
}

/// How [`rolling_deploy`] proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RollingOptions {
    /// Targets activated together (at least 1).
    pub batch: usize,
    /// Targets prepared (uploaded) at once.
    pub concurrency: usize,
    /// Each prepare and each activate must finish within this.
    pub per_target_timeout: Duration,
}

impl RollingOptions {
    /// Batches of `batch`, 16 uploads at once, 5 minutes per call.
    pub fn new(batch: usize) -> Self {
        Self {
            batch: batch.max(1),
            concurrency: 16,
            per_target_timeout: Duration::from_secs(300),
        }
    }
}

/// How a [`rolling_deploy`] ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct RollingReport {
    /// Every target is on the new version.
    pub promoted: bool,
    /// The first failure (target and error), if any.
    pub failure: Option<(String, Error)>,
    /// Targets that were put back on their previous version, with the result of each.
    pub rolled_back: Vec<(String, Result<()>)>,
    /// Number of batches activated (the failed one included).
    pub batches: usize,
    /// Time spent reading the current versions and preparing every target.
    pub prepare_elapsed: Duration,
    /// Time spent activating the batches (rollback excluded).
    pub activate_elapsed: Duration,
    /// Wall time.
    pub elapsed: Duration,
}

/// A rolling deploy where each batch is activated **concurrently**: prepare every target (at
/// most `concurrency` at once), then per batch of `batch` targets activate them all at once; if
/// any prepare or activation fails, every target activated so far (the failed batch included)
/// is activated again on the version it had before, and the report says so.
///
/// Wall time grows with the number of batches, ⌈N/B⌉, not with N. Unlike
/// [`deploy_core::Engine`], there is no journal, no traffic switch and no health probe: use the
/// engine (`Strategy::Rolling`) for the full procedure; this is for fleets without a balancer
/// and for measuring what concurrent batches buy.
pub async fn rolling_deploy(
    targets: &[DynTarget],
    release: &Release,
    options: &RollingOptions,
) -> RollingReport {
    let started = Instant::now();
    let named = |ts: &[DynTarget]| -> Vec<(String, DynTarget)> {
        ts.iter()
            .map(|t| (t.id().to_string(), Arc::clone(t)))
            .collect()
    };
    let limit = Some(options.per_target_timeout);
    let before = bounded(named(targets), options.concurrency, limit, |t| async move {
        t.current().await
    })
    .await;
    let mut previous: Vec<Option<Version>> = Vec::new();
    let mut failure = None;
    for r in before.results {
        match r.result {
            Ok(v) => previous.push(v),
            Err(e) => {
                failure.get_or_insert((r.host, e));
                previous.push(None);
            }
        }
    }
    if failure.is_none() {
        let prepared = bounded(named(targets), options.concurrency, limit, |t| async move {
            t.prepare(release).await
        })
        .await;
        failure = first_failure(prepared);
    }
    let prepare_elapsed = started.elapsed();
    let mut activated = 0;
    let mut batches = 0;
    if failure.is_none() {
        for chunk in targets.chunks(options.batch.max(1)) {
            batches += 1;
            let version = &release.version;
            let r = bounded(named(chunk), chunk.len(), limit, |t| async move {
                t.activate(version).await
            })
            .await;
            activated += chunk.len();
            if let Some(f) = first_failure(r) {
                failure = Some(f);
                break;
            }
        }
    }
    let activate_elapsed = started.elapsed() - prepare_elapsed;
    let mut rolled_back = Vec::new();
    if failure.is_some() && activated > 0 {
        let undo: Vec<(String, (DynTarget, Option<Version>))> = targets[..activated]
            .iter()
            .zip(previous.iter().cloned())
            .map(|(t, v)| (t.id().to_string(), (Arc::clone(t), v)))
            .collect();
        let r = bounded(undo, options.concurrency, limit, |(t, v)| async move {
            match v {
                Some(v) => t.activate(&v).await,
                // Nothing was current before: nothing to go back to.
                None => Ok(()),
            }
        })
        .await;
        rolled_back = r.results.into_iter().map(|r| (r.host, r.result)).collect();
    }
    RollingReport {
        promoted: failure.is_none(),
        failure,
        rolled_back,
        batches,
        prepare_elapsed,
        activate_elapsed,
        elapsed: started.elapsed(),
    }
}

fn first_failure(report: FleetReport<()>) -> Option<(String, Error)> {
    report
        .results
        .into_iter()
        .find_map(|r| r.result.err().map(|e| (r.host, e)))
}
