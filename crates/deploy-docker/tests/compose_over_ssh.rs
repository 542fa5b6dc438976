//! `ComposeTarget` over `SshHost`: a real sshd on loopback (deploy-ssh's `SshdFixture`, logging
//! in as root on this machine) in front of a private dockerd and `docker-compose` (v1) — the
//! same code path as a remote server. The target conformance suite, an image archive uploaded
//! over SSH and loaded, the compose file uploaded, and a secret that no process's command line
//! on the "remote" side ever holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::{Endpoint, Release, SecretString, Target, TargetId, Version};
use deploy_docker::ComposeTarget;
use deploy_docker::testing::{DockerdFixture, RecordingHost, served_version};
use deploy_ssh::testing::{ArgvWatch, SshdFixture};

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_target_over_ssh_passes_the_target_conformance_suite() {
    let ok = std::process::Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "docker-compose is missing; install it with `apt-get install docker-compose`"
    );
    let engine = DockerdFixture::start().unwrap();
    let sshd = SshdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // 1.0.0 comes as an image archive uploaded over SSH; 2.0.0 is already in the engine.
    for version in ["1.0.0", "2.0.0"] {
        engine
            .build_test_image(&format!("deploy-test/cssh:{version}"), version, true)
            .unwrap();
    }
    let archive = tmp.path().join("cssh-1.0.0.tar");
    engine
        .save_image("deploy-test/cssh:1.0.0", &archive)
        .unwrap();
    engine
        .docker_ok(&["image", "rm", "deploy-test/cssh:1.0.0"])
        .unwrap();
    let file = tmp.path().join("compose.yml");
    std::fs::write(
        &file,
        "services:\n  \
           web:\n    \
             image: deploy-test/cssh:${APP_VERSION}\n    \
             network_mode: host\n    \
             init: true\n    \
             environment:\n      \
               PORT: \"${PORT}\"\n      \
               DB_PASSWORD: \"${DB_PASSWORD}\"\n",
    )
    .unwrap();

    let canary = "canary-compose-ssh-41d7-secret";
    let host = RecordingHost::new(Arc::new(sshd.host().unwrap()));
    let port = free_port().unwrap();
    let remote_tmp = tmp.path().join("remote-tmp");
    std::fs::create_dir(&remote_tmp).unwrap();
    let t = ComposeTarget::builder(
        TargetId::new("green").unwrap(),
        Arc::new(host.clone()),
        "cssh",
        &file,
        Endpoint::http("127.0.0.1", port),
    )
    .docker_program(engine.program())
    .docker_host(engine.socket())
    .version_variable("APP_VERSION")
    .env("PORT", port.to_string())
    .secret_env("DB_PASSWORD", SecretString::from(canary))
    .project_dir(tmp.path().join("remote-projects"))
    .temp_dir(&remote_tmp)
    .stop_timeout(Duration::from_secs(5))
    .command_timeout(Duration::from_secs(120))
    .build()
    .unwrap();

    let watch = ArgvWatch::start(
        vec![canary.as_bytes().to_vec()],
        vec![b"docker-compose".to_vec()],
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
        "docker-compose commands were seen: {report:?}"
    );
    assert_eq!(std::fs::read_dir(&remote_tmp).unwrap().count(), 0);
    assert!(
        tmp.path()
            .join("remote-projects/cssh-green/cssh-green-2_0_0/compose.yml")
            .is_file(),
        "the compose file was uploaded"
    );
    let seen = engine
        .docker_ok(&[
            "exec",
            "cssh-green-2_0_0_web_1",
            "sh",
            "-c",
            "echo \"$DB_PASSWORD\"",
        ])
        .unwrap();
    assert_eq!(seen.trim(), canary);
    eprintln!(
        "compose conformance over SSH twice: {elapsed:?}; {} commands over SSH; argv watch: {} passes, {} command lines, {} docker-compose ones",
        host.commands().len(),
        report.passes,
        report.command_lines,
        report.markers[0]
    );
    assert_eq!(t.current().await.unwrap(), Some(v("2.0.0")));
}
