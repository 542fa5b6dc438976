//! Backup + verify + restore-and-swap through the crate against the raw tools run by hand, side
//! by side in one run, on a `pgbench -i` database.
//!
//! ```text
//! BENCH_SCALE=20 BENCH_RUNS=9 BENCH_EXTRA_INDEXES=1 cargo bench -p deploy-postgres --all-features --bench backup_restore
//! ```
//!
//! Prints a Markdown table of medians (wall clock) and the ratios.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_core::MigrationRunner;
use deploy_postgres::testing::PgServer;
use deploy_postgres::{PgMigrationRunner, RestoreMode};

fn env_num(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pg(server: &PgServer, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PGHOST", "127.0.0.1")
        .env("PGPORT", server.port().to_string())
        .env("PGUSER", "postgres");
    c
}

fn check(c: &mut Command) {
    let out = c.output().expect("run a client tool");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// `a | b` with both exit statuses checked.
fn pipe(mut a: Command, mut b: Command, out: Option<&Path>, input: Option<&Path>) {
    if let Some(i) = input {
        a.stdin(std::fs::File::open(i).unwrap());
    }
    let mut first = a.stdout(Stdio::piped()).spawn().unwrap();
    b.stdin(first.stdout.take().unwrap());
    match out {
        Some(o) => b.stdout(std::fs::File::create(o).unwrap()),
        None => b.stdout(Stdio::null()),
    };
    let second = b.output().unwrap();
    let first = first.wait().unwrap();
    assert!(
        first.success() && second.status.success(),
        "pipe failed: {}",
        String::from_utf8_lossy(&second.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let scale = env_num("BENCH_SCALE", 10);
    let runs = env_num("BENCH_RUNS", 3).max(1);
    let server = PgServer::start().await.expect("start PostgreSQL");
    let work = server.dir().join("bench");
    std::fs::create_dir_all(&work).unwrap();
    // Readable by the server user (the restores run as root here, but keep it simple).
    server
        .query("postgres", "CREATE DATABASE bench")
        .await
        .unwrap();
    let (gen_time, ()) = timed(|| {
        check(pg(&server, "pgbench").args(["-i", "-q", "-s", &scale.to_string(), "bench"]));
    });
    // An application schema has secondary indexes, which `pg_restore -j` builds in parallel;
    // BENCH_EXTRA_INDEXES=0 keeps pgbench's bare schema (one primary key per table).
    let extra_indexes = env_num("BENCH_EXTRA_INDEXES", 1) != 0;
    if extra_indexes {
        server
            .query(
                "bench",
                "CREATE INDEX ON pgbench_accounts (bid, abalance); CREATE INDEX ON pgbench_accounts (filler)",
            )
            .await
            .unwrap();
    }
    let db_size = server
        .query("bench", "SELECT pg_size_pretty(pg_database_size('bench'))")
        .await
        .unwrap();
    eprintln!("pgbench -i -s {scale}: {db_size} in {gen_time:.1?}");

    // The history table, so that the restore can be verified at version 1.
    let migrations = work.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__marker.sql"),
        "CREATE TABLE bench_marker (id int);\n",
    )
    .unwrap();
    let config = server.config("bench");
    let runner = PgMigrationRunner::builder(config, &migrations)
        .backup_dir(work.join("backups"))
        .keep_backups(1)
        .restore_jobs(2)
        .build()
        .unwrap();
    runner.migrate().await.unwrap();
    let accounts = "SELECT sum(abalance)::text || ':' || count(*) FROM pgbench_accounts";
    let expected_rows = server.query("bench", accounts).await.unwrap();

    let (mut crate_backup, mut raw_dump, mut raw_gzip) = (Vec::new(), Vec::new(), Vec::new());
    let (mut crate_restore, mut raw_restore, mut raw_gunzip) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fc_size, mut gz_size) = (0, 0);
    let fc = work.join("raw.dump");
    let gz = work.join("raw.sql.gz");
    let mut last_backup = None;
    for run in 0..runs as usize {
        eprintln!("run {}/{runs}", run + 1);
        // Backups, in a rotating order so that load from elsewhere does not favour one side.
        for k in 0..3 {
            match (k + run) % 3 {
                0 => {
                    let t = Instant::now();
                    last_backup = Some(runner.backup().await.unwrap());
                    crate_backup.push(t.elapsed());
                }
                1 => {
                    let (t, ()) = timed(|| {
                        check(
                            pg(&server, "pg_dump")
                                .args(["-Fc", "-f"])
                                .arg(&fc)
                                .arg("bench"),
                        );
                    });
                    raw_dump.push(t);
                    fc_size = size_of(&fc);
                }
                _ => {
                    let (t, ()) = timed(|| {
                        let mut dump = pg(&server, "pg_dump");
                        dump.arg("bench");
                        pipe(dump, Command::new("gzip"), Some(&gz), None);
                    });
                    raw_gzip.push(t);
                    gz_size = size_of(&gz);
                }
            }
        }
        let id = last_backup.clone().unwrap();

        // Restores. The crate: pg_restore -l, fresh database, pg_restore -j2 -e, verify the
        // history, swap by renaming. Raw: createdb + pg_restore -j2 -e; createdb + gunzip | psql.
        for k in 0..3 {
            match (k + run) % 3 {
                0 => {
                    let t = Instant::now();
                    let report = runner
                        .restore(Path::new(&id.0), RestoreMode::Swap, Some(Some("1")))
                        .await
                        .unwrap();
                    crate_restore.push(t.elapsed());
                    assert_eq!(
                        server.query("bench", accounts).await.unwrap(),
                        expected_rows
                    );
                    let kept = report.kept_as.unwrap();
                    server
                        .query("postgres", &format!("DROP DATABASE {kept}"))
                        .await
                        .unwrap();
                }
                1 => {
                    let (t, ()) = timed(|| {
                        check(pg(&server, "createdb").args(["-T", "template0", "raw_fc"]));
                        check(
                            pg(&server, "pg_restore")
                                .args(["-j2", "-e", "-d", "raw_fc"])
                                .arg(&fc),
                        );
                    });
                    raw_restore.push(t);
                    assert_eq!(
                        server.query("raw_fc", accounts).await.unwrap(),
                        expected_rows
                    );
                    server
                        .query("postgres", "DROP DATABASE raw_fc")
                        .await
                        .unwrap();
                }
                _ => {
                    let (t, ()) = timed(|| {
                        check(pg(&server, "createdb").args(["-T", "template0", "raw_sql"]));
                        let mut psql = pg(&server, "psql");
                        psql.args(["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", "raw_sql"]);
                        let mut gunzip = Command::new("gunzip");
                        gunzip.arg("-c");
                        pipe(gunzip, psql, None, Some(&gz));
                    });
                    raw_gunzip.push(t);
                    assert_eq!(
                        server.query("raw_sql", accounts).await.unwrap(),
                        expected_rows
                    );
                    server
                        .query("postgres", "DROP DATABASE raw_sql")
                        .await
                        .unwrap();
                }
            }
        }
    }
    let _ = runner.status().await.unwrap();

    let pct = |a: Duration, b: Duration| (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0;
    let row = |name: &str, v: &[Duration], base: &[Duration]| {
        let (m, b) = (median(v.to_vec()), median(base.to_vec()));
        let (mn, bmn) = (*v.iter().min().unwrap(), *base.iter().min().unwrap());
        let vs = if std::ptr::eq(v, base) {
            "—".to_owned()
        } else {
            format!("{:+.1} %", pct(m, b))
        };
        let vs_min = if std::ptr::eq(v, base) {
            "—".to_owned()
        } else {
            format!("{:+.1} %", pct(mn, bmn))
        };
        println!("| {name} | {m:.2?} | {vs} | {mn:.2?} | {vs_min} |");
    };
    println!(
        "pgbench -i -s {scale}{} ({db_size}), {runs} runs in rotating order; -Fc archive {:.1} MB, sql.gz {:.1} MB\n",
        if extra_indexes {
            " + indexes on pgbench_accounts (bid, abalance) and (filler)"
        } else {
            ""
        },
        fc_size as f64 / 1e6,
        gz_size as f64 / 1e6
    );
    println!("| operation | median | vs raw (median) | fastest | vs raw (fastest) |");
    println!("|---|---:|---:|---:|---:|");
    row(
        "crate `backup()`: pg_dump -Fc into a 0600 temp file, pg_restore -l, rename, retention",
        &crate_backup,
        &raw_dump,
    );
    row("raw `pg_dump -Fc -f`", &raw_dump, &raw_dump);
    row("raw `pg_dump \\| gzip`", &raw_gzip, &raw_dump);
    row(
        "crate `restore(Swap)`: createdb, pg_restore -j2 -e, verify history, swap",
        &crate_restore,
        &raw_restore,
    );
    row(
        "raw `createdb` + `pg_restore -j2 -e`",
        &raw_restore,
        &raw_restore,
    );
    row(
        "raw `createdb` + `gunzip \\| psql -1 ON_ERROR_STOP`",
        &raw_gunzip,
        &raw_restore,
    );
    let (cr, rgz) = (median(crate_restore.clone()), median(raw_gunzip.clone()));
    let (crm, rgzm) = (
        *crate_restore.iter().min().unwrap(),
        *raw_gunzip.iter().min().unwrap(),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nload average at the end ({cpus} CPUs): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "\ngunzip | psql time / crate restore-and-swap time: {:.2} (medians), {:.2} (fastest runs)",
        rgz.as_secs_f64() / cr.as_secs_f64(),
        rgzm.as_secs_f64() / crm.as_secs_f64()
    );
}
