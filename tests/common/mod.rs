//! Helpers shared by the root end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use deploy::testing::{TestHttpServer, TestResponse};

/// An HTTP server answering `/health` with the version under `<root>/current`, or 503 when that
/// release has a `BROKEN` file or nothing is current.
pub async fn slot_server(root: PathBuf) -> TestHttpServer {
    TestHttpServer::start(move |_req| {
        let current = root.join("current");
        match std::fs::read_to_string(current.join("VERSION")) {
            Ok(v) if !current.join("BROKEN").exists() => TestResponse::json(
                200,
                &serde_json::json!({"status": "ok", "version": v.trim()}),
            ),
            _ => TestResponse::json(503, &serde_json::json!({"status": "down"})),
        }
    })
    .await
    .unwrap()
}

/// A release directory for `version` under `dir` (with a `BROKEN` marker when `broken`).
pub fn artifact(dir: &Path, version: &str, broken: bool) -> PathBuf {
    let d = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("VERSION"), version).unwrap();
    if broken {
        std::fs::write(d.join("BROKEN"), "").unwrap();
    }
    d
}

/// The body of `GET url`.
pub async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}
