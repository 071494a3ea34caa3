//! `guardNacosRoutes` across the VMs of one gateway: the learned list in shared
//! data under contention, lease takeovers, the bound and idling (issue 24).

use std::cell::RefCell;
use std::rc::Rc;

use super::fakes::FakeRequest;
use super::gateway_tests::{hosts, Gateway, Nacos, FOUR, ORDERS};
use super::host_traits::SharedStore;
use crate::testing::test;

const SHOP: &str = "outbound|8080||shop.DEFAULT-GROUP.public.nacos";

fn learning(extra: &str) -> String {
    format!(
        r#"{{"nacos":{{"cluster":"nacos"}},"refreshIntervalMs":1000,"maxStaleMs":2000,
            "guardNacosRoutes":{{{extra}}}}}"#
    )
}

fn poller(gateway: &Gateway) -> usize {
    (0..gateway.vms.len())
        .find(|vm| gateway.vms[*vm].engine.is_poller())
        .unwrap()
}

fn followers(gateway: &Gateway) -> Vec<usize> {
    (0..gateway.vms.len())
        .filter(|vm| !gateway.vms[*vm].engine.is_poller())
        .collect()
}

/// Tick the VMs in `vms` every 20 ms over `walls`; the gateway time reached.
fn run(gateway: &mut Gateway, vms: &[usize], walls: std::ops::Range<u64>) -> u64 {
    let mut now = 0;
    for wall in walls.step_by(20) {
        for vm in vms {
            now = now.max(gateway.tick(*vm, wall));
        }
    }
    now
}

/// Defect 1: eight lost compare-and-swaps on the learned list were recorded as
/// a full list, and that VM left the service alone for good.
#[test]
fn a_lost_race_on_the_learned_list_is_retried_not_taken_for_the_bound() {
    let mut gateway = Gateway::new(&learning(""), 2, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.store.contend = Some(("learned", 8));
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    let mut now = 0;
    for second in 1..4 {
        now = run(
            &mut gateway,
            &[0, 1],
            (second - 1) * 1_000 + 20..second * 1_000,
        );
        gateway.send(follower, now, FakeRequest::to("r", ORDERS));
    }
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", ORDERS)),
        "10.0.0.1:80"
    );
    assert_eq!(
        gateway.metrics.get("nacos_guard.learned_services_refused"),
        0
    );
}

/// Defect 2: a VM that had lost that race and later took the lease never
/// polled the service, so every other VM went stale on it.
#[test]
fn a_vm_that_lost_the_race_polls_the_service_once_it_takes_the_lease() {
    let mut gateway = Gateway::new(&learning(""), 3, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let [loser, other] = followers(&gateway)[..] else {
        panic!("two followers")
    };
    gateway.store.contend = Some(("learned", 8));
    gateway.send(loser, 0, FakeRequest::to("r", ORDERS));
    gateway.send(other, 0, FakeRequest::to("r", ORDERS));
    run(&mut gateway, &[0, 1, 2], 20..3_000);
    // The poller stalls; the loser alone ticks until it holds the lease.
    run(&mut gateway, &[loser], 3_000..8_000);
    assert!(gateway.vms[loser].engine.is_poller());
    let now = run(&mut gateway, &[loser, other], 8_000..12_000);
    assert_eq!(
        gateway.send(other, now, FakeRequest::to("r", ORDERS)),
        "10.0.0.1:80"
    );
}

/// Defect 3: the first write of the learned list was a plain write, so a VM
/// that found the key absent could erase what another VM added meanwhile.
#[test]
fn seeding_the_learned_list_cannot_erase_a_service_another_vm_added() {
    let mut gateway = Gateway::new(&learning(""), 3, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let [first, second] = followers(&gateway)[..] else {
        panic!("two followers")
    };
    // `second` adds shop between `first`'s read of the absent key and its write.
    let last = gateway.vms.len() - 1;
    gateway.vms.swap(second, last);
    let first = if first == last { second } else { first };
    let racer = Rc::new(RefCell::new(gateway.vms.pop().unwrap()));
    let mut racer_metrics = gateway.metrics.clone();
    let hooked = Rc::clone(&racer);
    gateway.store.before_write = Some((
        "learned",
        Box::new(move |store| {
            let mut vm = hooked.borrow_mut();
            let mut request = FakeRequest::to("r", SHOP);
            vm.engine
                .on_request(0, &mut request, &mut racer_metrics, store);
        }),
    ));
    gateway.send(first, 0, FakeRequest::to("r", ORDERS));
    assert!(gateway.store.before_write.is_none(), "the race ran");
    gateway
        .vms
        .push(Rc::try_unwrap(racer).ok().unwrap().into_inner());
    let now = run(&mut gateway, &[0, 1, 2], 20..4_000);
    // Listed again without another request: the VM that learned it keeps it
    // listed until the poller's heartbeat carries it.
    let shop_polls = "nacos_guard.service.public.DEFAULT_GROUP.shop.poll_success";
    assert!(gateway.metrics.get(shop_polls) >= 2, "shop is polled");
    assert_eq!(
        gateway.send(last, now, FakeRequest::to("r", SHOP)),
        "10.0.0.1:80"
    );
    assert_eq!(
        gateway.send(first, now, FakeRequest::to("r", ORDERS)),
        "10.0.0.1:80"
    );
}

/// Defect 7: `learned_services_refused` counted once per VM per cluster, where
/// docs/configuration.md promises a count of refused requests.
#[test]
fn every_refused_request_is_counted() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    gateway.send(0, 0, FakeRequest::to("r", ORDERS));
    for request in 0..20 {
        assert_eq!(
            gateway.send(request % 2, 0, FakeRequest::to("r", SHOP)),
            "ignore"
        );
    }
    assert_eq!(
        gateway.metrics.get("nacos_guard.learned_services_refused"),
        20
    );
}

/// Defect 10: a new poller that learned the services from the list marked each
/// as just requested, so a takeover woke every idle service for `idleMs`.
#[test]
fn a_takeover_keeps_idle_services_idle() {
    let mut gateway = Gateway::new(
        &learning(r#""idleMs":5000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let old_poller = poller(&gateway);
    let heir = followers(&gateway)[0];
    gateway.send(old_poller, 0, FakeRequest::to("r", ORDERS));
    run(&mut gateway, &[0, 1], 20..10_000);
    let idle_polls = gateway.polls;
    run(&mut gateway, &[heir], 10_000..14_000);
    assert!(gateway.vms[heir].engine.is_poller());
    run(&mut gateway, &[heir], 14_000..20_000);
    assert_eq!(
        gateway.polls, idle_polls,
        "nobody requested orders since 0 s"
    );
}

/// Issue 24, defect 9: with `guardNacosRoutes` alone, the tick, heartbeat and
/// lease were fixed from the 1000 ms default while the learned services' stale
/// limits used their own 200 ms interval, so followers went stale between
/// heartbeats while Nacos answered every poll.
#[test]
fn learned_services_alone_are_timed_by_their_own_interval() {
    let config = r#"{"nacos":{"cluster":"nacos","timeoutMs":100},"refreshIntervalMs":200,
        "maxStaleMs":0,"onStale":"fail_closed","guardNacosRoutes":{}}"#;
    let mut gateway = Gateway::new(config, 3, Nacos::List(hosts(&FOUR[..2])));
    let mut now = gateway.tick_all(0);
    gateway.send(0, now, FakeRequest::to("r", ORDERS));
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for wall in (10..4_000).step_by(10) {
        // Each VM ticks at the period its engine asked the host for.
        for vm in 0..3 {
            if wall % gateway.vms[vm].engine.tick_period_ms() == 0 {
                now = gateway.tick(vm, wall);
            }
        }
        if wall >= 1_000 {
            for vm in 0..3 {
                let outcome = gateway.send(vm, now, FakeRequest::to("r", ORDERS));
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
    }
    let routed: u32 = FOUR[..2]
        .iter()
        .map(|e| outcomes.get(*e).copied().unwrap_or(0))
        .sum();
    assert_eq!(routed, outcomes.values().sum::<u32>(), "{outcomes:?}");
}

/// Defect 8: `maxServices` counted cluster names, so one service on two ports
/// took two places.
#[test]
fn one_service_on_two_ports_takes_one_place() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let other_port = "outbound|9090||orders.DEFAULT-GROUP.public.nacos";
    gateway.send(0, 0, FakeRequest::to("r", ORDERS));
    gateway.send(1, 0, FakeRequest::to("r", other_port));
    let now = run(&mut gateway, &[0, 1], 20..2_000);
    for vm in 0..2 {
        for cluster in [ORDERS, other_port] {
            let outcome = gateway.send(vm, now, FakeRequest::to("r", cluster));
            assert_eq!(outcome, "10.0.0.1:80", "VM {vm}, {cluster}");
        }
    }
    assert_eq!(
        gateway.metrics.get("nacos_guard.learned_services_refused"),
        0
    );
    assert_eq!(gateway.send(1, now, FakeRequest::to("r", SHOP)), "ignore");
}

/// Defect 8: a service that idled past `idleMs` held its place until the next
/// configuration edit.
#[test]
fn an_idle_service_frees_its_place_for_another() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1,"idleMs":5000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    let now = run(&mut gateway, &[0, 1], 20..2_000);
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", SHOP)),
        "ignore"
    );
    // Nobody asks for orders for longer than idleMs: its place frees.
    let now = run(&mut gateway, &[0, 1], 2_000..9_000);
    gateway.send(follower, now, FakeRequest::to("r", SHOP));
    let now = run(&mut gateway, &[0, 1], 9_000..11_000);
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", SHOP)),
        "10.0.0.1:80"
    );
}

/// Defect 11: every configuration edit left its own learned list and a touched
/// key per service behind, and Envoy never removes a key (10 edits with 20
/// learned services took the keys from 23 to 230).
#[test]
fn configuration_edits_share_the_learned_list_and_leave_two_keys_each() {
    let config = |edit: usize| {
        format!(
            r#"{{"nacos":{{"cluster":"nacos"}},"refreshIntervalMs":1000,"guardNacosRoutes":{{}},
                "_rules_":[{{"_match_route_":["legacy-{edit}"],"enabled":false}}]}}"#
        )
    };
    let clusters: Vec<&'static str> = (0..20)
        .map(|i| &*format!("outbound|8080||svc-{i}.DEFAULT-GROUP.public.nacos").leak())
        .collect();
    let mut gateway = Gateway::new(&config(0), 2, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    for cluster in &clusters {
        gateway.send(1, 0, FakeRequest::to("r", cluster));
    }
    let tick = |gateway: &mut Gateway, from: u64, until: u64| {
        let vms: Vec<usize> = (0..gateway.vms.len()).collect();
        run(gateway, &vms, from + 20..until)
    };
    let now = tick(&mut gateway, 0, 2_000);
    for cluster in &clusters {
        gateway.send(0, now, FakeRequest::to("r", cluster));
    }
    let before = gateway.store.key_count();
    for edit in 1..=10 {
        // Envoy starts the edited configuration's root contexts beside the old ones.
        let first_new = gateway.vms.len();
        gateway.add_vm(&config(edit));
        gateway.add_vm(&config(edit));
        let now = tick(&mut gateway, edit as u64 * 2_000, (edit as u64 + 1) * 2_000);
        for cluster in &clusters {
            let outcome = gateway.send(first_new, now, FakeRequest::to("r", cluster));
            assert_eq!(
                outcome, "10.0.0.1:80",
                "edit {edit}: known from the shared list"
            );
        }
    }
    let added = gateway.store.key_count() - before;
    assert!(added <= 2 * 10, "{added} keys for 10 edits");
}

/// The hosts the shared learned list holds.
fn listed(gateway: &Gateway) -> Vec<String> {
    listed_in(&gateway.store)
}

fn listed_in(store: &super::fakes::FakeStore) -> Vec<String> {
    let (_, bytes) = store.ending_with(".learned").unwrap();
    crate::pure::sharing::published::decode_learned(&bytes)
}

const ORDERS_HOST: &str = "orders.DEFAULT-GROUP.public.nacos";
const SHOP_HOST: &str = "shop.DEFAULT-GROUP.public.nacos";

#[test]
fn the_poller_lists_again_what_it_polls_when_the_list_loses_it() {
    // A VM's first write of an absent list lands whatever the compare-and-swap
    // (Envoy): a late one erases what was added meanwhile. The poller puts back
    // what it polls, with no request needed.
    let mut gateway = Gateway::new(&learning(""), 2, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let poller = poller(&gateway);
    gateway.send(poller, 0, FakeRequest::to("r", ORDERS));
    run(&mut gateway, &[0, 1], 20..2_000);
    assert_eq!(listed(&gateway), [ORDERS_HOST]);
    let (key, _) = gateway.store.ending_with(".learned").unwrap();
    gateway.store.set(&key, b"", None);
    run(&mut gateway, &[0, 1], 2_000..3_000);
    assert_eq!(listed(&gateway), [ORDERS_HOST]);
}

#[test]
fn a_follower_keeps_listing_what_it_learned_until_the_list_holds_it() {
    // Its request's additions all lost the race, and so did the first tick's
    // (8 lost compare-and-swaps each): the next tick tries again, with no request.
    let mut gateway = Gateway::new(&learning(""), 2, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.store.contend = Some(("learned", 16));
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    run(&mut gateway, &[0, 1], 20..3_000);
    assert_eq!(listed(&gateway), [SHOP_HOST]);
}

#[test]
fn a_service_the_list_has_no_room_for_when_listed_again_is_left_alone() {
    // The follower's request found the list contended, so it guards shop and
    // lists it on its ticks; meanwhile the poller filled the list (one place).
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.store.contend = Some(("learned", 8));
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    gateway.send(poller, 0, FakeRequest::to("r", ORDERS));
    // Handed in to the poller, which lists it on its tick.
    gateway.tick(poller, 10);
    assert_eq!(listed(&gateway), [ORDERS_HOST]);
    let now = run(&mut gateway, &[0, 1], 20..2_000);
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", SHOP)),
        "ignore"
    );
    assert!(gateway.metrics.get("nacos_guard.learned_services_refused") >= 1);
    assert_eq!(listed(&gateway), [ORDERS_HOST]);
}

#[test]
fn a_request_lists_again_an_idle_service_for_a_poller_that_never_learned_it() {
    // The poller took idle shop off the list; then the lease moved to a VM that
    // never learned shop. The follower's next request to shop finds its snapshot
    // stale and puts shop back on the list, where the new poller finds it.
    let mut gateway = Gateway::new(
        &learning(r#""idleMs":2000"#),
        3,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let first_poller = poller(&gateway);
    let follower = followers(&gateway)[0];
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    run(&mut gateway, &[0, 1, 2], 20..6_000);
    assert!(listed(&gateway).is_empty(), "idle shop is off the list");
    let third = (0..3)
        .find(|vm| ![first_poller, follower].contains(vm))
        .unwrap();
    run(&mut gateway, &[third], 6_000..12_000);
    assert!(gateway.vms[third].engine.is_poller(), "the lease moved");
    let others = [third, follower];
    let mut outcome = String::new();
    for second in 12..20 {
        let now = run(&mut gateway, &others, second * 1_000..(second + 1) * 1_000);
        outcome = gateway.send(follower, now, FakeRequest::to("r", SHOP));
    }
    assert_eq!(listed(&gateway), [SHOP_HOST]);
    assert_eq!(outcome, "10.0.0.1:80");
}

/// A follower looks for what it saw listed once a second until the poller's
/// heartbeat carries it, not on each of its 20 ticks a second: the list is
/// read whole, and holds up to 10,000 services.
#[test]
fn a_follower_waiting_for_the_poller_reads_the_list_once_a_second() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":5000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    gateway.tick(follower, 20);
    // Handed in to the poller: while it waits there, the list is not read.
    gateway.store.bytes_moved.set(0);
    run(&mut gateway, &[follower], 40..1_040);
    assert!(gateway.store.bytes_moved.get() < 1_000, "the inbox only");
    // The poller takes it into the list (as its tick would, written here).
    let (inbox_key, inbox) = gateway.store.ending_with(".learned.inbox").unwrap();
    let mut inbox = crate::pure::sharing::published::Inbox::decode(&inbox).unwrap();
    assert_eq!((inbox.handed, inbox.taken), (1, 0));
    inbox.taken = 1;
    gateway.store.set(&inbox_key, &inbox.encode(), None);
    gateway.store.set(
        &inbox_key.replace(".inbox", ""),
        ORDERS_HOST.as_bytes(),
        None,
    );
    let (key, _) = gateway.store.ending_with(".learned").unwrap();
    let many: Vec<String> = (0..4_000)
        .map(|n| format!("svc-{n}.DEFAULT-GROUP.public.nacos"))
        .chain([ORDERS_HOST.to_string()])
        .collect();
    let encoded = crate::pure::sharing::published::encode_learned(&many);
    gateway.store.set(&key, &encoded, None);
    gateway.store.bytes_moved.set(0);
    // The poller stalls: its heartbeat never carries orders (its lease, renewed
    // at 0, runs until 3,000).
    run(&mut gateway, &[follower], 1_040..2_980);
    let reads = gateway.store.bytes_moved.get() / encoded.len();
    assert!((1..=2).contains(&reads), "{reads} reads of the list in 2 s");
}

/// Found by the simulator (seeds 23 and 48 of 1–60 with learned services): a
/// service its VM found no room for when listing it again stayed refused on
/// that VM once the list had room, unless another VM listed it; with every VM
/// in that state, the service was left alone for good.
#[test]
fn a_service_refused_when_listed_again_is_taken_once_the_list_has_room() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1,"idleMs":2000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.store.contend = Some(("learned", 8));
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    gateway.send(poller, 0, FakeRequest::to("r", ORDERS));
    let now = run(&mut gateway, &[0, 1], 20..2_000);
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", SHOP)),
        "ignore"
    );
    // Nobody asks for orders past idleMs: the poller takes it off the list.
    run(&mut gateway, &[0, 1], 2_000..6_000);
    assert!(listed(&gateway).is_empty(), "idle orders is off the list");
    let mut outcome = String::new();
    for second in 6..10 {
        let now = run(&mut gateway, &[0, 1], second * 1_000..(second + 1) * 1_000);
        outcome = gateway.send(follower, now, FakeRequest::to("r", SHOP));
    }
    assert_eq!(listed(&gateway), [SHOP_HOST]);
    assert_eq!(outcome, "10.0.0.1:80");
}

/// Found by the simulator (seed 37 of 1–100 with learned services): a follower
/// lists what it learned again on each tick until the poller's heartbeat
/// carries it, but it reads the heartbeat only when that changes; learned after
/// the poller's last change (here Nacos refuses every call, so none comes), the
/// service went back on the list at each of its ticks, even once the poller had
/// taken it off for idling, and held its place under `maxServices` while idle.
#[test]
fn a_follower_stops_listing_a_service_idle_on_it() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1,"idleMs":2000"#),
        2,
        Nacos::Status(403),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.send(poller, 0, FakeRequest::to("r", SHOP));
    let now = run(&mut gateway, &[0, 1], 20..1_000);
    gateway.send(follower, now, FakeRequest::to("r", SHOP));
    run(&mut gateway, &[0, 1], 1_000..2_000);
    assert_eq!(listed(&gateway), [SHOP_HOST]);
    // Nobody asks for shop past idleMs: the poller takes it off the list, for good.
    run(&mut gateway, &[0, 1], 2_000..8_000);
    assert!(listed(&gateway).is_empty(), "idle shop is off the list");
}

/// Found by the simulator (seed 23 of 1–100 with learned services): the poller
/// refused shop on a request while the list was full, then took shop from the
/// list when another VM listed it; its next request to shop learned it again,
/// with a second guard of the same target that only a change of shop's content
/// would have filled: `no_healthy_instance` for every request until then.
#[test]
fn a_service_refused_then_taken_from_the_list_routes_its_requests() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1,"idleMs":2000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    let now = run(&mut gateway, &[0, 1], 20..1_000);
    assert_eq!(
        gateway.send(poller, now, FakeRequest::to("r", SHOP)),
        "ignore"
    );
    // Nobody asks for orders past idleMs: its place frees, and the follower's
    // request lists shop, which the poller takes from the list.
    let now = run(&mut gateway, &[0, 1], 1_000..6_000);
    assert!(listed(&gateway).is_empty(), "idle orders is off the list");
    gateway.send(follower, now, FakeRequest::to("r", SHOP));
    let now = run(&mut gateway, &[0, 1], 6_000..8_000);
    assert_eq!(
        gateway.send(poller, now, FakeRequest::to("r", SHOP)),
        "10.0.0.1:80"
    );
}

/// Found by the simulator (seed 17 of 1–300 with learned services): a follower's
/// request came a moment after the poller found the service idle and took it
/// off the list, and on a clock a little behind the poller's, so the poller's
/// next look found it idle still; the follower listed it again on its tick, and
/// nothing took it off: the idle service held its place under `maxServices`,
/// and every new service was refused.
#[test]
fn an_idle_service_listed_again_late_is_taken_off_again() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1,"idleMs":2000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    run(&mut gateway, &[0, 1], 20..6_000);
    assert!(listed(&gateway).is_empty(), "idle shop is off the list");
    // A late relisting, with no request since.
    let (key, _) = gateway.store.ending_with(".learned").unwrap();
    gateway.store.set(&key, SHOP_HOST.as_bytes(), None);
    run(&mut gateway, &[0, 1], 6_000..9_000);
    assert!(listed(&gateway).is_empty(), "{:?}", listed(&gateway));
}

/// The shared-data bytes a request that learns a new service moves on a
/// follower and on the poller, with `listed` services on the list already.
fn learning_request_bytes(listed: usize) -> [usize; 2] {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":5000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    run(&mut gateway, &[0, 1], 20..100);
    let (key, _) = gateway.store.ending_with(".learned").unwrap();
    let many: Vec<String> = (0..listed)
        .map(|n| format!("svc-{n}.DEFAULT-GROUP.public.nacos"))
        .chain([ORDERS_HOST.to_string()])
        .collect();
    let encoded = crate::pure::sharing::published::encode_learned(&many);
    gateway.store.set(&key, &encoded, None);
    // The poller takes them all (they idle later, not now).
    let now = run(&mut gateway, &[0, 1], 100..200);
    assert_eq!(listed_in(&gateway.store).len(), listed + 1);
    [(follower, SHOP), (poller, PAY)].map(|(vm, cluster)| {
        gateway.store.bytes_moved.set(0);
        gateway.send(vm, now, FakeRequest::to("r", cluster));
        gateway.store.bytes_moved.get()
    })
}

const PAY: &str = "outbound|8080||pay.DEFAULT-GROUP.public.nacos";

/// Issue 24, defect 4: a request that learns a service moved the whole list
/// (read, then written back with the service added), whatever its length.
#[test]
fn a_request_that_learns_a_service_moves_the_same_bytes_whatever_the_list_holds() {
    let (few, many) = (learning_request_bytes(10), learning_request_bytes(4_000));
    assert!(few[0] > 0 && few[1] > 0, "{few:?}");
    assert_eq!(few, many, "follower, poller: 10 listed, then 4,000");
}

/// Found by the simulator (seed 3350 of 3000-3999, maxServices 1): a follower
/// whose request lost every compare-and-swap left the service to the poller
/// as soon as the poller's heartbeat carried it, but the poller had it only as
/// a service it refused (the list was full): the follower guarded it on
/// content nobody polled, never refused.
#[test]
fn a_follower_refuses_what_the_poller_has_only_refused() {
    let mut gateway = Gateway::new(
        &learning(r#""maxServices":1"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    gateway.tick_all(0);
    let (poller, follower) = (poller(&gateway), followers(&gateway)[0]);
    gateway.store.contend = Some(("learned", 15));
    gateway.send(follower, 0, FakeRequest::to("r", SHOP));
    gateway.send(poller, 0, FakeRequest::to("r", SHOP));
    gateway.send(poller, 0, FakeRequest::to("r", ORDERS));
    // The poller lists orders and refuses shop; its heartbeat carries both.
    gateway.tick(poller, 10);
    assert_eq!(listed(&gateway), [ORDERS_HOST]);
    let now = run(&mut gateway, &[0, 1], 20..2_000);
    let refused = gateway.metrics.get("nacos_guard.learned_services_refused");
    assert_eq!(
        gateway.send(follower, now, FakeRequest::to("r", SHOP)),
        "ignore"
    );
    assert_eq!(
        gateway.metrics.get("nacos_guard.learned_services_refused"),
        refused + 1
    );
}

/// Found by the simulator (seed 1339 with sparse bursts): a VM handed a service
/// in, and a late seed of the inbox by another VM that had read it absent set
/// the inbox back to nothing handed. The number the VM held was not taken
/// until another service was handed in, and it waited for it; as the poller it
/// listed the service but did not poll it.
#[test]
fn a_hand_in_whose_number_a_late_seed_erased_is_not_waited_for() {
    let mut gateway = Gateway::new(&learning(""), 2, Nacos::List(hosts(&FOUR[..1])));
    gateway.tick_all(0);
    let follower = followers(&gateway)[0];
    gateway.send(follower, 0, FakeRequest::to("r", ORDERS));
    let (inbox_key, inbox) = gateway.store.ending_with(".learned.inbox").unwrap();
    let inbox = crate::pure::sharing::published::Inbox::decode(&inbox).unwrap();
    assert_eq!(inbox.handed, 1, "handed in under number 0");
    let seed = crate::pure::sharing::published::Inbox::default();
    gateway.store.set(&inbox_key, &seed.encode(), None);
    // The poller stalls; the follower alone ticks until it holds the lease.
    let mut wall = 0;
    while !gateway.vms[follower].engine.is_poller() && wall < 5_000 {
        wall += 20;
        gateway.tick(follower, wall);
    }
    assert!(gateway.vms[follower].engine.is_poller());
    let now = wall;
    // Polled on the new poller's next ticks, as any service it learned.
    run(&mut gateway, &[follower], now + 20..now + 100);
    let polls = "nacos_guard.service.public.DEFAULT_GROUP.orders.poll_success";
    assert_eq!(gateway.metrics.get(polls), 1, "orders is polled");
}
