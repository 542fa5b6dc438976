//! [`HaproxySwitchConfig`]: the `[switch]` section of a plan file with `kind = "haproxy"`, and
//! [`HaproxySwitchBuilder`], which builds a [`HaproxySwitch`] from it or from named setters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    DynHealthProbe, DynHost, Endpoint, Error, ErrorKind, LocalHost, Result, TargetId,
};
use serde::{Deserialize, Serialize};

use crate::client::{RuntimeClient, check_name};
use crate::sticky::StickyConfig;
use crate::switch::HaproxySwitch;
use crate::transport::Socket;

/// The `kind` that names a [`HaproxySwitch`] in a plan file's `[switch]` section.
pub const KIND: &str = "haproxy";

mod defaults {
    use std::time::Duration;

    pub(super) fn check_interval() -> Duration {
        Duration::from_secs(2)
    }

    pub(super) fn check_timeout() -> Duration {
        Duration::from_secs(20)
    }

    pub(super) fn poll_interval() -> Duration {
        Duration::from_millis(100)
    }
}

/// A plan file's `[switch]` section with `kind = "haproxy"` (the `kind` key itself is read by
/// whoever picks the adapter, not by this type). Unknown keys are refused.
///
/// ```toml
/// [switch]
/// kind = "haproxy"
/// socket = "/run/haproxy/admin.sock"
/// backend = "shop"
/// servers = { blue = "shop-blue", green = "shop-green" }
/// check_interval = "2s"
/// check_timeout = "20s"
/// state_file = "/var/lib/haproxy/server-state"
///
/// [switch.sticky]                 # optional: canary users keep their version
/// cookie = "SRV"
/// header = "X-Canary"
/// map = "/etc/haproxy/canary.map"
/// ```
///
/// How long a drain waits, and whether the remaining sessions are then cut, is the engine's
/// `[policies.drain]` (`timeout`, `on_timeout = "cut"`), not this section's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HaproxySwitchConfig {
    /// `socket`: the Runtime API socket, spelled as in a `stats socket` line
    /// (`/run/haproxy/admin.sock`, `unix@/path`, `ipv4@127.0.0.1:9999`). It needs `level admin`.
    pub socket: Socket,
    /// `backend`: the backend whose servers are the targets.
    pub backend: String,
    /// `servers`: target → server name in the backend. Absent or empty: every server of the
    /// backend is a target of the same name.
    #[serde(default)]
    pub servers: BTreeMap<TargetId, String>,
    /// `check_interval`: the servers' health-check interval (`inter` in the config; 2 s by
    /// default, as in HAProxy). A server brought back from `maint` is trusted once a check
    /// passed at least this long after its `state ready`.
    #[serde(with = "humantime_serde", default = "defaults::check_interval")]
    pub check_interval: Duration,
    /// `check_timeout`: how long to wait for HAProxy's own check to pass when bringing a server
    /// back from `maint` (default 20 s); past it the server is put back in `maint`.
    #[serde(with = "humantime_serde", default = "defaults::check_timeout")]
    pub check_timeout: Duration,
    /// `state_file`: an absolute path where `show servers state` is written after each change,
    /// for HAProxy to load back on reload (`server-state-file PATH` in `global`,
    /// `load-server-state-from-file global` in `defaults`). Absent: a reload resets the weights
    /// to the config's.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// `sticky`: sticky canary cohorts (see [`StickyConfig`]). Absent: weighted round robin
    /// per request, as the backend's config says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
}

impl HaproxySwitchConfig {
    /// The servers of `backend` behind `socket`, every server a target of its own name, checks
    /// every 2 s awaited at most 20 s, no state file.
    pub fn new(socket: Socket, backend: impl Into<String>) -> Self {
        Self {
            socket,
            backend: backend.into(),
            servers: BTreeMap::new(),
            check_interval: defaults::check_interval(),
            check_timeout: defaults::check_timeout(),
            state_file: None,
            sticky: None,
        }
    }
}

/// Builds a [`HaproxySwitch`].
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use std::time::Duration;
/// use deploy_core::{TargetId, TrafficSwitch, Weights};
/// use deploy_haproxy::HaproxySwitch;
/// let (blue, green) = (TargetId::new("blue")?, TargetId::new("green")?);
/// let switch = HaproxySwitch::builder("app")
///     .socket("/run/haproxy/admin.sock".parse()?)
///     .server(blue.clone(), "app-blue")
///     .server(green.clone(), "app-green")
///     .check_interval(Duration::from_secs(1))
///     .state_file("/var/lib/haproxy/server-state")
///     .build()?;
/// switch.set_weights(&Weights::new().with(blue, 0).with(green, 100)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct HaproxySwitchBuilder {
    backend: String,
    servers: BTreeMap<TargetId, String>,
    check_interval: Duration,
    check_timeout: Duration,
    poll_interval: Duration,
    state_file: Option<PathBuf>,
    sticky: Option<StickyConfig>,
    client: Option<RuntimeClient>,
    probe: Option<DynHealthProbe>,
    endpoints: BTreeMap<TargetId, Endpoint>,
    host: Option<DynHost>,
}

impl HaproxySwitchBuilder {
    /// A builder for `backend`, with [`HaproxySwitchConfig::new`]'s defaults and no socket yet.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            servers: BTreeMap::new(),
            check_interval: defaults::check_interval(),
            check_timeout: defaults::check_timeout(),
            poll_interval: defaults::poll_interval(),
            state_file: None,
            sticky: None,
            client: None,
            probe: None,
            endpoints: BTreeMap::new(),
            host: None,
        }
    }

    /// A builder holding everything `config` says (its socket included).
    pub fn from_config(config: HaproxySwitchConfig) -> Self {
        let HaproxySwitchConfig {
            socket,
            backend,
            servers,
            check_interval,
            check_timeout,
            state_file,
            sticky,
        } = config;
        let mut b = Self::new(backend)
            .socket(socket)
            .check_interval(check_interval)
            .check_timeout(check_timeout);
        b.servers = servers;
        b.state_file = state_file;
        b.sticky = sticky;
        b
    }

    /// Talk to HAProxy through this client (e.g. one over a [`HostSocket`](crate::HostSocket)).
    pub fn client(mut self, client: RuntimeClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Talk to HAProxy through this local socket.
    pub fn socket(self, socket: Socket) -> Self {
        self.client(RuntimeClient::new(socket))
    }

    /// Target `target` is the server `server` of the backend. Without any of these, every
    /// server of the backend is a target of the same name; with them, only the targets named.
    pub fn server(mut self, target: TargetId, server: impl Into<String>) -> Self {
        self.servers.insert(target, server.into());
        self
    }

    /// Probe a server with `probe` before bringing it back from `maint`. Without a probe, only
    /// HAProxy's own checks are awaited.
    pub fn probe(mut self, probe: DynHealthProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Where `target` serves, for the probe (default: the server's `addr` in `show stat`).
    pub fn endpoint(mut self, target: TargetId, endpoint: Endpoint) -> Self {
        self.endpoints.insert(target, endpoint);
        self
    }

    /// How often the switch reads the state while it waits (a check after a bring-back, the
    /// sessions in [`HaproxySwitch::drain_and_wait`]); default 100 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The servers' health-check interval (see [`HaproxySwitchConfig::check_interval`]).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// The longest wait for a passing check on bring-back (see
    /// [`HaproxySwitchConfig::check_timeout`]).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Write `show servers state` to `path` after each change (see
    /// [`HaproxySwitchConfig::state_file`]).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Keep canary users on their version (see [`HaproxySwitchConfig::sticky`]).
    pub fn sticky(mut self, sticky: StickyConfig) -> Self {
        self.sticky = Some(sticky);
        self
    }

    /// Write the state file on this host (default: the local machine).
    pub fn state_host(mut self, host: DynHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Check everything and build the switch; every problem found is reported at once, each
    /// naming its key.
    pub fn build(self) -> Result<HaproxySwitch> {
        let mut problems = Vec::new();
        if let Err(e) = check_name("backend", &self.backend) {
            problems.push(format!("backend {:?}: {}", self.backend, e.message()));
        }
        for (t, s) in &self.servers {
            if let Err(e) = check_name("server", s) {
                problems.push(format!("servers.{t} {s:?}: {}", e.message()));
            }
        }
        if self.client.is_none() {
            problems.push("no socket: call .socket(..) or .client(..)".to_owned());
        }
        if self.poll_interval.is_zero() {
            problems.push("poll_interval must be more than 0".to_owned());
        }
        if self.check_timeout.is_zero() {
            problems.push("check_timeout must be more than 0".to_owned());
        }
        if let Some(p) = self.state_file.as_ref().filter(|p| !p.is_absolute()) {
            problems.push(format!(
                "state_file {}: must be an absolute path",
                p.display()
            ));
        }
        if let Some(sticky) = &self.sticky {
            problems.extend(sticky.problems());
        }
        let Some(client) = self.client.filter(|_| problems.is_empty()) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("the HAProxy switch of backend {:?}", self.backend),
                problems.join("; "),
            ));
        };
        Ok(HaproxySwitch {
            backend: self.backend,
            servers: self.servers,
            check_interval: self.check_interval,
            check_timeout: self.check_timeout,
            poll_interval: self.poll_interval,
            state_file: self.state_file,
            sticky: self.sticky,
            client,
            probe: self.probe,
            endpoints: self.endpoints,
            host: self.host.unwrap_or_else(|| Arc::new(LocalHost::new())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> TargetId {
        TargetId::new(id).unwrap()
    }

    #[test]
    fn a_plan_file_section_deserializes_with_humantime_durations_and_defaults() {
        let c: HaproxySwitchConfig = serde_json::from_str(
            r#"{"socket":"/run/haproxy/admin.sock","backend":"shop",
                "servers":{"blue":"shop-blue","green":"shop-green"},
                "check_interval":"500ms","state_file":"/var/lib/haproxy/server-state"}"#,
        )
        .unwrap();
        assert_eq!(c.socket, Socket::unix("/run/haproxy/admin.sock"));
        assert_eq!(c.backend, "shop");
        assert_eq!(
            c.servers.get(&t("blue")).map(String::as_str),
            Some("shop-blue")
        );
        assert_eq!(c.check_interval, Duration::from_millis(500));
        assert_eq!(c.check_timeout, Duration::from_secs(20), "the default");
        assert_eq!(
            c.state_file.as_deref(),
            Some(std::path::Path::new("/var/lib/haproxy/server-state"))
        );

        let minimal: HaproxySwitchConfig =
            serde_json::from_str(r#"{"socket":"ipv4@127.0.0.1:9999","backend":"api"}"#).unwrap();
        assert_eq!(
            minimal,
            HaproxySwitchConfig::new(Socket::tcp("127.0.0.1:9999".parse().unwrap()), "api")
        );
        // It writes back what it read.
        let text = serde_json::to_string(&minimal).unwrap();
        assert!(text.contains(r#""socket":"ipv4@127.0.0.1:9999""#), "{text}");
        assert_eq!(
            serde_json::from_str::<HaproxySwitchConfig>(&text).unwrap(),
            minimal
        );
    }

    #[test]
    fn unknown_keys_and_the_old_drain_policy_are_refused() {
        for key in [
            r#""drain_timeout":"30s""#,
            r#""escalate_to_maint":true"#,
            r#""kind":"haproxy""#,
            r#""sockets":"/x""#,
        ] {
            let text = format!(r#"{{"socket":"/x.sock","backend":"app",{key}}}"#);
            let e = serde_json::from_str::<HaproxySwitchConfig>(&text).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{key}: {e}");
        }
        let e = serde_json::from_str::<HaproxySwitchConfig>(r#"{"socket":"/x.sock"}"#).unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        let e = serde_json::from_str::<HaproxySwitchConfig>(
            r#"{"socket":"ipv4@nope","backend":"app"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ipv4@nope"), "{e}");
    }

    #[test]
    fn a_sticky_section_deserializes_with_its_default_header_and_refuses_unknown_keys() {
        let c: HaproxySwitchConfig = serde_json::from_str(
            r#"{"socket":"/x.sock","backend":"app",
                "sticky":{"cookie":"SRV","map":"/etc/haproxy/canary.map"}}"#,
        )
        .unwrap();
        let sticky = c.sticky.clone().unwrap();
        assert_eq!(sticky, StickyConfig::new("SRV", "/etc/haproxy/canary.map"));
        assert_eq!(sticky.header, "X-Canary");
        let s = HaproxySwitch::from_config(c).unwrap();
        assert_eq!(s.sticky().map(|s| s.cookie.as_str()), Some("SRV"));
        let e = serde_json::from_str::<HaproxySwitchConfig>(
            r#"{"socket":"/x.sock","backend":"app",
                "sticky":{"cookie":"SRV","map":"/m","stick_table":true}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_json::from_str::<HaproxySwitchConfig>(
            r#"{"socket":"/x.sock","backend":"app","sticky":{"map":"/m"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cookie"), "{e}");
        // Without sticky, nothing is written for it.
        let plain = HaproxySwitchConfig::new(Socket::unix("/x.sock"), "app");
        assert!(!serde_json::to_string(&plain).unwrap().contains("sticky"));
    }

    #[test]
    fn from_config_builds_the_switch_it_describes() {
        let mut c = HaproxySwitchConfig::new(Socket::unix("/run/haproxy/admin.sock"), "shop");
        c.servers.insert(t("blue"), "shop-blue".into());
        c.check_timeout = Duration::from_secs(5);
        c.state_file = Some("/var/lib/haproxy/server-state".into());
        let s = HaproxySwitch::from_config(c).unwrap();
        assert_eq!(s.backend(), "shop");
        assert_eq!(s.client().socket(), "/run/haproxy/admin.sock");
        assert_eq!(
            s.servers.get(&t("blue")).map(String::as_str),
            Some("shop-blue")
        );
        assert_eq!(s.check_timeout, Duration::from_secs(5));
        assert_eq!(s.check_interval, Duration::from_secs(2));
    }

    #[test]
    fn from_config_names_every_bad_key_at_once() {
        let mut c = HaproxySwitchConfig::new(Socket::unix("/x.sock"), "bad name");
        c.servers.insert(t("blue"), "a;b".into());
        c.check_timeout = Duration::ZERO;
        c.state_file = Some("relative/state".into());
        c.sticky = Some(StickyConfig::new("S RV", "canary.map"));
        let e = HaproxySwitch::from_config(c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        for part in [
            "backend \"bad name\": HAProxy names hold only",
            "servers.blue \"a;b\"",
            "check_timeout must be more than 0",
            "state_file relative/state: must be an absolute path",
            "sticky.cookie \"S RV\"",
            "sticky.map canary.map: an absolute path",
        ] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        assert_eq!(msg.matches("HAProxy names hold only").count(), 2, "{msg}");
    }
}
