//! The `deploy` command line on a plan file: `plan --json`, and a `run` whose pre-hook fails —
//! it stops before its step changes anything, is REFUSED and exits 4, and the `[notify]` webhook
//! receives the run's start, the rollback and the end (not the step-level noise).

use std::sync::{Arc, Mutex};

use deploy::plan_file::PlanFile;
use deploy::testing::{TestHttpServer, TestResponse};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::deploy_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_json_and_a_run_stopped_by_its_pre_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let a = common::slot_server(tmp.path().join("a")).await;
    let b = common::slot_server(tmp.path().join("b")).await;
    let events = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let seen = events.clone();
    let hooks = TestHttpServer::start(move |req| {
        seen.lock()
            .unwrap()
            .push(serde_json::from_slice(&req.body).unwrap_or_default());
        TestResponse::new(204)
    })
    .await
    .unwrap();
    let plan_path = tmp.path().join("plan.toml");
    let text = format!(
        r#"
[environment]
name = "cli"
state_dir = {state}

[release]
version = "2.0.0"
artifact = {artifact}

[strategy]
kind = "rolling"
batch = {{ count = 1 }}

[policies.probe]
interval = "50ms"
deadline = "3s"

[[targets]]
id = "a"
root = {a_root}
endpoint = "{a_url}"

[[targets]]
id = "b"
root = {b_root}
endpoint = "{b_url}"

[probe]
version_field = "version"

[[hooks]]
name = "change-freeze"
point = "before"
on = "activate"
command = ["sh", "-c", "echo frozen >&2; exit 4"]

[notify]
webhook = "{hook}"
"#,
        state = common::q(&tmp.path().join("state")),
        artifact = common::q(&common::artifact(tmp.path(), "2.0.0", false)),
        a_root = common::q(&tmp.path().join("a")),
        b_root = common::q(&tmp.path().join("b")),
        a_url = a.url(""),
        b_url = b.url(""),
        hook = hooks.url("/events"),
    );
    std::fs::write(&plan_path, &text).unwrap();
    // Both targets start on 1.0.0.
    let plan = PlanFile::parse("plan.toml", &text).unwrap();
    let engine = plan.engine(&deploy::adapters::Adapters::new()).unwrap();
    let v1 = deploy::Release::new(deploy::Version::new("1.0.0").unwrap())
        .with_artifact(common::artifact(tmp.path(), "1.0.0", false));
    common::install(&engine, &v1).await;

    let out = tokio::process::Command::new(deploy_bin())
        .args(["plan", "--json"])
        .arg(&plan_path)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["strategy"]["kind"], "rolling");
    assert_eq!(json["steps"][2]["op"], "activate");

    let out = tokio::process::Command::new(deploy_bin())
        .arg("run")
        .arg(&plan_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a before-hook's refusal changed nothing: exits 4, not 2 (rolled back)\n{stdout}"
    );
    assert!(stdout.contains("\nREFUSED: 2.0.0 to cli"), "{stdout}");
    assert!(!stdout.contains("ROLLED BACK"), "{stdout}");
    assert!(
        stdout.contains("stopped before it acted: hook change-freeze"),
        "{stdout}"
    );
    assert!(stdout.contains("exit code 4: frozen"), "{stdout}");
    for s in [&a, &b] {
        assert!(
            common::get(&s.url("/health")).await.contains("1.0.0"),
            "nothing was activated"
        );
    }
    let kinds: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("run_started"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"rollback_started".to_owned()), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run_finished"),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"step_started".to_owned()),
        "step-level events are off by default: {kinds:?}"
    );
}
