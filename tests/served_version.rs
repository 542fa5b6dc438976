//! The served-version check at the front door against real servers: a real haproxy in front of
//! two release-directory slots, a plan file with `[served_check]`, and the versions read back
//! through haproxy's frontend. A slot whose `/health` reports the new release while its workers
//! still answer with the old one ("switched is not served") is caught after the switch and
//! rolled back; a correct release passes every traffic step.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use deploy::Outcome;
use deploy::adapters::Adapters;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::testing::{TestHttpServer, TestResponse};
use deploy::{Release, Step, Version};
use tokio_util::sync::CancellationToken;

mod common;
use common::{artifact, haproxy_wait_up, haproxy_weights, install, q};

/// A slot's application: `/health` reports the version under `<root>/current` (the release
/// directory's `VERSION`); every other path answers with header `X-Version` — the same version,
/// unless its workers are `pinned` to an older one (a stale worker that never reloaded).
struct Slot {
    server: TestHttpServer,
    pinned: Arc<Mutex<Option<String>>>,
}

impl Slot {
    async fn start(root: PathBuf) -> Self {
        let pinned: Arc<Mutex<Option<String>>> = Arc::default();
        let p = pinned.clone();
        let server = TestHttpServer::start(move |req| {
            let current = std::fs::read_to_string(root.join("current/VERSION"))
                .ok()
                .map(|v| v.trim().to_owned());
            let Some(current) = current else {
                return TestResponse::json(503, &serde_json::json!({"status": "down"}));
            };
            if req.path == "/health" {
                return TestResponse::json(
                    200,
                    &serde_json::json!({"status": "ok", "version": current}),
                );
            }
            let served = p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or(current);
            TestResponse::text(200, "hello").with_header("X-Version", served)
        })
        .await
        .unwrap();
        Self { server, pinned }
    }

    /// From now on its workers answer with `version`, whatever is deployed.
    fn pin(&self, version: &str) {
        *self.pinned.lock().unwrap_or_else(PoisonError::into_inner) = Some(version.to_owned());
    }

    async fn health_version(&self) -> String {
        let body = common::get(&self.server.url("/health")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_str().unwrap_or_default().to_owned()
    }
}

/// `blue` (live, weight 100) and `green` (idle) behind a real haproxy.
async fn two_slots(dir: &Path) -> (HaproxyFixture, Slot, Slot) {
    let blue = Slot::start(dir.join("blue")).await;
    let green = Slot::start(dir.join("green")).await;
    let h = HaproxyFixture::start(FixtureConfig::new(vec![
        ServerSpec::new("blue", blue.server.addr(), 100),
        ServerSpec::new("green", green.server.addr(), 0),
    ]))
    .await
    .unwrap();
    (h, blue, green)
}

fn plan_text(dir: &Path, h: &HaproxyFixture, blue: &Slot, green: &Slot, strategy: &str) -> String {
    let served = format!(
        "[served_check]\nurl = \"http://{}/\"\nheader = \"X-Version\"\nrequests = 60\n\
         tolerance = 0.1\ntimeout = \"2s\"\n",
        h.frontend()
    );
    format!(
        "{}\n{served}",
        plan_without_check(dir, h, blue, green, strategy)
    )
}

fn plan_without_check(
    dir: &Path,
    h: &HaproxyFixture,
    blue: &Slot,
    green: &Slot,
    strategy: &str,
) -> String {
    format!(
        r#"
[environment]
name = "served"
state_dir = {state}

[release]
version = "2.0.0"
artifact = {artifact}

[strategy]
{strategy}

[policies.probe]
interval = "50ms"
deadline = "5s"

[[targets]]
id = "blue"
root = {blue_root}
endpoint = "{blue_url}"

[[targets]]
id = "green"
root = {green_root}
endpoint = "{green_url}"

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"
state_file = {state_file}
"#,
        state = q(&dir.join("state")),
        artifact = q(&dir.join("build-2.0.0")),
        blue_root = q(&dir.join("blue")),
        green_root = q(&dir.join("green")),
        blue_url = blue.server.url(""),
        green_url = green.server.url(""),
        socket = q(Path::new(&h.admin_socket().to_string())),
        state_file = q(h.state_file()),
    )
}

/// The `X-Version` of `n` answers through haproxy's frontend, each on a new connection.
async fn served_through(h: &HaproxyFixture, n: usize) -> std::collections::BTreeMap<String, u32> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = client
            .get(format!("http://{}/", h.frontend()))
            .send()
            .await
            .unwrap();
        let v = r
            .headers()
            .get("x-version")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        *seen.entry(v).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_reports_the_new_version_but_serves_the_old_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    artifact(dir, "1.0.0", false);
    artifact(dir, "2.0.0", false);
    let text = plan_text(
        dir,
        &h,
        &blue,
        &green,
        "kind = \"blue_green\"\nbake = \"200ms\"",
    );
    let plan = PlanFile::parse("served.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("build-1.0.0")),
    )
    .await;
    // green's workers loaded 1.0.0 and never reload: its health will say 2.0.0 after the
    // deploy, its answers will not.
    green.pin("1.0.0");
    haproxy_wait_up(&h, &["blue", "green"]).await;

    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
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
        "the switch fails: {:?}",
        failed.step
    );
    let message = &failed.error.as_ref().unwrap().message;
    assert!(
        message.contains(&format!(
            "check the served versions at http://{}/",
            h.frontend()
        )) && message.contains("a version no target should serve (1.0.0 × 60)")
            && message.contains("expected 2.0.0 100 % ± 10 %"),
        "{message}"
    );
    // The live end state: haproxy's weights back on blue, green back on 1.0.0, and every
    // answer through the frontend from 1.0.0 on blue.
    assert_eq!(haproxy_weights(&h, &["blue", "green"]).await, [100, 0]);
    assert_eq!(green.health_version().await, "1.0.0");
    assert_eq!(blue.health_version().await, "1.0.0");
    let before = blue.server.requests();
    let seen = served_through(&h, 20).await;
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("1.0.0".into(), 20)]);
    assert!(blue.server.requests() >= before + 20, "blue served them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_canary_passes_the_check_at_every_traffic_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    artifact(dir, "1.0.0", false);
    artifact(dir, "2.0.0", false);
    let text = plan_text(
        dir,
        &h,
        &blue,
        &green,
        "kind = \"canary\"\nsteps = [{ set_weight = 10 }, { set_weight = 50 }]",
    );
    let plan = PlanFile::parse("served.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("build-1.0.0")),
    )
    .await;
    haproxy_wait_up(&h, &["blue", "green"]).await;

    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let traffic_steps = report
        .steps
        .iter()
        .filter(|s| matches!(s.step, Step::SetWeights { .. }))
        .count();
    let served: Vec<&String> = report
        .notes
        .iter()
        .filter(|n| n.starts_with("served through"))
        .collect();
    println!(
        "{}",
        served
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(served.len(), traffic_steps, "{:?}", report.notes);
    assert!(served[0].contains("2.0.0 10 %"), "{}", served[0]);
    assert!(
        served
            .last()
            .unwrap()
            .contains(": 2.0.0 × 60 (expected 2.0.0 100 % ± 10 %)"),
        "{served:?}"
    );
    assert_eq!(haproxy_weights(&h, &["blue", "green"]).await, [0, 100]);
    assert_eq!(green.health_version().await, "2.0.0");
    let seen = served_through(&h, 20).await;
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("2.0.0".into(), 20)]);
}

/// The control: the same stale slot without `[served_check]` is promoted — the switch and the
/// health checks all say 2.0.0 — while every user gets 1.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_check_the_stale_slot_is_promoted_and_serves_the_old_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    artifact(dir, "1.0.0", false);
    artifact(dir, "2.0.0", false);
    let text = plan_without_check(
        dir,
        &h,
        &blue,
        &green,
        "kind = \"blue_green\"\nbake = \"200ms\"",
    );
    let plan = PlanFile::parse("served.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("build-1.0.0")),
    )
    .await;
    green.pin("1.0.0");
    haproxy_wait_up(&h, &["blue", "green"]).await;
    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(haproxy_weights(&h, &["blue", "green"]).await, [0, 100]);
    assert_eq!(green.health_version().await, "2.0.0");
    let seen = served_through(&h, 20).await;
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("1.0.0".into(), 20)]);
}
