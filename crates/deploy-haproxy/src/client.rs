//! [`RuntimeClient`]: typed Runtime API commands, with every answer classified exactly and every
//! change confirmed by reading the state back.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deploy_core::{Error, ErrorKind, Result};
use tokio::sync::OnceCell;

use crate::parse::{
    Info, SWITCH_COLUMNS, ServersState, StatRow, parse_info, parse_servers_state,
    parse_stat_columns,
};
use crate::transport::{Socket, Transport, answer_too_large};

/// The administrative state set by `set server B/S state ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Takes traffic (`ready`; same as `enable server`).
    Ready,
    /// No new traffic except persistent (cookie/stick) sessions; health checks keep running.
    Drain,
    /// No new traffic and no health checks; established sessions keep running.
    Maint,
}

impl AdminState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A weight for `set server B/S weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weight {
    /// An absolute weight, 0 to 256.
    Absolute(u32),
    /// A percentage of the weight in the config (`50%`); the only form a static algorithm
    /// accepts (`0%` or `100%`).
    Percent(u32),
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absolute(w) => write!(f, "{w}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a successful answer looks like, per command.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `set ...`, `enable ...`, `disable ...`: a single empty line.
    Empty,
    /// `set server ... addr`: an informational line saying what changed.
    AddrChange,
    /// A `show` answer starting with this text.
    Prefix(&'static str),
    /// Anything that is not a known error (`get weight`).
    NotAnError,
}

/// A client of HAProxy's Runtime API (the `stats socket`), one command per connection.
///
/// Names of backends and servers are checked before anything is sent (letters, digits, `-`,
/// `_`, `.`, `:`), so a name can never smuggle a second command in.
///
/// Each answer is read up to a size limit ([`with_max_answer_size`](Self::with_max_answer_size),
/// 16 MiB by default): a longer one is a `Protocol` error naming the command, the socket and
/// the limit, and is not read further.
///
/// ```no_run
/// # async fn demo() -> deploy_core::Result<()> {
/// use deploy_haproxy::{AdminState, RuntimeClient, Weight};
/// let client = RuntimeClient::unix("/run/haproxy/admin.sock");
/// client.set_server_weight("app", "green", Weight::Absolute(10)).await?;
/// client.set_server_state("app", "blue", AdminState::Drain).await?;
/// for row in client.show_stat(Some("app")).await? {
///     println!("{} {} weight={:?} sessions={}", row.name, row.status, row.uweight, row.scur);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RuntimeClient {
    transport: Arc<dyn Transport>,
    timeout: Duration,
    max_answer_size: usize,
    version: Arc<OnceCell<(u32, u32)>>,
    /// `backend/server` → the server's id (`sid`) seen in the last `show stat` that had it:
    /// one server's row is then asked for alone (`show stat <backend> 4 <sid>`), not picked out
    /// of the whole backend's.
    server_ids: Arc<Mutex<HashMap<String, u32>>>,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("socket", &self.transport.describe())
            .field("timeout", &self.timeout)
            .field("max_answer_size", &self.max_answer_size)
            .finish()
    }
}

/// Check a backend or server name before it goes into a command line.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "check",
            format!("{what} name {name:?}"),
            "HAProxy names hold only ASCII letters, digits, '-', '_', '.' and ':' (1 to 256 bytes)",
        ))
    }
}

/// The first line of an error answer and its kind, if `text` is one of HAProxy's error answers.
fn known_error(text: &str) -> Option<ErrorKind> {
    let first = text.trim_start().lines().next().unwrap_or("");
    let kind = if first.starts_with("No such server")
        || first.starts_with("No such backend")
        || first.starts_with("No such proxy")
        || first.starts_with("Can't find backend")
        || first.starts_with("Can't find server")
    {
        ErrorKind::NotFound
    } else if first.starts_with("Permission denied") {
        ErrorKind::PermissionDenied
    } else if first.starts_with("Unknown command")
        || first.starts_with("Backend is using a static LB algorithm")
        || first.starts_with("Backend must use a dynamic load balancing")
    {
        ErrorKind::Unsupported
    } else if first.contains("expects")
        || first.starts_with("Absolute weight")
        || first.starts_with("Relative weight")
        || first.starts_with("Require ")
        || first.starts_with("Invalid")
        || first.starts_with("Only servers in maintenance")
        || first.starts_with("Already exists")
        || first.starts_with("Server still has connections")
    {
        ErrorKind::Rejected
    } else {
        return None;
    };
    Some(kind)
}

impl RuntimeClient {
    /// The default limit of one answer: 16 MiB. The largest answers are `show stat` without a
    /// backend and `show servers state`: on HAProxy 2.6 about 225 and 75 bytes per server when
    /// idle (measured with 5,000 servers), a few hundred bytes of `show stat` once the counters
    /// grow, so a `show stat` of tens of thousands of servers fits, while a peer that never
    /// stops talking is cut off after a moment (some 30 ms on a unix socket).
    pub const DEFAULT_MAX_ANSWER_SIZE: usize = 16 * 1024 * 1024;

    /// A client over any transport.
    pub fn new(transport: impl Transport) -> Self {
        Self::from_arc(Arc::new(transport))
    }

    /// A client over a shared transport.
    pub fn from_arc(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            timeout: Duration::from_secs(5),
            max_answer_size: Self::DEFAULT_MAX_ANSWER_SIZE,
            version: Arc::new(OnceCell::new()),
            server_ids: Arc::default(),
        }
    }

    /// A client of the unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(Socket::unix(path))
    }

    /// A client of the TCP socket at `addr` (`stats socket ipv4@127.0.0.1:PORT level admin`).
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::new(Socket::tcp(addr))
    }

    /// Give up on one exchange after `timeout` (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuse an answer of more than `bytes` bytes (default
    /// [`DEFAULT_MAX_ANSWER_SIZE`](Self::DEFAULT_MAX_ANSWER_SIZE), 16 MiB), reading no further
    /// than that. Raise it for a HAProxy with tens of thousands of servers.
    pub fn with_max_answer_size(mut self, bytes: usize) -> Self {
        self.max_answer_size = bytes;
        self
    }

    /// The limit of one answer, in bytes.
    pub fn max_answer_size(&self) -> usize {
        self.max_answer_size
    }

    /// The socket, for messages.
    pub fn socket(&self) -> String {
        self.transport.describe()
    }

    fn object(&self) -> String {
        format!("on HAProxy {}", self.transport.describe())
    }

    /// Send one raw command line and return HAProxy's answer unclassified. Prefer the typed
    /// methods; this is for commands they do not cover. The line must not hold a newline.
    pub async fn raw(&self, line: &str) -> Result<String> {
        if line.contains(['\n', '\r']) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("send `{}`", line.escape_debug()),
                self.object(),
                "a command line must not contain a newline",
            ));
        }
        let mut framed = String::with_capacity(line.len() + 1);
        framed.push_str(line);
        framed.push('\n');
        let limit = self.max_answer_size;
        match tokio::time::timeout(self.timeout, self.transport.exchange(&framed, limit)).await {
            // The transport's error names the socket already. A transport that ignored the
            // limit is held to it here.
            Ok(r) => r
                .and_then(|text| {
                    if text.len() > limit {
                        Err(answer_too_large(self.transport.describe(), limit))
                    } else {
                        Ok(text)
                    }
                })
                .map_err(|e| e.context(format!("send `{line}` to HAProxy"), "")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("send `{line}`"),
                self.object(),
                format!("no complete answer within {:?}", self.timeout),
            )),
        }
    }

    /// Send one command line and classify the answer: one of HAProxy's error texts ("No such
    /// server.", "Unknown command", "Permission denied", "... expects ...") is a typed error
    /// naming the command, the socket and the text; anything else is returned. For commands the
    /// typed methods do not cover.
    pub async fn run(&self, line: &str) -> Result<String> {
        let text = self.raw(line).await?;
        match known_error(text.trim()) {
            Some(kind) => Err(self.answer_error(line, &text, kind)),
            None => Ok(text),
        }
    }

    fn answer_error(&self, line: &str, text: &str, kind: ErrorKind) -> Error {
        let mut said = text.trim();
        if kind == ErrorKind::Unsupported && said.starts_with("Unknown command") {
            // The rest is HAProxy's list of commands it thinks were meant.
            said = "Unknown command";
        }
        let said = said.lines().map(str::trim).collect::<Vec<_>>().join(" / ");
        let hint = match kind {
            ErrorKind::PermissionDenied => {
                "; the socket is below level admin: give its `stats socket` line `level admin`"
            }
            ErrorKind::Unsupported if said.starts_with("Unknown command") => {
                "; this HAProxy version does not have that command"
            }
            _ => "",
        };
        let mut e = Error::new(
            kind,
            format!("`{line}`"),
            self.object(),
            format!("HAProxy answered '{said}'{hint}"),
        );
        if kind == ErrorKind::NotFound {
            e = e.permanent();
        }
        e
    }

    /// Send `line` and check the answer against what success looks like for it.
    async fn command(&self, line: &str, expect: Expect) -> Result<String> {
        let text = self.raw(line).await?;
        let trimmed = text.trim();
        let ok = match expect {
            // Exactly one empty line: an empty answer (a closed connection) is not a success.
            Expect::Empty => text == "\n",
            Expect::AddrChange => {
                known_error(trimmed).is_none()
                    && (trimmed.contains("changed from")
                        || trimmed.starts_with("no need to change"))
            }
            Expect::Prefix(p) => text.starts_with(p),
            Expect::NotAnError => known_error(trimmed).is_none() && !trimmed.is_empty(),
        };
        if ok {
            return Ok(text);
        }
        let kind = known_error(trimmed).unwrap_or(if trimmed.is_empty() {
            ErrorKind::Protocol
        } else {
            ErrorKind::Rejected
        });
        if trimmed.is_empty() {
            return Err(Error::new(
                kind,
                format!("`{line}`"),
                self.object(),
                "HAProxy answered nothing where an answer was expected",
            ));
        }
        Err(self.answer_error(line, &text, kind))
    }

    /// Several `set`/`enable`/`disable` commands on one line (`a; b; c`), applied back to back by
    /// HAProxy; every one must answer the empty success line.
    pub(crate) async fn batch(&self, commands: &[String]) -> Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let line = commands.join("; ");
        let text = self.raw(&line).await?;
        // Each successful command answers one empty line.
        if text.len() == commands.len() && text.bytes().all(|b| b == b'\n') {
            return Ok(());
        }
        let said: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if said.is_empty() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("`{line}`"),
                self.object(),
                format!(
                    "HAProxy answered {} empty line(s) to {} command(s)",
                    text.len(),
                    commands.len()
                ),
            ));
        }
        let kind = said
            .iter()
            .find_map(|l| known_error(l))
            .unwrap_or(ErrorKind::Rejected);
        Err(self.answer_error(&line, &said.join("\n"), kind))
    }

    /// `show info`: version, pid, uptime, connection counts.
    pub async fn show_info(&self) -> Result<Info> {
        let text = self.command("show info", Expect::Prefix("Name:")).await?;
        parse_info(&text).ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                "`show info`",
                self.object(),
                "the answer has no `Name: value` lines",
            )
        })
    }

    /// HAProxy's major and minor version, asked once and remembered.
    pub async fn version(&self) -> Result<(u32, u32)> {
        self.version
            .get_or_try_init(|| async {
                let info = self.show_info().await?;
                info.version_number().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        "`show info`",
                        self.object(),
                        format!("cannot read the version from {:?}", info.version()),
                    )
                })
            })
            .await
            .copied()
    }

    /// `show stat`: every frontend, backend and server, or the servers of `backend` only
    /// (`show stat <backend> 4 -1`).
    pub async fn show_stat(&self, backend: Option<&str>) -> Result<Vec<StatRow>> {
        let line = match backend {
            Some(b) => {
                check_name("backend", b)?;
                format!("show stat {b} 4 -1")
            }
            None => "show stat".to_owned(),
        };
        let rows = self.stat_lines(&line).await?;
        if let Some(b) = backend {
            self.require_backend(&line, b, &rows).await?;
        }
        Ok(rows)
    }

    /// `NotFound` unless backend `b` exists: when none of `rows` (the answer to `line`) is
    /// one of its servers, the full `show stat` tells.
    async fn require_backend(&self, line: &str, b: &str, rows: &[StatRow]) -> Result<()> {
        if rows.iter().any(|r| r.proxy == b)
            || self
                .stat_lines("show stat")
                .await?
                .iter()
                .any(|r| r.proxy == b)
        {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::NotFound,
            format!("`{line}`"),
            self.object(),
            format!("there is no backend {b:?}"),
        )
        .permanent())
    }

    async fn stat_lines(&self, line: &str) -> Result<Vec<StatRow>> {
        self.stat_lines_with(line, None, None).await
    }

    /// `line`'s answer parsed: the rows `keep_line` keeps (given the raw CSV line; all when
    /// `None`, without a copy of the answer), with the columns `columns` names in their
    /// `fields` (all when `None`).
    async fn stat_lines_with(
        &self,
        line: &str,
        columns: Option<&[&str]>,
        keep_line: Option<&(dyn Fn(&str) -> bool + Sync)>,
    ) -> Result<Vec<StatRow>> {
        let text = self.command(line, Expect::Prefix("# pxname")).await?;
        let kept;
        let parsed = match keep_line {
            None => text.as_str(),
            Some(keep) => {
                let mut lines = text.lines();
                let mut k = String::with_capacity(text.len().min(4096));
                if let Some(header) = lines.next() {
                    k.push_str(header);
                    k.push('\n');
                }
                for l in lines.filter(|l| keep(l)) {
                    k.push_str(l);
                    k.push('\n');
                }
                kept = k;
                kept.as_str()
            }
        };
        parse_stat_columns(parsed, columns).map_err(|why| {
            Error::new(
                ErrorKind::Protocol,
                format!("`{line}`"),
                self.object(),
                format!("the answer is not the `show stat` CSV: {why}"),
            )
        })
    }

    /// The servers of `backend` as `show stat` reads them, each row's `fields` holding only the
    /// columns of its typed fields and `cookie`: what a switch needs of a whole backend, at a
    /// fraction of the memory of [`show_stat`](Self::show_stat) when it has hundreds of servers.
    pub async fn backend_servers(&self, backend: &str) -> Result<Vec<StatRow>> {
        check_name("backend", backend)?;
        let line = format!("show stat {backend} 4 -1");
        let rows = self
            .stat_lines_with(&line, Some(SWITCH_COLUMNS), None)
            .await?;
        self.require_backend(&line, backend, &rows).await?;
        self.remember_ids(&rows);
        Ok(rows)
    }

    /// Remember the `sid` of each server row of `rows`.
    fn remember_ids(&self, rows: &[StatRow]) {
        let mut ids = self
            .server_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for r in rows.iter().filter(|r| r.kind == crate::RowKind::Server) {
            if let Some(sid) = r.field("sid").and_then(|s| s.parse::<u32>().ok()) {
                ids.insert(format!("{}/{}", r.proxy, r.name), sid);
            }
        }
    }

    /// The `show stat` row of server `backend/server`; `NotFound` if there is none. Asked for
    /// alone (`show stat <backend> 4 <sid>`) once an earlier answer gave the server's id, and
    /// taken only if the row names the server (a reload may number the servers anew);
    /// otherwise picked out of the backend's rows, only that row parsed (names hold no comma:
    /// `pxname,svname,` starts it). HAProxy then writes one row, not the backend's (at 256
    /// servers 1.6 KB instead of 59 KB, 0.08 ms instead of 0.97 ms on HAProxy 2.6).
    pub async fn server_stat(&self, backend: &str, server: &str) -> Result<StatRow> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let key = format!("{backend}/{server}");
        let known = self
            .server_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        let is_it = |r: &StatRow| r.proxy == backend && r.name == server;
        if let Some(sid) = known {
            let line = format!("show stat {backend} 4 {sid}");
            if let Some(row) = self.stat_lines(&line).await?.into_iter().find(is_it) {
                return Ok(row);
            }
            self.server_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        let line = format!("show stat {backend} 4 -1");
        let prefix = format!("{backend},{server},");
        let row = self
            .stat_lines_with(&line, None, Some(&|l: &str| l.starts_with(&prefix)))
            .await?
            .into_iter()
            .find(is_it)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "read the state of",
                    format!("server {backend}/{server} {}", self.object()),
                    "No such server.",
                )
                .permanent()
            })?;
        self.remember_ids(std::slice::from_ref(&row));
        Ok(row)
    }

    /// The admin state, `(drain, maint)`, of each of `servers` in `backend`, from
    /// `show servers state`: what `show stat` hides for a server its checks hold DOWN (it reads
    /// DOWN whatever its admin state).
    pub async fn admin_states(
        &self,
        backend: &str,
        servers: &[&str],
    ) -> Result<std::collections::BTreeMap<String, (bool, bool)>> {
        let st = self.show_servers_state(Some(backend)).await?;
        Ok(st
            .rows
            .iter()
            .filter(|r| servers.contains(&r.server.as_str()))
            .map(|r| (r.server.clone(), (r.in_drain(), r.in_maint())))
            .collect())
    }

    /// `show servers state [backend]`: the state a `server-state-file` holds.
    pub async fn show_servers_state(&self, backend: Option<&str>) -> Result<ServersState> {
        let line = match backend {
            Some(b) => {
                check_name("backend", b)?;
                format!("show servers state {b}")
            }
            None => "show servers state".to_owned(),
        };
        let text = self.command(&line, Expect::NotAnError).await?;
        parse_servers_state(&text).map_err(|why| {
            Error::new(
                ErrorKind::Protocol,
                format!("`{line}`"),
                self.object(),
                format!("the answer is not a `show servers state` dump: {why}"),
            )
        })
    }

    /// `get weight B/S`: the current and the initial (config) weight.
    pub async fn get_weight(&self, backend: &str, server: &str) -> Result<(u32, u32)> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let line = format!("get weight {backend}/{server}");
        let text = self.command(&line, Expect::NotAnError).await?;
        // "50 (initial 100)"
        let t = text.trim();
        let current = t.split_whitespace().next().and_then(|w| w.parse().ok());
        let initial = t
            .split_once("(initial ")
            .and_then(|(_, r)| r.trim_end_matches(')').trim().parse().ok());
        match (current, initial) {
            (Some(c), Some(i)) => Ok((c, i)),
            _ => Err(Error::new(
                ErrorKind::Protocol,
                format!("`{line}`"),
                self.object(),
                format!("cannot read a weight from {t:?}"),
            )),
        }
    }

    /// `set server B/S state ready|drain|maint`, confirmed by reading the status back.
    pub async fn set_server_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let line = format!("set server {backend}/{server} state {state}");
        self.command(&line, Expect::Empty).await?;
        let row = self.server_stat(backend, server).await?;
        let mut held = match state {
            AdminState::Ready => !row.is_maint() && !row.is_drain(),
            AdminState::Drain => row.is_drain(),
            AdminState::Maint => row.is_maint(),
        };
        if !held && row.base_status() == "DOWN" {
            // A server failing its checks reads DOWN whatever its admin state (a drained one
            // too): read the admin state itself.
            if let Some(&(drain, maint)) = self.admin_states(backend, &[server]).await?.get(server)
            {
                held = match state {
                    AdminState::Ready => !maint && !drain,
                    AdminState::Drain => drain,
                    AdminState::Maint => maint,
                };
            }
        }
        if held {
            Ok(())
        } else {
            Err(self.readback_error(&line, format!("status reads {:?}", row.status)))
        }
    }

    fn readback_error(&self, line: &str, what: String) -> Error {
        Error::new(
            ErrorKind::Protocol,
            format!("confirm `{line}`"),
            self.object(),
            format!("HAProxy accepted the command but {what}"),
        )
    }

    /// `set server B/S weight N` or `N%`, confirmed with `get weight`.
    pub async fn set_server_weight(
        &self,
        backend: &str,
        server: &str,
        weight: Weight,
    ) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let line = format!("set server {backend}/{server} weight {weight}");
        self.command(&line, Expect::Empty).await?;
        let (current, initial) = self.get_weight(backend, server).await?;
        let expected = match weight {
            Weight::Absolute(w) => w,
            // HAProxy rounds iweight * p / 100 up (srv_set_weight via `w = (w * iweight + 99) / 100`
            // in some versions, down in others): accept both.
            Weight::Percent(p) => {
                let exact = u64::from(initial) * u64::from(p);
                let down = u32::try_from(exact / 100).unwrap_or(u32::MAX);
                let rounded_up = exact % 100 != 0 && current == down.saturating_add(1);
                if current == down || rounded_up {
                    current
                } else {
                    down
                }
            }
        };
        if current == expected {
            Ok(())
        } else {
            Err(self.readback_error(&line, format!("the weight reads {current}, not {expected}")))
        }
    }

    /// `shutdown sessions server B/S`: close every session the server holds, confirmed by
    /// reading `scur` back until it is 0.
    ///
    /// HAProxy closes the sessions asynchronously, so the command is repeated until `scur`
    /// reads 0, for at most the client's timeout (`Timeout` past it, naming what was left). Put
    /// the server in `maint` first ([`set_server_state`](Self::set_server_state)), or new
    /// sessions keep arriving. The server side is freed at once. On HAProxy 2.6 a client still
    /// waiting for the response headers is answered `502` only when its frontend's
    /// `timeout client` strikes (up to that long after the cut); with `retry-on
    /// empty-response` its request is replayed on another server instead.
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let line = format!("shutdown sessions server {backend}/{server}");
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            self.command(&line, Expect::Empty).await?;
            let left = self.server_stat(backend, server).await?.scur;
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("confirm `{line}`"),
                    self.object(),
                    format!(
                        "{left} session(s) still open after {:?}; a server not in maint takes new ones",
                        self.timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `set server B/S addr IP [port P]`, confirmed by reading `addr` back.
    pub async fn set_server_addr(
        &self,
        backend: &str,
        server: &str,
        ip: IpAddr,
        port: Option<u16>,
    ) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let line = match port {
            Some(p) => format!("set server {backend}/{server} addr {ip} port {p}"),
            None => format!("set server {backend}/{server} addr {ip}"),
        };
        self.command(&line, Expect::AddrChange).await?;
        let row = self.server_stat(backend, server).await?;
        let (got_ip, got_port) = row
            .addr
            .rsplit_once(':')
            .map(|(i, p)| (i.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()))
            .unwrap_or_default();
        let ip_ok = got_ip.parse::<IpAddr>().ok() == Some(ip);
        let port_ok = port.is_none() || got_port == port;
        if ip_ok && port_ok {
            Ok(())
        } else {
            Err(self.readback_error(&line, format!("the address reads {:?}", row.addr)))
        }
    }

    /// `enable health B/S` or `disable health B/S`: turn the server's health checks on or off.
    pub async fn set_health_checks(
        &self,
        backend: &str,
        server: &str,
        enabled: bool,
    ) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let verb = if enabled { "enable" } else { "disable" };
        let line = format!("{verb} health {backend}/{server}");
        self.command(&line, Expect::Empty).await?;
        // Without checks the status reads `no check` (a server in maint reads MAINT either way).
        let row = self.server_stat(backend, server).await?;
        if row.is_maint() || (row.status == "no check") != enabled {
            Ok(())
        } else {
            Err(self.readback_error(&line, format!("status reads {:?}", row.status)))
        }
    }

    async fn require_dynamic_servers(&self, what: &str) -> Result<&'static str> {
        let (major, minor) = self.version().await?;
        if (major, minor) < (2, 4) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                what.to_owned(),
                self.object(),
                format!("dynamic servers need HAProxy 2.4 or later; this is {major}.{minor}"),
            ));
        }
        // 2.4 and 2.5 hide the commands behind experimental mode; GA in 2.6.
        Ok(if (major, minor) < (2, 6) {
            "experimental-mode on; "
        } else {
            ""
        })
    }

    /// `add server B/S ADDR [keywords...]`: add a server at run time (HAProxy ≥ 2.4; the backend
    /// must use a dynamic algorithm). It starts in maintenance; it is not kept across reloads
    /// unless it is also written into the config. Confirmed by reading it back.
    pub async fn add_server(
        &self,
        backend: &str,
        server: &str,
        addr: SocketAddr,
        keywords: &[&str],
    ) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        if let Some(k) = keywords
            .iter()
            .find(|k| k.is_empty() || k.contains([';', '\\', '\n', '\r', ' ', '\t']))
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "add server",
                format!("{backend}/{server}"),
                format!("keyword {k:?} must be one non-empty word without ';' or '\\'"),
            ));
        }
        let prefix = self.require_dynamic_servers("add server").await?;
        let mut line = format!("add server {backend}/{server} {addr}");
        for k in keywords {
            line.push(' ');
            line.push_str(k);
        }
        let text = self.raw(&format!("{prefix}{line}")).await?;
        let trimmed = text.trim();
        if !trimmed.ends_with("New server registered.") {
            let kind = known_error(trimmed).unwrap_or(ErrorKind::Rejected);
            return Err(self.answer_error(&line, trimmed, kind));
        }
        self.server_stat(backend, server).await.map(|_| ())
    }

    /// `del server B/S`: remove a server that is in maintenance with no connections left.
    /// Confirmed by reading the backend back.
    pub async fn del_server(&self, backend: &str, server: &str) -> Result<()> {
        check_name("backend", backend)?;
        check_name("server", server)?;
        let prefix = self.require_dynamic_servers("del server").await?;
        let line = format!("del server {backend}/{server}");
        let text = self.raw(&format!("{prefix}{line}")).await?;
        let trimmed = text.trim();
        if !trimmed.ends_with("Server deleted.") {
            let kind = known_error(trimmed).unwrap_or(ErrorKind::Rejected);
            return Err(self.answer_error(&line, trimmed, kind));
        }
        let still = self
            .show_stat(Some(backend))
            .await?
            .iter()
            .any(|r| r.name == server);
        if still {
            Err(self.readback_error(&line, "the server is still listed".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("server", "green-1.a_b:c").is_ok());
        for bad in ["", "a b", "a;b", "a/b", "a\\b", "a\nb", "é"] {
            let e = check_name("server", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn error_answers_are_classified() {
        assert_eq!(
            known_error("No such server.\n\n"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            known_error("No such backend.\n\n"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(known_error("No such proxy.\n\n"), Some(ErrorKind::NotFound));
        assert_eq!(
            known_error("Permission denied\n\n"),
            Some(ErrorKind::PermissionDenied)
        );
        assert_eq!(
            known_error("Unknown command, but maybe ...\n  x\n\n"),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(
            known_error("'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"),
            Some(ErrorKind::Rejected)
        );
        assert_eq!(
            known_error("Absolute weight can only be between 0 and 256 inclusive.\n\n"),
            Some(ErrorKind::Rejected)
        );
        assert_eq!(
            known_error(
                "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n\n"
            ),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(known_error("\n"), None);
        assert_eq!(known_error("New server registered.\n\n"), None);
    }
}
