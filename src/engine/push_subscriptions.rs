//! A push link's subscriptions: one per service the server knows (namespace,
//! group, name), shared by every target of that service whatever clusters it
//! filters on. Java Nacos keeps one subscriber per (connection, service), so a
//! second subscription of one service with other clusters would replace the
//! first (`naming/.../core/v2/client/AbstractClient.java`, `subscribers.put`);
//! the plugin subscribes with no cluster filter and each guard filters the
//! pushed list itself, as it does a polled one.

use super::ids::{slot_at, Id, TargetId};
use crate::pure::polling::nacos::request::ServiceKey;

/// Where one subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Never subscribed: a service asked for in two namespaces (see `Link::subscribe`).
    Polled,
    Sent,
    Live,
    RetryAt(u64),
}

/// A target of a subscription: the clusters its guards filter on, and when its
/// next safety poll is due while the subscription lives.
pub(super) struct Member {
    pub target: TargetId,
    pub clusters: Vec<String>,
    pub safety_poll_due_ms: u64,
}

pub(super) struct Subscribed {
    pub service: ServiceKey,
    pub members: Vec<Member>,
    pub state: State,
    /// The wait before the next try after a refusal, doubling per refusal in a
    /// row; a permanent refusal (403: no permission) is not asked again every
    /// second.
    pub retry_backoff_ms: u64,
    /// Refusals since the subscription last succeeded: only the first is logged.
    pub refusals: u32,
}

impl Member {
    /// Whether a pushed list for `clusters` (comma-joined, empty for all) tells
    /// the whole truth about what this target filters on.
    pub fn covers(&self, clusters: &str) -> bool {
        clusters.is_empty()
            || (!self.clusters.is_empty()
                && self
                    .clusters
                    .iter()
                    .all(|c| clusters.split(',').any(|pushed| pushed == c)))
    }
}

/// How long after a subscription succeeds `target`'s first safety poll is due:
/// in (0, `interval_ms`], spread by the target's number. The fractional parts
/// of i·φ (Fibonacci hashing: the top bits of i × 2⁶⁴/φ) fill the interval
/// evenly for any count of targets, so services subscribed in one tick are
/// polled spread over the interval, and each keeps its phase after that.
pub(super) fn safety_phase_ms(target: TargetId, interval_ms: u64) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let fraction = (target.index() as u64).wrapping_mul(GOLDEN) >> 32;
    interval_ms - ((u128::from(fraction) * u128::from(interval_ms)) >> 32) as u64
}

/// The link's subscriptions, and which one each target belongs to.
#[derive(Default)]
pub(super) struct Subscriptions {
    list: Vec<Subscribed>,
    /// By `TargetId` index: the subscription's index in `list`.
    of_target: Vec<Option<usize>>,
    targets: usize,
}

impl Subscriptions {
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Subscribed> {
        self.list.get_mut(index)
    }

    /// The subscription `target` belongs to, by index.
    pub fn of(&self, target: TargetId) -> Option<usize> {
        self.of_target.get(target.index()).copied().flatten()
    }

    pub fn member_mut(&mut self, target: TargetId) -> Option<(State, &mut Member)> {
        let index = self.of(target)?;
        let subscribed = self.list.get_mut(index)?;
        let state = subscribed.state;
        let member = subscribed.members.iter_mut().find(|m| m.target == target)?;
        Some((state, member))
    }

    /// The subscription of `service`, by index.
    pub fn find(&self, service: &ServiceKey) -> Option<usize> {
        self.list.iter().position(|s| s.service == *service)
    }

    /// A new subscription of `service` in `state`; its index.
    pub fn add(&mut self, service: ServiceKey, state: State, first_backoff_ms: u64) -> usize {
        self.list.push(Subscribed {
            service,
            members: Vec::new(),
            state,
            retry_backoff_ms: first_backoff_ms,
            refusals: 0,
        });
        self.list.len() - 1
    }

    /// `target` joins subscription `index`.
    pub fn join(&mut self, index: usize, member: Member) {
        let target = member.target;
        let Some(subscribed) = self.list.get_mut(index) else {
            return;
        };
        subscribed.members.push(member);
        if let Some(slot) = slot_at(&mut self.of_target, target.index()) {
            if slot.replace(index).is_none() {
                self.targets += 1;
            }
        }
    }

    /// How many targets belong to a subscription.
    pub fn targets(&self) -> usize {
        self.targets
    }

    pub fn clear(&mut self) {
        self.list.clear();
        self.of_target.clear();
        self.targets = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Subscribed)> {
        self.list.iter().enumerate()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Subscribed> {
        self.list.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn member(clusters: &[&str]) -> Member {
        Member {
            target: TargetId::from_index(0),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            safety_poll_due_ms: 0,
        }
    }

    #[test]
    fn a_push_for_all_clusters_covers_every_filter_and_one_for_some_only_those() {
        assert!(member(&[]).covers(""));
        assert!(member(&["blue"]).covers(""));
        assert!(member(&["blue"]).covers("green,blue"));
        assert!(!member(&["blue", "red"]).covers("blue"));
        assert!(!member(&[]).covers("blue"));
    }

    #[test]
    fn targets_of_one_service_share_its_subscription() {
        let mut subscriptions = Subscriptions::default();
        let service = ServiceKey {
            namespace_id: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: "demo".into(),
        };
        let index = subscriptions.add(service.clone(), State::Sent, 1_000);
        for (i, clusters) in [&["blue"][..], &["green"][..]].iter().enumerate() {
            let mut m = member(clusters);
            m.target = TargetId::from_index(i + 3);
            subscriptions.join(index, m);
        }
        assert_eq!(subscriptions.find(&service), Some(index));
        assert_eq!(subscriptions.targets(), 2);
        assert_eq!(subscriptions.of(TargetId::from_index(4)), Some(index));
        assert_eq!(subscriptions.of(TargetId::from_index(0)), None);
        subscriptions.clear();
        assert_eq!(subscriptions.targets(), 0);
    }

    #[test]
    fn safety_polls_of_a_thousand_services_subscribed_at_once_spread_over_the_interval() {
        let interval_ms = 60_000;
        let mut per_second = vec![0u32; 60];
        for index in 0..1_000 {
            let phase = safety_phase_ms(TargetId::from_index(index), interval_ms);
            assert!((1..=interval_ms).contains(&phase), "{phase}");
            per_second[((phase - 1) / 1_000) as usize] += 1;
        }
        let busiest = per_second.iter().max().copied().unwrap_or(0);
        let mean = 1_000.0 / 60.0;
        println!(
            "safety polls of 1,000 services over 60 s: busiest second {busiest}, mean {mean:.1}"
        );
        assert!(
            f64::from(busiest) <= 2.0 * mean,
            "busiest second {busiest}, mean {mean:.1}"
        );
    }
}
