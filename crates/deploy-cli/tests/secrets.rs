//! The secrets harness: a deployment whose plan holds known canary secrets — a database
//! password (in `DATABASE_URL`), an SSH key passphrase, webhook URLs with tokens in their path
//! and in their query, a Prometheus bearer token — run through the `deploy` command line
//! (`plan`, `run` with a failing gate so that a rollback happens, `status`, `rollback`) against
//! real haproxy, PostgreSQL, Prometheus and sshd. No canary may appear in anything the tool
//! shows or keeps: standard output and error, the journal, the report, the notifications it
//! posts, `Debug` of the parsed plan, tracing output, or the command line of any process on
//! this machine (which is also the SSH host) while the deploy runs. The `migrate` example is
//! held to the same rule through every subcommand, a failing migration and a wrong password.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec};
use deploy::plan_file::PlanFile;
use deploy::postgres::testing::{PASSWORD_ROLE, PgServer};
use deploy::prometheus::testing::{PrometheusServer, ScrapeTarget};
use deploy::ssh::testing::{SshdFixture, ssh_keygen};
use deploy::testing::{TestHttpServer, TestResponse};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{DemoApp, deploy_bin, example, haproxy_wait_up, q};

const DB_PASSWORD: &str = "CanaryDbPw7Q";
const SSH_PASSPHRASE: &str = "CanarySshPass1";
const NOTIFY_PATH_TOKEN: &str = "CanaryPathTok3";
const NOTIFY_QUERY_TOKEN: &str = "CanaryQueryTok9";
const HOOK_PATH_TOKEN: &str = "canaryhookpathtoken";
const PROMETHEUS_TOKEN: &str = "CanaryPromTok5";

const CANARIES: [&str; 6] = [
    DB_PASSWORD,
    SSH_PASSPHRASE,
    NOTIFY_PATH_TOKEN,
    NOTIFY_QUERY_TOKEN,
    HOOK_PATH_TOKEN,
    PROMETHEUS_TOKEN,
];

/// The tests here run one at a time: setting up, one passes the SSH passphrase to `ssh-keygen
/// -N` (its only way without a terminal), which another test's process-list watch would catch.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every canary found in `text`.
fn leaked(text: &str) -> Vec<&'static str> {
    CANARIES
        .iter()
        .copied()
        .filter(|c| text.contains(c))
        .collect()
}

/// The command lines of every process on this machine that holds a canary, polled every 10 ms
/// until `stop`.
fn watch_process_lists(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut found = Vec::new();
        let me = std::process::id().to_string();
        while !stop.load(Ordering::Relaxed) {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                    continue;
                }
                if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if !leaked(&line).is_empty() && !found.contains(&line) {
                        found.push(line);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        found
    })
}

/// `deploy <args> <plan>` with `env`: exit code and output.
fn deploy(args: &[&str], plan: &Path, env: &[(&str, String)]) -> (i32, String) {
    let out = std::process::Command::new(deploy_bin())
        .args(args)
        .arg(plan)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every file under `dir`, as text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

/// Two slots behind haproxy (`one` serving, `two` idle): `one` on this machine, `two` reached
/// over SSH with a key protected by [`SSH_PASSPHRASE`] (returned as its path).
async fn two_slots(dir: &Path) -> (DemoApp, DemoApp, SshdFixture, PathBuf, HaproxyFixture) {
    let one = DemoApp::start(&dir.join("one"));
    let two = DemoApp::start(&dir.join("two"));
    let sshd = SshdFixture::start().unwrap();
    let key = dir.join("deploy_key");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        SSH_PASSPHRASE,
        "-f",
        &key.display().to_string(),
    ])
    .unwrap();
    sshd.authorize(&key.with_extension("pub")).unwrap();
    let h = HaproxyFixture::start(FixtureConfig::new(vec![
        ServerSpec::new("one", one.addr, 100),
        ServerSpec::new("two", two.addr, 0),
    ]))
    .await
    .unwrap();
    (one, two, sshd, key, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_secret_leaves_its_place() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();

    // Two slots: `one` on this machine, `two` reached over SSH with a passphrase-protected key.
    let (one, two, sshd, key, h) = two_slots(&dir).await;
    let prom = PrometheusServer::start(&[
        ScrapeTarget::new("one", one.addr),
        ScrapeTarget::new("two", two.addr),
    ])
    .await
    .unwrap();
    let pg = PgServer::start().await.unwrap();
    pg.create_password_role(DB_PASSWORD).await.unwrap();
    let db = pg.create_database().await.unwrap();
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__notes.sql"),
        "CREATE TABLE notes (id serial PRIMARY KEY, body text);\n",
    )
    .unwrap();

    // The webhooks: notifications and a hook, both received here.
    let posts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = posts.clone();
    let hooks = TestHttpServer::start(move |req| {
        seen.lock().unwrap().push(format!(
            "{} {}",
            req.path,
            String::from_utf8_lossy(&req.body)
        ));
        // The audit hook's receiver is down: its error names the hook's URL.
        if req.path.starts_with("/audit/") {
            TestResponse::text(500, "audit service unavailable")
        } else {
            TestResponse::text(200, "ok")
        }
    })
    .await
    .unwrap();
    let notify_url = format!(
        "http://127.0.0.1:{}/services/T0AB/{NOTIFY_PATH_TOKEN}?token={NOTIFY_QUERY_TOKEN}",
        hooks.addr().port()
    );
    let audit_url = format!(
        "http://127.0.0.1:{}/audit/{NOTIFY_PATH_TOKEN}?token={NOTIFY_QUERY_TOKEN}",
        hooks.addr().port()
    );
    let hook_file = dir.join("hook-url");
    std::fs::write(
        &hook_file,
        format!(
            "http://127.0.0.1:{}/hooks/{HOOK_PATH_TOKEN}\n",
            hooks.addr().port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &hook_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();

    // Releases: 1.0.0 everywhere; 2.0.0 fails half its requests, so its gate rolls it back.
    for (v, extra) in [("1.0.0", ""), ("2.0.0", "error_rate=0.5")] {
        let d = dir.join(format!("app-{v}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("app.conf"), format!("version={v}\n{extra}\n")).unwrap();
    }
    let plan_text = |version: &str, extra: &str| {
        format!(
            r#"
[environment]
name = "secrets"
state_dir = {state}

[release]
version = "{version}"
artifact = {artifact}

[strategy]
kind = "canary"
steps = [{{ set_weight = 50 }}, {{ analyze = "2s" }}]

[policies.probe]
interval = "50ms"
deadline = "10s"

[policies.analysis]
interval = "1s"

[[targets]]
id = "one"
root = {one_root}
endpoint = "http://{one_addr}"

[[targets]]
id = "two"
root = {two_root}
endpoint = "http://{two_addr}"
ssh = {{ host = "127.0.0.1", port = {ssh_port}, user = "{ssh_user}", key_file = {key}, key_passphrase_env = "DEPLOY_KEY_PASSPHRASE", known_hosts = {known_hosts} }}

[probe]
expect_fields = {{ status = "ok" }}
version_field = "version"

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"

[[gates]]
kind = "scrape"
preset = "error_rate"
max_error_rate = 0.01
window = "1s"

[[gates]]
kind = "promql"
prometheus = "{prometheus}"
bearer_token_env = "PROMETHEUS_TOKEN"
preset = "p99_latency"
max_latency = "2s"
window = "2s"

[migrations]
kind = "postgres"
database_url_env = "DATABASE_URL"
dir = {migrations}
backup_dir = {backups}
bin_dir = {bin_dir}

[[hooks]]
name = "announce"
point = "before"
on = "run"
webhook_file = {hook_file}

[notify]
webhook_env = "DEPLOY_NOTIFY_WEBHOOK"
min_severity = "info"
{extra}
"#,
            state = q(&dir.join("state")),
            artifact = q(&dir.join(format!("app-{version}"))),
            one_root = q(&dir.join("one")),
            two_root = q(&dir.join("two")),
            one_addr = one.addr,
            two_addr = two.addr,
            ssh_port = sshd.port(),
            ssh_user = sshd.user(),
            key = q(&key),
            known_hosts = q(&sshd.known_hosts()),
            socket = q(Path::new(&h.admin_socket().to_string())),
            prometheus = prom.url(),
            migrations = q(&migrations),
            backups = q(&dir.join("backups")),
            bin_dir = q(pg.bin_dir()),
            hook_file = q(&hook_file),
        )
    };
    let env = vec![
        (
            "DATABASE_URL",
            format!(
                "postgres://{PASSWORD_ROLE}:{DB_PASSWORD}@127.0.0.1:{}/{}",
                pg.port(),
                db.dbname
            ),
        ),
        ("DEPLOY_KEY_PASSPHRASE", SSH_PASSPHRASE.to_owned()),
        ("DEPLOY_NOTIFY_WEBHOOK", notify_url),
        ("PROMETHEUS_TOKEN", PROMETHEUS_TOKEN.to_owned()),
        ("DEPLOY_AUDIT_WEBHOOK", audit_url),
    ];
    let plan = dir.join("deploy.toml");
    std::fs::write(&plan, plan_text("2.0.0", "")).unwrap();
    // The same deploy with a hook whose receiver fails after the first weight change.
    let audited = dir.join("audited.toml");
    std::fs::write(
        &audited,
        plan_text(
            "2.0.0",
            "[[hooks]]\nname = \"audit\"\npoint = \"after\"\non = \"set_weights\"\nwebhook_env = \"DEPLOY_AUDIT_WEBHOOK\"\n",
        ),
    )
    .unwrap();

    // Both slots on 1.0.0, as a previous deploy left them.
    for slot in ["one", "two"] {
        let root = dir.join(slot);
        let release = root.join("releases/1.0.0");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::copy(dir.join("app-1.0.0/app.conf"), release.join("app.conf")).unwrap();
        // What a finished prepare leaves: the release counts as complete.
        std::fs::write(release.join(".deploy-complete"), "").unwrap();
        std::os::unix::fs::symlink(&release, root.join("current")).unwrap();
    }
    haproxy_wait_up(&h, &["one", "two"]).await;

    // Debug of the parsed plan.
    let parsed = PlanFile::load(&plan).unwrap();
    let debug = format!("{parsed:?}");
    assert!(leaked(&debug).is_empty(), "Debug of the plan: {debug}");

    let mut outputs = Vec::new();
    let (code, out) = deploy(&["plan"], &plan, &env);
    assert_eq!(code, 0, "{out}");
    outputs.push(("plan", out));

    let mut config = LoadConfig::new(2, 100_000);
    config.max_duration = Duration::from_secs(60);
    config.think_time = Duration::from_millis(5);
    let load = Load::start(
        h.frontend(),
        config,
        &["hello from 1.0.0\n", "hello from 2.0.0\n"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_process_lists(stop.clone());
    let (code, out) = deploy(&["run"], &plan, &env);
    let (audit_code, audit_out) = deploy(&["run"], &audited, &env);
    stop.store(true, Ordering::Relaxed);
    let argv_leaks = watcher.join().unwrap();
    load.stop();
    let _ = load.finish().await;
    assert_eq!(code, 2, "the failing gate rolls back: {out}");
    outputs.push(("run", out));
    assert_eq!(audit_code, 2, "the failing hook rolls back: {audit_out}");
    assert!(
        audit_out.contains("hook audit") && audit_out.contains("HTTP 500"),
        "the hook's failure is reported: {audit_out}"
    );
    outputs.push(("run (failing hook)", audit_out));
    for cmd in ["status", "rollback"] {
        let (code, out) = deploy(&[cmd], &plan, &env);
        assert_eq!(code, 0, "{cmd}: {out}");
        outputs.push((cmd, out));
    }

    assert!(
        argv_leaks.is_empty(),
        "command lines holding a secret: {argv_leaks:?}"
    );
    for (cmd, out) in &outputs {
        assert!(
            leaked(out).is_empty(),
            "`deploy {cmd}` printed a secret:\n{out}"
        );
    }
    let state = files_under(&dir.join("state"));
    assert!(
        state
            .iter()
            .any(|(p, _)| p.to_string_lossy().ends_with(".report.json")),
        "a report was written"
    );
    for (path, text) in &state {
        assert!(
            leaked(text).is_empty(),
            "{} holds {:?}",
            path.display(),
            leaked(text)
        );
    }
    let posted = posts.lock().unwrap().clone();
    assert!(
        posted.iter().any(|p| p.starts_with("/audit/")),
        "the audit hook was called"
    );
    assert!(
        posted.iter().any(|p| p.contains(HOOK_PATH_TOKEN)),
        "the hook was called at its secret URL"
    );
    assert!(
        posted.iter().any(|p| p.contains(NOTIFY_PATH_TOKEN)),
        "notifications were sent to their secret URL"
    );
    for p in &posted {
        let (_, body) = p.split_once(' ').unwrap_or((p, ""));
        assert!(
            leaked(body).is_empty(),
            "a posted body holds a secret: {body}"
        );
    }
}

/// Everything written through this writer, for tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The same secrets read from files (`*_file`), the plan built and planned in this process at
/// the TRACE level: the tracing output and `Debug` of everything built hold none of them.
#[tokio::test(flavor = "current_thread")]
async fn tracing_output_and_debug_hold_no_secret() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (one, two, sshd, key, h) = two_slots(&dir).await;
    let pg = PgServer::start().await.unwrap();
    pg.create_password_role(DB_PASSWORD).await.unwrap();
    let db = pg.create_database().await.unwrap();
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__notes.sql"),
        "CREATE TABLE notes (id int);\n",
    )
    .unwrap();
    let secret = |name: &str, value: String| {
        let p = dir.join(name);
        std::fs::write(&p, value).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let db_url = secret(
        "db-url",
        format!(
            "postgres://{PASSWORD_ROLE}:{DB_PASSWORD}@127.0.0.1:{}/{}",
            pg.port(),
            db.dbname
        ),
    );
    let passphrase = secret("passphrase", SSH_PASSPHRASE.to_owned());
    let token = secret("prometheus-token", PROMETHEUS_TOKEN.to_owned());
    let hook = secret(
        "hook-url",
        format!("http://127.0.0.1:9/audit/{NOTIFY_PATH_TOKEN}?token={NOTIFY_QUERY_TOKEN}"),
    );
    let text = format!(
        r#"
[environment]
name = "secrets-in-process"
state_dir = {state}

[release]
version = "2.0.0"

[strategy]
kind = "blue_green"
bake = "2m"

[[targets]]
id = "one"
root = {one_root}
endpoint = "http://{one_addr}"

[[targets]]
id = "two"
root = {two_root}
endpoint = "http://{two_addr}"
ssh = {{ host = "127.0.0.1", port = {ssh_port}, user = "{ssh_user}", key_file = {key}, key_passphrase_file = {passphrase}, known_hosts = {known_hosts} }}

[switch]
kind = "haproxy"
socket = {socket}
backend = "app"

[[gates]]
kind = "promql"
prometheus = "http://127.0.0.1:9"
bearer_token_file = {token}
preset = "error_rate"
max_error_rate = 0.01
window = "1m"

[migrations]
kind = "postgres"
database_url_file = {db_url}
dir = {migrations}
bin_dir = {bin_dir}

[[hooks]]
name = "audit"
point = "before"
on = "run"
webhook_file = {hook}
"#,
        state = q(&dir.join("state")),
        one_root = q(&dir.join("one")),
        two_root = q(&dir.join("two")),
        one_addr = one.addr,
        two_addr = two.addr,
        ssh_port = sshd.port(),
        ssh_user = sshd.user(),
        key = q(&key),
        passphrase = q(&passphrase),
        known_hosts = q(&sshd.known_hosts()),
        socket = q(Path::new(&h.admin_socket().to_string())),
        token = q(&token),
        db_url = q(&db_url),
        migrations = q(&migrations),
        bin_dir = q(pg.bin_dir()),
        hook = q(&hook),
    );
    let plan = PlanFile::parse("in-process.toml", &text).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let engine = plan.engine(&deploy::adapters::Adapters::new()).unwrap();
    // Planning reads every target (one over SSH, with the passphrase) and the schema (with the
    // password).
    let p = engine
        .plan(&plan.strategy, &plan.release(), &plan.options)
        .await
        .unwrap();
    assert_eq!(p.snapshot.migrations.as_ref().unwrap().pending.len(), 1);
    // A run whose before-run hook cannot reach its receiver: it stops before the first step,
    // and says so through tracing, the journal and the report.
    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, deploy::Outcome::RolledBack, "{report}");
    let reason = &report.rollback.as_ref().unwrap().reason;
    assert!(reason.contains("post hook to"), "{reason}");
    let shown = format!("{plan:?}\n{engine:?}\n{p:?}\n{p}\n{report:?}\n{report}");
    for (path, text) in files_under(&dir.join("state")) {
        assert!(
            leaked(&text).is_empty(),
            "{} holds {:?}",
            path.display(),
            leaked(&text)
        );
    }
    assert!(
        leaked(&shown).is_empty(),
        "Debug shows {:?}",
        leaked(&shown)
    );
    let traced = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(!traced.is_empty(), "tracing output was captured");
    assert!(
        leaked(&traced).is_empty(),
        "tracing output holds {:?}",
        leaked(&traced)
    );
}

/// `migrate` (the example) run as an operator runs it: `DATABASE_URL` holds the password, and
/// `status`, `migrate`, `backup`, `restore`, a migration that fails and a wrong password all
/// keep it to themselves; so does a URL with a password given on the command line, which is
/// warned about (that process's own command line holds it by the operator's choice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_example_keeps_the_database_password_to_itself() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const WRONG_PASSWORD: &str = "CanaryWrongPw4";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pg = PgServer::start().await.unwrap();
    pg.create_password_role(DB_PASSWORD).await.unwrap();
    let db = pg.create_database().await.unwrap();
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("V1__notes.sql"),
        "CREATE TABLE notes (id int);\nINSERT INTO notes VALUES (1);\n",
    )
    .unwrap();
    let url = |password: &str| {
        format!(
            "postgres://{PASSWORD_ROLE}:{password}@127.0.0.1:{}/{}",
            pg.port(),
            db.dbname
        )
    };
    let migrate = |args: &[&str], env_url: Option<&str>| {
        let mut cmd = std::process::Command::new(example("migrate"));
        cmd.arg("--dir")
            .arg(&migrations)
            .arg("--backup-dir")
            .arg(dir.join("backups"))
            .arg("--bin-dir")
            .arg(pg.bin_dir())
            .args(args)
            .env_remove("DATABASE_URL");
        if let Some(u) = env_url {
            cmd.env("DATABASE_URL", u);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(leaked(&text).is_empty(), "migrate {args:?}: {text}");
        assert!(!text.contains(WRONG_PASSWORD), "migrate {args:?}: {text}");
        (out.status.code().unwrap_or(-1), text)
    };

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_process_lists(stop.clone());
    let good = url(DB_PASSWORD);
    let (code, out) = migrate(&["status"], Some(&good));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1                notes"), "{out}");
    let (code, out) = migrate(&["migrate"], Some(&good));
    assert_eq!((code, out.trim()), (0, "schema at 1"), "{out}");
    let (code, out) = migrate(&["backup"], Some(&good));
    assert_eq!(code, 0, "{out}");
    let backup = out.trim().to_owned();
    // A migration that fails: refused by PostgreSQL, rolled back, the error names the file.
    std::fs::write(
        migrations.join("V2__broken.sql"),
        "ALTER TABLE notes ADD COLUMN body text;\nALTER TABLE no_such_table ADD COLUMN x int;\n",
    )
    .unwrap();
    let (code, out) = migrate(&["migrate"], Some(&good));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("V2__broken.sql") && out.contains("no_such_table"),
        "{out}"
    );
    std::fs::remove_file(migrations.join("V2__broken.sql")).unwrap();
    let (code, out) = migrate(&["restore", &backup, "--expect", "1"], Some(&good));
    assert_eq!(code, 0, "{out}");
    // The wrong password: refused by the server, shown nowhere.
    let (code, out) = migrate(&["status"], Some(&url(WRONG_PASSWORD)));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(seen.is_empty(), "command lines holding a secret: {seen:?}");

    // The live schema: version 1 only, the failed migration left no column behind.
    let columns = pg
        .query(
            &db.dbname,
            "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM \
             information_schema.columns WHERE table_name = 'notes'",
        )
        .await
        .unwrap();
    assert_eq!(columns.trim(), "id");

    // A password on the command line works, with a warning naming the safer place.
    let (code, out) = migrate(&["--database-url", &good, "status"], None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: --database-url holds a password")
            && out.contains("put the URL in DATABASE_URL instead"),
        "{out}"
    );
}
