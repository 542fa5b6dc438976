//! Files the engine writes whole (reports, control requests), private to the deploying user.

use std::path::Path;

pub(crate) use crate::fs::sync_dir;

/// Write `body` to `path` whole, readable by its owner only.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    crate::fs::write_atomic(path, body, Some(0o600))
}
