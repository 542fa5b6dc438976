//! The one audited place where an argument vector becomes the single string SSH carries.
//!
//! SSH has no argv: the `exec` request carries one string, which the server hands to the user's
//! login shell as `$SHELL -c STRING`. Every argument is therefore quoted for a POSIX shell (sh,
//! dash, bash, ksh, zsh) with single quotes, the only quoting in which no character is special:
//! the argument is wrapped in `'…'`, and each `'` inside it becomes `'\''` (close the quote, an
//! escaped quote, open again). Bytes are copied as they are, so non-UTF-8 arguments survive. The
//! one byte that cannot reach a program as part of an argument is NUL (C strings end there): it
//! is refused, as is an environment variable name that is not a shell identifier.

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

/// The string sent in the SSH `exec` request for `command`.
///
/// It reports the shell's pid on standard error (first line, removed again by the reader), goes
/// to the working directory, exports the environment, checks that the program exists (so that a
/// missing program is told apart from a program exiting 127), and `exec`s the program with the
/// quoted arguments — so the process that ends is the program itself, and its exit status or
/// signal is what the server reports. Every piece of input is quoted by [`shell_quote`]; nothing
/// from the command is ever placed in the string unquoted. A command that cannot be sent is an
/// `InvalidInput` error of `operation` on `object`.
pub(crate) fn command_line(command: &Command, operation: &str, object: &str) -> Result<Vec<u8>> {
    let refuse = Refuse { operation, object };
    refuse.nul("the program", &command.program)?;
    if command.program.is_empty() {
        return Err(refuse.because("the program name is empty".into()));
    }
    for a in &command.args {
        refuse.nul("argument", a)?;
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
    for (k, v) in &command.env {
        if !is_identifier(k.as_bytes()) {
            return Err(refuse.because(format!(
                "environment variable name {k:?} is not a shell identifier"
            )));
        }
        refuse.nul("the value of environment variable", v)?;
        // `k` is an identifier (checked above), so it needs no quoting.
        s.extend_from_slice(b"export ");
        s.extend_from_slice(k.as_bytes());
        s.push(b'=');
        s.extend_from_slice(&shell_quote(v.as_bytes()));
        s.push(b'\n');
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
    Ok(s)
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
            let line = command_line(&cmd, "run", "here").unwrap();
            let mut want = Vec::new();
            for a in &args {
                want.extend_from_slice(a);
                want.push(0);
            }
            for shell in ["/usr/bin/dash", "/usr/bin/bash"] {
                if !std::path::Path::new(shell).exists() {
                    continue;
                }
                let out = std::process::Command::new(shell)
                    .arg("-c")
                    .arg(OsStr::from_bytes(&line))
                    .output()
                    .unwrap();
                proptest::prop_assert!(out.status.success(), "{shell}: {:?}", out);
                proptest::prop_assert_eq!(&out.stdout, &want, "{}", shell);
            }
        }
    }

    #[test]
    fn nul_and_bad_env_names_are_refused() {
        let c = Command::new("printf").arg(OsStr::from_bytes(b"a\0b"));
        let e = command_line(&c, "run", "here").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NUL"), "{e}");
        let c = Command::new("true").env("A;B", "x");
        let e = command_line(&c, "run", "here").unwrap_err();
        assert!(e.to_string().contains("not a shell identifier"), "{e}");
        assert!(command_line(&Command::new(""), "run", "here").is_err());
    }

    #[test]
    fn single_quotes_are_closed_escaped_and_reopened() {
        assert_eq!(shell_quote(b"it's $(here)"), b"'it'\\''s $(here)'".to_vec());
        assert_eq!(shell_quote(b""), b"''".to_vec());
    }

    #[test]
    fn the_program_and_arguments_are_quoted() {
        let c = Command::new("printf").arg("%s").arg("$(reboot)");
        let line = String::from_utf8(command_line(&c, "run", "here").unwrap()).unwrap();
        assert!(line.ends_with("exec 'printf' '%s' '$(reboot)'\n"), "{line}");
    }
}
