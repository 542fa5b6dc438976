//! The include file's text: rendering it from weights, reading it back, the checks on what may
//! be written into it, generation ids, and the test copy of the main configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use deploy_core::{Error, ErrorKind, Result, TargetId, Weights};

use super::UpstreamSwitch;
use super::sticky::{self, STICKY_TAG, StickyState};

/// The path of the location that serves the generation id on the status listener.
pub(super) const GENERATION_PATH: &str = "/deploy-nginx/generation";
const TARGET_TAG: &str = "# deploy-nginx target=";
const GENERATION_TAG: &str = "# deploy-nginx generation ";

/// One `server` line of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub(super) target: TargetId,
    pub(super) address: String,
    pub(super) backup: bool,
}

/// Whether `p` may be written into nginx configuration as it is.
pub(super) fn check_path(p: &Path) -> std::result::Result<(), String> {
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

/// Whether `a` is a server address nginx takes: `ip:port`, `name:port` or `unix:/path`.
pub(super) fn check_address(a: &str) -> std::result::Result<(), String> {
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

/// A generation id no other include of this process (or, by the time and pid, of another
/// process) carries.
pub(super) fn new_generation() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let n = GENERATION_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{ms}-{}-{n}", std::process::id())
}

/// What an include file says: its generation and the weight of each target in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) generation: Option<String>,
    pub(super) weights: Weights,
    /// The sticky line, in an include of a sticky switch.
    pub(super) sticky: Option<StickyState>,
}

/// Read the weights and the generation back from an include this crate rendered.
pub(super) fn parse_include(text: &str) -> std::result::Result<Parsed, String> {
    let mut generation = None;
    let mut weights = Weights::new();
    let mut sticky = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(g) = line.strip_prefix(GENERATION_TAG) {
            generation = Some(g.trim().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix(STICKY_TAG) {
            sticky = Some(StickyState::parse(rest).map_err(|e| format!("line {}: {e}", n + 1))?);
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
        sticky,
    })
}

/// `main` with the line `include <from>;` pointing at `to` instead, or `None` if there is none.
pub(super) fn replace_include(main: &str, from: &Path, to: &Path) -> Option<String> {
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

impl UpstreamSwitch {
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
        let state = self
            .sticky
            .as_ref()
            .map(|_| self.next_sticky(None, weights));
        Ok(self.render_with(weights, &new_generation(), state.as_ref()))
    }

    /// The sticky state after a change from `before` to `after`.
    pub(super) fn next_sticky(
        &self,
        before: Option<(&Weights, &StickyState)>,
        after: &Weights,
    ) -> StickyState {
        let order: Vec<TargetId> = self.servers.iter().map(|s| s.target.clone()).collect();
        sticky::next_state(&order, before, after)
    }

    /// The include for `weights` (targets it does not name are `down`) with `generation`.
    /// With `state` (a sticky switch), also one upstream per target and the sticky maps.
    pub(super) fn render_with(
        &self,
        weights: &Weights,
        generation: &str,
        state: Option<&StickyState>,
    ) -> String {
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
        if let (Some(config), Some(state)) = (&self.sticky, state) {
            for s in &self.servers {
                let down = if weights.get(&s.target).unwrap_or(0) == 0 {
                    " down"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "upstream {} {{\n    server {}{down};\n",
                    sticky::target_upstream(&self.upstream, &s.target),
                    s.address
                ));
                if let Some(k) = self.keepalive {
                    out.push_str(&format!("    keepalive {k};\n"));
                }
                out.push_str("}\n");
            }
            let order: Vec<TargetId> = self.servers.iter().map(|s| s.target.clone()).collect();
            out.push_str(&sticky::render(
                config,
                &self.upstream,
                &order,
                weights,
                state,
            ));
            out.push('\n');
        }
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{switch, t};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_down_for_zero_and_reads_it_back() {
        let s = switch();
        let w = Weights::new()
            .with(t("blue"), 0)
            .with(t("green"), 100)
            .with(t("sorry"), 1);
        let text = s.render_with(&w, "g-1", None);
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
    fn a_sticky_include_has_an_upstream_per_target_the_split_and_the_maps() {
        use super::super::sticky::StickyConfig;
        let s = UpstreamSwitch::builder(
            std::sync::Arc::new(deploy_core::LocalHost::new()),
            crate::Nginx::new("/etc/nginx/nginx.conf"),
            "/etc/nginx/app/upstream.conf",
        )
        .server("blue", "127.0.0.1:8081")
        .server("green", "127.0.0.1:8082")
        .keepalive(32)
        .status_listen("127.0.0.1:8099".parse().unwrap())
        .sticky(StickyConfig::new("canary"))
        .build()
        .unwrap();
        let w = Weights::new().with(t("blue"), 90).with(t("green"), 10);
        let state = StickyState {
            epoch: "e1".into(),
            canary: t("green"),
            stable: t("blue"),
        };
        let text = s.render_with(&w, "g-1", Some(&state));
        for line in [
            "# deploy-nginx sticky epoch=e1 canary=green stable=blue\n",
            "upstream app__blue {\n    server 127.0.0.1:8081;\n    keepalive 32;\n}\n",
            "split_clients \"${request_id}\" $app_new {\n    90.00% blue;\n    * green;\n}\n",
            "map $cookie_canary $app_placed {\n    default $app_new;\n    \"blue.e1\" blue;\n    \"green.e1\" green;\n}\n",
            "    default \"canary=$app_new.e1; Path=/; HttpOnly\";\n",
            "map $http_x_canary $app_slot {\n    default $app_placed;\n    always green;\n    never blue;\n}\n",
            "map $http_x_canary $app_set_cookie {\n    default $app_new_cookie;\n    always \"\";\n    never \"\";\n}\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let parsed = parse_include(&text).unwrap();
        assert_eq!(parsed.weights, w);
        assert_eq!(parsed.sticky, Some(state));
        // Weight 0: `down` in its own upstream, out of the cookie map.
        let text = s.render_with(
            &Weights::new().with(t("blue"), 100).with(t("green"), 0),
            "g-2",
            Some(&s.next_sticky(None, &w)),
        );
        assert!(text.contains("server 127.0.0.1:8082 down;\n"), "{text}");
        assert!(!text.contains("\"green."), "{text}");
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
