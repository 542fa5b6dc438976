//! Rolling over three container slots on one private dockerd behind a real HAProxy, one engine
//! with the real `HaproxySwitch`, under bounded load through HAProxy's front end. On the middle
//! slot, `web-2`, the 2.0.0 container's HEALTHCHECK fails (its command serves another
//! directory there: `/health` answers 404, as a host missing its configuration would). Without
//! a failure budget the fleet rolls back: every slot back on 1.0.0 by a start of its previous
//! container, weights as before. With `max_failed_targets = 1` the run ends
//! promoted_with_failures: `web-2` out of the traffic and back on its 1.0.0 container, the
//! others on 2.0.0. No request fails through HAProxy in either run.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::testing::process::free_ports;
use deploy_core::{
    BatchSize, DynHealthProbe, Environment, LocalHost, Outcome, PlanOptions, Strategy, Target,
    TargetBudget,
};
use deploy_docker::testing::{DockerdFixture, RecordingHost};
use deploy_docker::{DockerHealthProbe, DockerTarget};
use deploy_haproxy::testing::{Load, LoadConfig, LoadReport};
use tokio_util::sync::CancellationToken;

mod e2e_support;
use e2e_support::{
    Archives, count, docker_commands, haproxy, health_body, http_probe, running, served_version,
    slot, switch, v, wait_up, weights,
};

const SLOTS: [&str; 3] = ["web-1", "web-2", "web-3"];

/// Bounded load through HAProxy: 2 keep-alive connections, 2 ms apart, at most 40 000
/// requests or 60 s; an answer counts when it is the /health body of 1.0.0 or 2.0.0.
fn load(h: &deploy_haproxy::testing::HaproxyFixture) -> Load {
    let mut config = LoadConfig::new(2, 40_000);
    config.path = "/health".to_owned();
    config.think_time = Duration::from_millis(2);
    config.max_duration = Duration::from_secs(60);
    let bodies = [health_body("1.0.0"), health_body("2.0.0")];
    Load::start(
        h.frontend(),
        config,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn summary(r: &LoadReport) -> String {
    format!(
        "sent {}, ok {}, failed {} in {:?} ({:.0} requests/s), 1.0.0/2.0.0 answers {:?}",
        r.sent,
        r.ok,
        r.failed,
        r.elapsed,
        r.sent as f64 / r.elapsed.as_secs_f64(),
        r.by_slot.values().collect::<Vec<_>>()
    )
}

async fn versions(ports: &[u16]) -> Vec<String> {
    let mut out = Vec::new();
    for p in ports {
        out.push(
            served_version(*p)
                .await
                .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_over_three_container_slots_with_a_failing_slot_rolls_back_or_leaves_it_out() {
    let engine = DockerdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archives = Archives::build(
        &engine,
        tmp.path(),
        "deploy-e2e/roll",
        &[("1.0.0", true), ("2.0.0", true)],
    );
    let host = RecordingHost::new(Arc::new(LocalHost::new()));
    let ports: Vec<u16> = free_ports::<3>()
        .unwrap()
        .iter()
        .map(|a| a.port())
        .collect();
    let targets: Vec<Arc<DockerTarget>> = SLOTS
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let mut b = slot(&engine, &host, "roll", name, *port);
            if *name == "web-2" {
                // 2.0.0 on this slot serves /bin instead of /www: its /health is a 404, so
                // the image's HEALTHCHECK (and HAProxy's check) fail; 1.0.0 serves as usual.
                b = b.command([
                    "/bin/sh",
                    "-c",
                    "case {version} in 2.*) www=/bin;; *) www=/www;; esac; \
                     exec httpd -f -p 127.0.0.1:$PORT -h $www",
                ]);
            }
            Arc::new(b.build().unwrap())
        })
        .collect();
    for t in &targets {
        t.prepare(&archives.release("1.0.0")).await.unwrap();
        t.activate(&v("1.0.0")).await.unwrap();
    }
    let h = haproxy(&[
        ("web-1", ports[0], 100),
        ("web-2", ports[1], 100),
        ("web-3", ports[2], 100),
    ])
    .await;
    wait_up(&h, &SLOTS).await;

    let http: DynHealthProbe = Arc::new(http_probe());
    let probe = DockerHealthProbe::new(targets.iter().cloned()).then(http);
    let mut env = Environment::builder("docker-rolling");
    for t in &targets {
        env = env.target(t.clone());
    }
    let env = env
        .switch(switch(&h))
        .probe(Arc::new(probe))
        .build()
        .unwrap();
    let deployer = e2e_support::engine(env, &tmp.path().join("state"));
    let rolling = |budget: Option<TargetBudget>| Strategy::Rolling {
        batch: BatchSize::Count(1),
        analysis: None,
        max_failed_targets: budget,
        prepare: Default::default(),
    };

    // 1. No failure budget: web-2's failure rolls the fleet back.
    host.clear();
    let traffic = load(&h);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = deployer
        .deploy(
            &rolling(None),
            &archives.release("2.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    wait_up(&h, &SLOTS).await;
    traffic.stop();
    let r1 = traffic.finish().await;
    let ran = docker_commands(&host);
    println!(
        "without a budget: {} in {:?}; through haproxy {}",
        report.outcome,
        report.duration,
        summary(&r1)
    );
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(report.to_string().contains("404"), "{report}");
    assert_eq!(versions(&ports).await, ["1.0.0", "1.0.0", "1.0.0"]);
    assert_eq!(weights(&h, &SLOTS).await, [100, 100, 100]);
    for t in &targets {
        assert_eq!(t.current().await.unwrap(), Some(v("1.0.0")));
    }
    assert_eq!(
        running(&engine, "roll"),
        SLOTS
            .iter()
            .map(|s| (
                format!("roll-{s}-1.0.0"),
                (*s).to_owned(),
                "1.0.0".to_owned()
            ))
            .collect::<Vec<_>>()
    );
    // 2.0.0 was created on every slot; going back to 1.0.0 was a start of the kept containers.
    assert_eq!(count(&ran, "create", "-2.0.0"), (3, 3), "{ran:?}");
    assert_eq!(count(&ran, "pull", "").0, 0, "{ran:?}");
    assert_eq!(r1.failed, 0, "{:?}", r1.errors);
    assert_eq!(r1.ok, r1.sent);
    assert!(r1.sent >= 200, "the load ran: {}", r1.sent);
    assert!(
        r1.by_slot[&health_body("2.0.0")] > 0,
        "web-1 served 2.0.0 for a while"
    );

    // 2. A budget of one slot: web-2 is left out, back on 1.0.0; the others go on to 2.0.0.
    host.clear();
    let traffic = load(&h);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = deployer
        .deploy(
            &rolling(Some(TargetBudget::Count(1))),
            &archives.release("2.0.0"),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let ran = docker_commands(&host);
    wait_up(&h, &["web-1", "web-3"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic.stop();
    let r2 = traffic.finish().await;
    println!(
        "with max_failed_targets = 1: {} in {:?}; through haproxy {}",
        report.outcome,
        report.duration,
        summary(&r2)
    );
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    assert!(report.rollback.is_none(), "{report}");
    assert_eq!(report.failed_targets.len(), 1, "{report}");
    assert_eq!(report.failed_targets[0].target.as_str(), "web-2");
    assert!(
        report.failed_targets[0].reason.contains("unhealthy"),
        "the container's own HEALTHCHECK: {report}"
    );
    assert_eq!(versions(&ports).await, ["2.0.0", "1.0.0", "2.0.0"]);
    assert_eq!(
        weights(&h, &SLOTS).await,
        [100, 0, 100],
        "web-2 out of the traffic"
    );
    assert_eq!(
        running(&engine, "roll"),
        [
            ("roll-web-1-2.0.0".into(), "web-1".into(), "2.0.0".into()),
            ("roll-web-2-1.0.0".into(), "web-2".into(), "1.0.0".into()),
            ("roll-web-3-2.0.0".into(), "web-3".into(), "2.0.0".into()),
        ]
    );
    // The first run prepared 2.0.0 on every slot before activating any: this one reuses those
    // containers — nothing loaded, created or pulled.
    for sub in ["load", "create", "pull"] {
        assert_eq!(count(&ran, sub, "").0, 0, "{sub}: {ran:?}");
    }
    assert_eq!(r2.failed, 0, "{:?}", r2.errors);
    assert_eq!(r2.ok, r2.sent);
    assert!(r2.sent >= 200, "the load ran: {}", r2.sent);
}
