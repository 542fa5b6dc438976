//! File operations over one SFTP channel per connection: each is a request and an answer on a
//! channel that stays open, where an exec channel costs the host a new process (the login
//! shell, then the command) for every `stat`. [`SshHost`](crate::SshHost) uses it when the
//! server offers the `sftp` subsystem with OpenSSH's `posix-rename@openssh.com` extension (an
//! atomic replace); otherwise, and for what SFTP cannot say precisely, it runs its scripts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deploy_core::FileKind;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use russh::ChannelMsg;
use russh::client::Handle;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::{Config, RawSftpSession};
use russh_sftp::extensions::FSYNC;
use russh_sftp::protocol::{FileAttributes, FileType, OpenFlags, Packet, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::host::{Client, Input};

/// The extension that renames over an existing file atomically (`rename(2)`).
const POSIX_RENAME: &str = "posix-rename@openssh.com";
/// Bytes per read or write request (OpenSSH's server accepts up to 256 KiB).
pub(crate) const CHUNK: usize = 32 * 1024;
/// Write requests in flight at once during a transfer.
const IN_FLIGHT: usize = 16;
/// How often an operation in flight looks whether its connection closed.
const CLOSED_POLL: Duration = Duration::from_millis(200);
/// How long the server has to accept the subsystem and answer its first packet.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open SFTP session on one connection.
pub(crate) struct Sftp {
    raw: RawSftpSession,
    /// The connection the channel lives on: the session is good only as long as it is.
    handle: Arc<Handle<Client>>,
    /// The channel counts against the host's channel limit for as long as it is open.
    _permit: OwnedSemaphorePermit,
    fsync: bool,
    /// Set when a request failed in a way that leaves the session unusable.
    broken: AtomicBool,
    /// Set when a symlink did not point where it was asked to (a server reading SYMLINK's
    /// paths in the draft's order, not OpenSSH's): symlinks are the script's from then on.
    no_symlinks: AtomicBool,
}

/// Closes a handle (and removes a temporary file) of a call dropped before it did so itself:
/// a caller's timeout or `select!` must not leave either behind on the host.
struct Guard {
    sftp: Arc<Sftp>,
    handle: Option<String>,
    tmp: Option<String>,
}

impl Guard {
    fn disarm(mut self) {
        self.handle = None;
        self.tmp = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.handle.is_none() && self.tmp.is_none() {
            return;
        }
        let (sftp, handle, tmp) = (Arc::clone(&self.sftp), self.handle.take(), self.tmp.take());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(h) = handle {
                    let _ = sftp.raw.close(h).await;
                }
                if let Some(t) = tmp {
                    let _ = sftp.raw.remove(t).await;
                }
            });
        }
    }
}

/// What the host knows about SFTP on its server.
pub(crate) enum Slot {
    /// Not tried on the current connection.
    Untried,
    Open(Arc<Sftp>),
    /// The server does not offer it (or it was turned off): scripts only.
    Off,
    /// Opening it failed on this connection: scripts until the connection is replaced.
    NotOn(Arc<Handle<Client>>),
}

/// Why a session could not be opened.
pub(crate) enum OpenError {
    /// The server does not offer what is needed; the words say what.
    Refused(String),
    /// The channel or the connection failed: try again with the next operation.
    Failed(String),
}

/// What an SFTP failure means to the caller.
pub(crate) enum Failure {
    /// The server answered with this status.
    Status(StatusCode, String),
    /// No answer in time, or the channel failed: the session is dropped and the operation may
    /// or may not have happened.
    Lost(String),
    /// Reading the local source of a transfer failed.
    Source(std::io::Error),
    /// SFTP cannot answer this one faithfully (a target that is not UTF-8, a server whose
    /// symlinks point the wrong way): the script must.
    Unfit,
}

impl Failure {
    pub(crate) fn is(&self, code: StatusCode) -> bool {
        matches!(self, Self::Status(c, _) if *c == code)
    }

    /// Whether the script over an exec channel should try instead: SFTP's generic failure
    /// (another file system under a rename, a file in the way, a directory read as a file) and
    /// its "bad message" (EINVAL: `readlink` of what is not a link) say too little, and a
    /// restricted SFTP server (`internal-sftp -P …`, `-R`) may refuse what a command may do.
    pub(crate) fn wants_script(&self) -> bool {
        match self {
            Self::Status(code, _) => matches!(
                code,
                StatusCode::Failure
                    | StatusCode::BadMessage
                    | StatusCode::PermissionDenied
                    | StatusCode::OpUnsupported
            ),
            Self::Unfit => true,
            Self::Lost(_) | Self::Source(_) => false,
        }
    }
}

/// How a write of a new file failed.
pub(crate) enum WriteError {
    /// The temporary file could not be created: nothing was sent yet.
    Open(Failure),
    /// Later: the temporary file is removed (or left for the next session when the connection
    /// went).
    Write(Failure),
}

/// `SFTP_RESULT` of an operation.
pub(crate) type SftpResult<T> = std::result::Result<T, Failure>;

impl Sftp {
    /// Open the `sftp` subsystem on a new channel of `handle`.
    pub(crate) async fn open(
        handle: Arc<Handle<Client>>,
        permit: OwnedSemaphorePermit,
        timeout: Duration,
    ) -> std::result::Result<Self, OpenError> {
        let mut channel = handle
            .channel_open_session()
            .await
            .map_err(|e| OpenError::Failed(format!("open a channel: {e}")))?;
        if let Err(e) = channel.request_subsystem(true, "sftp").await {
            let _ = channel.close().await;
            return Err(OpenError::Failed(format!(
                "request the sftp subsystem: {e}"
            )));
        }
        let accepted = tokio::time::timeout(OPEN_TIMEOUT, async {
            loop {
                match channel.wait().await {
                    Some(ChannelMsg::Success) => return Ok(()),
                    Some(ChannelMsg::Failure) => {
                        return Err(OpenError::Refused(
                            "the server has no sftp subsystem".to_owned(),
                        ));
                    }
                    Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                        return Err(OpenError::Failed("the channel closed".to_owned()));
                    }
                    Some(_) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Failed(
                "no answer to the subsystem request".to_owned(),
            ))
        });
        if let Err(e) = accepted {
            // Else the server keeps the channel, and counts it against its MaxSessions.
            let _ = channel.close().await;
            return Err(e);
        }
        let config = Config {
            request_timeout_secs: timeout.as_secs().max(1),
            ..Config::default()
        };
        let raw = RawSftpSession::new_with_config(channel.into_stream(), config);
        let version = match tokio::time::timeout(OPEN_TIMEOUT, raw.init()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = raw.close_session();
                return Err(OpenError::Failed(format!("SFTP init: {e}")));
            }
            Err(_) => {
                let _ = raw.close_session();
                return Err(OpenError::Failed("no SFTP version packet".to_owned()));
            }
        };
        let has = |name: &str| version.extensions.get(name).is_some_and(|v| v == "1");
        if !has(POSIX_RENAME) {
            let _ = raw.close_session();
            return Err(OpenError::Refused(format!(
                "the server's SFTP (version {}) lacks {POSIX_RENAME}",
                version.version
            )));
        }
        Ok(Self {
            fsync: has(FSYNC),
            raw,
            handle,
            _permit: permit,
            broken: AtomicBool::new(false),
            no_symlinks: AtomicBool::new(false),
        })
    }

    /// `operation`, unless the connection closes first (`None`; the session is then given up).
    /// Requests in flight when the connection dies are never answered, and would each wait
    /// for their time limit.
    async fn watch<T>(&self, operation: impl std::future::Future<Output = T>) -> Option<T> {
        let closed = async {
            while !self.handle.is_closed() {
                tokio::time::sleep(CLOSED_POLL).await;
            }
        };
        tokio::select! {
            r = operation => Some(r),
            () = closed => {
                self.give_up();
                None
            }
        }
    }

    /// [`watch`](Self::watch) for an operation failing as [`Failure`]: a closed connection is
    /// [`Failure::Lost`].
    async fn watched<T>(
        &self,
        operation: impl std::future::Future<Output = SftpResult<T>>,
    ) -> SftpResult<T> {
        self.watch(operation).await.unwrap_or_else(|| Err(closed()))
    }

    /// Whether the session can still be used.
    pub(crate) fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.handle.is_closed()
    }

    fn failure(&self, e: SftpError) -> Failure {
        let why = match e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::NoConnection | StatusCode::ConnectionLost => s.status_code.to_string(),
                code => return Failure::Status(code, s.error_message),
            },
            SftpError::Timeout => "no SFTP answer in time".to_owned(),
            other => format!("the SFTP channel failed: {other}"),
        };
        self.give_up();
        Failure::Lost(why)
    }

    /// Stop using this session: requests still queued fail at once instead of each waiting
    /// for its time limit, and the next operation opens a new one.
    fn give_up(&self) {
        self.broken.store(true, Ordering::Relaxed);
        let _ = self.raw.close_session();
    }

    /// The attributes of `path` (of the link itself unless `follow`); `None` if nothing.
    async fn attrs(&self, path: &str, follow: bool) -> SftpResult<Option<FileAttributes>> {
        self.watched(async {
            let answer = if follow {
                self.raw.stat(path).await
            } else {
                self.raw.lstat(path).await
            };
            match answer {
                Ok(a) => Ok(Some(a.attrs)),
                Err(e) => match self.failure(e) {
                    f if f.is(StatusCode::NoSuchFile) => Ok(None),
                    f => Err(f),
                },
            }
        })
        .await
    }

    /// What is at `path` (not following a last symlink); `None` if nothing.
    pub(crate) async fn kind(&self, path: &str) -> SftpResult<Option<FileKind>> {
        Ok(self.attrs(path, false).await?.as_ref().map(kind_of))
    }

    /// What `path` resolves to (following symlinks); `None` if nothing.
    pub(crate) async fn stat_kind(&self, path: &str) -> SftpResult<Option<FileKind>> {
        Ok(self.attrs(path, true).await?.as_ref().map(kind_of))
    }

    /// The permission bits of the regular file at `path`, if there is one.
    pub(crate) async fn file_mode(&self, path: &str) -> SftpResult<Option<u32>> {
        Ok(self
            .attrs(path, false)
            .await?
            .filter(|a| kind_of(a) == FileKind::File)
            .and_then(|a| a.permissions)
            .map(|p| p & 0o7777))
    }

    /// Where the symlink `path` points.
    pub(crate) async fn read_link(&self, path: &str) -> SftpResult<String> {
        self.watched(async {
            match self.raw.readlink(path).await {
                // The crate decodes names lossily: a target that is not UTF-8 is the script's.
                Ok(name) => match name.files.into_iter().next() {
                    Some(f) if f.filename.contains('\u{FFFD}') => Err(Failure::Unfit),
                    Some(f) => Ok(f.filename),
                    None => Err(Failure::Unfit),
                },
                Err(e) => Err(self.failure(e)),
            }
        })
        .await
    }

    /// Create the symlink `link` pointing at `target`.
    pub(crate) async fn symlink(&self, target: &str, link: &str) -> SftpResult<()> {
        self.watched(async {
            if self.no_symlinks.load(Ordering::Relaxed) {
                return Err(Failure::Unfit);
            }
            // OpenSSH's server reads SSH_FXP_SYMLINK's two paths in the reverse order of the draft
            // (target first), and the crate sends them in the order given: target first, so that
            // OpenSSH creates `link`. Read back, since another server may read them the other way.
            self.raw
                .symlink(target, link)
                .await
                .map_err(|e| self.failure(e))?;
            match self.read_link(link).await {
                Ok(to) if to == target => Ok(()),
                Err(f @ Failure::Lost(_)) => Err(f),
                _ => {
                    tracing::warn!(
                        link,
                        target,
                        "the SFTP server made a symlink that does not point where asked; symlinks \
                     are made by `ln` from now on (a wrong link may be left at the target's path)"
                    );
                    self.no_symlinks.store(true, Ordering::Relaxed);
                    Err(Failure::Unfit)
                }
            }
        })
        .await
    }

    /// `rename(2)`: replaces `to` atomically.
    pub(crate) async fn rename(&self, from: &str, to: &str) -> SftpResult<()> {
        self.watched(async {
            let mut data = Vec::with_capacity(8 + from.len() + to.len());
            for s in [from, to] {
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            match self.raw.extended(POSIX_RENAME, data).await {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(s)) => Err(self.failure(SftpError::Status(s))),
                Ok(_) => Err(self.failure(SftpError::UnexpectedPacket)),
                Err(e) => Err(self.failure(e)),
            }
        })
        .await
    }

    /// Remove the file or symlink `path`.
    pub(crate) async fn remove_file(&self, path: &str) -> SftpResult<()> {
        self.watched(async {
            self.raw
                .remove(path)
                .await
                .map(drop)
                .map_err(|e| self.failure(e))
        })
        .await
    }

    /// Create the directory `path` (its parent must exist).
    pub(crate) async fn mkdir(&self, path: &str) -> SftpResult<()> {
        self.watched(async {
            self.raw
                .mkdir(path, FileAttributes::empty())
                .await
                .map(drop)
                .map_err(|e| self.failure(e))
        })
        .await
    }

    /// The entries of the directory `path` (without `.` and `..`), unsorted.
    pub(crate) async fn list(self: &Arc<Self>, path: &str) -> SftpResult<Vec<(String, FileKind)>> {
        self.watched(async {
            let handle = self
                .raw
                .opendir(path)
                .await
                .map_err(|e| self.failure(e))?
                .handle;
            let guard = self.guard(&handle, None);
            let mut entries = Vec::new();
            let result = loop {
                match self.raw.readdir(handle.as_str()).await {
                    Ok(name) => entries.extend(
                        name.files
                            .into_iter()
                            .filter(|f| f.filename != "." && f.filename != "..")
                            .map(|f| {
                                let kind = kind_of(&f.attrs);
                                (f.filename, kind)
                            }),
                    ),
                    Err(e) => match self.failure(e) {
                        f if f.is(StatusCode::Eof) => break Ok(()),
                        f => break Err(f),
                    },
                }
            };
            let _ = self.raw.close(handle).await;
            guard.disarm();
            result.map(|()| entries)
        })
        .await
    }

    /// The first `limit` bytes of the file `path` (at most; a longer file gives `limit`).
    /// One request of [`CHUNK`] bytes at a time: meant for the small files a deploy reads
    /// (histories, journals, links), not for large downloads over long round trips.
    pub(crate) async fn read(self: &Arc<Self>, path: &str, limit: u64) -> SftpResult<Vec<u8>> {
        self.watched(async {
            let handle = self
                .raw
                .open(path, OpenFlags::READ, FileAttributes::empty())
                .await
                .map_err(|e| self.failure(e))?
                .handle;
            let guard = self.guard(&handle, None);
            let mut out = Vec::new();
            let result = loop {
                let want = limit.saturating_sub(out.len() as u64).min(CHUNK as u64);
                if want == 0 {
                    break Ok(());
                }
                match self
                    .raw
                    .read(handle.as_str(), out.len() as u64, want as u32)
                    .await
                {
                    Ok(d) if d.data.is_empty() => break Ok(()),
                    Ok(d) => out.extend_from_slice(&d.data),
                    Err(e) => match self.failure(e) {
                        f if f.is(StatusCode::Eof) => break Ok(()),
                        f => break Err(f),
                    },
                }
            };
            let _ = self.raw.close(handle).await;
            guard.disarm();
            result.map(|()| out)
        })
        .await
    }

    /// Create `tmp` (which must not exist), write `source` into it (`size` bytes expected), set
    /// `mode` if given, fsync; on any failure the file is removed. Not renamed: the caller does.
    pub(crate) async fn write_new(
        self: &Arc<Self>,
        tmp: &str,
        source: Input<'_>,
        size: u64,
        mode: Option<u32>,
    ) -> Result<WriteEnd, WriteError> {
        self.watch(async {
            let mut attrs = FileAttributes::empty();
            // Private until the mode is set: the content may be a secret.
            attrs.permissions = Some(if mode.is_some() { 0o600 } else { 0o666 });
            let handle = self
                .raw
                .open(
                    tmp,
                    OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
                    attrs,
                )
                .await
                .map_err(|e| WriteError::Open(self.failure(e)))?
                .handle;
            let guard = self.guard(&handle, Some(tmp));
            let written = self.fill(&handle, source, mode).await;
            let closed = self.raw.close(handle).await.map_err(|e| self.failure(e));
            let end = match (written, closed) {
                (Ok(n), Ok(_)) if n == size => {
                    guard.disarm();
                    return Ok(WriteEnd::Complete);
                }
                (Ok(n), Ok(_)) => Ok(WriteEnd::Short(n)),
                (Err(e), _) | (Ok(_), Err(e)) => Err(WriteError::Write(e)),
            };
            guard.disarm();
            if self.usable() {
                let _ = self.raw.remove(tmp).await;
            }
            end
        })
        .await
        .unwrap_or_else(|| Err(WriteError::Write(closed())))
    }

    fn guard(self: &Arc<Self>, handle: &str, tmp: Option<&str>) -> Guard {
        Guard {
            sftp: Arc::clone(self),
            handle: Some(handle.to_owned()),
            tmp: tmp.map(str::to_owned),
        }
    }

    async fn fill(
        &self,
        handle: &str,
        mut source: Input<'_>,
        mode: Option<u32>,
    ) -> SftpResult<u64> {
        let mut offset = 0u64;
        let mut in_flight = FuturesUnordered::new();
        loop {
            let chunk = source.next_chunk().await.map_err(Failure::Source)?;
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len() as u64;
            in_flight.push(self.raw.write(handle, offset, chunk));
            offset += len;
            if in_flight.len() >= IN_FLIGHT
                && let Some(r) = in_flight.next().await
            {
                r.map_err(|e| self.failure(e))?;
            }
        }
        while let Some(r) = in_flight.next().await {
            r.map_err(|e| self.failure(e))?;
        }
        if let Some(m) = mode {
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(m & 0o7777);
            self.raw
                .fsetstat(handle, attrs)
                .await
                .map_err(|e| self.failure(e))?;
        }
        if self.fsync {
            self.raw.fsync(handle).await.map_err(|e| self.failure(e))?;
        }
        Ok(offset)
    }
}

/// How a write of a new file ended.
pub(crate) enum WriteEnd {
    Complete,
    /// Fewer bytes than expected came from the source (a local file that shrank).
    Short(u64),
}

impl Input<'_> {
    /// The next at most [`CHUNK`] bytes; empty at the end.
    async fn next_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Empty => Ok(Vec::new()),
            Self::Bytes(b) => {
                let n = b.len().min(CHUNK);
                let (head, rest) = b.split_at(n);
                *b = rest;
                Ok(head.to_vec())
            }
            Self::File(f) => {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    let r = f.read(&mut buf[n..]).await?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                buf.truncate(n);
                Ok(buf)
            }
        }
    }
}

/// The failure of an operation whose connection closed under it.
fn closed() -> Failure {
    Failure::Lost("the connection closed".to_owned())
}

/// The kind of a file from its attributes.
fn kind_of(attrs: &FileAttributes) -> FileKind {
    match attrs.file_type() {
        FileType::Dir => FileKind::Dir,
        FileType::File => FileKind::File,
        FileType::Symlink => FileKind::Symlink,
        FileType::Other => FileKind::Other,
    }
}

/// `path` as SFTP carries it (UTF-8), if it can.
pub(crate) fn wire(path: &Path) -> Option<&str> {
    path.to_str()
}
