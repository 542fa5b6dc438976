//! What one gate evaluation costs, against real servers on loopback, and what parsing one
//! `/metrics` page costs with the scrape gate's parser beside `prometheus-parse` (its former
//! parser). Not a timed test: it prints two tables. Run with
//! `cargo bench -p deploy-prometheus --features testing --bench gates`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{GateContext, MetricGate, TargetId, Version};
use deploy_prometheus::testing::{PrometheusServer, ScrapeTarget, TestApp, parse_metrics_page};
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

/// A page as a Go service with `routes` routes serves it: runtime and process gauges, a GC
/// summary, `http_requests_total{method,route,status}` and a 12-bucket latency histogram per
/// method and route, with HELP and TYPE lines.
fn realistic_page(routes: usize) -> String {
    let mut s = String::new();
    s.push_str("# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.\n# TYPE go_gc_duration_seconds summary\n");
    for (q, v) in [
        ("0", "2.1e-05"),
        ("0.25", "3.4e-05"),
        ("0.5", "4.6e-05"),
        ("0.75", "6.2e-05"),
        ("1", "0.00123"),
    ] {
        let _ = writeln!(s, "go_gc_duration_seconds{{quantile=\"{q}\"}} {v}");
    }
    s.push_str("go_gc_duration_seconds_sum 0.0421\ngo_gc_duration_seconds_count 812\n");
    for (name, help, v) in [
        (
            "go_goroutines",
            "Number of goroutines that currently exist.",
            "42",
        ),
        ("go_threads", "Number of OS threads created.", "12"),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "3.2649216e+07",
        ),
        ("process_open_fds", "Number of open file descriptors.", "17"),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "1.70023456789e+09",
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    s.push_str("# HELP http_requests_total Requests served, by method, route and status.\n# TYPE http_requests_total counter\n");
    for r in 0..routes {
        for method in ["GET", "POST"] {
            for (status, n) in [("200", 91_234 + r), ("404", 310 + r), ("500", 12 + r)] {
                let _ = writeln!(
                    s,
                    "http_requests_total{{method=\"{method}\",route=\"/api/v1/items/{r}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
    s.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
    for r in 0..routes {
        for method in ["GET", "POST"] {
            let mut cum = 0;
            for le in [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "+Inf",
            ] {
                cum += 1000 + 37 * r;
                let _ = writeln!(
                    s,
                    "http_request_duration_seconds_bucket{{method=\"{method}\",route=\"/api/v1/items/{r}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(
                s,
                "http_request_duration_seconds_sum{{method=\"{method}\",route=\"/api/v1/items/{r}\"}} {}.25\n\
                 http_request_duration_seconds_count{{method=\"{method}\",route=\"/api/v1/items/{r}\"}} {cum}",
                cum / 20
            );
        }
    }
    s
}

type Labels = Vec<(String, String)>;

/// What the scrape gate did with a page before: `prometheus-parse`, then its samples indexed by
/// name and sorted labels (histograms apart), as the former `Snapshot::parse`. Returns the
/// number of values indexed.
fn former_gate_parse(text: &str) -> usize {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus-parse reads the page");
    let mut values: HashMap<String, BTreeMap<Labels, f64>> = HashMap::new();
    let mut histograms: HashMap<String, BTreeMap<Labels, Vec<(f64, f64)>>> = HashMap::new();
    let mut n = 0;
    for s in scrape.samples {
        let mut labels: Labels = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        use prometheus_parse::Value as V;
        match s.value {
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => {
                values.entry(s.metric).or_default().insert(labels, v);
                n += 1;
            }
            V::Histogram(buckets) => {
                n += buckets.len();
                let b = buckets.iter().map(|h| (h.less_than, h.count)).collect();
                histograms.entry(s.metric).or_default().insert(labels, b);
            }
            V::Summary(q) => n += q.len(),
        }
    }
    n
}

/// Median microseconds of parsing `page` with each parser, `runs` times, alternating.
fn compare_parsers(page: &str, runs: usize) -> (f64, f64, usize, usize) {
    let (mut ours, mut theirs) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let (mut n_ours, mut n_theirs) = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        n_ours = std::hint::black_box(parse_metrics_page(std::hint::black_box(page)).unwrap());
        ours.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        n_theirs = std::hint::black_box(former_gate_parse(std::hint::black_box(page)));
        theirs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    (ours[runs / 2], theirs[runs / 2], n_ours, n_theirs)
}

#[tokio::main]
async fn main() {
    // Parsing alone, first, while nothing else runs in this process.
    println!(
        "\n| parse one /metrics page and index its series (release build) | page | values read | median µs | time vs prometheus-parse |"
    );
    println!("|---|---:|---:|---:|---:|");
    for routes in [5usize, 50, 200] {
        let page = realistic_page(routes);
        let (ours, theirs, n_ours, n_theirs) = compare_parsers(&page, 301);
        let kib = page.len() as f64 / 1024.0;
        println!(
            "| prometheus-parse 0.2.5 + the former indexing, {routes} routes | {kib:.0} KiB | {n_theirs} | {theirs:.0} | 1.00 |"
        );
        println!(
            "| the gate's exposition parser + indexing, {routes} routes | {kib:.0} KiB | {n_ours} | {ours:.0} | {:.2} |",
            ours / theirs
        );
    }

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
    .lookback(Duration::from_secs(5))
        .step(Duration::from_millis(100))
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
