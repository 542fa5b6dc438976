//! What a migration does to the release that serves while it runs (compatibility).

use std::collections::HashSet;

use super::Classification;
use super::scan::{Statement, scan, shorten};

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
