//! Certificates made at test time, for the web config's tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A certificate and its key, as PEM files.
pub(crate) struct Pair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Writes a new self-signed certificate for `localhost` and its key as `NAME.crt` and
/// `NAME.key` in `dir`.
pub(crate) fn write_pair(dir: &Path, name: &str) -> Pair {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Pair { cert, key }
}

/// Polls `done` for up to 10 s.
pub(crate) fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}
