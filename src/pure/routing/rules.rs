//! Which configuration applies to a request, the way Higress decides it: rules in
//! order, first match wins, then the global configuration if there is one, else
//! nothing (the plugin stays out of the request).

use crate::pure::hashing::WordMap;

use crate::pure::routing::cluster_name::{self, ClusterName};

/// What a request offers to be matched on. The host reads each fact only when a
/// rule asks for it.
pub trait RequestFacts {
    /// The `route_name` property.
    fn route_name(&mut self) -> Option<&str>;
    /// The `:authority` header.
    fn authority(&mut self) -> Option<&str>;
    /// The `cluster_name` property, `outbound|port|subset|fqdn` in Higress.
    fn cluster_name(&mut self) -> Option<&str>;
}

/// A `_match_service_` entry: `fqdn` or `fqdn:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePattern {
    fqdn: String,
    port: Option<String>,
}

impl ServicePattern {
    pub fn parse(entry: &str) -> Self {
        match entry.rsplit_once(':') {
            Some((fqdn, port)) => Self {
                fqdn: fqdn.to_string(),
                port: Some(port.to_string()),
            },
            None => Self {
                fqdn: entry.to_string(),
                port: None,
            },
        }
    }

    fn matches(&self, cluster_name: &str) -> bool {
        let Some(ClusterName { port, host }) = cluster_name::parse(cluster_name) else {
            return false;
        };
        host == self.fqdn && self.port.as_deref().is_none_or(|wanted| wanted == port)
    }
}

/// How one rule selects requests. When a Higress rule carries several keys, the
/// Higress Go SDK reads them in this order: route (with service, both must match),
/// domain, service, route prefix; so does this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Route(Vec<String>),
    RouteAndService(Vec<String>, Vec<ServicePattern>),
    Domain(Vec<String>),
    Service(Vec<ServicePattern>),
    RoutePrefix(Vec<String>),
}

impl Matcher {
    /// Build from a rule's key lists; `None` when all are empty.
    pub fn from_keys(
        routes: Vec<String>,
        domains: Vec<String>,
        services: Vec<String>,
        route_prefixes: Vec<String>,
    ) -> Option<Self> {
        let services: Vec<ServicePattern> = services
            .iter()
            .map(|entry| ServicePattern::parse(entry))
            .collect();
        if !routes.is_empty() && !services.is_empty() {
            Some(Self::RouteAndService(routes, services))
        } else if !routes.is_empty() {
            Some(Self::Route(routes))
        } else if !domains.is_empty() {
            Some(Self::Domain(domains))
        } else if !services.is_empty() {
            Some(Self::Service(services))
        } else if !route_prefixes.is_empty() {
            Some(Self::RoutePrefix(route_prefixes))
        } else {
            None
        }
    }

    pub fn matches(&self, facts: &mut dyn RequestFacts) -> bool {
        match self {
            Self::Route(routes) => route_in(routes, facts),
            Self::RouteAndService(routes, services) => {
                route_in(routes, facts) && service_in(services, facts)
            }
            Self::Domain(domains) => facts.authority().is_some_and(|authority| {
                let host = strip_port(authority);
                domains.iter().any(|pattern| domain_matches(pattern, host))
            }),
            Self::Service(services) => service_in(services, facts),
            Self::RoutePrefix(prefixes) => facts.route_name().is_some_and(|route| {
                prefixes
                    .iter()
                    .any(|prefix| route.starts_with(prefix.as_str()))
            }),
        }
    }
}

fn route_in(routes: &[String], facts: &mut dyn RequestFacts) -> bool {
    facts
        .route_name()
        .is_some_and(|route| routes.iter().any(|name| name == route))
}

fn service_in(services: &[ServicePattern], facts: &mut dyn RequestFacts) -> bool {
    facts
        .cluster_name()
        .is_some_and(|cluster| services.iter().any(|pattern| pattern.matches(cluster)))
}

/// `*` matches every host, `*x` hosts ending in `x`, `x*` hosts starting with `x`,
/// anything else the host exactly (case-sensitive, as in Higress).
fn domain_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        host.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        host.starts_with(prefix)
    } else {
        pattern == host
    }
}

/// The host of an `:authority`, without its port; IPv6 literals keep their brackets.
fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(colon) if authority.rfind(']').is_none_or(|bracket| bracket < colon) => {
            authority.get(..colon).unwrap_or(authority)
        }
        _ => authority,
    }
}

/// The scope for a request: the first rule that matches, else the global one.
/// The reference semantics that [`RuleSet::select`] must reproduce.
#[cfg(test)]
fn select<'a, T>(
    rules: &'a [(Matcher, T)],
    global: Option<&'a T>,
    facts: &mut dyn RequestFacts,
) -> Option<&'a T> {
    rules
        .iter()
        .find(|(matcher, _)| matcher.matches(facts))
        .map(|(_, scope)| scope)
        .or(global)
}

/// Rules with an index of the plain `_match_route_` ones, so that a gateway with a
/// thousand route rules pays one lookup per request, not a thousand comparisons,
/// with the same answer as trying the rules in order (checked against that in the tests).
#[derive(Debug, Clone)]
pub struct RuleSet<T> {
    rules: Vec<(Matcher, T)>,
    /// Route name → the first plain route rule that names it.
    first_by_route: WordMap<String, usize>,
    /// Every other rule, in order; they are tried one by one.
    others: Vec<usize>,
}

impl<T> Default for RuleSet<T> {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            first_by_route: WordMap::default(),
            others: Vec::new(),
        }
    }
}

impl<T> RuleSet<T> {
    pub fn push(&mut self, matcher: Matcher, scope: T) {
        let index = self.rules.len();
        match &matcher {
            Matcher::Route(routes) => {
                for route in routes {
                    self.first_by_route.entry(route.clone()).or_insert(index);
                }
            }
            _ => self.others.push(index),
        }
        self.rules.push((matcher, scope));
    }

    pub fn select<'a>(
        &'a self,
        global: Option<&'a T>,
        facts: &mut dyn RequestFacts,
    ) -> Option<&'a T> {
        let by_route = if self.first_by_route.is_empty() {
            None
        } else {
            facts
                .route_name()
                .and_then(|route| self.first_by_route.get(route).copied())
        };
        let first_other = self
            .others
            .iter()
            .copied()
            .take_while(|index| by_route.is_none_or(|route_index| *index < route_index))
            .find(|index| {
                self.rules
                    .get(*index)
                    .is_some_and(|(matcher, _)| matcher.matches(facts))
            });
        first_other
            .or(by_route)
            .and_then(|index| self.rules.get(index))
            .map(|(_, scope)| scope)
            .or(global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[derive(Default)]
    struct Facts {
        route: Option<&'static str>,
        authority: Option<&'static str>,
        cluster: Option<&'static str>,
    }

    impl RequestFacts for Facts {
        fn route_name(&mut self) -> Option<&str> {
            self.route
        }
        fn authority(&mut self) -> Option<&str> {
            self.authority
        }
        fn cluster_name(&mut self) -> Option<&str> {
            self.cluster
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn domain(patterns: &[&str], authority: &'static str) -> bool {
        Matcher::Domain(strings(patterns)).matches(&mut Facts {
            authority: Some(authority),
            ..Facts::default()
        })
    }

    fn service(patterns: &[&str], cluster: &'static str) -> bool {
        let matcher = Matcher::from_keys(vec![], vec![], strings(patterns), vec![]).unwrap();
        matcher.matches(&mut Facts {
            cluster: Some(cluster),
            ..Facts::default()
        })
    }

    #[test]
    fn route_matches_exact_name_only() {
        let matcher = Matcher::Route(strings(&["default/demo"]));
        let mut demo = Facts {
            route: Some("default/demo"),
            ..Facts::default()
        };
        let mut other = Facts {
            route: Some("default/demo2"),
            ..Facts::default()
        };
        assert!(matcher.matches(&mut demo));
        assert!(!matcher.matches(&mut other));
        assert!(!matcher.matches(&mut Facts::default()));
    }

    #[test]
    fn route_prefix_matches_the_start_of_the_name() {
        let matcher = Matcher::RoutePrefix(strings(&["default/api-"]));
        let mut api = Facts {
            route: Some("default/api-orders"),
            ..Facts::default()
        };
        let mut web = Facts {
            route: Some("default/web"),
            ..Facts::default()
        };
        assert!(matcher.matches(&mut api));
        assert!(!matcher.matches(&mut web));
    }

    #[test]
    fn domains_match_exact_suffix_prefix_and_ignore_the_port() {
        assert!(domain(&["shop.example.com"], "shop.example.com"));
        assert!(domain(&["shop.example.com"], "shop.example.com:8080"));
        assert!(!domain(&["shop.example.com"], "api.shop.example.com"));
        assert!(domain(&["*.example.com"], "api.example.com:443"));
        assert!(!domain(&["*.example.com"], "example.org"));
        assert!(domain(&["shop.*"], "shop.example.org"));
        assert!(!domain(&["shop.*"], "www.shop.org"));
        assert!(domain(&["*"], "anything"));
        assert!(!domain(&["Shop.example.com"], "shop.example.com"));
        assert!(!domain(&["shop.example.com:8080"], "shop.example.com:8080"));
    }

    #[test]
    fn ipv6_authority_keeps_its_brackets() {
        assert!(domain(&["[::1]"], "[::1]:8080"));
        assert!(domain(&["[::1]"], "[::1]"));
    }

    #[test]
    fn service_matches_fqdn_or_fqdn_and_port() {
        let cluster = "outbound|8080||demo.default.svc.cluster.local";
        assert!(service(&["demo.default.svc.cluster.local"], cluster));
        assert!(service(&["demo.default.svc.cluster.local:8080"], cluster));
        assert!(!service(&["demo.default.svc.cluster.local:9090"], cluster));
        assert!(!service(&["other.default.svc.cluster.local"], cluster));
        assert!(!service(&["demo.dns"], "demo.dns"));
        assert!(!service(&["demo.dns"], "outbound|80|x|demo.dns|extra"));
    }

    #[test]
    fn route_with_service_needs_both() {
        let matcher = Matcher::from_keys(
            strings(&["r"]),
            strings(&["d"]),
            strings(&["s.dns"]),
            vec![],
        )
        .unwrap();
        let mut both = Facts {
            route: Some("r"),
            cluster: Some("outbound|80||s.dns"),
            authority: Some("x"),
        };
        let mut route_only = Facts {
            route: Some("r"),
            cluster: Some("outbound|80||t.dns"),
            authority: Some("d"),
        };
        assert!(matcher.matches(&mut both));
        assert!(!matcher.matches(&mut route_only));
    }

    #[test]
    fn key_precedence_follows_higress() {
        let route_over_domain =
            Matcher::from_keys(strings(&["r"]), strings(&["d"]), vec![], strings(&["p"]));
        assert_eq!(route_over_domain, Some(Matcher::Route(strings(&["r"]))));
        let domain_over_service =
            Matcher::from_keys(vec![], strings(&["d"]), strings(&["s"]), vec![]);
        assert_eq!(domain_over_service, Some(Matcher::Domain(strings(&["d"]))));
        assert_eq!(Matcher::from_keys(vec![], vec![], vec![], vec![]), None);
    }

    #[test]
    fn indexed_rules_answer_exactly_as_the_linear_scan() {
        let rules = vec![
            (Matcher::Route(strings(&["a", "b"])), 1),
            (Matcher::Domain(strings(&["*.example.com"])), 2),
            (Matcher::Route(strings(&["c", "a"])), 3),
            (Matcher::RoutePrefix(strings(&["c"])), 4),
            (Matcher::Route(strings(&["d"])), 5),
        ];
        let mut set = RuleSet::default();
        for (matcher, scope) in rules.clone() {
            set.push(matcher, scope);
        }
        for route in ["a", "b", "c", "d", "cx", "z"] {
            for authority in ["x.example.com", "example.org"] {
                let facts = || Facts {
                    route: Some(route),
                    authority: Some(authority),
                    ..Facts::default()
                };
                for global in [None, Some(&9)] {
                    assert_eq!(
                        set.select(global, &mut facts()),
                        select(&rules, global, &mut facts()),
                        "{route} {authority}"
                    );
                }
            }
        }
        assert_eq!(
            RuleSet::<u8>::default().select(None, &mut Facts::default()),
            None
        );
    }

    #[test]
    fn first_matching_rule_wins_then_global_then_nothing() {
        let rules = vec![
            (Matcher::Route(strings(&["a"])), 1),
            (Matcher::Domain(strings(&["*.example.com"])), 2),
            (Matcher::Route(strings(&["a"])), 3),
        ];
        let mut route_a = Facts {
            route: Some("a"),
            authority: Some("x.example.com"),
            ..Facts::default()
        };
        let mut domain_only = Facts {
            route: Some("b"),
            authority: Some("x.example.com"),
            ..Facts::default()
        };
        let mut neither = Facts {
            route: Some("b"),
            authority: Some("example.org"),
            ..Facts::default()
        };
        assert_eq!(select(&rules, Some(&9), &mut route_a), Some(&1));
        assert_eq!(select(&rules, Some(&9), &mut domain_only), Some(&2));
        assert_eq!(select(&rules, Some(&9), &mut neither), Some(&9));
        assert_eq!(select(&rules, None, &mut neither), None);
    }
}
