//! Blue-green and canary through a real nginx under keep-alive load across many reloads:
//! zero failed requests. Bounded: at most 200,000 requests and 90 s.

mod common;

use std::time::{Duration, Instant};

use common::{Load, get, site, t, w};
use deploy_core::TrafficSwitch;

const MIN_REQUESTS: u64 = 10_000;
const MAX_REQUESTS: u64 = 200_000;
const CONNECTIONS: usize = 16;
const MIN_RELOADS: u32 = 20;
const TIME_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_and_canary_under_load_lose_no_request() {
    let s = site(w(100, 0), 2).await;
    // Blue-green flips and canary steps, repeated.
    let plan = [
        w(90, 10),
        w(50, 50),
        w(0, 100),
        w(100, 0),
        w(95, 5),
        w(0, 100),
        w(100, 0),
    ];
    let load = Load::start(s.nginx.addr(), CONNECTIONS, MAX_REQUESTS);
    let started = Instant::now();
    let mut reloads = 0u32;
    let mut switch_times = Vec::new();
    let mut i = 0;
    while reloads < MIN_RELOADS || load.sent() < MIN_REQUESTS {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "bounded: {reloads} reloads and {} requests after {TIME_LIMIT:?}",
            load.sent()
        );
        let target = &plan[i % plan.len()];
        i += 1;
        let t0 = Instant::now();
        s.switch.set_weights(target).await.unwrap();
        switch_times.push(t0.elapsed());
        reloads += 1;
        assert_eq!(
            &s.switch.weights().await.unwrap(),
            target,
            "read back after reload {reloads}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // End on green only, then stop the load.
    s.switch.set_weights(&w(0, 100)).await.unwrap();
    reloads += 1;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent_during_reloads = load.sent();
    assert!(
        sent_during_reloads < MAX_REQUESTS,
        "the load must still be running when the last reload is done"
    );
    let stats = load.finish().await;
    let elapsed = started.elapsed();
    switch_times.sort();
    let median = switch_times[switch_times.len() / 2];
    let max = switch_times.last().copied().unwrap_or_default();
    println!(
        "load through nginx: {} requests over {CONNECTIONS} keep-alive connections in {elapsed:?} \
         across {reloads} reloads: ok {}, failed {}, by backend {:?}, stale keep-alive retries {}, \
         connections opened {}; set_weights median {median:?}, max {max:?}",
        stats.ok + stats.failed,
        stats.ok,
        stats.failed,
        stats.by_body,
        stats.stale_retries,
        stats.connections,
    );
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.errors);
    assert!(stats.ok >= MIN_REQUESTS, "{} requests", stats.ok);
    assert!(reloads > MIN_RELOADS);
    assert!(stats.by_body.get("blue").copied().unwrap_or(0) > 0);
    assert!(stats.by_body.get("green").copied().unwrap_or(0) > 0);
    // After the last switch every new request goes to green.
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    for _ in 0..20 {
        assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
    }
    assert!(s.switch.active_sessions(&t("blue")).await.is_ok());
}
