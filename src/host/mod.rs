//! proxy-wasm glue: the only code that talks to the host. It turns host events
//! into engine calls and engine decisions into host actions.

#[cfg(feature = "higress")]
mod higress;
mod host_calls;
mod http;
mod response;
mod root;
mod vm;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Debug lines are written only where they are rare (a routed request whose
    // instance failed); Envoy shows them with `--component-log-level wasm:debug`.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| Box::new(root::GuardRoot::new(context_id)));
}}
