//! `deploy status --watch`: a live view of the run from another terminal — its step, the
//! weights, the last verdict of each gate, the time left — read from the journal once a second
//! until the run ends, or until it shows no live process behind it (exit 3: it needs `resume` or
//! `rollback`). Watching changes nothing: Ctrl-C stops the watch, not the run.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, SystemTime};

use deploy::journal::RunStatus;
use deploy::units;
use deploy::{DeployError, Engine, Step};

use deploy::console as render;

/// How often the journal is read.
const EVERY: Duration = Duration::from_secs(1);

/// Follow the newest run until it ends (0), or until it is seen twice with no live process
/// behind it (3: it needs `resume` or `rollback`, which the view names).
pub(crate) async fn run(engine: &Engine, plan: &Path) -> Result<i32, DeployError> {
    let tty = std::io::stdout().is_terminal();
    let plan = plan.display().to_string();
    let times = render::Times::of(engine);
    let mut shown = String::new();
    let mut orphaned = 0;
    loop {
        let status = engine.status().await?;
        let text = match &status {
            None => "no run yet\n".to_owned(),
            Some(s) => view(s, &plan, &times, SystemTime::now()),
        };
        // On a terminal the view is redrawn in place; otherwise a new view is printed only
        // when it changed (a log reads as a sequence of states, not a line per second).
        if tty {
            crate::out!("\x1b[H\x1b[2J{}", text.trim_end());
        } else if text != shown {
            crate::out!("{}", text.trim_end());
        }
        shown = text;
        if status.as_ref().is_none_or(|s| s.outcome.is_some()) {
            return Ok(0);
        }
        let dead = status
            .as_ref()
            .is_some_and(|s| s.lock_stale || s.lock.is_none());
        orphaned = if dead { orphaned + 1 } else { 0 };
        if orphaned >= 2 {
            return Ok(3);
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// One view of `s` at `now`.
pub(crate) fn view(s: &RunStatus, plan: &str, times: &render::Times, now: SystemTime) -> String {
    let mut t = String::new();
    let _ = write!(t, "run {}: {} {}", s.run_id, s.strategy, s.version);
    match (&s.outcome, &s.rollback_reason) {
        (Some(o), _) => {
            let _ = writeln!(t, ": finished, {o}");
        }
        (None, Some(why)) => {
            let _ = writeln!(t, ": ROLLING BACK: {}", render::short(why, 200));
        }
        (None, None) => {
            let _ = writeln!(t);
            if let Some(step) = &s.current_step {
                let _ = write!(
                    t,
                    "  step {}/{}: {}",
                    s.steps_done + 1,
                    s.steps_total,
                    render::step(step, times.targets)
                );
                if let Some(left) = left(step, times, s.step_started_at, now) {
                    let _ = write!(t, " ({} left)", units::duration(left));
                }
                let _ = writeln!(t);
            }
        }
    }
    if let Some(w) = &s.weights {
        let _ = writeln!(t, "  traffic: {}", render::weights(w));
    }
    for v in &s.last_verdicts {
        let _ = writeln!(
            t,
            "  gate {} [{}]: {}",
            v.gate,
            v.analysis,
            render::verdict(&v.verdict)
        );
    }
    if s.outcome.is_none()
        && let Some(why) = &s.paused
    {
        let _ = writeln!(
            t,
            "  PAUSED: {why}\n  `deploy promote {plan}` carries on, `deploy abort {plan}` rolls back"
        );
    }
    match (&s.lock, s.lock_stale) {
        (Some(l), false) => {
            let _ = writeln!(t, "  lock: held by {l}");
        }
        (Some(l), true) => {
            let _ = writeln!(
                t,
                "  STALE lock of {l}: `deploy resume {plan}` finishes the run, `deploy rollback {plan}` undoes it"
            );
        }
        (None, _) if s.outcome.is_none() => {
            let _ = writeln!(
                t,
                "  no process holds the lock: `deploy resume {plan}` finishes the run, `deploy rollback {plan}` undoes it"
            );
        }
        (None, _) => {}
    }
    t
}

/// The time a timed step (an analysis, a timed pause, a health wait) has left at most.
fn left(
    step: &Step,
    times: &render::Times,
    started: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let total = render::expected(step, times)?;
    let gone = now.duration_since(started?).unwrap_or_default();
    Some(total.saturating_sub(gone))
}
