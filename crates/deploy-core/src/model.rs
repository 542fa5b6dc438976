//! Domain types shared by the traits, the strategies and the engine.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

fn check_name(what: &'static str, s: &str) -> Result<(), Error> {
    let bad = |cause: String| {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "parse",
            format!("{what} {s:?}"),
            cause,
        ))
    };
    if s.is_empty() {
        return bad("must not be empty".into());
    }
    if s.len() > 128 {
        return bad(format!(
            "is {} bytes long, at most 128 are allowed",
            s.len()
        ));
    }
    if s == "." || s == ".." || s.starts_with('-') {
        return bad("must not be '.', '..' or start with '-'".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return bad(format!(
            "contains {c:?}; only ASCII letters, digits, '.', '_', '-' and '+' are allowed"
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parse and validate: ASCII letters, digits, `.`, `_`, `-`, `+`; 1 to 128 bytes; not
            /// `.`/`..`; no leading `-`. Safe to use as a file name and as a command argument.
            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                check_name($what, &s)?;
                Ok(Self(s))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

name_type!(
    /// A release version such as `2.1.0` or `2026-11-21.3+g1a2b3c`. It names a directory
    /// (`releases/<version>`), so it is validated like a file name.
    Version,
    "version"
);

name_type!(
    /// The name of one target (a slot such as `blue`, or one instance such as `web-3`).
    TargetId,
    "target id"
);

/// What to deploy: a version and where its artifact is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Release {
    /// The version being deployed.
    pub version: Version,
    /// The artifact on the deploying machine: a `.tar`, `.tar.gz`/`.tgz` archive or a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<PathBuf>,
}

impl Release {
    /// A release of `version` without an artifact (targets that fetch or build it themselves).
    pub fn new(version: Version) -> Self {
        Self {
            version,
            artifact: None,
        }
    }

    /// The artifact to upload to each target.
    pub fn with_artifact(mut self, path: impl Into<PathBuf>) -> Self {
        self.artifact = Some(path.into());
        self
    }
}

/// Where a target serves: host and port, and the scheme its probes should use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Endpoint {
    /// Host name or IP address (`127.0.0.1`, `::1`, `web-3.internal`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
}

fn default_scheme() -> String {
    "http".to_owned()
}

impl Endpoint {
    /// An `http` endpoint.
    pub fn http(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            scheme: default_scheme(),
        }
    }

    /// Use `https` instead of `http`.
    pub fn with_https(mut self) -> Self {
        self.scheme = "https".to_owned();
        self
    }

    /// `host:port`, with IPv6 literals in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL of `path` on this endpoint (`path` should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.authority(), path)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

/// Relative traffic weights per target. A target with weight 0 takes no new traffic.
///
/// Weights are relative, as in HAProxy and nginx: `{blue: 95, green: 5}` sends 5 % to green.
/// The engine expresses canary steps as percentages summing to 100.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Weights(pub BTreeMap<TargetId, u32>);

impl Weights {
    /// No weights.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace one target's weight.
    pub fn with(mut self, target: TargetId, weight: u32) -> Self {
        self.0.insert(target, weight);
        self
    }

    /// The weight of `target`, if it is known.
    pub fn get(&self, target: &TargetId) -> Option<u32> {
        self.0.get(target).copied()
    }

    /// Set one target's weight.
    pub fn set(&mut self, target: TargetId, weight: u32) {
        self.0.insert(target, weight);
    }

    /// Iterate over `(target, weight)` in target order.
    pub fn iter(&self) -> impl Iterator<Item = (&TargetId, u32)> {
        self.0.iter().map(|(t, w)| (t, *w))
    }

    /// The sum of all weights.
    pub fn total(&self) -> u64 {
        self.0.values().map(|w| u64::from(*w)).sum()
    }

    /// The share of traffic `target` receives, in percent (0 when the total is 0).
    pub fn percent(&self, target: &TargetId) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        f64::from(self.get(target).unwrap_or(0)) * 100.0 / total as f64
    }

    /// These weights restricted to `targets`.
    pub fn only(&self, targets: &[TargetId]) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(t, _)| targets.contains(t))
                .map(|(t, w)| (t.clone(), *w))
                .collect(),
        )
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (t, w) in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{t}={w}")?;
        }
        Ok(())
    }
}

impl FromIterator<(TargetId, u32)> for Weights {
    fn from_iter<I: IntoIterator<Item = (TargetId, u32)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// What a health probe found.
///
/// An unhealthy result says whether the target *answered* ([`Health::unhealthy`]: a 503, a
/// field that says `down`, a wrong version) or gave no answer at all
/// ([`Health::unreachable`]: connection refused or reset, no answer within the time limit). The
/// engine gives up on a target after a few answered unhealthy checks in a row
/// ([`ProbePolicy::unhealthy_threshold`](crate::policy::ProbePolicy::unhealthy_threshold)), but
/// waits for one that does not answer until the deadline: a service restarting refuses
/// connections for a moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// Whether the target may take traffic.
    pub healthy: bool,
    /// Whether the target answered (always true when healthy); false when it could not be
    /// reached or gave no answer in time. Absent in older records, which read as answered.
    #[serde(default = "answered_by_default")]
    pub answered: bool,
    /// Why, in words ("HTTP 200, status ok, version 2.1.0", "connection refused").
    pub reason: String,
    /// How long the check took.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// The version the target reported, when the probe can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
}

fn answered_by_default() -> bool {
    true
}

impl Health {
    /// A healthy result.
    pub fn healthy(reason: impl Into<String>, latency: Duration) -> Self {
        Self {
            healthy: true,
            answered: true,
            reason: reason.into(),
            latency,
            version: None,
        }
    }

    /// An unhealthy result from a target that answered (a status code outside the range, a
    /// field that says it is down, a wrong version, an answer over the latency budget).
    pub fn unhealthy(reason: impl Into<String>, latency: Duration) -> Self {
        Self {
            healthy: false,
            answered: true,
            reason: reason.into(),
            latency,
            version: None,
        }
    }

    /// An unhealthy result from a target that gave no answer: connection refused or reset, no
    /// answer within the time limit (a service still starting after a restart, or down).
    pub fn unreachable(reason: impl Into<String>, latency: Duration) -> Self {
        Self {
            healthy: false,
            answered: false,
            reason: reason.into(),
            latency,
            version: None,
        }
    }

    /// Record the version the target reported.
    pub fn with_version(mut self, version: Option<Version>) -> Self {
        self.version = version;
        self
    }
}

/// The outcome of one gate measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// The condition held.
    Pass,
    /// The condition did not hold.
    Fail,
    /// No decision is possible (no data, NaN, too few samples, traffic below the floor).
    Inconclusive,
    /// The measurement could not be taken (metrics source unreachable, malformed answer).
    Error,
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Inconclusive => "inconclusive",
            Self::Error => "error",
        })
    }
}

/// A gate's answer, carrying what was measured and against what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Verdict {
    /// Pass, Fail, Inconclusive or Error.
    pub kind: VerdictKind,
    /// The measured value, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The condition it was judged by (`< 0.01`).
    pub condition: String,
    /// Where the value came from (the PromQL query, the scrape URL).
    pub source: String,
    /// Why this verdict, in words.
    pub reason: String,
    /// True when the source returned no data at all; the engine's no-data policy decides what
    /// such a verdict counts as.
    #[serde(default)]
    pub no_data: bool,
    /// What the value measures (a share, seconds), to show it with its unit; `None` for a
    /// plain number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<crate::units::Unit>,
}

impl Verdict {
    /// A verdict of `kind`.
    pub fn new(
        kind: VerdictKind,
        value: Option<f64>,
        condition: impl Into<String>,
        source: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            value,
            condition: condition.into(),
            source: source.into(),
            reason: reason.into(),
            no_data: false,
            unit: None,
        }
    }

    /// The same verdict, its value measured in `unit`.
    #[must_use]
    pub fn with_unit(mut self, unit: Option<crate::units::Unit>) -> Self {
        self.unit = unit;
        self
    }

    /// An inconclusive verdict because the source returned no data.
    pub fn no_data(condition: impl Into<String>, source: impl Into<String>) -> Self {
        let mut v = Self::new(
            VerdictKind::Inconclusive,
            None,
            condition,
            source,
            "no data",
        );
        v.no_data = true;
        v
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(v) = self.value {
            write!(f, " (value {}", crate::units::quantity(v, self.unit))?;
        } else {
            f.write_str(" (no value")?;
        }
        write!(
            f,
            ", condition {}, source {}): {}",
            crate::units::condition(&self.condition, self.unit),
            self.source,
            self.reason
        )
    }
}

/// A schema version as the migration runner names it (`42`, `20261121093000`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SchemaVersion(pub String);

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One migration known to the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationInfo {
    /// Its version.
    pub version: SchemaVersion,
    /// Its name ("add_orders_index").
    pub name: String,
    /// `Some(reason)` when it is destructive (drops, renames, type changes...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<String>,
}

impl MigrationInfo {
    /// A migration; `destructive` is `Some(reason)` for a destructive one.
    pub fn new(
        version: impl Into<String>,
        name: impl Into<String>,
        destructive: Option<String>,
    ) -> Self {
        Self {
            version: SchemaVersion(version.into()),
            name: name.into(),
            destructive,
        }
    }
}

/// Where the schema stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The latest applied version (`None` for an empty schema).
    pub current: Option<SchemaVersion>,
    /// Migrations not applied yet, in the order they will run.
    pub pending: Vec<MigrationInfo>,
}

impl MigrationStatus {
    /// A status.
    pub fn new(current: Option<SchemaVersion>, pending: Vec<MigrationInfo>) -> Self {
        Self { current, pending }
    }

    /// The pending migrations that are destructive.
    pub fn destructive(&self) -> impl Iterator<Item = &MigrationInfo> {
        self.pending.iter().filter(|m| m.destructive.is_some())
    }
}

/// The id of a database backup, as the migration runner names it (a file name, a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(pub String);

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_before_the_answered_field_reads_as_answered() {
        let h: Health =
            serde_json::from_str(r#"{"healthy":false,"reason":"HTTP 503","latency":"3ms"}"#)
                .unwrap();
        assert!(h.answered);
        assert!(!Health::unreachable("connection refused", Duration::ZERO).answered);
        assert!(Health::unhealthy("HTTP 503", Duration::ZERO).answered);
        let back: Health = serde_json::from_str(
            &serde_json::to_string(&Health::unreachable("x", Duration::ZERO)).unwrap(),
        )
        .unwrap();
        assert!(!back.answered);
    }

    #[test]
    fn versions_are_safe_file_names() {
        for ok in ["1", "2.1.0", "2026-11-21.3+g1a2b3c", "v_1"] {
            assert!(Version::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-rf",
            "a/b",
            "a b",
            "$(x)",
            "a\nb",
            &"x".repeat(129),
        ] {
            let e = Version::new(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().starts_with("parse version"), "{e}");
        }
    }

    #[test]
    fn weights_percent_and_serde() {
        let b = TargetId::new("blue").unwrap();
        let g = TargetId::new("green").unwrap();
        let w = Weights::new().with(b.clone(), 95).with(g.clone(), 5);
        assert_eq!(w.percent(&g), 5.0);
        assert_eq!(w.to_string(), "blue=95,green=5");
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"blue":95,"green":5}"#);
        let back: Weights = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        assert!(serde_json::from_str::<Weights>(r#"{"a/b":1}"#).is_err());
    }

    #[test]
    fn endpoint_urls_bracket_ipv6() {
        assert_eq!(
            Endpoint::http("::1", 8080).url("/health"),
            "http://[::1]:8080/health"
        );
        assert_eq!(
            Endpoint::http("127.0.0.1", 80).url("/"),
            "http://127.0.0.1:80/"
        );
    }
}
