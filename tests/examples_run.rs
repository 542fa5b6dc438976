//! The example binaries run as they are, as an operator would run them.

use std::process::Command;

mod common;
use common::example;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haproxy_switch_example_runs_as_is_against_a_real_haproxy() {
    use deploy::TrafficSwitch;
    use deploy::haproxy::{HaproxySwitch, Socket, testing::HaproxyFixture};

    let (h, _slots) = HaproxyFixture::blue_green().await.unwrap();
    let Socket::Tcp(addr) = h.tcp_socket() else {
        panic!("a TCP admin socket")
    };
    let socket = format!("ipv4@{addr}");
    let switch = HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .build()
        .unwrap();
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(example("haproxy_switch"))
            .args(&args)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let base = |extra: &[&str]| {
        let mut v = vec![
            "--socket".to_owned(),
            socket.clone(),
            "--backend".to_owned(),
            "app".to_owned(),
        ];
        v.extend(extra.iter().map(ToString::to_string));
        v
    };

    let out = run(base(&["--to", "green"])).await;
    assert!(out.contains("switched backend app to green"), "{out}");
    assert_eq!(
        switch.weights().await.unwrap().to_string(),
        "blue=0,green=100"
    );

    run(base(&["--weights", "blue=95,green=5"])).await;
    assert_eq!(
        switch.weights().await.unwrap().to_string(),
        "blue=95,green=5"
    );

    let out = run(base(&["--status"])).await;
    assert!(out.contains("blue") && out.contains("green"), "{out}");

    run(base(&["--drain", "blue", "--drain-timeout-secs", "5"])).await;
    assert_eq!(
        switch
            .weights()
            .await
            .unwrap()
            .get(&deploy::TargetId::new("blue").unwrap()),
        Some(0)
    );

    // A server the backend lacks is refused with HAProxy's answer, and changes nothing.
    let out = tokio::process::Command::new(example("haproxy_switch"))
        .args(base(&["--to", "purple"]))
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        switch.weights().await.unwrap().to_string(),
        "blue=0,green=5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_example_runs_as_is_against_a_real_nginx() {
    use deploy::nginx::MaintenanceSnippet;
    use deploy::nginx::testing::NginxServer;

    let b = NginxServer::builder().unwrap();
    let dir = b.dir().to_path_buf();
    let flag = dir.join("shared/maintenance.on");
    let snippet = MaintenanceSnippet::new(&flag, dir.join("page"))
        .render()
        .unwrap();
    let nginx = b
        .http(snippet.http.clone())
        .server(snippet.server.clone())
        .server("location / { return 200 \"the site\\n\"; }")
        .file("shared/.keep", "")
        .file("page/maintenance.html", snippet.page.clone())
        .start()
        .await
        .unwrap();
    let url = nginx.url("/");
    let run = |cmd: &'static str| {
        let (flag, url) = (flag.clone(), url.clone());
        async move {
            let out = tokio::process::Command::new(example("maintenance"))
                .arg(cmd)
                .arg("--flag")
                .arg(&flag)
                .arg("--url")
                .arg(&url)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cmd}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        }
    };
    let status_of = || async { reqwest::get(&url).await.unwrap().status().as_u16() };

    assert!(run("status").await.contains("off"));
    run("on").await;
    assert!(flag.exists());
    assert_eq!(status_of().await, 503, "users see the maintenance page");
    assert!(run("status").await.contains("on"));
    run("off").await;
    assert!(!flag.exists());
    assert_eq!(status_of().await, 200);

    let out = std::process::Command::new(example("maintenance"))
        .args([
            "--print-snippet",
            "--flag",
            "/srv/app/shared/maintenance.on",
            "--page-root",
            "/srv/app/page",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("/srv/app/shared/maintenance.on"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_example_knows_a_page_of_one_s_own_by_its_file() {
    use deploy::nginx::testing::NginxServer;

    // The runbook's classic pattern, serving the team's page (no deploy-nginx marker in it).
    const PAGE: &str = "<!DOCTYPE html>\n<h1>We'll be back soon</h1>\n";
    let b = NginxServer::builder().unwrap();
    let dir = b.dir().to_path_buf();
    let flag = dir.join(".maintenance");
    let page_file = dir.join("static/maintenance.html");
    let nginx = b
        .server(format!(
            "if (-f {}) {{ return 503; }}\nerror_page 503 @maintenance;\n\
             location @maintenance {{ root {}; rewrite ^(.*)$ /maintenance.html break; }}",
            flag.display(),
            dir.join("static").display()
        ))
        .server("location / { return 200 \"the site\\n\"; }")
        .file("static/maintenance.html", PAGE)
        .start()
        .await
        .unwrap();
    let url = nginx.url("/");
    let run = |args: Vec<std::ffi::OsString>| async move {
        let out = tokio::process::Command::new(example("maintenance"))
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = |cmd: &str, extra: &[&std::ffi::OsStr]| {
        let mut a: Vec<std::ffi::OsString> = vec![
            cmd.into(),
            "--flag".into(),
            flag.clone().into(),
            "--url".into(),
            url.clone().into(),
        ];
        a.extend(extra.iter().map(|e| e.to_os_string()));
        a
    };
    let get = || async {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    let started = std::time::Instant::now();
    let (code, stdout, stderr) =
        run(args("on", &["--page-file".as_ref(), page_file.as_os_str()])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(stdout.contains("maintenance on, verified"), "{stdout}");
    assert_eq!(
        get().await,
        (503, PAGE.to_owned()),
        "users see the team's page"
    );
    let (code, stdout, stderr) = run(args("off", &[])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(get().await.0, 200);

    // Without --page-file the marker is looked for, which this page lacks: refused, said, undone.
    let (code, stdout, stderr) = run(args("on", &["--deadline-secs".as_ref(), "1".as_ref()])).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "answers 503 with another body, \"<!DOCTYPE html> <h1>We'll be back soon</h1>\""
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("the flag file was removed again"),
        "{stderr}"
    );
    assert!(!flag.exists());
    assert_eq!(get().await.0, 200);

    // --any-503 is kept, and one way at a time.
    let (code, stdout, stderr) = run(args("on", &["--any-503".as_ref()])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(run(args("off", &[])).await.0 == Some(0));
    let (code, _, stderr) = run(args(
        "on",
        &[
            "--any-503".as_ref(),
            "--page-file".as_ref(),
            page_file.as_os_str(),
        ],
    ))
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    assert!(!flag.exists());
}
