//! Scripted failures shared by every fake.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a scripted fault does to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Fail with an error of this kind before acting (retryable or not).
    Fail {
        /// The error's kind.
        kind: ErrorKind,
        /// Whether the error says it is retryable.
        retryable: bool,
    },
    /// Never return, before acting (the test drops the run, as a `kill -9` would).
    Hang,
    /// Act, then never return.
    HangAfter,
    /// Wait this long before acting.
    Delay(Duration),
    /// Panic before acting (a bug in an adapter), to test that the engine contains it.
    Panic,
}

#[derive(Debug, Clone)]
struct Rule {
    method: String,
    /// 1-based call number this rule starts at; 0 means every call.
    from_call: u32,
    /// How many calls it applies to.
    times: u32,
    action: FaultAction,
}

/// Scripted failures for one fake: "fail the 2nd call of `activate`", "hang in `migrate`",
/// "every `evaluate` takes 3 s". Also counts calls per method.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<(HashMap<String, u32>, Vec<Rule>)>,
}

/// What the fake does after [`Faults::enter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Return,
    Hang,
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, method: &str, from_call: u32, times: u32, action: FaultAction) {
        lock(&self.inner).1.push(Rule {
            method: method.to_owned(),
            from_call,
            times,
            action,
        });
    }

    /// Fail call number `call` (1-based) of `method` with a permanent error.
    pub fn fail_on(&self, method: &str, call: u32) {
        self.add(
            method,
            call.max(1),
            1,
            FaultAction::Fail {
                kind: ErrorKind::Other,
                retryable: false,
            },
        );
    }

    /// Fail every call of `method` from call number `call` on, with a permanent error.
    pub fn fail_from(&self, method: &str, call: u32) {
        self.add(
            method,
            call.max(1),
            u32::MAX,
            FaultAction::Fail {
                kind: ErrorKind::Other,
                retryable: false,
            },
        );
    }

    /// Fail `times` calls of `method` starting at call `call` with a retryable error.
    pub fn fail_transiently(&self, method: &str, call: u32, times: u32) {
        self.add(
            method,
            call.max(1),
            times,
            FaultAction::Fail {
                kind: ErrorKind::Unavailable,
                retryable: true,
            },
        );
    }

    /// Make call `call` of `method` hang before acting.
    pub fn hang_on(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::Hang);
    }

    /// Make call `call` of `method` act, then hang.
    pub fn hang_after(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::HangAfter);
    }

    /// Make call `call` of `method` panic before acting.
    pub fn panic_on(&self, method: &str, call: u32) {
        self.add(method, call.max(1), 1, FaultAction::Panic);
    }

    /// Delay every call of `method`.
    pub fn delay(&self, method: &str, delay: Duration) {
        self.add(method, 0, u32::MAX, FaultAction::Delay(delay));
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> u32 {
        lock(&self.inner).0.get(method).copied().unwrap_or(0)
    }

    /// Remove every rule (counters stay).
    pub fn clear(&self) {
        lock(&self.inner).1.clear();
    }

    /// Count a call of `method` on `object` and apply the rules that match it.
    pub(crate) async fn enter(&self, object: &str, method: &str) -> Result<After> {
        let actions: Vec<FaultAction> = {
            let mut g = lock(&self.inner);
            let n = {
                let c = g.0.entry(method.to_owned()).or_insert(0);
                *c += 1;
                *c
            };
            g.1.iter()
                .filter(|r| {
                    r.method == method
                        && (r.from_call == 0
                            || (n >= r.from_call
                                && u64::from(n) < u64::from(r.from_call) + u64::from(r.times)))
                })
                .map(|r| r.action.clone())
                .collect()
        };
        let mut after = After::Return;
        for a in actions {
            match a {
                FaultAction::Delay(d) => tokio::time::sleep(d).await,
                FaultAction::Hang => std::future::pending::<()>().await,
                FaultAction::HangAfter => after = After::Hang,
                FaultAction::Panic => panic!("{method} on {object}: scripted panic"),
                FaultAction::Fail { kind, retryable } => {
                    let e = Error::new(
                        kind,
                        format!("{method} (scripted fault)"),
                        object.to_owned(),
                        "injected failure",
                    );
                    return Err(if retryable {
                        e.retryable()
                    } else {
                        e.permanent()
                    });
                }
            }
        }
        Ok(after)
    }
}

pub(crate) async fn finish<T>(after: After, value: T) -> T {
    if after == After::Hang {
        std::future::pending::<()>().await;
    }
    value
}
