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

/// Parse `show stat` CSV. An error (saying why) when there is no `# pxname,...` header (not a
/// CSV answer) or a row does not have the header's number of fields: HAProxy writes every
/// field of every row, so a short row is an answer cut off (a worker stopping mid-answer), and
/// reading it would take its missing weight or status for absent.
#[cfg(test)]
pub(crate) fn parse_stat(text: &str) -> Result<Vec<StatRow>, String> {
    parse_stat_columns(text, None)
}

/// The columns [`StatRow`]'s typed fields come from, and `cookie` (sticky cohorts read it): what
/// a switch reading a whole backend needs, without the other ~80 columns of every row (at 256
/// servers, a full parse is ~2 MB of small strings; eight concurrent ones showed as a 23 MiB
/// jump of the deploying process's peak RSS).
pub(crate) const SWITCH_COLUMNS: &[&str] = &[
    "pxname",
    "svname",
    "sid",
    "type",
    "status",
    "weight",
    "uweight",
    "scur",
    "qcur",
    "stot",
    "check_status",
    "check_code",
    "addr",
    "hrsp_2xx",
    "hrsp_5xx",
    "econ",
    "eresp",
    "cookie",
];

/// [`parse_stat`], keeping in [`StatRow::fields`] only the columns `keep` names (all when
/// `None`).
pub(crate) fn parse_stat_columns(
    text: &str,
    keep: Option<&[&str]>,
) -> Result<Vec<StatRow>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or("it does not start with a `# pxname,...` header")?;
    let names = split_csv(header);
    if names.first().map(String::as_str) != Some("pxname") {
        return Err("its header does not start with `pxname`".into());
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let values = split_csv(line);
        if values.len() != names.len() {
            return Err(format!(
                "line {} has {} fields where the header has {} (a cut-off answer?)",
                i + 2,
                values.len(),
                names.len()
            ));
        }
        let fields: BTreeMap<String, String> = names
            .iter()
            .zip(values)
            .filter(|(n, _)| !n.is_empty() && n.as_str() != "-")
            .filter(|(n, _)| keep.is_none_or(|k| k.contains(&n.as_str())))
            .map(|(n, v)| (n.clone(), v))
            .collect();
        let (Some(proxy), Some(name)) = (fields.get("pxname"), fields.get("svname")) else {
            continue;
        };
        // `type` says what the row is; a server may well be named BACKEND or FRONTEND.
        let kind = match (fields.get("type").map(|t| t.trim()), name.as_str()) {
            (Some("0"), _) => RowKind::Frontend,
            (Some("1"), _) => RowKind::Backend,
            (Some("2"), _) => RowKind::Server,
            (Some("3"), _) => RowKind::Listener,
            (_, "FRONTEND") => RowKind::Frontend,
            (_, "BACKEND") => RowKind::Backend,
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
    Ok(rows)
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

/// Parse `show servers state`. An error (saying why) when the first two lines are not a
/// version and a header naming `be_name` and `srv_name`, or a server line does not have the
/// header's number of fields (a cut-off answer: its weights would be read as absent).
pub(crate) fn parse_servers_state(text: &str) -> Result<ServersState, String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let version: u32 = first
        .trim()
        .parse()
        .map_err(|_| format!("its first line {first:?} is not a format version"))?;
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("its second line is not a `# be_id be_name ...` header")?;
    let names: Vec<&str> = header.split_whitespace().collect();
    if !names.contains(&"be_name") || !names.contains(&"srv_name") {
        return Err("its header names no be_name or no srv_name".into());
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != names.len() {
            return Err(format!(
                "line {} has {} fields where the header has {} (a cut-off answer?)",
                i + 3,
                values.len(),
                names.len()
            ));
        }
        let fields: BTreeMap<String, String> = names
            .iter()
            .zip(values)
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
    Ok(ServersState {
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
        let light = parse_stat_columns(STAT, Some(SWITCH_COLUMNS)).unwrap();
        let full = parse_stat(STAT).unwrap();
        // The same typed fields, fewer columns kept by name.
        for (l, f) in light.iter().zip(&full) {
            assert_eq!(
                (&l.proxy, &l.name, &l.status, l.weight, l.uweight, l.scur),
                (&f.proxy, &f.name, &f.status, f.weight, f.uweight, f.scur)
            );
            assert!(l.fields.len() <= SWITCH_COLUMNS.len() && l.fields.len() < f.fields.len());
        }
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
        assert!(parse_servers_state("No such backend.\n\n").is_err());

        let info = parse_info("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 42\n\n").unwrap();
        assert_eq!(info.version_number(), Some((2, 6)));
        assert_eq!(info.pid(), Some(42));
        assert!(parse_info("Unknown command\n").is_none());
        assert!(parse_stat("Permission denied\n\n").is_err());
    }

    /// `type` decides what a row is: HAProxy accepts a server named BACKEND (it was read as the
    /// backend's aggregate row before, found by `generated_stat_replies_parse_back`).
    #[test]
    fn a_server_named_backend_is_a_server() {
        let text = "# pxname,svname,status,weight,type,\napp,BACKEND,UP,5,2,\napp,FRONTEND,UP,5,2,\napp,BACKEND,UP,10,1,\n";
        let kinds: Vec<RowKind> = parse_stat(text).unwrap().iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [RowKind::Server, RowKind::Server, RowKind::Backend]);
        // Without a `type` column the name is all there is.
        let rows = parse_stat("# pxname,svname\napp,BACKEND\napp,FRONTEND\napp,x\n").unwrap();
        let kinds: Vec<RowKind> = rows.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [RowKind::Backend, RowKind::Frontend, RowKind::Server]
        );
    }

    /// An answer cut off in the middle of a row is an error, not a row whose weight is missing.
    #[test]
    fn a_cut_off_answer_is_an_error() {
        let cut = &STAT[..STAT.find("MAINT,7").unwrap() + 5];
        let e = parse_stat(cut).unwrap_err();
        assert!(
            e.contains("line 3 has 9 fields where the header has 20"),
            "{e}"
        );
        let e = parse_servers_state(
            "1\n# be_id be_name srv_id srv_name srv_uweight\n3 app 1 blue 10\n3 app 2 gre",
        )
        .unwrap_err();
        assert!(
            e.contains("line 4 has 4 fields where the header has 5"),
            "{e}"
        );
        assert!(
            parse_stat("# svname,pxname\n")
                .unwrap_err()
                .contains("pxname")
        );
        assert!(
            parse_servers_state("x\n")
                .unwrap_err()
                .contains("format version")
        );
        assert!(
            parse_servers_state("1\n# be_id srv_id\n")
                .unwrap_err()
                .contains("be_name")
        );
    }

    /// One generated `show stat` row: what the typed fields should read.
    #[derive(Debug, Clone)]
    struct GenStat {
        proxy: String,
        name: String,
        kind: RowKind,
        status: String,
        weight: Option<u32>,
        uweight: Option<u32>,
        counters: [u64; 7],
        check_status: String,
        check_in_progress: bool,
        check_code: Option<u16>,
        addr: String,
        extra: Vec<String>,
    }

    /// The optional columns the typed fields read, in HAProxy's order.
    const STAT_COLUMNS: [&str; 14] = [
        "qcur",
        "scur",
        "stot",
        "econ",
        "eresp",
        "status",
        "weight",
        "type",
        "check_status",
        "check_code",
        "hrsp_2xx",
        "hrsp_5xx",
        "addr",
        "uweight",
    ];
    const COUNTERS: [&str; 7] = [
        "qcur", "scur", "stot", "econ", "eresp", "hrsp_2xx", "hrsp_5xx",
    ];

    /// Names as HAProxy allows them, arbitrary text (quoted in the CSV), or the words of the
    /// aggregate rows.
    fn haproxy_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[A-Za-z0-9_.:-]{1,16}",
            1 => "[^\r\n]{1,12}",
            1 => prop::sample::select(vec!["BACKEND".to_owned(), "FRONTEND".to_owned()]),
        ]
    }

    fn gen_stat(extra_columns: usize) -> impl Strategy<Value = GenStat> {
        (
            (haproxy_name(), haproxy_name()),
            prop::sample::select(vec![
                RowKind::Frontend,
                RowKind::Backend,
                RowKind::Server,
                RowKind::Listener,
            ]),
            prop::sample::select(vec![
                "UP",
                "DOWN",
                "MAINT",
                "DRAIN",
                "no check",
                "UP 1/3",
                "DOWN 1/2",
                "MAINT (via app/x)",
                "OPEN",
                "NOLB",
            ]),
            (
                proptest::option::of(0u32..=256),
                proptest::option::of(0u32..=256),
            ),
            prop::array::uniform7(any::<u64>()),
            (
                prop::sample::select(vec![
                    "", "L4OK", "L6OK", "L7OK", "L7OKC", "L4CON", "L7STS", "INI", "SOCKERR",
                ]),
                any::<bool>(),
            ),
            proptest::option::of(100u16..600),
            prop::sample::select(vec!["127.0.0.1:8080", "[::1]:443", "10.0.0.1:1", ""]),
            prop::collection::vec("[^\r\n]{0,10}", extra_columns),
        )
            .prop_map(
                |(
                    (proxy, name),
                    kind,
                    status,
                    (weight, uweight),
                    counters,
                    (check, running),
                    check_code,
                    addr,
                    extra,
                )| GenStat {
                    proxy,
                    name,
                    kind,
                    status: status.to_owned(),
                    weight,
                    uweight,
                    counters,
                    check_in_progress: running && !check.is_empty(),
                    check_status: check.to_owned(),
                    check_code,
                    addr: addr.to_owned(),
                    extra,
                },
            )
    }

    /// A field as HAProxy writes it: quoted when it holds a comma or a quote, or when `quote`.
    fn csv_field(v: &str, quote: bool) -> String {
        if quote || v.contains([',', '"']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    }

    fn stat_value(r: &GenStat, column: &str) -> String {
        let opt = |v: Option<u32>| v.map(|w| w.to_string()).unwrap_or_default();
        match column {
            "pxname" => r.proxy.clone(),
            "svname" => r.name.clone(),
            "status" => r.status.clone(),
            "weight" => opt(r.weight),
            "uweight" => opt(r.uweight),
            "type" => match r.kind {
                RowKind::Frontend => "0",
                RowKind::Backend => "1",
                RowKind::Server => "2",
                RowKind::Listener => "3",
            }
            .to_owned(),
            "check_status" if r.check_in_progress => format!("* {}", r.check_status),
            "check_status" => r.check_status.clone(),
            "check_code" => r.check_code.map(|c| c.to_string()).unwrap_or_default(),
            "addr" => r.addr.clone(),
            "-" => "-".to_owned(),
            "" => String::new(),
            c => match COUNTERS.iter().position(|n| *n == c) {
                Some(i) => r.counters[i].to_string(),
                None => r.extra[c[2..].parse::<usize>().unwrap()].clone(),
            },
        }
    }

    /// One generated `show servers state` row.
    #[derive(Debug, Clone)]
    struct GenState {
        backend: String,
        server: String,
        addr: String,
        port: Option<u16>,
        numbers: [u32; 4],
        other: Vec<String>,
    }

    const STATE_COLUMNS: [&str; 21] = [
        "be_id",
        "srv_id",
        "srv_addr",
        "srv_op_state",
        "srv_admin_state",
        "srv_uweight",
        "srv_iweight",
        "srv_time_since_last_change",
        "srv_check_status",
        "srv_check_result",
        "srv_check_health",
        "srv_check_state",
        "srv_agent_state",
        "bk_f_forced_id",
        "srv_f_forced_id",
        "srv_fqdn",
        "srv_port",
        "srvrecord",
        "srv_use_ssl",
        "srv_check_port",
        "future_column",
    ];

    fn gen_state() -> impl Strategy<Value = GenState> {
        (
            ("[A-Za-z0-9_.:-]{1,16}", "[A-Za-z0-9_.:-]{1,16}"),
            prop::sample::select(vec!["127.0.0.1", "::1", "10.1.2.3", "-"]),
            proptest::option::of(any::<u16>()),
            (0u32..4, 0u32..128, 0u32..=256, 0u32..=256),
            prop::collection::vec("[!-~]{1,8}", STATE_COLUMNS.len()),
        )
            .prop_map(
                |((backend, server), addr, port, (op, admin, uw, iw), other)| GenState {
                    backend,
                    server,
                    addr: addr.to_owned(),
                    port,
                    numbers: [op, admin, uw, iw],
                    other,
                },
            )
    }

    fn state_value(r: &GenState, column: &str, i: usize) -> String {
        match column {
            "be_name" => r.backend.clone(),
            "srv_name" => r.server.clone(),
            "srv_addr" => r.addr.clone(),
            "srv_port" => r.port.map_or("-".to_owned(), |p| p.to_string()),
            "srv_op_state" => r.numbers[0].to_string(),
            "srv_admin_state" => r.numbers[1].to_string(),
            "srv_uweight" => r.numbers[2].to_string(),
            "srv_iweight" => r.numbers[3].to_string(),
            _ => r.other[i % r.other.len()].clone(),
        }
    }

    /// A `Transport` answering every command with one text.
    #[derive(Debug)]
    struct Answer(String);

    #[async_trait::async_trait]
    impl crate::Transport for Answer {
        fn describe(&self) -> String {
            "scripted.sock".into()
        }

        async fn exchange(&self, _line: &str, _limit: usize) -> deploy_core::Result<String> {
            Ok(self.0.clone())
        }
    }

    /// Answers that look like the real ones for a while.
    fn answer() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,200}",
            "[ -~\n]{0,200}",
            "# pxname,svname,status,weight,type[a-z,\n\"0-9]{0,200}",
            "1\n# be_id be_name srv_id srv_name srv_uweight[a-z 0-9\n]{0,200}",
            "Name: HAProxy\nVersion: [0-9.a-z\n:]{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn stat_parser_never_panics(s in ".{0,400}", cut in any::<prop::sample::Index>()) {
            let _ = parse_stat(&s);
            let _ = parse_stat(&format!("# pxname,svname,scur,weight\n{s}"));
            // Any prefix of a real answer: rows, or an error saying which line is short.
            let end = STAT.char_indices().map(|(i, _)| i).nth(cut.index(STAT.chars().count())).unwrap_or(0);
            match parse_stat(&STAT[..end]) {
                Ok(rows) => prop_assert!(rows.iter().all(|r| r.proxy == "app")),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn stat_rows_survive_random_cells(cells in proptest::collection::vec("[^\n]{0,12}", 0..12)) {
            let text = format!("# pxname,svname,scur,weight,uweight,check_status,type\n{}\n", cells.join(","));
            if let Ok(rows) = parse_stat(&text) {
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

        /// Generated replies (arbitrary names, weights, states and checks, optional columns
        /// left out, columns in any order, unknown ones, quoted fields) read back exactly.
        #[test]
        fn generated_stat_replies_parse_back(
            present in prop::collection::vec(any::<bool>(), STAT_COLUMNS.len()),
            extra in 0usize..3,
            rows in prop::collection::vec(gen_stat(3), 0..5),
            order in Just((0..20).collect::<Vec<usize>>()).prop_shuffle(),
            quote_all in any::<bool>(),
            separator in any::<bool>(),
            trailing_comma in any::<bool>(),
        ) {
            let mut columns: Vec<String> = STAT_COLUMNS
                .iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(c, _)| (*c).to_owned())
                .chain((0..extra).map(|i| format!("x_{i}")))
                .chain(separator.then(|| "-".to_owned()))
                .collect();
            // Any order, but `pxname` first (that is how the answer is recognised).
            let mut ordered: Vec<String> = order.iter().filter_map(|i| columns.get(*i).cloned()).collect();
            ordered.extend(columns.drain(..).filter(|c| !ordered.contains(c)).collect::<Vec<_>>());
            let mut header = vec!["pxname".to_owned(), "svname".to_owned()];
            header.extend(ordered);
            if trailing_comma {
                header.push(String::new());
            }
            let mut text = format!("# {}\n", header.join(","));
            for r in &rows {
                let line: Vec<String> = header.iter().map(|c| csv_field(&stat_value(r, c), quote_all)).collect();
                text.push_str(&line.join(","));
                text.push('\n');
            }
            text.push('\n');

            let parsed = parse_stat(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(parsed.len(), rows.len());
            let has = |c: &str| header.iter().any(|h| h == c);
            for (got, r) in parsed.iter().zip(&rows) {
                let kind = if has("type") {
                    r.kind
                } else {
                    match r.name.as_str() {
                        "FRONTEND" => RowKind::Frontend,
                        "BACKEND" => RowKind::Backend,
                        _ => RowKind::Server,
                    }
                };
                let counter = |name: &str| if has(name) { r.counters[COUNTERS.iter().position(|c| *c == name).unwrap()] } else { 0 };
                prop_assert_eq!(&got.proxy, &r.proxy);
                prop_assert_eq!(&got.name, &r.name);
                prop_assert_eq!(got.kind, kind);
                prop_assert_eq!(&got.status, if has("status") { &r.status } else { "" });
                prop_assert_eq!(got.weight, r.weight.filter(|_| has("weight")));
                prop_assert_eq!(got.uweight, r.uweight.filter(|_| has("uweight")));
                prop_assert_eq!(
                    [got.qcur, got.scur, got.stot, got.econ, got.eresp, got.hrsp_2xx, got.hrsp_5xx],
                    COUNTERS.map(counter)
                );
                prop_assert_eq!(&got.check_status, if has("check_status") { &r.check_status } else { "" });
                prop_assert_eq!(got.check_in_progress, r.check_in_progress && has("check_status"));
                prop_assert_eq!(got.check_code, r.check_code.filter(|_| has("check_code")));
                prop_assert_eq!(&got.addr, if has("addr") { &r.addr } else { "" });
                let fields: BTreeMap<String, String> = header
                    .iter()
                    .filter(|c| !c.is_empty() && c.as_str() != "-")
                    .map(|c| (c.clone(), stat_value(r, c)))
                    .collect();
                prop_assert_eq!(&got.fields, &fields);
            }
        }

        #[test]
        fn generated_servers_states_parse_back(
            present in prop::collection::vec(any::<bool>(), STATE_COLUMNS.len()),
            rows in prop::collection::vec(gen_state(), 0..5),
            version in 1u32..3,
        ) {
            let mut header = vec!["be_name", "srv_name"];
            header.extend(STATE_COLUMNS.iter().zip(&present).filter(|(_, p)| **p).map(|(c, _)| *c));
            let mut text = format!("{version}\n# {}\n", header.join(" "));
            for r in &rows {
                let line: Vec<String> = header.iter().enumerate().map(|(i, c)| state_value(r, c, i)).collect();
                text.push_str(&line.join(" "));
                text.push('\n');
            }
            text.push('\n');

            let s = parse_servers_state(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(s.version, version);
            prop_assert_eq!(&s.raw, &text);
            prop_assert_eq!(s.rows.len(), rows.len());
            let has = |c: &str| header.contains(&c);
            for (got, r) in s.rows.iter().zip(&rows) {
                prop_assert_eq!(&got.backend, &r.backend);
                prop_assert_eq!(&got.server, &r.server);
                prop_assert_eq!(&got.addr, if has("srv_addr") { &r.addr } else { "" });
                prop_assert_eq!(got.port, r.port.filter(|_| has("srv_port")));
                let n = |c: &str, v: u32| if has(c) { v } else { 0 };
                prop_assert_eq!(
                    [got.op_state, got.admin_state, got.uweight, got.iweight],
                    [n("srv_op_state", r.numbers[0]), n("srv_admin_state", r.numbers[1]), n("srv_uweight", r.numbers[2]), n("srv_iweight", r.numbers[3])]
                );
                prop_assert_eq!(got.in_maint(), has("srv_admin_state") && r.numbers[1] & 0x67 != 0);
                let fields: BTreeMap<String, String> = header
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ((*c).to_owned(), state_value(r, c, i)))
                    .collect();
                prop_assert_eq!(&got.fields, &fields);
            }
        }
    }

    proptest! {
        // Each case builds a runtime: fewer of them.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through the client, any answer is rows or an error naming the command and the socket.
        #[test]
        fn any_answer_is_a_result_or_a_clear_error(text in answer()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let client = crate::RuntimeClient::new(Answer(text));
            let (stat, state, info) = rt.block_on(async {
                (client.show_stat(None).await, client.show_servers_state(None).await, client.show_info().await)
            });
            for (what, e) in [
                ("`show stat`", stat.err()),
                ("`show servers state`", state.err()),
                ("`show info`", info.err()),
            ] {
                if let Some(e) = e {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(what) && msg.contains("scripted.sock"), "{}", msg);
                }
            }
        }
    }
}
