//! The state directory is private: the directory and its `runs/` are 0700, the journal, the
//! report, the lock and a control request 0600, and none of them is written through a symbolic
//! link planted where the engine writes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use deploy_core::testing::FakeWorld;
use deploy_core::{
    CanaryStep, ControlRequest, DeployError, Engine, Outcome, PlanOptions, Policies, Release,
    Strategy, Version,
};
use tokio_util::sync::CancellationToken;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn engine(world: &FakeWorld, dir: &Path) -> Engine {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(1);
    p.probe.healthy_threshold = 1;
    Engine::new(world.environment("prod"))
        .with_policies(p)
        .with_state_dir(dir)
}

#[tokio::test]
async fn every_file_of_the_state_directory_is_private_to_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // A state directory an operator created with the usual umask.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = engine(&world, &dir);
    let runner = engine.clone();
    let run = tokio::spawn(async move {
        runner
            .deploy(
                &Strategy::Canary {
                    steps: vec![CanaryStep::SetWeight(20), CanaryStep::PauseUntilPromoted],
                },
                &Release::new(Version::new("2.0.0").unwrap()),
                &PlanOptions::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap()
    });
    while engine
        .status()
        .await
        .unwrap()
        .is_none_or(|s| s.paused.is_none())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While the run holds it: the lock, the journal, and a request.
    assert_eq!(mode(&dir), 0o700, "state directory");
    assert_eq!(mode(&dir.join("runs")), 0o700, "runs directory");
    assert_eq!(mode(&dir.join("lock")), 0o600, "lock");
    let run_id = engine.unfinished_run().await.unwrap().unwrap();
    let journal = dir.join("runs").join(format!("{run_id}.jsonl"));
    assert_eq!(mode(&journal), 0o600, "journal");
    engine.request(&ControlRequest::Promote).await.unwrap();
    if dir.join("control.json").exists() {
        assert_eq!(mode(&dir.join("control.json")), 0o600, "control request");
    }
    let report = run.await.unwrap();
    assert_eq!(report.outcome, Outcome::Promoted);
    assert_eq!(
        mode(&journal.with_extension("report.json")),
        0o600,
        "report"
    );
}

#[tokio::test]
async fn a_symbolic_link_planted_at_the_lock_or_the_report_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir_all(dir.join("runs")).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();

    // At the lock: the run is refused and the file the link points at is untouched.
    std::os::unix::fs::symlink(&victim, dir.join("lock")).unwrap();
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let engine = engine(&world, &dir);
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::ZERO,
    };
    let err = engine
        .deploy(
            &strategy,
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Journal { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(world.switch.current().to_string(), "blue=100,green=0");

    // At a report's or a request's final path: reports and requests are written whole
    // (`fs::write_atomic`: a new temporary file, then a rename over the path), so a link planted
    // there is replaced, and the file it pointed at is untouched.
    std::fs::remove_file(dir.join("lock")).unwrap();
    let report = engine
        .deploy(
            &strategy,
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let path = dir
        .join("runs")
        .join(format!("{}.report.json", report.run_id));
    assert!(
        !std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let planted = dir.join("runs").join("planted.report.json");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    deploy_core::fs::write_atomic(&planted, &b"{}"[..], Some(0o600)).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        !std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode(&planted), 0o600);
}
