//! How long an nginx upstream switch and a maintenance toggle take against a real nginx, idle
//! and under keep-alive load, and what the load saw. Prints a table; not a timed test.
//!
//! `cargo bench -p deploy-nginx --all-features --bench switch_latency`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Load, site, w};
use deploy_core::{Maintenance, TrafficSwitch};

const ROUNDS: usize = 30;

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.9), *v.last().expect("samples"))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, v: Vec<Duration>) {
    let (m, p90, max) = stats(v);
    println!("| {name} | {} | {} | {} |", ms(m), ms(p90), ms(max));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = site(w(100, 0), 2).await;
    let host = deploy_core::LocalHost::new();
    let nginx = s.nginx.nginx();

    // `nginx -t` alone on the full configuration.
    let mut test = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        nginx.test(&host).await.expect("nginx -t");
        test.push(t0.elapsed());
    }

    // Whole set_weights (render, nginx -t, rename, reload, confirm), idle.
    let plan = [w(0, 100), w(90, 10), w(100, 0)];
    let mut idle = Vec::new();
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        s.switch
            .set_weights(&plan[i % plan.len()])
            .await
            .expect("switch");
        idle.push(t0.elapsed());
    }

    // The same under load: 16 keep-alive connections.
    let load = Load::start(s.nginx.addr(), 16, 10_000_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut loaded = Vec::new();
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        s.switch
            .set_weights(&plan[i % plan.len()])
            .await
            .expect("switch");
        loaded.push(t0.elapsed());
    }
    let window = started.elapsed();
    let ls = load.finish().await;

    // Maintenance on and off, each verified over HTTP.
    let page = s
        .page()
        .verify_interval(Duration::from_millis(1))
        .build()
        .expect("page");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        page.enable().await.expect("on");
        on.push(t0.elapsed());
        let t0 = Instant::now();
        page.disable().await.expect("off");
        off.push(t0.elapsed());
    }

    println!("\nnginx 1.22.1, 2 workers, {ROUNDS} rounds each (ms)\n");
    println!("| operation | median | p90 | max |");
    println!("|---|---|---|---|");
    row("`nginx -t` (full config)", test);
    row("set_weights, idle (test + reload + confirmed)", idle);
    row("set_weights, under 16-connection load", loaded);
    row("maintenance on, verified 503 + page", on);
    row("maintenance off, verified 200", off);
    let total = ls.ok + ls.failed;
    println!(
        "\nload during the {ROUNDS} loaded switches ({:.1} s): {total} requests, {:.0} req/s, \
         failed {}, stale keep-alive retries {} ({:.3} % of requests), connections opened {}",
        window.as_secs_f64(),
        total as f64 / window.as_secs_f64(),
        ls.failed,
        ls.stale_retries,
        ls.stale_retries as f64 * 100.0 / total.max(1) as f64,
        ls.connections
    );
}
