//! Plans accepted before but refused now, at validation (the plan file read and checked, the
//! adapters built): no server is contacted and nothing is created in the state directory. Each
//! problem names its key path in plain words (no Rust type names). Real files in a temp dir.

use std::path::{Path, PathBuf};

use deploy::adapters::Adapters;
use deploy::plan_file::{PlanFile, PlanFileError};

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
endpoint = "http://127.0.0.1:8081"

[[targets]]
id = "green"
root = "/srv/shop/green"
endpoint = "http://127.0.0.1:8082"

[switch]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "shop"
"#;

struct Case {
    dir: tempfile::TempDir,
    plan: PathBuf,
}

/// `text` written as `plan.toml` in a fresh temp dir holding the artifact `build/shop-2.1.0`.
fn case(text: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("build/shop-2.1.0")).unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, text).unwrap();
    Case { dir, plan }
}

/// `BASE` with `from` replaced by `to` (which must be there).
fn edited(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

/// Validate the case's plan: the error, after checking that every problem names a key path,
/// that no message names a Rust type, and that nothing was created in the state directory.
fn refused(c: &Case) -> PlanFileError {
    let e = PlanFile::validate_file(&c.plan, &Adapters::new()).unwrap_err();
    for p in &e.problems {
        assert!(!p.path.is_empty() || p.message.contains("line "), "{p}");
        for rust in [
            "u8", "u16", "u32", "u64", "usize", "i64", "f64", "Duration", "struct ",
        ] {
            assert!(
                !p.message
                    .split(|ch: char| !ch.is_alphanumeric())
                    .any(|w| w == rust.trim()),
                "a Rust type in {p}"
            );
        }
    }
    assert!(
        !c.dir.path().join("state").exists(),
        "the state dir was created"
    );
    e
}

/// The message of the problem at `path` (fails when there is none).
fn at(e: &PlanFileError, path: &str) -> String {
    e.problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}: {e}"))
        .message
        .clone()
}

#[test]
fn the_base_plan_is_valid_and_its_paths_resolve_against_its_directory() {
    let c = case(BASE);
    let p = PlanFile::validate_file(&c.plan, &Adapters::new()).unwrap();
    let dir = std::path::absolute(c.dir.path()).unwrap();
    assert_eq!(p.environment.state_dir.unwrap(), dir.join("state"));
    assert_eq!(p.release.artifact.unwrap(), dir.join("build/shop-2.1.0"));
    assert_eq!(p.base_dir, dir);
    assert!(!c.dir.path().join("state").exists());
}

#[test]
fn a_probe_interval_of_zero_is_refused() {
    let e = refused(&case(&edited("interval = \"1s\"", "interval = \"0s\"")));
    assert!(at(&e, "policies.probe.interval").contains("duration such as"));
}

#[test]
fn a_probe_deadline_of_zero_is_refused() {
    let e = refused(&case(&edited("deadline = \"90s\"", "deadline = \"0s\"")));
    assert!(at(&e, "policies.probe.deadline").contains("no time to become healthy"));
}

const CANARY: (&str, &str) = ("kind = \"blue_green\"\nbake = \"1m\"", "kind = \"canary\"");

fn canary(steps: &str) -> String {
    edited(CANARY.0, &format!("{}\nsteps = {steps}", CANARY.1))
}

#[test]
fn canary_weights_going_down_are_refused() {
    let e = refused(&case(&canary(
        r#"[{ set_weight = 50 }, { analyze = "1m" }, { set_weight = 10 }]"#,
    )));
    let m = at(&e, "strategy.steps[2].set_weight");
    assert!(m.contains("10 is less than the 50 of steps[0]"), "{m}");
}

#[test]
fn a_canary_without_steps_is_refused() {
    let e = refused(&case(&canary("[]")));
    assert!(at(&e, "strategy.steps").contains("straight to 100 %"));
}

#[test]
fn a_set_weight_above_100_is_refused_before_any_server_is_asked() {
    let e = refused(&case(&canary(
        r#"[{ set_weight = 150 }, { analyze = "1m" }]"#,
    )));
    assert!(at(&e, "strategy.steps[0].set_weight").contains("150 is more than 100"));
    let e = refused(&case(&canary(r#"[{ set_weight = 300 }]"#)));
    let m = at(&e, "strategy.steps[0].set_weight");
    assert!(m.contains("a whole number from 0 to 100"), "{m}");
}

#[test]
fn an_analysis_of_no_time_is_refused() {
    let e = refused(&case(&canary(
        r#"[{ set_weight = 10 }, { analyze = "0s" }]"#,
    )));
    assert!(at(&e, "strategy.steps[1].analyze").contains("judges nothing"));
    let e = refused(&case(&edited(
        "bake = \"1m\"",
        "bake = \"1m\"\npre_switch_analysis = \"0s\"",
    )));
    at(&e, "strategy.pre_switch_analysis");
}

fn rolling(batch: &str) -> String {
    edited(
        CANARY.0,
        &format!("kind = \"rolling\"\nbatch = {batch}\nanalysis = \"1m\""),
    )
}

#[test]
fn a_rolling_batch_of_no_target_is_refused() {
    let e = refused(&case(&rolling("{ percent = 0 }")));
    assert!(at(&e, "strategy.batch.percent").contains("from 1 to 100"));
    let e = refused(&case(&rolling("{ count = 0 }")));
    assert!(at(&e, "strategy.batch.count").contains("at least 1"));
}

#[test]
fn a_rolling_batch_of_more_than_the_fleet_is_refused() {
    let e = refused(&case(&rolling("{ percent = 150 }")));
    assert!(at(&e, "strategy.batch.percent").contains("150 is not a share"));
}

#[test]
fn a_negative_error_rate_is_refused() {
    let text = format!(
        "{BASE}\n[[gates]]\nkind = \"promql\"\nprometheus = \"http://127.0.0.1:9090\"\n\
         preset = \"error_rate\"\nmax_error_rate = -1\nwindow = \"1m\"\n"
    );
    let e = refused(&case(&text));
    let m = at(&e, "gates[0]");
    assert!(
        m.contains("max_error_rate") && m.contains("between 0 and 1"),
        "{m}"
    );
}

#[test]
fn a_missing_artifact_is_refused() {
    let c = case(&edited("build/shop-2.1.0", "build/shop-9.9.9"));
    let e = refused(&c);
    let m = at(&e, "release.artifact");
    assert!(m.contains("shop-9.9.9 does not exist"), "{m}");
    assert!(m.contains(&c.dir.path().display().to_string()), "{m}");
}

#[test]
fn relative_paths_resolve_against_the_plan_file_not_the_current_directory() {
    // The plan lives in a subdirectory; the test's current directory is the package's.
    let c = case(BASE);
    let sub = c.dir.path().join("plans");
    std::fs::create_dir(&sub).unwrap();
    std::fs::rename(c.dir.path().join("build"), sub.join("build")).unwrap();
    let plan = sub.join("plan.toml");
    std::fs::rename(&c.plan, &plan).unwrap();
    let p = PlanFile::validate_file(&plan, &Adapters::new()).unwrap();
    let sub = std::path::absolute(&sub).unwrap();
    assert_eq!(p.environment.state_dir.unwrap(), sub.join("state"));
    assert_ne!(std::env::current_dir().unwrap(), sub);
    // The same text parsed with `parse_in` resolves against the directory given.
    let p = PlanFile::parse_in("plan.toml", BASE, Path::new("/etc/deploy")).unwrap();
    assert_eq!(
        p.environment.state_dir.unwrap(),
        Path::new("/etc/deploy/state")
    );
}

#[test]
fn a_bad_duration_names_its_key_and_what_is_expected() {
    let e = refused(&case(&canary(
        r#"[{ set_weight = 10 }, { analyze = "soon" }]"#,
    )));
    let m = at(&e, "strategy.steps[1].analyze");
    assert!(
        m.contains("expected a duration such as `30s` or `2m`"),
        "{m}"
    );
    let e = refused(&case(&edited("deadline = \"90s\"", "deadline = 90")));
    let m = at(&e, "policies.probe.deadline");
    assert!(m.contains("a duration such as"), "{m}");
}

#[test]
fn an_unknown_target_in_the_servers_map_is_named() {
    let text = edited(
        "backend = \"shop\"",
        "backend = \"shop\"\nservers = { blue = \"blue\", gren = \"green\" }",
    );
    let e = refused(&case(&text));
    let m = at(&e, "switch.servers.gren");
    assert!(m.contains("there is no target gren"), "{m}");
    assert!(at(&e, "switch.servers").contains("target green has no server"));
}

#[test]
fn a_state_dir_that_is_a_file_is_refused() {
    let c = case(BASE);
    std::fs::write(c.dir.path().join("state"), "not a directory").unwrap();
    let e = PlanFile::validate_file(&c.plan, &Adapters::new()).unwrap_err();
    let m = at(&e, "environment.state_dir");
    assert!(m.contains("exists and is not a directory"), "{m}");
    assert!(c.dir.path().join("state").is_file(), "left as it was");
}

#[test]
fn a_traffic_gate_before_the_switch_is_refused_unless_the_idle_slot_gets_traffic() {
    let gates = "\n[[gates]]\nkind = \"promql\"\nprometheus = \"http://127.0.0.1:9090\"\n\
                 preset = \"error_rate\"\nmax_error_rate = 0.01\nwindow = \"1m\"\n\
                 \n[[smoke]]\nname = \"front page\"\npath = \"/\"\n";
    let pre = edited(
        "bake = \"1m\"",
        "bake = \"1m\"\npre_switch_analysis = \"1m\"",
    );
    let e = refused(&case(&format!("{pre}{gates}")));
    let m = at(&e, "strategy.pre_switch_analysis");
    assert!(
        m.contains("error-rate (gates[0])")
            && m.contains("pre_switch_gates = [\"smoke\"]")
            && m.contains("idle_traffic = true"),
        "{m}"
    );
    for fix in ["pre_switch_gates = [\"smoke\"]", "idle_traffic = true"] {
        let text = format!("{pre}{gates}\n[policies.analysis]\n{fix}\n");
        PlanFile::validate_file(&case(&text).plan, &Adapters::new()).unwrap();
    }
    let text = format!("{pre}{gates}\n[policies.analysis]\npre_switch_gates = [\"smoek\"]\n");
    let e = refused(&case(&text));
    assert!(at(&e, "policies.analysis.pre_switch_gates[0]").contains("no gate is named"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = canary(r#"[{ set_weight = 50 }, { analyze = "0s" }, { set_weight = 10 }]"#)
        .replacen("interval = \"1s\"", "interval = \"0s\"", 1)
        .replacen("build/shop-2.1.0", "build/missing", 1);
    let e = refused(&case(&text));
    for path in [
        "strategy.steps[1].analyze",
        "strategy.steps[2].set_weight",
        "policies.probe.interval",
    ] {
        at(&e, path);
    }
    // The file's own problems come first; what this machine lacks is checked once it parses.
    let c = case(
        &BASE
            .replacen("build/shop-2.1.0", "build/missing", 1)
            .replacen("deadline = \"90s\"", "deadline = \"0s\"", 1),
    );
    let e = refused(&c);
    at(&e, "policies.probe.deadline");
}

/// The shipped plans of `examples/plans/`, validated as written. Each is copied into a temp
/// dir beside a placeholder of the artifact it names (`build/...`, relative to the plan).
/// What only the deploying machine has — the secrets the plans read from the environment or
/// from files (`DEPLOY_CHAT_WEBHOOK`, `DATABASE_URL`, SSH keys, ...) — is the one kind of
/// problem accepted here (a test cannot set environment variables without `unsafe`).
#[test]
fn the_shipped_plans_validate_and_their_comments_match_the_semantics() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        names.push(path.file_name().unwrap().to_str().unwrap().to_owned());
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = PlanFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let artifact = parsed.release.artifact.as_ref().unwrap();
        let relative = artifact.strip_prefix(&shipped).unwrap();
        let c = case(&text);
        std::fs::create_dir_all(c.dir.path().join(relative)).unwrap();
        let plan = PlanFile::load(&c.plan).unwrap();
        if let Err(e) = plan.validate(&Adapters::new()) {
            let unexpected: Vec<String> = e
                .problems
                .iter()
                .filter(|p| {
                    !(p.message.contains("is not set")
                        || p.message.contains("No such file")
                        || p.message.contains("cannot read")
                        || p.message.contains("does not exist"))
                        || p.path == "release.artifact"
                })
                .map(ToString::to_string)
                .collect();
            assert!(unexpected.is_empty(), "{}: {unexpected:#?}", path.display());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "blue-green.toml",
            "canary.toml",
            "recreate.toml",
            "rolling.toml"
        ]
    );

    // canary.toml: "one failed measurement is noise, a second in a row rolls back; a third
    // failure in one analysis rolls back": a limit is what is tolerated.
    let canary = PlanFile::load(&shipped.join("canary.toml")).unwrap();
    let a = &canary.policies.analysis;
    assert_eq!(a.consecutive_failure_limit.map(|l| l + 1), Some(2));
    assert_eq!(a.failure_limit + 1, 3);
    // blue-green.toml: "one failed measurement per gate is tolerated; a second rolls back", and
    // only the smoke checks judge the idle slot before the switch.
    let bg = PlanFile::load(&shipped.join("blue-green.toml")).unwrap();
    let a = &bg.policies.analysis;
    assert_eq!(a.failure_limit + 1, 2);
    assert_eq!(
        a.pre_switch_gates.as_deref(),
        Some(&["smoke".to_owned()][..])
    );
    assert!(!bg.smoke.is_empty() && !bg.gates.is_empty() && !a.idle_traffic);
}
