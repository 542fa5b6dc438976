//! The migrations folder: the three layouts teams already have, checksums that ignore line
//! endings, and the additive/destructive classification.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use deploy_core::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};

/// The first-line marker that runs a migration outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- deploy:no-transaction";

/// A migration's version: dot-separated numbers (`7`, `1.2`, `20261121093000`), ordered
/// numerically part by part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MigrationVersion(Vec<u64>);

impl MigrationVersion {
    /// Parse `7`, `1.2`, `1_2` (Flyway) or `2026-11-21-093000` (diesel; dashes dropped).
    pub fn parse(s: &str) -> Option<Self> {
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
    pub fn as_number(&self) -> Option<u64> {
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
pub fn checksum(sql: &str) -> String {
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
            let Some((v, mname)) = name.split_once('_') else {
                return Err(bad_file(
                    &path,
                    "a migration folder is named <version>_<name> (e.g. 2026-11-21-093000_add_orders)",
                ));
            };
            let Some(version) = MigrationVersion::parse(v).filter(|v| v.as_number().is_some())
            else {
                return Err(bad_file(
                    &path,
                    format!("version {v:?} is not a number or timestamp"),
                ));
            };
            check_name(&path, mname)?;
            let up = path.join("up.sql");
            if !up.is_file() {
                return Err(bad_file(&path, "the folder has no up.sql"));
            }
            entries.push(Entry {
                path: up,
                layout: Layout::Diesel,
                version: version.clone(),
                name: mname.to_owned(),
                down: false,
            });
            let down = path.join("down.sql");
            if down.is_file() {
                entries.push(Entry {
                    path: down,
                    layout: Layout::Diesel,
                    version,
                    name: mname.to_owned(),
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

/// Statements of `sql` with comments removed, string literals blanked and dollar-quoted bodies
/// dropped, each upper-cased with single spaces and spaced punctuation.
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '-' && b.get(i + 1) == Some(&'-') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            cur.push(' ');
            continue;
        }
        if c == '/' && b.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            cur.push(' ');
            continue;
        }
        if c == '\'' {
            i += 1;
            while i < b.len() {
                if b[i] == '\'' {
                    if b.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            cur.push_str(" '' ");
            continue;
        }
        if c == '"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += 1;
            }
            i += 1;
            let ident: String = b[start + 1..(i - 1).min(b.len())].iter().collect();
            cur.push_str(&ident.to_uppercase());
            continue;
        }
        if c == '$' {
            // A dollar quote: $$ or $tag$.
            let mut j = i + 1;
            while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            if j < b.len() && b[j] == '$' && !(j > i + 1 && b[i + 1].is_ascii_digit()) {
                let tag: String = b[i..=j].iter().collect();
                let rest: String = b[j + 1..].iter().collect();
                let end = rest
                    .find(&tag)
                    .map(|p| rest[..p].chars().count())
                    .unwrap_or(rest.chars().count());
                i = j + 1 + end + tag.chars().count();
                cur.push_str(" $BODY$ ");
                continue;
            }
        }
        if c == ';' {
            out.push(std::mem::take(&mut cur));
            i += 1;
            continue;
        }
        if matches!(c, '(' | ')' | ',') {
            cur.push(' ');
            cur.push(c);
            cur.push(' ');
        } else {
            cur.push(c);
        }
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The unqualified, lower-cased name after `words[i..]`, skipping `IF EXISTS`/`IF NOT EXISTS`/
/// `ONLY`.
fn object_after(words: &[&str], mut i: usize) -> Option<String> {
    while let Some(w) = words.get(i) {
        if matches!(*w, "IF" | "NOT" | "EXISTS" | "ONLY") {
            i += 1;
        } else {
            break;
        }
    }
    words
        .get(i)
        .map(|w| w.rsplit('.').next().unwrap_or(w).to_lowercase())
}

/// Classify the statements of one migration. `created` holds tables created by migrations that
/// run before this one in the same run (and gets this one's); `validated_not_null` holds
/// `table.column` pairs that have a validated `CHECK (column IS NOT NULL)` in the database.
pub(crate) fn classify(
    sql: &str,
    created: &mut HashSet<String>,
    validated_not_null: &HashSet<String>,
) -> Classification {
    let mut validated_in_file = false;
    for s in statements(sql) {
        let words: Vec<&str> = s.split(' ').collect();
        let has = |p: &str| format!(" {s} ").contains(&format!(" {p} "));
        let starts = |p: &str| s.starts_with(p);
        let destructive =
            |r: String| Classification::Destructive(format!("{r}: `{}`", shorten(&s)));

        if starts("CREATE TABLE") || starts("CREATE UNLOGGED TABLE") {
            let i = words.iter().position(|w| *w == "TABLE").unwrap_or(0) + 1;
            if let Some(t) = object_after(&words, i) {
                created.insert(t);
            }
            continue;
        }
        for (kw, what) in [
            ("DROP TABLE", "drops a table"),
            ("DROP SCHEMA", "drops a schema"),
            ("DROP VIEW", "drops a view"),
            ("DROP MATERIALIZED VIEW", "drops a materialized view"),
            ("DROP TYPE", "drops a type"),
            ("DROP FUNCTION", "drops a function"),
            ("DROP SEQUENCE", "drops a sequence"),
            ("TRUNCATE", "truncates a table"),
            ("DELETE FROM", "deletes rows"),
        ] {
            if starts(kw) {
                return destructive(what.to_owned());
            }
        }
        if starts("DROP INDEX") && !has("CONCURRENTLY") {
            return destructive(
                "drops an index without CONCURRENTLY (ACCESS EXCLUSIVE lock)".into(),
            );
        }
        if starts("ALTER") && has("RENAME") {
            return destructive("renames an object the previous release uses".into());
        }
        if starts("CREATE INDEX") || starts("CREATE UNIQUE INDEX") {
            if !has("CONCURRENTLY") {
                let table = words
                    .iter()
                    .position(|w| *w == "ON")
                    .and_then(|i| object_after(&words, i + 1));
                if let Some(t) = table.filter(|t| !created.contains(t)) {
                    return destructive(format!(
                        "creates an index on the existing table {t} without CONCURRENTLY (blocks writes)"
                    ));
                }
            }
            continue;
        }
        if starts("ALTER TABLE") {
            let table = object_after(&words, 2).unwrap_or_default();
            let existing = !created.contains(&table);
            if has("VALIDATE CONSTRAINT") {
                validated_in_file = true;
            }
            for (i, w) in words.iter().enumerate() {
                let next = words.get(i + 1).copied().unwrap_or("");
                match *w {
                    "DROP" => {
                        // `ALTER [COLUMN] c DROP NOT NULL / DEFAULT` changes a column, keeps it.
                        let column_action = (i >= 2 && words[i - 2] == "ALTER")
                            || (i >= 3 && words[i - 3] == "ALTER" && words[i - 2] == "COLUMN");
                        let keeps = matches!(
                            next,
                            "CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION"
                        );
                        if !column_action && !keeps {
                            return destructive(format!("drops a column of {table}"));
                        }
                    }
                    "TYPE"
                        if i >= 2
                            && (words[i - 2] == "ALTER"
                                || words[i - 2] == "COLUMN"
                                || words[i - 1] == "DATA") =>
                    {
                        return destructive(format!("changes a column type of {table}"));
                    }
                    "SET" if next == "NOT" && words.get(i + 2) == Some(&"NULL") && existing => {
                        let col = if i >= 1 {
                            words[i - 1].to_lowercase()
                        } else {
                            String::new()
                        };
                        if !validated_in_file
                            && !validated_not_null.contains(&format!("{table}.{col}"))
                        {
                            return destructive(format!(
                                "sets NOT NULL on {table}.{col} without a validated CHECK ({col} IS NOT NULL) (full scan under ACCESS EXCLUSIVE lock)"
                            ));
                        }
                    }
                    _ => {}
                }
            }
            if existing && has("ADD") {
                let adds_constraint = has("FOREIGN KEY") || has("REFERENCES") || has("CHECK");
                if adds_constraint && !has("NOT VALID") {
                    return destructive(format!(
                        "adds a constraint to {table} without NOT VALID (full scan under lock)"
                    ));
                }
                if (has("PRIMARY KEY") || has("UNIQUE")) && !has("USING INDEX") {
                    return destructive(format!(
                        "adds a unique index to {table} without CONCURRENTLY (blocks writes)"
                    ));
                }
                let adds_column = has("ADD COLUMN")
                    || (words.get(3) == Some(&"ADD")
                        && !matches!(
                            words.get(4).copied(),
                            Some(
                                "CONSTRAINT"
                                    | "CHECK"
                                    | "PRIMARY"
                                    | "UNIQUE"
                                    | "FOREIGN"
                                    | "EXCLUDE"
                            )
                        ));
                if adds_column {
                    let not_null = has("NOT NULL");
                    if not_null && !has("DEFAULT") {
                        return destructive(format!(
                            "adds a NOT NULL column without a default to {table} (fails on rows written by the previous release)"
                        ));
                    }
                }
            }
        }
    }
    Classification::Additive
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(77).collect();
        t.push_str("...");
        t
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Classification {
        classify(sql, &mut HashSet::new(), &HashSet::new())
    }

    #[test]
    fn checksum_ignores_line_endings_not_edits() {
        let lf = "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n";
        let crlf = "CREATE TABLE a (id int);\r\nINSERT INTO a VALUES (1);\r\n";
        assert_eq!(checksum(lf), checksum(crlf));
        assert_eq!(checksum(lf), checksum(&format!("\u{feff}{lf}")));
        assert_ne!(checksum(lf), checksum("CREATE TABLE a (id bigint);\n"));
        assert_eq!(checksum(lf).len(), 64);
    }

    #[test]
    fn classification_of_common_statements() {
        for (sql, destructive) in [
            ("CREATE TABLE t (id int); CREATE INDEX ON t (id);", false),
            ("ALTER TABLE users ADD COLUMN email text", false),
            (
                "ALTER TABLE users ADD COLUMN n int NOT NULL DEFAULT 0",
                false,
            ),
            ("CREATE INDEX CONCURRENTLY i ON users (email)", false),
            ("ALTER TABLE users ALTER COLUMN email DROP NOT NULL", false),
            ("ALTER TABLE users ALTER COLUMN email SET DEFAULT ''", false),
            (
                "ALTER TABLE users ADD CONSTRAINT c CHECK (email IS NOT NULL) NOT VALID",
                false,
            ),
            (
                "ALTER TABLE users VALIDATE CONSTRAINT c; ALTER TABLE users ALTER COLUMN email SET NOT NULL",
                false,
            ),
            ("INSERT INTO t VALUES ('DROP TABLE x')", false),
            ("DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$", false),
            ("-- DROP TABLE x\nSELECT 1", false),
            ("DROP TABLE users", true),
            ("ALTER TABLE users DROP COLUMN email", true),
            ("ALTER TABLE users DROP email", true),
            ("ALTER TABLE users RENAME COLUMN a TO b", true),
            ("ALTER TABLE users ALTER COLUMN id TYPE bigint", true),
            ("ALTER TABLE users ALTER id SET DATA TYPE bigint", true),
            ("ALTER TABLE users ALTER COLUMN email SET NOT NULL", true),
            ("CREATE INDEX i ON users (email)", true),
            ("CREATE UNIQUE INDEX i ON public.users (email)", true),
            ("ALTER TABLE users ADD COLUMN n int NOT NULL", true),
            (
                "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users (id)",
                true,
            ),
            ("TRUNCATE users", true),
        ] {
            let c = class(sql);
            assert_eq!(c.reason().is_some(), destructive, "{sql}: {c:?}");
        }
    }

    #[test]
    fn set_not_null_with_a_validated_check_in_the_database_is_additive() {
        let sql = "ALTER TABLE users ALTER COLUMN email SET NOT NULL";
        let mut v = HashSet::new();
        v.insert("users.email".to_owned());
        assert_eq!(
            classify(sql, &mut HashSet::new(), &v),
            Classification::Additive
        );
    }

    proptest::proptest! {
        #[test]
        fn line_endings_never_change_the_checksum(
            lines in proptest::collection::vec("[a-zA-Z0-9 ;()'_-]{0,20}", 0..10)
        ) {
            let lf = lines.join("\n");
            proptest::prop_assert_eq!(checksum(&lf), checksum(&lines.join("\r\n")));
            proptest::prop_assert_eq!(checksum(&lf), checksum(&lines.join("\r")));
        }

        #[test]
        fn versions_order_like_numbers(a in 0u64..10_000_000, b in 0u64..10_000_000) {
            let va = MigrationVersion::parse(&format!("{a:08}")).unwrap();
            let vb = MigrationVersion::parse(&b.to_string()).unwrap();
            proptest::prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
            proptest::prop_assert_eq!(va.to_string(), a.to_string());
        }
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s| MigrationVersion::parse(s).unwrap();
        assert!(v("2") < v("10"));
        assert!(v("1.2") < v("1.10"));
        assert_eq!(v("1_2"), v("1.2"));
        assert_eq!(v("2026-11-21-093000").to_string(), "20261121093000");
        assert_eq!(v("0007").to_string(), "7");
        assert!(MigrationVersion::parse("1a").is_none());
        assert!(MigrationVersion::parse("").is_none());
    }
}
