//! In-memory fakes of every trait: real implementations with state you can inspect and failures
//! you can script ([`Faults`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{
    BackupId, Endpoint, Health, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId,
    Verdict, VerdictKind, Version, Weights,
};
use crate::traits::{
    Command, FileKind, GateContext, HealthProbe, Host, Maintenance, MetricGate, MigrationRunner,
    Output, ProbeRequest, Target, TrafficSwitch,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a scripted fault does to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Fail with an error of this kind before acting (retryable or not).
    Fail {
        /// The error's kind.
        kind: ErrorKind,
        /// Whether the error says it is retryable.
        retryable: bool,
    },
    /// Never return, before acting (the test drops the run, as a `kill -9` would).
    Hang,
    /// Act, then never return.
    HangAfter,
    /// Wait this long before acting.
    Delay(Duration),
    /// Panic before acting (a bug in an adapter), to test that the engine contains it.
    Panic,
}

#[derive(Debug, Clone)]
struct Rule {
    method: String,
    /// 1-based call number this rule starts at; 0 means every call.
    from_call: u32,
    /// How many calls it applies to.
    times: u32,
    action: FaultAction,
}

/// Scripted failures for one fake: "fail the 2nd call of `activate`", "hang in `migrate`",
/// "every `evaluate` takes 3 s". Also counts calls per method.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<(HashMap<String, u32>, Vec<Rule>)>,
}

/// What the fake does after [`Faults::enter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Return,
    Hang,
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, method: &str, from_call: u32, times: u32, action: FaultAction) {
        lock(&self.inner).1.push(Rule {
            method: method.to_owned(),
            from_call,
            times,
            action,
        });
    }

    /// Fail call number `call` (1-based) of `method` with a permanent error.
    pub fn fail_on(&self, method: &str, call: u32) {
        self.add(
            method,
            call.max(1),
            1,
            FaultAction::Fail {
                kind: ErrorKind::Other,
                retryable: false,
            },
        );
    }

    /// Fail every call of `method` from call number `call` on, with a permanent error.
    pub fn fail_from(&self, method: &str, call: u32) {
        self.add(
            method,
            call.max(1),
            u32::MAX,
            FaultAction::Fail {
                kind: ErrorKind::Other,
                retryable: false,
            },
        );
    }

    /// Fail `times` calls of `method` starting at call `call` with a retryable error.
    pub fn fail_transiently(&self, method: &str, call: u32, times: u32) {
        self.add(
            method,
            call.max(1),
            times,
            FaultAction::Fail {
                kind: ErrorKind::Unavailable,
                retryable: true,
            },
        );
    }

    /// Make call `call` of `method` hang before acting.
    pub fn hang_on(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::Hang);
    }

    /// Make call `call` of `method` act, then hang.
    pub fn hang_after(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::HangAfter);
    }

    /// Make call `call` of `method` panic before acting.
    pub fn panic_on(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::Panic);
    }

    /// Delay every call of `method`.
    pub fn delay(&self, method: &str, delay: Duration) {
        self.add(method, 0, u32::MAX, FaultAction::Delay(delay));
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> u32 {
        lock(&self.inner).0.get(method).copied().unwrap_or(0)
    }

    /// Remove every rule (counters stay).
    pub fn clear(&self) {
        lock(&self.inner).1.clear();
    }

    /// Count a call of `method` on `object` and apply the rules that match it.
    pub(crate) async fn enter(&self, object: &str, method: &str) -> Result<After> {
        let actions: Vec<FaultAction> = {
            let mut g = lock(&self.inner);
            let n = {
                let c = g.0.entry(method.to_owned()).or_insert(0);
                *c += 1;
                *c
            };
            g.1.iter()
                .filter(|r| {
                    r.method == method
                        && (r.from_call == 0
                            || (n >= r.from_call
                                && u64::from(n) < u64::from(r.from_call) + u64::from(r.times)))
                })
                .map(|r| r.action.clone())
                .collect()
        };
        let mut after = After::Return;
        for a in actions {
            match a {
                FaultAction::Delay(d) => tokio::time::sleep(d).await,
                FaultAction::Hang => std::future::pending::<()>().await,
                FaultAction::HangAfter => after = After::Hang,
                FaultAction::Panic => panic!("{method} on {object}: scripted panic"),
                FaultAction::Fail { kind, retryable } => {
                    let e = Error::new(
                        kind,
                        format!("{method} (scripted fault)"),
                        object.to_owned(),
                        "injected failure",
                    );
                    return Err(if retryable {
                        e.retryable()
                    } else {
                        e.permanent()
                    });
                }
            }
        }
        Ok(after)
    }
}

pub(crate) async fn finish<T>(after: After, value: T) -> T {
    if after == After::Hang {
        std::future::pending::<()>().await;
    }
    value
}

#[derive(Debug, Default)]
struct TargetInner {
    prepared: BTreeSet<Version>,
    current: Option<Version>,
    running: bool,
    activations: Vec<Version>,
}

/// A fake [`Target`]: remembers prepared releases, the current version and whether it runs.
/// Methods for [`Faults`]: `current`, `prepare`, `activate`, `stop`, `start`.
#[derive(Debug)]
pub struct FakeTarget {
    id: TargetId,
    endpoint: Endpoint,
    inner: Mutex<TargetInner>,
    unhealthy: Mutex<HashSet<Version>>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeTarget {
    /// A target named `id` with nothing deployed, at a made-up loopback endpoint.
    pub fn new(id: &str) -> Self {
        Self {
            id: TargetId::new(id).expect("valid target id"),
            endpoint: Endpoint::http("127.0.0.1", 9),
            inner: Mutex::new(TargetInner::default()),
            unhealthy: Mutex::new(HashSet::new()),
            faults: Faults::new(),
        }
    }

    /// Start with `version` prepared, current and running.
    pub fn with_current(self, version: &str) -> Self {
        let v = Version::new(version).expect("valid version");
        {
            let mut g = lock(&self.inner);
            g.prepared.insert(v.clone());
            g.current = Some(v);
            g.running = true;
        }
        self
    }

    /// Use `endpoint`.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Make `version` fail its health checks on this target.
    pub fn mark_unhealthy(&self, version: &str) {
        lock(&self.unhealthy).insert(Version::new(version).expect("valid version"));
    }

    /// The current version, without going through the trait (no faults, no counting).
    pub fn version(&self) -> Option<Version> {
        lock(&self.inner).current.clone()
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        lock(&self.inner).running
    }

    /// Every version activated, in order.
    pub fn activations(&self) -> Vec<Version> {
        lock(&self.inner).activations.clone()
    }

    /// Whether it serves a healthy version.
    pub fn is_healthy(&self) -> bool {
        let g = lock(&self.inner);
        g.running
            && g.current
                .as_ref()
                .is_some_and(|v| !lock(&self.unhealthy).contains(v))
    }
}

#[async_trait]
impl Target for FakeTarget {
    fn id(&self) -> &TargetId {
        &self.id
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn current(&self) -> Result<Option<Version>> {
        let after = self.faults.enter(self.id.as_str(), "current").await?;
        finish(after, Ok(self.version())).await
    }

    async fn prepare(&self, release: &Release) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "prepare").await?;
        lock(&self.inner).prepared.insert(release.version.clone());
        finish(after, Ok(())).await
    }

    async fn activate(&self, version: &Version) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "activate").await?;
        {
            let mut g = lock(&self.inner);
            if !g.prepared.contains(version) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("activate {version} on"),
                    format!("target {}", self.id),
                    "that version was never prepared",
                ));
            }
            g.current = Some(version.clone());
            g.running = true;
            g.activations.push(version.clone());
        }
        finish(after, Ok(())).await
    }

    async fn stop(&self) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "stop").await?;
        lock(&self.inner).running = false;
        finish(after, Ok(())).await
    }

    async fn start(&self) -> Result<()> {
        let after = self.faults.enter(self.id.as_str(), "start").await?;
        {
            let mut g = lock(&self.inner);
            g.running = g.current.is_some();
        }
        finish(after, Ok(())).await
    }
}

#[derive(Debug, Default)]
struct SwitchInner {
    weights: Weights,
    sessions: HashMap<TargetId, u64>,
    drain_per_poll: HashMap<TargetId, u64>,
    draining: HashSet<TargetId>,
    history: Vec<Weights>,
}

/// A fake [`TrafficSwitch`]: weights in memory, sessions that drain by a set amount per poll.
/// Methods for [`Faults`]: `weights`, `set_weights`, `drain`, `active_sessions`.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    inner: Mutex<SwitchInner>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeSwitch {
    /// A switch with these `(target, weight)` pairs.
    pub fn new(weights: &[(&str, u32)]) -> Self {
        let w: Weights = weights
            .iter()
            .map(|(t, w)| (TargetId::new(*t).expect("valid id"), *w))
            .collect();
        Self {
            inner: Mutex::new(SwitchInner {
                history: vec![w.clone()],
                weights: w,
                ..SwitchInner::default()
            }),
            faults: Faults::new(),
        }
    }

    /// Give `target` `sessions` open sessions that close `per_poll` at a time once it drains
    /// (`per_poll = 0`: they never close).
    pub fn with_sessions(self, target: &str, sessions: u64, per_poll: u64) -> Self {
        {
            let id = TargetId::new(target).expect("valid id");
            let mut g = lock(&self.inner);
            g.sessions.insert(id.clone(), sessions);
            g.drain_per_poll.insert(id, per_poll);
        }
        self
    }

    /// The weights now, without going through the trait.
    pub fn current(&self) -> Weights {
        lock(&self.inner).weights.clone()
    }

    /// Every weight table it had, first to last.
    pub fn history(&self) -> Vec<Weights> {
        lock(&self.inner).history.clone()
    }

    fn unknown(&self, g: &SwitchInner, targets: &[&TargetId]) -> Result<()> {
        let missing: Vec<String> = targets
            .iter()
            .filter(|t| g.weights.get(t).is_none())
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                "set weights on",
                "fake switch",
                format!("no such target(s): {}", missing.join(", ")),
            ))
        }
    }
}

#[async_trait]
impl TrafficSwitch for FakeSwitch {
    async fn weights(&self) -> Result<Weights> {
        let after = self.faults.enter("fake switch", "weights").await?;
        finish(after, Ok(self.current())).await
    }

    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        let after = self.faults.enter("fake switch", "set_weights").await?;
        {
            let mut g = lock(&self.inner);
            let names: Vec<&TargetId> = weights.iter().map(|(t, _)| t).collect();
            self.unknown(&g, &names)?;
            for (t, w) in weights.iter() {
                g.weights.set(t.clone(), w);
                if w > 0 {
                    g.draining.remove(t);
                }
            }
            let snapshot = g.weights.clone();
            g.history.push(snapshot);
        }
        finish(after, Ok(())).await
    }

    async fn drain(&self, target: &TargetId) -> Result<()> {
        let after = self.faults.enter("fake switch", "drain").await?;
        {
            let mut g = lock(&self.inner);
            self.unknown(&g, &[target])?;
            g.weights.set(target.clone(), 0);
            g.draining.insert(target.clone());
            let snapshot = g.weights.clone();
            g.history.push(snapshot);
        }
        finish(after, Ok(())).await
    }

    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        let after = self.faults.enter("fake switch", "active_sessions").await?;
        let n = {
            let mut g = lock(&self.inner);
            self.unknown(&g, &[target])?;
            let per_poll = g.drain_per_poll.get(target).copied().unwrap_or(0);
            let draining = g.draining.contains(target);
            let s = g.sessions.entry(target.clone()).or_insert(0);
            let now = *s;
            if draining {
                *s = s.saturating_sub(per_poll);
            }
            now
        };
        finish(after, Ok(n)).await
    }
}

/// A fake [`HealthProbe`] that asks the [`FakeTarget`]s themselves whether they are healthy.
/// Method for [`Faults`]: `check`.
#[derive(Debug)]
pub struct FakeProbe {
    targets: Vec<Arc<FakeTarget>>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeProbe {
    /// A probe over these targets.
    pub fn new(targets: Vec<Arc<FakeTarget>>) -> Self {
        Self {
            targets,
            faults: Faults::new(),
        }
    }
}

#[async_trait]
impl HealthProbe for FakeProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let after = self.faults.enter(request.target.as_str(), "check").await?;
        let zero = Duration::ZERO;
        let health = match self.targets.iter().find(|t| t.id() == &request.target) {
            None => Health::unhealthy(format!("no such target {}", request.target), zero),
            Some(t) => {
                let version = t.version();
                if !t.is_running() {
                    Health::unhealthy("not running", zero)
                } else if !t.is_healthy() {
                    Health::unhealthy("HTTP 500", zero).with_version(version)
                } else if request.expected_version.is_some() && request.expected_version != version
                {
                    Health::unhealthy(
                        format!(
                            "version {}, expected {}",
                            version.as_ref().map_or("none".into(), ToString::to_string),
                            request
                                .expected_version
                                .as_ref()
                                .map_or("none".into(), ToString::to_string)
                        ),
                        zero,
                    )
                    .with_version(version)
                } else {
                    Health::healthy("HTTP 200", zero).with_version(version)
                }
            }
        };
        finish(after, Ok(health)).await
    }
}

#[derive(Debug, Default)]
struct MigrationsInner {
    applied: Vec<MigrationInfo>,
    available: Vec<MigrationInfo>,
    backups: Vec<(BackupId, Vec<MigrationInfo>)>,
    fail_at: Option<SchemaVersion>,
}

/// A fake [`MigrationRunner`]: an applied list, an available list, backups as copies.
/// Methods for [`Faults`]: `status`, `backup`, `migrate`, `verify`, `revert`.
#[derive(Debug, Default)]
pub struct FakeMigrations {
    inner: Mutex<MigrationsInner>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeMigrations {
    /// A runner with `applied` already applied and `pending` waiting, as `(version, name,
    /// destructive reason)`.
    pub fn new(applied: &[(&str, &str)], pending: &[(&str, &str, Option<&str>)]) -> Self {
        let applied: Vec<MigrationInfo> = applied
            .iter()
            .map(|(v, n)| MigrationInfo::new(*v, *n, None))
            .collect();
        let mut available = applied.clone();
        available.extend(
            pending
                .iter()
                .map(|(v, n, d)| MigrationInfo::new(*v, *n, d.map(str::to_owned))),
        );
        Self {
            inner: Mutex::new(MigrationsInner {
                applied,
                available,
                ..MigrationsInner::default()
            }),
            faults: Faults::new(),
        }
    }

    /// Make the migration `version` fail: the ones before it are applied, it and later are not.
    pub fn fail_at(&self, version: &str) {
        lock(&self.inner).fail_at = Some(SchemaVersion(version.to_owned()));
    }

    /// The latest applied version.
    pub fn current(&self) -> Option<SchemaVersion> {
        lock(&self.inner).applied.last().map(|m| m.version.clone())
    }

    /// Migrations not applied yet.
    pub fn pending(&self) -> Vec<MigrationInfo> {
        self.status_now().pending
    }

    /// Backups taken.
    pub fn backups(&self) -> Vec<BackupId> {
        lock(&self.inner)
            .backups
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn status_now(&self) -> MigrationStatus {
        let g = lock(&self.inner);
        let pending = g
            .available
            .iter()
            .filter(|m| !g.applied.contains(m))
            .cloned()
            .collect();
        MigrationStatus::new(g.applied.last().map(|m| m.version.clone()), pending)
    }
}

#[async_trait]
impl MigrationRunner for FakeMigrations {
    async fn status(&self) -> Result<MigrationStatus> {
        let after = self.faults.enter("fake database", "status").await?;
        finish(after, Ok(self.status_now())).await
    }

    async fn backup(&self) -> Result<BackupId> {
        let after = self.faults.enter("fake database", "backup").await?;
        let id = {
            let mut g = lock(&self.inner);
            let id = BackupId(format!("backup-{}", g.backups.len() + 1));
            let copy = g.applied.clone();
            g.backups.push((id.clone(), copy));
            id
        };
        finish(after, Ok(id)).await
    }

    async fn migrate(&self) -> Result<Option<SchemaVersion>> {
        let after = self.faults.enter("fake database", "migrate").await?;
        {
            let mut g = lock(&self.inner);
            let pending: Vec<MigrationInfo> = g
                .available
                .iter()
                .filter(|m| !g.applied.contains(m))
                .cloned()
                .collect();
            for m in pending {
                if g.fail_at.as_ref() == Some(&m.version) {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        format!("apply migration {} {}", m.version, m.name),
                        "on fake database",
                        "ERROR: scripted failure (nothing of this migration was applied)",
                    ));
                }
                g.applied.push(m);
            }
        }
        finish(after, Ok(self.current())).await
    }

    async fn verify(&self, expected: Option<&SchemaVersion>) -> Result<()> {
        let after = self.faults.enter("fake database", "verify").await?;
        let cur = self.current();
        if cur.as_ref() != expected {
            return Err(Error::new(
                ErrorKind::Rejected,
                "verify schema of",
                "fake database",
                format!("at {cur:?}, expected {expected:?}"),
            ));
        }
        finish(after, Ok(())).await
    }

    async fn revert(&self, to: Option<&SchemaVersion>, backup: Option<&BackupId>) -> Result<()> {
        let after = self.faults.enter("fake database", "revert").await?;
        {
            let mut g = lock(&self.inner);
            let restored = backup.and_then(|b| {
                g.backups
                    .iter()
                    .find(|(id, _)| id == b)
                    .map(|(_, a)| a.clone())
            });
            match restored {
                Some(applied) => g.applied = applied,
                None => {
                    let keep = match to {
                        None => 0,
                        Some(v) => g
                            .applied
                            .iter()
                            .position(|m| &m.version == v)
                            .map_or(g.applied.len(), |i| i + 1),
                    };
                    g.applied.truncate(keep);
                }
            }
        }
        finish(after, Ok(())).await
    }
}

/// A fake [`MetricGate`] that answers a scripted sequence of verdict kinds, then repeats the last.
/// Method for [`Faults`]: `evaluate`.
#[derive(Debug)]
pub struct FakeGate {
    name: String,
    script: Mutex<VecDeque<VerdictKind>>,
    last: Mutex<VerdictKind>,
    evaluation_time: Duration,
    lookback: Duration,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeGate {
    /// Each evaluation takes `d` (as a scrape gate waits its window), and says so through
    /// [`MetricGate::evaluation_time`].
    pub fn with_evaluation_time(mut self, d: Duration) -> Self {
        self.evaluation_time = d;
        self
    }

    /// Say through [`MetricGate::lookback`] that each measurement looks back over `d` (as a
    /// PromQL range does).
    pub fn with_lookback(mut self, d: Duration) -> Self {
        self.lookback = d;
        self
    }

    /// A gate answering `kinds` in order, then the last one forever.
    pub fn sequence(name: &str, kinds: &[VerdictKind]) -> Self {
        Self {
            name: name.to_owned(),
            script: Mutex::new(kinds.iter().copied().collect()),
            last: Mutex::new(kinds.last().copied().unwrap_or(VerdictKind::Pass)),
            evaluation_time: Duration::ZERO,
            lookback: Duration::ZERO,
            faults: Faults::new(),
        }
    }

    /// A gate that always passes.
    pub fn passing(name: &str) -> Self {
        Self::sequence(name, &[VerdictKind::Pass])
    }

    /// A gate that always fails.
    pub fn failing(name: &str) -> Self {
        Self::sequence(name, &[VerdictKind::Fail])
    }

    /// How many times it was evaluated.
    pub fn evaluations(&self) -> u32 {
        self.faults.calls("evaluate")
    }
}

#[async_trait]
impl MetricGate for FakeGate {
    fn name(&self) -> &str {
        &self.name
    }

    fn evaluation_time(&self) -> Duration {
        self.evaluation_time
    }

    fn lookback(&self) -> Duration {
        self.lookback
    }

    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        let after = self.faults.enter(&self.name, "evaluate").await?;
        tokio::time::sleep(self.evaluation_time).await;
        let kind = lock(&self.script).pop_front().unwrap_or(*lock(&self.last));
        let (value, no_data) = match kind {
            VerdictKind::Pass => (Some(0.001), false),
            VerdictKind::Fail => (Some(0.05), false),
            VerdictKind::Inconclusive => (None, true),
            VerdictKind::Error => (None, false),
        };
        let mut v = Verdict::new(
            kind,
            value,
            "< 0.01",
            format!("fake:{}", self.name),
            format!("scripted {kind}"),
        );
        v.no_data = no_data;
        finish(after, Ok(v)).await
    }
}

/// A fake [`Maintenance`] page. Methods for [`Faults`]: `enable`, `disable`, `is_enabled`.
#[derive(Debug, Default)]
pub struct FakeMaintenance {
    on: Mutex<bool>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeMaintenance {
    /// A page that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it is on, without going through the trait.
    pub fn is_on(&self) -> bool {
        *lock(&self.on)
    }
}

#[async_trait]
impl Maintenance for FakeMaintenance {
    async fn enable(&self) -> Result<()> {
        let after = self.faults.enter("fake maintenance page", "enable").await?;
        *lock(&self.on) = true;
        finish(after, Ok(())).await
    }

    async fn disable(&self) -> Result<()> {
        let after = self
            .faults
            .enter("fake maintenance page", "disable")
            .await?;
        *lock(&self.on) = false;
        finish(after, Ok(())).await
    }

    async fn is_enabled(&self) -> Result<bool> {
        let after = self
            .faults
            .enter("fake maintenance page", "is_enabled")
            .await?;
        finish(after, Ok(self.is_on())).await
    }
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir,
    Link(PathBuf),
}

type Responder = Arc<dyn Fn(&Command) -> Output + Send + Sync>;

/// A fake [`Host`]: an in-memory file system, and commands answered by a responder you supply
/// (default: exit 0, no output). Every command run is recorded. Methods for [`Faults`]: the
/// trait's method names.
pub struct FakeHost {
    fs: Mutex<BTreeMap<PathBuf, Node>>,
    commands: Mutex<Vec<Command>>,
    responder: Responder,
    /// Scripted failures.
    pub faults: Faults,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("files", &lock(&self.fs).len())
            .finish_non_exhaustive()
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// An empty host with `/` only.
    pub fn new() -> Self {
        let mut fs = BTreeMap::new();
        fs.insert(PathBuf::from("/"), Node::Dir);
        Self {
            fs: Mutex::new(fs),
            commands: Mutex::new(Vec::new()),
            responder: Arc::new(|_| Output::new(Some(0), None, Vec::new(), Vec::new())),
            faults: Faults::new(),
        }
    }

    /// Answer commands with `responder`.
    pub fn with_responder(
        mut self,
        responder: impl Fn(&Command) -> Output + Send + Sync + 'static,
    ) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// The mode of the file at `path`, if there is a file.
    pub fn mode(&self, path: &Path) -> Option<u32> {
        match lock(&self.fs).get(path) {
            Some(Node::File(_, mode)) => Some(*mode),
            _ => None,
        }
    }

    /// Every command run so far.
    pub fn commands(&self) -> Vec<Command> {
        lock(&self.commands).clone()
    }

    fn norm(path: &Path) -> Result<PathBuf> {
        if !path.is_absolute() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "resolve",
                path.display().to_string(),
                "the fake host takes absolute paths only",
            ));
        }
        let mut out = PathBuf::from("/");
        for c in path.components() {
            match c {
                Component::Normal(p) => out.push(p),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn parent_is_dir(fs: &BTreeMap<PathBuf, Node>, path: &Path, op: &'static str) -> Result<()> {
        match path.parent().map(|p| fs.get(p)) {
            Some(Some(Node::Dir)) | None => Ok(()),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                op,
                path.display().to_string(),
                "no such directory",
            )),
        }
    }
}

#[async_trait]
impl Host for FakeHost {
    fn name(&self) -> &str {
        "fake"
    }

    async fn run(&self, command: &Command) -> Result<Output> {
        let after = self.faults.enter("fake host", "run").await?;
        lock(&self.commands).push(command.clone());
        let out = (self.responder)(command);
        finish(after, Ok(out)).await
    }

    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
        let after = self.faults.enter("fake host", "write_file").await?;
        let p = Self::norm(path)?;
        {
            let mut fs = lock(&self.fs);
            Self::parent_is_dir(&fs, &p, "write")?;
            if matches!(fs.get(&p), Some(Node::Dir)) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "write",
                    p.display().to_string(),
                    "is a directory",
                ));
            }
            fs.insert(p, Node::File(contents.to_vec(), mode.unwrap_or(0o644)));
        }
        finish(after, Ok(())).await
    }

    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()> {
        let bytes = tokio::fs::read(local)
            .await
            .map_err(|e| Error::io("read", local.display().to_string(), e))?;
        self.write_file(path, &bytes, mode).await
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let after = self.faults.enter("fake host", "read_file").await?;
        let p = Self::norm(path)?;
        let bytes = match lock(&self.fs).get(&p) {
            Some(Node::File(b, _)) => b.clone(),
            _ => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "read",
                    p.display().to_string(),
                    "no such file",
                ));
            }
        };
        finish(after, Ok(bytes)).await
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "remove").await?;
        let p = Self::norm(path)?;
        lock(&self.fs).retain(|k, _| !(k == &p || k.starts_with(&p)));
        finish(after, Ok(())).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "rename").await?;
        let (f, t) = (Self::norm(from)?, Self::norm(to)?);
        {
            let mut fs = lock(&self.fs);
            if !fs.contains_key(&f) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "rename",
                    f.display().to_string(),
                    "no such file",
                ));
            }
            Self::parent_is_dir(&fs, &t, "rename")?;
            let moved: Vec<(PathBuf, Node)> = fs
                .iter()
                .filter(|(k, _)| k.starts_with(&f))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            fs.retain(|k, _| !k.starts_with(&f) && !k.starts_with(&t));
            for (k, v) in moved {
                let rest = k.strip_prefix(&f).unwrap_or(Path::new(""));
                fs.insert(
                    if rest.as_os_str().is_empty() {
                        t.clone()
                    } else {
                        t.join(rest)
                    },
                    v,
                );
            }
        }
        finish(after, Ok(())).await
    }

    async fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "symlink").await?;
        let l = Self::norm(link)?;
        {
            let mut fs = lock(&self.fs);
            Self::parent_is_dir(&fs, &l, "symlink")?;
            if fs.contains_key(&l) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "symlink",
                    l.display().to_string(),
                    "already exists",
                ));
            }
            fs.insert(l, Node::Link(target.to_owned()));
        }
        finish(after, Ok(())).await
    }

    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>> {
        let after = self.faults.enter("fake host", "read_link").await?;
        let l = Self::norm(link)?;
        let r = match lock(&self.fs).get(&l) {
            Some(Node::Link(t)) => Some(t.clone()),
            None => None,
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "read link",
                    l.display().to_string(),
                    "not a symlink",
                ));
            }
        };
        finish(after, Ok(r)).await
    }

    async fn create_dir_all(&self, path: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "create_dir_all").await?;
        let p = Self::norm(path)?;
        {
            let mut fs = lock(&self.fs);
            for a in p.ancestors() {
                match fs.get(a) {
                    Some(Node::Dir) => {}
                    None => {
                        fs.insert(a.to_owned(), Node::Dir);
                    }
                    Some(_) => {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "create directory",
                            a.display().to_string(),
                            "a file is in the way",
                        ));
                    }
                }
            }
        }
        finish(after, Ok(())).await
    }

    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>> {
        let after = self.faults.enter("fake host", "list_dir").await?;
        let p = Self::norm(path)?;
        let out = {
            let fs = lock(&self.fs);
            if !matches!(fs.get(&p), Some(Node::Dir)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "list",
                    p.display().to_string(),
                    "no such directory",
                ));
            }
            fs.iter()
                .filter(|(k, _)| k.parent() == Some(p.as_path()) && **k != p)
                .map(|(k, v)| {
                    let name = k
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (name, kind(v))
                })
                .collect()
        };
        finish(after, Ok(out)).await
    }

    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>> {
        let after = self.faults.enter("fake host", "file_kind").await?;
        let p = Self::norm(path)?;
        let k = lock(&self.fs).get(&p).map(kind);
        finish(after, Ok(k)).await
    }
}

fn kind(n: &Node) -> FileKind {
    match n {
        Node::File(..) => FileKind::File,
        Node::Dir => FileKind::Dir,
        Node::Link(_) => FileKind::Symlink,
    }
}
