//! The plugin's behaviour over time, with the host behind small traits: the root
//! context feeds it ticks and Nacos answers, the HTTP context asks it what to do
//! with each request. Everything here runs natively in tests against fakes of
//! the traits.

mod avoidance;
mod clock;
// The `Engine` type lives in a file named for it, inside the layer of that name.
#[allow(clippy::module_inception)]
mod engine;
mod following;
mod guards;
mod host_traits;
mod ids;
mod learned;
mod metrics;
mod polling;
mod push;
mod push_links;
mod push_subscriptions;
mod push_trust;
mod reject;
mod servers;
mod sharing;
mod targets;
mod wiring;

pub use clock::GatewayClock;
pub use engine::Engine;
pub use guards::{RequestAction, RequestHost, Routed};
pub use host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
pub use metrics::{
    metric_segment, GROUP_TAG_REGEX, NAMESPACE_TAG_REGEX, STATS_TAG_REGEX, VIEW_TAG_REGEX,
};
pub use reject::{RejectResponse, REJECT_CONTENT_TYPE};

#[cfg(test)]
mod avoidance_tests;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod learned_tests;
#[cfg(test)]
mod push_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
