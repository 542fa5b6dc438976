//! [`UpstreamSwitch`]: a [`TrafficSwitch`] over an nginx `upstream` include file, with
//! `nginx -t` before the file is put in place and a reload confirmed by a served generation id.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deploy_core::{Command, DynHost, Error, ErrorKind, Result, TargetId, TrafficSwitch, Weights};

use crate::nginx::Nginx;

/// The path of the location that serves the generation id on the status listener.
pub(crate) const GENERATION_PATH: &str = "/deploy-nginx/generation";
const TARGET_TAG: &str = "# deploy-nginx target=";
const GENERATION_TAG: &str = "# deploy-nginx generation ";
/// How often a pending reload looks at the error log for a fatal error.
const LOG_CHECK_EVERY: Duration = Duration::from_millis(300);

/// One `server` line of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    target: TargetId,
    address: String,
    backup: bool,
}

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
/// that host connected to it.
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
    client: reqwest::Client,
    lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for UpstreamSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSwitch")
            .field("host", &self.host.name())
            .field("include", &self.include)
            .field("upstream", &self.upstream)
            .field("servers", &self.servers)
            .field("status_listen", &self.status_listen)
            .finish_non_exhaustive()
    }
}

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

    /// Validate and build.
    pub fn build(self) -> Result<UpstreamSwitch> {
        let mut problems = Vec::new();
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
            problems.push("no servers: add at least one with .server(target, address)".to_owned());
        }
        let mut servers = Vec::new();
        let mut seen = BTreeSet::new();
        for (target, address, backup) in self.servers {
            match TargetId::new(target.clone()) {
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
        if self.status_listen.is_none() {
            problems.push(
                "no status address: set .status_listen(addr), where the include serves its generation"
                    .to_owned(),
            );
        }
        if !self.include.is_absolute() {
            problems.push(format!(
                "the include path {} must be absolute",
                self.include.display()
            ));
        }
        if let Err(why) = check_path(&self.include) {
            problems.push(format!("include path {}: {why}", self.include.display()));
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build upstream switch",
                format!("for {}", self.include.display()),
                problems.join("; "),
            ));
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0) // a new connection reaches a new worker after a reload
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    "build upstream switch",
                    "HTTP client",
                    e.to_string(),
                )
            })?;
        Ok(UpstreamSwitch {
            host: self.host,
            nginx: self.nginx,
            include: self.include,
            upstream: self.upstream,
            servers,
            keepalive: self.keepalive,
            status_listen: self.status_listen.expect("checked above"),
            confirm_timeout: self.confirm_timeout,
            read_on_host: self.read_on_host,
            client,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

fn check_path(p: &Path) -> std::result::Result<(), String> {
    let s = p.to_str().ok_or_else(|| "is not valid UTF-8".to_owned())?;
    if let Some(c) = s.chars().find(|c| !safe_char(*c)) {
        return Err(format!(
            "contains {c:?}; only ASCII letters, digits and / . _ - + @ : are allowed in paths written into nginx configuration"
        ));
    }
    Ok(())
}

fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ':')
}

fn check_address(a: &str) -> std::result::Result<(), String> {
    if a.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(path) = a.strip_prefix("unix:") {
        return check_path(Path::new(path));
    }
    if a.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    // host:port with a DNS name, resolved by nginx when it loads the configuration.
    let ok = a
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if ok {
        Ok(())
    } else {
        Err("is not `ip:port`, `name:port` or `unix:/path`".to_owned())
    }
}

static GENERATION_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_generation() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let n = GENERATION_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{ms}-{}-{n}", std::process::id())
}

/// What an include file says: its generation and the weight of each target in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) generation: Option<String>,
    pub(crate) weights: Weights,
}

/// Read the weights and the generation back from an include this crate rendered.
pub(crate) fn parse_include(text: &str) -> std::result::Result<Parsed, String> {
    let mut generation = None;
    let mut weights = Weights::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(g) = line.strip_prefix(GENERATION_TAG) {
            generation = Some(g.trim().to_owned());
            continue;
        }
        let Some((directive, tag)) = line.split_once(TARGET_TAG) else {
            continue;
        };
        let target = TargetId::new(tag.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
        let directive = directive.trim().trim_end_matches(';');
        let mut words = directive.split_whitespace();
        if words.next() != Some("server") || words.next().is_none() {
            return Err(format!("line {}: not a `server` line: {line}", n + 1));
        }
        let mut weight: Option<u32> = None;
        let mut down = false;
        for w in words {
            if w == "down" {
                down = true;
            } else if let Some(v) = w.strip_prefix("weight=") {
                weight = Some(
                    v.parse()
                        .map_err(|_| format!("line {}: bad weight {v:?}", n + 1))?,
                );
            }
        }
        let value = if down { 0 } else { weight.unwrap_or(1) };
        if weights.get(&target).is_some() {
            return Err(format!("line {}: target {target} appears twice", n + 1));
        }
        weights.set(target, value);
    }
    Ok(Parsed {
        generation,
        weights,
    })
}

impl UpstreamSwitch {
    /// Start building a switch that owns the include file `include` (an absolute path) of the
    /// nginx instance `nginx` on `host`.
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
        }
    }

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

    /// Render the include for `weights`, which must name every target; a new generation id is
    /// chosen. Used to write the first file before nginx starts (or use [`install`](Self::install)).
    pub fn render(&self, weights: &Weights) -> Result<String> {
        self.check_known(weights, "render upstream include")?;
        for s in &self.servers {
            if weights.get(&s.target).is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "render upstream include",
                    self.include.display().to_string(),
                    format!("no weight given for target {}", s.target),
                ));
            }
        }
        Ok(self.render_with(weights, &new_generation()))
    }

    fn render_with(&self, weights: &Weights, generation: &str) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# Generated by deploy-nginx for upstream `{}`: the next switch overwrites this file.\n",
            self.upstream
        ));
        out.push_str(&format!("{GENERATION_TAG}{generation}\n"));
        out.push_str(&format!("upstream {} {{\n", self.upstream));
        for s in &self.servers {
            let w = weights.get(&s.target).unwrap_or(0);
            // nginx wants weight >= 1: a weight of 0 is `down` (read back as 0).
            let params = if w == 0 {
                "down".to_owned()
            } else {
                format!("weight={w}")
            };
            let backup = if s.backup { " backup" } else { "" };
            out.push_str(&format!(
                "    server {} {params}{backup}; {TARGET_TAG}{}\n",
                s.address, s.target
            ));
        }
        if let Some(k) = self.keepalive {
            out.push_str(&format!("    keepalive {k};\n"));
        }
        out.push_str("}\n\n");
        out.push_str(
            "# Serves the generation above, so that the deployer can confirm a reload took effect.\n",
        );
        out.push_str(&format!(
            "server {{\n    listen {};\n    access_log off;\n    \
             location = {GENERATION_PATH} {{ default_type text/plain; return 200 \"{generation} $pid\\n\"; }}\n    \
             location / {{ return 404; }}\n}}\n",
            self.status_listen
        ));
        out
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

    /// The generation id the running nginx serves, if it answers.
    pub async fn live_generation(&self) -> Result<String> {
        self.live().await.map(|(g, _)| g)
    }

    /// The generation id and the pid of the worker that answered.
    async fn live(&self) -> Result<(String, Option<u32>)> {
        let url = self.generation_url();
        let unavailable = |cause: String| {
            Error::new(
                ErrorKind::Unavailable,
                "read the live generation of",
                self.object(),
                format!("{url}: {cause}"),
            )
        };
        let body = if self.read_on_host {
            // The status address is loopback on a remote host: ask from there.
            let curl = Command::new("curl")
                .args(["-fsS", "--max-time", "2", url.as_str()])
                .timeout(Duration::from_secs(5));
            let out = self
                .host
                .run(&curl)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if !out.success() {
                return Err(unavailable(format!(
                    "`curl` on {} failed: {}",
                    self.host.name(),
                    out.stderr_text().trim()
                )));
            }
            out.stdout_text()
        } else {
            let resp = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| unavailable(e.to_string()))?;
            if !status.is_success() {
                return Err(unavailable(format!("answered {status}")));
            }
            body
        };
        let mut words = body.split_whitespace();
        let generation = words.next().unwrap_or_default().to_owned();
        Ok((generation, words.next().and_then(|p| p.parse().ok())))
    }

    /// The master's pid and its workers that accept connections (title exactly
    /// `nginx: worker process`), found from one worker's pid with `ps` on the host.
    async fn accepting_workers(&self, worker: u32) -> Option<(u32, Vec<u32>)> {
        let host = self.host.as_ref();
        let ppid = Command::new("ps").args(["-o", "ppid=", "-p", &worker.to_string()]);
        let out = host.run(&ppid).await.ok().filter(|o| o.success())?;
        let master: u32 = out.stdout_text().trim().parse().ok()?;
        let children = Command::new("ps").args(["-o", "pid=,args=", "--ppid", &master.to_string()]);
        let out = host.run(&children).await.ok().filter(|o| o.success())?;
        let workers = out
            .stdout_text()
            .lines()
            .filter_map(|l| {
                let (pid, title) = l.trim().split_once(' ')?;
                (title.trim() == "nginx: worker process").then(|| pid.parse().ok())?
            })
            .collect();
        Some((master, workers))
    }

    /// Write the include for `weights` (every target named) after `nginx -t` accepted it,
    /// without reloading: for the first file, before nginx starts.
    pub async fn install(&self, weights: &Weights) -> Result<()> {
        let _guard = self.lock.lock().await;
        let text = self.render(weights)?;
        self.test_and_place(&text).await.map(|_| ())
    }

    /// Write `text` under a temporary name, test it with `nginx -t` through a temporary copy of
    /// the main configuration, and rename it into place. On any failure nothing is left behind.
    async fn test_and_place(&self, text: &str) -> Result<()> {
        let host = self.host.as_ref();
        let object = self.object();
        let dir = self.include.parent().unwrap_or(Path::new("/"));
        let name = self
            .include
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upstream.conf".to_owned());
        let suffix = new_generation();
        let temp_include = dir.join(format!(".{name}.deploy-nginx-{suffix}.tmp"));

        let main = self.nginx.config().to_path_buf();
        let main_text = host
            .read_file(&main)
            .await
            .map_err(|e| e.context("test new upstream include of", object.clone()))?;
        let main_text = String::from_utf8_lossy(&main_text);
        let Some(test_main_text) = replace_include(&main_text, &self.include, &temp_include) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "test new upstream include of",
                object,
                format!(
                    "the main configuration {} has no line `include {};`, so `nginx -t` cannot \
                     test the new file before it is in place; include it from the main configuration",
                    main.display(),
                    self.include.display()
                ),
            ));
        };
        let main_dir = main.parent().unwrap_or(Path::new("/"));
        let main_name = main
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nginx.conf".to_owned());
        // Same directory as the main file: relative paths in it resolve the same way.
        let temp_main = main_dir.join(format!(".{main_name}.deploy-nginx-test-{suffix}.conf"));

        host.write_file(&temp_include, text.as_bytes(), Some(0o644))
            .await
            .map_err(|e| e.context("write new upstream include of", object.clone()))?;
        let tested = async {
            host.write_file(&temp_main, test_main_text.as_bytes(), Some(0o644))
                .await?;
            self.nginx.test_file(host, &temp_main).await
        }
        .await;
        let _ = host.remove(&temp_main).await;
        if let Err(e) = tested {
            let _ = host.remove(&temp_include).await;
            let e = if e.kind() == ErrorKind::Rejected {
                // nginx names the temporary files; say which file it was.
                Error::new(
                    ErrorKind::Rejected,
                    "test new upstream include of",
                    object,
                    format!(
                        "{} (tested as {}; the include in place was not changed)",
                        e.cause(),
                        temp_include.display()
                    ),
                )
                .with_source(e)
            } else {
                e.context("test new upstream include of", object)
            };
            return Err(e);
        }
        if let Err(e) = host.rename(&temp_include, &self.include).await {
            let _ = host.remove(&temp_include).await;
            return Err(e.context("put new upstream include in place of", object));
        }
        Ok(())
    }

    /// Poll the status server until it serves `generation`, then until the workers of the old
    /// configuration stopped accepting connections (nginx lets old and new workers accept side
    /// by side for about 100 ms after a reload), or fail after the deadline.
    async fn confirm(
        &self,
        generation: &str,
        old_workers: &[u32],
        log_offset: Option<u64>,
    ) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut last;
        let mut next_log_check = tokio::time::Instant::now() + LOG_CHECK_EVERY;
        let mut quiet_emerg: Option<String> = None;
        let new_worker = loop {
            match self.live().await {
                Ok((g, pid)) if g == generation => break pid,
                Ok((g, _)) => last = format!("it still serves generation {g}"),
                Err(e) => last = e.cause().to_owned(),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(last);
            }
            // Give up early when the master logged an `[emerg]` as its last word and then
            // stayed quiet for a whole check period: the reload failed and nginx kept the old
            // configuration (a busy `listen` ends with "still could not bind()").
            if now >= next_log_check {
                next_log_check = now + LOG_CHECK_EVERY;
                let new = self
                    .nginx
                    .error_log_new(self.host.as_ref(), log_offset)
                    .await;
                let ends_in_emerg = new.as_deref().is_some_and(|t| {
                    t.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .is_some_and(|l| l.contains("[emerg]"))
                });
                match (&quiet_emerg, new) {
                    (Some(before), Some(now)) if ends_in_emerg && *before == now => {
                        return Err(format!("{last}, and nginx logged a fatal error"));
                    }
                    (_, Some(now)) if ends_in_emerg => quiet_emerg = Some(now),
                    _ => quiet_emerg = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seen = tokio::time::Instant::now();
        loop {
            let accepting = match new_worker {
                Some(pid) => self.accepting_workers(pid).await,
                None => None,
            };
            match accepting {
                Some((_, now)) if !now.iter().any(|p| old_workers.contains(p)) => {
                    // The title changes just before the listeners close.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Ok(());
                }
                Some(_) => {}
                // No `ps` on the host: nginx signals the old workers 100 ms after it started
                // the new ones; wait well past that.
                None if seen.elapsed() >= Duration::from_millis(300) => return Ok(()),
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the new generation is served, but old workers {old_workers:?} still accept connections"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
            && let Some(g) = &parsed.generation
            && self.live_generation().await.ok().as_deref() == Some(g.as_str())
        {
            return Ok(()); // Already applied and running: nothing to reload.
        }

        let generation = new_generation();
        let text = self.render_with(&merged, &generation);
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
        let restore = |why: Error| async {
            let put_back = match &current {
                Some((old, _)) => self.host.write_file(&self.include, old, Some(0o644)).await,
                None => self.host.remove(&self.include).await,
            };
            match put_back {
                Ok(()) => why,
                Err(e) => why.context(
                    "and could not put the previous include back",
                    format!("({e}) {}", self.include.display()),
                ),
            }
        };
        if let Err(e) = self.nginx.reload(self.host.as_ref()).await {
            return Err(restore(e.context(operation, self.object())).await);
        }
        let reloaded = std::time::Instant::now();
        if let Err(last) = self.confirm(&generation, &old_workers, log_offset).await {
            let log = self
                .nginx
                .error_log_since(self.host.as_ref(), log_offset)
                .await;
            let e = Error::new(
                ErrorKind::Rejected,
                operation,
                self.object(),
                format!(
                    "nginx accepted the reload but did not apply generation {generation} ({last} after {:.1?}); the previous include was put back and keeps serving; {log}",
                    reloaded.elapsed()
                ),
            )
            .permanent();
            return Err(restore(e).await);
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

/// `main` with the line `include <from>;` pointing at `to` instead, or `None` if there is none.
fn replace_include(main: &str, from: &Path, to: &Path) -> Option<String> {
    let from = from.to_str()?;
    let mut found = false;
    let mut out = String::with_capacity(main.len() + 64);
    for line in main.split_inclusive('\n') {
        let trimmed = line.trim();
        let mut words = trimmed.trim_end_matches(';').split_whitespace();
        let is_it = words.next() == Some("include")
            && words
                .next()
                .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
                == Some(from)
            && words.next().is_none()
            && trimmed.ends_with(';');
        if is_it {
            found = true;
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}include {};\n", to.display()));
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

#[async_trait]
impl TrafficSwitch for UpstreamSwitch {
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
        let Some(server) = self.servers.iter().find(|s| &s.target == target) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "count sessions of",
                format!("{target} in {}", self.object()),
                "unknown target",
            ));
        };
        let Ok(addr) = server.address.parse::<SocketAddr>() else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "count sessions of",
                format!("{target} in {}", self.object()),
                format!(
                    "sessions are counted from /proc/net/tcp, which needs an `ip:port` address, not {:?}",
                    server.address
                ),
            ));
        };
        let mut count = 0;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            match self.host.read_file(Path::new(table)).await {
                Ok(raw) => count += count_established(&String::from_utf8_lossy(&raw), addr),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e.context(
                        "count sessions of",
                        format!("{target} in {}", self.object()),
                    ));
                }
            }
        }
        Ok(count)
    }
}

/// Established connections in a `/proc/net/tcp{,6}` table whose remote end is `to`.
pub(crate) fn count_established(table: &str, to: SocketAddr) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[3] == "01" && parse_proc_addr(cols[2]) == Some(to)
        })
        .count() as u64
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6), as the kernel prints them.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::LocalHost;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn switch() -> UpstreamSwitch {
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

    fn t(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    #[test]
    fn renders_down_for_zero_and_reads_it_back() {
        let s = switch();
        let w = Weights::new()
            .with(t("blue"), 0)
            .with(t("green"), 100)
            .with(t("sorry"), 1);
        let text = s.render_with(&w, "g-1");
        assert!(
            text.contains("server 127.0.0.1:8081 down; # deploy-nginx target=blue"),
            "{text}"
        );
        assert!(text.contains("server 127.0.0.1:8082 weight=100; # deploy-nginx target=green"));
        assert!(text.contains("server unix:/run/sorry.sock weight=1 backup;"));
        assert!(text.contains("keepalive 16;"));
        assert!(text.contains("listen 127.0.0.1:8099;"));
        assert!(text.contains("return 200 \"g-1 $pid\\n\";"));
        let parsed = parse_include(&text).unwrap();
        assert_eq!(parsed.weights, w);
        assert_eq!(parsed.generation.as_deref(), Some("g-1"));
    }

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

    #[test]
    fn render_refuses_unknown_and_missing_targets() {
        let s = switch();
        let e = s.render(&Weights::new().with(t("ghost"), 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = s.render(&Weights::new().with(t("blue"), 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("green"), "{e}");
    }

    #[test]
    fn include_line_is_replaced_only_when_exact() {
        let main = "http {\n    include /a/up.conf;\n    include /a/up.conf.bak;\n}\n";
        let out = replace_include(main, Path::new("/a/up.conf"), Path::new("/a/.tmp")).unwrap();
        assert_eq!(
            out,
            "http {\n    include /a/.tmp;\n    include /a/up.conf.bak;\n}\n"
        );
        assert!(replace_include("http { }\n", Path::new("/a/up.conf"), Path::new("/x")).is_none());
    }

    #[test]
    fn proc_net_tcp_lines_are_counted_by_remote_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C40 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n\
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0100007F:9C41 0100007F:1F91 06 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let to: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(count_established(table, to), 1);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:1F91 01 0\n";
        assert_eq!(count_established(v6, to), 1);
    }

    proptest! {
        #[test]
        fn any_weights_round_trip(blue in 0u32..100_000, green in 0u32..100_000, sorry in 0u32..10) {
            let s = switch();
            let w = Weights::new().with(t("blue"), blue).with(t("green"), green).with(t("sorry"), sorry);
            let text = s.render(&w).unwrap();
            prop_assert_eq!(parse_include(&text).unwrap().weights, w);
        }
    }
}
