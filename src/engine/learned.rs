//! `guardNacosRoutes`: the services learned from the cluster names of requests,
//! what each cluster name means, the bound on how many, and which learned
//! services idle (no request for `idleMs`, so not polled).

use log::{info, warn};

use super::host_traits::Metrics;
use super::ids::{GuardId, Id, TargetId};
use super::metrics::{bump, LearnMetrics};
use super::targets::Targets;
use crate::pure::config::{AutoGuard, GuardSettings};
use crate::pure::hashing::WordMap;
use crate::pure::routing::nacos_cluster::{self, ClusterService};

/// What a cluster name stands for.
pub(super) enum Lookup {
    Guarded(GuardId),
    /// Not a Nacos service, ambiguous, or refused: left alone.
    LeftAlone,
    /// A Nacos service seen for the first time, with the settings to guard it by.
    New(Box<GuardSettings>),
}

/// What this VM knows a cluster name to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Guarded(GuardId),
    /// Not a Nacos service, or one whose name cannot be read unambiguously.
    NotNacos,
    /// A Nacos service refused because `maxServices` were learned.
    Refused,
}

/// What is kept of a learned service.
struct Learned {
    /// Polled only while some VM routed a request to it within `idleMs`.
    active: bool,
    /// When the poller next reads when it last carried a request.
    next_idle_check_ms: u64,
    /// When this VM last said it carried a request.
    touched_ms: u64,
}

pub(super) struct LearnedServices {
    settings: AutoGuard,
    by_cluster: WordMap<String, Known>,
    /// The learned state of each target, by its index (`None`: configured).
    by_target: Vec<Option<Learned>>,
    /// Services this VM learned that the shared list may lack (an addition lost
    /// to contention, or erased by another VM's first write of the list): added
    /// again on each tick until the poller's heartbeat carries the service.
    unlisted: Vec<(String, TargetId)>,
    count: usize,
    full_reported: bool,
    metrics: LearnMetrics,
}

impl LearnedServices {
    pub fn new(settings: AutoGuard, metrics: LearnMetrics) -> Self {
        Self {
            settings,
            by_cluster: WordMap::default(),
            by_target: Vec::new(),
            unlisted: Vec::new(),
            count: 0,
            full_reported: false,
            metrics,
        }
    }

    pub fn max_services(&self) -> usize {
        self.settings.max_services
    }

    /// What `cluster` stands for on a request; a cluster that is no Nacos
    /// service is remembered as left alone, and a request to a refused one is
    /// counted.
    pub fn lookup(&mut self, cluster: &str, metrics: &mut dyn Metrics) -> Lookup {
        match self.by_cluster.get(cluster) {
            Some(Known::Guarded(guard)) => Lookup::Guarded(*guard),
            Some(Known::NotNacos) => Lookup::LeftAlone,
            Some(Known::Refused) => {
                bump(metrics, self.metrics.refused);
                Lookup::LeftAlone
            }
            None => self.read(cluster),
        }
    }

    /// What a cluster another VM listed stands for: `New` unless this VM guards
    /// it already. One this VM refused is taken now that the list holds it.
    pub fn listed_elsewhere(&mut self, cluster: &str) -> Lookup {
        match self.by_cluster.get(cluster) {
            Some(Known::Guarded(guard)) => Lookup::Guarded(*guard),
            Some(Known::NotNacos) => Lookup::LeftAlone,
            Some(Known::Refused) | None => self.read(cluster),
        }
    }

    fn read(&mut self, cluster: &str) -> Lookup {
        match nacos_cluster::service_of(cluster, &self.settings.names) {
            ClusterService::Service(service) => {
                let mut settings = self.settings.template.clone();
                settings.service = service;
                Lookup::New(Box::new(settings))
            }
            ClusterService::NotNacos => {
                self.by_cluster.insert(cluster.to_string(), Known::NotNacos);
                Lookup::LeftAlone
            }
            ClusterService::Ambiguous(reason) => {
                warn!("nacos-instance-guard: not guarding: {reason}");
                self.by_cluster.insert(cluster.to_string(), Known::NotNacos);
                Lookup::LeftAlone
            }
        }
    }

    /// The clusters this VM guards, for the poller to keep them listed.
    pub fn guarded_clusters(&self) -> impl Iterator<Item = &str> {
        self.by_cluster
            .iter()
            .filter(|(_, known)| matches!(known, Known::Guarded(_)))
            .map(|(cluster, _)| cluster.as_str())
    }

    /// The services that may still be missing from the shared list, with their
    /// targets; taken, to be handed back with `keep_unlisted` if still missing.
    pub fn take_unlisted(&mut self) -> Vec<(String, TargetId)> {
        std::mem::take(&mut self.unlisted)
    }

    pub fn keep_unlisted(&mut self, cluster: String, target: TargetId) {
        self.unlisted.push((cluster, target));
    }

    /// Whether this VM may learn one more service.
    pub fn has_room(&self) -> bool {
        self.count < self.settings.max_services
    }

    /// `cluster` is not learned, or no longer: the bound is reached.
    pub fn refuse(&mut self, cluster: &str, metrics: &mut dyn Metrics) {
        if let Some(Known::Guarded(_)) = self.by_cluster.get(cluster) {
            self.count = self.count.saturating_sub(1);
        }
        bump(metrics, self.metrics.refused);
        if !self.full_reported {
            self.full_reported = true;
            warn!(
                "nacos-instance-guard: {} services learned already (guardNacosRoutes.maxServices); \
                 requests to {cluster} and other new services are left alone",
                self.settings.max_services
            );
        }
        self.by_cluster.insert(cluster.to_string(), Known::Refused);
    }

    /// `cluster` is guarded by `guard`, polling `target`, from `now_ms` on.
    /// `requested`: a request to it came now (else the list named it); `listed`:
    /// the shared list is known to hold it.
    #[allow(clippy::too_many_arguments)]
    pub fn learned(
        &mut self,
        cluster: &str,
        settings: &GuardSettings,
        (guard, target): (GuardId, TargetId),
        now_ms: u64,
        requested: bool,
        listed: bool,
        metrics: &mut dyn Metrics,
    ) {
        self.count += 1;
        if let Some(gauge) = self.metrics.learned {
            metrics.record(gauge, u64::try_from(self.count).unwrap_or(u64::MAX));
        }
        let index = target.index();
        if self.by_target.len() <= index {
            self.by_target.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.by_target.get_mut(index) {
            // One named by the list keeps the last request time stored there:
            // the idle check of this very tick reads it.
            *slot = Some(Learned {
                active: true,
                next_idle_check_ms: now_ms,
                touched_ms: if requested { now_ms } else { 0 },
            });
        }
        self.by_cluster
            .insert(cluster.to_string(), Known::Guarded(guard));
        if !listed {
            self.unlisted.push((cluster.to_string(), target));
        }
        if !requested {
            return;
        }
        let service = &settings.service;
        info!(
            "nacos-instance-guard: guarding service {} (group {}, namespace {}) learned from {cluster}",
            service.name, service.group, service.namespace_id
        );
    }

    /// A learned service that idles is not polled.
    pub fn is_paused(&self, target: TargetId) -> bool {
        matches!(self.by_target.get(target.index()), Some(Some(learned)) if !learned.active)
    }

    /// A request went to `target` at `now_ms`: whether to tell the poller now.
    /// At most once per eighth of `idleMs`, or at once if the service idles
    /// (`fresh` false: the poller let its snapshot go without answers).
    pub fn touch(&mut self, target: TargetId, now_ms: u64, fresh: bool) -> bool {
        let idle_ms = self.settings.idle_ms;
        let Some(Some(learned)) = self.by_target.get_mut(target.index()) else {
            return false;
        };
        let due = !fresh && learned.touched_ms != now_ms
            || now_ms >= learned.touched_ms.saturating_add(idle_ms / 8);
        if due {
            learned.touched_ms = now_ms;
        }
        due
    }

    /// As the poller: pause polling each learned service no VM has routed a
    /// request to for `idleMs` (`touched_at` reads when one last did, by
    /// heartbeat number), and resume it when one does.
    pub fn check_idle(
        &mut self,
        now_ms: u64,
        targets: &Targets,
        touched_at: impl Fn(u64) -> Option<u64>,
    ) {
        let idle_ms = self.settings.idle_ms;
        for (index, slot) in self.by_target.iter_mut().enumerate() {
            let Some(learned) = slot else {
                continue;
            };
            if now_ms < learned.next_idle_check_ms {
                continue;
            }
            let Some(target) = targets.get(TargetId::from_index(index)) else {
                continue;
            };
            let touched = touched_at(target.heartbeat_id()).unwrap_or(0);
            let active = now_ms.saturating_sub(touched) <= idle_ms;
            if learned.active && !active {
                info!(
                    "nacos-instance-guard: no request to service {} for {idle_ms} ms; polling it paused",
                    target.service().name
                );
            }
            learned.active = active;
            // An idle service is looked at every second, so traffic brings it back soon.
            learned.next_idle_check_ms = now_ms + if active { idle_ms / 8 } else { 1_000 };
        }
    }
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

    /// Learn `cluster` as the engine does, with guard and target `index`.
    fn learn(services: &mut LearnedServices, targets: &mut Targets, cluster: &str, index: usize) {
        let mut metrics = FakeMetrics::default();
        let Lookup::New(settings) = services.lookup(cluster, &mut metrics) else {
            panic!("{cluster} is new");
        };
        let guard = GuardId::from_index(index);
        let server = ServerId::from_index(0);
        let (target, _) = targets.find_or_add(server, &settings, guard, 2_000, &mut metrics);
        assert_eq!(target.index(), index);
        services.learned(
            cluster,
            &settings,
            (guard, target),
            0,
            true,
            true,
            &mut metrics,
        );
    }

    #[test]
    fn a_cluster_name_is_read_once_and_remembered() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        assert!(matches!(
            services.lookup("outbound|80||web.dns", &mut metrics),
            Lookup::LeftAlone
        ));
        assert!(matches!(
            services.lookup("outbound|80||web.dns", &mut metrics),
            Lookup::LeftAlone
        ));
        let Lookup::New(settings) = services.lookup(ORDERS, &mut metrics) else {
            panic!("a Nacos service");
        };
        assert_eq!(settings.service.name, "orders");

        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        assert!(
            matches!(services.lookup(ORDERS, &mut metrics), Lookup::Guarded(g) if g.index() == 0)
        );
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
        services.refuse(SHOP, &mut metrics);
        assert_eq!(metrics.get("nacos_guard.learned_services_refused"), 1);
        assert!(matches!(
            services.lookup(SHOP, &mut metrics),
            Lookup::LeftAlone
        ));
        assert_eq!(
            metrics.get("nacos_guard.learned_services_refused"),
            2,
            "per request"
        );
        assert!(
            matches!(services.listed_elsewhere(SHOP), Lookup::New(_)),
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
    fn a_service_without_requests_for_idle_ms_pauses_and_traffic_resumes_it() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        let target = TargetId::from_index(0);
        let touched = std::cell::Cell::new(Some(0));
        services.check_idle(8_000, &targets, |_| touched.get());
        assert!(!services.is_paused(target));
        services.check_idle(9_001, &targets, |_| touched.get());
        assert!(services.is_paused(target));
        touched.set(Some(9_500));
        services.check_idle(9_600, &targets, |_| touched.get());
        assert!(services.is_paused(target), "looked at again a second later");
        services.check_idle(10_001, &targets, |_| touched.get());
        assert!(!services.is_paused(target));
    }
}
