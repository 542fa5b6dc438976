//! The deploy-core engine driving a real nginx: blue-green promoted and rolled back through the
//! upstream switch, and a Recreate behind the real maintenance page.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{get, site, w};
use deploy_core::testing::{FakeGate, FakeProbe, FakeTarget};
use deploy_core::{Engine, Environment, PlanOptions, Release, Strategy, TrafficSwitch, Version};
use deploy_core::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(20);
    p.probe.healthy_threshold = 1;
    p.probe.deadline = Duration::from_millis(500);
    p.analysis.interval = Duration::from_millis(50);
    p
}

fn env(s: &common::Site, blue: &Arc<FakeTarget>, green: &Arc<FakeTarget>) -> Environment {
    Environment::builder("prod")
        .target(blue.clone())
        .target(green.clone())
        .switch(s.switch.clone())
        .probe(Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()])))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_through_nginx_promotes_and_rolls_back() {
    let s = site(w(100, 0), 1).await;
    let blue = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
    let green = Arc::new(FakeTarget::new("green").with_current("1.0.0"));
    let engine = Engine::new(env(&s, &blue, &green)).with_policies(policies());
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };

    let report = engine
        .deploy(
            &strategy,
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");

    // The next release fails its health check on the idle slot (blue): nothing moves.
    blue.mark_unhealthy("3.0.0");
    let report = engine
        .deploy(
            &strategy,
            &Release::new(Version::new("3.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
    assert_eq!(blue.version().unwrap().as_str(), "1.0.0");

    // A release that is healthy but fails its bake gate: switched to blue through nginx, then
    // switched back to green by the rollback.
    let gate = Arc::new(FakeGate::failing("error-rate"));
    let env = Environment::builder("prod")
        .target(blue.clone())
        .target(green.clone())
        .switch(s.switch.clone())
        .probe(Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()])))
        .gate(gate.clone())
        .build()
        .unwrap();
    let live = s.switch.live_generation().await.unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let report = engine
        .deploy(
            &Strategy::BlueGreen {
                pre_switch_analysis: None,
                bake: Duration::from_millis(500),
            },
            &Release::new(Version::new("4.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(gate.evaluations() >= 1);
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    assert_ne!(
        s.switch.live_generation().await.unwrap(),
        live,
        "nginx was reloaded (switch and switch back)"
    );
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_shows_the_real_maintenance_page_and_takes_it_down() {
    let s = site(w(100, 0), 1).await;
    let page = Arc::new(s.page().build().unwrap());
    let blue = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
    let green = Arc::new(FakeTarget::new("green").with_current("1.0.0"));
    let env = Environment::builder("prod")
        .target(blue.clone())
        .target(green.clone())
        .switch(s.switch.clone())
        .probe(Arc::new(FakeProbe::new(vec![blue.clone(), green.clone()])))
        .maintenance(page.clone())
        .build()
        .unwrap();
    let engine = Engine::new(env).with_policies(policies());
    let report = engine
        .deploy(
            &Strategy::Recreate {},
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert!(!s.flag.exists(), "maintenance taken down");
    let text = report.to_string();
    assert!(
        text.contains("aintenance"),
        "the report names the maintenance steps: {text}"
    );
    assert_eq!(get(&s.nginx.url("/"), None).await.0, 200);
    assert_eq!(blue.version().unwrap().as_str(), "2.0.0");
    assert_eq!(green.version().unwrap().as_str(), "2.0.0");
}
