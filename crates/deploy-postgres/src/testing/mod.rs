//! A real PostgreSQL server for tests: `initdb` into a temporary directory, `postgres` on a free
//! loopback port, one fresh database per test, stopped when dropped.
//!
//! ```no_run
//! # async fn demo() -> deploy_core::Result<()> {
//! let server = deploy_postgres::testing::PgServer::start().await?;
//! let config = server.create_database().await?;
//! assert_eq!(server.query(&config.dbname, "SELECT 1").await?, "1");
//! # Ok(()) }
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deploy_core::testing::process::{ChildGuard, Signal, free_port};
use deploy_core::{Error, ErrorKind, Result};

use crate::connection::PgConfig;

pub mod history;

/// The role the fixture's `pg_hba.conf` authenticates with a password (scram-sha-256) on
/// loopback; every other role is trusted on loopback (and only there).
pub const PASSWORD_ROLE: &str = "deploy_pw";

const INSTALL_HINT: &str =
    "install the server with `bash scripts/install-servers.sh` or `apt-get install postgresql`";

fn fixture_err(operation: &'static str, cause: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        operation,
        "test PostgreSQL server",
        cause,
    )
    .permanent()
}

/// Where `initdb` and `postgres` are: `$PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PG_BIN_DIR") {
        let d = PathBuf::from(d);
        if d.join("initdb").is_file() {
            return Ok(d);
        }
        return Err(fixture_err(
            "find initdb",
            format!("PG_BIN_DIR={} holds no initdb; {INSTALL_HINT}", d.display()),
        ));
    }
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, b)| b).ok_or_else(|| {
        fixture_err(
            "find initdb",
            format!("no /usr/lib/postgresql/<major>/bin/initdb and no PG_BIN_DIR; {INSTALL_HINT}"),
        )
    })
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the `postgres` user when this process is root (the server refuses root).
fn as_server_user(root: bool, program: &Path) -> std::process::Command {
    if root {
        let mut c = std::process::Command::new("setpriv");
        // setpriv execs the program, so the child's pid is the program's.
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

/// A PostgreSQL server owned by this test: stopped (fast shutdown, then kill) and its data
/// directory removed on drop.
#[derive(Debug)]
pub struct PgServer {
    server: ChildGuard,
    port: u16,
    bin_dir: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    next_db: AtomicU32,
    // Dropped last: the server must be stopped before its directory goes.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// `initdb` and start a server on a free 127.0.0.1 port; returns once it accepts queries.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// As [`start`](Self::start), with the server binaries taken from `bin_dir` when given.
    pub async fn start_with(bin_dir: Option<PathBuf>) -> Result<Self> {
        Self::start_with_settings(bin_dir, &[]).await
    }

    /// As [`start_with`](Self::start_with), with extra server settings (`-c name=value`), such
    /// as `logging_collector`, which take effect only at start. A relative `log_directory` is
    /// under [`data_dir`](Self::data_dir).
    pub async fn start_with_settings(
        bin_dir: Option<PathBuf>,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(bin_dir, &settings))
            .await
            .map_err(|e| fixture_err("start", "the start task failed").with_source(e))?
    }

    fn start_blocking(bin_dir: Option<PathBuf>, settings: &[String]) -> Result<Self> {
        let bin_dir = match bin_dir {
            Some(d) if d.join("initdb").is_file() => d,
            Some(d) => {
                return Err(fixture_err(
                    "find initdb",
                    format!("{} holds no initdb; {INSTALL_HINT}", d.display()),
                ));
            }
            None => find_bin_dir()?,
        };
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("deploy-postgres-test-")
            .tempdir()
            .map_err(|e| Error::io("create", "test server directory", e))?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        fs::create_dir(&socket_dir)
            .map_err(|e| Error::io("create", socket_dir.display().to_string(), e))?;
        if root {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| Error::io("chown", dir.path().display().to_string(), e))?;
            if !st.success() {
                return Err(fixture_err(
                    "chown the test directory",
                    "`chown postgres:postgres` failed: is there a `postgres` user? apt-get install postgresql creates it",
                ));
            }
        }
        let out = as_server_user(root, &bin_dir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-A",
                "trust",
            ])
            .output()
            .map_err(|e| fixture_err("run initdb", INSTALL_HINT).with_source(e))?;
        if !out.status.success() {
            return Err(fixture_err(
                "run initdb",
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        // Trust on loopback only; one role needs its password, to test that path.
        let hba = format!(
            "local all all trust\nhost all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
        );
        let hba_path = data.join("pg_hba.conf");
        fs::write(&hba_path, hba)
            .map_err(|e| Error::io("write", hba_path.display().to_string(), e))?;

        let log = dir.path().join("server.log");
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let log_file = fs::File::create(&log)
                .map_err(|e| Error::io("create", log.display().to_string(), e))?;
            let log_err = log_file
                .try_clone()
                .map_err(|e| Error::io("open", log.display().to_string(), e))?;
            let child = as_server_user(root, &bin_dir.join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=60",
                    "-c",
                    "shared_buffers=32MB",
                ])
                .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file))
                .stderr(Stdio::from(log_err))
                .spawn()
                .map_err(|e| fixture_err("start postgres", INSTALL_HINT).with_source(e))?;
            // Stopped by its PID if it does not come up.
            let mut server = ChildGuard::new(child).grace(Duration::from_secs(1));
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = server.child().try_wait() {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    last_err = Some(fixture_err(
                        "start postgres",
                        format!("exited with {status}: {}", text.trim()),
                    ));
                    break;
                }
                let ready = std::process::Command::new(bin_dir.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ready {
                    return Ok(Self {
                        server,
                        port,
                        bin_dir,
                        socket_dir,
                        log,
                        next_db: AtomicU32::new(0),
                        dir,
                    });
                }
                if started.elapsed() > Duration::from_secs(30) {
                    server.stop();
                    return Err(fixture_err(
                        "start postgres",
                        format!(
                            "not ready after 30 s: {}",
                            fs::read_to_string(&log).unwrap_or_default()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last_err.unwrap_or_else(|| fixture_err("start postgres", "failed three times")))
    }

    /// The port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's binaries (`initdb`, `postgres`, `pg_isready`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's temporary directory (also a good place for backups).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's data directory (`PGDATA`), under [`dir`](Self::dir).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Connection settings for `dbname` as the superuser `postgres` over TCP on loopback.
    pub fn config(&self, dbname: &str) -> PgConfig {
        PgConfig::new(dbname)
            .with_host("127.0.0.1", self.port)
            .with_user("postgres")
    }

    /// Create a fresh, empty database and return its settings.
    pub async fn create_database(&self) -> Result<PgConfig> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        self.query("postgres", &format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.config(&name))
    }

    /// Create [`PASSWORD_ROLE`] (a superuser) with `password`; the server checks it on loopback.
    /// The statement reaches psql on its standard input, so the password is on no command line
    /// (tests watch the process list for it) and in no error.
    pub async fn create_password_role(&self, password: &str) -> Result<()> {
        let pw = password.replace('\'', "''");
        let sql = format!("CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{pw}';\n");
        let run = async {
            let mut child = tokio::process::Command::from(self.psql("postgres"))
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            tokio::io::AsyncWriteExt::write_all(&mut stdin, sql.as_bytes()).await?;
            drop(stdin);
            child.wait_with_output().await
        };
        let out = run
            .await
            .map_err(|e| fixture_err("run psql", INSTALL_HINT).with_source(e))?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                format!("create the role {PASSWORD_ROLE} in"),
                format!("the test server on port {}", self.port),
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(())
    }

    /// psql as `postgres` on this server's loopback port, in `dbname`, quiet and unaligned.
    fn psql(&self, dbname: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(dbname);
        cmd
    }

    /// Run `sql` in `dbname` as `postgres` and return psql's unaligned, tuples-only output,
    /// trimmed (rows on lines, columns separated by `|`).
    pub async fn query(&self, dbname: &str, sql: &str) -> Result<String> {
        let out = tokio::process::Command::from(self.psql(dbname))
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| fixture_err("run psql", INSTALL_HINT).with_source(e))?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                format!("run {sql:?} in"),
                format!("test database {dbname}"),
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT) of the postmaster this fixture started; if it lingers, the
        // guard's TERM, then KILL.
        if self.server.signal(Signal::Int).unwrap_or(false) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !self.server.exited() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.server.stop();
    }
}
