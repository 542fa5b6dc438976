//! Conformance suites: one function per trait that checks its Contract with assertions. The fakes
//! pass them, and every adapter crate runs them against its real server.
//!
//! Each function panics with a message naming the contract item that does not hold.

use crate::error::ErrorKind;
use crate::model::{Release, TargetId, VerdictKind, Version, Weights};
use crate::traits::{
    GateContext, HealthProbe, Maintenance, MetricGate, MigrationRunner, ProbeRequest, Target,
    TrafficSwitch,
};

/// Check a [`Target`]: `prepare` keeps the current version, `activate` switches and is
/// idempotent, activating an unprepared version is `NotFound`, `stop`/`start` are idempotent and
/// keep the version. `release` must be a version the target does not run yet; the target ends on
/// it.
pub async fn target(target: &dyn Target, release: &Release) {
    let id = target.id().clone();
    let before = target.current().await.expect("current() works");
    assert_ne!(
        before.as_ref(),
        Some(&release.version),
        "conformance needs a release the target {id} does not run yet"
    );

    target.prepare(release).await.expect("prepare works");
    assert_eq!(
        target.current().await.expect("current"),
        before,
        "prepare must not change the current version of {id}"
    );
    target
        .prepare(release)
        .await
        .expect("prepare is idempotent");

    let never = Version::new("never-prepared-0").expect("valid");
    let err = target
        .activate(&never)
        .await
        .expect_err("activating an unprepared version must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "activating an unprepared version on {id}: {err}"
    );
    assert_eq!(
        target.current().await.expect("current"),
        before,
        "a failed activate must leave {id} as it was"
    );

    target
        .activate(&release.version)
        .await
        .expect("activate works");
    assert_eq!(
        target.current().await.expect("current").as_ref(),
        Some(&release.version),
        "after activate, current() of {id}"
    );
    target
        .activate(&release.version)
        .await
        .expect("activate is idempotent");
    assert_eq!(
        target.current().await.expect("current").as_ref(),
        Some(&release.version)
    );

    if let Some(old) = &before {
        target
            .activate(old)
            .await
            .expect("activating the previous version (rollback) works");
        assert_eq!(
            target.current().await.expect("current").as_ref(),
            Some(old),
            "rollback of {id}"
        );
        target
            .activate(&release.version)
            .await
            .expect("activate again");
    }

    target.stop().await.expect("stop works");
    target.stop().await.expect("stop is idempotent");
    target.start().await.expect("start works");
    target.start().await.expect("start is idempotent");
    assert_eq!(
        target.current().await.expect("current").as_ref(),
        Some(&release.version),
        "stop/start keep the version of {id}"
    );
}

/// Check a [`TrafficSwitch`] that manages (at least) `a` and `b`, with no traffic on them:
/// read-back equals what was set, only named targets change, unknown targets are `NotFound` and
/// change nothing, drain reads 0, is idempotent and reaches 0 sessions, a weight > 0 brings a
/// drained target back. The weights are restored at the end.
pub async fn traffic_switch(switch: &dyn TrafficSwitch, a: &TargetId, b: &TargetId) {
    let original = switch.weights().await.expect("weights() works");
    assert!(
        original.get(a).is_some() && original.get(b).is_some(),
        "the switch must know {a} and {b}: {original}"
    );

    let w = Weights::new().with(a.clone(), 10).with(b.clone(), 90);
    switch.set_weights(&w).await.expect("set_weights works");
    let now = switch.weights().await.expect("weights");
    assert_eq!(now.get(a), Some(10), "read-back weight of {a}: {now}");
    assert_eq!(now.get(b), Some(90), "read-back weight of {b}: {now}");

    switch
        .set_weights(&Weights::new().with(a.clone(), 20))
        .await
        .expect("set one weight");
    let now = switch.weights().await.expect("weights");
    assert_eq!(
        (now.get(a), now.get(b)),
        (Some(20), Some(90)),
        "only the named target changes: {now}"
    );

    let ghost = TargetId::new("no-such-target-conformance").expect("valid");
    let err = switch
        .set_weights(&Weights::new().with(ghost.clone(), 5).with(a.clone(), 30))
        .await
        .expect_err("an unknown target must be refused");
    assert_eq!(err.kind(), ErrorKind::NotFound, "unknown target: {err}");
    let now = switch.weights().await.expect("weights");
    assert_eq!(
        now.get(a),
        Some(20),
        "a refused set_weights changes nothing: {now}"
    );

    switch.drain(a).await.expect("drain works");
    assert_eq!(
        switch.weights().await.expect("weights").get(a),
        Some(0),
        "a drained target reads weight 0"
    );
    switch.drain(a).await.expect("drain is idempotent");
    // The suite sends no traffic, so a drained target reaches 0 sessions promptly.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = switch
            .active_sessions(a)
            .await
            .expect("active_sessions works");
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a drained target with no traffic reaches 0 sessions: {a} still has {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let err = switch
        .active_sessions(&ghost)
        .await
        .expect_err("the sessions of an unknown target must be refused");
    assert_eq!(err.kind(), ErrorKind::NotFound, "unknown target: {err}");

    switch
        .set_weights(&Weights::new().with(a.clone(), 50))
        .await
        .expect("undrain by weight");
    assert_eq!(
        switch.weights().await.expect("weights").get(a),
        Some(50),
        "weight > 0 brings a drained target back"
    );

    let restore = original.only(&[a.clone(), b.clone()]);
    switch
        .set_weights(&restore)
        .await
        .expect("restore the original weights");
    assert_eq!(
        switch
            .weights()
            .await
            .expect("weights")
            .only(&[a.clone(), b.clone()]),
        restore
    );
}

/// Check a [`HealthProbe`]: `healthy` is healthy (and reports `expected_version` when it reads
/// versions), `down` (an endpoint nothing answers on) is `Ok(unhealthy)` with a reason — not
/// `Err` — and a wrong expected version is unhealthy when the probe reads versions.
pub async fn health_probe(probe: &dyn HealthProbe, healthy: &ProbeRequest, down: &ProbeRequest) {
    let h = probe
        .check(healthy)
        .await
        .expect("a reachable target gives Ok");
    assert!(
        h.healthy,
        "{} should be healthy: {}",
        healthy.target, h.reason
    );
    if let (Some(expected), Some(got)) = (&healthy.expected_version, &h.version) {
        assert_eq!(got, expected, "the version read back");
    }
    let d = probe
        .check(down)
        .await
        .expect("an unreachable target is Ok(unhealthy), not Err");
    assert!(!d.healthy, "{} should be unhealthy", down.target);
    assert!(!d.reason.is_empty(), "an unhealthy result carries a reason");
    if h.version.is_some() {
        let mut wrong = healthy.clone();
        wrong.expected_version = Some(Version::new("0.0.0-not-this").expect("valid"));
        let w = probe.check(&wrong).await.expect("Ok");
        assert!(!w.healthy, "a different version than expected is unhealthy");
    }
}

/// Check a [`MigrationRunner`] with at least one pending migration: status lists it, backup
/// returns an id, migrate applies all and is a no-op the second time, verify accepts the reached
/// version and refuses another, revert with the backup returns to the version before.
pub async fn migration_runner(runner: &dyn MigrationRunner) {
    let before = runner.status().await.expect("status works");
    assert!(
        !before.pending.is_empty(),
        "conformance needs at least one pending migration"
    );
    let backup = runner.backup().await.expect("backup works");
    let reached = runner.migrate().await.expect("migrate works");
    let after = runner.status().await.expect("status");
    assert!(
        after.pending.is_empty(),
        "nothing pending after migrate: {after:?}"
    );
    assert_eq!(
        after.current, reached,
        "status agrees with migrate's result"
    );
    assert_eq!(
        reached.as_ref(),
        before.pending.last().map(|m| &m.version),
        "migrate reaches the last pending version"
    );
    assert_eq!(
        runner.migrate().await.expect("migrate again"),
        reached,
        "migrate with nothing pending is a no-op"
    );
    runner
        .verify(reached.as_ref())
        .await
        .expect("verify accepts the reached version");
    assert!(
        runner.verify(before.current.as_ref()).await.is_err(),
        "verify refuses a version the schema is not at"
    );
    runner
        .revert(before.current.as_ref(), Some(&backup))
        .await
        .expect("revert works");
    let reverted = runner.status().await.expect("status");
    assert_eq!(
        reverted.current, before.current,
        "revert returns to the version before"
    );
    runner
        .revert(before.current.as_ref(), Some(&backup))
        .await
        .expect("revert is idempotent");
    assert_eq!(
        runner.status().await.expect("status").current,
        before.current
    );
}

/// Check a [`MetricGate`] given a context whose data it can read and judge as `expected`: it has
/// a name; each of two measurements is `Ok` with the expected kind (an `Err` or `Error` verdict
/// on readable data fails the suite: a gate that only errs would never be evidence), carrying
/// its condition and source, a value for Pass and Fail, and no-data only as Inconclusive.
pub async fn metric_gate(gate: &dyn MetricGate, ctx: &GateContext, expected: VerdictKind) {
    assert!(!gate.name().is_empty(), "a gate has a name");
    for _ in 0..2 {
        match gate.evaluate(ctx).await {
            Ok(v) => {
                assert_eq!(
                    v.kind,
                    expected,
                    "{} measured data it can read: {v}",
                    gate.name()
                );
                assert!(
                    !v.source.is_empty(),
                    "verdict of {} names its source",
                    gate.name()
                );
                if v.kind != VerdictKind::Error {
                    assert!(
                        !v.condition.is_empty(),
                        "verdict of {} names its condition",
                        gate.name()
                    );
                }
                if v.no_data {
                    assert_eq!(v.kind, VerdictKind::Inconclusive, "no data is Inconclusive");
                }
                if matches!(v.kind, VerdictKind::Pass | VerdictKind::Fail) {
                    assert!(
                        v.value.is_some(),
                        "a pass or fail verdict of {} carries its value",
                        gate.name()
                    );
                }
            }
            Err(e) => panic!(
                "{} failed to measure data it can read (a gate that only errs is never evidence): {e}",
                gate.name()
            ),
        }
    }
}

/// Check a [`Maintenance`] page: enable and disable are idempotent and `is_enabled` follows; it
/// ends disabled.
pub async fn maintenance(page: &dyn Maintenance) {
    page.enable().await.expect("enable works");
    assert!(
        page.is_enabled().await.expect("is_enabled"),
        "enabled after enable"
    );
    page.enable().await.expect("enable is idempotent");
    assert!(page.is_enabled().await.expect("is_enabled"));
    page.disable().await.expect("disable works");
    assert!(
        !page.is_enabled().await.expect("is_enabled"),
        "disabled after disable"
    );
    page.disable().await.expect("disable is idempotent");
    assert!(!page.is_enabled().await.expect("is_enabled"));
}
