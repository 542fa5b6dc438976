//! Run real deployments from a plan file.
//!
//! ```text
//! cargo run --example deploy -- plan     examples/plans/blue-green.toml [--json]
//! cargo run --example deploy -- run      examples/plans/blue-green.toml [--report report.json]
//! cargo run --example deploy -- resume   examples/plans/blue-green.toml   # finish a killed run
//! cargo run --example deploy -- rollback examples/plans/blue-green.toml   # undo a killed run
//! cargo run --example deploy -- rollback examples/plans/blue-green.toml --previous [--dry-run]
//! cargo run --example deploy -- rollback examples/plans/blue-green.toml --to 1.4.2 [--restore-backup F]
//! cargo run --example deploy -- promote  examples/plans/canary.toml       # end a canary's pause
//! cargo run --example deploy -- abort    examples/plans/canary.toml --reason "p99 too high"
//! cargo run --example deploy -- run      examples/plans/canary.toml --wait 10m  # queue behind a run
//! cargo run --example deploy -- status   examples/plans/canary.toml [--json]
//! cargo run --example deploy -- status   examples/plans/canary.toml --fleet  # what runs where now
//! cargo run --example deploy -- history  examples/plans/canary.toml [--last N] [--json]
//! cargo run --example deploy -- unlock   examples/plans/canary.toml       # break a stale lock
//! ```
//!
//! The plan is checked before anything is touched, and every problem is reported at once with
//! its key path. `plan` also reads the live state (each target's version, the switch's weights,
//! the schema, the maintenance page), so it checks that every socket, host and database named in
//! the plan answers, and refuses destructive migrations in a zero-downtime strategy. Ctrl-C during `run` or `resume` cancels the run, and the engine rolls back.
//! `promote` and `abort` address the run in progress by its id (and `promote` the pause it is
//! in); with no such run they are refused and leave nothing behind. `resume` and `rollback`
//! read the live state first and go from where the world is, not only from what the journal
//! says; `rollback` also retries a rollback that failed.
//!
//! Exit code: 0 promoted (or nothing to do), 1 the plan or the environment is unusable, 2 rolled
//! back, 3 failed (the rollback itself failed: see the report, then `rollback` again), 4 refused
//! (a promotion with no paused run, an abort with no run, a live lock not broken, a lock held by
//! another run), 5 the run lost its lock to another holder (after its lease expired) and acted
//! no further.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// A line on standard output. A closed or full output (`deploy run | head`, a full disk) must
/// not stop a deploy half-way, so write errors are ignored rather than panicking as `println!`
/// does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Text on standard output without a line end; errors ignored as for [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
use deploy::adapters::Adapters;
use deploy::event::{Event, Observer, Severity};
use deploy::notify::WebhookNotifier;
use deploy::plan_file::PlanFile;
use deploy::state::HistoryEntry;
use deploy::{
    BackupId, ControlRequest, DeployError, Outcome, Recovery, ReleaseRollback, Report, RollbackTo,
    SchemaDecision, Version,
};
use deploy::{Engine, ExposeSecret, Plan, Step};
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
        /// Also write the JSON report here (it is always kept in the state store).
        #[arg(long)]
        report: Option<PathBuf>,
        /// When another run holds the environment's lock, wait for it (up to this long:
        /// `90s`, `10m`; 10m when given without a value) instead of failing, then plan from
        /// what that run left.
        #[arg(long, num_args = 0..=1, default_missing_value = "10m", value_name = "TIMEOUT")]
        wait: Option<humantime::Duration>,
    },
    /// Finish a run that a killed process left behind.
    Resume {
        /// The plan file.
        plan: PathBuf,
    },
    /// Undo a run that a killed process left behind; with --to or --previous, go back to a
    /// release the history recorded as promoted, as a new run.
    Rollback {
        /// The plan file.
        plan: PathBuf,
        /// The recorded release to go back to.
        #[arg(long, value_name = "VERSION", conflicts_with = "previous")]
        to: Option<String>,
        /// The release promoted before the one running now.
        #[arg(long)]
        previous: bool,
        /// The backup to restore when a migration since that release is incompatible with
        /// its code (the history names the one taken before it).
        #[arg(long, value_name = "BACKUP")]
        restore_backup: Option<String>,
        /// The release's artifact, for targets that no longer keep its release directory.
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// Print the path it would take and its plan; change nothing.
        #[arg(long)]
        dry_run: bool,
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
    /// Show who holds the environment's lock; break it if its process is gone.
    Unlock {
        /// The plan file.
        plan: PathBuf,
    },
    /// Where the newest run stands; with --fleet, what every target runs now.
    Status {
        /// The plan file.
        plan: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Read the live state: each target's version, the weights, the schema, and how it
        /// differs from what the last promoted run left.
        #[arg(long)]
        fleet: bool,
    },
    /// Every run recorded for the environment: who, from where, when, what, how it ended.
    History {
        /// The plan file.
        plan: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Only the last N runs.
        #[arg(long)]
        last: Option<usize>,
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
            out!("\x1b[2m[{t:>7.2}s]\x1b[0m {colour}{event}\x1b[0m");
        } else {
            out!("[{t:>7.2}s] {event}");
        }
    }
}

/// Why the command stops: a message, and the exit code it means.
#[derive(Debug)]
struct Stop {
    code: i32,
    message: String,
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Self { code: 1, message }
    }
}

/// An engine error as the operator should read it: a refusal exits 4, and a stale lock says
/// which commands deal with it.
fn deploy_error(plan: &Path, e: DeployError) -> Stop {
    let p = plan.display();
    match e {
        DeployError::Refused { .. } => Stop {
            code: 4,
            message: e.to_string(),
        },
        DeployError::StaleLock { .. } => Stop {
            code: 1,
            message: format!(
                "{e}\n  `deploy resume {p}` finishes that run, `deploy rollback {p}` undoes it, \
                 `deploy unlock {p}` only discards the lock"
            ),
        },
        DeployError::Locked { .. } => Stop {
            code: 4,
            message: format!(
                "{e}\n  `deploy status {p}` shows where that run stands; `deploy run --wait {p}` \
                 waits for it"
            ),
        },
        DeployError::LeaseLost { .. } => Stop {
            code: 5,
            message: format!("{e}\n  `deploy status {p}` shows where the run stands now"),
        },
        other => Stop {
            code: 1,
            message: other.to_string(),
        },
    }
}

/// Read and check the plan file (at most 1 MiB), and say what in it is unwise.
fn load(path: &Path) -> Result<PlanFile, String> {
    let plan = PlanFile::load(path).map_err(|e| e.to_string())?;
    for w in &plan.warnings {
        eprintln!("warning: {}: {w}", plan.source_name);
    }
    Ok(plan)
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
        let url = n
            .webhook_source()
            .ok_or("notify: no webhook")?
            .read()
            .map_err(|why| format!("{}: notify: {why}", plan.source_name))?;
        let w = Arc::new(
            WebhookNotifier::spawn_with(
                url.expose_secret(),
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
    out!("\n{report}");
    if let Some(path) = extra {
        let body = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
        std::fs::write(path, body).map_err(|e| format!("write report {}: {e}", path.display()))?;
        out!("report: {}", path.display());
    }
    Ok(exit_code(report.outcome))
}

/// What each analysis of `plan` really takes: its measurements, and the wall time a gate that
/// needs a window per measurement stretches it to.
fn analysis_times(engine: &Engine, plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Analyze { name, duration, .. } => {
                let t = engine.analysis_time(*duration);
                let d = |d| humantime::format_duration(d).to_string();
                Some(if t.measurements == 0 {
                    format!("step {}: {name}: no gates, waits {}", i + 1, d(*duration))
                } else {
                    format!(
                        "step {}: {name}: {} measurement(s) per gate, one every {}{}; takes about {}",
                        i + 1,
                        t.measurements,
                        d(t.spacing),
                        if t.evaluation > t.spacing {
                            format!(" but each needs {} (the gate's window)", d(t.evaluation))
                        } else {
                            String::new()
                        },
                        d(t.wall)
                    )
                })
            }
            _ => None,
        })
        .collect()
}

async fn main_inner(cli: Cli) -> Result<i32, Stop> {
    match cli.command {
        Cmd::Plan { plan, json } => {
            let pf = load(&plan)?;
            let engine = engine(&pf)?;
            let p = engine
                .plan(&pf.strategy, &pf.release(), &pf.options)
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
                );
            } else {
                out_raw!("{p}");
                let times = analysis_times(&engine, &p);
                if !times.is_empty() {
                    out!("Analyses:");
                    for t in times {
                        out!("  {t}");
                    }
                }
            }
            Ok(0)
        }
        Cmd::Run { plan, report, wait } => {
            let pf = load(&plan)?;
            let (engine, notifier) = observed(&pf, engine(&pf)?).await?;
            let r = match wait {
                None => {
                    // Another run holds the lock: say whose, rather than plan against a world
                    // that run is changing.
                    if let Some(store) = engine.state_store()
                        && let Ok(Some(h)) = store.holder(&pf.environment.name).await
                        && !h.stale
                    {
                        if let Some(n) = notifier {
                            n.close().await;
                        }
                        return Err(deploy_error(
                            &plan,
                            DeployError::Locked {
                                environment: pf.environment.name.clone(),
                                location: store.location(),
                                holder: Some(Box::new(h.info)),
                            },
                        ));
                    }
                    let p = engine
                        .plan(&pf.strategy, &pf.release(), &pf.options)
                        .await
                        .map_err(|e| deploy_error(&plan, e))?;
                    out!("{p}");
                    engine.run(p, &ctrl_c_cancels()).await
                }
                Some(wait) => {
                    // Plan under the lock, from what the run ahead of us leaves.
                    if let Some(store) = engine.state_store()
                        && let Ok(Some(h)) = store.holder(&pf.environment.name).await
                        && !h.stale
                    {
                        out!(
                            "environment {} is locked by {}; waiting up to {wait} for it",
                            pf.environment.name,
                            h.info
                        );
                    }
                    let engine = engine.with_lock_wait(wait.into());
                    engine
                        .deploy(&pf.strategy, &pf.release(), &pf.options, &ctrl_c_cancels())
                        .await
                }
            };
            // Send what the notifier queued even when the run could not start.
            if let Some(n) = notifier {
                n.close().await;
            }
            Ok(finish(
                &r.map_err(|e| deploy_error(&plan, e))?,
                report.as_deref(),
            )?)
        }
        Cmd::Resume { plan } => recover(&plan, Recovery::Resume).await,
        Cmd::Rollback {
            plan,
            to: None,
            previous: false,
            ..
        } => recover(&plan, Recovery::Rollback).await,
        Cmd::Rollback {
            plan,
            to,
            previous: _,
            restore_backup,
            artifact,
            dry_run,
        } => {
            let pf = load(&plan)?;
            let to = match to {
                Some(v) => RollbackTo::Version(Version::new(v).map_err(|e| e.to_string())?),
                None => RollbackTo::Previous,
            };
            let restore = restore_backup.map(BackupId);
            let (engine, notifier) = observed(&pf, engine(&pf)?).await?;
            let say = |rb: &ReleaseRollback| {
                out!(
                    "back to {} (promoted by run {} on {}, by {}@{})",
                    rb.recorded.version,
                    rb.recorded.run_id,
                    humantime::format_rfc3339_seconds(rb.recorded.started_at),
                    rb.recorded.user,
                    rb.recorded.host
                );
                for line in &rb.path {
                    out!("  {line}");
                }
                match &rb.schema {
                    SchemaDecision::Unchanged => out!("  schema: unchanged since that release"),
                    SchemaDecision::Kept { since } => out!(
                        "  schema: stays ({} compatible with its code ran since: {})",
                        since.len(),
                        since.join(", ")
                    ),
                    SchemaDecision::Restore { backup, to } => out!(
                        "  schema: backup {} is restored to {} first",
                        backup.0,
                        to.as_ref().map_or("an empty schema", |v| v.0.as_str())
                    ),
                    _ => {}
                }
            };
            if dry_run {
                let rb = engine
                    .plan_rollback_to(&to, &pf.strategy, &pf.options, artifact, restore)
                    .await
                    .map_err(|e| deploy_error(&plan, e))?;
                say(&rb);
                out_raw!("{}", rb.plan);
                return Ok(0);
            }
            let r = engine
                .rollback_to(
                    &to,
                    &pf.strategy,
                    &pf.options,
                    artifact,
                    restore,
                    &ctrl_c_cancels(),
                )
                .await;
            if let Some(n) = notifier {
                n.close().await;
            }
            let (rb, report) = r.map_err(|e| deploy_error(&plan, e))?;
            say(&rb);
            Ok(finish(&report, None)?)
        }
        Cmd::Promote { plan } => {
            let pf = load(&plan)?;
            let run = engine(&pf)?
                .request(&ControlRequest::Promote)
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            out!("asked run {run} to end its pause and carry on");
            Ok(0)
        }
        Cmd::Abort { plan, reason } => {
            let pf = load(&plan)?;
            let run = engine(&pf)?
                .request(&ControlRequest::Abort { reason })
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            out!("asked run {run} to stop and roll back");
            Ok(0)
        }
        Cmd::Unlock { plan } => {
            let pf = load(&plan)?;
            match engine(&pf)?
                .break_stale_lock()
                .await
                .map_err(|e| deploy_error(&plan, e))?
            {
                None => out!(
                    "environment {} is not locked ({})",
                    pf.environment.name,
                    where_state(&pf)
                ),
                Some(holder) => {
                    out!("broke the stale lock of {holder}");
                    if let Ok(Some(s)) = engine(&pf)?.status().await
                        && s.outcome.is_none()
                    {
                        out!(
                            "run {} did not finish: `deploy resume {p}` finishes it, `deploy rollback {p}` undoes it",
                            s.run_id,
                            p = plan.display()
                        );
                    }
                }
            }
            Ok(0)
        }
        Cmd::History { plan, json, last } => {
            let pf = load(&plan)?;
            let mut runs = engine(&pf)?
                .history()
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            if let Some(n) = last {
                runs.drain(..runs.len().saturating_sub(n));
            }
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?
                );
            } else if runs.is_empty() {
                out!("no run recorded for environment {}", pf.environment.name);
            } else {
                for h in &runs {
                    out!("{}", history_line(h));
                }
            }
            Ok(0)
        }
        Cmd::Status {
            plan,
            json: _,
            fleet: true,
        } => {
            let pf = load(&plan)?;
            let engine = engine(&pf)?;
            let live = engine
                .snapshot()
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            let last = engine
                .history()
                .await
                .map_err(|e| deploy_error(&plan, e))?
                .into_iter()
                .rev()
                .find(|h| h.outcome == Outcome::Promoted);
            out!("environment {}", pf.environment.name);
            for t in &live.targets {
                let weight = live
                    .weights
                    .as_ref()
                    .and_then(|w| w.get(&t.id))
                    .map(|w| format!("  weight {w}"))
                    .unwrap_or_default();
                let version = t
                    .current
                    .as_ref()
                    .map_or("(none)".to_owned(), |v| v.to_string());
                let expected = last.as_ref().and_then(|h| {
                    h.after
                        .as_ref()?
                        .targets
                        .iter()
                        .find(|s| s.id == t.id)
                        .map(|s| s.current.clone())
                });
                let drift = match expected {
                    Some(e) if e != t.current => format!(
                        "  DRIFT: the last promoted run left {}",
                        e.map_or("nothing".to_owned(), |v| v.to_string())
                    ),
                    _ => String::new(),
                };
                out!("  {:<12} {version:<12}{weight}{drift}", t.id.to_string());
            }
            if let Some(m) = &live.migrations {
                out!(
                    "  schema       {} ({} pending)",
                    m.current.as_ref().map_or("(empty)", |v| v.0.as_str()),
                    m.pending.len()
                );
            }
            match &last {
                Some(h) => out!("last promoted run: {}", history_line(h)),
                None => out!("no promoted run recorded"),
            }
            Ok(0)
        }
        Cmd::Status { plan, json, .. } => {
            let pf = load(&plan)?;
            match engine(&pf)?
                .status()
                .await
                .map_err(|e| deploy_error(&plan, e))?
            {
                None => out!("no run yet in {}", where_state(&pf)),
                Some(s) if json => out!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                ),
                Some(s) => out!("{s}"),
            }
            Ok(0)
        }
    }
}

/// Where the plan keeps its state, for messages.
fn where_state(pf: &PlanFile) -> String {
    pf.state_store(&Adapters::new())
        .map(|s| s.location())
        .unwrap_or_else(|_| "the state store".to_owned())
}

/// One run of the history on one line.
fn history_line(h: &HistoryEntry) -> String {
    format!(
        "{}  {}  {} {} {}  in {}  by {}@{}{}",
        humantime::format_rfc3339_seconds(h.started_at),
        h.run_id,
        h.strategy,
        h.version,
        h.outcome,
        humantime::format_duration(std::time::Duration::from_secs(h.duration.as_secs())),
        h.user,
        h.host,
        h.ci_job
            .as_ref()
            .map(|j| format!(" (CI {j})"))
            .unwrap_or_default()
    )
}

async fn recover(plan: &Path, mode: Recovery) -> Result<i32, Stop> {
    let pf = load(plan)?;
    let (engine, notifier) = observed(&pf, engine(&pf)?).await?;
    // A stale lock whose run finished is cleared by the recovery: say so.
    let stale = engine
        .status()
        .await
        .ok()
        .flatten()
        .filter(|s| s.lock_stale)
        .and_then(|s| s.lock);
    let r = engine.recover(mode, &ctrl_c_cancels()).await;
    if let Some(n) = notifier {
        n.close().await;
    }
    match r.map_err(|e| deploy_error(plan, e))? {
        None => {
            match stale {
                Some(l) => out!(
                    "nothing to recover: run {} had finished; cleared the stale lock it left",
                    l.run_id
                ),
                None => out!("nothing to recover in {}", where_state(&pf)),
            }
            Ok(0)
        }
        Some(report) => Ok(finish(&report, None)?),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match main_inner(cli).await {
        Ok(code) => code,
        Err(stop) => {
            eprintln!("error: {}", stop.message);
            stop.code
        }
    };
    std::process::exit(code);
}
