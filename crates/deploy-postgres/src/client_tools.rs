//! Which `psql`, `pg_dump` and `pg_restore` a runner runs: the real binaries of a PostgreSQL
//! major version that fits the server, never Debian's `pg_wrapper`.
//!
//! On Debian and Ubuntu `/usr/bin/psql` is a link to postgresql-common's `pg_wrapper`, a Perl
//! script that picks a version and `exec`s `/usr/lib/postgresql/<major>/bin/psql`: 25 to 140 ms
//! a start, paid once per migration. The runner goes to the binaries directly. Without a
//! `bin_dir` it looks, on the host, at `pg_config --bindir`, every `/usr/lib/postgresql/*/bin`
//! (newest first) and the directory of the `psql` on `PATH` (links followed), learns each
//! one's major version (from the directory name, else from `psql --version`, once per process)
//! and [`choose`]s the one of the server's major, else the oldest newer one: `pg_dump` refuses
//! a server newer than itself.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use deploy_core::{Command, Error, ErrorKind, FileKind, Host, Result};

/// The three tools, all taken from one directory.
pub(crate) const TOOL_NAMES: [&str; 3] = ["psql", "pg_dump", "pg_restore"];

/// Where Debian and Ubuntu install each major version's binaries (`<root>/<major>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Time limit of each look at the host (`sh`, `psql --version`, `head`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL major version, counted as `server_version_num` counts: 16 is `160000`, 9.6 is
/// `90600` (before 10, the major version had two numbers). Displayed `16`, `9.6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgMajor(u32);

impl PgMajor {
    /// The major version of a `server_version_num` (`160004` → 16, `90624` → 9.6).
    pub fn from_version_num(num: u32) -> Self {
        if num >= 100_000 {
            Self(num / 10_000 * 10_000)
        } else {
            Self(num / 100 * 100)
        }
    }

    /// As `server_version_num` counts it, the minor part zero (`160000`, `90600`).
    pub fn version_num(self) -> u32 {
        self.0
    }

    /// The major version at the start of a version (`15.18`, `16devel`, `17beta1`, `9.6.24`).
    fn parse_prefix(s: &str) -> Option<(Self, &str)> {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let n = digits(s);
        let major: u32 = s.get(..n)?.parse().ok()?;
        let rest = &s[n..];
        if major >= 10 {
            return Some((Self(major.checked_mul(10_000)?), rest));
        }
        let rest = rest.strip_prefix('.')?;
        let m = digits(rest);
        let minor: u32 = rest.get(..m)?.parse().ok()?;
        (minor < 100).then_some((Self(major * 10_000 + minor * 100), &rest[m..]))
    }

    /// A directory name that is a major version and nothing else (`16`, `9.6`).
    fn parse_exact(s: &str) -> Option<Self> {
        Self::parse_prefix(s)
            .filter(|(_, rest)| rest.is_empty())
            .map(|(m, _)| m)
    }

    /// The major version in a tool's `--version` line (`psql (PostgreSQL) 15.18 (Debian …)`).
    pub(crate) fn of_version_output(text: &str) -> Option<Self> {
        let (_, after) = text.split_once("(PostgreSQL) ")?;
        Self::parse_prefix(after.trim_start()).map(|(m, _)| m)
    }
}

impl fmt::Display for PgMajor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 100_000 {
            write!(f, "{}", self.0 / 10_000)
        } else {
            write!(f, "{}.{}", self.0 / 10_000, self.0 / 100 % 100)
        }
    }
}

/// The `psql`, `pg_dump` and `pg_restore` a runner runs, all from one directory, and their
/// major version ([`PgMigrationRunner::tools`](crate::PgMigrationRunner::tools)).
///
/// Displayed as `psql, pg_dump, pg_restore 16 from /usr/lib/postgresql/16/bin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTools {
    dir: PathBuf,
    psql: PathBuf,
    pg_dump: PathBuf,
    pg_restore: PathBuf,
    major: PgMajor,
}

impl ClientTools {
    pub(crate) fn in_dir(dir: PathBuf, major: PgMajor) -> Self {
        Self {
            psql: dir.join("psql"),
            pg_dump: dir.join("pg_dump"),
            pg_restore: dir.join("pg_restore"),
            dir,
            major,
        }
    }

    /// The directory the three tools are taken from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `psql` that runs migrations and queries.
    pub fn psql(&self) -> &Path {
        &self.psql
    }

    /// The `pg_dump` that takes backups.
    pub fn pg_dump(&self) -> &Path {
        &self.pg_dump
    }

    /// The `pg_restore` that checks and restores backups.
    pub fn pg_restore(&self) -> &Path {
        &self.pg_restore
    }

    /// Their major version (`psql --version`'s, or the directory's name in
    /// `/usr/lib/postgresql`).
    pub fn major(&self) -> PgMajor {
        self.major
    }

    /// The path of `tool`, one of [`TOOL_NAMES`].
    pub(crate) fn path_of(&self, tool: &str) -> Option<&Path> {
        match tool {
            "psql" => Some(&self.psql),
            "pg_dump" => Some(&self.pg_dump),
            "pg_restore" => Some(&self.pg_restore),
            _ => None,
        }
    }
}

impl fmt::Display for ClientTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "psql, pg_dump, pg_restore {} from {}",
            self.major,
            self.dir.display()
        )
    }
}

/// A directory found on the host that may hold the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) dir: PathBuf,
    /// `None` when its `psql --version` could not be read.
    pub(crate) major: Option<PgMajor>,
    /// Its `psql` is Debian's `pg_wrapper` (or another Perl script): never run.
    pub(crate) wrapper: bool,
}

impl Candidate {
    pub(crate) fn real(dir: impl Into<PathBuf>, major: Option<PgMajor>) -> Self {
        Self {
            dir: dir.into(),
            major,
            wrapper: false,
        }
    }

    pub(crate) fn wrapper(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            major: None,
            wrapper: true,
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.wrapper, self.major) {
            (true, _) => write!(
                f,
                "{} (Debian's pg_wrapper, skipped)",
                self.dir.join("psql").display()
            ),
            (false, Some(m)) => write!(f, "{m} in {}", self.dir.display()),
            (false, None) => write!(f, "{} (version unknown)", self.dir.display()),
        }
    }
}

/// The candidate to run against a server of major version `server`: the wrapper and those of
/// unknown or older versions left out, the one of the server's own major, else the oldest
/// newer one (the nearest to the server); the first found among equals.
pub(crate) fn choose(candidates: &[Candidate], server: PgMajor) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| !c.wrapper)
        .filter_map(|c| Some((c.major?, c)))
        .filter(|(m, _)| *m >= server)
        .min_by_key(|(m, _)| *m)
        .map(|(_, c)| c)
}

/// The candidate whose psql asks the server its version: the newest real one (any psql can
/// ask; the newest knows every older server).
pub(crate) fn newest(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| !c.wrapper)
        .max_by_key(|c| c.major)
}

/// The error when no candidate fits a server of major version `server`.
pub(crate) fn none_fits(
    candidates: &[Candidate],
    server: Option<PgMajor>,
    host: &str,
    object: &str,
) -> Error {
    let found = if candidates.is_empty() {
        format!(
            "found none (looked at `pg_config --bindir`, {DEBIAN_ROOT}/*/bin and the psql on PATH)"
        )
    } else {
        let list: Vec<String> = candidates.iter().map(Candidate::to_string).collect();
        format!("found {}", list.join(", "))
    };
    let (wanted, install) = match server {
        Some(m) => (
            format!("of the server's major version {m} or newer"),
            m.to_string(),
        ),
        None => (String::new(), "<the server's major version>".to_owned()),
    };
    let wanted = if wanted.is_empty() {
        String::new()
    } else {
        format!(" {wanted}")
    };
    Error::new(
        ErrorKind::NotFound,
        "choose psql, pg_dump and pg_restore for",
        object.to_owned(),
        format!(
            "no psql, pg_dump and pg_restore{wanted} on host {host}: {found}; install them \
             (`apt-get install postgresql-client-{install}`) or name their directory with bin_dir"
        ),
    )
}

/// Major versions read from `--version`, by host and program: each is asked once per process.
fn version_cache() -> &'static Mutex<HashMap<(String, PathBuf), PgMajor>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, PathBuf), PgMajor>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The major version of `program` (`psql`, `pg_dump`, ...) on `host`, from its `--version`;
/// asked once per process.
pub(crate) async fn version_of(host: &dyn Host, program: &Path) -> Result<PgMajor> {
    let key = (host.name().to_owned(), program.to_path_buf());
    if let Some(m) = version_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(*m);
    }
    let operation = "learn the version of";
    let object = format!("{} on host {}", program.display(), host.name());
    let out = host
        .run(
            &Command::new(program)
                .arg("--version")
                .timeout(PROBE_TIMEOUT),
        )
        .await
        .map_err(|e| e.context(operation, object.clone()))?;
    let text = out.stdout_text();
    if !out.success() {
        return Err(Error::new(
            ErrorKind::CommandFailed,
            operation,
            object,
            format!(
                "`--version` failed: {}",
                crate::tools::shorten(out.stderr_text().trim())
            ),
        ));
    }
    let major = PgMajor::of_version_output(&text).ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            operation,
            object.clone(),
            format!(
                "`--version` printed {:?}, not `… (PostgreSQL) <version>`",
                crate::tools::shorten(text.trim())
            ),
        )
    })?;
    version_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, major);
    Ok(major)
}

/// The directories on `host` that may hold the tools, in the order they are preferred among
/// equals: `pg_config --bindir`, `/usr/lib/postgresql/*/bin` newest first, the directory of
/// the `psql` on `PATH`. Each real directory holds all three tools and is listed once (links
/// followed); a `psql` that is Debian's wrapper is listed as such. What cannot be looked at
/// is left out.
pub(crate) async fn discover(host: &dyn Host) -> Vec<Candidate> {
    let mut found = Vec::new();
    let (pg_config, path_psql) = probe(host).await;
    if let Some(dir) = pg_config {
        add_psql(host, &mut found, &dir.join("psql")).await;
    }
    for (major, bin) in debian_dirs(host).await {
        if !found.iter().any(|c| c.dir == bin) && has_tools(host, &bin).await {
            found.push(Candidate::real(bin, Some(major)));
        }
    }
    if let Some(psql) = path_psql {
        add_psql(host, &mut found, &psql).await;
    }
    found
}

/// `pg_config --bindir` and `command -v psql` on the host, in one shell.
async fn probe(host: &dyn Host) -> (Option<PathBuf>, Option<PathBuf>) {
    let script = "printf 'pg_config=%s\\n' \"$(pg_config --bindir 2>/dev/null)\"; \
                  printf 'psql=%s\\n' \"$(command -v psql 2>/dev/null)\"";
    let cmd = Command::new("sh")
        .args(["-c", script])
        .timeout(PROBE_TIMEOUT);
    let Ok(out) = host.run(&cmd).await else {
        return (None, None);
    };
    let text = out.stdout_text();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .filter(|v| v.starts_with('/'))
            .map(PathBuf::from)
    };
    (value("pg_config="), value("psql="))
}

/// `/usr/lib/postgresql/<major>/bin`, newest first.
async fn debian_dirs(host: &dyn Host) -> Vec<(PgMajor, PathBuf)> {
    let Ok(entries) = host.list_dir(Path::new(DEBIAN_ROOT)).await else {
        return Vec::new();
    };
    let mut dirs: Vec<(PgMajor, PathBuf)> = entries
        .into_iter()
        .filter(|(_, k)| matches!(k, FileKind::Dir | FileKind::Symlink))
        .filter_map(|(name, _)| {
            let major = PgMajor::parse_exact(&name)?;
            Some((major, Path::new(DEBIAN_ROOT).join(name).join("bin")))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs
}

/// The major of a `/usr/lib/postgresql/<major>/bin` directory, from its name.
fn debian_major(dir: &Path) -> Option<PgMajor> {
    let version = dir.parent()?;
    (dir.file_name()? == "bin" && version.parent()? == Path::new(DEBIAN_ROOT)).then_some(())?;
    PgMajor::parse_exact(version.file_name()?.to_str()?)
}

/// Whether `dir` holds `psql`, `pg_dump` and `pg_restore` (files or links).
async fn has_tools(host: &dyn Host, dir: &Path) -> bool {
    let Ok(entries) = host.list_dir(dir).await else {
        return false;
    };
    TOOL_NAMES.iter().all(|t| {
        entries
            .iter()
            .any(|(n, k)| n == t && matches!(k, FileKind::File | FileKind::Symlink))
    })
}

/// Add the directory of `psql` (links followed), or the wrapper it is.
async fn add_psql(host: &dyn Host, found: &mut Vec<Candidate>, psql: &Path) {
    let Some(at) = psql.parent() else { return };
    let Some(target) = resolve(host, psql).await else {
        return;
    };
    let wrapper = match &target {
        Target::Wrapper => true,
        Target::File(file) => {
            debian_major(file.parent().unwrap_or(file)).is_none()
                && is_perl_script(host, file).await
        }
    };
    if wrapper {
        if !found.iter().any(|c| c.wrapper && c.dir == at) {
            found.push(Candidate::wrapper(at));
        }
        return;
    }
    let Target::File(file) = target else { return };
    let Some(dir) = file.parent() else { return };
    if found.iter().any(|c| c.dir == dir) || !has_tools(host, dir).await {
        return;
    }
    let major = match debian_major(dir) {
        Some(m) => Some(m),
        None => version_of(host, &dir.join("psql")).await.ok(),
    };
    found.push(Candidate::real(dir, major));
}

/// Where a chain of links ends.
enum Target {
    /// A link (on the way) to postgresql-common's `pg_wrapper`.
    Wrapper,
    /// A file.
    File(PathBuf),
}

/// Follow the links from `path` (at most 40) to a file.
async fn resolve(host: &dyn Host, path: &Path) -> Option<Target> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        if p.file_name().is_some_and(|n| n == "pg_wrapper") {
            return Some(Target::Wrapper);
        }
        match host.file_kind(&p).await.ok()?? {
            FileKind::Symlink => {
                let to = host.read_link(&p).await.ok()??;
                p = if to.is_absolute() {
                    to
                } else {
                    p.parent()?.join(to)
                };
            }
            FileKind::File => {
                // `/usr/bin/../lib/…` reads `/usr/lib/…` unless a directory on the way is a
                // link (`/bin` → `/usr/bin`): the tidy form is taken only where it is the file.
                let tidy = lexically_normal(&p);
                if tidy != p && host.file_kind(&tidy).await.ok()? == Some(FileKind::File) {
                    p = tidy;
                }
                return Some(Target::File(p));
            }
            _ => return None,
        }
    }
    None
}

/// `path` with `.` and `..` taken out, without looking at the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether `file` is a Perl script (`#!/usr/bin/perl`), as `pg_wrapper` is.
async fn is_perl_script(host: &dyn Host, file: &Path) -> bool {
    let head = Command::new("head")
        .args(["-c", "128", "--"])
        .arg(file.as_os_str())
        .timeout(PROBE_TIMEOUT);
    match host.run(&head).await {
        Ok(out) if out.success() => {
            let text = out.stdout_text();
            text.starts_with("#!") && text.lines().next().is_some_and(|l| l.contains("perl"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> PgMajor {
        PgMajor::parse_exact(s).unwrap()
    }

    fn debian(major: &str) -> Candidate {
        Candidate::real(format!("{DEBIAN_ROOT}/{major}/bin"), Some(m(major)))
    }

    #[test]
    fn versions_are_read_as_the_server_counts_them() {
        assert_eq!(m("16").version_num(), 160_000);
        assert_eq!(m("9.6").version_num(), 90_600);
        assert_eq!(PgMajor::from_version_num(160_004), m("16"));
        assert_eq!(PgMajor::from_version_num(90_624), m("9.6"));
        assert_eq!(m("9.6").to_string(), "9.6");
        assert_eq!(m("16").to_string(), "16");
        assert!(m("9.6") < m("10"));
        assert!(m("9.5") < m("9.6"));
        for (line, major) in [
            ("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15"),
            ("pg_dump (PostgreSQL) 9.6.0\n", "9.6"),
            ("psql (PostgreSQL) 17beta1\n", "17"),
            ("pg_restore (PostgreSQL) 16devel\n", "16"),
        ] {
            assert_eq!(PgMajor::of_version_output(line), Some(m(major)), "{line}");
        }
        assert_eq!(PgMajor::of_version_output("psql 15.18"), None);
        assert_eq!(PgMajor::of_version_output("pg_dump (PostgreSQL) 9"), None);
        for name in ["9", "16a", "", "x", "9.6.1"] {
            assert_eq!(PgMajor::parse_exact(name), None, "{name}");
        }
    }

    #[test]
    fn the_servers_own_major_is_chosen() {
        let found = [debian("17"), debian("16"), debian("15")];
        assert_eq!(choose(&found, m("16")), Some(&found[1]));
    }

    #[test]
    fn else_the_oldest_newer_one() {
        let found = [debian("17"), debian("16"), debian("14")];
        assert_eq!(choose(&found, m("15")), Some(&found[1]));
        // Before 10, majors have two numbers.
        let found = [debian("10"), debian("9.6")];
        assert_eq!(choose(&found, m("9.5")), Some(&found[1]));
        assert_eq!(choose(&found, m("9.6")), Some(&found[1]));
    }

    #[test]
    fn none_fits_a_newer_server_and_the_error_says_what_was_found() {
        let found = [
            debian("15"),
            debian("14"),
            Candidate::wrapper("/usr/bin"),
            Candidate::real("/opt/pg/bin", None),
        ];
        assert_eq!(choose(&found, m("16")), None);
        let e = none_fits(&found, Some(m("16")), "local", "database shop");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "choose psql, pg_dump and pg_restore for database shop: no psql, pg_dump and \
             pg_restore of the server's major version 16 or newer on host local: found \
             15 in /usr/lib/postgresql/15/bin, 14 in /usr/lib/postgresql/14/bin, /usr/bin/psql \
             (Debian's pg_wrapper, skipped), /opt/pg/bin (version unknown); install them \
             (`apt-get install postgresql-client-16`) or name their directory with bin_dir"
        );
        let e = none_fits(&[], None, "deploy@db-1:22", "database shop");
        assert!(e.message().contains("found none"), "{e}");
        assert!(
            e.message()
                .contains("postgresql-client-<the server's major version>"),
            "{e}"
        );
    }

    #[test]
    fn the_wrapper_is_never_chosen() {
        // Even listed first and answering for every version.
        let wrapper = Candidate {
            dir: "/usr/bin".into(),
            major: Some(m("16")),
            wrapper: true,
        };
        let found = [wrapper.clone(), debian("16")];
        assert_eq!(choose(&found, m("16")), Some(&found[1]));
        assert_eq!(newest(&found), Some(&found[1]));
        assert_eq!(choose(std::slice::from_ref(&wrapper), m("16")), None);
        assert_eq!(newest(&[wrapper]), None);
    }

    #[test]
    fn among_equals_the_first_found_and_unknown_versions_are_never_chosen() {
        let found = [
            Candidate::real("/usr/local/pgsql/bin", Some(m("16"))),
            debian("16"),
        ];
        assert_eq!(choose(&found, m("16")), Some(&found[0]));
        let unknown = [Candidate::real("/opt/pg/bin", None)];
        assert_eq!(choose(&unknown, m("9.6")), None);
        assert_eq!(newest(&unknown), Some(&unknown[0]));
    }

    #[test]
    fn debian_directories_name_their_major() {
        assert_eq!(
            debian_major(Path::new("/usr/lib/postgresql/16/bin")),
            Some(m("16"))
        );
        assert_eq!(
            debian_major(Path::new("/usr/lib/postgresql/9.6/bin")),
            Some(m("9.6"))
        );
        assert_eq!(debian_major(Path::new("/usr/lib/postgresql/16/lib")), None);
        assert_eq!(debian_major(Path::new("/opt/postgresql/16/bin")), None);
        assert_eq!(
            lexically_normal(Path::new("/usr/bin/../share/postgresql-common/pg_wrapper")),
            Path::new("/usr/share/postgresql-common/pg_wrapper")
        );
    }

    /// Directories of the `psql` found on `PATH` or by `pg_config`: links followed, a Perl
    /// script or a link to `pg_wrapper` taken for the wrapper, the version of an unknown
    /// directory read from its `psql --version`.
    #[tokio::test]
    async fn a_psql_is_followed_to_its_directory_or_known_for_the_wrapper() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let host = deploy_core::LocalHost::new();
        let root = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let script = |path: &Path, text: &str| {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // A Perl script, as pg_wrapper is, whatever its name.
        let perl = dir("perl");
        for t in TOOL_NAMES {
            script(&perl.join(t), "#!/usr/bin/perl -w\nexec '/nowhere';\n");
        }
        // A link to a file named pg_wrapper (not looked into).
        let linked = dir("linked");
        script(&dir("share").join("pg_wrapper"), "#!/bin/sh\n");
        symlink("../share/pg_wrapper", linked.join("psql")).unwrap();
        // Real tools (shell scripts here) behind a link: their directory, their version.
        let real = dir("pg14/bin");
        for t in TOOL_NAMES {
            script(
                &real.join(t),
                &format!("#!/bin/sh\necho '{t} (PostgreSQL) 14.2'\n"),
            );
        }
        let on_path = dir("path");
        symlink("../pg14/bin/psql", on_path.join("psql")).unwrap();
        // A psql without pg_dump and pg_restore beside it: not a candidate.
        let lone = dir("lone");
        script(
            &lone.join("psql"),
            "#!/bin/sh\necho 'psql (PostgreSQL) 16.1'\n",
        );

        let mut found = Vec::new();
        for psql in [
            perl.join("psql"),
            linked.join("psql"),
            on_path.join("psql"),
            real.join("psql"),
            lone.join("psql"),
            root.path().join("missing/psql"),
        ] {
            add_psql(&host, &mut found, &psql).await;
        }
        assert_eq!(
            found,
            [
                Candidate::wrapper(&perl),
                Candidate::wrapper(&linked),
                Candidate::real(&real, Some(m("14"))),
            ]
        );
        assert_eq!(choose(&found, m("13")), Some(&found[2]));
        assert_eq!(choose(&found, m("15")), None);
    }

    /// On this machine: the wrapper (when postgresql-common installed it) is found as such, and
    /// every `/usr/lib/postgresql/<major>/bin` is a candidate.
    #[tokio::test]
    async fn discovery_on_this_machine() {
        let host = deploy_core::LocalHost::new();
        let found = discover(&host).await;
        let debian: Vec<PgMajor> = debian_dirs(&host).await.into_iter().map(|d| d.0).collect();
        for major in &debian {
            assert!(
                found.iter().any(|c| c.major == Some(*major) && !c.wrapper),
                "{found:?}"
            );
        }
        if std::fs::read_link("/usr/bin/psql")
            .is_ok_and(|t| t.ends_with("postgresql-common/pg_wrapper"))
        {
            assert!(found.iter().any(|c| c.wrapper), "{found:?}");
        }
        // Each directory once.
        for c in &found {
            assert_eq!(
                found.iter().filter(|o| o.dir == c.dir).count(),
                1,
                "{found:?}"
            );
        }
    }
}
