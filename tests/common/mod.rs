//! Helpers shared by the root end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use deploy::testing::{TestHttpServer, TestResponse};

pub mod fleet;

/// An HTTP server answering `/health` with the version under `<root>/current`, or 503 when that
/// release has a `BROKEN` file or nothing is current.
pub async fn slot_server(root: PathBuf) -> TestHttpServer {
    TestHttpServer::start(move |_req| {
        let current = root.join("current");
        match std::fs::read_to_string(current.join("VERSION")) {
            Ok(v) if !current.join("BROKEN").exists() => TestResponse::json(
                200,
                &serde_json::json!({"status": "ok", "version": v.trim()}),
            ),
            _ => TestResponse::json(503, &serde_json::json!({"status": "down"})),
        }
    })
    .await
    .unwrap()
}

/// A release directory for `version` under `dir` (with a `BROKEN` marker when `broken`).
pub fn artifact(dir: &Path, version: &str, broken: bool) -> PathBuf {
    let d = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("VERSION"), version).unwrap();
    if broken {
        std::fs::write(d.join("BROKEN"), "").unwrap();
    }
    d
}

/// The body of `GET url`.
pub async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// A release directory for `version` under `dir` holding `app.conf` (`version=`,
/// `error_rate=`) as [`release_app`] reads it.
pub fn app_release(dir: &Path, version: &str, error_rate: f64) -> PathBuf {
    let d = dir.join(format!("app-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("app.conf"),
        format!("version={version}\nerror_rate={error_rate}\n"),
    )
    .unwrap();
    std::fs::write(d.join("VERSION"), version).unwrap();
    d
}

/// What a [`release_app`] has answered on its application paths (not `/health`, `/metrics`).
#[derive(Debug, Default)]
pub struct AppCounters {
    /// Requests answered 200.
    pub ok: std::sync::atomic::AtomicU64,
    /// Requests answered 500 (injected errors).
    pub errors: std::sync::atomic::AtomicU64,
}

/// An application server deployed into a release root: it reads `<root>/current/app.conf` on
/// every request and answers `/health` with `{"status":"ok","version":...}` (503 when nothing
/// is current), `/metrics` with `http_requests_total{status}` in the Prometheus text format, and
/// every other path with the version as the body — or, for a deterministic `error_rate` share
/// of requests (exactly 1 in 20 at 0.05), with a 500.
pub struct ReleaseApp {
    /// The server.
    pub server: TestHttpServer,
    /// What it answered.
    pub counters: std::sync::Arc<AppCounters>,
}

impl ReleaseApp {
    /// Injected errors answered so far.
    pub fn errors(&self) -> u64 {
        self.counters
            .errors
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// 200s answered so far on application paths.
    pub fn ok(&self) -> u64 {
        self.counters.ok.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn read_conf(root: &Path) -> Option<(String, f64, bool)> {
    let text = std::fs::read_to_string(root.join("current/app.conf")).ok()?;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut version = None;
    let mut rate = 0.0;
    let mut broken = false;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("version", v)) => version = Some(v.trim().to_owned()),
            Some(("error_rate", r)) => rate = r.trim().parse().unwrap_or(0.0),
            Some(("broken_on", hosts)) => broken = hosts.split(',').any(|h| h.trim() == name),
            _ => {}
        }
    }
    Some((version?, rate, broken))
}

/// [`app_release`] of a release that is broken on the hosts `broken_on` (release roots of these
/// names): there its `/health` answers 503 with `{"status":"broken","version":...}`.
pub fn app_release_broken_on(dir: &Path, version: &str, broken_on: &[&str]) -> PathBuf {
    let d = app_release(dir, version, 0.0);
    std::fs::write(
        d.join("app.conf"),
        format!(
            "version={version}\nerror_rate=0\nbroken_on={}\n",
            broken_on.join(",")
        ),
    )
    .unwrap();
    d
}

/// Start a [`ReleaseApp`] for the release root `root`.
pub async fn release_app(root: PathBuf) -> ReleaseApp {
    use std::sync::atomic::Ordering;
    let counters = std::sync::Arc::new(AppCounters::default());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counters.clone();
    let server = TestHttpServer::start(move |req| {
        let conf = read_conf(&root);
        match (req.path.as_str(), conf) {
            ("/health", Some((v, _, true))) => {
                TestResponse::json(503, &serde_json::json!({"status": "broken", "version": v}))
            }
            ("/health", Some((v, _, false))) => {
                TestResponse::json(200, &serde_json::json!({"status": "ok", "version": v}))
            }
            ("/health", None) => TestResponse::json(503, &serde_json::json!({"status": "down"})),
            ("/metrics", _) => TestResponse::text(
                200,
                format!(
                    "# TYPE http_requests_total counter\n\
                     http_requests_total{{status=\"200\"}} {}\n\
                     http_requests_total{{status=\"500\"}} {}\n",
                    c.ok.load(Ordering::SeqCst),
                    c.errors.load(Ordering::SeqCst)
                ),
            ),
            (_, None) => TestResponse::text(503, "no release"),
            (_, Some((v, rate, _))) => {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let fails = (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor();
                if fails {
                    c.errors.fetch_add(1, Ordering::SeqCst);
                    TestResponse::text(500, "injected error")
                } else {
                    c.ok.fetch_add(1, Ordering::SeqCst);
                    TestResponse::text(200, v)
                }
            }
        }
    })
    .await
    .unwrap();
    ReleaseApp { server, counters }
}

/// The current weights of `servers` in backend `app`, read from haproxy.
pub async fn haproxy_weights(
    h: &deploy::haproxy::testing::HaproxyFixture,
    servers: &[&str],
) -> Vec<u32> {
    let client = h.client();
    let mut out = Vec::new();
    for s in servers {
        out.push(client.get_weight("app", s).await.unwrap().0);
    }
    out
}

/// Put every target of `engine` on `release` (prepare + activate), as a previous deploy would.
pub async fn install(engine: &deploy::Engine, release: &deploy::Release) {
    for t in engine.environment().targets() {
        t.prepare(release).await.unwrap();
        t.activate(&release.version).await.unwrap();
    }
}

/// A TOML string literal for a path.
pub fn q(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// Wait (at most 10 s) until haproxy's checks see every server of `servers` in backend `app` UP.
pub async fn haproxy_wait_up(h: &deploy::haproxy::testing::HaproxyFixture, servers: &[&str]) {
    let client = h.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut up = true;
        for s in servers {
            let st = client.server_stat("app", s).await.unwrap();
            up &= st.status.starts_with("UP");
        }
        if up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy does not see {servers:?} UP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two release-directory slots (`blue` live with weight 100, `green` idle) behind haproxy.
pub async fn two_slots(
    dir: &Path,
) -> (
    deploy::haproxy::testing::HaproxyFixture,
    ReleaseApp,
    ReleaseApp,
) {
    let blue = release_app(dir.join("blue")).await;
    let green = release_app(dir.join("green")).await;
    let h = deploy::haproxy::testing::HaproxyFixture::start(
        deploy::haproxy::testing::FixtureConfig::new(vec![
            deploy::haproxy::testing::ServerSpec::new("blue", blue.server.addr(), 100),
            deploy::haproxy::testing::ServerSpec::new("green", green.server.addr(), 0),
        ]),
    )
    .await
    .unwrap();
    (h, blue, green)
}

/// The plan file for the two slots behind `h`, with `strategy` and `version`.
pub fn plan_text(
    dir: &Path,
    h: &deploy::haproxy::testing::HaproxyFixture,
    blue: &ReleaseApp,
    green: &ReleaseApp,
    version: &str,
    strategy: &str,
) -> String {
    format!(
        r#"
[environment]
name = "e2e"
state_dir = {state}

[release]
version = "{version}"
artifact = {artifact}

[strategy]
{strategy}

[policies.probe]
interval = "50ms"
deadline = "5s"

[policies.analysis]
interval = "400ms"

[[targets]]
id = "blue"
root = {blue_root}
endpoint = "{blue_url}"

[[targets]]
id = "green"
root = {green_root}
endpoint = "{green_url}"

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"
state_file = {state_file}

[[gates]]
kind = "scrape"
preset = "error_rate"
max_error_rate = 0.01
window = "300ms"

[[smoke]]
name = "health says ok"
path = "/health"
body_contains = ['"status":"ok"', '"version":"{version}"']

"#,
        state = q(&dir.join("state")),
        artifact = q(&dir.join(format!("app-{version}"))),
        blue_root = q(&dir.join("blue")),
        green_root = q(&dir.join("green")),
        blue_url = blue.server.url(""),
        green_url = green.server.url(""),
        socket = q(Path::new(&h.admin_socket().to_string())),
        state_file = q(h.state_file()),
    )
}

/// Health of `app`: the version it reports.
pub async fn version_of(app: &ReleaseApp) -> String {
    let body = get(&app.server.url("/health")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap_or_default().to_owned()
}

/// An example binary built by `cargo test` (`target/<profile>/examples/<name>`).
pub fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is not built (`cargo test --workspace` builds every example; alone: \
         `cargo build -p deploy --examples`)",
        bin.display()
    );
    bin
}

/// The `deploy` binary of `crates/deploy-cli`, which Cargo builds for that crate's tests (this
/// module is shared with the root tests, which have no such binary).
pub fn deploy_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_deploy") {
        Some(path) => PathBuf::from(path),
        None => panic!("the deploy binary is built only for the tests of crates/deploy-cli"),
    }
}

/// `deploy <args> <plan>` to the end: its exit code and its output (stdout, then stderr).
pub fn deploy_cli(args: &[&str], plan: &Path) -> (i32, String) {
    let out = std::process::Command::new(deploy_bin())
        .args(args)
        .arg(plan)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `deploy <args> <plan>` in the background, its output in `log`; killed on drop.
pub fn spawn_deploy(args: &[&str], plan: &Path, log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        std::process::Command::new(deploy_bin())
            .args(args)
            .arg(plan)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A child process killed on drop (a failed assertion must not leave it running).
pub struct Killed(pub std::process::Child);

impl Killed {
    /// Wait at most `limit` for it to exit; its exit code.
    pub async fn exit_code(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not end within {limit:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo application (`examples/demo_app.rs`) serving the release under the link
/// `<root>/current`, on a free loopback port; killed on drop.
pub struct DemoApp {
    /// The process.
    pub process: Killed,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its standard output, kept open so that it never writes into a closed pipe.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl DemoApp {
    /// Start it for the release root `root`.
    pub fn start(root: &Path) -> Self {
        use std::io::BufRead;
        std::fs::create_dir_all(root).unwrap();
        let mut child = std::process::Command::new(example("demo_app"))
            .arg("--release-dir")
            .arg(root.join("current"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
        // "demo_app listening on http://127.0.0.1:PORT (version …)"
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("demo_app said: {first}"));
        Self {
            process: Killed(child),
            addr,
            _stdout: stdout,
        }
    }

    /// A URL on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Whether `report` (a run's JSON report) matches `schemas/report-v1.schema.json`
/// (`deploy::REPORT_SCHEMA_V1`); the validator's message otherwise.
pub fn validate_report(report: &serde_json::Value) -> Result<(), String> {
    let schema: serde_json::Value =
        serde_json::from_str(deploy::REPORT_SCHEMA_V1).map_err(|e| e.to_string())?;
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = "urn:deploy:report:v1";
    compiler
        .add_resource(url, schema)
        .map_err(|e| e.to_string())?;
    let index = compiler
        .compile(url, &mut schemas)
        .map_err(|e| format!("the schema does not compile: {e:#}"))?;
    schemas
        .validate(report, index)
        .map_err(|e| format!("{e:#}"))
}

/// Every report kept under the state directory `state` validates against the schema; how
/// many there are.
pub fn reports_match_the_schema(state: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(state.join("runs")).unwrap().flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".report.json") {
            let value: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            if let Err(e) = validate_report(&value) {
                panic!("{} does not match the report schema: {e}", path.display());
            }
            n += 1;
        }
    }
    n
}
