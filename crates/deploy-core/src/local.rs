//! [`LocalHost`]: the machine this process runs on, as a [`Host`].

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{Command, FileKind, Host, Output};

/// The local machine: runs commands with tokio and moves files with the standard library.
///
/// - [`run`](Host::run) starts the program directly (no shell) in its own process group, with
///   `kill_on_drop`; standard input is the given bytes (then closed) or `/dev/null`. At most
///   [`LocalHost::MAX_CAPTURED_OUTPUT`] bytes of each output stream are kept. Once the program
///   exited, output is read for at most one more second (a background child it started may hold
///   the pipes open), then the call returns with what was captured. On timeout the whole process
///   group is killed and the call fails with [`ErrorKind::Timeout`].
/// - [`write_file`](Host::write_file) and [`upload`](Host::upload) write a temporary file
///   `.<name>.tmp-<pid>-<counter>` in the target directory, set its mode, fill and fsync it,
///   rename it into place and fsync the directory; on error the temporary file is removed.
///   Without a mode, `upload` copies the source file's permissions and `write_file` keeps those of
///   the file it replaces (a new file gets `0o666` less the umask).
/// - [`read_file`](Host::read_file) reads at most [`LocalHost::with_max_read`] bytes (64 MiB by
///   default) and refuses a larger file, naming it and the limit.
/// - Relative paths are relative to this process's working directory.
#[derive(Debug, Clone)]
pub struct LocalHost {
    max_read: u64,
}

impl Default for LocalHost {
    fn default() -> Self {
        Self {
            max_read: crate::fs::DEFAULT_MAX_READ,
        }
    }
}

impl LocalHost {
    /// At most this many bytes of standard output, and as many of standard error, are kept per
    /// command (16 MiB); the rest is read and discarded so that the command never blocks on a
    /// full pipe.
    pub const MAX_CAPTURED_OUTPUT: usize = 16 * 1024 * 1024;

    /// The local machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read files of at most `bytes` (64 MiB by default).
    pub fn with_max_read(mut self, bytes: u64) -> Self {
        self.max_read = bytes;
        self
    }
}

/// A process-wide counter that makes temporary names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<pid>-<counter>`: unique among the temporary names this process creates.
pub fn unique_suffix() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

fn on_local(path: &Path) -> String {
    format!("{} on local", path.display())
}

/// Run blocking file system work on tokio's blocking pool.
async fn blocking<T, F>(operation: &'static str, path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::new(
            ErrorKind::Other,
            operation,
            on_local(path),
            format!("the blocking task failed: {e}"),
        )),
    }
}

/// Where the content of an atomic write comes from.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Write `source` to `path` through a temporary file in the same directory (see [`LocalHost`]).
fn write_atomic(
    operation: &'static str,
    path: &Path,
    source: Source,
    mode: Option<u32>,
) -> Result<()> {
    let err = |e: io::Error| Error::io(operation, on_local(path), e);
    if path.file_name().is_none() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            operation,
            on_local(path),
            "the path has no file name",
        ));
    }

    // Open the source first, so that a missing source leaves nothing behind.
    let (reader, source_mode): (Box<dyn Read>, Option<u32>) = match source {
        Source::Bytes(b) => (Box::new(io::Cursor::new(b)), None),
        Source::File(local) => {
            let f = fs::File::open(&local).map_err(|e| {
                Error::io(operation, format!("{} (local source)", local.display()), e)
            })?;
            let m = f.metadata().map_err(|e| {
                Error::io(operation, format!("{} (local source)", local.display()), e)
            })?;
            if !m.is_file() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    operation,
                    format!("{} (local source)", local.display()),
                    "not a regular file",
                ));
            }
            (Box::new(f), Some(m.permissions().mode() & 0o7777))
        }
    };
    // Without an explicit mode: the source file's (an uploaded program stays executable), else
    // the replaced file's, else the umask decides.
    let mode = mode.or(source_mode).or_else(|| match fs::metadata(path) {
        Ok(m) if m.is_file() => Some(m.permissions().mode() & 0o7777),
        _ => None,
    });

    crate::fs::write_atomic(path, reader, mode).map_err(err)
}

/// How long output is still read after the command exited, for what its background children
/// (which inherited the pipes) write; after that the call returns with what was captured.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// One output stream being captured by its own task.
struct Capture {
    /// `None` once taken: a task still draining then discards what it reads.
    buf: Arc<Mutex<Option<Vec<u8>>>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Capture {
    /// Keep at most [`LocalHost::MAX_CAPTURED_OUTPUT`] bytes of `r` and discard the rest until
    /// end of file, so that the writer never blocks on a full pipe.
    fn start<R: AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Some(Vec::new())));
        let task = r.map(|mut r| {
            let buf = Arc::clone(&buf);
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let n = r.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    if let Some(b) = buf.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                        let room = LocalHost::MAX_CAPTURED_OUTPUT.saturating_sub(b.len());
                        b.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            })
        });
        Self { buf, task }
    }

    /// Wait for end of file (bounded by the caller).
    async fn finished(&mut self) -> io::Result<()> {
        match &mut self.task {
            Some(task) => {
                let r = task.await.unwrap_or(Ok(()));
                self.task = None;
                r
            }
            None => Ok(()),
        }
    }

    /// What was captured so far; a task still reading goes on draining in the background.
    fn take(self) -> Vec<u8> {
        self.buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Kill the process group led by `pid` (best effort: the leader itself is killed by the caller).
async fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[async_trait]
impl Host for LocalHost {
    fn name(&self) -> &str {
        "local"
    }

    async fn run(&self, command: &Command) -> Result<Output> {
        let operation = || format!("run `{}`", command.display());
        if let Some(cwd) = &command.cwd {
            // Checked first: spawn reports a missing directory like a missing program.
            if !tokio::fs::metadata(cwd)
                .await
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    operation(),
                    "on local",
                    format!("working directory {} does not exist", cwd.display()),
                ));
            }
        }
        let mut cmd = tokio::process::Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(if command.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that a timeout also kills what the command started.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &command.cwd {
            cmd.current_dir(cwd);
        }
        let program = command.program.to_string_lossy();
        let mut child = cmd.spawn().map_err(|e| {
            let kind = match e.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Io,
            };
            let cause = match kind {
                ErrorKind::NotFound => format!("program {program:?} not found"),
                _ => format!("cannot start program {program:?}"),
            };
            Error::new(kind, operation(), "on local", cause).with_source(e)
        })?;
        let pid = child.id();

        let stdin = child.stdin.take();
        let mut stdout = Capture::start(child.stdout.take());
        let mut stderr = Capture::start(child.stderr.take());
        let input = command.stdin.as_deref();
        let feed = async move {
            if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
                // A command that does not read its input closes the pipe: not an error.
                let _ = pipe.write_all(bytes).await;
                let _ = pipe.shutdown().await;
            }
        };
        let exited = async { tokio::join!(feed, child.wait()).1 };
        let status = match command.timeout {
            Some(limit) => tokio::time::timeout(limit, exited).await.ok(),
            None => Some(exited.await),
        };
        let Some(status) = status else {
            if let Some(pid) = pid {
                kill_group(pid).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            stdout.abort();
            stderr.abort();
            let limit = command.timeout.unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Timeout,
                operation(),
                "on local",
                format!("killed after {}", humantime::format_duration(limit)),
            ));
        };
        // A background child holding the pipes must not keep this call waiting forever.
        let drained = async { tokio::join!(stdout.finished(), stderr.finished()) };
        let read = tokio::time::timeout(OUTPUT_GRACE, drained).await;
        let io_err = |e: io::Error| Error::io(operation(), "on local", e);
        let status = status.map_err(io_err)?;
        if let Ok((out, err)) = read {
            out.and(err).map_err(io_err)?;
        }
        Ok(Output::new(
            status.code(),
            status.signal(),
            stdout.take(),
            stderr.take(),
        ))
    }

    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
        let p = path.to_path_buf();
        let contents = contents.to_vec();
        blocking("write file", path, move || {
            write_atomic("write file", &p, Source::Bytes(contents), mode)
        })
        .await
    }

    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()> {
        let p = path.to_path_buf();
        let l = local.to_path_buf();
        blocking("upload to", path, move || {
            write_atomic("upload to", &p, Source::File(l), mode)
        })
        .await
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let (p, limit) = (path.to_path_buf(), self.max_read);
        blocking("read file", path, move || {
            let f = fs::File::open(&p).map_err(|e| Error::io("read file", on_local(&p), e))?;
            crate::fs::read_limited(f, limit).map_err(|e| Error::io("read file", on_local(&p), e))
        })
        .await
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        let p = path.to_path_buf();
        blocking("remove", path, move || {
            let r = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove", on_local(&p), e)),
            }
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        tokio::fs::rename(from, to).await.map_err(|e| {
            Error::io(
                "rename",
                format!("{} to {} on local", from.display(), to.display()),
                e,
            )
        })
    }

    async fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        tokio::fs::symlink(target, link).await.map_err(|e| {
            Error::io(
                "create symlink",
                format!("{} -> {} on local", link.display(), target.display()),
                e,
            )
        })
    }

    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>> {
        match tokio::fs::read_link(link).await {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read symlink", on_local(link), e)),
        }
    }

    async fn create_dir_all(&self, path: &Path) -> Result<()> {
        tokio::fs::create_dir_all(path)
            .await
            .map_err(|e| Error::io("create directory", on_local(path), e))
    }

    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>> {
        let p = path.to_path_buf();
        blocking("list directory", path, move || {
            let err = |e| Error::io("list directory", on_local(&p), e);
            let mut entries = Vec::new();
            for entry in fs::read_dir(&p).map_err(err)? {
                let entry = entry.map_err(err)?;
                // `DirEntry::file_type` does not follow symlinks.
                let kind = kind_of(entry.file_type().map_err(err)?);
                // Non-UTF-8 names are listed lossily rather than failing the whole listing.
                entries.push((entry.file_name().to_string_lossy().into_owned(), kind));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(entries)
        })
        .await
    }

    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>> {
        match tokio::fs::symlink_metadata(path).await {
            Ok(m) => Ok(Some(kind_of(m.file_type()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("inspect", on_local(path), e)),
        }
    }
}

fn kind_of(t: fs::FileType) -> FileKind {
    if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn missing_program_is_not_found_and_named() {
        let e = LocalHost::new()
            .run(&Command::new("deploy-no-such-program-42"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("deploy-no-such-program-42"), "{e}");
    }

    #[tokio::test]
    async fn missing_cwd_is_named() {
        let cmd = Command::new("true").cwd("/nonexistent/deploy-dir");
        let e = LocalHost::new().run(&cmd).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("/nonexistent/deploy-dir"), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The shell starts a background child that would outlive a plain kill of the shell.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let cmd = Command::from_argv(["sh", "-c", &script])
            .unwrap()
            .timeout(Duration::from_millis(500));
        let started = Instant::now();
        let e = LocalHost::new().run(&cmd).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains("sleep 30"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let pid = pid.trim();
        let mut gone = false;
        for _ in 0..50 {
            // A killed grandchild is reparented and reaped by init; /proc/<pid> disappears.
            if !Path::new(&format!("/proc/{pid}")).exists() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "background child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipes_does_not_block_run() {
        let cmd = Command::from_argv(["sh", "-c", "echo started; sleep 5 &"]).unwrap();
        let started = Instant::now();
        let out = LocalHost::new().run(&cmd).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout, b"started\n");
    }

    #[tokio::test]
    async fn output_is_bounded_and_the_command_does_not_block() {
        let n = LocalHost::MAX_CAPTURED_OUTPUT + 1024 * 1024;
        let cmd = Command::from_argv(["head", "-c", &n.to_string(), "/dev/zero"]).unwrap();
        let out = LocalHost::new().run(&cmd).await.unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.len(), LocalHost::MAX_CAPTURED_OUTPUT);
    }

    #[tokio::test]
    async fn write_file_keeps_the_mode_of_the_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let host = LocalHost::new();
        host.write_file(&p, b"1", Some(0o604)).await.unwrap();
        host.write_file(&p, b"2", None).await.unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o604);
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
        let names: Vec<_> = host
            .list_dir(dir.path())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[tokio::test]
    async fn failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = LocalHost::new();
        // The target is a directory: the rename fails after the temporary file was written.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/x"), b"x").unwrap();
        let e = host
            .write_file(&dir.path().join("d"), b"data", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/d on local"), "{e}");
        let names: Vec<_> = host
            .list_dir(dir.path())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["d"]);
    }

    #[tokio::test]
    async fn upload_of_missing_source_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = LocalHost::new()
            .upload(&dir.path().join("nope"), &dir.path().join("dest"), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("nope (local source)"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
