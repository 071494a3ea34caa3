//! Several VMs of one gateway sharing one store, against a scripted Nacos: the
//! conditions production gateways meet (rare requests, long intervals, clock
//! steps, 403s, configuration edits) that a single engine in a test never sees.

use super::fakes::{outcome, FakeMetrics, FakeOutbox, FakeRequest, FakeStore, SentCall};
use super::*;
use crate::pure::config::{parse, Capabilities};
use crate::pure::sharing::published::ConfigKeys;
use crate::testing::test;

const ENVOY: Capabilities = Capabilities {
    higress_routing: false,
};

/// A list answer with these `ip:port`s, weight 1 each.
pub(super) fn hosts(endpoints: &[&str]) -> Vec<u8> {
    let hosts: Vec<String> = endpoints
        .iter()
        .map(|endpoint| {
            let (ip, port) = endpoint.split_once(':').unwrap();
            format!(r#"{{"ip":"{ip}","port":{port},"weight":1}}"#)
        })
        .collect();
    format!(r#"{{"hosts":[{}]}}"#, hosts.join(",")).into_bytes()
}

/// What Nacos answers: a list, or a status.
#[derive(Clone)]
pub(super) enum Nacos {
    List(Vec<u8>),
    Status(u16),
}

pub(super) struct Vm {
    pub(super) engine: Engine,
    outbox: FakeOutbox,
    clock: GatewayClock,
}

pub(super) struct Gateway {
    pub(super) vms: Vec<Vm>,
    pub(super) metrics: FakeMetrics,
    pub(super) store: FakeStore,
    pub(super) nacos: Nacos,
    /// What a login answers.
    login: Nacos,
    /// Answers for particular services, by name, instead of `nacos`.
    pub(super) per_service: Vec<(&'static str, Nacos)>,
    logins: usize,
    pub(super) polls: usize,
}

impl Gateway {
    pub(super) fn new(config: &str, vm_count: usize, nacos: Nacos) -> Self {
        let mut gateway = Self {
            vms: Vec::new(),
            metrics: FakeMetrics::default(),
            store: FakeStore::default(),
            nacos,
            login: Nacos::List(br#"{"accessToken":"T","tokenTtl":3600}"#.to_vec()),
            logins: 0,
            polls: 0,
            per_service: Vec::new(),
        };
        for _ in 0..vm_count {
            gateway.add_vm(config);
        }
        gateway
    }

    /// A new VM (or, for a running gateway, the root context of an edited
    /// configuration) with its own id and seed.
    pub(super) fn add_vm(&mut self, config: &str) {
        let parsed = parse(config.as_bytes(), ENVOY).unwrap();
        let id = self.vms.len() as u64 + 1;
        let mut engine = Engine::new(&parsed, &mut self.metrics, id.wrapping_mul(0x9e37_79b9));
        engine.share(
            ConfigKeys::new(config.as_bytes()),
            id,
            &mut self.store,
            &mut self.metrics,
        );
        self.vms.push(Vm {
            engine,
            outbox: FakeOutbox::default(),
            clock: GatewayClock::default(),
        });
    }

    /// Tick VM `vm` at wall time `wall`; Nacos answers at once. Returns the
    /// gateway time the VM read.
    pub(super) fn tick(&mut self, vm: usize, wall: u64) -> u64 {
        let Vm {
            engine,
            outbox,
            clock,
        } = &mut self.vms[vm];
        let now = clock.now(wall, &mut self.store);
        engine.on_tick(now, outbox, &mut self.metrics, &mut self.store);
        while !outbox.sent.is_empty() {
            for call in outbox.take() {
                let answer = if call.method == "POST" {
                    self.logins += 1;
                    &self.login
                } else {
                    self.polls += 1;
                    self.per_service
                        .iter()
                        .find(|(name, _)| call.path.contains(&format!("serviceName={name}&")))
                        .map_or(&self.nacos, |(_, answer)| answer)
                };
                let answer = match answer {
                    Nacos::List(body) => (200, body.clone()),
                    Nacos::Status(status) => (*status, Vec::new()),
                };
                engine.on_answer(
                    call.token,
                    Some((answer.0, &answer.1)),
                    now,
                    outbox,
                    &mut self.metrics,
                    &mut self.store,
                );
            }
        }
        now
    }

    /// Tick only the poller from `wall` on until it sends a poll, and return it
    /// with that call, never answered, and the wall time reached: the poller then
    /// stalls with its call out.
    fn stall_poller_with_a_call_out(&mut self, mut wall: u64) -> (usize, SentCall, u64) {
        let poller = (0..self.vms.len())
            .find(|vm| self.vms[*vm].engine.is_poller())
            .unwrap();
        loop {
            let Vm {
                engine,
                outbox,
                clock,
            } = &mut self.vms[poller];
            let now = clock.now(wall, &mut self.store);
            engine.on_tick(now, outbox, &mut self.metrics, &mut self.store);
            if let Some(call) = outbox.take().pop() {
                return (poller, call, wall);
            }
            wall += 20;
        }
    }

    pub(super) fn tick_all(&mut self, wall: u64) -> u64 {
        (0..self.vms.len())
            .map(|vm| self.tick(vm, wall))
            .max()
            .unwrap_or(0)
    }

    pub(super) fn request(&mut self, vm: usize, now: u64, route: &'static str) -> String {
        self.send(vm, now, FakeRequest::on(route))
    }

    pub(super) fn send(&mut self, vm: usize, now: u64, mut request: FakeRequest) -> String {
        outcome(self.vms[vm].engine.on_request(
            now,
            &mut request,
            &mut self.metrics,
            &mut self.store,
        ))
    }
}

pub(super) const FOUR: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];

fn global(extra: &str) -> String {
    format!(
        r#"{{"nacos":{{"cluster":"nacos"}},"service":{{"name":"demo"}},
            "refreshIntervalMs":1000{extra}}}"#
    )
}

#[test]
fn one_request_per_vm_per_interval_reaches_every_instance_its_share() {
    // Before: every confirming poll restarted the rotation, and every VM started
    // at the first instance: 1 and 2 got everything, 3 and 4 nothing.
    let mut gateway = Gateway::new(&global(""), 2, Nacos::List(hosts(&FOUR)));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for second in 0..400u64 {
        for step in 0..50 {
            gateway.tick_all(second * 1_000 + step * 20);
        }
        let now = second * 1_000 + 999;
        for vm in 0..2 {
            *counts.entry(gateway.request(vm, now, "any")).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    // 800 requests over 4 equal instances: 200 each, within 5 %.
    assert!(
        counts.values().all(|count| (190..=210).contains(count)),
        "{counts:?}"
    );
}

#[test]
fn a_healthy_registry_polled_rarely_is_never_stale() {
    // Before: maxStaleMs counted from the last answer, so with a 60 s interval
    // and the default 30 s the guard passed traffic through half the time.
    let config = r#"{"nacos":{"cluster":"nacos"},"service":{"name":"demo"},
        "refreshIntervalMs":60000}"#;
    let strict = r#"{"nacos":{"cluster":"nacos"},"service":{"name":"demo"},
        "refreshIntervalMs":60000,"maxStaleMs":0,"onStale":"fail_closed"}"#;
    for config in [config, strict] {
        let mut gateway = Gateway::new(config, 2, Nacos::List(hosts(&FOUR[..1])));
        let mut outcomes = std::collections::BTreeSet::new();
        for wall in (0..600_000u64).step_by(50) {
            let now = gateway.tick_all(wall);
            if wall % 1_000 == 0 && wall > 0 {
                outcomes.insert(gateway.request((wall / 1_000 % 2) as usize, now, "r"));
            }
        }
        assert_eq!(
            outcomes.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1:80"],
            "{config}"
        );
        assert!(
            (10..=12).contains(&gateway.polls),
            "{} polls",
            gateway.polls
        );
    }
}

#[test]
fn clock_steps_either_way_neither_freeze_polling_nor_stale_everything() {
    const HOUR: u64 = 3_600_000;
    for step in [-(HOUR as i64), HOUR as i64] {
        let mut gateway = Gateway::new(&global(""), 2, Nacos::List(hosts(&FOUR[..2])));
        let mut wall = 10 * HOUR;
        for _ in 0..100 {
            gateway.tick_all(wall);
            wall += 20;
        }
        wall = wall.checked_add_signed(step).unwrap();
        let polls_before = gateway.polls;
        // Right after the step nothing is stale; Nacos then empties the service.
        let now = gateway.tick_all(wall);
        assert!(
            gateway.request(0, now, "r").starts_with("10.0.0."),
            "{step}"
        );
        gateway.nacos = Nacos::List(hosts(&[]));
        for _ in 0..60 {
            wall += 20;
            gateway.tick_all(wall);
        }
        let now = gateway.tick_all(wall);
        assert!(
            gateway.polls > polls_before,
            "polling goes on after a {step} ms step"
        );
        assert_eq!(
            gateway.request(1, now, "r"),
            "reject no_healthy_instance",
            "the empty list is obeyed within an interval after a {step} ms step"
        );
    }
}

#[test]
fn a_forbidden_namespace_costs_one_login_per_backoff_not_one_per_poll() {
    // Before: every 403 dropped the token and the next tick logged in again:
    // 101 logins in 10 s at a 100 ms interval.
    let config = r#"{"nacos":{"cluster":"nacos","username":"u","password":"p"},
        "_rules_":[{"_match_route_":["a"],"service":{"name":"a"}},
                   {"_match_route_":["b"],"service":{"name":"b"}},
                   {"_match_route_":["c"],"service":{"name":"c"}}],
        "refreshIntervalMs":100}"#;
    let mut gateway = Gateway::new(config, 2, Nacos::Status(403));
    for wall in (0..10_000).step_by(10) {
        gateway.tick_all(wall);
    }
    // At 0 and once more at once (a refused token), then after 1, 2 and 4 s.
    assert_eq!(gateway.logins, 5, "{} logins", gateway.logins);
    assert!(
        gateway
            .metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.a.poll_failure")
            > 50
    );
}

#[test]
fn one_vm_polls_and_logs_in_for_all() {
    let config = r#"{"nacos":{"cluster":"nacos","username":"u","password":"p"},
        "service":{"name":"demo"},"refreshIntervalMs":1000}"#;
    let mut gateway = Gateway::new(config, 4, Nacos::List(hosts(&FOUR[..1])));
    let mut now = 0;
    for wall in (0..10_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    assert_eq!(gateway.logins, 1);
    assert!(
        (10..=12).contains(&gateway.polls),
        "{} polls",
        gateway.polls
    );
    for vm in 0..4 {
        assert_eq!(
            gateway.request(vm, now, "r"),
            "10.0.0.1:80",
            "VM {vm} routes by the shared snapshot"
        );
    }
}

#[test]
fn another_vm_takes_over_within_the_lease_when_the_poller_stops() {
    let config = r#"{"nacos":{"cluster":"nacos","username":"u","password":"p"},
        "service":{"name":"demo"},"refreshIntervalMs":1000}"#;
    let mut gateway = Gateway::new(config, 2, Nacos::List(hosts(&FOUR[..1])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    let (polls_before, logins_before) = (gateway.polls, gateway.logins);
    // Stop ticking the poller; the other VM must take over.
    gateway.nacos = Nacos::List(hosts(&FOUR[1..2]));
    let follower = (0..2)
        .find(|vm| !gateway.vms[*vm].engine.is_poller())
        .unwrap();
    let mut now = 0;
    while wall < 9_000 {
        now = gateway.tick(follower, wall);
        wall += 20;
    }
    assert!(
        gateway.polls - polls_before >= 3,
        "the other VM polls after the lease ran out"
    );
    assert_eq!(
        gateway.logins, logins_before,
        "the new poller reuses the shared token"
    );
    assert_eq!(gateway.request(follower, now, "r"), "10.0.0.2:80");
}

#[test]
fn a_former_pollers_late_answer_never_replaces_a_newer_one() {
    let mut gateway = Gateway::new(&global(""), 3, Nacos::List(hosts(&FOUR[..1])));
    for wall in (0..2_000).step_by(20) {
        gateway.tick_all(wall);
    }
    // The poller sends its next poll, then stalls with the call out.
    let (poller, late_call, mut wall) = gateway.stall_poller_with_a_call_out(2_000);
    let others: Vec<usize> = (0..3).filter(|vm| *vm != poller).collect();
    // Another VM takes over and learns that the service moved to 10.0.0.2.
    gateway.nacos = Nacos::List(hosts(&FOUR[1..2]));
    let mut now = 0;
    while wall < 8_000 {
        for vm in &others {
            now = gateway.tick(*vm, wall);
        }
        wall += 20;
    }
    assert_eq!(gateway.request(others[1], now, "r"), "10.0.0.2:80");
    // Now the stalled VM's answer arrives with the old list.
    let old = hosts(&FOUR[..1]);
    let Vm { engine, outbox, .. } = &mut gateway.vms[poller];
    engine.on_answer(
        late_call.token,
        Some((200, &old)),
        now,
        outbox,
        &mut gateway.metrics,
        &mut gateway.store,
    );
    for vm in &others {
        now = gateway.tick(*vm, wall);
    }
    for vm in others {
        assert_eq!(gateway.request(vm, now, "r"), "10.0.0.2:80", "VM {vm}");
    }
}

#[test]
fn a_poller_that_lost_the_lease_while_stalled_sends_nothing_when_its_answer_comes() {
    // Found by the simulator (seed 18): the stalled former poller's late answer
    // freed its slot, and it polled again before its tick told it it follows. A
    // second service is due by then: the answer's own is still in flight.
    let config = r#"{"nacos":{"cluster":"nacos"},"service":{"name":"demo"},
        "refreshIntervalMs":1000,
        "_rules_":[{"_match_route_":["other"],"service":{"name":"other"}}]}"#;
    let mut gateway = Gateway::new(config, 2, Nacos::List(hosts(&FOUR[..1])));
    for wall in (0..2_000).step_by(20) {
        gateway.tick_all(wall);
    }
    let (poller, late_call, mut wall) = gateway.stall_poller_with_a_call_out(2_000);
    let other = 1 - poller;
    let polls_before = gateway.polls;
    let mut now = 0;
    while wall < 8_000 {
        now = gateway.tick(other, wall);
        wall += 20;
    }
    assert!(gateway.polls > polls_before, "the other VM took over");
    let body = hosts(&FOUR[..1]);
    let Vm { engine, outbox, .. } = &mut gateway.vms[poller];
    engine.on_answer(
        late_call.token,
        Some((200, &body)),
        now,
        outbox,
        &mut gateway.metrics,
        &mut gateway.store,
    );
    assert!(
        outbox.take().is_empty(),
        "a VM that lost the lease does not poll"
    );
}

#[test]
fn a_former_pollers_late_answer_does_not_outlive_the_new_pollers_confirmations() {
    // Found by the simulator (seed 3386): the stalled former poller took its own
    // late answer (10.0.0.2 briefly registered) into its snapshot, newer than the
    // new poller's unchanged content, so it never adopted that content again
    // while every heartbeat confirmed its own: it routed to 10.0.0.2 for good.
    let mut gateway = Gateway::new(&global(""), 2, Nacos::List(hosts(&FOUR[..1])));
    for wall in (0..2_000).step_by(20) {
        gateway.tick_all(wall);
    }
    let (poller, late_call, mut wall) = gateway.stall_poller_with_a_call_out(2_000);
    let other = 1 - poller;
    // The other VM takes over and polls the same list as before: no new content.
    while wall < 8_000 {
        gateway.tick(other, wall);
        wall += 20;
    }
    let late = hosts(&FOUR[..2]);
    let Vm { engine, outbox, .. } = &mut gateway.vms[poller];
    engine.on_answer(
        late_call.token,
        Some((200, &late)),
        wall,
        outbox,
        &mut gateway.metrics,
        &mut gateway.store,
    );
    let mut routed = std::collections::BTreeSet::new();
    while wall < 12_000 {
        let now = gateway.tick_all(wall);
        routed.insert(gateway.request(poller, now, "r"));
        wall += 20;
    }
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.1:80"]);
}

/// Tick `vm` alone from `wall` on until it has polled Nacos once; the wall time
/// reached.
fn until_it_polls(gateway: &mut Gateway, vm: usize, mut wall: u64) -> u64 {
    let polls = gateway.polls;
    while gateway.polls == polls {
        gateway.tick(vm, wall);
        wall += 20;
    }
    wall
}

#[test]
fn a_follower_does_not_keep_another_configurations_short_lived_list() {
    // Issue 24, defect 5. Content is stored once per question for every
    // configuration. Before: configuration A's followers took configuration B's
    // list from a health flap, newer than what A's poller announced, and kept
    // it: A's content never moved again, so its heartbeat never sent them back
    // to read, and 10.0.0.3 kept a share of their traffic. A VM of A that
    // starts meanwhile starts from B's list, as any new root context does.
    let a = global("");
    let b = global(r#","maxStaleMs":20000"#);
    let mut gateway = Gateway::new(&a, 2, Nacos::List(hosts(&FOUR[..1])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.add_vm(&b);
    let b_poller = 2;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    let a_poller = (0..2)
        .find(|vm| gateway.vms[*vm].engine.is_poller())
        .unwrap();

    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    wall = until_it_polls(&mut gateway, a_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..3]));
    wall = until_it_polls(&mut gateway, b_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    gateway.add_vm(&a);
    let late_starter = 3;

    // B's root context goes away (the edit that made it is undone), leaving
    // its short-lived list as the last one stored.
    for a_follower in [1 - a_poller, late_starter] {
        let mut routed = std::collections::BTreeSet::new();
        let (settled, end) = (wall + 3_000, wall + 10_000);
        while wall < end {
            let mut now = 0;
            for vm in [0, 1, late_starter] {
                now = now.max(gateway.tick(vm, wall));
            }
            let endpoint = gateway.request(a_follower, now, "r");
            if wall >= settled {
                routed.insert(endpoint);
            }
            wall += 20;
        }
        assert_eq!(
            routed.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1:80", "10.0.0.2:80"],
            "VM {a_follower}"
        );
    }
}

#[test]
fn a_follower_takes_the_list_its_poller_started_from_whoever_wrote_it() {
    // Found by the simulator (seed 5897) while fixing the test above: a new
    // configuration's poller started from the old configuration's list and
    // Nacos confirmed it unchanged, so nothing of the new configuration's own
    // was stored; its follower, started a moment earlier from an older list,
    // found nothing to follow and rejected requests to a service with
    // instances.
    let (a, b) = (global(""), global(r#","maxStaleMs":20000"#));
    let mut gateway = Gateway::new(&a, 1, Nacos::List(hosts(&[])));
    let mut wall = until_it_polls(&mut gateway, 0, 0);
    gateway.add_vm(&b);
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    wall = until_it_polls(&mut gateway, 0, wall);
    gateway.add_vm(&b);
    let (b_follower, b_poller) = (1, 2);
    let mut now = wall;
    while wall < 5_000 {
        now = gateway.tick(b_poller, wall);
        wall += 20;
    }
    gateway.tick(b_follower, wall);
    assert!(!gateway.vms[b_follower].engine.is_poller());
    assert_eq!(gateway.request(b_follower, now, "r"), "10.0.0.1:80");
}

#[test]
fn a_root_context_loaded_again_does_not_keep_a_list_its_poller_never_stored() {
    // Found by the simulator with flaps and VM reloads (seed 1359, the flaps
    // model as it first ran). Configuration B's poller started from A's list
    // and Nacos confirmed it unchanged, so nothing of B's own was stored. A, still
    // alive, polled during a flap and stored a list with an instance that was
    // up for a moment. A root context of B loaded again then started from that
    // list, and B's later polls, unchanged, left it nothing to go back to: it
    // routed to the flapped instance for good.
    let (a, b) = (global(""), global(r#","maxStaleMs":20000"#));
    let mut gateway = Gateway::new(&a, 1, Nacos::List(hosts(&FOUR[..1])));
    let a_poller = 0;
    let mut wall = until_it_polls(&mut gateway, a_poller, 0);
    gateway.add_vm(&b);
    let b_poller = 1;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    wall = until_it_polls(&mut gateway, a_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    // A's root context goes: it ticks no more.
    gateway.add_vm(&b);
    let reloaded = 2;
    let mut routed = std::collections::BTreeSet::new();
    let (settled, end) = (wall + 3_000, wall + 10_000);
    while wall < end {
        gateway.tick(b_poller, wall);
        let now = gateway.tick(reloaded, wall);
        let endpoint = gateway.request(reloaded, now, "r");
        if wall >= settled {
            routed.insert(endpoint);
        }
        wall += 20;
    }
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.1:80"]);
}

#[test]
fn a_new_root_context_does_not_take_one_configurations_confirmation_for_anothers_list() {
    // Found by the simulator with VM reloads (seed 1042, the flaps model as it
    // first ran): the
    // confirmation is stored once per question, whichever configuration's
    // poller confirmed its own list. A root context loaded again started from
    // another configuration's list of a flap, long over, with this
    // configuration's later confirmation of its own list, took the flap's list
    // for fresh and routed to the flapped instance.
    let (a, b) = (
        global(r#","maxStaleMs":0"#),
        global(r#","maxStaleMs":20000"#),
    );
    let mut gateway = Gateway::new(&a, 1, Nacos::List(hosts(&FOUR[..1])));
    let a_poller = 0;
    let mut wall = until_it_polls(&mut gateway, a_poller, 0);
    gateway.add_vm(&b);
    let b_poller = 1;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    wall = until_it_polls(&mut gateway, b_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    // B's root context goes; A's poller confirms its list for 5 s more.
    let mut now = 0;
    let end = wall + 5_000;
    while wall < end {
        now = gateway.tick(a_poller, wall);
        wall += 20;
    }
    gateway.add_vm(&a);
    let reloaded = 2;
    let routed: std::collections::BTreeSet<String> = (0..20)
        .map(|_| gateway.request(reloaded, now, "r"))
        .collect();
    assert!(!routed.contains("10.0.0.2:80"), "{routed:?}");
}

#[test]
fn a_list_whose_write_other_vms_beat_is_written_again() {
    // Found by the simulator with VM reloads (seed 1520, the flaps model as it
    // first ran): the
    // poller's compare-and-swap write of a changed list lost to other workers'
    // writes of the key, and nothing wrote it again while Nacos stayed the
    // same. Followers waited for the list the heartbeat named, and a root
    // context that started meanwhile took the old, empty one, rejecting
    // requests to a service with an instance.
    let mut gateway = Gateway::new(&global(""), 2, Nacos::List(hosts(&[])));
    let mut wall = 0;
    while wall < 2_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    gateway.store.contend = Some(("guard.service.", 8));
    while wall < 4_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.add_vm(&global(""));
    let mut now = 0;
    while wall < 6_000 {
        now = gateway.tick_all(wall);
        wall += 20;
    }
    for vm in 0..3 {
        assert_eq!(gateway.request(vm, now, "r"), "10.0.0.1:80", "VM {vm}");
    }
}

#[test]
fn a_heartbeat_left_by_an_identical_configuration_does_not_bring_back_its_list() {
    // Found by the simulator (seed 91) while fixing the test above: an edit back
    // to an earlier configuration reuses its keys, and its new poller read the
    // heartbeat the earlier one left, older than the content it started from,
    // and went back to that configuration's old list. Nacos fails meanwhile, so
    // no answer corrects it.
    let (a, b) = (global(""), global(r#","maxStaleMs":20000"#));
    let mut gateway = Gateway::new(&a, 2, Nacos::List(hosts(&FOUR[..2])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick(0, wall);
        gateway.tick(1, wall);
        wall += 20;
    }
    gateway.add_vm(&b);
    gateway.add_vm(&b);
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    while wall < 8_000 {
        gateway.tick(2, wall);
        gateway.tick(3, wall);
        wall += 20;
    }
    gateway.nacos = Nacos::Status(503);
    gateway.add_vm(&a);
    gateway.add_vm(&a);
    let mut routed = std::collections::BTreeSet::new();
    while wall < 9_000 {
        for vm in 4..6 {
            let now = gateway.tick(vm, wall);
            routed.insert(gateway.request(vm, now, "r"));
        }
        wall += 20;
    }
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.1:80"]);
}

#[test]
fn followers_go_stale_with_the_poller_not_an_answer_later() {
    // The poller's heartbeat carries when its polls started failing; a follower
    // that ignored it would still go stale, but only once the next answer is
    // overdue: a timeout and a heartbeat later than the poller.
    let config = r#"{"nacos":{"cluster":"nacos","timeoutMs":3000},"service":{"name":"demo"},
        "refreshIntervalMs":1000,"maxStaleMs":2000,"onStale":"fail_closed"}"#;
    let mut gateway = Gateway::new(config, 2, Nacos::List(hosts(&FOUR[..1])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.nacos = Nacos::Status(503);
    let mut first_rejected = [None, None];
    while wall < 15_000 && first_rejected.iter().any(Option::is_none) {
        let now = gateway.tick_all(wall);
        for (vm, first) in first_rejected.iter_mut().enumerate() {
            if first.is_none()
                && gateway
                    .request(vm, now, "r")
                    .contains("registry_unavailable")
            {
                *first = Some(wall);
            }
        }
        wall += 20;
    }
    let [Some(a), Some(b)] = first_rejected else {
        panic!("both VMs go stale: {first_rejected:?}");
    };
    // Half an interval between heartbeats, and a tick.
    assert!(a.abs_diff(b) <= 520, "{first_rejected:?}");
}

#[test]
fn a_configuration_edit_keeps_serving_the_services_it_keeps() {
    // Before: the new configuration started from nothing, and passed traffic
    // through (or rejected it) until its first answer.
    let mut gateway = Gateway::new(&global(""), 2, Nacos::List(hosts(&FOUR[..1])));
    let mut now = 0;
    for wall in (0..5_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    let edited = global(r#","maxStaleMs":10000,"onStale":"fail_closed""#);
    gateway.add_vm(&edited);
    // Before the new root context has ticked or polled even once:
    assert_eq!(gateway.request(2, now, "r"), "10.0.0.1:80");
}

#[test]
fn filtered_views_of_one_service_have_their_own_gauges() {
    let config = r#"{"nacos":{"cluster":"nacos"},"refreshIntervalMs":1000,
        "_rules_":[{"_match_route_":["all"],"service":{"name":"demo"}},
                   {"_match_route_":["b"],"service":{"name":"demo","clusters":["B"]}}]}"#;
    let list = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"clusterName":"A"},
        {"ip":"10.0.0.2","port":80,"clusterName":"B"},
        {"ip":"10.0.0.3","port":80,"clusterName":"A"}]}"#;
    let mut gateway = Gateway::new(config, 1, Nacos::List(list.to_vec()));
    // The first tick seeds the lease, the second takes it and polls.
    gateway.tick_all(0);
    gateway.tick_all(20);
    assert_eq!(
        gateway
            .metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.usable_instances"),
        3
    );
    assert_eq!(
        gateway
            .metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.view.clusters_B.usable_instances"),
        1
    );
}

#[test]
fn one_name_in_two_groups_or_namespaces_has_its_own_metrics() {
    // Issue 24, defect 6. Before: metrics were keyed by the service name alone,
    // so `orders` in two groups shared one gauge, and the empty one in
    // `MY-GROUP` hid behind the other's instances.
    let config = r#"{"nacos":{"cluster":"nacos"},"refreshIntervalMs":1000,
        "_rules_":[{"_match_route_":["a"],"service":{"name":"orders"}},
                   {"_match_route_":["b"],"service":{"name":"orders","group":"MY-GROUP"}},
                   {"_match_route_":["c"],"nacos":{"cluster":"nacos","namespaceId":"dev"},
                    "service":{"name":"orders"}}]}"#;
    let mut gateway = Gateway::new(config, 1, Nacos::List(hosts(&FOUR[..2])));
    gateway.per_service = vec![("orders&groupName=MY-GROUP", Nacos::List(hosts(&[])))];
    gateway.tick_all(0);
    gateway.tick_all(20);
    let usable = |gateway: &Gateway, namespace: &str, group: &str| {
        gateway.metrics.get(&format!(
            "nacos_guard.service.{namespace}.{group}.orders.usable_instances"
        ))
    };
    assert_eq!(usable(&gateway, "public", "DEFAULT_GROUP"), 2);
    assert_eq!(usable(&gateway, "public", "MY-GROUP"), 0);
    assert_eq!(usable(&gateway, "dev", "DEFAULT_GROUP"), 2);
    gateway.request(0, 40, "b");
    gateway.tick_all(40);
    let rejected = |group: &str| {
        gateway.metrics.get(&format!(
            "nacos_guard.service.public.{group}.orders.rejected"
        ))
    };
    assert_eq!((rejected("MY-GROUP"), rejected("DEFAULT_GROUP")), (1, 0));
}

pub(super) const ORDERS: &str = "outbound|8080||orders.DEFAULT-GROUP.public.nacos";
const PAY: &str = "outbound|8080||pay.MY-GROUP.dev.nacos";
const PLAIN: &str = "outbound|8080||web.dns";

fn learning(extra: &str) -> String {
    format!(
        r#"{{"nacos":{{"cluster":"nacos"}},"refreshIntervalMs":1000,
            "guardNacosRoutes":{{"groups":["MY_GROUP"],"namespaces":{{"dev":"ns-dev-id"}}{extra}}},
            "_rules_":[{{"_match_route_":["legacy"],"enabled":false}}]}}"#
    )
}

#[test]
fn services_are_learned_from_traffic_alone_and_guarded_like_configured_ones() {
    let mut gateway = Gateway::new(&learning(""), 3, Nacos::List(hosts(&FOUR[..1])));
    gateway.per_service = vec![("pay", Nacos::List(hosts(&FOUR[1..2])))];
    let mut now = gateway.tick_all(0);
    // The first request to an unseen service meets onStale (fail_open) while its
    // first poll runs; requests to other clusters are left alone.
    assert_eq!(gateway.send(1, now, FakeRequest::to("r", ORDERS)), "pass");
    assert_eq!(gateway.send(2, now, FakeRequest::to("r", PAY)), "pass");
    assert_eq!(gateway.send(0, now, FakeRequest::to("r", PLAIN)), "ignore");
    assert_eq!(
        gateway.send(0, now, FakeRequest::to("legacy", ORDERS)),
        "ignore"
    );
    for wall in (20..2_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    for vm in 0..3 {
        assert_eq!(
            gateway.send(vm, now, FakeRequest::to("r", ORDERS)),
            "10.0.0.1:80"
        );
        assert_eq!(
            gateway.send(vm, now, FakeRequest::to("r", PAY)),
            "10.0.0.2:80"
        );
    }
    assert!(
        gateway.polls <= 2 * 3,
        "{} polls: one poller",
        gateway.polls
    );
    assert_eq!(gateway.metrics.get("nacos_guard.learned_services"), 2);
    assert!(
        gateway
            .metrics
            .get("nacos_guard.service.ns-dev-id.MY_GROUP.pay.poll_success")
            >= 2
    );
    // The last instance of orders goes: rejected as for a configured service.
    gateway.nacos = Nacos::List(hosts(&[]));
    for wall in (2_000..3_500).step_by(20) {
        now = gateway.tick_all(wall);
    }
    assert_eq!(
        gateway.send(2, now, FakeRequest::to("r", ORDERS)),
        "reject no_healthy_instance"
    );
    assert_eq!(
        gateway.send(2, now, FakeRequest::to("r", PAY)),
        "10.0.0.2:80"
    );
}

#[test]
fn an_idle_service_stops_being_polled_and_traffic_brings_it_back() {
    let mut gateway = Gateway::new(
        &learning(r#","idleMs":5000"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    let mut now = gateway.tick_all(0);
    gateway.send(1, now, FakeRequest::to("r", ORDERS));
    for wall in (20..10_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    let polls = gateway.polls;
    for wall in (10_000..20_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    assert_eq!(gateway.polls, polls, "no request for 5 s: no poll");
    gateway.send(0, now, FakeRequest::to("r", ORDERS));
    for wall in (20_000..23_000).step_by(20) {
        now = gateway.tick_all(wall);
    }
    assert!(gateway.polls > polls, "a request resumes polling");
    assert_eq!(
        gateway.send(1, now, FakeRequest::to("r", ORDERS)),
        "10.0.0.1:80"
    );
}

#[test]
fn learned_services_are_bounded_and_ambiguous_names_are_not_guessed() {
    let mut gateway = Gateway::new(
        &learning(r#","maxServices":1"#),
        2,
        Nacos::List(hosts(&FOUR[..1])),
    );
    let now = gateway.tick_all(0);
    assert_eq!(gateway.send(0, now, FakeRequest::to("r", ORDERS)), "pass");
    assert_eq!(gateway.send(1, now, FakeRequest::to("r", PAY)), "ignore");
    assert_eq!(
        gateway.metrics.get("nacos_guard.learned_services_refused"),
        1
    );
    assert_eq!(
        gateway.send(
            1,
            now,
            FakeRequest::to("r", "outbound|80||x.A-B.public.nacos")
        ),
        "ignore"
    );
}

#[test]
fn a_pollers_answer_older_than_another_configurations_list_reaches_its_followers() {
    // Found by the simulator once an edit's old root contexts linger (seed 1093
    // of 1000-1599): configuration A's poll, sent before B's, answered after
    // B had stored a newer list. The stored content is one per question and
    // only a newer one replaces it, so A's list was stored nowhere, while A's
    // heartbeat announced it: A's followers took the confirmation and kept
    // their old list, confirmed fresh, for as long as Nacos's list stayed the
    // same (here 10.0.0.1, deregistered, for good).
    let a = global("");
    let b = global(r#","maxStaleMs":20000"#);
    let mut gateway = Gateway::new(&a, 2, Nacos::List(hosts(&FOUR[..1])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.add_vm(&b);
    let b_poller = 2;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    let (a_poller, late_call, sent_at) = gateway.stall_poller_with_a_call_out(wall + 20);
    assert!(a_poller < b_poller, "A's poller holds the call");
    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    wall = until_it_polls(&mut gateway, b_poller, sent_at + 20);
    gateway.nacos = Nacos::List(hosts(&FOUR[1..2]));
    let now = gateway.tick(a_poller, wall);
    let moved = hosts(&FOUR[1..2]);
    let Vm { engine, outbox, .. } = &mut gateway.vms[a_poller];
    engine.on_answer(
        late_call.token,
        Some((200, &moved)),
        now,
        outbox,
        &mut gateway.metrics,
        &mut gateway.store,
    );
    let a_follower = 1 - a_poller;
    let mut routed = std::collections::BTreeSet::new();
    let (settled, end) = (wall + 3_000, wall + 10_000);
    while wall < end {
        let now = gateway.tick_all(wall);
        let endpoint = gateway.request(a_follower, now, "r");
        if wall >= settled {
            routed.insert(endpoint);
        }
        wall += 20;
    }
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.2:80"]);
}

#[test]
fn a_late_answer_does_not_write_its_confirmation_over_a_newer_one() {
    // Found by the simulator with flaps at polls (seed 283):
    // the confirmation, one per question, was written by whichever poller's
    // answer came last, not by the poll that went last. Configuration A's
    // poller, its answer slow, confirmed its old list over B's later answer
    // that 10.0.0.1 had gone, and a root context of A loaded then started from
    // the old list, confirmed, and routed to the deregistered instance.
    let a = global("");
    let b = global(r#","maxStaleMs":20000"#);
    let mut gateway = Gateway::new(&a, 2, Nacos::List(hosts(&FOUR[..2])));
    let mut wall = 0;
    while wall < 3_000 {
        gateway.tick_all(wall);
        wall += 20;
    }
    gateway.add_vm(&b);
    let b_poller = 2;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    let (a_poller, late_call, sent_at) = gateway.stall_poller_with_a_call_out(wall + 20);
    assert!(a_poller < b_poller, "A's poller holds the call");
    gateway.nacos = Nacos::List(hosts(&FOUR[1..2]));
    wall = until_it_polls(&mut gateway, b_poller, sent_at + 20);
    let now = gateway.tick(a_poller, wall);
    let as_it_was = hosts(&FOUR[..2]);
    let Vm { engine, outbox, .. } = &mut gateway.vms[a_poller];
    engine.on_answer(
        late_call.token,
        Some((200, &as_it_was)),
        now,
        outbox,
        &mut gateway.metrics,
        &mut gateway.store,
    );
    gateway.add_vm(&a);
    let reloaded = 3;
    let routed: std::collections::BTreeSet<String> = (0..20)
        .map(|_| gateway.request(reloaded, now, "r"))
        .collect();
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.2:80"]);
}

#[test]
fn a_new_configuration_starts_from_the_list_nacos_confirmed_last_not_a_gone_ones_flap() {
    // Found by the simulator with flaps at polls (seed 1493): configuration A's
    // poll caught an instance that was up for a moment, and A's root context
    // went before it polled again. The flap's list stayed the newest stored
    // content, since B, whose list Nacos kept confirming, had no change to
    // write. A new configuration started from the flap's list and routed to
    // the instance Nacos had long let go.
    let (a, b, c) = (
        global(""),
        global(r#","maxStaleMs":20000"#),
        global(r#","maxStaleMs":25000"#),
    );
    let mut gateway = Gateway::new(&a, 1, Nacos::List(hosts(&FOUR[..1])));
    let a_poller = 0;
    let mut wall = until_it_polls(&mut gateway, a_poller, 0);
    gateway.add_vm(&b);
    let b_poller = 1;
    wall = until_it_polls(&mut gateway, b_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..2]));
    wall = until_it_polls(&mut gateway, a_poller, wall);
    gateway.nacos = Nacos::List(hosts(&FOUR[..1]));
    // A's root context goes; B's poller confirms its list for 3 s more.
    let mut now = 0;
    let end = wall + 3_000;
    while wall < end {
        now = gateway.tick(b_poller, wall);
        wall += 20;
    }
    gateway.add_vm(&c);
    let started = 2;
    let routed: std::collections::BTreeSet<String> = (0..20)
        .map(|_| gateway.request(started, now, "r"))
        .collect();
    assert_eq!(routed.into_iter().collect::<Vec<_>>(), ["10.0.0.1:80"]);
}
