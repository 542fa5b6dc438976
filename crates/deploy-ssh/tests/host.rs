//! `SshHost` against a real sshd on loopback: the Host contract, exit codes and output, the
//! injection property, host keys, key types and the agent, connection reuse and drops, and
//! interrupted uploads.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::testing::host_conformance;
use deploy_core::testing::process::ChildGuard;
use deploy_core::{Command, ErrorKind, Host, HostExt};
use deploy_ssh::testing::{SshdFixture, ssh_keygen};
use deploy_ssh::{HostKeyError, HostKeyPolicy, SshHost, SshHostConfig};

fn fingerprint(pub_file: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_file)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_host_conformance_suite() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    host_conformance(&host, scratch.path()).await;
    assert!(host.is_connected().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_host_conformance_suite_without_sftp() {
    // A server without the subsystem, and a host told not to use it: scripts do everything.
    let sshd = SshdFixture::start_with("").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    host_conformance(&sshd.host().unwrap(), scratch.path()).await;
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host_builder().sftp(false).build().unwrap();
    host_conformance(&host, scratch.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_operations_go_over_sftp_and_start_no_process_on_the_host() {
    // This server runs SFTP in place of any command: a file operation that started a process
    // would get an SFTP server instead of its script, and fail saying so.
    let sshd =
        SshdFixture::start_with("Subsystem sftp internal-sftp\nForceCommand internal-sftp\n")
            .unwrap();
    let host = sshd.host().unwrap();
    let e = host
        .run(&Command::from_argv(["sh", "-c", "echo ran"]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("did not run the command"), "{e}");
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("a/b/c");
    host.create_dir_all(&root).await.unwrap();
    host.create_dir_all(&root).await.unwrap();
    assert_eq!(
        host.file_kind(&root).await.unwrap(),
        Some(deploy_core::FileKind::Dir)
    );
    let file = root.join("secret.env");
    host.write_file(&file, b"TOKEN=1\n", Some(0o600))
        .await
        .unwrap();
    host.write_file(&file, b"TOKEN=2\n", None).await.unwrap();
    assert_eq!(host.read_file(&file).await.unwrap(), b"TOKEN=2\n");
    use std::os::unix::fs::PermissionsExt;
    // Without a mode, the replaced file's.
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let local = scratch.path().join("local.bin");
    std::fs::write(&local, &big).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o751)).unwrap();
    let uploaded = root.join("up.bin");
    host.upload(&local, &uploaded, None).await.unwrap();
    assert!(std::fs::read(&uploaded).unwrap() == big);
    assert_eq!(
        std::fs::metadata(&uploaded).unwrap().permissions().mode() & 0o777,
        0o751,
        "the source's mode, not the server's umask"
    );
    let link = root.join("current");
    host.symlink(Path::new("up.bin"), &link).await.unwrap();
    assert_eq!(
        host.read_link(&link).await.unwrap(),
        Some(Path::new("up.bin").to_path_buf()),
        "the link points where it was asked to (OpenSSH's argument order)"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("up.bin"));
    let tmp = root.join("current.tmp");
    host.symlink(Path::new("secret.env"), &tmp).await.unwrap();
    host.rename(&tmp, &link).await.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("secret.env"));
    assert_eq!(host.read_link(&root.join("nothing")).await.unwrap(), None);
    let names: Vec<(String, deploy_core::FileKind)> = host.list_dir(&root).await.unwrap();
    use deploy_core::FileKind::{File, Symlink};
    assert_eq!(
        names,
        [
            ("current".to_owned(), Symlink),
            ("secret.env".to_owned(), File),
            ("up.bin".to_owned(), File)
        ]
    );
    host.remove(&uploaded).await.unwrap();
    host.remove(&uploaded).await.unwrap();
    assert_eq!(host.file_kind(&uploaded).await.unwrap(), None);
    let e = host.read_file(&uploaded).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = host.list_dir(&uploaded).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A tree is removed by `rm -rf`, which this server does not run: an error, not a silent
    // success with the tree still there.
    let e = host.remove(&scratch.path().join("a")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(root.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_answers_that_say_too_little_are_worded_by_the_script() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("current");
    std::fs::create_dir(&dir).unwrap();
    // readlink of a directory: SFTP says "bad message" (EINVAL).
    let e = host.read_link(&dir).await.unwrap_err();
    assert!(e.to_string().contains("not a symbolic link"), "{e}");
    // A symlink where one exists: SFTP says "failure".
    let e = host
        .symlink(Path::new("elsewhere"), &dir)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    // A directory where a file is in the way.
    std::fs::write(scratch.path().join("file"), b"x").unwrap();
    let e = host
        .create_dir_all(&scratch.path().join("file/sub"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("Not a directory") || e.to_string().contains("File exists"),
        "{e}"
    );
    // A link whose target is not UTF-8 comes back byte for byte.
    let odd = OsString::from_vec(b"caf\xe9".to_vec());
    let link = scratch.path().join("odd");
    std::os::unix::fs::symlink(&odd, &link).unwrap();
    assert_eq!(host.read_link(&link).await.unwrap(), Some(odd.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_by_its_caller_leaves_no_temporary_file() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let local = scratch.path().join("big.bin");
    std::fs::write(&local, vec![7u8; 64 * 1024 * 1024]).unwrap();
    let remote = scratch.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    host.connect().await.unwrap();
    let dest = remote.join("artifact.tar");
    let upload = host.upload(&local, &dest, Some(0o600));
    // The caller's own time limit ends the call while bytes are in flight.
    let cut = tokio::time::timeout(Duration::from_millis(150), upload).await;
    assert!(
        cut.is_err(),
        "the upload finished within 150 ms: make it larger"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = || std::fs::read_dir(&remote).unwrap().count();
    while left() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left(), 0, "a temporary file stayed behind");
    // The session still works.
    host.write_file(&dest, b"ok", None).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_signals_large_output_and_stdin() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let out = host
        .run(&Command::from_argv(["sh", "-c", "exit 42"]).unwrap())
        .await
        .unwrap();
    assert_eq!((out.code, out.signal), (Some(42), None));

    let out = host
        .run(&Command::from_argv(["sh", "-c", "kill -KILL $$"]).unwrap())
        .await
        .unwrap();
    assert_eq!((out.code, out.signal), (None, Some(9)), "{out:?}");

    // 20 MiB of output: the first 16 MiB are kept, the command is not blocked.
    let n = 20 * 1024 * 1024;
    let started = Instant::now();
    let out = host
        .run(&Command::from_argv(["head", "-c", &n.to_string(), "/dev/zero"]).unwrap())
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), SshHost::MAX_CAPTURED_OUTPUT);
    assert!(out.stdout.iter().all(|&b| b == 0));
    eprintln!("20 MiB of output in {:?}", started.elapsed());

    // 8 MiB through stdin and back, checksummed on the far side.
    let input: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let out = host
        .run(
            &Command::from_argv(["wc", "-c"])
                .unwrap()
                .stdin(input.clone()),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text().trim(), input.len().to_string());

    let e = host
        .run_checked(&Command::from_argv(["sh", "-c", "echo boom >&2; exit 3"]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandFailed);
    let msg = e.to_string();
    assert!(msg.contains("exit code 3") && msg.contains("boom"), "{msg}");
    assert!(msg.contains(host.name()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_is_reused_and_channels_multiplex() {
    let sshd = SshdFixture::start().unwrap();
    let host = Arc::new(sshd.host().unwrap());
    // The shell's parent is the sshd process serving the connection: one for all commands.
    let mut parents = std::collections::BTreeSet::new();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let h = Arc::clone(&host);
        tasks.push(tokio::spawn(async move {
            let out = h
                .run(&Command::from_argv(["sh", "-c", "sleep 0.2; echo $PPID"]).unwrap())
                .await
                .unwrap();
            out.stdout_text().trim().to_owned()
        }));
    }
    let started = Instant::now();
    for t in tasks {
        parents.insert(t.await.unwrap());
    }
    assert_eq!(parents.len(), 1, "{parents:?}");
    // 12 × 0.2 s on 8 channels at once: two rounds, not twelve.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retryable_and_the_next_call_reconnects() {
    let sshd = SshdFixture::start().unwrap();
    let host = Arc::new(sshd.host().unwrap());
    host.connect().await.unwrap();
    let h = Arc::clone(&host);
    let running =
        tokio::spawn(async move { h.run(&Command::from_argv(["sleep", "5"]).unwrap()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sshd.kill_connections() >= 1);
    let e = running.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("connection dropped"), "{e}");
    let out = host.run(&Command::new("true")).await.unwrap();
    assert!(out.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_partial_file() {
    interrupted_upload(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_partial_file_without_sftp() {
    interrupted_upload(false).await;
}

async fn interrupted_upload(sftp: bool) {
    let sshd = SshdFixture::start().unwrap();
    let host = Arc::new(sshd.host_builder().sftp(sftp).build().unwrap());
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    let content: Vec<u8> = (0..96 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&src, &content).unwrap();
    let remote = tempfile::tempdir().unwrap();
    let dest = remote.path().join("release.tar");
    std::fs::write(&dest, b"old release").unwrap();

    let (h, s, d) = (Arc::clone(&host), src.clone(), dest.clone());
    let upload = tokio::spawn(async move { h.upload(&s, &d, Some(0o600)).await });
    // Wait until the temporary file is filling up, then cut every connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let tmp = loop {
        let partial = std::fs::read_dir(remote.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().contains(".deploy-tmp-"))
            .filter(|e| e.metadata().map(|m| m.len() > 1024 * 1024).unwrap_or(false));
        if let Some(p) = partial {
            break p.path();
        }
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(sshd.kill_connections() >= 1);
    let e = upload.await.unwrap().unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"old release",
        "the final path changed"
    );
    let left = || -> Vec<OsString> {
        std::fs::read_dir(remote.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    };
    if !sftp {
        // The remote shell sees end of input, finds the file short and removes it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tmp.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left(), [OsString::from("release.tar")], "leftovers");
    }

    // The retry reconnects and completes; over SFTP, its new session first removes the
    // temporary file the cut left behind (the SFTP server died with the connection).
    host.upload(&src, &dest, Some(0o640)).await.unwrap();
    assert!(std::fs::read(&dest).unwrap() == content);
    assert_eq!(left(), [OsString::from("release.tar")], "leftovers");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);

    // And back down: 96 MiB is over the default read limit (64 MiB), so with a larger one.
    let back = local.path().join("back.bin");
    let e = host.download(&dest, &back, None).await.unwrap_err();
    assert!(e.to_string().contains("limit of 64 MiB"), "{e}");
    let host = sshd
        .host_builder()
        .max_read(128 * 1024 * 1024)
        .build()
        .unwrap();
    host.download(&dest, &back, None).await.unwrap();
    assert!(std::fs::read(&back).unwrap() == content);
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_are_refused_with_the_fingerprint_and_accept_new_records_them() {
    let sshd = SshdFixture::start().unwrap();
    let fp = fingerprint(&sshd.host_public_key());
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");

    let strict = sshd.host_builder().known_hosts(&kh).build().unwrap();
    let e = strict.connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(!e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains(&fp), "{msg}");
    assert!(msg.contains("ssh-keyscan -p"), "{msg}");
    assert!(
        msg.contains(&format!("[127.0.0.1]:{}", sshd.port())),
        "{msg}"
    );
    let source = std::error::Error::source(&e).unwrap();
    assert!(source.downcast_ref::<HostKeyError>().is_some());
    assert!(!kh.exists(), "strict must not record anything");

    let accept = sshd
        .host_builder()
        .known_hosts(&kh)
        .host_key_policy(HostKeyPolicy::AcceptNew)
        .hash_known_hosts(true)
        .build()
        .unwrap();
    let out = accept.run(&Command::new("true")).await.unwrap();
    assert!(out.success());
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(recorded.starts_with("|1|"), "hashed entry: {recorded}");
    assert_eq!(recorded.lines().count(), 1);
    // OpenSSH itself finds the hashed entry.
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{}", sshd.port()), "-f"])
        .arg(&kh)
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "ssh-keygen -F did not find the entry"
    );

    // Now strict accepts it, and accept-new does not add it twice.
    strict.run(&Command::new("true")).await.unwrap();
    accept.disconnect().await;
    accept.run(&Command::new("true")).await.unwrap();
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_a_hard_error_under_every_policy() {
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        other.to_str().unwrap(),
    ])
    .unwrap();
    let other_pub = dir.path().join("other.pub");
    let key = std::fs::read_to_string(&other_pub).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), key.join(" ")),
    )
    .unwrap();
    let before = std::fs::read(&kh).unwrap();

    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let host = sshd
            .host_builder()
            .known_hosts(&kh)
            .host_key_policy(policy)
            .build()
            .unwrap();
        let e = host.run(&Command::new("true")).await.unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{msg}");
        assert!(!e.is_retryable());
        assert!(msg.contains("CHANGED"), "{msg}");
        assert!(
            msg.contains(&format!("[127.0.0.1]:{}", sshd.port())),
            "{msg}"
        );
        assert!(
            msg.contains(&fingerprint(&other_pub)),
            "recorded fingerprint: {msg}"
        );
        assert!(
            msg.contains(&fingerprint(&sshd.host_public_key())),
            "offered: {msg}"
        );
    }
    assert_eq!(std::fs::read(&kh).unwrap(), before, "known_hosts untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_written_by_openssh_are_honoured() {
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::copy(sshd.known_hosts(), &kh).unwrap();
    ssh_keygen(&["-q", "-H", "-f", kh.to_str().unwrap()]).unwrap();
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let host = sshd.host_builder().known_hosts(&kh).build().unwrap();
    assert!(host.run(&Command::new("true")).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_passphrase_keys_authenticate() {
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    ssh_keygen(&["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", &p("rsa")]).unwrap();
    ssh_keygen(&[
        "-q",
        "-t",
        "ecdsa",
        "-b",
        "256",
        "-N",
        "",
        "-f",
        &p("ecdsa"),
    ])
    .unwrap();
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "s3cret pass",
        "-f",
        &p("locked"),
    ])
    .unwrap();
    for k in ["rsa", "ecdsa", "locked"] {
        sshd.authorize(&dir.path().join(format!("{k}.pub")))
            .unwrap();
    }
    let base = || {
        SshHost::builder("127.0.0.1")
            .port(sshd.port())
            .user(sshd.user())
            .known_hosts(sshd.known_hosts())
    };
    for k in ["rsa", "ecdsa"] {
        let h = base().key_file(p(k)).build().unwrap();
        assert!(h.run(&Command::new("true")).await.unwrap().success(), "{k}");
    }
    let h = base()
        .key_file_with_passphrase(p("locked"), "s3cret pass")
        .build()
        .unwrap();
    assert!(h.run(&Command::new("true")).await.unwrap().success());
    assert!(
        !format!("{h:?}").contains("s3cret"),
        "Debug must redact the passphrase"
    );

    let e = base()
        .key_file(p("locked"))
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("passphrase"), "{e}");

    // A key the server does not know: refused, the message names the key and the user.
    ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f", &p("stranger")]).unwrap();
    let e = base()
        .key_file(p("stranger"))
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(
        e.to_string().contains("stranger") && e.to_string().contains(sshd.user()),
        "{e}"
    );

    let e = SshHost::builder("").port(0).build().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad host name")
            && msg.contains("port 0")
            && msg.contains("no authentication"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_running_ssh_agent_authenticate() {
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // Stopped by its pid when the test ends.
    let _agent = ChildGuard::new(
        std::process::Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(sshd.client_key())
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(added.success());
    let host = SshHost::builder("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .known_hosts(sshd.known_hosts())
        .agent_socket(&sock)
        .build()
        .unwrap();
    let out = host
        .run(&Command::from_argv(["echo", "via agent"]).unwrap())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"via agent\n");
}

/// A plan file's `ssh` table, built by `SshHost::from_config`, reaches the real server, and its
/// errors say each thing once: the host key refusal, a connection refused, a dropped command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_from_its_config_runs_commands_and_its_errors_say_each_thing_once() {
    let sshd = SshdFixture::start().unwrap();
    let mut config = SshHostConfig::new("127.0.0.1");
    config.port = Some(sshd.port());
    config.user = Some(sshd.user().to_owned());
    config.key_file = Some(sshd.client_key());
    config.known_hosts = Some(sshd.known_hosts());
    config.connect_timeout = Some(Duration::from_secs(5));
    let host = SshHost::from_config(config.clone()).unwrap();
    let out = host
        .run(&Command::from_argv(["echo", "from config"]).unwrap())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"from config\n");

    // The variable holding the passphrase is not set: refused, naming the key and the variable.
    let mut locked = config.clone();
    locked.key_passphrase_env = Some("DEPLOY_SSH_TEST_UNSET_PASSPHRASE".into());
    let e = SshHost::from_config(locked).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.contains("key_passphrase_env") && msg.contains("DEPLOY_SSH_TEST_UNSET_PASSPHRASE"),
        "{msg}"
    );

    // Unknown host: the refusal is the source, printed once.
    let dir = tempfile::tempdir().unwrap();
    let mut strict = config.clone();
    strict.known_hosts = Some(dir.path().join("known_hosts"));
    let e = SshHost::from_config(strict)
        .unwrap()
        .run(&Command::new("true"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg.matches("host key verification failed").count(),
        1,
        "{msg}"
    );
    assert_eq!(msg.matches(host.name()).count(), 1, "{msg}");

    // Nobody listening: the host once, the OS error once.
    let mut dead = config.clone();
    dead.port = Some(deploy_core::testing::process::free_port().unwrap());
    let dead = SshHost::from_config(dead).unwrap();
    let e = dead.run(&Command::new("true")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let msg = e.to_string();
    assert_eq!(msg.matches(dead.name()).count(), 1, "{msg}");
    assert_eq!(msg.matches("refused").count(), 1, "{msg}");
    let e = dead
        .write_file(Path::new("/tmp/x"), b"x", None)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("write file /tmp/x: connect to"), "{msg}");
    assert_eq!(msg.matches(dead.name()).count(), 1, "{msg}");

    // A command whose connection drops: the host once.
    let h = host.clone();
    let running =
        tokio::spawn(async move { h.run(&Command::from_argv(["sleep", "5"]).unwrap()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sshd.kill_connections() >= 1);
    let e = running.await.unwrap().unwrap_err();
    let msg = e.to_string();
    assert_eq!(msg.matches(host.name()).count(), 1, "{msg}");
    assert!(msg.contains("connection dropped"), "{msg}");
}

/// Bytes that mean something to a shell, plus plain and non-UTF-8 ones (never NUL).
fn hostile_byte() -> impl proptest::strategy::Strategy<Value = u8> {
    use proptest::prelude::*;
    prop_oneof![
        3 => proptest::sample::select(b"'\"`$(){};&|<>*?[]~#!\\\n\t =%-".to_vec()),
        2 => proptest::sample::select(b"abcxyz019./".to_vec()),
        1 => 0x80u8..=0xff,
        1 => 1u8..0x20,
    ]
}

fn hostile_arg() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        4 => proptest::collection::vec(hostile_byte(), 0..24),
        1 => proptest::sample::select(vec![
            b"$(touch PWNED)".to_vec(),
            b"`touch PWNED`".to_vec(),
            b"'; touch PWNED; '".to_vec(),
            b"\"; touch PWNED; \"".to_vec(),
            b"\n touch PWNED \n".to_vec(),
            b"'\\''$(touch PWNED)'\\''".to_vec(),
            b"*".to_vec(),
            b"--".to_vec(),
        ]),
    ]
}

/// Through the real remote login shell: every argument arrives byte for byte (printf echoes
/// each one NUL-terminated) and nothing runs (no PWNED file, in the working directory or the
/// home directory); the same for environment values and working directory names.
///
/// Driven by proptest's runner inside a plain test, so that the one sshd it uses is stopped
/// when the test ends.
#[test]
fn hostile_arguments_arrive_byte_for_byte() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(hostile_arg(), 1..6);
    let result = runner.run(&strategy, |args| {
        let check = |ok: bool, what: String| {
            if ok {
                Ok(())
            } else {
                Err(TestCaseError::fail(what))
            }
        };
        let cmd = Command::new("printf")
            .arg("%s\\0")
            .args(args.iter().map(|a| OsString::from_vec(a.clone())))
            .cwd(scratch.path());
        let out = rt.block_on(host.run(&cmd)).unwrap();
        let mut want = Vec::new();
        for a in &args {
            want.extend_from_slice(a);
            want.push(0);
        }
        check(
            out.success(),
            format!("printf failed: {:?}", out.stderr_text()),
        )?;
        check(
            out.stdout == want,
            format!("got {:?}, want {:?}", out.stdout, want),
        )?;
        check(
            out.stderr.is_empty(),
            format!("stderr {:?}", out.stderr_text()),
        )?;
        let listing: Vec<_> = std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        check(listing.is_empty(), format!("something ran: {listing:?}"))?;
        check(
            !Path::new(&home).join("PWNED").exists(),
            "PWNED in $HOME".into(),
        )?;

        // The first argument as an environment value and as a working directory name. A value
        // with a newline cannot travel on standard input: refused, naming the variable only.
        if args[0].contains(&b'\n') {
            let cmd = Command::from_argv(["true"])
                .unwrap()
                .env("V", OsString::from_vec(args[0].clone()));
            let e = rt.block_on(host.run(&cmd)).unwrap_err();
            check(
                e.kind() == ErrorKind::InvalidInput
                    && e.to_string()
                        .contains("environment variable V contains a newline"),
                format!("newline in a value: {e}"),
            )?;
            let msg = e.to_string();
            for part in args[0].split(|&b| b == b'\n').filter(|p| p.len() >= 6) {
                check(
                    !msg.as_bytes().windows(part.len()).any(|w| w == part),
                    format!("the value shows in {msg}"),
                )?;
            }
        }
        let name = OsString::from_vec(args[0].iter().copied().filter(|&b| b != b'/').collect());
        if !args[0].contains(&b'\n')
            && !name.is_empty()
            && name.as_bytes() != b"."
            && name.as_bytes() != b".."
        {
            let dir = scratch.path().join(&name);
            std::fs::create_dir(&dir).unwrap();
            let cmd = Command::from_argv(["sh", "-c", "printf %s \"$V\"; pwd >&2"])
                .unwrap()
                .env("V", OsString::from_vec(args[0].clone()))
                .cwd(&dir);
            let out = rt.block_on(host.run(&cmd)).unwrap();
            std::fs::remove_dir(&dir).unwrap();
            check(
                out.stdout == args[0],
                format!("env value: got {:?}", out.stdout),
            )?;
            let pwd = out.stderr.strip_suffix(b"\n").unwrap_or(&out.stderr);
            check(
                pwd == dir.as_os_str().as_bytes(),
                format!("cwd: got {:?}", String::from_utf8_lossy(pwd)),
            )?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Environment values reach the command (bytes a shell would expand, a lone non-UTF-8 byte,
/// spaces at both ends, an empty value), the command's own standard input follows them whole,
/// a command given no input sees end of input, and a value with a newline is refused naming
/// the variable and not the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_values_reach_the_command_and_its_stdin_follows() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let values: [(&str, &[u8]); 4] = [
        ("PGPASSWORD", b"  c'a\"n$(x)`y`\\ry  "),
        ("LC_ALL", b"C"),
        ("ODD", b"\xc2"),
        ("EMPTY", b""),
    ];
    let mut script = String::new();
    for (n, _) in &values {
        script.push_str(&format!("printf '%s\\0' \"${n}\"; "));
    }
    script.push_str("exec wc -c");
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut cmd = Command::from_argv(["sh", "-c", &script])
        .unwrap()
        .stdin(input.clone());
    for (n, v) in &values {
        cmd = cmd.env(n, OsString::from_vec(v.to_vec()));
    }
    let out = host.run_checked(&cmd).await.unwrap();
    let mut want = Vec::new();
    for (_, v) in &values {
        want.extend_from_slice(v);
        want.push(0);
    }
    want.extend_from_slice(format!("{}\n", input.len()).as_bytes());
    assert_eq!(out.stdout, want, "{:?}", out.stdout_text());

    // The input arrives byte for byte after the values.
    let out = host
        .run_checked(
            &Command::from_argv(["cat"])
                .unwrap()
                .env("A", "1")
                .stdin(b"line one\n\xc2\nend".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"line one\n\xc2\nend");
    // No input: the command sees the end of it at once.
    let out = host
        .run_checked(&Command::from_argv(["cat"]).unwrap().env("A", "1"))
        .await
        .unwrap();
    assert!(out.stdout.is_empty());

    let e = host
        .run(&Command::new("true").env("PGPASSWORD", "hunter2\nsecond-line"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.contains("environment variable PGPASSWORD contains a newline"),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2") && !msg.contains("second-line"),
        "{msg}"
    );

    // A name the login shell keeps read-only (bash's UID; the fixture's user logs in with
    // bash): refused, naming the variable.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let login_shell_is_bash = passwd.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.first() == Some(&sshd.user()) && f.last().is_some_and(|s| s.ends_with("/bash"))
    });
    if login_shell_is_bash {
        let e = host
            .run(&Command::new("true").env("UID", "12345"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(
            e.to_string()
                .contains("cannot set environment variable UID"),
            "{e}"
        );
    }
}

/// The secrets harness on the host's process list: while commands carrying a canary password
/// in their environment run over SSH, every process's argv (`/proc/*/cmdline`, the remote
/// host's process list: the fixture's sshd runs here) is polled, and the canary is in none. A
/// canary deliberately put in an argument is found, so the watch does see those processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_environment_value_appears_in_any_process_argv() {
    use deploy_ssh::testing::ArgvWatch;
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host().unwrap();
    let canary = format!("canary-env-{}-q7Zt", std::process::id());
    let control = format!("control-argv-{}-W3xk", std::process::id());
    let watch = ArgvWatch::start(
        vec![canary.clone().into_bytes()],
        vec![b"deploy-ssh-wrapper".to_vec(), control.clone().into_bytes()],
    );
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) || n < 60 {
        let cmd = Command::from_argv(["sh", "-c", "sleep 0.02; printf %s \"$PGPASSWORD\""])
            .unwrap()
            .env("PGPASSWORD", &canary)
            .env("PGUSER", "app");
        let out = host.run_checked(&cmd).await.unwrap();
        assert_eq!(out.stdout, canary.as_bytes());
        n += 1;
    }
    // The positive control: an argument is visible to the watch.
    host.run_checked(&Command::from_argv(["sh", "-c", "sleep 0.3", &control]).unwrap())
        .await
        .unwrap();
    let report = watch.stop();
    eprintln!(
        "{n} commands; {} passes over /proc, {} command lines read, wrapper shells seen {} times, control seen {} times",
        report.passes, report.command_lines, report.markers[0], report.markers[1]
    );
    assert!(report.hits.is_empty(), "canary in argv: {:?}", report.hits);
    assert!(
        report.markers[0] > 0,
        "no wrapper shell was seen: {report:?}"
    );
    assert!(
        report.markers[1] > 0,
        "the control argument was not seen: {report:?}"
    );
}

/// `read_file` (and `download`) read at most `max_read` bytes: a file of exactly the limit is
/// read, one byte more is refused naming the path and the limit, and an endless file
/// (`/dev/zero`) is refused after one byte more than the limit crossed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_file_refuses_a_file_over_its_limit() {
    let sshd = SshdFixture::start().unwrap();
    let host = sshd.host_builder().max_read(1024).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("exact");
    std::fs::write(&exact, vec![b'a'; 1024]).unwrap();
    assert_eq!(host.read_file(&exact).await.unwrap().len(), 1024);
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 1025]).unwrap();
    let e = host.read_file(&big).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.contains(&big.display().to_string()) && msg.contains("limit of 1 KiB"),
        "{msg}"
    );
    let e = host
        .download(&big, &dir.path().join("copy"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("limit of 1 KiB"), "{e}");
    assert!(!dir.path().join("copy").exists());

    // The default limit, 64 MiB, on an endless file: refused, in bounded time.
    let host = sshd.host().unwrap();
    let started = Instant::now();
    let e = host.read_file(Path::new("/dev/zero")).await.unwrap_err();
    assert!(
        e.to_string().contains("/dev/zero") && e.to_string().contains("limit of 64 MiB"),
        "{e}"
    );
    eprintln!("/dev/zero refused after {:?}", started.elapsed());
    let e = sshd.host_builder().max_read(0).build().unwrap_err();
    assert!(e.to_string().contains("max_read 0"), "{e}");
}

/// `key_passphrase_file`: a passphrase file readable by its owner only unlocks an encrypted key
/// on the real server; one that group or others may read is refused, naming the file and its
/// mode; no `Debug` (config, builder, host) and no error shows the passphrase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_file_unlocks_the_key_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("locked");
    let passphrase = "pass-canary-8Jd2 with spaces";
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        passphrase,
        "-f",
        key.to_str().unwrap(),
    ])
    .unwrap();
    sshd.authorize(&dir.path().join("locked.pub")).unwrap();
    let file = dir.path().join("passphrase");
    std::fs::write(&file, format!("{passphrase}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut config = SshHostConfig::new("127.0.0.1");
    config.port = Some(sshd.port());
    config.user = Some(sshd.user().to_owned());
    config.key_file = Some(key.clone());
    config.key_passphrase_file = Some(file.clone());
    config.known_hosts = Some(sshd.known_hosts());
    let host = SshHost::from_config(config.clone()).unwrap();
    let out = host
        .run_checked(&Command::from_argv(["echo", "unlocked"]).unwrap())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"unlocked\n");
    let builder = SshHost::builder("127.0.0.1").key_file_with_passphrase(&key, passphrase);
    for shown in [
        format!("{config:?}"),
        format!("{host:?}"),
        format!("{builder:?}"),
        format!("{:?}", builder.clone().build().unwrap()),
    ] {
        assert!(!shown.contains("canary"), "{shown}");
    }

    // Readable by group or others: refused, naming the file and its mode.
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = SshHost::from_config(config.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = format!("{e} {e:?}");
        assert!(
            msg.contains("key_passphrase_file")
                && msg.contains(&file.display().to_string())
                && msg.contains(&format!("{mode:04o}"))
                && msg.contains("chmod 600"),
            "{msg}"
        );
        assert!(!msg.contains("canary"), "{msg}");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SshHost::from_config(config.clone()).is_ok());

    // The wrong passphrase: the key cannot be loaded; no error shows what the file holds.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-canary-passphrase").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bad = config.clone();
    bad.key_passphrase_file = Some(wrong);
    let e = SshHost::from_config(bad)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(!format!("{e} {e:?}").contains("canary"), "{e:?}");

    // Both sources, or a file without a key: refused.
    let mut both = config.clone();
    both.key_passphrase_env = Some("DEPLOY_KEY_PASSPHRASE".into());
    let e = SshHost::from_config(both).unwrap_err();
    assert!(e.to_string().contains("give one of them"), "{e}");
    let mut keyless = config.clone();
    keyless.key_file = None;
    keyless.agent = true;
    let e = SshHost::from_config(keyless).unwrap_err();
    assert!(e.to_string().contains("key_passphrase_file"), "{e}");
    assert!(e.to_string().contains("needs key_file"), "{e}");
}
