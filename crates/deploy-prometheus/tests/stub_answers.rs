//! The PromQL client and gate against stub endpoints answering what a broken or unusual
//! Prometheus (or a proxy in front of it) answers: typed errors and Error verdicts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{ErrorKind, GateContext, MetricGate, TargetId, VerdictKind, Version};
use deploy_prometheus::{
    Auth, HttpMetrics, PromQlGate, PrometheusClient, QueryResult, ScrapeGate, ScrapeMeasure,
};
use serde_json::json;

fn ctx() -> GateContext {
    GateContext::new(
        Version::new("2.0.0").unwrap(),
        vec![TargetId::new("green").unwrap()],
        vec![],
    )
}

async fn stub(answer: TestResponse) -> (TestHttpServer, PromQlGate) {
    let server = TestHttpServer::start(move |_| answer.clone())
        .await
        .unwrap();
    let client = PrometheusClient::new(&server.url("/"))
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let gate = PromQlGate::builder("stub", client)
        .query("x")
        .condition("< 1")
        .build()
        .unwrap();
    (server, gate)
}

#[tokio::test]
async fn broken_answers_are_typed_errors_and_error_verdicts() {
    let cases: Vec<(TestResponse, ErrorKind, &str)> = vec![
        (
            TestResponse::text(200, "<html>not json {"),
            ErrorKind::Protocol,
            "not Prometheus API JSON",
        ),
        (
            TestResponse::json(
                400,
                &json!({"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected character"}),
            ),
            ErrorKind::Rejected,
            "HTTP 400 bad_data: 1:5: parse error",
        ),
        (
            TestResponse::json(
                200,
                &json!({"status": "error", "errorType": "execution", "error": "boom"}),
            ),
            ErrorKind::Rejected,
            "execution: boom",
        ),
        (
            TestResponse::json(
                200,
                &json!({"status": "success", "data": {"resultType": "vector", "result": {"bad": 1}}}),
            ),
            ErrorKind::Protocol,
            "bad vector",
        ),
        (
            TestResponse::json(200, &json!({"status": "success"})),
            ErrorKind::Protocol,
            "no `data`",
        ),
        (
            TestResponse::text(503, "upstream down"),
            ErrorKind::Unavailable,
            "HTTP 503 Service Unavailable: upstream down",
        ),
        (
            TestResponse::text(401, "who are you"),
            ErrorKind::PermissionDenied,
            "HTTP 401",
        ),
        (
            TestResponse::text(200, "late").with_delay(Duration::from_secs(2)),
            ErrorKind::Timeout,
            "no answer within 500ms",
        ),
    ];
    for (answer, kind, text) in cases {
        let (server, gate) = stub(answer).await;
        let e = gate.client().query("x").await.unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(text), "{e:?} lacks {text:?}");
        assert!(
            e.to_string()
                .starts_with("query `x` on Prometheus http://127.0.0.1:"),
            "{e}"
        );
        let v = gate.evaluate(&ctx()).await.unwrap();
        assert_eq!(v.kind, VerdictKind::Error, "{v}");
        assert!(v.reason.contains(text), "{v}");
        assert_eq!(
            (v.condition.as_str(), v.source.as_str()),
            ("< 1", format!("x @ {}", server.url("/")).as_str())
        );
    }
}

#[tokio::test]
async fn result_types_nan_and_sample_counts() {
    // A string cannot be judged.
    let (_s, gate) = stub(TestResponse::json(
        200,
        &json!({"status": "success", "data": {"resultType": "string", "result": [1, "hello"]}}),
    ))
    .await;
    assert_eq!(
        gate.client().query("x").await.unwrap(),
        QueryResult::String("hello".into())
    );
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error);
    assert!(v.reason.contains("answers a string"), "{v}");

    // NaN is Inconclusive, a scalar is judged.
    let (_s, gate) = stub(TestResponse::json(
        200,
        &json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}}),
    ))
    .await;
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(
        (v.kind, v.no_data),
        (VerdictKind::Inconclusive, false),
        "{v}"
    );
    let (_s, gate) = stub(TestResponse::json(
        200,
        &json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "2.5"]}}),
    ))
    .await;
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(2.5)), "{v}");

    // Two series, three needed: Inconclusive; the worst series decides otherwise.
    let two = json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"i": "a"}, "value": [1, "0.2"]}, {"metric": {"i": "b"}, "value": [1, "0.7"]}]}});
    let server = TestHttpServer::start(move |_| TestResponse::json(200, &two))
        .await
        .unwrap();
    let client = PrometheusClient::new(&server.url("/")).unwrap();
    let gate = PromQlGate::builder("two", client.clone())
        .query("x")
        .condition("< 0.5")
        .min_samples(3)
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Inconclusive, "{v}");
    let gate = PromQlGate::builder("two", client)
        .query("x")
        .condition("< 0.5")
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(0.7)), "{v}");
}

#[tokio::test]
async fn queries_are_templated_posted_and_authenticated() {
    // (path, authorization header, body) of every request.
    type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let server = TestHttpServer::start(move |req| {
        log.lock().unwrap().push((
            req.path.clone(),
            req.header("authorization").map(str::to_owned),
            String::from_utf8_lossy(&req.body).into_owned(),
        ));
        TestResponse::json(
            200,
            &json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.001"]}]}}),
        )
    })
    .await
    .unwrap();
    let client = PrometheusClient::new(&server.url("/prom"))
        .unwrap()
        .with_auth(Auth::Bearer("s3cret-token".into()));
    assert!(!format!("{client:?}").contains("s3cret"));
    let gate = PromQlGate::builder("t", client)
        .query(r#"max(x{slot=~"{{target}}",v="{{version}}",job="{{job}}"}[{{window}}])"#)
        .var("job", "api")
        .window(Duration::from_secs(90))
        .condition("<= 0.01")
        .build()
        .unwrap();
    let mut c = ctx();
    c.canary = vec![
        TargetId::new("web.1").unwrap(),
        TargetId::new("web-2").unwrap(),
    ];
    let v = gate.evaluate(&c).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Pass, Some(0.001)), "{v}");
    assert_eq!(
        v.source,
        format!(
            r#"max(x{{slot=~"web\\.1|web-2",v="2.0.0",job="api"}}[90s]) @ {}/"#,
            server.url("/prom")
        )
    );
    let seen = seen.lock().unwrap();
    let (path, auth, body) = &seen[0];
    assert_eq!(path, "/prom/api/v1/query");
    assert_eq!(auth.as_deref(), Some("Bearer s3cret-token"));
    assert!(
        body.starts_with("query=max%28x%7Bslot%3D%7E%22web%5C%5C.1%7Cweb-2%22"),
        "{body}"
    );
}

#[tokio::test]
async fn scrape_gate_reads_counter_resets_and_reports_unreachable_targets() {
    // The target restarts between the two scrapes: its counters start again from 0.
    let pages = Arc::new(Mutex::new(vec![
        "# TYPE http_requests_total counter\nhttp_requests_total{status=\"200\"} 1000\nhttp_requests_total{status=\"500\"} 50\n",
        "# TYPE http_requests_total counter\nhttp_requests_total{status=\"200\"} 97\nhttp_requests_total{status=\"500\"} 3\n",
    ]));
    let server = TestHttpServer::start(move |_| {
        let mut p = pages.lock().unwrap();
        let page = if p.len() > 1 { p.remove(0) } else { p[0] };
        TestResponse::text(200, page)
    })
    .await
    .unwrap();
    let gate = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
        .unwrap()
        .url(server.url("/metrics"))
        .window(Duration::from_millis(200))
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Fail, Some(0.03)), "{v}");
    server.stop().await;
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(
        v.reason.contains("cannot connect") && v.reason.contains("unavailable"),
        "{v}"
    );
    // No endpoint at all is a configuration error.
    let gate = ScrapeGate::builder("rate", ScrapeMeasure::request_rate(&HttpMetrics::default()))
        .condition("> 1")
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("no canary endpoints"), "{v}");
}
