//! The floor that any proxy-wasm plugin pays, for `make bench`.
//!
//! With an empty configuration (or `set`) it sets `x-minimal-filter: 1` on every
//! request and does nothing else. For the cost breakdown the configuration may list,
//! comma-separated, the host calls the plugin makes per request, without any of the
//! plugin's own logic:
//!
//! - `remove`: remove `x-gateway-destination-endpoint` and `x-envoy-original-dst-host`
//! - `property`: read `xds.route_name` (where upstream Envoy keeps the route name)
//! - `pin`: read the `x-nacos-instance` request header
//! - `time`: read the host clock
//! - `metric`: increment a counter
//! - `route=IP:PORT|IP:PORT...`: set `x-gateway-destination-endpoint` to each of the
//!   endpoints in turn, as the plugin's round robin does
//! - `set`: set `x-minimal-filter: 1`
//! - `get=NAME`: read request header `NAME`
//! - `prop=A.B`: read the property at path `A.B` (dot-separated)
//!
//! One more item is not per request: `poll=CLUSTER;AUTHORITY;PATH;COUNT;INTERVAL_MS;IN_FLIGHT`
//! makes one VM of the process (elected through shared data) send `COUNT` GETs to
//! `CLUSTER` every `INTERVAL_MS`, each with `PATH`'s `{}` replaced by its number, at most
//! `IN_FLIGHT` at a time, and read each answer's status and body: the floor that any
//! plugin polling that many services pays at rest. Each service is due an interval
//! after its last call started, early by up to a tenth at random, as the plugin
//! schedules it. `;answer` as a seventh field adds the host calls the plugin makes
//! on each answer beyond reading it.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MinimalRoot { ops: Rc::new(vec![Op::Set]), turn: Rc::new(Cell::new(0)), poll: None })
    });
}}

#[derive(Clone)]
enum Op {
    Set,
    Remove,
    Property,
    Pin,
    Time,
    Metric(u32),
    Route(Vec<String>),
    Get(String),
    Prop(Vec<String>),
}

struct MinimalRoot {
    ops: Rc<Vec<Op>>,
    turn: Rc<Cell<usize>>,
    poll: Option<Poll>,
}

const POLLER_KEY: &str = "minimal_filter.poller";

/// What `poll=` asks for, and the calls under way.
struct Poll {
    cluster: String,
    authority: String,
    path: String,
    interval_ms: u64,
    max_in_flight: usize,
    /// Services waiting for their next call, earliest due first.
    waiting: BinaryHeap<Reverse<(u64, usize)>>,
    /// Calls under way: token, service number, when the service is due next.
    in_flight: Vec<(u32, usize, u64)>,
    /// This VM's name in the election: its configuration time in nanoseconds.
    me: Vec<u8>,
    /// With `;answer` after the six fields: the host calls the plugin makes per
    /// answer beyond reading it (count the poll, store the service's confirmation).
    answer_calls: Option<u32>,
    rng: u64,
}

impl Poll {
    fn parse(spec: &str) -> Option<Self> {
        let fields: Vec<&str> = spec.split(';').collect();
        let (cluster, authority, path, count, interval_ms, max_in_flight, answer_calls) =
            match fields.as_slice() {
                [c, a, p, n, i, m] => (c, a, p, n, i, m, false),
                [c, a, p, n, i, m, "answer"] => (c, a, p, n, i, m, true),
                _ => return None,
            };
        let count: usize = count.parse().ok()?;
        let answer_calls = if answer_calls {
            Some(hostcalls::define_metric(MetricType::Counter, "minimal_filter.polls").ok()?)
        } else {
            None
        };
        let me = now_nanos();
        Some(Self {
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            interval_ms: interval_ms.parse::<u64>().ok()?.max(1),
            max_in_flight: max_in_flight.parse().ok()?,
            waiting: (0..count).map(|service| Reverse((0, service))).collect(),
            in_flight: Vec::new(),
            me: me.to_le_bytes().to_vec(),
            answer_calls,
            rng: me | 1,
        })
    }

    /// The plugin's schedule: each service an interval after its last call
    /// started, early by up to a tenth of it at random.
    fn next_due(&mut self, now_ms: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = (self.interval_ms / 10).max(1);
        now_ms + self.interval_ms - self.rng % span
    }

    fn dispatch_due(&mut self, now_ms: u64) {
        while self.in_flight.len() < self.max_in_flight {
            let Some(&Reverse((due_ms, service))) = self.waiting.peek() else {
                return;
            };
            if due_ms > now_ms {
                return;
            }
            self.waiting.pop();
            let next_due_ms = self.next_due(now_ms);
            let path = self.path.replace("{}", &service.to_string());
            let headers = vec![
                (":method", "GET"),
                (":path", path.as_str()),
                (":authority", self.authority.as_str()),
            ];
            match hostcalls::dispatch_http_call(
                &self.cluster,
                headers,
                None,
                vec![],
                Duration::from_secs(5),
            ) {
                Ok(token) => self.in_flight.push((token, service, next_due_ms)),
                Err(_) => self.waiting.push(Reverse((next_due_ms, service))),
            }
        }
    }

    fn answered(&mut self, token: u32, body_size: usize, now_ms: u64) {
        let _ = std::hint::black_box(hostcalls::get_map_value_bytes(
            proxy_wasm::types::MapType::HttpCallResponseHeaders,
            ":status",
        ));
        let _ = std::hint::black_box(hostcalls::get_buffer(
            proxy_wasm::types::BufferType::HttpCallResponseBody,
            0,
            body_size,
        ));
        if let Some(at) = self.in_flight.iter().position(|&(t, _, _)| t == token) {
            let (_, service, next_due_ms) = self.in_flight.swap_remove(at);
            if let Some(metric) = self.answer_calls {
                let _ = hostcalls::increment_metric(metric, 1);
                let key = format!("minimal_filter.confirmed.{service}");
                let _ = hostcalls::set_shared_data(&key, Some(now_ms.to_string().as_bytes()), None);
            }
            self.waiting.push(Reverse((next_due_ms, service)));
        }
        self.dispatch_due(now_ms);
    }

    /// Whether this VM polls: the first to write its name holds the key for good.
    fn elected(&self) -> bool {
        match hostcalls::get_shared_data(POLLER_KEY) {
            Ok((Some(holder), _)) => holder == self.me,
            Ok((None, _)) => {
                let _ = hostcalls::set_shared_data(POLLER_KEY, Some(&self.me), None);
                false
            }
            Err(_) => false,
        }
    }
}

fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Context for MinimalRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(poll) = self.poll.as_mut() {
            poll.answered(token, body_size, now_nanos() / 1_000_000);
        }
    }
}

impl RootContext for MinimalRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let mut ops = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let op = match item {
                "set" => Op::Set,
                "remove" => Op::Remove,
                "property" => Op::Property,
                "pin" => Op::Pin,
                "time" => Op::Time,
                "metric" => {
                    match hostcalls::define_metric(MetricType::Counter, "minimal_filter.requests") {
                        Ok(id) => Op::Metric(id),
                        Err(_) => return false,
                    }
                }
                other => {
                    if let Some(endpoints) = other.strip_prefix("route=") {
                        Op::Route(endpoints.split('|').map(str::to_string).collect())
                    } else if let Some(name) = other.strip_prefix("get=") {
                        Op::Get(name.to_string())
                    } else if let Some(path) = other.strip_prefix("prop=") {
                        Op::Prop(path.split('.').map(str::to_string).collect())
                    } else if let Some(spec) = other.strip_prefix("poll=") {
                        let Some(poll) = Poll::parse(spec) else {
                            return false;
                        };
                        self.poll = Some(poll);
                        self.set_tick_period(Duration::from_millis(20));
                        continue;
                    } else {
                        return false;
                    }
                }
            };
            ops.push(op);
        }
        if ops.is_empty() {
            ops.push(Op::Set);
        }
        self.ops = Rc::new(ops);
        true
    }

    fn on_tick(&mut self) {
        if let Some(poll) = self.poll.as_mut() {
            if poll.elected() {
                poll.dispatch_due(now_nanos() / 1_000_000);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MinimalHttp {
            ops: Rc::clone(&self.ops),
            turn: Rc::clone(&self.turn),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MinimalHttp {
    ops: Rc<Vec<Op>>,
    turn: Rc<Cell<usize>>,
}

impl Context for MinimalHttp {}

impl HttpContext for MinimalHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for op in self.ops.iter() {
            match op {
                Op::Set => self.set_http_request_header("x-minimal-filter", Some("1")),
                Op::Remove => {
                    self.set_http_request_header("x-gateway-destination-endpoint", None);
                    self.set_http_request_header("x-envoy-original-dst-host", None);
                }
                Op::Property => {
                    std::hint::black_box(self.get_property(vec!["xds", "route_name"]));
                }
                Op::Pin => {
                    std::hint::black_box(self.get_http_request_header("x-nacos-instance"));
                }
                Op::Get(name) => {
                    std::hint::black_box(self.get_http_request_header_bytes(name));
                }
                Op::Prop(path) => {
                    std::hint::black_box(
                        self.get_property(path.iter().map(String::as_str).collect()),
                    );
                }
                Op::Time => {
                    std::hint::black_box(self.get_current_time());
                }
                Op::Metric(id) => {
                    let _ = hostcalls::increment_metric(*id, 1);
                }
                Op::Route(endpoints) => {
                    let turn = self.turn.get();
                    self.turn.set(turn.wrapping_add(1));
                    if let Some(endpoint) = endpoints.get(turn % endpoints.len().max(1)) {
                        self.set_http_request_header(
                            "x-gateway-destination-endpoint",
                            Some(endpoint),
                        );
                    }
                }
            }
        }
        Action::Continue
    }
}
