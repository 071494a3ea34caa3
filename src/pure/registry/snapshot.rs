//! The last good answer for one service and how far it can still be trusted.

use crate::pure::registry::instance::InstanceSet;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `None` until Nacos first answers.
    latest: Option<InstanceSet>,
    fetched_at_ms: u64,
    /// Grows by one with every accepted answer, so readers can tell a new list
    /// from the one they already prepared.
    version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No answer yet.
    Unknown,
    Fresh,
    /// The last good answer is older than `maxStaleMs`.
    Stale,
}

impl Snapshot {
    /// Take a good answer received at `now_ms`.
    pub fn accept(&mut self, set: InstanceSet, now_ms: u64) {
        self.latest = Some(set);
        self.fetched_at_ms = now_ms;
        self.version += 1;
    }

    /// Take a snapshot published elsewhere (another VM) if it is newer than ours.
    pub fn adopt(&mut self, set: InstanceSet, fetched_at_ms: u64, version: u64) -> bool {
        if version <= self.version {
            return false;
        }
        self.latest = Some(set);
        self.fetched_at_ms = fetched_at_ms;
        self.version = version;
        true
    }

    pub fn instances(&self) -> Option<&InstanceSet> {
        self.latest.as_ref()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn fetched_at_ms(&self) -> u64 {
        self.fetched_at_ms
    }

    /// A clock that went backwards counts as no time passed, never as negative age.
    pub fn freshness(&self, now_ms: u64, max_stale_ms: u64) -> Freshness {
        match self.latest {
            None => Freshness::Unknown,
            Some(_) if now_ms.saturating_sub(self.fetched_at_ms) > max_stale_ms => Freshness::Stale,
            Some(_) => Freshness::Fresh,
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

    #[test]
    fn unknown_until_the_first_answer() {
        let snapshot = Snapshot::default();
        assert_eq!(snapshot.freshness(1_000, 30_000), Freshness::Unknown);
        assert!(snapshot.instances().is_none());
    }

    #[test]
    fn fresh_until_max_stale_then_stale() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 1_000);
        assert_eq!(snapshot.freshness(1_000, 5_000), Freshness::Fresh);
        assert_eq!(snapshot.freshness(6_000, 5_000), Freshness::Fresh);
        assert_eq!(snapshot.freshness(6_001, 5_000), Freshness::Stale);
    }

    #[test]
    fn clock_going_backwards_is_not_stale() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 10_000);
        assert_eq!(snapshot.freshness(5_000, 1_000), Freshness::Fresh);
    }

    #[test]
    fn each_answer_bumps_the_version_and_empty_answers_count() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 1);
        snapshot.accept(InstanceSet::default(), 2);
        assert_eq!(snapshot.version(), 2);
        assert!(snapshot.instances().unwrap().instances.is_empty());
        assert_eq!(snapshot.fetched_at_ms(), 2);
    }

    #[test]
    fn adopt_takes_only_newer_versions() {
        let mut snapshot = Snapshot::default();
        snapshot.accept(one("10.0.0.1:80"), 1);
        assert!(!snapshot.adopt(one("10.0.0.2:80"), 5, 1));
        assert!(snapshot.adopt(one("10.0.0.3:80"), 5, 7));
        assert_eq!(snapshot.version(), 7);
        assert_eq!(
            snapshot.instances().unwrap().instances[0].endpoint,
            "10.0.0.3:80"
        );
    }
}
