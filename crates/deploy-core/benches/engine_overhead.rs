//! Engine overhead with in-memory fakes and zero waits: a 100-step canary plan, promoted, and
//! rolled back from its last step. Prints a table (median, p99, max over many runs).
//!
//! `cargo bench -p deploy-core --features testing --bench engine_overhead`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy_core::event::{Event, Observer};
use deploy_core::testing::{FakeGate, FakeWorld};
use deploy_core::{CanaryStep, Engine, Plan, PlanOptions, Release, Strategy, Version};
use deploy_core::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 300;

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::ZERO;
    p.probe.healthy_threshold = 1;
    p.analysis.interval = Duration::from_secs(1);
    p.analysis.count = Some(1);
    p.analysis.interval = Duration::ZERO;
    p
}

/// 3 steps to bring the idle slot up + 96 canary steps + promote = 100 steps.
fn strategy() -> Strategy {
    let mut steps = Vec::new();
    for i in 0..48u8 {
        steps.push(CanaryStep::SetWeight(i + 1));
        steps.push(CanaryStep::Analyze(Duration::ZERO));
    }
    Strategy::Canary { steps }
}

#[derive(Debug, Default)]
struct RollbackTimer {
    started: Mutex<Option<Instant>>,
    finished: Mutex<Option<Instant>>,
}

impl Observer for RollbackTimer {
    fn on_event(&self, event: &Event) {
        match event {
            Event::RollbackStarted { .. } => *self.started.lock().unwrap() = Some(Instant::now()),
            Event::RunFinished { .. } => *self.finished.lock().unwrap() = Some(Instant::now()),
            _ => {}
        }
    }
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99), *v.last().unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn plan_for(world: &FakeWorld) -> Plan {
    Engine::new(world.environment("bench"))
        .with_policies(policies())
        .plan(
            &strategy(),
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
        )
        .await
        .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let probe_world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("errors"));
    let plan = plan_for(&probe_world).await;
    assert_eq!(plan.steps.len(), 100, "a 100-step plan");

    let mut promoted = Vec::new();
    let mut promoted_journal = Vec::new();
    let mut rollback = Vec::new();
    let mut rollback_run = Vec::new();
    let journal_dir = tempfile::tempdir().unwrap();
    for i in 0..RUNS {
        // Promoted, no journal.
        let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("errors"));
        let engine = Engine::new(world.environment("bench")).with_policies(policies());
        let t = Instant::now();
        let r = engine
            .run(plan.clone(), &CancellationToken::new())
            .await
            .unwrap();
        promoted.push(t.elapsed());
        assert_eq!(r.outcome, Outcome::Promoted);

        // Promoted, journaled (one fsync per record).
        if i < RUNS / 10 {
            let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("errors"));
            let engine = Engine::new(world.environment("bench"))
                .with_policies(policies())
                .with_state_dir(journal_dir.path().join(i.to_string()));
            let t = Instant::now();
            let r = engine
                .run(plan.clone(), &CancellationToken::new())
                .await
                .unwrap();
            promoted_journal.push(t.elapsed());
            assert_eq!(r.outcome, Outcome::Promoted);
        }

        // Rolled back from the last step (the promote's set_weights fails).
        let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("errors"));
        world.switch.faults.fail_on("set_weights", 49);
        let timer = Arc::new(RollbackTimer::default());
        let engine = Engine::new(world.environment("bench"))
            .with_policies(policies())
            .with_observer(timer.clone());
        let t = Instant::now();
        let r = engine
            .run(plan.clone(), &CancellationToken::new())
            .await
            .unwrap();
        rollback_run.push(t.elapsed());
        assert_eq!(r.outcome, Outcome::RolledBack);
        assert_eq!(r.steps.last().unwrap().index, 99, "failed at the last step");
        let (s, f) = (
            timer.started.lock().unwrap().unwrap(),
            timer.finished.lock().unwrap().unwrap(),
        );
        rollback.push(f - s);
    }

    println!(
        "engine overhead, in-memory fakes, zero waits, {RUNS} runs each (journaled: {})",
        RUNS / 10
    );
    println!("| case | median | p99 | max |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("100-step canary, promoted (no journal)", promoted),
        (
            "100-step canary, promoted (journal, fsync per record)",
            promoted_journal,
        ),
        (
            "100-step canary failing at step 100: whole run",
            rollback_run,
        ),
        (
            "rollback from step 100 (rollback started → run finished)",
            rollback,
        ),
    ] {
        let (m, p99, max) = stats(v);
        println!("| {name} | {} | {} | {} |", ms(m), ms(p99), ms(max));
    }
}
