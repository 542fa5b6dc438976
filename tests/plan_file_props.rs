//! Property tests of `PlanFile::parse`: it never panics, on arbitrary text and on the shipped
//! plans of `examples/plans/` with random edits (characters deleted and inserted, lines
//! dropped, repeated and swapped, values replaced), and every problem it reports names a key
//! path or a line.
//!
//! The root package has no property-testing dependency, so the cases come from a small seeded
//! generator: each run draws a new seed (printed with any failure, with the smallest failing
//! input found), `PLAN_PROPS_SEED=<n>` replays one, and `PLAN_PROPS_CASES=<n>` sets how many
//! cases each test runs (default 256, a fraction of a second).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use deploy::plan_file::{PlanFile, PlanFileError};

/// SplitMix64: small, seedable, good enough to pick edits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    match std::env::var("PLAN_PROPS_SEED") {
        Ok(s) => s.parse().expect("PLAN_PROPS_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

fn cases() -> usize {
    std::env::var("PLAN_PROPS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// What is wrong with the outcome of parsing `text`, if anything: a panic, or a problem that
/// names neither a key path nor a line.
fn violation(text: &str) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| PlanFile::parse("plan.toml", text))) {
        Err(panic) => Some(format!(
            "parse panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => unlocated(&e),
    }
}

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

/// The smallest text (by deleting runs of characters) that still shows a violation.
fn shrink(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut run = chars.len() / 2;
    while run > 0 {
        let mut start = 0;
        while start < chars.len() {
            let mut candidate = chars.clone();
            candidate.drain(start..(start + run).min(chars.len()));
            if violation(&candidate.iter().collect::<String>()).is_some() {
                chars = candidate;
            } else {
                start += run;
            }
        }
        run /= 2;
    }
    chars.into_iter().collect()
}

/// Run `case` on `cases()` texts drawn with one seed; fail with the seed and a shrunk input.
fn check(name: &str, mut case: impl FnMut(&mut Rng) -> String) {
    let seed = seed();
    let mut rng = Rng(seed);
    for i in 0..cases() {
        let text = case(&mut rng);
        if let Some(why) = violation(&text) {
            let small = shrink(&text);
            panic!(
                "{name}, case {i} (PLAN_PROPS_SEED={seed}): {}\nsmallest input: {small:?}\ninput: {text:?}",
                violation(&small).unwrap_or(why)
            );
        }
    }
}

fn shipped_plans() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans");
    let mut plans: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
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

/// One random edit of `text`.
fn edit(rng: &mut Rng, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = rng.below(chars.len() + 1);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let line = rng.below(lines.len());
    match rng.below(7) {
        0 => {
            let end = (at + 1 + rng.below(20)).min(chars.len());
            chars[..at].iter().chain(&chars[end..]).collect()
        }
        1 | 2 => {
            let piece = *rng.pick(PIECES);
            let mut s: String = chars[..at].iter().collect();
            s.push_str(piece);
            s.extend(&chars[at..]);
            s
        }
        3 => {
            lines.remove(line);
            lines.join("\n")
        }
        4 => {
            lines.insert(line, lines[line]);
            lines.join("\n")
        }
        5 => {
            let other = rng.below(lines.len());
            lines.swap(line, other);
            lines.join("\n")
        }
        _ => {
            // Replace the value of some `key = value` line.
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|i| lines[*i].contains(" = "))
                .collect();
            if keyed.is_empty() {
                return text.to_owned();
            }
            let i = *rng.pick(&keyed);
            let key = lines[i].split(" = ").next().unwrap_or("");
            let replaced = format!("{key} = {}", rng.pick(VALUES));
            lines[i] = &replaced;
            lines.join("\n")
        }
    }
}

#[test]
fn the_shipped_plans_parse() {
    for (name, text) in shipped_plans() {
        if let Err(e) = PlanFile::parse(&name, &text) {
            panic!("{e}");
        }
    }
}

#[test]
fn arbitrary_text_never_panics_and_every_problem_is_located() {
    let alphabet: Vec<char> = "abz_09 =\"'[]{},.#\n\t\\-+:é\u{0}".chars().collect();
    check("arbitrary text", |rng| {
        let len = rng.below(200);
        match rng.below(3) {
            // Any characters at all.
            0 => (0..len)
                .filter_map(|_| char::from_u32(rng.next() as u32 % 0x11_0000))
                .collect(),
            // Characters that mean something in TOML.
            1 => (0..len).map(|_| *rng.pick(&alphabet)).collect(),
            // Pieces of TOML and of plan files.
            _ => (0..len / 4).map(|_| *rng.pick(PIECES)).collect(),
        }
    });
}

#[test]
fn edited_shipped_plans_never_panic_and_every_problem_is_located() {
    let plans = shipped_plans();
    check("edited plan", |rng| {
        let (_, text) = rng.pick(&plans);
        let mut text = text.clone();
        for _ in 0..1 + rng.below(5) {
            text = edit(rng, &text);
        }
        text
    });
}

#[test]
fn problems_in_an_edited_plan_name_their_key_paths() {
    // Deterministic edits whose problems have a known place.
    let (_, canary) = shipped_plans()
        .into_iter()
        .find(|(n, _)| n.ends_with("canary.toml"))
        .unwrap();
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
    assert!(e.problems[0].message.contains("line 15"), "{e}");
}
