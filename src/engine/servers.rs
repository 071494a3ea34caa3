//! The Nacos servers of a configuration and their logins: each server's token,
//! when to log in again, and what a 403 meant.

use log::{info, warn};

use super::host_traits::{Metrics, Outbox, OutgoingCall};
use super::ids::{ServerId, Table};
use super::metrics::{bump, LoginMetrics};
use crate::pure::config::NacosServer;
use crate::pure::polling::auth::{Refusal, TokenState};
use crate::pure::polling::nacos::request::{self, ServiceKey};
use crate::pure::polling::nacos::response::{self, AnswerError};
use crate::pure::sharing::published::PublishedToken;

struct Server {
    settings: NacosServer,
    token: TokenState,
}

pub(super) struct Servers {
    table: Table<ServerId, Server>,
    metrics: LoginMetrics,
}

impl Servers {
    pub fn new(metrics: LoginMetrics) -> Self {
        Self {
            table: Table::default(),
            metrics,
        }
    }

    /// The server `settings` describe, and whether it was added now.
    pub fn find_or_add(&mut self, settings: &NacosServer) -> (ServerId, bool) {
        match self.table.find(|s| s.settings == *settings) {
            Some(id) => (id, false),
            None => {
                let id = self.table.push(Server {
                    settings: settings.clone(),
                    token: TokenState::default(),
                });
                (id, true)
            }
        }
    }

    pub fn settings(&self, id: ServerId) -> Option<&NacosServer> {
        self.table.get(id).map(|s| &s.settings)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether `id` may be asked now: it needs no token, or has a valid one.
    pub fn ready(&self, id: ServerId, now_ms: u64) -> bool {
        self.table.get(id).is_some_and(|s| {
            s.settings.credentials.is_none() || s.token.valid_token(now_ms).is_some()
        })
    }

    pub fn access_token(&self, id: ServerId, now_ms: u64) -> Option<&str> {
        self.table.get(id)?.token.valid_token(now_ms)
    }

    /// Which token a call sent now carries, to tell a 403 to an old token from
    /// one to a fresh token.
    pub fn token_generation(&self, id: ServerId) -> u64 {
        self.table.get(id).map_or(0, |s| s.token.generation())
    }

    /// Send the logins due at `now_ms`; `sent` learns each call's token.
    pub fn start_logins(
        &mut self,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        mut sent: impl FnMut(u32, ServerId),
    ) {
        let failures = self.metrics.failure;
        for (id, server) in self.table.iter_mut() {
            let Some(credentials) = &server.settings.credentials else {
                continue;
            };
            if !server.token.needs_login(now_ms) {
                continue;
            }
            let login = request::login(
                server.settings.api,
                &credentials.username,
                &credentials.password,
            );
            let call = OutgoingCall {
                cluster: &server.settings.cluster,
                authority: &server.settings.authority,
                request: &login,
                timeout_ms: server.settings.timeout_ms,
            };
            server.token.login_started();
            match outbox.dispatch(call) {
                Ok(token) => sent(token, id),
                Err(reason) => record_login_failure(server, now_ms, &reason, failures, metrics),
            }
        }
    }

    /// The answer to a login; the token to publish when one was granted.
    pub fn on_login(
        &mut self,
        id: ServerId,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
    ) -> Option<PublishedToken> {
        let server = self.table.get_mut(id)?;
        let parsed = match answer {
            Some((status, body)) => response::parse_login(status, body),
            None => Err(AnswerError::NoAnswer),
        };
        match parsed {
            Ok(grant) => {
                server.token.granted(grant, now_ms);
                bump(metrics, self.metrics.success);
                let (token, refresh_at_ms, expires_at_ms) = server.token.current()?;
                Some(PublishedToken {
                    token: token.to_string(),
                    refresh_at_ms,
                    expires_at_ms,
                })
            }
            Err(error) => {
                let failures = self.metrics.failure;
                record_login_failure(server, now_ms, &error.to_string(), failures, metrics);
                None
            }
        }
    }

    /// Take the token another VM's login got.
    pub fn adopt_token(&mut self, id: ServerId, token: PublishedToken) {
        if let Some(server) = self.table.get_mut(id) {
            server
                .token
                .adopt(token.token, token.refresh_at_ms, token.expires_at_ms);
        }
    }

    /// A list call carrying token `generation` was refused with 403; `again`: a
    /// call with a newer token was refused before. Says once per episode what it meant.
    pub fn refused(
        &mut self,
        id: ServerId,
        generation: u64,
        again: bool,
        now_ms: u64,
        service: &ServiceKey,
    ) {
        let Some(server) = self.table.get_mut(id) else {
            return;
        };
        let cluster = &server.settings.cluster;
        match server.token.refused(generation, again, now_ms) {
            Refusal::TokenRefused => {
                info!("nacos-instance-guard: {cluster} refused the access token; logging in again")
            }
            Refusal::NoPermission { retry_in_ms: 1_000 } => warn!(
                "nacos-instance-guard: {cluster} refuses a fresh token too: the account may not \
                 read service {} in namespace {}; logging in again with backoff (1 s, 2 s, 4 s … 30 s)",
                service.name, service.namespace_id
            ),
            Refusal::NoPermission { .. } | Refusal::AlreadyHandled => {}
        }
    }
}

/// Back off, count, and warn once per streak; never the password or a token,
/// only where and why.
fn record_login_failure(
    server: &mut Server,
    now_ms: u64,
    reason: &str,
    counter: Option<u32>,
    metrics: &mut dyn Metrics,
) {
    let streak = server.token.login_failed(now_ms);
    bump(metrics, counter);
    if streak == 1 {
        warn!(
            "nacos-instance-guard: login to {} failed: {reason}; retrying with backoff",
            server.settings.cluster
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{guard_settings, FakeMetrics, FakeOutbox};
    use crate::testing::test;

    fn server(extra: &str) -> NacosServer {
        let json = format!(
            r#"{{"nacos": {{"cluster": "outbound|8848||nacos.dns"{extra}}}, "service": {{"name": "demo"}}}}"#
        );
        guard_settings(&json).server
    }

    #[test]
    fn one_server_per_distinct_settings() {
        let mut servers = Servers::new(LoginMetrics::default());
        let (first, added) = servers.find_or_add(&server(""));
        assert!(added);
        assert_eq!(servers.find_or_add(&server("")), (first, false));
        let (other, added) = servers.find_or_add(&server(r#", "timeoutMs": 900"#));
        assert!(added);
        assert_ne!(first, other);
    }

    #[test]
    fn a_server_with_an_account_is_asked_only_once_its_login_is_granted() {
        let mut metrics = FakeMetrics::default();
        let mut servers = Servers::new(LoginMetrics::define(&mut metrics));
        let account = r#", "username": "guard", "password": "secret""#;
        let (id, _) = servers.find_or_add(&server(account));
        let (open, _) = servers.find_or_add(&server(""));
        assert!(servers.ready(open, 0));
        assert!(!servers.ready(id, 0));

        let mut outbox = FakeOutbox::default();
        let mut logins = Vec::new();
        servers.start_logins(0, &mut outbox, &mut metrics, |token, server| {
            logins.push((token, server))
        });
        assert_eq!(logins.len(), 1, "only the server with an account logs in");
        assert_eq!(logins[0].1, id);
        assert_eq!(outbox.take()[0].method, "POST");

        let grant = br#"{"accessToken":"T1","tokenTtl":3600}"#;
        let published = servers.on_login(id, Some((200, grant)), 10, &mut metrics);
        assert_eq!(published.map(|p| p.token), Some("T1".to_string()));
        assert!(servers.ready(id, 10));
        assert_eq!(servers.access_token(id, 10), Some("T1"));
        assert_eq!(metrics.get("nacos_guard.login_success"), 1);
    }

    #[test]
    fn a_failed_login_publishes_nothing_and_counts() {
        let mut metrics = FakeMetrics::default();
        let mut servers = Servers::new(LoginMetrics::define(&mut metrics));
        let (id, _) = servers.find_or_add(&server(r#", "username": "u", "password": "p""#));
        assert!(servers
            .on_login(id, Some((403, b"no")), 0, &mut metrics)
            .is_none());
        assert!(servers.on_login(id, None, 0, &mut metrics).is_none());
        assert_eq!(metrics.get("nacos_guard.login_failure"), 2);
        assert!(!servers.ready(id, 0));
    }
}
