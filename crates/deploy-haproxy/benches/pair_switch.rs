//! Switch time of an HA pair (two real haproxy instances as one `CompositeSwitch`) against one
//! instance, each frontend under its own keep-alive load.
//!
//! For each trial: the time from the call to the moment *every* switched frontend served a
//! request from the new slot (timestamped by the load generators), the call itself, and the
//! failed requests. Prints a table.
//!
//! `cargo bench -p deploy-haproxy --features testing --bench pair_switch`
//! (`PAIR_BENCH_TRIALS`, default 100; `PAIR_BENCH_CONNECTIONS` per frontend, default 2)

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::{CompositeSwitch, DynTrafficSwitch, TargetId, TrafficSwitch, Weights};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec, Slot};

#[derive(Debug, Default)]
struct Row {
    name: &'static str,
    to_served: Vec<Duration>,
    call: Vec<Duration>,
    failed: u64,
    requests: u64,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_first(load: &Load, slot: &str, limit: Duration) -> Instant {
    let until = Instant::now() + limit;
    loop {
        if let Some(t) = load.first_since_arm(slot) {
            return t.into_std();
        }
        assert!(Instant::now() < until, "{slot} is not served");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn switch_of(h: &HaproxyFixture) -> HaproxySwitch {
    HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .build()
        .unwrap()
}

/// Switch blue ↔ green `trials` times with `switch`, timing until every load of `loads` was
/// served by the new slot.
async fn trials(
    name: &'static str,
    switch: &dyn TrafficSwitch,
    loads: &[&Load],
    all: &[&Load],
    trials: usize,
) -> Row {
    let (blue, green) = (
        TargetId::new("blue").unwrap(),
        TargetId::new("green").unwrap(),
    );
    let mut row = Row {
        name,
        ..Row::default()
    };
    let failed0: u64 = all.iter().map(|l| l.failed()).sum();
    let done0: u64 = all.iter().map(|l| l.completed()).sum();
    for i in 0..trials {
        let (to, w) = if i % 2 == 0 {
            (
                "green",
                Weights::new()
                    .with(blue.clone(), 0)
                    .with(green.clone(), 100),
            )
        } else {
            (
                "blue",
                Weights::new()
                    .with(blue.clone(), 100)
                    .with(green.clone(), 0),
            )
        };
        for l in loads {
            l.arm(to);
        }
        let t0 = Instant::now();
        switch.set_weights(&w).await.expect("set_weights");
        row.call.push(t0.elapsed());
        let mut last = t0;
        for l in loads {
            last = last.max(wait_first(l, to, Duration::from_secs(5)).await);
        }
        row.to_served.push(last.saturating_duration_since(t0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row.failed = all.iter().map(|l| l.failed()).sum::<u64>() - failed0;
    row.requests = all.iter().map(|l| l.completed()).sum::<u64>() - done0;
    row
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env("PAIR_BENCH_TRIALS", 100);
    let connections = env("PAIR_BENCH_CONNECTIONS", 2);
    let blue = Slot::start("blue").await.unwrap();
    let green = Slot::start("green").await.unwrap();
    let config = || {
        FixtureConfig::new(vec![
            ServerSpec::new("blue", blue.addr(), 100),
            ServerSpec::new("green", green.addr(), 0),
        ])
    };
    let lb1 = HaproxyFixture::start(config())
        .await
        .expect("start haproxy");
    let lb2 = HaproxyFixture::start(config())
        .await
        .expect("start haproxy");
    let mut cfg = LoadConfig::new(connections, u64::MAX);
    cfg.max_duration = Duration::from_secs(600);
    let load1 = Load::start(lb1.frontend(), cfg.clone(), &["blue", "green"]);
    let load2 = Load::start(lb2.frontend(), cfg, &["blue", "green"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Both loads run in both phases, so the CPU is shared the same way.
    let one = switch_of(&lb1);
    let single = trials(
        "one instance (HaproxySwitch)",
        &one,
        &[&load1],
        &[&load1, &load2],
        n,
    )
    .await;
    let pair = CompositeSwitch::new(vec![
        (
            "lb-1".to_owned(),
            Arc::new(switch_of(&lb1)) as DynTrafficSwitch,
        ),
        (
            "lb-2".to_owned(),
            Arc::new(switch_of(&lb2)) as DynTrafficSwitch,
        ),
    ])
    .unwrap();
    // The trials start from blue: lb-1 ended there (an even number of trials) or is put there.
    let start = Weights::new()
        .with(TargetId::new("blue").unwrap(), 100)
        .with(TargetId::new("green").unwrap(), 0);
    pair.set_weights(&start).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let both = trials(
        "pair (CompositeSwitch of 2)",
        &pair,
        &[&load1, &load2],
        &[&load1, &load2],
        n,
    )
    .await;

    load1.stop();
    load2.stop();
    let (r1, r2) = (load1.finish().await, load2.finish().await);

    println!(
        "\n| switch | trials | call → every frontend serves the new slot: median | p99 | the call itself: median | p99 | requests during | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    for mut r in [single, both] {
        let served_median = pct(&mut r.to_served, 0.5);
        medians.push(served_median);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.to_served.len(),
            ms(served_median),
            ms(pct(&mut r.to_served, 0.99)),
            ms(pct(&mut r.call, 0.5)),
            ms(pct(&mut r.call, 0.99)),
            r.requests,
            r.failed
        );
    }
    println!(
        "\npair ÷ one instance (median to served): {:.2}×; whole run: lb-1 {} requests ({} failed), lb-2 {} ({} failed)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64(),
        r1.sent,
        r1.failed,
        r2.sent,
        r2.failed
    );
}
