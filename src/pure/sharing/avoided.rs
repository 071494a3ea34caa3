//! Where VMs share the instances they avoid (`routing::avoidance`): one value
//! per service, and one small log of which services changed, which every VM
//! reads on its tick (one read, not one per service) to learn within a tick
//! what another VM saw fail. The poller reads the same log to poll a failing
//! service at once.

const PREFIX: &str = "nacos-instance-guard.avoided";

/// The log of changes, shared by every configuration: services are named by
/// their question's id (`ServiceKeys::id`), the same for all of them.
pub const CHANGES_KEY: &str = "nacos-instance-guard.avoided.changes";

/// Changes the log keeps; a VM further behind reads every service it has.
const KEPT: usize = 32;

/// The avoided instances of service `id`.
pub fn service_key(id: u64) -> String {
    format!("{PREFIX}.{id:016x}")
}

/// The last changes, oldest first, each with its sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeLog {
    changes: Vec<(u64, u64)>,
}

/// What changed since a sequence number a VM last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Nothing,
    Services(Vec<u64>),
    /// The log no longer reaches back that far.
    Unknown,
}

impl ChangeLog {
    /// The sequence number of the last change (0: none yet).
    pub fn last(&self) -> u64 {
        self.changes.last().map_or(0, |(seq, _)| *seq)
    }

    /// Record a change of `service`; its sequence number.
    pub fn record(&mut self, service: u64) -> u64 {
        let seq = self.last() + 1;
        self.changes.push((seq, service));
        if self.changes.len() > KEPT {
            self.changes.remove(0);
        }
        seq
    }

    pub fn changed_since(&self, seen: u64) -> Changed {
        let last = self.last();
        if last == seen {
            return Changed::Nothing;
        }
        let oldest = self.changes.first().map_or(0, |(seq, _)| *seq);
        if last < seen || oldest > seen.saturating_add(1) {
            return Changed::Unknown;
        }
        let mut services: Vec<u64> = self
            .changes
            .iter()
            .filter(|(seq, _)| *seq > seen)
            .map(|(_, service)| *service)
            .collect();
        services.sort_unstable();
        services.dedup();
        Changed::Services(services)
    }

    /// `<seq> <service hex>` a line.
    pub fn encode(&self) -> Vec<u8> {
        let lines: Vec<String> = self
            .changes
            .iter()
            .map(|(seq, service)| format!("{seq} {service:x}"))
            .collect();
        lines.join("\n").into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let changes = String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|line| {
                let (seq, service) = line.split_once(' ')?;
                Some((seq.parse().ok()?, u64::from_str_radix(service, 16).ok()?))
            })
            .collect();
        Self { changes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn a_reader_learns_which_services_changed_since_it_looked() {
        let mut log = ChangeLog::default();
        assert_eq!(log.changed_since(0), Changed::Nothing);
        log.record(7);
        let seen = log.last();
        log.record(9);
        log.record(7);
        assert_eq!(log.changed_since(seen), Changed::Services(vec![7, 9]));
        assert_eq!(log.changed_since(log.last()), Changed::Nothing);
        assert_eq!(ChangeLog::decode(&log.encode()), log);
    }

    #[test]
    fn a_reader_too_far_behind_is_told_so() {
        let mut log = ChangeLog::default();
        for service in 0..40 {
            log.record(service);
        }
        assert_eq!(log.changed_since(2), Changed::Unknown);
        assert_eq!(log.changed_since(100), Changed::Unknown);
        assert!(matches!(log.changed_since(30), Changed::Services(s) if s.len() == 10));
        assert_ne!(service_key(1), service_key(2));
    }
}
