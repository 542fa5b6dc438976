//! A real OpenSSH server for tests: [`SshdFixture`] (behind the `testing` feature).

use std::fmt;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use deploy_core::testing::process::{ChildGuard, Signal, free_port, signal};
use deploy_core::{Error, ErrorKind, Result};

use crate::SshHostBuilder;
use crate::host::SshHost;

/// The sshd binary the fixture runs.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A real `sshd -D -e` on a free `127.0.0.1` port, with its own configuration, a generated
/// ed25519 host key, a generated client key (authorized for the user running the tests, which
/// must be root: `PermitRootLogin prohibit-password`) and a `known_hosts` file listing the host
/// key, all in a temporary directory. The server is stopped when the fixture is dropped (its
/// session processes killed, then the listener stopped by its pid).
///
/// Sessions get `SHLVL=1` (sshd's `SetEnv`): bash, started by sshd as the login shell, then does
/// not source `~/.bashrc`, whose output and run time (a `pyenv init`, say) belong to the
/// machine running the tests, not to the server under test.
/// Several fixtures side by side make a fleet. It offers SFTP (`internal-sftp`), as Debian's
/// default configuration does; [`start_with`](Self::start_with) changes the configuration.
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use deploy_core::{Command, Host};
/// let sshd = deploy_ssh::testing::SshdFixture::start()?;
/// let host = sshd.host()?;
/// let out = host.run(&Command::new("hostname")).await?;
/// # Ok(()) }
/// ```
pub struct SshdFixture {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<ChildGuard>,
    user: String,
}

impl fmt::Debug for SshdFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshdFixture")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(ChildGuard::id))
            .finish()
    }
}

fn fixture_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, "start", "test sshd", message)
}

/// A fixture error caused by `source`, which says what went wrong.
fn fixture_failure(message: impl Into<String>, source: std::io::Error) -> Error {
    fixture_error(message).with_source(source)
}

/// Run `ssh-keygen` with `args`.
pub fn ssh_keygen(args: &[&str]) -> Result<()> {
    let out = StdCommand::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            fixture_failure(
                "cannot run ssh-keygen (install it with `apt-get install openssh-client`)",
                e,
            )
        })?;
    if !out.status.success() {
        return Err(fixture_error(format!(
            "ssh-keygen {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl SshdFixture {
    /// Start a server; fails with the install command if sshd is missing.
    pub fn start() -> Result<Self> {
        Self::start_with("Subsystem sftp internal-sftp\n")
    }

    /// Start a server whose `sshd_config` ends with `extra` in place of the default
    /// `Subsystem sftp internal-sftp` line: `""` for a server without SFTP,
    /// `"Subsystem sftp internal-sftp\nForceCommand internal-sftp\n"` for one that runs no
    /// command but SFTP.
    pub fn start_with(extra: &str) -> Result<Self> {
        if !Path::new(SSHD).exists() {
            return Err(fixture_error(format!(
                "{SSHD} is missing; install it with `apt-get install openssh-server`"
            )));
        }
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")
            .map_err(|e| fixture_failure("cannot create /run/sshd", e))?;
        let dir = tempfile::Builder::new()
            .prefix("deploy-sshd-")
            .tempdir()
            .map_err(|e| fixture_failure("cannot create its temporary directory", e))?;
        let d = dir.path();
        let p = |name: &str| d.join(name).to_string_lossy().into_owned();
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p("host_ed25519")])?;
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p("client_ed25519")])?;
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys"))
            .map_err(|e| fixture_failure("cannot write authorized_keys", e))?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let mut fixture = Self {
            dir,
            port: 0,
            child: None,
            user,
        };
        // The port is free when chosen but another process may take it before sshd binds it.
        let mut last = None;
        for _ in 0..5 {
            match fixture.launch(extra) {
                Ok(()) => {
                    fixture.write_known_hosts()?;
                    return Ok(fixture);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| fixture_error("sshd did not start")))
    }

    fn launch(&mut self, extra: &str) -> Result<()> {
        let d = self.dir.path();
        let port = free_port()?;
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {d}/host_ed25519\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             MaxSessions 16\n\
             SetEnv SHLVL=1\n\
             MaxStartups 100:30:200\n\
             LogLevel ERROR\n\
             {extra}",
            d = d.display(),
            extra = extra,
        );
        let config_path = d.join("sshd_config");
        std::fs::write(&config_path, config)
            .map_err(|e| fixture_failure("cannot write sshd_config", e))?;
        let log = std::fs::File::create(d.join("sshd.log"))
            .map_err(|e| fixture_failure("cannot create sshd.log", e))?;
        let child = StdCommand::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| fixture_failure(format!("cannot run {SSHD}"), e))?;
        // Stopped by its pid if it does not come up (TERM, then KILL).
        let mut child = ChildGuard::new(child).grace(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.child().try_wait() {
                let log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
                return Err(fixture_error(format!(
                    "{SSHD} exited with {status} on port {port}: {}",
                    log.trim()
                )));
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    break;
                }
            }
            if Instant::now() > deadline {
                child.stop();
                return Err(fixture_error(format!(
                    "{SSHD} did not answer on port {port} within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.port = port;
        self.child = Some(child);
        Ok(())
    }

    fn write_known_hosts(&self) -> Result<()> {
        let key = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .map_err(|e| fixture_failure("cannot read the host key", e))?;
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        std::fs::write(
            self.known_hosts(),
            format!("[127.0.0.1]:{} {}\n", self.port, key.join(" ")),
        )
        .map_err(|e| fixture_failure("cannot write known_hosts", e))
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fixture's temporary directory (keys, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The authorized client private key (ed25519, no passphrase).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// A `known_hosts` file listing this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The server's public host key file.
    pub fn host_public_key(&self) -> PathBuf {
        self.dir.path().join("host_ed25519.pub")
    }

    /// The user tests log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Authorize the public key file `public_key` as well.
    pub fn authorize(&self, public_key: &Path) -> Result<()> {
        use std::io::Write;
        let key = std::fs::read_to_string(public_key)
            .map_err(|e| Error::io("authorize", format!("key {}", public_key.display()), e))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .and_then(|mut f| f.write_all(key.as_bytes()))
            .map_err(|e| {
                Error::io(
                    "authorize",
                    format!("key {} in authorized_keys", public_key.display()),
                    e,
                )
            })
    }

    /// A builder for this server with user, port, the client key and the known_hosts file set.
    pub fn host_builder(&self) -> SshHostBuilder {
        SshHost::builder("127.0.0.1")
            .port(self.port)
            .user(self.user.clone())
            .key_file(self.client_key())
            .known_hosts(self.known_hosts())
    }

    /// A host connected to this server as configured by [`host_builder`](Self::host_builder).
    pub fn host(&self) -> Result<SshHost> {
        self.host_builder().build()
    }

    /// Kill every session process of this server (children of the listening sshd): every open
    /// connection drops at once, as on a crash or a network cut. The listener keeps running.
    pub fn kill_connections(&self) -> usize {
        let Some(child) = &self.child else {
            return 0;
        };
        // Only children of the sshd this fixture started, by pid.
        children_of(child.id())
            .into_iter()
            .filter(|&pid| signal(pid, Signal::Kill).unwrap_or(false))
            .count()
    }
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so parse after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl Drop for SshdFixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Session processes first: they would outlive the listener.
            for pid in children_of(child.id()) {
                let _ = signal(pid, Signal::Kill);
            }
            child.stop();
        }
    }
}

/// Watches the argument vector of every process on this machine (`/proc/*/cmdline`) for
/// canary secrets, from a thread of its own, until stopped: the secrets harness's eye on the
/// process lists. An [`SshdFixture`] runs on this machine, so its sessions — the remote login
/// shells and the commands they `exec` — are in the same `/proc`: one watch covers the local
/// and the "remote" host.
///
/// ```no_run
/// use deploy_ssh::testing::ArgvWatch;
/// let watch = ArgvWatch::start(vec![b"canary-3f9a".to_vec()], vec![b"psql".to_vec()]);
/// // ... run commands that carry the canary in their environment ...
/// let report = watch.stop();
/// assert!(report.hits.is_empty(), "{:?}", report.hits);
/// ```
#[derive(Debug)]
pub struct ArgvWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<ArgvReport>>,
}

/// What an [`ArgvWatch`] saw.
#[derive(Debug, Default, Clone)]
pub struct ArgvReport {
    /// Full passes over `/proc`.
    pub passes: u64,
    /// Command lines read, summed over the passes.
    pub command_lines: u64,
    /// Processes whose command line held a canary: pid and command line (NULs as spaces).
    pub hits: Vec<(u32, String)>,
    /// For each marker given to [`ArgvWatch::start`], how many command lines held it (a
    /// process seen in several passes counts once per pass): evidence that the processes of
    /// interest were running, and seen, while the watch ran.
    pub markers: Vec<u64>,
}

impl ArgvWatch {
    /// Start watching for any of `canaries`; count the command lines holding each of
    /// `markers`. Processes of this test binary itself are skipped (its own argv holds test
    /// names, not commands under test).
    pub fn start(canaries: Vec<Vec<u8>>, markers: Vec<Vec<u8>>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let me = std::process::id();
        let thread = std::thread::spawn(move || {
            let contains = |hay: &[u8], needle: &[u8]| {
                !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
            };
            let mut report = ArgvReport {
                markers: vec![0; markers.len()],
                ..ArgvReport::default()
            };
            let mut seen_hits = std::collections::BTreeSet::new();
            loop {
                // One more full pass after the stop request, so the last moment is seen too.
                let last = flag.load(std::sync::atomic::Ordering::Relaxed);
                let Ok(entries) = std::fs::read_dir("/proc") else {
                    break;
                };
                for e in entries.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if pid == me {
                        continue;
                    }
                    let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    report.command_lines += 1;
                    for (i, m) in markers.iter().enumerate() {
                        if contains(&cmdline, m) {
                            report.markers[i] += 1;
                        }
                    }
                    if canaries.iter().any(|c| contains(&cmdline, c)) && seen_hits.insert(pid) {
                        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                        report.hits.push((pid, text));
                    }
                }
                report.passes += 1;
                if last {
                    break;
                }
            }
            report
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop watching (after one more full pass) and say what was seen.
    pub fn stop(mut self) -> ArgvReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ArgvWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
