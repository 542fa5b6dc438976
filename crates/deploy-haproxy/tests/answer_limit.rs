//! The size limit of a Runtime API answer: an answer over the limit is an error naming the
//! command, the socket and the limit, and is not read further (fake sockets that never stop
//! talking); an answer of exactly the limit passes; the real haproxy's largest answers, for a
//! backend of thousands of servers, fit the default.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deploy_core::testing::FakeHost;
use deploy_core::{ErrorKind, Output, Result};
use deploy_haproxy::testing::{FixtureConfig, HaproxyFixture, ServerSpec};
use deploy_haproxy::{HostSocket, RuntimeClient, Socket, Transport};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

const MIB: usize = 1024 * 1024;

/// What a fake socket answers after reading the command line.
#[derive(Debug, Clone, Copy)]
enum Talk {
    /// `n` bytes, then close.
    Exactly(usize),
    /// Bytes until the client closes the connection.
    Forever,
}

/// Serve one connection: read the command line, then answer as `talk` says. Returns the bytes
/// written (when the client closed the connection, or when the answer was done).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, talk: Talk) -> u64 {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.ends_with('\n'), "{line:?}");
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match talk {
            Talk::Exactly(total) => (total - written as usize).min(chunk.len()),
            Talk::Forever => chunk.len(),
        };
        if n == 0 {
            break;
        }
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        written += n as u64;
    }
    let _ = stream.shutdown().await;
    written
}

/// A unix socket in a temp dir answering each connection as `talk` says; the bytes written on
/// each connection are added to the counter.
struct FakeSocket {
    _dir: tempfile::TempDir,
    socket: Socket,
    written: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeSocket {
    fn unix(talk: Talk) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&written);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = serve(stream, talk).await;
                count.fetch_add(n, Ordering::SeqCst);
            }
        });
        Self {
            _dir: dir,
            socket: Socket::unix(path),
            written,
            task,
        }
    }

    async fn tcp(talk: Talk) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = Socket::tcp(listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&written);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = serve(stream, talk).await;
                count.fetch_add(n, Ordering::SeqCst);
            }
        });
        Self {
            _dir: tempfile::tempdir().unwrap(),
            socket,
            written,
            task,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for FakeSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until the fake socket's connection ended (its writes failed), at most 5 s.
async fn until_closed(fake: &FakeSocket) -> u64 {
    for _ in 0..500 {
        if fake.written() > 0 {
            return fake.written();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the fake socket still writes: the client did not close the connection");
}

#[tokio::test]
async fn an_endless_answer_is_refused_at_the_limit_naming_command_socket_and_limit() {
    for fake in [
        FakeSocket::unix(Talk::Forever),
        FakeSocket::tcp(Talk::Forever).await,
    ] {
        let client = RuntimeClient::new(fake.socket.clone()).with_max_answer_size(MIB);
        let e = client.raw("show stat").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(!e.is_retryable(), "{e}");
        let text = e.to_string();
        for part in [
            "send `show stat` to HAProxy",
            &fake.socket.to_string(),
            "larger than the limit of 1 MiB (1048576 bytes)",
            "not read further",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        // The connection was closed at the limit: the server's writes failed after what the
        // client read (1 MiB + 1 byte) and what the kernel's socket buffers held.
        let written = until_closed(&fake).await;
        assert!(written <= (MIB + 8 * MIB) as u64, "{written} bytes written");
        eprintln!(
            "{}: the server wrote {written} bytes for a 1 MiB limit",
            fake.socket
        );
    }
}

#[tokio::test]
async fn the_default_limit_is_16_mib_and_stops_an_endless_answer() {
    let fake = FakeSocket::unix(Talk::Forever);
    let client = RuntimeClient::new(fake.socket.clone());
    assert_eq!(client.max_answer_size(), 16 * MIB);
    assert_eq!(RuntimeClient::DEFAULT_MAX_ANSWER_SIZE, 16 * MIB);
    let started = std::time::Instant::now();
    let e = client.show_info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string()
            .contains("larger than the limit of 16 MiB (16777216 bytes)"),
        "{e}"
    );
    assert!(e.to_string().contains("`show info`"), "{e}");
    let written = until_closed(&fake).await;
    assert!(written <= (24 * MIB) as u64, "{written} bytes written");
    eprintln!(
        "default limit: refused after {:?}, the server wrote {written} bytes",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_answer_of_exactly_the_limit_passes_and_one_byte_more_does_not() {
    let limit = 300 * 1024 + 7;
    let fake = FakeSocket::unix(Talk::Exactly(limit));
    let text = RuntimeClient::new(fake.socket.clone())
        .with_max_answer_size(limit)
        .raw("show stat")
        .await
        .unwrap();
    assert_eq!(text.len(), limit);
    let e = RuntimeClient::new(fake.socket.clone())
        .with_max_answer_size(limit - 1)
        .raw("show stat")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("limit of {} bytes, so", limit - 1)),
        "{e}"
    );
}

#[tokio::test]
async fn a_relayed_answer_over_the_limit_is_refused_naming_the_host() {
    let fake = Arc::new(
        FakeHost::new()
            .with_responder(|_| Output::new(Some(0), None, vec![b'x'; 2048 + 1], Vec::new())),
    );
    let client = RuntimeClient::new(HostSocket::new(
        fake.clone(),
        Socket::unix("/run/haproxy/admin.sock"),
    ))
    .with_max_answer_size(2048);
    let e = client.raw("show servers state").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let text = e.to_string();
    assert!(text.contains("/run/haproxy/admin.sock on "), "{text}");
    assert!(text.contains("`show servers state`"), "{text}");
    assert!(text.contains("limit of 2 KiB (2048 bytes)"), "{text}");
    // Exactly the limit passes.
    let fake = Arc::new(
        FakeHost::new()
            .with_responder(|_| Output::new(Some(0), None, vec![b'x'; 2048], Vec::new())),
    );
    let client = RuntimeClient::new(HostSocket::new(fake, Socket::unix("/x.sock")))
        .with_max_answer_size(2048);
    assert_eq!(client.raw("show info").await.unwrap().len(), 2048);
}

/// A transport that ignores the limit it is given.
#[derive(Debug)]
struct Careless(usize);

#[async_trait::async_trait]
impl Transport for Careless {
    fn describe(&self) -> String {
        "careless.sock".into()
    }

    async fn exchange(&self, _line: &str, _limit: usize) -> Result<String> {
        Ok("y".repeat(self.0))
    }
}

#[tokio::test]
async fn the_client_holds_a_transport_that_ignores_the_limit_to_it() {
    let e = RuntimeClient::new(Careless(5000))
        .with_max_answer_size(4096)
        .raw("show stat")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("careless.sock"), "{e}");
    assert!(e.to_string().contains("limit of 4 KiB"), "{e}");
    let ok = RuntimeClient::new(Careless(4096))
        .with_max_answer_size(4096)
        .raw("show stat")
        .await
        .unwrap();
    assert_eq!(ok.len(), 4096);
}

#[tokio::test]
async fn a_real_haproxy_with_thousands_of_servers_answers_within_the_default() {
    const SERVERS: usize = 5000;
    // Servers that nobody connects to: no checks, no traffic.
    let servers = (0..SERVERS)
        .map(|i| {
            let addr = format!("127.0.{}.{}:{}", 1 + i / 250, 1 + i % 250, 10_000 + i)
                .parse()
                .unwrap();
            ServerSpec::new(format!("s{i}"), addr, 1)
        })
        .collect();
    let mut cfg = FixtureConfig::new(servers).without_state_file();
    cfg.check_interval = None;
    let h = HaproxyFixture::start(cfg).await.expect("start haproxy");
    let client = h.client();

    let rows = client.show_stat(None).await.unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.proxy == "app").count(),
        SERVERS + 1
    );
    let state = client.show_servers_state(None).await.unwrap();
    assert_eq!(
        state.rows.iter().filter(|r| r.backend == "app").count(),
        SERVERS
    );
    let stat = client.raw("show stat").await.unwrap().len();
    let servers_state = client.raw("show servers state").await.unwrap().len();
    eprintln!(
        "haproxy, {SERVERS} servers: `show stat` {stat} bytes ({} per server), \
         `show servers state` {servers_state} bytes ({} per server); the default limit holds \
         about {} servers of `show stat`",
        stat / SERVERS,
        servers_state / SERVERS,
        RuntimeClient::DEFAULT_MAX_ANSWER_SIZE / (stat / SERVERS)
    );
    assert!(stat < RuntimeClient::DEFAULT_MAX_ANSWER_SIZE / 4, "{stat}");

    // Below what it has to say, the same haproxy is refused, and answers the next command.
    let e = client
        .clone()
        .with_max_answer_size(64 * 1024)
        .show_stat(None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains(&h.admin_socket().to_string()), "{e}");
    assert!(e.to_string().contains("limit of 64 KiB"), "{e}");
    let info = client.show_info().await.unwrap();
    assert_eq!(info.get("Name"), Some("HAProxy"));
    assert_eq!(client.show_stat(Some("app")).await.unwrap().len(), SERVERS);
}
