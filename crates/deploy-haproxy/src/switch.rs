//! [`HaproxySwitch`]: the `TrafficSwitch` over the Runtime API — weights, drain, bring-back,
//! and a durable state that survives reloads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    DynHealthProbe, DynHost, Endpoint, Error, ErrorKind, LocalHost, ProbeRequest, Result, TargetId,
    TrafficSwitch, Weights,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{AdminState, RuntimeClient, check_name};
use crate::parse::StatRow;
use crate::transport::Socket;

/// HAProxy's largest server weight.
pub const MAX_WEIGHT: u32 = 256;

/// What a [`HaproxySwitch`] manages and how it waits. Serde, so it can live in a deploy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SwitchConfig {
    /// The backend whose servers are the targets.
    pub backend: String,
    /// Target → server name in the backend. Empty: every server of the backend is a target of
    /// the same name.
    #[serde(default)]
    pub servers: BTreeMap<TargetId, String>,
    /// How long [`HaproxySwitch::drain_and_wait`] waits for the sessions to reach 0.
    #[serde(with = "humantime_serde", default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// How often the session count is read while draining.
    #[serde(with = "humantime_serde", default = "defaults::poll")]
    pub poll_interval: Duration,
    /// Past the drain deadline, put the server in `maint` (sessions held by cookie or stick
    /// persistence would otherwise keep a drained server busy forever).
    #[serde(default = "defaults::yes")]
    pub escalate_to_maint: bool,
    /// The servers' health-check interval (`inter`, 2 s by default in HAProxy): after `ready`, a
    /// server is trusted only once a check completed after it, i.e. after this long.
    #[serde(with = "humantime_serde", default = "defaults::check_interval")]
    pub check_interval: Duration,
    /// How long to wait for HAProxy's own check to pass when bringing a server back.
    #[serde(with = "humantime_serde", default = "defaults::check_wait")]
    pub check_timeout: Duration,
    /// Where to write `show servers state` after each change, when the config loads it back
    /// (`server-state-file PATH` in `global`, `load-server-state-from-file global` in
    /// `defaults`). Without it, a reload resets the weights to the config's.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

mod defaults {
    use std::time::Duration;
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn poll() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn check_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn check_wait() -> Duration {
        Duration::from_secs(20)
    }
}

impl SwitchConfig {
    /// Defaults for `backend`: every server a target, drain for 30 s polling every 100 ms then
    /// escalate to `maint`, checks every 2 s, no state file.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            servers: BTreeMap::new(),
            drain_timeout: defaults::drain_timeout(),
            poll_interval: defaults::poll(),
            escalate_to_maint: true,
            check_interval: defaults::check_interval(),
            check_timeout: defaults::check_wait(),
            state_file: None,
        }
    }
}

/// How a [`HaproxySwitch::drain_and_wait`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DrainReport {
    /// The target drained.
    pub target: TargetId,
    /// How long it took, from `state drain` to 0 sessions or to the deadline.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
    /// Sessions still open at the end (0 when drained).
    pub sessions_left: u64,
    /// Whether the server was put in `maint` after the deadline.
    pub escalated_to_maint: bool,
}

impl DrainReport {
    /// Whether the sessions reached 0.
    pub fn drained(&self) -> bool {
        self.sessions_left == 0
    }
}

/// Builds a [`HaproxySwitch`].
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use deploy_core::{TargetId, TrafficSwitch, Weights};
/// use deploy_haproxy::HaproxySwitch;
/// let switch = HaproxySwitch::builder("app")
///     .socket("/run/haproxy/admin.sock".parse()?)
///     .state_file("/var/lib/haproxy/server-state")
///     .build()?;
/// let (blue, green) = (TargetId::new("blue")?, TargetId::new("green")?);
/// switch.set_weights(&Weights::new().with(blue, 0).with(green, 100)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct HaproxySwitchBuilder {
    config: SwitchConfig,
    client: Option<RuntimeClient>,
    probe: Option<DynHealthProbe>,
    endpoints: BTreeMap<TargetId, Endpoint>,
    host: Option<DynHost>,
}

impl HaproxySwitchBuilder {
    /// A builder for `backend` with [`SwitchConfig::new`]'s defaults.
    pub fn new(backend: impl Into<String>) -> Self {
        Self::from_config(SwitchConfig::new(backend))
    }

    /// A builder from a whole config.
    pub fn from_config(config: SwitchConfig) -> Self {
        Self {
            config,
            client: None,
            probe: None,
            endpoints: BTreeMap::new(),
            host: None,
        }
    }

    /// Talk to HAProxy through this client.
    pub fn client(mut self, client: RuntimeClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Talk to HAProxy through this local socket.
    pub fn socket(self, socket: Socket) -> Self {
        self.client(RuntimeClient::new(socket))
    }

    /// Map `target` to the server `server` of the backend (by default a target is the server of
    /// the same name, and every server is a target).
    pub fn target(mut self, target: TargetId, server: impl Into<String>) -> Self {
        self.config.servers.insert(target, server.into());
        self
    }

    /// Probe a server with `probe` before bringing it back from `maint` (the issue's "re-enable"
    /// sequence). Without a probe, only HAProxy's own checks are awaited.
    pub fn probe(mut self, probe: DynHealthProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Where `target` serves, for the probe (default: the server's `addr` in `show stat`).
    pub fn endpoint(mut self, target: TargetId, endpoint: Endpoint) -> Self {
        self.endpoints.insert(target, endpoint);
        self
    }

    /// Drain deadline (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Poll interval while draining and waiting for checks (default 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Whether to put a server in `maint` past the drain deadline (default yes).
    pub fn escalate_to_maint(mut self, escalate: bool) -> Self {
        self.config.escalate_to_maint = escalate;
        self
    }

    /// The servers' check interval and how long to wait for a passing check on bring-back.
    pub fn checks(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.check_interval = interval;
        self.config.check_timeout = timeout;
        self
    }

    /// Write `show servers state` to `path` after each change (see [`SwitchConfig::state_file`]).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.state_file = Some(path.into());
        self
    }

    /// Write the state file on this host (default: the local machine).
    pub fn state_host(mut self, host: DynHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Check everything and build the switch; every problem found is reported at once.
    pub fn build(self) -> Result<HaproxySwitch> {
        let mut problems = Vec::new();
        if let Err(e) = check_name("backend", &self.config.backend) {
            problems.push(e.to_string());
        }
        for (t, s) in &self.config.servers {
            if let Err(e) = check_name("server", s) {
                problems.push(format!("target {t}: {e}"));
            }
        }
        if self.client.is_none() {
            problems.push("no socket: call .socket(..) or .client(..)".to_owned());
        }
        if self.config.poll_interval.is_zero() {
            problems.push("poll_interval must be > 0".to_owned());
        }
        if self
            .config
            .state_file
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            problems.push("state_file must be an absolute path".to_owned());
        }
        let Some(client) = self.client.filter(|_| problems.is_empty()) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("HAProxy switch of backend {:?}", self.config.backend),
                problems.join("; "),
            ));
        };
        Ok(HaproxySwitch {
            config: self.config,
            client,
            probe: self.probe,
            endpoints: self.endpoints,
            host: self.host.unwrap_or_else(|| Arc::new(LocalHost::new())),
        })
    }
}

/// A [`TrafficSwitch`] over HAProxy's Runtime API: each target is a server of one backend.
///
/// - `set_weights` sends every change on one command line (raises before lowers, so the backend
///   never has all weights at 0 in between), then reads `show stat` back and checks each weight.
///   Weights are absolute HAProxy weights, 0 to 256; the engine's percentages fit as they are.
///   A server in `maint` is brought back safely first (probe → weight 0 + `ready` → a passing
///   HAProxy check → the weight); a draining one is made `ready`.
/// - `weights` reads `show stat`: the user weight, or 0 for a server in `DRAIN` or `MAINT`.
/// - `drain` is `state drain`; [`drain_and_wait`](Self::drain_and_wait) also waits for `scur`
///   to reach 0 and escalates to `maint` past its deadline.
/// - With a state file, every change is followed by a dump of `show servers state`, so a reload
///   keeps the weights.
///
/// After a reload, the socket only sees the new worker: sessions still held by an old worker do
/// not count in `active_sessions`.
#[derive(Debug)]
pub struct HaproxySwitch {
    config: SwitchConfig,
    client: RuntimeClient,
    probe: Option<DynHealthProbe>,
    endpoints: BTreeMap<TargetId, Endpoint>,
    host: DynHost,
}

impl HaproxySwitch {
    /// Start building a switch of `backend`.
    pub fn builder(backend: impl Into<String>) -> HaproxySwitchBuilder {
        HaproxySwitchBuilder::new(backend)
    }

    /// The client it talks through.
    pub fn client(&self) -> &RuntimeClient {
        &self.client
    }

    /// Its configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    fn backend(&self) -> &str {
        &self.config.backend
    }

    fn object(&self) -> String {
        format!(
            "backend {} on HAProxy {}",
            self.backend(),
            self.client.socket()
        )
    }

    fn server_name<'a>(&'a self, target: &'a TargetId) -> Result<&'a str> {
        if self.config.servers.is_empty() {
            return Ok(target.as_str());
        }
        self.config
            .servers
            .get(target)
            .map(String::as_str)
            .ok_or_else(|| self.unknown(target))
    }

    fn unknown(&self, target: &TargetId) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!("find target {target} in"),
            self.object(),
            "no such server in the backend (or not mapped to a target)",
        )
        .permanent()
    }

    /// The servers of the backend as `show stat` reports them now.
    pub async fn status(&self) -> Result<Vec<StatRow>> {
        self.client.show_stat(Some(self.backend())).await
    }

    fn row<'a>(&self, rows: &'a [StatRow], target: &TargetId) -> Result<&'a StatRow> {
        let server = self.server_name(target)?;
        rows.iter()
            .find(|r| r.name == server && r.proxy == self.backend())
            .ok_or_else(|| self.unknown(target))
    }

    fn effective(row: &StatRow) -> u32 {
        if row.is_maint() || row.is_drain() {
            0
        } else {
            row.uweight.or(row.weight).unwrap_or(0)
        }
    }

    fn weights_of(&self, rows: &[StatRow]) -> Result<Weights> {
        let mut w = Weights::new();
        if self.config.servers.is_empty() {
            for r in rows.iter().filter(|r| r.proxy == self.backend()) {
                if let Ok(t) = TargetId::new(r.name.as_str()) {
                    w.set(t, Self::effective(r));
                }
            }
        } else {
            for t in self.config.servers.keys() {
                w.set(t.clone(), Self::effective(self.row(rows, t)?));
            }
        }
        Ok(w)
    }

    /// Write `show servers state` to the state file, if one is configured.
    pub async fn persist_state(&self) -> Result<()> {
        let Some(path) = &self.config.state_file else {
            return Ok(());
        };
        let state = self.client.show_servers_state(None).await?;
        self.host
            .write_file(path, state.raw.as_bytes(), Some(0o600))
            .await
            .map_err(|e| {
                e.context(
                    "write the HAProxy server-state-file",
                    path.display().to_string(),
                )
            })
    }

    fn command(&self, server: &str, rest: &str) -> String {
        format!("set server {}/{server} {rest}", self.backend())
    }

    /// Bring a server back from `maint`: probe it, weight 0 + `ready`, wait for HAProxy's own
    /// check to pass after the `ready` (which marks it UP at once, before any check ran).
    async fn bring_back(&self, target: &TargetId, row: &StatRow) -> Result<()> {
        let server = row.name.as_str();
        let op = format!("bring back {target} ({}/{server})", self.backend());
        if let Some(probe) = &self.probe {
            let endpoint = match self.endpoints.get(target) {
                Some(e) => e.clone(),
                None => endpoint_of(&row.addr).ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        op.clone(),
                        self.object(),
                        format!(
                            "cannot probe: the server address {:?} is not ip:port; set an endpoint",
                            row.addr
                        ),
                    )
                })?,
            };
            let health = probe
                .check(&ProbeRequest::new(target.clone(), endpoint, None))
                .await
                .map_err(|e| e.context(op.clone(), self.object()))?;
            if !health.healthy {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    op,
                    self.object(),
                    format!(
                        "the health probe says unhealthy: {}; left in maint",
                        health.reason
                    ),
                ));
            }
        }
        self.client
            .batch(&[
                self.command(server, "weight 0"),
                self.command(server, "state ready"),
            ])
            .await?;
        let started = Instant::now();
        loop {
            let now = self.client.server_stat(self.backend(), server).await?;
            if now.status == "no check" || now.check_status.is_empty() {
                return Ok(());
            }
            let elapsed = started.elapsed();
            let up = now.base_status() == "UP" && !now.in_transition() && now.check_passed();
            if up && elapsed >= self.config.check_interval {
                return Ok(());
            }
            let down = now.base_status() == "DOWN";
            if down || elapsed >= self.config.check_timeout {
                // Leave it as it was: no traffic, no checks.
                let _ = self
                    .client
                    .batch(&[self.command(server, "state maint")])
                    .await;
                return Err(Error::new(
                    if down {
                        ErrorKind::Unavailable
                    } else {
                        ErrorKind::Timeout
                    },
                    op,
                    self.object(),
                    format!(
                        "HAProxy's health check reads {} {} after {elapsed:?}; put back in maint",
                        now.status, now.check_status
                    ),
                ));
            }
            tokio::time::sleep(self.config.poll_interval.min(Duration::from_millis(50))).await;
        }
    }

    /// Drain `target` and wait until its sessions reach 0, at most the drain timeout; past it,
    /// escalate to `maint` when configured. The report says how long it took and what was left.
    pub async fn drain_and_wait(&self, target: &TargetId) -> Result<DrainReport> {
        let started = Instant::now();
        self.drain(target).await?;
        let server = self.server_name(target)?.to_owned();
        let deadline = started + self.config.drain_timeout;
        loop {
            let row = self.client.server_stat(self.backend(), &server).await?;
            let left = row.scur;
            if left == 0 {
                return Ok(DrainReport {
                    target: target.clone(),
                    took: started.elapsed(),
                    sessions_left: 0,
                    escalated_to_maint: false,
                });
            }
            if Instant::now() >= deadline {
                let escalated = self.config.escalate_to_maint;
                if escalated {
                    self.client
                        .set_server_state(self.backend(), &server, AdminState::Maint)
                        .await?;
                    self.persist_state().await?;
                }
                tracing::warn!(%target, sessions = left, escalated, "drain deadline passed");
                return Ok(DrainReport {
                    target: target.clone(),
                    took: started.elapsed(),
                    sessions_left: left,
                    escalated_to_maint: escalated,
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

fn endpoint_of(addr: &str) -> Option<Endpoint> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some(Endpoint::http(host.trim_matches(['[', ']']), port))
}

#[async_trait]
impl TrafficSwitch for HaproxySwitch {
    async fn weights(&self) -> Result<Weights> {
        let rows = self.status().await?;
        self.weights_of(&rows)
    }

    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        let op = format!("set weights {weights}");
        if let Some((t, w)) = weights.iter().find(|(_, w)| *w > MAX_WEIGHT) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                op,
                self.object(),
                format!("weight {w} of {t} is above HAProxy's maximum of {MAX_WEIGHT}"),
            ));
        }
        let rows = self.status().await?;
        // Resolve everything before changing anything: an unknown target changes nothing.
        let mut plan = Vec::new();
        for (t, w) in weights.iter() {
            let row = self.row(&rows, t)?;
            plan.push((t, w, row));
        }
        for (t, w, row) in &plan {
            if *w > 0 && row.is_maint() {
                self.bring_back(t, row).await?;
            }
        }
        let mut raise = Vec::new();
        let mut lower = Vec::new();
        for (_, w, row) in &plan {
            let server = row.name.as_str();
            if *w > 0 {
                raise.push(self.command(server, &format!("weight {w}")));
                if row.is_drain() || row.is_maint() {
                    raise.push(self.command(server, "state ready"));
                }
            } else {
                lower.push(self.command(server, "weight 0"));
            }
        }
        raise.extend(lower);
        self.client.batch(&raise).await?;

        let now = self.weights().await?;
        for (t, w) in weights.iter() {
            if now.get(t) != Some(w) {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("confirm {op}"),
                    self.object(),
                    format!("HAProxy accepted the commands but reads back {now}"),
                ));
            }
        }
        tracing::info!(backend = self.backend(), weights = %weights, "weights set");
        self.persist_state().await
    }

    async fn drain(&self, target: &TargetId) -> Result<()> {
        let rows = self.status().await?;
        let row = self.row(&rows, target)?;
        if !row.is_drain() && !row.is_maint() {
            self.client
                .set_server_state(self.backend(), &row.name, AdminState::Drain)
                .await?;
            tracing::info!(backend = self.backend(), %target, "draining");
            self.persist_state().await?;
        }
        Ok(())
    }

    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        let rows = self.status().await?;
        Ok(self.row(&rows, target)?.scur)
    }
}

impl fmt::Display for HaproxySwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.object())
    }
}

#[cfg(test)]
mod tests {
    //! The drain deadline and escalation logic under tokio's paused clock, over a scripted
    //! transport (the real-server tests cover the same paths with real time).

    use std::sync::Mutex;

    use super::*;
    use crate::transport::Transport;

    #[derive(Debug, Default)]
    struct Scripted {
        /// `scur` of green answered by successive `show stat`s; the last one repeats.
        scur: Mutex<Vec<u64>>,
        status: Mutex<String>,
        sent: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Transport for Arc<Scripted> {
        fn describe(&self) -> String {
            "scripted".to_owned()
        }

        async fn exchange(&self, line: &str) -> Result<String> {
            let line = line.trim_end().to_owned();
            self.sent.lock().unwrap().push(line.clone());
            if line.starts_with("show stat") {
                let scur = {
                    let mut s = self.scur.lock().unwrap();
                    if s.len() > 1 { s.remove(0) } else { s[0] }
                };
                let status = self.status.lock().unwrap().clone();
                return Ok(format!(
                    "# pxname,svname,scur,status,weight,uweight,check_status,type\n\
                     app,blue,0,UP,100,100,L7OK,2\napp,green,{scur},{status},0,0,L7OK,2\n\n"
                ));
            }
            let mut answer = String::new();
            for cmd in line.split("; ") {
                if let Some(state) = cmd.strip_prefix("set server app/green state ") {
                    *self.status.lock().unwrap() = match state {
                        "drain" => "DRAIN",
                        "maint" => "MAINT",
                        _ => "UP",
                    }
                    .to_owned();
                }
                answer.push('\n');
            }
            Ok(answer)
        }
    }

    fn switch(script: &Arc<Scripted>, escalate: bool) -> HaproxySwitch {
        *script.status.lock().unwrap() = "UP".to_owned();
        HaproxySwitch::builder("app")
            .client(RuntimeClient::new(Arc::clone(script)))
            .drain_timeout(Duration::from_secs(30))
            .poll_interval(Duration::from_secs(1))
            .escalate_to_maint(escalate)
            .build()
            .unwrap()
    }

    fn green() -> TargetId {
        TargetId::new("green").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_when_sessions_reach_zero() {
        let script = Arc::new(Scripted::default());
        // drain() reads twice (state, then its confirmation); then one poll a second: 3, 2, 1, 0.
        *script.scur.lock().unwrap() = vec![3, 3, 3, 2, 1, 0];
        let s = switch(&script, true);
        let report = s.drain_and_wait(&green()).await.unwrap();
        assert!(report.drained());
        assert!(!report.escalated_to_maint);
        assert_eq!(report.took, Duration::from_secs(3));
        let sent = script.sent.lock().unwrap().clone();
        assert!(sent.contains(&"set server app/green state drain".to_owned()));
        assert!(!sent.iter().any(|l| l.contains("maint")));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_escalates_to_maint_at_its_deadline() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![2];
        let s = switch(&script, true);
        let report = s.drain_and_wait(&green()).await.unwrap();
        assert_eq!(report.sessions_left, 2);
        assert!(report.escalated_to_maint);
        assert_eq!(report.took, Duration::from_secs(30));
        assert_eq!(script.status.lock().unwrap().as_str(), "MAINT");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_without_escalation_leaves_the_server_draining() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![1];
        let s = switch(&script, false);
        let report = s.drain_and_wait(&green()).await.unwrap();
        assert_eq!(
            (report.sessions_left, report.escalated_to_maint),
            (1, false)
        );
        assert_eq!(report.took, Duration::from_secs(30));
        assert_eq!(script.status.lock().unwrap().as_str(), "DRAIN");
    }

    #[test]
    fn config_is_serde_with_humantime_durations() {
        let c: SwitchConfig = serde_json::from_str(
            r#"{"backend":"app","drain_timeout":"45s","servers":{"blue":"app-blue-1"}}"#,
        )
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(45));
        assert_eq!(c.poll_interval, Duration::from_millis(100));
        assert!(c.escalate_to_maint);
        assert_eq!(
            c.servers
                .get(&TargetId::new("blue").unwrap())
                .map(String::as_str),
            Some("app-blue-1")
        );
    }
}
