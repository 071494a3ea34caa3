//! The plugin's behaviour over time, with the host behind small traits: the root
//! context feeds it ticks and Nacos answers, the HTTP context asks it for
//! decisions. Everything here runs natively in tests against fakes of the traits.

mod engine;
mod host_traits;
mod metrics;
mod reject;
mod sharing;

pub use engine::{Engine, ScopeRef};
pub use host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
pub use metrics::{metric_segment, STATS_TAG_REGEX};
pub use reject::{RejectResponse, REJECT_CONTENT_TYPE};

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;
