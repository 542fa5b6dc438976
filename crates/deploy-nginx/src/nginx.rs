//! [`Nginx`]: how to test and reload one nginx instance on a [`Host`], as argv commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_core::{Command, Error, ErrorKind, Host, Result};

/// How a reload is asked of the running nginx.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// `nginx -s reload` with the same `-p`/`-e`/`-c` as the tests: nginx parses the
    /// configuration, reads the pid file it names and sends `SIGHUP` to the master.
    Signal,
    /// `kill -HUP <pid>`, the pid read from this file (the `pid` directive of the config). Both
    /// run as commands on the [`Host`], which may be another machine.
    Hup {
        /// The master's pid file.
        pid_file: PathBuf,
    },
}

/// One nginx instance: its binary, main configuration, prefix and error log, and how to reload
/// it. Every call runs an argument vector on the [`Host`] given to it (never a shell string).
///
/// ```
/// use deploy_nginx::{Nginx, Reload};
/// let nginx = Nginx::new("/etc/nginx/nginx.conf")
///     .with_error_log("/var/log/nginx/error.log")
///     .with_reload(Reload::Hup { pid_file: "/run/nginx.pid".into() });
/// assert_eq!(nginx.config().to_str(), Some("/etc/nginx/nginx.conf"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nginx {
    binary: PathBuf,
    config: PathBuf,
    prefix: Option<PathBuf>,
    error_log: Option<PathBuf>,
    pass_error_log: bool,
    reload: Reload,
    command_timeout: Duration,
}

impl Nginx {
    /// nginx (found in `PATH`) with the main configuration file `config`, reloaded by
    /// `nginx -s reload`.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            binary: PathBuf::from("nginx"),
            config: config.into(),
            prefix: None,
            error_log: None,
            pass_error_log: false,
            reload: Reload::Signal,
            command_timeout: Duration::from_secs(30),
        }
    }

    /// The nginx binary to run (default `nginx` from `PATH`).
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Pass `-p prefix` to every command.
    pub fn with_prefix(mut self, prefix: impl Into<PathBuf>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The error log the master writes to. Its new lines are attached to the error of a reload
    /// that did not take effect. Not passed to nginx (see [`with_startup_error_log`](Self::with_startup_error_log)).
    pub fn with_error_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.error_log = Some(path.into());
        self
    }

    /// As [`with_error_log`](Self::with_error_log), and also pass it as `-e path` to every
    /// command (for instances started with `-e`, such as the test fixture).
    pub fn with_startup_error_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.error_log = Some(path.into());
        self.pass_error_log = true;
        self
    }

    /// How reloads are sent (default [`Reload::Signal`]).
    pub fn with_reload(mut self, reload: Reload) -> Self {
        self.reload = reload;
        self
    }

    /// Kill `nginx -t` and reload commands that take longer than this (default 30 s).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The main configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The error log, if known.
    pub fn error_log(&self) -> Option<&Path> {
        self.error_log.as_deref()
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `nginx [-p P] [-e E] -c <config>` followed by `extra`.
    fn command(&self, config: &Path, extra: &[&str]) -> Command {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(p) = &self.prefix {
            args.push("-p".into());
            args.push(p.into());
        }
        if let (true, Some(e)) = (self.pass_error_log, &self.error_log) {
            args.push("-e".into());
            args.push(e.into());
        }
        args.push("-c".into());
        args.push(config.into());
        args.extend(extra.iter().map(OsString::from));
        Command::new(&self.binary)
            .args(args)
            .timeout(self.command_timeout)
    }

    /// Run `nginx -t` on the main configuration. A configuration nginx refuses is an error of
    /// kind `Rejected` whose cause is nginx's own message.
    pub async fn test(&self, host: &dyn Host) -> Result<()> {
        self.test_file(host, &self.config).await
    }

    /// Run `nginx -t` on `config` (a main configuration file).
    pub(crate) async fn test_file(&self, host: &dyn Host, config: &Path) -> Result<()> {
        let cmd = self.command(config, &["-t", "-q"]);
        let out = host.run(&cmd).await.map_err(not_found_hint)?;
        if out.success() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Rejected,
            "test nginx configuration",
            format!("{} on {}", config.display(), host.name()),
            format!("`nginx -t` failed: {}", nginx_message(&out.stderr_text())),
        ))
    }

    /// `nginx -T`: the whole configuration as nginx reads it, every included file after a
    /// `# configuration file <path>:` line.
    pub(crate) async fn dump(&self, host: &dyn Host) -> Result<String> {
        let cmd = self.command(&self.config, &["-T", "-q"]);
        let out = host.run(&cmd).await.map_err(not_found_hint)?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        Err(Error::new(
            ErrorKind::Rejected,
            "dump nginx configuration",
            format!("{} on {}", self.config.display(), host.name()),
            format!("`nginx -T` failed: {}", nginx_message(&out.stderr_text())),
        ))
    }

    /// Ask the running master to reload its configuration. This only sends the request: nginx
    /// answers before it has applied (or failed to apply) the new configuration, so callers
    /// confirm the result themselves (as [`UpstreamSwitch`](crate::UpstreamSwitch) does).
    pub async fn reload(&self, host: &dyn Host) -> Result<()> {
        let object = format!("{} on {}", self.config.display(), host.name());
        let cmd = match &self.reload {
            Reload::Signal => self.command(&self.config, &["-s", "reload"]),
            Reload::Hup { pid_file } => {
                let raw = host
                    .read_file(pid_file)
                    .await
                    .map_err(|e| e.context("reload nginx", object.clone()))?;
                let text = String::from_utf8_lossy(&raw);
                let pid: u32 = text.trim().parse().map_err(|_| {
                    Error::new(
                        ErrorKind::Protocol,
                        "reload nginx",
                        object.clone(),
                        format!(
                            "the pid file {} holds {:?}, not a process id",
                            pid_file.display(),
                            text.trim()
                        ),
                    )
                })?;
                Command::new("kill")
                    .args(["-HUP".to_owned(), pid.to_string()])
                    .timeout(self.command_timeout)
            }
        };
        let out = host.run(&cmd).await.map_err(|e| {
            let e = match self.reload {
                Reload::Signal => not_found_hint(e),
                Reload::Hup { .. } => e,
            };
            e.context("reload nginx", object.clone())
        })?;
        if out.success() {
            return Ok(());
        }
        let text = out.stderr_text();
        Err(Error::new(
            ErrorKind::CommandFailed,
            "reload nginx",
            object,
            format!("`{}` failed: {}", cmd.display(), nginx_message(&text)),
        ))
    }

    /// The error log's current length in bytes, to read only what a reload adds.
    pub(crate) async fn error_log_len(&self, host: &dyn Host) -> Option<u64> {
        let log = self.error_log.as_ref()?;
        let out = host
            .run(&Command::new("stat").args([OsString::from("-c"), "%s".into(), log.into()]))
            .await
            .ok()?;
        out.stdout_text().trim().parse().ok()
    }

    /// The error log's raw text after byte `offset`, if it can be read.
    pub(crate) async fn error_log_new(
        &self,
        host: &dyn Host,
        offset: Option<u64>,
    ) -> Option<String> {
        let log = self.error_log.as_ref()?;
        let from = format!("+{}", offset? + 1);
        let cmd = Command::new("tail").args([OsString::from("-c"), from.into(), log.into()]);
        let out = host.run(&cmd).await.ok().filter(|o| o.success())?;
        Some(out.stdout_text())
    }

    /// The error log's lines after byte `offset` (at most the last 4 KiB), for diagnostics.
    pub(crate) async fn error_log_since(&self, host: &dyn Host, offset: Option<u64>) -> String {
        let Some(log) = &self.error_log else {
            return "no error log configured (Nginx::with_error_log)".to_owned();
        };
        let from = format!("+{}", offset.unwrap_or(0) + 1);
        let cmd = Command::new("tail").args([OsString::from("-c"), from.into(), log.into()]);
        match host.run(&cmd).await {
            Ok(out) if out.success() => {
                let text = out.stdout_text();
                let text = text.trim();
                if text.is_empty() {
                    return format!("no new lines in {}", log.display());
                }
                let start = text.len().saturating_sub(4096);
                let start = (start..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                format!("new lines in {}:\n{}", log.display(), &text[start..])
            }
            Ok(out) => format!(
                "could not read {}: {}",
                log.display(),
                out.stderr_text().trim()
            ),
            Err(e) => format!("could not read {}: {e}", log.display()),
        }
    }
}

/// nginx's messages without the `nginx: ` prefix and the closing "test failed" line.
pub(crate) fn nginx_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("nginx: ").trim())
        .filter(|l| {
            !l.is_empty() && !l.starts_with("configuration file") && !l.contains("test failed")
        })
        .collect();
    if lines.is_empty() {
        "nginx printed nothing".to_owned()
    } else {
        lines.join("; ")
    }
}

/// A missing nginx binary, with the hint how to install it.
fn not_found_hint(e: Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        e.with_context("hint", "install nginx: `apt-get install nginx`")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_pass_prefix_error_log_and_config() {
        let n = Nginx::new("/t/nginx.conf")
            .with_binary("/usr/sbin/nginx")
            .with_prefix("/t")
            .with_startup_error_log("/t/error.log");
        let c = n.command(Path::new("/t/nginx.conf"), &["-s", "reload"]);
        assert_eq!(
            c.display(),
            "/usr/sbin/nginx -p /t -e /t/error.log -c /t/nginx.conf -s reload"
        );
        let plain = Nginx::new("/etc/nginx/nginx.conf").with_error_log("/var/log/e.log");
        assert_eq!(
            plain.command(plain.config(), &["-t"]).display(),
            "nginx -c /etc/nginx/nginx.conf -t"
        );
    }

    #[test]
    fn nginx_messages_are_kept_without_noise() {
        let stderr = "nginx: [emerg] invalid parameter \"weight=x\" in /t/up.conf:3\n\
                      nginx: configuration file /t/nginx.conf test failed\n";
        assert_eq!(
            nginx_message(stderr),
            "[emerg] invalid parameter \"weight=x\" in /t/up.conf:3"
        );
        assert_eq!(nginx_message(""), "nginx printed nothing");
    }
}
