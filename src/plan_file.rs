//! The plan file: one TOML document describing an environment, a strategy and a release, read
//! and validated before anything is touched, every problem reported at once with its key path.
//!
//! ```toml
//! [environment]
//! name = "production"
//! state_dir = "/var/lib/deploy/production"
//!
//! [release]
//! version = "2.1.0"
//! artifact = "build/app-2.1.0.tar.gz"
//!
//! [strategy]
//! kind = "canary"
//! steps = [{ set_weight = 10 }, { analyze = "2m" }, "pause_until_promoted", { set_weight = 50 }]
//!
//! [policies.probe]
//! deadline = "90s"
//! unhealthy_threshold = 3
//!
//! [[targets]]
//! id = "blue"
//! root = "/srv/app/blue"
//! endpoint = "http://127.0.0.1:8081"
//! restart = ["systemctl", "restart", "app@blue"]
//!
//! [[hooks]]
//! name = "announce"
//! point = "before"
//! on = "run"
//! webhook_env = "DEPLOY_CHAT_WEBHOOK"
//!
//! [[smoke]]
//! name = "front page"
//! path = "/"
//! body_contains = ["Welcome"]
//!
//! [notify]
//! webhook = "https://chat.example/hooks/deploys"
//! min_severity = "warning"
//!
//! [served_check]
//! url = "http://127.0.0.1:8080/"
//! header = "X-Version"
//! requests = 300
//! tolerance = 0.1
//! ```
//!
//! `[policies.probe]` says how health is awaited after an activation: `interval` between
//! checks (default `1s`), `timeout` of one check (`5s`), `healthy_threshold` healthy checks in
//! a row that end the wait (2), `unhealthy_threshold` checks in a row that the target answered
//! and said it is unhealthy (a 503) that fail it at once (3; 0 waits for the deadline only),
//! and the `deadline` that fails it otherwise (`60s`). A check that gets no answer (connection
//! refused while the service restarts) counts only toward the deadline, and an answer that
//! reports another version than the one activated fails the wait at once. A threshold whose
//! checks outlast the deadline is accepted with a warning.
//!
//! A rolling `[strategy]` may carry a failure budget, `max_failed_targets = { count = 1 }` or
//! `{ percent = 5 }` (rounded down, never the whole fleet; it needs a `[switch]`): a target whose
//! own step fails (prepare, activate, its health wait) is taken out of the traffic and rolled
//! back alone while the others go on, and the run ends `promoted_with_failures` naming it
//! (`deploy retry` deploys to it again); one failure more rolls the whole fleet back. Its
//! `prepare = "batch_ahead"` prepares each batch while the one before it waits to be healthy
//! and gets its weights back (the default `"all_first"` prepares every target before the first
//! batch acts): shorter runs, but a target that cannot be prepared is found when its turn
//! comes, after earlier batches changed. With migrations pending every target is prepared
//! first whatever it says.
//!
//! A `[[targets]]` entry is a release directory (`root`, `restart`, …) unless its `kind` says
//! otherwise: `kind = "docker"` (the `docker` feature) is one container slot driven through
//! the `docker` command line on this machine or, with `ssh`, on a remote one. Besides `id`,
//! `endpoint` and `ssh`, its keys are `deploy_docker::DockerTargetConfig`'s (unknown keys
//! refused): `app`, `image` (`"shop:{version}"`, pulled when no image archive is the release's
//! artifact), `network`, `ports`, `env`, `secret_env` (each value from an environment variable
//! or a file of the deploying machine, never written in the plan), `volumes`, `labels`,
//! `restart`, `stop_timeout`, `keep`, `docker_host`, `registry`, … The release's `artifact`, when
//! given, is an image archive (`docker save`) loaded on the host. Any other `kind` is built by
//! the [`AdapterFactory`] (an embedding tool's own kinds); an unknown one is a problem at
//! `targets[i].kind` naming the kinds known. `[probe] container_health = true` judges each
//! target that has a health check of its own — a docker container's `HEALTHCHECK` — by it
//! first (starting, unhealthy with its last output) and then by the HTTP probe; other targets
//! by the HTTP probe alone.
//!
//! ```toml
//! [[targets]]
//! id = "blue"
//! kind = "docker"
//! endpoint = "http://127.0.0.1:8081"
//! app = "shop"
//! image = "shop:{version}"
//! network = "host"
//! env = { PORT = "8081" }
//! secret_env = { DATABASE_PASSWORD = { env = "SHOP_DB_PASSWORD" } }
//! stop_timeout = "10s"
//!
//! [probe]
//! version_field = "version"
//! container_health = true
//! ```
//!
//! Sections whose meaning belongs to an adapter (`[switch]`, `[[gates]]`, `[migrations]`,
//! `[maintenance]`, `ssh` in a target and the keys of a target of another `kind`) are kept as raw TOML here and read by the code that
//! builds the environment.
//!
//! The switch is one table, `[switch]` with its `kind`, or a list of them, `[[switch]]`: load
//! balancers moved together as one ([`deploy_core::CompositeSwitch`] — an HA pair of HAProxy
//! instances, or HAProxy beside nginx). Each entry has its `kind`, the keys of that adapter and
//! an optional `name` for messages (`switch[i]` when left out); a switch step sets the weights
//! on every member, and if one fails, every member is put back to what it had. Problems name
//! the entry: `switch[1].socket`.
//!
//! ```toml
//! [[switch]]
//! name = "lb-1"
//! kind = "haproxy"
//! socket = "/run/haproxy-1/admin.sock"
//! backend = "app"
//!
//! [[switch]]
//! name = "lb-2"
//! kind = "haproxy"
//! socket = "/run/haproxy-2/admin.sock"
//! backend = "app"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use deploy_core::event::Severity;
use deploy_core::hooks::{CommandHook, Hook, HookAction, HookPoint, WebhookHook};
use deploy_core::served::ServedCheck;
use deploy_core::smoke::{SmokeCheck, SmokeGate};
use deploy_core::state::{LocalStateStore, StateStore};
use deploy_core::{
    BatchSize, CanaryStep, CompositeSwitch, DynHealthProbe, DynHost, DynMaintenance, DynMetricGate,
    DynMigrationRunner, DynTarget, DynTrafficSwitch, Endpoint, Engine, Environment, Error, Health,
    HealthProbe, HttpProbe, LocalHost, PlanOptions, PrepareOrder, ProbeRequest, Release,
    ReleaseDirTarget, Step, Strategy, TargetBudget, TargetId, Version,
};
use deploy_core::{ExposeSecret, Policies};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// One problem in a plan file, at a key path (`targets[1].restart`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a dotted key path with array indices; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a plan file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan file {source_name}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct PlanFileError {
    /// The file's name, for messages.
    pub source_name: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

/// `[environment]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvironmentSection {
    /// The environment's name (names the lock and the journal).
    pub name: String,
    /// Where the lock, journals, reports and history live on this machine — unless a `[state]`
    /// section names a store shared by every machine that deploys (then it is not given).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// `[release]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ReleaseSection {
    /// The version.
    pub version: Version,
    /// The artifact on this machine.
    #[serde(default)]
    pub artifact: Option<PathBuf>,
}

/// One `[[targets]]` entry: a release directory on this machine or (with `ssh`) a remote one,
/// or — with a `kind` other than `release_dir` — a target an adapter builds (`kind =
/// "docker"`), its keys kept in [`TargetSection::section`] for the adapter to read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TargetSection {
    /// The target's id.
    pub id: TargetId,
    /// The release root (`releases/<version>`, `current`) of a release directory; `None` for
    /// another kind.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Where it serves, as a URL (`http://10.0.0.5:8080`).
    pub endpoint: String,
    /// Restart command (argv; `{version}`, `{release_dir}`, `{root}`, `{target}` substituted).
    #[serde(default)]
    pub restart: Option<Vec<String>>,
    /// Stop command (argv).
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// Start command (argv).
    #[serde(default)]
    pub start: Option<Vec<String>>,
    /// Releases kept.
    #[serde(default)]
    pub keep: Option<usize>,
    /// The SSH connection, for a remote target (read by the SSH adapter).
    #[serde(default)]
    pub ssh: Option<toml::Value>,
    /// The target's `kind` when an adapter builds it (`docker`); `None` for a release
    /// directory (no `kind`, or `kind = "release_dir"`).
    #[serde(skip)]
    pub kind: Option<String>,
    /// The adapter's own keys: the entry without `id`, `endpoint`, `ssh` and `kind`.
    #[serde(skip)]
    pub section: Option<toml::Value>,
}

/// The `kind` of a release-directory target, the default.
pub const RELEASE_DIR_KIND: &str = "release_dir";

/// The keys every `[[targets]]` entry has, whatever its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonTargetKeys {
    id: TargetId,
    endpoint: String,
    #[serde(default)]
    ssh: Option<toml::Value>,
}

/// One `[[targets]]` entry at `path`: a release directory, or the common keys of an adapter's
/// target with the rest of its keys kept for the adapter.
fn take_target(c: &mut Collector, path: &str, value: toml::Value) -> Option<TargetSection> {
    let toml::Value::Table(mut table) = value else {
        c.push(path, "expected a table ([[targets]])");
        return None;
    };
    let kind = match table.remove("kind") {
        None => None,
        Some(toml::Value::String(k)) if k == RELEASE_DIR_KIND => None,
        Some(toml::Value::String(k)) => Some(k),
        Some(other) => {
            c.push(
                format!("{path}.kind"),
                format!("expected a string such as \"docker\" (found {other})"),
            );
            return None;
        }
    };
    let Some(kind) = kind else {
        let t = c.take::<TargetSection>(path, toml::Value::Table(table))?;
        if t.root.is_none() {
            c.push(
                format!("{path}.root"),
                "missing (a release directory target needs its root; another kind of target \
                 says its `kind`)",
            );
            return None;
        }
        return Some(t);
    };
    let mut common = toml::Table::new();
    for key in ["id", "endpoint", "ssh"] {
        if let Some(v) = table.remove(key) {
            common.insert(key.to_owned(), v);
        }
    }
    let common = c.take::<CommonTargetKeys>(path, toml::Value::Table(common))?;
    Some(TargetSection {
        id: common.id,
        root: None,
        endpoint: common.endpoint,
        restart: None,
        stop: None,
        start: None,
        keep: None,
        ssh: common.ssh,
        kind: Some(kind),
        section: Some(toml::Value::Table(table)),
    })
}

impl TargetSection {
    /// The endpoint parsed from its URL.
    pub fn parsed_endpoint(&self) -> Result<Endpoint, String> {
        parse_endpoint(&self.endpoint)
    }
}

/// Parse `http://host:port` or `https://host:port` (IPv6 in brackets) into an [`Endpoint`].
pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (http://host:port)"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{url:?}: the scheme must be http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{url:?}: expected [address]:port"))?;
        (h.to_owned(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?}: the port is missing"))?;
        (h.to_owned(), p)
    };
    if host.is_empty() {
        return Err(format!("{url:?}: the host is missing"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
    let e = Endpoint::http(host, port);
    Ok(if scheme == "https" { e.with_https() } else { e })
}

/// `[probe]`: the HTTP health probe (the default: `GET /health`, 2xx).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProbeSection {
    /// Path to probe.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// JSON fields that must have these values (`{ status = "ok" }`).
    #[serde(default)]
    pub expect_fields: BTreeMap<String, String>,
    /// JSON field holding the version.
    #[serde(default)]
    pub version_field: Option<String>,
    /// Slower answers are unhealthy.
    #[serde(default, with = "humantime_serde")]
    pub latency_budget: Option<Duration>,
    /// Judge each target that has a health check of its own (a docker target's container
    /// `HEALTHCHECK`) by it first, and then by the HTTP probe; other targets by the HTTP probe
    /// alone.
    #[serde(default)]
    pub container_health: bool,
}

impl Default for ProbeSection {
    /// `GET /health`, any 2xx.
    fn default() -> Self {
        Self {
            path: default_health_path(),
            expect_fields: BTreeMap::new(),
            version_field: None,
            latency_budget: None,
            container_health: false,
        }
    }
}

fn default_health_path() -> String {
    "/health".to_owned()
}

/// One `[[hooks]]` entry: a command on this machine or a webhook.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HookSection {
    /// Its name.
    pub name: String,
    /// `before` or `after`.
    pub point: HookPoint,
    /// A kind of step (`migrate`, `set_weights`, ...) or `run`.
    pub on: String,
    /// A command (argv) to run.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A URL to POST the hook's context to, written inline (accepted with a warning: such
    /// URLs carry tokens).
    #[serde(default)]
    pub webhook: Option<String>,
    /// The environment variable holding that URL.
    #[serde(default)]
    pub webhook_env: Option<String>,
    /// A file holding that URL.
    #[serde(default)]
    pub webhook_file: Option<PathBuf>,
    /// Time limit.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl HookSection {
    /// Where the webhook URL comes from, if this hook posts to one.
    pub fn webhook_source(&self) -> Option<SecretSource> {
        SecretSource::of(&self.webhook, &self.webhook_env, &self.webhook_file)
    }
}

impl fmt::Debug for HookSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookSection")
            .field("name", &self.name)
            .field("point", &self.point)
            .field("on", &self.on)
            .field("command", &self.command)
            .field("webhook", &self.webhook_source())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a secret of a plan file comes from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretSource {
    /// Written in the plan file itself.
    Inline(String),
    /// The environment variable of this name.
    Env(String),
    /// This file (its content, without a trailing newline).
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(***)"),
            Self::Env(v) => write!(f, "Env({v:?})"),
            Self::File(p) => write!(f, "File({p:?})"),
        }
    }
}

impl SecretSource {
    fn of(
        inline: &Option<String>,
        env: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Option<SecretSource> {
        inline
            .clone()
            .map(Self::Inline)
            .or_else(|| env.clone().map(Self::Env))
            .or_else(|| file.clone().map(Self::File))
    }

    /// Read the secret; an error (naming the variable or the file, never the value) says why it
    /// cannot be had.
    pub fn read(&self) -> Result<deploy_core::SecretString, String> {
        match self {
            Self::Inline(v) => Ok(v.clone().into()),
            Self::Env(var) => deploy_core::secret::from_env(var),
            Self::File(path) => deploy_core::secret::from_file(path),
        }
    }
}

/// `[notify]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NotifySection {
    /// Where to POST events, written inline (accepted with a warning: such URLs carry tokens).
    #[serde(default)]
    pub webhook: Option<String>,
    /// The environment variable holding that URL.
    #[serde(default)]
    pub webhook_env: Option<String>,
    /// A file holding that URL.
    #[serde(default)]
    pub webhook_file: Option<PathBuf>,
    /// The lowest severity sent (run start/end and rollbacks are always sent).
    #[serde(default = "default_severity")]
    pub min_severity: Severity,
}

fn default_severity() -> Severity {
    Severity::Warning
}

impl NotifySection {
    /// Where the webhook URL comes from.
    pub fn webhook_source(&self) -> Option<SecretSource> {
        SecretSource::of(&self.webhook, &self.webhook_env, &self.webhook_file)
    }
}

impl fmt::Debug for NotifySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifySection")
            .field("webhook", &self.webhook_source())
            .field("min_severity", &self.min_severity)
            .finish()
    }
}

/// `Debug` of a raw adapter section: its `kind` and key names, not its values (an adapter's
/// section may hold a URL with a password).
struct Keys<'a>(&'a toml::Value);

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_table() {
            Some(t) => {
                let kind = t.get("kind").and_then(toml::Value::as_str).unwrap_or("?");
                let keys: Vec<&str> = t.keys().map(String::as_str).collect();
                write!(f, "{kind} {{ {} }}", keys.join(", "))
            }
            None => f.write_str("(not a table)"),
        }
    }
}

/// A parsed and checked plan file.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct PlanFile {
    /// The name the file was parsed under, for messages.
    pub source_name: String,
    /// The directory relative paths of the file were resolved against: the plan file's own
    /// ([`PlanFile::load`]), or the one given to [`PlanFile::parse_in`].
    pub base_dir: PathBuf,
    /// `[environment]`.
    pub environment: EnvironmentSection,
    /// `[release]`.
    pub release: ReleaseSection,
    /// `[strategy]`.
    pub strategy: Strategy,
    /// `[options]`.
    pub options: PlanOptions,
    /// `[policies]`.
    pub policies: Policies,
    /// `[[targets]]`.
    pub targets: Vec<TargetSection>,
    /// `[probe]`.
    pub probe: Option<ProbeSection>,
    /// `[switch]` (a table), or `[[switch]]` (an array of tables: switches moved together as
    /// one), for the switch adapters to read.
    pub switch: Option<toml::Value>,
    /// `[[gates]]`, for the gate adapters to read.
    pub gates: Vec<toml::Value>,
    /// `[migrations]`, for the migration adapter to read.
    pub migrations: Option<toml::Value>,
    /// `[maintenance]`, for the maintenance adapter to read.
    pub maintenance: Option<toml::Value>,
    /// `[state]`, a shared state store, for the store adapter to read.
    pub state: Option<toml::Value>,
    /// `[[hooks]]`.
    pub hooks: Vec<HookSection>,
    /// `[[smoke]]`.
    pub smoke: Vec<SmokeCheck>,
    /// `[notify]`.
    pub notify: Option<NotifySection>,
    /// `[served_check]`: the versions served through the load balancer's frontend, checked
    /// after every traffic step.
    pub served_check: Option<ServedCheck>,
    /// What is accepted but unwise (a secret written inline), with its key path.
    pub warnings: Vec<Problem>,
}

impl fmt::Debug for PlanFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanFile")
            .field("source_name", &self.source_name)
            .field("base_dir", &self.base_dir)
            .field("environment", &self.environment)
            .field("release", &self.release)
            .field("strategy", &self.strategy)
            .field("options", &self.options)
            .field("policies", &self.policies)
            .field("targets", &self.targets)
            .field("probe", &self.probe)
            .field("switch", &self.switch.as_ref().map(Keys))
            .field("gates", &self.gates.iter().map(Keys).collect::<Vec<_>>())
            .field("migrations", &self.migrations.as_ref().map(Keys))
            .field("maintenance", &self.maintenance.as_ref().map(Keys))
            .field("state", &self.state.as_ref().map(Keys))
            .field("hooks", &self.hooks)
            .field("smoke", &self.smoke)
            .field("notify", &self.notify)
            .field("served_check", &self.served_check)
            .field("warnings", &self.warnings)
            .finish()
    }
}

const KEYS: &[&str] = &[
    "environment",
    "release",
    "strategy",
    "options",
    "policies",
    "targets",
    "probe",
    "switch",
    "gates",
    "migrations",
    "maintenance",
    "state",
    "hooks",
    "smoke",
    "notify",
    "served_check",
];

/// Deserialize the TOML `value` found at `path` into `T`; a problem names the full key path
/// (`targets[1].restart`, `switch.check_interval`). Adapter factories use it for their sections.
pub fn deserialize_at<T: DeserializeOwned>(path: &str, value: toml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_owned()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            format!("{path}.{inner}")
        };
        Problem {
            path: full,
            message: plain(e.into_inner().message()),
        }
    })
}

/// A deserialisation message in plain words: what is expected, never a Rust type
/// ("expected u8" becomes "expected a whole number from 0 to 255", "expected a duration"
/// gains examples, "expected struct X" becomes "expected a table").
fn plain(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number, 0 or more"),
        ("usize", "a whole number, 0 or more"),
        ("i8", "a whole number"),
        ("i16", "a whole number"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("isize", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
        ("a duration", "a duration such as `30s` or `2m`"),
        ("a sequence", "a list ([...])"),
        ("a map", "a table"),
        ("a char", "a single character"),
        ("unit", "nothing"),
    ];
    let Some((head, expected)) = message.rsplit_once("expected ") else {
        return message.to_owned();
    };
    let expected = expected.trim();
    let words = WORDS
        .iter()
        .find(|(rust, _)| *rust == expected)
        .map(|(_, words)| (*words).to_owned())
        .or_else(|| {
            ["struct ", "enum ", "internally tagged enum ", "map "]
                .iter()
                .any(|p| expected.starts_with(p))
                .then(|| "a table".to_owned())
        });
    match words {
        Some(w) => format!("{head}expected {w}"),
        None => message.to_owned(),
    }
}

/// `[strategy]`, read kind by kind so that a problem inside names its key path (serde loses
/// the path inside an internally tagged enum such as [`Strategy`]).
fn take_strategy(c: &mut Collector, value: toml::Value) -> Option<Strategy> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Recreate {}
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rolling {
        batch: BatchSize,
        #[serde(default, with = "humantime_serde")]
        analysis: Option<Duration>,
        #[serde(default)]
        max_failed_targets: Option<TargetBudget>,
        #[serde(default)]
        prepare: PrepareOrder,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BlueGreen {
        #[serde(default, with = "humantime_serde")]
        pre_switch_analysis: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        bake: Duration,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Canary {
        steps: Vec<CanaryStep>,
    }
    const KINDS: &str = "recreate, rolling, blue_green, canary";
    let toml::Value::Table(mut table) = value else {
        c.push("strategy", "expected a table ([strategy])");
        return None;
    };
    let kind = match table.remove("kind") {
        Some(toml::Value::String(k)) => k,
        Some(other) => {
            c.push(
                "strategy.kind",
                format!("expected a string, one of: {KINDS} (found {other})"),
            );
            return None;
        }
        None => {
            c.push("strategy.kind", format!("missing: one of {KINDS}"));
            return None;
        }
    };
    let rest = toml::Value::Table(table);
    match kind.as_str() {
        "recreate" => c
            .take::<Recreate>("strategy", rest)
            .map(|_| Strategy::Recreate {}),
        "rolling" => c
            .take::<Rolling>("strategy", rest)
            .map(|r| Strategy::Rolling {
                batch: r.batch,
                analysis: r.analysis,
                max_failed_targets: r.max_failed_targets,
                prepare: r.prepare,
            }),
        "blue_green" => c
            .take::<BlueGreen>("strategy", rest)
            .map(|b| Strategy::BlueGreen {
                pre_switch_analysis: b.pre_switch_analysis,
                bake: b.bake,
            }),
        "canary" => c
            .take::<Canary>("strategy", rest)
            .map(|k| Strategy::Canary { steps: k.steps }),
        other => {
            c.push(
                "strategy.kind",
                format!("unknown kind {other:?} (expected one of: {KINDS})"),
            );
            None
        }
    }
}

struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserialize `value` (at `path`) into `T`, recording the problem with its full path.
    fn take<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Option<T> {
        match deserialize_at(path, value) {
            Ok(v) => Some(v),
            Err(p) => {
                self.problems.push(p);
                None
            }
        }
    }

    /// Each entry of the array at `key` that deserializes, with its index in the file.
    fn list<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: Option<toml::Value>,
    ) -> Vec<(usize, T)> {
        self.list_with(key, value, |c, path, v| c.take::<T>(path, v))
    }

    /// Each entry of the array at `key` that `take` reads (given its path, `key[i]`), with its
    /// index in the file.
    fn list_with<T>(
        &mut self,
        key: &str,
        value: Option<toml::Value>,
        mut take: impl FnMut(&mut Self, &str, toml::Value) -> Option<T>,
    ) -> Vec<(usize, T)> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| take(self, &format!("{key}[{i}]"), v).map(|t| (i, t)))
                .collect(),
            Some(_) => {
                self.push(key, format!("expected an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }
}

/// The warning for a secret written in the plan file at `path` (`notify.webhook`).
fn inline_secret(path: &str) -> Problem {
    let key = path.rsplit_once('.').map_or(path, |(_, k)| k);
    Problem {
        path: path.to_owned(),
        message: format!(
            "a secret written in the plan file (whoever reads the file or its history has it); \
             name an environment variable with {key}_env or a file with {key}_file instead"
        ),
    }
}

impl PlanFile {
    /// The largest plan file read: 1 MiB (real plans are a few KiB).
    pub const MAX_SIZE: u64 = 1024 * 1024;

    /// Read the plan file at `path` (at most [`PlanFile::MAX_SIZE`]) and parse it; relative
    /// paths in it are resolved against the file's own directory, wherever deploy starts.
    ///
    /// This touches nothing but the file; [`PlanFile::validate`] also checks what the plan
    /// names on this machine.
    pub fn load(path: &Path) -> Result<Self, PlanFileError> {
        let name = path.display().to_string();
        let fail = |message: String| PlanFileError {
            source_name: name.clone(),
            problems: vec![Problem {
                path: String::new(),
                message,
            }],
        };
        let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let bytes = deploy_core::fs::read_limited(f, Self::MAX_SIZE)
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("it is not UTF-8 text".to_owned()))?;
        // `plan.toml` alone is in the current directory (its parent is the empty path).
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir)
            .map_err(|e| fail(format!("cannot tell its directory: {e}")))?;
        Self::parse_in(&name, &text, &dir)
    }

    /// Parse and check `text`; `source_name` names it in messages. Relative paths in it are
    /// resolved against the current directory, as if the file were there: use
    /// [`PlanFile::load`] for a file, or [`PlanFile::parse_in`] to say where it lives.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, PlanFileError> {
        let dir = std::path::absolute(".").map_err(|e| PlanFileError {
            source_name: source_name.to_owned(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot tell the current directory: {e}"),
            }],
        })?;
        Self::parse_in(source_name, text, &dir)
    }

    /// Parse and check `text` as the plan file of directory `base_dir`: relative paths in it
    /// (`environment.state_dir`, `release.artifact`, a hook's `webhook_file` or script, the
    /// `[migrations]` folder, the files a section reads its secrets from, a target's SSH keys)
    /// are resolved against `base_dir`. Paths that may be on another machine (a target's
    /// `root`, the switch's and the maintenance page's files) must be absolute.
    pub fn parse_in(source_name: &str, text: &str, base_dir: &Path) -> Result<Self, PlanFileError> {
        let err = |problems| PlanFileError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            err(vec![Problem {
                path: String::new(),
                message: e.to_string().trim().to_owned(),
            }])
        })?;
        let mut c = Collector {
            problems: Vec::new(),
        };
        resolve_paths(&mut table, base_dir);
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) {
                c.push(
                    key.clone(),
                    format!("unknown key (expected one of: {})", KEYS.join(", ")),
                );
            }
        }
        let mut required = |c: &mut Collector, key: &str| {
            let v = table.remove(key);
            if v.is_none() {
                c.push(key, "missing");
            }
            v
        };
        let environment = required(&mut c, "environment")
            .and_then(|v| c.take::<EnvironmentSection>("environment", v));
        let release =
            required(&mut c, "release").and_then(|v| c.take::<ReleaseSection>("release", v));
        let strategy = required(&mut c, "strategy").and_then(|v| take_strategy(&mut c, v));
        let targets_raw = required(&mut c, "targets");
        let had_targets = targets_raw.is_some();
        let options = table
            .remove("options")
            .map_or(Some(PlanOptions::default()), |v| c.take("options", v));
        let policies = table
            .remove("policies")
            .map_or(Some(Policies::default()), |v| c.take("policies", v));
        let targets: Vec<(usize, TargetSection)> = c.list_with("targets", targets_raw, take_target);
        let probe = table
            .remove("probe")
            .and_then(|v| c.take::<ProbeSection>("probe", v));
        let hooks: Vec<(usize, HookSection)> = c.list("hooks", table.remove("hooks"));
        let smoke: Vec<(usize, SmokeCheck)> = c.list("smoke", table.remove("smoke"));
        let notify = table
            .remove("notify")
            .and_then(|v| c.take::<NotifySection>("notify", v));
        let served_check = table
            .remove("served_check")
            .and_then(|v| c.take::<ServedCheck>("served_check", v));
        let switch = table.remove("switch");
        let gates = match table.remove("gates") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                c.push("gates", "expected an array of tables ([[gates]])");
                Vec::new()
            }
        };
        let migrations = table.remove("migrations");
        let maintenance = table.remove("maintenance");
        let state = table.remove("state");

        // Checks across fields.
        if let Some(s) = &strategy {
            for p in s.problems() {
                c.push(format!("strategy.{}", p.path), p.message);
            }
        }
        let mut warnings = Vec::new();
        if let Some(p) = &policies {
            for p in p.problems() {
                c.push(format!("policies.{}", p.path), p.message);
            }
            for w in p.warnings() {
                warnings.push(Problem {
                    path: format!("policies.{}", w.path),
                    message: w.message,
                });
            }
        }
        if let Some(env) = &environment
            && let Err(e) = Version::new(env.name.clone())
        {
            c.push("environment.name", e.message().to_owned());
        }
        match (&environment, &state) {
            (Some(env), Some(_)) if env.state_dir.is_some() => c.push(
                "environment.state_dir",
                "give state_dir (this machine's directory) or a [state] store, not both",
            ),
            (Some(env), None) => match &env.state_dir {
                None => c.push(
                    "environment.state_dir",
                    "missing: give state_dir (a directory on this machine) or a [state] store \
                     shared by every machine that deploys",
                ),
                Some(d) if !d.is_absolute() => c.push(
                    "environment.state_dir",
                    format!(
                        "{} is not an absolute path (a relative one depends on where deploy \
                         starts, and the lock would not hold)",
                        d.display()
                    ),
                ),
                Some(_) => {}
            },
            _ => {}
        }
        let mut seen = HashSet::new();
        for (i, t) in &targets {
            if !seen.insert(t.id.clone()) {
                c.push(
                    format!("targets[{i}].id"),
                    format!("target {} is listed twice", t.id),
                );
            }
            if let Err(e) = t.parsed_endpoint() {
                c.push(format!("targets[{i}].endpoint"), e);
            }
            if let Some(root) = &t.root
                && !root.is_absolute()
            {
                c.push(
                    format!("targets[{i}].root"),
                    format!("{} is not an absolute path", root.display()),
                );
            }
            for (name, argv) in [
                ("restart", &t.restart),
                ("stop", &t.stop),
                ("start", &t.start),
            ] {
                if argv.as_ref().is_some_and(Vec::is_empty) {
                    c.push(format!("targets[{i}].{name}"), "the command is empty");
                }
            }
        }
        check_switch(&mut c, switch.as_ref(), &targets);
        if let Some(sc) = &served_check {
            for p in sc.problems() {
                c.push(format!("served_check.{}", p.path), p.message);
            }
            if switch.is_none() {
                c.push(
                    "served_check",
                    "the check runs after each change of the weights, and there is no [switch]",
                );
            }
            // At 50/50 the share seen varies by sqrt(0.25 / requests) when the balancer places
            // requests at random: a tolerance under three of those fails a correct release
            // now and then.
            let sigma = (0.25 / f64::from(sc.requests.max(1))).sqrt();
            if sc.tolerance < 3.0 * sigma {
                let needed = (0.25 * (3.0 / sc.tolerance.max(1e-3)).powi(2)).ceil();
                warnings.push(Problem {
                    path: "served_check.tolerance".to_owned(),
                    message: format!(
                        "{} with {} requests is {:.1} standard deviations at 50/50: behind a \
                         balancer that places requests at random (nginx split_clients, HAProxy \
                         balance random) a correct release fails now and then; give at least \
                         {needed} requests or a tolerance of {:.2}",
                        sc.tolerance,
                        sc.requests,
                        sc.tolerance / sigma,
                        3.0 * sigma
                    ),
                });
            }
            if matches!(strategy, Some(Strategy::Recreate { .. })) {
                warnings.push(Problem {
                    path: "served_check".to_owned(),
                    message: "a recreate deploy never changes the weights: the check never runs"
                        .to_owned(),
                });
            }
            if sc.url.contains('@') {
                warnings.push(Problem {
                    path: "served_check.url".to_owned(),
                    message: "credentials written in the plan file (whoever reads the file or its \
                              history has them); the check's URL should need none"
                        .to_owned(),
                });
            }
        }
        if had_targets
            && targets.is_empty()
            && !c.problems.iter().any(|p| p.path.starts_with("targets"))
        {
            c.push("targets", "no targets");
        }
        for (i, h) in &hooks {
            let sources = usize::from(h.webhook.is_some())
                + usize::from(h.webhook_env.is_some())
                + usize::from(h.webhook_file.is_some());
            match (&h.command, sources) {
                (Some(_), 1..) => c.push(
                    format!("hooks[{i}]"),
                    "give either command or webhook, not both",
                ),
                (None, 0) => c.push(
                    format!("hooks[{i}]"),
                    "give a command or a webhook (webhook_env, webhook_file)",
                ),
                (None, 2..) => c.push(
                    format!("hooks[{i}]"),
                    "give one of webhook, webhook_env, webhook_file",
                ),
                (Some(argv), 0) if argv.is_empty() => {
                    c.push(format!("hooks[{i}].command"), "the command is empty")
                }
                _ => {}
            }
            if h.webhook.is_some() {
                warnings.push(inline_secret(&format!("hooks[{i}].webhook")));
            }
            if !(h.on == "run" || Step::KINDS.contains(&h.on.as_str())) {
                c.push(
                    format!("hooks[{i}].on"),
                    format!(
                        "unknown step kind {:?} (expected run or one of: {})",
                        h.on,
                        Step::KINDS.join(", ")
                    ),
                );
            }
        }
        if let Some(n) = &notify {
            let sources = usize::from(n.webhook.is_some())
                + usize::from(n.webhook_env.is_some())
                + usize::from(n.webhook_file.is_some());
            match sources {
                0 => c.push("notify", "give webhook_env, webhook_file or webhook"),
                2.. => c.push("notify", "give one of webhook, webhook_env, webhook_file"),
                _ if n.webhook.is_some() => warnings.push(inline_secret("notify.webhook")),
                _ => {}
            }
        }
        if let Some(s) = &strategy
            && s.is_zero_downtime()
            && !matches!(s, Strategy::Rolling { .. })
            && switch.is_none()
        {
            c.push(
                "switch",
                format!("the {} strategy needs a traffic switch", s.name()),
            );
        }
        if !c.problems.is_empty() {
            return Err(err(c.problems));
        }
        match (environment, release, strategy, options, policies) {
            (Some(environment), Some(release), Some(strategy), Some(options), Some(policies)) => {
                Ok(Self {
                    source_name: source_name.to_owned(),
                    base_dir: base_dir.to_owned(),
                    environment,
                    release,
                    strategy,
                    options,
                    policies,
                    targets: targets.into_iter().map(|(_, t)| t).collect(),
                    probe,
                    switch,
                    gates,
                    migrations,
                    maintenance,
                    state,
                    hooks: hooks.into_iter().map(|(_, h)| h).collect(),
                    smoke: smoke.into_iter().map(|(_, s)| s).collect(),
                    notify,
                    served_check,
                    warnings,
                })
            }
            _ => Err(err(vec![Problem {
                path: String::new(),
                message: "incomplete plan".into(),
            }])),
        }
    }
}

/// The keys, by section, that name a file or folder on this machine; a relative one is
/// resolved against the plan file's directory. (`*` is every entry of an array of tables.)
const LOCAL_PATHS: &[(&str, &[&str])] = &[
    ("environment", &["state_dir"]),
    ("release", &["artifact"]),
    ("hooks.*", &["webhook_file"]),
    ("notify", &["webhook_file"]),
    ("migrations", &["dir", "database_url_file"]),
    ("state", &["database_url_file", "root_cert"]),
    (
        "gates.*",
        &["bearer_token_file", "basic_auth_password_file"],
    ),
    (
        "targets.*.ssh",
        &["key_file", "key_passphrase_file", "known_hosts"],
    ),
    ("targets.*.secret_env.*", &["file"]),
    ("targets.*.registry", &["password_file"]),
];

/// Resolve the relative paths of [`LOCAL_PATHS`], and a hook's script (a command whose first
/// word is a relative path with a `/`, such as `scripts/check.sh`), against `base`.
fn resolve_paths(table: &mut toml::Table, base: &Path) {
    fn tables<'a>(value: &'a mut toml::Value, path: &[&str]) -> Vec<&'a mut toml::Table> {
        let Some((first, rest)) = path.split_first() else {
            return value.as_table_mut().into_iter().collect();
        };
        match (*first, value) {
            ("*", toml::Value::Array(items)) => {
                items.iter_mut().flat_map(|v| tables(v, rest)).collect()
            }
            ("*", toml::Value::Table(t)) => {
                t.iter_mut().flat_map(|(_, v)| tables(v, rest)).collect()
            }
            (key, toml::Value::Table(t)) => match t.get_mut(key) {
                Some(v) => tables(v, rest),
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
    let resolve = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v
            && !s.is_empty()
            && Path::new(s.as_str()).is_relative()
        {
            *s = base.join(s.as_str()).display().to_string();
        }
    };
    let mut root = toml::Value::Table(std::mem::take(table));
    for (section, keys) in LOCAL_PATHS {
        let path: Vec<&str> = section.split('.').collect();
        for t in tables(&mut root, &path) {
            for key in *keys {
                if let Some(v) = t.get_mut(*key) {
                    resolve(v);
                }
            }
        }
    }
    for hook in tables(&mut root, &["hooks", "*"]) {
        if let Some(toml::Value::Array(argv)) = hook.get_mut("command")
            && let Some(first) = argv.first_mut()
            && first.as_str().is_some_and(|s| s.contains('/'))
        {
            resolve(first);
        }
    }
    if let toml::Value::Table(t) = root {
        *table = t;
    }
}

/// `[switch]` is a table; `[[switch]]` a non-empty list of tables with unique names. Each
/// one's `servers` map is checked against the targets.
fn check_switch(
    c: &mut Collector,
    switch: Option<&toml::Value>,
    targets: &[(usize, TargetSection)],
) {
    match switch {
        None => {}
        Some(toml::Value::Table(_)) => check_servers_map(c, "switch", switch, targets),
        Some(toml::Value::Array(list)) => {
            if list.is_empty() {
                c.push(
                    "switch",
                    "an empty list of switches: give at least one [[switch]] table",
                );
            }
            let mut names = BTreeMap::new();
            for (i, entry) in list.iter().enumerate() {
                let path = format!("switch[{i}]");
                if !entry.is_table() {
                    c.push(path, "expected a table (a [[switch]] entry)");
                    continue;
                }
                match entry.get("name") {
                    None => {}
                    Some(toml::Value::String(n)) if !n.trim().is_empty() => {
                        if let Some(first) = names.insert(n.clone(), i) {
                            c.push(
                                format!("{path}.name"),
                                format!("switch[{first}] has the same name {n:?}"),
                            );
                        }
                    }
                    Some(_) => c.push(format!("{path}.name"), "expected a name (a string)"),
                }
                check_servers_map(c, &path, Some(entry), targets);
            }
        }
        Some(_) => c.push(
            "switch",
            "expected a table ([switch]) or an array of tables ([[switch]])",
        ),
    }
}

/// A switch's `servers` map (target → server) names targets: each must be one, and a map
/// that is given must name every target (the switch knows no other). `path` is the switch's
/// own (`switch`, `switch[1]`).
fn check_servers_map(
    c: &mut Collector,
    path: &str,
    switch: Option<&toml::Value>,
    targets: &[(usize, TargetSection)],
) {
    let Some(servers) = switch
        .and_then(|s| s.get("servers"))
        .and_then(toml::Value::as_table)
    else {
        return;
    };
    if servers.is_empty() {
        return;
    }
    let ids: Vec<&str> = targets.iter().map(|(_, t)| t.id.as_str()).collect();
    for key in servers.keys() {
        if !ids.contains(&key.as_str()) {
            c.push(
                format!("{path}.servers.{key}"),
                format!(
                    "there is no target {key} (the targets are {}); the map goes from a \
                     target's id to its server's name",
                    ids.join(", ")
                ),
            );
        }
    }
    for id in &ids {
        if !servers.contains_key(*id) {
            c.push(
                format!("{path}.servers"),
                format!(
                    "target {id} has no server: a servers map must name every target \
                     (`{id} = \"<server name>\"`), or be left out when the servers are named \
                     like the targets"
                ),
            );
        }
    }
}

/// The switch `section` describes: one adapter for `[switch]`, a [`CompositeSwitch`] of every
/// entry for `[[switch]]` (each named by its `name`, or `switch[i]`).
fn build_switch(
    adapters: &dyn AdapterFactory,
    section: &toml::Value,
) -> Result<DynTrafficSwitch, Vec<Problem>> {
    let toml::Value::Array(list) = section else {
        return adapters.switch(section);
    };
    let mut problems = Vec::new();
    let mut members = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let path = format!("switch[{i}]");
        let mut rest = entry.as_table().cloned().unwrap_or_default();
        let name = match rest.remove("name") {
            Some(toml::Value::String(n)) => n,
            _ => path.clone(),
        };
        match adapters.switch_at(&path, &toml::Value::Table(rest)) {
            Ok(sw) => members.push((name, sw)),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    CompositeSwitch::new(members)
        .map(|c| Arc::new(c) as DynTrafficSwitch)
        .map_err(|e| {
            vec![Problem {
                path: "switch".to_owned(),
                message: e.message().to_owned(),
            }]
        })
}

/// What the plan file gives a target adapter besides the adapter's own keys: the keys every
/// target has, made into values.
#[derive(Clone)]
#[non_exhaustive]
pub struct TargetContext {
    /// `id`.
    pub id: TargetId,
    /// The host it runs on: this machine, or the `ssh` table's host.
    pub host: DynHost,
    /// `endpoint`, parsed.
    pub endpoint: Endpoint,
    /// `Some(probe)` when the plan asks that a target with a health check of its own be judged
    /// by it first (`[probe] container_health = true`): the adapter then returns, in
    /// [`BuiltTarget::probe`], a probe that asks its own check and then `probe` (the plan's
    /// HTTP probe).
    pub own_health_then: Option<DynHealthProbe>,
}

impl fmt::Debug for TargetContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetContext")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("own_health_then", &self.own_health_then.is_some())
            .finish_non_exhaustive()
    }
}

/// A target an adapter built from its `[[targets]]` entry, and the probe that judges it when
/// the plan asked for its own health check (see [`TargetContext::own_health_then`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct BuiltTarget {
    /// The target.
    pub target: DynTarget,
    /// Its own probe, if it has one and the plan asked for it.
    pub probe: Option<DynHealthProbe>,
}

impl BuiltTarget {
    /// `target`, judged by the plan's probe.
    pub fn new(target: DynTarget) -> Self {
        Self {
            target,
            probe: None,
        }
    }

    /// Judge it by `probe` instead of the plan's probe.
    pub fn with_probe(mut self, probe: Option<DynHealthProbe>) -> Self {
        self.probe = probe;
        self
    }
}

/// The problem of a target whose `kind` no adapter answers to; `known` are the kinds the
/// adapters know (`release_dir` is always known).
pub fn unknown_target_kind(path: &str, kind: &str, known: &[&str]) -> Problem {
    let mut names: Vec<&str> = known.to_vec();
    names.push(RELEASE_DIR_KIND);
    names.sort_unstable();
    Problem {
        path: format!("{path}.kind"),
        message: format!(
            "unknown target kind {kind:?} (this build knows: {}; an adapter's kind needs its \
             feature, `docker` for docker)",
            names.join(", ")
        ),
    }
}

/// The plan's probe for most targets, and a target's own probe for those that have one.
#[derive(Debug)]
struct ProbeByTarget {
    own: BTreeMap<TargetId, DynHealthProbe>,
    default: DynHealthProbe,
}

#[async_trait::async_trait]
impl HealthProbe for ProbeByTarget {
    async fn check(&self, request: &ProbeRequest) -> deploy_core::Result<Health> {
        match self.own.get(&request.target) {
            Some(p) => p.check(request).await,
            None => self.default.check(request).await,
        }
    }
}

/// Builds what an adapter section of a plan file describes. The root crate implements it for
/// adapters compiled in (the `deploy` example wires them); tests and embedding tools can
/// supply their own.
pub trait AdapterFactory {
    /// `[switch]`.
    fn switch(&self, section: &toml::Value) -> Result<DynTrafficSwitch, Vec<Problem>>;
    /// One `[[switch]]` entry, without its `name` (`path` is `switch[i]`, for messages). By
    /// default [`AdapterFactory::switch`], with its problems moved from `switch` to `path`.
    fn switch_at(
        &self,
        path: &str,
        section: &toml::Value,
    ) -> Result<DynTrafficSwitch, Vec<Problem>> {
        self.switch(section).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| match p.path.strip_prefix("switch") {
                    Some(rest) if rest.is_empty() || rest.starts_with(['.', '[']) => Problem {
                        path: format!("{path}{rest}"),
                        message: p.message,
                    },
                    _ => p,
                })
                .collect()
        })
    }
    /// One `[[gates]]` entry (`path` is `gates[i]`, for messages).
    fn gate(&self, path: &str, section: &toml::Value) -> Result<DynMetricGate, Vec<Problem>>;
    /// `[migrations]`.
    fn migrations(&self, section: &toml::Value) -> Result<DynMigrationRunner, Vec<Problem>>;
    /// `[maintenance]`.
    fn maintenance(&self, section: &toml::Value) -> Result<DynMaintenance, Vec<Problem>>;
    /// The `ssh` table of a target (`path` is `targets[i].ssh`).
    fn ssh_host(&self, path: &str, section: &toml::Value) -> Result<DynHost, Vec<Problem>>;
    /// One `[[targets]]` entry of `kind` (any kind but `release_dir`, which the plan file builds
    /// itself): `path` is `targets[i]`, `section` the entry without `id`, `endpoint`, `ssh` and
    /// `kind`, `context` what the plan file made of those. By default no kind is known.
    fn target(
        &self,
        path: &str,
        kind: &str,
        section: &toml::Value,
        context: TargetContext,
    ) -> Result<BuiltTarget, Vec<Problem>> {
        let _ = (section, context);
        Err(vec![unknown_target_kind(path, kind, &[])])
    }
    /// `[state]`: a state store shared by the machines that deploy.
    fn state_store(&self, section: &toml::Value) -> Result<Arc<dyn StateStore>, Vec<Problem>> {
        let _ = section;
        Err(vec![Problem {
            path: "state".to_owned(),
            message: "this build knows no shared state store".to_owned(),
        }])
    }
}

impl PlanFile {
    /// The release to deploy.
    pub fn release(&self) -> Release {
        let r = Release::new(self.release.version.clone());
        match &self.release.artifact {
            Some(a) => r.with_artifact(a.clone()),
            None => r,
        }
    }

    /// Build the environment this plan describes, reporting every problem at once.
    pub fn environment(&self, adapters: &dyn AdapterFactory) -> Result<Environment, PlanFileError> {
        let mut problems = Vec::new();
        let mut b = Environment::builder(self.environment.name.clone());
        let local: DynHost = Arc::new(LocalHost::new());
        let probe = self.probe.clone().unwrap_or_default();
        let mut pb = HttpProbe::builder().path(probe.path.clone());
        for (k, v) in &probe.expect_fields {
            pb = pb.expect_field(k.clone(), v.clone());
        }
        if let Some(f) = &probe.version_field {
            pb = pb.version_field(f.clone());
        }
        if let Some(l) = probe.latency_budget {
            pb = pb.latency_budget(l);
        }
        let http: Option<DynHealthProbe> = match pb.build() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                problems.push(Problem {
                    path: "probe".into(),
                    message: e.message().to_owned(),
                });
                None
            }
        };
        let mut own_probes = BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let host = match &t.ssh {
                Some(section) => match adapters.ssh_host(&format!("targets[{i}].ssh"), section) {
                    Ok(h) => h,
                    Err(p) => {
                        problems.extend(p);
                        continue;
                    }
                },
                None => local.clone(),
            };
            let endpoint = match t.parsed_endpoint() {
                Ok(e) => e,
                Err(e) => {
                    problems.push(Problem {
                        path: format!("targets[{i}].endpoint"),
                        message: e,
                    });
                    continue;
                }
            };
            if let Some(kind) = &t.kind {
                let context = TargetContext {
                    id: t.id.clone(),
                    host,
                    endpoint,
                    own_health_then: http.clone().filter(|_| probe.container_health),
                };
                let empty = toml::Value::Table(toml::Table::new());
                let section = t.section.as_ref().unwrap_or(&empty);
                match adapters.target(&format!("targets[{i}]"), kind, section, context) {
                    Ok(built) => {
                        if let Some(p) = built.probe {
                            own_probes.insert(t.id.clone(), p);
                        }
                        b = b.target(built.target);
                    }
                    Err(p) => problems.extend(p),
                }
                continue;
            }
            let Some(root) = &t.root else {
                continue; // reported by `parse`
            };
            let mut tb = ReleaseDirTarget::builder(t.id.clone(), host, root.clone(), endpoint);
            if let Some(argv) = &t.restart {
                tb = tb.restart(argv.clone());
            }
            if let Some(argv) = &t.stop {
                tb = tb.stop_command(argv.clone());
            }
            if let Some(argv) = &t.start {
                tb = tb.start_command(argv.clone());
            }
            if let Some(k) = t.keep {
                tb = tb.keep(k);
            }
            match tb.build() {
                Ok(target) => b = b.target(Arc::new(target)),
                Err(e) => problems.push(Problem {
                    path: format!("targets[{i}]"),
                    message: e.message().to_owned(),
                }),
            }
        }
        if probe.container_health && own_probes.is_empty() && problems.is_empty() {
            problems.push(Problem {
                path: "probe.container_health".into(),
                message: "no target has a health check of its own (a docker target's \
                          container HEALTHCHECK): leave it out, or false"
                    .into(),
            });
        }
        if let Some(http) = http {
            if own_probes.is_empty() {
                b = b.probe(http);
            } else {
                b = b.probe(Arc::new(ProbeByTarget {
                    own: own_probes,
                    default: http,
                }));
            }
        }
        if let Some(s) = &self.switch {
            match build_switch(adapters, s) {
                Ok(sw) => b = b.switch(sw),
                Err(p) => problems.extend(p),
            }
        }
        let mut gate_names = Vec::new();
        for (i, g) in self.gates.iter().enumerate() {
            match adapters.gate(&format!("gates[{i}]"), g) {
                Ok(gate) => {
                    gate_names.push((format!("gates[{i}]"), gate.name().to_owned()));
                    b = b.gate(gate);
                }
                Err(p) => problems.extend(p),
            }
        }
        problems.extend(self.pre_switch_problems(&gate_names));
        if !self.smoke.is_empty() {
            match SmokeGate::new("smoke", self.smoke.clone()) {
                Ok(g) => b = b.gate(Arc::new(g)),
                Err(e) => problems.push(Problem {
                    path: "smoke".into(),
                    message: e.message().to_owned(),
                }),
            }
        }
        if let Some(sc) = &self.served_check {
            b = b.served_check(sc.clone());
        }
        if let Some(m) = &self.migrations {
            match adapters.migrations(m) {
                Ok(r) => b = b.migrations(r),
                Err(p) => problems.extend(p),
            }
        }
        if let Some(m) = &self.maintenance {
            match adapters.maintenance(m) {
                Ok(page) => b = b.maintenance(page),
                Err(p) => problems.extend(p),
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            let action: Result<Arc<dyn HookAction>, Error> = match (&h.command, h.webhook_source())
            {
                (Some(argv), None) => CommandHook::new(local.clone(), argv.clone())
                    .map(|c| Arc::new(c) as Arc<dyn HookAction>),
                (None, Some(source)) => match source.read() {
                    Ok(url) => WebhookHook::new(url.expose_secret())
                        .map(|w| Arc::new(w) as Arc<dyn HookAction>),
                    Err(why) => {
                        problems.push(Problem {
                            path: format!("hooks[{i}]"),
                            message: why,
                        });
                        continue;
                    }
                },
                _ => continue, // reported by `parse`
            };
            match action {
                Ok(a) => {
                    let mut hook = Hook::new(h.name.clone(), h.point, h.on.clone(), a);
                    if let Some(t) = h.timeout {
                        hook = hook.with_timeout(t);
                    }
                    b = b.hook(hook);
                }
                Err(e) => problems.push(Problem {
                    path: format!("hooks[{i}]"),
                    message: e.message().to_owned(),
                }),
            }
        }
        if problems.is_empty() {
            match b.build() {
                Ok(env) => return Ok(env),
                Err(e) => problems.push(Problem {
                    path: "environment".into(),
                    message: e.message().to_owned(),
                }),
            }
        }
        Err(PlanFileError {
            source_name: self.source_name.clone(),
            problems,
        })
    }

    /// What is wrong with blue-green's pre-switch analysis given the gates (`gates[i]` and the
    /// name each answers to): a gate that judges served requests cannot judge a slot that
    /// serves none, and `pre_switch_gates` must name gates that exist.
    fn pre_switch_problems(&self, gates: &[(String, String)]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let Strategy::BlueGreen {
            pre_switch_analysis: Some(_),
            ..
        } = &self.strategy
        else {
            return problems;
        };
        let policy = &self.policies.analysis;
        let mut known: Vec<&str> = gates.iter().map(|(_, n)| n.as_str()).collect();
        if !self.smoke.is_empty() {
            known.push("smoke");
        }
        for (j, name) in policy.pre_switch_gates.iter().flatten().enumerate() {
            if !known.contains(&name.as_str()) {
                problems.push(Problem {
                    path: format!("policies.analysis.pre_switch_gates[{j}]"),
                    message: format!(
                        "no gate is named {name:?} (the gates are: {})",
                        known.join(", ")
                    ),
                });
            }
        }
        if policy.idle_traffic {
            return problems;
        }
        // Every `[[gates]]` entry reads metrics of the requests a slot serves; the smoke checks
        // make their own requests.
        let blind: Vec<String> = gates
            .iter()
            .filter(|(_, name)| policy.judges(Step::PRE_SWITCH, name))
            .map(|(path, name)| format!("{name} ({path})"))
            .collect();
        if !blind.is_empty() {
            problems.push(Problem {
                path: "strategy.pre_switch_analysis".to_owned(),
                message: format!(
                    "gate(s) {} judge the requests a slot serves, but before the switch the idle \
                     slot serves none, so this analysis could only end inconclusive and roll \
                     back. Let the smoke checks alone judge it with `[policies.analysis] \
                     pre_switch_gates = [\"smoke\"]` (the other gates then judge the bake), or, \
                     if something sends the idle slot requests before the switch (a load \
                     generator, mirrored traffic), say so with `[policies.analysis] idle_traffic \
                     = true`",
                    blind.join(", ")
                ),
            });
        }
        problems
    }

    /// Read the plan file at `path` and [validate](PlanFile::validate) it: every problem the
    /// file and this machine show, at once, without contacting any server and without creating
    /// anything. This is what `deploy validate` runs; `plan` and `run` should too.
    pub fn validate_file(
        path: &Path,
        adapters: &dyn AdapterFactory,
    ) -> Result<Self, PlanFileError> {
        let plan = Self::load(path)?;
        plan.validate(adapters)?;
        Ok(plan)
    }

    /// Check what this plan names on this machine and build (without contacting any server,
    /// and without creating anything) every adapter it names: the artifact exists, the state
    /// directory is a directory or can be created as one, every adapter section is accepted
    /// by its adapter (secrets it names are readable), and the gates fit the strategy. Every
    /// problem is reported at once, with its key path.
    pub fn validate(&self, adapters: &dyn AdapterFactory) -> Result<(), PlanFileError> {
        let mut problems = Vec::new();
        if let Some(artifact) = &self.release.artifact
            && !artifact.exists()
        {
            // Where a relative path went, for the operator who expected the current directory.
            let note = if artifact.starts_with(&self.base_dir) {
                format!(
                    " (a relative path is read from the plan file's directory, {})",
                    self.base_dir.display()
                )
            } else {
                String::new()
            };
            problems.push(Problem {
                path: "release.artifact".to_owned(),
                message: format!("{} does not exist{note}", artifact.display()),
            });
        }
        if let Some(dir) = &self.environment.state_dir
            && let Some(why) = unusable_dir(dir)
        {
            problems.push(Problem {
                path: "environment.state_dir".to_owned(),
                message: why,
            });
        }
        if let Err(e) = self.environment(adapters) {
            problems.extend(e.problems);
        }
        if self.state.is_some()
            && let Err(e) = self.state_store(adapters)
        {
            problems.extend(e.problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PlanFileError {
                source_name: self.source_name.clone(),
                problems,
            })
        }
    }

    /// The state store this plan names: the `[state]` store, else the state directory.
    pub fn state_store(
        &self,
        adapters: &dyn AdapterFactory,
    ) -> Result<Arc<dyn StateStore>, PlanFileError> {
        let fail = |problems| PlanFileError {
            source_name: self.source_name.clone(),
            problems,
        };
        match (&self.state, &self.environment.state_dir) {
            (Some(section), _) => adapters.state_store(section).map_err(fail),
            (None, Some(dir)) => Ok(Arc::new(LocalStateStore::new(dir.clone()))),
            (None, None) => Err(fail(vec![Problem {
                path: "environment.state_dir".to_owned(),
                message: "missing".to_owned(),
            }])),
        }
    }

    /// An engine for this plan: its environment, policies and state store.
    pub fn engine(&self, adapters: &dyn AdapterFactory) -> Result<Engine, PlanFileError> {
        let store = self.state_store(adapters)?;
        Ok(Engine::new(self.environment(adapters)?)
            .with_policies(self.policies.clone())
            .with_state_store(store))
    }
}

/// Why `dir` cannot be the state directory, if it cannot: it exists and is not a directory,
/// or the nearest part of it that exists is not one (so it cannot be created).
fn unusable_dir(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|a| a.symlink_metadata().is_ok())?;
    if existing.is_dir() {
        return None;
    }
    Some(if existing == dir {
        format!(
            "{} exists and is not a directory; give a directory (it holds the lock, the \
             journals and the reports) or a path where one can be created",
            dir.display()
        )
    } else {
        format!(
            "{} cannot be created: {} is not a directory",
            dir.display(),
            existing.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[environment]
name = "production"
state_dir = "/var/lib/deploy/production"

[release]
version = "2.1.0"
artifact = "build/app.tar.gz"

[strategy]
kind = "canary"
steps = [{ set_weight = 10 }, { analyze = "2m" }, "pause_until_promoted", { set_weight = 50 }]

[policies.probe]
deadline = "90s"

[[targets]]
id = "blue"
root = "/srv/app/blue"
endpoint = "http://127.0.0.1:8081"
restart = ["systemctl", "restart", "app@blue"]

[[targets]]
id = "green"
root = "/srv/app/green"
endpoint = "http://[::1]:8082"

[switch]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"

[[hooks]]
name = "announce"
point = "before"
on = "run"
webhook = "https://chat.example/hooks/deploys"

[[smoke]]
name = "front page"
path = "/"
body_contains = ["Welcome"]

[notify]
webhook = "https://chat.example/hooks/deploys"
"#;

    #[test]
    fn a_good_plan_parses() {
        let p = PlanFile::parse("good.toml", GOOD).unwrap();
        assert_eq!(p.environment.name, "production");
        assert_eq!(p.release.version.as_str(), "2.1.0");
        assert_eq!(p.strategy.name(), "canary");
        assert_eq!(p.policies.probe.deadline, Duration::from_secs(90));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            p.targets[1].parsed_endpoint().unwrap().url("/health"),
            "http://[::1]:8082/health"
        );
        assert_eq!(p.hooks[0].point, HookPoint::Before);
        assert_eq!(p.smoke[0].body_contains, ["Welcome"]);
        assert_eq!(p.notify.as_ref().unwrap().min_severity, Severity::Warning);
        assert!(p.switch.is_some());
    }

    #[test]
    fn the_state_is_a_directory_or_a_shared_store_never_both_never_neither() {
        let problems = |text: &str| match PlanFile::parse("p.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        };
        let shared = GOOD.replace("state_dir = \"/var/lib/deploy/production\"\n", "")
            + "\n[state]\nkind = \"postgres\"\n";
        assert_eq!(problems(&shared), Vec::<String>::new());
        let p = PlanFile::parse("p.toml", &shared).unwrap();
        assert!(p.state.is_some() && p.environment.state_dir.is_none());

        let both = GOOD.to_owned() + "\n[state]\nkind = \"postgres\"\n";
        assert!(
            problems(&both)
                .iter()
                .any(|p| p.contains("environment.state_dir") && p.contains("not both")),
            "{:?}",
            problems(&both)
        );
        let neither = GOOD.replace("state_dir = \"/var/lib/deploy/production\"\n", "");
        assert!(
            problems(&neither)
                .iter()
                .any(|p| p.contains("environment.state_dir") && p.contains("missing")),
            "{:?}",
            problems(&neither)
        );
        let relative = GOOD.replace("/var/lib/deploy/production", "state/production");
        let p = PlanFile::parse_in("p.toml", &relative, Path::new("/etc/deploy")).unwrap();
        assert_eq!(
            p.environment.state_dir.as_deref(),
            Some(Path::new("/etc/deploy/state/production"))
        );
        assert_eq!(
            p.release.artifact.as_deref(),
            Some(Path::new("/etc/deploy/build/app.tar.gz"))
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let bad = r#"
[environment]
name = "prod/uction"
state_dir = "/x"
colour = "blue"

[release]
version = "2.1.0"

[strategy]
kind = "blue_green"
bake = "5m"

[options]
allow_destructive_migrations = "yes"

[notify]
webhook = "https://x"
min_severity = "loud"

[policies.probe]
dedline = "90s"

[[targets]]
id = "blue"
root = "srv/app"
endpoint = "http://127.0.0.1"

[[targets]]
id = "blue"
root = "/srv/app/green"
endpoint = "ftp://x:1"
restart = []

[[hooks]]
name = "x"
point = "during"
on = "run"

[[hooks]]
name = "y"
point = "after"
on = "deploy"
command = ["true"]

[typo]
x = 1
"#;
        let err = PlanFile::parse("bad.toml", bad).unwrap_err();
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        let text = got.join("\n");
        for expected in [
            "typo: unknown key",
            "environment.colour: unknown field `colour`",
            "options.allow_destructive_migrations: invalid type: string \"yes\", expected a boolean",
            "notify.min_severity: unknown variant `loud`",
            "policies.probe.dedline: unknown field `dedline`",
            "targets[0].endpoint: \"http://127.0.0.1\": the port is missing",
            "targets[0].root: srv/app is not an absolute path",
            "targets[1].id: target blue is listed twice",
            "targets[1].endpoint: \"ftp://x:1\": the scheme must be http or https",
            "targets[1].restart: the command is empty",
            "hooks[0].point: unknown variant `during`",
            "hooks[1].on: unknown step kind \"deploy\"",
            "switch: the blue_green strategy needs a traffic switch",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(err.to_string().starts_with("plan file bad.toml: "), "{err}");
    }

    #[test]
    fn the_probe_unhealthy_threshold_is_read_defaulted_and_warned_about_past_the_deadline() {
        // GOOD sets only the deadline: the threshold keeps its default.
        let p = PlanFile::parse("good.toml", GOOD).unwrap();
        assert_eq!(p.policies.probe.unhealthy_threshold, 3);
        assert!(p.warnings.iter().all(|w| !w.path.starts_with("policies")));

        let with = |keys: &str| {
            PlanFile::parse(
                "p.toml",
                &GOOD.replace("[policies.probe]\n", &format!("[policies.probe]\n{keys}\n")),
            )
        };
        let p = with("unhealthy_threshold = 5").unwrap();
        assert_eq!(p.policies.probe.unhealthy_threshold, 5);
        let p = with("unhealthy_threshold = 0").unwrap();
        assert_eq!(p.policies.probe.unhealthy_threshold, 0);

        // 10 checks 10 s apart outlast the 90 s deadline: accepted, with a warning.
        let p = with("unhealthy_threshold = 10\ninterval = \"10s\"").unwrap();
        let w: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.iter().any(|m| m.starts_with(
                "policies.probe.unhealthy_threshold: 10 checks 10s apart take longer than the \
                 deadline of 1m 30s"
            )),
            "{w:?}"
        );

        let e = with("unhealthy_threshold = -1").unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.path == "policies.probe.unhealthy_threshold"),
            "{e}"
        );
        let e = with("unhealty_threshold = 3").unwrap_err();
        assert!(
            e.to_string()
                .contains("policies.probe.unhealty_threshold: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_served_check_that_would_fail_correct_releases_draws_a_warning() {
        let with = |section: &str| {
            PlanFile::parse("w.toml", &format!("{GOOD}\n[served_check]\n{section}"))
                .unwrap()
                .warnings
                .iter()
                .map(ToString::to_string)
                .filter(|m| m.starts_with("served_check"))
                .collect::<Vec<_>>()
        };
        // 40 requests at 50/50 vary by 0.079: 0.05 is 0.6 of that.
        let w = with(
            "url = \"http://127.0.0.1:8080/\"\nheader = \"X-Version\"\nrequests = 40\ntolerance = 0.05\n",
        );
        assert!(
            w.iter().any(|m| m.starts_with(
                "served_check.tolerance: 0.05 with 40 requests is 0.6 standard deviations"
            ) && m.contains("give at least 900 requests or a tolerance of 0.24")),
            "{w:?}"
        );
        // The defaults (300 requests, 0.1) are 3.5 standard deviations: not warned.
        let w = with("url = \"http://127.0.0.1:8080/\"\nheader = \"X-Version\"\n");
        assert!(w.is_empty(), "{w:?}");
        let w =
            with("url = \"http://u:p@127.0.0.1:8080/\"\nheader = \"X-Version\"\nrequests = 400\n");
        assert!(
            w.iter()
                .any(|m| m.starts_with("served_check.url: credentials")),
            "{w:?}"
        );
    }

    #[test]
    fn the_served_check_section_is_read_and_checked_with_its_key_paths() {
        let good = format!(
            "{GOOD}\n[served_check]\nurl = \"http://127.0.0.1:8080/\"\nheader = \"X-Version\"\n\
             requests = 40\ntolerance = 0.05\ntimeout = \"2s\"\n"
        );
        let p = PlanFile::parse("good.toml", &good).unwrap();
        let sc = p.served_check.as_ref().unwrap();
        assert_eq!(
            (sc.url.as_str(), sc.requests, sc.tolerance, sc.timeout),
            ("http://127.0.0.1:8080/", 40, 0.05, Duration::from_secs(2))
        );
        assert_eq!(
            sc.reader(),
            Some(deploy_core::served::VersionReader::Header(
                "X-Version".into()
            ))
        );
        let defaults = format!(
            "{GOOD}\n[served_check]\nurl = \"http://127.0.0.1:8080/health\"\njson_field = \"version\"\n"
        );
        let sc = PlanFile::parse("d.toml", &defaults)
            .unwrap()
            .served_check
            .unwrap();
        assert_eq!((sc.requests, sc.tolerance), (300, 0.1));

        let problems = |section: &str| -> Vec<String> {
            match PlanFile::parse("bad.toml", &format!("{GOOD}\n[served_check]\n{section}")) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(ToString::to_string).collect(),
            }
        };
        assert_eq!(
            problems(
                "url = \"ftp://x/\"\nrequests = 0\nheader = \"X Version\"\ntolerance = 1.5\ntimeout = \"0s\"\n"
            ),
            [
                "served_check.url: ftp://x/ is not an http:// or https:// URL with a host",
                "served_check.requests: 0 requests; give 1 to 10000",
                "served_check.header: \"X Version\" is not a header name",
                "served_check.tolerance: 1.5 is not a share from 0 up to (not including) 1; 0.1 \
                 accepts ± 10 points",
                "served_check.timeout: 0 leaves a request no time to answer; give a duration such \
                 as `2s`",
            ]
        );
        let text = problems("url = \"http://x:1/\"\n").join("\n");
        assert!(
            text.contains("served_check.header: missing: give header"),
            "{text}"
        );
        let text =
            problems("url = \"http://x:1/\"\nheader = \"a\"\njson_field = \"b\"\n").join("\n");
        assert!(
            text.contains("served_check.json_field: give header or json_field, not both"),
            "{text}"
        );
        let text = problems("url = \"http://x:1/\"\nheader = \"a\"\nrequest = 3\n").join("\n");
        assert!(
            text.contains("served_check.request: unknown field"),
            "{text}"
        );
        let without_switch = GOOD.replace(
            "[switch]\nkind = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\n",
            "",
        );
        assert_ne!(without_switch, GOOD);
        let err = PlanFile::parse(
            "x.toml",
            &format!("{without_switch}\n[served_check]\nurl = \"http://x:1/\"\nheader = \"a\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("served_check: the check runs after each change"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = PlanFile::parse("x.toml", "[environment\nname = 1").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0].message.contains("line 1"),
            "{}",
            err.problems[0]
        );
    }

    #[test]
    fn a_target_kind_routes_its_keys_to_the_adapter_and_a_release_dir_needs_its_root() {
        let with_targets = |targets: &str| {
            let start = GOOD.find("[[targets]]").unwrap();
            let end = GOOD.find("[switch]").unwrap();
            format!("{}{targets}\n{}", &GOOD[..start], &GOOD[end..])
        };
        let text = with_targets(
            r#"[[targets]]
id = "blue"
kind = "release_dir"
root = "/srv/blue"
endpoint = "http://127.0.0.1:8081"

[[targets]]
id = "green"
kind = "docker"
endpoint = "http://127.0.0.1:8082"
app = "shop"
secret_env = { TOKEN = { file = "token" } }
"#,
        );
        let p = PlanFile::parse_in("p.toml", &text, Path::new("/etc/deploy")).unwrap();
        assert_eq!(p.targets[0].kind, None);
        assert_eq!(p.targets[0].root.as_deref(), Some(Path::new("/srv/blue")));
        assert_eq!(p.targets[1].kind.as_deref(), Some("docker"));
        let section = p.targets[1].section.as_ref().unwrap();
        assert_eq!(section["app"].as_str(), Some("shop"));
        assert!(section.get("id").is_none() && section.get("kind").is_none());
        assert_eq!(
            section["secret_env"]["TOKEN"]["file"].as_str(),
            Some("/etc/deploy/token"),
            "a secret file is read from the plan's directory"
        );

        let text = with_targets(
            r#"[[targets]]
id = "blue"
endpoint = "http://127.0.0.1:8081"

[[targets]]
id = "green"
kind = 3
endpoint = "http://127.0.0.1:8082"
"#,
        );
        let e = PlanFile::parse("p.toml", &text).unwrap_err();
        let shown: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("targets[0].root: missing")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("targets[1].kind: expected a string")),
            "{shown:?}"
        );
    }
}
