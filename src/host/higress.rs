//! Higress-only host functions. A module importing them does not load in upstream
//! Envoy, which is why this file exists only in the `higress` build.
//!
//! Sources: higress-group/proxy-wasm-cpp-host src/exports.cc
//! (`set_upstream_override_host`, `get_upstream_hosts`); how Envoy reads the
//! override: docs/routing.md, "Higress routing".
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use crate::pure::routing::upstream_hosts::RoutableHosts;

extern "C" {
    fn proxy_set_upstream_override_host(address: *const u8, length: usize) -> u32;
    fn proxy_get_upstream_hosts(return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// Ask Higress to send this request to `endpoint` (`ip:port`). The host only stores
/// it; the router reads it when it picks the host, after the filter chain ran.
pub fn set_upstream_override_host(endpoint: &str) {
    // SAFETY: the host only reads `length` bytes from `address`, which stay valid
    // for the duration of the call.
    unsafe {
        proxy_set_upstream_override_host(endpoint.as_ptr(), endpoint.len());
    }
}

/// The hosts of one cluster as last asked, and when.
struct Cached {
    cluster: String,
    asked_at_ms: u64,
    hosts: Rc<RoutableHosts>,
}

thread_local! {
    // One VM is one thread; a handful of clusters at most are guarded.
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// How long a cluster's host list is kept. The host serializes every host of the
/// cluster on each call, and reading 1,000 of them costs the VM about a million Wasm
/// instructions (`bench/run.py --only higress`); once a second that is a fraction of
/// a percent of a worker's requests, once a tick it was a third more work per
/// request. The list only ranks the instances Nacos lists (a host the cluster does
/// not have yet, or marks Unhealthy, comes last), so a second of lag costs nothing
/// but a later preference.
const HOST_LIST_TTL_MS: u64 = 1_000;

/// The hosts of the routed cluster `cluster` that Envoy would honour an override
/// to (not Unhealthy), asked again once `HOST_LIST_TTL_MS` passed on the VM's clock.
pub fn routable_upstream_hosts(cluster: &str, now_ms: u64) -> Rc<RoutableHosts> {
    CACHE.with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return ask_host();
        };
        if let Some(entry) = cache.iter_mut().find(|entry| entry.cluster == cluster) {
            if now_ms.abs_diff(entry.asked_at_ms) >= HOST_LIST_TTL_MS {
                entry.hosts = ask_host();
                entry.asked_at_ms = now_ms;
            }
            return Rc::clone(&entry.hosts);
        }
        let hosts = ask_host();
        cache.push(Cached {
            cluster: cluster.to_owned(),
            asked_at_ms: now_ms,
            hosts: Rc::clone(&hosts),
        });
        hosts
    })
}

fn ask_host() -> Rc<RoutableHosts> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to memory it allocated in this VM through
    // `proxy_on_memory_allocate` (exported by proxy-wasm), and its size; this code
    // takes ownership of that buffer exactly once.
    let bytes = unsafe {
        if proxy_get_upstream_hosts(&mut data, &mut size) != 0 || data.is_null() {
            return Rc::new(RoutableHosts::default());
        }
        Vec::from_raw_parts(data, size, size)
    };
    Rc::new(RoutableHosts::read(&bytes))
}
