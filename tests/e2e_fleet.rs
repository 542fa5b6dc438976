//! A fleet rolled through one real sshd behind a real haproxy, with a host whose new release is
//! broken (its `/health` answers 503): the rollback undoes a batch's hosts together, as the
//! batch was done, each step's time is its own, and the live world ends where it began; with a
//! failure budget, the broken host is taken out and rolled back alone while the others go on,
//! and a retry brings it in once fixed. Prepared a batch ahead, the second batch's hosts are
//! prepared while the first waits to be healthy; a host that cannot be prepared then rolls the
//! fleet back, or is left out by a budget, before anything touches it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use deploy::adapters::Adapters;
use deploy::event::{Event, Observer};
use deploy::plan_file::PlanFile;
use deploy::{Engine, Outcome, Report, Step};
use tokio_util::sync::CancellationToken;

mod common;
use common::fleet::{Fleet, HOSTS};
use common::haproxy_wait_up;

async fn deploy_with(engine: &Engine, plan: &PlanFile) -> Report {
    engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

/// The fleet (2.0.0 broken on `broken_on`), its plan with `strategy_extra` and `policies`, and
/// its engine, every host on 1.0.0.
async fn installed(
    broken_on: &[&str],
    strategy_extra: &str,
    policies: &str,
) -> (Fleet, PlanFile, Engine) {
    let fleet = Fleet::start(broken_on).await;
    let plan = fleet.plan(strategy_extra, policies);
    let engine = plan.engine(&Adapters::new()).unwrap();
    fleet.install(&engine).await;
    (fleet, plan, engine)
}

/// Live: every host serves 1.0.0, at full weight (also once HAProxy's own checks have
/// settled), its `current` on `releases/1.0.0`.
async fn assert_all_back_on_1_0_0(fleet: &Fleet) {
    assert_eq!(fleet.versions().await, ["1.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);
    for name in HOSTS {
        assert_eq!(
            std::fs::read_link(fleet.dir.join(name).join("current")).unwrap(),
            Path::new("releases/1.0.0"),
            "{name}"
        );
    }
}

/// When a step of the report started and ended.
fn span(started_at: SystemTime, duration: Duration) -> (SystemTime, SystemTime) {
    (started_at, started_at + duration)
}

fn overlap(a: (SystemTime, SystemTime), b: (SystemTime, SystemTime)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_host_rolls_the_fleet_back_a_batch_at_a_time_with_each_steps_own_time() {
    // Health waits end at the deadline only, so that a failed one clearly outlasts a good one.
    let (fleet, plan, engine) =
        installed(&["app-3"], "", "deadline = \"3s\"\nunhealthy_threshold = 0").await;

    let report = deploy_with(&engine, &plan).await;
    println!("{report}");

    // The live world: every host serves 1.0.0 and takes its full weight again — also once
    // haproxy's own checks have seen the broken host healthy again (a server drained, then
    // DOWN by its checks, must not come back UP as DRAIN).
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    assert_all_back_on_1_0_0(&fleet).await;

    // Each step of the second batch has its own time: app-4 was healthy at once, app-3 never.
    let awaited = |target: &str| {
        report
            .steps
            .iter()
            .find(
                |s| matches!(&s.step, Step::AwaitHealthy { target: t, .. } if t.as_str() == target),
            )
            .unwrap_or_else(|| panic!("no health wait of {target} in {report}"))
    };
    let (healthy, broken) = (awaited("app-4"), awaited("app-3"));
    assert!(
        healthy.error.is_none() && broken.error.is_some(),
        "{report}"
    );
    assert!(
        healthy.duration * 2 < broken.duration,
        "app-4's wait ({:?}) is its own, not its batch's ({:?})",
        healthy.duration,
        broken.duration
    );

    // The undo of each batch acts together: its two re-activations overlap in time, and so do
    // its two health waits — as the batch's own steps did.
    let rollback = report.rollback.as_ref().expect("a rollback");
    let undo = |op: &str, target: &str| {
        let u = rollback
            .steps
            .iter()
            .find(|u| u.step.op() == op && u.step.target().is_some_and(|t| t.as_str() == target))
            .unwrap_or_else(|| panic!("no undo {op} of {target} in {report}"));
        assert!(u.error.is_none(), "{report}");
        span(u.started_at, u.duration)
    };
    for (a, b) in [("app-3", "app-4"), ("app-1", "app-2")] {
        for op in ["activate", "await_healthy"] {
            assert!(
                overlap(undo(op, a), undo(op, b)),
                "the undo's {op} of {a} and {b} ran one after the other: {report}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_budget_leaves_the_broken_host_out_and_a_retry_brings_it_back_once_fixed() {
    // The probe's defaults but its 50 ms interval: a 60 s deadline, 3 unhealthy answers fail.
    let (fleet, plan, engine) =
        installed(&["app-3"], "max_failed_targets = { count = 1 }", "").await;

    let report = deploy_with(&engine, &plan).await;
    println!("{report}");
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    assert!(report.rollback.is_none(), "{report}");
    assert_eq!(report.failed_targets.len(), 1, "{report}");
    assert_eq!(report.failed_targets[0].target.as_str(), "app-3");
    // Found by its answers, not the deadline: three 503s in a row.
    assert!(
        report.failed_targets[0]
            .reason
            .contains("answered unhealthy 3 times in a row"),
        "{report}"
    );
    // Live: app-3 back on 1.0.0 and out of the traffic; the others on 2.0.0, in it — also
    // once haproxy's own checks have settled.
    assert_eq!(fleet.versions().await, ["2.0.0", "2.0.0", "1.0.0", "2.0.0"]);
    haproxy_wait_up(&fleet.haproxy, &["app-1", "app-2", "app-4"]).await;
    assert_eq!(fleet.weights().await, [100, 100, 0, 100]);
    assert_eq!(
        std::fs::read_link(fleet.dir.join("app-3").join("current")).unwrap(),
        Path::new("releases/1.0.0")
    );

    // A retry while app-3 is still broken fails again and leaves it as it was.
    let (release, cancel) = (plan.release(), CancellationToken::new());
    let retry = || engine.retry_failed(&plan.strategy, &release, &plan.options, &cancel);
    let again = retry().await.unwrap();
    assert_eq!(again.outcome, Outcome::RolledBack, "{again}");
    assert_eq!(
        again
            .steps
            .iter()
            .filter(|s| s.step.op() == "activate")
            .count(),
        1
    );
    assert_eq!(fleet.versions().await, ["2.0.0", "2.0.0", "1.0.0", "2.0.0"]);
    assert_eq!(fleet.weights().await, [100, 100, 0, 100]);

    // The host is fixed (its copy of 2.0.0 mended): the retry deploys to app-3 alone and gives
    // it its weight back.
    let conf = fleet.dir.join("app-3/releases/2.0.0/app.conf");
    std::fs::write(&conf, "version=2.0.0\nerror_rate=0\n").unwrap();
    let fixed = retry().await.unwrap();
    println!("{fixed}");
    assert_eq!(fixed.outcome, Outcome::Promoted, "{fixed}");
    assert!(
        fixed
            .steps
            .iter()
            .filter_map(|s| s.step.target())
            .all(|t| t.as_str() == "app-3"),
        "{fixed}"
    );
    assert_eq!(fleet.versions().await, ["2.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);

    // Nothing is left to retry.
    let refused = retry().await.unwrap_err();
    assert!(
        refused.to_string().contains("gave up on no target"),
        "{refused}"
    );
}

/// The report's step `op` of `target`.
fn step_of<'r>(report: &'r Report, op: &str, target: &str) -> &'r deploy::report::StepRecord {
    report
        .steps
        .iter()
        .find(|s| s.step.op() == op && s.step.target().is_some_and(|t| t.as_str() == target))
        .unwrap_or_else(|| panic!("no {op} of {target} in {report}"))
}

fn ran(report: &Report, op: &str, target: &str) -> bool {
    report
        .steps
        .iter()
        .any(|s| s.step.op() == op && s.step.target().is_some_and(|t| t.as_str() == target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_a_batch_ahead_the_next_batch_is_prepared_while_the_one_before_waits_for_health() {
    let (fleet, plan, engine) = installed(&[], "prepare = \"batch_ahead\"", "").await;

    let report = deploy_with(&engine, &plan).await;
    println!("{report}");
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    assert_eq!(fleet.versions().await, ["2.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);

    // app-3 and app-4 were prepared after the first batch was activated, beside its health
    // waits, and drained only once prepared.
    let at = |op: &str, target: &str| {
        let s = step_of(&report, op, target);
        span(s.started_at, s.duration)
    };
    for next in ["app-3", "app-4"] {
        let prepared = at("prepare", next);
        assert!(
            prepared.0 >= at("activate", "app-1").1 && prepared.0 >= at("activate", "app-2").1,
            "{next} was prepared before the first batch acted: {report}"
        );
        assert!(
            overlap(prepared, at("await_healthy", "app-1")),
            "{next}'s prepare did not run beside app-1's health wait: {report}"
        );
        assert!(prepared.1 <= at("drain", next).0, "{report}");
    }
}

/// Once the first batch starts draining, make app-3's release history unreadable (a directory
/// where `releases/.history` is): app-3 cannot be prepared, by a real failure of the host.
#[derive(Debug)]
struct BreakHistoryOnDrain {
    history: PathBuf,
    done: Mutex<bool>,
}

impl Observer for BreakHistoryOnDrain {
    fn on_event(&self, event: &Event) {
        if let Event::StepStarted {
            step: Step::Drain { .. },
            ..
        } = event
        {
            let mut done = self.done.lock().unwrap();
            if !*done {
                std::fs::remove_file(&self.history).unwrap();
                std::fs::create_dir(&self.history).unwrap();
                *done = true;
            }
        }
    }
}

impl BreakHistoryOnDrain {
    fn of(fleet: &Fleet, host: &str) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            history: fleet.dir.join(host).join("releases/.history"),
            done: Mutex::new(false),
        })
    }

    /// Put the history back as a file (what it held is lost: the host's record starts again).
    fn mend(&self) {
        assert!(*self.done.lock().unwrap(), "the history was never broken");
        std::fs::remove_dir(&self.history).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_be_prepared_a_batch_ahead_rolls_the_fleet_back_before_it_is_touched() {
    let (fleet, plan, engine) = installed(&[], "prepare = \"batch_ahead\"", "").await;
    let breaker = BreakHistoryOnDrain::of(&fleet, "app-3");
    let engine = engine.with_observer(breaker.clone());

    let report = deploy_with(&engine, &plan).await;
    println!("{report}");
    breaker.mend();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let failed = step_of(&report, "prepare", "app-3");
    assert!(failed.error.is_some(), "{report}");
    // The first batch had been switched to 2.0.0 and is back; app-3 and app-4 were never
    // drained nor activated.
    assert!(ran(&report, "activate", "app-1") && ran(&report, "activate", "app-2"));
    for untouched in ["app-3", "app-4"] {
        assert!(!ran(&report, "drain", untouched), "{report}");
        assert!(!ran(&report, "activate", untouched), "{report}");
    }
    // Live: every host serves 1.0.0, at full weight, `current` on 1.0.0.
    assert_all_back_on_1_0_0(&fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_budget_a_host_that_cannot_be_prepared_a_batch_ahead_is_left_out_on_its_old_release()
{
    let (fleet, plan, engine) = installed(
        &[],
        "prepare = \"batch_ahead\"\nmax_failed_targets = { count = 1 }",
        "",
    )
    .await;
    let breaker = BreakHistoryOnDrain::of(&fleet, "app-3");
    let engine = engine.with_observer(breaker.clone());

    let report = deploy_with(&engine, &plan).await;
    println!("{report}");
    assert_eq!(report.outcome, Outcome::PromotedWithFailures, "{report}");
    assert_eq!(report.failed_targets.len(), 1, "{report}");
    assert_eq!(report.failed_targets[0].target.as_str(), "app-3");
    assert!(!ran(&report, "activate", "app-3"), "{report}");
    // Live: app-3 out of the traffic on 1.0.0, the others on 2.0.0 in it.
    assert_eq!(fleet.versions().await, ["2.0.0", "2.0.0", "1.0.0", "2.0.0"]);
    haproxy_wait_up(&fleet.haproxy, &["app-1", "app-2", "app-4"]).await;
    assert_eq!(fleet.weights().await, [100, 100, 0, 100]);

    // The host mended, a retry brings it in.
    breaker.mend();
    let (release, cancel) = (plan.release(), CancellationToken::new());
    let fixed = engine
        .retry_failed(&plan.strategy, &release, &plan.options, &cancel)
        .await
        .unwrap();
    println!("{fixed}");
    assert_eq!(fixed.outcome, Outcome::Promoted, "{fixed}");
    assert_eq!(fleet.versions().await, ["2.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);
}
