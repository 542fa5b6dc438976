//! Blue-green and canary through the plan-file path against real servers: a plan file written
//! with the fixtures' addresses → `PlanFile::parse` → `plan.engine(&Adapters::new())` → deploy,
//! with a real haproxy in front of two release-directory slots, bounded load on haproxy's
//! front end while the traffic moves, and the final state read back from haproxy and the apps.

use std::time::Duration;

use deploy::Outcome;
use deploy::adapters::Adapters;
use deploy::haproxy::testing::{Load, LoadConfig};
use deploy::plan_file::PlanFile;
use deploy::{Release, Version};
use tokio_util::sync::CancellationToken;

mod common;
use common::{
    app_release, haproxy_wait_up, haproxy_weights, install, plan_text, two_slots, version_of,
};

fn v(s: &str) -> Release {
    Release::new(Version::new(s).unwrap())
}

async fn wait_until_served(load: &Load, version: &str) {
    let before = load.served_by(version);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while load.served_by(version) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "{version} is not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load_config() -> LoadConfig {
    let mut c = LoadConfig::new(4, 400_000);
    c.max_duration = Duration::from_secs(40);
    c.think_time = Duration::from_millis(2);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_from_a_plan_file_switches_haproxy_with_zero_failed_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    app_release(dir, "1.0.0", 0.0);
    app_release(dir, "2.0.0", 0.0);
    let text = plan_text(
        dir,
        &h,
        &blue,
        &green,
        "2.0.0",
        "kind = \"blue_green\"\nbake = \"1200ms\"",
    );
    let plan = PlanFile::parse("blue-green.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(&engine, &v("1.0.0").with_artifact(dir.join("app-1.0.0"))).await;

    haproxy_wait_up(&h, &["blue", "green"]).await;
    let load = Load::start(h.frontend(), load_config(), &["1.0.0", "2.0.0"]);
    wait_until_served(&load, "1.0.0").await;
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
    wait_until_served(&load, "2.0.0").await;
    let served_v1 = load.served_by("1.0.0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    println!(
        "blue-green under load: sent {}, ok {}, failed {}, by version {:?}",
        r.sent, r.ok, r.failed, r.by_slot
    );

    assert_eq!(haproxy_weights(&h, &["blue", "green"]).await, [0, 100]);
    assert_eq!(version_of(&green).await, "2.0.0");
    assert_eq!(
        version_of(&blue).await,
        "1.0.0",
        "blue stays for a switch back"
    );
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, r.sent);
    assert_eq!(
        r.by_slot["1.0.0"], served_v1,
        "nothing served 1.0.0 after the switch"
    );
    assert!(r.by_slot["2.0.0"] > 0);
    assert!(
        report
            .verdicts
            .iter()
            .any(|x| x.gate == "error-rate" && x.verdict.kind == deploy::VerdictKind::Pass),
        "{report}"
    );
    let status = engine.status().await.unwrap().unwrap();
    assert_eq!(status.outcome, Some(Outcome::Promoted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_gate_fails_is_rolled_back_and_only_its_own_errors_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    app_release(dir, "1.0.0", 0.0);
    // The canary answers 1 request in 10 with a 500.
    app_release(dir, "2.0.0", 0.1);
    let text = plan_text(
        dir,
        &h,
        &blue,
        &green,
        "2.0.0",
        "kind = \"canary\"\nsteps = [{ set_weight = 25 }, { analyze = \"4s\" }, { set_weight = 50 }, { analyze = \"4s\" }]",
    );
    let plan = PlanFile::parse("canary.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(&engine, &v("1.0.0").with_artifact(dir.join("app-1.0.0"))).await;

    haproxy_wait_up(&h, &["blue", "green"]).await;
    let load = Load::start(h.frontend(), load_config(), &["1.0.0", "2.0.0"]);
    wait_until_served(&load, "1.0.0").await;
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
    let served_v2 = load.served_by("2.0.0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    println!(
        "canary under load: sent {}, ok {}, failed {} (canary's injected errors {}), by version {:?}",
        r.sent,
        r.ok,
        r.failed,
        green.errors(),
        r.by_slot
    );

    assert_eq!(
        haproxy_weights(&h, &["blue", "green"]).await,
        [100, 0],
        "weights back"
    );
    assert_eq!(version_of(&blue).await, "1.0.0");
    assert_eq!(
        version_of(&green).await,
        "1.0.0",
        "the canary slot is back on 1.0.0"
    );
    assert!(
        report
            .verdicts
            .iter()
            .any(|x| x.gate == "error-rate" && x.verdict.kind == deploy::VerdictKind::Fail),
        "{report}"
    );
    assert!(green.errors() > 0, "the canary took traffic and erred");
    assert_eq!(
        r.failed,
        green.errors(),
        "the only failures are the canary's own injected errors: {:?}",
        r.errors
    );
    assert_eq!(blue.errors(), 0);
    assert_eq!(
        r.by_slot.get("2.0.0").copied().unwrap_or(0),
        served_v2,
        "nothing served 2.0.0 after the rollback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_judged_by_a_real_prometheus_is_rolled_back() {
    use deploy::prometheus::testing::{PrometheusServer, ScrapeTarget};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (h, blue, green) = two_slots(dir).await;
    // Prometheus scrapes both slots every 500 ms, labelling their series target="blue|green".
    let prometheus = PrometheusServer::start_with(
        &[
            ScrapeTarget::new("blue", blue.server.addr()),
            ScrapeTarget::new("green", green.server.addr()),
        ],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    app_release(dir, "1.0.0", 0.0);
    app_release(dir, "2.0.0", 0.1);
    let text = plan_text(
        dir,
        &h,
        &blue,
        &green,
        "2.0.0",
        "kind = \"canary\"\nsteps = [{ set_weight = 25 }, { analyze = \"12s\" }, { set_weight = 50 }]",
    );
    let scrape_gate = "[[gates]]\nkind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"300ms\"\n";
    assert!(text.contains(scrape_gate));
    let text = text
        .replace(
            scrape_gate,
            &format!(
                "[[gates]]\nkind = \"promql\"\nprometheus = \"{}\"\npreset = \"error_rate\"\n\
                 max_error_rate = 0.01\nwindow = \"3s\"\ntarget_label = \"target\"\n",
                prometheus.url()
            ),
        )
        .replace(
            "[policies.analysis]\ninterval = \"400ms\"",
            "[policies.analysis]\ninterval = \"1s\"\nno_data = \"ignore\"\ninconclusive_limit = 6",
        );
    let plan = PlanFile::parse("canary-promql.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(&engine, &v("1.0.0").with_artifact(dir.join("app-1.0.0"))).await;
    haproxy_wait_up(&h, &["blue", "green"]).await;
    let load = Load::start(h.frontend(), load_config(), &["1.0.0", "2.0.0"]);
    wait_until_served(&load, "1.0.0").await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    let failing = report
        .verdicts
        .iter()
        .find(|x| x.gate == "error-rate" && x.verdict.kind == deploy::VerdictKind::Fail)
        .unwrap_or_else(|| panic!("no failing PromQL verdict:\n{report}"));
    println!(
        "canary judged by Prometheus: failing verdict {:?} after {:?}; load sent {}, failed {} \
         (canary's injected errors {})",
        failing.verdict.value,
        report.duration,
        r.sent,
        r.failed,
        green.errors()
    );
    let value = failing.verdict.value.unwrap();
    assert!((0.05..0.2).contains(&value), "about 10 % errors: {value}");
    assert_eq!(haproxy_weights(&h, &["blue", "green"]).await, [100, 0]);
    assert_eq!(version_of(&green).await, "1.0.0");
    assert!(green.errors() > 0);
    assert_eq!(r.failed, green.errors(), "{:?}", r.errors);
}
