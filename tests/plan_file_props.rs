//! Property tests of `PlanFile::parse`: it never panics, on arbitrary text and on the shipped
//! plans of `examples/plans/` with random edits (characters deleted and inserted, lines
//! dropped, repeated and swapped, values replaced), and every problem it reports names the file
//! and a key path or a line.
//!
//! The cases come from proptest (256 per property, a fraction of a second): a failure is shrunk
//! to a small input and its seed saved in `tests/plan_file_props.proptest-regressions`, which
//! later runs replay first.

use std::path::Path;

use deploy::plan_file::{PlanFile, PlanFileError};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;

/// What is wrong with a parse error, if anything: no problems, no file name, or a problem that
/// names neither a key path nor a line.
fn unlocated(e: &PlanFileError) -> Option<String> {
    if e.problems.is_empty() {
        return Some(format!("an error without problems: {e}"));
    }
    if !e.to_string().contains("plan.toml") {
        return Some(format!("the error does not name the file: {e}"));
    }
    e.problems
        .iter()
        .find(|p| p.path.is_empty() && !p.message.contains("line "))
        .map(|p| format!("a problem names no key path and no line: {p:?}"))
}

/// Parse `text` (a panic fails the case: proptest catches it and shrinks the input) and check
/// that every problem is located.
fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = PlanFile::parse("plan.toml", text) {
        prop_assert_eq!(unlocated(&e), None, "input: {:?}", text);
    }
    Ok(())
}

/// A shipped plan; its `Debug` is its file name, so a failure shows the name and the edits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ShippedPlan {
    name: String,
    text: String,
}

impl std::fmt::Debug for ShippedPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn shipped_plans() -> Vec<ShippedPlan> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans");
    let mut plans: Vec<ShippedPlan> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            ShippedPlan {
                name: p.display().to_string(),
                text,
            }
        })
        .collect();
    plans.sort();
    assert!(plans.len() >= 4, "the shipped plans in {}", dir.display());
    plans
}

/// Pieces of TOML syntax and of the plan's vocabulary: what an edit inserts.
const PIECES: &[&str] = &[
    "=",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\n",
    "\t",
    " ",
    "\\",
    "\"\"\"",
    "'''",
    "-",
    "+",
    "0",
    "1",
    "x",
    "é",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "inf",
    "nan",
    "true",
    "targets",
    "kind",
    "strategy",
    "id",
    "[[targets]]\n",
    "[strategy]\n",
    "[switch]\n",
];

/// Values an edit puts after a `=`.
const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"-5s\"",
    "\"1h 2m\"",
    "\"5 parsecs\"",
    "\"99999999999999999999s\"",
    "0",
    "-1",
    "1.5",
    "1e400",
    "99999999999999999999",
    "nan",
    "true",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ x = 1 }",
    "\"http://\"",
    "\"ftp://host:99999\"",
    "\"relative/path\"",
    "\"/\"",
    "\"blue\"",
    "\"../../etc\"",
    "\"a\\u0000b\"",
    "\"pause_until_promoted\"",
    "{ set_weight = 101 }",
    "{ analyze = \"-1s\" }",
    "1979-05-27T07:32:00Z",
];

/// One edit of a text. Positions are `Index`es, resolved against the text when the edit is
/// applied (so they stay in range whatever the edits before did, and shrink towards 0).
#[derive(Debug, Clone)]
enum Edit {
    /// Delete 1 to 20 characters from a position.
    Delete {
        at: Index,
        len: usize,
    },
    /// Insert a piece of TOML at a position.
    Insert {
        at: Index,
        piece: &'static str,
    },
    DropLine {
        line: Index,
    },
    RepeatLine {
        line: Index,
    },
    SwapLines {
        line: Index,
        other: Index,
    },
    /// Replace the value of some `key = value` line.
    ReplaceValue {
        keyed: Index,
        value: &'static str,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<Index>(), 1..=20usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        2 => (any::<Index>(), select(PIECES)).prop_map(|(at, piece)| Edit::Insert { at, piece }),
        1 => any::<Index>().prop_map(|line| Edit::DropLine { line }),
        1 => any::<Index>().prop_map(|line| Edit::RepeatLine { line }),
        1 => (any::<Index>(), any::<Index>())
            .prop_map(|(line, other)| Edit::SwapLines { line, other }),
        1 => (any::<Index>(), select(VALUES))
            .prop_map(|(keyed, value)| Edit::ReplaceValue { keyed, value }),
    ]
}

impl Edit {
    fn apply(&self, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut lines: Vec<&str> = text.split('\n').collect();
        match self {
            Edit::Delete { at, len } => {
                let at = at.index(chars.len() + 1);
                let end = (at + len).min(chars.len());
                chars[..at].iter().chain(&chars[end..]).collect()
            }
            Edit::Insert { at, piece } => {
                let at = at.index(chars.len() + 1);
                let mut s: String = chars[..at].iter().collect();
                s.push_str(piece);
                s.extend(&chars[at..]);
                s
            }
            Edit::DropLine { line } => {
                lines.remove(line.index(lines.len()));
                lines.join("\n")
            }
            Edit::RepeatLine { line } => {
                let line = line.index(lines.len());
                lines.insert(line, lines[line]);
                lines.join("\n")
            }
            Edit::SwapLines { line, other } => {
                let (line, other) = (line.index(lines.len()), other.index(lines.len()));
                lines.swap(line, other);
                lines.join("\n")
            }
            Edit::ReplaceValue { keyed, value } => {
                let keyed_lines: Vec<usize> = (0..lines.len())
                    .filter(|i| lines[*i].contains(" = "))
                    .collect();
                if keyed_lines.is_empty() {
                    return text.to_owned();
                }
                let i = keyed_lines[keyed.index(keyed_lines.len())];
                let key = lines[i].split(" = ").next().unwrap_or("");
                let replaced = format!("{key} = {value}");
                lines[i] = &replaced;
                lines.join("\n")
            }
        }
    }
}

/// Arbitrary text: any characters at all, characters that mean something in TOML, or pieces
/// of TOML and of plan files.
fn arbitrary_text() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = "abz_09 =\"'[]{},.#\n\t\\-+:é\u{0}".chars().collect();
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter),
        prop::collection::vec(select(alphabet), 0..200).prop_map(String::from_iter),
        prop::collection::vec(select(PIECES), 0..50).prop_map(|p| p.concat()),
    ]
}

/// A shipped plan and 1 to 5 edits of it.
fn edited_plan() -> impl Strategy<Value = (ShippedPlan, Vec<Edit>)> {
    (
        select(shipped_plans()),
        prop::collection::vec(edit(), 1..=5),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Next to this file: the root package's tests have no `lib.rs` beside them for the
        // default `SourceParallel` to find.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics_and_every_problem_is_located(text in arbitrary_text()) {
        check(&text)?;
    }

    #[test]
    fn edited_shipped_plans_never_panic_and_every_problem_is_located(
        (plan, edits) in edited_plan(),
    ) {
        let text = edits.iter().fold(plan.text, |text, e| e.apply(&text));
        check(&text)?;
    }
}

#[test]
fn the_shipped_plans_parse() {
    for ShippedPlan { name, text } in shipped_plans() {
        if let Err(e) = PlanFile::parse(&name, &text) {
            panic!("{e}");
        }
    }
}

#[test]
fn problems_in_an_edited_plan_name_their_key_paths() {
    // Deterministic edits whose problems have a known place.
    let canary = shipped_plans()
        .into_iter()
        .find(|p| p.name.ends_with("canary.toml"))
        .unwrap()
        .text;
    for (from, to, path) in [
        (
            "interval = \"1s\"",
            "interval = \"-1s\"",
            "policies.probe.interval",
        ),
        ("id = \"green\"", "id = \"blue\"", "targets[1].id"),
        (
            "endpoint = \"http://10.0.0.5:8082\"",
            "endpoint = \"ftp://x\"",
            "targets[1].endpoint",
        ),
        ("on = \"run\"", "on = \"sleep\"", "hooks[0].on"),
        ("[notify]", "[notify]\nsurprise = 1", "notify.surprise"),
        ("[probe]", "[probes]", "probes"),
    ] {
        assert!(canary.contains(from), "{from}");
        let text = canary.replacen(from, to, 1);
        let e = PlanFile::parse("plan.toml", &text).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.path == path),
            "{to}: expected a problem at {path}: {e}"
        );
        assert_eq!(unlocated(&e), None);
    }
    let e = PlanFile::parse("plan.toml", &canary.replacen("[release]", "[release", 1)).unwrap_err();
    let line = canary.lines().position(|l| l == "[release]").unwrap() + 1;
    assert!(
        e.problems[0].message.contains(&format!("line {line}")),
        "{e}"
    );
}
