//! [`StickyConfig`]: sticky canary cohorts — a cookie that keeps each user on the server that
//! first answered, and a tester header routed through a map the switch rewrites at runtime.
//!
//! Facts observed on HAProxy 2.6 (`cookie SRV insert indirect nocache`), which decide the design:
//! - a request whose cookie names a server at **weight 0** or in **`drain`** still goes to that
//!   server; so does a `use-server` rule naming it;
//! - a request whose cookie names a server in **`maint`** is load-balanced among the others and
//!   its answer carries a new cookie (`Set-Cookie: SRV=blue`): the client is placed again; a
//!   `use-server` rule naming a server in `maint` is skipped;
//! - a `use-server` rule does not insert a cookie and does not replace the one sent: a tester's
//!   header chooses one request's version and leaves the tester's cohort as it was;
//! - `set map <file> <key> <value>` changes what a `map(<file>)` converter returns at once.
//!
//! So with a sticky switch a weight of 0 also puts the server in `maint` (its cohort moves to
//! the servers left), and `always`/`never` in the map name the canary and the stable server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::client::RuntimeClient;
use crate::parse::StatRow;

fn default_header() -> String {
    "X-Canary".to_owned()
}

/// The `sticky` key of a HAProxy `[switch]` section: canary users keep their version.
///
/// ```toml
/// [switch.sticky]
/// cookie = "SRV"                        # the backend's `cookie SRV insert indirect nocache`
/// header = "X-Canary"                   # testers: `X-Canary: always` / `never`
/// map = "/etc/haproxy/canary.map"       # read by the backend's `use-server` rules
/// dynamic_key = true                    # renew the cookies at promotion and rollback
/// ```
///
/// The lines to add to haproxy.cfg are [`StickyConfig::backend_lines`] (print them with the
/// crate's README). [`HaproxySwitch::check_sticky`](crate::HaproxySwitch::check_sticky) checks
/// what the Runtime API can see of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StickyConfig {
    /// `cookie`: the cookie's name, as in the backend's `cookie <name> insert indirect nocache`.
    pub cookie: String,
    /// `header`: the request header testers set to `always` (the canary) or `never` (the
    /// stable version); `X-Canary` by default.
    #[serde(default = "default_header")]
    pub header: String,
    /// `map`: the map file the backend's `use-server` rules read the header through; the switch
    /// keeps its `always` and `never` entries pointing at the canary and the stable server.
    pub map: PathBuf,
    /// `dynamic_key`: the backend's cookies are dynamic (`cookie <name> insert indirect nocache
    /// dynamic` + `dynamic-cookie-key <any>`, no `cookie` on the servers), and whenever one
    /// server is left live in a change of who is live (a promotion, a rollback, a blue-green
    /// switch) the switch sets a new key, so that every cookie issued before is void: a user
    /// who comes back only after the next canary started is placed by the weights instead of
    /// landing on the server its old cookie names. Default `false`.
    #[serde(default)]
    pub dynamic_key: bool,
}

/// The map's keys: the header's two values.
pub(crate) const ALWAYS: &str = "always";
pub(crate) const NEVER: &str = "never";

impl StickyConfig {
    /// Cookie `cookie`, header `X-Canary`, map file `map`.
    pub fn new(cookie: impl Into<String>, map: impl Into<PathBuf>) -> Self {
        Self {
            cookie: cookie.into(),
            header: default_header(),
            map: map.into(),
            dynamic_key: false,
        }
    }

    /// With dynamic cookies whose key the switch renews (see [`dynamic_key`](Self::dynamic_key)).
    #[must_use]
    pub fn with_dynamic_key(mut self) -> Self {
        self.dynamic_key = true;
        self
    }

    /// With another tester header.
    #[must_use]
    pub fn with_header(mut self, header: impl Into<String>) -> Self {
        self.header = header.into();
        self
    }

    /// The lines of the backend section that make it sticky, for servers `servers` (without
    /// [`dynamic_key`](Self::dynamic_key), each server line also needs `cookie <its name>`, see
    /// [`server_option`](Self::server_option)).
    pub fn backend_lines(&self, servers: &[&str]) -> Vec<String> {
        let mut lines = if self.dynamic_key {
            vec![
                format!("cookie {} insert indirect nocache dynamic", self.cookie),
                "dynamic-cookie-key initial-key".to_owned(),
            ]
        } else {
            vec![format!("cookie {} insert indirect nocache", self.cookie)]
        };
        lines.push("option redispatch".to_owned());
        for s in servers {
            lines.push(format!(
                "use-server {s} if {{ req.hdr({}),map({}) -m str {s} }}",
                self.header,
                self.map.display()
            ));
        }
        lines
    }

    /// What a server line ends with: `cookie <server>`, or nothing with dynamic cookies.
    pub fn server_option(&self, server: &str) -> Option<String> {
        (!self.dynamic_key).then(|| format!("cookie {server}"))
    }

    /// Void every cookie issued so far: a new dynamic cookie key for `backend`.
    pub(crate) async fn renew_key(&self, client: &RuntimeClient, backend: &str) -> Result<()> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("k{ns:x}{:x}{n:x}", std::process::id());
        client
            .batch(&[format!("set dynamic-cookie-key backend {backend} {key}")])
            .await
    }

    /// The map file's first contents: `always <canary>` and `never <stable>`.
    pub fn map_contents(canary: &str, stable: &str) -> String {
        format!("{ALWAYS} {canary}\n{NEVER} {stable}\n")
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !token(&self.cookie) {
            p.push(format!(
                "sticky.cookie {:?}: a cookie name of letters, digits, '-', '_', '.'",
                self.cookie
            ));
        }
        if !token(&self.header) {
            p.push(format!(
                "sticky.header {:?}: a header name of letters, digits, '-', '_', '.'",
                self.header
            ));
        }
        let text = self.map.to_string_lossy();
        if !self.map.is_absolute() || text.contains(char::is_whitespace) || text.contains(';') {
            p.push(format!(
                "sticky.map {}: an absolute path without spaces or ';'",
                self.map.display()
            ));
        }
        p
    }

    fn object(&self, client: &RuntimeClient) -> String {
        format!("map {} on HAProxy {}", self.map.display(), client.socket())
    }

    /// The map's entries now (`show map <file>`).
    pub(crate) async fn read_map(
        &self,
        client: &RuntimeClient,
    ) -> Result<BTreeMap<String, String>> {
        let line = format!("show map {}", self.map.display());
        let text = client.run(&line).await?;
        if text.trim_start().starts_with("Unknown map identifier") {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("`{line}`"),
                self.object(client),
                "HAProxy has not loaded this map: no `map(...)` in its config names it",
            )
            .permanent());
        }
        // Lines `0x55d0c1e2 always green`.
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let _ref = parts.next()?;
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect())
    }

    /// Point `always` at `canary` and `never` at `stable`, changing only what differs.
    pub(crate) async fn point(
        &self,
        client: &RuntimeClient,
        now: &BTreeMap<String, String>,
        canary: &str,
        stable: &str,
    ) -> Result<()> {
        let mut commands = Vec::new();
        for (key, server) in [(ALWAYS, canary), (NEVER, stable)] {
            match now.get(key) {
                Some(v) if v == server => {}
                Some(_) => commands.push(format!("set map {} {key} {server}", self.map.display())),
                None => commands.push(format!("add map {} {key} {server}", self.map.display())),
            }
        }
        client.batch(&commands).await
    }

    /// What `show stat` and `show map` say against this config: every problem, in words.
    pub(crate) async fn check(
        &self,
        client: &RuntimeClient,
        backend: &str,
        rows: &[StatRow],
        servers: &[&str],
    ) -> Vec<String> {
        let mut p = Vec::new();
        match rows
            .iter()
            .find(|r| r.proxy == backend && r.name == "BACKEND")
            .and_then(|r| r.field("cookie"))
        {
            Some(c) if c == self.cookie => {}
            Some(c) => p.push(format!(
                "backend {backend} inserts cookie {c:?}, not {:?}",
                self.cookie
            )),
            None => p.push(format!(
                "backend {backend} has no `cookie {} insert indirect nocache` line",
                self.cookie
            )),
        }
        let mut seen = BTreeMap::new();
        for s in servers {
            match rows
                .iter()
                .find(|r| r.proxy == backend && r.name == *s)
                .and_then(|r| r.field("cookie"))
            {
                Some(c) => {
                    if let Some(other) = seen.insert(c.to_owned(), *s) {
                        p.push(format!(
                            "servers {other} and {s} of backend {backend} share cookie {c:?}"
                        ));
                    }
                }
                None => p.push(format!(
                    "server {backend}/{s} has no `cookie {s}` option{}",
                    if self.dynamic_key {
                        " (nor a dynamic cookie: `dynamic` on the `cookie` line and a \
                         `dynamic-cookie-key`)"
                    } else {
                        ""
                    }
                )),
            }
        }
        match self.read_map(client).await {
            Ok(entries) => {
                for key in [ALWAYS, NEVER] {
                    if let Some(v) = entries.get(key)
                        && !servers.contains(&v.as_str())
                    {
                        p.push(format!(
                            "map {} sends {key} to {v:?}, not a server of the switch",
                            self.map.display()
                        ));
                    }
                }
            }
            Err(e) => p.push(format!(
                "map {}: {} (the backend's `use-server` lines read it)",
                self.map.display(),
                e.message()
            )),
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_lines_name_the_cookie_the_header_and_the_map() {
        let c = StickyConfig::new("SRV", "/etc/haproxy/canary.map");
        assert_eq!(
            c.backend_lines(&["blue", "green"]),
            [
                "cookie SRV insert indirect nocache",
                "option redispatch",
                "use-server blue if { req.hdr(X-Canary),map(/etc/haproxy/canary.map) -m str blue }",
                "use-server green if { req.hdr(X-Canary),map(/etc/haproxy/canary.map) -m str green }",
            ]
        );
        assert_eq!(
            StickyConfig::map_contents("green", "blue"),
            "always green\nnever blue\n"
        );
        assert_eq!(c.server_option("blue").as_deref(), Some("cookie blue"));
        let d = c.clone().with_dynamic_key();
        assert_eq!(
            d.backend_lines(&["blue"])[..2],
            [
                "cookie SRV insert indirect nocache dynamic",
                "dynamic-cookie-key initial-key"
            ]
        );
        assert_eq!(d.server_option("blue"), None);
        assert!(c.problems().is_empty());
        let bad = StickyConfig::new("a b", "canary.map").with_header("X;Y");
        let p = bad.problems().join("; ");
        for part in ["sticky.cookie", "sticky.header", "sticky.map canary.map"] {
            assert!(p.contains(part), "{p} lacks {part}");
        }
    }
}
