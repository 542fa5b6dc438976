//! The composite switch on fakes: all or none when a member fails, disagreements reported, the
//! trait's conformance suite, and blue-green and canary runs through a pair whose second member
//! fails at each switch step — the run rolls back and both members end on the previous weights.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::testing::{FakeGate, FakeSwitch, FakeWorld, conformance};
use deploy_core::{
    CanaryStep, CompositeSwitch, DynTrafficSwitch, Engine, ErrorKind, Outcome, PlanOptions,
    Policies, Release, Result, Step, Strategy, TargetId, TrafficSwitch, Version, Weights,
};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> TargetId {
    TargetId::new(s).unwrap()
}

fn weights(pairs: &[(&str, u32)]) -> Weights {
    pairs.iter().map(|(t, w)| (id(t), *w)).collect()
}

fn pair(a: &Arc<FakeSwitch>, b: &Arc<FakeSwitch>) -> CompositeSwitch {
    CompositeSwitch::new(vec![
        ("lb-1".to_owned(), a.clone() as DynTrafficSwitch),
        ("lb-2".to_owned(), b.clone() as DynTrafficSwitch),
    ])
    .unwrap()
}

fn slots() -> Arc<FakeSwitch> {
    Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]))
}

#[tokio::test]
async fn set_weights_moves_every_member() {
    let (a, b) = (slots(), slots());
    let c = pair(&a, &b);
    c.set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap();
    assert_eq!(a.current().to_string(), "blue=0,green=100");
    assert_eq!(b.current().to_string(), "blue=0,green=100");
    assert_eq!(c.weights().await.unwrap().to_string(), "blue=0,green=100");
}

#[tokio::test]
async fn a_member_failing_puts_every_member_back() {
    let (a, b) = (slots(), slots());
    b.faults.fail_on("set_weights", 1);
    let c = pair(&a, &b);
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("member lb-2 failed"), "{text}");
    assert!(
        text.contains("every member was put back to its previous weights"),
        "{text}"
    );
    assert_eq!(a.current().to_string(), "blue=100,green=0", "lb-1 is back");
    assert_eq!(b.current().to_string(), "blue=100,green=0", "lb-2 is back");
    // lb-1 was moved, then put back: it had the new weights for a moment.
    let moved: Vec<String> = a.history().iter().map(ToString::to_string).collect();
    assert_eq!(
        moved,
        ["blue=100,green=0", "blue=0,green=100", "blue=100,green=0"]
    );
}

/// A switch that says `Ok` but leaves one target's weight alone (a balancer that ignored part
/// of the command).
#[derive(Debug)]
struct IgnoresTarget {
    inner: FakeSwitch,
    ignored: TargetId,
}

#[async_trait]
impl TrafficSwitch for IgnoresTarget {
    async fn weights(&self) -> Result<Weights> {
        self.inner.weights().await
    }
    async fn set_weights(&self, w: &Weights) -> Result<()> {
        let kept: Weights = w
            .iter()
            .filter(|(t, _)| **t != self.ignored)
            .map(|(t, w)| (t.clone(), w))
            .collect();
        self.inner.set_weights(&kept).await
    }
    async fn drain(&self, t: &TargetId) -> Result<()> {
        self.inner.drain(t).await
    }
    async fn active_sessions(&self, t: &TargetId) -> Result<u64> {
        self.inner.active_sessions(t).await
    }
}

#[tokio::test]
async fn a_read_back_that_differs_is_a_failure_and_every_member_is_put_back() {
    let a = slots();
    let liar = Arc::new(IgnoresTarget {
        inner: FakeSwitch::new(&[("blue", 100), ("green", 0)]),
        ignored: id("green"),
    });
    let c = CompositeSwitch::new(vec![
        ("lb-1".to_owned(), a.clone() as DynTrafficSwitch),
        ("nginx".to_owned(), liar.clone() as DynTrafficSwitch),
    ])
    .unwrap();
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("member nginx failed"), "{text}");
    assert!(text.contains("green=0 (set 100)"), "{text}");
    assert!(text.contains("every member was put back"), "{text}");
    assert_eq!(a.current().to_string(), "blue=100,green=0");
    assert_eq!(liar.inner.current().to_string(), "blue=100,green=0");
}

#[tokio::test]
async fn a_member_that_cannot_be_put_back_is_named() {
    let (a, b) = (slots(), slots());
    // lb-2 fails to set and keeps failing: it cannot be put back either (it did not move, but
    // the composite cannot know that).
    b.faults.fail_from("set_weights", 1);
    let c = pair(&a, &b);
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("member lb-2 failed"), "{text}");
    println!("{text}");
    assert!(text.contains("could not put back lb-2 ("), "{text}");
    assert!(text.contains("put back: lb-1"), "{text}");
    assert_eq!(a.current().to_string(), "blue=100,green=0");
}

#[tokio::test]
async fn a_member_that_cannot_be_read_first_fails_before_anything_changes() {
    let (a, b) = (slots(), slots());
    b.faults.fail_on("weights", 1);
    let c = pair(&a, &b);
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no member was changed"), "{err}");
    assert_eq!(a.faults.calls("set_weights"), 0);
    assert_eq!(b.faults.calls("set_weights"), 0);
}

#[tokio::test]
async fn an_unknown_target_stays_not_found_and_changes_nothing() {
    let a = slots();
    let b = Arc::new(FakeSwitch::new(&[("blue", 100)]));
    let c = CompositeSwitch::new(vec![
        ("lb-1".to_owned(), a.clone() as DynTrafficSwitch),
        ("lb-2".to_owned(), b.clone() as DynTrafficSwitch),
    ])
    .unwrap();
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("member lb-2 failed"), "{err}");
    assert_eq!(a.current().to_string(), "blue=100,green=0");
    assert_eq!(b.current().to_string(), "blue=100");
}

#[tokio::test]
async fn members_that_disagree_are_reported_by_name() {
    let a = slots();
    let b = Arc::new(FakeSwitch::new(&[("blue", 0), ("green", 100)]));
    let c = pair(&a, &b);
    let err = c.weights().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(!err.is_retryable());
    let text = err.to_string();
    println!("{text}");
    assert!(
        text.contains("lb-1 has blue=100,green=0, lb-2 has blue=0,green=100"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_that_hangs_times_out_and_the_other_is_put_back() {
    let (a, b) = (slots(), slots());
    b.faults.hang_on("set_weights", 1);
    let c = pair(&a, &b).with_member_timeout(Duration::from_secs(2));
    let err = c
        .set_weights(&weights(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains("every member was put back"),
        "{err}"
    );
    assert_eq!(a.current().to_string(), "blue=100,green=0");
    assert_eq!(b.current().to_string(), "blue=100,green=0");
}

#[tokio::test]
async fn drain_sessions_and_cut_act_on_every_member() {
    let a = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]).with_sessions("blue", 3, 1));
    let b = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]).with_sessions("blue", 5, 1));
    let c = pair(&a, &b);
    assert_eq!(c.active_sessions(&id("blue")).await.unwrap(), 8, "the sum");
    c.drain(&id("blue")).await.unwrap();
    assert_eq!(a.current().get(&id("blue")), Some(0));
    assert_eq!(b.current().get(&id("blue")), Some(0));
    c.cut_sessions(&id("blue")).await.unwrap();
    assert_eq!(c.active_sessions(&id("blue")).await.unwrap(), 0);

    b.faults.fail_on("drain", 2);
    let err = c.drain(&id("blue")).await.unwrap_err();
    assert!(err.to_string().contains("member lb-2 failed"), "{err}");
}

#[tokio::test]
async fn a_drain_failing_on_one_member_puts_the_target_back_on_every_member() {
    let (a, b) = (slots(), slots());
    b.faults.fail_on("drain", 1);
    let c = pair(&a, &b);
    let err = c.drain(&id("blue")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("member lb-2 failed"), "{text}");
    assert!(
        text.contains("every member was put back to its previous weight of blue"),
        "{text}"
    );
    assert_eq!(
        a.current().to_string(),
        "blue=100,green=0",
        "lb-1 undrained"
    );
    assert_eq!(b.current().to_string(), "blue=100,green=0");
    assert_eq!(c.weights().await.unwrap().to_string(), "blue=100,green=0");
}

#[tokio::test]
async fn new_refuses_no_members_and_duplicate_names() {
    assert!(CompositeSwitch::new(vec![]).is_err());
    let a = slots() as DynTrafficSwitch;
    let err = CompositeSwitch::new(vec![("x".into(), a.clone()), ("x".into(), a)]).unwrap_err();
    assert!(
        err.to_string().contains("two members are named \"x\""),
        "{err}"
    );
}

#[tokio::test]
async fn conformance_of_a_pair() {
    let (a, b) = (slots(), slots());
    conformance::traffic_switch(&pair(&a, &b), &id("blue"), &id("green")).await;
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_secs(1);
    p.probe.healthy_threshold = 2;
    p.probe.deadline = Duration::from_secs(10);
    p.analysis.interval = Duration::from_secs(10);
    p
}

/// The engine's fault matrix idea on a pair: for each switch step (set weights, drain) of a
/// blue-green, a canary and a rolling deploy, the second member fails at that step; the run
/// rolls back and both members end on the weights they had before.
#[tokio::test(start_paused = true)]
async fn a_deploy_through_a_pair_rolls_back_both_members_when_the_second_fails_a_switch_step() {
    type Case = (
        &'static str,
        Strategy,
        fn() -> FakeWorld,
        &'static [(&'static str, u32)],
    );
    let slots_world: fn() -> FakeWorld =
        || FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("error-rate"));
    let fleet_world: fn() -> FakeWorld =
        || FakeWorld::fleet(4, "1.0.0").with_gate(FakeGate::passing("error-rate"));
    let slots_weights: &[(&str, u32)] = &[("blue", 100), ("green", 0)];
    let fleet_weights: &[(&str, u32)] = &[("web-1", 1), ("web-2", 1), ("web-3", 1), ("web-4", 1)];
    let cases: Vec<Case> = vec![
        (
            "blue_green",
            Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::from_secs(60),
            },
            slots_world,
            slots_weights,
        ),
        (
            "canary",
            Strategy::Canary {
                steps: vec![
                    CanaryStep::SetWeight(10),
                    CanaryStep::Analyze(Duration::from_secs(60)),
                    CanaryStep::SetWeight(50),
                    CanaryStep::Analyze(Duration::from_secs(60)),
                ],
            },
            slots_world,
            slots_weights,
        ),
        (
            "rolling",
            Strategy::Rolling {
                batch: deploy_core::BatchSize::Count(2),
                analysis: Some(Duration::from_secs(30)),
                max_failed_targets: None,
                prepare: Default::default(),
            },
            fleet_world,
            fleet_weights,
        ),
    ];
    let release = Release::new(Version::new("2.0.0").unwrap());
    let mut cells = Vec::new();
    for (name, strategy, make, weights) in cases {
        let plan = {
            let world = make();
            Engine::new(world.environment("prod"))
                .with_policies(policies())
                .plan(&strategy, &release, &PlanOptions::default())
                .await
                .unwrap()
        };
        let op = |s: &Step| match s {
            Step::SetWeights { .. } => Some("set_weights"),
            Step::Drain { .. } => Some("drain"),
            _ => None,
        };
        for (index, step) in plan.steps.iter().enumerate() {
            let Some(method) = op(step) else { continue };
            // The n-th call of this method on the second member is this step's.
            let nth = plan.steps[..index]
                .iter()
                .filter(|s| op(s) == Some(method))
                .count() as u32
                + 1;
            let world = make();
            let before = world.switch.current();
            let second = Arc::new(FakeSwitch::new(weights));
            second.faults.fail_on(method, nth);
            let env = world
                .environment_builder("prod")
                .switch(Arc::new(pair(&world.switch, &second)))
                .build()
                .unwrap();
            let engine = Engine::new(env).with_policies(policies());
            let report = engine
                .run(plan.clone(), &CancellationToken::new())
                .await
                .unwrap();
            let cell = format!("{name} / step {} ({step}) / lb-2 fails {method}", index + 1);
            assert_eq!(report.outcome, Outcome::RolledBack, "{cell}\n{report}");
            assert!(
                report
                    .steps
                    .iter()
                    .any(|s| s.index == index && s.error.is_some()),
                "{cell}: the switch step failed\n{report}"
            );
            assert_eq!(world.switch.current(), before, "{cell}: lb-1 is back");
            assert_eq!(second.current(), before, "{cell}: lb-2 is back");
            cells.push(cell);
        }
    }
    println!("{} cells:\n  {}", cells.len(), cells.join("\n  "));
    for name in ["blue_green", "canary", "rolling"] {
        assert!(
            cells.iter().any(|c| c.starts_with(name)),
            "{name}: {cells:?}"
        );
    }
}

/// Without faults, both members of the pair end on the new slot.
#[tokio::test(start_paused = true)]
async fn a_deploy_through_a_pair_moves_both_members() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("error-rate"));
    let second = slots();
    let env = world
        .environment_builder("prod")
        .switch(Arc::new(pair(&world.switch, &second)))
        .build()
        .unwrap();
    let report = Engine::new(env)
        .with_policies(policies())
        .deploy(
            &Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::from_secs(30),
            },
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
    assert_eq!(second.current().to_string(), "blue=0,green=100");
}

/// Members that disagree stop planning: the snapshot cannot say what the balancer applies.
#[tokio::test(start_paused = true)]
async fn planning_over_a_pair_that_disagrees_is_refused_naming_the_members() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let second = Arc::new(FakeSwitch::new(&[("blue", 0), ("green", 100)]));
    let env = world
        .environment_builder("prod")
        .switch(Arc::new(pair(&world.switch, &second)))
        .build()
        .unwrap();
    let err = Engine::new(env)
        .with_policies(policies())
        .plan(
            &Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::ZERO,
            },
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(
        text.contains("lb-1 has blue=100,green=0, lb-2 has blue=0,green=100"),
        "{text}"
    );
}

/// A member switch that stops answering once `dead` is set (a balancer that died).
#[derive(Debug)]
struct Dying {
    inner: Arc<FakeSwitch>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Dying {
    fn alive(&self) -> Result<()> {
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(deploy_core::Error::new(
                ErrorKind::Unavailable,
                "reach",
                "lb-2",
                "connection refused",
            )
            .permanent());
        }
        Ok(())
    }
}

#[async_trait]
impl TrafficSwitch for Dying {
    async fn weights(&self) -> Result<Weights> {
        self.alive()?;
        self.inner.weights().await
    }
    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        self.alive()?;
        self.inner.set_weights(weights).await
    }
    async fn drain(&self, target: &TargetId) -> Result<()> {
        self.alive()?;
        self.inner.drain(target).await
    }
    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        self.alive()?;
        self.inner.active_sessions(target).await
    }
}

/// Kills lb-2 when the bake starts.
#[derive(Debug)]
struct KillAtBake(Arc<std::sync::atomic::AtomicBool>);

impl deploy_core::event::Observer for KillAtBake {
    fn on_event(&self, event: &deploy_core::event::Event) {
        if let deploy_core::event::Event::StepStarted {
            step: Step::Analyze { .. },
            ..
        } = event
        {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// lb-2 dies after the switch, then the bake's gate fails: the rollback still moves lb-1 — the
/// balancer that carries the users — back to the old slot, and reports lb-2 as not put back
/// (before, the composite refused to change any member because lb-2 could not be read, and
/// lb-1 kept sending everyone to the failed release while the old one came back).
#[tokio::test(start_paused = true)]
async fn a_member_dying_after_the_switch_does_not_keep_the_others_on_the_failed_release() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::failing("error-rate"));
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let second = Arc::new(Dying {
        inner: slots(),
        dead: dead.clone(),
    });
    let c = CompositeSwitch::new(vec![
        ("lb-1".to_owned(), world.switch.clone() as DynTrafficSwitch),
        ("lb-2".to_owned(), second.clone() as DynTrafficSwitch),
    ])
    .unwrap();
    let env = world
        .environment_builder("prod")
        .switch(Arc::new(c))
        .build()
        .unwrap();
    let report = Engine::new(env)
        .with_policies(policies())
        .with_observer(Arc::new(KillAtBake(dead)))
        .deploy(
            &Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::from_secs(30),
            },
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        world.switch.current().to_string(),
        "blue=100,green=0",
        "lb-1 is back on the old slot\n{report}"
    );
    let rb = report.rollback.as_ref().expect("a rollback");
    let undo = rb
        .steps
        .iter()
        .find(|u| matches!(u.step, Step::SetWeights { .. }))
        .expect("the weights were put back");
    let error = undo.error.as_ref().expect("lb-2 could not be put back");
    assert!(error.message.contains("lb-2"), "{}", error.message);
    assert!(
        error.message.contains("on these weights: lb-1"),
        "{}",
        error.message
    );
    assert_eq!(
        report.outcome,
        Outcome::Failed,
        "lb-2 is not known to be back"
    );
}
