//! One poller per gateway: the engine's side of the lease and of the snapshots
//! and tokens published in shared data.

use log::info;

use super::engine::Engine;
use super::host_traits::{Metrics, SharedStore};
use crate::pure::sharing::lease::{self, Lease, LeaseStep};
use crate::pure::sharing::published::{self, PublishedSnapshot, PublishedToken};

/// Attempts at the compare-and-swap that hands out VM numbers.
const ID_ATTEMPTS: u32 = 16;
/// The lease lives this many of the shortest refresh intervals.
const LEASE_INTERVALS: u64 = 3;

pub struct Sharing {
    prefix: String,
    vm_id: u64,
    lease_ttl_ms: u64,
    leading: bool,
    seen_generation: u64,
}

impl Sharing {
    /// Number this VM among those of the same configuration; `fallback` when the
    /// counter cannot be taken (it then only needs to differ between VMs).
    fn new(prefix: String, lease_ttl_ms: u64, store: &mut dyn SharedStore, fallback: u64) -> Self {
        let key = published::vm_counter_key(&prefix);
        let mut vm_id = fallback | (1 << 63);
        for _ in 0..ID_ATTEMPTS {
            let (value, cas) = store.get(&key);
            let next = published::decode_counter(value.as_deref()) + 1;
            if store.set(&key, next.to_string().as_bytes(), cas) {
                vm_id = next;
                break;
            }
        }
        Self {
            prefix,
            vm_id,
            lease_ttl_ms,
            leading: false,
            seen_generation: 0,
        }
    }
}

impl Engine {
    /// Share polling with the other VMs of this configuration through `store`.
    pub fn share(&mut self, config_hash: u64, store: &mut dyn SharedStore, fallback_id: u64) {
        let shortest = self
            .guards
            .iter()
            .map(|guard| guard.settings.refresh_interval_ms)
            .min()
            .unwrap_or(1000);
        let prefix = published::key_prefix(config_hash);
        self.sharing = Some(Sharing::new(
            prefix,
            shortest * LEASE_INTERVALS,
            store,
            fallback_id,
        ));
    }

    /// Whether this VM polls now. A follower adopts what the poller published.
    pub(super) fn coordinate(
        &mut self,
        now_ms: u64,
        store: &mut dyn SharedStore,
        metrics: &mut dyn Metrics,
    ) -> bool {
        let Some(sharing) = &mut self.sharing else {
            return true;
        };
        let key = published::lease_key(&sharing.prefix);
        let (value, cas) = store.get(&key);
        let stored = value.as_deref().and_then(Lease::decode);
        let leading =
            match lease::step(stored.as_ref(), sharing.vm_id, now_ms, sharing.lease_ttl_ms) {
                LeaseStep::Follow => false,
                LeaseStep::Renew | LeaseStep::TakeOver => {
                    let lease = Lease::granted(sharing.vm_id, now_ms, sharing.lease_ttl_ms);
                    store.set(&key, lease.encode().as_bytes(), cas)
                }
            };
        let was_leading = std::mem::replace(&mut sharing.leading, leading);
        if leading && !was_leading {
            info!(
                "nacos-instance-guard: VM {} now polls Nacos for this gateway",
                sharing.vm_id
            );
        }
        // A new poller starts from what the last one published, token included;
        // a follower keeps up with it.
        if !leading || !was_leading {
            self.adopt_published(store, metrics);
        }
        leading
    }

    fn adopt_published(&mut self, store: &mut dyn SharedStore, metrics: &mut dyn Metrics) {
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        let (value, _) = store.get(&published::generation_key(&sharing.prefix));
        let generation = published::decode_counter(value.as_deref());
        if generation == sharing.seen_generation {
            return;
        }
        sharing.seen_generation = generation;
        let prefix = sharing.prefix.clone();
        for index in 0..self.targets.len() {
            let (bytes, _) = store.get(&published::snapshot_key(&prefix, index));
            let Some(snapshot) = bytes
                .as_deref()
                .and_then(published::decode::<PublishedSnapshot>)
            else {
                continue;
            };
            let adopted = self.targets.get_mut(index).is_some_and(|target| {
                target
                    .snapshot
                    .adopt(snapshot.set, snapshot.fetched_at_ms, snapshot.version)
            });
            if adopted {
                self.refresh_guards(index, metrics);
            }
        }
        for (index, server) in self.servers.iter_mut().enumerate() {
            let (bytes, _) = store.get(&published::token_key(&prefix, index));
            if let Some(token) = bytes
                .as_deref()
                .and_then(published::decode::<PublishedToken>)
            {
                server
                    .token
                    .adopt(token.token, token.refresh_at_ms, token.expires_at_ms);
            }
        }
    }

    pub(super) fn publish_snapshot(&mut self, index: usize, store: &mut dyn SharedStore) {
        let (Some(sharing), Some(target)) = (&self.sharing, self.targets.get(index)) else {
            return;
        };
        let Some(set) = target.snapshot.instances() else {
            return;
        };
        let snapshot = PublishedSnapshot {
            version: target.snapshot.version(),
            fetched_at_ms: target.snapshot.fetched_at_ms(),
            set: set.clone(),
        };
        if let Some(bytes) = published::encode(&snapshot) {
            store.set(
                &published::snapshot_key(&sharing.prefix, index),
                &bytes,
                None,
            );
            self.bump_generation(store);
        }
    }

    pub(super) fn publish_token(&mut self, index: usize, store: &mut dyn SharedStore) {
        let (Some(sharing), Some(server)) = (&self.sharing, self.servers.get(index)) else {
            return;
        };
        let Some((token, refresh_at_ms, expires_at_ms)) = server.token.current() else {
            return;
        };
        let token = PublishedToken {
            token: token.to_string(),
            refresh_at_ms,
            expires_at_ms,
        };
        if let Some(bytes) = published::encode(&token) {
            store.set(&published::token_key(&sharing.prefix, index), &bytes, None);
            self.bump_generation(store);
        }
    }

    fn bump_generation(&mut self, store: &mut dyn SharedStore) {
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        let key = published::generation_key(&sharing.prefix);
        let (value, _) = store.get(&key);
        let next = published::decode_counter(value.as_deref()) + 1;
        store.set(&key, next.to_string().as_bytes(), None);
        // The poller has seen its own publication.
        sharing.seen_generation = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{FakeMetrics, FakeOutbox, FakeStore};
    use crate::engine::ScopeRef;
    use crate::pure::config::{parse, Capabilities};
    use crate::pure::routing::decision::{Decision, RequestView};
    use crate::testing::test;

    const CONFIG: &str = r#"{"nacos":{"cluster":"nacos","username":"u","password":"p"},
        "service":{"name":"demo"},"refreshIntervalMs":1000}"#;
    const ONE: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80}]}"#;
    const GRANT: &[u8] = br#"{"accessToken":"T","tokenTtl":3600}"#;

    /// Several VMs of one gateway: engines sharing one store.
    struct Gateway {
        vms: Vec<(Engine, FakeOutbox)>,
        metrics: FakeMetrics,
        store: FakeStore,
        logins: usize,
        polls: usize,
    }

    impl Gateway {
        fn new(vm_count: usize) -> Self {
            let config = parse(
                CONFIG.as_bytes(),
                Capabilities {
                    higress_routing: false,
                },
            )
            .unwrap();
            let mut metrics = FakeMetrics::default();
            let mut store = FakeStore::default();
            let vms = (0..vm_count)
                .map(|seed| {
                    let mut engine = Engine::new(&config, &mut metrics, seed as u64);
                    engine.share(
                        lease::config_hash(CONFIG.as_bytes()),
                        &mut store,
                        seed as u64,
                    );
                    (engine, FakeOutbox::default())
                })
                .collect();
            Self {
                vms,
                metrics,
                store,
                logins: 0,
                polls: 0,
            }
        }

        /// Tick the listed VMs at `now` and let Nacos answer at once.
        fn tick(&mut self, now: u64, which: &[usize]) {
            for &vm in which {
                let (engine, outbox) = &mut self.vms[vm];
                engine.on_tick(now, outbox, &mut self.metrics, &mut self.store);
                while !outbox.sent.is_empty() {
                    for call in outbox.take() {
                        let body = if call.method == "POST" {
                            self.logins += 1;
                            GRANT
                        } else {
                            assert!(call.path.contains("accessToken=T"), "{}", call.path);
                            self.polls += 1;
                            ONE
                        };
                        engine.on_answer(
                            call.token,
                            Some((200, body)),
                            now,
                            outbox,
                            &mut self.metrics,
                            &mut self.store,
                        );
                    }
                }
            }
        }

        fn routes(&mut self, vm: usize, now: u64) -> bool {
            let engine = &mut self.vms[vm].0;
            let Some(ScopeRef::Guard(guard)) = engine.scope_for(&mut NoFacts) else {
                return false;
            };
            matches!(
                engine.decide(guard, now, RequestView::default(), &mut self.metrics),
                Some((
                    Decision::Route {
                        endpoint: "10.0.0.1:80",
                        ..
                    },
                    _
                ))
            )
        }
    }

    struct NoFacts;

    impl crate::pure::routing::rules::RequestFacts for NoFacts {
        fn route_name(&mut self) -> Option<&str> {
            None
        }
        fn authority(&mut self) -> Option<&str> {
            None
        }
        fn cluster_name(&mut self) -> Option<&str> {
            None
        }
    }

    #[test]
    fn vms_get_distinct_numbers() {
        let gateway = Gateway::new(3);
        let ids: Vec<u64> = gateway
            .vms
            .iter()
            .map(|(engine, _)| engine.sharing.as_ref().unwrap().vm_id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn one_vm_polls_and_logs_in_for_all() {
        let mut gateway = Gateway::new(4);
        for now in (0..10_000).step_by(20) {
            gateway.tick(now, &[0, 1, 2, 3]);
        }
        assert_eq!(gateway.logins, 1);
        assert!(
            (10..=12).contains(&gateway.polls),
            "{} polls",
            gateway.polls
        );
        for vm in 0..4 {
            assert!(
                gateway.routes(vm, 10_000),
                "VM {vm} routes by the shared snapshot"
            );
        }
    }

    #[test]
    fn another_vm_takes_over_within_the_lease_when_the_poller_stops() {
        let mut gateway = Gateway::new(2);
        let mut now = 0;
        while now < 3_000 {
            gateway.tick(now, &[0, 1]);
            now += 20;
        }
        let polls_before = gateway.polls;
        let logins_before = gateway.logins;
        // VM 0 (the poller) stops ticking; VM 1 must take over within one lease.
        while now < 9_000 {
            gateway.tick(now, &[1]);
            now += 20;
        }
        assert!(
            gateway.polls - polls_before >= 3,
            "VM 1 polls after the lease ran out"
        );
        assert_eq!(
            gateway.logins, logins_before,
            "the new poller reuses the shared token"
        );
        assert!(gateway.routes(1, now));
    }

    #[test]
    fn followers_never_adopt_an_older_version() {
        let mut gateway = Gateway::new(2);
        gateway.tick(0, &[0, 1]);
        gateway.tick(20, &[1]);
        let version = gateway.vms[1].0.targets[0].snapshot.version();
        assert!(version >= 1);
        let stale = PublishedSnapshot {
            version: 0,
            fetched_at_ms: 0,
            set: Default::default(),
        };
        let prefix = gateway.vms[0].0.sharing.as_ref().unwrap().prefix.clone();
        gateway.store.set(
            &published::snapshot_key(&prefix, 0),
            &published::encode(&stale).unwrap(),
            None,
        );
        gateway
            .store
            .set(&published::generation_key(&prefix), b"999", None);
        gateway.tick(40, &[1]);
        assert_eq!(gateway.vms[1].0.targets[0].snapshot.version(), version);
        assert!(gateway.routes(1, 40));
    }
}
