//! A run's report as one self-contained HTML page: the outcome, the timeline of steps (pauses
//! and the rollback's undo steps included), the traffic weights over time, and for each gate its
//! measured values over time against its threshold, each verdict with its reason and the
//! Mann-Whitney statistics where a judge ran.
//!
//! The page needs nothing from elsewhere: styles are inline, charts are inline SVG, there is no
//! script, and a Content-Security-Policy (`default-src 'none'`) forbids any fetch. Every text
//! that comes from the report (gate names, reasons, sources) is escaped.
//!
//! The charts are written by hand rather than by `plotters`: its SVG backend draws primitives
//! (lines, rectangles, text) with no way to give an element a class, an id or a data attribute,
//! and readers and the browser test find the threshold lines and the rollback marker by those.
//! The charts are simple (step and line charts on one time axis), so the code stays short and
//! needs no dependency.
//!
//! Stable hooks for tools and tests: `<section class="gate" data-gate="NAME">` per gate, each
//! with one `<svg class="chart gate-chart">`, its threshold lines `class="threshold"` (one, or
//! two for a range), its points `class="point pass|fail|inconclusive|error"`; the timeline
//! `<svg class="chart timeline-chart">` with bars `class="bar step|undo …"`; the weights
//! `<svg class="chart weights-chart">` with one `class="weight-line"` per target
//! (`data-target`); a line `class="rollback-marker"` in each chart of a run that rolled back; the
//! outcome `id="outcome"` with `data-outcome`.
//!
//! ```
//! # fn show(report: &deploy::Report) -> std::io::Result<()> {
//! let html = deploy::report_html::render(report);
//! assert!(html.starts_with("<!DOCTYPE html>"));
//! deploy::report_html::write(report, std::path::Path::new("report.html"))?;
//! # Ok(()) }
//! ```

// Numbers and durations for people, as everywhere else (three significant digits).
use deploy_core::units::{duration as secs, number as num};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use deploy_core::{Outcome, Report, Step, Weights};
use humantime_serde::re::humantime;

/// The report as one HTML page.
pub fn render(report: &Report) -> String {
    let page = Page::new(report);
    let mut out = String::with_capacity(64 * 1024);
    page.head(&mut out);
    page.summary(&mut out);
    page.timeline(&mut out);
    page.weights(&mut out);
    page.gates(&mut out);
    let _ = write!(
        out,
        "<footer>Report schema version {}; written by deploy {}.</footer>\n</body>\n</html>\n",
        deploy_core::report::REPORT_SCHEMA_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// Write [`render`]'s page to `path` (whole: a temporary file renamed into place).
pub fn write(report: &Report, path: &Path) -> std::io::Result<()> {
    deploy_core::fs::write_atomic(path, render(report).as_bytes(), None)
}

/// Escape text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

const PALETTE: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1160px;color:#1b1f24;padding:0 16px}\
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}\
h3{font-size:15px;margin:18px 0 6px}\
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
.outcome{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:600;color:#fff}\
.outcome.promoted{background:#1a7f37}.outcome.rolled_back{background:#bf8700}.outcome.failed{background:#cf222e}\
.reason{white-space:pre-wrap;background:#fff8c5;border:1px solid #d4a72c;padding:8px;border-radius:4px}\
.kind-pass{color:#1a7f37}.kind-fail{color:#cf222e;font-weight:600}.kind-inconclusive{color:#9a6700}.kind-error{color:#cf222e}\
.err{color:#cf222e}.muted{color:#57606a}\
svg.chart{display:block;background:#fff;border:1px solid #d0d7de;margin:6px 0}\
svg text{font:11px system-ui,sans-serif;fill:#57606a}\
.grid{stroke:#eaeef2}.axis{stroke:#8c959f}\
.threshold{stroke:#cf222e;stroke-width:1.5;stroke-dasharray:6 4}\
.rollback-marker{stroke:#bf8700;stroke-width:2}\
.series{fill:none;stroke:#1f77b4;stroke-width:1.5}\
.point.pass{fill:#1a7f37}.point.fail{fill:#cf222e}.point.inconclusive{fill:#bf8700}.point.error{fill:#6e7781}\
.bar.step{fill:#54aeff}.bar.pause{fill:#c8e1ff}.bar.analyze{fill:#8250df}.bar.failed{fill:#cf222e}.bar.undo{fill:#d4a72c}\
.weight-line{fill:none;stroke-width:2}\
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}\
footer{margin-top:32px;color:#57606a;font-size:12px}";

/// What the page is drawn from: the report and the derived series, on one time axis.
struct Page<'a> {
    r: &'a Report,
    /// Seconds from the run's start to the end of the last thing drawn.
    span: f64,
    /// Seconds from the start at which the rollback started.
    rollback_at: Option<f64>,
    /// When each verdict was measured, in seconds from the start.
    measured: Vec<Option<f64>>,
}

impl<'a> Page<'a> {
    fn new(r: &'a Report) -> Self {
        let rel = |t: SystemTime| {
            t.duration_since(r.started_at)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
        };
        let mut span = r.duration.as_secs_f64();
        for s in &r.steps {
            span = span.max(rel(s.started_at) + s.duration.as_secs_f64());
        }
        let rollback_at = r
            .rollback
            .as_ref()
            .filter(|rb| rb.started_at > SystemTime::UNIX_EPOCH)
            .map(|rb| rel(rb.started_at));
        let measured = r
            .verdict_times()
            .into_iter()
            .map(|t| t.map(|(_, at)| rel(at)))
            .collect();
        if let Some(rb) = &r.rollback {
            for u in &rb.steps {
                span = span.max(rel(u.started_at) + u.duration.as_secs_f64());
            }
        }
        Self {
            r,
            // A little room after the last thing drawn, for the marker's label.
            span: span.max(0.001) * 1.06,
            rollback_at,
            measured,
        }
    }

    fn rel(&self, t: SystemTime) -> f64 {
        t.duration_since(self.r.started_at)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
    }

    fn head(&self, out: &mut String) {
        let r = self.r;
        let title = format!(
            "{} to {}: {} (run {})",
            r.version,
            r.environment,
            outcome_words(r.outcome),
            r.run_id
        );
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            esc(&title),
            esc(&title)
        );
    }

    fn summary(&self, out: &mut String) {
        let r = self.r;
        let o = r.outcome.to_string();
        let _ = write!(
            out,
            "<section id=\"summary\">\n<p><span class=\"outcome {o}\" id=\"outcome\" data-outcome=\"{o}\">{}</span></p>\n",
            outcome_words(r.outcome)
        );
        if let Some(rb) = &r.rollback {
            let _ = write!(
                out,
                "<p><strong>Rolled back because:</strong></p>\n<div class=\"reason\" id=\"rollback-reason\">{}</div>\n",
                esc(&rb.reason)
            );
            if !rb.mismatches.is_empty() {
                out.push_str(
                    "<p class=\"err\"><strong>The environment is not back where it was:</strong></p>\n<ul class=\"mismatches\">\n",
                );
                for m in &rb.mismatches {
                    let _ = writeln!(out, "<li>{}</li>", esc(m));
                }
                out.push_str("</ul>\n");
            }
        }
        let _ = write!(
            out,
            "<table class=\"facts\">\n<tr><th>run</th><td>{}</td></tr>\n<tr><th>environment</th><td>{}</td></tr>\n\
             <tr><th>version</th><td>{}</td></tr>\n<tr><th>strategy</th><td>{}</td></tr>\n\
             <tr><th>started</th><td>{}</td></tr>\n<tr><th>took</th><td>{}</td></tr>\n",
            esc(&r.run_id),
            esc(&r.environment),
            esc(r.version.as_str()),
            esc(&r.strategy),
            stamp(r.started_at),
            secs(r.duration)
        );
        if let Some(s) = &r.final_state {
            for t in &s.targets {
                let v = t.current.as_ref().map_or("nothing", |v| v.as_str());
                let share = s
                    .weights
                    .as_ref()
                    .and_then(|w| percent(w).get(t.id.as_str()).copied())
                    .map_or(String::new(), |p| format!(", {} % of traffic", num(p)));
                let _ = writeln!(
                    out,
                    "<tr><th>at the end: {}</th><td>runs {}{share}</td></tr>",
                    esc(t.id.as_str()),
                    esc(v)
                );
            }
        }
        out.push_str("</table>\n");
        if !r.notes.is_empty() {
            out.push_str("<ul class=\"notes\">\n");
            for n in &r.notes {
                let _ = writeln!(out, "<li>{}</li>", esc(n));
            }
            out.push_str("</ul>\n");
        }
        out.push_str("</section>\n");
    }

    fn timeline(&self, out: &mut String) {
        let r = self.r;
        out.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
        // One row per step, then one per undo.
        struct Row {
            label: String,
            start: f64,
            len: f64,
            class: &'static str,
            title: String,
        }
        let mut rows: Vec<Row> = Vec::new();
        for s in &r.steps {
            let class = match (&s.error, &s.step) {
                (Some(_), _) => "step failed",
                (None, Step::Pause { .. }) => "step pause",
                (None, Step::Analyze { .. }) => "step analyze",
                (None, _) => "step",
            };
            rows.push(Row {
                label: format!("{}. {}", s.index + 1, s.step),
                start: self.rel(s.started_at),
                len: s.duration.as_secs_f64(),
                class,
                title: format!("{}: {}", s.step, secs(s.duration)),
            });
        }
        if let Some(rb) = &r.rollback {
            for u in &rb.steps {
                rows.push(Row {
                    label: format!("undo: {}", u.step),
                    start: self.rel(u.started_at),
                    len: u.duration.as_secs_f64(),
                    class: if u.error.is_some() {
                        "undo failed"
                    } else {
                        "undo"
                    },
                    title: format!("undo {}: {}", u.step, secs(u.duration)),
                });
            }
        }
        let row_h = 18.0;
        let chart = Chart {
            width: 1120.0,
            height: 40.0 + row_h * rows.len().max(1) as f64,
            left: 340.0,
            right: 16.0,
            top: 8.0,
            bottom: 28.0,
            span: self.span,
            y_min: 0.0,
            y_max: 1.0,
        };
        chart.open(out, "timeline-chart", "the run's steps over time");
        chart.x_axis(out);
        for (i, row) in rows.iter().enumerate() {
            let y = chart.top + row_h * i as f64;
            let x = chart.x(row.start);
            let w = (chart.x(row.start + row.len) - x).max(2.0);
            let label: String = row.label.chars().take(52).collect();
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
                 <rect class=\"bar {}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\"><title>{}</title></rect>",
                chart.left - 6.0,
                y + row_h * 0.7,
                esc(&label),
                row.class,
                y + 3.0,
                row_h - 6.0,
                esc(&row.title)
            );
        }
        self.rollback_marker(out, &chart);
        out.push_str("</svg>\n");

        out.push_str(
            "<table class=\"steps\">\n<tr><th>#</th><th>step</th><th>started</th><th>took</th><th>result</th></tr>\n",
        );
        for s in &r.steps {
            let result = match &s.error {
                None => "<span class=\"kind-pass\">ok</span>".to_owned(),
                Some(e) => format!(
                    "<span class=\"err\">{} ({}): {}</span>",
                    esc(&format!("{:?}", e.kind).to_lowercase()),
                    esc(&e.status.to_string()),
                    esc(&e.message)
                ),
            };
            let _ = writeln!(
                out,
                "<tr class=\"step-row\"><td class=\"num\">{}</td><td>{}</td><td class=\"num\" title=\"{}\">+{}</td><td class=\"num\">{}</td><td>{result}</td></tr>",
                s.index + 1,
                esc(&s.step.to_string()),
                stamp(s.started_at),
                secs(Duration::from_secs_f64(self.rel(s.started_at))),
                secs(s.duration)
            );
        }
        out.push_str("</table>\n");
        if let Some(rb) = &r.rollback {
            let _ = write!(
                out,
                "<h3>Rollback</h3>\n<p>Started at +{}: {}</p>\n<table class=\"undo\">\n<tr><th>undo step</th><th>started</th><th>took</th><th>result</th></tr>\n",
                secs(Duration::from_secs_f64(self.rollback_at.unwrap_or(0.0))),
                esc(&rb.reason)
            );
            for u in &rb.steps {
                let result = match &u.error {
                    None => "<span class=\"kind-pass\">ok</span>".to_owned(),
                    Some(e) => format!("<span class=\"err\">{}</span>", esc(&e.message)),
                };
                let _ = writeln!(
                    out,
                    "<tr class=\"undo-row\"><td>{}</td><td class=\"num\">+{}</td><td class=\"num\">{}</td><td>{result}</td></tr>",
                    esc(&u.step.to_string()),
                    secs(Duration::from_secs_f64(self.rel(u.started_at))),
                    secs(u.duration)
                );
            }
            out.push_str("</table>\n");
        }
        out.push_str("</section>\n");
    }

    fn weights(&self, out: &mut String) {
        let points = self.r.weights_over_time();
        out.push_str("<section id=\"weights\">\n<h2>Traffic</h2>\n");
        if points.is_empty() {
            out.push_str(
                "<p class=\"muted\">No traffic switch: no weights to show.</p>\n</section>\n",
            );
            return;
        }
        let targets: Vec<String> = {
            let mut seen: Vec<String> = Vec::new();
            for p in &points {
                for t in p.weights.0.keys() {
                    if !seen.iter().any(|s| s == t.as_str()) {
                        seen.push(t.as_str().to_owned());
                    }
                }
            }
            seen
        };
        let chart = Chart {
            width: 1120.0,
            height: 220.0,
            left: 56.0,
            right: 16.0,
            top: 10.0,
            bottom: 28.0,
            span: self.span,
            y_min: 0.0,
            y_max: 100.0,
        };
        chart.open(
            out,
            "weights-chart",
            "each target's share of traffic over time, in percent",
        );
        chart.x_axis(out);
        chart.y_axis(out, &[0.0, 25.0, 50.0, 75.0, 100.0], &|v| {
            format!("{}%", num(v))
        });
        let shares: Vec<(f64, BTreeMap<String, f64>)> = points
            .iter()
            .map(|p| (self.rel(p.at), percent(&p.weights)))
            .collect();
        for (i, t) in targets.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut pts = String::new();
            let mut last: Option<f64> = None;
            for (at, share) in &shares {
                let v = share.get(t).copied().unwrap_or(0.0);
                if let Some(prev) = last {
                    let _ = write!(pts, "{:.1},{:.1} ", chart.x(*at), chart.y(prev));
                }
                let _ = write!(pts, "{:.1},{:.1} ", chart.x(*at), chart.y(v));
                last = Some(v);
            }
            if let Some(v) = last {
                let _ = write!(pts, "{:.1},{:.1}", chart.x(self.span), chart.y(v));
            }
            let _ = writeln!(
                out,
                "<polyline class=\"weight-line\" data-target=\"{}\" stroke=\"{color}\" points=\"{}\"><title>{}</title></polyline>",
                esc(t),
                pts.trim_end(),
                esc(t)
            );
        }
        self.rollback_marker(out, &chart);
        out.push_str("</svg>\n<p class=\"legend\">");
        for (i, t) in targets.iter().enumerate() {
            let _ = write!(
                out,
                "<span><i class=\"swatch\" style=\"background:{}\"></i>{}</span>",
                PALETTE[i % PALETTE.len()],
                esc(t)
            );
        }
        out.push_str("</p>\n<table class=\"weights\">\n<tr><th>at</th><th>weights</th><th>set by</th></tr>\n");
        for p in &points {
            let shares = percent(&p.weights)
                .iter()
                .map(|(t, v)| format!("{} {} %", esc(t), num(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            let by = match (p.source, p.step_index) {
                (deploy_core::report::WeightSource::Step, Some(i)) => format!("step {}", i + 1),
                (deploy_core::report::WeightSource::Undo, _) => "rollback".to_owned(),
                (deploy_core::report::WeightSource::Initial, _) => "before the run".to_owned(),
                (deploy_core::report::WeightSource::Final, _) => "read at the end".to_owned(),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "<tr><td class=\"num\">+{}</td><td>{shares}</td><td>{by}</td></tr>",
                secs(Duration::from_secs_f64(self.rel(p.at)))
            );
        }
        out.push_str("</table>\n</section>\n");
    }

    fn gates(&self, out: &mut String) {
        let r = self.r;
        out.push_str("<section id=\"gates\">\n<h2>Gates</h2>\n");
        if r.verdicts.is_empty() {
            out.push_str("<p class=\"muted\">No gate measured during this run.</p>\n");
        }
        let mut names: Vec<&str> = Vec::new();
        for v in &r.verdicts {
            if !names.contains(&v.gate.as_str()) {
                names.push(&v.gate);
            }
        }
        for name in names {
            let idx: Vec<usize> = (0..r.verdicts.len())
                .filter(|&i| r.verdicts[i].gate == name)
                .collect();
            let condition = &r.verdicts[idx[0]].verdict.condition;
            // Values and thresholds shown in the gate's unit (4.9 %, 4.95 ms); drawn as measured.
            let unit = r.verdicts[idx[0]].verdict.unit;
            let lines = thresholds(condition, unit);
            let judge = condition.contains("Mann-Whitney");
            let _ = write!(
                out,
                "<section class=\"gate\" data-gate=\"{}\">\n<h3>{}</h3>\n<p>Condition: <code>{}</code>; source: <code>{}</code></p>\n",
                esc(name),
                esc(name),
                esc(&deploy_core::units::condition(condition, unit)),
                esc(&r.verdicts[idx[0]].verdict.source)
            );
            let values: Vec<f64> = idx
                .iter()
                .filter_map(|&i| r.verdicts[i].verdict.value)
                .filter(|v| v.is_finite())
                .chain(lines.iter().map(|(v, _)| *v))
                .collect();
            let lo = values.iter().copied().fold(0.0_f64, f64::min);
            let hi = values.iter().copied().fold(f64::MIN, f64::max);
            let (y_min, y_max) = nice_range(lo, if hi > lo { hi } else { lo + 1.0 });
            let chart = Chart {
                width: 1120.0,
                height: 220.0,
                left: 70.0,
                right: 16.0,
                top: 10.0,
                bottom: 28.0,
                span: self.span,
                y_min,
                y_max,
            };
            let what = if judge {
                "effect size (canary mean / baseline mean) over time"
            } else {
                "measured value over time"
            };
            chart.open(out, "gate-chart", what);
            chart.x_axis(out);
            chart.y_axis(out, &ticks(y_min, y_max), &|v| {
                deploy_core::units::quantity(v, unit)
            });
            for (v, label) in &lines {
                let y = chart.y(*v);
                let _ = writeln!(
                    out,
                    "<line class=\"threshold\" data-value=\"{}\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"><title>{}</title></line>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                    num(*v),
                    chart.left,
                    chart.width - chart.right,
                    esc(label),
                    chart.width - chart.right - 4.0,
                    y - 4.0,
                    esc(label)
                );
            }
            let mut line = String::new();
            for &i in &idx {
                let (Some(x), Some(v)) = (self.measured[i], r.verdicts[i].verdict.value) else {
                    continue;
                };
                if v.is_finite() {
                    let _ = write!(line, "{:.1},{:.1} ", chart.x(x), chart.y(v));
                }
            }
            if !line.is_empty() {
                let _ = writeln!(
                    out,
                    "<polyline class=\"series\" points=\"{}\"></polyline>",
                    line.trim_end()
                );
            }
            for &i in &idx {
                let Some(x) = self.measured[i] else { continue };
                let v = &r.verdicts[i].verdict;
                let kind = v.kind.to_string();
                let tip = format!(
                    "+{}: {} {}: {}",
                    secs(Duration::from_secs_f64(x)),
                    kind,
                    v.value.map_or("no value".to_owned(), |x| {
                        deploy_core::units::quantity(x, v.unit)
                    }),
                    v.reason
                );
                match v.value.filter(|v| v.is_finite()) {
                    Some(val) => {
                        let _ = writeln!(
                            out,
                            "<circle class=\"point {kind}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"><title>{}</title></circle>",
                            chart.x(x),
                            chart.y(val),
                            esc(&tip)
                        );
                    }
                    None => {
                        // No value: a mark on the time axis.
                        let (cx, cy) = (chart.x(x), chart.height - chart.bottom);
                        let _ = writeln!(
                            out,
                            "<path class=\"point {kind} no-value\" d=\"M{:.1},{:.1} l4,-8 l4,8 z\"><title>{}</title></path>",
                            cx - 4.0,
                            cy,
                            esc(&tip)
                        );
                    }
                }
            }
            self.rollback_marker(out, &chart);
            out.push_str("</svg>\n");
            if lines.is_empty() {
                out.push_str(
                    "<p class=\"muted\">This condition has no single threshold to draw.</p>\n",
                );
            }
            // Verdicts.
            let _ = write!(
                out,
                "<table class=\"verdicts\">\n<tr><th>measured</th><th>analysis</th><th>verdict</th><th>value</th><th>reason</th></tr>\n"
            );
            for &i in &idx {
                let rec = &r.verdicts[i];
                let v = &rec.verdict;
                let when = self.measured[i].map_or("?".to_owned(), |x| {
                    format!("+{}", secs(Duration::from_secs_f64(x)))
                });
                let _ = writeln!(
                    out,
                    "<tr class=\"verdict\"><td class=\"num\">{when}</td><td>{}</td><td class=\"kind-{}\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    esc(&rec.analysis),
                    v.kind,
                    v.kind,
                    v.value.map_or("–".to_owned(), num),
                    esc(&v.reason)
                );
            }
            out.push_str("</table>\n");
            if judge {
                self.mann_whitney(out, &idx);
            }
            out.push_str("</section>\n");
        }
        out.push_str("</section>\n");
    }

    /// The Mann-Whitney statistics of a judge's verdicts, read from their reasons.
    fn mann_whitney(&self, out: &mut String, idx: &[usize]) {
        let rows: Vec<(usize, MannWhitney)> = idx
            .iter()
            .filter_map(|&i| MannWhitney::parse(&self.r.verdicts[i].verdict.reason).map(|m| (i, m)))
            .collect();
        if rows.is_empty() {
            return;
        }
        out.push_str(
            "<table class=\"mann-whitney\">\n<caption>Mann-Whitney U test, canary against baseline</caption>\n\
             <tr><th>measured</th><th>verdict</th><th>U</th><th>z</th><th>p</th><th>effect size</th>\
             <th>canary n</th><th>canary mean</th><th>baseline n</th><th>baseline mean</th></tr>\n",
        );
        for (i, m) in rows {
            let v = &self.r.verdicts[i].verdict;
            let when = self.measured[i].map_or("?".to_owned(), |x| {
                format!("+{}", secs(Duration::from_secs_f64(x)))
            });
            let _ = write!(
                out,
                "<tr><td class=\"num\">{when}</td><td class=\"kind-{}\">{}</td>",
                v.kind, v.kind
            );
            for cell in [
                &m.u,
                &m.z,
                &m.p,
                &m.effect,
                &m.canary_n,
                &m.canary_mean,
                &m.baseline_n,
                &m.baseline_mean,
            ] {
                let _ = write!(out, "<td class=\"num\">{}</td>", esc(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }

    fn rollback_marker(&self, out: &mut String, chart: &Chart) {
        if let Some(at) = self.rollback_at {
            let x = chart.x(at);
            let _ = writeln!(
                out,
                "<line class=\"rollback-marker\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"><title>rollback started at +{}</title></line>\
                 <text x=\"{:.1}\" y=\"{:.1}\">rollback</text>",
                chart.top,
                chart.height - chart.bottom,
                secs(Duration::from_secs_f64(at)),
                x + 3.0,
                chart.top + 10.0
            );
        }
    }
}

/// Statistics a Mann-Whitney judge writes in its reason (`U = 61, z = 0.412, p = 3.4e-1 …,
/// effect size (mean ratio) = 1.02; canary n = 12 mean = 0.05, baseline n = 12 mean = 0.05`).
struct MannWhitney {
    u: String,
    z: String,
    p: String,
    effect: String,
    canary_n: String,
    canary_mean: String,
    baseline_n: String,
    baseline_mean: String,
}

impl MannWhitney {
    fn parse(reason: &str) -> Option<Self> {
        fn after<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
            let at = s.find(key)? + key.len();
            let rest = &s[at..];
            let end = rest.find([',', ';', ' ']).unwrap_or(rest.len());
            Some((&rest[..end], &rest[end..]))
        }
        let (u, _) = after(reason, "U = ")?;
        let (z, _) = after(reason, "z = ")?;
        let (p, _) = after(reason, "p = ")?;
        let (effect, _) = after(reason, "effect size (mean ratio) = ")?;
        let (canary_n, rest) = after(reason, "canary n = ")?;
        let (canary_mean, _) = after(rest, "mean = ")?;
        let (baseline_n, rest) = after(reason, "baseline n = ")?;
        let (baseline_mean, _) = after(rest, "mean = ")?;
        Some(Self {
            u: u.into(),
            z: z.into(),
            p: p.into(),
            effect: effect.into(),
            canary_n: canary_n.into(),
            canary_mean: canary_mean.into(),
            baseline_n: baseline_n.into(),
            baseline_mean: baseline_mean.into(),
        })
    }
}

/// The thresholds a condition names, with a label each: `< x`, `<= x`, `> x`, `>= x` give one,
/// `lo..hi` two; a Mann-Whitney judge's gives its minimum effect (1 ± min effect) on the effect
/// size it reports as its value.
fn thresholds(condition: &str, unit: Option<deploy_core::units::Unit>) -> Vec<(f64, String)> {
    let c = condition.trim();
    let limits = deploy_core::units::limits(c);
    if !limits.is_empty() {
        return limits
            .into_iter()
            .map(|(op, v)| (v, format!("{op} {}", deploy_core::units::quantity(v, unit))))
            .collect();
    }
    if c.contains("Mann-Whitney")
        && let Some(at) = c.find("min effect ")
    {
        let rest = &c[at + "min effect ".len()..];
        let pct: String = rest
            .chars()
            .take_while(|ch| ch.is_ascii_digit() || *ch == '.')
            .collect();
        if let Ok(pct) = pct.parse::<f64>() {
            let e = pct / 100.0;
            let up = (1.0 + e, format!("min effect +{}%", num(pct)));
            let down = (1.0 - e, format!("min effect −{}%", num(pct)));
            return if c.contains("higher") {
                vec![up]
            } else if c.contains("lower") {
                vec![down]
            } else {
                vec![down, up]
            };
        }
    }
    Vec::new()
}

/// Each target's share of the total weight, in percent.
fn percent(w: &Weights) -> BTreeMap<String, f64> {
    w.iter()
        .map(|(t, _)| (t.as_str().to_owned(), w.percent(t)))
        .collect()
}

fn outcome_words(o: Outcome) -> &'static str {
    match o {
        Outcome::Promoted => "promoted",
        Outcome::PromotedWithFailures => "promoted with failures (some targets given up on)",
        Outcome::RolledBack => "rolled back",
        Outcome::Failed => "FAILED (the rollback failed)",
    }
}

/// A step of 1, 2 or 5 × 10ⁿ giving about five ticks over `lo..hi`.
fn tick_step(lo: f64, hi: f64) -> f64 {
    let raw = ((hi - lo) / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// `lo..hi` widened to whole ticks, with some room above.
fn nice_range(lo: f64, hi: f64) -> (f64, f64) {
    let hi = hi + (hi - lo) * 0.1;
    let step = tick_step(lo, hi);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let step = tick_step(lo, hi);
    let mut out = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 && out.len() < 20 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

/// A plot area on the run's time axis (seconds from its start).
struct Chart {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    span: f64,
    y_min: f64,
    y_max: f64,
}

impl Chart {
    fn x(&self, secs: f64) -> f64 {
        self.left + (self.width - self.left - self.right) * (secs / self.span).clamp(0.0, 1.0)
    }

    fn y(&self, v: f64) -> f64 {
        let f = ((v - self.y_min) / (self.y_max - self.y_min)).clamp(0.0, 1.0);
        self.height - self.bottom - (self.height - self.top - self.bottom) * f
    }

    fn open(&self, out: &mut String, class: &str, label: &str) {
        let _ = writeln!(
            out,
            "<svg class=\"chart {class}\" role=\"img\" aria-label=\"{}\" \
             width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
            esc(label),
            w = self.width,
            h = self.height
        );
    }

    fn x_axis(&self, out: &mut String) {
        let base = self.height - self.bottom;
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\"></line>",
            self.left,
            self.width - self.right
        );
        for t in ticks(0.0, self.span) {
            let x = self.x(t);
            let _ = writeln!(
                out,
                "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{base}\"></line>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                self.top,
                base + 16.0,
                secs(Duration::from_secs_f64(t))
            );
        }
    }

    fn y_axis(&self, out: &mut String, ticks: &[f64], label: &dyn Fn(f64) -> String) {
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{l}\" x2=\"{l}\" y1=\"{}\" y2=\"{}\"></line>",
            self.top,
            self.height - self.bottom,
            l = self.left
        );
        for &v in ticks {
            let y = self.y(v);
            let _ = writeln!(
                out,
                "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"></line>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                self.left,
                self.width - self.right,
                self.left - 6.0,
                y + 4.0,
                esc(&label(v))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rolled-back report whose every text is hostile.
    fn hostile() -> Report {
        let evil = "<script>alert(\"x\")</script> & 'quoted' \"name\"";
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "run_id": "r1", "environment": evil, "version": "2.0.0",
            "strategy": "canary", "outcome": "rolled_back",
            "started_at": "2026-11-29T06:00:00Z", "duration_ms": 3000.0,
            "steps": [
                {"index": 0, "step": {"op": "set_weights", "weights": {"blue": 9, "green": 1}},
                 "started_at": "2026-11-29T06:00:00Z", "duration_ms": 5.0, "error": null},
                {"index": 1, "step": {"op": "analyze", "name": evil, "duration_ms": 2000.0,
                                      "canary": ["green"], "baseline": ["blue"]},
                 "started_at": "2026-11-29T06:00:00.005Z", "duration_ms": 2000.0,
                 "error": {"kind": "rejected", "status": "permanent", "operation": "analyse",
                           "context": {"object": evil}, "message": evil}}
            ],
            "verdicts": [
                {"gate": evil, "analysis": evil, "verdict": {"kind": "pass", "value": 0.002,
                 "condition": "< 0.01", "source": evil, "reason": evil, "no_data": false}},
                {"gate": evil, "analysis": evil, "verdict": {"kind": "fail", "value": 0.05,
                 "condition": "< 0.01", "source": evil, "reason": evil, "no_data": false}}
            ],
            "rollback": {"reason": evil, "started_at": "2026-11-29T06:00:02.1Z",
                         "steps": [{"step": {"op": "set_weights", "weights": {"blue": 1, "green": 0}},
                                    "started_at": "2026-11-29T06:00:02.1Z", "duration_ms": 3.0,
                                    "error": null}],
                         "mismatches": [evil]},
            "notes": [evil],
            "initial_state": null, "final_state": null
        }))
        .unwrap()
    }

    #[test]
    fn every_text_from_the_report_is_escaped() {
        let html = render(&hostile());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("'quoted'"));
        assert!(
            html.contains(
                "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quoted&#39;"
            )
        );
        assert!(html.contains(
            "data-gate=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quoted&#39; &quot;name&quot;\""
        ));
    }

    #[test]
    fn a_gate_gets_a_chart_with_its_threshold_and_the_rollback_marker() {
        let html = render(&hostile());
        assert_eq!(html.matches("<section class=\"gate\"").count(), 1);
        assert_eq!(html.matches("class=\"threshold\"").count(), 1);
        assert!(html.contains("data-value=\"0.01\""));
        // Timeline, weights and the gate's chart each mark the rollback.
        assert_eq!(html.matches("class=\"rollback-marker\"").count(), 3);
        assert_eq!(html.matches("class=\"point pass\"").count(), 1);
        assert_eq!(html.matches("class=\"point fail\"").count(), 1);
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn conditions_give_their_thresholds() {
        assert_eq!(thresholds("< 0.01", None)[0].0, 0.01);
        assert_eq!(thresholds(">= 5", None)[0].0, 5.0);
        assert_eq!(thresholds("0.1..0.9", None).len(), 2);
        let judge = "canary not significantly higher than baseline (Mann-Whitney U at confidence 0.98, min effect 10%)";
        assert_eq!(
            thresholds(judge, None),
            vec![(1.1, "min effect +10%".to_owned())]
        );
        assert!(thresholds("every check passes on every new target", None).is_empty());
    }

    #[test]
    fn the_judges_statistics_are_read_from_its_reason() {
        let m = MannWhitney::parse(
            "not significant: U = 61, z = 0.412, p = 3.400e-1 (alpha 0.020), effect size (mean ratio) = 1.015; \
             canary n = 12 mean = 0.051000, baseline n = 11 mean = 0.050000",
        )
        .unwrap();
        assert_eq!(
            [
                &m.u,
                &m.z,
                &m.p,
                &m.effect,
                &m.canary_n,
                &m.canary_mean,
                &m.baseline_n,
                &m.baseline_mean
            ],
            [
                "61", "0.412", "3.400e-1", "1.015", "12", "0.051000", "11", "0.050000"
            ]
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(0.0049499999999999995), "0.00495");
        assert_eq!(num(0.19672131147540983), "0.197");
        assert_eq!(num(100.0), "100");
        assert_eq!(num(12.5), "12.5");
    }
}
