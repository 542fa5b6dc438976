//! [`DockerTarget`]: one container slot on a host, each release a container
//! `<app>-<slot>-<version>`, driven through the `docker` command line on any [`Host`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::{
    Endpoint, Error, ErrorKind, Health, Host, Release, Result, SecretString, Target, TargetId,
    Version,
};
use secrecy::ExposeSecret;

use crate::docker::{
    Container, Docker, LABEL_APP, LABEL_RUN, LABEL_SLOT, LABEL_VERSION, check_tag, env_file_text,
    env_name_ok, name_part_ok,
};

/// One container slot (`blue`, `web-3`) of an application on a [`Host`]: each prepared release
/// is a container `<app>-<slot>-<version>` (a `+` in the version becomes `_`), labelled
/// `deploy.app`, `deploy.slot`, `deploy.version` and `deploy.run`.
///
/// - `prepare` makes the image present — `docker load` of the release's artifact when it is an
///   image archive (`docker save` output, `.tar`, `.tar.gz` or `.tgz`, uploaded 0600 to the
///   host's temporary directory and removed after the load), else the configured image
///   reference (`registry/app:{version}`), pulled only when missing (after a
///   `docker login --password-stdin` when credentials are configured) — then `docker create`s
///   the container without starting it. A container of that name with the slot's labels is
///   reused (nothing is loaded again); one with other labels is refused (`Conflict`, named).
///   Secret environment values go on `docker create`'s standard input, read as its env file
///   (`--env-file /dev/stdin`): never on a command line, never in a file on the host.
/// - `activate` stops the slot's running container (`docker stop -t <stop timeout>`, which
///   returns once it exited) and starts the version's one; the previous container is kept
///   stopped, so going back is a `docker start` — no load, no pull. It then removes the slot's
///   containers beyond the newest `keep` (never the current or the previous one) and their
///   images when no container uses them any more.
/// - `current` is the version label of the slot's running container or, when none runs (after
///   `stop`), of the container started last; `None` when no container of the slot was ever
///   started. `stop` stops the running one; `start` starts the one started last.
/// - [`DockerTarget::container_health`] reads the container's own `HEALTHCHECK` status.
///
/// ```no_run
/// # fn demo() -> deploy_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use deploy_core::{Endpoint, LocalHost, TargetId};
/// use deploy_docker::DockerTarget;
/// let target = DockerTarget::builder(
///     TargetId::new("blue")?,
///     Arc::new(LocalHost::new()),
///     "shop",
///     Endpoint::http("127.0.0.1", 8081),
/// )
/// .image("registry.example.com/shop:{version}")
/// .network("host")
/// .env("PORT", "8081")
/// .stop_timeout(Duration::from_secs(20))
/// .keep(3)
/// .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DockerTarget {
    id: TargetId,
    app: String,
    slot: String,
    endpoint: Endpoint,
    docker: Docker,
    image: Option<String>,
    network: Option<String>,
    ports: Vec<String>,
    env: Vec<(String, String)>,
    secret_env: Vec<(String, SecretString)>,
    volumes: Vec<String>,
    labels: Vec<(String, String)>,
    restart: Option<String>,
    stop_timeout: Duration,
    keep: usize,
    init: bool,
    command: Option<Vec<String>>,
    temp_dir: PathBuf,
    registry: Option<RegistryLogin>,
}

/// Credentials for `docker login` before a pull.
#[derive(Debug)]
struct RegistryLogin {
    server: String,
    user: String,
    password: SecretString,
}

/// Builds a [`DockerTarget`]; see [`DockerTarget::builder`].
#[derive(Debug)]
pub struct DockerTargetBuilder {
    target: DockerTarget,
}

impl DockerTarget {
    /// A builder for slot `id` of application `app` (a container name part: ASCII letters,
    /// digits, `_`, `.`, `-`) on `host`, serving at `endpoint`. Defaults: the slot is named
    /// after `id`, program `docker`, its default engine, `--init`, no network mode, stop timeout
    /// 10 s, keep 3 containers, temporary files in `/tmp` on the host, no command timeout.
    pub fn builder(
        id: TargetId,
        host: Arc<dyn Host>,
        app: impl Into<String>,
        endpoint: Endpoint,
    ) -> DockerTargetBuilder {
        let slot = id.as_str().to_owned();
        DockerTargetBuilder {
            target: DockerTarget {
                id,
                app: app.into(),
                slot,
                endpoint,
                docker: Docker {
                    host,
                    program: "docker".to_owned(),
                    socket: None,
                    timeout: None,
                },
                image: None,
                network: None,
                ports: Vec::new(),
                env: Vec::new(),
                secret_env: Vec::new(),
                volumes: Vec::new(),
                labels: Vec::new(),
                restart: None,
                stop_timeout: Duration::from_secs(10),
                keep: 3,
                init: true,
                command: None,
                temp_dir: PathBuf::from("/tmp"),
                registry: None,
            },
        }
    }

    /// The container name of `version`: `<app>-<slot>-<version>`, `+` written `_`.
    pub fn container_name(&self, version: &Version) -> String {
        format!(
            "{}-{}-{}",
            self.app,
            self.slot,
            version.as_str().replace('+', "_")
        )
    }

    /// The image reference configured for `version` (`{version}` replaced), if any. The
    /// version must be a valid image tag ([`DockerTarget::prepare`] refuses others).
    pub fn image_for(&self, version: &Version) -> Option<String> {
        self.image
            .as_ref()
            .map(|t| t.replace("{version}", version.as_str()))
    }

    /// `err` with the operation and this target in front, keeping kind and retry decision.
    fn wrap(&self, operation: String, err: Error) -> Error {
        err.context(operation, format!("on target {}", self.id))
    }

    fn slot_filter(&self) -> [String; 2] {
        [
            format!("{LABEL_APP}={}", self.app),
            format!("{LABEL_SLOT}={}", self.slot),
        ]
    }

    /// Every container of this slot.
    async fn slot_containers(&self) -> Result<Vec<Container>> {
        self.docker.containers(&self.slot_filter()).await
    }

    /// The container that is current: the running one, else the one started last.
    fn pick_current<'a>(&self, all: &'a [Container]) -> Result<Option<&'a Container>> {
        let running: Vec<&Container> = all.iter().filter(|c| c.running).collect();
        match running.len() {
            0 => Ok(all
                .iter()
                .filter(|c| c.ever_started())
                .max_by_key(|c| c.started)),
            1 => Ok(Some(running[0])),
            _ => Err(Error::new(
                ErrorKind::Conflict,
                "find the running container",
                format!("of slot {} of {}", self.slot, self.app),
                format!(
                    "{} containers run at once: {}",
                    running.len(),
                    running
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .permanent()),
        }
    }

    /// Whether `c` carries this slot's labels for `version`.
    fn is_ours(&self, c: &Container, version: &Version) -> bool {
        let l = |k: &str| c.labels.get(k).map(String::as_str);
        l(LABEL_APP) == Some(self.app.as_str())
            && l(LABEL_SLOT) == Some(self.slot.as_str())
            && l(LABEL_VERSION) == Some(version.as_str())
    }

    async fn read_current(&self) -> Result<Option<Version>> {
        let all = self.slot_containers().await?;
        Ok(self.pick_current(&all)?.and_then(Container::version))
    }

    async fn prepare_inner(&self, release: &Release) -> Result<()> {
        let version = &release.version;
        check_tag(version)?;
        let name = self.container_name(version);
        if let Some(c) = self.docker.container(&name).await? {
            return self.reuse(&c, version);
        }
        let image = self.ensure_image(release).await?;
        match self.create(&name, version, &image).await {
            Ok(()) => Ok(()),
            Err(e) => match self.docker.container(&name).await {
                // Created after all (a concurrent prepare, or a retry after a lost answer).
                Ok(Some(c)) if self.is_ours(&c, version) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// An existing container named for `version`: reused when it is this slot's.
    fn reuse(&self, c: &Container, version: &Version) -> Result<()> {
        if self.is_ours(c, version) {
            return Ok(());
        }
        let shown: Vec<String> = [LABEL_APP, LABEL_SLOT, LABEL_VERSION]
            .iter()
            .map(|k| {
                format!(
                    "{k}={}",
                    c.labels.get(*k).map(String::as_str).unwrap_or("(none)")
                )
            })
            .collect();
        Err(Error::new(
            ErrorKind::Conflict,
            "reuse container",
            c.name.clone(),
            format!(
                "it exists with other labels ({}), expected {LABEL_APP}={} {LABEL_SLOT}={} \
                 {LABEL_VERSION}={version}; remove it (`docker rm {}`) or pick another app name",
                shown.join(" "),
                self.app,
                self.slot,
                c.name
            ),
        )
        .permanent())
    }

    /// Make the release's image present; its reference.
    async fn ensure_image(&self, release: &Release) -> Result<String> {
        let version = &release.version;
        if let Some(artifact) = &release.artifact {
            let loaded = self
                .docker
                .load_archive(
                    &self.temp_dir,
                    &format!(".deploy-docker-{}-{}-{version}", self.app, self.slot),
                    artifact,
                )
                .await?;
            if let Some(reference) = self.image_for(version) {
                if !self.docker.image_present(&reference).await? {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        "find image",
                        reference,
                        format!(
                            "the archive {} did not hold it (it held: {})",
                            artifact.display(),
                            if loaded.is_empty() {
                                "nothing named".to_owned()
                            } else {
                                loaded.join(", ")
                            }
                        ),
                    ));
                }
                return Ok(reference);
            }
            return match loaded.as_slice() {
                [one] => Ok(one.clone()),
                _ => Err(Error::new(
                    ErrorKind::InvalidInput,
                    "choose the image of",
                    artifact.display().to_string(),
                    format!(
                        "the archive held {} images ({}); name the one to run with `image`",
                        loaded.len(),
                        loaded.join(", ")
                    ),
                )),
            };
        }
        let Some(reference) = self.image_for(version) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "find the image of",
                format!("release {version}"),
                "the release has no image archive and no image reference is configured",
            ));
        };
        if !self.docker.image_present(&reference).await? {
            self.pull(&reference).await?;
        }
        Ok(reference)
    }

    /// `docker pull reference`, after a login when credentials are configured.
    async fn pull(&self, reference: &str) -> Result<()> {
        if let Some(login) = &self.registry {
            // The password goes on standard input, never on the command line.
            let cmd = self
                .docker
                .command([
                    "login",
                    "--username",
                    login.user.as_str(),
                    "--password-stdin",
                    login.server.as_str(),
                ])
                .stdin(login.password.expose_secret().as_bytes().to_vec());
            self.docker.run_checked(&cmd).await?;
        }
        self.docker
            .run_checked(&self.docker.command(["pull", "-q", reference]))
            .await
            .map(drop)
    }

    /// The arguments of `docker create` for `version`, with `env_file` if secrets need one.
    fn create_args(
        &self,
        name: &str,
        version: &Version,
        image: &str,
        env_file: Option<&Path>,
    ) -> Vec<String> {
        let run = deploy_core::state::current_run()
            .map(|r| r.run_id)
            .unwrap_or_default();
        let mut a: Vec<String> = vec!["create".into(), "--name".into(), name.into()];
        if self.init {
            a.push("--init".into());
        }
        for (k, v) in [
            (LABEL_APP, self.app.as_str()),
            (LABEL_SLOT, self.slot.as_str()),
            (LABEL_VERSION, version.as_str()),
            (LABEL_RUN, run.as_str()),
        ] {
            a.push("--label".into());
            a.push(format!("{k}={v}"));
        }
        for (k, v) in &self.labels {
            a.push("--label".into());
            a.push(format!("{k}={v}"));
        }
        if let Some(n) = &self.network {
            a.push("--network".into());
            a.push(n.clone());
        }
        for p in &self.ports {
            a.push("--publish".into());
            a.push(p.clone());
        }
        for (k, v) in &self.env {
            a.push("--env".into());
            a.push(format!("{k}={v}"));
        }
        if let Some(f) = env_file {
            a.push("--env-file".into());
            a.push(f.to_string_lossy().into_owned());
        }
        for v in &self.volumes {
            a.push("--volume".into());
            a.push(v.clone());
        }
        if let Some(r) = &self.restart {
            a.push("--restart".into());
            a.push(r.clone());
        }
        a.push("--stop-timeout".into());
        a.push(self.stop_timeout.as_secs().to_string());
        a.push(image.into());
        if let Some(cmd) = &self.command {
            a.extend(cmd.iter().map(|c| c.replace("{version}", version.as_str())));
        }
        a
    }

    /// `docker create` the container. Secret values go on the command's standard input, which
    /// the CLI reads as its env file (`--env-file /dev/stdin`): on no command line and in no
    /// file, so nothing is left behind when the call is cut off (a time limit, a kill -9).
    async fn create(&self, name: &str, version: &Version, image: &str) -> Result<()> {
        if self.secret_env.is_empty() {
            let cmd = self
                .docker
                .command(self.create_args(name, version, image, None));
            return self.docker.run_checked(&cmd).await.map(drop);
        }
        let cmd = self
            .docker
            .command(self.create_args(name, version, image, Some(Path::new("/dev/stdin"))))
            .stdin(
                env_file_text(&self.secret_env)
                    .expose_secret()
                    .as_bytes()
                    .to_vec(),
            );
        self.docker.run_checked(&cmd).await.map(drop)
    }

    async fn activate_inner(&self, version: &Version) -> Result<()> {
        let all = self.slot_containers().await?;
        let Some(next) = all.iter().find(|c| c.version().as_ref() == Some(version)) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find container",
                self.container_name(version),
                "not prepared (no container of this slot has that version)",
            ));
        };
        let others: Vec<&Container> = all
            .iter()
            .filter(|c| c.running && c.id != next.id)
            .collect();
        if next.running && others.is_empty() {
            // Already current and running: nothing needs to restart.
            return Ok(());
        }
        if !others.is_empty() {
            self.stop_containers(&others).await?;
        }
        if !next.running {
            self.docker
                .run_checked(&self.docker.command(["start", next.id.as_str()]))
                .await?;
        }
        // One read of the slot serves the check and the prune.
        let now = self.slot_containers().await?;
        if let Some(c) = now.iter().find(|c| c.id == next.id)
            && !c.running
        {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                "start container",
                c.name.clone(),
                format!(
                    "it stopped at once ({}, exit code {}); see `docker logs {}`",
                    c.status, c.exit_code, c.name
                ),
            ));
        }
        if let Err(e) = self.prune(&next.id, now).await {
            // The activation itself succeeded; pruning is tried again on the next one.
            tracing::warn!(target = %self.id, error = %e, "could not prune old containers");
        }
        Ok(())
    }

    /// `docker stop -t <stop timeout>` of `containers`; returns once they exited.
    async fn stop_containers(&self, containers: &[&Container]) -> Result<()> {
        let mut args = vec![
            "stop".to_owned(),
            "-t".to_owned(),
            self.stop_timeout.as_secs().to_string(),
        ];
        args.extend(containers.iter().map(|c| c.id.clone()));
        let mut cmd = self.docker.command(args);
        if let Some(t) = self.docker.timeout {
            // The command's own limit comes on top of the graceful stop.
            cmd = cmd.timeout(t + self.stop_timeout);
        }
        self.docker.run_checked(&cmd).await.map(drop)
    }

    /// Remove the slot's containers beyond the newest `keep`, never `current` or the one stopped
    /// last (the previous release), then their images when no container uses them.
    async fn prune(&self, current: &str, mut all: Vec<Container>) -> Result<()> {
        all.sort_by_key(|c| std::cmp::Reverse(c.last_event()));
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        keep.insert(current);
        if let Some(previous) = all
            .iter()
            .filter(|c| c.id != current && c.finished > std::time::UNIX_EPOCH)
            .max_by_key(|c| c.finished)
        {
            keep.insert(previous.id.as_str());
        }
        keep.extend(all.iter().take(self.keep).map(|c| c.id.as_str()));
        let (kept, removed): (Vec<&Container>, Vec<&Container>) = all
            .iter()
            .partition(|c| keep.contains(c.id.as_str()) || c.running);
        if removed.is_empty() {
            return Ok(());
        }
        // `-v`: the anonymous volumes an image's VOLUME made for that container only.
        let mut args = vec!["rm".to_owned(), "-v".to_owned()];
        args.extend(removed.iter().map(|c| c.id.clone()));
        self.docker.run_checked(&self.docker.command(args)).await?;
        let in_use: BTreeSet<&str> = kept.iter().map(|c| c.image.as_str()).collect();
        let images: BTreeSet<&str> = removed
            .iter()
            .map(|c| c.image.as_str())
            .filter(|i| !i.is_empty() && !in_use.contains(i))
            .collect();
        for image in images {
            // The engine refuses while any container (another slot's too) still uses it.
            let cmd = self.docker.command(["image", "rm", image]);
            let out = self.docker.run(&cmd).await?;
            if !out.success() {
                tracing::debug!(target = %self.id, image, stderr = %out.stderr_text().trim(),
                    "image kept");
            }
        }
        Ok(())
    }

    async fn stop_inner(&self) -> Result<()> {
        let all = self.slot_containers().await?;
        let running: Vec<&Container> = all.iter().filter(|c| c.running).collect();
        if running.is_empty() {
            return Ok(());
        }
        self.stop_containers(&running).await
    }

    async fn start_inner(&self) -> Result<()> {
        let all = self.slot_containers().await?;
        let Some(c) = self.pick_current(&all)? else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find the current container",
                format!("of slot {} of {}", self.slot, self.app),
                "no container of this slot was ever started",
            ));
        };
        if c.running {
            return Ok(());
        }
        self.docker
            .run_checked(&self.docker.command(["start", c.id.as_str()]))
            .await
            .map(drop)
    }

    /// The current container's own `HEALTHCHECK` status as a [`Health`]: `healthy` is healthy,
    /// `unhealthy` is an answered unhealthy, `starting` counts as no answer yet (the engine waits
    /// for it until its deadline), a container that does not run is unreachable, and one whose
    /// image has no `HEALTHCHECK` is healthy once running. The reason holds the status and the
    /// newest probe's output; [`Health::version`] is the container's version label.
    pub async fn container_health(&self) -> Result<Health> {
        self.health_state().await.map(|(h, _)| h)
    }

    /// [`container_health`](Self::container_health), and whether the container is `starting`
    /// again after a run whose last `HEALTHCHECK` passed: a container coming back (a rollback
    /// starts the previous one) whose image already proved healthy in it, which Docker checks
    /// again only after the image's interval.
    pub(crate) async fn health_state(&self) -> Result<(Health, bool)> {
        let started = Instant::now();
        let all = self
            .slot_containers()
            .await
            .map_err(|e| self.wrap("read container health".to_owned(), e))?;
        let current = self
            .pick_current(&all)
            .map_err(|e| self.wrap("read container health".to_owned(), e))?;
        let latency = started.elapsed();
        let Some(c) = current else {
            return Ok((
                Health::unreachable(
                    format!("no container of slot {} was started", self.slot),
                    latency,
                ),
                false,
            ));
        };
        let version = c.version();
        if !c.running {
            let reason = format!(
                "container {} is not running ({}, exit code {})",
                c.name, c.status, c.exit_code
            );
            // One that ran and stopped (crashed) answers, in its way: the failure threshold
            // counts it, rather than the wait running to its deadline.
            let health = if matches!(c.status.as_str(), "exited" | "dead") {
                Health::unhealthy(reason, latency)
            } else {
                Health::unreachable(reason, latency)
            };
            return Ok((health.with_version(version), false));
        }
        let Some(h) = &c.health else {
            return Ok((
                Health::healthy(
                    format!("container {} running, its image has no HEALTHCHECK", c.name),
                    latency,
                )
                .with_version(version),
                false,
            ));
        };
        let passed_when_last_ran = h.status == "starting"
            && matches!(&h.last, Some((0, _)))
            && h.last_start.is_some_and(|t| t < c.started);
        let last = h
            .last
            .as_ref()
            .map(|(code, out)| {
                let out = out.trim();
                let out: String = out.chars().take(300).collect();
                format!("; last check exit code {code}: {out}")
            })
            .unwrap_or_default();
        let reason = format!("container {} {}{last}", c.name, h.status);
        let health = match h.status.as_str() {
            "healthy" => Health::healthy(reason, latency),
            "unhealthy" => Health::unhealthy(
                format!("{reason} ({} failed in a row)", h.failing_streak),
                latency,
            ),
            _ => Health::unreachable(reason, latency),
        }
        .with_version(version);
        Ok((health, passed_when_last_ran))
    }

    /// The secret environment values, in order (for tests of the configuration).
    #[cfg(test)]
    pub(crate) fn secret_values(&self) -> Vec<&SecretString> {
        self.secret_env.iter().map(|(_, v)| v).collect()
    }

    /// This target's slot name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The application name.
    pub fn app(&self) -> &str {
        &self.app
    }
}

impl DockerTargetBuilder {
    /// The slot's name in container names and labels (default: the target id).
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.target.slot = slot.into();
        self
    }

    /// The `docker` program on the host (default `docker`, looked up in its `PATH`).
    pub fn docker_program(mut self, program: impl Into<String>) -> Self {
        self.target.docker.program = program.into();
        self
    }

    /// The engine to talk to, given to every command as `-H <socket>` (`unix:///run/x.sock`).
    pub fn docker_host(mut self, socket: impl Into<String>) -> Self {
        self.target.docker.socket = Some(socket.into());
        self
    }

    /// The image reference to run, `{version}` replaced by the release's version
    /// (`registry.example.com/shop:{version}`): pulled when missing and no archive is given, or
    /// the image an archive must hold.
    pub fn image(mut self, template: impl Into<String>) -> Self {
        self.target.image = Some(template.into());
        self
    }

    /// The container's network mode (`host`: the application listens on the slot's port
    /// itself; the only mode in which an engine without a bridge gives network).
    pub fn network(mut self, mode: impl Into<String>) -> Self {
        self.target.network = Some(mode.into());
        self
    }

    /// Publish a port (`127.0.0.1:8081:8080`), as `docker create --publish`.
    pub fn port(mut self, spec: impl Into<String>) -> Self {
        self.target.ports.push(spec.into());
        self
    }

    /// A plain environment variable (on the command line: nothing secret).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.target.env.push((key.into(), value.into()));
        self
    }

    /// A secret environment variable: given to `create` on its standard input (read as its
    /// env file), never on a command line or in a file on the host.
    pub fn secret_env(mut self, key: impl Into<String>, value: SecretString) -> Self {
        self.target.secret_env.push((key.into(), value));
        self
    }

    /// Mount a volume (`/srv/shop/data:/data:ro`), as `docker create --volume`.
    pub fn volume(mut self, spec: impl Into<String>) -> Self {
        self.target.volumes.push(spec.into());
        self
    }

    /// An extra label (the `deploy.*` ones are this target's).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.target.labels.push((key.into(), value.into()));
        self
    }

    /// The restart policy: `no`, `on-failure[:N]` or `unless-stopped`. (`always` is refused: the
    /// engine would start the stopped previous containers again when it restarts, beside the
    /// current one.)
    pub fn restart(mut self, policy: impl Into<String>) -> Self {
        self.target.restart = Some(policy.into());
        self
    }

    /// How long `docker stop` waits after SIGTERM before SIGKILL (whole seconds; default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.target.stop_timeout = timeout;
        self
    }

    /// Keep the newest `n` containers of the slot (at least 2: the current and the previous).
    /// Default 3.
    pub fn keep(mut self, n: usize) -> Self {
        self.target.keep = n;
        self
    }

    /// Run the container without `--init` (default: with, so that an application that ignores
    /// SIGTERM as PID 1 still stops at once).
    pub fn without_init(mut self) -> Self {
        self.target.init = false;
        self
    }

    /// The container's command instead of the image's (`{version}` replaced).
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target.command = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Where on the host image archives are put for a moment (default `/tmp`).
    pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target.temp_dir = dir.into();
        self
    }

    /// Log in to `server` as `user` before a pull (the password on `docker login`'s standard
    /// input). The engine keeps the login in the host user's docker configuration.
    pub fn registry_login(
        mut self,
        server: impl Into<String>,
        user: impl Into<String>,
        password: SecretString,
    ) -> Self {
        self.target.registry = Some(RegistryLogin {
            server: server.into(),
            user: user.into(),
            password,
        });
        self
    }

    /// Kill every docker command after `timeout` (`docker stop` gets the stop timeout more).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.target.docker.timeout = Some(timeout);
        self
    }

    /// Validate everything and build the target; every problem found is reported in one error.
    pub fn build(self) -> Result<DockerTarget> {
        let t = self.target;
        let mut problems = Vec::new();
        if !name_part_ok(&t.app) {
            problems.push(format!(
                "app {:?} must be ASCII letters, digits, '_', '.' or '-', starting with a letter or digit",
                t.app
            ));
        }
        if !name_part_ok(&t.slot) {
            problems.push(format!(
                "slot {:?} must be ASCII letters, digits, '_', '.' or '-', starting with a letter or digit",
                t.slot
            ));
        }
        if t.docker.program.is_empty() {
            problems.push("the docker program must not be empty".to_owned());
        }
        if let Some(image) = &t.image {
            if image.is_empty() || image.starts_with('-') {
                problems.push(format!("image {image:?} is not an image reference"));
            } else if !image.contains("{version}") && !image.contains("@sha256:") {
                problems.push(format!(
                    "image {image:?} names neither {{version}} nor a digest: every release would \
                     run the same image (one already present is never pulled again)"
                ));
            }
        }
        let mut names = BTreeSet::new();
        for k in t
            .env
            .iter()
            .map(|(k, _)| k)
            .chain(t.secret_env.iter().map(|(k, _)| k))
        {
            if !env_name_ok(k) {
                problems.push(format!("environment variable name {k:?} is not valid"));
            }
            if !names.insert(k.as_str()) {
                problems.push(format!("environment variable {k} is given twice"));
            }
        }
        for (k, v) in &t.secret_env {
            if v.expose_secret().contains(['\n', '\r', '\0']) {
                // An env file holds one variable per line.
                problems.push(format!(
                    "secret environment variable {k} holds a line break or NUL"
                ));
            }
        }
        if t.env.iter().any(|(_, v)| v.contains('\0')) {
            problems.push("an environment value holds NUL".to_owned());
        }
        for (k, _) in &t.labels {
            if k.starts_with("deploy.") {
                problems.push(format!(
                    "label {k} is reserved (deploy.* labels are the target's)"
                ));
            }
        }
        if let Some(r) = &t.restart {
            let ok = r == "no"
                || r == "unless-stopped"
                || r == "on-failure"
                || r.strip_prefix("on-failure:")
                    .is_some_and(|n| n.parse::<u32>().is_ok());
            if !ok {
                problems.push(format!(
                    "restart policy {r:?} must be no, on-failure[:N] or unless-stopped \
                     (always would start the kept previous containers again when the engine restarts)"
                ));
            }
        }
        if t.stop_timeout.subsec_nanos() != 0 {
            problems.push(format!(
                "stop timeout {} must be whole seconds (docker stop -t takes seconds)",
                humantime::format_duration(t.stop_timeout)
            ));
        }
        if t.keep < 2 {
            problems.push(format!(
                "keep is {}, must be at least 2 (the current and the previous container)",
                t.keep
            ));
        }
        if !t.temp_dir.is_absolute() {
            problems.push(format!(
                "temp_dir {} must be an absolute path",
                t.temp_dir.display()
            ));
        }
        if t.docker.timeout.is_some_and(|d| d.is_zero()) {
            problems.push("command timeout must be greater than zero".to_owned());
        }
        if let Some(c) = &t.command
            && c.is_empty()
        {
            problems.push("the container command must not be empty".to_owned());
        }
        if let Some(l) = &t.registry
            && (l.server.is_empty() || l.user.is_empty())
        {
            problems.push("registry login needs a server and a user".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("docker target {}", t.id),
                problems.join("; "),
            ));
        }
        Ok(t)
    }
}

#[async_trait]
impl Target for DockerTarget {
    fn id(&self) -> &TargetId {
        &self.id
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn current(&self) -> Result<Option<Version>> {
        self.read_current()
            .await
            .map_err(|e| self.wrap("read current container".to_owned(), e))
    }

    async fn prepare(&self, release: &Release) -> Result<()> {
        self.prepare_inner(release)
            .await
            .map_err(|e| self.wrap(format!("prepare {}", release.version), e))
    }

    async fn activate(&self, version: &Version) -> Result<()> {
        self.activate_inner(version)
            .await
            .map_err(|e| self.wrap(format!("activate {version}"), e))
    }

    async fn stop(&self) -> Result<()> {
        self.stop_inner()
            .await
            .map_err(|e| self.wrap("stop".to_owned(), e))
    }

    async fn start(&self) -> Result<()> {
        self.start_inner()
            .await
            .map_err(|e| self.wrap("start".to_owned(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::LocalHost;

    fn builder() -> DockerTargetBuilder {
        DockerTarget::builder(
            TargetId::new("blue").unwrap(),
            Arc::new(LocalHost::new()),
            "shop",
            Endpoint::http("127.0.0.1", 8081),
        )
    }

    #[test]
    fn create_arguments_hold_labels_and_no_secret() {
        let t = builder()
            .image("reg/shop:{version}")
            .network("host")
            .env("PORT", "8081")
            .secret_env("TOKEN", SecretString::from("s3cret"))
            .volume("/srv/data:/data")
            .label("team", "web")
            .restart("unless-stopped")
            .build()
            .unwrap();
        let v = Version::new("1.2.0-g1").unwrap();
        assert_eq!(t.container_name(&v), "shop-blue-1.2.0-g1");
        let args = t.create_args(
            &t.container_name(&v),
            &v,
            &t.image_for(&v).unwrap(),
            Some(Path::new("/dev/stdin")),
        );
        let line = args.join(" ");
        assert!(line.starts_with("create --name shop-blue-1.2.0-g1 --init --label deploy.app=shop --label deploy.slot=blue --label deploy.version=1.2.0-g1 --label deploy.run="), "{line}");
        assert!(line.contains("--network host --env PORT=8081 --env-file /dev/stdin --volume /srv/data:/data --restart unless-stopped --stop-timeout 10 reg/shop:1.2.0-g1"), "{line}");
        assert!(!line.contains("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn versions_that_cannot_be_tags_are_refused() {
        for ok in ["1.2.0", "2026-11-21.3", "v1_2", "1.0.0-rc.1"] {
            assert!(check_tag(&Version::new(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in ["1.2.0+g1", "-1", ".1"] {
            if let Ok(v) = Version::new(bad) {
                let e = check_tag(&v).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
                assert!(e.to_string().contains(bad), "{e}");
            }
        }
        let e = builder().image("reg/shop:latest").build().unwrap_err();
        assert!(
            e.to_string()
                .contains("names neither {version} nor a digest"),
            "{e}"
        );
        assert!(builder().image("reg/shop@sha256:abc").build().is_ok());
    }

    #[test]
    fn build_reports_every_problem() {
        let e = builder()
            .slot("bad/slot")
            .env("1X", "v")
            .secret_env("K", SecretString::from("a\nb"))
            .label("deploy.version", "x")
            .restart("always")
            .keep(1)
            .stop_timeout(Duration::from_millis(1500))
            .temp_dir("tmp")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let m = e.to_string();
        for part in [
            "slot \"bad/slot\"",
            "\"1X\" is not valid",
            "K holds a line break",
            "label deploy.version is reserved",
            "restart policy \"always\"",
            "keep is 1",
            "stop timeout 1s 500ms must be whole seconds",
            "temp_dir tmp",
        ] {
            assert!(m.contains(part), "{part} in {m}");
        }
    }

    #[test]
    fn loaded_images_are_read() {
        use crate::docker::loaded_images;
        assert_eq!(
            loaded_images("Loaded image: a/b:1\nLoaded image ID: sha256:12\nother\n"),
            vec!["a/b:1".to_owned(), "sha256:12".to_owned()]
        );
    }
}
