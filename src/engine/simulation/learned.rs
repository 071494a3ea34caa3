//! Learned services (`guardNacosRoutes`) in the simulated gateway: requests
//! carry the cluster names Higress gives Nacos services, every VM gets one for
//! each service just after it configures (start-up, and each edit, whose new
//! configuration starts with an empty learned list), writes of shared data
//! lose compare-and-swaps to other workers in those bursts, services go quiet
//! past `idleMs` and come back, and `maxServices` may be below the number of
//! services. The checks here are measured on the simulation's own timeline:
//! when requests came and when polls were sent, never what the plugin wrote
//! into shared data.
//!
//! Names as in docs/testing.md: I, T, D, P' (a tick at its latest), and
//! `n` services.

use std::collections::BTreeMap;

use super::invariants::Bounds;
use super::rng::Rng;
use crate::engine::targets::Target;
use crate::engine::Engine;
use crate::pure::registry::snapshot::Health;

/// How long after a root context configures the writes of shared data are
/// contended: the burst of first requests every worker gets at once.
pub const BURST_MS: u64 = 5;

/// Per mille of a burst's first requests that read shared data as it was
/// before another worker's callback of the same moment wrote, at the least.
pub const BURST_RACE: u64 = 500;

/// A learned seed's settings, drawn from a generator of its own so that a seed
/// without learned services runs as it did before they were modelled.
#[derive(Debug, Clone, Copy)]
pub struct LearnedSettings {
    pub idle_ms: u64,
    pub max_services: usize,
    /// Per mille of compare-and-swap writes in a burst that another worker's
    /// write beats (the token read is spent when the write comes).
    pub contention: u64,
}

impl LearnedSettings {
    /// Learned services in 4 seeds of 10.
    pub fn draw(seed: u64, services: usize) -> Option<Self> {
        let mut rng = Rng::new(seed ^ 0x1ea7_4ed5_e7c1_0001);
        if !rng.chance(400) {
            return None;
        }
        let tight = services.saturating_sub(1).max(1);
        Some(Self {
            idle_ms: rng.pick(&[1_000, 3_000, 10_000, 600_000]),
            max_services: rng.pick(&[256, 256, 256, tight, 1]),
            contention: rng.pick(&[0, 600, 850, 850]),
        })
    }

    /// The configuration's `guardNacosRoutes`.
    pub fn json(&self) -> String {
        format!(
            r#""guardNacosRoutes":{{"idleMs":{},"maxServices":{}}}"#,
            self.idle_ms, self.max_services
        )
    }
}

/// The cluster Higress names for service `s` (group `DEFAULT_GROUP`, namespace
/// `public`), as a request carries it.
pub fn cluster(service: usize) -> String {
    format!("outbound|8080||s{service}.DEFAULT-GROUP.public.nacos")
}

/// Each service's snapshot health on `engine`, by service index (a learned
/// service's target comes in the order this VM learned it); a service it has
/// not learned reads as never polled.
pub fn health_by_service(engine: &Engine, services: usize) -> Vec<Health> {
    let mut health = vec![Health::default(); services];
    for (index, target) in targets_by_service(engine) {
        if let Some(slot) = health.get_mut(index) {
            *slot = target.snapshot().health();
        }
    }
    health
}

/// `engine`'s targets with their service's index (service `s<index>`).
fn targets_by_service(engine: &Engine) -> impl Iterator<Item = (usize, &Target)> {
    engine
        .targets
        .ids()
        .filter_map(|id| engine.targets.get(id))
        .filter_map(|target| {
            Some((
                target.service().name.strip_prefix('s')?.parse().ok()?,
                target,
            ))
        })
}

/// Whether `engine` holds the content of `service` written to shared data (its
/// last write did not lose every compare-and-swap, or was written again).
pub fn content_written(engine: &Engine, service: usize) -> bool {
    !targets_by_service(engine)
        .any(|(index, target)| index == service && target.content_unwritten())
}

/// The services `engine` guards, by service index: a learned one from its
/// first request there, or from the shared list.
pub fn guarded_services(engine: &Engine) -> Vec<usize> {
    targets_by_service(engine).map(|(index, _)| index).collect()
}

/// A poll that a request calls for: of service `service` by configuration
/// `gen`, because of a request at `asked`, by `deadline`.
#[derive(Debug, Clone, Copy)]
struct Due {
    gen: usize,
    service: usize,
    asked: u64,
    deadline: u64,
    first: bool,
}

/// The learned model's state and its invariants (docs/testing.md, 17–20).
pub struct LearnedChecks {
    pub settings: LearnedSettings,
    services: usize,
    credentials: bool,
    /// Per (configuration, service): when its last request came.
    last_request: BTreeMap<(usize, usize), u64>,
    /// Per (configuration, service): when its first guarded request came.
    first_guarded: BTreeMap<(usize, usize), u64>,
    /// Per service, whatever the configuration: when its last request came,
    /// and its last guarded one.
    last_any: BTreeMap<usize, u64>,
    last_guarded: BTreeMap<usize, u64>,
    /// Per service: every request's time, whatever the configuration.
    requests: Vec<Vec<u64>>,
    /// (configuration, service) some request was guarded on.
    guarded: std::collections::BTreeSet<(usize, usize)>,
    /// Per (configuration, service): every poll's send time.
    polls: BTreeMap<(usize, usize), Vec<u64>>,
    /// Per configuration: when a VM became its poller, the first one apart.
    takeovers: BTreeMap<usize, Vec<u64>>,
    /// Per configuration: when a root context of it went (an edit retired it).
    retired: BTreeMap<usize, Vec<u64>>,
    dues: Vec<Due>,
    /// Per service: until when no request goes to it (a quiet spell).
    pub quiet_until: Vec<u64>,
    /// (service, from, to): spans in which a service may have idled, its
    /// requests too far apart.
    idle_spans: Vec<(usize, u64, u64)>,
    /// Per service: since when it may have idled, while coming back it may
    /// have found the list full.
    refusable_idle: BTreeMap<usize, u64>,
}

impl LearnedChecks {
    pub fn new(settings: LearnedSettings, services: usize, credentials: bool) -> Self {
        Self {
            settings,
            services,
            credentials,
            last_request: BTreeMap::new(),
            first_guarded: BTreeMap::new(),
            last_any: BTreeMap::new(),
            last_guarded: BTreeMap::new(),
            requests: vec![Vec::new(); services],
            guarded: std::collections::BTreeSet::new(),
            polls: BTreeMap::new(),
            takeovers: BTreeMap::new(),
            retired: BTreeMap::new(),
            dues: Vec::new(),
            quiet_until: vec![0; services],
            idle_spans: Vec::new(),
            refusable_idle: BTreeMap::new(),
        }
    }

    /// First request → its first poll, all going well: the VM that learned it
    /// lists it at once (or, if other workers' writes beat its
    /// compare-and-swaps, on its next tick), the poller reads the list on its
    /// next tick (or the one after, had that tick raced the write) and polls
    /// the service then; polls go one at a time, so each other service's call
    /// in flight may come first (D and a tick each), and with credentials a
    /// login: `3P' + n(D + P') (+ D + P') + 2`.
    pub fn learned_within(&self, b: &Bounds) -> u64 {
        let per_call = b.max_delay + b.late_tick();
        let login = if self.credentials { per_call } else { 0 };
        3 * b.late_tick() + self.services as u64 * per_call + login + 2
    }

    /// A later request of a service that may idle, or was refused while the
    /// list was full: a request on a snapshot that is not fresh says so at once,
    /// the poller looks at idle services once a second, and a refused one is
    /// asked for again a second later: `2000 + learned_within`.
    pub fn relearned_within(&self, b: &Bounds) -> u64 {
        2_000 + self.learned_within(b)
    }

    /// A service polled all along was polled this recently before any request:
    /// within an interval of its last poll and a tick, behind every other
    /// service's call: `I + n(D + P') + 2P' + 2`.
    fn regular(&self, b: &Bounds) -> u64 {
        b.interval + self.services as u64 * (b.max_delay + b.late_tick()) + 2 * b.late_tick() + 2
    }

    /// From this long after its last request a service may idle: its VMs tell
    /// the poller of a request at most every eighth of `idleMs`, and the poller
    /// pauses it once the last one told is `idleMs` old (`LearnedServices::touch`,
    /// `check_idle`), less a tick for clocks read apart.
    pub fn may_idle_after(&self, b: &Bounds) -> u64 {
        let idle = self.settings.idle_ms;
        (idle - idle / 8).saturating_sub(2 * b.late_tick())
    }

    /// How long after its last request a service may still hold a place under
    /// `maxServices`: `idleMs`, an eighth of it between touches, the poller's
    /// idle checks a second apart and a tick, and a refusal's second before a
    /// request asks again.
    pub fn may_hold_place(&self, b: &Bounds) -> u64 {
        let idle = self.settings.idle_ms;
        idle + idle / 8 + 2_000 + 4 * b.late_tick()
    }

    /// Whether the list may be full for `service` at `now`: `maxServices`
    /// other services had requests recently enough to hold their places. A
    /// request on any configuration counts: when a service last carried one is
    /// shared by all (`ConfigKeys::touched`), so a new configuration's poller
    /// keeps what the old one's traffic kept busy.
    fn may_be_full(&self, service: usize, now: u64, b: &Bounds) -> bool {
        self.may_be_full_between(service, now, now, b)
    }

    /// The same at some moment from `from` to `to`: `maxServices` other
    /// services had requests in that span or recently enough before it.
    fn may_be_full_between(&self, service: usize, from: u64, to: u64, b: &Bounds) -> bool {
        let since = from.saturating_sub(self.may_hold_place(b));
        let holding = (0..self.services)
            .filter(|s| *s != service)
            .filter(|s| {
                let times = &self.requests[*s];
                let after = times.partition_point(|t| *t < since);
                times.get(after).is_some_and(|t| *t <= to)
            })
            .count();
        holding >= self.settings.max_services
    }

    /// Whether `service` had a request recently enough at `to` not to idle.
    pub fn kept_busy(&self, service: usize, to: u64, b: &Bounds) -> bool {
        self.last_any
            .get(&service)
            .is_some_and(|t| to.saturating_sub(*t) < self.may_idle_after(b))
    }

    /// A request of `service` on a root context of configuration `gen`: whether
    /// the previous one (on any configuration) was long enough ago for the
    /// service to have idled since, as (from, the previous request).
    pub fn idled_before(&self, service: usize, now: u64, b: &Bounds) -> Option<u64> {
        let last = *self.last_any.get(&service)?;
        let from = last + self.may_idle_after(b);
        (from < now).then_some(from)
    }

    /// A request of `service`: since when it may have gone unpolled, if it
    /// may have idled. It idled since its previous request; or it idled before
    /// and, coming back, may have found the list full (seed 3985): nobody
    /// polls it then, and a VM that held it serves its last list until that
    /// is stale. So while the list may be full, and one request more, which
    /// the place that freed relists it within. A request left alone (`refused`,
    /// the list full) makes it so from then: the configuration polls it not,
    /// and once a place frees, a VM that learns it starts from whatever list
    /// another configuration stored last, perhaps long ago (seed 2045).
    pub fn unpolled_since(
        &mut self,
        service: usize,
        now: u64,
        refused: bool,
        b: &Bounds,
    ) -> Option<u64> {
        if refused {
            return Some(*self.refusable_idle.entry(service).or_insert(now));
        }
        if let Some(from) = self.idled_before(service, now, b) {
            if self.may_be_full(service, now, b) {
                self.refusable_idle.insert(service, from);
            }
            return Some(from);
        }
        let from = *self.refusable_idle.get(&service)?;
        if !self.may_be_full(service, now, b) {
            self.refusable_idle.remove(&service);
        }
        Some(from)
    }

    /// Invariants 17–19 on a request of `service` on a root context of
    /// configuration `gen`, left alone (`ignored`) or not, having moved
    /// `learned_services_refused` by `refused`. `held`: something kept the
    /// poller from its idle checks lately (a stall, a clock step), so idle
    /// services may still hold their places.
    pub fn request(
        &mut self,
        gen: usize,
        service: usize,
        now: u64,
        (ignored, refused, held): (bool, u64, bool),
        b: &Bounds,
    ) -> Result<(), String> {
        // A poller gone at once (a VM loaded again) takes idle services off
        // the list no more until another VM takes its lease.
        let lease = b.interval * crate::engine::sharing::LEASE_INTERVALS;
        let since = now.saturating_sub(self.may_hold_place(b));
        let unkept = self.root_gone(gen, since, now, lease);
        let full = held || unkept || self.may_be_full(service, now, b);
        let first = !self.last_request.contains_key(&(gen, service));
        if let Some(from) = self.idled_before(service, now, b) {
            self.idle_spans.push((service, from, now));
        }
        self.last_request.insert((gen, service), now);
        self.last_any.insert(service, now);
        self.requests[service].push(now);
        // A request left alone tells the poller nothing (no touch): it keeps
        // no service it polls from idling (seed 4972).
        if !ignored {
            self.last_guarded.insert(service, now);
        }
        // 19: the metric counts each refused request, and nothing else.
        if refused != u64::from(ignored) {
            return Err(format!(
                "s{service} (config {gen}): request {}, but learned_services_refused moved by {refused}",
                if ignored { "left alone" } else { "guarded" }
            ));
        }
        // 18: refused only at the bound.
        if ignored && !full {
            return Err(format!(
                "s{service} (config {gen}) refused at {now}, but fewer than maxServices {} other \
                 services had requests within {} ms",
                self.settings.max_services,
                self.may_hold_place(b)
            ));
        }
        if full {
            return Ok(());
        }
        // 17: a service with traffic is polled, or soon.
        let recent = now.saturating_sub(self.regular(b));
        let polled = self
            .polls
            .get(&(gen, service))
            .and_then(|p| p.last())
            .is_some_and(|t| *t >= recent);
        let waiting = self
            .dues
            .iter()
            .any(|d| d.gen == gen && d.service == service);
        if !polled && !waiting {
            let within = if first {
                self.learned_within(b)
            } else {
                self.relearned_within(b)
            };
            self.dues.push(Due {
                gen,
                service,
                asked: now,
                deadline: now + within,
                first,
            });
        }
        Ok(())
    }

    /// Whether a request that configuration `gen` guards (not `ignored`) is
    /// the first it guards of `service`.
    pub fn first_guarded(&mut self, gen: usize, service: usize, ignored: bool, now: u64) -> bool {
        let first = !ignored && self.guarded.insert((gen, service));
        if first {
            self.first_guarded.insert((gen, service), now);
        }
        first
    }

    pub fn polled(&mut self, gen: usize, service: usize, at: u64) {
        self.polls.entry((gen, service)).or_default().push(at);
    }

    /// A VM of configuration `gen` became its poller at `at`; the first is no
    /// takeover.
    pub fn became_poller(&mut self, gen: usize, at: u64) {
        let list = self.takeovers.entry(gen).or_default();
        list.push(at);
    }

    /// A root context of configuration `gen` is gone from `at` on.
    pub fn retired(&mut self, gen: usize, at: u64) {
        self.retired.entry(gen).or_default().push(at);
    }

    /// Whether something of configuration `gen` may explain a missing poll from
    /// `from` to `to`: a lease takeover (not the first lease), or one of its
    /// root contexts gone, the poller perhaps, within a lease's life before.
    fn excused(&self, gen: usize, from: u64, to: u64, lease_ms: u64) -> bool {
        let takeover = self
            .takeovers
            .get(&gen)
            .is_some_and(|t| t.iter().skip(1).any(|at| *at >= from && *at <= to));
        takeover || self.root_gone(gen, from, to, lease_ms)
    }

    /// Whether a root context of configuration `gen` went from `from` to `to`
    /// or within a lease's life before: the poller perhaps, whose lease then
    /// still stands and nobody keeps the list.
    fn root_gone(&self, gen: usize, from: u64, to: u64, lease_ms: u64) -> bool {
        self.retired.get(&gen).is_some_and(|r| {
            r.iter()
                .any(|at| *at <= to && at.saturating_add(lease_ms) >= from)
        })
    }

    /// Invariant 17's deadlines that passed by `now`: each poll a request called
    /// for was sent, unless `disturbed` (a stall, a failing call or login, a
    /// clock step, the gateway stopped) or this configuration's lease moved.
    pub fn deadlines(
        &mut self,
        now: u64,
        b: &Bounds,
        lease_ms: u64,
        disturbed: impl Fn(u64, u64, usize) -> bool,
    ) -> Result<(), String> {
        if self.dues.iter().all(|d| d.deadline > now) {
            return Ok(());
        }
        let (due, later): (Vec<Due>, Vec<Due>) = self.dues.iter().partition(|d| d.deadline <= now);
        self.dues = later;
        let regular = self.regular(b);
        for d in due {
            let from = d.asked.saturating_sub(regular);
            let polled = self
                .polls
                .get(&(d.gen, d.service))
                .is_some_and(|p| p.iter().rev().any(|t| *t >= from && *t <= d.deadline));
            // Other services' first requests may have filled the list since;
            // with no request since for long enough, the service may have
            // idled before its poll could go (a login first; seed 4587).
            let may_idle = self.idled_before(d.service, d.deadline, b).is_some();
            if polled
                || may_idle
                || self.may_be_full_between(d.service, d.asked, d.deadline, b)
                || disturbed(from, d.deadline, d.service)
                || self.excused(d.gen, from, d.deadline, lease_ms)
            {
                continue;
            }
            return Err(format!(
                "s{} (config {}): a request at {} {} but no poll of it was sent by {} \
                 (bound {} ms)",
                d.service,
                d.gen,
                d.asked,
                if d.first {
                    "learned it"
                } else {
                    "found it unpolled"
                },
                d.deadline,
                d.deadline - d.asked
            ));
        }
        Ok(())
    }

    /// Invariant 20: the services configuration `gen` polls that are certainly
    /// active (guarded requests, on any configuration, never further apart than
    /// `may_idle_after`, the last that recent) are never more than
    /// `maxServices`, counted over the
    /// shortest gap between two polls of one service (`Bounds::poll_gap`), so
    /// none is counted twice.
    pub fn bound_kept(&self, gen: usize, at: u64, b: &Bounds) -> Result<(), String> {
        let from = at.saturating_sub(b.poll_gap());
        let active_from = at.saturating_sub(self.may_idle_after(b));
        let polled: Vec<usize> = (0..self.services)
            .filter(|s| {
                self.polls
                    .get(&(gen, *s))
                    .is_some_and(|p| p.iter().rev().any(|t| *t > from && *t <= at))
                    && self.last_guarded.get(s).is_some_and(|t| *t >= active_from)
                    && !self
                        .idle_spans
                        .iter()
                        .any(|(i, a, z)| i == s && *a <= at && *z >= from)
            })
            .collect();
        if polled.len() > self.settings.max_services {
            return Err(format!(
                "config {gen} polls {polled:?} at {at}, all with traffic, beyond maxServices {}",
                self.settings.max_services
            ));
        }
        Ok(())
    }

    /// Whether the gauge of `usable_instances` of `service` must follow the
    /// registry at `now`, after a change at `changed`: every service fits
    /// under `maxServices`, configuration `gen` (the newest) guarded it before
    /// the change, and its traffic kept it from idling.
    pub fn gauge_applies(
        &self,
        (gen, service): (usize, usize),
        changed: u64,
        now: u64,
        b: &Bounds,
    ) -> bool {
        let learned = self
            .first_guarded
            .get(&(gen, service))
            .is_some_and(|t| *t < changed);
        self.settings.max_services >= self.services && learned && self.kept_busy(service, now, b)
    }

    /// Whether `service` is polled by configuration `gen` at a clock step at
    /// `at` and keeps its traffic until polling must have resumed
    /// (`Bounds::resume_after_jump`): it had a request recently enough not to
    /// idle by then, was polled regularly, and fits under `maxServices`.
    pub fn busy_through_jump(&self, gen: usize, service: usize, at: u64, b: &Bounds) -> bool {
        let until = at + b.resume_after_jump();
        let requested = self
            .last_request
            .get(&(gen, service))
            .is_some_and(|t| until.saturating_sub(*t) < self.may_idle_after(b));
        let polled = self
            .polls
            .get(&(gen, service))
            .and_then(|p| p.last())
            .is_some_and(|t| *t + self.regular(b) >= at);
        requested && polled && !self.may_be_full(service, at, b)
    }

    /// A quiet spell of a random service: no request to it for a while, past
    /// `idleMs` half the time. The next spell's time, and what to trace.
    pub fn quiet(&mut self, rng: &mut Rng, now: u64, interval: u64) -> (u64, String) {
        let service = rng.below(self.services as u64) as usize;
        let idle = self.settings.idle_ms;
        let length = rng.pick(&[idle / 2, idle + idle / 4, 2 * idle, 3 * interval]);
        self.quiet_until[service] = now + length;
        let next = now + rng.between(5, 30) * interval;
        (next, format!("s{service} gets no request for {length} ms"))
    }
}
