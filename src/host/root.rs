//! The root context: configuration, ticks and Nacos answers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::host_calls::{random_u64, HostMetrics, HostOutbox, HostStore};
use super::http::GuardHttp;
use super::vm::{SharedVm, VmState};
use crate::engine::{Engine, GatewayClock};
use crate::pure::config::{self, Capabilities};
use crate::pure::polling::nacos::response::MAX_ANSWER_BYTES;
use crate::pure::push::oversized;
use crate::pure::sharing::published::ConfigKeys;

thread_local! {
    /// Connections on which a push stream of this VM was cancelled by a root
    /// context that is gone. Envoy's connections belong to the VM's worker
    /// thread, so the next configuration's stream may land on one of them.
    static CANCELLED_CONNECTIONS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The connections each root context of this VM holds a push stream open
    /// on, by context id, as of its last tick.
    static OPEN_CONNECTIONS: RefCell<Vec<(u32, Vec<String>)>> = const { RefCell::new(Vec::new()) };
}

const CAPABILITIES: Capabilities = Capabilities {
    higress_routing: cfg!(feature = "higress"),
};

pub struct GuardRoot {
    context_id: u32,
    vm: Option<SharedVm>,
}

impl GuardRoot {
    pub fn new(context_id: u32) -> Self {
        Self {
            context_id,
            vm: None,
        }
    }

    /// Close what the engine holds open (its push links), and hand the
    /// connections their streams were on to the engines that follow in this VM.
    fn shut_down(&mut self) {
        if let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) {
            vm.engine.shut_down(&mut HostOutbox, &mut HostMetrics);
            let cancelled = vm.engine.cancelled_connections();
            CANCELLED_CONNECTIONS.with(|ids| ids.borrow_mut().extend(cancelled));
        }
        self.publish_open_connections(Vec::new());
    }

    /// The connections this root context's streams are open on now.
    fn publish_open_connections(&self, ids: Vec<String>) {
        OPEN_CONNECTIONS.with(|all| {
            let mut all = all.borrow_mut();
            all.retain(|(context, _)| *context != self.context_id);
            if !ids.is_empty() {
                all.push((self.context_id, ids));
            }
        });
    }

    /// The connections the other root contexts of this VM hold streams on.
    fn open_connections_elsewhere(&self) -> Vec<String> {
        OPEN_CONNECTIONS.with(|all| {
            all.borrow()
                .iter()
                .filter(|(context, _)| *context != self.context_id)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect()
        })
    }
}

impl Context for GuardRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        // Never busy here: the state is borrowed only within a callback.
        let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) else {
            return;
        };
        // A call that failed (reset mid-answer, ...) comes with no headers at all, and
        // reading them then makes the SDK panic (the host says BadArgument).
        let status = (headers > 0)
            .then(|| self.get_http_call_response_header_bytes(":status"))
            .flatten()
            .and_then(|status| std::str::from_utf8(&status).ok()?.parse::<u16>().ok());
        // Read one byte past the limit at most, so an oversized answer is refused
        // without being copied into the VM whole.
        let body = status.map(|_| {
            self.get_http_call_response_body(0, body_size.min(MAX_ANSWER_BYTES + 1))
                .unwrap_or_default()
        });
        let answer = status.zip(body.as_deref());
        let now = vm.read_clock_between_ticks();
        vm.engine.on_answer(
            token,
            answer,
            now,
            &mut HostOutbox,
            &mut HostMetrics,
            &mut HostStore,
        );
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) else {
            return;
        };
        let answer = (status_code == GRPC_OK)
            .then(|| read_grpc_message(response_size))
            .flatten();
        let now = vm.read_clock_between_ticks();
        vm.engine.on_grpc_answer(
            token,
            answer.as_deref(),
            now,
            &mut HostOutbox,
            &mut HostMetrics,
            &mut HostStore,
        );
    }

    fn on_grpc_stream_message(&mut self, token: u32, message_size: usize) {
        let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) else {
            return;
        };
        let now = vm.read_clock_between_ticks();
        if message_size > MAX_ANSWER_BYTES {
            let head =
                read_grpc_buffer(message_size.min(oversized::HEAD_BYTES)).unwrap_or_default();
            vm.engine.on_push_oversized(
                token,
                message_size,
                &head,
                now,
                &mut HostOutbox,
                &mut HostMetrics,
                &mut HostStore,
            );
            return;
        }
        let Some(message) = read_grpc_message(message_size) else {
            return;
        };
        vm.engine.on_push_message(
            token,
            &message,
            now,
            &mut HostOutbox,
            &mut HostMetrics,
            &mut HostStore,
        );
    }

    /// The host is done with this root context: a configuration edit or
    /// removal. Its push links close now, not when the server notices.
    fn on_done(&mut self) -> bool {
        self.shut_down();
        true
    }

    fn on_grpc_stream_close(&mut self, token: u32, _status_code: u32) {
        if let Some(mut vm) = self.vm.as_ref().and_then(|vm| vm.try_borrow_mut().ok()) {
            let now = vm.read_clock_between_ticks();
            vm.engine.on_push_closed(token, now, &mut HostMetrics);
        }
    }
}

const GRPC_OK: u32 = 0;

/// The gRPC message just received, read straight from the host: the SDK's
/// reader panics where the host refuses. An oversized one is not read at all.
fn read_grpc_message(size: usize) -> Option<Vec<u8>> {
    if size > MAX_ANSWER_BYTES {
        return None;
    }
    read_grpc_buffer(size)
}

/// The first `size` bytes of the gRPC message just received.
fn read_grpc_buffer(size: usize) -> Option<Vec<u8>> {
    proxy_wasm::hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

impl RootContext for GuardRoot {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        info!(
            "nacos-instance-guard {} ({} build)",
            env!("CARGO_PKG_VERSION"),
            if cfg!(feature = "higress") {
                "Higress"
            } else {
                "upstream Envoy"
            }
        );
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config = match config::parse(&raw, CAPABILITIES) {
            Ok(config) => config,
            Err(error) => {
                error!("nacos-instance-guard: {error}");
                return false;
            }
        };
        // A configuration given again to this root context replaces its engine.
        self.shut_down();
        let seed = random_u64(self.context_id);
        let mut engine = Engine::new(&config, &mut HostMetrics, seed);
        CANCELLED_CONNECTIONS.with(|ids| engine.distrust_connections(&ids.borrow()));
        // Another draw, not the seed: VM ids must differ between VMs whatever
        // their seeds share.
        let vm_id = random_u64(self.context_id.wrapping_add(1));
        engine.share(
            ConfigKeys::new(&raw),
            vm_id,
            &mut HostStore,
            &mut HostMetrics,
        );
        if engine.guards_anything() {
            self.set_tick_period(Duration::from_millis(engine.tick_period_ms()));
        }
        info!(
            "nacos-instance-guard: configured, {} rules, polling every {} ms tick",
            config.rules.len(),
            engine.tick_period_ms()
        );
        let mut vm = VmState {
            protected_headers: engine.protected_headers().to_vec(),
            engine,
            clock: GatewayClock::default(),
            clock_ms: 0,
            property_style: None,
        };
        vm.read_clock();
        self.vm = Some(Rc::new(RefCell::new(vm)));
        true
    }

    fn on_tick(&mut self) {
        let elsewhere = self.open_connections_elsewhere();
        let open = self
            .vm
            .as_ref()
            .and_then(|vm| vm.try_borrow_mut().ok())
            .map(|mut vm| {
                vm.engine
                    .push_connections_held_elsewhere(&elsewhere, &mut HostMetrics);
                let now = vm.read_clock();
                vm.engine
                    .on_tick(now, &mut HostOutbox, &mut HostMetrics, &mut HostStore);
                vm.engine.open_push_connections()
            });
        if let Some(open) = open {
            self.publish_open_connections(open);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // proxy-wasm panics on `None`; without a configuration the context does nothing.
        Some(Box::new(GuardHttp::new(self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
