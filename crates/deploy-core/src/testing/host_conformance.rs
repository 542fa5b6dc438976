//! [`host_conformance`]: checks every item of the [`Host`] contract against one host.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::ErrorKind;
use crate::traits::{Command, FileKind, Host, Output};

/// Fails the conformance run with a message naming the host and the contract item.
macro_rules! ensure {
    ($host:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("host conformance ({}): {}", $host.name(), format!($($msg)+));
        }
    };
}

/// Unwrap a result, failing the conformance run with the error and what was being done.
fn must<T>(host: &dyn Host, what: &str, r: crate::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "host conformance ({}): {what} failed: {}",
            host.name(),
            e.chain()
        ),
    }
}

async fn run(host: &dyn Host, what: &str, cmd: Command) -> Output {
    let cmd = if cmd.timeout.is_none() {
        cmd.timeout(Duration::from_secs(30))
    } else {
        cmd
    };
    must(host, what, host.run(&cmd).await)
}

/// Check that `host` keeps every item of the [`Host`] contract, working under `scratch` (a
/// directory on the host that this suite may fill; created if missing, a fresh one is best).
/// Panics with a message naming the violated item.
///
/// The host needs `sh`, `printf`, `cat`, `sleep`, `kill` and `stat` (GNU or BSD).
///
/// What is checked:
/// - `run` passes arguments byte for byte, with no shell interpretation (quotes, `$(...)`,
///   backticks, `;`, newlines, `*`, empty and non-UTF-8 arguments), sets the working directory
///   and the environment, feeds standard input then closes it (no input: the command sees end of
///   file), captures standard output and error (1 MiB through a pipe without deadlock), reports
///   exit codes and `Ok` for a failing command; a timeout is an error of kind `Timeout` and the
///   process is gone; a missing program is an error of kind `NotFound` naming it.
/// - `write_file` creates, replaces atomically (a concurrent reader sees the old or the new
///   content, never a part), sets the mode and leaves no temporary file; writing into a missing
///   directory fails and leaves nothing.
/// - `upload` copies a local file with its mode; `read_file` of a missing file is `NotFound`.
/// - `rename` replaces files and symlinks; `remove` of a missing path is `Ok`, removes files, a
///   symlink without following it, and whole trees.
/// - `symlink` creates (dangling) relative links and fails on an existing path; `read_link`
///   returns the target as written and `None` for a missing link.
/// - `create_dir_all` is idempotent; `list_dir` is sorted with kinds not following symlinks;
///   `file_kind` reports files, directories, symlinks and `None`.
pub async fn host_conformance(host: &dyn Host, scratch: &Path) {
    must(
        host,
        "create the scratch directory",
        host.create_dir_all(scratch).await,
    );
    let scratch = scratch.join(format!(
        "host-conformance-{}",
        crate::local::unique_suffix()
    ));
    must(
        host,
        "create the scratch directory",
        host.create_dir_all(&scratch).await,
    );

    run_arguments(host, &scratch).await;
    run_status_and_streams(host).await;
    run_timeout(host, &scratch).await;
    run_missing_program(host).await;
    files(host, &scratch).await;
    upload(host, &scratch).await;
    links_and_listing(host, &scratch).await;

    must(
        host,
        "remove the scratch directory",
        host.remove(&scratch).await,
    );
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&scratch).await).is_none(),
        "remove of a directory tree left {}",
        scratch.display()
    );
}

async fn run_arguments(host: &dyn Host, scratch: &Path) {
    let hostile: Vec<OsString> = vec![
        "plain".into(),
        "two words".into(),
        "it's".into(),
        "\"double\"".into(),
        "$(touch x)".into(),
        "`touch x`".into(),
        "; touch x".into(),
        "&& touch x".into(),
        "| touch x".into(),
        "> x".into(),
        "line1\nline2".into(),
        "*".into(),
        "".into(),
        "$HOME ${HOME}".into(),
        "back\\slash \\n".into(),
        "-n".into(),
        "%s %d".into(),
        "tab\there".into(),
        " leading and trailing ".into(),
        "ünïcödé ✓".into(),
        OsStr::from_bytes(b"non-utf8 \xff\xfe").to_owned(),
    ];
    let cmd = Command::new("printf")
        .arg("%s\\0")
        .args(hostile.iter().cloned())
        .cwd(scratch);
    let out = run(host, "run printf with hostile arguments", cmd).await;
    let mut want = Vec::new();
    for a in &hostile {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    ensure!(
        host,
        out.success() && out.stdout == want,
        "run must pass every argument byte for byte without a shell (printf: exit code {:?}, stderr {:?})\n got: {:?}\nwant: {:?}",
        out.code,
        out.stderr_text(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want)
    );
    let x = scratch.join("x");
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&x).await).is_none(),
        "an argument was interpreted by a shell: {} exists",
        x.display()
    );

    // Working directory and environment.
    let cmd = Command::from_argv(["sh", "-c", "pwd; printf %s \"$DEPLOY_CONFORMANCE\""])
        .expect("argv")
        .cwd(scratch)
        .env("DEPLOY_CONFORMANCE", "a b 'c' $(d)");
    let out = run(host, "run with cwd and env", cmd).await;
    let text = out.stdout_text();
    let (pwd, env) = text.split_once('\n').unwrap_or((&text, ""));
    let scratch_name = scratch
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ensure!(
        host,
        pwd.ends_with(&scratch_name),
        "cwd not applied: pwd printed {pwd:?}, want {}",
        scratch.display()
    );
    ensure!(
        host,
        env == "a b 'c' $(d)",
        "environment variable not passed verbatim: got {env:?}"
    );
}

async fn run_status_and_streams(host: &dyn Host) {
    let cmd = Command::from_argv(["sh", "-c", "echo out; echo err >&2; exit 3"]).expect("argv");
    let out = run(host, "run a failing command", cmd).await;
    ensure!(
        host,
        out.code == Some(3),
        "exit code 3 expected, got {:?} (signal {:?})",
        out.code,
        out.signal
    );
    ensure!(host, !out.success(), "exit code 3 must not be success");
    ensure!(
        host,
        out.stdout == b"out\n",
        "stdout: got {:?}, want \"out\\n\"",
        out.stdout_text()
    );
    ensure!(
        host,
        out.stderr == b"err\n",
        "stderr: got {:?}, want \"err\\n\"",
        out.stderr_text()
    );

    let cmd = Command::from_argv(["sh", "-c", "kill -TERM $$"]).expect("argv");
    let out = run(host, "run a command killed by a signal", cmd).await;
    ensure!(
        host,
        !out.success(),
        "a command killed by SIGTERM must not be success: {out:?}"
    );
    if let Some(sig) = out.signal {
        ensure!(
            host,
            sig == 15,
            "killed by SIGTERM but signal {sig} reported"
        );
    }

    // 1 MiB through stdin and back through stdout: no deadlock on full pipes, bytes intact.
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let out = run(
        host,
        "run cat with stdin",
        Command::new("cat").stdin(input.clone()),
    )
    .await;
    ensure!(host, out.success(), "cat failed: {}", out.stderr_text());
    ensure!(
        host,
        out.stdout == input,
        "stdin was not fed byte for byte: {} bytes back of {}",
        out.stdout.len(),
        input.len()
    );

    // Without input, standard input is closed: `cat` must end at once.
    let cmd = Command::new("cat").timeout(Duration::from_secs(10));
    match host.run(&cmd).await {
        Ok(out) => ensure!(
            host,
            out.success() && out.stdout.is_empty(),
            "cat without stdin: {out:?}"
        ),
        Err(e) => panic!(
            "host conformance ({}): cat without stdin must see end of file, got {e}",
            host.name()
        ),
    }
}

async fn run_timeout(host: &dyn Host, scratch: &Path) {
    let pidfile = scratch.join("sleeper.pid");
    // `exec`: the pid written is the one of `sleep`, which must be gone after the timeout.
    let cmd = Command::from_argv(["sh", "-c", "echo $$ > \"$1\"; exec sleep 30", "sh"])
        .expect("argv")
        .arg(&pidfile)
        .timeout(Duration::from_secs(1));
    let started = Instant::now();
    let r = host.run(&cmd).await;
    let took = started.elapsed();
    match r {
        Ok(out) => panic!(
            "host conformance ({}): a command running past its timeout returned Ok: {out:?}",
            host.name()
        ),
        Err(e) => {
            ensure!(
                host,
                e.kind() == ErrorKind::Timeout,
                "a timeout must be of kind Timeout, got {:?}: {e}",
                e.kind()
            );
            ensure!(
                host,
                e.to_string().contains("sleep 30"),
                "the timeout error must name the command: {e}"
            );
        }
    }
    ensure!(
        host,
        took < Duration::from_secs(15),
        "the timeout of 1 s returned only after {took:?}"
    );
    let pid = must(
        host,
        "read the pid file of the timed-out command",
        host.read_file(&pidfile).await,
    );
    let pid = String::from_utf8_lossy(&pid).trim().to_owned();
    ensure!(
        host,
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
        "bad pid file content {pid:?}"
    );
    let mut alive = true;
    for _ in 0..50 {
        let out = run(
            host,
            "check the timed-out process",
            Command::new("kill").args(["-0", pid.as_str()]),
        )
        .await;
        if !out.success() {
            alive = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(host, !alive, "the timed-out process {pid} is still running");
}

async fn run_missing_program(host: &dyn Host) {
    let name = "deploy-conformance-no-such-program";
    match host.run(&Command::new(name).arg("x")).await {
        Ok(out) => panic!(
            "host conformance ({}): running a missing program returned Ok: {out:?}",
            host.name()
        ),
        Err(e) => {
            ensure!(
                host,
                e.kind() == ErrorKind::NotFound,
                "a missing program must be NotFound, got {:?}: {e}",
                e.kind()
            );
            ensure!(
                host,
                e.to_string().contains(name),
                "the error must name the missing program: {e}"
            );
        }
    }
}

async fn mode_of(host: &dyn Host, path: &Path) -> String {
    let cmd = Command::from_argv([
        "sh",
        "-c",
        "stat -c %a \"$1\" 2>/dev/null || stat -f %Lp \"$1\"",
        "sh",
    ])
    .expect("argv")
    .arg(path);
    let out = run(host, "stat", cmd).await;
    ensure!(
        host,
        out.success(),
        "stat {} failed: {}",
        path.display(),
        out.stderr_text()
    );
    out.stdout_text().trim().to_owned()
}

async fn names(host: &dyn Host, dir: &Path) -> Vec<String> {
    must(host, "list_dir", host.list_dir(dir).await)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

async fn files(host: &dyn Host, scratch: &Path) {
    let dir = scratch.join("files");
    must(host, "create_dir_all", host.create_dir_all(&dir).await);
    must(
        host,
        "create_dir_all twice",
        host.create_dir_all(&dir).await,
    );
    let f = dir.join("config");

    must(
        host,
        "write_file (create)",
        host.write_file(&f, b"one", Some(0o640)).await,
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&f).await) == b"one",
        "write_file did not create the content"
    );
    ensure!(
        host,
        mode_of(host, &f).await == "640",
        "write_file did not set mode 640"
    );
    must(
        host,
        "write_file (replace)",
        host.write_file(&f, b"two, longer", Some(0o600)).await,
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&f).await) == b"two, longer",
        "write_file did not replace the content"
    );
    ensure!(
        host,
        mode_of(host, &f).await == "600",
        "write_file did not set mode 600 on replace"
    );
    must(
        host,
        "write_file (shorter)",
        host.write_file(&f, b"3", None).await,
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&f).await) == b"3",
        "a shorter write left old bytes"
    );

    // Atomicity: a reader running alongside sees a whole old or a whole new file, never a part.
    let big_a = vec![b'a'; 512 * 1024];
    let big_b = vec![b'b'; 256 * 1024];
    must(host, "write_file", host.write_file(&f, &big_a, None).await);
    let writer = async {
        for i in 0..16 {
            let c = if i % 2 == 0 { &big_b } else { &big_a };
            must(
                host,
                "write_file (concurrent)",
                host.write_file(&f, c, None).await,
            );
        }
    };
    let reader = async {
        let mut seen = 0;
        for _ in 0..64 {
            let got = must(host, "read_file (concurrent)", host.read_file(&f).await);
            ensure!(
                host,
                got == big_a || got == big_b,
                "a reader saw a partial file: {} bytes, first {:?}, last {:?}",
                got.len(),
                got.first(),
                got.last()
            );
            seen += 1;
            tokio::task::yield_now().await;
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    ensure!(host, seen == 64, "reader stopped early");
    ensure!(
        host,
        names(host, &dir).await == ["config"],
        "write_file left temporary files: {:?}",
        names(host, &dir).await
    );

    // A write that cannot succeed leaves nothing behind.
    let missing = dir.join("missing-dir").join("file");
    ensure!(
        host,
        host.write_file(&missing, b"x", None).await.is_err(),
        "write_file into a missing directory must fail"
    );
    ensure!(
        host,
        names(host, &dir).await == ["config"],
        "a failed write_file left files: {:?}",
        names(host, &dir).await
    );

    let e = host
        .read_file(&dir.join("nope"))
        .await
        .expect_err("read_file of a missing file must fail");
    ensure!(
        host,
        e.kind() == ErrorKind::NotFound,
        "read_file of a missing file: kind {:?}, want NotFound",
        e.kind()
    );

    // rename replaces files.
    let other = dir.join("other");
    must(
        host,
        "write_file",
        host.write_file(&other, b"other", None).await,
    );
    must(host, "rename over a file", host.rename(&other, &f).await);
    ensure!(
        host,
        must(host, "read_file", host.read_file(&f).await) == b"other",
        "rename did not replace the file"
    );
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&other).await).is_none(),
        "rename left its source"
    );

    // remove: missing, file, tree.
    must(
        host,
        "remove of a missing path",
        host.remove(&dir.join("never-existed")).await,
    );
    must(host, "remove of a file", host.remove(&f).await);
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&f).await).is_none(),
        "remove left the file"
    );
    let tree = dir.join("tree");
    must(
        host,
        "create_dir_all",
        host.create_dir_all(&tree.join("a/b/c")).await,
    );
    must(
        host,
        "write_file",
        host.write_file(&tree.join("a/b/c/leaf"), b"x", None).await,
    );
    must(
        host,
        "write_file",
        host.write_file(&tree.join("a/top"), b"x", None).await,
    );
    must(host, "remove of a tree", host.remove(&tree).await);
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&tree).await).is_none(),
        "remove left the tree"
    );
}

async fn upload(host: &dyn Host, scratch: &Path) {
    // The source lives on the machine running this suite.
    let local = std::env::temp_dir().join(format!(
        "deploy-conformance-upload-{}",
        crate::local::unique_suffix()
    ));
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(&local, &content).expect("write the local upload source");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Cleanup(local.clone());

    let dest = scratch.join("uploaded.bin");
    must(
        host,
        "upload (create)",
        host.upload(&local, &dest, Some(0o600)).await,
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&dest).await) == content,
        "upload did not copy the content"
    );
    ensure!(
        host,
        mode_of(host, &dest).await == "600",
        "upload did not set mode 600"
    );
    std::fs::write(&local, b"replaced").expect("rewrite the local upload source");
    must(
        host,
        "upload (replace)",
        host.upload(&local, &dest, Some(0o644)).await,
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&dest).await) == b"replaced",
        "upload did not replace"
    );
    ensure!(
        host,
        mode_of(host, &dest).await == "644",
        "upload did not set mode 644"
    );
    let leftovers: Vec<_> = names(host, scratch)
        .await
        .into_iter()
        .filter(|n| n.contains("uploaded.bin") && n != "uploaded.bin")
        .collect();
    ensure!(
        host,
        leftovers.is_empty(),
        "upload left temporary files: {leftovers:?}"
    );
    must(host, "remove", host.remove(&dest).await);
}

async fn links_and_listing(host: &dyn Host, scratch: &Path) {
    let dir = scratch.join("links");
    must(
        host,
        "create_dir_all",
        host.create_dir_all(&dir.join("c")).await,
    );
    must(
        host,
        "write_file",
        host.write_file(&dir.join("b"), b"b", None).await,
    );
    must(
        host,
        "write_file",
        host.write_file(&dir.join("a"), b"a", None).await,
    );
    must(
        host,
        "write_file",
        host.write_file(&dir.join("c/inside"), b"i", None).await,
    );

    // Relative and dangling links are stored as written.
    must(
        host,
        "symlink to a directory",
        host.symlink(Path::new("c"), &dir.join("d")).await,
    );
    must(
        host,
        "symlink dangling",
        host.symlink(Path::new("releases/none"), &dir.join("e"))
            .await,
    );
    ensure!(
        host,
        must(host, "read_link", host.read_link(&dir.join("d")).await) == Some(PathBuf::from("c")),
        "read_link must return the target as written"
    );
    ensure!(
        host,
        must(host, "read_link", host.read_link(&dir.join("e")).await)
            == Some(PathBuf::from("releases/none")),
        "read_link of a dangling link must return its target"
    );
    ensure!(
        host,
        must(
            host,
            "read_link",
            host.read_link(&dir.join("missing")).await
        )
        .is_none(),
        "read_link of a missing link must be None"
    );
    ensure!(
        host,
        host.symlink(Path::new("c"), &dir.join("a")).await.is_err(),
        "symlink must fail when the link path exists"
    );
    ensure!(
        host,
        must(host, "read_file", host.read_file(&dir.join("a")).await) == b"a",
        "a failed symlink changed the file"
    );

    let listing = must(host, "list_dir", host.list_dir(&dir).await);
    let want = vec![
        ("a".to_owned(), FileKind::File),
        ("b".to_owned(), FileKind::File),
        ("c".to_owned(), FileKind::Dir),
        ("d".to_owned(), FileKind::Symlink),
        ("e".to_owned(), FileKind::Symlink),
    ];
    ensure!(
        host,
        listing == want,
        "list_dir must be sorted with kinds not following symlinks: got {listing:?}"
    );

    for (name, kind) in [
        ("a", FileKind::File),
        ("c", FileKind::Dir),
        ("d", FileKind::Symlink),
        ("e", FileKind::Symlink),
    ] {
        let got = must(host, "file_kind", host.file_kind(&dir.join(name)).await);
        ensure!(
            host,
            got == Some(kind),
            "file_kind of {name}: got {got:?}, want {kind:?}"
        );
    }
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&dir.join("zz")).await).is_none(),
        "file_kind of a missing path must be None"
    );

    // The atomic switch of a `current` link: rename a new link over the old one.
    must(
        host,
        "symlink",
        host.symlink(Path::new("b"), &dir.join("d.tmp")).await,
    );
    must(
        host,
        "rename a symlink over a symlink",
        host.rename(&dir.join("d.tmp"), &dir.join("d")).await,
    );
    ensure!(
        host,
        must(host, "read_link", host.read_link(&dir.join("d")).await) == Some(PathBuf::from("b")),
        "rename did not replace the symlink"
    );

    // Removing a symlink to a directory removes the link only.
    must(
        host,
        "symlink",
        host.symlink(Path::new("c"), &dir.join("f")).await,
    );
    must(host, "remove a symlink", host.remove(&dir.join("f")).await);
    ensure!(
        host,
        must(host, "file_kind", host.file_kind(&dir.join("f")).await).is_none(),
        "remove left the symlink"
    );
    ensure!(
        host,
        must(
            host,
            "read_file",
            host.read_file(&dir.join("c/inside")).await
        ) == b"i",
        "remove of a symlink followed it into the directory"
    );
}
