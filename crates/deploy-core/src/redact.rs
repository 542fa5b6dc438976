//! Keeping secrets out of messages: the one function every crate here uses to show a URL.

/// `url` as it may be shown in messages, logs, reports and `Debug`: scheme, host and port are
/// kept; user name and password are dropped; a path segment that may be a token (anything
/// but a short lower-case word such as `api`, `v1`, `hooks`, `metrics`) becomes `***`; query
/// values become `***` (their keys stay). Text that does not parse as a URL is shown as
/// `<not a URL, N characters>`, since any part of it could be a secret.
///
/// ```
/// use deploy_core::redact;
/// assert_eq!(
///     redact::url("https://alice:pw@hooks.example/services/T000/B000/XXXX?token=abc&x=1"),
///     "https://hooks.example/services/***/***/***?token=***&x=***"
/// );
/// assert_eq!(redact::url("http://127.0.0.1:9090/api/v1/query"), "http://127.0.0.1:9090/api/v1/query");
/// ```
pub fn url(url: &str) -> String {
    shown(url, false)
}

/// `url` as [`url()`] shows it, but with the whole path hidden (`https://hooks.example/***`): for
/// URLs whose path is the secret (chat webhooks), whatever its segments look like.
///
/// ```
/// assert_eq!(
///     deploy_core::redact::url_without_path("https://hooks.example/services/abc/def?x=1"),
///     "https://hooks.example/***?x=***"
/// );
/// ```
pub fn url_without_path(url: &str) -> String {
    shown(url, true)
}

fn shown(url: &str, hide_path: bool) -> String {
    let Ok(u) = url::Url::parse(url) else {
        return format!("<not a URL, {} characters>", url.chars().count());
    };
    if u.cannot_be_a_base() {
        return format!("{}:***", u.scheme());
    }
    let mut out = format!("{}://", u.scheme());
    if let Some(host) = u.host_str() {
        out.push_str(host);
    }
    if let Some(port) = u.port() {
        out.push_str(&format!(":{port}"));
    }
    let segments: Vec<&str> = u.path_segments().map(Iterator::collect).unwrap_or_default();
    let path_empty = segments.iter().all(|s| s.is_empty());
    if hide_path && !path_empty {
        out.push_str("/***");
    } else {
        for s in &segments {
            out.push('/');
            out.push_str(if plain_word(s) { s } else { "***" });
        }
        if segments.is_empty() {
            out.push('/');
        }
    }
    if u.query().is_some() {
        let keys: Vec<String> = u
            .query_pairs()
            .map(|(k, _)| {
                let k = if plain_word(&k) {
                    k.into_owned()
                } else {
                    "***".to_owned()
                };
                format!("{k}=***")
            })
            .collect();
        out.push('?');
        out.push_str(&keys.join("&"));
    }
    out
}

/// A path segment or query key that cannot hold a secret: empty, or up to 20 characters of
/// lower-case ASCII letters, digits after a letter (`v1`), `-`, `_` and `.`.
fn plain_word(s: &str) -> bool {
    s.len() <= 20
        && s.chars().next().is_none_or(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_' || c == '.')
        || (s.len() <= 3
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s[1..].chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_every_part_of_a_url_are_hidden() {
        for (input, shown) in [
            (
                "postgres://deploy:s3cr%2Ft@db.internal:5432/shop?sslmode=require",
                "postgres://db.internal:5432/shop?sslmode=***",
            ),
            (
                "https://hooks.slack.example/services/T0AB12CD/B0XY98ZW/q1w2e3r4t5y6u7i8o9p0",
                "https://hooks.slack.example/services/***/***/***",
            ),
            (
                "https://alerts.example/api/silence?service=api&minutes=20",
                "https://alerts.example/api/silence?service=***&minutes=***",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
            ("http://[::1]:9/metrics", "http://[::1]:9/metrics"),
            ("mailto:ops@example.com", "mailto:***"),
            ("not a url with a p4ssw0rd", "<not a URL, 25 characters>"),
            ("https://h.example/ABCDEF", "https://h.example/***"),
            ("https://h.example/api/v2/x", "https://h.example/api/v2/x"),
        ] {
            assert_eq!(url(input), shown, "{input}");
        }
    }
}
