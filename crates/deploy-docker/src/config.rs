//! [`DockerTargetConfig`]: a `[[targets]]` entry with `kind = "docker"`, as this crate reads it
//! (the plan file keeps `id`, `endpoint` and `ssh` for itself and gives the rest here).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{Endpoint, Error, ErrorKind, Host, Result, SecretString, TargetId};
use serde::Deserialize;

use crate::{DockerTarget, DockerTargetBuilder};

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
    /// Where image archives go on the host for a moment (default `/tmp`).
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

/// The secret `env` or `file` names, or why not.
fn read_secret(
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> std::result::Result<SecretString, String> {
    match (env, file) {
        (Some(var), None) => deploy_core::secret::from_env(var),
        (None, Some(path)) => deploy_core::secret::from_file(path),
        (Some(_), Some(_)) => Err("give either env or file, not both".to_owned()),
        (None, None) => Err("say where it comes from (env or file)".to_owned()),
    }
}

/// One field group of a [`DockerTargetConfig`] applied to a builder.
type Apply = Box<dyn Fn(DockerTargetBuilder) -> DockerTargetBuilder>;

impl DockerTarget {
    /// The target `id` on `host` serving at `endpoint`, as `config` describes it; every problem
    /// (secrets that cannot be read, invalid values) is reported in one error.
    pub fn from_config(
        id: TargetId,
        host: Arc<dyn Host>,
        endpoint: Endpoint,
        config: DockerTargetConfig,
    ) -> Result<DockerTarget> {
        Self::from_config_checked(id.clone(), host, endpoint, config).map_err(|problems| {
            let parts: Vec<String> = problems
                .into_iter()
                .map(|(key, message)| {
                    if key.is_empty() {
                        message
                    } else {
                        format!("{key}: {message}")
                    }
                })
                .collect();
            Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("docker target {id}"),
                parts.join("; "),
            )
        })
    }

    /// [`DockerTarget::from_config`], with every problem at the key of `config` it is about
    /// (`image`, `secret_env.DATABASE_PASSWORD`, `keep`; empty for one about several keys), so
    /// that a plan file can name `targets[1].image`. Each key is checked on its own against
    /// the builder's rules, then the whole target is built.
    pub fn from_config_checked(
        id: TargetId,
        host: Arc<dyn Host>,
        endpoint: Endpoint,
        config: DockerTargetConfig,
    ) -> std::result::Result<DockerTarget, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut steps: Vec<(String, Apply)> = Vec::new();
        if let Some(s) = config.slot {
            steps.push(("slot".into(), Box::new(move |b| b.slot(s.clone()))));
        }
        if let Some(i) = config.image {
            steps.push(("image".into(), Box::new(move |b| b.image(i.clone()))));
        }
        if let Some(d) = config.docker {
            steps.push((
                "docker".into(),
                Box::new(move |b| b.docker_program(d.clone())),
            ));
        }
        if let Some(h) = config.docker_host {
            steps.push((
                "docker_host".into(),
                Box::new(move |b| b.docker_host(h.clone())),
            ));
        }
        if let Some(n) = config.network {
            steps.push(("network".into(), Box::new(move |b| b.network(n.clone()))));
        }
        let ports = config.ports;
        steps.push((
            "ports".into(),
            Box::new(move |b| ports.iter().fold(b, |b, p| b.port(p.clone()))),
        ));
        let env = config.env;
        steps.push((
            "env".into(),
            Box::new(move |b| env.iter().fold(b, |b, (k, v)| b.env(k.clone(), v.clone()))),
        ));
        for (k, source) in config.secret_env {
            let key = format!("secret_env.{k}");
            match read_secret(source.env.as_ref(), source.file.as_ref()) {
                Ok(secret) => steps.push((
                    key,
                    Box::new(move |b| b.secret_env(k.clone(), secret.clone())),
                )),
                Err(p) => problems.push((key, p)),
            }
        }
        let volumes = config.volumes;
        steps.push((
            "volumes".into(),
            Box::new(move |b| volumes.iter().fold(b, |b, v| b.volume(v.clone()))),
        ));
        let labels = config.labels;
        steps.push((
            "labels".into(),
            Box::new(move |b| {
                labels
                    .iter()
                    .fold(b, |b, (k, v)| b.label(k.clone(), v.clone()))
            }),
        ));
        if let Some(r) = config.restart {
            steps.push(("restart".into(), Box::new(move |b| b.restart(r.clone()))));
        }
        if let Some(t) = config.stop_timeout {
            steps.push(("stop_timeout".into(), Box::new(move |b| b.stop_timeout(t))));
        }
        if let Some(k) = config.keep {
            steps.push(("keep".into(), Box::new(move |b| b.keep(k))));
        }
        if config.init == Some(false) {
            steps.push(("init".into(), Box::new(|b| b.without_init())));
        }
        if let Some(c) = config.command {
            steps.push(("command".into(), Box::new(move |b| b.command(c.clone()))));
        }
        if let Some(d) = config.temp_dir {
            steps.push(("temp_dir".into(), Box::new(move |b| b.temp_dir(d.clone()))));
        }
        if let Some(t) = config.command_timeout {
            steps.push((
                "command_timeout".into(),
                Box::new(move |b| b.command_timeout(t)),
            ));
        }
        if let Some(r) = config.registry {
            match read_secret(r.password_env.as_ref(), r.password_file.as_ref()) {
                Ok(password) => steps.push((
                    "registry".into(),
                    Box::new(move |b| {
                        b.registry_login(r.server.clone(), r.user.clone(), password.clone())
                    }),
                )),
                Err(p) => problems.push(("registry.password".into(), p)),
            }
        }
        // Each key alone over a target that is valid without it (a placeholder app and slot),
        // so that a problem is reported at its own key.
        let base = || {
            DockerTarget::builder(id.clone(), Arc::clone(&host), "app", endpoint.clone())
                .slot("slot")
        };
        let app = config.app;
        if let Err(e) =
            DockerTarget::builder(id.clone(), Arc::clone(&host), app.clone(), endpoint.clone())
                .slot("slot")
                .build()
        {
            problems.push(("app".into(), e.message().to_owned()));
        }
        for (key, apply) in &steps {
            if let Err(e) = apply(base()).build() {
                problems.push((key.clone(), e.message().to_owned()));
            }
        }
        let whole = steps.iter().fold(
            DockerTarget::builder(id.clone(), Arc::clone(&host), app, endpoint.clone()),
            |b, (_, apply)| apply(b),
        );
        match whole.build() {
            Ok(t) if problems.is_empty() => Ok(t),
            Ok(_) => Err(problems),
            Err(e) => {
                // What no key alone showed: a rule across keys (a name in env and secret_env),
                // or the slot taken from the target id.
                if problems.is_empty() {
                    problems.push((String::new(), e.message().to_owned()));
                }
                Err(problems)
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

    #[test]
    fn every_problem_is_reported_at_its_own_key() {
        let config = parse(
            r#"
            app = "-shop"
            image = "-x"
            keep = 1
            restart = "always"
            stop_timeout = "1500ms"
            labels = { "deploy.app" = "x" }
            secret_env = { A = { env = "DEPLOY_DOCKER_TEST_SURELY_UNSET_VAR" } }
            "#,
        )
        .unwrap();
        let problems = DockerTarget::from_config_checked(
            TargetId::new("blue").unwrap(),
            Arc::new(LocalHost::new()),
            Endpoint::http("127.0.0.1", 8081),
            config,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "secret_env.A",
                "app",
                "image",
                "labels",
                "restart",
                "stop_timeout",
                "keep"
            ],
            "{problems:?}"
        );
        for (key, message) in &problems {
            assert!(
                !message.contains("; "),
                "{key}: one problem only: {message}"
            );
        }
    }
}
