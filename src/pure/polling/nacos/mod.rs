//! The Nacos OpenAPI as this plugin speaks it: the requests it sends and the
//! answers it accepts.

pub mod digest;
pub mod request;
pub mod response;

/// Which Nacos API family to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `/nacos/v1/...`: Nacos 1.x, 2.x, 3.0–3.1 and r-nacos.
    V1,
    /// `/nacos/v3/client/...`: the Nacos 3 client API.
    V3,
}
