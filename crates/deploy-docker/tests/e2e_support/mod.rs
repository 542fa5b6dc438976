//! What the whole-deployment tests (`tests/e2e_*.rs`) and the activation benchmark share:
//! container slots on the private engine, HAProxy in front of them, and reading the live state
//! back (versions served, weights, running containers and their labels).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    Endpoint, Engine, Environment, HealthProbe, HttpProbe, Policies, ProbeRequest, Release,
    TargetId, Version,
};
use deploy_docker::DockerTarget;
use deploy_docker::testing::{DockerdFixture, RecordingHost};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};

/// The engine of `env` with its state in `state`, and the whole-deployment tests' policies: a
/// 250 ms probe (two healthy checks, three unhealthy answers fail, a 60 s deadline), drains of
/// at most 10 s polled every 50 ms.
pub fn engine(env: Environment, state: &Path) -> Engine {
    let mut policies = Policies::default();
    policies.probe.interval = Duration::from_millis(250);
    policies.probe.healthy_threshold = 2;
    policies.probe.unhealthy_threshold = 3;
    policies.probe.deadline = Duration::from_secs(60);
    policies.drain.timeout = Duration::from_secs(10);
    policies.drain.poll_interval = Duration::from_millis(50);
    Engine::new(env)
        .with_state_dir(state)
        .with_policies(policies)
}

/// `version` as a [`Version`].
pub fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

/// What the test image answers on `GET /health` for `version` (and what the load counts).
pub fn health_body(version: &str) -> String {
    format!("{{\"status\":\"ok\",\"version\":\"{version}\"}}\n")
}

/// Image archives (`docker save`) of the test image for each version, removed from the engine
/// afterwards so that every release is loaded by `prepare`, as a release artifact.
pub struct Archives {
    pub paths: BTreeMap<String, PathBuf>,
}

impl Archives {
    /// Build `repo:<version>` for each `(version, healthy)`, save it under `dir`, untag it.
    pub fn build(
        engine: &DockerdFixture,
        dir: &Path,
        repo: &str,
        versions: &[(&str, bool)],
    ) -> Self {
        let mut paths = BTreeMap::new();
        for (version, healthy) in versions {
            let tag = format!("{repo}:{version}");
            engine.build_test_image(&tag, version, *healthy).unwrap();
            let archive = dir.join(format!("{}-{version}.tar", repo.replace('/', "_")));
            engine.save_image(&tag, &archive).unwrap();
            engine.docker_ok(&["image", "rm", &tag]).unwrap();
            paths.insert((*version).to_owned(), archive);
        }
        Self { paths }
    }

    /// The release `version` with its archive as the artifact.
    pub fn release(&self, version: &str) -> Release {
        Release::new(v(version)).with_artifact(&self.paths[version])
    }
}

/// A container slot `name` of `app` on the private engine, serving on `127.0.0.1:port`
/// (`--network host`, `PORT` in its environment), through `host`.
pub fn slot(
    engine: &DockerdFixture,
    host: &RecordingHost,
    app: &str,
    name: &str,
    port: u16,
) -> deploy_docker::DockerTargetBuilder {
    DockerTarget::builder(
        TargetId::new(name).unwrap(),
        Arc::new(host.clone()),
        app,
        Endpoint::http("127.0.0.1", port),
    )
    .docker_program(engine.program())
    .docker_host(engine.socket())
    .network("host")
    .env("PORT", port.to_string())
    .stop_timeout(Duration::from_secs(5))
    .command_timeout(Duration::from_secs(120))
}

/// The HTTP probe the engine uses after the container's own HEALTHCHECK.
pub fn http_probe() -> HttpProbe {
    HttpProbe::builder()
        .version_field("version")
        .build()
        .unwrap()
}

/// The version `127.0.0.1:port` answers on `/health`, if it answers.
pub async fn served_version(port: u16) -> Option<Version> {
    let req = ProbeRequest::new(
        TargetId::new("x").unwrap(),
        Endpoint::http("127.0.0.1", port),
        None,
    );
    http_probe().check(&req).await.ok()?.version
}

/// HAProxy with backend `app` holding `(name, port, weight)` servers (checks `GET /health`
/// every 100 ms).
pub async fn haproxy(servers: &[(&str, u16, u32)]) -> HaproxyFixture {
    HaproxyFixture::start(FixtureConfig::new(
        servers
            .iter()
            .map(|(name, port, weight)| {
                ServerSpec::new(*name, SocketAddr::from(([127, 0, 0, 1], *port)), *weight)
            })
            .collect(),
    ))
    .await
    .unwrap()
}

/// The real switch over `h`'s backend `app` (servers named as the targets).
pub fn switch(h: &HaproxyFixture) -> Arc<HaproxySwitch> {
    Arc::new(
        HaproxySwitch::builder("app")
            .socket(h.admin_socket())
            .state_file(h.state_file())
            .poll_interval(Duration::from_millis(50))
            .check_interval(Duration::from_millis(100))
            .check_timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
}

/// The weights of `servers` in backend `app`, read from HAProxy.
pub async fn weights(h: &HaproxyFixture, servers: &[&str]) -> Vec<u32> {
    let client = h.client();
    let mut out = Vec::new();
    for s in servers {
        out.push(client.get_weight("app", s).await.unwrap().0);
    }
    out
}

/// Wait (at most 20 s) until HAProxy's checks see every server of `servers` UP.
pub async fn wait_up(h: &HaproxyFixture, servers: &[&str]) {
    let client = h.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut up = true;
        for s in servers {
            up &= client
                .server_stat("app", s)
                .await
                .unwrap()
                .status
                .starts_with("UP");
        }
        if up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy does not see {servers:?} UP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One container of an app as the engine shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub state: String,
    pub slot: String,
    pub version: String,
    pub run: String,
}

/// Every container labelled `deploy.app=app`, by name: state and labels.
pub fn containers(engine: &DockerdFixture, app: &str) -> Vec<Seen> {
    let out = engine
        .docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=deploy.app={app}"),
            "--format",
            "{{.Names}}\t{{.State}}\t{{.Label \"deploy.slot\"}}\t{{.Label \"deploy.version\"}}\t{{.Label \"deploy.run\"}}",
        ])
        .unwrap();
    let mut seen: Vec<Seen> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Seen {
                name: f[0].to_owned(),
                state: f[1].to_owned(),
                slot: f[2].to_owned(),
                version: f[3].to_owned(),
                run: f.get(4).copied().unwrap_or_default().to_owned(),
            }
        })
        .collect();
    seen.sort_by(|a, b| a.name.cmp(&b.name));
    seen
}

/// The running containers of `app` as `(name, slot label, version label)`.
pub fn running(engine: &DockerdFixture, app: &str) -> Vec<(String, String, String)> {
    containers(engine, app)
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| (c.name, c.slot, c.version))
        .collect()
}

/// The docker subcommands `host` ran, in order, with their arguments (after `-H <socket>`).
pub fn docker_commands(host: &RecordingHost) -> Vec<Vec<String>> {
    host.commands()
        .iter()
        .map(|c| {
            let args: Vec<String> = c
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            match args.first().map(String::as_str) {
                Some("-H" | "--host") => args[2..].to_vec(),
                _ => args,
            }
        })
        .collect()
}

/// How many commands `sub` (`load`, `create`, `pull`, `start`) are in `commands`, and how many
/// of them name `needle` (a container name or an archive) in their arguments.
pub fn count(commands: &[Vec<String>], sub: &str, needle: &str) -> (usize, usize) {
    let of: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c.first().map(String::as_str) == Some(sub))
        .collect();
    let naming = of
        .iter()
        .filter(|c| c.iter().any(|a| a.contains(needle)))
        .count();
    (of.len(), naming)
}
