//! The deploy-core conformance suite against a real PostgreSQL server.

mod common;

use common::*;
use deploy_core::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_down_migrations() {
    let (server, config) = setup().await;
    // Down files that lose no data: the revert runs them rather than restoring the backup.
    let dir = folder(&[
        (
            "V1__create_view.sql",
            "CREATE VIEW answers AS SELECT 42 AS answer;\n",
        ),
        ("U1__create_view.sql", "DROP VIEW answers;\n"),
        (
            "V2__add_function.sql",
            "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n",
        ),
        ("U2__add_function.sql", "DROP FUNCTION answer();\n"),
    ]);
    let runner = runner(&server, &config, dir.path());
    conformance::migration_runner(&runner).await;
    // Reverted by the down migrations: the view is gone, the history table is there and
    // empty (a restored empty backup would have no history table).
    assert_eq!(history(&server, &config.dbname).await, Vec::<String>::new());
    assert_eq!(
        server
            .query(&config.dbname, "SELECT to_regclass('answers') IS NULL")
            .await
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_data_losing_down_migrations_restores_the_backup() {
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
    // The downs drop a table and a column with what they hold: the backup taken before (an
    // empty database) was restored instead, so not even the history table is there.
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT to_regclass('users') IS NULL AND to_regclass('schema_version') IS NULL"
            )
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
