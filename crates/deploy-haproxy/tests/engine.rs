//! The deploy-core engine driving the real HAProxy switch under load: a blue-green deploy
//! promoted, then a canary whose gate fails rolled back — with every request answered 200.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::engine::{Outcome, Policies};
use deploy_core::testing::{FakeGate, FakeProbe, FakeTarget};
use deploy_core::{
    CanaryStep, Engine, Environment, PlanOptions, Release, Strategy, TargetId, TrafficSwitch,
    Version, Weights,
};
use deploy_haproxy::HaproxySwitch;
use deploy_haproxy::testing::{HaproxyFixture, Load, LoadConfig};
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
