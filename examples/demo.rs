//! The demo: two real deployments on one machine, everything on loopback in a temporary
//! directory.
//!
//! - two slots, `blue` and `green`: release directories (`releases/<version>/app.conf` and an
//!   atomic `current` link, [`ReleaseDirTarget`] over [`LocalHost`]) each served by the demo's
//!   application running as a child process (`demo --app DIR`, see `examples/demo/app.rs`);
//! - a real HAProxy in front of them (blue 100, green 0), switched through its Runtime API;
//! - a real Prometheus scraping both slots every second, labelling them `target="blue|green"`;
//! - a real PostgreSQL with the migrations of `examples/demo/migrations` (`V1` applied first);
//! - a bounded load generator sending requests through HAProxy during each deploy.
//!
//! Then: (1) 2.0.0 blue-green with the additive migration `V2` (backup first) and the PromQL
//! gates `error_rate_below(0.01)` and `p99_latency_below(2s)` during the bake: promoted;
//! (2) 3.0.0, which answers 500 to 5 % of its requests, as a canary at 20 %: the error-rate gate
//! fails and the engine rolls back. It prints the engine's events, the requests served and
//! failed during each deploy (the canary's injected 500s counted apart), the outcome of each
//! deploy and where its reports are (JSON, and an HTML page next to each).
//!
//! ```text
//! cargo run --example demo             # exit 0 when 2.0.0 is promoted and 3.0.0 rolled back
//! cargo run --example demo -- --keep   # keep the temporary directory (reports, releases)
//! cargo run --example demo -- --bake 30s --analysis 60s   # a longer bake and canary analysis
//! ```
//!
//! It takes about 20 s (most of it the 10 s bake; the canary is caught at its first
//! measurement, 2 s in). The gates look at a 5 s window, measured every 2 s.
//!
//! Ctrl-C cancels the deploy under way (the engine rolls back) and stops everything. The demo
//! runs its work in a child process of its own process group, so that the terminal's Ctrl-C
//! reaches only the demo, which forwards it: HAProxy, Prometheus and PostgreSQL stay up until
//! the rollback is done, then are stopped.

#[path = "demo/app.rs"]
mod app;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use deploy::haproxy::HaproxySwitch;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};
use deploy::postgres::PgMigrationRunner;
use deploy::postgres::testing::PgServer;
use deploy::prometheus::testing::{PrometheusServer, ScrapeTarget};
use deploy::prometheus::{HttpMetrics, PromQlGate};
use deploy_core::{
    CanaryStep, Endpoint, Engine, Environment, HttpProbe, LocalHost, MigrationRunner, PlanOptions,
    Release, ReleaseDirTarget, Strategy, Target, TargetId, TrafficSwitch, VerdictKind, Version,
};
use deploy_core::{Outcome, Policies, Report};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Blue-green then canary deploys through real HAProxy, Prometheus and PostgreSQL")]
struct Args {
    /// Keep the temporary directory (releases, JSON reports, journals, backups).
    #[arg(long)]
    keep: bool,
    /// How long the blue-green deploy bakes with the gates after the switch (at least 5 s, the
    /// gates' window).
    #[arg(long, default_value = "10s", value_parser = humantime_parse)]
    bake: Duration,
    /// How long the canary's analysis at 20 % lasts (the gate fails it long before).
    #[arg(long, default_value = "20s", value_parser = humantime_parse)]
    analysis: Duration,
    /// Internal: do the work (the parent forwards Ctrl-C to it).
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: serve the application of the release under this link.
    #[arg(long, hide = true, value_name = "DIR")]
    app: Option<PathBuf>,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = args.app {
        return match app::serve(dir).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo app: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.worker {
        return supervise().await;
    }
    if args.bake < Duration::from_secs(5) {
        eprintln!("demo: --bake must be at least 5s (the gates' window)");
        return ExitCode::FAILURE;
    }
    match run(&args).await {
        Ok(true) => {
            println!("\ndemo: as scripted (2.0.0 promoted, 3.0.0 rolled back by its gate)");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\ndemo: NOT as scripted (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run this binary with `--worker` in a process group of its own and forward Ctrl-C to it
/// alone, so that the servers it starts do not receive the terminal's SIGINT.
async fn supervise() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("demo: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match tokio::process::Command::new(exe)
        .arg("--worker")
        .args(std::env::args_os().skip(1))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("demo: cannot start its worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = child.id();
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status.ok().and_then(|s| s.code()) {
                    Some(0) => ExitCode::SUCCESS,
                    Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                    None => ExitCode::FAILURE,
                };
            }
            Ok(()) = tokio::signal::ctrl_c() => {
                eprintln!("\nCtrl-C: cancelling the deploy under way (the engine rolls back), then stopping everything");
                if let Some(pid) = pid {
                    // Only the worker we started, by its id.
                    let _ = deploy::testing::process::signal(pid, deploy::testing::process::Signal::Int);
                }
            }
        }
    }
}

/// Users who keep HAProxy's cookie, visiting one after another in rounds during a deploy (at
/// most 200 rounds, until stopped), `arriving` new ones each round up to `users`: a sticky
/// canary places new users by the weights, promises that each then sees one version until the
/// canary ends, and that the rollback brings back those it placed on the canary.
struct Cohort {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Vec<String>>>,
}

/// What the cohort's users saw: per user, the versions that answered, each change kept.
struct CohortSeen(Vec<Vec<String>>);

impl Cohort {
    fn start(frontend: SocketAddr, users: usize, arriving: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen: Vec<Vec<String>> = Vec::new();
            let Ok(client) = deploy::http::client_builder()
                .timeout(Duration::from_secs(5))
                .build()
            else {
                return seen;
            };
            let mut cookies: Vec<Option<String>> = Vec::new();
            for _ in 0..200 {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let now = (cookies.len() + arriving).min(users);
                cookies.resize(now, None);
                seen.resize(now, Vec::new());
                for (user, cookie) in cookies.iter_mut().enumerate() {
                    let mut req = client.get(format!("http://{frontend}/"));
                    if let Some(c) = cookie.as_deref() {
                        req = req.header("cookie", c);
                    }
                    let Ok(resp) = req.send().await else { continue };
                    if let Some(set) = resp
                        .headers()
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                    {
                        *cookie = Some(set.split(';').next().unwrap_or("").trim().to_owned());
                    }
                    // "hello from 2.0.0" or "injected error from 3.0.0".
                    let Ok(body) = resp.text().await else {
                        continue;
                    };
                    if let Some(v) = body.split_whitespace().last()
                        && seen[user].last().map(String::as_str) != Some(v)
                    {
                        seen[user].push(v.to_owned());
                    }
                }
            }
            seen
        });
        Self { stop, task }
    }

    async fn finish(self) -> CohortSeen {
        self.stop.store(true, Ordering::Relaxed);
        CohortSeen(self.task.await.unwrap_or_default())
    }
}

impl CohortSeen {
    /// Each user saw one version, or was placed on the `canary` and moved once, back to
    /// `stable` (the rollback): no one placed on the stable version was moved to the canary.
    fn kept_their_version(&self, canary: &str, stable: &str) -> bool {
        self.0.iter().all(|v| match v.as_slice() {
            [] | [_] => true,
            [from, to] => from == canary && to == stable,
            _ => false,
        })
    }
}

impl std::fmt::Display for CohortSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut only: BTreeMap<&str, usize> = BTreeMap::new();
        let mut moved: BTreeMap<String, usize> = BTreeMap::new();
        let mut more = 0;
        for v in &self.0 {
            match v.as_slice() {
                [] => {}
                [one] => *only.entry(one.as_str()).or_default() += 1,
                [from, to] => *moved.entry(format!("{from} → {to}")).or_default() += 1,
                _ => more += 1,
            }
        }
        let only = only
            .iter()
            .map(|(v, n)| format!("{n} only {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let moved = moved
            .iter()
            .map(|(v, n)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "{} distinct clients keeping their cookie saw: {only}; moved once: {}; \
             moved back and forth: {more}",
            self.0.len(),
            if moved.is_empty() {
                "none".to_owned()
            } else {
                moved
            }
        )
    }
}

/// One slot's application, a child process killed on drop.
struct AppProcess {
    child: tokio::process::Child,
    // Kept open: the child printed its address on it.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    addr: SocketAddr,
}

async fn start_app(current: &Path) -> Result<AppProcess, BoxError> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--app")
        .arg(current)
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "the demo app did not start within 10 s")??
        .ok_or("the demo app exited at start")?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line from the demo app: {line}"))?
        .parse()?;
    Ok(AppProcess {
        child,
        _stdout: lines,
        addr,
    })
}

/// A release: a directory with the application's `app.conf`.
fn artifact(dir: &Path, version: &str, error_rate: f64) -> std::io::Result<PathBuf> {
    let d = dir.join("builds").join(version);
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("app.conf"),
        format!("version={version}\nerror_rate={error_rate}\nlatency_ms=2\n"),
    )?;
    Ok(d)
}

const MIGRATIONS: [(&str, &str); 2] = [
    (
        "V1__orders.sql",
        include_str!("demo/migrations/V1__orders.sql"),
    ),
    (
        "V2__orders_note.sql",
        include_str!("demo/migrations/V2__orders_note.sql"),
    ),
];

/// What the load generator saw.
#[derive(Debug, Default, Clone)]
struct LoadCounts {
    /// 200 answers, by the version that served them (header `x-version`).
    ok: BTreeMap<String, u64>,
    /// 500 answers that are the canary's injected errors (`injected error from …`).
    injected: u64,
    /// Everything else: other statuses, connection errors, timeouts.
    failed: u64,
    /// The first few failures, in words.
    errors: Vec<String>,
}

impl LoadCounts {
    fn served(&self) -> u64 {
        self.ok.values().sum()
    }
}

/// A bounded load through HAProxy: `workers` keep-alive clients, one request in flight each,
/// a short pause between requests, at most `max_requests` and until stopped.
struct LoadGen {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<LoadCounts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadGen {
    fn start(frontend: SocketAddr, workers: usize, max_requests: u64, max: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(LoadCounts::default()));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let deadline = Instant::now() + max;
        let url = format!("http://{frontend}/");
        let tasks = (0..workers)
            .map(|_| {
                let (stop, counts, sent, url) =
                    (stop.clone(), counts.clone(), sent.clone(), url.clone());
                tokio::spawn(async move {
                    let client = match deploy::http::client_builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                    {
                        Ok(c) => c,
                        Err(_) => return,
                    };
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::Relaxed) < max_requests
                    {
                        let result = async {
                            let resp = client.get(&url).send().await?;
                            let status = resp.status().as_u16();
                            let version = resp
                                .headers()
                                .get("x-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_owned();
                            let body = resp.text().await?;
                            Ok::<_, reqwest::Error>((status, version, body))
                        }
                        .await;
                        {
                            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                            match result {
                                Ok((200, version, _)) => *c.ok.entry(version).or_default() += 1,
                                Ok((500, _, body)) if body.starts_with("injected error") => {
                                    c.injected += 1;
                                }
                                other => {
                                    c.failed += 1;
                                    if c.errors.len() < 5 {
                                        c.errors.push(match other {
                                            Ok((status, _, body)) => {
                                                format!("HTTP {status}: {}", body.trim())
                                            }
                                            Err(e) => e.to_string(),
                                        });
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            tasks,
        }
    }

    async fn finish(self) -> LoadCounts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.clone()
    }
}

fn print_load(what: &str, c: &LoadCounts) {
    let by_version: Vec<String> = c.ok.iter().map(|(v, n)| format!("{v}: {n}")).collect();
    println!(
        "requests during {what}: {} served ({}), {} injected 500s from the canary, {} failed otherwise",
        c.served(),
        by_version.join(", "),
        c.injected,
        c.failed
    );
    for e in &c.errors {
        println!("  failure: {e}");
    }
}

/// The first gate verdict that was not a pass, in words.
fn failed_verdict(report: &Report) -> Option<String> {
    report
        .verdicts
        .iter()
        .find(|v| v.verdict.kind == VerdictKind::Fail)
        .map(|v| {
            format!(
                "gate {} [{}] failed: value {}, condition {}",
                v.gate,
                v.analysis,
                v.verdict.value.map_or("none".to_owned(), |x| {
                    deploy::units::quantity(x, v.verdict.unit)
                }),
                deploy::units::condition(&v.verdict.condition, v.verdict.unit)
            )
        })
}

async fn served_now(frontend: SocketAddr) -> String {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        match reqwest::get(format!("http://{frontend}/")).await {
            Ok(r) => {
                let v = r
                    .headers()
                    .get("x-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                seen.insert(format!("{v} ({})", r.status().as_u16()));
            }
            Err(e) => {
                seen.insert(format!("error: {e}"));
            }
        }
    }
    seen.into_iter().collect::<Vec<_>>().join(", ")
}

/// The whole demo; `Ok(true)` when it went as scripted. Everything it starts is stopped when it
/// returns (the fixtures and the application processes are killed on drop).
async fn run(args: &Args) -> Result<bool, BoxError> {
    let started = Instant::now();
    // SIGINT (the parent forwards Ctrl-C) cancels: during the set-up, at the next check; during
    // a deploy, the engine rolls back. Registered before anything starts, so that no signal
    // kills this process before it has stopped what it started.
    let cancel = CancellationToken::new();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if sigint.recv().await.is_some() {
            println!("demo: cancelled");
            on_signal.cancel();
        }
    });
    let check = |cancel: &CancellationToken| -> Result<(), BoxError> {
        if cancel.is_cancelled() {
            Err("cancelled during the set-up; everything started so far is stopped".into())
        } else {
            Ok(())
        }
    };
    let tmp = tempfile::Builder::new().prefix("deploy-demo-").tempdir()?;
    let work = tmp.path().to_owned();
    println!("demo: working in {}", work.display());
    let host = Arc::new(LocalHost::new());

    // Two slots on 1.0.0, each served by an application process following its `current` link.
    let v1 = Release::new(Version::new("1.0.0")?).with_artifact(artifact(&work, "1.0.0", 0.0)?);
    let mut slots = Vec::new();
    let mut apps = Vec::new();
    for name in ["blue", "green"] {
        check(&cancel)?;
        let root = work.join(name);
        std::fs::create_dir_all(&root)?;
        let app = start_app(&root.join("current")).await?;
        let target = ReleaseDirTarget::builder(
            TargetId::new(name)?,
            host.clone(),
            root,
            Endpoint::http("127.0.0.1", app.addr.port()),
        )
        .keep(3)
        .build()?;
        target.prepare(&v1).await?;
        target.activate(&v1.version).await?;
        println!(
            "slot {name}: application (pid {}) on {}, releases under {}",
            app.child.id().unwrap_or(0),
            app.addr,
            target.root().display()
        );
        slots.push(Arc::new(target));
        apps.push(app);
    }

    // Prometheus scraping both slots every second.
    let prometheus = PrometheusServer::start(&[
        ScrapeTarget::new("blue", apps[0].addr),
        ScrapeTarget::new("green", apps[1].addr),
    ])
    .await?;
    println!(
        "prometheus: {} scraping blue and green every 1 s",
        prometheus.url()
    );
    check(&cancel)?;

    // HAProxy in front: blue takes the traffic.
    // Sticky cohorts: a user placed on a version by HAProxy's cookie stays on it for the
    // canary's life; new users follow the weights (the lines: deploy-haproxy's README).
    let haproxy = HaproxyFixture::start(
        FixtureConfig::new(vec![
            ServerSpec::new("blue", apps[0].addr, 100),
            ServerSpec::new("green", apps[1].addr, 0),
        ])
        .with_sticky(deploy::haproxy::StickyConfig::new("SRV", "/canary.map")),
    )
    .await?;
    let frontend = haproxy.frontend();
    let switch = Arc::new(
        HaproxySwitch::builder("app")
            .socket(haproxy.admin_socket())
            .state_file(haproxy.state_file())
            .sticky(
                haproxy
                    .sticky()
                    .ok_or("the fixture has no sticky settings")?,
            )
            .build()?,
    );
    println!(
        "haproxy (pid {}): frontend http://{frontend}, weights {}",
        haproxy.pid().unwrap_or(0),
        switch.weights().await?
    );
    check(&cancel)?;

    // PostgreSQL with the schema 1.0.0 runs on (V1).
    let pg = PgServer::start().await?;
    let db = pg.create_database().await?;
    let migrations = work.join("migrations");
    std::fs::create_dir_all(&migrations)?;
    std::fs::write(migrations.join(MIGRATIONS[0].0), MIGRATIONS[0].1)?;
    let runner = Arc::new(
        PgMigrationRunner::builder(db.clone(), &migrations)
            .host(host.clone())
            .backup_dir(work.join("backups"))
            .build()?,
    );
    runner.migrate().await?;
    let schema = "SELECT coalesce(string_agg(version, ',' ORDER BY version), '') FROM schema_version WHERE success";
    println!(
        "postgres: port {}, database {} at schema version {}",
        pg.port(),
        db.dbname,
        pg.query(&db.dbname, schema).await?.trim()
    );

    check(&cancel)?;
    // Prometheus scrapes its targets a few seconds after it started.
    for slot in ["blue", "green"] {
        // Two scrapes of each slot, so that the gates' rates have data from the first look.
        let query = format!("sum(rate(http_requests_total{{target=\"{slot}\"}}[5s]))");
        tokio::select! {
            waited = prometheus.wait_for_data(&query, Duration::from_secs(30)) => waited?,
            () = cancel.cancelled() => check(&cancel)?,
        }
    }

    check(&cancel)?;

    // The gates: the runbook's two alert rules (error rate < 1 %, p99 < 2 s), over a short
    // window for the demo.
    let metrics = HttpMetrics::default();
    // 5 s: at least two scrapes, and shorter than the bake, so that the canary's slot (the
    // blue-green's old slot, idle since the switch) is judged on the canary's requests alone.
    let window = Duration::from_secs(5);
    let error_rate = PromQlGate::error_rate_below(prometheus.client(), 0.01, &metrics)
        .window(window)
        .build()?;
    let p99 = PromQlGate::p99_latency_below(prometheus.client(), Duration::from_secs(2), &metrics)
        .window(window)
        .build()?;
    let env = Environment::builder("demo")
        .target(slots[0].clone())
        .target(slots[1].clone())
        .switch(switch.clone())
        .probe(Arc::new(
            HttpProbe::builder()
                .path("/health")
                .expect_field("status", "ok")
                .version_field("version")
                .build()?,
        ))
        .gate(Arc::new(error_rate))
        .gate(Arc::new(p99))
        .migrations(runner.clone())
        // Switched is not served until the front door says so: after every traffic step, 200
        // requests through HAProxy must show the versions the weights promise (± 15 %).
        .served_check(
            deploy::served::ServedCheck::json_field(format!("http://{frontend}/health"), "version")
                .with_requests(200)
                .with_tolerance(0.15),
        )
        .build()?;
    let mut policies = Policies::default();
    policies.probe.interval = Duration::from_millis(200);
    policies.probe.deadline = Duration::from_secs(10);
    policies.analysis.interval = Duration::from_secs(2);
    // The first measurement after a switch may come before Prometheus scraped the new traffic.
    policies.analysis.inconclusive_limit = 4;
    policies.deadline = Some(Duration::from_secs(120));
    let state_dir = work.join("state");
    let engine = Engine::new(env)
        .with_policies(policies)
        .with_state_dir(&state_dir);
    // The run as the `deploy` command line shows it: a line per step, verdicts rounded with
    // their unit, bars for the waits on a terminal, and a summary after each deploy.
    let live = deploy::console::Live::new(
        None,
        std::io::stdout().is_terminal(),
        deploy::console::Times::of(&engine),
    );
    let engine = engine.with_observer(Arc::new(live));

    let mut as_scripted = true;
    let mut reports = Vec::new();

    // (1) 2.0.0 blue-green with the additive migration V2 and the gates during the bake.
    println!("\n=== deploy 2.0.0 blue-green (migration V2, gates error-rate < 1 %, p99 < 2 s) ===");
    std::fs::write(migrations.join(MIGRATIONS[1].0), MIGRATIONS[1].1)?;
    let v2 = Release::new(Version::new("2.0.0")?).with_artifact(artifact(&work, "2.0.0", 0.0)?);
    let load = LoadGen::start(frontend, 4, 40_000, Duration::from_secs(90));
    let bg = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: args.bake,
    };
    let result = engine
        .deploy(&bg, &v2, &PlanOptions::default(), &cancel)
        .await;
    let counts = load.finish().await;
    let report = result?;
    print!("{}", deploy::console::summary(&report, None, &[]));
    println!();
    print_load("the 2.0.0 deploy", &counts);
    println!(
        "2.0.0: {}; weights {}; schema version {}; haproxy serves {}",
        report.outcome,
        switch.weights().await?,
        pg.query(&db.dbname, schema).await?.trim(),
        served_now(frontend).await
    );
    as_scripted &= report.outcome == Outcome::Promoted && counts.failed == 0;
    reports.push(report.clone());

    // (2) 3.0.0 errs on 5 % of its requests: a canary at 20 % that the error-rate gate stops.
    if as_scripted && !cancel.is_cancelled() {
        println!("\n=== deploy 3.0.0 canary (errors 5 % of the time; 20 %, analysis, 50 %) ===");
        let v3 =
            Release::new(Version::new("3.0.0")?).with_artifact(artifact(&work, "3.0.0", 0.05)?);
        let canary = Strategy::Canary {
            steps: vec![
                CanaryStep::SetWeight(20),
                CanaryStep::Analyze(args.analysis),
                CanaryStep::SetWeight(50),
                CanaryStep::Analyze(Duration::from_secs(10)),
            ],
        };
        let load = LoadGen::start(frontend, 4, 40_000, Duration::from_secs(90));
        let cohort = Cohort::start(frontend, 600, 30);
        let result = engine
            .deploy(&canary, &v3, &PlanOptions::default(), &cancel)
            .await;
        let counts = load.finish().await;
        let clients = cohort.finish().await;
        let report = result?;
        print!("{}", deploy::console::summary(&report, None, &[]));
        println!();
        print_load("the 3.0.0 canary", &counts);
        let verdict = failed_verdict(&report);
        println!(
            "3.0.0: {}{}; weights {}; haproxy serves {}",
            report.outcome,
            verdict
                .as_deref()
                .map_or(String::new(), |v| format!(" ({v})")),
            switch.weights().await?,
            served_now(frontend).await
        );
        println!("{clients}");
        as_scripted &= report.outcome == Outcome::RolledBack
            && verdict.is_some_and(|v| v.starts_with("gate error-rate"))
            && counts.failed == 0
            && clients.kept_their_version("3.0.0", "2.0.0");
        reports.push(report.clone());
    }

    println!();
    let runs = state_dir.join("runs");
    for report in &reports {
        let id = &report.run_id;
        println!(
            "report: {}",
            runs.join(format!("{id}.report.json")).display()
        );
        // The same report as one page for people, next to the JSON.
        let html = runs.join(format!("{id}.report.html"));
        match deploy::report_html::write(report, &html) {
            Ok(()) => println!("html report: {}", html.display()),
            Err(e) => println!("html report: could not write {}: {e}", html.display()),
        }
    }
    if args.keep {
        let kept = tmp.keep();
        println!("directory kept: {}", kept.display());
    } else {
        println!("(removed with the temporary directory; --keep keeps it)");
    }
    println!(
        "demo: stopping haproxy, prometheus, postgres and the applications ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
    if cancel.is_cancelled() {
        println!("demo: cancelled; the deploy under way was rolled back");
        return Ok(false);
    }
    Ok(as_scripted)
}
