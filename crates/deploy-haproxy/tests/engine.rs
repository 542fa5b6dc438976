//! The deploy-core engine driving the real HAProxy switch: under load, a blue-green deploy
//! promoted, then a canary whose gate fails rolled back — with every request answered 200; and
//! a rolling deploy whose drain times out on a held request and cuts it.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::policy::DrainTimeoutAction;
use deploy_core::testing::process::wait_until;
use deploy_core::testing::{FakeGate, FakeProbe, FakeTarget};
use deploy_core::{
    BatchSize, CanaryStep, Engine, Environment, PlanOptions, Release, Strategy, TargetId,
    TrafficSwitch, Version, Weights,
};
use deploy_core::{Outcome, Policies};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{
    FixtureConfig, HaproxyFixture, HeldRequest, Load, LoadConfig, ServerSpec, Slot,
};
use tokio_util::sync::CancellationToken;

fn w(blue: u32, green: u32) -> Weights {
    Weights::new()
        .with(TargetId::new("blue").unwrap(), blue)
        .with(TargetId::new("green").unwrap(), green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_blue_green_and_canary_rollback_through_haproxy_under_load() {
    let (h, [blue_slot, green_slot]) = HaproxyFixture::blue_green().await.unwrap();
    let switch = Arc::new(
        HaproxySwitch::builder("app")
            .socket(h.admin_socket())
            .state_file(h.state_file())
            .build()
            .unwrap(),
    );
    let blue = Arc::new(FakeTarget::new("blue").with_current("1.0.0").with_endpoint(
        deploy_core::Endpoint::http("127.0.0.1", blue_slot.addr().port()),
    ));
    let green = Arc::new(
        FakeTarget::new("green")
            .with_current("1.0.0")
            .with_endpoint(deploy_core::Endpoint::http(
                "127.0.0.1",
                green_slot.addr().port(),
            )),
    );
    let probe = Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()]));
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(20);
    p.analysis.interval = Duration::from_millis(50);

    let load = Load::start(
        h.frontend(),
        LoadConfig::new(8, 1_000_000),
        &["blue", "green"],
    );

    // Blue-green: 2.0.0 goes to the idle green slot and takes all the traffic.
    let env = Environment::builder("haproxy")
        .target(blue.clone())
        .target(green.clone())
        .switch(switch.clone())
        .probe(probe.clone())
        .gate(Arc::new(FakeGate::passing("errors")))
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(p.clone());
    let bg = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_millis(200),
    };
    let v2 = Release::new(Version::new("2.0.0").unwrap());
    let report = engine
        .deploy(&bg, &v2, &PlanOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(switch.weights().await.unwrap(), w(0, 100));
    let before = load.served_by("green");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(load.served_by("green") > before, "green serves now");

    // Canary of 3.0.0 on blue with a failing gate: rolled back to green = 100 %.
    let env = Environment::builder("haproxy")
        .target(blue.clone())
        .target(green.clone())
        .switch(switch.clone())
        .probe(probe)
        .gate(Arc::new(FakeGate::failing("errors")))
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(p);
    let canary = Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(10),
            CanaryStep::Analyze(Duration::from_millis(200)),
            CanaryStep::SetWeight(50),
        ],
    };
    let v3 = Release::new(Version::new("3.0.0").unwrap());
    let report = engine
        .deploy(
            &canary,
            &v3,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(switch.weights().await.unwrap(), w(0, 100), "rolled back");

    load.stop();
    let r = load.finish().await;
    println!(
        "engine under load: sent {}, ok {}, failed {}, by slot {:?}",
        r.sent, r.ok, r.failed, r.by_slot
    );
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, r.sent);
    assert!(r.by_slot["blue"] > 0 && r.by_slot["green"] > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_rolling_deploy_cuts_a_held_request_past_the_drain_timeout() {
    let blue_slot = Slot::start("blue").await.unwrap();
    let green_slot = Slot::start("green").await.unwrap();
    let mut config = FixtureConfig::new(vec![
        ServerSpec::new("blue", blue_slot.addr(), 100),
        ServerSpec::new("green", green_slot.addr(), 0),
    ]);
    // A cut request is not replayed on another server, and its client is answered when
    // `timeout client` strikes (HAProxy 2.6).
    config.retry_on = "conn-failure".into();
    config.client_timeout = Duration::from_secs(2);
    let h = HaproxyFixture::start(config).await.unwrap();
    let switch = Arc::new(
        HaproxySwitch::builder("app")
            .socket(h.admin_socket())
            .state_file(h.state_file())
            .poll_interval(Duration::from_millis(20))
            .check_interval(Duration::from_millis(300))
            .check_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let blue_id = TargetId::new("blue").unwrap();

    // Blue, the first target of the rollout, holds a request it answers only after 30 s.
    let held = HeldRequest::send(h.frontend(), "/slow?ms=30000")
        .await
        .unwrap();
    wait_until(
        "the held session on blue",
        Duration::from_secs(5),
        || async { switch.active_sessions(&blue_id).await.unwrap() == 1 },
    )
    .await
    .unwrap();
    switch.set_weights(&w(50, 50)).await.unwrap();

    let blue = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
    let green = Arc::new(FakeTarget::new("green").with_current("1.0.0"));
    let probe = Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()]));
    let env = Environment::builder("haproxy-rolling")
        .target(blue.clone())
        .target(green.clone())
        .switch(switch.clone())
        .probe(probe)
        .build()
        .unwrap();
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(20);
    p.drain.timeout = Duration::from_millis(500);
    p.drain.poll_interval = Duration::from_millis(20);
    p.drain.on_timeout = DrainTimeoutAction::Cut;
    let engine = Engine::new(env).with_policies(p);
    let rolling = Strategy::Rolling {
        batch: BatchSize::Count(1),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };
    let v2 = Release::new(Version::new("2.0.0").unwrap());
    let started = std::time::Instant::now();
    let report = engine
        .deploy(
            &rolling,
            &v2,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    println!("{report}");
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    let cut: Vec<_> = report
        .notes
        .iter()
        .filter(|n| n.contains("blue") && n.contains("cut"))
        .collect();
    assert_eq!(cut.len(), 1, "the report notes the cut: {:?}", report.notes);
    assert!(cut[0].contains("(0 left)"), "{}", cut[0]);
    assert!(
        !report.notes.iter().any(|n| n.contains("green")),
        "green had nothing to cut: {:?}",
        report.notes
    );
    assert_eq!(blue.version().map(|v| v.to_string()), Some("2.0.0".into()));
    assert_eq!(green.version().map(|v| v.to_string()), Some("2.0.0".into()));

    // The held request was cut, not left to its 30 s answer.
    let outcome = held.ended(Duration::from_secs(15)).await.unwrap();
    println!(
        "held request ended {:?} after it was sent ({:?} after the deploy started): {outcome:?}",
        outcome.after,
        started.elapsed()
    );
    assert_ne!(outcome.status, Some(200), "{outcome:?}");
    assert!(!outcome.received.contains("blue"), "{outcome:?}");
    assert!(outcome.after < Duration::from_secs(15), "{outcome:?}");

    // Both servers are back at their weights and serve.
    assert_eq!(switch.weights().await.unwrap(), w(50, 50));
    let r = Load::start(h.frontend(), LoadConfig::new(4, 400), &["blue", "green"])
        .finish()
        .await;
    assert_eq!((r.sent, r.failed), (400, 0), "{r:?}");
    assert!(r.by_slot["blue"] > 0 && r.by_slot["green"] > 0, "{r:?}");
}
