//! Engine tests on the fakes: the fault matrix (a failure at every step of every strategy ends
//! exactly where it started), cancellation, retries, policies under tokio's paused clock, locks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::event::{Event, Observer};
use deploy_core::policy::{AnalysisPolicy, DrainTimeoutAction};
use deploy_core::testing::{FakeGate, FakeWorld, WorldState};
use deploy_core::{
    BatchSize, CanaryStep, DeployError, Engine, Plan, PlanOptions, PrepareOrder, Release,
    SchemaRollback, Step, Strategy, VerdictKind, Version,
};
use deploy_core::{Outcome, Policies, TargetBudget};
use tokio_util::sync::CancellationToken;

const NEW: &str = "2.0.0";

fn release() -> Release {
    Release::new(Version::new(NEW).unwrap())
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_secs(1);
    p.probe.healthy_threshold = 2;
    p.probe.deadline = Duration::from_secs(10);
    p.analysis.interval = Duration::from_secs(10);
    p
}

/// The four strategies, each with the world it is tested on.
type Case = (&'static str, Strategy, fn() -> FakeWorld, PlanOptions);

fn cases() -> Vec<Case> {
    let mut revert = PlanOptions::default();
    revert.schema_rollback = SchemaRollback::Revert;
    vec![
        (
            "recreate",
            Strategy::Recreate {},
            || {
                FakeWorld::fleet(2, "1.0.0").with_pending_migrations(&[(
                    "2",
                    "drop_legacy",
                    Some("DROP COLUMN legacy"),
                )])
            },
            PlanOptions::default(),
        ),
        (
            "rolling",
            Strategy::Rolling {
                batch: BatchSize::Count(2),
                analysis: Some(Duration::from_secs(60)),
                max_failed_targets: None,
                prepare: Default::default(),
            },
            || {
                FakeWorld::fleet(4, "1.0.0")
                    .with_pending_migrations(&[("2", "add_orders_note", None)])
                    .with_gate(FakeGate::passing("error-rate"))
            },
            revert.clone(),
        ),
        (
            // Each batch prepared while the batch before it waits to be healthy (no migration:
            // with one pending, every target is prepared first).
            "rolling_ahead",
            Strategy::Rolling {
                batch: BatchSize::Count(2),
                analysis: Some(Duration::from_secs(30)),
                max_failed_targets: None,
                prepare: PrepareOrder::BatchAhead,
            },
            || FakeWorld::fleet(6, "1.0.0").with_gate(FakeGate::passing("error-rate")),
            PlanOptions::default(),
        ),
        (
            "blue_green",
            Strategy::BlueGreen {
                pre_switch_analysis: Some(Duration::from_secs(60)),
                bake: Duration::from_secs(60),
            },
            || {
                FakeWorld::slots("1.0.0", "0.9.0")
                    .with_pending_migrations(&[
                        ("2", "add_orders_note", None),
                        ("3", "add_index", None),
                    ])
                    .with_gate(FakeGate::passing("error-rate"))
            },
            revert.clone(),
        ),
        (
            "canary",
            Strategy::Canary {
                steps: vec![
                    CanaryStep::SetWeight(10),
                    CanaryStep::Analyze(Duration::from_secs(60)),
                    CanaryStep::Pause(Duration::from_secs(30)),
                    CanaryStep::SetWeight(50),
                    CanaryStep::Analyze(Duration::from_secs(60)),
                ],
            },
            || {
                FakeWorld::slots("1.0.0", "0.9.0")
                    .with_pending_migrations(&[("2", "add_orders_note", None)])
                    .with_gate(FakeGate::passing("error-rate"))
            },
            revert,
        ),
    ]
}

/// Calls a step's first forward call is numbered with, for fakes whose counters are shared.
fn nth_of(plan: &Plan, index: usize, same: impl Fn(&Step) -> bool) -> u32 {
    plan.steps[..index].iter().filter(|s| same(s)).count() as u32 + 1
}

fn measurements_before(plan: &Plan, index: usize, p: &AnalysisPolicy) -> u32 {
    plan.steps[..index]
        .iter()
        .map(|s| match s {
            Step::Analyze { duration, .. } => p.measurements(*duration),
            _ => 0,
        })
        .sum()
}

/// Make step `index` of `plan` fail; return a description, or `None` for steps with no failure
/// of their own (pauses are aborted by the operator instead).
fn inject_failure(
    world: &mut FakeWorld,
    plan: &Plan,
    index: usize,
    p: &Policies,
) -> Option<String> {
    let step = &plan.steps[index];
    let same_op = |s: &Step| s.op() == step.op();
    Some(match step {
        Step::Prepare { target, .. } => {
            world.target(target.as_str()).faults.fail_on("prepare", 1);
            format!("prepare fails on {target}")
        }
        Step::Activate { target, .. } => {
            world.target(target.as_str()).faults.fail_on("activate", 1);
            format!("activate fails on {target}")
        }
        Step::Stop { target } => {
            world.target(target.as_str()).faults.fail_on("stop", 1);
            format!("stop fails on {target}")
        }
        Step::AwaitHealthy { target, version } => {
            world
                .target(target.as_str())
                .mark_unhealthy(version.as_ref().unwrap().as_str());
            format!("{target} never becomes healthy")
        }
        Step::MaintenanceOn => {
            world.maintenance.faults.fail_on("enable", 1);
            "maintenance page cannot be enabled".into()
        }
        Step::MaintenanceOff => {
            world.maintenance.faults.fail_on("disable", 1);
            "maintenance page cannot be disabled".into()
        }
        Step::Backup => {
            world.migrations.faults.fail_on("backup", 1);
            "backup fails".into()
        }
        Step::Migrate => {
            let last = plan
                .snapshot
                .migrations
                .as_ref()
                .unwrap()
                .pending
                .last()
                .unwrap()
                .version
                .0
                .clone();
            world.migrations.fail_at(&last);
            format!("migration {last} fails (earlier ones applied)")
        }
        Step::Drain { .. } => {
            world
                .switch
                .faults
                .fail_on("drain", nth_of(plan, index, same_op));
            "drain fails".into()
        }
        Step::SetWeights { weights } => {
            world
                .switch
                .faults
                .fail_on("set_weights", nth_of(plan, index, same_op));
            format!("set weights {weights} fails")
        }
        Step::Analyze { name, .. } => {
            let before = measurements_before(plan, index, &p.analysis) as usize;
            let mut seq = vec![VerdictKind::Pass; before];
            seq.push(VerdictKind::Fail);
            world.gates = vec![Arc::new(FakeGate::sequence("error-rate", &seq))];
            format!("gate fails during {name}")
        }
        _ => return None,
    })
}

/// Records events and can cancel or abort at a chosen moment.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    cancel_at_step: Mutex<Option<(usize, CancellationToken)>>,
    abort_on_pause: Mutex<Option<deploy_core::Control>>,
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event) {
        self.events.lock().unwrap().push(event.clone());
        if let Event::StepStarted { index, .. } = event
            && let Some((at, token)) = &*self.cancel_at_step.lock().unwrap()
            && at == index
        {
            token.cancel();
        }
        if let Event::Paused { .. } = event
            && let Some(c) = &*self.abort_on_pause.lock().unwrap()
        {
            c.abort("aborted by the operator");
        }
    }
}

fn assert_back_where_it_was(
    before: &WorldState,
    world: &FakeWorld,
    cell: &str,
    report: &deploy_core::Report,
) {
    let after = world.state();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{cell}: outcome\n{report}"
    );
    assert_eq!(
        &after, before,
        "{cell}: the world is not back where it was\n{report}"
    );
    let rb = report.rollback.as_ref().expect("a rollback record");
    assert!(rb.mismatches.is_empty(), "{cell}: {:?}", rb.mismatches);
    assert!(!after.maintenance, "{cell}: maintenance left on");
}

/// Deploy `release()` with default options and no cancellation.
async fn deploy(engine: &Engine, strategy: &Strategy) -> deploy_core::Report {
    engine
        .deploy(
            strategy,
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

async fn plan_for(world: &FakeWorld, strategy: &Strategy, opts: &PlanOptions) -> Plan {
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    engine.plan(strategy, &release(), opts).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_strategy_promotes_without_faults() {
    for (name, strategy, make, opts) in cases() {
        let world = make();
        let engine = Engine::new(world.environment("prod")).with_policies(policies());
        let report = engine
            .deploy(&strategy, &release(), &opts, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::Promoted, "{name}\n{report}");
        let st = world.state();
        let v2 = Some(Version::new(NEW).unwrap());
        match name {
            "recreate" | "rolling" | "rolling_ahead" => {
                assert!(st.versions.values().all(|v| *v == v2), "{name}: {st:?}");
                assert!(st.running.values().all(|r| *r), "{name}: {st:?}");
            }
            _ => {
                assert_eq!(st.versions["green"], v2, "{name}");
                assert_eq!(
                    st.versions["blue"].as_ref().unwrap().as_str(),
                    "1.0.0",
                    "{name}: the old slot keeps the old release"
                );
                assert_eq!(st.weights.to_string(), "blue=0,green=100", "{name}");
            }
        }
        assert!(
            world.migrations.pending().is_empty(),
            "{name}: migrations applied"
        );
        assert!(!st.maintenance, "{name}");
        let final_state = report.final_state.as_ref().unwrap();
        assert_eq!(final_state.targets.len(), world.targets.len());
    }
}

#[tokio::test(start_paused = true)]
async fn fault_matrix_every_step_of_every_strategy_rolls_back_exactly() {
    let mut cells = 0;
    let mut per_kind: std::collections::BTreeMap<String, u32> = Default::default();
    for (name, strategy, make, opts) in cases() {
        let plan = plan_for(&make(), &strategy, &opts).await;
        for index in 0..plan.steps.len() {
            // 1. The step's own failure (a pause is aborted by the operator instead).
            // 2. Cancellation (Ctrl-C) as the step starts.
            // 3. For analyses: the gate errors beyond the consecutive error limit.
            for kind in ["failure", "cancel", "gate-error"] {
                let mut world = make();
                let recorder = Arc::new(Recorder::default());
                let cancel = CancellationToken::new();
                let what = match kind {
                    "failure" => match inject_failure(&mut world, &plan, index, &policies()) {
                        Some(w) => w,
                        None => "operator aborts the pause".to_owned(),
                    },
                    "cancel" => {
                        *recorder.cancel_at_step.lock().unwrap() = Some((index, cancel.clone()));
                        "cancelled".to_owned()
                    }
                    _ => {
                        let Step::Analyze { .. } = &plan.steps[index] else {
                            continue;
                        };
                        let before =
                            measurements_before(&plan, index, &policies().analysis) as usize;
                        let mut seq = vec![VerdictKind::Pass; before];
                        seq.push(VerdictKind::Error);
                        world.gates = vec![Arc::new(FakeGate::sequence("error-rate", &seq))];
                        "gate errors 5 times in a row".to_owned()
                    }
                };
                let engine = Engine::new(world.environment("prod"))
                    .with_policies(policies())
                    .with_observer(recorder.clone());
                if kind == "failure" && matches!(plan.steps[index], Step::Pause { .. }) {
                    *recorder.abort_on_pause.lock().unwrap() = Some(engine.control());
                }
                let before = world.state();
                let cell = format!(
                    "{name} / step {} ({}) / {what}",
                    index + 1,
                    plan.steps[index]
                );
                let report = engine.run(plan.clone(), &cancel).await.unwrap();
                assert_back_where_it_was(&before, &world, &cell, &report);
                // The faulty step failed, and nothing after its batch (the steps of the same
                // kind on other targets that run with it, and the prepares of the next batch
                // started beside health waits) was started.
                let failed = report
                    .steps
                    .iter()
                    .find(|s| s.error.is_some())
                    .expect("a failed step");
                let together = |i: usize, j: usize| {
                    let (a, b) = (&plan.steps[i], &plan.steps[j]);
                    a.op() == b.op()
                        || matches!(
                            (a, b),
                            (Step::AwaitHealthy { .. }, Step::Prepare { .. })
                                | (Step::Prepare { .. }, Step::AwaitHealthy { .. })
                        )
                };
                let batch_start = (0..=index)
                    .rev()
                    .take_while(|i| together(*i, index))
                    .last()
                    .unwrap_or(index);
                let mut batch_end = (index..plan.steps.len())
                    .take_while(|i| together(*i, index))
                    .last()
                    .unwrap_or(index);
                // Prepares ahead run on beside the batch's weights and analysis, and end
                // before the next batch starts.
                if matches!(plan.steps[batch_start], Step::AwaitHealthy { .. })
                    && matches!(plan.steps[index], Step::Prepare { .. })
                {
                    while matches!(
                        plan.steps.get(batch_end + 1),
                        Some(Step::SetWeights { .. } | Step::Analyze { .. })
                    ) {
                        batch_end += 1;
                    }
                }
                assert!(
                    (batch_start..=batch_end).contains(&failed.index),
                    "{cell}: the run must stop at the faulty step's batch\n{report}"
                );
                assert!(
                    report
                        .steps
                        .iter()
                        .any(|s| s.index == index && s.error.is_some()),
                    "{cell}: the faulty step is reported failed\n{report}"
                );
                assert!(
                    report.steps.iter().all(|s| s.index <= batch_end),
                    "{cell}: nothing after the faulty batch ran\n{report}"
                );
                cells += 1;
                *per_kind.entry(format!("{name}/{kind}")).or_default() += 1;
            }
        }
    }
    println!("fault matrix: {cells} cells, each rolled back to exactly the state before the run");
    for (k, n) in &per_kind {
        println!("  {k}: {n}");
    }
    assert!(cells >= 100, "expected a full matrix, got {cells} cells");
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_and_the_deploy_promotes() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("error-rate"));
    world
        .target("green")
        .faults
        .fail_transiently("activate", 1, 2);
    world.switch.faults.fail_transiently("set_weights", 1, 2);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(30),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(
        world.target("green").faults.calls("activate"),
        3,
        "two transient failures, then success"
    );
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    world.target("green").faults.fail_on("activate", 1);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let before = world.state();
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    // One forward call (no retry), one to put 0.9.0 back.
    assert_eq!(
        world.target("green").faults.calls("activate"),
        2,
        "no retry of a permanent error"
    );
    let acts: Vec<String> = world
        .target("green")
        .activations()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(acts, ["0.9.0"]);
    assert_eq!(world.state(), before);
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(reason.contains("step 2 (activate 2.0.0 on green) failed: activate (scripted fault) green: injected failure"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn rolling_rollback_is_fleet_wide() {
    let world = FakeWorld::fleet(8, "1.0.0");
    world.target("web-5").faults.fail_on("activate", 1);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::Rolling {
        batch: BatchSize::Count(2),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };
    let before = world.state();
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(
        world.state(),
        before,
        "hosts 1-4 were switched and must be rolled back too"
    );
    for i in 1..=4 {
        let acts: Vec<String> = world
            .target(&format!("web-{i}"))
            .activations()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(acts, ["2.0.0", "1.0.0"], "web-{i} went to 2.0.0 and back");
    }
    assert!(
        world.target("web-7").activations().is_empty(),
        "later batches were never touched"
    );
}

#[tokio::test(start_paused = true)]
async fn destructive_migration_is_refused_in_zero_downtime_strategies() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_pending_migrations(&[(
        "2",
        "drop_legacy",
        Some("DROP COLUMN"),
    )]);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let err = engine
        .deploy(
            &strategy,
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeployError::Plan(deploy_core::PlanError::DestructiveMigration { .. })
        ),
        "{err}"
    );
    assert_eq!(
        world.migrations.current().unwrap().0,
        "1",
        "nothing was migrated"
    );
    assert!(
        world.target("green").activations().is_empty(),
        "nothing was touched"
    );
}

#[tokio::test(start_paused = true)]
async fn additive_migrations_are_kept_on_rollback_by_default() {
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_pending_migrations(&[("2", "add_note", None)])
        .with_gate(FakeGate::failing("error-rate"));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(30),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(
        world.migrations.current().unwrap().0,
        "2",
        "the additive migration stays"
    );
    assert_eq!(
        world.migrations.backups().len(),
        1,
        "a backup was taken first"
    );
    assert!(
        report.notes.iter().any(|n| n.contains("additive")),
        "{:?}",
        report.notes
    );
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
}

#[tokio::test(start_paused = true)]
async fn weights_never_sit_between_old_and_new_after_a_failed_canary() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::sequence(
        "error-rate",
        &[VerdictKind::Pass, VerdictKind::Pass, VerdictKind::Fail],
    ));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(5),
            CanaryStep::Analyze(Duration::from_secs(20)),
            CanaryStep::SetWeight(50),
            CanaryStep::Analyze(Duration::from_secs(20)),
        ],
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    let history: Vec<String> = world
        .switch
        .history()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        history,
        [
            "blue=100,green=0",
            "blue=19,green=1",
            "blue=1,green=1",
            "blue=19,green=1",
            "blue=100,green=0"
        ]
    );
    let v = &report.verdicts;
    assert_eq!(v.len(), 3);
    assert_eq!(v[2].verdict.kind, VerdictKind::Fail);
    assert_eq!(v[2].verdict.value, Some(0.05));
    assert!(
        report
            .rollback
            .unwrap()
            .reason
            .contains("gate error-rate failed")
    );
}

#[tokio::test(start_paused = true)]
async fn analysis_timing_follows_the_policy_on_a_paused_clock() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("error-rate"));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(300),
    };
    let t0 = tokio::time::Instant::now();
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    assert_eq!(
        world.gates[0].evaluations(),
        30,
        "300 s bake / 10 s interval"
    );
    let bake = report
        .steps
        .iter()
        .find(|s| s.step.op() == "analyze")
        .unwrap();
    assert_eq!(bake.duration, Duration::from_secs(300));
    // Healthy threshold 2 at 1 s interval: the await step takes one interval.
    let healthy = report
        .steps
        .iter()
        .find(|s| s.step.op() == "await_healthy")
        .unwrap();
    assert_eq!(healthy.duration, Duration::from_secs(1));
    assert_eq!(t0.elapsed(), Duration::from_secs(301));
}

#[tokio::test(start_paused = true)]
async fn probe_deadline_fails_the_step_after_the_deadline() {
    // A target that never answers (refuses connections) is waited for until the deadline; one
    // that answers unhealthy fails earlier, at the unhealthy threshold (the next test).
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    world.target("green").mark_unreachable(NEW);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    let step = report
        .steps
        .iter()
        .find(|s| s.step.op() == "await_healthy")
        .unwrap();
    assert_eq!(step.duration, Duration::from_secs(10), "the probe deadline");
    assert!(
        step.error
            .as_ref()
            .unwrap()
            .message
            .contains("not healthy within 10s (11 checks); last: connection refused"),
        "{:?}",
        step.error
    );
}

#[tokio::test(start_paused = true)]
async fn answered_unhealthy_checks_fail_the_step_at_the_threshold() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    world.target("green").mark_unhealthy(NEW);
    let before = world.state();
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let report = deploy(&engine, &strategy).await;
    assert_back_where_it_was(&before, &world, "threshold", &report);
    let step = report
        .steps
        .iter()
        .find(|s| s.step.op() == "await_healthy")
        .unwrap();
    assert_eq!(
        step.duration,
        Duration::from_secs(2),
        "three checks one interval apart, not the 10 s deadline"
    );
    let error = step.error.as_ref().unwrap();
    assert_eq!(
        error.message,
        "wait until healthy: green: answered unhealthy 3 times in a row (HTTP 500); the probe's \
         unhealthy_threshold is 3",
    );
    assert!(!error.is_retryable());

    // 0 turns the threshold off: the deadline decides again.
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    world.target("green").mark_unhealthy(NEW);
    let mut p = policies();
    p.probe.unhealthy_threshold = 0;
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let report = deploy(&engine, &strategy).await;
    let step = report
        .steps
        .iter()
        .find(|s| s.step.op() == "await_healthy")
        .unwrap();
    assert_eq!(step.duration, Duration::from_secs(10), "the probe deadline");
}

#[tokio::test(start_paused = true)]
async fn run_deadline_rolls_back() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("error-rate"));
    let mut p = policies();
    p.deadline = Some(Duration::from_secs(100));
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(300),
    };
    let before = world.state();
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        report
            .rollback
            .as_ref()
            .unwrap()
            .reason
            .starts_with("the run's deadline of 1m 40s passed during step"),
        "{report}"
    );
    assert_eq!(world.state(), before);
}

#[tokio::test(start_paused = true)]
async fn no_data_and_inconclusive_policies() {
    // Default: no data counts as inconclusive, and inconclusive rolls back.
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::sequence("rate", &[VerdictKind::Inconclusive]));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(60),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.rollback.unwrap().reason.contains("inconclusive"));

    // Ignore: no-data measurements are not counted; one passing measurement is the evidence.
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::sequence(
        "rate",
        &[
            VerdictKind::Inconclusive,
            VerdictKind::Inconclusive,
            VerdictKind::Pass,
        ],
    ));
    let mut p = policies();
    p.analysis.no_data = deploy_core::policy::NoDataPolicy::Ignore;
    let engine = Engine::new(world.environment("prod")).with_policies(p.clone());
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");

    // Ignore, and no measurement ever had data: silence is no evidence, so it rolls back.
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::sequence("rate", &[VerdictKind::Inconclusive]));
    let before = world.state();
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report
            .rollback
            .as_ref()
            .unwrap()
            .reason
            .contains("no evidence that the release is good: gate(s) rate (6 without data, not counted) never passed"),
        "{report}"
    );
    assert_eq!(world.state(), before);

    // Pause on inconclusive: the operator promotes and the deploy carries on.
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::sequence(
        "rate",
        &[VerdictKind::Inconclusive, VerdictKind::Pass],
    ));
    let mut p = policies();
    p.analysis.on_inconclusive = deploy_core::policy::InconclusiveAction::Pause;
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let control = engine.control();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        control.promote();
    });
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("promoted by the operator"))
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_failure_limit_tolerates_isolated_failures() {
    use VerdictKind::{Fail, Pass};
    let seq = [Fail, Pass, Fail, Pass, Fail, Pass];
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::sequence("p99", &seq));
    let mut p = policies();
    p.analysis.failure_limit = 5;
    p.analysis.consecutive_failure_limit = Some(1);
    let engine = Engine::new(world.environment("prod")).with_policies(p.clone());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(60),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(
        report.outcome,
        Outcome::Promoted,
        "isolated failures are tolerated\n{report}"
    );

    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::sequence("p99", &[Pass, Fail, Fail]));
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        report
            .rollback
            .unwrap()
            .reason
            .contains("2 consecutive failure(s)")
    );
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_sessions_and_proceeds_or_fails_past_the_timeout() {
    let world = FakeWorld::fleet(2, "1.0.0");
    let switch = Arc::new(
        deploy_core::testing::FakeSwitch::new(&[("web-1", 1), ("web-2", 1)])
            .with_sessions("web-1", 10, 2),
    );
    let mut w = world;
    w.switch = switch.clone();
    let recorder = Arc::new(Recorder::default());
    let mut p = policies();
    p.drain.timeout = Duration::from_secs(30);
    p.drain.poll_interval = Duration::from_secs(1);
    let engine = Engine::new(w.environment("prod"))
        .with_policies(p.clone())
        .with_observer(recorder.clone());
    let strategy = Strategy::Rolling {
        batch: BatchSize::Count(1),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    let drained = recorder
        .events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            Event::Drained {
                target,
                duration,
                sessions_left,
            } if target.as_str() == "web-1" => Some((*duration, *sessions_left)),
            _ => None,
        });
    assert_eq!(
        drained,
        Some((Duration::from_secs(5), 0)),
        "10 sessions closing 2 per 1 s poll"
    );

    // Sessions that never close: proceed (default) with a note, cut them through the switch, or
    // fail and roll back.
    for (action, outcome) in [
        (DrainTimeoutAction::Proceed, Outcome::Promoted),
        (DrainTimeoutAction::Cut, Outcome::Promoted),
        (DrainTimeoutAction::Fail, Outcome::RolledBack),
    ] {
        let mut w = FakeWorld::fleet(2, "1.0.0");
        w.switch = Arc::new(
            deploy_core::testing::FakeSwitch::new(&[("web-1", 1), ("web-2", 1)])
                .with_sessions("web-1", 3, 0),
        );
        let mut p = p.clone();
        p.drain.on_timeout = action;
        let before = w.state();
        let engine = Engine::new(w.environment("prod")).with_policies(p);
        let report = deploy(&engine, &strategy).await;
        assert_eq!(report.outcome, outcome, "{action:?}\n{report}");
        if outcome == Outcome::RolledBack {
            assert_eq!(w.state(), before);
        } else {
            assert!(
                report
                    .notes
                    .iter()
                    .any(|n| n.contains("still had 3 session(s)")),
                "{:?}",
                report.notes
            );
        }
        if action == DrainTimeoutAction::Cut {
            assert!(
                report
                    .notes
                    .iter()
                    .any(|n| n.contains("cut them through the switch (0 left)")),
                "{:?}",
                report.notes
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pause_until_promoted_waits_for_the_operator() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(20), CanaryStep::PauseUntilPromoted],
    };
    let control = engine.control();
    let t0 = tokio::time::Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7200)).await;
        control.promote();
    });
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    assert!(t0.elapsed() >= Duration::from_secs(7200));
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
}

#[tokio::test]
async fn a_second_deploy_of_the_same_environment_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let strategy = Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(20), CanaryStep::PauseUntilPromoted],
    };
    let plan = engine
        .plan(&strategy, &release(), &PlanOptions::default())
        .await
        .unwrap();
    let first = engine.clone();
    let p1 = plan.clone();
    let handle = tokio::spawn(async move { first.run(p1, &CancellationToken::new()).await });
    // Wait for the first run to hold the lock.
    while !dir.path().join("lock").exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = engine
        .run(plan, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        DeployError::Locked {
            holder: Some(h), ..
        } => assert_eq!(h.pid, std::process::id()),
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("held by run"), "{err}");
    // A promotion only ends a pause the run is in: wait for it.
    while !engine.control().promote() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Promoted);
    assert!(!dir.path().join("lock").exists(), "the lock is released");
}

#[tokio::test(start_paused = true)]
async fn a_stale_lock_is_refused_until_broken_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    // A lock file whose OS lock nobody holds: its process died.
    std::fs::write(
        dir.path().join("lock"),
        r#"{"owner":"ci","pid":999999,"host":"gone","started_at":"2026-11-21T00:00:00Z","run_id":"old"}"#,
    )
    .unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let err = engine
        .deploy(
            &strategy,
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::StaleLock { .. }), "{err}");
    assert!(err.to_string().contains("pid 999999 on gone"), "{err}");
    assert!(
        world.target("green").activations().is_empty(),
        "nothing was touched"
    );
    // Breaking it explicitly lets deploys run again.
    let holder = engine.break_stale_lock().await.unwrap().unwrap();
    assert_eq!(holder.pid, 999999);
    assert!(!dir.path().join("lock").exists());
    assert!(engine.break_stale_lock().await.unwrap().is_none());
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Promoted);
}

#[tokio::test(start_paused = true)]
async fn a_batch_acts_on_its_targets_at_the_same_time() {
    for (parallelism, expected) in [(16, Duration::from_secs(2)), (1, Duration::from_secs(8))] {
        let world = FakeWorld::fleet(8, "1.0.0");
        for t in &world.targets {
            t.faults.delay("activate", Duration::from_secs(1));
        }
        let mut p = policies();
        p.probe.healthy_threshold = 1;
        p.parallelism = parallelism;
        let engine = Engine::new(world.environment("prod")).with_policies(p);
        let strategy = Strategy::Rolling {
            batch: BatchSize::Count(4),
            analysis: None,
            max_failed_targets: None,
            prepare: Default::default(),
        };
        let t0 = tokio::time::Instant::now();
        let report = deploy(&engine, &strategy).await;
        assert_eq!(report.outcome, Outcome::Promoted, "{report}");
        // Two batches of four one-second activations.
        assert_eq!(t0.elapsed(), expected, "parallelism {parallelism}");
        assert!(
            world
                .state()
                .versions
                .values()
                .all(|v| v.as_ref().unwrap().as_str() == NEW)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_prepared_ahead_never_holds_the_batch_before_it_out_of_the_traffic() {
    // Each prepare takes 10 s, each health wait 1 s (two checks 1 s apart). Batches of two, of
    // one (a health wait alone beside the prepares), and of three with parallelism 4 (one
    // prepare fits beside the health waits, two more follow in the background).
    for (batch, parallelism) in [(2, 16), (1, 16), (3, 4)] {
        let case = format!("batch {batch}, parallelism {parallelism}");
        let world = FakeWorld::fleet(6, "1.0.0");
        for t in &world.targets {
            t.faults.delay("prepare", Duration::from_secs(10));
        }
        let starts = Arc::new(StepStarts::default());
        let mut p = policies();
        p.parallelism = parallelism;
        let engine = Engine::new(world.environment("prod"))
            .with_policies(p)
            .with_observer(starts.clone());
        let strategy = Strategy::Rolling {
            batch: BatchSize::Count(batch),
            analysis: None,
            max_failed_targets: None,
            prepare: PrepareOrder::BatchAhead,
        };
        let t0 = tokio::time::Instant::now();
        let report = deploy(&engine, &strategy).await;
        println!("{case}\n{report}");
        assert_eq!(report.outcome, Outcome::Promoted, "{case}\n{report}");
        assert!(
            world
                .state()
                .versions
                .values()
                .all(|v| v.as_ref().unwrap().as_str() == NEW),
            "{case}"
        );
        // When each step started and ended, on tokio's clock (the report's start is the
        // wall's).
        let span = |op: &str, target: Option<&str>| {
            let s = report
                .steps
                .iter()
                .find(|s| {
                    s.step.op() == op
                        && target.is_none_or(|t| s.step.target().is_some_and(|x| x.as_str() == t))
                })
                .unwrap_or_else(|| panic!("{case}: no {op} of {target:?} in {report}"));
            let start = starts.at(s.index) - t0;
            (start, start + s.duration)
        };
        let secs = Duration::from_secs;
        // The first batch waits for its health from 10 s to 11 s, and the next target's
        // prepare runs from 10 s, beside that wait, to 20 s ...
        let next = format!("web-{}", batch + 1);
        assert_eq!(
            span("await_healthy", Some("web-1")),
            (secs(10), secs(11)),
            "{case}"
        );
        assert_eq!(
            span("prepare", Some(&next)),
            (secs(10), secs(20)),
            "{case}\n{report}"
        );
        // ... but the first batch gets its weights back when its health waits end, at 11 s.
        assert_eq!(span("set_weights", None).0, secs(11), "{case}\n{report}");
        // Every target is drained only once prepared.
        for i in batch + 1..=6 {
            let t = format!("web-{i}");
            assert!(
                span("drain", Some(&t)).0 >= span("prepare", Some(&t)).1,
                "{case}: {t}\n{report}"
            );
        }
    }
}

/// When each step started, on tokio's clock.
#[derive(Debug, Default)]
struct StepStarts(Mutex<std::collections::HashMap<usize, tokio::time::Instant>>);

impl StepStarts {
    fn at(&self, index: usize) -> tokio::time::Instant {
        self.0.lock().unwrap()[&index]
    }
}

impl Observer for StepStarts {
    fn on_event(&self, event: &Event) {
        if let Event::StepStarted { index, .. } = event {
            self.0
                .lock()
                .unwrap()
                .insert(*index, tokio::time::Instant::now());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_to_an_empty_slot_rolls_back_to_nothing_served() {
    // green has never run anything.
    let mut world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::failing("error-rate"));
    let green = Arc::new(deploy_core::testing::FakeTarget::new("green"));
    world.targets[1] = green.clone();
    world.probe = Arc::new(deploy_core::testing::FakeProbe::new(world.targets.clone()));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(20),
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report.rollback.as_ref().unwrap().mismatches.is_empty(),
        "{report}"
    );
    assert!(!green.is_running(), "the undo stopped the new release");
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
}

#[tokio::test(start_paused = true)]
async fn a_destructive_migration_that_appears_after_planning_is_refused_when_the_run_reaches_it() {
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_pending_migrations(&[(
        "2",
        "drop_legacy",
        Some("DROP COLUMN"),
    )]);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    // Planned while allowed (an old or hand-made plan), run while not.
    let mut opts = PlanOptions::default();
    opts.allow_destructive_migrations = true;
    let mut plan = engine.plan(&strategy, &release(), &opts).await.unwrap();
    plan.options.allow_destructive_migrations = false;
    let before = world.state();
    let report = engine.run(plan, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report
            .rollback
            .as_ref()
            .unwrap()
            .reason
            .contains("refused: destructive migration(s) 2 drop_legacy"),
        "{report}"
    );
    assert_eq!(
        world.migrations.faults.calls("migrate"),
        0,
        "nothing was migrated"
    );
    assert_eq!(world.state(), before);
}

/// The smoke checks' verdicts are recorded even when another gate of the same measurement was
/// inconclusive and ended the analysis (before, the first gate's verdict ended it and the smoke
/// checks never ran), and the run rolls back on the inconclusive one.
#[tokio::test(start_paused = true)]
async fn smoke_checks_run_when_another_gate_is_inconclusive() {
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::sequence(
            "error-rate",
            &[VerdictKind::Inconclusive],
        ))
        .with_gate(FakeGate::passing("smoke"));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(10),
    };
    let report = engine
        .deploy(
            &strategy,
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let gates: Vec<(&str, VerdictKind)> = report
        .verdicts
        .iter()
        .map(|v| (v.gate.as_str(), v.verdict.kind))
        .collect();
    assert_eq!(
        gates,
        [
            ("error-rate", VerdictKind::Inconclusive),
            ("smoke", VerdictKind::Pass)
        ],
        "{report}"
    );
    assert_eq!(world.state().weights.to_string(), "blue=100,green=0");
}

#[tokio::test(start_paused = true)]
async fn the_live_state_is_read_from_every_target_at_once() {
    // Each read of a target's version takes one second (an SSH host's first connection).
    for (parallelism, expected) in [(16, 1), (4, 2), (1, 8)] {
        let world = FakeWorld::fleet(8, "1.0.0");
        for t in &world.targets {
            t.faults.delay("current", Duration::from_secs(1));
        }
        let mut p = policies();
        p.parallelism = parallelism;
        let engine = Engine::new(world.environment("prod")).with_policies(p);
        let t0 = tokio::time::Instant::now();
        let snapshot = engine.snapshot().await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(expected),
            "parallelism {parallelism}"
        );
        // In the environment's order, whatever order the reads ended in.
        let ids: Vec<_> = snapshot.targets.iter().map(|t| t.id.to_string()).collect();
        let world_ids: Vec<_> = (1..=8).map(|i| format!("web-{i}")).collect();
        assert_eq!(ids, world_ids);
    }
}

/// When the run's rollback started and when the run finished, on the test's (paused) clock.
#[derive(Debug, Default)]
struct UndoClock(Mutex<(Option<tokio::time::Instant>, Option<tokio::time::Instant>)>);

impl Observer for UndoClock {
    fn on_event(&self, event: &Event) {
        let mut g = self.0.lock().unwrap();
        match event {
            Event::RollbackStarted { .. } => g.0 = Some(tokio::time::Instant::now()),
            Event::RunFinished { .. } => g.1 = Some(tokio::time::Instant::now()),
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollback_undoes_each_batch_together_as_it_was_done() {
    // Eight targets in batches of four; each activation takes a second; the new release is
    // broken on the last target, so the second batch fails at the probe's deadline.
    let world = FakeWorld::fleet(8, "1.0.0");
    for t in &world.targets {
        t.faults.delay("activate", Duration::from_secs(1));
    }
    world.targets[7].mark_unhealthy(NEW);
    let mut p = policies();
    p.probe.healthy_threshold = 1;
    let clock = Arc::new(UndoClock::default());
    let engine = Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_observer(clock.clone());
    let strategy = Strategy::Rolling {
        batch: BatchSize::Count(4),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };
    let before = world.state();
    let t0 = tokio::time::Instant::now();
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let (Some(rollback), Some(end)) = *clock.0.lock().unwrap() else {
        panic!("no rollback in {report}")
    };
    // Forward: two batches of one-second activations, the second one's wait ends at its third
    // unhealthy answer (2 s). Undo: per batch, the four re-activations together (1 s), then
    // their health waits together (healthy at the first check) — 2 s in all, where one undo at
    // a time took 8 s.
    assert_eq!(rollback - t0, Duration::from_secs(4), "{report}");
    assert_eq!(end - rollback, Duration::from_secs(2), "{report}");
    assert_back_where_it_was(&before, &world, "batch undo", &report);
}

/// Deploy `release()` to `world` rolling by batches of `batch` with the failure budget `budget`.
async fn deploy_with_budget(
    world: &FakeWorld,
    batch: u32,
    budget: TargetBudget,
) -> deploy_core::Report {
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::Rolling {
        batch: BatchSize::Count(batch),
        analysis: None,
        max_failed_targets: Some(budget),
        prepare: Default::default(),
    };
    deploy(&engine, &strategy).await
}

#[tokio::test(start_paused = true)]
async fn a_failure_budget_takes_a_failed_target_out_and_carries_on() {
    let world = FakeWorld::fleet(8, "1.0.0");
    world.targets[5].mark_unhealthy(NEW);
    let before = world.state();
    let report = deploy_with_budget(&world, 2, TargetBudget::Count(1)).await;
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    assert!(report.rollback.is_none(), "{report}");
    let given_up: Vec<_> = report
        .failed_targets
        .iter()
        .map(|f| f.target.to_string())
        .collect();
    assert_eq!(given_up, ["web-6"], "{report}");
    assert!(
        report.failed_targets[0].reason.contains("web-6"),
        "{report}"
    );
    // Live: web-6 runs its old release out of the traffic; every other target runs the new
    // one with its weight back.
    assert_left_out_alone(&world, &before, "web-6");
    // The batches after web-6's went on: web-7 and web-8 were activated.
    assert_eq!(world.target("web-8").activations().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_target_whose_prepare_ahead_fails_is_given_up_before_it_is_drained() {
    let world = FakeWorld::fleet(6, "1.0.0");
    world.target("web-4").faults.fail_on("prepare", 1);
    let before = world.state();
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let strategy = Strategy::Rolling {
        batch: BatchSize::Count(2),
        analysis: None,
        max_failed_targets: Some(TargetBudget::Count(1)),
        prepare: PrepareOrder::BatchAhead,
    };
    let report = deploy(&engine, &strategy).await;
    println!("{report}");
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    let given_up: Vec<_> = report
        .failed_targets
        .iter()
        .map(|f| f.target.to_string())
        .collect();
    assert_eq!(given_up, ["web-4"], "{report}");
    // Never drained nor activated: taken out of the traffic on its old release.
    assert!(
        !report
            .steps
            .iter()
            .any(|s| s.step.target().is_some_and(|t| t.as_str() == "web-4")
                && matches!(s.step, Step::Drain { .. } | Step::Activate { .. })),
        "{report}"
    );
    assert!(world.target("web-4").activations().is_empty());
    assert_left_out_alone(&world, &before, "web-4");
}

/// `out` runs 1.0.0 at weight 0; every other target runs the new release at its weight from
/// `before`.
fn assert_left_out_alone(world: &FakeWorld, before: &WorldState, out: &str) {
    let after = world.state();
    for (name, version) in &after.versions {
        let want = if name == out { "1.0.0" } else { NEW };
        assert_eq!(version.as_ref().unwrap().as_str(), want, "{name}");
    }
    for (t, w) in after.weights.iter() {
        let want = if t.as_str() == out {
            0
        } else {
            before.weights.get(t).unwrap()
        };
        assert_eq!(w, want, "{t}");
    }
}

#[tokio::test(start_paused = true)]
async fn one_failure_more_than_the_budget_rolls_the_whole_fleet_back() {
    let world = FakeWorld::fleet(8, "1.0.0");
    world.targets[1].mark_unhealthy(NEW);
    world.targets[6].mark_unhealthy(NEW);
    let before = world.state();
    let report = deploy_with_budget(&world, 2, TargetBudget::Count(1)).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(
        reason.contains("2 target(s) failed in all, more than max_failed_targets allows (1)"),
        "{reason}"
    );
    // Everything is back, web-2 (given up on first) included: its weight too.
    assert_back_where_it_was(&before, &world, "one failure more than the budget", &report);
}

#[tokio::test(start_paused = true)]
async fn a_percentage_budget_rounds_down_and_never_covers_the_whole_fleet() {
    assert_eq!(TargetBudget::Percent(10).of(8), 0);
    assert_eq!(TargetBudget::Percent(25).of(8), 2);
    assert_eq!(TargetBudget::Percent(100).of(8), 7);
    assert_eq!(TargetBudget::Count(9).of(8), 7);
    // 10 % of 8 targets is none: the first failure rolls back.
    let world = FakeWorld::fleet(8, "1.0.0");
    world.targets[0].mark_unhealthy(NEW);
    let report = deploy_with_budget(&world, 4, TargetBudget::Percent(10)).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_target_given_up_before_its_drain_gets_its_weight_back_when_the_fleet_rolls_back() {
    // web-2 fails to unpack the release (given up on: out of the traffic before any drain),
    // then web-7 fails its health: one failure more than the budget.
    let world = FakeWorld::fleet(8, "1.0.0");
    world.targets[1].faults.fail_on("prepare", 1);
    world.targets[6].mark_unhealthy(NEW);
    let before = world.state();
    let report = deploy_with_budget(&world, 2, TargetBudget::Count(1)).await;
    assert!(report.failed_targets.is_empty(), "{report}");
    // web-2's weight is back too.
    assert_back_where_it_was(&before, &world, "given up before its drain", &report);
}

#[tokio::test(start_paused = true)]
async fn a_target_given_up_before_its_drain_is_skipped_and_out_of_the_traffic() {
    let world = FakeWorld::fleet(4, "1.0.0");
    world.targets[1].faults.fail_on("prepare", 1);
    let report = deploy_with_budget(&world, 2, TargetBudget::Count(1)).await;
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    assert!(
        !report
            .steps
            .iter()
            .any(|s| s.step.op() == "activate" && s.step.target().unwrap().as_str() == "web-2"),
        "{report}"
    );
    let after = world.state();
    assert_eq!(after.versions["web-2"].as_ref().unwrap().as_str(), "1.0.0");
    assert_eq!(after.weights.get(&"web-2".parse().unwrap()), Some(0));
    assert!(world.target("web-2").activations().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_target_the_rollback_cannot_put_back_gets_no_traffic_back() {
    // web-3 fails its health in the second batch; undoing the first batch, web-1's
    // re-activation of 1.0.0 fails: it still runs the release being rolled back.
    let world = FakeWorld::fleet(4, "1.0.0");
    world.targets[2].mark_unhealthy(NEW);
    world.targets[0].faults.fail_on("activate", 2);
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let report = deploy(
        &engine,
        &Strategy::Rolling {
            batch: BatchSize::Count(2),
            analysis: None,
            max_failed_targets: None,
            prepare: Default::default(),
        },
    )
    .await;
    assert_eq!(report.outcome, Outcome::Failed, "{report}");
    let after = world.state();
    assert_eq!(after.versions["web-1"].as_ref().unwrap().as_str(), NEW);
    // Out of the traffic rather than serving the release the run rolled back from; the others
    // are back with their weights.
    let weight = |t: &str| after.weights.get(&t.parse().unwrap()).unwrap();
    assert_eq!(weight("web-1"), 0, "{report}");
    for t in ["web-2", "web-3", "web-4"] {
        assert_eq!(weight(t), 1, "{t}: {report}");
        assert_eq!(after.versions[t].as_ref().unwrap().as_str(), "1.0.0", "{t}");
    }
    let rollback = report.rollback.as_ref().unwrap();
    assert!(
        rollback.steps.iter().any(|u| u
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("kept out of the traffic"))),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_reads_what_undoes_its_steps_from_every_target_at_once() {
    // Each read of a target's version takes one second (an SSH round trip on a busy host):
    // the four activations of the batch read their inverse together, so each step of the batch
    // lasts one second, where reading them one after another made the first last four.
    let world = FakeWorld::fleet(4, "1.0.0");
    for t in &world.targets {
        t.faults.delay("current", Duration::from_secs(1));
    }
    let mut p = policies();
    p.probe.healthy_threshold = 1;
    let engine = Engine::new(world.environment("prod")).with_policies(p);
    let report = deploy(
        &engine,
        &Strategy::Rolling {
            batch: BatchSize::Count(4),
            analysis: None,
            max_failed_targets: None,
            prepare: Default::default(),
        },
    )
    .await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let activations: Vec<Duration> = report
        .steps
        .iter()
        .filter(|s| matches!(s.step, Step::Activate { .. }))
        .map(|s| s.duration)
        .collect();
    assert_eq!(activations, [Duration::from_secs(1); 4], "{report}");
}
