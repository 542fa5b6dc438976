//! [`HaproxySwitch`]: the `TrafficSwitch` over the Runtime API — weights, drain, bring-back,
//! and a durable state that survives reloads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    DynHealthProbe, DynHost, Endpoint, Error, ErrorKind, ProbeRequest, Result, TargetId,
    TrafficSwitch, Weights,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{AdminState, RuntimeClient};
use crate::config::{HaproxySwitchBuilder, HaproxySwitchConfig};
use crate::parse::StatRow;
use crate::sticky::{ALWAYS, NEVER, StickyConfig};

/// HAProxy's largest server weight.
pub const MAX_WEIGHT: u32 = 256;

/// How a [`HaproxySwitch::drain_and_wait`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DrainReport {
    /// The target drained.
    pub target: TargetId,
    /// How long it took, from `state drain` to 0 sessions or to the timeout.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
    /// Sessions still open at the end (0 when drained).
    pub sessions_left: u64,
}

impl DrainReport {
    /// Whether the sessions reached 0.
    pub fn drained(&self) -> bool {
        self.sessions_left == 0
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
/// - `drain` is `state drain`: no new traffic, established sessions go on.
/// - `cut_sessions` puts the server in `maint` and sends `shutdown sessions server B/S`, then
///   reads `scur` back until it is 0 (see [`RuntimeClient::shutdown_sessions`] for how clients
///   see it); a later weight > 0 brings the server back as above.
/// - `active_sessions` is the server's `scur`.
/// - With a state file, every change is followed by a dump of `show servers state`, so a reload
///   keeps the weights.
///
/// With [`StickyConfig`] (`sticky`), users keep the version that first answered them (a cookie
/// the backend inserts), the canary's weight steers only users without the cookie, and:
/// - a weight of 0 also puts the server in `maint`: HAProxy still sends a cookie to a server at
///   weight 0 or in `drain`, but places its holder again when the server is in `maint` — so at
///   promotion the old version's users move to the new one, at rollback the canary's users
///   return; a later weight > 0 brings the server back as from any `maint`;
/// - the map the backend's `use-server` rules read is kept pointing `always` at the canary (the
///   server that just got a weight after none) and `never` at the stable one; with one server
///   left, both at it;
/// - with [`StickyConfig::dynamic_key`], a change that leaves one server live sets a new
///   dynamic cookie key, voiding every cookie issued before.
///
/// After a reload, the socket only sees the new worker: sessions still held by an old worker do
/// not count in `active_sessions`.
#[derive(Debug)]
pub struct HaproxySwitch {
    pub(crate) backend: String,
    pub(crate) servers: BTreeMap<TargetId, String>,
    pub(crate) check_interval: Duration,
    pub(crate) check_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) state_file: Option<PathBuf>,
    pub(crate) sticky: Option<StickyConfig>,
    pub(crate) client: RuntimeClient,
    pub(crate) probe: Option<DynHealthProbe>,
    pub(crate) endpoints: BTreeMap<TargetId, Endpoint>,
    pub(crate) host: DynHost,
}

impl HaproxySwitch {
    /// Start building a switch of `backend`.
    pub fn builder(backend: impl Into<String>) -> HaproxySwitchBuilder {
        HaproxySwitchBuilder::new(backend)
    }

    /// The switch a plan file's `[switch]` section describes (see [`HaproxySwitchConfig`]);
    /// every problem in it is reported at once, naming its key.
    pub fn from_config(config: HaproxySwitchConfig) -> Result<Self> {
        HaproxySwitchBuilder::from_config(config).build()
    }

    /// The client it talks through.
    pub fn client(&self) -> &RuntimeClient {
        &self.client
    }

    /// The backend whose servers are its targets.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    fn object(&self) -> String {
        format!(
            "backend {} on HAProxy {}",
            self.backend(),
            self.client.socket()
        )
    }

    fn server_name<'a>(&'a self, target: &'a TargetId) -> Result<&'a str> {
        if self.servers.is_empty() {
            return Ok(target.as_str());
        }
        self.servers
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

    /// Its sticky cohorts' settings, if it has them.
    pub fn sticky(&self) -> Option<&StickyConfig> {
        self.sticky.as_ref()
    }

    /// Check, through the Runtime API, that HAProxy runs the sticky lines this switch needs
    /// (see [`StickyConfig`]): the backend inserts the configured cookie, every target's server
    /// has a cookie of its own, and the map is loaded (its `always`/`never` entries, if any,
    /// name servers of the switch). Every problem is reported at once (`InvalidInput`). Call it
    /// when planning; a switch without `sticky` passes. What the API cannot show — the
    /// `use-server` lines reading the header, `option redispatch` — is not checked.
    pub async fn check_sticky(&self) -> Result<()> {
        let Some(sticky) = &self.sticky else {
            return Ok(());
        };
        let rows = self.client.show_stat(None).await?;
        let servers = self.server_names(&rows);
        let names: Vec<&str> = servers.iter().map(String::as_str).collect();
        let problems = sticky
            .check(&self.client, self.backend(), &rows, &names)
            .await;
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            "check the sticky canary lines of",
            self.object(),
            problems.join("; "),
        )
        .permanent())
    }

    fn server_names(&self, rows: &[StatRow]) -> Vec<String> {
        if self.servers.is_empty() {
            rows.iter()
                .filter(|r| r.proxy == self.backend() && r.kind == crate::RowKind::Server)
                .map(|r| r.name.clone())
                .collect()
        } else {
            self.servers.values().cloned().collect()
        }
    }

    /// Which server `always` and `never` name once `weights` are set: (canary, stable).
    fn cohorts(
        &self,
        rows: &[StatRow],
        weights: &Weights,
        map: &BTreeMap<String, String>,
    ) -> Result<Option<(String, String)>> {
        // (server, weight before, weight after) for every server of the switch.
        let before = self.weights_of(rows)?;
        let mut all = Vec::new();
        for (t, b) in before.iter() {
            let after = weights.get(t).unwrap_or(b);
            all.push((self.server_name(t)?.to_owned(), b, after));
        }
        let live: Vec<&(String, u32, u32)> = all.iter().filter(|s| s.2 > 0).collect();
        match live.as_slice() {
            [] => return Ok(None),
            [one] => return Ok(Some((one.0.clone(), one.0.clone()))),
            _ => {}
        }
        let fresh: Vec<_> = live.iter().filter(|s| s.1 == 0).collect();
        let old: Vec<_> = live.iter().filter(|s| s.1 > 0).collect();
        if let (Some(canary), Some(stable)) = (
            fresh.iter().min_by_key(|s| (s.2, &s.0)),
            old.iter().max_by_key(|s| (s.1, std::cmp::Reverse(&s.0))),
        ) {
            return Ok(Some((canary.0.clone(), stable.0.clone())));
        }
        // No server joined (a canary's next step): keep what the map says while both are live.
        let is_live = |name: &String| live.iter().any(|s| &s.0 == name);
        if let (Some(a), Some(n)) = (map.get(ALWAYS), map.get(NEVER))
            && a != n
            && is_live(a)
            && is_live(n)
        {
            return Ok(Some((a.clone(), n.clone())));
        }
        let canary = live.iter().min_by_key(|s| (s.2, &s.0)).map(|s| s.0.clone());
        let stable = live
            .iter()
            .filter(|s| Some(&s.0) != canary.as_ref())
            .max_by_key(|s| (s.2, std::cmp::Reverse(&s.0)))
            .map(|s| s.0.clone());
        Ok(canary.zip(stable))
    }

    /// The servers of the backend as `show stat` reports them now.
    pub async fn status(&self) -> Result<Vec<StatRow>> {
        self.client.show_stat(Some(self.backend())).await
    }

    /// The servers of the backend, with only the columns a switch reads.
    async fn rows(&self) -> Result<Vec<StatRow>> {
        self.client.backend_servers(self.backend()).await
    }

    /// The row of `target`'s server alone.
    async fn server_row(&self, target: &TargetId) -> Result<StatRow> {
        let server = self.server_name(target)?;
        match self.client.server_stat(self.backend(), server).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.unknown(target)),
            other => other,
        }
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
        if self.servers.is_empty() {
            for r in rows.iter().filter(|r| r.proxy == self.backend()) {
                if let Ok(t) = TargetId::new(r.name.as_str()) {
                    w.set(t, Self::effective(r));
                }
            }
        } else {
            for t in self.servers.keys() {
                w.set(t.clone(), Self::effective(self.row(rows, t)?));
            }
        }
        Ok(w)
    }

    /// Write `show servers state` to the state file, if one is configured.
    pub async fn persist_state(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let state = self.client.show_servers_state(None).await?;
        // The host's error names the file.
        self.host
            .write_file(path, state.raw.as_bytes(), Some(0o600))
            .await
            .map_err(|e| e.context("save the server state of", self.object()))
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
            if up && elapsed >= self.check_interval {
                return Ok(());
            }
            let down = now.base_status() == "DOWN";
            if down || elapsed >= self.check_timeout {
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
            tokio::time::sleep(self.poll_interval.min(Duration::from_millis(50))).await;
        }
    }

    /// Drain `target` and wait until its sessions reach 0, for at most `timeout`: for tools that
    /// drain without the engine (the engine drains with its own `[policies.drain]`, calling
    /// [`drain`](TrafficSwitch::drain) and [`active_sessions`](TrafficSwitch::active_sessions)).
    /// Nothing else happens past `timeout`: the server stays in `DRAIN` and the report says how
    /// many sessions were left; [`cut_sessions`](TrafficSwitch::cut_sessions) closes them.
    pub async fn drain_and_wait(
        &self,
        target: &TargetId,
        timeout: Duration,
    ) -> Result<DrainReport> {
        let started = Instant::now();
        self.drain(target).await?;
        let server = self.server_name(target)?.to_owned();
        let deadline = started + timeout;
        loop {
            let left = self.client.server_stat(self.backend(), &server).await?.scur;
            if left == 0 || Instant::now() >= deadline {
                if left > 0 {
                    tracing::warn!(%target, sessions = left, "drain timeout passed");
                }
                return Ok(DrainReport {
                    target: target.clone(),
                    took: started.elapsed(),
                    sessions_left: left,
                });
            }
            tokio::time::sleep(
                self.poll_interval
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
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
    /// A sticky switch checks the running HAProxy ([`check_sticky`](Self::check_sticky)) before a
    /// run is planned.
    async fn check(&self) -> Result<()> {
        self.check_sticky().await
    }

    async fn weights(&self) -> Result<Weights> {
        let rows = self.rows().await?;
        let mut weights = self.weights_of(&rows)?;
        // `show stat` reads DOWN for a server its checks fail, whatever its admin state: one
        // drained (or in maint) takes no traffic once its checks pass either, so it weighs 0.
        let down: Vec<&str> = rows
            .iter()
            .filter(|r| r.proxy == self.backend() && r.base_status() == "DOWN")
            .map(|r| r.name.as_str())
            .collect();
        if !down.is_empty() {
            let admin = self.client.admin_states(self.backend(), &down).await?;
            let targets: Vec<TargetId> = weights.iter().map(|(t, _)| t.clone()).collect();
            for t in targets {
                let out = admin.get(self.server_name(&t)?);
                if out.is_some_and(|(drain, maint)| *drain || *maint) {
                    weights.set(t, 0);
                }
            }
        }
        Ok(weights)
    }

    /// One server's row (`show stat <backend> 4 <sid>`), and its admin state when its checks
    /// hold it DOWN, as [`weights`](TrafficSwitch::weights) reads them.
    async fn weight_of(&self, target: &TargetId) -> Result<Option<u32>> {
        let row = match self.server_row(target).await {
            Ok(row) => row,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut weight = Self::effective(&row);
        if weight > 0 && row.base_status() == "DOWN" {
            let admin = self
                .client
                .admin_states(self.backend(), &[row.name.as_str()])
                .await?;
            if admin
                .get(&row.name)
                .is_some_and(|(drain, maint)| *drain || *maint)
            {
                weight = 0;
            }
        }
        Ok(Some(weight))
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
        let rows = self.rows().await?;
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
        if let Some(sticky) = &self.sticky {
            // Before any weight moves: the header follows the cohorts the new weights make.
            let map = sticky.read_map(&self.client).await?;
            if let Some((canary, stable)) = self.cohorts(&rows, weights, &map)? {
                sticky.point(&self.client, &map, &canary, &stable).await?;
            }
        }
        // Weights that grow go first, then the ones that shrink, then the zeros. Observed on 2.6
        // with `balance roundrobin`: blue 90 → 50 sent before green 10 → 50 makes the next ~270
        // new sessions all go to green before the 1:1 alternation sets in; green first, none.
        plan.sort_by_key(|(_, w, row)| (*w == 0, *w <= Self::effective(row)));
        let mut raise = Vec::new();
        let mut lower = Vec::new();
        for (_, w, row) in &plan {
            let server = row.name.as_str();
            if *w > 0 {
                raise.push(self.command(server, &format!("weight {w}")));
                // Always, not only when `show stat` reads DRAIN: a server drained and then
                // failing its checks reads DOWN, and would come back UP as DRAIN (weight 0)
                // once its checks pass. `state ready` on a ready server changes nothing.
                raise.push(self.command(server, "state ready"));
            } else {
                lower.push(self.command(server, "weight 0"));
                if self.sticky.is_some() && !row.is_maint() {
                    // Its cookie holders are placed again only when it is in maint.
                    lower.push(self.command(server, "state maint"));
                }
            }
        }
        raise.extend(lower);
        self.client.batch(&raise).await?;
        if let Some(sticky) = self.sticky.as_ref().filter(|s| s.dynamic_key) {
            // After the weights: a user placed again before this would keep a valid cookie.
            let before = self.weights_of(&rows)?;
            let live = |t: &TargetId, b: u32| weights.get(t).unwrap_or(b) > 0;
            let after: Vec<&TargetId> = before
                .iter()
                .filter(|(t, b)| live(t, *b))
                .map(|(t, _)| t)
                .collect();
            let was: Vec<&TargetId> = before
                .iter()
                .filter(|(_, b)| *b > 0)
                .map(|(t, _)| t)
                .collect();
            if after.len() == 1 && after != was {
                sticky.renew_key(&self.client, self.backend()).await?;
                tracing::info!(backend = self.backend(), "sticky cookies renewed");
            }
        }

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
        let row = self.server_row(target).await?;
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
        Ok(self.server_row(target).await?.scur)
    }

    async fn cut_sessions(&self, target: &TargetId) -> Result<()> {
        let server = self.server_row(target).await?.name;
        let within = |e: Error| e.context("cut the sessions of", format!("target {target}"));
        self.client
            .set_server_state(self.backend(), &server, AdminState::Maint)
            .await
            .map_err(within)?;
        let cut = self
            .client
            .shutdown_sessions(self.backend(), &server)
            .await
            .map_err(within);
        // The server is in maint whether or not the sessions closed: keep that across reloads.
        let saved = self.persist_state().await;
        cut?;
        tracing::info!(backend = self.backend(), %target, "sessions cut, server in maint");
        saved
    }
}

impl fmt::Display for HaproxySwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.object())
    }
}

#[cfg(test)]
mod tests {
    //! `drain_and_wait`'s timeout and `cut_sessions` under tokio's paused clock, over a scripted
    //! transport (the real-server tests cover the same paths with real time).

    use std::sync::{Arc, Mutex};

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

        async fn exchange(&self, line: &str, _limit: usize) -> Result<String> {
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
            if line.starts_with("show servers state") {
                return Ok("1\n# be_id be_name srv_id srv_name\n1 app 1 green\n\n".to_owned());
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
                if cmd == "shutdown sessions server app/green" {
                    *self.scur.lock().unwrap() = vec![0];
                }
                answer.push('\n');
            }
            Ok(answer)
        }
    }

    fn switch(script: &Arc<Scripted>) -> HaproxySwitch {
        *script.status.lock().unwrap() = "UP".to_owned();
        HaproxySwitch::builder("app")
            .client(RuntimeClient::new(Arc::clone(script)))
            .poll_interval(Duration::from_secs(1))
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
        let s = switch(&script);
        let report = s
            .drain_and_wait(&green(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(report.drained());
        assert_eq!(report.took, Duration::from_secs(3));
        let sent = script.sent.lock().unwrap().clone();
        assert!(sent.contains(&"set server app/green state drain".to_owned()));
        assert!(!sent.iter().any(|l| l.contains("maint")));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_and_wait_stops_at_its_timeout_and_leaves_the_server_draining() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![2];
        let s = switch(&script);
        let report = s
            .drain_and_wait(&green(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(!report.drained());
        assert_eq!(report.sessions_left, 2);
        assert_eq!(report.took, Duration::from_secs(30));
        assert_eq!(script.status.lock().unwrap().as_str(), "DRAIN");
        let sent = script.sent.lock().unwrap().clone();
        assert!(
            !sent
                .iter()
                .any(|l| l.contains("maint") || l.starts_with("shutdown")),
            "{sent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_and_wait_stops_at_a_timeout_between_two_polls() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![1];
        let s = switch(&script);
        let report = s
            .drain_and_wait(&green(), Duration::from_millis(2_500))
            .await
            .unwrap();
        assert_eq!(report.sessions_left, 1);
        assert_eq!(report.took, Duration::from_millis(2_500));
        assert_eq!(script.status.lock().unwrap().as_str(), "DRAIN");
    }

    #[tokio::test(start_paused = true)]
    async fn cut_sessions_puts_the_server_in_maint_then_shuts_its_sessions() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![2];
        let s = switch(&script);
        s.drain(&green()).await.unwrap();
        s.cut_sessions(&green()).await.unwrap();
        assert_eq!(script.status.lock().unwrap().as_str(), "MAINT");
        assert_eq!(s.active_sessions(&green()).await.unwrap(), 0);
        assert_eq!(s.weights().await.unwrap().get(&green()), Some(0));
        let sent = script.sent.lock().unwrap().clone();
        let maint = sent
            .iter()
            .position(|l| l == "set server app/green state maint")
            .expect("maint sent");
        let shut = sent
            .iter()
            .position(|l| l == "shutdown sessions server app/green")
            .expect("shutdown sent");
        assert!(
            maint < shut,
            "maint first, so no new session arrives: {sent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cut_sessions_of_an_unknown_target_is_not_found_and_sends_nothing() {
        let script = Arc::new(Scripted::default());
        *script.scur.lock().unwrap() = vec![0];
        let s = switch(&script);
        let e = s
            .cut_sessions(&TargetId::new("nosuch").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let sent = script.sent.lock().unwrap().clone();
        assert!(sent.iter().all(|l| l.starts_with("show")), "{sent:?}");
    }
}
