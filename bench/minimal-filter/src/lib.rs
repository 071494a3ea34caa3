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

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MinimalRoot { ops: Rc::new(vec![Op::Set]), turn: Rc::new(Cell::new(0)) })
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
}

impl Context for MinimalRoot {}

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
                    std::hint::black_box(self.get_property(path.iter().map(String::as_str).collect()));
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
