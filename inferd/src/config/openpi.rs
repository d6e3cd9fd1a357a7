//! The openpi listener's options: `--openpi-listen [ADDR:]PORT` and
//! `--openpi-api-key KEY[=ROBOT_TYPE]`, their parsers and the rules they must meet together.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use crate::protocol::check_robot_type;

/// The robot type an openpi connection's requests are counted under when its API key names
/// none, or no key is configured.
pub const OPENPI_ROBOT_TYPE: &str = "openpi";

/// The longest API key accepted, bytes: far above any generated key, and short enough that
/// comparing a header against every key stays cheap.
pub const MAX_API_KEY_BYTES: usize = 512;

/// One `--openpi-api-key`: a key openpi clients present as `Authorization: Api-Key KEY`, and
/// the robot type their requests are counted under.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key: 1 to [`MAX_API_KEY_BYTES`] bytes of printable ASCII without spaces, as an
    /// HTTP header's token carries it.
    pub key: String,
    /// The robot type given after `=`, if any; else [`OPENPI_ROBOT_TYPE`].
    pub robot_type: Option<String>,
}

impl ApiKey {
    /// The robot type this key's connections are counted under.
    pub fn robot_type(&self) -> &str {
        self.robot_type.as_deref().unwrap_or(OPENPI_ROBOT_TYPE)
    }
}

/// Never prints the key itself: a configuration is logged and printed in errors.
impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("robot_type", &self.robot_type())
            .finish()
    }
}

/// `--openpi-listen`: `PORT` (on 127.0.0.1), `ADDR:PORT`, `[IPV6]:PORT`, or `localhost:PORT`
/// (127.0.0.1). No name is resolved: what is bound is what was written. Port 0 binds a free
/// port, which inferd logs.
pub(super) fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let expected = "expected PORT, ADDR:PORT or [IPV6]:PORT (8000 is 127.0.0.1:8000; \
                    0.0.0.0:8000 is every IPv4 interface)";
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| expected.to_owned())?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse::<SocketAddr>().map_err(|_| expected.to_owned())
}

/// `--openpi-api-key KEY[=ROBOT_TYPE]`. The robot type is what follows the last `=`, so that
/// a key may hold `=` (base64 padding) when a robot type follows it.
pub(super) fn api_key(text: &str) -> Result<ApiKey, String> {
    let (key, robot_type) = match text.rsplit_once('=') {
        Some((_, "")) => {
            return Err(
                "nothing follows the last '=': write KEY=ROBOT_TYPE (a key that ends \
                        in '=' needs its robot type after it)"
                    .into(),
            )
        }
        Some((key, robot_type)) => (key, Some(robot_type)),
        None => (text, None),
    };
    if key.is_empty() || key.len() > MAX_API_KEY_BYTES {
        return Err(format!(
            "the key must be 1 to {MAX_API_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    // What an HTTP header carries as one token after `Api-Key `: no spaces, no controls.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the key must be printable ASCII without spaces (as an HTTP header carries it)".into(),
        );
    }
    if let Some(robot_type) = robot_type {
        check_robot_type(robot_type).map_err(|e| e.to_string())?;
    }
    Ok(ApiKey {
        key: key.to_owned(),
        robot_type: robot_type.map(str::to_owned),
    })
}

/// Checks the openpi options against each other: keys only with a listener, no key twice,
/// and no listener off the loopback interface without a key.
pub(super) fn validate(listen: Option<SocketAddr>, keys: &[ApiKey]) -> Result<(), String> {
    let Some(addr) = listen else {
        if keys.is_empty() {
            return Ok(());
        }
        return Err(
            "--openpi-api-key is given but --openpi-listen is not: the keys would guard nothing"
                .into(),
        );
    };
    if let Some(i) = (1..keys.len()).find(|&i| keys[..i].iter().any(|k| k.key == keys[i].key)) {
        // The key itself stays out of the message: errors are logged.
        return Err(format!(
            "--openpi-api-key: the key of entry {} is given twice (robot types {:?} and {:?})",
            i + 1,
            keys[..i]
                .iter()
                .find(|k| k.key == keys[i].key)
                .map_or(OPENPI_ROBOT_TYPE, ApiKey::robot_type),
            keys[i].robot_type()
        ));
    }
    if !addr.ip().is_loopback() && keys.is_empty() {
        return Err(format!(
            "--openpi-listen {addr} is not a loopback address and no --openpi-api-key is \
             configured: any host that can reach it could run the policy and send its robots' \
             observations. Configure --openpi-api-key KEY[=ROBOT_TYPE] (openpi clients send it \
             as WebsocketClientPolicy(api_key=KEY)), or listen on 127.0.0.1 and put a TLS proxy \
             with its own authentication in front"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn a_port_alone_is_loopback_and_addresses_are_taken_as_written() {
        let addr = |t: &str| listen_address(t).unwrap().to_string();
        assert_eq!(addr("8000"), "127.0.0.1:8000");
        assert_eq!(addr("localhost:8000"), "127.0.0.1:8000");
        assert_eq!(addr("0.0.0.0:8000"), "0.0.0.0:8000");
        assert_eq!(addr("[::1]:8000"), "[::1]:8000");
        assert_eq!(addr("0"), "127.0.0.1:0");
        for bad in [
            "",
            "x",
            "70000",
            ":8000",
            "example.com:80",
            "::1:8000",
            "localhost",
        ] {
            let err = listen_address(bad).unwrap_err();
            assert!(err.starts_with("expected PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_api_key_may_name_a_robot_type_after_its_last_equals_sign() {
        let k = api_key("k1=franka").unwrap();
        assert_eq!((k.key.as_str(), k.robot_type()), ("k1", "franka"));
        let k = api_key("k2").unwrap();
        assert_eq!((k.key.as_str(), k.robot_type()), ("k2", "openpi"));
        let k = api_key("abc==aloha").unwrap();
        assert_eq!((k.key.as_str(), k.robot_type()), ("abc=", "aloha"));
        for (bad, want) in [
            ("abc==", "nothing follows the last '='"),
            ("=franka", "1 to 512 bytes, got 0"),
            ("a b=franka", "printable ASCII"),
            ("k\u{7}", "printable ASCII"),
            ("k=other", "reserved"),
            ("k=unknown", "reserved"),
            ("k=a\u{1b}b", "control character"),
        ] {
            let err = api_key(bad).unwrap_err();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        let long = format!("k={}", "r".repeat(61));
        assert!(api_key(&long)
            .unwrap_err()
            .contains("robot_type must be 1 to 60 bytes"));
        assert!(!format!("{:?}", api_key("secret=franka").unwrap()).contains("secret"));
    }

    #[test]
    fn the_flags_parse_repeat_and_are_checked_together() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.openpi_listen, c.openpi_api_key.len()), (None, 0));
        let c = parse(&[
            "--openpi-listen",
            "0.0.0.0:8000",
            "--openpi-api-key",
            "k1=franka",
            "--openpi-api-key=k2",
        ])
        .unwrap();
        assert_eq!(c.openpi_listen, Some("0.0.0.0:8000".parse().unwrap()));
        let robots: Vec<_> = c.openpi_api_key.iter().map(ApiKey::robot_type).collect();
        assert_eq!(robots, ["franka", "openpi"]);
        assert!(parse(&["--openpi-listen", "[::1]:8000"]).is_ok());
        for (args, want) in [
            (
                &["--openpi-listen", "0.0.0.0:8000"][..],
                "--openpi-listen 0.0.0.0:8000 is not a loopback address and no \
                 --openpi-api-key is configured: ",
            ),
            (
                &["--openpi-listen", "[::]:8000"],
                "--openpi-listen [::]:8000 is not a loopback address",
            ),
            (&["--openpi-api-key", "k"], "--openpi-listen is not"),
            (
                &[
                    "--openpi-listen",
                    "8000",
                    "--openpi-api-key",
                    "k=a",
                    "--openpi-api-key",
                    "k=b",
                ],
                "the key of entry 2 is given twice (robot types \"a\" and \"b\")",
            ),
            (&["--openpi-listen", "x"], "'--openpi-listen <[ADDR:]PORT>'"),
            (
                &["--openpi-listen", "8000", "--openpi-api-key", "k=other"],
                "'--openpi-api-key <KEY[=ROBOT_TYPE]>'",
            ),
        ] {
            let err = parse(args).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{args:?}: {text}");
            assert_eq!(err.exit_code(), crate::EXIT_CONFIG, "{args:?}");
        }
    }
}
