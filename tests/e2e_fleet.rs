//! A fleet rolled through one real sshd behind a real haproxy, with a host whose new release is
//! broken (its `/health` answers 503): the rollback undoes a batch's hosts together, as the
//! batch was done, each step's time is its own, and the live world ends where it began.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use deploy::adapters::Adapters;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::ssh::testing::SshdFixture;
use deploy::{Engine, Outcome, Release, Report, Step, Version};
use tokio_util::sync::CancellationToken;

mod common;
use common::{
    ReleaseApp, app_release, app_release_broken_on, haproxy_wait_up, haproxy_weights, install, q,
    release_app, version_of,
};

const HOSTS: [&str; 4] = ["app-1", "app-2", "app-3", "app-4"];

/// Four release directories reached through one sshd (a connection each, as four machines),
/// an app per directory, haproxy with a server per app at weight 100.
struct Fleet {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sshd: SshdFixture,
    apps: Vec<ReleaseApp>,
    haproxy: HaproxyFixture,
}

impl Fleet {
    async fn start(broken_on: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let sshd = SshdFixture::start().unwrap();
        let mut apps = Vec::new();
        for name in HOSTS {
            apps.push(release_app(dir.join(name)).await);
        }
        let haproxy = HaproxyFixture::start(FixtureConfig::new(
            HOSTS
                .iter()
                .zip(&apps)
                .map(|(name, app)| ServerSpec::new(*name, app.server.addr(), 100))
                .collect(),
        ))
        .await
        .unwrap();
        app_release(&dir, "1.0.0", 0.0);
        app_release_broken_on(&dir, "2.0.0", broken_on);
        Self {
            _tmp: tmp,
            dir,
            sshd,
            apps,
            haproxy,
        }
    }

    /// The plan: rolling by batches of two, a 50 ms probe, `extra` TOML after `[strategy]`'s
    /// keys (`max_failed_targets = …`) and `policies` (more `[policies.*]` tables).
    fn plan(&self, strategy_extra: &str, policies: &str) -> PlanFile {
        let mut targets = String::new();
        for (name, app) in HOSTS.iter().zip(&self.apps) {
            targets.push_str(&format!(
                r#"
[[targets]]
id = "{name}"
root = {root}
endpoint = "{endpoint}"
restart = ["true"]
keep = 2
ssh = {{ host = "127.0.0.1", port = {port}, user = "{user}", key_file = {key}, known_hosts = {known}, connect_timeout = "5s", command_timeout = "30s" }}
"#,
                root = q(&self.dir.join(name)),
                endpoint = app.server.url(""),
                port = self.sshd.port(),
                user = self.sshd.user(),
                key = q(&self.sshd.client_key()),
                known = q(&self.sshd.known_hosts()),
            ));
        }
        let text = format!(
            r#"
[environment]
name = "fleet"
state_dir = {state}

[release]
version = "2.0.0"
artifact = {artifact}

[strategy]
kind = "rolling"
batch = {{ count = 2 }}
{strategy_extra}

[policies.probe]
interval = "50ms"
{policies}

[policies.drain]
timeout = "5s"
poll_interval = "50ms"

{targets}
[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"
state_file = {state_file}
"#,
            state = q(&self.dir.join("state")),
            artifact = q(&self.dir.join("app-2.0.0")),
            socket = q(Path::new(&self.haproxy.admin_socket().to_string())),
            state_file = q(self.haproxy.state_file()),
        );
        PlanFile::parse("fleet.toml", &text).unwrap()
    }

    async fn install(&self, engine: &Engine) {
        install(
            engine,
            &Release::new(Version::new("1.0.0").unwrap()).with_artifact(self.dir.join("app-1.0.0")),
        )
        .await;
        haproxy_wait_up(&self.haproxy, &HOSTS).await;
    }

    /// The version each host's app serves now.
    async fn versions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for app in &self.apps {
            out.push(version_of(app).await);
        }
        out
    }

    async fn weights(&self) -> Vec<u32> {
        haproxy_weights(&self.haproxy, &HOSTS).await
    }
}

async fn deploy(plan: &PlanFile) -> Report {
    let engine = plan.engine(&Adapters::new()).unwrap();
    engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

/// When a step of the report started and ended.
fn span(started_at: SystemTime, duration: Duration) -> (SystemTime, SystemTime) {
    (started_at, started_at + duration)
}

fn overlap(a: (SystemTime, SystemTime), b: (SystemTime, SystemTime)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_host_rolls_the_fleet_back_a_batch_at_a_time_with_each_steps_own_time() {
    let fleet = Fleet::start(&["app-3"]).await;
    let plan = fleet.plan("", r#"deadline = "3s""#);
    let engine = plan.engine(&Adapters::new()).unwrap();
    fleet.install(&engine).await;

    let report = deploy(&plan).await;
    println!("{report}");

    // The live world: every host serves 1.0.0 and takes its full weight again — also once
    // haproxy's own checks have seen the broken host healthy again (a server drained, then
    // DOWN by its checks, must not come back UP as DRAIN).
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(fleet.versions().await, ["1.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);
    for name in HOSTS {
        assert_eq!(
            std::fs::read_link(fleet.dir.join(name).join("current")).unwrap(),
            Path::new("releases/1.0.0"),
            "{name}"
        );
    }

    // Each step of the second batch has its own time: app-4 was healthy at once, app-3 never.
    let awaited = |target: &str| {
        report
            .steps
            .iter()
            .find(
                |s| matches!(&s.step, Step::AwaitHealthy { target: t, .. } if t.as_str() == target),
            )
            .unwrap_or_else(|| panic!("no health wait of {target} in {report}"))
    };
    let (healthy, broken) = (awaited("app-4"), awaited("app-3"));
    assert!(
        healthy.error.is_none() && broken.error.is_some(),
        "{report}"
    );
    assert!(
        healthy.duration * 2 < broken.duration,
        "app-4's wait ({:?}) is its own, not its batch's ({:?})",
        healthy.duration,
        broken.duration
    );

    // The undo of each batch acts together: its two re-activations overlap in time, and so do
    // its two health waits — as the batch's own steps did.
    let rollback = report.rollback.as_ref().expect("a rollback");
    let undo = |op: &str, target: &str| {
        let u = rollback
            .steps
            .iter()
            .find(|u| u.step.op() == op && u.step.target().is_some_and(|t| t.as_str() == target))
            .unwrap_or_else(|| panic!("no undo {op} of {target} in {report}"));
        assert!(u.error.is_none(), "{report}");
        span(u.started_at, u.duration)
    };
    for (a, b) in [("app-3", "app-4"), ("app-1", "app-2")] {
        for op in ["activate", "await_healthy"] {
            assert!(
                overlap(undo(op, a), undo(op, b)),
                "the undo's {op} of {a} and {b} ran one after the other: {report}"
            );
        }
    }
}
