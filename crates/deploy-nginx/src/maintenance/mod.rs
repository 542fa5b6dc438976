//! [`MaintenancePage`]: maintenance mode by flag file, verified over HTTP; how it knows its page
//! ([`PageCheck`], in `check`); its plan-file section ([`MaintenancePageConfig`], in `config`);
//! and [`MaintenanceSnippet`] (in `snippet`): the nginx configuration that makes the flag file
//! work.

mod check;
mod config;
mod snippet;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{DynHost, Error, ErrorKind, FileKind, Maintenance, Result, http, redact};

pub use check::PageCheck;
use check::{Expected, excerpt};
pub use config::MaintenancePageConfig;
pub use snippet::{MaintenanceSnippet, RenderedSnippet};

/// The text the default maintenance page carries, which [`MaintenancePage`] looks for in a 503
/// answer by default ([`PageCheck::default`]) to tell the maintenance page from any other 503.
pub const MAINTENANCE_MARKER: &str = "deploy-nginx:maintenance";

/// How long one check of a verify URL may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Maintenance mode by flag file on a [`Host`](deploy_core::Host): nginx checks the file on every
/// request (`if (-f <flag>) { return 503; }`, see [`MaintenanceSnippet`]), so no reload is needed.
///
/// - [`enable`](Maintenance::enable) writes the flag file atomically, then checks each verify
///   URL until it answers **503** with the maintenance page, as the [`PageCheck`] says: the
///   contents of the page file given ([`PageCheck::File`], for a page of your own), a text in
///   the body (by default [`MAINTENANCE_MARKER`], which the page of [`MaintenanceSnippet`]
///   carries), or any 503.
/// - [`disable`](Maintenance::disable) removes it, then checks each URL until it answers a
///   **2xx or 3xx** status again.
/// - [`is_enabled`](Maintenance::is_enabled) says whether the flag file exists.
///
/// A check that does not hold within the deadline (a flag path the configuration does not look
/// at is the classic mistake) puts the flag back as it was and is an error of kind `Rejected`
/// naming the URL, what it answered (the status, and the start of a 503's body), what was
/// expected and the flag path. A page file that cannot be read fails `enable` before the flag is
/// written. Without verify URLs nothing is checked.
pub struct MaintenancePage {
    host: DynHost,
    flag: PathBuf,
    verify: Vec<String>,
    check: PageCheck,
    deadline: Duration,
    interval: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for MaintenancePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verify: Vec<String> = self.verify.iter().map(|u| redact::url(u)).collect();
        f.debug_struct("MaintenancePage")
            .field("host", &self.host.name())
            .field("flag", &self.flag)
            .field("verify", &verify)
            .field("check", &self.check)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Builds a [`MaintenancePage`]; [`build`](Self::build) validates everything and reports every
/// problem at once.
#[derive(Debug)]
pub struct MaintenancePageBuilder {
    host: DynHost,
    flag: PathBuf,
    verify: Vec<String>,
    check: PageCheck,
    deadline: Duration,
    interval: Duration,
    bind: Option<IpAddr>,
    /// Problems found before the builder (in a plan-file section), reported by `build`.
    problems: Vec<String>,
}

impl MaintenancePageBuilder {
    /// Check this URL after each change (may be given several times: every server of the site).
    pub fn verify_url(mut self, url: impl Into<String>) -> Self {
        self.verify.push(url.into());
        self
    }

    /// How a 503 is known as the maintenance page (default: a body containing
    /// [`MAINTENANCE_MARKER`]). For a page of your own, [`PageCheck::File`] with its file.
    pub fn page_check(mut self, check: PageCheck) -> Self {
        self.check = check;
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
        let mut problems = self.problems;
        if self.flag.as_os_str().is_empty() {
            problems.push("no flag file given (`flag`)".to_owned());
        } else if !self.flag.is_absolute() {
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
                    redact::url(url),
                    u.scheme()
                )),
                Err(e) => problems.push(format!("verify URL {}: {e}", redact::url(url))),
            }
        }
        match &self.check {
            PageCheck::Contains(m) if m.is_empty() => problems.push(
                "the page marker (`page_marker`) is empty: give the text the page carries, or \
                 accept any 503 (`any_503`)"
                    .to_owned(),
            ),
            PageCheck::File(p) if !p.is_absolute() => problems.push(format!(
                "the page file (`page_file`) {} must be absolute",
                p.display()
            )),
            _ => {}
        }
        let object = format!("flag {}", self.flag.display());
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build maintenance page",
                object,
                problems.join("; "),
            ));
        }
        let mut client = http::client_builder()
            .pool_max_idle_per_host(0)
            .timeout(CHECK_TIMEOUT);
        if let Some(ip) = self.bind {
            client = client.local_address(ip);
        }
        let client = client.build().map_err(|e| {
            Error::new(
                ErrorKind::Other,
                "build maintenance page",
                object,
                "cannot build the HTTP client",
            )
            .with_source(e)
        })?;
        Ok(MaintenancePage {
            host: self.host,
            flag: self.flag,
            verify: self.verify,
            check: self.check,
            deadline: self.deadline,
            interval: self.interval,
            client,
        })
    }
}

/// What one check saw.
struct Seen {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<String>,
}

/// Why a verify URL did not show what was expected in time: what it answered last (in this
/// crate's words), what to look at, and the request's own error when it could not be read.
struct NotShown {
    why: String,
    hint: Option<String>,
    source: Option<reqwest::Error>,
}

impl MaintenancePage {
    /// Start building a page toggled by the flag file `flag` (an absolute path) on `host`. For
    /// a plan-file section on this machine, see [`from_config`](Self::from_config).
    pub fn builder(host: DynHost, flag: impl Into<PathBuf>) -> MaintenancePageBuilder {
        MaintenancePageBuilder {
            host,
            flag: flag.into(),
            verify: Vec::new(),
            check: PageCheck::default(),
            deadline: Duration::from_secs(10),
            interval: Duration::from_millis(50),
            bind: None,
            problems: Vec::new(),
        }
    }

    /// The flag file.
    pub fn flag(&self) -> &Path {
        &self.flag
    }

    /// How a 503 is known as the maintenance page.
    pub fn page_check(&self) -> &PageCheck {
        &self.check
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

    async fn look(&self, url: &str) -> std::result::Result<Seen, reqwest::Error> {
        let resp = self.client.get(url).send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Ok(Seen {
            status,
            body,
            retry_after,
        })
    }

    /// The page check with the page file read (on the flag's host), before anything changes.
    async fn expected(&self) -> Result<Expected<'_>> {
        Ok(match &self.check {
            PageCheck::File(path) => {
                let contents = self.host.read_file(path).await.map_err(|e| {
                    e.context("read the maintenance page file", path.display().to_string())
                })?;
                if contents.trim_ascii().is_empty() {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "read the maintenance page file",
                        path.display().to_string(),
                        "the file is empty: nothing tells the page from another 503",
                    ));
                }
                Expected::File { path, contents }
            }
            PageCheck::Contains(text) => Expected::Contains(text),
            PageCheck::Any503 => Expected::Any503,
        })
    }

    /// Check every verify URL until each shows the page (`Some`: on) or the site (`None`: off).
    async fn verify(&self, page: Option<&Expected<'_>>) -> std::result::Result<(), NotShown> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        for url in &self.verify {
            let shown = redact::url(url);
            loop {
                let last = match (self.look(url).await, page) {
                    (Ok(s), Some(p)) if s.status == 503 && p.matches(&s.body) => break,
                    (Ok(s), None) if (200..400).contains(&s.status) => break,
                    (Ok(s), Some(p)) if s.status == 503 => NotShown {
                        why: format!(
                            "{shown} answers 503 with another body, {}",
                            excerpt(&s.body)
                        ),
                        hint: Some(p.hint()),
                        source: None,
                    },
                    (Ok(s), _) => NotShown {
                        why: format!(
                            "{shown} answers {}{}",
                            s.status,
                            s.retry_after
                                .as_ref()
                                .map(|r| format!(" (Retry-After: {r})"))
                                .unwrap_or_default()
                        ),
                        hint: page.map(|_| {
                            format!(
                                "does the nginx configuration check this flag path \
                                 (`if (-f {})`)?",
                                self.flag.display()
                            )
                        }),
                        source: None,
                    },
                    (Err(e), _) if http::error_kind(&e) == ErrorKind::Timeout => NotShown {
                        why: format!("{shown} gives no answer within {CHECK_TIMEOUT:?}"),
                        hint: None,
                        source: None,
                    },
                    (Err(e), _) => NotShown {
                        why: format!("{shown} cannot be read"),
                        hint: None,
                        source: Some(e.without_url()),
                    },
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(last);
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
        // Read the page file before the flag changes: a file that cannot be read changes nothing.
        let page = if on && !self.verify.is_empty() {
            Some(
                self.expected()
                    .await
                    .map_err(|e| e.context(operation, self.object()))?,
            )
        } else {
            None
        };
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
        let Err(not_shown) = self.verify(page.as_ref()).await else {
            tracing::info!(flag = %self.flag.display(), on, "maintenance page changed and verified");
            return Ok(());
        };
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
        let expected = match &page {
            Some(p) => format!("503 with {}", p.describe()),
            None => "a 2xx or 3xx answer".to_owned(),
        };
        let hint = not_shown
            .hint
            .filter(|h| !h.is_empty())
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        let flag_now = match (&back, was, on) {
            (Ok(()), false, true) => "the flag file was removed again",
            (Ok(()), true, false) => "the flag file was written again",
            (Ok(()), _, _) => "the flag file is as it was",
            (Err(_), _, _) => "the flag file could not be put back as it was",
        };
        let mut e = Error::new(
            ErrorKind::Rejected,
            operation,
            self.object(),
            format!(
                "{} after {:?}, expected {expected}{hint}; {flag_now}",
                not_shown.why, self.deadline
            ),
        );
        if let Err(b) = back {
            e = e.with_context("put back", b.to_string());
        }
        if let Some(source) = not_shown.source {
            e = e.with_source(source);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deploy_core::LocalHost;

    use super::*;

    #[test]
    fn debug_hides_url_secrets() {
        let page = MaintenancePage::builder(Arc::new(LocalHost::new()), "/srv/app/maintenance.on")
            .verify_url("http://ops:s3cret@example.com/health?token=abc")
            .build()
            .unwrap();
        let text = format!("{page:?}");
        assert!(
            text.contains("http://example.com/health?token=***"),
            "{text}"
        );
        assert!(!text.contains("s3cret") && !text.contains("abc"), "{text}");
        let err = MaintenancePage::builder(Arc::new(LocalHost::new()), "/srv/app/maintenance.on")
            .verify_url("http://ops:s3cret@[::1/x")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_url_is_said_once_and_the_flag_is_put_back() {
        let port = deploy_core::testing::process::free_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("maintenance.on");
        let page = MaintenancePage::builder(Arc::new(LocalHost::new()), &flag)
            .verify_url(format!("http://127.0.0.1:{port}/"))
            .verify_deadline(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = page.enable().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("http://127.0.0.1:{port}/ cannot be read after")),
            "{msg}"
        );
        assert!(msg.contains("the flag file was removed again"), "{msg}");
        assert_eq!(msg.matches("cannot be read").count(), 1, "{msg}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the request's error is the source: {msg}"
        );
        assert!(!flag.exists());
    }
}
