//! Files flowtrace creates on the user's word (`--write`, `--log-file`): as root, on someone
//! else's host, so never through a link and never readable by others.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// Creates a file only root may read (a recording, a log). flowtrace runs as root and writes
/// packet contents, so: never
/// through a symbolic link (the last component is checked, then opened with `O_NOFOLLOW` and
/// `O_EXCL`, so a link raced in between fails too), and never into someone else's file: an
/// existing regular file is replaced (unlinked, then created anew), not truncated in place, so
/// the new one is ours with mode 0600 whatever the old one's mode or owner was. A rotated name
/// that another user created in advance is replaced the same way, or refused if it is a link.
pub fn create_private(path: &Path) -> io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link, and flowtrace does not write through links",
            ))
        }
        Ok(m) if m.is_file() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it exists and is not a regular file",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask can only have taken bits away; make it exactly 0600.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}
