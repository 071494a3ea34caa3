use super::fakes::{outcome, FakeMetrics, FakeOutbox, FakeRequest, FakeStore};
use super::*;
use crate::pure::config::{parse, Capabilities, Routing};
use crate::testing::test;

const ENVOY: Capabilities = Capabilities {
    higress_routing: false,
};

const DEMO: &str = r#"{
    "nacos": {"cluster": "outbound|8848||nacos.dns", "timeoutMs": 700},
    "refreshIntervalMs": 1000, "maxStaleMs": 3000,
    "_rules_": [
        {"_match_route_": ["default/demo"], "service": {"name": "demo"}},
        {"_match_route_": ["default/demo-strict"], "service": {"name": "demo"},
         "onStale": "fail_closed", "onDeregistered": "reject"},
        {"_match_route_": ["default/legacy"], "enabled": false}
    ]
}"#;

const TWO: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1},
    {"ip":"10.0.0.2","port":80,"weight":1}]}"#;

const EMPTY: &[u8] = br#"{"hosts":[]}"#;

/// One VM's engine over fake host calls; `push_tests` extends it.
pub(super) struct Harness {
    pub(super) engine: Engine,
    pub(super) outbox: FakeOutbox,
    pub(super) metrics: FakeMetrics,
    pub(super) store: FakeStore,
}

impl Harness {
    pub(super) fn new(json: &str) -> Self {
        let config = parse(json.as_bytes(), ENVOY).unwrap();
        let mut metrics = FakeMetrics::default();
        let engine = Engine::new(&config, &mut metrics, 42);
        Self {
            engine,
            outbox: FakeOutbox::default(),
            metrics,
            store: FakeStore::default(),
        }
    }

    pub(super) fn tick(&mut self, now: u64) {
        self.engine
            .on_tick(now, &mut self.outbox, &mut self.metrics, &mut self.store);
    }

    pub(super) fn answer(&mut self, token: u32, answer: Option<(u16, &[u8])>, now: u64) {
        self.engine.on_answer(
            token,
            answer,
            now,
            &mut self.outbox,
            &mut self.metrics,
            &mut self.store,
        );
    }

    /// Poll once at `now` and answer every call with `answer`.
    fn poll(&mut self, now: u64, answer: Option<(u16, &[u8])>) -> usize {
        self.tick(now);
        self.answer_sent(now, answer)
    }

    /// Answer every HTTP call sent so far with `answer`; how many there were.
    pub(super) fn answer_sent(&mut self, now: u64, answer: Option<(u16, &[u8])>) -> usize {
        let sent = self.outbox.take();
        for call in &sent {
            self.answer(call.token, answer, now);
        }
        sent.len()
    }

    pub(super) fn decide(&mut self, route: &'static str, now: u64, pin: Option<&str>) -> String {
        let rerouted_before = self
            .metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.rerouted");
        let mut request = FakeRequest {
            pin: pin.map(str::to_string),
            ..FakeRequest::on(route)
        };
        let action =
            outcome(
                self.engine
                    .on_request(now, &mut request, &mut self.metrics, &mut self.store),
            );
        self.engine.flush_request_counts(&mut self.metrics);
        if self
            .metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.rerouted")
            > rerouted_before
        {
            format!("{action} rerouted")
        } else {
            action
        }
    }
}

#[test]
fn one_poll_per_service_however_many_rules_share_it() {
    let mut h = Harness::new(DEMO);
    h.tick(0);
    let sent = h.outbox.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].cluster, "outbound|8848||nacos.dns");
    assert_eq!(sent[0].authority, "nacos.dns");
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].timeout_ms, 700);
    assert!(sent[0]
        .path
        .starts_with("/nacos/v1/ns/instance/list?serviceName=demo&"));
    h.tick(500);
    assert!(h.outbox.sent.is_empty(), "still in flight");
}

#[test]
fn polls_repeat_every_interval() {
    let mut h = Harness::new(DEMO);
    let mut polls = 0;
    for now in (0..10_000).step_by(10) {
        polls += h.poll(now, Some((200, TWO)));
    }
    assert!((10..=12).contains(&polls), "{polls} polls in 10 s at 1 s");
}

#[test]
fn answers_route_requests_and_count() {
    let mut h = Harness::new(DEMO);
    assert_eq!(
        h.decide("default/demo", 0, None),
        "pass",
        "no answer yet: fail_open"
    );
    assert_eq!(
        h.decide("default/demo-strict", 0, None),
        "reject registry_unavailable"
    );
    h.poll(0, Some((200, TWO)));
    let picks: Vec<String> = (0..4).map(|_| h.decide("default/demo", 10, None)).collect();
    assert_eq!(
        picks,
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.routed"),
        4
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.passed_through"),
        1
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.rejected"),
        1
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
        1
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.usable_instances"),
        2
    );
}

#[test]
fn an_empty_list_that_empties_a_service_is_obeyed_once_a_poll_at_once_confirms_it() {
    // A Nacos node restarted without its data answers `hosts: []` until it has
    // caught up (about 0.3 s with r-nacos); polled through several hosts, that
    // one answer rejected every request for one interval.
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    h.poll(1000, Some((200, EMPTY)));
    assert!(h.decide("default/demo", 1001, None).ends_with(":80"));
    // The confirming poll goes on the next tick, not an interval later.
    assert_eq!(h.poll(1020, Some((200, TWO))), 1, "polled again at once");
    assert!(h.decide("default/demo", 1021, None).ends_with(":80"));
    // A second empty answer is the truth.
    h.poll(2020, Some((200, EMPTY)));
    assert_eq!(h.poll(2040, Some((200, EMPTY))), 1, "polled again at once");
    assert_eq!(
        h.decide("default/demo", 2041, None),
        "reject no_healthy_instance"
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.usable_instances"),
        0
    );
    // Once empty, an empty answer again needs no confirmation, and a list
    // after it is taken at once.
    assert_eq!(h.poll(2060, Some((200, EMPTY))), 0, "not polled before due");
    h.poll(3040, Some((200, EMPTY)));
    assert_eq!(h.poll(3060, Some((200, TWO))), 0, "no confirmation asked");
    h.poll(4040, Some((200, TWO)));
    assert!(h.decide("default/demo", 4041, None).ends_with(":80"));
}

#[test]
fn a_failed_confirming_poll_drops_the_empty_answer_and_is_not_retried_at_once() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    h.poll(1000, Some((200, EMPTY)));
    assert_eq!(
        h.poll(1020, Some((500, b"boom"))),
        1,
        "polled again at once"
    );
    assert_eq!(
        h.poll(1040, Some((200, EMPTY))),
        0,
        "next poll at its interval"
    );
    assert!(h.decide("default/demo", 1041, None).ends_with(":80"));
    // The next regular poll's empty answer is held back again.
    h.poll(2020, Some((200, EMPTY)));
    assert!(h.decide("default/demo", 2021, None).ends_with(":80"));
}

#[test]
fn the_empty_answer_awaiting_confirmation_is_not_the_one_an_identical_answer_confirms() {
    // An answer byte for byte the last good one confirms the snapshot unparsed:
    // the unconfirmed empty answer must not become that last good one, or the
    // confirming empty answer would confirm the old instances.
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    h.poll(1000, Some((200, EMPTY)));
    h.poll(1020, Some((200, EMPTY)));
    assert_eq!(
        h.decide("default/demo", 1021, None),
        "reject no_healthy_instance"
    );
}

#[test]
fn errors_keep_the_last_good_snapshot_until_max_stale() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    h.poll(1000, Some((500, b"boom")));
    h.poll(2000, None);
    h.poll(3000, Some((200, b"<html>")));
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
        3
    );
    // maxStaleMs 3000 counts from the first failed poll, sent at 1000.
    assert!(h.decide("default/demo", 4000, None).ends_with(":80"));
    assert_eq!(h.decide("default/demo", 4001, None), "pass");
    assert_eq!(
        h.decide("default/demo-strict", 4001, None),
        "reject registry_unavailable"
    );
    h.poll(5000, Some((200, TWO)));
    assert!(
        h.decide("default/demo", 5000, None).ends_with(":80"),
        "recovers by itself"
    );
}

#[test]
fn pins_are_honoured_rerouted_or_rejected() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    assert_eq!(
        h.decide("default/demo", 1, Some("10.0.0.2:80")),
        "10.0.0.2:80"
    );
    assert!(h
        .decide("default/demo", 1, Some("10.0.0.9:80"))
        .ends_with(" rerouted"));
    assert_eq!(
        h.decide("default/demo-strict", 1, Some("10.0.0.9:80")),
        "reject instance_deregistered"
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.rerouted"),
        1
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.routed"),
        2
    );
}

#[test]
fn disabled_and_unmatched_routes_are_left_alone() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    assert_eq!(h.decide("default/legacy", 1, None), "ignore");
    assert_eq!(h.decide("default/other", 1, None), "ignore");
}

#[test]
fn refused_dispatch_counts_a_failure_and_retries_next_interval() {
    let mut h = Harness::new(DEMO);
    h.outbox.refuse = true;
    h.tick(0);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
        1
    );
    h.outbox.refuse = false;
    h.tick(100);
    assert!(h.outbox.sent.is_empty());
    h.tick(1000);
    assert_eq!(h.outbox.take().len(), 1);
}

#[test]
fn unknown_tokens_are_ignored() {
    let mut h = Harness::new(DEMO);
    h.answer(999, Some((200, TWO)), 0);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
        0
    );
}

const AUTH: &str = r#"{"nacos": {"cluster": "nacos", "username": "admin", "password": "pw"},
    "service": {"name": "demo"}, "refreshIntervalMs": 1000}"#;

#[test]
fn logs_in_before_polling_and_refreshes_before_expiry() {
    let mut h = Harness::new(AUTH);
    h.tick(0);
    let login = h.outbox.take();
    assert_eq!(login.len(), 1, "only the login goes first");
    assert_eq!(login[0].method, "POST");
    assert_eq!(login[0].path, "/nacos/v1/auth/login");
    assert_eq!(login[0].body.as_deref(), Some("username=admin&password=pw"));
    h.answer(
        login[0].token,
        Some((200, br#"{"accessToken":"T1","tokenTtl":4}"#)),
        10,
    );
    let poll = h.outbox.take();
    assert_eq!(poll.len(), 1, "the poll follows the login at once");
    assert!(
        poll[0].path.ends_with("&accessToken=T1"),
        "{}",
        poll[0].path
    );
    h.answer(poll[0].token, Some((200, TWO)), 10);
    assert_eq!(h.metrics.get("nacos_guard.login_success"), 1);

    h.tick(3009);
    assert!(
        h.outbox.take().iter().all(|call| call.method == "GET"),
        "not yet"
    );
    h.tick(3010);
    let refresh: Vec<_> = h
        .outbox
        .take()
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect();
    assert_eq!(refresh.len(), 1, "refresh at 3/4 of the 4 s lifetime");
}

#[test]
fn failed_logins_back_off_and_count() {
    let mut h = Harness::new(AUTH);
    let mut logins = 0;
    for now in (0..10_000).step_by(10) {
        h.tick(now);
        for call in h.outbox.take() {
            logins += 1;
            h.answer(call.token, Some((403, b"unknown user!")), now);
        }
    }
    assert_eq!(logins, 4, "at 0, 1 s, 3 s and 7 s");
    assert_eq!(h.metrics.get("nacos_guard.login_failure"), 4);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
        0
    );
}

#[test]
fn a_403_on_the_list_logs_in_again_at_once() {
    let mut h = Harness::new(AUTH);
    h.tick(0);
    let login = h.outbox.take();
    h.answer(
        login[0].token,
        Some((200, br#"{"accessToken":"T1","tokenTtl":1000}"#)),
        0,
    );
    let poll = h.outbox.take();
    h.answer(poll[0].token, Some((403, b"token expired!")), 0);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
        1
    );
    h.tick(1);
    let next = h.outbox.take();
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].method, "POST",
        "logs in again instead of polling with a dead token"
    );
}

#[test]
fn rejections_are_prepared_per_guard() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, EMPTY)));
    let mut request = FakeRequest::on("default/demo");
    let RequestAction::Reject(response) =
        h.engine
            .on_request(1, &mut request, &mut h.metrics, &mut h.store)
    else {
        panic!("an empty list rejects");
    };
    assert_eq!(response.status, 503);
    assert!(response.body.contains("\"code\":\"no_healthy_instance\""));
    assert!(response.body.contains("\"service\":\"demo\""));
}

#[test]
fn request_counters_reach_the_host_once_per_tick() {
    let mut h = Harness::new(DEMO);
    h.poll(0, Some((200, TWO)));
    for _ in 0..5 {
        let mut request = FakeRequest::on("default/demo");
        h.engine
            .on_request(10, &mut request, &mut h.metrics, &mut h.store);
    }
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.routed"),
        0,
        "not per request"
    );
    h.tick(20);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.routed"),
        5
    );
    h.tick(30);
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.routed"),
        5,
        "counted once"
    );
}

/// An r-nacos list answer of `hosts`, stamped with `stamp` as r-nacos stamps each
/// answer with its time.
fn stamped(hosts: &str, stamp: u64) -> Vec<u8> {
    format!(
        r#"{{"name":"DEFAULT_GROUP@@demo","clusters":"","cacheMillis":10000,"hosts":[{hosts}],"lastRefTime":{stamp},"checksum":"{stamp}","useSpecifiedURL":false}}"#
    )
    .into_bytes()
}

#[test]
fn answers_that_differ_only_in_nacos_stamps_confirm_the_snapshot() {
    let mut h = Harness::new(DEMO);
    let one = r#"{"ip":"10.0.0.1","port":80,"weight":1.0,"healthy":true}"#;
    let two = r#"{"ip":"10.0.0.2","port":80,"weight":1.0,"healthy":true}"#;
    h.poll(0, Some((200, &stamped(one, 7))));
    assert_eq!(h.decide("default/demo-strict", 1, None), "10.0.0.1:80");
    h.poll(1000, Some((200, &stamped(two, 7))));
    assert_eq!(
        h.decide("default/demo-strict", 1001, None),
        "10.0.0.2:80",
        "new hosts under the same stamps are taken"
    );
    // Only the stamps change, for longer than maxStaleMs (3 s): each answer
    // confirms the list, which stays fresh.
    for now in (2000..=6000).step_by(1000) {
        h.poll(now, Some((200, &stamped(two, now))));
    }
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
        7
    );
    assert_eq!(
        h.metrics
            .get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
        0
    );
    assert_eq!(h.decide("default/demo-strict", 8500, None), "10.0.0.2:80");
}

#[test]
fn a_routed_request_clears_every_protected_header_but_the_one_its_route_sets() {
    const TWO_HEADERS: &str = r#"{
        "nacos": {"cluster": "outbound|8848||nacos.dns"},
        "_rules_": [
            {"_match_route_": ["default/demo"], "service": {"name": "demo"}},
            {"_match_route_": ["default/dest"], "service": {"name": "demo"},
             "routingHeader": "x-dest"}
        ]
    }"#;
    let mut h = Harness::new(TWO_HEADERS);
    h.poll(0, Some((200, TWO)));
    assert_eq!(
        h.engine.protected_headers(),
        [
            "x-gateway-destination-endpoint",
            "x-envoy-original-dst-host",
            "x-dest"
        ]
    );
    let mut cleared = |route: &'static str| {
        let mut request = FakeRequest::on(route);
        match h
            .engine
            .on_request(10, &mut request, &mut h.metrics, &mut h.store)
        {
            RequestAction::Route { routing, clear, .. } => (routing.clone(), clear.to_vec()),
            _ => panic!("{route} was not routed"),
        }
    };
    assert_eq!(
        cleared("default/demo"),
        (
            Routing::Header("x-gateway-destination-endpoint".into()),
            vec!["x-envoy-original-dst-host".to_string(), "x-dest".into()]
        )
    );
    assert_eq!(
        cleared("default/dest"),
        (
            Routing::Header("x-dest".into()),
            vec![
                "x-gateway-destination-endpoint".to_string(),
                "x-envoy-original-dst-host".into()
            ]
        )
    );
}

#[test]
fn a_configuration_guards_something_only_with_a_service_or_learning() {
    // The host starts its tick only for a configuration that guards something.
    let guards = |json: &str| {
        let parsed = parse(json.as_bytes(), ENVOY).unwrap();
        Engine::new(&parsed, &mut FakeMetrics::default(), 1).guards_anything()
    };
    assert!(!guards(
        r#"{"_rules_":[{"_match_route_":["a"],"enabled":false}]}"#
    ));
    assert!(guards(
        r#"{"nacos":{"cluster":"c"},"service":{"name":"s"}}"#
    ));
    assert!(guards(r#"{"nacos":{"cluster":"c"},"guardNacosRoutes":{}}"#));
}

#[test]
fn a_vm_without_shared_data_holds_learned_services_to_the_bound_itself() {
    let mut vm =
        Harness::new(r#"{"nacos":{"cluster":"nacos"},"guardNacosRoutes":{"maxServices":1}}"#);
    let send = |vm: &mut Harness, cluster: &'static str| {
        let mut request = FakeRequest::to("r", cluster);
        outcome(
            vm.engine
                .on_request(0, &mut request, &mut vm.metrics, &mut vm.store),
        )
    };
    assert_eq!(
        send(&mut vm, "outbound|8080||orders.DEFAULT-GROUP.public.nacos"),
        "pass"
    );
    assert_eq!(
        send(&mut vm, "outbound|8080||shop.DEFAULT-GROUP.public.nacos"),
        "ignore"
    );
    assert_eq!(vm.metrics.get("nacos_guard.learned_services_refused"), 1);
}
