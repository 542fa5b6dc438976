//! [`ReleaseDirTarget`]: releases unpacked side by side under a root directory, with a `current`
//! symlink switched atomically (the Capistrano layout), on any [`Host`].

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::local::{LocalHost, unique_suffix};
use crate::model::{Endpoint, Release, TargetId, Version};
use crate::traits::{Command, FileKind, Host, HostExt, Target};

/// The file whose presence in `releases/<version>/` says the release is complete.
const COMPLETE_MARKER: &str = ReleaseDirTarget::COMPLETE_MARKER;

/// How many entries the history file keeps at most.
const HISTORY_LIMIT: usize = 200;

/// Lines kept in `revisions.log`.
const REVISIONS_LIMIT: usize = 1000;

/// A [`Target`] that keeps releases in directories under a root on a [`Host`]:
///
/// ```text
/// <root>/releases/<version>/            one directory per prepared release
/// <root>/releases/<version>/.deploy-complete
/// <root>/releases/.history              versions in order of their last prepare/activate
/// <root>/current -> releases/<version>  relative symlink, swapped atomically
/// ```
///
/// - `prepare` unpacks into `releases/.<version>.partial-<unique>` and renames it into place only
///   once complete, so an interrupted prepare never leaves a half release at the final path.
///   The artifact is a `.tar`, `.tar.gz` or `.tgz` archive on the deploying machine, uploaded and
///   unpacked with `tar -xf ARCHIVE -C DIR` on the host, or a local directory, packed first with
///   the local `tar`. A release without artifact gets an empty directory.
/// - `activate` creates `current.tmp-<unique>` and renames it over `current`, runs the restart
///   command, then prunes: the newest `keep` releases (by last prepare or activate) are kept, and
///   the current and the previously activated ones always are.
/// - Commands are argument vectors, never shell strings; in every argument the placeholders
///   `{version}`, `{release_dir}`, `{root}` and `{target}` are replaced by their values.
///
/// ```no_run
/// # fn demo() -> deploy_core::Result<()> {
/// use std::sync::Arc;
/// use deploy_core::{Endpoint, LocalHost, ReleaseDirTarget, TargetId};
/// let target = ReleaseDirTarget::builder(
///     TargetId::new("blue")?,
///     Arc::new(LocalHost::new()),
///     "/srv/app/blue".into(),
///     Endpoint::http("127.0.0.1", 8081),
/// )
/// .restart(["systemctl", "restart", "app@{target}"])
/// .keep(3)
/// .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ReleaseDirTarget {
    id: TargetId,
    host: Arc<dyn Host>,
    root: PathBuf,
    endpoint: Endpoint,
    restart: Option<Vec<String>>,
    stop: Option<Vec<String>>,
    start: Option<Vec<String>>,
    keep: usize,
    command_timeout: Option<Duration>,
}

/// Builds a [`ReleaseDirTarget`]; see [`ReleaseDirTarget::builder`].
#[derive(Debug, Clone)]
pub struct ReleaseDirTargetBuilder {
    target: ReleaseDirTarget,
}

impl ReleaseDirTarget {
    /// The file whose presence in `releases/<version>/` says the release is complete.
    pub const COMPLETE_MARKER: &'static str = ".deploy-complete";

    /// A builder for target `id` keeping its releases under `root` (an absolute path) on `host`,
    /// serving at `endpoint`. Defaults: no commands, keep 5 releases, no command timeout.
    pub fn builder(
        id: TargetId,
        host: Arc<dyn Host>,
        root: PathBuf,
        endpoint: Endpoint,
    ) -> ReleaseDirTargetBuilder {
        ReleaseDirTargetBuilder {
            target: ReleaseDirTarget {
                id,
                host,
                root,
                endpoint,
                restart: None,
                stop: None,
                start: None,
                keep: 5,
                command_timeout: None,
            },
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where release `version` lives: `<root>/releases/<version>`.
    pub fn release_dir(&self, version: &Version) -> PathBuf {
        self.releases().join(version.as_str())
    }

    fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    fn history_path(&self) -> PathBuf {
        self.releases().join(".history")
    }

    /// `err` with the operation and this target in front, keeping kind and retry decision.
    fn wrap(&self, operation: String, err: Error) -> Error {
        err.context(operation, format!("on target {}", self.id))
    }

    /// Whether `releases/<version>` exists and carries the completion marker.
    async fn is_complete(&self, version: &Version) -> Result<bool> {
        let dir = self.release_dir(version);
        let marker = dir.join(COMPLETE_MARKER);
        // Both asked at once (over SSH, two requests in flight on one channel).
        let (dir, marker) = tokio::join!(self.host.file_kind(&dir), self.host.file_kind(&marker));
        Ok(dir? == Some(FileKind::Dir) && marker? == Some(FileKind::File))
    }

    /// The version `current` points at, if it exists.
    async fn read_current(&self) -> Result<Option<Version>> {
        let link = self.current_link();
        let Some(to) = self.host.read_link(&link).await? else {
            return Ok(None);
        };
        let bad = || {
            Error::new(
                ErrorKind::Protocol,
                "read current release",
                link.display().to_string(),
                format!("points at {}, not at releases/<version>", to.display()),
            )
        };
        let name = to.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
        let parent = to.parent().ok_or_else(bad)?;
        if parent != Path::new("releases") && parent != self.releases() {
            return Err(bad());
        }
        Version::new(name)
            .map(Some)
            .map_err(|e| bad().with_source(e))
    }

    /// The command `argv` with placeholders replaced, for `version` (if any).
    fn command(&self, argv: &[String], version: Option<&Version>) -> Result<Command> {
        let root = self.root.to_string_lossy();
        let release_dir = version.map(|v| self.release_dir(v).to_string_lossy().into_owned());
        let mut out = Vec::with_capacity(argv.len());
        for arg in argv {
            out.push(substitute(
                arg,
                version.map(Version::as_str),
                release_dir.as_deref(),
                &root,
                self.id.as_str(),
            )?);
        }
        let mut cmd = Command::from_argv(out)?;
        if let Some(t) = self.command_timeout {
            cmd = cmd.timeout(t);
        }
        Ok(cmd)
    }

    async fn load_history(&self) -> Result<History> {
        match self.host.read_file(&self.history_path()).await {
            Ok(bytes) => Ok(History::parse(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(e),
        }
    }

    async fn save_history(&self, history: &History) -> Result<()> {
        self.host
            .write_file(&self.history_path(), history.render().as_bytes(), None)
            .await
    }

    async fn record(&self, kind: Event, version: &Version) -> Result<()> {
        let mut h = self.load_history().await?;
        h.record(kind, version);
        self.save_history(&h).await
    }

    /// Remove leftovers of interrupted prepares of `version`.
    async fn clean_partials(&self, version: &Version) -> Result<()> {
        let prefixes = [
            format!(".{version}.partial-"),
            format!(".{version}.upload-"),
            // A host's own temporary name for an upload cut off before its rename.
            format!("..{version}.upload-"),
        ];
        for (name, _) in self.host.list_dir(&self.releases()).await? {
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                self.host.remove(&self.releases().join(name)).await?;
            }
        }
        Ok(())
    }

    /// Put the artifact's content into `dir` on the host.
    async fn unpack(&self, version: &Version, artifact: &Path, dir: &Path) -> Result<()> {
        let meta = tokio::fs::metadata(artifact).await.map_err(|e| {
            Error::io(
                "read artifact",
                format!("{} on the deploying machine", artifact.display()),
                e,
            )
        })?;
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.is_dir() {
            let packed = LocalTemp(
                std::env::temp_dir().join(format!("deploy-{version}-{}.tar", unique_suffix())),
            );
            // Created 0o600 before `tar` fills it: the release may hold secrets.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&packed.0)
                .map_err(|e| {
                    Error::io(
                        "pack artifact",
                        format!("{} on the deploying machine", packed.0.display()),
                        e,
                    )
                })?;
            let mut pack = Command::new("tar")
                .arg("-cf")
                .arg(&packed.0)
                .arg("-C")
                .arg(artifact)
                .arg(".");
            if let Some(t) = self.command_timeout {
                pack = pack.timeout(t);
            }
            LocalHost::new().run_checked(&pack).await?;
            self.upload_and_extract(version, &packed.0, ".tar", dir)
                .await
        } else if let Some(ext) = [".tar.gz", ".tgz", ".tar"]
            .into_iter()
            .find(|e| name.ends_with(e))
        {
            self.upload_and_extract(version, artifact, ext, dir).await
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                "read artifact",
                format!("{} on the deploying machine", artifact.display()),
                "is neither a directory nor a .tar, .tar.gz or .tgz archive",
            ))
        }
    }

    async fn upload_and_extract(
        &self,
        version: &Version,
        archive: &Path,
        ext: &str,
        dir: &Path,
    ) -> Result<()> {
        let remote = self
            .releases()
            .join(format!(".{version}.upload-{}{ext}", unique_suffix()));
        let result = async {
            self.host.upload(archive, &remote, Some(0o600)).await?;
            let mut extract = Command::new("tar")
                .arg("-xf")
                .arg(&remote)
                .arg("-C")
                .arg(dir);
            if let Some(t) = self.command_timeout {
                extract = extract.timeout(t);
            }
            self.host.run_checked(&extract).await.map(drop)
        }
        .await;
        let removed = self.host.remove(&remote).await;
        result.and(removed)
    }

    async fn prepare_inner(&self, release: &Release) -> Result<()> {
        let version = &release.version;
        let releases = self.releases();
        let dest = self.release_dir(version);
        self.host.create_dir_all(&releases).await?;
        if self.is_complete(version).await? {
            // Recorded again so that pruning sees it as recent: it is about to be activated.
            return self.record(Event::Prepared, version).await;
        }
        if self.host.file_kind(&dest).await?.is_some() {
            // Not made by `prepare` (which renames only complete releases into place).
            if self.read_current().await.ok().flatten().as_ref() == Some(version) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "replace",
                    dest.display().to_string(),
                    format!(
                        "it has no {COMPLETE_MARKER} but is the current release; refusing to replace it"
                    ),
                ));
            }
            self.host.remove(&dest).await?;
        }
        self.clean_partials(version).await?;

        let partial = releases.join(format!(".{version}.partial-{}", unique_suffix()));
        let filled = async {
            self.host.create_dir_all(&partial).await?;
            if let Some(artifact) = &release.artifact {
                self.unpack(version, artifact, &partial).await?;
            }
            let marker = format!("{version}\n");
            self.host
                .write_file(&partial.join(COMPLETE_MARKER), marker.as_bytes(), None)
                .await?;
            self.host.rename(&partial, &dest).await
        }
        .await;
        if let Err(e) = filled {
            if let Err(cleanup) = self.host.remove(&partial).await {
                tracing::warn!(target = %self.id, error = %cleanup, "could not remove a partial release");
            }
            return Err(e);
        }
        self.record(Event::Prepared, version).await
    }

    async fn activate_inner(&self, version: &Version) -> Result<()> {
        // The three reads at once: an activation waits on a round trip to the host, not three.
        let (complete, current, history) = tokio::join!(
            self.is_complete(version),
            self.read_current(),
            self.load_history()
        );
        if !complete? {
            return Err(Error::new(
                ErrorKind::NotFound,
                "find release",
                self.release_dir(version).display().to_string(),
                format!("not prepared (missing or without {COMPLETE_MARKER})"),
            ));
        }
        let (current, mut history) = (current?, history?);
        if current.as_ref() == Some(version) && history.last_activated() == Some(version) {
            // Already current and restarted on it: nothing needs to restart.
            return Ok(());
        }
        if current.as_ref() != Some(version) {
            let link = self.current_link();
            let tmp = self.root.join(format!("current.tmp-{}", unique_suffix()));
            let relative = Path::new("releases").join(version.as_str());
            self.host.symlink(&relative, &tmp).await?;
            if let Err(e) = self.host.rename(&tmp, &link).await {
                let _ = self.host.remove(&tmp).await;
                return Err(e);
            }
        }
        // The history records the activation only after the restart worked, so that a retry
        // after a failed restart restarts again.
        if let Some(argv) = &self.restart {
            self.host
                .run_checked(&self.command(argv, Some(version))?)
                .await?;
        }
        history.record(Event::Activated, version);
        // The history (then the pruning it guides) beside the revisions log: the release is
        // live and restarted either way, so the log tells it even when the history's write fails.
        let recorded = async {
            self.save_history(&history).await?;
            if let Err(e) = self.prune(version, &mut history).await {
                // The activation itself succeeded; pruning is retried on the next one.
                tracing::warn!(target = %self.id, error = %e, "could not prune old releases");
            }
            Ok(())
        };
        let (recorded, logged) = tokio::join!(recorded, self.log_revision(version));
        if let Err(e) = logged {
            // The activation itself succeeded; the log is a record, not a step.
            tracing::warn!(target = %self.id, error = %e, "could not append to revisions.log");
        }
        recorded
    }

    /// Append the activation of `version` to `<root>/revisions.log`, so that the server itself
    /// tells what ran there: `<UTC time> activated <version> by <user>@<host> run <run>` (by
    /// whoever runs this process when no run is known). The newest [`REVISIONS_LIMIT`] lines
    /// are kept.
    async fn log_revision(&self, version: &Version) -> Result<()> {
        let path = self.root.join("revisions.log");
        let who = match crate::state::current_run() {
            Some(r) => format!("{}@{} run {}", r.user, r.host, r.run_id),
            None => {
                let me = crate::engine::LockInfo::this_process("");
                format!("{}@{}", me.owner, me.host)
            }
        };
        let line = format!(
            "{} activated {version} by {who}\n",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let old = match self.host.read_file(&path).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut lines: Vec<&str> = old.lines().collect();
        lines.drain(..lines.len().saturating_sub(REVISIONS_LIMIT - 1));
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
        self.host
            .write_file(&path, text.as_bytes(), Some(0o644))
            .await
    }

    /// Remove releases beyond the newest `keep`, never the current or the previous one.
    async fn prune(&self, current: &Version, history: &mut History) -> Result<()> {
        let mut keep: BTreeSet<Version> = BTreeSet::new();
        keep.insert(current.clone());
        if let Some(previous) = history.previous_activated() {
            keep.insert(previous.clone());
        }
        let mut releases: Vec<Version> = self
            .host
            .list_dir(&self.releases())
            .await?
            .into_iter()
            .filter(|(name, kind)| *kind == FileKind::Dir && !name.starts_with('.'))
            .filter_map(|(name, _)| Version::new(name).ok())
            .collect();
        // Newest first; releases the history does not know count as the oldest.
        let rank = history.ranks();
        releases.sort_by_key(|v| std::cmp::Reverse(rank.get(v).copied()));
        keep.extend(releases.iter().take(self.keep).cloned());
        let mut removed = Vec::new();
        for v in releases.into_iter().filter(|v| !keep.contains(v)) {
            tracing::debug!(target = %self.id, version = %v, "pruning release");
            self.host.remove(&self.release_dir(&v)).await?;
            removed.push(v);
        }
        if !removed.is_empty() {
            history.forget(&removed);
            self.save_history(history).await?;
        }
        Ok(())
    }

    async fn run_lifecycle(&self, argv: &[String], need_current: bool) -> Result<()> {
        let version = self.read_current().await?;
        let uses_version = argv
            .iter()
            .any(|a| a.contains("{version}") || a.contains("{release_dir}"));
        if version.is_none() && (need_current || uses_version) {
            if need_current {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "find current release",
                    self.current_link().display().to_string(),
                    "no release was activated yet",
                ));
            }
            // Nothing was ever activated, so nothing is serving: stopping is done.
            return Ok(());
        }
        self.host
            .run_checked(&self.command(argv, version.as_ref())?)
            .await
            .map(drop)
    }
}

impl ReleaseDirTargetBuilder {
    /// Run `argv` after switching `current` (placeholders substituted). It must return only
    /// once the old process has stopped answering (`systemctl restart` does; a graceful reload
    /// that lets old workers answer on must wait for them): an old process still answering at
    /// the endpoint reports the old version, and the health wait fails at that answer.
    pub fn restart<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target.restart = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Run `argv` to stop serving (placeholders substituted; `{version}` is the current one).
    pub fn stop_command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target.stop = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Run `argv` to start serving the current version (placeholders substituted).
    pub fn start_command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target.start = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Keep the newest `n` releases (at least 2: the current and the previous). Default 5.
    pub fn keep(mut self, n: usize) -> Self {
        self.target.keep = n;
        self
    }

    /// Kill every command (restart, stop, start, `tar`) after `timeout`.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.target.command_timeout = Some(timeout);
        self
    }

    /// Validate everything and build the target; every problem found is reported in one error.
    pub fn build(self) -> Result<ReleaseDirTarget> {
        let t = self.target;
        let mut problems = Vec::new();
        if !t.root.is_absolute() {
            problems.push(format!(
                "root {} must be an absolute path",
                t.root.display()
            ));
        } else if t.root.parent().is_none() {
            problems.push("root must not be /".to_owned());
        }
        if t.root.to_str().is_none() {
            problems.push(format!("root {} must be valid UTF-8", t.root.display()));
        }
        for (what, argv) in [
            ("restart", &t.restart),
            ("stop", &t.stop),
            ("start", &t.start),
        ] {
            if let Some(argv) = argv {
                match argv.first() {
                    None => problems.push(format!("{what} command must not be empty")),
                    Some(p) if p.is_empty() => {
                        problems.push(format!("{what} command has an empty program"))
                    }
                    Some(_) => {}
                }
            }
        }
        if t.keep < 2 {
            problems.push(format!(
                "keep is {}, must be at least 2 (the current and the previous release)",
                t.keep
            ));
        }
        if t.command_timeout.is_some_and(|d| d.is_zero()) {
            problems.push("command timeout must be greater than zero".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build",
                format!("release directory target {}", t.id),
                problems.join("; "),
            ));
        }
        Ok(t)
    }
}

/// `arg` with `{version}`, `{release_dir}`, `{root}` and `{target}` replaced; other braces are
/// kept as they are (`${HOME}` in an `sh -c` script stays).
fn substitute(
    arg: &str,
    version: Option<&str>,
    release_dir: Option<&str>,
    root: &str,
    target: &str,
) -> Result<String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (value, len) = [
            ("{version}", version),
            ("{release_dir}", release_dir),
            ("{root}", Some(root)),
            ("{target}", Some(target)),
        ]
        .into_iter()
        .find(|(p, _)| tail.starts_with(p))
        .map(|(p, v)| (Some(v), p.len()))
        .unwrap_or((None, 1));
        match value {
            Some(Some(v)) => out.push_str(v),
            Some(None) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "build command",
                    format!("argument {arg:?}"),
                    "it uses {version} or {release_dir} but no version is known",
                ));
            }
            None => out.push('{'),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A local file removed when dropped.
struct LocalTemp(PathBuf);

impl Drop for LocalTemp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Prepared,
    Activated,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Activated => "activated",
        }
    }
}

/// `releases/.history`: one `prepared <version>` or `activated <version>` line per event, oldest
/// first, each (event, version) pair at most once (at its latest position).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct History {
    entries: Vec<(Event, Version)>,
}

impl History {
    fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let (kind, v) = line.split_once(' ')?;
                let kind = match kind {
                    "prepared" => Event::Prepared,
                    "activated" => Event::Activated,
                    _ => return None,
                };
                Some((kind, Version::new(v.trim()).ok()?))
            })
            .collect();
        Self { entries }
    }

    fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{} {v}\n", k.as_str()))
            .collect()
    }

    fn record(&mut self, kind: Event, version: &Version) {
        self.entries.retain(|(k, v)| !(*k == kind && v == version));
        self.entries.push((kind, version.clone()));
        let excess = self.entries.len().saturating_sub(HISTORY_LIMIT);
        self.entries.drain(..excess);
    }

    fn activations(&self) -> impl DoubleEndedIterator<Item = &Version> {
        self.entries
            .iter()
            .filter(|(k, _)| *k == Event::Activated)
            .map(|(_, v)| v)
    }

    fn last_activated(&self) -> Option<&Version> {
        self.activations().next_back()
    }

    fn previous_activated(&self) -> Option<&Version> {
        self.activations().rev().nth(1)
    }

    /// For each version, the position of its latest event (higher is newer).
    fn ranks(&self) -> HashMap<Version, usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (v.clone(), i))
            .collect()
    }

    fn forget(&mut self, removed: &[Version]) {
        self.entries.retain(|(_, v)| !removed.contains(v));
    }
}

#[async_trait]
impl Target for ReleaseDirTarget {
    fn id(&self) -> &TargetId {
        &self.id
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn current(&self) -> Result<Option<Version>> {
        self.read_current()
            .await
            .map_err(|e| self.wrap("read current release".to_owned(), e))
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
        let Some(argv) = &self.stop else {
            return Ok(());
        };
        self.run_lifecycle(argv, false)
            .await
            .map_err(|e| self.wrap("stop".to_owned(), e))
    }

    async fn start(&self) -> Result<()> {
        let Some(argv) = &self.start else {
            return Ok(());
        };
        self.run_lifecycle(argv, true)
            .await
            .map_err(|e| self.wrap("start".to_owned(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_replaces_only_known_placeholders() {
        let s = substitute(
            "{root}/x-{version} {target} ${HOME} {other} {",
            Some("1.0"),
            Some("/r/releases/1.0"),
            "/r",
            "blue",
        )
        .unwrap();
        assert_eq!(s, "/r/x-1.0 blue ${HOME} {other} {");
        assert_eq!(
            substitute(
                "{release_dir}/bin",
                Some("1"),
                Some("/r/releases/1"),
                "/r",
                "b"
            )
            .unwrap(),
            "/r/releases/1/bin"
        );
        let e = substitute("{version}", None, None, "/r", "b").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn substitution_does_not_rescan_values() {
        // A value that looks like a placeholder is not substituted again.
        let s = substitute("{target}{root}", None, None, "{target}", "{root}").unwrap();
        assert_eq!(s, "{root}{target}");
    }

    #[test]
    fn history_orders_and_dedupes() {
        let v = |s: &str| Version::new(s).unwrap();
        let mut h = History::default();
        h.record(Event::Prepared, &v("1"));
        h.record(Event::Activated, &v("1"));
        h.record(Event::Prepared, &v("2"));
        h.record(Event::Activated, &v("2"));
        h.record(Event::Activated, &v("1"));
        assert_eq!(h.last_activated(), Some(&v("1")));
        assert_eq!(h.previous_activated(), Some(&v("2")));
        let parsed = History::parse(&(h.render() + "garbage\nactivated a/b\n"));
        assert_eq!(parsed, h);
        h.forget(&[v("2")]);
        assert_eq!(h.render(), "prepared 1\nactivated 1\n");
    }
}
