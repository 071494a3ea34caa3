//! Instances of one service that failed a routed request and are skipped for a
//! while, gateway-wide: Nacos takes 15–20 s to learn that an ephemeral instance
//! died, and until then every request routed to it would fail.
//!
//! - A failure avoids the instance for `avoid_ms`; another failure while it is
//!   avoided (a request that still reached it) extends that, so the avoidance
//!   lasts only while failures continue. When it ends the instance is tried
//!   again if Nacos still lists it.
//! - At most `max_avoided(usable, percent)` of a service's usable instances are
//!   avoided at once, never all of them: a flapping network must not empty a
//!   service (Envoy's `max_ejection_percent`, which also ejects at least one).
//! - A failure within one more `avoid_ms` after an avoidance ended continues the
//!   same streak: it is avoided again without a second log line.
//!
//! The set is what VMs share (one small value per service), so it is encoded
//! here too.

/// How a guard avoids the instances that fail (`avoidFailedMs`, `maxAvoidedPercent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvoidPolicy {
    /// 0: never avoid.
    pub avoid_ms: u64,
    pub max_avoided_percent: u64,
}

/// A gateway asks the poller to poll a failing service at most this often.
pub const POLL_ASK_INTERVAL_MS: u64 = 1_000;

/// How many of `usable` instances may be avoided at once: `percent` of them
/// rounded down, at least one, never all.
pub fn max_avoided(usable: usize, percent: u64) -> usize {
    if usable <= 1 {
        return 0;
    }
    let share = usable.saturating_mul(usize::try_from(percent.min(100)).unwrap_or(100)) / 100;
    share.max(1).min(usable - 1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    endpoint: String,
    /// Avoided until then (gateway clock); kept one more `avoid_ms` after it, so
    /// a failure then continues the streak.
    until_ms: u64,
}

/// The avoided instances of one service, and when a VM last asked for a poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Avoided {
    entries: Vec<Entry>,
    poll_asked_ms: Option<u64>,
}

/// What a failure changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noticed {
    /// Avoided from now; `new_streak` false when it failed again soon after
    /// its last avoidance ended.
    Avoided { new_streak: bool },
    /// Already avoided: the avoidance now runs from this failure.
    Extended,
    /// Not avoided: the bound is reached.
    AtBound,
    /// Not avoided: not a usable instance of the service (Nacos no longer lists
    /// it, or a filter leaves it out), or avoiding is off.
    Ignored,
}

impl Noticed {
    /// Whether the shared set changed.
    pub fn changed(self) -> bool {
        matches!(self, Self::Avoided { .. } | Self::Extended)
    }
}

impl Avoided {
    /// Take a failure of `endpoint` at `now_ms`; `usable`: the service's usable
    /// instances as the noticing guard sees them.
    pub fn note_failure(
        &mut self,
        endpoint: &str,
        usable: &[String],
        now_ms: u64,
        policy: AvoidPolicy,
    ) -> Noticed {
        if policy.avoid_ms == 0 || !usable.iter().any(|e| e == endpoint) {
            return Noticed::Ignored;
        }
        self.forget_ended(now_ms, policy.avoid_ms);
        let until_ms = now_ms.saturating_add(policy.avoid_ms);
        let known = self.entries.iter().position(|e| e.endpoint == endpoint);
        if let Some(entry) = known.and_then(|index| self.entries.get_mut(index)) {
            if entry.until_ms > now_ms {
                entry.until_ms = entry.until_ms.max(until_ms);
                return Noticed::Extended;
            }
        }
        let others = self
            .entries
            .iter()
            .filter(|e| e.until_ms > now_ms && e.endpoint != endpoint)
            .filter(|e| usable.contains(&e.endpoint))
            .count();
        if others >= max_avoided(usable.len(), policy.max_avoided_percent) {
            return Noticed::AtBound;
        }
        match known.and_then(|index| self.entries.get_mut(index)) {
            Some(entry) => {
                entry.until_ms = until_ms;
                Noticed::Avoided { new_streak: false }
            }
            None => {
                self.entries.push(Entry {
                    endpoint: endpoint.to_string(),
                    until_ms,
                });
                Noticed::Avoided { new_streak: true }
            }
        }
    }

    /// Record a request for an immediate poll at `now_ms` unless one was asked
    /// less than `POLL_ASK_INTERVAL_MS` ago; true if recorded.
    pub fn ask_poll(&mut self, now_ms: u64) -> bool {
        let due = self
            .poll_asked_ms
            .is_none_or(|asked| now_ms >= asked.saturating_add(POLL_ASK_INTERVAL_MS));
        if due {
            self.poll_asked_ms = Some(now_ms);
        }
        due
    }

    pub fn poll_asked_ms(&self) -> Option<u64> {
        self.poll_asked_ms
    }

    pub fn is_avoided(&self, endpoint: &str, now_ms: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.endpoint == endpoint && e.until_ms > now_ms)
    }

    /// The instances avoided at `now_ms`.
    pub fn avoided_at(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(move |e| e.until_ms > now_ms)
            .map(|e| e.endpoint.as_str())
    }

    /// When the set avoided after `now_ms` next shrinks.
    pub fn next_end_after(&self, now_ms: u64) -> Option<u64> {
        self.entries
            .iter()
            .map(|e| e.until_ms)
            .filter(|until| *until > now_ms)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drop the entries whose streak is over: ended more than `avoid_ms` ago.
    fn forget_ended(&mut self, now_ms: u64, avoid_ms: u64) {
        self.entries
            .retain(|e| e.until_ms.saturating_add(avoid_ms) > now_ms);
    }

    /// `poll <ms>` (when asked, if ever) then one `<ip:port> <until_ms>` a line.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = String::new();
        if let Some(asked) = self.poll_asked_ms {
            text.push_str(&format!("poll {asked}\n"));
        }
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.endpoint, entry.until_ms));
        }
        text.into_bytes()
    }

    /// What `encode` wrote; lines that do not read are skipped.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut avoided = Self::default();
        for line in String::from_utf8_lossy(bytes).lines() {
            let Some((first, number)) = line.split_once(' ') else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            if first == "poll" {
                avoided.poll_asked_ms = Some(number);
            } else {
                avoided.entries.push(Entry {
                    endpoint: first.to_string(),
                    until_ms: number,
                });
            }
        }
        avoided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const POLICY: AvoidPolicy = AvoidPolicy {
        avoid_ms: 10_000,
        max_avoided_percent: 50,
    };

    fn usable(count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn the_bound_is_a_share_at_least_one_never_all() {
        assert_eq!(max_avoided(0, 50), 0);
        assert_eq!(max_avoided(1, 50), 0);
        assert_eq!(max_avoided(2, 50), 1);
        assert_eq!(max_avoided(3, 50), 1);
        assert_eq!(max_avoided(4, 50), 2);
        assert_eq!(max_avoided(10, 10), 1);
        assert_eq!(max_avoided(10, 0), 1);
        assert_eq!(max_avoided(10, 100), 9);
        assert_eq!(max_avoided(3, 1_000), 2);
    }

    #[test]
    fn a_failure_avoids_the_instance_for_the_set_time() {
        let hosts = usable(2);
        let mut avoided = Avoided::default();
        let noticed = avoided.note_failure(&hosts[0], &hosts, 1_000, POLICY);
        assert_eq!(noticed, Noticed::Avoided { new_streak: true });
        assert!(avoided.is_avoided(&hosts[0], 10_999));
        assert!(!avoided.is_avoided(&hosts[0], 11_000));
        assert!(!avoided.is_avoided(&hosts[1], 5_000));
        assert_eq!(avoided.next_end_after(1_000), Some(11_000));
        assert_eq!(avoided.next_end_after(11_000), None);
    }

    #[test]
    fn failures_while_avoided_extend_it_and_only_they_do() {
        let hosts = usable(2);
        let mut avoided = Avoided::default();
        avoided.note_failure(&hosts[0], &hosts, 0, POLICY);
        let noticed = avoided.note_failure(&hosts[0], &hosts, 8_000, POLICY);
        assert_eq!(noticed, Noticed::Extended);
        assert!(avoided.is_avoided(&hosts[0], 17_999));
        assert!(!avoided.is_avoided(&hosts[0], 18_000));
    }

    #[test]
    fn a_failure_soon_after_the_end_continues_the_streak_a_late_one_starts_another() {
        let hosts = usable(2);
        let mut avoided = Avoided::default();
        avoided.note_failure(&hosts[0], &hosts, 0, POLICY);
        let again = avoided.note_failure(&hosts[0], &hosts, 15_000, POLICY);
        assert_eq!(again, Noticed::Avoided { new_streak: false });
        // Ended at 25 s; a failure after 35 s is a new streak.
        let later = avoided.note_failure(&hosts[0], &hosts, 35_000, POLICY);
        assert_eq!(later, Noticed::Avoided { new_streak: true });
    }

    #[test]
    fn never_the_last_usable_instance_nor_beyond_the_share() {
        let one = usable(1);
        let mut avoided = Avoided::default();
        assert_eq!(
            avoided.note_failure(&one[0], &one, 0, POLICY),
            Noticed::AtBound
        );
        let four = usable(4);
        assert!(avoided.note_failure(&four[0], &four, 0, POLICY).changed());
        assert!(avoided.note_failure(&four[1], &four, 0, POLICY).changed());
        assert_eq!(
            avoided.note_failure(&four[2], &four, 0, POLICY),
            Noticed::AtBound
        );
        assert_eq!(avoided.avoided_at(0).count(), 2);
        // Once one ends, another may take its place.
        let noticed = avoided.note_failure(&four[2], &four, 10_000, POLICY);
        assert_eq!(noticed, Noticed::Avoided { new_streak: true });
    }

    #[test]
    fn avoided_instances_nacos_no_longer_lists_do_not_count_against_the_bound() {
        let mut avoided = Avoided::default();
        let before = usable(2);
        avoided.note_failure(&before[0], &before, 0, POLICY);
        let after = vec![before[1].clone(), "10.0.0.9:80".to_string()];
        let noticed = avoided.note_failure(&after[0], &after, 1, POLICY);
        assert_eq!(noticed, Noticed::Avoided { new_streak: true });
    }

    #[test]
    fn unlisted_instances_and_a_zero_time_are_ignored() {
        let hosts = usable(3);
        let mut avoided = Avoided::default();
        let gone = avoided.note_failure("10.9.9.9:80", &hosts, 0, POLICY);
        assert_eq!(gone, Noticed::Ignored);
        let off = AvoidPolicy {
            avoid_ms: 0,
            ..POLICY
        };
        assert_eq!(
            avoided.note_failure(&hosts[0], &hosts, 0, off),
            Noticed::Ignored
        );
        assert!(avoided.is_empty());
    }

    #[test]
    fn polls_are_asked_at_most_once_a_second() {
        let mut avoided = Avoided::default();
        assert!(avoided.ask_poll(5_000));
        assert!(!avoided.ask_poll(5_999));
        assert!(avoided.ask_poll(6_000));
        assert_eq!(avoided.poll_asked_ms(), Some(6_000));
    }

    #[test]
    fn the_shared_value_reads_back() {
        let hosts = usable(3);
        let mut avoided = Avoided::default();
        avoided.note_failure(&hosts[0], &hosts, 7, POLICY);
        avoided.ask_poll(7);
        let mut v6 = Avoided::default();
        v6.note_failure(
            "[::1]:8080",
            &["[::1]:8080".into(), "[::2]:8080".into()],
            1,
            POLICY,
        );
        for value in [avoided, v6, Avoided::default()] {
            assert_eq!(Avoided::decode(&value.encode()), value);
        }
        assert_eq!(Avoided::decode(b"garbage\npoll x\n1.2.3.4:80 9"), {
            let mut one = Avoided::default();
            one.entries.push(Entry {
                endpoint: "1.2.3.4:80".into(),
                until_ms: 9,
            });
            one
        });
    }
}
