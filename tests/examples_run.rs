//! The example binaries run as they are, as an operator would run them.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        dir.exists(),
        "{} is not built (cargo test builds examples)",
        dir.display()
    );
    dir
}

#[test]
fn the_blue_green_local_example_runs_as_is() {
    let out = Command::new(example("blue_green_local"))
        .args(["--bake", "1s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("run finished: promoted"), "{stdout}");
    assert!(
        stdout.contains("green /health now: {\"status\":\"ok\",\"version\":\"2.0.0\"}"),
        "{stdout}"
    );

    let out = Command::new(example("blue_green_local"))
        .args(["--broken"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "rolled back exits 2\n{stdout}");
    assert!(
        stdout.contains("ROLLBACK: step 3 (wait until green is healthy on 2.0.0) failed"),
        "{stdout}"
    );
    assert!(stdout.contains("weights now: blue=100,green=0"), "{stdout}");
}

#[test]
fn the_ssh_exec_example_runs_as_is() {
    let example = example("ssh_exec");
    let out = std::process::Command::new(&example)
        .args(["--demo", "--", "printf", "%s|", "it's", "$(not run)", "a b"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"it's|$(not run)|a b|");
    let out = std::process::Command::new(&example)
        .args(["--demo", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    // A host nobody knows: refused, with the fingerprint, exit 255.
    let kh = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&example)
        .args(["--demo", "--known-hosts"])
        .arg(kh.path().join("empty"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SHA256:") && err.contains("not in"), "{err}");
}
