//! Helpers shared by the real-server tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_postgres::testing::PgServer;
use deploy_postgres::{PgConfig, PgMigrationRunner, PgMigrationRunnerBuilder};

/// Write `files` (relative path, content) under a new temporary folder.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        write(dir.path(), name, content);
    }
    dir
}

pub fn write(dir: &Path, name: &str, content: &str) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, content).unwrap();
}

pub fn builder(server: &PgServer, config: &PgConfig, dir: &Path) -> PgMigrationRunnerBuilder {
    PgMigrationRunner::builder(config.clone(), dir)
        .backup_dir(server.dir().join("backups"))
        .lock_wait(Duration::from_secs(30))
        .lock_poll(Duration::from_millis(50))
}

pub fn runner(server: &PgServer, config: &PgConfig, dir: &Path) -> PgMigrationRunner {
    builder(server, config, dir).build().unwrap()
}

pub async fn setup() -> (PgServer, PgConfig) {
    let server = PgServer::start().await.expect("start the test server");
    let config = server.create_database().await.expect("create a database");
    (server, config)
}

/// History versions in order.
pub async fn history(server: &PgServer, db: &str) -> Vec<String> {
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

pub fn path_of(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Poll `sql` (a count) in `db` until it answers 1, for at most 30 s.
pub async fn wait_for(server: &PgServer, db: &str, sql: &str) {
    for _ in 0..600 {
        if server.query(db, sql).await.unwrap() == "1" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not reached within 30 s: {sql}");
}
