//! The simulated gateway: VMs, one shared store, one wall clock that jumps, one
//! registry, and a seeded scheduler that interleaves their events.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

#[path = "push.rs"]
mod push;

use super::avoidance::{AvoidChecks, Failure, Policy};
use super::invariants::{Bounds, Checker, GoodAnswer, Trouble, Verdict};
use super::learned::{self, LearnedChecks, LearnedSettings, BURST_MS};
use super::metrics::{usable_gauge, SimMetrics};
use super::registry::{Flap, Registry};
use super::rng::Rng;
use super::store::{SimStore, View};
use super::views::{self, Views};
use crate::engine::ids::{GuardId, Id};
use crate::engine::{
    Engine, GatewayClock, Outbox, OutgoingCall, RequestAction, RequestHost, Routed,
};
use crate::pure::config::{parse, Capabilities};
use crate::pure::routing::rules::RequestFacts;
use crate::pure::routing::upstream_failure::{flags, instance_failed};
use crate::pure::sharing::lease::Lease;
use crate::pure::sharing::published::ConfigKeys;

const TRACE_LINES: usize = 200;
const MAX_REQUESTS: u64 = 20_000;
/// How long, at most, an edited configuration's old root contexts serve on, in
/// intervals, as Envoy drains the old filter chains. At 3, before this was
/// turned on, 33 of seeds 1000-1599 failed: one engine defect (a poller's list
/// older than another configuration's stored one reached none of its
/// followers, fixed in `sharing::publish_content`) and checks that took one
/// configuration alive at a time (an asked poll explained one early poll for
/// the gateway, not one per configuration; a configuration's start list; one
/// login trouble for all; a follower going back to its poller's older list).
const LINGER_INTERVALS: u64 = 3;
/// The longest an old root context held by a long-lived stream serves on, in
/// intervals (seeds with flaps only).
const LONG_LINGER_INTERVALS: u64 = 20;

/// Per mille of good poll answers, while two configurations are alive in a
/// seed with flaps, that catch a flap of their service (`flap_at_poll`).
const FLAP_AT_POLL_PER_MILLE: u64 = 100;

/// One run's shape, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Params {
    pub vms: usize,
    pub services: usize,
    pub interval: u64,
    pub timeout: u64,
    pub max_delay: u64,
    pub max_stale: u64,
    pub fail_closed: bool,
    pub credentials: bool,
    pub ttl_s: u64,
    pub ref_time: bool,
    /// Per mille of VM callbacks that run against a stale view of shared data
    /// when another VM's callback ran at the same moment.
    pub race: u64,
    /// Churn, faults, jumps, stalls and edits happen before this; after it the
    /// registry is still and answers well, and the shares are counted.
    pub steady_at: u64,
    pub end_at: u64,
    pub steady_gap: u64,
    /// `avoidFailedMs` and `maxAvoidedPercent`, the same in every configuration.
    pub avoid_ms: u64,
    pub max_avoided_percent: u64,
    /// Whether instances die while Nacos lists them (until the steady phase).
    pub deaths: bool,
    /// Filters, pins and the protection threshold.
    pub views: Views,
    /// `nacos.push`, in a fraction of seeds (`push::PushParams`).
    pub push: Option<push::PushParams>,
    /// `guardNacosRoutes`: the services are learned from requests' clusters.
    pub learned: Option<LearnedSettings>,
    /// Whether instances flap for less than an interval (`Registry::flap`),
    /// VMs fail and are loaded again, edits come often and some old root
    /// contexts serve on long: drawn in seeds whose edits leave two
    /// configurations alive at once (`SIM_NO_FLAPS=1`: never).
    pub flaps: bool,
    /// Whether, in half the bursts of first requests, each service's first
    /// request comes on about one VM of all: drawn in half the seeds with
    /// learned services (`SIM_NO_SPARSE=1`: never; `SIM_SPARSE_BURSTS=1`:
    /// always).
    pub sparse_bursts: bool,
}

impl Params {
    pub fn draw(rng: &mut Rng) -> Self {
        let interval = rng.pick(&[100, 200, 500, 1000, 3000]);
        let timeout = rng.pick(&[(interval / 2).max(50), interval, 2000]);
        let tick = (interval / 20).clamp(10, 50);
        let main = (rng.between(30, 80) * interval).min(90_000);
        let steady = (60 * interval).min(90_000);
        let steady_gap = rng.pick(&[1, 10, interval / 4, interval, 2 * interval]);
        Self {
            vms: rng.between(1, 8) as usize,
            services: rng.between(1, 3) as usize,
            interval,
            timeout,
            max_delay: (timeout - 1).min(interval),
            max_stale: rng.pick(&[0, interval, 3_000, 30_000]),
            fail_closed: rng.chance(500),
            credentials: rng.chance(500),
            ttl_s: rng.pick(&[2, 5, 60, 3600]),
            ref_time: rng.chance(500),
            race: rng.pick(&[0, 300, 1000]),
            steady_at: main,
            end_at: main + steady,
            steady_gap: steady_gap.max(steady / 5_000).max(1) + tick / 1000,
            avoid_ms: 0,
            max_avoided_percent: 50,
            deaths: false,
            views: Views::default(),
            push: None,
            learned: None,
            flaps: false,
            sparse_bursts: false,
        }
    }

    /// Whether an edit's old root contexts serve on beside the new ones. The
    /// push model's checks, and the pins', take one configuration at a time:
    /// with push or views the old root contexts go at once.
    fn lingers(&self) -> bool {
        self.push.is_none() && !self.views.drawn()
    }

    /// The avoidance's settings, from a generator of their own: seeds whose
    /// instances never die run as they did before the avoidance was modelled.
    fn draw_avoidance(&mut self, side: &mut Rng) {
        self.deaths = side.chance(700);
        self.avoid_ms = side.pick(&[30_000, 30_000, 1_000, 3_000, 10_000, 0]);
        self.max_avoided_percent = side.pick(&[50, 50, 0, 25, 34, 100]);
    }

    fn config(&self, max_stale: u64, fail_closed: bool) -> String {
        let credentials = if self.credentials {
            r#","username":"u","password":"p""#
        } else {
            ""
        };
        let rules: Vec<String> = (0..self.services)
            .filter(|_| self.learned.is_none())
            .map(|s| {
                let view = self
                    .views
                    .per_service
                    .get(s)
                    .map_or(String::new(), views::View::service_fields);
                format!(r#"{{"_match_route_":["r{s}"],"service":{{"name":"s{s}"{view}}}}}"#)
            })
            .collect();
        let pins = self.views.global_fields();
        let push = self
            .push
            .as_ref()
            .map_or(String::new(), push::PushParams::json);
        let learned = self
            .learned
            .map_or(String::new(), |l| format!(",{}", l.json()));
        format!(
            r#"{{"nacos":{{"cluster":"nacos","timeoutMs":{}{credentials}{push}}},"refreshIntervalMs":{},"maxStaleMs":{max_stale},"onStale":"{}","avoidFailedMs":{},"maxAvoidedPercent":{}{pins}{learned},"_rules_":[{}]}}"#,
            self.timeout,
            self.interval,
            if fail_closed {
                "fail_closed"
            } else {
                "fail_open"
            },
            self.avoid_ms,
            self.max_avoided_percent,
            rules.join(",")
        )
    }
}

/// How Nacos behaves for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Calm,
    Flaky,
    Outage,
    /// Every list call 403, whatever the token (an account without permission).
    Forbidden,
}

#[derive(Debug)]
enum Kind {
    /// Worker thread `thread` starts a root context of configuration `gen`;
    /// its previous one keeps serving for `linger` ms more, as Envoy lets
    /// the old configuration's filter chains drain.
    Configure {
        thread: usize,
        gen: usize,
        linger: u64,
    },
    Tick {
        vm: usize,
        engine: u64,
    },
    Answer {
        vm: usize,
        engine: u64,
        token: u32,
        answer: Option<(u16, Vec<u8>)>,
    },
    Request,
    Rate,
    Churn,
    Jump,
    Stall,
    Edit,
    Weather,
    Revoke,
    /// An instance's process dies while Nacos lists it, or comes back.
    Death,
    /// A service reaches the protection threshold or leaves it, or an
    /// instance's metadata changes.
    Relabel,
    /// Nacos learns that a dead instance died: it lists it unhealthy.
    Learn {
        service: usize,
        endpoint: String,
    },
    /// The response of a request routed to `endpoint` reaches the VM's HTTP
    /// context, with Envoy's response flags and code details.
    Response(Box<Response>),
    /// The gRPC server and its messages (`push`).
    Push(push::Event),
    /// A request of a learned service on one root context (its first ones).
    LearnedRequest {
        vm: usize,
        engine: u64,
        service: usize,
    },
    /// A learned service's traffic stops for a while.
    Quiet,
    /// An instance flaps, and the flap is undone later (`Settle`).
    Flap,
    Settle(Flap),
    /// A worker's VM fails and Envoy loads it again (`failure_policy:
    /// FAIL_RELOAD`): its root context goes at once and a new one of the same
    /// configuration starts from shared data; `again`: the next one is drawn
    /// then (the regular reloads), else it is one drawn after a flap.
    Reload {
        again: bool,
    },
}

#[derive(Debug)]
struct Response {
    vm: usize,
    engine: u64,
    service: usize,
    endpoint: String,
    routed: Routed,
    /// The VM's content stamp of the service when it routed the request.
    stamp: Option<u64>,
    flags: u64,
    details: &'static str,
}

/// What Envoy reports for a request to an instance whose process is dead:
/// refused (`UF`), refused on every retry (`UF`+`URX`), reset or closed before
/// the response (`UR`, `UC`), and a cluster with no healthy host (`UH`).
const DEAD_RESPONSES: [(u64, &str); 5] = [
    (
        flags::UPSTREAM_CONNECTION_FAILURE,
        "upstream_reset_before_response_started{remote_connection_failure}",
    ),
    (
        flags::UPSTREAM_CONNECTION_FAILURE | flags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
        "upstream_reset_before_response_started{remote_connection_failure}",
    ),
    (
        flags::UPSTREAM_REMOTE_RESET,
        "upstream_reset_before_response_started{remote_reset}",
    ),
    (
        flags::UPSTREAM_CONNECTION_TERMINATION,
        "upstream_reset_before_response_started{connection_termination}",
    ),
    (flags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
];

/// What a live instance may answer that is not a failure of it: its own 503
/// after retries ran out, and a request timeout.
const LIVE_RESPONSES: [(u64, &str); 2] = [
    (flags::UPSTREAM_RETRY_LIMIT_EXCEEDED, "via_upstream"),
    (flags::UPSTREAM_REQUEST_TIMEOUT, "upstream_response_timeout"),
];

struct Event {
    at: u64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct SimOutbox {
    next: u32,
    sent: Vec<(u32, bool, String)>,
    grpc: Vec<push::Sent>,
}

impl Outbox for SimOutbox {
    fn dispatch(&mut self, call: OutgoingCall<'_>) -> Result<u32, String> {
        self.next += 1;
        let login = call.request.method == "POST";
        self.sent
            .push((self.next, login, call.request.path.clone()));
        Ok(self.next)
    }

    // Tokens share one counter with HTTP calls, as Envoy's do.
    fn grpc_call(&mut self, _: &[u8], message: &[u8], _: u64) -> Result<u32, String> {
        self.next += 1;
        self.grpc
            .push(push::Sent::Call(self.next, message.to_vec()));
        Ok(self.next)
    }
    fn grpc_open(&mut self, _: &[u8]) -> Result<u32, String> {
        self.next += 1;
        self.grpc.push(push::Sent::Open(self.next));
        Ok(self.next)
    }
    fn grpc_send(&mut self, stream: u32, message: &[u8]) -> Result<(), String> {
        self.grpc.push(push::Sent::Send(stream, message.to_vec()));
        Ok(())
    }
    fn grpc_finish(&mut self, stream: u32, last: Option<&[u8]>) -> Result<(), String> {
        self.grpc
            .push(push::Sent::Finish(stream, last.map(<[u8]>::to_vec)));
        Ok(())
    }
    fn grpc_close(&mut self, stream: u32) {
        self.grpc.push(push::Sent::Close(stream));
    }
}

/// A request's route, the instance its pin header names if any, and with
/// learned services the cluster it goes to.
struct Request {
    route: String,
    pin: Option<String>,
    cluster: Option<String>,
}

/// The configuration's `pinHeader`, the default.
const PIN_HEADER: &str = "x-nacos-instance";

impl RequestFacts for Request {
    fn route_name(&mut self) -> Option<&str> {
        Some(&self.route)
    }
    fn authority(&mut self) -> Option<&str> {
        None
    }
    fn cluster_name(&mut self) -> Option<&str> {
        self.cluster.as_deref()
    }
}

impl RequestHost for Request {
    fn header(&mut self, name: &str) -> Option<String> {
        self.pin.clone().filter(|_| name == PIN_HEADER)
    }
    fn upstream_hosts(&mut self) -> Option<&crate::pure::routing::upstream_hosts::RoutableHosts> {
        None
    }
}

/// One root context: a worker thread runs one per configuration alive.
struct Vm {
    /// The worker thread (Envoy's Wasm VM) running it.
    thread: usize,
    /// Past it, this root context is gone (`u64::MAX` while current).
    retire_at: u64,
    id: u64,
    engine: Option<Engine>,
    engine_id: u64,
    gen: usize,
    configured_at: u64,
    outbox: SimOutbox,
    clock: GatewayClock,
    clock_ms: u64,
    /// When (simulation time) this VM last read the gateway clock: its
    /// requests are judged at `clock_ms`, read then.
    clock_read_at: u64,
    poller: bool,
}

struct Config {
    raw: String,
    bounds: Bounds,
    /// Its shared-data keys, as its VMs name them.
    keys: ConfigKeys,
    fail_closed: bool,
    /// The first configuration identical to it (`same_as`).
    same: usize,
}

/// A scripted answer, its delay, and the instances it lists (usable, all, and
/// the usable ones' address numbers as a mask).
type Scripted = (Option<(u16, Vec<u8>)>, u64, (usize, usize, u64));

struct Call {
    gen: usize,
    /// `None` for a login.
    service: Option<usize>,
    sent: u64,
    /// When its answer (or its timeout) comes.
    ends: u64,
    token: Option<String>,
    usable: usize,
    listed: usize,
    usable_mask: u64,
}

pub struct World {
    p: Params,
    rng: Rng,
    now: u64,
    wall_offset: i64,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    /// Every root context started, current or lingering or gone.
    vms: Vec<Vm>,
    /// Per worker thread: until when it is stalled.
    stalled_until: Vec<u64>,
    store: SimStore,
    /// The gateway's stats, one per name as Envoy sums them over the VMs.
    metrics: SimMetrics,
    registry: Registry,
    configs: Vec<Config>,
    pending: BTreeMap<(usize, u64, u32), Call>,
    profile: Profile,
    request_gap: u64,
    requests: u64,
    engines: u64,
    check: Checker,
    trace: VecDeque<String>,
    /// The store before the last VM callback, and whose it was, for racing views.
    before_last: Option<(usize, u64, SimStore)>,
    /// Requests routed in the steady phase: (service, endpoint) → count.
    pub shares: BTreeMap<(usize, String), u64>,
    /// When each service last changed in the registry.
    changed_at: Vec<u64>,
    /// `usable_instances` checks due: (when, service, the change it follows).
    gauge_due: Vec<(u64, usize, u64)>,
    pub events: u64,
    /// Deaths, failed responses and avoidance: their own random numbers, so
    /// that a seed without deaths runs as it did before they were modelled.
    side: Rng,
    /// Draws what filters, pins and the protection threshold do.
    views_rng: Rng,
    avoid: AvoidChecks,
    /// Trace every tick (`SIM_VERBOSE`), not only those that did something.
    verbose: bool,
    push: push::Model,
    /// Learned services: their checks, their own random numbers, and until
    /// when a burst of first requests contends for shared data.
    learned: Option<LearnedChecks>,
    learn_rng: Rng,
    /// Which sparse first requests are followed by no other request for a
    /// while: a generator of its own, so that drawing them leaves the other
    /// draws of the bursts alone.
    lone_rng: Rng,
    /// Per configuration: whether its bursts are sparse.
    sparse_configs: BTreeMap<usize, bool>,
    contended_until: u64,
    flap_rng: Rng,
    /// (VM, learned service) each VM guarded: from a request there, or from
    /// the shared list.
    vm_learned: BTreeSet<(usize, usize)>,
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut p = Params::draw(&mut rng);
        let mut side = Rng::new(seed ^ 0xa701_d1ed_dead_0001);
        p.draw_avoidance(&mut side);
        p.learned = LearnedSettings::draw(seed, p.services);
        if p.learned.is_some() {
            // Deaths are checked per guard index, which learning reorders.
            p.deaths = false;
        }
        let learned = p
            .learned
            .map(|l| LearnedChecks::new(l, p.services, p.credentials));
        let mut views_rng = Rng::new(seed ^ 0x7173_f11e_7e25_0002);
        p.views = Views::draw(p.services, &mut views_rng);
        if p.learned.is_some() {
            // Filters and pins belong to rules, and learned services have none.
            p.views = Views {
                per_service: vec![views::View::default(); p.services],
                ..Views::default()
            };
        }
        let tick = (p.interval / 20).clamp(10, 50);
        let late_tick = tick + tick / 10;
        let avoid = AvoidChecks::new(
            p.services,
            Policy {
                avoid_ms: p.avoid_ms,
                max_avoided_percent: p.max_avoided_percent,
                slack: 2 * late_tick + 2,
                // Polls go one at a time: the asked one may wait for the
                // others' answers.
                poll_within: (p.services as u64 + 1) * p.max_delay + 3 * late_tick + 2,
            },
        );
        let mut registry = Registry::new(p.services, &mut rng);
        let mut check = Checker::new(p.services);
        // The confirming poll goes on the poller's next tick, or from the answer
        // callback itself; a login first if the token is due.
        let login = if p.credentials {
            p.max_delay + late_tick
        } else {
            0
        };
        check.confirm_within = late_tick + 2 + login;
        registry.set_views(&p.views.per_service);
        let mut push = push::Model::new(seed, p.interval, p.services);
        if p.learned.is_some() {
            // The push model subscribes the configured services; learned ones
            // are modelled on polls alone.
            push = push.without_push();
        }
        p.push = push.params.clone();
        let mut flap_rng = Rng::new(seed ^ 0xf1a9_f1a9_0000_0001);
        // `SIM_NO_FLAPS=1` runs the seeds as they were before flaps were
        // modelled, to tell what a failure owes to them (docs/testing.md,
        // "Flaps and reloads").
        let flaps_on = std::env::var_os("SIM_NO_FLAPS").is_none();
        p.flaps = flaps_on && p.lingers() && flap_rng.chance(600);
        // A generator of its own, so that a seed drawn without sparse bursts
        // runs as it did before they were modelled (docs/testing.md, "Sparse
        // bursts").
        let sparse_drawn = Rng::new(seed ^ 0x5ba5_5ba5_0000_0002).chance(500);
        p.sparse_bursts = p.learned.is_some()
            && std::env::var_os("SIM_NO_SPARSE").is_none()
            && (sparse_drawn || std::env::var_os("SIM_SPARSE_BURSTS").is_some());
        let mut world = Self {
            check,
            rng,
            now: 0,
            wall_offset: 36_000_000,
            seq: 0,
            queue: BinaryHeap::new(),
            vms: Vec::new(),
            stalled_until: vec![0; p.vms],
            store: SimStore::default(),
            metrics: SimMetrics::default(),
            registry,
            configs: Vec::new(),
            pending: BTreeMap::new(),
            profile: Profile::Calm,
            request_gap: p.interval,
            requests: 0,
            engines: 0,
            trace: VecDeque::new(),
            before_last: None,
            shares: BTreeMap::new(),
            changed_at: vec![0; p.services],
            gauge_due: Vec::new(),
            events: 0,
            side,
            views_rng,
            avoid,
            verbose: std::env::var_os("SIM_VERBOSE").is_some(),
            push,
            learned,
            learn_rng: Rng::new(seed ^ 0x1ea7_4ed5_e7c1_0002),
            lone_rng: Rng::new(seed ^ 0x1ea7_4ed5_e7c1_0003),
            sparse_configs: BTreeMap::new(),
            contended_until: 0,
            vm_learned: BTreeSet::new(),
            flap_rng,
            p,
        };
        world.add_config(world.p.max_stale, world.p.fail_closed);
        for thread in 0..world.p.vms {
            // All VMs configure within a few milliseconds: "at the same time".
            let at = world.rng.below(3);
            let configure = Kind::Configure {
                thread,
                gen: 0,
                linger: 0,
            };
            world.push(at, configure);
        }
        let first = world.rng.below(world.p.interval);
        for kind in [Kind::Request, Kind::Rate, Kind::Churn, Kind::Weather] {
            world.push(first, kind);
        }
        for kind in [Kind::Jump, Kind::Stall, Kind::Edit, Kind::Revoke] {
            let at = world
                .rng
                .between(world.p.interval, world.p.steady_at.max(1));
            world.push(at, kind);
        }
        if world.p.deaths {
            let at = world.side.between(world.p.interval, 10 * world.p.interval);
            world.push(at.min(world.p.steady_at), Kind::Death);
        }
        if world.p.views.relabels {
            let at = world
                .views_rng
                .between(world.p.interval, world.p.steady_at.max(1));
            world.push(at, Kind::Relabel);
        }
        if world.p.flaps {
            let at = world
                .flap_rng
                .between(world.p.interval, 4 * world.p.interval);
            world.push(at.min(world.p.steady_at), Kind::Flap);
            let at = world
                .flap_rng
                .between(world.p.interval, 10 * world.p.interval);
            world.push(at.min(world.p.steady_at), Kind::Reload { again: true });
        }
        if world.learned.is_some() {
            let at = world
                .learn_rng
                .between(world.p.interval, 10 * world.p.interval);
            world.push(at.min(world.p.steady_at), Kind::Quiet);
        }
        world.note(format!("params {:?}", world.p));
        world
    }

    fn add_config(&mut self, max_stale: u64, fail_closed: bool) {
        let raw = self.p.config(max_stale, fail_closed);
        let tick = (self.p.interval / 20).clamp(10, 50);
        let same = self
            .configs
            .iter()
            .position(|c| c.raw == raw)
            .unwrap_or(self.configs.len());
        self.configs.push(Config {
            same,
            keys: ConfigKeys::new(raw.as_bytes()),
            raw,
            fail_closed,
            bounds: Bounds {
                interval: self.p.interval,
                timeout: self.p.timeout,
                max_delay: self.p.max_delay,
                max_stale,
                tick,
                tick_jitter: tick / 10,
                push_extra: self.p.push.as_ref().map_or(0, |push| {
                    push.safety + self.p.services as u64 * self.p.max_delay
                }),
                probe_window: self.p.push.as_ref().map_or(0, |_| 5_000 + self.p.timeout),
            },
        });
    }

    fn push(&mut self, at: u64, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn note(&mut self, line: String) {
        if self.verbose {
            eprintln!("t={} {line}", self.now);
        }
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now));
    }

    pub fn trace(&self) -> String {
        self.trace.iter().map(|l| format!("  {l}\n")).collect()
    }

    fn wall(&self) -> u64 {
        self.now.saturating_add_signed(self.wall_offset)
    }

    fn steady(&self) -> bool {
        self.now >= self.p.steady_at
    }

    /// Shares are counted once every VM routes by the final list: after a stall
    /// begun before the steady phase (up to 5 intervals), the lease running out
    /// (3 more), and a poll, its answer and two ticks.
    /// A login backoff begun before (up to 30 s) holds polling back as long.
    fn counting(&self) -> bool {
        let settle = 10 * self.p.interval + 2 * self.p.timeout;
        let calm = self.check.calm_since().saturating_add(settle);
        // Every avoidance ended, and each VM ticked since.
        let quiet = self.avoid.quiet_from() + 2 * settle;
        self.now >= calm.max(self.p.steady_at + settle).max(quiet)
    }

    /// Run to the end; the first broken invariant, with the trace's tail.
    pub fn run(&mut self) -> Verdict {
        while let Some(Reverse(event)) = self.queue.pop() {
            if event.at > self.p.end_at {
                break;
            }
            self.now = event.at;
            self.events += 1;
            self.step(event)?;
            self.push_step()?;
            let credentials = self.p.credentials;
            self.check.deadlines(self.now, credentials)?;
            self.check_asked_polls()?;
            self.check_confirming_polls()?;
            self.check_gauges()?;
            self.check_learned_polls()?;
        }
        if self.counting() {
            // The registry has been still since the steady phase began.
            for service in 0..self.p.services {
                self.gauge_due
                    .push((self.now, service, self.changed_at[service]));
            }
            self.check_gauges()?;
        }
        self.check_shares()
    }

    /// Invariant 17: each poll a learned service's request called for was sent.
    fn check_learned_polls(&mut self) -> Verdict {
        let Some(learned) = &mut self.learned else {
            return Ok(());
        };
        let bounds = self.configs[self.configs.len() - 1].bounds;
        let lease_ms = self.p.interval * crate::engine::sharing::LEASE_INTERVALS;
        let check = &self.check;
        learned.deadlines(self.now, &bounds, lease_ms, |from, to, service| {
            check.disturbed_apart_from_edits(from, to, service)
        })
    }

    /// The `usable_instances` checks due by now, each unless the service changed
    /// again since (a later check follows that change).
    fn check_gauges(&mut self) -> Verdict {
        let now = self.now;
        if self.gauge_due.iter().all(|d| d.0 > now) {
            return Ok(());
        }
        let (due, later): (Vec<_>, Vec<_>) = self.gauge_due.iter().partition(|d| d.0 <= now);
        self.gauge_due = later;
        let bounds = self.configs[self.configs.len() - 1].bounds;
        for (_, service, changed) in due {
            if self.changed_at[service] != changed {
                continue;
            }
            let newest = self.configs.len() - 1;
            if let Some(learned) = &self.learned {
                if !learned.gauge_applies((newest, service), changed, now, &bounds) {
                    continue;
                }
            }
            let view = self.p.views.per_service.get(service);
            let segment = view.and_then(views::View::gauge_segment);
            let gauge = self.metrics.get(&usable_gauge(service, segment.as_deref()));
            let listed = self.registry.services[service].usable().count();
            self.check
                .usable_gauge(service, (changed, now), (gauge, listed), &bounds)?;
        }
        Ok(())
    }

    fn step(&mut self, event: Event) -> Verdict {
        let at = self.now;
        let interval = self.p.interval;
        match event.kind {
            Kind::Configure { thread, .. } if self.stalled_until[thread] > at => {
                // A stalled VM runs nothing; its events wait, in order.
                let until = self.stalled_until[thread];
                self.push(until, event.kind);
                Ok(())
            }
            Kind::Response(ref r) if self.stalled_until[self.vms[r.vm].thread] > at => {
                let until = self.stalled_until[self.vms[r.vm].thread];
                self.push(until, event.kind);
                Ok(())
            }
            Kind::Push(ref e)
                if e.vm()
                    .is_some_and(|vm| self.stalled_until[self.vms[vm].thread] > at) =>
            {
                let until = e
                    .vm()
                    .map_or(at, |vm| self.stalled_until[self.vms[vm].thread]);
                self.push(until, event.kind);
                Ok(())
            }
            Kind::Push(e) => self.push_event(e),
            Kind::LearnedRequest { vm, .. } if self.stalled_until[self.vms[vm].thread] > at => {
                let until = self.stalled_until[self.vms[vm].thread];
                self.push(until, event.kind);
                Ok(())
            }
            Kind::Tick { vm, .. } | Kind::Answer { vm, .. }
                if self.stalled_until[self.vms[vm].thread] > at =>
            {
                let until = self.stalled_until[self.vms[vm].thread];
                self.push(until, event.kind);
                Ok(())
            }
            Kind::Configure {
                thread,
                gen,
                linger,
            } => {
                let vm = self.start_root(thread, linger);
                // A VM loaded again starts later than its configuration. (A
                // learned service starts on the VM's first request of it.)
                if self.learned.is_none() {
                    self.check.vm_starts(vm, None, false, self.now);
                }
                self.vm_callback(vm, Callback::Configure(gen))?;
                self.learned_burst(vm);
                Ok(())
            }
            Kind::LearnedRequest {
                vm,
                engine,
                service,
            } => {
                if !self.live(vm, engine) {
                    return Ok(());
                }
                self.request_on(vm, service)
            }
            Kind::Quiet => {
                if self.steady() {
                    return Ok(());
                }
                let Some(learned) = &mut self.learned else {
                    return Ok(());
                };
                let (next, what) = learned.quiet(&mut self.learn_rng, at, interval);
                self.note(what);
                self.push(next.min(self.p.steady_at), Kind::Quiet);
                Ok(())
            }
            Kind::Tick { vm, engine } => {
                if !self.live(vm, engine) {
                    return Ok(());
                }
                self.vm_callback(vm, Callback::Tick)
            }
            Kind::Answer {
                vm,
                engine,
                token,
                answer,
            } => {
                if !self.live(vm, engine) {
                    return Ok(());
                }
                self.vm_callback(vm, Callback::Answer(token, answer))
            }
            Kind::Request => {
                if self.requests < MAX_REQUESTS {
                    self.requests += 1;
                    let gap = if self.steady() {
                        self.p.steady_gap
                    } else {
                        self.rng.between(1, 2 * self.request_gap)
                    };
                    self.push(at + gap, Kind::Request);
                }
                self.request()
            }
            Kind::Rate => {
                self.request_gap =
                    self.rng
                        .pick(&[1, 5, 50, interval / 4, interval, 4 * interval, 60_000]);
                if self.steady() {
                    return Ok(());
                }
                let next = at + self.rng.between(2, 20) * interval;
                self.push(next, Kind::Rate);
                self.note(format!("request gap ~{} ms", self.request_gap));
                Ok(())
            }
            Kind::Churn => {
                if self.steady() {
                    // The first churn event of the steady phase (the last one):
                    // most seeds stay still with one service emptied, which a
                    // snapshot that ignored it would serve for the whole phase;
                    // with one service, half of them, so the others still
                    // count shares.
                    let per_mille = if self.p.services > 1 { 900 } else { 500 };
                    if self.rng.chance(per_mille) {
                        let service = self.rng.below(self.p.services as u64) as usize;
                        let what = self.registry.empty(service, at);
                        self.note(format!("registry: {what}"));
                        self.changed_at[service] = at;
                        let bounds = self.configs[self.configs.len() - 1].bounds;
                        let due = at + bounds.routed_after_change() + bounds.confirm_empty();
                        self.gauge_due.push((due, service, at));
                    }
                    return Ok(());
                }
                let (service, what) = self.registry.churn(&mut self.rng, at);
                self.registry_changed(service, &what);
                let next = at + self.rng.between(1, 4 * interval);
                self.push(next, Kind::Churn);
                Ok(())
            }
            Kind::Weather => {
                self.profile = if self.steady() {
                    Profile::Calm
                } else {
                    match self.rng.below(10) {
                        0..=4 => Profile::Calm,
                        5..=7 => Profile::Flaky,
                        8 => Profile::Outage,
                        _ => Profile::Forbidden,
                    }
                };
                self.note(format!("nacos now {:?}", self.profile));
                if !self.steady() {
                    let next = (at + self.rng.between(1, 20) * interval).min(self.p.steady_at);
                    self.push(next, Kind::Weather);
                }
                Ok(())
            }
            Kind::Jump => {
                if self.steady() {
                    return Ok(());
                }
                let size = self.rng.pick(&[2_000, 60_000, 3_600_000, 7_200_000]) as i64;
                let step = if self.rng.chance(500) { size } else { -size };
                self.wall_offset += step;
                self.note(format!("wall clock steps {step} ms"));
                let gen = self.configs.len() - 1;
                let bounds = self.configs[gen].bounds;
                let services: Vec<usize> = self
                    .push_polled_services()
                    .into_iter()
                    .filter(|s| {
                        self.learned
                            .as_ref()
                            .is_none_or(|l| l.busy_through_jump(self.same_as(gen), *s, at, &bounds))
                    })
                    .collect();
                self.check.jump(at, gen, &services, &bounds);
                let next = at + self.rng.between(5, 40) * interval;
                self.push(next, Kind::Jump);
                Ok(())
            }
            Kind::Stall => {
                if self.steady() {
                    return Ok(());
                }
                let vm = self.rng.below(self.p.vms as u64) as usize;
                let until = at + self.rng.between(interval, 5 * interval);
                self.stalled_until[vm] = until;
                let all = self.stalled_until.iter().copied().min().unwrap_or(0);
                if all > at {
                    self.check.frozen(at, all);
                }
                self.check.trouble_until(at, until, Trouble::Stall);
                self.note(format!("VM {vm} stalls until {until}"));
                let next = at + self.rng.between(10, 60) * interval;
                self.push(next, Kind::Stall);
                Ok(())
            }
            Kind::Edit => {
                if self.steady() {
                    return Ok(());
                }
                let max_stale = self.rng.pick(&[0, interval, 3_000, 30_000]);
                let fail_closed = self.rng.chance(500);
                self.add_config(max_stale, fail_closed);
                let gen = self.configs.len() - 1;
                self.check.configuration_starts(gen);
                let settle = 2 * (interval / 20).clamp(10, 50) + 10;
                // Each thread's old root context serves on for 0 to
                // LINGER_INTERVALS intervals where they may
                // (`Params::lingers`; drawn all the same, so that the seed's
                // other draws stay as they were).
                let linger_limit = if self.p.lingers() {
                    LINGER_INTERVALS
                } else {
                    0
                };
                let mut lingers: Vec<u64> = (0..self.p.vms)
                    .map(|_| self.rng.between(0, LINGER_INTERVALS * interval))
                    .map(|drawn| drawn * linger_limit / LINGER_INTERVALS)
                    .collect();
                // In seeds with flaps, half the edits leave a long-lived stream
                // on one thread: its old root context serves on for up to
                // LONG_LINGER_INTERVALS (Envoy keeps a filter configuration
                // while a stream that began under it runs).
                if self.p.flaps && self.flap_rng.chance(500) {
                    let thread = self.flap_rng.below(self.p.vms as u64) as usize;
                    let long = self
                        .flap_rng
                        .between(LINGER_INTERVALS, LONG_LINGER_INTERVALS);
                    lingers[thread] = long * interval;
                }
                let longest = lingers.iter().copied().max().unwrap_or(0);
                // The old configuration winds down as its root contexts go (its
                // poller among them): trouble until the last is gone.
                self.check
                    .trouble_until(at, at + 2 + longest + settle, Trouble::Edit);
                self.note(format!(
                    "edit: config {gen}, maxStaleMs {max_stale}, old roots linger {lingers:?}"
                ));
                for (thread, linger) in lingers.into_iter().enumerate() {
                    let when = at + self.rng.below(3);
                    let configure = Kind::Configure {
                        thread,
                        gen,
                        linger,
                    };
                    self.push(when, configure);
                }
                let mut next = at + self.rng.between(20, 80) * interval;
                if self.p.flaps {
                    // Edits under load: two configurations live at once often.
                    next = at + self.flap_rng.between(5, 20) * interval;
                }
                self.push(next, Kind::Edit);
                Ok(())
            }
            Kind::Death => self.death(),
            Kind::Relabel => {
                if self.steady() {
                    return Ok(());
                }
                let (service, what) = self.registry.relabel(&mut self.views_rng, at);
                self.registry_changed(service, &what);
                let next = at + self.views_rng.between(1, 8 * interval);
                self.push(next, Kind::Relabel);
                Ok(())
            }
            Kind::Learn { service, endpoint } => {
                if self.steady() || !self.registry.learn_dead(service, &endpoint, at) {
                    return Ok(());
                }
                let what = format!("nacos learns s{service} {endpoint} died");
                self.registry_changed(service, &what);
                Ok(())
            }
            Kind::Flap => {
                if self.steady() {
                    return Ok(());
                }
                // Shorter than an interval: a poller may miss it, or see it
                // where another configuration's poller does not.
                let lasts = self.flap_rng.between(1, interval / 4);
                if at + lasts < self.p.steady_at {
                    let (what, flap) = self.registry.flap(&mut self.flap_rng, at);
                    self.registry_changed(flap.service, &what);
                    self.push(at + lasts, Kind::Settle(flap));
                }
                let next = at + self.flap_rng.between(1, 2 * interval);
                self.push(next, Kind::Flap);
                Ok(())
            }
            Kind::Settle(flap) => {
                if self.registry.settle(&flap, at) {
                    let what = format!("s{} {} flap over", flap.service, flap.endpoint);
                    self.registry_changed(flap.service, &what);
                }
                // A root context that starts within an interval of a flap may
                // find one configuration's list of it stored, a list the other
                // configuration's poller never saw. Reloads drawn on their own
                // rarely land there (one of 600 seeds found issue 24's
                // defect 5), so half the flaps draw one.
                if self.flap_rng.chance(500) {
                    let when = at + self.flap_rng.between(0, interval);
                    self.push(when, Kind::Reload { again: false });
                }
                Ok(())
            }
            Kind::Response(response) => self.response(*response),
            Kind::Reload { again } => {
                if self.steady() {
                    return Ok(());
                }
                let thread = self.flap_rng.below(self.p.vms as u64) as usize;
                let current = self
                    .vms
                    .iter()
                    .rev()
                    .find(|root| root.thread == thread && root.retire_at == u64::MAX)
                    .map(|root| root.gen);
                if let Some(gen) = current {
                    // As an edit of one thread to the same configuration: its
                    // poller may be the root that went, and its lease then runs
                    // out before another VM polls.
                    let lease = interval * crate::engine::sharing::LEASE_INTERVALS;
                    let settle = 2 * (interval / 20).clamp(10, 50) + 10;
                    self.check
                        .trouble_until(at, at + lease + settle, Trouble::Edit);
                    self.note(format!("thread {thread}'s VM fails and is loaded again"));
                    let configure = Kind::Configure {
                        thread,
                        gen,
                        linger: 0,
                    };
                    self.push(at, configure);
                }
                if again {
                    let next = at + self.flap_rng.between(3, 15) * interval;
                    self.push(next, Kind::Reload { again: true });
                }
                Ok(())
            }
            Kind::Revoke => {
                if self.steady() {
                    return Ok(());
                }
                self.registry.revoke_tokens();
                self.check.trouble(at, Trouble::Login);
                self.note("nacos revokes every token".into());
                let next = at + self.rng.between(10, 60) * interval;
                self.push(next, Kind::Revoke);
                Ok(())
            }
        }
    }

    /// Registry change `what` of `service` now: the gauge is checked once the
    /// change has had time to reach every VM (an emptied service's list is
    /// confirmed by a second poll first).
    fn registry_changed(&mut self, service: usize, what: &str) {
        let at = self.now;
        self.note(format!("registry: {what}"));
        let bounds = self.configs[self.configs.len() - 1].bounds;
        // A change that replaces the pending check of one that emptied the
        // service (a deregistered instance's metadata, just after) still
        // waits for the confirming poll (seed 5697).
        let previous = self.changed_at[service];
        let pending = self
            .gauge_due
            .iter()
            .any(|(_, s, changed)| *s == service && *changed == previous);
        let since = if pending { previous } else { at };
        let emptied = self.registry.services[service].emptied_since(since);
        let confirm = if emptied { bounds.confirm_empty() } else { 0 };
        self.changed_at[service] = at;
        self.gauge_due
            .push((at + bounds.routed_after_change() + confirm, service, at));
    }

    /// The learned services VM `v` took from the shared list in its last
    /// callback start from the list stored then, as on a first request.
    fn note_listed_starts(&mut self, v: usize, racing: bool) {
        let noted = self.vm_learned.range((v, 0)..(v + 1, 0)).count();
        if self.learned.is_none() || noted == self.p.services {
            return;
        }
        let Some(engine) = &self.vms[v].engine else {
            return;
        };
        for service in learned::guarded_services(engine) {
            if self.vm_learned.insert((v, service)) {
                self.check.vm_starts(v, Some(service), racing, self.now);
            }
        }
    }

    /// Now and then, while another configuration is alive, service `s` flaps
    /// for the millisecond this poll of configuration `gen` reads it: a list
    /// only this configuration's poller sees. Flaps drawn on their own land
    /// between one configuration's polls and in another's rarely.
    fn flap_at_poll(&mut self, gen: usize, s: usize) {
        let now = self.now;
        let other_alive = self
            .vms
            .iter()
            .any(|root| root.gen != gen && root.engine.is_some() && root.retire_at > now);
        if !self.p.flaps || !other_alive || now + 1 >= self.p.steady_at {
            return;
        }
        if !self.flap_rng.chance(FLAP_AT_POLL_PER_MILLE) {
            return;
        }
        let (what, flap) = self.registry.flap_of(&mut self.flap_rng, s, now);
        self.registry_changed(s, &what);
        self.push(now + 1, Kind::Settle(flap));
    }

    /// The first configuration identical to `gen`: an edit back to it reuses
    /// its shared-data keys (lease, learned list), so the learned checks take
    /// the two for one.
    fn same_as(&self, gen: usize) -> usize {
        self.configs.get(gen).map_or(gen, |c| c.same)
    }

    /// Whether root context `vm` still runs, with engine `engine`.
    fn live(&self, vm: usize, engine: u64) -> bool {
        let root = &self.vms[vm];
        root.engine_id == engine && root.retire_at > self.now
    }

    /// A new root context on `thread`, with a fresh id (Envoy's host draws one
    /// per root context); the thread's current one lingers `linger` ms more.
    fn start_root(&mut self, thread: usize, linger: u64) -> usize {
        let now = self.now;
        for v in 0..self.vms.len() {
            let root = &self.vms[v];
            if root.thread == thread && root.retire_at == u64::MAX {
                let gen = self.same_as(root.gen);
                self.vms[v].retire_at = now + linger;
                if let Some(learned) = &mut self.learned {
                    learned.retired(gen, now + linger);
                }
            }
        }
        // A root context that goes at once closes its push links (`host::root`).
        let gone: Vec<usize> = (0..self.vms.len())
            .filter(|v| self.vms[*v].thread == thread && self.vms[*v].retire_at == now)
            .collect();
        for v in gone {
            // Its answers, if any, find no live root: nothing to check.
            let _ = self.push_retire(v);
        }
        let id = self.rng.next_u64() | 1;
        self.vms.push(Vm {
            thread,
            retire_at: u64::MAX,
            id,
            engine: None,
            engine_id: 0,
            gen: 0,
            configured_at: now,
            outbox: SimOutbox::default(),
            clock: GatewayClock::default(),
            clock_ms: 0,
            clock_read_at: 0,
            poller: false,
        });
        self.vms.len() - 1
    }

    fn request(&mut self) -> Verdict {
        let running: Vec<usize> = (0..self.vms.len())
            .filter(|vm| {
                let root = &self.vms[*vm];
                self.stalled_until[root.thread] <= self.now
                    && root.engine.is_some()
                    && root.retire_at > self.now
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let vm = running[self.rng.below(running.len() as u64) as usize];
        let service = self.rng.below(self.p.services as u64) as usize;
        if let Some(learned) = &self.learned {
            if learned.quiet_until[service] > self.now {
                return Ok(());
            }
        }
        self.request_on(vm, service)
    }

    /// Every service's first request on root context `vm`, just configured,
    /// within a few milliseconds: what every worker gets at start-up and after
    /// an edit (whose new configuration starts with an empty learned list),
    /// while the others' writes contend for shared data.
    fn learned_burst(&mut self, vm: usize) {
        if self.learned.is_none() {
            return;
        }
        self.contended_until = self.now + BURST_MS;
        let engine = self.vms[vm].engine_id;
        // In seeds with sparse bursts, those of half the configurations: each
        // service's first request comes on about one VM of all, as a request
        // lands on one worker. Drawn per configuration: a VM whose burst
        // gave it every service would hand in what another's race lost.
        let drawn = self.p.sparse_bursts && self.learn_rng.chance(500);
        let gen = self.vms[vm].gen;
        let sparse = *self.sparse_configs.entry(gen).or_insert(drawn);
        let one_in_vms = (1000 / self.p.vms as u64).max(200);
        // Each worker's first request is for a service of its own drawing:
        // two first writes of the learned list or the inbox that race then
        // name different services (issue 24, defect 3).
        let services = self.p.services;
        let first = self.learn_rng.below(services as u64) as usize;
        for service in (0..services).map(|i| (first + i) % services) {
            if sparse && !self.learn_rng.chance(one_in_vms) {
                continue;
            }
            let at = self.now + self.learn_rng.below(4);
            if sparse {
                self.lone_first_request(gen, service, at);
            }
            self.push(
                at,
                Kind::LearnedRequest {
                    vm,
                    engine,
                    service,
                },
            );
        }
    }

    /// Half the time, a sparse burst's first request of `service` at `at`, on a
    /// root context of configuration `gen`, is its only one for longer than
    /// its first poll may take: a service with little traffic. Its poll then
    /// comes of the hand-in alone, with no later request that finds its
    /// snapshot not fresh and lists it again (`relist_after_request`), which
    /// would repair a hand-in that shared data lost (issue 24, defect 3).
    fn lone_first_request(&mut self, gen: usize, service: usize, at: u64) {
        if self.steady() || !self.lone_rng.chance(500) {
            return;
        }
        let bounds = self.configs[gen].bounds;
        let Some(learned) = &mut self.learned else {
            return;
        };
        let until = at + learned.learned_within(&bounds) + 1;
        let quiet = &mut learned.quiet_until[service];
        *quiet = (*quiet).max(until);
        self.note(format!(
            "s{service} gets no request after its first until {until}"
        ));
    }

    /// The store a learned request's callback sees: racing another VM's
    /// callback of the same moment, and contended in a burst.
    fn learned_view(&mut self, vm: usize) -> (Option<SimStore>, Option<(Rng, u64)>) {
        let Some(learned) = &self.learned else {
            return (None, None);
        };
        let per_mille = learned.settings.contention;
        // Every worker serves its first requests at once: two of them a
        // millisecond apart read shared data before either wrote at least
        // half the time, whatever the seed's races elsewhere.
        let burst = self.now <= self.contended_until;
        let race = if burst {
            self.p.race.max(learned::BURST_RACE)
        } else {
            self.p.race
        };
        let stale = self.racing_view(vm, race);
        self.before_last = Some((vm, self.now, self.store.clone()));
        let contention = burst.then(|| (Rng::new(self.learn_rng.next_u64()), per_mille));
        (stale, contention)
    }

    fn request_on(&mut self, vm: usize, service: usize) -> Verdict {
        let (stale, contention) = self.learned_view(vm);
        let racing = stale.is_some();
        let refused_key = "nacos_guard.learned_services_refused";
        let refused_before = self.metrics.get(refused_key).unwrap_or(0);
        let cluster = self.learned.as_ref().map(|_| learned::cluster(service));
        // Not in the steady phase: a pin moves the weighted rotation, whose
        // shares that phase counts.
        let pinned = if self.steady() {
            0
        } else {
            self.p.views.pinned
        };
        let pin = (pinned > 0 && self.views_rng.chance(pinned))
            .then(|| format!("10.0.{service}.{}:80", self.views_rng.between(1, 6)));
        let Vm {
            engine,
            clock_ms,
            clock_read_at,
            gen,
            configured_at,
            ..
        } = &mut self.vms[vm];
        let (gen, configured, now_gw, read_at) = (*gen, *configured_at, *clock_ms, *clock_read_at);
        let Some(engine) = engine else { return Ok(()) };
        let mut view = View::new(&mut self.store, stale.as_ref());
        if let Some((rng, per_mille)) = contention {
            view = view.contended(rng, per_mille);
        }
        let mut request = Request {
            route: format!("r{service}"),
            pin: pin.clone(),
            cluster,
        };
        let action = engine.on_request(now_gw, &mut request, &mut self.metrics, &mut view);
        let beaten = view.beaten;
        let mut routed = None;
        let outcome = match action {
            RequestAction::Route {
                endpoint,
                routed: pick,
                ..
            } => {
                routed = Some(pick);
                format!("route {endpoint}")
            }
            RequestAction::Reject(response) => {
                let code = if response.body.contains("no_healthy_instance") {
                    "no_healthy_instance"
                } else if response.body.contains("instance_deregistered") {
                    "instance_deregistered"
                } else if response.body.contains("registry_unavailable") {
                    "registry_unavailable"
                } else {
                    "other"
                };
                format!("reject {code}")
            }
            RequestAction::PassThrough => "pass".to_string(),
            RequestAction::Ignore => "ignore".to_string(),
        };
        let pinned_to = pin
            .as_deref()
            .map_or(String::new(), |p| format!(" pinned {p}"));
        let race = if stale.is_some() { " (stale view)" } else { "" };
        let beaten = if beaten > 0 {
            format!(" ({beaten} CAS beaten)")
        } else {
            String::new()
        };
        self.note(format!(
            "VM {vm} request s{service}{pinned_to} gw={now_gw} -> {outcome}{race}{beaten}"
        ));
        let bounds = self.configs[gen].bounds;
        let now = self.now;
        let same = self.same_as(gen);
        // A learned service's first request on a VM starts it from the stored
        // list, whatever the VM's last clock reading.
        let heard_by = if self.learned.is_some() { now } else { read_at };
        if let Some(learned) = &mut self.learned {
            let ignored = outcome == "ignore";
            // A service that may have idled since its last request, or that
            // a full list left alone, is trouble for it until it is polled
            // again and followed.
            if let Some(from) = learned.unpolled_since(service, now, ignored, &bounds) {
                let until = now + learned.relearned_within(&bounds) + bounds.routed_after_change();
                self.check
                    .trouble_until(from, until, Trouble::Idle(service));
            }
            let refused = self
                .metrics
                .get(refused_key)
                .unwrap_or(0)
                .wrapping_sub(refused_before);
            let since = now.saturating_sub(learned.may_hold_place(&bounds));
            let held = self.check.stalled_or_stepped(since, now);
            let first = learned.first_guarded(gen, service, ignored, now);
            learned.request(same, service, now, (ignored, refused, held), &bounds)?;
            if first {
                self.check.learned_service_starts(gen, service);
            }
            if !ignored && self.vm_learned.insert((vm, service)) {
                self.check.vm_starts(vm, Some(service), racing, now);
            }
            if ignored {
                return Ok(());
            }
        }
        let skipped = self.vms[vm]
            .engine
            .as_ref()
            .filter(|_| self.learned.is_none())
            .and_then(|e| e.guards.avoided_of(GuardId::from_index(service)));
        if let Some(skipped) = skipped {
            let check = &self.check;
            let moved = |from: u64| check.clock_moved(from, now);
            self.avoid.skipped(service, vm, now, skipped, moved)?;
        }
        match outcome.split_once(' ').unwrap_or((&outcome, "")) {
            ("route", endpoint) => {
                let listed = &self.registry.services[service];
                let stopped = listed.unusable_since(endpoint);
                let emptied = stopped.is_some_and(|at| listed.emptied_since(at));
                self.check
                    .routed(service, endpoint, (stopped, emptied), now, &bounds)?;
                self.push_routed(service, endpoint)?;
                self.check
                    .not_stale(service, (read_at, heard_by), &bounds)?;
                if let Some(pin) = pin.as_deref().filter(|pin| *pin != endpoint) {
                    if self.p.views.reject_deregistered {
                        return Err(format!(
                            "a request pinned to {pin} routed to {endpoint}, with onDeregistered reject"
                        ));
                    }
                    let n = views::endpoint_number(pin);
                    self.check
                        .pin_passed_over(service, n, (gen, configured), now, &bounds)?;
                }
                // A client may pin an instance the VM avoids: the pin wins.
                let pinned_here = pin.as_deref() == Some(endpoint);
                if self.registry.services[service].is_dead(endpoint) && !pinned_here {
                    let noticed = self.avoid.noticed_at(service, endpoint);
                    let calm = noticed.is_some_and(|t| self.calm(service, t));
                    self.avoid
                        .routed_to_dead(service, endpoint, vm, now, calm)?;
                }
                if let Some(routed) = routed {
                    self.answer_request(vm, service, endpoint, routed)?;
                }
                if self.counting() {
                    *self
                        .shares
                        .entry((service, endpoint.to_string()))
                        .or_default() += 1;
                }
                Ok(())
            }
            ("reject", "no_healthy_instance") => {
                self.check
                    .not_stale(service, (read_at, heard_by), &bounds)?;
                self.check
                    .no_healthy(service, gen, configured, now, &bounds)
            }
            ("reject", "instance_deregistered") => {
                let Some(pin) = pin.as_deref().filter(|_| self.p.views.reject_deregistered) else {
                    return Err("rejected instance_deregistered, unpinned or with reroute".into());
                };
                self.check
                    .not_stale(service, (read_at, heard_by), &bounds)?;
                let n = views::endpoint_number(pin);
                self.check
                    .pin_passed_over(service, n, (gen, configured), now, &bounds)
            }
            ("reject", "registry_unavailable") | ("pass", _) => {
                let policy_ok = (outcome == "pass") != self.configs[gen].fail_closed;
                if !policy_ok {
                    return Err(format!("onStale not followed: {outcome}"));
                }
                self.check.stale(service, gen, configured, now, &bounds)
            }
            _ => Err(format!("unexpected outcome {outcome}")),
        }
    }

    /// An instance dies while Nacos lists it (half the time Nacos learns it
    /// within 1–20 intervals), or a dead one comes back; from the steady phase
    /// on, every dead one is back.
    fn death(&mut self) -> Verdict {
        let at = self.now;
        if self.steady() {
            self.registry.revive_all();
            self.note("every dead instance is back".into());
            return Ok(());
        }
        let interval = self.p.interval;
        let service = self.side.below(self.p.services as u64) as usize;
        if self.side.chance(300) {
            if let Some(endpoint) = self.registry.revive(service, &mut self.side) {
                self.note(format!("s{service} {endpoint} is back"));
            }
        } else if let Some(endpoint) = self.registry.die(service, &mut self.side) {
            self.note(format!("s{service} {endpoint} dies, still listed"));
            if self.side.chance(500) {
                let learn = at + self.side.between(interval, 20 * interval);
                self.push(learn, Kind::Learn { service, endpoint });
            }
        }
        let next = at + self.side.between(1, 10) * interval;
        self.push(next.min(self.p.steady_at), Kind::Death);
        Ok(())
    }

    /// A request routed to `endpoint`: if its process is dead, Envoy answers a
    /// local 503 with an upstream-failure flag a little later; a live instance
    /// now and then answers with flags that are not its failure.
    fn answer_request(
        &mut self,
        vm: usize,
        service: usize,
        endpoint: &str,
        routed: Routed,
    ) -> Verdict {
        let dead = self.registry.services[service].is_dead(endpoint);
        let (flags, details) = if dead {
            self.side.pick(&DEAD_RESPONSES)
        } else if self.p.deaths && self.side.chance(20) {
            self.side.pick(&LIVE_RESPONSES)
        } else {
            return Ok(());
        };
        // Refused at once mostly; a connect timeout now and then.
        let delay = self.side.pick(&[1, 1, 2, 5, 20, 250]);
        let root = &self.vms[vm];
        let stamp = root
            .engine
            .as_ref()
            .and_then(|e| e.snapshot_health().get(service).map(|h| h.content_stamp));
        let response = Response {
            vm,
            engine: root.engine_id,
            service,
            endpoint: endpoint.to_string(),
            routed,
            stamp,
            flags,
            details,
        };
        self.push(self.now + delay, Kind::Response(Box::new(response)));
        Ok(())
    }

    /// Whether the engines' list of service `s` is certainly the registry's
    /// from `from` to now: no registry change of it for `routed_after_change`
    /// before, and nothing disturbed it.
    fn calm(&self, s: usize, since: u64) -> bool {
        let bounds = self.configs[self.configs.len() - 1].bounds;
        let settled = self.changed_at[s] + bounds.routed_after_change() + 2 * bounds.tick;
        let window = since.saturating_sub(bounds.interval.max(bounds.timeout) + bounds.timeout);
        settled < since && !self.check.disturbed(window, self.now, s)
    }

    /// The response reaches the VM's HTTP context: as the host does
    /// (`host::http`, `on_http_response_headers`), it reads the flags and, if
    /// they say the instance failed, tells the engine.
    fn response(&mut self, r: Response) -> Verdict {
        if !self.live(r.vm, r.engine) {
            // Its root context is gone: the filter chain drained without it.
            return Ok(());
        }
        if r.flags == 0 || !instance_failed(r.flags, Some(r.details)) {
            return Ok(());
        }
        let now = self.now;
        let failures = format!(
            "nacos_guard.service.public.DEFAULT_GROUP.s{}.instance_failures",
            r.service
        );
        let avoided = format!(
            "nacos_guard.service.public.DEFAULT_GROUP.s{}.instances_avoided",
            r.service
        );
        let before = (
            self.metrics.get(&failures).unwrap_or(0),
            self.metrics.get(&avoided).unwrap_or(0),
        );
        let root = &mut self.vms[r.vm];
        let now_gw = root.clock_ms;
        let Some(engine) = &mut root.engine else {
            return Ok(());
        };
        engine.on_routed_failure(
            r.routed,
            r.details,
            now_gw,
            &mut self.metrics,
            &mut self.store,
        );
        let stamp = engine
            .snapshot_health()
            .get(r.service)
            .map(|h| h.content_stamp);
        let after = (
            self.metrics.get(&failures).unwrap_or(0),
            self.metrics.get(&avoided).unwrap_or(0),
        );
        self.note(format!(
            "VM {} response from s{} {}: {:#x} {} gw={now_gw}",
            r.vm, r.service, r.endpoint, r.flags, r.details
        ));
        let usable: Vec<String> = self.registry.services[r.service]
            .usable()
            .map(|(e, _)| e.clone())
            .collect();
        // The asked poll waits for the calls in flight, and for the other
        // services (each due before it at most, answering within D), then goes
        // on the poller's tick (a second one if that tick raced the ask), or
        // with a token to renew, after a login.
        let bounds = self.configs[self.configs.len() - 1].bounds;
        let in_flight = self.pending.values().map(|c| c.ends).max().unwrap_or(now);
        let others = (self.p.services as u64 - 1) * (bounds.max_delay + bounds.late_tick());
        let login = if self.p.credentials {
            bounds.max_delay + bounds.late_tick()
        } else {
            0
        };
        let poll_by = in_flight.max(now) + others + login + 2 * bounds.late_tick() + 2;
        let failure = Failure {
            service: r.service,
            endpoint: &r.endpoint,
            at: now,
            at_gw: now_gw,
            vm: r.vm,
            same_list: stamp.is_some() && stamp == r.stamp,
            calm: self.calm(r.service, now),
            usable: &usable,
            poll_by,
            failures_delta: after.0.wrapping_sub(before.0),
            avoided_delta: after.1.wrapping_sub(before.1),
        };
        let may_ask = self.avoid.failure(&failure)?;
        self.note(format!(
            "  failure taken: list unchanged {}, calm {}, failures +{}, avoided +{}, may ask {may_ask}",
            failure.same_list, failure.calm, failure.failures_delta, failure.avoided_delta
        ));
        if may_ask {
            let within = self.avoid.policy.poll_within;
            self.check.asked(r.service, now, within);
        }
        Ok(())
    }

    /// An empty answer the poller held back is confirmed by a poll sent at
    /// once (`Targets::awaits_confirmation`), unless something disturbed it.
    fn check_confirming_polls(&mut self) -> Verdict {
        let bounds = self.configs[self.configs.len() - 1].bounds;
        for (service, held, deadline) in self.check.confirms_due(self.now) {
            let window = held.saturating_sub(bounds.interval.max(bounds.timeout) + bounds.timeout);
            // With a push link standing, what is due is confirmed by the link,
            // and a push, taken at once, is what settles the list.
            // A learned service that may idle by then is not polled at all.
            let may_idle = self
                .learned
                .as_ref()
                .is_some_and(|l| l.idled_before(service, deadline, &bounds).is_some());
            if self.check.polled_within(service, held, deadline)
                || self.check.disturbed(window, deadline, service)
                || self.check.link_stood(service, held)
                || may_idle
            {
                continue;
            }
            return Err(format!(
                "s{service}: an empty answer came at {held} and was held back, but no poll \
                 confirming it was sent by {deadline}"
            ));
        }
        Ok(())
    }

    /// Each poll a failure asked for was sent by its deadline, unless something
    /// disturbed the gateway.
    fn check_asked_polls(&mut self) -> Verdict {
        let bounds = self.configs[self.configs.len() - 1].bounds;
        for (service, asked, deadline) in self.avoid.polls_due(self.now) {
            let window = asked.saturating_sub(bounds.interval.max(bounds.timeout) + bounds.timeout);
            if self.check.polled_within(service, asked, deadline)
                || self.check.disturbed(window, deadline, service)
            {
                continue;
            }
            return Err(format!(
                "s{service}: a failed request asked for a poll at {asked}, but none was sent by \
                 {deadline}"
            ));
        }
        Ok(())
    }

    /// The store the next VM callback reads: live, or (racing) as it was before
    /// another VM's callback at the same moment (`race` per mille of the time).
    fn racing_view(&mut self, vm: usize, race: u64) -> Option<SimStore> {
        let (other, at, store) = self.before_last.take()?;
        (other != vm && at + 1 >= self.now && self.rng.chance(race)).then_some(store)
    }

    fn vm_callback(&mut self, v: usize, callback: Callback) -> Verdict {
        let stale = self.racing_view(v, self.p.race);
        let racing = stale.is_some();
        let contention = match &self.learned {
            Some(learned) if self.now <= self.contended_until => Some((
                Rng::new(self.learn_rng.next_u64()),
                learned.settings.contention,
            )),
            _ => None,
        };
        // Keep the store as it was, in case the next callback races this one.
        self.before_last = Some((v, self.now, self.store.clone()));
        let leases_before: Vec<Option<Lease>> = self.leases();
        let wall = self.wall();
        let now = self.now;
        let engine_seed = self.rng.next_u64();
        let vm = &mut self.vms[v];
        let ticked = matches!(callback, Callback::Tick);
        let configured = matches!(callback, Callback::Configure(_));
        let mut view = View::new(&mut self.store, stale.as_ref());
        if let Some((rng, per_mille)) = contention {
            view = view.contended(rng, per_mille);
        }
        let mut line = String::new();
        // What the followers can hear of is what the poller wrote into its heartbeat.
        let mut wrote_heartbeat = false;
        match callback {
            Callback::Configure(gen) => {
                let config = &self.configs[gen];
                let parsed = parse(
                    config.raw.as_bytes(),
                    Capabilities {
                        higress_routing: false,
                    },
                )
                .map_err(|e| format!("config {gen} refused: {e}"))?;
                let mut engine = Engine::new(&parsed, &mut self.metrics, engine_seed);
                engine.distrust_connections(self.push.cancelled(vm.thread));
                engine.share(
                    ConfigKeys::new(config.raw.as_bytes()),
                    vm.id,
                    &mut view,
                    &mut self.metrics,
                );
                self.engines += 1;
                vm.engine_id = self.engines;
                vm.engine = Some(engine);
                vm.gen = gen;
                vm.configured_at = now;
                vm.poller = false;
                vm.outbox = SimOutbox::default();
                vm.clock_ms = vm.clock.now(wall, &mut view);
                vm.clock_read_at = now;
                line = format!("VM {v} configures config {gen}");
            }
            Callback::Tick => {
                self.avoid.ticked(v, now);
                vm.clock_ms = vm.clock.now(wall, &mut view);
                vm.clock_read_at = now;
                if let Some(engine) = &mut vm.engine {
                    engine.on_tick(vm.clock_ms, &mut vm.outbox, &mut self.metrics, &mut view);
                }
                let heartbeat_key = self.configs.get(vm.gen).map(|c| c.keys.heartbeat());
                wrote_heartbeat = heartbeat_key.is_some_and(|key| view.written.contains(key));
            }
            Callback::Answer(token, answer) => {
                // As the host reads it between ticks (`VmState::read_clock_between_ticks`).
                vm.clock_ms = vm.clock.now_between_ticks(wall, &mut view);
                vm.clock_read_at = now;
                let status = answer.as_ref().map(|(status, _)| *status);
                line = format!("VM {v} answer #{token}: {status:?}");
                if let Some(engine) = &mut vm.engine {
                    engine.on_answer(
                        token,
                        answer.as_ref().map(|(s, b)| (*s, b.as_slice())),
                        vm.clock_ms,
                        &mut vm.outbox,
                        &mut self.metrics,
                        &mut view,
                    );
                }
                self.received(v, token, answer)?;
            }
        }
        let vm = &mut self.vms[v];
        let period = vm.engine.as_ref().map_or(50, Engine::tick_period_ms);
        let is_poller = vm.engine.as_ref().is_some_and(Engine::is_poller);
        let became = is_poller && !vm.poller;
        vm.poller = is_poller;
        let (gw, gen, engine_id) = (vm.clock_ms, vm.gen, vm.engine_id);
        let health = match &self.learned {
            Some(_) => vm
                .engine
                .as_ref()
                .map(|e| learned::health_by_service(e, self.p.services)),
            None => vm.engine.as_ref().map(Engine::snapshot_health),
        };
        if configured || ticked {
            // Envoy ticks every period, a little late at times.
            let next = now + period + self.rng.below(period / 10 + 1);
            self.push(
                next,
                Kind::Tick {
                    vm: v,
                    engine: engine_id,
                },
            );
        }
        let sent = std::mem::take(&mut self.vms[v].outbox.sent);
        if !line.is_empty() || !sent.is_empty() || became || self.verbose {
            let role = if is_poller { "poller" } else { "follower" };
            let race = if racing { " (stale view)" } else { "" };
            let what = if line.is_empty() {
                format!("VM {v} tick")
            } else {
                line
            };
            let health = if self.verbose {
                format!(
                    " {:?}",
                    self.vms[v].engine.as_ref().map(Engine::snapshot_health)
                )
            } else {
                String::new()
            };
            self.note(format!("{what} gw={gw} {role}{race}{health}"));
        }
        if became {
            self.check.became_poller(v, now);
            let same = self.same_as(gen);
            if let Some(learned) = &mut self.learned {
                learned.became_poller(same, now);
                self.check.learned_takeover(v, self.p.services);
            }
        }
        if ticked && is_poller && wrote_heartbeat {
            let engine = self.vms[v].engine.as_ref();
            let written = |s: usize| engine.is_none_or(|e| learned::content_written(e, s));
            self.check.poller_ticked(v, now, written);
        } else if ticked && !is_poller {
            let started = self.vms[v].configured_at;
            let same = self.same_as(gen);
            let configs = &self.configs;
            let shares_keys = |g: usize| configs.get(g).is_some_and(|c| c.same == same);
            self.check.follower_ticked(v, shares_keys, started, now);
        }
        if let Some(health) = health {
            self.check.snapshot_health(engine_id, v, health)?;
        }
        self.note_listed_starts(v, racing);
        // The lease of each configuration changes hands only when it is free.
        let leases_after = self.leases();
        let ttl = self.p.interval * crate::engine::sharing::LEASE_INTERVALS;
        let writer = self.vms[v].id;
        for (before, after) in leases_before.into_iter().zip(leases_after) {
            self.check.lease_change(before, after, writer, gw, ttl)?;
        }
        for (token, login, path) in sent {
            self.dispatch(v, gen, engine_id, token, login, &path)?;
        }
        let grpc = std::mem::take(&mut self.vms[v].outbox.grpc);
        self.push_sent(v, engine_id, grpc)
    }

    fn leases(&self) -> Vec<Option<Lease>> {
        self.configs
            .iter()
            .map(|c| self.store.value(c.keys.lease()).and_then(Lease::decode))
            .collect()
    }

    fn holds_lease(&self, vm: usize) -> bool {
        let key = self.configs[self.vms[vm].gen].keys.lease();
        self.store
            .value(key)
            .and_then(Lease::decode)
            .is_some_and(|lease| lease.holder == self.vms[vm].id)
    }

    /// A call a VM sent: Nacos decides its answer now and delivers it later.
    fn dispatch(
        &mut self,
        v: usize,
        gen: usize,
        engine: u64,
        token: u32,
        login: bool,
        path: &str,
    ) -> Verdict {
        let now = self.now;
        let gw = self.vms[v].clock_ms;
        let bounds = self.configs[gen].bounds;
        let what = if login { "login" } else { "poll" };
        self.note(format!(
            "  VM {v} sends #{token} {what} {}",
            path.split('?').nth(1).unwrap_or("")
        ));
        let access = path
            .split_once("accessToken=")
            .map(|(_, t)| t.split('&').next().unwrap_or("").to_string());
        let service = path
            .split_once("serviceName=s")
            .and_then(|(_, rest)| rest.split('&').next()?.parse::<usize>().ok());
        let delay = if self.rng.chance(800) {
            self.rng.between(1, self.p.max_delay / 10 + 1)
        } else {
            self.rng.between(1, self.p.max_delay)
        };
        let fault = match self.profile {
            Profile::Calm => false,
            Profile::Flaky => self.rng.chance(250),
            Profile::Outage | Profile::Forbidden => true,
        };
        let (answer, at, (usable, listed, usable_mask)) = if login {
            let holder = self.holds_lease(v);
            self.check.login_sent(gen, v, gw, holder)?;
            // Under Forbidden the login itself mostly works: the account lacks
            // permission on the service, not the right to log in.
            let fails = fault && (self.profile != Profile::Forbidden || self.rng.chance(300));
            if fails {
                self.fault_answer(delay)
            } else {
                let ttl_ms = self.p.ttl_s * 1000;
                let token = self.registry.issue_token(ttl_ms, now);
                let body = format!(r#"{{"accessToken":"{token}","tokenTtl":{}}}"#, self.p.ttl_s);
                (Some((200, body.into_bytes())), delay, (0, 0, 0))
            }
        } else {
            let s = service.ok_or_else(|| format!("a list call names no service: {path}"))?;
            self.push_polled(v, gen, s)?;
            self.check.poll(gen, s, v, now, &bounds)?;
            let same = self.same_as(gen);
            if let Some(learned) = &mut self.learned {
                learned.polled(same, s, now);
                learned.bound_kept(same, now, &bounds)?;
            }
            if self.p.credentials
                && (self.profile == Profile::Forbidden
                    || !self.registry.accepts(access.as_deref(), now))
            {
                (Some((403, b"forbidden".to_vec())), delay, (0, 0, 0))
            } else if fault {
                self.fault_answer(delay)
            } else {
                self.flap_at_poll(gen, s);
                let ref_time = self.p.ref_time.then_some(now);
                let service = &self.registry.services[s];
                let counts = (
                    service.usable().count(),
                    service.hosts.len(),
                    service.usable_mask(),
                );
                (
                    Some((200, service.body(&format!("s{s}"), ref_time))),
                    delay,
                    counts,
                )
            }
        };
        // A call that will fail marks trouble from when it is sent: until its
        // answer comes (a timeout is long) nobody can know better.
        let good = matches!(&answer, Some((200, body)) if body.ends_with(b"}"));
        if !good {
            match service {
                Some(s) if !login => {
                    self.check
                        .trouble_until(now, now + at, Trouble::ListFailed(s))
                }
                _ => self.check.login_failing(gen, now),
            }
        }
        let status = answer
            .as_ref()
            .map_or("none".to_string(), |(s, _)| s.to_string());
        self.pending.insert(
            (v, engine, token),
            Call {
                gen,
                service: if login { None } else { service },
                sent: now,
                ends: now + at,
                token: access,
                usable,
                listed,
                usable_mask,
            },
        );
        self.push(
            now + at,
            Kind::Answer {
                vm: v,
                engine,
                token,
                answer,
            },
        );
        self.note(format!("  #{token} will answer {status} in {at} ms"));
        Ok(())
    }

    fn fault_answer(&mut self, delay: u64) -> Scripted {
        match self.rng.below(8) {
            0 => (Some((500, b"boom".to_vec())), delay, (0, 0, 0)),
            1 => (Some((403, b"forbidden".to_vec())), delay, (0, 0, 0)),
            2 => (Some((404, Vec::new())), delay, (0, 0, 0)),
            3 => (Some((410, Vec::new())), delay, (0, 0, 0)),
            4 => (Some((503, Vec::new())), delay, (0, 0, 0)),
            5 => (
                Some((200, br#"{"hosts":[{"ip":"10.0."#.to_vec())),
                delay,
                (0, 0, 0),
            ),
            // No answer at all: Envoy gives up at the call's timeout.
            _ => (None, self.p.timeout, (0, 0, 0)),
        }
    }

    /// What the invariants learn from an answer a VM just took.
    fn received(&mut self, v: usize, token: u32, answer: Option<(u16, Vec<u8>)>) -> Verdict {
        let engine = self.vms[v].engine_id;
        let Some(call) = self.pending.remove(&(v, engine, token)) else {
            return Ok(());
        };
        let gw = self.vms[v].clock_ms;
        let published =
            self.vms[v].engine.as_ref().is_some_and(Engine::is_poller) && self.holds_lease(v);
        let good = matches!(&answer, Some((200, body)) if body.ends_with(b"}"));
        match call.service {
            None => {
                let grant = answer.filter(|_| good).and_then(|(_, body)| {
                    let text = String::from_utf8(body).ok()?;
                    let token = text.split('"').nth(3)?.to_string();
                    Some((token, self.p.ttl_s))
                });
                if grant.is_some() {
                    self.check.login_works(call.gen, self.now);
                }
                self.check.login_answered(call.gen, v, gw, grant);
            }
            Some(service) => {
                if good {
                    let engine = self.vms[v].engine.as_ref();
                    let stored =
                        published && engine.is_none_or(|e| learned::content_written(e, service));
                    self.check.served(call.gen, v, service);
                    self.check.answer(
                        service,
                        GoodAnswer {
                            gen: call.gen,
                            sent: call.sent,
                            received: self.now,
                            usable: call.usable,
                            usable_mask: call.usable_mask,
                            listed: call.listed,
                            published,
                            stored_at: stored.then_some(self.now),
                            vm: v,
                            announced: None,
                        },
                    );
                } else {
                    self.check.list_failed(call.gen, service);
                    self.check.trouble(self.now, Trouble::ListFailed(service));
                    if matches!(answer, Some((403, _))) {
                        self.check.trouble(self.now, Trouble::Login);
                        if self.p.credentials {
                            let token = call.token.as_deref();
                            self.check.refused(call.gen, v, service, gw, token);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Each usable instance's requests over the steady phase against its weighted
    /// share: (service, endpoint, weight, got, of total, expected).
    fn shares_against_weights(&self) -> Vec<(usize, &String, f64, u64, u64, f64)> {
        let mut rows = Vec::new();
        for (s, service) in self.registry.services.iter().enumerate() {
            let usable: Vec<(&String, f64)> =
                service.usable().map(|(e, h)| (e, h.weight)).collect();
            let total: u64 = self
                .shares
                .iter()
                .filter(|((service, _), _)| *service == s)
                .map(|(_, n)| *n)
                .sum();
            let weights: f64 = usable.iter().map(|(_, w)| w).sum();
            for (endpoint, weight) in usable {
                let got = self
                    .shares
                    .get(&(s, endpoint.clone()))
                    .copied()
                    .unwrap_or(0);
                let expected = total as f64 * weight / weights;
                rows.push((s, endpoint, weight, got, total, expected));
            }
        }
        rows
    }

    /// Over the steady phase, each usable instance's share of requests follows its
    /// weight: within `SHARE_TOLERANCE` requests per VM of the exact share.
    fn check_shares(&self) -> Verdict {
        let tolerance = share_tolerance(self.p.vms);
        for (s, endpoint, weight, got, total, expected) in self.shares_against_weights() {
            if (got as f64 - expected).abs() > tolerance {
                return Err(format!(
                    "s{s}: {endpoint} (weight {weight}) got {got} of {total} requests, \
                     expected {expected:.1} ± {tolerance}; routed {:?}",
                    self.shares
                ));
            }
        }
        Ok(())
    }

    /// The largest share deviation seen in the steady phase, in requests.
    pub fn share_deviation(&self) -> f64 {
        self.shares_against_weights()
            .into_iter()
            .map(|(_, _, _, got, _, expected)| (got as f64 - expected).abs())
            .fold(0.0, f64::max)
    }

    pub fn vms(&self) -> usize {
        self.p.vms
    }
}

/// Requests an instance's count may differ from its exact weighted share by,
/// over the steady phase: each VM runs its own smooth weighted round robin.
pub fn share_tolerance(vms: usize) -> f64 {
    2.0 * vms as f64
}

enum Callback {
    Configure(usize),
    Tick,
    Answer(u32, Option<(u16, Vec<u8>)>),
}
