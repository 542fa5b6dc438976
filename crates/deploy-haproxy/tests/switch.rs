//! The HAProxy TrafficSwitch against a real haproxy: conformance, blue-green and canary counted
//! by real HTTP requests, drain with a request in flight, bring-back, durability across reloads.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::testing::conformance;
use deploy_core::{ErrorKind, HttpProbe, TargetId, TrafficSwitch, Weights};
use deploy_haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec, Slot};
use deploy_haproxy::{AdminState, HaproxySwitch};

fn ids() -> (TargetId, TargetId) {
    (
        TargetId::new("blue").unwrap(),
        TargetId::new("green").unwrap(),
    )
}

fn switch(h: &HaproxyFixture) -> HaproxySwitch {
    HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .checks(Duration::from_millis(300), Duration::from_secs(5))
        .state_file(h.state_file())
        .build()
        .unwrap()
}

fn w(blue: u32, green: u32) -> Weights {
    let (b, g) = ids();
    Weights::new().with(b, blue).with(g, green)
}

async fn count(h: &HaproxyFixture, requests: u64) -> (u64, u64, u64) {
    let r = Load::start(
        h.frontend(),
        LoadConfig::new(4, requests),
        &["blue", "green"],
    )
    .finish()
    .await;
    assert_eq!(r.sent, requests, "{r:?}");
    (r.by_slot["blue"], r.by_slot["green"], r.failed)
}

#[tokio::test]
async fn passes_the_traffic_switch_conformance_suite() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    let (b, g) = ids();
    conformance::traffic_switch(&s, &b, &g).await;
    // Also through the TCP socket, with explicit target → server names.
    let tcp = HaproxySwitch::builder("app")
        .socket(h.tcp_socket())
        .target(TargetId::new("slot-a").unwrap(), "blue")
        .target(TargetId::new("slot-b").unwrap(), "green")
        .build()
        .unwrap();
    let (a, bb) = (
        TargetId::new("slot-a").unwrap(),
        TargetId::new("slot-b").unwrap(),
    );
    conformance::traffic_switch(&tcp, &a, &bb).await;
    assert_eq!(
        tcp.weights().await.unwrap(),
        Weights::new().with(a, 100).with(bb, 0)
    );
}

#[tokio::test]
async fn blue_green_switch_is_seen_in_show_stat_and_by_real_requests() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    assert_eq!(s.weights().await.unwrap(), w(100, 0));
    assert_eq!(count(&h, 2_000).await, (2_000, 0, 0));

    s.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(s.weights().await.unwrap(), w(0, 100));
    let rows = h.client().show_stat(Some("app")).await.unwrap();
    let uw: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.uweight)).collect();
    assert_eq!(uw, [("blue", Some(0)), ("green", Some(100))]);
    assert_eq!(count(&h, 2_000).await, (0, 2_000, 0));

    s.set_weights(&w(100, 0)).await.unwrap();
    assert_eq!(count(&h, 1_000).await, (1_000, 0, 0));
}

#[tokio::test]
async fn canary_percentages_map_to_weights_and_to_real_traffic() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    s.set_weights(&w(90, 10)).await.unwrap();
    assert_eq!(s.weights().await.unwrap(), w(90, 10));
    let (blue, green, failed) = count(&h, 2_000).await;
    let share = green as f64 * 100.0 / 2_000.0;
    println!("canary 10 %: blue {blue}, green {green} ({share:.2} %), failed {failed}");
    assert_eq!(failed, 0);
    // roundrobin spreads by weight exactly; ± 1.5 points leaves room for health-check timing.
    assert!((8.5..=11.5).contains(&share), "green got {share} %");

    s.set_weights(&w(50, 50)).await.unwrap();
    let (blue, green, _) = count(&h, 2_000).await;
    let share = green as f64 * 100.0 / 2_000.0;
    println!("canary 50 %: blue {blue}, green {green} ({share:.2} %)");
    assert!((48.5..=51.5).contains(&share), "green got {share} %");
}

#[tokio::test]
async fn weights_above_256_are_refused_and_change_nothing() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    let e = s.set_weights(&w(1000, 0)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("256"), "{e}");
    assert_eq!(s.weights().await.unwrap(), w(100, 0));
}

#[tokio::test]
async fn drain_waits_for_a_long_request_which_completes_with_200() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    let (_, green) = ids();
    s.set_weights(&w(0, 100)).await.unwrap();
    let mut cfg = LoadConfig::new(1, 1);
    cfg.path = "/slow?ms=1500".into();
    let slow = Load::start(h.frontend(), cfg, &["blue", "green"]);
    // Wait until HAProxy has the session on green.
    let mut sessions = 0;
    for _ in 0..100 {
        sessions = s.active_sessions(&green).await.unwrap();
        if sessions > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sessions, 1, "the slow request is on green");
    s.set_weights(&w(100, 0)).await.unwrap();
    let report = s.drain_and_wait(&green).await.unwrap();
    println!("drain: {report:?}");
    assert!(report.drained());
    assert!(!report.escalated_to_maint);
    assert!(report.took >= Duration::from_millis(1_000), "{report:?}");
    assert_eq!(s.active_sessions(&green).await.unwrap(), 0);
    let row = h.client().server_stat("app", "green").await.unwrap();
    assert_eq!(row.base_status(), "DRAIN");
    assert_eq!(s.weights().await.unwrap(), w(100, 0));
    let r = slow.finish().await;
    assert_eq!((r.ok, r.failed, r.by_slot["green"]), (1, 0, 1), "{r:?}");
}

#[tokio::test]
async fn drain_past_its_deadline_escalates_to_maint_and_reports_what_was_left() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .drain_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (_, green) = ids();
    s.set_weights(&w(0, 100)).await.unwrap();
    let mut cfg = LoadConfig::new(1, 1);
    cfg.path = "/slow?ms=1500".into();
    let slow = Load::start(h.frontend(), cfg, &["blue", "green"]);
    while s.active_sessions(&green).await.unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.set_weights(&w(100, 0)).await.unwrap();
    let report = s.drain_and_wait(&green).await.unwrap();
    println!("drain past deadline: {report:?}");
    assert!(!report.drained());
    assert_eq!(report.sessions_left, 1);
    assert!(report.escalated_to_maint);
    assert!(report.took >= Duration::from_millis(300));
    assert!(
        h.client()
            .server_stat("app", "green")
            .await
            .unwrap()
            .is_maint()
    );
    // maint does not cut the request in flight.
    let r = slow.finish().await;
    assert_eq!((r.ok, r.failed), (1, 0), "{r:?}");
}

#[tokio::test]
async fn bring_back_from_maint_probes_and_waits_for_haproxys_check() {
    let (h, [_blue, green_slot]) = HaproxyFixture::blue_green().await.unwrap();
    let probe = Arc::new(HttpProbe::builder().build().unwrap());
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .checks(Duration::from_millis(300), Duration::from_secs(5))
        .probe(probe)
        .build()
        .unwrap();
    let (_, green) = ids();
    let c = h.client();
    c.set_server_state("app", "green", AdminState::Maint)
        .await
        .unwrap();

    // Unhealthy app: the probe refuses, nothing changes.
    green_slot.set_healthy(false);
    let e = s.set_weights(&w(50, 50)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("probe"), "{e}");
    assert!(c.server_stat("app", "green").await.unwrap().is_maint());
    assert_eq!(s.weights().await.unwrap().get(&green), Some(0));

    // Healthy: ready with weight 0, a passing check, then the weight.
    green_slot.set_healthy(true);
    let started = std::time::Instant::now();
    s.set_weights(&w(50, 50)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited for a check: {took:?}"
    );
    let row = c.server_stat("app", "green").await.unwrap();
    assert_eq!(row.status, "UP");
    assert!(row.check_passed(), "{}", row.check_status);
    assert_eq!(s.weights().await.unwrap(), w(50, 50));
}

#[tokio::test]
async fn bring_back_fails_when_haproxys_own_check_fails_and_leaves_maint() {
    let (h, [_blue, green_slot]) = HaproxyFixture::blue_green().await.unwrap();
    // No probe: only HAProxy's check stands between a broken app and traffic.
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .checks(Duration::from_millis(300), Duration::from_secs(5))
        .build()
        .unwrap();
    let c = h.client();
    c.set_server_state("app", "green", AdminState::Maint)
        .await
        .unwrap();
    green_slot.set_healthy(false);
    let e = s.set_weights(&w(50, 50)).await.unwrap_err();
    println!("{e}");
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{e}"
    );
    assert!(c.server_stat("app", "green").await.unwrap().is_maint());
    let (_, green) = ids();
    assert_eq!(s.weights().await.unwrap().get(&green), Some(0));
}

#[tokio::test]
async fn weights_survive_a_reload_with_the_state_file() {
    let (mut h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    s.set_weights(&w(0, 100)).await.unwrap();
    let (_, green) = ids();
    s.drain(&green).await.unwrap();
    s.set_weights(&w(30, 70)).await.unwrap();
    let saved = std::fs::read_to_string(h.state_file()).unwrap();
    assert!(saved.starts_with("1\n# be_id"), "{saved}");
    let took = h.reload().await.unwrap();
    println!("reload took {took:?}");
    assert_eq!(s.weights().await.unwrap(), w(30, 70), "after reload");
    assert_eq!(count(&h, 1_000).await, (300, 700, 0));
}

#[tokio::test]
async fn without_the_state_file_a_reload_snaps_back_to_the_config() {
    let blue = Slot::start("blue").await.unwrap();
    let green = Slot::start("green").await.unwrap();
    let mut h = HaproxyFixture::start(
        FixtureConfig::new(vec![
            ServerSpec::new("blue", blue.addr(), 100),
            ServerSpec::new("green", green.addr(), 0),
        ])
        .without_state_file(),
    )
    .await
    .unwrap();
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .build()
        .unwrap();
    s.set_weights(&w(0, 100)).await.unwrap();
    h.reload().await.unwrap();
    assert_eq!(
        s.weights().await.unwrap(),
        w(100, 0),
        "runtime weights were lost"
    );
}

#[tokio::test]
async fn unknown_backend_and_bad_config_are_clear_errors() {
    let e = HaproxySwitch::builder("bad name")
        .poll_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    for part in ["bad name", "no socket", "poll_interval"] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = HaproxySwitch::builder("nosuch")
        .socket(h.admin_socket())
        .build()
        .unwrap();
    let e = s.weights().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
