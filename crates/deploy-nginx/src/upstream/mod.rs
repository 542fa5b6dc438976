//! [`UpstreamSwitch`]: a [`TrafficSwitch`] over an nginx `upstream` include file, with
//! `nginx -t` before the file is put in place and a reload confirmed by a served generation id.
//!
//! Rooms: `builder` and `config` make a switch; `render` writes and reads the include's text;
//! `reload` puts a tested file in place and confirms the reload; `sessions` counts a server's
//! connections. This file holds the switch and one whole change.

mod builder;
mod config;
mod reload;
mod render;
mod sessions;
mod sticky;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{DynHost, Error, ErrorKind, Result, TargetId, TrafficSwitch, Weights};

pub use builder::UpstreamSwitchBuilder;
pub use config::UpstreamSwitchConfig;
pub use sticky::StickyConfig;

use crate::nginx::Nginx;
use render::{GENERATION_PATH, Parsed, Server, new_generation, parse_include};

/// A [`TrafficSwitch`] for teams whose balancer is nginx (OSS): it owns one include file holding
/// an `upstream` block, and every change is a reload.
///
/// [`set_weights`](TrafficSwitch::set_weights) renders the whole include (`server` lines with
/// `weight=N`, weight 0 as `down`, `backup` servers), writes it under a temporary name next to
/// the include, runs `nginx -t` on a temporary copy of the main configuration that includes the
/// temporary file instead, and only then renames it into place and reloads. A file `nginx -t`
/// refuses is never put in place; the error carries nginx's message. Because `nginx -s reload`
/// answers before the master applied anything (and a configuration that cannot bind a `listen`
/// is logged and dropped while the old one keeps serving), every reload is **confirmed**: the
/// include also holds a small `server` on a loopback status address that answers the file's
/// generation id, and the switch polls it until the new id is served (and, with `ps` on the host,
/// until the old workers stopped accepting). A reload that did not take effect within the
/// deadline — or whose error log ends in an `[emerg]` line and stays quiet for 300 ms — puts the
/// previous file back and is an error of kind `Rejected` with the new lines of the error log.
///
/// [`weights`](TrafficSwitch::weights) reads the weights back from the include file, which after
/// every call (failed or not) holds what nginx runs.
/// [`active_sessions`](TrafficSwitch::active_sessions) counts the established TCP connections
/// to the server's address seen in `/proc/net/tcp` and `/proc/net/tcp6` of the host (nginx OSS
/// has no per-server counters): nginx's connections to that backend, plus any other client on
/// that host connected to it. nginx cannot close the connections of one server, so
/// [`cut_sessions`](TrafficSwitch::cut_sessions) is `Unsupported`: a drain waits for them.
///
/// The main configuration must contain the line `include <include path>;` (in `http {}`), so that
/// `nginx -t` can test the new file before it is in place. Calls on one switch are serialised;
/// two switches (or two processes) on one file must be kept apart by the deploy lock.
pub struct UpstreamSwitch {
    host: DynHost,
    nginx: Nginx,
    include: PathBuf,
    upstream: String,
    servers: Vec<Server>,
    keepalive: Option<u32>,
    status_listen: SocketAddr,
    confirm_timeout: Duration,
    read_on_host: bool,
    sticky: Option<StickyConfig>,
    client: reqwest::Client,
    lock: tokio::sync::Mutex<()>,
}

/// Short, because it names the switch in messages: `UpstreamSwitch { upstream: "app",
/// include: "/etc/nginx/app/upstream.conf", host: "local", .. }`.
impl fmt::Debug for UpstreamSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSwitch")
            .field("upstream", &self.upstream)
            .field("include", &self.include)
            .field("host", &self.host.name())
            .finish_non_exhaustive()
    }
}

impl UpstreamSwitch {
    /// The include file this switch owns.
    pub fn include_path(&self) -> &Path {
        &self.include
    }

    /// Where the include's status server listens.
    pub fn status_listen(&self) -> SocketAddr {
        self.status_listen
    }

    /// The URL where the running nginx serves the generation id of the include it loaded.
    pub fn generation_url(&self) -> String {
        format!("http://{}{GENERATION_PATH}", self.status_listen)
    }

    /// The targets this switch manages, in configuration order.
    pub fn targets(&self) -> impl Iterator<Item = &TargetId> {
        self.servers.iter().map(|s| &s.target)
    }

    /// Write the include for `weights` (every target named) after `nginx -t` accepted it,
    /// without reloading: for the first file, before nginx starts.
    pub async fn install(&self, weights: &Weights) -> Result<()> {
        let _guard = self.lock.lock().await;
        let text = self.render(weights)?;
        self.test_and_place(&text)
            .await
            .map_err(|e| e.context("install", self.object()))
    }

    /// The sticky configuration, if the switch has one.
    pub fn sticky(&self) -> Option<&StickyConfig> {
        self.sticky.as_ref()
    }

    /// The lines the serving `location` of nginx.conf needs with a sticky switch, in place of
    /// `proxy_pass http://<upstream>;`: `proxy_pass http://<upstream>__$<var>_slot;` and
    /// `add_header Set-Cookie $<var>_set_cookie;` (`<var>` is the upstream's name with `-` as
    /// `_`). Empty without sticky.
    pub fn sticky_location_lines(&self) -> Vec<String> {
        match &self.sticky {
            Some(_) => sticky::location_lines(&self.upstream).to_vec(),
            None => Vec::new(),
        }
    }

    /// Check that nginx's configuration (`nginx -T` of the main file) includes the include and
    /// has the [`sticky_location_lines`](Self::sticky_location_lines) in a location: call it
    /// when planning. Every problem is named in one error of kind `InvalidInput`; `nginx -T`
    /// failing is an error of kind `Rejected`. A switch without sticky has nothing to check.
    pub async fn check_sticky(&self) -> Result<()> {
        if self.sticky.is_none() {
            return Ok(());
        }
        let dump = self
            .nginx
            .dump(self.host.as_ref())
            .await
            .map_err(|e| e.context("check the sticky lines of", self.object()))?;
        let include = self.include.display().to_string();
        let problems = sticky::check_dump(&dump, &self.upstream, &include);
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            "check the sticky lines of",
            self.object(),
            format!(
                "{} (in {})",
                problems.join("; "),
                self.nginx.config().display()
            ),
        ))
    }

    fn object(&self) -> String {
        format!(
            "upstream {} in {} on {}",
            self.upstream,
            self.include.display(),
            self.host.name()
        )
    }

    fn check_known(&self, weights: &Weights, operation: &'static str) -> Result<()> {
        let unknown: Vec<String> = weights
            .iter()
            .filter(|(t, _)| !self.servers.iter().any(|s| &s.target == *t))
            .map(|(t, _)| t.to_string())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = self.servers.iter().map(|s| s.target.as_str()).collect();
        Err(Error::new(
            ErrorKind::NotFound,
            operation,
            self.object(),
            format!(
                "unknown target(s) {}; this switch manages {}",
                unknown.join(", "),
                known.join(", ")
            ),
        ))
    }

    /// The include as it is now, or `None` if it does not exist.
    async fn read_current(&self) -> Result<Option<(Vec<u8>, Parsed)>> {
        let raw = match self.host.read_file(&self.include).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.context("read weights of", self.object())),
        };
        let text = String::from_utf8_lossy(&raw);
        let parsed = parse_include(&text).map_err(|why| {
            Error::new(
                ErrorKind::Protocol,
                "read weights of",
                self.object(),
                format!("the include was not written by deploy-nginx or was edited: {why}"),
            )
        })?;
        Ok(Some((raw, parsed)))
    }

    /// The whole change: merge, render, test, place, reload, confirm (or put the old file back).
    async fn apply(&self, changes: &Weights, operation: &'static str) -> Result<()> {
        self.check_known(changes, operation)?;
        let _guard = self.lock.lock().await;
        let current = self.read_current().await?;
        let mut merged = current
            .as_ref()
            .map(|(_, p)| p.weights.clone())
            .unwrap_or_default();
        for (t, w) in changes.iter() {
            merged.set(t.clone(), w);
        }
        let missing: Vec<&str> = self
            .servers
            .iter()
            .filter(|s| merged.get(&s.target).is_none())
            .map(|s| s.target.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                operation,
                self.object(),
                format!(
                    "the weight of {} is unknown: the include does not exist yet (or lacks them), \
                     so the first call must name every target",
                    missing.join(", ")
                ),
            ));
        }
        if let Some((_, parsed)) = &current
            && parsed.weights == merged
            && parsed.sticky.is_some() == self.sticky.is_some()
            && let Some(g) = &parsed.generation
            && self.live_generation().await.ok().as_deref() == Some(g.as_str())
        {
            return Ok(()); // Already applied and running: nothing to reload.
        }

        let generation = new_generation();
        let state = self.sticky.as_ref().map(|_| {
            let before = current
                .as_ref()
                .and_then(|(_, p)| p.sticky.as_ref().map(|s| (&p.weights, s)));
            self.next_sticky(before, &merged)
        });
        let text = self.render_with(&merged, &generation, state.as_ref());
        self.test_and_place(&text)
            .await
            .map_err(|e| e.context(operation, self.object()))?;

        let log_offset = self.nginx.error_log_len(self.host.as_ref()).await;
        let old_workers = match self.live().await {
            Ok((_, Some(pid))) => self
                .accepting_workers(pid)
                .await
                .map(|(_, w)| w)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let previous = current.as_ref().map(|(raw, _)| raw.as_slice());
        if let Err(e) = self.nginx.reload(self.host.as_ref()).await {
            let e = e.context(operation, self.object());
            return Err(match self.put_back(previous).await {
                Ok(()) => e,
                Err(b) => e.with_context("put back", b.to_string()),
            });
        }
        let reloaded = std::time::Instant::now();
        if let Err(unconfirmed) = self.confirm(&generation, &old_workers, log_offset).await {
            let waited = reloaded.elapsed();
            let log = self
                .nginx
                .error_log_since(self.host.as_ref(), log_offset)
                .await;
            let put_back = self.put_back(previous).await;
            let now = match &put_back {
                Ok(()) => "the previous include was put back and keeps serving",
                Err(_) => {
                    "the previous include could not be put back, so the file is not what nginx runs"
                }
            };
            let mut e = Error::new(
                ErrorKind::Rejected,
                operation,
                self.object(),
                format!(
                    "nginx accepted the reload but did not apply generation {generation} ({} after {waited:.1?}); {now}; {log}",
                    unconfirmed.seen,
                ),
            )
            .permanent();
            if let Some(read) = unconfirmed.read_error {
                e = e.with_context("last read", read.to_string());
            }
            if let Err(b) = put_back {
                e = e.with_context("put back", b.to_string());
            }
            return Err(e);
        }
        tracing::info!(
            upstream = %self.upstream,
            include = %self.include.display(),
            %generation,
            weights = %merged,
            "nginx reloaded with new upstream weights"
        );
        Ok(())
    }
}

/// `cut_sessions` is the trait's default (`Unsupported`): nginx OSS cannot close the
/// connections of one upstream server.
#[async_trait]
impl TrafficSwitch for UpstreamSwitch {
    /// A sticky switch checks the running configuration ([`check_sticky`](Self::check_sticky))
    /// before a run is planned.
    async fn check(&self) -> Result<()> {
        self.check_sticky().await
    }

    async fn weights(&self) -> Result<Weights> {
        match self.read_current().await? {
            Some((_, parsed)) => Ok(parsed.weights),
            None => Err(Error::new(
                ErrorKind::NotFound,
                "read weights of",
                self.object(),
                "the include file does not exist yet: write it with install() or a set_weights naming every target",
            )),
        }
    }

    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        self.apply(weights, "set weights of").await
    }

    async fn drain(&self, target: &TargetId) -> Result<()> {
        self.apply(&Weights::new().with(target.clone(), 0), "drain")
            .await
    }

    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        self.sessions(target).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use deploy_core::LocalHost;

    use super::*;

    /// Three servers (one of them a `backup` on a unix socket), keep-alive and a status address.
    pub(crate) fn switch() -> UpstreamSwitch {
        UpstreamSwitch::builder(
            Arc::new(LocalHost::new()),
            Nginx::new("/etc/nginx/nginx.conf"),
            "/etc/nginx/app/upstream.conf",
        )
        .server("blue", "127.0.0.1:8081")
        .server("green", "127.0.0.1:8082")
        .backup_server("sorry", "unix:/run/sorry.sock")
        .keepalive(16)
        .status_listen("127.0.0.1:8099".parse().unwrap())
        .build()
        .unwrap()
    }

    pub(crate) fn t(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    #[tokio::test]
    async fn cut_sessions_is_unsupported_and_says_what_to_do_in_one_line() {
        let s = switch();
        let err = s.cut_sessions(&t("blue")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert_eq!(
            msg,
            "cut the sessions of blue: this switch cannot close sessions: drain with \
             `on_timeout = \"proceed\"` or `\"fail\"`"
        );
    }
}
