//! `ip:port` endpoints in one canonical spelling, so that an instance from Nacos,
//! a pin header and a host known to the gateway compare as plain strings.

use std::net::{IpAddr, SocketAddr};

/// Longest text worth parsing as an endpoint (`[v6%scope]:port` fits well within).
const MAX_ENDPOINT_LEN: usize = 64;

/// Canonical `ip:port` (`[v6]:port` for IPv6) of an IP text and a port.
/// `None` when the IP is not an IP or the port is outside 1..=65535.
pub fn from_parts(ip: &str, port: i64) -> Option<String> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let ip: IpAddr = ip.trim().parse().ok()?;
    Some(SocketAddr::new(ip, port).to_string())
}

/// Canonical form of an `ip:port` text such as a pin header; `None` when it is not one.
pub fn parse(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_ENDPOINT_LEN {
        return None;
    }
    let addr: SocketAddr = text.parse().ok()?;
    if addr.port() == 0 {
        return None;
    }
    Some(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn ipv4_and_ipv6_parts_become_canonical_text() {
        assert_eq!(
            from_parts("10.0.0.1", 8080).as_deref(),
            Some("10.0.0.1:8080")
        );
        assert_eq!(from_parts(" ::1 ", 80).as_deref(), Some("[::1]:80"));
        assert_eq!(
            from_parts("2001:DB8:0:0::1", 443).as_deref(),
            Some("[2001:db8::1]:443")
        );
    }

    #[test]
    fn bad_ips_and_ports_are_refused() {
        assert_eq!(from_parts("not-an-ip", 80), None);
        assert_eq!(from_parts("10.0.0.256", 80), None);
        assert_eq!(from_parts("10.0.0.1", 0), None);
        assert_eq!(from_parts("10.0.0.1", 65536), None);
        assert_eq!(from_parts("10.0.0.1", -1), None);
    }

    #[test]
    fn pin_texts_parse_to_the_same_spelling_as_instances() {
        assert_eq!(parse("10.0.0.1:8080"), from_parts("10.0.0.1", 8080));
        assert_eq!(parse("[0:0::1]:80"), from_parts("::1", 80));
        assert_eq!(parse("  10.0.0.1:8080 "), from_parts("10.0.0.1", 8080));
    }

    #[test]
    fn pin_texts_that_are_not_endpoints_are_refused() {
        for text in [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "host.example:80",
            "::1:80",
            "10.0.0.1:80,10.0.0.2:80",
            &"1".repeat(10_000),
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
