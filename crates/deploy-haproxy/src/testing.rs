//! A real HAProxy for tests, two slot servers that answer with their name, a keep-alive load
//! generator that counts which slot answered, and a single request held open to see how it
//! ends. Compiled under the `testing` feature.
//!
//! ```no_run
//! # async fn demo() -> deploy_core::Result<()> {
//! use deploy_haproxy::testing::{HaproxyFixture, Load, LoadConfig};
//! let (haproxy, _slots) = HaproxyFixture::blue_green().await?;
//! let load = Load::start(haproxy.frontend(), LoadConfig::new(4, 1_000), &["blue", "green"]);
//! let report = load.finish().await;
//! assert_eq!(report.failed, 0);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deploy_core::testing::process::{ChildGuard, free_ports};
use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{Error, ErrorKind, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::client::RuntimeClient;
use crate::sticky::StickyConfig;
use crate::transport::Socket;

const INSTALL_HINT: &str =
    "install it with `apt-get install haproxy` (or `bash scripts/install-servers.sh`)";

/// One server line of the fixture's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSpec {
    /// Server name (`blue`).
    pub name: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its weight in the config.
    pub weight: u32,
}

impl ServerSpec {
    /// A server line `server <name> <addr> weight <weight>`.
    pub fn new(name: impl Into<String>, addr: SocketAddr, weight: u32) -> Self {
        Self {
            name: name.into(),
            addr,
            weight,
        }
    }
}

/// What the fixture's generated config holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FixtureConfig {
    /// Backend name (`app`).
    pub backend: String,
    /// `balance` algorithm (`roundrobin`).
    pub balance: String,
    /// Its servers.
    pub servers: Vec<ServerSpec>,
    /// `option httpchk GET /health` with `check inter <this>` on every server; `None`: no checks.
    pub check_interval: Option<Duration>,
    /// `server-state-file` + `load-server-state-from-file global`.
    pub state_file: bool,
    /// `retry-on` of `defaults` (`conn-failure empty-response`); empty: no `retry-on` line.
    pub retry_on: String,
    /// `timeout client` of `defaults` (30 s).
    pub client_timeout: Duration,
    /// The haproxy binary; `None`: `HAPROXY_BIN`, then `/usr/sbin/haproxy`, ..., then `PATH`.
    pub binary: Option<PathBuf>,
    /// Sticky canary lines in the backend ([`StickyConfig::backend_lines`], `cookie <name>` on
    /// every server). Its `map` is replaced by `canary.map` in the fixture's temp dir, first
    /// holding `always <last server>` and `never <first server>`; see [`HaproxyFixture::sticky`].
    pub sticky: Option<StickyConfig>,
}

impl FixtureConfig {
    /// Backend `app` with `servers`, `balance roundrobin`, checks every 100 ms, a state file.
    pub fn new(servers: Vec<ServerSpec>) -> Self {
        Self {
            backend: "app".to_owned(),
            balance: "roundrobin".to_owned(),
            servers,
            check_interval: Some(Duration::from_millis(100)),
            state_file: true,
            retry_on: "conn-failure empty-response".to_owned(),
            client_timeout: Duration::from_secs(30),
            binary: None,
            sticky: None,
        }
    }

    /// With sticky canary lines (see [`FixtureConfig::sticky`]).
    pub fn with_sticky(mut self, sticky: StickyConfig) -> Self {
        self.sticky = Some(sticky);
        self
    }

    /// Without a state file (runtime changes are then lost on reload).
    pub fn without_state_file(mut self) -> Self {
        self.state_file = false;
        self
    }

    fn render(&self, paths: &Paths, ports: &Ports) -> String {
        let mut c = String::new();
        c.push_str("global\n");
        c.push_str(&format!(
            "    stats socket {} mode 600 level admin\n",
            paths.admin.display()
        ));
        c.push_str(&format!(
            "    stats socket ipv4@{} level admin\n",
            ports.tcp
        ));
        c.push_str(&format!(
            "    stats socket {} mode 600 level operator\n",
            paths.operator.display()
        ));
        c.push_str("    stats timeout 30s\n    maxconn 4096\n    hard-stop-after 10s\n");
        if self.state_file {
            c.push_str(&format!(
                "    server-state-file {}\n",
                paths.state.display()
            ));
        }
        c.push_str(&format!(
            "\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client {}ms\n    timeout server 30s\n    timeout http-keep-alive 30s\n    retries 3\n    option redispatch\n",
            self.client_timeout.as_millis().max(1)
        ));
        if !self.retry_on.is_empty() {
            c.push_str(&format!("    retry-on {}\n", self.retry_on));
        }
        if self.state_file {
            c.push_str("    load-server-state-from-file global\n");
        }
        c.push_str(&format!(
            "\nfrontend fe\n    bind {}\n    default_backend {}\n",
            ports.frontend, self.backend
        ));
        c.push_str(&format!(
            "\nbackend {}\n    balance {}\n",
            self.backend, self.balance
        ));
        if self.check_interval.is_some() {
            c.push_str("    option httpchk GET /health\n");
        }
        let sticky = self.sticky_at(paths);
        if let Some(sticky) = &sticky {
            let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
            for line in sticky.backend_lines(&names) {
                c.push_str(&format!("    {line}\n"));
            }
        }
        for s in &self.servers {
            c.push_str(&format!(
                "    server {} {} weight {}",
                s.name, s.addr, s.weight
            ));
            if let Some(i) = self.check_interval {
                c.push_str(&format!(" check inter {}ms", i.as_millis().max(1)));
            }
            if let Some(option) = sticky.as_ref().and_then(|k| k.server_option(&s.name)) {
                c.push_str(&format!(" {option}"));
            }
            c.push('\n');
        }
        c.push_str("\nbackend static\n    balance static-rr\n    server s1 127.0.0.1:9 weight 1\n");
        c
    }
}

impl FixtureConfig {
    fn sticky_at(&self, paths: &Paths) -> Option<StickyConfig> {
        self.sticky.clone().map(|mut s| {
            s.map = paths.map.clone();
            s
        })
    }

    fn map_contents(&self) -> String {
        let first = self.servers.first().map_or("", |s| s.name.as_str());
        let last = self.servers.last().map_or("", |s| s.name.as_str());
        StickyConfig::map_contents(last, first)
    }
}

#[derive(Debug, Clone)]
struct Paths {
    config: PathBuf,
    admin: PathBuf,
    operator: PathBuf,
    master: PathBuf,
    state: PathBuf,
    map: PathBuf,
    log: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    frontend: SocketAddr,
    tcp: SocketAddr,
}

fn haproxy_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HAPROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    for p in [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("haproxy");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(Error::new(
        ErrorKind::NotFound,
        "find",
        "the haproxy binary",
        format!("not in /usr/sbin, /usr/local/sbin or PATH (or HAPROXY_BIN); {INSTALL_HINT}"),
    ))
}

/// A real `haproxy` in master-worker mode with a generated config, on free loopback ports, with
/// its sockets in a temp dir. Killed (with its workers) on drop.
///
/// The config has frontend `fe` → the backend of [`FixtureConfig`], an admin unix socket, an
/// admin TCP socket, an `operator`-level socket (to test refusals), a master CLI socket, and a
/// `static-rr` backend `static` (to test the static-algorithm refusals).
pub struct HaproxyFixture {
    // Dropped first (fields drop in order): TERM to the master, which stops its workers.
    child: ChildGuard,
    paths: Paths,
    ports: Ports,
    config: FixtureConfig,
    // Dropped last: holds the sockets and the config.
    dir: tempfile::TempDir,
}

impl fmt::Debug for HaproxyFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaproxyFixture")
            .field("dir", &self.dir.path())
            .field("pid", &self.child.id())
            .field("frontend", &self.ports.frontend)
            .field("admin", &self.paths.admin)
            .finish()
    }
}

impl HaproxyFixture {
    /// Start haproxy with `config`; returns once its admin socket answers.
    pub async fn start(config: FixtureConfig) -> Result<Self> {
        let bin = match &config.binary {
            Some(b) if b.exists() => b.clone(),
            Some(b) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "find",
                    format!("the haproxy binary {}", b.display()),
                    format!("it does not exist; {INSTALL_HINT}"),
                ));
            }
            None => haproxy_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("deploy-haproxy-")
            .tempdir()
            .map_err(|e| Error::io("create a temp dir", "for haproxy", e))?;
        let d = dir.path();
        let paths = Paths {
            config: d.join("haproxy.cfg"),
            admin: d.join("admin.sock"),
            operator: d.join("operator.sock"),
            master: d.join("master.sock"),
            state: d.join("server-state"),
            map: d.join("canary.map"),
            log: d.join("haproxy.log"),
        };
        let [frontend, tcp] = free_ports::<2>()?;
        let ports = Ports { frontend, tcp };
        if config.sticky.is_some() {
            std::fs::write(&paths.map, config.map_contents())
                .map_err(|e| Error::io("write", paths.map.display().to_string(), e))?;
        }
        std::fs::write(&paths.config, config.render(&paths, &ports))
            .map_err(|e| Error::io("write", paths.config.display().to_string(), e))?;
        let log = std::fs::File::create(&paths.log)
            .map_err(|e| Error::io("create", paths.log.display().to_string(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("open", paths.log.display().to_string(), e))?;
        let child = std::process::Command::new(&bin)
            .arg("-W")
            .arg("-S")
            .arg(&paths.master)
            .arg("-f")
            .arg(&paths.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                Error::io("start haproxy", bin.display().to_string(), e)
                    .with_context("hint", INSTALL_HINT)
            })?;
        let mut fixture = Self {
            child: ChildGuard::new(child),
            paths,
            ports,
            config,
            dir,
        };
        fixture.wait_ready(None).await?;
        Ok(fixture)
    }

    /// Two [`Slot`]s `blue` (weight 100) and `green` (weight 0) behind backend `app`.
    pub async fn blue_green() -> Result<(Self, [Slot; 2])> {
        let blue = Slot::start("blue").await?;
        let green = Slot::start("green").await?;
        let config = FixtureConfig::new(vec![
            ServerSpec::new("blue", blue.addr(), 100),
            ServerSpec::new("green", green.addr(), 0),
        ]);
        Ok((Self::start(config).await?, [blue, green]))
    }

    /// Two [`Slot`]s as in [`blue_green`](Self::blue_green), with sticky canary lines: cookie
    /// `SRV`, header `X-Canary`, the map in the temp dir (`always green`, `never blue`).
    pub async fn blue_green_sticky() -> Result<(Self, [Slot; 2])> {
        let blue = Slot::start("blue").await?;
        let green = Slot::start("green").await?;
        let config = FixtureConfig::new(vec![
            ServerSpec::new("blue", blue.addr(), 100),
            ServerSpec::new("green", green.addr(), 0),
        ])
        .with_sticky(StickyConfig::new("SRV", "/canary.map"));
        Ok((Self::start(config).await?, [blue, green]))
    }

    /// The sticky settings the running config uses (its map in the temp dir), if it has them.
    pub fn sticky(&self) -> Option<StickyConfig> {
        self.config.sticky_at(&self.paths)
    }

    async fn wait_ready(&mut self, old_pid: Option<u32>) -> Result<u32> {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.child().try_wait() {
                return Err(Error::new(
                    ErrorKind::CommandFailed,
                    "start haproxy",
                    self.paths.config.display().to_string(),
                    format!("exited with {status}: {}", self.log_tail()),
                ));
            }
            if let Ok(info) = client.show_info().await
                && let Some(pid) = info.pid()
                && Some(pid) != old_pid
            {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "wait for haproxy",
                    self.paths.admin.display().to_string(),
                    format!("no (new) worker answered within 10 s: {}", self.log_tail()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.paths.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// The frontend's address (`bind` of `fe`).
    pub fn frontend(&self) -> SocketAddr {
        self.ports.frontend
    }

    /// The admin unix socket.
    pub fn admin_socket(&self) -> Socket {
        Socket::unix(&self.paths.admin)
    }

    /// The admin TCP socket (`ipv4@127.0.0.1:PORT`).
    pub fn tcp_socket(&self) -> Socket {
        Socket::tcp(self.ports.tcp)
    }

    /// A unix socket at level `operator` (below admin).
    pub fn operator_socket(&self) -> Socket {
        Socket::unix(&self.paths.operator)
    }

    /// A client of the admin unix socket.
    pub fn client(&self) -> RuntimeClient {
        RuntimeClient::new(self.admin_socket())
    }

    /// The `server-state-file` the config names (used only with [`FixtureConfig::state_file`]).
    pub fn state_file(&self) -> &Path {
        &self.paths.state
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.paths.config
    }

    /// The generated config.
    pub fn config(&self) -> &FixtureConfig {
        &self.config
    }

    /// The master process id.
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Reload through the master CLI (`reload`) and wait until a new worker answers on the admin
    /// socket. Returns how long that took.
    pub async fn reload(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let old = self.client().show_info().await?.pid();
        let master = self.paths.master.display().to_string();
        // The master may still be settling after a start or a reload: retry a little.
        let mut tries = 0;
        let mut s = loop {
            match tokio::net::UnixStream::connect(&self.paths.master).await {
                Ok(s) => break s,
                Err(_) if tries < 250 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(Error::io("connect to the master CLI", master, e)),
            }
        };
        s.write_all(b"reload\n")
            .await
            .map_err(|e| Error::io("send reload to", master.clone(), e))?;
        let mut sink = Vec::new();
        // The master answers nothing and closes; bound the wait anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        self.wait_ready(old).await?;
        Ok(started.elapsed())
    }

    /// The reload way: rewrite the config with these server weights (atomically: temp file +
    /// rename), then [`reload`](Self::reload).
    pub async fn rewrite_and_reload(&mut self, weights: &[(&str, u32)]) -> Result<Duration> {
        let started = Instant::now();
        for (name, w) in weights {
            if let Some(s) = self.config.servers.iter_mut().find(|s| s.name == *name) {
                s.weight = *w;
            }
        }
        let text = self.config.render(&self.paths, &self.ports);
        deploy_core::fs::write_atomic(&self.paths.config, text.as_bytes(), None)
            .map_err(|e| Error::io("write", self.paths.config.display().to_string(), e))?;
        self.reload().await?;
        Ok(started.elapsed())
    }
}

/// A slot server: answers every path with its name (`blue`), `/health` with 200 or 503, and
/// `/slow?ms=N` with its name after N ms.
pub struct Slot {
    name: String,
    healthy: Arc<AtomicBool>,
    server: TestHttpServer,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl Slot {
    /// Start a slot named `name` on a free loopback port.
    pub async fn start(name: &str) -> Result<Self> {
        let healthy = Arc::new(AtomicBool::new(true));
        let h = Arc::clone(&healthy);
        let body = name.to_owned();
        let server = TestHttpServer::start(move |req| match req.path.as_str() {
            "/health" if h.load(Ordering::SeqCst) => TestResponse::text(200, "ok"),
            "/health" => TestResponse::text(503, "down"),
            "/slow" => {
                let ms = req
                    .query
                    .as_deref()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                TestResponse::text(200, body.clone()).with_delay(Duration::from_millis(ms))
            }
            _ => TestResponse::text(200, body.clone()),
        })
        .await?;
        Ok(Self {
            name: name.to_owned(),
            healthy,
            server,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Make `/health` answer 200 (`true`) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests received so far (health checks included).
    pub fn requests(&self) -> u64 {
        self.server.requests()
    }
}

/// One HTTP/1.1 request on a connection of its own, sent at once and read until the connection
/// closes: a session held open on a slow path (`/slow?ms=30000`), to see how and when it ends.
#[derive(Debug)]
pub struct HeldRequest {
    task: tokio::task::JoinHandle<HeldOutcome>,
}

/// How a [`HeldRequest`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldOutcome {
    /// From sending the request to the connection's end.
    pub after: Duration,
    /// The status of the response, if one came (`502` from HAProxy for a cut request).
    pub status: Option<u16>,
    /// Everything received, as text.
    pub received: String,
    /// The read error, if the connection was reset rather than closed.
    pub error: Option<String>,
}

impl HeldRequest {
    /// Connect to `addr` and send `GET path`; the answer is read in the background.
    pub async fn send(addr: SocketAddr, path: &str) -> Result<Self> {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| Error::io("connect to", addr.to_string(), e))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Error::io("send a request to", addr.to_string(), e))?;
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut received = Vec::new();
            let error = stream
                .read_to_end(&mut received)
                .await
                .err()
                .map(|e| e.to_string());
            let received = String::from_utf8_lossy(&received).into_owned();
            let status = received
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok());
            HeldOutcome {
                after: started.elapsed(),
                status,
                received,
                error,
            }
        });
        Ok(Self { task })
    }

    /// Whether the connection has ended.
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Wait at most `limit` for the connection to end; `Timeout` if it is still open.
    pub async fn ended(self, limit: Duration) -> Result<HeldOutcome> {
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Other,
                "read",
                "a held request",
                "the reading task failed",
            )
            .with_source(e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "wait for the end of",
                "a held request",
                format!("still open after {limit:?}"),
            )),
        }
    }
}

/// How much load to send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadConfig {
    /// Keep-alive connections, each with one request in flight at a time.
    pub connections: usize,
    /// Requests in total (the load stops there).
    pub requests: u64,
    /// The load stops after this long in any case.
    pub max_duration: Duration,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// The path requested.
    pub path: String,
    /// Pause of each connection between its requests (zero: as fast as the server answers).
    pub think_time: Duration,
}

impl LoadConfig {
    /// `requests` over `connections`, at most 60 s, 5 s per request, path `/`, no think time.
    pub fn new(connections: usize, requests: u64) -> Self {
        Self {
            connections,
            requests,
            max_duration: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            path: "/".to_owned(),
            think_time: Duration::ZERO,
        }
    }
}

/// What a [`Load`] saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// 200 responses from an expected slot.
    pub ok: u64,
    /// Everything else: other statuses, unexpected bodies, transport errors, timeouts.
    pub failed: u64,
    /// 200 responses per slot.
    pub by_slot: BTreeMap<String, u64>,
    /// New connections opened after the first one of each worker (the server closed one).
    pub reconnects: u64,
    /// The first few failures, in words.
    pub errors: Vec<String>,
    /// How long the load ran.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct SlotCounter {
    name: String,
    served: AtomicU64,
    /// Nanoseconds since the load started of the first answer since [`Load::arm`]; `u64::MAX`
    /// while none came.
    first_ns: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    config: LoadConfig,
    slots: Vec<SlotCounter>,
    claimed: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    stop: AtomicBool,
    running: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 10 {
            e.push(why);
        }
    }
}

/// A bounded HTTP/1.1 keep-alive load on loopback, counting which slot answered each request.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    started: Instant,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    /// Start `config` against `addr`; a 200 whose body is one of `slots` counts as served by it.
    pub fn start(addr: SocketAddr, config: LoadConfig, slots: &[&str]) -> Self {
        let shared = Arc::new(Shared {
            addr,
            slots: slots
                .iter()
                .map(|s| SlotCounter {
                    name: (*s).to_owned(),
                    served: AtomicU64::new(0),
                    first_ns: AtomicU64::new(u64::MAX),
                })
                .collect(),
            claimed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            running: AtomicU64::new(0),
            errors: std::sync::Mutex::new(Vec::new()),
            config,
        });
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..shared.config.connections.max(1) {
            shared.running.fetch_add(1, Ordering::SeqCst);
            let s = Arc::clone(&shared);
            tasks.spawn(async move {
                worker(Arc::clone(&s), started).await;
                s.running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Self {
            shared,
            started,
            tasks,
        }
    }

    /// 200 responses from `slot` so far.
    pub fn served_by(&self, slot: &str) -> u64 {
        self.shared
            .slots
            .iter()
            .find(|c| c.name == slot)
            .map_or(0, |c| c.served.load(Ordering::SeqCst))
    }

    /// Start watching for the next answer from `slot` (see [`first_since_arm`](Self::first_since_arm)).
    pub fn arm(&self, slot: &str) {
        if let Some(c) = self.shared.slots.iter().find(|c| c.name == slot) {
            c.first_ns.store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// When the first 200 from `slot` since [`arm`](Self::arm) was received, if one was.
    pub fn first_since_arm(&self, slot: &str) -> Option<Instant> {
        let c = self.shared.slots.iter().find(|c| c.name == slot)?;
        match c.first_ns.load(Ordering::SeqCst) {
            u64::MAX => None,
            ns => Some(self.started + Duration::from_nanos(ns)),
        }
    }

    /// Requests completed so far (ok or failed).
    pub fn completed(&self) -> u64 {
        let ok: u64 = self
            .shared
            .slots
            .iter()
            .map(|c| c.served.load(Ordering::SeqCst))
            .sum();
        ok + self.shared.failed.load(Ordering::SeqCst)
    }

    /// Failures so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Whether every request was sent and answered (or the time ran out).
    pub fn is_finished(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst) == 0
    }

    /// Stop sending (requests in flight complete).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Wait for the load to end and report.
    pub async fn finish(mut self) -> LoadReport {
        while self.tasks.join_next().await.is_some() {}
        let s = &self.shared;
        let by_slot: BTreeMap<String, u64> = s
            .slots
            .iter()
            .map(|c| (c.name.clone(), c.served.load(Ordering::SeqCst)))
            .collect();
        LoadReport {
            sent: s.sent.load(Ordering::SeqCst),
            ok: by_slot.values().sum(),
            failed: s.failed.load(Ordering::SeqCst),
            by_slot,
            reconnects: s.reconnects.load(Ordering::SeqCst),
            errors: s.errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::result::Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(shared: Arc<Shared>, started: Instant) {
    let cfg = &shared.config;
    let deadline = started + cfg.max_duration;
    let mut sender: Option<Sender> = None;
    let mut connected_once = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        if shared.claimed.fetch_add(1, Ordering::SeqCst) >= cfg.requests {
            return;
        }
        if !cfg.think_time.is_zero() {
            tokio::time::sleep(cfg.think_time).await;
        }
        // A connection the server closed after its last answer (Connection: close, a reload's
        // soft stop) is replaced before sending: that is not a failed request.
        let usable = match sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            match connect(shared.addr).await {
                Ok(s) => {
                    if connected_once {
                        shared.reconnects.fetch_add(1, Ordering::SeqCst);
                    }
                    connected_once = true;
                    sender = Some(s);
                }
                Err(e) => {
                    shared.sent.fetch_add(1, Ordering::SeqCst);
                    shared.fail(e);
                    sender = None;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let req = match hyper::Request::get(cfg.path.as_str())
            .header(hyper::header::HOST, shared.addr.to_string())
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => {
                shared.fail(format!("build request: {e}"));
                return;
            }
        };
        shared.sent.fetch_add(1, Ordering::SeqCst);
        let answer = tokio::time::timeout(cfg.request_timeout, async {
            let resp = s
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("read body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await;
        match answer {
            Ok(Ok((200, body))) => {
                match shared
                    .slots
                    .iter()
                    .find(|c| c.name.as_bytes() == body.as_ref())
                {
                    Some(c) => {
                        c.served.fetch_add(1, Ordering::SeqCst);
                        let ns =
                            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
                        let _ = c.first_ns.compare_exchange(
                            u64::MAX,
                            ns,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                    }
                    None => shared.fail(format!(
                        "200 from an unexpected server: {:?}",
                        String::from_utf8_lossy(&body)
                    )),
                }
            }
            Ok(Ok((status, body))) => {
                shared.fail(format!(
                    "HTTP {status}: {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(80)])
                ));
            }
            Ok(Err(e)) => {
                shared.fail(e);
                sender = None;
            }
            Err(_) => {
                shared.fail(format!("no answer within {:?}", cfg.request_timeout));
                sender = None;
            }
        }
    }
}

/// One user of a frontend with a cookie jar: sends back the cookie of the last answer that set
/// one, and remembers which slot answered each of its requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CookieUser {
    /// `name=value` of the cookie it holds, if an answer set one.
    pub cookie: Option<String>,
    /// The slot (body) of each answer, in order.
    pub seen: Vec<String>,
}

impl CookieUser {
    /// A user who has never visited.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots that answered it, each once.
    pub fn versions(&self) -> std::collections::BTreeSet<&str> {
        self.seen.iter().map(String::as_str).collect()
    }

    /// The slot of its last answer.
    pub fn last(&self) -> Option<&str> {
        self.seen.last().map(String::as_str)
    }
}

/// One request for each of `users` (in parallel over `connections` keep-alive connections to
/// `addr`, users sharing a connection as users behind one proxy do), with the user's cookie and
/// `header` if given. Any answer other than a 200 with a body is an error naming the user.
pub async fn visit(
    addr: SocketAddr,
    users: &mut [CookieUser],
    header: Option<(&str, &str)>,
    connections: usize,
) -> Result<()> {
    let header = header.map(|(n, v)| (n.to_owned(), v.to_owned()));
    let per = users.len().div_ceil(connections.max(1)).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (chunk, part) in users.chunks(per).enumerate() {
        let mut part = part.to_vec();
        let header = header.clone();
        tasks.spawn(async move {
            let mut sender = connect(addr).await?;
            for (i, user) in part.iter_mut().enumerate() {
                let who = chunk * per + i;
                if sender.ready().await.is_err() {
                    sender = connect(addr).await?;
                }
                let mut req =
                    hyper::Request::get("/").header(hyper::header::HOST, addr.to_string());
                if let Some(c) = &user.cookie {
                    req = req.header(hyper::header::COOKIE, c.as_str());
                }
                if let Some((n, v)) = &header {
                    req = req.header(n.as_str(), v.as_str());
                }
                let req = req
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| format!("user {who}: build request: {e}"))?;
                let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
                    .await
                    .map_err(|_| format!("user {who}: no answer within 5 s"))?
                    .map_err(|e| format!("user {who}: send: {e}"))?;
                let status = resp.status().as_u16();
                if let Some(set) = resp.headers().get(hyper::header::SET_COOKIE) {
                    let set = set.to_str().unwrap_or("");
                    user.cookie = Some(set.split(';').next().unwrap_or("").trim().to_owned());
                }
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("user {who}: read body: {e}"))?
                    .to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                if status != 200 || body.is_empty() {
                    return Err(format!("user {who}: HTTP {status} {body:?}"));
                }
                user.seen.push(body);
            }
            Ok::<_, String>((chunk, part))
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok((chunk, part))) => {
                users[chunk * per..chunk * per + part.len()].clone_from_slice(&part);
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("a visiting task failed: {e}")),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Protocol,
        "visit",
        format!("frontend {addr}"),
        failures.join("; "),
    ))
}
