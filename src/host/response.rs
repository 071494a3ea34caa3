//! Reading `response.flags` on every routed request's response, as cheaply as
//! the ABI allows: the path is a constant (the SDK builds it in two allocations
//! per call) and the 8 bytes the host hands back are read in place and freed.
#![allow(unsafe_code)]

use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// `response.flags` as proxy-wasm serializes a property path: parts joined by NUL.
const RESPONSE_FLAGS: &[u8] = b"response\0flags";
const OK: u32 = 0;

/// Envoy's `%RESPONSE_FLAGS%` bits of the current response; 0 when the host
/// has none.
pub fn response_flags() -> u64 {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host reads `RESPONSE_FLAGS` only during the call; what it
    // returns was allocated through this module's `proxy_on_memory_allocate`
    // (a `Vec<u8>` of capacity `size`, as the SDK's allocator makes it), so it
    // is owned here and dropped as that Vec, as the SDK's own `get_property` does.
    let bytes = unsafe {
        let status = proxy_get_property(
            RESPONSE_FLAGS.as_ptr(),
            RESPONSE_FLAGS.len(),
            &mut data,
            &mut size,
        );
        if status != OK || data.is_null() {
            return 0;
        }
        Vec::from_raw_parts(data, size, size)
    };
    <[u8; 8]>::try_from(bytes.as_slice()).map_or(0, u64::from_le_bytes)
}
