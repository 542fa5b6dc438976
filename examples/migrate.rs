//! Run migrations, backups and restores against a PostgreSQL database.
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@127.0.0.1:5432/shop \
//!     cargo run --example migrate -- --dir migrations status
//! ```
//!
//! Subcommands: `status`, `migrate`, `backup`, `restore BACKUP [--in-place] [--expect V]`,
//! `repair`, `baseline N`. The database URL comes from `DATABASE_URL` (or the environment
//! variable `--database-url-env` names); without one, the `PG*` environment is used. A URL
//! given on the command line with `--database-url` is visible to every user of this machine in
//! the process list, so it is accepted only without a password (a warning says so otherwise).
//! The password reaches the tools through their environment only, never their command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy_core::MigrationRunner;
use deploy_postgres::{PgConfig, PgMigrationRunner, RestoreMode};

#[derive(Parser)]
#[command(
    about = "Migrations with a history table, backups and restores, through psql, pg_dump and pg_restore"
)]
struct Args {
    /// postgres://user@host:port/db — without a password (a command line is visible to every
    /// user of this machine); put a URL with a password in DATABASE_URL instead.
    #[arg(long)]
    database_url: Option<String>,
    /// The environment variable holding the database URL.
    #[arg(long, default_value = "DATABASE_URL")]
    database_url_env: String,
    /// The migrations folder (Flyway, golang-migrate or diesel layout).
    #[arg(long)]
    dir: PathBuf,
    /// Where backups go.
    #[arg(long, default_value = "backups")]
    backup_dir: PathBuf,
    /// The history table.
    #[arg(long, default_value = "schema_version")]
    table: String,
    /// Take psql, pg_dump and pg_restore from this folder.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Accept gaps in sequence numbers.
    #[arg(long)]
    allow_gaps: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Applied, pending (classified), drifted and failed migrations.
    Status,
    /// Apply every pending migration.
    Migrate,
    /// Take a pg_dump -Fc backup and print its path.
    Backup,
    /// Restore a backup into a fresh database and swap it in (or in place).
    Restore {
        /// The backup file.
        backup: PathBuf,
        /// Drop and recreate the database instead of swapping (loses the current content).
        #[arg(long)]
        in_place: bool,
        /// Refuse the restore unless the backup's schema is at this version.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Re-stamp checksums from the files and clear unfinished no-transaction migrations.
    Repair,
    /// Mark an existing schema as being at version N.
    Baseline {
        /// The version the schema is at.
        version: String,
    },
}

async fn run(args: Args) -> deploy_core::Result<()> {
    let config = match (&args.database_url, std::env::var(&args.database_url_env)) {
        (Some(url), _) => {
            if url::Url::parse(url).is_ok_and(|u| u.password().is_some()) {
                eprintln!(
                    "warning: --database-url holds a password, and every user of this machine \
                     can read command lines; put the URL in {} instead",
                    args.database_url_env
                );
            }
            PgConfig::from_url(url)?
        }
        (None, Ok(url)) => PgConfig::from_url(&url)?,
        (None, Err(_)) => PgConfig::from_env()?,
    };
    let mut builder = PgMigrationRunner::builder(config, &args.dir)
        .backup_dir(std::path::absolute(&args.backup_dir).unwrap_or(args.backup_dir.clone()))
        .history_table(&args.table)
        .allow_gaps(args.allow_gaps);
    if let Some(b) = &args.bin_dir {
        builder = builder.bin_dir(b);
    }
    let runner = builder.build()?;
    match args.command {
        Cmd::Status => {
            let r = runner.report().await?;
            println!("database  {}", runner.config());
            println!("layout    {:?}", r.layout);
            println!("current   {}", r.current.as_deref().unwrap_or("(none)"));
            println!(
                "\n{:<16} {:<32} {:<10} {:>8}  installed at",
                "applied", "name", "success", "ms"
            );
            for a in &r.applied {
                println!(
                    "{:<16} {:<32} {:<10} {:>8}  {}",
                    a.version, a.name, a.success, a.execution_ms, a.installed_at
                );
            }
            println!("\n{:<16} {:<32} classification", "pending", "name");
            for p in &r.pending {
                let class = match p.classification.reason() {
                    None => "additive".to_owned(),
                    Some(why) => format!("DESTRUCTIVE: {why}"),
                };
                let tx = if p.no_transaction {
                    " (no transaction)"
                } else {
                    ""
                };
                println!("{:<16} {:<32} {class}{tx}", p.version, p.name);
            }
            for d in &r.drifted {
                println!(
                    "DRIFT    {} {}: recorded {} now {}",
                    d.version,
                    d.path.display(),
                    d.recorded,
                    d.actual
                );
            }
            for f in &r.failed {
                println!(
                    "FAILED   {} {}: started outside a transaction, did not finish",
                    f.version, f.name
                );
            }
            for m in &r.missing {
                println!(
                    "MISSING  {} {}: applied, but its file is gone",
                    m.version, m.name
                );
            }
        }
        Cmd::Migrate => {
            let v = runner.migrate().await?;
            println!(
                "schema at {}",
                v.map(|v| v.0).unwrap_or_else(|| "(none)".into())
            );
        }
        Cmd::Backup => println!("{}", runner.backup().await?),
        Cmd::Restore {
            backup,
            in_place,
            expect,
        } => {
            let mode = if in_place {
                RestoreMode::InPlace
            } else {
                RestoreMode::Swap
            };
            let r = runner
                .restore(&backup, mode, expect.as_deref().map(Some))
                .await?;
            println!(
                "restored {} at version {}{}",
                r.database,
                r.version.as_deref().unwrap_or("(none)"),
                r.kept_as
                    .map(|k| format!("; the replaced database is kept as {k}"))
                    .unwrap_or_default()
            );
        }
        Cmd::Repair => {
            let r = runner.repair().await?;
            println!(
                "re-stamped {:?}; removed unfinished rows {:?}",
                r.restamped, r.removed_failed
            );
        }
        Cmd::Baseline { version } => {
            runner.baseline(&version).await?;
            println!("baseline at {version}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
