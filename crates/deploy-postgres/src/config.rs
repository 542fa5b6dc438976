//! The plan-file section of this crate (`[migrations]` with `kind = "postgres"`) and the one
//! constructor that builds a runner from it, [`PgMigrationRunner::from_config`].

use std::env::VarError;
use std::fmt;
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, ExposeSecret, Result};
use serde::{Deserialize, Serialize};

use crate::connection::PgConfig;
use crate::runner::{PgMigrationRunner, RestoreMode};

/// The `kind` that names this crate's runner in a plan file's `[migrations]` section.
pub const KIND: &str = "postgres";

/// The environment variable read for the database URL when `database_url_env` is not given.
const DEFAULT_URL_ENV: &str = "DATABASE_URL";

/// A plan file's `[migrations]` section with `kind = "postgres"` (the `kind` key itself is the
/// plan file's, and is not part of this type). Unknown keys are refused.
///
/// ```toml
/// [migrations]
/// kind = "postgres"
/// database_url_env = "DATABASE_URL"   # or database_url_file = "/run/secrets/shop-db-url"
/// dir = "/srv/shop/migrations"
/// backup_dir = "/var/backups/shop"
/// keep_backups = 10
/// history_table = "schema_version"
/// restore_mode = "swap"
/// ```
///
/// Build the runner with [`PgMigrationRunner::from_config`]. `Debug` never shows the password
/// of `url`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PgMigrationRunnerConfig {
    /// `database_url_env`: the name of the environment variable holding the database URL
    /// (default `DATABASE_URL`, when neither `url` nor `database_url_file` is given), read when
    /// the runner is built. When that variable is not set, the `PG*` variables are used
    /// ([`PgConfig::from_env`]). Not together with `url` or `database_url_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_env: Option<String>,
    /// `database_url_file`: a file holding the database URL (surrounding whitespace and the
    /// trailing newline dropped), read when the runner is built. It must be readable by its
    /// owner only (mode 0600 or 0400): a file that group or others may read is refused, since
    /// the URL holds the password. At most 64 KiB. Not together with `url` or
    /// `database_url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// `url`: the database URL itself (`postgres://app@127.0.0.1:5432/shop`), only for a
    /// database reached without a password (peer or trust authentication, or a `passfile`
    /// parameter). A URL holding a password is an error, not a warning: a plan file is
    /// committed, copied and printed, and a password once written there has leaked whether or
    /// not a warning was read; put the URL in the file `database_url_file` names or the
    /// variable `database_url_env` names. Not together with either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `dir`: the migrations folder, on this machine (required).
    pub dir: PathBuf,
    /// `backup_dir`: where backups are written, on the database host (needed for backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<PathBuf>,
    /// `keep_backups`: how many backups of this database to keep (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_backups: Option<usize>,
    /// `history_table`: the history table, optionally schema-qualified (default
    /// `schema_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_table: Option<String>,
    /// `bin_dir`: the folder holding `psql`, `pg_dump` and `pg_restore`, taken as given
    /// (default: the folder on the host whose major version fits the server, see
    /// [`PgMigrationRunner::tools`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// `restore_mode`: how a revert restores a backup, `swap` (default: into a fresh database,
    /// swapped in once verified) or `in_place` (drop and recreate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_mode: Option<RestoreMode>,
    /// `allow_data_loss`: let a revert run down migrations that lose data (a dropped column's
    /// values) when no backup is given (default `false`: such a revert needs the backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_data_loss: Option<bool>,
    /// `keep_replaced_database`: after a swap restore asked for directly, keep the database it
    /// replaced as `<db>_replaced_<stamp>` (default `false`: dropped). A revert's restore always
    /// keeps the failed database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_replaced_database: Option<bool>,
}

impl fmt::Debug for PgMigrationRunnerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgMigrationRunnerConfig")
            .field("database_url_env", &self.database_url_env)
            .field("database_url_file", &self.database_url_file)
            .field("url", &self.url.as_deref().map(deploy_core::redact::url))
            .field("dir", &self.dir)
            .field("backup_dir", &self.backup_dir)
            .field("keep_backups", &self.keep_backups)
            .field("history_table", &self.history_table)
            .field("bin_dir", &self.bin_dir)
            .field("restore_mode", &self.restore_mode)
            .field("allow_data_loss", &self.allow_data_loss)
            .field("keep_replaced_database", &self.keep_replaced_database)
            .finish()
    }
}

impl PgMigrationRunnerConfig {
    /// A configuration for the migrations in `dir`, every other key left at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            database_url_env: None,
            database_url_file: None,
            url: None,
            dir: dir.into(),
            backup_dir: None,
            keep_backups: None,
            history_table: None,
            bin_dir: None,
            restore_mode: None,
            allow_data_loss: None,
            keep_replaced_database: None,
        }
    }
}

impl PgMigrationRunner {
    /// The runner a plan file's `[migrations]` section describes, on this machine
    /// ([`LocalHost`](deploy_core::LocalHost)): the database from `url`, else from the URL in
    /// the file `database_url_file` names, else from the URL in the variable
    /// `database_url_env` names (`DATABASE_URL` by default), else from the `PG*` variables.
    /// Every problem (two of `url`, `database_url_file` and `database_url_env` given, a URL
    /// that does not parse, a password in `url`, a URL file others may read, `keep_backups =
    /// 0`, a bad `history_table`, ...) is reported at once, in one `InvalidInput` error naming
    /// each key. No part of a URL appears in an error. Nothing connects yet.
    pub fn from_config(config: PgMigrationRunnerConfig) -> Result<PgMigrationRunner> {
        from_config_with_env(config, |name| std::env::var(name))
    }
}

/// [`PgMigrationRunner::from_config`] with the environment read through `env`.
fn from_config_with_env(
    config: PgMigrationRunnerConfig,
    env: impl Fn(&str) -> std::result::Result<String, VarError>,
) -> Result<PgMigrationRunner> {
    let mut problems = Vec::new();
    let connection = match connection(&config, &env) {
        Ok(c) => Some(c),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let known = connection.is_some();
    // Without usable connection settings the other keys are still checked, on stand-in
    // settings whose own checks pass.
    let mut b = PgMigrationRunner::builder(
        connection.unwrap_or_else(|| PgConfig::new("postgres")),
        config.dir,
    );
    if let Some(d) = config.backup_dir {
        b = b.backup_dir(d);
    }
    if let Some(n) = config.keep_backups {
        b = b.keep_backups(n);
    }
    if let Some(t) = config.history_table {
        b = b.history_table(t);
    }
    if let Some(d) = config.bin_dir {
        b = b.bin_dir(d);
    }
    if let Some(allow) = config.allow_data_loss {
        b = b.allow_data_loss(allow);
    }
    if let Some(keep) = config.keep_replaced_database {
        b = b.keep_replaced_database(keep);
    }
    if let Some(m) = config.restore_mode {
        b = b.restore_mode(m);
    }
    if known {
        return b.build();
    }
    problems.extend(b.problems());
    Err(Error::new(
        ErrorKind::InvalidInput,
        "configure",
        "PostgreSQL migration runner",
        problems.join("; "),
    ))
}

/// The connection settings the section names, or the problem, starting with its key. Only our
/// words and the URL parser's (which never repeat the URL) are used, so no password shows.
fn connection(
    config: &PgMigrationRunnerConfig,
    env: &impl Fn(&str) -> std::result::Result<String, VarError>,
) -> std::result::Result<PgConfig, String> {
    connection_from(
        UrlKeys {
            url: config.url.as_ref(),
            database_url_file: config.database_url_file.as_ref(),
            database_url_env: config.database_url_env.as_ref(),
            default_env: DEFAULT_URL_ENV,
        },
        env,
    )
}

/// Where a section says its database URL is: `url`, `database_url_file` or
/// `database_url_env` (at most one), else the variable `default_env`, else the `PG*` variables.
pub(crate) struct UrlKeys<'a> {
    pub(crate) url: Option<&'a String>,
    pub(crate) database_url_file: Option<&'a PathBuf>,
    pub(crate) database_url_env: Option<&'a String>,
    pub(crate) default_env: &'a str,
}

/// The connection settings `keys` name; an error names the key at fault, never a byte of a
/// password.
pub(crate) fn connection_from(
    keys: UrlKeys<'_>,
    env: &impl Fn(&str) -> std::result::Result<String, VarError>,
) -> std::result::Result<PgConfig, String> {
    if let Some(file) = &keys.database_url_file {
        if keys.url.is_some() {
            return Err(format!(
                "url: give url or database_url_file ({}), not both",
                file.display()
            ));
        }
        if let Some(var) = &keys.database_url_env {
            return Err(format!(
                "database_url_file: give database_url_file ({}) or database_url_env ({var}), \
                 not both",
                file.display()
            ));
        }
        let url = deploy_core::secret::from_file(file)
            .map_err(|why| format!("database_url_file: {why}"))?;
        return PgConfig::from_url(url.expose_secret()).map_err(|e| {
            format!(
                "database_url_file: the URL in {}: {}",
                file.display(),
                e.message()
            )
        });
    }
    if let Some(url) = &keys.url {
        if let Some(var) = &keys.database_url_env {
            return Err(format!(
                "url: give url or database_url_env ({var}), not both"
            ));
        }
        let c = PgConfig::from_url(url).map_err(|e| format!("url: {}", e.message()))?;
        if c.has_password() {
            return Err(
                "url: holds a password, and a plan file is no place for one; put the \
                        URL in a file readable by its owner only and name it with \
                        database_url_file, or in an environment variable and name it with \
                        database_url_env"
                    .to_owned(),
            );
        }
        return Ok(c);
    }
    let var = keys
        .database_url_env
        .map(String::as_str)
        .unwrap_or(keys.default_env);
    match env(var) {
        Ok(url) => PgConfig::from_url(&url)
            .map_err(|e| format!("database_url_env: the URL in {var}: {}", e.message())),
        Err(VarError::NotUnicode(_)) => Err(format!(
            "database_url_env: the environment variable {var} is not valid UTF-8"
        )),
        Err(VarError::NotPresent) => PgConfig::from_env_with(|k| env(k).ok()).map_err(|e| {
            format!(
                "database_url_env: {var} is not set, and the PG* variables do not name a \
                     database: {}",
                e.message()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(json: serde_json::Value) -> PgMigrationRunnerConfig {
        serde_json::from_value(json).expect("the section parses")
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> std::result::Result<String, VarError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned().ok_or(VarError::NotPresent)
    }

    fn error(config: PgMigrationRunnerConfig, vars: &[(&str, &str)]) -> Error {
        from_config_with_env(config, env(vars)).expect_err("the section is refused")
    }

    #[test]
    fn a_section_with_every_key_builds_the_runner_it_describes() {
        let config = parse(serde_json::json!({
            "database_url_env": "SHOP_DB",
            "dir": "/srv/shop/migrations",
            "backup_dir": "/var/backups/shop",
            "keep_backups": 10,
            "history_table": "ops.migrations",
            "bin_dir": "/usr/lib/postgresql/15/bin",
            "restore_mode": "in_place",
            "allow_data_loss": true,
            "keep_replaced_database": true,
        }));
        assert_eq!(config.restore_mode, Some(RestoreMode::InPlace));
        let runner = from_config_with_env(
            config,
            env(&[("SHOP_DB", "postgres://app:s3cret@db.example:6543/shop")]),
        )
        .unwrap();
        let c = runner.config();
        assert_eq!(
            (
                c.host.as_deref(),
                c.port,
                c.user.as_deref(),
                c.dbname.as_str()
            ),
            (Some("db.example"), Some(6543), Some("app"), "shop")
        );
        assert!(c.has_password(), "the password came from the variable");
        let shown = format!("{runner:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("ops.migrations"), "{shown}");
        assert!(shown.contains("/var/backups/shop"), "{shown}");
        assert!(shown.contains("keep_backups: 10"), "{shown}");
        assert!(shown.contains("InPlace"), "{shown}");
        assert!(shown.contains("/usr/lib/postgresql/15/bin"), "{shown}");
        assert!(shown.contains("allow_data_loss: true"), "{shown}");
        assert!(shown.contains("keep_replaced_database: true"), "{shown}");
    }

    #[test]
    fn a_url_without_a_password_is_taken_as_is() {
        let config = parse(serde_json::json!({
            "url": "postgres://app@127.0.0.1:5432/shop",
            "dir": "/srv/migrations",
        }));
        let runner = from_config_with_env(config, env(&[])).unwrap();
        assert_eq!(
            runner.config().to_string(),
            "postgres://app@127.0.0.1:5432/shop"
        );
    }

    #[test]
    fn database_url_is_the_default_variable_and_pg_variables_the_fallback() {
        let config = PgMigrationRunnerConfig::new("/srv/migrations");
        let runner = from_config_with_env(
            config.clone(),
            env(&[("DATABASE_URL", "postgres://u@h/from_url")]),
        )
        .unwrap();
        assert_eq!(runner.config().dbname, "from_url");
        let runner = from_config_with_env(
            config.clone(),
            env(&[
                ("PGDATABASE", "from_pg"),
                ("PGHOST", "pg.example"),
                ("PGPORT", "5433"),
            ]),
        )
        .unwrap();
        let c = runner.config();
        assert_eq!(
            (c.dbname.as_str(), c.host.as_deref(), c.port),
            ("from_pg", Some("pg.example"), Some(5433))
        );
        let e = error(config, &[]);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains(
                "database_url_env: DATABASE_URL is not set, and the PG* variables do not name a \
                 database: PGDATABASE is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn url_and_database_url_env_are_exclusive() {
        let mut config = PgMigrationRunnerConfig::new("/srv/migrations");
        config.url = Some("postgres://app@127.0.0.1:5432/shop".into());
        config.database_url_env = Some("DATABASE_URL".into());
        let e = error(config, &[("DATABASE_URL", "postgres://u@h/db")]);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "configure PostgreSQL migration runner: url: give url or database_url_env \
             (DATABASE_URL), not both"
        );
    }

    #[test]
    fn no_password_is_ever_shown_and_a_password_in_url_is_refused() {
        let mut config = PgMigrationRunnerConfig::new("/srv/migrations");
        config.url = Some("postgres://app:hunter2@127.0.0.1:5432/shop".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = error(config.clone(), &[]);
        assert!(e.to_string().contains("url: holds a password"), "{e}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");

        for bad in [
            "mysql://app:hunter2@h/db",
            "postgres://app:hunter2@h:port/db",
            "postgres://app:hunter2@h/db?bogus=1",
        ] {
            config.url = Some(bad.into());
            let e = error(config.clone(), &[]);
            assert!(e.to_string().contains(": url: "), "{e}");
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
            let mut from_env = PgMigrationRunnerConfig::new("/srv/migrations");
            from_env.database_url_env = Some("SHOP_DB".into());
            let e = error(from_env, &[("SHOP_DB", bad)]);
            assert!(
                e.to_string()
                    .contains("database_url_env: the URL in SHOP_DB: "),
                "{e}"
            );
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_key() {
        let config = parse(serde_json::json!({
            "url": "mysql://x",
            "dir": "/srv/migrations",
            "keep_backups": 0,
            "history_table": "Bad Table",
        }));
        let text = error(config, &[]).to_string();
        for key in ["url: ", "keep_backups: ", "history_table \"Bad Table\": "] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        // With a usable URL, the builder's own error names the keys too.
        let config = parse(serde_json::json!({
            "url": "postgres://app@127.0.0.1/shop",
            "dir": "/srv/migrations",
            "keep_backups": 0,
        }));
        let text = error(config, &[]).to_string();
        assert!(text.contains("keep_backups: must be at least 1"), "{text}");
    }

    #[test]
    fn unknown_keys_and_a_kind_key_are_refused() {
        for key in ["kind", "password", "keep_backup"] {
            let e = serde_json::from_value::<PgMigrationRunnerConfig>(serde_json::json!({
                "dir": "/srv/migrations",
                key: "x",
            }))
            .unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{key}: {e}");
        }
        let e = serde_json::from_value::<PgMigrationRunnerConfig>(serde_json::json!({
            "url": "postgres://app@h/db",
        }))
        .unwrap_err();
        assert!(e.to_string().contains("missing field `dir`"), "{e}");
        let e = serde_json::from_value::<PgMigrationRunnerConfig>(serde_json::json!({
            "dir": "/srv/migrations",
            "restore_mode": "sideways",
        }))
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    /// `database_url_file`: a private file's URL is used; a file others may read, a missing or
    /// oversized one, and a file given with another source are refused, naming the key and
    /// the file, never its content.
    #[test]
    fn a_url_file_is_read_when_private_and_refused_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-url");
        std::fs::write(&file, "postgres://app:canary-pw-9Qz@db.example:6543/shop\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = parse(serde_json::json!({
            "database_url_file": file,
            "dir": "/srv/migrations",
        }));
        let runner = from_config_with_env(config.clone(), env(&[])).unwrap();
        let c = runner.config();
        assert_eq!(
            (c.host.as_deref(), c.port, c.dbname.as_str()),
            (Some("db.example"), Some(6543), "shop")
        );
        assert!(c.has_password());
        assert!(!format!("{runner:?} {config:?}").contains("canary"));

        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = error(config.clone(), &[]);
            let msg = format!("{e} {e:?}");
            assert!(
                msg.contains("database_url_file")
                    && msg.contains(&file.display().to_string())
                    && msg.contains(&format!("{mode:04o}"))
                    && msg.contains("chmod 600"),
                "{msg}"
            );
            assert!(!msg.contains("canary"), "{msg}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(from_config_with_env(config.clone(), env(&[])).is_ok());

        // A URL in the file that does not parse: the key and the file, not a byte of the URL.
        let bad = dir.path().join("bad-url");
        std::fs::write(&bad, "postgres://app:canary/pw@db.example/shop").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = config.clone();
        c.database_url_file = Some(bad.clone());
        let e = error(c, &[]);
        let msg = format!("{e} {e:?}");
        assert!(
            msg.contains(&format!("database_url_file: the URL in {}", bad.display())),
            "{msg}"
        );
        assert!(
            !msg.contains("canary") && !msg.contains("db.example"),
            "{msg}"
        );

        // Oversized, missing, or given with another source.
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(70 * 1024)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = config.clone();
        c.database_url_file = Some(big);
        assert!(error(c, &[]).to_string().contains("limit of 64 KiB"));
        let mut c = config.clone();
        c.database_url_file = Some(dir.path().join("missing"));
        assert!(error(c, &[]).to_string().contains("cannot open it"));
        let mut c = config.clone();
        c.database_url_env = Some("SHOP_DB".into());
        assert!(error(c, &[]).to_string().contains("not both"));
        let mut c = config;
        c.url = Some("postgres://app@h/db".into());
        assert!(error(c, &[]).to_string().contains("not both"));
    }

    #[test]
    fn a_config_round_trips_through_serde() {
        let config = parse(serde_json::json!({
            "database_url_env": "SHOP_DB",
            "dir": "/srv/shop/migrations",
            "keep_backups": 3,
            "restore_mode": "swap",
        }));
        let again: PgMigrationRunnerConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }
}
