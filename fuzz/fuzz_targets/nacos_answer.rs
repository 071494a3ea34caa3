//! Any bytes as an answer from Nacos, the host or shared data: parsed or refused,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nacos_instance_guard::pure::polling::nacos::digest::AnswerDigest;
use nacos_instance_guard::pure::polling::nacos::response::{parse_instance_list, parse_login};
use nacos_instance_guard::pure::polling::nacos::ApiVersion;
use nacos_instance_guard::pure::registry::endpoint;
use nacos_instance_guard::pure::routing::nacos_cluster::{service_of, NacosNames};
use nacos_instance_guard::pure::routing::upstream_hosts::RoutableHosts;
use nacos_instance_guard::pure::sharing::clock::Reading;
use nacos_instance_guard::pure::sharing::lease::Lease;
use nacos_instance_guard::pure::sharing::published::{self, PublishedToken};

fuzz_target!(|data: &[u8]| {
    for api in [ApiVersion::V1, ApiVersion::V3] {
        if let Ok(set) = parse_instance_list(api, 200, data) {
            for instance in &set.instances {
                assert!(endpoint::parse(&instance.endpoint).is_some());
            }
        }
    }
    // An answer always matches itself, unless a stamp's value is not plain (then only
    // its own bytes match, which they do).
    assert!(AnswerDigest::of(data).matches(data));
    let _ = parse_login(200, data);
    let hosts = RoutableHosts::read(data);
    let _ = hosts.contains(std::str::from_utf8(data).unwrap_or_default());
    let _ = Lease::decode(data);
    let _ = Reading::decode(data);
    let _ = published::decode_content(data);
    let _ = published::decode_heartbeat(data).count();
    let _ = published::decode_learned(data);
    let _ = published::decode_number(Some(data));
    let _ = PublishedToken::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = endpoint::parse(text);
        let _ = service_of(text, &NacosNames::default());
    }
});
