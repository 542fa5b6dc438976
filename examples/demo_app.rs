//! The demo's application on its own: a small HTTP service to deploy.
//!
//! - `GET /health` → `{"status":"ok","version":"…"}`
//! - `GET /metrics` → Prometheus text: `http_requests_total{status}` and the
//!   `http_request_duration_seconds` histogram (requests to `/health` and `/metrics` excluded)
//! - `GET /` and anything else → `hello from <version>`; every ⌈1/error-rate⌉-th such request
//!   answers 500 (deterministic, so an error rate of 0.05 is exactly 5 %), each delayed by the
//!   added latency.
//!
//! Behaviour comes from flags, or with `--release-dir DIR` from `DIR/app.conf` (lines
//! `version=…`, `error_rate=…`, `latency_ms=…`), re-read whenever the `DIR` link points at a new
//! release — so a release-directory deploy (`current` swapped atomically) changes what it serves
//! without a restart. The same code runs the slots of `examples/demo.rs`.
//!
//! ```text
//! cargo run --example demo_app -- --port 8080 --version 1.0.0 --error-rate 0.05 --latency-ms 20
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[path = "demo/app.rs"]
mod app;

#[derive(Parser, Debug, Clone)]
#[command(about = "A small HTTP service with /health and /metrics, to deploy in the demo")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The version it reports.
    #[arg(long, default_value = "0.0.0")]
    version: String,
    /// Share of requests answered with 500 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Read version, error rate and latency from DIR/app.conf, following the DIR link.
    #[arg(long)]
    release_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err(format!("--error-rate {} is not between 0 and 1", args.error_rate).into());
    }
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    let source = match args.release_dir {
        Some(dir) => app::Source::ReleaseDir(dir),
        None => app::Source::Fixed(app::Behaviour {
            version: args.version,
            error_rate: args.error_rate,
            latency: Duration::from_millis(args.latency_ms),
            error_label: None,
            histogram_wrapping: false,
        }),
    };
    let version = app::behaviour_of(&source).version;
    println!("demo_app listening on http://{addr} (version {version})");
    app::serve_on(listener, source).await?;
    Ok(())
}
