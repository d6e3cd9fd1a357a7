//! Where inferd's socket goes when `--socket` does not say. The daemon binds there and
//! `inferctl` looks there first, so this is one function of its own that both use, rather than
//! a detail of the daemon's options.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The default socket path for this environment.
///
/// Under systemd (`RUNTIME_DIRECTORY` or `INVOCATION_ID` set) it is the unit's runtime
/// directory, `/run/inferd`; otherwise `$XDG_RUNTIME_DIR/inferd.sock`, falling back to a
/// per-user directory in /tmp.
pub fn default_socket_path() -> PathBuf {
    socket_path_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn socket_path_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    const NAME: &str = "inferd.sock";
    if let Some(dirs) = var("RUNTIME_DIRECTORY") {
        // systemd joins several RuntimeDirectory= entries with ':'; ours is the first.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !first.is_empty() {
            return Path::new(&first).join(NAME);
        }
    }
    if var("INVOCATION_ID").is_some() {
        return Path::new("/run/inferd").join(NAME);
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join(NAME);
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/inferd-{uid}")).join(NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            socket_path_from(env(&[("RUNTIME_DIRECTORY", "/run/inferd:/run/other")])),
            PathBuf::from("/run/inferd/inferd.sock")
        );
        assert_eq!(
            socket_path_from(env(&[
                ("INVOCATION_ID", "abc"),
                ("XDG_RUNTIME_DIR", "/run/user/1")
            ])),
            PathBuf::from("/run/inferd/inferd.sock")
        );
        assert_eq!(
            socket_path_from(env(&[("XDG_RUNTIME_DIR", "/run/user/1")])),
            PathBuf::from("/run/user/1/inferd.sock")
        );
        let fallback = socket_path_from(env(&[]));
        assert!(
            fallback.starts_with("/tmp") && fallback.ends_with("inferd.sock"),
            "{fallback:?}"
        );
    }
}
