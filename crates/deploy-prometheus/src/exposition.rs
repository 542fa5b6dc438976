//! The Prometheus text exposition format (version 0.0.4), read as its specification says: label
//! values with any UTF-8 text and the `\\`, `\"` and `\n` escapes, blanks between tokens, a
//! trailing comma in a label list, values as Go's `ParseFloat` reads them (`NaN`, `+Inf`, hex
//! floats), optional millisecond timestamps, `# HELP` and `# TYPE` lines.
//!
//! Why not a crate: `prometheus-parse` 0.2 finds labels with a regular expression that stops at
//! the first `}` and splits them on `,`, so a line whose label values hold those characters is
//! dropped or misread without an error (a 50 % error rate read as 0); `openmetrics-parser` 0.5
//! refuses ordinary pages (series of one family with different label sets) and is LGPL-3.0;
//! `prom_text_format_parser` 0.1 (one release, 2023) keeps escapes unresolved and refuses `{}`
//! and a trailing comma. The format is small and fully specified, so this module follows the
//! specification and `expfmt`'s reference parser, and it is tested by property tests against
//! pages rendered by the format's own escaping rules.
//!
//! Like Prometheus' scrape, a page that breaks the format anywhere is refused as a whole, with
//! the line and the reason: a gate must not judge a page it could only partly read.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// The type a `# TYPE` line gives a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            "untyped" => Self::Untyped,
            _ => return None,
        })
    }

    #[cfg(test)]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The metric name (`http_requests_total`, `x_bucket`).
    pub(crate) name: String,
    /// Labels in page order, values unescaped.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
    /// Milliseconds since the epoch, if the line has one.
    pub(crate) timestamp_ms: Option<i64>,
    /// 1-based line number, for messages.
    pub(crate) line: usize,
}

/// A parsed page.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    /// Samples in page order.
    pub(crate) samples: Vec<Sample>,
    /// `# TYPE` lines, by family name.
    pub(crate) types: HashMap<String, MetricType>,
    /// `# HELP` lines (unescaped), by family name.
    pub(crate) help: HashMap<String, String>,
}

/// Why a page is not in the format: the 1-based line and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parse a whole page.
pub(crate) fn parse(text: &str) -> Result<Page, ParseError> {
    let mut parser = Parser::default();
    let mut rest = text;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let Some(end) = rest.find('\n') else {
            return Err(ParseError {
                line,
                message: "the page does not end with a line feed (was it cut short?)".into(),
            });
        };
        parser
            .line(&rest[..end], line)
            .map_err(|message| ParseError { line, message })?;
        rest = &rest[end + 1..];
    }
    Ok(parser.page)
}

#[derive(Default)]
struct Parser {
    page: Page,
    /// Metric names that had a sample, to refuse a `# TYPE` after them.
    seen: HashSet<String>,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A cursor over one line (without its line feed). Every position it stops at is an ASCII
/// byte or the end, so slicing the `&str` there is always on a character boundary.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn skip_blanks(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(is_blank) {
            self.i += 1;
        }
        self.i > start
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    /// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), or a label name without `:`.
    fn name(&mut self, colon: bool) -> Option<&'a str> {
        let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':');
        let start = self.i;
        if !self.peek().is_some_and(ok_first) {
            return None;
        }
        self.i += 1;
        while self
            .peek()
            .is_some_and(|b| ok_first(b) || b.is_ascii_digit())
        {
            self.i += 1;
        }
        Some(&self.s[start..self.i])
    }

    /// A token up to the next blank or the end.
    fn token(&mut self) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(|b| !is_blank(b)) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// What is at the cursor, for messages.
    fn found(&self) -> String {
        match self.rest().chars().next() {
            None => "the end of the line".into(),
            Some(c) => format!("{c:?}"),
        }
    }
}

impl Parser {
    fn line(&mut self, line: &str, number: usize) -> Result<(), String> {
        let mut c = Cursor { s: line, i: 0 };
        c.skip_blanks();
        match c.peek() {
            None => Ok(()),
            Some(b'#') => {
                c.i += 1;
                self.comment(c)
            }
            Some(_) => self.sample(c, number),
        }
    }

    fn comment(&mut self, mut c: Cursor<'_>) -> Result<(), String> {
        c.skip_blanks();
        let keyword = c.token();
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(()); // an ordinary comment
        }
        c.skip_blanks();
        let name = c
            .name(true)
            .ok_or_else(|| {
                format!(
                    "expected a metric name after {keyword}, found {}",
                    c.found()
                )
            })?
            .to_owned();
        if !c.at_end() && !c.skip_blanks() {
            return Err(format!(
                "unexpected {} in the metric name of a {keyword} line",
                c.found()
            ));
        }
        if keyword == "HELP" {
            if self.page.help.contains_key(&name) {
                return Err(format!("a second HELP line for {name}"));
            }
            self.page.help.insert(name, unescape_help(c.rest()));
            return Ok(());
        }
        let kind = c.token();
        let ty = MetricType::parse(kind).ok_or_else(|| {
            format!(
                "unknown type {kind:?} for {name} (counter, gauge, histogram, summary or untyped)"
            )
        })?;
        c.skip_blanks();
        if !c.at_end() {
            return Err(format!("unexpected {:?} after the type", c.rest()));
        }
        if self.page.types.contains_key(&name) {
            return Err(format!("a second TYPE line for {name}"));
        }
        let suffixes: &[&str] = match ty {
            MetricType::Histogram => &["", "_bucket", "_sum", "_count"],
            MetricType::Summary => &["", "_sum", "_count"],
            _ => &[""],
        };
        if let Some(s) = suffixes
            .iter()
            .find(|s| self.seen.contains(&format!("{name}{s}")))
        {
            return Err(format!(
                "the TYPE line for {name} comes after a sample of {name}{s}; it must come first"
            ));
        }
        self.page.types.insert(name, ty);
        Ok(())
    }

    fn sample(&mut self, mut c: Cursor<'_>, line: usize) -> Result<(), String> {
        let name = c
            .name(true)
            .ok_or_else(|| format!("expected a metric name, found {}", c.found()))?
            .to_owned();
        let blank = c.skip_blanks();
        if c.at_end() {
            return Err(format!("{name} has no value"));
        }
        let mut labels = Vec::new();
        if c.peek() == Some(b'{') {
            c.i += 1;
            labels = label_list(&mut c)?;
            c.skip_blanks();
        } else if !blank {
            return Err(format!(
                "expected a blank, `{{` or the value after {name}, found {}",
                c.found()
            ));
        }
        let value_token = c.token();
        if value_token.is_empty() {
            return Err(format!("{name} has no value"));
        }
        let value = parse_go_float(value_token)
            .ok_or_else(|| format!("the value {value_token:?} of {name} is not a number"))?;
        c.skip_blanks();
        let timestamp_ms = if c.at_end() {
            None
        } else {
            let t = c.token();
            let ts = t.parse::<i64>().map_err(|_| {
                format!("the timestamp {t:?} of {name} is not an integer of milliseconds")
            })?;
            c.skip_blanks();
            if !c.at_end() {
                return Err(format!(
                    "unexpected {:?} after the timestamp of {name}",
                    c.rest()
                ));
            }
            Some(ts)
        };
        self.check_typed(&name, &labels)?;
        if !self.seen.contains(&name) {
            self.seen.insert(name.clone());
        }
        self.page.samples.push(Sample {
            name,
            labels,
            value,
            timestamp_ms,
            line,
        });
        Ok(())
    }

    /// A bucket of a declared histogram needs a numeric `le`, a quantile of a declared summary a
    /// numeric `quantile` (as expfmt checks).
    fn check_typed(&self, name: &str, labels: &[(String, String)]) -> Result<(), String> {
        let (family, label) = if let Some(base) = name.strip_suffix("_bucket")
            && self.page.types.get(base) == Some(&MetricType::Histogram)
        {
            (base, "le")
        } else if self.page.types.get(name) == Some(&MetricType::Summary) {
            (name, "quantile")
        } else {
            return Ok(());
        };
        match labels.iter().find(|(k, _)| k == label) {
            None => Err(format!("{name} of {family} has no {label} label")),
            Some((_, v)) if parse_go_float(v).is_none_or(f64::is_nan) => {
                Err(format!("the {label} label {v:?} of {name} is not a number"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The labels after `{`, up to and including `}`.
fn label_list(c: &mut Cursor<'_>) -> Result<Vec<(String, String)>, String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        c.skip_blanks();
        if c.peek() == Some(b'}') {
            c.i += 1;
            return Ok(labels);
        }
        let name = c
            .name(false)
            .ok_or_else(|| format!("expected a label name or `}}`, found {}", c.found()))?;
        if name == "__name__" {
            return Err("the label name __name__ is reserved".into());
        }
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("the label {name} appears twice"));
        }
        c.skip_blanks();
        if c.peek() != Some(b'=') {
            return Err(format!(
                "expected `=` after the label name {name}, found {}",
                c.found()
            ));
        }
        c.i += 1;
        c.skip_blanks();
        if c.peek() != Some(b'"') {
            return Err(format!(
                "expected `\"` to open the value of label {name}, found {}",
                c.found()
            ));
        }
        c.i += 1;
        let value = label_value(c, name)?;
        labels.push((name.to_owned(), value));
        c.skip_blanks();
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b'}') => {}
            _ => {
                return Err(format!(
                    "expected `,` or `}}` after the value of label {name}, found {}",
                    c.found()
                ));
            }
        }
    }
}

/// A label value after its opening quote, up to and including the closing quote, unescaped.
fn label_value(c: &mut Cursor<'_>, name: &str) -> Result<String, String> {
    let bytes = c.s.as_bytes();
    let mut out = String::new();
    let mut start = c.i;
    while let Some(&b) = bytes.get(c.i) {
        match b {
            b'"' => {
                out.push_str(&c.s[start..c.i]);
                c.i += 1;
                return Ok(out);
            }
            b'\\' => {
                out.push_str(&c.s[start..c.i]);
                match bytes.get(c.i + 1) {
                    Some(b'\\') => out.push('\\'),
                    Some(b'"') => out.push('"'),
                    Some(b'n') => out.push('\n'),
                    other => {
                        let what = other.map_or("the end of the line".to_owned(), |_| {
                            format!("\\{}", c.s[c.i + 1..].chars().next().unwrap_or(' '))
                        });
                        return Err(format!(
                            "invalid escape {what:?} in the value of label {name} (only \\\\, \\\" and \\n are allowed)"
                        ));
                    }
                }
                c.i += 2;
                start = c.i;
            }
            _ => c.i += 1,
        }
    }
    Err(format!(
        "the value of label {name} is not closed by `\"` before the end of the line"
    ))
}

/// A docstring: `\\` and `\n` are escapes; any other backslash is kept as it is (the docstring
/// is read by no gate, and Prometheus itself keeps it raw).
fn unescape_help(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.clone().next() {
            Some('\\') => {
                out.push('\\');
                chars.next();
            }
            Some('n') => {
                out.push('\n');
                chars.next();
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// A number as Go's `strconv.ParseFloat(s, 64)` reads it, which is what the format specifies:
/// decimal (correctly rounded), `NaN`, `Inf`/`Infinity` with an optional sign (any case), and
/// hexadecimal floats with a `p` exponent (`0x1.8p3`), with `_` between digits only after a
/// base prefix. Out of range (`1e400`) is an error, as in Go; `None` for anything else.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let (negative, body) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let signed = |v: f64| if negative { -v } else { v };
    if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
        return Some(signed(f64::INFINITY));
    }
    if body.eq_ignore_ascii_case("nan") {
        // Go accepts NaN only without a sign.
        return (body.len() == s.len()).then_some(f64::NAN);
    }
    if body.len() > 2 && (body.starts_with("0x") || body.starts_with("0X")) {
        return parse_hex_float(&body[2..]).map(signed);
    }
    // Decimal: digits, one point, an exponent; Rust's parser reads the same grammar (and
    // rounds correctly), but also words such as "inf" and "nan" in other places, so the
    // characters are checked first.
    let mut digits = 0;
    let mut point = false;
    let mut exp_at = None;
    for (i, b) in body.bytes().enumerate() {
        match b {
            b'0'..=b'9' => {
                if exp_at.is_none() {
                    digits += 1;
                }
            }
            b'.' if !point && exp_at.is_none() => point = true,
            b'e' | b'E' if exp_at.is_none() && digits > 0 => exp_at = Some(i),
            b'+' | b'-' if exp_at == Some(i.wrapping_sub(1)) => {}
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let v: f64 = body.parse().ok()?;
    v.is_finite().then(|| signed(v))
}

/// The part of a hexadecimal float after `0x`: hex digits with an optional point, `_` between
/// digits, and a mandatory binary exponent `p[+-]digits`.
fn parse_hex_float(s: &str) -> Option<f64> {
    let (mantissa, exponent) = s.split_once(['p', 'P'])?;
    let e = exponent.as_bytes();
    let digit_at = |i: usize| e.get(i).is_some_and(u8::is_ascii_digit);
    if (0..e.len()).any(|i| e[i] == b'_' && !(i > 0 && digit_at(i - 1) && digit_at(i + 1))) {
        return None;
    }
    let exponent = exponent.replace('_', "");
    let exp: i64 = if exponent.starts_with('+') || exponent.starts_with('-') {
        exponent
            .get(1..)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?;
        exponent.parse().unwrap_or(if exponent.starts_with('-') {
            i64::MIN / 2
        } else {
            i64::MAX / 2
        })
    } else {
        if exponent.is_empty() || !exponent.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        exponent.parse().unwrap_or(i64::MAX / 2)
    };
    // `_` only between digits (Go's underscoreOK, with the prefix counting as a digit).
    let m = mantissa.as_bytes();
    for (i, &b) in m.iter().enumerate() {
        if b == b'_' {
            let prev_ok = i == 0 || m[i - 1].is_ascii_hexdigit();
            let next_ok = m.get(i + 1).is_some_and(u8::is_ascii_hexdigit);
            if !prev_ok || !next_ok {
                return None;
            }
        }
    }
    // Keep the first 15 significant hex digits (60 bits) exactly and remember whether any
    // non-zero digit was dropped (sticky bit), then round once to 53 bits.
    let mut bits: u64 = 0;
    let mut kept = 0;
    let mut sticky = false;
    let mut scale: i64 = 0; // binary exponent adjustment
    let mut any_digit = false;
    let mut point = false;
    for &b in m {
        match b {
            b'_' => {}
            b'.' if !point => point = true,
            _ => {
                let d = u64::from(char::from(b).to_digit(16)?);
                any_digit = true;
                if bits == 0 && d == 0 {
                    if point {
                        scale -= 4;
                    }
                    continue;
                }
                if kept < 15 {
                    bits = bits << 4 | d;
                    kept += 1;
                    if point {
                        scale -= 4;
                    }
                } else {
                    sticky |= d != 0;
                    if !point {
                        scale += 4;
                    }
                }
            }
        }
    }
    if !any_digit {
        return None;
    }
    if bits == 0 {
        return Some(0.0);
    }
    let exp = exp.saturating_add(scale);
    // Normalise to 63 bits with the sticky bit in bit 0, then round to nearest even.
    let shift = bits.leading_zeros() - 1;
    let mut m = bits << shift | u64::from(sticky);
    let mut e = exp - i64::from(shift); // value = m * 2^e
    // Bits beyond 53 (more for subnormals) are rounded off.
    let top = 63 - 1; // index of the leading bit
    let value_exp = e + top; // exponent of the leading bit
    let mut drop = top - 52;
    if value_exp < -1022 {
        drop += -1022 - value_exp;
    }
    if drop > 63 {
        return Some(0.0);
    }
    if drop > 0 {
        let drop = drop as u32;
        let half = 1u64 << (drop - 1);
        let rem = m & ((1u64 << drop) - 1);
        m >>= drop;
        if rem > half || (rem == half && m & 1 == 1) {
            m += 1;
        }
        e += i64::from(drop);
    }
    // m * 2^e, with m < 2^54: exact in f64 unless it overflows.
    let v = (m as f64) * pow2(e)?;
    v.is_finite().then_some(v)
}

/// 2^e as an f64, in two steps so that subnormal results are exact; `None` when it overflows.
fn pow2(e: i64) -> Option<f64> {
    if e > 1100 {
        return None;
    }
    if e < -1200 {
        return Some(0.0);
    }
    let half = (e / 2) as i32;
    Some(2f64.powi(half) * 2f64.powi(e as i32 - half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(line: &str) -> Result<Sample, ParseError> {
        let page = parse(&format!("{line}\n"))?;
        assert_eq!(page.samples.len(), 1, "{line}");
        Ok(page.samples.into_iter().next().unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_the_specifications_example_page() {
        // The example of the format's documentation (exposition_formats.md), verbatim.
        let page = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;
        let p = parse(page).unwrap();
        assert_eq!(p.samples.len(), 20);
        assert_eq!(p.samples[1].value, 3.0);
        assert_eq!(p.samples[1].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(
            p.samples[2].labels,
            labels(&[
                ("path", r"C:\DIR\FILE.TXT"),
                ("error", "Cannot find file:\n\"FILE.TXT\"")
            ])
        );
        assert_eq!(p.samples[3].labels, vec![]);
        assert_eq!(p.samples[4].value, f64::INFINITY);
        assert_eq!(p.samples[4].timestamp_ms, Some(-3_982_045));
        assert_eq!(
            p.types["http_request_duration_seconds"],
            MetricType::Histogram
        );
        assert_eq!(p.types["rpc_duration_seconds"], MetricType::Summary);
        assert_eq!(
            p.help["http_requests_total"],
            "The total number of HTTP requests."
        );
        assert_eq!(p.samples[19].value, 2693.0);
        assert_eq!(p.samples[19].line, 36);
    }

    #[test]
    fn label_values_keep_commas_braces_quotes_backslashes_and_newlines() {
        let s =
            one(r#"x{a="1,2}3",b="}",c=",",d="q\"uote",e="back\\slash",f="new\nline"} 7"#).unwrap();
        assert_eq!(
            s.labels,
            labels(&[
                ("a", "1,2}3"),
                ("b", "}"),
                ("c", ","),
                ("d", "q\"uote"),
                ("e", "back\\slash"),
                ("f", "new\nline"),
            ])
        );
        assert_eq!(s.value, 7.0);
        // Blanks between tokens, a trailing comma, empty braces, UTF-8.
        let s = one("  x { a = \"é ∑ 🙂\" , b=\"\" , }\t-1.5e3   42  ").unwrap();
        assert_eq!(s.labels, labels(&[("a", "é ∑ 🙂"), ("b", "")]));
        assert_eq!((s.value, s.timestamp_ms), (-1500.0, Some(42)));
        assert_eq!(one("x{} 1").unwrap().labels, vec![]);
        assert_eq!(one("x{}1").unwrap().value, 1.0);
        assert_eq!(one("ns:sub_metric 0x1p-2").unwrap().value, 0.25);
    }

    #[test]
    fn values_follow_go_parse_float() {
        let ok = [
            ("NaN", f64::NAN),
            ("nan", f64::NAN),
            ("+Inf", f64::INFINITY),
            ("-inf", f64::NEG_INFINITY),
            ("Infinity", f64::INFINITY),
            ("-INFINITY", f64::NEG_INFINITY),
            ("1", 1.0),
            ("-0", -0.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("+2.5e+2", 250.0),
            ("1e-400", 0.0),
            ("0x1p0", 1.0),
            ("0x1.8p1", 3.0),
            ("-0X_1p4", -16.0),
            ("0x.8p1", 1.0),
            ("0x1_0p0", 16.0),
            ("0x1.fffffffffffffp1023", f64::MAX),
            ("0x1p-1074", 5e-324),
            ("0x1p-1_0", 1.0 / 1024.0),
            // 16 digits: one past what is kept exactly, rounded once as `as f64` does.
            ("0x123456789abcdef1p0", 0x1234_5678_9abc_def1_u64 as f64),
            ("0x1.00000000000008p0", 1.0), // a tie, to even
            ("0x1.000000000000081p0", 1.0 + f64::EPSILON), // past the tie (sticky bit)
        ];
        for (s, want) in ok {
            let got = parse_go_float(s).unwrap_or_else(|| panic!("{s} refused"));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{s}: {got} != {want}"
            );
        }
        for bad in [
            "",
            "+",
            "-",
            ".",
            "e5",
            "1e",
            "1e+",
            "1_000",
            "+NaN",
            "-nan",
            "0x1",
            "0x",
            "0xp1",
            "0x1p",
            "0x1__0p0",
            "0x_p0",
            "1.2.3",
            "12a",
            "in",
            "infinit",
            "1e400",
            "-1e309",
            "0x1p1024",
            "0x1.fffffffffffff8p1023",
            "0x1p_1",
            "0x1p1_",
            "１",
            "0b101",
            "0o17",
            "1,5",
        ] {
            assert!(parse_go_float(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn malformed_lines_are_refused_with_the_line_and_the_reason() {
        let cases = [
            ("x{a=\"1\"} 1\ny{a=\"unclosed} 1\n", 2, "not closed"),
            ("x{a=\"\\t\"} 1\n", 1, "invalid escape"),
            ("x{a=\"1\"\n", 1, "expected `,` or `}`"),
            ("x{a=1} 1\n", 1, "expected `\"`"),
            ("x{a=\"1\" b=\"2\"} 1\n", 1, "expected `,` or `}`"),
            ("x{a=\"1\",a=\"2\"} 1\n", 1, "appears twice"),
            ("x{__name__=\"y\"} 1\n", 1, "reserved"),
            ("x{1a=\"1\"} 1\n", 1, "expected a label name"),
            ("x 1 2 3\n", 1, "after the timestamp"),
            ("x 1.5.5\n", 1, "is not a number"),
            ("x 1 1.5\n", 1, "not an integer"),
            ("x\n", 1, "has no value"),
            ("x-y 1\n", 1, "expected a blank"),
            ("1x 1\n", 1, "expected a metric name"),
            ("x 1", 1, "does not end with a line feed"),
            ("x 1\r\n", 1, "is not a number"),
            ("# TYPE x counter\n# TYPE x gauge\n", 2, "second TYPE"),
            ("# TYPE x countr\n", 1, "unknown type"),
            ("# TYPE x counter extra\n", 1, "unexpected"),
            ("x 1\n# TYPE x counter\n", 2, "must come first"),
            (
                "x_bucket{le=\"1\"} 1\n# TYPE x histogram\n",
                2,
                "must come first",
            ),
            ("# HELP x a\n# HELP x b\n", 2, "second HELP"),
            ("# HELP\n", 1, "expected a metric name"),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
                2,
                "le label \"x\"",
            ),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "no le label"),
            ("# TYPE s summary\ns 1\n", 2, "no quantile label"),
        ];
        for (page, line, text) in cases {
            let e = parse(page).unwrap_err();
            assert_eq!(e.line, line, "{page:?}: {e}");
            assert!(e.message.contains(text), "{page:?}: {e} lacks {text:?}");
        }
        // Comments, blank lines and an empty page are fine; so is an untyped `_bucket`.
        let p = parse("# a comment\n\n   \n#\n# HELPx\nx_bucket 1\n").unwrap();
        assert_eq!(p.samples.len(), 1);
        assert_eq!(parse("").unwrap(), Page::default());
        assert_eq!(
            parse("# HELP x a \\\\ b \\n c \\t d\n").unwrap().help["x"],
            "a \\ b \n c \\t d"
        );
    }

    // ---- property tests: render by the format's rules, parse, compare exactly ----

    /// A label value as the format escapes it.
    fn escape_label(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    /// Go's `strconv.FormatFloat(v, 'g', -1, 64)` up to spelling, as client libraries write.
    fn render_value(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v == f64::INFINITY {
            "+Inf".into()
        } else if v == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            format!("{v:e}")
        }
    }

    fn label_value_strategy() -> impl Strategy<Value = String> {
        // Plenty of the characters that matter, and any other text.
        prop_oneof![
            proptest::collection::vec(
                prop_oneof![
                    Just(','),
                    Just('}'),
                    Just('{'),
                    Just('"'),
                    Just('\\'),
                    Just('\n'),
                    Just('='),
                    Just(' '),
                    Just('#'),
                    Just('é'),
                    any::<char>()
                ],
                0..12
            )
            .prop_map(|v| v.into_iter().collect()),
            any::<String>(),
        ]
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}"
    }

    fn label_name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}".prop_filter("reserved", |n| n != "__name__")
    }

    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (0u64..1_000_000).prop_map(|v| v as f64),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
    }

    type GenSample = (
        String,
        Vec<(String, String)>,
        f64,
        Option<i64>,
        (bool, bool, bool),
    );

    fn sample_strategy() -> impl Strategy<Value = GenSample> {
        (
            name_strategy(),
            proptest::collection::btree_map(label_name_strategy(), label_value_strategy(), 0..5)
                .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
            value_strategy(),
            proptest::option::of(any::<i64>()),
            // Layout choices: blanks around tokens, trailing comma, tabs.
            (any::<bool>(), any::<bool>(), any::<bool>()),
        )
    }

    fn render_sample((name, labels, value, ts, (blanks, comma, tabs)): &GenSample) -> String {
        let sep = if *tabs { "\t" } else { " " };
        let pad = if *blanks { sep } else { "" };
        let mut s = String::new();
        if *blanks {
            s.push_str(sep);
        }
        s.push_str(name);
        if !labels.is_empty() || *comma {
            s.push('{');
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{pad}{k}{pad}={pad}\"{}\"{pad}", escape_label(v)))
                .collect();
            s.push_str(&parts.join(","));
            if *comma && !labels.is_empty() {
                s.push(',');
            }
            s.push('}');
        }
        s.push_str(sep);
        s.push_str(&render_value(*value));
        if let Some(t) = ts {
            s.push_str(sep);
            s.push_str(&t.to_string());
        }
        if *blanks {
            s.push_str(sep);
        }
        s.push('\n');
        s
    }

    fn same_value(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn rendered_pages_parse_back_exactly(
            samples in proptest::collection::vec(sample_strategy(), 0..8),
            help in proptest::option::of(("[a-z_]{1,8}", label_value_strategy())),
            comment in label_value_strategy(),
        ) {
            let mut page = String::new();
            // A comment line holds anything but a line feed.
            page.push_str(&format!("# c {}\n", comment.replace('\n', " ")));
            if let Some((name, text)) = &help {
                let escaped = text.replace('\\', "\\\\").replace('\n', "\\n");
                page.push_str(&format!("# HELP {name} {escaped}\n# TYPE {name} gauge\n"));
            }
            for s in &samples {
                page.push_str(&render_sample(s));
            }
            let parsed = parse(&page).map_err(|e| TestCaseError::fail(format!("{e}\n{page}")))?;
            prop_assert_eq!(parsed.samples.len(), samples.len());
            for (got, want) in parsed.samples.iter().zip(&samples) {
                prop_assert_eq!(&got.name, &want.0);
                prop_assert_eq!(&got.labels, &want.1);
                prop_assert!(same_value(got.value, want.2), "{} != {}", got.value, want.2);
                prop_assert_eq!(got.timestamp_ms, want.3);
            }
            if let Some((name, text)) = &help {
                // Leading blanks of the docstring separate it from the name.
                prop_assert_eq!(&parsed.help[name], text.trim_start_matches([' ', '\t']));
                prop_assert_eq!(parsed.types[name].as_str(), "gauge");
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
        }

        #[test]
        fn mangled_valid_pages_never_panic_and_errors_name_a_line(
            samples in proptest::collection::vec(sample_strategy(), 1..5),
            cut in any::<prop::sample::Index>(),
            insert in prop_oneof![Just('"'), Just('\\'), Just('{'), Just('}'), Just(','), Just('\n'), Just('='), Just(' '), any::<char>()],
        ) {
            let page: String = samples.iter().map(render_sample).collect();
            let chars: Vec<char> = page.chars().collect();
            let at = cut.index(chars.len());
            let mangled: String = chars[..at].iter().chain([insert].iter()).chain(chars[at..].iter()).collect();
            if let Err(e) = parse(&mangled) {
                prop_assert!(e.line >= 1 && e.line <= mangled.split('\n').count());
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn decimal_values_round_trip_like_go(v in any::<f64>()) {
            for text in [format!("{v:e}"), format!("{v}"), format!("{v:?}")] {
                let got = parse_go_float(&text);
                if v.is_finite() {
                    prop_assert!(got.is_some_and(|g| same_value(g, v)), "{text}: {got:?}");
                }
            }
        }

        #[test]
        fn hex_floats_are_exact(v in any::<f64>().prop_filter("finite", |v| v.is_finite() && *v != 0.0)) {
            // Render v as Go's %x does: 0x1.<13 hex digits>p<exp> (normal numbers).
            let bits = v.abs().to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i64;
            let frac = bits & ((1u64 << 52) - 1);
            let (lead, e) = if exp == 0 { (0, -1022) } else { (1, exp - 1023) };
            let text = format!("{}0x{lead}.{frac:013x}p{e:+}", if v < 0.0 { "-" } else { "" });
            prop_assert!(parse_go_float(&text).is_some_and(|g| same_value(g, v)), "{text}");
        }
    }
}
