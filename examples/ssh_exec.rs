//! Run one command (an argument vector) on a host over SSH, with the host key verified against
//! `known_hosts`, and exit with the command's status.
//!
//! ```text
//! # against a real host (strict host-key checking; --accept-new records an unknown host):
//! cargo run --example ssh_exec -- --host web-1 --user deploy \
//!     --key ~/.ssh/id_ed25519 -- systemctl is-active app
//! # self-contained: starts a throwaway sshd on 127.0.0.1 (needs root and openssh-server):
//! cargo run --example ssh_exec -- --demo -- printf '%s\n' 'it'\''s $(not) run'
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use deploy_core::{Command, Host};
use deploy_ssh::{HostKeyPolicy, SshHost};

/// Run a command on a host over SSH.
#[derive(Debug, Parser)]
struct Args {
    /// Host name or address.
    #[arg(long, required_unless_present = "demo")]
    host: Option<String>,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// User to log in as (default: $USER).
    #[arg(long)]
    user: Option<String>,
    /// Private key file (repeatable).
    #[arg(long)]
    key: Vec<PathBuf>,
    /// Name of an environment variable holding the passphrase of the key files.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// Use the keys of the ssh-agent at $SSH_AUTH_SOCK.
    #[arg(long)]
    agent: bool,
    /// known_hosts file (default: ~/.ssh/known_hosts).
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Record the key of an unknown host instead of refusing it (a changed key is still refused).
    #[arg(long)]
    accept_new: bool,
    /// Kill the command after this long (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Start a throwaway sshd on 127.0.0.1 and run the command there.
    #[arg(long)]
    demo: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::from(255)
        }
    }
}

async fn run(args: Args) -> deploy_core::Result<ExitCode> {
    let demo = if args.demo {
        Some(deploy_ssh::testing::SshdFixture::start()?)
    } else {
        None
    };
    let mut builder = match &demo {
        Some(sshd) => {
            eprintln!(
                "demo sshd on 127.0.0.1:{} (known_hosts {})",
                sshd.port(),
                sshd.known_hosts().display()
            );
            sshd.host_builder()
        }
        None => SshHost::builder(args.host.clone().unwrap_or_default()).port(args.port),
    };
    if let Some(user) = &args.user {
        builder = builder.user(user.clone());
    }
    let passphrase = match &args.passphrase_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            deploy_core::Error::new(
                deploy_core::ErrorKind::InvalidInput,
                "read passphrase",
                format!("environment variable {var}"),
                "not set",
            )
        })?),
        None => None,
    };
    for key in &args.key {
        builder = match &passphrase {
            Some(p) => builder.key_file_with_passphrase(key, p.clone()),
            None => builder.key_file(key),
        };
    }
    if args.agent {
        builder = builder.agent();
    }
    if let Some(kh) = &args.known_hosts {
        builder = builder.known_hosts(kh);
    }
    if args.accept_new {
        builder = builder.host_key_policy(HostKeyPolicy::AcceptNew);
    }
    let host = builder.build()?;
    let mut cmd = Command::from_argv(&args.command)?;
    if let Some(t) = args.timeout {
        cmd = cmd.timeout(t);
    }
    let out = host.run(&cmd).await?;
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stderr().write_all(&out.stderr);
    Ok(match (out.code, out.signal) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(255)),
        (None, Some(s)) => {
            eprintln!("killed by signal {s} on {}", host.name());
            ExitCode::from(u8::try_from(128 + s).unwrap_or(255))
        }
        (None, None) => ExitCode::from(255),
    })
}
