//! The upstream TrafficSwitch against a real nginx.

mod common;

use std::time::{Duration, Instant};

use common::{Load, get, site, t, w};
use deploy_core::testing::conformance;
use deploy_core::{ErrorKind, LocalHost, TrafficSwitch, Weights};
use deploy_nginx::UpstreamSwitch;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_traffic_switch_conformance_suite() {
    let s = site(w(100, 0), 1).await;
    conformance::traffic_switch(s.switch.as_ref(), &t("blue"), &t("green")).await;
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    let (status, _, body) = get(&s.nginx.url("/"), None).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_moves_traffic_and_reads_back() {
    let s = site(w(100, 0), 1).await;
    for _ in 0..5 {
        assert_eq!(get(&s.nginx.url("/"), None).await.2, "blue");
    }
    let gen_before = s.switch.live_generation().await.unwrap();
    s.switch.set_weights(&w(0, 100)).await.unwrap();
    assert_ne!(s.switch.live_generation().await.unwrap(), gen_before);
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    let file = std::fs::read_to_string(s.switch.include_path()).unwrap();
    assert!(
        file.contains(&format!("server {} down;", s.blue.addr())),
        "{file}"
    );
    for _ in 0..5 {
        assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
    }
    // Same weights again: idempotent, and no reload (the generation stays).
    let g = s.switch.live_generation().await.unwrap();
    s.switch.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(s.switch.live_generation().await.unwrap(), g);
    // Drain reads 0 and the drained backend's connections from nginx go away.
    s.switch.set_weights(&w(50, 50)).await.unwrap();
    for _ in 0..10 {
        get(&s.nginx.url("/"), None).await;
    }
    s.switch.drain(&t("green")).await.unwrap();
    assert_eq!(s.switch.weights().await.unwrap(), w(50, 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sessions = s.switch.active_sessions(&t("green")).await.unwrap();
    while sessions > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sessions = s.switch.active_sessions(&t("green")).await.unwrap();
    }
    assert_eq!(sessions, 0, "green drained");
    for _ in 0..5 {
        assert_eq!(get(&s.nginx.url("/"), None).await.2, "blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weights_split_traffic() {
    let s = site(w(100, 0), 1).await;
    s.switch.set_weights(&w(75, 25)).await.unwrap();
    assert_eq!(s.switch.weights().await.unwrap(), w(75, 25));
    let mut green = 0;
    for _ in 0..100 {
        if get(&s.nginx.url("/"), None).await.2 == "green" {
            green += 1;
        }
    }
    // nginx's smooth weighted round robin is exact per worker: 25 of every 100.
    assert_eq!(green, 25, "green served {green} of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_nginx_refuses_is_never_put_in_place_and_traffic_flows() {
    let s = site(w(100, 0), 1).await;
    let before = std::fs::read(s.switch.include_path()).unwrap();
    let live = s.switch.live_generation().await.unwrap();
    // A port nginx refuses: the render is valid for the builder, nginx -t says why not.
    let broken = UpstreamSwitch::builder(
        Arc::new(LocalHost::new()),
        s.nginx.nginx(),
        s.switch.include_path(),
    )
    .server("blue", s.blue.addr().to_string())
    .server("green", s.green.addr().to_string())
    .server("ghost", "127.0.0.1:99999")
    .status_listen(s.switch.status_listen())
    .build()
    .unwrap();
    let load = Load::start(s.nginx.addr(), 4, 2_000);
    let err = broken
        .set_weights(
            &Weights::new()
                .with(t("blue"), 1)
                .with(t("green"), 1)
                .with(t("ghost"), 1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("invalid port in upstream \"127.0.0.1:99999\""),
        "nginx's message: {msg}"
    );
    assert!(
        msg.contains("the include in place was not changed"),
        "{msg}"
    );
    println!("refused as expected: {msg}");
    // Nothing changed: the file, the running generation, the weights; no temporary files left.
    assert_eq!(std::fs::read(s.switch.include_path()).unwrap(), before);
    assert_eq!(s.switch.live_generation().await.unwrap(), live);
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    let leftovers: Vec<_> = std::fs::read_dir(s.nginx.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("deploy-nginx"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    while load.sent() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = load.finish().await;
    println!("traffic during the refused change: {stats:?}");
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(stats.by_body.get("green"), None);
    assert!(stats.ok >= 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_is_detected_as_not_applied() {
    let s = site(w(100, 0), 1).await;
    let live = s.switch.live_generation().await.unwrap();
    let before = std::fs::read(s.switch.include_path()).unwrap();
    // Passes `nginx -t` (which does not bind) but the master cannot bind it on reload.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(&s.extra, format!("server {{ listen 127.0.0.1:{port}; }}\n")).unwrap();
    let started = Instant::now();
    let err = s.switch.set_weights(&w(0, 100)).await.unwrap_err();
    println!("not applied, detected after {:?}: {err}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let msg = err.to_string();
    assert!(msg.contains("did not apply generation"), "{msg}");
    assert!(
        msg.contains("Address already in use"),
        "error log attached: {msg}"
    );
    assert!(!err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "detected from the error log before the 10 s deadline"
    );
    // The old configuration keeps serving and the file says so.
    assert_eq!(s.switch.live_generation().await.unwrap(), live);
    assert_eq!(std::fs::read(s.switch.include_path()).unwrap(), before);
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "blue");
    // Once the port is free of the conflict, the same change goes through.
    std::fs::write(&s.extra, "").unwrap();
    drop(busy);
    s.switch.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(s.switch.weights().await.unwrap(), w(0, 100));
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_hup_to_the_master_pid_and_generation_read_on_the_host_work_too() {
    let s = site(w(100, 0), 1).await;
    let hup = UpstreamSwitch::builder(
        Arc::new(LocalHost::new()),
        s.nginx.nginx().with_reload(deploy_nginx::Reload::Hup {
            pid_file: s.nginx.dir().join("nginx.pid"),
        }),
        s.switch.include_path(),
    )
    .server("blue", s.blue.addr().to_string())
    .server("green", s.green.addr().to_string())
    .keepalive(32)
    .status_listen(s.switch.status_listen())
    .read_generation_on_host() // `curl` through the Host, as for a remote nginx
    .build()
    .unwrap();
    assert_eq!(
        hup.live_generation().await.unwrap(),
        s.switch.live_generation().await.unwrap()
    );
    let workers_before = s.nginx.workers();
    hup.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(hup.weights().await.unwrap(), w(0, 100));
    assert_eq!(get(&s.nginx.url("/"), None).await.2, "green");
    let now: Vec<u32> = s
        .nginx
        .workers()
        .into_iter()
        .filter(|(_, title)| title == "nginx: worker process")
        .map(|(p, _)| p)
        .collect();
    assert!(
        !now.is_empty()
            && now
                .iter()
                .all(|p| workers_before.iter().all(|(b, _)| b != p)),
        "new workers after the reload: before {workers_before:?}, now {now:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_targets_change_nothing() {
    let s = site(w(100, 0), 1).await;
    let live = s.switch.live_generation().await.unwrap();
    let err = s
        .switch
        .set_weights(&Weights::new().with(t("green"), 5).with(t("purple"), 5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("purple"), "{err}");
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    assert_eq!(s.switch.live_generation().await.unwrap(), live);
    assert_eq!(
        s.switch
            .active_sessions(&t("purple"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_include_needs_every_target_and_is_then_written() {
    let s = site(w(100, 0), 1).await;
    let live = s.switch.live_generation().await.unwrap();
    std::fs::remove_file(s.switch.include_path()).unwrap();
    assert_eq!(
        s.switch.weights().await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = s
        .switch
        .set_weights(&w(0, 100).only(&[t("green")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("blue"), "{err}");
    assert!(!s.switch.include_path().exists());
    s.switch.set_weights(&w(30, 70)).await.unwrap();
    assert_eq!(s.switch.weights().await.unwrap(), w(30, 70));
    assert_ne!(s.switch.live_generation().await.unwrap(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_include_the_main_config_does_not_name_is_refused() {
    let s = site(w(100, 0), 1).await;
    let elsewhere = s.nginx.dir().join("other-upstream.conf");
    let other = UpstreamSwitch::builder(Arc::new(LocalHost::new()), s.nginx.nginx(), &elsewhere)
        .server("blue", s.blue.addr().to_string())
        .status_listen("127.0.0.1:9".parse().unwrap())
        .build()
        .unwrap();
    let err = other
        .install(&Weights::new().with(t("blue"), 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("has no line `include"), "{err}");
    assert!(!elsewhere.exists());
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
}
