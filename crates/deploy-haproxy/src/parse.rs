//! Parsers of the Runtime API's answers: `show stat` CSV, `show servers state`, `show info`.
//!
//! All of them read columns by name (HAProxy adds columns between versions), keep every column
//! they do not know, and never panic: a malformed answer is an error or a skipped line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a `show stat` row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RowKind {
    /// A frontend (`svname` is `FRONTEND`).
    Frontend,
    /// A backend's aggregate (`svname` is `BACKEND`).
    Backend,
    /// One server of a backend.
    Server,
    /// A listener of a frontend.
    Listener,
}

/// One row of `show stat`: a frontend, a backend or a server, with its counters.
///
/// The columns deployments need are typed fields; every column (also those this crate does not
/// know) is kept in [`fields`](StatRow::fields) by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatRow {
    /// `pxname`: the frontend or backend.
    pub proxy: String,
    /// `svname`: the server name, `FRONTEND` or `BACKEND`.
    pub name: String,
    /// What the row describes.
    pub kind: RowKind,
    /// `status`: `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, `UP 1/3`, ...
    pub status: String,
    /// `weight`: the effective weight.
    pub weight: Option<u32>,
    /// `uweight`: the weight set by the user (config or `set server ... weight`).
    pub uweight: Option<u32>,
    /// `scur`: current sessions.
    pub scur: u64,
    /// `qcur`: requests queued now.
    pub qcur: u64,
    /// `stot`: total sessions.
    pub stot: u64,
    /// `check_status` without the `* ` prefix of a check in progress (`L7OK`, `L4CON`, empty).
    pub check_status: String,
    /// Whether a health check was in progress (`* ` prefix).
    pub check_in_progress: bool,
    /// `check_code`: the HTTP status of the last layer-7 check, if any.
    pub check_code: Option<u16>,
    /// `addr`: `ip:port` of a server.
    pub addr: String,
    /// `hrsp_2xx`: responses with a 2xx status.
    pub hrsp_2xx: u64,
    /// `hrsp_5xx`: responses with a 5xx status.
    pub hrsp_5xx: u64,
    /// `econ`: connection errors to the server.
    pub econ: u64,
    /// `eresp`: response errors.
    pub eresp: u64,
    /// Every column by name, as text.
    pub fields: BTreeMap<String, String>,
}

impl StatRow {
    /// The raw text of column `name`, if the row has it and it is not empty.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The status without a transition suffix: `UP 1/3` → `UP`, `MAINT (via x/y)` → `MAINT`.
    pub fn base_status(&self) -> &str {
        self.status.split_whitespace().next().unwrap_or("")
    }

    /// Whether the status is in transition (`UP 1/3`: going down, `DOWN 1/2`: going up).
    pub fn in_transition(&self) -> bool {
        self.status
            .split_whitespace()
            .nth(1)
            .is_some_and(|s| s.contains('/'))
    }

    /// Whether the server is in maintenance (`MAINT`, `MAINT (via ...)`, `MAINT (resolution)`).
    pub fn is_maint(&self) -> bool {
        self.base_status() == "MAINT"
    }

    /// Whether the server is draining (`DRAIN`, `DRAIN (agent)`, `DRAIN 1/2`).
    pub fn is_drain(&self) -> bool {
        self.base_status() == "DRAIN"
    }

    /// Whether health checks are configured and running for this server.
    pub fn has_checks(&self) -> bool {
        self.status != "no check" && !self.check_status.is_empty() && !self.is_maint()
    }

    /// Whether the last completed health check succeeded (`L4OK`, `L6OK`, `L7OK`, `L7OKC`).
    pub fn check_passed(&self) -> bool {
        matches!(
            self.check_status.as_str(),
            "L4OK" | "L6OK" | "L7OK" | "L7OKC"
        )
    }
}

/// Split one CSV line, honouring double quotes (HAProxy quotes fields holding `,` or `"`).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn num(fields: &BTreeMap<String, String>, name: &str) -> u64 {
    fields
        .get(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn opt_num<T: std::str::FromStr>(fields: &BTreeMap<String, String>, name: &str) -> Option<T> {
    fields.get(name).and_then(|v| v.trim().parse().ok())
}

/// Parse `show stat` CSV. `None` when there is no `# pxname,...` header (not a CSV answer).
pub(crate) fn parse_stat(text: &str) -> Option<Vec<StatRow>> {
    let mut lines = text.lines();
    let header = lines.next()?.strip_prefix("# ")?;
    let names = split_csv(header);
    if names.first().map(String::as_str) != Some("pxname") {
        return None;
    }
    let mut rows = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let values = split_csv(line);
        let fields: BTreeMap<String, String> = names
            .iter()
            .zip(values)
            .filter(|(n, _)| !n.is_empty() && n.as_str() != "-")
            .map(|(n, v)| (n.clone(), v))
            .collect();
        let (Some(proxy), Some(name)) = (fields.get("pxname"), fields.get("svname")) else {
            continue;
        };
        let kind = match (name.as_str(), fields.get("type").map(String::as_str)) {
            ("FRONTEND", _) | (_, Some("0")) => RowKind::Frontend,
            ("BACKEND", _) | (_, Some("1")) => RowKind::Backend,
            (_, Some("3")) => RowKind::Listener,
            _ => RowKind::Server,
        };
        let raw_check = fields.get("check_status").map(String::as_str).unwrap_or("");
        let (check_in_progress, check_status) = match raw_check.strip_prefix("* ") {
            Some(rest) => (true, rest.trim().to_owned()),
            None => (false, raw_check.trim().to_owned()),
        };
        rows.push(StatRow {
            proxy: proxy.clone(),
            name: name.clone(),
            kind,
            status: fields.get("status").cloned().unwrap_or_default(),
            weight: opt_num(&fields, "weight"),
            uweight: opt_num(&fields, "uweight"),
            scur: num(&fields, "scur"),
            qcur: num(&fields, "qcur"),
            stot: num(&fields, "stot"),
            check_status,
            check_in_progress,
            check_code: opt_num(&fields, "check_code"),
            addr: fields.get("addr").cloned().unwrap_or_default(),
            hrsp_2xx: num(&fields, "hrsp_2xx"),
            hrsp_5xx: num(&fields, "hrsp_5xx"),
            econ: num(&fields, "econ"),
            eresp: num(&fields, "eresp"),
            fields,
        });
    }
    Some(rows)
}

/// One server line of `show servers state` (format version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerStateRow {
    /// `be_name`.
    pub backend: String,
    /// `srv_name`.
    pub server: String,
    /// `srv_addr`.
    pub addr: String,
    /// `srv_port`, if known.
    pub port: Option<u16>,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state` bitmask: 0x01 forced maint, 0x02 inherited maint, 0x04 config maint,
    /// 0x08 forced drain, 0x10 inherited drain, 0x20 resolution maint, 0x40 hostname maint.
    pub admin_state: u32,
    /// `srv_uweight`: the user weight.
    pub uweight: u32,
    /// `srv_iweight`: the weight from the config.
    pub iweight: u32,
    /// Every column by name, as text.
    pub fields: BTreeMap<String, String>,
}

impl ServerStateRow {
    /// Whether any maintenance bit is set.
    pub fn in_maint(&self) -> bool {
        self.admin_state & (0x01 | 0x02 | 0x04 | 0x20 | 0x40) != 0
    }

    /// Whether a drain bit is set.
    pub fn in_drain(&self) -> bool {
        self.admin_state & (0x08 | 0x10) != 0
    }
}

/// The answer of `show servers state`: the format version and one row per server. The raw text
/// is what `server-state-file` loads back after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServersState {
    /// The format version on the first line (1 on HAProxy 1.6 to 3.x).
    pub version: u32,
    /// One row per server.
    pub rows: Vec<ServerStateRow>,
    /// The answer as HAProxy gave it, for a `server-state-file`.
    pub raw: String,
}

/// Parse `show servers state`. `None` when the first two lines are not a version and a header.
pub(crate) fn parse_servers_state(text: &str) -> Option<ServersState> {
    let mut lines = text.lines();
    let version: u32 = lines.next()?.trim().parse().ok()?;
    let header = lines.next()?.strip_prefix('#')?;
    let names: Vec<&str> = header.split_whitespace().collect();
    if !names.contains(&"be_name") || !names.contains(&"srv_name") {
        return None;
    }
    let mut rows = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: BTreeMap<String, String> = names
            .iter()
            .zip(line.split_whitespace())
            .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
            .collect();
        let (Some(backend), Some(server)) = (fields.get("be_name"), fields.get("srv_name")) else {
            continue;
        };
        rows.push(ServerStateRow {
            backend: backend.clone(),
            server: server.clone(),
            addr: fields.get("srv_addr").cloned().unwrap_or_default(),
            port: opt_num(&fields, "srv_port"),
            op_state: opt_num(&fields, "srv_op_state").unwrap_or(0),
            admin_state: opt_num(&fields, "srv_admin_state").unwrap_or(0),
            uweight: opt_num(&fields, "srv_uweight").unwrap_or(0),
            iweight: opt_num(&fields, "srv_iweight").unwrap_or(0),
            fields,
        });
    }
    Some(ServersState {
        version,
        rows,
        raw: text.to_owned(),
    })
}

/// The answer of `show info`: `Name: value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Info {
    /// Every pair, by name.
    pub fields: BTreeMap<String, String>,
}

impl Info {
    /// The value of `name` (`Version`, `Pid`, `Uptime_sec`, `CurrConns`, ...).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The version text (`2.6.12-1+deb12u4`).
    pub fn version(&self) -> Option<&str> {
        self.get("Version")
    }

    /// Major and minor version (`(2, 6)`), if the version text starts with them.
    pub fn version_number(&self) -> Option<(u32, u32)> {
        let v = self.version()?;
        let mut it = v.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// The worker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.get("Pid").and_then(|p| p.parse().ok())
    }
}

/// Parse `show info`. `None` when no line is `Name: value`.
pub(crate) fn parse_info(text: &str) -> Option<Info> {
    let fields: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if !fields.contains_key("Name") && !fields.contains_key("Version") {
        return None;
    }
    Some(Info { fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight,check_status,check_code,addr,type,uweight,agg_server_status,-,h1_bytes_in,new_col,\n\
app,blue,0,0,3,0,,7,UP,10,L7OK,200,127.0.0.1:1,2,10,,-,5,x,\n\
app,green,0,0,0,0,,0,MAINT,7,* L4CON,,127.0.0.1:2,2,7,,-,5,\"a,b\",\n\
app,BACKEND,0,0,3,0,,7,UP,17,,,,1,17,,-,5,,\n\n";

    #[test]
    fn stat_rows_by_column_name_with_unknown_columns() {
        let rows = parse_stat(STAT).unwrap();
        assert_eq!(rows.len(), 3);
        let blue = &rows[0];
        assert_eq!((blue.proxy.as_str(), blue.name.as_str()), ("app", "blue"));
        assert_eq!(blue.kind, RowKind::Server);
        assert_eq!(blue.scur, 3);
        assert_eq!(blue.weight, Some(10));
        assert_eq!(blue.uweight, Some(10));
        assert!(blue.check_passed());
        assert_eq!(blue.check_code, Some(200));
        assert_eq!(blue.field("new_col"), Some("x"));
        let green = &rows[1];
        assert!(green.is_maint());
        assert!(green.check_in_progress);
        assert_eq!(green.check_status, "L4CON");
        assert_eq!(green.field("new_col"), Some("a,b"));
        assert_eq!(rows[2].kind, RowKind::Backend);
    }

    #[test]
    fn transitional_status() {
        let mut row = parse_stat(STAT).unwrap().remove(0);
        row.status = "UP 1/3".into();
        assert!(row.in_transition());
        assert_eq!(row.base_status(), "UP");
        row.status = "MAINT (via a/b)".into();
        assert!(!row.in_transition());
        assert!(row.is_maint());
    }

    #[test]
    fn servers_state_and_info() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_port future\n3 app 1 blue 127.0.0.1 2 8 9 100 19992 z\n\n";
        let s = parse_servers_state(text).unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.rows.len(), 1);
        let r = &s.rows[0];
        assert_eq!((r.backend.as_str(), r.server.as_str()), ("app", "blue"));
        assert_eq!((r.uweight, r.iweight, r.port), (9, 100, Some(19992)));
        assert!(r.in_drain() && !r.in_maint());
        assert_eq!(r.fields.get("future").map(String::as_str), Some("z"));
        assert!(parse_servers_state("No such backend.\n\n").is_none());

        let info = parse_info("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 42\n\n").unwrap();
        assert_eq!(info.version_number(), Some((2, 6)));
        assert_eq!(info.pid(), Some(42));
        assert!(parse_info("Unknown command\n").is_none());
        assert!(parse_stat("Permission denied\n\n").is_none());
    }

    proptest! {
        #[test]
        fn stat_parser_never_panics(s in ".{0,400}") {
            let _ = parse_stat(&s);
            let _ = parse_stat(&format!("# pxname,svname,scur,weight\n{s}"));
        }

        #[test]
        fn stat_rows_survive_random_cells(cells in proptest::collection::vec("[^\n]{0,12}", 0..12)) {
            let text = format!("# pxname,svname,scur,weight,uweight,check_status,type\n{}\n", cells.join(","));
            if let Some(rows) = parse_stat(&text) {
                for r in rows {
                    let _ = (r.base_status(), r.in_transition(), r.has_checks(), r.check_passed());
                }
            }
        }

        #[test]
        fn state_and_info_parsers_never_panic(s in ".{0,400}") {
            let _ = parse_servers_state(&s);
            let _ = parse_servers_state(&format!("1\n# be_name srv_name srv_admin_state\n{s}"));
            if let Some(i) = parse_info(&s) {
                let _ = (i.version_number(), i.pid());
            }
        }
    }
}
