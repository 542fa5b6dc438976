//! The migrations folder: the three layouts teams already have, checksums that ignore line
//! endings, and the additive/destructive classification.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use deploy_core::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};

mod classify;
mod scan;
#[cfg(test)]
mod tests;
mod transaction;

pub use classify::{Compatibility, Reversibility};
pub(crate) use classify::{classify, reversibility, view_drops};
#[cfg(test)]
pub(crate) use scan::scan;
pub(crate) use transaction::Shape;
pub use transaction::Transaction;

/// The first-line marker that runs a migration outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- deploy:no-transaction";

/// A migration's version, ordered as its tool orders it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum MigrationVersion {
    /// Numbers compared part by part: Flyway's `1.2.10` (after `1.2.9`), golang-migrate's `42`.
    Parts(Vec<u64>),
    /// Diesel's version: the folder name before its first `_`, dashes dropped, compared as
    /// text, as diesel compares it (`202607271433130000` before `20260901000000`).
    Text(String),
}

impl MigrationVersion {
    /// Parse a version as `layout` writes it: `7`, `1.2`, `1_2` (Flyway), `000042`
    /// (golang-migrate), `2026-11-21-093000` or `2026-07-27-143313-0000` (diesel).
    pub(crate) fn parse(layout: Layout, s: &str) -> Option<Self> {
        match layout {
            Layout::Diesel => {
                let t: String = s.chars().filter(|c| *c != '-').collect();
                (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then_some(Self::Text(t))
            }
            Layout::Flyway | Layout::GolangMigrate => {
                let parts: Option<Vec<u64>> = s
                    .split(['.', '_'])
                    .map(|p| {
                        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                            None
                        } else {
                            p.parse().ok()
                        }
                    })
                    .collect();
                let parts = parts.filter(|p| !p.is_empty())?;
                (layout == Layout::Flyway || parts.len() == 1).then_some(Self::Parts(parts))
            }
        }
    }

    /// The single number, for a one-part numeric version.
    pub(crate) fn as_number(&self) -> Option<u64> {
        match self {
            Self::Parts(p) => match p.as_slice() {
                [n] => Some(*n),
                _ => None,
            },
            Self::Text(_) => None,
        }
    }
}

impl fmt::Display for MigrationVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parts(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// Which folder layout a migrations folder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `V<version>__<name>.sql` with optional `U<version>__<name>.sql` (Flyway).
    Flyway,
    /// `<version>_<name>.up.sql` / `<version>_<name>.down.sql` (golang-migrate).
    GolangMigrate,
    /// `<version>_<name>/up.sql` and `down.sql`, one folder per migration (diesel).
    Diesel,
}

/// One migration read from the folder.
#[derive(Debug, Clone)]
pub(crate) struct Migration {
    /// Its version.
    pub version: MigrationVersion,
    /// Its name (`add_orders`).
    pub name: String,
    /// How its tool names it: the file (`V2__add_orders.sql`, `000002_add_orders.up.sql`) or,
    /// for diesel, the folder (`2026-11-21-093000_add_orders`).
    pub label: String,
    /// The file applying it.
    pub up_path: PathBuf,
    /// The file reverting it, if any.
    pub down_path: Option<PathBuf>,
    /// SHA-256 (hex) of the up file with line endings normalised.
    pub checksum: String,
    /// How the up file runs, or why it cannot run all-or-nothing (`line N: why; fix`).
    pub up_shape: std::result::Result<Shape, String>,
    /// The same for the down file.
    pub down_shape: Option<std::result::Result<Shape, String>>,
    pub(crate) up_sql: String,
    pub(crate) down_sql: Option<String>,
}

impl Migration {
    /// How it runs; an error naming the file and line when it cannot run all-or-nothing.
    pub(crate) fn shape(&self) -> Result<&Shape> {
        self.up_shape
            .as_ref()
            .map_err(|why| bad_file(&self.up_path, why.clone()))
    }

    /// How its down file runs, if it has one.
    pub(crate) fn down_shape(&self) -> Option<Result<&Shape>> {
        let path = self.down_path.as_deref()?;
        let shape = self.down_shape.as_ref()?;
        Some(shape.as_ref().map_err(|why| bad_file(path, why.clone())))
    }
}

/// The prefix of a repeatable migration's file, and of its version in the history table.
pub(crate) const REPEATABLE_PREFIX: &str = "R__";

/// A Flyway repeatable migration (`R__<description>.sql`): applied after the versioned ones,
/// in description order, and again whenever its checksum changes.
#[derive(Debug, Clone)]
pub(crate) struct Repeatable {
    /// Its description (`refresh_views`).
    pub description: String,
    /// Its file name.
    pub label: String,
    pub path: PathBuf,
    pub checksum: String,
    pub shape: std::result::Result<Shape, String>,
    pub(crate) sql: String,
}

impl Repeatable {
    /// Its version in the history table: `R__<description>`.
    pub(crate) fn version(&self) -> String {
        format!("{REPEATABLE_PREFIX}{}", self.description)
    }

    /// How it runs; an error naming the file and line when it cannot run all-or-nothing.
    pub(crate) fn shape(&self) -> Result<&Shape> {
        self.shape
            .as_ref()
            .map_err(|why| bad_file(&self.path, why.clone()))
    }
}

/// What a migrations folder holds.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    pub layout: Layout,
    /// Versioned migrations, in order.
    pub migrations: Vec<Migration>,
    /// Repeatable migrations (Flyway), in description order.
    pub repeatables: Vec<Repeatable>,
}

/// SHA-256 (lowercase hex) of `sql` with a leading BOM dropped and CRLF/CR turned into LF, so
/// that a checkout with other line endings is not drift.
pub(crate) fn checksum(sql: &str) -> String {
    let s = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    let normalised = s.replace("\r\n", "\n").replace('\r', "\n");
    let digest = Sha256::digest(normalised.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Options for reading a folder.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoadOptions {
    pub(crate) allow_gaps: bool,
}

fn bad_file(path: &Path, cause: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "read migration",
        path.display().to_string(),
        cause,
    )
}

/// The text of a migration file, without a leading UTF-8 byte order mark (Windows editors
/// write one; Flyway and psql skip it, and so does the SQL scanner then).
fn read_sql(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io("read migration", path.display().to_string(), e))?;
    let text = String::from_utf8(bytes).map_err(|_| bad_file(path, "is not UTF-8 text"))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

fn check_name(path: &Path, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(bad_file(
            path,
            "the migration has no name after its version",
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad_file(path, "the name holds control characters"));
    }
    Ok(())
}

/// What a file or folder name says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Up,
    Down,
    /// A Flyway repeatable migration (`R__<description>.sql`); it has no version.
    Repeatable,
}

/// A file or folder name split into (layout, kind, version, name).
struct Entry {
    path: PathBuf,
    layout: Layout,
    kind: Kind,
    /// `None` for a repeatable migration.
    version: Option<MigrationVersion>,
    name: String,
    /// The name its tool gives it: the file name, or diesel's folder name.
    label: String,
}

fn parse_file(dir: &Path, file: &str) -> Result<Option<Entry>> {
    let path = dir.join(file);
    if !file.ends_with(".sql") {
        return Ok(None);
    }
    let bad = |why: &str| {
        Err(bad_file(
            &path,
            format!(
                "{why}; expected V<version>__<name>.sql, U<version>__<name>.sql, R__<name>.sql, \
                 <version>_<name>.up.sql or <version>_<name>.down.sql"
            ),
        ))
    };
    let entry = |layout, kind, version, name: &str| {
        Ok(Some(Entry {
            path: path.clone(),
            layout,
            kind,
            version,
            name: name.to_owned(),
            label: file.to_owned(),
        }))
    };
    let first = file.chars().next().unwrap_or(' ');
    if let Some(description) = file
        .strip_prefix(REPEATABLE_PREFIX)
        .and_then(|f| f.strip_suffix(".sql"))
    {
        check_name(&path, description)?;
        return entry(Layout::Flyway, Kind::Repeatable, None, description);
    }
    if (first == 'V' || first == 'U') && file.contains("__") {
        let stem = &file[1..file.len() - 4];
        let (v, name) = stem.split_once("__").unwrap_or((stem, ""));
        let Some(version) = MigrationVersion::parse(Layout::Flyway, v) else {
            return bad(&format!("version {v:?} is not a number"));
        };
        check_name(&path, name)?;
        let kind = if first == 'U' { Kind::Down } else { Kind::Up };
        return entry(Layout::Flyway, kind, Some(version), name);
    }
    let (stem, kind) = if let Some(s) = file.strip_suffix(".up.sql") {
        (s, Kind::Up)
    } else if let Some(s) = file.strip_suffix(".down.sql") {
        (s, Kind::Down)
    } else {
        return bad("the name matches no known layout");
    };
    let Some((v, name)) = stem.split_once('_') else {
        return bad("there is no '_' between version and name");
    };
    let Some(version) = MigrationVersion::parse(Layout::GolangMigrate, v) else {
        return bad(&format!("version {v:?} is not a number"));
    };
    check_name(&path, name)?;
    entry(Layout::GolangMigrate, kind, Some(version), name)
}

/// The version and name of a diesel migration folder at `path`: `2026-11-21-093000_add_orders`
/// or, as newer diesel writes them, `2026-07-27-143313-0000_add_orders`.
fn parse_folder(path: &Path, name: &str) -> Result<(MigrationVersion, String)> {
    let Some((v, mname)) = name.split_once('_') else {
        return Err(bad_file(
            path,
            "a migration folder is named <version>_<name> (e.g. 2026-11-21-093000_add_orders)",
        ));
    };
    let Some(version) = MigrationVersion::parse(Layout::Diesel, v) else {
        return Err(bad_file(
            path,
            format!("version {v:?} is not a timestamp or number"),
        ));
    };
    check_name(path, mname)?;
    Ok((version, mname.to_owned()))
}

/// The first line of `sql` (a BOM dropped), trimmed.
fn first_line(sql: &str) -> &str {
    sql.trim_start_matches('\u{feff}')
        .lines()
        .next()
        .unwrap_or("")
        .trim()
}

/// Why a file is marked to run outside a transaction, if it is.
fn marker(sql: &str, diesel_metadata: Option<&Path>) -> Result<Option<String>> {
    if first_line(sql) == NO_TRANSACTION_MARKER {
        return Ok(Some(format!("its first line is `{NO_TRANSACTION_MARKER}`")));
    }
    if let Some(meta) = diesel_metadata.filter(|m| m.is_file()) {
        let m = read_sql(meta)?;
        if m.lines()
            .any(|l| l.replace([' ', '\t'], "") == "run_in_transaction=false")
        {
            return Ok(Some(
                "its metadata.toml says run_in_transaction = false".to_owned(),
            ));
        }
    }
    Ok(None)
}

/// Read and check every migration of `dir`, in order.
pub(crate) fn load(dir: &Path, opts: LoadOptions) -> Result<Folder> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read migrations folder", dir.display().to_string(), e))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent =
            ent.map_err(|e| Error::io("read migrations folder", dir.display().to_string(), e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let is_dir = ent
            .file_type()
            .map_err(|e| {
                Error::io(
                    "read migrations folder",
                    ent.path().display().to_string(),
                    e,
                )
            })?
            .is_dir();
        names.push((name, is_dir));
    }
    names.sort();

    let mut entries = Vec::new();
    for (name, is_dir) in &names {
        if *is_dir {
            let path = dir.join(name);
            let (version, mname) = parse_folder(&path, name)?;
            let up = path.join("up.sql");
            if !up.is_file() {
                return Err(bad_file(&path, "the folder has no up.sql"));
            }
            for (file, kind) in [(up, Kind::Up), (path.join("down.sql"), Kind::Down)] {
                if kind == Kind::Down && !file.is_file() {
                    continue;
                }
                entries.push(Entry {
                    path: file,
                    layout: Layout::Diesel,
                    kind,
                    version: Some(version.clone()),
                    name: mname.clone(),
                    label: name.clone(),
                });
            }
        } else if let Some(e) = parse_file(dir, name)? {
            entries.push(e);
        }
    }
    let Some(layout) = entries.first().map(|e| e.layout) else {
        return Ok(Folder {
            layout: Layout::Flyway,
            migrations: Vec::new(),
            repeatables: Vec::new(),
        });
    };
    if let Some(other) = entries.iter().find(|e| e.layout != layout) {
        return Err(bad_file(
            &other.path,
            format!(
                "uses the {:?} layout while the folder uses {layout:?}; keep one layout",
                other.layout
            ),
        ));
    }

    let mut ups: BTreeMap<MigrationVersion, Migration> = BTreeMap::new();
    let mut downs: Vec<(MigrationVersion, Entry)> = Vec::new();
    let mut repeatables: BTreeMap<String, Repeatable> = BTreeMap::new();
    for e in entries {
        let Some(version) = e.version.clone() else {
            let sql = read_sql(&e.path)?;
            let shape = transaction::analyze(&sql, marker(&sql, None)?);
            repeatables.insert(
                e.name.clone(),
                Repeatable {
                    description: e.name,
                    label: e.label,
                    checksum: checksum(&sql),
                    shape,
                    path: e.path,
                    sql,
                },
            );
            continue;
        };
        if e.kind == Kind::Down {
            downs.push((version, e));
            continue;
        }
        let sql = read_sql(&e.path)?;
        let metadata = (layout == Layout::Diesel)
            .then(|| e.path.parent().map(|p| p.join("metadata.toml")))
            .flatten();
        let up_shape = transaction::analyze(&sql, marker(&sql, metadata.as_deref())?);
        if let Some(prev) = ups.get(&version) {
            return Err(bad_file(
                &e.path,
                format!(
                    "version {version} is also used by {}",
                    prev.up_path.display()
                ),
            ));
        }
        ups.insert(
            version.clone(),
            Migration {
                version,
                name: e.name,
                label: e.label,
                up_path: e.path,
                down_path: None,
                checksum: checksum(&sql),
                up_shape,
                down_shape: None,
                up_sql: sql,
                down_sql: None,
            },
        );
    }
    for (version, d) in downs {
        let Some(m) = ups.get_mut(&version) else {
            return Err(bad_file(
                &d.path,
                format!("is a down migration for version {version}, which has no up migration"),
            ));
        };
        if let Some(prev) = &m.down_path {
            return Err(bad_file(
                &d.path,
                format!(
                    "version {version} already has the down migration {}",
                    prev.display()
                ),
            ));
        }
        let sql = read_sql(&d.path)?;
        m.down_shape = Some(transaction::analyze(&sql, marker(&sql, None)?));
        m.down_sql = Some(sql);
        m.down_path = Some(d.path);
    }
    let migrations: Vec<Migration> = ups.into_values().collect();

    // Sequence-numbered layouts (not timestamps) must not skip numbers unless allowed.
    if !opts.allow_gaps && layout != Layout::Diesel {
        let numbers: Option<Vec<u64>> = migrations.iter().map(|m| m.version.as_number()).collect();
        if let Some(numbers) = numbers.filter(|n| n.iter().all(|v| *v < 1_000_000_000)) {
            for (i, w) in numbers.windows(2).enumerate() {
                if w[1] != w[0] + 1 {
                    return Err(bad_file(
                        &migrations[i + 1].up_path,
                        format!(
                            "version {} follows {}: versions {}..{} are missing (allow gaps to accept this)",
                            w[1],
                            w[0],
                            w[0] + 1,
                            w[1] - 1
                        ),
                    ));
                }
            }
        }
    }
    Ok(Folder {
        layout,
        migrations,
        repeatables: repeatables.into_values().collect(),
    })
}
