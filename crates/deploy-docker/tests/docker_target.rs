//! `DockerTarget` against a real, private dockerd started by each test (`DockerdFixture`): the
//! target conformance suite, idempotent prepare from an image archive, activation and going back
//! by a start, pruning, refused leftovers, secrets kept off command lines and disk, the
//! container's own HEALTHCHECK as a probe, and a registry login's password on stdin only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::{
    Endpoint, ErrorKind, Health, HealthProbe, HttpProbe, LocalHost, ProbeRequest, Release,
    SecretString, Target, TargetId, Version,
};
use deploy_docker::testing::{DockerdFixture, RecordingHost, docker_subcommand, served_version};
use deploy_docker::{DockerHealthProbe, DockerTarget, DockerTargetBuilder};

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

/// A target for slot `slot` of app `app` on `engine`, through `host`, serving on `port`.
fn builder(
    engine: &DockerdFixture,
    host: Arc<dyn deploy_core::Host>,
    app: &str,
    slot: &str,
    port: u16,
) -> DockerTargetBuilder {
    DockerTarget::builder(
        TargetId::new(slot).unwrap(),
        host,
        app,
        Endpoint::http("127.0.0.1", port),
    )
    .docker_program(engine.program())
    .docker_host(engine.socket())
    .network("host")
    .env("PORT", port.to_string())
    .stop_timeout(Duration::from_secs(5))
    .command_timeout(Duration::from_secs(120))
}

/// The state (`running`, `exited`, `created`) of container `name`.
fn state(engine: &DockerdFixture, name: &str) -> String {
    engine
        .docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            name,
        ])
        .unwrap()
        .trim()
        .to_owned()
}

/// The container names of app `app`, sorted.
fn containers(engine: &DockerdFixture, app: &str) -> Vec<String> {
    let out = engine
        .docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=deploy.app={app}"),
            "--format",
            "{{.Names}}",
        ])
        .unwrap();
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_target_passes_the_target_conformance_suite_locally() {
    let engine = DockerdFixture::start().unwrap();
    for version in ["1.0.0", "2.0.0"] {
        engine
            .build_test_image(&format!("deploy-test/conf:{version}"), version, true)
            .unwrap();
    }
    let port = free_port().unwrap();
    let t = builder(&engine, Arc::new(LocalHost::new()), "conf", "blue", port)
        .image("deploy-test/conf:{version}")
        .build()
        .unwrap();
    let started = Instant::now();
    // A fresh slot (nothing current), then a second release: the suite's rollback branch.
    conformance::target(&t, &Release::new(v("1.0.0"))).await;
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    conformance::target(&t, &Release::new(v("2.0.0"))).await;
    eprintln!("conformance suite twice: {:?}", started.elapsed());
    assert_eq!(served_version(port).await, Some(v("2.0.0")));
    assert_eq!(state(&engine, "conf-blue-2.0.0"), "running");
    assert_eq!(state(&engine, "conf-blue-1.0.0"), "exited");
    // The never-prepared version left nothing behind.
    assert_eq!(
        containers(&engine, "conf"),
        vec!["conf-blue-1.0.0", "conf-blue-2.0.0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_loads_an_image_archive_once_and_is_idempotent() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("host-tmp");
    std::fs::create_dir(&staging).unwrap();
    engine
        .build_test_image("deploy-test/arc:1.0.0", "1.0.0", true)
        .unwrap();
    let tar = tmp.path().join("arc-1.0.0.tar");
    engine.save_image("deploy-test/arc:1.0.0", &tar).unwrap();
    // A gzipped archive, as CI would keep it; the engine no longer has the image.
    let gz = std::process::Command::new("gzip")
        .arg(&tar)
        .status()
        .unwrap();
    assert!(gz.success());
    let archive = tmp.path().join("arc-1.0.0.tar.gz");
    engine
        .docker_ok(&["image", "rm", "deploy-test/arc:1.0.0"])
        .unwrap();

    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let port = free_port().unwrap();
    let t = builder(&engine, Arc::new(host.clone()), "arc", "blue", port)
        .temp_dir(&staging)
        .build()
        .unwrap();
    let release = Release::new(v("1.0.0")).with_artifact(&archive);
    t.prepare(&release).await.unwrap();
    assert_eq!(host.docker_subcommands("load"), 1);
    assert_eq!(host.docker_subcommands("create"), 1);
    assert_eq!(state(&engine, "arc-blue-1.0.0"), "created");
    assert_eq!(t.current().await.unwrap(), None, "prepare starts nothing");
    let id = engine
        .docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.Id}}",
            "arc-blue-1.0.0",
        ])
        .unwrap();
    // The uploaded archive is gone from the host's temporary directory.
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    t.prepare(&release).await.unwrap();
    t.prepare(&release).await.unwrap();
    assert_eq!(host.docker_subcommands("load"), 1, "loaded once");
    assert_eq!(host.docker_subcommands("create"), 1, "created once");
    let again = engine
        .docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.Id}}",
            "arc-blue-1.0.0",
        ])
        .unwrap();
    assert_eq!(id, again, "the same container is reused");

    // Not an image archive: refused, naming it.
    let bad = Release::new(v("1.0.1")).with_artifact(tmp.path().join("app.zip"));
    let e = t.prepare(&bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("app.zip"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_stops_the_old_and_going_back_is_a_start() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut releases = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let tag = format!("deploy-test/flip:{version}");
        engine.build_test_image(&tag, version, true).unwrap();
        let archive = tmp.path().join(format!("flip-{version}.tar"));
        engine.save_image(&tag, &archive).unwrap();
        engine.docker_ok(&["image", "rm", &tag]).unwrap();
        releases.push(Release::new(v(version)).with_artifact(archive));
    }
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let port = free_port().unwrap();
    let t = builder(&engine, Arc::new(host.clone()), "flip", "blue", port)
        .build()
        .unwrap();
    for r in &releases {
        t.prepare(r).await.unwrap();
    }
    t.activate(&v("1.0.0")).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("1.0.0")));

    let t0 = Instant::now();
    t.activate(&v("2.0.0")).await.unwrap();
    let forward = t0.elapsed();
    assert_eq!(state(&engine, "flip-blue-1.0.0"), "exited", "old stopped");
    assert_eq!(state(&engine, "flip-blue-2.0.0"), "running");
    assert_eq!(t.current().await.unwrap(), Some(v("2.0.0")));
    assert_eq!(served_version(port).await, Some(v("2.0.0")));

    // Going back: the archives are gone, so only a start can do it.
    for r in &releases {
        std::fs::remove_file(r.artifact.as_ref().unwrap()).unwrap();
    }
    host.clear();
    let t0 = Instant::now();
    t.activate(&v("1.0.0")).await.unwrap();
    let back = t0.elapsed();
    let ran: Vec<String> = host
        .commands()
        .iter()
        .filter_map(docker_subcommand)
        .collect();
    assert!(
        !ran.iter()
            .any(|c| ["load", "pull", "create", "login"].contains(&c.as_str())),
        "{ran:?}"
    );
    assert_eq!(ran.iter().filter(|c| *c == "start").count(), 1, "{ran:?}");
    assert_eq!(ran.iter().filter(|c| *c == "stop").count(), 1, "{ran:?}");
    assert_eq!(state(&engine, "flip-blue-2.0.0"), "exited");
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    eprintln!("activate 1→2: {forward:?}; back 2→1 by a start: {back:?}; commands {ran:?}");

    // stop/start keep the version; current() still says it while stopped.
    t.stop().await.unwrap();
    assert_eq!(state(&engine, "flip-blue-1.0.0"), "exited");
    assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    t.start().await.unwrap();
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_removes_old_containers_and_their_images_but_never_the_previous() {
    let engine = DockerdFixture::start().unwrap();
    let versions = ["1.0.0", "2.0.0", "3.0.0", "4.0.0"];
    for version in versions {
        engine
            .build_test_image(&format!("deploy-test/prune:{version}"), version, true)
            .unwrap();
    }
    let port = free_port().unwrap();
    let t = builder(&engine, Arc::new(LocalHost::new()), "prune", "blue", port)
        .image("deploy-test/prune:{version}")
        .keep(2)
        .build()
        .unwrap();
    for version in versions {
        t.prepare(&Release::new(v(version))).await.unwrap();
        t.activate(&v(version)).await.unwrap();
    }
    assert_eq!(
        containers(&engine, "prune"),
        vec!["prune-blue-3.0.0", "prune-blue-4.0.0"]
    );
    let images = engine
        .docker_ok(&["images", "--format", "{{.Tag}}", "deploy-test/prune"])
        .unwrap();
    let mut images: Vec<&str> = images.lines().collect();
    images.sort();
    assert_eq!(images, vec!["3.0.0", "4.0.0"], "unused images removed");

    // The previous one is kept even when newer containers were only prepared.
    for version in ["5.0.0", "6.0.0"] {
        engine
            .build_test_image(&format!("deploy-test/prune:{version}"), version, true)
            .unwrap();
        t.prepare(&Release::new(v(version))).await.unwrap();
    }
    t.activate(&v("6.0.0")).await.unwrap();
    let left = containers(&engine, "prune");
    assert!(left.contains(&"prune-blue-4.0.0".to_owned()), "{left:?}");
    assert!(left.contains(&"prune-blue-6.0.0".to_owned()), "{left:?}");
    t.activate(&v("4.0.0")).await.unwrap();
    assert_eq!(served_version(port).await, Some(v("4.0.0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_container_with_other_labels_is_refused_by_name() {
    let engine = DockerdFixture::start().unwrap();
    engine
        .build_test_image("deploy-test/left:1.0.0", "1.0.0", true)
        .unwrap();
    engine
        .docker_ok(&[
            "create",
            "--name",
            "left-blue-1.0.0",
            "--label",
            "deploy.app=other",
            "deploy-test/left:1.0.0",
        ])
        .unwrap();
    let t = builder(
        &engine,
        Arc::new(LocalHost::new()),
        "left",
        "blue",
        free_port().unwrap(),
    )
    .image("deploy-test/left:{version}")
    .build()
    .unwrap();
    let e = t.prepare(&Release::new(v("1.0.0"))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let m = e.to_string();
    assert!(m.starts_with("prepare 1.0.0 on target blue"), "{m}");
    assert!(
        m.contains("left-blue-1.0.0") && m.contains("deploy.app=other"),
        "{m}"
    );
    // A version never prepared cannot be activated.
    let e = t.activate(&v("9.9.9")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_off_command_lines_and_disk_but_reach_the_container() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    engine
        .build_test_image("deploy-test/sec:1.0.0", "1.0.0", true)
        .unwrap();
    let canary = "canary-7d1e-secret-value";
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let port = free_port().unwrap();
    let t = builder(&engine, Arc::new(host.clone()), "sec", "blue", port)
        .image("deploy-test/sec:{version}")
        .secret_env("API_TOKEN", SecretString::from(canary))
        .temp_dir(tmp.path())
        .build()
        .unwrap();
    t.prepare(&Release::new(v("1.0.0"))).await.unwrap();
    t.activate(&v("1.0.0")).await.unwrap();

    let commands = host.commands();
    assert!(commands.len() >= 4, "{commands:?}");
    for c in &commands {
        let mut argv = vec![c.program.to_string_lossy().into_owned()];
        argv.extend(c.args.iter().map(|a| a.to_string_lossy().into_owned()));
        assert!(!argv.iter().any(|a| a.contains(canary)), "{argv:?}");
        assert!(
            !c.env
                .iter()
                .any(|(_, v)| v.to_string_lossy().contains(canary))
        );
    }
    let create = commands
        .iter()
        .find(|c| docker_subcommand(c).as_deref() == Some("create"))
        .unwrap();
    assert!(create.args.iter().any(|a| a == "--env-file"), "{create:?}");
    // The env file is gone.
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing left in the temporary directory"
    );
    // The container's process has it; its command line does not.
    let seen = engine
        .docker_ok(&["exec", "sec-blue-1.0.0", "sh", "-c", "echo \"$API_TOKEN\""])
        .unwrap();
    assert_eq!(seen.trim(), canary);
    let args = engine
        .docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{json .Path}} {{json .Args}} {{json .Config.Cmd}}",
            "sec-blue-1.0.0",
        ])
        .unwrap();
    assert!(!args.contains(canary), "{args}");
    assert!(!format!("{t:?}").contains(canary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_own_healthcheck_is_a_probe() {
    let engine = DockerdFixture::start().unwrap();
    engine
        .build_test_image("deploy-test/hc:1.0.0", "1.0.0", true)
        .unwrap();
    engine
        .build_test_image("deploy-test/hc:2.0.0", "2.0.0", false)
        .unwrap();
    let port = free_port().unwrap();
    let t = Arc::new(
        builder(&engine, Arc::new(LocalHost::new()), "hc", "blue", port)
            .image("deploy-test/hc:{version}")
            .build()
            .unwrap(),
    );
    let http: deploy_core::DynHealthProbe = Arc::new(
        HttpProbe::builder()
            .version_field("version")
            .build()
            .unwrap(),
    );
    let probe = DockerHealthProbe::new([Arc::clone(&t)]).then(http);
    let request = |version: &str| {
        ProbeRequest::new(
            TargetId::new("blue").unwrap(),
            Endpoint::http("127.0.0.1", port),
            Some(v(version)),
        )
    };
    let h = t.container_health().await.unwrap();
    assert!(!h.healthy && !h.answered, "nothing started yet: {h:?}");

    t.prepare(&Release::new(v("1.0.0"))).await.unwrap();
    t.activate(&v("1.0.0")).await.unwrap();
    let first = t.container_health().await.unwrap();
    assert!(
        !first.answered && first.reason.contains("starting"),
        "just started: {first:?}"
    );
    let t0 = Instant::now();
    let healthy = wait_for(&probe, &request("1.0.0"), |h| h.healthy).await;
    eprintln!(
        "starting → healthy in {:?}: {}",
        t0.elapsed(),
        healthy.reason
    );
    assert!(healthy.reason.contains("healthy"), "{healthy:?}");
    assert!(
        healthy.reason.contains("\"version\":\"1.0.0\""),
        "the last probe's output: {healthy:?}"
    );
    assert_eq!(healthy.version, Some(v("1.0.0")));
    // Another version expected: unhealthy at once, with the version seen.
    let wrong = probe.check(&request("3.0.0")).await.unwrap();
    assert!(!wrong.healthy && wrong.answered, "{wrong:?}");
    assert_eq!(wrong.version, Some(v("1.0.0")));

    t.prepare(&Release::new(v("2.0.0"))).await.unwrap();
    t.activate(&v("2.0.0")).await.unwrap();
    let t0 = Instant::now();
    let bad = wait_for(&probe, &request("2.0.0"), |h| h.answered && !h.healthy).await;
    eprintln!("starting → unhealthy in {:?}: {}", t0.elapsed(), bad.reason);
    assert!(bad.reason.contains("unhealthy"), "{bad:?}");
    assert!(bad.reason.contains("probe says no"), "{bad:?}");
    // The HTTP answer alone would have said healthy: the container's check decides.
    let http_only = HttpProbe::builder()
        .version_field("version")
        .build()
        .unwrap()
        .check(&request("2.0.0"))
        .await
        .unwrap();
    assert!(http_only.healthy, "{http_only:?}");

    // Going back: 1.0.0's container passed its HEALTHCHECK when it last ran. Docker says
    // `starting` until its next check; its HTTP answer decides meanwhile.
    t.activate(&v("1.0.0")).await.unwrap();
    let own = t.container_health().await.unwrap();
    let back = probe.check(&request("1.0.0")).await.unwrap();
    if own.reason.contains("starting") {
        assert!(back.healthy, "back from a healthy run: {back:?}");
        assert!(
            back.reason
                .contains("passed its HEALTHCHECK when it last ran"),
            "{back:?}"
        );
        // Without a probe of its answer, the container's own check still decides.
        let alone = DockerHealthProbe::new([Arc::clone(&t)])
            .check(&request("1.0.0"))
            .await
            .unwrap();
        assert!(!alone.healthy && !alone.answered, "{alone:?}");
    } else {
        // Docker already checked it again (a slow machine): healthy by its own check.
        assert!(back.healthy, "{back:?}");
    }
    // A new container never is: 2.0.0's failed, and a container that never ran waits for its
    // first check (asserted above for 1.0.0 and 2.0.0).
}

/// Check with `probe` every 200 ms until `done` says yes (at most 30 s).
async fn wait_for(
    probe: &DockerHealthProbe,
    request: &ProbeRequest,
    done: impl Fn(&Health) -> bool,
) -> Health {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = probe.check(request).await.unwrap();
        if done(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "not reached within 30 s: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_logs_in_with_the_password_on_stdin_only() {
    let engine = DockerdFixture::start().unwrap();
    let password = "canary-registry-password-51c";
    // A registry that is not there (a closed loopback port): login fails, after the command
    // was built.
    let registry = format!("127.0.0.1:{}", free_port().unwrap());
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let t = builder(
        &engine,
        Arc::new(host.clone()),
        "pull",
        "blue",
        free_port().unwrap(),
    )
    .image(format!("{registry}/pull:{{version}}"))
    .registry_login(registry.clone(), "deployer", SecretString::from(password))
    .build()
    .unwrap();
    // Present images are not pulled: nothing to log in for.
    engine
        .build_test_image(&format!("{registry}/pull:1.0.0"), "1.0.0", true)
        .unwrap();
    t.prepare(&Release::new(v("1.0.0"))).await.unwrap();
    assert_eq!(host.docker_subcommands("login"), 0);
    assert_eq!(host.docker_subcommands("pull"), 0);

    let e = t.prepare(&Release::new(v("2.0.0"))).await.unwrap_err();
    assert!(e.to_string().contains("login"), "{e}");
    let login = host
        .commands()
        .into_iter()
        .find(|c| docker_subcommand(c).as_deref() == Some("login"))
        .unwrap();
    let line = login.display();
    assert!(!line.contains(password), "{line}");
    assert!(
        line.contains("--password-stdin") && line.contains("deployer"),
        "{line}"
    );
    assert_eq!(login.stdin.as_deref(), Some(password.as_bytes()));
    assert!(!e.to_string().contains(password));
}

#[test]
fn the_fixture_leaves_nothing_behind() {
    let engine = DockerdFixture::start().unwrap();
    engine
        .build_test_image("deploy-test/gone:1.0.0", "1.0.0", true)
        .unwrap();
    let port = free_port().unwrap();
    engine
        .docker_ok(&[
            "run",
            "-d",
            "--init",
            "--network",
            "host",
            "-e",
            &format!("PORT={port}"),
            "deploy-test/gone:1.0.0",
        ])
        .unwrap();
    let dir = engine.dir().to_path_buf();
    let pid = engine.pid();
    let t0 = Instant::now();
    drop(engine);
    eprintln!("stopped (with one running container) in {:?}", t0.elapsed());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "dockerd gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "nothing mounted under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} removed", dir.display());
}
