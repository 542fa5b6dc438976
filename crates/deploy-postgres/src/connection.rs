//! Connection settings: from a URL or the `PG*` environment, handed to the client tools through
//! their environment so that the password never reaches a command line.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, ExposeSecret, Result, SecretString};

/// How to reach one database.
///
/// Every field goes to the client tools (`psql`, `pg_dump`, `pg_restore`) as a libpq environment
/// variable (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`,
/// `PGSSLMODE`) in [`Command::env`](deploy_core::Command::env), never as an argument: command lines
/// are visible to every user of the host in `ps`. How the environment reaches the tool is the
/// [`Host`](deploy_core::Host)'s part:
///
/// - [`LocalHost`](deploy_core::LocalHost) sets it in the child process's environment.
/// - `deploy_ssh::SshHost` sends the variables' *values* on the SSH channel's standard input,
///   ahead of the tool's own input; the remote shell reads them and exports them before it
///   `exec`s the tool. The string SSH carries (the remote shell's command line) holds the
///   names only.
///
/// Either way the password ends up in the tool's environment on the host where it runs
/// (`/proc/PID/environ`, readable by the same user and root, not by other users), and on no
/// command line. The advisory-lock session, a `psql` child of this process, gets the same
/// environment locally. A `Host` of your own must likewise keep [`Command::env`](deploy_core::Command::env) off command
/// lines; a password holding a newline cannot be sent by `SshHost` and is refused there.
///
/// The password is held as a [`SecretString`]: `Debug` shows it as `<redacted>`, `Display`
/// leaves it out, and text the tools print has it replaced before it reaches an error.
#[derive(Clone)]
pub struct PgConfig {
    /// Host name, IP address, or a directory holding the Unix socket; `None` lets libpq decide.
    pub host: Option<String>,
    /// Port; `None` lets libpq decide (5432).
    pub port: Option<u16>,
    /// Role to connect as.
    pub user: Option<String>,
    /// The database the migrations apply to (required).
    pub dbname: String,
    password: Option<SecretString>,
    /// A pgpass file to read the password from (`PGPASSFILE`).
    pub passfile: Option<PathBuf>,
    /// `sslmode` (`disable`, `require`, `verify-full`...).
    pub sslmode: Option<String>,
    /// The database to connect to for `CREATE DATABASE` and renames during a restore
    /// (default `postgres`).
    pub maintenance_db: String,
}

impl PartialEq for PgConfig {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host
            && self.port == other.port
            && self.user == other.user
            && self.dbname == other.dbname
            && self.password() == other.password()
            && self.passfile == other.passfile
            && self.sslmode == other.sslmode
            && self.maintenance_db == other.maintenance_db
    }
}

impl Eq for PgConfig {}

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

/// What to do about a password that cut a URL short, in every message that may be about one.
const ENCODE_HINT: &str = "if the password holds '@', '/', '?', '#', '&' or '%', percent-encode the \
                           password (@ → %40, / → %2F, ? → %3F, # → %23, & → %26, % → %25)";

/// An error about a database URL. `cause` is always this module's own words: nothing of the URL
/// is ever quoted, since any part of it may hold bytes of a password that an unescaped
/// character moved into another part.
fn bad_url(cause: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, "parse", "database URL", cause)
}

/// Strict percent-decoding, as libpq does it: a `%` must be followed by two hex digits, and the
/// result must be UTF-8. `what` names the part in the error (never its text).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    bad_url(format!(
                        "in the {what}, a '%' is not followed by two hex digits; {ENCODE_HINT}"
                    ))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| bad_url(format!("the {what} is not UTF-8 once percent-decoded")))
}

/// `1st`, `2nd`, `3rd`, `4th`…
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
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

    /// Parse `postgres://user:password@host:port/dbname?sslmode=require&host=/run/postgresql`
    /// with the [`url`] crate (WHATWG rules: the last `@` of the authority ends the user
    /// information, so a password may hold a bare `@`), every part percent-decoded. Query
    /// parameters: `sslmode`, `host`, `port`, `user`, `dbname`, `passfile`, `password`.
    ///
    /// A password must percent-encode `/`, `?` and `#` (they end the authority) and `%`. An
    /// unescaped one moves the rest of the password into the port, the path or the query:
    /// such URLs are refused — a database name holding `@` or `/` above all, which is what an
    /// unescaped `@` followed by `/` makes, instead of silently taking part of the password for
    /// the host name. **Errors never quote the URL or any part of it**: every message is this
    /// crate's own words, and says how to percent-encode the password.
    pub fn from_url(text: &str) -> Result<Self> {
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| bad_url("must start with postgres:// or postgresql://"))?;
        let url = url::Url::parse(text).map_err(|e| {
            // The url crate's words name the problem, never the input ("invalid port number").
            bad_url(format!("it is not a valid URL ({e}); {ENCODE_HINT}"))
        })?;
        if url.fragment().is_some() {
            return Err(bad_url(format!(
                "it has a '#' part, which a database URL does not take; {ENCODE_HINT}"
            )));
        }
        // The path as written: the url crate would resolve `..` segments in it.
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        let path = rest[..end].find('/').map_or("", |i| &rest[i + 1..end]);
        if path.contains(['@', '/']) {
            return Err(bad_url(
                "the database name holds '@' or '/', as an unescaped '@' followed by '/' in the \
                 password makes (the part of the password before them would be taken for the \
                 host): percent-encode the password (@ → %40, / → %2F); a database name with \
                 '@' or '/' is written %40 and %2F too",
            ));
        }
        let mut cfg = Self::new(percent_decode(path, "database name")?);
        if !url.username().is_empty() {
            cfg.user = Some(percent_decode(url.username(), "user name")?);
        }
        if let Some(p) = url.password() {
            cfg.password = Some(SecretString::from(percent_decode(p, "password")?));
        }
        if let Some(h) = url.host_str().filter(|h| !h.is_empty()) {
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            cfg.host = Some(percent_decode(h, "host name")?);
        }
        cfg.port = url.port();
        let query = url.query().unwrap_or("");
        for (n, pair) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let place = format!("{} query parameter", ordinal(n + 1));
            let v = percent_decode(v, &format!("value of the {place}"))?;
            match k {
                "sslmode" => cfg.sslmode = Some(v),
                "host" => cfg.host = Some(v),
                "port" => {
                    cfg.port = Some(v.parse().map_err(|_| {
                        bad_url("the port parameter is not a number from 1 to 65535")
                    })?)
                }
                "user" => cfg.user = Some(v),
                "dbname" => cfg.dbname = v,
                "passfile" => cfg.passfile = Some(PathBuf::from(v)),
                "password" => cfg.password = Some(SecretString::from(v)),
                _ => {
                    // Its name is not shown: it may be part of a password cut at a '?' or '&'.
                    return Err(bad_url(format!(
                        "the {place} is not supported (supported: sslmode, host, port, user, \
                         dbname, passfile, password); {ENCODE_HINT}"
                    )));
                }
            }
        }
        // Not `validate`: its error shows the settings, and a URL's parts may hold password
        // bytes.
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(bad_url(problems.join("; ")));
        }
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
        cfg.password = var("PGPASSWORD").map(SecretString::from);
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

    /// Set the password (passed to the tools as `PGPASSWORD`; a `&str` or `String` converts).
    pub fn with_password(mut self, password: impl Into<SecretString>) -> Self {
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
            push("PGPASSWORD", p.expose_secret());
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
        self.password.as_ref().map(ExposeSecret::expose_secret)
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

    /// The password of every case, cut into pieces by the characters an unescaped password
    /// may hold; no piece may appear in an error.
    const PIECES: [&str; 4] = ["Qx7", "Kv2", "Jw9", "Zm4"];

    fn assert_no_piece(e: &Error, url: &str) {
        let shown = format!("{e} {e:?} {}", e.message());
        for piece in PIECES {
            assert!(!shown.contains(piece), "{url}: {piece} in {shown}");
        }
    }

    /// The cases: an unescaped `/`, `?`, `#` in the password cut the URL short; the
    /// error holds no byte of the password, and says how to encode it. An unescaped `&` is
    /// harmless in the user information, but not in a `password` parameter.
    #[test]
    fn unescaped_characters_in_a_password_are_refused_without_a_byte_of_it() {
        for url in [
            "postgres://app:Qx7/Kv2@db.example:5432/shop",
            "postgres://app:Qx7?Kv2@db.example/shop",
            "postgres://app:Qx7#Kv2@db.example/shop",
            "postgres://app:Qx7/Kv2?Jw9&Zm4@db.example/shop",
            "postgres://app:123/Qx7Kv2@db.example/shop",
            "postgres://app:123?Qx7Kv2=Jw9@db.example/shop",
            "postgres://app:123#Qx7Kv2@db.example/shop",
            "postgres://db.example/shop?password=Qx7&Kv2Jw9",
            "postgres://app:Qx7%zzKv2@db.example/shop",
        ] {
            let e = PgConfig::from_url(url).expect_err(url);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}");
            assert_no_piece(&e, url);
            assert!(e.to_string().contains("percent-encode"), "{url}: {e}");
        }
        let url = "postgres://app:Qx7%ffKv2@db.example/shop";
        let e = PgConfig::from_url(url).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        assert_no_piece(&e, url);
        // `&` and `@` alone need no escape in the user information.
        let c = PgConfig::from_url("postgres://app:Qx7&Kv2@db.example/shop").unwrap();
        assert_eq!(c.password(), Some("Qx7&Kv2"));
        assert_eq!(c.host.as_deref(), Some("db.example"));
        let c = PgConfig::from_url("postgres://app:Qx7@Kv2@db.example/shop").unwrap();
        assert_eq!(c.password(), Some("Qx7@Kv2"));
        assert_eq!(
            (c.host.as_deref(), c.dbname.as_str()),
            (Some("db.example"), "shop")
        );
        // Encoded, every character is fine.
        let c =
            PgConfig::from_url("postgres://app:Qx7%2FKv2%3F%23%40%26%25@db.example/shop").unwrap();
        assert_eq!(c.password(), Some("Qx7/Kv2?#@&%"));
    }

    /// An unescaped `@` followed by `/` would make part of the password the host name: the
    /// database name then holds `@` or `/`, and the URL is refused, saying what to encode.
    #[test]
    fn an_unescaped_at_followed_by_a_slash_never_becomes_the_host() {
        for url in [
            "postgres://app:Qx7@Kv2/Jw9@db.example/shop",
            "postgres://app:Qx7@Kv2/Jw9@db.example:5432/shop?sslmode=require",
            "postgres://app:Qx7@Kv2/@db.example/shop",
            "postgresql://app:Qx7@Kv2/Jw9/Zm4@db.example/shop",
        ] {
            let e = PgConfig::from_url(url).expect_err(url);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}");
            assert_no_piece(&e, url);
            assert!(
                e.to_string()
                    .contains("percent-encode the password (@ → %40, / → %2F)"),
                "{url}: {e}"
            );
        }
        // A database name with '@' or '/' is percent-encoded too.
        let c = PgConfig::from_url("postgres://app@db.example/a%40b%2Fc").unwrap();
        assert_eq!(c.dbname, "a@b/c");
    }

    proptest::proptest! {
        /// Any password made of the pieces and the characters that end or split a URL's parts:
        /// either it is read whole and the host, port and database stay what the URL says, or
        /// the URL is refused with no piece of the password in the error.
        #[test]
        fn a_password_is_read_whole_or_refused_without_a_byte_of_it(
            parts in proptest::collection::vec(
                (proptest::sample::select(&PIECES[..]),
                 proptest::sample::select(&["", "/", "?", "#", "&", "@", "%", ":", "=", "@/", "%2", "[", "]"][..])),
                1..5,
            ),
            query in proptest::bool::ANY,
        ) {
            let password: String = parts.iter().map(|(p, sep)| format!("{p}{sep}")).collect();
            let url = format!(
                "postgres://app:{password}@db.example:5432/shop{}",
                if query { "?sslmode=require" } else { "" }
            );
            match PgConfig::from_url(&url) {
                Ok(c) => {
                    proptest::prop_assert_eq!(c.host.as_deref(), Some("db.example"), "{}", url);
                    proptest::prop_assert_eq!(c.port, Some(5432), "{}", url);
                    proptest::prop_assert_eq!(c.dbname.as_str(), "shop", "{}", url);
                    proptest::prop_assert_eq!(c.user.as_deref(), Some("app"), "{}", url);
                    if !password.contains('%') {
                        proptest::prop_assert_eq!(c.password(), Some(password.as_str()), "{}", url);
                    }
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", url);
                    let shown = format!("{e} {e:?} {}", e.message());
                    for piece in PIECES {
                        proptest::prop_assert!(!shown.contains(piece), "{}: {} in {}", url, piece, shown);
                    }
                }
            }
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
