//! Real-server fixtures for tests: a [`PrometheusServer`] on a free loopback port scraping a
//! [`TestApp`] whose error rate and latency the test sets, and [`Load`] to drive bounded
//! traffic to it. Compiled under the `testing` feature.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deploy_core::testing::process::{ChildGuard, free_port, wait_until};
use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{Endpoint, Error, ErrorKind, Result, http};

use crate::client::PrometheusClient;

/// Where the fixture looks for `prometheus`: `$PROMETHEUS_BIN`, then `/usr/bin/prometheus`,
/// then `PATH`. Missing, it fails with a message naming the install command.
pub fn prometheus_binary() -> Result<PathBuf> {
    locate(
        std::env::var_os("PROMETHEUS_BIN"),
        Path::new("/usr/bin/prometheus"),
        std::env::var_os("PATH"),
    )
}

fn locate(
    explicit: Option<std::ffi::OsString>,
    default: &Path,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    const INSTALL: &str =
        "install it with `apt-get install prometheus` or `bash scripts/install-servers.sh`";
    if let Some(p) = explicit {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::new(
            ErrorKind::NotFound,
            "find",
            "the prometheus binary",
            format!(
                "$PROMETHEUS_BIN is {}, which is not a file; {INSTALL}",
                p.display()
            ),
        ));
    }
    if default.is_file() {
        return Ok(default.to_owned());
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("prometheus");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::new(
        ErrorKind::NotFound,
        "find",
        "the prometheus binary",
        format!(
            "not in $PROMETHEUS_BIN, {} or PATH; {INSTALL}",
            default.display()
        ),
    ))
}

/// A scrape target of the fixture: an address and the `target` label its series get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// The value of the `target` label (the target id, for `{{target}}`).
    pub id: String,
    /// `host:port` serving `/metrics`.
    pub addr: SocketAddr,
}

impl ScrapeTarget {
    /// Scrape `addr`, labelling its series `target="<id>"`.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            addr,
        }
    }
}

/// A real `prometheus` on a free `127.0.0.1` port, with a generated configuration (scrape
/// interval 1 s unless told otherwise, one static config per target with a `target` label) and
/// its storage in a temporary directory. Stopped (TERM, then KILL) when dropped.
#[derive(Debug)]
pub struct PrometheusServer {
    // Dropped first: the process stops before its directory is removed.
    child: ChildGuard,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Start Prometheus scraping `targets` every second and wait until it is ready.
    pub async fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        Self::start_with(targets, Duration::from_secs(1)).await
    }

    /// Start Prometheus scraping `targets` every `interval` and wait until it is ready.
    pub async fn start_with(targets: &[ScrapeTarget], interval: Duration) -> Result<Self> {
        // The free port is found by binding and releasing it, so another process may take it
        // before Prometheus binds it: then Prometheus exits at once, and we try another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(targets, interval).await {
                Err(e) if e.kind() == ErrorKind::CommandFailed && attempt < 3 => {
                    tracing::warn!("retrying: {e}");
                }
                other => return other,
            }
        }
    }

    async fn start_once(targets: &[ScrapeTarget], interval: Duration) -> Result<Self> {
        let bin = prometheus_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("deploy-prometheus-")
            .tempdir()
            .map_err(|e| Error::io("create", "a temporary directory", e))?;
        let secs = interval.as_secs_f64();
        let mut config = format!(
            "global:\n  scrape_interval: {}ms\n  scrape_timeout: {}ms\n  evaluation_interval: {}ms\nscrape_configs:\n  - job_name: app\n    static_configs:\n",
            (secs * 1000.0) as u64,
            (secs * 1000.0) as u64,
            (secs * 1000.0) as u64
        );
        for t in targets {
            let _ = write!(
                config,
                "      - targets: ['{}']\n        labels:\n          target: '{}'\n",
                t.addr,
                t.id.replace('\'', "''")
            );
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)
            .map_err(|e| Error::io("write", config_path.display().to_string(), e))?;
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::io("create", log.display().to_string(), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Error::io("open", log.display().to_string(), e))?;
        let port = free_port()?;
        let child = std::process::Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::io("start", bin.display().to_string(), e))?;
        let mut server = Self {
            child: ChildGuard::new(child),
            port,
            log,
            dir,
        };
        server.wait_ready(Duration::from_secs(30)).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let http = http::client(Some(Duration::from_secs(1)), "start", "prometheus")?;
        let url = format!("{}/-/ready", self.url());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.child().try_wait() {
                return Err(Error::new(
                    ErrorKind::CommandFailed,
                    "start",
                    format!("prometheus on 127.0.0.1:{}", self.port),
                    format!("it exited with {status}: {}", self.log_tail()),
                ));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "start",
                    format!("prometheus on 127.0.0.1:{}", self.port),
                    format!("not ready within {limit:?}: {}", self.log_tail()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of Prometheus' log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The temporary directory holding the configuration, the log and the storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of this server.
    pub fn client(&self) -> PrometheusClient {
        // The URL is well formed.
        PrometheusClient::new(&self.url()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until `query` returns at least one non-NaN value, for at most `limit`.
    pub async fn wait_for_data(&self, query: &str, limit: Duration) -> Result<()> {
        let client = self.client();
        wait_until(
            &format!("data of `{query}` on {}", self.url()),
            limit,
            || async {
                let ready = matches!(client.query(query).await,
                    Ok(crate::QueryResult::Vector(v)) if v.iter().any(|s| !s.value.is_nan()));
                if !ready {
                    // Ask Prometheus about five times a second, not fifty.
                    tokio::time::sleep(Duration::from_millis(180)).await;
                }
                ready
            },
        )
        .await
    }

    /// Stop the server (TERM, then KILL) and wait until it has exited.
    pub fn stop(mut self) {
        self.child.stop();
    }
}

/// Read a `/metrics` page exactly as the scrape gate reads each scrape (the text format 0.0.4,
/// every series indexed by name and labels) and return the number of samples, or the error the
/// gate would report, naming the line: to check an exporter's page in your own tests, and for
/// the crate's parser benchmark.
pub fn parse_metrics_page(text: &str) -> Result<usize> {
    crate::scrape::Snapshot::parse("the page", text)
        .map(|s| s.len())
        .map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                "parse",
                "a metrics page",
                format!("not in the Prometheus text format: {e}"),
            )
        })
}

/// The upper bounds of the test app's latency histogram (the client libraries' defaults).
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
struct AppState {
    error_rate: f64,
    latency: Duration,
    jitter: f64,
    slow_fraction: f64,
    slow_latency: Duration,
    served: u64,
    statuses: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Whether request `n` is one of a `fraction` of requests, spread evenly: exactly
/// `floor(n * fraction)` of the first `n` are.
fn picked(n: u64, fraction: f64) -> bool {
    ((n + 1) as f64 * fraction).floor() > (n as f64 * fraction).floor()
}

impl AppState {
    fn serve(&mut self) -> (u16, Duration) {
        let n = self.served;
        self.served += 1;
        let status = if picked(n, self.error_rate) { 500 } else { 200 };
        let latency = if picked(n, self.slow_fraction) {
            self.slow_latency
        } else {
            // A deterministic spread in [1 - jitter, 1 + jitter) (golden-ratio sequence).
            let u = (n as f64 * 0.618_033_988_749_895).fract();
            self.latency
                .mul_f64((1.0 + self.jitter * (2.0 * u - 1.0)).max(0.0))
        };
        *self.statuses.entry(status).or_default() += 1;
        let secs = latency.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
        (status, latency)
    }

    fn exposition(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP http_requests_total Requests served, by status.\n");
        s.push_str("# TYPE http_requests_total counter\n");
        for (status, n) in &self.statuses {
            let _ = writeln!(s, "http_requests_total{{status=\"{status}\"}} {n}");
        }
        s.push_str("# HELP http_request_duration_seconds Request latency.\n");
        s.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(s, "http_request_duration_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(s, "http_request_duration_seconds_sum {}", self.sum);
        let _ = writeln!(s, "http_request_duration_seconds_count {}", self.count);
        s
    }
}

/// A small HTTP app on a free `127.0.0.1` port: `/metrics` in the Prometheus text format
/// (`http_requests_total{status}` counter, created on first use as client libraries do, and
/// the `http_request_duration_seconds` histogram), and every other path served with the error
/// rate and latency the test sets. Errors and slow requests are spread evenly and
/// deterministically (exactly 5 of every 100 requests at 5 %). The latency recorded is the one
/// the app waits before answering.
#[derive(Debug)]
pub struct TestApp {
    server: TestHttpServer,
    state: Arc<Mutex<AppState>>,
}

impl TestApp {
    /// Start serving: no errors, 10 ms latency with ±20 % spread.
    pub async fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(AppState {
            error_rate: 0.0,
            latency: Duration::from_millis(10),
            jitter: 0.2,
            slow_fraction: 0.0,
            slow_latency: Duration::ZERO,
            served: 0,
            statuses: BTreeMap::new(),
            buckets: [0; BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }));
        let shared = Arc::clone(&state);
        let server = TestHttpServer::start(move |req| {
            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if req.path == "/metrics" {
                return TestResponse::text(200, s.exposition())
                    .with_header("content-type", "text/plain; version=0.0.4");
            }
            let (status, latency) = s.serve();
            TestResponse::text(status, if status == 200 { "ok" } else { "error" })
                .with_delay(latency)
        })
        .await?;
        Ok(Self { server, state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer this fraction of requests (0 to 1) with HTTP 500 from now on.
    pub fn set_error_rate(&self, fraction: f64) {
        self.lock().error_rate = fraction.clamp(0.0, 1.0);
    }

    /// Serve requests in `latency` (± the spread) from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Spread latencies uniformly over `latency × (1 ± jitter)` (default 0.2).
    pub fn set_jitter(&self, jitter: f64) {
        self.lock().jitter = jitter.clamp(0.0, 1.0);
    }

    /// Serve this fraction of requests in `latency` instead, from now on.
    pub fn set_slow(&self, fraction: f64, latency: Duration) {
        let mut s = self.lock();
        s.slow_fraction = fraction.clamp(0.0, 1.0);
        s.slow_latency = latency;
    }

    /// Requests served (not counting `/metrics`).
    pub fn served(&self) -> u64 {
        self.lock().served
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.server.endpoint()
    }

    /// The URL of its metrics page.
    pub fn metrics_url(&self) -> String {
        self.server.url("/metrics")
    }

    /// Send `rps` requests per second to it in the background for at most `limit` (at most
    /// `rps × limit` requests), until the returned [`Load`] is stopped or dropped.
    pub fn load(&self, rps: u32, limit: Duration) -> Load {
        Load::start(self.server.url("/work"), rps, limit)
    }
}

/// Bounded background traffic to one URL on loopback; stops on [`stop`](Load::stop), on drop,
/// or at its time limit.
#[derive(Debug)]
pub struct Load {
    task: Option<tokio::task::JoinHandle<()>>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(url: String, rps: u32, limit: Duration) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (ok2, failed2) = (Arc::clone(&ok), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let http = http::client_builder().build().unwrap_or_default();
            let period = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
            let max = (f64::from(rps) * limit.as_secs_f64()).ceil() as u64;
            let mut ticker = tokio::time::interval(period);
            let mut inflight = tokio::task::JoinSet::new();
            for _ in 0..max {
                ticker.tick().await;
                // Keep the number of requests in flight bounded.
                while inflight.len() >= 256 {
                    inflight.join_next().await;
                }
                while inflight.try_join_next().is_some() {}
                let (http, url) = (http.clone(), url.clone());
                let (ok, failed) = (Arc::clone(&ok2), Arc::clone(&failed2));
                inflight.spawn(async move {
                    match http.get(&url).timeout(Duration::from_secs(30)).send().await {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
            while inflight.join_next().await.is_some() {}
        });
        Self {
            task: Some(task),
            ok,
            failed,
        }
    }

    /// `(successful, failed)` requests so far (HTTP errors count as failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stop sending and return the counts.
    pub async fn stop(mut self) -> (u64, u64) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let e = locate(
            None,
            Path::new("/nonexistent/prometheus"),
            Some("/nonexistent".into()),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("apt-get install prometheus"), "{e}");
        assert!(e.to_string().contains("scripts/install-servers.sh"), "{e}");
        let e = locate(Some("/nonexistent/p".into()), Path::new("/"), None).unwrap_err();
        assert!(
            e.to_string().contains("$PROMETHEUS_BIN is /nonexistent/p"),
            "{e}"
        );
    }

    #[test]
    fn pages_are_checked_as_the_gate_reads_them() {
        assert_eq!(parse_metrics_page("a{x=\"1,}\"} 1\nb 2\n").unwrap(), 2);
        let e = parse_metrics_page("a 1\na 2\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn picks_an_exact_even_fraction() {
        assert_eq!((0..100).filter(|n| picked(*n, 0.05)).count(), 5);
        assert_eq!((0..1000).filter(|n| picked(*n, 0.013)).count(), 13);
        assert_eq!((0..10).filter(|n| picked(*n, 0.0)).count(), 0);
        assert_eq!((0..10).filter(|n| picked(*n, 1.0)).count(), 10);
    }
}
