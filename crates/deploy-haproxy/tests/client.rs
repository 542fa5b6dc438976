//! The Runtime API client against a real haproxy: every typed command, read back, and every
//! error answer classified.

use std::net::IpAddr;

use deploy_core::ErrorKind;
use deploy_haproxy::testing::{HaproxyFixture, Slot};
use deploy_haproxy::{AdminState, RowKind, RuntimeClient, Socket, Weight};

async fn fixture() -> (HaproxyFixture, [Slot; 2]) {
    HaproxyFixture::blue_green().await.expect("start haproxy")
}

#[tokio::test]
async fn show_info_and_show_stat_over_unix_and_tcp() {
    let (h, [blue, green]) = fixture().await;
    for client in [h.client(), RuntimeClient::new(h.tcp_socket())] {
        let info = client.show_info().await.unwrap();
        assert_eq!(info.get("Name"), Some("HAProxy"));
        let (major, minor) = client.version().await.unwrap();
        assert!((major, minor) >= (2, 4), "{info:?}");
        assert!(info.pid().is_some());

        let rows = client.show_stat(Some("app")).await.unwrap();
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["blue", "green"]);
        let b = &rows[0];
        assert_eq!(b.kind, RowKind::Server);
        assert_eq!(b.uweight, Some(100));
        assert_eq!(b.addr, blue.addr().to_string());
        assert_eq!(rows[1].uweight, Some(0));
        assert_eq!(rows[1].addr, green.addr().to_string());
        // Unknown columns are kept by name.
        assert!(
            b.field("agg_server_status").is_some() || b.fields.contains_key("agg_server_status")
        );

        let all = client.show_stat(None).await.unwrap();
        assert!(
            all.iter()
                .any(|r| r.proxy == "fe" && r.kind == RowKind::Frontend)
        );
        assert!(
            all.iter()
                .any(|r| r.proxy == "app" && r.kind == RowKind::Backend)
        );

        let state = client.show_servers_state(Some("app")).await.unwrap();
        assert_eq!(state.version, 1);
        let g = state.rows.iter().find(|r| r.server == "green").unwrap();
        assert_eq!((g.backend.as_str(), g.uweight, g.iweight), ("app", 0, 0));
        assert_eq!(g.port, Some(green.addr().port()));
    }
}

#[tokio::test]
async fn weights_absolute_and_percent_are_read_back() {
    let (h, _slots) = fixture().await;
    let c = h.client();
    c.set_server_weight("app", "blue", Weight::Absolute(42))
        .await
        .unwrap();
    assert_eq!(c.get_weight("app", "blue").await.unwrap(), (42, 100));
    assert_eq!(
        c.server_stat("app", "blue").await.unwrap().uweight,
        Some(42)
    );
    c.set_server_weight("app", "blue", Weight::Percent(50))
        .await
        .unwrap();
    assert_eq!(c.get_weight("app", "blue").await.unwrap(), (50, 100));
    // A static algorithm accepts only 0% and 100%.
    c.set_server_weight("static", "s1", Weight::Percent(100))
        .await
        .unwrap();
    let e = c
        .set_server_weight("static", "s1", Weight::Absolute(50))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string().contains(
            "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'."
        ),
        "{e}"
    );
    let e = c
        .set_server_weight("app", "blue", Weight::Absolute(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(
        e.to_string()
            .contains("Absolute weight can only be between 0 and 256 inclusive."),
        "{e}"
    );
    assert_eq!(c.get_weight("app", "blue").await.unwrap(), (50, 100));
}

#[tokio::test]
async fn states_ready_drain_maint_are_read_back() {
    let (h, _slots) = fixture().await;
    let c = h.client();
    c.set_server_state("app", "green", AdminState::Drain)
        .await
        .unwrap();
    let g = c.server_stat("app", "green").await.unwrap();
    assert_eq!(g.base_status(), "DRAIN", "{}", g.status);
    let st = c.show_servers_state(Some("app")).await.unwrap();
    let row = st.rows.iter().find(|r| r.server == "green").unwrap();
    assert_eq!(row.admin_state, 0x08);
    assert!(row.in_drain());

    c.set_server_state("app", "green", AdminState::Maint)
        .await
        .unwrap();
    let g = c.server_stat("app", "green").await.unwrap();
    assert!(g.is_maint(), "{}", g.status);
    let st = c.show_servers_state(Some("app")).await.unwrap();
    let row = st.rows.iter().find(|r| r.server == "green").unwrap();
    assert_eq!(row.admin_state, 0x01);
    assert!(row.in_maint());

    c.set_server_state("app", "green", AdminState::Ready)
        .await
        .unwrap();
    let g = c.server_stat("app", "green").await.unwrap();
    assert_eq!(g.base_status(), "UP", "{}", g.status);
}

#[tokio::test]
async fn addr_health_and_dynamic_servers() {
    let (h, [blue, green]) = fixture().await;
    let c = h.client();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    c.set_server_addr("app", "green", lo, Some(blue.addr().port()))
        .await
        .unwrap();
    assert_eq!(
        c.server_stat("app", "green").await.unwrap().addr,
        blue.addr().to_string()
    );
    // The same address again: HAProxy says "no need to change", still a success.
    c.set_server_addr("app", "green", lo, Some(blue.addr().port()))
        .await
        .unwrap();
    c.set_server_addr("app", "green", lo, Some(green.addr().port()))
        .await
        .unwrap();
    assert_eq!(
        c.server_stat("app", "green").await.unwrap().addr,
        green.addr().to_string()
    );

    c.set_health_checks("app", "green", false).await.unwrap();
    assert_eq!(
        c.server_stat("app", "green").await.unwrap().status,
        "no check"
    );
    c.set_health_checks("app", "green", true).await.unwrap();
    assert_ne!(
        c.server_stat("app", "green").await.unwrap().status,
        "no check"
    );
    let e = c
        .set_health_checks("app", "nosuch", true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    c.add_server("app", "extra", blue.addr(), &["weight", "7"])
        .await
        .unwrap();
    let extra = c.server_stat("app", "extra").await.unwrap();
    assert!(
        extra.is_maint(),
        "a new server starts in maint: {}",
        extra.status
    );
    assert_eq!(extra.uweight, Some(7));
    let e = c
        .add_server("app", "extra", blue.addr(), &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("Already exists"), "{e}");
    let e = c
        .add_server("static", "dyn", blue.addr(), &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string()
            .contains("Backend must use a dynamic load balancing to support dynamic servers."),
        "{e}"
    );
    c.del_server("app", "extra").await.unwrap();
    assert!(
        !c.show_stat(Some("app"))
            .await
            .unwrap()
            .iter()
            .any(|r| r.name == "extra")
    );
    let e = c.del_server("app", "extra").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A server taking traffic cannot be deleted.
    let e = c.del_server("app", "blue").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(
        e.to_string()
            .contains("Only servers in maintenance mode can be deleted."),
        "{e}"
    );
}

#[tokio::test]
async fn shutdown_sessions_closes_what_a_server_holds_and_reads_it_back() {
    use deploy_haproxy::testing::HeldRequest;
    let (h, _slots) = fixture().await;
    let c = h.client();
    let held = HeldRequest::send(h.frontend(), "/slow?ms=30000")
        .await
        .unwrap();
    deploy_core::testing::process::wait_until(
        "a session on blue",
        std::time::Duration::from_secs(5),
        || async { c.server_stat("app", "blue").await.unwrap().scur == 1 },
    )
    .await
    .unwrap();
    c.set_server_state("app", "blue", AdminState::Maint)
        .await
        .unwrap();
    assert_eq!(
        c.server_stat("app", "blue").await.unwrap().scur,
        1,
        "maint cuts nothing"
    );
    c.shutdown_sessions("app", "blue").await.unwrap();
    assert_eq!(c.server_stat("app", "blue").await.unwrap().scur, 0);
    // With nothing left, it is a no-op.
    c.shutdown_sessions("app", "blue").await.unwrap();
    drop(held);

    let e = c.shutdown_sessions("app", "nosuch").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let msg = e.to_string();
    for part in ["shutdown sessions server app/nosuch", "'No such server.'"] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
    let e = c.shutdown_sessions("nobackend", "blue").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("No such backend."), "{e}");
    let e = RuntimeClient::new(h.operator_socket())
        .shutdown_sessions("app", "blue")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = c.shutdown_sessions("app", "blue; x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Without a server name HAProxy answers "Require 'backend/server'.".
    let e = c.run("shutdown sessions server blue").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("Require 'backend/server'."), "{e}");
}

#[tokio::test]
async fn error_answers_become_typed_errors_naming_command_server_socket_and_text() {
    let (h, _slots) = fixture().await;
    let c = h.client();
    let sock = h.admin_socket().to_string();

    let e = c
        .set_server_weight("app", "nosuch", Weight::Absolute(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!e.is_retryable());
    let msg = e.to_string();
    for part in ["set server app/nosuch weight 5", &sock, "'No such server.'"] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }

    let e = c
        .set_server_state("nobackend", "blue", AdminState::Ready)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("No such backend."), "{e}");

    let e = c.run("set server app/blue state foo").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(
        e.to_string()
            .contains("'set server <srv> state' expects 'ready', 'drain' and 'maint'."),
        "{e}"
    );

    // `wait ... srv-removable` is 3.0+: 2.6 answers "Unknown command".
    let e = c.run("wait 1s srv-removable app/blue").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let msg = e.to_string();
    assert!(msg.contains("Unknown command"), "{msg}");
    assert!(msg.contains("wait 1s srv-removable app/blue"), "{msg}");
    assert!(
        !msg.contains("maybe one of the following"),
        "the help list is cut: {msg}"
    );

    // Names that could smuggle a command are refused before anything is sent.
    let e = c
        .set_server_weight("app", "blue; shutdown sessions", Weight::Absolute(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);

    // A show of a backend that does not exist.
    let e = c.show_stat(Some("nobackend")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("No such proxy."), "{e}");
}

#[tokio::test]
async fn a_socket_below_admin_missing_or_refused_says_so() {
    let (h, _slots) = fixture().await;
    let op = RuntimeClient::new(h.operator_socket());
    // Reading works at operator level ...
    assert_eq!(op.show_stat(Some("app")).await.unwrap().len(), 2);
    // ... changing does not.
    let e = op
        .set_server_weight("app", "blue", Weight::Absolute(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let msg = e.to_string();
    assert!(msg.contains("Permission denied"), "{msg}");
    assert!(msg.contains("level admin"), "{msg}");
    assert!(msg.contains(&h.operator_socket().to_string()), "{msg}");
    assert_eq!(h.client().get_weight("app", "blue").await.unwrap().0, 100);

    let missing = h.config_path().with_file_name("missing.sock");
    let e = RuntimeClient::unix(&missing).show_info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("stats socket"), "{msg}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = RuntimeClient::new(Socket::tcp(port))
        .show_info()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&format!("ipv4@{port}")), "{e}");
}

#[tokio::test]
async fn through_a_host_with_a_relay() {
    use std::sync::Arc;

    use deploy_core::testing::FakeHost;
    use deploy_core::{LocalHost, Output};
    use deploy_haproxy::HostSocket;

    let (h, _slots) = fixture().await;
    // A relay that needs only bash: copy stdin to the TCP socket, then its answer to stdout.
    let Socket::Tcp(addr) = h.tcp_socket() else {
        unreachable!()
    };
    let relay = format!(
        "exec 3<>/dev/tcp/{}/{}; cat >&3; cat <&3",
        addr.ip(),
        addr.port()
    );
    let remote = RuntimeClient::new(
        HostSocket::new(Arc::new(LocalHost::new()), h.tcp_socket()).with_relay(vec![
            "bash".into(),
            "-c".into(),
            relay,
        ]),
    );
    remote
        .set_server_weight("app", "green", Weight::Absolute(3))
        .await
        .unwrap();
    assert_eq!(h.client().get_weight("app", "green").await.unwrap().0, 3);
    let e = remote
        .set_server_weight("app", "nosuch", Weight::Absolute(3))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("on local"), "{e}");

    // The default relay is socat, as an argument vector; a missing relay says how to fix it.
    let fake =
        Arc::new(FakeHost::new().with_responder(|_| {
            Output::new(Some(127), None, vec![], b"socat: not found".to_vec())
        }));
    let client = RuntimeClient::new(HostSocket::new(
        fake.clone(),
        Socket::unix("/run/haproxy/admin.sock"),
    ));
    let e = client.show_info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("apt-get install socat"), "{e}");
    let cmd = &fake.commands()[0];
    assert_eq!(
        cmd.display(),
        "socat -t 5 STDIO UNIX-CONNECT:/run/haproxy/admin.sock"
    );
    assert_eq!(cmd.stdin.as_deref(), Some(&b"show info\n"[..]));
}

/// Whether process `pid` has ended: gone, or a zombie waiting for init to reap it.
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn the_fixture_kills_haproxy_and_its_worker_on_drop() {
    let (h, _slots) = fixture().await;
    let master = h.pid().unwrap();
    let worker = h.client().show_info().await.unwrap().pid().unwrap();
    let frontend = h.frontend();
    assert!(!ended(master) && !ended(worker));
    drop(h);
    for _ in 0..100 {
        if ended(worker) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ended(master), "master {master} ended");
    assert!(ended(worker), "worker {worker} ended");
    assert!(
        tokio::net::TcpStream::connect(frontend).await.is_err(),
        "frontend closed"
    );
}

#[tokio::test]
async fn a_missing_haproxy_binary_names_the_install_command() {
    use deploy_haproxy::testing::{FixtureConfig, ServerSpec};
    let mut cfg = FixtureConfig::new(vec![ServerSpec::new(
        "blue",
        "127.0.0.1:9".parse().unwrap(),
        1,
    )]);
    cfg.binary = Some("/nonexistent/haproxy".into());
    let e = HaproxyFixture::start(cfg).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(msg.contains("apt-get install haproxy"), "{msg}");
    assert!(msg.contains("scripts/install-servers.sh"), "{msg}");
}

/// Every command line a client sends, on the way to the fixture's socket.
#[derive(Debug)]
struct Recorded {
    socket: Socket,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl deploy_haproxy::Transport for Recorded {
    fn describe(&self) -> String {
        self.socket.describe()
    }
    async fn exchange(&self, line: &str, limit: usize) -> deploy_core::Result<String> {
        self.lines.lock().unwrap().push(line.trim_end().to_owned());
        self.socket.exchange(line, limit).await
    }
}

#[tokio::test]
async fn one_servers_row_is_asked_for_alone_and_found_again_when_a_reload_renumbers_the_servers() {
    let (mut h, _slots) = fixture().await;
    let lines = std::sync::Arc::default();
    let client = RuntimeClient::new(Recorded {
        socket: h.admin_socket(),
        lines: std::sync::Arc::clone(&lines),
    });
    let sent = || std::mem::take(&mut *lines.lock().unwrap());

    // The backend's rows give each server's id; then one server's row is asked for alone.
    let rows = client.backend_servers("app").await.unwrap();
    let sid = |rows: &[deploy_haproxy::StatRow], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.field("sid"))
            .unwrap()
            .to_owned()
    };
    let (blue, green) = (sid(&rows, "blue"), sid(&rows, "green"));
    assert_ne!(blue, green);
    sent();
    let row = client.server_stat("app", "green").await.unwrap();
    assert_eq!((row.name.as_str(), row.uweight), ("green", Some(0)));
    assert_eq!(sent(), [format!("show stat app 4 {green}")]);

    // A reload with the two servers swapped in the configuration numbers them anew: the id
    // known for green is blue's now. The row that answers names blue, so green's is read from
    // the backend's rows, and its new id is asked for alone from then on.
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let line_of = |name: &str| {
        config
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("server {name} ")))
            .unwrap_or_else(|| panic!("no server {name} in {config}"))
            .to_owned()
    };
    let (b, g) = (line_of("blue"), line_of("green"));
    let swapped = config
        .replace(&b, "\u{0}")
        .replace(&g, &b)
        .replace('\u{0}', &g);
    std::fs::write(h.config_path(), swapped).unwrap();
    h.reload().await.unwrap();
    let renumbered = client.show_stat(Some("app")).await.unwrap();
    assert_eq!(
        sid(&renumbered, "blue"),
        green,
        "the reload did not renumber the servers"
    );
    sent();

    let row = client.server_stat("app", "green").await.unwrap();
    assert_eq!((row.name.as_str(), row.uweight), ("green", Some(0)));
    assert_eq!(
        sent(),
        [
            format!("show stat app 4 {green}"),
            "show stat app 4 -1".to_owned()
        ]
    );
    let row = client.server_stat("app", "green").await.unwrap();
    assert_eq!(row.name, "green");
    assert_eq!(sent(), [format!("show stat app 4 {blue}")]);

    // An unknown server is still NotFound.
    let e = client.server_stat("app", "purple").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
