//! `DockerTarget` over `SshHost`: a real sshd on loopback (deploy-ssh's `SshdFixture`, logging
//! in as root on this machine) in front of a private dockerd — the same code path as a remote
//! server. The target conformance suite, an image archive uploaded over SSH and loaded, and a
//! secret that no process's command line on the "remote" side ever holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::{Endpoint, Release, SecretString, Target, TargetId, Version};
use deploy_docker::DockerTarget;
use deploy_docker::testing::{DockerdFixture, RecordingHost, served_version};
use deploy_ssh::testing::{ArgvWatch, SshdFixture};

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_target_over_ssh_passes_the_target_conformance_suite() {
    let engine = DockerdFixture::start().unwrap();
    let sshd = SshdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // 1.0.0 comes as an image archive uploaded over SSH; 2.0.0 is already in the engine.
    engine
        .build_test_image("deploy-test/ssh:1.0.0", "1.0.0", true)
        .unwrap();
    let archive = tmp.path().join("ssh-1.0.0.tar");
    engine
        .save_image("deploy-test/ssh:1.0.0", &archive)
        .unwrap();
    engine
        .docker_ok(&["image", "rm", "deploy-test/ssh:1.0.0"])
        .unwrap();
    engine
        .build_test_image("deploy-test/ssh:2.0.0", "2.0.0", true)
        .unwrap();

    let canary = "canary-ssh-9e2b-secret";
    let host = RecordingHost::new(Arc::new(sshd.host().unwrap()));
    let port = free_port().unwrap();
    let remote_tmp = tmp.path().join("remote-tmp");
    std::fs::create_dir(&remote_tmp).unwrap();
    let t = DockerTarget::builder(
        TargetId::new("green").unwrap(),
        Arc::new(host.clone()),
        "ssh",
        Endpoint::http("127.0.0.1", port),
    )
    .docker_program(engine.program())
    .docker_host(engine.socket())
    .image("deploy-test/ssh:{version}")
    .network("host")
    .env("PORT", port.to_string())
    .secret_env("DB_PASSWORD", SecretString::from(canary))
    .temp_dir(&remote_tmp)
    .stop_timeout(Duration::from_secs(5))
    .command_timeout(Duration::from_secs(120))
    .build()
    .unwrap();

    // The marker is `docker create`'s own argument vector on this test's engine
    // (`docker -H <socket> create …`): the command that takes the secret must have been seen
    // while it ran.
    let watch = ArgvWatch::start(
        vec![canary.as_bytes().to_vec()],
        vec![format!("{}\0create\0", engine.socket()).into_bytes()],
    );
    let started = Instant::now();
    conformance::target(&t, &Release::new(v("1.0.0")).with_artifact(&archive)).await;
    assert_eq!(served_version(port).await, Some(v("1.0.0")));
    conformance::target(&t, &Release::new(v("2.0.0"))).await;
    let elapsed = started.elapsed();
    let report = watch.stop();
    assert_eq!(served_version(port).await, Some(v("2.0.0")));
    assert_eq!(host.docker_subcommands("load"), 1, "the archive, once");
    assert!(
        report.hits.is_empty(),
        "a command line held the secret: {:?}",
        report.hits
    );
    assert!(
        report.markers[0] > 0,
        "`docker create` was seen, or the watch proves nothing: {report:?}"
    );
    assert_eq!(std::fs::read_dir(&remote_tmp).unwrap().count(), 0);
    let seen = engine
        .docker_ok(&[
            "exec",
            "ssh-green-2.0.0",
            "sh",
            "-c",
            "echo \"$DB_PASSWORD\"",
        ])
        .unwrap();
    assert_eq!(seen.trim(), canary);
    eprintln!(
        "conformance over SSH twice: {elapsed:?}; {} commands over SSH; argv watch: {} passes, {} command lines, `docker create` in {}",
        host.commands().len(),
        report.passes,
        report.command_lines,
        report.markers[0]
    );
    assert_eq!(t.current().await.unwrap(), Some(v("2.0.0")));
}
