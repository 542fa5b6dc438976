//! Size limits on what the gates read: a `/metrics` page (16 MiB by default) and a Prometheus
//! API answer (64 MiB by default). Over the limit is an Error verdict naming the URL and the
//! limit, and the body is not read further: stub servers that never stop sending, or that
//! declare a gigabyte, see the connection closed at the limit. Exactly the limit passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{ErrorKind, GateContext, MetricGate, TargetId, VerdictKind, Version};
use deploy_prometheus::{
    HttpMetrics, Judge, PromQlGate, PrometheusClient, ScrapeGate, ScrapeMeasure,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const MIB: u64 = 1024 * 1024;

fn ctx() -> GateContext {
    GateContext::new(
        Version::new("2.0.0").unwrap(),
        vec![TargetId::new("green").unwrap()],
        vec![TargetId::new("blue").unwrap()],
    )
}

/// How a [`Streamer`] sends its body.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// `Transfer-Encoding: chunked`, chunks until the client closes the connection.
    Endless,
    /// `Content-Length: n`, then body bytes until the client closes the connection.
    Declared(u64),
}

/// A raw HTTP/1.1 server that answers every request 200 with a body that does not stop, and
/// counts the body bytes it managed to write before the client closed the connection.
struct Streamer {
    addr: std::net::SocketAddr,
    written: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Streamer {
    async fn start(body: Body) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (written, closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (w, c) = (Arc::clone(&written), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (w, c) = (Arc::clone(&w), Arc::clone(&c));
                tokio::spawn(async move {
                    // The request: headers, and a form body (small) if any.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|x| x == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    let head = match body {
                        Body::Endless => "Transfer-Encoding: chunked".to_owned(),
                        Body::Declared(n) => format!("Content-Length: {n}"),
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n{head}\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let data = vec![b'x'; 64 * 1024];
                    let chunk = match body {
                        Body::Endless => {
                            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                            framed.extend_from_slice(&data);
                            framed.extend_from_slice(b"\r\n");
                            framed
                        }
                        Body::Declared(_) => data,
                    };
                    while stream.write_all(&chunk).await.is_ok() {
                        w.fetch_add(64 * 1024, Ordering::SeqCst);
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            written,
            closed,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body bytes written once the client closed the connection (at most 5 s later).
    async fn written_when_closed(&self) -> u64 {
        for _ in 0..500 {
            if self.closed.load(Ordering::SeqCst) > 0 {
                return self.written.load(Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the client did not close the connection: it is still reading");
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid page of `ok` successful requests, padded with a comment to exactly `size` bytes.
fn page(ok: u64, size: usize) -> String {
    let body = format!(
        "# TYPE http_requests_total counter\nhttp_requests_total{{status=\"200\"}} {ok}\n\
         http_requests_total{{status=\"500\"}} 0\n"
    );
    let pad = size - body.len() - 3;
    format!("{body}# {}\n", "p".repeat(pad))
}

/// A server answering `pages` in turn, then the last one again.
async fn pages(pages: Vec<String>) -> TestHttpServer {
    let pages = Arc::new(std::sync::Mutex::new(pages));
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

#[tokio::test]
async fn a_page_of_exactly_the_limit_passes_and_one_byte_over_is_an_error_verdict() {
    let limit = 10_000;
    let (first, second) = (page(100, limit), page(200, limit));
    assert_eq!((first.len(), second.len()), (limit, limit));
    let gate = |server: &TestHttpServer, limit: usize| {
        ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
            .unwrap()
            .url(server.url("/metrics"))
            .window(Duration::from_millis(20))
            .max_page_size(limit as u64)
            .build()
            .unwrap()
    };
    let server = pages(vec![first.clone(), second.clone()]).await;
    let v = gate(&server, limit).evaluate(&ctx()).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Pass, Some(0.0)), "{v}");

    let server = pages(vec![first, second]).await;
    let v = gate(&server, limit - 1).evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    for part in [
        format!("scrape metrics from {}", server.url("/metrics")),
        "the page is larger than the limit of 9999 bytes,".to_owned(),
        "not read further".to_owned(),
        "max_page_size".to_owned(),
        "protocol error".to_owned(),
    ] {
        assert!(v.reason.contains(&part), "{part:?} missing from {v}");
    }
}

#[tokio::test]
async fn an_endless_page_is_cut_off_at_the_default_16_mib() {
    let streamer = Streamer::start(Body::Endless).await;
    let gate = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
        .unwrap()
        .url(streamer.url("/metrics"))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let v = gate.evaluate(&ctx()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(
        v.reason
            .contains("larger than the limit of 16 MiB (16777216 bytes)"),
        "{v}"
    );
    assert!(v.reason.contains(&streamer.url("/metrics")), "{v}");
    let written = streamer.written_when_closed().await;
    assert!(
        (16 * MIB..24 * MIB).contains(&written),
        "{written} bytes written"
    );
    eprintln!("endless page: refused after {took:?}, {written} body bytes written");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let streamer = Streamer::start(Body::Declared(1 << 30)).await;
    let gate = ScrapeGate::error_rate_below(0.01, &HttpMetrics::default())
        .unwrap()
        .url(streamer.url("/metrics"))
        .build()
        .unwrap();
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("limit of 16 MiB"), "{v}");
    // Only what the socket buffers took before the client closed the connection.
    let written = streamer.written_when_closed().await;
    assert!(written < 8 * MIB, "{written} bytes written");
}

#[tokio::test]
async fn a_scrape_judge_refuses_a_page_over_its_limit() {
    let server = pages(vec![page(100, 2000)]).await;
    let mut c = ctx();
    c.canary_endpoints = vec![server.endpoint()];
    c.baseline_endpoints = vec![server.endpoint()];
    let judge = Judge::scrape("j", ScrapeMeasure::request_rate(&HttpMetrics::default()))
        .samples(2)
        .interval(Duration::from_millis(10))
        .max_page_size(1999)
        .build()
        .unwrap();
    let v = judge.evaluate(&c).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("limit of 1999 bytes"), "{v}");
    assert!(
        Judge::scrape("j", ScrapeMeasure::request_rate(&HttpMetrics::default()))
            .max_page_size(0)
            .build()
            .unwrap_err()
            .to_string()
            .contains("page size limit is 0")
    );
}

/// A vector answer of one sample 0.001, padded with spaces to exactly `size` bytes.
fn answer(size: usize) -> Vec<u8> {
    let body = json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1, "0.001"]}]}})
    .to_string();
    let mut bytes = body.into_bytes();
    bytes.resize(size, b' ');
    bytes
}

#[tokio::test]
async fn an_answer_of_exactly_the_limit_passes_and_one_byte_over_is_an_error() {
    let limit = 5000;
    let server = TestHttpServer::start(move |_| {
        TestResponse::new(200)
            .with_header("content-type", "application/json")
            .with_body(answer(limit))
    })
    .await
    .unwrap();
    let gate = |limit: usize| {
        let client = PrometheusClient::new(&server.url("/"))
            .unwrap()
            .with_max_answer_size(limit as u64);
        PromQlGate::builder("stub", client)
            .query("x")
            .condition("< 1")
            .build()
            .unwrap()
    };
    let v = gate(limit).evaluate(&ctx()).await.unwrap();
    assert_eq!((v.kind, v.value), (VerdictKind::Pass, Some(0.001)), "{v}");

    let small = gate(limit - 1);
    let e = small.client().query("x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "query `x` on Prometheus {}: the answer is larger than the limit of 4999 bytes, so \
             it was not read further; raise `max_answer_size` if it really is that large",
            server.url("/")
        )
    );
    let v = small.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    assert!(v.reason.contains("limit of 4999 bytes"), "{v}");
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_default_64_mib() {
    let streamer = Streamer::start(Body::Endless).await;
    let client = PrometheusClient::new(&streamer.url("/"))
        .unwrap()
        .with_timeout(Duration::from_secs(120));
    assert_eq!(client.max_answer_size(), 64 * MIB);
    assert_eq!(PrometheusClient::DEFAULT_MAX_ANSWER_SIZE, 64 * MIB);
    let started = Instant::now();
    let e = client
        .query_range(
            "x",
            std::time::SystemTime::now() - Duration::from_secs(60),
            std::time::SystemTime::now(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string()
            .contains("larger than the limit of 64 MiB (67108864 bytes)"),
        "{e}"
    );
    assert!(e.to_string().contains(&streamer.url("/")), "{e}");
    let written = streamer.written_when_closed().await;
    assert!(
        (64 * MIB..72 * MIB).contains(&written),
        "{written} bytes written"
    );
    eprintln!("endless answer: refused after {took:?}, {written} body bytes written");
}
