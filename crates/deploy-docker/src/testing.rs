//! A real Docker Engine for tests: [`DockerdFixture`] (a private `dockerd` in a temporary
//! directory on its own socket), [`DockerdFixture::build_test_image`] (a tiny image built
//! offline), and [`RecordingHost`] (every command a target runs, for assertions). Behind the
//! `testing` feature.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::testing::process::{ChildGuard, Signal, signal};
use deploy_core::{Command, Error, ErrorKind, FileKind, Host, Output, Result};

/// The engine binary the fixture runs.
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The docker client the fixture and its helpers use: Debian's `/usr/bin/docker` when present
/// (the client packaged with the engine), else `docker` from `PATH`.
pub fn docker_program() -> String {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker".to_owned()
    } else {
        "docker".to_owned()
    }
}

fn fixture_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, "start", "test dockerd", message)
}

/// A private `dockerd` with its data root, exec root, pid file and socket in a temporary
/// directory: no bridge, no iptables (only `--network host` containers get network — the
/// application listens on the slot's port itself), overlay2 storage. It runs its own
/// containerd under its exec root. An empty daemon configuration
/// (`--config-file <dir>/daemon.json`, `{}`) keeps the machine's `/etc/docker/daemon.json` out.
///
/// Dropping the fixture stops only the processes this engine started, each by its PID: it
/// removes every container through its own socket (`docker rm -f`: their shims exit), records
/// the engine's processes — dockerd's descendants (its containerd), the containerd of
/// `exec/containerd/containerd.pid` and, for a container left over, its shim and init process
/// (from the `init.pid` runc wrote under the exec root) — with their start times, stops the
/// engine (TERM, up to 20 s, then KILL), then KILLs those recorded processes still alive whose
/// start time is unchanged (a reused PID is left alone). It unmounts everything left mounted
/// under the directory (deepest first) and removes it.
///
/// ```no_run
/// let engine = deploy_docker::testing::DockerdFixture::start()?;
/// let out = engine.docker(&["version", "--format", "{{.Server.Version}}"])?;
/// # Ok::<(), deploy_core::Error>(())
/// ```
pub struct DockerdFixture {
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
    program: String,
}

impl fmt::Debug for DockerdFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerdFixture")
            .field("dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(ChildGuard::id))
            .finish()
    }
}

impl DockerdFixture {
    /// Start an engine and wait until `docker version` answers; fails with the install command
    /// when dockerd is missing.
    pub fn start() -> Result<Self> {
        if !Path::new(DOCKERD).exists() {
            return Err(fixture_error(format!(
                "{DOCKERD} is missing; install it with `apt-get install docker.io` \
                 (scripts/install-servers.sh does)"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("deploy-dockerd-")
            .tempdir()
            .map_err(|e| fixture_error("cannot create its temporary directory").with_source(e))?;
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log"))
            .map_err(|e| fixture_error("cannot create dockerd.log").with_source(e))?;
        let p = |name: &str| d.join(name).to_string_lossy().into_owned();
        std::fs::write(d.join("daemon.json"), "{}\n")
            .map_err(|e| fixture_error("cannot write daemon.json").with_source(e))?;
        let child = StdCommand::new(DOCKERD)
            .args(["--config-file", &p("daemon.json")])
            .args(["--data-root", &p("data")])
            .args(["--exec-root", &p("exec")])
            .args(["--pidfile", &p("docker.pid")])
            .args(["-H", &format!("unix://{}", p("docker.sock"))])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--storage-driver=overlay2",
                // Containers still running when the fixture is dropped get this long.
                "--shutdown-timeout=5",
            ])
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| fixture_error("dup log").with_source(e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| fixture_error(format!("cannot run {DOCKERD}")).with_source(e))?;
        let mut fixture = Self {
            dir,
            child: Some(ChildGuard::new(child).grace(Duration::from_secs(20))),
            program: docker_program(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = fixture.child.as_mut()
                && let Ok(Some(status)) = child.child().try_wait()
            {
                return Err(fixture_error(format!(
                    "{DOCKERD} exited with {status}: {}",
                    fixture.log_tail()
                )));
            }
            if let Ok(out) = fixture.docker(&["version", "--format", "{{.Server.Version}}"])
                && out.success()
            {
                return Ok(fixture);
            }
            if Instant::now() > deadline {
                return Err(fixture_error(format!(
                    "{DOCKERD} did not answer within 30 s: {}",
                    fixture.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The engine's socket, as `-H` takes it: `unix:///tmp/deploy-dockerd-…/docker.sock`.
    pub fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// The docker client used ([`docker_program`]).
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::id)
    }

    /// Run `docker -H <socket> <args>` here (the legacy builder for `build`), whatever its
    /// exit status.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let out = StdCommand::new(&self.program)
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("run", format!("{} {}", self.program, args.join(" ")), e))?;
        Ok(Output::new(
            out.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            out.stdout,
            out.stderr,
        ))
    }

    /// [`docker`](Self::docker), failing unless it exits 0; its standard output.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        if !out.success() {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                format!("run docker {}", args.join(" ")),
                "on the test engine",
                out.stderr_text().trim().to_owned(),
            ));
        }
        Ok(out.stdout_text())
    }

    /// Build the image `tag` offline (`docker build` from `scratch`): a static busybox serving
    /// `GET /health` → `{"status":"ok","version":"<version>"}` with its `httpd` on
    /// `127.0.0.1:$PORT` (set `PORT` in the container's environment; use `--network host`),
    /// a `HEALTHCHECK` every second that fetches it (or, when `healthy` is false, one that
    /// always fails saying `probe says no`), and the label `org.example.version`.
    pub fn build_test_image(&self, tag: &str, version: &str, healthy: bool) -> Result<()> {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                fixture_error(
                    "busybox is missing; install it with `apt-get install busybox-static`",
                )
            })?;
        let binary = std::fs::read(busybox).map_err(|e| Error::io("read", busybox, e))?;
        if elf_has_interpreter(&binary) {
            return Err(fixture_error(format!(
                "{busybox} is linked dynamically and cannot run alone in an image; \
                 install `apt-get install busybox-static`"
            )));
        }
        let ctx = self
            .dir
            .path()
            .join("images")
            .join(tag.replace(['/', ':'], "_"));
        let io = |what: &str, e: std::io::Error| Error::io("build test image", what.to_owned(), e);
        let _ = std::fs::remove_dir_all(&ctx);
        let bin = ctx.join("rootfs/bin");
        std::fs::create_dir_all(&bin).map_err(|e| io("rootfs", e))?;
        std::fs::create_dir_all(ctx.join("rootfs/www")).map_err(|e| io("www", e))?;
        std::fs::copy(busybox, bin.join("busybox")).map_err(|e| io("busybox", e))?;
        for applet in ["sh", "httpd", "wget", "env", "cat", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| io(applet, e))?;
        }
        std::fs::write(
            ctx.join("rootfs/www/health"),
            format!("{{\"status\":\"ok\",\"version\":\"{version}\"}}\n"),
        )
        .map_err(|e| io("health", e))?;
        let check = if healthy {
            "wget -q -O- http://127.0.0.1:$PORT/health || exit 1"
        } else {
            "echo probe says no; exit 1"
        };
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch\n\
                 COPY rootfs/ /\n\
                 ENV PORT=8080\n\
                 LABEL org.example.version=\"{version}\"\n\
                 HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD {check}\n\
                 CMD [\"/bin/sh\", \"-c\", \"exec httpd -f -p 127.0.0.1:$PORT -h /www\"]\n"
            ),
        )
        .map_err(|e| io("Dockerfile", e))?;
        self.docker_ok(&["build", "-q", "-t", tag, &ctx.to_string_lossy()])?;
        Ok(())
    }

    /// `docker save` the image `tag` to `path` (an image archive, as a release's artifact).
    pub fn save_image(&self, tag: &str, path: &Path) -> Result<()> {
        self.docker_ok(&["save", "-o", &path.to_string_lossy(), tag])
            .map(drop)
    }

    /// Unmount every mount point under the fixture's directory, deepest first.
    fn unmount_all(&self) {
        let dir = self.dir.path();
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape_mount_path(p)))
            .filter(|p| p.starts_with(dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            let ok = StdCommand::new("umount")
                .arg(&p)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = StdCommand::new("umount")
                    .arg("-l")
                    .arg(&p)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Run `docker -H <socket> <args>` for at most `limit` (then KILL that client, which this
    /// fixture started); its standard output when it exited 0.
    fn docker_bounded(&self, args: &[&str], limit: Duration) -> Option<String> {
        let mut child = StdCommand::new(&self.program)
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let mut out = String::new();
                    std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out).ok()?;
                    return status.success().then_some(out);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Remove every container through this engine's socket (`docker rm -f`): their shims and
    /// processes exit with them.
    fn remove_containers(&self) {
        let Some(ids) = self.docker_bounded(&["ps", "-aq"], Duration::from_secs(10)) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        let _ = self.docker_bounded(&args, Duration::from_secs(30));
    }

    /// The processes this engine started, with their start times: the descendants of dockerd
    /// (`engine`), the containerd named by `exec/containerd/containerd.pid`, and for each
    /// container still there (an `init.pid` under the exec root) its init process and its
    /// shim (the init's parent, when it is a `containerd-shim`).
    fn engine_processes(&self, engine: u32) -> Vec<Proc> {
        let me = std::process::id();
        let mut found: Vec<u32> = descendants(engine);
        let exec = self.dir.path().join("exec/containerd");
        if let Some(pid) = read_pid(&exec.join("containerd.pid"))
            && comm(pid).as_deref() == Some("containerd")
        {
            found.push(pid);
        }
        let tasks = exec.join("daemon/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for task in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let Some(init) = read_pid(&task.path().join("init.pid")) else {
                    continue;
                };
                let Some(shim) = proc_stat(init).map(|s| s.ppid) else {
                    continue;
                };
                if comm(shim).is_some_and(|c| c.starts_with("containerd-shim")) {
                    found.extend([init, shim]);
                    found.extend(descendants(shim));
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .filter(|&pid| pid > 1 && pid != me && pid != engine)
            .filter_map(|pid| {
                Some(Proc {
                    pid,
                    start: proc_stat(pid)?.start,
                })
            })
            .collect()
    }
}

/// A process recorded by its PID and start time (clock ticks since boot, `/proc/<pid>/stat`'s
/// 22nd field): the same PID with another start time is another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    /// Whether this very process is still there (a zombie counts as gone).
    fn alive(self) -> bool {
        proc_stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z')
    }
}

/// The fields of `/proc/<pid>/stat` the fixture reads.
struct Stat {
    state: char,
    ppid: u32,
    start: u64,
}

fn proc_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// `/proc/<pid>/stat`'s state, parent and start time; the command name in parentheses may
/// hold spaces and parentheses, so the fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3rd field), ppid (4th), …, starttime (22nd).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Every process below `root` in the parent tree, from one reading of `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, proc_stat(pid)?.ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == p && !out.contains(&pid) && pid != root {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// Whether the 64-bit little-endian ELF `bytes` asks for a program interpreter (`PT_INTERP`):
/// a dynamically linked program. Anything else reads as `false`.
fn elf_has_interpreter(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let Ok(phoff) = usize::try_from(u64::from_le_bytes(
        bytes[0x20..0x28].try_into().expect("8 bytes"),
    )) else {
        return false;
    };
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        bytes
            .get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == 3)
    })
}

/// A mount point as `/proc/self/mountinfo` writes it, with `\040` and friends decoded.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = s
                .get(i + 1..i + 4)
                .filter(|o| o.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for DockerdFixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let engine = child.id();
            if !child.exited() {
                self.remove_containers();
            }
            let ours = self.engine_processes(engine);
            // TERM, then KILL after the grace period. A TERMed engine takes its containerd
            // along; give the recorded processes a moment, then KILL those still there.
            child.stop();
            let wait_gone = |limit: Duration| {
                let deadline = Instant::now() + limit;
                while Instant::now() < deadline && ours.iter().any(|p| p.alive()) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            wait_gone(Duration::from_secs(3));
            for p in &ours {
                if p.alive() {
                    let _ = signal(p.pid, Signal::Kill);
                }
            }
            wait_gone(Duration::from_secs(5));
        }
        self.unmount_all();
    }
}

/// A [`Host`] that records every command run through it (program, arguments, environment
/// names, standard input) before passing it to the host it wraps — to assert what a target
/// ran, and what it never put on a command line. It keeps whole commands, standard input and
/// environment values included: a test tool, never for production.
#[derive(Debug, Clone)]
pub struct RecordingHost {
    inner: Arc<dyn Host>,
    commands: Arc<Mutex<Vec<Command>>>,
}

impl RecordingHost {
    /// Record the commands run on `inner`.
    pub fn new(inner: Arc<dyn Host>) -> Self {
        Self {
            inner,
            commands: Arc::default(),
        }
    }

    /// Every command run so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.lock().expect("not poisoned").clone()
    }

    /// Forget the commands recorded so far.
    pub fn clear(&self) {
        self.commands.lock().expect("not poisoned").clear();
    }

    /// The commands whose first argument that is not an option value names `subcommand`
    /// (`load`, `pull`, `create`, `start`): `docker -H x load …` counts as `load`.
    pub fn docker_subcommands(&self, subcommand: &str) -> usize {
        self.commands()
            .iter()
            .filter(|c| docker_subcommand(c).as_deref() == Some(subcommand))
            .count()
    }
}

/// The version `127.0.0.1:port` reports on `/health` (the test image's answer, field
/// `version`), waiting up to 10 s for an answer; `None` if none came.
pub async fn served_version(port: u16) -> Option<deploy_core::Version> {
    use deploy_core::{Endpoint, HealthProbe, HttpProbe, ProbeRequest, TargetId};
    let probe = HttpProbe::builder()
        .version_field("version")
        .build()
        .expect("a valid probe");
    let req = ProbeRequest::new(
        TargetId::new("served").expect("a valid id"),
        Endpoint::http("127.0.0.1", port),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe.check(&req).await {
            Ok(h) if h.answered => return h.version,
            _ if Instant::now() > deadline => return None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The docker or docker-compose subcommand of `c` (`load`, `create`, `start`, `down`, …),
/// skipping the global options before it and their values (`-H <socket>`, compose's
/// `-p <project>`, `-f <file>`, `--env-file <file>`).
pub fn docker_subcommand(c: &Command) -> Option<String> {
    let mut args = c.args.iter().map(|a| a.to_string_lossy().into_owned());
    loop {
        let a = args.next()?;
        if matches!(a.as_str(), "-H" | "--host" | "-p" | "-f" | "--env-file") {
            args.next();
            continue;
        }
        return Some(a);
    }
}

#[async_trait]
impl Host for RecordingHost {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn run(&self, command: &Command) -> Result<Output> {
        self.commands
            .lock()
            .expect("not poisoned")
            .push(command.clone());
        self.inner.run(command).await
    }
    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
        self.inner.write_file(path, contents, mode).await
    }
    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()> {
        self.inner.upload(local, path, mode).await
    }
    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        self.inner.read_file(path).await
    }
    async fn remove(&self, path: &Path) -> Result<()> {
        self.inner.remove(path).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await
    }
    async fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        self.inner.symlink(target, link).await
    }
    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>> {
        self.inner.read_link(link).await
    }
    async fn create_dir_all(&self, path: &Path) -> Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>> {
        self.inner.list_dir(path).await
    }
    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>> {
        self.inner.file_kind(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_are_told_from_static_ones() {
        assert!(elf_has_interpreter(&std::fs::read("/bin/ls").unwrap()));
        if let Ok(b) = std::fs::read("/usr/bin/busybox") {
            assert!(!elf_has_interpreter(&b), "busybox-static");
        }
        assert!(!elf_has_interpreter(b"#!/bin/sh\n"));
    }

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4531 (a) b (c) S 4506 4531 4531 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 9 0 \
                    123456 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.ppid, s.start), ('S', 4506, 123456));
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start > 0);
    }

    /// Run a container, `sleep 300`, and say its init process and shim.
    fn container_processes(engine: &DockerdFixture) -> (Proc, Proc) {
        engine
            .build_test_image("deploy-test/own:1.0.0", "1.0.0", true)
            .unwrap();
        let id = engine
            .docker_ok(&[
                "run",
                "-d",
                "--network",
                "host",
                "deploy-test/own:1.0.0",
                "sleep",
                "300",
            ])
            .unwrap();
        let pid: u32 = engine
            .docker_ok(&["inspect", "-f", "{{.State.Pid}}", id.trim()])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let init = proc_stat(pid).unwrap();
        let shim = init.ppid;
        assert!(comm(shim).unwrap().starts_with("containerd-shim"));
        let at = |pid: u32| Proc {
            pid,
            start: proc_stat(pid).unwrap().start,
        };
        (at(pid), at(shim))
    }

    fn containerd_of(engine: &DockerdFixture) -> Proc {
        let pid = descendants(engine.pid())
            .into_iter()
            .find(|&p| comm(p).as_deref() == Some("containerd"))
            .expect("dockerd runs its containerd");
        Proc {
            pid,
            start: proc_stat(pid).unwrap().start,
        }
    }

    #[test]
    fn the_fixture_stops_its_own_processes_and_no_other() {
        let engine = DockerdFixture::start().unwrap();
        let dir = engine.dir().to_path_buf();
        let (init, shim) = container_processes(&engine);
        let containerd = containerd_of(&engine);
        // Bystanders that merely name the fixture's directory in their command lines.
        let mut tail = StdCommand::new("tail")
            .arg("-f")
            .arg(dir.join("dockerd.log"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut sleeper = StdCommand::new("sh")
            .args(["-c", "exec sleep 30", "sh"])
            .arg(&dir)
            .spawn()
            .unwrap();
        let engine_pid = engine.pid();
        let t0 = Instant::now();
        drop(engine);
        eprintln!("dropped (one running container) in {:?}", t0.elapsed());
        let tail_alive = tail.try_wait().unwrap().is_none();
        let sleeper_alive = sleeper.try_wait().unwrap().is_none();
        let _ = tail.kill();
        let _ = sleeper.kill();
        let _ = tail.wait();
        let _ = sleeper.wait();
        assert!(
            tail_alive,
            "`tail -f <dir>/dockerd.log` survives the fixture"
        );
        assert!(sleeper_alive, "`sleep 30 <dir>` survives the fixture");
        assert!(proc_stat(engine_pid).is_none(), "dockerd gone");
        for (name, p) in [("containerd", containerd), ("shim", shim), ("init", init)] {
            assert!(!p.alive(), "{name} {} gone", p.pid);
        }
        assert!(!dir.exists(), "{} removed", dir.display());
    }

    #[test]
    fn a_dead_engine_leaves_no_process_behind() {
        let engine = DockerdFixture::start().unwrap();
        let dir = engine.dir().to_path_buf();
        let (init, shim) = container_processes(&engine);
        let containerd = containerd_of(&engine);
        // The engine dies on its own: nothing is removed through its socket, and containerd
        // is no longer its child.
        signal(engine.pid(), Signal::Kill).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let outliving: Vec<u32> = [containerd, shim, init]
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        eprintln!(
            "0.5 s after dockerd's KILL, still running: {outliving:?} (containerd, shim, init)"
        );
        assert!(
            shim.alive() && init.alive(),
            "the container outlives its engine"
        );
        let t0 = Instant::now();
        drop(engine);
        eprintln!("dropped in {:?}", t0.elapsed());
        for (name, p) in [("containerd", containerd), ("shim", shim), ("init", init)] {
            assert!(!p.alive(), "{name} {} gone", p.pid);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "nothing mounted");
        assert!(!dir.exists(), "{} removed", dir.display());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b/c"), "/tmp/a b/c");
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
