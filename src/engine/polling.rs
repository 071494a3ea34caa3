//! Polling: when each target is asked (the schedule), the calls in flight, and
//! what their answers change. The poller's periods are fixed here when the
//! configuration is read, since the host's tick period is set only then.

use super::host_traits::{Metrics, Outbox, OutgoingCall, SharedStore};
use super::ids::{Id, ServerId, TargetId};
use super::learned::LearnedServices;
use super::push::DuePoll;
use super::push_links::PushLinks;
use super::servers::Servers;
use super::sharing::LEASE_INTERVALS;
use super::targets::Targets;
use crate::pure::hashing::WordMap;
use crate::pure::polling::nacos::response::AnswerError;
use crate::pure::polling::schedule::{Readiness, Scheduler, MAX_CALLS_IN_FLIGHT};

/// A call in flight, by its token.
pub(super) enum Pending {
    List(Polled),
    Login(ServerId),
}

/// A list call as it was sent.
pub(super) struct Polled {
    target: TargetId,
    server: ServerId,
    polled_at_ms: u64,
    token_generation: u64,
}

impl Polled {
    pub fn target(&self) -> TargetId {
        self.target
    }
}

/// The components a poll reads and changes, lent by the engine for one event.
pub(super) struct PollParts<'a> {
    pub servers: &'a mut Servers,
    pub targets: &'a mut Targets,
    pub links: &'a mut PushLinks,
    pub learned: Option<&'a LearnedServices>,
    /// The VMs share polling: what is learned is published to shared data.
    pub publishing: bool,
}

pub(super) struct Polling {
    scheduler: Scheduler,
    pending: WordMap<u32, Pending>,
    /// The shortest interval of every service this configuration may poll,
    /// learned ones included: it sets the tick, the heartbeat and the lease.
    shortest_interval_ms: u64,
    /// Targets to ask Nacos about at once, even where a push link would only
    /// confirm: an instance failed, and only Nacos's answer tells if it is gone.
    forced: Vec<TargetId>,
}

impl Polling {
    /// One slot per target, each with its interval; `learned_interval_ms`: the
    /// interval of services learned later, if any may be.
    pub fn new(intervals: Vec<u64>, learned_interval_ms: Option<u64>, seed: u64) -> Self {
        let scheduler = Scheduler::new(intervals, seed, MAX_CALLS_IN_FLIGHT);
        let configured = (!scheduler.is_empty()).then(|| scheduler.shortest_interval_ms());
        let shortest_interval_ms = match (configured, learned_interval_ms) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => scheduler.shortest_interval_ms(),
        };
        Self {
            scheduler,
            pending: WordMap::default(),
            shortest_interval_ms: shortest_interval_ms.max(1),
            forced: Vec::new(),
        }
    }

    /// One more target, due at once.
    pub fn add(&mut self, interval_ms: u64) {
        self.scheduler.add(interval_ms);
    }

    pub fn tick_period_ms(&self) -> u64 {
        Scheduler::tick_period_for(self.shortest_interval_ms)
    }

    /// How long a confirmation alone may wait before the heartbeat carries it.
    pub fn heartbeat_period_ms(&self) -> u64 {
        self.shortest_interval_ms / 2
    }

    pub fn lease_ttl_ms(&self) -> u64 {
        self.shortest_interval_ms * LEASE_INTERVALS
    }

    /// After a good answer, by when the next one for `target` is due at the
    /// latest: its interval, the call's `timeout_ms`, and for followers to hear
    /// of it, the heartbeat's period and two ticks.
    pub fn next_answer_due_ms(&self, target: TargetId, timeout_ms: u64) -> u64 {
        let slack = 2 * self.tick_period_ms() + self.heartbeat_period_ms();
        self.scheduler.interval_ms(target.index()) + timeout_ms + slack
    }

    /// Poll `targets` at once, however recently they were polled.
    pub fn due_now(&mut self, targets: &[TargetId], now_ms: u64) {
        for target in targets {
            self.scheduler.due_now(target.index(), now_ms);
        }
    }

    /// Ask Nacos about `target` on the next tick, by a real poll even with push.
    pub fn poll_now(&mut self, target: TargetId, now_ms: u64) {
        if !self.forced.contains(&target) {
            self.forced.push(target);
        }
        self.scheduler.due_now(target.index(), now_ms);
    }

    pub fn take_pending(&mut self, token: u32) -> Option<Pending> {
        self.pending.remove(&token)
    }

    pub fn login_sent(&mut self, token: u32, server: ServerId) {
        self.pending.insert(token, Pending::Login(server));
    }

    /// The call for `target` ended; its place is free.
    pub fn finished(&mut self, target: TargetId) {
        self.scheduler.finished(target.index());
    }

    /// Send the polls due at `now_ms`, as far as there is room for calls. A
    /// service whose server needs a token waits for one; a learned service that
    /// idles waits for traffic; a live push link confirms instead of a poll.
    pub fn start_polls(
        &mut self,
        now_ms: u64,
        parts: PollParts<'_>,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let PollParts {
            servers,
            targets,
            links,
            learned,
            publishing,
        } = parts;
        // A learned service that idles is looked at again a second later (the
        // idle check resumes it and makes it due at once); one whose server
        // waits for a token, on every tick.
        let ready = |index: usize| {
            let id = TargetId::from_index(index);
            if learned.is_some_and(|learned| learned.is_paused(id)) {
                return Readiness::NotBefore(now_ms.saturating_add(1_000));
            }
            match targets.get(id) {
                Some(t) if servers.ready(t.server(), now_ms) => Readiness::Ready,
                _ => Readiness::Waiting,
            }
        };
        for index in self.scheduler.take_due_when(now_ms, ready) {
            let id = TargetId::from_index(index);
            let Some(server) = targets.get(id).map(|t| t.server()) else {
                self.scheduler.finished(index);
                continue;
            };
            let Some(settings) = servers.settings(server) else {
                self.scheduler.finished(index);
                continue;
            };
            let forced = self.forced.iter().position(|t| *t == id);
            if let Some(position) = forced {
                self.forced.swap_remove(position);
            }
            if forced.is_none() && links.due_poll(server, id, now_ms) == DuePoll::Confirm {
                self.scheduler.finished(index);
                targets.confirm_by_push(id, now_ms, publishing.then_some(&mut *store));
                continue;
            }
            let access_token = servers.access_token(server, now_ms);
            let Some(list) = targets
                .get(id)
                .map(|t| t.list_call(settings.api, access_token))
            else {
                self.scheduler.finished(index);
                continue;
            };
            let call = OutgoingCall {
                cluster: &settings.cluster,
                authority: &settings.authority,
                request: &list,
                timeout_ms: settings.timeout_ms,
            };
            match outbox.dispatch(call) {
                Ok(token) => {
                    let polled = Polled {
                        target: id,
                        server,
                        polled_at_ms: now_ms,
                        token_generation: servers.token_generation(server),
                    };
                    self.pending.insert(token, Pending::List(polled));
                }
                Err(reason) => {
                    self.scheduler.finished(index);
                    targets.failed(id, now_ms, &settings.cluster, &reason, metrics);
                }
            }
        }
    }
}

/// Take the answer to a list call; the target whose content changed, if any.
/// A bad answer keeps the last good snapshot, and a 403 tells the login what
/// it means.
pub(super) fn take_answer(
    polled: &Polled,
    answer: Option<(u16, &[u8])>,
    now_ms: u64,
    parts: PollParts<'_>,
    metrics: &mut dyn Metrics,
    store: &mut dyn SharedStore,
) -> Option<TargetId> {
    let PollParts {
        servers,
        targets,
        publishing,
        ..
    } = parts;
    let (id, server) = (polled.target, polled.server);
    let settings = servers.settings(server)?;
    let (api, needs_login) = (settings.api, settings.credentials.is_some());
    let publish = publishing.then_some(store);
    match targets.take_answer(id, api, answer, polled.polled_at_ms, metrics, publish) {
        Ok(changed) => changed.then_some(id),
        Err(error) => {
            if error == AnswerError::Status(403) && needs_login {
                let again = targets.note_refusal(id, polled.token_generation);
                if let Some(target) = targets.get(id) {
                    servers.refused(
                        server,
                        polled.token_generation,
                        again,
                        now_ms,
                        target.service(),
                    );
                }
            }
            let cluster = servers.settings(server).map_or("", |s| s.cluster.as_str());
            targets.failed(
                id,
                polled.polled_at_ms,
                cluster,
                &error.to_string(),
                metrics,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn the_periods_follow_the_shortest_interval_learned_services_included() {
        let configured = Polling::new(vec![4_000, 2_000], None, 1);
        assert_eq!(configured.heartbeat_period_ms(), 1_000);
        assert_eq!(configured.lease_ttl_ms(), 2_000 * LEASE_INTERVALS);
        let learning_faster = Polling::new(vec![4_000], Some(400), 1);
        assert_eq!(learning_faster.tick_period_ms(), 20);
        assert_eq!(learning_faster.heartbeat_period_ms(), 200);
        let learning_only = Polling::new(Vec::new(), Some(3_000), 1);
        assert_eq!(learning_only.heartbeat_period_ms(), 1_500);
        let configured_faster = Polling::new(vec![400], Some(4_000), 1);
        assert_eq!(configured_faster.heartbeat_period_ms(), 200);
    }

    #[test]
    fn an_answer_is_due_within_interval_timeout_heartbeat_and_two_ticks() {
        let mut polling = Polling::new(vec![1_000], None, 1);
        polling.add(5_000);
        // tick 50 ms, heartbeat 500 ms
        let slack = 2 * 50 + 500;
        assert_eq!(
            polling.next_answer_due_ms(TargetId::from_index(0), 700),
            1_700 + slack
        );
        assert_eq!(
            polling.next_answer_due_ms(TargetId::from_index(1), 700),
            5_700 + slack
        );
    }
}
