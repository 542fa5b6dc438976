//! Whole blue-green deployments on this machine: release directories on a real file system,
//! HTTP servers answering /health from the `current` link, the HTTP probe, and the engine — plus
//! the `blue_green_local` example run as an operator would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploy::testing::{FakeGate, FakeSwitch, TestHttpServer};
use deploy::{
    Endpoint, Engine, Environment, HttpProbe, LocalHost, PlanOptions, Release, ReleaseDirTarget,
    Strategy, Target, TargetId, Version,
};
use deploy::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

mod common;
use common::{artifact, slot_server};

async fn health(server: &TestHttpServer) -> String {
    common::get(&server.url("/health")).await
}

#[tokio::test]
async fn blue_green_over_release_dirs_promotes_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let host = Arc::new(LocalHost::new());
    let mut servers = Vec::new();
    let mut slots = Vec::new();
    for name in ["blue", "green"] {
        let root = tmp.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let server = slot_server(root.clone()).await;
        let endpoint: Endpoint = server.endpoint();
        slots.push(Arc::new(
            ReleaseDirTarget::builder(TargetId::new(name).unwrap(), host.clone(), root, endpoint)
                .build()
                .unwrap(),
        ));
        servers.push(server);
    }
    let v1 = Release::new(Version::new("1.0.0").unwrap()).with_artifact(artifact(
        tmp.path(),
        "1.0.0",
        false,
    ));
    for s in &slots {
        s.prepare(&v1).await.unwrap();
        s.activate(&v1.version).await.unwrap();
    }
    let switch = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
    let env = Environment::builder("local")
        .target(slots[0].clone())
        .target(slots[1].clone())
        .switch(switch.clone())
        .probe(Arc::new(
            HttpProbe::builder()
                .expect_field("status", "ok")
                .version_field("version")
                .build()
                .unwrap(),
        ))
        .gate(Arc::new(FakeGate::passing("errors")))
        .build()
        .unwrap();
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(50);
    p.probe.deadline = Duration::from_secs(2);
    p.analysis.interval = Duration::from_millis(100);
    let engine = Engine::new(env)
        .with_policies(p)
        .with_state_dir(tmp.path().join("state"));
    let bg = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_millis(300),
    };

    // 2.0.0 goes to green and takes the traffic.
    let v2 = Release::new(Version::new("2.0.0").unwrap()).with_artifact(artifact(
        tmp.path(),
        "2.0.0",
        false,
    ));
    let report = engine
        .deploy(&bg, &v2, &PlanOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(switch.current().to_string(), "blue=0,green=100");
    assert!(health(&servers[1]).await.contains("\"version\":\"2.0.0\""));
    assert!(
        health(&servers[0]).await.contains("\"version\":\"1.0.0\""),
        "blue keeps 1.0.0 for a fast switch back"
    );

    // A broken 3.0.0 goes to blue (now idle), never gets healthy, and blue returns to 1.0.0.
    let v3 = Release::new(Version::new("3.0.0").unwrap()).with_artifact(artifact(
        tmp.path(),
        "3.0.0",
        true,
    ));
    let report = engine
        .deploy(&bg, &v3, &PlanOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(
        switch.current().to_string(),
        "blue=0,green=100",
        "traffic never left green"
    );
    assert_eq!(slots[0].current().await.unwrap().unwrap().as_str(), "1.0.0");
    assert!(health(&servers[0]).await.contains("\"version\":\"1.0.0\""));
    let link = std::fs::read_link(tmp.path().join("blue/current")).unwrap();
    assert_eq!(link, Path::new("releases/1.0.0"));
    assert!(
        tmp.path().join("blue/releases/3.0.0/VERSION").exists(),
        "the failed release stays for inspection"
    );
    // The servers tell what ran there, and which run put it there: blue had 1.0.0 (set up
    // outside a run), got 3.0.0, then the rollback put 1.0.0 back, both by the second run.
    let log = std::fs::read_to_string(tmp.path().join("blue/revisions.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    let by_run = format!("run {}", report.run_id);
    assert!(lines[0].contains(" activated 1.0.0 by "), "{log}");
    assert!(
        lines[1].contains(" activated 3.0.0 by ") && lines[1].ends_with(&by_run),
        "{log}"
    );
    assert!(
        lines[2].contains(" activated 1.0.0 by ") && lines[2].ends_with(&by_run),
        "{log}"
    );
    // Both runs are in the history, with how they ended.
    let history = engine.history().await.unwrap();
    let outcomes: Vec<(String, Outcome)> = history
        .iter()
        .map(|h| (h.version.to_string(), h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("2.0.0".to_owned(), Outcome::Promoted),
            ("3.0.0".to_owned(), Outcome::RolledBack)
        ]
    );
}
