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
pub fn promql_duration(d: Duration) -> String {
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
