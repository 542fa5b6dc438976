//! A fake [`MetricGate`](crate::traits::MetricGate).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{Verdict, VerdictKind};
use crate::traits::{GateContext, MetricGate};

use super::{Faults, finish, lock};

/// A fake [`MetricGate`] that answers a scripted sequence of verdict kinds, then repeats the last.
/// Method for [`Faults`]: `evaluate`.
#[derive(Debug)]
pub struct FakeGate {
    name: String,
    script: Mutex<VecDeque<VerdictKind>>,
    last: Mutex<VerdictKind>,
    evaluation_time: Duration,
    lookback: Duration,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeGate {
    /// Each evaluation takes `d` (as a scrape gate waits its window), and says so through
    /// [`MetricGate::evaluation_time`].
    pub fn with_evaluation_time(mut self, d: Duration) -> Self {
        self.evaluation_time = d;
        self
    }

    /// Say through [`MetricGate::lookback`] that each measurement looks back over `d` (as a
    /// PromQL range does).
    pub fn with_lookback(mut self, d: Duration) -> Self {
        self.lookback = d;
        self
    }

    /// A gate answering `kinds` in order, then the last one forever.
    pub fn sequence(name: &str, kinds: &[VerdictKind]) -> Self {
        Self {
            name: name.to_owned(),
            script: Mutex::new(kinds.iter().copied().collect()),
            last: Mutex::new(kinds.last().copied().unwrap_or(VerdictKind::Pass)),
            evaluation_time: Duration::ZERO,
            lookback: Duration::ZERO,
            faults: Faults::new(),
        }
    }

    /// A gate that always passes.
    pub fn passing(name: &str) -> Self {
        Self::sequence(name, &[VerdictKind::Pass])
    }

    /// A gate that always fails.
    pub fn failing(name: &str) -> Self {
        Self::sequence(name, &[VerdictKind::Fail])
    }

    /// How many times it was evaluated.
    pub fn evaluations(&self) -> u32 {
        self.faults.calls("evaluate")
    }
}

#[async_trait]
impl MetricGate for FakeGate {
    fn name(&self) -> &str {
        &self.name
    }

    fn evaluation_time(&self) -> Duration {
        self.evaluation_time
    }

    fn lookback(&self) -> Duration {
        self.lookback
    }

    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        let after = self.faults.enter(&self.name, "evaluate").await?;
        if !self.evaluation_time.is_zero() {
            // A zero sleep still waits for the timer's next tick (about a millisecond).
            tokio::time::sleep(self.evaluation_time).await;
        }
        let kind = lock(&self.script).pop_front().unwrap_or(*lock(&self.last));
        let (value, no_data) = match kind {
            VerdictKind::Pass => (Some(0.001), false),
            VerdictKind::Fail => (Some(0.05), false),
            VerdictKind::Inconclusive => (None, true),
            VerdictKind::Error => (None, false),
        };
        let mut v = Verdict::new(
            kind,
            value,
            "< 0.01",
            format!("fake:{}", self.name),
            format!("scripted {kind}"),
        );
        v.no_data = no_data;
        finish(after, Ok(v)).await
    }
}
