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
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::host::Client;

/// The extension that renames over an existing file atomically (`rename(2)`).
const POSIX_RENAME: &str = "posix-rename@openssh.com";
/// The extension that fsyncs an open file.
const FSYNC: &str = "fsync@openssh.com";
/// Bytes per read or write request (OpenSSH's server accepts up to 256 KiB).
pub(crate) const CHUNK: usize = 32 * 1024;
/// Write requests in flight at once during a transfer.
const IN_FLIGHT: usize = 16;
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
}

/// What the host knows about SFTP on its server.
pub(crate) enum Slot {
    /// Not tried on the current connection.
    Untried,
    Open(Arc<Sftp>),
    /// The server does not offer it (or it was turned off): scripts only.
    Off,
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
}

impl Failure {
    pub(crate) fn is(&self, code: StatusCode) -> bool {
        matches!(self, Self::Status(c, _) if *c == code)
    }
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
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| OpenError::Failed(format!("request the sftp subsystem: {e}")))?;
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
        .map_err(|_| OpenError::Failed("no answer to the subsystem request".to_owned()))?;
        accepted?;
        let config = Config {
            request_timeout_secs: timeout.as_secs().max(1),
            ..Config::default()
        };
        let raw = RawSftpSession::new_with_config(channel.into_stream(), config);
        let version = tokio::time::timeout(OPEN_TIMEOUT, raw.init())
            .await
            .map_err(|_| OpenError::Failed("no SFTP version packet".to_owned()))?
            .map_err(|e| OpenError::Failed(format!("SFTP init: {e}")))?;
        let has = |name: &str| version.extensions.get(name).is_some_and(|v| v == "1");
        if !has(POSIX_RENAME) {
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
        })
    }

    /// Whether the session can still be used.
    pub(crate) fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.handle.is_closed()
    }

    fn failure(&self, e: SftpError) -> Failure {
        match e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    self.broken.store(true, Ordering::Relaxed);
                    Failure::Lost(s.status_code.to_string())
                }
                code => Failure::Status(code, s.error_message),
            },
            SftpError::Timeout => {
                self.broken.store(true, Ordering::Relaxed);
                Failure::Lost("no SFTP answer in time".to_owned())
            }
            other => {
                self.broken.store(true, Ordering::Relaxed);
                Failure::Lost(format!("the SFTP channel failed: {other}"))
            }
        }
    }

    /// What is at `path` (not following a last symlink); `None` if nothing.
    pub(crate) async fn kind(&self, path: &str) -> SftpResult<Option<FileKind>> {
        match self.raw.lstat(path).await {
            Ok(a) => Ok(Some(kind_of(&a.attrs))),
            Err(e) => match self.failure(e) {
                f if f.is(StatusCode::NoSuchFile) => Ok(None),
                f => Err(f),
            },
        }
    }

    /// What `path` resolves to (following symlinks); `None` if nothing.
    pub(crate) async fn stat_kind(&self, path: &str) -> SftpResult<Option<FileKind>> {
        match self.raw.stat(path).await {
            Ok(a) => Ok(Some(kind_of(&a.attrs))),
            Err(e) => match self.failure(e) {
                f if f.is(StatusCode::NoSuchFile) => Ok(None),
                f => Err(f),
            },
        }
    }

    /// The permission bits of the regular file at `path`, if there is one.
    pub(crate) async fn file_mode(&self, path: &str) -> SftpResult<Option<u32>> {
        match self.raw.lstat(path).await {
            Ok(a) if kind_of(&a.attrs) == FileKind::File => {
                Ok(a.attrs.permissions.map(|p| p & 0o7777))
            }
            Ok(_) => Ok(None),
            Err(e) => match self.failure(e) {
                f if f.is(StatusCode::NoSuchFile) => Ok(None),
                f => Err(f),
            },
        }
    }

    /// Where the symlink `path` points.
    pub(crate) async fn read_link(&self, path: &str) -> SftpResult<String> {
        match self.raw.readlink(path).await {
            Ok(name) => name
                .files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or_else(|| Failure::Lost("an empty answer to readlink".to_owned())),
            Err(e) => Err(self.failure(e)),
        }
    }

    /// Create the symlink `link` pointing at `target`.
    pub(crate) async fn symlink(&self, target: &str, link: &str) -> SftpResult<()> {
        // OpenSSH's server reads SSH_FXP_SYMLINK's two paths in the reverse order of the draft
        // (target first), and the crate sends them in the order given: target first, so that
        // OpenSSH creates `link`.
        self.raw
            .symlink(target, link)
            .await
            .map(drop)
            .map_err(|e| self.failure(e))
    }

    /// `rename(2)`: replaces `to` atomically.
    pub(crate) async fn rename(&self, from: &str, to: &str) -> SftpResult<()> {
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
    }

    /// Remove the file or symlink `path`.
    pub(crate) async fn remove_file(&self, path: &str) -> SftpResult<()> {
        self.raw
            .remove(path)
            .await
            .map(drop)
            .map_err(|e| self.failure(e))
    }

    /// Create the directory `path` (its parent must exist).
    pub(crate) async fn mkdir(&self, path: &str) -> SftpResult<()> {
        self.raw
            .mkdir(path, FileAttributes::empty())
            .await
            .map(drop)
            .map_err(|e| self.failure(e))
    }

    /// The entries of the directory `path` (without `.` and `..`), unsorted.
    pub(crate) async fn list(&self, path: &str) -> SftpResult<Vec<(String, FileKind)>> {
        let handle = self
            .raw
            .opendir(path)
            .await
            .map_err(|e| self.failure(e))?
            .handle;
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
        result.map(|()| entries)
    }

    /// The first `limit` bytes of the file `path` (at most; a longer file gives `limit`).
    pub(crate) async fn read(&self, path: &str, limit: u64) -> SftpResult<Vec<u8>> {
        let handle = self
            .raw
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| self.failure(e))?
            .handle;
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
        result.map(|()| out)
    }

    /// Create `tmp` (which must not exist), write `source` into it (`size` bytes expected), set
    /// `mode` if given, fsync; on any failure the file is removed. Not renamed: the caller does.
    pub(crate) async fn write_new(
        &self,
        tmp: &str,
        source: Source<'_>,
        size: u64,
        mode: Option<u32>,
    ) -> SftpResult<WriteEnd> {
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
            .map_err(|e| self.failure(e))?
            .handle;
        let written = self.fill(&handle, source, mode).await;
        let closed = self.raw.close(handle).await.map_err(|e| self.failure(e));
        let end = match (written, closed) {
            (Ok(n), Ok(_)) if n == size => return Ok(WriteEnd::Complete),
            (Ok(n), Ok(_)) => Ok(WriteEnd::Short(n)),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        let _ = self.raw.remove(tmp).await;
        end
    }

    async fn fill(
        &self,
        handle: &str,
        mut source: Source<'_>,
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

/// Where the bytes of a written file come from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    File(tokio::fs::File),
}

impl Source<'_> {
    async fn next_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
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

/// The kind of a file from its attributes.
fn kind_of(attrs: &FileAttributes) -> FileKind {
    match attrs.permissions.map(|p| p & 0o170_000) {
        Some(0o040_000) => FileKind::Dir,
        Some(0o100_000) => FileKind::File,
        Some(0o120_000) => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// `path` as SFTP carries it (UTF-8), if it can.
pub(crate) fn wire(path: &Path) -> Option<&str> {
    path.to_str()
}
