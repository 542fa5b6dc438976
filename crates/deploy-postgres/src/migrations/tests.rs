use std::collections::HashSet;
use std::path::Path;

use super::classify::*;
use super::scan::*;
use super::*;
use proptest::prelude::*;

fn class(sql: &str) -> Compatibility {
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
        Compatibility::Compatible
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
        let va = MigrationVersion::parse(Layout::GolangMigrate, &format!("{a:08}")).unwrap();
        let vb = MigrationVersion::parse(Layout::GolangMigrate, &b.to_string()).unwrap();
        proptest::prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        proptest::prop_assert_eq!(va.to_string(), a.to_string());
    }
}

#[test]
fn versions_order_as_their_tools_order_them() {
    let f = |s| MigrationVersion::parse(Layout::Flyway, s).unwrap();
    assert!(f("2") < f("10"));
    assert!(f("1.2") < f("1.10"));
    assert!(f("1_2_9") < f("1_2_10"));
    assert_eq!(f("1_2"), f("1.2"));
    assert_eq!(f("1_2_10").to_string(), "1.2.10");
    let g = |s| MigrationVersion::parse(Layout::GolangMigrate, s);
    assert_eq!(g("0007").unwrap().to_string(), "7");
    assert!(g("1.2").is_none(), "golang-migrate versions are one number");
    // Diesel: dashes dropped, compared as text, as diesel compares them.
    let d = |s| MigrationVersion::parse(Layout::Diesel, s).unwrap();
    assert_eq!(d("2026-11-21-093000").to_string(), "20261121093000");
    assert_eq!(
        d("2026-07-27-143313-0000").to_string(),
        "202607271433130000"
    );
    assert!(d("2026-07-27-143313-0000") < d("2026-09-01-000000"));
    assert!(d("00000000000000") < d("2026-07-27-143313-0000"));
    for layout in [Layout::Flyway, Layout::GolangMigrate, Layout::Diesel] {
        assert!(MigrationVersion::parse(layout, "1a").is_none());
        assert!(MigrationVersion::parse(layout, "").is_none());
    }
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
        assert_eq!(class(sql), Compatibility::Compatible, "{sql:?}");
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
        Compatibility::Compatible
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
    let sql =
        "COPY t (a, b) FROM STDIN WITH (FORMAT csv);\nit's,\"x;\"\n\\.\nDROP TABLE users;\n-- '\n";
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
        assert_eq!(class(sql), Compatibility::Compatible, "{sql:?}");
    }
    // A quoted name is the table PostgreSQL means: "users" is users, "Users" is not.
    assert!(
        class("CREATE TABLE \"Users\" (id int); CREATE INDEX ON users (id);")
            .reason()
            .is_some()
    );
    assert_eq!(
        class("CREATE TABLE \"users\" (id int); CREATE INDEX ON public.users (id);"),
        Compatibility::Compatible
    );
    assert_eq!(
        class("ALTER TABLE t ADD COLUMN \"drop\" int"),
        Compatibility::Compatible
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
    assert_eq!(class(&sql), Compatibility::Compatible);
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
        prop_assert_eq!(class(&render(&selects)), Compatibility::Compatible);
        let close = if hide == "/*" { "*/" } else { hide };
        let hidden = format!("{} x {hide}; DROP TABLE users; --{close}", render(&selects));
        prop_assert_eq!(class(&hidden), Compatibility::Compatible, "{}", hidden);
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
            for layout in [Layout::Flyway, Layout::GolangMigrate, Layout::Diesel] {
                let _ = MigrationVersion::parse(layout, n).map(|v| (v.to_string(), v.as_number()));
            }
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
        prop_assert_eq!(e.version, Some(MigrationVersion::Parts(parts)));
        prop_assert_eq!(e.kind == Kind::Down, undo);
        prop_assert_eq!(e.name, name);
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
        prop_assert_eq!(e.version.and_then(|v| v.as_number()), Some(n));
        prop_assert_eq!(e.name, name);
        prop_assert_eq!(e.kind == Kind::Down, down);
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
        prop_assert_eq!(version, MigrationVersion::Text(number));
        prop_assert_eq!(parsed, name);
    }
}

#[test]
fn the_views_a_repeatable_creates_are_found_to_drop_last_first() {
    let sql = "create or replace view v_users as select 1;\n\
               CREATE MATERIALIZED VIEW IF NOT EXISTS public.totals AS SELECT 2;\n\
               create recursive view \"Tree\" (n) as select 1;\n\
               create function f() returns int language sql as $$ create view no as select 1 $$;\n\
               -- create view commented as select 1;\n\
               comment on view v_users is 'create view x';\n";
    assert_eq!(
        view_drops(sql),
        [
            "DROP VIEW IF EXISTS \"Tree\";",
            "DROP MATERIALIZED VIEW IF EXISTS PUBLIC.TOTALS;",
            "DROP VIEW IF EXISTS V_USERS;",
        ]
    );
}
