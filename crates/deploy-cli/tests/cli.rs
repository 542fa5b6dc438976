//! The `deploy` binary as an operator meets it: exit codes, `--help` and `--version`, the
//! output of a promoted and of a rolled-back run (not on a terminal: plain lines), `report`,
//! `validate`, `--release`, and `unlock` facing a live and a dead holder. The targets are two
//! release directories on this machine, each served by an HTTP server answering with the
//! version under its `current` link (503 for a release marked broken).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{deploy_bin, q};
use deploy::testing::TestHttpServer;

/// `deploy <args>`: exit code, stdout, stderr.
fn deploy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(deploy_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct World {
    tmp: tempfile::TempDir,
    a: TestHttpServer,
    b: TestHttpServer,
}

impl World {
    async fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let a = common::slot_server(tmp.path().join("a")).await;
        let b = common::slot_server(tmp.path().join("b")).await;
        let w = Self { tmp, a, b };
        let plan = w.plan("1.0.0", false, "");
        let pf = deploy::plan_file::PlanFile::load(&plan).unwrap();
        let engine = pf.engine(&deploy::adapters::Adapters::new()).unwrap();
        common::install(&engine, &pf.release()).await;
        w
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// A rolling plan deploying `version` (its artifact broken when `broken`), with `extra`
    /// appended.
    fn plan(&self, version: &str, broken: bool, extra: &str) -> PathBuf {
        let path = self.dir().join(format!("plan-{version}.toml"));
        let text = format!(
            r#"[environment]
name = "shop"
state_dir = {state}

[release]
version = "{version}"
artifact = {artifact}

[strategy]
kind = "rolling"
batch = {{ count = 1 }}

[policies.probe]
interval = "50ms"
deadline = "1s"

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
{extra}"#,
            state = q(&self.state()),
            artifact = q(&common::artifact(self.dir(), version, broken)),
            a_root = q(&self.dir().join("a")),
            b_root = q(&self.dir().join("b")),
            a_url = self.a.url(""),
            b_url = self.b.url(""),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn versions(&self) -> [String; 2] {
        let v = |s: &TestHttpServer| {
            let url = s.url("/health");
            async move { common::get(&url).await }
        };
        [v(&self.a).await, v(&self.b).await]
    }
}

/// `text` with what changes from run to run replaced: durations, run ids, the temp dir.
fn normalized(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "<tmp>");
    let run = regex::Regex::new(r"\d{8}T\d{9}Z-\d+-\d+").unwrap();
    let text = run.replace_all(&text, "<run>");
    let took = regex::Regex::new(r"\d+(\.\d+)? (µs|ms|s|min)\b").unwrap();
    took.replace_all(&text, "<t>").into_owned()
}

#[test]
fn usage_errors_exit_64_and_help_names_the_exit_codes() {
    let (code, _, err) = deploy(&["frobnicate"]);
    assert_eq!(code, 64, "a mistyped command is a usage error: {err}");
    let (code, _, err) = deploy(&["run"]);
    assert_eq!(code, 64, "a missing plan is a usage error: {err}");
    let (code, _, err) = deploy(&["run", "plan.toml", "--no-such-flag"]);
    assert_eq!(code, 64, "{err}");
    let (code, out, _) = deploy(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("deploy "), "{out}");
    let (code, out, _) = deploy(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "0   promoted, or nothing to do",
        "2   rolled back",
        "3   failed",
        "4   refused before acting",
        "64  usage error",
        "examples/plans",
    ] {
        assert!(out.contains(line), "--help lacks {line:?}:\n{out}");
    }
    let (code, _, err) = deploy(&["run", "/nonexistent/plan.toml"]);
    assert_eq!(code, 1, "an unreadable plan is unusable: {err}");
    assert!(err.contains("/nonexistent/plan.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_and_a_rolled_back_run_read_at_a_glance() {
    let w = World::new().await;
    let plan = w.plan("2.0.0", false, "");
    let (code, out, err) = deploy(&["run", plan.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let got = normalized(&out, w.dir());
    let want = "\
deploy 2.0.0 to shop: rolling, 6 steps (run <run>)
 1/6 prepare 2.0.0 on a  <t>
 2/6 prepare 2.0.0 on b  <t>
 3/6 activate 2.0.0 on a  <t>
 4/6 wait until a is healthy on 2.0.0  <t>
 5/6 activate 2.0.0 on b  <t>
 6/6 wait until b is healthy on 2.0.0  <t>

PROMOTED: 2.0.0 to shop (rolling) in <t>, run <run>
  now: a 2.0.0, b 2.0.0
  report: <tmp>/state/runs/<run>.report.json
";
    assert_eq!(got, want, "promoted run, as printed:\n{out}");
    assert!(w.versions().await.iter().all(|v| v.contains("2.0.0")));

    // 3.0.0 answers 503: rolled back at the probe's unhealthy threshold (3 answers in a row),
    // before its deadline.
    let plan = w.plan("3.0.0", true, "");
    let (code, out, err) = deploy(&["run", plan.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    if std::env::var_os("SHOW_OUTPUT").is_some() {
        eprintln!("{out}");
    }
    let got = normalized(&out, w.dir());
    assert!(
        got.starts_with(
            "\
deploy 3.0.0 to shop: rolling, 6 steps (run <run>)
 1/6 prepare 3.0.0 on a  <t>
 2/6 prepare 3.0.0 on b  <t>
 3/6 activate 3.0.0 on a  <t>
 4/6 wait until a is healthy on 3.0.0  FAILED after <t>
rolling back (why: below)
   undo activate 2.0.0 on a  done
"
        ),
        "rolled-back run, as printed:\n{out}"
    );
    let tail = got.split_once("\nROLLED BACK: 3.0.0 to shop (rolling) in <t>, run <run>\n");
    let Some((_, tail)) = tail else {
        panic!("no summary:\n{out}");
    };
    let lines: Vec<&str> = tail.lines().collect();
    assert!(
        lines[0].starts_with("  why: step 4 (wait until a is healthy on 3.0.0) failed: "),
        "{out}"
    );
    assert_eq!(
        got.matches(
            "answered unhealthy 3 times in a row (HTTP 503, expected 200-299); the \
                     probe's unhealthy_threshold is 3"
        )
        .count(),
        1,
        "the reason is printed once:\n{out}"
    );
    assert!(lines.contains(&"  now: a 2.0.0, b 2.0.0"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  next: the environment is back as it was before the run")),
        "{out}"
    );
    assert!(w.versions().await.iter().all(|v| v.contains("2.0.0")));
    assert!(
        out.lines().all(|l| l.chars().count() <= 400),
        "no line is a wall of text:\n{out}"
    );
    // Both reports the runs kept (and the first install's) match the published schema.
    assert_eq!(common::reports_match_the_schema(&w.state()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_override_report_and_validate() {
    let w = World::new().await;
    let plan = w.plan("2.0.0", false, "");
    let p = plan.to_str().unwrap();
    // The plan says 2.0.0; the command line deploys 2.5.0 with its own artifact.
    let artifact = common::artifact(w.dir(), "2.5.0", false);
    let (code, out, err) = deploy(&[
        "validate",
        p,
        "--release",
        "2.5.0",
        "--artifact",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2.5.0"), "{out}");
    assert!(out.contains("no server was contacted"), "{out}");
    let html = w.dir().join("run.html");
    let (code, out, err) = deploy(&[
        "run",
        p,
        "--release",
        "2.5.0",
        "--artifact",
        artifact.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(w.versions().await.iter().all(|v| v.contains("2.5.0")));
    assert!(
        out.contains(&format!("  report: {}", html.display())),
        "{out}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("2.5.0"), "{page}");
    let (code, out, _) = deploy(&["--version"]);
    assert_eq!(code, 0, "{out}");
    let (code, bad, err) = deploy(&["run", p, "--release", "not a version"]);
    assert_eq!(code, 64, "a bad --release is a usage error: {bad}{err}");
    assert!(err.contains("--release"), "{err}");
    // The plan's artifact is 2.0.0's build (its name says so): deploying it as 2.6.0 would
    // label old code new.
    let (code, bad, err) = deploy(&["run", p, "--release", "2.6.0"]);
    assert_eq!(code, 64, "{bad}{err}");
    assert!(err.contains("is 2.0.0's build; give --artifact"), "{err}");
    assert!(w.versions().await.iter().all(|v| v.contains("2.5.0")));
    // A preview of a rollback needs the release to go back to; alone it would act.
    let (code, _, err) = deploy(&["rollback", p, "--dry-run"]);
    assert_eq!(code, 64, "{err}");

    // `report` reads the newest run back: as text, as JSON, and drawn as HTML.
    let (code, text, err) = deploy(&["report", p]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("2.5.0"), "{text}");
    let (code, json, err) = deploy(&["report", p, "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let run = report["run_id"].as_str().unwrap().to_owned();
    let html = w.dir().join("again.html");
    let (code, out, err) = deploy(&["report", p, &run, "--html", html.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read_to_string(&html).unwrap().contains(&run));
    let (code, _, err) = deploy(&["report", p, "20990101T000000000Z-1-0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no report of run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_shows_the_holder_refuses_a_live_one_and_breaks_a_dead_ones() {
    let w = World::new().await;
    // A run held up by its before-hook: it holds the lock for as long as the hook sleeps.
    let plan = w.plan(
        "2.0.0",
        false,
        "\n[[hooks]]\nname = \"slow\"\npoint = \"before\"\non = \"run\"\ncommand = [\"sleep\", \"8\"]\ntimeout = \"60s\"\n",
    );
    let p = plan.to_str().unwrap();
    let log = w.dir().join("run.log");
    let run = common::spawn_deploy(&["run"], &plan, &log);
    let lock = w.state().join("lock");
    let t0 = Instant::now();
    while !lock.exists()
        || std::fs::read_to_string(&lock)
            .unwrap_or_default()
            .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run never locked: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = deploy(&["unlock", p]);
    assert_eq!(code, 4, "a live lock is not broken: {out}{err}");
    assert!(err.contains("a live run: not broken"), "{err}");
    assert!(
        err.contains(&format!("pid {}", run.0.id())),
        "names the holder: {err}"
    );
    // The holder dies without releasing it: now it is stale, and unlock breaks it.
    let mut run = run;
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    // A dead run's lock refuses the next run before it acts, naming what deals with it.
    let (code, out, err) = deploy(&["run", p]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains(&format!("`deploy unlock {p}`")), "{err}");
    let (code, out, err) = deploy(&["unlock", p]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("broke the stale lock of"), "{out}");
    let (code, out, err) = deploy(&["unlock", p]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is not locked"), "{out}");
    assert!(w.versions().await.iter().all(|v| v.contains("1.0.0")));
}
