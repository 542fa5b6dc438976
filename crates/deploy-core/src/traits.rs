//! The contract between the engine and the world: one trait per kind of thing a deploy touches.
//!
//! Every trait is object-safe (`Arc<dyn Target>`), `Send + Sync + Debug + 'static`, and async
//! through `async_trait`. Every method returns [`crate::Error`], which names the operation, the
//! object and the cause and says whether a retry may help. The engine wraps each call in a timeout
//! and retries only errors that say they are retryable, so every method that changes the world
//! must be **idempotent**: calling it twice with the same arguments leaves the world as calling
//! it once.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{
    BackupId, Endpoint, Health, MigrationStatus, Release, SchemaVersion, TargetId, Verdict,
    Version, Weights,
};

/// A place a release runs: a blue/green slot, or one instance of a fleet.
///
/// # Contract
/// - [`prepare`](Target::prepare) installs a release without making it current; it is
///   idempotent and leaves the current release serving.
/// - [`activate`](Target::activate) makes an already prepared version current and (re)starts the
///   service so that it serves that version; activating the current version again is allowed and
///   restarts nothing that need not restart. After `Ok`, [`current`](Target::current) returns
///   that version, and whatever answers at the [`endpoint`](Target::endpoint) is that version
///   (or nothing yet, while it starts): `activate` returns only once the old process stopped
///   answering. An old process still answering after `activate` is a broken activation — a
///   probe that reads the version reports the old one, and the engine fails the health wait at
///   that first answer, since it can never become healthy. Activating a version that was never prepared is an error of kind `NotFound`.
/// - [`stop`](Target::stop) stops serving (for `Recreate`); [`start`](Target::start) starts the
///   current version again. Both are idempotent.
/// - [`current`](Target::current) has no side effects; `None` means nothing was activated yet.
#[async_trait]
pub trait Target: fmt::Debug + Send + Sync + 'static {
    /// This target's name.
    fn id(&self) -> &TargetId;
    /// Where it serves, for probes and gates.
    fn endpoint(&self) -> Endpoint;
    /// The version that is current, if any.
    async fn current(&self) -> Result<Option<Version>>;
    /// Install `release` next to the current one, without activating it.
    async fn prepare(&self, release: &Release) -> Result<()>;
    /// Make `version` current and restart the service on it.
    async fn activate(&self, version: &Version) -> Result<()>;
    /// Stop serving.
    async fn stop(&self) -> Result<()>;
    /// Start serving the current version.
    async fn start(&self) -> Result<()>;
}

/// Moves user traffic between targets.
///
/// # Contract
/// - [`weights`](TrafficSwitch::weights) returns the weight of every target this switch knows,
///   as the load balancer applies it now (read back, not remembered), with no side effects.
/// - [`set_weights`](TrafficSwitch::set_weights) changes the named targets only, all at once from
///   the user's view where the balancer allows it; after `Ok`, `weights()` reports exactly the
///   weights set. A target with weight > 0 is taking traffic (a drained target is made ready).
///   Unknown targets are an error of kind `NotFound` and change nothing.
/// - [`drain`](TrafficSwitch::drain) stops sending *new* traffic to the target; established
///   sessions may finish. Afterwards its weight reads 0. Idempotent.
/// - [`active_sessions`](TrafficSwitch::active_sessions) is the number of sessions the balancer
///   still has on the target; "drained" means it reached 0. Unknown targets are `NotFound`.
/// - [`cut_sessions`](TrafficSwitch::cut_sessions) closes the sessions a drain left open (the
///   engine calls it past the drain timeout when its policy says `cut`); afterwards
///   `active_sessions` reads 0 and the target takes no traffic until a weight > 0 is set. A
///   balancer that cannot do it says `Unsupported`.
#[async_trait]
pub trait TrafficSwitch: fmt::Debug + Send + Sync + 'static {
    /// Current weights of every target.
    async fn weights(&self) -> Result<Weights>;
    /// The current weight of `target` alone, as [`weights`](Self::weights) reads it; `None`
    /// when the switch does not know it. What undoes a drain is read with it, once per drained
    /// target at a time: a switch that can read one target more cheaply than all of them (one
    /// HAProxy server's row) overrides it. The default reads every weight.
    async fn weight_of(&self, target: &TargetId) -> Result<Option<u32>> {
        Ok(self.weights().await?.get(target))
    }
    /// Set the weights of the named targets.
    async fn set_weights(&self, weights: &Weights) -> Result<()>;
    /// Stop sending new traffic to `target`.
    async fn drain(&self, target: &TargetId) -> Result<()>;
    /// Sessions still open on `target`.
    async fn active_sessions(&self, target: &TargetId) -> Result<u64>;
    /// Close the sessions still open on `target`, by the balancer's own means (HAProxy puts the
    /// server in maintenance and shuts its sessions down).
    async fn cut_sessions(&self, target: &TargetId) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "cut the sessions of",
            target.to_string(),
            "this switch cannot close sessions: drain with `on_timeout = \"proceed\"` or `\"fail\"`",
        ))
    }
    /// Put `weights` back during a rollback. Where [`set_weights`](Self::set_weights) may refuse
    /// to change anything (a switch over several balancers changes none when one cannot be
    /// read), this applies them wherever it can — traffic must leave a failed release on every
    /// balancer that still answers — and reports the ones it could not reach. The default is
    /// `set_weights`.
    async fn restore_weights(&self, weights: &Weights) -> Result<()> {
        self.set_weights(weights).await
    }
    /// Check that the load balancer is set up as this switch relies on (the configuration
    /// lines a sticky canary needs, say), before a run is planned: a problem found here stops
    /// the plan before anything changes. Most switches rely on nothing more than answering.
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// What a probe is asked to check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeRequest {
    /// The target being checked.
    pub target: TargetId,
    /// Where it serves.
    pub endpoint: Endpoint,
    /// The version it should report, when the probe can read one.
    pub expected_version: Option<Version>,
}

impl ProbeRequest {
    /// A request to check `target` at `endpoint`.
    pub fn new(target: TargetId, endpoint: Endpoint, expected_version: Option<Version>) -> Self {
        Self {
            target,
            endpoint,
            expected_version,
        }
    }
}

/// Says whether one target may take traffic.
///
/// # Contract
/// - No side effects on the target.
/// - A target that answers wrongly is [`Health::unhealthy`] (`healthy: false, answered: true`)
///   with the reason; a target that gives no answer (connection refused or reset, nothing within
///   the time limit) is [`Health::unreachable`] (`answered: false`). `Err` is for a probe that
///   could not run at all (bad configuration). The difference matters: the engine gives up after
///   a few *answered* unhealthy checks in a row (the policy's `unhealthy_threshold`), while a
///   target that does not answer — a service restarting — is waited for until the deadline.
/// - When `expected_version` is given and the probe can read the version, a different version is
///   unhealthy (answered), with [`Health::version`] set to the version read: the engine fails
///   the wait at once, since that answer can never become good.
/// - The engine owns interval, timeout, consecutive-success and consecutive-failure thresholds
///   and deadline; one call is one check.
#[async_trait]
pub trait HealthProbe: fmt::Debug + Send + Sync + 'static {
    /// Check once.
    async fn check(&self, request: &ProbeRequest) -> Result<Health>;
}

/// Brings the schema to the release's version.
///
/// # Contract
/// - [`status`](MigrationRunner::status) has no side effects and classifies each pending
///   migration as additive or destructive.
/// - [`backup`](MigrationRunner::backup) returns only once the backup is complete and readable.
/// - [`migrate`](MigrationRunner::migrate) applies all pending migrations, each atomically; a
///   failure leaves the schema at the last fully applied version. Running it again with nothing
///   pending is a no-op. It returns the version reached.
/// - [`verify`](MigrationRunner::verify) checks that the schema is at `expected`.
/// - [`revert`](MigrationRunner::revert) brings the schema back to `to` (down migrations where
///   safe, otherwise restoring `backup`); idempotent.
#[async_trait]
pub trait MigrationRunner: fmt::Debug + Send + Sync + 'static {
    /// Applied and pending migrations.
    async fn status(&self) -> Result<MigrationStatus>;
    /// Take a backup and return its id.
    async fn backup(&self) -> Result<BackupId>;
    /// Apply every pending migration; return the version reached.
    async fn migrate(&self) -> Result<Option<SchemaVersion>>;
    /// Check the schema is at `expected`.
    async fn verify(&self, expected: Option<&SchemaVersion>) -> Result<()>;
    /// Bring the schema back to `to`, using `backup` when down migrations cannot.
    async fn revert(&self, to: Option<&SchemaVersion>, backup: Option<&BackupId>) -> Result<()>;
}

/// What a gate is asked to judge.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GateContext {
    /// The version being deployed.
    pub version: Version,
    /// Targets running the new version (the canary, the green slot, the batch).
    pub canary: Vec<TargetId>,
    /// Targets still on the old version, for baseline comparisons (may be empty).
    pub baseline: Vec<TargetId>,
    /// Endpoints of the canary targets, for gates that scrape them.
    pub canary_endpoints: Vec<Endpoint>,
    /// Endpoints of the baseline targets.
    pub baseline_endpoints: Vec<Endpoint>,
    /// How long this analysis has been running.
    pub elapsed: Duration,
}

impl GateContext {
    /// A context for judging `canary` against `baseline`.
    pub fn new(version: Version, canary: Vec<TargetId>, baseline: Vec<TargetId>) -> Self {
        Self {
            version,
            canary,
            baseline,
            canary_endpoints: Vec::new(),
            baseline_endpoints: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Reads live metrics and judges them.
///
/// # Contract
/// - No side effects.
/// - Every outcome is a [`Verdict`] carrying the value, the condition and the source; a metrics
///   source that cannot be read is `Ok(Verdict { kind: Error, .. })` or `Err` — the engine treats
///   both as an Error verdict and applies its error limit.
/// - No data at all is `Inconclusive` with `no_data = true`; the engine's no-data policy decides.
/// - The engine owns interval, count and limits; one call is one measurement.
/// - A gate says what one measurement needs ([`MetricGate::evaluation_time`],
///   [`MetricGate::lookback`]); the engine derives its time limits from that and refuses at
///   planning an analysis too short to measure.
#[async_trait]
pub trait MetricGate: fmt::Debug + Send + Sync + 'static {
    /// A short name for reports ("error-rate", "p99-latency").
    fn name(&self) -> &str;
    /// Measure once.
    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict>;
    /// How long one evaluation takes by its nature, beside the time its calls take: a gate
    /// that scrapes twice, a window apart, takes the window. The engine's time limit of one
    /// evaluation is this plus the analysis policy's `timeout`, so a measurement is never cut
    /// short by a limit shorter than what it needs. Zero by default.
    fn evaluation_time(&self) -> Duration {
        Duration::ZERO
    }
    /// How far back one measurement looks (a PromQL range such as `[5m]`). An analysis shorter
    /// than this would judge traffic from before it began, so planning refuses it. Zero by
    /// default (the gate judges only what happens during its own evaluation).
    fn lookback(&self) -> Duration {
        Duration::ZERO
    }
}

/// Turns a maintenance page on and off.
///
/// # Contract
/// - `enable`/`disable` are idempotent and, on `Ok`, users see (or no longer see) the page.
/// - `is_enabled` has no side effects.
#[async_trait]
pub trait Maintenance: fmt::Debug + Send + Sync + 'static {
    /// Show the maintenance page.
    async fn enable(&self) -> Result<()>;
    /// Stop showing it.
    async fn disable(&self) -> Result<()>;
    /// Whether it is shown.
    async fn is_enabled(&self) -> Result<bool>;
}

/// A command to run on a [`Host`]: a program and its arguments, never a shell string.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Command {
    /// The program (a path or a name looked up in `PATH`).
    pub program: OsString,
    /// Its arguments, each passed as one argument.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Bytes written to standard input, which is then closed.
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Environment values may hold secrets: show names only.
        let env: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Command {
    /// Run `program`.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
        }
    }

    /// A command from an argument vector; the first element is the program.
    pub fn from_argv<I, S>(argv: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut it = argv.into_iter();
        let program = it.next().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "build command",
                "from argv",
                "argv is empty",
            )
        })?;
        Ok(Self::new(program).args(it))
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Set the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Feed `bytes` to standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kill the command after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The command line for messages: arguments joined by spaces, lossily.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Output {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// An output.
    pub fn new(code: Option<i32>, signal: Option<i32>, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        Self {
            code,
            signal,
            stdout,
            stderr,
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text, lossily.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text, lossily.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else.
    Other,
}

/// One machine: runs commands and moves files.
///
/// # Contract
/// - [`run`](Host::run) runs the program with exactly the given arguments (no shell
///   interpretation), returns `Ok` with the exit status whatever it was, and `Err` only when the
///   command could not be run or timed out (kind `Timeout`; the process is killed).
/// - [`write_file`](Host::write_file) is atomic: readers see the old content or the new content,
///   never a part; the file is written under a temporary name in the same directory and renamed.
///   An interrupted write never leaves a partial file at `path`.
/// - [`rename`](Host::rename) replaces `to` atomically (same file system).
/// - [`remove`](Host::remove) removes a file, a symlink or a whole directory tree; removing what
///   does not exist is `Ok`.
/// - [`symlink`](Host::symlink) creates `link` pointing at `target`; it fails if `link` exists.
#[async_trait]
pub trait Host: fmt::Debug + Send + Sync + 'static {
    /// A name for messages (`local`, `deploy@web-3:22`).
    fn name(&self) -> &str;
    /// Run a command.
    async fn run(&self, command: &Command) -> Result<Output>;
    /// Write `contents` to `path` atomically, with `mode` (e.g. `0o600`) if given.
    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()>;
    /// Copy the local file `local` to `path` on this host atomically, with `mode` if given.
    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()>;
    /// Read a whole file.
    async fn read_file(&self, path: &Path) -> Result<Vec<u8>>;
    /// Remove a file, symlink or directory tree.
    async fn remove(&self, path: &Path) -> Result<()>;
    /// Rename `from` to `to`, replacing `to`.
    async fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Create `link` pointing at `target`.
    async fn symlink(&self, target: &Path, link: &Path) -> Result<()>;
    /// Read where the symlink `link` points; `None` if it does not exist.
    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>>;
    /// Create a directory and its parents.
    async fn create_dir_all(&self, path: &Path) -> Result<()>;
    /// The entries of a directory (names and kinds), sorted by name.
    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>>;
    /// What is at `path`, if anything (symlinks not followed).
    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>>;
}

/// Conveniences over [`Host`]; implemented for every host.
#[async_trait]
pub trait HostExt: Host {
    /// Run `command` and fail unless it exits 0; the error names the command, the host, the exit
    /// status and the end of standard error.
    async fn run_checked(&self, command: &Command) -> Result<Output> {
        let out = self.run(command).await?;
        if out.success() {
            return Ok(out);
        }
        let status = match (out.code, out.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "unknown status".to_owned(),
        };
        let stderr = out.stderr_text();
        let tail = tail_lines(stderr.trim(), 5);
        let cause = if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        };
        Err(Error::new(
            ErrorKind::CommandFailed,
            format!("run `{}`", command.display()),
            format!("on {}", self.name()),
            cause,
        ))
    }
}

impl<T: Host + ?Sized> HostExt for T {}

/// The last `n` lines of `s`.
pub(crate) fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// `Arc<dyn Trait>` is what the engine holds; these aliases name them.
/// A shared [`Target`].
pub type DynTarget = Arc<dyn Target>;
/// A shared [`TrafficSwitch`].
pub type DynTrafficSwitch = Arc<dyn TrafficSwitch>;
/// A shared [`HealthProbe`].
pub type DynHealthProbe = Arc<dyn HealthProbe>;
/// A shared [`MigrationRunner`].
pub type DynMigrationRunner = Arc<dyn MigrationRunner>;
/// A shared [`MetricGate`].
pub type DynMetricGate = Arc<dyn MetricGate>;
/// A shared [`Maintenance`].
pub type DynMaintenance = Arc<dyn Maintenance>;
/// A shared [`Host`].
pub type DynHost = Arc<dyn Host>;
