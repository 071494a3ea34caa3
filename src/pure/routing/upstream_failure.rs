//! Did the instance a request was routed to fail before answering? Read from
//! what Envoy says of the finished response: `response.flags` (the legacy
//! bit-vector of `%RESPONSE_FLAGS%`) and `response.code_details`.
//!
//! What counts: the gateway could not get an answer from the instance at all —
//! the connection was refused or timed out (`UF`), reset or closed before the
//! response started (`UR`, `UC`), Envoy had no healthy host to send to (`UH`), or
//! retries of these ran out (`URX`). What does not:
//! - an answer the instance gave itself, whatever its status (`code_details`
//!   `via_upstream`): a 5xx from a live instance is the application's business,
//!   and Envoy's outlier detection (consecutive 5xx) covers it where wanted;
//!   avoiding an instance for its own 500s would move one endpoint's bugs onto
//!   its neighbours, and the instance is not gone, which is what this plugin guards;
//! - an upstream request timeout (`UT`): the instance accepted the connection
//!   and is working on the request, so it is alive; the route's timeout is the
//!   operator's judgement of one request, not of the instance. A dead host that
//!   drops packets shows as a connect timeout, which Envoy reports as `UF`.

/// `%RESPONSE_FLAGS%` bits (envoyproxy/envoy `envoy/stream_info/stream_info.h`,
/// `CoreResponseFlag`; the property keeps the legacy bit positions).
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
}

/// The flags that say the chosen instance gave no answer.
const INSTANCE_FAILED: u64 = flags::NO_HEALTHY_UPSTREAM
    | flags::UPSTREAM_REMOTE_RESET
    | flags::UPSTREAM_CONNECTION_FAILURE
    | flags::UPSTREAM_CONNECTION_TERMINATION
    | flags::UPSTREAM_RETRY_LIMIT_EXCEEDED;

/// What Envoy sets in `response.code_details` when the upstream answered.
const VIA_UPSTREAM: &str = "via_upstream";

/// True when the routed instance failed before answering (see the module's note).
pub fn instance_failed(response_flags: u64, code_details: Option<&str>) -> bool {
    if code_details == Some(VIA_UPSTREAM) {
        return false;
    }
    response_flags & INSTANCE_FAILED != 0
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;
    use crate::testing::test;

    #[test]
    fn refused_reset_and_no_healthy_host_are_failures() {
        let refused = "upstream_reset_before_response_started{remote_connection_failure}";
        assert!(instance_failed(UPSTREAM_CONNECTION_FAILURE, Some(refused)));
        assert!(instance_failed(UPSTREAM_REMOTE_RESET, None));
        assert!(instance_failed(UPSTREAM_CONNECTION_TERMINATION, None));
        assert!(instance_failed(
            NO_HEALTHY_UPSTREAM,
            Some("no_healthy_upstream")
        ));
        let retried = UPSTREAM_CONNECTION_FAILURE | UPSTREAM_RETRY_LIMIT_EXCEEDED;
        assert!(instance_failed(retried, None));
    }

    #[test]
    fn an_answer_of_the_instance_is_not_a_failure_whatever_its_flags() {
        assert!(!instance_failed(0, Some(VIA_UPSTREAM)));
        // Retries on 5xx that ran out end with the instance's own answer.
        assert!(!instance_failed(
            UPSTREAM_RETRY_LIMIT_EXCEEDED,
            Some(VIA_UPSTREAM)
        ));
    }

    #[test]
    fn a_request_timeout_is_not_a_failure_of_the_instance() {
        assert!(!instance_failed(
            UPSTREAM_REQUEST_TIMEOUT,
            Some("upstream_response_timeout")
        ));
        assert!(!instance_failed(0, None));
    }
}
