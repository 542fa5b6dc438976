//! Run migrations, backups and restores against a PostgreSQL database.
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@127.0.0.1:5432/shop \
//!     cargo run --example migrate -- --dir migrations status
//! ```
//!
//! Subcommands: `status`, `plan`, `migrate`, `revert --to V [--backup FILE] [--allow-data-loss]`,
//! `backup`, `restore BACKUP [--in-place] [--expect V] [--keep-replaced]`, `repair`, `baseline N`. The database URL comes from `DATABASE_URL` (or the environment
//! variable `--database-url-env` names); without one, the `PG*` environment is used. A URL
//! given on the command line with `--database-url` is visible to every user of this machine in
//! the process list, so it is accepted only without a password (a warning says so otherwise).
//! The password reaches the tools through their environment only, never their command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy_core::{BackupId, MigrationRunner, SchemaVersion};
use deploy_postgres::{
    Compatibility, PgConfig, PgMigrationRunner, RepeatableState, RestoreMode, Reversibility,
    SchemaReport,
};

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
    /// Applied, pending, repeatable, drifted and failed migrations.
    Status,
    /// For each pending and applied migration: how it runs, whether it can run while the
    /// previous release serves, and whether undoing it loses data — and why.
    Plan,
    /// Apply every pending migration (then new or changed repeatable ones).
    Migrate,
    /// Undo the migrations after VERSION by their down files; with --backup, restore the
    /// backup instead when a down file cannot undo without losing data.
    Revert {
        /// The version to go back to; `none` undoes every migration.
        #[arg(long)]
        to: String,
        /// A backup taken at VERSION (from `backup`), restored when down files cannot undo.
        #[arg(long)]
        backup: Option<PathBuf>,
        /// Run down files even when they drop data (a dropped column's values are lost).
        #[arg(long)]
        allow_data_loss: bool,
    },
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
        /// Keep the replaced database under a dated name instead of dropping it.
        #[arg(long)]
        keep_replaced: bool,
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
    match &args.command {
        Cmd::Revert {
            allow_data_loss, ..
        } => builder = builder.allow_data_loss(*allow_data_loss),
        Cmd::Restore { keep_replaced, .. } => {
            builder = builder.keep_replaced_database(*keep_replaced)
        }
        _ => {}
    }
    if let Some(b) = &args.bin_dir {
        builder = builder.bin_dir(b);
    }
    let runner = builder.build()?;
    match args.command {
        Cmd::Status => {
            let r = runner.report().await?;
            println!("database  {}", runner.config());
            println!("tools     {}", runner.tools().await?);
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
            println!("\n{:<16} {:<32} runs", "pending", "name");
            for p in &r.pending {
                println!("{:<16} {:<32} {}", p.version, p.name, p.transaction);
            }
            for rep in &r.repeatables {
                println!(
                    "{:<16} {:<32} {}",
                    "repeatable",
                    rep.name,
                    repeatable_state(rep.state)
                );
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
        Cmd::Plan => {
            print_plan(&runner.report().await?);
            println!("\ntools     {}", runner.tools().await?);
        }
        Cmd::Migrate => {
            let v = runner.migrate().await?;
            println!(
                "schema at {}",
                v.map(|v| v.0).unwrap_or_else(|| "(none)".into())
            );
        }
        Cmd::Revert { to, backup, .. } => {
            let to = (to != "none").then_some(SchemaVersion(to));
            let backup = backup
                .map(|b| BackupId(std::path::absolute(&b).unwrap_or(b).display().to_string()));
            runner.revert(to.as_ref(), backup.as_ref()).await?;
            println!(
                "schema at {}",
                runner
                    .current_version()
                    .await?
                    .unwrap_or_else(|| "(none)".into())
            );
        }
        Cmd::Backup => println!("{}", runner.backup().await?),
        Cmd::Restore {
            backup,
            in_place,
            expect,
            ..
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

fn repeatable_state(state: RepeatableState) -> &'static str {
    match state {
        RepeatableState::New => "new: applied by the next migrate",
        RepeatableState::Changed => "changed: applied again by the next migrate",
        RepeatableState::UpToDate => "up to date",
    }
}

fn compatibility(c: &Compatibility) -> String {
    match c {
        Compatibility::Compatible => "compatible".into(),
        Compatibility::Incompatible(why) => format!("INCOMPATIBLE: {why}"),
    }
}

fn reversibility(r: &Reversibility) -> String {
    match r {
        Reversibility::Reversible => "by its down file, without data loss".into(),
        Reversibility::NoDown => "only by a backup: it has no down migration".into(),
        Reversibility::LosesData(why) => {
            format!("LOSES DATA: {why} (needs --backup or --allow-data-loss)")
        }
    }
}

/// Each migration on a few lines: how it runs, whether the previous release survives it
/// (what strategies gate on) and what undoing it costs (what `revert` gates on).
fn print_plan(r: &SchemaReport) {
    println!("layout    {:?}", r.layout);
    println!("current   {}", r.current.as_deref().unwrap_or("(none)"));
    println!("\npending, in the order migrate applies them:");
    if r.pending.is_empty() && r.pending_repeatables().next().is_none() {
        println!("  (none)");
    }
    for p in &r.pending {
        println!("  {} {}", p.version, p.label);
        println!("      runs         {}", p.transaction);
        println!("      old release  {}", compatibility(&p.compatibility));
        println!("      revert       {}", reversibility(&p.reversibility));
    }
    for rep in r.pending_repeatables() {
        println!("  {} ({})", rep.label, repeatable_state(rep.state));
        println!("      runs         {}", rep.transaction);
        println!("      old release  {}", compatibility(&rep.compatibility));
    }
    println!("\napplied, newest first (the order revert undoes them):");
    if r.applied.is_empty() {
        println!("  (none)");
    }
    for a in r.applied.iter().rev() {
        println!("  {} {}", a.version, a.name);
        match &a.reversibility {
            Some(rev) => println!("      revert       {}", reversibility(rev)),
            None => println!("      revert       only by a backup: its file is gone"),
        }
    }
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
