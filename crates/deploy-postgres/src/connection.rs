//! Connection settings: from a URL or the `PG*` environment, handed to the client tools through
//! their environment so that the password never reaches a command line.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, Result};

/// How to reach one database.
///
/// Every field goes to the client tools (`psql`, `pg_dump`, `pg_restore`) as a libpq environment
/// variable (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`,
/// `PGSSLMODE`), never as an argument: command lines are visible to every user of the host in
/// `ps`. `Debug` shows the password as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Host name, IP address, or a directory holding the Unix socket; `None` lets libpq decide.
    pub host: Option<String>,
    /// Port; `None` lets libpq decide (5432).
    pub port: Option<u16>,
    /// Role to connect as.
    pub user: Option<String>,
    /// The database the migrations apply to (required).
    pub dbname: String,
    password: Option<String>,
    /// A pgpass file to read the password from (`PGPASSFILE`).
    pub passfile: Option<PathBuf>,
    /// `sslmode` (`disable`, `require`, `verify-full`...).
    pub sslmode: Option<String>,
    /// The database to connect to for `CREATE DATABASE` and renames during a restore
    /// (default `postgres`).
    pub maintenance_db: String,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("sslmode", &self.sslmode)
            .field("maintenance_db", &self.maintenance_db)
            .finish()
    }
}

impl fmt::Display for PgConfig {
    /// `postgres://user@host:port/db`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if let Some(h) = &self.host {
            if h.contains(':') {
                write!(f, "[{h}]")?;
            } else {
                f.write_str(h)?;
            }
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "/{}", self.dbname)
    }
}

fn bad_url(cause: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "parse",
        "database URL (password not shown)",
        cause,
    )
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad_url("a '%' is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_url("a percent-encoded part is not UTF-8"))
}

impl PgConfig {
    /// Settings for `dbname`, everything else left to libpq's defaults.
    pub fn new(dbname: impl Into<String>) -> Self {
        Self {
            host: None,
            port: None,
            user: None,
            dbname: dbname.into(),
            password: None,
            passfile: None,
            sslmode: None,
            maintenance_db: "postgres".to_owned(),
        }
    }

    /// Parse `postgres://user:password@host:port/dbname?sslmode=require&host=/run/postgresql`.
    ///
    /// Errors never repeat the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad_url("must start with postgres:// or postgresql://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut cfg = Self::new(percent_decode(path)?);
        if let Some(ui) = userinfo {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            if !u.is_empty() {
                cfg.user = Some(percent_decode(u)?);
            }
            if let Some(p) = p {
                cfg.password = Some(percent_decode(p)?);
            }
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| bad_url("an IPv6 host lacks its closing ']'"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            cfg.host = Some(percent_decode(host)?);
        }
        if let Some(p) = port {
            cfg.port = Some(
                p.parse()
                    .map_err(|_| bad_url(format!("port {p:?} is not a number from 1 to 65535")))?,
            );
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "sslmode" => cfg.sslmode = Some(v),
                "host" => cfg.host = Some(v),
                "port" => {
                    cfg.port = Some(v.parse().map_err(|_| {
                        bad_url(format!("port {v:?} is not a number from 1 to 65535"))
                    })?)
                }
                "user" => cfg.user = Some(v),
                "dbname" => cfg.dbname = v,
                "passfile" => cfg.passfile = Some(PathBuf::from(v)),
                "password" => cfg.password = Some(v),
                other => {
                    return Err(bad_url(format!(
                        "unsupported parameter {other:?} (supported: sslmode, host, port, user, dbname, passfile, password)"
                    )));
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings from the `PG*` environment of this process (`PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with the variables read through `var`.
    pub(crate) fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let dbname = var("PGDATABASE").ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "read",
                "PG* environment",
                "PGDATABASE is not set",
            )
        })?;
        let mut cfg = Self::new(dbname);
        cfg.host = var("PGHOST");
        cfg.user = var("PGUSER");
        cfg.password = var("PGPASSWORD");
        cfg.passfile = var("PGPASSFILE").map(PathBuf::from);
        cfg.sslmode = var("PGSSLMODE");
        if let Some(p) = var("PGPORT") {
            cfg.port = Some(p.parse().map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "read",
                    "PG* environment",
                    format!("PGPORT {p:?} is not a number from 1 to 65535"),
                )
            })?);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Set the password (passed to the tools as `PGPASSWORD`).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Set host and port.
    pub fn with_host(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = Some(host.into());
        self.port = Some(port);
        self
    }

    /// Set the role.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Whether a password is set.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The same server, another database.
    pub fn for_database(&self, dbname: impl Into<String>) -> Self {
        let mut c = self.clone();
        c.dbname = dbname.into();
        c
    }

    /// What makes these settings unusable, in words; empty when they are usable.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.dbname.is_empty() {
            problems.push("the database name is empty".to_owned());
        }
        if self.dbname.len() > 63 {
            problems.push("the database name is longer than 63 bytes".to_owned());
        }
        if self.port == Some(0) {
            problems.push("port 0 is not a valid port".to_owned());
        }
        problems
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            "validate",
            format!("connection settings {self}"),
            problems.join("; "),
        ))
    }

    /// The libpq environment for a tool connecting to `dbname` (the configured database when
    /// `None`).
    pub(crate) fn env(&self, dbname: Option<&str>) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let mut push = |k: &str, v: &str| env.push((k.into(), v.into()));
        if let Some(h) = &self.host {
            push("PGHOST", h);
        }
        if let Some(p) = self.port {
            push("PGPORT", &p.to_string());
        }
        if let Some(u) = &self.user {
            push("PGUSER", u);
        }
        push("PGDATABASE", dbname.unwrap_or(&self.dbname));
        if let Some(p) = &self.password {
            push("PGPASSWORD", p);
        }
        if let Some(p) = &self.passfile {
            push("PGPASSFILE", &p.to_string_lossy());
        }
        if let Some(s) = &self.sslmode {
            push("PGSSLMODE", s);
        }
        push("PGCONNECT_TIMEOUT", "10");
        env
    }

    /// The password, for redacting it from text that tools printed.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_parsed_and_password_never_shown() {
        let c =
            PgConfig::from_url("postgres://app:p%40ss%3Aw0rd@db.example:6543/shop?sslmode=require")
                .unwrap();
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password(), Some("p@ss:w0rd"));
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, Some(6543));
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode.as_deref(), Some("require"));
        let shown = format!("{c:?} {c}");
        assert!(!shown.contains("p@ss"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let env = c.env(None);
        assert!(
            env.iter()
                .any(|(k, v)| k == "PGPASSWORD" && v == "p@ss:w0rd")
        );
    }

    #[test]
    fn bad_urls_are_typed_errors_without_the_password() {
        for url in [
            "mysql://u:secretpw@h/db",
            "postgres://u:secretpw@h:notaport/db",
            "postgres://u:secretpw@h/",
            "postgres://u:secretpw@h/db?bogus=1",
            "postgres://u:secret%zz@h/db",
        ] {
            let e = PgConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn ipv6_and_socket_hosts() {
        let c = PgConfig::from_url("postgresql://[::1]:5433/db").unwrap();
        assert_eq!(c.host.as_deref(), Some("::1"));
        assert_eq!(c.port, Some(5433));
        let c = PgConfig::from_url("postgres:///db?host=/run/postgresql").unwrap();
        assert_eq!(c.host.as_deref(), Some("/run/postgresql"));
        assert_eq!(c.to_string(), "postgres:///run/postgresql/db");
    }
}
