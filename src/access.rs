//! Who may push: the shared token and the peer CIDR allowlist (SPEC §6). Pure functions.

use std::net::IpAddr;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

/// Why a push is refused before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: the token is missing or wrong.
    Token,
    /// 403: the client is not in `allow`.
    Address,
}

/// The token a push carries, from `?token=`, `X-Cmqhook-Token` or `Authorization: Bearer`.
pub fn presented_token<'a>(
    query: &'a str,
    header: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    let from_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="));
    let bearer = authorization.and_then(|value| {
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
    });
    header.or(bearer).or(from_query)
}

/// Compares in constant time. Both sides are hashed-length-free: the comparison covers the
/// longer length so that timing does not reveal where they differ or how long the token is.
pub fn token_matches(expected: &str, presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    let len = a.len().max(b.len());
    let mut padded_a = vec![0u8; len];
    let mut padded_b = vec![0u8; len];
    padded_a[..a.len()].copy_from_slice(a);
    padded_b[..b.len()].copy_from_slice(b);
    let same_bytes: bool = padded_a.ct_eq(&padded_b).into();
    same_bytes & (a.len() == b.len())
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in header.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = canonical(address);
                if !trusted.iter().any(|net| net.contains(&client)) {
                    return client;
                }
            }
            // An unparsable entry ends what can be believed.
            Err(_) => return client,
        }
    }
    client
}

/// Whether `client` may push; an empty allowlist admits everyone.
pub fn allowed(client: IpAddr, allow: &[IpNet]) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.contains(&canonical(client)))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn the_token_is_found_in_each_place() {
        assert_eq!(presented_token("a=1&token=s3", None, None), Some("s3"));
        assert_eq!(presented_token("", Some("h"), None), Some("h"));
        assert_eq!(presented_token("", None, Some("Bearer b")), Some("b"));
        assert_eq!(presented_token("", None, Some("Basic b")), None);
        assert_eq!(presented_token("", None, None), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("secret", Some("secret")));
        assert!(!token_matches("secret", Some("secre")));
        assert!(!token_matches("secret", Some("secret2")));
        assert!(!token_matches("secret", Some("")));
        assert!(!token_matches("secret", None));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = Some("6.6.6.6, 1.2.3.4, 10.0.0.2");
        assert_eq!(client_address(ip("10.0.0.1"), xff, &trusted), ip("1.2.3.4"));
        assert_eq!(client_address(ip("8.8.8.8"), xff, &trusted), ip("8.8.8.8"));
        assert_eq!(
            client_address(ip("10.0.0.1"), None, &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn the_allowlist_admits_cidrs_and_mapped_addresses() {
        let allow = nets(&["192.168.0.0/16", "2001:db8::/32"]);
        assert!(allowed(ip("192.168.3.4"), &allow));
        assert!(allowed(ip("::ffff:192.168.3.4"), &allow));
        assert!(allowed(ip("2001:db8::1"), &allow));
        assert!(!allowed(ip("10.1.1.1"), &allow));
        assert!(allowed(ip("10.1.1.1"), &[]));
    }
}
