//! Evaluate a metric gate once, or every N seconds, against a Prometheus server or by scraping
//! `/metrics` pages directly, and print the verdicts.
//!
//! ```text
//! # the runbook's error-rate rule (< 1 %) over the last 5 minutes, for the target labelled green
//! cargo run --example gate -- --prometheus http://127.0.0.1:9090 --target green
//! # p99 <= 2 s, by scraping two instances every 10 s, 6 times
//! cargo run --example gate -- --scrape http://10.0.0.7:8080/metrics \
//!     --scrape http://10.0.0.8:8080/metrics --preset p99 --window 10s --count 6
//! # any PromQL query and condition
//! cargo run --example gate -- --prometheus http://127.0.0.1:9090 \
//!     --query 'sum(up{job="app"})' --condition '>= 2'
//! # a demo: a test app with 5 % errors and a real Prometheus on loopback
//! cargo run --example gate -- --demo
//! ```
//!
//! Exit status: 0 if the last verdict passed, 1 failed, 2 inconclusive, 3 error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use deploy_core::{DynMetricGate, GateContext, TargetId, VerdictKind, Version};
use deploy_prometheus::{Auth, HttpMetrics, PromQlGate, PrometheusClient, ScrapeGate};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// Share of 5xx responses (`--max` default 0.01).
    ErrorRate,
    /// 99th percentile latency in seconds (`--max` default 2).
    P99,
}

#[derive(Debug, Parser)]
#[command(about = "Evaluate a metric gate and print its verdicts")]
struct Args {
    /// Prometheus base URL (PromQL gate).
    #[arg(long, conflicts_with = "scrape")]
    prometheus: Option<String>,
    /// A /metrics URL to scrape (repeatable; scrape gate, no Prometheus needed).
    #[arg(long)]
    scrape: Vec<String>,
    /// Start a test app with 5 % errors and a real Prometheus on loopback, and judge them
    /// (needs `--features testing` and the prometheus binary).
    #[arg(long, conflicts_with_all = ["prometheus", "scrape"])]
    demo: bool,
    /// Which rule to evaluate.
    #[arg(long, value_enum, default_value = "error-rate")]
    preset: Preset,
    /// The threshold of the preset (error share, or seconds for p99).
    #[arg(long)]
    max: Option<f64>,
    /// A custom PromQL query template instead of the preset (with --prometheus).
    #[arg(long, requires = "condition")]
    query: Option<String>,
    /// The condition for the custom query (`< 0.01`, `>= 2`, `0.5..2`).
    #[arg(long)]
    condition: Option<String>,
    /// Rate window (`{{window}}`) or time between the two scrapes.
    #[arg(long, default_value = "5m")]
    window: humantime::Duration,
    /// Canary target id for `{{target}}` (repeatable).
    #[arg(long)]
    target: Vec<String>,
    /// The label that names the target in the metrics; empty for none.
    #[arg(long, default_value = "target")]
    target_label: String,
    /// Release version for `{{version}}`.
    #[arg(long, default_value = "0")]
    version: String,
    /// Environment variable holding a bearer token for Prometheus (never on the command line).
    #[arg(long)]
    bearer_token_env: Option<String>,
    /// Evaluate every this many seconds.
    #[arg(long)]
    every: Option<u64>,
    /// How many evaluations (default 1, or unlimited with --every).
    #[arg(long)]
    count: Option<u64>,
    /// Print each verdict as JSON.
    #[arg(long)]
    json: bool,
}

fn metrics(args: &Args) -> HttpMetrics {
    if args.target_label.is_empty() || args.target.is_empty() {
        HttpMetrics::default().without_target_label()
    } else {
        HttpMetrics::default().target_label(&args.target_label)
    }
}

fn build(args: &Args, prometheus: Option<&str>) -> deploy_core::Result<DynMetricGate> {
    let window: Duration = args.window.into();
    let m = metrics(args);
    if let Some(url) = prometheus {
        let mut client = PrometheusClient::new(url)?;
        if let Some(var) = &args.bearer_token_env {
            let token = std::env::var(var).map_err(|_| {
                deploy_core::Error::new(
                    deploy_core::ErrorKind::InvalidInput,
                    "read bearer token from",
                    format!("${var}"),
                    "the variable is not set",
                )
            })?;
            client = client.with_auth(Auth::bearer(token));
        }
        let builder = match (&args.query, args.preset) {
            (Some(q), _) => PromQlGate::builder("custom", client)
                .query(q)
                .condition(args.condition.as_deref().unwrap_or("")),
            (None, Preset::ErrorRate) => {
                PromQlGate::error_rate_below(client, args.max.unwrap_or(0.01), &m)
            }
            (None, Preset::P99) => PromQlGate::p99_latency_below(
                client,
                Duration::from_secs_f64(args.max.unwrap_or(2.0)),
                &m,
            ),
        };
        return Ok(Arc::new(builder.window(window).build()?));
    }
    let mut builder = match args.preset {
        Preset::ErrorRate => ScrapeGate::error_rate_below(args.max.unwrap_or(0.01), &m)?,
        Preset::P99 => {
            ScrapeGate::p99_latency_below(Duration::from_secs_f64(args.max.unwrap_or(2.0)), &m)
        }
    };
    if let Some(c) = &args.condition {
        builder = builder.condition(c);
    }
    for u in &args.scrape {
        builder = builder.url(u);
    }
    Ok(Arc::new(builder.window(window).build()?))
}

#[cfg(feature = "testing")]
async fn demo(args: &mut Args) -> deploy_core::Result<Box<dyn std::any::Any>> {
    use deploy_prometheus::testing::{PrometheusServer, ScrapeTarget, TestApp};
    let app = TestApp::start().await?;
    app.set_error_rate(0.05);
    let prom = PrometheusServer::start(&[ScrapeTarget::new("green", app.addr())]).await?;
    let load = app.load(50, Duration::from_secs(120));
    println!(
        "demo: test app {} with 5 % errors at 50 requests/s, Prometheus {}; waiting 8 s for data",
        app.endpoint(),
        prom.url()
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    args.prometheus = Some(prom.url());
    args.target = vec!["green".into()];
    args.window = Duration::from_secs(5).into();
    Ok(Box::new((app, prom, load)))
}

#[cfg(not(feature = "testing"))]
async fn demo(_: &mut Args) -> deploy_core::Result<Box<dyn std::any::Any>> {
    Err(deploy_core::Error::new(
        deploy_core::ErrorKind::Unsupported,
        "run",
        "the demo",
        "build the example with `--features testing`",
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    let _demo = if args.demo {
        match demo(&mut args).await {
            Ok(keep) => Some(keep),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(3);
            }
        }
    } else {
        None
    };
    if args.prometheus.is_none() && args.scrape.is_empty() {
        eprintln!("error: give --prometheus URL, --scrape URL or --demo");
        return ExitCode::from(3);
    }
    let gate = match build(&args, args.prometheus.as_deref()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let ctx = GateContext::new(
        Version::new(&args.version).unwrap_or_else(|_| Version::new("0").expect("valid")),
        args.target
            .iter()
            .filter_map(|t| TargetId::new(t).ok())
            .collect(),
        Vec::new(),
    );
    let count = args
        .count
        .unwrap_or(if args.every.is_some() { u64::MAX } else { 1 });
    let mut last = VerdictKind::Error;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(args.every.unwrap_or(0))).await;
        }
        let verdict = match gate.evaluate(&ctx).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                last = VerdictKind::Error;
                continue;
            }
        };
        last = verdict.kind;
        if args.json {
            println!("{}", serde_json::to_string(&verdict).unwrap_or_default());
        } else {
            let value = verdict
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.6}"));
            println!(
                "{:<12} {:<13} value {value:<10} condition {:<8} {}\n    source: {}",
                gate.name(),
                verdict.kind.to_string(),
                verdict.condition,
                verdict.reason,
                verdict.source
            );
        }
    }
    ExitCode::from(match last {
        VerdictKind::Pass => 0,
        VerdictKind::Fail => 1,
        VerdictKind::Inconclusive => 2,
        VerdictKind::Error => 3,
    })
}
