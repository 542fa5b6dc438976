//! The conformance suites on deploy-core's own real implementations — `ReleaseDirTarget` over
//! `LocalHost`, `HttpProbe`, `TcpProbe` — and proof that every suite can fail: an
//! implementation that breaks one point of its contract is caught.

use std::sync::Arc;

use async_trait::async_trait;
use deploy_core::testing::process::free_port;
use deploy_core::testing::{
    FakeGate, FakeMaintenance, FakeMigrations, FakeProbe, FakeSwitch, FakeTarget, TestHttpServer,
    TestResponse, conformance,
};
use deploy_core::{
    BackupId, Endpoint, Error, ErrorKind, GateContext, Health, HealthProbe, HttpProbe, LocalHost,
    Maintenance, MetricGate, MigrationRunner, MigrationStatus, ProbeRequest, Release,
    ReleaseDirTarget, Result, SchemaVersion, Target, TargetId, TcpProbe, TrafficSwitch, Verdict,
    VerdictKind, Version, Weights,
};

fn id(s: &str) -> TargetId {
    TargetId::new(s).unwrap()
}

#[tokio::test]
async fn release_dir_target_over_local_host_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("build");
    std::fs::create_dir_all(&artifact).unwrap();
    std::fs::write(artifact.join("app.conf"), "version=2.0.0\n").unwrap();
    let target = ReleaseDirTarget::builder(
        id("blue"),
        Arc::new(LocalHost::new()),
        dir.path().join("blue"),
        Endpoint::http("127.0.0.1", 9),
    )
    .build()
    .unwrap();
    let release = Release::new(Version::new("2.0.0").unwrap()).with_artifact(&artifact);
    conformance::target(&target, &release).await;
    // And from a previous release, so that the suite also rolls back.
    std::fs::write(artifact.join("app.conf"), "version=3.0.0\n").unwrap();
    let next = Release::new(Version::new("3.0.0").unwrap()).with_artifact(&artifact);
    conformance::target(&target, &next).await;
}

#[tokio::test]
async fn http_and_tcp_probes_conform() {
    let server = TestHttpServer::start(|_req| {
        TestResponse::json(
            200,
            &serde_json::json!({"status": "ok", "version": "1.0.0"}),
        )
    })
    .await
    .unwrap();
    let dead = Endpoint::http("127.0.0.1", free_port().unwrap());
    let up = Endpoint::http("127.0.0.1", server.addr().port());
    let healthy = ProbeRequest::new(id("blue"), up, Some(Version::new("1.0.0").unwrap()));
    let down = ProbeRequest::new(id("green"), dead, None);
    let http = HttpProbe::builder()
        .expect_field("status", "ok")
        .version_field("version")
        .build()
        .unwrap();
    conformance::health_probe(&http, &healthy, &down).await;
    let tcp = TcpProbe::new();
    let mut plain = healthy.clone();
    plain.expected_version = None;
    conformance::health_probe(&tcp, &plain, &down).await;
}

/// Run `suite`; the message it panicked with (it caught the broken implementation), or an
/// empty string when it passed.
async fn fails<F>(suite: F) -> String
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::spawn(suite).await {
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned())
        }
        _ => String::new(),
    }
}

/// A target whose `prepare` also activates: the new release goes live before its time.
#[derive(Debug)]
struct PrepareActivates(FakeTarget);

#[async_trait]
impl Target for PrepareActivates {
    fn id(&self) -> &TargetId {
        self.0.id()
    }
    fn endpoint(&self) -> Endpoint {
        self.0.endpoint()
    }
    async fn current(&self) -> Result<Option<Version>> {
        self.0.current().await
    }
    async fn prepare(&self, release: &Release) -> Result<()> {
        self.0.prepare(release).await?;
        self.0.activate(&release.version).await
    }
    async fn activate(&self, version: &Version) -> Result<()> {
        self.0.activate(version).await
    }
    async fn stop(&self) -> Result<()> {
        self.0.stop().await
    }
    async fn start(&self) -> Result<()> {
        self.0.start().await
    }
}

/// A switch that ignores what it does not know instead of refusing it, or whose drained targets
/// never lose their sessions.
#[derive(Debug)]
struct SloppySwitch {
    inner: FakeSwitch,
    sessions_stay: bool,
}

#[async_trait]
impl TrafficSwitch for SloppySwitch {
    async fn weights(&self) -> Result<Weights> {
        self.inner.weights().await
    }
    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        if self.sessions_stay {
            return self.inner.set_weights(weights).await;
        }
        let known = self.inner.weights().await?;
        let names: Vec<TargetId> = weights
            .iter()
            .filter(|(t, _)| known.get(t).is_some())
            .map(|(t, _)| t.clone())
            .collect();
        self.inner.set_weights(&weights.only(&names)).await
    }
    async fn drain(&self, target: &TargetId) -> Result<()> {
        self.inner.drain(target).await
    }
    async fn active_sessions(&self, target: &TargetId) -> Result<u64> {
        if self.sessions_stay {
            Ok(3)
        } else {
            self.inner.active_sessions(target).await
        }
    }
}

/// A probe that fails (`Err`) when a target does not answer, instead of saying it is unhealthy.
#[derive(Debug)]
struct ErringProbe(FakeProbe);

#[async_trait]
impl HealthProbe for ErringProbe {
    async fn check(&self, request: &ProbeRequest) -> Result<Health> {
        let h = self.0.check(request).await?;
        if h.healthy {
            Ok(h)
        } else {
            Err(Error::new(
                ErrorKind::Unavailable,
                "probe",
                request.target.to_string(),
                "down",
            ))
        }
    }
}

/// A gate whose every measurement fails to read its source.
#[derive(Debug)]
struct AlwaysErrs;

#[async_trait]
impl MetricGate for AlwaysErrs {
    fn name(&self) -> &str {
        "always-errs"
    }
    async fn evaluate(&self, _ctx: &GateContext) -> Result<Verdict> {
        Err(Error::new(
            ErrorKind::Unavailable,
            "query",
            "nowhere",
            "connection refused",
        ))
    }
}

/// A runner whose `migrate` says it applied everything but leaves the last migration pending.
#[derive(Debug)]
struct HalfMigrates(FakeMigrations);

#[async_trait]
impl MigrationRunner for HalfMigrates {
    async fn status(&self) -> Result<MigrationStatus> {
        let mut s = self.0.status().await?;
        if s.pending.is_empty() {
            s.pending
                .push(deploy_core::MigrationInfo::new("9", "left", None));
        }
        Ok(s)
    }
    async fn backup(&self) -> Result<BackupId> {
        self.0.backup().await
    }
    async fn migrate(&self) -> Result<Option<SchemaVersion>> {
        self.0.migrate().await
    }
    async fn verify(&self, version: Option<&SchemaVersion>) -> Result<()> {
        self.0.verify(version).await
    }
    async fn revert(&self, to: Option<&SchemaVersion>, backup: Option<&BackupId>) -> Result<()> {
        self.0.revert(to, backup).await
    }
}

/// A maintenance page that never shows.
#[derive(Debug)]
struct NeverShown(FakeMaintenance);

#[async_trait]
impl Maintenance for NeverShown {
    async fn enable(&self) -> Result<()> {
        Ok(())
    }
    async fn disable(&self) -> Result<()> {
        self.0.disable().await
    }
    async fn is_enabled(&self) -> Result<bool> {
        self.0.is_enabled().await
    }
}

#[tokio::test]
async fn every_suite_catches_an_implementation_that_breaks_its_contract() {
    let ctx = GateContext::new(Version::new("2").unwrap(), vec![id("green")], vec![]);
    // (the broken implementation, what the suite must say about it, what it said)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "target whose prepare activates",
            "prepare must not change the current version",
            fails(async {
                let t = PrepareActivates(FakeTarget::new("blue").with_current("1.0.0"));
                conformance::target(&t, &Release::new(Version::new("2.0.0").unwrap())).await;
            })
            .await,
        ),
        (
            "switch that ignores unknown targets",
            "an unknown target must be refused",
            fails(async {
                let s = SloppySwitch {
                    inner: FakeSwitch::new(&[("blue", 100), ("green", 0)]),
                    sessions_stay: false,
                };
                conformance::traffic_switch(&s, &id("blue"), &id("green")).await;
            })
            .await,
        ),
        (
            "switch whose drained target keeps its sessions",
            "reaches 0 sessions",
            fails(async {
                let s = SloppySwitch {
                    inner: FakeSwitch::new(&[("blue", 100), ("green", 0)]),
                    sessions_stay: true,
                };
                tokio::time::pause();
                conformance::traffic_switch(&s, &id("blue"), &id("green")).await;
            })
            .await,
        ),
        (
            "probe that errs on a down target",
            "an unreachable target is Ok(unhealthy), not Err",
            fails(async {
                let up = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
                let down = Arc::new(FakeTarget::new("green"));
                let p = ErringProbe(FakeProbe::new(vec![up, down]));
                let ok = ProbeRequest::new(id("blue"), Endpoint::http("127.0.0.1", 9), None);
                let bad = ProbeRequest::new(id("green"), Endpoint::http("127.0.0.1", 9), None);
                conformance::health_probe(&p, &ok, &bad).await;
            })
            .await,
        ),
        (
            "gate that always errs",
            "a gate that only errs is never evidence",
            fails(async move {
                conformance::metric_gate(&AlwaysErrs, &ctx, VerdictKind::Pass).await;
            })
            .await,
        ),
        (
            "gate that answers other than the data says",
            "measured data it can read",
            fails(async {
                let ctx = GateContext::new(Version::new("2").unwrap(), vec![], vec![]);
                conformance::metric_gate(&FakeGate::failing("f"), &ctx, VerdictKind::Pass).await;
            })
            .await,
        ),
        (
            "runner that leaves a migration pending",
            "nothing pending after migrate",
            fails(async {
                let m = HalfMigrates(FakeMigrations::new(
                    &[("1", "init")],
                    &[("2", "add_note", None)],
                ));
                conformance::migration_runner(&m).await;
            })
            .await,
        ),
        (
            "maintenance page that never shows",
            "enabled after enable",
            fails(async {
                conformance::maintenance(&NeverShown(FakeMaintenance::new())).await;
            })
            .await,
        ),
    ];
    for (broken, must_say, said) in &cases {
        assert!(
            said.contains(must_say),
            "the suite must catch a {broken} by saying {must_say:?}; it said {said:?}"
        );
    }
    // The unbroken fakes pass the same suites (tests/fakes_conformance.rs), so what each case
    // catches is its breakage.
}
