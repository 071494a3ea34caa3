//! Any bytes as a gRPC message from Nacos: decoded and read, or refused, never a
//! panic; and what decodes encodes back to the same payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nacos_instance_guard::pure::push::messages::{
    read_server_check, read_stream_message, read_subscribe_answer, ServerMessage,
};
use nacos_instance_guard::pure::push::wire;
use nacos_instance_guard::pure::registry::endpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = wire::decode(data) {
        assert_eq!(wire::decode(&wire::encode(&payload)), Ok(payload));
    }
    let _ = read_server_check(data);
    let service = match read_stream_message(data) {
        Ok(ServerMessage::Notify { service, .. }) => Some(service),
        _ => read_subscribe_answer(data).ok(),
    };
    if let Some(Ok(set)) = service.map(|service| service.list) {
        for instance in &set.instances {
            assert!(endpoint::parse(&instance.endpoint).is_some());
        }
    }
});
