//! The README's first command: the demo example runs as it is, against the real servers, and
//! goes as scripted — 2.0.0 promoted blue-green, 3.0.0 rolled back by the error-rate gate,
//! no failed request outside the canary's own injected errors.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::example;

/// The number before `label` in `line` (`"2835 served"` → 2835 for `" served"`).
fn count_before(line: &str, label: &str) -> u64 {
    let head = &line[..line
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in `{line}`"))];
    head.rsplit([' ', ':'])
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no count before `{label}` in `{line}`: {e}"))
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with `{prefix}`:\n{stdout}"))
}

#[test]
fn the_demo_runs_as_scripted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let out = Command::new(example("demo"))
        .arg("--keep")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The kept directory goes away at the end of the test, whatever its outcome.
    let _kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("directory kept: "))
        .map(|d| RemoveOnDrop(PathBuf::from(d)));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(t.elapsed() < Duration::from_secs(120), "{stdout}");

    // 2.0.0: promoted, the migration ran, green takes all the traffic, nothing failed.
    let v2 = line(&stdout, "2.0.0: ");
    assert!(
        v2.starts_with("2.0.0: promoted; weights blue=0,green=100; schema version 1,2; haproxy serves 2.0.0 (200)"),
        "{v2}"
    );
    let load = line(&stdout, "requests during the 2.0.0 deploy: ");
    assert!(count_before(load, " served") > 100, "{load}");
    assert!(load.contains("2.0.0: "), "green served under load: {load}");
    assert_eq!(count_before(load, " injected 500s"), 0, "{load}");
    assert_eq!(count_before(load, " failed otherwise"), 0, "{load}");

    // 3.0.0: the error-rate gate measured about 5 % and the engine rolled back.
    assert!(stdout.contains("      error-rate: fail "), "{stdout}");
    // The front door was asked after each traffic step: all of it on 2.0.0 after the switch,
    // then both versions during the canary.
    assert!(
        stdout.contains("served through http://")
            && stdout.contains(": 2.0.0 × 200 (expected 2.0.0 100 %"),
        "{stdout}"
    );
    assert!(stdout.contains("3.0.0 20 % ± 15 %)"), "{stdout}");
    // The sticky canary: clients keeping their cookie saw one version until the rollback, which
    // moved those placed on the canary back once.
    let clients = stdout
        .lines()
        .find(|l| l.contains("distinct clients keeping their cookie saw: "))
        .unwrap_or_else(|| panic!("no cohort line:\n{stdout}"));
    assert!(clients.ends_with("moved back and forth: 0"), "{clients}");
    assert!(
        !clients.contains("2.0.0 → 3.0.0"),
        "no client on the stable version was moved to the canary: {clients}"
    );
    assert!(stdout.contains("  why: step 5 (analyze blue"), "{stdout}");
    let v3 = line(&stdout, "3.0.0: ");
    assert!(
        v3.starts_with("3.0.0: rolled_back (gate error-rate [canary at 20%] failed: value "),
        "{v3}"
    );
    assert!(
        v3.ends_with("condition <= 1 %); weights blue=0,green=100; haproxy serves 2.0.0 (200)"),
        "{v3}"
    );
    // The error rate as a person reads it: a percentage, rounded.
    let value: f64 = v3
        .split("value ")
        .nth(1)
        .and_then(|s| s.split(" %,").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no value in {v3}"));
    assert!((1.5..=10.0).contains(&value), "error rate {value} %: {v3}");
    let load = line(&stdout, "requests during the 3.0.0 canary: ");
    assert!(load.contains("3.0.0: "), "the canary served: {load}");
    assert!(count_before(load, " injected 500s") > 0, "{load}");
    assert_eq!(count_before(load, " failed otherwise"), 0, "{load}");

    // Everything it started is stopped: the applications and HAProxy by the pids it printed.
    assert_stopped(&stdout);

    // The JSON reports are where it says, with the outcomes it printed.
    let reports: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("report: "))
        .collect();
    assert_eq!(reports.len(), 2, "{stdout}");
    let outcome = |path: &str| {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        (
            json["version"].as_str().unwrap().to_owned(),
            json["outcome"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(outcome(reports[0]), ("2.0.0".into(), "promoted".into()));
    assert_eq!(outcome(reports[1]), ("3.0.0".into(), "rolled_back".into()));
    // And one HTML page next to each.
    let pages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("html report: "))
        .collect();
    assert_eq!(pages.len(), 2, "{stdout}");
    for (page, json) in pages.iter().zip(&reports) {
        assert_eq!(*page, json.replace(".report.json", ".report.html"));
        let html = std::fs::read_to_string(page).unwrap();
        assert!(html.contains("<svg"), "{page}");
    }
    let kept = line(&stdout, "directory kept: ").trim_start_matches("directory kept: ");
    assert!(reports.iter().all(|r| r.starts_with(kept)), "{stdout}");
    assert!(
        stdout.contains("demo: as scripted (2.0.0 promoted, 3.0.0 rolled back by its gate)"),
        "{stdout}"
    );
}

/// Ctrl-C during the blue-green bake: the engine rolls back, the demo says so, exits non-zero
/// and stops everything it started.
#[test]
fn ctrl_c_during_a_deploy_rolls_back_and_stops_everything() {
    use std::io::BufRead;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(example("demo"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in std::io::BufReader::new(stdout).lines() {
            let l = l.unwrap();
            if l.contains(" 7/") && l.contains("analyze green for") && l.contains("until about") {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let bake = rx.recv_timeout(Duration::from_secs(90));
    // Only the demo we started, by its id; it forwards the signal to its worker.
    let sent = deploy::testing::process::signal(child.id(), deploy::testing::process::Signal::Int)
        .unwrap();
    assert!(sent, "the demo is running");
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    assert!(bake.is_ok(), "the bake never started:\n{stdout}");
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("  why: cancelled during step 7 (analyze green"),
        "{stdout}"
    );
    let v2 = line(&stdout, "2.0.0: ");
    assert!(
        v2.starts_with("2.0.0: rolled_back; weights blue=100,green=0;")
            && v2.ends_with("haproxy serves 1.0.0 (200)"),
        "{v2}"
    );
    let load = line(&stdout, "requests during the 2.0.0 deploy: ");
    assert_eq!(count_before(load, " failed otherwise"), 0, "{load}");
    assert!(!stdout.contains("=== deploy 3.0.0"), "{stdout}");
    assert!(
        stdout.contains("demo: cancelled; the deploy under way was rolled back"),
        "{stdout}"
    );
    assert_stopped(&stdout);
    let dir = line(&stdout, "demo: working in ").trim_start_matches("demo: working in ");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two tests each run the whole demo (servers, load): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The applications and HAProxy, by the pids the demo printed, are gone.
fn assert_stopped(stdout: &str) {
    let pids: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|s| s.split(')').next())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "two applications and haproxy:\n{stdout}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
