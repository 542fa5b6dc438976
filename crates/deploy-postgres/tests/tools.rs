//! The client tools against a real server: which binaries the runner chooses (and refuses), who
//! holds the migration lock when a runner gives up waiting, and server warnings kept apart from
//! the error.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{ErrorKind, MigrationRunner, SchemaVersion};
use deploy_postgres::testing::PgServer;

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

/// `/usr/lib/postgresql/<major>/bin` for the server's major version (Debian's layout).
async fn debian_bin_dir_of(server: &PgServer) -> std::path::PathBuf {
    let num: u32 = server
        .query("postgres", "SELECT current_setting('server_version_num')")
        .await
        .unwrap()
        .parse()
        .unwrap();
    format!("/usr/lib/postgresql/{}/bin", num / 10_000).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bin_dir_the_servers_own_major_runs_not_the_debian_wrapper() {
    let server = PgServer::start_with_settings(None, &[("log_statement", "all")])
        .await
        .unwrap();
    let config = server.create_database().await.unwrap();
    let expected = debian_bin_dir_of(&server).await;
    let dir = folder(&[
        ("V1__t.sql", "CREATE TABLE t (id int);\n"),
        ("V2__fails.sql", "SELECT 1/0;\n"),
    ]);
    let r = runner(&server, &config, dir.path());
    let e = r.migrate().await.unwrap_err();
    // The error names the program that ran: the server's major's own psql.
    assert!(
        e.message()
            .starts_with(&format!("{}/psql exited with code 3", expected.display())),
        "{e}"
    );
    let tools = r.tools().await.unwrap();
    assert_eq!(tools.dir(), expected);
    assert_eq!(tools.psql(), expected.join("psql"));
    assert_eq!(tools.pg_dump(), expected.join("pg_dump"));
    assert_eq!(tools.pg_restore(), expected.join("pg_restore"));
    let major = expected
        .parent()
        .and_then(|p| p.file_name())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(tools.major().to_string(), major);
    assert_eq!(
        tools.to_string(),
        format!(
            "psql, pg_dump, pg_restore {major} from {}",
            expected.display()
        )
    );
    // A backup runs the same directory's pg_dump and pg_restore.
    r.backup().await.unwrap();
    // The runner asked the server its version once, for all of that.
    let log = server.log();
    assert_eq!(
        log.matches("statement: SHOW server_version_num").count(),
        1,
        "{log}"
    );
}

/// A directory holding the server's own psql and pg_restore, and a pg_dump that says it is 9.6.
fn bin_dir_with_an_old_pg_dump(server: &PgServer) -> tempfile::TempDir {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tempfile::tempdir().unwrap();
    for tool in ["psql", "pg_restore"] {
        symlink(server.bin_dir().join(tool), dir.path().join(tool)).unwrap();
    }
    let pg_dump = dir.path().join("pg_dump");
    let ran = dir.path().join("pg_dump-ran");
    std::fs::write(
        &pg_dump,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 9.6.0'; exit 0; fi\ntouch '{}'\nexit 1\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pg_dump, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_bin_dir_with_an_older_pg_dump_is_refused_before_the_backup_starts() {
    let (server, config) = setup().await;
    let bin = bin_dir_with_an_old_pg_dump(&server);
    let dir = folder(&[("V1__t.sql", "CREATE TABLE t (id int);\n")]);
    let backups = server.dir().join("old-pg-dump-backups");
    let r = builder(&server, &config, dir.path())
        .bin_dir(bin.path())
        .backup_dir(&backups)
        .build()
        .unwrap();
    let e = r.backup().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(!e.is_retryable());
    let server_major = debian_bin_dir_of(&server)
        .await
        .parent()
        .and_then(|p| p.file_name())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let message = e.message();
    assert!(
        message.starts_with(&format!(
            "{} is version 9.6, older than the server ({server_major})",
            bin.path().join("pg_dump").display()
        )),
        "{e}"
    );
    assert!(
        message.contains(&format!("apt-get install postgresql-client-{server_major}")),
        "{e}"
    );
    // Nothing ran and nothing was written: not pg_dump, not the backup directory.
    assert!(!bin.path().join("pg_dump-ran").exists());
    assert!(!backups.exists());
    // The bin_dir is taken as given for everything else.
    let tools = r.tools().await.unwrap();
    assert_eq!(tools.dir(), bin.path());
    assert_eq!(tools.major().to_string(), server_major);
    assert_eq!(r.migrate().await.unwrap(), Some(v("1")));
}
