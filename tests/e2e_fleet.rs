//! A fleet rolled through one real sshd behind a real haproxy, with a host whose new release is
//! broken (its `/health` answers 503): the rollback undoes a batch's hosts together, as the
//! batch was done, each step's time is its own, and the live world ends where it began; with a
//! failure budget, the broken host is taken out and rolled back alone while the others go on,
//! and a retry brings it in once fixed.

use std::path::Path;
use std::time::{Duration, SystemTime};

use deploy::adapters::Adapters;
use deploy::plan_file::PlanFile;
use deploy::{Outcome, Report, Step};
use tokio_util::sync::CancellationToken;

mod common;
use common::fleet::{Fleet, HOSTS};
use common::haproxy_wait_up;

async fn deploy(plan: &PlanFile) -> Report {
    let engine = plan.engine(&Adapters::new()).unwrap();
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

/// When a step of the report started and ended.
fn span(started_at: SystemTime, duration: Duration) -> (SystemTime, SystemTime) {
    (started_at, started_at + duration)
}

fn overlap(a: (SystemTime, SystemTime), b: (SystemTime, SystemTime)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_host_rolls_the_fleet_back_a_batch_at_a_time_with_each_steps_own_time() {
    let fleet = Fleet::start(&["app-3"]).await;
    // Health waits end at the deadline only, so that a failed one clearly outlasts a good one.
    let plan = fleet.plan("", "deadline = \"3s\"\nunhealthy_threshold = 0");
    let engine = plan.engine(&Adapters::new()).unwrap();
    fleet.install(&engine).await;

    let report = deploy(&plan).await;
    println!("{report}");

    // The live world: every host serves 1.0.0 and takes its full weight again — also once
    // haproxy's own checks have seen the broken host healthy again (a server drained, then
    // DOWN by its checks, must not come back UP as DRAIN).
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
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
    let fleet = Fleet::start(&["app-3"]).await;
    // The probe's defaults but its 50 ms interval: a 60 s deadline, 3 unhealthy answers fail.
    let plan = fleet.plan("max_failed_targets = { count = 1 }", "");
    let engine = plan.engine(&Adapters::new()).unwrap();
    fleet.install(&engine).await;

    let report = deploy(&plan).await;
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
