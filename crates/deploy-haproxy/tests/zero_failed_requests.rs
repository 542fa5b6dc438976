//! Zero failed requests: a bounded keep-alive load through a real haproxy while the switch moves
//! traffic blue ↔ green and shifts canary weights, spread over the whole load.

use std::time::{Duration, Instant};

use deploy_core::{TargetId, TrafficSwitch, Weights};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{HaproxyFixture, Load, LoadConfig};

const REQUESTS: u64 = 20_000;
const CONNECTIONS: usize = 32;
/// Events: to green, canary 10 % blue, to blue, canary 50/50 — 25 rounds: 50 full switches and
/// 50 canary shifts.
const EVENTS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_under_load_fails_no_request() {
    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let switch = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .state_file(h.state_file())
        .build()
        .unwrap();
    let (blue, green) = (
        TargetId::new("blue").unwrap(),
        TargetId::new("green").unwrap(),
    );
    let w = |b: u32, g: u32| Weights::new().with(blue.clone(), b).with(green.clone(), g);
    let plan = [w(0, 100), w(10, 90), w(100, 0), w(50, 50)];

    // At most 10× the requests and 120 s; stopped once the events are done and REQUESTS were
    // answered, so every event happens under load however fast the machine is.
    let mut cfg = LoadConfig::new(CONNECTIONS, 10 * REQUESTS);
    cfg.max_duration = Duration::from_secs(120);
    let load = Load::start(h.frontend(), cfg, &["blue", "green"]);
    let started = Instant::now();
    let mut full_switches = 0;
    let mut canary_shifts = 0;
    let mut switch_times = Vec::new();
    for i in 0..EVENTS {
        // Spread the events over the load: event i once (i + 1)/(EVENTS + 5) of the requests
        // completed, so the last one lands with load still running after it.
        let threshold = (i + 1) * REQUESTS / (EVENTS + 5);
        while load.completed() < threshold && !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if load.is_finished() {
            let r = load.finish().await;
            panic!("the load ended (time limit) before event {i}: {r:?}");
        }
        let target = &plan[(i % 4) as usize];
        let t = Instant::now();
        switch.set_weights(target).await.unwrap();
        switch_times.push(t.elapsed());
        assert_eq!(
            &switch.weights().await.unwrap(),
            target,
            "read back after event {i}"
        );
        if i % 2 == 0 {
            full_switches += 1;
        } else {
            canary_shifts += 1;
        }
    }
    while load.completed() < REQUESTS && !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    load.stop();
    let report = load.finish().await;
    switch_times.sort();
    let median = switch_times[switch_times.len() / 2];
    println!(
        "load: sent {}, ok {}, failed {}, by slot {:?}, reconnects {}, in {:?}; \
         {full_switches} blue<->green switches + {canary_shifts} canary shifts \
         (set_weights + read-back + state file: median {median:?}, max {:?}); total {:?}",
        report.sent,
        report.ok,
        report.failed,
        report.by_slot,
        report.reconnects,
        report.elapsed,
        switch_times.last().unwrap(),
        started.elapsed(),
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.failed, 0);
    assert!(report.sent >= REQUESTS, "at least {REQUESTS} requests");
    assert_eq!(
        report.ok, report.sent,
        "every response is a 200 from a slot"
    );
    assert!(report.by_slot["blue"] > 1_000 && report.by_slot["green"] > 1_000);
    assert!(full_switches >= 50 && canary_shifts >= 50);
}
