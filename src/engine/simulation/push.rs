//! Push in the simulated gateway: a Nacos gRPC server with Java Nacos's
//! semantics (docs/push.md, `tests/testbed/java_grpc_nacos.py`), and the
//! invariants push must keep, against the registry's own timeline.
//!
//! The server knows a client by its connection: Envoy gives each worker thread
//! one HTTP/2 connection to the gRPC cluster, which every unary call and stream
//! of the thread rides until the server drops it. The first stream set up on a
//! connection is the one the server pushes to; a later stream on the same
//! connection hears nothing, and a push to a first stream the client cancelled
//! fails and drops the connection (Java's `ConnectionManager.register` and its
//! failed push). Unary calls but `ServerCheck` are refused `301 Connection is
//! unregistered` before the stream's setup is registered (a drawn delay, at
//! times past the plugin's 200 ms grace); subscriptions are refused 403 while
//! the account may not read or the token is not one the registry accepts.
//! Each registry change is pushed to every connection subscribed to the
//! service after a drawn delay, with the list as it is then; some pushes are
//! dropped (never repaired but by the safety poll or a later change) and some
//! come late. `ConnectResetRequest` is sent now and then and the connection
//! dropped once it is answered, or after Java's 3 s; connections are also
//! dropped outright, and all of them when Nacos has an outage, during which no
//! call is answered.
//!
//! Messages are built and read with `pure::push`, as the engine's push tests do.
//!
//! This module is a child of `world` so that its hooks there stay one line each.

use std::collections::{BTreeMap, BTreeSet};

use super::super::invariants::{GoodAnswer, Verdict};
use super::super::rng::Rng;
use super::super::store::View;
use super::{Kind, Profile, World};
use crate::pure::push::wire::{self, Payload};

/// The plugin's probe interval (`push::PROBE_INTERVAL_MS`): a link stands for
/// polls until a probe is this late, plus its timeout.
const PROBE_INTERVAL_MS: u64 = 5_000;
/// The plugin's first reconnection backoff (`push::FIRST_BACKOFF_MS`), after a
/// link whose subscription the server took.
const FIRST_BACKOFF_MS: u64 = 1_000;
/// How long Java waits for the answer to `ConnectResetRequest` before it drops
/// the connection anyway (`ConnectionManager.java`, `loadSingle`).
const RESET_WAIT_MS: u64 = 3_000;

/// A seed's push settings, drawn from a generator of their own so that seeds
/// without push run as they did before push was modelled.
#[derive(Debug, Clone)]
pub struct PushParams {
    pub safety: u64,
    /// The longest a push waits after a change (Java's `pushTaskDelay`, 500 ms
    /// by default), and how many per mille of pushes come up to 4 times later.
    pub max_delay: u64,
    pub late: u64,
    /// Per mille of pushes dropped (main phase only).
    pub drop: u64,
}

impl PushParams {
    /// Push in one seed of three.
    pub fn draw(rng: &mut Rng, interval: u64) -> Option<Self> {
        if !rng.chance(333) {
            return None;
        }
        Some(Self {
            safety: (rng.pick(&[5, 10, 20]) * interval).max(1_000),
            max_delay: rng.pick(&[50, 200, 500]),
            late: rng.pick(&[0, 50, 200]),
            drop: rng.pick(&[0, 100, 300]),
        })
    }

    /// The `nacos.push` object of the configuration.
    pub fn json(&self) -> String {
        format!(
            r#","push":{{"grpcCluster":"outbound|9848||nacos-grpc.dns","safetyIntervalMs":{}}}"#,
            self.safety
        )
    }
}

/// What a VM's engine asked of the host's gRPC (`Outbox`).
#[derive(Debug)]
pub enum Sent {
    Call(u32, Vec<u8>),
    Open(u32),
    Send(u32, Vec<u8>),
    Finish(u32, Option<Vec<u8>>),
    Close(u32),
}

/// What a unary call was, for the checks its answer feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Check,
    Probe,
    Subscribe(usize),
    Other,
}

#[derive(Debug)]
pub enum Event {
    /// The answer to a unary call reaches the VM (`None`: a gRPC error).
    Answer {
        vm: usize,
        engine: u64,
        token: u32,
        kind: CallKind,
        refused: bool,
        answer: Option<Vec<u8>>,
        /// When the server built it, and the usable and listed instances of
        /// the list it carries.
        built: (u64, usize, usize, u64),
        /// The connection it rides: if the server drops it first, the call fails.
        on: Option<u64>,
    },
    /// A message of the server on a stream: a push of `service`'s list (as
    /// built then) or, with `None`, `ConnectResetRequest`.
    Message {
        vm: usize,
        engine: u64,
        stream: u32,
        service: Option<usize>,
        bytes: Vec<u8>,
        built: (u64, usize, usize, u64),
    },
    /// The server ended a stream (its connection dropped).
    Closed { vm: usize, engine: u64, stream: u32 },
    /// The server registers the setup of a stream's connection.
    Register { conn: u64 },
    /// A change of `service` is pushed to connection `conn`.
    Push { conn: u64, service: usize },
    /// The server drops a connection.
    Drop { conn: u64 },
    /// The server's own doings: a reset or a dropped connection, now and then.
    Chaos,
}

impl Event {
    /// The VM the event reaches, if it reaches one (a stalled VM defers it).
    pub fn vm(&self) -> Option<usize> {
        match self {
            Self::Answer { vm, .. } | Self::Message { vm, .. } | Self::Closed { vm, .. } => {
                Some(*vm)
            }
            _ => None,
        }
    }
}

/// One HTTP/2 connection of a worker thread, as the server knows it.
struct Conn {
    id: String,
    thread: usize,
    /// The first stream opened on it: (VM, engine, stream). The server pushes
    /// there and nowhere else.
    first: Option<(usize, u64, u32)>,
    /// Every stream opened on it, for the drop.
    streams: Vec<(usize, u64, u32)>,
    registered: bool,
    /// The first stream was cancelled or finished by the client: a push to it
    /// fails and drops the connection.
    first_dead: bool,
    subscribed: BTreeSet<usize>,
}

/// A link as the server sees it: one engine's stream.
#[derive(Default)]
struct Link {
    stream: u32,
    /// The first stream of its connection: pushes reach it.
    first: bool,
    /// Services whose subscription on it the engine took, and when.
    subscribed: BTreeMap<usize, u64>,
    /// The server took one of its subscriptions: the plugin's backoff starts
    /// afresh at its loss.
    proven: bool,
    /// When the last probe on its connection was answered, or it opened.
    alive_at: u64,
}

#[derive(Default)]
pub struct Model {
    pub params: Option<PushParams>,
    /// The server's own random numbers; kept only with push, and drawn from
    /// only then (`rng()`), so a seed without push runs as before.
    rng: Option<Rng>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Per worker thread: the connection its calls and streams ride.
    current: BTreeMap<usize, u64>,
    /// Per stream token of each engine: its connection.
    streams: BTreeMap<(usize, u64, u32), u64>,
    /// Per (VM, engine): its open link.
    links: BTreeMap<(usize, u64), Link>,
    /// Per (VM, engine): the connection its last connection attempt's
    /// `ServerCheck` named, which the engine judges its stream by.
    checked: BTreeMap<(usize, u64), u64>,
    /// Per worker thread: connections a stream was cancelled on, which the
    /// host hands every new root context of the thread.
    cancelled: BTreeMap<usize, Vec<String>>,
    /// Per service: pushes the poller took, when built and when they came.
    taken: Vec<Vec<(u64, u64)>>,
    /// Per service: the registry change last pushed.
    seen_change: Vec<u64>,
    /// Per service: since when the poller's link did not stand for its polls.
    polled_since: Vec<Option<u64>>,
    /// Per service: since when the poller's link stands for its polls.
    standing_since: Vec<Option<u64>>,
    /// Per service: its last poll by the current configuration.
    last_poll: Vec<u64>,
    /// Per service: the last two polls no ask or lost link explains.
    last_safety: Vec<[u64; 2]>,
    /// A link lost whose reconnection is due: (by when, lost at).
    reconnect_due: Option<(u64, u64)>,
    requests: u64,
    outage: bool,
    /// The server's own doings (`Event::Chaos`) were scheduled.
    started: bool,
}

impl Model {
    pub fn new(seed: u64, interval: u64, services: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x9057_0000_5eed_0025);
        // `SIM_NO_PUSH`: every seed as before push was modelled (to compare).
        let params = PushParams::draw(&mut rng, interval)
            .filter(|_| std::env::var_os("SIM_NO_PUSH").is_none());
        Self {
            rng: params.as_ref().map(|_| rng),
            params,
            taken: vec![Vec::new(); services],
            seen_change: vec![0; services],
            polled_since: vec![None; services],
            standing_since: vec![None; services],
            last_poll: vec![0; services],
            last_safety: vec![[0; 2]; services],
            ..Self::default()
        }
    }

    /// The same seed's model with push off.
    pub fn without_push(mut self) -> Self {
        self.params = None;
        self.rng = None;
        self
    }

    /// Connections cancelled on `thread`, for a new root context there.
    pub fn cancelled(&self, thread: usize) -> &[String] {
        self.cancelled.get(&thread).map_or(&[], Vec::as_slice)
    }

    /// Only push seeds reach the server, where `rng` is set; the fallback
    /// keeps this total without an `expect`.
    fn rng(&mut self) -> &mut Rng {
        self.rng.get_or_insert_with(|| Rng::new(0))
    }

    /// The connection `thread` rides, opened if it has none.
    fn conn_of(&mut self, thread: usize, now: u64) -> u64 {
        if let Some(conn) = self.current.get(&thread) {
            return *conn;
        }
        self.next_conn += 1;
        let n = self.next_conn;
        self.conns.insert(
            n,
            Conn {
                id: format!("{now}_10.1.0.{thread}_{}", 40_000 + n),
                thread,
                first: None,
                streams: Vec::new(),
                registered: false,
                first_dead: false,
                subscribed: BTreeSet::new(),
            },
        );
        self.current.insert(thread, n);
        n
    }
}

fn payload(message_type: &str, json: &str) -> Vec<u8> {
    wire::encode(&Payload {
        message_type: message_type.to_string(),
        headers: Vec::new(),
        body: json.as_bytes().to_vec(),
    })
}

/// Java's refusal of a request: `ErrorResponse`, or the handler's response
/// type with resultCode 500 and the error code (403 for permissions).
fn refusal(message_type: &str, code: u16, message: &str) -> Vec<u8> {
    payload(
        message_type,
        &format!(
            r#"{{"resultCode":500,"errorCode":{code},"message":"{message}","success":false}}"#
        ),
    )
}

/// The value of `"field":"…"` in a JSON body.
fn field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let (_, rest) = body.split_once(&format!(r#""{name}":""#))?;
    rest.split('"').next()
}

impl World {
    fn push_on(&self) -> bool {
        self.push.params.is_some()
    }

    /// Calls, streams and messages VM `v`'s engine `engine` sent in a callback.
    pub(super) fn push_sent(&mut self, v: usize, engine: u64, sent: Vec<Sent>) -> Verdict {
        for sent in sent {
            match sent {
                Sent::Call(token, message) => self.grpc_call(v, engine, token, &message),
                Sent::Open(stream) => self.grpc_open(v, engine, stream),
                Sent::Send(stream, message) => self.grpc_stream(v, engine, stream, Some(&message)),
                Sent::Finish(stream, last) => {
                    self.grpc_stream(v, engine, stream, last.as_deref());
                    self.stream_ended(v, engine, stream);
                }
                Sent::Close(stream) => self.stream_ended(v, engine, stream),
            }
        }
        Ok(())
    }

    fn grpc_call(&mut self, v: usize, engine: u64, token: u32, message: &[u8]) {
        let now = self.now;
        let thread = self.vms[v].thread;
        let Ok(request) = wire::decode(message) else {
            return;
        };
        let body = String::from_utf8_lossy(&request.body).to_string();
        let mut kind = CallKind::Other;
        let mut refused = false;
        let mut built = (now, 0, 0, 0);
        let delay = self.p.max_delay.max(2);
        let delay = if self.push.rng().chance(800) {
            self.push.rng().between(1, delay / 10 + 1)
        } else {
            self.push.rng().between(1, delay)
        };
        // A call that outlasts `timeoutMs` (Envoy then fails it): now and then
        // before the steady phase, more while Nacos is flaky. A probe that
        // times out so makes the plugin cancel a stream on a connection that
        // stays, where its next stream is not the first.
        let per_mille = if self.profile == Profile::Flaky {
            100
        } else {
            20
        };
        let flaky = !self.steady() && self.push.rng().chance(per_mille);
        // A `ServerCheck` with no link open is a connection attempt, answered
        // or not (with one open, it is the probe's companion).
        let attempt = request.message_type == "ServerCheckRequest"
            && !self.push.links.contains_key(&(v, engine));
        if attempt {
            self.push.reconnect_due = None;
            self.push.checked.remove(&(v, engine));
        }
        let mut on = None;
        let (answer, at) = if self.push.outage {
            // Envoy cannot connect: the call fails at once.
            (None, 1)
        } else if flaky {
            (None, self.p.timeout)
        } else {
            let conn = self.push.conn_of(thread, now);
            on = Some(conn);
            let registered = self.push.conns.get(&conn).is_some_and(|c| c.registered);
            let id = self
                .push
                .conns
                .get(&conn)
                .map(|c| c.id.clone())
                .unwrap_or_default();
            let answer = match request.message_type.as_str() {
                "ServerCheckRequest" => {
                    kind = CallKind::Check;
                    if attempt {
                        self.push.checked.insert((v, engine), conn);
                    }
                    payload(
                        "ServerCheckResponse",
                        &format!(
                            r#"{{"resultCode":200,"errorCode":0,"connectionId":"{id}","success":true}}"#
                        ),
                    )
                }
                "HealthCheckRequest" if registered => {
                    kind = CallKind::Probe;
                    payload(
                        "HealthCheckResponse",
                        r#"{"resultCode":200,"errorCode":0,"success":true}"#,
                    )
                }
                "SubscribeServiceRequest" if registered => {
                    let service = field(&body, "serviceName")
                        .and_then(|name| name.strip_prefix('s')?.parse::<usize>().ok())
                        .filter(|s| *s < self.p.services);
                    let token = field(&body, "accessToken");
                    let forbidden = self.p.credentials
                        && (self.profile == Profile::Forbidden
                            || !self.registry.accepts(token, now));
                    match service {
                        Some(s) if !forbidden => {
                            kind = CallKind::Subscribe(s);
                            if let Some(c) = self.push.conns.get_mut(&conn) {
                                c.subscribed.insert(s);
                            }
                            let info = self.service_info(s);
                            built = self.built(s);
                            payload(
                                "SubscribeServiceResponse",
                                &format!(
                                    r#"{{"resultCode":200,"errorCode":0,"success":true,"serviceInfo":{info}}}"#
                                ),
                            )
                        }
                        Some(s) => {
                            kind = CallKind::Subscribe(s);
                            refused = true;
                            refusal("SubscribeServiceResponse", 403, "no permission")
                        }
                        None => refusal("ErrorResponse", 400, "unknown service"),
                    }
                }
                _ => {
                    if request.message_type == "SubscribeServiceRequest" {
                        let service = field(&body, "serviceName")
                            .and_then(|name| name.strip_prefix('s')?.parse::<usize>().ok());
                        kind = service.map_or(CallKind::Other, CallKind::Subscribe);
                        refused = true;
                    }
                    refusal("ErrorResponse", 301, "Connection is unregistered.")
                }
            };
            (Some(answer), delay)
        };
        self.note(format!(
            "  VM {v} grpc #{token} {} -> {} in {at} ms ({kind:?}, refused {refused}, listed {})",
            request.message_type,
            if answer.is_some() { "answer" } else { "none" },
            built.2
        ));
        self.push(
            now + at,
            Kind::Push(Event::Answer {
                vm: v,
                engine,
                token,
                kind,
                refused,
                answer,
                built,
                on,
            }),
        );
    }

    /// The poller `v` took a list of service `s` over push (a subscription's
    /// answer or a push), built at `built`'s time: a list taken ends a refusal
    /// streak (`Targets::take_list`), and counts as a good answer.
    fn took_pushed(&mut self, v: usize, s: usize, built: (u64, usize, usize, u64)) {
        let (sent, usable, listed, usable_mask) = built;
        let gen = self.vms[v].gen;
        self.check.served(gen, v, s);
        self.check.pushed(
            s,
            GoodAnswer {
                gen,
                sent,
                received: self.now,
                usable,
                usable_mask,
                listed,
                published: true,
                stored_at: Some(self.now),
                vm: v,
                announced: None,
            },
        );
    }

    /// Now, and the usable and listed instances of service `s` (and the
    /// usable ones' address numbers as a mask).
    fn built(&self, s: usize) -> (u64, usize, usize, u64) {
        let service = &self.registry.services[s];
        (
            self.now,
            service.usable().count(),
            service.hosts.len(),
            service.usable_mask(),
        )
    }

    /// The list of service `s` as a server's `ServiceInfo`, as it is now.
    fn service_info(&self, s: usize) -> String {
        let body = self.registry.services[s].body(&format!("s{s}"), Some(self.now));
        let body = String::from_utf8_lossy(&body).to_string();
        let name = format!(r#"{{"name":"s{s}","#);
        body.replacen(
            &name,
            &format!(r#"{name}"groupName":"DEFAULT_GROUP","clusters":"","#),
            1,
        )
    }

    fn grpc_open(&mut self, v: usize, engine: u64, stream: u32) {
        let now = self.now;
        let thread = self.vms[v].thread;
        if self.push.outage {
            self.push(
                now + 1,
                Kind::Push(Event::Closed {
                    vm: v,
                    engine,
                    stream,
                }),
            );
            return;
        }
        let conn = self.push.conn_of(thread, now);
        self.push.streams.insert((v, engine, stream), conn);
        let Some(c) = self.push.conns.get_mut(&conn) else {
            return;
        };
        c.streams.push((v, engine, stream));
        let first = c.first.is_none();
        if first {
            c.first = Some((v, engine, stream));
        }
        // The engine trusts a stream by the connection its `ServerCheck`
        // named: if that one went since, it cannot know this stream is a new
        // connection's first, and waits for a push on it (`Link::confirm`).
        let known = self.push.checked.get(&(v, engine)) == Some(&conn);
        let id = c.id.clone();
        self.push.links.insert(
            (v, engine),
            Link {
                stream,
                first: first && known,
                alive_at: now,
                ..Link::default()
            },
        );
        self.note(format!(
            "  VM {v} opens stream #{stream} on {id}{}",
            if first {
                ""
            } else {
                " (not its first: hears nothing)"
            }
        ));
    }

    /// A message the client wrote on a stream (`None`: it only ended it).
    fn grpc_stream(&mut self, v: usize, engine: u64, stream: u32, message: Option<&[u8]>) {
        let Some(conn) = self.push.streams.get(&(v, engine, stream)).copied() else {
            return;
        };
        let Some(kind) = message.and_then(|m| wire::decode(m).ok()) else {
            return;
        };
        match kind.message_type.as_str() {
            "ConnectionSetupRequest" => {
                // Registered asynchronously: now and then after the plugin's
                // 200 ms grace, so that early subscriptions are refused 301.
                let rng = self.push.rng();
                let delay = if rng.chance(100) {
                    rng.between(150, 400)
                } else {
                    rng.between(1, 50)
                };
                self.push(self.now + delay, Kind::Push(Event::Register { conn }));
            }
            "ConnectResetResponse" => {
                let delay = self.push.rng().between(1, 10);
                self.push(self.now + delay, Kind::Push(Event::Drop { conn }));
            }
            _ => {}
        }
    }

    /// The client cancelled or finished a stream: its link is gone.
    fn stream_ended(&mut self, v: usize, engine: u64, stream: u32) {
        let Some(conn) = self.push.streams.remove(&(v, engine, stream)) else {
            return;
        };
        if let Some(c) = self.push.conns.get_mut(&conn) {
            if c.first == Some((v, engine, stream)) {
                c.first_dead = true;
            }
            let id = c.id.clone();
            let thread = c.thread;
            let cancelled = self.push.cancelled.entry(thread).or_default();
            if !cancelled.contains(&id) {
                cancelled.push(id);
            }
        }
        self.link_gone(v, engine, stream);
    }

    /// The link of (`v`, `engine`) on `stream` ended: its services are polled
    /// at once, and a reconnection is due.
    fn link_gone(&mut self, v: usize, engine: u64, stream: u32) {
        let is_it = self
            .push
            .links
            .get(&(v, engine))
            .is_some_and(|l| l.stream == stream);
        if !is_it {
            return;
        }
        let Some(link) = self.push.links.remove(&(v, engine)) else {
            return;
        };
        let gen = self.vms[v].gen;
        self.check.link_lost(gen, self.p.services);
        let current = gen + 1 == self.configs.len() && self.live(v, engine);
        if current && self.holds_lease(v) && link.proven {
            let bounds = self.configs[gen].bounds;
            let due = self.now + FIRST_BACKOFF_MS + 2 * bounds.late_tick() + 2;
            self.push.reconnect_due = Some((due, self.now));
        }
    }

    /// The root context `v` goes away: its engine closes its links, and the
    /// thread remembers the connections they were on (`host::root`).
    pub(super) fn push_retire(&mut self, v: usize) -> Verdict {
        if !self.push_on() {
            return Ok(());
        }
        let root = &mut self.vms[v];
        let Some(engine) = &mut root.engine else {
            return Ok(());
        };
        engine.shut_down(&mut root.outbox, &mut self.metrics);
        let cancelled = engine.cancelled_connections();
        let ids = self.push.cancelled.entry(root.thread).or_default();
        for id in cancelled {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let sent = std::mem::take(&mut root.outbox.grpc);
        let id = root.engine_id;
        self.push_sent(v, id, sent)
    }

    /// A push event.
    pub(super) fn push_event(&mut self, event: Event) -> Verdict {
        let now = self.now;
        match event {
            Event::Answer {
                vm,
                engine,
                token,
                kind,
                refused,
                answer,
                built,
                on,
            } => {
                if !self.live(vm, engine) {
                    return Ok(());
                }
                // Envoy fails the calls of a connection that closed under them.
                let dropped = on.is_some_and(|conn| !self.push.conns.contains_key(&conn));
                let answer = answer.filter(|_| !dropped);
                self.grpc_answer(vm, token, (kind, refused, built), answer)
            }
            Event::Message {
                vm,
                engine,
                stream,
                service,
                bytes,
                built,
            } => {
                if !self.live(vm, engine) {
                    return Ok(());
                }
                self.stream_message(vm, stream, service.map(|s| (s, built)), &bytes)
            }
            Event::Closed { vm, engine, stream } => {
                self.push.streams.remove(&(vm, engine, stream));
                self.link_gone(vm, engine, stream);
                if !self.live(vm, engine) {
                    return Ok(());
                }
                // Its services are polled at once, whatever the model knew of it.
                let gen = self.vms[vm].gen;
                self.check.link_lost(gen, self.p.services);
                self.note(format!("VM {vm} stream #{stream} closed by the server"));
                let gw = self.read_clock(vm);
                let root = &mut self.vms[vm];
                if let Some(e) = &mut root.engine {
                    e.on_push_closed(stream, gw, &mut self.metrics);
                }
                Ok(())
            }
            Event::Register { conn } => {
                if let Some(c) = self.push.conns.get_mut(&conn) {
                    c.registered = true;
                }
                Ok(())
            }
            Event::Push { conn, service } => self.push_to(conn, service),
            Event::Drop { conn } => {
                self.drop_conn(conn, "drops");
                Ok(())
            }
            Event::Chaos => {
                if self.steady() {
                    return Ok(());
                }
                let conns: Vec<u64> = self.push.conns.keys().copied().collect();
                if !conns.is_empty() {
                    let conn = conns[self.push.rng().below(conns.len() as u64) as usize];
                    if self.push.rng().chance(500) {
                        self.send_reset(conn);
                    } else {
                        self.drop_conn(conn, "drops");
                    }
                }
                let next = now + self.push.rng().between(5, 40) * self.p.interval;
                self.push(next.min(self.p.steady_at), Kind::Push(Event::Chaos));
                Ok(())
            }
        }
    }

    /// `ConnectResetRequest` on the first stream of `conn`; dropped once answered,
    /// or after Java's wait.
    fn send_reset(&mut self, conn: u64) {
        let Some(c) = self.push.conns.get(&conn) else {
            return;
        };
        let Some((vm, engine, stream)) = c.first.filter(|_| !c.first_dead) else {
            return;
        };
        self.push.requests += 1;
        let body = format!(
            r#"{{"requestId":"r{}","headers":{{}}}}"#,
            self.push.requests
        );
        let bytes = payload("ConnectResetRequest", &body);
        self.note(format!("grpc server resets {}", c.id));
        self.push(
            self.now,
            Kind::Push(Event::Message {
                vm,
                engine,
                stream,
                service: None,
                bytes,
                built: (self.now, 0, 0, 0),
            }),
        );
        self.push(self.now + RESET_WAIT_MS, Kind::Push(Event::Drop { conn }));
    }

    /// The server closes connection `conn`: every stream on it ends.
    fn drop_conn(&mut self, conn: u64, why: &str) {
        let Some(c) = self.push.conns.remove(&conn) else {
            return;
        };
        if self.push.current.get(&c.thread) == Some(&conn) {
            self.push.current.remove(&c.thread);
        }
        self.note(format!("grpc server {why} {}", c.id));
        for (vm, engine, stream) in c.streams {
            if self.push.streams.contains_key(&(vm, engine, stream)) {
                self.push(self.now, Kind::Push(Event::Closed { vm, engine, stream }));
            }
        }
    }

    /// VM `v` reads the gateway clock as the host does in a gRPC callback
    /// (`VmState::read_clock_between_ticks`).
    fn read_clock(&mut self, v: usize) -> u64 {
        let wall = self.wall();
        let root = &mut self.vms[v];
        root.clock_ms = root
            .clock
            .now_between_ticks(wall, &mut View::new(&mut self.store, None));
        root.clock_read_at = self.now;
        root.clock_ms
    }

    /// The answer to a unary call reaches VM `v`.
    fn grpc_answer(
        &mut self,
        v: usize,
        token: u32,
        (kind, refused, built): (CallKind, bool, (u64, usize, usize, u64)),
        answer: Option<Vec<u8>>,
    ) -> Verdict {
        let failures = "nacos_guard.push_failures";
        let before = self.metrics.get(failures).unwrap_or(0);
        let leading = self.holds_lease(v);
        let gw = self.read_clock(v);
        let root = &mut self.vms[v];
        let engine_id = root.engine_id;
        let Some(engine) = &mut root.engine else {
            return Ok(());
        };
        engine.on_grpc_answer(
            token,
            answer.as_deref(),
            gw,
            &mut root.outbox,
            &mut self.metrics,
            &mut self.store,
        );
        let now = self.now;
        let link = self.push.links.get_mut(&(v, engine_id));
        match (kind, answer.is_some() && !refused, link) {
            (CallKind::Probe, true, Some(link)) => {
                link.alive_at = now;
                if link.first {
                    let until = now + PROBE_INTERVAL_MS + self.p.timeout;
                    let subscribed: Vec<usize> = link.subscribed.keys().copied().collect();
                    for s in subscribed {
                        self.check.link_alive(s, until, now);
                    }
                }
            }
            (CallKind::Subscribe(s), true, Some(link)) if leading => {
                link.subscribed.insert(s, now);
                link.proven = true;
                let (first, alive_at) = (link.first, link.alive_at);
                self.took_pushed(v, s, built);
                if first {
                    let until = alive_at + PROBE_INTERVAL_MS + self.p.timeout;
                    self.check.link_alive(s, until, now);
                }
            }
            (CallKind::Subscribe(s), false, Some(_)) if leading && refused => {
                // Alert rules read push_failures: a refusal must count.
                let after = self.metrics.get(failures).unwrap_or(0);
                if after <= before {
                    return Err(format!(
                        "VM {v}: subscription of s{s} refused, push_failures stayed {before}"
                    ));
                }
            }
            _ => {}
        }
        let sent = std::mem::take(&mut self.vms[v].outbox.grpc);
        self.push_sent(v, engine_id, sent)?;
        self.flush_http(v)
    }

    /// A message of the server reaches VM `v` on `stream`.
    fn stream_message(
        &mut self,
        v: usize,
        stream: u32,
        service: Option<(usize, (u64, usize, usize, u64))>,
        bytes: &[u8],
    ) -> Verdict {
        let pushes = "nacos_guard.pushes";
        let before = self.metrics.get(pushes).unwrap_or(0);
        let leading = self.holds_lease(v) && self.vms[v].poller;
        let gw = self.read_clock(v);
        let root = &mut self.vms[v];
        let engine_id = root.engine_id;
        let Some(engine) = &mut root.engine else {
            return Ok(());
        };
        engine.on_push_message(
            stream,
            bytes,
            gw,
            &mut root.outbox,
            &mut self.metrics,
            &mut self.store,
        );
        let ours = self
            .push
            .links
            .get(&(v, engine_id))
            .is_some_and(|l| l.stream == stream);
        if let (Some(link), true, Some(_)) =
            (self.push.links.get_mut(&(v, engine_id)), ours, service)
        {
            // A push only reaches a connection's first stream: it confirms it.
            link.first = true;
        }
        if let (Some((s, built)), true, true) = (service, ours, leading) {
            let after = self.metrics.get(pushes).unwrap_or(0);
            if after != before + 1 {
                return Err(format!(
                    "VM {v}: a push of s{s} on its link moved pushes from {before} to {after}"
                ));
            }
            self.push.taken[s].push((built.0, self.now));
            self.took_pushed(v, s, built);
        }
        let sent = std::mem::take(&mut self.vms[v].outbox.grpc);
        self.push_sent(v, engine_id, sent)?;
        self.flush_http(v)
    }

    /// HTTP calls an engine sent outside a tick or answer (a lost link polls at once).
    fn flush_http(&mut self, v: usize) -> Verdict {
        let sent = std::mem::take(&mut self.vms[v].outbox.sent);
        let (gen, engine) = (self.vms[v].gen, self.vms[v].engine_id);
        for (token, login, path) in sent {
            self.dispatch(v, gen, engine, token, login, &path)?;
        }
        Ok(())
    }

    /// A change of `service` reaches connection `conn` after its push delay.
    fn push_to(&mut self, conn: u64, service: usize) -> Verdict {
        let Some(c) = self.push.conns.get(&conn) else {
            return Ok(());
        };
        if !c.subscribed.contains(&service) {
            return Ok(());
        }
        let Some((vm, engine, stream)) = c.first else {
            return Ok(());
        };
        if c.first_dead {
            // Java: the push to a cancelled stream fails, and the connection goes.
            self.drop_conn(conn, "failed a push to a dead stream, drops");
            return Ok(());
        }
        let drop = self.push.params.as_ref().map_or(0, |p| p.drop);
        if !self.steady() && self.push.rng().chance(drop) {
            self.note(format!("grpc server drops the push of s{service}"));
            return Ok(());
        }
        self.push.requests += 1;
        let info = self.service_info(service);
        let body = format!(
            r#"{{"requestId":"{}","namespace":"public","serviceName":"s{service}","groupName":"DEFAULT_GROUP","serviceInfo":{info}}}"#,
            self.push.requests
        );
        self.note(format!(
            "grpc server pushes s{service} to VM {vm} #{stream}"
        ));
        self.push(
            self.now,
            Kind::Push(Event::Message {
                vm,
                engine,
                stream,
                service: Some(service),
                bytes: payload("NotifySubscriberRequest", &body),
                built: self.built(service),
            }),
        );
        Ok(())
    }

    /// After every event: push the registry's changes, follow the weather, and
    /// check the deadlines push keeps.
    pub(super) fn push_step(&mut self) -> Verdict {
        let Some(params) = self.push.params.clone() else {
            return Ok(());
        };
        let now = self.now;
        if !self.push.started {
            self.push.started = true;
            let at = now + self.push.rng().between(5, 40) * self.p.interval;
            self.push(at.min(self.p.steady_at), Kind::Push(Event::Chaos));
        }
        let outage = self.profile == Profile::Outage;
        if outage && !self.push.outage {
            let conns: Vec<u64> = self.push.conns.keys().copied().collect();
            for conn in conns {
                self.drop_conn(conn, "is down, drops");
            }
        }
        self.push.outage = outage;
        for s in 0..self.p.services {
            if self.changed_at[s] == self.push.seen_change[s] {
                continue;
            }
            self.push.seen_change[s] = self.changed_at[s];
            let subscribed: Vec<u64> = self
                .push
                .conns
                .iter()
                .filter(|(_, c)| c.subscribed.contains(&s))
                .map(|(n, _)| *n)
                .collect();
            for conn in subscribed {
                let rng = self.push.rng();
                let mut delay = rng.between(0, params.max_delay);
                if rng.chance(params.late) {
                    delay *= 4;
                }
                self.push(now + delay, Kind::Push(Event::Push { conn, service: s }));
            }
        }
        self.check_push_deadlines()
    }

    /// The current configuration's poller, if one holds the lease.
    fn current_poller(&self) -> Option<usize> {
        let gen = self.configs.len() - 1;
        (0..self.vms.len()).find(|v| {
            let root = &self.vms[*v];
            root.gen == gen && root.retire_at > self.now && root.poller && self.holds_lease(*v)
        })
    }

    /// Whether `link` stands for the polls of `s`: the first stream of its
    /// connection (the server pushes there), `s` subscribed on it, and a probe
    /// answered in time (`Link::is_alive`), give or take `slack`.
    fn stands(&self, link: &Link, s: usize, slack: u64) -> bool {
        let alive = link.alive_at + PROBE_INTERVAL_MS + self.p.timeout + slack;
        link.first && link.subscribed.contains_key(&s) && self.now <= alive
    }

    /// The services a clock step must see polled again: all while the poller
    /// has no push link on the first stream of its connection (it polls them
    /// on their interval), none while it has (its services are subscribed,
    /// or will be once the link settles, and confirmed by it); none while no
    /// live root context holds the lease (an edit that kept the
    /// configuration's keys leaves it to the gone root until it expires, and
    /// the takeover then polls).
    pub(super) fn push_polled_services(&self) -> Vec<usize> {
        let Some(v) = self.current_poller() else {
            return Vec::new();
        };
        let link = self.push.links.get(&(v, self.vms[v].engine_id));
        if link.is_some_and(|l| l.first) {
            return Vec::new();
        }
        (0..self.p.services).collect()
    }

    /// While the poller's link does not stand for a service's polls (down, not
    /// the first stream of its connection, or not subscribed), the service is
    /// polled on its interval; after a lost link that had worked, the poller
    /// connects again within the first backoff.
    fn check_push_deadlines(&mut self) -> Verdict {
        let now = self.now;
        let gen = self.configs.len() - 1;
        let bounds = self.configs[gen].bounds;
        let poller = self.current_poller();
        let link = poller.and_then(|v| self.push.links.get(&(v, self.vms[v].engine_id)));
        let services = self.p.services as u64;
        let login = if self.p.credentials {
            bounds.max_delay + bounds.late_tick()
        } else {
            0
        };
        let within = bounds.interval
            + services * (bounds.max_delay + bounds.late_tick())
            + 2 * bounds.late_tick()
            + login
            + 2;
        let safety = self.push.params.as_ref().map_or(0, |p| p.safety);
        for s in 0..self.p.services {
            let stands = link.is_some_and(|l| self.stands(l, s, bounds.late_tick()));
            if poller.is_some() && stands {
                // The safety poll: due at most Q after the last poll (a poll the
                // engine was asked for comes no earlier than the safety poll it
                // leaves due) or the subscription, then on the poll schedule.
                self.push.polled_since[s] = None;
                let subscribed = link
                    .and_then(|l| l.subscribed.get(&s).copied())
                    .unwrap_or(now);
                let since = *self.push.standing_since[s].get_or_insert(now);
                let from = since.max(subscribed).max(self.push.last_poll[s]);
                let window =
                    from.saturating_sub(bounds.interval.max(bounds.timeout) + bounds.timeout);
                if now > from + safety + within && !self.check.disturbed(window, now, s) {
                    return Err(format!(
                        "s{s}: its push link stands for its polls, but no safety poll went \
                         from {from} to {now} (bound Q {safety} + {within})"
                    ));
                }
                continue;
            }
            self.push.standing_since[s] = None;
            if poller.is_none() {
                self.push.polled_since[s] = None;
                continue;
            }
            let since = *self.push.polled_since[s].get_or_insert(now);
            let from = since.max(self.push.last_poll[s]);
            // A link that lapsed here may stand a while longer on the VM's
            // clock: a stall since it was last alive held that clock back
            // (seed 2862), so what disturbed it counts from then.
            let lapsed = link.map_or(from, |l| l.alive_at.min(from));
            let window =
                lapsed.saturating_sub(bounds.interval.max(bounds.timeout) + bounds.timeout);
            if now > from + within && !self.check.disturbed(window, now, s) {
                return Err(format!(
                    "s{s}: no push link stands for its polls since {since}, but it was not \
                     polled from {from} to {now} (bound {within})"
                ));
            }
        }
        if let Some((due, lost)) = self.push.reconnect_due {
            let window = lost.saturating_sub(bounds.interval.max(bounds.timeout));
            if now > due {
                self.push.reconnect_due = None;
                if !self.check.disturbed(window, now, usize::MAX) && !self.push.outage {
                    return Err(format!(
                        "the poller's push link was lost at {lost}, but it did not connect \
                         again by {due}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A poll of `service` by VM `v` of configuration `gen`: while the link
    /// stands for its polls, only a safety poll, at most one per safety interval.
    pub(super) fn push_polled(&mut self, v: usize, gen: usize, service: usize) -> Verdict {
        let Some(safety) = self.push.params.as_ref().map(|p| p.safety) else {
            return Ok(());
        };
        let now = self.now;
        if gen + 1 == self.configs.len() {
            self.push.last_poll[service] = now;
        }
        let link = self.push.links.get(&(v, self.vms[v].engine_id));
        let Some(subscribed) = link
            .filter(|l| self.stands(l, service, 0))
            .and_then(|l| l.subscribed.get(&service))
            .copied()
        else {
            return Ok(());
        };
        // A failure's asked poll, a lost link's or an empty answer's
        // confirmation goes besides the safety polls, which keep their phase.
        if self.check.early_poll_explained(gen, service, now) {
            return Ok(());
        }
        // A poll the engine was asked for elsewhere (`Polling::poll_now`: an
        // empty answer to confirm, a failure's ask) does not move the safety
        // poll's due time, so one such poll may fall between two safety polls
        // unexplained: the poll two back is a safety interval ago.
        let [older, last] = self.push.last_safety[service];
        self.push.last_safety[service] = [last, now];
        let bounds = self.configs[gen].bounds;
        let gap = safety.saturating_sub(bounds.interval / 10 + 1);
        if older > subscribed && now - older < gap && !self.check.disturbed(older, now, service) {
            return Err(format!(
                "s{service} polled by VM {v} at {older}, {last} and {now} while its push link \
                 (subscribed at {subscribed}) stands for polls: safety polls go every {safety} ms"
            ));
        }
        Ok(())
    }

    /// A request of `service` routed to `endpoint`: once a push that lists it
    /// no longer was taken by the poller, no VM routes to it after its next
    /// tick and a follower's (a racing one's too).
    pub(super) fn push_routed(&self, service: usize, endpoint: &str) -> Verdict {
        if !self.push_on() {
            return Ok(());
        }
        let Some(stopped) = self.registry.services[service].unusable_since(endpoint) else {
            return Ok(());
        };
        // Built after it stopped: taken in the order they came, built in it too
        // (a stalled VM's messages wait in order).
        let taken = &self.push.taken[service];
        let first = taken.partition_point(|(built, _)| *built < stopped);
        let Some((_, pushed)) = taken.get(first).copied() else {
            return Ok(());
        };
        let bounds = self.configs[self.configs.len() - 1].bounds;
        let bound = 3 * bounds.late_tick() + 2;
        let now = self.now;
        // Clock steps and whole-gateway stops are among what disturbs it.
        if now > pushed + bound && !self.check.disturbed(pushed, now, service) {
            return Err(format!(
                "routed to {endpoint} of s{service} at {now}: it stopped being usable at \
                 {stopped}, and the poller took a push without it at {pushed} (bound {bound})"
            ));
        }
        Ok(())
    }
}
