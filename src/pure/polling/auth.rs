//! The Nacos access token: when to log in, when to refresh (well before
//! `tokenTtl` runs out, never after a 403), and how to back off after failures
//! so a wrong password does not become a tight retry loop.

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

    /// A login succeeded at `now_ms`. Refresh after three quarters of the lifetime.
    pub fn granted(&mut self, grant: LoginGrant, now_ms: u64) {
        let lifetime_ms = grant.ttl_seconds.max(1).saturating_mul(1000);
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
        let shift = self.failures.saturating_sub(1).min(16);
        let backoff = FIRST_BACKOFF_MS
            .saturating_mul(1 << shift)
            .min(MAX_BACKOFF_MS);
        self.retry_at_ms = now_ms.saturating_add(backoff);
        self.failures
    }

    /// Nacos refused the token (403): it is no good, log in again (after any backoff).
    pub fn rejected(&mut self) {
        self.token = None;
    }

    /// Take token state published by another VM.
    pub fn adopt(&mut self, token: String, refresh_at_ms: u64, expires_at_ms: u64) {
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
        state.rejected();
        assert!(state.needs_login(0));
        assert_eq!(state.login_failed(0), 1);
    }

    #[test]
    fn a_rejected_token_is_dropped() {
        let mut state = TokenState::default();
        state.granted(grant(100), 0);
        state.rejected();
        assert_eq!(state.valid_token(1), None);
        assert!(state.needs_login(1));
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
