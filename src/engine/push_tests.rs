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

    /// Tick every 50 ms over `times`, answering polls and probes; the polls.
    fn run(&mut self, times: std::ops::Range<u64>) -> usize {
        let mut polls = 0;
        for now in times.step_by(50) {
            self.tick(now);
            polls += self.answer_polls(now);
            for (token, kind) in self.take_grpc() {
                assert_eq!(kind, "ServerCheckRequest", "only probes once subscribed");
                self.grpc_answer(token, Some(&server_check_answer()), now);
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
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].1, "ServerCheckRequest");
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
