//! The client tools against a real server: which binaries the runner chooses, who holds the
//! migration lock when a runner gives up waiting, and server warnings kept apart from the error.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{ErrorKind, MigrationRunner, SchemaVersion};
use deploy_postgres::testing::PgServer;

/// Poll `sql` (a count) in `db` until it answers 1, for at most 30 s.
async fn wait_for(server: &PgServer, db: &str, sql: &str) {
    for _ in 0..600 {
        if server.query(db, sql).await.unwrap() == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not reached within 30 s: {sql}");
}

fn v(s: &str) -> SchemaVersion {
    SchemaVersion(s.to_owned())
}

/// Whether `s` holds a `YYYY-MM-DD HH:MM:SS` timestamp.
fn has_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let shape = b"dddd-dd-dd dd:dd:dd";
    b.windows(shape.len()).any(|w| {
        w.iter().zip(shape).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            s => c == s,
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_wait_error_names_the_session_that_holds_the_lock() {
    let (server, config) = setup().await;
    let dir = folder(&[(
        "V1__slow.sql",
        "SELECT pg_sleep(3);\nCREATE TABLE t (id int);\n",
    )]);
    let a = runner(&server, &config, dir.path());
    let b = builder(&server, &config, dir.path())
        .lock_wait(Duration::from_millis(600))
        .lock_poll(Duration::from_millis(100))
        .build()
        .unwrap();
    let first = tokio::spawn(async move { a.migrate().await });
    wait_for(
        &server,
        "postgres",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
    .await;
    let holder = server
        .query(
            "postgres",
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted",
        )
        .await
        .unwrap();
    let e = b.migrate().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(text.contains(&format!("pid {holder}")), "{text}");
    assert!(text.contains("deploy-postgres:lock"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(has_timestamp(&text), "{text}");
    assert_eq!(first.await.unwrap().unwrap(), Some(v("1")));
    assert_eq!(history(&server, &config.dbname).await, ["1:true"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_warning_is_kept_apart_from_the_error_it_preceded() {
    let (server, config) = setup().await;
    // Outside a transaction (the marker), so that the second COMMIT warns.
    let dir = folder(&[(
        "V1__warn_then_fail.sql",
        "-- deploy:no-transaction\nBEGIN;\nCOMMIT;\nCOMMIT;\nSELECT 1/0;\n",
    )]);
    let e = runner(&server, &config, dir.path())
        .migrate()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandFailed);
    let message = e.message();
    assert!(message.contains("22012: division by zero"), "{e}");
    assert!(!message.contains("WARNING"), "{e}");
    assert!(!message.contains("no transaction in progress"), "{e}");
    assert!(!message.contains("LOCATION"), "{e}");
    let context = e.context_values();
    let warnings = context
        .iter()
        .find(|(k, _)| *k == "server warnings")
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no server warnings frame: {e:?}"));
    assert!(
        warnings.contains("25P01: there is no transaction in progress"),
        "{warnings}"
    );
    assert!(!warnings.contains("division by zero"), "{warnings}");
    // The line of the file psql was reading when the error came.
    assert!(
        context.iter().any(|(k, v)| *k == "input line" && v == "5"),
        "{e:?}"
    );
}
