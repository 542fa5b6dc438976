//! The engine deploying blue-green to two `DockerTarget` slots on a private dockerd, judged by
//! `DockerHealthProbe` then the HTTP probe (the switch is deploy-core's in-memory fake: the
//! haproxy scenario belongs to the root tests). 2.0.0 is promoted; 3.0.0, whose container's
//! HEALTHCHECK fails, is rolled back, and the slot serves its previous container again by a
//! start — no load, no pull, no create.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::FakeSwitch;
use deploy_core::testing::process::free_port;
use deploy_core::{
    DynHealthProbe, Endpoint, Engine, Environment, HttpProbe, LocalHost, Outcome, PlanOptions,
    Policies, Release, Strategy, Target, TargetId, Version,
};
use deploy_docker::testing::{DockerdFixture, RecordingHost, docker_subcommand, served_version};
use deploy_docker::{DockerHealthProbe, DockerTarget};
use tokio_util::sync::CancellationToken;

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_promotes_a_healthy_container_and_rolls_back_an_unhealthy_one_by_a_start() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Every release comes as an image archive; the engine starts without any of them.
    let mut archives: Vec<PathBuf> = Vec::new();
    for (version, healthy) in [("1.0.0", true), ("2.0.0", true), ("3.0.0", false)] {
        let tag = format!("deploy-test/bg:{version}");
        engine.build_test_image(&tag, version, healthy).unwrap();
        let archive = tmp.path().join(format!("bg-{version}.tar"));
        engine.save_image(&tag, &archive).unwrap();
        engine.docker_ok(&["image", "rm", &tag]).unwrap();
        archives.push(archive);
    }
    let release = |i: usize, version: &str| Release::new(v(version)).with_artifact(&archives[i]);

    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let slot = |name: &str, port: u16| {
        Arc::new(
            DockerTarget::builder(
                TargetId::new(name).unwrap(),
                Arc::new(host.clone()),
                "bg",
                Endpoint::http("127.0.0.1", port),
            )
            .docker_program(engine.program())
            .docker_host(engine.socket())
            .network("host")
            .env("PORT", port.to_string())
            .stop_timeout(Duration::from_secs(5))
            .command_timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        )
    };
    let (blue_port, green_port) = (free_port().unwrap(), free_port().unwrap());
    let (blue, green) = (slot("blue", blue_port), slot("green", green_port));
    blue.prepare(&release(0, "1.0.0")).await.unwrap();
    blue.activate(&v("1.0.0")).await.unwrap();

    let http: DynHealthProbe = Arc::new(
        HttpProbe::builder()
            .version_field("version")
            .build()
            .unwrap(),
    );
    let probe = DockerHealthProbe::new([Arc::clone(&blue), Arc::clone(&green)]).then(http);
    let switch = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
    let env = Environment::builder("docker-bg")
        .target(blue.clone())
        .target(green.clone())
        .switch(switch.clone())
        .probe(Arc::new(probe))
        .build()
        .unwrap();
    let mut policies = Policies::default();
    policies.probe.interval = Duration::from_millis(500);
    policies.probe.healthy_threshold = 2;
    policies.probe.unhealthy_threshold = 3;
    policies.probe.deadline = Duration::from_secs(60);
    let engine_ = Engine::new(env)
        .with_state_dir(tmp.path().join("state"))
        .with_policies(policies);
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };

    let t0 = Instant::now();
    let report = engine_
        .deploy(
            &strategy,
            &release(1, "2.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let promoted_in = t0.elapsed();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(switch.current().to_string(), "blue=0,green=100");
    assert_eq!(green.current().await.unwrap(), Some(v("2.0.0")));
    assert_eq!(served_version(green_port).await, Some(v("2.0.0")));

    // 3.0.0 goes to the idle slot, blue; its HEALTHCHECK fails.
    host.clear();
    let t0 = Instant::now();
    let report = engine_
        .deploy(
            &strategy,
            &release(2, "3.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let rolled_back_in = t0.elapsed();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let text = report.to_string();
    assert!(text.contains("probe says no"), "{text}");
    assert_eq!(switch.current().to_string(), "blue=0,green=100");
    assert_eq!(blue.current().await.unwrap(), Some(v("1.0.0")));
    assert_eq!(served_version(blue_port).await, Some(v("1.0.0")));
    assert_eq!(green.current().await.unwrap(), Some(v("2.0.0")));
    let ran: Vec<String> = host
        .commands()
        .iter()
        .filter_map(docker_subcommand)
        .collect();
    let count = |s: &str| ran.iter().filter(|c| *c == s).count();
    // One load and one create, both for 3.0.0; going back to 1.0.0 is a start.
    assert_eq!(
        (count("load"), count("create"), count("pull")),
        (1, 1, 0),
        "{ran:?}"
    );
    assert_eq!(count("start"), 2, "3.0.0, then 1.0.0 again: {ran:?}");
    let state = engine
        .docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            "bg-blue-3.0.0",
        ])
        .unwrap();
    assert_eq!(
        state.trim(),
        "exited",
        "the failed release is stopped, kept"
    );
    eprintln!(
        "promoted 2.0.0 in {promoted_in:?}; rolled back 3.0.0 in {rolled_back_in:?}; {} docker commands in the rolled-back run",
        ran.len()
    );
}
