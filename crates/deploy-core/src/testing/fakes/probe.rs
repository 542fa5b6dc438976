//! A fake [`HealthProbe`](crate::traits::HealthProbe).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::Health;
use crate::traits::{HealthProbe, ProbeRequest, Target};

use super::FakeTarget;
use super::{Faults, finish};

/// A fake [`HealthProbe`] that asks the [`FakeTarget`]s themselves whether they are healthy.
/// Method for [`Faults`]: `check`.
///
/// An unknown or stopped target, or one running a version marked
/// [unreachable](FakeTarget::mark_unreachable), gives no answer ([`Health::unreachable`]); a
/// version marked [unhealthy](FakeTarget::mark_unhealthy) answers `HTTP 500`, and a running
/// version other than the one expected answers with that version ([`Health::unhealthy`]).
#[derive(Debug)]
pub struct FakeProbe {
    targets: Vec<Arc<FakeTarget>>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeProbe {
    /// A probe over these targets.
    pub fn new(targets: Vec<Arc<FakeTarget>>) -> Self {
        Self {
            targets,
            faults: Faults::new(),
        }
    }
}

#[async_trait]
impl HealthProbe for FakeProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let after = self.faults.enter(request.target.as_str(), "check").await?;
        let zero = Duration::ZERO;
        let health = match self.targets.iter().find(|t| t.id() == &request.target) {
            None => Health::unreachable(format!("no such target {}", request.target), zero),
            Some(t) => {
                let version = t.version();
                if !t.is_running() {
                    Health::unreachable("not running", zero)
                } else if !t.is_reachable() {
                    Health::unreachable("connection refused", zero)
                } else if !t.is_healthy() {
                    Health::unhealthy("HTTP 500", zero).with_version(version)
                } else if request.expected_version.is_some() && request.expected_version != version
                {
                    Health::unhealthy(
                        format!(
                            "version {}, expected {}",
                            version.as_ref().map_or("none".into(), ToString::to_string),
                            request
                                .expected_version
                                .as_ref()
                                .map_or("none".into(), ToString::to_string)
                        ),
                        zero,
                    )
                    .with_version(version)
                } else {
                    Health::healthy("HTTP 200", zero).with_version(version)
                }
            }
        };
        finish(after, Ok(health)).await
    }
}
