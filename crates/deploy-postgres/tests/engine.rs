//! The deploy-core engine driving this runner against a real server: a release whose targets
//! fail their health checks rolls back, and the destructive migration it ran is undone by
//! restoring the backup taken just before (its id is in the run's journal).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use deploy_core::testing::FakeWorld;
use deploy_core::{Engine, PlanOptions, Release, Strategy, Version};
use deploy_core::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(50);
    p.probe.healthy_threshold = 1;
    p.probe.deadline = Duration::from_millis(500);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_restores_the_backup_and_a_healthy_one_keeps_the_schema() {
    let (server, config) = setup().await;
    let dir = folder(&[(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, price numeric);\n\
         INSERT INTO items SELECT g, g * 2 FROM generate_series(1, 500) g;\n",
    )]);
    let runner = Arc::new(runner(&server, &config, dir.path()));
    deploy_core::MigrationRunner::migrate(runner.as_ref())
        .await
        .unwrap();
    let rows = "SELECT md5(string_agg(t::text, ';' ORDER BY id)) FROM items t";
    let before = server.query(&config.dbname, rows).await.unwrap();
    write(
        dir.path(),
        "V2__drop_price.sql",
        "ALTER TABLE items DROP COLUMN price;\n",
    );

    // 2.0.0 never becomes healthy: the run rolls back.
    let world = FakeWorld::fleet(2, "1.0.0");
    for t in ["web-1", "web-2"] {
        world.target(t).mark_unhealthy("2.0.0");
    }
    let state_dir = tempfile::tempdir().unwrap();
    let env = world
        .environment_builder("prod")
        .migrations(runner.clone())
        .build()
        .unwrap();
    let engine = Engine::new(env)
        .with_policies(policies())
        .with_state_dir(state_dir.path());
    let release = Release::new(Version::new("2.0.0").unwrap());
    let report = engine
        .deploy(
            &Strategy::Recreate {},
            &release,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert!(
        report.rollback.as_ref().unwrap().mismatches.is_empty(),
        "{report}"
    );
    // The schema is back at 1 with every row as before; the migrated database was kept.
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
    assert_eq!(server.query(&config.dbname, rows).await.unwrap(), before);
    let journal: String = std::fs::read_dir(state_dir.path().join("runs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let backups = server.dir().join("backups");
    let backup = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        journal.contains(&backup.display().to_string()),
        "the backup id is journaled"
    );

    // A healthy release keeps the migrated schema.
    let world = FakeWorld::fleet(2, "1.0.0");
    let env = world
        .environment_builder("prod")
        .migrations(runner.clone())
        .build()
        .unwrap();
    let engine = Engine::new(env)
        .with_policies(policies())
        .with_state_dir(state_dir.path());
    let report = engine
        .deploy(
            &Strategy::Recreate {},
            &release,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(history(&server, &config.dbname).await, ["1:true", "2:true"]);
}
