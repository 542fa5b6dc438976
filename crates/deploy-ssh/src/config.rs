//! [`SshHostBuilder`] and [`SshHostConfig`]: where to connect, as whom, and how much to trust.

use std::env::VarError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, Result, SecretString};
use serde::{Deserialize, Serialize};

use crate::host::SshHost;
use crate::known_hosts::HostKeyPolicy;

/// One way to authenticate, tried in the order added.
#[derive(Clone)]
pub(crate) enum Auth {
    /// A private key file (OpenSSH or PEM; ed25519, RSA, ECDSA), with its passphrase if any.
    KeyFile {
        path: PathBuf,
        passphrase: Option<SecretString>,
    },
    /// The keys of a running ssh-agent: the socket given, or `$SSH_AUTH_SOCK`.
    Agent { socket: Option<PathBuf> },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyFile { path, passphrase } => f
                .debug_struct("KeyFile")
                .field("path", path)
                // Never the passphrase itself.
                .field("passphrase", &passphrase.as_ref().map(|_| "[REDACTED]"))
                .finish(),
            Self::Agent { socket } => f.debug_struct("Agent").field("socket", socket).finish(),
        }
    }
}

/// Everything an [`SshHost`] needs; validated by [`SshHostBuilder::build`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) auth: Vec<Auth>,
    pub(crate) known_hosts: PathBuf,
    pub(crate) policy: HostKeyPolicy,
    pub(crate) hash_known_hosts: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) max_channels: usize,
    pub(crate) max_read: u64,
    pub(crate) sftp: bool,
}

/// Builds an [`SshHost`]; see [`SshHost::builder`].
///
/// Defaults: port 22, user `$USER` (else `root`), no authentication method (add at least one),
/// `~/.ssh/known_hosts` with [`HostKeyPolicy::Strict`], connect timeout 10 s, no command
/// timeout (commands still honour their own), keep-alive every 15 s (3 unanswered close the
/// connection), at most 8 channels at once on the connection (below OpenSSH's `MaxSessions 10`),
/// files read whole ([`Host::read_file`](deploy_core::Host::read_file),
/// [`SshHost::download`]) at most 64 MiB, file operations over SFTP when the server offers it.
/// `Debug` never shows a passphrase.
#[derive(Debug, Clone)]
pub struct SshHostBuilder {
    config: Settings,
}

impl SshHostBuilder {
    pub(crate) fn new(host: impl Into<String>) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self {
            config: Settings {
                host: host.into(),
                port: 22,
                user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
                auth: Vec::new(),
                known_hosts: home
                    .unwrap_or_else(|| PathBuf::from("/root"))
                    .join(".ssh/known_hosts"),
                policy: HostKeyPolicy::Strict,
                hash_known_hosts: false,
                connect_timeout: Duration::from_secs(10),
                command_timeout: None,
                keepalive: Some(Duration::from_secs(15)),
                max_channels: 8,
                max_read: SshHost::DEFAULT_MAX_READ,
                sftp: true,
            },
        }
    }

    /// The TCP port (default 22).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// The user to log in as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.config.user = user.into();
        self
    }

    /// Authenticate with the private key in `path` (not encrypted).
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.auth.push(Auth::KeyFile {
            path: path.into(),
            passphrase: None,
        });
        self
    }

    /// Authenticate with the private key in `path`, encrypted with `passphrase` (kept as a
    /// [`SecretString`]: a `&str` or `String` converts).
    pub fn key_file_with_passphrase(
        mut self,
        path: impl Into<PathBuf>,
        passphrase: impl Into<SecretString>,
    ) -> Self {
        self.config.auth.push(Auth::KeyFile {
            path: path.into(),
            passphrase: Some(passphrase.into()),
        });
        self
    }

    /// Authenticate with the keys of the ssh-agent at `$SSH_AUTH_SOCK`.
    pub fn agent(mut self) -> Self {
        self.config.auth.push(Auth::Agent { socket: None });
        self
    }

    /// Authenticate with the keys of the ssh-agent listening on `socket`.
    pub fn agent_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.config.auth.push(Auth::Agent {
            socket: Some(socket.into()),
        });
        self
    }

    /// The `known_hosts` file to verify the host key against.
    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.known_hosts = path.into();
        self
    }

    /// What to do with a host that is not in the `known_hosts` file.
    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Write keys learnt under [`HostKeyPolicy::AcceptNew`] as hashed entries (`|1|…`), as
    /// OpenSSH's `HashKnownHosts yes` does.
    pub fn hash_known_hosts(mut self, hash: bool) -> Self {
        self.config.hash_known_hosts = hash;
        self
    }

    /// Give up connecting (TCP, key exchange and authentication) after this long.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Kill commands that run longer than this when they carry no timeout of their own; also
    /// the longest an SFTP request waits for its answer (see [`sftp`](Self::sftp)).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = Some(timeout);
        self
    }

    /// Send a keep-alive after this long without traffic (`None`: never).
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.config.keepalive = interval;
        self
    }

    /// At most this many channels (commands, transfers) at once on the connection.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.config.max_channels = n;
        self
    }

    /// Read at most this many bytes of a file ([`Host::read_file`](deploy_core::Host::read_file),
    /// [`SshHost::download`]; default [`SshHost::DEFAULT_MAX_READ`], 64 MiB). A longer file is
    /// refused with an error naming its path and this limit, after at most one byte more than
    /// the limit crossed the connection.
    pub fn max_read(mut self, bytes: u64) -> Self {
        self.config.max_read = bytes;
        self
    }

    /// Whether file operations (inspect, read, write, upload, rename, symlink, list, create a
    /// directory, remove a file) go over one SFTP channel kept open on the connection (default
    /// `true`): each is then one request, where an exec channel costs the host a new login
    /// shell and a program. Used only when the server offers the `sftp` subsystem with
    /// OpenSSH's `posix-rename@openssh.com` extension and `max_channels` is at least 2 (the
    /// channel takes one of them); otherwise, and with `false`, they run as commands
    /// (`mv -T`, `ln -T`, `find`, `cat`), as they do for answers SFTP cannot word precisely.
    /// Each SFTP request waits at most the [`command_timeout`](Self::command_timeout) when
    /// one is set, else as long as the connection lives.
    pub fn sftp(mut self, on: bool) -> Self {
        self.config.sftp = on;
        self
    }

    /// Check the configuration (reporting every problem at once) and make the host. Nothing
    /// connects yet: the first command does.
    pub fn build(self) -> Result<SshHost> {
        self.build_with(Vec::new())
    }

    /// `problems` found before (in a [`SshHostConfig`]) and the builder's own, in one error.
    fn build_with(self, mut problems: Vec<String>) -> Result<SshHost> {
        let c = &self.config;
        if c.host.is_empty() || c.host.chars().any(|ch| ch.is_whitespace() || ch == '@') {
            problems.push(format!("bad host name {:?}", c.host));
        }
        if c.port == 0 {
            problems.push("port 0".to_owned());
        }
        if c.user.is_empty() || c.user.chars().any(char::is_whitespace) {
            problems.push(format!("bad user name {:?}", c.user));
        }
        if c.auth.is_empty() {
            problems.push("no authentication method (add key_file or agent)".to_owned());
        }
        for a in &c.auth {
            if let Auth::KeyFile { path, .. } = a
                && !path.is_file()
            {
                problems.push(format!("key file {} does not exist", path.display()));
            }
        }
        if c.connect_timeout.is_zero() {
            problems.push("connect_timeout 0".to_owned());
        }
        if c.command_timeout.is_some_and(|t| t.is_zero()) {
            problems.push("command_timeout 0 (every command would be killed at once)".to_owned());
        }
        if c.keepalive.is_some_and(|t| t.is_zero()) {
            problems.push("keepalive 0 (give None for no keep-alives)".to_owned());
        }
        if c.max_channels == 0 {
            problems.push("max_channels 0".to_owned());
        }
        if c.max_read == 0 {
            problems.push("max_read 0 (no file could be read)".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "configure SSH host",
                format!("{}@{}:{}", c.user, c.host, c.port),
                problems.join("; "),
            ));
        }
        Ok(SshHost::with_settings(self.config))
    }
}

/// The `ssh` table of a plan-file target: where to connect, as whom, and how much to trust.
/// Every key but `host` may be left out; the defaults are [`SshHostBuilder`]'s. Unknown keys
/// are refused.
///
/// ```toml
/// [targets.ssh]
/// host = "10.0.1.13"
/// port = 22
/// user = "deploy"
/// key_file = "/home/deploy/.ssh/id_ed25519"
/// key_passphrase_env = "DEPLOY_KEY_PASSPHRASE"    # or key_passphrase_file = "/run/secrets/key"
/// known_hosts = "/home/deploy/.ssh/known_hosts"
/// host_key_policy = "strict"
/// connect_timeout = "10s"
/// command_timeout = "2m"
/// ```
///
/// Build the host with [`SshHost::from_config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SshHostConfig {
    /// `host`: the host name or address to connect to (required).
    pub host: String,
    /// `port`: the TCP port (default 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `user`: the user to log in as (default `$USER`, else `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `key_file`: a private key file (ed25519, RSA, ECDSA; OpenSSH or PEM), tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `key_passphrase_env`: the name of the environment variable holding the passphrase of
    /// `key_file` (read when the host is built; the passphrase itself never appears in a plan).
    /// Not together with `key_passphrase_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_passphrase_env: Option<String>,
    /// `key_passphrase_file`: a file holding the passphrase of `key_file` (read when the host
    /// is built; one trailing newline is dropped). It must be readable by its owner only
    /// (`chmod 600`): a file that group or others may read is refused, as OpenSSH refuses such
    /// a private key. At most 64 KiB. Not together with `key_passphrase_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_passphrase_file: Option<PathBuf>,
    /// `agent`: also try the keys of the ssh-agent at `$SSH_AUTH_SOCK` (after `key_file`).
    #[serde(default)]
    pub agent: bool,
    /// `known_hosts`: the OpenSSH `known_hosts` file the host key is checked against (default
    /// `~/.ssh/known_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// `host_key_policy`: `strict` (default: an unknown host is refused) or `accept-new` (an
    /// unknown host's key is recorded); a changed key is refused under both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// `connect_timeout`: give up connecting (TCP, key exchange, authentication) after this
    /// long, e.g. `"10s"` (default 10 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// `command_timeout`: kill a command that runs longer than this when it carries no timeout
    /// of its own, e.g. `"2m"` (default: none).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub command_timeout: Option<Duration>,
}

impl SshHostConfig {
    /// A configuration for `host` with every other key left at its default.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            user: None,
            key_file: None,
            key_passphrase_env: None,
            key_passphrase_file: None,
            agent: false,
            known_hosts: None,
            host_key_policy: None,
            connect_timeout: None,
            command_timeout: None,
        }
    }
}

impl SshHost {
    /// The host a plan file's `ssh` table describes: the passphrase of `key_file` is read from
    /// the environment variable `key_passphrase_env` names, or from the file
    /// `key_passphrase_file` names, and every problem (an unset variable, a passphrase file
    /// that others may read, a passphrase without `key_file`, a missing key file, a bad host
    /// name, ...) is reported at once, in one `InvalidInput` error naming the keys. No error
    /// holds the passphrase. Nothing connects yet.
    pub fn from_config(config: SshHostConfig) -> Result<SshHost> {
        from_config_with_env(config, |name| std::env::var(name))
    }
}

/// [`SshHost::from_config`] with the environment read through `env`.
fn from_config_with_env(
    config: SshHostConfig,
    env: impl Fn(&str) -> std::result::Result<String, VarError>,
) -> Result<SshHost> {
    let mut problems = Vec::new();
    let mut b = SshHost::builder(config.host);
    if let Some(p) = config.port {
        b = b.port(p);
    }
    if let Some(u) = config.user {
        b = b.user(u);
    }
    let source = match (config.key_passphrase_env, config.key_passphrase_file) {
        (Some(var), Some(file)) => {
            problems.push(format!(
                "key_passphrase_env ({var}) and key_passphrase_file ({}): give one of them",
                file.display()
            ));
            None
        }
        (Some(var), None) => Some(PassphraseSource::Env(var)),
        (None, Some(file)) => Some(PassphraseSource::File(file)),
        (None, None) => None,
    };
    match (config.key_file, source) {
        (Some(key), Some(source)) => match source.read(&env) {
            Ok(passphrase) => b = b.key_file_with_passphrase(key, passphrase),
            Err(why) => {
                problems.push(format!(
                    "{why} (it holds the passphrase of key_file {})",
                    key.display()
                ));
                // The key is still checked (it may not exist either).
                b = b.key_file(key);
            }
        },
        (Some(key), None) => b = b.key_file(key),
        (None, Some(source)) => problems.push(format!(
            "{} needs key_file: it names the passphrase of a key file",
            source.key()
        )),
        (None, None) => {}
    }
    if config.agent {
        b = b.agent();
    }
    if let Some(k) = config.known_hosts {
        b = b.known_hosts(k);
    }
    if let Some(p) = config.host_key_policy {
        b = b.host_key_policy(p);
    }
    if let Some(t) = config.connect_timeout {
        b = b.connect_timeout(t);
    }
    if let Some(t) = config.command_timeout {
        b = b.command_timeout(t);
    }
    b.build_with(problems)
}

/// Where a plan's passphrase comes from.
enum PassphraseSource {
    Env(String),
    File(PathBuf),
}

impl PassphraseSource {
    /// The plan-file key and what it names, for messages.
    fn key(&self) -> String {
        match self {
            Self::Env(var) => format!("key_passphrase_env ({var})"),
            Self::File(file) => format!("key_passphrase_file ({})", file.display()),
        }
    }

    /// The passphrase, or why it cannot be had (starting with the plan-file key; never the
    /// passphrase).
    fn read(
        &self,
        env: &impl Fn(&str) -> std::result::Result<String, VarError>,
    ) -> std::result::Result<SecretString, String> {
        match self {
            Self::Env(var) => env(var).map(SecretString::from).map_err(|e| {
                let why = match e {
                    VarError::NotPresent => "is not set",
                    VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                format!("key_passphrase_env: environment variable {var} {why}")
            }),
            Self::File(file) => deploy_core::secret::from_file(file)
                .map_err(|why| format!("key_passphrase_file: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use deploy_core::ExposeSecret;

    /// The environment of a test: `DEPLOY_KEY_PASSPHRASE` only.
    fn env(name: &str) -> std::result::Result<String, VarError> {
        match name {
            "DEPLOY_KEY_PASSPHRASE" => Ok("s3cret pass".to_owned()),
            _ => Err(VarError::NotPresent),
        }
    }

    fn parse(text: &str) -> std::result::Result<SshHostConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn a_plan_file_table_deserializes_and_builds_with_the_passphrase_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not read before connecting").unwrap();
        let config = parse(&format!(
            r#"
            host = "10.0.1.13"
            port = 2222
            user = "deploy"
            key_file = "{}"
            key_passphrase_env = "DEPLOY_KEY_PASSPHRASE"
            agent = true
            known_hosts = "/home/deploy/.ssh/known_hosts"
            host_key_policy = "accept-new"
            connect_timeout = "10s"
            command_timeout = "2m"
            "#,
            key.display()
        ))
        .unwrap();
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.command_timeout, Some(Duration::from_secs(120)));
        assert_eq!(config.host_key_policy, Some(HostKeyPolicy::AcceptNew));

        let host = from_config_with_env(config.clone(), env).unwrap();
        assert_eq!(deploy_core::Host::name(&host), "deploy@10.0.1.13:2222");
        let s = host.settings();
        assert_eq!(s.policy, HostKeyPolicy::AcceptNew);
        assert_eq!(s.known_hosts, Path::new("/home/deploy/.ssh/known_hosts"));
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.command_timeout, Some(Duration::from_secs(120)));
        assert!(matches!(
            &s.auth[..],
            [Auth::KeyFile { path, passphrase: Some(p) }, Auth::Agent { socket: None }]
                if path == &key && p.expose_secret() == "s3cret pass"
        ));
        assert!(!format!("{host:?}").contains("s3cret"), "{host:?}");

        // What serializes deserializes to the same configuration.
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config);
    }

    #[test]
    fn only_host_is_required_and_the_defaults_are_the_builders() {
        let config = parse(r#"host = "web-1""#).unwrap();
        assert_eq!(config, SshHostConfig::new("web-1"));
        let e = parse("port = 22").unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
        // Without a key or the agent there is no way in.
        let e = from_config_with_env(config, env).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("no authentication method"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "host = \"web-1\"\nkind = \"ssh\"",
            "host = \"web-1\"\npassword = \"hunter2\"",
            "host = \"web-1\"\nkey_passphrase = \"s3cret\"",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{text}: {e}");
        }
        let e = parse("host = \"web-1\"\nhost_key_policy = \"accept-any\"").unwrap_err();
        assert!(e.to_string().contains("accept-new"), "{e}");
        let e = parse("host = \"web-1\"\nconnect_timeout = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("connect_timeout"), "{e}");
    }

    #[test]
    fn an_unset_passphrase_variable_is_named_with_every_other_problem() {
        let mut config = SshHostConfig::new("bad host");
        config.key_file = Some(PathBuf::from("/nonexistent/id_ed25519"));
        config.key_passphrase_env = Some("NO_SUCH_PASSPHRASE".into());
        config.connect_timeout = Some(Duration::ZERO);
        let e = from_config_with_env(config, env).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        for part in [
            "key_passphrase_env: environment variable NO_SUCH_PASSPHRASE is not set",
            "passphrase of key_file /nonexistent/id_ed25519",
            "key file /nonexistent/id_ed25519 does not exist",
            "bad host name \"bad host\"",
            "connect_timeout 0",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        assert!(!msg.contains("no authentication method"), "{msg}");
    }

    #[test]
    fn a_passphrase_variable_without_a_key_file_is_refused() {
        let mut config = SshHostConfig::new("web-1");
        config.key_passphrase_env = Some("DEPLOY_KEY_PASSPHRASE".into());
        config.agent = true;
        let e = from_config_with_env(config, env).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains("key_passphrase_env (DEPLOY_KEY_PASSPHRASE) needs key_file"),
            "{e}"
        );
    }

    #[test]
    fn every_builder_problem_is_reported_at_once() {
        let e = SshHost::builder("web-1")
            .agent()
            .port(0)
            .command_timeout(Duration::ZERO)
            .keepalive(Some(Duration::ZERO))
            .max_channels(0)
            .build()
            .unwrap_err();
        let msg = e.to_string();
        for part in [
            "port 0",
            "command_timeout 0",
            "keepalive 0",
            "max_channels 0",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
    }

    /// Every `ssh` table of the plans shipped with the workspace reads as a configuration.
    #[test]
    fn the_shipped_plans_ssh_tables_deserialize() {
        let plans = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plans");
        let mut tables = 0;
        for entry in std::fs::read_dir(&plans).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let plan: toml::Table = toml::from_str(&text).unwrap();
            let targets = plan.get("targets").and_then(|t| t.as_array());
            for ssh in targets.into_iter().flatten().filter_map(|t| t.get("ssh")) {
                let config: SshHostConfig = ssh.clone().try_into().unwrap_or_else(|e| {
                    panic!("{}: {e}", entry.path().display());
                });
                assert!(!config.host.is_empty());
                tables += 1;
            }
        }
        assert!(tables >= 3, "{tables} ssh tables in {}", plans.display());
    }

    /// The host from a configuration reaches a real sshd, with the passphrase of an encrypted
    /// key read from the environment.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_configured_host_with_an_encrypted_key_runs_a_command_on_a_real_sshd() {
        use deploy_core::{Command, Host};
        let sshd = crate::testing::SshdFixture::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("locked");
        crate::testing::ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "s3cret pass",
            "-f",
            key.to_str().unwrap(),
        ])
        .unwrap();
        sshd.authorize(&dir.path().join("locked.pub")).unwrap();
        let config: SshHostConfig = toml::from_str(&format!(
            r#"
            host = "127.0.0.1"
            port = {}
            user = "{}"
            key_file = "{}"
            key_passphrase_env = "DEPLOY_KEY_PASSPHRASE"
            known_hosts = "{}"
            command_timeout = "30s"
            "#,
            sshd.port(),
            sshd.user(),
            key.display(),
            sshd.known_hosts().display()
        ))
        .unwrap();
        let host = from_config_with_env(config.clone(), env).unwrap();
        let out = host
            .run(&Command::from_argv(["echo", "configured"]).unwrap())
            .await
            .unwrap();
        assert_eq!(out.stdout, b"configured\n");

        // The wrong passphrase: the key cannot be loaded, and the error says which.
        let wrong = |_: &str| Ok("wrong".to_owned());
        let e = from_config_with_env(config, wrong)
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("locked"), "{e}");
    }
}
