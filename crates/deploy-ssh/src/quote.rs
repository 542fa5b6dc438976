//! The one audited place where an argument vector becomes the single string SSH carries.
//!
//! SSH has no argv: the `exec` request carries one string, which the server hands to the user's
//! login shell as `$SHELL -c STRING`. Every argument is therefore quoted for a POSIX shell (sh,
//! dash, bash, ksh, zsh) with single quotes, the only quoting in which no character is special:
//! the argument is wrapped in `'…'`, and each `'` inside it becomes `'\''` (close the quote, an
//! escaped quote, open again). Bytes are copied as they are, so non-UTF-8 arguments survive. The
//! one byte that cannot reach a program as part of an argument is NUL (C strings end there): it
//! is refused, as is an environment variable name that is not a shell identifier.
//!
//! Environment values are not arguments: the string is the remote shell's command line, which
//! every user of the host can read, so values (passwords among them) travel on the channel's
//! standard input and the string holds only their names ([`command_line`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use deploy_core::{Command, Error, ErrorKind, Result};

/// Quote one argument for a POSIX shell: the shell turns the result back into exactly `arg`
/// (`it's` becomes `'it'\''s'`, the empty argument `''`).
///
/// `arg` must not contain NUL: no program can receive one ([`command_line`] refuses such
/// arguments with `InvalidInput` before anything is sent).
pub(crate) fn shell_quote(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The first line the wrapper writes to standard error: its pid, which is also the process
/// group of the command (sshd starts each session in a new session, and `exec` keeps the pid).
pub(crate) const PID_HEADER: &[u8] = b"deploy-ssh-wrapper pid ";
/// What the wrapper writes to standard error when the program does not exist (exit 127).
pub(crate) const NOT_FOUND_MARK: &[u8] = b"deploy-ssh-wrapper: program not found\n";
/// What the wrapper writes to standard error when the working directory is missing (exit 127).
pub(crate) const NO_CWD_MARK: &[u8] = b"deploy-ssh-wrapper: no working directory\n";

fn is_identifier(name: &[u8]) -> bool {
    matches!(name.first(), Some(b) if b.is_ascii_alphabetic() || *b == b'_')
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// The operation and object a refusal names: the caller's (`run `…`` on a host, `write file
/// PATH` on a host), since quoting is a step of it.
struct Refuse<'a> {
    operation: &'a str,
    object: &'a str,
}

impl Refuse<'_> {
    fn because(&self, problem: String) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            self.operation.to_owned(),
            self.object.to_owned(),
            problem,
        )
    }

    fn nul(&self, what: &str, s: &OsStr) -> Result<()> {
        if s.as_bytes().contains(&0) {
            return Err(self.because(format!(
                "{what} {s:?} contains a NUL byte, which no program can receive"
            )));
        }
        Ok(())
    }
}

/// What the wrapper writes to standard error when it cannot set an environment variable (a
/// name the remote shell keeps read-only, such as bash's `UID`), followed by the name (exit 127).
pub(crate) const ENV_MARK: &[u8] = b"deploy-ssh-wrapper: cannot set environment variable ";

/// The line that reads one environment value from standard input into the next positional
/// parameter; standard input ending early is a connection that dropped.
fn env_input_read(s: &mut Vec<u8>) {
    s.extend_from_slice(
        b"IFS= LC_ALL=C read -r deploy_ssh_value && set -- \"$@\" \"$deploy_ssh_value\" || exit 127\n",
    );
}

/// What goes over the SSH channel for one command: the `exec` string, which the remote host
/// shows in its process list, and the bytes sent on standard input before the command's own,
/// which it does not.
pub(crate) struct Wire {
    /// The string sent in the `exec` request: names, never values.
    pub(crate) line: Vec<u8>,
    /// The environment values, one line each, in the order the line reads them.
    pub(crate) env_input: Vec<u8>,
}

/// The string sent in the SSH `exec` request for `command`, and the environment values it reads
/// from standard input.
///
/// It reports the shell's pid on standard error (first line, removed again by the reader), goes
/// to the working directory, reads each environment value from standard input
/// (`IFS= LC_ALL=C read -r`) and exports it under its name, checks that the program exists (so that a missing
/// program is told apart from a program exiting 127), and `exec`s the program with the quoted
/// arguments — so the process that ends is the program itself, and its exit status or signal is
/// what the server reports. Every piece of input in the line is quoted by [`shell_quote`];
/// nothing from the command is ever placed in the string unquoted.
///
/// **Environment values are never in the line**: the line is the remote login shell's argument
/// (`$SHELL -c LINE`), which every user of the host can read in `ps` or `/proc/PID/cmdline`.
/// The values travel on the channel's standard input instead, one per line, ahead of the
/// command's own input. A POSIX shell's `read` takes a pipe one byte at a time, so it consumes
/// exactly the value lines and leaves the rest of standard input to the command. A value cannot
/// hold a newline (it ends the line) or NUL (no program can receive one): such a command is
/// refused, naming the variable but not its value. A command that cannot be sent is an
/// `InvalidInput` error of `operation` on `object`.
pub(crate) fn command_line(command: &Command, operation: &str, object: &str) -> Result<Wire> {
    let refuse = Refuse { operation, object };
    refuse.nul("the program", &command.program)?;
    if command.program.is_empty() {
        return Err(refuse.because("the program name is empty".into()));
    }
    for a in &command.args {
        refuse.nul("argument", a)?;
    }
    for (k, v) in &command.env {
        if !is_identifier(k.as_bytes()) {
            return Err(refuse.because(format!(
                "environment variable name {k:?} is not a shell identifier"
            )));
        }
        // The name only: the value may be a password.
        let name = k.to_string_lossy();
        if v.as_bytes().contains(&0) {
            return Err(refuse.because(format!(
                "the value of environment variable {name} contains a NUL byte, which no \
                 program can receive (the value is not shown)"
            )));
        }
        if v.as_bytes().contains(&b'\n') {
            return Err(refuse.because(format!(
                "the value of environment variable {name} contains a newline, which cannot be \
                 sent: values travel on standard input, one per line (the value is not shown)"
            )));
        }
    }
    let mut s: Vec<u8> = Vec::with_capacity(256);
    s.extend_from_slice(b"printf '");
    s.extend_from_slice(PID_HEADER);
    s.extend_from_slice(b"%s\\n' \"$$\" >&2 || exit 127\n");
    if let Some(cwd) = &command.cwd {
        refuse.nul("the working directory", cwd.as_os_str())?;
        s.extend_from_slice(b"cd -- ");
        s.extend_from_slice(&shell_quote(cwd.as_os_str().as_bytes()));
        s.extend_from_slice(b" 2>/dev/null || { printf '%s\\n' '");
        s.extend_from_slice(&NO_CWD_MARK[..NO_CWD_MARK.len() - 1]);
        s.extend_from_slice(b"' >&2; exit 127; }\n");
    }
    let mut env_input = Vec::new();
    if !command.env.is_empty() {
        // First every value is read, as bytes (`LC_ALL=C`: bash's `read` in a UTF-8 locale
        // takes the newline after a stray lead byte as part of a character and reads on), with
        // nothing split or stripped (`IFS=`), into the positional parameters: no named
        // variable is set while values are still being read, so no name (IFS, LC_ALL, the
        // scratch variable) can change how the others are read. Then each is exported.
        s.extend_from_slice(b"set --\n");
        for _ in &command.env {
            env_input_read(&mut s);
        }
        s.extend_from_slice(b"unset deploy_ssh_value\n");
        for (i, (k, v)) in command.env.iter().enumerate() {
            // `k` is an identifier (checked above), so it needs no quoting.
            let k = k.as_bytes();
            s.extend_from_slice(b"export ");
            s.extend_from_slice(k);
            s.extend_from_slice(format!("=\"${{{}}}\"", i + 1).as_bytes());
            s.extend_from_slice(b" || { printf '%s\\n' '");
            s.extend_from_slice(ENV_MARK);
            s.extend_from_slice(k);
            s.extend_from_slice(b"' >&2; exit 127; }\n");
            env_input.extend_from_slice(v.as_bytes());
            env_input.push(b'\n');
        }
    }
    let program = shell_quote(command.program.as_bytes());
    s.extend_from_slice(b"command -v -- ");
    s.extend_from_slice(&program);
    s.extend_from_slice(b" >/dev/null 2>&1 || { printf '%s\\n' '");
    s.extend_from_slice(&NOT_FOUND_MARK[..NOT_FOUND_MARK.len() - 1]);
    s.extend_from_slice(b"' >&2; exit 127; }\n");
    s.extend_from_slice(b"exec ");
    s.extend_from_slice(&program);
    for a in &command.args {
        s.push(b' ');
        s.extend_from_slice(&shell_quote(a.as_bytes()));
    }
    s.push(b'\n');
    Ok(Wire { line: s, env_input })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unquote a string made only of `shell_quote` output: the inverse, for the property test.
    fn unquote(q: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < q.len() {
            match q[i] {
                b'\'' => {
                    let end = q[i + 1..].iter().position(|&b| b == b'\'')? + i + 1;
                    out.extend_from_slice(&q[i + 1..end]);
                    i = end + 1;
                }
                b'\\' if i + 1 < q.len() => {
                    out.push(q[i + 1]);
                    i += 2;
                }
                _ => return None,
            }
        }
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn quoting_round_trips(arg in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let q = shell_quote(&arg);
            proptest::prop_assert_eq!(unquote(&q), Some(arg));
        }
    }

    /// The shells a server's login shell may be, that are installed here.
    fn shells() -> Vec<&'static str> {
        ["/usr/bin/dash", "/usr/bin/bash"]
            .into_iter()
            .filter(|s| std::path::Path::new(s).exists())
            .collect()
    }

    /// Run `wire` as sshd would: `SHELL -c LINE`, the environment values and then `input` on
    /// standard input (a pipe, as sshd's).
    fn run_in(shell: &str, wire: &Wire, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new(shell)
            .arg("-c")
            .arg(OsStr::from_bytes(&wire.line))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut all = wire.env_input.clone();
        all.extend_from_slice(input);
        // A command that does not read its input closes the pipe: not an error here.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&all);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

        /// The same line works for the login shells a server may have: dash and bash (the
        /// remote path is tested through sshd in tests/host.rs).
        #[test]
        fn dash_and_bash_receive_every_byte(
            args in proptest::collection::vec(
                proptest::collection::vec(1u8..=255, 0..16), 1..5)
        ) {
            use std::os::unix::ffi::OsStringExt;
            let cmd = Command::new("printf")
                .arg("%s\\0")
                .args(args.iter().map(|a| std::ffi::OsString::from_vec(a.clone())));
            let wire = command_line(&cmd, "run", "here").unwrap();
            proptest::prop_assert!(wire.env_input.is_empty());
            let mut want = Vec::new();
            for a in &args {
                want.extend_from_slice(a);
                want.push(0);
            }
            for shell in shells() {
                let out = std::process::Command::new(shell)
                    .arg("-c")
                    .arg(OsStr::from_bytes(&wire.line))
                    .output()
                    .unwrap();
                proptest::prop_assert!(out.status.success(), "{shell}: {:?}", out);
                proptest::prop_assert_eq!(&out.stdout, &want, "{}", shell);
            }
        }

        /// Environment values (every byte but NUL and newline) arrive exactly through standard
        /// input, never in the line, and the command's own input follows them untouched; names
        /// that change how a shell reads (IFS, LC_ALL, the wrapper's scratch variable) too.
        #[test]
        fn env_values_travel_on_stdin_and_the_input_follows(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::strategy::Strategy::prop_map(1u8..=254, |b| if b == b'\n' { 255 } else { b }),
                    0..16),
                1..4),
            special in proptest::option::of((
                proptest::sample::select(vec!["IFS", "LC_ALL", "deploy_ssh_value"]),
                proptest::collection::vec(proptest::sample::select(b" \t:,x\\\r\xc2".to_vec()), 0..4),
            )),
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            use proptest::prelude::*;
            use std::os::unix::ffi::OsStringExt;
            let mut env: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some((name, value)) = special {
                // First, so that it would disturb the reading of every other value.
                let value = if name == "LC_ALL" { b"C.UTF-8".to_vec() } else { value };
                env.push((name.to_owned(), value));
            }
            for (i, v) in values.iter().enumerate() {
                env.push((format!("DEPLOY_V{i}"), v.clone()));
            }
            // The script prints each value NUL-terminated, then copies standard input. (Not
            // IFS: a shell sets its own at start, whatever its environment says.)
            let printed: Vec<&(String, Vec<u8>)> = env.iter().filter(|(n, _)| n != "IFS").collect();
            let mut script = String::new();
            for (n, _) in &printed {
                script.push_str(&format!("printf '%s\\0' \"${n}\"; "));
            }
            script.push_str("exec cat");
            let mut cmd = Command::new("sh").arg("-c").arg(&script);
            for (n, v) in &env {
                cmd = cmd.env(n, std::ffi::OsString::from_vec(v.clone()));
            }
            let wire = command_line(&cmd, "run", "here").unwrap();
            for (_, v) in env.iter().filter(|(_, v)| v.len() >= 3) {
                prop_assert!(!wire.line.windows(v.len()).any(|w| w == v.as_slice()), "a value is in the line");
            }
            let mut want = Vec::new();
            for (_, v) in &printed {
                want.extend_from_slice(v);
                want.push(0);
            }
            want.extend_from_slice(&input);
            for shell in shells() {
                let out = run_in(shell, &wire, &input);
                prop_assert!(out.status.success(), "{}: {:?}", shell, out);
                prop_assert_eq!(&out.stdout, &want, "{}", shell);
            }
        }
    }

    #[test]
    fn nul_and_bad_env_names_are_refused() {
        let c = Command::new("printf").arg(OsStr::from_bytes(b"a\0b"));
        let e = command_line(&c, "run", "here").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NUL"), "{e}");
        let c = Command::new("true").env("A;B", "x");
        let e = command_line(&c, "run", "here").err().unwrap();
        assert!(e.to_string().contains("not a shell identifier"), "{e}");
        assert!(command_line(&Command::new(""), "run", "here").is_err());
    }

    /// A value with a newline or NUL cannot be sent: the error names the variable, never the
    /// value.
    #[test]
    fn values_with_a_newline_or_nul_are_refused_without_showing_them() {
        for (value, what) in [
            (&b"hunter2\nrest"[..], "newline"),
            (b"hunter2\0rest", "NUL"),
        ] {
            let c = Command::new("psql").env("PGPASSWORD", OsStr::from_bytes(value));
            let e = command_line(&c, "run `psql`", "on db-1").err().unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let msg = format!("{e} {e:?}");
            assert!(msg.contains("PGPASSWORD") && msg.contains(what), "{msg}");
            assert!(!msg.contains("hunter2") && !msg.contains("rest"), "{msg}");
        }
    }

    /// The line holds the names and a `read` for each; the values are only on standard input.
    #[test]
    fn the_line_names_variables_and_stdin_holds_their_values() {
        let c = Command::new("psql")
            .env("PGPASSWORD", "s3cret 'x'")
            .env("PGUSER", "appuser_7");
        let wire = command_line(&c, "run", "here").unwrap();
        let line = String::from_utf8(wire.line).unwrap();
        assert!(line.contains("read -r deploy_ssh_value"), "{line}");
        assert!(line.contains("export PGPASSWORD=\"${1}\""), "{line}");
        assert!(line.contains("export PGUSER=\"${2}\""), "{line}");
        assert!(
            !line.contains("s3cret") && !line.contains("appuser_7"),
            "{line}"
        );
        assert_eq!(wire.env_input, b"s3cret 'x'\nappuser_7\n");
    }

    #[test]
    fn single_quotes_are_closed_escaped_and_reopened() {
        assert_eq!(shell_quote(b"it's $(here)"), b"'it'\\''s $(here)'".to_vec());
        assert_eq!(shell_quote(b""), b"''".to_vec());
    }

    #[test]
    fn the_program_and_arguments_are_quoted() {
        let c = Command::new("printf").arg("%s").arg("$(reboot)");
        let line = String::from_utf8(command_line(&c, "run", "here").unwrap().line).unwrap();
        assert!(line.ends_with("exec 'printf' '%s' '$(reboot)'\n"), "{line}");
    }
}
