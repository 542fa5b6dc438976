//! Numbers as people read them: rounded, with their unit (`4.9 %`, `4.95 ms`, `2.2 s`).
//!
//! Gates measure floats (`0.19672131147540983`), the engine measures [`Duration`]s; every text
//! meant for a person (a verdict's reason, the command line's lines, the HTML report) goes
//! through these functions, so that one value reads the same everywhere.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a gate's value measures, so that it can be shown with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unit {
    /// A share of a whole: 0.049 is shown as `4.9 %`.
    Ratio,
    /// Seconds: 0.00495 is shown as `4.95 ms`, 2.2 as `2.2 s`.
    Seconds,
}

/// `value` rounded to three significant digits, without an exponent for everyday magnitudes
/// and without trailing zeros: `0.197`, `12.3`, `1230`, `0.000123`.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return if value.is_nan() {
            "NaN".to_owned()
        } else if value > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
    }
    if value == 0.0 {
        return "0".to_owned();
    }
    let magnitude = value.abs().log10().floor() as i32;
    if !(-6..15).contains(&magnitude) {
        return format!("{value:.2e}");
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    if text == "-0" { "0".to_owned() } else { text }
}

/// `value` in `unit`, rounded: `4.9 %`, `4.95 ms`, `2.2 s`; a plain [`number`] without a unit.
pub fn quantity(value: f64, unit: Option<Unit>) -> String {
    match unit {
        Some(Unit::Ratio) if value.is_finite() => format!("{} %", number(value * 100.0)),
        Some(Unit::Seconds) if value.is_finite() && value >= 0.0 => {
            duration(Duration::from_secs_f64(value))
        }
        _ => number(value),
    }
}

/// A duration rounded for a person: `0 s`, `950 µs`, `4.95 ms`, `2.2 s`, `12 s`, `1 min 5 s`,
/// `2 h 3 min`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d.is_zero() {
        "0 s".to_owned()
    } else if s < 1e-3 {
        format!("{} µs", number(s * 1e6))
    } else if s < 1.0 {
        format!("{} ms", number(s * 1e3))
    } else if s < 60.0 {
        format!("{} s", number(s))
    } else if s < 3600.0 {
        let whole = s.round() as u64;
        match whole % 60 {
            0 => format!("{} min", whole / 60),
            r => format!("{} min {r} s", whole / 60),
        }
    } else {
        let minutes = (s / 60.0).round() as u64;
        match minutes % 60 {
            0 => format!("{} h", minutes / 60),
            r => format!("{} h {r} min", minutes / 60),
        }
    }
}

/// A gate's condition as data (`<= 0.01`, `> 0.3`, `0.1..0.9`) with its thresholds in `unit`
/// (`<= 1 %`); any other text (a judge's sentence) as it is.
pub fn condition(text: &str, unit: Option<Unit>) -> String {
    if unit.is_none() {
        return text.to_owned();
    }
    let q = |x: f64| quantity(x, unit);
    match limits(text).as_slice() {
        [(op, x)] => format!("{op} {}", q(*x)),
        [(_, lo), (_, hi)] => format!("{}..{}", q(*lo), q(*hi)),
        _ => text.to_owned(),
    }
}

/// The thresholds of a condition written as data: `<= 0.01` is `[("<=", 0.01)]`, `0.1..0.9`
/// is `[(">=", 0.1), ("<=", 0.9)]`; anything else (a judge's sentence) has none.
pub fn limits(text: &str) -> Vec<(&'static str, f64)> {
    let text = text.trim();
    for op in ["<=", ">=", "<", ">"] {
        if let Some(rest) = text.strip_prefix(op) {
            return rest.trim().parse().map_or(Vec::new(), |x| vec![(op, x)]);
        }
    }
    match text.split_once("..") {
        Some((lo, hi)) => match (lo.trim().parse(), hi.trim().parse()) {
            (Ok(lo), Ok(hi)) => vec![(">=", lo), ("<=", hi)],
            _ => Vec::new(),
        },
        None => Vec::new(),
    }
}

/// A [`quantity`] as a `Display` value, for `format!` arguments.
#[derive(Debug, Clone, Copy)]
pub struct Quantity(pub f64, pub Option<Unit>);

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quantity(self.0, self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_three_significant_digits() {
        for (v, want) in [
            (0.19672131147540983, "0.197"),
            (0.0049499999999999995, "0.00495"),
            (12.34, "12.3"),
            (1234.0, "1234"),
            (100.0, "100"),
            (0.5, "0.5"),
            (-0.25, "-0.25"),
            (0.0, "0"),
            (1e-9, "1.00e-9"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(number(v), want, "{v}");
        }
    }

    #[test]
    fn quantities_carry_their_unit() {
        assert_eq!(quantity(0.049, Some(Unit::Ratio)), "4.9 %");
        assert_eq!(quantity(0.19672131147540983, Some(Unit::Ratio)), "19.7 %");
        assert_eq!(
            quantity(0.0049499999999999995, Some(Unit::Seconds)),
            "4.95 ms"
        );
        assert_eq!(quantity(2.2, Some(Unit::Seconds)), "2.2 s");
        assert_eq!(quantity(0.3, None), "0.3");
    }

    #[test]
    fn conditions_read_in_their_unit() {
        assert_eq!(condition("<= 0.01", Some(Unit::Ratio)), "<= 1 %");
        assert_eq!(condition("< 2", Some(Unit::Seconds)), "< 2 s");
        assert_eq!(condition("0.1..0.9", Some(Unit::Ratio)), "10 %..90 %");
        assert_eq!(condition("> 0.3", None), "> 0.3");
        assert_eq!(
            condition("canary not higher", Some(Unit::Ratio)),
            "canary not higher"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        for (d, want) in [
            (Duration::ZERO, "0 s"),
            (Duration::from_micros(950), "950 µs"),
            (Duration::from_micros(4950), "4.95 ms"),
            (Duration::from_millis(2200), "2.2 s"),
            (Duration::from_nanos(7_677_522_835), "7.68 s"),
            (Duration::from_secs(65), "1 min 5 s"),
            (Duration::from_secs(600), "10 min"),
            (Duration::from_secs(7380), "2 h 3 min"),
        ] {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }
}
