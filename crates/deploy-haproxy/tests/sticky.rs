//! Sticky canary cohorts against a real haproxy: users with cookie jars keep their version
//! across canary steps, new users follow the weight, testers choose with the header, and
//! promotion and rollback move everyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deploy_core::testing::{FakeGate, FakeProbe, FakeTarget};
use deploy_core::{
    CanaryStep, Engine, Environment, ErrorKind, Outcome, PlanOptions, Policies, Release, Strategy,
    TargetId, TrafficSwitch, Version, Weights,
};
use deploy_haproxy::testing::{CookieUser, FixtureConfig, HaproxyFixture, ServerSpec, Slot, visit};
use deploy_haproxy::{HaproxySwitch, StickyConfig};
use tokio_util::sync::CancellationToken;

const CONNECTIONS: usize = 16;

fn w(blue: u32, green: u32) -> Weights {
    Weights::new()
        .with(TargetId::new("blue").unwrap(), blue)
        .with(TargetId::new("green").unwrap(), green)
}

fn switch(h: &HaproxyFixture) -> HaproxySwitch {
    HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .poll_interval(Duration::from_millis(20))
        .check_interval(Duration::from_millis(300))
        .check_timeout(Duration::from_secs(5))
        .state_file(h.state_file())
        .sticky(h.sticky().expect("a sticky fixture"))
        .build()
        .unwrap()
}

fn users(n: usize) -> Vec<CookieUser> {
    vec![CookieUser::new(); n]
}

/// How many of `users` were last answered by `slot`.
fn on(users: &[CookieUser], slot: &str) -> usize {
    users.iter().filter(|u| u.last() == Some(slot)).count()
}

/// Every user saw exactly one version, and still holds a cookie naming it.
fn assert_one_version_each(users: &[CookieUser], what: &str) {
    for (i, u) in users.iter().enumerate() {
        assert_eq!(u.versions().len(), 1, "{what}: user {i} saw {:?}", u.seen);
        let v = u.last().unwrap();
        assert_eq!(
            u.cookie.as_deref(),
            Some(format!("SRV={v}").as_str()),
            "{what}: user {i}"
        );
    }
}

/// The share of new users on the canary is within `points` percentage points of `percent`.
///
/// Tolerances: were each new user placed independently with probability p, the canary's count
/// among n = 1,000 would have a standard deviation of √(n·p·(1−p)): 9.5 users (0.95 points) at
/// 10 %, 15.8 users (1.58 points) at 50 %. The tests allow about 3 standard deviations: ±3 points
/// at 10 %, ±5 points at 50 %. (Round robin places them more evenly than that.)
fn assert_share(users: &[CookieUser], percent: f64, points: f64, what: &str) {
    let share = 100.0 * on(users, "green") as f64 / users.len() as f64;
    assert!(
        (share - percent).abs() <= points,
        "{what}: {share:.1} % of new users on the canary, expected {percent} ± {points}"
    );
    eprintln!(
        "{what}: {share:.1} % of {} new users on the canary",
        users.len()
    );
}

#[tokio::test]
async fn a_sticky_canary_keeps_each_user_on_one_version_until_promotion() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (h, _slots) = HaproxyFixture::blue_green_sticky().await.unwrap();
        let s = switch(&h);
        s.check_sticky().await.unwrap();
        let addr = h.frontend();

        // 10 %: 1,000 new users, each comes back twice.
        s.set_weights(&w(90, 10)).await.unwrap();
        let mut early = users(1_000);
        for _ in 0..3 {
            visit(addr, &mut early, None, CONNECTIONS).await.unwrap();
        }
        assert_one_version_each(&early, "at 10 %");
        assert_share(&early, 10.0, 3.0, "at 10 %");

        // 50 %: the early users stay where they were; 1,000 more follow the new weight.
        s.set_weights(&w(50, 50)).await.unwrap();
        let mut late = users(1_000);
        for _ in 0..2 {
            visit(addr, &mut early, None, CONNECTIONS).await.unwrap();
            visit(addr, &mut late, None, CONNECTIONS).await.unwrap();
        }
        assert_one_version_each(&early, "early users at 50 %");
        assert_one_version_each(&late, "late users at 50 %");
        assert_share(&late, 50.0, 5.0, "at 50 %");

        // Testers choose per request, and stay in their cohort without the header.
        let mut stable: Vec<CookieUser> = early
            .iter()
            .filter(|u| u.last() == Some("blue"))
            .take(100)
            .cloned()
            .collect();
        let mut canary: Vec<CookieUser> = late
            .iter()
            .filter(|u| u.last() == Some("green"))
            .take(100)
            .cloned()
            .collect();
        let mut fresh = users(100);
        visit(addr, &mut stable, Some(("X-Canary", "always")), 4)
            .await
            .unwrap();
        visit(addr, &mut canary, Some(("X-Canary", "never")), 4)
            .await
            .unwrap();
        visit(addr, &mut fresh, Some(("X-Canary", "always")), 4)
            .await
            .unwrap();
        assert_eq!(on(&stable, "green"), 100, "always → the canary");
        assert_eq!(on(&canary, "blue"), 100, "never → the stable version");
        assert_eq!(on(&fresh, "green"), 100, "always, without a cookie");
        assert!(
            fresh.iter().all(|u| u.cookie.is_none()),
            "the header places nobody"
        );
        visit(addr, &mut stable, None, 4).await.unwrap();
        visit(addr, &mut canary, None, 4).await.unwrap();
        assert_eq!(on(&stable, "blue"), 100, "back in the stable cohort");
        assert_eq!(on(&canary, "green"), 100, "back in the canary cohort");

        // Promotion: everyone on green, the old cohort placed again; blue in maint.
        s.set_weights(&w(0, 100)).await.unwrap();
        let mut everyone: Vec<CookieUser> = early.iter().chain(&late).cloned().collect();
        visit(addr, &mut everyone, None, CONNECTIONS).await.unwrap();
        assert_eq!(on(&everyone, "green"), 2_000, "after promotion");
        let blue = s.client().server_stat("app", "blue").await.unwrap();
        assert!(blue.is_maint(), "{}", blue.status);
        assert_eq!(s.weights().await.unwrap(), w(0, 100));
        // With one version left, the header has nothing else to choose.
        let mut testers = users(20);
        visit(addr, &mut testers, Some(("X-Canary", "never")), 4)
            .await
            .unwrap();
        assert_eq!(on(&testers, "green"), 20);
        // The state file keeps blue in maint across a reload (srv_admin_state 1).
        let state = std::fs::read_to_string(h.state_file()).unwrap();
        let blue_line: Vec<&str> = state
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some("blue"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(blue_line[6], "1", "{state}");
    })
    .await
    .expect("the test took more than 90 s");
}

#[tokio::test]
async fn a_rolled_back_sticky_canary_returns_its_users_to_the_stable_version() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (h, _slots) = HaproxyFixture::blue_green_sticky().await.unwrap();
        let s = switch(&h);
        let addr = h.frontend();

        // Green becomes the stable version first (blue in maint), then blue is the canary: the
        // map's `always` must follow the roles.
        s.set_weights(&w(0, 100)).await.unwrap();
        s.set_weights(&w(20, 80)).await.unwrap();
        let mut cohort = users(1_000);
        for _ in 0..2 {
            visit(addr, &mut cohort, None, CONNECTIONS).await.unwrap();
        }
        assert_one_version_each(&cohort, "at 20 % blue");
        let on_blue = on(&cohort, "blue");
        // 20 % ± 4 points (σ = √(1000·0.2·0.8) = 12.6 users, 1.26 points).
        assert!((160..=240).contains(&on_blue), "{on_blue} of 1,000 on blue");
        let mut testers = users(50);
        visit(addr, &mut testers, Some(("X-Canary", "always")), 4)
            .await
            .unwrap();
        assert_eq!(
            on(&testers, "blue"),
            50,
            "always → the canary, blue this time"
        );

        // Rollback: the canary's users return to green, and so do testers.
        s.set_weights(&w(0, 100)).await.unwrap();
        visit(addr, &mut cohort, None, CONNECTIONS).await.unwrap();
        assert_eq!(on(&cohort, "green"), 1_000, "after rollback");
        let moved = cohort.iter().filter(|u| u.versions().len() == 2).count();
        assert_eq!(moved, on_blue, "only the canary's users changed version");
        assert!(
            cohort
                .iter()
                .all(|u| u.cookie.as_deref() == Some("SRV=green")),
            "placed again on green"
        );
        visit(addr, &mut testers, Some(("X-Canary", "always")), 4)
            .await
            .unwrap();
        assert_eq!(
            on(&testers, "green"),
            50,
            "always → green after the rollback"
        );
    })
    .await
    .expect("the test took more than 90 s");
}

#[tokio::test]
async fn check_sticky_names_what_the_running_config_lacks() {
    let (plain, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = HaproxySwitch::builder("app")
        .socket(plain.admin_socket())
        .sticky(StickyConfig::new("SRV", "/etc/haproxy/canary.map"))
        .build()
        .unwrap();
    let e = s.check_sticky().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let msg = e.to_string();
    for part in [
        "backend app has no `cookie SRV insert indirect nocache` line",
        "server app/blue has no `cookie blue` option",
        "server app/green has no `cookie green` option",
        "map /etc/haproxy/canary.map",
    ] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }

    let (sticky, _slots) = HaproxyFixture::blue_green_sticky().await.unwrap();
    let other_cookie = HaproxySwitch::builder("app")
        .socket(sticky.admin_socket())
        .sticky(StickyConfig::new("USER", sticky.sticky().unwrap().map))
        .build()
        .unwrap();
    let msg = other_cookie.check_sticky().await.unwrap_err().to_string();
    assert!(msg.contains(r#"inserts cookie "SRV", not "USER""#), "{msg}");
    switch(&sticky).check_sticky().await.unwrap();
}

#[tokio::test]
async fn a_sticky_switch_passes_the_traffic_switch_conformance_suite() {
    let (h, _slots) = HaproxyFixture::blue_green_sticky().await.unwrap();
    let s = switch(&h);
    let (b, g) = (
        TargetId::new("blue").unwrap(),
        TargetId::new("green").unwrap(),
    );
    deploy_core::testing::conformance::traffic_switch(&s, &b, &g).await;
}

/// Users visiting in rounds until `stop`, `fresh` new users joining each round.
fn visiting(
    addr: std::net::SocketAddr,
    mut users: Vec<CookieUser>,
    fresh: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<CookieUser>> {
    tokio::spawn(async move {
        // At most 50 rounds (a deploy here takes about 20): bounded even if nobody stops it.
        for _ in 0..50 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            users.extend(std::iter::repeat_n(CookieUser::new(), fresh));
            visit(addr, &mut users, None, 8).await.unwrap();
        }
        users
    })
}

/// How many times the version a user saw changed.
fn changes(u: &CookieUser) -> usize {
    u.seen.windows(2).filter(|p| p[0] != p[1]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_promotes_and_rolls_back_a_sticky_canary_with_users_moving_at_most_once() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (h, [blue_slot, green_slot]) = HaproxyFixture::blue_green_sticky().await.unwrap();
        let s = Arc::new(switch(&h));
        let endpoint = |slot: &deploy_haproxy::testing::Slot| {
            deploy_core::Endpoint::http("127.0.0.1", slot.addr().port())
        };
        let blue = Arc::new(
            FakeTarget::new("blue")
                .with_current("1.0.0")
                .with_endpoint(endpoint(&blue_slot)),
        );
        let green = Arc::new(
            FakeTarget::new("green")
                .with_current("1.0.0")
                .with_endpoint(endpoint(&green_slot)),
        );
        let probe = Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()]));
        let mut p = Policies::default();
        p.probe.interval = Duration::from_millis(20);
        p.analysis.interval = Duration::from_millis(50);
        let engine = |gate: FakeGate| {
            let env = Environment::builder("haproxy")
                .target(blue.clone())
                .target(green.clone())
                .switch(s.clone())
                .probe(probe.clone())
                .gate(Arc::new(gate))
                .build()
                .unwrap();
            Engine::new(env).with_policies(p.clone())
        };
        let canary = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(10),
                CanaryStep::Analyze(Duration::from_millis(400)),
                CanaryStep::SetWeight(50),
                CanaryStep::Analyze(Duration::from_millis(400)),
            ],
        };

        // 2.0.0 on green, promoted, while users come and go.
        let stop = Arc::new(AtomicBool::new(false));
        let users = visiting(h.frontend(), users(100), 20, stop.clone());
        let v2 = Release::new(Version::new("2.0.0").unwrap());
        let report = engine(FakeGate::passing("errors"))
            .deploy(
                &canary,
                &v2,
                &PlanOptions::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::Promoted, "{report}");
        stop.store(true, Ordering::SeqCst);
        let mut users = users.await.unwrap();
        visit(h.frontend(), &mut users, None, 8).await.unwrap();
        let placed_on_canary = users
            .iter()
            .filter(|u| u.seen.first().map(String::as_str) == Some("green"))
            .count();
        eprintln!(
            "promoted: {} users, {placed_on_canary} placed on the canary",
            users.len()
        );
        assert!(placed_on_canary > 0, "some users were placed on the canary");
        assert_eq!(on(&users, "green"), users.len(), "everyone on green");
        for u in &users {
            assert!(changes(u) <= 1, "blue → green once at most: {:?}", u.seen);
        }
        let promoted_at: Vec<usize> = users.iter().map(|u| u.seen.len()).collect();

        // 3.0.0 on blue, its gate fails: rolled back; users placed on blue return to green.
        let stop = Arc::new(AtomicBool::new(false));
        let users = visiting(h.frontend(), users, 20, stop.clone());
        let v3 = Release::new(Version::new("3.0.0").unwrap());
        // Users are placed on the canary for half a second before its gate fails.
        let failing = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(50),
                CanaryStep::Pause(Duration::from_millis(500)),
                CanaryStep::Analyze(Duration::from_millis(200)),
            ],
        };
        let report = engine(FakeGate::failing("errors"))
            .deploy(
                &failing,
                &v3,
                &PlanOptions::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
        stop.store(true, Ordering::SeqCst);
        let mut users = users.await.unwrap();
        visit(h.frontend(), &mut users, None, 8).await.unwrap();
        assert_eq!(s.weights().await.unwrap(), w(0, 100));
        assert_eq!(on(&users, "green"), users.len(), "everyone back on green");
        let mut placed_on_blue = 0;
        for (i, u) in users.iter().enumerate() {
            // What the user saw since the promotion: green only, or blue (placed on the
            // canary) and then green from the rollback on.
            let mut since = CookieUser::new();
            since.seen = u.seen[promoted_at.get(i).copied().unwrap_or(0)..].to_vec();
            assert!(changes(&since) <= 1, "{:?}", since.seen);
            if since.seen.first().map(String::as_str) == Some("blue") {
                placed_on_blue += 1;
            }
        }
        eprintln!(
            "rolled back: {} users, {placed_on_blue} placed on the canary, back on green",
            users.len()
        );
        assert!(placed_on_blue > 0, "some users were placed on the canary");
    })
    .await
    .expect("the test took more than 90 s");
}

/// Users placed on blue while it was the only version, gone during the promotion to green,
/// come back once blue is the next canary at 20 %: how many land on blue.
async fn stale_users_on_the_next_canary(sticky: StickyConfig) -> usize {
    let blue = Slot::start("blue").await.unwrap();
    let green = Slot::start("green").await.unwrap();
    let config = FixtureConfig::new(vec![
        ServerSpec::new("blue", blue.addr(), 100),
        ServerSpec::new("green", green.addr(), 0),
    ])
    .with_sticky(sticky);
    let h = HaproxyFixture::start(config).await.unwrap();
    let s = switch(&h);
    s.check_sticky().await.unwrap();
    let mut stale = users(300);
    visit(h.frontend(), &mut stale, None, CONNECTIONS)
        .await
        .unwrap();
    assert_eq!(on(&stale, "blue"), 300);
    s.set_weights(&w(0, 100)).await.unwrap();
    s.set_weights(&w(20, 80)).await.unwrap();
    visit(h.frontend(), &mut stale, None, CONNECTIONS)
        .await
        .unwrap();
    on(&stale, "blue")
}

#[tokio::test]
async fn a_renewed_dynamic_cookie_key_keeps_old_cookies_out_of_the_next_canary() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // Static cookies: a cookie naming blue still names blue when blue comes back.
        let fixed = stale_users_on_the_next_canary(StickyConfig::new("SRV", "/m.map")).await;
        assert_eq!(
            fixed, 300,
            "static cookies lead back to the server they name"
        );
        // Dynamic cookies renewed at the promotion: the users are placed by the weights.
        // 20 % of 300 ± 7 points (σ = √(300·0.2·0.8) = 6.9 users, 2.3 points).
        let renewed =
            stale_users_on_the_next_canary(StickyConfig::new("SRV", "/m.map").with_dynamic_key())
                .await;
        eprintln!("stale users on the next canary: static {fixed}, renewed key {renewed} of 300");
        assert!((39..=81).contains(&renewed), "{renewed} of 300 on blue");
    })
    .await
    .expect("the test took more than 60 s");
}

/// A plan is refused before anything changes when the running HAProxy lacks the lines a sticky
/// canary needs (the engine asks the switch's `check` before it reads the live state).
#[tokio::test]
async fn planning_a_sticky_canary_on_a_haproxy_without_the_lines_is_refused() {
    let (plain, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let s = Arc::new(
        HaproxySwitch::builder("app")
            .socket(plain.admin_socket())
            .sticky(StickyConfig::new("SRV", "/etc/haproxy/canary.map"))
            .build()
            .unwrap(),
    );
    let before = s.weights().await.unwrap();
    let blue = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
    let green = Arc::new(FakeTarget::new("green").with_current("1.0.0"));
    let env = Environment::builder("haproxy")
        .target(blue.clone())
        .target(green.clone())
        .switch(s.clone())
        .probe(Arc::new(FakeProbe::new(vec![blue, green])))
        .build()
        .unwrap();
    let canary = Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(10)],
    };
    let e = Engine::new(env)
        .plan(
            &canary,
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backend app has no `cookie SRV insert indirect nocache` line"),
        "{e}"
    );
    assert_eq!(s.weights().await.unwrap(), before, "nothing changed");
}
