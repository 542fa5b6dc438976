//! `kill -9` of the deploying process in the middle of a canary, then `deploy rollback` — or
//! `deploy resume` and `deploy promote` — with the compiled `deploy` example, as an operator
//! would run it: real haproxy, release directories, bounded load on the front end throughout,
//! and the final state read back from haproxy and the apps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy::adapters::Adapters;
use deploy::haproxy::testing::{HaproxyFixture, Load, LoadConfig};
use deploy::plan_file::PlanFile;
use deploy::{Engine, Release, Step, Version};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{
    Killed, ReleaseApp, app_release, deploy_cli, haproxy_wait_up, haproxy_weights, install,
    plan_text, spawn_deploy, two_slots, version_of,
};

/// `deploy <args> <plan>` in the background, its output in `log`.
fn spawn(args: &[&str], plan: &Path, log: &Path) -> Killed {
    spawn_deploy(args, plan, log)
}

/// `deploy <args> <plan>` to the end: its exit code and output.
fn run(args: &[&str], plan: &Path) -> (i32, String) {
    deploy_cli(args, plan)
}

/// Wait until the run journaled in the state dir is paused for promotion, held by `pid`.
async fn wait_paused(engine: &Engine, pid: u32, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = engine.status().await
            && matches!(s.current_step, Some(Step::Pause { duration: None }))
            && s.lock.as_ref().is_some_and(|l| l.pid == pid)
            && s.outcome.is_none()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the canary never paused: {:?}\n{}",
            engine.status().await,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    h: HaproxyFixture,
    blue: ReleaseApp,
    green: ReleaseApp,
    plan: PathBuf,
    engine: Engine,
    load: Load,
}

/// Both slots on 1.0.0 behind haproxy, load running, a canary plan for 2.0.0 that pauses for
/// promotion at 25 %; then `deploy run` is killed with SIGKILL while paused.
async fn killed_mid_canary() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (h, blue, green) = two_slots(&dir).await;
    app_release(&dir, "1.0.0", 0.0);
    app_release(&dir, "2.0.0", 0.0);
    let text = plan_text(
        &dir,
        &h,
        &blue,
        &green,
        "2.0.0",
        "kind = \"canary\"\nsteps = [{ set_weight = 25 }, \"pause_until_promoted\", { set_weight = 50 }, { analyze = \"1s\" }]",
    );
    let plan_path = dir.join("canary.toml");
    std::fs::write(&plan_path, &text).unwrap();
    let plan = PlanFile::parse("canary.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("app-1.0.0")),
    )
    .await;
    haproxy_wait_up(&h, &["blue", "green"]).await;
    let mut config = LoadConfig::new(4, 400_000);
    config.max_duration = Duration::from_secs(50);
    config.think_time = Duration::from_millis(2);
    let load = Load::start(h.frontend(), config, &["1.0.0", "2.0.0"]);

    let log = dir.join("run.log");
    let mut child = spawn(&["run"], &plan_path, &log);
    wait_paused(&engine, child.0.id(), &log).await;
    assert_eq!(
        haproxy_weights(&h, &["blue", "green"]).await,
        [3, 1],
        "25 % on the canary"
    );
    assert_eq!(version_of(&green).await, "2.0.0");
    // kill -9: no handler runs, the lock and the journal stay behind.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let s = engine.status().await.unwrap().unwrap();
    assert!(s.lock_stale, "the dead process's lock is stale: {s}");
    assert_eq!(s.outcome, None);
    let (code, out) = run(&["status"], &plan_path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2.0.0"), "{out}");
    Setup {
        _tmp: tmp,
        dir,
        h,
        blue,
        green,
        plan: plan_path,
        engine,
        load,
    }
}

async fn finish_load(s: Setup, what: &str) -> deploy::haproxy::testing::LoadReport {
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.load.stop();
    let r = s.load.finish().await;
    println!(
        "{what}: sent {}, ok {}, failed {}, by version {:?}",
        r.sent, r.ok, r.failed, r.by_slot
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_canary_then_rollback_restores_the_old_release_and_weights() {
    let s = killed_mid_canary().await;
    let (code, out) = run(&["rollback"], &s.plan);
    assert_eq!(code, 2, "rolled back exits 2\n{out}");
    assert!(
        out.contains("rollback requested after the deploying process died"),
        "{out}"
    );

    assert_eq!(haproxy_weights(&s.h, &["blue", "green"]).await, [100, 0]);
    assert_eq!(version_of(&s.blue).await, "1.0.0");
    assert_eq!(
        version_of(&s.green).await,
        "1.0.0",
        "the canary slot is back"
    );
    let st = s.engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(deploy::Outcome::RolledBack));
    assert!(st.lock.is_none() && !st.lock_stale, "{st}");
    let (code, out) = run(&["rollback"], &s.plan);
    assert_eq!(code, 0, "nothing left to recover\n{out}");
    assert!(out.contains("nothing to recover"), "{out}");
    assert!(s.dir.join("state").exists());
    let served_v2 = s.load.served_by("2.0.0");
    let r = finish_load(s, "kill -9 then rollback").await;
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(served_v2 > 0, "the canary took traffic before the kill");
    assert_eq!(r.by_slot["2.0.0"], served_v2, "no 2.0.0 after the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_canary_then_resume_and_promote_finishes_the_deploy() {
    let s = killed_mid_canary().await;
    let log = s.dir.join("resume.log");
    let mut resumed = spawn(&["resume"], &s.plan, &log);
    wait_paused(&s.engine, resumed.0.id(), &log).await;
    assert_eq!(
        haproxy_weights(&s.h, &["blue", "green"]).await,
        [3, 1],
        "still 25 % on the canary while paused again"
    );
    let (code, out) = run(&["promote"], &s.plan);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = resumed.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "resume never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "promoted exits 0\n{out}");
    assert!(out.contains("recovered from journal"), "{out}");

    assert_eq!(haproxy_weights(&s.h, &["blue", "green"]).await, [0, 100]);
    assert_eq!(version_of(&s.green).await, "2.0.0");
    let st = s.engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(deploy::Outcome::Promoted));
    let r = finish_load(s, "kill -9 then resume + promote").await;
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.by_slot["2.0.0"] > 0);
}
