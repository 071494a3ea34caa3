//! What Nacos said about one service, and which of its instances may get traffic.

/// One instance as Nacos listed it, its address already in canonical `ip:port` form.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub endpoint: String,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub cluster: String,
    pub metadata: Vec<(String, String)>,
}

/// One answer of Nacos for one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceSet {
    pub instances: Vec<Instance>,
    /// Nacos reached the service's protection threshold and marked every instance
    /// healthy, so the health flags carry no information.
    pub protection_reached: bool,
}

/// The part of a guard's configuration that narrows the instances it may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Allowed Nacos cluster names; empty allows every cluster.
    pub clusters: Vec<String>,
    /// Pairs an instance must carry, every one of them.
    pub metadata: Vec<(String, String)>,
}

impl InstanceFilter {
    /// A name for the view of a service this filter gives, `None` for the whole
    /// service: `clusters=A,B;zone=z1`.
    pub fn view_name(&self) -> Option<String> {
        if self.clusters.is_empty() && self.metadata.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        if !self.clusters.is_empty() {
            parts.push(format!("clusters={}", self.clusters.join(",")));
        }
        parts.extend(
            self.metadata
                .iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
        Some(parts.join(";"))
    }

    /// Whether `instance` may get traffic.
    ///
    /// While the protection threshold is reached, the health flags are the ones Nacos
    /// forced to true, so they are not read: the instance counts as usable because it
    /// is still registered, enabled and weighted. Deregistered instances are absent
    /// from the answer either way, and that is what this plugin guards against.
    pub fn admits(&self, instance: &Instance, protection_reached: bool) -> bool {
        (instance.healthy || protection_reached)
            && instance.enabled
            && instance.weight > 0.0
            && instance.weight.is_finite()
            && (self.clusters.is_empty() || self.clusters.contains(&instance.cluster))
            && self.metadata.iter().all(|(key, value)| {
                instance
                    .metadata
                    .iter()
                    .any(|(k, v)| k == key && v == value)
            })
    }
}

#[cfg(test)]
pub(crate) fn instance(endpoint: &str, weight: f64) -> Instance {
    Instance {
        endpoint: endpoint.to_string(),
        weight,
        healthy: true,
        enabled: true,
        cluster: "DEFAULT".to_string(),
        metadata: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn healthy_enabled_weighted_instance_is_admitted() {
        assert!(InstanceFilter::default().admits(&instance("10.0.0.1:80", 1.0), false));
    }

    #[test]
    fn unhealthy_disabled_or_zero_weight_instances_are_not() {
        let filter = InstanceFilter::default();
        let mut unhealthy = instance("10.0.0.1:80", 1.0);
        unhealthy.healthy = false;
        let mut disabled = instance("10.0.0.1:80", 1.0);
        disabled.enabled = false;
        assert!(!filter.admits(&unhealthy, false));
        assert!(!filter.admits(&disabled, false));
        assert!(!filter.admits(&instance("10.0.0.1:80", 0.0), false));
        assert!(!filter.admits(&instance("10.0.0.1:80", -2.0), false));
        assert!(!filter.admits(&instance("10.0.0.1:80", f64::NAN), false));
        assert!(!filter.admits(&instance("10.0.0.1:80", f64::INFINITY), false));
    }

    #[test]
    fn protection_threshold_ignores_health_but_not_enabled_or_weight() {
        let filter = InstanceFilter::default();
        let mut unhealthy = instance("10.0.0.1:80", 1.0);
        unhealthy.healthy = false;
        let mut disabled = instance("10.0.0.1:80", 1.0);
        disabled.enabled = false;
        assert!(filter.admits(&unhealthy, true));
        assert!(!filter.admits(&disabled, true));
        assert!(!filter.admits(&instance("10.0.0.1:80", 0.0), true));
    }

    #[test]
    fn cluster_filter_keeps_only_listed_clusters() {
        let filter = InstanceFilter {
            clusters: vec!["A".into(), "B".into()],
            metadata: Vec::new(),
        };
        let mut in_b = instance("10.0.0.1:80", 1.0);
        in_b.cluster = "B".into();
        let mut in_c = instance("10.0.0.1:80", 1.0);
        in_c.cluster = "C".into();
        assert!(filter.admits(&in_b, false));
        assert!(!filter.admits(&in_c, false));
    }

    #[test]
    fn metadata_filter_needs_every_pair() {
        let filter = InstanceFilter {
            clusters: Vec::new(),
            metadata: vec![("zone".into(), "a".into()), ("ver".into(), "2".into())],
        };
        let mut both = instance("10.0.0.1:80", 1.0);
        both.metadata = vec![
            ("ver".into(), "2".into()),
            ("zone".into(), "a".into()),
            ("x".into(), "y".into()),
        ];
        let mut one = instance("10.0.0.1:80", 1.0);
        one.metadata = vec![("zone".into(), "a".into()), ("ver".into(), "1".into())];
        assert!(filter.admits(&both, false));
        assert!(!filter.admits(&one, false));
    }
}
