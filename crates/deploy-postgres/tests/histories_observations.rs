//! What real projects' migration histories hold, each observed failing on a real server:
//! files with their own transaction, newer diesel folder names, Flyway repeatables and
//! `CONCURRENTLY` without a marker, reverts by down files, and a swap restore's leftovers.

mod common;

use common::*;
use deploy_core::{ErrorKind, MigrationRunner, SchemaVersion};
use deploy_postgres::RestoreMode;

fn v(s: &str) -> SchemaVersion {
    SchemaVersion(s.to_owned())
}

async fn one(server: &deploy_postgres::testing::PgServer, db: &str, sql: &str) -> String {
    server.query(db, sql).await.unwrap()
}

async fn columns(server: &deploy_postgres::testing::PgServer, db: &str, table: &str) -> String {
    one(
        server,
        db,
        &format!(
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM \
             information_schema.columns WHERE table_name = '{table}'"
        ),
    )
    .await
}

/// Observation 1: a file with its own `BEGIN; … COMMIT;` ran inside `--single-transaction`, so
/// its COMMIT ended the runner's transaction: a bad statement after it left the first changes
/// committed without a history row. Now a file that is one transaction runs as that
/// transaction with its row inside; a file with statements outside its transaction is refused
/// before anything runs, naming the file and the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_1_a_file_with_its_own_transaction_is_all_or_nothing() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        ("V1__notes.sql", "CREATE TABLE notes (id int);\n"),
        (
            "V2__title.sql",
            "BEGIN;\nALTER TABLE notes ADD COLUMN title text;\nSELECT pg_sleep(0.3);\n\
             ALTER TABLE no_such_table ADD COLUMN x int;\nCOMMIT;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    let e = runner.migrate().await.unwrap_err();
    assert!(e.to_string().contains("no_such_table"), "{e}");
    assert_eq!(history(&server, &db).await, ["1:true"]);
    assert_eq!(columns(&server, &db, "notes").await, "id");

    // Fixed: it runs as its own transaction, its row written inside it, with its real time.
    write(
        dir.path(),
        "V2__title.sql",
        "BEGIN;\nALTER TABLE notes ADD COLUMN title text;\nSELECT pg_sleep(0.3);\nCOMMIT;\n",
    );
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(history(&server, &db).await, ["1:true", "2:true"]);
    let ms: i64 = one(
        &server,
        &db,
        "SELECT execution_ms FROM schema_version WHERE version = '2'",
    )
    .await
    .parse()
    .unwrap();
    assert!(ms >= 300, "execution_ms {ms}");

    // A statement after the file's COMMIT: refused before anything runs, naming file and line.
    write(
        dir.path(),
        "V3__body.sql",
        "-- generated\nBEGIN;\nALTER TABLE notes ADD COLUMN body text;\nCOMMIT;\n\
         ALTER TABLE no_such_table ADD COLUMN y int;\n",
    );
    let e = runner.status().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("V3__body.sql") && text.contains("line 5"),
        "{text}"
    );
    let e = runner.migrate().await.unwrap_err();
    assert!(e.to_string().contains("V3__body.sql"), "{e}");
    assert_eq!(history(&server, &db).await, ["1:true", "2:true"]);
    assert_eq!(columns(&server, &db, "notes").await, "id,title");

    // Two transactions in one file: refused the same way.
    write(
        dir.path(),
        "V3__body.sql",
        "BEGIN;\nALTER TABLE notes ADD COLUMN body text;\nCOMMIT;\nBEGIN;\nALTER TABLE notes \
         ADD COLUMN tags text;\nCOMMIT;\n",
    );
    let e = runner.migrate().await.unwrap_err();
    assert!(
        e.to_string().contains("V3__body.sql") && e.to_string().contains("line 4"),
        "{e}"
    );
    assert_eq!(columns(&server, &db, "notes").await, "id,title");

    // The same file marked to run outside a transaction runs as given.
    write(
        dir.path(),
        "V3__body.sql",
        "-- deploy:no-transaction\nBEGIN;\nALTER TABLE notes ADD COLUMN body text;\nCOMMIT;\n\
         BEGIN;\nALTER TABLE notes ADD COLUMN tags text;\nCOMMIT;\n",
    );
    assert_eq!(runner.migrate().await.unwrap(), Some(v("3")));
    assert_eq!(columns(&server, &db, "notes").await, "id,title,body,tags");
}

/// Observation 2: newer diesel folders (`2026-07-27-143313-0000_name`) were read as the number
/// 202607271433130000, so a later `2026-09-01-000000_name` was refused as older than the
/// current version. Diesel orders versions (the part before `_`, dashes dropped) as strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_2_newer_diesel_names_are_ordered_as_diesel_orders_them() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        (
            "2026-07-27-143313-0000_create_a/up.sql",
            "CREATE TABLE a (id int);\n",
        ),
        (
            "2026-07-27-143313-0000_create_a/down.sql",
            "DROP TABLE a;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    assert_eq!(
        runner.migrate().await.unwrap(),
        Some(v("202607271433130000"))
    );
    write(
        dir.path(),
        "2026-09-01-000000_create_b/up.sql",
        "CREATE TABLE b (id int REFERENCES a_missing);\n",
    );
    // A failure names the migration as diesel does: its folder.
    let e = runner.migrate().await.unwrap_err();
    assert!(e.to_string().contains("2026-09-01-000000_create_b"), "{e}");
    write(
        dir.path(),
        "2026-09-01-000000_create_b/up.sql",
        "CREATE TABLE b (id int);\n",
    );
    assert_eq!(runner.migrate().await.unwrap(), Some(v("20260901000000")));
    assert_eq!(
        one(
            &server,
            &db,
            "SELECT string_agg(version, ',' ORDER BY installed_at) FROM schema_version"
        )
        .await,
        "202607271433130000,20260901000000"
    );
}

/// Observation 3: Flyway's repeatable migrations were refused outright, and a versioned
/// migration with `CREATE INDEX CONCURRENTLY` and no marker failed inside the transaction while
/// `status` called it additive with no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_3_flyway_repeatables_and_concurrently_without_a_marker() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        (
            "V1__items.sql",
            "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
             INSERT INTO items VALUES (1, 'a'), (2, 'b');\n",
        ),
        (
            "V2__index_items.sql",
            "CREATE INDEX CONCURRENTLY items_name ON items (name);\n",
        ),
        (
            "R__items_view.sql",
            "CREATE OR REPLACE VIEW items_view AS SELECT id FROM items;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    let report = runner.report().await.unwrap();
    assert_eq!(report.pending.len(), 2, "{:?}", report.pending);
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(
        one(
            &server,
            &db,
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_name'::regclass"
        )
        .await,
        "t"
    );
    assert_eq!(columns(&server, &db, "items_view").await, "id");
    // The view's definition changes: it is applied again, after the versioned ones.
    write(
        dir.path(),
        "R__items_view.sql",
        "CREATE OR REPLACE VIEW items_view AS SELECT id, name FROM items;\n",
    );
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(columns(&server, &db, "items_view").await, "id,name");

    // Reverting past the repeatable: the view goes with it (it holds no data), so the downs
    // can drop what it reads, and the next migrate creates it again.
    write(dir.path(), "U1__items.sql", "DROP TABLE items;\n");
    write(
        dir.path(),
        "U2__index_items.sql",
        "DROP INDEX CONCURRENTLY items_name;\n",
    );
    let lossy = builder(&server, &config, dir.path())
        .allow_data_loss(true)
        .build()
        .unwrap();
    lossy.revert(None, None).await.unwrap();
    assert_eq!(
        one(
            &server,
            &db,
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             AND relname NOT LIKE 'schema\\_version%'"
        )
        .await,
        "0"
    );
    assert_eq!(history(&server, &db).await, Vec::<String>::new());
    assert_eq!(runner.migrate().await.unwrap(), Some(v("2")));
    assert_eq!(columns(&server, &db, "items_view").await, "id,name");
}

/// Observation 4: `revert` refused, without a backup, every migration the classifier called
/// destructive — a judgement of compatibility with the running release, not of data loss —
/// so an index or a constraint could not be undone by its down file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_4_reverts_by_down_files_judge_data_loss_not_compatibility() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        (
            "000001_create_t.up.sql",
            "CREATE TABLE t (id int, a int);\nINSERT INTO t VALUES (1, 1), (2, 2);\n",
        ),
        ("000001_create_t.down.sql", "DROP TABLE t;\n"),
        ("000002_index_a.up.sql", "CREATE INDEX t_a ON t (a);\n"),
        ("000002_index_a.down.sql", "DROP INDEX t_a;\n"),
        (
            "000003_check_a.up.sql",
            "ALTER TABLE t ADD CONSTRAINT t_a_positive CHECK (a > 0);\n",
        ),
        (
            "000003_check_a.down.sql",
            "ALTER TABLE t DROP CONSTRAINT t_a_positive;\n",
        ),
        (
            "000004_add_note.up.sql",
            "ALTER TABLE t ADD COLUMN note text;\n",
        ),
        (
            "000004_add_note.down.sql",
            "alter table t drop column note;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    assert_eq!(runner.migrate().await.unwrap(), Some(v("4")));
    // Undoing 4 drops a column and its data: refused without a backup, quoting the statement
    // as written.
    let e = runner.revert(Some(&v("3")), None).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("alter table t drop column note") && text.contains("backup"),
        "{text}"
    );
    assert_eq!(columns(&server, &db, "t").await, "id,a,note");
    // Allowed explicitly, it runs.
    builder(&server, &config, dir.path())
        .allow_data_loss(true)
        .build()
        .unwrap()
        .revert(Some(&v("3")), None)
        .await
        .unwrap();
    assert_eq!(columns(&server, &db, "t").await, "id,a");
    // An index and a constraint come off by their down files, no backup needed.
    runner.revert(Some(&v("1")), None).await.unwrap();
    assert_eq!(history(&server, &db).await, ["1:true"]);
    assert_eq!(
        one(
            &server,
            &db,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 't_a'"
        )
        .await,
        "0"
    );
    assert_eq!(one(&server, &db, "SELECT count(*) FROM t").await, "2");
}

/// Observation 6 (the restore part): after a successful swap restore the replaced database was
/// still kept as `<db>_failed_<stamp>`. It is dropped unless asked to keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_6_a_successful_swap_restore_drops_the_database_it_replaced() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[("V1__a.sql", "CREATE TABLE a (id int);\n")]);
    let runner = runner(&server, &config, dir.path());
    runner.migrate().await.unwrap();
    let backup = runner.take_backup().await.unwrap();
    let databases = || async {
        one(
            &server,
            "postgres",
            &format!(
                "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database WHERE datname LIKE '{db}\\_%'"
            ),
        )
        .await
    };
    let r = runner
        .restore(&backup, RestoreMode::Swap, Some(Some("1")))
        .await
        .unwrap();
    assert_eq!(r.kept_as, None);
    assert_eq!(databases().await, "");
    let kept = builder(&server, &config, dir.path())
        .keep_replaced_database(true)
        .build()
        .unwrap()
        .restore(&backup, RestoreMode::Swap, Some(Some("1")))
        .await
        .unwrap()
        .kept_as
        .expect("kept");
    assert_eq!(databases().await, kept);
}

/// Observation 1, the marked case: a file run as written that fails part-way says what stays
/// committed, and its row stays unfinished until repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_outside_a_transaction_that_fails_says_what_stays_committed() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        ("V1__t.sql", "CREATE TABLE t (id int);\n"),
        (
            "V2__two_steps.sql",
            "-- deploy:no-transaction\nALTER TABLE t ADD COLUMN a int;\nSELECT 1/0;\nALTER TABLE t ADD COLUMN b int;\n",
        ),
    ]);
    let runner = runner(&server, &config, dir.path());
    let e = runner.migrate().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("V2__two_steps.sql")
            && text.contains("what it did before line 3 stays committed")
            && text.contains("division by zero"),
        "{text}"
    );
    // What ran before line 3 is there, what came after is not; the row is unfinished.
    assert_eq!(columns(&server, &db, "t").await, "id,a");
    assert_eq!(history(&server, &db).await, ["1:true", "2:false"]);
}

/// Observation 5 (speed): runs of plain files share one psql session, yet each stays its own
/// transaction with its row, and what one file `SET`s never reaches the next; a failure in the
/// middle leaves the files before it applied and names the failing file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_5_plain_files_share_a_session_but_nothing_else() {
    let (server, config) = setup().await;
    let db = config.dbname.clone();
    let dir = folder(&[
        (
            "V1__schema.sql",
            "CREATE SCHEMA app;\nSET search_path = app;\nCREATE TEMP TABLE scratch (x int);\n",
        ),
        // Would land in `app` if V1's SET leaked into its session.
        ("V2__t.sql", "CREATE TABLE t (id int);\n"),
        // Not ended by `;`: runs alone, as psql reads it at the end of its input.
        ("V3__u.sql", "CREATE TABLE u (id int)"),
        ("V4__v.sql", "CREATE TABLE v (id int);\n"),
        (
            "V5__fails.sql",
            "CREATE TABLE w (id int);\nSELECT * FROM scratch;\n",
        ),
        ("V6__x.sql", "CREATE TABLE x (id int);\n"),
    ]);
    let runner = runner(&server, &config, dir.path());
    let e = runner.migrate().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("V5__fails.sql") && text.contains("\"scratch\" does not exist"),
        "{text}"
    );
    assert_eq!(crate_input_line(&e), Some("2".to_owned()), "{e:?}");
    assert_eq!(
        history(&server, &db).await,
        ["1:true", "2:true", "3:true", "4:true"]
    );
    assert_eq!(
        one(
            &server,
            &db,
            "SELECT string_agg(table_schema || '.' || table_name, ',' ORDER BY table_name) \
             FROM information_schema.tables WHERE table_schema IN ('public', 'app') \
             AND table_name <> 'schema_version'"
        )
        .await,
        "public.t,public.u,public.v"
    );
    // Fixed, the rest runs.
    write(dir.path(), "V5__fails.sql", "CREATE TABLE w (id int);\n");
    assert_eq!(runner.migrate().await.unwrap(), Some(v("6")));
    assert_eq!(history(&server, &db).await.len(), 6);
}

/// The input line an error names (the tools' `input line` frame).
fn crate_input_line(e: &deploy_core::Error) -> Option<String> {
    e.context_values()
        .iter()
        .find(|(k, _)| *k == "input line")
        .map(|(_, v)| v.clone())
}
