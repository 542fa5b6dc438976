//! Run real deployments from a plan file.
//!
//! ```text
//! cargo run --example deploy -- plan     examples/plans/blue-green.toml [--json]
//! cargo run --example deploy -- run      examples/plans/blue-green.toml [--report report.json]
//! cargo run --example deploy -- resume   examples/plans/blue-green.toml   # finish a killed run
//! cargo run --example deploy -- rollback examples/plans/blue-green.toml   # undo a killed run
//! cargo run --example deploy -- promote  examples/plans/canary.toml       # end a canary's pause
//! cargo run --example deploy -- abort    examples/plans/canary.toml --reason "p99 too high"
//! cargo run --example deploy -- status   examples/plans/canary.toml [--json]
//! ```
//!
//! The plan is checked before anything is touched, and every problem is reported at once with
//! its key path. `plan` also reads the live state (each target's version, the switch's weights,
//! the schema, the maintenance page), so it checks that every socket, host and database named in
//! the plan answers, and refuses destructive migrations in a zero-downtime strategy. Ctrl-C during `run` or `resume` cancels the run, and the engine rolls back.
//! Exit code: 0 promoted (or nothing to do), 1 the plan or the environment is unusable, 2 rolled
//! back, 3 failed (the rollback itself failed: see the report).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use deploy::adapters::Adapters;
use deploy::engine::{ControlRequest, Event, Observer, Outcome, Recovery, Report, Severity};
use deploy::plan_file::PlanFile;
use deploy::{Engine, WebhookNotifier};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "Deploy a release as a plan file says, and roll back by itself")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print what would happen (nothing is changed).
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Also write the JSON report here (it is always written to the state directory).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Finish a run that a killed process left behind.
    Resume {
        /// The plan file.
        plan: PathBuf,
    },
    /// Undo a run that a killed process left behind.
    Rollback {
        /// The plan file.
        plan: PathBuf,
    },
    /// End the pause of the run in progress (a canary waiting for promotion).
    Promote {
        /// The plan file.
        plan: PathBuf,
    },
    /// Roll back the run in progress.
    Abort {
        /// The plan file.
        plan: PathBuf,
        /// Why, for the report.
        #[arg(long, default_value = "aborted from the command line")]
        reason: String,
    },
    /// Where the newest run stands.
    Status {
        /// The plan file.
        plan: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Prints events as they happen: coloured on a terminal, plain lines otherwise.
#[derive(Debug)]
struct Progress {
    start: Instant,
    colour: bool,
}

impl Observer for Progress {
    fn on_event(&self, event: &Event) {
        if matches!(event, Event::HealthChecked { healthy: true, .. }) {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        if self.colour {
            let colour = match event.severity() {
                Severity::Error => "\x1b[31m",
                Severity::Warning => "\x1b[33m",
                Severity::Info
                    if matches!(
                        event,
                        Event::StepFinished { .. } | Event::RunFinished { .. }
                    ) =>
                {
                    "\x1b[32m"
                }
                Severity::Info => "",
            };
            println!("\x1b[2m[{t:>7.2}s]\x1b[0m {colour}{event}\x1b[0m");
        } else {
            println!("[{t:>7.2}s] {event}");
        }
    }
}

fn load(path: &Path) -> Result<PlanFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("read plan file {}: {e}", path.display()))?;
    PlanFile::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

fn engine(plan: &PlanFile) -> Result<Engine, String> {
    plan.engine(&Adapters::new()).map_err(|e| e.to_string())
}

fn exit_code(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Promoted => 0,
        Outcome::RolledBack => 2,
        Outcome::Failed => 3,
    }
}

async fn observed(
    plan: &PlanFile,
    engine: Engine,
) -> Result<(Engine, Option<Arc<WebhookNotifier>>), String> {
    let mut engine = engine.with_observer(Arc::new(Progress {
        start: Instant::now(),
        colour: std::io::stdout().is_terminal(),
    }));
    let mut notifier = None;
    if let Some(n) = &plan.notify {
        let w = Arc::new(
            WebhookNotifier::spawn_with(
                &n.webhook,
                &plan.environment.name,
                n.min_severity,
                std::time::Duration::from_secs(10),
            )
            .map_err(|e| e.to_string())?,
        );
        engine = engine.with_observer(w.clone());
        notifier = Some(w);
    }
    Ok((engine, notifier))
}

fn ctrl_c_cancels() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: cancelling; the engine rolls back");
            c.cancel();
        }
    });
    cancel
}

fn finish(report: &Report, extra: Option<&Path>) -> Result<i32, String> {
    println!("\n{report}");
    if let Some(path) = extra {
        let body = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
        std::fs::write(path, body).map_err(|e| format!("write report {}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(exit_code(report.outcome))
}

async fn main_inner(cli: Cli) -> Result<i32, String> {
    match cli.command {
        Cmd::Plan { plan, json } => {
            let pf = load(&plan)?;
            let engine = engine(&pf)?;
            let p = engine
                .plan(&pf.strategy, &pf.release(), &pf.options)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
                );
            } else {
                print!("{p}");
            }
            Ok(0)
        }
        Cmd::Run { plan, report } => {
            let pf = load(&plan)?;
            let (engine, notifier) = observed(&pf, engine(&pf)?).await?;
            let p = engine
                .plan(&pf.strategy, &pf.release(), &pf.options)
                .await
                .map_err(|e| e.to_string())?;
            println!("{p}");
            let r = engine.run(p, &ctrl_c_cancels()).await;
            // Send what the notifier queued even when the run could not start.
            if let Some(n) = notifier {
                n.close().await;
            }
            finish(&r.map_err(|e| e.to_string())?, report.as_deref())
        }
        Cmd::Resume { plan } => recover(&plan, Recovery::Resume).await,
        Cmd::Rollback { plan } => recover(&plan, Recovery::Rollback).await,
        Cmd::Promote { plan } => {
            let pf = load(&plan)?;
            engine(&pf)?
                .request(&ControlRequest::Promote)
                .map_err(|e| e.to_string())?;
            println!(
                "asked the run in {} to promote",
                pf.environment.state_dir.display()
            );
            Ok(0)
        }
        Cmd::Abort { plan, reason } => {
            let pf = load(&plan)?;
            engine(&pf)?
                .request(&ControlRequest::Abort { reason })
                .map_err(|e| e.to_string())?;
            println!(
                "asked the run in {} to abort",
                pf.environment.state_dir.display()
            );
            Ok(0)
        }
        Cmd::Status { plan, json } => {
            let pf = load(&plan)?;
            match engine(&pf)?.status().map_err(|e| e.to_string())? {
                None => println!("no run yet in {}", pf.environment.state_dir.display()),
                Some(s) if json => println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                ),
                Some(s) => println!("{s}"),
            }
            Ok(0)
        }
    }
}

async fn recover(plan: &Path, mode: Recovery) -> Result<i32, String> {
    let pf = load(plan)?;
    let (engine, notifier) = observed(&pf, engine(&pf)?).await?;
    let r = engine.recover(mode, &ctrl_c_cancels()).await;
    if let Some(n) = notifier {
        n.close().await;
    }
    match r.map_err(|e| e.to_string())? {
        None => {
            println!(
                "nothing to recover in {}",
                pf.environment.state_dir.display()
            );
            Ok(0)
        }
        Some(report) => finish(&report, None),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match main_inner(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    };
    std::process::exit(code);
}
