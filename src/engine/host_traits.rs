//! The host calls the engine needs, as traits, so tests can stand in for Envoy.

use crate::pure::polling::nacos::request::NacosRequest;

/// One HTTP call to Nacos through an Envoy cluster.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingCall<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub request: &'a NacosRequest,
    pub timeout_ms: u64,
}

/// Sends calls (`dispatch_http_call`); the answer comes back later by token.
pub trait Outbox {
    fn dispatch(&mut self, call: OutgoingCall<'_>) -> Result<u32, String>;

    /// A unary Nacos gRPC call (`Request/request`) of one encoded `Payload` to
    /// `service` (`push::grpc::envoy_grpc_service`); the answer comes back by token.
    fn grpc_call(&mut self, service: &[u8], message: &[u8], timeout_ms: u64)
        -> Result<u32, String>;
    /// Open Nacos's bidirectional stream (`BiRequestStream/requestBiStream`).
    fn grpc_open(&mut self, service: &[u8]) -> Result<u32, String>;
    fn grpc_send(&mut self, stream: u32, message: &[u8]) -> Result<(), String>;
    /// Send `last` (if any) and end this side of the stream, as one write: unlike
    /// `grpc_close`, a message already queued is delivered.
    fn grpc_finish(&mut self, stream: u32, last: Option<&[u8]>) -> Result<(), String>;
    fn grpc_close(&mut self, stream: u32);
}

/// Gateway stats (`define_metric`, `increment_metric`, `record_metric`).
pub trait Metrics {
    fn define_counter(&mut self, name: &str) -> Option<u32>;
    fn define_gauge(&mut self, name: &str) -> Option<u32>;
    fn add(&mut self, id: u32, amount: u64);
    fn record(&mut self, id: u32, value: u64);

    fn increment(&mut self, id: u32) {
        self.add(id, 1);
    }
}

/// Process-wide shared data (`get_shared_data` / `set_shared_data`), the only
/// memory Envoy's VMs share.
pub trait SharedStore {
    /// The value of `key` and its compare-and-swap token.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Write `key`; with `cas`, only if nobody wrote it since that token was read.
    /// False if the write was refused.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}
