//! The served-version check at the front door, on the fakes with a fake frontend: a
//! [`TestHttpServer`] that spreads requests over the targets by the fake switch's live weights
//! and answers with the version each target runs (or, for a stale target, an old one).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deploy_core::served::ServedCheck;
use deploy_core::testing::{FakeWorld, TestHttpServer, TestResponse};
use deploy_core::{
    CanaryStep, Engine, Outcome, PlanOptions, Policies, Release, Step, Strategy, Version,
};
use tokio_util::sync::CancellationToken;

const NEW: &str = "2.0.0";

fn release() -> Release {
    Release::new(Version::new(NEW).unwrap())
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(10);
    p.probe.healthy_threshold = 1;
    p
}

/// A frontend over `world`: request `n` goes to the target at `n mod total` of the cumulative
/// live weights (so 100 requests split exactly by the weights), and answers `X-Version` with
/// the version that target runs — except the targets in `stale`, whose workers still answer
/// with `1.0.0`.
async fn frontend(world: &FakeWorld, stale: &[&str]) -> TestHttpServer {
    let switch = Arc::clone(&world.switch);
    let targets = world.targets.clone();
    let stale: BTreeSet<String> = stale.iter().map(|s| (*s).to_owned()).collect();
    let n = AtomicU64::new(0);
    TestHttpServer::start(move |_req| {
        let weights = switch.current();
        let total = weights.total();
        if total == 0 {
            return TestResponse::text(503, "no server is available");
        }
        let mut at = n.fetch_add(1, Ordering::SeqCst) % total;
        let (target, _) = weights
            .iter()
            .find(|(_, w)| {
                if at < u64::from(*w) {
                    true
                } else {
                    at -= u64::from(*w);
                    false
                }
            })
            .expect("a weighted target");
        let version = if stale.contains(target.as_str()) {
            "1.0.0".to_owned()
        } else {
            let t = targets.iter().find(|t| t.id() == target).unwrap();
            t.version().map(|v| v.to_string()).unwrap_or_default()
        };
        TestResponse::text(200, "hello").with_header("X-Version", version)
    })
    .await
    .unwrap()
}

use deploy_core::Target as _;

fn canary() -> Strategy {
    Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(10), CanaryStep::SetWeight(50)],
    }
}

#[tokio::test]
async fn the_versions_the_weights_promise_pass_at_every_traffic_step() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let front = frontend(&world, &[]).await;
    let env = world
        .environment_builder("prod")
        .served_check(ServedCheck::header(front.url("/"), "X-Version").with_requests(100))
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let report = engine
        .deploy(
            &canary(),
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
    let served: Vec<&String> = report
        .notes
        .iter()
        .filter(|n| n.starts_with("served through"))
        .collect();
    let traffic_steps = report
        .steps
        .iter()
        .filter(|s| matches!(s.step, Step::SetWeights { .. }))
        .count();
    assert_eq!(served.len(), traffic_steps, "{:?}", report.notes);
    assert!(
        served[0].ends_with("1.0.0 × 90, 2.0.0 × 10 (expected 1.0.0 90 %, 2.0.0 10 % ± 10 %)"),
        "{}",
        served[0]
    );
    assert!(
        served
            .last()
            .unwrap()
            .ends_with(": 2.0.0 × 100 (expected 2.0.0 100 % ± 10 %)"),
        "{served:?}"
    );
    // One request per check and traffic step, no more.
    assert_eq!(front.requests(), 100 * traffic_steps as u64);
}

#[tokio::test]
async fn a_stale_worker_fails_the_switch_and_the_weights_are_put_back() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    // green reports 2.0.0 once activated, but its workers still answer with 1.0.0.
    let front = frontend(&world, &["green"]).await;
    let env = world
        .environment_builder("prod")
        .served_check(ServedCheck::header(front.url("/"), "X-Version").with_requests(50))
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let before = world.state();
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_millis(10),
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
    let failed = report
        .steps
        .iter()
        .find(|s| s.error.is_some())
        .expect("a failed step");
    assert!(
        matches!(failed.step, Step::SetWeights { .. }),
        "{:?}",
        failed.step
    );
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains("a version no target should serve (1.0.0 × 50)")
            && message.contains("expected 2.0.0 100 % ± 10 %")
            && message.contains("seen 1.0.0 × 50"),
        "{message}"
    );
    // The switch moved to green, then back to blue; everything else is as it was.
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
    assert_eq!(world.state(), before);
}

#[tokio::test]
async fn shares_outside_the_tolerance_fail_the_canary_step() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    // The frontend answers 2.0.0 from blue too (as if blue had been overwritten): at 10 % the
    // sample is all 2.0.0, 90 points from the promise.
    let front = TestHttpServer::start(|_| TestResponse::new(200).with_header("X-Version", NEW))
        .await
        .unwrap();
    let env = world
        .environment_builder("prod")
        .served_check(
            ServedCheck::header(front.url("/"), "X-Version")
                .with_requests(20)
                .with_tolerance(0.2),
        )
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let before = world.state();
    let report = engine
        .deploy(
            &canary(),
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let failed = report.steps.iter().find(|s| s.error.is_some()).unwrap();
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains("2.0.0 100 % instead of 10 %")
            && message.contains("1.0.0 0 % instead of 90 %"),
        "{message}"
    );
    assert_eq!(front.requests(), 20, "the first traffic step only");
    assert_eq!(world.state(), before);
}

#[tokio::test]
async fn an_unreachable_frontend_fails_within_its_bounds() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = world
        .environment_builder("prod")
        .served_check(
            ServedCheck::header(format!("http://127.0.0.1:{port}/"), "X-Version")
                .with_requests(5)
                .with_timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let report = engine
        .deploy(
            &canary(),
            &release(),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let failed = report.steps.iter().find(|s| s.error.is_some()).unwrap();
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains("5 of 5 answers carried no version"),
        "{message}"
    );
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
}

#[test]
fn a_bad_check_is_refused_when_the_environment_is_built() {
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let e = world
        .environment_builder("prod")
        .served_check(ServedCheck::header("http://127.0.0.1:1/", "X-Version").with_requests(0))
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("served check: requests: 0 requests"),
        "{e}"
    );
}

#[tokio::test]
async fn a_json_field_is_read_and_only_the_configured_url_is_asked() {
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = paths.clone();
    let n = AtomicU64::new(0);
    let front = TestHttpServer::start(move |req| {
        p.lock().unwrap().push(req.path.clone());
        // One answer in four from the canary.
        let version = match n.fetch_add(1, Ordering::SeqCst) % 4 {
            0 => serde_json::json!("2.0.0"),
            _ => serde_json::json!("1.0.0"),
        };
        TestResponse::json(200, &serde_json::json!({"build": {"version": version}}))
    })
    .await
    .unwrap();
    let check = ServedCheck::json_field(front.url("/health"), "build.version").with_requests(40);
    let promised = [("1.0.0", 0.75), ("2.0.0", 0.25)]
        .into_iter()
        .map(|(v, s)| (Version::new(v).unwrap(), s))
        .collect();
    let summary = check.check(&promised).await.unwrap();
    assert!(
        summary.ends_with(": 1.0.0 × 30, 2.0.0 × 10 (expected 1.0.0 75 %, 2.0.0 25 % ± 10 %)"),
        "{summary}"
    );
    let paths = paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 40);
    assert!(paths.iter().all(|p| p == "/health"), "{paths:?}");

    // A body without the field is an answer without a version.
    let bare = TestHttpServer::start(|_| TestResponse::json(200, &serde_json::json!({"ok": true})))
        .await
        .unwrap();
    let e = ServedCheck::json_field(bare.url("/health"), "version")
        .with_requests(3)
        .check(&promised)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "3 of 3 answers carried no version (last: HTTP 200: no JSON field version in the body)"
        ),
        "{e}"
    );
}
