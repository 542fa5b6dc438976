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

// The SQL scanner.
//
// psql runs a migration (`psql -f -`): it splits the file into statements with its own lexer,
// which follows the server's lexical rules (scan.l / psqlscan.l), and it runs the backslash
// meta-commands itself. The scanner below follows both, so that the statements it hands the
// classifier are those PostgreSQL will run. Where PostgreSQL versions disagree on a token
// boundary (`1a$b$`, `0x1F$a$`: number-then-identifier up to 14 and 16, junk or a hex literal
// elsewhere), the reading chosen is the one under which the statement is valid SQL: under the
// other the statement is a syntax error, and psql (run with `ON_ERROR_STOP`) stops there.
// Every token is found by one forward pass; the only look-ahead (a string continued on a later
// line) covers whitespace that is then consumed, so the scan is linear in the input.

/// One statement as PostgreSQL will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Its words, upper-cased (ASCII) and separated by single spaces: comments dropped, string
    /// literals as `''`, dollar-quoted bodies as `$BODY$`, `(`, `)` and `,` spaced out, quoted
    /// identifiers kept in their quotes (`"Users"`, `"my␠table"`).
    pub(crate) text: String,
    /// Why psql runs something the text does not show, or reads the rest of the file otherwise
    /// than the scanner assumes: a meta-command such as `\gexec`, or a change of
    /// `standard_conforming_strings` or of the client encoding.
    pub(crate) opaque: Option<String>,
}

/// What a token is; see [`Lexer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// Whitespace, a `--` comment, a (nested) `/* */` comment.
    Space,
    /// An identifier or key word (`$` may follow its first character), a number, a `$1`.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// `'…'`, `E'…'`, `B'…'`, `X'…'`, `U&'…'`, with its continuations on later lines.
    Str,
    /// `$$…$$` or `$tag$…$tag$`.
    Dollar,
    /// `;`, or psql's `\;`.
    Semicolon,
    /// A psql meta-command and its arguments (`\set ON_ERROR_STOP on`, `\gexec`).
    Meta,
    /// Any other character: operators, punctuation, a lone `$`.
    Other,
}

/// How a quoted string treats `\` and `''`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `'…'` (with `standard_conforming_strings` on) and `U&'…'`: `''` is a quote, `\` is text.
    Standard,
    /// `E'…'` (and `'…'` with `standard_conforming_strings` off): `\` escapes the next byte.
    Escape,
    /// `B'…'` and `X'…'`: the next `'` ends the string.
    Bits,
}

/// The space characters of scan.l (`\v` since PostgreSQL 16).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `ident_start` (and `dolq_start`): bytes from 0x80 up are letters, as in scan.l.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `dolq_cont`: a dollar-quote tag is an identifier without `$`.
fn is_tag_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// `ident_cont`: `$` continues an identifier (`x$y` is one name, not a quote).
fn is_ident_cont(c: u8) -> bool {
    is_tag_cont(c) || c == b'$'
}

fn skip_while(b: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|&c| f(c)) {
        i += 1;
    }
    i
}

/// The first `\n` or `\r` at or after `i` (the end of a `--` comment).
fn line_end(b: &[u8], i: usize) -> usize {
    skip_while(b, i, |c| c != b'\n' && c != b'\r')
}

/// The lexer of psql and PostgreSQL, as far as token boundaries go.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// `standard_conforming_strings` (on by default since 9.1): off, `'…'` reads like `E'…'`.
    standard_strings: bool,
    /// Set when a string continued across lines is read differently by psql and PostgreSQL
    /// (see [`string_end`]); cleared by whoever reads it.
    split_continuation: bool,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            standard_strings: true,
            split_continuation: false,
        }
    }

    /// The next token and where it is. Token boundaries are ASCII bytes or the end, so the
    /// range always slices `src`.
    fn next_token(&mut self) -> Option<(Tok, std::ops::Range<usize>)> {
        let b = self.src.as_bytes();
        let start = self.pos;
        let c = *b.get(start)?;
        let at = |k: usize| b.get(start + k).copied();
        let (tok, end) = match c {
            _ if is_space(c) => (Tok::Space, skip_while(b, start, is_space)),
            b'-' if at(1) == Some(b'-') => (Tok::Space, line_end(b, start)),
            b'/' if at(1) == Some(b'*') => (Tok::Space, block_comment_end(b, start + 2)),
            b'\'' => {
                let q = if self.standard_strings {
                    Quote::Standard
                } else {
                    Quote::Escape
                };
                self.string(b, start + 1, q)
            }
            b'"' => (Tok::QuotedIdent, quoted_ident_end(b, start + 1)),
            b'e' | b'E' if at(1) == Some(b'\'') => self.string(b, start + 2, Quote::Escape),
            b'b' | b'B' | b'x' | b'X' if at(1) == Some(b'\'') => {
                self.string(b, start + 2, Quote::Bits)
            }
            b'u' | b'U' if at(1) == Some(b'&') && at(2) == Some(b'\'') => {
                self.string(b, start + 3, Quote::Standard)
            }
            b'u' | b'U' if at(1) == Some(b'&') && at(2) == Some(b'"') => {
                (Tok::QuotedIdent, quoted_ident_end(b, start + 3))
            }
            _ if is_ident_start(c) => (Tok::Word, skip_while(b, start + 1, is_ident_cont)),
            b'0'..=b'9' => (Tok::Word, number_end(b, start)),
            b'.' if at(1).is_some_and(|d| d.is_ascii_digit()) => (Tok::Word, number_end(b, start)),
            b'$' if at(1).is_some_and(|d| d.is_ascii_digit()) => {
                (Tok::Word, skip_while(b, start + 1, |d| d.is_ascii_digit()))
            }
            b'$' => match self.dollar_quote_end(start) {
                Some(end) => (Tok::Dollar, end),
                None => (Tok::Other, start + 1),
            },
            b';' => (Tok::Semicolon, start + 1),
            b'\\' if at(1) == Some(b';') => (Tok::Semicolon, start + 2),
            b'\\' if at(1) == Some(b':') => (Tok::Other, start + 2),
            b'\\' => (Tok::Meta, meta_command_end(b, start + 1)),
            _ => (Tok::Other, start + 1),
        };
        self.pos = end.min(b.len());
        Some((tok, start..self.pos))
    }

    /// After a `COPY ... FROM STDIN`, psql sends the lines that follow as data, up to a line
    /// `\.`, and reads SQL again after it: skip them. `false` (nothing skipped) when the COPY's
    /// own line goes on after its `;`, which psql reads only after the data.
    fn skip_copy_data(&mut self) -> bool {
        let b = self.src.as_bytes();
        let line_end = skip_while(b, self.pos, |c| c != b'\n');
        let rest = self.src[self.pos..line_end].trim();
        if !(rest.is_empty() || rest.starts_with("--")) {
            return false;
        }
        let mut i = (line_end + 1).min(b.len());
        while i < b.len() {
            let end = skip_while(b, i, |c| c != b'\n');
            let line = &b[i..end];
            i = (end + 1).min(b.len());
            if line == b"\\." || line == b"\\.\r" {
                break;
            }
        }
        self.pos = i;
        true
    }

    /// A string token whose body starts at `i`; notes a disagreement of psql and PostgreSQL.
    fn string(&mut self, b: &[u8], i: usize, quote: Quote) -> (Tok, usize) {
        let (end, diverges) = string_end(b, i, quote);
        self.split_continuation |= diverges;
        (Tok::Str, end)
    }

    /// The end of the dollar-quoted string opening at `start`, or `None` when the `$` does
    /// not open one (`$x` without a closing `$`). The body ends at the first occurrence of
    /// the opening delimiter: every `$` in a body starts a token in scan.l, so that is where
    /// PostgreSQL ends it too.
    fn dollar_quote_end(&self, start: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let mut j = start + 1;
        if b.get(j).is_some_and(|&c| is_ident_start(c)) {
            j = skip_while(b, j + 1, is_tag_cont);
        }
        if b.get(j) != Some(&b'$') {
            return None;
        }
        let delimiter = &self.src[start..=j];
        Some(match self.src[j + 1..].find(delimiter) {
            Some(k) => j + 1 + k + delimiter.len(),
            None => b.len(),
        })
    }
}

/// The end of a block comment whose body starts at `i`; comments nest.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1usize;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a quoted identifier whose body starts at `i` (`""` is a quote inside), or
/// `None` if the input ends inside it.
fn quoted_ident_close(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn quoted_ident_end(b: &[u8], i: usize) -> usize {
    quoted_ident_close(b, i).unwrap_or(b.len())
}

/// The end of a string whose body starts at `i`, including its continuations, and whether
/// psql and PostgreSQL disagree on it.
///
/// scan.l joins `'a'` and a `'b'` that follows after whitespace holding a newline into one
/// string read under the first one's rules. psql, though, lexes one line at a time, so it only
/// sees the continuations within a line (after a bare `\r`): across a `\n` it starts a new
/// string under the rules of a fresh `'`. That changes nothing for `'…'` and `B'…'`, but an
/// `E'…'` continued on the next line is read with backslash escapes by the server and without
/// by psql, which splits the file. The end returned is then psql's, and the flag says so.
fn string_end(b: &[u8], mut i: usize, quote: Quote) -> (usize, bool) {
    loop {
        loop {
            match b.get(i) {
                None => return (b.len(), false),
                Some(b'\\') if quote == Quote::Escape => i += 2,
                Some(b'\'') if quote != Quote::Bits && b.get(i + 1) == Some(&b'\'') => i += 2,
                Some(b'\'') => {
                    i += 1;
                    break;
                }
                Some(_) => i += 1,
            }
        }
        match continuation(b, i) {
            Some(open) if quote == Quote::Escape && b[i..open].contains(&b'\n') => {
                return (i, true);
            }
            Some(open) => i = open + 1,
            None => return (i, false),
        }
    }
}

/// Where a string closed just before `i` continues: scan.l's `quotecontinue`, that is
/// `{horiz_whitespace}*{newline}{special_whitespace}*` then a quote (its index).
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | 0x0b | 0x0c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            _ => break,
        }
    }
    if !matches!(b.get(i), Some(b'\n' | b'\r')) {
        return None;
    }
    i += 1;
    loop {
        match b.get(i) {
            Some(&c) if is_space(c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                i = line_end(b, i);
                if !matches!(b.get(i), Some(b'\n' | b'\r')) {
                    return None;
                }
                i += 1;
            }
            _ => break,
        }
    }
    (b.get(i) == Some(&b'\'')).then_some(i)
}

/// The end of a number starting at `i` (`1`, `1.5`, `.5`, `1.`, `1e-3`), with the name that
/// follows it without a space: since PostgreSQL 15 `1e5$a$` or `0x1F` is one token (an error,
/// "trailing junk after numeric literal"), and that name takes any `$`, as names do. (`1.5$a$`
/// and `1e-5$a$` are a number, then a dollar quote.)
fn number_end(b: &[u8], i: usize) -> usize {
    let digits = |k| skip_while(b, k, |c| c.is_ascii_digit());
    let mut i = digits(i);
    // `1..5` is 1 then `..`, as in scan.l.
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    // A signed exponent; an unsigned one is taken with the name below.
    if matches!(b.get(i), Some(b'e' | b'E'))
        && matches!(b.get(i + 1), Some(b'+' | b'-'))
        && b.get(i + 2).is_some_and(|c| c.is_ascii_digit())
    {
        i = digits(i + 2);
    }
    if b.get(i).is_some_and(|&c| is_ident_start(c)) {
        i = skip_while(b, i, is_ident_cont);
    }
    i
}

/// psql's meta-commands that take the rest of the line as their argument.
const WHOLE_LINE_META_COMMANDS: &[&str] = &[
    "!", "copy", "ef", "ev", "sf", "sf+", "sv", "sv+", "h", "help",
];

/// The end of a psql meta-command whose name starts at `i` (just after the `\`). As in
/// psqlscanslash.l: the name ends at whitespace or a backslash; arguments end at the end of
/// the line or at an unquoted backslash (`'…'`, `"…"` and `` `…` `` quote, within the line);
/// a `\\` after them is eaten, and psql reads SQL again from there.
fn meta_command_end(b: &[u8], i: usize) -> usize {
    let name_end = skip_while(b, i, |c| {
        !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'\\')
    });
    let name = &b[i..name_end];
    let mut i = name_end;
    if WHOLE_LINE_META_COMMANDS
        .iter()
        .any(|w| w.as_bytes() == name)
    {
        return skip_while(b, i, |c| c != b'\n');
    }
    loop {
        match b.get(i) {
            None | Some(b'\n') => return i,
            Some(b'\\') => {
                return if b.get(i + 1) == Some(&b'\\') {
                    i + 2
                } else {
                    i
                };
            }
            Some(&q @ (b'\'' | b'"' | b'`')) => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    if c == b'\n' {
                        break;
                    }
                    i += 1;
                    if c == b'\\' && q == b'\'' {
                        i += 1;
                    } else if c == q {
                        break;
                    }
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// psql meta-commands whose effect the classifier can see: output, conditionals (a skipped
/// branch is still classified), and running the query buffer (`\g` without an argument).
const TRANSPARENT_META_COMMANDS: &[&str] = &[
    "echo",
    "qecho",
    "warn",
    "timing",
    "pset",
    "if",
    "elif",
    "else",
    "endif",
    "g",
    "gx",
    "gdesc",
    "crosstabview",
    "watch",
];

/// Meta-commands that send the query buffer, ending the statement as `;` does.
const SENDING_META_COMMANDS: &[&str] =
    &["g", "gx", "gexec", "gset", "gdesc", "crosstabview", "watch"];

/// psql variables a migration may set: they change what psql prints or when it stops, not
/// what runs, and psql refuses values other than its own.
const SETTABLE_PSQL_VARIABLES: &[&str] =
    &["ECHO", "ECHO_HIDDEN", "QUIET", "VERBOSITY", "SHOW_CONTEXT"];

/// Whether the meta-command `text` (from its `\`) sends the query buffer, and why the
/// classifier cannot see what it does, if it cannot.
fn meta_command(text: &str) -> (bool, Option<String>) {
    let body = &text[1..];
    let name_end = body
        .find([' ', '\t', '\n', '\r', '\u{c}', '\\'])
        .unwrap_or(body.len());
    let (name, args) = body.split_at(name_end);
    let args = args.trim_end_matches('\\').trim();
    let sends = SENDING_META_COMMANDS.contains(&name);
    let mut words = args.split_whitespace();
    let transparent = match name {
        "g" | "gx" => args.is_empty(),
        "set" => match (words.next(), words.next(), words.next()) {
            (Some("ON_ERROR_STOP"), Some(v), None) => bool_setting(v) == Some(true),
            (Some(var), _, _) => SETTABLE_PSQL_VARIABLES.contains(&var),
            (None, _, _) => false,
        },
        _ => TRANSPARENT_META_COMMANDS.contains(&name),
    };
    let why = if args.contains('`') {
        Some(format!(
            "runs a shell command (a backquoted argument of the psql meta-command \\{name})"
        ))
    } else if !transparent {
        Some(format!(
            "runs the psql meta-command `{}`, whose effect the classifier cannot see",
            shorten(text.trim_end())
        ))
    } else {
        None
    };
    (sends, why)
}

/// A boolean setting as PostgreSQL and psql read it (unique prefixes of on/off/true/false/
/// yes/no, 1, 0), case-insensitively.
fn bool_setting(v: &str) -> Option<bool> {
    let v = v.to_ascii_lowercase();
    let prefix_of = |w: &str| !v.is_empty() && w.starts_with(v.as_str());
    if v == "1" || v == "on" || prefix_of("true") || prefix_of("yes") {
        Some(true)
    } else if v == "0"
        || (v.len() >= 2 && prefix_of("off"))
        || prefix_of("false")
        || prefix_of("no")
    {
        Some(false)
    } else {
        None
    }
}

/// Client encodings in which a byte of a multi-byte character can be an ASCII `\` or `'`:
/// psql reads the rest of the file otherwise than as UTF-8 under them.
const UNSAFE_CLIENT_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "shiftjis2004",
    "win932",
    "windows932",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// The settings that change where psql sees strings end.
const LEXICAL_SETTINGS: &[&str] = &["standard_conforming_strings", "client_encoding"];

/// Builds one [`Statement`] from tokens.
#[derive(Default)]
struct StatementBuilder {
    text: String,
    opaque: Option<String>,
    /// The first few words, names and values, lower-cased, for `SET` and `RESET`.
    head: Vec<String>,
    /// Whether a name is one of [`LEXICAL_SETTINGS`].
    names_lexical_setting: bool,
    /// Whether a string or dollar-quoted body mentions one of [`LEXICAL_SETTINGS`]
    /// (`set_config(...)`, a `DO` block, an `UPDATE pg_settings`).
    quotes_lexical_setting: bool,
}

impl StatementBuilder {
    fn push(&mut self, tok: Tok, text: &str) {
        match tok {
            Tok::Space | Tok::Semicolon | Tok::Meta => self.text.push(' '),
            Tok::Word => self.text.push_str(&text.to_ascii_uppercase()),
            Tok::Str => self.text.push_str(" '' "),
            Tok::Dollar => self.text.push_str(" $BODY$ "),
            Tok::QuotedIdent => {
                self.text.push(' ');
                self.text.push_str(&quoted_ident_text(text));
                self.text.push(' ');
            }
            Tok::Other => match text {
                // psql's `\:` puts a `:` into the query.
                "\\:" => self.text.push(':'),
                "(" | ")" | "," => {
                    self.text.push(' ');
                    self.text.push_str(text);
                    self.text.push(' ');
                }
                _ => self.text.push_str(text),
            },
        }
        if matches!(tok, Tok::Space | Tok::Semicolon | Tok::Meta) {
            return;
        }
        let lower = text.to_ascii_lowercase();
        match tok {
            Tok::Str | Tok::Dollar => {
                self.quotes_lexical_setting |= LEXICAL_SETTINGS.iter().any(|s| lower.contains(s));
            }
            _ => {
                let name = lower.trim_matches('"');
                self.names_lexical_setting |= LEXICAL_SETTINGS.contains(&name);
            }
        }
        if self.head.len() < 6 {
            self.head.push(match tok {
                Tok::Str | Tok::QuotedIdent => string_value(&lower),
                _ => lower,
            });
        }
    }

    fn set_opaque(&mut self, why: String) {
        self.opaque.get_or_insert(why);
    }

    /// The statement, after applying what it does to how psql reads the rest of the file.
    fn finish(&mut self, lexer: &mut Lexer<'_>, out: &mut Vec<Statement>) {
        let mut b = std::mem::take(self);
        if let Some(why) = b.lexical_effect(lexer) {
            b.set_opaque(why);
        }
        let text = b
            .text
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() || b.opaque.is_some() {
            out.push(Statement {
                text,
                opaque: b.opaque,
            });
        }
    }

    /// Follow `SET`/`RESET` of `standard_conforming_strings` in the lexer; why psql might
    /// read the rest of the file otherwise than the scanner does, if it might.
    fn lexical_effect(&self, lexer: &mut Lexer<'_>) -> Option<String> {
        let h: Vec<&str> = self.head.iter().map(String::as_str).collect();
        let h = match h.as_slice() {
            ["set", "session" | "local", rest @ ..] => [&["set"], rest].concat(),
            _ => h,
        };
        match h.as_slice() {
            ["show", ..] => None,
            ["reset", "standard_conforming_strings" | "all"] | ["discard", "all"] => {
                lexer.standard_strings = true;
                None
            }
            ["reset", "client_encoding"] => None,
            ["set", "standard_conforming_strings", "to" | "=", value] => {
                match (*value == "default").then_some(true).or(bool_setting(value)) {
                    Some(true) => {
                        lexer.standard_strings = true;
                        None
                    }
                    Some(false) => {
                        lexer.standard_strings = false;
                        Some("turns standard_conforming_strings off, which moves where psql sees the strings that follow end".into())
                    }
                    None => Some(format!("sets standard_conforming_strings to {value:?}")),
                }
            }
            ["set", "client_encoding", "to" | "=", value] | ["set", "names", value] => {
                let normal: String = value.chars().filter(|c| !matches!(c, '_' | '-')).collect();
                UNSAFE_CLIENT_ENCODINGS.contains(&normal.as_str()).then(|| {
                    format!(
                        "sets the client encoding to {value}, in which psql reads some ASCII bytes as parts of other characters"
                    )
                })
            }
            // A column may be called client_encoding; only settings commands set settings.
            ["set" | "reset", ..] | ["alter", "database" | "role" | "user" | "system", ..]
                if self.names_lexical_setting =>
            {
                Some(format!(
                    "sets {} in a way the classifier cannot follow (it moves where psql sees strings end)",
                    LEXICAL_SETTINGS.join(" or ")
                ))
            }
            _ if self.quotes_lexical_setting => Some(
                "changes standard_conforming_strings or client_encoding in a way the classifier cannot follow (they move where psql sees strings end)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The value of a quoted token (`'off'` → `off`, `"Name"` → `name`, lower-cased already).
fn string_value(lower: &str) -> String {
    let t = lower.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '&');
    let t = t.strip_prefix(['\'', '"']).unwrap_or(t);
    let t = t.strip_suffix(['\'', '"']).unwrap_or(t);
    t.to_owned()
}

/// A quoted identifier as one word of a statement's text: its quotes kept (so `"DROP"` is no
/// key word), `""` inside kept, whitespace shown as `␠` (so it stays one word), closed if the
/// file ends inside it.
fn quoted_ident_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}' => '\u{2420}',
            c => c,
        })
        .collect();
    let body = text.find('"').map_or(text.len(), |i| i + 1);
    if quoted_ident_close(text.as_bytes(), body).is_none() {
        out.push('"');
    }
    out
}

/// Where a statement is with respect to a SQL-standard routine body: `CREATE [OR REPLACE]
/// FUNCTION|PROCEDURE … BEGIN ATOMIC stmt; stmt; END`. Its `;`s end the body's statements,
/// not the `CREATE`: psql sends it whole (psqlscan.l counts `BEGIN`/`CASE`/`END` after such a
/// start, outside parentheses), and the server's grammar takes it as one statement that runs
/// none of the body. Found by the test against the real server.
#[derive(Default)]
struct RoutineBody {
    /// The first four words of the statement (identifiers, upper-cased).
    head: Vec<String>,
    /// Parentheses open.
    parens: usize,
    /// Whether the last word was `BEGIN` (outside parentheses, in a routine).
    after_begin: bool,
    /// `BEGIN ATOMIC` and `CASE` opened, less `END`s: inside the body while above zero.
    depth: usize,
}

impl RoutineBody {
    fn is_routine(&self) -> bool {
        let h: Vec<&str> = self.head.iter().map(String::as_str).collect();
        matches!(
            h.as_slice(),
            ["CREATE", "FUNCTION" | "PROCEDURE", ..]
                | ["CREATE", "OR", "REPLACE", "FUNCTION" | "PROCEDURE", ..]
        )
    }

    fn token(&mut self, tok: Tok, text: &str) {
        match (tok, text) {
            (Tok::Other, "(") => self.parens += 1,
            (Tok::Other, ")") => self.parens = self.parens.saturating_sub(1),
            (Tok::Word, w) if w.as_bytes().first().is_some_and(|&c| is_ident_start(c)) => {
                let w = w.to_ascii_uppercase();
                if self.head.len() < 4 {
                    self.head.push(w.clone());
                }
                if self.parens > 0 || !self.is_routine() {
                    return;
                }
                match w.as_str() {
                    "ATOMIC" if self.after_begin && self.depth == 0 => self.depth = 1,
                    "CASE" if self.depth > 0 => self.depth += 1,
                    "END" if self.depth > 0 => self.depth -= 1,
                    _ => {}
                }
                self.after_begin = w == "BEGIN";
            }
            _ => {}
        }
    }
}

/// The statements of `sql` as psql sends them and PostgreSQL runs them.
pub(crate) fn scan(sql: &str) -> Vec<Statement> {
    let mut lexer = Lexer::new(sql);
    let mut out = Vec::new();
    let mut cur = StatementBuilder::default();
    let mut routine = RoutineBody::default();
    while let Some((tok, range)) = lexer.next_token() {
        let text = &sql[range];
        if text.contains('\0') {
            // psql reads lines as C strings: it drops the rest of the line, newline included.
            cur.set_opaque("holds a NUL byte, after which psql drops the rest of the line".into());
        }
        if std::mem::take(&mut lexer.split_continuation) {
            cur.set_opaque(
                "continues a backslash-escaped string on another line, which psql and PostgreSQL split differently"
                    .into(),
            );
        }
        routine.token(tok, text);
        match tok {
            // Inside a routine body a `;` ends one of the body's statements, not the CREATE.
            Tok::Semicolon if routine.depth > 0 => cur.push(Tok::Other, ";"),
            Tok::Semicolon => {
                routine = RoutineBody::default();
                let copies = reads_copy_data(&cur.text);
                cur.finish(&mut lexer, &mut out);
                if copies
                    && !lexer.skip_copy_data()
                    && let Some(copy) = out.last_mut()
                {
                    copy.opaque.get_or_insert(
                        "is a COPY FROM STDIN whose line goes on after it, which psql reads after the data"
                            .into(),
                    );
                }
            }
            Tok::Meta => {
                let (sends, why) = meta_command(text);
                if let Some(why) = why {
                    cur.set_opaque(why);
                }
                cur.push(tok, text);
                if sends {
                    routine = RoutineBody::default();
                    cur.finish(&mut lexer, &mut out);
                }
            }
            _ => cur.push(tok, text),
        }
    }
    cur.finish(&mut lexer, &mut out);
    out
}

/// Whether the statement text (words separated by spaces) is a `COPY ... FROM STDIN`.
fn reads_copy_data(text: &str) -> bool {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    words.first() == Some(&"COPY") && words.windows(2).any(|w| w == ["FROM", "STDIN"])
}

/// The text of each statement of `sql` (see [`scan`]).
#[cfg(test)]
pub(crate) fn statements(sql: &str) -> Vec<String> {
    scan(sql).into_iter().map(|s| s.text).collect()
}

/// The last part of a possibly qualified name (`public."Users"` → `"Users"`), as the name
/// PostgreSQL means: unquoted parts lower-cased, a quoted one that is a plain lower-case
/// name without its quotes.
fn unqualified(word: &str) -> String {
    let b = word.as_bytes();
    let mut quoted = false;
    let mut last_dot = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            b'.' if !quoted => last_dot = Some(i),
            _ => {}
        }
    }
    let part = last_dot.map_or(word, |i| &word[i + 1..]);
    match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(inner)
            if !inner.is_empty()
                && inner
                    .bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
                && inner.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'$'
                }) =>
        {
            inner.to_owned()
        }
        Some(_) => part.to_owned(),
        None => part.to_ascii_lowercase(),
    }
}

/// The name after `words[i..]` (see [`unqualified`]), skipping `IF EXISTS`/`IF NOT EXISTS`/
/// `ONLY`.
fn object_after(words: &[&str], mut i: usize) -> Option<String> {
    while let Some(w) = words.get(i) {
        if matches!(*w, "IF" | "NOT" | "EXISTS" | "ONLY") {
            i += 1;
        } else {
            break;
        }
    }
    words.get(i).map(|w| unqualified(w))
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
    for Statement { text: s, opaque } in scan(sql) {
        let words: Vec<&str> = s.split(' ').collect();
        let has = |p: &str| format!(" {s} ").contains(&format!(" {p} "));
        let starts = |p: &str| s.starts_with(p);
        let destructive =
            |r: String| Classification::Destructive(format!("{r}: `{}`", shorten(&s)));

        if let Some(why) = opaque {
            return if s.is_empty() {
                Classification::Destructive(why)
            } else {
                destructive(why)
            };
        }

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
                            unqualified(words[i - 1])
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
    use proptest::prelude::*;

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

    // ---- the scanner -------------------------------------------------------------------

    fn opaque(sql: &str) -> Option<String> {
        scan(sql).into_iter().find_map(|s| s.opaque)
    }

    /// Both were classified additive before the scanner followed PostgreSQL's rules: `\'`
    /// did not escape in `E''`, and the `$` inside `x$y$z` opened a dollar quote.
    #[test]
    fn the_two_talk_past_inputs_are_destructive() {
        let c = class("SELECT E'it\\'s'; DROP TABLE users; -- '");
        assert!(c.reason().unwrap().contains("drops a table"), "{c:?}");
        assert_eq!(
            statements("SELECT E'it\\'s'; DROP TABLE users; -- '"),
            ["SELECT ''", "DROP TABLE USERS"]
        );
        let c = class("SELECT 1 AS x$y$z; DROP TABLE orders;");
        assert!(c.reason().unwrap().contains("drops a table"), "{c:?}");
        assert_eq!(
            statements("SELECT 1 AS x$y$z; DROP TABLE orders;"),
            ["SELECT 1 AS X$Y$Z", "DROP TABLE ORDERS"]
        );
    }

    #[test]
    fn lexical_rules() {
        for (sql, expected) in [
            // Standard strings double quotes; a backslash is text.
            (
                "SELECT 'it''s; x', 'a\\'; DROP x",
                &["SELECT '' , ''", "DROP X"][..],
            ),
            // E'' takes backslash escapes (an escaped backslash too), and doubled quotes.
            ("SELECT E'a\\\\'; b", &["SELECT ''", "B"]),
            ("SELECT e'\\''';'; b", &["SELECT ''", "B"]),
            // Only at the start of a token: `somE'…'` is a name and a standard string.
            ("SELECT somE'\\'; b", &["SELECT SOME ''", "B"]),
            // B'' and X'' end at the next quote; U&'' doubles quotes, no backslash escapes.
            ("SELECT B'01''1;'; b", &["SELECT '' ''", "B"]),
            (
                "SELECT U&'d\\0061t''a;' UESCAPE '!'; b",
                &["SELECT '' UESCAPE ''", "B"],
            ),
            ("SELECT N'x;'; b", &["SELECT N ''", "B"]),
            // A string continued on a later line (after a comment too) is one string.
            ("SELECT 'a' -- c\n  'b;';\nb", &["SELECT ''", "B"]),
            ("SELECT 'a' 'b';", &["SELECT '' ''"]),
            // Quoted identifiers double quotes, keep case and are never key words.
            (
                "SELECT \"a\"\";b\" FROM \"Users\"; \"drop\"",
                &["SELECT \"a\"\";b\" FROM \"Users\"", "\"drop\""],
            ),
            ("SELECT U&\"d;\"; b", &["SELECT U&\"d;\"", "B"]),
            ("SELECT \"my table\"", &["SELECT \"my\u{2420}table\""]),
            // Dollar quotes with and without tags; other tags and `$` inside do not end them.
            ("DO $$ x; $a$ y; $$; b", &["DO $BODY$", "B"]),
            ("DO $fn$ $f$ ; $fn $fn$; b", &["DO $BODY$", "B"]),
            ("DO $é$ ; $é$; b", &["DO $BODY$", "B"]),
            ("DO $_1$ ; $_1$; b", &["DO $BODY$", "B"]),
            // `$` continues a name; `$1` is a parameter; a number or parameter can be followed
            // by a quote; `$x` without a closing `$` is no quote.
            ("SELECT a$b$ FROM t; b", &["SELECT A$B$ FROM T", "B"]),
            ("SELECT $1$a$; x $a$; b", &["SELECT $1 $BODY$", "B"]),
            ("SELECT 1$a$; x $a$; b", &["SELECT 1 $BODY$", "B"]),
            ("SELECT 1e-5$a$; x $a$; b", &["SELECT 1E-5 $BODY$", "B"]),
            ("SELECT 1e5$a$; x $a$; b", &["SELECT 1E5$A$", "X $BODY$"]),
            ("SELECT 0x1F$a$; x $a$; b", &["SELECT 0X1F$A$", "X $BODY$"]),
            ("SELECT 1e$a$; b $a$", &["SELECT 1E$A$", "B $BODY$"]),
            ("SELECT .5$a$ ; $a$; b", &["SELECT .5 $BODY$", "B"]),
            ("SELECT $x; b", &["SELECT $X", "B"]),
            ("SELECT $1; b", &["SELECT $1", "B"]),
            // Comments: line comments end at \n or \r, block comments nest, and both start
            // inside operators.
            ("SELECT 1 -- ; x\r; b", &["SELECT 1", "B"]),
            ("SELECT /* a /* b; */ c; */ 1; b", &["SELECT 1", "B"]),
            ("SELECT 1 +/* ; */2; b", &["SELECT 1 + 2", "B"]),
            ("SELECT 1 *//* ; */ 2; b", &["SELECT 1 */ 2", "B"]),
            ("SELECT 1 <--; \n; b", &["SELECT 1 <", "B"]),
            // Unterminated: to the end of the input.
            ("SELECT 'a; b", &["SELECT ''"]),
            ("SELECT /* /* */ a; b", &["SELECT"]),
            ("SELECT $q$ a; b", &["SELECT $BODY$"]),
            ("SELECT \"a; b", &["SELECT \"a;\u{2420}b\""]),
            // psql: `\;` separates statements sent together; `\\` ends a meta-command.
            ("SELECT 1 \\; SELECT 2", &["SELECT 1", "SELECT 2"]),
            ("\\echo 'a \\\\ b' \\\\ SELECT 3", &["SELECT 3"]),
            ("\\echo a \\\\ SELECT 3; b", &["SELECT 3", "B"]),
            ("SELECT 1 \\g\nSELECT 2", &["SELECT 1", "SELECT 2"]),
            // A meta-command in the middle of a statement does not end it.
            (
                "ALTER TABLE t\n\\echo x\nDROP COLUMN c;",
                &["ALTER TABLE T DROP COLUMN C"],
            ),
        ] {
            assert_eq!(statements(sql), expected, "{sql:?}");
            assert_eq!(opaque(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn what_psql_does_that_the_text_does_not_show_is_destructive() {
        for (sql, reason) in [
            ("SELECT format('DROP TABLE %I', 'users') \\gexec", "\\gexec"),
            ("\\i other.sql", "\\i"),
            ("\\ir other.sql\n", "\\ir"),
            ("\\set q 'DROP TABLE users'\n:q;", "\\set"),
            ("\\! rm -rf /", "\\!"),
            ("\\echo `rm -rf /`", "shell command"),
            ("\\g /tmp/out", "\\g"),
            ("\\c other", "\\c"),
            ("\\encoding SJIS\nSELECT 1;", "\\encoding"),
            // psql lexes the rest of the file otherwise.
            (
                "SET standard_conforming_strings = off; SELECT 'it\\'s'; DROP TABLE users; -- '",
                "standard_conforming_strings off",
            ),
            (
                "SET SESSION standard_conforming_strings TO 'of'",
                "standard_conforming_strings off",
            ),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                "cannot follow",
            ),
            (
                "DO $$ BEGIN EXECUTE 'SET standard_conforming_strings = off'; END $$",
                "cannot follow",
            ),
            (
                "ALTER DATABASE app SET standard_conforming_strings = off",
                "cannot follow",
            ),
            ("SET client_encoding = 'SJIS'", "sjis"),
            ("SET NAMES 'big5'", "big5"),
            // The server reads `\'` of a continued E'' string as an escape, psql does not.
            (
                "SELECT E'a'\n'\\' ' ; DROP TABLE users; -- '\n;",
                "split differently",
            ),
        ] {
            let c = class(sql);
            assert!(
                c.reason().is_some_and(|r| r.contains(reason)),
                "{sql:?}: {c:?}"
            );
        }
        // What changes nothing: the default settings, psql's output and error settings.
        for sql in [
            "SET standard_conforming_strings = on; SELECT 'a\\'; SELECT 1;",
            "SET standard_conforming_strings TO DEFAULT; RESET ALL; SHOW standard_conforming_strings;",
            "SET client_encoding = 'UTF8'; SET NAMES 'utf-8'; RESET client_encoding;",
            "\\set ON_ERROR_STOP on\n\\set VERBOSITY verbose\n\\echo go\n\\if :x\n\\else\n\\endif\nSELECT 1 \\g\n\\timing on\n",
        ] {
            assert_eq!(class(sql), Classification::Additive, "{sql:?}");
        }
        // Turned off and on again: the strings in between are read with escapes.
        assert_eq!(
            statements(
                "SET standard_conforming_strings = off; SELECT 'a\\'b'; SET standard_conforming_strings = on; SELECT 'a\\'; c"
            ),
            [
                "SET STANDARD_CONFORMING_STRINGS = OFF",
                "SELECT ''",
                "SET STANDARD_CONFORMING_STRINGS = ON",
                "SELECT ''",
                "C"
            ]
        );
    }

    /// A SQL-standard routine body is part of its CREATE: its statements do not run when the
    /// migration does (psql sends it whole; the server takes it as one statement).
    #[test]
    fn begin_atomic_bodies_belong_to_their_create() {
        let sql = "CREATE OR REPLACE FUNCTION purge() RETURNS void LANGUAGE sql\n\
                   BEGIN ATOMIC\n  DELETE FROM users WHERE CASE WHEN id > 0 THEN true ELSE false END;\n  \
                   SELECT 1;\nEND;\nDROP TABLE orders;";
        assert_eq!(
            statements(sql),
            [
                "CREATE OR REPLACE FUNCTION PURGE ( ) RETURNS VOID LANGUAGE SQL BEGIN ATOMIC \
                 DELETE FROM USERS WHERE CASE WHEN ID > 0 THEN TRUE ELSE FALSE END; SELECT 1; END",
                "DROP TABLE ORDERS"
            ]
        );
        assert!(class(sql).reason().unwrap().contains("drops a table"));
        assert_eq!(
            class("CREATE PROCEDURE p() BEGIN ATOMIC DELETE FROM users; END;"),
            Classification::Additive
        );
        // Not a routine, or BEGIN without ATOMIC (a function named begin): `;` ends statements.
        for (sql, n) in [
            ("BEGIN; DELETE FROM users; END;", 3),
            (
                "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; DELETE FROM t;",
                2,
            ),
            (
                "CREATE FUNCTION f(begin int, atomic int) RETURNS int LANGUAGE sql RETURN 1; DELETE FROM t;",
                2,
            ),
            ("CREATE TABLE atomic (begin int); DELETE FROM t;", 2),
        ] {
            assert_eq!(scan(sql).len(), n, "{sql}");
            assert!(
                class(sql)
                    .reason()
                    .is_some_and(|r| r.contains("deletes rows")),
                "{sql}"
            );
        }
    }

    /// psql sends the lines after a `COPY ... FROM STDIN` as data, up to `\.`: a quote in
    /// them starts no string.
    #[test]
    fn copy_data_is_not_sql() {
        let sql = "COPY t (a, b) FROM STDIN WITH (FORMAT csv);\nit's,\"x;\"\n\\.\nDROP TABLE users;\n-- '\n";
        assert_eq!(
            statements(sql),
            [
                "COPY T ( A , B ) FROM STDIN WITH ( FORMAT CSV )",
                "DROP TABLE USERS"
            ]
        );
        assert!(class(sql).reason().unwrap().contains("drops a table"));
        let sql = "copy t from stdin; -- data follows\r\na'\tb\r\n\\.\r\nSELECT 1;\n";
        assert_eq!(statements(sql), ["COPY T FROM STDIN", "SELECT 1"]);
        // Never ended: data to the end.
        assert_eq!(
            statements("COPY t FROM stdin;\n'a;b\n"),
            ["COPY T FROM STDIN"]
        );
        assert!(opaque("COPY t FROM stdin; SELECT 1;\na\n\\.\n").is_some());
        assert_eq!(
            statements("COPY t TO STDOUT; 'a;b';"),
            ["COPY T TO STDOUT", "''"]
        );
    }

    #[test]
    fn hidden_statements_stay_hidden() {
        for sql in [
            "SELECT /* /* */ DROP TABLE users; */ 1;",
            "SELECT \"a\"\"; DROP TABLE users; --\";",
            "SELECT 'a' -- c\n'b; DROP TABLE users; --';",
            "SELECT $1$a$; DROP TABLE t; -- $a$",
            "SELECT 1.5$a$; DROP TABLE t; -- $a$",
            "SELECT E'\\\\''; DROP TABLE t; --';",
            "SELECT B'1'\n'; DROP TABLE t; --';",
            "\\echo DROP TABLE users;",
            "CREATE TABLE \"Users\" (id int); CREATE INDEX ON \"Users\" (id);",
            "ALTER TABLE t ADD COLUMN client_encoding text",
            "CREATE TABLE \"client_encoding\" ()",
        ] {
            assert_eq!(class(sql), Classification::Additive, "{sql:?}");
        }
        // A quoted name is the table PostgreSQL means: "users" is users, "Users" is not.
        assert!(
            class("CREATE TABLE \"Users\" (id int); CREATE INDEX ON users (id);")
                .reason()
                .is_some()
        );
        assert_eq!(
            class("CREATE TABLE \"users\" (id int); CREATE INDEX ON public.users (id);"),
            Classification::Additive
        );
        assert_eq!(
            class("ALTER TABLE t ADD COLUMN \"drop\" int"),
            Classification::Additive
        );
    }

    /// The old scanner copied the rest of the input for every dollar quote: 48 KB took about a
    /// second, 800 KB four and a half minutes, so 5 MB would have taken hours.
    #[test]
    fn five_megabytes_of_dollar_quotes_comments_and_strings_scan_in_linear_time() {
        let unit = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $b$ $$ $body$;\n\
                    SELECT $$a;b$$, 'it''s', E'\\'', /* c /* d */ */ x$y, $1; -- e\n";
        let n = 5_000_000 / unit.len() + 1;
        let sql = unit.repeat(n);
        let started = std::time::Instant::now();
        assert_eq!(scan(&sql).len(), 2 * n);
        assert_eq!(class(&sql), Classification::Additive);
        eprintln!(
            "{} bytes scanned and classified in {:?}",
            sql.len(),
            started.elapsed()
        );
        // Unterminated constructs scan to the end once.
        for open in ["$a$", "/*", "'", "E'", "\"", "\\echo '"] {
            let sql = format!("SELECT {open}{}", "$a $ /* x' \\ ".repeat(100_000));
            assert_eq!(scan(&sql).len(), 1, "{open}");
        }
    }

    // ---- generated statements ---------------------------------------------------------------

    /// One token of a generated statement.
    #[derive(Debug, Clone)]
    enum Piece {
        Word(String),
        Number(String),
        Param(u32),
        /// A string literal: its prefix (`""`, `E`, `U&`, `N`, `B`, `X`) and its value.
        Str(&'static str, String),
        /// Standard strings continued across lines (`'a'\n  'b'`): one string.
        Continued(Vec<String>),
        Dollar(String, String),
        Quoted(String),
        LineComment(String),
        BlockComment(String, Option<String>),
        Punct(&'static str),
    }

    impl Piece {
        fn render(&self) -> String {
            match self {
                Piece::Word(w) | Piece::Number(w) => w.clone(),
                Piece::Param(n) => format!("${n}"),
                Piece::Str("E", v) => {
                    format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
                }
                Piece::Str(p, v) => format!("{p}'{}'", v.replace('\'', "''")),
                Piece::Continued(parts) => parts
                    .iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(" -- more\n  "),
                Piece::Dollar(tag, body) => format!("${tag}${body}${tag}$"),
                Piece::Quoted(q) => format!("\"{}\"", q.replace('"', "\"\"")),
                Piece::LineComment(c) => format!("--{c}\n"),
                Piece::BlockComment(c, None) => format!("/*{c}*/"),
                Piece::BlockComment(c, Some(inner)) => format!("/*{c}/*{inner}*/{c}*/"),
                Piece::Punct(p) => (*p).to_owned(),
            }
        }

        /// What the scanner should make of it, if anything.
        fn expected(&self) -> Option<String> {
            Some(match self {
                Piece::Word(w) | Piece::Number(w) => w.to_ascii_uppercase(),
                Piece::Param(n) => format!("${n}"),
                Piece::Str("N", _) => "N ''".into(),
                Piece::Str(..) | Piece::Continued(_) => "''".into(),
                Piece::Dollar(..) => "$BODY$".into(),
                Piece::Quoted(_) => self
                    .render()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_whitespace() {
                            '\u{2420}'
                        } else {
                            c
                        }
                    })
                    .collect(),
                Piece::LineComment(_) | Piece::BlockComment(..) => return None,
                Piece::Punct(p) => (*p).to_owned(),
            })
        }

        fn is_string(&self) -> bool {
            matches!(self, Piece::Str(..) | Piece::Continued(_))
        }
    }

    /// Characters that end or start things: quotes, `;`, `$`, backslashes, comment starts.
    const TRICKY: &str = "[a-z ;'\"$\\\\/*\n\t-]";

    fn piece() -> impl Strategy<Value = Piece> {
        let tricky = || proptest::string::string_regex(&format!("{TRICKY}{{0,12}}")).unwrap();
        let tag = "([a-zA-Z_\u{e9}][a-zA-Z0-9_]{0,3})?";
        prop_oneof![
            3 => "[a-z_][a-z0-9_$]{0,6}".prop_map(Piece::Word),
            1 => prop::sample::select(vec!["select", "from", "drop", "table", "e", "u", "n", "b", "x"])
                .prop_map(|w| Piece::Word(w.to_owned())),
            1 => "([0-9]{1,3}(\\.[0-9]{0,2})?|\\.[0-9]{1,2})([eE][+-]?[0-9]{1,2})?".prop_map(Piece::Number),
            1 => (1u32..20).prop_map(Piece::Param),
            3 => (prop::sample::select(vec!["", "E", "N"]), tricky()).prop_map(|(p, v)| Piece::Str(p, v)),
            1 => "[a-z ;'\"$/*\n-]{0,8}".prop_map(|v| Piece::Str("U&", v)),
            1 => "[01]{0,8}".prop_map(|v| Piece::Str("B", v)),
            1 => "[0-9a-f]{0,8}".prop_map(|v| Piece::Str("X", v)),
            1 => prop::collection::vec(tricky(), 2..4).prop_map(Piece::Continued),
            3 => (tag, tricky())
                .prop_filter("the body holds the closing delimiter", |(tag, body)| {
                    let delimiter = format!("${tag}$");
                    format!("{body}{delimiter}").find(&delimiter) == Some(body.len())
                })
                .prop_map(|(tag, body)| Piece::Dollar(tag, body)),
            2 => tricky().prop_map(Piece::Quoted),
            1 => "[^\n\r\0]{0,12}".prop_map(Piece::LineComment),
            1 => ("[a-z ;'\"$\\\\\n-]{0,8}", proptest::option::of("[a-z ;'\"$\n-]{0,8}"))
                .prop_map(|(c, inner)| Piece::BlockComment(c, inner)),
            1 => prop::sample::select(vec!["(", ")", ",", "=", ".", "::", "+", "<>", "[", "]", "$", "&"])
                .prop_map(Piece::Punct),
        ]
    }

    /// Statements of pieces, with a word put between a string and a standard string that a
    /// line comment alone separates (PostgreSQL would join them).
    fn generated() -> impl Strategy<Value = Vec<Vec<Piece>>> {
        prop::collection::vec(prop::collection::vec(piece(), 1..8), 1..6).prop_map(|stmts| {
            stmts
                .into_iter()
                .map(|pieces| {
                    let mut out: Vec<Piece> = Vec::new();
                    let mut after_string = false;
                    let mut commented = false;
                    for p in pieces {
                        let joins = matches!(&p, Piece::Str("", _) | Piece::Continued(_));
                        if after_string && commented && joins {
                            out.push(Piece::Word("w".into()));
                        }
                        match &p {
                            Piece::LineComment(_) => commented = true,
                            _ => {
                                after_string = p.is_string();
                                commented = false;
                            }
                        }
                        out.push(p);
                    }
                    out
                })
                .collect()
        })
    }

    fn render(stmts: &[Vec<Piece>]) -> String {
        stmts
            .iter()
            .map(|s| s.iter().map(Piece::render).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(";\n")
    }

    fn expected(stmts: &[Vec<Piece>]) -> Vec<String> {
        stmts
            .iter()
            .map(|s| {
                s.iter()
                    .filter_map(Piece::expected)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_scanner_never_panics(
            any in ".{0,300}",
            tricky in "[a-zA-Z0-9 ;'\"$\\\\/*\n\r\t&:`!-]{0,300}",
            bytes in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let lossy = String::from_utf8_lossy(&bytes);
            for sql in [any.as_str(), tricky.as_str(), &lossy] {
                let _ = class(sql);
                for s in scan(sql) {
                    prop_assert!(!s.text.is_empty() || s.opaque.is_some());
                }
            }
        }

        #[test]
        fn generated_statements_split_exactly(stmts in generated()) {
            let sql = render(&stmts);
            let got = scan(&sql);
            prop_assert_eq!(
                got.iter().map(|s| s.text.clone()).collect::<Vec<_>>(),
                expected(&stmts),
                "{}", sql
            );
            prop_assert!(got.iter().all(|s| s.opaque.is_none()), "{}", sql);
        }

        /// Whatever strings, quotes and comments surround it, a `DROP TABLE` is found, and
        /// the same text inside them is not.
        #[test]
        fn a_drop_is_found_and_a_quoted_one_is_not(
            stmts in generated(),
            at in any::<prop::sample::Index>(),
            hide in prop::sample::select(vec!["'", "$$", "\"", "/*"]),
        ) {
            let mut selects: Vec<Vec<Piece>> = stmts
                .into_iter()
                .map(|mut s| {
                    s.insert(0, Piece::Word("select".into()));
                    s
                })
                .collect();
            prop_assert_eq!(class(&render(&selects)), Classification::Additive);
            let close = if hide == "/*" { "*/" } else { hide };
            let hidden = format!("{} x {hide}; DROP TABLE users; --{close}", render(&selects));
            prop_assert_eq!(class(&hidden), Classification::Additive, "{}", hidden);
            let i = at.index(selects.len() + 1);
            selects.insert(i, vec![Piece::Word("DROP".into()), Piece::Word("TABLE".into()), Piece::Word("users".into())]);
            let sql = render(&selects);
            let c = class(&sql);
            prop_assert!(c.reason().is_some_and(|r| r.contains("drops a table")), "{}: {:?}", sql, c);
        }
    }

    // ---- migration file names -----------------------------------------------------------------

    fn version_text() -> impl Strategy<Value = (Vec<u64>, String)> {
        (
            prop::collection::vec((0u64..100_000, 0usize..3), 1..4),
            prop::bool::ANY,
        )
            .prop_map(|(parts, underscores)| {
                let mut text = String::new();
                for (i, (n, zeros)) in parts.iter().enumerate() {
                    if i > 0 {
                        text.push(if underscores { '_' } else { '.' });
                    }
                    text.push_str(&"0".repeat(*zeros));
                    text.push_str(&n.to_string());
                }
                (parts.into_iter().map(|(n, _)| n).collect(), text)
            })
    }

    /// A migration name: no control characters, not empty.
    const NAME: &str = "[a-zA-Z0-9_. é-]{1,20}";

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_file_and_folder_names_never_panic(
            name in "([VUR]|[0-9]{1,3})?[0-9a-zA-Z_.\\-é\u{1}]{0,20}(\\.sql|\\.up\\.sql|\\.down\\.sql|__|_)?",
            any in ".{0,40}",
        ) {
            let dir = Path::new("/m");
            for n in [&name, &any] {
                if let Ok(Some(e)) = parse_file(dir, n) {
                    prop_assert!(!e.name.is_empty());
                }
                if let Err(e) = parse_file(dir, n) {
                    prop_assert!(e.to_string().contains("/m/"), "{}", e);
                }
                let _ = parse_folder(&dir.join(n), n);
                let _ = MigrationVersion::parse(n).map(|v| (v.to_string(), v.as_number()));
            }
        }

        #[test]
        fn flyway_names_parse_back(
            (parts, v) in version_text(),
            name in NAME,
            undo in prop::bool::ANY,
        ) {
            let file = format!("{}{v}__{name}.sql", if undo { 'U' } else { 'V' });
            let e = parse_file(Path::new("/m"), &file).unwrap().unwrap();
            prop_assert_eq!(e.layout, Layout::Flyway);
            prop_assert_eq!(e.version, MigrationVersion(parts));
            prop_assert_eq!(e.name, name);
            prop_assert_eq!(e.down, undo);
        }

        #[test]
        fn golang_migrate_names_parse_back(
            n in 0u64..1_000_000_000_000,
            zeros in 0usize..4,
            name in NAME,
            down in prop::bool::ANY,
        ) {
            let file = format!("{}{n}_{name}.{}.sql", "0".repeat(zeros), if down { "down" } else { "up" });
            let e = parse_file(Path::new("/m"), &file).unwrap().unwrap();
            prop_assert_eq!(e.layout, Layout::GolangMigrate);
            prop_assert_eq!(e.version.as_number(), Some(n));
            prop_assert_eq!(e.name, name);
            prop_assert_eq!(e.down, down);
        }

        #[test]
        fn diesel_folder_names_parse_back(
            (y, mo, d, t) in (1970u64..3000, 1u64..13, 1u64..29, 0u64..240_000),
            plain in prop::bool::ANY,
            name in NAME,
        ) {
            let (v, number) = if plain {
                (format!("{y:04}{mo:02}{d:02}{t:06}"), format!("{y:04}{mo:02}{d:02}{t:06}"))
            } else {
                (format!("{y:04}-{mo:02}-{d:02}-{t:06}"), format!("{y:04}{mo:02}{d:02}{t:06}"))
            };
            let folder = format!("{v}_{name}");
            let (version, parsed) = parse_folder(Path::new("/m"), &folder).unwrap();
            prop_assert_eq!(version.as_number(), Some(number.parse::<u64>().unwrap()));
            prop_assert_eq!(parsed, name);
        }
    }
}
