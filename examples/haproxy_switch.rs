//! Move traffic in a running HAProxy through its Runtime API, without a reload: the
//! `haproxy-switch.sh green` script of a blue-green runbook, as a tool. Prints the backend's
//! servers afterwards.
//!
//! ```text
//! haproxy_switch --socket /run/haproxy/admin.sock --backend app --to green
//! haproxy_switch --socket /run/haproxy/admin.sock --backend app --weights blue=95,green=5
//! haproxy_switch --socket /run/haproxy/admin.sock --backend app --drain blue
//! haproxy_switch --socket ipv4@127.0.0.1:9999 --backend app --status
//! ```
//!
//! With `--state-file PATH` (the `server-state-file` of the config, loaded back with
//! `load-server-state-from-file global`), every change is also written there so that a reload
//! keeps it.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use deploy_core::{TargetId, TrafficSwitch, Weights};
use deploy_haproxy::{HaproxySwitch, Socket, StatRow};

#[derive(Debug, Parser)]
#[command(about = "Switch, weigh or drain HAProxy servers through the Runtime API (no reload)")]
struct Args {
    /// The Runtime API socket: a path, unix@PATH, or ipv4@IP:PORT (level admin).
    #[arg(long)]
    socket: Socket,
    /// The backend whose servers are the slots.
    #[arg(long)]
    backend: String,
    /// Blue-green: send all traffic to this server (weight 100), none to the others (0).
    #[arg(long, conflicts_with_all = ["weights", "drain"])]
    to: Option<String>,
    /// Canary: set these weights, e.g. `blue=95,green=5` (0 to 256 each).
    #[arg(long, conflicts_with = "drain")]
    weights: Option<String>,
    /// Drain this server and wait until its sessions reach 0 (then `maint` past the timeout).
    #[arg(long)]
    drain: Option<String>,
    /// How long to wait for a drain, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Past the drain timeout, close the sessions left (maintenance + shutdown sessions).
    #[arg(long)]
    cut: bool,
    /// Only print the servers.
    #[arg(long)]
    status: bool,
    /// Write `show servers state` here after each change, so that a reload keeps it.
    #[arg(long)]
    state_file: Option<std::path::PathBuf>,
}

fn parse_weights(text: &str) -> Result<Weights, String> {
    let mut w = Weights::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not SERVER=WEIGHT"))?;
        let id = TargetId::new(name.trim()).map_err(|e| e.to_string())?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight {weight:?} of {name} is not a whole number"))?;
        w.set(id, weight);
    }
    if w.0.is_empty() {
        return Err("no weights given".to_owned());
    }
    Ok(w)
}

fn print_table(rows: &[StatRow]) {
    println!(
        "{:<16} {:<12} {:>7} {:>9} {:>6} {:>8} {:<8} addr",
        "server", "status", "weight", "sessions", "queue", "total", "check"
    );
    for r in rows {
        println!(
            "{:<16} {:<12} {:>7} {:>9} {:>6} {:>8} {:<8} {}",
            r.name,
            r.status,
            r.uweight.map_or("-".to_owned(), |w| w.to_string()),
            r.scur,
            r.qcur,
            r.stot,
            r.check_status,
            r.addr
        );
    }
}

async fn run(args: Args) -> deploy_core::Result<()> {
    let mut builder = HaproxySwitch::builder(args.backend.clone()).socket(args.socket.clone());
    if let Some(path) = &args.state_file {
        builder = builder.state_file(path);
    }
    let switch = builder.build()?;

    if let Some(to) = &args.to {
        let to = TargetId::new(to.as_str())?;
        let mut w = Weights::new();
        for (id, _) in switch.weights().await?.iter() {
            w.set(id.clone(), if *id == to { 100 } else { 0 });
        }
        if w.get(&to).is_none() {
            // Let the switch report the unknown server with its usual error.
            w.set(to.clone(), 100);
        }
        switch.set_weights(&w).await?;
        println!("switched backend {} to {to}: {w}", args.backend);
    } else if let Some(text) = &args.weights {
        let w = parse_weights(text).map_err(|cause| {
            deploy_core::Error::new(
                deploy_core::ErrorKind::InvalidInput,
                "parse",
                format!("--weights {text:?}"),
                cause,
            )
        })?;
        switch.set_weights(&w).await?;
        println!("set weights of backend {}: {w}", args.backend);
    } else if let Some(server) = &args.drain {
        let id = TargetId::new(server.as_str())?;
        let report = switch
            .drain_and_wait(&id, Duration::from_secs(args.drain_timeout_secs))
            .await?;
        println!(
            "drained {id} in {:?}: {} session(s) left",
            report.took, report.sessions_left
        );
        if report.sessions_left > 0 && args.cut {
            switch.cut_sessions(&id).await?;
            println!("cut the sessions left on {id}: it is in maintenance until given a weight");
        }
    } else if !args.status {
        println!("nothing to do: give --to, --weights, --drain or --status");
    }
    let rows = switch.status().await?;
    print_table(&rows);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
