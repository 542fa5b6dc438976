//! Gates against a real Prometheus (started by each test on a free loopback port) scraping a
//! test app whose error rate and latency the test sets.

use std::time::Duration;

use deploy_core::testing::conformance;
use deploy_core::{GateContext, MetricGate, TargetId, Verdict, VerdictKind, Version};
use deploy_prometheus::testing::{PrometheusServer, ScrapeTarget, TestApp};
use deploy_prometheus::{
    HttpMetrics, Judge, PromQlGate, PromQlGateConfig, ScrapeGate, ScrapeGateConfig, ScrapeMeasure,
};

fn id(s: &str) -> TargetId {
    TargetId::new(s).unwrap()
}

fn ctx(canary: &[(&str, &TestApp)], baseline: &[(&str, &TestApp)]) -> GateContext {
    let mut c = GateContext::new(
        Version::new("2.0.0").unwrap(),
        canary.iter().map(|(n, _)| id(n)).collect(),
        baseline.iter().map(|(n, _)| id(n)).collect(),
    );
    c.canary_endpoints = canary.iter().map(|(_, a)| a.endpoint()).collect();
    c.baseline_endpoints = baseline.iter().map(|(_, a)| a.endpoint()).collect();
    c
}

/// Evaluate every 500 ms until the verdict is `want`; panic with the history after `limit`.
async fn poll_until(
    gate: &dyn MetricGate,
    ctx: &GateContext,
    want: VerdictKind,
    limit: Duration,
) -> Verdict {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let v = gate.evaluate(ctx).await.unwrap();
        if v.kind == want {
            return v;
        }
        seen.push(v.to_string());
        if seen.len() > 4 {
            seen.remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never became {want} within {limit:?}; last verdicts:\n{}",
            gate.name(),
            seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const WINDOW: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_gate_passes_at_0_and_fails_at_5_percent_and_the_scrape_gate_agrees() {
    let app = TestApp::start().await.unwrap();
    let prom = PrometheusServer::start(&[ScrapeTarget::new("green", app.addr())])
        .await
        .unwrap();
    let load = app.load(50, Duration::from_secs(60));
    let gate = PromQlGate::error_rate_below(prom.client(), 0.01, &HttpMetrics::default())
        .window(WINDOW)
        .build()
        .unwrap();
    let ctx = ctx(&[("green", &app)], &[]);
    let pass = poll_until(&gate, &ctx, VerdictKind::Pass, Duration::from_secs(20)).await;
    conformance::metric_gate(&gate, &ctx, VerdictKind::Pass).await;
    assert_eq!(pass.value, Some(0.0), "{pass}");
    // A query of one's own, judged by its condition: the canary serves about 50 requests/s.
    let requests = PromQlGate::builder("requests", prom.client())
        .query(r#"sum(rate(http_requests_total{target=~"{{target}}"}[{{window}}]))"#)
        .condition("> 10")
        .window(WINDOW)
        .build()
        .unwrap();
    conformance::metric_gate(&requests, &ctx, VerdictKind::Pass).await;
    assert_eq!(pass.condition, "<= 0.01");
    assert!(
        pass.source.contains(r#"status=~"5..",target=~"green""#),
        "{}",
        pass.source
    );

    app.set_error_rate(0.05);
    let fail = poll_until(&gate, &ctx, VerdictKind::Fail, Duration::from_secs(20)).await;
    assert!(fail.value.unwrap() > 0.01, "{fail}");
    // Once the whole window holds 5 % errors, PromQL and the scrape gate read the same rate.
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    let scrape = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
        .unwrap()
        .window(Duration::from_secs(3))
        .build()
        .unwrap();
    conformance::metric_gate(&scrape, &ctx, VerdictKind::Fail).await;
    let (p, s) = tokio::join!(gate.evaluate(&ctx), scrape.evaluate(&ctx));
    let (p, s) = (p.unwrap(), s.unwrap());
    assert_eq!(
        (p.kind, s.kind),
        (VerdictKind::Fail, VerdictKind::Fail),
        "{p}\n{s}"
    );
    let (pv, sv) = (p.value.unwrap(), s.value.unwrap());
    println!("error rate at 5 %: PromQL {pv:.4}, scrape {sv:.4}");
    // Stated tolerance: 1 percentage point (the windows differ by scrape alignment).
    assert!((pv - 0.05).abs() <= 0.01, "PromQL {pv}");
    assert!((sv - 0.05).abs() <= 0.01, "scrape {sv}");
    assert!((pv - sv).abs() <= 0.01, "PromQL {pv} vs scrape {sv}");
    // The same rule judged over every point of a range instead of one instant value.
    let ranged = PromQlGate::error_rate_below(prom.client(), 0.01, &HttpMetrics::default())
        .window(WINDOW)
        .range(Duration::from_secs(3))
        .range_step(Duration::from_secs(1))
        .min_samples(3)
        .build()
        .unwrap();
    let v = ranged.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Fail, "{v}");
    assert!((v.value.unwrap() - 0.05).abs() <= 0.015, "{v}");
    assert!(
        v.reason.contains("over 4 samples") || v.reason.contains("over 3 samples"),
        "{v}"
    );
    conformance::metric_gate(&ranged, &ctx, VerdictKind::Fail).await;
    let (ok, failed) = load.stop().await;
    assert!(ok > 100 && failed > 0, "load {ok} ok, {failed} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p99_gate_fails_when_slow_requests_push_p99_over_2s() {
    let app = TestApp::start().await.unwrap();
    let prom = PrometheusServer::start(&[ScrapeTarget::new("green", app.addr())])
        .await
        .unwrap();
    let _load = app.load(50, Duration::from_secs(60));
    let gate = PromQlGate::p99_latency_below(
        prom.client(),
        Duration::from_secs(2),
        &HttpMetrics::default(),
    )
    .window(WINDOW)
    .build()
    .unwrap();
    let ctx = ctx(&[("green", &app)], &[]);
    let pass = poll_until(&gate, &ctx, VerdictKind::Pass, Duration::from_secs(20)).await;
    // 10 ms ± 20 %: p99 interpolates inside the (0.01, 0.025] bucket.
    assert!(pass.value.unwrap() <= 0.025, "{pass}");
    conformance::metric_gate(&gate, &ctx, VerdictKind::Pass).await;

    // 5 % of requests take 2.5 s: p99 = 1 + 1.5 × (0.99 − 0.95) / 0.05 = 2.2 s.
    app.set_slow(0.05, Duration::from_millis(2500));
    let fail = poll_until(&gate, &ctx, VerdictKind::Fail, Duration::from_secs(20)).await;
    assert!(fail.value.unwrap() > 2.0, "{fail}");
    conformance::metric_gate(&gate, &ctx, VerdictKind::Fail).await;
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    let scrape = ScrapeGate::p99_latency_below(Duration::from_secs(2), &HttpMetrics::default())
        .window(Duration::from_secs(3))
        .build()
        .unwrap();
    conformance::metric_gate(&scrape, &ctx, VerdictKind::Fail).await;
    let (p, s) = tokio::join!(gate.evaluate(&ctx), scrape.evaluate(&ctx));
    let (p, s) = (p.unwrap(), s.unwrap());
    assert_eq!(
        (p.kind, s.kind),
        (VerdictKind::Fail, VerdictKind::Fail),
        "{p}\n{s}"
    );
    let (pv, sv) = (p.value.unwrap(), s.value.unwrap());
    println!("p99 with 5 % at 2.5 s: PromQL {pv:.3} s, scrape {sv:.3} s (expected 2.2)");
    // Stated tolerance: 0.15 s around the exact 2.2 s.
    assert!((pv - 2.2).abs() <= 0.15, "PromQL {pv}");
    assert!((sv - 2.2).abs() <= 0.15, "scrape {sv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_is_inconclusive() {
    let app = TestApp::start().await.unwrap();
    let prom = PrometheusServer::start(&[ScrapeTarget::new("green", app.addr())])
        .await
        .unwrap();
    // Two scrapes of the idle app, so that rate() has samples to work on.
    prom.wait_for_data(
        r#"count_over_time(up{target="green"}[10s]) >= 3"#,
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    let ctx = ctx(&[("green", &app)], &[]);
    let m = HttpMetrics::default();
    let errors = PromQlGate::error_rate_below(prom.client(), 0.01, &m)
        .window(WINDOW)
        .build()
        .unwrap();
    let v = errors.evaluate(&ctx).await.unwrap();
    // The request counter was never created: no data at all.
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    assert!(v.no_data, "{v}");
    conformance::metric_gate(&errors, &ctx, VerdictKind::Inconclusive).await;
    let p99 = PromQlGate::p99_latency_below(prom.client(), Duration::from_secs(2), &m)
        .window(WINDOW)
        .build()
        .unwrap();
    let v = p99.evaluate(&ctx).await.unwrap();
    // The histogram exists, with nothing in it: traffic 0 is below the floor.
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    assert!(!v.no_data && v.reason.contains("below the floor"), "{v}");
    conformance::metric_gate(&p99, &ctx, VerdictKind::Inconclusive).await;
    // Without the floor, histogram_quantile over empty buckets is NaN.
    let bare = PromQlGate::builder("p99-bare", prom.client())
        .query(p99.query_template())
        .condition("<= 2")
        .window(WINDOW)
        .build()
        .unwrap();
    let v = bare.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    assert!(v.reason.contains("NaN"), "{v}");
    conformance::metric_gate(&bare, &ctx, VerdictKind::Inconclusive).await;
    let scrape = ScrapeGate::p99_latency_below(Duration::from_secs(2), &m)
        .window(Duration::from_millis(300))
        .build()
        .unwrap();
    let v = scrape.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    conformance::metric_gate(&scrape, &ctx, VerdictKind::Inconclusive).await;
    let scrape_errors = ScrapeGate::error_rate_below(0.01, &m)
        .unwrap()
        .window(Duration::from_millis(300))
        .build()
        .unwrap();
    let v = scrape_errors.evaluate(&ctx).await.unwrap();
    assert!(v.no_data && v.kind == VerdictKind::Inconclusive, "{v}");
    conformance::metric_gate(&scrape_errors, &ctx, VerdictKind::Inconclusive).await;
    assert_eq!(app.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_prometheus_is_an_error_verdict() {
    let prom = PrometheusServer::start(&[]).await.unwrap();
    let client = prom.client().with_timeout(Duration::from_secs(2));
    let gate = PromQlGate::error_rate_below(client.clone(), 0.01, &HttpMetrics::default())
        .build()
        .unwrap();
    let ctx = GateContext::new(Version::new("2.0.0").unwrap(), vec![id("green")], vec![]);
    // Running, with no such metric: no data.
    let v = gate.evaluate(&ctx).await.unwrap();
    assert!(v.no_data, "{v}");
    prom.stop();
    let v = gate.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("cannot reach Prometheus"), "{v}");
    assert!(v.reason.contains("unavailable"), "{v}");
    assert_eq!(v.condition, "<= 0.01");
    let e = client.query("up").await.unwrap_err();
    assert_eq!(e.kind(), deploy_core::ErrorKind::Unavailable);
    assert!(e.is_retryable());
    assert!(
        e.to_string()
            .starts_with("query `up` on Prometheus http://127.0.0.1:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_fails_a_3x_slower_canary_and_passes_an_equal_one() {
    let (base, slow, same) = (
        TestApp::start().await.unwrap(),
        TestApp::start().await.unwrap(),
        TestApp::start().await.unwrap(),
    );
    base.set_latency(Duration::from_millis(20));
    slow.set_latency(Duration::from_millis(60));
    same.set_latency(Duration::from_millis(20));
    let prom = PrometheusServer::start(&[
        ScrapeTarget::new("blue", base.addr()),
        ScrapeTarget::new("slow", slow.addr()),
        ScrapeTarget::new("same", same.addr()),
    ])
    .await
    .unwrap();
    let limit = Duration::from_secs(60);
    let _loads = (
        base.load(30, limit),
        slow.load(30, limit),
        same.load(30, limit),
    );
    let mean = r#"sum(rate(http_request_duration_seconds_sum{target=~"{{target}}"}[{{window}}]))
        / sum(rate(http_request_duration_seconds_count{target=~"{{target}}"}[{{window}}]))"#;
    let judge = Judge::prometheus("latency-vs-baseline", prom.client(), mean)
        .window(Duration::from_secs(3))
        .lookback(Duration::from_secs(6))
        .step(Duration::from_millis(500))
        .min_samples(8)
        .build()
        .unwrap();
    let slow_ctx = ctx(&[("slow", &slow)], &[("blue", &base)]);
    let same_ctx = ctx(&[("same", &same)], &[("blue", &base)]);
    let v = poll_until(
        &judge,
        &slow_ctx,
        VerdictKind::Fail,
        Duration::from_secs(30),
    )
    .await;
    println!("PromQL judge, 3x slower canary: {v}");
    let ratio = v.value.unwrap();
    assert!((2.5..3.5).contains(&ratio), "{v}");
    assert!(v.reason.contains("p = "), "{v}");
    conformance::metric_gate(&judge, &slow_ctx, VerdictKind::Fail).await;
    // The equal canary's range may still lack a point or two: poll as well.
    let v = poll_until(
        &judge,
        &same_ctx,
        VerdictKind::Pass,
        Duration::from_secs(10),
    )
    .await;
    println!("PromQL judge, equal canary: {v}");
    assert_eq!(v.kind, VerdictKind::Pass, "{v}");
    assert!((0.9..1.1).contains(&v.value.unwrap()), "{v}");
    conformance::metric_gate(&judge, &same_ctx, VerdictKind::Pass).await;

    // The same judgement from repeated scrapes, without Prometheus.
    let scrape_judge = Judge::scrape(
        "latency-vs-baseline-scrape",
        ScrapeMeasure::mean_latency(&HttpMetrics::default()),
    )
    .samples(10)
    .interval(Duration::from_millis(300))
    .min_samples(8)
    .build()
    .unwrap();
    let (s, e) = tokio::join!(
        scrape_judge.evaluate(&slow_ctx),
        scrape_judge.evaluate(&same_ctx)
    );
    let (s, e) = (s.unwrap(), e.unwrap());
    println!("scrape judge, 3x slower canary: {s}\nscrape judge, equal canary: {e}");
    assert_eq!(s.kind, VerdictKind::Fail, "{s}");
    assert_eq!(e.kind, VerdictKind::Pass, "{e}");
    conformance::metric_gate(&scrape_judge, &same_ctx, VerdictKind::Pass).await;
    conformance::metric_gate(&scrape_judge, &slow_ctx, VerdictKind::Fail).await;

    // Too few samples: a range shorter than the minimum.
    let short = Judge::prometheus("short", prom.client(), mean)
        .window(Duration::from_secs(3))
        .lookback(Duration::from_secs(3))
        .step(Duration::from_secs(1))
        .min_samples(8)
        .build()
        .unwrap();
    let v = short.evaluate(&slow_ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    assert!(v.reason.contains("too few samples"), "{v}");
}

/// A plan-file section, `kind` removed as the facade does, as the config it is.
fn section<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let mut table: toml::Table = toml::from_str(text).unwrap();
    table.remove("kind");
    table.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_built_from_plan_file_sections_judge_the_real_server() {
    let app = TestApp::start().await.unwrap();
    let prom = PrometheusServer::start(&[ScrapeTarget::new("green", app.addr())])
        .await
        .unwrap();
    let load = app.load(50, Duration::from_secs(60));
    let ctx = ctx(&[("green", &app)], &[]);
    let promql = PromQlGate::from_config(section::<PromQlGateConfig>(&format!(
        "kind = \"promql\"\nprometheus = \"{}\"\npreset = \"p99_latency\"\n\
         max_latency = \"500ms\"\nwindow = \"4s\"\nmin_traffic = 5\ntarget_label = \"target\"",
        prom.url()
    )))
    .unwrap();
    let pass = poll_until(&promql, &ctx, VerdictKind::Pass, Duration::from_secs(20)).await;
    assert_eq!(promql.name(), "p99-latency");
    assert!(pass.value.unwrap() <= 0.025, "{pass}");
    conformance::metric_gate(&promql, &ctx, VerdictKind::Pass).await;
    let scrape = ScrapeGate::from_config(section::<ScrapeGateConfig>(
        "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"1s\"\nmin_traffic = 5",
    ))
    .unwrap();
    assert_eq!(scrape.name(), "error-rate");
    conformance::metric_gate(&scrape, &ctx, VerdictKind::Pass).await;
    // Above the traffic floor only: 50 requests/s is not 100.
    let picky = ScrapeGate::from_config(section::<ScrapeGateConfig>(
        "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"1s\"\nmin_traffic = 100",
    ))
    .unwrap();
    let v = picky.evaluate(&ctx).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    assert!(v.reason.contains("below the floor"), "{v}");
    let (ok, failed) = load.stop().await;
    assert!(ok > 50 && failed == 0, "load {ok} ok, {failed} failed");
}
