//! Recreate through the plan-file path against real servers: a real nginx in front of the app
//! with the maintenance snippet (`[maintenance] kind = "nginx"`), a real PostgreSQL migrated
//! with a destructive migration (`[migrations] kind = "postgres"`), hooks, smoke checks, and
//! bounded load on nginx that sees the site, then the maintenance page, then the new release —
//! and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deploy::Outcome;
use deploy::adapters::Adapters;
use deploy::nginx::testing::NginxServer;
use deploy::nginx::{MAINTENANCE_MARKER, MaintenanceSnippet};
use deploy::plan_file::PlanFile;
use deploy::postgres::PgMigrationRunner;
use deploy::postgres::testing::PgServer;
use deploy::{MigrationRunner, Release, Version};
use tokio_util::sync::CancellationToken;

mod common;
use common::{app_release, install, q, release_app};

/// What users saw through nginx.
#[derive(Debug, Default)]
struct Seen {
    /// 200 answers by body (the version).
    by_version: BTreeMap<String, u64>,
    /// 503 answers carrying the maintenance page.
    maintenance: u64,
    /// Anything else.
    failed: u64,
    /// The first failures, in words.
    errors: Vec<String>,
    /// The order in which answers changed kind: `1.0.0`, `maintenance`, `2.0.0`...
    phases: Vec<String>,
}

/// GET `url` over keep-alive connections until `stop` (or 40 s, or 20 000 requests).
async fn load(url: String, stop: Arc<AtomicBool>) -> Seen {
    let client = deploy::http::client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut seen = Seen::default();
    let start = Instant::now();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(40) && n < 20_000 {
        n += 1;
        let kind = match client.get(&url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                match status {
                    200 if body == "1.0.0" || body == "2.0.0" => {
                        *seen.by_version.entry(body.clone()).or_default() += 1;
                        body
                    }
                    503 if body.contains(MAINTENANCE_MARKER) => {
                        seen.maintenance += 1;
                        "maintenance".to_owned()
                    }
                    _ => {
                        seen.failed += 1;
                        if seen.errors.len() < 5 {
                            seen.errors.push(format!("HTTP {status}: {body:.80}"));
                        }
                        "failed".to_owned()
                    }
                }
            }
            Err(e) => {
                seen.failed += 1;
                if seen.errors.len() < 5 {
                    seen.errors.push(e.to_string());
                }
                "failed".to_owned()
            }
        };
        if seen.phases.last() != Some(&kind) {
            seen.phases.push(kind);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_with_the_maintenance_page_and_a_destructive_migration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pg = PgServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", pg.port(), db.dbname);

    // The schema as release 1.0.0 left it: V1 applied.
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__items.sql"),
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, legacy_code text);\n\
         INSERT INTO items (name, legacy_code) VALUES ('apple', 'A1'), ('pear', 'P2');\n",
    )
    .unwrap();
    let before = PgMigrationRunner::builder(db.clone(), &migrations)
        .bin_dir(pg.bin_dir())
        .build()
        .unwrap();
    before.migrate().await.unwrap();
    // Release 2.0.0 drops a column: destructive, allowed in a maintenance window.
    std::fs::write(
        migrations.join("V2__drop_legacy_code.sql"),
        "ALTER TABLE items DROP COLUMN legacy_code;\n",
    )
    .unwrap();

    let app = release_app(dir.join("app")).await;
    let b = NginxServer::builder().unwrap();
    let flag = b.dir().join("shared/maintenance.on");
    let snippet = MaintenanceSnippet::new(&flag, b.dir().join("page"))
        .retry_after_secs(30)
        .render()
        .unwrap();
    let nginx = b
        .http(snippet.http.clone())
        .server(snippet.server.clone())
        .server(format!(
            "location / {{ proxy_pass http://{}; }}",
            app.server.addr()
        ))
        .file("shared/.keep", "")
        .file("page/maintenance.html", snippet.page.clone())
        .start()
        .await
        .unwrap();

    app_release(dir, "1.0.0", 0.0);
    app_release(dir, "2.0.0", 0.0);
    let hooks = dir.join("hooks.log");
    let text = format!(
        r#"
[environment]
name = "backoffice"
state_dir = {state}

[release]
version = "2.0.0"
artifact = {artifact}

[strategy]
kind = "recreate"

[options]
schema_rollback = "revert"

[policies.probe]
interval = "50ms"
deadline = "5s"

[[targets]]
id = "app"
root = {root}
endpoint = "{endpoint}"

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[maintenance]
kind = "nginx"
flag = {flag}
verify_urls = ["{site}"]
verify_deadline = "5s"

[migrations]
kind = "postgres"
url = "{url}"
dir = {migrations}
backup_dir = {backups}
bin_dir = {bin_dir}

[[smoke]]
name = "health says ok"
path = "/health"
body_contains = ['"status":"ok"', '"version":"2.0.0"']

[[hooks]]
name = "pause the workers"
point = "before"
on = "stop"
command = ["sh", "-c", "echo before stop {{version}} >> {hooks}"]

[[hooks]]
name = "resume the workers"
point = "after"
on = "maintenance_off"
command = ["sh", "-c", "echo after maintenance off {{version}} >> {hooks}"]
"#,
        state = q(&dir.join("state")),
        artifact = q(&dir.join("app-2.0.0")),
        root = q(&dir.join("app")),
        endpoint = app.server.url(""),
        flag = q(&flag),
        site = nginx.url("/"),
        migrations = q(&migrations),
        backups = q(&dir.join("backups")),
        bin_dir = q(pg.bin_dir()),
        hooks = hooks.display(),
    );
    let plan = PlanFile::parse("recreate.toml", &text).unwrap();
    let engine = plan.engine(&Adapters::new()).unwrap();
    install(
        &engine,
        &Release::new(Version::new("1.0.0").unwrap()).with_artifact(dir.join("app-1.0.0")),
    )
    .await;
    assert_eq!(common::get(&nginx.url("/")).await, "1.0.0");

    let stop = Arc::new(AtomicBool::new(false));
    let users = tokio::spawn(load(nginx.url("/"), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = engine
        .plan(&plan.strategy, &plan.release(), &plan.options)
        .await
        .unwrap();
    let report = engine.run(p, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = users.await.unwrap();
    println!(
        "recreate under load: by version {:?}, maintenance page {}, failed {}, phases {:?}",
        seen.by_version, seen.maintenance, seen.failed, seen.phases
    );

    // Maintenance off, the new release served, the schema at 2 without the column.
    assert!(!flag.exists(), "maintenance off");
    assert_eq!(common::get(&nginx.url("/")).await, "2.0.0");
    assert_eq!(
        pg.query(
            &db.dbname,
            "SELECT version FROM schema_version WHERE success ORDER BY version::int DESC LIMIT 1"
        )
        .await
        .unwrap(),
        "2"
    );
    assert_eq!(
        pg.query(
            &db.dbname,
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'items' AND column_name = 'legacy_code'"
        )
        .await
        .unwrap(),
        "0"
    );
    assert_eq!(
        pg.query(
            &db.dbname,
            "SELECT string_agg(name, ',' ORDER BY id) FROM items"
        )
        .await
        .unwrap(),
        "apple,pear",
        "the data stayed"
    );
    assert!(
        std::fs::read_dir(dir.join("backups")).unwrap().count() > 0,
        "a backup was taken before the destructive migration"
    );
    assert_eq!(
        std::fs::read_to_string(&hooks).unwrap(),
        "before stop 2.0.0\nafter maintenance off 2.0.0\n"
    );
    // Users saw 1.0.0, then the maintenance page, then 2.0.0: nothing else, in that order.
    assert_eq!(seen.failed, 0, "{:?}", seen.errors);
    assert_eq!(seen.phases, ["1.0.0", "maintenance", "2.0.0"]);
    assert!(seen.maintenance > 0);
}
