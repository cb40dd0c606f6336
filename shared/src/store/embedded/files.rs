//! Owner-only files and directories for the embedded adapters: the data
//! directory is kept at mode 0700 and the files in it at 0600 (the database, its
//! WAL and shared-memory files, blobs, key files), set explicitly so that the
//! process's umask does not decide. Elsewhere than Unix these are plain
//! creates.

use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and its parents) when absent and sets it to mode 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Creates `path` empty when absent, and sets it to mode 0600.
pub fn private_file(path: &Path) -> io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    opts.mode(0o600);
    drop(opts.open(path)?);
    restrict(path)
}

/// Sets an existing file to mode 0600 (nothing when it does not exist).
pub fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => other?,
    }
    Ok(())
}

/// Writes a new file (failing with `AlreadyExists` if there is one) that only
/// its owner may read.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts.open(path)?;
    restrict(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Refuses a file that anyone but its owner may read or write.
pub fn check_private(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "mode {:o} lets others read it; run chmod 600 on it",
                    mode & 0o777
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Options for a blob's temp file: owner-only from its creation.
pub fn private_create() -> tokio::fs::OpenOptions {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts
}
