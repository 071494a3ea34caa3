//! The contract for instances that die while Nacos still lists them
//! (`engine::avoidance`, docs/behaviour.md "Instances that fail before Nacos
//! knows"), checked against the simulator's own model of the avoided set: the
//! failures the simulated host fed the engine, judged by the registry's list
//! and the rules the README states (`avoidFailedMs`, `maxAvoidedPercent`, one
//! ask for a poll per service per second). Where the model cannot know what the
//! engine saw (its list may differ from the registry's, a clock stepped, a
//! boundary is too close to call), it says so and checks nothing about that
//! service until every avoidance it may have missed has ended.

use std::collections::BTreeMap;

use super::invariants::Verdict;
use crate::pure::routing::avoidance::POLL_ASK_INTERVAL_MS;

/// How many of `usable` instances may be avoided at once, as the README states
/// it (written here again, not taken from the code it checks): `percent` of
/// them rounded down, at least one, never all.
fn max_avoided(usable: usize, percent: u64) -> usize {
    if usable <= 1 {
        return 0;
    }
    (usable * percent.min(100) as usize / 100).clamp(1, usable - 1)
}

/// What the gateway's avoidance is configured to do.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub avoid_ms: u64,
    pub max_avoided_percent: u64,
    /// How far a VM's gateway clock may be from simulation time when it acts on
    /// a failure or an end (its clock is read on its tick, and VMs' readings
    /// differ by up to a tick): two late ticks and 2 ms.
    pub slack: u64,
    /// A failure that asks for a poll → that poll sent, all going well: the
    /// poller reads the ask on its next tick (or the one after, on a racing
    /// view), a poll in flight answers first, and the poll goes on a tick.
    pub poll_within: u64,
}

/// One instance the model knows avoided.
#[derive(Debug, Clone)]
struct Entry {
    until: u64,
    /// The first failure of this avoidance: when, by which VM, and each VM's
    /// tick count then.
    noticed_at: u64,
    noticer: usize,
    ticks_at: Vec<u64>,
}

#[derive(Debug, Default)]
struct ServiceModel {
    entries: BTreeMap<String, Entry>,
    /// Until then the model may have missed an avoidance: nothing is checked.
    uncertain_until: u64,
    /// The latest time a VM may have asked for a poll of this service, on the
    /// gateway clock of the VM that asked.
    last_possible_ask: Option<u64>,
    /// The latest time a VM certainly asked.
    last_sure_ask: Option<u64>,
    /// When the latest avoidance the model knew of ended.
    last_end: u64,
}

/// A failed request the simulated host handed the engine.
pub struct Failure<'a> {
    pub service: usize,
    pub endpoint: &'a str,
    pub at: u64,
    /// The gateway clock the VM read last, which the engine judges by.
    pub at_gw: u64,
    pub vm: usize,
    /// The VM's list of the service did not change between routing and the
    /// response (else the engine may drop the failure: the index may name
    /// another instance now).
    pub same_list: bool,
    /// The engine's list is certainly the registry's `usable` (no registry change
    /// or trouble for a while) and no clock stepped or stood still.
    pub calm: bool,
    pub usable: &'a [String],
    /// If it asks for a poll, when that poll is sent by at the latest, all
    /// going well: the calls in flight answer, the services due before it go
    /// first, and the poller reads the ask on a tick.
    pub poll_by: u64,
    /// How much the service's `instance_failures` and `instances_avoided` moved.
    pub failures_delta: u64,
    pub avoided_delta: u64,
}

pub struct AvoidChecks {
    pub policy: Policy,
    services: Vec<ServiceModel>,
    /// Per root context: its ticks so far, and when it last ticked.
    ticks: Vec<(u64, u64)>,
    /// Polls due: (deadline, service, asked at).
    polls_due: Vec<(u64, usize, u64)>,
    /// When the last failure reached an engine.
    pub last_failure: Option<u64>,
    /// Failures fed to engines, and those that asked for a poll for certain.
    pub failures: u64,
    pub asks: u64,
}

impl AvoidChecks {
    pub fn new(services: usize, policy: Policy) -> Self {
        Self {
            policy,
            services: (0..services).map(|_| ServiceModel::default()).collect(),
            ticks: Vec::new(),
            polls_due: Vec::new(),
            last_failure: None,
            failures: 0,
            asks: 0,
        }
    }

    pub fn ticked(&mut self, vm: usize, at: u64) {
        if self.ticks.len() <= vm {
            self.ticks.resize(vm + 1, (0, 0));
        }
        self.ticks[vm].0 += 1;
        self.ticks[vm].1 = at;
    }

    fn ticks_of(&self, vm: usize) -> (u64, u64) {
        self.ticks.get(vm).copied().unwrap_or((0, 0))
    }

    /// Take a failure: check what the metrics say of it, and update the model.
    /// True if the engine may have asked for a poll (then the poll-gap
    /// invariant allows one early poll).
    pub fn failure(&mut self, f: &Failure<'_>) -> Result<bool, String> {
        let Policy {
            avoid_ms, slack, ..
        } = self.policy;
        let (s, at) = (f.service, f.at);
        self.failures += 1;
        self.last_failure = Some(at);
        if f.failures_delta > 1 || (f.same_list && f.failures_delta != 1) {
            return Err(format!(
                "s{s}: instance_failures moved by {} for one failed request to {} (its list \
                 unchanged since routing: {})",
                f.failures_delta, f.endpoint, f.same_list
            ));
        }
        if f.avoided_delta > 1 || (avoid_ms == 0 && f.avoided_delta != 0) {
            return Err(format!(
                "s{s}: instances_avoided moved by {} for one failure of {} (avoidFailedMs {avoid_ms})",
                f.avoided_delta, f.endpoint
            ));
        }
        let ticks: Vec<u64> = self.ticks.iter().map(|t| t.0).collect();
        let model = &mut self.services[s];
        // The ask for a poll, at most once per service per second gateway-wide.
        // Judged on the gateway clock, as the engine does (it counts a wall
        // clock step as 50 ms, whatever simulation time says). The last ask
        // lies between the last certain one and the last possible one. A
        // failure whose list changed since routing asks only if the engine
        // still finds its instance (its guard was not rebuilt yet): possibly.
        let since = |ask: Option<u64>| ask.map_or(u64::MAX, |a| f.at_gw.saturating_sub(a));
        let must = f.same_list && since(model.last_possible_ask) >= POLL_ASK_INTERVAL_MS + slack;
        let may_ask = since(model.last_sure_ask).saturating_add(slack) >= POLL_ASK_INTERVAL_MS;
        if must {
            model.last_sure_ask = Some(f.at_gw);
            if f.calm {
                self.asks += 1;
                self.polls_due.push((f.poll_by, s, at));
            }
        }
        if may_ask {
            model.last_possible_ask = Some(f.at_gw);
        }
        if avoid_ms == 0 {
            return Ok(may_ask);
        }
        let uncertain = |model: &mut ServiceModel| {
            model.uncertain_until = model.uncertain_until.max(at + avoid_ms + slack);
            model.entries.clear();
            Ok(may_ask)
        };
        if !f.same_list || !f.calm || at < model.uncertain_until {
            return uncertain(model);
        }
        if !f.usable.iter().any(|e| e == f.endpoint) {
            if f.avoided_delta != 0 {
                return Err(format!(
                    "s{s}: {} avoided, but it is not a usable instance of the service",
                    f.endpoint
                ));
            }
            return Ok(may_ask);
        }
        if let Some(entry) = model.entries.get_mut(f.endpoint) {
            if entry.until > at + slack {
                // Extended: avoided already, so not counted again.
                entry.until = at + avoid_ms;
                if f.avoided_delta != 0 {
                    return Err(format!(
                        "s{s}: {} counted in instances_avoided again at {at} while avoided \
                         (until about {})",
                        f.endpoint, entry.until
                    ));
                }
                return Ok(may_ask);
            }
            if entry.until + slack > at {
                return uncertain(model);
            }
        }
        let others = |margin: i64| {
            model
                .entries
                .iter()
                .filter(|(e, _)| e.as_str() != f.endpoint && f.usable.contains(e))
                .filter(|(_, entry)| entry.until as i64 > at as i64 + margin)
                .count()
        };
        let (surely, maybe) = (others(slack as i64), others(-(slack as i64)));
        let room = max_avoided(f.usable.len(), self.policy.max_avoided_percent);
        if surely >= room {
            // At the bound: counted and asked, nothing more avoided.
            if f.avoided_delta != 0 {
                return Err(format!(
                    "s{s}: {} avoided at {at} beyond maxAvoidedPercent {}: {surely} of {} \
                     usable instances were avoided already ({:?})",
                    f.endpoint,
                    self.policy.max_avoided_percent,
                    f.usable.len(),
                    model.entries.keys().collect::<Vec<_>>()
                ));
            }
            return Ok(may_ask);
        }
        if maybe >= room {
            return uncertain(model);
        }
        if f.avoided_delta != 1 {
            return Err(format!(
                "s{s}: {} failed at {at} with room to avoid it ({surely} of {room} avoided, {} \
                 usable), but instances_avoided moved by {}",
                f.endpoint,
                f.usable.len(),
                f.avoided_delta
            ));
        }
        model.entries.insert(
            f.endpoint.to_string(),
            Entry {
                until: at + avoid_ms,
                noticed_at: at,
                noticer: f.vm,
                ticks_at: ticks,
            },
        );
        Ok(may_ask)
    }

    /// Forget avoidances ended for certain by `now`, keeping when the last ended.
    fn expire(&mut self, s: usize, now: u64) {
        let slack = self.policy.slack;
        let model = &mut self.services[s];
        let ended: Vec<(String, u64)> = model
            .entries
            .iter()
            .filter(|(_, e)| e.until + slack < now)
            .map(|(k, e)| (k.clone(), e.until))
            .collect();
        for (endpoint, until) in ended {
            model.entries.remove(&endpoint);
            model.last_end = model.last_end.max(until);
        }
    }

    /// When the avoidance of `endpoint` the model knows of began.
    pub fn noticed_at(&self, s: usize, endpoint: &str) -> Option<u64> {
        self.services[s].entries.get(endpoint).map(|e| e.noticed_at)
    }

    /// VM `vm` routed a request of service `s` to `endpoint`, whose process is
    /// dead. Once the VM heard of its avoidance (its own failure, or two of its
    /// ticks since another VM's: one reads the shared log, the second covers a
    /// tick that raced the write), no request goes there until the avoidance
    /// ends. `calm`: the engines' list of `s` was the registry's from the first
    /// failure on (a list that shrank may leave less room to avoid).
    pub fn routed_to_dead(
        &mut self,
        s: usize,
        endpoint: &str,
        vm: usize,
        at: u64,
        calm: bool,
    ) -> Verdict {
        self.expire(s, at);
        let slack = self.policy.slack;
        let model = &self.services[s];
        if self.policy.avoid_ms == 0 || at < model.uncertain_until {
            return Ok(());
        }
        let Some(entry) = model.entries.get(endpoint) else {
            return Ok(());
        };
        if at + slack >= entry.until || !calm {
            return Ok(());
        }
        let ticks = self.ticks_of(vm).0;
        let before = entry.ticks_at.get(vm).copied().unwrap_or(0);
        let heard = vm == entry.noticer || ticks >= before + 2;
        if heard {
            return Err(format!(
                "s{s}: VM {vm} routed a request to {endpoint}, dead and avoided: it failed at {} \
                 on VM {}, avoided until about {} ({} ticks of VM {vm} since)",
                entry.noticed_at,
                entry.noticer,
                entry.until,
                ticks - before
            ));
        }
        Ok(())
    }

    /// What VM `vm`'s guard of service `s` skips at `at`: `skipped` of its
    /// `candidates`. Never more than `maxAvoidedPercent` allows, never all; and
    /// nothing once every avoidance ended and the VM ticked since
    /// (`clock_moved(t)`: the gateway clock stepped or stood still since `t`).
    pub fn skipped(
        &mut self,
        s: usize,
        vm: usize,
        at: u64,
        (skipped, candidates): (usize, usize),
        clock_moved: impl Fn(u64) -> bool,
    ) -> Verdict {
        let room = max_avoided(candidates, self.policy.max_avoided_percent);
        if skipped > room || (candidates > 0 && skipped >= candidates) {
            return Err(format!(
                "s{s}: VM {vm} skips {skipped} of its {candidates} instances, beyond \
                 maxAvoidedPercent {} (at most {room}, never all)",
                self.policy.max_avoided_percent
            ));
        }
        self.expire(s, at);
        let slack = self.policy.slack;
        let model = &self.services[s];
        let ended = model.last_end.max(model.uncertain_until);
        let last_tick = self.ticks_of(vm).1;
        // The gateway clock ends avoidances: a step or a stop since they began
        // moves that end in simulation time.
        let began = ended.saturating_sub(self.policy.avoid_ms + slack);
        if skipped > 0
            && model.entries.is_empty()
            && at >= model.uncertain_until
            && last_tick > ended + slack
            && !clock_moved(began)
        {
            return Err(format!(
                "s{s}: VM {vm} still skips {skipped} of {candidates} instances at {at}, but every \
                 avoidance ended by about {ended} (avoidFailedMs {}) and it ticked at {last_tick}",
                self.policy.avoid_ms
            ));
        }
        Ok(())
    }

    /// The polls asked for whose deadline passed by `now`: (service, asked at,
    /// deadline).
    pub fn polls_due(&mut self, now: u64) -> Vec<(usize, u64, u64)> {
        let due: Vec<(usize, u64, u64)> = self
            .polls_due
            .iter()
            .filter(|d| d.0 <= now)
            .map(|(deadline, s, at)| (*s, *at, *deadline))
            .collect();
        self.polls_due.retain(|d| d.0 > now);
        due
    }

    /// When every avoidance the model knows of, or may have missed, has ended.
    pub fn quiet_from(&self) -> u64 {
        let Some(last) = self.last_failure else {
            return 0;
        };
        last + self.policy.avoid_ms + self.policy.slack
    }
}
