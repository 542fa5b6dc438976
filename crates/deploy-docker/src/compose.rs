//! [`ComposeTarget`]: one slot of an application whose services a compose file defines, each
//! release a compose project `<app>-<slot>-<version>`, driven through `docker-compose` (v1) or
//! `docker compose` (v2) as argument vectors on any [`Host`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deploy_core::{
    Command, Endpoint, Error, ErrorKind, Host, Release, Result, SecretString, Target, TargetId,
    Version,
};
use secrecy::ExposeSecret;

use crate::docker::{
    Container, Docker, LABEL_APP, LABEL_RUN, LABEL_SLOT, LABEL_VERSION, env_file_text, env_name_ok,
    name_part_ok,
};

/// The label compose puts on every container of a project.
const LABEL_PROJECT: &str = "com.docker.compose.project";
/// The override file this target writes beside the compose file: the `deploy.*` labels.
const OVERRIDE_FILE: &str = "deploy-labels.override.json";

/// Which compose command line drives the projects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComposeCli {
    /// The standalone program (`docker-compose`, compose v1 or the v2 standalone binary).
    Standalone(String),
    /// The docker CLI's plugin: `docker compose …` (compose v2; untested here).
    Plugin,
}

/// One slot (`blue`, `web-3`) of an application defined by a compose file on a [`Host`]: each
/// prepared release is a compose project `<app>-<slot>-<version>`, lowercased, every character
/// other than `a-z`, `0-9`, `_`, `-` written `_` (compose's project-name rules): `shop-blue-1_2_0`.
/// The compose file names the release's images through a variable (`image:
/// shop:${DEPLOY_VERSION}`), given in each compose command's environment, never on its
/// command line.
///
/// - `prepare` uploads the compose file to `<project dir>/<app>-<slot>/<project>/` on the host,
///   beside an override file (JSON) that adds the labels `deploy.app`, `deploy.slot`,
///   `deploy.version` and `deploy.run` to every service; makes the images present (`docker
///   load` of the release's artifact when it is an image archive, uploaded 0600 and removed
///   after the load, else a compose `pull` of the services whose image is missing); then
///   `create`s the project's containers without starting them. A project with the slot's labels
///   is reused; one with other labels is refused (`Conflict`, named). Secret values reach the
///   compose file's `${NAME}` references through an env file written 0600 on the host, given
///   with `--env-file` to `create` only and removed right after, whatever happened.
/// - `activate` stops the slot's running project (`stop -t <stop timeout>`) and `start`s the
///   version's one; the previous project stays (stopped), so going back is a `start` — no load,
///   no pull, no create. It then `down`s the slot's projects beyond the newest `keep` (never the
///   current or the previous one), removes their directories, and their images when no
///   container uses them any more.
/// - `current` is the `deploy.version` label of the slot's running project or, when none runs
///   (after `stop`), of the project started last.
///
/// ```no_run
/// # fn demo() -> deploy_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use deploy_core::{Endpoint, LocalHost, TargetId};
/// use deploy_docker::ComposeTarget;
/// let target = ComposeTarget::builder(
///     TargetId::new("blue")?,
///     Arc::new(LocalHost::new()),
///     "shop",
///     "deploy/docker-compose.prod.yml",
///     Endpoint::http("127.0.0.1", 8081),
/// )
/// .env("PORT", "8081")
/// .stop_timeout(Duration::from_secs(20))
/// .keep(3)
/// .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ComposeTarget {
    id: TargetId,
    app: String,
    slot: String,
    endpoint: Endpoint,
    compose_file: PathBuf,
    cli: ComposeCli,
    /// Plain `docker` commands (inspect, load, image rm), `-H` when a socket is given.
    docker: Docker,
    version_variable: String,
    env: Vec<(String, String)>,
    secret_env: Vec<(String, SecretString)>,
    stop_timeout: Duration,
    keep: usize,
    project_dir: PathBuf,
    temp_dir: PathBuf,
}

/// Builds a [`ComposeTarget`]; see [`ComposeTarget::builder`].
#[derive(Debug)]
pub struct ComposeTargetBuilder {
    target: ComposeTarget,
}

/// One compose project of the slot, as its containers show it.
#[derive(Debug)]
struct Project {
    name: String,
    containers: Vec<Container>,
}

impl Project {
    fn version(&self) -> Option<Version> {
        self.containers.iter().find_map(Container::version)
    }
    fn any_running(&self) -> bool {
        self.containers.iter().any(|c| c.running)
    }
    fn all_running(&self) -> bool {
        self.containers.iter().all(|c| c.running)
    }
    /// The latest `at` of its containers.
    fn latest(&self, at: impl Fn(&Container) -> SystemTime) -> SystemTime {
        self.containers.iter().map(at).max().unwrap_or(UNIX_EPOCH)
    }
    fn started(&self) -> SystemTime {
        self.latest(|c| c.started)
    }
    fn finished(&self) -> SystemTime {
        self.latest(|c| c.finished)
    }
    fn last_event(&self) -> SystemTime {
        self.latest(Container::last_event)
    }
}

/// A compose project name from `raw`: lowercase ASCII letters, digits, `_` and `-`, every other
/// character written `_`.
pub(crate) fn project_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl ComposeTarget {
    /// A builder for slot `id` of application `app` (ASCII letters, digits, `_`, `.`, `-`,
    /// starting with a letter or digit) on `host`, its services defined by `compose_file` on the
    /// deploying machine, serving at `endpoint`. Defaults: the slot is named after `id`,
    /// `docker-compose` (v1), program `docker`, its default engine, the version in
    /// `DEPLOY_VERSION`, stop timeout 10 s, keep 3 projects, project files under
    /// `/var/lib/deploy-docker/compose` and temporary files in `/tmp` on the host, no command
    /// timeout.
    pub fn builder(
        id: TargetId,
        host: Arc<dyn Host>,
        app: impl Into<String>,
        compose_file: impl Into<PathBuf>,
        endpoint: Endpoint,
    ) -> ComposeTargetBuilder {
        let slot = id.as_str().to_owned();
        ComposeTargetBuilder {
            target: ComposeTarget {
                id,
                app: app.into(),
                slot,
                endpoint,
                compose_file: compose_file.into(),
                cli: ComposeCli::Standalone("docker-compose".to_owned()),
                docker: Docker {
                    host,
                    program: "docker".to_owned(),
                    socket: None,
                    timeout: None,
                },
                version_variable: "DEPLOY_VERSION".to_owned(),
                env: Vec::new(),
                secret_env: Vec::new(),
                stop_timeout: Duration::from_secs(10),
                keep: 3,
                project_dir: PathBuf::from("/var/lib/deploy-docker/compose"),
                temp_dir: PathBuf::from("/tmp"),
            },
        }
    }

    /// The compose project of `version`: `<app>-<slot>-<version>` by compose's rules.
    pub fn project_name(&self, version: &Version) -> String {
        project_name(&format!("{}-{}-{}", self.app, self.slot, version.as_str()))
    }

    /// The directory on the host holding the files of `project`.
    pub fn project_files_dir(&self, project: &str) -> PathBuf {
        self.project_dir
            .join(format!("{}-{}", self.app, self.slot))
            .join(project)
    }

    /// This target's slot name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The application name.
    pub fn app(&self) -> &str {
        &self.app
    }

    fn compose_file_name(&self) -> OsString {
        self.compose_file
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| "docker-compose.yml".into())
    }

    /// `err` with the operation and this target in front, keeping kind and retry decision.
    fn wrap(&self, operation: String, err: Error) -> Error {
        err.context(operation, format!("on target {}", self.id))
    }

    /// A compose command for `project` (of `version`) with `args` after the global options;
    /// `env_file` is given with `--env-file` (for `create` only). The version variable, the
    /// plain variables and `DOCKER_HOST` go in the environment; so do the secret names, empty,
    /// except when the env file holds their values (so later commands do not warn about them).
    fn compose(
        &self,
        project: &str,
        version: &Version,
        env_file: Option<&Path>,
        args: &[&str],
    ) -> Command {
        self.compose_with(project, version, env_file, args, true)
    }

    /// [`compose`](Self::compose), with the labels override file or without it.
    fn compose_with(
        &self,
        project: &str,
        version: &Version,
        env_file: Option<&Path>,
        args: &[&str],
        labels: bool,
    ) -> Command {
        let dir = self.project_files_dir(project);
        let mut c = match &self.cli {
            ComposeCli::Standalone(p) => Command::new(p),
            ComposeCli::Plugin => Command::new(&self.docker.program).arg("compose"),
        };
        c = c
            .arg("-p")
            .arg(project)
            .arg("-f")
            .arg(dir.join(self.compose_file_name()));
        if labels {
            c = c.arg("-f").arg(dir.join(OVERRIDE_FILE));
        }
        if let Some(f) = env_file {
            c = c.arg("--env-file").arg(f);
        }
        c = c.args(args.iter().copied());
        if let Some(s) = &self.docker.socket {
            c = c.env("DOCKER_HOST", s);
        }
        c = c.env(&self.version_variable, version.as_str());
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        if env_file.is_none() {
            for (k, _) in &self.secret_env {
                c = c.env(k, "");
            }
        }
        if let Some(t) = self.docker.timeout {
            c = c.timeout(t);
        }
        c
    }

    /// Every project of this slot, by project name.
    async fn projects(&self) -> Result<Vec<Project>> {
        let all = self
            .docker
            .containers(&[
                format!("{LABEL_APP}={}", self.app),
                format!("{LABEL_SLOT}={}", self.slot),
            ])
            .await?;
        let mut by: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for c in all {
            // A container of this app and slot outside any compose project (a `kind = "docker"`
            // target's, one made by hand) is not ours to prune or start.
            let Some(p) = c
                .labels
                .get(LABEL_PROJECT)
                .filter(|p| !p.is_empty())
                .cloned()
            else {
                continue;
            };
            by.entry(p).or_default().push(c);
        }
        Ok(by
            .into_iter()
            .map(|(name, containers)| Project { name, containers })
            .collect())
    }

    /// The current project: the running one, else the one started last.
    fn pick_current<'a>(&self, all: &'a [Project]) -> Result<Option<&'a Project>> {
        let running: Vec<&Project> = all.iter().filter(|p| p.any_running()).collect();
        match running.len() {
            0 => Ok(all
                .iter()
                .filter(|p| p.started() > UNIX_EPOCH)
                .max_by_key(|p| p.started())),
            1 => Ok(Some(running[0])),
            _ => Err(Error::new(
                ErrorKind::Conflict,
                "find the running compose project",
                format!("of slot {} of {}", self.slot, self.app),
                format!(
                    "{} projects run at once: {}",
                    running.len(),
                    running
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn read_current(&self) -> Result<Option<Version>> {
        let all = self.projects().await?;
        Ok(self.pick_current(&all)?.and_then(Project::version))
    }

    /// The containers of project `name`, whoever made them.
    async fn project_containers(&self, name: &str) -> Result<Vec<Container>> {
        self.docker
            .containers(&[format!("{LABEL_PROJECT}={name}")])
            .await
    }

    /// Whether every container of a project carries this slot's labels for `version`.
    fn check_ours(&self, project: &str, containers: &[Container], version: &Version) -> Result<()> {
        let foreign: Vec<String> = containers
            .iter()
            .filter(|c| {
                let l = |k: &str| c.labels.get(k).map(String::as_str);
                !(l(LABEL_APP) == Some(self.app.as_str())
                    && l(LABEL_SLOT) == Some(self.slot.as_str())
                    && l(LABEL_VERSION) == Some(version.as_str()))
            })
            .map(|c| {
                format!(
                    "{} ({})",
                    c.name,
                    [LABEL_APP, LABEL_SLOT, LABEL_VERSION]
                        .iter()
                        .map(|k| format!(
                            "{k}={}",
                            c.labels.get(*k).map(String::as_str).unwrap_or("(none)")
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Conflict,
            "reuse compose project",
            project.to_owned(),
            format!(
                "it has containers with other labels: {}; expected {LABEL_APP}={} \
                 {LABEL_SLOT}={} {LABEL_VERSION}={version}; remove it (`docker-compose -p {project} \
                 down`) or pick another app name",
                foreign.join(", "),
                self.app,
                self.slot
            ),
        ))
    }

    async fn prepare_inner(&self, release: &Release) -> Result<()> {
        let version = &release.version;
        // The version is the images' tag; and two versions must not share a project name.
        crate::docker::check_tag(version)?;
        let project = self.project_name(version);
        let existing = self.project_containers(&project).await?;
        if !existing.is_empty() {
            return self.check_ours(&project, &existing, version);
        }
        let made = async {
            let services = self.upload_files(&project, version).await?;
            self.ensure_images(&project, version, release.artifact.as_deref(), &services)
                .await?;
            Ok::<_, Error>(services)
        }
        .await;
        let services = match made {
            Ok(s) => s,
            Err(e) => {
                // Nothing was created: leave no files of the project behind.
                let dir = self.project_files_dir(&project);
                if let Err(r) = self.docker.host.remove(&dir).await {
                    tracing::warn!(target = %self.id, dir = %dir.display(), error = %r,
                        "could not remove the files of an unprepared project");
                }
                return Err(e);
            }
        };
        match self.create(&project, version).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let now = self.project_containers(&project).await.unwrap_or_default();
                if now.len() >= services.len()
                    && !now.is_empty()
                    && self.check_ours(&project, &now, version).is_ok()
                {
                    // Created after all (a concurrent prepare, or a lost answer).
                    return Ok(());
                }
                // A half-created project would be reused as if whole: take it down.
                let down = self.compose(&project, version, None, &["down"]);
                if let Err(d) = self.docker.run_checked(&down).await {
                    tracing::warn!(target = %self.id, project, error = %d,
                        "could not take down a half-created project");
                }
                Err(e)
            }
        }
    }

    /// Upload the compose file and write the labels override for `project`; the services and
    /// their images, as `config` reads them.
    async fn upload_files(&self, project: &str, version: &Version) -> Result<Vec<Service>> {
        let host = &self.docker.host;
        let dir = self.project_files_dir(project);
        host.create_dir_all(&dir).await?;
        host.upload(
            &self.compose_file,
            &dir.join(self.compose_file_name()),
            Some(0o644),
        )
        .await?;
        // The compose file alone: an override without services is compose v1's version 1
        // format, which it refuses to merge.
        let cmd = self.compose_with(project, version, None, &["config"], false);
        let out = self.docker.run_checked(&cmd).await?;
        let services = parse_config(&out.stdout_text());
        if services.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "read the services of",
                self.compose_file.display().to_string(),
                "the compose file defines no service",
            ));
        }
        let run = deploy_core::state::current_run()
            .map(|r| r.run_id)
            .unwrap_or_default();
        let labels = serde_json::json!({
            LABEL_APP: self.app,
            LABEL_SLOT: self.slot,
            LABEL_VERSION: version.as_str(),
            LABEL_RUN: run,
        });
        let overrides: serde_json::Map<String, serde_json::Value> = services
            .iter()
            .map(|s| (s.name.clone(), serde_json::json!({ "labels": labels })))
            .collect();
        let json = serde_json::json!({ "services": overrides });
        host.write_file(
            &dir.join(OVERRIDE_FILE),
            format!("{json}\n").as_bytes(),
            Some(0o644),
        )
        .await?;
        Ok(services)
    }

    /// Make every service's image present: load the archive, else pull what is missing.
    async fn ensure_images(
        &self,
        project: &str,
        version: &Version,
        artifact: Option<&Path>,
        services: &[Service],
    ) -> Result<()> {
        let loaded = match artifact {
            Some(a) => Some(
                self.docker
                    .load_archive(
                        &self.temp_dir,
                        &format!(".deploy-compose-{}-{}-{version}", self.app, self.slot),
                        a,
                    )
                    .await?,
            ),
            None => None,
        };
        let mut missing = Vec::new();
        for s in services {
            let Some(image) = &s.image else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "find the image of service",
                    format!("{} in {}", s.name, self.compose_file.display()),
                    "the service has no `image` (builds on the host are not supported: build \
                     and tag the image, name it with `image:`)",
                ));
            };
            if !self.docker.image_present(image).await? {
                missing.push((s.name.as_str(), image.as_str()));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if let (Some(loaded), Some(a)) = (loaded, artifact) {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find images",
                missing
                    .iter()
                    .map(|(_, i)| *i)
                    .collect::<Vec<_>>()
                    .join(", "),
                format!(
                    "the archive {} did not hold them (it held: {})",
                    a.display(),
                    if loaded.is_empty() {
                        "nothing named".to_owned()
                    } else {
                        loaded.join(", ")
                    }
                ),
            ));
        }
        let mut args = vec!["pull", "-q"];
        args.extend(missing.iter().map(|(s, _)| *s));
        let cmd = self.compose(project, version, None, &args);
        self.docker.run_checked(&cmd).await.map(drop)
    }

    /// `create` the project's containers; secrets through an env file removed right after.
    async fn create(&self, project: &str, version: &Version) -> Result<()> {
        if self.secret_env.is_empty() {
            let cmd = self.compose(project, version, None, &["create"]);
            return self.docker.run_checked(&cmd).await.map(drop);
        }
        let file = self.temp_dir.join(format!(
            ".deploy-compose-{project}-{}.env",
            deploy_core::fs::unique_suffix()
        ));
        let contents = env_file_text(&self.secret_env);
        let created = async {
            self.docker
                .host
                .write_file(&file, contents.expose_secret().as_bytes(), Some(0o600))
                .await?;
            let cmd = self.compose(project, version, Some(&file), &["create"]);
            self.docker.run_checked(&cmd).await.map(drop)
        }
        .await;
        let removed = self.docker.host.remove(&file).await;
        if let Err(e) = &removed {
            tracing::error!(target = %self.id, file = %file.display(), error = %e,
                "could not remove the env file holding secrets");
        }
        created?;
        removed
    }

    /// `stop -t <stop timeout>` of `project`; plain `docker stop` of its containers when its
    /// files are gone from the host.
    async fn stop_project(&self, project: &Project) -> Result<()> {
        let files = self.project_files_dir(&project.name);
        let version = project.version();
        let timeout = self.stop_timeout.as_secs().to_string();
        let mut cmd = match (&version, self.docker.host.file_kind(&files).await?) {
            (Some(v), Some(_)) => self.compose(&project.name, v, None, &["stop", "-t", &timeout]),
            _ => {
                let mut args = vec!["stop".to_owned(), "-t".to_owned(), timeout.clone()];
                args.extend(
                    project
                        .containers
                        .iter()
                        .filter(|c| c.running)
                        .map(|c| c.id.clone()),
                );
                self.docker.command(args)
            }
        };
        if let Some(t) = self.docker.timeout {
            // The command's own limit comes on top of the graceful stop.
            cmd = cmd.timeout(t + self.stop_timeout);
        }
        self.docker.run_checked(&cmd).await.map(drop)
    }

    /// `start` `project` and check that all its containers run.
    async fn start_project(&self, project: &Project, version: &Version) -> Result<()> {
        let cmd = self.compose(&project.name, version, None, &["start"]);
        self.docker.run_checked(&cmd).await?;
        let now = self.project_containers(&project.name).await?;
        let stopped: Vec<String> = now
            .iter()
            .filter(|c| !c.running)
            .map(|c| format!("{} ({}, exit code {})", c.name, c.status, c.exit_code))
            .collect();
        if !stopped.is_empty() {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                "start compose project",
                project.name.clone(),
                format!(
                    "containers stopped at once: {}; see `docker logs <name>`",
                    stopped.join(", ")
                ),
            ));
        }
        Ok(())
    }

    async fn activate_inner(&self, version: &Version) -> Result<()> {
        let all = self.projects().await?;
        let Some(next) = all.iter().find(|p| p.version().as_ref() == Some(version)) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find compose project",
                self.project_name(version),
                "not prepared (no project of this slot has that version)",
            ));
        };
        let others: Vec<&Project> = all
            .iter()
            .filter(|p| p.any_running() && p.name != next.name)
            .collect();
        if next.all_running() && others.is_empty() {
            return Ok(());
        }
        for p in others {
            self.stop_project(p).await?;
        }
        if !next.all_running() {
            self.start_project(next, version).await?;
        }
        if let Err(e) = self.prune(&next.name).await {
            // The activation itself succeeded; pruning is tried again on the next one.
            tracing::warn!(target = %self.id, error = %e, "could not prune old projects");
        }
        Ok(())
    }

    /// `down` the slot's projects beyond the newest `keep`, never `current` or the one stopped
    /// last (the previous release); remove their files, then their images when no container
    /// uses them.
    async fn prune(&self, current: &str) -> Result<()> {
        let mut all = self.projects().await?;
        all.sort_by_key(|p| std::cmp::Reverse(p.last_event()));
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        keep.insert(current);
        if let Some(previous) = all
            .iter()
            .filter(|p| p.name != current && p.finished() > UNIX_EPOCH)
            .max_by_key(|p| p.finished())
        {
            keep.insert(previous.name.as_str());
        }
        keep.extend(all.iter().take(self.keep).map(|p| p.name.as_str()));
        let (kept, removed): (Vec<&Project>, Vec<&Project>) = all
            .iter()
            .partition(|p| keep.contains(p.name.as_str()) || p.any_running());
        if removed.is_empty() {
            return Ok(());
        }
        for p in &removed {
            let files = self.project_files_dir(&p.name);
            let cmd = match (p.version(), self.docker.host.file_kind(&files).await?) {
                (Some(v), Some(_)) => self.compose(&p.name, &v, None, &["down"]),
                _ => {
                    let mut args = vec!["rm".to_owned()];
                    args.extend(p.containers.iter().map(|c| c.id.clone()));
                    self.docker.command(args)
                }
            };
            self.docker.run_checked(&cmd).await?;
            self.docker.host.remove(&files).await?;
        }
        let in_use: BTreeSet<&str> = kept
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.image.as_str()))
            .collect();
        let images: BTreeSet<&str> = removed
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.image.as_str()))
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
        for p in self.projects().await?.iter().filter(|p| p.any_running()) {
            self.stop_project(p).await?;
        }
        Ok(())
    }

    async fn start_inner(&self) -> Result<()> {
        let all = self.projects().await?;
        let Some(p) = self.pick_current(&all)? else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find the current compose project",
                format!("of slot {} of {}", self.slot, self.app),
                "no project of this slot was ever started",
            ));
        };
        if p.all_running() {
            return Ok(());
        }
        let Some(version) = p.version() else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "read the version of compose project",
                p.name.clone(),
                format!("its containers have no valid {LABEL_VERSION} label"),
            ));
        };
        self.start_project(p, &version).await
    }
}

/// A service as `config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Service {
    name: String,
    image: Option<String>,
}

/// The services and their images in a `config` answer (compose's normalised YAML: services at
/// two spaces under `services:`, their keys at four).
fn parse_config(yaml: &str) -> Vec<Service> {
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            .unwrap_or(s)
            .to_owned()
    };
    let mut out: Vec<Service> = Vec::new();
    let mut in_services = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_services = line.trim_end() == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  ")
            && !rest.starts_with(' ')
            && let Some(name) = rest.trim_end().strip_suffix(':')
        {
            out.push(Service {
                name: unquote(name),
                image: None,
            });
        } else if let Some(rest) = line.strip_prefix("    image:")
            && let Some(s) = out.last_mut()
        {
            s.image = Some(unquote(rest));
        }
    }
    out
}

impl ComposeTargetBuilder {
    /// The slot's name in project names and labels (default: the target id).
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.target.slot = slot.into();
        self
    }

    /// Which compose drives the projects (default `ComposeCli::Standalone("docker-compose")`,
    /// compose v1, the one tested; `ComposeCli::Plugin` runs `docker compose`, untested).
    pub fn compose_cli(mut self, cli: ComposeCli) -> Self {
        self.target.cli = cli;
        self
    }

    /// The `docker` program on the host (default `docker`): inspect, load, image removal, and
    /// `docker compose` with [`ComposeCli::Plugin`].
    pub fn docker_program(mut self, program: impl Into<String>) -> Self {
        self.target.docker.program = program.into();
        self
    }

    /// The engine to talk to (`unix:///run/x.sock`): `-H` of docker commands, `DOCKER_HOST` in
    /// compose commands' environment.
    pub fn docker_host(mut self, socket: impl Into<String>) -> Self {
        self.target.docker.socket = Some(socket.into());
        self
    }

    /// The variable holding the release's version in the compose file (default
    /// `DEPLOY_VERSION`: `image: shop:${DEPLOY_VERSION}`).
    pub fn version_variable(mut self, name: impl Into<String>) -> Self {
        self.target.version_variable = name.into();
        self
    }

    /// A plain variable for the compose file's `${NAME}` references, in each compose command's
    /// environment (nothing secret).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.target.env.push((key.into(), value.into()));
        self
    }

    /// A secret variable for the compose file's `${NAME}` references: written to a 0600 env
    /// file on the host, given to `create` with `--env-file` and removed right after; never on
    /// a command line or in a command's environment.
    pub fn secret_env(mut self, key: impl Into<String>, value: SecretString) -> Self {
        self.target.secret_env.push((key.into(), value));
        self
    }

    /// How long `stop` waits after SIGTERM before SIGKILL (whole seconds; default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.target.stop_timeout = timeout;
        self
    }

    /// Keep the newest `n` projects of the slot (at least 2: the current and the previous).
    /// Default 3.
    pub fn keep(mut self, n: usize) -> Self {
        self.target.keep = n;
        self
    }

    /// Where on the host the projects' files live (default `/var/lib/deploy-docker/compose`;
    /// each target uses `<dir>/<app>-<slot>/<project>/`). Relative paths in the compose file
    /// resolve from there.
    pub fn project_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target.project_dir = dir.into();
        self
    }

    /// Where on the host image archives and env files are put for a moment (default `/tmp`).
    pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target.temp_dir = dir.into();
        self
    }

    /// Kill every command after `timeout` (`stop` gets the stop timeout more).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.target.docker.timeout = Some(timeout);
        self
    }

    /// Validate everything and build the target; every problem found is reported in one error.
    pub fn build(self) -> Result<ComposeTarget> {
        let t = self.target;
        let mut problems = Vec::new();
        for (what, v) in [("app", &t.app), ("slot", &t.slot)] {
            if !name_part_ok(v) {
                problems.push(format!(
                    "{what} {v:?} must be ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
                ));
            }
        }
        if let ComposeCli::Standalone(p) = &t.cli
            && p.is_empty()
        {
            problems.push("the compose program must not be empty".to_owned());
        }
        if t.docker.program.is_empty() {
            problems.push("the docker program must not be empty".to_owned());
        }
        if t.compose_file.file_name().is_none() {
            problems.push(format!(
                "compose file {} names no file",
                t.compose_file.display()
            ));
        }
        let mut names = BTreeSet::new();
        for k in std::iter::once(&t.version_variable)
            .chain(t.env.iter().map(|(k, _)| k))
            .chain(t.secret_env.iter().map(|(k, _)| k))
        {
            if !env_name_ok(k) {
                problems.push(format!("variable name {k:?} is not valid"));
            }
            if !names.insert(k.as_str()) {
                problems.push(format!("variable {k} is given twice"));
            }
            if k == "DOCKER_HOST" {
                problems.push("DOCKER_HOST is set by docker_host, not as a variable".to_owned());
            }
        }
        for (k, v) in &t.secret_env {
            if v.expose_secret().contains(['\n', '\r', '\0']) {
                // An env file holds one variable per line.
                problems.push(format!("secret variable {k} holds a line break or NUL"));
            }
        }
        if t.env.iter().any(|(_, v)| v.contains('\0')) {
            problems.push("a variable's value holds NUL".to_owned());
        }
        if t.stop_timeout.subsec_nanos() != 0 {
            problems.push(format!(
                "stop timeout {} must be whole seconds (stop -t takes seconds)",
                humantime::format_duration(t.stop_timeout)
            ));
        }
        if t.keep < 2 {
            problems.push(format!(
                "keep is {}, must be at least 2 (the current and the previous project)",
                t.keep
            ));
        }
        for (what, d) in [("project_dir", &t.project_dir), ("temp_dir", &t.temp_dir)] {
            if !d.is_absolute() {
                problems.push(format!("{what} {} must be an absolute path", d.display()));
            }
        }
        if t.docker.timeout.is_some_and(|d| d.is_zero()) {
            problems.push("command timeout must be greater than zero".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("compose target {}", t.id),
                problems.join("; "),
            ));
        }
        Ok(t)
    }
}

#[async_trait]
impl Target for ComposeTarget {
    fn id(&self) -> &TargetId {
        &self.id
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn current(&self) -> Result<Option<Version>> {
        self.read_current()
            .await
            .map_err(|e| self.wrap("read current compose project".to_owned(), e))
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

    fn builder() -> ComposeTargetBuilder {
        ComposeTarget::builder(
            TargetId::new("blue").unwrap(),
            Arc::new(LocalHost::new()),
            "Shop",
            "/srv/shop/docker-compose.prod.yml",
            Endpoint::http("127.0.0.1", 8081),
        )
    }

    #[test]
    fn project_names_follow_composes_rules() {
        let t = builder().build().unwrap();
        let v = Version::new("1.2.0-rc.1+g1A").unwrap();
        assert_eq!(t.project_name(&v), "shop-blue-1_2_0-rc_1_g1a");
        assert_eq!(
            t.project_files_dir("shop-blue-1_2_0"),
            Path::new("/var/lib/deploy-docker/compose/Shop-blue/shop-blue-1_2_0")
        );
    }

    #[test]
    fn compose_commands_carry_the_version_in_their_environment_and_no_secret() {
        let t = builder()
            .docker_host("unix:///run/x.sock")
            .env("PORT", "8081")
            .secret_env("TOKEN", SecretString::from("s3cret"))
            .build()
            .unwrap();
        let v = Version::new("1.2.0").unwrap();
        let c = t.compose(
            "shop-blue-1_2_0",
            &v,
            Some(Path::new("/tmp/x.env")),
            &["create"],
        );
        assert_eq!(
            c.display(),
            "docker-compose -p shop-blue-1_2_0 \
             -f /var/lib/deploy-docker/compose/Shop-blue/shop-blue-1_2_0/docker-compose.prod.yml \
             -f /var/lib/deploy-docker/compose/Shop-blue/shop-blue-1_2_0/deploy-labels.override.json \
             --env-file /tmp/x.env create"
        );
        let env: Vec<(String, String)> = c
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            env,
            vec![
                s("DOCKER_HOST", "unix:///run/x.sock"),
                s("DEPLOY_VERSION", "1.2.0"),
                s("PORT", "8081")
            ]
        );
        let later = t.compose("p", &v, None, &["start"]);
        assert!(later.env.iter().any(|(k, v)| k == "TOKEN" && v.is_empty()));
        let plugin = builder()
            .compose_cli(ComposeCli::Plugin)
            .build()
            .unwrap()
            .compose("p", &v, None, &["stop"]);
        assert!(plugin.display().starts_with("docker compose -p p -f "));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn config_answers_are_read() {
        let yaml = "services:\n  app:\n    environment:\n      PORT: '1'\n    image: t/app:1.0.0\n    \
                    labels:\n      a: b\n  side:\n    image: 'reg:5000/side:1.0.0'\n  \
                    built:\n    build:\n      context: .\nversion: '3.8'\nvolumes:\n  data: {}\n";
        assert_eq!(
            parse_config(yaml),
            vec![
                Service {
                    name: "app".into(),
                    image: Some("t/app:1.0.0".into())
                },
                Service {
                    name: "side".into(),
                    image: Some("reg:5000/side:1.0.0".into())
                },
                Service {
                    name: "built".into(),
                    image: None
                },
            ]
        );
    }

    #[test]
    fn build_reports_every_problem() {
        let e = builder()
            .slot("bad/slot")
            .env("1X", "v")
            .env("DEPLOY_VERSION", "x")
            .secret_env("K", SecretString::from("a\nb"))
            .keep(1)
            .stop_timeout(Duration::from_millis(1500))
            .project_dir("rel")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let m = e.to_string();
        for part in [
            "slot \"bad/slot\"",
            "\"1X\" is not valid",
            "DEPLOY_VERSION is given twice",
            "K holds a line break",
            "keep is 1",
            "stop timeout 1s 500ms",
            "project_dir rel",
        ] {
            assert!(m.contains(part), "{part} in {m}");
        }
    }
}
