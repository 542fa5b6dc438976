//! The migrations folder: the three layouts teams already have, checksums that ignore line
//! endings, and the additive/destructive classification.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use deploy_core::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};

mod classify;
mod scan;
#[cfg(test)]
mod tests;

pub(crate) use classify::classify;
#[cfg(test)]
pub(crate) use scan::scan;

/// The first-line marker that runs a migration outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- deploy:no-transaction";

/// A migration's version: dot-separated numbers (`7`, `1.2`, `20261121093000`), ordered
/// numerically part by part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MigrationVersion(Vec<u64>);

impl MigrationVersion {
    /// Parse `7`, `1.2`, `1_2` (Flyway) or `2026-11-21-093000` (diesel; dashes dropped).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let s: String = s.chars().filter(|c| *c != '-').collect();
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
        parts.filter(|p| !p.is_empty()).map(Self)
    }

    /// The single number, when the version has one part.
    pub(crate) fn as_number(&self) -> Option<u64> {
        match self.0.as_slice() {
            [n] => Some(*n),
            _ => None,
        }
    }
}

impl Ord for MigrationVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for MigrationVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MigrationVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
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

/// Whether a migration can run while the previous release serves traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Compatible with the code of the previous release.
    Additive,
    /// Breaks the previous release or locks tables for long; the reason says which statement.
    Destructive(String),
}

impl Classification {
    /// The reason, for a destructive migration.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Additive => None,
            Self::Destructive(r) => Some(r),
        }
    }
}

/// One migration read from the folder.
#[derive(Debug, Clone)]
pub(crate) struct Migration {
    /// Its version.
    pub version: MigrationVersion,
    /// Its name (`add_orders`).
    pub name: String,
    /// The file applying it.
    pub up_path: PathBuf,
    /// The file reverting it, if any.
    pub down_path: Option<PathBuf>,
    /// SHA-256 (hex) of the up file with line endings normalised.
    pub checksum: String,
    /// Runs outside a transaction (first line `-- deploy:no-transaction`).
    pub no_transaction: bool,
    pub(crate) up_sql: String,
    pub(crate) down_sql: Option<String>,
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

fn read_sql(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io("read migration", path.display().to_string(), e))?;
    String::from_utf8(bytes).map_err(|_| bad_file(path, "is not UTF-8 text"))
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

/// A file or folder name split into (kind, version, name).
struct Entry {
    path: PathBuf,
    layout: Layout,
    version: MigrationVersion,
    name: String,
    down: bool,
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
                "{why}; expected V<version>__<name>.sql, U<version>__<name>.sql, <version>_<name>.up.sql or <version>_<name>.down.sql"
            ),
        ))
    };
    let first = file.chars().next().unwrap_or(' ');
    if (first == 'V' || first == 'U') && file.contains("__") {
        let stem = &file[1..file.len() - 4];
        let (v, name) = stem.split_once("__").unwrap_or((stem, ""));
        let Some(version) = MigrationVersion::parse(v) else {
            return bad(&format!("version {v:?} is not a number"));
        };
        check_name(&path, name)?;
        return Ok(Some(Entry {
            path: path.clone(),
            layout: Layout::Flyway,
            version,
            name: name.to_owned(),
            down: first == 'U',
        }));
    }
    if first == 'R' && file.starts_with("R__") {
        return Err(bad_file(
            &path,
            "repeatable migrations (R__) are not supported",
        ));
    }
    let (stem, down) = if let Some(s) = file.strip_suffix(".up.sql") {
        (s, false)
    } else if let Some(s) = file.strip_suffix(".down.sql") {
        (s, true)
    } else {
        return bad("the name matches no known layout");
    };
    let Some((v, name)) = stem.split_once('_') else {
        return bad("there is no '_' between version and name");
    };
    let Some(version) = MigrationVersion::parse(v).filter(|v| v.as_number().is_some()) else {
        return bad(&format!("version {v:?} is not a number"));
    };
    check_name(&path, name)?;
    Ok(Some(Entry {
        path,
        layout: Layout::GolangMigrate,
        version,
        name: name.to_owned(),
        down,
    }))
}

/// The version and name of a diesel migration folder (`2026-11-21-093000_add_orders`) at `path`.
fn parse_folder(path: &Path, name: &str) -> Result<(MigrationVersion, String)> {
    let Some((v, mname)) = name.split_once('_') else {
        return Err(bad_file(
            path,
            "a migration folder is named <version>_<name> (e.g. 2026-11-21-093000_add_orders)",
        ));
    };
    let Some(version) = MigrationVersion::parse(v).filter(|v| v.as_number().is_some()) else {
        return Err(bad_file(
            path,
            format!("version {v:?} is not a number or timestamp"),
        ));
    };
    check_name(path, mname)?;
    Ok((version, mname.to_owned()))
}

/// Read and check every migration of `dir`, in order.
pub(crate) fn load(dir: &Path, opts: LoadOptions) -> Result<(Layout, Vec<Migration>)> {
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
            entries.push(Entry {
                path: up,
                layout: Layout::Diesel,
                version: version.clone(),
                name: mname.clone(),
                down: false,
            });
            let down = path.join("down.sql");
            if down.is_file() {
                entries.push(Entry {
                    path: down,
                    layout: Layout::Diesel,
                    version,
                    name: mname,
                    down: true,
                });
            }
        } else if let Some(e) = parse_file(dir, name)? {
            entries.push(e);
        }
    }
    let Some(layout) = entries.first().map(|e| e.layout) else {
        return Ok((Layout::Flyway, Vec::new()));
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
    let mut downs: Vec<Entry> = Vec::new();
    for e in entries {
        if e.down {
            downs.push(e);
            continue;
        }
        let sql = read_sql(&e.path)?;
        let first_line = sql
            .trim_start_matches('\u{feff}')
            .lines()
            .next()
            .unwrap_or("");
        let mut no_transaction = first_line.trim() == NO_TRANSACTION_MARKER;
        if layout == Layout::Diesel
            && let Some(parent) = e.path.parent()
        {
            let meta = parent.join("metadata.toml");
            if meta.is_file() {
                let m = read_sql(&meta)?;
                if m.lines()
                    .any(|l| l.replace(' ', "") == "run_in_transaction=false")
                {
                    no_transaction = true;
                }
            }
        }
        if let Some(prev) = ups.get(&e.version) {
            return Err(bad_file(
                &e.path,
                format!(
                    "version {} is also used by {}",
                    e.version,
                    prev.up_path.display()
                ),
            ));
        }
        ups.insert(
            e.version.clone(),
            Migration {
                version: e.version,
                name: e.name,
                up_path: e.path,
                down_path: None,
                checksum: checksum(&sql),
                no_transaction,
                up_sql: sql,
                down_sql: None,
            },
        );
    }
    for d in downs {
        let Some(m) = ups.get_mut(&d.version) else {
            return Err(bad_file(
                &d.path,
                format!(
                    "is a down migration for version {}, which has no up migration",
                    d.version
                ),
            ));
        };
        if let Some(prev) = &m.down_path {
            return Err(bad_file(
                &d.path,
                format!(
                    "version {} already has the down migration {}",
                    d.version,
                    prev.display()
                ),
            ));
        }
        m.down_sql = Some(read_sql(&d.path)?);
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
    Ok((layout, migrations))
}
