//! The engine: the entry points the host calls (configure, tick, answers, gRPC
//! events, requests). Each event is handed to the components that own the
//! state it changes; what one component needs of another is passed in here.
//! Every time it is given is a gateway-clock time (`engine::clock`).

use super::avoidance::Avoidance;
use super::following;
use super::guards::{Applies, Guards, RequestAction, RequestHost};
use super::host_traits::{Metrics, Outbox, SharedStore};
use super::ids::TargetId;
use super::learned::LearnedServices;
use super::metrics::{LearnMetrics, LoginMetrics, PushMetrics};
use super::polling::{self, Pending, PollParts, Polling};
use super::push_links::PushLinks;
use super::servers::Servers;
use super::sharing::{Role, Sharing};
use super::targets::Targets;
use crate::pure::config::{PluginConfig, DEFAULT_REFRESH_MS};
use crate::pure::sharing::published::ConfigKeys;

/// The components a poll reads and changes, lent together by `engine` (a macro,
/// so the loan leaves `engine.polling` free for the poll itself).
macro_rules! poll_parts {
    ($engine:expr) => {
        PollParts {
            servers: &mut $engine.servers,
            targets: &mut $engine.targets,
            links: &mut $engine.links,
            learned: $engine.learned.as_ref(),
            publishing: $engine.sharing.is_some(),
        }
    };
}
pub(super) use poll_parts;

pub struct Engine {
    pub(super) servers: Servers,
    pub(super) targets: Targets,
    pub(super) guards: Guards,
    pub(super) polling: Polling,
    pub(super) links: PushLinks,
    /// `guardNacosRoutes`, when configured.
    pub(super) learned: Option<LearnedServices>,
    /// `None`: this VM polls alone (tests, or shared data unavailable).
    pub(super) sharing: Option<Sharing>,
    /// Instances that failed routed requests, skipped for a while.
    pub(super) avoidance: Avoidance,
}

impl Engine {
    /// `seed` makes this VM's jitter and rotation start its own.
    pub fn new(config: &PluginConfig, metrics: &mut dyn Metrics, seed: u64) -> Self {
        let pushed = config.guards().any(|guard| guard.server.push.is_some());
        let push_metrics = pushed.then(|| PushMetrics::define(metrics));
        let mut engine = Self {
            servers: Servers::new(LoginMetrics::define(metrics)),
            targets: Targets::default(),
            guards: Guards::new(config.protected_headers(), seed),
            polling: Polling::new(Vec::new(), None, seed),
            links: PushLinks::new(push_metrics.unwrap_or_default()),
            learned: None,
            sharing: None,
            avoidance: Avoidance::default(),
        };
        if let Some(scope) = &config.global {
            let applies = engine.add_scope(scope, metrics);
            engine.guards.set_global(applies);
        }
        for (matcher, scope) in &config.rules {
            let applies = engine.add_scope(scope, metrics);
            engine.guards.add_rule(matcher.clone(), applies);
        }
        // Each target is polled at the shortest interval of its guards.
        let intervals = engine
            .targets
            .ids()
            .map(|target| {
                let guards = engine.targets.guards_of(target);
                let shortest = engine.guards.shortest_interval_ms(guards);
                shortest.unwrap_or(DEFAULT_REFRESH_MS)
            })
            .collect();
        let learned_interval = config.auto.as_ref().map(|a| a.template.refresh_interval_ms);
        engine.polling = Polling::new(intervals, learned_interval, seed);
        let targets: Vec<TargetId> = engine.targets.ids().collect();
        for target in targets {
            engine.set_next_answer_due(target);
        }
        engine.learned = config
            .auto
            .clone()
            .map(|auto| LearnedServices::new(auto, LearnMetrics::define(metrics)));
        engine
    }

    /// Each polled service's snapshot health, in configuration order: what the
    /// simulator checks a VM never moves back from.
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn snapshot_health(&self) -> Vec<crate::pure::registry::snapshot::Health> {
        self.targets.health().map(|(_, health)| health).collect()
    }

    /// Whether this VM polls Nacos (holds the lease, or polls alone).
    pub fn is_poller(&self) -> bool {
        self.sharing.as_ref().is_none_or(Sharing::is_leading)
    }

    pub fn tick_period_ms(&self) -> u64 {
        self.polling.tick_period_ms()
    }

    pub fn guards_anything(&self) -> bool {
        !self.targets.is_empty() || self.learned.is_some()
    }

    /// Headers a client must never set; the host removes them from every request.
    pub fn protected_headers(&self) -> &[String] {
        self.guards.protected_headers()
    }

    /// Share polling with the other VMs of this configuration through `store`, and
    /// start from what is already known of each service there (a configuration
    /// edit keeps serving the services it keeps). `vm_id` must differ between VMs.
    pub fn share(
        &mut self,
        keys: ConfigKeys,
        vm_id: u64,
        store: &mut dyn SharedStore,
        metrics: &mut dyn Metrics,
    ) {
        let keys = match &self.learned {
            Some(learned) => keys.with_learned_scope(&learned.scope()),
            None => keys,
        };
        let (ttl_ms, heartbeat_ms) = (
            self.polling.lease_ttl_ms(),
            self.polling.heartbeat_period_ms(),
        );
        self.targets.set_writer(keys.id());
        self.sharing = Some(Sharing::new(keys, vm_id, ttl_ms, heartbeat_ms));
        let targets: Vec<TargetId> = self.targets.ids().collect();
        for target in targets {
            if following::start_from_stored(&mut self.targets, target, store) {
                self.refresh_guards(target, metrics);
            }
        }
    }

    /// Periodic work at gateway time `now_ms`: take or follow the lease, then
    /// logins and polls that are due (as the poller) or what the poller
    /// published (as a follower).
    pub fn on_tick(
        &mut self,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        self.flush_request_counts(metrics);
        let role = match &mut self.sharing {
            Some(sharing) => sharing.coordinate(now_ms, store),
            None => Role::Poll { took_over: false },
        };
        self.follow_avoidance(now_ms, store);
        match role {
            Role::Follow => {
                self.links.stop(outbox, metrics);
                self.follow(store, metrics);
                self.keep_listed(now_ms, metrics, store);
                return;
            }
            // A new poller starts from what the last one published, token included.
            Role::Poll { took_over: true } => self.take_over(store, metrics),
            Role::Poll { took_over: false } => {}
        }
        self.take_announced(now_ms, metrics, store);
        let polling = &mut self.polling;
        self.servers
            .start_logins(now_ms, outbox, metrics, |token, server| {
                polling.login_sent(token, server)
            });
        self.links
            .drive(now_ms, &self.servers, &self.targets, outbox, metrics);
        self.poll_where_links_were_lost(now_ms);
        self.start_polls(now_ms, outbox, metrics, store);
        self.targets.report_staleness(now_ms);
        if let Some(sharing) = &mut self.sharing {
            self.targets.write_unpublished(store);
            sharing.write_heartbeat(now_ms, self.targets.health(), store);
        }
    }

    /// Count the requests decided since the last tick into the host's counters.
    pub(crate) fn flush_request_counts(&mut self, metrics: &mut dyn Metrics) {
        self.guards.flush_counts(metrics);
    }

    /// Whether this VM still holds the lease (or polls alone). A poller that
    /// stalled while the lease ran out learns here, before its next tick would,
    /// that it follows now.
    pub(super) fn still_leading(&self, now_ms: u64, store: &dyn SharedStore) -> bool {
        self.sharing
            .as_ref()
            .is_none_or(|sharing| sharing.still_leading(now_ms, store))
    }

    /// An answer to a call: `None` when the call produced no response at all.
    pub fn on_answer(
        &mut self,
        token: u32,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(pending) = self.polling.take_pending(token) else {
            return;
        };
        // Read once: neither answer moves the lease.
        let leading = self.still_leading(now_ms, store);
        let mut answered = None;
        match pending {
            // A VM that lost the lease while its call was out takes nothing from
            // the answer: unpublished, it would make this VM's snapshot differ
            // from the gateway's, and newer than the poller's if the poller's
            // content has not changed since, so this VM would keep it.
            Pending::List(polled) => {
                answered = Some(polled.target());
                if leading {
                    let parts = poll_parts!(self);
                    let changed =
                        polling::take_answer(&polled, answer, now_ms, parts, metrics, store);
                    if let Some(target) = changed {
                        self.refresh_guards(target, metrics);
                    }
                    if self.targets.awaits_confirmation(polled.target()) {
                        self.polling.poll_now(polled.target(), now_ms);
                    }
                }
            }
            Pending::Login(server) => self.on_login(server, answer, now_ms, metrics, store),
        }
        // Freed capacity (or a new token) lets waiting polls go now, not next tick;
        // but only while this VM still holds the lease. The answered call counts
        // until then: Envoy's gauge of active requests still holds it while this
        // callback runs (it read 33 when the freed place was reused here).
        if leading {
            self.start_polls(now_ms, outbox, metrics, store);
        }
        if let Some(target) = answered {
            self.polling.finished(target);
        }
    }

    /// Decide one request at `now_ms` and count it: everything the host must do,
    /// in one value.
    pub fn on_request(
        &mut self,
        now_ms: u64,
        request: &mut dyn RequestHost,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) -> RequestAction<'_> {
        let id = match self.guards.select(request) {
            Some(Applies::Guard(id)) => id,
            Some(Applies::Disabled) => return RequestAction::Ignore,
            None => match self.learned_guard(now_ms, request, metrics, store) {
                Some(id) => id,
                None => return RequestAction::Ignore,
            },
        };
        let Some(target) = self.guards.target_of(id).and_then(|t| self.targets.get(t)) else {
            return RequestAction::Ignore;
        };
        self.guards.decide(id, target, now_ms, request)
    }

    /// The answer to a unary gRPC call; `None` when the call failed.
    pub fn on_grpc_answer(
        &mut self,
        token: u32,
        answer: Option<&[u8]>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let owner = self.links.owner_of_call(token);
        let Some(server) = self.still_linked(owner, now_ms, outbox, metrics, store) else {
            return;
        };
        let heard = self
            .links
            .on_call_answer(server, token, answer, now_ms, outbox, metrics);
        self.hear(server, heard, now_ms, metrics, store);
    }

    /// A message the server sent on a push stream.
    pub fn on_push_message(
        &mut self,
        stream: u32,
        message: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let owner = self.links.owner_of_stream(stream);
        let Some(server) = self.still_linked(owner, now_ms, outbox, metrics, store) else {
            return;
        };
        let heard = self
            .links
            .on_stream_message(server, message, now_ms, outbox, metrics);
        self.hear(server, heard, now_ms, metrics, store);
    }

    /// A message on a push stream too large to read (`size` bytes), of which
    /// `head` is the start.
    #[allow(clippy::too_many_arguments)]
    pub fn on_push_oversized(
        &mut self,
        stream: u32,
        size: usize,
        head: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let owner = self.links.owner_of_stream(stream);
        if let Some(server) = self.still_linked(owner, now_ms, outbox, metrics, store) {
            self.links
                .on_oversized(server, size, head, now_ms, outbox, metrics);
        }
    }

    /// The root context goes away (a configuration edit replaced it): close
    /// its push links, so that two links of one gateway do not coexist until
    /// the server notices (Java keeps the first stream of a connection).
    pub fn shut_down(&mut self, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        self.links.stop(outbox, metrics);
    }

    /// Connections this engine's push streams were cancelled on, for the
    /// engine that replaces it in this VM (`distrust_connections`).
    pub fn cancelled_connections(&self) -> Vec<String> {
        self.links.cancelled_connections()
    }

    /// Connections a replaced engine of this VM cancelled streams on: Envoy may
    /// put this engine's stream on one of them, where Java Nacos keeps the
    /// dead first stream.
    pub fn distrust_connections(&mut self, ids: &[String]) {
        self.links.distrust(ids);
    }

    /// Connections this engine's push streams are open on, for the other engines
    /// of this VM (`push_connections_held_elsewhere`).
    pub fn open_push_connections(&self) -> Vec<String> {
        self.links.open_connections()
    }

    /// Connections the other engines of this VM hold push streams open on (a
    /// configuration serving beside this one, or draining after an edit):
    /// Envoy puts this engine's stream on the same connection, where a server
    /// pushes to only one of the two.
    pub fn push_connections_held_elsewhere(&mut self, ids: &[String], metrics: &mut dyn Metrics) {
        self.links.held_elsewhere(ids, metrics);
    }

    /// A push stream ended; its services are polled until it is back.
    pub fn on_push_closed(&mut self, stream: u32, now_ms: u64, metrics: &mut dyn Metrics) {
        self.links.on_stream_closed(stream, now_ms, metrics);
        self.poll_where_links_were_lost(now_ms);
    }
}
