//! A plan file read, checked, turned into an engine and run: release directories on this
//! machine, HTTP probes, hooks and smoke checks real; the switch from the adapter factory.

use std::sync::Arc;

use deploy::Outcome;
use deploy::plan_file::{AdapterFactory, PlanFile, Problem};
use deploy::testing::FakeSwitch;
use deploy::{DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTrafficSwitch};
use tokio_util::sync::CancellationToken;

mod common;

/// Gives every plan the same in-memory switch; refuses the other adapter sections.
struct Fakes(Arc<FakeSwitch>);

fn refuse<T>(path: &str) -> Result<T, Vec<Problem>> {
    Err(vec![Problem {
        path: path.to_owned(),
        message: "not available in this test".into(),
    }])
}

impl AdapterFactory for Fakes {
    fn switch(&self, section: &toml::Value) -> Result<DynTrafficSwitch, Vec<Problem>> {
        match section.get("kind").and_then(|k| k.as_str()) {
            Some("memory") => Ok(self.0.clone()),
            other => Err(vec![Problem {
                path: "switch.kind".into(),
                message: format!("unknown switch {other:?}"),
            }]),
        }
    }
    fn gate(&self, path: &str, _: &toml::Value) -> Result<DynMetricGate, Vec<Problem>> {
        refuse(path)
    }
    fn migrations(&self, _: &toml::Value) -> Result<DynMigrationRunner, Vec<Problem>> {
        refuse("migrations")
    }
    fn maintenance(&self, _: &toml::Value) -> Result<DynMaintenance, Vec<Problem>> {
        refuse("maintenance")
    }
    fn ssh_host(&self, path: &str, _: &toml::Value) -> Result<DynHost, Vec<Problem>> {
        refuse(path)
    }
}

#[tokio::test]
async fn a_plan_file_drives_a_blue_green_deploy_with_hooks_and_smoke_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let blue = common::slot_server(tmp.path().join("blue")).await;
    let green = common::slot_server(tmp.path().join("green")).await;
    let hook_log = tmp.path().join("hooks.log");
    let plan_text = format!(
        r#"
[environment]
name = "staging"
state_dir = "{state}"

[release]
version = "2.0.0"
artifact = "{artifact}"

[strategy]
kind = "blue_green"
pre_switch_analysis = "200ms"

[policies.probe]
interval = "50ms"
deadline = "3s"
[policies.analysis]
interval = "100ms"

[[targets]]
id = "blue"
root = "{root}/blue"
endpoint = "{blue}"

[[targets]]
id = "green"
root = "{root}/green"
endpoint = "{green}"

[switch]
kind = "memory"

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[[smoke]]
name = "health says ok"
path = "/health"
body_contains = ['"status":"ok"']

[[hooks]]
name = "log"
point = "after"
on = "set_weights"
command = ["sh", "-c", "echo switched to {{version}} >> {log}"]
"#,
        state = tmp.path().join("state").display(),
        artifact = common::artifact(tmp.path(), "2.0.0", false).display(),
        root = tmp.path().display(),
        blue = blue.url(""),
        green = green.url(""),
        log = hook_log.display(),
    );
    let plan = PlanFile::parse("staging.toml", &plan_text).unwrap();
    let switch = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
    let engine = plan.engine(&Fakes(switch.clone())).unwrap();
    // Both slots start on 1.0.0.
    let v1 = deploy::Release::new(deploy::Version::new("1.0.0").unwrap())
        .with_artifact(common::artifact(tmp.path(), "1.0.0", false));
    for t in engine.environment().targets() {
        t.prepare(&v1).await.unwrap();
        t.activate(&v1.version).await.unwrap();
    }
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
    assert_eq!(switch.current().to_string(), "blue=0,green=100");
    assert!(common::get(&green.url("/health")).await.contains("2.0.0"));
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        "switched to 2.0.0\n"
    );
    assert!(
        report
            .verdicts
            .iter()
            .all(|v| v.gate == "smoke" && v.verdict.kind == deploy::VerdictKind::Pass)
    );
    assert_eq!(
        report.verdicts.len(),
        2,
        "pre-switch analysis: 200 ms / 100 ms"
    );
    let status = engine.status().await.unwrap().unwrap();
    assert_eq!(status.outcome, Some(Outcome::Promoted));
}

#[test]
fn adapter_problems_are_reported_with_the_rest() {
    let plan = PlanFile::parse(
        "x.toml",
        r#"
[environment]
name = "x"
state_dir = "/tmp/x"
[release]
version = "1"
[strategy]
kind = "canary"
steps = [{ set_weight = 10 }]
[[targets]]
id = "a"
root = "/srv/a"
endpoint = "http://127.0.0.1:1"
ssh = { address = "a:22" }
[switch]
kind = "carrier-pigeon"
[[gates]]
kind = "promql"
"#,
    )
    .unwrap();
    let err = plan
        .environment(&Fakes(Arc::new(FakeSwitch::new(&[]))))
        .unwrap_err();
    let text = err.to_string();
    for expected in [
        "targets[0].ssh: not available in this test",
        "switch.kind: unknown switch Some(\"carrier-pigeon\")",
        "gates[0]: not available in this test",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[test]
fn a_plan_file_is_read_with_a_limit_and_an_endless_one_is_refused() {
    let e = PlanFile::load(std::path::Path::new("/dev/zero")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("/dev/zero") && text.contains("larger than the limit of 1 MiB"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 1024 * 1024 + 1]).unwrap();
    assert!(
        PlanFile::load(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than the limit of 1 MiB")
    );
}

#[test]
fn secrets_come_from_the_environment_or_a_file_and_inline_ones_are_warned_about() {
    let base = r#"
[environment]
name = "prod"
state_dir = "/var/lib/deploy/prod"

[release]
version = "2.0.0"

[strategy]
kind = "recreate"

[[targets]]
id = "web"
root = "/srv/web"
endpoint = "http://127.0.0.1:8080"
"#;
    let inline = format!(
        "{base}\n[notify]\nwebhook = \"https://hooks.example/services/T1/B2/s3cr3tT0ken\"\n"
    );
    let p = PlanFile::parse("plan.toml", &inline).unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(p.warnings[0].path, "notify.webhook");
    assert!(
        p.warnings[0].message.contains("webhook_env")
            && p.warnings[0].message.contains("webhook_file"),
        "{}",
        p.warnings[0]
    );
    let debug = format!("{p:?}");
    assert!(!debug.contains("s3cr3tT0ken"), "{debug}");
    let from_env = format!("{base}\n[notify]\nwebhook_env = \"CHAT_WEBHOOK\"\n");
    let p = PlanFile::parse("plan.toml", &from_env).unwrap();
    assert!(p.warnings.is_empty());
    let e = p
        .notify
        .unwrap()
        .webhook_source()
        .unwrap()
        .read()
        .unwrap_err();
    assert_eq!(e, "environment variable CHAT_WEBHOOK is not set");
    let both =
        format!("{base}\n[notify]\nwebhook_env = \"A\"\nwebhook_file = \"/run/secrets/hook\"\n");
    let e = PlanFile::parse("plan.toml", &both).unwrap_err();
    assert!(
        e.to_string()
            .contains("give one of webhook, webhook_env, webhook_file"),
        "{e}"
    );
}
