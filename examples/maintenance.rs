//! Turn an nginx maintenance page on or off by flag file, verified over HTTP; or print the nginx
//! configuration that makes the flag file work.
//!
//! ```text
//! # the snippet (http part, server part, default page) for your paths:
//! cargo run --example maintenance -- --print-snippet \
//!     --flag /srv/app/shared/maintenance.on --page-root /srv/app/maintenance --bypass 10.0.0.0/8
//! # on, verified: every --url must answer 503 with the page within the deadline
//! cargo run --example maintenance -- on --flag /srv/app/shared/maintenance.on \
//!     --url http://127.0.0.1/
//! cargo run --example maintenance -- status --flag /srv/app/shared/maintenance.on
//! cargo run --example maintenance -- off --flag /srv/app/shared/maintenance.on \
//!     --url http://127.0.0.1/
//! # a page of your own (`error_page 503 @maintenance` serving it): the 503 must be that file
//! cargo run --example maintenance -- on --flag /srv/app/.maintenance \
//!     --url http://127.0.0.1/ --page-file /srv/app/static/maintenance.html
//! ```
//!
//! The page is known by `--page-file F` (the body is that file), `--page-marker TEXT` (the body
//! contains it) or `--any-503`; without any of them, by the marker of the page `--print-snippet`
//! writes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use deploy_core::{LocalHost, Maintenance};
use deploy_nginx::{MaintenancePage, MaintenanceSnippet, PageCheck};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    /// Show the maintenance page (create the flag file), then verify.
    On,
    /// Hide it (remove the flag file), then verify.
    Off,
    /// Say whether the flag file exists.
    Status,
}

/// nginx maintenance page by flag file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to do (not needed with --print-snippet).
    #[arg(required_unless_present = "print_snippet")]
    action: Option<Action>,
    /// The flag file nginx checks (`if (-f <flag>)`).
    #[arg(long)]
    flag: PathBuf,
    /// A URL of the site to verify after the change (repeatable). Without it nothing is checked.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// How long the change may take to show, in seconds.
    #[arg(long, default_value_t = 10)]
    deadline_secs: u64,
    /// The page nginx serves for 503: a 503 counts as the maintenance page when its body is
    /// this file's contents (for a page of your own).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["page_marker", "any_503"])]
    page_file: Option<PathBuf>,
    /// A 503 counts as the maintenance page when its body contains this text.
    #[arg(long, value_name = "TEXT", conflicts_with = "any_503")]
    page_marker: Option<String>,
    /// Accept any 503 as the maintenance page.
    #[arg(long)]
    any_503: bool,
    /// Print the nginx configuration snippet and the default page, then exit.
    #[arg(long)]
    print_snippet: bool,
    /// With --print-snippet: the directory the page is served from.
    #[arg(long, default_value = "/var/www/maintenance")]
    page_root: PathBuf,
    /// With --print-snippet: the Retry-After header, in seconds (0: none).
    #[arg(long, default_value_t = 300)]
    retry_after: u64,
    /// With --print-snippet: an address or CIDR range that bypasses maintenance (repeatable).
    #[arg(long)]
    bypass: Vec<String>,
    /// With --print-snippet: also write the default page to <page-root>/maintenance.html.
    #[arg(long)]
    write_page: bool,
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

async fn run(args: Args) -> deploy_core::Result<()> {
    let host = Arc::new(LocalHost::new());
    if args.print_snippet {
        let mut snippet =
            MaintenanceSnippet::new(&args.flag, &args.page_root).retry_after_secs(args.retry_after);
        for b in &args.bypass {
            snippet = snippet.bypass(b);
        }
        let rendered = snippet.render()?;
        print!("{rendered}");
        if args.write_page {
            use deploy_core::Host;
            if let Some(dir) = rendered.page_path.parent() {
                host.create_dir_all(dir).await?;
            }
            host.write_file(&rendered.page_path, rendered.page.as_bytes(), Some(0o644))
                .await?;
            eprintln!("wrote {}", rendered.page_path.display());
        }
        return Ok(());
    }
    let mut builder = MaintenancePage::builder(host, &args.flag)
        .verify_deadline(Duration::from_secs(args.deadline_secs));
    for url in &args.urls {
        builder = builder.verify_url(url);
    }
    let check = if let Some(file) = &args.page_file {
        // Relative to where the command runs, as a shell user expects.
        let file = std::path::absolute(file)
            .map_err(|e| deploy_core::Error::io("read page file", file.display().to_string(), e))?;
        Some(PageCheck::File(file))
    } else if let Some(text) = &args.page_marker {
        Some(PageCheck::Contains(text.clone()))
    } else if args.any_503 {
        Some(PageCheck::Any503)
    } else {
        None
    };
    if let Some(check) = check {
        builder = builder.page_check(check);
    }
    let page = builder.build()?;
    let verified = if args.urls.is_empty() {
        " (not verified: no --url)"
    } else {
        ", verified"
    };
    match args.action {
        Some(Action::On) => {
            page.enable().await?;
            println!("maintenance on{verified}");
        }
        Some(Action::Off) => {
            page.disable().await?;
            println!("maintenance off{verified}");
        }
        Some(Action::Status) | None => {
            let on = page.is_enabled().await?;
            println!("{}", if on { "on" } else { "off" });
        }
    }
    Ok(())
}
