//! Real engine runs on deploy-core's fakes whose gates measure values that move over time: the
//! reports that `report_schema` validates and `report_html_browser` renders.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploy::testing::FakeWorld;
use deploy::{
    CanaryStep, DynMetricGate, Engine, GateContext, MetricGate, Outcome, PlanOptions, Policies,
    Release, Report, Strategy, Verdict, VerdictKind, Version,
};
use tokio_util::sync::CancellationToken;

/// A gate that measures a scripted series of values (then repeats the last) against
/// `< limit`: passes below it, fails at or above it.
#[derive(Debug)]
pub struct SeriesGate {
    name: String,
    limit: f64,
    values: Mutex<VecDeque<f64>>,
    last: Mutex<f64>,
}

impl SeriesGate {
    pub fn new(name: &str, limit: f64, values: &[f64]) -> Self {
        Self {
            name: name.to_owned(),
            limit,
            values: Mutex::new(values.iter().copied().collect()),
            last: Mutex::new(values.last().copied().unwrap_or(0.0)),
        }
    }
}

#[async_trait]
impl MetricGate for SeriesGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &GateContext) -> deploy::Result<Verdict> {
        let value = self
            .values
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*self.last.lock().unwrap());
        let kind = if value < self.limit {
            VerdictKind::Pass
        } else {
            VerdictKind::Fail
        };
        Ok(Verdict::new(
            kind,
            Some(value),
            format!("< {}", self.limit),
            format!("series:{}", self.name),
            format!("{value} is {kind} against < {}", self.limit),
        ))
    }
}

/// A gate answering as deploy-prometheus's Mann-Whitney judge does (its condition and the
/// statistics in its reason), with the effect size rising by `step` each measurement.
#[derive(Debug)]
pub struct JudgeLikeGate {
    name: String,
    effect: Mutex<f64>,
    step: f64,
}

impl JudgeLikeGate {
    pub fn new(name: &str, start: f64, step: f64) -> Self {
        Self {
            name: name.to_owned(),
            effect: Mutex::new(start),
            step,
        }
    }
}

#[async_trait]
impl MetricGate for JudgeLikeGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &GateContext) -> deploy::Result<Verdict> {
        let ratio = {
            let mut e = self.effect.lock().unwrap();
            let r = *e;
            *e += self.step;
            r
        };
        let (kind, why, p) = if ratio >= 1.1 {
            (
                VerdictKind::Fail,
                "significant and large enough: the canary regressed",
                1.2e-4,
            )
        } else {
            (VerdictKind::Pass, "not significant", 3.4e-1)
        };
        Ok(Verdict::new(
            kind,
            Some(ratio),
            "canary not significantly higher than baseline (Mann-Whitney U at confidence 0.98, min effect 10%)",
            "judge \"latency-vs-baseline\" <script>alert('x')</script> & \"quotes\"",
            format!(
                "{why}: U = 61, z = 0.412, p = {p:.3e} (alpha 0.020), effect size (mean ratio) = {ratio:.3}; \
                 canary n = 12 mean = 0.051000, baseline n = 12 mean = 0.050000"
            ),
        ))
    }
}

fn policies(failure_limit: u32) -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::from_millis(10);
    p.probe.healthy_threshold = 1;
    p.probe.deadline = Duration::from_secs(5);
    p.analysis.interval = Duration::from_millis(40);
    p.analysis.failure_limit = failure_limit;
    p
}

async fn run(
    world: &FakeWorld,
    gates: Vec<DynMetricGate>,
    strategy: Strategy,
    version: &str,
    failure_limit: u32,
) -> Report {
    let mut env = world.environment_builder("prod");
    for g in gates {
        env = env.gate(g);
    }
    let engine = Engine::new(env.build().expect("a valid environment"))
        .with_policies(policies(failure_limit));
    engine
        .deploy(
            &strategy,
            &Release::new(Version::new(version).unwrap()),
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("the run starts")
}

fn canary() -> Strategy {
    Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(10),
            CanaryStep::Analyze(Duration::from_millis(320)),
            CanaryStep::Pause(Duration::from_millis(50)),
            CanaryStep::SetWeight(50),
            CanaryStep::Analyze(Duration::from_millis(320)),
        ],
    }
}

fn blue_green() -> Strategy {
    Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: Duration::from_millis(200),
    }
}

/// A canary promoted through two analyses, three gates (one judged as Mann-Whitney does).
pub async fn promoted_canary() -> Report {
    let gates: Vec<DynMetricGate> = vec![
        Arc::new(SeriesGate::new(
            "error-rate",
            0.01,
            &[0.002, 0.003, 0.001, 0.004, 0.002, 0.005, 0.003, 0.002],
        )),
        Arc::new(SeriesGate::new(
            "p99 <latency> & \"tail\"",
            0.5,
            &[0.21, 0.25, 0.3, 0.28, 0.33, 0.31, 0.29, 0.27],
        )),
        Arc::new(JudgeLikeGate::new("latency-vs-baseline", 0.98, 0.005)),
    ];
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let r = run(&world, gates, canary(), "2.0.0", 0).await;
    assert_eq!(r.outcome, Outcome::Promoted, "{r}");
    r
}

/// A canary whose error rate climbs past its limit at 10 %: rolled back by its gate (the
/// second failed measurement, `failure_limit` 1).
pub async fn gate_failed_canary() -> Report {
    let gates: Vec<DynMetricGate> = vec![
        Arc::new(SeriesGate::new(
            "error-rate",
            0.01,
            &[0.002, 0.004, 0.008, 0.013, 0.021, 0.034],
        )),
        Arc::new(JudgeLikeGate::new("latency-vs-baseline", 1.0, 0.01)),
    ];
    let world = FakeWorld::slots("2.0.0", "1.0.0");
    let r = run(&world, gates, canary(), "3.0.0", 1).await;
    assert_eq!(r.outcome, Outcome::RolledBack, "{r}");
    r
}

/// Blue-green promoted after its bake.
pub async fn promoted_blue_green() -> Report {
    let gates: Vec<DynMetricGate> = vec![Arc::new(SeriesGate::new(
        "error-rate",
        0.01,
        &[0.001, 0.002, 0.001],
    ))];
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    let r = run(&world, gates, blue_green(), "2.0.0", 0).await;
    assert_eq!(r.outcome, Outcome::Promoted, "{r}");
    r
}

/// Blue-green whose bake fails, and whose switch back fails too: the run fails.
pub async fn failed_rollback() -> Report {
    let gates: Vec<DynMetricGate> = vec![Arc::new(SeriesGate::new(
        "error-rate",
        0.01,
        &[0.002, 0.05],
    ))];
    let world = FakeWorld::slots("1.0.0", "0.9.0");
    // The first set_weights switches to green; every later one (the undo switching back) fails.
    world.switch.faults.fail_from("set_weights", 2);
    let r = run(&world, gates, blue_green(), "2.0.0", 0).await;
    assert_eq!(r.outcome, Outcome::Failed, "{r}");
    r
}
