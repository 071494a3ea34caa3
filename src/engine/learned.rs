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
    /// Cluster name → its guard, or `None` for a cluster left alone.
    by_cluster: WordMap<String, Option<GuardId>>,
    /// The learned state of each target, by its index (`None`: configured).
    by_target: Vec<Option<Learned>>,
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
            count: 0,
            full_reported: false,
            metrics,
        }
    }

    pub fn max_services(&self) -> usize {
        self.settings.max_services
    }

    pub fn knows(&self, cluster: &str) -> bool {
        self.by_cluster.contains_key(cluster)
    }

    /// What `cluster` stands for; a cluster that is no Nacos service is
    /// remembered as left alone.
    pub fn lookup(&mut self, cluster: &str) -> Lookup {
        if let Some(known) = self.by_cluster.get(cluster) {
            return known.map_or(Lookup::LeftAlone, Lookup::Guarded);
        }
        match nacos_cluster::service_of(cluster, &self.settings.names) {
            ClusterService::Service(service) => {
                let mut settings = self.settings.template.clone();
                settings.service = service;
                Lookup::New(Box::new(settings))
            }
            ClusterService::NotNacos => {
                self.by_cluster.insert(cluster.to_string(), None);
                Lookup::LeftAlone
            }
            ClusterService::Ambiguous(reason) => {
                warn!("nacos-instance-guard: not guarding: {reason}");
                self.by_cluster.insert(cluster.to_string(), None);
                Lookup::LeftAlone
            }
        }
    }

    /// Whether this VM may learn one more service.
    pub fn has_room(&self) -> bool {
        self.count < self.settings.max_services
    }

    /// `cluster` is not learned: the bound is reached.
    pub fn refuse(&mut self, cluster: &str, metrics: &mut dyn Metrics) {
        bump(metrics, self.metrics.refused);
        if !self.full_reported {
            self.full_reported = true;
            warn!(
                "nacos-instance-guard: {} services learned already (guardNacosRoutes.maxServices); \
                 requests to {cluster} and other new services are left alone",
                self.settings.max_services
            );
        }
        self.by_cluster.insert(cluster.to_string(), None);
    }

    /// `cluster` is guarded by `guard`, polling `target`, from `now_ms` on.
    pub fn learned(
        &mut self,
        cluster: &str,
        settings: &GuardSettings,
        guard: GuardId,
        target: TargetId,
        now_ms: u64,
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
            *slot = Some(Learned {
                active: true,
                next_idle_check_ms: now_ms,
                touched_ms: now_ms,
            });
        }
        self.by_cluster.insert(cluster.to_string(), Some(guard));
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
        let Lookup::New(settings) = services.lookup(cluster) else {
            panic!("{cluster} is new");
        };
        let guard = GuardId::from_index(index);
        let server = ServerId::from_index(0);
        let (target, _) = targets.find_or_add(server, &settings, guard, 2_000, &mut metrics);
        assert_eq!(target.index(), index);
        services.learned(cluster, &settings, guard, target, 0, &mut metrics);
    }

    #[test]
    fn a_cluster_name_is_read_once_and_remembered() {
        let mut metrics = FakeMetrics::default();
        let mut services = learned(&mut metrics);
        assert!(matches!(
            services.lookup("outbound|80||web.dns"),
            Lookup::LeftAlone
        ));
        assert!(services.knows("outbound|80||web.dns"));
        let Lookup::New(settings) = services.lookup(ORDERS) else {
            panic!("a Nacos service");
        };
        assert_eq!(settings.service.name, "orders");
        assert!(!services.knows(ORDERS), "known only once it is learned");
        let mut targets = Targets::default();
        learn(&mut services, &mut targets, ORDERS, 0);
        assert!(matches!(services.lookup(ORDERS), Lookup::Guarded(g) if g.index() == 0));
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
        assert!(matches!(services.lookup(SHOP), Lookup::LeftAlone));
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
