//! The engine's two rules, on the fakes: a release is promoted only on evidence, and the live
//! world — not the journal — says where a run stands. Each test asserts the world at the end.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::hooks::{Hook, HookAction, HookContext, HookPoint};
use deploy_core::journal::JournalState;
use deploy_core::testing::{FakeGate, FakeWorld};
use deploy_core::{
    CanaryStep, DeployError, Engine, PlanError, PlanOptions, Release, Step, Strategy, Target,
    TargetId, TrafficSwitch, VerdictKind, Version, Weights,
};
use deploy_core::{ControlRequest, Outcome, Policies, Recovery};
use tokio_util::sync::CancellationToken;

fn release() -> Release {
    Release::new(Version::new("2.0.0").unwrap())
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_secs(1);
    p.probe.deadline = Duration::from_secs(10);
    p.analysis.interval = Duration::from_secs(10);
    p.analysis.timeout = Duration::from_secs(10);
    p
}

fn weights(blue: u32, green: u32) -> Weights {
    Weights::new()
        .with(TargetId::new("blue").unwrap(), blue)
        .with(TargetId::new("green").unwrap(), green)
}

fn bake(d: u64) -> Strategy {
    Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(d),
    }
}

fn canary_paused() -> Strategy {
    Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(20), CanaryStep::PauseUntilPromoted],
    }
}

/// Deploy `version` with `strategy`.
async fn deploy_version(
    engine: &Engine,
    strategy: &Strategy,
    version: &str,
) -> Result<deploy_core::Report, DeployError> {
    engine
        .deploy(
            strategy,
            &Release::new(Version::new(version).unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
}

async fn deploy(engine: &Engine, strategy: &Strategy) -> deploy_core::Report {
    deploy_version(engine, strategy, "2.0.0").await.unwrap()
}

// ---- 1. Promoted on no evidence ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_analysis_whose_every_measurement_timed_out_is_no_evidence_and_rolls_back() {
    // Every evaluation takes longer than the policy's time limit: before the evidence rule,
    // two errors stayed under the consecutive-error limit and the release was promoted.
    let gate = FakeGate::passing("error-rate");
    gate.faults.delay("evaluate", Duration::from_secs(60));
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(gate);
    let before = world.state();
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let report = deploy(&engine, &bake(20)).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(
        reason.contains("no evidence that the release is good")
            && reason.contains("error-rate (2 could not measure)"),
        "{reason}"
    );
    assert_eq!(
        world.state(),
        before,
        "blue serves 1.0.0 with all traffic again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_needs_a_window_gets_it_on_top_of_the_time_limit() {
    // A scrape gate with a 30 s window and the default 10 s time limit: each measurement
    // takes the window, and is not cut off by the limit.
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::passing("error-rate").with_evaluation_time(Duration::from_secs(30)));
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let t = engine.analysis_time(Duration::from_secs(60));
    assert_eq!(
        (t.measurements, t.spacing, t.evaluation, t.wall),
        (
            6,
            Duration::from_secs(10),
            Duration::from_secs(30),
            Duration::from_secs(180)
        )
    );
    let t0 = tokio::time::Instant::now();
    let report = deploy(&engine, &bake(60)).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(report.verdicts.len(), 6);
    assert!(
        report
            .verdicts
            .iter()
            .all(|v| v.verdict.kind == VerdictKind::Pass)
    );
    // The analysis took what `analysis_time` said (the rest is the health check).
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(180) && took < Duration::from_secs(185),
        "{took:?}"
    );
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
}

#[tokio::test(start_paused = true)]
async fn an_analysis_shorter_than_a_gates_lookback_is_refused_at_planning() {
    let world = FakeWorld::slots("1.0.0", "0.9.0")
        .with_gate(FakeGate::passing("error-rate").with_lookback(Duration::from_secs(300)));
    let before = world.state();
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let err = engine
        .plan(&bake(60), &release(), &PlanOptions::default())
        .await
        .unwrap_err();
    match &err {
        DeployError::Plan(PlanError::GateCannotMeasure { gate, analysis, .. }) => {
            assert_eq!((gate.as_str(), analysis.as_str()), ("error-rate", "bake"));
        }
        other => panic!("expected GateCannotMeasure, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("it looks back over 5m but the analysis lasts 1m"),
        "{err}"
    );
    assert_eq!(world.state(), before);
}

// ---- Post-condition before "promoted" ----------------------------------------------------------

/// A hook after the run that puts the weights back, as a load balancer restarted from its
/// configuration would.
#[derive(Debug)]
struct ResetWeights(Arc<dyn TrafficSwitch>);

#[async_trait]
impl HookAction for ResetWeights {
    async fn run(&self, _ctx: &HookContext) -> deploy_core::Result<()> {
        self.0.set_weights(&weights(100, 0)).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_is_never_promoted_when_the_live_state_is_not_the_plans_end() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let hook = Hook::new(
        "reset",
        HookPoint::After,
        "run",
        Arc::new(ResetWeights(world.switch.clone())),
    );
    let engine = Engine::new(
        world
            .environment_builder("prod")
            .hook(hook)
            .build()
            .unwrap(),
    )
    .with_policies(policies());
    let report = deploy(&engine, &bake(0)).await;
    assert_ne!(report.outcome, Outcome::Promoted, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(
        reason.contains("the live state is not the plan's end state")
            && reason.contains("weights: expected blue=0,green=100, live blue=100,green=0"),
        "{reason}"
    );
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
    assert_eq!(world.target("blue").version().unwrap().as_str(), "1.0.0");
}

// ---- 6. A stale plan -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_plan_made_before_another_deploy_changed_the_world_is_refused() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod")).with_policies(policies());
    let plan = engine
        .plan(&bake(0), &release(), &PlanOptions::default())
        .await
        .unwrap();
    // Meanwhile another deploy made green live with 1.5.0.
    let report = deploy_version(&engine, &bake(0), "1.5.0").await.unwrap();
    assert_eq!(report.outcome, Outcome::Promoted);
    let after_other = world.state();
    let err = engine
        .run(plan, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        DeployError::StalePlan { differences, .. } => {
            let text: Vec<String> = differences.iter().map(ToString::to_string).collect();
            assert_eq!(
                text,
                [
                    "target green: expected 0.9.0, live 1.5.0",
                    "weights: expected blue=100,green=0, live blue=0,green=100"
                ]
            );
        }
        other => panic!("expected StalePlan, got {other}"),
    }
    assert!(err.to_string().contains("plan again"), "{err}");
    assert_eq!(world.state(), after_other, "nothing was touched");
}

// ---- 2. Control requests belong to a run -------------------------------------------------------

#[tokio::test]
async fn a_request_with_no_run_in_progress_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod")).with_state_dir(dir.path());
    for request in [
        ControlRequest::Promote,
        ControlRequest::Abort {
            reason: "stale".into(),
        },
    ] {
        let err = engine.request(&request).await.unwrap_err();
        assert!(matches!(err, DeployError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("no run is in progress"), "{err}");
    }
    assert!(!dir.path().join("control.json").exists());
}

#[tokio::test]
async fn a_leftover_request_never_acts_on_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let mut p = policies();
    p.probe.interval = Duration::from_millis(1);
    p.probe.healthy_threshold = 1;
    let engine = Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_state_dir(dir.path());
    // What an older version of the tool, or an operator's hand, left in the state directory.
    std::fs::write(dir.path().join("control.json"), r#"{"request":"promote"}"#).unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let runner = engine.clone();
    let run = tokio::spawn(async move { deploy(&runner, &canary_paused()).await });
    // The run pauses and stays paused: the leftover request is discarded, not applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if engine
            .status()
            .await
            .unwrap()
            .is_some_and(|s| s.paused.is_some())
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A request for another run, written as a new one would be, is discarded as well.
    std::fs::write(
        dir.path().join("control.json"),
        r#"{"run_id":"20200101T000000000Z-1-0","pause":3,"request":"promote"}"#,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !run.is_finished(),
        "a request for another run ended the pause"
    );
    assert!(!dir.path().join("control.json").exists());
    assert_eq!(world.switch.current().to_string(), "blue=4,green=1");
    // The operator's promotion of this pause is applied.
    let to = engine.request(&ControlRequest::Promote).await.unwrap();
    assert_eq!(Some(to), engine.status().await.unwrap().map(|s| s.run_id));
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
    // The run is over: a promotion or abort now is refused again.
    assert!(matches!(
        engine.request(&ControlRequest::Promote).await,
        Err(DeployError::Refused { .. })
    ));
}

#[tokio::test]
async fn a_promotion_is_refused_unless_the_run_is_paused() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    // The canary's analysis takes a minute; the run is not paused during it.
    let world = world.with_gate(FakeGate::passing("rate"));
    let mut p = policies();
    p.probe.interval = Duration::from_millis(1);
    p.probe.healthy_threshold = 1;
    p.analysis.interval = Duration::from_millis(200);
    let engine = Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_state_dir(dir.path());
    let strategy = Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(20),
            CanaryStep::Analyze(Duration::from_secs(2)),
        ],
    };
    let runner = engine.clone();
    let run = tokio::spawn(async move { deploy(&runner, &strategy).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if engine
            .status()
            .await
            .unwrap()
            .is_some_and(|s| matches!(s.current_step, Some(Step::Analyze { .. })))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never analysed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = engine.request(&ControlRequest::Promote).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("is not paused (it is at step 5 (analyze"),
        "{err}"
    );
    assert!(!dir.path().join("control.json").exists());
    let report = run.await.unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
}

// ---- 4. Panics contained -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panic_in_any_adapter_call_fails_the_step_and_the_run_rolls_back() {
    for (what, method) in [
        ("target", "activate"),
        ("switch", "set_weights"),
        ("gate", "evaluate"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("rate"));
        match what {
            "target" => world.target("green").faults.panic_on(method, 1),
            // The second call: the first moves 20 % of the traffic to the canary.
            "switch" => world.switch.faults.panic_on(method, 2),
            // Every measurement: a panicking gate is one that cannot measure.
            _ => {
                world.gates[0].faults.panic_on(method, 1);
                world.gates[0].faults.panic_on(method, 2);
            }
        }
        let before = world.state();
        let engine = Engine::new(world.environment("prod"))
            .with_policies(policies())
            .with_state_dir(dir.path());
        let strategy = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(20),
                CanaryStep::Analyze(Duration::from_secs(20)),
                CanaryStep::SetWeight(50),
            ],
        };
        let report = deploy(&engine, &strategy).await;
        assert_eq!(report.outcome, Outcome::RolledBack, "{what}: {report}");
        let reason = &report.rollback.as_ref().unwrap().reason;
        let why = if what == "gate" {
            assert!(
                reason.contains("rate (2 could not measure) never passed"),
                "{reason}"
            );
            &report.verdicts[0].verdict.reason
        } else {
            reason
        };
        assert!(
            why.contains(&format!("panicked: {method} on")),
            "{what}: {why}"
        );
        assert_eq!(world.state(), before, "{what}");
        assert!(!dir.path().join("lock").exists(), "{what}: lock released");
    }
}

// ---- 7. No dead ends -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_undo_failed_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::failing("rate"));
    // The switch goes down once the canary is at 20 %: the undo of the weights fails.
    world.switch.faults.fail_from("set_weights", 2);
    let before = world.state();
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let strategy = Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(20),
            CanaryStep::Analyze(Duration::from_secs(20)),
        ],
    };
    let report = deploy(&engine, &strategy).await;
    assert_eq!(report.outcome, Outcome::Failed, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=4,green=1");
    let status = engine.status().await.unwrap().unwrap();
    assert!(
        status
            .to_string()
            .contains("undoing it failed: roll it back again"),
        "{status}"
    );
    // The switch is back: a rollback retries the undo that failed.
    world.switch.faults.clear();
    let report = engine
        .recover(Recovery::Rollback, &CancellationToken::new())
        .await
        .unwrap()
        .expect("the failed run can be rolled back again");
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(world.state(), before);
    assert_eq!(
        engine.status().await.unwrap().unwrap().outcome,
        Some(Outcome::RolledBack)
    );
    assert!(
        engine
            .recover(Recovery::Rollback, &CancellationToken::new())
            .await
            .unwrap()
            .is_none(),
        "nothing left to recover"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_lock_left_behind_a_finished_run_is_cleared_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let report = deploy(&engine, &bake(0)).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    // The process was killed after writing `finished`, before unlocking.
    std::fs::write(
        dir.path().join("lock"),
        format!(
            r#"{{"owner":"ci","pid":999999,"host":"gone","started_at":"2026-11-21T00:00:00Z","run_id":"{}"}}"#,
            report.run_id
        ),
    )
    .unwrap();
    let err = deploy_err(&engine).await;
    assert!(matches!(err, DeployError::StaleLock { .. }), "{err}");
    assert!(
        engine
            .recover(Recovery::Resume, &CancellationToken::new())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !dir.path().join("lock").exists(),
        "the stale lock is cleared"
    );
    let report = deploy_version(&engine, &bake(0), "3.0.0").await.unwrap();
    assert_eq!(report.outcome, Outcome::Promoted);
}

async fn deploy_err(engine: &Engine) -> DeployError {
    deploy_version(engine, &bake(0), "2.0.0").await.unwrap_err()
}

// ---- 3. Recovery reconciles with the world ---------------------------------------------------------

/// Start a paused canary with a journal and drop it (a `kill -9`); returns the engine.
async fn killed_while_paused(dir: &std::path::Path, world: &FakeWorld) -> Engine {
    let mut p = policies();
    p.probe.interval = Duration::from_millis(1);
    p.probe.healthy_threshold = 1;
    let engine = Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_state_dir(dir);
    let (strategy, release, options, cancel) = (
        canary_paused(),
        release(),
        PlanOptions::default(),
        CancellationToken::new(),
    );
    {
        let run = engine.deploy(&strategy, &release, &options, &cancel);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => panic!("finished: {:?}", r.map(|r| r.outcome)),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if engine
                .status()
                .await
                .unwrap()
                .is_some_and(|s| s.paused.is_some())
            {
                break;
            }
        }
    }
    engine
}

#[tokio::test]
async fn resume_redoes_what_the_journal_calls_done_but_the_world_shows_undone() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let before = world.state();
    let engine = killed_while_paused(dir.path(), &world).await;
    assert_eq!(world.switch.current().to_string(), "blue=4,green=1");
    // Someone undid the canary by hand (or a rollback ran whose records were lost).
    world.switch.set_weights(&weights(100, 0)).await.unwrap();
    world
        .target("green")
        .activate(&Version::new("0.9.0").unwrap())
        .await
        .unwrap();
    assert_eq!(world.state(), before);
    // It resumes where the world is (the start), and pauses again for the operator.
    let recovering = engine.clone();
    let recovery = tokio::spawn(async move {
        recovering
            .recover(Recovery::Resume, &CancellationToken::new())
            .await
    });
    while !engine.control().promote() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = recovery.await.unwrap().unwrap().unwrap();
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("the live state contradicts the journal")),
        "{report}"
    );
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
    assert_eq!(world.target("green").version().unwrap().as_str(), "2.0.0");
}

#[tokio::test]
async fn resume_rolls_back_when_the_world_matches_no_point_of_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let before = world.state();
    let engine = killed_while_paused(dir.path(), &world).await;
    // A person set weights the plan never passes through.
    world.switch.set_weights(&weights(50, 50)).await.unwrap();
    let report = engine
        .recover(Recovery::Resume, &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report
            .rollback
            .as_ref()
            .unwrap()
            .reason
            .contains("the live state matches no point of the run's plan"),
        "{report}"
    );
    assert_eq!(world.state(), before);
}

// ---- 8. Tolerant journal reading -------------------------------------------------------------------

#[tokio::test]
async fn a_journal_torn_inside_a_utf8_character_and_an_unreadable_old_journal_block_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let before = world.state();
    let engine = killed_while_paused(dir.path(), &world).await;
    let run_id = engine.unfinished_run().await.unwrap().unwrap();
    let journal = dir.path().join("runs").join(format!("{run_id}.jsonl"));
    // The process died in the middle of a record whose text holds a multi-byte character.
    let mut bytes = std::fs::read(&journal).unwrap();
    let record = r#"{"record":"rollback_started","reason":"p99 über dem Ziel"}"#.as_bytes();
    let cut = record.iter().position(|b| *b == 0xC3).unwrap() + 1;
    bytes.extend_from_slice(&record[..cut]);
    std::fs::write(&journal, &bytes).unwrap();
    assert!(JournalState::read(&journal).is_ok());
    // And an old run's journal is garbage.
    std::fs::write(
        dir.path().join("runs/20200101T000000000Z-1-0.jsonl"),
        b"\xff\xfe not json\n{\n",
    )
    .unwrap();
    let status = engine.status().await.unwrap().unwrap();
    assert!(status.paused.is_some(), "{status}");
    let report = engine
        .recover(Recovery::Rollback, &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(world.state(), before);
    // The torn tail was cut before appending, so the journal reads whole.
    let st = JournalState::read(&journal).unwrap();
    assert_eq!(st.outcome, Some(Outcome::RolledBack));
    assert_eq!(
        engine.status().await.unwrap().unwrap().outcome,
        Some(Outcome::RolledBack)
    );
}
