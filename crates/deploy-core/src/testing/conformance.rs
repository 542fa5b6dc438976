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
/// drained target back, and `weight_of` reads what `weights` reads (`None` for an unknown
/// target). The weights are restored at the end.
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

    // `weight_of` reads one target as `weights` reads them all.
    let one = |t: TargetId| async move { switch.weight_of(&t).await.expect("weight_of works") };
    assert_eq!(
        (one(a.clone()).await, one(b.clone()).await),
        (Some(20), Some(90))
    );
    assert_eq!(
        one(ghost.clone()).await,
        None,
        "the weight of an unknown target"
    );

    switch.drain(a).await.expect("drain works");
    assert_eq!(
        switch.weights().await.expect("weights").get(a),
        Some(0),
        "a drained target reads weight 0"
    );
    assert_eq!(
        one(a.clone()).await,
        Some(0),
        "a drained target's weight_of reads 0"
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
/// versions), `down` (an endpoint nothing answers on) is `Ok(unreachable)` with a reason — not
/// `Err`, and not an answer — and a wrong expected version is an answered unhealthy result
/// carrying the version read, when the probe reads versions.
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
    assert!(
        !d.answered,
        "{} gives no answer: unreachable, not answered unhealthy ({})",
        down.target, d.reason
    );
    assert!(!d.reason.is_empty(), "an unhealthy result carries a reason");
    if h.version.is_some() {
        let mut wrong = healthy.clone();
        wrong.expected_version = Some(Version::new("0.0.0-not-this").expect("valid"));
        let w = probe.check(&wrong).await.expect("Ok");
        assert!(!w.healthy, "a different version than expected is unhealthy");
        assert!(w.answered, "a wrong version is an answer");
        assert_eq!(w.version, h.version, "the version read is reported");
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

/// A small plan for journals written by [`state_store`].
fn sample_plan(environment: &str) -> crate::strategy::Plan {
    use crate::model::Endpoint;
    use crate::strategy::{CanaryStep, Capabilities, PlanOptions, Snapshot, Strategy, TargetState};
    let id = |s: &str| TargetId::new(s).expect("valid");
    let snapshot = Snapshot::new(
        vec![
            TargetState::new(
                id("blue"),
                Endpoint::http("127.0.0.1", 1),
                Some(Version::new("1.0.0").expect("valid")),
            ),
            TargetState::new(id("green"), Endpoint::http("127.0.0.1", 2), None),
        ],
        Some(Weights::new().with(id("blue"), 100).with(id("green"), 0)),
        None,
        None,
    );
    Strategy::Canary {
        steps: vec![CanaryStep::SetWeight(10), CanaryStep::PauseUntilPromoted],
    }
    .plan(
        environment,
        &Release::new(Version::new("2.0.0").expect("valid")),
        &snapshot,
        Capabilities::new(true, false, false),
        &PlanOptions::default(),
    )
    .expect("the sample plan plans")
}

/// Check a [`StateStore`](crate::state::StateStore) against its contract (see
/// [`crate::state`]), in `environment`, which must hold no state yet: one holder at a time,
/// queueing with `wait`, stale locks taken over only when asked, fencing of the old holder's
/// journal writes, journals read back whole by run, one request handed out once, reports and
/// history kept. `abandon` must make the lock stale at once (as a dead process does).
pub async fn state_store(store: &dyn crate::state::StateStore, environment: &str) {
    use std::time::{Duration, SystemTime};

    use crate::engine::{AddressedRequest, ControlRequest, DeployError, LockInfo, Outcome, Record};
    use crate::state::{HistoryEntry, LockOptions, Takeover};

    let env = environment;
    let info = |run: &str| LockInfo::this_process(run);
    let at = store.location();
    assert!(
        store.holder(env).await.expect("holder works").is_none(),
        "{at}: a new environment has no holder"
    );
    assert!(store.runs(env).await.expect("runs works").is_empty());
    assert!(store.history(env).await.expect("history works").is_empty());
    assert!(
        store
            .take_request(env)
            .await
            .expect("take_request")
            .is_none()
    );

    // One holder at a time.
    let first = store
        .lock(env, &info("run-a"), LockOptions::default())
        .await
        .expect("a free lock is taken");
    let holder = store.holder(env).await.expect("holder").expect("held");
    assert_eq!(holder.info.run_id, "run-a", "{at}: the holder is recorded");
    assert!(!holder.stale, "{at}: a live holder is not stale");
    match store
        .lock(env, &info("run-b"), LockOptions::default())
        .await
    {
        Err(DeployError::Locked { holder, .. }) => assert_eq!(
            holder.map(|h| h.run_id),
            Some("run-a".to_owned()),
            "{at}: Locked names the holder"
        ),
        other => panic!("{at}: a held lock must be refused with Locked, got {other:?}"),
    }
    // Queueing: a bounded wait ends in Locked, a wait over a release gets the lock.
    let t = std::time::Instant::now();
    let waited = store
        .lock(
            env,
            &info("run-b"),
            LockOptions {
                wait: Some(Duration::from_millis(300)),
                takeover: Takeover::IfStale,
            },
        )
        .await;
    assert!(
        matches!(waited, Err(DeployError::Locked { .. })),
        "{at}: a live holder is never displaced, even with takeover: {waited:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{at}: wait queues for its time"
    );
    let first_token = first.token();
    let waiter = info("run-b");
    let (_, second) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            first.release().await;
        },
        store.lock(
            env,
            &waiter,
            LockOptions {
                wait: Some(Duration::from_secs(10)),
                takeover: Takeover::Never,
            },
        )
    );
    let second = second.expect("a waiter gets the lock once it is released");
    assert!(
        second.token() > first_token,
        "{at}: tokens grow ({} after {first_token})",
        second.token()
    );

    // The journal, read back by run.
    let plan = sample_plan(env);
    let mut journal = store
        .create_journal(second.as_ref(), env, "run-b")
        .await
        .expect("create_journal");
    journal
        .append(&Record::Started {
            run_id: "run-b".into(),
            plan: Box::new(plan.clone()),
            at: SystemTime::now(),
            pid: std::process::id(),
            host: "conformance".into(),
        })
        .await
        .expect("append started");
    journal
        .append(&Record::StepStarted {
            index: 0,
            inverse: Vec::new(),
            at: None,
        })
        .await
        .expect("append step_started");
    journal
        .append(&Record::PauseStarted {
            index: 1,
            reason: "until promoted".into(),
        })
        .await
        .expect("append pause_started");
    assert_eq!(store.runs(env).await.expect("runs"), ["run-b"]);
    let st = store
        .journal(env, "run-b")
        .await
        .expect("journal")
        .expect("a journal with records");
    assert_eq!(st.plan, plan, "{at}: the plan is read back whole");
    assert_eq!(st.inverses, [(0, Vec::new())]);
    assert_eq!(st.paused, Some((1, "until promoted".to_owned())));

    // Requests: the last one left is handed out once.
    let promote = AddressedRequest {
        run_id: "run-b".into(),
        pause: Some(1),
        request: ControlRequest::Promote,
    };
    let abort = AddressedRequest {
        run_id: "run-b".into(),
        pause: None,
        request: ControlRequest::Abort {
            reason: "conformance".into(),
        },
    };
    store.put_request(env, &promote).await.expect("put_request");
    store.put_request(env, &abort).await.expect("put_request");
    assert_eq!(store.take_request(env).await.expect("take"), Some(abort));
    assert_eq!(store.take_request(env).await.expect("take"), None);

    // A holder that is gone leaves a stale lock, taken over only when asked; its writes are
    // fenced off from then on.
    second.abandon().await;
    let stale = store
        .holder(env)
        .await
        .expect("holder")
        .expect("still recorded");
    assert!(stale.stale, "{at}: an abandoned lock is stale");
    assert_eq!(stale.info.run_id, "run-b");
    match store
        .lock(env, &info("run-c"), LockOptions::default())
        .await
    {
        Err(DeployError::StaleLock { holder, .. }) => assert_eq!(
            holder.map(|h| h.run_id),
            Some("run-b".to_owned()),
            "{at}: StaleLock names the gone holder"
        ),
        other => panic!("{at}: a stale lock must be refused without takeover, got {other:?}"),
    }
    let third = store
        .lock(
            env,
            &info("run-c"),
            LockOptions {
                wait: None,
                takeover: Takeover::IfStale,
            },
        )
        .await
        .expect("a stale lock is taken over when asked");
    let refused = journal
        .append(&Record::PauseEnded { index: 1 })
        .await
        .expect_err("the old holder's writes are refused once another holder took over");
    assert!(
        matches!(refused, DeployError::LeaseLost { .. }),
        "{at}: a fenced write is LeaseLost: {refused}"
    );
    // The new holder carries the run on from the shared journal.
    let mut resumed = store
        .reopen_journal(third.as_ref(), env, "run-b")
        .await
        .expect("reopen_journal");
    resumed
        .append(&Record::PauseEnded { index: 1 })
        .await
        .expect("the new holder appends");
    resumed
        .append(&Record::Finished {
            outcome: Outcome::Promoted,
        })
        .await
        .expect("append finished");
    let st = store
        .journal(env, "run-b")
        .await
        .expect("journal")
        .expect("records");
    assert_eq!(st.paused, None);
    assert_eq!(st.outcome, Some(Outcome::Promoted));

    // History, oldest first.
    let entry = |run: &str| HistoryEntry {
        run_id: run.into(),
        environment: env.into(),
        version: Version::new("2.0.0").expect("valid"),
        strategy: "canary".into(),
        outcome: Outcome::Promoted,
        user: "conformance".into(),
        host: "conformance".into(),
        ci_job: None,
        started_at: SystemTime::now(),
        duration: Duration::from_secs(1),
        before: plan.snapshot.clone(),
        after: None,
        backup: None,
        failed_targets: Vec::new(),
    };
    store
        .record_history(&entry("run-b"))
        .await
        .expect("record_history");
    store
        .record_history(&entry("run-c"))
        .await
        .expect("record_history");
    let runs: Vec<String> = store
        .history(env)
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.run_id)
        .collect();
    assert_eq!(runs, ["run-b", "run-c"], "{at}: history oldest first");
    third.release().await;
    assert!(
        store.holder(env).await.expect("holder").is_none(),
        "{at}: a released lock has no holder"
    );
}
