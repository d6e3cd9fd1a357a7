//! The exporter behind `--web.config.file`: a real Prometheus scrapes it over TLS with basic
//! auth, using the web config and scrape config of `docs/security.md` as written there (with a
//! CA, a certificate and a password made at test time); a wrong or missing password gets 401,
//! plain HTTP to the TLS port gets no metrics, a silent client holds up no scrape, a renewed
//! certificate is served without a restart, and a bad file exits 78 naming the file and key.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;

use crate::util::{
    bin, eventually, free_port, http_get, tool, unique, wait_for, Proc, Prometheus, PATIENCE,
};

/// The user of `docs/security.md`'s examples.
const USER: &str = "prometheus";
/// The hash in `docs/security.md`'s web config example, replaced by one of the test's password.
const DOC_HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

/// `docs/security.md`.
fn security_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md")).unwrap()
}

/// The fenced `yaml` blocks of `text`, in order.
fn yaml_blocks(text: &str) -> Vec<String> {
    text.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block.to_owned()))
        .collect()
}

/// The block of `docs/security.md` that starts with `first_line`.
fn doc_example(first_line: &str) -> String {
    yaml_blocks(&security_doc())
        .into_iter()
        .find(|b| b.starts_with(first_line))
        .unwrap_or_else(|| panic!("docs/security.md has no yaml block starting {first_line:?}"))
}

/// `text` with `from` replaced by `to`, which must be there: an example and its test must not
/// drift apart unnoticed.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example no longer holds {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// A CA made at test time.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, and its key, as PEM.
    fn server_cert(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `path` by renaming a new file over it, as certbot and Kubernetes do.
fn replace_file(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// `GET path` over TLS trusting only `ca_pem`, with basic auth if given: the status and the
/// whole response, head and body.
fn tls_get(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let authorization = auth
        .map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{authorization}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    Ok((status, text))
}

/// An exporter serving TLS and basic auth from `docs/security.md`'s web config.
struct TlsExporter {
    proc: Proc,
    addr: SocketAddr,
    ca: Ca,
    password: String,
    dir: tempfile::TempDir,
}

impl TlsExporter {
    fn start() -> TlsExporter {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("inferd test CA");
        let (cert, key) = ca.server_cert();
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let password = unique("pw");
        // Cost 4, bcrypt's least: the test measures no hashing.
        let hash = bcrypt::hash(&password, 4).unwrap();
        let web = doc_example("tls_server_config:");
        let web = replace(
            &web,
            "/etc/inferd-exporter/",
            &format!("{}/", dir.path().display()),
        );
        let web = replace(&web, DOC_HASH, &hash);
        let config = dir.path().join("web.yml");
        std::fs::write(&config, web).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            "--listen".to_owned(),
            addr.to_string(),
            "--web.config.file".to_owned(),
            config.display().to_string(),
            // No segment: the exporter's own metrics are enough here.
            "--segment".to_owned(),
            unique("no-such-segment"),
        ];
        let proc = Proc::spawn(&bin("exporter"), &args, dir.path().join("exporter.log"));
        let e = TlsExporter {
            proc,
            addr,
            ca,
            password,
            dir,
        };
        wait_for("the exporter to answer over TLS", || {
            e.get("/health", Some((USER, &e.password))).ok()
        });
        e
    }

    fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Result<(u16, String), String> {
        tls_get(self.addr, &self.ca.pem, path, auth)
    }
}

/// An instant query's first value, if it has one.
fn query(prom: SocketAddr, promql: &str) -> Option<f64> {
    let body = http_get(prom, &Prometheus::query_path(promql)).ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let prometheus = tool("prometheus");
    let exporter = TlsExporter::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &exporter.ca.pem).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, &exporter.password).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-password").unwrap();

    let job = doc_example("scrape_configs:");
    let job = replace(
        &job,
        "/etc/prometheus/inferd-ca.crt",
        &ca_file.display().to_string(),
    );
    let target = format!("localhost:{}", exporter.addr.port());
    let job = replace(&job, "gpu-host-1:9470", &target);
    let good = replace(
        &job,
        "/etc/prometheus/inferd-exporter.password",
        &password_file.display().to_string(),
    );
    // The same job with a wrong password, under another name.
    let wrong = job
        .replace(
            "/etc/prometheus/inferd-exporter.password",
            &wrong_file.display().to_string(),
        )
        .replace("job_name: inferd", "job_name: wrong-password");
    let wrong = wrong.strip_prefix("scrape_configs:\n").unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 500ms\n  scrape_timeout: 450ms\n{good}{wrong}"),
    )
    .unwrap();
    let prom_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prom = Proc::spawn(
        &prometheus,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
        dir.path().join("prometheus.log"),
    );
    wait_for("Prometheus to be ready", || {
        http_get(prom_addr, "/-/ready").ok()
    });

    let scraped = eventually(2 * PATIENCE, || {
        query(prom_addr, "up{job=\"inferd\"}") == Some(1.0)
            && query(
                prom_addr,
                "count(inferd_exporter_build_info{job=\"inferd\"})",
            ) == Some(1.0)
    });
    assert!(
        scraped,
        "Prometheus never scraped the exporter over TLS\nPrometheus log:\n{}\nexporter log:\n{}",
        prom.log(),
        exporter.proc.log()
    );
    // The wrong password's job is down because of the 401, not of TLS.
    let mut last_error = String::new();
    let refused = eventually(PATIENCE, || {
        let Ok(body) = http_get(prom_addr, "/api/v1/targets") else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        let targets = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        last_error = targets
            .iter()
            .find(|t| t["labels"]["job"] == "wrong-password")
            .and_then(|t| t["lastError"].as_str())
            .unwrap_or_default()
            .to_owned();
        last_error.contains("401")
    });
    assert!(
        refused,
        "the wrong password's scrape failed with {last_error:?}"
    );
    assert_eq!(query(prom_addr, "up{job=\"wrong-password\"}"), Some(0.0));
    assert_eq!(
        query(
            prom_addr,
            "count(inferd_exporter_build_info{job=\"wrong-password\"})"
        ),
        None
    );
}

#[test]
fn a_wrong_or_missing_password_gets_401_and_no_metrics() {
    let e = TlsExporter::start();
    let (status, page) = e.get("/metrics", Some((USER, &e.password))).unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("inferd_exporter_build_info"), "{page}");

    let (status, page) = e.get("/metrics", Some((USER, "wrong"))).unwrap();
    assert_eq!(status, 401, "{page}");
    assert!(!page.contains("inferd_"), "{page}");
    // A name that is no user, with the right password, is no better.
    let (status, _) = e.get("/metrics", Some(("root", &e.password))).unwrap();
    assert_eq!(status, 401);

    let (status, page) = e.get("/metrics", None).unwrap();
    assert_eq!(status, 401, "{page}");
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\nwww-authenticate: basic"), "{page}");
    assert!(!page.contains("inferd_"), "{page}");
    // Every path, not only /metrics.
    for path in [
        "/",
        "/health",
        "/gpu/stats",
        "/queue/stats",
        "/models/stats",
    ] {
        assert_eq!(e.get(path, None).unwrap().0, 401, "{path}");
    }
}

#[test]
fn plain_http_to_the_tls_port_gets_no_metrics() {
    let e = TlsExporter::start();
    let mut s = TcpStream::connect(e.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{}", e.password));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let answer = String::from_utf8_lossy(&raw);
    assert!(answer.starts_with("HTTP/1.0 400 "), "{answer:?}");
    assert!(
        answer.contains("Client sent an HTTP request to an HTTPS server."),
        "{answer:?}"
    );
    assert!(!answer.contains("inferd_"), "{answer:?}");
    // And the TLS side still serves.
    assert_eq!(e.get("/metrics", Some((USER, &e.password))).unwrap().0, 200);
}

#[test]
fn a_client_that_sends_nothing_holds_up_no_scrape() {
    let e = TlsExporter::start();
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(e.addr).unwrap())
        .collect();
    let started = Instant::now();
    let (status, _) = e.get("/metrics", Some((USER, &e.password))).unwrap();
    assert_eq!(status, 200);
    let took = started.elapsed();
    // Far below the 10 s a handshake may take: the scrape did not wait for the silent ones.
    assert!(
        took < Duration::from_secs(5),
        "a scrape took {took:?} beside silent clients"
    );
    drop(silent);
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let e = TlsExporter::start();
    let renewed = Ca::new("inferd renewed CA");
    let (cert, key) = renewed.server_cert();
    // The key lands after the certificate: the half-renewed pair in between does not load,
    // and the old one serves until the key follows.
    replace_file(&e.dir.path().join("tls.crt"), &cert);
    std::thread::sleep(Duration::from_millis(100));
    replace_file(&e.dir.path().join("tls.key"), &key);
    let served = eventually(PATIENCE, || {
        tls_get(e.addr, &renewed.pem, "/metrics", Some((USER, &e.password)))
            .is_ok_and(|(s, _)| s == 200)
    });
    assert!(
        served,
        "the renewed certificate was never served:\n{}",
        e.proc.log()
    );
    let old = e.get("/metrics", Some((USER, &e.password)));
    assert!(
        old.is_err(),
        "a client trusting only the old CA still got {old:?}"
    );
    assert!(
        e.proc.log().contains("reloaded the web config"),
        "{}",
        e.proc.log()
    );
}

#[test]
fn a_bad_web_config_exits_78_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("tls_server_config:\n  cert_fiel: tls.crt\n", "cert_fiel"),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "basic_auth_users:\n  prometheus: plaintext\n",
            "basic_auth_users.prometheus",
        ),
    ] {
        let config: PathBuf = dir.path().join("web.yml");
        std::fs::write(&config, text).unwrap();
        let args = [
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--web.config.file".to_owned(),
            config.display().to_string(),
        ];
        let mut p = Proc::spawn(&bin("exporter"), &args, dir.path().join(unique("log")));
        let status = p.wait();
        let log = p.log();
        assert_eq!(status.code(), Some(78), "{text}: {log}");
        assert!(log.contains(&config.display().to_string()), "{log}");
        assert!(log.contains(key), "{text}: {log}");
        assert_eq!(log.lines().count(), 1, "one line: {log}");
        assert!(!log.contains("plaintext"), "the value is not echoed: {log}");
    }
}

#[test]
fn readme_security_examples_are_the_tested_ones() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("## Security")
        .expect("README has a Security section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let doc = security_doc();
    let blocks = yaml_blocks(section);
    assert!(
        blocks.len() >= 2,
        "README's Security section shows the web and scrape configs"
    );
    for block in blocks {
        assert!(
            doc.contains(&block),
            "README's example is not docs/security.md's:\n{block}"
        );
    }
    assert!(section.contains("127.0.0.1") && section.contains("firewall"));
}
