//! A fake [`Target`](crate::traits::Target).

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Endpoint, Release, TargetId, Version};
use crate::traits::Target;

use super::{Faults, finish, lock};

#[derive(Debug, Default)]
struct TargetInner {
    prepared: BTreeSet<Version>,
    current: Option<Version>,
    running: bool,
    activations: Vec<Version>,
}

/// A fake [`Target`]: remembers prepared releases, the current version and whether it runs.
/// Methods for [`Faults`]: `current`, `prepare`, `activate`, `stop`, `start`.
#[derive(Debug)]
pub struct FakeTarget {
    id: TargetId,
    endpoint: Endpoint,
    inner: Mutex<TargetInner>,
    unhealthy: Mutex<HashSet<Version>>,
    unreachable: Mutex<HashSet<Version>>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeTarget {
    /// A target named `id` with nothing deployed, at a made-up loopback endpoint.
    pub fn new(id: &str) -> Self {
        Self {
            id: TargetId::new(id).expect("valid target id"),
            endpoint: Endpoint::http("127.0.0.1", 9),
            inner: Mutex::new(TargetInner::default()),
            unhealthy: Mutex::new(HashSet::new()),
            unreachable: Mutex::new(HashSet::new()),
            faults: Faults::new(),
        }
    }

    /// Start with `version` prepared, current and running.
    pub fn with_current(self, version: &str) -> Self {
        let v = Version::new(version).expect("valid version");
        {
            let mut g = lock(&self.inner);
            g.prepared.insert(v.clone());
            g.current = Some(v);
            g.running = true;
        }
        self
    }

    /// Use `endpoint`.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Make `version` fail its health checks on this target: it answers, and says it is
    /// unhealthy (`HTTP 500` from [`FakeProbe`](super::FakeProbe)).
    pub fn mark_unhealthy(&self, version: &str) {
        lock(&self.unhealthy).insert(Version::new(version).expect("valid version"));
    }

    /// Make `version` give no answer to health checks on this target (connection refused: a
    /// service that never comes up); [`mark_reachable`](Self::mark_reachable) undoes it.
    pub fn mark_unreachable(&self, version: &str) {
        lock(&self.unreachable).insert(Version::new(version).expect("valid version"));
    }

    /// Make `version` answer health checks again.
    pub fn mark_reachable(&self, version: &str) {
        lock(&self.unreachable).remove(&Version::new(version).expect("valid version"));
    }

    /// Whether it answers health checks: it runs a version not marked unreachable.
    pub fn is_reachable(&self) -> bool {
        let g = lock(&self.inner);
        g.running
            && g.current
                .as_ref()
                .is_some_and(|v| !lock(&self.unreachable).contains(v))
    }

    /// The current version, without going through the trait (no faults, no counting).
    pub fn version(&self) -> Option<Version> {
        lock(&self.inner).current.clone()
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        lock(&self.inner).running
    }

    /// Every version activated, in order.
    pub fn activations(&self) -> Vec<Version> {
        lock(&self.inner).activations.clone()
    }

    /// Whether it serves a healthy version.
    pub fn is_healthy(&self) -> bool {
        let g = lock(&self.inner);
        g.running
            && g.current
                .as_ref()
                .is_some_and(|v| !lock(&self.unhealthy).contains(v))
    }
}

#[async_trait]
impl Target for FakeTarget {
    fn id(&self) -> &TargetId {
        &self.id
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn current(&self) -> Result<Option<Version>> {
        let after = self.faults.enter(self.id.as_str(), "current").await?;
        finish(after, Ok(self.version())).await
    }

    async fn prepare(&self, release: &Release) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "prepare").await?;
        lock(&self.inner).prepared.insert(release.version.clone());
        finish(after, Ok(())).await
    }

    async fn activate(&self, version: &Version) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "activate").await?;
        {
            let mut g = lock(&self.inner);
            if !g.prepared.contains(version) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("activate {version} on"),
                    format!("target {}", self.id),
                    "that version was never prepared",
                ));
            }
            g.current = Some(version.clone());
            g.running = true;
            g.activations.push(version.clone());
        }
        finish(after, Ok(())).await
    }

    async fn stop(&self) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "stop").await?;
        lock(&self.inner).running = false;
        finish(after, Ok(())).await
    }

    async fn start(&self) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "start").await?;
        {
            let mut g = lock(&self.inner);
            g.running = g.current.is_some();
        }
        finish(after, Ok(())).await
    }
}
