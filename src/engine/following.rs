//! Following: a VM that does not poll adopts what the poller published, each
//! service's health from the heartbeat, content that moved, and login tokens.
//! A new poller and a new configuration start from the same.

use std::collections::HashSet;

use super::host_traits::SharedStore;
use super::ids::{Id, ServerId, TargetId};
use super::servers::Servers;
use super::sharing::Sharing;
use super::targets::Targets;

/// Adopt the heartbeat's news: each service's health, and the content of those
/// whose content moved. The targets whose content changed.
pub(super) fn follow(
    sharing: &mut Sharing,
    targets: &mut Targets,
    servers: &mut Servers,
    store: &dyn SharedStore,
) -> Vec<TargetId> {
    let Some(heartbeat) = sharing.read_heartbeat(store) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (service, health) in heartbeat {
        let Some(id) = targets.by_heartbeat_id(service) else {
            continue;
        };
        if targets.follow_heartbeat(id, health, store) {
            changed.push(id);
        }
    }
    adopt_tokens(sharing, servers, store);
    changed
}

/// As a new poller: what the last one published, and content it stored but
/// went before announcing. The targets whose content changed.
pub(super) fn take_over(
    sharing: &mut Sharing,
    targets: &mut Targets,
    servers: &mut Servers,
    store: &dyn SharedStore,
) -> Vec<TargetId> {
    let mut changed = follow(sharing, targets, servers, store);
    let unannounced = targets.take_unannounced(store);
    if !unannounced.is_empty() {
        // A takeover may follow thousands of services: no scan per addition.
        let followed: HashSet<TargetId> = changed.iter().copied().collect();
        changed.extend(unannounced.into_iter().filter(|id| !followed.contains(id)));
    }
    changed
}

/// Take the tokens the poller's logins got.
pub(super) fn adopt_tokens(sharing: &Sharing, servers: &mut Servers, store: &dyn SharedStore) {
    for index in 0..servers.len() {
        if let Some(token) = sharing.read_token(index, store) {
            servers.adopt_token(ServerId::from_index(index), token);
        }
    }
}

/// Start `target` from what is stored of it, confirmation included, so a new
/// configuration or a newly learned service serves at once; whether it took any.
pub(super) fn start_from_stored(
    targets: &mut Targets,
    target: TargetId,
    store: &dyn SharedStore,
) -> bool {
    targets.start_from_stored(target, store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{guard_settings, FakeMetrics, FakeStore};
    use crate::engine::ids::GuardId;
    use crate::engine::metrics::LoginMetrics;
    use crate::pure::polling::nacos::ApiVersion;
    use crate::pure::registry::instance::InstanceSet;
    use crate::pure::registry::snapshot::Health;
    use crate::pure::sharing::published::{ConfigKeys, PublishedToken};
    use crate::testing::test;

    const DEMO: &str = r#"{"nacos": {"cluster": "nacos"}, "service": {"name": "demo"}}"#;
    const TWO: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1},
        {"ip":"10.0.0.2","port":80,"weight":1}]}"#;

    /// One VM's servers, targets and sharing for `DEMO`.
    fn vm(vm_id: u64, metrics: &mut FakeMetrics) -> (Servers, Targets, Sharing) {
        vm_of(DEMO, vm_id, metrics)
    }

    /// One VM of configuration `config`, which asks `DEMO`'s question.
    fn vm_of(config: &str, vm_id: u64, metrics: &mut FakeMetrics) -> (Servers, Targets, Sharing) {
        let settings = guard_settings(DEMO);
        let mut servers = Servers::new(LoginMetrics::default());
        let (server, _) = servers.find_or_add(&settings.server);
        let mut targets = Targets::default();
        let guard = GuardId::from_index(0);
        targets.find_or_add(server, &settings, guard, 2_000, metrics);
        let keys = ConfigKeys::new(config.as_bytes());
        targets.set_writer(keys.id());
        let sharing = Sharing::new(keys, vm_id, 3_000, 500);
        (servers, targets, sharing)
    }

    /// `polled`'s good answer `body` to its poll sent at `at`, published;
    /// whether the content changed.
    fn answer(
        polled: &mut Targets,
        body: &[u8],
        at: u64,
        metrics: &mut FakeMetrics,
        store: &mut FakeStore,
    ) -> bool {
        let target = TargetId::from_index(0);
        let publish: Option<&mut dyn SharedStore> = Some(store);
        let taken = polled.take_answer(
            target,
            ApiVersion::V1,
            Some((200, body)),
            at,
            metrics,
            publish,
        );
        taken.unwrap()
    }

    /// The poller's answer at 100 ms, two instances, published.
    fn publish_two(polled: &mut Targets, metrics: &mut FakeMetrics, store: &mut FakeStore) {
        assert!(answer(polled, TWO, 100, metrics, store));
    }

    /// A poller (VM 1) that published two instances at 100 ms and its
    /// heartbeat, and a follower (VM 2) that has not followed yet.
    #[allow(clippy::type_complexity)]
    fn published_two() -> (FakeStore, Targets, Sharing, (Servers, Targets, Sharing)) {
        let mut store = FakeStore::default();
        let mut metrics = FakeMetrics::default();
        let (_, mut polled, mut poller) = vm(1, &mut metrics);
        let follower = vm(2, &mut metrics);
        publish_two(&mut polled, &mut metrics, &mut store);
        poller.write_heartbeat(100, polled.health(), &mut store);
        (store, polled, poller, follower)
    }

    #[test]
    fn a_follower_takes_the_health_content_and_token_the_poller_published() {
        let (mut store, polled, poller, follower) = published_two();
        let (mut servers, mut targets, mut follower) = follower;
        let target = TargetId::from_index(0);
        let token = PublishedToken {
            token: "T".to_string(),
            refresh_at_ms: 5_000,
            expires_at_ms: 9_000,
        };
        poller.publish_token(0, &token, &mut store);

        let changed = follow(&mut follower, &mut targets, &mut servers, &store);
        assert_eq!(changed, vec![target]);
        let snapshot = targets.get(target).unwrap().snapshot();
        assert_eq!(
            snapshot.health(),
            polled.get(target).unwrap().snapshot().health()
        );
        assert_eq!(
            servers.access_token(crate::engine::ids::ServerId::from_index(0), 200),
            Some("T")
        );
        assert!(follow(&mut follower, &mut targets, &mut servers, &store).is_empty());
    }

    #[test]
    fn a_new_root_context_starts_from_the_stored_content_and_its_confirmation() {
        let mut store = FakeStore::default();
        let mut metrics = FakeMetrics::default();
        let (_, mut polled, _) = vm(1, &mut metrics);
        let target = TargetId::from_index(0);
        publish_two(&mut polled, &mut metrics, &mut store);
        polled.take_list(target, None, 900, Some(&mut store));

        let (_, mut fresh, _) = vm(3, &mut metrics);
        assert!(start_from_stored(&mut fresh, target, &store));
        assert_eq!(
            fresh
                .get(target)
                .unwrap()
                .snapshot()
                .health()
                .confirmed_at_ms,
            900
        );
    }

    /// Seed 2219: a new poller that started from another configuration's
    /// content announces it, but that configuration wrote newer content over
    /// it since and kept nothing for this one. A follower that cannot read the
    /// announced list keeps its own list's confirmation: the heartbeat vouches
    /// for the announced list, and the follower's own, deregistered since, must
    /// go stale in time.
    #[test]
    fn a_follower_that_cannot_read_the_announced_content_keeps_its_own_confirmation() {
        let (mut store, polled, mut poller, follower) = published_two();
        let (mut servers, mut targets, mut follower) = follower;
        let target = TargetId::from_index(0);
        assert_eq!(
            follow(&mut follower, &mut targets, &mut servers, &store),
            vec![target]
        );

        let announced = Health {
            content_stamp: 500,
            confirmed_at_ms: 900,
            failing_since_ms: None,
        };
        let unreadable = polled.health().map(|(id, _)| (id, announced));
        poller.write_heartbeat(900, unreadable, &mut store);
        assert!(follow(&mut follower, &mut targets, &mut servers, &store).is_empty());
        let health = targets.get(target).unwrap().snapshot().health();
        assert_eq!((health.content_stamp, health.confirmed_at_ms), (100, 100));
    }

    /// Seed 4311: configuration B's poller took a flap's list, answered late,
    /// after configuration A confirmed the list without the flap; a root
    /// context of B started from A's list and that later confirmation. B's
    /// heartbeat names the flap's list, confirmed only by B's older poll: the
    /// follower keeps the list Nacos gave last, and takes B's list once B's
    /// poller confirms it later, with that confirmation, not the one it held.
    #[test]
    fn a_follower_keeps_a_list_confirmed_after_the_one_its_poller_announces() {
        const THREE: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1},
            {"ip":"10.0.0.2","port":80,"weight":1},{"ip":"10.0.0.3","port":80,"weight":1}]}"#;
        const B: &str = r#"{"nacos": {"cluster": "nacos"}, "service": {"name": "demo"}, "b": 1}"#;
        let mut store = FakeStore::default();
        let mut metrics = FakeMetrics::default();
        let target = TargetId::from_index(0);
        let (_, mut polled_a, _) = vm(1, &mut metrics);
        assert!(answer(&mut polled_a, TWO, 100, &mut metrics, &mut store));
        assert!(!answer(&mut polled_a, TWO, 900, &mut metrics, &mut store));
        let (_, mut polled_b, mut poller_b) = vm_of(B, 3, &mut metrics);
        assert!(answer(&mut polled_b, THREE, 500, &mut metrics, &mut store));
        poller_b.write_heartbeat(950, polled_b.health(), &mut store);

        let (mut servers, mut targets, mut follower) = vm_of(B, 2, &mut metrics);
        assert!(start_from_stored(&mut targets, target, &store));
        let held = |targets: &Targets| {
            let snapshot = targets.get(target).unwrap().snapshot();
            let health = snapshot.health();
            let count = snapshot.instances().map(|set| set.instances.len());
            (count, health.content_stamp, health.confirmed_at_ms)
        };
        assert_eq!(held(&targets), (Some(2), 100, 900));
        assert!(follow(&mut follower, &mut targets, &mut servers, &store).is_empty());
        assert_eq!(held(&targets), (Some(2), 100, 900), "B's word is older");

        assert!(!answer(
            &mut polled_b,
            THREE,
            1_000,
            &mut metrics,
            &mut store
        ));
        poller_b.write_heartbeat(1_500, polled_b.health(), &mut store);
        assert_eq!(
            follow(&mut follower, &mut targets, &mut servers, &store),
            vec![target]
        );
        assert_eq!(held(&targets), (Some(3), 500, 1_000));
    }

    /// A follower that took another configuration's list, announced by its
    /// poller, keeps that list under its own configuration's key once it polls
    /// and finds the other configuration wrote newer content over it: its own
    /// followers find the list it announces.
    #[test]
    fn a_follower_that_took_another_configurations_list_keeps_it_once_it_polls() {
        const B: &str = r#"{"nacos": {"cluster": "nacos"}, "service": {"name": "demo"}, "b": 1}"#;
        let (mut store, mut polled_a, _, _) = published_two();
        let mut metrics = FakeMetrics::default();
        let target = TargetId::from_index(0);
        let (_, mut started_b, mut poller_b) = vm_of(B, 3, &mut metrics);
        assert!(start_from_stored(&mut started_b, target, &store));
        poller_b.write_heartbeat(150, started_b.health(), &mut store);
        let (mut servers, mut follower_targets, mut follower) = vm_of(B, 2, &mut metrics);
        let changed = follow(&mut follower, &mut follower_targets, &mut servers, &store);
        assert_eq!(changed, vec![target]);

        let flap = Some(InstanceSet::default());
        polled_a.take_list(target, flap, 500, Some(&mut store));
        assert!(!answer(
            &mut follower_targets,
            TWO,
            900,
            &mut metrics,
            &mut store
        ));
        follower.write_heartbeat(950, follower_targets.health(), &mut store);

        let (mut servers, mut targets, mut fresh) = vm_of(B, 4, &mut metrics);
        assert_eq!(
            follow(&mut fresh, &mut targets, &mut servers, &store),
            vec![target]
        );
        let health = targets.get(target).unwrap().snapshot().health();
        assert_eq!((health.content_stamp, health.confirmed_at_ms), (100, 900));
    }

    /// Seed 4335: the poller stored a changed list and went before its tick
    /// announced it. The VM that takes over starts from that list, not from
    /// the one it last followed: else an answer the same as its own older list
    /// changes nothing here, is never stored, and root contexts that start
    /// take the list before.
    #[test]
    fn a_new_poller_takes_the_list_its_predecessor_stored_but_never_announced() {
        const ONE: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1}]}"#;
        let mut store = FakeStore::default();
        let mut metrics = FakeMetrics::default();
        let (_, mut polled, mut poller) = vm(1, &mut metrics);
        let (mut servers, mut targets, mut successor) = vm(2, &mut metrics);
        let target = TargetId::from_index(0);
        publish_two(&mut polled, &mut metrics, &mut store);
        poller.write_heartbeat(100, polled.health(), &mut store);
        assert_eq!(
            follow(&mut successor, &mut targets, &mut servers, &store),
            vec![target]
        );
        assert!(answer(&mut polled, ONE, 500, &mut metrics, &mut store));

        let changed = take_over(&mut successor, &mut targets, &mut servers, &store);
        assert_eq!(changed, vec![target]);
        let snapshot = targets.get(target).unwrap().snapshot();
        assert_eq!(snapshot.instances().map(|set| set.instances.len()), Some(1));
        assert_eq!(snapshot.health().confirmed_at_ms, 500);
    }
}
