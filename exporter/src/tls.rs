//! TLS for the HTTP server: `tls_server_config` of the web config as a rustls configuration,
//! and the handshake of one connection.
//!
//! rustls with the *ring* provider implements TLS 1.2 and 1.3 with AEAD suites only, so the
//! keys of exporter-toolkit's format that ask for less (TLS 1.0 or 1.1, CBC suites, P-521,
//! client certificates taken unverified) are refused by name, rather than served as something
//! other than what the file says.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, SupportedKxGroup};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::web_config::{Fault, RawTls};

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP request to the TLS port is answered, as Go's `net/http` answers it (so
/// that whoever typed `http://` sees why, rather than a reset connection).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; \
    charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Go's names of the TLS 1.2 suites that rustls with *ring* implements.
const TLS12_SUITES: [(&str, SupportedCipherSuite); 6] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's names of the TLS 1.3 suites. As in Go, these cannot be chosen: naming them is accepted
/// and changes nothing, and all three are always offered.
const TLS13_SUITE_NAMES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites exporter-toolkit accepts (Go's `tls.CipherSuites()`) that rustls does not implement.
const CBC_SUITE_NAMES: [&str; 4] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// How client certificates are asked for (`client_auth_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    /// `NoClientCert`, the default.
    None,
    /// `VerifyClientCertIfGiven`: a client may send none; one it sends must verify.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`.
    RequireAndVerify,
}

/// The rustls configuration `raw` asks for, and the files it was read from (to watch for a
/// renewal). Relative paths are relative to `dir`, the web config file's directory.
pub(crate) fn server_config(
    raw: &RawTls,
    dir: &Path,
) -> Result<(ServerConfig, Vec<PathBuf>), Fault> {
    if raw.client_allowed_sans.is_some() {
        return Err(Fault::new(
            "tls_server_config.client_allowed_sans",
            "not supported by this exporter; use client_ca_file with a CA that issues only \
             the clients' certificates",
        ));
    }
    let mut files = Vec::new();
    let chain = pem_input(
        ("tls_server_config.cert", raw.cert.as_deref()),
        ("tls_server_config.cert_file", raw.cert_file.as_deref()),
        dir,
        &mut files,
        |bytes| CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>(),
    )?
    .ok_or_else(|| {
        Fault::new(
            "tls_server_config.cert_file",
            "missing: give cert_file (or cert)",
        )
    })?;
    let cert_key = which(
        "tls_server_config.cert",
        raw.cert.is_some(),
        "tls_server_config.cert_file",
    );
    if chain.is_empty() {
        return Err(Fault::new(cert_key, "holds no CERTIFICATE block"));
    }
    let key = pem_input(
        ("tls_server_config.key", raw.key.as_deref()),
        ("tls_server_config.key_file", raw.key_file.as_deref()),
        dir,
        &mut files,
        PrivateKeyDer::from_pem_slice,
    )?
    .ok_or_else(|| {
        Fault::new(
            "tls_server_config.key_file",
            "missing: give key_file (or key)",
        )
    })?;
    let key_key = which(
        "tls_server_config.key",
        raw.key.is_some(),
        "tls_server_config.key_file",
    );

    let client_auth = match raw.client_auth_type.as_deref() {
        None | Some("" | "NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
        Some(unverified @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert")) => {
            return Err(Fault::new(
                "tls_server_config.client_auth_type",
                format!(
                    "{unverified} takes client certificates without verifying them, which \
                     this exporter does not do; use RequireAndVerifyClientCert (or \
                     VerifyClientCertIfGiven) with client_ca_file"
                ),
            ))
        }
        Some(other) => {
            return Err(Fault::new(
                "tls_server_config.client_auth_type",
                format!(
                    "unknown {other:?}: give NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert"
                ),
            ))
        }
    };
    let client_cas = pem_input(
        ("tls_server_config.client_ca", raw.client_ca.as_deref()),
        (
            "tls_server_config.client_ca_file",
            raw.client_ca_file.as_deref(),
        ),
        dir,
        &mut files,
        |bytes| CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>(),
    )?;

    let mut provider = ring::default_provider();
    if let Some(names) = &raw.cipher_suites {
        provider.cipher_suites = cipher_suites(names)?;
    }
    if let Some(names) = &raw.curve_preferences {
        provider.kx_groups = curves(names)?;
    }
    let provider = Arc::new(provider);
    let versions = versions(raw.min_version.as_deref(), raw.max_version.as_deref())?;

    let verifier = match (client_auth, client_cas) {
        (ClientAuth::None, None) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::None, Some(_)) => {
            return Err(Fault::new(
                "tls_server_config.client_auth_type",
                "client CAs are given without a client_auth_type: set \
                 RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
            ))
        }
        (_, None) => {
            return Err(Fault::new(
                "tls_server_config.client_ca_file",
                "missing: client certificates are verified against it",
            ))
        }
        (mode, Some(cas)) => {
            let ca_key = which(
                "tls_server_config.client_ca",
                raw.client_ca.is_some(),
                "tls_server_config.client_ca_file",
            );
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| Fault::new(ca_key, format!("not a CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Fault::new(ca_key, "holds no CERTIFICATE block"));
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if mode == ClientAuth::VerifyIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| Fault::new(ca_key, e.to_string()))?
        }
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| Fault::new("tls_server_config.cipher_suites", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            Fault::new(
                key_key,
                format!("does not go with {cert_key} (or cannot be used): {e}"),
            )
        })?;
    // exporter-toolkit's default, true: the server's order of suites wins.
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    // HTTP/1.1 only: a client that asks for h2 by ALPN is told to speak HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, files))
}

/// Which of an inline key and a file key was used, for messages.
fn which(inline: &'static str, is_inline: bool, file: &'static str) -> &'static str {
    if is_inline {
        inline
    } else {
        file
    }
}

/// Reads PEM given inline or as a file (not both), and parses it with `parse`.
fn pem_input<T, E: std::fmt::Display>(
    (inline_key, inline): (&'static str, Option<&str>),
    (file_key, file): (&'static str, Option<&Path>),
    dir: &Path,
    files: &mut Vec<PathBuf>,
    parse: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<Option<T>, Fault> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(Fault::new(
            file_key,
            format!("give {file_key} or {inline_key}, not both"),
        )),
        (Some(text), None) => parse(text.as_bytes())
            .map(Some)
            .map_err(|e| Fault::new(inline_key, format!("not PEM: {e}"))),
        (None, Some(file)) => {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| {
                Fault::new(file_key, format!("cannot read {}: {e}", path.display()))
            })?;
            files.push(path.clone());
            parse(&bytes)
                .map(Some)
                .map_err(|e| Fault::new(file_key, format!("{}: not PEM: {e}", path.display())))
        }
        (None, None) => Ok(None),
    }
}

/// `cipher_suites`: the TLS 1.2 suites named, in that order; TLS 1.3's are always all on.
fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, Fault> {
    const KEY: &str = "tls_server_config.cipher_suites";
    let mut suites: Vec<SupportedCipherSuite> = ring::ALL_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .collect();
    for name in names {
        if let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| n == name) {
            suites.push(*suite);
        } else if CBC_SUITE_NAMES.contains(&name.as_str()) {
            return Err(Fault::new(
                KEY,
                format!("{name}: rustls implements no CBC suite; give AEAD (GCM, CHACHA20) ones"),
            ));
        } else if !TLS13_SUITE_NAMES.contains(&name.as_str()) {
            let known: Vec<&str> = TLS12_SUITES.iter().map(|(n, _)| *n).collect();
            return Err(Fault::new(
                KEY,
                format!("unknown suite {name:?}; the TLS 1.2 suites: {known:?}"),
            ));
        }
    }
    Ok(suites)
}

/// `curve_preferences`: the key exchange groups named, in that order.
fn curves(names: &[String]) -> Result<Vec<&'static dyn SupportedKxGroup>, Fault> {
    const KEY: &str = "tls_server_config.curve_preferences";
    names
        .iter()
        .map(|name| match name.as_str() {
            "X25519" => Ok(ring::kx_group::X25519),
            "CurveP256" => Ok(ring::kx_group::SECP256R1),
            "CurveP384" => Ok(ring::kx_group::SECP384R1),
            "CurveP521" => Err(Fault::new(
                KEY,
                "CurveP521: not implemented by rustls's ring provider; give X25519, CurveP256 \
                 or CurveP384",
            )),
            other => Err(Fault::new(
                KEY,
                format!("unknown curve {other:?}; give X25519, CurveP256 or CurveP384"),
            )),
        })
        .collect()
}

/// `min_version` and `max_version` (default TLS12 and TLS13, as exporter-toolkit's).
fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static SupportedProtocolVersion>, Fault> {
    fn rank(key: &'static str, v: Option<&str>, default: u8) -> Result<u8, Fault> {
        match v {
            None => Ok(default),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(old @ ("TLS10" | "TLS11")) => Err(Fault::new(
                key,
                format!("{old}: rustls implements TLS 1.2 and 1.3 only; give TLS12 or TLS13"),
            )),
            Some(other) => Err(Fault::new(
                key,
                format!("unknown version {other:?}; give TLS12 or TLS13"),
            )),
        }
    }
    let min = rank("tls_server_config.min_version", min, 12)?;
    let max = rank("tls_server_config.max_version", max, 13)?;
    if min > max {
        return Err(Fault::new(
            "tls_server_config.min_version",
            "is above max_version",
        ));
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect(),
    )
}

/// Why a connection to the TLS port was not served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// It closed before sending anything.
    #[error("closed before the TLS handshake")]
    Closed,
    /// Its first bytes were plain HTTP (answered 400) or something else that is not TLS.
    #[error("not TLS: the first byte was {0:#04x}")]
    NotTls(u8),
    /// The handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// The server side of a handshake on `stream`. A client that sends plain HTTP gets a 400 that
/// says so; the caller bounds the time this takes.
pub(crate) async fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream<TcpStream>, Refused> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return Err(Refused::Closed),
        Ok(_) => {}
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Reads the request first: closing with it unread would send a reset, and the
            // client might lose the answer.
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
            let _ = stream.shutdown().await;
        }
        return Err(Refused::NotTls(first[0]));
    }
    TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(Refused::Handshake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{write_pair, Pair};

    fn raw(yaml: &str) -> RawTls {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn fault(dir: &Path, yaml: &str) -> Fault {
        match server_config(&raw(yaml), dir) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(f) => f,
        }
    }

    fn with_pair(dir: &Path, more: &str) -> String {
        let Pair { cert, key } = write_pair(dir, "server");
        format!(
            "cert_file: {}\nkey_file: {}\n{more}",
            cert.display(),
            key.display()
        )
    }

    #[test]
    fn a_cert_and_key_make_a_config_watching_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (config, files) = server_config(&raw(&with_pair(dir.path(), "")), dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(config.ignore_client_order);
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Relative paths are the config file's directory's.
        let (_, files) = server_config(
            &raw("cert_file: server.crt\nkey_file: server.key\n"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(files[0], dir.path().join("server.crt"));
    }

    #[test]
    fn a_key_of_another_cert_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let b = write_pair(dir.path(), "b");
        let f = fault(
            dir.path(),
            &format!(
                "cert_file: {}\nkey_file: {}\n",
                a.cert.display(),
                b.key.display()
            ),
        );
        assert_eq!(f.key, "tls_server_config.key_file");
        assert!(f.message.contains("does not go with"), "{}", f.message);
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let Pair { key, .. } = write_pair(dir.path(), "server");
        let f = fault(
            dir.path(),
            &format!(
                "cert_file: {}\nkey_file: {}\n",
                junk.display(),
                key.display()
            ),
        );
        assert_eq!(f.key, "tls_server_config.cert_file");
        let Pair { cert, .. } = write_pair(dir.path(), "server");
        let f = fault(
            dir.path(),
            &format!(
                "cert_file: {}\nkey_file: {}\n",
                cert.display(),
                junk.display()
            ),
        );
        assert_eq!(f.key, "tls_server_config.key_file");
    }

    #[test]
    fn versions_suites_and_curves_are_honoured_or_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ok = |more: &str| server_config(&raw(&with_pair(dir.path(), more)), dir.path());
        let c = ok("min_version: TLS13\n").unwrap().0;
        assert_eq!(c.crypto_provider().cipher_suites.len(), 9);
        let c = ok(
            "cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n\
                    curve_preferences: [CurveP256, X25519]\nprefer_server_cipher_suites: false\n",
        )
        .unwrap()
        .0;
        let p = c.crypto_provider();
        assert_eq!(
            p.cipher_suites.len(),
            3 + 1,
            "TLS 1.3's three and the one named"
        );
        assert_eq!(
            p.cipher_suites[3].suite(),
            rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            vec![rustls::NamedGroup::secp256r1, rustls::NamedGroup::X25519]
        );
        assert!(!c.ignore_client_order);
        for (more, key, says) in [
            (
                "min_version: TLS10\n",
                "tls_server_config.min_version",
                "TLS 1.2 and 1.3 only",
            ),
            (
                "max_version: TLS14\n",
                "tls_server_config.max_version",
                "unknown version",
            ),
            (
                "min_version: TLS13\nmax_version: TLS12\n",
                "tls_server_config.min_version",
                "above",
            ),
            (
                "cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n",
                "tls_server_config.cipher_suites",
                "CBC",
            ),
            (
                "cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
                "tls_server_config.cipher_suites",
                "unknown suite",
            ),
            (
                "curve_preferences: [CurveP521]\n",
                "tls_server_config.curve_preferences",
                "ring",
            ),
            (
                "client_auth_type: RequireAnyClientCert\n",
                "tls_server_config.client_auth_type",
                "without verifying",
            ),
            (
                "client_auth_type: Sometimes\n",
                "tls_server_config.client_auth_type",
                "unknown",
            ),
            (
                "client_auth_type: RequireAndVerifyClientCert\n",
                "tls_server_config.client_ca_file",
                "missing",
            ),
            (
                "client_allowed_sans: [a]\n",
                "tls_server_config.client_allowed_sans",
                "not supported",
            ),
            ("cert: x\n", "tls_server_config.cert_file", "not both"),
        ] {
            let f = match ok(more) {
                Ok(_) => panic!("accepted {more}"),
                Err(f) => f,
            };
            assert_eq!(f.key, key, "{more}: {}", f.message);
            assert!(f.message.contains(says), "{more}: {}", f.message);
        }
    }

    #[test]
    fn client_certificates_verified_against_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write_pair(dir.path(), "ca");
        let more = format!(
            "client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: {}\n",
            ca.cert.display()
        );
        let (_, files) = server_config(&raw(&with_pair(dir.path(), &more)), dir.path()).unwrap();
        assert_eq!(files.len(), 3, "the CA file is watched too");
        let f = fault(
            dir.path(),
            &with_pair(
                dir.path(),
                &format!("client_ca_file: {}\n", ca.cert.display()),
            ),
        );
        assert_eq!(f.key, "tls_server_config.client_auth_type");
    }

    #[test]
    fn inline_pem_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let Pair { cert, key } = write_pair(dir.path(), "server");
        let cert = std::fs::read_to_string(cert).unwrap();
        let key = std::fs::read_to_string(key).unwrap();
        let yaml = serde_yaml_ng::to_string(&std::collections::BTreeMap::from([
            ("cert", cert),
            ("key", key),
        ]))
        .unwrap();
        let (_, files) = server_config(&raw(&yaml), dir.path()).unwrap();
        assert!(files.is_empty());
    }
}
