//! When to poll each guarded service: once per interval, a little early by a
//! random jitter so that workers and gateways drift apart instead of polling in
//! lockstep, never two calls at once for one service, and no more than a bound in
//! flight overall.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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

/// Whether a due service may be polled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not now; asked again next time.
    Waiting,
    /// Not before this time.
    NotBefore(u64),
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    slots: Vec<Slot>,
    in_flight: usize,
    max_in_flight: usize,
    /// Idle services by the time they are due, earliest first (ties: lowest index,
    /// so a bound on calls takes services in turn and never starves the last ones).
    /// Asked after each answer and on every tick, it looks at the services due
    /// now and no others: with 1,000 services a scan of all of them on each answer
    /// cost more than the answer itself. An entry whose time is no longer its
    /// slot's, or whose slot is in flight, is stale and dropped when reached.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    rng: u64,
}

impl Scheduler {
    /// One slot per service, each with its interval; all due at once at first.
    pub fn new(intervals: impl IntoIterator<Item = u64>, seed: u64, max_in_flight: usize) -> Self {
        let slots: Vec<Slot> = intervals
            .into_iter()
            .map(|interval_ms| Slot {
                interval_ms: interval_ms.max(1),
                next_due_ms: 0,
                in_flight: false,
            })
            .collect();
        Self {
            due: (0..slots.len()).map(|index| Reverse((0, index))).collect(),
            slots,
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
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
        let index = self.slots.len() - 1;
        self.due.push(Reverse((0, index)));
        index
    }

    /// How often the host should tick: fine enough that polls start on time and
    /// other VMs pick up a new snapshot within a twentieth of the interval, coarse
    /// enough to cost nothing (a tick with nothing due reads two shared-data keys).
    pub fn tick_period_ms(&self) -> u64 {
        Self::tick_period_for(self.shortest_interval_ms())
    }

    /// The tick period for services polled every `shortest_interval_ms` at most.
    pub fn tick_period_for(shortest_interval_ms: u64) -> u64 {
        (shortest_interval_ms / 20).clamp(10, 50)
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
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
        self.take_due_when(now_ms, |index| {
            if ready(index) {
                Readiness::Ready
            } else {
                Readiness::Waiting
            }
        })
    }

    /// Like [`take_due`](Self::take_due), asking `ready` of each due service
    /// whether it may go now, waits (stays due), or is not due before a time
    /// (a service that idles: thousands of them must not be looked at on every
    /// tick).
    pub fn take_due_when(&mut self, now_ms: u64, ready: impl Fn(usize) -> Readiness) -> Vec<usize> {
        let mut due = Vec::new();
        let mut not_ready = Vec::new();
        while self.in_flight < self.max_in_flight {
            let Some(&Reverse((due_ms, index))) = self.due.peek() else {
                break;
            };
            if due_ms > now_ms {
                break;
            }
            self.due.pop();
            let idle_and_due = self
                .slots
                .get(index)
                .is_some_and(|slot| !slot.in_flight && slot.next_due_ms == due_ms);
            if !idle_and_due {
                continue;
            }
            match ready(index) {
                Readiness::Ready => {}
                Readiness::Waiting => {
                    not_ready.push(Reverse((due_ms, index)));
                    continue;
                }
                Readiness::NotBefore(later_ms) => {
                    let later_ms = later_ms.max(now_ms.saturating_add(1));
                    if let Some(slot) = self.slots.get_mut(index) {
                        slot.next_due_ms = later_ms;
                    }
                    not_ready.push(Reverse((later_ms, index)));
                    continue;
                }
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
        }
        // Refused services stay due, and are asked again next time.
        self.due.extend(not_ready);
        due
    }

    /// Make `index` due at `now_ms`, however recently it was polled.
    pub fn due_now(&mut self, index: usize, now_ms: u64) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.next_due_ms = slot.next_due_ms.min(now_ms);
            if !slot.in_flight {
                self.due.push(Reverse((slot.next_due_ms, index)));
            }
        }
    }

    /// The call for `index` ended (answer, error or failed dispatch).
    pub fn finished(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.in_flight {
                slot.in_flight = false;
                self.in_flight = self.in_flight.saturating_sub(1);
                self.due.push(Reverse((slot.next_due_ms, index)));
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
    fn the_jitter_spreads_over_its_span() {
        // VMs and gateways drift apart only if the jitter varies: a generator
        // stuck on one value would keep them in step.
        let mut scheduler = Scheduler::new([1000], 7, 32);
        let draws: std::collections::BTreeSet<u64> =
            (0..200).map(|_| scheduler.next_jitter(0)).collect();
        assert!(draws.iter().all(|jitter| *jitter < 100), "{draws:?}");
        assert!(draws.len() > 50, "{} distinct of 200", draws.len());
        // Over its whole span: each tenth of it gets a share of the draws.
        let mut tenths = [0; 10];
        for _ in 0..1_000 {
            tenths[usize::try_from(scheduler.next_jitter(0) / 10).unwrap()] += 1;
        }
        assert!(tenths.iter().all(|count| *count >= 50), "{tenths:?}");
    }

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
    fn under_the_bound_the_service_due_longest_goes_first() {
        let mut scheduler = Scheduler::new([1000, 1000, 1000], 5, 3);
        for index in scheduler.take_due(0) {
            scheduler.finished(index);
        }
        let dues: Vec<u64> = scheduler.slots.iter().map(|s| s.next_due_ms).collect();
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|&index| (dues[index], index));
        assert_ne!(order, [0, 1, 2], "this seed's jitter puts them out of turn");
        scheduler.max_in_flight = 1;
        let mut taken: Vec<usize> = Vec::new();
        for _ in 0..3 {
            let due = scheduler.take_due(2000);
            assert_eq!(due.len(), 1);
            taken.extend(&due);
            scheduler.finished(due[0]);
        }
        assert_eq!(taken, order, "due at {dues:?}");
    }

    #[test]
    fn a_service_made_due_again_and_again_is_polled_once() {
        let mut scheduler = Scheduler::new([1000, 1000], 7, 32);
        for index in scheduler.take_due(0) {
            scheduler.finished(index);
        }
        for now in [10, 11, 12] {
            scheduler.due_now(1, now);
        }
        assert_eq!(scheduler.take_due(20), vec![1]);
        assert!(scheduler.take_due(30).is_empty());
        scheduler.finished(1);
        assert!(
            scheduler.take_due(40).is_empty(),
            "due again only an interval on"
        );
    }

    #[test]
    fn finishing_an_unknown_or_idle_slot_changes_nothing() {
        let mut scheduler = Scheduler::new([1000], 1, 1);
        scheduler.finished(5);
        scheduler.finished(0);
        assert_eq!(scheduler.in_flight(), 0);
    }

    #[test]
    fn a_service_not_due_before_a_time_is_not_asked_until_then() {
        let mut s = Scheduler::new([1_000, 1_000], 7, 8);
        let asked = std::cell::Cell::new(0);
        let idle_first = |index: usize| {
            asked.set(asked.get() + 1);
            if index == 0 {
                Readiness::NotBefore(1_000)
            } else {
                Readiness::Ready
            }
        };
        assert_eq!(s.take_due_when(0, idle_first), vec![1]);
        assert_eq!(asked.get(), 2);
        assert_eq!(s.take_due_when(999, idle_first), Vec::<usize>::new());
        assert_eq!(asked.get(), 2, "not asked again before 1,000 ms");
        assert_eq!(s.take_due_when(1_000, |_| Readiness::Ready), vec![0]);
    }
}
