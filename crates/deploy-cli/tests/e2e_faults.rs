//! The fault suite: every way the "fully new or fully old, and promoted only on evidence"
//! promise was seen to break, driven through the `deploy` command line as an operator runs it,
//! against real haproxy (Runtime API), the demo application in release-directory slots, a real
//! PostgreSQL and a real Prometheus, with bounded load through haproxy's frontend.
//!
//! Each test asserts the live end state — the weights haproxy applies, the version each slot
//! serves, the schema — and that `status`, `resume` and `rollback` still work afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy::adapters::Adapters;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::{DeployError, Outcome};
use deploy::{Engine, Release, Version};
use tokio_util::sync::CancellationToken;

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{
    DemoApp, Killed, deploy_bin, deploy_cli, get, haproxy_wait_up, install, q, spawn_deploy,
};

/// Two release-directory slots, `one` (live, weight 100) and `two` (idle), each served by the
/// demo application, behind a real haproxy; both on 1.0.0.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    h: HaproxyFixture,
    one: DemoApp,
    two: DemoApp,
}

const BLUE_GREEN: &str = "kind = \"blue_green\"";

impl World {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let one = DemoApp::start(&dir.join("one"));
        let two = DemoApp::start(&dir.join("two"));
        let h = HaproxyFixture::start(FixtureConfig::new(vec![
            ServerSpec::new("one", one.addr, 100),
            ServerSpec::new("two", two.addr, 0),
        ]))
        .await
        .unwrap();
        let w = Self {
            _tmp: tmp,
            dir,
            h,
            one,
            two,
        };
        w.release("1.0.0", "");
        let plan = w.plan("install", "1.0.0", BLUE_GREEN, "");
        install(
            &w.engine(&plan),
            &Release::new(Version::new("1.0.0").unwrap()).with_artifact(w.dir.join("app-1.0.0")),
        )
        .await;
        haproxy_wait_up(&w.h, &["one", "two"]).await;
        w
    }

    /// The release `version` (`app.conf` with `extra` lines), as an artifact directory.
    fn release(&self, version: &str, extra: &str) {
        let d = self.dir.join(format!("app-{version}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("app.conf"), format!("version={version}\n{extra}\n")).unwrap();
    }

    /// Write the plan file `<name>.toml` deploying `version` with `strategy`; `extra` is
    /// appended (tables: policies, gates, migrations).
    fn plan(&self, name: &str, version: &str, strategy: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"
[environment]
name = "faults"
state_dir = {state}

[release]
version = "{version}"
artifact = {artifact}

[strategy]
{strategy}

[policies.probe]
interval = "50ms"
deadline = "5s"

[[targets]]
id = "one"
root = {one}
endpoint = "http://{one_addr}"

[[targets]]
id = "two"
root = {two}
endpoint = "http://{two_addr}"

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"
state_file = {state_file}
{extra}
"#,
            state = q(&self.dir.join("state")),
            artifact = q(&self.dir.join(format!("app-{version}"))),
            one = q(&self.dir.join("one")),
            two = q(&self.dir.join("two")),
            one_addr = self.one.addr,
            two_addr = self.two.addr,
            socket = q(Path::new(&self.h.admin_socket().to_string())),
            state_file = q(self.h.state_file()),
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, &text).unwrap();
        path
    }

    /// The engine a plan file builds (to read status, or run a plan as a library user).
    fn engine(&self, plan: &Path) -> Engine {
        let text = std::fs::read_to_string(plan).unwrap();
        PlanFile::parse(&plan.display().to_string(), &text)
            .unwrap()
            .engine(&Adapters::new())
            .unwrap()
    }

    /// The weights haproxy applies to `one` and `two`.
    async fn weights(&self) -> [u32; 2] {
        let c = self.h.client();
        [
            c.get_weight("app", "one").await.unwrap().0,
            c.get_weight("app", "two").await.unwrap().0,
        ]
    }

    /// The versions the two slots serve, as their health endpoints say.
    async fn versions(&self) -> [String; 2] {
        let v = |body: String| {
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        [
            v(get(&self.one.url("/health")).await),
            v(get(&self.two.url("/health")).await),
        ]
    }

    /// Bounded load through haproxy's frontend, so that the gates have traffic to judge.
    fn load(&self) -> Load {
        let mut config = LoadConfig::new(2, 200_000);
        config.max_duration = Duration::from_secs(60);
        config.think_time = Duration::from_millis(5);
        Load::start(
            self.h.frontend(),
            config,
            &[
                "hello from 1.0.0\n",
                "hello from 2.0.0\n",
                "hello from 3.0.0\n",
            ],
        )
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Wait until the newest run in the state directory waits for the operator.
    async fn wait_paused(&self, engine: &Engine, log: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if engine
                .status()
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.paused.is_some() && s.outcome.is_none())
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the run never paused\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The JSON report of the newest run, validated against the report schema.
fn last_report(w: &World) -> serde_json::Value {
    let runs = w.state().join("runs");
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".report.json"))
        .collect();
    reports.sort();
    let report = serde_json::from_slice(&std::fs::read(reports.last().unwrap()).unwrap()).unwrap();
    // Every report these faults produce matches the published schema.
    if let Err(e) = common::validate_report(&report) {
        panic!("the report does not match schemas/report-v1.schema.json: {e}\n{report:#}");
    }
    report
}

async fn stop(load: Load) {
    load.stop();
    let r = load.finish().await;
    println!(
        "load: sent {}, ok {}, failed {} {:?}",
        r.sent, r.ok, r.failed, r.by_slot
    );
}

const CANARY_PAUSED: &str = "kind = \"canary\"\nsteps = [{ set_weight = 25 }, \"pause_until_promoted\", { set_weight = 50 }]";

// 1. A scrape gate's window is longer than the analysis time limit: every measurement timed
//    out, and a release failing 20 % of its requests was promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_1_a_gate_that_outlasts_the_time_limit_never_promotes_a_failing_release() {
    let w = World::start().await;
    w.release("2.0.0", "error_rate=0.2");
    let plan = w.plan(
        "bg",
        "2.0.0",
        "kind = \"blue_green\"\nbake = \"3s\"",
        r#"
[policies.analysis]
interval = "1s"
timeout = "500ms"

[[gates]]
kind = "scrape"
preset = "error_rate"
max_error_rate = 0.01
window = "2s"
"#,
    );
    let (code, out) = deploy_cli(&["plan"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "3 measurements per gate, one every 1s, but each needs 2s (a gate's window): takes 6s"
        ),
        "plan shows the analysis's real wall time\n{out}"
    );
    let load = w.load();
    let (code, out) = deploy_cli(&["run"], &plan);
    stop(load).await;
    assert_eq!(code, 2, "rolled back exits 2\n{out}");
    assert!(out.contains("failed (1 failure(s)"), "{out}");
    assert_eq!(w.weights().await, [100, 0], "all traffic on the old slot");
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
}

// 1b. A PromQL gate looking back further than the analysis lasts is refused at `plan`, with a
//     real Prometheus: it would judge traffic from before the analysis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_1_an_analysis_a_promql_gate_cannot_judge_is_refused_at_planning() {
    use deploy::prometheus::testing::{PrometheusServer, ScrapeTarget};
    let w = World::start().await;
    let prom = PrometheusServer::start(&[
        ScrapeTarget::new("one", w.one.addr),
        ScrapeTarget::new("two", w.two.addr),
    ])
    .await
    .unwrap();
    w.release("2.0.0", "");
    let plan = w.plan(
        "bg",
        "2.0.0",
        "kind = \"blue_green\"\nbake = \"30s\"",
        &format!(
            r#"
[[gates]]
kind = "promql"
prometheus = "{}"
preset = "error_rate"
max_error_rate = 0.01
window = "5m"
"#,
            prom.url()
        ),
    );
    for cmd in ["plan", "run"] {
        let (code, out) = deploy_cli(&[cmd], &plan);
        assert_eq!(code, 1, "{cmd}: {out}");
        assert!(
            out.contains("cannot judge the analysis \"bake\": it looks back over 5m but the analysis lasts 30s"),
            "{cmd}: {out}"
        );
    }
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
}

// 2. `promote` and `abort` with no run in progress said "asked the run…", exited 0 and left the
//    request behind; the next canary's pause ended at once with no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_2_requests_without_a_run_are_refused_and_never_reach_the_next_run() {
    let w = World::start().await;
    w.release("2.0.0", "");
    let plan = w.plan("canary", "2.0.0", CANARY_PAUSED, "");
    for cmd in ["promote", "abort"] {
        let (code, out) = deploy_cli(&[cmd], &plan);
        assert_eq!(code, 4, "{cmd} is refused\n{out}");
        assert!(out.contains("no run is in progress"), "{out}");
        assert!(
            !w.state().join("control.json").exists(),
            "{cmd} left a request"
        );
    }
    let engine = w.engine(&plan);
    let log = w.dir.join("run.log");
    let mut run = spawn_deploy(&["run"], &plan, &log);
    w.wait_paused(&engine, &log).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the pause ended with no operator\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(w.weights().await, [3, 1], "25 % on the canary while paused");
    let (code, out) = deploy_cli(&["status"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PAUSED (until promoted)"), "{out}");
    // The pause says how to end it, in the run's own output.
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(&format!("`deploy promote {}` carries on", plan.display())),
        "{said}"
    );
    // A second terminal follows the run live until it ends.
    let watch_log = w.dir.join("watch.log");
    let mut watch = spawn_deploy(&["status", "--watch"], &plan, &watch_log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, out) = deploy_cli(&["promote"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("to end its pause and carry on"), "{out}");
    assert_eq!(run.exit_code(Duration::from_secs(30)).await, Some(0));
    assert_eq!(watch.exit_code(Duration::from_secs(10)).await, Some(0));
    let watched = std::fs::read_to_string(&watch_log).unwrap();
    for line in [
        "PAUSED: until promoted",
        "traffic: one 75 %, two 25 %",
        "`deploy promote",
        "lock: held by",
        ": finished, promoted",
    ] {
        assert!(
            watched.contains(line),
            "status --watch lacks {line:?}:\n{watched}"
        );
    }
    assert_eq!(w.weights().await, [0, 100]);
    assert_eq!(w.versions().await, ["1.0.0", "2.0.0"]);
    let (code, out) = deploy_cli(&["promote"], &plan);
    assert_eq!(code, 4, "nothing is paused any more\n{out}");
}

// 3. The state directory filled during a run: the rollback's records were lost and the journal
//    ended in a torn line; `resume` then trusted the journal and reported "promoted" while both
//    slots ran the old release, and appended after the torn line, so `status` and `rollback`
//    failed for good. The disk is filled here with a file-size limit (RLIMIT_FSIZE, SIGXFSZ
//    ignored as a shell's `trap` does) set on the running process while it is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_3_a_full_disk_mid_run_then_resume_ends_as_the_world_shows() {
    use deploy::postgres::testing::PgServer;
    let w = World::start().await;
    let pg = PgServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let migrations = w.dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__notes.sql"),
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n",
    )
    .unwrap();
    w.release("2.0.0", "");
    let plan = w.plan(
        "canary",
        "2.0.0",
        CANARY_PAUSED,
        &format!(
            r#"
[migrations]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:{port}/{db}"
dir = {dir}
backup_dir = {backups}
bin_dir = {bin}
"#,
            port = pg.port(),
            db = db.dbname,
            dir = q(&migrations),
            backups = q(&w.dir.join("backups")),
            bin = q(pg.bin_dir()),
        ),
    );
    let schema = || async {
        pg.query(&db.dbname, "SELECT to_regclass('notes') IS NOT NULL")
            .await
            .unwrap()
    };
    let engine = w.engine(&plan);
    let log = w.dir.join("run.log");
    // Its output goes through a pipe (the limit applies to files it writes, not to pipes).
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(deploy_bin())
        .arg("run")
        .arg(&plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut copy = std::fs::File::create(&log).unwrap();
    let copier = std::thread::spawn(move || std::io::copy(&mut stdout, &mut copy));
    let mut run = Killed(child);
    w.wait_paused(&engine, &log).await;
    assert_eq!(w.weights().await, [3, 1]);
    assert_eq!(schema().await, "t", "migrated before the canary");
    // The disk is full from here on: a few dozen bytes more fit in the journal.
    let run_id = engine.unfinished_run().await.unwrap().unwrap();
    let journal = w.state().join("runs").join(format!("{run_id}.jsonl"));
    let size = std::fs::metadata(&journal).unwrap().len();
    let limit = size + 60;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", run.0.id()))
        .arg(format!("--fsize={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit");
    let (code, out) = deploy_cli(&["promote"], &plan);
    assert_eq!(code, 0, "{out}");
    let code = run.exit_code(Duration::from_secs(30)).await;
    copier.join().unwrap().unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        code,
        Some(2),
        "the run stops and rolls back from memory\n{out}"
    );
    assert!(out.contains("could not be written"), "{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
    assert_eq!(schema().await, "t", "the additive migration is kept");
    assert!(
        std::fs::metadata(&journal).unwrap().len() <= limit,
        "nothing was written past the limit"
    );

    // `status` reads the journal as far as it got.
    let (code, out) = deploy_cli(&["status"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resume it or roll it back"), "{out}");
    // `resume` reads the world: all old, schema migrated — the point of the plan right after
    // the migration, not where the journal stopped. It carries on from there and pauses again.
    let log = w.dir.join("resume.log");
    let mut resume = spawn_deploy(&["resume"], &plan, &log);
    w.wait_paused(&engine, &log).await;
    let (code, out) = deploy_cli(&["promote"], &plan);
    assert_eq!(code, 0, "{out}");
    assert_eq!(resume.exit_code(Duration::from_secs(30)).await, Some(0));
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("the live state contradicts the journal"),
        "{out}"
    );
    assert_eq!(w.weights().await, [0, 100], "promoted, as the world shows");
    assert_eq!(w.versions().await, ["1.0.0", "2.0.0"]);
    for cmd in ["status", "rollback"] {
        let (code, out) = deploy_cli(&[cmd], &plan);
        assert_eq!(code, 0, "{cmd}: {out}");
    }
    assert_eq!(
        engine.status().await.unwrap().unwrap().outcome,
        Some(Outcome::Promoted)
    );
}

// 4. A canary whose histogram counts went down between scrapes made the scrape gate panic:
//    exit 101 with 25 % of the traffic on the canary, the lock gone, no rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_4_histogram_counts_going_down_roll_back_instead_of_crashing_half_way() {
    let w = World::start().await;
    w.release("2.0.0", "histogram=wrapping");
    let plan = w.plan(
        "canary",
        "2.0.0",
        "kind = \"canary\"\nsteps = [{ set_weight = 25 }, { analyze = \"4s\" }, { set_weight = 50 }]",
        r#"
[policies.analysis]
interval = "1s"

[[gates]]
kind = "scrape"
preset = "p99_latency"
max_latency = "2s"
window = "1s"
"#,
    );
    let load = w.load();
    let (code, out) = deploy_cli(&["run"], &plan);
    stop(load).await;
    assert_eq!(code, 2, "rolled back, not crashed\n{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
    assert!(!w.state().join("lock").exists());
    let s = w.engine(&plan).status().await.unwrap().unwrap();
    assert_eq!(s.outcome, Some(Outcome::RolledBack), "{s}");
}

// 5. The metrics parser dropped lines whose label values hold `}` and split on `,`: a 50 % 5xx
//    ratio read as 0, and the gate passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_5_label_values_with_commas_and_braces_are_read_and_judged() {
    let w = World::start().await;
    w.release(
        "2.0.0",
        "error_rate=0.5\nerror_label=upstream {timeout}, retry \"later\"",
    );
    let plan = w.plan(
        "bg",
        "2.0.0",
        "kind = \"blue_green\"\nbake = \"2s\"",
        r#"
[policies.analysis]
interval = "1s"

[[gates]]
kind = "scrape"
preset = "error_rate"
max_error_rate = 0.01
window = "1s"
"#,
    );
    let load = w.load();
    let (code, out) = deploy_cli(&["run"], &plan);
    stop(load).await;
    assert_eq!(code, 2, "{out}");
    let ratio = last_report(&w)["verdicts"][0]["verdict"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (0.4..=0.6).contains(&ratio),
        "the gate read the 5xx series: {ratio}\n{out}"
    );
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
}

// 6. A plan computed before another deploy made the other slot live was run as if fresh: the
//    new release went straight onto the live slot at weight 100, with no health check first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_6_a_stale_plan_is_refused_before_it_touches_anything() {
    let w = World::start().await;
    w.release("2.0.0", "");
    w.release("3.0.0", "");
    let mine = w.plan("mine", "2.0.0", BLUE_GREEN, "");
    let engine = w.engine(&mine);
    let stale = engine
        .plan(
            &deploy::Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::ZERO,
            },
            &Release::new(Version::new("2.0.0").unwrap()).with_artifact(w.dir.join("app-2.0.0")),
            &deploy::PlanOptions::default(),
        )
        .await
        .unwrap();
    // Another operator deploys 3.0.0 meanwhile: `two` becomes live.
    let theirs = w.plan("theirs", "3.0.0", BLUE_GREEN, "");
    let (code, out) = deploy_cli(&["run"], &theirs);
    assert_eq!(code, 0, "{out}");
    assert_eq!(w.weights().await, [0, 100]);
    let err = engine
        .run(stale, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        DeployError::StalePlan { differences, .. } => {
            let text: Vec<String> = differences.iter().map(ToString::to_string).collect();
            assert_eq!(
                text,
                [
                    "target two: expected 1.0.0, live 3.0.0",
                    "weights: expected one=100,two=0, live one=0,two=100"
                ]
            );
        }
        other => panic!("expected a stale plan, got {other}"),
    }
    assert_eq!(w.weights().await, [0, 100], "nothing was touched");
    assert_eq!(w.versions().await, ["1.0.0", "3.0.0"]);
}

// 7a. A recovery killed after writing `finished` but before unlocking left a stale lock that
//     `run` refused and `resume`/`rollback` ignored, and the message named no real command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_7_a_stale_lock_behind_a_finished_run_is_cleared_by_resume() {
    let w = World::start().await;
    w.release("2.0.0", "");
    w.release("3.0.0", "");
    let plan = w.plan("bg", "2.0.0", BLUE_GREEN, "");
    let (code, out) = deploy_cli(&["run"], &plan);
    assert_eq!(code, 0, "{out}");
    let run_id = w.engine(&plan).status().await.unwrap().unwrap().run_id;
    std::fs::write(
        w.state().join("lock"),
        format!(
            r#"{{"owner":"ci","pid":999999,"host":"gone","started_at":"2026-11-21T00:00:00Z","run_id":"{run_id}"}}"#
        ),
    )
    .unwrap();
    let next = w.plan("next", "3.0.0", BLUE_GREEN, "");
    let (code, out) = deploy_cli(&["run"], &next);
    assert_eq!(code, 4, "refused before acting: a dead run's lock\n{out}");
    for command in ["deploy resume", "deploy rollback", "deploy unlock"] {
        assert!(out.contains(command), "names `{command}`\n{out}");
    }
    let (code, out) = deploy_cli(&["resume"], &next);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "run {run_id} had finished; cleared the stale lock"
        )),
        "{out}"
    );
    let (code, out) = deploy_cli(&["run"], &next);
    assert_eq!(code, 0, "{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["3.0.0", "2.0.0"]);
}

// 7b. A run whose undo failed (HAProxy unreachable during the rollback) ended `failed` and could
//     not be retried: `rollback` said there was nothing to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_7_a_rollback_that_failed_is_retried_once_haproxy_is_back() {
    let w = World::start().await;
    w.release("2.0.0", "");
    let plan = w.plan(
        "canary",
        "2.0.0",
        CANARY_PAUSED,
        "\n[policies.timeouts]\ncall = \"2s\"\n",
    );
    let engine = w.engine(&plan);
    let log = w.dir.join("run.log");
    let mut run = spawn_deploy(&["run"], &plan, &log);
    w.wait_paused(&engine, &log).await;
    assert_eq!(w.weights().await, [3, 1]);
    // HAProxy's admin socket is gone while the run rolls back.
    let socket = PathBuf::from(w.h.admin_socket().to_string());
    let hidden = socket.with_extension("hidden");
    std::fs::rename(&socket, &hidden).unwrap();
    let (code, out) = deploy_cli(&["abort"], &plan);
    assert_eq!(code, 0, "{out}");
    let code = run.exit_code(Duration::from_secs(60)).await;
    std::fs::rename(&hidden, &socket).unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(3), "the rollback failed\n{out}");
    assert_eq!(w.weights().await, [3, 1], "the canary still has its share");
    let (code, out) = deploy_cli(&["status"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("finished: failed"), "{out}");
    assert!(out.contains("roll it back again"), "{out}");
    let (code, out) = deploy_cli(&["rollback"], &plan);
    assert_eq!(code, 2, "the retried rollback ends rolled back\n{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
    let (code, out) = deploy_cli(&["rollback"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to recover"), "{out}");
}

// 8. A journal torn inside a multi-byte UTF-8 character was unreadable as a whole, and one
//    unreadable journal of an old run made `status`, `resume` and `rollback` fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_8_a_torn_utf8_tail_and_a_garbage_old_journal_block_no_command() {
    let w = World::start().await;
    w.release("2.0.0", "");
    let plan = w.plan("canary", "2.0.0", CANARY_PAUSED, "");
    let engine = w.engine(&plan);
    let log = w.dir.join("run.log");
    let mut run = spawn_deploy(&["run"], &plan, &log);
    w.wait_paused(&engine, &log).await;
    // kill -9 while a record with "ü" in it was being written.
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let run_id = engine.unfinished_run().await.unwrap().unwrap();
    let journal = w.state().join("runs").join(format!("{run_id}.jsonl"));
    let record = r#"{"record":"rollback_started","reason":"p99 über dem Ziel"}"#.as_bytes();
    let cut = record.iter().position(|b| *b == 0xC3).unwrap() + 1;
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&record[..cut]);
    std::fs::write(&journal, bytes).unwrap();
    std::fs::write(
        w.state().join("runs/20200101T000000000Z-1-0.jsonl"),
        b"\xff\xfe{\"record\": not json\n{\n",
    )
    .unwrap();
    let (code, out) = deploy_cli(&["status"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("STALE lock"), "{out}");
    let (code, out) = deploy_cli(&["rollback"], &plan);
    assert_eq!(code, 2, "{out}");
    assert_eq!(w.weights().await, [100, 0]);
    assert_eq!(w.versions().await, ["1.0.0", "1.0.0"]);
    let (code, out) = deploy_cli(&["status"], &plan);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("finished: rolled_back"), "{out}");
}
