//! The plan file's `[state]` section with `kind = "postgres"` ([`STATE_KIND`]), and the one
//! constructor that builds a [`PgStateStore`] from it.

use std::env::VarError;
use std::path::PathBuf;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use super::PgStateStore;
use crate::config::{UrlKeys, connection_from};

/// The `kind` of a PostgreSQL `[state]` section.
pub const STATE_KIND: &str = "postgres";

/// The variable holding the state store's URL when the section names none.
pub const DEFAULT_STATE_URL_ENV: &str = "DEPLOY_STATE_URL";

/// `[state]` with `kind = "postgres"`: the team's database as the shared state store.
///
/// ```toml
/// [state]
/// kind = "postgres"
/// database_url_env = "DEPLOY_STATE_URL"   # the default
/// # database_url_file = "/run/secrets/deploy-state-url"   # or a file (0600/0400) with the URL
/// # url = "postgres://deploy@db.internal/deploy"          # or a URL without a password
/// schema = "deploy"                       # default
/// lease_ttl = "30s"                       # default; renewed every third of it
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PgStateStoreConfig {
    /// `database_url_env`: the variable holding the URL (default [`DEFAULT_STATE_URL_ENV`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_env: Option<String>,
    /// `database_url_file`: a file (readable by its owner only) holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// `url`: the URL itself, without a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `schema`: the schema of the store's tables (default `deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// `lease_ttl`: how long a lease lasts unless renewed (default 30 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_ttl: Option<Duration>,
    /// `root_cert`: PEM roots for `sslmode=verify-ca`/`verify-full` instead of Mozilla's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cert: Option<PathBuf>,
}

impl PgStateStore {
    /// The store a plan file's `[state]` section describes. Every problem is reported at once,
    /// naming its key, never with a byte of a password. Connects to nothing yet.
    pub fn from_config(config: PgStateStoreConfig) -> Result<PgStateStore> {
        from_config_with_env(config, |k| std::env::var(k))
    }
}

fn from_config_with_env(
    config: PgStateStoreConfig,
    env: impl Fn(&str) -> std::result::Result<String, VarError>,
) -> Result<PgStateStore> {
    let connection = connection_from(
        UrlKeys {
            url: config.url.as_ref(),
            database_url_file: config.database_url_file.as_ref(),
            database_url_env: config.database_url_env.as_ref(),
            default_env: DEFAULT_STATE_URL_ENV,
        },
        &env,
    )
    .map_err(|why| Error::new(ErrorKind::InvalidInput, "configure", "state store", why))?;
    let mut b = PgStateStore::builder(connection);
    if let Some(s) = config.schema {
        b = b.schema(s);
    }
    if let Some(t) = config.lease_ttl {
        b = b.lease_ttl(t);
    }
    if let Some(r) = config.root_cert {
        b = b.root_cert(r);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> PgStateStoreConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_section_builds_the_store_it_describes_without_showing_the_password() {
        let config = parse(serde_json::json!({
            "database_url_env": "TEAM_STATE",
            "schema": "deploys",
            "lease_ttl": "5s",
        }));
        let store = from_config_with_env(config, |k| match k {
            "TEAM_STATE" => Ok("postgres://deployer:s3cret@db.example:6543/ops".into()),
            _ => Err(VarError::NotPresent),
        })
        .unwrap();
        assert_eq!(store.schema(), "deploys");
        assert_eq!(store.lease_ttl(), Duration::from_secs(5));
        let shown = format!(
            "{store:?} {}",
            deploy_core::state::StateStore::location(&store)
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
    }

    #[test]
    fn a_password_in_url_and_unknown_keys_are_refused() {
        let e = from_config_with_env(
            parse(serde_json::json!({ "url": "postgres://a:pw@h/db" })),
            |_| Err(VarError::NotPresent),
        )
        .unwrap_err();
        assert!(e.to_string().contains("url: holds a password"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(
            serde_json::from_value::<PgStateStoreConfig>(serde_json::json!({ "ttl": "5s" }))
                .is_err()
        );
    }
}
