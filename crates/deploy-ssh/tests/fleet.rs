//! Release directories and fleets over real sshd servers on loopback: `ReleaseDirTarget` over
//! `SshHost` (deploy-core's target conformance suite, rollback, pruning), the engine's rolling
//! strategy across 8 hosts with a failure on host 5, `Fleet` concurrency, time limits and
//! per-host results, and `rolling_deploy`'s concurrent batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::Outcome;
use deploy_core::testing::FakeSwitch;
use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::{
    BatchSize, Command, DynTarget, Endpoint, Engine, Environment, ErrorKind, Host, HostExt,
    PlanOptions, Release, ReleaseDirTarget, Strategy, Target, TargetId, Version,
};
use deploy_ssh::testing::SshdFixture;
use deploy_ssh::{Fleet, RollingOptions, SshHost, rolling_deploy};
use tokio_util::sync::CancellationToken;

fn artifact(dir: &Path, version: &str) -> PathBuf {
    let d = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("VERSION"), version).unwrap();
    std::fs::write(d.join("bin/app"), "#!/bin/sh\necho app\n").unwrap();
    d
}

fn release(dir: &Path, version: &str) -> Release {
    Release::new(Version::new(version).unwrap()).with_artifact(artifact(dir, version))
}

fn link(root: &Path) -> PathBuf {
    std::fs::read_link(root.join("current")).unwrap()
}

/// A target on `host` under `root`, whose restart fails while `<root>/FAIL-<version>` exists.
fn target(name: &str, host: SshHost, root: &Path) -> ReleaseDirTarget {
    ReleaseDirTarget::builder(
        TargetId::new(name).unwrap(),
        Arc::new(host),
        root.to_path_buf(),
        Endpoint::http("127.0.0.1", 9),
    )
    .restart([
        "sh",
        "-c",
        "test ! -e \"$1/FAIL-$2\" && echo \"$2\" >> \"$1/restarts\"",
        "sh",
        "{root}",
        "{version}",
    ])
    .keep(2)
    .command_timeout(Duration::from_secs(30))
    .build()
    .unwrap()
}

/// deploy-core's `Target` contract, on the real implementation over a real sshd: a fresh root
/// (nothing current), then a second release (the rollback branch of the suite), with stop and
/// start commands that leave their mark on the "remote" side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_dir_target_over_ssh_passes_the_target_conformance_suite() {
    let sshd = SshdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv/app");
    let lifecycle = |what: &str| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo \"{what} $2\" >> \"$1/lifecycle\""),
            "sh".to_owned(),
            "{root}".to_owned(),
            "{version}".to_owned(),
        ]
    };
    let t = ReleaseDirTarget::builder(
        TargetId::new("web-1").unwrap(),
        Arc::new(sshd.host().unwrap()),
        root.clone(),
        Endpoint::http("127.0.0.1", 9),
    )
    .restart(lifecycle("restart"))
    .stop_command(lifecycle("stop"))
    .start_command(lifecycle("start"))
    .command_timeout(Duration::from_secs(30))
    .build()
    .unwrap();

    conformance::target(&t, &release(tmp.path(), "1.0.0")).await;
    assert_eq!(link(&root), Path::new("releases/1.0.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("current/VERSION")).unwrap(),
        "1.0.0"
    );
    conformance::target(&t, &release(tmp.path(), "2.0.0")).await;
    assert_eq!(link(&root), Path::new("releases/2.0.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/app")).unwrap(),
        "#!/bin/sh\necho app\n"
    );
    // Every restart, stop and start ran on the host, in the suite's order: activate twice (the
    // second is idempotent and restarts again, or not), roll back to 1.0.0 and forward again.
    let log = std::fs::read_to_string(root.join("lifecycle")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.contains(&"restart 1.0.0"), "{log}");
    assert!(lines.contains(&"restart 2.0.0"), "{log}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("stop ")).count(),
        4,
        "{log}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("start ")).count(),
        4,
        "{log}"
    );
    assert_eq!(lines.last(), Some(&"start 2.0.0"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_dir_target_deploys_rolls_back_and_prunes_over_ssh() {
    let sshd = SshdFixture::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv/app");
    let t = target("web-1", sshd.host().unwrap(), &root);

    let v1 = release(tmp.path(), "1.0.0");
    let v2 = release(tmp.path(), "2.0.0");
    t.prepare(&v1).await.unwrap();
    assert_eq!(
        t.current().await.unwrap(),
        None,
        "prepare activates nothing"
    );
    t.activate(&v1.version).await.unwrap();
    t.prepare(&v2).await.unwrap();
    t.prepare(&v2).await.unwrap(); // idempotent
    assert_eq!(link(&root), Path::new("releases/1.0.0"));
    t.activate(&v2.version).await.unwrap();
    assert_eq!(link(&root), Path::new("releases/2.0.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("current/VERSION")).unwrap(),
        "2.0.0"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/app")).unwrap(),
        "#!/bin/sh\necho app\n"
    );
    // Roll back: the old release is still there, activation is a link swap and a restart.
    t.activate(&v1.version).await.unwrap();
    assert_eq!(t.current().await.unwrap().unwrap().as_str(), "1.0.0");
    assert_eq!(link(&root), Path::new("releases/1.0.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("restarts")).unwrap(),
        "1.0.0\n2.0.0\n1.0.0\n"
    );
    // Keep 2: after 3.0.0 and 4.0.0, the oldest unused release goes.
    for v in ["3.0.0", "4.0.0"] {
        let r = release(tmp.path(), v);
        t.prepare(&r).await.unwrap();
        t.activate(&r.version).await.unwrap();
    }
    let mut kept: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    kept.sort();
    assert_eq!(kept, ["3.0.0", "4.0.0"], "kept releases");
    // Nothing half-made is left next to them.
    let hidden: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".history")
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    let e = t
        .activate(&Version::new("9.9.9").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

struct FleetOf {
    _servers: Vec<SshdFixture>,
    roots: Vec<PathBuf>,
    targets: Vec<Arc<ReleaseDirTarget>>,
}

fn fleet_of(n: usize, dir: &Path) -> FleetOf {
    let mut servers = Vec::new();
    let mut roots = Vec::new();
    let mut targets = Vec::new();
    for i in 1..=n {
        let sshd = SshdFixture::start().unwrap();
        let root = dir.join(format!("host-{i}"));
        targets.push(Arc::new(target(
            &format!("web-{i}"),
            sshd.host().unwrap(),
            &root,
        )));
        roots.push(root);
        servers.push(sshd);
    }
    FleetOf {
        _servers: servers,
        roots,
        targets,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_across_8_sshd_hosts_rolls_back_hosts_1_to_4_when_host_5_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet_of(8, tmp.path());
    let v1 = release(tmp.path(), "1.0.0");
    for t in &f.targets {
        t.prepare(&v1).await.unwrap();
        t.activate(&v1.version).await.unwrap();
    }
    let weights: Vec<(String, u32)> = (1..=8).map(|i| (format!("web-{i}"), 10)).collect();
    let weights: Vec<(&str, u32)> = weights.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    let switch = Arc::new(FakeSwitch::new(&weights));
    let mut env = Environment::builder("fleet").switch(switch.clone());
    for t in &f.targets {
        env = env.target(t.clone());
    }
    let engine = Engine::new(env.build().unwrap()).with_state_dir(tmp.path().join("state"));
    let rolling = Strategy::Rolling {
        batch: BatchSize::Count(2),
        analysis: None,
        max_failed_targets: None,
        prepare: Default::default(),
    };

    // Host 5's restart fails on 2.0.0.
    std::fs::write(f.roots[4].join("FAIL-2.0.0"), "").unwrap();
    let v2 = release(tmp.path(), "2.0.0");
    let report = engine
        .deploy(
            &rolling,
            &v2,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.outcome, Outcome::RolledBack, "{report}");
    let text = report.to_string();
    assert!(text.contains("web-5"), "{text}");
    for (i, root) in f.roots.iter().enumerate() {
        assert_eq!(link(root), Path::new("releases/1.0.0"), "host {}", i + 1);
        let restarts = std::fs::read_to_string(root.join("restarts")).unwrap();
        // Host 5 failed its restart on 2.0.0 (not recorded) and was restarted on 1.0.0 again.
        // Host 6 is in host 5's batch: the engine activates a batch's hosts together, so it went
        // to 2.0.0 and back too. Hosts 7-8 were never touched.
        let want = match i {
            0..4 | 5 => "1.0.0\n2.0.0\n1.0.0\n",
            4 => "1.0.0\n1.0.0\n",
            _ => "1.0.0\n",
        };
        assert_eq!(restarts, want, "restarts of host {}", i + 1);
    }
    assert_eq!(
        switch.current().to_string(),
        (1..=8)
            .map(|i| format!("web-{i}=10"))
            .collect::<Vec<_>>()
            .join(","),
        "weights restored"
    );

    // With host 5 fixed the same deploy goes through, batch by batch.
    std::fs::remove_file(f.roots[4].join("FAIL-2.0.0")).unwrap();
    let report = engine
        .deploy(
            &rolling,
            &v2,
            &PlanOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    for root in &f.roots {
        assert_eq!(link(root), Path::new("releases/2.0.0"));
        assert_eq!(
            std::fs::read_to_string(root.join("current/VERSION")).unwrap(),
            "2.0.0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_roll_back_every_activated_target() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet_of(6, tmp.path());
    let v1 = release(tmp.path(), "1.0.0");
    let targets: Vec<DynTarget> = f.targets.iter().map(|t| t.clone() as DynTarget).collect();
    let r = rolling_deploy(&targets, &v1, &RollingOptions::new(3)).await;
    assert!(r.promoted, "{:?}", r.failure);
    assert_eq!(r.batches, 2);

    std::fs::write(f.roots[2].join("FAIL-2.0.0"), "").unwrap();
    let v2 = release(tmp.path(), "2.0.0");
    let r = rolling_deploy(&targets, &v2, &RollingOptions::new(2)).await;
    assert!(!r.promoted);
    let (who, e) = r.failure.as_ref().unwrap();
    assert_eq!(who, "web-3");
    assert!(
        e.to_string().contains("web-3") || e.to_string().contains("127.0.0.1"),
        "{e}"
    );
    assert_eq!(r.batches, 2);
    let undone: Vec<&str> = r.rolled_back.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(undone, ["web-1", "web-2", "web-3", "web-4"]);
    assert!(r.rolled_back.iter().all(|(_, res)| res.is_ok()));
    for root in &f.roots {
        assert_eq!(link(root), Path::new("releases/1.0.0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_bounds_concurrency_limits_time_and_names_failed_hosts() {
    let servers: Vec<SshdFixture> = (0..4).map(|_| SshdFixture::start().unwrap()).collect();
    let mut hosts: Vec<Arc<SshHost>> = servers
        .iter()
        .map(|s| Arc::new(s.host().unwrap()))
        .collect();
    // A host nobody listens on.
    let port = free_port().unwrap();
    hosts.push(Arc::new(
        servers[0]
            .host_builder()
            .port(port)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    ));
    let dead = hosts[4].clone();
    let fleet = Fleet::new(hosts).concurrency(2);

    // 5 hosts, 2 at a time, 0.4 s each: at least 3 rounds (2 + 2 + 1); the dead host fails alone.
    let started = Instant::now();
    let report = fleet
        .run(|h| async move {
            let out = h
                .run_checked(&Command::from_argv(["sh", "-c", "sleep 0.4; echo $PPID"]).unwrap())
                .await?;
            Ok(out.stdout_text())
        })
        .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert_eq!(report.results.len(), 5);
    assert!(report.results[..4].iter().all(|r| r.result.is_ok()));
    let failures = report.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, dead.name());
    assert_eq!(failures[0].1.kind(), ErrorKind::Unavailable);
    assert!(
        failures[0].1.to_string().contains(&port.to_string()),
        "{}",
        failures[0].1
    );
    let e = report.into_result().unwrap_err();
    assert!(e.to_string().contains("1 of 5 hosts"), "{e}");

    // A per-host limit: each host gets a Timeout error naming it, and the abandoned remote
    // command is killed (the call's future was dropped).
    let pids = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(servers.iter().map(|s| Arc::new(s.host().unwrap())))
        .concurrency(4)
        .per_host_timeout(Duration::from_secs(4));
    assert!(
        fleet
            .run(|h| async move { h.connect().await })
            .await
            .all_ok()
    );
    let started = Instant::now();
    let dir = pids.path();
    let report = fleet
        .run(|h| async move {
            let file = dir.join(h.name().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
            let cmd = Command::from_argv(["sh", "-c", "echo $$ > \"$1\"; exec sleep 30", "sh"])
                .unwrap()
                .arg(file);
            h.run(&cmd).await
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    for r in &report.results {
        let e = r.result.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains(&r.host), "{e}");
    }
    let written: Vec<u32> = std::fs::read_dir(pids.path())
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(written.len(), 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in written {
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "the abandoned command {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
