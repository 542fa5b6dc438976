//! Sticky canary cohorts through a real nginx: cookie-jar users kept on one version, new users
//! placed by the weights, the tester header, promotion and rollback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{t, w};
use deploy_core::testing::conformance;
use deploy_core::testing::process::free_port;
use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{ErrorKind, LocalHost, TrafficSwitch, Weights};
use deploy_nginx::testing::NginxServer;
use deploy_nginx::{StickyConfig, UpstreamSwitch};

const COOKIE: &str = "canary";

struct StickySite {
    _blue: TestHttpServer,
    _green: TestHttpServer,
    switch: Arc<UpstreamSwitch>,
    nginx: NginxServer,
}

/// Two backends answering their name, nginx in front with the sticky switch's include and the
/// location lines it documents (without the `add_header` line when `set_cookie` is false).
async fn sticky_site(initial: Weights, set_cookie: bool) -> StickySite {
    let blue = TestHttpServer::start(|_| TestResponse::text(200, "blue"))
        .await
        .unwrap();
    let green = TestHttpServer::start(|_| TestResponse::text(200, "green"))
        .await
        .unwrap();
    let b = NginxServer::builder().unwrap();
    let include = b.dir().join("upstream.conf");
    let switch = UpstreamSwitch::builder(Arc::new(LocalHost::new()), b.nginx(), &include)
        .upstream("app")
        .server("blue", blue.addr().to_string())
        .server("green", green.addr().to_string())
        .keepalive(16)
        .status_listen(SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())))
        .sticky(StickyConfig::new(COOKIE))
        .build()
        .unwrap();
    let mut lines = switch.sticky_location_lines();
    if !set_cookie {
        lines.pop();
    }
    let nginx = b
        .http(format!("include {};", include.display()))
        .server(format!(
            "location / {{ {} proxy_http_version 1.1; proxy_set_header Connection \"\"; }}",
            lines.join(" ")
        ))
        .file("upstream.conf", switch.render(&initial).unwrap())
        .start()
        .await
        .unwrap();
    StickySite {
        _blue: blue,
        _green: green,
        switch: Arc::new(switch),
        nginx,
    }
}

/// A user with a cookie jar of one cookie, and the version it was first served.
#[derive(Debug, Clone, Default)]
struct User {
    cookie: Option<String>,
    version: Option<String>,
}

/// One answer: the version and the `Set-Cookie` value (`canary=...`), if any.
async fn visit(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    header: Option<&str>,
) -> (String, Option<String>) {
    for attempt in 0..2 {
        let mut req = client.get(url);
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        if let Some(h) = header {
            req = req.header("X-Canary", h);
        }
        match req.send().await {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 200, "{url}");
                let set = r.headers().get("set-cookie").map(|v| {
                    let v = v.to_str().unwrap();
                    assert!(v.ends_with("; Path=/; HttpOnly"), "{v}");
                    v.split(';').next().unwrap().to_owned()
                });
                return (r.text().await.unwrap(), set);
            }
            // A keep-alive connection closed by a reload: once more on a new one.
            Err(e) if attempt == 0 => eprintln!("retry after {e}"),
            Err(e) => panic!("{url}: {e}"),
        }
    }
    unreachable!()
}

/// Every user visits once (64 at a time); a user seen before must get its version again and
/// no new cookie, unless `expect_version` says where everyone must be now (a promotion or a
/// rollback), which then becomes each user's version. Returns how many were served green.
async fn round(
    client: &reqwest::Client,
    url: &str,
    users: &mut [User],
    expect_version: Option<&str>,
) -> usize {
    let mut green = 0;
    for chunk in users.chunks_mut(64) {
        let mut set = tokio::task::JoinSet::new();
        for (i, u) in chunk.iter().enumerate() {
            let (client, url, cookie) = (client.clone(), url.to_owned(), u.cookie.clone());
            set.spawn(async move { (i, visit(&client, &url, cookie.as_deref(), None).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, (version, new_cookie)) = r.unwrap();
            let u = &mut chunk[i];
            if let Some(expect) = expect_version {
                assert_eq!(version, expect, "{u:?}");
                u.version = Some(version.clone());
            }
            match &u.version {
                Some(v) if expect_version.is_none() => {
                    assert_eq!(&version, v, "a placed user changed version: {u:?}");
                    assert_eq!(new_cookie, None, "a placed user got a new cookie: {u:?}");
                }
                Some(_) => {}
                None => {
                    let c = new_cookie.clone().expect("a new user gets a cookie");
                    assert!(c.starts_with(&format!("{COOKIE}={version}.")), "{c}");
                    u.version = Some(version.clone());
                }
            }
            if let Some(c) = new_cookie {
                u.cookie = Some(c);
            }
            if version == "green" {
                green += 1;
            }
        }
    }
    green
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The share `k/n` is within 3 binomial standard deviations of `p`.
fn assert_share(k: usize, n: usize, p: f64, what: &str) {
    let share = k as f64 / n as f64;
    let sigma = (p * (1.0 - p) / n as f64).sqrt();
    eprintln!(
        "{what}: {k} of {n} = {:.2} % on the canary, weight {:.0} %, 3 sigma = {:.2} points",
        share * 100.0,
        p * 100.0,
        3.0 * sigma * 100.0
    );
    assert!(
        (share - p).abs() <= 3.0 * sigma,
        "{what}: {k} of {n} ({:.2} %) not within 3 sigma ({:.2} points) of {:.0} %",
        share * 100.0,
        3.0 * sigma * 100.0,
        p * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_canary_keeps_each_user_on_one_version_until_promotion() {
    let s = sticky_site(w(100, 0), true).await;
    s.switch.check_sticky().await.unwrap();
    let (c, url) = (client(), s.nginx.url("/"));

    // Users of the release before the canary; 300 of them come back only at the next canary.
    let mut before = vec![User::default(); 300];
    assert_eq!(round(&c, &url, &mut before, None).await, 0);

    // Canary at 10 %: 1,000 new users, each kept on its version over two more visits.
    s.switch.set_weights(&w(90, 10)).await.unwrap();
    let mut early = vec![User::default(); 1000];
    let green = round(&c, &url, &mut early, None).await;
    assert_share(green, 1000, 0.10, "new users at 10 %");
    for _ in 0..2 {
        assert_eq!(round(&c, &url, &mut early, None).await, green);
    }

    // 50 %: the early users keep their version, 1,000 new ones are placed half and half.
    s.switch.set_weights(&w(50, 50)).await.unwrap();
    assert_eq!(round(&c, &url, &mut early, None).await, green);
    let mut late = vec![User::default(); 1000];
    let late_green = round(&c, &url, &mut late, None).await;
    assert_share(late_green, 1000, 0.50, "new users at 50 %");
    assert_eq!(round(&c, &url, &mut late, None).await, late_green);
    assert_eq!(round(&c, &url, &mut early, None).await, green);

    // The header, both ways, for one request: no cookie is set or replaced.
    let on_blue = early.iter().find(|u| u.version.as_deref() == Some("blue"));
    let on_green = early.iter().find(|u| u.version.as_deref() == Some("green"));
    let (on_blue, on_green) = (on_blue.unwrap(), on_green.unwrap());
    let (b, g) = (on_blue.cookie.as_deref(), on_green.cookie.as_deref());
    assert_eq!(
        visit(&c, &url, b, Some("always")).await,
        ("green".into(), None)
    );
    assert_eq!(visit(&c, &url, b, None).await, ("blue".into(), None));
    assert_eq!(
        visit(&c, &url, g, Some("never")).await,
        ("blue".into(), None)
    );
    assert_eq!(visit(&c, &url, g, None).await, ("green".into(), None));
    for _ in 0..20 {
        assert_eq!(
            visit(&c, &url, None, Some("always")).await,
            ("green".into(), None)
        );
        assert_eq!(
            visit(&c, &url, None, Some("never")).await,
            ("blue".into(), None)
        );
    }

    // Promotion: everyone on green, with a cookie of the new epoch, and kept there.
    s.switch.set_weights(&w(0, 100)).await.unwrap();
    let mut all: Vec<User> = early.into_iter().chain(late).collect();
    assert_eq!(round(&c, &url, &mut all, Some("green")).await, 2000);
    assert_eq!(round(&c, &url, &mut all, None).await, 2000);
    assert_eq!(visit(&c, &url, None, Some("never")).await.0, "green");

    // The next canary (blue at 20 %): cookies from before the promotion lead nowhere; their
    // holders are placed by the weights like new users.
    s.switch.set_weights(&w(20, 80)).await.unwrap();
    for u in &mut before {
        u.version = None;
    }
    let stale_green = round(&c, &url, &mut before, None).await;
    assert_share(
        300 - stale_green,
        300,
        0.20,
        "users back from before the promotion at 20 %",
    );
    assert_eq!(round(&c, &url, &mut all, None).await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_sticky_canary_returns_its_users_to_the_stable_version() {
    let s = sticky_site(w(100, 0), true).await;
    let (c, url) = (client(), s.nginx.url("/"));
    s.switch.set_weights(&w(90, 10)).await.unwrap();
    let mut users = vec![User::default(); 1000];
    let green = round(&c, &url, &mut users, None).await;
    assert_share(green, 1000, 0.10, "new users at 10 % (rollback run)");
    s.switch.set_weights(&w(100, 0)).await.unwrap();
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    assert_eq!(round(&c, &url, &mut users, Some("blue")).await, 0);
    assert_eq!(round(&c, &url, &mut users, None).await, 0);
    assert_eq!(visit(&c, &url, None, Some("always")).await.0, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sticky_names_a_missing_location_line() {
    let s = sticky_site(w(100, 0), false).await;
    let err = s.switch.check_sticky().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(
        msg.contains("no `add_header Set-Cookie $app_set_cookie;` in any location"),
        "{msg}"
    );
    assert!(!msg.contains("proxy_pass"), "{msg}");
    // The engine asks the same check before it plans: the switch's `check`.
    let via_trait = deploy_core::TrafficSwitch::check(s.switch.as_ref())
        .await
        .unwrap_err();
    assert_eq!(via_trait.to_string(), msg);
    let ok = sticky_site(w(100, 0), true).await;
    deploy_core::TrafficSwitch::check(ok.switch.as_ref())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_switch_passes_the_traffic_switch_conformance_suite() {
    let s = sticky_site(w(100, 0), true).await;
    conformance::traffic_switch(s.switch.as_ref(), &t("blue"), &t("green")).await;
    assert_eq!(s.switch.weights().await.unwrap(), w(100, 0));
    let c = client();
    assert_eq!(visit(&c, &s.nginx.url("/"), None, None).await.0, "blue");
}
