//! [`PageCheck`]: how [`MaintenancePage`](super::MaintenancePage) tells its maintenance page
//! from any other 503 answer, and the comparison of a body with it.

use std::path::{Path, PathBuf};

use super::MAINTENANCE_MARKER;

/// How [`MaintenancePage`](super::MaintenancePage) tells the maintenance page from any other
/// 503 (a backend that is down, nginx's own error page).
///
/// The default is [`Contains`](Self::Contains) of [`MAINTENANCE_MARKER`], which the page of
/// [`MaintenanceSnippet`](super::MaintenanceSnippet) carries. For a page of your own (the
/// runbook's `error_page 503 @maintenance` serving `maintenance.html`), give its file:
/// [`File`](Self::File).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageCheck {
    /// The body is the contents of this file (an absolute path on the flag's host), read at each
    /// [`enable`](deploy_core::Maintenance::enable) before the flag is written. nginx sends a
    /// static page as the file's bytes; they are compared as they are, or with leading and
    /// trailing whitespace trimmed on both sides.
    File(PathBuf),
    /// The body contains this text.
    Contains(String),
    /// Any 503 counts as the maintenance page.
    Any503,
}

impl Default for PageCheck {
    fn default() -> Self {
        Self::Contains(MAINTENANCE_MARKER.to_owned())
    }
}

/// A [`PageCheck`] ready to compare bodies with: the page file read.
#[derive(Debug)]
pub(super) enum Expected<'a> {
    File { path: &'a Path, contents: Vec<u8> },
    Contains(&'a str),
    Any503,
}

impl Expected<'_> {
    pub(super) fn matches(&self, body: &[u8]) -> bool {
        match self {
            Self::File { contents, .. } => {
                body == contents.as_slice() || body.trim_ascii() == contents.trim_ascii()
            }
            Self::Contains(text) => String::from_utf8_lossy(body).contains(text),
            Self::Any503 => true,
        }
    }

    /// What a 503 must carry, for messages: "the page file /srv/… (1234 bytes) as its body".
    pub(super) fn describe(&self) -> String {
        match self {
            Self::File { path, contents } => format!(
                "the page file {} ({} bytes) as its body",
                path.display(),
                contents.len()
            ),
            Self::Contains(text) => format!("a body containing {text:?}"),
            Self::Any503 => "any body".to_owned(),
        }
    }

    /// What to look at when a 503 came with another body.
    pub(super) fn hint(&self) -> String {
        match self {
            Self::File { path, .. } => format!(
                "is {} the file nginx serves for 503 (`error_page 503` and the `root` of its \
                 location)?",
                path.display()
            ),
            Self::Contains(_) => "for a page of your own, give its file (`page_file`) or a text \
                                  it contains (`page_marker`), or accept any 503 (`any_503`)"
                .to_owned(),
            Self::Any503 => String::new(),
        }
    }
}

/// The first 100 characters of a body, whitespace runs as one space, for messages.
pub(super) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 100;
    let text = String::from_utf8_lossy(body);
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return "an empty body".to_owned();
    }
    let joined = words.join(" ");
    let mut shown: String = joined.chars().take(MAX).collect();
    if joined.chars().count() > MAX {
        shown.push('…');
    }
    format!("\"{shown}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_matches_as_sent_or_trimmed_and_nothing_else() {
        let page = b"<!DOCTYPE html>\n<p>Back soon</p>\n".to_vec();
        let e = Expected::File {
            path: Path::new("/srv/app/static/maintenance.html"),
            contents: page.clone(),
        };
        assert!(e.matches(&page));
        assert!(e.matches(b"\r\n<!DOCTYPE html>\n<p>Back soon</p>"));
        assert!(!e.matches(b"<!DOCTYPE html>\n<p>Back soon</p>\n<!-- injected -->"));
        assert!(!e.matches(b"<!DOCTYPE html>\n<p>Back  soon</p>\n"));
        assert!(!e.matches(b""));
        assert_eq!(
            e.describe(),
            "the page file /srv/app/static/maintenance.html (33 bytes) as its body"
        );
    }

    #[test]
    fn a_text_is_looked_for_anywhere_and_any_503_takes_all() {
        let e = Expected::Contains(MAINTENANCE_MARKER);
        assert!(e.matches(b"<!-- deploy-nginx:maintenance --><h1>Down</h1>"));
        assert!(!e.matches(b"<h1>503 Service Temporarily Unavailable</h1>"));
        assert!(Expected::Any503.matches(b""));
        assert_eq!(
            PageCheck::default(),
            PageCheck::Contains(MAINTENANCE_MARKER.into())
        );
    }

    #[test]
    fn an_excerpt_is_short_on_one_line() {
        assert_eq!(excerpt(b"  \n "), "an empty body");
        assert_eq!(
            excerpt(b"<html>\r\n<head>\n  <title>x</title>\n"),
            "\"<html> <head> <title>x</title>\""
        );
        let long = "a".repeat(150);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), 100 + 3, "{e}");
        assert!(e.ends_with("a…\""), "{e}");
    }
}
