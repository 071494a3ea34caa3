//! The gateway clock one VM reads: the host's wall clock with its steps removed
//! (`pure::sharing::clock`), kept in shared data so that every VM reads the same
//! time and the times they publish for each other compare.

use super::host_traits::SharedStore;
use crate::pure::sharing::clock::{self, Reading};
use crate::pure::sharing::published;

#[derive(Debug, Default)]
pub struct GatewayClock {
    last: Option<Reading>,
}

impl GatewayClock {
    /// Gateway time at wall time `wall_ms`: never less than this VM read before.
    pub fn now(&mut self, wall_ms: u64, store: &mut dyn SharedStore) -> u64 {
        let key = published::CLOCK_KEY;
        let shared = store.get(key).0.as_deref().and_then(Reading::decode);
        // Whichever reading is later, this VM's or the one another VM stored.
        let base = match (shared, self.last) {
            (Some(shared), Some(own)) if own.gateway_ms > shared.gateway_ms => Some(own),
            (Some(shared), _) => Some(shared),
            (None, own) => own,
        };
        let mut reading = clock::advance(base, wall_ms);
        if let Some(own) = self.last {
            reading.gateway_ms = reading.gateway_ms.max(own.gateway_ms);
        }
        // A lost race with another VM's write costs nothing: both readings are
        // within a tick of each other.
        store.set(key, reading.encode().as_bytes(), None);
        self.last = Some(reading);
        reading.gateway_ms
    }

    /// Like [`now`](Self::now), but when this VM's own last reading is at most one
    /// tick old it moves on from that one without the shared reading: the two
    /// agree within a tick anyway. Answers from Nacos come a thousand times a
    /// second at 1,000 services, and reading and writing the shared reading on
    /// each was two of the host calls an answer cost. A VM whose thread stood
    /// still longer (its last reading is older) reads the shared one as usual.
    pub fn now_between_ticks(&mut self, wall_ms: u64, store: &mut dyn SharedStore) -> u64 {
        match self.last {
            Some(own)
                if wall_ms >= own.wall_ms && wall_ms - own.wall_ms <= clock::STEP_COUNTS_AS_MS =>
            {
                let reading = clock::advance(Some(own), wall_ms);
                self.last = Some(reading);
                reading.gateway_ms
            }
            _ => self.now(wall_ms, store),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::FakeStore;
    use crate::testing::test;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn vms_sharing_a_store_agree_across_a_step_back() {
        let mut store = FakeStore::default();
        let (mut first, mut second) = (GatewayClock::default(), GatewayClock::default());
        assert_eq!(first.now(10 * HOUR, &mut store), 10 * HOUR);
        assert_eq!(second.now(10 * HOUR + 10, &mut store), 10 * HOUR + 10);
        let after_first = first.now(9 * HOUR + 20, &mut store);
        let after_second = second.now(9 * HOUR + 30, &mut store);
        assert_eq!(after_first, 10 * HOUR + 60);
        assert_eq!(after_second, 10 * HOUR + 70);
    }

    #[test]
    fn between_ticks_a_recent_own_reading_moves_on_without_the_store() {
        let mut store = FakeStore::default();
        let mut clock = GatewayClock::default();
        assert_eq!(clock.now(10 * HOUR, &mut store), 10 * HOUR);
        // Another VM's later reading is not seen within the tick...
        store.set(published::CLOCK_KEY, b"0:36000900", None);
        assert_eq!(
            clock.now_between_ticks(10 * HOUR + 30, &mut store),
            10 * HOUR + 30
        );
        // ...and is, once this VM's own reading is older than a tick.
        assert_eq!(
            clock.now_between_ticks(10 * HOUR + 100, &mut store),
            36_000_900 + clock::STEP_COUNTS_AS_MS
        );
    }

    #[test]
    fn between_ticks_a_step_back_still_reads_the_store() {
        let mut store = FakeStore::default();
        let mut clock = GatewayClock::default();
        let before = clock.now(10 * HOUR, &mut store);
        let after = clock.now_between_ticks(9 * HOUR, &mut store);
        assert_eq!(after, before + clock::STEP_COUNTS_AS_MS);
    }

    #[test]
    fn a_stored_reading_older_than_this_vms_own_does_not_hold_it_back() {
        // Another VM's write landed over this VM's later one (a lost race): this
        // VM moves on from its own reading, by the wall clock's whole step.
        let mut store = FakeStore::default();
        let mut clock = GatewayClock::default();
        assert_eq!(clock.now(10 * HOUR, &mut store), 10 * HOUR);
        store.set(published::CLOCK_KEY, b"36000000:35999900", None);
        assert_eq!(clock.now(10 * HOUR + 40, &mut store), 10 * HOUR + 40);
    }

    #[test]
    fn a_vm_never_reads_an_earlier_time_than_before() {
        let mut store = FakeStore::default();
        let mut clock = GatewayClock::default();
        let before = clock.now(5_000, &mut store);
        store.set(published::CLOCK_KEY, b"0:0", None);
        assert!(clock.now(5_010, &mut store) >= before);
    }
}
