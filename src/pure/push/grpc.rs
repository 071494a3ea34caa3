//! Reaching Nacos's gRPC services through Envoy. They have no protobuf package,
//! so the paths are `/Request/request` and `/BiRequestStream/requestBiStream`
//! (alibaba/nacos `api/src/main/proto/nacos_grpc_service.proto`).

use super::wire::put;

pub const UNARY_SERVICE: &str = "Request";
pub const UNARY_METHOD: &str = "request";
pub const STREAM_SERVICE: &str = "BiRequestStream";
pub const STREAM_METHOD: &str = "requestBiStream";

/// The service argument of `proxy_grpc_call` and `proxy_grpc_stream`: a serialized
/// `envoy.config.core.v3.GrpcService { envoy_grpc = 1 { cluster_name = 1;
/// authority = 2 } }`. Envoy takes a string that does not parse as one for a bare
/// cluster name and then sends the cluster name as `:authority`
/// (envoyproxy/envoy `source/extensions/common/wasm/context.cc`, `grpcCall` and
/// `grpcStream`); a Higress cluster name such as `outbound|9848||nacos.dns` is not
/// a valid authority, and r-nacos's HTTP/2 server resets such a stream with a
/// protocol error (seen in tests/e2e/test_push.py's first run).
pub fn envoy_grpc_service(cluster: &str, authority: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::new();
    put(&mut envoy_grpc, 1, cluster.as_bytes());
    put(&mut envoy_grpc, 2, authority.as_bytes());
    let mut service = Vec::new();
    put(&mut service, 1, &envoy_grpc);
    service
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn the_service_is_an_envoy_grpc_message_naming_cluster_and_authority() {
        let service = envoy_grpc_service("outbound|9848||nacos.dns", "nacos.dns");
        let mut expected = vec![0x0a, 37, 0x0a, 24];
        expected.extend_from_slice(b"outbound|9848||nacos.dns");
        expected.extend_from_slice(&[0x12, 9]);
        expected.extend_from_slice(b"nacos.dns");
        assert_eq!(service, expected);
    }
}
