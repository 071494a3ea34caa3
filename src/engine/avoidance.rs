//! Instances that failed a routed request (`pure::routing::avoidance`): the VM
//! that sees the failure writes the service's avoided set to shared data and
//! notes the change in a log every VM reads on its tick, so every worker skips
//! the instance within a tick; the poller polls the service at once (at most
//! once a second per service, gateway-wide), since only Nacos can say whether
//! the instance is gone.

use log::{debug, warn};

use super::engine::Engine;
use super::guards::Routed;
use super::host_traits::{Metrics, SharedStore};
use super::ids::{GuardId, TargetId};
use super::metrics::bump;
use crate::pure::hashing::WordMap;
use crate::pure::routing::avoidance::{Avoided, Noticed, POLL_ASK_INTERVAL_MS};
use crate::pure::sharing::avoided::{service_key, ChangeLog, Changed, CHANGES_KEY};

/// Compare-and-swap attempts before a write is given up (another VM then
/// wrote at the same moment, and the next failure tries again).
const WRITE_ATTEMPTS: usize = 4;

/// One service's avoided set as this VM last read or wrote it.
#[derive(Default)]
struct ServiceAvoidance {
    avoided: Avoided,
    /// When the set avoided now next shrinks: the guards are marked again then.
    next_end_ms: Option<u64>,
    /// The poll request the poller last acted on.
    polled_for_ms: Option<u64>,
}

#[derive(Default)]
pub(super) struct Avoidance {
    /// By the service's question id (`ServiceKeys::id`), the same in every VM.
    services: WordMap<u64, ServiceAvoidance>,
    /// The last change of the shared log this VM took.
    seen: u64,
}

impl Engine {
    /// The request `routed` failed before its instance answered: the host's
    /// entry (it keeps no copy of the address). A request whose guard's list
    /// changed since it was routed is left alone: the index may name another
    /// instance now.
    pub fn on_routed_failure(
        &mut self,
        routed: Routed,
        reason: &str,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(endpoint) = self.guards.endpoint_of(routed).map(str::to_string) else {
            return;
        };
        // Debug only: one line per failed request, which the e2e counts per worker
        // thread; the warning comes once per streak.
        debug!("nacos-instance-guard: the request routed to {endpoint} failed ({reason})");
        self.on_instance_failure(routed.guard, &endpoint, reason, now_ms, metrics, store);
    }

    /// The instance `endpoint` that guard `guard` routed a request to failed
    /// before answering (`pure::routing::upstream_failure`); `reason` is Envoy's
    /// `response.code_details`, for the log.
    pub(super) fn on_instance_failure(
        &mut self,
        guard: GuardId,
        endpoint: &str,
        reason: &str,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(target) = self.guards.target_of(guard) else {
            return;
        };
        let Some(service_id) = self.targets.get(target).map(|t| t.heartbeat_id()) else {
            return;
        };
        let Some(view) = self.guards.avoid_view(guard) else {
            return;
        };
        let (usable, policy, service) = (view.usable, view.policy, view.service);
        bump(metrics, view.metrics.failures);
        let key = service_key(service_id);
        let mut outcome = None;
        for _ in 0..WRITE_ATTEMPTS {
            let (value, cas) = store.get(&key);
            let mut avoided = value.as_deref().map(Avoided::decode).unwrap_or_default();
            let noticed = avoided.note_failure(endpoint, usable, now_ms, policy);
            let asked = avoided.ask_poll(now_ms);
            if !noticed.changed() && !asked {
                outcome = Some((avoided, noticed, false));
                break;
            }
            if store.set(&key, &avoided.encode(), cas) {
                outcome = Some((avoided, noticed, asked));
                break;
            }
        }
        let Some((avoided, noticed, asked)) = outcome else {
            return;
        };
        if noticed.changed() || asked {
            record_change(service_id, store);
        }
        if let Noticed::Avoided { new_streak } = noticed {
            bump(metrics, view.metrics.avoided);
            if new_streak {
                warn!(
                    "nacos-instance-guard: instance {endpoint} of service {}/{}/{} failed a \
                     routed request ({reason}); every worker skips it for {} ms, extended while \
                     it fails, and Nacos is asked again now",
                    service.namespace_id, service.group, service.name, policy.avoid_ms
                );
            }
        }
        if asked {
            // Noted even for a service this VM never saw fail before: the
            // poller's next tick reads its own ask in the log and must not poll
            // a second time for it.
            self.avoidance
                .services
                .entry(service_id)
                .or_default()
                .polled_for_ms = Some(now_ms);
            if self.is_poller() {
                self.polling.poll_now(target, now_ms);
            }
        }
        self.take_avoided(target, service_id, avoided, now_ms);
    }

    /// On every tick: take the sets other VMs changed, mark guards again where
    /// an avoidance ended, and, as the poller, poll the services a VM asked for.
    pub(super) fn follow_avoidance(&mut self, now_ms: u64, store: &dyn SharedStore) {
        let (value, _) = store.get(CHANGES_KEY);
        if let Some(value) = value {
            let log = ChangeLog::decode(&value);
            let changed = match log.changed_since(self.avoidance.seen) {
                Changed::Nothing => Vec::new(),
                Changed::Services(services) => services,
                Changed::Unknown => self
                    .targets
                    .ids()
                    .filter_map(|t| self.targets.get(t).map(|t| t.heartbeat_id()))
                    .collect(),
            };
            self.avoidance.seen = log.last();
            for service_id in changed {
                let Some(target) = self.targets.by_heartbeat_id(service_id) else {
                    continue;
                };
                let (value, _) = store.get(&service_key(service_id));
                let avoided = value.as_deref().map(Avoided::decode).unwrap_or_default();
                self.poll_if_asked(target, service_id, &avoided, now_ms);
                self.take_avoided(target, service_id, avoided, now_ms);
            }
        }
        let ended: Vec<u64> = self
            .avoidance
            .services
            .iter()
            .filter(|(_, s)| s.next_end_ms.is_some_and(|end| end <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for service_id in ended {
            let Some(target) = self.targets.by_heartbeat_id(service_id) else {
                continue;
            };
            if let Some(service) = self.avoidance.services.get_mut(&service_id) {
                let avoided = std::mem::take(&mut service.avoided);
                self.take_avoided(target, service_id, avoided, now_ms);
            }
        }
    }

    /// As the poller, poll `target` now if a VM asked for it recently and it
    /// was not polled for that ask yet.
    fn poll_if_asked(&mut self, target: TargetId, service_id: u64, avoided: &Avoided, now: u64) {
        let Some(asked) = avoided.poll_asked_ms() else {
            return;
        };
        let service = self.avoidance.services.entry(service_id).or_default();
        let recent = asked.saturating_add(2 * POLL_ASK_INTERVAL_MS) > now;
        if !recent || service.polled_for_ms >= Some(asked) {
            return;
        }
        // Every VM notes the ask it has seen: one that becomes the poller later
        // does not poll for an old one.
        service.polled_for_ms = Some(asked);
        if self.is_poller() {
            self.polling.poll_now(target, now);
        }
    }

    /// Keep `avoided` as service `service_id`'s set and mark its guards.
    fn take_avoided(&mut self, target: TargetId, service_id: u64, avoided: Avoided, now: u64) {
        let guards = self.targets.guards_of(target);
        self.guards.set_avoided(guards, &avoided, now);
        let service = self.avoidance.services.entry(service_id).or_default();
        service.next_end_ms = avoided.next_end_after(now);
        service.avoided = avoided;
    }
}

/// Note in the shared log that `service_id`'s set changed.
fn record_change(service_id: u64, store: &mut dyn SharedStore) {
    for _ in 0..WRITE_ATTEMPTS {
        let (value, cas) = store.get(CHANGES_KEY);
        let mut log = value.as_deref().map(ChangeLog::decode).unwrap_or_default();
        log.record(service_id);
        if store.set(CHANGES_KEY, &log.encode(), cas) {
            return;
        }
    }
}
