//! One poller per gateway: the lease that elects it, and what it publishes for the
//! other VMs in shared data. This part knows shared data and the published
//! formats, not the engine: it answers "poll or follow", "is this still mine to
//! publish", and hands back what others published; the engine applies it.

use std::cell::Cell;
use std::collections::HashSet;
use std::ops::Range;

use log::info;

use super::host_traits::SharedStore;
use crate::pure::hashing::{mix_word, WORD_HASH_START};
use crate::pure::registry::instance::InstanceSet;
use crate::pure::registry::snapshot::Health;
use crate::pure::sharing::lease::{self, Lease, LeaseStep};
use crate::pure::sharing::published::{
    self, ConfigKeys, Inbox, PublishedToken, ServiceKeys, StoredContent,
};

/// Compare-and-swap attempts at adding a learned service, or at storing a
/// service's content.
const ANNOUNCE_ATTEMPTS: usize = 8;

/// The lease lives this many of the shortest refresh intervals.
pub const LEASE_INTERVALS: u64 = 3;

/// What became of adding a service to the learned list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    Listed,
    /// The list holds `maxServices` already.
    Full,
    /// Other VMs wrote the list every time: try again later.
    Contended,
}

/// What became of handing a learned service to the poller through the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Under this number: the poller's next tick lists it.
    At(u64),
    /// The list and the inbox hold `maxServices` (the list may hold this one).
    Full,
    /// Other VMs wrote the inbox every time, or it is full: list it on a tick.
    Contended,
}

/// How long the poller waits for a host handed in under a number it found
/// taken but not yet written (its VM between its two writes) before it goes
/// on without it: the VM that handed it in looks for it once a second, and
/// lists it itself once the poller went past it.
const HANDED_WAIT_MS: u64 = 1_000;

/// What this VM does on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Poll Nacos. `took_over`: this VM just became the poller, and starts from
    /// what the last one published.
    Poll { took_over: bool },
    /// Adopt what the poller published.
    Follow,
}

pub struct Sharing {
    keys: ConfigKeys,
    vm_id: u64,
    lease_ttl_ms: u64,
    leading: bool,
    /// When the lease this VM last took or renewed runs out.
    lease_expires_ms: u64,
    /// When the lease another VM holds runs out, as this VM last read it: no VM
    /// can take it before, so a follower need not read it again until then.
    followed_until_ms: u64,
    /// The compare-and-swap token of the last heartbeat read, so an unchanged one
    /// is not decoded again.
    heartbeat_seen: Option<u32>,
    heartbeat_written: Vec<u8>,
    /// What must reach the followers at once (content and failures), as last written.
    urgent_written: Option<u64>,
    /// When the heartbeat was last written.
    heartbeat_at_ms: u64,
    /// Confirmations alone are rewritten at most this often.
    heartbeat_period_ms: u64,
    learned_seen: Option<u32>,
    /// How many services the learned list held when this VM last read or
    /// wrote it.
    listed_len: Cell<Option<usize>>,
    /// The inbox number the poller waits for, and since when.
    handed_wait: Option<(u64, u64)>,
}

impl Sharing {
    /// `vm_id` must differ between the VMs of one Envoy (the host draws it at
    /// random) and must not be 0, which marks a lease nobody holds.
    /// The heartbeat is rewritten when a service's content or failure moves, and
    /// for confirmations alone every `heartbeat_period_ms`.
    pub fn new(keys: ConfigKeys, vm_id: u64, lease_ttl_ms: u64, heartbeat_period_ms: u64) -> Self {
        Self {
            keys,
            vm_id: vm_id.max(1),
            lease_ttl_ms,
            leading: false,
            lease_expires_ms: 0,
            followed_until_ms: 0,
            heartbeat_seen: None,
            heartbeat_written: Vec::new(),
            urgent_written: None,
            heartbeat_at_ms: 0,
            heartbeat_period_ms,
            learned_seen: None,
            listed_len: Cell::new(None),
            handed_wait: None,
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// Take, keep or follow the lease at `now_ms`.
    pub fn coordinate(&mut self, now_ms: u64, store: &mut dyn SharedStore) -> Role {
        // A follower ticks 20 times an interval, and the holder renews on each of
        // its own ticks: reading the lease only once the one last read runs out
        // spares every follower a host call per tick, and delays no takeover.
        if !self.leading && now_ms < self.followed_until_ms {
            return Role::Follow;
        }
        let key = self.keys.lease();
        let (value, cas) = store.get(key);
        let leading = match value {
            // Envoy writes an absent key whatever compare-and-swap token comes
            // with the write, so two VMs that both found no lease would both win
            // it. Seed a lease nobody holds; taking it is then a real CAS.
            None => {
                store.set(key, Lease::vacant().encode().as_bytes(), None);
                false
            }
            Some(bytes) => {
                let stored = Lease::decode(&bytes);
                match lease::step(stored.as_ref(), self.vm_id, now_ms, self.lease_ttl_ms) {
                    LeaseStep::Follow => {
                        // At most a lifetime ahead, so a lease from a clock far
                        // ahead of this one is still found void in time.
                        self.followed_until_ms = stored.map_or(0, |lease| {
                            lease
                                .expires_at_ms
                                .min(now_ms.saturating_add(self.lease_ttl_ms))
                        });
                        false
                    }
                    LeaseStep::Renew | LeaseStep::TakeOver => {
                        let lease = Lease::granted(self.vm_id, now_ms, self.lease_ttl_ms);
                        let won = cas.is_some() && store.set(key, lease.encode().as_bytes(), cas);
                        if won {
                            self.lease_expires_ms = lease.expires_at_ms;
                        }
                        won
                    }
                }
            }
        };
        let was_leading = std::mem::replace(&mut self.leading, leading);
        if leading && !was_leading {
            info!(
                "nacos-instance-guard: VM {:016x} now polls Nacos for this gateway",
                self.vm_id
            );
        }
        match (leading, was_leading) {
            (true, was) => Role::Poll { took_over: !was },
            (false, _) => {
                self.heartbeat_written.clear();
                Role::Follow
            }
        }
    }

    /// Whether this VM still holds the lease at `now_ms`: a poller that lost it
    /// while its call was out must not publish the late answer. No VM takes a
    /// lease before it runs out, and the VMs' clocks agree within a tick; so while
    /// more than an interval is left of the lease this VM last renewed, it is
    /// still its own without reading it (an answer would otherwise read it, a
    /// host call, a thousand times a second at 1,000 services). Nearer its end,
    /// or after this VM stood still, it is read afresh.
    pub fn still_leading(&self, now_ms: u64, store: &dyn SharedStore) -> bool {
        if !self.leading {
            return false;
        }
        let margin_ms = self.lease_ttl_ms / LEASE_INTERVALS;
        if now_ms.saturating_add(margin_ms) < self.lease_expires_ms {
            return true;
        }
        store
            .get(self.keys.lease())
            .0
            .as_deref()
            .and_then(Lease::decode)
            .is_some_and(|lease| lease.holder == self.vm_id)
    }

    /// Each service's health as the poller last published it; `None` when the
    /// heartbeat has not changed since the last call.
    pub fn read_heartbeat(&mut self, store: &dyn SharedStore) -> Option<Vec<(u64, Health)>> {
        let (bytes, cas) = store.get(self.keys.heartbeat());
        if cas.is_some() && cas == self.heartbeat_seen {
            return None;
        }
        self.heartbeat_seen = cas;
        Some(published::decode_heartbeat(&bytes?).collect())
    }

    /// Publish each service's health at `now_ms` if it changed since the last
    /// write: at once when a content stamp or a failure moved, else (only
    /// confirmations moved) once the period is over. At 1,000 services, encoding
    /// and decoding every tick cost more than the polls; the followers' stale
    /// limits allow for the period (`Polling::next_answer_due_ms`).
    pub fn write_heartbeat(
        &mut self,
        now_ms: u64,
        health: impl Iterator<Item = (u64, Health)> + Clone,
        store: &mut dyn SharedStore,
    ) {
        let urgent = health.clone().fold(WORD_HASH_START, |hash, (id, h)| {
            [id, h.content_stamp, h.failing_since_ms.unwrap_or(0)]
                .into_iter()
                .fold(hash, mix_word)
        });
        let period_over = now_ms
            >= self
                .heartbeat_at_ms
                .saturating_add(self.heartbeat_period_ms);
        if self.urgent_written == Some(urgent) && !period_over {
            return;
        }
        let bytes = published::encode_heartbeat(health);
        if bytes == self.heartbeat_written || store.set(self.keys.heartbeat(), &bytes, None) {
            self.heartbeat_written = bytes;
            self.urgent_written = Some(urgent);
            self.heartbeat_at_ms = now_ms;
        }
    }

    /// The learned clusters, if the list changed since the last call.
    pub fn read_learned(&mut self, store: &dyn SharedStore) -> Option<Vec<String>> {
        let (bytes, cas) = store.get(&self.keys.learned());
        if cas.is_some() && cas == self.learned_seen {
            return None;
        }
        self.learned_seen = cas;
        let listed = published::decode_learned(&bytes.unwrap_or_default());
        self.listed_len.set(Some(listed.len()));
        Some(listed)
    }

    fn read_inbox(&self, store: &dyn SharedStore) -> (Inbox, Option<u32>) {
        let (bytes, cas) = store.get(&self.keys.inbox());
        let inbox = bytes.as_deref().and_then(Inbox::decode).unwrap_or_default();
        (inbox, cas)
    }

    /// Hand `host` to the poller, which lists it on its next tick: one
    /// compare-and-swap of the inbox's few bytes and one write of the host,
    /// whatever the list holds. Refused once the list and what waits in the
    /// inbox hold `max`.
    pub fn hand_in(&self, host: &str, max: usize, store: &mut dyn SharedStore) -> Handed {
        let places = published::inbox_places(max);
        let key = self.keys.inbox();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (inbox, cas) = self.read_inbox(store);
            // Seeded first, as the list is: an absent key is written whatever
            // the compare-and-swap token. A seed landing over another VM's
            // number gives that number twice (below).
            if cas.is_none() {
                store.set(&key, &Inbox::default().encode(), None);
                continue;
            }
            // Another VM may have handed it in already: the few places that
            // wait say so.
            let waiting = self.waiting_hosts(&inbox, places, store);
            if let Some((number, _)) = waiting.iter().find(|(_, h)| h == host) {
                return Handed::At(*number);
            }
            let max = u64::try_from(max).unwrap_or(u64::MAX);
            if inbox.listed.saturating_add(inbox.waiting()) >= max {
                return Handed::Full;
            }
            if inbox.waiting() >= places {
                return Handed::Contended;
            }
            let number = inbox.handed;
            let next = Inbox {
                handed: number.saturating_add(1),
                ..inbox
            };
            if store.set(&key, &next.encode(), cas) {
                // Two VMs that both seeded the inbox may both hold this number:
                // the second leaves the first's host in place, and lists its
                // own on its next tick.
                if self.handed_at(number, places, store).is_some() {
                    return Handed::Contended;
                }
                let place = self.keys.handed(number, places);
                store.set(&place, &published::encode_handed(number, host), None);
                return Handed::At(number);
            }
        }
        Handed::Contended
    }

    /// The host handed in under `number`, if its place holds it still.
    fn handed_at(&self, number: u64, places: u64, store: &dyn SharedStore) -> Option<String> {
        store
            .get(&self.keys.handed(number, places))
            .0
            .as_deref()
            .and_then(published::decode_handed)
            .filter(|(handed, _)| *handed == number)
            .map(|(_, host)| host)
    }

    /// The hosts waiting in the inbox (written, not yet taken), by number.
    fn waiting_hosts(
        &self,
        inbox: &Inbox,
        places: u64,
        store: &dyn SharedStore,
    ) -> Vec<(u64, String)> {
        let from = inbox.taken.max(inbox.handed.saturating_sub(places));
        (from..inbox.handed)
            .filter_map(|number| Some((number, self.handed_at(number, places, store)?)))
            .collect()
    }

    /// The inbox numbers handed in that the poller has not taken yet. A
    /// number past them was handed and then lost: a seed of the inbox by a VM
    /// that read it absent landed over it.
    pub fn inbox_waiting(&self, store: &dyn SharedStore) -> Range<u64> {
        let inbox = self.read_inbox(store).0;
        inbox.taken..inbox.handed
    }

    /// As the poller: take what was handed in into the list (while it holds
    /// fewer than `max` with what still waits), one read per host and one
    /// write of the list. A number taken but not yet written is waited for
    /// on the next ticks, for a second at most. The numbers still waiting.
    pub fn take_inbox(
        &mut self,
        now_ms: u64,
        max: usize,
        store: &mut dyn SharedStore,
    ) -> Range<u64> {
        let places = published::inbox_places(max);
        let (inbox, _) = self.read_inbox(store);
        // More than `places` behind, a place was written over: those are gone.
        let mut taken = inbox.taken.max(inbox.handed.saturating_sub(places));
        let mut hosts = Vec::new();
        while taken < inbox.handed {
            match (self.handed_at(taken, places, store), self.handed_wait) {
                (Some(host), _) => hosts.push(host),
                (None, Some((number, since))) if number == taken => {
                    if now_ms < since.saturating_add(HANDED_WAIT_MS) {
                        break;
                    }
                }
                (None, _) => {
                    self.handed_wait = Some((taken, now_ms));
                    break;
                }
            }
            taken += 1;
        }
        if taken == inbox.taken {
            return taken..inbox.handed;
        }
        let waiting = usize::try_from(inbox.handed - taken).unwrap_or(usize::MAX);
        let room = max.saturating_sub(waiting);
        let key = self.keys.learned();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (bytes, cas) = store.get(&key);
            if cas.is_none() {
                store.set(&key, b"", None);
                continue;
            }
            let appended = published::append_learned(&bytes.unwrap_or_default(), &hosts, room);
            if let Some(bytes) = appended.bytes {
                if !store.set(&key, &bytes, cas) {
                    continue;
                }
            }
            self.listed_len.set(Some(appended.count));
            self.settle_inbox(Some(taken), store);
            return taken..inbox.handed;
        }
        inbox.taken..inbox.handed
    }

    /// As the poller: say in the inbox how many services the list holds (as
    /// this VM last read or wrote it) and, with `taken`, how far the inbox was
    /// taken into the list.
    pub fn settle_inbox(&self, taken: Option<u64>, store: &mut dyn SharedStore) {
        let Some(listed) = self.listed_len.get() else {
            return;
        };
        let listed = u64::try_from(listed).unwrap_or(u64::MAX);
        let key = self.keys.inbox();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (inbox, cas) = self.read_inbox(store);
            let next = Inbox {
                taken: inbox.taken.max(taken.unwrap_or(0)).min(inbox.handed),
                listed,
                ..inbox
            };
            if cas.is_none() || next == inbox || store.set(&key, &next.encode(), cas) {
                return;
            }
        }
    }

    /// After another VM than the poller added to the list: the inbox counts
    /// at least what the list holds.
    fn raise_listed(&self, count: usize, store: &mut dyn SharedStore) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        let key = self.keys.inbox();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (inbox, cas) = self.read_inbox(store);
            if cas.is_none() || inbox.listed >= count {
                return;
            }
            let next = Inbox {
                listed: count,
                ..inbox
            };
            if store.set(&key, &next.encode(), cas) {
                return;
            }
        }
    }

    /// Add `hosts` to the learned list while it holds fewer than `max`, in one
    /// write however many they are: what became of each, in their order.
    pub fn announce_learned(
        &self,
        hosts: &[&str],
        max: usize,
        store: &mut dyn SharedStore,
    ) -> Vec<Announced> {
        if hosts.is_empty() {
            return Vec::new();
        }
        let key = self.keys.learned();
        // What waits in the inbox has its places already: it is listed first
        // (the poller's next tick finds it listed).
        let (inbox, _) = self.read_inbox(store);
        let places = published::inbox_places(max);
        let waiting = self.waiting_hosts(&inbox, places, store);
        let asked: Vec<&str> = waiting
            .iter()
            .map(|(_, host)| host.as_str())
            .chain(hosts.iter().copied())
            .collect();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (bytes, cas) = store.get(&key);
            let appended = published::append_learned(&bytes.unwrap_or_default(), &asked, max);
            let outcomes = appended
                .listed
                .iter()
                .skip(waiting.len())
                .map(|listed| {
                    if *listed {
                        Announced::Listed
                    } else {
                        Announced::Full
                    }
                })
                .collect();
            let Some(bytes) = appended.bytes else {
                self.listed_len.set(Some(appended.count));
                return outcomes;
            };
            // An absent key is written whatever the CAS, so the list is seeded
            // empty first and added to by compare-and-swap. A VM that read the key
            // absent just before can still land its seed over an addition: what
            // it erases is listed again by the VM that learned it (it keeps what
            // it announced until the poller's heartbeat carries the service) or
            // by the poller (it lists again what it guards).
            if cas.is_none() {
                store.set(&key, b"", None);
                continue;
            }
            if store.set(&key, &bytes, cas) {
                self.listed_len.set(Some(appended.count));
                if !self.leading {
                    self.raise_listed(appended.count, store);
                }
                return outcomes;
            }
        }
        vec![Announced::Contended; hosts.len()]
    }

    /// Take `hosts` off the learned list (they idle: their places are free), in
    /// one write however many they are.
    pub fn unlist_learned(&self, hosts: &[String], store: &mut dyn SharedStore) {
        if hosts.is_empty() {
            return;
        }
        let key = self.keys.learned();
        let leaving: HashSet<&str> = hosts.iter().map(String::as_str).collect();
        for _ in 0..ANNOUNCE_ATTEMPTS {
            let (bytes, cas) = store.get(&key);
            let mut listed = published::decode_learned(&bytes.unwrap_or_default());
            let before = listed.len();
            listed.retain(|host| !leaving.contains(host.as_str()));
            if listed.len() == before || cas.is_none() {
                return;
            }
            if store.set(&key, &published::encode_learned(&listed), cas) {
                self.listed_len.set(Some(listed.len()));
                return;
            }
        }
    }

    pub fn touch(&self, service: u64, now_ms: u64, store: &mut dyn SharedStore) {
        store.set(
            &self.keys.touched(service),
            now_ms.to_string().as_bytes(),
            None,
        );
    }

    pub fn touched_at(&self, service: u64, store: &dyn SharedStore) -> Option<u64> {
        published::decode_number(store.get(&self.keys.touched(service)).0.as_deref())
    }

    pub fn read_token(&self, server: usize, store: &dyn SharedStore) -> Option<PublishedToken> {
        store
            .get(&self.keys.token(server))
            .0
            .as_deref()
            .and_then(PublishedToken::decode)
    }

    pub fn publish_token(
        &self,
        server: usize,
        token: &PublishedToken,
        store: &mut dyn SharedStore,
    ) {
        if let Some(bytes) = token.encode() {
            store.set(&self.keys.token(server), &bytes, None);
        }
    }
}

/// Store a service's content, written by configuration `writer`, unless what is
/// stored is newer (another poller's, or another configuration's, or confirmed
/// by a poll sent after this one);
/// compare-and-swap, so two writers cannot both win. Another configuration's
/// content it replaces is first kept for that configuration's followers.
/// Whether it is stored; `false`: other writes beat it every time, and it is
/// to be written again.
pub fn publish_content(
    keys: &ServiceKeys,
    writer: u64,
    stamp: u64,
    set: &InstanceSet,
    store: &mut dyn SharedStore,
) -> bool {
    let Some(bytes) = published::encode_content(stamp, writer, set) else {
        return true;
    };
    for _ in 0..ANNOUNCE_ATTEMPTS {
        let (stored, cas) = store.get(keys.content());
        let header = stored.as_deref().and_then(published::content_header);
        if let Some((stored_stamp, other)) = header.filter(|(s, _)| *s >= stamp) {
            // Another configuration stored a newer list (its poll went later):
            // this one's followers are told of this list all the same, so it is
            // kept under this writer's key, where they look for it.
            if other != writer && stored_stamp > stamp {
                store.set(&keys.kept(writer), &bytes, None);
            }
            return true;
        }
        // The stored list, confirmed by a poll sent after this one (another
        // configuration's), is the newer word: a late answer, a flap only this
        // configuration saw, must not replace it for root contexts that start.
        if stored
            .as_deref()
            .is_some_and(|s| confirmed_after(keys, stamp, s, store))
        {
            store.set(&keys.kept(writer), &bytes, None);
            return true;
        }
        if let (Some((_, other)), Some(stored)) = (header, &stored) {
            if other != writer {
                store.set(&keys.kept(other), stored, None);
            }
        }
        if store.set(keys.content(), &bytes, cas) {
            return true;
        }
    }
    false
}

/// Whether the stored confirmation names the `stored` content and came from a
/// poll sent after `stamp`.
fn confirmed_after(keys: &ServiceKeys, stamp: u64, stored: &[u8], store: &dyn SharedStore) -> bool {
    let confirmation = published::decode_confirmation(store.get(keys.confirmed()).0.as_deref());
    confirmation.is_some_and(|confirmation| {
        confirmation.confirmed_at_ms > stamp
            && published::decode_content(stored)
                .and_then(|content| published::list_digest(&content.set))
                == Some(confirmation.digest)
    })
}

/// Content configuration `writer`'s poller confirmed though another
/// configuration stored it: once the stored content is another one (a flap
/// only that configuration saw), keep it under `writer`'s key, where its
/// followers look; whether it had to.
pub fn keep_if_written_over(
    keys: &ServiceKeys,
    writer: u64,
    stamp: u64,
    set: &InstanceSet,
    store: &mut dyn SharedStore,
) -> bool {
    let (stored, _) = store.get(keys.content());
    let header = stored.as_deref().and_then(published::content_header);
    if header.is_some_and(|(stored_stamp, _)| stored_stamp == stamp) {
        return false;
    }
    if let Some(bytes) = published::encode_content(stamp, writer, set) {
        store.set(&keys.kept(writer), &bytes, None);
    }
    true
}

/// When the poll that confirmed the list of digest `digest` went, unless a
/// poll that went later confirmed a list already: answers come in any order
/// (another configuration's poller, a slow answer), and the last to come is
/// not the newest word of Nacos.
pub fn publish_confirmed(
    keys: &ServiceKeys,
    digest: u64,
    confirmed_at_ms: u64,
    writer: u64,
    store: &mut dyn SharedStore,
) {
    let confirmation = published::encode_confirmation(digest, confirmed_at_ms, writer);
    for _ in 0..ANNOUNCE_ATTEMPTS {
        let (stored, cas) = store.get(keys.confirmed());
        let stored = published::decode_confirmation(stored.as_deref());
        if stored.is_some_and(|stored| stored.confirmed_at_ms > confirmed_at_ms) {
            return;
        }
        if store.set(keys.confirmed(), confirmation.as_bytes(), cas) {
            return;
        }
    }
}

/// A service's stored content, whichever configuration wrote it.
pub fn read_content(keys: &ServiceKeys, store: &dyn SharedStore) -> Option<StoredContent> {
    decode(store, keys.content())
}

/// The content configuration `writer`'s poller announced with stamp
/// `announced`: the stored content if it is that (the poller may hold another
/// configuration's, taken at its start), else what was kept of `writer`'s when
/// another configuration wrote over it; failing both, newer content `writer`
/// published since.
pub fn read_announced(
    keys: &ServiceKeys,
    writer: u64,
    announced: u64,
    store: &dyn SharedStore,
) -> Option<StoredContent> {
    let exact = |c: &Option<StoredContent>| c.as_ref().is_some_and(|c| c.stamp == announced);
    let stored = read_content(keys, store);
    if exact(&stored) {
        return stored;
    }
    let kept = decode(store, &keys.kept(writer)).filter(|c| c.writer == writer);
    if exact(&kept) {
        return kept;
    }
    let newer_own = |c: &StoredContent| c.writer == writer && c.stamp > announced;
    stored.filter(newer_own).or_else(|| kept.filter(newer_own))
}

/// The content `writer` stored, if its stamp is `wanted`: the header is read
/// first and the list decoded only then, since a new poller asks this of every
/// service it guards.
pub fn read_own_content_if(
    keys: &ServiceKeys,
    writer: u64,
    wanted: impl Fn(u64) -> bool,
    store: &dyn SharedStore,
) -> Option<StoredContent> {
    let bytes = store.get(keys.content()).0?;
    let (stamp, stored_by) = published::content_header(&bytes)?;
    if stored_by != writer || !wanted(stamp) {
        return None;
    }
    published::decode_content(&bytes)
}

fn decode(store: &dyn SharedStore, key: &str) -> Option<StoredContent> {
    store
        .get(key)
        .0
        .as_deref()
        .and_then(published::decode_content)
}

/// What a new root context of configuration `writer` starts from: the newest
/// stored content, with the stored confirmation if that confirms its list;
/// else the list the confirmation names, kept under the key of the
/// configuration that confirmed it, if that poll went after the newest content
/// was polled (the newest is then a list Nacos denied since: a flap that only
/// a configuration now gone saw); else `writer`'s own kept content if the
/// confirmation is of that and came after the newest was polled; else the
/// newest, confirmed by nothing later than its own poll.
pub fn read_start(
    keys: &ServiceKeys,
    writer: u64,
    store: &dyn SharedStore,
) -> Option<(StoredContent, Option<u64>)> {
    let newest = read_content(keys, store)?;
    let confirmation = published::decode_confirmation(store.get(keys.confirmed()).0.as_deref());
    let Some(confirmation) = confirmation else {
        return Some((newest, None));
    };
    let confirmed_at = Some(confirmation.confirmed_at_ms);
    let confirms =
        |content: &StoredContent| published::list_digest(&content.set) == Some(confirmation.digest);
    if confirms(&newest) {
        return Some((newest, confirmed_at));
    }
    let kept = |owner: u64| decode(store, &keys.kept(owner)).filter(confirms);
    let later = confirmation.confirmed_at_ms > newest.stamp;
    if let Some(confirmed) = confirmation.writer.filter(|_| later).and_then(kept) {
        return Some((confirmed, confirmed_at));
    }
    // Content polled after the confirmation is the newer word, whatever the
    // confirmation names (its own write may have lost every race).
    match kept(writer).filter(|_| later) {
        Some(own) => Some((own, confirmed_at)),
        None => Some((newest, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::FakeStore;
    use crate::pure::registry::instance::instance;
    use crate::testing::test;

    const TTL: u64 = 3_000;
    const PERIOD: u64 = 500;

    fn sharing(vm: u64) -> Sharing {
        Sharing::new(ConfigKeys::new(b"{}"), vm, TTL, PERIOD)
    }

    /// Envoy's store as two VMs configuring at once see it: the lease key reads
    /// absent for the first `blind` reads, whatever was written meanwhile.
    struct RacingStore<'a> {
        inner: &'a mut FakeStore,
        blind: usize,
    }

    impl SharedStore for RacingStore<'_> {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            if self.blind > 0 && key.ends_with(".lease") {
                return (None, None);
            }
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            if key.ends_with(".lease") {
                self.blind = self.blind.saturating_sub(1);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_vms_finding_no_lease_at_once_do_not_both_poll() {
        let mut inner = FakeStore::default();
        let mut store = RacingStore {
            inner: &mut inner,
            blind: 2,
        };
        let (mut a, mut b) = (sharing(1), sharing(2));
        // Both read the absent key before either writes: the interleaving that
        // gave two pollers when a write to an absent key took the lease outright.
        assert_eq!(a.coordinate(0, &mut store), Role::Follow);
        assert_eq!(b.coordinate(0, &mut store), Role::Follow);
        let roles = [a.coordinate(20, &mut store), b.coordinate(20, &mut store)];
        assert_eq!(roles, [Role::Poll { took_over: true }, Role::Follow]);
        for now in (40..10_000).step_by(20) {
            assert_eq!(
                [a.coordinate(now, &mut store), b.coordinate(now, &mut store)],
                [Role::Poll { took_over: false }, Role::Follow]
            );
        }
    }

    #[test]
    fn a_lease_taken_between_read_and_write_is_not_taken_twice() {
        // Before: a write without the compare-and-swap token let both VMs poll.
        let mut store = FakeStore::default();
        let (mut a, mut b) = (sharing(1), sharing(2));
        a.coordinate(0, &mut store);
        // b reads the vacant lease; a takes it before b writes.
        store.before_write = Some((
            "lease",
            Box::new(|store: &mut FakeStore| {
                assert!(matches!(
                    sharing(1).coordinate(10, store),
                    Role::Poll { .. }
                ));
            }),
        ));
        assert_eq!(b.coordinate(10, &mut store), Role::Follow);
        let stored = Lease::decode(&store.get(ConfigKeys::new(b"{}").lease()).0.unwrap());
        assert_eq!(stored.map(|lease| lease.holder), Some(1));
    }

    #[test]
    fn a_poller_that_lost_the_lease_knows_before_it_publishes() {
        let mut store = FakeStore::default();
        let (mut a, mut b) = (sharing(1), sharing(2));
        a.coordinate(0, &mut store);
        a.coordinate(10, &mut store);
        assert!(a.still_leading(20, &store));
        // a stalls; b takes over after the lease ran out.
        b.coordinate(5_000, &mut store);
        assert!(!a.still_leading(5_000, &store));
    }

    #[test]
    fn a_follower_reads_the_lease_again_only_when_it_runs_out() {
        let mut store = FakeStore::default();
        let (mut a, mut b) = (sharing(1), sharing(2));
        a.coordinate(0, &mut store);
        a.coordinate(10, &mut store);
        assert_eq!(b.coordinate(20, &mut store), Role::Follow);
        // The holder is gone and its lease void in the store; b, which read a
        // lease good until 3,010, does not look before then...
        let keys = ConfigKeys::new(b"{}");
        store.set(keys.lease(), Lease::vacant().encode().as_bytes(), None);
        assert_eq!(b.coordinate(3_000, &mut store), Role::Follow);
        // ...and takes it over at once from then on.
        assert_eq!(
            b.coordinate(3_010, &mut store),
            Role::Poll { took_over: true }
        );
    }

    #[test]
    fn a_lease_with_more_than_an_interval_left_is_not_read() {
        let mut store = FakeStore::default();
        let mut a = sharing(1);
        a.coordinate(0, &mut store);
        a.coordinate(10, &mut store);
        // Whatever the store says now (a lease is never taken before it runs
        // out), a lease renewed at 10 is a's until an interval before 3,010...
        let keys = ConfigKeys::new(b"{}");
        store.set(
            keys.lease(),
            Lease::granted(2, 20, TTL).encode().as_bytes(),
            None,
        );
        assert!(a.still_leading(2_000, &store));
        // ...and read afresh from then on.
        assert!(!a.still_leading(2_010, &store));
    }

    #[test]
    fn hosts_handed_in_are_listed_by_whichever_vm_polls_once_each() {
        let mut store = FakeStore::default();
        let (a, b, mut poller) = (sharing(1), sharing(2), sharing(3));
        let learned = |store: &FakeStore| {
            published::decode_learned(&store.get(&ConfigKeys::new(b"{}").learned()).0.unwrap())
        };
        assert_eq!(a.hand_in("x", 2, &mut store), Handed::At(0));
        assert_eq!(b.hand_in("x", 2, &mut store), Handed::At(0), "once");
        assert_eq!(b.hand_in("y", 2, &mut store), Handed::At(1));
        assert_eq!(a.hand_in("z", 2, &mut store), Handed::Full);
        assert_eq!(poller.take_inbox(0, 2, &mut store).start, 2);
        assert_eq!(learned(&store), ["x", "y"]);
        assert_eq!(a.hand_in("x", 2, &mut store), Handed::Full, "the list says");
        assert_eq!(
            a.announce_learned(&["x"], 2, &mut store),
            [Announced::Listed]
        );
        // A new poller goes on from where the last one stopped.
        let mut heir = sharing(4);
        poller.unlist_learned(&["x".to_string()], &mut store);
        poller.settle_inbox(None, &mut store);
        assert_eq!(a.hand_in("z", 2, &mut store), Handed::At(2));
        assert_eq!(heir.take_inbox(10, 2, &mut store).start, 3);
        assert_eq!(learned(&store), ["y", "z"]);
    }

    #[test]
    fn a_number_whose_host_never_came_holds_the_inbox_for_a_second_at_most() {
        let mut store = FakeStore::default();
        let (a, mut poller) = (sharing(1), sharing(3));
        let keys = ConfigKeys::new(b"{}");
        assert_eq!(a.hand_in("x", 4, &mut store), Handed::At(0));
        // Its VM took number 1 and stopped before it wrote the host.
        let taken = Inbox {
            handed: 2,
            taken: 0,
            listed: 0,
        };
        store.set(&keys.inbox(), &taken.encode(), None);
        assert_eq!(a.hand_in("y", 4, &mut store), Handed::At(2));
        assert_eq!(poller.take_inbox(0, 4, &mut store), 1..3, "x; waits for 1");
        assert_eq!(poller.take_inbox(999, 4, &mut store), 1..3);
        assert_eq!(poller.take_inbox(1_000, 4, &mut store), 3..3, "y");
        let listed = published::decode_learned(&store.get(&keys.learned()).0.unwrap());
        assert_eq!(listed, ["x", "y"]);
    }

    /// A list of one instance, 10.0.0.1:80.
    fn one_instance() -> InstanceSet {
        InstanceSet {
            instances: vec![instance("10.0.0.1:80", 1.0)],
            protection_reached: false,
        }
    }

    #[test]
    fn content_is_replaced_only_by_newer_content() {
        let mut store = FakeStore::default();
        let keys = ServiceKeys::new("q");
        let one = one_instance();
        let stamp = |store: &FakeStore| read_content(&keys, store).map(|c| c.stamp);
        publish_content(&keys, 1, 20, &InstanceSet::default(), &mut store);
        publish_content(&keys, 1, 10, &one, &mut store);
        assert_eq!(stamp(&store), Some(20));
        publish_content(&keys, 1, 30, &one, &mut store);
        assert_eq!(read_content(&keys, &store).map(|c| c.set), Some(one));
    }

    /// Seed 3461: configuration 1's poller confirmed the stored list at 775; a
    /// lingering root of configuration 0 then wrote its late answer, polled at
    /// 731 during a flap, over it. A root context of 1 starting then found the
    /// flap's list, unconfirmed, and rejected requests no_healthy_instance. A
    /// list older than the confirmation of the stored one does not replace it;
    /// it is kept for its writer's followers.
    #[test]
    fn content_older_than_the_stored_lists_confirmation_does_not_replace_it() {
        let mut store = FakeStore::default();
        let keys = ServiceKeys::new("q");
        let one = one_instance();
        let flap = InstanceSet::default();
        publish_content(&keys, 1, 637, &one, &mut store);
        let digest = published::list_digest(&one).unwrap();
        publish_confirmed(&keys, digest, 775, 2, &mut store);
        publish_content(&keys, 1, 731, &flap, &mut store);

        let started = read_start(&keys, 2, &store).map(|(c, at)| (c.stamp, c.set, at));
        assert_eq!(started, Some((637, one, Some(775))));
        let announced = read_announced(&keys, 1, 731, &store).map(|c| c.set);
        assert_eq!(announced, Some(flap), "kept for its writer's followers");
    }

    /// Seed 5496: a configuration's poller stored a flap's list, polled after
    /// the stored confirmation, and its confirmation lost every
    /// compare-and-swap. The confirmation still named an empty list, which this
    /// configuration's own kept list from before also was: a root context
    /// starting then took that old list, and the confirmation with it, over the
    /// newest Nacos had given.
    #[test]
    fn a_kept_list_is_not_started_from_when_newer_content_came_after_its_confirmation() {
        let mut store = FakeStore::default();
        let keys = ServiceKeys::new("q");
        let (empty, flap) = (InstanceSet::default(), one_instance());
        publish_content(&keys, 1, 2_300, &empty, &mut store);
        publish_content(&keys, 2, 2_657, &empty, &mut store);
        assert!(keep_if_written_over(&keys, 1, 2_300, &empty, &mut store));
        let digest = published::list_digest(&empty).unwrap();
        publish_confirmed(&keys, digest, 2_761, 2, &mut store);
        publish_content(&keys, 1, 2_849, &flap, &mut store);

        let started = read_start(&keys, 1, &store).map(|(c, at)| (c.stamp, c.set, at));
        assert_eq!(started, Some((2_849, flap, None)));
    }

    #[test]
    fn each_configuration_finds_the_content_its_own_poller_wrote() {
        let mut store = FakeStore::default();
        let keys = ServiceKeys::new("q");
        let one = one_instance();
        let written = |writer, announced, store: &FakeStore| {
            read_announced(&keys, writer, announced, store)
                .map(|c| (c.stamp, c.set.instances.len()))
        };
        publish_content(&keys, 1, 20, &one, &mut store);
        assert_eq!(written(1, 20, &store), Some((20, 1)));
        assert_eq!(written(1, 10, &store), Some((20, 1)), "newer, from 1");
        assert_eq!(written(2, 10, &store), None, "not what 2 announced");
        assert_eq!(
            written(2, 20, &store),
            Some((20, 1)),
            "what 2 announced, taken from 1 at its start"
        );
        publish_content(&keys, 2, 30, &InstanceSet::default(), &mut store);
        assert_eq!(
            written(1, 20, &store),
            Some((20, 1)),
            "kept when overwritten"
        );
        assert_eq!(written(2, 30, &store), Some((30, 0)));
        assert_eq!(read_content(&keys, &store).map(|c| c.writer), Some(2));
    }

    /// Seed 4971: a configuration's poller took a flap's list, then a new
    /// poller of it went back to the list before, which another configuration
    /// confirmed later, and kept it as its own. Its followers read the list it
    /// announced, not its own newer flap list still stored.
    #[test]
    fn the_announced_list_is_read_before_newer_content_of_the_same_writer() {
        let mut store = FakeStore::default();
        let keys = ServiceKeys::new("q");
        let (one, flap) = (one_instance(), InstanceSet::default());
        publish_content(&keys, 2, 20, &one, &mut store);
        publish_content(&keys, 1, 30, &flap, &mut store);
        assert!(keep_if_written_over(&keys, 1, 20, &one, &mut store));

        let announced = read_announced(&keys, 1, 20, &store).map(|c| (c.stamp, c.set));
        assert_eq!(announced, Some((20, one)));
        let newer = read_announced(&keys, 1, 10, &store).map(|c| c.stamp);
        assert_eq!(newer, Some(30), "newer than announced, published since");
    }

    #[test]
    fn heartbeats_are_read_once_per_change() {
        let mut store = FakeStore::default();
        let (mut poller, mut follower) = (sharing(1), sharing(2));
        let health = Health {
            content_stamp: 3,
            confirmed_at_ms: 4,
            failing_since_ms: None,
        };
        poller.write_heartbeat(0, [(5, health)].into_iter(), &mut store);
        assert_eq!(follower.read_heartbeat(&store), Some(vec![(5, health)]));
        assert_eq!(follower.read_heartbeat(&store), None);
        poller.write_heartbeat(PERIOD, [(5, health)].into_iter(), &mut store);
        assert_eq!(store.writes, 1, "an unchanged heartbeat is not rewritten");
    }

    #[test]
    fn confirmations_alone_are_published_once_a_period_and_changes_at_once() {
        let mut store = FakeStore::default();
        let (mut poller, mut follower) = (sharing(1), sharing(2));
        let at = |confirmed_at_ms, content_stamp, failing_since_ms| {
            [(
                5,
                Health {
                    content_stamp,
                    confirmed_at_ms,
                    failing_since_ms,
                },
            )]
        };
        poller.write_heartbeat(0, at(0, 1, None).into_iter(), &mut store);
        poller.write_heartbeat(100, at(100, 1, None).into_iter(), &mut store);
        assert_eq!(store.writes, 1, "a confirmation within the period waits");
        poller.write_heartbeat(PERIOD, at(PERIOD, 1, None).into_iter(), &mut store);
        assert_eq!(store.writes, 2, "and goes once the period is over");
        assert_eq!(
            follower.read_heartbeat(&store),
            Some(at(PERIOD, 1, None).to_vec())
        );
        poller.write_heartbeat(
            PERIOD + 10,
            at(PERIOD + 10, 2, None).into_iter(),
            &mut store,
        );
        assert_eq!(store.writes, 3, "new content goes at once");
        poller.write_heartbeat(
            PERIOD + 20,
            at(PERIOD + 10, 2, Some(PERIOD + 20)).into_iter(),
            &mut store,
        );
        assert_eq!(store.writes, 4, "a failure goes at once");
        assert_eq!(
            follower.read_heartbeat(&store),
            Some(at(PERIOD + 10, 2, Some(PERIOD + 20)).to_vec())
        );
    }
}
