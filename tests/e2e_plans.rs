//! The example plan files in `examples/plans/` are valid plan files: one per strategy, each with
//! the real adapter sections. (Building their environments needs their servers: parse only.)

use std::collections::BTreeMap;
use std::path::Path;

use deploy::plan_file::PlanFile;

#[test]
fn every_example_plan_parses_and_there_is_one_per_strategy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans");
    let mut by_strategy = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let plan =
            PlanFile::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            plan.strategy.name().replace('_', "-"),
            name,
            "{} is named after its strategy",
            path.display()
        );
        assert!(!plan.smoke.is_empty(), "{name}: smoke checks");
        assert!(plan.notify.is_some(), "{name}: notify");
        assert!(!plan.hooks.is_empty(), "{name}: hooks");
        by_strategy.insert(name, plan);
    }
    assert_eq!(
        by_strategy.keys().map(String::as_str).collect::<Vec<_>>(),
        ["blue-green", "canary", "recreate", "rolling"]
    );
    let kind = |v: &toml::Value| v.get("kind").and_then(|k| k.as_str()).unwrap().to_owned();
    let recreate = &by_strategy["recreate"];
    assert_eq!(kind(recreate.maintenance.as_ref().unwrap()), "nginx");
    assert_eq!(kind(recreate.migrations.as_ref().unwrap()), "postgres");
    let rolling = &by_strategy["rolling"];
    assert!(rolling.targets.len() >= 3);
    assert!(rolling.targets.iter().all(|t| t.ssh.is_some()), "SSH hosts");
    for name in ["rolling", "blue-green", "canary"] {
        let p = &by_strategy[name];
        assert_eq!(kind(p.switch.as_ref().unwrap()), "haproxy", "{name}");
        assert!(!p.gates.is_empty(), "{name}: gates");
    }
    let presets: Vec<String> = by_strategy["canary"]
        .gates
        .iter()
        .filter_map(|g| g.get("preset").and_then(|p| p.as_str()).map(str::to_owned))
        .collect();
    assert_eq!(
        presets,
        ["error_rate", "p99_latency"],
        "the runbook's two alert rules: error rate and p99"
    );
}
