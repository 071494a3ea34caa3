//! When to poll each guarded service: once per interval, a little early by a
//! random jitter so that workers and gateways drift apart instead of polling in
//! lockstep, never two calls at once for one service, and no more than a bound in
//! flight overall.

use crate::pure::config::DEFAULT_REFRESH_MS;

/// Calls in flight to Nacos at most, over all services of one VM.
pub const MAX_CALLS_IN_FLIGHT: usize = 32;
/// Polls start up to this fraction of the interval early (never late, so the
/// detection time stays within one interval).
const JITTER_DIVISOR: u64 = 10;

#[derive(Debug, Clone)]
struct Slot {
    interval_ms: u64,
    next_due_ms: u64,
    in_flight: bool,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    slots: Vec<Slot>,
    in_flight: usize,
    max_in_flight: usize,
    /// Where the next scan starts, so a bound on calls never starves the last services.
    cursor: usize,
    /// No service can be due before this: a call before it returns at once instead of
    /// scanning every service (it is asked after each answer, and ticks come 20 times
    /// per interval).
    next_wake_ms: u64,
    rng: u64,
}

impl Scheduler {
    /// One slot per service, each with its interval; all due at once at first.
    pub fn new(intervals: impl IntoIterator<Item = u64>, seed: u64, max_in_flight: usize) -> Self {
        Self {
            slots: intervals
                .into_iter()
                .map(|interval_ms| Slot {
                    interval_ms: interval_ms.max(1),
                    next_due_ms: 0,
                    in_flight: false,
                })
                .collect(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            cursor: 0,
            next_wake_ms: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// One more service, due at once; its index.
    pub fn add(&mut self, interval_ms: u64) -> usize {
        self.slots.push(Slot {
            interval_ms: interval_ms.max(1),
            next_due_ms: 0,
            in_flight: false,
        });
        self.next_wake_ms = 0;
        self.slots.len() - 1
    }

    /// How often the host should tick: fine enough that polls start on time and
    /// other VMs pick up a new snapshot within a twentieth of the interval, coarse
    /// enough to cost nothing (a tick with nothing due reads two shared-data keys).
    pub fn tick_period_ms(&self) -> u64 {
        (self.shortest_interval_ms() / 20).clamp(10, 50)
    }

    /// The shortest polling interval; the default one when nothing is polled.
    pub fn shortest_interval_ms(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.interval_ms)
            .min()
            .unwrap_or(DEFAULT_REFRESH_MS)
    }

    pub fn interval_ms(&self, index: usize) -> u64 {
        self.slots
            .get(index)
            .map_or(DEFAULT_REFRESH_MS, |slot| slot.interval_ms)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Services to poll now, marked in flight; at most the free call capacity.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<usize> {
        self.take_due_where(now_ms, |_| true)
    }

    /// Like [`take_due`](Self::take_due), skipping services `ready` refuses (they
    /// stay due).
    pub fn take_due_where(&mut self, now_ms: u64, ready: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut due = Vec::new();
        if now_ms < self.next_wake_ms {
            return due;
        }
        let count = self.slots.len();
        let start = self.cursor;
        let mut next_wake_ms = u64::MAX;
        for step in 0..count {
            if self.in_flight >= self.max_in_flight {
                // The slots not scanned may be due: scan again next time.
                next_wake_ms = now_ms;
                break;
            }
            let index = (start + step) % count;
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            if slot.in_flight {
                continue;
            }
            if now_ms < slot.next_due_ms || !ready(index) {
                // A slot `ready` refused stays due, and is asked again next time.
                next_wake_ms = next_wake_ms.min(slot.next_due_ms.max(now_ms));
                continue;
            }
            let jitter = self.next_jitter(index);
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            slot.in_flight = true;
            slot.next_due_ms =
                now_ms + slot.interval_ms - jitter.min(slot.interval_ms / JITTER_DIVISOR);
            self.in_flight += 1;
            due.push(index);
            self.cursor = (index + 1) % count;
        }
        self.next_wake_ms = next_wake_ms;
        due
    }

    /// Make `index` due at `now_ms`, however recently it was polled.
    pub fn due_now(&mut self, index: usize, now_ms: u64) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.next_due_ms = slot.next_due_ms.min(now_ms);
            self.next_wake_ms = self.next_wake_ms.min(slot.next_due_ms);
        }
    }

    /// The call for `index` ended (answer, error or failed dispatch).
    pub fn finished(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.in_flight {
                slot.in_flight = false;
                self.in_flight = self.in_flight.saturating_sub(1);
                self.next_wake_ms = self.next_wake_ms.min(slot.next_due_ms);
            }
        }
    }

    /// A random number of milliseconds in `0..interval/10` for `index`.
    fn next_jitter(&mut self, index: usize) -> u64 {
        let span = self
            .slots
            .get(index)
            .map_or(0, |slot| slot.interval_ms / JITTER_DIVISOR);
        // xorshift64: cheap, and only needs to differ between VMs, not be secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if span == 0 {
            0
        } else {
            self.rng % span
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn every_service_is_due_at_start() {
        let mut scheduler = Scheduler::new([1000, 1000, 200], 7, 32);
        let mut due = scheduler.take_due(5);
        due.sort();
        assert_eq!(due, vec![0, 1, 2]);
        assert_eq!(scheduler.in_flight(), 3);
    }

    #[test]
    fn a_service_made_due_early_is_taken_before_the_next_wake() {
        let mut scheduler = Scheduler::new([1000, 1000], 7, 32);
        for index in scheduler.take_due(0) {
            scheduler.finished(index);
        }
        assert!(scheduler.take_due(10).is_empty(), "nothing is due yet");
        scheduler.due_now(1, 20);
        assert_eq!(scheduler.take_due(20), vec![1]);
        assert!(scheduler.take_due(30).is_empty());
    }

    #[test]
    fn a_call_that_ends_after_its_next_due_time_is_polled_again_at_once() {
        let mut scheduler = Scheduler::new([100, 1000], 7, 32);
        assert_eq!(scheduler.take_due(0).len(), 2);
        scheduler.finished(1);
        // Service 0's call is out past its interval; nothing else is due.
        assert!(scheduler.take_due(150).is_empty());
        scheduler.finished(0);
        assert_eq!(scheduler.take_due(150), vec![0]);
    }

    #[test]
    fn services_held_back_by_the_bound_on_calls_go_when_calls_end() {
        let mut scheduler = Scheduler::new([1000, 1000, 1000], 7, 1);
        let first = scheduler.take_due(0);
        assert_eq!(first.len(), 1);
        assert!(
            scheduler.take_due(0).is_empty(),
            "the one call allowed is out"
        );
        scheduler.finished(first[0]);
        let second = scheduler.take_due(1);
        assert_eq!(second.len(), 1);
        assert_ne!(second, first);
    }

    #[test]
    fn a_service_in_flight_is_never_polled_twice() {
        let mut scheduler = Scheduler::new([100], 7, 32);
        assert_eq!(scheduler.take_due(0), vec![0]);
        assert!(scheduler.take_due(10_000).is_empty());
        scheduler.finished(0);
        assert_eq!(scheduler.take_due(10_000), vec![0]);
    }

    #[test]
    fn polls_come_once_per_interval_at_most_a_tenth_early() {
        let mut scheduler = Scheduler::new([1000], 99, 32);
        let mut now = 0;
        let mut polls = Vec::new();
        while now < 20_000 {
            for index in scheduler.take_due(now) {
                polls.push(now);
                scheduler.finished(index);
            }
            now += 1;
        }
        let gaps: Vec<u64> = polls.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|gap| (900..=1000).contains(gap)),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().any(|gap| *gap != gaps[0]),
            "jitter varies: {gaps:?}"
        );
    }

    #[test]
    fn calls_in_flight_stay_bounded_and_no_service_starves() {
        let mut scheduler = Scheduler::new(vec![1000; 10], 3, 4);
        let first = scheduler.take_due(0);
        assert_eq!(first.len(), 4);
        assert!(scheduler.take_due(0).is_empty());
        let mut served = first.clone();
        for index in first {
            scheduler.finished(index);
        }
        let second = scheduler.take_due(0);
        assert_eq!(second.len(), 4);
        served.extend(&second);
        for index in second {
            scheduler.finished(index);
        }
        served.extend(scheduler.take_due(0));
        served.sort();
        assert_eq!(served, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn seeds_give_different_jitter() {
        let next = |seed| {
            let mut scheduler = Scheduler::new([10_000], seed, 1);
            scheduler.take_due(0);
            scheduler.finished(0);
            scheduler.slots[0].next_due_ms
        };
        let dues: std::collections::BTreeSet<u64> = (1..20).map(next).collect();
        assert!(dues.len() > 5, "{dues:?}");
    }

    #[test]
    fn tick_period_follows_the_shortest_interval() {
        assert_eq!(Scheduler::new([1000, 400], 1, 1).tick_period_ms(), 20);
        assert_eq!(Scheduler::new([100], 1, 1).tick_period_ms(), 10);
        assert_eq!(Scheduler::new([60_000], 1, 1).tick_period_ms(), 50);
        assert_eq!(Scheduler::new([], 1, 1).tick_period_ms(), 50);
    }

    #[test]
    fn services_not_ready_stay_due() {
        let mut scheduler = Scheduler::new([1000, 1000], 1, 8);
        assert_eq!(scheduler.take_due_where(0, |index| index == 1), vec![1]);
        assert_eq!(scheduler.take_due_where(5, |_| true), vec![0]);
    }

    #[test]
    fn finishing_an_unknown_or_idle_slot_changes_nothing() {
        let mut scheduler = Scheduler::new([1000], 1, 1);
        scheduler.finished(5);
        scheduler.finished(0);
        assert_eq!(scheduler.in_flight(), 0);
    }
}
