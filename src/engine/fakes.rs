//! Stand-ins for the host, recording what the engine asked of it.

use std::collections::BTreeMap;

use super::guards::{RequestAction, RequestHost};
use super::host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
use crate::pure::config::DEFAULT_PIN_HEADER;
use crate::pure::routing::rules::RequestFacts;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    pub token: u32,
    pub cluster: String,
    pub authority: String,
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
    pub timeout_ms: u64,
}

#[derive(Default)]
pub struct FakeOutbox {
    pub sent: Vec<SentCall>,
    pub refuse: bool,
    /// Unary gRPC calls: token, service, message.
    pub grpc_calls: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// Streams opened (tokens), messages sent on them, streams closed.
    pub opened: Vec<u32>,
    pub on_streams: Vec<(u32, Vec<u8>)>,
    /// Streams whose side was ended (`grpc_finish`), with their last message.
    pub finished: Vec<(u32, Option<Vec<u8>>)>,
    pub closed: Vec<u32>,
    next_token: u32,
}

impl Outbox for FakeOutbox {
    fn dispatch(&mut self, call: OutgoingCall<'_>) -> Result<u32, String> {
        if self.refuse {
            return Err("cluster not found".into());
        }
        self.next_token += 1;
        self.sent.push(SentCall {
            token: self.next_token,
            cluster: call.cluster.into(),
            authority: call.authority.into(),
            method: call.request.method,
            path: call.request.path.clone(),
            body: call.request.body.clone(),
            timeout_ms: call.timeout_ms,
        });
        Ok(self.next_token)
    }

    fn grpc_call(
        &mut self,
        service: &[u8],
        message: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, String> {
        if self.refuse {
            return Err("cluster not found".into());
        }
        self.next_token += 1;
        self.grpc_calls
            .push((self.next_token, service.to_vec(), message.to_vec()));
        Ok(self.next_token)
    }

    fn grpc_open(&mut self, _service: &[u8]) -> Result<u32, String> {
        self.next_token += 1;
        self.opened.push(self.next_token);
        Ok(self.next_token)
    }

    fn grpc_send(&mut self, stream: u32, message: &[u8]) -> Result<(), String> {
        self.on_streams.push((stream, message.to_vec()));
        Ok(())
    }

    fn grpc_finish(&mut self, stream: u32, last: Option<&[u8]>) -> Result<(), String> {
        self.finished.push((stream, last.map(<[u8]>::to_vec)));
        Ok(())
    }

    fn grpc_close(&mut self, stream: u32) {
        self.closed.push(stream);
    }
}

impl FakeOutbox {
    /// Calls sent so far, forgotten afterwards.
    pub fn take(&mut self) -> Vec<SentCall> {
        std::mem::take(&mut self.sent)
    }
}

#[derive(Default, Clone)]
pub struct FakeMetrics {
    names: Vec<String>,
    pub values: BTreeMap<String, u64>,
}

impl FakeMetrics {
    fn define(&mut self, name: &str) -> Option<u32> {
        let index = match self.names.iter().position(|n| n == name) {
            Some(index) => index,
            None => {
                self.names.push(name.to_string());
                self.values.insert(name.to_string(), 0);
                self.names.len() - 1
            }
        };
        u32::try_from(index).ok()
    }

    pub fn get(&self, name: &str) -> u64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("metric {name} not defined"))
    }
}

impl Metrics for FakeMetrics {
    fn define_counter(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }
    fn define_gauge(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }
    fn add(&mut self, id: u32, amount: u64) {
        let name = self.names[id as usize].clone();
        *self.values.get_mut(&name).unwrap() += amount;
    }
    fn record(&mut self, id: u32, value: u64) {
        let name = self.names[id as usize].clone();
        self.values.insert(name, value);
    }
}

/// Another VM's step, run by [`FakeStore`] between two of this VM's calls.
pub type Interleaved = Box<dyn FnOnce(&mut FakeStore)>;

/// Shared data as Envoy keeps it: values with a version for compare-and-swap.
#[derive(Default)]
pub struct FakeStore {
    entries: BTreeMap<String, (Vec<u8>, u32)>,
    pub writes: usize,
    /// Bytes of values read and written, for what a step costs in shared data.
    pub bytes_moved: std::cell::Cell<usize>,
    /// Refuse this many compare-and-swap writes to keys containing the text, as
    /// another VM writing first would.
    pub contend: Option<(&'static str, usize)>,
    /// Run this before the first write to a key containing the text lands, as
    /// another VM's thread would between a VM's read and its write.
    pub before_write: Option<(&'static str, Interleaved)>,
}

impl FakeStore {
    /// The value of the one key that ends with `suffix`, and the key.
    pub fn ending_with(&self, suffix: &str) -> Option<(String, Vec<u8>)> {
        let mut found = self.entries.iter().filter(|(key, _)| key.ends_with(suffix));
        let (key, (value, _)) = found.next()?;
        assert!(found.next().is_none(), "two keys end with {suffix}");
        Some((key.clone(), value.clone()))
    }

    /// How many keys shared data holds: Envoy never removes one.
    pub fn key_count(&self) -> usize {
        self.entries.len()
    }
}

impl SharedStore for FakeStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries.get(key) {
            Some((value, cas)) => {
                self.bytes_moved.set(self.bytes_moved.get() + value.len());
                (Some(value.clone()), Some(*cas))
            }
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.bytes_moved.set(self.bytes_moved.get() + value.len());
        if self
            .before_write
            .as_ref()
            .is_some_and(|(text, _)| key.contains(text))
        {
            let (_, interleaved) = self.before_write.take().unwrap();
            interleaved(self);
        }
        if let Some((text, left)) = &mut self.contend {
            if cas.is_some() && key.contains(*text) && *left > 0 {
                *left -= 1;
                return false;
            }
        }
        let current = self.entries.get(key).map(|(_, version)| *version);
        if cas.is_some_and(|cas| current != Some(cas)) {
            return false;
        }
        self.writes += 1;
        self.entries
            .insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        true
    }
}

/// A request on a route, with an optional pin header.
pub struct FakeRequest {
    pub route: &'static str,
    pub pin: Option<String>,
    pub cluster: Option<&'static str>,
    /// What Higress's `proxy_get_upstream_hosts` answers for the route's cluster.
    pub upstream: Option<crate::pure::routing::upstream_hosts::RoutableHosts>,
}

impl FakeRequest {
    pub fn on(route: &'static str) -> Self {
        Self {
            route,
            pin: None,
            cluster: None,
            upstream: None,
        }
    }

    /// A request on `route` routed to `cluster`.
    pub fn to(route: &'static str, cluster: &'static str) -> Self {
        Self {
            cluster: Some(cluster),
            ..Self::on(route)
        }
    }
}

impl RequestFacts for FakeRequest {
    fn route_name(&mut self) -> Option<&str> {
        Some(self.route)
    }
    fn authority(&mut self) -> Option<&str> {
        None
    }
    fn cluster_name(&mut self) -> Option<&str> {
        self.cluster
    }
}

impl RequestHost for FakeRequest {
    fn header(&mut self, name: &str) -> Option<String> {
        (name == DEFAULT_PIN_HEADER)
            .then(|| self.pin.clone())
            .flatten()
    }
    fn upstream_hosts(&mut self) -> Option<&crate::pure::routing::upstream_hosts::RoutableHosts> {
        self.upstream.as_ref()
    }
}

/// What a request got, as one word or endpoint.
pub fn outcome(action: RequestAction<'_>) -> String {
    match action {
        RequestAction::Route { endpoint, .. } => endpoint.to_string(),
        RequestAction::Reject(response) => {
            let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
            format!("reject {}", body["code"].as_str().unwrap())
        }
        RequestAction::PassThrough => "pass".into(),
        RequestAction::Ignore => "ignore".into(),
    }
}

/// The configuration `json`, read as the upstream-Envoy artifact reads it.
pub fn config(json: &str) -> crate::pure::config::PluginConfig {
    let envoy = crate::pure::config::Capabilities {
        higress_routing: false,
    };
    crate::pure::config::parse(json.as_bytes(), envoy).unwrap()
}

/// The settings of the global guard of `json`.
pub fn guard_settings(json: &str) -> crate::pure::config::GuardSettings {
    config(json).guards().next().unwrap().clone()
}
