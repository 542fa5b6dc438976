//! [`SshHost`]: one remote machine as a [`Host`], over one multiplexed SSH connection.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::{Command, Error, ErrorKind, ExposeSecret, FileKind, Host, Output, Result};
use russh::client::{self, Handle};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, Sig};
use tokio::sync::{Mutex, Semaphore};

use crate::config::{Auth, Settings, SshHostBuilder};
use crate::known_hosts::{self, Check, HostKeyError, HostKeyPolicy};
use crate::quote::{self, ENV_MARK, NO_CWD_MARK, NOT_FOUND_MARK, PID_HEADER};
use crate::sftp::{self, Failure, Sftp, WriteEnd, WriteError, wire};
use russh_sftp::protocol::StatusCode;

/// A remote machine reached over SSH (russh), as a [`Host`].
///
/// - **One connection per host**, opened on first use and reused: every command and transfer is
///   a channel multiplexed on it (at most [`SshHostBuilder::max_channels`] at once). A closed
///   connection is reopened by the next call; a connection that drops while a command runs
///   fails that command with a *retryable* error of kind `Unavailable` (the command may or may
///   not have finished on the host).
/// - **Host keys** are verified against an OpenSSH `known_hosts` file (hashed entries too) under
///   a [`HostKeyPolicy`]; a changed key is always refused, naming the host and both fingerprints.
/// - **Commands** are argument vectors: one audited quoting function turns them into the single
///   string SSH carries, for the remote user's POSIX login shell (POSIX single quotes, `'` as
///   `'\''`; NUL and environment names that are not identifiers are refused). The command's
///   exit code or the signal that ended it is reported as is.
/// - **Environment values never reach a command line**: that string is the remote login
///   shell's argument, which every user of the host sees in `ps`. It holds the variables'
///   names only; their values travel on the channel's standard input, one line each ahead of
///   the command's own input, read by the shell (`IFS= read -r NAME`, byte by byte, so the rest
///   stays for the command) and exported before the command is `exec`ed. On the host they are
///   then in the command's environment (`/proc/PID/environ`: its user and root only). A value
///   holding a newline or NUL is refused with an `InvalidInput` error naming the variable, not
///   the value. At most
///   [`SshHost::MAX_CAPTURED_OUTPUT`] bytes of standard output and of standard error are kept;
///   standard input is streamed with SSH flow control, then closed. On timeout the command's
///   whole process group is killed on the host (over a second channel) and the call fails with
///   kind `Timeout`; a call dropped before its command ended (a caller's own timeout) kills the
///   group too.
/// - **Files** are written under a temporary name `.<name>.deploy-tmp-<unique>` in the target
///   directory, checked for the full byte count, mode set, fsynced, and renamed into place — so
///   an interrupted transfer never leaves a partial file at the final path.
/// - **File operations go over SFTP** (one channel kept open on the connection, one request per
///   operation, no process started on the host) when the server offers the `sftp` subsystem
///   with `posix-rename@openssh.com`; otherwise, or when turned off with
///   [`SshHostBuilder::sftp`], each runs a small script over an exec channel.
///
/// The remote side needs a POSIX shell and GNU coreutils/findutils (`mv -T`, `ln -T`,
/// `find -printf`, `stat -c`) for commands and for file operations without SFTP: any Linux
/// distribution.
#[derive(Clone)]
pub struct SshHost {
    inner: Arc<Inner>,
}

struct Inner {
    config: Settings,
    name: String,
    connection: Mutex<Option<Arc<Handle<Client>>>>,
    channels: Arc<Semaphore>,
    sftp: Mutex<sftp::Slot>,
    /// Temporary files of SFTP writes cut off with their connection: the next session removes
    /// them (an exec channel's script removes its own, on end of input or SIGHUP).
    leftovers: StdMutex<Vec<String>>,
}

impl fmt::Debug for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHost")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Where the bytes of standard input (or of a file written over SFTP) come from.
pub(crate) enum Input<'a> {
    Empty,
    Bytes(&'a [u8]),
    File(&'a mut tokio::fs::File),
}

/// How a command ended on the host, before interpretation.
#[derive(Debug, Default)]
struct Raw {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The pid (and process group) the wrapper reported.
    pid: Option<u32>,
    /// Whether the server reported how the command ended.
    ended: bool,
    /// Standard error bytes before the pid header line was found.
    header_scan: bool,
}

/// How long a command's output is still read after it ended, for background children that keep
/// the channel open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary-name suffix unique across processes and machines writing the same directory.
fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::ABRT => 6,
        Sig::ALRM => 14,
        Sig::FPE => 8,
        Sig::HUP => 1,
        Sig::ILL => 4,
        Sig::INT => 2,
        Sig::KILL => 9,
        Sig::PIPE => 13,
        Sig::QUIT => 3,
        Sig::SEGV => 11,
        Sig::TERM => 15,
        Sig::USR1 => 10,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => 12,
            "BUS" => 7,
            "TRAP" => 5,
            "SYS" => 31,
            "XCPU" => 24,
            "XFSZ" => 25,
            _ => -1,
        },
    }
}

impl Raw {
    fn push_stdout(&mut self, data: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.stdout.len());
        self.stdout.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Keep standard error (bounded), removing the wrapper's pid line once it is complete.
    fn push_stderr(&mut self, data: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.stderr.len());
        self.stderr.extend_from_slice(&data[..data.len().min(room)]);
        if self.header_scan {
            return;
        }
        // A login shell's rc file may print before the wrapper runs: find the header line.
        let mut start = 0;
        while let Some(nl) = self.stderr[start..].iter().position(|&b| b == b'\n') {
            let line = &self.stderr[start..start + nl];
            if let Some(pid) = line.strip_prefix(PID_HEADER) {
                self.pid = std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok());
                self.stderr.drain(start..start + nl + 1);
                self.header_scan = true;
                return;
            }
            start += nl + 1;
        }
        if self.stderr.len() > 64 * 1024 {
            self.header_scan = true;
        }
    }
}

/// Kills the remote process group if the call is dropped before the command ended (a caller's
/// own timeout, `select!`, a per-host limit): the command must not outlive the call.
struct KillOnDrop {
    host: SshHost,
    /// The pid reported by the wrapper; 0 until then.
    pid: Arc<AtomicU32>,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = self.pid.load(Ordering::Relaxed);
        if !self.armed || pid == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let host = self.host.clone();
            rt.spawn(async move { host.kill_group(pid).await });
        }
    }
}

/// Why a raw execution failed.
enum RawError {
    /// Ran out of time; the pid if known, to kill the group.
    Timeout(Option<u32>),
    /// The connection dropped before the command started or while it ran (the words say when).
    Dropped(&'static str),
    /// The server refused the exec request.
    Refused,
    /// Connecting or opening a channel failed; the error names the host.
    Connection(Error),
}

impl SshHost {
    /// At most this many bytes of standard output, and as many of standard error, are kept per
    /// command (16 MiB); the rest is read and discarded. ([`Host::read_file`] has its own limit,
    /// [`SshHostBuilder::max_read`], and refuses a longer file instead of cutting it.)
    pub const MAX_CAPTURED_OUTPUT: usize = 16 * 1024 * 1024;

    /// The default of [`SshHostBuilder::max_read`]: files of up to 64 MiB are read.
    pub const DEFAULT_MAX_READ: u64 = 64 * 1024 * 1024;

    /// A builder for the host `host` (a name or an address).
    pub fn builder(host: impl Into<String>) -> SshHostBuilder {
        SshHostBuilder::new(host)
    }

    pub(crate) fn with_settings(config: Settings) -> Self {
        let name = format!("{}@{}:{}", config.user, config.host, config.port);
        let channels = Arc::new(Semaphore::new(config.max_channels));
        Self {
            inner: Arc::new(Inner {
                config,
                name,
                connection: Mutex::new(None),
                channels,
                sftp: Mutex::new(sftp::Slot::Untried),
                leftovers: StdMutex::new(Vec::new()),
            }),
        }
    }

    /// What the host was built with.
    #[cfg(test)]
    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.config
    }

    /// Open the connection now (it is otherwise opened by the first command): checks the host
    /// key and authenticates.
    pub async fn connect(&self) -> Result<()> {
        self.connection().await.map(drop)
    }

    /// Close the connection (the next command opens a new one).
    pub async fn disconnect(&self) {
        *self.inner.sftp.lock().await = sftp::Slot::Untried;
        let handle = self.inner.connection.lock().await.take();
        if let Some(h) = handle {
            let _ = h
                .disconnect(russh::Disconnect::ByApplication, "bye", "en")
                .await;
        }
    }

    /// Whether a connection is open now.
    pub async fn is_connected(&self) -> bool {
        matches!(&*self.inner.connection.lock().await, Some(h) if !h.is_closed())
    }

    /// Copy the file `path` on this host to `local` on this machine, atomically (temporary name
    /// next to `local`, renamed into place), with mode `mode` or the remote file's. The file is
    /// read whole first, so [`SshHostBuilder::max_read`] bounds it as it bounds
    /// [`Host::read_file`].
    pub async fn download(&self, path: &Path, local: &Path, mode: Option<u32>) -> Result<()> {
        let bytes = self.read_file(path).await?;
        let mode = match mode {
            Some(m) => Some(m),
            None => {
                let out = self
                    .script(
                        "download",
                        path,
                        "stat -c %a -- \"$1\" 2>/dev/null || stat -f %Lp -- \"$1\"",
                        &[path.as_os_str()],
                    )
                    .await?;
                u32::from_str_radix(out.stdout_text().trim(), 8).ok()
            }
        };
        let object = format!(
            "{} to {}",
            self.located(&path.display().to_string()),
            local.display()
        );
        let local = local.to_path_buf();
        tokio::task::spawn_blocking(move || {
            deploy_core::fs::write_atomic(&local, bytes.as_slice(), mode)
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Other,
                "download",
                object.clone(),
                "the local write stopped",
            )
            .with_source(e)
        })?
        .map_err(|e| Error::io("download", object, e))
    }

    /// The open connection, opening one if there is none or it was closed.
    async fn connection(&self) -> Result<Arc<Handle<Client>>> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(h) = &*slot
            && !h.is_closed()
        {
            return Ok(Arc::clone(h));
        }
        *slot = None;
        let c = &self.inner.config;
        let h = match tokio::time::timeout(c.connect_timeout, self.open()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "connect to",
                    self.inner.name.clone(),
                    format!(
                        "no session within {}",
                        humantime::format_duration(c.connect_timeout)
                    ),
                ));
            }
        };
        let h = Arc::new(h);
        *slot = Some(Arc::clone(&h));
        Ok(h)
    }

    /// Forget `handle` if it is still the current connection (it failed).
    async fn forget(&self, handle: &Arc<Handle<Client>>) {
        let mut slot = self.inner.connection.lock().await;
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)) {
            *slot = None;
        }
    }

    async fn open(&self) -> Result<Handle<Client>> {
        let c = &self.inner.config;
        let refused = Arc::new(StdMutex::new(None));
        let handler = Client {
            host: c.host.clone(),
            port: c.port,
            known_hosts: c.known_hosts.clone(),
            policy: c.policy,
            hash: c.hash_known_hosts,
            refused: Arc::clone(&refused),
        };
        let config = Arc::new(client::Config {
            keepalive_interval: c.keepalive,
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        });
        let name = self.inner.name.clone();
        let mut handle = match client::connect(config, (c.host.as_str(), c.port), handler).await {
            Ok(h) => h,
            Err(e) => {
                if let Some(hk) = refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    // The refusal says why, with fingerprints and what to do.
                    return Err(Error::new(ErrorKind::Rejected, "connect to", name, "")
                        .with_source(hk)
                        .permanent());
                }
                return Err(russh_error("connect to", name, e));
            }
        };
        let mut failures = Vec::new();
        for auth in &c.auth {
            match self.authenticate(&mut handle, auth).await {
                Ok(true) => return Ok(handle),
                Ok(false) => failures.push(format!("{}: refused by the server", auth_name(auth))),
                Err(e) => failures.push(format!("{}: {e}", auth_name(auth))),
            }
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            "authenticate to",
            name,
            format!(
                "no method worked as user {}: {}",
                c.user,
                failures.join("; ")
            ),
        )
        .permanent())
    }

    /// Try one method; `Ok(false)` when the server refused it. The error's words follow the
    /// method's name ([`auth_name`]), so they do not repeat the key or the socket.
    async fn authenticate(
        &self,
        handle: &mut Handle<Client>,
        auth: &Auth,
    ) -> std::result::Result<bool, String> {
        let user = self.inner.config.user.clone();
        match auth {
            Auth::KeyFile { path, passphrase } => {
                let key = russh::keys::load_secret_key(
                    path,
                    passphrase.as_ref().map(ExposeSecret::expose_secret),
                )
                .map_err(|e| match e {
                    russh::keys::Error::KeyIsEncrypted => "it is encrypted: give its \
                            passphrase (key_file_with_passphrase; key_passphrase_env or \
                            key_passphrase_file in a plan)"
                        .to_owned(),
                    e => format!("cannot load it: {e}"),
                })?;
                let hash = if key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| e.to_string())?
                        .flatten()
                } else {
                    None
                };
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
                let r = handle
                    .authenticate_publickey(user, key)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.success())
            }
            Auth::Agent { socket } => {
                let socket = match socket {
                    Some(s) => s.clone(),
                    None => std::env::var_os("SSH_AUTH_SOCK")
                        .map(PathBuf::from)
                        .ok_or("SSH_AUTH_SOCK is not set")?,
                };
                let mut agent = russh::keys::agent::client::AgentClient::connect_uds(&socket)
                    .await
                    .map_err(|e| format!("cannot reach it: {e}"))?;
                let ids = agent
                    .request_identities()
                    .await
                    .map_err(|e| format!("cannot list its keys: {e}"))?;
                for id in ids {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    let hash = if key.algorithm().is_rsa() {
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .map_err(|e| e.to_string())?
                            .flatten()
                    } else {
                        None
                    };
                    let r = handle
                        .authenticate_publickey_with(user.clone(), key, hash, &mut agent)
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.success() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// Run the command line `line` with `env_input` (the environment values the line reads)
    /// and then `input` on its standard input.
    async fn exec_raw(
        &self,
        line: Vec<u8>,
        env_input: Vec<u8>,
        input: Input<'_>,
        timeout: Option<Duration>,
        limit: usize,
    ) -> std::result::Result<Raw, RawError> {
        let name = &self.inner.name;
        let handle = self.connection().await.map_err(RawError::Connection)?;
        let channel = match handle.channel_open_session().await {
            Ok(ch) => ch,
            Err(_) => {
                // The connection may have died while idle: one fresh attempt, at once (opening a
                // channel has no effect on the host, and a new connection is not a retry of
                // the same one: there is nothing to back off from).
                self.forget(&handle).await;
                let handle = self.connection().await.map_err(RawError::Connection)?;
                handle.channel_open_session().await.map_err(|e| {
                    RawError::Connection(russh_error("open a channel to", name.clone(), e))
                })?
            }
        };
        channel
            .exec(true, line)
            .await
            .map_err(|_| RawError::Dropped("before the command started"))?;
        let (mut read, write) = channel.split();
        let mut raw = Raw::default();
        let pid_cell = Arc::new(AtomicU32::new(0));
        let mut guard = KillOnDrop {
            host: self.clone(),
            pid: Arc::clone(&pid_cell),
            armed: true,
        };
        let mut accepted = false;
        let reading = async {
            loop {
                let msg = if raw.ended {
                    match tokio::time::timeout(OUTPUT_GRACE, read.wait()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                } else {
                    read.wait().await
                };
                match msg {
                    Some(ChannelMsg::Success) => accepted = true,
                    Some(ChannelMsg::Failure) if !accepted => return Err(RawError::Refused),
                    Some(ChannelMsg::Data { data }) => raw.push_stdout(&data, limit),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        raw.push_stderr(&data, limit);
                        if let Some(pid) = raw.pid {
                            pid_cell.store(pid, Ordering::Relaxed);
                        }
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        raw.code = Some(exit_status as i32);
                        raw.ended = true;
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        raw.signal = Some(signal_number(&signal_name));
                        raw.ended = true;
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            Ok(())
        };
        let writing = async move {
            // The environment values first: the wrapper reads them before the command starts.
            let mut sent = if env_input.is_empty() {
                Ok(())
            } else {
                write.data(env_input.as_slice()).await
            };
            drop(env_input);
            if sent.is_ok() {
                sent = match input {
                    Input::Empty => Ok(()),
                    Input::Bytes(b) => write.data(b).await,
                    Input::File(f) => write.data(f).await,
                };
            }
            // A command that stops reading closes the channel: not an error of ours.
            if sent.is_ok() {
                let _ = write.eof().await;
            }
            // Keep the write half (and so the channel) alive until reading ends.
            std::future::pending::<()>().await;
            drop(write);
        };
        let both = async {
            tokio::select! {
                r = reading => r,
                () = writing => unreachable_ok(),
            }
        };
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, both).await.ok(),
            None => Some(both.await),
        };
        // From here on the caller decides (a timeout kills explicitly, with its error).
        guard.armed = false;
        let Some(result) = result else {
            return Err(RawError::Timeout(raw.pid));
        };
        result?;
        if !raw.ended {
            if handle.is_closed() {
                self.forget(&handle).await;
            }
            return Err(RawError::Dropped("while the command ran"));
        }
        Ok(raw)
    }

    /// Run `command`, interpreting the wrapper's marks; the core of [`Host::run`] and of every
    /// file operation. Its errors are those of `operation` on `object` (a path, or `""` for a
    /// plain command) on this host; an error of the connection, which names the host itself,
    /// gets `operation` and `object` in front.
    async fn exec(
        &self,
        command: &Command,
        input: Input<'_>,
        limit: usize,
        operation: &str,
        object: &str,
    ) -> Result<Output> {
        let fail = |kind: ErrorKind, message: String| {
            Error::new(kind, operation.to_owned(), self.located(object), message)
        };
        let wire = quote::command_line(command, operation, &self.located(object))?;
        let timeout = command.timeout.or(self.inner.config.command_timeout);
        let permit = Arc::clone(&self.inner.channels)
            .acquire_owned()
            .await
            .map_err(|_| fail(ErrorKind::Cancelled, "the host was closed".to_owned()))?;
        let r = self
            .exec_raw(wire.line, wire.env_input, input, timeout, limit)
            .await;
        drop(permit);
        let raw = match r {
            Ok(raw) => raw,
            Err(RawError::Connection(e)) => {
                return Err(e.context(operation.to_owned(), object.to_owned()));
            }
            Err(RawError::Dropped(when)) => {
                return Err(fail(
                    ErrorKind::Unavailable,
                    format!("the connection dropped {when}; the command may or may not have run"),
                )
                .retryable());
            }
            Err(RawError::Refused) => {
                return Err(fail(
                    ErrorKind::Rejected,
                    "the server refused the exec request".to_owned(),
                ));
            }
            Err(RawError::Timeout(pid)) => {
                if let Some(pid) = pid {
                    self.kill_group(pid).await;
                }
                let limit = timeout.unwrap_or_default();
                return Err(fail(
                    ErrorKind::Timeout,
                    format!(
                        "killed after {} (process group {})",
                        humantime::format_duration(limit),
                        pid.map_or("unknown".to_owned(), |p| p.to_string())
                    ),
                ));
            }
        };
        if raw.pid.is_none() {
            // The wrapper's first act is to report its pid: without it, the server ran
            // something else (a `ForceCommand`, an SFTP-only account), whatever its exit code.
            return Err(fail(
                ErrorKind::Rejected,
                "the server did not run the command (no report from the wrapper: a \
                 ForceCommand or an SFTP-only account?)"
                    .to_owned(),
            ));
        }
        if raw.code == Some(127) {
            if raw.stderr.ends_with(NOT_FOUND_MARK) {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!("program {:?} not found", command.program.to_string_lossy()),
                ));
            }
            if let Some(name) = env_mark(&raw.stderr) {
                return Err(fail(
                    ErrorKind::InvalidInput,
                    format!(
                        "the remote shell cannot set environment variable {name} (read-only \
                         there, as bash's UID is)"
                    ),
                ));
            }
            if raw.stderr.ends_with(NO_CWD_MARK) {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!(
                        "working directory {} does not exist",
                        command.cwd.as_deref().unwrap_or(Path::new("")).display()
                    ),
                ));
            }
        }
        Ok(Output::new(raw.code, raw.signal, raw.stdout, raw.stderr))
    }

    /// Kill the process group `pid` on the host, over a channel of its own (best effort).
    async fn kill_group(&self, pid: u32) {
        let line =
            format!("kill -KILL -- -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; exit 0")
                .into_bytes();
        let _permit = Arc::clone(&self.inner.channels).acquire_owned().await;
        let error = match self
            .exec_raw(
                line,
                Vec::new(),
                Input::Empty,
                Some(Duration::from_secs(10)),
                1024,
            )
            .await
        {
            Ok(_) | Err(RawError::Timeout(_)) => return,
            Err(RawError::Connection(e)) => e.to_string(),
            Err(RawError::Dropped(when)) => format!("the connection dropped {when}"),
            Err(RawError::Refused) => "the server refused the exec request".to_owned(),
        };
        tracing::warn!(host = %self.inner.name, pid, %error, "could not kill a timed-out command");
    }

    /// `object on HOST`, or `on HOST` without an object: what an error acted on.
    fn located(&self, object: &str) -> String {
        if object.is_empty() {
            format!("on {}", self.inner.name)
        } else {
            format!("{object} on {}", self.inner.name)
        }
    }

    /// Run `sh -c SCRIPT sh ARGS…` for a file operation and map its failures: exit 44 is
    /// `NotFound`; otherwise the error names `operation`, `path` and the end of stderr.
    async fn script(
        &self,
        operation: &'static str,
        path: &Path,
        script: &str,
        args: &[&OsStr],
    ) -> Result<Output> {
        self.script_with(
            operation,
            path,
            script,
            args,
            Input::Empty,
            Self::MAX_CAPTURED_OUTPUT,
        )
        .await
    }

    async fn script_with(
        &self,
        operation: &'static str,
        path: &Path,
        script: &str,
        args: &[&OsStr],
        input: Input<'_>,
        limit: usize,
    ) -> Result<Output> {
        let object = path.display().to_string();
        let cmd = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args.iter().copied());
        let out = self.exec(&cmd, input, limit, operation, &object).await?;
        if out.success() {
            return Ok(out);
        }
        let stderr = out.stderr_text();
        let tail = stderr.trim().lines().last().unwrap_or("").to_owned();
        let kind = if out.code == Some(44) || stderr.contains("No such file or directory") {
            ErrorKind::NotFound
        } else if stderr.contains("Permission denied") {
            ErrorKind::PermissionDenied
        } else if stderr.contains("File exists") {
            ErrorKind::Conflict
        } else {
            ErrorKind::Io
        };
        let cause = if out.code == Some(44) {
            "does not exist".to_owned()
        } else if tail.is_empty() {
            format!("exit code {:?}", out.code)
        } else {
            tail
        };
        Err(Error::new(kind, operation, self.located(&object), cause).permanent())
    }

    /// The SFTP session for file operations, opening it on first use; `None` when the server
    /// does not offer it, it is turned off, or it could not be opened on this connection (the
    /// caller then runs its script). An error only when the host cannot be reached at all.
    async fn sftp(&self) -> Result<Option<Arc<Sftp>>> {
        let c = &self.inner.config;
        if !c.sftp || c.max_channels < 2 {
            return Ok(None);
        }
        let mut slot = self.inner.sftp.lock().await;
        match &*slot {
            sftp::Slot::Off => return Ok(None),
            sftp::Slot::Open(s) if s.usable() => return Ok(Some(Arc::clone(s))),
            _ => {}
        }
        let handle = self.connection().await?;
        if let sftp::Slot::NotOn(h) = &*slot
            && Arc::ptr_eq(h, &handle)
        {
            return Ok(None);
        }
        *slot = sftp::Slot::Untried;
        // The channel stays open: it takes one of the host's channels for as long.
        let Ok(permit) = Arc::clone(&self.inner.channels).try_acquire_owned() else {
            return Ok(None);
        };
        // Requests are small; a transfer's are limited by the command timeout when there is
        // one, else only by the connection's keep-alive (a dead connection fails them).
        let timeout = c.command_timeout.unwrap_or(Duration::from_secs(3600));
        match Sftp::open(Arc::clone(&handle), permit, timeout).await {
            Ok(s) => {
                let leftovers = std::mem::take(
                    &mut *self
                        .inner
                        .leftovers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                for tmp in leftovers {
                    // Best effort: one may have gone already.
                    let _ = s.remove_file(&tmp).await;
                }
                let s = Arc::new(s);
                *slot = sftp::Slot::Open(Arc::clone(&s));
                Ok(Some(s))
            }
            Err(sftp::OpenError::Refused(why)) => {
                tracing::debug!(host = %self.inner.name, %why, "file operations run as commands");
                *slot = sftp::Slot::Off;
                Ok(None)
            }
            Err(sftp::OpenError::Failed(why)) => {
                tracing::debug!(
                    host = %self.inner.name,
                    %why,
                    "could not open SFTP; file operations run as commands on this connection"
                );
                *slot = sftp::Slot::NotOn(handle);
                Ok(None)
            }
        }
    }

    /// The SFTP session and `path` as it carries it, if both are there; `operation` names a
    /// failure to reach the host.
    async fn sftp_for<'p>(
        &self,
        operation: &'static str,
        path: &'p Path,
    ) -> Result<Option<(Arc<Sftp>, &'p str)>> {
        let Some(p) = wire(path) else {
            return Ok(None);
        };
        let s = self
            .sftp()
            .await
            .map_err(|e| e.context(operation, path.display().to_string()))?;
        Ok(s.map(|s| (s, p)))
    }

    /// The error of `operation` on `path` for an SFTP failure.
    fn sftp_error(&self, operation: &'static str, path: &Path, failure: Failure) -> Error {
        let object = self.located(&path.display().to_string());
        match failure {
            Failure::Status(code, message) => {
                let kind = match code {
                    StatusCode::NoSuchFile => ErrorKind::NotFound,
                    StatusCode::PermissionDenied => ErrorKind::PermissionDenied,
                    StatusCode::OpUnsupported => ErrorKind::Unsupported,
                    _ => ErrorKind::Io,
                };
                let cause = match code {
                    StatusCode::NoSuchFile => "does not exist".to_owned(),
                    _ if message.is_empty() => code.to_string(),
                    _ => message,
                };
                Error::new(kind, operation, object, cause).permanent()
            }
            Failure::Lost(why) => Error::new(
                ErrorKind::Unavailable,
                operation,
                object,
                format!("{why}; the operation may or may not have happened"),
            )
            .retryable(),
            Failure::Source(e) => Error::io(operation, object, e),
            Failure::Unfit => Error::new(
                ErrorKind::Other,
                operation,
                object,
                "SFTP could not answer it faithfully",
            ),
        }
    }

    /// Write `source` atomically to `path` over SFTP: a temporary file next to it, the whole
    /// byte count, the mode (given, else the replaced file's), fsync when the server offers
    /// it, `rename(2)`. `Ok(false)` when the temporary file could not be made and the server
    /// did not say why: the caller runs its script, which does.
    async fn write_atomic_sftp(
        &self,
        (s, final_path): (&Arc<Sftp>, &str),
        operation: &'static str,
        path: &Path,
        source: Input<'_>,
        size: u64,
        mode: Option<u32>,
    ) -> Result<bool> {
        let tmp = self.temporary_name(operation, path)?;
        // The final path's directory, a dot, its name and an ASCII suffix: UTF-8 as it is.
        let Some(tmp_path) = wire(&tmp) else {
            return Ok(false);
        };
        let fail = |f: Failure| self.sftp_error(operation, path, f);
        let mode = match mode {
            Some(m) => Some(m),
            None => match s.file_mode(final_path).await {
                Ok(m) => m,
                Err(f) if f.wants_script() => return Ok(false),
                Err(f) => return Err(fail(f)),
            },
        };
        match s.write_new(tmp_path, source, size, mode).await {
            Ok(WriteEnd::Complete) => {}
            Ok(WriteEnd::Short(n)) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    operation,
                    self.located(&path.display().to_string()),
                    format!(
                        "sent {n} of {size} bytes: the source changed during the transfer; \
                         nothing renamed into place"
                    ),
                ));
            }
            Err(WriteError::Open(f)) if f.wants_script() => return Ok(false),
            Err(WriteError::Open(f)) => return Err(fail(f)),
            Err(WriteError::Write(f)) => {
                if matches!(f, Failure::Lost(_)) {
                    self.left_behind(tmp_path);
                }
                return Err(fail(f));
            }
        }
        match s.rename(tmp_path, final_path).await {
            Ok(()) => Ok(true),
            Err(f) => {
                if matches!(f, Failure::Lost(_)) {
                    self.left_behind(tmp_path);
                } else {
                    let _ = s.remove_file(tmp_path).await;
                }
                Err(fail(f))
            }
        }
    }

    /// Remember `tmp` for removal by the next SFTP session.
    fn left_behind(&self, tmp: &str) {
        self.inner
            .leftovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tmp.to_owned());
    }

    /// `<dir>/.<name>.deploy-tmp-<unique>`: where `path` is written before it is renamed.
    fn temporary_name(&self, operation: &'static str, path: &Path) -> Result<PathBuf> {
        let name = path.file_name().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                operation,
                self.located(&path.display().to_string()),
                "the path has no file name",
            )
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp_name = b".".to_vec();
        tmp_name.extend_from_slice(name.as_bytes());
        tmp_name.extend_from_slice(format!(".deploy-tmp-{}", unique()).as_bytes());
        Ok(dir.join(OsStr::from_bytes(&tmp_name)))
    }

    /// Write `input` (`size` bytes) atomically to `path`.
    async fn write_atomic(
        &self,
        operation: &'static str,
        path: &Path,
        input: Input<'_>,
        size: u64,
        mode: Option<u32>,
    ) -> Result<()> {
        let tmp = self.temporary_name(operation, path)?;
        let size = size.to_string();
        let mode = mode
            .map(|m| format!("{:o}", m & 0o7777))
            .unwrap_or_default();
        self.script_with(
            operation,
            path,
            WRITE_SCRIPT,
            &[
                path.as_os_str(),
                tmp.as_os_str(),
                OsStr::new(&size),
                OsStr::new(&mode),
            ],
            input,
            64 * 1024,
        )
        .await
        .map(drop)
    }
}

/// Receives standard input into a temporary file, refuses to rename a short file into place,
/// sets the mode (given, else the replaced file's), fsyncs, renames. The traps remove the
/// temporary file whatever happens before the rename — the connection dropping included (the
/// shell then sees end of input, or SIGPIPE/SIGHUP on its next write); only a SIGKILL of the
/// remote shell can leave a `.deploy-tmp-` file behind, never a partial file at the final path.
const WRITE_SCRIPT: &str = r#"final=$1 tmp=$2 size=$3 mode=$4
trap 'rm -f -- "$tmp"' EXIT
trap 'rm -f -- "$tmp"; exit 1' HUP INT PIPE TERM
if [ -n "$mode" ]; then umask 077; fi
cat > "$tmp" || exit 1
n=$(wc -c < "$tmp") || exit 1
n=$((n))
if [ "$n" -ne "$size" ]; then
  echo "received $n of $size bytes: the transfer was interrupted; nothing renamed into place" >&2
  exit 1
fi
if [ -n "$mode" ]; then
  chmod -- "$mode" "$tmp" || exit 1
elif [ -f "$final" ] && [ ! -L "$final" ]; then
  m=$(stat -c %a -- "$final" 2>/dev/null || stat -f %Lp -- "$final") && chmod -- "$m" "$tmp" || exit 1
fi
sync -- "$tmp" 2>/dev/null
mv -f -T -- "$tmp" "$final" || exit 1
"#;

/// The variable named by the wrapper's [`ENV_MARK`] line ending `stderr`, if it ends so.
fn env_mark(stderr: &[u8]) -> Option<String> {
    let body = stderr.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let name = body[start..].strip_prefix(ENV_MARK)?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// A `select!` arm that never completes returns this to satisfy the types.
fn unreachable_ok() -> std::result::Result<(), RawError> {
    Ok(())
}

/// `64 MiB`, `1.5 KiB`, `300 bytes`: a size for messages.
pub(crate) fn format_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn auth_name(a: &Auth) -> String {
    match a {
        Auth::KeyFile { path, .. } => format!("key {}", path.display()),
        Auth::Agent { socket: Some(s) } => format!("agent {}", s.display()),
        Auth::Agent { socket: None } => "agent $SSH_AUTH_SOCK".to_owned(),
    }
}

/// An error of the SSH session; russh's error is the source and says what happened.
fn russh_error(operation: &'static str, object: String, e: russh::Error) -> Error {
    match e {
        russh::Error::IO(io) => Error::io(operation, object, io),
        russh::Error::ConnectionTimeout | russh::Error::KeepaliveTimeout => {
            Error::new(ErrorKind::Timeout, operation, object, "").with_source(e)
        }
        e => Error::new(ErrorKind::Unavailable, operation, object, "")
            .with_source(e)
            .retryable(),
    }
}

/// The russh handler: checks the server's host key.
pub(crate) struct Client {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    hash: bool,
    /// Why the key was refused, for the connection error.
    refused: Arc<StdMutex<Option<HostKeyError>>>,
}

impl Client {
    fn refuse(&self, e: HostKeyError) -> bool {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
        false
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            return Ok(self.refuse(HostKeyError::File {
                action: "verify a host certificate against".into(),
                known_hosts: self.known_hosts.clone(),
                cause: "host certificates are not supported; list the host key itself".into(),
            }));
        };
        Ok(
            match known_hosts::check(&self.known_hosts, &self.host, self.port, key) {
                Check::Known => true,
                Check::Refused(e) => self.refuse(e),
                Check::Unknown => match self.policy {
                    HostKeyPolicy::AcceptNew => {
                        match known_hosts::learn(
                            &self.known_hosts,
                            &self.host,
                            self.port,
                            key,
                            self.hash,
                        ) {
                            Ok(()) => {
                                tracing::info!(
                                    host = %known_hosts::host_entry_name(&self.host, self.port),
                                    fingerprint = %known_hosts::fingerprint(key),
                                    known_hosts = %self.known_hosts.display(),
                                    "recorded a new host key (accept-new)"
                                );
                                true
                            }
                            Err(e) => self.refuse(e),
                        }
                    }
                    HostKeyPolicy::Strict => self.refuse(HostKeyError::Unknown {
                        host: known_hosts::host_entry_name(&self.host, self.port),
                        hostname: self.host.clone(),
                        port: self.port,
                        algorithm: key.algorithm().to_string(),
                        fingerprint: known_hosts::fingerprint(key),
                        known_hosts: self.known_hosts.clone(),
                    }),
                },
            },
        )
    }
}

#[async_trait]
impl Host for SshHost {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn run(&self, command: &Command) -> Result<Output> {
        let input = match &command.stdin {
            Some(b) => Input::Bytes(b),
            None => Input::Empty,
        };
        let operation = format!("run `{}`", command.display());
        self.exec(command, input, Self::MAX_CAPTURED_OUTPUT, &operation, "")
            .await
    }

    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
        if let Some((s, p)) = self.sftp_for("write file", path).await?
            && self
                .write_atomic_sftp(
                    (&s, p),
                    "write file",
                    path,
                    Input::Bytes(contents),
                    contents.len() as u64,
                    mode,
                )
                .await?
        {
            return Ok(());
        }
        self.write_atomic(
            "write file",
            path,
            Input::Bytes(contents),
            contents.len() as u64,
            mode,
        )
        .await
    }

    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()> {
        let source = || format!("{} (local source)", local.display());
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Error::io("upload to", source(), e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::io("upload to", source(), e))?;
        if !meta.is_file() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "upload to",
                source(),
                "not a regular file",
            ));
        }
        // Without an explicit mode the source's: an uploaded program stays executable.
        let mode = mode.or(Some(meta.permissions().mode() & 0o7777));
        let mut file = file;
        // `write_atomic_sftp` declines (false) before it reads a byte: the script then sends
        // the same open file from its start.
        if let Some((s, p)) = self.sftp_for("upload to", path).await?
            && self
                .write_atomic_sftp(
                    (&s, p),
                    "upload to",
                    path,
                    Input::File(&mut file),
                    meta.len(),
                    mode,
                )
                .await?
        {
            return Ok(());
        }
        self.write_atomic("upload to", path, Input::File(&mut file), meta.len(), mode)
            .await
    }

    /// At most [`SshHostBuilder::max_read`] bytes (64 MiB by default): the host sends one
    /// byte more than the limit at most (`head -c`), and a file that long is refused with an
    /// `InvalidInput` error naming the path and the limit.
    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let max = self.inner.config.max_read;
        if let Some((s, p)) = self.sftp_for("read file", path).await? {
            match s.read(p, max.saturating_add(1)).await {
                Ok(bytes) => return self.within_read_limit(path, bytes),
                // A directory, say: the script words it.
                Err(f) if f.wants_script() => {}
                Err(f) => return Err(self.sftp_error("read file", path, f)),
            }
        }
        let probe = max.saturating_add(1).to_string();
        let out = self
            .script_with(
                "read file",
                path,
                "if [ -e \"$1\" ] || [ -L \"$1\" ]; then exec head -c \"$2\" -- \"$1\"; else exit 44; fi",
                &[path.as_os_str(), OsStr::new(&probe)],
                Input::Empty,
                usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX),
            )
            .await?;
        self.within_read_limit(path, out.stdout)
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        if let Some((s, p)) = self.sftp_for("remove", path).await? {
            match s.remove_file(p).await {
                Ok(()) => return Ok(()),
                Err(f) if f.is(StatusCode::NoSuchFile) => return Ok(()),
                // A directory (a tree: one `rm -rf` rather than a request per entry), or an
                // answer that says too little.
                Err(f) if f.wants_script() => {}
                Err(f) => return Err(self.sftp_error("remove", path, f)),
            }
        }
        self.script("remove", path, "rm -rf -- \"$1\"", &[path.as_os_str()])
            .await
            .map(drop)
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        if let Some(t) = wire(to)
            && let Some((s, f)) = self.sftp_for("rename", from).await?
        {
            match s.rename(f, t).await {
                Ok(()) => return Ok(()),
                // Another file system, say: `mv` copies, and words what it cannot do.
                Err(e) if e.wants_script() => {}
                Err(e) => return Err(self.sftp_error("rename", from, e)),
            }
        }
        // `-T`: a `to` that is a (link to a) directory is replaced, not entered.
        self.script(
            "rename",
            from,
            "mv -f -T -- \"$1\" \"$2\"",
            &[from.as_os_str(), to.as_os_str()],
        )
        .await
        .map(drop)
    }

    async fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        if let Some(t) = wire(target)
            && let Some((s, l)) = self.sftp_for("create symlink", link).await?
        {
            match s.symlink(t, l).await {
                Ok(()) => return Ok(()),
                // `link` exists, say: `ln` words it.
                Err(e) if e.wants_script() => {}
                Err(e) => return Err(self.sftp_error("create symlink", link, e)),
            }
        }
        self.script(
            "create symlink",
            link,
            "ln -s -T -- \"$1\" \"$2\"",
            &[target.as_os_str(), link.as_os_str()],
        )
        .await
        .map(drop)
    }

    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>> {
        if let Some((s, p)) = self.sftp_for("read symlink", link).await? {
            match s.read_link(p).await {
                Ok(to) => return Ok(Some(PathBuf::from(to))),
                Err(f) if f.is(StatusCode::NoSuchFile) => return Ok(None),
                // Not a symbolic link (EINVAL, a "bad message"), or a target that is not
                // UTF-8: the script says so, or reads its bytes.
                Err(f) if f.wants_script() => {}
                Err(f) => return Err(self.sftp_error("read symlink", link, f)),
            }
        }
        let r = self
            .script(
                "read symlink",
                link,
                "if [ -L \"$1\" ]; then readlink -- \"$1\"; elif [ -e \"$1\" ]; then echo 'not a symbolic link' >&2; exit 45; else exit 44; fi",
                &[link.as_os_str()],
            )
            .await;
        match r {
            Ok(out) => {
                let mut t = out.stdout;
                if t.last() == Some(&b'\n') {
                    t.pop();
                }
                Ok(Some(PathBuf::from(OsStr::from_bytes(&t))))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_dir_all(&self, path: &Path) -> Result<()> {
        if let Some((s, _)) = self.sftp_for("create directory", path).await?
            && self.create_dir_all_sftp(&s, path).await?
        {
            return Ok(());
        }
        self.script(
            "create directory",
            path,
            "mkdir -p -- \"$1\"",
            &[path.as_os_str()],
        )
        .await
        .map(drop)
    }

    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>> {
        let over_sftp = match self.sftp_for("list directory", path).await? {
            Some((s, p)) => match s.list(p).await {
                Ok(entries) => Some(entries),
                Err(f) if f.wants_script() => None,
                Err(f) => return Err(self.sftp_error("list directory", path, f)),
            },
            None => None,
        };
        let mut entries = if let Some(entries) = over_sftp {
            entries
        } else {
            let out = self
                .script(
                    "list directory",
                    path,
                    "[ -d \"$1\" ] || exit 44; find -H \"$1\" -mindepth 1 -maxdepth 1 -printf '%y%f\\0'",
                    &[path.as_os_str()],
                )
                .await?;
            out.stdout
                .split(|&b| b == 0)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let kind = match e[0] {
                        b'f' => FileKind::File,
                        b'd' => FileKind::Dir,
                        b'l' => FileKind::Symlink,
                        _ => FileKind::Other,
                    };
                    (String::from_utf8_lossy(&e[1..]).into_owned(), kind)
                })
                .collect()
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>> {
        if let Some((s, p)) = self.sftp_for("inspect", path).await? {
            match s.kind(p).await {
                Ok(kind) => return Ok(kind),
                Err(f) if f.wants_script() => {}
                Err(f) => return Err(self.sftp_error("inspect", path, f)),
            }
        }
        let out = self
            .script(
                "inspect",
                path,
                "if [ -L \"$1\" ]; then echo l; elif [ -d \"$1\" ]; then echo d; elif [ -f \"$1\" ]; then echo f; elif [ -e \"$1\" ]; then echo o; else echo n; fi",
                &[path.as_os_str()],
            )
            .await?;
        Ok(match out.stdout.first() {
            Some(b'l') => Some(FileKind::Symlink),
            Some(b'd') => Some(FileKind::Dir),
            Some(b'f') => Some(FileKind::File),
            Some(b'o') => Some(FileKind::Other),
            _ => None,
        })
    }
}

impl SshHost {
    /// `bytes` read from `path`, unless they are more than [`SshHostBuilder::max_read`] (the
    /// reader asks for one byte more than the limit to know).
    fn within_read_limit(&self, path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let max = self.inner.config.max_read;
        if bytes.len() as u64 > max {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "read file",
                self.located(&path.display().to_string()),
                format!(
                    "the file is larger than the limit of {} ({max} bytes; raise it with \
                     SshHostBuilder::max_read)",
                    format_size(max)
                ),
            )
            .permanent());
        }
        Ok(bytes)
    }

    /// `mkdir -p` over SFTP: the missing directories from the top down. `Ok(false)` when SFTP
    /// cannot say why it failed (a file in the way, say): the script words it.
    async fn create_dir_all_sftp(&self, s: &Sftp, path: &Path) -> Result<bool> {
        let fail = |f: Failure| {
            if f.wants_script() {
                Ok(false)
            } else {
                Err(self.sftp_error("create directory", path, f))
            }
        };
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            let Some(p) = wire(dir) else {
                return Ok(false);
            };
            match s.stat_kind(p).await {
                Ok(Some(FileKind::Dir)) => break,
                Ok(Some(_)) => return Ok(false),
                Ok(None) => missing.push(p),
                Err(f) => return fail(f),
            }
            at = dir.parent();
        }
        for p in missing.into_iter().rev() {
            match s.mkdir(p).await {
                Ok(()) => {}
                // Made meanwhile by someone else, or in the way: look.
                Err(f) if f.is(StatusCode::Failure) => {
                    if !matches!(s.stat_kind(p).await, Ok(Some(FileKind::Dir))) {
                        return Ok(false);
                    }
                }
                Err(f) => return fail(f),
            }
        }
        Ok(true)
    }
}
