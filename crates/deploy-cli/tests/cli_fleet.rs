//! `deploy run` with a failure budget over a real fleet (one sshd, haproxy, an app per host):
//! a broken host ends the run "promoted with failures" (exit code 6) naming it and what to do
//! next; `deploy retry` brings it in once fixed.

use std::path::{Path, PathBuf};

use deploy::adapters::Adapters;
use deploy::plan_file::PlanFile;

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::fleet::{Fleet, HOSTS};
use common::{deploy_cli, haproxy_wait_up};

async fn cli(args: &'static [&'static str], plan: &Path) -> (i32, String) {
    let plan: PathBuf = plan.to_owned();
    tokio::task::spawn_blocking(move || deploy_cli(args, &plan))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_given_up_on_exits_6_and_deploy_retry_brings_it_back() {
    let fleet = Fleet::start(&["app-3"]).await;
    let plan = fleet.plan_file("max_failed_targets = { count = 1 }", "");
    let engine = PlanFile::load(&plan)
        .unwrap()
        .engine(&Adapters::new())
        .unwrap();
    fleet.install(&engine).await;

    let (code, out) = cli(&["run"], &plan).await;
    println!("{out}");
    assert_eq!(code, 6, "{out}");
    assert!(
        out.contains("PROMOTED WITH FAILURES: 2.0.0 to fleet"),
        "{out}"
    );
    assert!(
        out.contains("given up: app-3 (out of the traffic, back on its old release): "),
        "{out}"
    );
    assert!(out.contains("answered unhealthy 3 times in a row"), "{out}");
    assert!(out.contains("deploy retry"), "{out}");
    assert_eq!(fleet.versions().await, ["2.0.0", "2.0.0", "1.0.0", "2.0.0"]);
    assert_eq!(fleet.weights().await, [100, 100, 0, 100]);

    // Fixed on the host; one command deploys to it alone.
    std::fs::write(
        fleet.dir.join("app-3/releases/2.0.0/app.conf"),
        "version=2.0.0\nerror_rate=0\n",
    )
    .unwrap();
    let (code, out) = cli(&["retry"], &plan).await;
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PROMOTED: 2.0.0 to fleet"), "{out}");
    assert_eq!(fleet.versions().await, ["2.0.0"; 4]);
    haproxy_wait_up(&fleet.haproxy, &HOSTS).await;
    assert_eq!(fleet.weights().await, [100; 4]);

    // Nothing is left to retry: refused before acting.
    let (code, out) = cli(&["retry"], &plan).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("gave up on no target"), "{out}");
}
