//! A [`TrafficSwitch`] over several load balancers as one: an HA pair of HAProxy instances, or
//! HAProxy beside nginx, moved together — all or none.
//!
//! See [`CompositeSwitch`] for what holds.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{TargetId, Weights};
use crate::traits::{DynTrafficSwitch, TrafficSwitch};

/// Several traffic switches moved as one, all or none: an HA pair of HAProxy instances, or
/// HAProxy beside nginx.
///
/// Each member is any switch (any mix of adapters) with a name for messages. The composite
/// keeps the [`TrafficSwitch`] contract for the whole:
///
/// - [`set_weights`](TrafficSwitch::set_weights) reads every member's weights first (a member
///   that cannot be read fails the call before anything changes), applies the new weights on
///   every member at once, and reads each back. If any member fails — an error, or a read-back
///   that differs from what was set — every member is put back to the weights it had before
///   (the named targets only), and the error names the member that failed and says that every
///   member was put back, or which could not be. Its kind is the failing member's (an unknown
///   target stays `NotFound`), so the engine's retry policy reads it as it would read the
///   member's own error: a retry sets the same weights again on every member.
/// - [`weights`](TrafficSwitch::weights) reads every member; members that disagree are an error
///   (kind `Conflict`, permanent) naming each member and what it has: there is no single answer
///   to "what does the balancer apply now".
/// - [`drain`](TrafficSwitch::drain) is all or none too: every member's weights are read
///   first, the target is drained on every member, and if one fails, the target's previous
///   weight is set again on every member (so that the members never disagree because of the
///   composite; the engine reads the weights after every change).
/// - [`cut_sessions`](TrafficSwitch::cut_sessions) acts on every member; a failure names the
///   members that failed (sessions closed cannot be reopened; the engine cuts only drained
///   targets, whose weight is 0 on every member, so the members still agree).
/// - [`active_sessions`](TrafficSwitch::active_sessions) is the **sum** over the members: each
///   balancer holds its own client connections to the target, so the target still serves the
///   sum, and it is drained exactly when every member reads 0 (the maximum would reach 0 at the
///   same moment, but would under-count the sessions a drain waits for in progress reports).
///
/// Every call on a member is limited by
/// [`with_member_timeout`](CompositeSwitch::with_member_timeout) (10 s by default), so that a
/// member that hangs (a stopped process whose socket still accepts) fails the step and the
/// others are put back well within the engine's own time limit of one call. If the engine's
/// limit cuts the whole call short anyway, the engine's rollback sets the previous weights on
/// the composite, which sets them on every member. Raise the limit when a member's own call
/// may rightly take longer (HAProxy bringing a server back from `maint` waits for a passing
/// check, up to its `check_timeout`, 20 s by default).
///
/// ```
/// use std::sync::Arc;
/// use deploy_core::testing::FakeSwitch;
/// use deploy_core::{CompositeSwitch, TargetId, TrafficSwitch, Weights};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploy_core::Result<()> {
/// let lb1 = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
/// let lb2 = Arc::new(FakeSwitch::new(&[("blue", 100), ("green", 0)]));
/// lb2.faults.fail_on("set_weights", 1);
/// let pair = CompositeSwitch::new(vec![
///     ("lb-1".to_owned(), lb1.clone() as _),
///     ("lb-2".to_owned(), lb2.clone() as _),
/// ])?;
/// let green = Weights::new().with(TargetId::new("blue")?, 0).with(TargetId::new("green")?, 100);
/// let err = pair.set_weights(&green).await.unwrap_err();
/// assert!(err.to_string().contains("member lb-2 failed; every member was put back"));
/// assert_eq!(lb1.current().to_string(), "blue=100,green=0");
/// pair.set_weights(&green).await?; // the fault was for one call
/// assert_eq!(pair.weights().await?.to_string(), "blue=0,green=100");
/// # Ok(()) }
/// ```
pub struct CompositeSwitch {
    members: Vec<(String, DynTrafficSwitch)>,
    member_timeout: Duration,
}

impl fmt::Debug for CompositeSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeSwitch")
            .field("members", &self.members)
            .field("member_timeout", &self.member_timeout)
            .finish()
    }
}

/// The default limit of one call on one member.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

impl CompositeSwitch {
    /// A switch over `members`, each `(name, switch)`. Names are for messages and must be
    /// unique and not empty; there must be at least one member.
    pub fn new(members: Vec<(String, DynTrafficSwitch)>) -> Result<Self> {
        let invalid = |message: String| {
            Error::new(
                ErrorKind::InvalidInput,
                "build",
                "composite switch",
                message,
            )
        };
        if members.is_empty() {
            return Err(invalid("no member switches".to_owned()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &members {
            if name.trim().is_empty() {
                return Err(invalid("a member has an empty name".to_owned()));
            }
            if !seen.insert(name.as_str()) {
                return Err(invalid(format!("two members are named {name:?}")));
            }
        }
        Ok(Self {
            members,
            member_timeout: MEMBER_TIMEOUT,
        })
    }

    /// Limit each call on one member to `timeout` (10 s by default); a member past it has
    /// failed (kind `Timeout`).
    pub fn with_member_timeout(mut self, timeout: Duration) -> Self {
        self.member_timeout = timeout;
        self
    }

    /// The members' names, in order.
    pub fn member_names(&self) -> Vec<&str> {
        self.members.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn object(&self) -> String {
        format!("composite switch ({})", self.member_names().join(", "))
    }

    /// Run `call` on every member at once, each within the member timeout; results in member
    /// order.
    async fn on_all<'a, T, F, Fut>(&'a self, operation: &'static str, call: F) -> Vec<Result<T>>
    where
        F: Fn(&'a DynTrafficSwitch) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let limit = self.member_timeout;
        join_all(self.members.iter().map(|(name, switch)| {
            let fut = call(switch);
            async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        operation,
                        format!("member {name}"),
                        format!("no answer within {}", humantime::format_duration(limit)),
                    )),
                }
            }
        }))
        .await
    }

    /// The failures among `results`, as `(member name, error)`.
    fn failures<T>(&self, results: Vec<Result<T>>) -> (Vec<T>, Vec<(&str, Error)>) {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for ((name, _), r) in self.members.iter().zip(results) {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => failed.push((name.as_str(), e)),
            }
        }
        (ok, failed)
    }

    /// One error for failures of `operation` on some members: the first failure's kind, status
    /// and text as the source; every failing member named.
    fn member_error(
        &self,
        operation: &'static str,
        mut failed: Vec<(&str, Error)>,
        note: &str,
    ) -> Error {
        let names: Vec<String> = failed.iter().map(|(n, _)| (*n).to_owned()).collect();
        let others: Vec<String> = failed
            .iter()
            .skip(1)
            .map(|(n, e)| format!("{n}: {e}"))
            .collect();
        let (first_name, first) = failed.remove(0);
        let mut message = format!(
            "member {first_name} failed{}",
            if names.len() > 1 {
                format!(" (and {})", names[1..].join(", "))
            } else {
                String::new()
            }
        );
        if !note.is_empty() {
            message.push_str("; ");
            message.push_str(note);
        }
        let mut e = Error::new(first.kind(), operation, self.object(), message);
        e = match first.status() {
            crate::error::ErrorStatus::Temporary => e.retryable(),
            crate::error::ErrorStatus::Persistent => e.retryable().persistent(),
            crate::error::ErrorStatus::Permanent => e.permanent(),
        };
        for o in others {
            e = e.with_context("also", o);
        }
        e.with_source(first)
    }

    /// Put every member back to `before` (its weights before the call, restricted to the
    /// targets named in `wanted`) and check by reading back. Returns the members that could
    /// not be put back, with why.
    async fn put_back(&self, before: &[Weights], wanted: &Weights) -> Vec<(String, String)> {
        let names: Vec<TargetId> = wanted.iter().map(|(t, _)| t.clone()).collect();
        let previous: Vec<Weights> = before.iter().map(|w| w.only(&names)).collect();
        let restored = join_all(self.members.iter().zip(&previous).map(
            |((name, switch), prev)| async move {
                let limit = self.member_timeout;
                if prev.0.is_empty() {
                    // It knows none of the targets: it was refused, and changed nothing.
                    return Ok(());
                }
                let set = tokio::time::timeout(limit, switch.set_weights(prev)).await;
                match set {
                    Err(_) => return Err(format!("no answer within {limit:?}")),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(())) => {}
                }
                match tokio::time::timeout(limit, switch.weights()).await {
                    Err(_) => Err(format!("reading back: no answer within {limit:?}")),
                    Ok(Err(e)) => Err(format!("reading back: {e}")),
                    Ok(Ok(now)) => match differences(&now, prev) {
                        d if d.is_empty() => Ok(()),
                        d => Err(format!("reads back {}", d.join(", "))),
                    },
                }
                .map_err(|why| {
                    tracing::warn!(member = %name, %why, "could not put a member switch back");
                    why
                })
            },
        ))
        .await;
        self.members
            .iter()
            .zip(restored)
            .filter_map(|((name, _), r)| r.err().map(|why| (name.clone(), why)))
            .collect()
    }
}

impl CompositeSwitch {
    /// Set `weights` on every member at once and read each back: the members that failed (an
    /// error, or weights read back other than set), with why.
    async fn apply(&self, weights: &Weights, operation: &'static str) -> Vec<(&str, Error)> {
        let applied = self.on_all(operation, |s| s.set_weights(weights)).await;
        let read_back = self.on_all("read weights of", |s| s.weights()).await;
        let mut failed: Vec<(&str, Error)> = Vec::new();
        for (((name, _), set), now) in self.members.iter().zip(applied).zip(read_back) {
            let problem = match (set, now) {
                (Err(e), _) => Some(e),
                (Ok(()), Err(e)) => Some(e.context("read back after setting", "")),
                (Ok(()), Ok(now)) => {
                    let d = differences(&now, weights);
                    (!d.is_empty()).then(|| {
                        Error::new(
                            ErrorKind::Protocol,
                            "read back weights of",
                            format!("member {name}"),
                            format!("reads {} after set_weights returned Ok", d.join(", ")),
                        )
                    })
                }
            };
            if let Some(e) = problem {
                failed.push((name.as_str(), e));
            }
        }
        failed
    }

    /// What a failed call says about putting the members back: all of them, or which not.
    fn put_back_note(
        &self,
        not_back: &[(String, String)],
        failed: &[(&str, Error)],
        what: &str,
    ) -> String {
        if not_back.is_empty() {
            return format!("every member was put back to its previous {what}");
        }
        let back: Vec<&str> = self
            .members
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !not_back.iter().any(|(m, _)| m == n))
            .collect();
        // The member that failed usually fails its put-back the same way: say so once.
        let list: Vec<String> = not_back
            .iter()
            .map(|(n, why)| {
                let same = failed.iter().any(|(m, e)| m == n && e.to_string() == *why);
                if same {
                    format!("{n} (the same error)")
                } else {
                    format!("{n} ({why})")
                }
            })
            .collect();
        format!(
            "could not put back {}; {}",
            list.join(", "),
            if back.is_empty() {
                format!("no member is back on its previous {what}")
            } else {
                format!("put back: {}", back.join(", "))
            }
        )
    }
}

/// How `now` differs from `wanted` on the targets `wanted` names: `"green=0 (set 100)"`.
fn differences(now: &Weights, wanted: &Weights) -> Vec<String> {
    wanted
        .iter()
        .filter(|(t, w)| now.get(t) != Some(*w))
        .map(|(t, w)| match now.get(t) {
            Some(n) => format!("{t}={n} (set {w})"),
            None => format!("{t} unknown (set {w})"),
        })
        .collect()
}

#[async_trait]
impl TrafficSwitch for CompositeSwitch {
    /// Every member's own check; the first that fails names its member.
    async fn check(&self) -> Result<()> {
        let limit = self.member_timeout;
        for (name, member) in &self.members {
            match tokio::time::timeout(limit, member.check()).await {
                Ok(r) => r.map_err(|e| {
                    e.context(format!("check member {name} of"), "the composite switch")
                })?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("check member {name} of"),
                        "the composite switch",
                        format!("no answer within {limit:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn weights(&self) -> Result<Weights> {
        let results = self.on_all("read weights of", |s| s.weights()).await;
        let (all, failed) = self.failures(results);
        if !failed.is_empty() {
            return Err(self.member_error("read weights of", failed, ""));
        }
        let first = &all[0];
        if all.iter().all(|w| w == first) {
            return Ok(first.clone());
        }
        let each: Vec<String> = self
            .members
            .iter()
            .zip(&all)
            .map(|((name, _), w)| format!("{name} has {w}"))
            .collect();
        Err(Error::new(
            ErrorKind::Conflict,
            "read weights of",
            self.object(),
            format!(
                "the members disagree: {} (set the weights again to bring them together)",
                each.join(", ")
            ),
        )
        .permanent())
    }

    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        // Read every member first: what to put back if one of them fails.
        let results = self.on_all("read weights of", |s| s.weights()).await;
        let (before, failed) = self.failures(results);
        if !failed.is_empty() {
            return Err(self.member_error(
                "set weights on",
                failed,
                "no member was changed (its weights could not be read first)",
            ));
        }

        let failed = self.apply(weights, "set weights on").await;
        if failed.is_empty() {
            return Ok(());
        }

        let not_back = self.put_back(&before, weights).await;
        let note = self.put_back_note(&not_back, &failed, "weights");
        Err(self
            .member_error("set weights on", failed, &note)
            .with_context("weights", weights.to_string()))
    }

    /// A rollback's weights go to every member that answers, even when another cannot be read
    /// (a balancer that died must not keep the others on a failed release); each member is read
    /// back, and the error names the members that are not on `weights`.
    async fn restore_weights(&self, weights: &Weights) -> Result<()> {
        let failed = self.apply(weights, "put weights back on").await;
        if failed.is_empty() {
            return Ok(());
        }
        let back: Vec<&str> = self
            .members
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !failed.iter().any(|(m, _)| m == n))
            .collect();
        let note = if back.is_empty() {
            "no member is on these weights".to_owned()
        } else {
            format!("on these weights: {}", back.join(", "))
        };
        Err(self
            .member_error("put weights back on", failed, &note)
            .with_context("weights", weights.to_string()))
    }

    async fn drain(&self, target: &TargetId) -> Result<()> {
        // All or none, as set_weights: a drain that stopped on one member only would leave the
        // members disagreeing, and every later read of the weights would fail.
        let results = self.on_all("read weights of", |s| s.weights()).await;
        let (before, failed) = self.failures(results);
        if !failed.is_empty() {
            return Err(self
                .member_error(
                    "drain",
                    failed,
                    "no member was changed (its weights could not be read first)",
                )
                .with_context("target", target.to_string()));
        }
        let results = self.on_all("drain", |s| s.drain(target)).await;
        let (_, failed) = self.failures(results);
        if failed.is_empty() {
            return Ok(());
        }
        let not_back = self
            .put_back(&before, &Weights::new().with(target.clone(), 0))
            .await;
        let note = self.put_back_note(&not_back, &failed, &format!("weight of {target}"));
        Err(self
            .member_error("drain", failed, &note)
            .with_context("target", target.to_string()))
    }

    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        let results = self
            .on_all("count sessions on", |s| s.active_sessions(target))
            .await;
        let (counts, failed) = self.failures(results);
        if failed.is_empty() {
            Ok(counts.iter().sum())
        } else {
            Err(self
                .member_error("count sessions on", failed, "")
                .with_context("target", target.to_string()))
        }
    }

    async fn cut_sessions(&self, target: &TargetId) -> Result<()> {
        let results = self
            .on_all("cut sessions on", |s| s.cut_sessions(target))
            .await;
        let (_, failed) = self.failures(results);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(self
                .member_error("cut sessions on", failed, "")
                .with_context("target", target.to_string()))
        }
    }
}
