//! `ComposeTarget` against a real, private dockerd started by each test (`DockerdFixture`) and
//! the real `docker-compose` (v1) talking to its socket: the target conformance suite,
//! activation and going back by a start (commands counted), pruning of old projects, and a
//! compose file with an application and a sidecar, its secret kept off command lines and disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::{Endpoint, LocalHost, Release, SecretString, Target, TargetId, Version};
use deploy_docker::testing::{DockerdFixture, RecordingHost, docker_subcommand, served_version};
use deploy_docker::{ComposeTarget, ComposeTargetBuilder};

/// The compose program the tests use.
const COMPOSE: &str = "docker-compose";

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

/// Fails with the install command when docker-compose is missing.
fn require_compose() {
    let ok = std::process::Command::new(COMPOSE)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{COMPOSE} is missing; install it with `apt-get install docker-compose`"
    );
}

/// A compose file with the service `app` on `${PORT}` and, when `sidecar`, a second service
/// `side` on `${SIDE_PORT}` (both the test image, which serves its version at /health), the
/// secret `${TOKEN}` in the app's environment.
fn compose_file(dir: &Path, image: &str, sidecar: bool) -> PathBuf {
    let mut text = format!(
        "version: \"3.8\"\n\
         services:\n  \
           app:\n    \
             image: {image}:${{DEPLOY_VERSION}}\n    \
             network_mode: host\n    \
             init: true\n    \
             environment:\n      \
               PORT: \"${{PORT}}\"\n      \
               TOKEN: \"${{TOKEN}}\"\n"
    );
    if sidecar {
        text.push_str(&format!(
            "  side:\n    \
               image: {image}:${{DEPLOY_VERSION}}\n    \
               network_mode: host\n    \
               init: true\n    \
               environment:\n      \
                 PORT: \"${{SIDE_PORT}}\"\n"
        ));
    }
    let path = dir.join("docker-compose.prod.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A target for slot `slot` of app `app` on `engine`, through `host`, the app on `port`.
fn builder(
    engine: &DockerdFixture,
    host: Arc<dyn deploy_core::Host>,
    dir: &Path,
    app: &str,
    slot: &str,
    file: &Path,
    port: u16,
) -> ComposeTargetBuilder {
    require_compose();
    let staging = dir.join("host-tmp");
    std::fs::create_dir_all(&staging).unwrap();
    ComposeTarget::builder(
        TargetId::new(slot).unwrap(),
        host,
        app,
        file,
        Endpoint::http("127.0.0.1", port),
    )
    .docker_program(engine.program())
    .docker_host(engine.socket())
    .project_dir(dir.join("projects"))
    .temp_dir(staging)
    .env("PORT", port.to_string())
    .stop_timeout(Duration::from_secs(5))
    .command_timeout(Duration::from_secs(120))
}

/// `name status` of every container of app `app`, sorted.
fn containers(engine: &DockerdFixture, app: &str) -> Vec<String> {
    let out = engine
        .docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=deploy.app={app}"),
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .unwrap();
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    names
}

/// Build the test image `deploy-test/<name>:<version>` for each version.
fn build_images(engine: &DockerdFixture, name: &str, versions: &[&str]) {
    for version in versions {
        engine
            .build_test_image(&format!("deploy-test/{name}:{version}"), version, true)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_target_passes_the_target_conformance_suite_locally() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    build_images(&engine, "cconf", &["1.0.0", "2.0.0"]);
    let file = compose_file(tmp.path(), "deploy-test/cconf", false);
    let port = free_port().unwrap();
    let t = builder(
        &engine,
        Arc::new(LocalHost::new()),
        tmp.path(),
        "cconf",
        "blue",
        &file,
        port,
    )
    .build()
    .unwrap();
    let started = Instant::now();
    // A fresh slot (nothing current), then a second release: the suite's rollback branch.
    conformance::target(&t, &Release::new(v("1.0.0"))).await;
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    conformance::target(&t, &Release::new(v("2.0.0"))).await;
    eprintln!("conformance suite twice: {:?}", started.elapsed());
    assert_eq!(served_version(port).await, Some(v("2.0.0")));
    assert_eq!(
        containers(&engine, "cconf"),
        vec![
            "cconf-blue-1_0_0_app_1 exited",
            "cconf-blue-2_0_0_app_1 running"
        ]
    );
    // Each project's files are on the host, under the target's directory.
    let dir = tmp.path().join("projects/cconf-blue/cconf-blue-2_0_0");
    assert!(dir.join("docker-compose.prod.yml").is_file());
    let labels = std::fs::read_to_string(dir.join("deploy-labels.override.json")).unwrap();
    assert!(labels.contains("\"deploy.version\":\"2.0.0\""), "{labels}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_stops_the_old_project_and_going_back_is_a_start() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    build_images(&engine, "cback", &["1.0.0", "2.0.0"]);
    // 1.0.0 comes as an image archive, the engine no longer holds it.
    let archive = tmp.path().join("cback-1.0.0.tar");
    engine
        .save_image("deploy-test/cback:1.0.0", &archive)
        .unwrap();
    engine
        .docker_ok(&["image", "rm", "deploy-test/cback:1.0.0"])
        .unwrap();
    let file = compose_file(tmp.path(), "deploy-test/cback", false);
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let port = free_port().unwrap();
    let t = builder(
        &engine,
        Arc::new(host.clone()),
        tmp.path(),
        "cback",
        "blue",
        &file,
        port,
    )
    .build()
    .unwrap();

    let r1 = Release::new(v("1.0.0")).with_artifact(&archive);
    t.prepare(&r1).await.unwrap();
    assert_eq!(
        (
            host.docker_subcommands("load"),
            host.docker_subcommands("create")
        ),
        (1, 1)
    );
    assert_eq!(
        containers(&engine, "cback"),
        vec!["cback-blue-1_0_0_app_1 created"]
    );
    assert_eq!(t.current().await.unwrap(), None, "prepare starts nothing");
    // The uploaded archive is gone from the host's temporary directory.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("host-tmp"))
            .unwrap()
            .count(),
        0
    );
    t.prepare(&r1).await.unwrap();
    assert_eq!(
        (
            host.docker_subcommands("load"),
            host.docker_subcommands("create")
        ),
        (1, 1),
        "prepared once"
    );
    t.activate(&r1.version).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("1.0.0")));

    // 2.0.0 from the engine's images (no archive: present, so no pull).
    t.prepare(&Release::new(v("2.0.0"))).await.unwrap();
    t.activate(&v("2.0.0")).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("2.0.0")));
    assert_eq!(
        containers(&engine, "cback"),
        vec![
            "cback-blue-1_0_0_app_1 exited",
            "cback-blue-2_0_0_app_1 running"
        ]
    );
    assert_eq!(host.docker_subcommands("pull"), 0);

    // Going back: one stop and one start, nothing loaded, pulled or created.
    host.clear();
    let back = Instant::now();
    t.activate(&v("1.0.0")).await.unwrap();
    let back = back.elapsed();
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    let counts = [
        host.docker_subcommands("load"),
        host.docker_subcommands("pull"),
        host.docker_subcommands("create"),
        host.docker_subcommands("stop"),
        host.docker_subcommands("start"),
    ];
    eprintln!("going back took {back:?}; load, pull, create, stop, start = {counts:?}");
    assert_eq!(counts, [0, 0, 0, 1, 1]);
    assert_eq!(
        containers(&engine, "cback"),
        vec![
            "cback-blue-1_0_0_app_1 running",
            "cback-blue-2_0_0_app_1 exited"
        ]
    );
    // Every compose command got the engine and the version through its environment.
    for c in host.commands().iter().filter(|c| c.program == COMPOSE) {
        let env: Vec<String> = c
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            env.contains(&"DOCKER_HOST".to_owned()) && env.contains(&"DEPLOY_VERSION".to_owned()),
            "{c:?}"
        );
        assert!(!c.display().contains("DEPLOY_VERSION"), "{}", c.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_downs_old_projects_and_their_images_but_never_the_previous() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let versions = ["1.0.0", "2.0.0", "3.0.0", "4.0.0"];
    build_images(&engine, "ckeep", &versions);
    let file = compose_file(tmp.path(), "deploy-test/ckeep", false);
    let port = free_port().unwrap();
    let t = builder(
        &engine,
        Arc::new(LocalHost::new()),
        tmp.path(),
        "ckeep",
        "blue",
        &file,
        port,
    )
    .keep(2)
    .build()
    .unwrap();
    for version in versions {
        t.prepare(&Release::new(v(version))).await.unwrap();
        t.activate(&v(version)).await.unwrap();
        assert_eq!(served_version(port).await, Some(v(version)));
    }
    // keep 2: the current (4.0.0) and the previous (3.0.0); 1.0.0 and 2.0.0 are down.
    assert_eq!(
        containers(&engine, "ckeep"),
        vec![
            "ckeep-blue-3_0_0_app_1 exited",
            "ckeep-blue-4_0_0_app_1 running"
        ]
    );
    let projects = tmp.path().join("projects/ckeep-blue");
    let mut dirs: Vec<String> = std::fs::read_dir(&projects)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, vec!["ckeep-blue-3_0_0", "ckeep-blue-4_0_0"]);
    let images = engine
        .docker_ok(&["image", "ls", "--format", "{{.Tag}}", "deploy-test/ckeep"])
        .unwrap();
    let mut tags: Vec<&str> = images.lines().collect();
    tags.sort();
    assert_eq!(tags, vec!["3.0.0", "4.0.0"], "unused images removed");
    // Going back to the kept previous still works.
    t.activate(&v("3.0.0")).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("3.0.0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_a_sidecar_moves_as_one_project_and_its_secret_stays_off_argv_and_disk() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    build_images(&engine, "cside", &["1.0.0", "2.0.0"]);
    let file = compose_file(tmp.path(), "deploy-test/cside", true);
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let (port, side) = (free_port().unwrap(), free_port().unwrap());
    let secret = "s3cret-compose-7f1";
    let t = builder(
        &engine,
        Arc::new(host.clone()),
        tmp.path(),
        "cside",
        "blue",
        &file,
        port,
    )
    .env("SIDE_PORT", side.to_string())
    .secret_env("TOKEN", SecretString::from(secret))
    .build()
    .unwrap();
    for version in ["1.0.0", "2.0.0"] {
        t.prepare(&Release::new(v(version))).await.unwrap();
        t.activate(&v(version)).await.unwrap();
        assert_eq!(served_version(port).await, Some(v(version)), "app");
        assert_eq!(served_version(side).await, Some(v(version)), "sidecar");
    }
    assert_eq!(
        containers(&engine, "cside"),
        vec![
            "cside-blue-1_0_0_app_1 exited",
            "cside-blue-1_0_0_side_1 exited",
            "cside-blue-2_0_0_app_1 running",
            "cside-blue-2_0_0_side_1 running",
        ]
    );
    // Both services carry the target's labels.
    let labels = engine
        .docker_ok(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"deploy.slot\"}} {{index .Config.Labels \"deploy.version\"}}",
            "cside-blue-2_0_0_side_1",
        ])
        .unwrap();
    assert_eq!(labels.trim(), "blue 2.0.0");
    // Going back moves both.
    t.activate(&v("1.0.0")).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    assert_eq!(served_version(side).await, Some(v("1.0.0")));

    // The secret reached the app's container (kept by every later start)…
    let env = engine
        .docker_ok(&[
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            "cside-blue-1_0_0_app_1",
        ])
        .unwrap();
    assert!(env.contains(&format!("TOKEN={secret}")), "{env}");
    // …never through a command line or a command's environment…
    let commands = host.commands();
    assert!(
        commands
            .iter()
            .any(|c| docker_subcommand(c).as_deref() == Some("create"))
    );
    for c in &commands {
        assert!(!c.display().contains(secret), "{}", c.display());
        for (_, value) in &c.env {
            assert!(!value.to_string_lossy().contains(secret), "{c:?}");
        }
    }
    // …and its env file is gone; nothing under the target's directories holds it.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("host-tmp"))
            .unwrap()
            .count(),
        0
    );
    for entry in walk(&tmp.path().join("projects")) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(!text.contains(secret), "{}", entry.display());
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_are_pulled_and_foreign_projects_refused_by_name() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    build_images(&engine, "cmiss", &["1.0.0"]);
    let file = compose_file(tmp.path(), "deploy-test/cmiss", false);
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let port = free_port().unwrap();
    let t = builder(
        &engine,
        Arc::new(host.clone()),
        tmp.path(),
        "cmiss",
        "blue",
        &file,
        port,
    )
    .build()
    .unwrap();

    // No archive and no image 9.0.0 in the engine: compose pulls it — from a "registry" on a
    // closed loopback port, so the pull fails, named — and nothing is created.
    let closed = free_port().unwrap();
    let remote = tmp.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    let pulled = builder(
        &engine,
        Arc::new(host.clone()),
        tmp.path(),
        "cmiss",
        "blue",
        &compose_file(&remote, &format!("127.0.0.1:{closed}/cmiss"), false),
        port,
    )
    .build()
    .unwrap();
    let e = pulled.prepare(&Release::new(v("9.0.0"))).await.unwrap_err();
    let m = e.to_string();
    eprintln!("{m}");
    assert!(m.contains("prepare 9.0.0") && m.contains("pull"), "{m}");
    assert_eq!(
        (
            host.docker_subcommands("pull"),
            host.docker_subcommands("create")
        ),
        (1, 0)
    );
    assert!(containers(&engine, "cmiss").is_empty());
    assert!(
        !tmp.path()
            .join("projects/cmiss-blue/cmiss-blue-9_0_0")
            .exists(),
        "no files left of the unprepared project"
    );

    // An archive that does not hold the image the compose file names: NotFound, naming both.
    engine
        .build_test_image("deploy-test/other:9.0.0", "9.0.0", true)
        .unwrap();
    let archive = tmp.path().join("other-9.0.0.tar");
    engine
        .save_image("deploy-test/other:9.0.0", &archive)
        .unwrap();
    let e = t
        .prepare(&Release::new(v("9.0.0")).with_artifact(&archive))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), deploy_core::ErrorKind::NotFound, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("deploy-test/cmiss:9.0.0") && m.contains("deploy-test/other:9.0.0"),
        "{m}"
    );
    assert_eq!(host.docker_subcommands("create"), 0);

    // A project of the same name made by hand, without the slot's labels: refused, named.
    let out = std::process::Command::new(COMPOSE)
        .args(["-p", "cmiss-blue-1_0_0", "-f"])
        .arg(&file)
        .arg("create")
        .env("DOCKER_HOST", engine.socket())
        .env("DEPLOY_VERSION", "1.0.0")
        .env("PORT", port.to_string())
        .env("TOKEN", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = t.prepare(&Release::new(v("1.0.0"))).await.unwrap_err();
    assert_eq!(e.kind(), deploy_core::ErrorKind::Conflict, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("cmiss-blue-1_0_0") && m.contains("deploy.app=(none)"),
        "{m}"
    );
    assert_eq!(
        host.docker_subcommands("create"),
        0,
        "nothing created over it"
    );
}
