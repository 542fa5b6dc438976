//! `deploy`: run real deployments from a plan file, watch them, and read their reports.
//!
//! ```text
//! deploy validate examples/plans/blue-green.toml            # the plan file alone, no server
//! deploy plan     examples/plans/blue-green.toml [--json]   # what would happen, from the live state
//! deploy run      examples/plans/blue-green.toml [--release 1.4.3] [--report r.json] [--html r.html]
//! deploy run      examples/plans/canary.toml --wait 10m     # queue behind the run holding the lock
//! deploy status   examples/plans/canary.toml [--watch]      # where the run stands, live
//! deploy promote  examples/plans/canary.toml                # end a canary's pause
//! deploy abort    examples/plans/canary.toml --reason "p99 too high"
//! deploy resume   examples/plans/blue-green.toml            # finish a killed run
//! deploy rollback examples/plans/blue-green.toml            # undo a killed run
//! deploy rollback examples/plans/blue-green.toml --previous [--dry-run]
//! deploy rollback examples/plans/blue-green.toml --to 1.4.2 [--restore-backup F]
//! deploy status   examples/plans/canary.toml --fleet        # what runs where now
//! deploy history  examples/plans/canary.toml [--last N] [--json]
//! deploy report   examples/plans/canary.toml RUN [--html report.html]
//! deploy unlock   examples/plans/canary.toml                # break a stale lock
//! ```
//!
//! `validate` reads the plan file alone and touches no server; `plan` also reads the live state
//! (each target's version, the switch's weights, the schema, the maintenance page), so it checks
//! that every socket, host and database named in the plan answers, and refuses destructive
//! migrations in a zero-downtime strategy. Every problem is reported at once with its key path.
//! Ctrl-C during `run` or `resume` cancels the run, and the engine rolls back. `promote` and
//! `abort` address the run in progress by its id (and `promote` the pause it is in); with no such
//! run they are refused and leave nothing behind. `resume` and `rollback` read the live state
//! first and go from where the world is, not only from what the journal says.

mod watch;

use deploy::console as render;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// A line on standard output. A closed or full output (`deploy run | head`, a full disk) must
/// not stop a deploy half-way, so write errors are ignored rather than panicking as `println!`
/// does.
#[macro_export]
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
use deploy::notify::WebhookNotifier;
use deploy::plan_file::PlanFile;
use deploy::state::HistoryEntry;
use deploy::{
    BackupId, ControlRequest, DeployError, Outcome, Recovery, ReleaseRollback, Report, RollbackTo,
    SchemaDecision, Version,
};
use deploy::{Engine, ExposeSecret, Plan, Step};
use tokio_util::sync::CancellationToken;

/// What each exit code means (also in the README).
const EXIT_CODES: &str = "\
Exit codes:
  0   promoted, or nothing to do
  1   the plan or the environment is unusable; nothing was changed
  2   rolled back: the environment is back as it was before the run
  3   failed: the rollback itself failed; see the report, then `deploy rollback PLAN` again
  4   refused before acting: the lock is held, a before-hook said no, a request with no run
  5   the run lost its lock to another holder (its lease expired) and acted no further
  6   promoted with failures: the rolling deploy's failure budget (max_failed_targets) gave up
      on some targets, out of the traffic on their old release; `deploy retry PLAN` later
  64  usage error (a mistyped command line)

The plan file format: examples/plans/*.toml (commented) and the `deploy::plan_file` docs
(targets are release directories, or container slots with `kind = \"docker\"`).";

#[derive(Parser, Debug)]
#[command(
    name = "deploy",
    version,
    about = "Deploy a release as a plan file says, watch it, and roll back by itself",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Which release to deploy, when not the plan file's.
#[derive(clap::Args, Debug, Default)]
struct ReleaseArgs {
    /// Deploy this version instead of the plan file's `[release].version`.
    #[arg(long, value_name = "VERSION", conflicts_with = "version_from_git")]
    release: Option<String>,
    /// Deploy the version of the git tag at HEAD (`v1.4.3` → 1.4.3), read in the plan file's
    /// directory.
    #[arg(long)]
    version_from_git: bool,
    /// Deploy this artifact instead of the plan file's `[release].artifact`.
    #[arg(long, value_name = "PATH")]
    artifact: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check the plan file alone: every key, value and path; no server is touched.
    Validate {
        /// The plan file.
        plan: PathBuf,
        #[command(flatten)]
        release: ReleaseArgs,
    },
    /// Print what would happen, from the live state (nothing is changed).
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        release: ReleaseArgs,
    },
    /// Deploy.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Also write the JSON report here (it is always kept in the state store).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write the HTML report here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// When another run holds the environment's lock, wait for it (up to this long:
        /// `90s`, `10m`; 10m when given without a value) instead of failing, then plan from
        /// what that run left.
        #[arg(long, num_args = 0..=1, default_missing_value = "10m", value_name = "TIMEOUT")]
        wait: Option<humantime::Duration>,
        #[command(flatten)]
        release: ReleaseArgs,
    },
    /// Deploy the release again to the targets the newest promoted run gave up on (it ended
    /// promoted with failures, exit code 6), and to them only: each gets its weight back once
    /// healthy.
    Retry {
        /// The plan file.
        plan: PathBuf,
        /// Also write the JSON report here (it is always kept in the state store).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write the HTML report here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        release: ReleaseArgs,
    },
    /// Finish a run that a killed process left behind.
    Resume {
        /// The plan file.
        plan: PathBuf,
    },
    /// Undo a run that a killed process left behind; with --to or --previous, go back to a
    /// release the history recorded as promoted, as a new run.
    #[command(group(clap::ArgGroup::new("release_back").args(["to", "previous"])))]
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
        /// its code (the history names the one taken before it); with --to or --previous.
        #[arg(long, value_name = "BACKUP", requires = "release_back")]
        restore_backup: Option<String>,
        /// The release's artifact, for targets that no longer keep its release directory;
        /// with --to or --previous.
        #[arg(long, requires = "release_back")]
        artifact: Option<PathBuf>,
        /// Print the path it would take and its plan; change nothing (with --to or
        /// --previous).
        #[arg(long, requires = "release_back")]
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
    /// Show who holds the environment's lock; break it only if its process is gone.
    Unlock {
        /// The plan file.
        plan: PathBuf,
    },
    /// Where the newest run stands; with --watch, follow it live; with --fleet, what every
    /// target runs now.
    Status {
        /// The plan file.
        plan: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Follow the run: its step, the weights, the last verdict of each gate, the time
        /// left; until it ends (Ctrl-C stops watching, not the run).
        #[arg(long, conflicts_with_all = ["json", "fleet"])]
        watch: bool,
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
    /// The report of a finished run (the newest when RUN is not given): as text, as JSON, or
    /// drawn as one self-contained HTML file.
    Report {
        /// The plan file.
        plan: PathBuf,
        /// The run's id (see `deploy history`).
        run: Option<String>,
        /// Print the JSON report.
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// Write the HTML report to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
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
            code: 4,
            message: format!(
                "{e}\n  `deploy resume {p}` finishes that run, `deploy rollback {p}` undoes it, \
                 `deploy unlock {p}` only discards the lock"
            ),
        },
        DeployError::Locked { .. } => Stop {
            code: 4,
            message: format!(
                "{e}\n  `deploy status {p} --watch` follows that run; `deploy run {p} --wait` \
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

/// The plan file with the release the command line names instead of its own, checked as far as
/// the file alone can tell.
fn load_release(path: &Path, args: &ReleaseArgs) -> Result<PlanFile, Stop> {
    let mut plan = load(path)?;
    let usage = |message: String| Stop { code: 64, message };
    let version = match (&args.release, args.version_from_git) {
        (Some(v), _) => Some((v.clone(), "--release")),
        (None, true) => Some((git_version(path)?, "--version-from-git")),
        (None, false) => None,
    };
    if let Some((v, flag)) = version {
        let version = Version::new(v.clone()).map_err(|e| usage(format!("{flag} {v:?}: {e}")))?;
        // A plan's artifact named after its own version is that version's build: deploying it
        // under another version would label old code new.
        if args.artifact.is_none()
            && let Some(a) = &plan.release.artifact
            && let Some(name) = a.file_name().and_then(|n| n.to_str())
            && name.contains(plan.release.version.as_str())
            && version != plan.release.version
        {
            return Err(usage(format!(
                "{flag} {v}: the plan's artifact {} is {}'s build; give --artifact PATH with {v}'s",
                a.display(),
                plan.release.version
            )));
        }
        plan.release.version = version;
    }
    if let Some(a) = &args.artifact {
        if !a.exists() {
            return Err(usage(format!(
                "--artifact {}: no such file or directory",
                a.display()
            )));
        }
        plan.release.artifact = Some(std::path::absolute(a).unwrap_or_else(|_| a.clone()));
    }
    // Everything the plan file alone can tell, before any server is asked: the artifact, the
    // state directory, every adapter section.
    plan.validate(&Adapters::new()).map_err(|e| e.to_string())?;
    Ok(plan)
}

/// The version of the git tag at HEAD of the repository holding the plan file (`v1.4.3` →
/// `1.4.3`).
fn git_version(plan: &Path) -> Result<String, String> {
    let dir = plan
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = std::process::Command::new("git")
        .args(["describe", "--tags", "--exact-match", "HEAD"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("--version-from-git: run git in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "--version-from-git: HEAD of the repository at {} has no tag ({}); tag the release \
             (`git tag v1.4.3`) or give --release VERSION",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(tag.strip_prefix('v').unwrap_or(&tag).to_owned())
}

fn engine(plan: &PlanFile) -> Result<Engine, String> {
    plan.engine(&Adapters::new()).map_err(|e| e.to_string())
}

/// The exit code of a finished run: a run a before-hook refused changed nothing (4).
fn exit_code(report: &Report) -> i32 {
    if render::refused_before_acting(report) {
        return 4;
    }
    match report.outcome {
        Outcome::Promoted => 0,
        Outcome::RolledBack => 2,
        Outcome::Failed => 3,
        Outcome::PromotedWithFailures => 6,
    }
}

/// An engine that shows its run (and posts it, when the plan has `[notify]`).
struct Observed {
    engine: Engine,
    notifier: Option<Arc<WebhookNotifier>>,
    live: Arc<render::Live>,
}

impl Observed {
    /// After the run (or its failure to run): the bars off the screen, the notifications sent.
    async fn done(self) -> Engine {
        self.live.clear();
        if let Some(n) = self.notifier {
            n.close().await;
        }
        self.engine
    }

    /// The end of a run: [`done`](Self::done) (what the notifier queued is sent even when the
    /// run could not start), then its summary and reports, and its exit code.
    async fn conclude(
        self,
        plan: &Path,
        run: Result<Report, DeployError>,
        outputs: &Outputs<'_>,
    ) -> Result<i32, Stop> {
        let engine = self.done().await;
        let report = run.map_err(|e| deploy_error(plan, e))?;
        Ok(finish(&engine, plan, &report, outputs)?)
    }
}

async fn observed(path: &Path, plan: &PlanFile, engine: Engine) -> Result<Observed, String> {
    let live = Arc::new(render::Live::new(
        Some(path.display().to_string()),
        std::io::stdout().is_terminal(),
        render::Times::of(&engine),
    ));
    let mut engine = engine.with_observer(live.clone());
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
    Ok(Observed {
        engine,
        notifier,
        live,
    })
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

/// Where a finished run's reports are, written where the command line asked.
struct Outputs<'a> {
    json: Option<&'a Path>,
    html: Option<&'a Path>,
}

impl Outputs<'_> {
    const NONE: Outputs<'static> = Outputs {
        json: None,
        html: None,
    };
}

/// Print the summary of a finished run, write the reports asked for, and return its exit code.
fn finish(
    engine: &Engine,
    plan: &Path,
    report: &Report,
    outputs: &Outputs<'_>,
) -> Result<i32, String> {
    let mut at = Vec::new();
    if let Some(store) = engine.state_store() {
        at.push(store.report_location(&report.environment, &report.run_id));
    }
    if let Some(path) = outputs.json {
        let body = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
        deploy::fs::write_atomic(path, &body[..], None)
            .map_err(|e| format!("write the JSON report {}: {e}", path.display()))?;
        at.push(path.display().to_string());
    }
    if let Some(path) = outputs.html {
        write_html(report, path)?;
        at.push(path.display().to_string());
    }
    out_raw!(
        "{}",
        render::summary(report, Some(&plan.display().to_string()), &at)
    );
    Ok(exit_code(report))
}

/// Write the HTML report of `report` to `path` (whole or not at all).
fn write_html(report: &Report, path: &Path) -> Result<(), String> {
    deploy::report_html::write(report, path)
        .map_err(|e| format!("write the HTML report {}: {e}", path.display()))
}

/// What each analysis of `plan` really takes: its measurements, and the wall time a gate that
/// needs a window per measurement stretches it to.
fn analysis_times(engine: &Engine, plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Analyze { name, duration, .. } => Some(format!(
                "step {}: {name}: {}",
                i + 1,
                engine.analysis_time_of(name, *duration)
            )),
            _ => None,
        })
        .collect()
}

async fn main_inner(cli: Cli) -> Result<i32, Stop> {
    match cli.command {
        Cmd::Validate { plan, release } => {
            let pf = load_release(&plan, &release)?;
            out!(
                "{}: valid ({} of {} to {}, {} target(s)); no server was contacted",
                pf.source_name,
                pf.strategy.name(),
                pf.release.version,
                pf.environment.name,
                pf.targets.len(),
            );
            Ok(0)
        }
        Cmd::Plan {
            plan,
            json,
            release,
        } => {
            let pf = load_release(&plan, &release)?;
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
        Cmd::Run {
            plan,
            report,
            html,
            wait,
            release,
        } => {
            let pf = load_release(&plan, &release)?;
            let obs = observed(&plan, &pf, engine(&pf)?).await?;
            let engine = &obs.engine;
            let r = match wait {
                None => {
                    // Another run holds the lock: say whose, rather than plan against a world
                    // that run is changing.
                    if let Some(store) = engine.state_store()
                        && let Ok(Some(h)) = store.holder(&pf.environment.name).await
                        && !h.stale
                    {
                        let location = store.location();
                        obs.done().await;
                        return Err(deploy_error(
                            &plan,
                            DeployError::Locked {
                                environment: pf.environment.name.clone(),
                                location,
                                holder: Some(Box::new(h.info)),
                            },
                        ));
                    }
                    // Planned under the lock, from one read of the live state.
                    engine
                        .deploy(&pf.strategy, &pf.release(), &pf.options, &ctrl_c_cancels())
                        .await
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
                    engine
                        .clone()
                        .with_lock_wait(wait.into())
                        .deploy(&pf.strategy, &pf.release(), &pf.options, &ctrl_c_cancels())
                        .await
                }
            };
            let outputs = Outputs {
                json: report.as_deref(),
                html: html.as_deref(),
            };
            obs.conclude(&plan, r, &outputs).await
        }
        Cmd::Retry {
            plan,
            report,
            html,
            release,
        } => {
            let pf = load_release(&plan, &release)?;
            let obs = observed(&plan, &pf, engine(&pf)?).await?;
            let r = obs
                .engine
                .retry_failed(&pf.strategy, &pf.release(), &pf.options, &ctrl_c_cancels())
                .await;
            let outputs = Outputs {
                json: report.as_deref(),
                html: html.as_deref(),
            };
            obs.conclude(&plan, r, &outputs).await
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
            let obs = observed(&plan, &pf, engine(&pf)?).await?;
            let engine = obs.engine.clone();
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
                    .await;
                obs.done().await;
                let rb = rb.map_err(|e| deploy_error(&plan, e))?;
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
            obs.done().await;
            let (rb, report) = r.map_err(|e| deploy_error(&plan, e))?;
            say(&rb);
            Ok(finish(&engine, &plan, &report, &Outputs::NONE)?)
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
            let broken = match engine(&pf)?.break_stale_lock().await {
                Err(DeployError::Locked {
                    holder: Some(h), ..
                }) => {
                    return Err(Stop {
                        code: 4,
                        message: format!(
                            "environment {} is locked by {h}, a live run: not broken\n  \
                             `deploy status {p} --watch` follows it, `deploy abort {p}` rolls it back",
                            pf.environment.name,
                            p = plan.display()
                        ),
                    });
                }
                Err(e @ DeployError::Locked { .. }) => {
                    return Err(Stop {
                        code: 4,
                        message: format!("{e}: a live run's lock is not broken"),
                    });
                }
                other => other.map_err(|e| deploy_error(&plan, e))?,
            };
            match broken {
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
            plan, watch: true, ..
        } => {
            let pf = load(&plan)?;
            watch::run(&engine(&pf)?, &plan)
                .await
                .map_err(|e| deploy_error(&plan, e))
        }
        Cmd::Report {
            plan,
            run,
            json,
            html,
        } => {
            let pf = load(&plan)?;
            let engine = engine(&pf)?;
            let store = engine
                .state_store()
                .ok_or_else(|| "the plan keeps no state".to_owned())?;
            let env = &pf.environment.name;
            let run = match run {
                Some(r) => r,
                None => engine
                    .history()
                    .await
                    .map_err(|e| deploy_error(&plan, e))?
                    .pop()
                    .map(|h| h.run_id)
                    .ok_or_else(|| format!("no run recorded for environment {env}"))?,
            };
            let report = store
                .report(env, &run)
                .await
                .map_err(|e| deploy_error(&plan, e))?
                .ok_or_else(|| {
                    format!(
                        "no report of run {run} in {} (`deploy history {}` lists the runs)",
                        store.location(),
                        plan.display()
                    )
                })?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else if let Some(path) = html {
                write_html(&report, &path)?;
                out!("wrote {}", path.display());
            } else {
                out_raw!(
                    "{}",
                    render::report_text(&report, &plan.display().to_string())
                );
            }
            Ok(0)
        }
        Cmd::Status {
            plan,
            json: _,
            fleet: true,
            ..
        } => {
            let pf = load(&plan)?;
            let engine = engine(&pf)?;
            let live = engine
                .snapshot()
                .await
                .map_err(|e| deploy_error(&plan, e))?;
            let history = engine.history().await.map_err(|e| deploy_error(&plan, e))?;
            let last = HistoryEntry::newest_promoted(&history);
            out!("environment {}", pf.environment.name);
            for t in &live.targets {
                let weight = live
                    .weights
                    .as_ref()
                    .map(|w| format!("  {} %", deploy::units::number(w.percent(&t.id))))
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
    let obs = observed(plan, &pf, engine(&pf)?).await?;
    let engine = obs.engine.clone();
    // A stale lock whose run finished is cleared by the recovery: say so.
    let stale = engine
        .status()
        .await
        .ok()
        .flatten()
        .filter(|s| s.lock_stale)
        .and_then(|s| s.lock);
    let r = engine.recover(mode, &ctrl_c_cancels()).await;
    obs.done().await;
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
        Some(report) => Ok(finish(&engine, plan, &report, &Outputs::NONE)?),
    }
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version are answers (0); anything else is a usage error (64, as
            // sysexits' EX_USAGE), never confused with "rolled back" (2).
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match main_inner(cli).await {
        Ok(code) => code,
        Err(stop) => {
            eprintln!("error: {}", stop.message);
            stop.code
        }
    };
    std::process::exit(code);
}
