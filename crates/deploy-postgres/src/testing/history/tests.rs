use std::cmp::Ordering;

use super::*;
use crate::migrations::{self, LoadOptions, scan};

const LAYOUTS: [Layout; 3] = [Layout::Flyway, Layout::GolangMigrate, Layout::Diesel];

/// The statements of a file, as the crate's scanner finds them.
fn statements(sql: &str) -> Vec<String> {
    scan(sql)
        .into_iter()
        .map(|s| s.text)
        .filter(|t| !t.is_empty())
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_history_and_another_seed_another() {
    for layout in LAYOUTS {
        let a = History::generate(layout, 200, 1);
        assert_eq!(a, History::generate(layout, 200, 1), "{layout:?}");
        assert_ne!(
            a.files(),
            History::generate(layout, 200, 2).files(),
            "{layout:?}"
        );
    }
}

#[test]
fn a_history_has_the_migrations_asked_for_each_with_an_up_and_a_down() {
    for layout in LAYOUTS {
        for count in [1, 7, 60, 200, 260] {
            let h = History::generate(layout, count, 9);
            assert_eq!(h.layout(), layout);
            assert_eq!(h.migrations().len(), count, "{layout:?} {count}");
            let metadata = h
                .files()
                .keys()
                .filter(|k| k.ends_with("/metadata.toml"))
                .count();
            assert_eq!(
                h.files().len(),
                2 * count + h.repeatables().len() + metadata,
                "{layout:?} {count}"
            );
            let mut labels = HashSet::new();
            let mut versions = HashSet::new();
            for m in h.migrations() {
                assert!(h.files().contains_key(&m.up), "{}", m.up);
                assert!(h.files().contains_key(&m.down), "{}", m.down);
                assert!(labels.insert(m.label.clone()), "{}", m.label);
                assert!(versions.insert(m.version.clone()), "{}", m.version);
                assert!(
                    !statements(&h.files()[&m.up]).is_empty(),
                    "{}: an empty up file",
                    m.up
                );
            }
            assert_eq!(
                h.repeatables().is_empty(),
                layout != Layout::Flyway || count == 0,
                "{layout:?}"
            );
        }
    }
}

/// Flyway's order: numeric parts, the shorter padded with zeros.
fn flyway_order(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<u64> {
        let v = s
            .strip_prefix('V')
            .and_then(|s| s.split_once("__"))
            .unwrap()
            .0;
        v.split(['.', '_']).map(|p| p.parse().unwrap()).collect()
    };
    let (a, b) = (parts(a), parts(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    Ordering::Equal
}

/// golang-migrate's order: the number before the first `_`.
fn golang_order(a: &str, b: &str) -> Ordering {
    let n = |s: &str| -> u64 { s.split_once('_').unwrap().0.parse().unwrap() };
    n(a).cmp(&n(b))
}

/// diesel's order: the folder name before the first `_`, dashes dropped, as text.
fn diesel_order(a: &str, b: &str) -> Ordering {
    let v = |s: &str| -> String { s.split_once('_').unwrap().0.replace('-', "") };
    v(a).cmp(&v(b))
}

#[test]
fn the_migrations_are_in_the_order_their_tool_applies_them() {
    for layout in LAYOUTS {
        for seed in [1, 2, 3, 4] {
            let h = History::generate(layout, 200, seed);
            let order: fn(&str, &str) -> Ordering = match layout {
                Layout::Flyway => flyway_order,
                Layout::GolangMigrate => golang_order,
                Layout::Diesel => diesel_order,
            };
            for w in h.migrations().windows(2) {
                assert_eq!(
                    order(&w[0].label, &w[1].label),
                    Ordering::Less,
                    "{layout:?} seed {seed}: {} then {}",
                    w[0].label,
                    w[1].label
                );
            }
        }
    }
    // diesel's timestamps are also in time order, whichever of its two forms each has.
    let h = History::generate(Layout::Diesel, 200, 5);
    let stamps: Vec<String> = h
        .migrations()
        .iter()
        .map(|m| m.label[..17].replace('-', ""))
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

#[test]
fn the_folder_reader_reads_every_history_without_refusal() {
    for layout in LAYOUTS {
        for seed in [1, 2, 3] {
            let h = History::generate(layout, 200, seed);
            let dir = tempfile::tempdir().unwrap();
            h.write_to(dir.path()).unwrap();
            let folder = migrations::load(dir.path(), LoadOptions::default())
                .unwrap_or_else(|e| panic!("{layout:?} seed {seed}: {e}"));
            assert_eq!(folder.layout, layout);
            assert_eq!(folder.migrations.len(), h.migrations().len());
            for (m, g) in folder.migrations.iter().zip(h.migrations()) {
                assert_eq!(m.label, g.label, "{layout:?} seed {seed}");
                assert_eq!(m.version.to_string(), g.version, "{}", g.label);
                let shape = m
                    .shape()
                    .unwrap_or_else(|e| panic!("{layout:?} seed {seed}: {e}"));
                assert!(
                    g.runs_as(&shape.mode),
                    "{}: {:?} read as {:?}",
                    g.label,
                    g.body,
                    shape.mode
                );
                let down = m
                    .down_shape()
                    .unwrap_or_else(|| panic!("{}: no down", g.label))
                    .unwrap_or_else(|e| panic!("{layout:?} seed {seed}: {e}"));
                let expected = match g.down_body {
                    Body::OwnTransaction => matches!(down.mode, Transaction::Own),
                    Body::Concurrently => down.mode.is_outside(),
                    Body::Plain => down.mode == Transaction::Wrapped,
                };
                assert!(expected, "{}: down {:?}", g.label, down.mode);
            }
            let labels: Vec<&str> = folder
                .repeatables
                .iter()
                .map(|r| r.label.as_str())
                .collect();
            assert_eq!(labels, h.repeatables(), "{layout:?} seed {seed}");
            for r in &folder.repeatables {
                assert_eq!(r.shape().unwrap().mode, Transaction::Wrapped, "{}", r.label);
            }
        }
    }
}

#[test]
fn a_history_has_what_real_projects_have() {
    for layout in LAYOUTS {
        for seed in [7, 8] {
            let h = History::generate(layout, 200, seed);
            let ms = h.migrations();
            let what = format!("{layout:?} seed {seed}");
            let changes: BTreeSet<Change> = ms.iter().map(|m| m.change).collect();
            for c in Change::ALL {
                let expected = c != Change::DieselSetup || layout == Layout::Diesel;
                assert_eq!(changes.contains(&c), expected, "{what}: {c:?}");
            }
            let own: Vec<usize> = (0..ms.len())
                .filter(|&i| ms[i].body == Body::OwnTransaction)
                .collect();
            assert!(own.len() >= 3, "{what}: {own:?}");
            assert!(
                own.iter().any(|i| (90..=110).contains(i)),
                "{what}: {own:?}"
            );
            for &i in &own {
                let s = statements(&h.files()[&ms[i].up]);
                assert!(
                    s[0].starts_with("BEGIN") || s[0].starts_with("START"),
                    "{s:?}"
                );
                assert!(s.last().unwrap().starts_with("COMMIT"), "{s:?}");
            }
            // CONCURRENTLY: alone in its file, no marker, no transaction.
            let concurrent: Vec<&HistoryMigration> =
                ms.iter().filter(|m| m.body == Body::Concurrently).collect();
            assert!(concurrent.len() >= 2, "{what}");
            for m in &concurrent {
                let up = &h.files()[&m.up];
                assert!(!up.starts_with(crate::NO_TRANSACTION_MARKER), "{}", m.up);
                let s = statements(up);
                assert_eq!(s.len(), 1, "{}: {s:?}", m.up);
                assert!(s[0].contains(" INDEX CONCURRENTLY "), "{s:?}");
                let down = statements(&h.files()[&m.down]);
                assert_eq!(down.len(), 1, "{}: {down:?}", m.down);
                assert!(down[0].starts_with("DROP INDEX"), "{down:?}");
            }
            assert!(
                concurrent.iter().any(|m| m.down_body == Body::Concurrently),
                "{what}"
            );
            for m in ms.iter().filter(|m| m.change == Change::AddEnumValue) {
                let s = statements(&h.files()[&m.up]);
                assert_eq!(s.len(), 1, "{}: {s:?}", m.up);
                assert!(s[0].starts_with("ALTER TYPE ") && s[0].contains(" ADD VALUE "));
            }
            // A PL/pgSQL body's BEGIN is not a transaction.
            assert!(ms.iter().any(|m| m.change == Change::TriggerFunction
                && m.body == Body::Plain
                && h.files()[&m.up].contains("\nBEGIN\n")));
            // Files as people leave them.
            let texts: Vec<&String> = ms
                .iter()
                .flat_map(|m| [&h.files()[&m.up], &h.files()[&m.down]])
                .collect();
            assert!(texts.iter().any(|t| t.contains("\r\n")), "{what}: CRLF");
            assert!(
                texts.iter().any(|t| !t.ends_with('\n')),
                "{what}: no final newline"
            );
            let unterminated = |t: &&&String| {
                let last = t.trim_end().lines().last().unwrap_or_default();
                !last.ends_with(';') && !last.starts_with("--")
            };
            assert!(
                texts.iter().any(|t| unterminated(&t)),
                "{what}: no final semicolon"
            );
            assert!(texts.iter().any(|t| t.starts_with("SET lock_timeout")));
            assert!(
                texts.iter().any(|t| t.contains("DO $$")),
                "{what}: a DO block"
            );
            assert!(texts.iter().any(|t| !t.is_ascii()), "{what}: UTF-8");
            match layout {
                Layout::Flyway => flyway_has_what_flyway_projects_have(&h, &what),
                Layout::GolangMigrate => {
                    for (i, m) in ms.iter().enumerate() {
                        assert!(
                            m.label.starts_with(&format!("{:06}_", i + 1)),
                            "{}",
                            m.label
                        );
                        assert_eq!(m.down, m.label.replace(".up.sql", ".down.sql"));
                    }
                }
                Layout::Diesel => diesel_has_what_diesel_projects_have(&h, &what),
            }
        }
    }
}

fn flyway_has_what_flyway_projects_have(h: &History, what: &str) {
    let ms = h.migrations();
    let written = |m: &&HistoryMigration| m.label.split_once("__").unwrap().0.to_owned();
    assert!(
        ms.iter().map(|m| written(&m)).any(|v| v.contains('_')),
        "{what}"
    );
    assert!(
        ms.iter().map(|m| written(&m)).any(|v| v.contains('.')),
        "{what}"
    );
    let versions: Vec<&str> = ms.iter().map(|m| m.version.as_str()).collect();
    let nine = versions.iter().position(|v| *v == "1.2.9").expect("1.2.9");
    assert_eq!(versions[nine + 1], "1.2.10", "{what}");
    assert!(versions.iter().any(|v| v.split('.').count() == 2));
    assert!(versions.iter().any(|v| v.split('.').count() == 3));
    for m in ms {
        assert_eq!(m.down, format!("U{}", &m.label[1..]), "{what}");
    }
    let r = h.repeatables();
    assert!((3..=4).contains(&r.len()), "{what}: {r:?}");
    for name in r {
        assert!(name.starts_with("R__") && name.ends_with(".sql"), "{name}");
        let s = statements(&h.files()[name]);
        assert!(!s.is_empty());
        for st in s {
            assert!(st.starts_with("CREATE OR REPLACE VIEW "), "{name}: {st}");
        }
    }
}

fn diesel_has_what_diesel_projects_have(h: &History, what: &str) {
    let ms = h.migrations();
    assert_eq!(ms[0].label, "00000000000000_diesel_initial_setup");
    assert_eq!(ms[0].version, "00000000000000");
    assert!(h.files()[&ms[0].up].contains("diesel_manage_updated_at"));
    let newer = |m: &HistoryMigration| m.label.as_bytes().get(17) == Some(&b'-');
    let first_newer = ms.iter().position(newer).expect("newer folder names");
    assert!(first_newer > 1, "{what}");
    assert!(
        ms[first_newer..].iter().any(|m| !newer(m)),
        "{what}: an older name after a newer one"
    );
    for m in &ms[1..] {
        assert_eq!(m.up, format!("{}/up.sql", m.label));
        assert_eq!(m.down, format!("{}/down.sql", m.label));
        let len = m.label.split_once('_').unwrap().0.len();
        assert!(len == 17 || len == 22, "{}", m.label);
    }
    let metadata: Vec<&HistoryMigration> =
        ms.iter().filter(|m| m.no_transaction_metadata).collect();
    assert!(metadata.len() >= 3, "{what}");
    assert!(metadata.iter().any(|m| m.body == Body::Plain), "{what}");
    assert!(
        ms.iter()
            .any(|m| m.body == Body::Concurrently && !m.no_transaction_metadata),
        "{what}"
    );
    for m in ms {
        let path = format!("{}/metadata.toml", m.label);
        assert_eq!(
            h.files().get(&path).map(String::as_str),
            m.no_transaction_metadata
                .then_some("run_in_transaction = false\n"),
        );
    }
    assert!(
        ms.iter()
            .any(|m| h.files()[&m.up].contains("SELECT diesel_manage_updated_at('")),
        "{what}"
    );
}

#[test]
fn civil_dates_are_right() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(18_631), (2021, 1, 4));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(19_783), (2024, 3, 1));
}

#[test]
fn dumps_are_normalised() {
    let dump = "--\n-- PostgreSQL database dump\n--\n\\restrict abc\n\nSET statement_timeout = 0;\n\
                SELECT pg_catalog.set_config('search_path', '', false);\n\nCREATE TABLE public.a (\n    id integer\n);\n\n\\unrestrict abc\n";
    assert_eq!(
        normalize_dump(dump),
        "CREATE TABLE public.a (\n    id integer\n);"
    );
    assert_eq!(normalize_dump("--\n\nSET x = 1;\n"), "");
}

#[test]
fn byte_order_marks_go_on_the_files_chosen_and_some_plain_ones() {
    let h = History::generate(Layout::Flyway, 200, 3);
    let marked = h
        .clone()
        .with_byte_order_marks(|m| m.body == Body::OwnTransaction);
    let mut plain = 0;
    for m in h.migrations() {
        let before = &h.files()[&m.up];
        let after = &marked.files()[&m.up];
        if after.starts_with('\u{feff}') {
            assert_eq!(&after['\u{feff}'.len_utf8()..], before.as_str());
            assert_ne!(m.body, Body::Concurrently, "{}", m.label);
            plain += usize::from(m.body == Body::Plain);
        } else {
            assert_eq!(after, before);
            assert_ne!(m.body, Body::OwnTransaction, "{}", m.label);
        }
        assert_eq!(h.files()[&m.down], marked.files()[&m.down]);
    }
    assert!(plain >= 10, "{plain}");
}
