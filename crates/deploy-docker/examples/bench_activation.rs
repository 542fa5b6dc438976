//! Benchmark: activation of a prepared container and rollback to the previous one with
//! `DockerTarget`, beside `docker-compose up -d` of the same service, on a private dockerd,
//! behind a real HAProxy carrying bounded load. Prints a markdown table (BENCHMARKS.md, "Docker").
//!
//! `cargo run -p deploy-docker --example bench_activation [rounds]` (default 20 rounds).
//!
//! Each round, on the slot `blue` (1.0.0 running, 2.0.<round> prepared = created):
//! - activation: `activate(2.0.<round>)` (docker stop of 1.0.0, docker start of 2.0.<round>)
//!   until the engine's probe (`DockerHealthProbe`, then the HTTP probe) says healthy: the new
//!   container's HEALTHCHECK healthy and `/health` answering 2.0.<round>;
//! - rollback: `activate(1.0.0)` (stop, then start of the kept 1.0.0 container) until the same
//!   probe says healthy: a container whose HEALTHCHECK passed when it last ran is judged by its
//!   answer while Docker still says `starting`.
//!
//! Then, for a compose project serving the same image (`network_mode: host`, `init: true`, the
//! same stop timeout): `docker-compose up -d` with the compose file's image set to the next
//! version (compose recreates the container), until healthy the same way; and back to 1.0.0.
//!
//! HAProxy's backend holds `steady` (1.0.0, never touched), `blue` and `compose`, each at weight
//! 100; a slot is drained (weight 0 through the `HaproxySwitch`, sessions 0) before each measured
//! change and given its weight back after it (outside the measured time), as the engine does.
//! The load (2 keep-alive connections, 2 ms apart, at most 200 000 requests or 600 s) counts
//! every failed request through HAProxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::process::free_ports;
use deploy_core::{
    DynHealthProbe, Endpoint, HealthProbe, HttpProbe, LocalHost, ProbeRequest, Release, Target,
    TargetId, TrafficSwitch, Weights,
};
use deploy_docker::DockerHealthProbe;
use deploy_docker::testing::{DockerdFixture, RecordingHost};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{Load, LoadConfig};

#[path = "../tests/e2e_support/mod.rs"]
mod support;
use support::{haproxy, health_body, served_version, slot, switch, v, wait_up};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const REPO: &str = "deploy-bench/app";
const PROJECT: &str = "bench-compose";

/// `docker -H <engine> <args>` without blocking the runtime; its standard output.
async fn docker(engine: &DockerdFixture, args: &[&str]) -> Result<String, BoxError> {
    let out = tokio::process::Command::new(engine.program())
        .arg("-H")
        .arg(engine.socket())
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wait until container `name`'s HEALTHCHECK says healthy and `127.0.0.1:port` answers
/// `version` on `/health` (polled every 20 ms, at most 60 s).
async fn wait_healthy(
    engine: &DockerdFixture,
    name: &str,
    port: u16,
    version: &str,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = docker(
            engine,
            &[
                "container",
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                name,
            ],
        )
        .await
        .unwrap_or_default();
        if status.trim() == "healthy" && served_version(port).await == Some(v(version)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not healthy on {version} within 60 s: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `probe` — the engine's judgement: the container's HEALTHCHECK, then its HTTP
/// answer — says the slot is healthy on `version` (polled every 20 ms, at most 60 s).
async fn wait_probe(probe: &DockerHealthProbe, port: u16, version: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let request = ProbeRequest::new(
        TargetId::new("blue")?,
        Endpoint::http("127.0.0.1", port),
        Some(v(version)),
    );
    loop {
        let h = probe.check(&request).await?;
        if h.healthy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("blue not healthy on {version} within 60 s: {}", h.reason).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Take `server` out of HAProxy's traffic and wait until it holds no session.
async fn drain(sw: &HaproxySwitch, server: &str) -> Result<(), BoxError> {
    let id = TargetId::new(server)?;
    sw.set_weights(&Weights::new().with(id.clone(), 0)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.active_sessions(&id).await? > 0 {
        if Instant::now() > deadline {
            return Err(format!("{server} still has sessions after 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Give `server` its weight back, wait until HAProxy's checks see it UP, let it serve 300 ms.
async fn undrain(
    sw: &HaproxySwitch,
    h: &deploy_haproxy::testing::HaproxyFixture,
    server: &str,
) -> Result<(), BoxError> {
    sw.set_weights(&Weights::new().with(TargetId::new(server)?, 100))
        .await?;
    wait_up(h, &[server]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn compose_file(port: u16, version: &str) -> String {
    format!(
        "version: \"2.4\"\n\
         services:\n  \
           app:\n    \
             image: {REPO}:{version}\n    \
             network_mode: host\n    \
             init: true\n    \
             stop_grace_period: 5s\n    \
             environment:\n      \
               PORT: \"{port}\"\n"
    )
}

async fn compose_up(engine: &DockerdFixture, file: &std::path::Path) -> Result<(), BoxError> {
    let out = tokio::process::Command::new("docker-compose")
        .env("DOCKER_HOST", engine.socket())
        .arg("-f")
        .arg(file)
        .args(["-p", PROJECT, "up", "-d"])
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run docker-compose ({e}); install it with `apt-get install docker-compose`"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "docker-compose up -d: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Median, p90 (nearest rank), min, max in milliseconds.
fn stats(samples: &[Duration]) -> [f64; 4] {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n.is_multiple_of(2) {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    } else {
        ms[n / 2]
    };
    let p90 = ms[(n * 9).div_ceil(10) - 1];
    [median, p90, ms[0], ms[n - 1]]
}

#[derive(Default)]
struct Phase {
    total: Vec<Duration>,
    command: Vec<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let engine = DockerdFixture::start()?;
    let tmp = tempfile::tempdir()?;
    let next: Vec<String> = (1..=rounds).map(|i| format!("2.0.{i}")).collect();
    eprintln!("building {} images", rounds + 1);
    for version in std::iter::once("1.0.0").chain(next.iter().map(String::as_str)) {
        engine.build_test_image(&format!("{REPO}:{version}"), version, true)?;
    }

    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let [steady_addr, blue_addr, compose_addr] = free_ports::<3>()?;
    let (blue_port, compose_port) = (blue_addr.port(), compose_addr.port());
    // `keep(100)`: no older container is removed during the rounds, so that an activation is
    // a stop and a start, nothing else.
    let target = |name: &str, port: u16| {
        slot(&engine, &host, "bench", name, port)
            .image(format!("{REPO}:{{version}}"))
            .keep(100)
            .build()
    };
    let steady = target("steady", steady_addr.port())?;
    let blue = Arc::new(target("blue", blue_port)?);
    let http: DynHealthProbe = Arc::new(HttpProbe::builder().version_field("version").build()?);
    let probe = DockerHealthProbe::new([Arc::clone(&blue)]).then(http);
    for t in [&steady, blue.as_ref()] {
        t.prepare(&Release::new(v("1.0.0"))).await?;
        t.activate(&v("1.0.0")).await?;
    }
    let file = tmp.path().join("docker-compose.yml");
    std::fs::write(&file, compose_file(compose_port, "1.0.0"))?;
    compose_up(&engine, &file).await?;
    let compose_container = format!("{PROJECT}_app_1");
    wait_healthy(&engine, &compose_container, compose_port, "1.0.0").await?;
    wait_healthy(&engine, "bench-blue-1.0.0", blue_port, "1.0.0").await?;

    let h = haproxy(&[
        ("steady", steady_addr.port(), 100),
        ("blue", blue_port, 100),
        ("compose", compose_port, 100),
    ])
    .await;
    wait_up(&h, &["steady", "blue", "compose"]).await;
    let sw = switch(&h);

    let bodies: Vec<String> = std::iter::once("1.0.0".to_owned())
        .chain(next.iter().cloned())
        .map(|v| health_body(&v))
        .collect();
    let mut config = LoadConfig::new(2, 200_000);
    config.path = "/health".to_owned();
    config.think_time = Duration::from_millis(2);
    config.max_duration = Duration::from_secs(600);
    let load = Load::start(
        h.frontend(),
        config,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut activation, mut rollback) = (Phase::default(), Phase::default());
    let (mut c_next, mut c_back) = (Phase::default(), Phase::default());
    let (f0, s0) = (load.failed(), load.completed());
    for version in &next {
        eprintln!("DockerTarget round {version}");
        blue.prepare(&Release::new(v(version))).await?;

        drain(&sw, "blue").await?;
        let t0 = Instant::now();
        blue.activate(&v(version)).await?;
        activation.command.push(t0.elapsed());
        wait_probe(&probe, blue_port, version).await?;
        activation.total.push(t0.elapsed());
        undrain(&sw, &h, "blue").await?;

        drain(&sw, "blue").await?;
        let t0 = Instant::now();
        blue.activate(&v("1.0.0")).await?;
        rollback.command.push(t0.elapsed());
        wait_probe(&probe, blue_port, "1.0.0").await?;
        rollback.total.push(t0.elapsed());
        undrain(&sw, &h, "blue").await?;
    }
    let (f1, s1) = (load.failed(), load.completed());
    for version in &next {
        eprintln!("docker-compose round {version}");
        for (target_version, phase) in [(version.as_str(), &mut c_next), ("1.0.0", &mut c_back)] {
            std::fs::write(&file, compose_file(compose_port, target_version))?;
            drain(&sw, "compose").await?;
            let t0 = Instant::now();
            compose_up(&engine, &file).await?;
            phase.command.push(t0.elapsed());
            wait_healthy(&engine, &compose_container, compose_port, target_version).await?;
            phase.total.push(t0.elapsed());
            undrain(&sw, &h, "compose").await?;
        }
    }
    let (f2, s2) = (load.failed(), load.completed());
    load.stop();
    let r = load.finish().await;
    let served_next: u64 = next
        .iter()
        .map(|v| r.by_slot.get(&health_body(v)).copied().unwrap_or(0))
        .sum();

    let server = docker(&engine, &["version", "--format", "{{.Server.Version}}"]).await?;
    println!(
        "dockerd {} (private engine, overlay2, `--network host` containers); HEALTHCHECK every 1 s; \
         {rounds} rounds; times in ms\n",
        server.trim()
    );
    println!("| case | median | p90 | min | max |\n|---|---|---|---|---|");
    let row = |label: &str, s: &[Duration]| {
        let [m, p, lo, hi] = stats(s);
        println!("| {label} | {m:.0} | {p:.0} | {lo:.0} | {hi:.0} |");
    };
    row(
        "DockerTarget activation: stop 1.0.0, start prepared 2.0.x, until healthy",
        &activation.total,
    );
    row(
        "… of which `activate` (docker stop + start)",
        &activation.command,
    );
    row(
        "DockerTarget rollback: stop 2.0.x, start kept 1.0.0, until healthy",
        &rollback.total,
    );
    row(
        "… of which `activate` (docker stop + start)",
        &rollback.command,
    );
    row(
        "`docker-compose up -d`, image of the next version (recreate), until healthy",
        &c_next.total,
    );
    row("… of which `docker-compose up -d`", &c_next.command);
    row(
        "`docker-compose up -d`, back to 1.0.0 (recreate), until healthy",
        &c_back.total,
    );
    row("… of which `docker-compose up -d`", &c_back.command);
    let median = |s: &[Duration]| stats(s)[0];
    println!(
        "\nrollback / activation (medians): {:.2}; compose next / activation: {:.2}; \
         compose back / rollback: {:.2}",
        median(&rollback.total) / median(&activation.total),
        median(&c_next.total) / median(&activation.total),
        median(&c_back.total) / median(&rollback.total),
    );
    println!(
        "through HAProxy: {} requests in {:.1} s ({:.0}/s), {} failed ({} of {} during the \
         DockerTarget rounds, {} of {} during the compose rounds); {} answered by a 2.0.x container",
        r.sent,
        r.elapsed.as_secs_f64(),
        r.sent as f64 / r.elapsed.as_secs_f64(),
        r.failed,
        f1 - f0,
        s1 - s0,
        f2 - f1,
        s2 - s1,
        served_next,
    );
    if !r.errors.is_empty() {
        println!("first failures: {:?}", r.errors);
    }
    // Leave nothing behind: the compose project goes with the engine (its directory).
    Ok(())
}
