//! The runner on histories like real projects' (`deploy_postgres::testing::history`): 200
//! migrations per layout — Flyway with dotted and underscored versions, undo files and
//! repeatable views; golang-migrate; diesel with both folder-name forms, its initial setup and
//! `run_in_transaction = false` — holding files with their own transaction, `CREATE INDEX
//! CONCURRENTLY` alone without a marker, `ALTER TYPE … ADD VALUE`, trigger functions, renames,
//! data fixes.
//!
//! For each layout: the runner's schema equals the one a plain `psql -1 -f` loop builds; a
//! revert to nothing by the down files leaves an empty schema and an empty history; migrating
//! again gives the same schema. A failure inside a file with its own transaction, near the
//! middle, leaves schema and history exactly as they were before that file.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use deploy_core::{MigrationRunner, SchemaVersion};
use deploy_postgres::Layout;
use deploy_postgres::testing::PgServer;
use deploy_postgres::testing::history::{Body, History, HistoryMigration, schema_dump};

const COUNT: usize = 200;

/// The seed of a test's history: `default`, or `HISTORY_SEED` from the environment to try
/// others (a failure names the seed).
fn seed(default: u64) -> u64 {
    std::env::var("HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Rows of the history table, and whether all succeeded.
async fn rows(server: &PgServer, db: &str) -> (usize, bool) {
    let out = server
        .query(
            db,
            "SELECT count(*) || '|' || coalesce(bool_and(success), true) FROM schema_version",
        )
        .await
        .unwrap();
    let (n, ok) = out.split_once('|').unwrap();
    (n.parse().unwrap(), ok == "true")
}

/// The versioned migrations the history table lists, sorted.
async fn recorded(server: &PgServer, db: &str) -> Vec<String> {
    let out = server
        .query(
            db,
            "SELECT coalesce(string_agg(version, ',' ORDER BY version), '') FROM schema_version \
             WHERE version NOT LIKE 'R\\_\\_%'",
        )
        .await
        .unwrap();
    out.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Assert two dumps are equal, showing where they part.
fn same_schema(actual: &str, expected: &str, what: &str) {
    if actual == expected {
        return;
    }
    let a: Vec<&str> = actual.lines().collect();
    let e: Vec<&str> = expected.lines().collect();
    let at = a
        .iter()
        .zip(&e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    let from = at.saturating_sub(5);
    panic!(
        "{what}: the schemas differ at line {}\n--- actual:\n{}\n--- expected:\n{}",
        at + 1,
        a[from..(at + 10).min(a.len())].join("\n"),
        e[from..(at + 10).min(e.len())].join("\n"),
    );
}

/// The migration with its own transaction nearest the middle.
fn own_transaction_near_the_middle(history: &History) -> usize {
    let ms = history.migrations();
    (0..ms.len())
        .filter(|&i| ms[i].body == Body::OwnTransaction)
        .min_by_key(|&i| i.abs_diff(COUNT / 2))
        .expect("a migration with its own transaction")
}

/// How a failure is put into the up file of a migration with its own transaction.
enum Injection {
    /// `SELECT 1/0;` just before its COMMIT.
    BeforeCommit,
    /// A statement on a missing table after its first statement.
    AfterFirstStatement,
}

/// Break the up file of `m`; returns its text and what the error will say.
fn inject(dir: &Path, m: &HistoryMigration, how: &Injection) -> (String, &'static str) {
    let path = dir.join(&m.up);
    let original = std::fs::read_to_string(&path).unwrap();
    // The broken copy has Unix line endings, whatever the file had.
    let text = original.replace("\r\n", "\n");
    let upper = text.to_ascii_uppercase();
    let (at, bad, said) = match how {
        Injection::BeforeCommit => (
            upper.rfind("COMMIT").unwrap(),
            "SELECT 1/0;\n\n",
            "division by zero",
        ),
        Injection::AfterFirstStatement => {
            let begin = upper
                .find("BEGIN;")
                .or_else(|| upper.find("START TRANSACTION;"))
                .unwrap();
            // Statements are separated by blank lines.
            let body = begin + text[begin..].find("\n\n").unwrap() + 2;
            (
                body + text[body..].find("\n\n").unwrap() + 2,
                "ALTER TABLE no_such_table ADD COLUMN x int;\n\n",
                "no_such_table",
            )
        }
    };
    let broken = format!("{}{bad}{}", &text[..at], &text[at..]);
    std::fs::write(&path, broken).unwrap();
    (original, said)
}

fn last_version(history: &History) -> Option<SchemaVersion> {
    Some(SchemaVersion(
        history.migrations().last().unwrap().version.clone(),
    ))
}

/// The whole story on one layout, in one server (psql calls are what costs: each pass over
/// the history is 200 of them):
///
/// 1. the runner reads every file's transaction mode as written;
/// 2. a failure injected in a file with its own transaction near the middle (`k`): migrate
///    fails, and the runner's database is exactly the plain loop's after the `k` files before
///    it, with `k` history rows;
/// 3. the file mended, migrate goes on to the end: the same schema as the plain loop's over
///    the whole history (repeatables included);
/// 4. revert to nothing by the down files (data loss allowed): an empty schema, an empty
///    history table;
/// 5. migrate again: the same schema as in 3.
async fn the_runner_on_a_history(layout: Layout, default_seed: u64, how: Injection) {
    let seed = seed(default_seed);
    let started = Instant::now();
    let what = format!("{layout:?} seed {seed}");
    let server = PgServer::start().await.expect("start the test server");
    let history = History::generate(layout, COUNT, seed);
    let dir = tempfile::tempdir().unwrap();
    history.write_to(dir.path()).unwrap();
    // a: the runner's database; b: the plain loop's.
    let a = server.create_database().await.unwrap();
    let b = server.create_database().await.unwrap();
    // Reverting the whole history runs down files that drop columns and tables.
    let runner = builder(&server, &a, dir.path())
        .allow_data_loss(true)
        .build()
        .unwrap();

    // 1.
    let report = runner.report().await.unwrap();
    assert_eq!(report.pending.len(), COUNT, "{what}");
    for (p, m) in report.pending.iter().zip(history.migrations()) {
        assert_eq!(p.label, m.label, "{what}");
        assert_eq!(p.version, m.version, "{what}");
        assert!(
            m.runs_as(&p.transaction),
            "{what}: {} ({:?}) would run {}",
            m.label,
            m.body,
            p.transaction
        );
    }

    // 2.
    let k = own_transaction_near_the_middle(&history);
    let broken = &history.migrations()[k];
    let (original, said) = inject(dir.path(), broken, &how);
    let (migrated, plain) = tokio::join!(
        runner.migrate(),
        history.apply_plain_range(&server, &b.dbname, dir.path(), 0..k)
    );
    plain.unwrap();
    let e = migrated.unwrap_err().to_string();
    assert!(
        e.contains(said) && e.contains(&broken.label),
        "{what}: migration {k}: {e}"
    );
    assert_eq!(rows(&server, &a.dbname).await, (k, true), "{what}");
    let mut before: Vec<String> = history.migrations()[..k]
        .iter()
        .map(|m| m.version.clone())
        .collect();
    before.sort();
    assert_eq!(recorded(&server, &a.dbname).await, before, "{what}");
    same_schema(
        &schema_dump(&server, &a.dbname).await.unwrap(),
        &schema_dump(&server, &b.dbname).await.unwrap(),
        &format!("{what}, after the failure of {} (number {k})", broken.label),
    );
    let failed = started.elapsed();

    // 3.
    std::fs::write(dir.path().join(&broken.up), original).unwrap();
    let (migrated, plain) = tokio::join!(runner.migrate(), async {
        history
            .apply_plain_range(&server, &b.dbname, dir.path(), k..COUNT)
            .await?;
        history
            .apply_plain_repeatables(&server, &b.dbname, dir.path())
            .await
    });
    plain.unwrap();
    assert_eq!(migrated.unwrap(), last_version(&history), "{what}");
    let all_rows = COUNT + history.repeatables().len();
    assert_eq!(rows(&server, &a.dbname).await, (all_rows, true), "{what}");
    let first = schema_dump(&server, &a.dbname).await.unwrap();
    assert!(first.contains("CREATE TABLE"), "{what}: {first}");
    same_schema(
        &first,
        &schema_dump(&server, &b.dbname).await.unwrap(),
        &format!("{what}, runner against psql"),
    );
    let migrated_at = started.elapsed();

    // 4.
    runner.revert(None, None).await.unwrap();
    assert_eq!(schema_dump(&server, &a.dbname).await.unwrap(), "", "{what}");
    assert_eq!(rows(&server, &a.dbname).await, (0, true), "{what}");
    assert_eq!(runner.current_version().await.unwrap(), None, "{what}");
    let reverted_at = started.elapsed();

    // 5.
    assert_eq!(
        runner.migrate().await.unwrap(),
        last_version(&history),
        "{what}"
    );
    assert_eq!(rows(&server, &a.dbname).await, (all_rows, true), "{what}");
    same_schema(
        &schema_dump(&server, &a.dbname).await.unwrap(),
        &first,
        &format!("{what}, migrated again"),
    );
    eprintln!(
        "{what}: {COUNT} migrations (the plain loop alongside): failure at {} (number {k}) {:.1?}, \
         on to the end {:.1?}, revert to nothing {:.1?}, migrate again {:.1?}",
        broken.label,
        failed,
        migrated_at - failed,
        reverted_at - migrated_at,
        started.elapsed() - reverted_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flyway_history_fails_cleanly_migrates_like_psql_reverts_to_nothing_and_again() {
    the_runner_on_a_history(Layout::Flyway, 11, Injection::AfterFirstStatement).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golang_migrate_history_fails_cleanly_migrates_like_psql_reverts_to_nothing_and_again() {
    the_runner_on_a_history(Layout::GolangMigrate, 12, Injection::BeforeCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_history_fails_cleanly_migrates_like_psql_reverts_to_nothing_and_again() {
    the_runner_on_a_history(Layout::Diesel, 13, Injection::BeforeCommit).await;
}

/// A Flyway history some of whose files were saved with a UTF-8 byte order mark (Windows
/// editors do): Flyway skips the mark, and so does psql — the plain loop applies the whole
/// history — so the runner should run these files as it runs the same files without it.
async fn flyway_with_byte_order_marks_on(which: fn(&HistoryMigration) -> bool, seed: u64) {
    let server = PgServer::start().await.expect("start the test server");
    let history = History::generate(Layout::Flyway, COUNT, seed).with_byte_order_marks(which);
    let dir = tempfile::tempdir().unwrap();
    history.write_to(dir.path()).unwrap();
    let a = server.create_database().await.unwrap();
    let b = server.create_database().await.unwrap();
    let runner = runner(&server, &a, dir.path());
    let (migrated, plain) = tokio::join!(
        runner.migrate(),
        history.apply_plain(&server, &b.dbname, dir.path())
    );
    plain.expect("psql applies every file, marks and all");
    assert_eq!(
        migrated.expect("the runner applies every file, as psql does"),
        last_version(&history)
    );
    same_schema(
        &schema_dump(&server, &a.dbname).await.unwrap(),
        &schema_dump(&server, &b.dbname).await.unwrap(),
        "byte order marks, runner against psql",
    );
}

/// Before 9224a48 the transaction analysis read the mark as part of the first word, so
/// `\u{feff}BEGIN;` was not a BEGIN, and the file was refused ("`COMMIT` ends a transaction
/// the file did not start") before anything ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flyway_own_transaction_files_with_a_byte_order_mark_run_as_psql_runs_them() {
    flyway_with_byte_order_marks_on(|m| m.body == Body::OwnTransaction, 31).await;
}

/// Before 9224a48 `\u{feff}CREATE INDEX CONCURRENTLY` was not seen as a statement that cannot
/// run in a transaction, so the runner wrapped the file in one, and PostgreSQL refused it
/// ("CREATE INDEX CONCURRENTLY cannot run inside a transaction block").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flyway_concurrently_files_with_a_byte_order_mark_run_as_psql_runs_them() {
    flyway_with_byte_order_marks_on(|m| m.body == Body::Concurrently, 32).await;
}
