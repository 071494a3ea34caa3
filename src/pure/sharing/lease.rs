//! Which VM polls. Envoy runs one VM per worker (plus the main thread), each with
//! its own ticks; a lease in process-wide shared data elects one of them to poll
//! Nacos, and the others read what it publishes. The lease runs out after a few
//! intervals, so if its holder stops renewing another VM takes over.

/// A lease as stored in shared data: `holder:renewed_at_ms:expires_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub renewed_at_ms: u64,
    pub expires_at_ms: u64,
}

/// What a VM does with the lease on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease: extend it and poll.
    Renew,
    /// Nobody holds a live lease: try to take it (compare-and-swap) and poll if won.
    TakeOver,
    /// Another VM holds it: read what that VM publishes.
    Follow,
}

impl Lease {
    /// A lease nobody holds (holder 0), free to take at any time.
    pub fn vacant() -> Self {
        Self {
            holder: 0,
            renewed_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    pub fn granted(holder: u64, now_ms: u64, ttl_ms: u64) -> Self {
        Self {
            holder,
            renewed_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.holder, self.renewed_at_ms, self.expires_at_ms
        )
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(':').map(str::parse::<u64>);
        let lease = Self {
            holder: parts.next()?.ok()?,
            renewed_at_ms: parts.next()?.ok()?,
            expires_at_ms: parts.next()?.ok()?,
        };
        parts.next().is_none().then_some(lease)
    }
}

/// The step for VM `me` at `now_ms`, given the stored lease (if any, and if it
/// could be read). A clock that jumped back by more than a lease lifetime makes a
/// lease void, or it would block takeover for as long as the jump.
pub fn step(stored: Option<&Lease>, me: u64, now_ms: u64, ttl_ms: u64) -> LeaseStep {
    match stored {
        None => LeaseStep::TakeOver,
        Some(lease) if lease.holder == me => LeaseStep::Renew,
        Some(lease)
            if now_ms >= lease.expires_at_ms
                || now_ms.saturating_add(ttl_ms) < lease.renewed_at_ms =>
        {
            LeaseStep::TakeOver
        }
        Some(_) => LeaseStep::Follow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const TTL: u64 = 3000;

    #[test]
    fn free_lease_is_taken() {
        assert_eq!(step(None, 1, 0, TTL), LeaseStep::TakeOver);
    }

    #[test]
    fn holder_renews_and_others_follow_while_it_lives() {
        let lease = Lease::granted(1, 1000, TTL);
        assert_eq!(step(Some(&lease), 1, 1500, TTL), LeaseStep::Renew);
        assert_eq!(step(Some(&lease), 2, 1500, TTL), LeaseStep::Follow);
        assert_eq!(step(Some(&lease), 2, 3999, TTL), LeaseStep::Follow);
    }

    #[test]
    fn expired_lease_is_stolen() {
        let lease = Lease::granted(1, 1000, TTL);
        assert_eq!(step(Some(&lease), 2, 4000, TTL), LeaseStep::TakeOver);
        // The old holder, back after its lease ran out, still holds it until
        // someone else writes: renewing then is right, it was never taken.
        assert_eq!(step(Some(&lease), 1, 9000, TTL), LeaseStep::Renew);
    }

    #[test]
    fn clock_going_backwards_a_little_keeps_the_lease() {
        let lease = Lease::granted(1, 10_000, TTL);
        assert_eq!(step(Some(&lease), 2, 9_000, TTL), LeaseStep::Follow);
    }

    #[test]
    fn clock_going_backwards_far_voids_the_lease() {
        let lease = Lease::granted(1, 100_000, TTL);
        assert_eq!(step(Some(&lease), 2, 50_000, TTL), LeaseStep::TakeOver);
    }

    #[test]
    fn leases_round_trip_and_garbage_is_refused() {
        let lease = Lease::granted(7, 123, 456);
        assert_eq!(Lease::decode(lease.encode().as_bytes()), Some(lease));
        for bad in ["", "1:2", "1:2:3:4", "a:b:c", "1:-2:3", "\u{0}"] {
            assert_eq!(Lease::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
