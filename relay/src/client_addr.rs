//! Who a request comes from, for per-address limits.
//!
//! - Behind a reverse proxy every connection comes from the proxy. When the peer is one
//!   of `limits.trusted_proxies`, the client is read from the proxy's `Forwarded`
//!   (RFC 7239) or, without it, `X-Forwarded-For` header: walking the list from its end,
//!   the first address that is not a trusted proxy. From any other peer those headers
//!   are ignored, since anyone can send them.
//! - IPv6 addresses count by their /64 prefix: one home connection or one server gets a
//!   whole /64, and would otherwise have 2⁶⁴ addresses to spread sessions over.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;

/// The client's address: `peer`, or what a trusted proxy says it forwarded for.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer = unmapped(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops = forwarded_hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop a proxy wrote but nobody can read: the client is unknown, so it counts
        // as the last proxy that can be named.
        let Some(hop) = hop else { break };
        client = unmapped(*hop);
        if !trusted.contains(&client) {
            break;
        }
    }
    client
}

/// The address that per-address limits count: IPv4 as it is, IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarded-for chain, client first, from `Forwarded` or else `X-Forwarded-For`
/// (every header line, in order); `None` for a hop that is not an address (`unknown`,
/// an obfuscated name, garbage).
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                let value = element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
                });
                value.and_then(parse_node)
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// An address, with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxy = ip("127.0.0.1");
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_ip(proxy, &xff, &[]), proxy, "no proxy trusted: the header is ignored");
        assert_eq!(client_ip(ip("198.51.100.1"), &xff, &[proxy]), ip("198.51.100.1"), "not from the proxy");
        assert_eq!(client_ip(proxy, &xff, &[proxy]), ip("10.0.0.2"), "the hop the proxy saw");
        assert_eq!(client_ip(proxy, &xff, &[proxy, ip("10.0.0.2")]), ip("203.0.113.7"), "through two proxies");
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1")]);
        assert_eq!(client_ip(proxy, &spoofed, &[proxy]), proxy, "every hop trusted: the last one named");
        let forwarded = headers(&[("forwarded", "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(client_ip(proxy, &forwarded, &[proxy]), ip("2001:db8:cafe::17"));
        let both = headers(&[("forwarded", "for=192.0.2.60"), ("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client_ip(proxy, &both, &[proxy]), ip("192.0.2.60"), "Forwarded wins");
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, not-an-address")]);
        assert_eq!(client_ip(proxy, &garbage, &[proxy]), proxy, "an unreadable hop leaves the proxy");
        let mapped = ip("::ffff:127.0.0.1");
        assert_eq!(client_ip(mapped, &xff, &[proxy]), ip("10.0.0.2"), "IPv4-mapped peers are IPv4");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), limit_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(limit_key(ip("2001:db8:1:2::1")), limit_key(ip("2001:db8:1:3::1")));
        assert_eq!(limit_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
