//! Every report the engine writes validates against `schemas/report-v1.schema.json`: a promoted
//! canary with analyses, a promoted blue-green, a canary rolled back by its gate, and a run whose
//! rollback failed — real engine runs on deploy-core's fakes, serialised as the state store
//! keeps them, read back, and validated.
//!
//! The validator is `boon`: it implements draft 2020-12 completely (it passes the official
//! JSON-Schema-Test-Suite) with a few small dependencies, where `jsonschema` brings a larger
//! tree (regex engines, an HTTP resolver unless its default features are turned off, and more)
//! for features these tests do not need.

mod common;
mod report_runs;

use deploy::Report;
use serde_json::Value;

/// Serialise as the state store does, validate, and read back unchanged.
fn check(name: &str, report: &Report) -> Value {
    let text = serde_json::to_string_pretty(report).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    if let Err(e) = common::validate_report(&value) {
        panic!("{name}: the report does not match the schema:\n{e}\n{text}");
    }
    let back: Report = serde_json::from_str(&text).unwrap();
    // serde_json reads a float back to within one unit in the last place (without its
    // `float_roundtrip` feature): compare measured values to 1e-12, everything else exactly.
    let values =
        |r: &Report| -> Vec<Option<f64>> { r.verdicts.iter().map(|v| v.verdict.value).collect() };
    for (a, b) in values(&back).into_iter().zip(values(report)) {
        match (a, b) {
            (Some(a), Some(b)) => assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{name}: {a} != {b}"
            ),
            (a, b) => assert_eq!(a, b, "{name}"),
        }
    }
    let (mut back, mut report) = (back, report.clone());
    for r in [&mut back, &mut report] {
        for v in &mut r.verdicts {
            v.verdict.value = v.verdict.value.map(|_| 0.0);
        }
    }
    assert_eq!(back, report, "{name}: read back differently");
    value
}

#[tokio::test]
async fn a_promoted_canary_with_analyses_matches_the_schema() {
    let v = check("promoted canary", &report_runs::promoted_canary().await);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["outcome"], "promoted");
    let verdicts = v["verdicts"].as_array().unwrap();
    assert!(verdicts.len() >= 3 * 2 * 4, "{}", verdicts.len());
    assert!(verdicts.iter().all(|v| v["measured_at"].is_string()));
    let weights = v["weights_over_time"].as_array().unwrap();
    // Weights are relative (10 % is blue 9, green 1): green's share in percent.
    let green: Vec<u64> = weights
        .iter()
        .map(|p| {
            let w = &p["weights"];
            let g = w["green"].as_u64().unwrap();
            g * 100 / (g + w["blue"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(green, [0, 10, 50, 100]);
}

#[tokio::test]
async fn a_promoted_blue_green_matches_the_schema() {
    let v = check(
        "promoted blue-green",
        &report_runs::promoted_blue_green().await,
    );
    assert_eq!(v["outcome"], "promoted");
    assert!(v["rollback"].is_null());
}

#[tokio::test]
async fn a_canary_rolled_back_by_its_gate_matches_the_schema() {
    let v = check(
        "rolled-back canary",
        &report_runs::gate_failed_canary().await,
    );
    assert_eq!(v["outcome"], "rolled_back");
    let rollback = &v["rollback"];
    assert!(rollback["reason"].as_str().unwrap().contains("error-rate"));
    let undo = rollback["steps"].as_array().unwrap();
    assert!(!undo.is_empty());
    assert!(
        undo.iter()
            .all(|u| u["step"]["op"].is_string() && u["duration_ms"].is_number())
    );
    let failed = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| !s["error"].is_null())
        .expect("the failed analysis");
    assert_eq!(failed["step"]["op"], "analyze");
    assert_eq!(failed["error"]["kind"], "rejected");
}

#[tokio::test]
async fn a_run_whose_rollback_failed_matches_the_schema() {
    let v = check("failed rollback", &report_runs::failed_rollback().await);
    assert_eq!(v["outcome"], "failed");
    let undo = v["rollback"]["steps"].as_array().unwrap();
    let failed = undo
        .iter()
        .find(|u| !u["error"].is_null())
        .expect("the failed undo");
    assert_eq!(failed["step"]["op"], "set_weights");
    assert!(failed["error"]["message"].is_string());
    assert!(failed["error"]["context"].is_object());
}

#[test]
fn the_schema_refuses_what_version_1_is_not() {
    let good = serde_json::json!({
        "schema_version": 1, "run_id": "r", "environment": "prod", "version": "1.0.0",
        "strategy": "canary", "outcome": "promoted", "started_at": "2026-11-29T06:37:48Z",
        "finished_at": "2026-11-29T06:37:49.5Z", "duration_ms": 1500.0, "steps": [],
        "verdicts": [], "weights_over_time": [], "rollback": null, "notes": [],
        "initial_state": null, "final_state": null
    });
    common::validate_report(&good).unwrap();
    for (key, bad) in [
        ("duration_ms", serde_json::json!("1s 500ms")),
        ("started_at", serde_json::json!("1 minute ago")),
        ("schema_version", serde_json::json!(2)),
        ("steps", serde_json::json!([[{"op": "migrate"}, null]])),
    ] {
        let mut v = good.clone();
        v[key] = bad;
        assert!(common::validate_report(&v).is_err(), "{key} accepted");
    }
}
