//! How a migration file stands to transactions: whether the runner may wrap it in one, whether
//! it is one already (`BEGIN; … COMMIT;`, as generated golang-migrate sets are), or whether it
//! must run outside one (`CREATE INDEX CONCURRENTLY` and the other statements PostgreSQL
//! refuses inside a transaction block). A file that mixes its own transactions with other
//! statements cannot be run all-or-nothing, so it is refused, naming the line.

use serde::{Deserialize, Serialize};

use super::scan::{Statement, scan};

/// How a migration runs with respect to transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "why")]
pub enum Transaction {
    /// The runner wraps the file and its history row in one transaction: a failure leaves
    /// neither.
    Wrapped,
    /// The file is one explicit transaction (`BEGIN … COMMIT`); the runner writes the history
    /// row inside it, just before its `COMMIT`, so a failure leaves neither.
    Own,
    /// It runs outside a transaction, each statement committed as it runs; why (the marker,
    /// diesel's `run_in_transaction = false`, or the statement that cannot run inside one).
    Outside(String),
}

impl Transaction {
    /// Whether it runs outside a transaction.
    pub fn is_outside(&self) -> bool {
        matches!(self, Self::Outside(_))
    }
}

impl std::fmt::Display for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wrapped => f.write_str("in a transaction"),
            Self::Own => f.write_str("as its own transaction (BEGIN … COMMIT)"),
            Self::Outside(why) => write!(f, "outside a transaction: {why}"),
        }
    }
}

/// What the runner needs to run a file: its mode, and for [`Transaction::Own`] where to put
/// the settings and the history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) mode: Transaction,
    /// For [`Transaction::Own`]: the byte just after the `BEGIN`'s `;`, and where the
    /// `COMMIT` starts.
    pub(crate) own: Option<(usize, usize)>,
    /// The line of an `ALTER TYPE … ADD VALUE`, which PostgreSQL before 12 refuses inside a
    /// transaction block.
    pub(crate) adds_enum_value: Option<usize>,
    /// Whether psql reads the file the same followed by more input as alone: every
    /// statement ends with its `;`, no meta-command, nothing after the last statement but
    /// blank lines and `--` comments (an unterminated quote or `/*` would swallow what
    /// follows). Only such files share one psql session with their neighbours.
    pub(crate) self_contained: bool,
}

/// What a top-level statement does to the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Begin,
    Commit,
    Rollback,
    /// `COMMIT AND CHAIN`, `ROLLBACK AND CHAIN`: ends one transaction and starts the next.
    Chain,
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`: within a transaction.
    Savepoint,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    TwoPhase,
}

fn control(text: &str) -> Option<Control> {
    let w: Vec<&str> = text.split(' ').collect();
    let has = |k: &str| w.contains(&k);
    let chain = has("CHAIN") && !has("NO");
    match w.first().copied()? {
        "BEGIN" => Some(Control::Begin),
        "START" if w.get(1) == Some(&"TRANSACTION") => Some(Control::Begin),
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" if has("PREPARED") => Some(Control::TwoPhase),
        "PREPARE" if w.get(1) == Some(&"TRANSACTION") => Some(Control::TwoPhase),
        "ROLLBACK" if has("TO") => Some(Control::Savepoint),
        "SAVEPOINT" | "RELEASE" => Some(Control::Savepoint),
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" if chain => Some(Control::Chain),
        "COMMIT" | "END" => Some(Control::Commit),
        "ROLLBACK" | "ABORT" => Some(Control::Rollback),
        _ => None,
    }
}

/// Whether PostgreSQL refuses the statement inside a transaction block (on every supported
/// version; `ALTER TYPE … ADD VALUE`, refused before 12 only, is [`adds_enum_value`]).
pub(crate) fn cannot_run_in_transaction(text: &str) -> bool {
    let w: Vec<&str> = text.split(' ').collect();
    let has = |k: &str| w.contains(&k);
    let starts = |p: &str| text == p || text.starts_with(&format!("{p} "));
    starts("CREATE INDEX CONCURRENTLY")
        || starts("CREATE UNIQUE INDEX CONCURRENTLY")
        || starts("DROP INDEX CONCURRENTLY")
        || (starts("REINDEX") && (has("CONCURRENTLY") || has("SYSTEM") || has("DATABASE")))
        || starts("VACUUM")
        || starts("CREATE DATABASE")
        || starts("DROP DATABASE")
        || starts("CREATE TABLESPACE")
        || starts("DROP TABLESPACE")
        || starts("ALTER SYSTEM")
        || (starts("ALTER TABLE") && has("DETACH") && (has("CONCURRENTLY") || has("FINALIZE")))
        || starts("CREATE SUBSCRIPTION")
        || starts("DROP SUBSCRIPTION")
        || (starts("ALTER SUBSCRIPTION") && has("REFRESH"))
}

/// See [`Shape::self_contained`].
fn self_contained(sql: &str, statements: &[Statement]) -> bool {
    let meta = sql.lines().any(|l| l.trim_start().starts_with('\\'));
    let terminated = statements.iter().all(|s| {
        s.opaque.is_none()
            && (s.text.is_empty() || sql.get(s.span.clone()).is_some_and(|t| t.ends_with(';')))
    });
    let tail = &sql[statements.last().map_or(0, |s| s.span.end).min(sql.len())..];
    let clean_tail = tail.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || (l.starts_with("--") && !l.contains("/*"))
    });
    !meta && terminated && clean_tail
}

fn adds_enum_value(text: &str) -> bool {
    text.starts_with("ALTER TYPE ") && text.contains(" ADD VALUE ")
}

const FIX: &str = "keep one BEGIN … COMMIT around the whole file, or none (the runner then wraps \
                   it), or put `-- deploy:no-transaction` on its first line to run it as written";

/// The shape of `sql`; `marked` is why it was marked to run outside a transaction, if it was.
/// An error is `line N: why; what to do`.
pub(crate) fn analyze(sql: &str, marked: Option<String>) -> Result<Shape, String> {
    let all = scan(sql);
    let self_contained = self_contained(sql, &all);
    let stmts: Vec<Statement> = all.into_iter().filter(|s| !s.text.is_empty()).collect();
    let adds_enum_value = stmts
        .iter()
        .find(|s| adds_enum_value(&s.text))
        .map(|s| s.line(sql));
    let shape = |mode, own| Shape {
        mode,
        own,
        adds_enum_value,
        self_contained,
    };
    if let Some(why) = marked {
        return Ok(shape(Transaction::Outside(why), None));
    }
    let refuse = |s: &Statement, why: String| Err(format!("line {}: {why}; {FIX}", s.line(sql)));
    let outside = |s: &Statement| {
        format!(
            "`{}` (line {}) cannot run inside a transaction block",
            s.quoted(sql),
            s.line(sql)
        )
    };
    let controls: Vec<(usize, Control)> = stmts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| control(&s.text).map(|c| (i, c)))
        .collect();
    let Some(&(first_i, first_c)) = controls.first() else {
        return Ok(
            match stmts.iter().find(|s| cannot_run_in_transaction(&s.text)) {
                Some(s) => shape(Transaction::Outside(outside(s)), None),
                None => shape(Transaction::Wrapped, None),
            },
        );
    };
    for &(i, c) in &controls {
        let s = &stmts[i];
        match c {
            Control::TwoPhase => {
                return refuse(
                    s,
                    format!(
                        "`{}` is two-phase commit, which a migration cannot use",
                        s.quoted(sql)
                    ),
                );
            }
            Control::Chain => {
                return refuse(
                    s,
                    format!(
                        "`{}` ends the file's transaction and starts another",
                        s.quoted(sql)
                    ),
                );
            }
            _ => {}
        }
    }
    if first_c != Control::Begin {
        let s = &stmts[first_i];
        return refuse(
            s,
            format!(
                "`{}` ends a transaction the file did not start",
                s.quoted(sql)
            ),
        );
    }
    let begin = &stmts[first_i];
    if first_i > 0 {
        return refuse(
            begin,
            format!(
                "the file's transaction starts here, after a statement outside it (line {})",
                stmts[0].line(sql)
            ),
        );
    }
    let Some(&(end_i, end_c)) = controls[1..].iter().find(|(_, c)| *c != Control::Savepoint) else {
        return refuse(
            begin,
            "the transaction the file begins here is never committed (PostgreSQL would roll \
             it back when psql ends, and the migration would look applied)"
                .to_owned(),
        );
    };
    let end = &stmts[end_i];
    match end_c {
        Control::Commit => {}
        Control::Begin => {
            return refuse(
                end,
                format!(
                    "a second BEGIN, inside the transaction begun at line {}",
                    begin.line(sql)
                ),
            );
        }
        _ => {
            return refuse(
                end,
                format!(
                    "`{}` ends the file's transaction: nothing it did would stay",
                    end.quoted(sql)
                ),
            );
        }
    }
    if let Some(after) = stmts.get(end_i + 1) {
        let why = if control(&after.text) == Some(Control::Begin) {
            format!(
                "a second transaction starts here (the first ended at line {})",
                end.line(sql)
            )
        } else {
            format!(
                "`{}` follows the file's COMMIT (line {}), outside its transaction",
                after.quoted(sql),
                end.line(sql)
            )
        };
        return refuse(after, why);
    }
    if let Some(s) = stmts[..end_i]
        .iter()
        .find(|s| cannot_run_in_transaction(&s.text))
    {
        return refuse(
            s,
            format!(
                "{}, and the file's transaction (BEGIN at line {}) holds it",
                outside(s),
                begin.line(sql)
            ),
        );
    }
    Ok(shape(
        Transaction::Own,
        Some((begin.span.end, end.span.start)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(sql: &str) -> Result<Transaction, String> {
        analyze(sql, None).map(|s| s.mode)
    }

    #[test]
    fn only_files_read_the_same_followed_by_more_input_are_self_contained() {
        let contained = |sql: &str| analyze(sql, None).unwrap().self_contained;
        assert!(contained("CREATE TABLE a (id int);\n"));
        assert!(contained(
            "CREATE TABLE a (id int); -- done\n\n-- the end\n"
        ));
        assert!(contained(
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n"
        ));
        assert!(contained("-- nothing\n"));
        // Not ended by `;`: the next input would continue it.
        assert!(!contained("CREATE TABLE a (id int)\n"));
        // An unterminated quote, dollar quote or comment swallows what follows.
        assert!(!contained("SELECT 'abc;\n"));
        assert!(!contained("SELECT $x$ abc;\n"));
        assert!(!contained("SELECT 1;\n/* open\n"));
        // Meta-commands act on the session.
        assert!(!contained("\\set x 1\nSELECT :x;\n"));
        assert!(!contained("SELECT 1;\n\\gexec\n"));
    }

    #[test]
    fn plain_files_are_wrapped_and_concurrently_runs_outside() {
        assert_eq!(mode("CREATE TABLE a (id int);\n"), Ok(Transaction::Wrapped));
        assert_eq!(mode("-- nothing\n"), Ok(Transaction::Wrapped));
        // BEGIN inside a function body or a string is not the file's.
        assert_eq!(
            mode(
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN 1; END $$;\nSELECT 'BEGIN;';"
            ),
            Ok(Transaction::Wrapped)
        );
        let Ok(Transaction::Outside(why)) =
            mode("CREATE TABLE a (id int);\n\ncreate index concurrently a_id on a (id);\n")
        else {
            panic!()
        };
        assert_eq!(
            why,
            "`create index concurrently a_id on a (id)` (line 3) cannot run inside a transaction block"
        );
        for sql in [
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS x ON t (a);",
            "DROP INDEX CONCURRENTLY x;",
            "REINDEX TABLE CONCURRENTLY t;",
            "REINDEX (VERBOSE) INDEX CONCURRENTLY x;",
            "VACUUM ANALYZE t;",
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;",
            "CREATE DATABASE x;",
            "ALTER SYSTEM SET work_mem = '8MB';",
        ] {
            assert!(
                matches!(mode(sql), Ok(Transaction::Outside(_))),
                "{sql}: {:?}",
                mode(sql)
            );
        }
        let s = analyze(
            "CREATE TYPE m AS ENUM ('a');\nALTER TYPE m ADD VALUE 'b';",
            None,
        )
        .unwrap();
        assert_eq!((s.mode, s.adds_enum_value), (Transaction::Wrapped, Some(2)));
    }

    #[test]
    fn a_file_that_is_one_transaction_runs_as_that_transaction() {
        let sql = "-- generated\nBEGIN;\nALTER TABLE a ADD COLUMN b int;\nSAVEPOINT s;\nROLLBACK TO SAVEPOINT s;\nCOMMIT;\n";
        let s = analyze(sql, None).unwrap();
        assert_eq!(s.mode, Transaction::Own);
        let (after_begin, commit) = s.own.unwrap();
        assert_eq!(&sql[..after_begin], "-- generated\nBEGIN;");
        assert_eq!(&sql[commit..], "COMMIT;\n");
        for sql in [
            "begin transaction isolation level serializable;\nselect 1;\nend;",
            "START TRANSACTION;\nSELECT 1;\nCOMMIT WORK;\n-- done\n",
            "BEGIN;\nCOMMIT;",
        ] {
            assert_eq!(mode(sql), Ok(Transaction::Own), "{sql}");
        }
    }

    #[test]
    fn files_that_cannot_run_all_or_nothing_are_refused_naming_the_line() {
        for (sql, said) in [
            (
                "BEGIN;\nALTER TABLE a ADD b int;\nCOMMIT;\nALTER TABLE c ADD d int;\n",
                "line 4: `ALTER TABLE c ADD d int` follows the file's COMMIT (line 3)",
            ),
            (
                "BEGIN;\nSELECT 1;\nCOMMIT;\nBEGIN;\nSELECT 2;\nCOMMIT;\n",
                "line 4: a second transaction starts here (the first ended at line 3)",
            ),
            (
                "SELECT 1;\nBEGIN;\nSELECT 2;\nCOMMIT;\n",
                "line 2: the file's transaction starts here, after a statement outside it (line 1)",
            ),
            (
                "BEGIN;\nSELECT 1;\n",
                "line 1: the transaction the file begins here is never committed",
            ),
            (
                "SELECT 1;\nCOMMIT;\n",
                "line 2: `COMMIT` ends a transaction the file did not start",
            ),
            (
                "BEGIN;\nSELECT 1;\nROLLBACK;\n",
                "line 3: `ROLLBACK` ends the file's transaction: nothing it did would stay",
            ),
            (
                "BEGIN;\nBEGIN;\nCOMMIT;\n",
                "line 2: a second BEGIN, inside the transaction begun at line 1",
            ),
            (
                "BEGIN;\nSELECT 1;\nCOMMIT AND CHAIN;\nSELECT 2;\nCOMMIT;",
                "line 3: `COMMIT AND CHAIN` ends the file's transaction and starts another",
            ),
            (
                "BEGIN;\nCREATE INDEX CONCURRENTLY x ON t (a);\nCOMMIT;\n",
                "line 2: `CREATE INDEX CONCURRENTLY x ON t (a)` (line 2) cannot run inside a transaction block, and the file's transaction (BEGIN at line 1) holds it",
            ),
            (
                "PREPARE TRANSACTION 'x';",
                "line 1: `PREPARE TRANSACTION 'x'` is two-phase commit",
            ),
        ] {
            let e = mode(sql).unwrap_err();
            assert!(e.starts_with(said), "{sql:?}:\n{e}");
            assert!(e.ends_with(FIX), "{e}");
        }
    }

    #[test]
    fn a_marked_file_runs_as_written() {
        let s = analyze(
            "BEGIN;\nSELECT 1;\nCOMMIT;\nBEGIN;\nSELECT 2;\nCOMMIT;\n",
            Some("marked".into()),
        )
        .unwrap();
        assert_eq!(s.mode, Transaction::Outside("marked".into()));
    }
}
