//! Migrations, drift, failures, races, CONCURRENTLY, backups and restores against a real server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use deploy_core::testing::process::{ChildGuard, Signal};
use deploy_core::{BackupId, ErrorKind, MigrationRunner, SchemaVersion};
use deploy_postgres::testing::{PASSWORD_ROLE, PgServer};
use deploy_postgres::{
    Compatibility, Layout, PgConfig, PgMigrationRunner, PgMigrationRunnerConfig, RestoreMode,
};

fn v(s: &str) -> SchemaVersion {
    SchemaVersion(s.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_reapply_is_a_no_op() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__create_orders.sql",
            "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric);\n",
        ),
        (
            "V2__seed.sql",
            "INSERT INTO orders VALUES (1, 10), (2, 20);\n",
        ),
        (
            "V3__add_note.sql",
            "ALTER TABLE orders ADD COLUMN note text;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    let status = runner.status().await.unwrap();
    assert_eq!(status.current, None);
    assert_eq!(status.pending.len(), 3);
    assert_eq!(runner.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:true", "3:true"]
    );
    let stamps = server
        .query(
            &config.dbname,
            "SELECT string_agg(installed_at::text, ',' ORDER BY version) FROM schema_version",
        )
        .await
        .unwrap();
    // Again: nothing runs (the seed would fail on its primary key), nothing is rewritten.
    assert_eq!(runner.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(
        server
            .query(&config.dbname, "SELECT count(*) FROM orders")
            .await
            .unwrap(),
        "2"
    );
    let again = server
        .query(
            &config.dbname,
            "SELECT string_agg(installed_at::text, ',' ORDER BY version) FROM schema_version",
        )
        .await
        .unwrap();
    assert_eq!(stamps, again);
    runner.verify(Some(&v("3"))).await.unwrap();
    let e = runner.verify(Some(&v("2"))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.to_string().contains("is at 3"), "{e}");
    // The history row carries name, checksum, time and success.
    let row = server
        .query(&config.dbname, "SELECT name, length(checksum), execution_ms >= 0, success FROM schema_version WHERE version = '1'")
        .await
        .unwrap();
    assert_eq!(row, "create_orders|64|t|t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_is_not_drift_but_an_edit_is_and_repair_restamps() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__create_a.sql",
            "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n",
        ),
        ("V2__create_b.sql", "CREATE TABLE b (id int);\n"),
    ]);
    let runner = runner(&server, &config, dir.path());
    runner.migrate().await.unwrap();
    // Line endings only: same checksum, no drift.
    write(
        dir.path(),
        "V1__create_a.sql",
        "CREATE TABLE a (id int);\r\nINSERT INTO a VALUES (1);\r\n",
    );
    let report = runner.report().await.unwrap();
    assert!(report.drifted.is_empty(), "{:?}", report.drifted);
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    // A real edit: drift, reported by status and refused by migrate, naming the file.
    write(
        dir.path(),
        "V1__create_a.sql",
        "CREATE TABLE a (id bigint);\nINSERT INTO a VALUES (1);\n",
    );
    write(dir.path(), "V3__create_c.sql", "CREATE TABLE c (id int);\n");
    let report = runner.report().await.unwrap();
    assert_eq!(report.drifted.len(), 1);
    assert_eq!(report.drifted[0].version, "1");
    let e = runner.migrate().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.to_string().contains("V1__create_a.sql"), "{e}");
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:true"],
        "V3 did not run"
    );
    // Repair re-stamps the checksum; then V3 runs.
    let repaired = runner.repair().await.unwrap();
    assert_eq!(repaired.restamped, ["1"]);
    assert!(runner.report().await.unwrap().drifted.is_empty());
    assert_eq!(runner.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:true", "3:true"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_middle_leaves_nothing_and_the_run_is_rolled_back() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__create_a.sql",
            "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1), (2);\n",
        ),
        (
            "V2__half.sql",
            "CREATE TABLE b (id int);\nINSERT INTO b VALUES (1);\nINSERT INTO no_such_table VALUES (1);\n",
        ),
        ("V3__never.sql", "CREATE TABLE c (id int);\n"),
    ]);
    let runner = runner(&server, &config, dir.path());
    let before = runner.status().await.unwrap();
    let backup = runner.backup().await.unwrap();
    let e = runner.migrate().await.unwrap_err();
    assert!(e.to_string().contains("V2__half.sql"), "{e}");
    assert!(e.to_string().contains("no_such_table"), "{e}");
    // V1 applied; nothing of V2 (its first statements included) and V3 not tried.
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT to_regclass('b') IS NULL AND to_regclass('c') IS NULL"
            )
            .await
            .unwrap(),
        "t"
    );
    assert_eq!(runner.status().await.unwrap().current, Some(v("1")));
    // The release's rollback: back to the schema before the run (no down files: the backup).
    runner
        .revert(before.current.as_ref(), Some(&backup))
        .await
        .unwrap();
    assert_eq!(runner.status().await.unwrap().current, None);
    assert_eq!(
        server
            .query(&config.dbname, "SELECT to_regclass('a') IS NULL")
            .await
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_racing_apply_each_migration_exactly_once() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__slow.sql",
            "CREATE TABLE hits (n int);\nSELECT pg_sleep(0.5);\nINSERT INTO hits VALUES (1);\n",
        ),
        ("V2__more.sql", "INSERT INTO hits VALUES (2);\n"),
        (
            "V3__index.sql",
            "-- deploy:no-transaction\nCREATE INDEX CONCURRENTLY hits_n ON hits (n);\n",
        ),
    ]);
    let a = runner(&server, &config, dir.path());
    let b = runner(&server, &config, dir.path());
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    assert_eq!(ra.unwrap(), Some(v("3")));
    assert_eq!(rb.unwrap(), Some(v("3")));
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:true", "3:true"]
    );
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT string_agg(n::text, ',' ORDER BY n) FROM hits"
            )
            .await
            .unwrap(),
        "1,2"
    );
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'hits_n'::regclass"
            )
            .await
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_are_retried() {
    let (server, config) = setup().await;
    server
        .query(&config.dbname, "CREATE TABLE busy (id int)")
        .await
        .unwrap();
    let dir = folder(&[(
        "V1__alter_busy.sql",
        "ALTER TABLE busy ADD COLUMN note text;\n",
    )]);
    let runner = builder(&server, &config, dir.path())
        .lock_timeout(Duration::from_millis(200))
        .lock_retries(6)
        .build()
        .unwrap();
    // Another session holds an ACCESS EXCLUSIVE lock for 1.5 s.
    let port = server.port();
    let db = config.dbname.clone();
    let holder = tokio::spawn(async move {
        tokio::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port.to_string(),
                "-d",
                &db,
            ])
            .args([
                "-c",
                "BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(1.5); COMMIT;",
            ])
            .output()
            .await
            .unwrap()
    });
    wait_for(&server, &config.dbname, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'busy' AND l.mode = 'AccessExclusiveLock' AND l.granted").await;
    let started = std::time::Instant::now();
    assert_eq!(runner.migrate().await.unwrap(), Some(v("1")));
    // It hit the 200 ms lock_timeout, rolled back and retried until the holder committed.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(holder.await.unwrap().status.success());
    assert_eq!(
        server.query(&config.dbname, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy' AND column_name = 'note'").await.unwrap(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_concurrently_migration_reports_and_drops_its_invalid_index() {
    let (server, config) = setup().await;
    let dir = folder(&[
        (
            "V1__dupes.sql",
            "CREATE TABLE u (email text);\nINSERT INTO u VALUES ('a'), ('a');\n",
        ),
        (
            "V2__unique.sql",
            "-- deploy:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY u_email ON u (email);\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    let status = runner.report().await.unwrap();
    assert!(status.pending[1].transaction.is_outside());
    assert_eq!(status.pending[1].compatibility, Compatibility::Compatible);
    let e = runner.migrate().await.unwrap_err();
    assert!(
        e.to_string().contains("invalid indexes: public.u_email"),
        "{e}"
    );
    // One error: psql's failure is told once, with the indexes it left as a fact.
    assert_eq!(e.to_string().matches("exited with code").count(), 1, "{e}");
    assert_eq!(
        e.to_string()
            .matches("could not create unique index")
            .count(),
        1,
        "{e}"
    );
    // Its row says it did not finish; status shows it; migrate refuses until repaired.
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:false"]
    );
    assert_eq!(runner.report().await.unwrap().failed.len(), 1);
    let e = runner.migrate().await.unwrap_err();
    assert!(e.to_string().contains("did not finish"), "{e}");
    assert_eq!(runner.invalid_indexes().await.unwrap(), ["public.u_email"]);
    assert_eq!(
        runner.drop_invalid_indexes().await.unwrap(),
        ["public.u_email"]
    );
    assert!(runner.invalid_indexes().await.unwrap().is_empty());
    // Fix the data, repair, rerun.
    server
        .query(
            &config.dbname,
            "DELETE FROM u WHERE ctid = (SELECT max(ctid) FROM u)",
        )
        .await
        .unwrap();
    assert_eq!(runner.repair().await.unwrap().removed_failed, ["2"]);
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(history(&server, &config.dbname).await, ["1:true", "2:true"]);
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'u_email'::regclass"
            )
            .await
            .unwrap(),
        "t"
    );

    // With drop_invalid_indexes the runner drops what a failure left.
    let dir2 = folder(&[
        (
            "V1__dupes.sql",
            "CREATE TABLE w (email text);\nINSERT INTO w VALUES ('a'), ('a');\n",
        ),
        (
            "V2__unique.sql",
            "-- deploy:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY w_email ON w (email);\n",
        ),
    ]);
    let config2 = server.create_database().await.unwrap();
    let r2 = builder(&server, &config2, dir2.path())
        .drop_invalid_indexes(true)
        .build()
        .unwrap();
    let e = r2.migrate().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("dropped the invalid indexes it left: public.w_email"),
        "{e}"
    );
    assert!(r2.invalid_indexes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_destructive_migration_restore_and_swap_round_trip() {
    let (server, config) = setup().await;
    let dir = folder(&[(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);\n\
         INSERT INTO items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 2000) g;\n",
    )]);
    let runner = runner(&server, &config, dir.path());
    runner.migrate().await.unwrap();
    let rows = "SELECT md5(string_agg(t::text, ';' ORDER BY id)) || ':' || count(*) FROM items t";
    let before = server.query(&config.dbname, rows).await.unwrap();
    let backup = runner.backup().await.unwrap();
    let meta = std::fs::metadata(&backup.0).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "backups are private"
    );

    write(
        dir.path(),
        "V2__drop_price.sql",
        "ALTER TABLE items DROP COLUMN price;\nDELETE FROM items WHERE id % 2 = 0;\n",
    );
    let status = runner.status().await.unwrap();
    let reason = status.pending[0].destructive.clone().expect("destructive");
    assert!(reason.contains("drops a column of items"), "{reason}");
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(
        server
            .query(&config.dbname, "SELECT count(*) FROM items")
            .await
            .unwrap(),
        "1000"
    );

    // A client keeps a session open on the database: the swap terminates it.
    let port = server.port();
    let db = config.dbname.clone();
    let mut idle = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-d",
            &db,
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for(&server, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").await;

    let report = runner
        .restore(Path::new(&backup.0), RestoreMode::Swap, Some(Some("1")))
        .await
        .unwrap();
    assert_eq!(report.version.as_deref(), Some("1"));
    let status = tokio::time::timeout(Duration::from_secs(10), idle.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the idle session was terminated");
    // Row for row as before the destructive migration.
    assert_eq!(server.query(&config.dbname, rows).await.unwrap(), before);
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
    // A restore asked for (no failed migration) drops the database it replaced.
    assert_eq!(report.kept_as, None);
    assert_eq!(
        server
            .query(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE '%_failed_%' OR datname LIKE '%_replaced_%'"
            )
            .await
            .unwrap(),
        "0"
    );
    // No restore database is left behind.
    assert_eq!(
        server
            .query(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE '%_restore_%'"
            )
            .await
            .unwrap(),
        "0"
    );

    // A restore that does not verify leaves the live database alone and drops its copy.
    let e = runner
        .restore(Path::new(&backup.0), RestoreMode::Swap, Some(Some("7")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.to_string().contains("expected 7"), "{e}");
    assert_eq!(server.query(&config.dbname, rows).await.unwrap(), before);
    assert_eq!(
        server
            .query(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE '%_restore_%'"
            )
            .await
            .unwrap(),
        "0"
    );

    // In place, as an explicit option.
    server
        .query(&config.dbname, "DELETE FROM items WHERE id > 10")
        .await
        .unwrap();
    let report = runner
        .restore(Path::new(&backup.0), RestoreMode::InPlace, None)
        .await
        .unwrap();
    assert_eq!(report.kept_as, None);
    assert_eq!(server.query(&config.dbname, rows).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_checked_kept_to_the_retention_and_never_half_written() {
    let (server, config) = setup().await;
    let dir = folder(&[("V1__t.sql", "CREATE TABLE t (id int);\n")]);
    let backups = server.dir().join("retention");
    let runner = builder(&server, &config, dir.path())
        .backup_dir(&backups)
        .keep_backups(2)
        .compression(1)
        .build()
        .unwrap();
    runner.migrate().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(runner.backup().await.unwrap());
    }
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    left.sort();
    // The directory it created is its owner's only; every backup in it is 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&backups), 0o700, "the backup directory is private");
    for b in &left {
        assert_eq!(mode(Path::new(b)), 0o600, "{b}");
    }
    assert_eq!(
        left,
        [ids[1].0.clone(), ids[2].0.clone()],
        "the newest two, no temporary file"
    );

    // A corrupt archive: swapping, pg_restore fails into the fresh copy, which is dropped; in
    // place, it is refused before the live database is dropped. The live database is untouched.
    let bad = server.dir().join("bad.dump");
    std::fs::write(&bad, b"not an archive").unwrap();
    for mode in [RestoreMode::Swap, RestoreMode::InPlace] {
        let e = runner.restore(&bad, mode, None).await.unwrap_err();
        assert!(e.to_string().contains("bad.dump"), "{e}");
        assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
        assert_eq!(
            server
                .query(
                    "postgres",
                    "SELECT count(*) FROM pg_database WHERE datname LIKE '%_restore_%'"
                )
                .await
                .unwrap(),
            "0"
        );
    }
    let e = runner
        .revert(None, Some(&BackupId("/nonexistent/x.dump".into())))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);

    // pg_dump failing (no such database) leaves no file behind.
    let missing = server.config("no_such_db");
    let r = builder(&server, &missing, dir.path())
        .backup_dir(&backups)
        .build()
        .unwrap();
    let e = r.backup().await.unwrap_err();
    assert!(e.to_string().contains("no_such_db"), "{e}");
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 2);

    // Missing parents are created too, the backup directory itself 0700; a directory that
    // already exists (it may be shared, as /var/backups is) keeps its mode.
    let nested = server.dir().join("a/b/backups");
    let r = builder(&server, &config, dir.path())
        .backup_dir(&nested)
        .build()
        .unwrap();
    let id = r.backup().await.unwrap();
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(Path::new(&id.0)), 0o600);
    let shared = server.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = builder(&server, &config, dir.path())
        .backup_dir(&shared)
        .build()
        .unwrap();
    let id = r.backup().await.unwrap();
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(Path::new(&id.0)), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_layouts() {
    let (server, config) = setup().await;
    let golang = folder(&[
        (
            "000001_create_users.up.sql",
            "CREATE TABLE users (id int);\n",
        ),
        ("000001_create_users.down.sql", "DROP TABLE users;\n"),
        (
            "000002_add_name.up.sql",
            "ALTER TABLE users ADD COLUMN name text;\n",
        ),
        (
            "000002_add_name.down.sql",
            "ALTER TABLE users DROP COLUMN name;\n",
        ),
        ("README.md", "not a migration\n"),
    ]);
    let r = runner(&server, &config, golang.path());
    assert_eq!(r.report().await.unwrap().layout, Layout::GolangMigrate);
    assert_eq!(r.migrate().await.unwrap(), Some(v("2")));
    // Its down drops a column with its values: refused without a backup...
    let e = r.revert(Some(&v("1")), None).await.unwrap_err();
    assert!(e.to_string().contains("DROP COLUMN name"), "{e}");
    assert_eq!(history(&server, &config.dbname).await, ["1:true", "2:true"]);
    // ...and run when data loss is allowed.
    let r = builder(&server, &config, golang.path())
        .allow_data_loss(true)
        .build()
        .unwrap();
    r.revert(Some(&v("1")), None).await.unwrap();
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users'"
            )
            .await
            .unwrap(),
        "1"
    );

    let config = server.create_database().await.unwrap();
    let diesel = folder(&[
        (
            "00000000000000_diesel_initial_setup/up.sql",
            "CREATE TABLE setup (id int);\n",
        ),
        (
            "00000000000000_diesel_initial_setup/down.sql",
            "DROP TABLE setup;\n",
        ),
        (
            "2026-11-20-093000_create_posts/up.sql",
            "CREATE TABLE posts (id int);\n",
        ),
        (
            "2026-11-20-093000_create_posts/down.sql",
            "DROP TABLE posts;\n",
        ),
        (
            "2026-11-21-101500_index_posts/up.sql",
            "CREATE INDEX CONCURRENTLY posts_id ON posts (id);\n",
        ),
        (
            "2026-11-21-101500_index_posts/metadata.toml",
            "run_in_transaction = false\n",
        ),
    ]);
    let r = runner(&server, &config, diesel.path());
    let report = r.report().await.unwrap();
    assert_eq!(report.layout, Layout::Diesel);
    assert!(report.pending[2].transaction.is_outside());
    assert_eq!(r.migrate().await.unwrap(), Some(v("20261121101500")));
    assert_eq!(
        history(&server, &config.dbname).await,
        [
            "00000000000000:true",
            "20261120093000:true",
            "20261121101500:true"
        ]
    );

    let config = server.create_database().await.unwrap();
    let flyway = folder(&[
        ("V1__a.sql", "CREATE TABLE a (id int);\n"),
        ("V1.1__b.sql", "CREATE TABLE b (id int);\n"),
        ("V2__c.sql", "CREATE TABLE c (id int);\n"),
        ("V10__d.sql", "CREATE TABLE d (id int);\n"),
    ]);
    let r = builder(&server, &config, flyway.path())
        .allow_gaps(true)
        .build()
        .unwrap();
    assert_eq!(r.report().await.unwrap().layout, Layout::Flyway);
    assert_eq!(r.migrate().await.unwrap(), Some(v("10")));
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "1.1:true", "2:true", "10:true"]
    );
    // The runbook's check, ordering versions numerically.
    assert_eq!(
        server
            .query(&config.dbname, "SELECT version FROM schema_version ORDER BY string_to_array(version, '.')::numeric[] DESC LIMIT 1")
            .await
            .unwrap(),
        "10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_folders_are_typed_errors_naming_the_file() {
    let (server, config) = setup().await;
    for (files, needle) in [
        (vec![("V1__a.sql", "x"), ("V1__b.sql", "y")], "V1__b.sql"),
        (vec![("V1__a.sql", "x"), ("V3__c.sql", "y")], "V3__c.sql"),
        (vec![("V1_a.sql", "x")], "V1_a.sql"),
        (vec![("Vx__a.sql", "x")], "Vx__a.sql"),
        (vec![("1_a.up.sql", "x"), ("V2__b.sql", "y")], "V2__b.sql"),
        (vec![("1_a.down.sql", "x")], "1_a.down.sql"),
        (vec![("R__.sql", "x")], "R__.sql"),
        (
            vec![("1_a.up.sql", "x"), ("R__view.sql", "y")],
            "R__view.sql",
        ),
    ] {
        let dir = folder(&files);
        let r = runner(&server, &config, dir.path());
        let e = r.status().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    // Unreadable (not UTF-8) and a missing folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("V1__bin.sql"), [0xff, 0xfe, 0x00]).unwrap();
    let e = runner(&server, &config, dir.path())
        .status()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("V1__bin.sql") && e.to_string().contains("UTF-8"),
        "{e}"
    );
    let e = runner(&server, &config, Path::new("/nonexistent/migrations"))
        .migrate()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("/nonexistent/migrations"), "{e}");
    // Nothing was created by the failed calls.
    assert_eq!(
        server
            .query(
                &config.dbname,
                "SELECT to_regclass('schema_version') IS NULL"
            )
            .await
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_marks_an_existing_schema() {
    let (server, config) = setup().await;
    server
        .query(&config.dbname, "CREATE TABLE legacy (id int)")
        .await
        .unwrap();
    let dir = folder(&[
        ("V1__legacy.sql", "CREATE TABLE legacy (id int);\n"),
        (
            "V2__legacy_more.sql",
            "ALTER TABLE legacy ADD COLUMN x int;\n",
        ),
        ("V3__new.sql", "CREATE TABLE fresh (id int);\n"),
    ]);
    server
        .query(&config.dbname, "ALTER TABLE legacy ADD COLUMN x int")
        .await
        .unwrap();
    let r = builder(&server, &config, dir.path())
        .history_table("ops.migrations")
        .build()
        .unwrap();
    r.baseline("2").await.unwrap();
    let report = r.report().await.unwrap();
    assert_eq!(report.current.as_deref(), Some("2"));
    assert_eq!(
        report
            .pending
            .iter()
            .map(|p| p.version.as_str())
            .collect::<Vec<_>>(),
        ["3"]
    );
    assert_eq!(r.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(
        server.query(&config.dbname, "SELECT string_agg(version || ':' || name, ',' ORDER BY version) FROM ops.migrations").await.unwrap(),
        "2:<< baseline >>,3:new"
    );
    let e = r.baseline("5").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_refuses_destructive_migrations_when_asked() {
    let (server, config) = setup().await;
    server
        .query(&config.dbname, "CREATE TABLE t (id int, old text)")
        .await
        .unwrap();
    let dir = folder(&[
        ("V1__add.sql", "ALTER TABLE t ADD COLUMN note text;\n"),
        ("V2__index.sql", "CREATE INDEX t_id ON t (id);\n"),
    ]);
    let r = builder(&server, &config, dir.path())
        .allow_destructive(false)
        .build()
        .unwrap();
    let status = r.status().await.unwrap();
    assert_eq!(status.pending[0].destructive, None);
    assert!(
        status.pending[1]
            .destructive
            .as_deref()
            .unwrap()
            .contains("without CONCURRENTLY")
    );
    let e = r.migrate().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.to_string().contains("destructive"), "{e}");
    assert_eq!(history(&server, &config.dbname).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_used_and_never_shown() {
    let (server, config) = setup().await;
    let password = "Zq9-very-secret-pw";
    server.create_password_role(password).await.unwrap();
    let url = format!(
        "postgres://{PASSWORD_ROLE}:{password}@127.0.0.1:{}/{}",
        server.port(),
        config.dbname
    );
    let pw_config = PgConfig::from_url(&url).unwrap();
    let dir = folder(&[
        ("V1__t.sql", "CREATE TABLE t (id int);\n"),
        ("V2__bad.sql", "INSERT INTO missing_table VALUES (1);\n"),
    ]);
    let r = runner(&server, &pw_config, dir.path());
    // The password works for psql, pg_dump and pg_restore (scram on loopback for this role).
    let backup = r.backup().await.unwrap();
    let e = r.migrate().await.unwrap_err();
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
    r.revert(None, Some(&backup)).await.unwrap();
    let mut shown = format!("{e} {e:?} {r:?} {pw_config:?} {pw_config} {backup}");
    // A wrong password: a permission error that does not repeat either password.
    let wrong = PgConfig::from_url(&format!(
        "postgres://{PASSWORD_ROLE}:not-{password}@127.0.0.1:{}/{}",
        server.port(),
        config.dbname
    ))
    .unwrap();
    let e = runner(&server, &wrong, dir.path())
        .status()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    shown.push_str(&format!("{e} {e:?} {}", server.log()));
    assert!(!shown.contains(password), "the password leaked: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_built_from_its_plan_file_section_migrates_and_backs_up() {
    let (server, config) = setup().await;
    let dir = folder(&[("V1__a.sql", "CREATE TABLE a (id int);\n")]);
    let backups = server.dir().join("section-backups");
    let section: PgMigrationRunnerConfig = serde_json::from_value(serde_json::json!({
        "url": format!("postgres://postgres@127.0.0.1:{}/{}", server.port(), config.dbname),
        "dir": dir.path(),
        "backup_dir": backups,
        "keep_backups": 1,
        "history_table": "ops.migrations",
        "restore_mode": "swap",
    }))
    .unwrap();
    let r = PgMigrationRunner::from_config(section).unwrap();
    let first = r.backup().await.unwrap();
    assert_eq!(r.migrate().await.unwrap(), Some(v("1")));
    r.verify(Some(&v("1"))).await.unwrap();
    assert_eq!(
        server
            .query(&config.dbname, "SELECT version FROM ops.migrations")
            .await
            .unwrap(),
        "1"
    );
    // keep_backups = 1: the second backup replaced the first.
    let second = r.backup().await.unwrap();
    assert_ne!(first, second);
    assert!(!Path::new(&first.0).exists() && Path::new(&second.0).exists());
}

/// Not a test on its own: the process that `kill_9_during_a_long_migration_then_rerun` starts
/// and kills. Without its environment it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_runner_process_to_be_killed() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("DEPLOY_PG_KILL_URL"),
        std::env::var("DEPLOY_PG_KILL_DIR"),
    ) else {
        return;
    };
    let config = PgConfig::from_url(&url).unwrap();
    let r = deploy_postgres::PgMigrationRunner::builder(config, dir)
        .build()
        .unwrap();
    let _ = r.migrate().await;
    unreachable!("the test kills this process during the migration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_long_migration_then_rerun_is_consistent() {
    let (server, config) = setup().await;
    let dir = folder(&[
        ("V1__a.sql", "CREATE TABLE a (id int);\n"),
        (
            "V2__long.sql",
            "CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 1000) g;\n\
             SELECT pg_sleep(coalesce(current_setting('test.sleep', true), '0')::float);\n\
             INSERT INTO big VALUES (0);\n",
        ),
        ("V3__c.sql", "CREATE TABLE c (id int);\n"),
    ]);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        server.port(),
        config.dbname
    );
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_runner_process_to_be_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DEPLOY_PG_KILL_URL", &url)
        .env("DEPLOY_PG_KILL_DIR", dir.path())
        // Only the killed runner's sessions sleep in V2.
        .env("PGOPTIONS", "-c test.sleep=60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stopped by its PID whatever happens below.
    let mut child = ChildGuard::new(child);
    // Wait until V2 is running (sleeping inside its transaction).
    let mut running = false;
    for _ in 0..600 {
        let n = server
            .query(&config.dbname, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'deploy-postgres:apply:schema_version' AND query LIKE '%pg_sleep%' AND state = 'active'")
            .await
            .unwrap();
        if n == "1" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running, "V2 started in the helper process");
    assert!(
        child.signal(Signal::Kill).unwrap(),
        "the helper was running"
    );
    child.child().wait().unwrap();
    // V1 committed, V2 did not.
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);

    let r = runner(&server, &config, dir.path());
    assert_eq!(r.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(
        history(&server, &config.dbname).await,
        ["1:true", "2:true", "3:true"]
    );
    assert_eq!(
        server
            .query(&config.dbname, "SELECT count(*) FROM big")
            .await
            .unwrap(),
        "1001"
    );
    assert_eq!(
        server.query(&config.dbname, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'deploy-postgres%'").await.unwrap(),
        "0",
        "no session of the killed runner is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_reports_a_missing_server_with_the_install_command() {
    let e = PgServer::start_with(Some("/nonexistent/pg/bin".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("apt-get install postgresql"), "{e}");
    assert!(e.to_string().contains("/nonexistent/pg/bin"), "{e}");
}
