//! Rolling deploy of a small release across N = 1, 8, 32 real sshd hosts on loopback, batch B:
//! wall time against the number of batches ⌈N/B⌉, and the peak RSS of this (deploying) process.
//!
//! Two drivers over the same `ReleaseDirTarget`s on `SshHost`s:
//! - `engine`: `deploy_core::Engine` with `Strategy::Rolling { batch: Count(B), max_failed_targets: None }` and a
//!   `FakeSwitch` (the engine runs its steps one after the other);
//! - `fleet`: `deploy_ssh::rolling_deploy` (prepares 16 targets at once, activates each batch
//!   concurrently).
//!
//! ```text
//! cargo bench -p deploy-ssh --all-features --bench fleet_rolling -- [--sizes 1,8,32] [--batch 4] [--reps 1] [--drivers engine,fleet] [--restart-ms 0]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::Host;
use deploy_core::Outcome;
use deploy_core::testing::FakeSwitch;
use deploy_core::{
    BatchSize, DynTarget, Endpoint, Engine, Environment, PlanOptions, Release, ReleaseDirTarget,
    Step, Strategy, TargetId, Version,
};
use deploy_ssh::testing::SshdFixture;
use deploy_ssh::{RollingOptions, rolling_deploy};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Peak resident set size of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A small release: a tar.gz of a VERSION file and a 64 KiB binary.
fn build_release(dir: &Path, version: &str) -> Release {
    let src = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), version).unwrap();
    let blob: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("app.bin"), blob).unwrap();
    let tgz = dir.join(format!("release-{version}.tar.gz"));
    let ok = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    Release::new(Version::new(version).unwrap()).with_artifact(tgz)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn targets(
    servers: &[SshdFixture],
    roots: &[PathBuf],
    restart: &[String],
) -> Vec<Arc<ReleaseDirTarget>> {
    servers
        .iter()
        .zip(roots)
        .enumerate()
        .map(|(i, (s, root))| {
            Arc::new(
                ReleaseDirTarget::builder(
                    TargetId::new(format!("web-{}", i + 1)).unwrap(),
                    Arc::new(s.host().unwrap()),
                    root.clone(),
                    Endpoint::http("127.0.0.1", 9),
                )
                .restart(restart.iter().cloned())
                .keep(3)
                .build()
                .unwrap(),
            )
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = arg("--sizes", "1,8,32")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let batch: usize = arg("--batch", "4").parse().unwrap();
    let reps: usize = arg("--reps", "1").parse().unwrap();
    let drivers = arg("--drivers", "engine,fleet");
    let max = *sizes.iter().max().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let servers: Vec<SshdFixture> = (0..max).map(|_| SshdFixture::start().unwrap()).collect();
    eprintln!("{max} sshd servers up in {:.1?}", t0.elapsed());
    let roots: Vec<PathBuf> = (0..max)
        .map(|i| tmp.path().join(format!("host-{}", i + 1)))
        .collect();
    // A restart that takes this long on the host (a service coming up), or none.
    let restart_ms: u64 = arg("--restart-ms", "0").parse().unwrap();
    let restart: Vec<String> = if restart_ms == 0 {
        vec!["true".into()]
    } else {
        vec!["sleep".into(), format!("{:.3}", restart_ms as f64 / 1000.0)]
    };
    println!("restart command on each host: `{}`\n", restart.join(" "));
    let all = targets(&servers, &roots, &restart);

    // Every host starts on 0.0.1.
    let base = build_release(tmp.path(), "0.0.1");
    let dyn_all: Vec<DynTarget> = all.iter().map(|t| t.clone() as DynTarget).collect();
    let r = rolling_deploy(&dyn_all, &base, &RollingOptions::new(max)).await;
    assert!(r.promoted, "{:?}", r.failure);

    // What one remote operation costs here: a channel, the login shell, the program.
    let host = servers[0].host().unwrap();
    host.connect().await.unwrap();
    let mut lat = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        host.run(&deploy_core::Command::new("true")).await.unwrap();
        lat.push(t.elapsed());
    }
    println!(
        "one remote command (`true`, connection open): median {:.1} ms over 20\n",
        median(lat).as_secs_f64() * 1000.0
    );

    println!(
        "| driver | N | B | ⌈N/B⌉ | wall (median) | prepare | activate phase | activate per batch |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut serial = 0;
    for driver in drivers.split(',') {
        for &n in &sizes {
            let batches = n.div_ceil(batch);
            let mut walls = Vec::new();
            let mut prepares = Vec::new();
            let mut activates = Vec::new();
            for _ in 0..reps {
                serial += 1;
                let release = build_release(tmp.path(), &format!("1.{serial}.0"));
                let ts: Vec<DynTarget> = all[..n].iter().map(|t| t.clone() as DynTarget).collect();
                let started = Instant::now();
                match driver {
                    "engine" => {
                        let weights: Vec<(String, u32)> =
                            (1..=n).map(|i| (format!("web-{i}"), 1)).collect();
                        let w: Vec<(&str, u32)> =
                            weights.iter().map(|(a, b)| (a.as_str(), *b)).collect();
                        let mut env =
                            Environment::builder("bench").switch(Arc::new(FakeSwitch::new(&w)));
                        for t in &ts {
                            env = env.target(t.clone());
                        }
                        let engine = Engine::new(env.build().unwrap());
                        let strategy = Strategy::Rolling {
                            batch: BatchSize::Count(u32::try_from(batch).unwrap()),
                            analysis: None,
                            max_failed_targets: None,
                            prepare: Default::default(),
                        };
                        let report = engine
                            .deploy(
                                &strategy,
                                &release,
                                &PlanOptions::default(),
                                &CancellationToken::new(),
                            )
                            .await
                            .unwrap();
                        assert_eq!(report.outcome, Outcome::Promoted, "{report}");
                        // The engine runs a batch's steps concurrently: a phase lasts from
                        // its first step's start to its last step's end.
                        let span = |f: fn(&Step) -> bool| -> Duration {
                            let steps = report.steps.iter().filter(|s| f(&s.step));
                            let start = steps.clone().map(|s| s.started_at).min();
                            let end = steps.map(|s| s.started_at + s.duration).max();
                            match (start, end) {
                                (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
                                _ => Duration::ZERO,
                            }
                        };
                        let prepare = span(|s| matches!(s, Step::Prepare { .. }));
                        prepares.push(prepare);
                        activates.push(report.duration.saturating_sub(prepare));
                    }
                    _ => {
                        let r = rolling_deploy(&ts, &release, &RollingOptions::new(batch)).await;
                        assert!(r.promoted, "{:?}", r.failure);
                        prepares.push(r.prepare_elapsed);
                        activates.push(r.activate_elapsed);
                    }
                }
                walls.push(started.elapsed());
                for root in &roots[..n] {
                    let link = std::fs::read_link(root.join("current")).unwrap();
                    assert_eq!(link, Path::new("releases").join(release.version.as_str()));
                }
            }
            let act = median(activates);
            println!(
                "| {driver} | {n} | {batch} | {batches} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |",
                median(walls).as_secs_f64(),
                median(prepares).as_secs_f64(),
                act.as_secs_f64(),
                act.as_secs_f64() / batches as f64,
            );
        }
    }
    println!(
        "\npeak RSS of the deploying process (VmHWM): {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
}
