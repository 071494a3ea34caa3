//! Metric names. Envoy lists them under `wasmcustom.`; a service's namespace,
//! group and name sit in fixed segments so stats tag regexes turn each into a
//! Prometheus label.

use super::host_traits::Metrics;
use crate::pure::polling::nacos::request::ServiceKey;

pub const PREFIX: &str = "nacos_guard";

/// For Envoy's `stats_config.stats_tags`, each applied to the full name: the
/// first group is cut from the name, the second becomes the label value.
/// `nacos_namespace`:
pub const NAMESPACE_TAG_REGEX: &str =
    r"^wasmcustom\.nacos_guard\.service\.(([^.]+)\.)[^.]+\.[^.]+\.";
/// `nacos_group`:
pub const GROUP_TAG_REGEX: &str = r"^wasmcustom\.nacos_guard\.service\.[^.]+\.(([^.]+)\.)[^.]+\.";
/// `nacos_service`:
pub const STATS_TAG_REGEX: &str = r"^wasmcustom\.nacos_guard\.service\.[^.]+\.[^.]+\.(([^.]+)\.)";
/// `nacos_view`: the filtered view of a `usable_instances` gauge.
pub const VIEW_TAG_REGEX: &str =
    r"^wasmcustom\.nacos_guard\.service\.[^.]+\.[^.]+\.[^.]+\.(view\.([^.]+)\.)";

/// A name as one metric segment: anything but `[A-Za-z0-9_-]` becomes `_`,
/// and nothing becomes `_`, so the tag regexes still find every segment.
pub fn metric_segment(service: &str) -> String {
    if service.is_empty() {
        return "_".to_string();
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    service
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect()
}

/// Counters of what happened to requests on a guarded route.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMetrics {
    pub routed: Option<u32>,
    pub rerouted: Option<u32>,
    pub rejected: Option<u32>,
    pub passed_through: Option<u32>,
    pub usable_instances: Option<u32>,
}

/// Requests counted since the last tick, one per `RequestMetrics` counter: the
/// host's counters are bumped once per tick, not once per request, which saves a
/// host call on every request. The stats lag by at most one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub routed: u64,
    pub rerouted: u64,
    pub rejected: u64,
    pub passed_through: u64,
}

impl RequestCounts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl RequestMetrics {
    /// Hand the counts gathered since the last flush to the host.
    pub fn flush(&self, counts: &mut RequestCounts, metrics: &mut dyn Metrics) {
        let pairs = [
            (self.routed, &mut counts.routed),
            (self.rerouted, &mut counts.rerouted),
            (self.rejected, &mut counts.rejected),
            (self.passed_through, &mut counts.passed_through),
        ];
        for (id, count) in pairs {
            if *count > 0 {
                if let Some(id) = id {
                    metrics.add(id, *count);
                }
                *count = 0;
            }
        }
    }
}

/// Counters of polls for one service.
#[derive(Debug, Clone, Copy, Default)]
pub struct PollMetrics {
    pub success: Option<u32>,
    pub failure: Option<u32>,
}

/// The names of one service's metrics,
/// `nacos_guard.service.<namespace>.<group>.<name>.<metric>`: one name in two
/// groups or namespaces is two services, each with its own counters and gauge.
/// The prefix is worked out once for all of them.
struct ServiceMetric(String);

impl ServiceMetric {
    fn of(service: &ServiceKey) -> Self {
        Self(format!(
            "{PREFIX}.service.{}.{}.{}.",
            metric_segment(&service.namespace_id),
            metric_segment(&service.group),
            metric_segment(&service.name)
        ))
    }

    fn name(&self, name: &str) -> String {
        let mut full = String::with_capacity(self.0.len() + name.len());
        full.push_str(&self.0);
        full.push_str(name);
        full
    }
}

impl RequestMetrics {
    /// `view` names the guard's instance filter, if it has one: guards of one
    /// service with different filters see different usable instances, so each
    /// filtered view gets its own gauge (`...<name>.view.<view>.usable_instances`).
    pub fn define(metrics: &mut dyn Metrics, service: &ServiceKey, view: Option<&str>) -> Self {
        let gauge = match view {
            Some(view) => format!("view.{}.usable_instances", metric_segment(view)),
            None => "usable_instances".to_string(),
        };
        let names = ServiceMetric::of(service);
        Self {
            routed: metrics.define_counter(&names.name("routed")),
            rerouted: metrics.define_counter(&names.name("rerouted")),
            rejected: metrics.define_counter(&names.name("rejected")),
            passed_through: metrics.define_counter(&names.name("passed_through")),
            usable_instances: metrics.define_gauge(&names.name(&gauge)),
        }
    }
}

impl PollMetrics {
    pub fn define(metrics: &mut dyn Metrics, service: &ServiceKey) -> Self {
        let names = ServiceMetric::of(service);
        Self {
            success: metrics.define_counter(&names.name("poll_success")),
            failure: metrics.define_counter(&names.name("poll_failure")),
        }
    }
}

/// Counters of instances of one service that failed routed requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct AvoidMetrics {
    /// Routed requests whose instance failed before answering.
    pub failures: Option<u32>,
    /// Times an instance was set aside after failing (once per avoidance, not per request).
    pub avoided: Option<u32>,
}

impl AvoidMetrics {
    pub fn define(metrics: &mut dyn Metrics, service: &ServiceKey) -> Self {
        let names = ServiceMetric::of(service);
        Self {
            failures: metrics.define_counter(&names.name("instance_failures")),
            avoided: metrics.define_counter(&names.name("instances_avoided")),
        }
    }
}

/// What `guardNacosRoutes` learned, for the whole plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct LearnMetrics {
    /// Gauge: services learned from traffic.
    pub learned: Option<u32>,
    /// Counter: new services left alone because `maxServices` were learned.
    pub refused: Option<u32>,
}

impl LearnMetrics {
    pub fn define(metrics: &mut dyn Metrics) -> Self {
        Self {
            learned: metrics.define_gauge(&format!("{PREFIX}.learned_services")),
            refused: metrics.define_counter(&format!("{PREFIX}.learned_services_refused")),
        }
    }
}

/// Login counters, one pair for the whole plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginMetrics {
    pub success: Option<u32>,
    pub failure: Option<u32>,
}

impl LoginMetrics {
    pub fn define(metrics: &mut dyn Metrics) -> Self {
        Self {
            success: metrics.define_counter(&format!("{PREFIX}.login_success")),
            failure: metrics.define_counter(&format!("{PREFIX}.login_failure")),
        }
    }
}

/// Push counters, for the whole plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushMetrics {
    /// Gauge: push streams this VM holds open (the poller's; 0 elsewhere).
    pub streams: Option<u32>,
    /// Counter: streams opened again after one was lost.
    pub reconnects: Option<u32>,
    /// Counter: lists the server pushed for a subscribed service.
    pub pushes: Option<u32>,
    /// Counter: connections, subscriptions or messages that failed.
    pub failures: Option<u32>,
}

impl PushMetrics {
    pub fn define(metrics: &mut dyn Metrics) -> Self {
        Self {
            streams: metrics.define_gauge(&format!("{PREFIX}.push_streams")),
            reconnects: metrics.define_counter(&format!("{PREFIX}.push_reconnects")),
            pushes: metrics.define_counter(&format!("{PREFIX}.pushes")),
            failures: metrics.define_counter(&format!("{PREFIX}.push_failures")),
        }
    }
}

/// Count one event if its metric could be defined.
pub fn bump(metrics: &mut dyn Metrics, id: Option<u32>) {
    if let Some(id) = id {
        metrics.increment(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn service_names_become_one_segment() {
        assert_eq!(metric_segment("demo"), "demo");
        assert_eq!(metric_segment("order.svc@v2:80"), "order_svc_v2_80");
        assert_eq!(metric_segment("a-b_c"), "a-b_c");
        assert_eq!(metric_segment("a-b.c_d"), "a-b_c_d");
        assert_eq!(metric_segment(""), "_");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn names_put_each_part_where_its_tag_regex_expects_it() {
        let service = ServiceKey {
            namespace_id: "dev".into(),
            group: "MY-GROUP".into(),
            name: "order.svc".into(),
        };
        let routed = format!("wasmcustom.{}", ServiceMetric::of(&service).name("routed"));
        assert_eq!(
            routed,
            "wasmcustom.nacos_guard.service.dev.MY-GROUP.order_svc.routed"
        );
        let gauge = format!(
            "wasmcustom.{}",
            ServiceMetric::of(&service).name("view.clusters_B.usable_instances")
        );
        let tags = [
            (NAMESPACE_TAG_REGEX, "dev."),
            (GROUP_TAG_REGEX, "MY-GROUP."),
            (STATS_TAG_REGEX, "order_svc."),
        ];
        for (regex, removed) in tags {
            assert_eq!(
                first_group(regex, &routed),
                Some(removed.to_string()),
                "{regex}"
            );
            assert_eq!(
                first_group(regex, &gauge),
                Some(removed.to_string()),
                "{regex}"
            );
        }
        assert_eq!(first_group(VIEW_TAG_REGEX, &routed), None);
        let documented = include_str!("../../docs/observability.md");
        for regex in [
            NAMESPACE_TAG_REGEX,
            GROUP_TAG_REGEX,
            STATS_TAG_REGEX,
            VIEW_TAG_REGEX,
        ] {
            assert!(
                documented.contains(regex),
                "docs/observability.md lacks {regex}"
            );
        }
        let view = first_group(VIEW_TAG_REGEX, &gauge);
        assert_eq!(view.as_deref(), Some("view.clusters_B."));
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// What Envoy cuts from `name` for a tag `regex` (its first group).
    fn first_group(regex: &str, name: &str) -> Option<String> {
        let regex = regex::Regex::new(regex).unwrap();
        let captures = regex.captures(name)?;
        Some(captures.get(1)?.as_str().to_string())
    }
}
