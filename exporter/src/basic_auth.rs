//! `basic_auth_users`: HTTP basic authentication against bcrypt hashes, as exporter-toolkit
//! does it.
//!
//! - bcrypt is slow on purpose (a cost of 10 takes ~70 ms), so a password that has passed is
//!   remembered, as a SHA-256 digest, per user: a scrape every 15 s pays for bcrypt once, not
//!   at every request. Only passes are remembered, so a client guessing passwords cannot push
//!   Prometheus' entry out.
//! - A name that is no user is checked against a real user's hash all the same, so the answer
//!   takes as long as for a user with a wrong password, and timing does not tell which names
//!   exist.
//! - One bcrypt runs at a time, on the runtime's blocking threads, so a flood of bad passwords
//!   costs at most one core and never holds up the HTTP threads.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr as _;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use hyper::header::HeaderValue;
use tokio::sync::Semaphore;

use crate::web_config::Fault;

/// A SHA-256 digest of a password that passed bcrypt.
type Digest = [u8; 32];

/// The users allowed in, and the passwords that have passed.
pub struct BasicAuth {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    /// The hash a name that is no user is checked against: a real user's, so of a real cost.
    decoy: Option<String>,
    /// User name → digest of the last password that passed for them.
    passed: Mutex<HashMap<String, Digest>>,
    /// One bcrypt at a time.
    bcrypt_turn: Semaphore,
}

impl BasicAuth {
    /// Checks each hash; a user whose hash bcrypt cannot read is refused by name.
    pub(crate) fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, Fault> {
        for (user, hash) in &users {
            if bcrypt::HashParts::from_str(hash).is_err() {
                // The key names the user; the message must not echo the (maybe secret) value.
                return Err(Fault::new(
                    format!("basic_auth_users.{user}"),
                    "not a bcrypt hash (\"$2y$10$...\", as \
                     `htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints)",
                ));
            }
        }
        Ok(BasicAuth {
            decoy: users.values().next().cloned(),
            users: users.into_iter().collect(),
            passed: Mutex::new(HashMap::new()),
            bcrypt_turn: Semaphore::new(1),
        })
    }

    /// Whether no user is set: then every request is let in.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether a request with this `Authorization` header is let in.
    pub async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let digest = sha256(&password);
        let known = self.users.get(&user);
        if known.is_some() {
            let passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
            if passed
                .get(&user)
                .is_some_and(|d| equal_in_constant_time(d, &digest))
            {
                return true;
            }
        }
        let Some(hash) = known.or(self.decoy.as_ref()).cloned() else {
            return false;
        };
        let Ok(_turn) = self.bcrypt_turn.acquire().await else {
            return false;
        };
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let allowed = verified && known.is_some();
        if allowed {
            self.passed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(user, digest);
        }
        allowed
    }
}

/// The user and password of a `Basic` `Authorization` header (RFC 7617), split at the first
/// colon as Go's `Request.BasicAuth` splits them.
fn credentials(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = header.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded.get(..colon)?.to_vec()).ok()?;
    let password = decoded.get(colon + 1..)?.to_vec();
    Some((user, password))
}

fn sha256(bytes: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares every byte whatever the first difference, so the time says nothing of where it is.
fn equal_in_constant_time(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn auth() -> BasicAuth {
        BasicAuth::new(BTreeMap::from([
            ("alice".to_owned(), bcrypt::hash("wonderland", 4).unwrap()),
            ("bob".to_owned(), bcrypt::hash("builder:2", 4).unwrap()),
        ]))
        .unwrap()
    }

    fn allows(auth: &BasicAuth, header: Option<&HeaderValue>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(auth.allows(header))
    }

    #[test]
    fn the_right_password_passes_and_is_remembered() {
        let a = auth();
        assert!(allows(&a, Some(&basic("alice", "wonderland"))));
        assert!(a.passed.lock().unwrap().contains_key("alice"));
        assert!(allows(&a, Some(&basic("alice", "wonderland"))));
        // The password may hold colons: only the first one splits.
        assert!(allows(&a, Some(&basic("bob", "builder:2"))));
    }

    #[test]
    fn a_wrong_password_an_unknown_user_or_no_header_is_refused() {
        let a = auth();
        assert!(!allows(&a, None));
        assert!(!allows(&a, Some(&basic("alice", "wrong"))));
        // bob's password, under a name that is no user (checked against alice's hash).
        assert!(!allows(&a, Some(&basic("mallory", "wonderland"))));
        assert!(!allows(&a, Some(&HeaderValue::from_static("Bearer abc"))));
        assert!(!allows(&a, Some(&HeaderValue::from_static("Basic !!!"))));
        assert!(a.passed.lock().unwrap().is_empty(), "failures are not kept");
        // A pass remembered does not let another password in.
        assert!(allows(&a, Some(&basic("alice", "wonderland"))));
        assert!(!allows(&a, Some(&basic("alice", "wonderland2"))));
    }

    #[test]
    fn no_users_lets_everyone_in() {
        let a = BasicAuth::new(BTreeMap::new()).unwrap();
        assert!(a.is_empty());
        assert!(allows(&a, None));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let a = auth();
        let token = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
        let header = HeaderValue::from_str(&format!("basic {token}")).unwrap();
        assert!(allows(&a, Some(&header)));
    }

    #[test]
    fn a_bad_hash_is_refused_without_echoing_it() {
        let e = BasicAuth::new(BTreeMap::from([(
            "alice".to_owned(),
            "plaintext-secret".to_owned(),
        )]))
        .err()
        .unwrap();
        assert_eq!(e.key, "basic_auth_users.alice");
        assert!(!e.message.contains("plaintext-secret"), "{}", e.message);
    }
}
