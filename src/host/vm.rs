//! What one VM keeps between callbacks, shared by its root and HTTP contexts.

use std::cell::RefCell;
use std::rc::Rc;

use super::host_calls::{now_ms, HostStore};
use crate::engine::{Engine, GatewayClock};

/// Where the host keeps request properties such as `route_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyStyle {
    /// `route_name`, as Higress names them.
    TopLevel,
    /// `xds.route_name`, as upstream Envoy names them.
    Xds,
}

pub struct VmState {
    pub engine: Engine,
    pub clock: GatewayClock,
    /// The gateway clock at the root's last callback. Requests read it instead
    /// of asking the host: it is at most one tick (50 ms) old.
    pub clock_ms: u64,
    /// Learned from the first request that finds a property, then asked directly.
    pub property_style: Option<PropertyStyle>,
    /// `Engine::protected_headers`, kept here so a request can clear them while
    /// the engine's answer still borrows the engine.
    pub protected_headers: Vec<String>,
}

impl VmState {
    /// Read the gateway clock now, and keep the reading for requests.
    pub fn read_clock(&mut self) -> u64 {
        self.clock_ms = self.clock.now(now_ms(), &mut HostStore);
        self.clock_ms
    }

    /// The same for the callbacks between ticks (answers): the shared reading is
    /// left to the ticks unless this VM's own is more than a tick old.
    pub fn read_clock_between_ticks(&mut self) -> u64 {
        self.clock_ms = self.clock.now_between_ticks(now_ms(), &mut HostStore);
        self.clock_ms
    }
}

pub type SharedVm = Rc<RefCell<VmState>>;
