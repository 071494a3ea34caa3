//! The gateway's clock. proxy-wasm gives only the wall clock, and wall clocks step:
//! NTP corrects them, a paused VM resumes an hour later. Every timing of the plugin
//! (poll schedule, freshness, lease, token lifetime, backoff) runs on this clock
//! instead: it follows the wall clock while it moves forward by plausible amounts
//! and ignores a step in either direction. All VMs of one Envoy keep one reading
//! in shared data, so the times they publish for each other agree.

/// A wall-clock move larger than this between two readings is a step, not time
/// passing: VMs read the clock on every tick (at most 50 ms apart), so a gap of a
/// second means the clock was set, or the whole process was stopped.
pub const MAX_PLAUSIBLE_GAP_MS: u64 = 1_000;
/// What a step counts as: one tick of the slowest tick period.
pub const STEP_COUNTS_AS_MS: u64 = 50;

/// One reading of the gateway clock: the wall time it was taken at and the
/// gateway time it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub wall_ms: u64,
    pub gateway_ms: u64,
}

impl Reading {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.wall_ms, self.gateway_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (wall, gateway) = text.split_once(':')?;
        Some(Self {
            wall_ms: wall.parse().ok()?,
            gateway_ms: gateway.parse().ok()?,
        })
    }
}

/// The next reading after `last`, at wall time `wall_ms`. Without a last reading
/// the gateway clock starts at the wall clock, so logs and tests read naturally.
pub fn advance(last: Option<Reading>, wall_ms: u64) -> Reading {
    let Some(last) = last else {
        return Reading {
            wall_ms,
            gateway_ms: wall_ms,
        };
    };
    let elapsed = match wall_ms.checked_sub(last.wall_ms) {
        Some(gap) if gap <= MAX_PLAUSIBLE_GAP_MS => gap,
        // Backwards, or forwards by more than any tick gap: a step.
        _ => STEP_COUNTS_AS_MS,
    };
    Reading {
        wall_ms,
        gateway_ms: last.gateway_ms.saturating_add(elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const HOUR: u64 = 3_600_000;

    fn run(walls: &[u64]) -> Vec<u64> {
        let mut last = None;
        walls
            .iter()
            .map(|wall| {
                let reading = advance(last, *wall);
                last = Some(reading);
                reading.gateway_ms
            })
            .collect()
    }

    #[test]
    fn follows_the_wall_clock_while_it_moves_plausibly() {
        assert_eq!(
            run(&[10 * HOUR, 10 * HOUR + 20, 10 * HOUR + 70]),
            [10 * HOUR, 10 * HOUR + 20, 10 * HOUR + 70]
        );
    }

    #[test]
    fn a_step_back_is_one_tick_and_time_goes_on_from_there() {
        let gateway = run(&[10 * HOUR, 10 * HOUR + 20, 9 * HOUR + 20, 9 * HOUR + 40]);
        assert_eq!(
            gateway,
            [10 * HOUR, 10 * HOUR + 20, 10 * HOUR + 70, 10 * HOUR + 90]
        );
    }

    #[test]
    fn a_step_forward_is_one_tick_too() {
        let gateway = run(&[10 * HOUR, 11 * HOUR, 11 * HOUR + 30]);
        assert_eq!(gateway, [10 * HOUR, 10 * HOUR + 50, 10 * HOUR + 80]);
    }

    #[test]
    fn readings_round_trip_and_garbage_is_refused() {
        let reading = Reading {
            wall_ms: 5,
            gateway_ms: 7,
        };
        assert_eq!(Reading::decode(reading.encode().as_bytes()), Some(reading));
        for bad in ["", "5", "a:b", "5:7:9", "-1:2"] {
            assert_eq!(Reading::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
