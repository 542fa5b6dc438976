//! Counting a server's sessions: established TCP connections to its `ip:port` in the host's
//! `/proc/net/tcp` and `/proc/net/tcp6` (nginx OSS has no per-server counters).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use deploy_core::{Error, ErrorKind, Result, TargetId};

use super::UpstreamSwitch;

/// The kernel's TCP tables, IPv4 and IPv6 (an IPv4 connection on a dual-stack socket is listed
/// in the second with an IPv4-mapped address).
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

impl UpstreamSwitch {
    /// Established connections on the host to the server of `target`.
    pub(super) async fn sessions(&self, target: &TargetId) -> Result<u64> {
        let object = || format!("{target} in {}", self.object());
        let Some(server) = self.servers.iter().find(|s| &s.target == target) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "count sessions of",
                object(),
                "unknown target",
            ));
        };
        let Ok(addr) = server.address.parse::<SocketAddr>() else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "count sessions of",
                object(),
                format!(
                    "sessions are counted from /proc/net/tcp, which needs an `ip:port` address, not {:?}",
                    server.address
                ),
            ));
        };
        let mut count = 0;
        for table in TABLES {
            match self.host.read_file(Path::new(table)).await {
                Ok(raw) => count += count_established(&String::from_utf8_lossy(&raw), addr),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context("count sessions of", object())),
            }
        }
        Ok(count)
    }
}

/// Established connections in a `/proc/net/tcp{,6}` table whose remote end is `to`.
fn count_established(table: &str, to: SocketAddr) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[3] == "01" && parse_proc_addr(cols[2]) == Some(to)
        })
        .count() as u64
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6), as the kernel prints them.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_counted_by_remote_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C40 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n\
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0100007F:9C41 0100007F:1F91 06 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let to: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(count_established(table, to), 1);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:1F91 01 0\n";
        assert_eq!(count_established(v6, to), 1);
    }
}
