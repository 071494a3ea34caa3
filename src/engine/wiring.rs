//! The hand-offs between the engine's components, each O(1) in what it
//! touches: a new guard gets its server, target and schedule slot; a learned
//! service joins them; a target whose content changed refreshes only its own
//! guards; a lost push link makes only its own services due. The entry points
//! in `engine.rs` call these; no component calls another.

use super::engine::{poll_parts, Engine};
use super::following;
use super::guards::{Applies, RequestHost};
use super::host_traits::{Metrics, Outbox, SharedStore};
use super::ids::{GuardId, Id, ServerId, TargetId};
use super::learned::{Lookup, Unlisted};
use super::polling::PollParts;
use super::push::Heard;
use super::sharing::{Announced, Handed};
use crate::pure::config::{GuardSettings, Scope};
use crate::pure::registry::snapshot::Freshness;
use log::info;

impl Engine {
    /// A guard, with its server and target unless another guard has them; its
    /// target, and whether that was added now.
    pub(super) fn add_guard(
        &mut self,
        settings: GuardSettings,
        metrics: &mut dyn Metrics,
    ) -> (GuardId, TargetId, bool) {
        let (server, new_server) = self.servers.find_or_add(&settings.server);
        if new_server {
            self.links.add_server(server, &settings.server);
        }
        let guard = self.guards.next_id();
        let (target, added) = self
            .targets
            .find_or_add(server, &settings, guard, 0, metrics);
        self.guards.add(settings, target, metrics);
        (guard, target, added)
    }

    pub(super) fn set_next_answer_due(&mut self, target: TargetId) {
        let server = self.targets.get(target).map(|t| t.server());
        let timeout_ms = server
            .and_then(|server| self.servers.settings(server))
            .map_or(0, |s| s.timeout_ms);
        let due = self.polling.next_answer_due_ms(target, timeout_ms);
        self.targets.set_next_answer_due(target, due);
    }

    /// Prepare the candidates of every guard of `target` from its new content.
    pub(super) fn refresh_guards(&mut self, target: TargetId, metrics: &mut dyn Metrics) {
        if let Some(t) = self.targets.get(target) {
            let guards = self.targets.guards_of(target);
            self.guards.refresh(guards, t.snapshot(), metrics);
        }
    }

    /// The guard of the Nacos service a request's cluster routes to, learning
    /// the service on its first request (`guardNacosRoutes`). Once a cluster is
    /// known this is one map lookup and a time comparison.
    pub(super) fn learned_guard(
        &mut self,
        now_ms: u64,
        request: &mut dyn RequestHost,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) -> Option<GuardId> {
        let learned = self.learned.as_mut()?;
        let cluster = request.cluster_name()?;
        let guard = match learned.lookup(cluster, now_ms, metrics) {
            Lookup::Guarded(guard) => guard,
            Lookup::LeftAlone => return None,
            Lookup::New { host, settings } => {
                let cluster = Some(cluster.to_string());
                self.learn(&host, cluster.as_deref(), *settings, now_ms, metrics, store)?
            }
            // Refused when it was listed again: no other VM may ever list it,
            // so its own requests ask for a place (a second apart).
            Lookup::Relist {
                guard,
                target,
                host,
            } => {
                // The list itself says whether it holds the service already or
                // has room: once a second per refused service.
                let sharing = self.sharing.as_ref()?;
                let max = learned.max_services();
                let outcome = sharing.announce_learned(&[host.as_str()], max, store);
                match outcome.first() {
                    Some(Announced::Listed) => learned.take_back(target),
                    Some(Announced::Contended) => {
                        learned.take_back(target);
                        learned.keep_unlisted(Unlisted {
                            host,
                            target,
                            once: false,
                            seen_listed: false,
                            handed: None,
                        });
                    }
                    Some(Announced::Full) | None => {
                        learned.still_refused(metrics);
                        return None;
                    }
                }
                guard
            }
        };
        let target = self.guards.target_of(guard)?;
        let t = self.targets.get(target)?;
        let fresh = t.freshness(now_ms) == Freshness::Fresh;
        let follower = !self.is_poller();
        let learned = self.learned.as_mut()?;
        if !learned.touch(target, now_ms, fresh) {
            return Some(guard);
        }
        let Some(sharing) = &self.sharing else {
            return Some(guard);
        };
        sharing.touch(t.heartbeat_id(), now_ms, store);
        // A snapshot that is not fresh may be one the poller let idle and took
        // off the list, which this request brings back on the next tick.
        if !fresh && follower {
            learned.relist_after_request(target, now_ms);
        }
        Some(guard)
    }

    /// Guard the service of `host` by `settings`; `cluster`: the request's
    /// cluster that found it, handed in to the poller now (a few small values,
    /// whatever the list holds) if the list and the inbox have room, and
    /// listed by the poller's next tick; `None`: the list named it. Where the
    /// list and the inbox seem full, the list itself says whether it holds the
    /// service already or has room (one pass over its bytes, at the bound
    /// only). The poller polls it once its own tick found it listed, so that
    /// `maxServices` holds for what is polled. A list that other VMs kept
    /// writing is no reason to refuse: the service is guarded and listed on the
    /// next ticks.
    pub(super) fn learn(
        &mut self,
        host: &str,
        cluster: Option<&str>,
        settings: GuardSettings,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) -> Option<GuardId> {
        let learned = self.learned.as_mut()?;
        let max = learned.max_services();
        let mut handed = None;
        let admitted = match (&self.sharing, cluster) {
            (Some(sharing), Some(_)) => match sharing.hand_in(host, max, store) {
                Handed::At(number) => {
                    handed = Some(number);
                    true
                }
                Handed::Contended => true,
                Handed::Full => sharing.announce_learned(&[host], max, store) != [Announced::Full],
            },
            (Some(_), None) => true,
            (None, _) => learned.has_room(),
        };
        if !admitted {
            learned.refuse(cluster.unwrap_or(host), now_ms, metrics);
            return None;
        }
        let interval_ms = settings.refresh_interval_ms;
        let (guard, target, added) = self.add_guard(settings, metrics);
        if added {
            self.polling.add(interval_ms);
            self.set_next_answer_due(target);
        }
        let listed = cluster.is_none() || self.sharing.is_none();
        let (learned, service) = (self.learned.as_mut()?, self.targets.get(target)?.service());
        let ids = (guard, target);
        learned.learned(host, cluster, service, ids, now_ms, listed, metrics);
        if let Some(number) = handed {
            learned.handed_in(target, number);
        }
        if cluster.is_some() {
            if let (Some(sharing), Some(t)) = (&self.sharing, self.targets.get(target)) {
                sharing.touch(t.heartbeat_id(), now_ms, store);
            }
        }
        // A target this VM polls already (it took the service from the list
        // after refusing a request to it) has content the new guard lacks.
        if following::start_from_stored(&mut self.targets, target, store) || !added {
            self.refresh_guards(target, metrics);
        }
        Some(guard)
    }

    /// As the poller: take the services other VMs listed, list again what it
    /// polls and the list lost, take off the list what idles (freeing its
    /// place under `maxServices`), and pause polling it.
    pub(super) fn take_announced(
        &mut self,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let (Some(learned), Some(sharing)) = (self.learned.as_mut(), self.sharing.as_mut()) else {
            return;
        };
        // What requests handed in since the last tick goes on the list first.
        let max = learned.max_services();
        let waiting_numbers = sharing.take_inbox(now_ms, max, store);
        // From now on the poller keeps what it polls listed, on every change of
        // the list; what it learned since its last tick, or as a follower, is
        // listed now, unless it still waits in the inbox.
        let (waiting, pending): (Vec<Unlisted>, Vec<Unlisted>) = learned
            .take_unlisted()
            .into_iter()
            .partition(|u| u.waits_in(&waiting_numbers));
        for unlisted in waiting {
            learned.keep_unlisted(unlisted);
        }
        let hosts: Vec<&str> = pending.iter().map(|u| u.host.as_str()).collect();
        let outcomes = sharing.announce_learned(&hosts, max, store);
        for (unlisted, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Announced::Full => learned.refuse_learned(unlisted.target, metrics),
                // Polled from now on, when its schedule says (at once for a
                // new one).
                Announced::Listed => learned.take_back(unlisted.target),
                // Polled once the list holds it: tried again on the next tick.
                Announced::Contended => learned.keep_unlisted(unlisted),
            }
        }
        if let Some(listed) = sharing.read_learned(store) {
            learned.list_moved();
            let listed_set: std::collections::HashSet<&str> =
                listed.iter().map(String::as_str).collect();
            let lost: Vec<&str> = learned
                .active_hosts()
                .filter(|host| !listed_set.contains(host))
                .collect();
            sharing.announce_learned(&lost, max, store);
            let mut taken = 0;
            for entry in &listed {
                let Some(learned) = self.learned.as_mut() else {
                    return;
                };
                if let Lookup::New { host, settings } = learned.listed_elsewhere(entry) {
                    let guard = self.learn(&host, None, *settings, now_ms, metrics, store);
                    taken += usize::from(guard.is_some());
                }
            }
            if taken > 0 {
                info!("nacos-instance-guard: guarding {taken} services other VMs learned from traffic");
            }
        }
        self.check_idle(now_ms, metrics, store);
        // Requests find the list's length in the inbox.
        if let Some(sharing) = &self.sharing {
            sharing.settle_inbox(None, store);
        }
    }

    fn check_idle(&mut self, now_ms: u64, metrics: &mut dyn Metrics, store: &mut dyn SharedStore) {
        let (Some(learned), Some(sharing)) = (self.learned.as_mut(), &self.sharing) else {
            return;
        };
        let changes = learned.check_idle(now_ms, &self.targets, |id| sharing.touched_at(id, store));
        let mut leaving = changes.paused;
        leaving.extend(changes.still_idle);
        sharing.unlist_learned(&leaving, store);
        let max = learned.max_services();
        let hosts: Vec<&str> = changes
            .resumed
            .iter()
            .map(|(host, _)| host.as_str())
            .collect();
        let outcomes = sharing.announce_learned(&hosts, max, store);
        for ((_, target), outcome) in changes.resumed.iter().zip(outcomes) {
            if outcome == Announced::Full {
                learned.refuse_learned(*target, metrics);
            } else {
                self.polling.due_now(&[*target], now_ms);
            }
        }
    }

    /// As a follower: list each service this VM learned that the poller does
    /// not poll yet, in one write, and look again once a second in case its
    /// addition was lost or erased. A service is left to the poller once this
    /// VM found it listed and the poller's heartbeat carries it. One without a request here for `idleMs` is
    /// left off: the poller may have taken it off for idling (its heartbeat,
    /// unchanged since, may never say it polled it), and a request lists it
    /// again (`relist_after_request`).
    pub(super) fn keep_listed(
        &mut self,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let (Some(learned), Some(sharing)) = (self.learned.as_mut(), &self.sharing) else {
            return;
        };
        let max = learned.max_services();
        let targets = &self.targets;
        let taken = learned.take_unlisted();
        let (seen, new): (Vec<Unlisted>, Vec<Unlisted>) = taken
            .into_iter()
            .filter(|u| {
                // The poller's heartbeat carries every service it has, refused
                // ones too: only one this VM found listed itself is left to it.
                let polled = targets.get(u.target).is_some_and(|t| t.polled_by_poller())
                    && u.seen_listed
                    && u.handed.is_none();
                u.once || !(polled || learned.idle_here(u.target, now_ms))
            })
            .partition(|u| u.seen_listed);
        let pending = if seen.is_empty() || !learned.relist_check_due(now_ms) {
            for unlisted in seen {
                learned.keep_unlisted(unlisted);
            }
            new
        } else {
            // What still waits in the inbox is the poller's to list.
            let waiting_numbers = sharing.inbox_waiting(store);
            let (waiting, due): (Vec<Unlisted>, Vec<Unlisted>) =
                seen.into_iter().partition(|u| u.waits_in(&waiting_numbers));
            for unlisted in waiting {
                learned.keep_unlisted(unlisted);
            }
            due.into_iter()
                .map(|u| Unlisted { handed: None, ..u })
                .chain(new)
                .collect()
        };
        let hosts: Vec<&str> = pending.iter().map(|u| u.host.as_str()).collect();
        let outcomes = sharing.announce_learned(&hosts, max, store);
        for (mut unlisted, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Announced::Full => learned.refuse_learned(unlisted.target, metrics),
                Announced::Listed if unlisted.once => {}
                Announced::Listed => {
                    unlisted.seen_listed = true;
                    learned.keep_unlisted(unlisted);
                }
                Announced::Contended => learned.keep_unlisted(unlisted),
            }
        }
    }

    /// Poll at once every service of a link that was lost: a change pushed
    /// just before the loss may never have arrived.
    pub(super) fn poll_where_links_were_lost(&mut self, now_ms: u64) {
        for server in self.links.take_lost() {
            self.polling.due_now(self.targets.of_server(server), now_ms);
        }
    }

    /// The push link of `server`, if this VM still polls; a VM that lost the
    /// lease drops its links instead.
    pub(super) fn still_linked(
        &mut self,
        server: Option<ServerId>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &dyn SharedStore,
    ) -> Option<ServerId> {
        let server = server?;
        if !self.still_leading(now_ms, store) {
            self.links.stop(outbox, metrics);
            return None;
        }
        Some(server)
    }

    /// Take a list the server gave: through the same path as a polled one, or,
    /// if it did not parse, keep the last good snapshot and poll soon.
    pub(super) fn hear(
        &mut self,
        server: ServerId,
        heard: Option<Heard>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        if let Some(heard) = heard {
            match heard.list {
                Ok(set) => {
                    for &target in &heard.targets {
                        let publish: Option<&mut dyn SharedStore> = match self.sharing {
                            Some(_) => Some(&mut *store),
                            None => None,
                        };
                        if self
                            .targets
                            .take_pushed(target, set.clone(), heard.stamp_ms, publish)
                        {
                            self.refresh_guards(target, metrics);
                        }
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    for &target in &heard.targets {
                        if let Some(t) = self.targets.get(target) {
                            let name = &t.service().name;
                            self.links
                                .poll_soon(server, target, name, &reason, now_ms, metrics);
                        }
                    }
                }
            }
        }
        self.poll_where_links_were_lost(now_ms);
    }

    pub(super) fn follow(&mut self, store: &dyn SharedStore, metrics: &mut dyn Metrics) {
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        for target in following::follow(sharing, &mut self.targets, &mut self.servers, store) {
            self.refresh_guards(target, metrics);
        }
    }

    pub(super) fn take_over(&mut self, store: &dyn SharedStore, metrics: &mut dyn Metrics) {
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        for target in following::take_over(sharing, &mut self.targets, &mut self.servers, store) {
            self.refresh_guards(target, metrics);
        }
    }

    pub(super) fn start_polls(
        &mut self,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let parts = poll_parts!(self);
        self.polling
            .start_polls(now_ms, parts, outbox, metrics, store);
    }

    pub(super) fn on_login(
        &mut self,
        server: ServerId,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        metrics: &mut dyn Metrics,
        store: &mut dyn SharedStore,
    ) {
        let granted = self.servers.on_login(server, answer, now_ms, metrics);
        if let (Some(sharing), Some(token)) = (&self.sharing, granted) {
            sharing.publish_token(server.index(), &token, store);
        }
    }

    pub(super) fn add_scope(&mut self, scope: &Scope, metrics: &mut dyn Metrics) -> Applies {
        match scope {
            Scope::Guard(settings) => {
                Applies::Guard(self.add_guard(settings.as_ref().clone(), metrics).0)
            }
            Scope::Disabled => Applies::Disabled,
        }
    }
}
