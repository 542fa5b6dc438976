//! Blue-green of two container slots on a private dockerd behind a real HAProxy, driven by the
//! engine with the real `HaproxySwitch`, under bounded load through HAProxy's front end:
//! 2.0.0 is promoted with no failed request; 3.0.0, whose container's HEALTHCHECK fails, is
//! rolled back — the slot serves its previous container again by a `docker start` (no load,
//! pull or create for the old version), the weights are as before, and no request failed.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::LocalHost;
use deploy_core::testing::process::free_ports;
use deploy_core::{DynHealthProbe, Environment, Outcome, PlanOptions, Strategy, Target};
use deploy_docker::DockerHealthProbe;
use deploy_docker::testing::{DockerdFixture, RecordingHost};
use deploy_haproxy::testing::{Load, LoadConfig};
use tokio_util::sync::CancellationToken;

mod e2e_support;
use e2e_support::{
    Archives, containers, count, docker_commands, haproxy, health_body, http_probe, running,
    served_version, slot, switch, v, wait_up, weights,
};

const SLOTS: [&str; 2] = ["blue", "green"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_of_containers_behind_haproxy_promotes_and_rolls_back_with_zero_failed_requests()
{
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archives = Archives::build(
        &engine,
        tmp.path(),
        "deploy-e2e/bg",
        &[("1.0.0", true), ("2.0.0", true), ("3.0.0", false)],
    );
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let [blue_addr, green_addr] = free_ports::<2>().unwrap();
    let (blue_port, green_port) = (blue_addr.port(), green_addr.port());
    let blue = Arc::new(
        slot(&engine, &host, "bg", "blue", blue_port)
            .build()
            .unwrap(),
    );
    let green = Arc::new(
        slot(&engine, &host, "bg", "green", green_port)
            .build()
            .unwrap(),
    );
    // Blue serves 1.0.0 and takes the traffic; green has never run anything.
    blue.prepare(&archives.release("1.0.0")).await.unwrap();
    blue.activate(&v("1.0.0")).await.unwrap();
    let h = haproxy(&[("blue", blue_port, 100), ("green", green_port, 0)]).await;
    wait_up(&h, &["blue"]).await;

    let http: DynHealthProbe = Arc::new(http_probe());
    let probe = DockerHealthProbe::new([Arc::clone(&blue), Arc::clone(&green)]).then(http);
    let env = Environment::builder("docker-bg")
        .target(blue.clone())
        .target(green.clone())
        .switch(switch(&h))
        .probe(Arc::new(probe))
        .build()
        .unwrap();
    let deployer = e2e_support::engine(env, &tmp.path().join("state"));
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_secs(1),
    };

    // Bounded load through HAProxy: 2 keep-alive connections, 2 ms apart, at most 60 000
    // requests or 90 s; every answer must be one of the versions' /health bodies.
    let bodies = ["1.0.0", "2.0.0", "3.0.0"].map(health_body);
    let mut config = LoadConfig::new(2, 60_000);
    config.path = "/health".to_owned();
    config.think_time = Duration::from_millis(2);
    config.max_duration = Duration::from_secs(90);
    let load = Load::start(
        h.frontend(),
        config,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let promote = deployer
        .deploy(
            &strategy,
            &archives.release("2.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(promote.outcome, Outcome::Promoted, "{promote}");
    assert_eq!(weights(&h, &SLOTS).await, [0, 100]);
    assert_eq!(served_version(green_port).await, Some(v("2.0.0")));
    assert_eq!(
        served_version(blue_port).await,
        Some(v("1.0.0")),
        "kept for a rollback"
    );
    let after_promotion = (load.completed(), load.failed(), load.served_by(&bodies[1]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        load.served_by(&bodies[1]) > after_promotion.2,
        "green takes the traffic"
    );

    // 3.0.0 goes to the idle slot, blue; its HEALTHCHECK fails.
    host.clear();
    let v1_before = load.served_by(&bodies[0]);
    let rollback = deployer
        .deploy(
            &strategy,
            &archives.release("3.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let ran = docker_commands(&host);
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop();
    let r = load.finish().await;
    println!(
        "promoted 2.0.0 in {:?}, rolled back 3.0.0 in {:?}; load through haproxy: sent {}, ok {}, \
         failed {} in {:?} ({:.0} requests/s), by version {:?}; until the promotion {} answered, {} failed",
        promote.duration,
        rollback.duration,
        r.sent,
        r.ok,
        r.failed,
        r.elapsed,
        r.sent as f64 / r.elapsed.as_secs_f64(),
        r.by_slot.values().collect::<Vec<_>>(),
        after_promotion.0,
        after_promotion.1,
    );

    assert_eq!(rollback.outcome, Outcome::RolledBack, "{rollback}");
    assert!(rollback.to_string().contains("probe says no"), "{rollback}");
    // The live end state: green still serves 2.0.0 with all the weight, blue serves its
    // previous container (1.0.0) again, 3.0.0 stopped and kept.
    assert_eq!(weights(&h, &SLOTS).await, [0, 100], "as before the run");
    assert_eq!(served_version(blue_port).await, Some(v("1.0.0")));
    assert_eq!(served_version(green_port).await, Some(v("2.0.0")));
    assert_eq!(blue.current().await.unwrap(), Some(v("1.0.0")));
    assert_eq!(
        running(&engine, "bg"),
        [
            ("bg-blue-1.0.0".into(), "blue".into(), "1.0.0".into()),
            ("bg-green-2.0.0".into(), "green".into(), "2.0.0".into()),
        ]
    );
    let all = containers(&engine, "bg");
    let run_of = |name: &str| all.iter().find(|c| c.name == name).unwrap().run.clone();
    assert_eq!(run_of("bg-green-2.0.0"), promote.run_id, "{all:?}");
    assert_eq!(run_of("bg-blue-3.0.0"), rollback.run_id, "{all:?}");
    assert_eq!(
        run_of("bg-blue-1.0.0"),
        "",
        "installed outside a run: {all:?}"
    );
    assert_eq!(
        all.iter()
            .find(|c| c.name == "bg-blue-3.0.0")
            .unwrap()
            .state,
        "exited"
    );
    // Going back to 1.0.0 was a start: the run loaded and created 3.0.0 only, pulled nothing.
    assert_eq!(count(&ran, "load", ""), (1, 1), "{ran:?}");
    assert_eq!(count(&ran, "create", "bg-blue-3.0.0"), (1, 1), "{ran:?}");
    assert_eq!(count(&ran, "create", "1.0.0").1, 0, "{ran:?}");
    assert_eq!(count(&ran, "pull", "").0, 0, "{ran:?}");
    assert_eq!(
        count(&ran, "start", "").0,
        2,
        "3.0.0, then 1.0.0 again: {ran:?}"
    );

    // Through HAProxy: every request answered 200 by a release in the traffic; 3.0.0 never
    // served, 1.0.0 not after the promotion.
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, r.sent);
    assert!(r.sent >= 200, "the load ran: {}", r.sent);
    assert_eq!(r.by_slot[&bodies[2]], 0);
    assert_eq!(r.by_slot[&bodies[0]], v1_before);
    assert!(r.by_slot[&bodies[1]] > 0);
}
