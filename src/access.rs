//! Who may push: the shared token and the peer CIDR allowlist (SPEC §6). Pure functions.

use std::borrow::Cow;
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

/// The header that carries the token, `X-Cmqhook-Token`, in the lower case that
/// `HeaderName::from_static` requires (header names are case-insensitive).
pub const TOKEN_HEADER: &str = "x-cmqhook-token";

/// The token a push carries, from `X-Cmqhook-Token`, `Authorization: Bearer` (the scheme in
/// any case) or `?token=` (form-urlencoded, so `%2B` is `+` and `+` is a space), in that order.
pub fn presented_token<'a>(
    query: &'a str,
    header: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once([' ', '\t'])?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim_start_matches([' ', '\t']))
    });
    header.or(bearer).map(Cow::Borrowed).or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find_map(|(key, value)| (key == "token").then_some(value))
    })
}

/// Compares in constant time. Both sides are hashed-length-free: the comparison covers the
/// longer length so that timing does not reveal where they differ or how long the token is.
pub fn token_matches(expected: &str, presented: Option<impl AsRef<str>>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), presented.as_ref().as_bytes());
    let len = a.len().max(b.len());
    let mut padded_a = vec![0u8; len];
    let mut padded_b = vec![0u8; len];
    padded_a[..a.len()].copy_from_slice(a);
    padded_b[..b.len()].copy_from_slice(b);
    let same_bytes: bool = padded_a.ct_eq(&padded_b).into();
    same_bytes & (a.len() == b.len())
}

/// Why a trusted proxy's `X-Forwarded-For` cannot be believed: the push is refused (400)
/// rather than taken as coming from the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadForwardedFor {
    #[error("X-Forwarded-For from a trusted proxy is not valid UTF-8")]
    NotText,
    #[error("X-Forwarded-For from a trusted proxy has an entry that is not an IP address")]
    NotAnAddress,
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy. `forwarded_for` is every line
/// of the header joined into one list ([`crate::cmq::header_text`]).
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Result<Option<&str>, std::str::Utf8Error>,
    trusted: &[IpNet],
) -> Result<IpAddr, BadForwardedFor> {
    let peer = canonical(peer);
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return Ok(peer);
    }
    let header = forwarded_for.map_err(|_| BadForwardedFor::NotText)?;
    let mut client = peer;
    // Empty list items are ignored (RFC 9110 §5.6.1).
    let entries = header.unwrap_or_default().rsplit(',').map(str::trim);
    for entry in entries.filter(|entry| !entry.is_empty()) {
        // Some proxies add the client's port.
        let address = entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|addr| addr.ip()))
            .map_err(|_| BadForwardedFor::NotAnAddress)?;
        client = canonical(address);
        if !trusted.iter().any(|net| net.contains(&client)) {
            return Ok(client);
        }
    }
    Ok(client)
}

/// Whether `client` may push; an empty allowlist admits everyone.
pub fn allowed(client: IpAddr, allow: &[IpNet]) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.contains(&canonical(client)))
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it maps
/// (`10.0.0.0/8`), so that it matches IPv4 clients, which are compared as IPv4.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map_or(net, |v4| IpNet::V4(v4.trunc())),
            None => net,
        },
        other => other,
    }
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

    fn presented<'a>(
        query: &'a str,
        header: Option<&'a str>,
        authorization: Option<&'a str>,
    ) -> Option<String> {
        presented_token(query, header, authorization).map(Cow::into_owned)
    }

    #[test]
    fn the_token_is_found_in_each_place() {
        assert_eq!(presented("a=1&token=s3", None, None).as_deref(), Some("s3"));
        assert_eq!(presented("", Some("h"), None).as_deref(), Some("h"));
        assert_eq!(presented("", None, Some("Bearer b")).as_deref(), Some("b"));
        assert_eq!(presented("", None, Some("Basic b")), None);
        assert_eq!(presented("", None, None), None);
    }

    #[test]
    fn the_query_token_is_percent_decoded() {
        assert_eq!(
            presented("token=a%2Bb%2Fc", None, None).as_deref(),
            Some("a+b/c")
        );
        assert_eq!(
            presented("x=1&token=a+b", None, None).as_deref(),
            Some("a b")
        );
        assert_eq!(presented("tok%65n=s3", None, None).as_deref(), Some("s3"));
        assert_eq!(presented("notoken=s3", None, None), None);
        assert!(token_matches(
            "a+b/c",
            presented_token("token=a%2Bb%2Fc", None, None)
        ));
        assert!(!token_matches(
            "a+b/c",
            presented_token("token=a+b/c", None, None)
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for authorization in ["bearer b", "BEARER b", "BeArEr  b", "Bearer\tb"] {
            assert_eq!(
                presented("", None, Some(authorization)).as_deref(),
                Some("b"),
                "{authorization}"
            );
        }
        assert_eq!(presented("", None, Some("Bearerb")), None);
        assert_eq!(presented("", None, Some("Bearer")), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client = |peer: &str, xff: Option<&str>| client_address(ip(peer), Ok(xff), &trusted);
        let xff = Some("6.6.6.6, 1.2.3.4, 10.0.0.2");
        assert_eq!(client("10.0.0.1", xff), Ok(ip("1.2.3.4")));
        assert_eq!(client("8.8.8.8", xff), Ok(ip("8.8.8.8")));
        assert_eq!(client("10.0.0.1", None), Ok(ip("10.0.0.1")));
        assert_eq!(
            client("::ffff:10.0.0.1", Some("1.2.3.4")),
            Ok(ip("1.2.3.4"))
        );
        // Two header lines, joined: the rightmost untrusted entry is the second line's.
        assert_eq!(
            client("10.0.0.1", Some("10.0.0.5, 6.6.6.6")),
            Ok(ip("6.6.6.6"))
        );
        assert_eq!(
            client("10.0.0.1", Some("1.2.3.4:5678, ,")),
            Ok(ip("1.2.3.4"))
        );
        assert_eq!(client("10.0.0.1", Some("[::1]:80")), Ok(ip("::1")));
    }

    #[test]
    fn a_trusted_proxys_forwarded_for_that_cannot_be_read_fails_closed() {
        let trusted = nets(&["10.0.0.0/8"]);
        #[allow(invalid_from_utf8, reason = "the error is what the test needs")]
        let not_text = std::str::from_utf8(b"a\xff").map(Some);
        assert_eq!(
            client_address(ip("10.0.0.1"), not_text, &trusted),
            Err(BadForwardedFor::NotText)
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Ok(Some("1.2.3.4, unknown")), &trusted),
            Err(BadForwardedFor::NotAnAddress)
        );
        // From anyone else it is not read at all.
        assert_eq!(
            client_address(ip("8.8.8.8"), not_text, &trusted),
            Ok(ip("8.8.8.8"))
        );
    }

    #[test]
    fn mapped_networks_are_read_as_ipv4() {
        let net = |text: &str| canonical_net(text.parse().expect("cidr"));
        assert_eq!(net("::ffff:127.0.0.1/128"), nets(&["127.0.0.1/32"])[0]);
        assert_eq!(net("::ffff:10.1.2.3/104"), nets(&["10.0.0.0/8"])[0]);
        assert_eq!(net("2001:db8::/32"), nets(&["2001:db8::/32"])[0]);
        assert_eq!(net("10.0.0.0/8"), nets(&["10.0.0.0/8"])[0]);
        assert!(allowed(ip("127.0.0.1"), &[net("::ffff:127.0.0.1/128")]));
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
