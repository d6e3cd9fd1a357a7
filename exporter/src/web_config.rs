//! `--web.config.file`: TLS, basic auth and response headers, in the file format of the
//! Prometheus exporter-toolkit (`docs/web-configuration.md` there), so that one file and one
//! scrape config serve this exporter as they serve node_exporter.
//!
//! The file is strict: an unknown key, or a key of exporter-toolkit's format that this exporter
//! cannot honour (`rate_limit`, `http2: true`, unverified client certificates, ...), is an
//! error naming the key, never silently ignored, since a security setting that is quietly not
//! applied is worse than none.
//!
//! [`WebConfigFile`] watches the file and the certificate, key and CA files it names: a change
//! to any of them is picked up by the next connection or request (at most a second later), as
//! exporter-toolkit re-reads its file, so that a renewed certificate needs no restart. A change
//! that does not load is logged and the previous configuration stays in force.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::basic_auth::BasicAuth;
use crate::{tls, Error, Result};

/// How often, at most, a connection or request looks at the files for a change: often enough
/// that a renewed certificate is served within a second, rarely enough that a scrape never
/// pays for the `stat` calls.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The headers `http_server_config.headers` may set, with the values each may take (`None`:
/// any), exactly exporter-toolkit's list (`extraHTTPHeaders` in its `web/handler.go`).
const EXTRA_HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// The file as written: every key of exporter-toolkit's format is known here, so that one this
/// exporter cannot honour is refused by name rather than as a typo.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    #[serde(default, deserialize_with = "unique_keys")]
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

/// `tls_server_config`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) client_ca: Option<String>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) client_auth_type: Option<String>,
    pub(crate) client_ca_file: Option<PathBuf>,
    pub(crate) client_allowed_sans: Option<Vec<String>>,
    pub(crate) min_version: Option<String>,
    pub(crate) max_version: Option<String>,
    pub(crate) cipher_suites: Option<Vec<String>>,
    pub(crate) prefer_server_cipher_suites: Option<bool>,
    pub(crate) curve_preferences: Option<Vec<String>>,
}

/// `http_server_config`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default, deserialize_with = "unique_keys")]
    headers: Option<BTreeMap<String, String>>,
}

/// A mapping in which a key given twice is an error, as in exporter-toolkit's strict YAML
/// (serde would keep the last, so that one user's second entry silently replaced the first).
fn unique_keys<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping of strings to strings")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
                out.insert(key, value);
            }
            Ok(Some(out))
        }
    }
    deserializer.deserialize_option(Unique)
}

/// What is wrong with one key of the file: the key's path (`tls_server_config.key_file`) and
/// why.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) key: String,
    pub(crate) message: String,
}

impl Fault {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One loaded, checked version of the file.
pub struct WebConfig {
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: BasicAuth,
    headers: HeaderMap,
    /// The file itself and the files it names, with what `stat` said of each just before they
    /// were read: a change to any of them is a new version.
    watched: Vec<(PathBuf, Option<Stamp>)>,
}

/// What tells one version of a file from the next: a renewed certificate written in place
/// changes its mtime or size; one renamed over the old (certbot, Kubernetes secrets) changes
/// its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // Follows symbolic links: what changes on a rotation is the file a link points to.
    std::fs::metadata(path).ok().map(|m| Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_s: m.mtime(),
        mtime_ns: m.mtime_nsec(),
    })
}

impl WebConfig {
    /// Reads and checks the file at `path`. `serving_tls` is whether the running server speaks
    /// TLS, for a reload (`None` at start): a server cannot switch between HTTP and HTTPS.
    fn load(path: &Path, serving_tls: Option<bool>) -> Result<WebConfig> {
        let fail = |message: String| Error::WebConfig {
            path: path.to_owned(),
            message,
        };
        let stamped = (path.to_owned(), stamp(path));
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        // An empty file (or one of comments only) is a valid config that sets nothing.
        let raw: Option<RawWebConfig> =
            serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let raw = raw.unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = WebConfig::check(raw, dir, stamped)
            .map_err(|f| fail(format!("{}: {}", f.key, f.message)))?;
        match serving_tls {
            Some(tls) if tls != config.tls.is_some() => Err(fail(format!(
                "tls_server_config was {}: restart the exporter to switch between HTTP and HTTPS",
                if tls { "removed" } else { "added" }
            ))),
            _ => Ok(config),
        }
    }

    fn check(
        raw: RawWebConfig,
        dir: &Path,
        config_file: (PathBuf, Option<Stamp>),
    ) -> Result<WebConfig, Fault> {
        let mut watched = vec![config_file];
        if raw.rate_limit.is_some() {
            return Err(Fault::new(
                "rate_limit",
                "not supported by this exporter (--max-connections bounds its connections); \
                 remove it",
            ));
        }
        let http = raw.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            return Err(Fault::new(
                "http_server_config.http2",
                "this exporter serves HTTP/1.1 only; remove the key or set it to false",
            ));
        }
        let headers = check_headers(http.headers.unwrap_or_default())?;
        let auth = BasicAuth::new(raw.basic_auth_users.unwrap_or_default())?;
        let tls = raw
            .tls_server_config
            .map(|t| {
                let (config, files) = tls::server_config(&t, dir)?;
                watched.extend(files.into_iter().map(|f| {
                    let s = stamp(&f);
                    (f, s)
                }));
                Ok::<_, Fault>(Arc::new(config))
            })
            .transpose()?;
        Ok(WebConfig {
            tls,
            auth,
            headers,
            watched,
        })
    }

    /// The TLS configuration, if the exporter serves HTTPS.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// The users allowed in, if any are set.
    pub fn auth(&self) -> &BasicAuth {
        &self.auth
    }

    /// The headers every response carries (`http_server_config.headers`).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether a file it was read from has changed since.
    fn changed(&self) -> bool {
        self.watched.iter().any(|(path, was)| stamp(path) != *was)
    }

    /// What `stat` says of its files now.
    fn stamps_now(&self) -> Vec<Option<Stamp>> {
        self.watched.iter().map(|(path, _)| stamp(path)).collect()
    }
}

/// `http_server_config.headers`: only exporter-toolkit's names, and for those with a fixed set
/// of values, one of them.
fn check_headers(headers: BTreeMap<String, String>) -> Result<HeaderMap, Fault> {
    const KEY: &str = "http_server_config.headers";
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = EXTRA_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(Fault::new(
                KEY,
                format!("{name:?} cannot be set; the headers that can: {names:?}"),
            ));
        };
        if let Some(allowed) = allowed.filter(|a| !a.contains(&value.as_str())) {
            return Err(Fault::new(
                KEY,
                format!("{name}: {value:?} is not one of {allowed:?}"),
            ));
        }
        if value.is_empty() {
            // exporter-toolkit: "Unset if blank".
            continue;
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| Fault::new(KEY, format!("{name}: {value:?} is not a header value")))?;
        // exporter-toolkit's spelling; a header name is the same in any case.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Fault::new(KEY, format!("{name:?} is not a header name")))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// The `--web.config.file` in force, re-read when it or a file it names changes.
pub struct WebConfigFile {
    path: PathBuf,
    serving_tls: bool,
    current: ArcSwap<WebConfig>,
    /// The stamps of a change that failed to load, so that it is tried (and logged) once, not
    /// at every connection.
    failed: Mutex<Option<Vec<Option<Stamp>>>>,
    /// When the files may next be looked at, in milliseconds since `epoch`.
    next_check_ms: AtomicU64,
    epoch: Instant,
}

impl WebConfigFile {
    /// Reads and checks the file at `path`; a fault is an [`Error::WebConfig`] naming the key.
    pub fn load(path: impl Into<PathBuf>) -> Result<WebConfigFile> {
        let path = path.into();
        let config = WebConfig::load(&path, None)?;
        Ok(WebConfigFile {
            serving_tls: config.tls.is_some(),
            path,
            current: ArcSwap::from_pointee(config),
            failed: Mutex::new(None),
            next_check_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the server speaks TLS (fixed at start).
    pub fn serves_tls(&self) -> bool {
        self.serving_tls
    }

    /// The configuration in force, after loading the files anew if one has changed (looked at
    /// at most once per [`RELOAD_CHECK_INTERVAL`]).
    pub fn current(&self) -> Arc<WebConfig> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_check_ms.load(Relaxed);
        let interval_ms = RELOAD_CHECK_INTERVAL.as_millis() as u64;
        if now_ms >= due
            && self
                .next_check_ms
                .compare_exchange(due, now_ms + interval_ms, Relaxed, Relaxed)
                .is_ok()
        {
            // This caller won the check; the others use what is in force meanwhile.
            self.reload_if_changed();
        }
        self.current.load_full()
    }

    fn reload_if_changed(&self) {
        let current = self.current.load();
        if !current.changed() {
            return;
        }
        let now = current.stamps_now();
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if failed.as_ref() == Some(&now) {
            return;
        }
        match WebConfig::load(&self.path, Some(self.serving_tls)) {
            Ok(config) => {
                log::info!("reloaded the web config {}", self.path.display());
                self.current.store(Arc::new(config));
                *failed = None;
            }
            Err(e) => {
                log::error!("{e}; keeping the web config loaded before");
                *failed = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{write_pair, Pair};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_err(dir: &Path, text: &str) -> String {
        let path = write(dir, "web.yml", text);
        match WebConfigFile::load(&path) {
            Ok(_) => panic!("loaded: {text}"),
            Err(e) => {
                assert!(e.is_config(), "{e}");
                let e = e.to_string();
                assert!(e.contains(&path.display().to_string()), "{e}");
                e
            }
        }
    }

    const HASH: &str = "$2y$04$oaOAEKLUQdgCeuEsI3tF6.F0BX68yEJxtlOjKzIo0P8rOGfvAjnKO";

    #[test]
    fn an_empty_file_sets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "# nothing\n", "{}\n"] {
            let w = WebConfigFile::load(write(dir.path(), "web.yml", text)).unwrap();
            assert!(!w.serves_tls());
            assert!(w.current().auth().is_empty());
            assert!(w.current().headers().is_empty());
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_err(dir.path(), "tls_server_config:\n  cert_fiel: a.pem\n");
        assert!(e.contains("cert_fiel"), "{e}");
        assert!(e.contains("tls_server_config"), "{e}");
        let e = load_err(dir.path(), "basic_auth_user:\n  a: b\n");
        assert!(e.contains("basic_auth_user"), "{e}");
    }

    #[test]
    fn a_missing_key_file_is_refused_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let Pair { cert, .. } = write_pair(dir.path(), "server");
        let e = load_err(
            dir.path(),
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: missing.key\n",
                cert.display()
            ),
        );
        assert!(e.contains("tls_server_config.key_file"), "{e}");
        // Relative to the config file's directory, as exporter-toolkit reads it.
        assert!(
            e.contains(&dir.path().join("missing.key").display().to_string()),
            "{e}"
        );
        let e = load_err(dir.path(), "tls_server_config:\n  key_file: missing.key\n");
        assert!(e.contains("cert_file"), "{e}");
    }

    #[test]
    fn a_bad_hash_is_refused_naming_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_err(dir.path(), "basic_auth_users:\n  alice: hunter2\n");
        assert!(e.contains("basic_auth_users.alice"), "{e}");
        assert!(e.contains("bcrypt"), "{e}");
        let ok = format!("basic_auth_users:\n  alice: '{HASH}'\n");
        let w = WebConfigFile::load(write(dir.path(), "web.yml", &ok)).unwrap();
        assert!(!w.current().auth().is_empty());
    }

    #[test]
    fn what_this_exporter_cannot_honour_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_err(dir.path(), "rate_limit:\n  interval: 1s\n  burst: 5\n");
        assert!(
            e.contains("rate_limit") && e.contains("not supported"),
            "{e}"
        );
        let e = load_err(dir.path(), "http_server_config:\n  http2: true\n");
        assert!(e.contains("http2") && e.contains("HTTP/1.1"), "{e}");
        let e = load_err(
            dir.path(),
            "http_server_config:\n  headers:\n    X-Powered-By: me\n",
        );
        assert!(e.contains("X-Powered-By"), "{e}");
        let e = load_err(
            dir.path(),
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        );
        assert!(
            e.contains("X-Frame-Options") && e.contains("sameorigin"),
            "{e}"
        );
    }

    #[test]
    fn headers_and_http2_false_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
                    Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: ''\n";
        let w = WebConfigFile::load(write(dir.path(), "web.yml", text)).unwrap();
        let current = w.current();
        let h = current.headers();
        assert_eq!(h["x-frame-options"], "deny");
        assert_eq!(h["strict-transport-security"], "max-age=31536000");
        assert!(h.get("x-xss-protection").is_none(), "blank is unset");
    }

    #[test]
    fn a_yaml_syntax_error_is_refused_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_err(dir.path(), "basic_auth_users: [\n");
        assert!(e.contains("line"), "{e}");
        let e = load_err(dir.path(), "basic_auth_users:\n  a: x\n  a: y\n");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn a_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = WebConfigFile::load(dir.path().join("nope.yml"))
            .err()
            .unwrap();
        assert!(e.is_config());
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }

    #[test]
    fn a_change_is_picked_up_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "web.yml", "");
        let w = WebConfigFile::load(&path).unwrap();
        assert!(w.current().auth().is_empty());
        let with_user = format!("basic_auth_users:\n  alice: '{HASH}'\n");
        write(dir.path(), "web.yml", &with_user);
        assert!(crate::test_certs::eventually(|| !w
            .current()
            .auth()
            .is_empty()));
        write(dir.path(), "web.yml", "nonsense: [\n");
        std::thread::sleep(RELOAD_CHECK_INTERVAL * 2);
        assert!(!w.current().auth().is_empty(), "a bad change keeps the old");
        // A plain-HTTP server cannot start speaking TLS on a reload.
        let Pair { cert, key } = write_pair(dir.path(), "server");
        write(
            dir.path(),
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                cert.display(),
                key.display()
            ),
        );
        std::thread::sleep(RELOAD_CHECK_INTERVAL * 2);
        assert!(w.current().tls().is_none());
        assert!(!w.current().auth().is_empty());
    }
}
