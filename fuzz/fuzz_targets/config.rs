//! Any bytes as the plugin configuration: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nacos_instance_guard::pure::config::{parse, Capabilities};

fuzz_target!(|data: &[u8]| {
    for higress_routing in [false, true] {
        if let Ok(config) = parse(data, Capabilities { higress_routing }) {
            // Whatever parses must also yield its derived views.
            let _ = config.protected_headers();
            let _ = config.guards().count();
        }
    }
});
