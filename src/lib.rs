//! nacos-instance-guard: a Higress Wasm plugin that routes each request only to an
//! instance Nacos lists as registered and healthy right now.
//!
//! Data flows one way: [`pure::config`] → poll plan ([`pure::polling::schedule`]) → Nacos
//! answers ([`pure::polling::nacos`]) → [`pure::registry::snapshot`] → per-request
//! [`pure::routing::decision`] → host action and metrics. Everything in [`pure`] and
//! [`engine`] is pure Rust, tested natively and under wasm-bindgen-test; only
//! `host` touches proxy-wasm.

pub mod engine;
pub mod pure;

#[cfg(all(feature = "host", target_arch = "wasm32"))]
mod host;

/// Test attribute that runs natively under `cargo test` and under Node through
/// wasm-bindgen-test when compiled to `wasm32-unknown-unknown`.
#[cfg(test)]
pub(crate) mod testing {
    #[cfg(not(target_arch = "wasm32"))]
    pub use ::core::prelude::v1::test;
    #[cfg(target_arch = "wasm32")]
    pub use wasm_bindgen_test::wasm_bindgen_test as test;
}
