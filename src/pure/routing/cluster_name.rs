//! Higress's Envoy cluster names, `outbound|<port>|<subset>|<fqdn>` (Istio's
//! format): read by rule matching, by `guardNacosRoutes`, and for the default
//! `:authority` of the Nacos cluster.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterName<'a> {
    pub port: &'a str,
    pub host: &'a str,
}

/// The port and host of a four-part cluster name; `None` for any other name.
pub fn parse(name: &str) -> Option<ClusterName<'_>> {
    let mut parts = name.split('|');
    let (Some(_direction), Some(port), Some(_subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(ClusterName { port, host })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn four_parts_or_nothing() {
        assert_eq!(
            parse("outbound|8080||demo.dns"),
            Some(ClusterName {
                port: "8080",
                host: "demo.dns"
            })
        );
        for other in ["demo", "a|b|c", "a|b|c|d|e", ""] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
