//! The Nacos access token: when to log in, when to refresh (well before
//! `tokenTtl` runs out), and how to back off after failures so that neither a
//! wrong password nor an account without permission becomes a tight login loop.
//!
//! Nacos answers 403 both for a token it no longer accepts and for an account
//! that may not read a namespace. A 403 logs in again at once (the token was
//! refused), unless the same service was refused the previous token too: then a
//! fresh token did not help, the account lacks permission, and each further login
//! waits as after a failed login (1, 2, 4 … 30 s). The old token stays in use
//! meanwhile: the services it may read keep being polled.

use crate::pure::polling::nacos::response::LoginGrant;

const FIRST_BACKOFF_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 30_000;

#[derive(Debug, Clone, Default)]
pub struct TokenState {
    token: Option<String>,
    refresh_at_ms: u64,
    expires_at_ms: u64,
    login_in_flight: bool,
    retry_at_ms: u64,
    failures: u32,
    /// Grows with every token taken, so a 403 can be matched to its token.
    generation: u64,
    /// The generation whose 403 already asked for a new login.
    refused_generation: Option<u64>,
    /// Fresh tokens refused in a row.
    refusals: u32,
}

/// What a 403 on a list call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token was refused: a new one is fetched at once.
    TokenRefused,
    /// A fresh token was refused too: the account lacks permission. The next
    /// login waits `retry_in_ms`.
    NoPermission { retry_in_ms: u64 },
    /// The 403 was for an older token, or one already being replaced.
    AlreadyHandled,
}

impl TokenState {
    /// Whether to send a login now.
    pub fn needs_login(&self, now_ms: u64) -> bool {
        !self.login_in_flight
            && now_ms >= self.retry_at_ms
            && (self.token.is_none() || now_ms >= self.refresh_at_ms)
    }

    /// The token, while it is still valid.
    pub fn valid_token(&self, now_ms: u64) -> Option<&str> {
        self.token
            .as_deref()
            .filter(|_| now_ms < self.expires_at_ms)
    }

    pub fn login_started(&mut self) {
        self.login_in_flight = true;
    }

    /// Which token a call carries, to hand back with its 403.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A login succeeded at `now_ms`. Refresh after three quarters of the lifetime.
    pub fn granted(&mut self, grant: LoginGrant, now_ms: u64) {
        let lifetime_ms = grant.ttl_seconds.max(1).saturating_mul(1000);
        self.generation += 1;
        self.token = Some(grant.access_token);
        self.expires_at_ms = now_ms.saturating_add(lifetime_ms);
        self.refresh_at_ms = now_ms.saturating_add(lifetime_ms / 4 * 3);
        self.login_in_flight = false;
        self.failures = 0;
        self.retry_at_ms = 0;
    }

    /// A login failed at `now_ms`; returns how many failed in a row.
    pub fn login_failed(&mut self, now_ms: u64) -> u32 {
        self.login_in_flight = false;
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = now_ms.saturating_add(backoff(self.failures));
        self.failures
    }

    /// A list call carrying token `generation` got a 403 at `now_ms`. `again`: the
    /// same service was refused an older token too, with no good answer between.
    pub fn refused(&mut self, generation: u64, again: bool, now_ms: u64) -> Refusal {
        if self.token.is_none()
            || generation != self.generation
            || self.refused_generation == Some(generation)
        {
            return Refusal::AlreadyHandled;
        }
        self.refused_generation = Some(generation);
        self.refusals = if again {
            self.refusals.saturating_add(1).max(2)
        } else {
            1
        };
        let retry_in_ms = match self.refusals {
            1 => 0,
            refusals => backoff(refusals - 1),
        };
        self.refresh_at_ms = self.refresh_at_ms.min(now_ms.saturating_add(retry_in_ms));
        if retry_in_ms == 0 {
            Refusal::TokenRefused
        } else {
            Refusal::NoPermission { retry_in_ms }
        }
    }

    /// Take token state published by another VM.
    pub fn adopt(&mut self, token: String, refresh_at_ms: u64, expires_at_ms: u64) {
        if self.token.as_deref() != Some(token.as_str()) {
            self.generation += 1;
        }
        self.token = Some(token);
        self.refresh_at_ms = refresh_at_ms;
        self.expires_at_ms = expires_at_ms;
    }

    /// `(token, refresh_at_ms, expires_at_ms)` to publish to other VMs.
    pub fn current(&self) -> Option<(&str, u64, u64)> {
        self.token
            .as_deref()
            .map(|token| (token, self.refresh_at_ms, self.expires_at_ms))
    }
}

/// The wait after the `streak`-th failure in a row: 1 s, doubling, at most 30 s.
fn backoff(streak: u32) -> u64 {
    let shift = streak.saturating_sub(1).min(16);
    FIRST_BACKOFF_MS
        .saturating_mul(1 << shift)
        .min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn grant(ttl_seconds: u64) -> LoginGrant {
        LoginGrant {
            access_token: "tok".into(),
            ttl_seconds,
        }
    }

    #[test]
    fn logs_in_first_and_not_twice_at_once() {
        let mut state = TokenState::default();
        assert!(state.needs_login(0));
        assert_eq!(state.valid_token(0), None);
        state.login_started();
        assert!(!state.needs_login(0));
    }

    #[test]
    fn refreshes_at_three_quarters_of_the_lifetime_before_expiry() {
        let mut state = TokenState::default();
        state.login_started();
        state.granted(grant(4), 10_000);
        assert_eq!(state.valid_token(10_000), Some("tok"));
        assert!(!state.needs_login(12_999));
        assert!(state.needs_login(13_000));
        assert_eq!(
            state.valid_token(13_999),
            Some("tok"),
            "still valid while refreshing"
        );
        assert_eq!(state.valid_token(14_000), None);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut state = TokenState::default();
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            state.login_started();
            state.login_failed(now);
            let mut wait = 0;
            while !state.needs_login(now + wait) {
                wait += 500;
            }
            waits.push(wait);
            now += wait;
        }
        assert_eq!(
            waits,
            vec![1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut state = TokenState::default();
        state.login_failed(0);
        state.login_failed(0);
        state.granted(grant(100), 0);
        assert_eq!(state.login_failed(0), 1);
    }

    #[test]
    fn a_refused_token_is_replaced_at_once_and_kept_meanwhile() {
        let mut state = TokenState::default();
        state.granted(grant(100), 0);
        let first = state.generation();
        assert_eq!(state.refused(first, false, 5_000), Refusal::TokenRefused);
        assert!(state.needs_login(5_000));
        assert_eq!(
            state.valid_token(5_000),
            Some("tok"),
            "still used meanwhile"
        );
        assert_eq!(
            state.refused(first, false, 5_001),
            Refusal::AlreadyHandled,
            "many services refusing one token ask for one login"
        );
    }

    #[test]
    fn a_token_revoked_after_it_worked_is_replaced_at_once_every_time() {
        let mut state = TokenState::default();
        for round in 0..5u64 {
            state.granted(grant(3_600), round * 1_000);
            let verdict = state.refused(state.generation(), false, round * 1_000 + 900);
            assert_eq!(verdict, Refusal::TokenRefused, "round {round}");
        }
    }

    #[test]
    fn a_fresh_token_refused_again_backs_off_like_a_failed_login() {
        let mut state = TokenState::default();
        let mut now = 0;
        let mut logins = Vec::new();
        // Every login succeeds, every list call with the new token gets a 403.
        let mut refused_before = false;
        while now < 120_000 {
            if state.needs_login(now) {
                logins.push(now);
                state.login_started();
                state.granted(grant(3_600), now);
            }
            state.refused(state.generation(), refused_before, now);
            refused_before = true;
            now += 100;
        }
        let waits: Vec<u64> = logins.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            waits[..6],
            [100, 1_000, 2_000, 4_000, 8_000, 16_000],
            "{waits:?}"
        );
        assert!(waits[6..].iter().all(|w| *w == 30_000), "{waits:?}");
    }

    #[test]
    fn zero_ttl_still_expires_in_the_future_and_adopted_tokens_are_used() {
        let mut state = TokenState::default();
        state.granted(grant(0), 0);
        assert_eq!(state.valid_token(999), Some("tok"));
        state.adopt("other".into(), 5_000, 9_000);
        assert_eq!(state.current(), Some(("other", 5_000, 9_000)));
        assert_eq!(state.valid_token(8_999), Some("other"));
    }
}
