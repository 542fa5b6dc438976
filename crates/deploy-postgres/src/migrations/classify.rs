//! The two judgements of a migration, kept apart: its *compatibility* (can it run while the
//! previous release serves — what zero-downtime strategies gate on) and its *reversibility*
//! (does undoing it by its down file lose data — what `revert` gates on). A migration adding
//! an index without `CONCURRENTLY` is incompatible (it blocks writes) yet reversible; one adding
//! a column is compatible, yet its down file drops the column and whatever was written to it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::scan::{Statement, scan};

/// Whether a migration can run while the previous release serves traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "compatibility", content = "why")]
pub enum Compatibility {
    /// The previous release keeps working while and after it runs.
    Compatible,
    /// It breaks the previous release or locks a table for long; why, quoting the statement
    /// as written.
    Incompatible(String),
}

impl Compatibility {
    /// Why it is incompatible, if it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Compatible => None,
            Self::Incompatible(r) => Some(r),
        }
    }
}

/// What undoing a migration by its down file does to data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reversibility", content = "why")]
pub enum Reversibility {
    /// Its down file undoes it and no data is lost (an index, a constraint, a view, a
    /// function, a column default...).
    Reversible,
    /// It has no down file: only a backup undoes it.
    NoDown,
    /// Undoing it loses data: its down file drops or rewrites what holds data, or the
    /// migration itself removed data its down file cannot bring back; why, quoting the
    /// statement as written.
    LosesData(String),
}

impl Reversibility {
    /// Why its down file cannot undo it without loss, if it cannot.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Reversible => None,
            Self::NoDown => Some("it has no down migration".to_owned()),
            Self::LosesData(why) => Some(why.clone()),
        }
    }
}

/// Judge undoing a migration whose up file is `up` by its down file `down`.
pub(crate) fn reversibility(up: &str, down: Option<&str>) -> Reversibility {
    let Some(down) = down else {
        return Reversibility::NoDown;
    };
    if let Some(why) = loses_data(down) {
        return Reversibility::LosesData(format!("its down migration {why}"));
    }
    if let Some(why) = loses_data(up) {
        return Reversibility::LosesData(format!(
            "it {why}, which its down migration cannot bring back"
        ));
    }
    Reversibility::Reversible
}

/// The views `sql` creates, as `DROP` statements that remove them (names as written, quoted
/// ones kept in their quotes), last created first. Views hold no data: a revert that crosses
/// a repeatable migration drops them, and the next migrate creates them again.
pub(crate) fn view_drops(sql: &str) -> Vec<String> {
    let mut drops = Vec::new();
    for st in scan(sql) {
        let words: Vec<&str> = st.text.split(' ').collect();
        let mut i = match words.as_slice() {
            ["CREATE", "OR", "REPLACE", ..] => 3,
            ["CREATE", ..] => 1,
            _ => continue,
        };
        let mut kind = "VIEW";
        while let Some(w) = words.get(i) {
            match *w {
                "TEMP" | "TEMPORARY" | "RECURSIVE" => i += 1,
                "MATERIALIZED" => {
                    kind = "MATERIALIZED VIEW";
                    i += 1;
                }
                _ => break,
            }
        }
        if words.get(i) != Some(&"VIEW") {
            continue;
        }
        i += 1;
        if words[i..].starts_with(&["IF", "NOT", "EXISTS"]) {
            i += 3;
        }
        if let Some(name) = words.get(i).filter(|n| !n.is_empty() && **n != "(") {
            drops.push(format!("DROP {kind} IF EXISTS {name};"));
        }
    }
    drops.reverse();
    drops
}

/// Whether the statements of `sql` can lose data, and which one, if one can.
fn loses_data(sql: &str) -> Option<String> {
    for st in scan(sql) {
        let s = st.text.as_str();
        let quoted = || st.quoted(sql);
        if let Some(why) = &st.opaque {
            return Some(if s.is_empty() {
                format!("{why}, so what it does to data cannot be judged")
            } else {
                format!(
                    "{why}, so what it does to data cannot be judged: `{}`",
                    quoted()
                )
            });
        }
        let words: Vec<&str> = s.split(' ').collect();
        let starts = |p: &str| s == p || s.starts_with(&format!("{p} "));
        let has = |p: &str| format!(" {s} ").contains(&format!(" {p} "));
        let what = if starts("DROP TABLE") {
            "drops a table and its rows"
        } else if starts("DROP SCHEMA") {
            "drops a schema and what it holds"
        } else if starts("DROP DATABASE") || starts("DROP OWNED") {
            "drops what holds data"
        } else if starts("TRUNCATE") {
            "empties a table"
        } else if starts("DELETE") {
            "deletes rows"
        } else if starts("UPDATE") || starts("MERGE") {
            "rewrites rows (what they held before is not kept)"
        } else if starts("ALTER TABLE") && drops_column(&words) {
            "drops a column and its values"
        } else if starts("ALTER TABLE") && changes_column_type(&words) {
            "changes a column's type (values may not convert back)"
        } else if starts("DO") || starts("CALL") {
            "runs code whose effect on data cannot be judged"
        } else if (starts("WITH") || starts("INSERT")) && (has("DELETE") || has("UPDATE")) {
            "rewrites or deletes rows"
        } else {
            continue;
        };
        return Some(format!("{what}: `{}`", quoted()));
    }
    None
}

/// Whether an `ALTER TABLE` (its upper-cased words) drops a column, not a constraint, a
/// default, `NOT NULL`, an identity or an expression.
fn drops_column(words: &[&str]) -> bool {
    words.iter().enumerate().any(|(i, w)| {
        if *w != "DROP" {
            return false;
        }
        let next = words.get(i + 1).copied().unwrap_or("");
        let column_action = (i >= 2 && words[i - 2] == "ALTER")
            || (i >= 3 && words[i - 3] == "ALTER" && words[i - 2] == "COLUMN");
        let keeps = matches!(
            next,
            "CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION"
        );
        !column_action && !keeps
    })
}

/// Whether an `ALTER TABLE` (its upper-cased words) changes a column's type.
fn changes_column_type(words: &[&str]) -> bool {
    words.iter().enumerate().any(|(i, w)| {
        *w == "TYPE"
            && i >= 2
            && (words[i - 2] == "ALTER" || words[i - 2] == "COLUMN" || words[i - 1] == "DATA")
    })
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
) -> Compatibility {
    let mut validated_in_file = false;
    for st in scan(sql) {
        let Statement {
            text: s, opaque, ..
        } = &st;
        let words: Vec<&str> = s.split(' ').collect();
        let has = |p: &str| format!(" {s} ").contains(&format!(" {p} "));
        let starts = |p: &str| s.starts_with(p);
        let destructive =
            |r: String| Compatibility::Incompatible(format!("{r}: `{}`", st.quoted(sql)));

        if let Some(why) = opaque {
            return if s.is_empty() {
                Compatibility::Incompatible(why.clone())
            } else {
                destructive(why.clone())
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
            if drops_column(&words) {
                return destructive(format!("drops a column of {table}"));
            }
            if changes_column_type(&words) {
                return destructive(format!("changes a column type of {table}"));
            }
            for (i, w) in words.iter().enumerate() {
                let next = words.get(i + 1).copied().unwrap_or("");
                match *w {
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
    Compatibility::Compatible
}
