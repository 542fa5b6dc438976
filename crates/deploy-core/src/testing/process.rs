//! Processes in tests: free loopback ports, waiting until a server is ready, and children that
//! are stopped by their PID — TERM, then KILL — when dropped. Every real-server fixture of the
//! workspace uses these.

use std::net::{SocketAddr, TcpListener};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it in between,
/// which the callers' start-up retries cover).
pub fn free_port() -> Result<u16> {
    Ok(free_ports::<1>()?[0].port())
}

/// `N` distinct free loopback addresses, chosen together (all bound at once, then released),
/// so that none of them is handed out twice.
pub fn free_ports<const N: usize>() -> Result<[SocketAddr; N]> {
    let bind = || {
        TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("find a free port on", "127.0.0.1", e))
    };
    let listeners = (0..N).map(|_| bind()).collect::<Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map_err(|e| Error::io("find a free port on", "127.0.0.1", e))
        })
        .collect::<Result<Vec<_>>>()?;
    addrs
        .try_into()
        .map_err(|_| Error::new(ErrorKind::Other, "find free ports on", "127.0.0.1", "count"))
}

/// Call `ready` every 20 ms until it says yes, for at most `limit`. `what` names what is
/// awaited, for the error.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                "wait for",
                what.to_owned(),
                format!("not ready within {}", humantime::format_duration(limit)),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts TCP connections at `addr`.
pub async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// A signal to send a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Ask it to stop.
    Term,
    /// Stop it now.
    Kill,
    /// Reload (nginx, sshd).
    Hup,
    /// Interrupt (Ctrl-C).
    Int,
    /// Pause it.
    Stop,
    /// Let it go on after `Stop`.
    Cont,
    /// Graceful stop (nginx workers, haproxy).
    Quit,
    /// User-defined 1 (haproxy: soft stop; nginx: reopen logs).
    Usr1,
    /// User-defined 2 (haproxy master: reload).
    Usr2,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Self::Term => S::TERM,
            Self::Kill => S::KILL,
            Self::Hup => S::HUP,
            Self::Int => S::INT,
            Self::Stop => S::STOP,
            Self::Cont => S::CONT,
            Self::Quit => S::QUIT,
            Self::Usr1 => S::USR1,
            Self::Usr2 => S::USR2,
        }
    }
}

/// Send `signal` to the process `pid` (one this test started). `Ok(false)` when it is gone.
pub fn signal(pid: u32, signal: Signal) -> Result<bool> {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "signal",
            format!("process {pid}"),
            "not a process id",
        ));
    };
    match rustix::process::kill_process(p, signal.raw()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(Error::io(
            "signal",
            format!("process {pid}"),
            std::io::Error::from(e),
        )),
    }
}

/// A child process this test started, stopped on drop by its PID: TERM, then KILL if it has
/// not exited after [`ChildGuard::grace`]. Only ever the process it holds — never a search by
/// name.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    /// Hold `child`, giving it 5 s to stop after TERM.
    pub fn new(child: Child) -> Self {
        Self {
            child: Some(child),
            grace: Duration::from_secs(5),
        }
    }

    /// How long to wait after TERM before KILL.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child, e.g. to read its output or wait for it.
    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is held until dropped")
    }

    /// Send it `signal`.
    pub fn signal(&self, signal: Signal) -> Result<bool> {
        self::signal(self.id(), signal)
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child().try_wait().ok().flatten().is_some()
    }

    /// Stop it now (TERM, then KILL after the grace period) and wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = signal(child.id(), Signal::Term);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_stopped_by_term_when_dropped() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut g = ChildGuard::new(child);
        assert!(!g.exited());
        assert!(g.signal(Signal::Stop).unwrap());
        assert!(g.signal(Signal::Cont).unwrap());
        let t0 = Instant::now();
        drop(g);
        assert!(t0.elapsed() < Duration::from_secs(2), "TERM was enough");
        assert!(!signal(pid, Signal::Term).unwrap_or(false), "gone");
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports::<3>().unwrap();
        assert!(a != b && b != c && a != c);
        assert!(free_port().unwrap() > 0);
    }
}
