//! Query templates: `{{target}}`, `{{baseline}}`, `{{version}}`, `{{window}}` and custom variables.

use std::collections::BTreeMap;
use std::time::Duration;

use deploy_core::{Error, ErrorKind, TargetId};

/// The variables every template may use.
pub(crate) const BUILTIN: &[&str] = &["target", "baseline", "version", "window"];

/// A parsed template: literal text and `{{name}}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Parse `text`; every placeholder must be a built-in variable or one of `custom`.
    pub(crate) fn parse<'a>(
        text: &str,
        custom: impl IntoIterator<Item = &'a String>,
    ) -> Result<Self, Error> {
        let custom: Vec<&String> = custom.into_iter().collect();
        let bad = |cause: String| {
            Error::new(
                ErrorKind::InvalidInput,
                "parse",
                format!("query template {text:?}"),
                cause,
            )
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| bad("a `{{` is never closed by `}}`".into()))?;
            let name = after[..end].trim();
            if !BUILTIN.contains(&name) && !custom.iter().any(|c| c.as_str() == name) {
                return Err(bad(format!(
                    "unknown variable `{{{{{name}}}}}`; known: {}",
                    BUILTIN
                        .iter()
                        .copied()
                        .chain(custom.iter().map(|s| s.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Fill in the placeholders.
    pub(crate) fn render(&self, vars: &BTreeMap<String, String>) -> String {
        let mut out = String::with_capacity(self.text.len());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                // Parsing checked every name; a missing value renders empty.
                Part::Var(v) => out.push_str(vars.get(v).map(String::as_str).unwrap_or("")),
            }
        }
        out
    }
}

/// Target ids as a PromQL regular expression inside a double-quoted string: `blue|green`, with
/// `.` and `+` escaped (`web\\.1`), for use with `=~`. No ids matches every value (`.*`).
pub(crate) fn ids_regex(ids: &[TargetId]) -> String {
    if ids.is_empty() {
        return ".*".to_owned();
    }
    ids.iter()
        .map(|id| {
            let mut s = String::new();
            for c in id.as_str().chars() {
                if matches!(c, '.' | '+') {
                    // One backslash for the PromQL string, one for the regular expression.
                    s.push_str("\\\\");
                }
                s.push(c);
            }
            s
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// A duration as PromQL writes it: `250ms`, `10s`, `5m`, `1h`.
pub(crate) fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// How far back a PromQL query looks from its evaluation time: the largest range selector
/// (`[5m]`) plus the largest `offset`, plus the ranges of the subqueries (`[30m:1m]`) around
/// them. An upper bound when subqueries are side by side rather than nested (their ranges are
/// added); ranges inside string literals and comments are not ranges. Durations are PromQL's
/// (`1h30m`, `90s`, `250ms`, `2d`, `1w`, `1y`, or a number of seconds).
pub(crate) fn query_lookback(query: &str) -> Duration {
    let mut range = Duration::ZERO;
    let mut offset = Duration::ZERO;
    let mut subqueries = Duration::ZERO;
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            quote @ ('"' | '\'' | '`') => {
                // Skip the string; backslash escapes in all but raw (backtick) strings.
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' && quote != '`' {
                        2
                    } else {
                        1
                    };
                }
                i += 1;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .map_or(chars.len(), |p| i + p);
                let inside: String = chars[i + 1..end].iter().collect();
                match inside.split_once(':') {
                    Some((r, _)) => {
                        subqueries = subqueries.saturating_add(parse_promql_duration(r.trim()))
                    }
                    None => range = range.max(parse_promql_duration(inside.trim())),
                }
                i = end + 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word.eq_ignore_ascii_case("offset") {
                    while i < chars.len() && chars[i].is_whitespace() {
                        i += 1;
                    }
                    // A negative offset looks forward, not back.
                    let negative = chars.get(i) == Some(&'-');
                    let start = i;
                    while i < chars.len()
                        && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '-'))
                    {
                        i += 1;
                    }
                    if !negative {
                        let d: String = chars[start..i].iter().collect();
                        offset = offset.max(parse_promql_duration(&d));
                    }
                }
            }
            _ => i += 1,
        }
    }
    range.saturating_add(offset).saturating_add(subqueries)
}

/// A PromQL duration (`1h30m`, `250ms`, a number of seconds); zero if it is not one (the query
/// will then be refused by Prometheus itself, which is reported when the gate runs).
fn parse_promql_duration(s: &str) -> Duration {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let Ok(n) = rest[..digits].parse::<u64>() else {
            return Duration::ZERO;
        };
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs_per_unit: f64 = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return Duration::ZERO,
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(
            Duration::try_from_secs_f64(n as f64 * secs_per_unit).unwrap_or(Duration::MAX),
        );
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_builtins_and_custom_variables() {
        let custom = vec!["job".to_owned()];
        let t = Template::parse(
            r#"rate(x{job="{{job}}",target=~"{{ target }}"}[{{window}}])"#,
            &custom,
        )
        .unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("job".to_owned(), "api".to_owned());
        vars.insert(
            "target".to_owned(),
            ids_regex(&[TargetId::new("web.1").unwrap(), TargetId::new("b").unwrap()]),
        );
        vars.insert(
            "window".to_owned(),
            promql_duration(Duration::from_secs(300)),
        );
        assert_eq!(
            t.render(&vars),
            r#"rate(x{job="api",target=~"web\\.1|b"}[5m])"#
        );
    }

    #[test]
    fn unknown_or_unclosed_placeholders_are_rejected() {
        let e = Template::parse("x{{nope}}", &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("unknown variable `{{nope}}`"), "{e}");
        let e = Template::parse("x{{target", &[]).unwrap_err();
        assert!(e.to_string().contains("never closed"), "{e}");
    }

    #[test]
    fn lookback_is_the_largest_range_with_offset_and_subqueries() {
        let l = |q| query_lookback(q).as_secs_f64();
        assert_eq!(l("up"), 0.0);
        assert_eq!(l("rate(x[5m])"), 300.0);
        assert_eq!(l("rate(x[5m]) / rate(y[1h30m])"), 5400.0);
        assert_eq!(l("rate(x[5m] offset 10m)"), 900.0);
        assert_eq!(l("rate(x[5m] OFFSET -10m)"), 300.0);
        assert_eq!(l("max_over_time(rate(x[1m])[30m:15s])"), 1860.0);
        assert_eq!(l("max_over_time(x[30m:])"), 1800.0);
        assert_eq!(l("rate(x[250ms])"), 0.25);
        assert_eq!(l("rate(x[90])"), 90.0);
        assert_eq!(
            l(r#"rate(x{path="/a[9h]",b='[1d]',c=`[2w]`}[2m]) # [1y]"#),
            120.0
        );
        assert_eq!(l(r#"rate(x{path="a\"[9h]"}[2m])"#), 120.0);
        assert_eq!(l("offset_seconds[3m]"), 180.0);
        assert_eq!(l("rate(x[bogus])"), 0.0);
        assert_eq!(l("rate(x[5m"), 300.0);
    }

    #[test]
    fn durations_use_the_largest_exact_unit() {
        let d = |ms| promql_duration(Duration::from_millis(ms));
        assert_eq!(d(250), "250ms");
        assert_eq!(d(10_000), "10s");
        assert_eq!(d(300_000), "5m");
        assert_eq!(d(90_000), "90s");
        assert_eq!(d(7_200_000), "2h");
        assert_eq!(d(0), "0s");
    }
}
