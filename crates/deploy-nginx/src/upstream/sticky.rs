//! [`StickyConfig`]: sticky canary cohorts on nginx — one upstream per target, `split_clients`
//! placing new users by the weights, a cookie carrying the user's version and a release epoch,
//! and a tester header, all rendered into the include the switch owns.
//!
//! Facts observed on nginx 1.22.1, which decide the design:
//! - `split_clients "${request_id}" $v { 10% green; * blue; }` and `{ * blue; }` are accepted,
//!   `0.00%` is refused (`invalid percent value`);
//! - a `map` or `split_clients` variable is computed once per request: `$<u>_slot` and the
//!   `Set-Cookie` value it feeds agree (20 of 20 answers named the version that served them);
//! - a map value may be a variable (`default $app_new;`), string keys match without case
//!   (`GREEN.E1` matched `green.e1`), and `$cookie_SRV` finds `srv=…` as well;
//! - `add_header Set-Cookie $v;` sends nothing when `$v` is empty;
//! - `proxy_pass http://app__$app_slot;` reaches the `upstream app__green` block by name.

use deploy_core::{TargetId, Weights};
use serde::{Deserialize, Serialize};

fn default_header() -> String {
    "X-Canary".to_owned()
}

/// The `sticky` key of an nginx `[switch]` section: canary users keep their version.
///
/// ```toml
/// [switch.sticky]
/// cookie = "canary"        # the cookie that carries the user's version
/// header = "X-Canary"      # testers: `X-Canary: always` / `never` (the default name)
/// ```
///
/// The lines to add to the `location` of nginx.conf are
/// [`UpstreamSwitch::sticky_location_lines`](crate::UpstreamSwitch::sticky_location_lines);
/// [`UpstreamSwitch::check_sticky`](crate::UpstreamSwitch::check_sticky) finds them with
/// `nginx -T`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StickyConfig {
    /// `cookie`: the cookie's name: ASCII letters, digits, `_` (nginx reads it as
    /// `$cookie_<name>`, so no `-`).
    pub cookie: String,
    /// `header`: the request header testers set to `always` (the canary) or `never` (the
    /// stable version); `X-Canary` by default. ASCII letters, digits, `-`.
    #[serde(default = "default_header")]
    pub header: String,
}

impl StickyConfig {
    /// Cookie `cookie`, header `X-Canary`.
    pub fn new(cookie: impl Into<String>) -> Self {
        Self {
            cookie: cookie.into(),
            header: default_header(),
        }
    }

    /// With another tester header.
    #[must_use]
    pub fn with_header(mut self, header: impl Into<String>) -> Self {
        self.header = header.into();
        self
    }

    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.cookie.is_empty()
            || !self
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            p.push(format!(
                "sticky.cookie {:?}: a cookie name of ASCII letters, digits, '_' (nginx reads it as $cookie_<name>)",
                self.cookie
            ));
        }
        if self.header.is_empty()
            || !self
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            p.push(format!(
                "sticky.header {:?}: a header name of ASCII letters, digits, '-'",
                self.header
            ));
        }
        p
    }

    /// `$http_x_canary` for `X-Canary`.
    fn header_variable(&self) -> String {
        format!(
            "$http_{}",
            self.header.to_ascii_lowercase().replace('-', "_")
        )
    }
}

/// The map keys of the tester header.
pub(super) const ALWAYS: &str = "always";
pub(super) const NEVER: &str = "never";
pub(super) const STICKY_TAG: &str = "# deploy-nginx sticky ";

/// Who is the canary, who the stable version, and the epoch the cookies carry. Kept in the
/// include as a comment line, so that the next change knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StickyState {
    pub(super) epoch: String,
    pub(super) canary: TargetId,
    pub(super) stable: TargetId,
}

impl StickyState {
    pub(super) fn tag_line(&self) -> String {
        format!(
            "{STICKY_TAG}epoch={} canary={} stable={}\n",
            self.epoch, self.canary, self.stable
        )
    }

    pub(super) fn parse(rest: &str) -> std::result::Result<Self, String> {
        let (mut epoch, mut canary, mut stable) = (None, None, None);
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                Some(("epoch", v)) => epoch = Some(v.to_owned()),
                Some(("canary", v)) => canary = Some(TargetId::new(v).map_err(|e| e.to_string())?),
                Some(("stable", v)) => stable = Some(TargetId::new(v).map_err(|e| e.to_string())?),
                _ => return Err(format!("unknown sticky word {word:?}")),
            }
        }
        match (epoch, canary, stable) {
            (Some(epoch), Some(canary), Some(stable)) => Ok(Self {
                epoch,
                canary,
                stable,
            }),
            _ => Err("the sticky line lacks epoch, canary or stable".to_owned()),
        }
    }
}

/// A new epoch: lowercase hex (nginx's map matches keys without case), unique in this process
/// and, by the time and pid, across processes.
pub(super) fn new_epoch() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{ms:x}{:x}{n:x}", std::process::id())
}

/// The targets with a weight, in `order`.
fn live<'a>(order: &'a [TargetId], w: &Weights) -> Vec<&'a TargetId> {
    order.iter().filter(|t| w.get(t).unwrap_or(0) > 0).collect()
}

/// The state after a change from `before` (weights and state, if an include exists) to `after`.
///
/// - the epoch changes when the change leaves at most one target live and it is not the one
///   live before (a promotion, a rollback, a blue-green switch, the first include): every
///   cookie issued before is void and its holder is placed again;
/// - with one target live, it is both the canary and the stable version;
/// - the canary is the target that got a weight while one other was live; it stays the canary
///   while both keep a weight; without a history, the live target of least weight (the last in
///   `order` on a tie) is the canary and the one of most weight the stable version.
pub(super) fn next_state(
    order: &[TargetId],
    before: Option<(&Weights, &StickyState)>,
    after: &Weights,
) -> StickyState {
    let now = live(order, after);
    let was = before.map(|(w, _)| live(order, w));
    let epoch = match (before, &was) {
        (Some((_, s)), Some(was)) if !(now.len() <= 1 && *was != now) => s.epoch.clone(),
        _ => new_epoch(),
    };
    let (canary, stable) = match now.as_slice() {
        [] => match before {
            Some((_, s)) => (s.canary.clone(), s.stable.clone()),
            None => (order[0].clone(), order[0].clone()),
        },
        [one] => ((*one).clone(), (*one).clone()),
        _ => {
            let kept = before.and_then(|(_, s)| {
                (s.canary != s.stable && now.contains(&&s.canary) && now.contains(&&s.stable))
                    .then(|| (s.canary.clone(), s.stable.clone()))
            });
            let from_one = match was.as_deref() {
                Some([old]) if now.contains(old) => now
                    .iter()
                    .find(|t| **t != *old)
                    .map(|new| ((*new).clone(), (*old).clone())),
                _ => None,
            };
            kept.or(from_one).unwrap_or_else(|| {
                let weight = |t: &TargetId| after.get(t).unwrap_or(0);
                let stable = now
                    .iter()
                    .copied()
                    .max_by_key(|t| {
                        (
                            weight(t),
                            std::cmp::Reverse(order.iter().position(|o| o == *t)),
                        )
                    })
                    .expect("two live");
                let canary = now
                    .iter()
                    .copied()
                    .filter(|t| *t != stable)
                    .min_by_key(|t| {
                        (
                            weight(t),
                            std::cmp::Reverse(order.iter().position(|o| o == *t)),
                        )
                    })
                    .expect("two live");
                (canary.clone(), stable.clone())
            })
        }
    };
    StickyState {
        epoch,
        canary,
        stable,
    }
}

/// The variables' prefix: the upstream's name with `-` as `_` (nginx variable names).
pub(super) fn var_prefix(upstream: &str) -> String {
    upstream.replace('-', "_")
}

/// The `split_clients` lines: each live target's share in hundredths of a percent (rounded
/// down, shares that round to 0 left out), the last one `*`.
fn split_entries(order: &[TargetId], w: &Weights, fallback: &TargetId) -> Vec<String> {
    let live = live(order, w);
    let total: u64 = live.iter().map(|t| u64::from(w.get(t).unwrap_or(0))).sum();
    let Some((last, rest)) = live.split_last() else {
        return vec![format!("* {fallback};")];
    };
    let mut out = Vec::new();
    for t in rest {
        let bp = u64::from(w.get(t).unwrap_or(0)) * 10_000 / total;
        if bp > 0 {
            out.push(format!("{}.{:02}% {t};", bp / 100, bp % 100));
        }
    }
    out.push(format!("* {last};"));
    out
}

/// The sticky part of the include (at `http {}` level): the per-target upstreams come from the
/// caller; this renders the split, the maps and their comment.
pub(super) fn render(
    config: &StickyConfig,
    upstream: &str,
    order: &[TargetId],
    weights: &Weights,
    state: &StickyState,
) -> String {
    let v = var_prefix(upstream);
    let e = &state.epoch;
    let cookie = &config.cookie;
    let live = live(order, weights);
    let mut out = String::new();
    out.push_str(&state.tag_line());
    out.push_str(
        "# Sticky cohorts: a new user is placed by the weights, a user whose cookie names a live \
         target of this epoch keeps it, the tester header chooses one request.\n",
    );
    out.push_str(&format!("split_clients \"${{request_id}}\" ${v}_new {{\n"));
    for line in split_entries(order, weights, &state.stable) {
        out.push_str(&format!("    {line}\n"));
    }
    out.push_str("}\n");
    out.push_str(&format!(
        "map $cookie_{cookie} ${v}_placed {{\n    default ${v}_new;\n"
    ));
    for t in &live {
        out.push_str(&format!("    \"{t}.{e}\" {t};\n"));
    }
    out.push_str("}\n");
    out.push_str(&format!(
        "map $cookie_{cookie} ${v}_new_cookie {{\n    default \"{cookie}=${v}_new.{e}; Path=/; HttpOnly\";\n"
    ));
    for t in &live {
        out.push_str(&format!("    \"{t}.{e}\" \"\";\n"));
    }
    out.push_str("}\n");
    let h = config.header_variable();
    out.push_str(&format!(
        "map {h} ${v}_slot {{\n    default ${v}_placed;\n    {ALWAYS} {};\n    {NEVER} {};\n}}\n",
        state.canary, state.stable
    ));
    out.push_str(&format!(
        "map {h} ${v}_set_cookie {{\n    default ${v}_new_cookie;\n    {ALWAYS} \"\";\n    {NEVER} \"\";\n}}\n"
    ));
    out
}

/// The per-target upstream's name.
pub(super) fn target_upstream(upstream: &str, target: &TargetId) -> String {
    format!("{upstream}__{target}")
}

/// The two lines the user puts in the `location` that serves the application.
pub(super) fn location_lines(upstream: &str) -> [String; 2] {
    let v = var_prefix(upstream);
    [
        format!("proxy_pass http://{upstream}__${v}_slot;"),
        format!("add_header Set-Cookie ${v}_set_cookie;"),
    ]
}

/// What `nginx -T` shows against the lines: every problem, in words.
pub(super) fn check_dump(dump: &str, upstream: &str, include: &str) -> Vec<String> {
    // Directives without comments, whitespace squeezed.
    let text: String = dump
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    let squeezed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let has = |line: &str| {
        let l = line.trim_end_matches(';');
        squeezed.contains(&format!("{l};")) || squeezed.contains(&format!("{l} ;"))
    };
    let mut p = Vec::new();
    if !dump.contains(&format!("# configuration file {include}:")) {
        p.push(format!(
            "nginx does not load {include}: add `include {include};` in `http {{}}`"
        ));
    }
    for line in location_lines(upstream) {
        if !has(&line) {
            p.push(format!("no `{line}` in any location"));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::tests::t;
    use super::*;

    fn w(b: u32, g: u32) -> Weights {
        Weights::new().with(t("blue"), b).with(t("green"), g)
    }

    #[test]
    fn the_canary_is_the_target_that_got_a_weight_and_the_epoch_changes_when_one_is_left() {
        let order = [t("blue"), t("green")];
        let first = next_state(&order, None, &w(100, 0));
        assert_eq!(
            (first.canary.as_str(), first.stable.as_str()),
            ("blue", "blue")
        );
        let canary = next_state(&order, Some((&w(100, 0), &first)), &w(90, 10));
        assert_eq!(canary.epoch, first.epoch);
        assert_eq!(
            (canary.canary.as_str(), canary.stable.as_str()),
            ("green", "blue")
        );
        // 50/50 keeps who is who.
        let half = next_state(&order, Some((&w(90, 10), &canary)), &w(50, 50));
        assert_eq!(half, canary);
        let promoted = next_state(&order, Some((&w(50, 50), &half)), &w(0, 100));
        assert_ne!(promoted.epoch, half.epoch);
        assert_eq!(promoted.canary.as_str(), "green");
        // The next canary is blue.
        let next = next_state(&order, Some((&w(0, 100), &promoted)), &w(20, 80));
        assert_eq!(
            (next.canary.as_str(), next.stable.as_str()),
            ("blue", "green")
        );
        assert_eq!(next.epoch, promoted.epoch);
        // Without history: least weight is the canary.
        let fresh = next_state(&order, None, &w(30, 70));
        assert_eq!(
            (fresh.canary.as_str(), fresh.stable.as_str()),
            ("blue", "green")
        );
        let tag = fresh.tag_line();
        assert_eq!(
            StickyState::parse(tag.trim().strip_prefix(STICKY_TAG).unwrap()).unwrap(),
            fresh
        );
    }

    #[test]
    fn the_split_follows_the_weights_in_hundredths_of_a_percent() {
        let order = [t("blue"), t("green"), t("red")];
        let w3 = Weights::new()
            .with(t("blue"), 1)
            .with(t("green"), 2)
            .with(t("red"), 0);
        assert_eq!(
            split_entries(&order, &w3, &t("blue")),
            ["33.33% blue;", "* green;"]
        );
        let tiny = Weights::new()
            .with(t("blue"), 1)
            .with(t("green"), 100_000)
            .with(t("red"), 0);
        assert_eq!(split_entries(&order, &tiny, &t("blue")), ["* green;"]);
        let none = Weights::new().with(t("blue"), 0);
        assert_eq!(split_entries(&order, &none, &t("blue")), ["* blue;"]);
    }

    #[test]
    fn names_are_checked_and_the_location_lines_found_in_a_dump() {
        assert!(StickyConfig::new("canary").problems().is_empty());
        let p = StickyConfig::new("can-ary")
            .with_header("X Canary")
            .problems()
            .join("; ");
        assert!(
            p.contains("sticky.cookie") && p.contains("sticky.header"),
            "{p}"
        );
        assert_eq!(
            location_lines("my-app"),
            [
                "proxy_pass http://my-app__$my_app_slot;",
                "add_header Set-Cookie $my_app_set_cookie;"
            ]
        );
        let dump = "# configuration file /e/nginx.conf:\nhttp { include /e/up.conf;\n location / {\n  proxy_pass   http://app__$app_slot;\n }\n}\n# configuration file /e/up.conf:\n# add_header Set-Cookie $app_set_cookie;\n";
        let p = check_dump(dump, "app", "/e/up.conf");
        assert_eq!(
            p,
            ["no `add_header Set-Cookie $app_set_cookie;` in any location"]
        );
        let p = check_dump(dump, "app", "/e/other.conf");
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
