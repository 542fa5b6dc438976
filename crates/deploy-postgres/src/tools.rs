//! Running `psql`, `pg_dump` and `pg_restore` through a [`Host`], and the dedicated session that
//! holds the advisory lock.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deploy_core::{Command, DynHost, Error, ErrorKind, Output, Result};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::OnceCell;

use crate::client_tools::{self, ClientTools, PgMajor, TOOL_NAMES};
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
    /// The directory of the tools, as configured; `None`: chosen ([`client_tools`]).
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) query_timeout: Duration,
    /// What this runner (and its clones) learned once: its tools and the server's version.
    pub(crate) learned: Arc<Learned>,
}

/// The tools a runner chose and the server's major version, each learned at most once.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    tools: OnceCell<ClientTools>,
    server: OnceCell<PgMajor>,
}

impl Tools {
    /// `tool` in the configured `bin_dir`, else in the chosen directory; before the choice, the
    /// bare name, which [`run`](Self::run) replaces by the chosen path.
    fn program(&self, tool: &str) -> PathBuf {
        match (&self.bin_dir, self.learned.tools.get()) {
            (Some(d), _) => d.join(tool),
            (None, Some(t)) => t.dir().join(tool),
            (None, None) => PathBuf::from(tool),
        }
    }

    /// The tools this runner runs, chosen at the first call (see [`client_tools`]): with a
    /// `bin_dir`, those in it (their version read from its `psql --version`); without, the
    /// directory on the host whose major version fits the server, asked once with `SHOW
    /// server_version_num` (connecting with `env`, the connection settings of the command
    /// about to run). The choice is logged at `info`.
    pub(crate) async fn client_tools(&self, env: &[(OsString, OsString)]) -> Result<&ClientTools> {
        self.learned
            .tools
            .get_or_try_init(|| async {
                let host = &*self.host;
                let chosen = match &self.bin_dir {
                    Some(dir) => {
                        let major = client_tools::version_of(host, &dir.join("psql")).await?;
                        ClientTools::in_dir(dir.clone(), major)
                    }
                    None => {
                        let object = format!("database {}", self.config.dbname);
                        let found = client_tools::discover(host).await;
                        let Some(asker) = client_tools::newest(&found) else {
                            return Err(client_tools::none_fits(
                                &found,
                                None,
                                host.name(),
                                &object,
                            ));
                        };
                        let server = self.server_major(&asker.dir.join("psql"), env).await?;
                        let Some(c) = client_tools::choose(&found, server) else {
                            return Err(client_tools::none_fits(
                                &found,
                                Some(server),
                                host.name(),
                                &object,
                            ));
                        };
                        let major = c.major.expect("choose takes known versions only");
                        ClientTools::in_dir(c.dir.clone(), major)
                    }
                };
                tracing::info!(
                    host = host.name(),
                    database = %self.config.dbname,
                    bin_dir = self.bin_dir.is_some(),
                    "client tools: {chosen}"
                );
                Ok(chosen)
            })
            .await
    }

    /// The server's major version: known from an earlier query, or asked with `psql`.
    pub(crate) async fn server_major(
        &self,
        psql: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<PgMajor> {
        self.learned
            .server
            .get_or_try_init(|| async {
                let mut cmd = Command::new(psql);
                for (k, v) in env {
                    cmd = cmd.env(k, v);
                }
                let cmd = cmd
                    .env("PGAPPNAME", QUERY_APP)
                    .args(["-X", "-q", "-t", "-A", "-c", "SHOW server_version_num"])
                    .timeout(self.query_timeout);
                let operation = "learn the server version of";
                let object = format!("database {}", self.config.dbname);
                let out = self.run_as_given(&cmd, operation, &object).await?;
                let text = out.stdout_text();
                let num: u32 = text.trim().parse().map_err(|_| {
                    Error::new(
                        ErrorKind::Protocol,
                        operation,
                        object,
                        format!(
                            "psql printed {:?}, not a server_version_num",
                            shorten(text.trim())
                        ),
                    )
                })?;
                Ok(PgMajor::from_version_num(num))
            })
            .await
            .copied()
    }

    /// Keep the server's version a query read (`server_version_num`), sparing a question later.
    pub(crate) fn note_server_version(&self, num: u32) {
        let _ = self.learned.server.set(PgMajor::from_version_num(num));
    }

    /// Refuse, before a backup, a configured `bin_dir` whose `pg_dump` is older than the
    /// server (pg_dump would refuse the server, after the backup had begun). Chosen tools
    /// always fit.
    pub(crate) async fn check_pg_dump(&self, operation: &str, object: &str) -> Result<()> {
        let Some(dir) = &self.bin_dir else {
            return Ok(());
        };
        let in_context = |e: Error| e.context(operation.to_owned(), object.to_owned());
        let server = self
            .server_major(&dir.join("psql"), &self.config.env(None))
            .await
            .map_err(in_context)?;
        let pg_dump = dir.join("pg_dump");
        let major = client_tools::version_of(&*self.host, &pg_dump)
            .await
            .map_err(in_context)?;
        if major >= server {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            operation.to_owned(),
            object.to_owned(),
            format!(
                "{} is version {major}, older than the server ({server}), and pg_dump cannot \
                 dump a newer server; point bin_dir at the tools of {server} or newer \
                 (`apt-get install postgresql-client-{server}` installs them in \
                 /usr/lib/postgresql/{server}/bin), or leave bin_dir unset to have them chosen",
                pg_dump.display()
            ),
        ))
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

    /// Run `cmd`; a non-zero exit is an error naming `operation` and `object` with the error
    /// the tool printed (see [`Diagnostics`]): the server's `ERROR`/`FATAL` lines with their
    /// `DETAIL`, `HINT`, `CONTEXT` and `LINE` lines in the message, its `WARNING`/`NOTICE`
    /// lines in a separate [`SERVER_WARNINGS`] frame, and the line of psql's input the error
    /// came at in an [`INPUT_LINE`] frame. psql's exit code 2 (connection lost or refused) is
    /// `Unavailable`; a lock timeout (SQLSTATE 55P03) is a retryable `Conflict`.
    ///
    /// The first run chooses the tools ([`client_tools`](Self::client_tools)); the choice
    /// failing is the error of `operation`. A command built before the choice, its program a
    /// tool's bare name (from [`command`](Self::command)), runs the chosen tool.
    pub(crate) async fn run(&self, cmd: &Command, operation: &str, object: &str) -> Result<Output> {
        let chosen = self
            .client_tools(&cmd.env)
            .await
            .map_err(|e| e.context(operation.to_owned(), object.to_owned()))?;
        match TOOL_NAMES.iter().find(|t| cmd.program.as_os_str() == **t) {
            Some(tool) => {
                let mut cmd = cmd.clone();
                cmd.program = chosen.path_of(tool).expect("a tool").as_os_str().to_owned();
                self.run_as_given(&cmd, operation, object).await
            }
            None => self.run_as_given(cmd, operation, object).await,
        }
    }

    /// [`run`](Self::run) with the program as it is.
    async fn run_as_given(&self, cmd: &Command, operation: &str, object: &str) -> Result<Output> {
        let out = self
            .host
            .run(cmd)
            .await
            .map_err(|e| e.context(operation.to_owned(), object.to_owned()))?;
        if out.success() {
            return Ok(out);
        }
        let stderr = self.redact(out.stderr_text().trim());
        let status = match (out.code, out.signal) {
            (Some(c), _) => format!("{} exited with code {c}", cmd.program.to_string_lossy()),
            (None, Some(s)) => format!("{} killed by signal {s}", cmd.program.to_string_lossy()),
            _ => "unknown exit status".to_owned(),
        };
        Err(Diagnostics::parse(&stderr).into_error(out.code, operation, object, status))
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

    /// The psql program for the lock session, which runs on this machine: the chosen one when
    /// the tools run here too (chosen now if not yet); with another host, the configured
    /// `bin_dir`'s or the one on `PATH` (any version can hold an advisory lock).
    async fn local_psql(&self, operation: &str, object: &str) -> Result<PathBuf> {
        // `LocalHost`'s name.
        if self.host.name() == "local" {
            let chosen = self
                .client_tools(&self.config.env(None))
                .await
                .map_err(|e| e.context(operation.to_owned(), object.to_owned()))?;
            return Ok(chosen.psql().to_path_buf());
        }
        Ok(match &self.bin_dir {
            Some(d) => d.join("psql"),
            None => PathBuf::from("psql"),
        })
    }
}

/// `s` cut to 200 characters, for messages.
pub(crate) fn shorten(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The context key of the server's warnings and notices printed before a failure (kept out of
/// the error's message, which says what failed).
pub(crate) const SERVER_WARNINGS: &str = "server warnings";

/// The context key of the line of psql's input (`psql:<stdin>:N:`, the `-f` script) at which
/// the error came: with a migration on standard input, the line of its file.
pub(crate) const INPUT_LINE: &str = "input line";

/// The line of psql's input at which `e` came, when psql said ([`INPUT_LINE`]).
pub(crate) fn input_line(e: &Error) -> Option<u32> {
    e.context_values()
        .iter()
        .find(|(k, _)| *k == INPUT_LINE)
        .and_then(|(_, v)| v.parse().ok())
}

/// At most this many lines of the error, and of the warnings, are kept.
const MAX_ERROR_LINES: usize = 12;
const MAX_WARNING_LINES: usize = 10;

/// Fields of a verbose server message that repeat what its other lines say (`LOCATION` is a
/// source file of the server; the names are in the message already).
const DROPPED_FIELDS: [&str; 6] = [
    "LOCATION:  ",
    "SCHEMA NAME:  ",
    "TABLE NAME:  ",
    "COLUMN NAME:  ",
    "DATATYPE NAME:  ",
    "CONSTRAINT NAME:  ",
];

/// What a client tool printed on standard error, sorted: the failure, and the server's
/// warnings and notices that came before it.
///
/// psql (with `VERBOSITY=verbose`) prints each server message as a severity line —
/// `psql:<stdin>:12: ERROR:  42P01: relation "x" does not exist` reading a script, `ERROR:  …`
/// for `-c` — followed by its fields (`LINE 1: …` and a caret, `DETAIL:`, `HINT:`, `CONTEXT:`
/// and its trace, `LOCATION:`); a message may itself span lines. The tools' own lines start
/// with their name (`psql: error: …`, `pg_dump: error: …`, `pg_restore: warning: …`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diagnostics {
    /// `ERROR`, `FATAL` and `PANIC` messages with their fields, and the tools' own lines, in
    /// order; `LOCATION` and name fields dropped, psql's `psql:<file>:N:` prefix removed.
    errors: Vec<String>,
    /// `WARNING`, `NOTICE`, `INFO`, `LOG`, `DEBUG` messages with their fields (`line N: ` for
    /// psql's prefix), and the tools' warnings.
    warnings: Vec<String>,
    /// The input line of the first error psql reported with its `psql:<file>:N:` prefix.
    line: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Error,
    Warning,
}

/// `psql:<file>:N: rest` → `(N, rest)`.
fn psql_prefix(line: &str) -> Option<(u32, &str)> {
    if !line.starts_with("psql:") {
        return None;
    }
    line.match_indices(": ").find_map(|(i, _)| {
        let (head, n) = line[..i].rsplit_once(':')?;
        if head.len() < "psql:".len() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((n.parse().ok()?, &line[i + 2..]))
    })
}

/// The block a server message line starts (`ERROR:  …`), if it is one.
fn severity(rest: &str) -> Option<Block> {
    const ERRORS: [&str; 3] = ["ERROR:  ", "FATAL:  ", "PANIC:  "];
    const WARNINGS: [&str; 5] = ["WARNING:  ", "NOTICE:  ", "INFO:  ", "LOG:  ", "DEBUG:  "];
    if ERRORS.iter().any(|p| rest.starts_with(p)) {
        Some(Block::Error)
    } else if WARNINGS.iter().any(|p| rest.starts_with(p)) {
        Some(Block::Warning)
    } else {
        None
    }
}

/// The block a tool's own line (`pg_dump: error: …`) starts, if it is one; `None` for its
/// `detail:`/`hint:` lines, which continue the block before.
fn tool_line(line: &str) -> Option<Option<Block>> {
    let rest = ["psql: ", "pg_dump: ", "pg_restore: "]
        .iter()
        .find_map(|p| line.strip_prefix(p))?;
    Some(
        if rest.starts_with("detail: ") || rest.starts_with("hint: ") {
            None
        } else if rest.starts_with("warning: ") {
            Some(Block::Warning)
        } else {
            Some(Block::Error)
        },
    )
}

impl Diagnostics {
    /// Sort `stderr` (already redacted) into errors and warnings.
    pub(crate) fn parse(stderr: &str) -> Self {
        let mut d = Self::default();
        let mut current = Block::Error;
        for raw in stderr.lines() {
            let line = raw.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            let (number, rest) = match psql_prefix(line) {
                Some((n, rest)) => (Some(n), rest),
                None => (None, line),
            };
            let text = if let Some(block) = severity(rest) {
                current = block;
                match (block, number) {
                    (Block::Warning, Some(n)) => format!("line {n}: {rest}"),
                    _ => rest.to_owned(),
                }
            } else if let Some(block) = tool_line(rest) {
                if let Some(block) = block {
                    current = block;
                }
                rest.to_owned()
            } else if number.is_some() {
                // psql's own words about the script (`server closed the connection`).
                current = Block::Error;
                format!("psql: {rest}")
            } else if DROPPED_FIELDS.iter().any(|f| rest.starts_with(f)) {
                continue;
            } else {
                rest.to_owned()
            };
            if current == Block::Error && d.line.is_none() {
                d.line = number;
            }
            match current {
                Block::Error => d.errors.push(text),
                Block::Warning => d.warnings.push(text),
            }
        }
        d
    }

    /// The error lines, at most [`MAX_ERROR_LINES`], for the message.
    fn error_text(&self) -> String {
        capped(&self.errors, MAX_ERROR_LINES)
    }

    /// The error for a tool that ended with `status` (`psql exited with code 3`).
    pub(crate) fn into_error(
        self,
        code: Option<i32>,
        operation: &str,
        object: &str,
        status: String,
    ) -> Error {
        let errors = self.error_text();
        let cause = if errors.is_empty() {
            status
        } else {
            format!("{status}: {errors}")
        };
        let mut e = Error::new(
            classify(code, &self.errors.join("\n")),
            operation.to_owned(),
            object.to_owned(),
            cause,
        );
        if let Some(n) = self.line {
            e = e.with_context(INPUT_LINE, n.to_string());
        }
        if !self.warnings.is_empty() {
            e = e.with_context(SERVER_WARNINGS, capped(&self.warnings, MAX_WARNING_LINES));
        }
        e
    }
}

/// The first `max` of `lines`, and how many more there were.
fn capped(lines: &[String], max: usize) -> String {
    let mut text = lines[..lines.len().min(max)].join("\n");
    if lines.len() > max {
        text.push_str(&format!("\n… {} more lines", lines.len() - max));
    }
    text
}

/// The kind of a tool's failure from its exit code and the error it printed (warnings left
/// out: a notice that mentions a permission is not a refusal).
fn classify(code: Option<i32>, errors: &str) -> ErrorKind {
    if errors.contains("55P03") || errors.contains("lock timeout") {
        ErrorKind::Conflict
    } else if errors.contains("password authentication failed")
        || errors.contains("no password supplied")
        || errors.contains("permission denied")
    {
        ErrorKind::PermissionDenied
    } else if code == Some(2)
        || errors.contains("could not connect")
        || errors.contains("Connection refused")
        || errors.contains("connection to server")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::CommandFailed
    }
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
        let psql = tools.local_psql("take the migration lock", &object).await?;
        let mut cmd = tokio::process::Command::new(&psql);
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
                format!("{} for {object}", psql.display()),
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
                        let holder = match stdin.as_mut() {
                            Some(s) => lock_holder(s, &mut lines, key).await,
                            None => "who holds it could not be asked".to_owned(),
                        };
                        let _ = child.start_kill();
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "take the migration lock",
                            object,
                            format!(
                                "another runner has held it for the {wait:?} this runner waited; it frees the lock when its run ends; {}",
                                tools.redact(&holder)
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

/// Who holds the advisory lock `key`, asked through the waiting session (the same database,
/// where advisory locks live): `held by pid 4242 (application_name 'deploy-postgres:lock',
/// user app, client 10.0.0.5:50312, connected at …, idle since …)`, in one line.
///
/// `pg_locks` holds a bigint key as `classid` (high 32 bits), `objid` (low 32 bits) and
/// `objsubid = 1`. It has no time for a granted lock (`waitstart` is for waiters), so the
/// holder's session says since when: `backend_start`, and `state_change` — for a runner's lock
/// session, which idles once it holds the lock, about when it took it.
async fn lock_holder(
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    key: i64,
) -> String {
    let hi = ((key as u64) >> 32) as u32;
    let lo = key as u64 as u32;
    let utc = |col: &str| {
        format!(
            "coalesce(to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', 'an unknown time')"
        )
    };
    let sql = format!(
        "SELECT 'holder:' || coalesce(translate(string_agg(format(\
           'pid %s (application_name %s, user %s, %s, connected at %s, %s since %s)', \
           a.pid, coalesce(quote_literal(a.application_name), 'unknown'), coalesce(a.usename::text, 'unknown'), \
           CASE WHEN a.client_addr IS NOT NULL THEN 'client ' || host(a.client_addr) || coalesce(':' || a.client_port, '') \
                WHEN a.client_port = -1 THEN 'on the local socket' ELSE 'client unknown' END, \
           {}, coalesce(a.state, 'in an unknown state'), {}), '; ' ORDER BY a.pid), E'\\n\\r', '  '), 'none') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {hi}::oid AND l.objid = {lo}::oid \
           AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());\n",
        utc("a.backend_start"),
        utc("a.state_change"),
    );
    let asked = stdin.write_all(sql.as_bytes()).await.is_ok() && stdin.flush().await.is_ok();
    let answer = if asked {
        tokio::time::timeout(Duration::from_secs(5), async {
            // Skip a late answer to the last poll, if any.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(holder) = line.trim().strip_prefix("holder:") {
                    return Some(holder.to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    } else {
        None
    };
    match answer.as_deref() {
        Some("none") => "its holder released it just now".to_owned(),
        Some(h) => format!("held by {h}"),
        None => "who holds it could not be read from pg_locks".to_owned(),
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
pub(crate) mod tests {
    use super::*;

    /// Tools on this machine for `config`.
    pub(crate) fn test_tools(config: PgConfig) -> Tools {
        Tools {
            host: std::sync::Arc::new(deploy_core::LocalHost::new()),
            config,
            bin_dir: None,
            query_timeout: Duration::from_secs(30),
            learned: Default::default(),
        }
    }

    #[test]
    fn the_password_goes_to_the_environment_never_to_argv() {
        let config = PgConfig::from_url("postgres://u:pw-XYZ@h:5432/db").unwrap();
        let tools = test_tools(config);
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

    /// psql 15's standard error for `BEGIN; COMMIT; COMMIT; SELECT 1/0;` on four lines of
    /// standard input (captured from the server; see `against_the_server` below).
    pub(super) const WARNING_THEN_ERROR: &str =
        "psql:<stdin>:3: WARNING:  25P01: there is no transaction in progress
LOCATION:  EndTransactionBlock, xact.c:3987
psql:<stdin>:4: ERROR:  22012: division by zero
LOCATION:  int4div, int.c:869
";

    pub(super) const SYNTAX_ERROR_AFTER_A_WARNING: &str =
        "psql:<stdin>:2: WARNING:  25P01: there is no transaction in progress
LOCATION:  UserAbortTransactionBlock, xact.c:4110
psql:<stdin>:5: ERROR:  42P01: relation \"x\" does not exist
LINE 2:   FROM x;
               ^
LOCATION:  parserOpenTable, parse_relation.c:1392
";

    pub(super) const NOTICES_THEN_ERROR_IN_PLPGSQL: &str = "psql:<stdin>:2: NOTICE:  00000: hello
world
LOCATION:  exec_stmt_raise, pl_exec.c:3891
psql:<stdin>:2: WARNING:  01000: careful
DETAIL:  some detail
HINT:  a hint
LOCATION:  exec_stmt_raise, pl_exec.c:3891
psql:<stdin>:3: ERROR:  22012: division by zero
CONTEXT:  SQL statement \"SELECT 1/0\"
PL/pgSQL function inline_code_block line 1 at PERFORM
LOCATION:  int4div, int.c:869
";

    pub(super) const UNIQUE_VIOLATION: &str =
        "psql:<stdin>:2: ERROR:  23505: duplicate key value violates unique constraint \"t_pkey\"
DETAIL:  Key (id)=(1) already exists.
SCHEMA NAME:  public
TABLE NAME:  t
CONSTRAINT NAME:  t_pkey
LOCATION:  _bt_check_unique, nbtinsert.c:664
";

    pub(super) const TERMINATED: &str =
        "psql:<stdin>:2: FATAL:  57P01: terminating connection due to administrator command
LOCATION:  ProcessInterrupts, postgres.c:3211
psql:<stdin>:2: server closed the connection unexpectedly
\tThis probably means the server terminated abnormally
\tbefore or while processing the request.
psql:<stdin>:2: error: connection to server was lost
";

    pub(super) const REFUSED: &str =
        "psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused
\tIs the server running on that host and accepting TCP/IP connections?
";

    pub(super) const LOCK_TIMEOUT_AFTER_A_NOTICE: &str =
        "psql:<stdin>:1: NOTICE:  42P07: relation \"busy\" already exists, skipping
LOCATION:  transformCreateStmt, parse_utilcmd.c:207
psql:<stdin>:3: ERROR:  55P03: canceling statement due to lock timeout
LOCATION:  ProcessInterrupts, postgres.c:3312
";

    pub(super) const PG_RESTORE: &str =
        "pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists
Command was: CREATE TABLE public.t (
    id integer NOT NULL
);


";

    pub(super) const COMMAND_ERROR: &str = "ERROR:  22012: division by zero
LOCATION:  int4div, int.c:869
";

    fn error_of(stderr: &str, code: i32) -> Error {
        Diagnostics::parse(stderr).into_error(
            Some(code),
            "apply migration 1 to",
            "database shop",
            format!("psql exited with code {code}"),
        )
    }

    fn context<'a>(e: &'a Error, key: &str) -> Option<&'a str> {
        e.context_values()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_warning_before_the_error_goes_to_its_own_frame() {
        let d = Diagnostics::parse(WARNING_THEN_ERROR);
        assert_eq!(d.errors, ["ERROR:  22012: division by zero"]);
        assert_eq!(
            d.warnings,
            ["line 3: WARNING:  25P01: there is no transaction in progress"]
        );
        assert_eq!(d.line, Some(4));
        let e = error_of(WARNING_THEN_ERROR, 3);
        assert_eq!(e.kind(), ErrorKind::CommandFailed);
        assert_eq!(
            e.message(),
            "psql exited with code 3: ERROR:  22012: division by zero"
        );
        assert_eq!(context(&e, INPUT_LINE), Some("4"));
        assert_eq!(input_line(&e), Some(4));
        assert_eq!(
            context(&e, SERVER_WARNINGS),
            Some("line 3: WARNING:  25P01: there is no transaction in progress")
        );
        assert_eq!(
            e.to_string(),
            "apply migration 1 to database shop: psql exited with code 3: ERROR:  22012: division by zero \
             [input line: 4, server warnings: line 3: WARNING:  25P01: there is no transaction in progress]"
        );
    }

    #[test]
    fn the_error_keeps_its_line_and_caret_and_drops_location() {
        let d = Diagnostics::parse(SYNTAX_ERROR_AFTER_A_WARNING);
        assert_eq!(
            d.errors,
            [
                "ERROR:  42P01: relation \"x\" does not exist",
                "LINE 2:   FROM x;",
                "               ^",
            ]
        );
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.line, Some(5));
    }

    #[test]
    fn notices_spanning_lines_and_warning_fields_stay_with_the_warnings() {
        let d = Diagnostics::parse(NOTICES_THEN_ERROR_IN_PLPGSQL);
        assert_eq!(
            d.warnings,
            [
                "line 2: NOTICE:  00000: hello",
                "world",
                "line 2: WARNING:  01000: careful",
                "DETAIL:  some detail",
                "HINT:  a hint",
            ]
        );
        assert_eq!(
            d.errors,
            [
                "ERROR:  22012: division by zero",
                "CONTEXT:  SQL statement \"SELECT 1/0\"",
                "PL/pgSQL function inline_code_block line 1 at PERFORM",
            ]
        );
        assert_eq!(d.line, Some(3));
    }

    #[test]
    fn detail_is_kept_and_the_name_fields_are_dropped() {
        let d = Diagnostics::parse(UNIQUE_VIOLATION);
        assert_eq!(
            d.errors,
            [
                "ERROR:  23505: duplicate key value violates unique constraint \"t_pkey\"",
                "DETAIL:  Key (id)=(1) already exists.",
            ]
        );
        assert!(d.warnings.is_empty());
        let e = error_of(UNIQUE_VIOLATION, 3);
        assert_eq!(context(&e, SERVER_WARNINGS), None);
    }

    #[test]
    fn a_lost_connection_is_unavailable_and_keeps_psqls_own_words() {
        let d = Diagnostics::parse(TERMINATED);
        assert_eq!(
            d.errors,
            [
                "FATAL:  57P01: terminating connection due to administrator command",
                "psql: server closed the connection unexpectedly",
                "\tThis probably means the server terminated abnormally",
                "\tbefore or while processing the request.",
                "psql: error: connection to server was lost",
            ]
        );
        assert_eq!(error_of(TERMINATED, 2).kind(), ErrorKind::Unavailable);
        let e = error_of(REFUSED, 2);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(input_line(&e), None);
        assert!(e.message().contains("Connection refused"), "{e}");
        assert!(e.message().contains("Is the server running"), "{e}");
    }

    #[test]
    fn the_kind_is_read_from_the_error_not_from_the_warnings() {
        let e = error_of(LOCK_TIMEOUT_AFTER_A_NOTICE, 3);
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.is_retryable());
        // A notice about a lock timeout, or a permission, is no reason to retry or to refuse.
        let notice_only = "psql:<stdin>:1: NOTICE:  00000: lock timeout and permission denied are words\n\
                           psql:<stdin>:2: ERROR:  22012: division by zero\n";
        let e = error_of(notice_only, 3);
        assert_eq!(e.kind(), ErrorKind::CommandFailed);
        assert!(!e.message().contains("NOTICE"), "{e}");
    }

    #[test]
    fn tool_errors_and_commands_without_a_script_are_errors() {
        let d = Diagnostics::parse(PG_RESTORE);
        assert_eq!(
            d.errors,
            [
                "pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists",
                "Command was: CREATE TABLE public.t (",
                "    id integer NOT NULL",
                ");",
            ]
        );
        assert_eq!(d.line, None);
        let d = Diagnostics::parse(COMMAND_ERROR);
        assert_eq!(d.errors, ["ERROR:  22012: division by zero"]);
        assert_eq!(d.line, None);
        // pg_dump's words from its source (no older pg_dump here to capture them from).
        let d = Diagnostics::parse(
            "pg_dump: error: aborting because of server version mismatch\n\
             pg_dump: detail: server version: 16.4; pg_dump version: 15.18\n\
             pg_dump: warning: something else\n",
        );
        assert_eq!(
            d.errors,
            [
                "pg_dump: error: aborting because of server version mismatch",
                "pg_dump: detail: server version: 16.4; pg_dump version: 15.18",
            ]
        );
        assert_eq!(d.warnings, ["pg_dump: warning: something else"]);
    }

    #[test]
    fn only_warnings_leave_the_message_at_the_exit_status() {
        let e = error_of(
            "psql:<stdin>:1: WARNING:  25P01: there is no transaction in progress\n",
            1,
        );
        assert_eq!(e.message(), "psql exited with code 1");
        assert!(context(&e, SERVER_WARNINGS).is_some());
        let e = error_of("", 1);
        assert_eq!(e.message(), "psql exited with code 1");
    }

    #[test]
    fn long_outputs_are_cut() {
        let many: String = (0..40)
            .map(|i| format!("psql:<stdin>:{i}: NOTICE:  00000: notice {i}\n"))
            .chain(["psql:<stdin>:41: ERROR:  22012: division by zero\n".to_owned()])
            .chain((0..40).map(|i| format!("CONTEXT line {i}\n")))
            .collect();
        let e = error_of(&many, 3);
        assert!(e.message().contains("ERROR:  22012"), "{e}");
        assert!(e.message().ends_with("… 29 more lines"), "{e}");
        let w = context(&e, SERVER_WARNINGS).unwrap();
        assert!(w.ends_with("… 30 more lines"), "{w}");
        assert_eq!(input_line(&e), Some(41));
    }

    #[test]
    fn psql_prefixes_with_colons_in_the_file_name() {
        assert_eq!(
            psql_prefix("psql:/srv/a:b/V1.sql:12: ERROR:  x"),
            Some((12, "ERROR:  x"))
        );
        assert_eq!(psql_prefix("psql: error: x"), None);
        assert_eq!(psql_prefix("psql:<stdin>: x"), None);
        assert_eq!(psql_prefix("ERROR:  x"), None);
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

/// The samples above, captured again from a real server: psql still prints them so.
#[cfg(all(test, feature = "testing"))]
mod against_the_server {
    use super::tests::*;
    use super::*;
    use crate::testing::PgServer;

    async fn stderr_of(tools: &Tools, extra: &[&str], stdin: &str) -> (Option<i32>, String) {
        let cmd = tools
            .psql(None, "capture")
            .args(extra.iter().copied())
            .stdin(stdin.as_bytes().to_vec());
        let out = tools.host.run(&cmd).await.unwrap();
        (out.code, out.stderr_text())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn psql_prints_the_captured_samples() {
        let server = PgServer::start().await.unwrap();
        let config = server.create_database().await.unwrap();
        let tools = test_tools(config.clone());
        let script = ["-f", "-"];
        let cases: [(&[&str], &str, &str); 5] = [
            (
                &script,
                "BEGIN;\nCOMMIT;\nCOMMIT;\nSELECT 1/0;\n",
                WARNING_THEN_ERROR,
            ),
            (
                &script,
                "CREATE TEMP TABLE a(id int);\nROLLBACK;\n\nSELECT *\n  FROM x;\n",
                SYNTAX_ERROR_AFTER_A_WARNING,
            ),
            (
                &script,
                "DO $$BEGIN RAISE NOTICE $n$hello\nworld$n$; RAISE WARNING $w$careful$w$ USING DETAIL = $d$some detail$d$, HINT = $h$a hint$h$; END$$;\nDO $$BEGIN PERFORM 1/0; END$$;\n",
                NOTICES_THEN_ERROR_IN_PLPGSQL,
            ),
            (
                &script,
                "CREATE TABLE t(id int primary key);\nINSERT INTO t VALUES (1),(1);\n",
                UNIQUE_VIOLATION,
            ),
            (&["-c", "SELECT 1/0"], "", COMMAND_ERROR),
        ];
        for (args, input, sample) in cases {
            let (code, stderr) = stderr_of(&tools, args, input).await;
            assert_ne!(code, Some(0), "{input}");
            assert_eq!(
                Diagnostics::parse(&stderr),
                Diagnostics::parse(sample),
                "{stderr}"
            );
        }
        let (code, stderr) = stderr_of(
            &tools,
            &script,
            "SELECT 1;\nSELECT pg_terminate_backend(pg_backend_pid());\n",
        )
        .await;
        assert_eq!(code, Some(2));
        assert_eq!(Diagnostics::parse(&stderr), Diagnostics::parse(TERMINATED));
        let refused = test_tools(config.clone().with_host("127.0.0.1", 1));
        let (code, stderr) = stderr_of(&refused, &["-c", "SELECT 1"], "").await;
        assert_eq!(code, Some(2));
        assert_eq!(Diagnostics::parse(&stderr), Diagnostics::parse(REFUSED));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_holder_of_a_negative_key_is_found_in_pg_locks() {
        let server = PgServer::start().await.unwrap();
        let config = server.create_database().await.unwrap();
        let tools = test_tools(config);
        // Both halves of the key matter: classid holds the high 32 bits (here 0xFFFF_FF00).
        let key = -(1_i64 << 40) + 0x1234;
        let poll = Duration::from_millis(50);
        let first = LockSession::acquire(&tools, key, Duration::from_secs(5), poll)
            .await
            .unwrap();
        let pid = server
            .query(
                "postgres",
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted",
            )
            .await
            .unwrap();
        let e = LockSession::acquire(&tools, key, Duration::from_millis(200), poll)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.message().contains(&format!(
                "held by pid {pid} (application_name '{LOCK_APP}', user postgres, client 127.0.0.1:"
            )),
            "{e}"
        );
        // Released, it is free again.
        first.release().await;
        let other = LockSession::acquire(&tools, key, Duration::from_secs(5), poll)
            .await
            .unwrap();
        other.release().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warning_and_an_error_from_the_server_are_told_apart() {
        let server = PgServer::start().await.unwrap();
        let config = server.create_database().await.unwrap();
        let tools = test_tools(config);
        let e = tools
            .exec(
                None,
                "BEGIN; COMMIT; COMMIT; SELECT 1/0;",
                "run a script in",
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CommandFailed);
        assert!(
            e.message()
                .ends_with("exited with code 3: ERROR:  22012: division by zero"),
            "{e}"
        );
        assert_eq!(
            e.context_values(),
            [
                (INPUT_LINE, "1".to_owned()),
                (
                    SERVER_WARNINGS,
                    "line 1: WARNING:  25P01: there is no transaction in progress".to_owned()
                ),
            ]
        );
    }
}
