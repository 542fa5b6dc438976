//! [`SshHostBuilder`]: where to connect, as whom, and how much to trust.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, Result};

use crate::host::SshHost;
use crate::known_hosts::HostKeyPolicy;

/// One way to authenticate, tried in the order added.
#[derive(Clone)]
pub(crate) enum Auth {
    /// A private key file (OpenSSH or PEM; ed25519, RSA, ECDSA), with its passphrase if any.
    KeyFile {
        path: PathBuf,
        passphrase: Option<String>,
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
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::Agent { socket } => f.debug_struct("Agent").field("socket", socket).finish(),
        }
    }
}

/// Everything an [`SshHost`] needs; validated by [`SshHostBuilder::build`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
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
}

/// Builds an [`SshHost`]; see [`SshHost::builder`].
///
/// Defaults: port 22, user `$USER` (else `root`), no authentication method (add at least one),
/// `~/.ssh/known_hosts` with [`HostKeyPolicy::Strict`], connect timeout 10 s, no command
/// timeout (commands still honour their own), keep-alive every 15 s (3 unanswered close the
/// connection), at most 8 channels at once on the connection (below OpenSSH's `MaxSessions 10`).
#[derive(Debug, Clone)]
pub struct SshHostBuilder {
    config: Config,
}

impl SshHostBuilder {
    pub(crate) fn new(host: impl Into<String>) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self {
            config: Config {
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

    /// Authenticate with the private key in `path`, encrypted with `passphrase`.
    pub fn key_file_with_passphrase(
        mut self,
        path: impl Into<PathBuf>,
        passphrase: impl Into<String>,
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

    /// Kill commands that run longer than this when they carry no timeout of their own.
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

    /// Check the configuration (reporting every problem at once) and make the host. Nothing
    /// connects yet: the first command does.
    pub fn build(self) -> Result<SshHost> {
        let c = &self.config;
        let mut problems = Vec::new();
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
            problems.push("connect timeout 0".to_owned());
        }
        if c.max_channels == 0 {
            problems.push("max_channels 0".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "configure SSH host",
                format!("{}@{}:{}", c.user, c.host, c.port),
                problems.join("; "),
            ));
        }
        Ok(SshHost::from_config(self.config))
    }
}
