//! Instances that fail routed requests, across the VMs of one gateway: every VM
//! skips them within a tick, the poller asks Nacos at once (at most once a second
//! per service), the bound holds, and an avoidance ends unless failures go on.

use std::collections::BTreeSet;

use super::fakes::FakeRequest;
use super::gateway_tests::{hosts, Gateway, Nacos, FOUR};
use super::ids::{GuardId, Id};
use super::*;
use crate::testing::test;

/// Four instances, polled rarely (only the polls a failure asks for happen in
/// these tests), avoided 5 s.
fn config(avoid_ms: u64) -> String {
    format!(
        r#"{{"nacos":{{"cluster":"nacos"}},"service":{{"name":"demo"}},
            "refreshIntervalMs":60000,"avoidFailedMs":{avoid_ms}}}"#
    )
}

const FAILURES: &str = "nacos_guard.service.public.DEFAULT_GROUP.demo.instance_failures";
const AVOIDED: &str = "nacos_guard.service.public.DEFAULT_GROUP.demo.instances_avoided";

/// One request on `vm`: where it was routed and by which guard, if it was.
fn route(gateway: &mut Gateway, vm: usize, now: u64) -> Option<(String, GuardId)> {
    let action = gateway.vms[vm].engine.on_request(
        now,
        &mut FakeRequest::on("r"),
        &mut gateway.metrics,
        &mut gateway.store,
    );
    match action {
        RequestAction::Route {
            endpoint, routed, ..
        } => Some((endpoint.to_string(), routed.guard)),
        _ => None,
    }
}

/// Tell `vm` that its request to `endpoint` failed before an answer.
fn report(gateway: &mut Gateway, vm: usize, guard: GuardId, endpoint: &str, now: u64) {
    gateway.vms[vm].engine.on_instance_failure(
        guard,
        endpoint,
        "upstream_reset_before_response_started{remote_connection_failure}",
        now,
        &mut gateway.metrics,
        &mut gateway.store,
    );
}

/// Route requests on `vm` until one goes to `endpoint`, and report that it
/// failed. False if none went there in 20 requests.
fn fail_at(gateway: &mut Gateway, vm: usize, now: u64, endpoint: &str) -> bool {
    for _ in 0..20 {
        let (routed, guard) = route(gateway, vm, now).expect("routed");
        if routed == endpoint {
            report(gateway, vm, guard, endpoint, now);
            return true;
        }
    }
    false
}

/// Where 40 requests of each VM went.
fn routed(gateway: &mut Gateway, now: u64) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for vm in 0..gateway.vms.len() {
        for _ in 0..40 {
            seen.insert(gateway.request(vm, now, "r"));
        }
    }
    seen
}

fn started(avoid_ms: u64, instances: &[&str]) -> Gateway {
    let mut gateway = Gateway::new(&config(avoid_ms), 3, Nacos::List(hosts(instances)));
    for wall in (0..200).step_by(20) {
        gateway.tick_all(wall);
    }
    gateway
}

fn follower(gateway: &Gateway) -> usize {
    (0..gateway.vms.len())
        .find(|vm| !gateway.vms[*vm].engine.is_poller())
        .unwrap()
}

#[test]
fn every_vm_skips_a_failed_instance_within_a_tick_until_the_avoidance_ends() {
    let mut gateway = started(5_000, &FOUR);
    let vm = follower(&gateway);
    assert!(fail_at(&mut gateway, vm, 200, FOUR[0]));
    assert_eq!(gateway.metrics.get(FAILURES), 1);
    assert_eq!(gateway.metrics.get(AVOIDED), 1);
    let now = gateway.tick_all(220);
    let seen = routed(&mut gateway, now);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(!seen.contains(FOUR[0]), "{seen:?}");
    // No further failure: tried again once the 5 s are over.
    for wall in (240..=5_300).step_by(20) {
        gateway.tick_all(wall);
    }
    let seen = routed(&mut gateway, 5_300);
    assert!(seen.contains(FOUR[0]), "{seen:?}");
}

#[test]
fn failures_while_avoided_extend_it_and_count_without_a_new_avoidance() {
    let mut gateway = started(5_000, &FOUR);
    assert!(fail_at(&mut gateway, 0, 200, FOUR[1]));
    for wall in (220..4_000).step_by(20) {
        gateway.tick_all(wall);
    }
    // A request that still reached it (a VM that had not heard yet).
    report(&mut gateway, 1, GuardId::from_index(0), FOUR[1], 4_000);
    for wall in (4_020..=8_000).step_by(20) {
        gateway.tick_all(wall);
    }
    assert!(!routed(&mut gateway, 8_000).contains(FOUR[1]));
    assert_eq!(gateway.metrics.get(FAILURES), 2);
    assert_eq!(gateway.metrics.get(AVOIDED), 1);
    for wall in (8_020..=9_100).step_by(20) {
        gateway.tick_all(wall);
    }
    assert!(routed(&mut gateway, 9_100).contains(FOUR[1]));
}

#[test]
fn a_failure_polls_the_service_at_once_at_most_once_a_second() {
    let mut gateway = started(5_000, &FOUR);
    let polls = gateway.polls;
    let vm = follower(&gateway);
    assert!(fail_at(&mut gateway, vm, 200, FOUR[0]));
    gateway.tick_all(220);
    gateway.tick_all(240);
    assert_eq!(gateway.polls, polls + 1, "one poll, asked by a follower");
    assert!(fail_at(&mut gateway, vm, 700, FOUR[1]));
    gateway.tick_all(720);
    assert_eq!(gateway.polls, polls + 1, "not twice in a second");
    assert!(fail_at(&mut gateway, vm, 1_300, FOUR[2]) || fail_at(&mut gateway, vm, 1_300, FOUR[3]));
    gateway.tick_all(1_320);
    assert_eq!(gateway.polls, polls + 2);
}

#[test]
fn the_poller_polls_at_once_for_its_own_failure_and_only_once() {
    let mut gateway = started(5_000, &FOUR);
    let polls = gateway.polls;
    let poller = (0..3)
        .find(|vm| gateway.vms[*vm].engine.is_poller())
        .unwrap();
    assert!(fail_at(&mut gateway, poller, 200, FOUR[2]));
    for wall in (220..=600).step_by(20) {
        gateway.tick_all(wall);
    }
    assert_eq!(gateway.polls, polls + 1);
}

#[test]
fn nacos_dropping_the_instance_removes_it_for_good() {
    let mut gateway = started(5_000, &FOUR);
    assert!(fail_at(&mut gateway, 0, 200, FOUR[0]));
    gateway.nacos = Nacos::List(hosts(&FOUR[1..]));
    for wall in (220..=6_000).step_by(20) {
        gateway.tick_all(wall);
    }
    assert!(!routed(&mut gateway, 6_000).contains(FOUR[0]));
}

#[test]
fn at_most_the_share_is_avoided_and_never_the_last_instance() {
    // Two of four at 50 %: the third failure avoids nothing.
    let mut gateway = started(5_000, &FOUR);
    for (at, endpoint) in [(200, FOUR[0]), (210, FOUR[1]), (220, FOUR[2])] {
        assert!(fail_at(&mut gateway, 0, at, endpoint));
    }
    gateway.tick_all(240);
    let seen = routed(&mut gateway, 240);
    assert_eq!(seen, BTreeSet::from([FOUR[2].into(), FOUR[3].into()]));
    assert_eq!(gateway.metrics.get(AVOIDED), 2);
    assert_eq!(gateway.metrics.get(FAILURES), 3);

    // One instance: never avoided; its requests go on.
    let mut alone = started(5_000, &FOUR[..1]);
    assert!(fail_at(&mut alone, 0, 200, FOUR[0]));
    alone.tick_all(220);
    assert_eq!(routed(&mut alone, 220), BTreeSet::from([FOUR[0].into()]));
    assert_eq!(alone.metrics.get(AVOIDED), 0);
}

#[test]
fn a_zero_time_turns_avoiding_off_but_failures_are_counted() {
    let mut gateway = started(0, &FOUR);
    assert!(fail_at(&mut gateway, 0, 200, FOUR[0]));
    gateway.tick_all(220);
    assert!(routed(&mut gateway, 220).contains(FOUR[0]));
    assert_eq!(gateway.metrics.get(FAILURES), 1);
    assert_eq!(gateway.metrics.get(AVOIDED), 0);
}

/// A seeded run: instances die and come back, Nacos's list changes, VMs route
/// and report failures of dead instances, all at random. After every step, in
/// every VM: no more candidates skipped than the bound, never all of them, and
/// every request routed while Nacos lists any instance; a dead instance gets no
/// request from a VM later than one tick after some VM saw it fail, unless the
/// bound kept it usable.
#[test]
fn random_failures_never_avoid_beyond_the_bound_nor_every_instance() {
    use crate::pure::hashing::mix_word;
    use crate::pure::routing::avoidance::{max_avoided, Avoided};
    use crate::pure::sharing::avoided::service_key;
    const FIVE: [&str; 5] = [FOUR[0], FOUR[1], FOUR[2], FOUR[3], "10.0.0.5:80"];
    for seed in 0..24u64 {
        let mut draw = 0u64;
        let mut next = |n: u64| {
            draw += 1;
            mix_word(seed, draw) % n
        };
        let percent = [0, 34, 50, 100][next(4) as usize];
        let json = format!(
            r#"{{"nacos":{{"cluster":"nacos"}},"service":{{"name":"demo"}},
                "refreshIntervalMs":1000,"avoidFailedMs":{},"maxAvoidedPercent":{percent}}}"#,
            500 + next(5_000)
        );
        let mut gateway = Gateway::new(&json, 3, Nacos::List(hosts(&FIVE)));
        let mut dead = [false; 5];
        let mut avoided_since: Vec<(&str, u64)> = Vec::new();
        let target = gateway.vms[0].engine.targets.ids().next().unwrap();
        let service = gateway.vms[0]
            .engine
            .targets
            .get(target)
            .unwrap()
            .heartbeat_id();
        let key = service_key(service);
        for step in 0..1_500u64 {
            let wall = step * 20;
            if next(100) == 0 {
                let index = next(5) as usize;
                dead[index] = !dead[index];
            }
            if next(150) == 0 {
                let listed: Vec<&str> = FIVE.iter().copied().filter(|_| next(4) != 0).collect();
                gateway.nacos = Nacos::List(hosts(&listed));
            }
            let now = gateway.tick_all(wall);
            for vm in 0..3 {
                let guard = GuardId::from_index(0);
                let (skipped, candidates) =
                    gateway.vms[vm].engine.guards.avoided_of(guard).unwrap();
                assert!(
                    skipped <= max_avoided(candidates, percent) && (candidates == 0 || skipped < candidates),
                    "seed {seed} step {step} vm {vm}: {skipped} of {candidates} skipped at {percent} %"
                );
                let Some((endpoint, guard)) = route(&mut gateway, vm, now) else {
                    assert!(
                        candidates == 0,
                        "seed {seed} step {step}: not routed with {candidates} candidates"
                    );
                    continue;
                };
                let index = FIVE.iter().position(|e| *e == endpoint).unwrap();
                if !dead[index] {
                    continue;
                }
                // A dead instance avoided more than a tick ago, by any VM, is
                // routed to again only where the bound is full.
                if avoided_since
                    .iter()
                    .any(|(e, at)| *e == endpoint && now > at + 60 && now < at + 500)
                {
                    assert_eq!(
                        skipped,
                        max_avoided(candidates, percent),
                        "seed {seed} step {step} vm {vm}: {endpoint} routed again"
                    );
                }
                report(&mut gateway, vm, guard, &endpoint, now);
                let (value, _) = gateway.store.get(&key);
                if Avoided::decode(&value.unwrap_or_default()).is_avoided(&endpoint, now) {
                    avoided_since.push((FIVE[index], now));
                }
            }
        }
    }
}
