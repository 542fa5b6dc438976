//! Shared by the real-server tests: a site of two backends behind a real nginx, with the
//! maintenance snippet and the upstream include, and a keep-alive load generator.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deploy_core::testing::process::free_port;
use deploy_core::testing::{TestHttpServer, TestResponse};
use deploy_core::{LocalHost, TargetId, Weights};
use deploy_nginx::testing::NginxServer;
use deploy_nginx::{MaintenancePage, MaintenanceSnippet, UpstreamSwitch};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub fn t(s: &str) -> TargetId {
    TargetId::new(s).unwrap()
}

pub fn w(blue: u32, green: u32) -> Weights {
    Weights::new().with(t("blue"), blue).with(t("green"), green)
}

pub struct Site {
    pub blue: TestHttpServer,
    pub green: TestHttpServer,
    pub switch: Arc<UpstreamSwitch>,
    pub flag: PathBuf,
    pub extra: PathBuf,
    pub nginx: NginxServer,
}

impl Site {
    pub fn page(&self) -> deploy_nginx::MaintenancePageBuilder {
        MaintenancePage::builder(Arc::new(LocalHost::new()), &self.flag)
            .verify_url(self.nginx.url("/"))
            .verify_deadline(Duration::from_secs(5))
    }
}

/// Two backends answering their own name, nginx in front with the maintenance snippet (bypass
/// for 127.0.0.2) and the upstream include at `initial` weights.
pub async fn site(initial: Weights, workers: u32) -> Site {
    let blue = TestHttpServer::start(|_| TestResponse::text(200, "blue"))
        .await
        .unwrap();
    let green = TestHttpServer::start(|_| TestResponse::text(200, "green"))
        .await
        .unwrap();
    let b = NginxServer::builder().unwrap().workers(workers);
    let dir = b.dir().to_path_buf();
    let include = dir.join("upstream.conf");
    let extra = dir.join("extra.conf");
    let flag = dir.join("shared/maintenance.on");
    let switch = UpstreamSwitch::builder(Arc::new(LocalHost::new()), b.nginx(), &include)
        .upstream("app")
        .server("blue", blue.addr().to_string())
        .server("green", green.addr().to_string())
        .keepalive(32)
        .status_listen(SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())))
        .build()
        .unwrap();
    let snippet = MaintenanceSnippet::new(&flag, dir.join("page"))
        .retry_after_secs(120)
        .bypass("127.0.0.2")
        .render()
        .unwrap();
    let nginx = b
        .http(snippet.http.clone())
        .http(format!("include {};", include.display()))
        .http(format!("include {};", extra.display()))
        .server(snippet.server.clone())
        .server(
            "location / { proxy_pass http://app; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }",
        )
        .file("upstream.conf", switch.render(&initial).unwrap())
        .file("extra.conf", "")
        .file("shared/.keep", "")
        .file("page/maintenance.html", snippet.page.clone())
        .start()
        .await
        .unwrap();
    Site {
        blue,
        green,
        switch: Arc::new(switch),
        flag,
        extra,
        nginx,
    }
}

/// The team's own maintenance page, as a runbook ships it: no deploy-nginx marker in it.
pub const TEAM_PAGE: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
    <title>Shop: back soon</title></head>\n<body>\n  <h1>We'll be back soon</h1>\n  \
    <p>Scheduled maintenance, about 15 minutes.</p>\n</body>\n</html>\n";

/// A site behind the runbook's classic pattern, written by hand rather than rendered by
/// [`MaintenanceSnippet`]: `if (-f <flag>) { return 503; }` and, with `error_page`,
/// `error_page 503 @maintenance` serving `static/maintenance.html` (the [`TEAM_PAGE`]); without
/// it, nginx's own 503 page.
pub struct RunbookSite {
    pub nginx: NginxServer,
    pub flag: PathBuf,
    /// `<dir>/static/maintenance.html`, the page file nginx serves.
    pub page_file: PathBuf,
}

impl RunbookSite {
    /// A page for this site, checked on `/` with the default deadline (10 s).
    pub fn page(&self) -> deploy_nginx::MaintenancePageBuilder {
        MaintenancePage::builder(Arc::new(LocalHost::new()), &self.flag)
            .verify_url(self.nginx.url("/"))
    }
}

pub async fn runbook_site(error_page: bool) -> RunbookSite {
    let b = NginxServer::builder().unwrap();
    let dir = b.dir().to_path_buf();
    let flag = dir.join(".maintenance");
    let maintenance = if error_page {
        format!(
            "error_page 503 @maintenance;\n\
             location @maintenance {{ root {}; rewrite ^(.*)$ /maintenance.html break; }}",
            dir.join("static").display()
        )
    } else {
        String::new()
    };
    let nginx = b
        .server(format!(
            "if (-f {}) {{ return 503; }}\n{maintenance}",
            flag.display()
        ))
        .server("location / { return 200 \"the site\\n\"; }")
        .file("static/maintenance.html", TEAM_PAGE)
        .start()
        .await
        .unwrap();
    RunbookSite {
        nginx,
        flag,
        page_file: dir.join("static/maintenance.html"),
    }
}

/// A plain GET through a new connection (optionally from `from`): status, Retry-After, body.
pub async fn get(url: &str, from: Option<IpAddr>) -> (u16, Option<String>, String) {
    let mut c = deploy_core::http::client_builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5));
    if let Some(ip) = from {
        c = c.local_address(ip);
    }
    let r = c.build().unwrap().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.text().await.unwrap())
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    /// Answers 200.
    pub ok: u64,
    /// Requests that failed for the user: a non-200 answer, or an error on a fresh connection,
    /// or a second error after a retry.
    pub failed: u64,
    /// Requests retried once on a fresh connection because a reused keep-alive connection was
    /// closed before any byte of the answer arrived (what browsers and HTTP clients do).
    pub stale_retries: u64,
    /// Connections opened.
    pub connections: u64,
    /// 200 bodies counted by text (which backend served).
    pub by_body: BTreeMap<String, u64>,
    /// The first failures, for the message.
    pub errors: Vec<String>,
}

impl LoadStats {
    fn merge(&mut self, o: LoadStats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.stale_retries += o.stale_retries;
        self.connections += o.connections;
        for (k, v) in o.by_body {
            *self.by_body.entry(k).or_default() += v;
        }
        self.errors.extend(o.errors.into_iter().take(5));
    }
}

/// `connections` keep-alive connections sending GETs in a loop, until stopped or `max`
/// requests were sent in total.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<LoadStats>>,
}

impl Load {
    pub fn start(addr: SocketAddr, connections: usize, max: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let tasks = (0..connections)
            .map(|_| tokio::spawn(client(addr, Arc::clone(&stop), Arc::clone(&sent), max)))
            .collect();
        Self { stop, sent, tasks }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub async fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadStats::default();
        for t in self.tasks {
            all.merge(t.await.unwrap());
        }
        all
    }
}

enum Attempt {
    Answer {
        status: u16,
        body: String,
        close: bool,
    },
    /// The connection ended before any byte of the answer.
    Stale(String),
    Broken(String),
}

async fn once(conn: &mut BufReader<TcpStream>) -> Attempt {
    let req = b"GET / HTTP/1.1\r\nHost: load.test\r\nUser-Agent: deploy-nginx-load\r\n\r\n";
    if let Err(e) = conn.get_mut().write_all(req).await {
        return Attempt::Stale(format!("write: {e}"));
    }
    let mut line = String::new();
    match conn.read_line(&mut line).await {
        Ok(0) => return Attempt::Stale("closed before the status line".into()),
        Ok(_) => {}
        Err(e) => return Attempt::Stale(format!("read status line: {e}")),
    }
    let status: u16 = match line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
        Some(s) => s,
        None => return Attempt::Broken(format!("bad status line {line:?}")),
    };
    let mut len = None;
    let mut close = false;
    loop {
        let mut h = String::new();
        match conn.read_line(&mut h).await {
            Ok(0) => return Attempt::Broken("closed in the headers".into()),
            Ok(_) => {}
            Err(e) => return Attempt::Broken(format!("read headers: {e}")),
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            let n = n.trim().to_ascii_lowercase();
            let v = v.trim();
            if n == "content-length" {
                len = v.parse::<usize>().ok();
            } else if n == "connection" && v.eq_ignore_ascii_case("close") {
                close = true;
            } else if n == "transfer-encoding" {
                return Attempt::Broken(format!("unsupported transfer-encoding {v}"));
            }
        }
    }
    let Some(len) = len else {
        return Attempt::Broken("no content-length".into());
    };
    let mut body = vec![0; len];
    if let Err(e) = conn.read_exact(&mut body).await {
        return Attempt::Broken(format!("read body: {e}"));
    }
    Attempt::Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    }
}

async fn client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    max: u64,
) -> LoadStats {
    let mut s = LoadStats::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut reused = false;
    let fail = |s: &mut LoadStats, why: String| {
        s.failed += 1;
        if s.errors.len() < 5 {
            s.errors.push(why);
        }
    };
    while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < max {
        let mut retried = false;
        loop {
            if conn.is_none() {
                match TcpStream::connect(addr).await {
                    Ok(c) => {
                        s.connections += 1;
                        conn = Some(BufReader::new(c));
                        reused = false;
                    }
                    Err(e) => {
                        fail(&mut s, format!("connect: {e}"));
                        break;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let attempt = match tokio::time::timeout(Duration::from_secs(5), once(c)).await {
                Ok(a) => a,
                Err(_) => Attempt::Broken("no answer within 5 s".into()),
            };
            match attempt {
                Attempt::Answer {
                    status,
                    body,
                    close,
                } => {
                    if status == 200 {
                        s.ok += 1;
                        *s.by_body.entry(body).or_default() += 1;
                    } else {
                        fail(&mut s, format!("status {status}: {body}"));
                    }
                    if close {
                        conn = None;
                    } else {
                        reused = true;
                    }
                }
                Attempt::Stale(why) if reused && !retried => {
                    s.stale_retries += 1;
                    retried = true;
                    conn = None;
                    let _ = why;
                    continue;
                }
                Attempt::Stale(why) | Attempt::Broken(why) => {
                    fail(&mut s, why);
                    conn = None;
                }
            }
            break;
        }
    }
    s
}
