//! A fake [`TrafficSwitch`](crate::traits::TrafficSwitch).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{TargetId, Weights};
use crate::traits::TrafficSwitch;

use super::{Faults, finish, lock};

#[derive(Debug, Default)]
struct SwitchInner {
    weights: Weights,
    sessions: HashMap<TargetId, u64>,
    drain_per_poll: HashMap<TargetId, u64>,
    draining: HashSet<TargetId>,
    history: Vec<Weights>,
}

/// A fake [`TrafficSwitch`]: weights in memory, sessions that drain by a set amount per poll.
/// Methods for [`Faults`]: `weights`, `set_weights`, `drain`, `active_sessions`, `cut_sessions`.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    inner: Mutex<SwitchInner>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeSwitch {
    /// A switch with these `(target, weight)` pairs.
    pub fn new(weights: &[(&str, u32)]) -> Self {
        let w: Weights = weights
            .iter()
            .map(|(t, w)| (TargetId::new(*t).expect("valid id"), *w))
            .collect();
        Self {
            inner: Mutex::new(SwitchInner {
                history: vec![w.clone()],
                weights: w,
                ..SwitchInner::default()
            }),
            faults: Faults::new(),
        }
    }

    /// Give `target` `sessions` open sessions that close `per_poll` at a time once it drains
    /// (`per_poll = 0`: they never close).
    pub fn with_sessions(self, target: &str, sessions: u64, per_poll: u64) -> Self {
        {
            let id = TargetId::new(target).expect("valid id");
            let mut g = lock(&self.inner);
            g.sessions.insert(id.clone(), sessions);
            g.drain_per_poll.insert(id, per_poll);
        }
        self
    }

    /// The weights now, without going through the trait.
    pub fn current(&self) -> Weights {
        lock(&self.inner).weights.clone()
    }

    /// Every weight table it had, first to last.
    pub fn history(&self) -> Vec<Weights> {
        lock(&self.inner).history.clone()
    }

    fn unknown(&self, g: &SwitchInner, targets: &[&TargetId]) -> Result<()> {
        let missing: Vec<String> = targets
            .iter()
            .filter(|t| g.weights.get(t).is_none())
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                "set weights on",
                "fake switch",
                format!("no such target(s): {}", missing.join(", ")),
            ))
        }
    }
}

#[async_trait]
impl TrafficSwitch for FakeSwitch {
    async fn weights(&self) -> Result<Weights> {
        let after = self.faults.enter("fake switch", "weights").await?;
        finish(after, Ok(self.current())).await
    }

    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        let after = self.faults.enter("fake switch", "set_weights").await?;
        {
            let mut g = lock(&self.inner);
            let names: Vec<&TargetId> = weights.iter().map(|(t, _)| t).collect();
            self.unknown(&g, &names)?;
            for (t, w) in weights.iter() {
                g.weights.set(t.clone(), w);
                if w > 0 {
                    g.draining.remove(t);
                }
            }
            let snapshot = g.weights.clone();
            g.history.push(snapshot);
        }
        finish(after, Ok(())).await
    }

    async fn drain(&self, target: &TargetId) -> Result<()> {
        let after = self.faults.enter("fake switch", "drain").await?;
        {
            let mut g = lock(&self.inner);
            self.unknown(&g, &[target])?;
            g.weights.set(target.clone(), 0);
            g.draining.insert(target.clone());
            let snapshot = g.weights.clone();
            g.history.push(snapshot);
        }
        finish(after, Ok(())).await
    }

    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        let after = self.faults.enter("fake switch", "active_sessions").await?;
        let n = {
            let mut g = lock(&self.inner);
            self.unknown(&g, &[target])?;
            let per_poll = g.drain_per_poll.get(target).copied().unwrap_or(0);
            let draining = g.draining.contains(target);
            let s = g.sessions.entry(target.clone()).or_insert(0);
            let now = *s;
            if draining {
                *s = s.saturating_sub(per_poll);
            }
            now
        };
        finish(after, Ok(n)).await
    }

    async fn cut_sessions(&self, target: &TargetId) -> Result<()> {
        let after = self.faults.enter("fake switch", "cut_sessions").await?;
        {
            let mut g = lock(&self.inner);
            self.unknown(&g, &[target])?;
            g.sessions.insert(target.clone(), 0);
            g.weights.set(target.clone(), 0);
        }
        finish(after, Ok(())).await
    }
}
