//! Push: the poller's gRPC link to one Nacos server. It connects (a unary
//! `ServerCheck`, then the bidirectional stream with `ConnectionSetup`),
//! subscribes every service of the server, hands each list the server sends to
//! the engine, and answers the server on the stream. While a service's list
//! arrives by push, its poll at the normal interval becomes a confirmation from
//! the live link, and a real poll goes out only every safety interval; whenever
//! the link is down, polling takes over at once.
//!
//! Liveness: Envoy multiplexes the unary calls and the stream of one VM on one
//! HTTP/2 connection, so a `HealthCheck` answered on time proves the stream's
//! connection is up and registered (a `ServerCheck` is answered on any
//! connection). A link whose probe fails is closed and reconnected.

use log::{info, warn};

use super::host_traits::{Metrics, Outbox};
use super::ids::TargetId;
use super::metrics::{bump, PushMetrics};
use super::push_subscriptions::{safety_phase_ms, Member, State as Subscription, Subscriptions};
use super::push_trust::ConnectionTrust;
use crate::pure::config::PushSettings;
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::polling::nacos::response::AnswerError;
use crate::pure::push::grpc;
use crate::pure::push::messages::{self, ServerMessage, ServiceInfo};
use crate::pure::push::oversized;
use crate::pure::registry::instance::InstanceSet;

/// How often a live link is probed.
const PROBE_INTERVAL_MS: u64 = 5_000;
/// Reconnection backoff: doubling from the first to the last.
const FIRST_BACKOFF_MS: u64 = 1_000;
const LAST_BACKOFF_MS: u64 = 30_000;
/// Subscriptions wait this long after `ConnectionSetup` was sent, because the
/// server registers the stream's connection asynchronously and refuses a
/// subscription from a connection it has not registered yet.
const SETUP_GRACE_MS: u64 = 200;

/// How a service's due poll goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DuePoll {
    /// Ask Nacos over HTTP.
    Poll,
    /// The live link stands for the answer: changes would have been pushed.
    Confirm,
}

/// A list the server gave for a service, for the engine to apply to each of
/// its targets (every guard filters the list by its own clusters).
pub(super) struct Heard {
    pub targets: Vec<TargetId>,
    pub list: Result<InstanceSet, AnswerError>,
    /// When the state it describes was read: when the subscription was sent, or
    /// when the push arrived.
    pub stamp_ms: u64,
}

/// The access token subscriptions carry.
#[derive(Clone, Copy)]
pub(super) enum Token<'a> {
    NotNeeded,
    Valid(&'a str),
    /// The server needs one and none is valid now: subscribing would only be
    /// refused (403), so subscriptions wait.
    Awaited,
}

/// A service the link should subscribe, with what the server knows it by.
pub(super) struct Wanted<'a> {
    pub target: TargetId,
    pub service: &'a ServiceKey,
    pub clusters: &'a [String],
}

enum State {
    Down,
    Checking,
    Open {
        stream: u32,
        opened_at_ms: u64,
        /// When a probe was last answered (or the link opened).
        alive_at_ms: u64,
        probe_due_ms: u64,
        probing: bool,
        /// Pushes can be trusted to reach this stream (`push_trust`).
        confirmed: bool,
    },
}

enum Call {
    Check,
    Probe,
    /// A `ServerCheck` beside the probe: is the link still on the connection
    /// it was opened on when the probe went? (The probe's own answer may come
    /// first and end the link: a node that does not know the connection
    /// refuses it.)
    Identity {
        opened_on: Option<String>,
    },
    /// Subscription `index` (in `Subscriptions`).
    Subscribe {
        index: usize,
        sent_at_ms: u64,
    },
}

pub(super) struct Link {
    settings: PushSettings,
    /// The gRPC service as Envoy takes it (`grpc::envoy_grpc_service`).
    service: Vec<u8>,
    timeout_ms: u64,
    state: State,
    /// Unary calls in flight, by token: a handful, or one per service while
    /// subscribing, each found once.
    calls: Vec<(u32, Call)>,
    subscriptions: Subscriptions,
    retry_at_ms: u64,
    backoff_ms: u64,
    /// A link was open before: the next connection is a reconnection.
    was_open: bool,
    /// An open link was lost since the engine last asked (`take_lost`).
    lost: bool,
    requests: u64,
    trust: ConnectionTrust,
    /// An unconfirmed link was reported since the last confirmed one.
    said_unconfirmed: bool,
    /// A call of the open link was taken: the server registered its stream.
    registered: bool,
    /// `Connection is unregistered` after that was reported.
    said_unregistered: bool,
    /// A stream this side ended after answering `ConnectResetRequest`, left for
    /// the server to close; cancelled when the link connects again.
    finishing: Option<u32>,
    metrics: PushMetrics,
}

impl Link {
    pub fn new(settings: PushSettings, timeout_ms: u64, metrics: PushMetrics) -> Self {
        Self {
            service: grpc::envoy_grpc_service(&settings.grpc_cluster, &settings.grpc_authority),
            settings,
            timeout_ms,
            state: State::Down,
            calls: Vec::new(),
            subscriptions: Subscriptions::default(),
            retry_at_ms: 0,
            backoff_ms: FIRST_BACKOFF_MS,
            was_open: false,
            lost: false,
            requests: 0,
            trust: ConnectionTrust::default(),
            said_unconfirmed: false,
            registered: false,
            said_unregistered: false,
            finishing: None,
            metrics,
        }
    }

    /// Connections a stream of this link was cancelled on: a later link of this
    /// VM on one of them (Envoy reuses it) is not trusted.
    pub fn cancelled_connections(&self) -> &[String] {
        self.trust.cancelled()
    }

    /// Connections cancelled by another engine of this VM (a configuration
    /// this one replaced).
    pub fn distrust(&mut self, ids: &[String]) {
        self.trust.remember(ids.iter().cloned());
    }

    /// The connection this link's open stream is on.
    pub fn open_connection(&self) -> Option<&str> {
        match self.state {
            State::Open { .. } => self.trust.current(),
            _ => None,
        }
    }

    /// Other engines of this VM hold streams on `ids`. If one came onto this
    /// link's connection after it, the server may push there now (r-nacos
    /// does): the link is unconfirmed until a push arrives on it.
    pub fn held_elsewhere(&mut self, ids: &[String], metrics: &mut dyn Metrics) {
        if !self.trust.held_elsewhere(ids) {
            return;
        }
        let State::Open { confirmed, .. } = &mut self.state else {
            return;
        };
        if *confirmed {
            *confirmed = false;
            bump(metrics, self.metrics.failures);
            self.said_unconfirmed = true;
            warn!(
                "nacos-instance-guard: another configuration of this gateway opened a push \
                 stream on the connection of {}'s; servers that replace a connection's stream \
                 (r-nacos) push there now, so this one's services are polled until a push \
                 arrives on it",
                self.settings.grpc_cluster
            );
        }
    }

    /// Whether an open link was lost since the last call: its services may have
    /// changed unheard since, so the engine polls them at once.
    pub fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }

    pub fn owns_call(&self, token: u32) -> bool {
        self.calls.iter().any(|(t, _)| *t == token)
    }

    pub fn owns_stream(&self, token: u32) -> bool {
        matches!(self.state, State::Open { stream, .. } if stream == token)
    }

    /// Whether the link stands for polls now: probed in time and confirmed.
    fn is_alive(&self, now_ms: u64) -> bool {
        match self.state {
            State::Open {
                alive_at_ms,
                confirmed,
                ..
            } => confirmed && now_ms <= alive_at_ms + PROBE_INTERVAL_MS + self.timeout_ms,
            _ => false,
        }
    }

    /// What the due poll of `target` should be; a safety poll is due every
    /// safety interval even while pushes arrive.
    pub fn due_poll(&mut self, target: TargetId, now_ms: u64) -> DuePoll {
        let alive = self.is_alive(now_ms);
        let safety = self.settings.safety_interval_ms;
        match self.subscriptions.member_mut(target) {
            Some((Subscription::Live, member)) if alive => {
                if now_ms < member.safety_poll_due_ms {
                    return DuePoll::Confirm;
                }
                member.safety_poll_due_ms = now_ms + safety;
                DuePoll::Poll
            }
            _ => DuePoll::Poll,
        }
    }

    /// A list the server gave did not parse: keep the last good snapshot, poll
    /// the service at once; the link stays.
    pub fn poll_soon(
        &mut self,
        target: TargetId,
        service: &str,
        reason: &str,
        now_ms: u64,
        metrics: &mut dyn Metrics,
    ) {
        bump(metrics, self.metrics.failures);
        warn!(
            "nacos-instance-guard: the list pushed for service {service} was refused: {reason}; \
             keeping the last good snapshot and polling"
        );
        if let Some((_, member)) = self.subscriptions.member_mut(target) {
            member.safety_poll_due_ms = now_ms;
        }
    }

    /// Periodic work as the poller: connect, probe, subscribe. `wanted` is read
    /// only when something is left to subscribe.
    pub fn drive<'a>(
        &mut self,
        now_ms: u64,
        target_count: usize,
        wanted: impl FnOnce() -> Vec<Wanted<'a>>,
        token: Token<'_>,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        match self.state {
            // Push is off for a cluster that spreads calls over connections.
            State::Down if self.trust.is_spread() => {}
            State::Down if now_ms >= self.retry_at_ms => {
                if let Some(stream) = self.finishing.take() {
                    outbox.grpc_close(stream);
                }
                match outbox.grpc_call(&self.service, &messages::server_check(), self.timeout_ms) {
                    Ok(token) => {
                        self.calls.push((token, Call::Check));
                        self.state = State::Checking;
                    }
                    Err(reason) => self.failed_to_connect(now_ms, &reason, metrics),
                }
            }
            State::Open {
                opened_at_ms,
                probe_due_ms,
                probing,
                ..
            } => {
                if !probing && now_ms >= probe_due_ms {
                    self.probe(now_ms, outbox, metrics);
                }
                let settled = now_ms >= opened_at_ms + SETUP_GRACE_MS;
                let access_token = match token {
                    Token::NotNeeded => None,
                    Token::Valid(token) => Some(token),
                    Token::Awaited => return,
                };
                if settled && self.needs_subscribing(now_ms, target_count) {
                    self.subscribe(now_ms, wanted(), access_token, outbox);
                }
            }
            State::Down | State::Checking => {}
        }
    }

    fn needs_subscribing(&self, now_ms: u64, target_count: usize) -> bool {
        self.subscriptions.targets() < target_count
            || self
                .subscriptions
                .iter()
                .any(|(_, s)| matches!(s.state, Subscription::RetryAt(at) if now_ms >= at))
    }

    fn probe(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        let sent = outbox.grpc_call(&self.service, &messages::health_check(), self.timeout_ms);
        match sent {
            Ok(token) => {
                self.calls.push((token, Call::Probe));
                let identity =
                    outbox.grpc_call(&self.service, &messages::server_check(), self.timeout_ms);
                if let Ok(token) = identity {
                    let opened_on = self.trust.current().map(str::to_string);
                    self.calls.push((token, Call::Identity { opened_on }));
                }
                if let State::Open {
                    probing,
                    probe_due_ms,
                    ..
                } = &mut self.state
                {
                    *probing = true;
                    *probe_due_ms = now_ms + PROBE_INTERVAL_MS;
                }
            }
            Err(reason) => self.lost(now_ms, &reason, outbox, metrics),
        }
    }

    fn subscribe(
        &mut self,
        now_ms: u64,
        wanted: Vec<Wanted<'_>>,
        access_token: Option<&str>,
        outbox: &mut dyn Outbox,
    ) {
        for want in &wanted {
            if self.subscriptions.of(want.target).is_some() {
                continue;
            }
            let index = match self.subscriptions.find(want.service) {
                Some(index) => index,
                None => {
                    // A push names its service by group and name only: a service
                    // asked for in two namespaces of one server could not be told
                    // apart, so it is polled.
                    let ambiguous = wanted.iter().any(|other| {
                        other.service.group == want.service.group
                            && other.service.name == want.service.name
                            && other.service.namespace_id != want.service.namespace_id
                    });
                    let state = if ambiguous {
                        Subscription::Polled
                    } else {
                        Subscription::RetryAt(now_ms)
                    };
                    self.subscriptions
                        .add(want.service.clone(), state, FIRST_BACKOFF_MS)
                }
            };
            // A target that joins a live subscription missed its list: its
            // safety poll is due at once, and pushes reach it from now on.
            self.subscriptions.join(
                index,
                Member {
                    target: want.target,
                    clusters: want.clusters.to_vec(),
                    safety_poll_due_ms: now_ms,
                },
            );
        }
        let due: Vec<usize> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| matches!(s.state, Subscription::RetryAt(at) if now_ms >= at))
            .map(|(index, _)| index)
            .collect();
        for index in due {
            self.send_subscription(index, now_ms, access_token, outbox);
        }
    }

    /// Subscribe the service of subscription `index`, with no cluster filter.
    fn send_subscription(
        &mut self,
        index: usize,
        now_ms: u64,
        access_token: Option<&str>,
        outbox: &mut dyn Outbox,
    ) {
        self.requests += 1;
        let request_id = self.requests.to_string();
        let Some(subscribed) = self.subscriptions.get_mut(index) else {
            return;
        };
        let message = messages::subscribe(&subscribed.service, &[], access_token, &request_id);
        match outbox.grpc_call(&self.service, &message, self.timeout_ms) {
            Ok(token) => {
                subscribed.state = Subscription::Sent;
                self.calls.push((
                    token,
                    Call::Subscribe {
                        index,
                        sent_at_ms: now_ms,
                    },
                ));
            }
            Err(_) => {
                subscribed.state = Subscription::RetryAt(now_ms + subscribed.retry_backoff_ms)
            }
        }
    }

    /// The answer to a unary call; `None` when it failed (gRPC status not OK).
    pub fn on_call_answer(
        &mut self,
        token: u32,
        answer: Option<&[u8]>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) -> Option<Heard> {
        let index = self.calls.iter().position(|(t, _)| *t == token)?;
        let (_, call) = self.calls.swap_remove(index);
        match call {
            Call::Check => {
                let checked = answer
                    .ok_or_else(|| "no answer".to_string())
                    .and_then(|body| {
                        messages::read_server_check(body).map_err(|error| error.to_string())
                    });
                match checked {
                    Ok(connection_id) => self.open(now_ms, &connection_id, outbox, metrics),
                    Err(reason) => self.failed_to_connect(now_ms, &reason, metrics),
                }
                None
            }
            Call::Probe => {
                let checked = answer.map(messages::read_health_check);
                let alive = matches!(checked, Some(Ok(())));
                if let Some(Err(refusal)) = &checked {
                    self.note_refusal(refusal, metrics);
                }
                self.registered |= alive;
                if let State::Open {
                    alive_at_ms,
                    probing,
                    ..
                } = &mut self.state
                {
                    *probing = false;
                    if alive {
                        *alive_at_ms = now_ms;
                    }
                }
                if !alive {
                    self.lost(now_ms, "the probe went unanswered", outbox, metrics);
                }
                None
            }
            Call::Identity { opened_on } => {
                // Unanswered, it tells nothing: the probe judges liveness.
                let id = answer.and_then(|body| messages::read_server_check(body).ok());
                if let Some(id) = id {
                    if !self.trust.same_connection(&id, opened_on.as_deref()) {
                        bump(metrics, self.metrics.failures);
                        warn!(
                            "nacos-instance-guard: the gRPC cluster {} sends this link's calls \
                             over more than one connection (connection {id} answered); the \
                             stream and the subscriptions may reach different servers, so push \
                             is off and its services are polled. Give the cluster one host \
                             (the load balancer's or the domain's address)",
                            self.settings.grpc_cluster
                        );
                        if let State::Open { .. } = self.state {
                            self.lost(now_ms, "calls reach several connections", outbox, metrics);
                        }
                    }
                }
                None
            }
            Call::Subscribe { index, sent_at_ms } => {
                let info = match answer.map(messages::read_subscribe_answer) {
                    Some(Err(refusal)) => {
                        self.note_refusal(&refusal, metrics);
                        Err(refusal.to_string())
                    }
                    Some(Ok(info)) => Ok(info),
                    None => Err("no answer".to_string()),
                };
                self.registered |= info.is_ok();
                let safety = self.settings.safety_interval_ms;
                let subscribed = self.subscriptions.get_mut(index)?;
                match info {
                    Ok(info) => {
                        subscribed.state = Subscription::Live;
                        subscribed.retry_backoff_ms = FIRST_BACKOFF_MS;
                        subscribed.refusals = 0;
                        // Spread over the interval, so that services subscribed
                        // together are not all polled in the same second.
                        for member in &mut subscribed.members {
                            member.safety_poll_due_ms =
                                now_ms + safety_phase_ms(member.target, safety);
                        }
                        // The server took a subscription: the link works, so the
                        // next loss starts its backoff afresh.
                        self.backoff_ms = FIRST_BACKOFF_MS;
                        Some(Heard {
                            targets: subscribed.members.iter().map(|m| m.target).collect(),
                            list: info.list,
                            stamp_ms: sent_at_ms,
                        })
                    }
                    Err(reason) => {
                        // Backed off per subscription, and said once per streak:
                        // a refusal that lasts (no permission) must not cost an
                        // RPC and a log line per service every second.
                        subscribed.state =
                            Subscription::RetryAt(now_ms + subscribed.retry_backoff_ms);
                        subscribed.retry_backoff_ms =
                            (subscribed.retry_backoff_ms * 2).min(LAST_BACKOFF_MS);
                        subscribed.refusals += 1;
                        bump(metrics, self.metrics.failures);
                        if subscribed.refusals == 1 {
                            warn!(
                                "nacos-instance-guard: subscribing service {} over {} failed: \
                                 {reason}; polling it meanwhile and retrying with backoff \
                                 (said once until a subscription succeeds)",
                                subscribed.service.name, self.settings.grpc_cluster
                            );
                        }
                        None
                    }
                }
            }
        }
    }

    /// A unary call refused. `Connection is unregistered` (301) after a call
    /// of the same link was taken: one server knows a connection for as long
    /// as it lives, so the calls reach several servers (a gRPC cluster of
    /// several hosts under round robin, where the `ServerCheck` ids may agree).
    fn note_refusal(&mut self, refusal: &messages::PushError, metrics: &mut dyn Metrics) {
        let unregistered = matches!(refusal, messages::PushError::Refused { code: 301, .. });
        if !(unregistered && self.registered) {
            return;
        }
        bump(metrics, self.metrics.failures);
        if !self.said_unregistered {
            self.said_unregistered = true;
            warn!(
                "nacos-instance-guard: the gRPC cluster {} sends this link's calls over more \
                 than one connection (a server that does not know it answered after another \
                 registered it); its services are polled whenever the link is down. Give the \
                 cluster one host (the load balancer's or the domain's address)",
                self.settings.grpc_cluster
            );
        }
    }

    fn open(
        &mut self,
        now_ms: u64,
        connection_id: &str,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        let stream = match outbox.grpc_open(&self.service) {
            Ok(stream) => stream,
            Err(reason) => return self.failed_to_connect(now_ms, &reason, metrics),
        };
        if let Err(reason) = outbox.grpc_send(stream, &messages::connection_setup("")) {
            outbox.grpc_close(stream);
            return self.failed_to_connect(now_ms, &reason, metrics);
        }
        if self.was_open {
            bump(metrics, self.metrics.reconnects);
        }
        self.was_open = true;
        self.registered = false;
        let distrusted = self.trust.distrusted(connection_id);
        let confirmed = self.trust.opened(connection_id);
        if let Some(why) = distrusted {
            bump(metrics, self.metrics.failures);
            if !self.said_unconfirmed {
                warn!(
                    "nacos-instance-guard: push stream on {} reuses connection {connection_id}, \
                     {why}; servers that keep a connection's first stream (Java Nacos) would \
                     push there, so its services stay polled until a push arrives on this one",
                    self.settings.grpc_cluster
                );
                self.said_unconfirmed = true;
            }
        }
        info!(
            "nacos-instance-guard: push stream open on {} (connection {connection_id})",
            self.settings.grpc_cluster
        );
        if let Some(gauge) = self.metrics.streams {
            metrics.record(gauge, 1);
        }
        self.state = State::Open {
            stream,
            opened_at_ms: now_ms,
            alive_at_ms: now_ms,
            probe_due_ms: now_ms + PROBE_INTERVAL_MS,
            probing: false,
            confirmed,
        };
    }

    fn failed_to_connect(&mut self, now_ms: u64, reason: &str, metrics: &mut dyn Metrics) {
        if self.backoff_ms == FIRST_BACKOFF_MS {
            warn!(
                "nacos-instance-guard: push over {} unavailable: {reason}; polling meanwhile, \
                 retrying with backoff",
                self.settings.grpc_cluster
            );
        }
        bump(metrics, self.metrics.failures);
        self.down(now_ms);
    }

    /// The stream's link is gone: polling takes over, and a reconnection follows.
    fn lost(
        &mut self,
        now_ms: u64,
        reason: &str,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        if let State::Open { stream, .. } = self.state {
            outbox.grpc_close(stream);
            self.trust.cancelled_current();
        }
        self.closed(now_ms, reason, metrics);
    }

    fn closed(&mut self, now_ms: u64, reason: &str, metrics: &mut dyn Metrics) {
        if let State::Open { .. } = self.state {
            self.lost = true;
            warn!(
                "nacos-instance-guard: push stream on {} lost: {reason}; polling until it is back",
                self.settings.grpc_cluster
            );
        }
        if let Some(gauge) = self.metrics.streams {
            metrics.record(gauge, 0);
        }
        self.trust.closed_current();
        self.down(now_ms);
    }

    fn down(&mut self, now_ms: u64) {
        self.state = State::Down;
        self.subscriptions.clear();
        // A ServerCheck still out may yet show that the calls spread over
        // several connections, which is why the link ended.
        self.calls
            .retain(|(_, call)| matches!(call, Call::Identity { .. }));
        self.retry_at_ms = now_ms + self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(LAST_BACKOFF_MS);
    }

    /// A message the server sent on the stream.
    pub fn on_stream_message(
        &mut self,
        message: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) -> Option<Heard> {
        let State::Open { stream, .. } = self.state else {
            return None;
        };
        match messages::read_stream_message(message) {
            Ok(ServerMessage::Notify {
                request_id,
                service,
            }) => {
                self.confirm();
                // Acknowledged whether or not it parsed: a resend would not parse
                // either; the service is polled instead (`poll_soon`).
                let _ = outbox.grpc_send(stream, &messages::notify_ack(&request_id));
                let targets = self.subscribed_targets(&service);
                if targets.is_empty() {
                    return None;
                }
                bump(metrics, self.metrics.pushes);
                Some(Heard {
                    targets,
                    list: service.list,
                    stamp_ms: now_ms,
                })
            }
            Ok(ServerMessage::Detection { request_id }) => {
                let _ = outbox.grpc_send(stream, &messages::detection_ack(&request_id));
                None
            }
            Ok(ServerMessage::Reset { request_id }) => {
                // The answer ends this side of the stream: a cancel right after it
                // would discard it in Envoy, and Java waits 3 s for it. The server
                // then closes the connection; what it leaves open is cancelled at
                // the next connection attempt.
                let answer = request_id.map(|request_id| messages::reset_ack(&request_id));
                let _ = outbox.grpc_finish(stream, answer.as_deref());
                self.finishing = Some(stream);
                self.trust.cancelled_current();
                self.closed(now_ms, "the server asked to reconnect", metrics);
                None
            }
            Ok(ServerMessage::Other(_)) => None,
            Err(error) => {
                // It may have been a change to any service: poll them all.
                bump(metrics, self.metrics.failures);
                warn!(
                    "nacos-instance-guard: unreadable message on the push stream of {}: {error}; \
                     polling its services",
                    self.settings.grpc_cluster
                );
                for subscribed in self.subscriptions.iter_mut() {
                    for member in &mut subscribed.members {
                        member.safety_poll_due_ms = now_ms;
                    }
                }
                None
            }
        }
    }

    /// The targets a pushed list is the truth for: those of the subscribed
    /// service it names (one per group and name, see `subscribe`) whose clusters
    /// it covers. Both servers push a subscriber that named no clusters with
    /// `clusters: ""`.
    /// A message of `size` bytes on the stream, too large to read, of which
    /// `head` is the start: answered if it is a push (the server would resend it
    /// for ever), counted, and its service (or, unnamed, every service) polled.
    pub fn on_oversized(
        &mut self,
        size: usize,
        head: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        let State::Open { stream, .. } = self.state else {
            return;
        };
        bump(metrics, self.metrics.failures);
        let notify = oversized::read_head(head);
        if let Some(notify) = &notify {
            let _ = outbox.grpc_send(stream, &messages::notify_ack(&notify.request_id));
        }
        let service = notify.and_then(|notify| notify.service);
        let named = service
            .as_ref()
            .map_or_else(|| "unnamed".to_string(), |(_, name)| name.clone());
        warn!(
            "nacos-instance-guard: a push of {size} bytes on {} ({named} service) exceeds the \
             limit; answered, not read; polling instead",
            self.settings.grpc_cluster
        );
        for subscribed in self.subscriptions.iter_mut() {
            let is_named = service.as_ref().is_none_or(|(group, name)| {
                subscribed.service.group == *group && subscribed.service.name == *name
            });
            if is_named {
                for member in &mut subscribed.members {
                    member.safety_poll_due_ms = now_ms;
                }
            }
        }
    }

    fn subscribed_targets(&self, service: &ServiceInfo) -> Vec<TargetId> {
        self.subscriptions
            .iter()
            .filter(|(_, s)| {
                s.state != Subscription::Polled
                    && s.service.group == service.group
                    && s.service.name == service.name
            })
            .flat_map(|(_, s)| &s.members)
            .filter(|member| Member::covers(member, &service.clusters))
            .map(|member| member.target)
            .collect()
    }

    /// A push arrived on the stream: the server pushes to this one.
    fn confirm(&mut self) {
        if let State::Open { confirmed, .. } = &mut self.state {
            if !*confirmed {
                info!(
                    "nacos-instance-guard: push stream on {} confirmed by a push",
                    self.settings.grpc_cluster
                );
                *confirmed = true;
                self.said_unconfirmed = false;
            }
        }
    }

    /// The stream ended (the server restarted, the connection dropped).
    pub fn on_stream_closed(&mut self, now_ms: u64, metrics: &mut dyn Metrics) {
        // Already closed by the host: nothing to close.
        self.closed(now_ms, "the stream closed", metrics);
    }

    /// This VM no longer polls: another one holds the link now.
    pub fn stop(&mut self, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        if let Some(stream) = self.finishing.take() {
            outbox.grpc_close(stream);
        }
        if let State::Open { stream, .. } = self.state {
            outbox.grpc_close(stream);
            self.trust.cancelled_current();
            if let Some(gauge) = self.metrics.streams {
                metrics.record(gauge, 0);
            }
        }
        self.state = State::Down;
        self.subscriptions.clear();
        self.calls.clear();
        self.retry_at_ms = 0;
        self.backoff_ms = FIRST_BACKOFF_MS;
    }
}
