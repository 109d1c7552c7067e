//! `listen` and `--listen`: an `IP:PORT`, or a `HOST:PORT` that `serve` resolves when it starts
//! (and binds every address of). Parsing is pure; only [`Listen::resolve`] asks the resolver.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Where `serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Addr(SocketAddr),
    /// A host name, resolved when `serve` starts.
    Host {
        host: String,
        port: u16,
    },
}

/// A `listen` value that is neither `IP:PORT` nor `HOST:PORT`. Its message is the expected form
/// with examples; it does not repeat the value, which may hold an expanded variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected IP:PORT or HOST:PORT, e.g. `127.0.0.1:9000`, `[::1]:9000` or `localhost:9000`")]
pub struct ListenError;

impl FromStr for Listen {
    type Err = ListenError;

    fn from_str(text: &str) -> Result<Listen, ListenError> {
        if let Ok(addr) = text.parse() {
            return Ok(Listen::Addr(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or(ListenError)?;
        let port = port.parse().map_err(|_| ListenError)?;
        // Letters, digits, `-`, `.` and `_` (as /etc/hosts and container names use): an IPv6
        // address without brackets, or a URL, is none.
        let is_name = !host.is_empty()
            && !host.starts_with(['-', '.'])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !is_name {
            return Err(ListenError);
        }
        Ok(Listen::Host {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Addr(addr) => addr.fmt(f),
            Listen::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Listen {
    /// Whether only this machine can connect: a loopback IP, or `localhost` (and names under
    /// `.localhost`, RFC 6761). Any other name counts as reachable from elsewhere; nothing is
    /// resolved.
    pub fn is_loopback(&self) -> bool {
        match self {
            Listen::Addr(addr) => addr.ip().is_loopback(),
            Listen::Host { host, .. } => {
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                host == "localhost" || host.ends_with(".localhost")
            }
        }
    }

    /// Whether a listener on `self` and one on `other` would take the same port of the same
    /// address, as far as can be told without resolving: the same port (0, any free port,
    /// never clashes) on the same host, on an unspecified address (`0.0.0.0`, `[::]`) and
    /// any other, or on two loopback spellings.
    pub fn overlaps(&self, other: &Listen) -> bool {
        let (port, other_port) = (self.port(), other.port());
        if port == 0 || port != other_port {
            return false;
        }
        let unspecified =
            |listen: &Listen| matches!(listen, Listen::Addr(addr) if addr.ip().is_unspecified());
        let host = |listen: &Listen| match listen {
            Listen::Addr(addr) => addr.ip().to_string(),
            Listen::Host { host, .. } => {
                host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
            }
        };
        unspecified(self)
            || unspecified(other)
            || (self.is_loopback() && other.is_loopback())
            || host(self) == host(other)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Listen::Addr(addr) => addr.port(),
            Listen::Host { port, .. } => *port,
        }
    }

    /// Every address to bind, in the resolver's order, without repeats; an error when a name
    /// resolves to nothing.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = match self {
            Listen::Addr(addr) => return Ok(vec![*addr]),
            Listen::Host { host, port } => (host.as_str(), *port).to_socket_addrs()?.collect(),
        };
        let mut addrs = Vec::with_capacity(found.len());
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolves to no address",
            ));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_port_and_host_port_are_read() {
        assert_eq!(
            "127.0.0.1:9000".parse(),
            Ok(Listen::Addr(SocketAddr::from(([127, 0, 0, 1], 9000))))
        );
        assert_eq!(
            "[::1]:80".parse::<Listen>().map(|l| l.to_string()),
            Ok("[::1]:80".to_owned())
        );
        assert_eq!(
            "localhost:9000".parse(),
            Ok(Listen::Host {
                host: "localhost".to_owned(),
                port: 9000
            })
        );
        assert_eq!(
            "cmq-hook_1.internal:0"
                .parse::<Listen>()
                .map(|l| l.to_string()),
            Ok("cmq-hook_1.internal:0".to_owned())
        );
    }

    #[test]
    fn other_forms_are_refused_with_an_example() {
        for bad in [
            "",
            "bad",
            "127.0.0.1",
            "localhost:",
            "localhost:65536",
            "localhost:http",
            ":9000",
            "::1:9000",
            "http://localhost:9000",
            "a host:9000",
            "-x:9000",
        ] {
            let err = bad.parse::<Listen>().expect_err(bad);
            assert!(err.to_string().contains("`localhost:9000`"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_loopback_ips_and_localhost_are_loopback() {
        for (text, loopback) in [
            ("127.0.0.1:1", true),
            ("[::1]:1", true),
            ("0.0.0.0:1", false),
            ("localhost:1", true),
            ("LocalHost.:1", true),
            ("api.localhost:1", true),
            ("example.com:1", false),
            ("localhost.example.com:1", false),
        ] {
            let listen: Listen = text.parse().expect(text);
            assert_eq!(listen.is_loopback(), loopback, "{text}");
        }
    }

    #[test]
    fn listeners_overlap_on_one_port_of_one_address_an_unspecified_one_or_two_loopbacks() {
        let overlap = |a: &str, b: &str| {
            let (a, b): (Listen, Listen) = (a.parse().expect(a), b.parse().expect(b));
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "{a} {b}: symmetric");
            a.overlaps(&b)
        };
        assert!(overlap("127.0.0.1:9000", "127.0.0.1:9000"));
        assert!(overlap("0.0.0.0:9000", "10.0.0.5:9000"));
        assert!(overlap("[::]:9000", "127.0.0.1:9000"));
        assert!(overlap("localhost:9000", "127.0.0.1:9000"));
        assert!(overlap("Host.example:9000", "host.example.:9000"));
        assert!(!overlap("127.0.0.1:9000", "127.0.0.1:9001"));
        assert!(
            !overlap("127.0.0.1:0", "127.0.0.1:0"),
            "any free port: two of them"
        );
        assert!(!overlap("10.0.0.5:9000", "10.0.0.6:9000"));
    }

    #[test]
    fn localhost_resolves_to_loopback_addresses_only_once_each() {
        let addrs = Listen::Host {
            host: "localhost".to_owned(),
            port: 9000,
        }
        .resolve()
        .expect("localhost resolves");
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|addr| addr.ip().is_loopback()),
            "{addrs:?}"
        );
        assert!(addrs.iter().all(|addr| addr.port() == 9000), "{addrs:?}");
        let mut unique = addrs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), addrs.len(), "{addrs:?}");
    }
}
