//! [`DockerTargetConfig`]: a `[[targets]]` entry with `kind = "docker"`, as this crate reads it
//! (the plan file keeps `id`, `endpoint` and `ssh` for itself and gives the rest here).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{Endpoint, Error, ErrorKind, Host, Result, SecretString, TargetId};
use serde::Deserialize;

use crate::DockerTarget;

/// The `kind` of a `[[targets]]` entry this crate builds.
pub const KIND: &str = "docker";

/// One container slot of a plan file; unknown keys are refused. Secrets never stand in the
/// plan: each secret environment variable names the deploying machine's environment variable
/// (`{ env = "SHOP_DB_PASSWORD" }`) or a file (`{ file = "/etc/deploy/shop-db" }`, read by
/// `deploy_core::secret`'s rules) it comes from; so does the registry password.
///
/// ```toml
/// [[targets]]
/// id = "blue"
/// endpoint = "http://10.0.0.5:8081"
/// kind = "docker"
/// app = "shop"
/// image = "registry.example.com/shop:{version}"
/// network = "host"
/// env = { PORT = "8081" }
/// secret_env = { DATABASE_PASSWORD = { env = "SHOP_DB_PASSWORD" } }
/// volumes = ["/srv/shop/uploads:/app/uploads"]
/// restart = "unless-stopped"
/// stop_timeout = "20s"
/// keep = 3
/// registry = { server = "registry.example.com", user = "deploy", password_env = "REGISTRY_PASSWORD" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DockerTargetConfig {
    /// The application's name (the first part of container names, the `deploy.app` label).
    pub app: String,
    /// The slot's name (default: the target id).
    #[serde(default)]
    pub slot: Option<String>,
    /// The image reference, `{version}` replaced (pulled when missing and no archive is given).
    #[serde(default)]
    pub image: Option<String>,
    /// The `docker` program on the host (default `docker`).
    #[serde(default)]
    pub docker: Option<String>,
    /// The engine's socket, given as `-H` (`unix:///run/docker.sock`).
    #[serde(default)]
    pub docker_host: Option<String>,
    /// The network mode (`host`).
    #[serde(default)]
    pub network: Option<String>,
    /// Published ports (`127.0.0.1:8081:8080`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Plain environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables and where each comes from.
    #[serde(default)]
    pub secret_env: BTreeMap<String, SecretSource>,
    /// Volumes (`/srv/data:/data:ro`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `no`, `on-failure[:N]` or `unless-stopped`.
    #[serde(default)]
    pub restart: Option<String>,
    /// Graceful stop time (whole seconds; default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    /// Containers kept (default 3, at least 2).
    #[serde(default)]
    pub keep: Option<usize>,
    /// Run with `--init` (default true).
    #[serde(default)]
    pub init: Option<bool>,
    /// The container's command instead of the image's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Where image archives and env files go on the host for a moment (default `/tmp`).
    #[serde(default)]
    pub temp_dir: Option<PathBuf>,
    /// Kill every docker command after this long.
    #[serde(default, with = "humantime_serde")]
    pub command_timeout: Option<Duration>,
    /// Log in before a pull.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
}

/// Where a secret comes from: exactly one of `env` and `file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SecretSource {
    /// An environment variable of the deploying machine.
    #[serde(default)]
    pub env: Option<String>,
    /// A file on the deploying machine.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `docker login` before a pull; the password from `password_env` or `password_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The registry (`registry.example.com`).
    pub server: String,
    /// The user.
    pub user: String,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// The secret `source` names, or why not; `key` names it in messages.
fn read_secret(
    key: &str,
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> std::result::Result<SecretString, String> {
    match (env, file) {
        (Some(var), None) => {
            deploy_core::secret::from_env(var).map_err(|why| format!("{key}: {why}"))
        }
        (None, Some(path)) => {
            deploy_core::secret::from_file(path).map_err(|why| format!("{key}: {why}"))
        }
        (Some(_), Some(_)) => Err(format!("{key}: give either env or file, not both")),
        (None, None) => Err(format!("{key}: say where it comes from (env or file)")),
    }
}

impl DockerTarget {
    /// The target `id` on `host` serving at `endpoint`, as `config` describes it; every problem
    /// (secrets that cannot be read, invalid values) is reported in one error.
    pub fn from_config(
        id: TargetId,
        host: Arc<dyn Host>,
        endpoint: Endpoint,
        config: DockerTargetConfig,
    ) -> Result<DockerTarget> {
        let mut problems = Vec::new();
        let mut b = DockerTarget::builder(id.clone(), host, config.app, endpoint);
        if let Some(s) = config.slot {
            b = b.slot(s);
        }
        if let Some(i) = config.image {
            b = b.image(i);
        }
        if let Some(d) = config.docker {
            b = b.docker_program(d);
        }
        if let Some(h) = config.docker_host {
            b = b.docker_host(h);
        }
        if let Some(n) = config.network {
            b = b.network(n);
        }
        for p in config.ports {
            b = b.port(p);
        }
        for (k, v) in config.env {
            b = b.env(k, v);
        }
        for (k, source) in config.secret_env {
            match read_secret(
                &format!("secret_env.{k}"),
                source.env.as_ref(),
                source.file.as_ref(),
            ) {
                Ok(secret) => b = b.secret_env(k, secret),
                Err(p) => problems.push(p),
            }
        }
        for v in config.volumes {
            b = b.volume(v);
        }
        for (k, v) in config.labels {
            b = b.label(k, v);
        }
        if let Some(r) = config.restart {
            b = b.restart(r);
        }
        if let Some(t) = config.stop_timeout {
            b = b.stop_timeout(t);
        }
        if let Some(k) = config.keep {
            b = b.keep(k);
        }
        if config.init == Some(false) {
            b = b.without_init();
        }
        if let Some(c) = config.command {
            b = b.command(c);
        }
        if let Some(d) = config.temp_dir {
            b = b.temp_dir(d);
        }
        if let Some(t) = config.command_timeout {
            b = b.command_timeout(t);
        }
        if let Some(r) = config.registry {
            match read_secret(
                "registry.password",
                r.password_env.as_ref(),
                r.password_file.as_ref(),
            ) {
                Ok(password) => b = b.registry_login(r.server, r.user, password),
                Err(p) => problems.push(p),
            }
        }
        match b.build() {
            Ok(t) if problems.is_empty() => Ok(t),
            Ok(_) => Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("docker target {id}"),
                problems.join("; "),
            )),
            Err(e) => {
                problems.insert(0, e.message().to_owned());
                Err(Error::new(
                    ErrorKind::InvalidInput,
                    "build",
                    format!("docker target {id}"),
                    problems.join("; "),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::LocalHost;
    use secrecy::ExposeSecret;

    fn parse(text: &str) -> std::result::Result<DockerTargetConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn build(config: DockerTargetConfig) -> Result<DockerTarget> {
        DockerTarget::from_config(
            TargetId::new("blue").unwrap(),
            Arc::new(LocalHost::new()),
            Endpoint::http("127.0.0.1", 8081),
            config,
        )
    }

    #[test]
    fn a_plan_section_builds_a_target_with_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db");
        std::fs::write(&secret, "s3cret\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let config = parse(&format!(
            r#"
            app = "shop"
            image = "registry.example.com/shop:{{version}}"
            network = "host"
            env = {{ PORT = "8081" }}
            secret_env = {{ DATABASE_PASSWORD = {{ file = "{}" }} }}
            volumes = ["/srv/shop/uploads:/app/uploads"]
            restart = "unless-stopped"
            stop_timeout = "20s"
            keep = 4
            registry = {{ server = "registry.example.com", user = "deploy", password_file = "{}" }}
            "#,
            secret.display(),
            secret.display()
        ))
        .unwrap();
        assert_eq!(config.stop_timeout, Some(Duration::from_secs(20)));
        let t = build(config).unwrap();
        assert_eq!(t.slot(), "blue");
        assert_eq!(
            t.image_for(&deploy_core::Version::new("2.0.0").unwrap())
                .as_deref(),
            Some("registry.example.com/shop:2.0.0")
        );
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(t.secret_values()[0].expose_secret(), "s3cret");
    }

    #[test]
    fn unknown_keys_and_unreadable_secrets_are_refused() {
        let e = parse("app = \"shop\"\nimages = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("images"), "{e}");
        let config = parse(
            r#"
            app = "shop"
            keep = 1
            secret_env = { A = { env = "DEPLOY_DOCKER_TEST_SURELY_UNSET_VAR" }, B = {} }
            "#,
        )
        .unwrap();
        let m = build(config).unwrap_err().to_string();
        for part in [
            "keep is 1",
            "secret_env.A",
            "DEPLOY_DOCKER_TEST_SURELY_UNSET_VAR",
            "secret_env.B: say where it comes from",
        ] {
            assert!(m.contains(part), "{part} in {m}");
        }
    }
}
