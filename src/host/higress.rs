//! Higress-only host functions. A module importing them does not load in upstream
//! Envoy, which is why this file exists only in the `higress` build.
#![allow(unsafe_code)]

use crate::pure::routing::upstream_hosts;

extern "C" {
    fn proxy_set_upstream_override_host(address: *const u8, length: usize) -> u32;
    fn proxy_get_upstream_hosts(return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// Ask Higress to send this request to `endpoint` (`ip:port`); a host the routed
/// cluster does not know falls back to its normal load balancing.
pub fn set_upstream_override_host(endpoint: &str) {
    // SAFETY: the host only reads `length` bytes from `address`, which stay valid
    // for the duration of the call.
    unsafe {
        proxy_set_upstream_override_host(endpoint.as_ptr(), endpoint.len());
    }
}

/// The `ip:port` of every host of the routed cluster; empty if the host has none.
pub fn upstream_hosts() -> Vec<String> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to memory it allocated in this VM through
    // `proxy_on_memory_allocate` (exported by proxy-wasm), and its size; this code
    // takes ownership of that buffer exactly once.
    let bytes = unsafe {
        if proxy_get_upstream_hosts(&mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    };
    upstream_hosts::endpoints(&bytes)
}
