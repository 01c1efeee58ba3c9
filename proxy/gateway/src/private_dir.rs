//! The upgrade socket's directory: private to the user the proxy runs as. Whoever can connect to
//! the socket during an upgrade is handed the listening sockets, so it must not sit in a
//! directory others can write to (a shared `/tmp` lets anyone plant a socket there first).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `$TMPDIR/gateway-<uid>/upgrade.sock`: one private directory per user.
pub fn default_upgrade_socket() -> PathBuf {
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir()
        .join(format!("gateway-{uid}"))
        .join("upgrade.sock")
}

/// Creates `dir` with mode 0700 if it is missing; refuses one that another user owns or that
/// others may write to.
pub fn ensure_private(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    let metadata = std::fs::symlink_metadata(dir)?;
    let own_uid = std::fs::metadata("/proc/self")?.uid();
    if !metadata.is_dir() || metadata.uid() != own_uid {
        return Err(io::Error::other(format!(
            "{} is not a directory of this user",
            dir.display()
        )));
    }
    if metadata.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is writable by other users (mode {:o}); use a private directory (0700)",
            dir.display(),
            metadata.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created_private_and_a_shared_one_refused() {
        let base = tempfile_dir();
        let private = base.join("gateway");
        ensure_private(&private).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = ensure_private(&private).unwrap_err().to_string();
        assert!(refused.contains("writable by other users"), "{refused}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_default_socket_is_in_a_per_user_directory() {
        let socket = default_upgrade_socket();
        let dir = socket
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(dir.starts_with("gateway-"), "{dir}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("private-dir-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        dir
    }
}
