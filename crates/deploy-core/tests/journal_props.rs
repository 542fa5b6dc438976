//! Property tests of journal reading: whatever bytes a journal holds, reading it never panics;
//! a journal cut at any byte (a crash, a full disk) reads as the records whose lines are whole.

use std::time::{Duration, SystemTime};

use deploy_core::journal::{JournalState, Record};
use deploy_core::{
    CanaryStep, Endpoint, PlanOptions, Release, Snapshot, Step, Strategy as Rollout, TargetId,
    Version, Weights,
};
use deploy_core::{Capabilities, TargetState};
use proptest::prelude::*;

fn plan() -> deploy_core::Plan {
    let id = |s: &str| TargetId::new(s).unwrap();
    let snapshot = Snapshot::new(
        vec![
            TargetState::new(
                id("blue"),
                Endpoint::http("127.0.0.1", 1),
                Some(Version::new("1.0.0").unwrap()),
            ),
            TargetState::new(id("green"), Endpoint::http("127.0.0.1", 2), None),
        ],
        Some(Weights::new().with(id("blue"), 100).with(id("green"), 0)),
        None,
        None,
    );
    Rollout::Canary {
        steps: vec![
            CanaryStep::SetWeight(10),
            CanaryStep::Analyze(Duration::from_secs(60)),
            CanaryStep::PauseUntilPromoted,
        ],
    }
    .plan(
        "prod",
        &Release::new(Version::new("2.0.0").unwrap()),
        &snapshot,
        Capabilities::new(true, false, false),
        &PlanOptions::default(),
    )
    .unwrap()
}

/// The `started` record of run `r` of [`plan`].
fn started() -> Record {
    Record::Started {
        run_id: "r".into(),
        plan: Box::new(plan()),
        at: SystemTime::UNIX_EPOCH,
        pid: 1,
        host: "h".into(),
    }
}

/// Records after `started`, with free text where the engine puts reasons (any Unicode).
fn record() -> impl Strategy<Value = Record> {
    let text = "\\PC{0,40}";
    prop_oneof![
        (0usize..8).prop_map(|index| Record::StepStarted {
            index,
            inverse: vec![Step::Pause { duration: None }],
            at: None,
        }),
        (0usize..8, proptest::option::of(text)).prop_map(|(index, error)| {
            Record::StepFinished {
                index,
                error,
                backup: None,
            }
        }),
        text.prop_map(|reason| Record::RollbackStarted { reason }),
        (0usize..8, text).prop_map(|(index, reason)| Record::PauseStarted { index, reason }),
        (0usize..8).prop_map(|index| Record::PauseEnded { index }),
    ]
}

fn line(r: &Record) -> Vec<u8> {
    let mut l = serde_json::to_vec(r).unwrap();
    l.push(b'\n');
    l
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_bytes_read_as_a_journal_or_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = JournalState::read(&path) {
            prop_assert!(e.to_string().contains("j.jsonl"), "{e}");
        }
    }

    #[test]
    fn a_journal_cut_at_any_byte_reads_as_its_whole_lines(
        records in proptest::collection::vec(record(), 0..12),
        cut_at in any::<proptest::sample::Index>(),
    ) {
        let mut bytes = line(&started());
        let first = bytes.len();
        let mut ends = Vec::new();
        for r in &records {
            bytes.extend(line(r));
            ends.push(bytes.len());
        }
        // Cut anywhere after the `started` record (inside a UTF-8 sequence too).
        let cut = first + cut_at.index(bytes.len() - first + 1);
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, &bytes[..cut]).unwrap();
        let whole = ends.iter().filter(|e| **e <= cut).count();
        let expected = dir.path().join("whole.jsonl");
        let end = if whole == 0 { first } else { ends[whole - 1] };
        std::fs::write(&expected, &bytes[..end]).unwrap();
        let got = JournalState::read(&torn).unwrap();
        let want = JournalState::read(&expected).unwrap();
        prop_assert_eq!(got, want);
    }
}

/// A journal written by a newer version, holding a record kind this one does not know, still
/// reads (so an older `deploy` on another machine can resume or roll back the run), and a
/// journal of the version before `at` and `measured` existed reads as it did.
#[test]
fn unknown_record_kinds_are_skipped_and_old_journals_still_read() {
    let mut bytes = line(&started());
    bytes.extend(br#"{"record":"step_started","index":0,"inverse":[]}"#);
    bytes.push(b'\n');
    bytes.extend(br#"{"record":"from_the_future","index":0,"what":[1,2]}"#);
    bytes.push(b'\n');
    bytes.extend(br#"{"record":"step_finished","index":0,"error":null}"#);
    bytes.push(b'\n');
    let st = JournalState::from_bytes(&bytes).unwrap();
    assert!(st.completed.contains(&0));
    assert!(st.started.is_empty(), "no time in an old step_started");
    assert!(st.last_verdicts.is_empty());
}

/// A target given up on settles its failed step: the run stays resumable, goes on past it, and
/// remembers the target; without the `target_given_up` record (the process died before writing
/// it) the failed step makes the run one to roll back.
#[test]
fn a_target_given_up_on_settles_its_failed_step() {
    let failed = [
        started(),
        Record::StepStarted {
            index: 0,
            inverse: Vec::new(),
            at: None,
        },
        Record::StepFinished {
            index: 0,
            error: Some("wait until healthy: green: answered unhealthy 3 times".into()),
            backup: None,
        },
    ];
    let st = JournalState::replay(failed.clone()).unwrap();
    assert!(!st.resumable());
    assert_eq!(st.next_index, 0);

    let mut given_up = failed.to_vec();
    given_up.push(Record::TargetGivenUp {
        target: TargetId::new("green").unwrap(),
        reason: "answered unhealthy 3 times".into(),
        steps: vec![0],
    });
    let st = JournalState::replay(given_up).unwrap();
    assert!(st.resumable(), "{st:?}");
    // Its failed step and its steps after it (activate, await healthy) are settled: a resumed
    // run skips them, and `status` does not show one as the step in progress.
    assert!((0..3).all(|i| st.completed.contains(&i)), "{st:?}");
    assert_eq!(st.next_index, 3);
    assert_eq!(st.given_up.len(), 1);
    assert_eq!(st.given_up[0].0.as_str(), "green");
}
