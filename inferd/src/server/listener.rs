//! Binding the Unix socket. All of it happens here, so that socket activation (LISTEN_FDS)
//! can be added in one place.

use std::fs::{DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::{Error, Result};

/// Socket file mode: the owner and its group (the robots' group) may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Binds `path`, creating its directory if needed and replacing a stale socket file left by
/// a previous run. A live socket (one a server still answers on) or a non-socket file at the
/// path is an error, never deleted.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(Error::io(dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Config(format!(
                    "{} is in use by a running server; stop it or choose another --socket",
                    path.display()
                )));
            }
            log::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(Error::io(path))?;
        }
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source: e,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(Error::io(path))?;
    std::fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE)).map_err(Error::io(path))?;
    listener.set_nonblocking(true).map_err(Error::io(path))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_0660_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/inferd.sock");
        let _l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
    }

    #[test]
    fn replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let live = bind(&path).unwrap();
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("in use by a running server"), "{err}");
        drop(live);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
