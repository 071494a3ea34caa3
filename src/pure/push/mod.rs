//! Nacos 2.x gRPC push: the `Payload` protobuf and the messages of subscribing to a
//! service and hearing of its changes. Pure bytes in and out; the host carries them
//! over Envoy's gRPC calls.

pub mod grpc;
pub mod messages;
pub mod oversized;
pub mod wire;
