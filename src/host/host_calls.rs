//! The engine's host traits implemented with proxy-wasm host calls.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::engine::{Metrics, Outbox, OutgoingCall, SharedStore};
use crate::pure::push::grpc;

pub struct HostOutbox;

impl Outbox for HostOutbox {
    fn dispatch(&mut self, call: OutgoingCall<'_>) -> Result<u32, String> {
        let mut headers = vec![
            (":method", call.request.method),
            (":path", call.request.path.as_str()),
            (":authority", call.authority),
        ];
        if call.request.body.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            call.request.body.as_deref().map(str::as_bytes),
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("dispatch refused by the host: {status:?}"))
    }

    fn grpc_call(
        &mut self,
        service: &[u8],
        message: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        hostcalls::dispatch_grpc_call(
            service_str(service)?,
            grpc::UNARY_SERVICE,
            grpc::UNARY_METHOD,
            vec![],
            Some(message),
            Duration::from_millis(timeout_ms),
        )
        .map_err(|status| format!("gRPC call refused by the host: {status:?}"))
    }

    fn grpc_open(&mut self, service: &[u8]) -> Result<u32, String> {
        let service = service_str(service)?;
        hostcalls::open_grpc_stream(service, grpc::STREAM_SERVICE, grpc::STREAM_METHOD, vec![])
            .map_err(|status| format!("gRPC stream refused by the host: {status:?}"))
    }

    fn grpc_send(&mut self, stream: u32, message: &[u8]) -> Result<(), String> {
        hostcalls::send_grpc_stream_message(stream, Some(message), false)
            .map_err(|status| format!("gRPC send refused by the host: {status:?}"))
    }

    fn grpc_finish(&mut self, stream: u32, last: Option<&[u8]>) -> Result<(), String> {
        hostcalls::send_grpc_stream_message(stream, last, true)
            .map_err(|status| format!("gRPC send refused by the host: {status:?}"))
    }

    fn grpc_close(&mut self, stream: u32) {
        // Cancelled, not half-closed: nothing more is wanted from it.
        let _ = hostcalls::cancel_grpc_stream(stream);
    }
}

/// The SDK passes the service as `&str` though Envoy reads bytes; the serialized
/// `GrpcService` is UTF-8 whenever its names are ASCII, as Envoy cluster names are.
fn service_str(service: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(service).map_err(|_| "the gRPC cluster name is not ASCII".to_string())
}

pub struct HostMetrics;

impl Metrics for HostMetrics {
    fn define_counter(&mut self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }
    fn define_gauge(&mut self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Gauge, name).ok()
    }
    fn add(&mut self, id: u32, amount: u64) {
        // A failed stats update must not fail the request.
        let _ = hostcalls::increment_metric(id, i64::try_from(amount).unwrap_or(i64::MAX));
    }
    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Milliseconds since the Unix epoch by the host's clock; 0 if it cannot tell.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// 64 random bits: the host's entropy (WASI `random_get`, behind std's
/// `RandomState`), mixed with the wall clock and `salt` in case it has none.
pub fn random_u64(salt: u32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.write_u32(salt);
    hasher.finish()
}

pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
