//! [`MaintenanceSnippet`]: the nginx configuration that makes the flag file work, rendered from
//! the paths, with the default page.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use deploy_core::{Error, ErrorKind, Result};

use super::MAINTENANCE_MARKER;

/// The nginx configuration for a flag-file maintenance page, rendered from the paths so that it
/// is not copied from a wiki: `http {}` part (the bypass allow-list), `server {}` part (the flag
/// check and the `@deploy_maintenance` location) and the default page.
///
/// ```
/// use deploy_nginx::MaintenanceSnippet;
/// let s = MaintenanceSnippet::new("/var/www/app/shared/maintenance.on", "/var/www/app/maintenance")
///     .retry_after_secs(120)
///     .bypass("10.0.0.0/8")
///     .render()
///     .unwrap();
/// assert!(s.server.contains("if (-f /var/www/app/shared/maintenance.on)"));
/// assert!(s.http.contains("10.0.0.0/8 1;"));
/// assert!(s.page.contains(deploy_nginx::MAINTENANCE_MARKER));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSnippet {
    flag: PathBuf,
    page_root: PathBuf,
    page_name: String,
    retry_after: Option<u64>,
    bypass: Vec<String>,
    title: String,
}

/// A rendered [`MaintenanceSnippet`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenderedSnippet {
    /// Goes into `http {}` (once per http block): the bypass allow-list.
    pub http: String,
    /// Goes into each `server {}` that shows the page, before its locations.
    pub server: String,
    /// The default page (HTML), to be written as `<page root>/<page name>`.
    pub page: String,
    /// Where the page must be written: `<page root>/<page name>`.
    pub page_path: PathBuf,
}

impl fmt::Display for RenderedSnippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# ---- in http {{ }} ----")?;
        f.write_str(&self.http)?;
        writeln!(f, "\n# ---- in server {{ }}, before the locations ----")?;
        f.write_str(&self.server)?;
        writeln!(f, "\n# ---- page: {} ----", self.page_path.display())?;
        f.write_str(&self.page)
    }
}

impl MaintenanceSnippet {
    /// A snippet for the flag file `flag`, serving `maintenance.html` from the directory
    /// `page_root`, with `Retry-After: 300`.
    pub fn new(flag: impl Into<PathBuf>, page_root: impl Into<PathBuf>) -> Self {
        Self {
            flag: flag.into(),
            page_root: page_root.into(),
            page_name: "maintenance.html".to_owned(),
            retry_after: Some(300),
            bypass: Vec::new(),
            title: "Down for maintenance".to_owned(),
        }
    }

    /// The page's file name in the page root (default `maintenance.html`).
    pub fn page_name(mut self, name: impl Into<String>) -> Self {
        self.page_name = name.into();
        self
    }

    /// Send `Retry-After: secs` with the page (`0`: no header).
    pub fn retry_after_secs(mut self, secs: u64) -> Self {
        self.retry_after = (secs > 0).then_some(secs);
        self
    }

    /// Let clients from this address or CIDR range (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.2`)
    /// see the site during maintenance (matched on `$remote_addr`).
    pub fn bypass(mut self, addr_or_cidr: impl Into<String>) -> Self {
        self.bypass.push(addr_or_cidr.into());
        self
    }

    /// The title of the default page.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Validate the paths and addresses and render.
    pub fn render(&self) -> Result<RenderedSnippet> {
        let mut problems = Vec::new();
        for (what, p) in [("flag", &self.flag), ("page root", &self.page_root)] {
            if !p.is_absolute() {
                problems.push(format!("the {what} path {} must be absolute", p.display()));
            }
            if let Err(why) = check_safe(&p.to_string_lossy()) {
                problems.push(format!("the {what} path {}: {why}", p.display()));
            }
        }
        if self.page_name.contains('/') || check_safe(&self.page_name).is_err() {
            problems.push(format!(
                "the page name {:?} must be a plain file name",
                self.page_name
            ));
        }
        for b in &self.bypass {
            if let Err(why) = check_cidr(b) {
                problems.push(format!("bypass {b:?}: {why}"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "render maintenance snippet",
                format!("for flag {}", self.flag.display()),
                problems.join("; "),
            ));
        }
        let mut http = String::from(
            "# deploy-nginx maintenance: clients listed here see the site during maintenance.\n\
             geo $deploy_maintenance_bypass {\n    default 0;\n",
        );
        for b in &self.bypass {
            http.push_str(&format!("    {b} 1;\n"));
        }
        http.push_str("}\n");
        let retry = self
            .retry_after
            .map(|s| format!("    add_header Retry-After {s} always;\n"))
            .unwrap_or_default();
        let server = format!(
            "# deploy-nginx maintenance: `touch {flag}` shows the page, `rm` hides it (no reload).\n\
             # Server-level rewrites run before every location; nginx checks the file per request.\n\
             set $deploy_maintenance 0;\n\
             if (-f {flag}) {{ set $deploy_maintenance 1; }}\n\
             if ($deploy_maintenance_bypass) {{ set $deploy_maintenance 0; }}\n\
             if ($deploy_maintenance) {{ return 503; }}\n\
             error_page 503 @deploy_maintenance;\n\
             location @deploy_maintenance {{\n    root {root};\n{retry}    \
             add_header Cache-Control \"no-store\" always;\n    \
             rewrite ^ /{page} break;\n}}\n",
            flag = self.flag.display(),
            root = self.page_root.display(),
            page = self.page_name,
        );
        let page = format!(
            "<!DOCTYPE html>\n<!-- {MAINTENANCE_MARKER} -->\n<html><head><meta charset=\"utf-8\">\
             <title>{t}</title></head>\n<body><h1>{t}</h1><p>We are deploying a new version. \
             Please try again in a few minutes.</p></body></html>\n",
            t = html_escape(&self.title)
        );
        Ok(RenderedSnippet {
            http,
            server,
            page,
            page_path: self.page_root.join(&self.page_name),
        })
    }
}

fn check_safe(s: &str) -> std::result::Result<(), String> {
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')))
    {
        Some(c) => Err(format!(
            "contains {c:?}; only ASCII letters, digits and / . _ - + @ are written into nginx configuration"
        )),
        None => Ok(()),
    }
}

fn check_cidr(s: &str) -> std::result::Result<(), String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| "not an IP address".to_owned())?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("prefix length must be 0 to {max}")),
        }
    }
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_renders_flag_bypass_and_page() {
        let r = MaintenanceSnippet::new("/srv/app/maintenance.on", "/srv/app/page")
            .retry_after_secs(120)
            .bypass("127.0.0.2")
            .bypass("10.0.0.0/8")
            .title("Back <soon>")
            .render()
            .unwrap();
        assert!(r.http.contains("geo $deploy_maintenance_bypass {"));
        assert!(r.http.contains("    127.0.0.2 1;\n    10.0.0.0/8 1;\n"));
        assert!(
            r.server
                .contains("if (-f /srv/app/maintenance.on) { set $deploy_maintenance 1; }")
        );
        assert!(r.server.contains("add_header Retry-After 120 always;"));
        assert!(r.server.contains("rewrite ^ /maintenance.html break;"));
        assert!(r.page.contains("Back &lt;soon&gt;"));
        assert!(r.page.contains(MAINTENANCE_MARKER));
        assert_eq!(r.page_path, PathBuf::from("/srv/app/page/maintenance.html"));
    }

    #[test]
    fn snippet_refuses_unsafe_paths_and_bad_ranges() {
        let e = MaintenanceSnippet::new("/srv/app/x; return 200", "relative")
            .bypass("10.0.0.0/33")
            .bypass("nope")
            .page_name("../x")
            .render()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let m = e.to_string();
        for needle in [
            "contains ';'",
            "must be absolute",
            "prefix length",
            "not an IP",
            "plain file name",
        ] {
            assert!(m.contains(needle), "{needle} missing in {m}");
        }
    }
}
