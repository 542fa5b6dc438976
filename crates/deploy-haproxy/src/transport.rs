//! How a command reaches HAProxy's Runtime API: a unix socket, a TCP socket, or (through the
//! [`Transport`] trait) anything else that can carry one line and bring back the answer, such as
//! a `Host` reached over SSH.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use deploy_core::{Command, DynHost, Error, ErrorKind, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Carries one Runtime API command line to HAProxy and brings back its whole answer.
///
/// # Contract
/// - One call is one exchange in HAProxy's non-interactive mode: the line (already terminated by
///   `\n`) is written, and everything HAProxy sends until it closes the connection is returned.
/// - An answer of more than `limit` bytes is an error ([`ErrorKind::Protocol`], naming the
///   socket and the limit), and the transport reads no more of it than `limit + 1` bytes: it
///   stops there and closes the connection. (A transport that cannot stop early, such as a
///   relay whose output arrives whole, refuses the answer once it has it. The client checks
///   the length again either way.)
/// - `Err` only when the exchange could not happen (socket missing, refused, closed early) or
///   the answer is too large; an answer HAProxy gave, including its error texts, is `Ok` and
///   classified by the client.
/// - The client wraps each call in its own timeout, so an implementation need not.
///
/// Implemented by [`Socket`] (local unix or TCP socket) and [`HostSocket`] (a socket on another
/// machine, reached by running a relay such as `socat` on a `deploy_core::Host`, e.g. over SSH).
#[async_trait]
pub trait Transport: fmt::Debug + Send + Sync + 'static {
    /// Where the socket is, for messages (`/run/haproxy/admin.sock`, `ipv4@127.0.0.1:9999`).
    fn describe(&self) -> String;
    /// Send `line` and return the whole answer, refusing one of more than `limit` bytes.
    async fn exchange(&self, line: &str, limit: usize) -> Result<String>;
}

/// `bytes` for messages: `16 MiB`, `512 KiB`, or `1000 bytes` when not a whole number of either.
pub(crate) fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The error of an answer longer than `limit` bytes from the socket `socket`: no reading past
/// it, since an answer that large is not one a Runtime API command gives a deploy tool.
pub(crate) fn answer_too_large(socket: String, limit: usize) -> Error {
    Error::new(
        ErrorKind::Protocol,
        "read the answer of the HAProxy Runtime API socket",
        socket,
        format!(
            "the answer is larger than the limit of {}, so it was not read further; \
             raise the limit with `RuntimeClient::with_max_answer_size` if HAProxy really has that much to say",
            match size(limit) {
                s if s.ends_with(" bytes") => s,
                s => format!("{s} ({limit} bytes)"),
            }
        ),
    )
    .permanent()
}

/// A local Runtime API socket: the address of a `stats socket` line.
///
/// Parsed from the same spellings as HAProxy's config: `/run/haproxy/admin.sock`,
/// `unix@/run/haproxy/admin.sock`, `ipv4@127.0.0.1:9999` or `127.0.0.1:9999`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Socket {
    /// A unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP socket.
    Tcp(SocketAddr),
}

impl Socket {
    /// A unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::Unix(path.into())
    }

    /// A TCP socket at `addr`.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }

    fn connect_error(&self, err: std::io::Error) -> Error {
        let fix = match (self, err.kind()) {
            (Self::Unix(p), std::io::ErrorKind::PermissionDenied) => format!(
                "run as a user allowed to open {} (see `mode`/`user`/`group` of its `stats socket` line)",
                p.display()
            ),
            (Self::Unix(p), _) => format!(
                "is haproxy running, and does its global section have `stats socket {} level admin`?",
                p.display()
            ),
            (Self::Tcp(a), _) => format!(
                "is haproxy running, and does its global section have `stats socket ipv4@{a} level admin`?"
            ),
        };
        let kind = match err.kind() {
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        };
        let mut e = Error::new(
            kind,
            "connect to the HAProxy Runtime API socket",
            self.to_string(),
            fix,
        )
        .with_source(err);
        if kind == ErrorKind::PermissionDenied {
            e = e.permanent();
        }
        e
    }
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Tcp(SocketAddr::V4(a)) => write!(f, "ipv4@{a}"),
            Self::Tcp(SocketAddr::V6(a)) => write!(f, "ipv6@{a}"),
        }
    }
}

impl FromStr for Socket {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |cause: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                "parse",
                format!("HAProxy socket address {s:?}"),
                cause.to_owned(),
            )
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if let Some(path) = s.strip_prefix("unix@") {
            return Ok(Self::unix(path));
        }
        let tcp = s
            .strip_prefix("ipv4@")
            .or_else(|| s.strip_prefix("ipv6@"))
            .or_else(|| s.strip_prefix("tcp@"));
        if let Some(addr) = tcp {
            return addr
                .parse()
                .map(Self::Tcp)
                .map_err(|_| bad("expected IP:PORT after the prefix"));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Self::unix(s));
        }
        s.parse().map(Self::Tcp).map_err(|_| {
            bad("expected a socket path, unix@PATH, ipv4@IP:PORT, ipv6@[IP]:PORT or IP:PORT")
        })
    }
}

/// As the text a `stats socket` line would hold (`/run/haproxy/admin.sock`, `ipv4@127.0.0.1:9999`).
impl Serialize for Socket {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// From any spelling [`Socket`]'s `FromStr` accepts.
impl<'de> Deserialize<'de> for Socket {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e: Error| serde::de::Error::custom(e))
    }
}

/// What one exchange on a stream brought back: the answer, or `None` when it was longer than
/// the limit.
async fn talk<S>(mut stream: S, line: &str, limit: usize) -> std::io::Result<Option<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await?;
    let mut out = Vec::with_capacity(256);
    // One byte past the limit tells "too large" from "exactly the limit"; nothing more is read,
    // and dropping the stream closes the connection on whatever HAProxy still has to send.
    let most = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut stream).take(most).read_to_end(&mut out).await?;
    if out.len() > limit {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

#[async_trait]
impl Transport for Socket {
    fn describe(&self) -> String {
        self.to_string()
    }

    async fn exchange(&self, line: &str, limit: usize) -> Result<String> {
        let io_err = |e: std::io::Error| {
            Error::io(
                "exchange with the HAProxy Runtime API socket",
                self.to_string(),
                e,
            )
        };
        let answer =
            |got: Option<String>| got.ok_or_else(|| answer_too_large(self.to_string(), limit));
        match self {
            Self::Unix(path) => {
                #[cfg(unix)]
                {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.connect_error(e))?;
                    talk(stream, line, limit)
                        .await
                        .map_err(io_err)
                        .and_then(answer)
                }
                #[cfg(not(unix))]
                {
                    let _ = (path, line, limit, io_err, answer);
                    Err(Error::new(
                        ErrorKind::Unsupported,
                        "connect to the HAProxy Runtime API socket",
                        self.to_string(),
                        "unix sockets need a unix platform; use a TCP `stats socket`",
                    ))
                }
            }
            Self::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| self.connect_error(e))?;
                let _ = stream.set_nodelay(true);
                talk(stream, line, limit)
                    .await
                    .map_err(io_err)
                    .and_then(answer)
            }
        }
    }
}

/// The Runtime API socket of a load balancer reached through a [`deploy_core::Host`] (an SSH
/// host once `deploy-ssh` provides one): each exchange runs a relay there with the command line
/// as standard input and returns its standard output.
///
/// The default relay is `socat -t 5 STDIO UNIX-CONNECT:<path>` (or `TCP:<ip>:<port>`), an
/// argument vector, so nothing is interpolated into a shell. `socat` must be installed on the
/// host (`apt-get install socat`).
#[derive(Debug, Clone)]
pub struct HostSocket {
    host: DynHost,
    socket: Socket,
    relay: Vec<String>,
}

impl HostSocket {
    /// `socket` on `host`, through `socat`.
    pub fn new(host: DynHost, socket: Socket) -> Self {
        let target = match &socket {
            Socket::Unix(p) => format!("UNIX-CONNECT:{}", p.display()),
            Socket::Tcp(a) => format!("TCP:{a}"),
        };
        let relay = ["socat", "-t", "5", "STDIO"]
            .into_iter()
            .map(str::to_owned)
            .chain([target])
            .collect();
        Self {
            host,
            socket,
            relay,
        }
    }

    /// Use this relay instead of `socat` (program and arguments; it must copy standard input to
    /// the socket and the socket's answer to standard output).
    pub fn with_relay(mut self, argv: Vec<String>) -> Self {
        self.relay = argv;
        self
    }
}

#[async_trait]
impl Transport for HostSocket {
    fn describe(&self) -> String {
        format!("{} on {}", self.socket, self.host.name())
    }

    /// The relay's output arrives whole (a `Host` returns a command's output when it ends), so
    /// an answer over `limit` is refused once here, not cut off while it comes; how much a
    /// host reads of a command's output is that host's own limit.
    async fn exchange(&self, line: &str, limit: usize) -> Result<String> {
        let command = Command::from_argv(&self.relay)?
            .stdin(line.as_bytes().to_vec())
            .timeout(std::time::Duration::from_secs(10));
        let out = self.host.run(&command).await?;
        if out.success() {
            if out.stdout.len() > limit {
                return Err(answer_too_large(self.describe(), limit));
            }
            return Ok(out.stdout_text());
        }
        let stderr = out.stderr_text();
        let hint = if out.code == Some(127) {
            "; is the relay installed there (`apt-get install socat`)?"
        } else {
            ""
        };
        Err(Error::new(
            ErrorKind::Unavailable,
            "relay to the HAProxy Runtime API socket",
            self.describe(),
            format!(
                "`{}` exited with {:?}: {}{hint}",
                command.display(),
                out.code,
                stderr.trim()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings_of_a_stats_socket_line() {
        assert_eq!(
            "/run/haproxy/admin.sock".parse::<Socket>().unwrap(),
            Socket::unix("/run/haproxy/admin.sock")
        );
        assert_eq!(
            "unix@/tmp/a.sock".parse::<Socket>().unwrap(),
            Socket::unix("/tmp/a.sock")
        );
        let tcp = Socket::Tcp("127.0.0.1:9999".parse().unwrap());
        assert_eq!("ipv4@127.0.0.1:9999".parse::<Socket>().unwrap(), tcp);
        assert_eq!("127.0.0.1:9999".parse::<Socket>().unwrap(), tcp);
        assert_eq!(tcp.to_string(), "ipv4@127.0.0.1:9999");
        let err = "ipv4@nope".parse::<Socket>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("ipv4@nope"), "{err}");
        assert!("".parse::<Socket>().is_err());
        assert!("admin.sock".parse::<Socket>().is_err());
    }
}
