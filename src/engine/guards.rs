//! The guards: each guarded scope (the global configuration, a rule, a learned
//! service) with its candidates, and the decision for one request. Which rule a
//! request falls under is chosen here too.

use super::host_traits::Metrics;
use super::ids::{GuardId, Id, Table, TargetId};
use super::metrics::{AvoidMetrics, RequestCounts, RequestMetrics};
use super::reject::{RejectResponse, Rejections};
use super::targets::Target;
use crate::pure::config::{GuardSettings, Routing};
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::registry::snapshot::Snapshot;
use crate::pure::routing::avoidance::{AvoidPolicy, Avoided};
use crate::pure::routing::decision::{self, Candidates, Decision, Policies, RequestView};
use crate::pure::routing::rules::{Matcher, RequestFacts, RuleSet};
use crate::pure::routing::upstream_hosts::RoutableHosts;

/// What the request brings beyond its rule facts; read only when needed.
pub trait RequestHost: RequestFacts {
    /// A request header, when it is valid UTF-8.
    fn header(&mut self, name: &str) -> Option<String>;
    /// The `ip:port` of the hosts the routed cluster can send to (Higress); `None`
    /// when the host cannot tell.
    fn upstream_hosts(&mut self) -> Option<&RoutableHosts>;
}

/// Everything the host does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction<'a> {
    /// No guard applies: leave the request alone.
    Ignore,
    /// Guarded, but the registry is unknown or stale and `onStale` is `fail_open`.
    PassThrough,
    /// Send it to `endpoint` through `routing`.
    Route {
        endpoint: &'a str,
        routing: &'a Routing,
        /// The protected headers the routing does not set itself: a set replaces
        /// what the client sent, the others must be removed.
        clear: &'a [String],
        /// What the host keeps to tell a failure of `endpoint` back
        /// (`Engine::on_routed_failure`).
        routed: Routed,
    },
    Reject(&'a RejectResponse),
}

/// A guard's view of a failure of one of its instances.
pub(super) struct AvoidView<'a> {
    /// Its usable instances.
    pub usable: &'a [String],
    pub policy: AvoidPolicy,
    pub service: &'a ServiceKey,
    pub metrics: AvoidMetrics,
}

/// A routed request as the host keeps it until its response: the guard, and the
/// candidate it picked in the list of that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub guard: GuardId,
    index: usize,
    built: u64,
}

/// What a rule (or the global configuration) applies to its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applies {
    Guard(GuardId),
    Disabled,
}

struct Guard {
    settings: GuardSettings,
    target: TargetId,
    candidates: Candidates,
    metrics: RequestMetrics,
    /// Defined with the guard, so the counters read 0 before any failure.
    avoid_metrics: AvoidMetrics,
    /// Requests decided since the last tick, counted into `metrics` on the tick.
    counts: RequestCounts,
    rejections: Rejections,
    /// The protected headers without the one this guard's routing sets.
    clear_on_route: Vec<String>,
}

pub(super) struct Guards {
    table: Table<GuardId, Guard>,
    /// Guards that counted requests since the last flush: a tick flushes only
    /// them, not every guard of a thousand.
    counted: Vec<GuardId>,
    global: Option<Applies>,
    rules: RuleSet<Applies>,
    protected_headers: Vec<String>,
    seed: u64,
}

impl Guards {
    /// `protected_headers`: what a client must never set; `seed` starts each
    /// guard's rotation at its own place.
    pub fn new(protected_headers: Vec<String>, seed: u64) -> Self {
        Self {
            table: Table::default(),
            counted: Vec::new(),
            global: None,
            rules: RuleSet::default(),
            protected_headers,
            seed,
        }
    }

    /// The id the next guard added will get.
    pub fn next_id(&self) -> GuardId {
        GuardId::from_index(self.table.len())
    }

    pub fn add(
        &mut self,
        settings: GuardSettings,
        target: TargetId,
        metrics: &mut dyn Metrics,
    ) -> GuardId {
        let view = settings.filter.view_name();
        let clear_on_route = self
            .protected_headers
            .iter()
            .filter(|name| !matches!(&settings.routing, Routing::Header(own) if own == *name))
            .cloned()
            .collect();
        let start = self.seed.rotate_left(self.table.len() as u32);
        self.table.push(Guard {
            clear_on_route,
            rejections: Rejections::prepare(
                settings.reject_status,
                &settings.service.name,
                &settings.service.group,
            ),
            metrics: RequestMetrics::define(metrics, &settings.service, view.as_deref()),
            avoid_metrics: AvoidMetrics::define(metrics, &settings.service),
            settings,
            target,
            candidates: Candidates::starting_at(start),
            counts: RequestCounts::default(),
        })
    }

    pub fn set_global(&mut self, applies: Applies) {
        self.global = Some(applies);
    }

    pub fn add_rule(&mut self, matcher: Matcher, applies: Applies) {
        self.rules.push(matcher, applies);
    }

    /// What the first matching rule, or else the global configuration, applies.
    pub fn select(&self, request: &mut dyn RequestFacts) -> Option<Applies> {
        self.rules.select(self.global.as_ref(), request).copied()
    }

    pub fn target_of(&self, id: GuardId) -> Option<TargetId> {
        self.table.get(id).map(|g| g.target)
    }

    /// The shortest refresh interval of `guards`.
    pub fn shortest_interval_ms(&self, guards: &[GuardId]) -> Option<u64> {
        guards
            .iter()
            .filter_map(|id| self.table.get(*id))
            .map(|g| g.settings.refresh_interval_ms)
            .min()
    }

    pub fn protected_headers(&self) -> &[String] {
        &self.protected_headers
    }

    /// Prepare the candidates of `guards` from their target's new content.
    pub fn refresh(&mut self, guards: &[GuardId], snapshot: &Snapshot, metrics: &mut dyn Metrics) {
        for id in guards {
            let Some(guard) = self.table.get_mut(*id) else {
                continue;
            };
            guard.candidates.refresh(snapshot, &guard.settings.filter);
            if let Some(gauge) = guard.metrics.usable_instances {
                let usable = u64::try_from(guard.candidates.endpoints().len()).unwrap_or(u64::MAX);
                metrics.record(gauge, usable);
            }
        }
    }

    /// The endpoint a routed request went to, while its guard's list is the same.
    pub fn endpoint_of(&self, routed: Routed) -> Option<&str> {
        let guard = self.table.get(routed.guard)?;
        guard.candidates.endpoint_at(routed.index, routed.built)
    }

    /// What a failure of one of guard `id`'s instances is judged by and counted in.
    pub fn avoid_view(&self, id: GuardId) -> Option<AvoidView<'_>> {
        let guard = self.table.get(id)?;
        let settings = &guard.settings;
        Some(AvoidView {
            usable: guard.candidates.endpoints(),
            policy: settings.avoid,
            service: &settings.service,
            metrics: guard.avoid_metrics,
        })
    }

    /// Make `guards` skip the instances `avoided` avoids at `now_ms`, each
    /// within its own bound.
    pub fn set_avoided(&mut self, guards: &[GuardId], avoided: &Avoided, now_ms: u64) {
        for id in guards {
            if let Some(guard) = self.table.get_mut(*id) {
                let percent = guard.settings.avoid.max_avoided_percent;
                guard
                    .candidates
                    .set_avoided(avoided.avoided_at(now_ms), percent);
            }
        }
    }

    /// Guard `id`'s skipped candidates and all its candidates.
    #[cfg(test)]
    pub fn avoided_of(&self, id: GuardId) -> Option<(usize, usize)> {
        let candidates = &self.table.get(id)?.candidates;
        Some((candidates.avoided_count(), candidates.endpoints().len()))
    }

    /// Count the requests decided since the last tick into the host's counters.
    pub fn flush_counts(&mut self, metrics: &mut dyn Metrics) {
        for id in self.counted.drain(..) {
            if let Some(guard) = self.table.get_mut(id) {
                guard.metrics.flush(&mut guard.counts, metrics);
            }
        }
    }

    /// Decide one request of guard `id`, whose service is `target`, and count it.
    pub fn decide(
        &mut self,
        id: GuardId,
        target: &Target,
        now_ms: u64,
        request: &mut dyn RequestHost,
    ) -> RequestAction<'_> {
        let Some(guard) = self.table.get_mut(id) else {
            return RequestAction::Ignore;
        };
        let freshness = target.freshness_for(now_ms, guard.settings.max_stale_ms);
        // Bytes, not strings, are read by the host: a client's non-UTF-8 pin names
        // no instance.
        let pin = request.header(&guard.settings.pin_header);
        let known_hosts = match guard.settings.routing {
            Routing::Higress => request.upstream_hosts(),
            Routing::Header(_) => None,
        };
        let view = RequestView {
            pin: pin.as_deref(),
            known: known_hosts.filter(|hosts| !hosts.is_empty()),
        };
        let policies = Policies {
            on_stale: guard.settings.on_stale,
            on_deregistered: guard.settings.on_deregistered,
        };
        let decision = decision::decide(&mut guard.candidates, freshness, policies, view);
        let counts = &mut guard.counts;
        if counts.is_empty() {
            self.counted.push(id);
        }
        match decision {
            Decision::Route { rerouted, .. } => {
                counts.routed += 1;
                counts.rerouted += u64::from(rerouted);
            }
            Decision::Reject(_) => counts.rejected += 1,
            Decision::PassThrough => counts.passed_through += 1,
        }
        match decision {
            // The endpoint is found again by the pick, so that the host keeps an
            // index rather than a copy of the address.
            Decision::Route { .. } => {
                let (index, built) = guard.candidates.last_pick().unwrap_or_default();
                match guard.candidates.endpoint_at(index, built) {
                    Some(endpoint) => RequestAction::Route {
                        endpoint,
                        routing: &guard.settings.routing,
                        clear: &guard.clear_on_route,
                        routed: Routed {
                            guard: id,
                            index,
                            built,
                        },
                    },
                    // Not reached: the decision just picked it from these candidates.
                    None => RequestAction::PassThrough,
                }
            }
            Decision::Reject(code) => RequestAction::Reject(guard.rejections.get(code)),
            Decision::PassThrough => RequestAction::PassThrough,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{config, FakeMetrics, FakeRequest};
    use crate::engine::ids::{Id, ServerId};
    use crate::engine::targets::Targets;
    use crate::pure::config::Scope;
    use crate::pure::polling::nacos::ApiVersion;
    use crate::testing::test;

    const RULES: &str = r#"{
        "nacos": {"cluster": "nacos"}, "service": {"name": "everything"},
        "_rules_": [
            {"_match_route_": ["orders"], "service": {"name": "orders"}},
            {"_match_route_": ["pay"], "service": {"name": "pay"}},
            {"_match_route_": ["off"], "enabled": false}
        ]
    }"#;
    const TWO: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1},
        {"ip":"10.0.0.2","port":80,"weight":1}]}"#;

    /// The guards of `RULES`, each with its own target, as the engine wires them.
    fn wired(metrics: &mut FakeMetrics) -> (Guards, Targets) {
        let parsed = config(RULES);
        let mut guards = Guards::new(parsed.protected_headers(), 7);
        let mut targets = Targets::default();
        let server = ServerId::from_index(0);
        let mut add = |scope: &Scope, guards: &mut Guards| match scope {
            Scope::Guard(settings) => {
                let id = guards.next_id();
                let (target, _) = targets.find_or_add(server, settings, id, 2_000, metrics);
                Applies::Guard(guards.add(settings.as_ref().clone(), target, metrics))
            }
            Scope::Disabled => Applies::Disabled,
        };
        let global = add(parsed.global.as_ref().unwrap(), &mut guards);
        guards.set_global(global);
        for (matcher, scope) in &parsed.rules {
            let applies = add(scope, &mut guards);
            guards.add_rule(matcher.clone(), applies);
        }
        (guards, targets)
    }

    #[test]
    fn the_first_matching_rule_applies_else_the_global_guard() {
        let mut metrics = FakeMetrics::default();
        let (guards, _) = wired(&mut metrics);
        let guarded = |route| match guards.select(&mut FakeRequest::on(route)) {
            Some(Applies::Guard(id)) => Some(id.index()),
            _ => None,
        };
        assert_eq!(guarded("orders"), Some(1));
        assert_eq!(guarded("pay"), Some(2));
        assert_eq!(guarded("anything"), Some(0));
        assert_eq!(
            guards.select(&mut FakeRequest::on("off")),
            Some(Applies::Disabled)
        );
    }

    #[test]
    fn new_content_reaches_only_the_guards_of_its_target() {
        let mut metrics = FakeMetrics::default();
        let (mut guards, mut targets) = wired(&mut metrics);
        let orders = guards.target_of(GuardId::from_index(1)).unwrap();
        targets
            .take_answer(
                orders,
                ApiVersion::V1,
                Some((200, TWO)),
                0,
                &mut metrics,
                None,
            )
            .unwrap();
        let snapshot = targets.get(orders).unwrap().snapshot();
        guards.refresh(targets.guards_of(orders), snapshot, &mut metrics);
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.orders.usable_instances"),
            2
        );
        assert_eq!(
            metrics
                .values
                .get("nacos_guard.service.public.DEFAULT_GROUP.pay.usable_instances"),
            Some(&0)
        );

        let mut request = FakeRequest::on("orders");
        let target = targets.get(orders).unwrap();
        let id = GuardId::from_index(1);
        let action = guards.decide(id, target, 10, &mut request);
        assert!(matches!(action, RequestAction::Route { .. }), "{action:?}");
        // Unknown registry: fail_open passes the request through.
        let pay = GuardId::from_index(2);
        let pay_target = targets.get(guards.target_of(pay).unwrap()).unwrap();
        assert_eq!(
            guards.decide(pay, pay_target, 10, &mut FakeRequest::on("pay")),
            RequestAction::PassThrough
        );
        guards.flush_counts(&mut metrics);
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.orders.routed"),
            1
        );
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.pay.passed_through"),
            1
        );
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.everything.routed"),
            0
        );
    }

    #[test]
    fn under_higress_the_hosts_the_cluster_knows_are_preferred_while_any_is_usable() {
        use crate::pure::routing::upstream_hosts::{tests::serialize, RoutableHosts};
        let higress = crate::pure::config::Capabilities {
            higress_routing: true,
        };
        let json = br#"{"nacos":{"cluster":"nacos"},"service":{"name":"demo"}}"#;
        let parsed = crate::pure::config::parse(json, higress).unwrap();
        let Some(Scope::Guard(settings)) = &parsed.global else {
            panic!("a global guard")
        };
        let mut metrics = FakeMetrics::default();
        let mut guards = Guards::new(parsed.protected_headers(), 7);
        let mut targets = Targets::default();
        let id = guards.next_id();
        let (target, _) =
            targets.find_or_add(ServerId::from_index(0), settings, id, 2_000, &mut metrics);
        let guard = guards.add(settings.as_ref().clone(), target, &mut metrics);
        let answer = Some((200, TWO));
        targets
            .take_answer(target, ApiVersion::V1, answer, 0, &mut metrics, None)
            .unwrap();
        let snapshot = targets.get(target).unwrap().snapshot();
        guards.refresh(targets.guards_of(target), snapshot, &mut metrics);
        let mut routed = |known: &[(&str, &str)]| {
            let mut request = FakeRequest::on("r");
            request.upstream = Some(RoutableHosts::read(&serialize(known)));
            let target = targets.get(target).unwrap();
            let picks: std::collections::BTreeSet<String> = (0..4)
                .map(|_| {
                    crate::engine::fakes::outcome(guards.decide(guard, target, 10, &mut request))
                })
                .collect();
            picks.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(routed(&[("10.0.0.2:80", "")]), ["10.0.0.2:80"]);
        assert_eq!(
            routed(&[]),
            ["10.0.0.1:80", "10.0.0.2:80"],
            "none known: every usable instance"
        );
    }
}
