//! Maintenance by flag file against a real nginx running the rendered snippet.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::{TEAM_PAGE, get, runbook_site, site, w};
use deploy_core::testing::conformance;
use deploy_core::{ErrorKind, LocalHost, Maintenance};
use deploy_nginx::{MAINTENANCE_MARKER, MaintenancePage, PageCheck};

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
    let msg = err.to_string();
    assert!(
        msg.contains("answers 503 with another body, \"overloaded\" after 300ms, expected 503 with a body containing \"deploy-nginx:maintenance\""),
        "{msg}"
    );
    assert!(msg.contains("give its file (`page_file`)"), "{msg}");
    assert!(!page.is_enabled().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbooks_classic_pattern_with_the_teams_own_page_goes_on_at_once() {
    // `if (-f …) { return 503; }` + `error_page 503 @maintenance` serving the team's page, which
    // does not carry the marker: known by its file. Before `PageCheck`, the marker was required
    // and enable failed after its whole 10 s deadline.
    let s = runbook_site(true).await;
    let page = s
        .page()
        .page_check(PageCheck::File(s.page_file.clone()))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    page.enable().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "enable took {took:?}");
    assert!(s.flag.exists());
    let (status, _, body) = get(&s.nginx.url("/"), None).await;
    assert_eq!((status, body.as_str()), (503, TEAM_PAGE));
    assert!(!body.contains(MAINTENANCE_MARKER));

    page.disable().await.unwrap();
    assert!(!s.flag.exists());
    let (status, _, body) = get(&s.nginx.url("/"), None).await;
    assert_eq!((status, body.as_str()), (200, "the site\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_s_own_503_is_not_the_team_s_page_and_the_flag_is_removed() {
    // The flag check without `error_page`: nginx answers its built-in 503 page.
    let s = runbook_site(false).await;
    let page = s
        .page()
        .page_check(PageCheck::File(s.page_file.clone()))
        .verify_deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = page.enable().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let msg = err.to_string();
    let url = s.nginx.url("/");
    let file = s.page_file.display();
    for needle in [
        format!(
            "{url} answers 503 with another body, \"<html> <head><title>503 Service Temporarily Unavailable</title></head>"
        ),
        format!(
            "after 500ms, expected 503 with the page file {file} ({} bytes) as its body",
            TEAM_PAGE.len()
        ),
        format!("is {file} the file nginx serves for 503"),
        "the flag file was removed again".to_owned(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} missing in {msg}");
    }
    assert!(
        !msg.contains("does the nginx configuration check this flag path"),
        "{msg}"
    );
    assert!(!s.flag.exists(), "the flag is gone");
    assert!(!page.is_enabled().await.unwrap());
    let (status, _, body) = get(&url, None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "the site\n"),
        "the site is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_s_page_is_known_by_a_text_in_it_or_as_any_503_but_not_by_the_marker() {
    let s = runbook_site(true).await;
    for check in [
        PageCheck::Contains("We'll be back soon".into()),
        PageCheck::Any503,
    ] {
        let page = s.page().page_check(check.clone()).build().unwrap();
        page.enable()
            .await
            .unwrap_or_else(|e| panic!("{check:?}: {e}"));
        assert!(s.flag.exists());
        page.disable().await.unwrap();
        assert!(!s.flag.exists());
    }
    // The default looks for the marker, which the team's page does not carry: refused, with
    // the way to name the page, and the flag removed.
    let page = s
        .page()
        .verify_deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(page.page_check(), &PageCheck::default());
    let msg = page.enable().await.unwrap_err().to_string();
    assert!(
        msg.contains("answers 503 with another body, \"<!DOCTYPE html> <html lang=\"en\">"),
        "{msg}"
    );
    assert!(
        msg.contains("expected 503 with a body containing \"deploy-nginx:maintenance\""),
        "{msg}"
    );
    assert!(msg.contains("give its file (`page_file`)"), "{msg}");
    assert!(!s.flag.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_file_that_cannot_be_read_changes_nothing() {
    let s = runbook_site(true).await;
    let missing = s.nginx.dir().join("static/missing.html");
    let page = s
        .page()
        .page_check(PageCheck::File(missing.clone()))
        .build()
        .unwrap();
    let err = page.enable().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("enable maintenance flag "), "{msg}");
    assert!(
        msg.contains(&format!(
            "read the maintenance page file {}",
            missing.display()
        )),
        "{msg}"
    );
    assert!(!s.flag.exists(), "the flag was never written");
    std::fs::write(&missing, " \n").unwrap();
    let msg = page.enable().await.unwrap_err().to_string();
    assert!(msg.contains("the file is empty"), "{msg}");
    assert!(!s.flag.exists());
    assert_eq!(get(&s.nginx.url("/"), None).await.0, 200);
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
