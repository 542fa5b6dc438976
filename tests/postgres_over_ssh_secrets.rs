//! The secrets harness for the database password: while a migration runs (status, backup,
//! migrate, a failing migration, restore) with a canary password, over SSH and locally, every
//! process's argv on the host is polled (`/proc/*/cmdline`; the sshd fixture runs on this
//! machine, so that is the remote host's process list too) and the canary is in none; nor is it
//! in any output, error, `Debug` or `Display` string, or the server's log.

use std::sync::Arc;
use std::time::Instant;

use deploy::postgres::testing::PASSWORD_ROLE;
use deploy::postgres::testing::PgServer;
use deploy::postgres::{PgConfig, PgMigrationRunner};
use deploy::ssh::testing::{ArgvWatch, SshdFixture};
use deploy_core::{ErrorKind, LocalHost, MigrationRunner};

/// Migrations that take a moment each, so the tools are seen running.
fn migrations() -> tempfile::TempDir {
    folder(&[
        (
            "V1__items.sql",
            "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;\n\
             SELECT pg_sleep(0.3);\n",
        ),
        (
            "V2__more.sql",
            "ALTER TABLE items ADD COLUMN note text;\nSELECT pg_sleep(0.3);\n",
        ),
        ("V3__broken.sql", "INSERT INTO no_such_table VALUES (1);\n"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_in_no_argv_output_or_error_over_ssh_and_locally() {
    let (server, config) = setup().await;
    let canary = format!("pw-canary-{}-Hq7Wz", std::process::id());
    server.create_password_role(&canary).await.unwrap();
    let sshd = SshdFixture::start().unwrap();
    let ssh = Arc::new(sshd.host().unwrap());
    let dir = migrations();
    let pw_config = |db: &str| {
        PgConfig::new(db)
            .with_host("127.0.0.1", server.port())
            .with_user(PASSWORD_ROLE)
            .with_password(canary.as_str())
    };
    let second = server.create_database().await.unwrap();

    let watch = ArgvWatch::start(
        vec![canary.clone().into_bytes()],
        vec![
            b"deploy-ssh-wrapper".to_vec(),
            b"psql".to_vec(),
            b"pg_dump".to_vec(),
            b"pg_restore".to_vec(),
        ],
    );
    let started = Instant::now();
    let mut shown = String::new();
    for (name, db, host) in [
        (
            "ssh",
            config.dbname.clone(),
            Arc::clone(&ssh) as deploy_core::DynHost,
        ),
        (
            "local",
            second.dbname.clone(),
            Arc::new(LocalHost::new()) as deploy_core::DynHost,
        ),
    ] {
        let runner = PgMigrationRunner::builder(pw_config(&db), dir.path())
            .host(host)
            .backup_dir(server.dir().join(format!("backups-{name}")))
            .lock_poll(std::time::Duration::from_millis(50))
            .build()
            .unwrap();
        let status = runner.status().await.unwrap();
        assert_eq!(status.pending.len(), 3, "{name}");
        let backup = runner.backup().await.unwrap();
        // V1 and V2 apply; V3 fails, and its error is shown.
        let e = runner.migrate().await.unwrap_err();
        assert_eq!(history(&server, &db).await, ["1:true", "2:true"], "{name}");
        // Back to the empty schema by restoring the backup (pg_restore, swap).
        std::fs::remove_file(dir.path().join("V3__broken.sql")).ok();
        runner.revert(None, Some(&backup)).await.unwrap();
        assert_eq!(runner.status().await.unwrap().current, None, "{name}");
        let reached = runner.migrate().await.unwrap();
        runner.verify(reached.as_ref()).await.unwrap();
        write(
            dir.path(),
            "V3__broken.sql",
            "INSERT INTO no_such_table VALUES (1);\n",
        );
        shown.push_str(&format!(
            "{e} {e:?} {runner:?} {:?} {} {status:?} {backup}",
            runner.config(),
            runner.config()
        ));

        // A wrong password: refused, and neither password is in the error.
        let wrong = PgMigrationRunner::builder(
            pw_config(&db).with_password(format!("wrong-{canary}")),
            dir.path(),
        )
        .host(Arc::clone(&ssh) as deploy_core::DynHost)
        .build()
        .unwrap();
        let e = wrong.status().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{name}: {e}");
        shown.push_str(&format!("{e} {e:?}"));
    }
    let report = watch.stop();
    eprintln!(
        "{:?}: {} passes over /proc, {} command lines read; seen: wrapper shells {}, psql {}, \
         pg_dump {}, pg_restore {}",
        started.elapsed(),
        report.passes,
        report.command_lines,
        report.markers[0],
        report.markers[1],
        report.markers[2],
        report.markers[3]
    );
    assert!(
        report.hits.is_empty(),
        "the password is in a process's argv: {:?}",
        report.hits
    );
    // The watch saw the remote shells and the tools while they ran.
    assert!(
        report.markers.iter().all(|&n| n > 0),
        "a kind of process was never seen: {report:?}"
    );
    shown.push_str(&server.log());
    assert!(!shown.contains(&canary), "the password leaked: {shown}");
}

/// Write `files` (relative path, content) under a new temporary folder.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        write(dir.path(), name, content);
    }
    dir
}

fn write(dir: &std::path::Path, name: &str, content: &str) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, content).unwrap();
}

async fn setup() -> (PgServer, deploy::postgres::PgConfig) {
    let server = PgServer::start().await.expect("start the test server");
    let config = server.create_database().await.expect("create a database");
    (server, config)
}

/// History versions in order.
async fn history(server: &PgServer, db: &str) -> Vec<String> {
    let out = server
        .query(
            db,
            "SELECT coalesce(string_agg(version || ':' || success, ',' ORDER BY string_to_array(version, '.')::numeric[]), '') FROM schema_version",
        )
        .await
        .unwrap();
    out.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
