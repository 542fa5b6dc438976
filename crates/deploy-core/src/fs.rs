//! Files written whole: to a new temporary file beside the destination (created exclusively,
//! so never through a planted link), filled, fsynced, renamed into place, and the directory
//! fsynced. A reader sees the old file or the new one, never a part; a failure leaves the old
//! one and removes the temporary file.

pub use crate::local::unique_suffix;

use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write everything `content` yields to `path` atomically, as described above. `mode` sets the
/// file's permission bits (the file is created 0600 and only then given them); without it the
/// umask decides, as for a plain create.
pub fn write_atomic(path: &Path, mut content: impl Read, mode: Option<u32>) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(if mode.is_some() {
            0o600
        } else {
            0o666
        }))
        .tempfile_in(dir)?;
    if let Some(m) = mode {
        tmp.as_file().set_permissions(Permissions::from_mode(m))?;
    }
    io::copy(&mut content, &mut tmp)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// How much a file or an answer from elsewhere may hold before it is refused, unless the caller
/// says otherwise: 64 MiB.
pub const DEFAULT_MAX_READ: u64 = 64 * 1024 * 1024;

/// Read all of `source`, refusing more than `limit` bytes with an error of kind
/// [`io::ErrorKind::FileTooLarge`] that says the limit (and without reading further than one
/// byte past it).
pub fn read_limited(source: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    source.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than the limit of {}", bytes(limit)),
        ));
    }
    Ok(out)
}

/// `n` bytes in the largest binary unit that keeps it whole or readable (`16 MiB`, `1.5 KiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Create `dir` (and its parents) if needed and make it private to its owner (0700): a state
/// directory holds journals and reports that say what was deployed where, and requests that
/// steer a run.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// Options that open (or create) a file readable by its owner only, never through a symbolic
/// link at its path (`O_NOFOLLOW`): the engine's journal and lock.
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    o
}

/// fsync a directory, so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, &b"new"[..], Some(0o600)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn reads_are_limited_and_the_limit_is_said() {
        assert_eq!(read_limited(&b"12345"[..], 5).unwrap(), b"12345");
        let e = read_limited(&b"123456"[..], 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "larger than the limit of 5 bytes");
        assert_eq!(bytes(16 * 1024 * 1024), "16 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        // An endless source is not read past the limit.
        let e = read_limited(io::repeat(0), 1024).unwrap_err();
        assert!(e.to_string().contains("1 KiB"), "{e}");
    }

    #[test]
    fn a_private_dir_is_0700_even_when_it_existed_wider() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state/runs");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_failed_read_leaves_the_old_file_and_no_temporary_file() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "old").unwrap();
        assert!(write_atomic(&p, Broken, None).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
