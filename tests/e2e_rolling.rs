//! Rolling over three SSH hosts behind haproxy through the plan-file path: three real sshd
//! servers (targets with `ssh` tables; release directories, restart commands and uploads over
//! SSH), one app per host reading its release directory, haproxy with one server per host, and
//! bounded load on haproxy's front end — 0 failed requests while each host is drained, switched
//! and brought back.

use std::time::Duration;

use deploy::Outcome;
use deploy::adapters::Adapters;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::ssh::testing::SshdFixture;
use deploy::{Release, Version};
use tokio_util::sync::CancellationToken;

mod common;
use common::{app_release, haproxy_wait_up, haproxy_weights, install, q, release_app, version_of};

const HOSTS: [&str; 3] = ["api-1", "api-2", "api-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_over_three_ssh_hosts_behind_haproxy_with_zero_failed_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut sshd = Vec::new();
    let mut apps = Vec::new();
    for name in HOSTS {
        sshd.push(SshdFixture::start().unwrap());
        apps.push(release_app(dir.join(name)).await);
    }
    let h = HaproxyFixture::start(FixtureConfig::new(
        HOSTS
            .iter()
            .zip(&apps)
            .map(|(name, app)| ServerSpec::new(*name, app.server.addr(), 100))
            .collect(),
    ))
    .await
    .unwrap();
    app_release(dir, "1.0.0", 0.0);
    app_release(dir, "2.0.0", 0.0);

    let mut targets = String::new();
    for ((name, app), s) in HOSTS.iter().zip(&apps).zip(&sshd) {
        targets.push_str(&format!(
            r#"
[[targets]]
id = "{name}"
root = {root}
endpoint = "{endpoint}"
restart = ["sh", "-c", "echo restarted {{version}} on {{target}} >> {{root}}/restarts.log"]
keep = 2
ssh = {{ host = "127.0.0.1", port = {port}, user = "{user}", key_file = {key}, known_hosts = {known}, connect_timeout = "5s", command_timeout = "30s" }}
"#,
            root = q(&dir.join(name)),
            endpoint = app.server.url(""),
            port = s.port(),
            user = s.user(),
            key = q(&s.client_key()),
            known = q(&s.known_hosts()),
        ));
    }
    let text = format!(
        r#"
[environment]
name = "api"
state_dir = {state}

[release]
version = "2.0.0"
artifact = {artifact}

[strategy]
kind = "rolling"
batch = {{ count = 1 }}
analysis = "500ms"

[policies.probe]
interval = "50ms"
deadline = "10s"

[policies.drain]
timeout = "5s"
poll_interval = "50ms"

[policies.analysis]
interval = "250ms"

{targets}
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
window = "200ms"

[[smoke]]
name = "health says ok"
path = "/health"
body_contains = ['"version":"2.0.0"']
"#,
        state = q(&dir.join("state")),
        artifact = q(&dir.join("app-2.0.0")),
        socket = q(std::path::Path::new(&h.admin_socket().to_string())),
        state_file = q(h.state_file()),
    );
    let plan = PlanFile::parse("rolling.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("app-1.0.0")),
    )
    .await;
    haproxy_wait_up(&h, &HOSTS).await;

    let mut config = LoadConfig::new(4, 400_000);
    config.max_duration = Duration::from_secs(40);
    config.think_time = Duration::from_millis(2);
    let load = Load::start(h.frontend(), config, &["1.0.0", "2.0.0"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let served_v1 = load.served_by("1.0.0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    println!(
        "rolling over {} SSH hosts under load: sent {}, ok {}, failed {}, by version {:?}; {} steps in {:?}",
        HOSTS.len(),
        r.sent,
        r.ok,
        r.failed,
        r.by_slot,
        report.steps.len(),
        report.duration,
    );

    assert_eq!(haproxy_weights(&h, &HOSTS).await, [100, 100, 100]);
    for (name, app) in HOSTS.iter().zip(&apps) {
        assert_eq!(version_of(app).await, "2.0.0", "{name}");
        assert_eq!(
            std::fs::read_to_string(dir.join(name).join("restarts.log")).unwrap(),
            format!("restarted 1.0.0 on {name}\nrestarted 2.0.0 on {name}\n"),
            "restart commands ran over SSH"
        );
        assert_eq!(
            std::fs::read_link(dir.join(name).join("current")).unwrap(),
            std::path::Path::new("releases/2.0.0")
        );
        assert!(app.ok() > 0, "{name} served");
    }
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, r.sent);
    assert_eq!(
        r.by_slot["1.0.0"], served_v1,
        "no 1.0.0 after the last host"
    );
    assert!(r.by_slot["2.0.0"] > 0);
}
