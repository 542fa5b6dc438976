//! Hooks before/after steps and runs, smoke checks as a gate, and webhook notifications.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::event::Severity;
use deploy_core::hooks::{CommandHook, Hook, HookPoint, WebhookHook};
use deploy_core::notify::WebhookNotifier;
use deploy_core::smoke::{SmokeCheck, SmokeGate};
use deploy_core::testing::{FakeWorld, TestHttpServer, TestResponse};
use deploy_core::{
    Engine, GateContext, LocalHost, MetricGate, PlanOptions, Release, Strategy, TargetId,
    VerdictKind, Version,
};
use deploy_core::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(1);
    p.probe.healthy_threshold = 1;
    p
}

fn blue_green() -> Strategy {
    Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    }
}

async fn deploy(engine: &Engine, strategy: &Strategy) -> deploy_core::Report {
    engine
        .deploy(
            strategy,
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

fn command_hook(argv: &[&str]) -> Arc<CommandHook> {
    Arc::new(
        CommandHook::new(
            Arc::new(LocalHost::new()),
            argv.iter().map(ToString::to_string).collect(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn a_failing_pre_hook_stops_before_its_step_acts() {
    let world =
        FakeWorld::slots("1.0.0", "0.9.0").with_pending_migrations(&[("2", "add_note", None)]);
    let before = world.state();
    let env = env_with_hooks(
        &world,
        vec![Hook::new(
            "check-replicas",
            HookPoint::Before,
            "migrate",
            command_hook(&["false"]),
        )],
    );
    let report = deploy(&Engine::new(env).with_policies(policies()), &blue_green()).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(
        reason.contains(
            "stopped before it acted: hook check-replicas (before step apply pending migrations)"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("run `false` on local: exit code 1"),
        "{reason}"
    );
    assert_eq!(
        world.migrations.current().unwrap().0,
        "1",
        "the migration never ran"
    );
    assert_eq!(world.migrations.faults.calls("migrate"), 0);
    assert_eq!(world.state(), before);
}

#[tokio::test]
async fn a_failing_post_hook_rolls_back_its_step_too() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let before = world.state();
    let env = env_with_hooks(
        &world,
        vec![Hook::new(
            "warm-cache",
            HookPoint::After,
            "set_weights",
            command_hook(&["sh", "-c", "exit 7"]),
        )],
    );
    let report = deploy(&Engine::new(env).with_policies(policies()), &blue_green()).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report
            .rollback
            .as_ref()
            .unwrap()
            .reason
            .contains("exit code 7")
    );
    assert_eq!(world.state(), before, "the switch went back too");
    let history: Vec<String> = world
        .switch
        .history()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        history,
        ["blue=100,green=0", "blue=0,green=100", "blue=100,green=0"]
    );
}

#[tokio::test]
async fn run_hooks_see_placeholders_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let line = format!(
        "echo \"$DEPLOY_HOOK_POINT $DEPLOY_STEP {{version}} {{environment}}\" >> {}",
        log.display()
    );
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let env = env_with_hooks(
        &world,
        vec![
            Hook::new(
                "announce",
                HookPoint::Before,
                "run",
                command_hook(&["sh", "-c", &line]),
            ),
            Hook::new(
                "pre-activate",
                HookPoint::Before,
                "activate",
                command_hook(&["sh", "-c", &line]),
            ),
            Hook::new(
                "done",
                HookPoint::After,
                "run",
                command_hook(&["sh", "-c", &line]),
            ),
        ],
    );
    let report = deploy(&Engine::new(env).with_policies(policies()), &blue_green()).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        "before run 2.0.0 prod\nbefore activate 2.0.0 prod\nafter run 2.0.0 prod\n"
    );
}

#[tokio::test]
async fn a_failing_post_run_hook_rolls_everything_back() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let before = world.state();
    let server = TestHttpServer::start(|_| TestResponse::text(500, "smoke test failed: /login"))
        .await
        .unwrap();
    let env = env_with_hooks(
        &world,
        vec![Hook::new(
            "ci-smoke",
            HookPoint::After,
            "run",
            Arc::new(WebhookHook::new(server.url("/hook")).unwrap()),
        )],
    );
    let report = deploy(&Engine::new(env).with_policies(policies()), &blue_green()).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(
        reason.contains("every step done, but hook ci-smoke (after the run)"),
        "{reason}"
    );
    assert!(
        reason.contains("HTTP 500: smoke test failed: /login"),
        "{reason}"
    );
    assert_eq!(world.state(), before);
}

#[tokio::test]
async fn webhook_hooks_post_the_context_and_pass_on_2xx() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let server = TestHttpServer::start(move |req| {
        s.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&req.body).into_owned());
        TestResponse::new(204)
    })
    .await
    .unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let hook = WebhookHook::new(server.url("/hook"))
        .unwrap()
        .with_header("authorization", "Bearer s3cret");
    assert!(!format!("{hook:?}").contains("s3cret"));
    let env = env_with_hooks(
        &world,
        vec![Hook::new(
            "audit",
            HookPoint::After,
            "set_weights",
            Arc::new(hook),
        )],
    );
    let report = deploy(&Engine::new(env).with_policies(policies()), &blue_green()).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(v["point"], "after");
    assert_eq!(v["step"]["op"], "set_weights");
}

#[tokio::test]
async fn smoke_gate_passes_and_fails_with_reasons() {
    let server = TestHttpServer::start(|req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => TestResponse::text(200, "<h1>Welcome</h1>"),
        ("POST", "/login") if req.body == b"user=smoke" => TestResponse::text(200, "hello smoke"),
        ("POST", "/orders") => TestResponse::text(500, "db error"),
        _ => TestResponse::text(404, "no"),
    })
    .await
    .unwrap();
    let mut ctx = GateContext::new(
        Version::new("2").unwrap(),
        vec![TargetId::new("green").unwrap()],
        vec![],
    );
    ctx.canary_endpoints.push(server.endpoint());
    let good = SmokeGate::new(
        "smoke",
        vec![
            SmokeCheck::get("front page", "/").expect_body("Welcome"),
            SmokeCheck::post("login", "/login", "user=smoke").expect_body("hello"),
        ],
    )
    .unwrap();
    let v = good.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Pass, "{v}");
    assert_eq!(v.value, Some(2.0));
    deploy_core::testing::conformance::metric_gate(&good, &ctx, deploy_core::VerdictKind::Pass)
        .await;

    let bad = SmokeGate::new(
        "smoke",
        vec![
            SmokeCheck::get("front page", "/").expect_body("Welcome back"),
            SmokeCheck::post("create order", "/orders", "{}"),
        ],
    )
    .unwrap();
    let v = bad.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Fail);
    assert_eq!(v.value, Some(2.0));
    assert!(
        v.reason.contains("front page: GET http://127.0.0.1:"),
        "{}",
        v.reason
    );
    assert!(v.reason.contains("lacks \"Welcome back\""), "{}", v.reason);
    assert!(
        v.reason.contains("create order: POST") && v.reason.contains("HTTP 500, expected 200-299"),
        "{}",
        v.reason
    );

    let err = SmokeGate::new(
        "smoke",
        vec![SmokeCheck::get("x", "nope").expect_status(RangeInclusive::new(300, 200))],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("must start with '/'") && err.to_string().contains("is empty"),
        "{err}"
    );
}

#[tokio::test]
async fn notifications_are_filtered_by_severity() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let server = TestHttpServer::start(move |req| {
        s.lock()
            .unwrap()
            .push(serde_json::from_slice::<serde_json::Value>(&req.body).unwrap());
        TestResponse::new(200)
    })
    .await
    .unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    world.target("green").mark_unhealthy("2.0.0");
    let notifier = Arc::new(WebhookNotifier::spawn(server.url("/events"), "prod").unwrap());
    let mut p = policies();
    p.probe.deadline = Duration::from_millis(20);
    let engine = Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_observer(notifier.clone());
    let report = deploy(&engine, &blue_green()).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    let stats = notifier.close().await;
    let events: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stats.sent as usize, events.len());
    assert_eq!(events.first().unwrap(), "run_started");
    assert!(
        events.contains(&"rollback_started".to_owned()),
        "{events:?}"
    );
    assert!(
        events.contains(&"step_finished".to_owned()),
        "the failed step is an error: {events:?}"
    );
    assert_eq!(events.last().unwrap(), "run_finished");
    assert!(
        !events.contains(&"step_started".to_owned()),
        "step-level info is off by default: {events:?}"
    );
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first["environment"], "prod");
    assert_eq!(first["severity"], "info");

    // Everything at Info.
    let seen2 = Arc::new(Mutex::new(0u32));
    let s2 = seen2.clone();
    let server2 = TestHttpServer::start(move |_| {
        *s2.lock().unwrap() += 1;
        TestResponse::new(200)
    })
    .await
    .unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let all = Arc::new(
        WebhookNotifier::spawn_with(
            server2.url("/"),
            "prod",
            Severity::Info,
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_observer(all.clone());
    let report = deploy(&engine, &blue_green()).await;
    assert_eq!(report.outcome, Outcome::Promoted);
    let stats = all.close().await;
    assert!(stats.sent >= 10, "{stats:?}");
    assert_eq!(u64::from(*seen2.lock().unwrap()), stats.sent);
}

/// The fake world's environment with `hooks` added.
fn env_with_hooks(world: &FakeWorld, hooks: Vec<Hook>) -> deploy_core::Environment {
    let mut b = world.environment_builder("prod");
    for h in hooks {
        b = b.hook(h);
    }
    b.build().unwrap()
}
