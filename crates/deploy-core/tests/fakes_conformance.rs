//! Every fake passes the conformance suite of its trait, like every real adapter must.

use std::path::Path;
use std::sync::Arc;

use deploy_core::testing::{
    FakeGate, FakeHost, FakeMaintenance, FakeMigrations, FakeProbe, FakeSwitch, FakeTarget,
    conformance,
};
use deploy_core::{
    Command, Endpoint, ErrorKind, FileKind, GateContext, Host, HostExt, ProbeRequest, Release,
    TargetId, Version,
};

fn id(s: &str) -> TargetId {
    TargetId::new(s).unwrap()
}

#[tokio::test]
async fn fake_target_conforms() {
    let t = FakeTarget::new("blue").with_current("1.0.0");
    conformance::target(&t, &Release::new(Version::new("2.0.0").unwrap())).await;
    let fresh = FakeTarget::new("green");
    conformance::target(&fresh, &Release::new(Version::new("1.0.0").unwrap())).await;
}

#[tokio::test]
async fn fake_switch_conforms() {
    let s = FakeSwitch::new(&[("blue", 100), ("green", 0)]);
    conformance::traffic_switch(&s, &id("blue"), &id("green")).await;
    assert_eq!(
        s.current().to_string(),
        "blue=100,green=0",
        "weights restored"
    );
}

#[tokio::test]
async fn fake_probe_conforms() {
    let up = Arc::new(FakeTarget::new("blue").with_current("1.0.0"));
    let down = Arc::new(FakeTarget::new("green"));
    let probe = FakeProbe::new(vec![up.clone(), down.clone()]);
    let ok = ProbeRequest::new(
        id("blue"),
        Endpoint::http("127.0.0.1", 9),
        Some(Version::new("1.0.0").unwrap()),
    );
    let bad = ProbeRequest::new(id("green"), Endpoint::http("127.0.0.1", 9), None);
    conformance::health_probe(&probe, &ok, &bad).await;
}

#[tokio::test]
async fn fake_migrations_conform() {
    let m = FakeMigrations::new(
        &[("1", "init")],
        &[("2", "add_note", None), ("3", "add_index", None)],
    );
    conformance::migration_runner(&m).await;
    assert_eq!(m.current().unwrap().0, "1");
}

#[tokio::test]
async fn fake_gate_and_maintenance_conform() {
    let ctx = GateContext::new(
        Version::new("2").unwrap(),
        vec![id("green")],
        vec![id("blue")],
    );
    use deploy_core::VerdictKind::{Fail, Inconclusive, Pass};
    for (g, kind) in [
        (FakeGate::passing("a"), Pass),
        (FakeGate::failing("b"), Fail),
        (FakeGate::sequence("c", &[Inconclusive]), Inconclusive),
    ] {
        conformance::metric_gate(&g, &ctx, kind).await;
    }
    let m = FakeMaintenance::new();
    conformance::maintenance(&m).await;
    assert!(!m.is_on());
}

#[tokio::test]
async fn fake_host_files_behave_like_a_file_system() {
    let h = FakeHost::new().with_responder(|c| {
        let code = if c.program == "false" { 1 } else { 0 };
        deploy_core::Output::new(Some(code), None, b"out".to_vec(), b"boom".to_vec())
    });
    h.create_dir_all(Path::new("/srv/app/releases"))
        .await
        .unwrap();
    h.write_file(Path::new("/srv/app/a"), b"one", Some(0o600))
        .await
        .unwrap();
    h.write_file(Path::new("/srv/app/a"), b"two", None)
        .await
        .unwrap();
    assert_eq!(h.read_file(Path::new("/srv/app/a")).await.unwrap(), b"two");
    assert!(
        h.write_file(Path::new("/nope/x"), b"", None).await.is_err(),
        "no parent directory"
    );
    h.symlink(Path::new("releases/1"), Path::new("/srv/app/current.tmp"))
        .await
        .unwrap();
    h.rename(
        Path::new("/srv/app/current.tmp"),
        Path::new("/srv/app/current"),
    )
    .await
    .unwrap();
    assert_eq!(
        h.read_link(Path::new("/srv/app/current"))
            .await
            .unwrap()
            .unwrap(),
        Path::new("releases/1")
    );
    assert_eq!(h.read_link(Path::new("/srv/app/none")).await.unwrap(), None);
    let names: Vec<(String, FileKind)> = h.list_dir(Path::new("/srv/app")).await.unwrap();
    assert_eq!(
        names,
        [
            ("a".into(), FileKind::File),
            ("current".into(), FileKind::Symlink),
            ("releases".into(), FileKind::Dir)
        ]
    );
    h.remove(Path::new("/srv/app/releases")).await.unwrap();
    h.remove(Path::new("/srv/app/releases")).await.unwrap();
    assert_eq!(
        h.file_kind(Path::new("/srv/app/releases")).await.unwrap(),
        None
    );
    let out = h.run(&Command::new("true").arg("x y")).await.unwrap();
    assert!(out.success());
    let err = h.run_checked(&Command::new("false")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed);
    assert_eq!(err.to_string(), "run `false` on fake: exit code 1: boom");
    assert_eq!(h.commands().len(), 2);
}
