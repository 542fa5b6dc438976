//! [`DockerHealthProbe`]: the containers' own `HEALTHCHECK` status as a [`HealthProbe`], alone
//! or before another probe (the HTTP probe).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use deploy_core::{
    DynHealthProbe, Error, ErrorKind, Health, HealthProbe, ProbeRequest, Result, TargetId,
};

use crate::DockerTarget;

/// Checks a [`DockerTarget`]'s container with its own `HEALTHCHECK`
/// ([`DockerTarget::container_health`]), and then, when given one, another probe (the HTTP
/// probe): healthy only when both are. A container of another version than the one expected is
/// unhealthy at once (answered, with [`Health::version`] set), like the HTTP probe's version
/// check.
///
/// A container started again after a run whose last `HEALTHCHECK` passed — the previous
/// release's container, started by a rollback — is judged by the other probe alone while
/// Docker still says `starting` (Docker checks again only after the image's interval): its
/// image proved healthy in that very container, and the other probe proves it answers now, on
/// the version expected. A new container always waits for its own first check.
#[derive(Debug, Clone, Default)]
pub struct DockerHealthProbe {
    targets: BTreeMap<TargetId, Arc<DockerTarget>>,
    then: Option<DynHealthProbe>,
}

impl DockerHealthProbe {
    /// A probe for `targets`; requests for other targets are refused (`NotFound`).
    pub fn new(targets: impl IntoIterator<Item = Arc<DockerTarget>>) -> Self {
        Self {
            targets: targets
                .into_iter()
                .map(|t| (deploy_core::Target::id(t.as_ref()).clone(), t))
                .collect(),
            then: None,
        }
    }

    /// Once the container says healthy, ask `probe` too.
    pub fn then(mut self, probe: DynHealthProbe) -> Self {
        self.then = Some(probe);
        self
    }
}

#[async_trait]
impl HealthProbe for DockerHealthProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let started = Instant::now();
        let Some(target) = self.targets.get(&request.target) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "check container health of",
                format!("target {}", request.target),
                "this probe has no docker target of that name",
            ));
        };
        let (mut health, passed_when_last_ran) = target.health_state().await?;
        if let (Some(expected), Some(got)) = (&request.expected_version, &health.version)
            && expected != got
        {
            let version = health.version.clone();
            return Ok(Health::unhealthy(
                format!(
                    "container runs version {got}, expected {expected} ({})",
                    health.reason
                ),
                started.elapsed(),
            )
            .with_version(version));
        }
        let back_from_healthy = !health.healthy && passed_when_last_ran && self.then.is_some();
        if !health.healthy && !back_from_healthy {
            return Ok(health);
        }
        if back_from_healthy {
            health.reason = format!(
                "{}; it passed its HEALTHCHECK when it last ran, so its answer decides",
                health.reason
            );
        }
        if let Some(then) = &self.then {
            let mut next = then.check(request).await?;
            next.reason = format!("{}; {}", health.reason, next.reason);
            next.latency = started.elapsed();
            if next.version.is_none() {
                next.version = health.version;
            }
            return Ok(next);
        }
        health.latency = started.elapsed();
        Ok(health)
    }
}
