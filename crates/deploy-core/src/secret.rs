//! Secrets read from where a plan file says they are: an environment variable (`*_env`) or a
//! file (`*_file`). Every adapter reads its secrets through these two functions, so the rules
//! are the same everywhere: a secret file is a regular file readable by its owner only, of at
//! most [`MAX_FILE_SIZE`], UTF-8 and not empty; a reason never quotes the secret.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

/// The most a secret file may hold: a token, a password or a URL, not a document.
pub const MAX_FILE_SIZE: u64 = 64 * 1024;

/// The secret in the environment variable `var`; why not, naming the variable.
pub fn from_env(var: &str) -> Result<SecretString, String> {
    match std::env::var(var) {
        Ok(v) if v.is_empty() => Err(format!("environment variable {var} is empty")),
        Ok(v) => Ok(SecretString::from(v)),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("environment variable {var} is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable {var} is not valid UTF-8"))
        }
    }
}

/// The secret in the file at `path`, without one trailing line end; why not, naming the file
/// (never its content). A file group or others may read is refused, as OpenSSH refuses such a
/// key file.
pub fn from_file(path: &Path) -> Result<SecretString, String> {
    let fail = |why: String| format!("{}: {why}", path.display());
    let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it ({e})")))?;
    let meta = f
        .metadata()
        .map_err(|e| fail(format!("cannot inspect it ({e})")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "its mode {mode:04o} lets group or others read it; make it readable by its owner \
             only (chmod 600)"
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read it ({e})")))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(fail(format!(
            "larger than the limit of {} for a secret file",
            crate::fs::bytes(MAX_FILE_SIZE)
        )));
    }
    let text = SecretString::from(
        String::from_utf8(bytes).map_err(|_| fail("it is not UTF-8 text".to_owned()))?,
    );
    let s = text.expose_secret();
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    Ok(SecretString::from(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_read_and_a_shared_one_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cr3t-token\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(from_file(&p).unwrap().expose_secret(), "s3cr3t-token");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = from_file(&p).unwrap_err();
        assert!(e.contains("mode 0644 lets group or others read it"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(from_file(&p).unwrap_err().ends_with("it is empty"));
        let e = from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(
            from_env("DEPLOY_NO_SUCH_VARIABLE_42").unwrap_err(),
            "environment variable DEPLOY_NO_SUCH_VARIABLE_42 is not set"
        );
    }
}
