//! A blue-green deploy of two local slots, end to end, in a temporary directory.
//!
//! Each slot is a release directory (`releases/<version>` + an atomic `current` link) served by
//! a small HTTP server on a free loopback port whose `/health` reports the version it finds under
//! `current`. The engine prepares and activates the idle slot, probes it over HTTP until it is
//! healthy on the new version, switches traffic (an in-memory switch here: the HAProxy and nginx
//! switches live in their own crates), bakes with a gate, and prints the report.
//!
//! ```text
//! cargo run --example blue_green_local                  # deploys 2.0.0: promoted
//! cargo run --example blue_green_local -- --broken      # 2.0.0 never gets healthy: rolled back
//! cargo run --example blue_green_local -- --failing-gate # the gate fails during the bake
//! ```
//! Ctrl-C during the run cancels it and rolls back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use deploy_core::event::{Event, Observer};
use deploy_core::testing::{FakeGate, FakeSwitch, TestHttpServer, TestResponse};
use deploy_core::{
    Endpoint, Engine, Environment, HttpProbe, LocalHost, PlanOptions, Release, ReleaseDirTarget,
    Strategy, Target, TargetId, Version,
};
use deploy_core::{Outcome, Policies};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "Blue-green deploy of two local slots with an HTTP health probe")]
struct Args {
    /// The version to deploy.
    #[arg(long, default_value = "2.0.0")]
    version: String,
    /// Ship a release whose /health answers 503: the probe never passes and the engine rolls back.
    #[arg(long)]
    broken: bool,
    /// Make the gate fail during the bake: the engine switches traffic back.
    #[arg(long)]
    failing_gate: bool,
    /// How long to bake after the switch.
    #[arg(long, default_value = "3s", value_parser = humantime_parse)]
    bake: Duration,
    /// Print the plan (as text and JSON) and stop without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Keep the temporary directory (releases, journal, report) instead of removing it.
    #[arg(long)]
    keep: bool,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Prints events as they happen, with the time since the start.
#[derive(Debug)]
struct Printer(Instant);

impl Observer for Printer {
    fn on_event(&self, event: &Event) {
        if matches!(event, Event::HealthChecked { healthy: true, .. }) {
            return;
        }
        println!("[{:>6.2}s] {event}", self.0.elapsed().as_secs_f64());
    }
}

/// The "application": answers `/health` with the version under `<root>/current`, or 503 when
/// that release has a `BROKEN` file or nothing is current.
async fn serve_slot(root: PathBuf) -> Result<TestHttpServer, Box<dyn std::error::Error>> {
    let server = TestHttpServer::start(move |req| {
        if req.path != "/health" {
            return TestResponse::text(404, "not found");
        }
        let current = root.join("current");
        let version = std::fs::read_to_string(current.join("VERSION")).map(|v| v.trim().to_owned());
        match version {
            Ok(v) if !current.join("BROKEN").exists() => {
                TestResponse::json(200, &serde_json::json!({ "status": "ok", "version": v }))
            }
            Ok(v) => {
                TestResponse::json(503, &serde_json::json!({ "status": "down", "version": v }))
            }
            Err(_) => TestResponse::json(503, &serde_json::json!({ "status": "down" })),
        }
    })
    .await?;
    Ok(server)
}

fn make_artifact(dir: &Path, version: &str, broken: bool) -> std::io::Result<PathBuf> {
    let d = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join("VERSION"), format!("{version}\n"))?;
    std::fs::write(
        d.join("app.txt"),
        format!("the application, release {version}\n"),
    )?;
    if broken {
        std::fs::write(d.join("BROKEN"), "this release answers 503\n")?;
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp = tempfile::Builder::new()
        .prefix("blue-green-local-")
        .tempdir()?;
    let work = tmp.path().to_owned();
    let host = Arc::new(LocalHost::new());

    // Two slots with their HTTP servers on free loopback ports.
    let mut slots = Vec::new();
    let mut servers = Vec::new();
    for name in ["blue", "green"] {
        let root = work.join(name);
        std::fs::create_dir_all(&root)?;
        let server = serve_slot(root.clone()).await?;
        let endpoint: Endpoint = server.endpoint();
        let target = ReleaseDirTarget::builder(TargetId::new(name)?, host.clone(), root, endpoint)
            .keep(3)
            .build()?;
        println!(
            "slot {name}: {} serving {}",
            target.endpoint(),
            target.root().display()
        );
        slots.push(Arc::new(target));
        servers.push(server);
    }

    // Both slots start on 1.0.0; blue takes the traffic.
    let v1 =
        Release::new(Version::new("1.0.0")?).with_artifact(make_artifact(&work, "1.0.0", false)?);
    for slot in &slots {
        slot.prepare(&v1).await?;
        slot.activate(&v1.version).await?;
    }
    let switch = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
    let gate = if args.failing_gate {
        FakeGate::failing("error-rate")
    } else {
        FakeGate::passing("error-rate")
    };

    let env = Environment::builder("local")
        .target(slots[0].clone())
        .target(slots[1].clone())
        .switch(switch.clone())
        .probe(Arc::new(
            HttpProbe::builder()
                .path("/health")
                .expect_field("status", "ok")
                .version_field("version")
                .latency_budget(Duration::from_secs(1))
                .build()?,
        ))
        .gate(Arc::new(gate))
        .build()?;

    let mut policies = Policies::default();
    policies.probe.interval = Duration::from_millis(200);
    policies.probe.deadline = Duration::from_secs(3);
    policies.analysis.interval = Duration::from_secs(1);
    policies.deadline = Some(Duration::from_secs(120));

    let state_dir = work.join("state");
    let engine = Engine::new(env)
        .with_policies(policies)
        .with_observer(Arc::new(Printer(Instant::now())))
        .with_state_dir(&state_dir);

    let release = Release::new(Version::new(args.version.clone())?).with_artifact(make_artifact(
        &work,
        &args.version,
        args.broken,
    )?);
    let strategy = Strategy::BlueGreen {
        pre_switch_analysis: None,
        bake: args.bake,
    };
    let plan = engine
        .plan(&strategy, &release, &PlanOptions::default())
        .await?;
    println!("\n{plan}");
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }

    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: cancelling, the engine rolls back");
            on_ctrl_c.cancel();
        }
    });

    let report = engine.run(plan, &cancel).await?;
    println!("\n{report}");
    for (slot, server) in slots.iter().zip(&servers) {
        let body = get(&server.url("/health"))
            .await
            .unwrap_or_else(|e| e.to_string());
        println!("{} /health now: {body}", slot.id());
    }
    println!("weights now: {}", switch.current());
    let report_path = state_dir
        .join("runs")
        .join(format!("{}.report.json", report.run_id));
    if args.keep {
        let kept = tmp.keep();
        println!(
            "report: {} (directory kept: {})",
            report_path.display(),
            kept.display()
        );
    } else {
        println!(
            "report: {} (removed with the temporary directory; --keep keeps it)",
            report_path.display()
        );
    }
    drop(servers);
    std::process::exit(match report.outcome {
        Outcome::Promoted => 0,
        Outcome::RolledBack => 2,
        Outcome::Failed => 3,
        Outcome::PromotedWithFailures => 6,
    });
}

async fn get(url: &str) -> Result<String, reqwest::Error> {
    reqwest::get(url).await?.text().await
}
