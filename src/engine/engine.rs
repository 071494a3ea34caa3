//! The engine: the Nacos servers, the services polled on them (targets) with
//! their snapshots, and the guards that decide requests from them. Every time it
//! is given is a gateway-clock time (`engine::clock`).

use crate::pure::hashing::WordMap;

use log::{info, warn};

use super::host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
use super::ids::{GuardId, Id, ServerId, Table, TargetId};
use super::metrics::{
    bump, LearnMetrics, LoginMetrics, PollMetrics, PushMetrics, RequestCounts, RequestMetrics,
};
use super::push::{DuePoll, Heard, Link, Wanted};
use super::reject::{RejectResponse, Rejections};
use super::sharing::{self, Role, Sharing, LEASE_INTERVALS};
use crate::pure::config::{AutoGuard, GuardSettings, NacosServer, PluginConfig, Routing, Scope};
use crate::pure::polling::auth::{Refusal, TokenState};
use crate::pure::polling::nacos::digest::AnswerDigest;
use crate::pure::polling::nacos::request::{self, ListRequest, ServiceKey};
use crate::pure::polling::nacos::response::{self, AnswerError};
use crate::pure::polling::schedule::{Scheduler, MAX_CALLS_IN_FLIGHT};
use crate::pure::registry::instance::InstanceSet;
use crate::pure::registry::snapshot::{Freshness, Snapshot, StaleLimits};
use crate::pure::routing::decision::{self, Candidates, Decision, Policies, RequestView};
use crate::pure::routing::nacos_cluster::{self, ClusterService};
use crate::pure::routing::rules::{RequestFacts, RuleSet};
use crate::pure::routing::upstream_hosts::RoutableHosts;
use crate::pure::sharing::published::{ConfigKeys, PublishedToken, ServiceKeys};

/// What the request brings beyond its rule facts; read only when needed.
pub trait RequestHost: RequestFacts {
    /// A request header, when it is valid UTF-8.
    fn header(&mut self, name: &str) -> Option<String>;
    /// The `ip:port` of the hosts the routed cluster can send to (Higress); `None`
    /// when the host cannot tell.
    fn upstream_hosts(&mut self) -> Option<&RoutableHosts>;
}

/// Everything the host does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction<'a> {
    /// No guard applies: leave the request alone.
    Ignore,
    /// Guarded, but the registry is unknown or stale and `onStale` is `fail_open`.
    PassThrough,
    /// Send it to `endpoint` through `routing`.
    Route {
        endpoint: &'a str,
        routing: &'a Routing,
        /// The protected headers the routing does not set itself: a set replaces
        /// what the client sent, the others must be removed.
        clear: &'a [String],
    },
    Reject(&'a RejectResponse),
}

/// What a rule (or the global configuration) applies to its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    Guard(GuardId),
    Disabled,
}

struct Server {
    settings: NacosServer,
    token: TokenState,
    /// `nacos.push`: the gRPC link, held while this VM polls.
    push: Option<Link>,
}

/// One service on one server, polled on its own.
struct Target {
    server: ServerId,
    /// Its number in heartbeats and shared keys (`ServiceKeys::id`).
    id: u64,
    /// Learned from traffic (`guardNacosRoutes`), not configured.
    learned: Option<Learned>,
    service: ServiceKey,
    query_clusters: Vec<String>,
    /// Its list request but for the token, built once.
    list: ListRequest,
    keys: ServiceKeys,
    snapshot: Snapshot,
    /// The last good answer, but the time Nacos stamps on each answer: an
    /// answer it matches confirms the snapshot without being parsed.
    last_good: Option<AnswerDigest>,
    failure_streak: u32,
    /// The token generation of this service's last answer, if that was a 403.
    refused_with: Option<u64>,
    stale_reported: bool,
    /// The strictest limits of the guards that use it, for the stale warning.
    limits: StaleLimits,
    metrics: PollMetrics,
}

/// What the engine keeps of a service it learned from a cluster name.
struct Learned {
    /// Polled only while some VM routed a request to it within `idleMs`.
    active: bool,
    /// When the poller next reads when it last carried a request.
    next_idle_check_ms: u64,
    /// When this VM last said it carried a request.
    touched_ms: u64,
}

/// `guardNacosRoutes`: what every cluster name seen so far means.
struct Auto {
    settings: AutoGuard,
    /// Cluster name → its guard, or `None` for a cluster left alone.
    by_cluster: WordMap<String, Option<GuardId>>,
    learned: usize,
    full_reported: bool,
    metrics: LearnMetrics,
}

/// One guarded scope (the global configuration or a rule).
struct Guard {
    settings: GuardSettings,
    target: TargetId,
    limits: StaleLimits,
    candidates: Candidates,
    metrics: RequestMetrics,
    /// Requests decided since the last tick, counted into `metrics` on the tick.
    counts: RequestCounts,
    rejections: Rejections,
    /// `Engine::protected_headers` without the one this guard's routing sets.
    clear_on_route: Vec<String>,
}

enum Pending {
    List {
        target: TargetId,
        polled_at_ms: u64,
        token_generation: u64,
    },
    Login(ServerId),
}

pub struct Engine {
    servers: Table<ServerId, Server>,
    targets: Table<TargetId, Target>,
    guards: Table<GuardId, Guard>,
    /// Guards that counted requests since the last flush: a tick flushes only
    /// them, not every guard of a thousand.
    counted: Vec<GuardId>,
    global: Option<Applies>,
    rules: RuleSet<Applies>,
    scheduler: Scheduler,
    pending: WordMap<u32, Pending>,
    protected_headers: Vec<String>,
    login_metrics: LoginMetrics,
    /// Defined only where some server is pushed to.
    push_metrics: Option<PushMetrics>,
    /// `None`: this VM polls alone (tests, or shared data unavailable).
    sharing: Option<Sharing>,
    /// Targets by their heartbeat number.
    by_id: WordMap<u64, TargetId>,
    auto: Option<Auto>,
    seed: u64,
}

impl Engine {
    /// `seed` makes this VM's jitter and rotation start its own.
    pub fn new(config: &PluginConfig, metrics: &mut dyn Metrics, seed: u64) -> Self {
        let mut engine = Self {
            servers: Table::default(),
            targets: Table::default(),
            guards: Table::default(),
            counted: Vec::new(),
            global: None,
            rules: RuleSet::default(),
            scheduler: Scheduler::new([], seed, MAX_CALLS_IN_FLIGHT),
            pending: WordMap::default(),
            protected_headers: config.protected_headers(),
            login_metrics: LoginMetrics::define(metrics),
            push_metrics: config
                .guards()
                .any(|guard| guard.server.push.is_some())
                .then(|| PushMetrics::define(metrics)),
            sharing: None,
            by_id: WordMap::default(),
            auto: config.auto.clone().map(|settings| Auto {
                settings,
                by_cluster: WordMap::default(),
                learned: 0,
                full_reported: false,
                metrics: LearnMetrics::define(metrics),
            }),
            seed,
        };
        engine.global = config
            .global
            .as_ref()
            .map(|scope| engine.add_scope(scope, metrics, seed));
        for (matcher, scope) in &config.rules {
            let applies = engine.add_scope(scope, metrics, seed);
            engine.rules.push(matcher.clone(), applies);
        }
        let intervals: Vec<u64> = engine
            .targets
            .iter()
            .map(|(target, _)| {
                engine
                    .guards_of(target)
                    .map(|guard| guard.settings.refresh_interval_ms)
                    .min()
                    .unwrap_or(crate::pure::config::DEFAULT_REFRESH_MS)
            })
            .collect();
        engine.scheduler = Scheduler::new(intervals, seed, MAX_CALLS_IN_FLIGHT);
        engine.set_limits();
        engine
    }

    fn add_scope(&mut self, scope: &Scope, metrics: &mut dyn Metrics, seed: u64) -> Applies {
        match scope {
            Scope::Guard(settings) => Applies::Guard(self.add_guard(settings, metrics, seed)),
            Scope::Disabled => Applies::Disabled,
        }
    }

    /// A guard, with its server and target unless another guard has them.
    fn add_guard(
        &mut self,
        settings: &GuardSettings,
        metrics: &mut dyn Metrics,
        seed: u64,
    ) -> GuardId {
        let server = self
            .servers
            .find(|s| s.settings == settings.server)
            .unwrap_or_else(|| {
                let push = settings.server.push.clone().map(|push| {
                    let metrics = self.push_metrics.unwrap_or_default();
                    Link::new(push, settings.server.timeout_ms, metrics)
                });
                self.servers.push(Server {
                    settings: settings.server.clone(),
                    token: TokenState::default(),
                    push,
                })
            });
        let target = self
            .targets
            .find(|t| {
                t.server == server
                    && t.service == settings.service
                    && t.query_clusters == settings.filter.clusters
            })
            .unwrap_or_else(|| {
                let keys = ServiceKeys::new(&question(settings));
                let id = self.targets.push(Target {
                    server,
                    id: keys.id(),
                    learned: None,
                    keys,
                    service: settings.service.clone(),
                    query_clusters: settings.filter.clusters.clone(),
                    list: ListRequest::new(
                        settings.server.api,
                        &settings.service,
                        &settings.filter.clusters,
                    ),
                    snapshot: Snapshot::default(),
                    last_good: None,
                    failure_streak: 0,
                    refused_with: None,
                    stale_reported: false,
                    limits: StaleLimits {
                        next_answer_due_ms: 0,
                        max_stale_ms: settings.max_stale_ms,
                    },
                    metrics: PollMetrics::define(metrics, &settings.service.name),
                });
                if let Some(target) = self.targets.get(id) {
                    self.by_id.insert(target.id, id);
                }
                id
            });
        let view = settings.filter.view_name();
        let clear_on_route = self
            .protected_headers
            .iter()
            .filter(|name| !matches!(&settings.routing, Routing::Header(own) if own == *name))
            .cloned()
            .collect();
        self.guards.push(Guard {
            clear_on_route,
            rejections: Rejections::prepare(
                settings.reject_status,
                &settings.service.name,
                &settings.service.group,
            ),
            settings: settings.clone(),
            target,
            limits: StaleLimits {
                next_answer_due_ms: 0,
                max_stale_ms: settings.max_stale_ms,
            },
            candidates: Candidates::starting_at(seed.rotate_left(self.guards.len() as u32)),
            metrics: RequestMetrics::define(metrics, &settings.service.name, view.as_deref()),
            counts: RequestCounts::default(),
        })
    }

    /// How long a confirmation alone may wait before the heartbeat carries it.
    fn heartbeat_period_ms(&self) -> u64 {
        self.scheduler.shortest_interval_ms() / 2
    }

    /// When each target's next answer is due at the latest: its interval, the
    /// call's timeout, and for followers to hear of it, the heartbeat's period
    /// and two ticks.
    fn set_limits(&mut self) {
        let slack = 2 * self.scheduler.tick_period_ms() + self.heartbeat_period_ms();
        let mut due = Vec::new();
        for (target, t) in self.targets.iter() {
            let timeout = self
                .servers
                .get(t.server)
                .map_or(0, |s| s.settings.timeout_ms);
            due.push(self.scheduler.interval_ms(target.index()) + timeout + slack);
        }
        for (target, t) in self.targets.iter_mut() {
            let next_answer_due_ms = due.get(target.index()).copied().unwrap_or(0);
            t.limits.next_answer_due_ms = next_answer_due_ms;
            for guard in self.guards.iter_mut().map(|(_, g)| g) {
                if guard.target == target {
                    guard.limits.next_answer_due_ms = next_answer_due_ms;
                    t.limits.max_stale_ms = t.limits.max_stale_ms.min(guard.limits.max_stale_ms);
                }
            }
        }
    }

    fn guards_of(&self, target: TargetId) -> impl Iterator<Item = &Guard> {
        self.guards.values().filter(move |g| g.target == target)
    }

    /// Each polled service's snapshot health, in configuration order: what the
    /// simulator checks a VM never moves back from.
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn snapshot_health(&self) -> Vec<crate::pure::registry::snapshot::Health> {
        self.targets.values().map(|t| t.snapshot.health()).collect()
    }

    /// Whether this VM polls Nacos (holds the lease, or polls alone).
    pub fn is_poller(&self) -> bool {
        self.sharing.as_ref().is_none_or(Sharing::is_leading)
    }

    pub fn tick_period_ms(&self) -> u64 {
        self.scheduler.tick_period_ms()
    }

    pub fn guards_anything(&self) -> bool {
        !self.targets.is_empty() || self.auto.is_some()
    }

    /// Headers a client must never set; the host removes them from every request.
    pub fn protected_headers(&self) -> &[String] {
        &self.protected_headers
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
        let lease_ttl_ms = self.scheduler.shortest_interval_ms() * LEASE_INTERVALS;
        self.sharing = Some(Sharing::new(
            keys,
            vm_id,
            lease_ttl_ms,
            self.heartbeat_period_ms(),
        ));
        let ids: Vec<TargetId> = self.targets.iter().map(|(id, _)| id).collect();
        for target in ids {
            self.adopt_stored_content(target, Adopt::AtStart, store, metrics);
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
        match role {
            Role::Follow => {
                self.stop_push(outbox, metrics);
                self.follow(store, metrics);
                return;
            }
            // A new poller starts from what the last one published, token included.
            Role::Poll { took_over: true } => {
                self.follow(store, metrics);
                self.adopt_tokens(store);
            }
            Role::Poll { took_over: false } => {}
        }
        self.manage_learned(now_ms, metrics, store);
        self.start_logins(now_ms, outbox, metrics);
        self.drive_push(now_ms, outbox, metrics);
        self.start_polls(now_ms, outbox, metrics, store);
        self.report_staleness(now_ms);
        if let Some(sharing) = &mut self.sharing {
            let health = self.targets.values().map(|t| (t.id, t.snapshot.health()));
            sharing.write_heartbeat(now_ms, health, store);
        }
    }

    /// Count the requests decided since the last tick into the host's counters.
    pub(crate) fn flush_request_counts(&mut self, metrics: &mut dyn Metrics) {
        for id in self.counted.drain(..) {
            if let Some(guard) = self.guards.get_mut(id) {
                guard.metrics.flush(&mut guard.counts, metrics);
            }
        }
    }

    fn report_staleness(&mut self, now_ms: u64) {
        for target in self.targets.iter_mut().map(|(_, t)| t) {
            let stale = target.snapshot.freshness(now_ms, target.limits) == Freshness::Stale;
            if stale && !target.stale_reported {
                warn!(
                    "nacos-instance-guard: Nacos has given no good answer for service {} for more \
                     than {} ms; the onStale policy now applies",
                    target.service.name, target.limits.max_stale_ms
                );
            }
            target.stale_reported = stale;
        }
    }

    /// Adopt what the poller published: each service's health, content that
    /// moved, and tokens.
    fn follow(&mut self, store: &mut dyn SharedStore, metrics: &mut dyn Metrics) {
        let Some(heartbeat) = self
            .sharing
            .as_mut()
            .and_then(|sharing| sharing.read_heartbeat(store))
        else {
            return;
        };
        let mut moved = Vec::new();
        for (service, health) in heartbeat {
            let Some(id) = self.by_id.get(&service).copied() else {
                continue;
            };
            let Some(target) = self.targets.get_mut(id) else {
                continue;
            };
            if health.content_stamp > target.snapshot.content_stamp() {
                moved.push((id, health.content_stamp));
            }
            target.snapshot.adopt_health(health);
        }
        for (target, stamp) in moved {
            self.adopt_stored_content(target, Adopt::Moved(stamp), store, metrics);
        }
        self.adopt_tokens(store);
    }

    fn adopt_tokens(&mut self, store: &dyn SharedStore) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        for (server, s) in self.servers.iter_mut() {
            if let Some(token) = sharing.read_token(server.index(), store) {
                s.token
                    .adopt(token.token, token.refresh_at_ms, token.expires_at_ms);
            }
        }
    }

    /// Take the stored content of `target` if it is newer than ours.
    fn adopt_stored_content(
        &mut self,
        target: TargetId,
        adopt: Adopt,
        store: &dyn SharedStore,
        metrics: &mut dyn Metrics,
    ) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        let Some((stamp, set)) = sharing::read_content(&t.keys, store) else {
            return;
        };
        if matches!(adopt, Adopt::Moved(moved) if stamp < moved) {
            return;
        }
        if t.snapshot.adopt_content(set, stamp) {
            t.last_good = None;
            if adopt == Adopt::AtStart {
                if let Some(confirmed_at_ms) = sharing::read_confirmed(&t.keys, store) {
                    let mut health = t.snapshot.health();
                    health.confirmed_at_ms = confirmed_at_ms.max(stamp);
                    health.failing_since_ms = None;
                    t.snapshot.adopt_health(health);
                }
            }
            self.refresh_guards(target, metrics);
        }
    }

    fn start_logins(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        for (id, server) in self.servers.iter_mut() {
            let Some(credentials) = &server.settings.credentials else {
                continue;
            };
            if !server.token.needs_login(now_ms) {
                continue;
            }
            let login = request::login(
                server.settings.api,
                &credentials.username,
                &credentials.password,
            );
            let call = OutgoingCall {
                cluster: &server.settings.cluster,
                authority: &server.settings.authority,
                request: &login,
                timeout_ms: server.settings.timeout_ms,
            };
            server.token.login_started();
            match outbox.dispatch(call) {
                Ok(token) => {
                    self.pending.insert(token, Pending::Login(id));
                }
                Err(reason) => {
                    let failures = self.login_metrics.failure;
                    record_login_failure(server, now_ms, &reason, failures, metrics);
                }
            }
        }
    }

    fn start_polls(
        &mut self,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let servers = &self.servers;
        let targets = &self.targets;
        // A server that needs a token is not polled until it has one.
        let ready = |index: usize| {
            let Some(target) = targets.get(TargetId::from_index(index)) else {
                return false;
            };
            target.learned.as_ref().is_none_or(|learned| learned.active)
                && servers.get(target.server).is_some_and(|s| {
                    s.settings.credentials.is_none() || s.token.valid_token(now_ms).is_some()
                })
        };
        for index in self.scheduler.take_due_where(now_ms, ready) {
            let id = TargetId::from_index(index);
            let Some(target) = self.targets.get_mut(id) else {
                self.scheduler.finished(index);
                continue;
            };
            let Some(server) = self.servers.get_mut(target.server) else {
                self.scheduler.finished(index);
                continue;
            };
            let pushed = server
                .push
                .as_mut()
                .is_some_and(|link| link.due_poll(id, now_ms) == DuePoll::Confirm);
            if pushed {
                self.scheduler.finished(index);
                target.snapshot.accept_same(now_ms);
                if self.sharing.is_some() {
                    sharing::publish_confirmed(&target.keys, now_ms, store);
                }
                continue;
            }
            let list = target.list.with_token(server.token.valid_token(now_ms));
            let call = OutgoingCall {
                cluster: &server.settings.cluster,
                authority: &server.settings.authority,
                request: &list,
                timeout_ms: server.settings.timeout_ms,
            };
            match outbox.dispatch(call) {
                Ok(token) => {
                    self.pending.insert(
                        token,
                        Pending::List {
                            target: id,
                            polled_at_ms: now_ms,
                            token_generation: server.token.generation(),
                        },
                    );
                }
                Err(reason) => {
                    self.scheduler.finished(index);
                    target.snapshot.failed(now_ms);
                    record_poll_failure(target, &server.settings.cluster, &reason, metrics);
                }
            }
        }
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
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        // Read once: neither answer moves the lease. A poller that stalled while
        // the lease ran out learns here, before its next tick would, that it
        // follows now.
        let leading = self
            .sharing
            .as_ref()
            .is_none_or(|sharing| sharing.still_leading(now_ms, store));
        let answered = match pending {
            Pending::List {
                target,
                polled_at_ms,
                token_generation,
            } => {
                let polled = Polled {
                    target,
                    polled_at_ms,
                    token_generation,
                };
                self.on_list(polled, leading, answer, now_ms, metrics, store);
                Some(target)
            }
            Pending::Login(server) => {
                self.on_login(server, answer, now_ms, metrics, store);
                None
            }
        };
        // Freed capacity (or a new token) lets waiting polls go now, not next tick;
        // but only while this VM still holds the lease. The answered call counts
        // until then: Envoy's gauge of active requests still holds it while this
        // callback runs (it read 33 when the freed place was reused here).
        if leading {
            self.start_polls(now_ms, outbox, metrics, store);
        }
        if let Some(target) = answered {
            self.scheduler.finished(target.index());
        }
    }

    /// `leading`: this VM still holds the lease (or polls alone).
    fn on_list(
        &mut self,
        polled: Polled,
        leading: bool,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        // A VM that lost the lease while its call was out takes nothing from the
        // answer: unpublished, it would make this VM's snapshot differ from the
        // gateway's, and newer than the poller's if the poller's content has not
        // changed since, so this VM would keep it, confirmed by every heartbeat.
        if !leading {
            return;
        }
        let Some(target) = self.targets.get_mut(polled.target) else {
            return;
        };
        let Some(server) = self.servers.get_mut(target.server) else {
            return;
        };
        // Oversized answers are refused by the parser, whatever they look like.
        let good_size = |body: &[u8]| body.len() <= response::MAX_ANSWER_BYTES;
        let unchanged = match answer {
            Some((200, body)) if good_size(body) => target
                .last_good
                .as_ref()
                .is_some_and(|last| last.matches(body)),
            _ => false,
        };
        let parsed = match answer {
            _ if unchanged => Ok(None),
            Some((status, body)) => {
                response::parse_instance_list(server.settings.api, status, body).map(Some)
            }
            None => Err(AnswerError::NoAnswer),
        };
        let set = match parsed {
            Ok(set) => set,
            Err(error) => {
                if error == AnswerError::Status(403) && server.settings.credentials.is_some() {
                    let again = target
                        .refused_with
                        .is_some_and(|before| before < polled.token_generation);
                    target.refused_with = Some(polled.token_generation);
                    let refusal = server.token.refused(polled.token_generation, again, now_ms);
                    report_refusal(refusal, &server.settings, &target.service);
                }
                target.snapshot.failed(polled.polled_at_ms);
                record_poll_failure(
                    target,
                    &server.settings.cluster,
                    &error.to_string(),
                    metrics,
                );
                return;
            }
        };
        if !unchanged {
            target.last_good = match answer {
                Some((200, body)) if good_size(body) => Some(AnswerDigest::of(body)),
                _ => None,
            };
        }
        bump(metrics, target.metrics.success);
        self.take_list(polled.target, set, polled.polled_at_ms, metrics, store);
    }

    /// A good list for `id` telling the state as of `stamp_ms`; `None`: the
    /// same answer as the last good one (`AnswerDigest::matches`).
    fn take_list(
        &mut self,
        id: TargetId,
        set: Option<InstanceSet>,
        stamp_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let publishing = self.sharing.is_some();
        let Some(target) = self.targets.get_mut(id) else {
            return;
        };
        if target.failure_streak > 0 {
            info!(
                "nacos-instance-guard: polling service {} works again after {} failures",
                target.service.name, target.failure_streak
            );
        }
        target.failure_streak = 0;
        target.refused_with = None;
        let changed = match set {
            Some(set) => target.snapshot.accept(set, stamp_ms),
            None => target.snapshot.accept_same(stamp_ms),
        };
        if publishing {
            if changed {
                if let Some(set) = target.snapshot.instances() {
                    sharing::publish_content(
                        &target.keys,
                        target.snapshot.content_stamp(),
                        set,
                        store,
                    );
                }
            }
            sharing::publish_confirmed(&target.keys, stamp_ms, store);
        }
        if changed {
            self.refresh_guards(id, metrics);
        }
    }

    fn on_login(
        &mut self,
        id: ServerId,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(server) = self.servers.get_mut(id) else {
            return;
        };
        let parsed = match answer {
            Some((status, body)) => response::parse_login(status, body),
            None => Err(AnswerError::NoAnswer),
        };
        match parsed {
            Ok(grant) => {
                server.token.granted(grant, now_ms);
                bump(metrics, self.login_metrics.success);
                if let (Some(sharing), Some((token, refresh_at_ms, expires_at_ms))) =
                    (&self.sharing, server.token.current())
                {
                    let published = PublishedToken {
                        token: token.to_string(),
                        refresh_at_ms,
                        expires_at_ms,
                    };
                    sharing.publish_token(id.index(), &published, store);
                }
            }
            Err(error) => {
                let failures = self.login_metrics.failure;
                record_login_failure(server, now_ms, &error.to_string(), failures, metrics);
            }
        }
    }

    /// Prepare the candidates of every guard of `target` from its new content.
    fn refresh_guards(&mut self, target: TargetId, metrics: &mut dyn Metrics) {
        let Some(snapshot) = self.targets.get(target).map(|t| &t.snapshot) else {
            return;
        };
        for guard in self.guards.iter_mut().map(|(_, g)| g) {
            if guard.target != target {
                continue;
            }
            guard.candidates.refresh(snapshot, &guard.settings.filter);
            if let Some(gauge) = guard.metrics.usable_instances {
                let usable = u64::try_from(guard.candidates.endpoints().len()).unwrap_or(u64::MAX);
                metrics.record(gauge, usable);
            }
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
        let id = match self.rules.select(self.global.as_ref(), request).copied() {
            Some(Applies::Guard(id)) => id,
            Some(Applies::Disabled) => return RequestAction::Ignore,
            None => match self.learned_guard(now_ms, request, metrics, store) {
                Some(id) => id,
                None => return RequestAction::Ignore,
            },
        };
        let (Some(guard), targets) = (self.guards.get_mut(id), &self.targets) else {
            return RequestAction::Ignore;
        };
        let Some(target) = targets.get(guard.target) else {
            return RequestAction::Ignore;
        };
        let freshness = target.snapshot.freshness(now_ms, guard.limits);
        // Bytes, not strings, are read by the host: a client's non-UTF-8 pin names
        // no instance.
        let pin = request.header(&guard.settings.pin_header);
        let known_hosts = match guard.settings.routing {
            Routing::Higress => request.upstream_hosts(),
            Routing::Header(_) => None,
        };
        let view = RequestView {
            pin: pin.as_deref(),
            known: known_hosts.filter(|hosts| !hosts.is_empty()),
        };
        let policies = Policies {
            on_stale: guard.settings.on_stale,
            on_deregistered: guard.settings.on_deregistered,
        };
        let decision = decision::decide(&mut guard.candidates, freshness, policies, view);
        let counts = &mut guard.counts;
        if counts.is_empty() {
            self.counted.push(id);
        }
        match decision {
            Decision::Route { rerouted, .. } => {
                counts.routed += 1;
                counts.rerouted += u64::from(rerouted);
            }
            Decision::Reject(_) => counts.rejected += 1,
            Decision::PassThrough => counts.passed_through += 1,
        }
        match decision {
            Decision::Route { endpoint, .. } => RequestAction::Route {
                endpoint,
                routing: &guard.settings.routing,
                clear: &guard.clear_on_route,
            },
            Decision::Reject(code) => RequestAction::Reject(guard.rejections.get(code)),
            Decision::PassThrough => RequestAction::PassThrough,
        }
    }
}

impl Engine {
    /// The guard of the Nacos service a request's cluster routes to, learning
    /// the service on its first request (`guardNacosRoutes`). Once a cluster is
    /// known this is one map lookup and a time comparison.
    fn learned_guard(
        &mut self,
        now_ms: u64,
        request: &mut dyn RequestHost,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) -> Option<GuardId> {
        let auto = self.auto.as_ref()?;
        let cluster = request.cluster_name()?;
        let known = auto.by_cluster.get(cluster).copied();
        let cluster = cluster.to_string();
        let guard = match known {
            Some(guard) => guard?,
            None => self.learn(&cluster, now_ms, true, metrics, store)?,
        };
        self.touch(guard, now_ms, store);
        Some(guard)
    }

    /// Say, at most once per eighth of `idleMs` (or at once if the poller let
    /// the service idle), that the service of `guard` carries requests.
    fn touch(&mut self, guard: GuardId, now_ms: u64, store: &mut dyn SharedStore) {
        let Some(idle_ms) = self.auto.as_ref().map(|auto| auto.settings.idle_ms) else {
            return;
        };
        let Some(target) = self.guards.get(guard).map(|g| g.target) else {
            return;
        };
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        let Some(learned) = &mut t.learned else {
            return;
        };
        let idle = t.snapshot.freshness(now_ms, t.limits) != Freshness::Fresh;
        if idle && learned.touched_ms != now_ms
            || now_ms >= learned.touched_ms.saturating_add(idle_ms / 8)
        {
            learned.touched_ms = now_ms;
            if let Some(sharing) = &self.sharing {
                sharing.touch(t.id, now_ms, store);
            }
        }
    }

    /// Learn the service of `cluster`; `announce`: tell the poller through the
    /// learned list (a request found it), rather than read it from there.
    fn learn(
        &mut self,
        cluster: &str,
        now_ms: u64,
        announce: bool,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) -> Option<GuardId> {
        let auto = self.auto.as_mut()?;
        let service = match nacos_cluster::service_of(cluster, &auto.settings.names) {
            ClusterService::Service(service) => service,
            ClusterService::NotNacos => {
                auto.by_cluster.insert(cluster.to_string(), None);
                return None;
            }
            ClusterService::Ambiguous(reason) => {
                warn!("nacos-instance-guard: not guarding: {reason}");
                auto.by_cluster.insert(cluster.to_string(), None);
                return None;
            }
        };
        let max = auto.settings.max_services;
        let room = auto.learned < max
            && (!announce
                || self
                    .sharing
                    .as_ref()
                    .is_none_or(|sharing| sharing.announce_learned(cluster, max, store)));
        let auto = self.auto.as_mut()?;
        if !room {
            bump(metrics, auto.metrics.refused);
            if !auto.full_reported {
                auto.full_reported = true;
                warn!(
                    "nacos-instance-guard: {max} services learned already (guardNacosRoutes.maxServices); \
                     requests to {cluster} and other new services are left alone"
                );
            }
            auto.by_cluster.insert(cluster.to_string(), None);
            return None;
        }
        auto.learned += 1;
        if let Some(gauge) = auto.metrics.learned {
            metrics.record(gauge, u64::try_from(auto.learned).unwrap_or(u64::MAX));
        }
        let mut settings = auto.settings.template.clone();
        settings.service = service;
        let targets_before = self.targets.len();
        let guard = self.add_guard(&settings, metrics, self.seed);
        if self.targets.len() > targets_before {
            self.scheduler.add(settings.refresh_interval_ms);
        }
        self.set_limits();
        let target = self.guards.get(guard)?.target;
        if let Some(t) = self.targets.get_mut(target) {
            t.learned = Some(Learned {
                active: true,
                next_idle_check_ms: now_ms,
                touched_ms: now_ms,
            });
            if let Some(sharing) = &self.sharing {
                sharing.touch(t.id, now_ms, store);
            }
        }
        self.adopt_stored_content(target, Adopt::AtStart, store, metrics);
        info!(
            "nacos-instance-guard: guarding service {} (group {}, namespace {}) learned from {cluster}",
            settings.service.name, settings.service.group, settings.service.namespace_id
        );
        if let Some(auto) = self.auto.as_mut() {
            auto.by_cluster.insert(cluster.to_string(), Some(guard));
        }
        Some(guard)
    }

    /// As the poller: take the services other VMs learned, and pause polling a
    /// learned service no VM has routed a request to for `idleMs`.
    fn manage_learned(
        &mut self,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(idle_ms) = self.auto.as_ref().map(|auto| auto.settings.idle_ms) else {
            return;
        };
        let announced = self
            .sharing
            .as_mut()
            .and_then(|sharing| sharing.read_learned(store))
            .unwrap_or_default();
        for cluster in announced {
            let known = self
                .auto
                .as_ref()
                .is_some_and(|auto| auto.by_cluster.contains_key(&cluster));
            if !known {
                self.learn(&cluster, now_ms, false, metrics, store);
            }
        }
        let Some(sharing) = &self.sharing else {
            return;
        };
        for target in self.targets.iter_mut().map(|(_, t)| t) {
            let Some(learned) = &mut target.learned else {
                continue;
            };
            if now_ms < learned.next_idle_check_ms {
                continue;
            }
            let touched = sharing.touched_at(target.id, store).unwrap_or(0);
            let active = now_ms.saturating_sub(touched) <= idle_ms;
            if learned.active && !active {
                info!(
                    "nacos-instance-guard: no request to service {} for {idle_ms} ms; polling it paused",
                    target.service.name
                );
            }
            learned.active = active;
            // An idle service is looked at every second, so traffic brings it back soon.
            learned.next_idle_check_ms = now_ms + if active { idle_ms / 8 } else { 1_000 };
        }
    }
}

/// Push (`nacos.push`): the poller's gRPC links, and what comes over them.
impl Engine {
    /// As the poller: keep each pushed server's link connected and subscribed.
    fn drive_push(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        let targets = &self.targets;
        for (id, server) in self.servers.iter_mut() {
            let Server {
                settings,
                token,
                push: Some(link),
            } = server
            else {
                continue;
            };
            let access_token = token.valid_token(now_ms);
            // Subscriptions wait for a token where the server needs one.
            let count = if settings.credentials.is_some() && access_token.is_none() {
                0
            } else {
                targets.values().filter(|t| t.server == id).count()
            };
            let wanted = || {
                targets
                    .iter()
                    .filter(|(_, t)| t.server == id)
                    .map(|(target, t)| Wanted {
                        target,
                        service: &t.service,
                        clusters: &t.query_clusters,
                    })
                    .collect()
            };
            link.drive(now_ms, count, wanted, access_token, outbox, metrics);
        }
        self.poll_where_links_were_lost(now_ms);
    }

    /// Poll at once every service of a link that was lost: a change pushed
    /// just before the loss may never have arrived.
    fn poll_where_links_were_lost(&mut self, now_ms: u64) {
        for (id, server) in self.servers.iter_mut() {
            if !server.push.as_mut().is_some_and(Link::take_lost) {
                continue;
            }
            for (target, t) in self.targets.iter() {
                if t.server == id {
                    self.scheduler.due_now(target.index(), now_ms);
                }
            }
        }
    }

    fn stop_push(&mut self, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        for (_, server) in self.servers.iter_mut() {
            if let Some(link) = &mut server.push {
                link.stop(outbox, metrics);
            }
        }
    }

    /// The link that `owns` a gRPC token, if this VM still polls; a VM that
    /// lost the lease drops its links instead.
    fn link_of(
        &mut self,
        owns: impl Fn(&Link) -> bool,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &dyn SharedStore,
    ) -> Option<ServerId> {
        let server = self.servers.find(|s| s.push.as_ref().is_some_and(&owns))?;
        let leading = self
            .sharing
            .as_ref()
            .is_none_or(|sharing| sharing.still_leading(now_ms, store));
        if !leading {
            self.stop_push(outbox, metrics);
            return None;
        }
        Some(server)
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
        let event = |link: &mut Link, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics| {
            link.on_call_answer(token, answer, now_ms, outbox, metrics)
        };
        let owns = |link: &Link| link.owns_call(token);
        self.hand_to_link(owns, event, now_ms, outbox, metrics, store);
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
        let event = |link: &mut Link, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics| {
            link.on_stream_message(message, now_ms, outbox, metrics)
        };
        let owns = |link: &Link| link.owns_stream(stream);
        self.hand_to_link(owns, event, now_ms, outbox, metrics, store);
    }

    /// Hand a gRPC event to the link that `owns` it, and take any list it heard.
    fn hand_to_link(
        &mut self,
        owns: impl Fn(&Link) -> bool,
        event: impl FnOnce(&mut Link, &mut dyn Outbox, &mut dyn Metrics) -> Option<Heard>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let Some(server) = self.link_of(owns, now_ms, outbox, metrics, store) else {
            return;
        };
        let link = self.servers.get_mut(server).and_then(|s| s.push.as_mut());
        if let Some(heard) = link.and_then(|link| event(link, outbox, metrics)) {
            self.hear(server, heard, now_ms, metrics, store);
        }
        self.poll_where_links_were_lost(now_ms);
    }

    /// A push stream ended; its services are polled until it is back.
    pub fn on_push_closed(&mut self, stream: u32, now_ms: u64, metrics: &mut dyn Metrics) {
        for (_, server) in self.servers.iter_mut() {
            if let Some(link) = server.push.as_mut().filter(|link| link.owns_stream(stream)) {
                link.on_stream_closed(now_ms, metrics);
            }
        }
        self.poll_where_links_were_lost(now_ms);
    }

    /// Take a list the server gave: through the same path as a polled one, or,
    /// if it did not parse, keep the last good snapshot and poll at once.
    fn hear(
        &mut self,
        server: ServerId,
        heard: Heard,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        match heard.list {
            Ok(set) => {
                if let Some(target) = self.targets.get_mut(heard.target) {
                    target.last_good = None;
                }
                self.take_list(heard.target, Some(set), heard.stamp_ms, metrics, store);
            }
            Err(error) => {
                let name = self
                    .targets
                    .get(heard.target)
                    .map(|t| t.service.name.as_str());
                if let (Some(link), Some(name)) = (
                    self.servers.get_mut(server).and_then(|s| s.push.as_mut()),
                    name,
                ) {
                    link.poll_soon(heard.target, name, &error.to_string(), now_ms, metrics);
                }
            }
        }
    }
}

/// Why stored content is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopt {
    /// A new root context starts from it, confirmation included, so it serves at once.
    AtStart,
    /// The heartbeat says the content moved to this stamp.
    Moved(u64),
}

/// A list call as it was sent.
struct Polled {
    target: TargetId,
    polled_at_ms: u64,
    token_generation: u64,
}

/// Everything that shapes Nacos's answer about a guard's service: guards, VMs and
/// configurations asking the same question share its answer.
fn question(settings: &GuardSettings) -> String {
    let server = &settings.server;
    let account = server
        .credentials
        .as_ref()
        .map_or("", |c| c.username.as_str());
    format!(
        "{}|{}|{:?}|{account}|{}|{}|{}|{}",
        server.cluster,
        server.authority,
        server.api,
        settings.service.namespace_id,
        settings.service.group,
        settings.service.name,
        settings.filter.clusters.join(",")
    )
}

/// Back off, count, and warn once per streak; never the password or a token,
/// only where and why.
fn record_login_failure(
    server: &mut Server,
    now_ms: u64,
    reason: &str,
    counter: Option<u32>,
    metrics: &mut dyn Metrics,
) {
    let streak = server.token.login_failed(now_ms);
    bump(metrics, counter);
    if streak == 1 {
        warn!(
            "nacos-instance-guard: login to {} failed: {reason}; retrying with backoff",
            server.settings.cluster
        );
    }
}

/// Say once per episode what a 403 meant.
fn report_refusal(refusal: Refusal, server: &NacosServer, service: &ServiceKey) {
    match refusal {
        Refusal::TokenRefused => info!(
            "nacos-instance-guard: {} refused the access token; logging in again",
            server.cluster
        ),
        Refusal::NoPermission { retry_in_ms: 1_000 } => warn!(
            "nacos-instance-guard: {} refuses a fresh token too: the account may not read \
             service {} in namespace {}; logging in again with backoff (1 s, 2 s, 4 s … 30 s)",
            server.cluster, service.name, service.namespace_id
        ),
        Refusal::NoPermission { .. } | Refusal::AlreadyHandled => {}
    }
}

fn record_poll_failure(
    target: &mut Target,
    cluster: &str,
    reason: &str,
    metrics: &mut dyn Metrics,
) {
    target.failure_streak = target.failure_streak.saturating_add(1);
    bump(metrics, target.metrics.failure);
    if target.failure_streak == 1 {
        warn!(
            "nacos-instance-guard: polling service {} through {cluster} failed: {reason}; \
             keeping the last good snapshot",
            target.service.name
        );
    }
}
