//! Running `psql`, `pg_dump` and `pg_restore` through a [`Host`], and the dedicated session that
//! holds the advisory lock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deploy_core::{Command, DynHost, Error, ErrorKind, Output, Result};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::connection::PgConfig;

/// `application_name` of the sessions that apply migrations: a runner that holds the lock
/// terminates such sessions left by a runner that died (their transaction then rolls back).
pub(crate) const APPLY_APP: &str = "deploy-postgres:apply";
const QUERY_APP: &str = "deploy-postgres";
const LOCK_APP: &str = "deploy-postgres:lock";

/// Quote an identifier (`"a""b"`).
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string literal (`'it''s'`); `standard_conforming_strings` is on since 9.1.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The client tools of one server, run on one host.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) host: DynHost,
    pub(crate) config: PgConfig,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) query_timeout: Duration,
}

impl Tools {
    fn program(&self, tool: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// `tool` with the connection environment for `db` (the configured database when `None`).
    pub(crate) fn command(&self, tool: &str, db: Option<&str>, app: &str) -> Command {
        let mut c = Command::new(self.program(tool));
        for (k, v) in self.config.env(db) {
            c = c.env(k, v);
        }
        c.env("PGAPPNAME", app)
    }

    /// `psql` in script mode: no psqlrc, stop at the first error, SQLSTATE in messages.
    pub(crate) fn psql(&self, db: Option<&str>, app: &str) -> Command {
        self.command("psql", db, app).args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
    }

    fn redact(&self, s: &str) -> String {
        match self.config.password() {
            Some(p) if !p.is_empty() => s.replace(p, "<redacted>"),
            _ => s.to_owned(),
        }
    }

    /// Run `cmd`; a non-zero exit is an error naming `operation` and `object` with the end of
    /// standard error. psql's exit code 2 (connection lost or refused) is `Unavailable`; a lock
    /// timeout (SQLSTATE 55P03) is a retryable `Conflict`.
    pub(crate) async fn run(&self, cmd: &Command, operation: &str, object: &str) -> Result<Output> {
        let out = self
            .host
            .run(cmd)
            .await
            .map_err(|e| e.context(operation.to_owned(), object.to_owned()))?;
        if out.success() {
            return Ok(out);
        }
        let stderr = self.redact(out.stderr_text().trim());
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(6)..].join("\n");
        let status = match (out.code, out.signal) {
            (Some(c), _) => format!("{} exited with code {c}", cmd.program.to_string_lossy()),
            (None, Some(s)) => format!("{} killed by signal {s}", cmd.program.to_string_lossy()),
            _ => "unknown exit status".to_owned(),
        };
        let cause = if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        };
        let kind = if stderr.contains("55P03") || stderr.contains("lock timeout") {
            ErrorKind::Conflict
        } else if stderr.contains("password authentication failed")
            || stderr.contains("no password supplied")
            || stderr.contains("permission denied")
        {
            ErrorKind::PermissionDenied
        } else if out.code == Some(2)
            || stderr.contains("could not connect")
            || stderr.contains("Connection refused")
            || stderr.contains("connection to server")
        {
            ErrorKind::Unavailable
        } else {
            ErrorKind::CommandFailed
        };
        Err(Error::new(
            kind,
            operation.to_owned(),
            object.to_owned(),
            cause,
        ))
    }

    /// Run one SQL text (several statements allowed, no transaction added).
    pub(crate) async fn exec(
        &self,
        db: Option<&str>,
        sql: &str,
        operation: &str,
    ) -> Result<Output> {
        let cmd = self
            .psql(db, QUERY_APP)
            .arg("-f")
            .arg("-")
            .stdin(sql.as_bytes().to_vec())
            .timeout(self.query_timeout);
        let object = format!("database {}", db.unwrap_or(&self.config.dbname));
        self.run(&cmd, operation, &object).await
    }

    /// Run `cmd` (a psql printing one JSON value) and decode what it printed.
    async fn run_json<T: DeserializeOwned>(
        &self,
        db: Option<&str>,
        cmd: &Command,
        operation: &str,
    ) -> Result<T> {
        let object = format!("database {}", db.unwrap_or(&self.config.dbname));
        let out = self.run(cmd, operation, &object).await?;
        let text = out.stdout_text();
        serde_json::from_str(text.trim()).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                operation.to_owned(),
                object,
                format!(
                    "psql printed {:?}, not the expected JSON",
                    shorten(text.trim())
                ),
            )
            .with_source(e)
        })
    }

    /// Run a query whose single row and column is JSON, and decode it.
    pub(crate) async fn query_json<T: DeserializeOwned>(
        &self,
        db: Option<&str>,
        sql: &str,
        operation: &str,
    ) -> Result<T> {
        let cmd = self
            .psql(db, QUERY_APP)
            .args(["-t", "-A", "-c", sql])
            .timeout(self.query_timeout);
        self.run_json(db, &cmd, operation).await
    }

    /// Run a psql script (meta-commands allowed) whose last output is one JSON value.
    pub(crate) async fn query_json_script<T: DeserializeOwned>(
        &self,
        db: Option<&str>,
        script: &str,
        operation: &str,
    ) -> Result<T> {
        let cmd = self
            .psql(db, QUERY_APP)
            .args(["-t", "-A", "-f", "-"])
            .stdin(script.as_bytes().to_vec())
            .timeout(self.query_timeout);
        self.run_json(db, &cmd, operation).await
    }

    /// The psql program for the lock session, which runs on this machine.
    fn local_psql(&self) -> PathBuf {
        self.program("psql")
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A dedicated, idle session holding a session-level advisory lock until released or dropped.
///
/// It is a `psql` child of this process fed through its standard input: the lock lives as long
/// as that session, so a runner that dies (even by `kill -9`) closes the pipe, psql exits and
/// the server frees the lock. The session stays idle (no open transaction), so it never blocks
/// `CREATE INDEX CONCURRENTLY`, and waiting is a poll of `pg_try_advisory_lock`, never a
/// blocking `pg_advisory_lock` that could deadlock with it.
#[derive(Debug)]
pub(crate) struct LockSession {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    key: i64,
}

impl LockSession {
    /// Poll `pg_try_advisory_lock(key)` every `poll` until it is granted or `wait` has passed.
    pub(crate) async fn acquire(
        tools: &Tools,
        key: i64,
        wait: Duration,
        poll: Duration,
    ) -> Result<Self> {
        let db = tools.config.dbname.clone();
        let object = format!("database {db} (advisory lock {key})");
        // The session lives in the maintenance database (the key names the database and the
        // history table): a restore-and-swap terminates every session of the migrated database,
        // and must be able to run while the lock is held.
        let lock_db = tools.config.maintenance_db.clone();
        let mut cmd = tokio::process::Command::new(tools.local_psql());
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .envs(tools.config.env(Some(&lock_db)))
            .env("PGAPPNAME", LOCK_APP)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::io(
                "start the lock session (psql)",
                format!("{} for {object}", tools.local_psql().display()),
                e,
            )
        })?;
        let mut stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let started = Instant::now();
        loop {
            let asked = match stdin.as_mut() {
                Some(s) => s
                    .write_all(format!("SELECT pg_try_advisory_lock({key});\n").as_bytes())
                    .await
                    .and(s.flush().await)
                    .is_ok(),
                None => false,
            };
            let line = if asked {
                tokio::time::timeout(Duration::from_secs(15), lines.next_line())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten()
            } else {
                None
            };
            match line.as_deref().map(str::trim) {
                Some("t") => break,
                Some("f") => {
                    if started.elapsed() >= wait {
                        let _ = child.start_kill();
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "take the migration lock",
                            object,
                            format!(
                                "another runner has held it for the {:?} this runner waited; it frees the lock when its run ends",
                                wait
                            ),
                        ));
                    }
                    tokio::time::sleep(poll.min(wait.saturating_sub(started.elapsed()))).await;
                }
                other => {
                    let _ = child.start_kill();
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            e.read_to_string(&mut err),
                        )
                        .await;
                    }
                    let err = match tools.config.password() {
                        Some(p) if !p.is_empty() => err.replace(p, "<redacted>"),
                        _ => err,
                    };
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "take the migration lock",
                        object,
                        format!(
                            "the lock session answered {:?}: {}",
                            other.unwrap_or("nothing"),
                            err.trim()
                        ),
                    ));
                }
            }
        }
        // Keep reading nothing more; the session now only waits for the release.
        drop(lines);
        Ok(Self { child, stdin, key })
    }

    /// Unlock and close the session.
    pub(crate) async fn release(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s
                .write_all(format!("SELECT pg_advisory_unlock({});\n\\q\n", self.key).as_bytes())
                .await;
            let _ = s.flush().await;
            drop(s);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A 64-bit advisory lock key from the database and history table names.
pub(crate) fn lock_key(db: &str, table: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("deploy-postgres\0{db}\0{table}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// `YYYYmmddTHHMMSSmmmZ` in UTC, for backup and database names.
pub(crate) fn utc_stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// The file name of `path`, for messages.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_to_the_environment_never_to_argv() {
        let config = PgConfig::from_url("postgres://u:pw-XYZ@h:5432/db").unwrap();
        let tools = Tools {
            host: std::sync::Arc::new(deploy_core::LocalHost::new()),
            config,
            bin_dir: None,
            query_timeout: Duration::from_secs(1),
        };
        for c in [
            tools.psql(None, "a"),
            tools.command("pg_dump", Some("other"), "b"),
            tools.command("pg_restore", None, "c"),
        ] {
            assert!(!c.display().contains("pw-XYZ"), "{}", c.display());
            assert!(!format!("{c:?}").contains("pw-XYZ"), "{c:?}");
            assert!(
                c.env
                    .iter()
                    .any(|(k, v)| k == "PGPASSWORD" && v == "pw-XYZ")
            );
        }
        assert_eq!(
            tools.redact("FATAL: pw-XYZ is wrong"),
            "FATAL: <redacted> is wrong"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn stamp_has_a_fixed_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 19, "{s}");
        assert!(s.starts_with("20"));
        assert!(s.ends_with('Z'));
    }

    #[test]
    fn lock_keys_differ_per_database_and_table() {
        assert_ne!(
            lock_key("a", "schema_version"),
            lock_key("b", "schema_version")
        );
        assert_ne!(lock_key("a", "schema_version"), lock_key("a", "other"));
        assert_eq!(lock_key("a", "t"), lock_key("a", "t"));
    }
}
