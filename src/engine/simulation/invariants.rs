//! The contract the simulator checks after every event (docs/testing.md, "The contract
//! the simulator checks"). Times are simulation ("true") milliseconds unless
//! named `gw` (the gateway clock a VM read); every bound is derived from the
//! code's own rules, named where they are used.

use std::collections::{BTreeMap, BTreeSet};

use crate::pure::registry::snapshot::Health;
use crate::pure::sharing::lease::{self, Lease, LeaseStep};

/// The gateway clock counts a wall-clock step as this much (`sharing::clock`).
pub const STEP_MS: u64 = crate::pure::sharing::clock::STEP_COUNTS_AS_MS;

/// The numbers the bounds are made of, for one configuration.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub interval: u64,
    pub timeout: u64,
    /// The longest a good answer takes in this run (`< timeout`).
    pub max_delay: u64,
    pub max_stale: u64,
    /// Tick period and the most a tick comes late.
    pub tick: u64,
    pub tick_jitter: u64,
    /// With push (`push::PushParams`), what a missed push adds to the bounds:
    /// the safety interval and the other services' answers; 0 without push.
    pub push_extra: u64,
    /// With push, how long a link whose server went quiet still stands for
    /// polls (a probe interval and its timeout); 0 without push.
    pub probe_window: u64,
}

impl Bounds {
    /// A tick, at its latest.
    pub fn late_tick(&self) -> u64 {
        self.tick + self.tick_jitter
    }

    /// Registry change → the last request routed by the old list, all going well:
    /// the next poll is sent within an interval of the last one (or when the
    /// last answer came, if later) and a tick, its answer takes `max_delay`, the
    /// poller publishes on its next tick and a follower adopts on its next.
    /// With push, a change whose push was dropped waits for the service's
    /// safety poll: `push_extra` more.
    pub fn routed_after_change(&self) -> u64 {
        self.interval.max(self.max_delay)
            + self.late_tick()
            + self.max_delay
            + 2 * self.late_tick()
            + self.push_extra
    }

    /// What an empty list replacing instances adds: the plugin polls again on
    /// its next tick (`Targets::awaits_confirmation`) and takes the second one.
    pub fn confirm_empty(&self) -> u64 {
        self.late_tick() + self.max_delay
    }

    /// The same while something failed: the snapshot serves until it is stale
    /// (`Snapshot::freshness`: confirmed + interval + timeout + 2 ticks + half an
    /// interval for the heartbeat (`Engine::set_limits`) + maxStaleMs), read on a
    /// clock up to a tick old.
    pub fn routed_while_failing(&self) -> u64 {
        self.interval
            + self.timeout
            + 2 * self.tick
            + self.interval / 2
            + self.max_stale
            + 2 * self.late_tick()
            + self.push_extra
            + self.probe_window
    }

    /// How long past the newest good answer Nacos gave (by when its poll was sent)
    /// a VM may still take its snapshot for fresh; later it must be stale, and
    /// `onStale` decides. `Snapshot::freshness` says stale once the gateway clock
    /// passes the confirmation (that poll's send time) plus the next answer's due
    /// time, `I + T + 2P + I/2` (`Polling::next_answer_due_ms`), plus maxStaleMs.
    /// A request is judged on the clock its VM read last, which is when this is
    /// measured to; one late tick more for VMs' readings of the shared gateway
    /// clock to differ (each moves on from the later of its own and the shared
    /// one), and 1 ms for the strict comparison.
    pub fn stale_by(&self) -> u64 {
        self.interval
            + self.timeout
            + 2 * self.tick
            + self.interval / 2
            + self.max_stale
            + self.late_tick()
            + 1
    }

    /// Polls of one service by one poller are at least this far apart
    /// (`Scheduler`: at most a tenth of the interval early).
    pub fn poll_gap(&self) -> u64 {
        self.interval - self.interval / 10
    }

    /// A clock step → the next poll: the next poll was due within an interval,
    /// or when the call in flight ends (at most the timeout), and a tick.
    pub fn resume_after_jump(&self) -> u64 {
        self.interval.max(self.timeout) + 2 * self.late_tick() + STEP_MS
    }
}

/// What disturbs the gateway, so that the "all going well" bounds do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    ListFailed(usize),
    Login,
    Stall,
    Edit,
    Takeover,
    /// A learned service may idle (no request for `idleMs`): not polled.
    Idle(usize),
}

/// A good list answer, as the invariants need it.
#[derive(Debug, Clone, Copy)]
pub struct GoodAnswer {
    pub gen: usize,
    pub sent: u64,
    pub received: u64,
    pub usable: usize,
    /// The usable instances' address numbers, as a mask (`Service::usable_mask`).
    pub usable_mask: u64,
    /// Instances listed, usable or not.
    pub listed: usize,
    /// Received by the VM holding the lease, which publishes it.
    pub published: bool,
    /// When its list was in shared data for a root context to start from: at
    /// once, or on the poller's tick that wrote it again after its write lost
    /// every compare-and-swap (seed 3144: the poller went before that tick).
    pub stored_at: Option<u64>,
    pub vm: usize,
    /// When the poller's next tick wrote it into the heartbeat the followers read.
    pub announced: Option<u64>,
}

/// The login contract's state for one configuration (`auth.rs`).
#[derive(Debug, Default)]
struct Logins {
    holder: Option<usize>,
    failures: u32,
    failed_at_gw: u64,
    token: Option<String>,
    refresh_at_gw: u64,
    refused: bool,
    refusals: u32,
    refusal_due_gw: Option<u64>,
    /// Per service: the token its last 403 refused, until a good answer.
    refused_with: BTreeMap<usize, u64>,
}

/// Tokens are issued as `tok<N>`, N growing.
fn token_number(token: Option<&str>) -> Option<u64> {
    token?.strip_prefix("tok")?.parse().ok()
}

fn backoff(streak: u32) -> u64 {
    (1_000u64 << streak.saturating_sub(1).min(16)).min(30_000)
}

/// What a poller's heartbeat carried of one service: the instances its answer
/// listed, when the heartbeat was written, and when that poll was sent.
#[derive(Debug, Clone, Copy)]
struct Announcement {
    listed: usize,
    at: u64,
    sent: u64,
}

#[derive(Default)]
pub struct Checker {
    /// What disturbed the gateway, from when to when.
    trouble: Vec<(u64, u64, Trouble)>,
    /// Per configuration: the failed login whose trouble lasts until one of
    /// that configuration succeeds (each logs in for itself while an edit's
    /// old root contexts linger).
    open_login: BTreeMap<usize, usize>,
    /// When every VM was stopped at once.
    frozen: Vec<(u64, u64)>,
    /// Published answers whose poller has not ticked since: (VM, service, index).
    unannounced: Vec<(usize, usize, usize)>,
    /// Published answers whose list is not in shared data yet (its write lost
    /// every compare-and-swap): (VM, service, index).
    unstored: Vec<(usize, usize, usize)>,
    jumps: Vec<u64>,
    /// Per (configuration, service): the last poll's time and VM.
    last_poll: BTreeMap<(usize, usize), (u64, usize)>,
    /// Per VM: when its engine last became the poller.
    took_over_at: BTreeMap<usize, u64>,
    pub good: Vec<Vec<GoodAnswer>>,
    /// Per service, for each good answer in `good`: when it came, and the
    /// newest send time of the good answers up to it.
    newest_sent: Vec<Vec<(u64, u64)>>,
    logins: BTreeMap<usize, Logins>,
    health: BTreeMap<u64, Vec<Health>>,
    /// (deadline, configuration, service, jump time)
    resume: Vec<(u64, usize, usize, u64)>,
    /// Per (configuration, service): every poll's time.
    polls: BTreeMap<(usize, usize), Vec<u64>>,
    /// Per (configuration, service): when a list came over push.
    pushed_at: BTreeMap<(usize, usize), Vec<u64>>,
    /// (configuration, service) whose last answer listed nothing after one
    /// that listed some: its next poll may come at once, to confirm it.
    confirming: BTreeSet<(usize, usize)>,
    /// Per (configuration, service): instances listed by the last answer its
    /// poller took; and per service, by the newest any took, with when its
    /// poll was sent: the store orders lists by that, not by when they came
    /// (seed 2626).
    taken_listed: BTreeMap<(usize, usize), usize>,
    latest_taken: BTreeMap<usize, (u64, usize)>,
    /// Per (configuration, service): the VM that took its last answer, and
    /// instances listed by the last answer its followers were told of. A poller
    /// that goes between taking an answer and announcing it leaves the one
    /// that takes over holding the announced list, not the taken one.
    taken_by: BTreeMap<(usize, usize), usize>,
    /// Per (configuration, service), what its poller's heartbeat last carried.
    announced: BTreeMap<(usize, usize), Announcement>,
    /// Per (VM, service) where the VM, as a follower, took a list its poller
    /// announced after it started: whether that listed instances. A VM that
    /// started from one list may hold another when it takes over.
    vm_followed: BTreeMap<(usize, usize), bool>,
    /// Per (VM, service): when the server's state of the newest list the VM
    /// took from a push was read (the push's `sent`).
    pushed_sent: BTreeMap<(usize, usize), u64>,
    /// When each (VM, service) started.
    vm_start_at: BTreeMap<(usize, usize), u64>,
    /// (VM, service) whose start read a store older than `latest_taken`, or
    /// whose VM took the lease and learned the service again (`learned_takeover`):
    /// it may hold either list.
    vm_start_unknown: BTreeSet<(usize, usize)>,
    /// Per (configuration, service): what `latest_taken` was when the
    /// configuration started, the list its VMs start from (a learned service:
    /// when it was first guarded). Another configuration still alive may take
    /// newer lists after that, which this one's poller does not adopt: it polls
    /// for itself.
    start_listed: BTreeMap<(usize, usize), usize>,
    /// Per VM and service, the instances listed in the list that VM started
    /// from (a VM loaded again starts later than its configuration).
    vm_start_listed: BTreeMap<(usize, usize), usize>,
    /// (configuration, service) whose last answer was an empty one held back.
    /// The VM holding it: a poller that took over holds its own.
    held_empty: BTreeMap<(usize, usize), usize>,
    /// (configuration, service) whose last answer was an empty one its VM
    /// (the value) may have held back, its list unknown here; and whether a
    /// list call failed since.
    maybe_held: BTreeMap<(usize, usize), (usize, bool)>,
    /// Per empty answer the poller held back: its service, when it came, and
    /// by when the poll confirming it goes (`confirm_within` later).
    confirms: Vec<(usize, u64, u64)>,
    /// How long the confirming poll may take to go: the poller's next tick,
    /// and a login if its token is due.
    pub confirm_within: u64,
    /// Per service: until when a push link stood for its polls, as last
    /// known: the link confirms what is due, and a push is the confirmation.
    link_stands_until: BTreeMap<usize, u64>,
    /// Per service: when a failed request may have asked for a poll at once,
    /// by when that poll goes, and the configurations whose poll it explained.
    asked: BTreeMap<usize, Vec<(u64, u64, BTreeSet<usize>)>>,
}

pub type Verdict = Result<(), String>;

impl Checker {
    pub fn new(services: usize) -> Self {
        Self {
            good: vec![Vec::new(); services],
            newest_sent: vec![Vec::new(); services],
            ..Self::default()
        }
    }

    pub fn trouble(&mut self, at: u64, what: Trouble) {
        self.trouble_until(at, at, what);
    }

    pub fn trouble_until(&mut self, from: u64, to: u64, what: Trouble) {
        self.trouble.push((from, to, what));
    }

    /// A login failed at `at`: trouble until one succeeds.
    pub fn login_failing(&mut self, gen: usize, at: u64) {
        if let std::collections::btree_map::Entry::Vacant(open) = self.open_login.entry(gen) {
            open.insert(self.trouble.len());
            self.trouble.push((at, u64::MAX, Trouble::Login));
        }
    }

    pub fn login_works(&mut self, gen: usize, at: u64) {
        if let Some(index) = self.open_login.remove(&gen) {
            if let Some(entry) = self.trouble.get_mut(index) {
                entry.1 = at;
            }
        }
    }

    /// Every VM stopped from `from` to `to`: the gateway clock takes that for a
    /// stopped process (one step), so that time does not count.
    pub fn frozen(&mut self, from: u64, to: u64) {
        self.frozen.push((from, to));
        for deadline in &mut self.resume {
            if (deadline.3..=deadline.0).contains(&from) {
                deadline.0 += to - from;
            }
        }
    }

    fn frozen_within(&self, from: u64, to: u64) -> u64 {
        self.frozen
            .iter()
            .filter(|(a, b)| *a <= to && *b >= from)
            .map(|(a, b)| (*b).min(to) - (*a).max(from))
            .sum()
    }

    /// When the last trouble ended (`u64::MAX` while one lasts).
    pub fn calm_since(&self) -> u64 {
        self.trouble
            .iter()
            .map(|(_, end, _)| *end)
            .max()
            .unwrap_or(0)
    }

    fn troubled(&self, from: u64, to: u64, service: usize) -> bool {
        self.trouble.iter().rev().any(|(start, end, what)| {
            *start <= to
                && *end >= from
                && match what {
                    Trouble::ListFailed(s) | Trouble::Idle(s) => *s == service,
                    _ => true,
                }
        })
    }

    /// Whether learned `service` may have idled from `from` to `to`: polling
    /// it resumes at once when a request comes back.
    fn idled(&self, service: usize, from: u64, to: u64) -> bool {
        self.trouble.iter().any(|(start, end, what)| {
            *what == Trouble::Idle(service) && *start <= to && *end >= from
        })
    }

    /// Whether a VM stalled, the gateway clock stepped or the gateway stood
    /// still from `from` to `to`: what delays the poller's own checks.
    pub fn stalled_or_stepped(&self, from: u64, to: u64) -> bool {
        let stalled = self
            .trouble
            .iter()
            .any(|(start, end, what)| *what == Trouble::Stall && *start <= to && *end >= from);
        stalled || self.clock_moved(from, to)
    }

    /// `disturbed`, but an edit or a lease takeover is none: learning a
    /// service must go on across them (the learned checks judge those apart).
    pub fn disturbed_apart_from_edits(&self, from: u64, to: u64, service: usize) -> bool {
        let troubled = self.trouble.iter().rev().any(|(start, end, what)| {
            *start <= to
                && *end >= from
                && match what {
                    Trouble::ListFailed(_) | Trouble::Login | Trouble::Stall => true,
                    Trouble::Idle(s) => *s == service,
                    Trouble::Edit | Trouble::Takeover => false,
                }
        });
        troubled || self.steps(from, to) > 0 || self.frozen_within(from, to) > 0
    }

    fn steps(&self, from: u64, to: u64) -> u64 {
        self.jumps
            .iter()
            .filter(|at| (from..=to).contains(*at))
            .count() as u64
    }

    /// A clock step at `at`: every service of configuration `gen` polls again soon.
    /// With push, only `services` whose polls no link stands for.
    pub fn jump(&mut self, at: u64, gen: usize, services: &[usize], bounds: &Bounds) {
        self.jumps.push(at);
        for &service in services {
            self.resume
                .push((at + bounds.resume_after_jump(), gen, service, at));
        }
    }

    /// Deadlines that passed by `now`.
    pub fn deadlines(&mut self, now: u64, credentials: bool) -> Verdict {
        let due: Vec<_> = self.resume.iter().copied().filter(|d| d.0 <= now).collect();
        self.resume.retain(|d| d.0 > now);
        for (deadline, gen, service, jumped) in due {
            // A list the server gave over push after the step does as well.
            let polled = [&self.polls, &self.pushed_at].iter().any(|times| {
                times
                    .get(&(gen, service))
                    .is_some_and(|t| t.iter().rev().any(|t| *t > jumped && *t <= deadline))
            });
            let excused = self.trouble.iter().any(|(start, end, what)| {
                let from = if credentials && *what == Trouble::Login {
                    jumped.saturating_sub(60_000)
                } else {
                    jumped.saturating_sub(deadline - jumped)
                };
                *start <= deadline
                    && *end >= from
                    && !matches!(what, Trouble::ListFailed(_) | Trouble::Idle(_))
            });
            if !polled && !excused {
                return Err(format!(
                    "after the clock step at {jumped}, service s{service} (config {gen}) \
                     was not polled by {deadline}"
                ));
            }
        }
        Ok(())
    }

    /// The stored lease of a configuration changed hands in one VM callback.
    pub fn lease_change(
        &mut self,
        before: Option<Lease>,
        after: Option<Lease>,
        writer: u64,
        now_gw: u64,
        ttl: u64,
    ) -> Verdict {
        let Some(after) = after else { return Ok(()) };
        if after.holder == 0 || before.is_some_and(|b| b.holder == after.holder) {
            return Ok(());
        }
        let legit = match before {
            None => true,
            Some(before) if before.holder == 0 => true,
            Some(before) => lease::step(Some(&before), writer, now_gw, ttl) == LeaseStep::TakeOver,
        };
        if legit {
            Ok(())
        } else {
            Err(format!(
                "VM {writer:x} took a live lease: {before:?} -> {after:?} at gw {now_gw}"
            ))
        }
    }

    /// A failed request of `service` may have asked for a poll at once at `at`
    /// (`engine::avoidance`), which goes out within `within`: a poll then may
    /// come early. (A poll due anyway may go between the ask and the poller's
    /// tick that reads it; the asked one follows.)
    pub fn asked(&mut self, service: usize, at: u64, within: u64) {
        self.asked
            .entry(service)
            .or_default()
            .push((at, at + within, BTreeSet::new()));
    }

    /// Take the oldest ask of `service` whose poll may be the one configuration
    /// `gen` sent at `poll`: each ask explains one early poll per configuration.
    /// The ask is shared by the gateway (`engine::avoidance`'s log), and while
    /// an edit's old root contexts linger each configuration's poller polls
    /// for its own snapshot.
    fn asked_for(&mut self, gen: usize, service: usize, poll: u64) -> bool {
        let Some(asks) = self.asked.get_mut(&service) else {
            return false;
        };
        asks.retain(|(_, to, _)| *to >= poll);
        let Some(ask) = asks
            .iter_mut()
            .find(|(from, _, used)| *from <= poll && !used.contains(&gen))
        else {
            return false;
        };
        ask.2.insert(gen);
        true
    }

    /// Whether some configuration polled `service` from `from` to `to`.
    pub fn polled_within(&self, service: usize, from: u64, to: u64) -> bool {
        self.polls
            .iter()
            .filter(|((_, s), _)| *s == service)
            .any(|(_, polls)| polls.iter().rev().any(|t| (from..=to).contains(t)))
    }

    /// Whether anything disturbed `service` from `from` to `to`: trouble, a
    /// clock step, or the whole gateway standing still.
    pub fn disturbed(&self, from: u64, to: u64, service: usize) -> bool {
        self.troubled(from, to, service)
            || self.steps(from, to) > 0
            || self.frozen_within(from, to) > 0
    }

    /// Whether the gateway clock stepped or the whole gateway stood still
    /// from `from` to `to`.
    pub fn clock_moved(&self, from: u64, to: u64) -> bool {
        self.steps(from, to) > 0 || self.frozen_within(from, to) > 0
    }

    pub fn became_poller(&mut self, vm: usize, at: u64) {
        self.took_over_at.insert(vm, at);
        self.trouble(at, Trouble::Takeover);
    }

    /// A poll of `service` sent by `vm` of configuration `gen`.
    pub fn poll(&mut self, gen: usize, service: usize, vm: usize, at: u64, b: &Bounds) -> Verdict {
        self.polls.entry((gen, service)).or_default().push(at);
        let previous = self.last_poll.insert((gen, service), (at, vm));
        let confirming = self.confirming.remove(&(gen, service));
        let Some((last, last_vm)) = previous else {
            return Ok(());
        };
        let gap = at - last;
        let allowed = b.poll_gap().saturating_sub(STEP_MS * self.steps(last, at));
        let explained = self
            .took_over_at
            .get(&vm)
            .is_some_and(|t| *t >= last && vm != last_vm)
            || confirming
            || self.idled(service, last, at)
            || (gap < allowed && self.asked_for(gen, service, at));
        if gap < allowed && !explained {
            return Err(format!(
                "service s{service} (config {gen}) polled by VM {vm} {gap} ms after VM \
                 {last_vm}'s poll (at least {allowed} unless a lease takeover, a failure's \
                 asked poll or an empty answer to confirm explains it)"
            ));
        }
        Ok(())
    }

    /// A VM's snapshots may only move forward.
    pub fn snapshot_health(&mut self, engine: u64, vm: usize, health: Vec<Health>) -> Verdict {
        if let Some(before) = self.health.get(&engine) {
            for (s, (old, new)) in before.iter().zip(&health).enumerate() {
                // Back to older content only as the engine's rule allows it
                // (`Targets::follow_heartbeat`): the poller's, confirmed by a poll
                // sent after ours was taken (a configuration that lingered
                // past an edit, a subscription's answer stamped when sent; the
                // newer list was another configuration's, which Nacos no
                // longer gives: issue 24, defect 5).
                let back = new.content_stamp < old.content_stamp
                    && new.confirmed_at_ms <= old.content_stamp;
                if back || new.confirmed_at_ms < old.confirmed_at_ms {
                    return Err(format!(
                        "VM {vm} moved service s{s} back from {old:?} to {new:?}"
                    ));
                }
            }
        }
        self.health.insert(engine, health);
        Ok(())
    }

    pub fn login_sent(&mut self, gen: usize, vm: usize, now_gw: u64, holder: bool) -> Verdict {
        if !holder {
            return Err(format!("VM {vm} logged in without holding the lease"));
        }
        let logins = self.logins.entry(gen).or_default();
        if logins.holder != Some(vm) {
            // A new poller starts its own token state: nothing to hold it to yet.
            *logins = Logins {
                holder: Some(vm),
                ..Logins::default()
            };
            return Ok(());
        }
        let earliest = if logins.failures > 0 {
            logins.failed_at_gw + backoff(logins.failures)
        } else if logins.token.is_some() {
            logins
                .refusal_due_gw
                .map_or(logins.refresh_at_gw, |due| due.min(logins.refresh_at_gw))
        } else {
            0
        };
        if now_gw < earliest {
            return Err(format!(
                "VM {vm} logged in at gw {now_gw}, before gw {earliest} ({logins:?})"
            ));
        }
        Ok(())
    }

    pub fn login_answered(
        &mut self,
        gen: usize,
        vm: usize,
        now_gw: u64,
        grant: Option<(String, u64)>,
    ) {
        let logins = self.logins.entry(gen).or_default();
        if logins.holder != Some(vm) {
            return;
        }
        match grant {
            Some((token, ttl_s)) => {
                let lifetime = ttl_s.max(1) * 1000;
                logins.failures = 0;
                logins.token = Some(token);
                logins.refresh_at_gw = now_gw + lifetime / 4 * 3;
                logins.refused = false;
                logins.refusal_due_gw = None;
            }
            None => {
                logins.failures += 1;
                logins.failed_at_gw = now_gw;
            }
        }
    }

    /// A 403 on a list call of `service` that carried `token`: a new login at
    /// once, unless the same service was refused an older token too with no good
    /// answer between (then the account lacks permission: back off).
    pub fn refused(
        &mut self,
        gen: usize,
        vm: usize,
        service: usize,
        now_gw: u64,
        token: Option<&str>,
    ) {
        let logins = self.logins.entry(gen).or_default();
        if logins.holder != Some(vm) {
            return;
        }
        let number = token_number(token).unwrap_or(0);
        let again = logins
            .refused_with
            .insert(service, number)
            .is_some_and(|before| before < number);
        if logins.refused || token != logins.token.as_deref() {
            return;
        }
        logins.refused = true;
        logins.refusals = if again {
            (logins.refusals + 1).max(2)
        } else {
            1
        };
        let wait = if logins.refusals == 1 {
            0
        } else {
            backoff(logins.refusals - 1)
        };
        logins.refusal_due_gw = Some(now_gw + wait);
    }

    /// A good answer for `service` taken by `vm`.
    pub fn served(&mut self, gen: usize, vm: usize, service: usize) {
        if let Some(logins) = self.logins.get_mut(&gen) {
            if logins.holder == Some(vm) {
                logins.refused_with.remove(&service);
            }
        }
    }

    /// A good list answer some VM took.
    pub fn answer(&mut self, service: usize, mut answer: GoodAnswer) {
        if !answer.published || self.older_than_pushed(service, &answer) {
            // A VM that no longer holds the lease drops the answer
            // (`Engine::on_answer`): its configuration's list stays, and an
            // empty answer held for a second poll stays held. An answer to a
            // poll sent before a list the VM took from a push is dropped by
            // its snapshot (`Snapshot::accept`).
            self.record(service, answer);
            return;
        }
        // The plugin's rule for an empty list (`Targets::awaits_confirmation`):
        // one that replaces instances is held back, and the next answer, polled
        // at once, decides. A held answer is neither taken nor published. Each
        // configuration's poller holds its own; a new one starts from what the
        // others took.
        let key = (answer.gen, service);
        let own = self.taken_listed.get(&key).copied();
        let start = self.start_listed.get(&key).is_some_and(|n| *n > 0);
        let latest = self.latest_taken.get(&service).map(|(_, listed)| *listed);
        // Before its poller took an answer of its own, a configuration's list
        // is the one it started from, or one it followed since from another
        // configuration still alive. An empty answer may be confirmed at once
        // if either listed instances; it is held (neither taken nor published)
        // when the list it replaces certainly had some. The VM holding it: a
        // poller that took over holds its own.
        let new_poller = self.taken_by.get(&key).is_some_and(|vm| *vm != answer.vm);
        let told = self.announced.get(&key).map_or(start, |a| a.listed > 0);
        // A VM loaded again started from the stored list, perhaps another
        // configuration's newer one, which it keeps until its poller confirms
        // a later poll: as poller it may hold that list.
        let vm_started = self.vm_start_listed.get(&(answer.vm, service)).copied();
        let vm_unknown = self.vm_start_unknown.contains(&(answer.vm, service));
        let vm_followed = self.vm_followed.get(&(answer.vm, service)).copied();
        let vm_holds = vm_followed.or(vm_started.map(|n| n > 0));
        let vm_start = vm_holds.unwrap_or(false) || vm_unknown;
        let vm_start_may = vm_holds.unwrap_or(true);
        let (may_replace, replaces) = match own {
            Some(n) if new_poller => (n > 0 || told || vm_start, n > 0 && told && vm_start_may),
            Some(n) => (n > 0, n > 0),
            // A poller never follows another configuration's list: until its
            // configuration took an answer, it holds the one it started from.
            None => match vm_holds {
                Some(holds) => (start || vm_start || latest.is_some_and(|n| n > 0), holds),
                None => (
                    start || latest.is_some_and(|n| n > 0),
                    start && latest != Some(0),
                ),
            },
        };
        // An empty answer the VM may have held back: if the poll confirming
        // it failed, the next empty one is held again (`Targets::failed`
        // forgets the first) and confirmed at once (seed 2896).
        let again = self.maybe_held.remove(&key) == Some((answer.vm, true));
        let may_replace = may_replace || (again && answer.listed == 0);
        // Another VM's held empty answer (a former poller's) confirms nothing
        // for this one, which holds its own list (seed 2684: a new poller
        // that took the list its predecessor announced).
        let held_by = self.held_empty.get(&key).copied();
        if answer.listed == 0 && may_replace && held_by != Some(answer.vm) {
            self.confirming.insert(key);
            if !replaces {
                self.maybe_held.insert(key, (answer.vm, false));
            }
        }
        if answer.listed == 0 && replaces && held_by != Some(answer.vm) {
            self.held_empty.insert(key, answer.vm);
            self.confirming.insert(key);
            if answer.published {
                let deadline = answer.received + self.confirm_within;
                self.confirms.push((service, answer.received, deadline));
            }
            answer.published = false;
            self.good[service].push(answer);
            return;
        }
        self.held_empty.remove(&key);
        self.took(service, answer);
    }

    fn took(&mut self, service: usize, answer: GoodAnswer) {
        let key = (answer.gen, service);
        self.taken_listed.insert(key, answer.listed);
        self.taken_by.insert(key, answer.vm);
        let newest = self.latest_taken.entry(service).or_insert((0, 0));
        if answer.sent >= newest.0 {
            *newest = (answer.sent, answer.listed);
        }
        if answer.published {
            let index = self.good[service].len();
            self.unannounced.push((answer.vm, service, index));
        }
        self.record(service, answer);
    }

    /// Keep a good answer, and Nacos's newest word as of its coming.
    fn record(&mut self, service: usize, answer: GoodAnswer) {
        if answer.published && answer.stored_at.is_none() {
            let index = self.good[service].len();
            self.unstored.push((answer.vm, service, index));
        }
        let newest = &mut self.newest_sent[service];
        let sent = newest
            .last()
            .map_or(answer.sent, |(_, s)| answer.sent.max(*s));
        newest.push((answer.received, sent));
        self.good[service].push(answer);
    }

    /// Whether `answer` tells of a moment before a list its VM took from a push.
    fn older_than_pushed(&self, service: usize, answer: &GoodAnswer) -> bool {
        self.pushed_sent
            .get(&(answer.vm, service))
            .is_some_and(|pushed| answer.sent < *pushed)
    }

    /// Whether a push link stood for the polls of `service` at `at`.
    pub fn link_stood(&self, service: usize, at: u64) -> bool {
        self.link_stands_until
            .get(&service)
            .is_some_and(|until| *until >= at)
    }

    /// The empty answers held back whose confirming poll was due by `now`:
    /// (service, when the answer came, the deadline).
    pub fn confirms_due(&mut self, now: u64) -> Vec<(usize, u64, u64)> {
        let (due, later) = self
            .confirms
            .iter()
            .partition(|(_, _, deadline)| *deadline <= now);
        self.confirms = later;
        due
    }

    /// A list the server gave over push (a subscription's answer or a push)
    /// that some VM took: taken at once, empty or not (`Targets::take_pushed`).
    pub fn pushed(&mut self, service: usize, answer: GoodAnswer) {
        if self.older_than_pushed(service, &answer) {
            // A subscription's answer that comes after a push of a newer list
            // (another gRPC call): the snapshot keeps the newer.
            self.record(service, answer);
            return;
        }
        let newest = self.pushed_sent.entry((answer.vm, service)).or_default();
        *newest = (*newest).max(answer.sent);
        let at = self.pushed_at.entry((answer.gen, service)).or_default();
        at.push(answer.received);
        self.held_empty.remove(&(answer.gen, service));
        self.took(service, answer);
    }

    /// A live link stands for answers of `service` (`DuePoll::Confirm`) until
    /// `until`: as fresh, by the registry's timeline, as an answer sent then.
    pub fn link_alive(&mut self, service: usize, until: u64, now: u64) {
        let stands = self.link_stands_until.entry(service).or_default();
        *stands = (*stands).max(until);
        let newest = &mut self.newest_sent[service];
        let sent = newest.last().map_or(until, |(_, s)| until.max(*s));
        newest.push((now, sent));
    }

    /// A push link of configuration `gen` was lost: the plugin polls each of
    /// `services` at once.
    pub fn link_lost(&mut self, gen: usize, services: usize) {
        for service in 0..services {
            self.confirming.insert((gen, service));
        }
    }

    /// Whether the next poll of `service` by `gen` may come at once: an empty
    /// answer to confirm, a lost link, or a failure's ask.
    pub fn early_poll_explained(&self, gen: usize, service: usize, at: u64) -> bool {
        self.confirming.contains(&(gen, service))
            || self.asked.get(&service).is_some_and(|asks| {
                asks.iter()
                    .any(|(from, to, used)| *from <= at && at <= *to && !used.contains(&gen))
            })
    }

    /// Configuration `gen` starts now: its VMs start from the lists taken so far.
    pub fn configuration_starts(&mut self, gen: usize) {
        for (service, (_, listed)) in &self.latest_taken {
            self.start_listed.insert((gen, *service), *listed);
        }
    }

    /// VM `vm` starts now from the lists taken so far: every service's, or
    /// one learned service's on its first request there.
    /// `racing`: it read the store as it was before another VM's callback of
    /// the same moment, so it may have started from an older list.
    pub fn vm_starts(&mut self, vm: usize, only: Option<usize>, racing: bool, at: u64) {
        for (service, (_, listed)) in &self.latest_taken {
            if only.is_none_or(|s| s == *service) {
                self.vm_start_listed.insert((vm, *service), *listed);
                self.vm_start_at.insert((vm, *service), at);
                if racing {
                    self.vm_start_unknown.insert((vm, *service));
                }
            }
        }
    }

    /// A VM of configuration `gen` guards learned `service` for the first
    /// time: it starts from the stored list, the one taken last, and its poller
    /// (this VM, or the next to read the learned list) does the same.
    pub fn learned_service_starts(&mut self, gen: usize, service: usize) {
        if self.taken_listed.contains_key(&(gen, service)) {
            return;
        }
        if let Some((_, listed)) = self.latest_taken.get(&service) {
            self.start_listed.insert((gen, service), *listed);
        }
    }

    /// A list call of `service` failed: an empty answer held back is dropped.
    pub fn list_failed(&mut self, gen: usize, service: usize) {
        self.held_empty.remove(&(gen, service));
        if let Some((_, failed)) = self.maybe_held.get_mut(&(gen, service)) {
            *failed = true;
        }
    }

    /// VM `vm` ticked at `at`, still the poller, and wrote its heartbeat: that
    /// now carries what it took since it last wrote it, and its lists are
    /// stored but for the services `written` says not.
    pub fn poller_ticked(&mut self, vm: usize, at: u64, written: impl Fn(usize) -> bool) {
        let good = &mut self.good;
        self.unstored.retain(|(who, service, index)| {
            if *who != vm || !written(*service) {
                return true;
            }
            if let Some(answer) = good[*service].get_mut(*index) {
                answer.stored_at = Some(at);
            }
            false
        });
        let (good, told) = (&mut self.good, &mut self.announced);
        self.unannounced.retain(|(who, service, index)| {
            if *who != vm {
                return true;
            }
            if let Some(answer) = good[*service].get_mut(*index) {
                answer.announced = Some(at);
                let announcement = Announcement {
                    listed: answer.listed,
                    at,
                    sent: answer.sent,
                };
                told.insert((answer.gen, *service), announcement);
            }
            false
        });
    }

    /// VM `vm` took the lease in a seed with learned services: it learns again
    /// from the list what it let idle, starting from the newest stored list,
    /// so it may hold that or the one it had.
    pub fn learned_takeover(&mut self, vm: usize, services: usize) {
        for service in 0..services {
            self.vm_start_unknown.insert((vm, service));
        }
    }

    /// VM `vm`, started at `started`, ticked at `at` as a follower of the
    /// configurations `shares_keys` says share its keys (one heartbeat): it
    /// follows the last announcement made before (a millisecond apart, so that
    /// no racing read missed it) if that poll went after it started, so is
    /// newer than any list it started from.
    pub fn follower_ticked(
        &mut self,
        vm: usize,
        shares_keys: impl Fn(usize) -> bool,
        started: u64,
        at: u64,
    ) {
        let mut last: BTreeMap<usize, Announcement> = BTreeMap::new();
        for ((gen, service), told) in &self.announced {
            if shares_keys(*gen) && told.at + 1 < at {
                let entry = last.entry(*service).or_insert(*told);
                if told.at > entry.at {
                    *entry = *told;
                }
            }
        }
        for (service, told) in last {
            let started = self
                .vm_start_at
                .get(&(vm, service))
                .map_or(started, |t| started.max(*t));
            if told.sent > started {
                self.vm_followed.insert((vm, service), told.listed > 0);
            }
        }
    }

    /// Answers a VM of `gen` configured at `configured` certainly heard of by `at`.
    fn heard(
        &self,
        service: usize,
        gen: usize,
        configured: u64,
        by: u64,
    ) -> impl Iterator<Item = &GoodAnswer> {
        // A root context of a configuration whose poller announced lists
        // already (a VM loaded again) follows that poller from its first tick:
        // another configuration's answer it started from may leave at once.
        let own_before = self.good[service]
            .iter()
            .any(|a| a.gen == gen && a.announced.is_some_and(|at| at < configured));
        self.good[service].iter().filter(move |a| {
            // Followers read the heartbeat (written on the poller's tick); a new
            // root context reads the confirmation published with the answer.
            let announced = a.gen == gen && a.announced.is_some_and(|at| at <= by);
            let started_from =
                a.stored_at.is_some_and(|at| at < configured) && (a.gen == gen || !own_before);
            a.published && (announced || started_from)
        })
    }

    /// A request of `service` routed to `endpoint`, which the registry stopped
    /// listing as usable at `stopped` (if it did), and whether the service's
    /// last instance went since.
    pub fn routed(
        &self,
        service: usize,
        endpoint: &str,
        (stopped, emptied): (Option<u64>, bool),
        now: u64,
        b: &Bounds,
    ) -> Verdict {
        let Some(stopped) = stopped else {
            return Ok(());
        };
        let age = now - stopped.min(now);
        let confirm = if emptied { b.confirm_empty() } else { 0 };
        let steps = STEP_MS * self.steps(stopped, now) + self.frozen_within(stopped, now) + confirm;
        if age <= b.routed_after_change() + steps {
            return Ok(());
        }
        let window = stopped.saturating_sub(b.interval.max(b.timeout) + b.timeout);
        let failing = self.troubled(window, now, service);
        if failing && age <= b.routed_while_failing() + steps {
            return Ok(());
        }
        Err(format!(
            "routed to {endpoint} of s{service} {age} ms after it stopped being usable \
             (bound {} all going well, {} while failing; failing: {failing})",
            b.routed_after_change() + steps,
            b.routed_while_failing() + steps
        ))
    }

    /// When the newest answer of `service` a VM has certainly heard of by `now`
    /// was sent. A follower tick in the same millisecond as the announcement may
    /// read the store as it was before it (a racing view): it hears a tick later.
    fn latest_heard(
        &self,
        service: usize,
        gen: usize,
        configured: u64,
        now: u64,
        b: &Bounds,
    ) -> Option<u64> {
        let heard_by = now.saturating_sub(b.late_tick() + 2);
        self.heard(service, gen, configured, heard_by)
            .map(|a| a.sent)
            .max()
    }

    /// A request of `service` decided by the snapshot (routed, or rejected
    /// `no_healthy_instance`) by a VM whose clock was read at `read_at`: the
    /// snapshot must not be stale by the registry's own timeline, whatever the
    /// plugin published (`Bounds::stale_by` after the newest good answer any VM
    /// took; clock steps and whole-gateway stops count as the gateway clock
    /// counts them).
    /// `heard_by`: answers received until then count, `read_at` for a service
    /// the VM followed before, the request's own time for one it learns on it
    /// (it starts from the stored list then).
    pub fn not_stale(
        &self,
        service: usize,
        (read_at, heard_by): (u64, u64),
        b: &Bounds,
    ) -> Verdict {
        // Answers are kept in the order they came: the newest sent among those
        // received by `heard_by` is the running maximum at the last of them.
        let newest_sent = &self.newest_sent[service];
        let taken = newest_sent.partition_point(|(received, _)| *received <= heard_by);
        let newest = taken.checked_sub(1).map(|last| newest_sent[last].1);
        let Some(sent) = newest else {
            return Err(format!(
                "s{service} decided by a snapshot at {read_at}, but Nacos never gave a good answer"
            ));
        };
        let slack = STEP_MS * self.steps(sent, read_at) + self.frozen_within(sent, read_at);
        let deadline = sent + b.stale_by() + slack;
        if read_at > deadline {
            return Err(format!(
                "s{service} decided by its snapshot on a clock read at {read_at}, but Nacos's newest \
                 good answer was to a poll sent at {sent}: stale from {deadline} (maxStaleMs {})",
                b.max_stale
            ));
        }
        Ok(())
    }

    /// The `usable_instances` gauge of `service` at `now` against the registry's
    /// count of usable instances, which last changed at `changed`: equal once
    /// `Bounds::routed_after_change` has passed since, unless something failed
    /// from `max(I, T) + T` before the change on (as for routing: the gauge is
    /// recorded with the candidates the requests are routed by).
    pub fn usable_gauge(
        &self,
        service: usize,
        (changed, now): (u64, u64),
        (gauge, listed): (Option<u64>, usize),
        b: &Bounds,
    ) -> Verdict {
        let window = changed.saturating_sub(b.interval.max(b.timeout) + b.timeout);
        let disturbed = self.troubled(window, now, service)
            || self.steps(window, now) > 0
            || self.frozen_within(window, now) > 0;
        if disturbed || gauge == Some(listed as u64) {
            return Ok(());
        }
        Err(format!(
            "s{service}: usable_instances is {gauge:?} at {now}, but the registry has listed \
             {listed} usable instances since {changed}"
        ))
    }

    /// A request of `service` passed through or rejected as stale.
    pub fn stale(
        &self,
        service: usize,
        gen: usize,
        configured: u64,
        now: u64,
        b: &Bounds,
    ) -> Verdict {
        let latest = self.latest_heard(service, gen, configured, now, b);
        let steps = STEP_MS * self.steps(latest.unwrap_or(now), now);
        match latest {
            Some(sent) if now - sent.min(now) + steps + b.late_tick() < b.max_stale => {
                Err(format!(
                    "s{service} treated as stale at {now}, but a good answer sent at {sent} was \
                 published (maxStaleMs {})",
                    b.max_stale
                ))
            }
            _ => Ok(()),
        }
    }

    /// A request of `service` rejected `no_healthy_instance`.
    /// A request pinned to the instance numbered `pin` (`10.0.<s>.<pin>`) of
    /// `service` routed elsewhere or rejected `instance_deregistered` by a VM
    /// of `gen` configured at `configured`: some good answer it may still go
    /// by must lack that instance as usable (the pin wins whenever the VM's
    /// list has it, avoided or not).
    pub fn pin_passed_over(
        &self,
        service: usize,
        pin: u64,
        (gen, configured): (usize, u64),
        now: u64,
        b: &Bounds,
    ) -> Verdict {
        let floor = self.latest_heard(service, gen, configured, now, b);
        let bit = 1u64 << (pin % 64);
        let lacking = self.good[service].iter().any(|a| {
            a.usable_mask & bit == 0
                && a.received <= now
                && floor.is_none_or(|floor| a.sent >= floor)
        });
        if lacking {
            return Ok(());
        }
        Err(format!(
            "s{service} passed over its pin 10.0.{service}.{pin}, but every good answer since \
             the one sent at {floor:?} lists it usable"
        ))
    }

    pub fn no_healthy(
        &self,
        service: usize,
        gen: usize,
        configured: u64,
        now: u64,
        b: &Bounds,
    ) -> Verdict {
        let floor = self.latest_heard(service, gen, configured, now, b);
        let empty = self.good[service].iter().any(|a| {
            a.usable == 0 && a.received <= now && floor.is_none_or(|floor| a.sent >= floor)
        });
        if empty {
            Ok(())
        } else {
            Err(format!(
                "s{service} rejected no_healthy_instance at {now}, but no good answer since \
                 the one sent at {floor:?} lists no usable instance"
            ))
        }
    }
}
