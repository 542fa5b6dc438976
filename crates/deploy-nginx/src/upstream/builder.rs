//! [`UpstreamSwitchBuilder`]: the servers, the status address and the limits of an
//! [`UpstreamSwitch`], validated together.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use deploy_core::{DynHost, Error, ErrorKind, Result, TargetId, http};

use super::UpstreamSwitch;
use super::reload::STATUS_READ_TIMEOUT;
use super::render::{Server, check_address, check_path};
use super::sticky::StickyConfig;
use crate::nginx::Nginx;

/// Builds an [`UpstreamSwitch`]; [`build`](Self::build) validates everything and reports every
/// problem at once.
#[derive(Debug)]
pub struct UpstreamSwitchBuilder {
    host: DynHost,
    nginx: Nginx,
    include: PathBuf,
    upstream: String,
    servers: Vec<(String, String, bool)>,
    keepalive: Option<u32>,
    status_listen: Option<SocketAddr>,
    confirm_timeout: Duration,
    read_on_host: bool,
    sticky: Option<StickyConfig>,
}

impl UpstreamSwitch {
    /// Start building a switch that owns the include file `include` (an absolute path) of the
    /// nginx instance `nginx` on `host`. For a plan-file section on this machine, see
    /// [`from_config`](Self::from_config).
    pub fn builder(
        host: DynHost,
        nginx: Nginx,
        include: impl Into<PathBuf>,
    ) -> UpstreamSwitchBuilder {
        UpstreamSwitchBuilder {
            host,
            nginx,
            include: include.into(),
            upstream: "app".to_owned(),
            servers: Vec::new(),
            keepalive: None,
            status_listen: None,
            confirm_timeout: Duration::from_secs(10),
            read_on_host: false,
            sticky: None,
        }
    }
}

impl UpstreamSwitchBuilder {
    /// The name of the `upstream` block (default `app`): ASCII letters, digits, `_`, `-`.
    pub fn upstream(mut self, name: impl Into<String>) -> Self {
        self.upstream = name.into();
        self
    }

    /// A server of the upstream for `target`, at `address` (`127.0.0.1:8081`, `[::1]:8081`,
    /// `unix:/run/app.sock`).
    pub fn server(mut self, target: impl Into<String>, address: impl Into<String>) -> Self {
        self.servers.push((target.into(), address.into(), false));
        self
    }

    /// A `backup` server: it takes traffic only when every other server is down or failing.
    pub fn backup_server(mut self, target: impl Into<String>, address: impl Into<String>) -> Self {
        self.servers.push((target.into(), address.into(), true));
        self
    }

    /// Render `keepalive n;` in the upstream (idle connections kept to the servers per worker).
    pub fn keepalive(mut self, connections: u32) -> Self {
        self.keepalive = Some(connections);
        self
    }

    /// Where the include's status server listens (required; a loopback address is best). The
    /// switch reads the generation id from `http://<addr>/deploy-nginx/generation`.
    pub fn status_listen(mut self, addr: SocketAddr) -> Self {
        self.status_listen = Some(addr);
        self
    }

    /// How long a reload may take to show the new generation (default 10 s; nginx retries a
    /// busy `listen` for about 2.5 s before it gives up).
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Read the generation by running `curl` on the host (through [`Host::run`](deploy_core::Host::run))
    /// instead of from this process: for a remote nginx whose status address is loopback there.
    pub fn read_generation_on_host(mut self) -> Self {
        self.read_on_host = true;
        self
    }

    /// Sticky canary cohorts (see [`StickyConfig`] and the crate's README): the include also
    /// holds one upstream per target, a `split_clients` placing new users by the weights and the
    /// maps that keep a placed user on its version; the serving `location` uses them through
    /// [`UpstreamSwitch::sticky_location_lines`]. Not with `backup` servers.
    pub fn sticky(mut self, config: StickyConfig) -> Self {
        self.sticky = Some(config);
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<UpstreamSwitch> {
        let mut problems = Vec::new();
        if self.nginx.config().as_os_str().is_empty() {
            problems.push("no main configuration file given (`config`)".to_owned());
        }
        if self.upstream.is_empty()
            || !self
                .upstream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "upstream name {:?} must be ASCII letters, digits, '_' or '-'",
                self.upstream
            ));
        }
        if self.servers.is_empty() {
            problems
                .push("no servers: add at least one target and its address (`servers`)".to_owned());
        }
        let mut servers = Vec::new();
        let mut seen = BTreeSet::new();
        for (target, address, backup) in self.servers {
            match TargetId::new(target) {
                Ok(t) => {
                    if !seen.insert(t.clone()) {
                        problems.push(format!("target {t} is listed twice"));
                    }
                    if let Err(why) = check_address(&address) {
                        problems.push(format!("address {address:?} of {t}: {why}"));
                    }
                    servers.push(Server {
                        target: t,
                        address,
                        backup,
                    });
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(sticky) = &self.sticky {
            problems.extend(sticky.problems());
            for s in &servers {
                if s.backup {
                    problems.push(format!(
                        "sticky: backup server {} is not supported with sticky cohorts",
                        s.target
                    ));
                }
                if !s
                    .target
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    problems.push(format!(
                        "sticky: target {} must be ASCII letters, digits, '-', '_' (it names an upstream in a URL)",
                        s.target
                    ));
                }
            }
        }
        if self.status_listen.is_none() {
            problems.push(
                "no status address (`status_listen`): the address where the include serves its generation"
                    .to_owned(),
            );
        }
        if self.include.as_os_str().is_empty() {
            problems.push("no include path given (`include`)".to_owned());
        } else if !self.include.is_absolute() {
            problems.push(format!(
                "the include path {} must be absolute",
                self.include.display()
            ));
        }
        if let Err(why) = check_path(&self.include) {
            problems.push(format!("include path {}: {why}", self.include.display()));
        }
        let object = format!("for {}", self.include.display());
        let status_listen = match self.status_listen {
            Some(addr) if problems.is_empty() => addr,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "build upstream switch",
                    object,
                    problems.join("; "),
                ));
            }
        };
        // No idle connections: a new connection reaches a new worker after a reload.
        let client = http::client_builder()
            .pool_max_idle_per_host(0)
            .timeout(STATUS_READ_TIMEOUT)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    "build upstream switch",
                    object,
                    "cannot build the HTTP client",
                )
                .with_source(e)
            })?;
        Ok(UpstreamSwitch {
            host: self.host,
            nginx: self.nginx,
            include: self.include,
            upstream: self.upstream,
            servers,
            keepalive: self.keepalive,
            status_listen,
            confirm_timeout: self.confirm_timeout,
            read_on_host: self.read_on_host,
            sticky: self.sticky,
            client,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deploy_core::LocalHost;

    use super::*;

    #[test]
    fn builder_reports_every_problem() {
        let err = UpstreamSwitch::builder(
            Arc::new(LocalHost::new()),
            Nginx::new("/etc/nginx/nginx.conf"),
            "relative/up stream.conf",
        )
        .upstream("bad name")
        .server("blue", "127.0.0.1:1; evil")
        .server("blue", "127.0.0.1:2")
        .build()
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        for needle in [
            "upstream name",
            "address",
            "twice",
            "status",
            "absolute",
            "contains ' '",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
    }
}
