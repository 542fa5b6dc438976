//! Two real haproxy instances switched as one ([`deploy::CompositeSwitch`]), as an HA pair is:
//! both frontends under bounded load while a canary step and a blue-green switch move both; one
//! instance stopped, or its socket made unusable, in the middle of a switch — the switch fails,
//! the surviving instance is back on its previous weights and failed no request; an instance
//! reloaded with other weights is reported as a disagreement. Also `[[switch]]` in a plan file:
//! problems at `switch[i]` key paths, and a blue-green deploy from a plan file over the pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy::adapters::Adapters;
use deploy::haproxy::HaproxySwitch;
use deploy::haproxy::testing::{FixtureConfig, HaproxyFixture, Load, LoadConfig, ServerSpec, Slot};
use deploy::plan_file::PlanFile;
use deploy::{
    CompositeSwitch, DynTrafficSwitch, Outcome, Result, TargetId, TrafficSwitch, Weights,
};
use tokio_util::sync::CancellationToken;

mod common;

fn w(blue: u32, green: u32) -> Weights {
    Weights::new()
        .with(TargetId::new("blue").unwrap(), blue)
        .with(TargetId::new("green").unwrap(), green)
}

/// Two slots and two haproxy instances with the same backend `app` (blue 100, green 0).
async fn pair_of_instances() -> ([Slot; 2], HaproxyFixture, HaproxyFixture) {
    let blue = Slot::start("blue").await.unwrap();
    let green = Slot::start("green").await.unwrap();
    let config = || {
        FixtureConfig::new(vec![
            ServerSpec::new("blue", blue.addr(), 100),
            ServerSpec::new("green", green.addr(), 0),
        ])
    };
    let lb1 = HaproxyFixture::start(config()).await.unwrap();
    let lb2 = HaproxyFixture::start(config()).await.unwrap();
    common::haproxy_wait_up(&lb1, &["blue", "green"]).await;
    common::haproxy_wait_up(&lb2, &["blue", "green"]).await;
    ([blue, green], lb1, lb2)
}

fn switch_of(h: &HaproxyFixture) -> HaproxySwitch {
    HaproxySwitch::builder("app")
        .socket(h.admin_socket())
        .check_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

fn composite(members: Vec<(&str, DynTrafficSwitch)>) -> CompositeSwitch {
    CompositeSwitch::new(
        members
            .into_iter()
            .map(|(n, s)| (n.to_owned(), s))
            .collect(),
    )
    .unwrap()
    .with_member_timeout(Duration::from_secs(5))
}

fn load_config() -> LoadConfig {
    let mut c = LoadConfig::new(4, 400_000);
    c.max_duration = Duration::from_secs(40);
    c.think_time = Duration::from_millis(2);
    c
}

/// Wait (at most 5 s) until `load` got an answer from `slot` after it was armed.
async fn served_since_arm(load: &Load, slot: &str, what: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = load.first_since_arm(slot) {
            return t.into_std();
        }
        assert!(Instant::now() < deadline, "{what}: {slot} is not served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_step_and_a_blue_green_switch_move_both_instances_under_load() {
    let (_slots, lb1, lb2) = pair_of_instances().await;
    let pair = composite(vec![
        ("lb-1", Arc::new(switch_of(&lb1))),
        ("lb-2", Arc::new(switch_of(&lb2))),
    ]);
    let load1 = Load::start(lb1.frontend(), load_config(), &["blue", "green"]);
    let load2 = Load::start(lb2.frontend(), load_config(), &["blue", "green"]);
    served_since_arm(&load1, "blue", "before").await;
    served_since_arm(&load2, "blue", "before").await;

    // Canary step: 10 % to green on both.
    load1.arm("green");
    load2.arm("green");
    pair.set_weights(&w(90, 10)).await.unwrap();
    assert_eq!(pair.weights().await.unwrap(), w(90, 10));
    served_since_arm(&load1, "green", "canary on lb-1").await;
    served_since_arm(&load2, "green", "canary on lb-2").await;

    // Blue-green: everything to green on both.
    pair.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(pair.weights().await.unwrap(), w(0, 100));
    assert_eq!(
        common::haproxy_weights(&lb1, &["blue", "green"]).await,
        [0, 100]
    );
    assert_eq!(
        common::haproxy_weights(&lb2, &["blue", "green"]).await,
        [0, 100]
    );
    // Requests in flight at the switch may still end on blue; none after.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blue_then = (load1.served_by("blue"), load2.served_by("blue"));
    let green_then = (load1.served_by("green"), load2.served_by("green"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        (load1.served_by("blue"), load2.served_by("blue")),
        blue_then,
        "no frontend serves blue after the switch"
    );
    assert!(load1.served_by("green") > green_then.0, "lb-1 serves green");
    assert!(load2.served_by("green") > green_then.1, "lb-2 serves green");

    load1.stop();
    load2.stop();
    let (r1, r2) = (load1.finish().await, load2.finish().await);
    println!("pair under load: lb-1 {r1:?}\nlb-2 {r2:?}");
    assert_eq!(r1.failed, 0, "lb-1: {:?}", r1.errors);
    assert_eq!(r2.failed, 0, "lb-2: {:?}", r2.errors);
}

/// A member that breaks its own load balancer when asked to set weights, then goes on — a
/// failure in the middle of the composite's switch (after its weights were read).
#[derive(Debug)]
struct BreaksOnSet {
    inner: DynTrafficSwitch,
    broken: AtomicBool,
    how: Breakage,
}

#[derive(Debug)]
enum Breakage {
    /// Kill the balancer's processes by their PIDs (`kill -KILL`, the master first so that it
    /// starts no new worker), and wait until its frontend refuses connections.
    Stop {
        pids: Vec<u32>,
        frontend: std::net::SocketAddr,
    },
    /// Move the admin socket away (`rename`): connections find nothing there.
    MoveSocket { from: PathBuf, to: PathBuf },
}

#[async_trait]
impl TrafficSwitch for BreaksOnSet {
    async fn weights(&self) -> Result<Weights> {
        self.inner.weights().await
    }
    async fn set_weights(&self, weights: &Weights) -> Result<()> {
        if !self.broken.swap(true, Ordering::SeqCst) {
            match &self.how {
                Breakage::Stop { pids, frontend } => {
                    for pid in pids {
                        let status = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status()
                            .unwrap();
                        assert!(status.success(), "kill -KILL {pid}");
                    }
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while tokio::net::TcpStream::connect(frontend).await.is_ok() {
                        assert!(Instant::now() < deadline, "the balancer still accepts");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Breakage::MoveSocket { from, to } => std::fs::rename(from, to).unwrap(),
            }
        }
        self.inner.set_weights(weights).await
    }
    async fn drain(&self, t: &TargetId) -> Result<()> {
        self.inner.drain(t).await
    }
    async fn active_sessions(&self, t: &TargetId) -> Result<u64> {
        self.inner.active_sessions(t).await
    }
}

/// The switch to green fails because lb-2 breaks (`how`); lb-1, under load the whole time, is
/// back on blue with 0 failed requests. Returns the error's text.
async fn switch_while_lb2_breaks(
    lb1: &HaproxyFixture,
    lb2_switch: BreaksOnSet,
) -> (String, Arc<BreaksOnSet>) {
    let lb2_switch = Arc::new(lb2_switch);
    let pair = composite(vec![
        ("lb-1", Arc::new(switch_of(lb1))),
        ("lb-2", lb2_switch.clone()),
    ]);
    let load = Load::start(lb1.frontend(), load_config(), &["blue", "green"]);
    served_since_arm(&load, "blue", "before").await;
    let err = pair.set_weights(&w(0, 100)).await.unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("member lb-2 failed"), "{text}");
    assert_eq!(
        common::haproxy_weights(lb1, &["blue", "green"]).await,
        [100, 0],
        "lb-1 is back on the previous weights"
    );
    // lb-1 keeps serving blue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    load.arm("blue");
    served_since_arm(&load, "blue", "after").await;
    let green_then = load.served_by("green");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load.served_by("green"), green_then, "lb-1 serves blue only");
    load.stop();
    let r = load.finish().await;
    println!("lb-1 under load: {r:?}");
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.ok > 0);
    (text, lb2_switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_during_a_switch_fails_it_and_the_survivor_is_put_back() {
    let (_slots, lb1, lb2) = pair_of_instances().await;
    let worker = lb2.client().show_info().await.unwrap().pid().unwrap();
    let master = lb2.pid().unwrap();
    let (text, _) = switch_while_lb2_breaks(
        &lb1,
        BreaksOnSet {
            inner: Arc::new(switch_of(&lb2)),
            broken: AtomicBool::new(false),
            how: Breakage::Stop {
                pids: vec![master, worker],
                frontend: lb2.frontend(),
            },
        },
    )
    .await;
    assert!(text.contains("could not put back lb-2"), "{text}");
    assert!(text.contains("put back: lb-1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_socket_during_a_switch_fails_it_and_both_end_on_the_previous_weights() {
    let (_slots, lb1, lb2) = pair_of_instances().await;
    let from = PathBuf::from(lb2.admin_socket().to_string());
    let to = from.with_extension("moved");
    let (text, lb2_switch) = switch_while_lb2_breaks(
        &lb1,
        BreaksOnSet {
            inner: Arc::new(switch_of(&lb2)),
            broken: AtomicBool::new(false),
            how: Breakage::MoveSocket {
                from: from.clone(),
                to: to.clone(),
            },
        },
    )
    .await;
    assert!(text.contains("could not put back lb-2"), "{text}");
    // lb-2 never got the command: with its socket back, it reads the previous weights too.
    std::fs::rename(&to, &from).unwrap();
    assert_eq!(lb2_switch.weights().await.unwrap(), w(100, 0));
    assert_eq!(
        common::haproxy_weights(&lb2, &["blue", "green"]).await,
        [100, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reloaded_with_other_weights_is_reported_as_a_disagreement() {
    let (_slots, lb1, mut lb2) = pair_of_instances().await;
    let pair = composite(vec![
        ("lb-1", Arc::new(switch_of(&lb1))),
        ("lb-2", Arc::new(switch_of(&lb2))),
    ]);
    assert_eq!(pair.weights().await.unwrap(), w(100, 0));
    // A restart from a config that says green: its runtime weights are gone.
    lb2.rewrite_and_reload(&[("blue", 0), ("green", 100)])
        .await
        .unwrap();
    let err = pair.weights().await.unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert_eq!(err.kind(), deploy::ErrorKind::Conflict, "{text}");
    assert!(
        text.contains("lb-1 has blue=100,green=0, lb-2 has blue=0,green=100"),
        "{text}"
    );
    // Setting the weights again brings them together.
    pair.set_weights(&w(100, 0)).await.unwrap();
    assert_eq!(pair.weights().await.unwrap(), w(100, 0));
}

fn q(path: &Path) -> String {
    common::q(path)
}

/// The `[switch]` of a plan replaced by `[[switch]]` entries for `lb1` and `lb2`.
fn with_pair(text: &str, lb1: &HaproxyFixture, lb2: &HaproxyFixture) -> String {
    let start = text.find("[switch]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let entry = |name: &str, h: &HaproxyFixture| {
        format!(
            "[[switch]]\nname = \"{name}\"\nkind = \"haproxy\"\nsocket = {}\nbackend = \"app\"\nstate_file = {}\ncheck_interval = \"100ms\"\n",
            q(Path::new(&h.admin_socket().to_string())),
            q(h.state_file()),
        )
    };
    format!(
        "{}{}\n{}{}",
        &text[..start],
        entry("lb-1", lb1),
        entry("lb-2", lb2),
        &text[end..]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_with_two_switches_deploys_blue_green_through_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lb1, blue, green) = common::two_slots(dir).await;
    let lb2 = HaproxyFixture::start(FixtureConfig::new(vec![
        ServerSpec::new("blue", blue.server.addr(), 100),
        ServerSpec::new("green", green.server.addr(), 0),
    ]))
    .await
    .unwrap();
    common::app_release(dir, "1.0.0", 0.0);
    common::app_release(dir, "2.0.0", 0.0);
    let text = common::plan_text(
        dir,
        &lb1,
        &blue,
        &green,
        "2.0.0",
        "kind = \"blue_green\"\nbake = \"600ms\"",
    );
    let text = with_pair(&text, &lb1, &lb2);
    let plan = PlanFile::parse("pair.toml", &text).unwrap();
    assert!(plan.switch.as_ref().unwrap().is_array());
    let engine = plan.engine(&Adapters::new()).unwrap();
    common::install(
        &engine,
        &deploy::Release::new(deploy::Version::new("1.0.0").unwrap())
            .with_artifact(dir.join("app-1.0.0")),
    )
    .await;
    common::haproxy_wait_up(&lb1, &["blue", "green"]).await;
    common::haproxy_wait_up(&lb2, &["blue", "green"]).await;
    let load1 = Load::start(lb1.frontend(), load_config(), &["1.0.0", "2.0.0"]);
    let load2 = Load::start(lb2.frontend(), load_config(), &["1.0.0", "2.0.0"]);
    served_since_arm(&load1, "1.0.0", "before").await;
    served_since_arm(&load2, "1.0.0", "before").await;
    let report = engine
        .deploy(
            &plan.strategy,
            &plan.release(),
            &plan.options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Promoted, "{report}");
    served_since_arm(&load1, "2.0.0", "after on lb-1").await;
    served_since_arm(&load2, "2.0.0", "after on lb-2").await;
    load1.stop();
    load2.stop();
    let (r1, r2) = (load1.finish().await, load2.finish().await);
    println!("plan over a pair: lb-1 {r1:?}\nlb-2 {r2:?}");
    assert_eq!(
        common::haproxy_weights(&lb1, &["blue", "green"]).await,
        [0, 100]
    );
    assert_eq!(
        common::haproxy_weights(&lb2, &["blue", "green"]).await,
        [0, 100]
    );
    assert_eq!(r1.failed, 0, "{:?}", r1.errors);
    assert_eq!(r2.failed, 0, "{:?}", r2.errors);
}

/// A plan whose `[[switch]]` entries are wrong in several ways: every problem at its entry's
/// key path, at once.
#[test]
fn switch_list_problems_name_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plan = |switches: &str| {
        format!(
            r#"
[environment]
name = "e"
state_dir = {state}

[release]
version = "2.0.0"

[strategy]
kind = "blue_green"

[[targets]]
id = "blue"
root = "/srv/blue"
endpoint = "http://127.0.0.1:1"

[[targets]]
id = "green"
root = "/srv/green"
endpoint = "http://127.0.0.1:2"

{switches}
"#,
            state = q(&dir.join("state")),
        )
    };
    // Parsing: names and servers maps.
    let text = plan(
        r#"
[[switch]]
name = "lb"
kind = "haproxy"
socket = "/run/a.sock"
backend = "app"

[[switch]]
name = "lb"
kind = "haproxy"
socket = "/run/b.sock"
backend = "app"
servers = { blue = "b", purple = "p" }
"#,
    );
    let err = PlanFile::parse("p.toml", &text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    println!("{err}");
    assert!(paths.contains(&"switch[1].name"), "{err}");
    assert!(paths.contains(&"switch[1].servers.purple"), "{err}");
    assert!(paths.contains(&"switch[1].servers"), "{err}");

    // Building: each adapter's own problems, at its entry.
    let text = plan(
        r#"
[[switch]]
kind = "haproxy"
socket = "/run/a.sock"
backend = "app"

[[switch]]
kind = "haproxy"
socket = 5
backend = "app"

[[switch]]
kind = "f5"
"#,
    );
    let parsed = PlanFile::parse("p.toml", &text).unwrap();
    let err = parsed.validate(&Adapters::new()).unwrap_err();
    println!("{err}");
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"switch[1].socket"), "{err}");
    assert!(paths.contains(&"switch[2].kind"), "{err}");
    assert!(!paths.iter().any(|p| p.starts_with("switch[0]")), "{err}");

    // `switch = []` before any table, where a top-level key must be.
    let err = PlanFile::parse("p.toml", &format!("switch = []\n{}", plan(""))).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.path == "switch" && p.message.contains("empty")),
        "{err}"
    );
}

/// nginx in front of the same two slots, its upstream `app` managed by an [`UpstreamSwitch`]
/// at blue 100, green 0.
async fn nginx_beside(
    slots: &[Slot; 2],
) -> (
    deploy::nginx::testing::NginxServer,
    deploy::nginx::UpstreamSwitch,
) {
    use deploy::nginx::UpstreamSwitch;
    use deploy::nginx::testing::NginxServer;
    let b = NginxServer::builder().unwrap().workers(1);
    let include = b.dir().join("upstream.conf");
    let status = deploy::testing::process::free_port().unwrap();
    let switch = UpstreamSwitch::builder(Arc::new(deploy::LocalHost::new()), b.nginx(), &include)
        .upstream("app")
        .server("blue", slots[0].addr().to_string())
        .server("green", slots[1].addr().to_string())
        .status_listen(std::net::SocketAddr::from(([127, 0, 0, 1], status)))
        .build()
        .unwrap();
    let nginx = b
        .http(format!("include {};", include.display()))
        .server("location / { proxy_pass http://app; }")
        .file("upstream.conf", switch.render(&w(100, 0)).unwrap())
        .start()
        .await
        .unwrap();
    (nginx, switch)
}

/// Fresh requests to `url` until one is answered by `slot` (at most 5 s).
async fn fresh_requests_reach(url: &str, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if common::get(url).await == slot {
            return;
        }
        assert!(Instant::now() < deadline, "{url} does not serve {slot}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_and_nginx_as_a_pair_are_switched_together() {
    let (slots, lb, _unused) = pair_of_instances().await;
    let (nginx, upstream) = nginx_beside(&slots).await;
    let pair = composite(vec![
        ("haproxy", Arc::new(switch_of(&lb))),
        ("nginx", Arc::new(upstream)),
    ]);
    assert_eq!(pair.weights().await.unwrap(), w(100, 0));
    let load = Load::start(lb.frontend(), load_config(), &["blue", "green"]);
    served_since_arm(&load, "blue", "before").await;
    let nginx_url = nginx.url("/");
    fresh_requests_reach(&nginx_url, "blue").await;

    load.arm("green");
    pair.set_weights(&w(50, 50)).await.unwrap();
    assert_eq!(pair.weights().await.unwrap(), w(50, 50));
    served_since_arm(&load, "green", "canary through haproxy").await;
    fresh_requests_reach(&nginx_url, "green").await;

    pair.set_weights(&w(0, 100)).await.unwrap();
    assert_eq!(pair.weights().await.unwrap(), w(0, 100));
    for _ in 0..10 {
        assert_eq!(common::get(&nginx_url).await, "green", "nginx serves green");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blue_then = load.served_by("blue");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        load.served_by("blue"),
        blue_then,
        "haproxy serves green only"
    );
    load.stop();
    let r = load.finish().await;
    println!("haproxy + nginx: haproxy's load {r:?}");
    assert_eq!(r.failed, 0, "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_stopped_during_a_switch_puts_haproxy_back() {
    let (slots, lb, _unused) = pair_of_instances().await;
    let (nginx, upstream) = nginx_beside(&slots).await;
    let mut pids = vec![nginx.master_pid().unwrap()];
    pids.extend(nginx.workers().into_iter().map(|(p, _)| p));
    let lb_switch = Arc::new(switch_of(&lb));
    let pair = composite(vec![
        ("haproxy", lb_switch.clone()),
        (
            "nginx",
            Arc::new(BreaksOnSet {
                inner: Arc::new(upstream),
                broken: AtomicBool::new(false),
                how: Breakage::Stop {
                    pids,
                    frontend: nginx.addr(),
                },
            }),
        ),
    ]);
    let load = Load::start(lb.frontend(), load_config(), &["blue", "green"]);
    served_since_arm(&load, "blue", "before").await;
    let err = pair.set_weights(&w(0, 100)).await.unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("member nginx failed"), "{text}");
    assert!(text.contains("could not put back nginx"), "{text}");
    assert!(text.contains("put back: haproxy"), "{text}");
    assert_eq!(lb_switch.weights().await.unwrap(), w(100, 0));
    load.stop();
    let r = load.finish().await;
    assert_eq!(r.failed, 0, "{:?}", r.errors);
}
