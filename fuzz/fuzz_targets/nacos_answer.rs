//! Any bytes as an answer from Nacos or the host: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nacos_instance_guard::pure::sharing::lease::Lease;
use nacos_instance_guard::pure::polling::nacos::response::{parse_instance_list, parse_login};
use nacos_instance_guard::pure::polling::nacos::ApiVersion;
use nacos_instance_guard::pure::sharing::published::{self, PublishedSnapshot, PublishedToken};
use nacos_instance_guard::pure::registry::endpoint;
use nacos_instance_guard::pure::routing::upstream_hosts;

fuzz_target!(|data: &[u8]| {
    for api in [ApiVersion::V1, ApiVersion::V3] {
        if let Ok(set) = parse_instance_list(api, 200, data) {
            for instance in &set.instances {
                assert!(endpoint::parse(&instance.endpoint).is_some());
            }
        }
    }
    let _ = parse_login(200, data);
    let _ = upstream_hosts::endpoints(data);
    let _ = Lease::decode(data);
    let _ = published::decode::<PublishedSnapshot>(data);
    let _ = published::decode::<PublishedToken>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = endpoint::parse(text);
    }
});
