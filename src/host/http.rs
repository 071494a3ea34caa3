//! The HTTP context: match the request, ask the engine, apply the decision.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host_calls::{HostMetrics, HostStore};
use super::vm::{PropertyStyle, SharedVm, VmState};
use crate::engine::{RequestAction, RequestHost, Routed};
use crate::pure::config::Routing;
use crate::pure::routing::rules::RequestFacts;
use crate::pure::routing::upstream_failure::instance_failed;
use crate::pure::routing::upstream_hosts::RoutableHosts;

pub struct GuardHttp {
    vm: Option<SharedVm>,
    /// Where this request was routed, if it was: its response tells whether the
    /// instance failed.
    routed: Option<Routed>,
}

impl GuardHttp {
    pub fn new(vm: Option<SharedVm>) -> Self {
        Self { vm, routed: None }
    }
}

impl Context for GuardHttp {}

impl HttpContext for GuardHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) else {
            return Action::Continue;
        };
        let VmState {
            engine,
            clock_ms,
            property_style,
            protected_headers,
            ..
        } = &mut *vm;
        let mut request = HostRequest::new(property_style, *clock_ms);
        let action = engine.on_request(*clock_ms, &mut request, &mut HostMetrics, &mut HostStore);
        // Whatever the engine decided, a client never chooses the endpoint itself.
        // A routed request clears all but the header its route sets, which the set
        // replaces. Each is read first: every removal is a header change, and
        // Higress clears the route cache on each one (higress-group/envoy
        // source/extensions/common/wasm/context.cc `removeHeaderMapValue`), which
        // would re-match the route of every request.
        let clear = match &action {
            RequestAction::Route { clear, .. } => clear,
            _ => protected_headers.as_slice(),
        };
        for name in clear {
            if self.get_http_request_header_bytes(name).is_some() {
                self.set_http_request_header(name, None);
            }
        }
        match action {
            RequestAction::Route {
                endpoint,
                routing,
                routed,
                ..
            } => {
                self.routed = Some(routed);
                route(routing, endpoint)
            }
            RequestAction::Reject(rejection) => {
                self.send_http_response(
                    rejection.status,
                    vec![("content-type", crate::engine::REJECT_CONTENT_TYPE)],
                    Some(rejection.body.as_bytes()),
                );
                Action::Pause
            }
            RequestAction::PassThrough | RequestAction::Ignore => Action::Continue,
        }
    }

    /// A local reply for an instance that gave no answer (refused, reset, no
    /// healthy host) comes through here too, with Envoy's response flags set
    /// (docs/behaviour.md, "Instances that fail before Nacos knows").
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(routed) = self.routed.take() else {
            return Action::Continue;
        };
        let flags = super::response::response_flags();
        if flags == 0 {
            return Action::Continue;
        }
        let details = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        if !instance_failed(flags, details.as_deref()) {
            return Action::Continue;
        }
        let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) else {
            return Action::Continue;
        };
        let now = vm.clock_ms;
        let reason = details.unwrap_or_else(|| format!("response flags {flags:#x}"));
        vm.engine
            .on_routed_failure(routed, &reason, now, &mut HostMetrics, &mut HostStore);
        Action::Continue
    }
}

fn route(routing: &Routing, endpoint: &str) -> Action {
    match routing {
        Routing::Header(name) => {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(endpoint));
            Action::Continue
        }
        Routing::Higress => route_with_higress(endpoint),
    }
}

/// Higress: store the chosen host and let the request go on. The router reads the
/// override when it picks the host, after the filter chain ran (Envoy's own
/// `stateful_session` filter sets it and returns Continue). Never resume and Pause
/// here: under ABI 0.2.1 a Pause from request headers becomes StopAll, and a resume
/// asked for in the callback runs before the filter manager records that status, so
/// request bodies stay held (docs/routing.md, "Higress routing").
#[cfg(feature = "higress")]
fn route_with_higress(endpoint: &str) -> Action {
    super::higress::set_upstream_override_host(endpoint);
    Action::Continue
}

#[cfg(not(feature = "higress"))]
fn route_with_higress(_endpoint: &str) -> Action {
    // The configuration refuses `higress` routing in this build; never reached.
    Action::Continue
}

/// Hosts of the routed cluster that Higress would send an override to, asked at
/// most once per cluster per tick; this build has no way to ask.
#[cfg(feature = "higress")]
fn known_hosts(cluster: &str, now_ms: u64) -> Rc<RoutableHosts> {
    super::higress::routable_upstream_hosts(cluster, now_ms)
}

#[cfg(not(feature = "higress"))]
fn known_hosts(_cluster: &str, _now_ms: u64) -> Rc<RoutableHosts> {
    Rc::new(RoutableHosts::default())
}

/// What the engine may ask of a request, read from the host on first use only.
struct HostRequest<'a> {
    route_name: Option<Option<String>>,
    authority: Option<Option<String>>,
    cluster_name: Option<Option<String>>,
    upstream_hosts: Option<Rc<RoutableHosts>>,
    style: &'a mut Option<PropertyStyle>,
    /// The VM clock of the last root callback: the per-tick key of the host list.
    now_ms: u64,
}

impl<'a> HostRequest<'a> {
    fn new(style: &'a mut Option<PropertyStyle>, now_ms: u64) -> Self {
        Self {
            route_name: None,
            authority: None,
            cluster_name: None,
            upstream_hosts: None,
            style,
            now_ms,
        }
    }

    /// A request property by its Higress name (`route_name`) or the name upstream
    /// Envoy gives it (`xds.route_name`); once one style answers, only it is asked.
    fn property(&mut self, name: &str) -> Option<String> {
        let read = |path: Vec<&str>| {
            hostcalls::get_property(path)
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        };
        match self.style {
            Some(PropertyStyle::TopLevel) => read(vec![name]),
            Some(PropertyStyle::Xds) => read(vec!["xds", name]),
            None => {
                if let Some(value) = read(vec![name]) {
                    *self.style = Some(PropertyStyle::TopLevel);
                    Some(value)
                } else {
                    let value = read(vec!["xds", name]);
                    if value.is_some() {
                        *self.style = Some(PropertyStyle::Xds);
                    }
                    value
                }
            }
        }
    }
}

impl RequestHost for HostRequest<'_> {
    fn header(&mut self, name: &str) -> Option<String> {
        // Bytes, not `get_http_request_header`: the SDK unwraps the UTF-8 check
        // there and would panic on a client's non-UTF-8 value.
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }

    fn upstream_hosts(&mut self) -> Option<&RoutableHosts> {
        if self.upstream_hosts.is_none() {
            let now_ms = self.now_ms;
            let hosts = known_hosts(self.cluster_name().unwrap_or_default(), now_ms);
            self.upstream_hosts = Some(hosts);
        }
        self.upstream_hosts.as_deref()
    }
}

impl RequestFacts for HostRequest<'_> {
    fn route_name(&mut self) -> Option<&str> {
        if self.route_name.is_none() {
            self.route_name = Some(self.property("route_name"));
        }
        self.route_name.as_ref().and_then(Option::as_deref)
    }
    fn authority(&mut self) -> Option<&str> {
        self.authority
            .get_or_insert_with(|| {
                // Bytes: the SDK's string variant panics on a non-UTF-8 value.
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority")
                    .ok()
                    .flatten()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
            })
            .as_deref()
    }
    fn cluster_name(&mut self) -> Option<&str> {
        if self.cluster_name.is_none() {
            self.cluster_name = Some(self.property("cluster_name"));
        }
        self.cluster_name.as_ref().and_then(Option::as_deref)
    }
}
