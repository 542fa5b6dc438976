//! Rollback to a recorded release: back to what the history says was promoted, by the fastest
//! path the live state allows.

use std::time::Duration;

use deploy_core::testing::FakeWorld;
use deploy_core::{
    DeployError, Engine, Outcome, PlanOptions, Policies, Release, RollbackTo, SchemaDecision,
    Strategy, Version,
};
use tokio_util::sync::CancellationToken;

fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(10);
    p.probe.healthy_threshold = 1;
    p.probe.deadline = Duration::from_secs(5);
    p
}

fn blue_green() -> Strategy {
    Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    }
}

#[tokio::test]
async fn back_to_a_promoted_release_by_switching_to_the_slot_that_still_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let cancel = CancellationToken::new();
    for version in ["2.0.0", "3.0.0"] {
        let r = engine
            .deploy(
                &blue_green(),
                &Release::new(v(version)),
                &PlanOptions::default(),
                &cancel,
            )
            .await
            .unwrap();
        assert_eq!(r.outcome, Outcome::Promoted, "{r}");
    }
    // 3.0.0 serves from blue; green still runs 2.0.0.
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");
    let green_activations = world.target("green").activations().len();

    // Never promoted here: refused, nothing changes.
    let e = engine
        .plan_rollback_to(
            &RollbackTo::Version(v("9.9.9")),
            &blue_green(),
            &PlanOptions::default(),
            None,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DeployError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("no promoted run of 9.9.9"), "{e}");

    // The previous release is 2.0.0, and green still runs it: a switch back, no upload.
    let planned = engine
        .plan_rollback_to(
            &RollbackTo::Previous,
            &blue_green(),
            &PlanOptions::default(),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(planned.recorded.version, v("2.0.0"));
    assert_eq!(planned.schema, SchemaDecision::Unchanged);
    assert!(
        planned
            .path
            .iter()
            .any(|l| l.starts_with("green: runs 2.0.0 still")),
        "{:?}",
        planned.path
    );
    let (_, report) = engine
        .rollback_to(
            &RollbackTo::Version(v("2.0.0")),
            &blue_green(),
            &PlanOptions::default(),
            None,
            None,
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(world.switch.current().to_string(), "blue=0,green=100");
    assert_eq!(world.target("green").version(), Some(v("2.0.0")));
    assert_eq!(
        world.target("green").activations().len(),
        green_activations,
        "green already ran 2.0.0: it was switched back to, not activated again"
    );
    // The rollback is a run of its own in the history.
    let history = engine.history().await.unwrap();
    let versions: Vec<String> = history.iter().map(|h| h.version.to_string()).collect();
    assert_eq!(versions, ["2.0.0", "3.0.0", "2.0.0"]);
}

#[tokio::test]
async fn back_to_a_promoted_release_over_a_fleet_batch_by_batch_without_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::fleet(4, "1.0.0");
    let engine = Engine::new(world.environment("prod"))
        .with_policies(policies())
        .with_state_dir(dir.path());
    let rolling = Strategy::Rolling {
        batch: deploy_core::BatchSize::Count(2),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };
    let cancel = CancellationToken::new();
    for version in ["2.0.0", "3.0.0"] {
        let r = engine
            .deploy(
                &rolling,
                &Release::new(v(version)),
                &PlanOptions::default(),
                &cancel,
            )
            .await
            .unwrap();
        assert_eq!(r.outcome, Outcome::Promoted, "{r}");
    }
    let (planned, report) = engine
        .rollback_to(
            &RollbackTo::Previous,
            &rolling,
            &PlanOptions::default(),
            None,
            None,
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(planned.recorded.version, v("2.0.0"));
    assert!(
        planned.plan.options.skip_migrations,
        "a rollback runs no migration"
    );
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    for t in world.environment("prod").targets() {
        assert_eq!(t.current().await.unwrap(), Some(v("2.0.0")), "{}", t.id());
    }
}
