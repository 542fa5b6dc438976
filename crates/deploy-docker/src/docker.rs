//! The `docker` command line as argument vectors on a [`Host`], and what its answers mean.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::path::Path;

use deploy_core::{Command, Error, ErrorKind, Host, Output, Result, SecretString, Version};
use secrecy::ExposeSecret;

/// Labels every container of a slot carries.
pub(crate) const LABEL_APP: &str = "deploy.app";
pub(crate) const LABEL_SLOT: &str = "deploy.slot";
pub(crate) const LABEL_VERSION: &str = "deploy.version";
pub(crate) const LABEL_RUN: &str = "deploy.run";

/// Refuse a version that cannot be an image tag and a container (or project) name's end: Docker
/// allows ASCII letters, digits, `_`, `.` and `-` (not first), at most 128 characters. A `+` (a
/// build suffix) is refused rather than mapped, since a mapping could make two versions one.
pub(crate) fn check_tag(version: &Version) -> Result<()> {
    let v = version.as_str();
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        "use version",
        format!("{v} as an image tag and container name"),
        "Docker allows ASCII letters, digits, `_`, `.` and `-` (not first), at most 128 \
         characters; a `+` build suffix is not allowed (use `-` or `.`)",
    ))
}

/// Whether `s` can be part of a container or project name: ASCII letters, digits, `_`, `.`,
/// `-`, starting with a letter or digit.
pub(crate) fn name_part_ok(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `s` is a usable environment variable name.
pub(crate) fn env_name_ok(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Secret variables as an env file's text: one `NAME=value` line each.
pub(crate) fn env_file_text(secret_env: &[(String, SecretString)]) -> SecretString {
    let mut text = String::new();
    for (k, v) in secret_env {
        text.push_str(k);
        text.push('=');
        text.push_str(v.expose_secret());
        text.push('\n');
    }
    SecretString::from(text)
}

/// The images a `docker load` said it loaded (`Loaded image: x:y`, `Loaded image ID: sha256:…`).
pub(crate) fn loaded_images(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Loaded image: ")
                .or_else(|| l.strip_prefix("Loaded image ID: "))
        })
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One engine reached through one `docker` program on one host.
#[derive(Debug, Clone)]
pub(crate) struct Docker {
    pub(crate) host: Arc<dyn Host>,
    pub(crate) program: String,
    /// `-H <socket>` when set (otherwise the CLI's own default or `DOCKER_HOST`).
    pub(crate) socket: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

impl Docker {
    /// Upload the image archive `artifact` (a `.tar`, `.tar.gz` or `.tgz` from `docker save`)
    /// to `temp_dir` on the host as `<stem>-<unique><ext>` (0600), `docker load` it, and remove
    /// it whatever happened; the images it named.
    pub(crate) async fn load_archive(
        &self,
        temp_dir: &Path,
        stem: &str,
        artifact: &Path,
    ) -> Result<Vec<String>> {
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(ext) = [".tar.gz", ".tgz", ".tar"]
            .into_iter()
            .find(|e| name.ends_with(e))
        else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "read image archive",
                format!("{} on the deploying machine", artifact.display()),
                "is not a .tar, .tar.gz or .tgz image archive (the output of `docker save`)",
            ));
        };
        let remote = temp_dir.join(format!("{stem}-{}{ext}", deploy_core::fs::unique_suffix()));
        let loaded = async {
            self.host.upload(artifact, &remote, Some(0o600)).await?;
            let out = self
                .run_checked(&self.command([
                    "load".as_ref(),
                    "-q".as_ref(),
                    "-i".as_ref(),
                    remote.as_os_str(),
                ]))
                .await?;
            Ok::<_, Error>(loaded_images(&out.stdout_text()))
        }
        .await;
        let removed = self.host.remove(&remote).await;
        let loaded = loaded?;
        removed?;
        Ok(loaded)
    }

    /// `docker [-H socket] <args>`.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut c = Command::new(&self.program);
        if let Some(s) = &self.socket {
            c = c.arg("-H").arg(s);
        }
        c = c.args(args);
        if let Some(t) = self.timeout {
            c = c.timeout(t);
        }
        c
    }

    /// Run `command` and return its output, whatever its exit status.
    pub(crate) async fn run(&self, command: &Command) -> Result<Output> {
        self.host.run(command).await
    }

    /// Run `command` and fail unless it exits 0: the error names the command, the host and the
    /// end of standard error; an engine that does not answer is `Unavailable` (retryable).
    pub(crate) async fn run_checked(&self, command: &Command) -> Result<Output> {
        let out = self.run(command).await?;
        if out.success() {
            return Ok(out);
        }
        Err(self.failure(command, &out))
    }

    /// The error for a failed `command`.
    pub(crate) fn failure(&self, command: &Command, out: &Output) -> Error {
        let stderr = out.stderr_text();
        let tail: Vec<&str> = stderr.trim().lines().collect();
        let tail = tail[tail.len().saturating_sub(5)..].join("\n");
        let status = match (out.code, out.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "unknown status".to_owned(),
        };
        let kind = if stderr.contains("Cannot connect to the Docker daemon")
            || stderr.contains("Is the docker daemon running")
            // docker-compose v1's words.
            || stderr.contains("Couldn't connect to Docker daemon")
        {
            ErrorKind::Unavailable
        } else if is_no_such(&stderr) {
            ErrorKind::NotFound
        } else {
            ErrorKind::CommandFailed
        };
        let message = if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        };
        Error::new(
            kind,
            format!("run `{}`", command.display()),
            format!("on {}", self.host.name()),
            message,
        )
    }

    /// The containers carrying every label of `labels` (`key=value`), running or not.
    pub(crate) async fn containers(&self, labels: &[String]) -> Result<Vec<Container>> {
        let mut args: Vec<String> =
            vec!["ps".into(), "-a".into(), "-q".into(), "--no-trunc".into()];
        for l in labels {
            args.push("--filter".into());
            args.push(format!("label={l}"));
        }
        let out = self.run_checked(&self.command(args)).await?;
        let ids: Vec<String> = out
            .stdout_text()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["container".to_owned(), "inspect".to_owned()];
        args.extend(ids);
        let cmd = self.command(args);
        let out = self.run(&cmd).await?;
        // A container removed between the two commands is simply gone: inspect still prints
        // the others, and exits 1.
        let text = out.stdout_text();
        if !out.success() && text.trim().is_empty() {
            return Err(self.failure(&cmd, &out));
        }
        parse_containers(&text).map_err(|m| {
            Error::new(
                ErrorKind::Protocol,
                format!("read `{}`", cmd.display()),
                format!("on {}", self.host.name()),
                m,
            )
        })
    }

    /// The container named `name`, if there is one.
    pub(crate) async fn container(&self, name: &str) -> Result<Option<Container>> {
        let cmd = self.command(["container", "inspect", name]);
        let out = self.run(&cmd).await?;
        if !out.success() {
            if is_no_such(&out.stderr_text()) {
                return Ok(None);
            }
            return Err(self.failure(&cmd, &out));
        }
        let mut all = parse_containers(&out.stdout_text()).map_err(|m| {
            Error::new(
                ErrorKind::Protocol,
                format!("read `{}`", cmd.display()),
                format!("on {}", self.host.name()),
                m,
            )
        })?;
        Ok(all.pop())
    }

    /// Whether the image `reference` is present in the engine.
    pub(crate) async fn image_present(&self, reference: &str) -> Result<bool> {
        let cmd = self.command(["image", "inspect", "--format", "{{.Id}}", reference]);
        let out = self.run(&cmd).await?;
        if out.success() {
            return Ok(true);
        }
        if is_no_such(&out.stderr_text()) {
            return Ok(false);
        }
        Err(self.failure(&cmd, &out))
    }
}

/// Whether the CLI said the object does not exist.
fn is_no_such(stderr: &str) -> bool {
    stderr.contains("No such container")
        || stderr.contains("No such object")
        || stderr.contains("No such image")
}

/// A container as `docker container inspect` describes it (the parts used here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    pub(crate) id: String,
    /// Without the leading `/`.
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) running: bool,
    /// `created`, `running`, `exited`, …
    pub(crate) status: String,
    pub(crate) exit_code: i64,
    /// The image as given to `create` (`registry/app:1.2.0`).
    pub(crate) image: String,
    pub(crate) created: SystemTime,
    /// The epoch when never started.
    pub(crate) started: SystemTime,
    /// The epoch when never stopped.
    pub(crate) finished: SystemTime,
    pub(crate) health: Option<HealthState>,
}

/// The container's own HEALTHCHECK state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthState {
    /// `starting`, `healthy` or `unhealthy`.
    pub(crate) status: String,
    pub(crate) failing_streak: i64,
    /// The newest probe's exit code and output.
    pub(crate) last: Option<(i64, String)>,
    /// When the newest probe started (Docker keeps the log across a stop and a start, and
    /// resets the status to `starting`).
    pub(crate) last_start: Option<SystemTime>,
}

impl Container {
    /// The version its label names, if valid.
    pub(crate) fn version(&self) -> Option<Version> {
        self.labels
            .get(LABEL_VERSION)
            .and_then(|v| Version::new(v.as_str()).ok())
    }

    /// Whether it was ever started.
    pub(crate) fn ever_started(&self) -> bool {
        self.started > UNIX_EPOCH
    }

    /// The last thing that happened to it: created, started or stopped.
    pub(crate) fn last_event(&self) -> SystemTime {
        self.created.max(self.started).max(self.finished)
    }
}

/// A time as docker writes it (RFC 3339 with nanoseconds, UTC); the zero time and anything
/// unreadable read as the epoch.
fn time(v: &serde_json::Value) -> SystemTime {
    v.as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .unwrap_or(UNIX_EPOCH)
}

/// The containers of a `docker container inspect` answer (a JSON array).
pub(crate) fn parse_containers(text: &str) -> std::result::Result<Vec<Container>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = json
        .as_array()
        .ok_or_else(|| "not a JSON array".to_owned())?;
    items
        .iter()
        .map(|c| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            let id = s(&c["Id"]);
            if id.is_empty() {
                return Err("a container without Id".to_owned());
            }
            let labels = c["Config"]["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let state = &c["State"];
            let health = state["Health"].as_object().map(|h| HealthState {
                status: h
                    .get("Status")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                failing_streak: h.get("FailingStreak").and_then(|v| v.as_i64()).unwrap_or(0),
                last: h
                    .get("Log")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.last())
                    .map(|e| {
                        (
                            e["ExitCode"].as_i64().unwrap_or(-1),
                            e["Output"].as_str().unwrap_or_default().to_owned(),
                        )
                    }),
                last_start: h
                    .get("Log")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.last())
                    .and_then(|e| e["Start"].as_str())
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
            });
            Ok(Container {
                id,
                name: s(&c["Name"]).trim_start_matches('/').to_owned(),
                labels,
                running: state["Running"].as_bool().unwrap_or(false),
                status: s(&state["Status"]),
                exit_code: state["ExitCode"].as_i64().unwrap_or(0),
                image: s(&c["Config"]["Image"]),
                created: time(&c["Created"]),
                started: time(&state["StartedAt"]),
                finished: time(&state["FinishedAt"]),
                health,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_answers_are_read() {
        let text = r#"[{"Id":"abc","Name":"/shop-blue-1.0.0","Created":"2026-11-29T15:27:57.1Z",
          "Config":{"Image":"shop:1.0.0","Labels":{"deploy.version":"1.0.0","deploy.app":"shop"}},
          "State":{"Status":"running","Running":true,"ExitCode":0,
            "StartedAt":"2026-11-29T15:27:57.740132608Z","FinishedAt":"0001-01-01T00:00:00Z",
            "Health":{"Status":"unhealthy","FailingStreak":3,
              "Log":[{"ExitCode":0,"Output":"ok"},{"ExitCode":1,"Output":"probe says no\n"}]}}}]"#;
        let c = parse_containers(text).unwrap().pop().unwrap();
        assert_eq!(c.name, "shop-blue-1.0.0");
        assert_eq!(c.version().unwrap().as_str(), "1.0.0");
        assert!(c.running && c.ever_started());
        assert_eq!(c.finished, UNIX_EPOCH);
        assert!(c.started > c.created);
        let h = c.health.unwrap();
        assert_eq!(h.status, "unhealthy");
        assert_eq!(h.last, Some((1, "probe says no\n".to_owned())));
        assert_eq!(h.last_start, None, "no Start in this answer's log");
        assert!(parse_containers("{}").is_err());
        assert!(parse_containers("[{}]").is_err());
    }
}
