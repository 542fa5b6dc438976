//! The condition a measured value is judged by: `< 0.01`, `<= 2`, `> 100`, `0.5..2`.

use std::fmt;
use std::str::FromStr;

use deploy_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// What a measured value must satisfy for a gate to pass.
///
/// Parsed from text (`"< 0.01"`, `"<= 2"`, `">= 100"`, `"> 0"`, `"0.5..2"` for an inclusive
/// range) and displayed the same way, so reports show exactly the condition configured.
///
/// ```
/// use deploy_prometheus::Condition;
/// let c: Condition = "<= 0.01".parse().unwrap();
/// assert!(c.holds(0.01));
/// assert!(!c.holds(0.02));
/// assert_eq!(c.to_string(), "<= 0.01");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Condition {
    /// `value < x`.
    Below(f64),
    /// `value <= x`.
    AtMost(f64),
    /// `value > x`.
    Above(f64),
    /// `value >= x`.
    AtLeast(f64),
    /// `lo <= value <= hi`.
    Between(f64, f64),
}

impl Condition {
    /// Whether `value` satisfies the condition. NaN satisfies nothing.
    pub fn holds(&self, value: f64) -> bool {
        match *self {
            Self::Below(x) => value < x,
            Self::AtMost(x) => value <= x,
            Self::Above(x) => value > x,
            Self::AtLeast(x) => value >= x,
            Self::Between(lo, hi) => lo <= value && value <= hi,
        }
    }
}

fn number(s: &str, text: &str) -> Result<f64, Error> {
    let s = s.trim();
    let v: f64 = s.parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            "parse",
            format!("condition {text:?}"),
            format!("{s:?} is not a number"),
        )
    })?;
    if v.is_nan() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "parse",
            format!("condition {text:?}"),
            "NaN cannot be a threshold",
        ));
    }
    Ok(v)
}

impl FromStr for Condition {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        let c = if let Some(rest) = t.strip_prefix("<=") {
            Self::AtMost(number(rest, text)?)
        } else if let Some(rest) = t.strip_prefix(">=") {
            Self::AtLeast(number(rest, text)?)
        } else if let Some(rest) = t.strip_prefix('<') {
            Self::Below(number(rest, text)?)
        } else if let Some(rest) = t.strip_prefix('>') {
            Self::Above(number(rest, text)?)
        } else if let Some((lo, hi)) = t.split_once("..") {
            let (lo, hi) = (number(lo, text)?, number(hi, text)?);
            if lo > hi {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "parse",
                    format!("condition {text:?}"),
                    format!("the range is empty: {lo} > {hi}"),
                ));
            }
            Self::Between(lo, hi)
        } else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "parse",
                format!("condition {text:?}"),
                "expected `< x`, `<= x`, `> x`, `>= x` or `lo..hi`",
            ));
        };
        Ok(c)
    }
}

impl TryFrom<String> for Condition {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Condition> for String {
    fn from(c: Condition) -> String {
        c.to_string()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Below(x) => write!(f, "< {x}"),
            Self::AtMost(x) => write!(f, "<= {x}"),
            Self::Above(x) => write!(f, "> {x}"),
            Self::AtLeast(x) => write!(f, ">= {x}"),
            Self::Between(lo, hi) => write!(f, "{lo}..{hi}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_displays_and_judges() {
        let cases = [
            ("< 0.01", 0.005, true),
            ("< 0.01", 0.01, false),
            ("<=2", 2.0, true),
            ("> 100", 100.0, false),
            (">= 100", 100.0, true),
            ("0.5..2", 0.5, true),
            ("0.5..2", 2.1, false),
        ];
        for (text, v, ok) in cases {
            let c: Condition = text.parse().unwrap();
            assert_eq!(c.holds(v), ok, "{text} {v}");
            assert_eq!(c.to_string().parse::<Condition>().unwrap(), c);
        }
        assert!(!Condition::Below(1.0).holds(f64::NAN));
    }

    #[test]
    fn bad_conditions_are_invalid_input() {
        for bad in ["", "== 1", "< abc", "3..1", "< NaN"] {
            let e = bad.parse::<Condition>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().starts_with("parse condition"), "{e}");
        }
    }

    #[test]
    fn serde_round_trips_as_text() {
        let c = Condition::AtMost(0.01);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#""<= 0.01""#);
        assert_eq!(serde_json::from_str::<Condition>(&json).unwrap(), c);
    }
}
