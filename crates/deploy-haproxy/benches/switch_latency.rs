//! Switch latency, side by side against one real haproxy under one keep-alive load: the Runtime
//! API (`set_weights`) vs the reload way (rewrite the config, reload the master-worker).
//!
//! For each trial: the time from the call to the first request served by the new slot, failed
//! requests, and whether earlier runtime state survived. Prints a table.
//!
//! `cargo bench -p deploy-haproxy --features testing --bench switch_latency`

use std::time::{Duration, Instant};

use deploy_core::{TargetId, TrafficSwitch, Weights};
use deploy_haproxy::testing::{HaproxyFixture, Load, LoadConfig};
use deploy_haproxy::{AdminState, HaproxySwitch, RuntimeClient};

const RUNTIME_TRIALS: usize = 100;
const RELOAD_TRIALS: usize = 20;

#[derive(Debug, Default)]
struct Row {
    name: &'static str,
    to_first: Vec<Duration>,
    call: Vec<Duration>,
    failed: u64,
    requests: u64,
    survived: String,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn wait_first(load: &Load, slot: &str, limit: Duration) -> Option<Instant> {
    let until = Instant::now() + limit;
    loop {
        if let Some(t) = load.first_since_arm(slot) {
            return Some(t.into_std());
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn marker(client: &RuntimeClient) -> bool {
    client
        .server_stat("static", "s1")
        .await
        .map(|r| r.is_maint())
        .unwrap_or(false)
}

async fn runtime_trials(name: &'static str, load: &Load, switch: &HaproxySwitch) -> Row {
    let (blue, green) = (
        TargetId::new("blue").unwrap(),
        TargetId::new("green").unwrap(),
    );
    let mut row = Row {
        name,
        ..Row::default()
    };
    let failed0 = load.failed();
    let done0 = load.completed();
    for i in 0..RUNTIME_TRIALS {
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
        load.arm(to);
        let t0 = Instant::now();
        switch.set_weights(&w).await.expect("set_weights");
        row.call.push(t0.elapsed());
        let first = wait_first(load, to, Duration::from_secs(5))
            .await
            .expect("the new slot serves");
        row.to_first.push(first.saturating_duration_since(t0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row.failed = load.failed() - failed0;
    row.requests = load.completed() - done0;
    row
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut h, _slots) = HaproxyFixture::blue_green().await.expect("start haproxy");
    let client = h.client();
    // A closed loop by default: SWITCH_BENCH_CONNECTIONS (4) connections, each sending its next
    // request as soon as the last was answered. A think time (SWITCH_BENCH_THINK_MS) paces the
    // requests on tokio's 1 ms timer ticks, which then dominate "first request on the new slot".
    let think_ms: u64 = std::env::var("SWITCH_BENCH_THINK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let connections: usize = std::env::var("SWITCH_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut cfg = LoadConfig::new(connections, u64::MAX);
    cfg.max_duration = Duration::from_secs(600);
    cfg.think_time = Duration::from_millis(think_ms);
    let load = Load::start(h.frontend(), cfg, &["blue", "green"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Earlier runtime state: a server put in maint through the API.
    client
        .set_server_state("static", "s1", AdminState::Maint)
        .await
        .unwrap();

    let plain = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .build()
        .unwrap();
    let mut a = runtime_trials("Runtime API (set_weights + read-back)", &load, &plain).await;
    a.survived = format!("yes (no reload): {}", yes(marker(&client).await));

    let durable = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .state_file(h.state_file())
        .build()
        .unwrap();
    let mut b = runtime_trials("Runtime API + state file", &load, &durable).await;
    // The state file is written after each change: a reload keeps the marker and the weights.
    // 30/70 is not in the config (which says 100/0), so only the state file can bring it back.
    let runtime_only = Weights::new()
        .with(TargetId::new("blue").unwrap(), 30)
        .with(TargetId::new("green").unwrap(), 70);
    durable.set_weights(&runtime_only).await.unwrap();
    let before = durable.weights().await.unwrap();
    assert_eq!(
        before.only(&runtime_only.0.keys().cloned().collect::<Vec<_>>()),
        runtime_only
    );
    h.reload().await.unwrap();
    let after = durable.weights().await.unwrap();
    b.survived = format!(
        "{} across a reload (weights {})",
        yes(marker(&client).await && before == after),
        if before == after { "kept" } else { "lost" }
    );

    // The reload way: no state file, config rewritten, master-worker reload.
    std::fs::remove_file(h.state_file()).ok();
    // Start from the config's weights (blue 100, green 0), as the runtime phase left them.
    h.rewrite_and_reload(&[("blue", 100), ("green", 0)])
        .await
        .unwrap();
    client
        .set_server_state("static", "s1", AdminState::Maint)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Row {
        name: "config rewrite + master-worker reload",
        ..Row::default()
    };
    let failed0 = load.failed();
    let done0 = load.completed();
    let mut survived = true;
    for i in 0..RELOAD_TRIALS {
        let (to, weights) = if i % 2 == 0 {
            ("green", [("blue", 0), ("green", 100)])
        } else {
            ("blue", [("blue", 100), ("green", 0)])
        };
        load.arm(to);
        let t0 = Instant::now();
        h.rewrite_and_reload(&weights).await.expect("reload");
        c.call.push(t0.elapsed());
        let first = wait_first(&load, to, Duration::from_secs(10))
            .await
            .expect("the new slot serves");
        c.to_first.push(first.saturating_duration_since(t0));
        survived &= marker(&client).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.failed = load.failed() - failed0;
    c.requests = load.completed() - done0;
    c.survived = format!(
        "{} (maint set through the API before the reload)",
        yes(survived)
    );

    load.stop();
    let report = load.finish().await;

    println!(
        "\nswitch latency under load ({connections} keep-alive connections, think time {think_ms} ms, {} requests in {:.1} s = {:.0} req/s, {} failed in all)\n",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.sent as f64 / report.elapsed.as_secs_f64(),
        report.failed
    );
    println!(
        "| method | trials | call → first request on the new slot: median | p99 | the call itself: median | requests during | failed | earlier runtime state survived |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in [&mut a, &mut b, &mut c] {
        let n = r.to_first.len();
        let med = pct(&mut r.to_first, 0.5);
        let p99 = pct(&mut r.to_first, 0.99);
        let call = pct(&mut r.call, 0.5);
        println!(
            "| {} | {n} | {} | {} | {} | {} | {} | {} |",
            r.name,
            ms(med),
            ms(p99),
            ms(call),
            r.requests,
            r.failed,
            r.survived
        );
    }
    let ratio = pct(&mut c.to_first, 0.5).as_secs_f64() / pct(&mut a.to_first, 0.5).as_secs_f64();
    println!("\nmedian reload / median Runtime API: {ratio:.0}×");
    if !report.errors.is_empty() {
        println!("first failures: {:?}", report.errors);
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
