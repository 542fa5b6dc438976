//! The runner against a plain `psql -1 -f` loop over the same generated history (the
//! `testing::history` generator: own-transaction files, `CONCURRENTLY` without a marker,
//! repeatables, down files), side by side in one run on one server, in alternating order.
//!
//! ```text
//! BENCH_COUNT=300 BENCH_RUNS=5 cargo bench -p deploy-postgres --all-features --bench migrate_history
//! ```
//!
//! Per layout: the raw loop with the real `psql` binary of the server's major (what the loop
//! of a careful operator runs), the raw loop with the `psql` on `PATH` (on Debian a Perl
//! wrapper), the runner with its default tool lookup (no `bin_dir`), and a `migrate` with
//! nothing pending. Prints a Markdown table of medians and ratios.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_core::MigrationRunner;
use deploy_postgres::testing::PgServer;
use deploy_postgres::testing::history::{Body, History};
use deploy_postgres::{Layout, PgMigrationRunner};

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The plain loop: each up file with `psql -X -q -v ON_ERROR_STOP=1 [-1] -f FILE`, in order,
/// then the repeatable files.
fn raw_loop(server: &PgServer, psql: &Path, db: &str, dir: &Path, history: &History) {
    let files = history
        .migrations()
        .iter()
        .map(|m| (m.up.as_str(), m.body == Body::Plain))
        .chain(history.repeatables().iter().map(|r| (r.as_str(), true)));
    for (file, single) in files {
        let mut c = Command::new(psql);
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", server.port().to_string())
            .env("PGUSER", "postgres")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db]);
        if single {
            c.arg("-1");
        }
        let out = c
            .arg("-f")
            .arg(dir.join(file))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn fresh_db(server: &PgServer) -> String {
    server.create_database().await.unwrap().dbname
}

#[tokio::main]
async fn main() {
    let count = env_num("BENCH_COUNT", 300);
    let runs = env_num("BENCH_RUNS", 5).max(1);
    let server = PgServer::start().await.expect("start PostgreSQL");
    let real_psql = server.bin_dir().join("psql");
    let path_psql = Path::new("psql");
    let layouts = [Layout::Flyway, Layout::GolangMigrate, Layout::Diesel];
    println!(
        "| layout ({count} migrations) | raw loop, real psql | raw loop, psql on PATH | runner, default lookup | runner / raw (real psql) | no-op migrate |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for layout in layouts {
        let history = History::generate(layout, count, 7);
        let dir = tempfile::tempdir().unwrap();
        history.write_to(dir.path()).unwrap();
        let (mut real, mut wrapper, mut runner_t, mut noop) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            eprintln!("{layout:?}: run {}/{runs}", run + 1);
            // Rotate the order so that load from elsewhere favours no side.
            for k in 0..3 {
                let db = fresh_db(&server).await;
                match (k + run) % 3 {
                    0 => {
                        let t = Instant::now();
                        raw_loop(&server, &real_psql, &db, dir.path(), &history);
                        real.push(t.elapsed());
                    }
                    1 => {
                        let t = Instant::now();
                        raw_loop(&server, path_psql, &db, dir.path(), &history);
                        wrapper.push(t.elapsed());
                    }
                    _ => {
                        let runner = PgMigrationRunner::builder(server.config(&db), dir.path())
                            .build()
                            .unwrap();
                        let t = Instant::now();
                        runner.migrate().await.unwrap();
                        runner_t.push(t.elapsed());
                        let t = Instant::now();
                        runner.migrate().await.unwrap();
                        noop.push(t.elapsed());
                    }
                }
            }
        }
        let (real, wrapper, runner_t, noop) = (
            median(real),
            median(wrapper),
            median(runner_t),
            median(noop),
        );
        println!(
            "| {layout:?} | {real:.2?} | {wrapper:.2?} | {runner_t:.2?} | {:.2}× | {noop:.0?} |",
            runner_t.as_secs_f64() / real.as_secs_f64()
        );
    }
}
