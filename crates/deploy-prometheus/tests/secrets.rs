//! Canary secrets — a bearer token from a file, a password in the `prometheus` URL, a token in
//! a URL's path or query — are sent where they belong and never appear in `Debug` output,
//! error messages, verdicts (source, reason, JSON) or log lines (every level), whatever the
//! server answers: success, an error page quoting the request headers, 5xx, an answer over the
//! size limit, or no server at all.

use std::io::Write;
use std::sync::{Arc, Mutex};

use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{GateContext, MetricGate, TargetId, Verdict, VerdictKind, Version};
use deploy_prometheus::{
    PROMQL_KIND, PromQlGate, PromQlGateConfig, SCRAPE_KIND, ScrapeGate, ScrapeGateConfig,
};
use serde_json::json;

const TOKEN: &str = "tok-Zq9CANARY-7f3a";
const PASSWORD: &str = "pw-Zq9CANARY-c41d";
const PATH_TOKEN: &str = "Zq9CANARYpathTok3n";
/// A part of every canary: nothing shown may hold it.
const CANARY: &str = "Zq9CANARY";

fn ctx() -> GateContext {
    GateContext::new(
        Version::new("2.0.0").unwrap(),
        vec![TargetId::new("green").unwrap()],
        vec![],
    )
}

/// Every line logged (any level, any target) while the guard lives, on this thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || log.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The password the URL test sends, decoded.
fn url_password() -> String {
    format!("{PASSWORD}@/x")
}

/// Assert that `shown` holds neither the canary nor the basic credentials as the
/// `Authorization` header carries them (base64, which hides the canary's letters).
fn hidden(what: &str, shown: &str) {
    assert!(!shown.contains(CANARY), "the canary is in {what}: {shown}");
    let header = base64(format!("alice:{}", url_password()).as_bytes());
    assert!(
        !shown.contains(&header),
        "the basic credentials are in {what}: {shown}"
    );
}

fn verdict_hidden(v: &Verdict) {
    hidden("a verdict", &v.to_string());
    hidden("a verdict's source", &v.source);
    hidden("a verdict's reason", &v.reason);
    hidden("a verdict's JSON", &serde_json::to_string(v).unwrap());
    hidden("a verdict's Debug", &format!("{v:?}"));
}

fn section<T: serde::de::DeserializeOwned>(kind: &str, text: &str) -> T {
    let mut table: toml::Table = toml::from_str(text).unwrap();
    assert_eq!(table.remove("kind").unwrap().as_str(), Some(kind));
    table.try_into().unwrap()
}

/// What the stub answers next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Success,
    /// 401 with a page quoting the request's `Authorization` header, as some proxies do.
    EchoHeaders,
    /// A Prometheus error naming the header (a misconfigured proxy's words).
    EchoInError,
    Unavailable,
    /// An answer over the 1 KiB limit the sections below set.
    Huge,
}

/// `(path, Authorization header)` of every request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A Prometheus stub that records each request's path and `Authorization` header and answers
/// as `mode` says.
struct Stub {
    server: TestHttpServer,
    mode: Arc<Mutex<Mode>>,
    seen: Seen,
}

impl Stub {
    async fn start() -> Self {
        let mode = Arc::new(Mutex::new(Mode::Success));
        let seen: Seen = Arc::default();
        let (m, s) = (Arc::clone(&mode), Arc::clone(&seen));
        let server = TestHttpServer::start(move |req| {
            let auth = req.header("authorization").map(str::to_owned);
            s.lock().unwrap().push((req.path.clone(), auth.clone()));
            let auth = auth.unwrap_or_default();
            match *m.lock().unwrap() {
                Mode::Success => TestResponse::json(
                    200,
                    &json!({"status": "success", "data": {"resultType": "vector", "result": [
                        {"metric": {}, "value": [1, "0.001"]}]}}),
                ),
                Mode::EchoHeaders => TestResponse::text(
                    401,
                    format!("<html>{}<p>Request headers: Authorization: {auth}</p></html>", " ".repeat(150)),
                ),
                Mode::EchoInError => TestResponse::json(
                    403,
                    &json!({"status": "error", "errorType": "auth", "error": format!("refused {auth}")}),
                ),
                Mode::Unavailable => TestResponse::text(503, format!("upstream down ({auth})")),
                Mode::Huge => TestResponse::text(200, "x".repeat(2048)),
            }
        })
        .await
        .unwrap();
        Self { server, mode, seen }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn last(&self) -> (String, Option<String>) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// Run `gate` against every answer of the stub, then with the stub gone: the first evaluation
/// passes, every other is an Error verdict; nothing shown holds the canary.
async fn every_answer_keeps_the_secret(stub: Stub, gate: &PromQlGate) {
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Pass, "{v}");
    verdict_hidden(&v);
    for mode in [
        Mode::EchoHeaders,
        Mode::EchoInError,
        Mode::Unavailable,
        Mode::Huge,
    ] {
        stub.set(mode);
        let e = gate.client().query("x").await.unwrap_err();
        hidden("an error", &e.to_string());
        hidden("an error's Debug", &format!("{e:?}"));
        hidden(
            "an error record",
            &serde_json::to_string(&e.record()).unwrap(),
        );
        let v = gate.evaluate(&ctx()).await.unwrap();
        assert_eq!(v.kind, VerdictKind::Error, "{mode:?}: {v}");
        verdict_hidden(&v);
    }
    stub.server.stop().await;
    let e = gate.client().query("x").await.unwrap_err();
    hidden("an error", &format!("{e} {e:?}"));
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.kind, VerdictKind::Error, "{v}");
    verdict_hidden(&v);
}

#[tokio::test]
async fn a_bearer_token_from_a_file_is_sent_and_shown_nowhere() {
    let log = Log::default();
    let _guard = log.capture();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    // Secret files must be readable by their owner only.
    std::fs::set_permissions(
        &file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let stub = Stub::start().await;
    let config: PromQlGateConfig = section(
        PROMQL_KIND,
        &format!(
            "kind = \"promql\"\nprometheus = \"{}\"\nbearer_token_file = {:?}\nquery = \"x\"\n\
             condition = \"< 1\"\nmax_answer_size = \"1 KiB\"",
            stub.server.url("/"),
            file.display().to_string()
        ),
    );
    hidden("the config's Debug", &format!("{config:?}"));
    let gate = PromQlGate::from_config(config).unwrap();
    hidden("the gate's Debug", &format!("{gate:?}"));
    hidden("the client's Debug", &format!("{:?}", gate.client()));
    gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(
        stub.last(),
        ("/api/v1/query".to_owned(), Some(format!("Bearer {TOKEN}")))
    );
    every_answer_keeps_the_secret(stub, &gate).await;
    let logged = log.text();
    assert!(logged.contains("Prometheus query"), "{logged}");
    hidden("the log", &logged);
}

/// `user:password` in base64, as basic authentication sends it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[tokio::test]
async fn a_password_in_the_prometheus_url_becomes_basic_auth_with_a_warning_and_is_shown_nowhere() {
    let log = Log::default();
    let _guard = log.capture();
    let stub = Stub::start().await;
    // Percent-encoded, as a URL needs it: the password itself holds '@' and '/'.
    let password = url_password();
    let url = format!(
        "http://alice:{}@{}/prom",
        PASSWORD.to_owned() + "%40%2Fx",
        stub.server.addr()
    );
    let config: PromQlGateConfig = section(
        PROMQL_KIND,
        &format!(
            "kind = \"promql\"\nprometheus = \"{url}\"\nquery = \"x\"\ncondition = \"< 1\"\n\
             max_answer_size = 1024"
        ),
    );
    hidden("the config's Debug", &format!("{config:?}"));
    let gate = PromQlGate::from_config(config).unwrap();
    hidden("the gate's Debug", &format!("{gate:?}"));
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.source, format!("x @ http://{}/prom/", stub.server.addr()));
    let expected = format!("Basic {}", base64(format!("alice:{password}").as_bytes()));
    assert_eq!(
        stub.last(),
        ("/prom/api/v1/query".to_owned(), Some(expected))
    );
    every_answer_keeps_the_secret(stub, &gate).await;
    let logged = log.text();
    assert!(
        logged.contains("WARN") && logged.contains("holds a password"),
        "{logged}"
    );
    hidden("the log", &logged);
}

#[tokio::test]
async fn a_token_in_a_urls_path_or_query_is_hidden_in_sources_errors_and_debug() {
    let log = Log::default();
    let _guard = log.capture();
    // A Prometheus behind a proxy that takes a token in the path.
    let stub = Stub::start().await;
    let url = stub.server.url(&format!("/{PATH_TOKEN}/"));
    let config: PromQlGateConfig = section(
        PROMQL_KIND,
        &format!(
            "kind = \"promql\"\nprometheus = \"{url}\"\nquery = \"x\"\ncondition = \"< 1\"\n\
             max_answer_size = 1024"
        ),
    );
    let gate = PromQlGate::from_config(config).unwrap();
    hidden("the gate's Debug", &format!("{gate:?}"));
    let v = gate.evaluate(&ctx()).await.unwrap();
    assert_eq!(v.source, format!("x @ http://{}/***/", stub.server.addr()));
    assert_eq!(stub.last().0, format!("/{PATH_TOKEN}/api/v1/query"));
    every_answer_keeps_the_secret(stub, &gate).await;

    // Scrape URLs with a token in the query and in the path.
    let server = TestHttpServer::start(|req| match req.query.as_deref() {
        Some(q) if q.contains("big") => TestResponse::text(200, "x".repeat(4096)),
        _ => TestResponse::text(500, "no"),
    })
    .await
    .unwrap();
    for url in [
        server.url(&format!("/metrics?token={PATH_TOKEN}&size=big")),
        server.url(&format!("/{PATH_TOKEN}/metrics?size=big")),
        server.url(&format!("/metrics?token={PATH_TOKEN}")),
        format!("http://127.0.0.1:9/{PATH_TOKEN}/metrics"),
    ] {
        let config: ScrapeGateConfig = section(
            SCRAPE_KIND,
            &format!(
                "kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01\n\
                 urls = [\"{url}\"]\nwindow = \"10ms\"\nmax_page_size = \"1 KiB\""
            ),
        );
        hidden("the config's Debug", &format!("{config:?}"));
        let gate = ScrapeGate::from_config(config).unwrap();
        hidden("the gate's Debug", &format!("{gate:?}"));
        let v = gate.evaluate(&ctx()).await.unwrap();
        assert_eq!(v.kind, VerdictKind::Error, "{v}");
        verdict_hidden(&v);
    }
    let builder = ScrapeGate::error_rate_below(0.01, &deploy_prometheus::HttpMetrics::default())
        .unwrap()
        .url(format!("http://h/metrics?token={PATH_TOKEN}"));
    hidden("the builder's Debug", &format!("{builder:?}"));
    let logged = log.text();
    hidden("the log", &logged);
}
