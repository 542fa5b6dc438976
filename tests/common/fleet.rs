//! A fleet of four hosts reached through one real sshd (a connection each, as four machines)
//! behind a real haproxy: each host a release directory and an app reading it.

use std::path::{Path, PathBuf};

use deploy::Engine;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::ssh::testing::SshdFixture;
use deploy::{Release, Version};

use super::{
    ReleaseApp, app_release, app_release_broken_on, haproxy_wait_up, haproxy_weights, install, q,
    release_app, version_of,
};

pub const HOSTS: [&str; 4] = ["app-1", "app-2", "app-3", "app-4"];

/// Four release directories reached through one sshd (a connection each, as four machines),
/// an app per directory, haproxy with a server per app at weight 100.
pub struct Fleet {
    _tmp: tempfile::TempDir,
    /// Where the hosts' release directories, the releases and the state directory are.
    pub dir: PathBuf,
    /// The one sshd.
    pub sshd: SshdFixture,
    /// One app per host.
    pub apps: Vec<ReleaseApp>,
    /// The balancer.
    pub haproxy: HaproxyFixture,
}

impl Fleet {
    /// The fleet, on nothing yet; 2.0.0 is broken on the hosts `broken_on`.
    pub async fn start(broken_on: &[&str]) -> Self {
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
    pub fn plan(&self, strategy_extra: &str, policies: &str) -> PlanFile {
        PlanFile::parse("fleet.toml", &self.plan_text(strategy_extra, policies)).unwrap()
    }

    /// [`plan`](Self::plan) written to `<dir>/fleet.toml`, for the `deploy` binary.
    pub fn plan_file(&self, strategy_extra: &str, policies: &str) -> PathBuf {
        let path = self.dir.join("fleet.toml");
        std::fs::write(&path, self.plan_text(strategy_extra, policies)).unwrap();
        path
    }

    /// The plan file's text.
    pub fn plan_text(&self, strategy_extra: &str, policies: &str) -> String {
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
        format!(
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
        )
    }

    /// Put 1.0.0 on every host, as a previous deploy would, and wait until haproxy sees them.
    pub async fn install(&self, engine: &Engine) {
        install(
            engine,
            &Release::new(Version::new("1.0.0").unwrap()).with_artifact(self.dir.join("app-1.0.0")),
        )
        .await;
        haproxy_wait_up(&self.haproxy, &HOSTS).await;
    }

    /// The version each host's app serves now.
    pub async fn versions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for app in &self.apps {
            out.push(version_of(app).await);
        }
        out
    }

    /// Each host's weight in haproxy now.
    pub async fn weights(&self) -> Vec<u32> {
        haproxy_weights(&self.haproxy, &HOSTS).await
    }
}
