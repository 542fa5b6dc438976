//! The built-in implementations against the real world: `LocalHost` on a temp dir,
//! `ReleaseDirTarget` over `LocalHost`, and the probes against `TestHttpServer`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::testing::{HealthState, TestHttpServer, TestResponse, host_conformance};
use deploy_core::{
    Endpoint, ErrorKind, HealthProbe, HttpProbe, LocalHost, ProbeRequest, Release,
    ReleaseDirTarget, ReleaseDirTargetBuilder, Target, TargetId, TcpProbe, Version,
};

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

fn blue() -> TargetId {
    TargetId::new("blue").unwrap()
}

// ---------------------------------------------------------------------------------------------
// LocalHost

#[tokio::test]
async fn local_host_conforms() {
    let dir = tempfile::tempdir().unwrap();
    host_conformance(&LocalHost::new(), dir.path()).await;
    // The suite cleans up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn local_host_is_named_local() {
    use deploy_core::Host;
    assert_eq!(LocalHost::new().name(), "local");
}

// ---------------------------------------------------------------------------------------------
// ReleaseDirTarget

fn builder(root: &Path) -> ReleaseDirTargetBuilder {
    ReleaseDirTarget::builder(
        blue(),
        Arc::new(LocalHost::new()),
        root.to_path_buf(),
        Endpoint::http("127.0.0.1", 8081),
    )
}

/// A source tree with a nested file and an executable.
fn source_tree(dir: &Path, marker: &str) -> PathBuf {
    let src = dir.join(format!("src-{marker}"));
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("VERSION"), marker).unwrap();
    std::fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    src
}

fn tar(args: &[&str]) {
    let st = std::process::Command::new("tar")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "tar {args:?}");
}

fn release_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn link_of(root: &Path) -> Option<PathBuf> {
    std::fs::read_link(root.join("current")).ok()
}

async fn deploy(t: &ReleaseDirTarget, version: &str) {
    t.prepare(&Release::new(v(version))).await.unwrap();
    t.activate(&v(version)).await.unwrap();
}

#[tokio::test]
async fn prepare_unpacks_a_tar_gz_without_activating() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let src = source_tree(tmp.path(), "1.0.0");
    let archive = tmp.path().join("app-1.0.0.tar.gz");
    tar(&[
        "-czf",
        archive.to_str().unwrap(),
        "-C",
        src.to_str().unwrap(),
        ".",
    ]);

    let t = builder(&root).build().unwrap();
    t.prepare(&Release::new(v("1.0.0")).with_artifact(&archive))
        .await
        .unwrap();

    let rel = root.join("releases/1.0.0");
    assert_eq!(
        std::fs::read_to_string(rel.join("VERSION")).unwrap(),
        "1.0.0"
    );
    assert_eq!(
        std::fs::read_to_string(rel.join("bin/run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert!(rel.join(".deploy-complete").is_file());
    // No partial directory and no uploaded archive left behind; nothing activated.
    assert_eq!(release_names(&root), [".history", "1.0.0"]);
    assert_eq!(t.current().await.unwrap(), None);
    assert!(link_of(&root).is_none());
}

#[tokio::test]
async fn prepare_unpacks_a_plain_tar_and_a_tgz() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let src = source_tree(tmp.path(), "x");
    let plain = tmp.path().join("a.tar");
    let tgz = tmp.path().join("a.tgz");
    tar(&[
        "-cf",
        plain.to_str().unwrap(),
        "-C",
        src.to_str().unwrap(),
        ".",
    ]);
    tar(&[
        "-czf",
        tgz.to_str().unwrap(),
        "-C",
        src.to_str().unwrap(),
        ".",
    ]);
    let t = builder(&root).build().unwrap();
    t.prepare(&Release::new(v("1")).with_artifact(&plain))
        .await
        .unwrap();
    t.prepare(&Release::new(v("2")).with_artifact(&tgz))
        .await
        .unwrap();
    for r in ["1", "2"] {
        assert_eq!(
            std::fs::read_to_string(root.join("releases").join(r).join("VERSION")).unwrap(),
            "x"
        );
    }
}

#[tokio::test]
async fn prepare_packs_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let src = source_tree(tmp.path(), "2.0.0");
    let t = builder(&root).build().unwrap();
    t.prepare(&Release::new(v("2.0.0")).with_artifact(&src))
        .await
        .unwrap();
    let rel = root.join("releases/2.0.0");
    assert_eq!(
        std::fs::read_to_string(rel.join("VERSION")).unwrap(),
        "2.0.0"
    );
    assert_eq!(
        std::fs::read_to_string(rel.join("bin/run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(release_names(&root), [".history", "2.0.0"]);
}

#[tokio::test]
async fn prepare_without_artifact_makes_an_empty_complete_release() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root).build().unwrap();
    t.prepare(&Release::new(v("3"))).await.unwrap();
    let entries: Vec<_> = std::fs::read_dir(root.join("releases/3"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [".deploy-complete"]);
}

#[tokio::test]
async fn prepare_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let src = source_tree(tmp.path(), "1.0.0");
    let t = builder(&root).build().unwrap();
    let release = Release::new(v("1.0.0")).with_artifact(&src);
    t.prepare(&release).await.unwrap();
    // A file the service wrote into its release survives a second prepare: nothing is redone.
    std::fs::write(root.join("releases/1.0.0/runtime.pid"), "42").unwrap();
    std::fs::write(src.join("VERSION"), "changed").unwrap();
    t.prepare(&release).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("releases/1.0.0/runtime.pid")).unwrap(),
        "42"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("releases/1.0.0/VERSION")).unwrap(),
        "1.0.0"
    );
    assert_eq!(release_names(&root), [".history", "1.0.0"]);
}

#[tokio::test]
async fn interrupted_prepare_leaves_no_release_and_keeps_current() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root).build().unwrap();
    deploy(&t, "1.0.0").await;

    let corrupt = tmp.path().join("broken.tar.gz");
    std::fs::write(&corrupt, b"this is not a gzip stream at all").unwrap();
    let e = t
        .prepare(&Release::new(v("2.0.0")).with_artifact(&corrupt))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandFailed);
    let msg = e.to_string();
    assert!(
        msg.starts_with("prepare 2.0.0 on target blue: run `tar -xf"),
        "{msg}"
    );
    // Neither the final directory nor the partial one nor the uploaded archive remains.
    assert_eq!(release_names(&root), [".history", "1.0.0"]);
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    let e = t.activate(&v("2.0.0")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn prepare_cleans_leftovers_of_a_crashed_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    // What a prepare killed mid-way leaves: a partial directory and an uploaded archive.
    std::fs::create_dir_all(root.join("releases/.2.0.0.partial-999-7/half")).unwrap();
    std::fs::write(root.join("releases/.2.0.0.upload-999-8.tar"), b"junk").unwrap();
    let t = builder(&root).build().unwrap();
    t.prepare(&Release::new(v("2.0.0"))).await.unwrap();
    assert_eq!(release_names(&root), [".history", "2.0.0"]);
}

#[tokio::test]
async fn prepare_rejects_unknown_artifact_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let zip = tmp.path().join("app.zip");
    std::fs::write(&zip, b"PK").unwrap();
    let t = builder(&root).build().unwrap();
    let e = t
        .prepare(&Release::new(v("1")).with_artifact(&zip))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("app.zip"), "{e}");
    let e = t
        .prepare(&Release::new(v("1")).with_artifact(tmp.path().join("missing.tar")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("missing.tar"), "{e}");
    assert!(!root.join("releases/1").exists());
}

#[tokio::test]
async fn activate_switches_the_link_and_runs_restart_with_placeholders() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root)
        .restart([
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$1\" \"$2\" \"$3\" > \"$4/restarted-$1\"",
            "sh",
            "{version}",
            "{target}",
            "{release_dir}",
            "{root}",
        ])
        .build()
        .unwrap();
    assert_eq!(t.current().await.unwrap(), None);
    deploy(&t, "1.0.0").await;
    assert_eq!(link_of(&root), Some(PathBuf::from("releases/1.0.0")));
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    let want = format!("1.0.0|blue|{}", root.join("releases/1.0.0").display());
    assert_eq!(
        std::fs::read_to_string(root.join("restarted-1.0.0")).unwrap(),
        want
    );

    deploy(&t, "2.0.0").await;
    assert_eq!(link_of(&root), Some(PathBuf::from("releases/2.0.0")));
    assert_eq!(t.current().await.unwrap(), Some(v("2.0.0")));
    assert!(root.join("restarted-2.0.0").is_file());
    // The temporary link was renamed over `current`, not left behind.
    let mut top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "current",
            "releases",
            "restarted-1.0.0",
            "restarted-2.0.0",
            "revisions.log"
        ]
    );
}

#[tokio::test]
async fn placeholders_are_not_a_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    // `touch` gets one argument with spaces, `;` and `$(...)` in it: one file, nothing else runs.
    let t = builder(&root)
        .restart([
            "touch",
            "{root}/restarted {version}; $(touch pwned) `touch pwned`",
        ])
        .build()
        .unwrap();
    deploy(&t, "1.0.0").await;
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&"restarted 1.0.0; $(touch pwned) `touch pwned`".to_owned()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == "pwned"), "{names:?}");
    assert!(!Path::new("pwned").exists());
}

#[tokio::test]
async fn activating_the_current_version_again_restarts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root)
        .restart([
            "sh",
            "-c",
            "echo \"$1\" >> \"$2/restarts\"",
            "sh",
            "{version}",
            "{root}",
        ])
        .build()
        .unwrap();
    deploy(&t, "1.0.0").await;
    t.activate(&v("1.0.0")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("restarts")).unwrap(),
        "1.0.0\n"
    );
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
}

#[tokio::test]
async fn a_failed_restart_is_redone_by_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root)
        .restart([
            "sh",
            "-c",
            "test -e \"$1/allow\" && echo \"$2\" >> \"$1/restarts\"",
            "sh",
            "{root}",
            "{version}",
        ])
        .build()
        .unwrap();
    t.prepare(&Release::new(v("1.0.0"))).await.unwrap();
    let e = t.activate(&v("1.0.0")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandFailed);
    assert!(
        e.to_string()
            .starts_with("activate 1.0.0 on target blue: run `sh -c"),
        "{e}"
    );
    std::fs::write(root.join("allow"), "").unwrap();
    t.activate(&v("1.0.0")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("restarts")).unwrap(),
        "1.0.0\n"
    );
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
}

#[tokio::test]
async fn activating_an_unprepared_version_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root)
        .restart(["touch", "{root}/restarted"])
        .build()
        .unwrap();
    let e = t.activate(&v("9.9.9")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(msg.starts_with("activate 9.9.9 on target blue:"), "{msg}");
    assert!(
        msg.contains(&root.join("releases/9.9.9").display().to_string()),
        "{msg}"
    );

    // A directory without the completion marker is not a prepared release either.
    std::fs::create_dir_all(root.join("releases/9.9.9")).unwrap();
    let e = t.activate(&v("9.9.9")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(link_of(&root).is_none());
    assert!(!root.join("restarted").exists());
}

#[tokio::test]
async fn keep_prunes_old_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root).keep(2).build().unwrap();
    for r in ["1", "2", "3", "4", "5"] {
        deploy(&t, r).await;
    }
    assert_eq!(release_names(&root), [".history", "4", "5"]);
    // Rolling back to the previous release is always possible.
    t.activate(&v("4")).await.unwrap();
    assert_eq!(release_names(&root), [".history", "4", "5"]);
    assert_eq!(t.current().await.unwrap(), Some(v("4")));
}

#[tokio::test]
async fn pruning_never_removes_current_or_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root).keep(2).build().unwrap();
    for r in ["1", "2", "3"] {
        deploy(&t, r).await;
    }
    assert_eq!(release_names(&root), [".history", "2", "3"]);
    // Two releases prepared but never activated are newer than everything activated.
    t.prepare(&Release::new(v("4"))).await.unwrap();
    t.prepare(&Release::new(v("5"))).await.unwrap();
    // Roll back to 2: the newest two are 2 (just activated) and 5 (just prepared); 3 is the
    // previous release and stays too, 4 goes.
    t.activate(&v("2")).await.unwrap();
    assert_eq!(release_names(&root), [".history", "2", "3", "5"]);
    assert_eq!(t.current().await.unwrap(), Some(v("2")));
}

#[tokio::test]
async fn current_rejects_a_foreign_link() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("current")).unwrap();
    let t = builder(&root).build().unwrap();
    let e = t.current().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("/etc"), "{e}");
}

#[tokio::test]
async fn stop_and_start_run_their_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    let t = builder(&root)
        .stop_command(["touch", "{root}/stopped-{version}"])
        .start_command(["touch", "{root}/started-{version}"])
        .build()
        .unwrap();
    // Nothing activated: nothing serves, so stop is done; start has nothing to start.
    t.stop().await.unwrap();
    assert!(!root.join("stopped-").exists());
    let e = t.start().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().starts_with("start on target blue:"), "{e}");

    deploy(&t, "1.0.0").await;
    t.stop().await.unwrap();
    t.stop().await.unwrap();
    t.start().await.unwrap();
    assert!(root.join("stopped-1.0.0").is_file());
    assert!(root.join("started-1.0.0").is_file());

    // Without commands both are no-ops.
    let plain = builder(&root).build().unwrap();
    plain.stop().await.unwrap();
    plain.start().await.unwrap();
}

#[tokio::test]
async fn stop_without_version_placeholder_runs_before_any_activation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    let t = builder(&root)
        .stop_command(["touch", "{root}/stopped"])
        .build()
        .unwrap();
    t.stop().await.unwrap();
    assert!(root.join("stopped").is_file());
}

#[tokio::test]
async fn command_timeout_applies_to_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("app");
    let t = builder(&root)
        .restart(["sleep", "30"])
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    t.prepare(&Release::new(v("1"))).await.unwrap();
    let e = t.activate(&v("1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.is_retryable());
}

#[test]
fn builder_reports_every_problem_at_once() {
    let e = ReleaseDirTarget::builder(
        blue(),
        Arc::new(LocalHost::new()),
        "relative/dir".into(),
        Endpoint::http("h", 1),
    )
    .restart(Vec::<String>::new())
    .start_command([""])
    .keep(1)
    .command_timeout(Duration::ZERO)
    .build()
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.starts_with("build release directory target blue:"),
        "{msg}"
    );
    for part in [
        "relative/dir must be an absolute path",
        "restart command must not be empty",
        "start command has an empty program",
        "keep is 1",
        "command timeout",
    ] {
        assert!(msg.contains(part), "{part:?} missing in {msg}");
    }
}

#[test]
fn target_reports_id_and_endpoint() {
    let t = builder(Path::new("/srv/app")).build().unwrap();
    assert_eq!(t.id(), &blue());
    assert_eq!(t.endpoint(), Endpoint::http("127.0.0.1", 8081));
    assert_eq!(t.release_dir(&v("1.2")), Path::new("/srv/app/releases/1.2"));
}

// ---------------------------------------------------------------------------------------------
// Probes

fn request(endpoint: Endpoint, expected: Option<&str>) -> ProbeRequest {
    ProbeRequest::new(blue(), endpoint, expected.map(v))
}

fn json_probe() -> HttpProbe {
    HttpProbe::builder()
        .expect_field("status", "ok")
        .version_field("version")
        .build()
        .unwrap()
}

#[tokio::test]
async fn http_probe_healthy_reads_the_version() {
    let state = HealthState::new("2.0.0");
    let server = TestHttpServer::health(state).await.unwrap();
    let h = json_probe()
        .check(&request(server.endpoint(), Some("2.0.0")))
        .await
        .unwrap();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.version, Some(v("2.0.0")));
    assert_eq!(h.reason, "HTTP 200, status ok, version 2.0.0");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn http_probe_503_is_unhealthy() {
    let state = HealthState::new("2.0.0");
    let server = TestHttpServer::health(state.clone()).await.unwrap();
    state.set_healthy(false);
    let h = json_probe()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.answered, "a 503 is an answer");
    assert!(h.reason.starts_with("HTTP 503"), "{}", h.reason);
    // The version is still read from the unhealthy answer.
    assert_eq!(h.version, Some(v("2.0.0")));
    state.set_healthy(true);
    assert!(
        json_probe()
            .check(&request(server.endpoint(), None))
            .await
            .unwrap()
            .healthy
    );
}

#[tokio::test]
async fn http_probe_wrong_field_is_unhealthy() {
    let server = TestHttpServer::start(|_| {
        TestResponse::json(200, &serde_json::json!({"status": "degraded"}))
    })
    .await
    .unwrap();
    let h = json_probe()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.answered);
    assert_eq!(h.reason, "field status is \"degraded\", expected \"ok\"");

    let probe = HttpProbe::builder()
        .expect_field("checks.db", "ok")
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert_eq!(h.reason, "field checks.db is missing, expected \"ok\"");
}

#[tokio::test]
async fn http_probe_non_json_is_unhealthy() {
    let server = TestHttpServer::start(|_| TestResponse::text(200, "OK"))
        .await
        .unwrap();
    let h = json_probe()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.reason.starts_with("answer is not JSON"), "{}", h.reason);
    // Without JSON checks the same answer is healthy.
    let h = HttpProbe::builder()
        .build()
        .unwrap()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.version, None);
}

#[tokio::test]
async fn http_probe_wrong_version_is_unhealthy() {
    let state = HealthState::new("1.0.0");
    let server = TestHttpServer::health(state.clone()).await.unwrap();
    let h = json_probe()
        .check(&request(server.endpoint(), Some("2.0.0")))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.answered, "a wrong version is an answer");
    assert_eq!(h.reason, "version 1.0.0, expected 2.0.0");
    assert_eq!(h.version, Some(v("1.0.0")));
    state.set_version("2.0.0");
    let h = json_probe()
        .check(&request(server.endpoint(), Some("2.0.0")))
        .await
        .unwrap();
    assert!(h.healthy, "{h:?}");
}

#[tokio::test]
async fn http_probe_missing_or_invalid_version_field() {
    let server = TestHttpServer::start(|req| match req.path.as_str() {
        "/bad" => TestResponse::json(200, &serde_json::json!({"version": "1 0"})),
        _ => TestResponse::json(200, &serde_json::json!({"status": "ok"})),
    })
    .await
    .unwrap();
    let probe = HttpProbe::builder()
        .version_field("version")
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), Some("2.0.0")))
        .await
        .unwrap();
    assert_eq!(h.reason, "field version is missing, expected version 2.0.0");
    // Nothing expected: a service that does not report its version is not wrong.
    assert!(
        probe
            .check(&request(server.endpoint(), None))
            .await
            .unwrap()
            .healthy
    );
    let probe = HttpProbe::builder()
        .path("/bad")
        .version_field("version")
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert_eq!(
        h.reason,
        "field version is \"1 0\", which is not a valid version"
    );
}

#[tokio::test]
async fn http_probe_latency_budget() {
    let state = HealthState::new("1");
    state.set_delay(Some(Duration::from_millis(400)));
    let server = TestHttpServer::health(state).await.unwrap();
    let probe = HttpProbe::builder()
        .latency_budget(Duration::from_millis(100))
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.answered, "a slow answer is an answer");
    assert!(h.latency >= Duration::from_millis(400), "{h:?}");
    assert!(
        h.reason.starts_with("took ") && h.reason.ends_with(", budget 100 ms"),
        "{}",
        h.reason
    );
}

#[tokio::test]
async fn http_probe_timeout_is_unhealthy() {
    let state = HealthState::new("1");
    state.set_delay(Some(Duration::from_secs(3)));
    let server = TestHttpServer::health(state).await.unwrap();
    let probe = HttpProbe::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(!h.answered, "no answer in time is no answer");
    assert_eq!(
        h.reason,
        format!("no answer within 200 ms from {}", server.url("/health"))
    );
    assert!(h.latency < Duration::from_secs(2), "{h:?}");
}

#[tokio::test]
async fn http_probe_connection_refused() {
    let server = TestHttpServer::health(HealthState::new("1")).await.unwrap();
    let endpoint = server.endpoint();
    let url = server.url("/health");
    server.stop().await;
    let h = json_probe().check(&request(endpoint, None)).await.unwrap();
    assert!(!h.healthy);
    assert!(!h.answered, "a refused connection is no answer");
    assert_eq!(h.reason, format!("connection refused to {url}"));
    assert_eq!(h.version, None);
}

#[tokio::test]
async fn http_probe_does_not_follow_redirects() {
    let server = TestHttpServer::start(|req| match req.path.as_str() {
        "/health" => TestResponse::new(302).with_header("location", "http://127.0.0.1:1/elsewhere"),
        _ => TestResponse::new(200),
    })
    .await
    .unwrap();
    let h = HttpProbe::builder()
        .build()
        .unwrap()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(h.reason.starts_with("HTTP 302"), "{}", h.reason);
    assert_eq!(server.requests(), 1);
    let probe = HttpProbe::builder()
        .expect_status(200..=399)
        .build()
        .unwrap();
    assert!(
        probe
            .check(&request(server.endpoint(), None))
            .await
            .unwrap()
            .healthy
    );
}

#[tokio::test]
async fn http_probe_sends_headers_and_path() {
    let server = TestHttpServer::start(|req| {
        if req.path == "/ready"
            && req.query.as_deref() == Some("deep=1")
            && req.header("Authorization") == Some("Bearer t")
        {
            TestResponse::new(204)
        } else {
            TestResponse::new(401)
        }
    })
    .await
    .unwrap();
    let probe = HttpProbe::builder()
        .path("/ready?deep=1")
        .header("authorization", "Bearer t")
        .build()
        .unwrap();
    let h = probe
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.reason, "HTTP 204");
    let h = HttpProbe::builder()
        .path("/ready")
        .build()
        .unwrap()
        .check(&request(server.endpoint(), None))
        .await
        .unwrap();
    assert!(h.reason.starts_with("HTTP 401"), "{}", h.reason);
}

#[tokio::test]
async fn http_probe_cannot_run_on_an_unknown_scheme() {
    let mut endpoint = Endpoint::http("127.0.0.1", 1);
    endpoint.scheme = "ftp".to_owned();
    let e = json_probe()
        .check(&request(endpoint, None))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("target blue"), "{e}");
}

#[tokio::test]
async fn tcp_probe_healthy_and_refused() {
    let server = TestHttpServer::health(HealthState::new("1")).await.unwrap();
    let endpoint = server.endpoint();
    let h = TcpProbe::new()
        .check(&request(endpoint.clone(), None))
        .await
        .unwrap();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.reason, format!("connected to {}", endpoint.authority()));
    server.stop().await;
    let h = TcpProbe::new()
        .check(&request(endpoint.clone(), None))
        .await
        .unwrap();
    assert!(!h.healthy);
    assert!(!h.answered);
    assert_eq!(
        h.reason,
        format!("connection refused to {}", endpoint.authority())
    );
}

// ---------------------------------------------------------------------------------------------
// TestHttpServer

#[tokio::test]
async fn test_server_keeps_connections_alive_and_counts() {
    let server = TestHttpServer::health(HealthState::new("1")).await.unwrap();
    let client = reqwest_free_get(&server, "/health", 3).await;
    assert_eq!(client, [200, 200, 200]);
    assert_eq!(server.requests(), 3);
    assert_eq!(reqwest_free_get(&server, "/other", 1).await, [404]);
}

/// Send `n` requests over one TCP connection (keep-alive) and return the status codes.
async fn reqwest_free_get(server: &TestHttpServer, path: &str, n: usize) -> Vec<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut codes = Vec::new();
    for _ in 0..n {
        let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        codes.push(status.split(' ').nth(1).unwrap().parse().unwrap());
        let mut len = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.unwrap();
    }
    codes
}

// ---------------------------------------------------------------------------------------------
// The conformance suite catches broken hosts

/// A host that joins the arguments into one shell string: what the contract forbids.
#[derive(Debug, Clone, Default)]
struct ShellJoiningHost(LocalHost);

/// A host whose `remove` fails on a missing path.
#[derive(Debug, Clone, Default)]
struct StrictRemoveHost(LocalHost);

macro_rules! delegate_host {
    ($ty:ident, run = $run:expr, remove = $remove:expr) => {
        #[async_trait::async_trait]
        impl deploy_core::Host for $ty {
            fn name(&self) -> &str {
                stringify!($ty)
            }
            async fn run(
                &self,
                command: &deploy_core::Command,
            ) -> deploy_core::Result<deploy_core::Output> {
                let f: fn(&deploy_core::Command) -> deploy_core::Command = $run;
                self.0.run(&f(command)).await
            }
            async fn write_file(
                &self,
                path: &Path,
                contents: &[u8],
                mode: Option<u32>,
            ) -> deploy_core::Result<()> {
                self.0.write_file(path, contents, mode).await
            }
            async fn upload(
                &self,
                local: &Path,
                path: &Path,
                mode: Option<u32>,
            ) -> deploy_core::Result<()> {
                self.0.upload(local, path, mode).await
            }
            async fn read_file(&self, path: &Path) -> deploy_core::Result<Vec<u8>> {
                self.0.read_file(path).await
            }
            async fn remove(&self, path: &Path) -> deploy_core::Result<()> {
                let strict: bool = $remove;
                if strict && self.0.file_kind(path).await?.is_none() {
                    return Err(deploy_core::Error::new(
                        ErrorKind::NotFound,
                        "remove",
                        path.display().to_string(),
                        "missing",
                    ));
                }
                self.0.remove(path).await
            }
            async fn rename(&self, from: &Path, to: &Path) -> deploy_core::Result<()> {
                self.0.rename(from, to).await
            }
            async fn symlink(&self, target: &Path, link: &Path) -> deploy_core::Result<()> {
                self.0.symlink(target, link).await
            }
            async fn read_link(&self, link: &Path) -> deploy_core::Result<Option<PathBuf>> {
                self.0.read_link(link).await
            }
            async fn create_dir_all(&self, path: &Path) -> deploy_core::Result<()> {
                self.0.create_dir_all(path).await
            }
            async fn list_dir(
                &self,
                path: &Path,
            ) -> deploy_core::Result<Vec<(String, deploy_core::FileKind)>> {
                self.0.list_dir(path).await
            }
            async fn file_kind(
                &self,
                path: &Path,
            ) -> deploy_core::Result<Option<deploy_core::FileKind>> {
                self.0.file_kind(path).await
            }
        }
    };
}

fn through_shell(c: &deploy_core::Command) -> deploy_core::Command {
    let mut line = c.program.to_string_lossy().into_owned();
    for a in &c.args {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    let mut out = deploy_core::Command::from_argv(["sh", "-c", &line]).unwrap();
    out.cwd = c.cwd.clone();
    out.env = c.env.clone();
    out.stdin = c.stdin.clone();
    out.timeout = c.timeout;
    out
}

delegate_host!(ShellJoiningHost, run = through_shell, remove = false);
delegate_host!(StrictRemoveHost, run = |c| c.clone(), remove = true);

#[tokio::test]
#[should_panic(
    expected = "host conformance (ShellJoiningHost): run must pass every argument byte for byte"
)]
async fn conformance_catches_a_host_that_uses_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    host_conformance(&ShellJoiningHost::default(), dir.path()).await;
}

#[tokio::test]
#[should_panic(expected = "host conformance (StrictRemoveHost): remove of a missing path failed")]
async fn conformance_catches_a_host_whose_remove_is_not_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    host_conformance(&StrictRemoveHost::default(), dir.path()).await;
}
