//! The pure core: no proxy-wasm in here, only data in and decisions out. The
//! folders follow the data: configuration, then polling Nacos, the registry's
//! answers, routing each request, and the sharing between an Envoy's VMs.

pub mod config;
/// The plugin's unseeded hashes, and maps keyed by them.
pub mod hashing;
/// The one way JSON is read (into derived types), and writing JSON strings.
pub mod json;
pub mod polling;
/// Nacos 2.x gRPC push: the wire format and the messages.
pub mod push;
pub mod registry;
pub mod routing;
pub mod sharing;
