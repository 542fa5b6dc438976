//! What one gate evaluation costs, against real servers on loopback (not a timed test: it
//! prints a table). Run with
//! `cargo bench -p deploy-prometheus --features testing --bench gates`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{GateContext, MetricGate, TargetId, Version};
use deploy_prometheus::testing::{PrometheusServer, ScrapeTarget, TestApp};
use deploy_prometheus::{HttpMetrics, Judge, PromQlGate, ScrapeGate, ScrapeMeasure};

const RUNS: usize = 30;

/// Median and p90 of `runs` evaluations, in ms, and the kind of the last verdict.
async fn measure(gate: &dyn MetricGate, ctx: &GateContext, runs: usize) -> (f64, f64, String) {
    let mut ms: Vec<f64> = Vec::with_capacity(runs);
    let mut kind = String::new();
    for _ in 0..runs {
        let t = Instant::now();
        let v = gate.evaluate(ctx).await.expect("evaluate");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        kind = v.kind.to_string();
    }
    ms.sort_by(f64::total_cmp);
    (ms[runs / 2], ms[runs * 9 / 10], kind)
}

/// A /metrics page with `series` request counters and one histogram per 10 of them.
fn big_page(series: usize, bump: u64) -> String {
    let mut s = String::from("# TYPE http_requests_total counter\n");
    for i in 0..series {
        let status = if i % 10 == 0 { 500 } else { 200 };
        let _ = writeln!(
            s,
            "http_requests_total{{status=\"{status}\",route=\"/r{i}\"}} {}",
            1000 + bump * (i as u64 + 1)
        );
    }
    s.push_str("# TYPE http_request_duration_seconds histogram\n");
    for r in 0..series / 10 {
        let mut cum = 0;
        for le in [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
        ] {
            cum += 10 + bump;
            let _ = writeln!(
                s,
                "http_request_duration_seconds_bucket{{route=\"/r{r}\",le=\"{le}\"}} {cum}"
            );
        }
    }
    s
}

#[tokio::main]
async fn main() {
    let mut rows: Vec<(String, (f64, f64, String))> = Vec::new();
    let version = Version::new("2.0.0").unwrap();

    // PromQL gates and judge against a real Prometheus scraping two test apps with traffic.
    let (base, canary) = (
        TestApp::start().await.unwrap(),
        TestApp::start().await.unwrap(),
    );
    let prom = PrometheusServer::start(&[
        ScrapeTarget::new("blue", base.addr()),
        ScrapeTarget::new("green", canary.addr()),
    ])
    .await
    .unwrap();
    let _loads = (
        base.load(20, Duration::from_secs(120)),
        canary.load(20, Duration::from_secs(120)),
    );
    let m = HttpMetrics::default();
    let mut ctx = GateContext::new(
        version.clone(),
        vec![TargetId::new("green").unwrap()],
        vec![TargetId::new("blue").unwrap()],
    );
    ctx.canary_endpoints = vec![canary.endpoint()];
    ctx.baseline_endpoints = vec![base.endpoint()];
    prom.wait_for_data(
        r#"count_over_time(up{target="green"}[20s]) >= 6"#,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let window = Duration::from_secs(5);
    let err = PromQlGate::error_rate_below(prom.client(), 0.01, &m)
        .window(window)
        .build()
        .unwrap();
    let r = measure(&err, &ctx, RUNS).await;
    rows.push(("PromQL error-rate gate (floor + query)".into(), r));
    let p99 = PromQlGate::p99_latency_below(prom.client(), Duration::from_secs(2), &m)
        .window(window)
        .build()
        .unwrap();
    let r = measure(&p99, &ctx, RUNS).await;
    rows.push(("PromQL p99 gate (floor + query)".into(), r));
    let judge = Judge::prometheus(
        "judge",
        prom.client(),
        r#"sum(rate(http_request_duration_seconds_sum{target=~"{{target}}"}[{{window}}])) / sum(rate(http_request_duration_seconds_count{target=~"{{target}}"}[{{window}}]))"#,
    )
    .window(Duration::from_secs(3))
    .lookback(Duration::from_secs(5), Duration::from_millis(100))
    .build()
    .unwrap();
    let r = measure(&judge, &ctx, RUNS).await;
    rows.push((
        "PromQL judge (2 query_range, ~50 points each, Mann-Whitney)".into(),
        r,
    ));
    drop(prom);

    // Scrape gates: two scrapes 1 ms apart (the figures include that 1 ms window).
    for series in [10usize, 100, 1000] {
        let bump = std::sync::atomic::AtomicU64::new(0);
        let server = TestHttpServer::start(move |_| {
            let b = bump.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            TestResponse::text(200, big_page(series, b))
        })
        .await
        .unwrap();
        let gate = ScrapeGate::error_rate_below(0.5, &m)
            .unwrap()
            .url(server.url("/metrics"))
            .window(Duration::from_millis(1))
            .build()
            .unwrap();
        let r = measure(&gate, &ctx, RUNS).await;
        let bytes = big_page(series, 0).len();
        rows.push((
            format!(
                "scrape error-rate gate, {series} series + {} histograms ({} KiB page)",
                series / 10,
                bytes / 1024
            ),
            r,
        ));
        let q = ScrapeGate::p99_latency_below(Duration::from_secs(2), &m)
            .url(server.url("/metrics"))
            .window(Duration::from_millis(1))
            .build()
            .unwrap();
        let r = measure(&q, &ctx, RUNS).await;
        rows.push((format!("scrape p99 gate, same page ({series} series)"), r));
    }
    // The scrape judge: 2 groups, 50 samples 1 ms apart.
    let sj = Judge::scrape("sj", ScrapeMeasure::mean_latency(&m))
        .samples(50)
        .interval(Duration::from_millis(1))
        .build()
        .unwrap();
    let r = measure(&sj, &ctx, 10).await;
    rows.push((
        "scrape judge, 51 scrapes x 2 apps 1 ms apart + Mann-Whitney (n=50)".into(),
        r,
    ));

    println!("\n| one evaluation (release build, loopback) | median ms | p90 ms | verdict |");
    println!("|---|---:|---:|---|");
    for (name, (med, p90, kind)) in rows {
        println!("| {name} | {med:.2} | {p90:.2} | {kind} |");
    }
}
