//! The engine: targets to poll, their snapshots, and the guards that decide
//! requests from them.

use std::collections::HashMap;

use log::{info, warn};

use super::host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
use super::metrics::{bump, LoginMetrics, PollMetrics, RequestMetrics};
use super::reject::{self, RejectResponse};
use super::sharing::Sharing;
use crate::pure::config::{GuardSettings, NacosServer, PluginConfig, Routing, Scope};
use crate::pure::polling::auth::TokenState;
use crate::pure::polling::nacos::request::{self, ServiceKey};
use crate::pure::polling::nacos::response::{self, AnswerError};
use crate::pure::polling::schedule::{Scheduler, MAX_CALLS_IN_FLIGHT};
use crate::pure::registry::snapshot::{Freshness, Snapshot};
use crate::pure::routing::decision::{self, Candidates, Decision, Policies, RequestView};
use crate::pure::routing::rules::{RequestFacts, RuleSet};

/// What a request's matching scope says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRef {
    /// Guard by index.
    Guard(usize),
    Disabled,
}

pub(super) struct Server {
    pub(super) settings: NacosServer,
    pub(super) token: TokenState,
}

/// One service on one server, polled on its own.
pub(super) struct Target {
    pub(super) server: usize,
    pub(super) service: ServiceKey,
    pub(super) query_clusters: Vec<String>,
    pub(super) snapshot: Snapshot,
    pub(super) failure_streak: u32,
    pub(super) stale_reported: bool,
    pub(super) max_stale_ms: u64,
    pub(super) metrics: PollMetrics,
}

/// One guarded scope (the global config or a rule).
pub(super) struct Guard {
    pub(super) settings: GuardSettings,
    pub(super) target: usize,
    pub(super) candidates: Candidates,
    pub(super) metrics: RequestMetrics,
    pub(super) rejections: Vec<RejectResponse>,
}

enum Pending {
    List(usize),
    Login(usize),
}

pub struct Engine {
    pub(super) servers: Vec<Server>,
    pub(super) targets: Vec<Target>,
    pub(super) guards: Vec<Guard>,
    pub(super) global: Option<ScopeRef>,
    pub(super) rules: RuleSet<ScopeRef>,
    pub(super) scheduler: Scheduler,
    pending: HashMap<u32, Pending>,
    pub(super) protected_headers: Vec<String>,
    pub(super) login_metrics: LoginMetrics,
    /// `None`: this VM polls alone (tests, or shared data unavailable).
    pub(super) sharing: Option<Sharing>,
}

impl Engine {
    pub fn new(config: &PluginConfig, metrics: &mut dyn Metrics, seed: u64) -> Self {
        let mut engine = Self {
            servers: Vec::new(),
            targets: Vec::new(),
            guards: Vec::new(),
            global: None,
            rules: RuleSet::default(),
            scheduler: Scheduler::new([], seed, MAX_CALLS_IN_FLIGHT),
            pending: HashMap::new(),
            protected_headers: config.protected_headers(),
            login_metrics: LoginMetrics::define(metrics),
            sharing: None,
        };
        engine.global = config
            .global
            .as_ref()
            .map(|scope| engine.add_scope(scope, metrics));
        for (matcher, scope) in &config.rules {
            let scope = engine.add_scope(scope, metrics);
            engine.rules.push(matcher.clone(), scope);
        }
        let intervals: Vec<u64> = (0..engine.targets.len())
            .map(|target| {
                engine
                    .guards
                    .iter()
                    .filter(|guard| guard.target == target)
                    .map(|guard| guard.settings.refresh_interval_ms)
                    .min()
                    .unwrap_or(1000)
            })
            .collect();
        engine.scheduler = Scheduler::new(intervals, seed, MAX_CALLS_IN_FLIGHT);
        engine
    }

    fn add_scope(&mut self, scope: &Scope, metrics: &mut dyn Metrics) -> ScopeRef {
        let Scope::Guard(settings) = scope else {
            return ScopeRef::Disabled;
        };
        let server = match self
            .servers
            .iter()
            .position(|s| s.settings == settings.server)
        {
            Some(index) => index,
            None => {
                self.servers.push(Server {
                    settings: settings.server.clone(),
                    token: TokenState::default(),
                });
                self.servers.len() - 1
            }
        };
        let target = match self.targets.iter().position(|t| {
            t.server == server
                && t.service == settings.service
                && t.query_clusters == settings.filter.clusters
        }) {
            Some(index) => index,
            None => {
                self.targets.push(Target {
                    server,
                    service: settings.service.clone(),
                    query_clusters: settings.filter.clusters.clone(),
                    snapshot: Snapshot::default(),
                    failure_streak: 0,
                    stale_reported: false,
                    max_stale_ms: settings.max_stale_ms,
                    metrics: PollMetrics::define(metrics, &settings.service.name),
                });
                self.targets.len() - 1
            }
        };
        if let Some(existing) = self.targets.get_mut(target) {
            existing.max_stale_ms = existing.max_stale_ms.min(settings.max_stale_ms);
        }
        self.guards.push(Guard {
            rejections: reject::prepare(
                settings.reject_status,
                &settings.service.name,
                &settings.service.group,
            ),
            settings: (**settings).clone(),
            target,
            candidates: Candidates::default(),
            metrics: RequestMetrics::define(metrics, &settings.service.name),
        });
        ScopeRef::Guard(self.guards.len() - 1)
    }

    pub fn tick_period_ms(&self) -> u64 {
        self.scheduler.tick_period_ms()
    }

    pub fn guards_anything(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Headers a client must never set; the host removes them from every request.
    pub fn protected_headers(&self) -> &[String] {
        &self.protected_headers
    }

    /// Periodic work: take or follow the lease, then logins and polls that are
    /// due (as the polling VM) or the newest published snapshots (as a follower),
    /// and staleness reports.
    pub fn on_tick(
        &mut self,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let polling = self.coordinate(now_ms, store, metrics);
        if polling {
            self.start_logins(now_ms, outbox, metrics);
            self.start_polls(now_ms, outbox, metrics);
        }
        for target in &mut self.targets {
            let stale = target.snapshot.freshness(now_ms, target.max_stale_ms) == Freshness::Stale;
            // Every VM sees the snapshot go stale; only the polling VM says so.
            if stale && !target.stale_reported && polling {
                warn!(
                    "nacos-instance-guard: the last good snapshot of service {} is older than {} ms; \
                     the onStale policy now applies",
                    target.service.name, target.max_stale_ms
                );
            }
            target.stale_reported = stale;
        }
    }

    fn start_logins(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        for (index, server) in self.servers.iter_mut().enumerate() {
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
                    self.pending.insert(token, Pending::Login(index));
                }
                Err(reason) => {
                    let failures = self.login_metrics.failure;
                    record_login_failure(server, now_ms, &reason, failures, metrics);
                }
            }
        }
    }

    fn start_polls(&mut self, now_ms: u64, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        let servers = &self.servers;
        let targets = &self.targets;
        // A server that needs a token is not polled until it has one.
        let ready = |index: usize| {
            targets
                .get(index)
                .and_then(|t| servers.get(t.server))
                .is_some_and(|s| {
                    s.settings.credentials.is_none() || s.token.valid_token(now_ms).is_some()
                })
        };
        for index in self.scheduler.take_due_where(now_ms, ready) {
            let Some(target) = self.targets.get_mut(index) else {
                continue;
            };
            let Some(server) = self.servers.get(target.server) else {
                self.scheduler.finished(index);
                continue;
            };
            let list = request::instance_list(
                server.settings.api,
                &target.service,
                &target.query_clusters,
                server.token.valid_token(now_ms),
            );
            let call = OutgoingCall {
                cluster: &server.settings.cluster,
                authority: &server.settings.authority,
                request: &list,
                timeout_ms: server.settings.timeout_ms,
            };
            match outbox.dispatch(call) {
                Ok(token) => {
                    self.pending.insert(token, Pending::List(index));
                }
                Err(reason) => {
                    self.scheduler.finished(index);
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
        match self.pending.remove(&token) {
            Some(Pending::List(index)) => {
                if self.on_list(index, answer, now_ms, metrics) {
                    self.publish_snapshot(index, store);
                }
            }
            Some(Pending::Login(index)) => {
                if self.on_login(index, answer, now_ms, metrics) {
                    self.publish_token(index, store);
                }
            }
            None => return,
        }
        // Freed capacity (or a new token) lets waiting polls go now, not next tick.
        self.start_polls(now_ms, outbox, metrics);
    }

    /// Take a list answer; true if it became the new snapshot.
    fn on_list(
        &mut self,
        index: usize,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
    ) -> bool {
        self.scheduler.finished(index);
        let Some(target) = self.targets.get_mut(index) else {
            return false;
        };
        let Some(server) = self.servers.get_mut(target.server) else {
            return false;
        };
        let parsed = match answer {
            Some((status, body)) => {
                response::parse_instance_list(server.settings.api, status, body)
            }
            None => Err(AnswerError::NoAnswer),
        };
        match parsed {
            Ok(set) => {
                if target.failure_streak > 0 {
                    info!(
                        "nacos-instance-guard: polling service {} works again after {} failures",
                        target.service.name, target.failure_streak
                    );
                }
                target.failure_streak = 0;
                target.snapshot.accept(set, now_ms);
                bump(metrics, target.metrics.success);
                self.refresh_guards(index, metrics);
                true
            }
            Err(error) => {
                if error == AnswerError::Status(403) && server.settings.credentials.is_some() {
                    server.token.rejected();
                }
                record_poll_failure(
                    target,
                    &server.settings.cluster,
                    &error.to_string(),
                    metrics,
                );
                false
            }
        }
    }

    /// Take a login answer; true if it gave a token.
    fn on_login(
        &mut self,
        index: usize,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
    ) -> bool {
        let Some(server) = self.servers.get_mut(index) else {
            return false;
        };
        let parsed = match answer {
            Some((status, body)) => response::parse_login(status, body),
            None => Err(AnswerError::NoAnswer),
        };
        match parsed {
            Ok(grant) => {
                server.token.granted(grant, now_ms);
                bump(metrics, self.login_metrics.success);
                true
            }
            Err(error) => {
                let failures = self.login_metrics.failure;
                record_login_failure(server, now_ms, &error.to_string(), failures, metrics);
                false
            }
        }
    }

    /// Prepare the candidates of every guard of `target` from its new snapshot.
    pub(super) fn refresh_guards(&mut self, target: usize, metrics: &mut dyn Metrics) {
        let Some(snapshot) = self.targets.get(target).map(|t| &t.snapshot) else {
            return;
        };
        for guard in self
            .guards
            .iter_mut()
            .filter(|guard| guard.target == target)
        {
            guard.candidates.refresh(snapshot, &guard.settings.filter);
            if let Some(gauge) = guard.metrics.usable_instances {
                let usable = u64::try_from(guard.candidates.endpoints().len()).unwrap_or(u64::MAX);
                metrics.record(gauge, usable);
            }
        }
    }

    /// The scope that applies to a request, if any.
    pub fn scope_for(&self, facts: &mut dyn RequestFacts) -> Option<ScopeRef> {
        self.rules.select(self.global.as_ref(), facts).copied()
    }

    pub fn pin_header(&self, guard: usize) -> Option<&str> {
        self.guards
            .get(guard)
            .map(|g| g.settings.pin_header.as_str())
    }

    pub fn routing(&self, guard: usize) -> Option<&Routing> {
        self.guards.get(guard).map(|g| &g.settings.routing)
    }

    /// Decide one request on `guard` and count it; with the guard's routing, so
    /// the caller applies the decision without copying either.
    pub fn decide(
        &mut self,
        guard: usize,
        now_ms: u64,
        request: RequestView<'_>,
        metrics: &mut dyn Metrics,
    ) -> Option<(Decision<'_>, &Routing)> {
        let guard = self.guards.get_mut(guard)?;
        let target = self.targets.get(guard.target)?;
        let freshness = target
            .snapshot
            .freshness(now_ms, guard.settings.max_stale_ms);
        let policies = Policies {
            on_stale: guard.settings.on_stale,
            on_deregistered: guard.settings.on_deregistered,
        };
        let decision = decision::decide(&mut guard.candidates, freshness, policies, request);
        let counters = match decision {
            Decision::Route { rerouted: true, .. } => {
                [guard.metrics.routed, guard.metrics.rerouted]
            }
            Decision::Route { .. } => [guard.metrics.routed, None],
            Decision::Reject(_) => [guard.metrics.rejected, None],
            Decision::PassThrough => [guard.metrics.passed_through, None],
        };
        for counter in counters {
            bump(metrics, counter);
        }
        Some((decision, &guard.settings.routing))
    }

    /// The prepared rejection for `code` on `guard`.
    pub fn rejection(&self, guard: usize, code: decision::RejectCode) -> Option<&RejectResponse> {
        let index = decision::RejectCode::ALL.iter().position(|c| *c == code)?;
        self.guards.get(guard)?.rejections.get(index)
    }
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
