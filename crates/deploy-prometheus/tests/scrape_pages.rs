//! The scrape gate against `/metrics` pages that real exporters can serve and that a careless
//! parser misreads: label values holding `,` `}` `"` `\` and newlines, histogram buckets that
//! go down between the two scrapes, malformed pages. And what a gate tells the engine it needs
//! (`evaluation_time`, `lookback`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{GateContext, MetricGate, TargetId, Verdict, VerdictKind, Version};
use deploy_prometheus::{
    HttpMetrics, Judge, PromQlGate, PrometheusClient, ScrapeGate, ScrapeMeasure,
};

fn ctx() -> GateContext {
    GateContext::new(
        Version::new("2.0.0").unwrap(),
        vec![TargetId::new("green").unwrap()],
        vec![TargetId::new("blue").unwrap()],
    )
}

/// A server answering `pages` in turn, then the last one again.
async fn pages(pages: Vec<String>) -> TestHttpServer {
    let pages = Arc::new(Mutex::new(pages));
    TestHttpServer::start(move |_| {
        let mut p = pages.lock().unwrap();
        let page = if p.len() > 1 {
            p.remove(0)
        } else {
            p[0].clone()
        };
        TestResponse::text(200, page).with_header("content-type", "text/plain; version=0.0.4")
    })
    .await
    .unwrap()
}

/// Scrape `pages` with `gate` (its URL and a 50 ms window set here), once.
async fn evaluate(gate: deploy_prometheus::ScrapeGateBuilder, p: Vec<String>) -> Verdict {
    let server = pages(p).await;
    let gate = gate
        .url(server.url("/metrics"))
        .window(Duration::from_millis(50))
        .build()
        .unwrap();
    gate.evaluate(&ctx()).await.unwrap()
}

/// Requests by status, every series carrying label values that a split on `,` or a match up to
/// the first `}` cuts: `path="/a,b}c"` and an escaped quote, backslash and newline in `agent`.
fn hostile_labels_page(ok: u64, errors: u64) -> String {
    format!(
        "# HELP http_requests_total Requests, by \\\\ status.\\nSecond line.\n\
         # TYPE http_requests_total counter\n\
         http_requests_total{{status=\"200\",path=\"/a,b}}c\",agent=\"x \\\"q\\\" \\\\ y\\nz\"}} {ok}\n\
         http_requests_total{{path=\"/a,b}}c\",status=\"503\",agent=\"x \\\"q\\\" \\\\ y\\nz\"}} {errors}\n\
         http_requests_total{{status=\"500\",path=\"}}\",agent=\",\"}} {errors}\n"
    )
}

#[tokio::test]
async fn label_values_with_commas_braces_and_escapes_are_read_and_a_50_percent_error_rate_fails() {
    // 100 more 200s, 50 more 503s and 50 more 500s between the scrapes: 100 / 200 errors.
    let v = evaluate(
        ScrapeGate::error_rate_below(0.01, &HttpMetrics::default()).unwrap(),
        vec![hostile_labels_page(1000, 10), hostile_labels_page(1100, 60)],
    )
    .await;
    assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(0.5)), "{v}");

    // Only the error series carry such labels: a parser that drops them measures 0 and passes.
    let page = |ok: u64, errors: u64| {
        format!(
            "http_requests_total{{status=\"200\"}} {ok}\n\
             http_requests_total{{status=\"500\",path=\"/search{{q}}\"}} {errors}\n\
             http_requests_total{{status=\"502\",path=\"/a,b}}\"}} {errors}\n"
        )
    };
    let v = evaluate(
        ScrapeGate::error_rate_below(0.01, &HttpMetrics::default()).unwrap(),
        vec![page(0, 0), page(50, 25)],
    )
    .await;
    assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(0.5)), "{v}");
}

/// A latency histogram page with these cumulative bucket counts for `le` 0.1, 0.5, 1, +Inf.
fn histogram_page(counts: [i64; 4]) -> String {
    let mut s = String::from("# TYPE http_request_duration_seconds histogram\n");
    for (le, n) in ["0.1", "0.5", "1", "+Inf"].iter().zip(counts) {
        s.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"{le}\"}} {n}\n"
        ));
    }
    s.push_str(&format!(
        "http_request_duration_seconds_sum 12.5\nhttp_request_duration_seconds_count {}\n",
        counts[3]
    ));
    s
}

#[tokio::test]
async fn histogram_buckets_going_down_are_a_reset_or_an_error_never_a_panic() {
    let p99 = || ScrapeGate::p99_latency_below(Duration::from_secs(2), &HttpMetrics::default());
    // The process restarted: every bucket series is lower, so each counts again from 0, as
    // Prometheus' `increase` reads a reset (per series): [5, 9, 10, 10], p99 = 0.5 + 0.5 * 0.9.
    let v = evaluate(
        p99(),
        vec![
            histogram_page([50, 90, 100, 100]),
            histogram_page([5, 9, 10, 10]),
        ],
    )
    .await;
    assert_eq!(v.kind, VerdictKind::Pass, "{v}");
    assert!((v.value.unwrap() - 0.95).abs() < 1e-12, "{v}");

    // Only the second bucket went down: that series reset, the others did not. The increases
    // [10, 20, 5, 5] are not cumulative, and `histogram_quantile` makes them so ([10, 20, 20,
    // 20]) before interpolating: rank 19.8 in (0.1, 0.5], 0.1 + 0.4 * 9.8 / 10.
    let v = evaluate(
        p99(),
        vec![
            histogram_page([50, 90, 100, 100]),
            histogram_page([60, 20, 105, 105]),
        ],
    )
    .await;
    assert_eq!(v.kind, VerdictKind::Pass, "{v}");
    assert!((v.value.unwrap() - 0.492).abs() < 1e-12, "{v}");

    // An int32 counter that wrapped: negative bucket counts are nonsense, an Error verdict.
    let v = evaluate(
        p99(),
        vec![
            histogram_page([2_147_483_000, 2_147_483_600, 2_147_483_640, 2_147_483_647]),
            histogram_page([-5, -2, -1, -1]),
        ],
    )
    .await;
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("negative"), "{v}");
}

#[tokio::test]
async fn a_malformed_page_is_an_error_verdict_naming_the_url_and_the_line() {
    let page = "# TYPE http_requests_total counter\n\
                http_requests_total{status=\"200\"} 5\n\
                http_requests_total{status=\"500\",path=\"/unterminated} 5\n";
    let server = pages(vec![page.to_owned()]).await;
    let url = server.url("/metrics");
    let gate = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
        .unwrap()
        .url(&url)
        .window(Duration::from_millis(10))
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains(&url), "{v}");
    assert!(v.reason.contains("line 3"), "{v}");
}

#[test]
fn gates_say_how_long_a_measurement_takes_and_how_far_back_it_looks() {
    let m = HttpMetrics::default();
    let scrape = ScrapeGate::error_rate_below(0.01, &m)
        .unwrap()
        .window(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(scrape.evaluation_time(), Duration::from_secs(30));
    assert_eq!(scrape.lookback(), Duration::ZERO);

    let client = PrometheusClient::new("http://127.0.0.1:9").unwrap();
    let promql = PromQlGate::error_rate_below(client.clone(), 0.01, &m)
        .window(Duration::from_secs(300))
        .build()
        .unwrap();
    assert_eq!(promql.evaluation_time(), Duration::ZERO);
    assert_eq!(promql.lookback(), Duration::from_secs(300));
    // The largest range of the rendered query counts, with its offset and enclosing subquery;
    // a range in a label value is no range.
    let custom = PromQlGate::builder("custom", client.clone())
        .query(r#"max_over_time(rate(x{path="/a[9h]"}[{{w}}] offset 1m)[30m:1m]) + rate(y[1m])"#)
        .var("w", "90s")
        .condition("< 1")
        .build()
        .unwrap();
    assert_eq!(custom.lookback(), Duration::from_secs(90 + 60 + 30 * 60));
    // A range gate looks back over its range, and each point over the query's own range.
    let ranged = PromQlGate::error_rate_below(client.clone(), 0.01, &m)
        .window(Duration::from_secs(60))
        .range(Duration::from_secs(600))
        .range_step(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(ranged.lookback(), Duration::from_secs(660));

    let judge = Judge::prometheus("j", client, "rate(x[{{window}}])")
        .window(Duration::from_secs(120))
        .lookback(Duration::from_secs(600))
        .step(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(judge.evaluation_time(), Duration::ZERO);
    assert_eq!(judge.lookback(), Duration::from_secs(720));
    let judge = Judge::scrape("s", ScrapeMeasure::mean_latency(&m))
        .samples(20)
        .interval(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(judge.evaluation_time(), Duration::from_secs(100));
    assert_eq!(judge.lookback(), Duration::ZERO);
}
