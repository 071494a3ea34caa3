//! The services this VM polls (targets), one per question asked of Nacos: each
//! one's list request, its snapshot, the last good answer, and how its polls
//! have gone. Guards read the snapshots; only this file changes them.

use std::cell::OnceCell;

use log::{info, warn};

use super::host_traits::{Metrics, SharedStore};
use super::ids::{slot_at, GuardId, Id, ServerId, Table, TargetId};
use super::metrics::{bump, PollMetrics};
use super::sharing;
use crate::pure::config::GuardSettings;
use crate::pure::hashing::WordMap;
use crate::pure::polling::nacos::digest::AnswerDigest;
use crate::pure::polling::nacos::request::{ListRequest, NacosRequest, ServiceKey};
use crate::pure::polling::nacos::response::{self, AnswerError};
use crate::pure::polling::nacos::ApiVersion;
use crate::pure::registry::instance::InstanceSet;
use crate::pure::registry::snapshot::{Freshness, Health, Snapshot, StaleLimits};
use crate::pure::sharing::published::{self, ServiceKeys, StoredContent};

/// One service on one server, polled on its own.
pub(super) struct Target {
    server: ServerId,
    service: ServiceKey,
    query_clusters: Vec<String>,
    /// Its list request but for the token, built once, at its first poll: a
    /// learned service that idles is never asked.
    list: OnceCell<ListRequest>,
    /// Its keys in shared data; `keys.id()` is its number in heartbeats.
    keys: ServiceKeys,
    snapshot: Snapshot,
    /// The last good answer, but the time Nacos stamps on each answer: an
    /// answer it matches confirms the snapshot without being parsed.
    last_good: Option<AnswerDigest>,
    failure_streak: u32,
    /// The token generation of this service's last answer, if that was a 403.
    refused_with: Option<u64>,
    stale_reported: bool,
    /// The poller's heartbeat carried it: the poller polls it.
    in_heartbeat: bool,
    /// The strictest limits of the guards that use it, for the stale warning.
    limits: StaleLimits,
    metrics: PollMetrics,
    /// An empty answer would have emptied the snapshot: taken only if the
    /// poll sent at once after it says so too.
    empty_unconfirmed: bool,
    /// The content is one another configuration stored: once that one stores
    /// newer, this configuration's followers find it nowhere unless its
    /// poller keeps it for them.
    inherited: bool,
    /// Its content's write lost to others every time: written again on the
    /// poller's next tick (`Targets::write_unpublished`).
    unpublished: bool,
    /// The digest of its list, and the content stamp it was taken at: what a
    /// confirmation names, computed once per content.
    digest: Option<(u64, u64)>,
}

impl Target {
    pub fn server(&self) -> ServerId {
        self.server
    }

    pub fn heartbeat_id(&self) -> u64 {
        self.keys.id()
    }

    pub fn service(&self) -> &ServiceKey {
        &self.service
    }

    /// Whether its content's last write lost every compare-and-swap, not yet
    /// written again (the simulator's checks: a root context starting then
    /// finds the list before).
    #[cfg(test)]
    pub fn content_unwritten(&self) -> bool {
        self.unpublished
    }

    pub fn query_clusters(&self) -> &[String] {
        &self.query_clusters
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether the poller's heartbeat has carried this service: it polls it.
    pub fn polled_by_poller(&self) -> bool {
        self.in_heartbeat
    }

    /// How far the snapshot can be trusted by a guard that allows `max_stale_ms`.
    pub fn freshness_for(&self, now_ms: u64, max_stale_ms: u64) -> Freshness {
        let limits = StaleLimits {
            next_answer_due_ms: self.limits.next_answer_due_ms,
            max_stale_ms,
        };
        self.snapshot.freshness(now_ms, limits)
    }

    /// How far the snapshot can be trusted by the strictest of its guards.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        self.snapshot.freshness(now_ms, self.limits)
    }
}

impl Target {
    /// An empty answer replacing instances is held back once: a node that has
    /// just joined without its data answers empty until it has caught up, and
    /// the confirming poll, sent at once, mostly reaches another node (or the
    /// same one caught up). Whether `set`, polled at `polled_at_ms`, is such an
    /// answer, noted if it is. One older than the snapshot's last word (a push
    /// came since) is dropped by it, and asks for nothing.
    fn awaits_confirmation(&mut self, set: &InstanceSet, polled_at_ms: u64) -> bool {
        let empties = set.instances.is_empty()
            && !self.snapshot.is_older(polled_at_ms)
            && self
                .snapshot
                .instances()
                .is_some_and(|held| !held.instances.is_empty());
        self.empty_unconfirmed = empties && !self.empty_unconfirmed;
        self.empty_unconfirmed
    }

    /// Follow `stored` with `word`, the health that vouches for it, as
    /// configuration `writer`: one another configuration wrote is kept under
    /// `writer`'s key once this VM polls.
    fn follow_stored(&mut self, stored: StoredContent, word: Health, writer: u64) {
        self.inherited = stored.writer != writer;
        self.last_good = None;
        self.snapshot.follow(stored.set, word);
    }

    /// The digest of its list, which a confirmation names.
    fn list_digest(&mut self) -> Option<u64> {
        let stamp = self.snapshot.content_stamp();
        if let Some((at, digest)) = self.digest {
            if at == stamp {
                return Some(digest);
            }
        }
        let digest = published::list_digest(self.snapshot.instances()?)?;
        self.digest = Some((stamp, digest));
        Some(digest)
    }

    /// Take a good list, published to the store as configuration `writer`'s.
    fn take(
        &mut self,
        set: Option<InstanceSet>,
        stamp_ms: u64,
        writer: u64,
        publish: Option<&mut dyn SharedStore>,
    ) -> bool {
        if self.failure_streak > 0 {
            info!(
                "nacos-instance-guard: polling service {} works again after {} failures",
                self.service.name, self.failure_streak
            );
        }
        self.failure_streak = 0;
        self.refused_with = None;
        self.empty_unconfirmed = false;
        let changed = match set {
            Some(set) => self.snapshot.accept(set, stamp_ms),
            None => self.snapshot.accept_same(stamp_ms),
        };
        if let Some(store) = publish {
            if changed || self.unpublished || self.inherited {
                if let Some(set) = self.snapshot.instances() {
                    let stamp = self.snapshot.content_stamp();
                    if changed || self.unpublished {
                        let stored =
                            sharing::publish_content(&self.keys, writer, stamp, set, store);
                        self.unpublished = !stored;
                        self.inherited = false;
                    } else if sharing::keep_if_written_over(&self.keys, writer, stamp, set, store) {
                        self.inherited = false;
                    }
                }
            }
            if let Some(digest) = self.list_digest() {
                sharing::publish_confirmed(&self.keys, digest, stamp_ms, writer, store);
            }
        }
        changed
    }

    /// Its list call to a server of `api`, carrying `access_token`.
    pub fn list_call(&self, api: ApiVersion, access_token: Option<&str>) -> NacosRequest {
        let list = self
            .list
            .get_or_init(|| ListRequest::new(api, &self.service, &self.query_clusters));
        list.with_token(access_token)
    }
}

/// Everything that shapes Nacos's answer about a guard's service: guards, VMs and
/// configurations asking the same question share its answer.
fn question(settings: &GuardSettings) -> String {
    let server = &settings.server;
    let account = server
        .credentials
        .as_ref()
        .map_or("", |c| c.username.as_str());
    format!(
        "{}|{}|{:?}|{account}|{}|{}|{}|{}",
        server.cluster,
        server.authority,
        server.api,
        settings.service.namespace_id,
        settings.service.group,
        settings.service.name,
        settings.filter.clusters.join(",")
    )
}

#[derive(Default)]
pub(super) struct Targets {
    table: Table<TargetId, Target>,
    /// Targets by their heartbeat number, which is also how a guard's question
    /// finds its target in O(1).
    by_heartbeat_id: WordMap<u64, TargetId>,
    by_server: Vec<Vec<TargetId>>,
    /// The guards of each target, so a change reaches only them.
    guards: Vec<Vec<GuardId>>,
    /// The configuration whose content these targets publish and follow.
    writer: u64,
    /// Targets whose content's write lost every compare-and-swap: an index of
    /// those whose `Target::unpublished` is set, so that the poller's tick
    /// visits them alone, not every target.
    unpublished: Vec<TargetId>,
}

impl Targets {
    /// Publish and follow content as configuration `writer`
    /// ([`ConfigKeys::id`](crate::pure::sharing::published::ConfigKeys::id)).
    pub fn set_writer(&mut self, writer: u64) {
        self.writer = writer;
    }

    /// The target that answers the question of `settings` on `server`, added
    /// (due `next_answer_due_ms` after each answer) unless another guard asks it
    /// already; whether it was added now. `guard` is recorded as one of its
    /// guards, and its `maxStaleMs` tightens the target's own limit.
    pub fn find_or_add(
        &mut self,
        server: ServerId,
        settings: &GuardSettings,
        guard: GuardId,
        next_answer_due_ms: u64,
        metrics: &mut dyn Metrics,
    ) -> (TargetId, bool) {
        let keys = ServiceKeys::new(&question(settings));
        let known = self
            .by_heartbeat_id
            .get(&keys.id())
            .copied()
            .filter(|id| self.table.get(*id).is_some_and(|t| t.server == server));
        let (id, added) = match known {
            Some(id) => (id, false),
            None => {
                let id = self.table.push(Target {
                    server,
                    service: settings.service.clone(),
                    query_clusters: settings.filter.clusters.clone(),
                    list: OnceCell::new(),
                    keys,
                    snapshot: Snapshot::default(),
                    last_good: None,
                    failure_streak: 0,
                    refused_with: None,
                    stale_reported: false,
                    in_heartbeat: false,
                    limits: StaleLimits {
                        next_answer_due_ms,
                        max_stale_ms: settings.max_stale_ms,
                    },
                    metrics: PollMetrics::define(metrics, &settings.service),
                    empty_unconfirmed: false,
                    inherited: false,
                    unpublished: false,
                    digest: None,
                });
                if let Some(target) = self.table.get(id) {
                    self.by_heartbeat_id.insert(target.keys.id(), id);
                }
                push_at(&mut self.by_server, server.index(), id);
                (id, true)
            }
        };
        push_at(&mut self.guards, id.index(), guard);
        if let Some(target) = self.table.get_mut(id) {
            target.limits.max_stale_ms = target.limits.max_stale_ms.min(settings.max_stale_ms);
        }
        (id, added)
    }

    /// When the next answer of `id` is due at the latest after a good one.
    pub fn set_next_answer_due(&mut self, id: TargetId, next_answer_due_ms: u64) {
        if let Some(target) = self.table.get_mut(id) {
            target.limits.next_answer_due_ms = next_answer_due_ms;
        }
    }

    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.table.get(id)
    }

    pub fn by_heartbeat_id(&self, id: u64) -> Option<TargetId> {
        self.by_heartbeat_id.get(&id).copied()
    }

    pub fn of_server(&self, server: ServerId) -> &[TargetId] {
        self.by_server
            .get(server.index())
            .map_or(&[], Vec::as_slice)
    }

    pub fn guards_of(&self, id: TargetId) -> &[GuardId] {
        self.guards.get(id.index()).map_or(&[], Vec::as_slice)
    }

    pub fn ids(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.table.iter().map(|(id, _)| id)
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Each target's heartbeat number and snapshot health, for the heartbeat.
    pub fn health(&self) -> impl Iterator<Item = (u64, Health)> + Clone + '_ {
        self.table
            .values()
            .map(|t| (t.heartbeat_id(), t.snapshot.health()))
    }

    /// Take an HTTP answer for `id` to the poll sent at `polled_at_ms`,
    /// published to `store` when the VMs share; whether the content changed. An
    /// answer byte for byte the last good one (`AnswerDigest::matches`) confirms
    /// the snapshot without being parsed. A bad answer changes nothing here: the
    /// caller records the failure (`failed`).
    pub fn take_answer(
        &mut self,
        id: TargetId,
        api: ApiVersion,
        answer: Option<(u16, &[u8])>,
        polled_at_ms: u64,
        metrics: &mut dyn Metrics,
        publish: Option<&mut dyn SharedStore>,
    ) -> Result<bool, AnswerError> {
        let Some(target) = self.table.get_mut(id) else {
            return Err(AnswerError::NoAnswer);
        };
        // Oversized answers are refused by the parser, whatever they look like.
        let good_body = match answer {
            Some((200, body)) if body.len() <= response::MAX_ANSWER_BYTES => Some(body),
            _ => None,
        };
        let unchanged = good_body
            .is_some_and(|body| target.last_good.as_ref().is_some_and(|l| l.matches(body)));
        let set = if unchanged {
            None
        } else {
            let set = match answer {
                Some((status, body)) => response::parse_instance_list(api, status, body)?,
                None => return Err(AnswerError::NoAnswer),
            };
            if target.awaits_confirmation(&set, polled_at_ms) {
                bump(metrics, target.metrics.success);
                info!(
                    "nacos-instance-guard: Nacos answered no instance of service {}, which \
                     listed some: asking again before taking it",
                    target.service.name
                );
                return Ok(false);
            }
            target.last_good = good_body.map(AnswerDigest::of);
            Some(set)
        };
        bump(metrics, target.metrics.success);
        let changed = target.take(set, polled_at_ms, self.writer, publish);
        self.note_unpublished(id);
        Ok(changed)
    }

    /// Whether `id` holds back an empty answer until a poll confirms it.
    pub fn awaits_confirmation(&self, id: TargetId) -> bool {
        self.table
            .get(id)
            .is_some_and(|target| target.empty_unconfirmed)
    }

    /// A good list for `id` telling the state as of `stamp_ms` (`None`: the same
    /// as the last good one), published to `store` when the VMs share; whether
    /// the content changed.
    pub fn take_list(
        &mut self,
        id: TargetId,
        set: Option<InstanceSet>,
        stamp_ms: u64,
        publish: Option<&mut dyn SharedStore>,
    ) -> bool {
        let writer = self.writer;
        let changed = self
            .table
            .get_mut(id)
            .is_some_and(|target| target.take(set, stamp_ms, writer, publish));
        self.note_unpublished(id);
        changed
    }

    /// As the poller, on its tick: write again the content whose write lost
    /// every compare-and-swap on its answer, so that a root context starting
    /// meanwhile finds the list its confirmation names.
    pub fn write_unpublished(&mut self, store: &mut dyn SharedStore) {
        let writer = self.writer;
        let table = &mut self.table;
        self.unpublished.retain(|id| {
            let Some(target) = table.get_mut(*id) else {
                return false;
            };
            let Some(set) = target.snapshot.instances() else {
                return false;
            };
            let stamp = target.snapshot.content_stamp();
            let stored = sharing::publish_content(&target.keys, writer, stamp, set, store);
            target.unpublished = !stored;
            !stored
        });
    }

    /// After `id` took a list: note it if its content's write lost.
    fn note_unpublished(&mut self, id: TargetId) {
        let unpublished = self.table.get(id).is_some_and(|t| t.unpublished);
        if unpublished && !self.unpublished.contains(&id) {
            self.unpublished.push(id);
        }
    }

    /// A list the server pushed: taken as a polled one, but no HTTP answer
    /// matches it any more.
    pub fn take_pushed(
        &mut self,
        id: TargetId,
        set: InstanceSet,
        stamp_ms: u64,
        publish: Option<&mut dyn SharedStore>,
    ) -> bool {
        if let Some(target) = self.table.get_mut(id) {
            target.last_good = None;
        }
        self.take_list(id, Some(set), stamp_ms, publish)
    }

    /// The live push link stands for an answer to the poll due at `now_ms`.
    pub fn confirm_by_push(
        &mut self,
        id: TargetId,
        now_ms: u64,
        publish: Option<&mut dyn SharedStore>,
    ) {
        let Some(target) = self.table.get_mut(id) else {
            return;
        };
        target.snapshot.accept_same(now_ms);
        if let Some(store) = publish {
            if let Some(digest) = target.list_digest() {
                sharing::publish_confirmed(&target.keys, digest, now_ms, self.writer, store);
            }
        }
    }

    /// The poll of `id` sent at `polled_at_ms` through `cluster` failed: keep
    /// the last good snapshot, count, and warn once per streak.
    pub fn failed(
        &mut self,
        id: TargetId,
        polled_at_ms: u64,
        cluster: &str,
        reason: &str,
        metrics: &mut dyn Metrics,
    ) {
        let Some(target) = self.table.get_mut(id) else {
            return;
        };
        target.snapshot.failed(polled_at_ms);
        // Only the very next answer confirms an empty one; the next regular
        // poll asks again.
        target.empty_unconfirmed = false;
        target.failure_streak = target.failure_streak.saturating_add(1);
        bump(metrics, target.metrics.failure);
        if target.failure_streak == 1 {
            warn!(
                "nacos-instance-guard: polling service {} through {cluster} failed: {reason}; \
                 keeping the last good snapshot",
                target.service.name
            );
        }
    }

    /// A poll of `id` with token `generation` got a 403; whether one with an
    /// older token was refused before (so a fresh token is refused too).
    pub fn note_refusal(&mut self, id: TargetId, generation: u64) -> bool {
        let Some(target) = self.table.get_mut(id) else {
            return false;
        };
        let again = target
            .refused_with
            .is_some_and(|before| before < generation);
        target.refused_with = Some(generation);
        again
    }

    /// Warn once when a target turns stale, so operators know the policy applies.
    pub fn report_staleness(&mut self, now_ms: u64) {
        for target in self.table.iter_mut().map(|(_, t)| t) {
            let stale = target.freshness(now_ms) == Freshness::Stale;
            if stale && !target.stale_reported {
                warn!(
                    "nacos-instance-guard: Nacos has given no good answer for service {} for more \
                     than {} ms; the onStale policy now applies",
                    target.service.name, target.limits.max_stale_ms
                );
            }
            target.stale_reported = stale;
        }
    }

    /// Take the poller's word on `id`: its health if it names our content, else
    /// the content it names if Nacos's word on it is newer than on ours (then
    /// ours, another configuration's short-lived list or a former poller's late
    /// answer, is outdated), with that word alone: a confirmation is of the
    /// list it names, never carried to another. While the named content cannot
    /// be read here (a new poller announces another configuration's list, which
    /// that configuration wrote over since, keeping nothing for this one), ours
    /// is not confirmed by it and goes stale in time. A heartbeat no poller
    /// writes any more (left by an identical configuration before an edit)
    /// confirms nothing that recent. Whether the content changed.
    pub fn follow_heartbeat(
        &mut self,
        id: TargetId,
        health: Health,
        store: &dyn SharedStore,
    ) -> bool {
        let writer = self.writer;
        let Some(target) = self.table.get_mut(id) else {
            return false;
        };
        target.in_heartbeat = true;
        let ours = target.snapshot.health();
        if health.content_stamp == ours.content_stamp {
            target.snapshot.adopt_health(health);
            return false;
        }
        let announced = health.content_stamp;
        let Some(stored) = sharing::read_announced(&target.keys, writer, announced, store) else {
            return false;
        };
        // The heartbeat's health is the announced list's alone; content the
        // poller published since is vouched for by its own poll.
        let word = if stored.stamp == announced {
            health
        } else {
            Health::polled_at(stored.stamp)
        };
        // Nacos's newest word wins: a list confirmed after the poller's was
        // (another configuration's, taken at a start) is kept until the poller
        // confirms its own later.
        let newer =
            (word.confirmed_at_ms, word.content_stamp) > (ours.confirmed_at_ms, ours.content_stamp);
        if !newer || stored.stamp == ours.content_stamp {
            return false;
        }
        target.follow_stored(stored, word, writer);
        true
    }

    /// As a new poller: take the content this configuration stored after what
    /// this VM holds, if Nacos's word on it is newer (a poller that went
    /// between storing an answer and announcing it on its tick, seed 4335),
    /// confirmed by its own poll. The targets whose content changed.
    pub fn take_unannounced(&mut self, store: &dyn SharedStore) -> Vec<TargetId> {
        let writer = self.writer;
        let mut changed = Vec::new();
        for (id, target) in self.table.iter_mut() {
            let ours = target.snapshot.health();
            let newer = |stamp: u64| (stamp, stamp) > (ours.confirmed_at_ms, ours.content_stamp);
            let Some(stored) = sharing::read_own_content_if(&target.keys, writer, newer, store)
            else {
                continue;
            };
            let word = Health::polled_at(stored.stamp);
            target.follow_stored(stored, word, writer);
            changed.push(id);
        }
        changed
    }

    /// Start `id` from stored content and its confirmation: a new root context
    /// serves at once. The content last confirmed, if this configuration or
    /// the one that stored it confirmed it; else the newest stored, whichever
    /// configuration wrote it, as of its own poll. Whether it took any.
    pub fn start_from_stored(&mut self, id: TargetId, store: &dyn SharedStore) -> bool {
        let Some(target) = self.table.get_mut(id) else {
            return false;
        };
        let Some((stored, confirmed_at_ms)) = sharing::read_start(&target.keys, self.writer, store)
        else {
            return false;
        };
        let (inherited, stamp) = (stored.writer != self.writer, stored.stamp);
        if !target.snapshot.adopt_content(stored.set, stamp) {
            return false;
        }
        target.inherited = inherited;
        target.last_good = None;
        if let Some(confirmed_at_ms) = confirmed_at_ms {
            let mut health = target.snapshot.health();
            health.confirmed_at_ms = confirmed_at_ms.max(stamp);
            health.failing_since_ms = None;
            target.snapshot.adopt_health(health);
        }
        true
    }
}

fn push_at<T>(lists: &mut Vec<Vec<T>>, index: usize, item: T) {
    if let Some(list) = slot_at(lists, index) {
        list.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{guard_settings, FakeMetrics, FakeStore};
    use crate::testing::test;

    const TWO: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1},
        {"ip":"10.0.0.2","port":80,"weight":1}]}"#;
    const NONE: &[u8] = br#"{"hosts":[]}"#;

    fn settings(service: &str, extra: &str) -> GuardSettings {
        guard_settings(&format!(
            r#"{{"nacos": {{"cluster": "nacos"}}, "service": {{"name": "{service}"{extra}}}}}"#
        ))
    }

    fn guard(index: usize) -> GuardId {
        GuardId::from_index(index)
    }

    fn one(service: &str) -> (Targets, TargetId, FakeMetrics) {
        let mut metrics = FakeMetrics::default();
        let mut targets = Targets::default();
        let server = ServerId::from_index(0);
        let (id, _) = targets.find_or_add(
            server,
            &settings(service, ""),
            guard(0),
            2_000,
            &mut metrics,
        );
        (targets, id, metrics)
    }

    #[test]
    fn guards_asking_one_question_share_its_target_and_the_strictest_limit() {
        let mut metrics = FakeMetrics::default();
        let mut targets = Targets::default();
        let server = ServerId::from_index(0);
        let lax = guard_settings(
            r#"{"nacos": {"cluster": "nacos"}, "service": {"name": "demo"}, "maxStaleMs": 9000}"#,
        );
        let strict = guard_settings(
            r#"{"nacos": {"cluster": "nacos"}, "service": {"name": "demo"}, "maxStaleMs": 3000}"#,
        );
        let blue = settings("demo", r#", "clusters": ["blue"]"#);
        let (a, added_a) = targets.find_or_add(server, &lax, guard(0), 1_000, &mut metrics);
        let (b, added_b) = targets.find_or_add(server, &strict, guard(1), 1_000, &mut metrics);
        let (c, added_c) = targets.find_or_add(server, &blue, guard(2), 1_000, &mut metrics);
        assert_eq!((added_a, added_b, added_c), (true, false, true));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(targets.guards_of(a), &[guard(0), guard(1)]);
        assert_eq!(targets.guards_of(c), &[guard(2)]);
        assert_eq!(targets.of_server(server), &[a, c]);

        targets.take_list(a, Some(InstanceSet::default()), 0, None);
        targets.failed(a, 100, "nacos", "timeout", &mut metrics);
        // Stale 3,000 ms after the first failure for the target's own warning,
        // 9,000 ms for the lax guard.
        let target = targets.get(a).unwrap();
        assert_eq!(target.freshness(3_101), Freshness::Stale);
        assert_eq!(target.freshness_for(3_101, 9_000), Freshness::Fresh);
        assert_eq!(target.freshness_for(9_101, 9_000), Freshness::Stale);
    }

    #[test]
    fn an_empty_list_is_taken_as_the_truth_once_the_next_answer_confirms_it() {
        let (mut targets, id, mut metrics) = one("demo");
        let mut take = |targets: &mut Targets, body, at| {
            targets.take_answer(
                id,
                ApiVersion::V1,
                Some((200, body)),
                at,
                &mut metrics,
                None,
            )
        };
        let listed = |targets: &Targets| {
            let snapshot = targets.get(id).unwrap().snapshot();
            snapshot.instances().unwrap().instances.len()
        };
        assert_eq!(take(&mut targets, TWO, 0), Ok(true));
        assert_eq!(take(&mut targets, NONE, 10), Ok(false), "held back");
        assert!(targets.awaits_confirmation(id));
        assert_eq!(listed(&targets), 2);
        assert_eq!(take(&mut targets, NONE, 20), Ok(true));
        assert!(!targets.awaits_confirmation(id));
        assert_eq!(listed(&targets), 0);
    }

    /// Found by the simulator (seed 1421, push): a poll sent before a push that
    /// listed an instance answered empty after it. The snapshot drops so old an
    /// answer, yet it was held for a confirming poll sent at once.
    #[test]
    fn an_empty_answer_older_than_a_pushed_list_asks_for_no_confirmation() {
        let (mut targets, id, mut metrics) = one("demo");
        let pushed = response::parse_instance_list(ApiVersion::V1, 200, TWO).unwrap();
        assert!(targets.take_pushed(id, pushed, 15, None));
        let answer = targets.take_answer(
            id,
            ApiVersion::V1,
            Some((200, NONE)),
            10,
            &mut metrics,
            None,
        );
        assert_eq!(answer, Ok(false));
        assert!(!targets.awaits_confirmation(id));
        let listed = targets.get(id).unwrap().snapshot().instances().unwrap();
        assert_eq!(listed.instances.len(), 2);
    }

    #[test]
    fn the_same_answer_again_confirms_until_a_push_changes_the_content() {
        let (mut targets, id, mut metrics) = one("demo");
        let mut take = |targets: &mut Targets, at| {
            targets.take_answer(id, ApiVersion::V1, Some((200, TWO)), at, &mut metrics, None)
        };
        assert_eq!(take(&mut targets, 0), Ok(true));
        assert_eq!(take(&mut targets, 10), Ok(false));
        assert_eq!(
            targets.get(id).unwrap().snapshot().health().confirmed_at_ms,
            10
        );
        // A pushed list forgets the answer: the same bytes are news again.
        assert!(targets.take_pushed(id, InstanceSet::default(), 15, None));
        assert_eq!(take(&mut targets, 20), Ok(true));
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
            3
        );
    }

    #[test]
    fn a_bad_answer_keeps_the_last_good_snapshot_and_counts() {
        let (mut targets, id, mut metrics) = one("demo");
        targets
            .take_answer(id, ApiVersion::V1, Some((200, TWO)), 0, &mut metrics, None)
            .unwrap();
        for answer in [Some((500, &b"boom"[..])), Some((200, &b"{"[..])), None] {
            let read = targets.take_answer(id, ApiVersion::V1, answer, 10, &mut metrics, None);
            let error = read.unwrap_err();
            targets.failed(id, 10, "nacos", &error.to_string(), &mut metrics);
        }
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
            3
        );
        assert_eq!(
            metrics.get("nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"),
            1
        );
        let snapshot = targets.get(id).unwrap().snapshot();
        assert_eq!(snapshot.instances().unwrap().instances.len(), 2);
        assert!(snapshot.is_failing());
    }

    #[test]
    fn a_refusal_is_again_only_after_one_with_an_older_token() {
        let (mut targets, id, _) = one("demo");
        assert!(!targets.note_refusal(id, 1));
        assert!(!targets.note_refusal(id, 1));
        assert!(targets.note_refusal(id, 2));
        targets.take_list(id, None, 0, None);
        assert!(
            !targets.note_refusal(id, 3),
            "a good answer ends the episode"
        );
    }

    /// Seed 3610: the poller's write of a changed list lost every
    /// compare-and-swap (workers loading at once); its confirmation, naming the
    /// new list, went in. A root context that started then found the stored
    /// list unconfirmed, and rejected requests as stale though Nacos answered.
    /// The poller writes such content again on its next tick.
    #[test]
    fn content_whose_write_lost_every_race_is_written_again_on_the_next_tick() {
        const ONE: &[u8] = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"weight":1}]}"#;
        let (mut poller, id, mut metrics) = one("demo");
        let mut store = FakeStore::default();
        let mut take = |poller: &mut Targets, store: &mut FakeStore, body, at| {
            let answer = Some((200, body));
            let publish: Option<&mut dyn SharedStore> = Some(store);
            poller.take_answer(id, ApiVersion::V1, answer, at, &mut metrics, publish)
        };
        assert_eq!(take(&mut poller, &mut store, TWO, 40), Ok(true));
        store.contend = Some(("service.", 8));
        assert_eq!(take(&mut poller, &mut store, ONE, 60), Ok(true));
        let started = |store: &FakeStore| {
            let (mut fresh, same, _) = one("demo");
            assert!(fresh.start_from_stored(same, store));
            let snapshot = fresh.get(same).unwrap().snapshot();
            let listed = snapshot.instances().unwrap().instances.len();
            (listed, snapshot.health().confirmed_at_ms)
        };
        assert_eq!(
            started(&store),
            (2, 40),
            "the old list, not confirmed since"
        );

        store.contend = Some(("service.", 8));
        poller.write_unpublished(&mut store);
        assert_eq!(
            started(&store),
            (2, 40),
            "lost again: tried on the next tick"
        );
        poller.write_unpublished(&mut store);
        assert_eq!(started(&store), (1, 60));
        let writes = store.writes;
        assert_eq!(take(&mut poller, &mut store, ONE, 80), Ok(false));
        assert_eq!(store.writes, writes + 1, "the confirmation alone");
    }

    #[test]
    fn what_the_poller_publishes_another_vm_adopts() {
        let (mut poller, id, mut metrics) = one("demo");
        let (mut follower, same, _) = one("demo");
        let mut store = FakeStore::default();
        poller
            .take_answer(
                id,
                ApiVersion::V1,
                Some((200, TWO)),
                40,
                &mut metrics,
                Some(&mut store),
            )
            .unwrap();
        let health = poller.get(id).unwrap().snapshot().health();

        let mut announced_later = health;
        announced_later.content_stamp = 41;
        assert!(
            !follower.follow_heartbeat(same, announced_later, &store),
            "older than the heartbeat"
        );
        let before = follower.get(same).unwrap().snapshot().health();
        assert_eq!(
            before,
            Health::default(),
            "nothing taken, nothing confirmed"
        );
        assert!(follower.follow_heartbeat(same, health, &store));
        assert!(
            !follower.follow_heartbeat(same, health, &store),
            "already taken"
        );
        let set = follower.get(same).unwrap().snapshot().instances().unwrap();
        assert_eq!(set.instances.len(), 2);
    }
}
