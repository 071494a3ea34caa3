//! Which Nacos service a Higress cluster routes to, read from its name alone.
//!
//! Higress's McpBridge names the host of every service it discovers in Nacos
//! `<service>.<group>.<namespace>.nacos` (alibaba/higress `registry/nacos/v2/watcher.go`
//! for the nacos2/nacos3 registries, `registry/nacos/watcher.go` for v1), with every
//! `_` in the group and namespace written `-`; the route's cluster is then
//! `outbound|<port>||<host>`. The `_`→`-` rewrite loses information, so a label
//! with a `-` is read back only through the names the operator lists; where two
//! readings stay possible, the plugin refuses to guess.

use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::routing::cluster_name;

const SUFFIX: &str = ".nacos";
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const PUBLIC_NAMESPACE: &str = "public";

/// The Nacos names the operator lists, as they are in Nacos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NacosNames {
    /// Groups, e.g. `MY_GROUP`; `DEFAULT_GROUP` is always known.
    pub groups: Vec<String>,
    /// McpBridge's `nacosNamespace` label → the namespace id the API needs;
    /// `public` is always known.
    pub namespaces: Vec<(String, String)>,
}

/// What a cluster name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterService {
    /// Not a cluster Higress made for a Nacos service.
    NotNacos,
    Service(ServiceKey),
    /// A Nacos service, but which one cannot be told: the reason, for one log line.
    Ambiguous(String),
}

/// How Higress writes a group or namespace in a host name.
pub fn as_label(name: &str) -> String {
    name.replace('_', "-")
}

pub fn service_of(cluster: &str, names: &NacosNames) -> ClusterService {
    match cluster_name::parse(cluster) {
        Some(name) => service_of_host(name.host, names),
        None => ClusterService::NotNacos,
    }
}

/// The service a Higress host name (`<service>.<group>.<namespace>.nacos`) stands
/// for. Clusters of one service on several ports or subsets share the host, so
/// the host is what `guardNacosRoutes` counts and lists.
pub fn service_of_host(host: &str, names: &NacosNames) -> ClusterService {
    let cluster = host;
    let Some(rest) = host.strip_suffix(SUFFIX) else {
        return ClusterService::NotNacos;
    };
    let Some((head, namespace)) = rest.rsplit_once('.') else {
        return ClusterService::NotNacos;
    };
    let Some((_, last_label)) = head.rsplit_once('.') else {
        return ClusterService::NotNacos;
    };
    if namespace.is_empty() || last_label.is_empty() || head.starts_with('.') {
        return ClusterService::NotNacos;
    }
    let (service, group) = match read_service_and_group(head, names) {
        Ok(read) => read,
        Err(reason) => {
            return ClusterService::Ambiguous(format!(
                "{cluster}: {reason}; list the group as it is in Nacos under \
                 guardNacosRoutes.groups"
            ))
        }
    };
    if !is_nacos_group(&group) {
        return ClusterService::Ambiguous(format!(
            "{cluster}: group `{group}` is a name Nacos refuses (letters, digits and \
             `-_:.`, at most {MAX_GROUP_LEN} characters)"
        ));
    }
    let namespace_id = match read_label(
        namespace,
        names
            .namespaces
            .iter()
            .map(|(label, id)| (label.as_str(), id.as_str()))
            .chain([(PUBLIC_NAMESPACE, PUBLIC_NAMESPACE)]),
    ) {
        Ok(id)
            if names.namespaces.iter().any(|(_, known)| *known == id) || id == PUBLIC_NAMESPACE =>
        {
            id
        }
        Ok(_) | Err(_) => {
            return ClusterService::Ambiguous(format!(
                "namespace label `{namespace}` of {cluster} is not listed; map McpBridge's \
                 nacosNamespace to its id under guardNacosRoutes.namespaces"
            ))
        }
    };
    ClusterService::Service(ServiceKey {
        namespace_id,
        group,
        name: service.to_string(),
    })
}

/// Nacos's limit on group names: alibaba/nacos
/// `common/src/main/java/com/alibaba/nacos/common/paramcheck/ParamCheckRule.java`
/// (`maxGroupLength`, `groupPatternString`).
const MAX_GROUP_LEN: usize = 128;

/// Whether Nacos accepts `group` as a group name.
pub fn is_nacos_group(group: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.');
    !group.is_empty() && group.len() <= MAX_GROUP_LEN && group.chars().all(allowed)
}

/// `<service>.<group>` split into the service and the group's Nacos name. Both
/// may carry dots, so a listed group that ends `head` decides; without one,
/// only a head with a single dot reads one way.
fn read_service_and_group<'h>(
    head: &'h str,
    names: &NacosNames,
) -> Result<(&'h str, String), &'static str> {
    let listed = names
        .groups
        .iter()
        .map(String::as_str)
        .chain([DEFAULT_GROUP]);
    let mut found: Option<(&str, &str)> = None;
    for group in listed {
        let label = as_label(group);
        let service = head
            .strip_suffix(label.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|service| !service.is_empty());
        match (service, found) {
            (Some(service), Some(other)) if other != (service, group) => {
                return Err("matches two listed groups")
            }
            (Some(service), _) => found = Some((service, group)),
            (None, _) => {}
        }
    }
    if let Some((service, group)) = found {
        return Ok((service, group.to_string()));
    }
    let Some((service, label)) = head.rsplit_once('.') else {
        return Err("names no group");
    };
    if service.contains('.') {
        return Err(
            "splits into a service and a group in more than one way (Nacos allows dots in both)",
        );
    }
    let group = read_label(label, std::iter::empty())?;
    Ok((service, group))
}

/// The one listed name (`(name, value)`) whose label is `label`; without one, a
/// label with no `-` is its own name (nothing was rewritten).
fn read_label<'a>(
    label: &str,
    listed: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<String, &'static str> {
    let mut found: Option<&str> = None;
    for (name, value) in listed {
        if as_label(name) == label {
            match found {
                Some(other) if other != value => return Err("matches two listed names"),
                _ => found = Some(value),
            }
        }
    }
    match found {
        Some(value) => Ok(value.to_string()),
        None if !label.contains('-') => Ok(label.to_string()),
        None => Err("may stand for a name with `_` or `-`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn names() -> NacosNames {
        NacosNames {
            groups: vec!["MY_GROUP".into(), "blue-green".into()],
            namespaces: vec![("dev_ns".into(), "3f1c9a".into())],
        }
    }

    fn service(namespace: &str, group: &str, name: &str) -> ClusterService {
        ClusterService::Service(ServiceKey {
            namespace_id: namespace.into(),
            group: group.into(),
            name: name.into(),
        })
    }

    #[test]
    fn higress_names_are_read_back_through_the_listed_names() {
        let names = names();
        assert_eq!(
            service_of("outbound|8080||orders.DEFAULT-GROUP.public.nacos", &names),
            service("public", "DEFAULT_GROUP", "orders")
        );
        assert_eq!(
            service_of("outbound|8080||orders.MY-GROUP.dev-ns.nacos", &names),
            service("3f1c9a", "MY_GROUP", "orders")
        );
        assert_eq!(
            service_of("outbound|80||pay.blue-green.public.nacos", &names),
            service("public", "blue-green", "pay")
        );
        assert_eq!(
            service_of("outbound|80||pay.PLAIN.public.nacos", &names),
            service("public", "PLAIN", "pay"),
            "a label without `-` was not rewritten"
        );
        assert_eq!(
            service_of(
                "outbound|20880||com.acme.OrderService.DEFAULT-GROUP.public.nacos",
                &names
            ),
            service("public", "DEFAULT_GROUP", "com.acme.OrderService"),
            "service names may carry dots"
        );
    }

    #[test]
    fn other_clusters_are_not_nacos_services() {
        for cluster in [
            "outbound|8080||demo.dns",
            "outbound|8080||demo.default.svc.cluster.local",
            "demo",
            "outbound|8080||.nacos",
            "outbound|8080||a.b.nacos",
            "outbound|8080|x|orders.G.public.nacos|extra",
        ] {
            assert_eq!(
                service_of(cluster, &names()),
                ClusterService::NotNacos,
                "{cluster}"
            );
        }
    }

    #[test]
    fn two_readings_are_refused_not_guessed() {
        // `A-B` may be `A_B` or `A-B` in Nacos: neither listed.
        assert!(matches!(
            service_of("outbound|80||s.A-B.public.nacos", &names()),
            ClusterService::Ambiguous(reason) if reason.contains("guardNacosRoutes.groups")
        ));
        // Both listed: still two readings.
        let both = NacosNames {
            groups: vec!["A_B".into(), "A-B".into()],
            namespaces: vec![],
        };
        assert!(matches!(
            service_of("outbound|80||s.A-B.public.nacos", &both),
            ClusterService::Ambiguous(_)
        ));
        // A namespace label must be mapped to its id.
        assert!(matches!(
            service_of("outbound|80||s.DEFAULT-GROUP.prod.nacos", &names()),
            ClusterService::Ambiguous(reason) if reason.contains("namespaces")
        ));
    }

    #[test]
    fn groups_with_dots_are_read_only_through_the_listed_ones() {
        // Nacos allows `.` and `:` in group names (alibaba/nacos
        // common/src/main/java/com/alibaba/nacos/common/paramcheck/ParamCheckRule.java,
        // groupPatternString), and service names carry dots too: with more than
        // one dot before the namespace, only a listed group tells the two apart.
        let dotted = NacosNames {
            groups: vec!["com.acme".into()],
            namespaces: vec![],
        };
        assert_eq!(
            service_of("outbound|80||orders.com.acme.public.nacos", &dotted),
            service("public", "com.acme", "orders")
        );
        assert!(matches!(
            service_of("outbound|80||orders.com.acme.public.nacos", &names()),
            ClusterService::Ambiguous(reason) if reason.contains("guardNacosRoutes.groups")
        ));
        let both = NacosNames {
            groups: vec!["com.acme".into(), "acme".into()],
            namespaces: vec![],
        };
        assert!(matches!(
            service_of("outbound|80||orders.com.acme.public.nacos", &both),
            ClusterService::Ambiguous(_)
        ));
        assert_eq!(
            service_of("outbound|80||a.b.acme.public.nacos", &both),
            service("public", "acme", "a.b"),
            "only one listed group ends the name"
        );
    }

    #[test]
    fn a_group_nacos_would_refuse_is_no_nacos_service() {
        // ParamCheckRule: groups are `[a-zA-Z0-9-_:.]`, at most 128 characters.
        let long = format!("outbound|80||s.{}.public.nacos", "G".repeat(129));
        for cluster in ["outbound|80||s.G~1.public.nacos", long.as_str()] {
            assert!(
                matches!(
                    service_of(cluster, &names()),
                    ClusterService::Ambiguous(ref reason) if reason.contains("Nacos refuses")
                ),
                "{cluster}"
            );
        }
        let longest = format!("outbound|80||s.{}.public.nacos", "G".repeat(128));
        assert!(matches!(
            service_of(&longest, &names()),
            ClusterService::Service(_)
        ));
    }

    #[test]
    fn a_name_listed_as_well_as_known_reads_one_way() {
        // `DEFAULT_GROUP` and `public` are known without being listed; listing
        // them too names the same group and namespace, not a second reading.
        let listed_twice = NacosNames {
            groups: vec![DEFAULT_GROUP.into()],
            namespaces: vec![(PUBLIC_NAMESPACE.into(), PUBLIC_NAMESPACE.into())],
        };
        assert_eq!(
            service_of(
                "outbound|80||orders.DEFAULT-GROUP.public.nacos",
                &listed_twice
            ),
            service("public", "DEFAULT_GROUP", "orders")
        );
        // Listed as another namespace's label, `public` reads two ways.
        let public_elsewhere = NacosNames {
            groups: vec![],
            namespaces: vec![(PUBLIC_NAMESPACE.into(), "3f1c9a".into())],
        };
        let cluster = "outbound|80||orders.DEFAULT-GROUP.public.nacos";
        assert!(matches!(
            service_of(cluster, &public_elsewhere),
            ClusterService::Ambiguous(_)
        ));
    }
}
