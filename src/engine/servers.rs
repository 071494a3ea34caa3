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

    pub fn ids(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.table.iter().map(|(id, _)| id)
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
