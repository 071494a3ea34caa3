//! What a configuration asks of instances beyond their health, drawn per seed
//! from a generator of its own (seeds that draw none run as before): a Nacos
//! cluster and a metadata filter per service, requests pinned to an instance
//! with `onDeregistered` either way, and services whose answers reach Nacos's
//! protection threshold. Instances carry their Nacos cluster (by address) and a
//! `version` in their metadata, which the registry may change.

use super::rng::Rng;

/// The metadata values an instance's `version` takes.
pub const VERSIONS: [&str; 2] = ["v1", "v2"];

/// The Nacos cluster of an instance: fixed by its address, as a process is
/// registered in one cluster.
pub fn cluster_of(endpoint: &str) -> &'static str {
    if !endpoint_number(endpoint).is_multiple_of(2) {
        "A"
    } else {
        "B"
    }
}

/// The `version` an instance registers with: by its address, so drawing it
/// takes nothing from the seed's generators.
pub fn first_version(endpoint: &str) -> &'static str {
    VERSIONS[usize::from(endpoint_number(endpoint).is_multiple_of(3))]
}

/// The last number of an instance's address (`10.0.<service>.<n>:80`).
pub fn endpoint_number(endpoint: &str) -> u64 {
    endpoint
        .split(':')
        .next()
        .and_then(|ip| ip.rsplit('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Which instances one service's guard may route to, beyond health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Whether answers carry clusters and metadata at all (seeds that draw no
    /// view answer exactly as before).
    pub described: bool,
    pub cluster: Option<&'static str>,
    pub version: Option<&'static str>,
}

impl View {
    pub fn admits(&self, endpoint: &str, version: &str) -> bool {
        self.cluster.is_none_or(|c| cluster_of(endpoint) == c)
            && self.version.is_none_or(|v| version == v)
    }

    /// The `usable_instances` gauge's view segment: the filter as the plugin
    /// names it (`clusters=A;version=v1`), each other character as `_`.
    pub fn gauge_segment(&self) -> Option<String> {
        let parts: Vec<String> = [
            self.cluster.map(|c| format!("clusters_{c}")),
            self.version.map(|v| format!("version_{v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join("_"))
    }

    /// The rule's `service` fields beyond the name.
    pub fn service_fields(&self) -> String {
        let clusters = self
            .cluster
            .map_or(String::new(), |c| format!(r#","clusters":["{c}"]"#));
        let metadata = self.version.map_or(String::new(), |v| {
            format!(r#","metadata":{{"version":"{v}"}}"#)
        });
        format!("{clusters}{metadata}")
    }
}

/// One seed's draw.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub per_service: Vec<View>,
    /// Per mille of requests that carry a pin header.
    pub pinned: u64,
    /// `onDeregistered: reject` (else `reroute`).
    pub reject_deregistered: bool,
    /// Whether the registry flips services in and out of the protection
    /// threshold and changes instances' metadata.
    pub relabels: bool,
}

impl Views {
    /// Half the seeds draw none of it.
    pub fn draw(services: usize, rng: &mut Rng) -> Self {
        if !rng.chance(500) {
            return Self {
                per_service: vec![View::default(); services],
                ..Self::default()
            };
        }
        let per_service = (0..services)
            .map(|_| View {
                described: true,
                cluster: rng.chance(400).then(|| rng.pick(&["A", "B"])),
                version: rng.chance(400).then(|| rng.pick(&VERSIONS)),
            })
            .collect();
        Self {
            per_service,
            pinned: rng.pick(&[0, 100, 300]),
            reject_deregistered: rng.chance(500),
            relabels: rng.chance(700),
        }
    }

    /// Whether this seed draws any of it.
    pub fn drawn(&self) -> bool {
        self.per_service.iter().any(|view| view.described)
    }

    /// The configuration's global fields for pins.
    pub fn global_fields(&self) -> &'static str {
        if self.reject_deregistered {
            r#","onDeregistered":"reject""#
        } else {
            ""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn an_instance_is_in_the_cluster_and_version_its_address_gives() {
        assert_eq!(cluster_of("10.0.1.3:80"), "A");
        assert_eq!(cluster_of("10.0.1.4:80"), "B");
        assert_eq!(first_version("10.0.1.3:80"), "v2");
        assert_eq!(first_version("10.0.1.4:80"), "v1");
        let view = View {
            described: true,
            cluster: Some("A"),
            version: Some("v1"),
        };
        assert!(view.admits("10.0.1.1:80", "v1"));
        assert!(!view.admits("10.0.1.1:80", "v2"));
        assert!(!view.admits("10.0.1.2:80", "v1"));
        assert_eq!(view.gauge_segment().unwrap(), "clusters_A_version_v1");
        assert_eq!(
            view.service_fields(),
            r#","clusters":["A"],"metadata":{"version":"v1"}"#
        );
    }
}
