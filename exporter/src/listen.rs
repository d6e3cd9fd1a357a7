//! The `--listen` address: `HOST:PORT`, an IP address and port, or `:PORT`, the forms other
//! exporters (node_exporter and the Go exporter toolkit) take.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;

/// Where to serve HTTP, as written on the command line. A host name is resolved when the
/// exporter binds ([`Listen::resolve`]), so that a name that does not resolve is reported as
/// such, with the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// `:PORT`: every interface, IPv6 and IPv4.
    Any,
    Ip(IpAddr),
    Name(String),
}

const SYNTAX: &str = "expected HOST:PORT, IPV4:PORT, [IPV6]:PORT or :PORT \
                      (e.g. localhost:9470, 127.0.0.1:9470, [::1]:9470, :9470)";

/// Why `--listen` is not an address to listen on; each part holds the text it refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadListen {
    /// No `:PORT` at all.
    #[error("{SYNTAX}")]
    Syntax,
    /// The part after the last colon is not a port number.
    #[error("invalid port {0:?}: {SYNTAX}")]
    Port(String),
    /// Something bracketed or with colons that is no IPv6 address.
    #[error("invalid IPv6 address {0:?}: {SYNTAX}")]
    Ipv6(String),
    /// Neither an IP address nor a host name.
    #[error("invalid host {0:?}: {SYNTAX}")]
    Host(String),
}

impl Listen {
    /// Every IPv4 interface on `port`: the default, `0.0.0.0:PORT`.
    pub fn any_ipv4(port: u16) -> Listen {
        Listen::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    /// The port asked for (0: any free one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this is `:PORT`, every interface.
    pub fn is_any(&self) -> bool {
        self.host == Host::Any
    }

    /// The address to bind. `:PORT` is `[::]:PORT`, which also takes IPv4 where the host has
    /// IPv6 (the caller falls back to `0.0.0.0` where it has not). A host name binds its first
    /// IPv4 address, else its first IPv6 one, as Go's `net.Listen` (and so other exporters)
    /// does: one socket, and the address scrapers of `localhost` try first.
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        match &self.host {
            Host::Any => Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, self.port))),
            Host::Ip(ip) => Ok(SocketAddr::new(*ip, self.port)),
            Host::Name(name) => {
                let addrs: Vec<SocketAddr> =
                    (name.as_str(), self.port).to_socket_addrs()?.collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| addrs.first())
                    .copied()
                    .ok_or_else(|| io::Error::other("the name has no address"))
            }
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl FromStr for Listen {
    type Err = BadListen;

    fn from_str(s: &str) -> Result<Listen, BadListen> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Listen::from(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or(BadListen::Syntax)?;
        let port = port
            .parse::<u16>()
            .map_err(|_| BadListen::Port(port.to_owned()))?;
        let host = if host.is_empty() {
            Host::Any
        } else if host.starts_with('[') || host.contains(':') {
            // A valid bracketed IPv6 address parsed above, with its port.
            return Err(BadListen::Ipv6(host.to_owned()));
        } else if is_host_name(host) {
            Host::Name(host.to_owned())
        } else {
            return Err(BadListen::Host(host.to_owned()));
        };
        Ok(Listen { host, port })
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels: what a resolver can look up. Anything
/// else is a typo better reported now than as a failed lookup.
fn is_host_name(host: &str) -> bool {
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Any => write!(f, ":{}", self.port),
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Listen {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn listen_accepts_a_host_name_and_localhost_resolves_to_loopback() {
        let l = parse("localhost:9470");
        assert_eq!(l.to_string(), "localhost:9470");
        let addr = l.resolve().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert!(addr.is_ipv4(), "an IPv4 address first, as Go does: {addr}");
        assert_eq!(addr.port(), 9470);
        assert_eq!(parse("metrics-1.example.internal:80").port(), 80);
    }

    #[test]
    fn listen_accepts_a_bare_port_as_every_interface() {
        let l = parse(":9470");
        assert!(l.is_any());
        assert_eq!(l.to_string(), ":9470");
        let addr = l.resolve().unwrap();
        assert!(addr.ip().is_unspecified() && addr.port() == 9470, "{addr}");
    }

    #[test]
    fn listen_accepts_ip_literals() {
        assert_eq!(
            parse("127.0.0.1:9470").resolve().unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 9470))
        );
        assert_eq!(
            parse("[::1]:9470").resolve().unwrap(),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 9470))
        );
        assert_eq!(parse("0.0.0.0:9470"), Listen::any_ipv4(9470));
        assert_eq!(parse("[::1]:9470").to_string(), "[::1]:9470");
    }

    #[test]
    fn listen_refuses_what_is_not_an_address_naming_the_fault() {
        for (bad, says) in [
            ("nonsense", "expected HOST:PORT"),
            ("9470", "expected HOST:PORT"),
            ("localhost:", "invalid port"),
            ("localhost:99999", "invalid port"),
            (":http", "invalid port"),
            ("::1:9470", "invalid IPv6 address"),
            ("[::1:9470", "invalid IPv6 address"),
            ("[nope]:9470", "invalid IPv6 address"),
            ("a b:9470", "invalid host"),
            ("host..name:9470", "invalid host"),
        ] {
            let e = bad.parse::<Listen>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_unknown_host_fails_when_resolved() {
        let l = parse("no-such-host.invalid:9470");
        assert!(l.resolve().is_err());
    }
}
