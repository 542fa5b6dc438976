//! [`MaintenancePage`]: maintenance mode by flag file, verified over HTTP; and
//! [`MaintenanceSnippet`]: the nginx configuration that makes the flag file work.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{DynHost, Error, ErrorKind, FileKind, Maintenance, Result};

/// The text the default maintenance page carries, which [`MaintenancePage`] looks for in a 503
/// answer to tell the maintenance page from any other 503.
pub const MAINTENANCE_MARKER: &str = "deploy-nginx:maintenance";

/// Maintenance mode by flag file on a [`Host`](deploy_core::Host): nginx checks the file on every
/// request (`if (-f <flag>) { return 503; }`, see [`MaintenanceSnippet`]), so no reload is needed.
///
/// - [`enable`](Maintenance::enable) writes the flag file atomically, then checks each verify
///   URL until it answers **503** with the maintenance page (a body containing the page marker,
///   by default [`MAINTENANCE_MARKER`]).
/// - [`disable`](Maintenance::disable) removes it, then checks each URL until it answers a
///   **2xx or 3xx** status again.
/// - [`is_enabled`](Maintenance::is_enabled) says whether the flag file exists.
///
/// A check that does not hold within the deadline (a flag path the configuration does not look
/// at is the classic mistake) puts the flag back as it was and is an error of kind `Rejected`
/// naming the URL, what it answered and the flag path. Without verify URLs nothing is checked.
pub struct MaintenancePage {
    host: DynHost,
    flag: PathBuf,
    verify: Vec<String>,
    marker: Option<String>,
    deadline: Duration,
    interval: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for MaintenancePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenancePage")
            .field("host", &self.host.name())
            .field("flag", &self.flag)
            .field(
                "verify",
                &self
                    .verify
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("marker", &self.marker)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:***@host/...`: never print a password from a URL, even an invalid one.
fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Builds a [`MaintenancePage`].
#[derive(Debug)]
pub struct MaintenancePageBuilder {
    host: DynHost,
    flag: PathBuf,
    verify: Vec<String>,
    marker: Option<String>,
    deadline: Duration,
    interval: Duration,
    bind: Option<IpAddr>,
}

impl MaintenancePageBuilder {
    /// Check this URL after each change (may be given several times: every server of the site).
    pub fn verify_url(mut self, url: impl Into<String>) -> Self {
        self.verify.push(url.into());
        self
    }

    /// The text a 503 body must contain to count as the maintenance page (default
    /// [`MAINTENANCE_MARKER`]); `None` accepts any 503.
    pub fn page_marker(mut self, marker: Option<String>) -> Self {
        self.marker = marker;
        self
    }

    /// How long a change may take to show (default 10 s).
    pub fn verify_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Pause between two checks (default 50 ms).
    pub fn verify_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Send the checks from this local address (to check from outside a bypass allow-list).
    pub fn verify_from(mut self, addr: IpAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<MaintenancePage> {
        let mut problems = Vec::new();
        if !self.flag.is_absolute() {
            problems.push(format!(
                "the flag path {} must be absolute",
                self.flag.display()
            ));
        }
        for url in &self.verify {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => problems.push(format!(
                    "verify URL {} has scheme {:?}, not http or https",
                    redact_url(url),
                    u.scheme()
                )),
                Err(e) => problems.push(format!("verify URL {}: {e}", redact_url(url))),
            }
        }
        if matches!(&self.marker, Some(m) if m.is_empty()) {
            problems.push("the page marker is empty: use None to accept any 503".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build maintenance page",
                format!("flag {}", self.flag.display()),
                problems.join("; "),
            ));
        }
        let mut client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ip) = self.bind {
            client = client.local_address(ip);
        }
        let client = client.build().map_err(|e| {
            Error::new(
                ErrorKind::Other,
                "build maintenance page",
                "HTTP client",
                e.to_string(),
            )
        })?;
        Ok(MaintenancePage {
            host: self.host,
            flag: self.flag,
            verify: self.verify,
            marker: self.marker,
            deadline: self.deadline,
            interval: self.interval,
            client,
        })
    }
}

/// What one check saw.
struct Seen {
    status: u16,
    marker: bool,
    retry_after: Option<String>,
}

impl MaintenancePage {
    /// Start building a page toggled by the flag file `flag` (an absolute path) on `host`.
    pub fn builder(host: DynHost, flag: impl Into<PathBuf>) -> MaintenancePageBuilder {
        MaintenancePageBuilder {
            host,
            flag: flag.into(),
            verify: Vec::new(),
            marker: Some(MAINTENANCE_MARKER.to_owned()),
            deadline: Duration::from_secs(10),
            interval: Duration::from_millis(50),
            bind: None,
        }
    }

    /// The flag file.
    pub fn flag(&self) -> &Path {
        &self.flag
    }

    fn object(&self) -> String {
        format!("flag {} on {}", self.flag.display(), self.host.name())
    }

    async fn flag_exists(&self) -> Result<bool> {
        match self.host.file_kind(&self.flag).await {
            Ok(Some(FileKind::Dir)) => Err(Error::new(
                ErrorKind::InvalidInput,
                "read maintenance",
                self.object(),
                "the flag path is a directory",
            )),
            Ok(kind) => Ok(kind.is_some()),
            Err(e) => Err(e.context("read maintenance", self.object())),
        }
    }

    async fn look(&self, url: &str) -> std::result::Result<Seen, String> {
        let resp = self.client.get(url).send().await.map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.unwrap_or_default();
        let marker = match &self.marker {
            Some(m) => body.contains(m.as_str()),
            None => true,
        };
        Ok(Seen {
            status,
            marker,
            retry_after,
        })
    }

    /// Check every verify URL until each shows the page (`on`) or the site (`!on`).
    async fn verify(&self, on: bool) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        for url in &self.verify {
            loop {
                let seen = self.look(url).await;
                let why = match &seen {
                    Ok(s) if on && s.status == 503 && s.marker => break,
                    Ok(s) if !on && (200..400).contains(&s.status) => break,
                    Ok(s) if on && s.status == 503 => format!(
                        "{} answers 503 but without the maintenance page (no {:?} in the body)",
                        redact_url(url),
                        self.marker.as_deref().unwrap_or_default()
                    ),
                    Ok(s) => format!(
                        "{} answers {}{}",
                        redact_url(url),
                        s.status,
                        s.retry_after
                            .as_ref()
                            .map(|r| format!(" (Retry-After: {r})"))
                            .unwrap_or_default()
                    ),
                    Err(e) => format!("{} cannot be read: {e}", redact_url(url)),
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(why);
                }
                tokio::time::sleep(self.interval).await;
            }
        }
        Ok(())
    }

    async fn set(&self, on: bool) -> Result<()> {
        let operation = if on {
            "enable maintenance"
        } else {
            "disable maintenance"
        };
        let was = self
            .flag_exists()
            .await
            .map_err(|e| e.context(operation, self.object()))?;
        if on {
            let stamp = format!(
                "maintenance enabled by deploy-nginx (pid {})\n",
                std::process::id()
            );
            self.host
                .write_file(&self.flag, stamp.as_bytes(), Some(0o644))
                .await
                .map_err(|e| e.context(operation, self.object()))?;
        } else {
            self.host
                .remove(&self.flag)
                .await
                .map_err(|e| e.context(operation, self.object()))?;
        }
        let Err(why) = self.verify(on).await else {
            tracing::info!(flag = %self.flag.display(), on, "maintenance page changed and verified");
            return Ok(());
        };
        let expected = if on {
            "503 with the maintenance page"
        } else {
            "a 2xx or 3xx answer"
        };
        let hint = if on {
            format!(
                "; does the nginx configuration check this flag path (`if (-f {})`)?",
                self.flag.display()
            )
        } else {
            String::new()
        };
        let mut e = Error::new(
            ErrorKind::Rejected,
            operation,
            self.object(),
            format!(
                "{why} after {:?}, expected {expected}{hint}; the flag was put back as it was",
                self.deadline
            ),
        );
        // Put the flag back as it was, so the file says what users see.
        let back = if was == on {
            Ok(())
        } else if was {
            self.host
                .write_file(&self.flag, b"maintenance\n", Some(0o644))
                .await
        } else {
            self.host.remove(&self.flag).await
        };
        if let Err(b) = back {
            e = e.context("and could not put the flag back", b.to_string());
        }
        Err(e)
    }
}

#[async_trait]
impl Maintenance for MaintenancePage {
    async fn enable(&self) -> Result<()> {
        self.set(true).await
    }

    async fn disable(&self) -> Result<()> {
        self.set(false).await
    }

    async fn is_enabled(&self) -> Result<bool> {
        self.flag_exists().await
    }
}

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

    #[test]
    fn debug_hides_url_passwords() {
        assert_eq!(
            redact_url("http://ops:s3cret@example.com/health"),
            "http://ops:***@example.com/health"
        );
        assert_eq!(
            redact_url("http://ops:s3cret@[::1/x"),
            "http://ops:***@[::1/x"
        );
        assert_eq!(
            redact_url("http://example.com/a@b"),
            "http://example.com/a@b"
        );
    }
}
