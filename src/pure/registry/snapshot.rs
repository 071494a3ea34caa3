//! The last good answer for one service and how far it can still be trusted.
//!
//! Every time here is a gateway-clock time (see `sharing::clock`) at which a poll
//! was *sent*: an answer tells what Nacos knew when it was asked, and ordering by
//! that time is what keeps a late answer (a slow call, a former poller's) from
//! replacing a newer one.

use crate::pure::registry::instance::InstanceSet;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `None` until Nacos first answers.
    latest: Option<InstanceSet>,
    /// When the poll that brought the current content was sent. Moves only when
    /// the content changes, so readers can tell new content from a confirmation.
    content_stamp: u64,
    /// When the poll behind the last good answer was sent.
    confirmed_at_ms: u64,
    /// When the first poll that failed since the last good answer was sent.
    failing_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No answer yet.
    Unknown,
    Fresh,
    /// Nacos has failed to give a good answer for longer than `maxStaleMs`.
    Stale,
}

/// How long a snapshot is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleLimits {
    /// After a good answer, by when the next one is due at the latest: one
    /// interval, the call's timeout, and the followers' delay in hearing of it.
    pub next_answer_due_ms: u64,
    /// `maxStaleMs`: how long polls may fail before the snapshot is stale.
    pub max_stale_ms: u64,
}

/// What the poller publishes about a snapshot's health for the other VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    pub content_stamp: u64,
    pub confirmed_at_ms: u64,
    pub failing_since_ms: Option<u64>,
}

impl Health {
    /// The word of a good answer alone: its list as of the poll sent at
    /// `stamp_ms`, confirmed by nothing later.
    pub fn polled_at(stamp_ms: u64) -> Self {
        Self {
            content_stamp: stamp_ms,
            confirmed_at_ms: stamp_ms,
            failing_since_ms: None,
        }
    }
}

impl Snapshot {
    /// Take a good answer to the poll sent at `polled_at_ms`; true if the content
    /// changed. An answer older than what is already known changes nothing.
    pub fn accept(&mut self, set: InstanceSet, polled_at_ms: u64) -> bool {
        if self.is_older(polled_at_ms) {
            return false;
        }
        self.confirmed_at_ms = polled_at_ms;
        self.failing_since_ms = None;
        if self.latest.as_ref() == Some(&set) {
            return false;
        }
        self.latest = Some(set);
        // Strictly growing, so that two changes in one millisecond still differ.
        self.content_stamp = polled_at_ms.max(self.content_stamp.saturating_add(1));
        true
    }

    /// Whether an answer to the poll sent at `polled_at_ms` is older than the
    /// list held: `accept` drops it.
    pub fn is_older(&self, polled_at_ms: u64) -> bool {
        self.latest.is_some() && polled_at_ms < self.confirmed_at_ms
    }

    /// A good answer to the poll sent at `polled_at_ms` that is byte for byte the
    /// last one: it confirms the content without changing it.
    pub fn accept_same(&mut self, polled_at_ms: u64) -> bool {
        if self.latest.is_some() && polled_at_ms >= self.confirmed_at_ms {
            self.confirmed_at_ms = polled_at_ms;
            self.failing_since_ms = None;
        }
        false
    }

    /// The poll sent at `polled_at_ms` failed.
    pub fn failed(&mut self, polled_at_ms: u64) {
        if polled_at_ms >= self.confirmed_at_ms && self.failing_since_ms.is_none() {
            self.failing_since_ms = Some(polled_at_ms);
        }
    }

    /// Take content published elsewhere (another VM, another configuration) if it
    /// is newer than ours; true if taken.
    pub fn adopt_content(&mut self, set: InstanceSet, content_stamp: u64) -> bool {
        if self.latest.is_some() && content_stamp <= self.content_stamp {
            return false;
        }
        self.latest = Some(set);
        self.content_stamp = content_stamp;
        self.confirmed_at_ms = self.confirmed_at_ms.max(content_stamp);
        true
    }

    /// Take the content this VM's poller published, older than ours or not,
    /// with the health that vouches for that content alone: what confirmed ours
    /// does not carry over to another list.
    pub fn follow(&mut self, set: InstanceSet, health: Health) {
        self.latest = Some(set);
        self.content_stamp = health.content_stamp;
        self.confirmed_at_ms = health.confirmed_at_ms.max(health.content_stamp);
        self.failing_since_ms = health.failing_since_ms;
    }

    /// Take the poller's word on how current the content is, if newer than ours.
    pub fn adopt_health(&mut self, health: Health) {
        if health.confirmed_at_ms >= self.confirmed_at_ms {
            self.confirmed_at_ms = health.confirmed_at_ms;
            self.failing_since_ms = health.failing_since_ms;
        }
    }

    pub fn health(&self) -> Health {
        Health {
            content_stamp: self.content_stamp,
            confirmed_at_ms: self.confirmed_at_ms,
            failing_since_ms: self.failing_since_ms,
        }
    }

    pub fn instances(&self) -> Option<&InstanceSet> {
        self.latest.as_ref()
    }

    pub fn content_stamp(&self) -> u64 {
        self.content_stamp
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since_ms.is_some()
    }

    /// Stale once Nacos has not given a good answer for `max_stale_ms` past the
    /// moment one was due: from the first failed poll, or from when the next
    /// answer was due if none came at all (the poller stopped, logins fail). A
    /// healthy registry polled rarely is never stale.
    pub fn freshness(&self, now_ms: u64, limits: StaleLimits) -> Freshness {
        if self.latest.is_none() {
            return Freshness::Unknown;
        }
        let overdue_at = self
            .confirmed_at_ms
            .saturating_add(limits.next_answer_due_ms);
        let blind_since = self
            .failing_since_ms
            .map_or(overdue_at, |failed| failed.min(overdue_at));
        if now_ms > blind_since.saturating_add(limits.max_stale_ms) {
            Freshness::Stale
        } else {
            Freshness::Fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::registry::instance::instance;
    use crate::testing::test;

    fn one(endpoint: &str) -> InstanceSet {
        InstanceSet {
            instances: vec![instance(endpoint, 1.0)],
            protection_reached: false,
        }
    }

    const LIMITS: StaleLimits = StaleLimits {
        next_answer_due_ms: 62_100,
        max_stale_ms: 30_000,
    };

    #[test]
    fn unknown_until_the_first_answer() {
        let snapshot = Snapshot::default();
        assert_eq!(snapshot.freshness(1_000, LIMITS), Freshness::Unknown);
        assert!(snapshot.instances().is_none());
    }

    #[test]
    fn a_healthy_registry_polled_once_a_minute_never_goes_stale() {
        let mut snapshot = Snapshot::default();
        let mut stale = 0;
        for minute in 0..10u64 {
            snapshot.accept(one("10.0.0.1:80"), minute * 60_000 + 1_000);
            for second in 0..60 {
                let now = minute * 60_000 + 1_000 + second * 1_000 + 999;
                if snapshot.freshness(now, LIMITS) != Freshness::Fresh {
                    stale += 1;
                }
            }
        }
        assert_eq!(stale, 0);
    }

    #[test]
    fn max_stale_zero_is_stale_only_while_polls_fail() {
        let limits = StaleLimits {
            next_answer_due_ms: 1_100,
            max_stale_ms: 0,
        };
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 0);
        assert_eq!(snapshot.freshness(1_100, limits), Freshness::Fresh);
        snapshot.accept(one("10.0.0.1:80"), 1_000);
        assert_eq!(snapshot.freshness(2_000, limits), Freshness::Fresh);
        snapshot.failed(2_000);
        assert_eq!(snapshot.freshness(2_000, limits), Freshness::Fresh);
        assert_eq!(snapshot.freshness(2_001, limits), Freshness::Stale);
    }

    #[test]
    fn stale_counts_from_the_first_failed_poll() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 0);
        snapshot.failed(60_000);
        snapshot.failed(61_000);
        assert_eq!(snapshot.freshness(90_000, LIMITS), Freshness::Fresh);
        assert_eq!(snapshot.freshness(90_001, LIMITS), Freshness::Stale);
        snapshot.accept(one("10.0.0.1:80"), 120_000);
        assert_eq!(snapshot.freshness(120_001, LIMITS), Freshness::Fresh);
    }

    #[test]
    fn no_answer_at_all_is_stale_after_the_answer_was_due() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 0);
        assert_eq!(snapshot.freshness(92_100, LIMITS), Freshness::Fresh);
        assert_eq!(snapshot.freshness(92_101, LIMITS), Freshness::Stale);
    }

    #[test]
    fn the_same_answer_confirms_without_changing_the_content() {
        let mut snapshot = Snapshot::default();
        assert!(snapshot.accept(one("10.0.0.1:80"), 1));
        assert!(!snapshot.accept(one("10.0.0.1:80"), 2));
        assert_eq!(snapshot.content_stamp(), 1);
        assert_eq!(snapshot.health().confirmed_at_ms, 2);
        assert!(snapshot.accept(InstanceSet::default(), 3));
        assert!(snapshot.instances().unwrap().instances.is_empty());
        assert_eq!(snapshot.content_stamp(), 3);
    }

    #[test]
    fn a_late_answer_never_replaces_a_newer_one() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(InstanceSet::default(), 2_000);
        assert!(!snapshot.accept(one("10.0.0.1:80"), 1_000));
        assert!(snapshot.instances().unwrap().instances.is_empty());
    }

    #[test]
    fn adopt_takes_only_newer_content_and_newer_health() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 10);
        assert!(!snapshot.adopt_content(one("10.0.0.2:80"), 10));
        assert!(snapshot.adopt_content(one("10.0.0.3:80"), 70));
        assert_eq!(
            snapshot.instances().unwrap().instances[0].endpoint,
            "10.0.0.3:80"
        );
        snapshot.adopt_health(Health {
            content_stamp: 70,
            confirmed_at_ms: 90,
            failing_since_ms: Some(95),
        });
        assert!(snapshot.is_failing());
        snapshot.adopt_health(Health {
            content_stamp: 70,
            confirmed_at_ms: 80,
            failing_since_ms: None,
        });
        assert!(snapshot.is_failing(), "older health is ignored");
    }
}
