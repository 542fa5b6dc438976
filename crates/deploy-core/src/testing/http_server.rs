//! [`TestHttpServer`]: a tiny HTTP/1.1 server on a free loopback port, for tests and examples.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Result};
use crate::model::Endpoint;

/// A request as the handler of a [`TestHttpServer`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query (`/health`).
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names in lower case, values lossily as text.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl TestRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer a handler of a [`TestHttpServer`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestResponse {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Wait this long before answering (to test latency budgets and timeouts).
    pub delay: Option<Duration>,
}

impl TestResponse {
    /// An empty answer with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// Add a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Wait `delay` before answering.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

type Handler = Arc<dyn Fn(&TestRequest) -> TestResponse + Send + Sync>;

/// A tiny HTTP/1.1 server (keep-alive supported) bound to `127.0.0.1` on a free port, answering
/// every request through a handler. It stops when dropped; [`stop`](TestHttpServer::stop) also
/// waits until the port is closed, so that a following connection is refused.
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use deploy_core::testing::{TestHttpServer, TestResponse};
/// let server = TestHttpServer::start(|req| match req.path.as_str() {
///     "/health" => TestResponse::text(200, "ok"),
///     _ => TestResponse::new(404),
/// })
/// .await?;
/// println!("serving on {}", server.url("/health"));
/// # Ok(()) }
/// ```
pub struct TestHttpServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestHttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHttpServer")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish()
    }
}

impl TestHttpServer {
    /// Start a server answering through `handler`. Must be called within a tokio runtime.
    pub async fn start<F>(handler: F) -> Result<Self>
    where
        F: Fn(&TestRequest) -> TestResponse + Send + Sync + 'static,
    {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), handler).await
    }

    /// Start a server answering through `handler` on `addr` (port 0: a free one). A test that
    /// needs a target refusing connections for a while before it answers (a service starting
    /// after a restart) takes a free port, points the target at it, and starts the server
    /// there later.
    pub async fn start_at<F>(addr: SocketAddr, handler: F) -> Result<Self>
    where
        F: Fn(&TestRequest) -> TestResponse + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io("bind test HTTP server", addr.to_string(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("bind test HTTP server", addr.to_string(), e))?;
        let requests = Arc::new(AtomicU64::new(0));
        let handler: Handler = Arc::new(handler);
        let task = tokio::spawn(accept_loop(listener, handler, Arc::clone(&requests)));
        Ok(Self {
            addr,
            requests,
            task: Some(task),
        })
    }

    /// Start a server that serves `/health` from `state` (see [`HealthState`]) and answers 404
    /// to every other path.
    pub async fn health(state: HealthState) -> Result<Self> {
        Self::start(move |req| state.answer(req)).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its endpoint, for probes and targets.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::http(self.addr.ip().to_string(), self.addr.port())
    }

    /// The URL of `path` (`path` should start with `/`).
    pub fn url(&self, path: &str) -> String {
        self.endpoint().url(path)
    }

    /// How many requests it has received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stop serving and wait until the listening socket and every connection are closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // An aborted task completes once its future (listener, connections) was dropped.
            let _ = task.await;
        }
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler, requests: Arc<AtomicU64>) {
    // Owned here so that aborting this task also aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, Arc::clone(&handler), Arc::clone(&requests)));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, handler: Handler, requests: Arc<AtomicU64>) {
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let requests = Arc::clone(&requests);
        async move {
            requests.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes().to_vec(),
                Err(_) => Vec::new(),
            };
            let request = TestRequest {
                method: parts.method.as_str().to_owned(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
            };
            let answer = handler(&request);
            if let Some(delay) = answer.delay {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(to_hyper(answer))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn to_hyper(answer: TestResponse) -> hyper::Response<Full<Bytes>> {
    let fail = |why: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(why)));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    };
    let Ok(status) = hyper::StatusCode::from_u16(answer.status) else {
        return fail(format!(
            "test handler returned invalid status {}",
            answer.status
        ));
    };
    let mut r = hyper::Response::new(Full::new(Bytes::from(answer.body)));
    *r.status_mut() = status;
    for (name, value) in answer.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(v)) => {
                r.headers_mut().append(n, v);
            }
            _ => {
                return fail(format!(
                    "test handler returned invalid header {name:?}: {value:?}"
                ));
            }
        }
    }
    r
}

/// The state behind [`TestHttpServer::health`], changeable while the server runs.
///
/// `GET /health` answers `200 {"status":"ok","version":"<version>"}` while healthy and
/// `503 {"status":"down","version":"<version>"}` otherwise, after the configured delay. Clones
/// share the same state.
#[derive(Debug, Clone)]
pub struct HealthState {
    inner: Arc<Mutex<HealthInner>>,
}

#[derive(Debug)]
struct HealthInner {
    version: String,
    healthy: bool,
    delay: Option<Duration>,
}

impl HealthState {
    /// Healthy, reporting `version`, answering without delay.
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HealthInner {
                version: version.into(),
                healthy: true,
                delay: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthInner> {
        // The state stays consistent whatever a panicking holder did: every write is one field.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Report `version` from now on.
    pub fn set_version(&self, version: impl Into<String>) {
        self.lock().version = version.into();
    }

    /// Answer 200 (`true`) or 503 (`false`) from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    /// Wait `delay` before each answer from now on (`None`: answer at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    /// The version reported now.
    pub fn version(&self) -> String {
        self.lock().version.clone()
    }

    /// Whether it answers 200 now.
    pub fn is_healthy(&self) -> bool {
        self.lock().healthy
    }

    fn answer(&self, req: &TestRequest) -> TestResponse {
        if req.path != "/health" {
            return TestResponse::text(404, "not found");
        }
        let s = self.lock();
        let (code, status) = if s.healthy {
            (200, "ok")
        } else {
            (503, "down")
        };
        let mut r = TestResponse::json(
            code,
            &serde_json::json!({"status": status, "version": s.version}),
        );
        r.delay = s.delay;
        r
    }
}
