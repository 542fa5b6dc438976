//! The deploy-core conformance suite against a real PostgreSQL server.

mod common;

use common::*;
use deploy_core::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_down_migrations() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__create_users.sql",
            "CREATE TABLE users (id bigint PRIMARY KEY, name text);\n",
        ),
        ("U1__create_users.sql", "DROP TABLE users;\n"),
        (
            "V2__add_email.sql",
            "ALTER TABLE users ADD COLUMN email text;\n",
        ),
        (
            "U2__add_email.sql",
            "ALTER TABLE users DROP COLUMN email;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    conformance::migration_runner(&runner).await;
    // Reverted by the down migrations: the table is gone, the history is empty.
    assert_eq!(history(&server, &config.dbname).await, Vec::<String>::new());
    assert_eq!(
        server
            .query(&config.dbname, "SELECT to_regclass('users') IS NULL")
            .await
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_restoring_the_backup() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__create_users.sql",
            "CREATE TABLE users (id bigint PRIMARY KEY, name text);\nINSERT INTO users VALUES (1, 'ada');\n",
        ),
        ("V2__drop_name.sql", "ALTER TABLE users DROP COLUMN name;\n"),
    ]);
    let runner = runner(&server, &config, dir.path());
    conformance::migration_runner(&runner).await;
    // No down migrations: the backup (an empty database) was restored and swapped in; the
    // migrated database was kept under a dated name.
    assert_eq!(
        server
            .query(&config.dbname, "SELECT to_regclass('users') IS NULL")
            .await
            .unwrap(),
        "t"
    );
    let kept = server
        .query(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{}_failed_%'",
                config.dbname
            ),
        )
        .await
        .unwrap();
    assert!(!kept.is_empty(), "the replaced database is kept");
    assert_eq!(
        server
            .query(&kept, "SELECT count(*) FROM users")
            .await
            .unwrap(),
        "1"
    );
}
