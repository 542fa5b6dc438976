//! The application the demo deploys: run by the demo as child processes of its own binary
//! (`demo --app DIR`), so that `cargo run --example demo` needs no other binary, and by
//! `examples/demo_app.rs` on its own.
//!
//! `/health` answers
//! `{"status":"ok","version":"…"}`, `/metrics` the counter `http_requests_total{status}` and the
//! histogram `http_request_duration_seconds` (`/health` and `/metrics` not counted), and every
//! other path `hello from <version>`, every ⌈1/error-rate⌉-th such request with a 500
//! (`injected error from <version>`). Version, error rate and added latency come from
//! fixed values ([`Source::Fixed`]) or from `DIR/app.conf` (`version=`, `error_rate=`,
//! `latency_ms=`), re-read whenever the link `DIR` points at another release
//! ([`Source::ReleaseDir`]).
//!
//! Two faults of real exporters can be injected through `app.conf`, for the fault tests:
//! `error_label=TEXT` adds the label `reason="TEXT"` (escaped as the text format says) to the
//! 5xx series — route templates and error texts hold `,`, `{` and `}` — and
//! `histogram=wrapping` renders bucket counts as a 32-bit counter near its maximum at the first
//! scrape and wrapped to negative values from the second on, so that they go down between
//! scrapes.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What the application does: the version it reports, the share of requests it fails, the
/// latency it adds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Behaviour {
    pub(crate) version: String,
    pub(crate) error_rate: f64,
    pub(crate) latency: Duration,
    /// A `reason` label on the 5xx series.
    pub(crate) error_label: Option<String>,
    /// Bucket counts rendered as a 32-bit counter near its wrap.
    pub(crate) histogram_wrapping: bool,
}

/// Where the behaviour comes from.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each example uses one of them
pub(crate) enum Source {
    /// Fixed values (command-line flags).
    Fixed(Behaviour),
    /// `DIR/app.conf`, following the link `DIR`.
    ReleaseDir(PathBuf),
}

impl Behaviour {
    fn read(dir: &std::path::Path) -> Self {
        let mut b = Self {
            version: "unknown".to_owned(),
            error_rate: 0.0,
            latency: Duration::ZERO,
            error_label: None,
            histogram_wrapping: false,
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("app.conf")) {
            for line in text.lines() {
                match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("version", v)) => v.clone_into(&mut b.version),
                    Some(("error_rate", v)) => b.error_rate = v.parse().unwrap_or(0.0),
                    Some(("latency_ms", v)) => {
                        b.latency = Duration::from_millis(v.parse().unwrap_or(0));
                    }
                    Some(("error_label", v)) => b.error_label = Some(v.to_owned()),
                    Some(("histogram", "wrapping")) => b.histogram_wrapping = true,
                    _ => {}
                }
            }
        }
        b
    }
}

const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Metrics {
    ok: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; 11],
    sum_micros: AtomicU64,
    count: AtomicU64,
    /// `/metrics` pages rendered.
    renders: AtomicU64,
}

impl Metrics {
    fn observe(&self, status: u16, elapsed: Duration) {
        let counter = if status >= 500 {
            &self.errors
        } else {
            &self.ok
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (bucket, le) in self.buckets.iter().zip(BUCKETS) {
            if secs <= le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, b: &Behaviour) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // A 32-bit counter close to its maximum at the first scrape, wrapped to negative
        // values from the second scrape on.
        let first_render = self.renders.fetch_add(1, Ordering::Relaxed) == 0;
        let bucket = |a: &AtomicU64| {
            let n = load(a) as i64;
            match (b.histogram_wrapping, first_render) {
                (false, _) => n,
                (true, true) => i64::from(i32::MAX) - 1_000 + n,
                (true, false) => i64::from(i32::MIN) + n,
            }
        };
        let reason = b.error_label.as_ref().map_or(String::new(), |r| {
            let escaped = r
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!(",reason=\"{escaped}\"")
        });
        let mut s = String::from(
            "# HELP http_requests_total Requests served, by status.\n\
             # TYPE http_requests_total counter\n",
        );
        s += &format!("http_requests_total{{status=\"200\"}} {}\n", load(&self.ok));
        s += &format!(
            "http_requests_total{{status=\"500\"{reason}}} {}\n",
            load(&self.errors)
        );
        s += "# HELP http_request_duration_seconds Request latency.\n\
              # TYPE http_request_duration_seconds histogram\n";
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            s += &format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {}\n",
                bucket(b)
            );
        }
        s += &format!(
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
            bucket(&self.count)
        );
        s += &format!(
            "http_request_duration_seconds_sum {}\n",
            load(&self.sum_micros) as f64 / 1e6
        );
        s += &format!(
            "http_request_duration_seconds_count {}\n",
            load(&self.count)
        );
        s
    }
}

struct App {
    source: Source,
    /// The release the link pointed at when `behaviour` was read, and what it said.
    cached: Mutex<(Option<PathBuf>, Behaviour)>,
    served: AtomicU64,
    metrics: Metrics,
}

impl App {
    fn behaviour(&self) -> Behaviour {
        let dir = match &self.source {
            Source::Fixed(b) => return b.clone(),
            Source::ReleaseDir(dir) => dir,
        };
        let target = std::fs::read_link(dir).ok();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != target || target.is_none() {
            *cached = (target, Behaviour::read(dir));
        }
        cached.1.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let b = self.behaviour();
        let started = Instant::now();
        let path = req.uri().path();
        let (status, body) = match path {
            "/health" => (
                200,
                format!("{{\"status\":\"ok\",\"version\":\"{}\"}}", b.version),
            ),
            "/metrics" => (200, self.metrics.render(&b)),
            _ => {
                if !b.latency.is_zero() {
                    tokio::time::sleep(b.latency).await;
                }
                let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
                let every = if b.error_rate > 0.0 {
                    (1.0 / b.error_rate).ceil() as u64
                } else {
                    0
                };
                if every > 0 && n.is_multiple_of(every) {
                    (500, format!("injected error from {}\n", b.version))
                } else {
                    (200, format!("hello from {}\n", b.version))
                }
            }
        };
        if !matches!(path, "/health" | "/metrics") {
            self.metrics.observe(status, started.elapsed());
        }
        Response::builder()
            .status(status)
            .header("x-version", b.version)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// Serve the release under the link `dir` on a free loopback port; print `listening on ADDR`
/// as the first line of standard output, then serve until killed.
#[allow(dead_code)] // used by the demo, not by demo_app
pub(crate) async fn serve(dir: PathBuf) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    serve_on(listener, Source::ReleaseDir(dir)).await
}

/// What `source` says now (the version to announce on start).
#[allow(dead_code)] // used by demo_app, not by the demo
pub(crate) fn behaviour_of(source: &Source) -> Behaviour {
    match source {
        Source::Fixed(b) => b.clone(),
        Source::ReleaseDir(dir) => Behaviour::read(dir),
    }
}

/// Serve on `listener` until killed.
pub(crate) async fn serve_on(
    listener: tokio::net::TcpListener,
    source: Source,
) -> std::io::Result<()> {
    let initial = behaviour_of(&source);
    let app = Arc::new(App {
        cached: Mutex::new((None, initial)),
        source,
        served: AtomicU64::new(0),
        metrics: Metrics::default(),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
