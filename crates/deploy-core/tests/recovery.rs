//! A deploy killed at any step (its run dropped right after the journal write, before or after
//! the step acted) is finished by a new engine from the journal: rolled back to exactly the state
//! before the run, or resumed to exactly the state of a clean deploy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::event::{Event, Observer};
use deploy_core::testing::{FakeGate, FakeWorld, Faults, WorldState};
use deploy_core::{
    BatchSize, CanaryStep, Engine, PlanOptions, PrepareOrder, Release, SchemaRollback, Step,
    Strategy, Version,
};
use deploy_core::{Outcome, Policies, Recovery};
use tokio_util::sync::CancellationToken;

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_secs(1);
    p.probe.deadline = Duration::from_secs(10);
    p.analysis.interval = Duration::from_secs(10);
    p
}

fn release() -> Release {
    Release::new(Version::new("2.0.0").unwrap())
}

type Case = (&'static str, Strategy, fn() -> FakeWorld);

fn cases() -> Vec<Case> {
    vec![
        ("recreate", Strategy::Recreate {}, || {
            FakeWorld::fleet(2, "1.0.0").with_pending_migrations(&[(
                "2",
                "drop_legacy",
                Some("DROP COLUMN"),
            )])
        }),
        (
            "rolling",
            Strategy::Rolling {
                batch: BatchSize::Count(2),
                analysis: Some(Duration::from_secs(20)),
                max_failed_targets: None,
                prepare: Default::default(),
            },
            || {
                FakeWorld::fleet(4, "1.0.0")
                    .with_pending_migrations(&[("2", "add_note", None)])
                    .with_gate(FakeGate::passing("errors"))
            },
        ),
        (
            "rolling_ahead",
            Strategy::Rolling {
                batch: BatchSize::Count(2),
                analysis: Some(Duration::from_secs(20)),
                max_failed_targets: None,
                prepare: PrepareOrder::BatchAhead,
            },
            || FakeWorld::fleet(6, "1.0.0").with_gate(FakeGate::passing("errors")),
        ),
        (
            "blue_green",
            Strategy::BlueGreen {
                pre_switch_analysis: Some(Duration::from_secs(20)),
                bake: Duration::from_secs(20),
            },
            || {
                FakeWorld::slots("1.0.0", "0.9.0")
                    .with_pending_migrations(&[("2", "add_note", None)])
                    .with_gate(FakeGate::passing("errors"))
            },
        ),
        (
            "canary",
            Strategy::Canary {
                steps: vec![
                    CanaryStep::SetWeight(10),
                    CanaryStep::Analyze(Duration::from_secs(20)),
                    CanaryStep::Pause(Duration::from_secs(30)),
                    CanaryStep::SetWeight(50),
                ],
            },
            || {
                FakeWorld::slots("1.0.0", "0.9.0")
                    .with_pending_migrations(&[("2", "add_note", None)])
                    .with_gate(FakeGate::passing("errors"))
            },
        ),
    ]
}

/// The fake method that acts in `step`, and the fakes that count it.
fn acting_method<'w>(world: &'w FakeWorld, step: &Step) -> Option<(&'w Faults, &'static str)> {
    Some(match step {
        Step::Prepare { target, .. } => (&world.target(target.as_str()).faults, "prepare"),
        Step::Activate { target, .. } => (&world.target(target.as_str()).faults, "activate"),
        Step::Stop { target } => (&world.target(target.as_str()).faults, "stop"),
        Step::AwaitHealthy { .. } => (&world.probe.faults, "check"),
        Step::MaintenanceOn => (&world.maintenance.faults, "enable"),
        Step::MaintenanceOff => (&world.maintenance.faults, "disable"),
        Step::Backup => (&world.migrations.faults, "backup"),
        Step::Migrate => (&world.migrations.faults, "migrate"),
        Step::Drain { .. } => (&world.switch.faults, "drain"),
        Step::SetWeights { .. } => (&world.switch.faults, "set_weights"),
        Step::Analyze { .. } => (&world.gates[0].faults, "evaluate"),
        _ => return None,
    })
}

/// Installs a hang in the step being killed as it starts, and notices when the run reached it.
#[derive(Debug)]
struct Killer {
    index: usize,
    after_act: bool,
    world: Arc<FakeWorld>,
    /// (method faults pointer is not Send-friendly to keep; store the expected call count)
    armed: Mutex<Option<u32>>,
    paused: Mutex<bool>,
}

impl Observer for Killer {
    fn on_event(&self, event: &Event) {
        match event {
            Event::StepStarted { index, step } if *index == self.index => {
                if let Some((faults, method)) = acting_method(&self.world, step) {
                    let next = faults.calls(method) + 1;
                    if self.after_act {
                        faults.hang_after(method, next);
                    } else {
                        faults.hang_on(method, next);
                    }
                    *self.armed.lock().unwrap() = Some(next);
                }
            }
            Event::Paused { .. } => *self.paused.lock().unwrap() = true,
            _ => {}
        }
    }
}

impl Killer {
    fn reached(&self, step: &Step) -> bool {
        match (
            acting_method(&self.world, step),
            *self.armed.lock().unwrap(),
        ) {
            (Some((faults, method)), Some(n)) => faults.calls(method) >= n,
            (None, _) => *self.paused.lock().unwrap(),
            _ => false,
        }
    }
}

fn clear_faults(world: &FakeWorld) {
    for t in &world.targets {
        t.faults.clear();
    }
    world.switch.faults.clear();
    world.probe.faults.clear();
    world.migrations.faults.clear();
    world.maintenance.faults.clear();
    for g in &world.gates {
        g.faults.clear();
    }
}

async fn promoted_state(
    make: fn() -> FakeWorld,
    strategy: &Strategy,
    opts: &PlanOptions,
) -> WorldState {
    let world = make();
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let report = engine
        .deploy(strategy, &release(), opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted);
    world.state()
}

#[tokio::test(start_paused = true)]
async fn a_run_killed_at_any_step_is_rolled_back_or_resumed_from_its_journal() {
    let mut opts = PlanOptions::default();
    opts.schema_rollback = SchemaRollback::Revert;
    let mut cells = 0;
    for (name, strategy, make) in cases() {
        let expected_promoted = promoted_state(make, &strategy, &opts).await;
        let steps = {
            let w = make();
            Engine::new(w.environment("prod"))
                .plan(&strategy, &release(), &opts)
                .await
                .unwrap()
                .steps
        };
        for (index, step) in steps.iter().enumerate() {
            for after_act in [false, true] {
                if after_act && acting_method(&make(), step).is_none() {
                    continue;
                }
                for mode in [Recovery::Rollback, Recovery::Resume] {
                    let cell = format!(
                        "{name} / killed at step {} ({}) {} acting / {mode:?}",
                        index + 1,
                        step,
                        if after_act { "after" } else { "before" }
                    );
                    let dir = tempfile::tempdir().unwrap();
                    let world = Arc::new(make());
                    let before = world.state();
                    let killer = Arc::new(Killer {
                        index,
                        after_act,
                        world: world.clone(),
                        armed: Mutex::new(None),
                        paused: Mutex::new(false),
                    });
                    let engine = Engine::new(world.environment("prod"))
                        .with_policies(policies())
                        .with_state_dir(dir.path())
                        .with_observer(killer.clone());
                    let plan = engine.plan(&strategy, &release(), &opts).await.unwrap();
                    {
                        let cancel = CancellationToken::new();
                        let run = engine.run(plan, &cancel);
                        tokio::pin!(run);
                        loop {
                            tokio::select! {
                                r = &mut run => panic!("{cell}: the run finished instead of being killed: {:?}", r.map(|r| r.outcome)),
                                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                            }
                            if killer.reached(step) {
                                break;
                            }
                        }
                        // Dropping the run here is the kill: nothing after this point runs.
                    }
                    clear_faults(&world);

                    let fresh = Engine::new(world.environment("prod"))
                        .with_policies(policies())
                        .with_state_dir(dir.path());
                    let run_id = fresh
                        .unfinished_run()
                        .await
                        .unwrap()
                        .unwrap_or_else(|| panic!("{cell}: no unfinished journal"));
                    let journal = dir.path().join("runs").join(format!("{run_id}.jsonl"));
                    let st = deploy_core::journal::JournalState::read(&journal).unwrap();
                    // Steps of one batch finish together, so the journal points at the batch
                    // (a batch prepared ahead starts with the health waits' batch, and its
                    // prepares may still run beside the weights and analysis after it).
                    let batch_head = &st.plan.steps[st.next_index];
                    let ahead_running = matches!(batch_head, Step::Prepare { .. })
                        && st.plan.steps[st.next_index..=index].iter().all(|s| {
                            matches!(
                                s,
                                Step::Prepare { .. }
                                    | Step::SetWeights { .. }
                                    | Step::Analyze { .. }
                            )
                        });
                    assert!(
                        st.next_index <= index
                            && (batch_head.op() == step.op()
                                || ahead_running
                                || matches!(
                                    (batch_head, step),
                                    (Step::AwaitHealthy { .. }, Step::Prepare { .. })
                                )),
                        "{cell}: the journal knows where the run stopped"
                    );
                    let report = fresh
                        .recover(mode, &CancellationToken::new())
                        .await
                        .unwrap()
                        .expect("a run to recover");
                    match mode {
                        Recovery::Rollback => {
                            assert_eq!(report.outcome, Outcome::RolledBack, "{cell}\n{report}");
                            assert_eq!(world.state(), before, "{cell}\n{report}");
                        }
                        Recovery::Resume => {
                            assert_eq!(report.outcome, Outcome::Promoted, "{cell}\n{report}");
                            assert_eq!(world.state(), expected_promoted, "{cell}\n{report}");
                        }
                    }
                    assert!(
                        fresh.unfinished_run().await.unwrap().is_none(),
                        "{cell}: the journal is finished"
                    );
                    assert!(
                        !dir.path().join("lock").exists(),
                        "{cell}: the lock is released"
                    );
                    cells += 1;
                }
            }
        }
    }
    println!(
        "journal recovery: {cells} kill points recovered (rolled back or resumed) to a consistent state"
    );
    assert!(cells >= 100, "{cells}");
}

#[tokio::test]
async fn recovery_with_nothing_to_recover_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod")).with_state_dir(dir.path());
    assert!(
        engine
            .recover(Recovery::Resume, &CancellationToken::new())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_leaves_a_journal_and_a_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
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
    let journal = dir
        .path()
        .join("runs")
        .join(format!("{}.jsonl", report.run_id));
    let text = std::fs::read_to_string(&journal).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.first().unwrap()["record"], "started");
    assert_eq!(records.last().unwrap()["record"], "finished");
    assert_eq!(records.last().unwrap()["outcome"], "promoted");
    // Every step's inverse is journaled before the step's result.
    let started: Vec<u64> = records
        .iter()
        .filter(|r| r["record"] == "step_started")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(started, (0..report.steps.len() as u64).collect::<Vec<_>>());
    let activate = records
        .iter()
        .find(|r| r["record"] == "step_started" && r["index"] == 1)
        .unwrap();
    assert_eq!(activate["inverse"][0]["op"], "activate");
    assert_eq!(activate["inverse"][0]["version"], "0.9.0");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(journal.with_extension("report.json")).unwrap())
            .unwrap();
    assert_eq!(saved["outcome"], "promoted");
    assert_eq!(saved["steps"].as_array().unwrap().len(), report.steps.len());
}

#[test]
fn a_torn_last_line_is_ignored_but_garbage_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let engine = Engine::new(world.environment("prod"))
            .with_policies(policies())
            .with_state_dir(dir.path());
        let strategy = Strategy::BlueGreen {
            pre_switch_analysis: None,
            bake: Duration::ZERO,
        };
        engine
            .deploy(
                &strategy,
                &release(),
                &PlanOptions::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap()
    });
    let path = dir
        .path()
        .join("runs")
        .join(format!("{}.jsonl", report.run_id));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop(); // drop `finished`
    let torn = format!("{}\n{{\"record\":\"step_fin", lines.join("\n"));
    std::fs::write(&path, &torn).unwrap();
    let st = deploy_core::journal::JournalState::read(&path).unwrap();
    assert!(st.outcome.is_none());
    let mut broken: Vec<String> = lines.iter().map(ToString::to_string).collect();
    broken.insert(2, "not json".into());
    std::fs::write(&path, broken.join("\n")).unwrap();
    let err = deploy_core::journal::JournalState::read(&path).unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[tokio::test]
async fn another_process_promotes_or_aborts_a_paused_run_and_reads_its_status() {
    use deploy_core::ControlRequest;
    for request in [
        ControlRequest::Promote,
        ControlRequest::Abort {
            reason: "error budget burnt".into(),
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let world = FakeWorld::slots("1.0.0", "0.9.0");
        let mut p = policies();
        p.probe.interval = Duration::from_millis(1);
        p.probe.healthy_threshold = 1;
        let runner = Engine::new(world.environment("prod"))
            .with_policies(p.clone())
            .with_state_dir(dir.path());
        let strategy = Strategy::Canary {
            steps: vec![CanaryStep::SetWeight(20), CanaryStep::PauseUntilPromoted],
        };
        let run = tokio::spawn(async move {
            runner
                .deploy(
                    &strategy,
                    &release(),
                    &PlanOptions::default(),
                    &CancellationToken::new(),
                )
                .await
                .unwrap()
        });
        // The operator's process: its own engine on the same state directory.
        let operator = Engine::new(world.environment("prod"))
            .with_policies(p)
            .with_state_dir(dir.path());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = operator.status().await.unwrap()
                && matches!(s.current_step, Some(Step::Pause { duration: None }))
            {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the run never paused"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let text = status.to_string();
        assert!(
            text.contains(
                "of 6 steps done; at: pause until promoted; PAUSED (until promoted); locked by run"
            ),
            "{text}"
        );
        assert_eq!(status.lock.as_ref().unwrap().pid, std::process::id());
        assert!(!status.lock_stale);
        assert_eq!(world.switch.current().to_string(), "blue=4,green=1");

        operator.request(&request).await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        let after = operator.status().await.unwrap().unwrap();
        assert_eq!(after.outcome, Some(report.outcome));
        assert!(after.lock.is_none(), "the lock is released");
        match request {
            ControlRequest::Promote => {
                assert_eq!(report.outcome, Outcome::Promoted, "{report}");
                assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
            }
            ControlRequest::Abort { .. } => {
                assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
                assert!(
                    report
                        .rollback
                        .unwrap()
                        .reason
                        .contains("aborted by the operator: error budget burnt")
                );
                assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn status_reports_a_stale_lock_of_a_killed_run() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(FakeWorld::slots("1.0.0", "0.9.0"));
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
    // Kill the run at its pause, leaving its lock file behind as a dead process would.
    let cancel = CancellationToken::new();
    let lock_copy = {
        let run = engine.run(plan, &cancel);
        tokio::pin!(run);
        loop {
            tokio::select! {
                _ = &mut run => panic!("finished"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if let Some(s) = engine.status().await.unwrap()
                && matches!(s.current_step, Some(Step::Pause { .. }))
            {
                break std::fs::read(dir.path().join("lock")).unwrap();
            }
        }
    };
    std::fs::write(dir.path().join("lock"), lock_copy).unwrap();
    let status = engine.status().await.unwrap().unwrap();
    assert!(status.lock_stale, "{status}");
    assert!(status.to_string().contains("STALE lock"), "{status}");
    let report = engine
        .recover(Recovery::Rollback, &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
    assert!(engine.status().await.unwrap().unwrap().lock.is_none());
}
