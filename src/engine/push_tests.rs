//! The engine with `nacos.push`: the link's life (connect, subscribe, pushes,
//! loss, probe, lease), against fakes of the host and messages as r-nacos sends them.

use super::tests::Harness;
use crate::pure::push::wire::{self, Payload};
use crate::testing::test;

const CONFIG: &str = r#"{
    "nacos": {"cluster": "outbound|8848||nacos.dns", "timeoutMs": 500,
              "push": {"grpcCluster": "outbound|9848||nacos.dns", "safetyIntervalMs": 30000}},
    "refreshIntervalMs": 1000,
    "service": {"name": "demo"}
}"#;

const ONE_HOST: &str = r#"{"name":"demo","groupName":"DEFAULT_GROUP","clusters":"",
    "hosts":[{"ip":"10.0.0.1","port":80,"weight":1.0,"healthy":true,"enabled":true}]}"#;
const NO_HOST: &str = r#"{"name":"demo","groupName":"DEFAULT_GROUP","clusters":"","hosts":[]}"#;
const LIST: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1}]}"#;

fn payload(message_type: &str, json: &str) -> Vec<u8> {
    wire::encode(&Payload {
        message_type: message_type.to_string(),
        headers: Vec::new(),
        body: json.as_bytes().to_vec(),
    })
}

fn server_check_answer() -> Vec<u8> {
    payload(
        "ServerCheckResponse",
        r#"{"resultCode":200,"errorCode":0,"connectionId":"1_127.0.0.1:4000","success":true}"#,
    )
}

fn health_answer() -> Vec<u8> {
    payload(
        "HealthCheckResponse",
        r#"{"resultCode":200,"errorCode":0,"success":true}"#,
    )
}

fn subscribe_answer(service_info: &str) -> Vec<u8> {
    payload(
        "SubscribeServiceResponse",
        &format!(
            r#"{{"resultCode":200,"errorCode":0,"success":true,"serviceInfo":{service_info}}}"#
        ),
    )
}

fn notify(request_id: &str, service_info: &str) -> Vec<u8> {
    payload(
        "NotifySubscriberRequest",
        &format!(
            r#"{{"requestId":"{request_id}","namespace":"public","serviceName":"demo",
                "groupName":"DEFAULT_GROUP","serviceInfo":{service_info}}}"#
        ),
    )
}

fn message_type(bytes: &[u8]) -> String {
    wire::decode(bytes).unwrap().message_type
}

/// The engine tests' harness, with what push needs.
impl Harness {
    fn pushing() -> Self {
        Self::new(CONFIG)
    }

    /// Answer every HTTP poll sent so far with `LIST`; how many there were.
    fn answer_polls(&mut self, now: u64) -> usize {
        self.answer_sent(now, Some((200, LIST)))
    }

    /// Unary gRPC calls sent so far, by message type.
    fn take_grpc(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.outbox.grpc_calls)
            .into_iter()
            .map(|(token, _, message)| (token, message_type(&message)))
            .collect()
    }

    fn grpc_answer(&mut self, token: u32, answer: Option<&[u8]>, now: u64) {
        self.engine.on_grpc_answer(
            token,
            answer,
            now,
            &mut self.outbox,
            &mut self.metrics,
            &mut self.store,
        );
    }

    fn push(&mut self, stream: u32, message: &[u8], now: u64) {
        self.engine.on_push_message(
            stream,
            message,
            now,
            &mut self.outbox,
            &mut self.metrics,
            &mut self.store,
        );
    }

    /// From nothing to a live subscription: the first poll, the link, the
    /// subscription answered with `ONE_HOST`. The stream's token.
    fn subscribed(&mut self) -> u32 {
        self.tick(0);
        assert_eq!(self.answer_polls(0), 1, "polling starts at once");
        let calls = self.take_grpc();
        assert_eq!(calls.len(), 1);
        let (check, kind) = &calls[0];
        assert_eq!(kind, "ServerCheckRequest");
        self.grpc_answer(*check, Some(&server_check_answer()), 5);
        let stream = *self.outbox.opened.last().unwrap();
        let setup = &self.outbox.on_streams[0];
        assert_eq!(
            (setup.0, message_type(&setup.1).as_str()),
            (stream, "ConnectionSetupRequest")
        );
        // Subscriptions wait for the server to register the stream.
        self.tick(100);
        assert!(self.take_grpc().is_empty());
        self.tick(300);
        let calls = self.take_grpc();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, "SubscribeServiceRequest");
        self.grpc_answer(calls[0].0, Some(&subscribe_answer(ONE_HOST)), 310);
        stream
    }

    /// Answer a `ServerCheck` or a probe as a healthy server does.
    fn answer_link_call(&mut self, token: u32, kind: &str, now: u64) {
        let answer = match kind {
            "HealthCheckRequest" => health_answer(),
            _ => server_check_answer(),
        };
        self.grpc_answer(token, Some(&answer), now);
    }

    /// Tick every 50 ms over `times`, answering polls and probes; the polls.
    fn run(&mut self, times: std::ops::Range<u64>) -> usize {
        let mut polls = 0;
        for now in times.step_by(50) {
            self.tick(now);
            polls += self.answer_polls(now);
            for (token, kind) in self.take_grpc() {
                assert!(
                    ["HealthCheckRequest", "ServerCheckRequest"].contains(&kind.as_str()),
                    "only probes once subscribed: {kind}"
                );
                self.answer_link_call(token, &kind, now);
            }
        }
        polls
    }

    fn metric(&self, name: &str) -> u64 {
        self.metrics.get(&format!("nacos_guard.{name}"))
    }
}

#[test]
fn a_live_subscription_replaces_polls_until_the_safety_poll() {
    let mut gw = Harness::pushing();
    gw.subscribed();
    assert_eq!(gw.metric("push_streams"), 1);
    assert_eq!(gw.run(400..30_000), 0, "no list call while pushes arrive");
    assert_eq!(gw.decide("default/demo", 30_000, None), "10.0.0.1:80");
    assert_eq!(
        gw.run(30_000..31_400),
        1,
        "one safety poll per safety interval"
    );
}

#[test]
fn an_empty_push_is_the_truth_and_is_acknowledged() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.push(stream, &notify("77", NO_HOST), 1_000);
    assert_eq!(
        gw.decide("default/demo", 1_001, None),
        "reject no_healthy_instance"
    );
    assert_eq!(gw.metric("pushes"), 1);
    let (to, ack) = gw.outbox.on_streams.last().unwrap();
    let ack = wire::decode(ack).unwrap();
    assert_eq!(
        (*to, ack.message_type.as_str()),
        (stream, "NotifySubscriberResponse")
    );
    assert!(String::from_utf8_lossy(&ack.body).contains(r#""requestId":"77""#));
}

#[test]
fn the_servers_liveness_check_is_answered() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.push(
        stream,
        &payload(
            "ClientDetectionRequest",
            r#"{"requestId":"9","headers":{}}"#,
        ),
        1_000,
    );
    let (to, answer) = gw.outbox.on_streams.last().unwrap();
    assert_eq!(
        (*to, message_type(answer).as_str()),
        (stream, "ClientDetectionResponse")
    );
}

#[test]
fn a_push_that_does_not_parse_keeps_the_snapshot_and_polls_at_once() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    let garbage = r#"{"name":"demo","groupName":"DEFAULT_GROUP","clusters":"","hosts":[{"ip":"not an ip","port":80}]}"#;
    gw.push(stream, &notify("5", garbage), 1_000);
    assert_eq!(gw.metric("push_failures"), 1);
    assert_eq!(gw.decide("default/demo", 1_001, None), "10.0.0.1:80");
    gw.tick(1_050);
    assert_eq!(
        gw.answer_polls(1_050),
        1,
        "the refused push is checked by a poll"
    );
    assert_eq!(gw.run(1_100..5_000), 0, "and pushes carry on");
}

#[test]
fn a_lost_stream_hands_over_to_polling_and_reconnects_with_backoff() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.engine.on_push_closed(stream, 1_000, &mut gw.metrics);
    assert_eq!(gw.metric("push_streams"), 0);
    gw.tick(1_000);
    assert_eq!(gw.answer_polls(1_000), 1, "polling takes over at once");
    gw.tick(1_900);
    assert!(gw.take_grpc().is_empty(), "the first retry waits a second");
    gw.tick(2_050);
    let calls = gw.take_grpc();
    assert_eq!(calls.len(), 1);
    gw.grpc_answer(calls[0].0, Some(&server_check_answer()), 2_060);
    assert_eq!(gw.metric("push_reconnects"), 1);
    gw.tick(2_300);
    let calls = gw.take_grpc();
    assert_eq!(calls[0].1, "SubscribeServiceRequest", "subscribed again");
}

#[test]
fn an_unanswered_probe_closes_the_link() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.tick(5_100);
    let probes = gw.take_grpc();
    assert_eq!(probes[0].1, "HealthCheckRequest");
    gw.grpc_answer(probes[0].0, None, 5_600);
    assert_eq!(gw.outbox.closed, vec![stream]);
    gw.tick(5_650);
    assert_eq!(gw.answer_polls(5_650), 1);
}

#[test]
fn a_refused_subscription_is_retried_and_the_service_polled_meanwhile() {
    let mut gw = Harness::pushing();
    gw.tick(0);
    gw.answer_polls(0);
    let check = gw.take_grpc()[0].0;
    gw.grpc_answer(check, Some(&server_check_answer()), 5);
    gw.tick(300);
    let subscribe = gw.take_grpc()[0].0;
    let refused = payload(
        "ErrorResponse",
        r#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","success":false}"#,
    );
    gw.grpc_answer(subscribe, Some(&refused), 310);
    assert_eq!(gw.metric("push_failures"), 1);
    gw.tick(1_050);
    assert_eq!(gw.answer_polls(1_050), 1, "polled meanwhile");
    assert!(gw.take_grpc().is_empty());
    gw.tick(1_350);
    assert_eq!(
        gw.take_grpc()[0].1,
        "SubscribeServiceRequest",
        "retried after a second"
    );
}

#[test]
fn only_the_lease_holder_holds_a_link() {
    let mut poller = Harness::pushing();
    poller.engine.share(
        crate::pure::sharing::published::ConfigKeys::new(CONFIG.as_bytes()),
        1,
        &mut poller.store,
        &mut poller.metrics,
    );
    poller.tick(0); // seeds the vacant lease
    let stream = poller.subscribed();
    // Another VM of the same Envoy: same store, its own engine.
    let mut follower = Harness::pushing();
    follower.store = std::mem::take(&mut poller.store);
    follower.engine.share(
        crate::pure::sharing::published::ConfigKeys::new(CONFIG.as_bytes()),
        2,
        &mut follower.store,
        &mut follower.metrics,
    );
    for now in (400..3_000).step_by(50) {
        follower.tick(now);
    }
    assert!(follower.outbox.grpc_calls.is_empty() && follower.outbox.opened.is_empty());
    assert_eq!(follower.decide("default/demo", 3_000, None), "10.0.0.1:80");
    // The poller stalls past its lease: the follower takes over, links up...
    for now in (3_000..5_000).step_by(50) {
        follower.tick(now);
    }
    assert_eq!(follower.take_grpc()[0].1, "ServerCheckRequest");
    // ...and the former poller, hearing its stream again, learns it follows.
    poller.store = std::mem::take(&mut follower.store);
    poller.push(stream, &notify("1", NO_HOST), 5_000);
    assert_eq!(poller.outbox.closed, vec![stream]);
    assert_eq!(
        poller.decide("default/demo", 5_001, None),
        "10.0.0.1:80",
        "nothing taken from it"
    );
}

#[test]
fn a_service_in_two_namespaces_of_one_server_is_polled_not_subscribed() {
    let nacos = |namespace: &str| {
        format!(
            r#"{{"cluster": "outbound|8848||nacos.dns", "namespaceId": "{namespace}",
                "push": {{"grpcCluster": "outbound|9848||nacos.dns"}}}}"#
        )
    };
    let config = format!(
        r#"{{"_rules_": [
            {{"_match_route_": ["default/demo"], "nacos": {}, "service": {{"name": "demo"}}}},
            {{"_match_route_": ["default/other"], "nacos": {}, "service": {{"name": "demo"}}}}
        ]}}"#,
        nacos("public"),
        nacos("dev")
    );
    let mut gw = Harness::new(&config);
    gw.tick(0);
    assert_eq!(gw.answer_polls(0), 2);
    let check = gw.take_grpc()[0].0;
    gw.grpc_answer(check, Some(&server_check_answer()), 5);
    gw.tick(300);
    assert!(
        gw.take_grpc().is_empty(),
        "a push could not say which one changed"
    );
    gw.tick(1_050);
    assert_eq!(gw.answer_polls(1_050), 2, "both stay polled");
}

/// Two guards of one service, one per cluster, on one pushed server.
const TWO_CLUSTERS: &str = r#"{
    "nacos": {"cluster": "outbound|8848||nacos.dns", "timeoutMs": 500,
              "push": {"grpcCluster": "outbound|9848||nacos.dns"}},
    "refreshIntervalMs": 1000,
    "_rules_": [
        {"_match_route_": ["default/blue"], "service": {"name": "demo", "clusters": ["blue"]}},
        {"_match_route_": ["default/green"], "service": {"name": "demo", "clusters": ["green"]}}
    ]
}"#;

const BLUE_AND_GREEN: &str = r#"{"name":"DEFAULT_GROUP@@demo","groupName":"DEFAULT_GROUP","clusters":"",
    "hosts":[{"ip":"10.0.0.1","port":80,"weight":1.0,"healthy":true,"enabled":true,"clusterName":"blue"},
             {"ip":"10.0.0.3","port":80,"weight":1.0,"healthy":true,"enabled":true,"clusterName":"blue"},
             {"ip":"10.0.0.2","port":80,"weight":1.0,"healthy":true,"enabled":true,"clusterName":"green"}]}"#;
/// 10.0.0.1 (blue) deregistered; pushed with blank clusters, as r-nacos always
/// does and Java does for a subscriber that named none.
const BLUE_ONE_GONE: &str = r#"{"name":"DEFAULT_GROUP@@demo","groupName":"DEFAULT_GROUP","clusters":"",
    "hosts":[{"ip":"10.0.0.3","port":80,"weight":1.0,"healthy":true,"enabled":true,"clusterName":"blue"},
             {"ip":"10.0.0.2","port":80,"weight":1.0,"healthy":true,"enabled":true,"clusterName":"green"}]}"#;

/// Link up and subscribed with `BLUE_AND_GREEN`; the stream and the subscribe
/// requests' bodies.
fn linked_two_clusters(gw: &mut Harness) -> (u32, Vec<String>) {
    gw.tick(0);
    gw.answer_polls(0);
    let check = gw.take_grpc()[0].0;
    gw.grpc_answer(check, Some(&server_check_answer()), 5);
    let stream = *gw.outbox.opened.last().unwrap();
    gw.tick(300);
    let sent = std::mem::take(&mut gw.outbox.grpc_calls);
    let mut bodies = Vec::new();
    for (token, _, message) in sent {
        let payload = wire::decode(&message).unwrap();
        assert_eq!(payload.message_type, "SubscribeServiceRequest");
        bodies.push(String::from_utf8(payload.body).unwrap());
        gw.grpc_answer(token, Some(&subscribe_answer(BLUE_AND_GREEN)), 310);
    }
    (stream, bodies)
}

#[test]
fn one_subscription_per_service_without_clusters_whatever_the_guards_filter() {
    let mut gw = Harness::new(TWO_CLUSTERS);
    let (_, bodies) = linked_two_clusters(&mut gw);
    assert_eq!(
        bodies.len(),
        1,
        "one subscription for both guards: {bodies:?}"
    );
    assert!(bodies[0].contains(r#""clusters":"""#), "{}", bodies[0]);
}

#[test]
fn a_push_with_blank_clusters_reaches_every_guard_of_the_service() {
    let mut gw = Harness::new(TWO_CLUSTERS);
    let (stream, _) = linked_two_clusters(&mut gw);
    gw.push(stream, &notify("8", BLUE_ONE_GONE), 1_000);
    for now in 1_001..1_005 {
        assert_eq!(gw.decide("default/blue", now, None), "10.0.0.3:80");
        assert_eq!(gw.decide("default/green", now, None), "10.0.0.2:80");
    }
    assert!(
        gw.run(1_050..29_000) <= 2,
        "both guards live by push: at most their safety polls"
    );
}

/// Java's answer to a request the user may not make: the handler's response
/// type with resultCode 500 and errorCode 403
/// (`core/.../auth/RemoteRequestAuthFilter.java`).
fn forbidden() -> Vec<u8> {
    payload(
        "SubscribeServiceResponse",
        r#"{"resultCode":500,"errorCode":403,"message":"authorization failed!","success":false}"#,
    )
}

#[test]
fn a_permanent_refusal_backs_off_per_subscription_and_is_counted() {
    let mut gw = Harness::pushing();
    gw.tick(0);
    gw.answer_polls(0);
    let check = gw.take_grpc()[0].0;
    gw.grpc_answer(check, Some(&server_check_answer()), 5);
    let mut subscriptions = 0;
    for now in (300..60_300).step_by(50) {
        gw.tick(now);
        gw.answer_polls(now);
        for (token, kind) in gw.take_grpc() {
            if kind == "SubscribeServiceRequest" {
                subscriptions += 1;
                gw.grpc_answer(token, Some(&forbidden()), now);
            } else {
                gw.answer_link_call(token, &kind, now);
            }
        }
    }
    // 1, 2, 4, 8, 16 then 30 s apart: at 0.3, 1.3, 3.3, 7.3, 15.3, 31.3 s.
    assert_eq!(subscriptions, 6, "subscriptions in 60 s");
    assert_eq!(gw.metric("push_failures"), subscriptions);
}

const AUTH_PUSH: &str = r#"{
    "nacos": {"cluster": "outbound|8848||nacos.dns", "timeoutMs": 500,
              "username": "admin", "password": "pw",
              "push": {"grpcCluster": "outbound|9848||nacos.dns"}},
    "refreshIntervalMs": 1000,
    "service": {"name": "demo"}
}"#;

#[test]
fn no_subscription_goes_out_without_the_token() {
    let mut gw = Harness::new(AUTH_PUSH);
    let mut logins = 0;
    let mut without_token = 0;
    for now in (0..12_000).step_by(50) {
        gw.tick(now);
        for call in gw.outbox.take() {
            let answer: (u16, &[u8]) = if call.method == "POST" {
                logins += 1;
                // The first login gives a token for 4 s; later ones fail.
                if logins == 1 {
                    (200, br#"{"accessToken":"T1","tokenTtl":4}"#)
                } else {
                    (500, b"down")
                }
            } else {
                (200, LIST)
            };
            gw.answer(call.token, Some(answer), now);
        }
        for (token, _, message) in std::mem::take(&mut gw.outbox.grpc_calls) {
            let sent = wire::decode(&message).unwrap();
            if sent.message_type == "SubscribeServiceRequest" {
                if !String::from_utf8_lossy(&sent.body).contains("T1") {
                    without_token += 1;
                }
                gw.grpc_answer(token, Some(&forbidden()), now);
            } else {
                gw.answer_link_call(token, &sent.message_type, now);
            }
        }
    }
    assert_eq!(without_token, 0, "subscriptions wait for the token");
}

#[test]
fn a_connect_reset_is_answered_then_the_link_reconnects() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.push(
        stream,
        &payload(
            "ConnectResetRequest",
            r#"{"requestId":"42","headers":{},"serverIp":"","serverPort":""}"#,
        ),
        1_000,
    );
    let (to, answer) = gw.outbox.finished.last().unwrap();
    let answer = wire::decode(answer.as_deref().unwrap()).unwrap();
    assert_eq!(
        (*to, answer.message_type.as_str()),
        (stream, "ConnectResetResponse"),
        "Java waits 3 s for this answer; it ends the stream's side, so no cancel drops it"
    );
    assert!(String::from_utf8_lossy(&answer.body).contains(r#""requestId":"42""#));
    assert!(gw.outbox.closed.is_empty(), "not cancelled with the answer");
    gw.tick(1_000);
    assert_eq!(gw.answer_polls(1_000), 1, "polled until it is back");
    gw.tick(2_100);
    assert_eq!(
        gw.outbox.closed,
        vec![stream],
        "cancelled when the link connects again"
    );
}

#[test]
fn a_root_context_that_goes_away_closes_its_link() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.engine.shut_down(&mut gw.outbox, &mut gw.metrics);
    assert_eq!(gw.outbox.closed, vec![stream]);
    assert_eq!(gw.metric("push_streams"), 0);
}

#[test]
fn the_probe_is_a_health_check_and_an_unregistered_connection_fails_it() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.tick(5_100);
    let probes = gw.take_grpc();
    assert_eq!(
        probes[0].1, "HealthCheckRequest",
        "the request that proves registration and counts as activity"
    );
    let unregistered = payload(
        "ErrorResponse",
        r#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","success":false}"#,
    );
    gw.grpc_answer(probes[0].0, Some(&unregistered), 5_110);
    assert_eq!(gw.outbox.closed, vec![stream]);
    gw.tick(5_150);
    assert_eq!(gw.answer_polls(5_150), 1, "polled until a new link is up");
}

#[test]
fn an_oversized_push_is_answered_counted_and_its_service_polled() {
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    let mut head = payload(
        "NotifySubscriberRequest",
        r#"{"requestId":"31","headers":{},"namespace":"public","serviceName":"demo",
            "groupName":"DEFAULT_GROUP","serviceInfo":{"hosts":[{"ip":"10.0.0.1","port":80},"#,
    );
    head.truncate(4096);
    gw.engine.on_push_oversized(
        stream,
        5 << 20,
        &head,
        1_000,
        &mut gw.outbox,
        &mut gw.metrics,
        &mut gw.store,
    );
    assert_eq!(gw.metric("push_failures"), 1);
    let (to, ack) = gw.outbox.on_streams.last().unwrap();
    let ack = wire::decode(ack).unwrap();
    assert_eq!(
        (*to, ack.message_type.as_str()),
        (stream, "NotifySubscriberResponse"),
        "unanswered, Java pushes it again every few seconds"
    );
    assert!(String::from_utf8_lossy(&ack.body).contains(r#""requestId":"31""#));
    gw.tick(1_050);
    assert_eq!(gw.answer_polls(1_050), 1, "the service is polled at once");
}

fn server_check_on(connection_id: &str) -> Vec<u8> {
    payload(
        "ServerCheckResponse",
        &format!(
            r#"{{"resultCode":200,"errorCode":0,"connectionId":"{connection_id}","success":true}}"#
        ),
    )
}

/// The probe fails and the link reconnects, on the connection Envoy kept:
/// `ServerCheck` answers the id of the connection the first stream was on.
fn relinked_on_the_same_connection(gw: &mut Harness) -> u32 {
    let first = gw.subscribed();
    gw.tick(5_100);
    let probe = gw.take_grpc()[0].0;
    gw.grpc_answer(probe, None, 5_600);
    assert_eq!(gw.outbox.closed, vec![first]);
    for now in (5_650..7_000).step_by(50) {
        gw.tick(now);
        gw.answer_polls(now);
        for (token, kind) in gw.take_grpc() {
            match kind.as_str() {
                "ServerCheckRequest" => gw.grpc_answer(token, Some(&server_check_answer()), now),
                _ => gw.grpc_answer(token, Some(&subscribe_answer(ONE_HOST)), now),
            }
        }
    }
    let second = *gw.outbox.opened.last().unwrap();
    assert_ne!(first, second);
    second
}

#[test]
fn a_stream_on_a_connection_whose_first_stream_was_cancelled_is_not_trusted_until_pushed_to() {
    let mut gw = Harness::pushing();
    let second = relinked_on_the_same_connection(&mut gw);
    assert!(
        gw.run(7_000..12_000) >= 4,
        "Java keeps pushing to the cancelled stream: the services stay polled"
    );
    // r-nacos replaces the stream: a push on it proves it.
    gw.push(second, &notify("3", ONE_HOST), 12_000);
    assert_eq!(
        gw.run(12_050..29_000),
        0,
        "confirmed: push stands for polls"
    );
}

#[test]
fn a_replaced_configurations_cancelled_connections_are_not_trusted_by_the_next() {
    let mut old = Harness::pushing();
    old.subscribed();
    old.engine.shut_down(&mut old.outbox, &mut old.metrics);
    let cancelled = old.engine.cancelled_connections();
    assert_eq!(cancelled, ["1_127.0.0.1:4000"]);
    let mut new = Harness::pushing();
    new.engine.distrust_connections(&cancelled);
    new.subscribed();
    assert!(new.run(400..5_000) >= 4, "polled: the link is unconfirmed");
}

#[test]
fn two_configurations_on_one_connection_trust_neither_link_until_pushed_to() {
    // A configuration edit: the old root context lives until Envoy drains it,
    // and the new one's stream lands on the same connection.
    let mut old = Harness::pushing();
    let old_stream = old.subscribed();
    let held = old.engine.open_push_connections();
    assert_eq!(held, ["1_127.0.0.1:4000"]);
    let mut new = Harness::pushing();
    new.engine
        .push_connections_held_elsewhere(&held, &mut new.metrics);
    new.subscribed();
    assert!(
        new.run(400..5_000) >= 4,
        "Java pushes to the first stream: polled"
    );
    assert_eq!(new.metric("push_failures"), 1);

    // r-nacos moves to the second stream: the first link is unconfirmed too.
    assert_eq!(old.run(400..5_000), 0, "trusted while alone");
    old.engine
        .push_connections_held_elsewhere(&new.engine.open_push_connections(), &mut old.metrics);
    assert!(
        old.run(5_000..10_000) >= 4,
        "polled once a stream came after it"
    );
    assert_eq!(old.metric("push_failures"), 1);
    old.push(old_stream, &notify("3", ONE_HOST), 10_000);
    assert_eq!(old.run(10_050..20_000), 0, "confirmed by a push on it");
}

#[test]
fn a_grpc_cluster_that_spreads_calls_over_connections_turns_push_off() {
    let mut gw = Harness::pushing();
    gw.subscribed();
    gw.tick(5_100);
    for (token, kind) in gw.take_grpc() {
        let answer = match kind.as_str() {
            "ServerCheckRequest" => server_check_on("1_127.0.0.2:5000"),
            _ => health_answer(),
        };
        gw.grpc_answer(token, Some(&answer), 5_110);
    }
    assert_eq!(gw.metric("push_failures"), 1);
    assert_eq!(gw.metric("push_streams"), 0);
    let mut polls = 0;
    for now in (5_150..65_000).step_by(50) {
        gw.tick(now);
        polls += gw.answer_polls(now);
        assert!(gw.take_grpc().is_empty(), "push stays off");
    }
    assert!(polls >= 55, "polled at its interval: {polls}");
}

#[test]
fn a_spread_seen_after_the_probe_already_lost_the_link_still_turns_push_off() {
    // In real Envoy with three listed r-nacos nodes the probe reached a node that
    // does not know the connection and was refused (301) before the ServerCheck
    // sent beside it answered another node's connection id: the link was lost
    // first, and the spread went unnoticed, reconnecting again and again.
    let mut gw = Harness::pushing();
    gw.subscribed();
    gw.tick(5_100);
    let unregistered = payload(
        "ErrorResponse",
        r#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","success":false}"#,
    );
    let calls = gw.take_grpc();
    for (token, kind) in calls
        .iter()
        .filter(|(_, kind)| kind == "HealthCheckRequest")
    {
        assert_eq!(kind, "HealthCheckRequest");
        gw.grpc_answer(*token, Some(&unregistered), 5_110);
    }
    for (token, kind) in calls
        .iter()
        .filter(|(_, kind)| kind == "ServerCheckRequest")
    {
        assert_eq!(kind, "ServerCheckRequest");
        gw.grpc_answer(*token, Some(&server_check_on("1_127.0.0.2:5000")), 5_120);
    }
    assert_eq!(
        gw.metric("push_failures"),
        2,
        "the refusal after registration, and the spread"
    );
    for now in (5_150..65_000).step_by(50) {
        gw.tick(now);
        gw.answer_polls(now);
        assert!(gw.take_grpc().is_empty(), "push stays off");
    }
}

#[test]
fn connection_unregistered_after_the_server_registered_the_stream_is_said_and_counted() {
    // Three listed nodes under Envoy's round robin: a subscription reached the
    // stream's node and was taken; the probe reached another node, which does
    // not know the connection. On one host a registered connection stays
    // registered while it lives, so this is the calls spreading over servers.
    let unregistered = payload(
        "ErrorResponse",
        r#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","success":false}"#,
    );
    let mut gw = Harness::pushing();
    let stream = gw.subscribed();
    gw.tick(5_100);
    for (token, kind) in gw.take_grpc() {
        let answer = match kind.as_str() {
            "HealthCheckRequest" => unregistered.clone(),
            _ => server_check_answer(),
        };
        gw.grpc_answer(token, Some(&answer), 5_110);
    }
    assert_eq!(gw.outbox.closed, vec![stream], "the link ends");
    assert_eq!(gw.metric("push_failures"), 1, "said and counted");
    gw.tick(5_150);
    assert_eq!(gw.answer_polls(5_150), 1, "polled until a new link is up");
}

#[test]
fn a_failed_instance_is_polled_for_at_once_even_while_pushes_arrive() {
    let mut gw = Harness::pushing();
    gw.subscribed();
    assert_eq!(gw.run(400..2_000), 0, "a live link only confirms");
    let guard = crate::engine::ids::Id::from_index(0);
    gw.engine.on_instance_failure(
        guard,
        "10.0.0.1:80",
        "connection refused",
        2_000,
        &mut gw.metrics,
        &mut gw.store,
    );
    assert_eq!(
        gw.run(2_000..2_100),
        1,
        "the failure is confirmed by a poll"
    );
    assert_eq!(gw.run(2_100..10_000), 0);
}
