//! The SQL scanner against real PostgreSQL: for generated multi-statement inputs (strings,
//! `E''` strings with backslash escapes, `U&''` strings, strings continued across lines,
//! quoted identifiers, names holding `$`, dollar quotes with tags, nested block comments, line
//! comments), the statements [`scan`] finds are the statements the server executed.
//!
//! The test server logs every statement (`log_statement = 'all'`) through the logging
//! collector as JSON lines (`jsonlog`) in its data directory. Each case runs as `psql -X -q -v
//! ON_ERROR_STOP=1 -f -` with the input on standard input, as a migration does, under an
//! `application_name` of its own, so its records are told apart. psql sends the statements of
//! a file one by one, so each `statement:` record is one statement as psql cut it; the check is
//!
//! - as many statements found as executed, and each executed statement, scanned alone, is
//!   exactly the statement the scanner found at that place (same words, same strings, same
//!   quoted names);
//! - for generated inputs, each executed statement is byte for byte the generated statement
//!   (psql drops the whitespace and `--` comments before a statement and sends its `;`).
//!
//! Every generated statement is cheap and harmless (`SELECT`s of literals, `CREATE TEMP
//! TABLE`/`DROP TABLE` of session tables, `DO` blocks that `PERFORM` literals) and valid, so
//! psql never stops early.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::migrations::scan;
use crate::testing::PgServer;

/// One lexical element of a generated statement.
#[derive(Debug, Clone)]
enum Lit {
    /// `'…'` with `''` for a quote.
    Standard(String),
    /// `E'…'`: its pieces, each a plain run or an escape such as `\'`, `\\`, `\n`, `\;`.
    Escaped(Vec<String>),
    /// `U&'…'` (no backslashes inside).
    Unicode(String),
    /// `'a'` then `'b'` on the next line, maybe after a `--` comment: one string.
    Continued(Vec<String>, bool),
    /// `$tag$…$tag$`.
    Dollar(String, String),
    /// A number.
    Number(String),
}

impl Lit {
    fn render(&self) -> String {
        match self {
            Lit::Standard(v) => format!("'{}'", v.replace('\'', "''")),
            Lit::Escaped(parts) => format!("E'{}'", parts.concat()),
            Lit::Unicode(v) => format!("U&'{}'", v.replace('\'', "''")),
            Lit::Continued(parts, commented) => parts
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(if *commented {
                    " -- more ' ; $$\n  "
                } else {
                    "\n"
                }),
            Lit::Dollar(tag, body) => format!("${tag}${body}${tag}$"),
            Lit::Number(n) => n.clone(),
        }
    }
}

/// A comment between two tokens.
#[derive(Debug, Clone)]
enum Comment {
    Line(String),
    Block(String, Option<String>),
}

impl Comment {
    fn render(&self) -> String {
        match self {
            Comment::Line(c) => format!("--{c}\n"),
            Comment::Block(c, None) => format!("/*{c}*/"),
            Comment::Block(c, Some(inner)) => format!("/*{c}/*{inner}*/{c}*/"),
        }
    }
}

/// One generated statement, and whether a comment leads it.
#[derive(Debug, Clone)]
enum Stmt {
    /// `SELECT lit [AS name], …` with comments between items.
    Select(Vec<(Lit, Option<String>, Option<Comment>)>),
    /// `CREATE TEMP TABLE "name" ("col" text DEFAULT lit)`, then `DROP TABLE "name"`.
    TempTable(String, String, Lit),
    /// `DO $tag$ BEGIN PERFORM lit; … END $tag$`.
    Do(String, Vec<Lit>),
}

/// Characters that end or start things: quotes, `;`, `$`, backslashes, comment starts.
const TRICKY: &str = "[a-z ;'\"$\\\\/*\n\t-]";

fn tricky(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TRICKY}{{0,{max}}}")).unwrap()
}

/// The body of `${tag}$…${tag}$`, which must not hold (or end in the start of) the delimiter.
fn dollar(tag_re: &'static str) -> impl Strategy<Value = Lit> {
    (tag_re, tricky(12))
        .prop_filter("the body holds the closing delimiter", |(tag, body)| {
            let delimiter = format!("${tag}$");
            format!("{body}{delimiter}").find(&delimiter) == Some(body.len())
        })
        .prop_map(|(tag, body)| Lit::Dollar(tag, body))
}

fn escape_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z ;\"$/*\n\t-]{1,4}",
        1 => Just("\\'".to_owned()),
        1 => Just("''".to_owned()),
        1 => Just("\\\\".to_owned()),
        1 => prop::sample::select(vec!["\\n", "\\t", "\\;", "\\$", "\\\"", "\\b", "\\r"])
            .prop_map(str::to_owned),
    ]
}

fn lit() -> impl Strategy<Value = Lit> {
    prop_oneof![
        3 => tricky(12).prop_map(Lit::Standard),
        3 => prop::collection::vec(escape_piece(), 0..6).prop_map(Lit::Escaped),
        1 => "[a-z ;'\"$/*\n-]{0,8}".prop_map(Lit::Unicode),
        1 => (prop::collection::vec(tricky(6), 2..4), any::<bool>())
            .prop_map(|(parts, commented)| Lit::Continued(parts, commented)),
        3 => dollar("([a-zA-Z_][a-zA-Z0-9_]{0,3})?"),
        1 => "([0-9]{1,3}(\\.[0-9]{1,2})?|\\.[0-9]{1,2})([eE][+-]?[0-9])?".prop_map(Lit::Number),
    ]
}

/// A column alias: a name holding `$` (`x$y$z`), or a quoted identifier of tricky characters.
fn alias() -> impl Strategy<Value = String> {
    prop_oneof![
        "c_[a-z0-9_$]{0,6}",
        "[a-z ;'\"$\\\\/*\n\t-]{1,12}".prop_map(|q| format!("\"{}\"", q.replace('"', "\"\""))),
    ]
}

fn comment() -> impl Strategy<Value = Comment> {
    prop_oneof![
        "[a-z ;'\"$\\\\/*\t-]{0,10}".prop_map(Comment::Line),
        (
            "[a-z ;'\"$\\\\\n-]{0,8}",
            proptest::option::of("[a-z ;'\"$\n-]{0,8}")
        )
            .prop_map(|(c, inner)| Comment::Block(c, inner)),
    ]
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        4 => prop::collection::vec(
            (lit(), proptest::option::of(alias()), proptest::option::of(comment())),
            1..5,
        )
        .prop_map(Stmt::Select),
        1 => ("[a-z ;'$\\\\/*\n-]{1,10}", "[a-z ;'$\\\\/*\n-]{1,10}", lit())
            .prop_map(|(t, c, d)| Stmt::TempTable(t, c, d)),
        1 => ("(fn|[a-z]{1,3}_)", prop::collection::vec(lit(), 1..3))
            .prop_map(|(tag, body)| Stmt::Do(tag, body)),
    ]
}

/// A case: statements, each maybe led by a comment (a `--` one is not sent by psql).
fn case() -> impl Strategy<Value = Vec<(Option<Comment>, Stmt)>> {
    prop::collection::vec((proptest::option::of(comment()), stmt()), 1..6)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The statements of a case as psql will send them (each with its `;`), and the input.
fn render(case: &[(Option<Comment>, Stmt)], n: usize) -> (Vec<String>, String) {
    let mut sent = Vec::new();
    let mut input = String::new();
    for (i, (lead, stmt)) in case.iter().enumerate() {
        let mut statements = Vec::new();
        match stmt {
            Stmt::Select(items) => {
                let mut s = "SELECT ".to_owned();
                for (j, (l, alias, after)) in items.iter().enumerate() {
                    if j > 0 {
                        s.push_str(", ");
                    }
                    s.push_str(&l.render());
                    if let Some(a) = alias {
                        s.push_str(" AS ");
                        s.push_str(a);
                    }
                    if let Some(c) = after {
                        s.push(' ');
                        s.push_str(&c.render());
                    }
                }
                statements.push(format!("{s};"));
            }
            Stmt::TempTable(table, column, default) => {
                // Names unique within the case, so tables never collide.
                let table = quote_ident(&format!("{table}{n}_{i}"));
                statements.push(format!(
                    "CREATE TEMP TABLE {table} ({} text DEFAULT {});",
                    quote_ident(column),
                    default.render()
                ));
                statements.push(format!("DROP TABLE {table};"));
            }
            Stmt::Do(tag, body) => {
                let mut s = format!("DO ${tag}$ BEGIN ");
                for l in body {
                    // Inside, a dollar quote needs a tag of its own: `q` never is `tag`.
                    let l = match l {
                        Lit::Dollar(_, b) if !b.contains("$q$") => {
                            Lit::Dollar("q".into(), b.clone())
                        }
                        Lit::Dollar(..) => Lit::Number("1".into()),
                        other => other.clone(),
                    };
                    s.push_str(&format!("PERFORM {}; ", l.render()));
                }
                statements.push(format!("{s}END ${tag}$;"));
            }
        }
        if let Some(c) = lead {
            input.push_str(&c.render());
            input.push(' ');
        }
        let first = statements.remove(0);
        // psql keeps a block comment that leads a statement, and drops a line comment.
        sent.push(match lead {
            Some(c @ Comment::Block(..)) => format!("{} {first}", c.render()),
            _ => first.clone(),
        });
        input.push_str(&first);
        for s in statements {
            input.push('\n');
            input.push_str(&s);
            sent.push(s);
        }
        input.push('\n');
    }
    (sent, input)
}

/// The test server's statement log: `(application_name, message)` of every complete record.
fn records(log_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // A line still being written has no newline yet.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            out.push((field("application_name"), field("message")));
        }
    }
    out
}

/// Run `input` through psql as a migration is run, under `app`; the statements the server
/// executed, in order.
fn executed(server: &PgServer, db: &str, app: &str, input: &str) -> Result<Vec<String>, String> {
    use std::io::Write;
    let done = format!("SELECT '{app} done';");
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", server.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", db)
        .env("PGAPPNAME", app)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("{input}\n{done}\n").as_bytes())
        .map_err(|e| format!("psql's input: {e}"))?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql failed on {input:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The collector writes asynchronously: wait for the last statement's record.
    let log_dir = server.data_dir().join("log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mine: Vec<String> = records(&log_dir)
            .into_iter()
            .filter(|(a, _)| a == app)
            .filter_map(|(_, m)| m.strip_prefix("statement: ").map(str::to_owned))
            .collect();
        if mine.last().is_some_and(|m| m == &done) {
            return Ok(mine[..mine.len() - 1].to_vec());
        }
        if Instant::now() > deadline {
            return Err(format!("no record of {done:?} after 10 s; saw {mine:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The scanner's statements for `input` equal the executed ones: as many, and each executed
/// statement scanned alone is the scanner's statement at that place.
fn check(input: &str, executed: &[String]) -> Result<(), TestCaseError> {
    let found = scan(input);
    let alone: Vec<Vec<String>> = executed
        .iter()
        .map(|s| scan(s).into_iter().map(|s| s.text).collect())
        .collect();
    prop_assert_eq!(
        found.len(),
        executed.len(),
        "input {:?}\nscanner {:?}\nexecuted {:?}",
        input,
        found,
        executed
    );
    for (i, (f, a)) in found.iter().zip(&alone).enumerate() {
        prop_assert!(f.opaque.is_none(), "statement {} is opaque: {:?}", i, f);
        prop_assert_eq!(
            std::slice::from_ref(&f.text),
            a.as_slice(),
            "statement {} of {:?}: executed {:?}",
            i,
            input,
            executed[i]
        );
    }
    Ok(())
}

fn start_logging_server(rt: &tokio::runtime::Runtime) -> (PgServer, String) {
    let server = rt
        .block_on(PgServer::start_with_settings(
            None,
            &[
                ("logging_collector", "on"),
                ("log_destination", "jsonlog"),
                ("log_directory", "log"),
                ("log_filename", "statements.log"),
                ("log_statement", "all"),
            ],
        ))
        .expect("start the test server");
    let db = rt
        .block_on(server.create_database())
        .expect("create a database")
        .dbname;
    (server, db)
}

/// The two inputs of the issue, and a few hand-written neighbours: the scanner splits them as
/// the server executes them.
#[test]
fn the_issues_inputs_split_as_postgresql_executes_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, db) = start_logging_server(&rt);
    for (n, input) in [
        "CREATE TEMP TABLE users (id int);\nSELECT E'it\\'s'; DROP TABLE users; -- '",
        "CREATE TEMP TABLE orders (id int);\nSELECT 1 AS x$y$z; DROP TABLE orders;",
        "SELECT $fn$ ; $f$ $fn$; SELECT $$a;b$$, 'it''s', E'\\\\'; SELECT /* a /* b; */ c; */ 1;",
        "SELECT 'a' -- c ' ;\n  'b;' AS \"x;\"\"y\"; SELECT U&'d;' AS a$b$;",
        // A SQL-standard body is part of its CREATE (psql sends it whole).
        "CREATE FUNCTION pg_temp.f(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  \
         SELECT 'a;b'; SELECT CASE WHEN x > 0 THEN 1 ELSE 2 END;\nEND;\nSELECT pg_temp.f(1);",
        "CREATE TEMP TABLE atomic (begin int); INSERT INTO atomic VALUES (1); DROP TABLE atomic;",
    ]
    .into_iter()
    .enumerate()
    {
        let app = format!("scanner-fixed-{n}");
        let ran = executed(&server, &db, &app, input).unwrap();
        if let Err(e) = check(input, &ran) {
            panic!("{e}");
        }
        eprintln!("{input:?}: executed {ran:?}");
    }
    let ran = executed(
        &server,
        &db,
        "scanner-fixed-count",
        "CREATE TEMP TABLE users (id int);\nSELECT E'it\\'s'; DROP TABLE users; -- '",
    )
    .unwrap();
    assert_eq!(
        ran,
        [
            "CREATE TEMP TABLE users (id int);",
            "SELECT E'it\\'s';",
            "DROP TABLE users;"
        ]
    );
}

/// Generated inputs: the statements psql sends are the generated ones, and the scanner finds
/// exactly those. 96 cases, each one psql session.
#[test]
fn generated_inputs_split_as_postgresql_executes_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, db) = start_logging_server(&rt);
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let started = Instant::now();
    let n = std::cell::Cell::new(0usize);
    let statements = std::cell::Cell::new(0usize);
    let result = runner.run(&case(), |case| {
        n.set(n.get() + 1);
        let (sent, input) = render(&case, n.get());
        let ran = executed(&server, &db, &format!("scanner-case-{}", n.get()), &input)
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            &ran,
            &sent,
            "psql sent otherwise than generated: {:?}",
            input
        );
        statements.set(statements.get() + ran.len());
        check(&input, &ran)
    });
    eprintln!(
        "{} inputs, {} statements checked against PostgreSQL in {:?}",
        n.get(),
        statements.get(),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
