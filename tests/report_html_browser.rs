//! The HTML report in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/install-servers.sh`) renders the reports of real engine runs on the fakes — a
//! promoted blue-green and a canary rolled back by its gate, the two deploys of the demo, and a
//! promoted canary with a Mann-Whitney judge — to PNG, and the DOM it built is checked: a chart
//! per gate, a threshold line in each, the rollback marker in the rolled-back report, and no
//! reference to anything outside the file.
//!
//! The real demo's two pages (`examples/demo.rs` writes one per deploy) are rendered and
//! checked the same way.
//!
//! Without Chromium the test fails (it never skips) and says how to install it. The pages and
//! screenshots are kept under the target directory's `tmp/report_html_browser/` to look at.

mod common;
mod report_runs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy::Report;
use deploy::testing::process::ChildGuard;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it with `apt-get install chromium` (as root), \
         or run `bash scripts/install-servers.sh`"
    );
    CHROMIUM
}

/// Run headless Chromium on `page` with `extra` arguments, its standard output to `stdout`;
/// stopped (by its PID) after `limit` or when the test ends.
fn run_chromium(page: &Path, extra: &[String], stdout: &Path, limit: Duration) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(stdout).unwrap())
    .stderr(std::fs::File::create(stdout.with_extension("stderr")).unwrap());
    let mut child =
        ChildGuard::new(cmd.spawn().expect("start chromium")).grace(Duration::from_secs(2));
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.child().try_wait().unwrap() {
            assert!(
                status.success(),
                "chromium {extra:?} on {} exited with {status}: {}",
                page.display(),
                std::fs::read_to_string(stdout.with_extension("stderr")).unwrap_or_default()
            );
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "chromium {extra:?} on {} did not finish within {limit:?}",
            page.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What Chromium made of one report: the DOM after parsing and rendering, and the screenshot.
struct Rendered {
    dom: String,
    png: Vec<u8>,
}

fn render_in_browser(name: &str, report: &Report) -> Rendered {
    let page = out_dir().join(format!("{name}.html"));
    deploy::report_html::write(report, &page).unwrap();
    render_page(name, &page)
}

/// Where pages and screenshots are kept to look at.
fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_html_browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Chromium's screenshot and DOM of the page at `page`.
fn render_page(name: &str, page: &Path) -> Rendered {
    let dir = out_dir();
    let page = page.to_owned();
    let png = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let limit = Duration::from_secs(90);
    run_chromium(
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,2000".to_owned(),
        ],
        &dir.join(format!("{name}.screenshot.out")),
        limit,
    );
    let dom_file = dir.join(format!("{name}.dom.html"));
    run_chromium(&page, &["--dump-dom".to_owned()], &dom_file, limit);
    Rendered {
        dom: std::fs::read_to_string(&dom_file).unwrap(),
        png: std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display())),
    }
}

/// The part of `dom` from each `<section class="gate"` to the next one (or the end).
fn gate_sections(dom: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = dom.split("<section class=\"gate\"").skip(1).collect();
    if let Some(last) = parts.last_mut() {
        *last = last.split("</section>").next().unwrap_or(last);
    }
    parts
}

fn check(name: &str, report: &Report) -> Rendered {
    check_rendered(name, report, render_in_browser(name, report))
}

fn check_rendered(name: &str, report: &Report, r: Rendered) -> Rendered {
    let dom = &r.dom;
    assert!(
        dom.contains("<svg class=\"chart timeline-chart\""),
        "{name}: no timeline"
    );
    assert!(
        dom.contains("<svg class=\"chart weights-chart\""),
        "{name}: no weights chart"
    );
    // One chart per gate, each with a threshold line.
    let mut gates: Vec<&str> = report.verdicts.iter().map(|v| v.gate.as_str()).collect();
    gates.sort();
    gates.dedup();
    let sections = gate_sections(dom);
    assert_eq!(sections.len(), gates.len(), "{name}: a section per gate");
    for s in &sections {
        assert_eq!(
            s.matches("<svg class=\"chart gate-chart\"").count(),
            1,
            "{name}: {s}"
        );
        assert!(
            s.contains("class=\"threshold\""),
            "{name}: no threshold line in {s}"
        );
        assert!(
            s.contains("class=\"point "),
            "{name}: no measured point in {s}"
        );
    }
    // Nothing from elsewhere: no script, no style or element that fetches (a gate's source may
    // name a URL as text, never as a reference).
    for bad in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "<script",
        "@import",
        "url(",
    ] {
        assert!(!dom.contains(bad), "{name}: the DOM holds {bad:?}");
    }
    assert!(r.png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
    let width = u32::from_be_bytes(r.png[16..20].try_into().unwrap());
    assert_eq!(width, 1200, "{name}: the screenshot's width");
    assert!(
        r.png.len() > 20_000,
        "{name}: an empty page? {} bytes",
        r.png.len()
    );
    r
}

#[tokio::test]
async fn the_demo_runs_render_in_chromium_with_their_charts() {
    // The demo's two deploys: 2.0.0 blue-green, promoted; 3.0.0 canary, rolled back by its gate.
    let promoted = report_runs::promoted_blue_green().await;
    let rolled_back = report_runs::gate_failed_canary().await;

    let r = check("promoted-blue-green", &promoted);
    assert!(r.dom.contains("data-outcome=\"promoted\""));
    assert!(
        !r.dom.contains("class=\"rollback-marker\""),
        "no rollback, no marker"
    );

    let r = check("rolled-back-canary", &rolled_back);
    assert!(r.dom.contains("data-outcome=\"rolled_back\""));
    // The marker in the timeline, the weights and every gate's chart.
    let gates = gate_sections(&r.dom);
    assert!(
        gates
            .iter()
            .all(|s| s.contains("class=\"rollback-marker\""))
    );
    assert_eq!(
        r.dom.matches("class=\"rollback-marker\"").count(),
        2 + gates.len()
    );
    assert!(r.dom.contains("id=\"rollback-reason\""));
    assert!(r.dom.contains("class=\"point fail\""));
    assert!(r.dom.contains("class=\"bar undo"));
}

#[tokio::test]
async fn a_judged_canary_shows_its_mann_whitney_statistics_and_escapes_its_texts() {
    let report = report_runs::promoted_canary().await;
    let r = check("promoted-canary-judged", &report);
    let judge = gate_sections(&r.dom)
        .into_iter()
        .find(|s| s.starts_with(" data-gate=\"latency-vs-baseline\""))
        .expect("the judge's section");
    assert!(judge.contains("<table class=\"mann-whitney\">"), "{judge}");
    assert!(judge.contains("<td class=\"num\">61</td>"));
    // Hostile gate names and sources arrive as text, not markup.
    assert!(
        r.dom
            .contains("data-gate=\"p99 &lt;latency&gt; &amp; &quot;tail&quot;\"")
    );
    assert!(r.dom.contains("&lt;script&gt;alert('x')&lt;/script&gt;"));
}

/// The kept directory of a demo run, removed when the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_real_demo_s_two_pages_render_in_chromium() {
    // The demo itself (real HAProxy, PostgreSQL, Prometheus): the pages it wrote and printed.
    let out = Command::new(common::example("demo"))
        .arg("--keep")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("directory kept: "))
        .map(|d| RemoveOnDrop(PathBuf::from(d)));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("html report: "))
        .collect();
    assert_eq!(pages.len(), 2, "{stdout}");
    for (page, name, outcome) in [
        (pages[0], "demo-2.0.0", "promoted"),
        (pages[1], "demo-3.0.0", "rolled_back"),
    ] {
        let json = page.replace(".report.html", ".report.json");
        let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let r = check_rendered(name, &report, render_page(name, Path::new(page)));
        assert!(
            r.dom.contains(&format!("data-outcome=\"{outcome}\"")),
            "{name}"
        );
        let markers = r.dom.matches("class=\"rollback-marker\"").count();
        if outcome == "promoted" {
            assert_eq!(markers, 0, "{name}: no rollback, no marker");
        } else {
            assert!(markers >= 3, "{name}: the rollback is marked");
            assert!(r.dom.contains("class=\"point fail\""), "{name}");
        }
    }
}
