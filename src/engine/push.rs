//! Push: the poller's gRPC link to one Nacos server. It connects (a unary
//! `ServerCheck`, then the bidirectional stream with `ConnectionSetup`),
//! subscribes every service of the server, hands each list the server sends to
//! the engine, and answers the server on the stream. While a service's list
//! arrives by push, its poll at the normal interval becomes a confirmation from
//! the live link, and a real poll goes out only every safety interval; whenever
//! the link is down, polling takes over at once.
//!
//! Liveness: Envoy multiplexes the unary calls and the stream of one VM on one
//! HTTP/2 connection, so a `ServerCheck` answered on time proves the stream's
//! connection is up. A link whose probe fails is closed and reconnected.

use log::{info, warn};

use super::host_traits::{Metrics, Outbox};
use super::ids::{slot_at, Id, TargetId};
use super::metrics::{bump, PushMetrics};
use crate::pure::config::PushSettings;
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::polling::nacos::response::AnswerError;
use crate::pure::push::grpc;
use crate::pure::push::messages::{self, ServerMessage, ServiceInfo};
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

/// A list the server gave for a service, for the engine to apply.
pub(super) struct Heard {
    pub target: TargetId,
    pub list: Result<InstanceSet, AnswerError>,
    /// When the state it describes was read: when the subscription was sent, or
    /// when the push arrived.
    pub stamp_ms: u64,
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
    },
}

enum Call {
    Check,
    Probe,
    Subscribe { target: TargetId, sent_at_ms: u64 },
}

enum Subscription {
    /// Never subscribed: see `subscribe`.
    Polled,
    Sent,
    Live {
        safety_poll_due_ms: u64,
    },
    RetryAt(u64),
}

struct Subscribed {
    /// What a pushed `serviceInfo` names: group, name and the clusters asked for.
    group: String,
    name: String,
    clusters: String,
    state: Subscription,
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
            metrics,
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

    fn is_alive(&self, now_ms: u64) -> bool {
        match self.state {
            State::Open { alive_at_ms, .. } => {
                now_ms <= alive_at_ms + PROBE_INTERVAL_MS + self.timeout_ms
            }
            _ => false,
        }
    }

    /// What the due poll of `target` should be; a safety poll is due every
    /// safety interval even while pushes arrive.
    pub fn due_poll(&mut self, target: TargetId, now_ms: u64) -> DuePoll {
        let alive = self.is_alive(now_ms);
        let safety = self.settings.safety_interval_ms;
        match self.subscriptions.get_mut(target).map(|s| &mut s.state) {
            Some(Subscription::Live { safety_poll_due_ms }) if alive => {
                if now_ms < *safety_poll_due_ms {
                    return DuePoll::Confirm;
                }
                *safety_poll_due_ms = now_ms + safety;
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
        if let Some(Subscribed {
            state: Subscription::Live { safety_poll_due_ms },
            ..
        }) = self.subscriptions.get_mut(target)
        {
            *safety_poll_due_ms = now_ms;
        }
    }

    /// Periodic work as the poller: connect, probe, subscribe. `wanted` is read
    /// only when something is left to subscribe.
    pub fn drive<'a>(
        &mut self,
        now_ms: u64,
        target_count: usize,
        wanted: impl FnOnce() -> Vec<Wanted<'a>>,
        access_token: Option<&str>,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        match self.state {
            State::Down if now_ms >= self.retry_at_ms => {
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
                if settled && self.needs_subscribing(now_ms, target_count) {
                    self.subscribe(now_ms, wanted(), access_token, outbox);
                }
            }
            State::Down | State::Checking => {}
        }
    }

    fn needs_subscribing(&self, now_ms: u64, target_count: usize) -> bool {
        self.subscriptions.len() < target_count
            || self
                .subscriptions
                .values()
                .any(|s| matches!(s.state, Subscription::RetryAt(at) if now_ms >= at))
    }

    fn probe(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        let sent = outbox.grpc_call(&self.service, &messages::server_check(), self.timeout_ms);
        match sent {
            Ok(token) => {
                self.calls.push((token, Call::Probe));
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
            let due = match self.subscriptions.get(want.target).map(|s| &s.state) {
                None => true,
                Some(Subscription::RetryAt(at)) => now_ms >= *at,
                Some(_) => false,
            };
            if !due {
                continue;
            }
            // A push is matched to its service by the `serviceInfo`'s group, name and
            // clusters, which name no namespace: a service asked for in two
            // namespaces of one server could not be told apart, so it is polled.
            let ambiguous = wanted.iter().any(|other| {
                other.target != want.target
                    && other.service.group == want.service.group
                    && other.service.name == want.service.name
                    && other.clusters == want.clusters
            });
            let sent = if ambiguous {
                Err(String::new())
            } else {
                self.requests += 1;
                let request_id = self.requests.to_string();
                let message =
                    messages::subscribe(want.service, want.clusters, access_token, &request_id);
                outbox.grpc_call(&self.service, &message, self.timeout_ms)
            };
            let state = match sent {
                Ok(token) => {
                    self.calls.push((
                        token,
                        Call::Subscribe {
                            target: want.target,
                            sent_at_ms: now_ms,
                        },
                    ));
                    Subscription::Sent
                }
                Err(_) if ambiguous => Subscription::Polled,
                Err(_) => Subscription::RetryAt(now_ms + self.backoff_ms),
            };
            self.subscriptions.insert(
                want.target,
                Subscribed {
                    group: want.service.group.clone(),
                    name: want.service.name.clone(),
                    clusters: want.clusters.join(","),
                    state,
                },
            );
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
                let alive = answer.is_some_and(|body| messages::read_server_check(body).is_ok());
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
            Call::Subscribe { target, sent_at_ms } => {
                let subscribed = self.subscriptions.get_mut(target)?;
                let info = answer
                    .ok_or_else(|| "no answer".to_string())
                    .and_then(|body| {
                        messages::read_subscribe_answer(body).map_err(|error| error.to_string())
                    });
                match info {
                    Ok(info) => {
                        subscribed.state = Subscription::Live {
                            safety_poll_due_ms: now_ms + self.settings.safety_interval_ms,
                        };
                        // The server took a subscription: the link works, so the
                        // next loss starts its backoff afresh.
                        self.backoff_ms = FIRST_BACKOFF_MS;
                        Some(Heard {
                            target,
                            list: info.list,
                            stamp_ms: sent_at_ms,
                        })
                    }
                    Err(reason) => {
                        subscribed.state = Subscription::RetryAt(now_ms + self.backoff_ms);
                        bump(metrics, self.metrics.failures);
                        warn!(
                            "nacos-instance-guard: subscribing service {} over {} failed: \
                             {reason}; polling it meanwhile",
                            subscribed.name, self.settings.grpc_cluster
                        );
                        None
                    }
                }
            }
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
        self.down(now_ms);
    }

    fn down(&mut self, now_ms: u64) {
        self.state = State::Down;
        self.subscriptions.clear();
        self.calls.clear();
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
                // Acknowledged whether or not it parsed: a resend would not parse
                // either; the service is polled instead (`poll_soon`).
                let _ = outbox.grpc_send(stream, &messages::notify_ack(&request_id));
                let target = self.subscribed_target(&service)?;
                bump(metrics, self.metrics.pushes);
                Some(Heard {
                    target,
                    list: service.list,
                    stamp_ms: now_ms,
                })
            }
            Ok(ServerMessage::Detection { request_id }) => {
                let _ = outbox.grpc_send(stream, &messages::detection_ack(&request_id));
                None
            }
            Ok(ServerMessage::Reset) => {
                self.lost(now_ms, "the server asked to reconnect", outbox, metrics);
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
                for subscribed in self.subscriptions.values_mut() {
                    if let Subscription::Live { safety_poll_due_ms } = &mut subscribed.state {
                        *safety_poll_due_ms = now_ms;
                    }
                }
                None
            }
        }
    }

    fn subscribed_target(&self, service: &ServiceInfo) -> Option<TargetId> {
        self.subscriptions.iter().find_map(|(target, s)| {
            (s.group == service.group && s.name == service.name && s.clusters == service.clusters)
                .then_some(target)
        })
    }

    /// The stream ended (the server restarted, the connection dropped).
    pub fn on_stream_closed(&mut self, now_ms: u64, metrics: &mut dyn Metrics) {
        // Already closed by the host: nothing to close.
        self.closed(now_ms, "the stream closed", metrics);
    }

    /// This VM no longer polls: another one holds the link now.
    pub fn stop(&mut self, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        if let State::Open { stream, .. } = self.state {
            outbox.grpc_close(stream);
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

/// The link's subscriptions by service: `TargetId`s are small and dense.
#[derive(Default)]
struct Subscriptions {
    by_target: Vec<Option<Subscribed>>,
    count: usize,
}

impl Subscriptions {
    fn get(&self, target: TargetId) -> Option<&Subscribed> {
        self.by_target.get(target.index())?.as_ref()
    }

    fn get_mut(&mut self, target: TargetId) -> Option<&mut Subscribed> {
        self.by_target.get_mut(target.index())?.as_mut()
    }

    fn insert(&mut self, target: TargetId, subscribed: Subscribed) {
        if let Some(slot) = slot_at(&mut self.by_target, target.index()) {
            if slot.replace(subscribed).is_none() {
                self.count += 1;
            }
        }
    }

    fn len(&self) -> usize {
        self.count
    }

    fn clear(&mut self) {
        self.by_target.clear();
        self.count = 0;
    }

    fn iter(&self) -> impl Iterator<Item = (TargetId, &Subscribed)> {
        self.by_target
            .iter()
            .enumerate()
            .filter_map(|(index, s)| Some((TargetId::from_index(index), s.as_ref()?)))
    }

    fn values(&self) -> impl Iterator<Item = &Subscribed> {
        self.by_target.iter().flatten()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Subscribed> {
        self.by_target.iter_mut().flatten()
    }
}
