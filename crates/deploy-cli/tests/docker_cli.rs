//! `kind = "docker"` targets through the `deploy` command line, as an operator runs it: two
//! container slots (blue, green) on a private dockerd (`deploy::docker::testing`), behind a
//! real HAProxy, judged by the containers' own `HEALTHCHECK` and then the HTTP probe
//! (`[probe] container_health = true`). The end state is read back from the engine (which
//! container runs, its `deploy.version` label), HAProxy (weights) and HTTP (the version
//! served).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy::adapters::Adapters;
use deploy::docker::testing::DockerdFixture;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::ssh::testing::ArgvWatch;
use deploy::testing::process::free_port;
use deploy::{Engine, Release, Step, Version};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{Killed, deploy_bin, get, haproxy_weights, install, q};

/// One scenario at a time: each starts its own dockerd and haproxy, and the machine has two
/// cores shared with other builds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The secret given to the containers in [`secrets_stay_out_of_argv_journal_report_and_output`].
const SECRET: &str = "CanaryDockerTok4Z";

/// What the test image answers on `/health` for `version`.
fn health_body(version: &str) -> String {
    format!("{{\"status\":\"ok\",\"version\":\"{version}\"}}\n")
}

struct Setup {
    tmp: tempfile::TempDir,
    engine: DockerdFixture,
    h: HaproxyFixture,
    ports: [u16; 2],
    plan: PathBuf,
    deploy_engine: Engine,
}

impl Setup {
    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `docker container inspect --format <format> <name>` on the test engine.
    fn inspect(&self, name: &str, format: &str) -> String {
        self.engine
            .docker_ok(&["container", "inspect", "--format", format, name])
            .unwrap_or_else(|e| format!("(no container {name}: {e})"))
            .trim()
            .to_owned()
    }

    /// The running containers of the app, as `name version` (from the label), sorted.
    fn running(&self) -> Vec<String> {
        let out = self
            .engine
            .docker_ok(&[
                "ps",
                "--filter",
                "label=deploy.app=shop",
                "--format",
                "{{.Names}} {{.Label \"deploy.version\"}}",
            ])
            .unwrap();
        let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
        v.sort();
        v
    }

    /// The engine's events from `since` (unix nanoseconds) until now, as `type action name`
    /// (filtered here by each event's own time: `--since` takes whole seconds).
    fn events_since(&self, since: u128) -> Vec<String> {
        let from = (since / 1_000_000_000) as u64 - 2;
        let until = (now() / 1_000_000_000) as u64 + 1;
        self.engine
            .docker_ok(&[
                "events",
                "--since",
                &from.to_string(),
                "--until",
                &until.to_string(),
                "--format",
                "{{.TimeNano}} {{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
            ])
            .unwrap()
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.split_once(' ')?;
                (t.parse::<u128>().ok()? >= since).then(|| rest.to_owned())
            })
            .collect()
    }

    async fn served(&self, slot: usize) -> String {
        get(&format!("http://127.0.0.1:{}/health", self.ports[slot])).await
    }
}

/// Unix time in nanoseconds.
fn now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `deploy <args> <plan>` with `env`: exit code and output (stdout, then stderr).
fn deploy(args: &[&str], plan: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(deploy_bin())
        .args(args)
        .arg(plan)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The plan file: blue-green of two docker slots behind `h`, for `version` from `artifact`.
#[allow(clippy::too_many_arguments)]
fn plan_text(
    dir: &Path,
    engine: &DockerdFixture,
    h: &HaproxyFixture,
    ports: [u16; 2],
    version: &str,
    artifact: &Path,
    extra_target_keys: &str,
    probe_policy: &str,
) -> String {
    let target = |id: &str, port: u16| {
        format!(
            r#"
[[targets]]
id = "{id}"
kind = "docker"
endpoint = "http://127.0.0.1:{port}"
app = "shop"
docker = {program}
docker_host = {socket}
network = "host"
env = {{ PORT = "{port}" }}
stop_timeout = "2s"
command_timeout = "120s"
{extra_target_keys}
"#,
            program = q(Path::new(engine.program())),
            socket = q(Path::new(&engine.socket())),
        )
    };
    format!(
        r#"
[environment]
name = "docker-e2e"
state_dir = {state}

[release]
version = "{version}"
artifact = {artifact}

[strategy]
kind = "blue_green"

[policies.probe]
{probe_policy}
{blue}
{green}
[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"
container_health = true

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"
state_file = {state_file}
"#,
        state = q(&dir.join("state")),
        artifact = q(artifact),
        blue = target("blue", ports[0]),
        green = target("green", ports[1]),
        socket = q(Path::new(&h.admin_socket().to_string())),
        state_file = q(h.state_file()),
    )
}

/// A private dockerd with the images of 1.0.0 and 2.0.0 as archives (none loaded), 2.0.0's
/// HEALTHCHECK slow when `slow` (its first answer comes after about 5 s); both slots on
/// 1.0.0, installed by the engine in this process; haproxy with blue live (100) and green idle
/// (0), both UP; the plan for 2.0.0 written.
async fn setup(slow: bool, extra_target_keys: &str, probe_policy: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let engine = DockerdFixture::start().unwrap();
    let mut archives = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let tag = format!("deploy-test/shop:{version}");
        engine.build_test_image(&tag, version, true).unwrap();
        if version == "2.0.0" && slow {
            // The same image, whose HEALTHCHECK takes about 4 s to answer.
            let ctx = dir.join("slow-image");
            std::fs::create_dir_all(&ctx).unwrap();
            std::fs::write(
                ctx.join("Dockerfile"),
                format!(
                    "FROM {tag}\nHEALTHCHECK --interval=1s --timeout=10s --retries=2 CMD \
                     sleep 4; wget -q -O- http://127.0.0.1:$PORT/health || exit 1\n"
                ),
            )
            .unwrap();
            engine
                .docker_ok(&["build", "-q", "-t", &tag, &ctx.to_string_lossy()])
                .unwrap();
        }
        let archive = dir.join(format!("shop-{version}.tar"));
        engine.save_image(&tag, &archive).unwrap();
        engine.docker_ok(&["image", "rm", &tag]).unwrap();
        archives.push(archive);
    }
    let ports = [free_port().unwrap(), free_port().unwrap()];
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let h = HaproxyFixture::start(FixtureConfig::new(vec![
        ServerSpec::new("blue", addr(ports[0]), 100),
        ServerSpec::new("green", addr(ports[1]), 0),
    ]))
    .await
    .unwrap();
    let text = plan_text(
        &dir,
        &engine,
        &h,
        ports,
        "2.0.0",
        &archives[1],
        extra_target_keys,
        probe_policy,
    );
    let plan = dir.join("docker.toml");
    std::fs::write(&plan, &text).unwrap();
    let token = dir.join("shop-token");
    std::fs::write(&token, SECRET).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pf = PlanFile::load(&plan).unwrap();
    let deploy_engine = pf.engine(&Adapters::new()).unwrap();
    install(
        &deploy_engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(&archives[0]),
    )
    .await;
    // 1.0.0's archive is gone: going back to it can only be a start of its kept container.
    std::fs::remove_file(&archives[0]).unwrap();
    common::haproxy_wait_up(&h, &["blue", "green"]).await;
    Setup {
        tmp,
        engine,
        h,
        ports,
        plan,
        deploy_engine,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_run_puts_2_0_0_on_the_idle_container_slot_behind_haproxy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup(false, "", "interval = \"200ms\"\ndeadline = \"60s\"").await;
    assert_eq!(
        s.running(),
        ["shop-blue-1.0.0 1.0.0", "shop-green-1.0.0 1.0.0"]
    );
    let mut config = LoadConfig::new(2, 1_000_000);
    config.max_duration = Duration::from_secs(60);
    config.think_time = Duration::from_millis(5);
    config.path = "/health".to_owned();
    let (b1, b2) = (health_body("1.0.0"), health_body("2.0.0"));
    let load = Load::start(s.h.frontend(), config, &[&b1, &b2]);

    let t0 = Instant::now();
    let (code, out) = deploy(&["run"], &s.plan, &[]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "promoted\n{out}");

    assert_eq!(
        s.running(),
        ["shop-blue-1.0.0 1.0.0", "shop-green-2.0.0 2.0.0"],
        "green runs 2.0.0, blue keeps 1.0.0 running"
    );
    assert_eq!(
        s.inspect("shop-green-1.0.0", "{{.State.Status}}"),
        "exited",
        "the previous container is kept, stopped"
    );
    assert_eq!(haproxy_weights(&s.h, &["blue", "green"]).await, [0, 100]);
    assert_eq!(s.served(1).await, b2);
    let front = get(&format!("http://{}/health", s.h.frontend())).await;
    assert_eq!(front, b2, "haproxy's frontend serves 2.0.0");
    let st = s.deploy_engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(deploy::Outcome::Promoted));

    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    println!(
        "deploy run took {took:?}; load: sent {}, ok {}, failed {}, by version {:?}",
        r.sent,
        r.ok,
        r.failed,
        r.by_slot.values().collect::<Vec<_>>()
    );
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.by_slot[&b2] > 0, "2.0.0 took traffic");
}

/// Wait until the run held by `pid` is waiting for green's health.
async fn wait_health_wait(engine: &Engine, pid: u32, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(s)) = engine.status().await
            && matches!(s.current_step, Some(Step::AwaitHealthy { .. }))
            && s.lock.as_ref().is_some_and(|l| l.pid == pid)
            && s.outcome.is_none()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the run never waited for health: {:?}\n{}",
            engine.status().await,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`setup`] with 2.0.0's slow HEALTHCHECK, then `deploy run` killed with SIGKILL while it
/// waits for green's container to become healthy; returns the engine's clock at the kill.
async fn killed_while_waiting_for_health() -> (Setup, u128) {
    let s = setup(
        true,
        "",
        "interval = \"200ms\"\nhealthy_threshold = 2\ndeadline = \"60s\"",
    )
    .await;
    let log = s.dir().join("run.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Killed(
        std::process::Command::new(deploy_bin())
            .arg("run")
            .arg(&s.plan)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    wait_health_wait(&s.deploy_engine, child.0.id(), &log).await;
    assert_eq!(
        s.inspect("shop-green-2.0.0", "{{.State.Health.Status}}"),
        "starting",
        "killed while the container's HEALTHCHECK has not answered yet"
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let at = now();
    let st = s.deploy_engine.status().await.unwrap().unwrap();
    assert!(st.lock_stale, "the dead process's lock is stale: {st}");
    assert_eq!(st.outcome, None);
    assert_eq!(
        haproxy_weights(&s.h, &["blue", "green"]).await,
        [100, 0],
        "killed before the switch"
    );
    (s, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_waiting_for_the_container_health_then_resume_promotes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (s, _) = killed_while_waiting_for_health().await;
    let t0 = Instant::now();
    let (code, out) = deploy(&["resume"], &s.plan, &[]);
    println!("deploy resume took {:?}", t0.elapsed());
    assert_eq!(code, 0, "promoted\n{out}");
    assert!(out.contains("recovered from journal"), "{out}");
    assert_eq!(
        s.running(),
        ["shop-blue-1.0.0 1.0.0", "shop-green-2.0.0 2.0.0"]
    );
    assert_eq!(
        s.inspect("shop-green-2.0.0", "{{.State.Health.Status}}"),
        "healthy"
    );
    assert_eq!(haproxy_weights(&s.h, &["blue", "green"]).await, [0, 100]);
    let front = get(&format!("http://{}/health", s.h.frontend())).await;
    assert_eq!(front, health_body("2.0.0"));
    let st = s.deploy_engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(deploy::Outcome::Promoted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_waiting_for_the_container_health_then_rollback_starts_the_old_container() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (s, killed_at) = killed_while_waiting_for_health().await;
    let t0 = Instant::now();
    let (code, out) = deploy(&["rollback"], &s.plan, &[]);
    println!("deploy rollback took {:?}", t0.elapsed());
    assert_eq!(code, 2, "rolled back exits 2\n{out}");
    assert_eq!(
        s.running(),
        ["shop-blue-1.0.0 1.0.0", "shop-green-1.0.0 1.0.0"],
        "green runs its previous container again"
    );
    assert_eq!(s.inspect("shop-green-2.0.0", "{{.State.Status}}"), "exited");
    assert_eq!(haproxy_weights(&s.h, &["blue", "green"]).await, [100, 0]);
    assert_eq!(s.served(1).await, health_body("1.0.0"));
    assert_eq!(s.served(0).await, health_body("1.0.0"));
    let events = s.events_since(killed_at);
    let count = |what: &str| events.iter().filter(|e| e.starts_with(what)).count();
    println!("engine events from the kill to the end of the rollback: {events:?}");
    assert_eq!(count("image load"), 0, "no load: {events:?}");
    assert_eq!(count("image pull"), 0, "no pull: {events:?}");
    assert_eq!(count("container create"), 0, "no create: {events:?}");
    assert!(
        events
            .iter()
            .any(|e| e == "container start shop-green-1.0.0"),
        "the old container was started again: {events:?}"
    );
    let st = s.deploy_engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(deploy::Outcome::RolledBack));
}

/// Every file under `dir`, as text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_argv_journal_report_and_output() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The secret comes from a 0600 file beside the plan (a relative path, read from the plan
    // file's directory).
    let s = setup(
        false,
        "secret_env = { SHOP_TOKEN = { file = \"shop-token\" } }",
        "interval = \"200ms\"\ndeadline = \"60s\"",
    )
    .await;
    let watch = ArgvWatch::start(
        vec![SECRET.as_bytes().to_vec()],
        // `docker -H <this test's engine> create …`: no other test's command counts.
        vec![
            format!("{}\0create\0", s.engine.socket()).into_bytes(),
            b"deploy\0run\0".to_vec(),
        ],
    );
    let env = [];
    let report_path = s.dir().join("report.json");
    let report_arg = report_path.display().to_string();
    let (code, run_out) = deploy(&["run", "--report", &report_arg], &s.plan, &env);
    let seen = watch.stop();
    assert_eq!(code, 0, "promoted\n{run_out}");
    println!(
        "argv watch: {} passes, {} command lines read, `docker create` seen {} times",
        seen.passes, seen.command_lines, seen.markers[0]
    );
    assert!(
        seen.hits.is_empty(),
        "secret in a command line: {:?}",
        seen.hits
    );
    assert!(
        seen.markers[0] > 0,
        "`docker create` was seen, or the watch proves nothing: {seen:?}"
    );
    assert!(seen.markers[1] > 0, "the deploy process was seen");

    // The container has it.
    let env_out = s
        .engine
        .docker_ok(&["exec", "shop-green-2.0.0", "env"])
        .unwrap();
    assert!(
        env_out.lines().any(|l| l == format!("SHOP_TOKEN={SECRET}")),
        "{env_out}"
    );
    assert!(
        !s.inspect("shop-green-2.0.0", "{{json .Args}} {{json .Path}}")
            .contains(SECRET),
        "not in the container's command line"
    );

    // Nothing the tool shows or keeps has it.
    let mut shown = run_out.clone();
    for args in [&["status"][..], &["history"][..], &["plan"][..]] {
        let (_, out) = deploy(args, &s.plan, &env);
        shown.push_str(&out);
    }
    let (code, validate_out) = deploy(&["validate"], &s.plan, &env);
    assert_eq!(code, 0, "{validate_out}");
    shown.push_str(&validate_out);
    assert!(!shown.contains(SECRET), "the console output holds it");
    let kept = files_under(&s.dir().join("state"));
    assert!(kept.len() >= 3, "journal, report, history: {kept:?}");
    for (path, text) in &kept {
        assert!(
            !text.contains(SECRET),
            "{} holds the secret",
            path.display()
        );
    }
    let report = std::fs::read_to_string(&report_path).unwrap();
    assert!(!report.contains(SECRET));
    let pf = PlanFile::load(&s.plan).unwrap();
    assert!(!format!("{pf:?}").contains(SECRET));
    println!(
        "{} files of the state dir, {} bytes of console output, the report: no secret",
        kept.len(),
        shown.len()
    );
}

#[test]
fn validate_names_every_problem_of_a_docker_target_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("bad.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
[environment]
name = "docker-bad"
state_dir = {state}

[release]
version = "2.0.0"

[strategy]
kind = "rolling"
batch = {{ count = 1 }}

[[targets]]
id = "blue"
kind = "docker"
endpoint = "http://127.0.0.1:18081"
app = "shop"
image = "shop:{{version}}"

[[targets]]
id = "green"
kind = "docker"
endpoint = "http://127.0.0.1:18082"
app = "-shop"
image = "-bad"
keep = 1
restart = "always"
secret_env = {{ TOKEN = {{ env = "DEPLOY_TEST_SURELY_UNSET_TOKEN" }} }}

[[targets]]
id = "red"
kind = "dockr"
endpoint = "http://127.0.0.1:18083"

[[targets]]
id = "white"
kind = "docker"
endpoint = "http://127.0.0.1:18084"
app = "shop"
imagee = "shop:{{version}}"
"#,
            state = q(&dir.path().join("state")),
        ),
    )
    .unwrap();
    let (code, out) = deploy(&["validate"], &plan, &[]);
    assert_eq!(code, 1, "{out}");
    for part in [
        "targets[1].app:",
        "targets[1].image:",
        "targets[1].keep:",
        "targets[1].restart:",
        "targets[1].secret_env.TOKEN:",
        "DEPLOY_TEST_SURELY_UNSET_TOKEN",
        "targets[2].kind: unknown target kind \"dockr\" (this build knows: docker, release_dir",
        "targets[3].imagee: unknown field",
    ] {
        assert!(out.contains(part), "{part:?} in\n{out}");
    }
    assert!(!out.contains("targets[0]"), "blue is fine\n{out}");
}
