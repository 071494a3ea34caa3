//! The plugin's behaviour over time, with the host behind small traits: the root
//! context feeds it ticks and Nacos answers, the HTTP context asks it for
//! decisions. Everything here runs natively in tests against fakes of the traits.

mod guard;
mod metrics;
mod reject;
mod seams;
mod sharing;

pub use guard::{Engine, ScopeRef};
pub use metrics::{metric_segment, STATS_TAG_REGEX};
pub use reject::{RejectResponse, REJECT_CONTENT_TYPE};
pub use seams::{Metrics, Outbox, OutgoingCall, SharedStore};

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;
