//! Host key verification against an OpenSSH `known_hosts` file.
//!
//! Supported: plain host patterns (comma separated, `[host]:port` for ports other than 22, `*`
//! and `?` wildcards, `!` negation), hashed entries (`|1|base64(salt)|base64(HMAC-SHA1(salt,
//! host))`, as written by `HashKnownHosts yes` or `ssh-keygen -H`), comments and blank lines,
//! the `@revoked` marker (a revoked key is refused). `@cert-authority` lines are skipped (host
//! certificates are not supported). Lines that cannot be parsed are skipped, as OpenSSH does.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

/// What to do with a host whose key is not in the `known_hosts` file.
///
/// A key that differs from the recorded one is refused under every policy; there is no policy
/// that accepts any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// Refuse unknown hosts (OpenSSH `StrictHostKeyChecking yes`). The error shows the
    /// fingerprint and how to trust the host.
    #[default]
    Strict,
    /// Record the key of an unknown host in the file and connect (OpenSSH
    /// `StrictHostKeyChecking accept-new`); a changed key is still refused.
    AcceptNew,
}

/// Why a host key was refused. Kept as the source of the connection error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// The host is not in the file and the policy is [`HostKeyPolicy::Strict`].
    #[error(
        "host key verification failed: {host} is not in {known_hosts}; it offered the {algorithm} key {fingerprint}. \
         If that is the right key, trust it with `ssh-keyscan -p {port} {hostname} >> {known_hosts}` \
         (compare the fingerprint first) or connect once with the accept-new policy"
    )]
    Unknown {
        /// `host` or `[host]:port`.
        host: String,
        /// The host name alone.
        hostname: String,
        /// The port.
        port: u16,
        /// The key's algorithm.
        algorithm: String,
        /// `SHA256:…` of the key offered.
        fingerprint: String,
        /// The file consulted.
        known_hosts: PathBuf,
    },
    /// The host offered a key other than the recorded one: possibly a man-in-the-middle.
    #[error(
        "host key verification failed: the host key of {host} CHANGED: {known_hosts} line {line} has {expected}, \
         the host offered {offered}. Someone may be intercepting the connection; if the host was really re-keyed, \
         remove the old entry with `ssh-keygen -R '{host}' -f {known_hosts}`"
    )]
    Changed {
        /// `host` or `[host]:port`.
        host: String,
        /// `SHA256:…` of the recorded key.
        expected: String,
        /// `SHA256:…` of the key offered.
        offered: String,
        /// The line of the recorded key (1-based).
        line: usize,
        /// The file consulted.
        known_hosts: PathBuf,
    },
    /// The key offered is marked `@revoked`.
    #[error(
        "host key verification failed: {host} offered the revoked key {fingerprint} ({known_hosts} line {line})"
    )]
    Revoked {
        /// `host` or `[host]:port`.
        host: String,
        /// `SHA256:…` of the key offered.
        fingerprint: String,
        /// The line of the `@revoked` entry.
        line: usize,
        /// The file consulted.
        known_hosts: PathBuf,
    },
    /// The file could not be read or written.
    #[error("host key verification failed: {action} {known_hosts}: {cause}")]
    File {
        /// `read`, or `record the key of HOST in`.
        action: String,
        /// The file.
        known_hosts: PathBuf,
        /// The I/O error, in words.
        cause: String,
    },
}

/// The SHA-256 fingerprint as OpenSSH prints it (`SHA256:…`).
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How a host appears in `known_hosts`: `host` for port 22, `[host]:port` otherwise.
pub(crate) fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The verdict for one key.
#[derive(Debug)]
pub(crate) enum Check {
    Known,
    Unknown,
    Refused(HostKeyError),
}

/// Check `key` of `host:port` against the file at `path` (a missing file knows no host).
pub(crate) fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> Check {
    let name = host_entry_name(host, port);
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Check::Refused(HostKeyError::File {
                action: "read".into(),
                known_hosts: path.to_path_buf(),
                cause: e.to_string(),
            });
        }
    };
    let mut changed = None;
    let mut known = false;
    for (i, raw) in text.lines().enumerate() {
        let Some(entry) = Entry::parse(raw) else {
            continue;
        };
        if !entry.matches(&name) {
            continue;
        }
        let Ok(recorded) = russh::keys::parse_public_key_base64(entry.key) else {
            continue;
        };
        let same = recorded.key_data() == key.key_data();
        match entry.marker {
            Marker::Revoked if same => {
                return Check::Refused(HostKeyError::Revoked {
                    host: name,
                    fingerprint: fingerprint(key),
                    line: i + 1,
                    known_hosts: path.to_path_buf(),
                });
            }
            Marker::Revoked | Marker::CertAuthority => {}
            Marker::None if same => known = true,
            // Another key of the same algorithm: the host was re-keyed or someone is in between.
            // A key of another algorithm is not a contradiction (hosts have several keys).
            Marker::None if recorded.algorithm() == key.algorithm() && changed.is_none() => {
                changed = Some(HostKeyError::Changed {
                    host: name.clone(),
                    expected: fingerprint(&recorded),
                    offered: fingerprint(key),
                    line: i + 1,
                    known_hosts: path.to_path_buf(),
                });
            }
            Marker::None => {}
        }
    }
    match (known, changed) {
        // A recorded mismatch wins even if another line matches: OpenSSH refuses too.
        (_, Some(e)) => Check::Refused(e),
        (true, None) => Check::Known,
        (false, None) => Check::Unknown,
    }
}

/// Append `key` for `host:port` to the file at `path` (created 0600 with its directory if
/// missing), hashed when `hash` is set.
pub(crate) fn learn(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    hash: bool,
) -> Result<(), HostKeyError> {
    let name = host_entry_name(host, port);
    let fail = |e: std::io::Error| HostKeyError::File {
        action: format!("record the key of {name} in"),
        known_hosts: path.to_path_buf(),
        cause: e.to_string(),
    };
    let key_text = key.to_openssh().map_err(|e| HostKeyError::File {
        action: format!("record the key of {name} in"),
        known_hosts: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    // Drop the comment: known_hosts lines are `hosts algorithm base64`.
    let key_text: String = key_text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let hosts = if hash {
        hash_host(&name, &random_salt().map_err(fail)?)
    } else {
        name.clone()
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let needs_newline = match std::fs::read(path) {
        Ok(b) => !b.is_empty() && !b.ends_with(b"\n"),
        Err(_) => false,
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let line = format!(
        "{}{hosts} {key_text}\n",
        if needs_newline { "\n" } else { "" }
    );
    // One write of the whole line: concurrent learners never interleave inside a line.
    f.write_all(line.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

fn random_salt() -> std::io::Result<[u8; 20]> {
    use std::io::Read;
    let mut salt = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hash_host(name: &str, salt: &[u8]) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).expect("HMAC takes any key size");
    mac.update(name.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(&digest))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// One parsed line.
struct Entry<'a> {
    marker: Marker,
    hosts: &'a str,
    key: &'a str,
}

impl fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.marker, self.hosts)
    }
}

impl<'a> Entry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        let marker = match first {
            "@revoked" => Marker::Revoked,
            "@cert-authority" => Marker::CertAuthority,
            m if m.starts_with('@') => return None,
            _ => Marker::None,
        };
        if marker != Marker::None {
            first = fields.next()?;
        }
        let _algorithm = fields.next()?;
        let key = fields.next()?;
        Some(Self {
            marker,
            hosts: first,
            key,
        })
    }

    /// Whether `name` (`host` or `[host]:port`) is matched: some pattern matches and no negated
    /// pattern does.
    fn matches(&self, name: &str) -> bool {
        if let Some(rest) = self.hosts.strip_prefix("|1|") {
            let Some((salt, hash)) = rest.split_once('|') else {
                return false;
            };
            let (Ok(salt), Ok(hash)) = (
                BASE64.decode(salt.as_bytes()),
                BASE64.decode(hash.as_bytes()),
            ) else {
                return false;
            };
            let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
                return false;
            };
            return mac
                .chain_update(name.as_bytes())
                .verify_slice(&hash)
                .is_ok();
        }
        let mut matched = false;
        for pattern in self.hosts.split(',') {
            if let Some(neg) = pattern.strip_prefix('!') {
                if wildcard(neg.as_bytes(), name.as_bytes()) {
                    return false;
                }
            } else if wildcard(pattern.as_bytes(), name.as_bytes()) {
                matched = true;
            }
        }
        matched
    }
}

/// `*` and `?` glob matching, case-insensitive as OpenSSH does for host names.
///
/// Iterative, with one saved position: on a mismatch only the last `*` seen takes one more
/// byte (earlier stars never need to, since the last one can absorb whatever they would). At
/// most `pattern.len() * name.len()` steps and no recursion, so a line of many `*` (or of `*a`
/// repeated) neither overflows the stack nor backtracks exponentially.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The pattern index just after the last `*`, and the first name byte it does not cover yet.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, n));
            }
            Some(b'?') => {
                p += 1;
                n += 1;
            }
            Some(c) if c.eq_ignore_ascii_case(&name[n]) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((after_star, covered)) => {
                    p = after_star;
                    n = covered + 1;
                    star = Some((after_star, n));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    #[test]
    fn patterns_ports_negation_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        let hashed = hash_host("[db.example]:2222", b"0123456789abcdefghij");
        std::fs::write(
            &p,
            format!(
                "# comment\n\n*.example,!bad.example ssh-ed25519 {KEY_A}\n[10.0.0.1]:2200\tssh-ed25519 {KEY_A} c\n\
                 garbage\n{hashed} ssh-ed25519 {KEY_B}\n@revoked * ssh-ed25519 {KEY_B}\n"
            ),
        )
        .unwrap();
        assert!(matches!(
            check(&p, "web.example", 22, &key(KEY_A)),
            Check::Known
        ));
        assert!(matches!(
            check(&p, "WEB.example", 22, &key(KEY_A)),
            Check::Known
        ));
        assert!(matches!(
            check(&p, "bad.example", 22, &key(KEY_A)),
            Check::Unknown
        ));
        assert!(matches!(
            check(&p, "10.0.0.1", 2200, &key(KEY_A)),
            Check::Known
        ));
        assert!(matches!(
            check(&p, "10.0.0.1", 22, &key(KEY_A)),
            Check::Unknown
        ));
        // KEY_B is recorded (hashed) for db.example:2222, but revoked for every host.
        match check(&p, "db.example", 2222, &key(KEY_B)) {
            Check::Refused(HostKeyError::Revoked { line, .. }) => assert_eq!(line, 7),
            other => panic!("{other:?}"),
        }
        match check(&p, "web.example", 22, &key(KEY_B)) {
            Check::Refused(e @ HostKeyError::Revoked { .. }) => {
                assert!(e.to_string().contains("revoked"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_changed_key_names_both_fingerprints_and_learning_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/known_hosts");
        learn(&p, "h", 2022, &key(KEY_A), true).unwrap();
        learn(&p, "k", 22, &key(KEY_A), false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("|1|"), "{text}");
        assert!(
            text.contains(&format!("\nk ssh-ed25519 {KEY_A}\n")),
            "{text}"
        );
        assert!(matches!(check(&p, "h", 2022, &key(KEY_A)), Check::Known));
        match check(&p, "h", 2022, &key(KEY_B)) {
            Check::Refused(e @ HostKeyError::Changed { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("[h]:2022"), "{msg}");
                assert!(msg.contains(&fingerprint(&key(KEY_A))), "{msg}");
                assert!(msg.contains(&fingerprint(&key(KEY_B))), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// What `*`, `?` and literal bytes mean, as a table: `row[j]` says whether the pattern so
    /// far matches `name[..j]`. Obviously right and O(n·m), for checking [`wildcard`] against.
    fn reference(pattern: &[u8], name: &[u8]) -> bool {
        let mut row = vec![false; name.len() + 1];
        row[0] = true;
        for &pc in pattern {
            let mut next = vec![false; name.len() + 1];
            next[0] = pc == b'*' && row[0];
            for j in 1..=name.len() {
                next[j] = match pc {
                    b'*' => row[j] || next[j - 1],
                    b'?' => row[j - 1],
                    c => row[j - 1] && c.eq_ignore_ascii_case(&name[j - 1]),
                };
            }
            row = next;
        }
        row[name.len()]
    }

    /// OpenSSH's rule for a comma-separated list: no negated pattern matches and some other does.
    fn reference_list(hosts: &str, name: &str) -> bool {
        let patterns: Vec<&str> = hosts.split(',').collect();
        let negated = patterns.iter().any(|p| {
            p.strip_prefix('!')
                .is_some_and(|n| reference(n.as_bytes(), name.as_bytes()))
        });
        let positive = patterns
            .iter()
            .any(|p| !p.starts_with('!') && reference(p.as_bytes(), name.as_bytes()));
        !negated && positive
    }

    fn entry(hosts: &str) -> String {
        format!("{hosts} ssh-ed25519 {KEY_A}")
    }

    /// Before the iterative matcher, the first line aborted the test process (stack overflow:
    /// one recursion per `*`) and the second did not finish in a minute (each `*` retried every
    /// split of the name).
    #[test]
    fn many_stars_neither_overflow_the_stack_nor_backtrack() {
        let stars = "*".repeat(100_000);
        let line = entry(&stars);
        let e = Entry::parse(&line).unwrap();
        assert!(e.matches("web.example"));
        assert!(e.matches("[10.0.0.1]:2200"));
        assert!(e.matches(""));
        let line = entry(&format!("{stars}x"));
        assert!(!Entry::parse(&line).unwrap().matches(&"a".repeat(10_000)));
        assert!(
            Entry::parse(&line)
                .unwrap()
                .matches(&format!("{}X", "a".repeat(10_000)))
        );
        let line = entry(&format!("{}b", "*a".repeat(2_000)));
        let e = Entry::parse(&line).unwrap();
        assert!(!e.matches(&"a".repeat(4_000)));
        assert!(e.matches(&format!("{}b", "a".repeat(4_000))));

        // The same through the file, as a connection checks it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        std::fs::write(&p, format!("{}\n{}\n", entry(&stars), line)).unwrap();
        assert!(matches!(
            check(&p, "web.example", 22, &key(KEY_A)),
            Check::Known
        ));
    }

    #[test]
    fn wildcard_semantics() {
        for (pattern, name, expected) in [
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("?", "", false),
            ("?", "a", true),
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbx", false),
            ("a*b*", "axxbx", true),
            ("*.example", "WEB.Example", true),
            ("*.example", "example", false),
            ("10.0.0.?", "10.0.0.1", true),
            ("10.0.0.?", "10.0.0.10", false),
            ("[10.0.0.1]:22?0", "[10.0.0.1]:2200", true),
            ("**a**", "a", true),
            ("*?*", "", false),
        ] {
            assert_eq!(
                wildcard(pattern.as_bytes(), name.as_bytes()),
                expected,
                "{pattern:?} {name:?}"
            );
            assert_eq!(reference(pattern.as_bytes(), name.as_bytes()), expected);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn the_matcher_agrees_with_the_reference(
            pattern in "[abAB.*?]{0,14}",
            name in "[abAB.]{0,14}",
        ) {
            proptest::prop_assert_eq!(
                wildcard(pattern.as_bytes(), name.as_bytes()),
                reference(pattern.as_bytes(), name.as_bytes())
            );
        }

        #[test]
        fn host_lists_agree_with_the_reference(
            patterns in proptest::collection::vec(("!?", "[ab.*?\\[\\]:2]{0,8}"), 1..5),
            name in "[ab.\\[\\]:2]{0,10}",
        ) {
            let hosts: Vec<String> = patterns.iter().map(|(neg, p)| format!("{neg}{p}")).collect();
            let hosts = hosts.join(",");
            let line = entry(&hosts);
            match Entry::parse(&line) {
                // A list that is empty or all commas still parses (an empty pattern matches "").
                Some(e) => proptest::prop_assert_eq!(e.matches(&name), reference_list(&hosts, &name)),
                None => proptest::prop_assert!(hosts.is_empty()),
            }
        }

        #[test]
        fn hashed_entries_match_their_host_and_port_only(
            host in "[a-z0-9.-]{1,20}",
            other in "[a-z0-9.-]{1,20}",
            port in 1u16..,
            salt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let name = host_entry_name(&host, port);
            let line = entry(&hash_host(&name, &salt));
            let e = Entry::parse(&line).unwrap();
            proptest::prop_assert!(e.matches(&name));
            proptest::prop_assert_eq!(e.matches(&host_entry_name(&other, port)), other == host);
            if port != 22 {
                proptest::prop_assert!(!e.matches(&host));
                proptest::prop_assert!(Entry::parse(&entry(&name)).unwrap().matches(&name));
            }
        }

        #[test]
        fn arbitrary_lines_never_panic(
            line in "(@revoked |@cert-authority |@x )?(\\|1\\|)?[ \t|!*?,=/+#@\\[\\]:a-zA-Z0-9-]{0,60}",
            any_line in ".{0,120}",
            name in ".{0,20}",
        ) {
            for l in [&line, &any_line] {
                if let Some(e) = Entry::parse(l) {
                    let _ = (e.matches(&name), format!("{e:?}"));
                }
            }
        }
    }

    proptest::proptest! {
        // Each case writes a file: fewer of them.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        #[test]
        fn checking_arbitrary_files_never_panics(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    ".{0,80}",
                    "(@revoked )?[*?a-z.!,]{1,10} ssh-ed25519 [A-Za-z0-9+/=]{0,80}",
                    proptest::strategy::Just(format!("* ssh-ed25519 {KEY_B}")),
                    proptest::strategy::Just(format!("@revoked web ssh-ed25519 {KEY_A}")),
                ],
                0..8,
            ),
            host in "[a-z.]{0,10}",
            port in proptest::prelude::any::<u16>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("known_hosts");
            std::fs::write(&p, lines.join("\n")).unwrap();
            let verdict = check(&p, &host, port, &key(KEY_A));
            if let Check::Refused(e) = verdict {
                proptest::prop_assert!(e.to_string().contains("known_hosts"), "{}", e);
            }
        }
    }
}
