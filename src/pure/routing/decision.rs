//! The decision for one request: which instance, or why none.

use crate::pure::config::{DeregisteredPolicy, StalePolicy};
use crate::pure::registry::endpoint;
use crate::pure::registry::instance::InstanceFilter;
use crate::pure::registry::snapshot::{Freshness, Snapshot};
use crate::pure::routing::avoidance::max_avoided;
use crate::pure::routing::selection::WeightedRoundRobin;
use crate::pure::routing::upstream_hosts::RoutableHosts;

/// The usable instances of one guard, prepared once per content change so that
/// a request costs a scan and no allocation.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    built: Option<u64>,
    endpoints: Vec<String>,
    picker: WeightedRoundRobin,
    /// Where this VM's rotation starts on its first list.
    start: u64,
    /// Which endpoints the routed cluster's host list (of this generation) has:
    /// worked out once per list, not on every request.
    known: Option<(u64, Vec<bool>)>,
    /// The instances avoided after failing (`routing::avoidance`), and which
    /// candidates they are: skipped while any other is left.
    avoided_endpoints: Vec<String>,
    avoided: Vec<bool>,
    /// `maxAvoidedPercent`: the share of these candidates that may be skipped,
    /// whatever the list became since the instances were avoided.
    max_avoided_percent: u64,
    /// The candidate the last decision routed to: what the host keeps of a routed
    /// request (an index, not a copy of the address) to tell a failure back.
    last_pick: Option<usize>,
}

impl Candidates {
    /// `start` places this VM's rotation: VMs given different numbers do not all
    /// send their first request to the same instance.
    pub fn starting_at(start: u64) -> Self {
        Self {
            start,
            ..Self::default()
        }
    }

    /// Rebuild from `snapshot` if its content changed since the last call; true if
    /// rebuilt. The instances that stay keep their place in the rotation, so a
    /// list that changes (or is merely confirmed) never restarts it.
    pub fn refresh(&mut self, snapshot: &Snapshot, filter: &InstanceFilter) -> bool {
        let stamp = snapshot.content_stamp();
        if snapshot.instances().is_none() || self.built == Some(stamp) {
            return false;
        }
        let first_build = self.built.is_none();
        self.built = Some(stamp);
        self.known = None;
        let previous = std::mem::take(&mut self.endpoints);
        let mut weights = Vec::new();
        if let Some(set) = snapshot.instances() {
            for instance in &set.instances {
                if filter.admits(instance, set.protection_reached) {
                    self.endpoints.push(instance.endpoint.clone());
                    weights.push(instance.weight);
                }
            }
        }
        let endpoints = &self.endpoints;
        self.picker.carry_over(weights, |index| {
            let endpoint = endpoints.get(index)?;
            previous.iter().position(|before| before == endpoint)
        });
        if first_build {
            self.picker.skip(self.start);
        }
        self.mark_avoided();
        true
    }

    /// Skip these instances, as many as `max_avoided_percent` allows of the
    /// candidates (`avoidance::max_avoided`: never all of them).
    pub fn set_avoided<'e>(
        &mut self,
        avoided: impl Iterator<Item = &'e str>,
        max_avoided_percent: u64,
    ) {
        self.avoided_endpoints.clear();
        self.avoided_endpoints.extend(avoided.map(str::to_string));
        self.max_avoided_percent = max_avoided_percent;
        self.mark_avoided();
    }

    /// How many candidates are skipped now.
    pub fn avoided_count(&self) -> usize {
        self.avoided.iter().filter(|avoided| **avoided).count()
    }

    /// Mark the avoided candidates, up to the bound: a list that shrank since
    /// they were avoided must not leave more of it skipped than the bound allows.
    fn mark_avoided(&mut self) {
        self.avoided.clear();
        if self.avoided_endpoints.is_empty() {
            return;
        }
        let mut room = max_avoided(self.endpoints.len(), self.max_avoided_percent);
        for endpoint in &self.endpoints {
            let avoid = room > 0 && self.avoided_endpoints.contains(endpoint);
            room -= usize::from(avoid);
            self.avoided.push(avoid);
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The candidate the last decision routed to, with the content it was built
    /// from: `endpoint_at` finds it again while the list is the same.
    pub fn last_pick(&self) -> Option<(usize, u64)> {
        Some((self.last_pick?, self.built?))
    }

    /// The endpoint of a pick, if the candidates were not rebuilt since.
    pub fn endpoint_at(&self, index: usize, built: u64) -> Option<&str> {
        (self.built == Some(built))
            .then(|| self.endpoints.get(index))
            .flatten()
            .map(String::as_str)
    }

    /// A candidate that is not avoided, the cluster's known hosts first; any
    /// candidate (`pick_known`) when every one is avoided.
    fn pick_index(&mut self, hosts: Option<&RoutableHosts>) -> Option<usize> {
        if !self.avoided.contains(&true) {
            return self.pick_known(hosts);
        }
        let avoided = std::mem::take(&mut self.avoided);
        let usable = |index: usize| !avoided.get(index).copied().unwrap_or(false);
        self.mark_known(hosts);
        let picked = match &self.known {
            Some((_, mask)) if hosts.is_some() => self
                .picker
                .pick_where(|index| usable(index) && mask.get(index).copied().unwrap_or(false)),
            _ => None,
        }
        .or_else(|| self.picker.pick_where(usable));
        self.avoided = avoided;
        picked.or_else(|| self.pick_known(hosts))
    }

    fn mark_known(&mut self, hosts: Option<&RoutableHosts>) {
        let Some(hosts) = hosts else {
            return;
        };
        let generation = hosts.generation();
        if self.known.as_ref().map(|(seen, _)| *seen) != Some(generation) {
            let mask = self.endpoints.iter().map(|e| hosts.contains(e)).collect();
            self.known = Some((generation, mask));
        }
    }

    fn pick_known(&mut self, hosts: Option<&RoutableHosts>) -> Option<usize> {
        let Some(hosts) = hosts else {
            return self.picker.pick();
        };
        self.mark_known(Some(hosts));
        match &self.known {
            Some((_, mask)) if mask.contains(&true) => self
                .picker
                .pick_where(|index| mask.get(index).copied().unwrap_or(false)),
            _ => self.picker.pick(),
        }
    }
}

/// The machine-readable reason of a rejection, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    NoHealthyInstance,
    InstanceDeregistered,
    RegistryUnavailable,
}

impl RejectCode {
    pub const ALL: [RejectCode; 3] = [
        Self::NoHealthyInstance,
        Self::InstanceDeregistered,
        Self::RegistryUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoHealthyInstance => "no_healthy_instance",
            Self::InstanceDeregistered => "instance_deregistered",
            Self::RegistryUnavailable => "registry_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Send the request to this `ip:port`. `rerouted`: the request pinned an
    /// instance that is gone and got another one.
    Route {
        endpoint: &'a str,
        rerouted: bool,
    },
    Reject(RejectCode),
    /// Registry unknown or stale under `fail_open`: route as if the plugin were absent.
    PassThrough,
}

/// What the request brings to the decision.
#[derive(Clone, Copy, Default)]
pub struct RequestView<'r> {
    /// The pin header's value, if the request has one.
    pub pin: Option<&'r str>,
    /// Hosts the routed cluster knows (Higress mode): preferred when any usable
    /// instance is among them.
    pub known: Option<&'r RoutableHosts>,
}

/// The guard's policies that shape a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub on_stale: StalePolicy,
    pub on_deregistered: DeregisteredPolicy,
}

pub fn decide<'a>(
    candidates: &'a mut Candidates,
    freshness: Freshness,
    policies: Policies,
    request: RequestView<'_>,
) -> Decision<'a> {
    if freshness != Freshness::Fresh {
        return match policies.on_stale {
            StalePolicy::FailOpen => Decision::PassThrough,
            StalePolicy::FailClosed => Decision::Reject(RejectCode::RegistryUnavailable),
        };
    }
    let (pinned_index, was_pinned) = find_pinned(candidates, request.pin);
    let (index, rerouted) = match (pinned_index, was_pinned) {
        (Some(index), _) => (index, false),
        (None, true) if policies.on_deregistered == DeregisteredPolicy::Reject => {
            return Decision::Reject(RejectCode::InstanceDeregistered);
        }
        (None, was_pinned) => match candidates.pick_index(request.known) {
            Some(index) => (index, was_pinned),
            None => return Decision::Reject(RejectCode::NoHealthyInstance),
        },
    };
    candidates.last_pick = Some(index);
    match candidates.endpoints.get(index) {
        Some(endpoint) => Decision::Route { endpoint, rerouted },
        None => Decision::Reject(RejectCode::NoHealthyInstance),
    }
}

/// The candidate a pin names, and whether the pin is an `ip:port` at all (one that
/// is not names no instance and is ignored). A pin spelled as the instance is
/// (a client repeating where it was routed) is found by comparing text; only
/// another spelling is parsed, which costs thousands of Wasm instructions
/// (`make bench`, section instructions).
fn find_pinned(candidates: &Candidates, pin: Option<&str>) -> (Option<usize>, bool) {
    let Some(pin) = pin else {
        return (None, false);
    };
    let position = |wanted: &str| candidates.endpoints.iter().position(|e| e == wanted);
    if let Some(index) = position(pin.trim()) {
        return (Some(index), true);
    }
    match endpoint::parse(pin) {
        Some(canonical) => (position(&canonical), true),
        None => (None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::registry::instance::{instance, InstanceSet};
    use crate::testing::test;

    const REROUTE_OPEN: Policies = Policies {
        on_stale: StalePolicy::FailOpen,
        on_deregistered: DeregisteredPolicy::Reroute,
    };
    const REJECT_CLOSED: Policies = Policies {
        on_stale: StalePolicy::FailClosed,
        on_deregistered: DeregisteredPolicy::Reject,
    };

    fn prepared(weights: &[(&str, f64)]) -> Candidates {
        let mut snapshot = Snapshot::default();
        snapshot.accept(
            InstanceSet {
                instances: weights.iter().map(|(e, w)| instance(e, *w)).collect(),
                protection_reached: false,
            },
            0,
        );
        let mut candidates = Candidates::default();
        assert!(candidates.refresh(&snapshot, &InstanceFilter::default()));
        candidates
    }

    fn pinned(pin: &str) -> RequestView<'_> {
        RequestView {
            pin: Some(pin),
            known: None,
        }
    }

    #[test]
    fn routes_to_a_usable_instance() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 0.0)]);
        for _ in 0..5 {
            assert_eq!(
                decide(
                    &mut candidates,
                    Freshness::Fresh,
                    REROUTE_OPEN,
                    RequestView::default()
                ),
                Decision::Route {
                    endpoint: "10.0.0.1:80",
                    rerouted: false
                }
            );
        }
    }

    #[test]
    fn no_usable_instance_is_rejected() {
        let mut empty = prepared(&[]);
        assert_eq!(
            decide(
                &mut empty,
                Freshness::Fresh,
                REROUTE_OPEN,
                RequestView::default()
            ),
            Decision::Reject(RejectCode::NoHealthyInstance)
        );
        let mut zero = prepared(&[("10.0.0.1:80", 0.0)]);
        assert_eq!(
            decide(
                &mut zero,
                Freshness::Fresh,
                REROUTE_OPEN,
                RequestView::default()
            ),
            Decision::Reject(RejectCode::NoHealthyInstance)
        );
    }

    #[test]
    fn stale_or_unknown_registry_follows_on_stale() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0)]);
        for freshness in [Freshness::Stale, Freshness::Unknown] {
            assert_eq!(
                decide(
                    &mut candidates,
                    freshness,
                    REROUTE_OPEN,
                    RequestView::default()
                ),
                Decision::PassThrough
            );
            assert_eq!(
                decide(
                    &mut candidates,
                    freshness,
                    REJECT_CLOSED,
                    RequestView::default()
                ),
                Decision::Reject(RejectCode::RegistryUnavailable)
            );
        }
    }

    /// A fresh list, the request pinned to `pin`.
    fn decide_pinned<'a>(
        candidates: &'a mut Candidates,
        policies: Policies,
        pin: &str,
    ) -> Decision<'a> {
        decide(candidates, Freshness::Fresh, policies, pinned(pin))
    }

    #[test]
    fn pin_spelled_as_the_instance_or_otherwise_finds_it() {
        let mut candidates = prepared(&[
            ("10.0.0.1:80", 1.0),
            ("[2001:db8::1]:80", 1.0),
            ("[::1]:80", 1.0),
        ]);
        for (pin, endpoint) in [
            ("10.0.0.1:80", "10.0.0.1:80"),
            (" 10.0.0.1:80\t", "10.0.0.1:80"),
            ("[2001:db8::1]:80", "[2001:db8::1]:80"),
            ("[2001:DB8:0::1]:80", "[2001:db8::1]:80"),
            ("[0::1]:80", "[::1]:80"),
        ] {
            for policies in [REROUTE_OPEN, REJECT_CLOSED] {
                for _ in 0..3 {
                    assert_eq!(
                        decide_pinned(&mut candidates, policies, pin),
                        Decision::Route {
                            endpoint,
                            rerouted: false
                        },
                        "{pin:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn pin_to_a_gone_instance_is_rerouted_or_rejected() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0)]);
        assert_eq!(
            decide_pinned(&mut candidates, REROUTE_OPEN, "10.0.0.9:80"),
            Decision::Route {
                endpoint: "10.0.0.1:80",
                rerouted: true
            }
        );
        assert_eq!(
            decide_pinned(&mut candidates, REJECT_CLOSED, "10.0.0.9:80"),
            Decision::Reject(RejectCode::InstanceDeregistered)
        );
    }

    #[test]
    fn malformed_pin_is_ignored() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0)]);
        for pin in ["garbage", "10.0.0.1", "10.0.0.1:80, 10.0.0.2:80", ""] {
            assert_eq!(
                decide_pinned(&mut candidates, REJECT_CLOSED, pin),
                Decision::Route {
                    endpoint: "10.0.0.1:80",
                    rerouted: false
                },
                "{pin}"
            );
        }
    }

    #[test]
    fn known_hosts_are_preferred_when_any_is_usable() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 1.0)]);
        let only_second = RoutableHosts::of(&["10.0.0.2:80", "10.0.0.9:80"]);
        let view = RequestView {
            pin: None,
            known: Some(&only_second),
        };
        for _ in 0..6 {
            assert_eq!(
                decide(&mut candidates, Freshness::Fresh, REROUTE_OPEN, view),
                Decision::Route {
                    endpoint: "10.0.0.2:80",
                    rerouted: false
                }
            );
        }
        // A new list of the cluster's hosts is read afresh, not taken for the last one.
        let only_first = RoutableHosts::of(&["10.0.0.1:80"]);
        let view = RequestView {
            pin: None,
            known: Some(&only_first),
        };
        for _ in 0..3 {
            assert_eq!(
                decide(&mut candidates, Freshness::Fresh, REROUTE_OPEN, view),
                Decision::Route {
                    endpoint: "10.0.0.1:80",
                    rerouted: false
                }
            );
        }
        let none_known = RoutableHosts::of(&["10.0.0.9:80"]);
        let view = RequestView {
            pin: None,
            known: Some(&none_known),
        };
        assert!(matches!(
            decide(&mut candidates, Freshness::Fresh, REROUTE_OPEN, view),
            Decision::Route { .. }
        ));
    }

    #[test]
    fn candidates_rebuild_only_on_a_new_version_and_apply_the_filter() {
        let mut snapshot = Snapshot::default();
        let mut other = instance("10.0.0.2:80", 1.0);
        other.cluster = "B".into();
        snapshot.accept(
            InstanceSet {
                instances: vec![instance("10.0.0.1:80", 1.0), other],
                protection_reached: false,
            },
            0,
        );
        let filter = InstanceFilter {
            clusters: vec!["B".into()],
            metadata: vec![],
        };
        let mut candidates = Candidates::default();
        assert!(candidates.refresh(&snapshot, &filter));
        assert!(!candidates.refresh(&snapshot, &filter));
        assert_eq!(candidates.endpoints(), ["10.0.0.2:80".to_string()]);
        snapshot.accept(InstanceSet::default(), 1);
        assert!(candidates.refresh(&snapshot, &filter));
        assert!(candidates.endpoints().is_empty());
    }

    #[test]
    fn rare_requests_between_confirming_polls_reach_every_instance() {
        // One request per poll: before, every poll restarted the rotation and
        // only the first instance was ever picked.
        let list = InstanceSet {
            instances: (1..=4)
                .map(|i| instance(&format!("10.0.0.{i}:80"), 1.0))
                .collect(),
            protection_reached: false,
        };
        let mut snapshot = Snapshot::default();
        let mut candidates = Candidates::starting_at(3);
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for poll in 0..400u64 {
            snapshot.accept(list.clone(), poll * 1_000);
            candidates.refresh(&snapshot, &InstanceFilter::default());
            if let Decision::Route { endpoint, .. } = decide(
                &mut candidates,
                Freshness::Fresh,
                REROUTE_OPEN,
                RequestView::default(),
            ) {
                *counts.entry(endpoint.to_string()).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
    }

    #[test]
    fn vms_started_at_different_places_send_their_first_requests_to_different_instances() {
        // Every VM builds from the same list at once: if all started at the same
        // place, each one's first request would hit the same instance.
        let list = InstanceSet {
            instances: (1..=4)
                .map(|i| instance(&format!("10.0.0.{i}:80"), 1.0))
                .collect(),
            protection_reached: false,
        };
        let mut snapshot = Snapshot::default();
        snapshot.accept(list, 0);
        let firsts: std::collections::BTreeSet<String> = (0..4)
            .map(|start| {
                let mut candidates = Candidates::starting_at(start);
                assert!(candidates.refresh(&snapshot, &InstanceFilter::default()));
                routed_to(&mut candidates, RequestView::default())
            })
            .collect();
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }

    #[test]
    fn instances_that_stay_in_a_changing_list_keep_their_turn() {
        // One request per list while an instance comes and goes: each change
        // carries every stayer's place over, so the stayers still share evenly.
        let stayers = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let mut snapshot = Snapshot::default();
        let mut candidates = Candidates::default();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for round in 0..300u64 {
            let mut instances: Vec<_> = stayers.iter().map(|e| instance(e, 1.0)).collect();
            if round % 2 == 1 {
                instances.insert(0, instance("10.0.0.9:80", 1.0));
            }
            snapshot.accept(
                InstanceSet {
                    instances,
                    protection_reached: false,
                },
                round,
            );
            assert!(candidates.refresh(&snapshot, &InstanceFilter::default()));
            *counts
                .entry(routed_to(&mut candidates, RequestView::default()))
                .or_default() += 1;
        }
        let shares: Vec<usize> = stayers
            .iter()
            .map(|e| counts.get(*e).copied().unwrap_or(0))
            .collect();
        let spread = shares.iter().max().unwrap() - shares.iter().min().unwrap();
        assert!(spread <= 2, "{counts:?}");
    }

    #[test]
    fn reject_codes_are_stable() {
        let codes: Vec<&str> = RejectCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "no_healthy_instance",
                "instance_deregistered",
                "registry_unavailable"
            ]
        );
    }

    fn routed_to(candidates: &mut Candidates, view: RequestView<'_>) -> String {
        match decide(candidates, Freshness::Fresh, REROUTE_OPEN, view) {
            Decision::Route { endpoint, .. } => endpoint.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn avoided_instances_are_skipped_while_another_is_left() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 1.0)]);
        candidates.set_avoided(["10.0.0.1:80"].into_iter(), 50);
        for _ in 0..4 {
            assert_eq!(
                routed_to(&mut candidates, RequestView::default()),
                "10.0.0.2:80"
            );
        }
        // Every candidate avoided (a bound that allows it cannot be set): route as
        // if none were.
        candidates.avoided = vec![true, true];
        let both: std::collections::BTreeSet<_> = (0..4)
            .map(|_| routed_to(&mut candidates, RequestView::default()))
            .collect();
        assert_eq!(both.len(), 2);
        candidates.set_avoided(std::iter::empty(), 50);
        let again: std::collections::BTreeSet<_> = (0..4)
            .map(|_| routed_to(&mut candidates, RequestView::default()))
            .collect();
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn avoidance_survives_a_new_list_and_prefers_known_hosts() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 1.0)]);
        candidates.set_avoided(["10.0.0.3:80"].into_iter(), 50);
        let mut snapshot = Snapshot::default();
        let hosts = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        // A second list, so the stamp differs from the first snapshot's.
        for (count, at) in [(1, 1), (3, 2)] {
            snapshot.accept(
                InstanceSet {
                    instances: hosts[..count].iter().map(|e| instance(e, 1.0)).collect(),
                    protection_reached: false,
                },
                at,
            );
        }
        assert!(candidates.refresh(&snapshot, &InstanceFilter::default()));
        let known = RoutableHosts::of(&["10.0.0.2:80", "10.0.0.3:80"]);
        let view = RequestView {
            pin: None,
            known: Some(&known),
        };
        for _ in 0..4 {
            assert_eq!(routed_to(&mut candidates, view), "10.0.0.2:80");
        }
    }

    #[test]
    fn a_list_that_shrank_keeps_the_skipped_within_the_bound() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 1.0)]);
        candidates.set_avoided(["10.0.0.1:80", "10.0.0.2:80"].into_iter(), 50);
        assert_eq!(candidates.avoided_count(), 1);
        candidates.set_avoided(["10.0.0.1:80", "10.0.0.2:80"].into_iter(), 100);
        assert_eq!(candidates.avoided_count(), 1, "never all");
        let mut alone = prepared(&[("10.0.0.1:80", 1.0)]);
        alone.set_avoided(["10.0.0.1:80"].into_iter(), 100);
        assert_eq!(alone.avoided_count(), 0);
        assert_eq!(routed_to(&mut alone, RequestView::default()), "10.0.0.1:80");
    }

    #[test]
    fn a_pick_is_found_again_only_in_the_list_it_came_from() {
        let mut candidates = prepared(&[("10.0.0.1:80", 1.0), ("10.0.0.2:80", 1.0)]);
        let endpoint = routed_to(&mut candidates, RequestView::default());
        let (index, built) = candidates.last_pick().unwrap();
        assert_eq!(
            candidates.endpoint_at(index, built),
            Some(endpoint.as_str())
        );
        assert_eq!(candidates.endpoint_at(index, built + 1), None);
        assert_eq!(candidates.endpoint_at(7, built), None);
    }
}
