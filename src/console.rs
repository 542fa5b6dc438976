//! What an operator reads while a run goes and when it ends (the `deploy` command line and the
//! demo print with it; feature `console`): one line per step with its
//! duration, weights as percentages, rounded values with their unit, health waits and timed
//! waits as one updating line with a progress bar on a terminal (plain lines otherwise), a pause
//! that names the commands that end it, and a closing summary with the failure's reason printed
//! once, in full, with what to do next.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use deploy_core::event::{Event, Observer};
use deploy_core::units;
use deploy_core::{Engine, Outcome, Report, Snapshot, Step, Verdict, VerdictKind, Weights};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A line on standard output; a closed or full output never stops a deploy (errors ignored).
fn out(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// How wide a reason may be on a progress line before it is cut (the full text comes at the end).
const SHORT: usize = 110;

/// `text` cut to `max` characters with an ellipsis, on one line.
pub fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && !text.contains('\n') {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// Weights as people read them: `blue 90 %, green 10 %` when they name every one of the `all`
/// targets (a share of the traffic), else as set (`c weight 1`: a rolling batch given its
/// weight back, the others keeping theirs).
pub fn weights_of(w: &Weights, all: usize) -> String {
    if w.iter().count() < all || all == 0 {
        return w
            .iter()
            .map(|(id, n)| format!("{id} weight {n}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    weights(w)
}

/// Weights as shares of the traffic: `blue 90 %, green 10 %`.
pub fn weights(w: &Weights) -> String {
    w.iter()
        .map(|(id, _)| format!("{id} {} %", units::number(w.percent(id))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A step in words, with weights as percentages (of the `all` targets) and durations rounded.
pub fn step(s: &Step, all: usize) -> String {
    match s {
        Step::SetWeights { weights: w } => format!("send traffic: {}", weights_of(w, all)),
        Step::Analyze {
            name,
            duration,
            canary,
            ..
        } => {
            let on = canary
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            format!("analyze {on} for {} ({name})", units::duration(*duration))
        }
        Step::Pause {
            duration: Some(d), ..
        } => format!("pause {}", units::duration(*d)),
        other => other.to_string(),
    }
}

/// A verdict on one line: `pass 0.2 % (<= 1 %)`, with a short reason when it is not a pass.
pub fn verdict(v: &Verdict) -> String {
    let value = v
        .value
        .map_or("no value".to_owned(), |x| units::quantity(x, v.unit));
    let mut line = format!(
        "{} {value} (needs {})",
        v.kind,
        units::condition(&v.condition, v.unit)
    );
    if v.kind != VerdictKind::Pass {
        let _ = write!(line, ": {}", short(&v.reason, SHORT));
    }
    line
}

/// How long a step may wait, for its progress bar and `status --watch`'s time left: an
/// analysis as long as its measurements really take, a timed pause, a health wait up to the
/// probe's deadline.
pub fn expected(s: &Step, times: &Times) -> Option<Duration> {
    match s {
        Step::Analyze { name, duration, .. } => Some(times.analysis(name, *duration)),
        Step::Pause {
            duration: Some(d), ..
        } => Some(*d),
        Step::AwaitHealthy { .. } => Some(times.health),
        _ => None,
    }
}

/// What the renderer knows of the engine's timing: the wall time of an analysis (its gates'
/// windows stretch it), the probe's deadline. It keeps a clone of the engine made before the
/// renderer became one of its observers.
#[derive(Debug)]
pub struct Times {
    engine: Engine,
    /// The probe's deadline.
    pub health: Duration,
    /// How many targets the environment has (weights naming them all are shares).
    pub targets: usize,
}

impl Times {
    /// The timing of `engine`.
    pub fn of(engine: &Engine) -> Self {
        Self {
            health: engine.policies().probe.deadline,
            targets: engine.environment().targets().len(),
            engine: engine.clone(),
        }
    }

    /// The wall time of the analysis `name` of nominal `duration`.
    fn analysis(&self, name: &str, duration: Duration) -> Duration {
        self.engine.analysis_time_of(name, duration).wall
    }
}

/// A step's line label: ` 3/9 activate 2.0.0 on green`.
fn label(index: usize, total: usize, s: &Step, all: usize) -> String {
    format!("{:>2}/{total} {}", index + 1, step(s, all))
}

/// Whether a step leaves what users are served as it was: it only unpacks a release on an idle
/// slot, checks its health, or backs up the database.
fn preparatory(s: &Step) -> bool {
    matches!(
        s,
        Step::Prepare { .. } | Step::AwaitHealthy { .. } | Step::Backup
    )
}

/// A wall-clock time as `HH:MM:SS` (UTC), for "until" in plain output.
fn clock(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// Renders a run's events: bars on a terminal, plain lines otherwise.
#[derive(Debug)]
pub struct Live {
    state: Mutex<State>,
    /// The plan file's path as the operator typed it, for the commands a pause names (`None`
    /// when the run comes from no plan file).
    plan: Option<String>,
    bars: Option<MultiProgress>,
    times: Times,
}

#[derive(Debug, Default)]
struct State {
    steps: usize,
    started: HashMap<usize, Instant>,
    bars: HashMap<usize, ProgressBar>,
    /// The step (by index) each target's health wait belongs to.
    health: HashMap<String, usize>,
    any_step: bool,
    /// Whether a step that changes what users are served has finished.
    acted: bool,
}

impl Live {
    /// A renderer for a run of the plan at `plan` (as typed); bars when `tty`.
    pub fn new(plan: Option<String>, tty: bool, times: Times) -> Self {
        Self {
            state: Mutex::new(State::default()),
            plan,
            bars: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            times,
        }
    }

    /// Take every bar off the screen (the run ended, or the command stops with an error), so
    /// that what is printed next is not drawn over.
    pub fn clear(&self) {
        if let Ok(mut st) = self.state.lock() {
            for (_, bar) in st.bars.drain() {
                bar.finish_and_clear();
            }
        }
        if let Some(m) = &self.bars {
            let _ = m.clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => out(text),
        }
    }

    fn step_started(&self, st: &mut State, index: usize, s: &Step) {
        st.any_step = true;
        st.started.insert(index, Instant::now());
        if let Step::AwaitHealthy { target, .. } = s {
            st.health.insert(target.to_string(), index);
        }
        let label = label(index, st.steps, s, self.times.targets);
        if let Step::Pause { duration: None } = s {
            // The `Paused` event says why and how to end it.
            return;
        }
        let wait = expected(s, &self.times);
        match &self.bars {
            Some(m) => {
                let bar =
                    match wait {
                        Some(d) => {
                            let bar = m.add(ProgressBar::new(d.as_millis().max(1) as u64));
                            bar.set_style(
                            ProgressStyle::with_template(if matches!(s, Step::AwaitHealthy { .. }) {
                                "{prefix} [{bar:24}] {elapsed} of at most {len_time} {msg}"
                            } else {
                                "{prefix} [{bar:24}] {elapsed} of {len_time}, {left} left {msg}"
                            })
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .with_key(
                                "len_time",
                                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                    let _ = w.write_str(&units::duration(Duration::from_millis(
                                        s.len().unwrap_or(0),
                                    )));
                                },
                            )
                            .with_key(
                                "left",
                                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                    let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                                    let _ = w.write_str(&units::duration(Duration::from_secs(
                                        left.div_ceil(1000),
                                    )));
                                },
                            )
                            .progress_chars("=> "),
                        );
                            let b = bar.clone();
                            let start = Instant::now();
                            tokio::spawn(async move {
                                while !b.is_finished() {
                                    let at = (start.elapsed().as_millis() as u64)
                                        .min(b.length().unwrap_or(0));
                                    b.set_position(at);
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                            });
                            bar
                        }
                        None => {
                            let bar = m.add(ProgressBar::new_spinner());
                            bar.set_style(
                                ProgressStyle::with_template("{prefix} {spinner} {elapsed} {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            bar
                        }
                    };
                bar.set_prefix(label);
                bar.enable_steady_tick(Duration::from_millis(200));
                st.bars.insert(index, bar);
            }
            None => {
                if let Some(d) = expected(s, &self.times)
                    && !matches!(s, Step::AwaitHealthy { .. })
                {
                    self.line(&format!(
                        "{label}: until about {} UTC",
                        clock(SystemTime::now() + d)
                    ));
                }
            }
        }
    }

    fn step_finished(
        &self,
        st: &mut State,
        index: usize,
        s: &Step,
        took: Duration,
        error: Option<&str>,
    ) {
        if let Some(bar) = st.bars.remove(&index) {
            bar.finish_and_clear();
            if let Some(m) = &self.bars {
                m.remove(&bar);
            }
        }
        st.started.remove(&index);
        let label = label(index, st.steps, s, self.times.targets);
        let took = units::duration(took);
        match error {
            None => {
                st.acted |= !preparatory(s);
                self.line(&format!("{label}  {took}"));
            }
            // The reason comes once, in full, in the summary (and in the report).
            Some(_) => self.line(&format!("{label}  FAILED after {took}")),
        }
    }
}

impl Observer for Live {
    fn on_event(&self, event: &Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match event {
            Event::RunStarted {
                run_id,
                environment,
                version,
                strategy,
                steps,
            } => {
                st.steps = *steps;
                self.line(&format!(
                    "deploy {version} to {environment}: {strategy}, {steps} steps (run {run_id})"
                ));
            }
            Event::StepStarted { index, step } => self.step_started(&mut st, *index, step),
            Event::StepFinished {
                index,
                step,
                duration,
                error,
            } => self.step_finished(&mut st, *index, step, *duration, error.as_deref()),
            Event::HealthChecked {
                target,
                healthy: false,
                reason,
            } => {
                if let Some(i) = st.health.get(target.as_str())
                    && let Some(bar) = st.bars.get(i)
                {
                    bar.set_message(format!("not yet: {}", short(reason, 70)));
                }
            }
            Event::HealthChecked { .. } | Event::WeightsChanged { .. } => {}
            Event::Drained {
                target,
                duration,
                sessions_left,
            } if *sessions_left > 0 => self.line(&format!(
                "      {target}: {sessions_left} sessions still open after draining for {}",
                units::duration(*duration)
            )),
            Event::Drained { .. } => {}
            Event::GateVerdict {
                gate, verdict: v, ..
            } => self.line(&format!("      {gate}: {}", verdict(v))),
            // A failed hook fails its step or the run: its reason is the summary's.
            Event::HookRan { .. } => {}
            Event::Paused { reason } => match &self.plan {
                Some(p) => self.line(&format!(
                    "      paused: {reason}\n      `deploy promote {p}` carries on, `deploy abort {p}` rolls back, `deploy status {p} --watch` follows it"
                )),
                None => self.line(&format!("      paused: {reason}")),
            },
            Event::Retrying {
                operation,
                attempt,
                error,
            } => self.line(&format!(
                "      retrying {operation} (attempt {attempt} failed: {})",
                short(error, 80)
            )),
            Event::RollbackStarted { .. } => {
                for (_, bar) in st.bars.drain() {
                    bar.finish_and_clear();
                }
                if !st.any_step {
                    self.line("stopped before the first step (why: below); nothing was changed");
                } else if !st.acted {
                    self.line(
                        "stopped before anything users are served changed (why: below); undoing the preparations",
                    );
                } else {
                    self.line("rolling back (why: below)");
                }
            }
            Event::TargetGivenUp { target, reason } => self.line(&format!(
                "   given up: {target} — out of the traffic, rolled back alone; the others go on ({})",
                short(reason, SHORT)
            )),
            Event::RollbackStep { step: s, error } => match error {
                None => self.line(&format!("   undo {}  done", step(s, self.times.targets))),
                Some(e) => self.line(&format!(
                    "   undo {}  FAILED: {}",
                    step(s, self.times.targets),
                    short(e, SHORT)
                )),
            },
            Event::RunFinished { .. } => {
                for (_, bar) in st.bars.drain() {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

/// Whether `report` is a refusal before acting: a before-hook said no before any step changed
/// what users are served (only releases unpacked on idle slots, health checks of them, a
/// backup), and the rollback left nothing different.
pub fn refused_before_acting(report: &Report) -> bool {
    let Some(rollback) = &report.rollback else {
        return false;
    };
    if report.outcome != Outcome::RolledBack || !rollback.mismatches.is_empty() {
        return false;
    }
    let Some(failed) = report.steps.iter().position(|s| s.error.is_some()) else {
        return report.steps.is_empty()
            && rollback
                .reason
                .starts_with("stopped before the first step: hook ");
    };
    // A before-hook's error reads `hook NAME (before step …): …`; an after-hook's failure
    // comes after its step acted.
    let before_hook = report.steps[failed].error.as_ref().is_some_and(|e| {
        [&e.operation, &e.message]
            .iter()
            .any(|t| t.starts_with("hook ") && t.contains(" (before "))
    });
    before_hook
        && report.steps[..failed]
            .iter()
            .all(|s| s.error.is_none() && preparatory(&s.step))
}

/// The closing summary of a run: outcome, versions per target, weights, schema, gates judged,
/// where the reports are, and for a failure its reason in full and what to do next.
pub fn summary(report: &Report, plan: Option<&str>, report_at: &[String]) -> String {
    let mut s = String::new();
    let outcome = if refused_before_acting(report) {
        "REFUSED"
    } else {
        match report.outcome {
            Outcome::Promoted => "PROMOTED",
            Outcome::PromotedWithFailures => "PROMOTED WITH FAILURES",
            Outcome::RolledBack => "ROLLED BACK",
            Outcome::Failed => "FAILED",
        }
    };
    let _ = writeln!(
        s,
        "\n{outcome}: {} to {} ({}) in {}, run {}",
        report.version,
        report.environment,
        report.strategy,
        units::duration(report.duration),
        report.run_id
    );
    if let Some(r) = &report.rollback {
        let _ = writeln!(s, "  why: {}", r.reason);
        for m in &r.mismatches {
            let _ = writeln!(s, "  NOT BACK: {m}");
        }
    }
    for t in &report.failed_targets {
        let _ = writeln!(
            s,
            "  given up: {} (out of the traffic, back on its old release): {}",
            t.target, t.reason
        );
    }
    if let Some(f) = &report.final_state {
        let _ = writeln!(s, "  now: {}", live(f));
    }
    let total = report.verdicts.len();
    if total > 0 {
        let mut kinds: Vec<(VerdictKind, usize)> = Vec::new();
        for v in &report.verdicts {
            match kinds.iter_mut().find(|(k, _)| *k == v.verdict.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((v.verdict.kind, 1)),
            }
        }
        let parts = kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "  gates: {total} measurements judged: {parts}");
    }
    for n in &report.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    for at in report_at {
        let _ = writeln!(s, "  report: {at}");
    }
    let next = match (outcome, report.outcome, plan) {
        ("REFUSED", _, Some(plan)) => Some(format!(
            "nothing was changed; fix what the hook said, then `deploy run {plan}` again"
        )),
        ("REFUSED", _, None) => Some("nothing was changed".to_owned()),
        (_, Outcome::RolledBack, Some(plan)) => Some(format!(
            "the environment is back as it was before the run; `deploy report {plan} {} --html report.html` draws the run",
            report.run_id
        )),
        (_, Outcome::RolledBack, None) => {
            Some("the environment is back as it was before the run".to_owned())
        }
        (_, Outcome::Failed, Some(plan)) => Some(format!(
            "the environment needs attention: `deploy status {plan} --fleet` shows what runs where, `deploy rollback {plan}` tries the rollback again"
        )),
        (_, Outcome::PromotedWithFailures, Some(plan)) => Some(format!(
            "every target in the traffic runs {}; `deploy retry {plan}` deploys it again to the {} given up on, once fixed",
            report.version,
            report.failed_targets.len()
        )),
        (_, Outcome::PromotedWithFailures, None) => Some(format!(
            "every target in the traffic runs {}; the targets given up on are out of the traffic",
            report.version
        )),
        (_, Outcome::Failed, None) => Some(
            "the environment needs attention: the rollback itself failed (see the report)"
                .to_owned(),
        ),
        _ => None,
    };
    if let Some(n) = next {
        let _ = writeln!(s, "  next: {n}");
    }
    s
}

/// A finished run's report as text (`deploy report`): its steps with their durations, its
/// undo steps, each gate's measurements, and the summary.
pub fn report_text(report: &Report, plan: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run {}: deploy {} to {} ({}), started {}",
        report.run_id,
        report.version,
        report.environment,
        report.strategy,
        humantime::format_rfc3339_seconds(report.started_at)
    );
    let total = report.steps.iter().map(|r| r.index + 1).max().unwrap_or(0);
    let all = report.final_state.as_ref().map_or(0, |f| f.targets.len());
    for r in &report.steps {
        let took = units::duration(r.duration);
        let _ = match &r.error {
            None => writeln!(s, "{}  {took}", label(r.index, total, &r.step, all)),
            Some(_) => writeln!(
                s,
                "{}  FAILED after {took}",
                label(r.index, total, &r.step, all)
            ),
        };
    }
    if let Some(rb) = &report.rollback {
        for u in &rb.steps {
            let _ = match &u.error {
                None => writeln!(s, "   undo {}  done", step(&u.step, all)),
                Some(e) => writeln!(s, "   undo {}  FAILED: {}", step(&u.step, all), e.message),
            };
        }
    }
    let mut gates: Vec<(&str, &str)> = Vec::new();
    for v in &report.verdicts {
        if !gates.contains(&(v.gate.as_str(), v.analysis.as_str())) {
            gates.push((v.gate.as_str(), v.analysis.as_str()));
        }
    }
    for (gate, analysis) in gates {
        let all: Vec<&Verdict> = report
            .verdicts
            .iter()
            .filter(|v| v.gate == gate && v.analysis == analysis)
            .map(|v| &v.verdict)
            .collect();
        let kinds = all
            .iter()
            .map(|v| v.kind.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(last) = all.last() {
            let _ = writeln!(
                s,
                "   gate {gate} [{analysis}]: {kinds}; last: {}",
                verdict(last)
            );
        }
    }
    s.push_str(&summary(report, Some(plan), &[]));
    s
}

/// What the environment runs: `blue 2.0.0 (100 %), green 1.0.0 (0 %); schema 2`.
pub fn live(f: &Snapshot) -> String {
    let targets = f
        .targets
        .iter()
        .map(|t| {
            let v = t
                .current
                .as_ref()
                .map_or("nothing".to_owned(), ToString::to_string);
            match &f.weights {
                Some(w) => format!("{} {v} ({} %)", t.id, units::number(w.percent(&t.id))),
                None => format!("{} {v}", t.id),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = targets;
    if let Some(m) = &f.migrations {
        let _ = write!(
            text,
            "; schema {}",
            m.current.as_ref().map_or("empty", |v| v.0.as_str())
        );
    }
    if f.maintenance == Some(true) {
        text.push_str("; maintenance page ON");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::TargetId;

    #[test]
    fn weights_read_as_percentages() {
        let w = Weights::new()
            .with(TargetId::new("blue").unwrap(), 9)
            .with(TargetId::new("green").unwrap(), 1);
        assert_eq!(weights_of(&w, 2), "blue 90 %, green 10 %");
        // A rolling batch given its weight back, of a fleet of three.
        assert_eq!(weights_of(&w, 3), "blue weight 9, green weight 1");
    }

    #[test]
    fn long_reasons_are_cut_on_progress_lines() {
        let long = "x".repeat(400);
        assert_eq!(short(&long, 10).chars().count(), 10);
        assert_eq!(short("one\ntwo", 50), "one…");
        assert_eq!(short("fits", 50), "fits");
    }
}
