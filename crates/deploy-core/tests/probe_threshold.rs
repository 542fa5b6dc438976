//! The probe's failure threshold against a real HTTP server: a target that answers unhealthy is
//! declared failed after `unhealthy_threshold` answers in a row (not at the deadline), a target
//! that reports another version than the one activated fails at its first answer, and a target
//! that refuses connections for a while (starting after a restart) is still waited for.
//!
//! The targets and the switch are fakes; every health check is a real `HttpProbe` request to a
//! `TestHttpServer` that answers as the version its fake target runs. Counts are asserted, not
//! times: the policy's 60 s deadline is never reached when the threshold works.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deploy_core::event::{Event, Observer};
use deploy_core::testing::process::free_port;
use deploy_core::testing::{FakeSwitch, FakeTarget, TestHttpServer, TestResponse};
use deploy_core::{
    BatchSize, Engine, Environment, HttpProbe, Outcome, PlanOptions, Policies, Release, Strategy,
    Version, Weights,
};
use tokio_util::sync::CancellationToken;

const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";
const FLEET: [&str; 4] = ["web-1", "web-2", "web-3", "web-4"];
const BROKEN: &str = "web-2";

/// How the broken target's server answers once it runs the new version.
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// `503 {"status":"down","version":"2.0.0"}`.
    Unhealthy,
    /// `200 {"status":"ok","version":"1.0.0"}`: the old process still answers.
    OldVersion,
    /// 503, 503, 200, 503, 503, then 200 from then on: never three unhealthy answers in a row.
    Flapping,
}

/// `/health` as the version `target` runs now: healthy with that version, or broken as `how`
/// once it runs the new version (`n`: how many requests for the new version came before).
fn health_of(target: &FakeTarget, how: Option<Broken>, n: &AtomicUsize) -> TestResponse {
    let version = target.version().map(|v| v.to_string()).unwrap_or_default();
    let json = |code, status: &str, version: &str| {
        TestResponse::json(
            code,
            &serde_json::json!({"status": status, "version": version}),
        )
    };
    match how {
        Some(Broken::Unhealthy) if version == NEW => json(503, "down", &version),
        Some(Broken::OldVersion) if version == NEW => json(200, "ok", OLD),
        Some(Broken::Flapping) if version == NEW => match n.fetch_add(1, Ordering::SeqCst) {
            2 | 5.. => json(200, "ok", &version),
            _ => json(503, "down", &version),
        },
        _ => json(200, "ok", &version),
    }
}

/// Serve `/health` for the target set later in `cell`.
fn handler(
    cell: Arc<OnceLock<Arc<FakeTarget>>>,
    how: Option<Broken>,
) -> impl Fn(&deploy_core::testing::TestRequest) -> TestResponse + Send + Sync + 'static {
    let n = AtomicUsize::new(0);
    move |req| match (req.path.as_str(), cell.get()) {
        ("/health", Some(t)) => health_of(t, how, &n),
        _ => TestResponse::new(404),
    }
}

/// Counts health checks per target on the forward path (before the rollback starts).
#[derive(Debug, Default)]
struct Checks {
    forward: Mutex<BTreeMap<String, Vec<(bool, String)>>>,
    rolling_back: Mutex<bool>,
    /// Told once `target` had that many forward checks.
    after: Mutex<Option<(String, usize, tokio::sync::oneshot::Sender<()>)>>,
}

impl Observer for Checks {
    fn on_event(&self, event: &Event) {
        match event {
            Event::RollbackStarted { .. } => *self.rolling_back.lock().unwrap() = true,
            Event::HealthChecked {
                target,
                healthy,
                reason,
            } if !*self.rolling_back.lock().unwrap() => {
                let n = {
                    let mut f = self.forward.lock().unwrap();
                    let list = f.entry(target.to_string()).or_default();
                    list.push((*healthy, reason.clone()));
                    list.len()
                };
                let mut after = self.after.lock().unwrap();
                if after
                    .as_ref()
                    .is_some_and(|(t, at, _)| t == target.as_str() && n >= *at)
                    && let Some((_, _, tx)) = after.take()
                {
                    let _ = tx.send(());
                }
            }
            _ => {}
        }
    }
}

impl Checks {
    fn of(&self, target: &str) -> Vec<(bool, String)> {
        self.forward
            .lock()
            .unwrap()
            .get(target)
            .cloned()
            .unwrap_or_default()
    }
}

/// A fleet of four fake targets running `OLD`, each behind its own real `/health`, a fake
/// switch with weight 1 each, and an `HttpProbe` reading `status` and `version`.
struct Fleet {
    targets: Vec<Arc<FakeTarget>>,
    switch: Arc<FakeSwitch>,
    servers: Vec<TestHttpServer>,
    env: Environment,
}

/// `late`: the broken target's port, where nothing listens until the test starts a server.
async fn fleet(broken: Option<Broken>, late: Option<SocketAddr>) -> Fleet {
    let mut targets = Vec::new();
    let mut servers = Vec::new();
    for name in FLEET {
        let cell = Arc::new(OnceLock::new());
        let how = if name == BROKEN { broken } else { None };
        let endpoint = match late {
            Some(addr) if name == BROKEN => {
                deploy_core::Endpoint::http(addr.ip().to_string(), addr.port())
            }
            _ => {
                let server = TestHttpServer::start(handler(Arc::clone(&cell), how))
                    .await
                    .unwrap();
                let e = server.endpoint();
                servers.push(server);
                e
            }
        };
        let t = Arc::new(
            FakeTarget::new(name)
                .with_current(OLD)
                .with_endpoint(endpoint),
        );
        cell.set(Arc::clone(&t)).unwrap();
        targets.push(t);
    }
    let weights: Vec<(&str, u32)> = FLEET.iter().map(|n| (*n, 1)).collect();
    let switch = Arc::new(FakeSwitch::new(&weights));
    let probe = HttpProbe::builder()
        .path("/health")
        .expect_field("status", "ok")
        .version_field("version")
        .build()
        .unwrap();
    let mut b = Environment::builder("prod")
        .switch(switch.clone())
        .probe(Arc::new(probe));
    for t in &targets {
        b = b.target(t.clone());
    }
    Fleet {
        targets,
        switch,
        servers,
        env: b.build().unwrap(),
    }
}

/// The default policies (60 s deadline, threshold left at its default) with a 50 ms interval.
fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(50);
    p.probe.healthy_threshold = 2;
    p
}

fn rolling() -> Strategy {
    Strategy::Rolling {
        batch: BatchSize::Count(1),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    }
}

async fn deploy(env: Environment, checks: Arc<Checks>) -> deploy_core::Report {
    let engine = Engine::new(env)
        .with_policies(policies())
        .with_observer(checks);
    engine
        .deploy(
            &rolling(),
            &Release::new(Version::new(NEW).unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

fn versions(f: &Fleet) -> Vec<Option<String>> {
    f.targets
        .iter()
        .map(|t| t.version().map(|v| v.to_string()))
        .collect()
}

fn failed_reason(report: &deploy_core::Report) -> String {
    report
        .steps
        .iter()
        .find_map(|s| s.error.as_ref())
        .map(|e| e.message.clone())
        .unwrap_or_else(|| panic!("no failed step\n{report}"))
}

#[tokio::test]
async fn a_target_answering_503_fails_after_three_answers_and_the_fleet_rolls_back() {
    let f = fleet(Some(Broken::Unhealthy), None).await;
    let before: Weights = f.switch.current();
    let checks = Arc::new(Checks::default());
    let report = deploy(f.env.clone(), checks.clone()).await;

    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let broken = checks.of(BROKEN);
    assert_eq!(
        broken.len(),
        3,
        "three answered unhealthy checks, then the rollback: {broken:?}"
    );
    assert!(broken.iter().all(|(h, r)| !h && r.contains("HTTP 503")));
    let reason = failed_reason(&report);
    assert!(
        reason.contains("answered unhealthy 3 times in a row")
            && reason.contains("HTTP 503")
            && reason.contains("unhealthy_threshold is 3"),
        "{reason}"
    );
    // The reason the rollback gives (the `why:` of the command line's summary) is that one.
    let why = &report.rollback.as_ref().expect("a rollback record").reason;
    assert!(
        why.contains("wait until healthy: web-2: answered unhealthy 3 times in a row"),
        "{why}"
    );
    // The first target went over (two healthy checks) and was put back.
    assert_eq!(checks.of("web-1").len(), 2);
    assert!(checks.of("web-3").is_empty(), "the run stopped at web-2");
    assert_eq!(versions(&f), vec![Some(OLD.to_owned()); 4]);
    assert_eq!(f.switch.current(), before);
    drop(f.servers);
}

#[tokio::test]
async fn a_target_reporting_the_old_version_fails_at_its_first_answer() {
    let f = fleet(Some(Broken::OldVersion), None).await;
    let before: Weights = f.switch.current();
    let checks = Arc::new(Checks::default());
    let report = deploy(f.env.clone(), checks.clone()).await;

    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let broken = checks.of(BROKEN);
    assert_eq!(broken.len(), 1, "one answer is enough: {broken:?}");
    let reason = failed_reason(&report);
    assert!(
        reason.contains("reports version 1.0.0 where 2.0.0 was activated"),
        "{reason}"
    );
    assert_eq!(versions(&f), vec![Some(OLD.to_owned()); 4]);
    assert_eq!(f.switch.current(), before);
}

#[tokio::test]
async fn refused_connections_do_not_count_toward_the_threshold() {
    // More refused checks than the threshold, then the service answers healthy.
    const REFUSED: usize = 5;
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let f = fleet(None, Some(addr)).await;
    let target = Arc::clone(&f.targets[1]);
    let cell = Arc::new(OnceLock::new());
    cell.set(target).unwrap();

    let checks = Arc::new(Checks::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    *checks.after.lock().unwrap() = Some((BROKEN.to_owned(), REFUSED, tx));
    let late = tokio::spawn(async move {
        rx.await.unwrap();
        TestHttpServer::start_at(addr, handler(cell, None))
            .await
            .unwrap()
    });
    let report = deploy(f.env.clone(), checks.clone()).await;

    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let broken = checks.of(BROKEN);
    let refused = broken.iter().take_while(|(h, _)| !h).count();
    assert!(refused >= REFUSED, "{broken:?}");
    assert!(
        broken[..refused]
            .iter()
            .all(|(_, r)| r.contains("connection refused")),
        "{broken:?}"
    );
    assert_eq!(broken.len(), refused + 2, "then two healthy checks");
    assert_eq!(versions(&f), vec![Some(NEW.to_owned()); 4]);
    drop(late.await.unwrap());
}

#[tokio::test]
async fn a_healthy_answer_starts_the_unhealthy_count_again() {
    let f = fleet(Some(Broken::Flapping), None).await;
    let checks = Arc::new(Checks::default());
    let report = deploy(f.env.clone(), checks.clone()).await;

    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let seen: Vec<bool> = checks.of(BROKEN).iter().map(|(h, _)| *h).collect();
    // Four unhealthy answers in all, never three in a row; then two healthy in a row.
    assert_eq!(seen, [false, false, true, false, false, true, true]);
    assert_eq!(versions(&f), vec![Some(NEW.to_owned()); 4]);
}
