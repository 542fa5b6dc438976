//! The bad plans an operator wrote, as the `deploy` binary meets them: `validate`, `plan` and
//! `run` each exit 1 (the plan is unusable; nothing was changed), the message names the key in
//! plain words (no Rust type names), and nothing is created in the state directory. The
//! HAProxy socket the plan names does not exist, so a command that reached a server would fail
//! differently — these are refused before any server is asked. One test per case.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::deploy_bin;

/// A blue-green plan whose relative paths (state directory, artifact) lie beside it.
const BASE: &str = r#"
[environment]
name = "shop"
state_dir = "state"

[release]
version = "2.1.0"
artifact = "build/shop-2.1.0"

[strategy]
kind = "blue_green"
bake = "1m"

[policies.probe]
interval = "1s"
deadline = "90s"

[[targets]]
id = "blue"
root = "/srv/shop/blue"
endpoint = "http://127.0.0.1:9"

[[targets]]
id = "green"
root = "/srv/shop/green"
endpoint = "http://127.0.0.1:9"

[switch]
kind = "haproxy"
socket = "/nonexistent/haproxy.sock"
backend = "shop"
"#;

/// `BASE` with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

fn canary(steps: &str) -> String {
    edited(
        "kind = \"blue_green\"\nbake = \"1m\"",
        &format!("kind = \"canary\"\nsteps = {steps}"),
    )
}

fn rolling(batch: &str) -> String {
    edited(
        "kind = \"blue_green\"\nbake = \"1m\"",
        &format!("kind = \"rolling\"\nbatch = {batch}"),
    )
}

/// `text` as `plan.toml` in a temp dir that holds the artifact `build/shop-2.1.0`.
fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("build/shop-2.1.0")).unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, text).unwrap();
    (dir, plan)
}

/// Every command that reads a plan to act refuses it: exit 1, `key` and `words` in its message,
/// no Rust type named, the state directory as it was.
fn refused(dir: &Path, plan: &Path, key: &str, words: &str) {
    let state = dir.join("state");
    let state_before = state.exists();
    for cmd in ["validate", "plan", "run"] {
        let out = Command::new(deploy_bin())
            .arg(cmd)
            .arg(plan)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "deploy {cmd}: {text}");
        assert!(
            text.contains(&format!("- {key}: ")),
            "deploy {cmd} names {key}: {text}"
        );
        assert!(text.contains(words), "deploy {cmd} says {words:?}: {text}");
        for rust in ["u8", "u32", "u64", "usize", "f64", "Duration"] {
            assert!(
                !text
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|w| w == rust),
                "deploy {cmd} names a Rust type: {text}"
            );
        }
        assert_eq!(
            state.exists(),
            state_before,
            "deploy {cmd} touched {state:?}"
        );
        assert!(
            !text.contains("/nonexistent/haproxy.sock: "),
            "asked HAProxy: {text}"
        );
    }
}

macro_rules! bad_plan {
    ($($name:ident: $text:expr => $key:expr, $words:expr;)*) => {$(
        #[test]
        fn $name() {
            let (dir, plan) = write(&$text);
            refused(dir.path(), &plan, $key, $words);
        }
    )*};
}

bad_plan! {
    a_probe_interval_of_zero: edited("interval = \"1s\"", "interval = \"0s\"")
        => "policies.probe.interval", "duration such as";
    a_probe_deadline_of_zero: edited("deadline = \"90s\"", "deadline = \"0s\"")
        => "policies.probe.deadline", "no time to become healthy";
    canary_weights_going_down: canary(r#"[{ set_weight = 50 }, { analyze = "1m" }, { set_weight = 10 }]"#)
        => "strategy.steps[2].set_weight", "10 is less than the 50 of steps[0]";
    a_canary_without_steps: canary("[]")
        => "strategy.steps", "straight to 100 %";
    a_set_weight_of_150: canary(r#"[{ set_weight = 150 }, { analyze = "1m" }]"#)
        => "strategy.steps[0].set_weight", "150 is more than 100";
    an_analysis_of_no_time: canary(r#"[{ set_weight = 10 }, { analyze = "0s" }]"#)
        => "strategy.steps[1].analyze", "judges nothing";
    a_rolling_percent_of_zero: rolling("{ percent = 0 }")
        => "strategy.batch.percent", "from 1 to 100";
    a_rolling_count_of_zero: rolling("{ count = 0 }")
        => "strategy.batch.count", "at least 1";
    a_rolling_percent_of_150: rolling("{ percent = 150 }")
        => "strategy.batch.percent", "150 is not a share";
    a_negative_error_rate: format!(
            "{BASE}\n[[gates]]\nkind = \"promql\"\nprometheus = \"http://127.0.0.1:9\"\n\
             preset = \"error_rate\"\nmax_error_rate = -1\nwindow = \"1m\"\n"
        )
        => "gates[0]", "between 0 and 1";
    a_missing_artifact: edited("build/shop-2.1.0", "build/shop-9.9.9")
        => "release.artifact", "shop-9.9.9 does not exist";
    a_duration_that_is_no_duration: canary(r#"[{ set_weight = 10 }, { analyze = "soon" }]"#)
        => "strategy.steps[1].analyze", "a duration such as `30s` or `2m`";
    an_unknown_target_in_the_servers_map: edited(
            "backend = \"shop\"",
            "backend = \"shop\"\nservers = { blue = \"blue\", gren = \"green\" }",
        )
        => "switch.servers.gren", "there is no target gren";
    a_traffic_gate_before_the_switch: format!(
            "{}\n[[gates]]\nkind = \"promql\"\nprometheus = \"http://127.0.0.1:9\"\n\
             preset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"1m\"\n",
            edited("bake = \"1m\"", "bake = \"1m\"\npre_switch_analysis = \"1m\"")
        )
        => "strategy.pre_switch_analysis", "idle_traffic = true";
}

#[test]
fn a_state_dir_that_is_a_file() {
    let (dir, plan) = write(BASE);
    std::fs::write(dir.path().join("state"), "not a directory").unwrap();
    refused(
        dir.path(),
        &plan,
        "environment.state_dir",
        "exists and is not a directory",
    );
    assert!(dir.path().join("state").is_file(), "left as it was");
}

#[test]
fn a_relative_state_dir_is_the_plan_file_s_whatever_the_current_directory() {
    let (dir, plan) = write(BASE);
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(deploy_bin())
        .arg("validate")
        .arg(&plan)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `status` reads the state directory beside the plan, from any directory.
    let out = Command::new(deploy_bin())
        .arg("status")
        .arg(&plan)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&dir.path().join("state").display().to_string()),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none()
    );
}
