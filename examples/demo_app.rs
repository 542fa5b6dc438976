//! The demo's application: a small HTTP service to deploy.
//!
//! - `GET /health` → `{"status":"ok","version":"…"}`
//! - `GET /metrics` → Prometheus text: `http_requests_total{status}` and the
//!   `http_request_duration_seconds` histogram (requests to `/health` and `/metrics` excluded)
//! - `GET /` and anything else → `hello from <version>`; every ⌈1/error-rate⌉-th such request
//!   answers 500 (deterministic, so an error rate of 0.05 is exactly 5 %), each delayed by the
//!   added latency.
//!
//! Behaviour comes from flags, or with `--release-dir DIR` from `DIR/app.conf` (lines
//! `version=…`, `error_rate=…`, `latency_ms=…`), re-read whenever the `DIR` link points at a new
//! release — so a release-directory deploy (`current` swapped atomically) changes what it serves
//! without a restart.
//!
//! ```text
//! cargo run --example demo_app -- --port 8080 --version 1.0.0 --error-rate 0.05 --latency-ms 20
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug, Clone)]
#[command(about = "A small HTTP service with /health and /metrics, to deploy in the demo")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The version it reports.
    #[arg(long, default_value = "0.0.0")]
    version: String,
    /// Share of requests answered with 500 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Read version, error rate and latency from DIR/app.conf, following the DIR link.
    #[arg(long)]
    release_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
struct Behaviour {
    version: String,
    error_rate: f64,
    latency: Duration,
}

const BUCKETS: [f64; 12] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

#[derive(Debug, Default)]
struct Metrics {
    ok: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; 12],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    fn observe(&self, status: u16, elapsed: Duration) {
        if status >= 500 {
            &self.errors
        } else {
            &self.ok
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, version: &str) -> String {
        let mut s = String::new();
        s.push_str("# HELP http_requests_total Requests served, by status.\n# TYPE http_requests_total counter\n");
        s.push_str(&format!(
            "http_requests_total{{status=\"200\",version=\"{version}\"}} {}\n",
            self.ok.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "http_requests_total{{status=\"500\",version=\"{version}\"}} {}\n",
            self.errors.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            s.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\",version=\"{version}\"}} {}\n",
                self.buckets[i].load(Ordering::Relaxed)
            ));
        }
        s.push_str(&format!(
            "http_request_duration_seconds_sum{{version=\"{version}\"}} {}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        s.push_str(&format!(
            "http_request_duration_seconds_count{{version=\"{version}\"}} {}\n",
            self.count.load(Ordering::Relaxed)
        ));
        s
    }
}

struct App {
    args: Args,
    /// The release the link pointed at when `behaviour` was read, and what it said.
    cached: Mutex<(Option<PathBuf>, Behaviour)>,
    served: AtomicU64,
    metrics: Metrics,
}

impl App {
    fn behaviour(&self) -> Behaviour {
        let from_flags = || Behaviour {
            version: self.args.version.clone(),
            error_rate: self.args.error_rate,
            latency: Duration::from_millis(self.args.latency_ms),
        };
        let Some(dir) = &self.args.release_dir else {
            return from_flags();
        };
        let target = std::fs::read_link(dir).ok();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != target || target.is_none() {
            let mut b = from_flags();
            if let Ok(text) = std::fs::read_to_string(dir.join("app.conf")) {
                for line in text.lines() {
                    match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                        Some(("version", v)) => b.version = v.to_owned(),
                        Some(("error_rate", v)) => b.error_rate = v.parse().unwrap_or(0.0),
                        Some(("latency_ms", v)) => {
                            b.latency = Duration::from_millis(v.parse().unwrap_or(0))
                        }
                        _ => {}
                    }
                }
            }
            *cached = (target, b);
        }
        cached.1.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let b = self.behaviour();
        let t = Instant::now();
        let (status, content_type, body) = match req.uri().path() {
            "/health" => (
                200,
                "application/json",
                format!("{{\"status\":\"ok\",\"version\":\"{}\"}}", b.version),
            ),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.metrics.render(&b.version),
            ),
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
                    (
                        500,
                        "text/plain",
                        format!("injected error from {}\n", b.version),
                    )
                } else {
                    (200, "text/plain", format!("hello from {}\n", b.version))
                }
            }
        };
        if !matches!(req.uri().path(), "/health" | "/metrics") {
            self.metrics.observe(status, t.elapsed());
        }
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-version", b.version)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let app = Arc::new(App {
        cached: Mutex::new((
            None,
            Behaviour {
                version: String::new(),
                error_rate: 0.0,
                latency: Duration::ZERO,
            },
        )),
        args,
        served: AtomicU64::new(0),
        metrics: Metrics::default(),
    });
    println!(
        "demo_app listening on http://{addr} (version {})",
        app.behaviour().version
    );
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
