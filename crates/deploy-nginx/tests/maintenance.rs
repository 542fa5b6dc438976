//! Maintenance by flag file against a real nginx running the rendered snippet.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::{get, site, w};
use deploy_core::testing::conformance;
use deploy_core::{ErrorKind, LocalHost, Maintenance};
use deploy_nginx::{MAINTENANCE_MARKER, MaintenancePage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_maintenance_conformance_suite() {
    let s = site(w(100, 0), 1).await;
    let page = s.page().build().unwrap();
    conformance::maintenance(&page).await;
    assert!(!s.flag.exists(), "ends disabled");
    assert_eq!(get(&s.nginx.url("/"), None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shows_503_with_the_page_and_retry_after_off_shows_the_site() {
    let s = site(w(100, 0), 1).await;
    let page = s.page().build().unwrap();
    assert!(!page.is_enabled().await.unwrap());

    page.enable().await.unwrap();
    assert!(page.is_enabled().await.unwrap());
    assert!(s.flag.exists());
    let (status, retry, body) = get(&s.nginx.url("/any/path?x=1"), None).await;
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("120"));
    assert!(body.contains(MAINTENANCE_MARKER), "{body}");
    assert!(body.contains("Down for maintenance"), "{body}");
    assert_eq!(s.blue.requests(), 0, "no request reached the backend");

    page.disable().await.unwrap();
    assert!(!page.is_enabled().await.unwrap());
    assert!(!s.flag.exists());
    let (status, retry, body) = get(&s.nginx.url("/"), None).await;
    assert_eq!((status, retry, body.as_str()), (200, None, "blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_addresses_see_the_site_during_maintenance() {
    let s = site(w(100, 0), 1).await;
    // Verified from 127.0.0.1, which is not on the allow-list.
    let page = s
        .page()
        .verify_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .build()
        .unwrap();
    page.enable().await.unwrap();
    let from_bypass = get(
        &s.nginx.url("/"),
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
    )
    .await;
    assert_eq!((from_bypass.0, from_bypass.2.as_str()), (200, "blue"));
    let from_other = get(
        &s.nginx.url("/"),
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))),
    )
    .await;
    assert_eq!(from_other.0, 503);
    // A page verified from the bypass address can never see the page: enable fails and says so.
    page.disable().await.unwrap();
    let blind = s
        .page()
        .verify_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .verify_deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = blind.enable().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.to_string().contains("answers 200"), "{err}");
    assert!(!s.flag.exists(), "the flag was put back as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_path_the_config_does_not_check_is_reported_and_undone() {
    let s = site(w(100, 0), 1).await;
    let wrong = s.nginx.dir().join("shared/maintenance.flag");
    let page = MaintenancePage::builder(Arc::new(LocalHost::new()), &wrong)
        .verify_url(s.nginx.url("/"))
        .verify_deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = page.enable().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let msg = err.to_string();
    assert!(msg.contains("answers 200"), "{msg}");
    assert!(
        msg.contains("does the nginx configuration check this flag path"),
        "{msg}"
    );
    assert!(!wrong.exists(), "nothing left at the wrong path");
    assert!(!page.is_enabled().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_without_the_page_is_not_the_maintenance_page() {
    // The backend itself answers 503: the flag is not what users see.
    let backend = deploy_core::testing::TestHttpServer::start(|_| {
        deploy_core::testing::TestResponse::text(503, "overloaded")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = MaintenancePage::builder(Arc::new(LocalHost::new()), dir.path().join("flag"))
        .verify_url(backend.url("/"))
        .verify_deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = page.enable().await.unwrap_err();
    assert!(
        err.to_string().contains("without the maintenance page"),
        "{err}"
    );
    assert!(!page.is_enabled().await.unwrap());
}

#[tokio::test]
async fn bad_configuration_is_refused_at_build() {
    let err = MaintenancePage::builder(Arc::new(LocalHost::new()), "relative/flag")
        .verify_url("ftp://x/")
        .verify_url("http://ops:secret@[::1/")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let m = err.to_string();
    assert!(
        m.contains("must be absolute") && m.contains("not http"),
        "{m}"
    );
    assert!(!m.contains("secret"), "passwords are not printed: {m}");
}
