//! `guardNacosRoutes`: the services learned from the cluster names of requests,
//! what each cluster name means, the bound on how many, and which learned
//! services idle (no request for `idleMs`, so not polled). A service is known
//! by its Higress host (`<service>.<group>.<namespace>.nacos`): the clusters of
//! one service on several ports or subsets are one service, in the bound and in
//! the shared list.

use std::ops::Range;

use log::{info, warn};

use super::host_traits::Metrics;
use super::ids::{slot_at, GuardId, Id, TargetId};
use super::metrics::{bump, LearnMetrics};
use super::targets::Targets;
use crate::pure::config::{AutoGuard, GuardSettings};
use crate::pure::hashing::WordMap;
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::routing::cluster_name;
use crate::pure::routing::nacos_cluster::{self, ClusterService};

/// What a cluster name, or an entry of the shared list, stands for.
pub(super) enum Lookup {
    Guarded(GuardId),
    /// Not a Nacos service, ambiguous, or refused: left alone.
    LeftAlone,
    /// A Nacos service seen for the first time: its host, and the settings to
    /// guard it by.
    New {
        host: String,
        settings: Box<GuardSettings>,
    },
    /// A learned service refused when it was listed again, due to ask the list
    /// once more: its guard and target, and the host to list.
    Relist {
        guard: GuardId,
        target: TargetId,
        host: String,
    },
}

/// What this VM knows a cluster name to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Guarded(GuardId, TargetId),
    /// Not a Nacos service, or one whose name cannot be read unambiguously.
    NotNacos,
    /// A Nacos service refused because `maxServices` were learned; asked for
    /// again from `retry_at_ms` on, since idle services free their places.
    Refused {
        retry_at_ms: u64,
    },
}

/// How often a follower looks again for the services it saw listed, until the
/// poller's heartbeat carries them.
const RELIST_CHECK_MS: u64 = 1_000;

/// How long a refused service is left alone before a request tries again.
const REFUSED_RETRY_MS: u64 = 1_000;

/// What is kept of a learned service.
struct Learned {
    /// Its entry in the shared list.
    host: String,
    guard: GuardId,
    /// Polled only while some VM routed a request to it within `idleMs`.
    active: bool,
    /// Refused after it was learned: the list was full when it came back from
    /// idling, or when this VM listed it again.
    refused: bool,
    /// Learned from a request and not yet found listed by this VM's tick: not
    /// polled until then, so that `maxServices` holds for what is polled.
    pending: bool,
    /// While refused: when a request asks the list for a place again. Idle
    /// services free places, and no other VM may ever list this one.
    retry_at_ms: u64,
    /// When the poller next reads when it last carried a request.
    next_idle_check_ms: u64,
    /// When this VM last said it carried a request.
    touched_ms: u64,
    /// When this VM last added it to the list again after a request found its
    /// snapshot idle or stale.
    relisted_ms: u64,
}

pub(super) struct LearnedServices {
    settings: AutoGuard,
    by_cluster: WordMap<String, Known>,
    /// Learned services by host: their target.
    by_host: WordMap<String, TargetId>,
    /// The learned state of each target, by its index (`None`: configured).
    by_target: Vec<Option<Learned>>,
    /// Services this VM learned that the shared list may lack (an addition
    /// lost to contention, or erased by another VM's first write of the list):
    /// added again on its ticks until the poller's heartbeat carries the
    /// service (the poller's own: until its tick found them listed).
    unlisted: Vec<Unlisted>,
    /// The shared list changed since the poller last took idle services off
    /// it again.
    list_moved: bool,
    /// When a follower next looks for the services it saw listed and the
    /// poller's heartbeat does not carry yet.
    relist_check_at_ms: u64,
    /// Learned services not idling, which is what `maxServices` bounds.
    active: usize,
    full_reported: bool,
    metrics: LearnMetrics,
}

/// The service label of a Higress host, for log lines.
fn service_name(host: &str) -> &str {
    let labels = host.strip_suffix(".nacos").unwrap_or(host);
    labels.rsplitn(3, '.').nth(2).unwrap_or(host)
}

/// The host a cluster name or a list entry names: entries are hosts, or, as
/// versions before 0.2 wrote them, whole cluster names.
fn host_of(entry: &str) -> &str {
    cluster_name::parse(entry).map_or(entry, |name| name.host)
}

impl LearnedServices {
    pub fn new(settings: AutoGuard, metrics: LearnMetrics) -> Self {
        Self {
            settings,
            by_cluster: WordMap::default(),
            by_host: WordMap::default(),
            by_target: Vec::new(),
            unlisted: Vec::new(),
            relist_check_at_ms: 0,
            list_moved: false,
            active: 0,
            full_reported: false,
            metrics,
        }
    }

    /// What shapes the services learned, for the key of the shared list.
    pub fn scope(&self) -> String {
        format!("{:?}", self.settings)
    }

    pub fn max_services(&self) -> usize {
        self.settings.max_services
    }

    fn state(&self, target: TargetId) -> Option<&Learned> {
        self.by_target.get(target.index())?.as_ref()
    }

    fn state_mut(&mut self, target: TargetId) -> Option<&mut Learned> {
        self.by_target.get_mut(target.index())?.as_mut()
    }

    /// What `cluster` stands for on a request; a cluster that is no Nacos
    /// service is remembered as left alone, another port or subset of a known
    /// service is that service, and a request to a refused one is counted.
    pub fn lookup(&mut self, cluster: &str, now_ms: u64, metrics: &mut dyn Metrics) -> Lookup {
        let known = match self.by_cluster.get(cluster) {
            Some(Known::Refused { retry_at_ms }) if now_ms >= *retry_at_ms => {
                return self.read(host_of(cluster));
            }
            Some(known) => *known,
            None => {
                let host = host_of(cluster);
                let known = match self.by_host.get(host).copied() {
                    Some(target) => match self.state(target) {
                        Some(learned) => Known::Guarded(learned.guard, target),
                        None => Known::NotNacos,
                    },
                    None => match self.read(host) {
                        new @ Lookup::New { .. } => return new,
                        Lookup::Guarded(_) | Lookup::LeftAlone | Lookup::Relist { .. } => {
                            Known::NotNacos
                        }
                    },
                };
                self.by_cluster.insert(cluster.to_string(), known);
                known
            }
        };
        match known {
            Known::Guarded(guard, target) => {
                if let Some(learned) = self.state_mut(target).filter(|l| l.refused) {
                    if now_ms >= learned.retry_at_ms {
                        learned.retry_at_ms = now_ms.saturating_add(REFUSED_RETRY_MS);
                        let host = learned.host.clone();
                        return Lookup::Relist {
                            guard,
                            target,
                            host,
                        };
                    }
                    bump(metrics, self.metrics.refused);
                    return Lookup::LeftAlone;
                }
                Lookup::Guarded(guard)
            }
            Known::NotNacos => Lookup::LeftAlone,
            Known::Refused { .. } => {
                bump(metrics, self.metrics.refused);
                Lookup::LeftAlone
            }
        }
    }

    /// What an entry another VM listed stands for: `New` unless this VM has the
    /// service already. One this VM refused is taken now that the list holds it.
    pub fn listed_elsewhere(&mut self, entry: &str) -> Lookup {
        let host = host_of(entry);
        let Some(target) = self.by_host.get(host).copied() else {
            return self.read(host);
        };
        let Some(learned) = self
            .by_target
            .get_mut(target.index())
            .and_then(Option::as_mut)
        else {
            return Lookup::LeftAlone;
        };
        let guard = learned.guard;
        self.take_back(target);
        Lookup::Guarded(guard)
    }

    /// The service of `target` has its place on the list now: no longer
    /// refused, nor waiting for its VM's tick to find it listed.
    pub fn take_back(&mut self, target: TargetId) {
        let Some(learned) = self.state_mut(target) else {
            return;
        };
        learned.pending = false;
        if learned.refused {
            learned.refused = false;
            let active = learned.active;
            self.active += usize::from(active);
        }
    }

    /// A request to the refused service of `target` found the list still full.
    pub fn still_refused(&mut self, metrics: &mut dyn Metrics) {
        bump(metrics, self.metrics.refused);
    }

    /// The service `host` stands for, read from the name alone.
    fn read(&self, host: &str) -> Lookup {
        match nacos_cluster::service_of_host(host, &self.settings.names) {
            ClusterService::Service(service) => {
                let mut settings = self.settings.template.clone();
                settings.service = service;
                Lookup::New {
                    host: host.to_string(),
                    settings: Box::new(settings),
                }
            }
            ClusterService::NotNacos => Lookup::LeftAlone,
            ClusterService::Ambiguous(reason) => {
                warn!("nacos-instance-guard: not guarding: {reason}");
                Lookup::LeftAlone
            }
        }
    }

    /// The hosts of the services this VM polls and that do not idle, for the
    /// poller to keep them listed.
    pub fn active_hosts(&self) -> impl Iterator<Item = &str> {
        self.by_target
            .iter()
            .flatten()
            .filter(|learned| learned.active && !learned.refused)
            .map(|learned| learned.host.as_str())
    }

    /// The services that may still be missing from the shared list; taken, to
    /// be handed back with `keep_unlisted` if still missing.
    pub fn take_unlisted(&mut self) -> Vec<Unlisted> {
        std::mem::take(&mut self.unlisted)
    }

    pub fn keep_unlisted(&mut self, unlisted: Unlisted) {
        self.unlisted.push(unlisted);
    }

    /// The service of `target`, just learned, was handed in to the poller
    /// under inbox number `number`: its VM looks for it in the list only once
    /// the poller took that number.
    pub fn handed_in(&mut self, target: TargetId, number: u64) {
        if let Some(unlisted) = self.unlisted.iter_mut().find(|u| u.target == target) {
            unlisted.seen_listed = true;
            unlisted.handed = Some(number);
        }
    }

    /// As the poller: the shared list changed (read on this tick).
    pub fn list_moved(&mut self) {
        self.list_moved = true;
    }

    /// Whether a follower looks at `now_ms` for the services it saw listed
    /// (reading the list costs its whole size): once a second.
    pub fn relist_check_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.relist_check_at_ms {
            return false;
        }
        self.relist_check_at_ms = now_ms.saturating_add(RELIST_CHECK_MS);
        true
    }

    /// Whether this VM may learn one more service when no shared list bounds
    /// it (a VM polling alone): the services not idling are fewer than the bound.
    pub fn has_room(&self) -> bool {
        self.active < self.settings.max_services
    }

    /// `cluster` (a request's) is not learned at `now_ms`: the bound is reached.
    pub fn refuse(&mut self, cluster: &str, now_ms: u64, metrics: &mut dyn Metrics) {
        self.count_refusal(cluster, metrics);
        let retry_at_ms = now_ms.saturating_add(REFUSED_RETRY_MS);
        self.by_cluster
            .insert(cluster.to_string(), Known::Refused { retry_at_ms });
    }

    /// The learned service of `target` found the list full when it was listed
    /// again: left alone until the list holds it.
    pub fn refuse_learned(&mut self, target: TargetId, metrics: &mut dyn Metrics) {
        let Some(learned) = self.state_mut(target) else {
            return;
        };
        if learned.refused {
            return;
        }
        learned.refused = true;
        let (host, active) = (learned.host.clone(), learned.active);
        self.active -= usize::from(active);
        self.count_refusal(&host, metrics);
    }

    fn count_refusal(&mut self, name: &str, metrics: &mut dyn Metrics) {
        bump(metrics, self.metrics.refused);
        if !self.full_reported {
            self.full_reported = true;
            warn!(
                "nacos-instance-guard: {} services learned already (guardNacosRoutes.maxServices); \
                 requests to {name} and other new services are left alone",
                self.settings.max_services
            );
        }
    }

    /// The service of `host` is guarded by `guard`, polling `target`, from
    /// `now_ms` on. `cluster`: the request's cluster that found it (`None`: the
    /// list named it); `listed`: the shared list is known to hold it.
    #[allow(clippy::too_many_arguments)]
    pub fn learned(
        &mut self,
        host: &str,
        cluster: Option<&str>,
        service: &ServiceKey,
        (guard, target): (GuardId, TargetId),
        now_ms: u64,
        listed: bool,
        metrics: &mut dyn Metrics,
    ) {
        if let Some(slot) = slot_at(&mut self.by_target, target.index()) {
            // One named by the list keeps the last request time stored there:
            // the idle check of this very tick reads it.
            *slot = Some(Learned {
                host: host.to_string(),
                guard,
                active: true,
                refused: false,
                pending: !listed,
                retry_at_ms: 0,
                next_idle_check_ms: now_ms,
                touched_ms: if cluster.is_some() { now_ms } else { 0 },
                relisted_ms: now_ms,
            });
        }
        self.active += 1;
        self.by_host.insert(host.to_string(), target);
        if let Some(gauge) = self.metrics.learned {
            metrics.record(gauge, u64::try_from(self.by_host.len()).unwrap_or(u64::MAX));
        }
        if !listed {
            self.unlisted.push(Unlisted {
                host: host.to_string(),
                target,
                once: false,
                seen_listed: false,
                handed: None,
            });
        }
        let Some(cluster) = cluster else {
            return;
        };
        self.by_cluster
            .insert(cluster.to_string(), Known::Guarded(guard, target));
        info!(
            "nacos-instance-guard: guarding service {} (group {}, namespace {}) learned from {cluster}",
            service.name, service.group, service.namespace_id
        );
    }

    /// Whether this VM carried no request to `target` for `idleMs`.
    pub fn idle_here(&self, target: TargetId, now_ms: u64) -> bool {
        self.state(target).is_some_and(|learned| {
            now_ms.saturating_sub(learned.touched_ms) > self.settings.idle_ms
        })
    }

    /// A learned service that idles is not polled.
    pub fn is_paused(&self, target: TargetId) -> bool {
        self.state(target)
            .is_some_and(|learned| !learned.active || learned.refused || learned.pending)
    }

    /// A request went to `target` at `now_ms`: whether to tell the poller now.
    /// At most once per eighth of `idleMs`, or at once if the service idles
    /// (`fresh` false: the poller let its snapshot go without answers).
    pub fn touch(&mut self, target: TargetId, now_ms: u64, fresh: bool) -> bool {
        let idle_ms = self.settings.idle_ms;
        let Some(learned) = self.state_mut(target) else {
            return false;
        };
        let due = !fresh && learned.touched_ms != now_ms
            || now_ms >= learned.touched_ms.saturating_add(idle_ms / 8);
        if due {
            learned.touched_ms = now_ms;
        }
        due
    }

    /// After a request found the snapshot of `target` not fresh, add it to the
    /// list again on the next tick: the poller may have let it idle and
    /// unlisted it. At most once a second per service.
    pub fn relist_after_request(&mut self, target: TargetId, now_ms: u64) {
        let Some(learned) = self.state_mut(target) else {
            return;
        };
        if now_ms < learned.relisted_ms.saturating_add(1_000) {
            return;
        }
        learned.relisted_ms = now_ms;
        let host = learned.host.clone();
        self.unlisted.push(Unlisted {
            host,
            target,
            once: true,
            seen_listed: false,
            handed: None,
        });
    }

    /// As the poller: pause polling each learned service no VM has routed a
    /// request to for `idleMs` (`touched_at` reads when one last did, by
    /// heartbeat number), and resume it when one does. What changed, for the
    /// poller to take off the list or put back on it.
    pub fn check_idle(
        &mut self,
        now_ms: u64,
        targets: &Targets,
        touched_at: impl Fn(u64) -> Option<u64>,
    ) -> IdleChanges {
        let idle_ms = self.settings.idle_ms;
        let mut changes = IdleChanges::default();
        // Once the list moved, every idle service is looked at now: a
        // follower's late relisting may have put one back.
        let list_moved = std::mem::take(&mut self.list_moved);
        for (index, slot) in self.by_target.iter_mut().enumerate() {
            let Some(learned) = slot else {
                continue;
            };
            let due = now_ms >= learned.next_idle_check_ms || list_moved && !learned.active;
            if !due || learned.refused {
                continue;
            }
            let id = TargetId::from_index(index);
            let Some(target) = targets.get(id) else {
                continue;
            };
            let touched = touched_at(target.heartbeat_id()).unwrap_or(0);
            let active = now_ms.saturating_sub(touched) <= idle_ms;
            if learned.active && !active {
                changes.paused.push(learned.host.clone());
                self.active -= 1;
            }
            if !learned.active && !active && list_moved {
                changes.still_idle.push(learned.host.clone());
            }
            if !learned.active && active {
                changes.resumed.push((learned.host.clone(), id));
                self.active += 1;
            }
            learned.active = active;
            // An idle service is looked at every second, so traffic brings it back soon.
            learned.next_idle_check_ms = now_ms + if active { idle_ms / 8 } else { 1_000 };
        }
        // A line a service, but one line for many: a new poller may find
        // thousands idle at once.
        if changes.paused.len() <= 8 {
            for host in &changes.paused {
                info!(
                    "nacos-instance-guard: no request to service {} for {idle_ms} ms; polling it paused",
                    service_name(host)
                );
            }
        } else if let Some(first) = changes.paused.first() {
            info!(
                "nacos-instance-guard: no request to service {} and {} other services for \
                 {idle_ms} ms; polling them paused",
                service_name(first),
                changes.paused.len() - 1
            );
        }
        changes
    }
}

/// A service this VM learned that the shared list may lack.
pub(super) struct Unlisted {
    pub host: String,
    pub target: TargetId,
    /// Added once, on the next tick: a request brought it back from idling,
    /// and the poller's heartbeat may still carry it from before.
    pub once: bool,
    /// An announcement found it listed, or it was handed in to the poller: it
    /// is looked for again only once a second (`RELIST_CHECK_MS`), in case
    /// another VM's first write erased it.
    pub seen_listed: bool,
    /// Handed in to the poller under this inbox number: looked for in the
    /// list only once the poller took that number.
    pub handed: Option<u64>,
}

impl Unlisted {
    /// Whether it still waits in the inbox: handed in under one of `waiting`,
    /// the numbers the poller has not taken yet (one past them was lost to a
    /// late seed of the inbox, and is waited for no more).
    pub fn waits_in(&self, waiting: &Range<u64>) -> bool {
        self.handed.is_some_and(|number| waiting.contains(&number))
    }
}

/// Learned services that stopped or started idling on one idle check.
#[derive(Default)]
pub(super) struct IdleChanges {
    /// Their slots free: taken off the shared list.
    pub paused: Vec<String>,
    /// Idle before and still, looked at because the list moved: taken off
    /// it again, should a follower's late relisting have put one back (a
    /// request just before the poller found it idle, on a clock a little
    /// behind the poller's).
    pub still_idle: Vec<String>,
    /// Listed again; refused if the list filled meanwhile.
    pub resumed: Vec<(String, TargetId)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{config, FakeMetrics};
    use crate::engine::ids::ServerId;
    use crate::testing::test;

    const AUTO: &str = r#"{"nacos": {"cluster": "nacos"},
        "guardNacosRoutes": {"maxServices": 2, "idleMs": 8000}}"#;
    const ORDERS: &str = "outbound|8080||orders.DEFAULT-GROUP.public.nacos";
    const PAY: &str = "outbound|8080||pay.DEFAULT-GROUP.public.nacos";
    const SHOP: &str = "outbound|8080||shop.DEFAULT-GROUP.public.nacos";

    fn learned(metrics: &mut FakeMetrics) -> LearnedServices {
        let auto = config(AUTO).auto.unwrap();
        LearnedServices::new(auto, LearnMetrics::define(metrics))
    }

    #[test]
    fn the_list_is_shared_by_identical_learning_settings_only() {
        let scope = |json: &str| {
            let auto = config(json).auto.unwrap();
            LearnedServices::new(auto, LearnMetrics::default()).scope()
        };
        let other = r#"{"nacos": {"cluster": "nacos"},
            "guardNacosRoutes": {"maxServices": 2, "idleMs": 8000, "groups": ["G"]}}"#;
        let edited_elsewhere = r#"{"nacos": {"cluster": "nacos"},
            "guardNacosRoutes": {"maxServices": 2, "idleMs": 8000},
            "_rules_": [{"_match_route_": ["legacy"], "enabled": false}]}"#;
        assert_ne!(scope(AUTO), scope(other));
        assert_eq!(scope(AUTO), scope(edited_elsewhere));
    }

    /// Learn `cluster` as the engine does, with guard and target `index`.
    fn learn(services: &mut LearnedServices, targets: &mut Targets, cluster: &str, index: usize) {
        let mut metrics = FakeMetrics::default();
        let Lookup::New { host, settings } = services.lookup(cluster, 0, &mut metrics) else {
            panic!("{cluster} is new");
        };
        let guard = GuardId::from_index(index);
        let server = ServerId::from_index(0);
        let (target, _) = targets.find_or_add(server, &settings, guard, 2_000, &mut metrics);
        assert_eq!(target.index(), index);
        let ids = (guard, target);
        services.learned(
            &host,
            Some(cluster),
            &settings.service,
            ids,
            0,
            true,
            &mut metrics,
        );
    }

    #[test]
    fn a_cluster_name_is_read_once_and_remembered() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        assert!(matches!(
            services.lookup("outbound|80||web.dns", 0, &mut metrics),
            Lookup::LeftAlone
        ));
        assert!(matches!(
            services.lookup("outbound|80||web.dns", 0, &mut metrics),
            Lookup::LeftAlone
        ));
        let Lookup::New { host, settings } = services.lookup(ORDERS, 0, &mut metrics) else {
            panic!("a Nacos service");
        };
        assert_eq!(settings.service.name, "orders");
        assert_eq!(host, "orders.DEFAULT-GROUP.public.nacos");

        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        assert!(
            matches!(services.lookup(ORDERS, 0, &mut metrics), Lookup::Guarded(g) if g.index() == 0)
        );
        // Another port or a subset of the service is the same service.
        for cluster in [
            "outbound|9090||orders.DEFAULT-GROUP.public.nacos",
            "outbound|8080|v1|orders.DEFAULT-GROUP.public.nacos",
        ] {
            let lookup = services.lookup(cluster, 0, &mut metrics);
            assert!(
                matches!(lookup, Lookup::Guarded(g) if g.index() == 0),
                "{cluster}"
            );
        }
        assert!(services.has_room(), "one service, one place");
    }

    #[test]
    fn the_bound_refuses_new_services_counts_them_and_remembers_them() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        assert!(services.has_room());
        learn(&mut services, &mut targets, PAY, 1);
        assert!(!services.has_room());
        services.refuse(SHOP, 0, &mut metrics);
        assert_eq!(metrics.get("nacos_guard.learned_services_refused"), 1);
        assert!(matches!(
            services.lookup(SHOP, 999, &mut metrics),
            Lookup::LeftAlone
        ));
        assert_eq!(
            metrics.get("nacos_guard.learned_services_refused"),
            2,
            "per request"
        );
        assert!(
            matches!(
                services.lookup(SHOP, 1_000, &mut metrics),
                Lookup::New { .. }
            ),
            "asked for again a second later"
        );
        assert!(
            matches!(services.listed_elsewhere(SHOP), Lookup::New { .. }),
            "taken once another VM listed it"
        );
    }

    #[test]
    fn touches_are_told_once_per_eighth_of_idle_unless_the_snapshot_idles() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        let target = TargetId::from_index(0);
        assert!(!services.touch(target, 500, true));
        assert!(services.touch(target, 1_000, true), "an eighth of 8,000 ms");
        assert!(!services.touch(target, 1_001, true));
        assert!(
            services.touch(target, 1_002, false),
            "an idle snapshot tells at once"
        );
        assert!(
            !services.touch(TargetId::from_index(5), 9_000, false),
            "not learned"
        );
    }

    #[test]
    fn a_busy_service_is_looked_at_once_per_eighth_of_idle_ms_not_on_every_tick() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        let reads = std::cell::Cell::new(0);
        for now in (0..8_000).step_by(20) {
            services.check_idle(now, &targets, |_| {
                reads.set(reads.get() + 1);
                Some(now)
            });
        }
        assert_eq!(reads.get(), 8, "at 0, 1000, ..., 7000 ms of 8,000 ms idle");
    }

    #[test]
    fn a_service_without_requests_for_idle_ms_pauses_and_traffic_resumes_it() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        let target = TargetId::from_index(0);
        learn(&mut services, &mut targets, PAY, 1);
        assert!(!services.has_room());
        let touched = std::cell::Cell::new(Some(0));
        let changes = services.check_idle(8_000, &targets, |_| touched.get());
        assert!(changes.paused.is_empty() && changes.resumed.is_empty());
        assert!(!services.is_paused(target));
        let changes = services.check_idle(9_001, &targets, |_| touched.get());
        assert!(services.is_paused(target));
        assert_eq!(changes.paused.len(), 2);
        assert!(services.has_room(), "an idle service frees its place");
        touched.set(Some(9_500));
        services.check_idle(9_600, &targets, |_| touched.get());
        assert!(services.is_paused(target), "looked at again a second later");
        let changes = services.check_idle(10_001, &targets, |_| touched.get());
        assert!(!services.is_paused(target));
        assert_eq!(changes.resumed.len(), 2);
        assert!(!services.has_room());
    }
}
