//! A team's deploys through one shared PostgreSQL state store, driven through the `deploy`
//! command line against real haproxy, the release-directory app and PostgreSQL: two "machines"
//! (two plan files with their own paths, one `[state]` store) queue behind one lock; a holder
//! paused past its lease is fenced off by the one that takes over; a run killed on one machine
//! is finished from another; a promoted release is gone back to by switching.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use deploy::adapters::Adapters;
use deploy::core::testing::process::{Signal, signal};
use deploy::haproxy::testing::{HaproxyFixture, Load, LoadConfig};
use deploy::plan_file::PlanFile;
use deploy::postgres::testing::PgServer;
use deploy::{Engine, Outcome, Release, Version};

const CANARY: &str = "kind = \"canary\"\nsteps = [{ set_weight = 25 }, \"pause_until_promoted\", { set_weight = 50 }, { analyze = \"1s\" }]";
const BLUE_GREEN: &str = "kind = \"blue_green\"\nbake = \"1s\"";

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    h: HaproxyFixture,
    blue: ReleaseApp,
    green: ReleaseApp,
    _pg: PgServer,
    state_url: String,
    /// Traffic through haproxy all along, so that the gates have something to judge.
    _load: Load,
}

/// Both slots on 1.0.0 behind haproxy; releases 2.0.0 and 3.0.0 built; a PostgreSQL database
/// for the shared state.
async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (h, blue, green) = two_slots(&dir).await;
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        app_release(&dir, v, 0.0);
    }
    let pg = PgServer::start().await.expect("start PostgreSQL");
    let db = pg.create_database().await.unwrap();
    let state_url = format!("postgres://postgres@127.0.0.1:{}/{}", pg.port(), db.dbname);
    let mut config = LoadConfig::new(2, 400_000);
    config.max_duration = Duration::from_secs(120);
    config.think_time = Duration::from_millis(5);
    let load = Load::start(h.frontend(), config, &["1.0.0", "2.0.0", "3.0.0"]);
    let w = World {
        _tmp: tmp,
        dir,
        h,
        blue,
        green,
        _pg: pg,
        state_url,
        _load: load,
    };
    let engine = w.engine(&w.plan("setup", "1.0.0", CANARY, "30s"));
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(w.dir.join("app-1.0.0")),
    )
    .await;
    haproxy_wait_up(&w.h, &["blue", "green"]).await;
    w
}

impl World {
    /// The plan file of one "machine" (`who`): its own path, the shared `[state]` store.
    fn plan(&self, who: &str, version: &str, strategy: &str, lease_ttl: &str) -> PathBuf {
        let text = plan_text(
            &self.dir,
            &self.h,
            &self.blue,
            &self.green,
            version,
            strategy,
        );
        let state_dir = format!("state_dir = {}\n", q(&self.dir.join("state")));
        assert!(text.contains(&state_dir));
        let text = text.replace(&state_dir, "")
            + &format!(
                "\n[state]\nkind = \"postgres\"\nurl = \"{}\"\nlease_ttl = \"{lease_ttl}\"\n",
                self.state_url
            );
        let machine = self.dir.join(who);
        std::fs::create_dir_all(&machine).unwrap();
        let path = machine.join(format!("{version}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn engine(&self, plan: &Path) -> Engine {
        let text = std::fs::read_to_string(plan).unwrap();
        PlanFile::parse("plan.toml", &text)
            .unwrap()
            .engine(&Adapters::new())
            .unwrap()
    }

    async fn weights(&self) -> Vec<u32> {
        haproxy_weights(&self.h, &["blue", "green"]).await
    }
}

/// Wait until the run held by `pid` is paused for promotion.
async fn wait_paused(engine: &Engine, pid: u32, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = engine.status().await
            && s.paused.is_some()
            && s.lock.as_ref().is_some_and(|l| l.pid == pid)
            && s.outcome.is_none()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never paused: {:?}\n{}",
            engine.status().await,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_queue_behind_one_lock_and_never_act_at_once() {
    let w = world().await;
    let plan_a = w.plan("laptop-a", "2.0.0", CANARY, "30s");
    let plan_b = w.plan("laptop-b", "3.0.0", BLUE_GREEN, "30s");
    let engine = w.engine(&plan_a);

    let log_a = w.dir.join("a.log");
    let mut a = spawn_deploy(&["run"], &plan_a, &log_a);
    wait_paused(&engine, a.0.id(), &log_a).await;
    assert_eq!(w.weights().await, [3, 1], "A's canary at 25 %");
    let a_run = engine.status().await.unwrap().unwrap().run_id;

    // B without --wait is refused, naming A's run.
    let (code, out) = deploy_cli(&["run"], &plan_b);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains(&format!("held by run {a_run}")), "{out}");

    // B with --wait queues, acting on nothing.
    let log_b = w.dir.join("b.log");
    let mut b = spawn_deploy(&["run", "--wait", "60s"], &plan_b, &log_b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        log_of(&log_b).contains(&format!("is locked by run {a_run}")),
        "{}",
        log_of(&log_b)
    );
    assert_eq!(w.weights().await, [3, 1], "B has not touched anything");
    assert_eq!(version_of(&w.blue).await, "1.0.0");

    // Promoted from B's machine: the request reaches A through the shared store.
    let (code, out) = deploy_cli(&["promote"], &plan_b);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        a.exit_code(Duration::from_secs(60)).await,
        Some(0),
        "{}",
        log_of(&log_a)
    );
    assert_eq!(
        b.exit_code(Duration::from_secs(60)).await,
        Some(0),
        "{}",
        log_of(&log_b)
    );

    // B planned from what A left: 3.0.0 went to the slot A left idle.
    assert_eq!(version_of(&w.green).await, "2.0.0");
    assert_eq!(version_of(&w.blue).await, "3.0.0");
    let weights = w.weights().await;
    assert!(weights[0] > 0 && weights[1] == 0, "{weights:?}");

    // The history: A then B, B's run starting only after A's ended.
    let history = engine.history().await.unwrap();
    let runs: Vec<(String, Outcome)> = history
        .iter()
        .map(|h| (h.version.to_string(), h.outcome))
        .collect();
    assert_eq!(
        runs,
        [
            ("2.0.0".to_owned(), Outcome::Promoted),
            ("3.0.0".to_owned(), Outcome::Promoted)
        ]
    );
    assert!(
        history[1].started_at >= history[0].started_at + history[0].duration,
        "B started {:?} after A started, A took {:?}",
        history[1]
            .started_at
            .duration_since(history[0].started_at)
            .unwrap_or_default(),
        history[0].duration
    );
    let (code, out) = deploy_cli(&["history"], &plan_b);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("canary 2.0.0 promoted") && out.contains("blue_green 3.0.0 promoted"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_is_fenced_off_by_the_one_that_took_over() {
    let w = world().await;
    let plan_a = w.plan("laptop-a", "2.0.0", CANARY, "1s");
    let plan_c = w.plan("ci-runner", "2.0.0", CANARY, "1s");
    let engine = w.engine(&plan_a);

    let log_a = w.dir.join("a.log");
    let mut a = spawn_deploy(&["run"], &plan_a, &log_a);
    wait_paused(&engine, a.0.id(), &log_a).await;
    assert_eq!(w.weights().await, [3, 1]);
    assert_eq!(version_of(&w.green).await, "2.0.0");

    // A stops (a laptop lid closed) past its lease.
    assert!(signal(a.0.id(), Signal::Stop).unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = engine.status().await.unwrap().unwrap();
    assert!(st.lock_stale, "the lease expired: {st}");

    // Another machine takes the lock over and rolls A's run back.
    let (code, out) = deploy_cli(&["rollback"], &plan_c);
    assert_eq!(code, 2, "rolled back\n{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(version_of(&w.green).await, "1.0.0");

    // A wakes: its next write is refused, it acts no further and says so.
    assert!(signal(a.0.id(), Signal::Cont).unwrap());
    let code = a.exit_code(Duration::from_secs(30)).await;
    let out = log_of(&log_a);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("lost its lock"), "{out}");
    // The live state is what the other machine left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(version_of(&w.green).await, "1.0.0");
    assert_eq!(version_of(&w.blue).await, "1.0.0");
    let st = engine.status().await.unwrap().unwrap();
    assert_eq!(st.outcome, Some(Outcome::RolledBack), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_on_one_machine_is_finished_from_another() {
    let w = world().await;
    let plan_a = w.plan("laptop-a", "2.0.0", CANARY, "30s");
    let plan_b = w.plan("laptop-b", "2.0.0", CANARY, "30s");
    let engine = w.engine(&plan_b);

    let log_a = w.dir.join("a.log");
    let mut a = spawn_deploy(&["run"], &plan_a, &log_a);
    wait_paused(&engine, a.0.id(), &log_a).await;
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    // Its session ends with the process, and its lock with it, long before the lease expires.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = engine.status().await.unwrap().unwrap();
        if st.lock_stale {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dead holder's lock is stale within seconds (lease 30 s): {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The other machine resumes it (it pauses again for promotion) and promotes it.
    let log_b = w.dir.join("b.log");
    let mut b = spawn_deploy(&["resume"], &plan_b, &log_b);
    wait_paused(&engine, b.0.id(), &log_b).await;
    assert_eq!(w.weights().await, [3, 1]);
    let (code, out) = deploy_cli(&["promote"], &plan_b);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        b.exit_code(Duration::from_secs(60)).await,
        Some(0),
        "{}",
        log_of(&log_b)
    );
    assert!(log_of(&log_b).contains("recovered from journal"));
    assert_eq!(w.weights().await, [0, 100]);
    assert_eq!(version_of(&w.green).await, "2.0.0");

    // history and status --fleet tell the truth from either machine.
    let (code, out) = deploy_cli(&["history"], &plan_a);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("canary 2.0.0 promoted"), "{out}");
    let (code, out) = deploy_cli(&["status", "--fleet"], &plan_a);
    assert_eq!(code, 0, "{out}");
    let green = out
        .lines()
        .find(|l| l.trim_start().starts_with("green"))
        .unwrap_or_default();
    assert!(green.contains("2.0.0") && green.contains("100 %"), "{out}");
    assert!(!out.contains("DRIFT"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_the_previous_release_by_switching_to_the_slot_that_kept_it() {
    let w = world().await;
    for (version, who) in [("2.0.0", "a"), ("3.0.0", "b")] {
        let plan = w.plan(who, version, BLUE_GREEN, "30s");
        let (code, out) = deploy_cli(&["run"], &plan);
        assert_eq!(code, 0, "{out}");
    }
    // 3.0.0 serves from blue; green kept 2.0.0.
    assert_eq!(version_of(&w.blue).await, "3.0.0");
    assert_eq!(version_of(&w.green).await, "2.0.0");
    // The plan of the machine that goes back (its smoke check expects the version it serves).
    let plan = w.plan("c", "2.0.0", BLUE_GREEN, "30s");

    let (code, out) = deploy_cli(&["rollback", "--to", "9.9.9"], &plan);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("no promoted run of 9.9.9"), "{out}");

    let (code, out) = deploy_cli(&["rollback", "--previous", "--dry-run"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("back to 2.0.0"), "{out}");
    assert!(out.contains("green: runs 2.0.0 still"), "{out}");
    assert!(
        !out.contains("prepare green"),
        "no upload for a slot that runs it\n{out}"
    );

    let t = Instant::now();
    let (code, out) = deploy_cli(&["rollback", "--previous"], &plan);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}");
    println!("switch back to 2.0.0 without upload: {took:?}");
    let weights = w.weights().await;
    assert!(weights[0] == 0 && weights[1] > 0, "{weights:?}");
    assert_eq!(version_of(&w.green).await, "2.0.0");
    assert_eq!(version_of(&w.blue).await, "3.0.0", "blue kept 3.0.0");
    let (code, out) = deploy_cli(&["history"], &plan);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_across_an_incompatible_migration_needs_the_backup_and_restores_it() {
    let w = world().await;
    let pg = PgServer::start()
        .await
        .expect("start the application's PostgreSQL");
    let app_db = pg.create_database().await.unwrap();
    let app_url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        pg.port(),
        app_db.dbname
    );
    let migrations = w.dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    let with_db = |plan: PathBuf| {
        let extra = format!(
            "\n[options]\nallow_destructive_migrations = true\n\n[migrations]\nkind = \"postgres\"\nurl = \"{app_url}\"\ndir = {}\nbackup_dir = {}\n",
            q(&migrations),
            q(&w.dir.join("backups"))
        );
        let text = std::fs::read_to_string(&plan).unwrap() + &extra;
        std::fs::write(&plan, text).unwrap();
        plan
    };
    let schema = |sql: &'static str| {
        let pg = &pg;
        let db = app_db.dbname.clone();
        async move { pg.query(&db, sql).await.unwrap() }
    };
    // 2.0.0 adds a table and a column (compatible), 3.0.0 drops the column (incompatible).
    std::fs::write(
        migrations.join("V1__items.sql"),
        "CREATE TABLE items (id int PRIMARY KEY, note text);\nINSERT INTO items VALUES (1, 'kept');\n",
    )
    .unwrap();
    let (code, out) = deploy_cli(&["run"], &with_db(w.plan("a", "2.0.0", BLUE_GREEN, "30s")));
    assert_eq!(code, 0, "{out}");
    std::fs::write(
        migrations.join("V2__drop_note.sql"),
        "ALTER TABLE items DROP COLUMN note;\n",
    )
    .unwrap();
    let (code, out) = deploy_cli(&["run"], &with_db(w.plan("b", "3.0.0", BLUE_GREEN, "30s")));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        schema("SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'note'").await,
        "0"
    );

    // Back to 2.0.0: its code reads `note`, which 3.0.0's migration dropped.
    let plan = with_db(w.plan("c", "2.0.0", BLUE_GREEN, "30s"));
    let (code, out) = deploy_cli(&["rollback", "--to", "2.0.0"], &plan);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("2 drop_note") && out.contains("name the backup to restore"),
        "{out}"
    );
    assert_eq!(version_of(&w.blue).await, "3.0.0", "nothing changed");
    let (code, history) = deploy_cli(&["history", "--json"], &plan);
    assert_eq!(code, 0, "{history}");
    let runs: serde_json::Value = serde_json::from_str(&history).unwrap();
    let backup = runs[1]["backup"]
        .as_str()
        .expect("3.0.0's run recorded its backup");
    assert!(out.contains(backup), "the refusal names the backup\n{out}");

    let (code, out) = deploy_cli(
        &["rollback", "--to", "2.0.0", "--restore-backup", backup],
        &plan,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("schema: backup"), "{out}");
    assert_eq!(
        schema("SELECT note FROM items WHERE id = 1").await,
        "kept",
        "the column and its value are back"
    );
    assert_eq!(
        schema(
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_version WHERE success"
        )
        .await,
        "1"
    );
    let weights = w.weights().await;
    assert!(weights[0] == 0 && weights[1] > 0, "{weights:?}");
    assert_eq!(version_of(&w.green).await, "2.0.0");
}
