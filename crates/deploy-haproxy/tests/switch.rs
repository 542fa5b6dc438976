//! The HAProxy TrafficSwitch against a real haproxy: conformance, blue-green and canary counted
//! by real HTTP requests, drain with a request in flight, sessions cut, bring-back, durability
//! across reloads.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::testing::conformance;
use deploy_core::testing::process::wait_until;
use deploy_core::{ErrorKind, HttpProbe, TargetId, TrafficSwitch, Weights};
use deploy_haproxy::testing::{
    FixtureConfig, HaproxyFixture, HeldRequest, Load, LoadConfig, ServerSpec, Slot,
};
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
        .check_interval(Duration::from_millis(300))
        .check_timeout(Duration::from_secs(5))
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
        .server(TargetId::new("slot-a").unwrap(), "blue")
        .server(TargetId::new("slot-b").unwrap(), "green")
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
    let report = s
        .drain_and_wait(&green, Duration::from_secs(30))
        .await
        .unwrap();
    println!("drain: {report:?}");
    assert!(report.drained());
    assert!(report.took >= Duration::from_millis(1_000), "{report:?}");
    assert_eq!(s.active_sessions(&green).await.unwrap(), 0);
    let row = h.client().server_stat("app", "green").await.unwrap();
    assert_eq!(row.base_status(), "DRAIN");
    assert_eq!(s.weights().await.unwrap(), w(100, 0));
    let r = slow.finish().await;
    assert_eq!((r.ok, r.failed, r.by_slot["green"]), (1, 0, 1), "{r:?}");
}

#[tokio::test]
async fn drain_and_wait_past_its_timeout_reports_what_was_left_and_cuts_nothing() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
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
    let report = s
        .drain_and_wait(&green, Duration::from_millis(300))
        .await
        .unwrap();
    println!("drain past its timeout: {report:?}");
    assert!(!report.drained());
    assert_eq!(report.sessions_left, 1);
    assert!(report.took >= Duration::from_millis(300));
    // No policy of its own past the timeout: still draining, the request goes on.
    let row = h.client().server_stat("app", "green").await.unwrap();
    assert_eq!(row.base_status(), "DRAIN", "{}", row.status);
    let r = slow.finish().await;
    assert_eq!((r.ok, r.failed), (1, 0), "{r:?}");
}

/// Backend `app` with slots `blue` (weight 0) and `green` (weight 100); no retry of an empty
/// response (a cut request would be replayed on another server) and a short `timeout client`
/// (on 2.6 the client of a cut request is answered when it strikes).
async fn cut_fixture() -> (HaproxyFixture, [Slot; 2]) {
    let blue = Slot::start("blue").await.unwrap();
    let green = Slot::start("green").await.unwrap();
    let mut config = FixtureConfig::new(vec![
        ServerSpec::new("blue", blue.addr(), 0),
        ServerSpec::new("green", green.addr(), 100),
    ]);
    config.retry_on = "conn-failure".into();
    config.client_timeout = Duration::from_secs(2);
    (HaproxyFixture::start(config).await.unwrap(), [blue, green])
}

/// The `srv_admin_state` of `server` in a `show servers state` dump.
fn admin_state(dump: &str, server: &str) -> Option<u32> {
    let mut lines = dump.lines().skip(1);
    let header: Vec<&str> = lines
        .next()?
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let name = header.iter().position(|c| *c == "srv_name")?;
    let admin = header.iter().position(|c| *c == "srv_admin_state")?;
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(name) == Some(&server))
        .and_then(|f| f.get(admin)?.parse().ok())
}

#[tokio::test]
async fn cut_sessions_closes_a_held_request_and_a_weight_brings_the_server_back() {
    let (h, _slots) = cut_fixture().await;
    let s = switch(&h);
    let (_, green) = ids();
    assert_eq!(s.weights().await.unwrap(), w(0, 100));

    // A request green answers only after 30 s holds a session there.
    let held = HeldRequest::send(h.frontend(), "/slow?ms=30000")
        .await
        .unwrap();
    wait_until(
        "the held session on green",
        Duration::from_secs(5),
        || async { s.active_sessions(&green).await.unwrap() == 1 },
    )
    .await
    .unwrap();

    // A drain lets it go on.
    s.drain(&green).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.active_sessions(&green).await.unwrap(),
        1,
        "drain cuts nothing"
    );
    assert!(!held.has_ended());

    // The cut closes it.
    let started = std::time::Instant::now();
    s.cut_sessions(&green).await.unwrap();
    let took = started.elapsed();
    println!("cut_sessions took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "read back promptly: {took:?}"
    );
    assert_eq!(s.active_sessions(&green).await.unwrap(), 0);
    assert_eq!(s.weights().await.unwrap(), w(0, 0));
    assert!(
        h.client()
            .server_stat("app", "green")
            .await
            .unwrap()
            .is_maint()
    );
    let saved = std::fs::read_to_string(h.state_file()).unwrap();
    assert_eq!(
        admin_state(&saved, "green"),
        Some(0x01),
        "maint saved: {saved}"
    );

    // The client is not left hanging until the 30 s answer: HAProxy 2.6 answers it 502 when
    // `timeout client` (2 s here) strikes.
    let outcome = held.ended(Duration::from_secs(10)).await.unwrap();
    println!("held request: {outcome:?}");
    assert_ne!(outcome.status, Some(200), "{outcome:?}");
    assert!(!outcome.received.contains("green"), "{outcome:?}");
    assert!(outcome.after < Duration::from_secs(8), "{outcome:?}");

    // A weight > 0 brings it back (probe-less: after a passing HAProxy check), and it serves.
    s.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(s.weights().await.unwrap(), w(0, 100));
    let row = h.client().server_stat("app", "green").await.unwrap();
    assert_eq!(row.base_status(), "UP", "{}", row.status);
    assert_eq!(count(&h, 200).await, (0, 200, 0));
    let saved = std::fs::read_to_string(h.state_file()).unwrap();
    assert_eq!(
        admin_state(&saved, "green"),
        Some(0),
        "ready saved: {saved}"
    );
}

#[tokio::test]
async fn cut_sessions_of_an_unknown_target_is_not_found_and_changes_nothing() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    let e = s
        .cut_sessions(&TargetId::new("nosuch").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(s.weights().await.unwrap(), w(100, 0));
}

#[tokio::test]
async fn bring_back_from_maint_probes_and_waits_for_haproxys_check() {
    let (h, [_blue, green_slot]) = HaproxyFixture::blue_green().await.unwrap();
    let probe = Arc::new(HttpProbe::builder().build().unwrap());
    let s = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .check_interval(Duration::from_millis(300))
        .check_timeout(Duration::from_secs(5))
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
        .check_interval(Duration::from_millis(300))
        .check_timeout(Duration::from_secs(5))
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

#[tokio::test]
async fn weight_of_one_server_reads_as_weights_does_when_its_checks_hold_it_down() {
    let (h, [_blue, green_slot]) = HaproxyFixture::blue_green().await.unwrap();
    let s = switch(&h);
    let (blue, green) = ids();
    s.set_weights(&w(50, 50)).await.unwrap();
    let c = h.client();
    let down = || async {
        c.server_stat("app", "green")
            .await
            .is_ok_and(|r| r.base_status() == "DOWN")
    };

    // DOWN by its checks, not drained: the weight it will take back once UP.
    green_slot.set_healthy(false);
    wait_until("green DOWN", Duration::from_secs(10), down)
        .await
        .unwrap();
    assert_eq!(s.weights().await.unwrap(), w(50, 50));
    assert_eq!(s.weight_of(&green).await.unwrap(), Some(50));

    // Drained while DOWN: `show stat` still reads DOWN, the admin state says drain — 0, as
    // `weights` reads it.
    s.drain(&green).await.unwrap();
    assert!(down().await);
    assert_eq!(s.weights().await.unwrap(), w(50, 0));
    assert_eq!(s.weight_of(&green).await.unwrap(), Some(0));
    assert_eq!(s.weight_of(&blue).await.unwrap(), Some(50));
    assert_eq!(
        s.weight_of(&TargetId::new("nosuch").unwrap())
            .await
            .unwrap(),
        None
    );
}
