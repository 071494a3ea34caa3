//! A deterministic simulation of a whole gateway around the real [`Engine`]:
//! 1–8 VMs sharing one store with Envoy's semantics, a wall clock that ticks and
//! steps both ways, a churning and failing Nacos, requests from bursts to one a
//! minute, configuration edits, VMs whose callbacks race on shared data, and
//! instances whose process dies while Nacos still lists them (their requests
//! fail with Envoy's upstream-failure flags, which the simulated host hands the
//! engine as `host::http` does).
//! Every event is followed by the checks of `invariants`; a broken one fails
//! the seed and prints the last events that led to it.
//!
//! `make unit` runs `SEEDS`; `make simulate SEEDS=N` runs N more in release mode.
//!
//! [`Engine`]: crate::engine::Engine
// Native only: thousands of seeds would take long under Node, and a seed that
// panics is caught with `catch_unwind`, which wasm32 does not unwind for.
#![cfg(not(target_arch = "wasm32"))]

mod avoidance;
mod invariants;
mod learned;
mod metrics;
mod registry;
mod rng;
mod store;
mod views;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

use world::World;

/// The outcome of one seed: the events it ran and its worst share deviation, or
/// what broke with the trace that reproduces it.
pub fn run_seed(seed: u64) -> Result<(u64, f64, usize), String> {
    let mut world = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let w = world.insert(World::new(seed));
        w.run()
    }));
    let trace = world.as_ref().map(World::trace).unwrap_or_default();
    match outcome {
        Ok(Ok(())) => {
            let world = world
                .as_ref()
                .map(|w| (w.events, w.share_deviation(), w.vms()));
            Ok(world.unwrap_or_default())
        }
        Ok(Err(broken)) => Err(format!("seed {seed}: {broken}\nlast events:\n{trace}")),
        Err(_) => Err(format!("seed {seed}: panicked\nlast events:\n{trace}")),
    }
}

/// Run `seeds`; fail at the first broken one, or with `keep_going` after all of
/// them, printing the first failure and every failing seed.
fn run_seeds(seeds: impl Iterator<Item = u64>, keep_going: bool) {
    let mut events = 0;
    let mut worst: f64 = 0.0;
    let mut count = 0;
    let mut failed = Vec::new();
    let mut first = None;
    for seed in seeds {
        count += 1;
        match run_seed(seed) {
            Ok((e, deviation, vms)) => {
                events += e;
                worst = worst.max(deviation / vms as f64);
            }
            Err(failure) if keep_going => {
                println!("{}", failure.lines().next().unwrap_or_default());
                failed.push(seed);
                first.get_or_insert(failure);
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!("{count} seeds, {events} events, worst share deviation {worst:.2} requests per VM");
    if let Some(first) = first {
        panic!(
            "{} of {count} seeds failed: {failed:?}\nfirst: {first}",
            failed.len()
        );
    }
}

/// Seeds that once broke an invariant, kept as regression tests while they still
/// exercise what they found. The code bugs of seeds 18 (a poller that lost the
/// lease while stalled polled from its late answer) and 3386 (it took that
/// answer into its snapshot and kept it) are pinned by gateway tests instead:
/// with either fix reverted, its seed passes now, and its gateway test fails
/// (`a_poller_that_lost_the_lease_while_stalled_sends_nothing_when_its_answer_comes`,
/// `a_former_pollers_late_answer_does_not_outlive_the_new_pollers_confirmations`). Bounds of
/// the contract that were too tight: 1085 (shares counted before every VM had
/// the final list), 1144 (a poll in flight that will time out), 1165 (a failed
/// login holding polls back), 1311 (a login backoff after an edit), 1415 (a
/// whole-gateway stop, which the gateway clock does not count), 4702 (an answer
/// followers cannot know of: the poller stalled before its next heartbeat),
/// 2707 (a follower reading the store as it was just before that heartbeat).
/// Seed 74: a poller that asked for a poll for its own failed request polled
/// twice, the asked poll going from an answer callback and its next tick
/// polling again (`Engine::on_instance_failure` notes the ask now). Seed 33
/// found it, and stopped failing without the fix once filters and pins were
/// drawn; 74 fails without it. Seed 1208, with an edit's old root contexts
/// lingering: a poller's list older than the other configuration's stored one
/// reached none of its followers, which kept a deregistered instance
/// (`sharing::publish_content` keeps it under its writer's key now; with that
/// reverted, 1208 and 1167 of 1000-1599 fail). Seed 283, with a flap that
/// one configuration's poll alone caught: a slow answer's confirmation written
/// over a later one (`sharing::publish_confirmed` only moves it forward now).
/// Seed 1493: a flap list of a configuration gone, the newest content stored,
/// which a new configuration started from (`sharing::read_start` takes the
/// list confirmed after it now). Seed 2219: a follower took a new poller's
/// confirmation of a list it could not read (another configuration's, written
/// over since) for its own, deregistered since, and routed to it 15 s on
/// (`Targets::follow_heartbeat` confirms only the content it names now). Seed
/// 3610: a root context started while the poller's write of a new list had
/// lost every compare-and-swap (`Targets::write_unpublished` writes it again
/// on the next tick). Seed 3461: a lingering configuration's late flap list
/// written over a list confirmed after it (`sharing::publish_content` keeps it
/// apart now). Bounds too tight, of the same search (2000–3999): 3985 (an idle
/// service refused a place), 2684 and 2896 (a new poller's held empty
/// answers), 2626 (the store's order of lists), 2862 and 3645 (a push link on
/// a clock a stall held back). Bounds too tight, of 4000–5999: 4972 (a
/// request left alone touches nothing), 4587 (a service idle before its first
/// poll), 5697 (a change just after an emptying one).
const REGRESSIONS: &[u64] = &[
    1085, 1144, 1165, 1311, 1415, 4702, 2707, 74, 1208, 283, 1493, 2219, 3610, 3461, 3985, 2684,
    2896, 2626, 2862, 3645, 4972, 4587, 5697, 4311, 5496, 4335, 2045, 3144,
];

/// The number in environment variable `name`, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeds `make unit` runs after the regressions: about 40 s in debug mode.
const SEEDS: u64 = 250;

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn simulated_gateways_keep_the_contract() {
    // `make mutants` runs every mutant against the unit tests: a smaller budget
    // of seeds there (`SIM_UNIT_SEEDS`) keeps it to hours, not days.
    let seeds = env_number("SIM_UNIT_SEEDS", SEEDS);
    run_seeds(REGRESSIONS.iter().copied().chain(1..=seeds), false);
}

/// `make simulate SEEDS=N [FIRST=K]`: N seeds from K, in release mode
/// (`SIM_KEEP_GOING=1`: run them all and list the failing ones).
#[cfg(not(target_arch = "wasm32"))]
#[test]
#[ignore]
fn simulate() {
    let first = env_number("SIM_FIRST", 1_000);
    let count = env_number("SIM_SEEDS", 1_000);
    run_seeds(
        first..first + count,
        std::env::var_os("SIM_KEEP_GOING").is_some(),
    );
}
