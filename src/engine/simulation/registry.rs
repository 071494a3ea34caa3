//! A simulated Nacos: services whose instances register, deregister, change
//! weight and flip health, and the tokens it handed out. It remembers since when
//! each instance stopped being usable, which is what the invariants judge by.
//! Apart from what Nacos lists, an instance's process can be dead: Nacos still
//! lists it until it learns, and every request routed to it fails.

use std::collections::{BTreeMap, BTreeSet};

use super::rng::Rng;
use super::views::{cluster_of, first_version, View, VERSIONS};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    /// Its `version` metadata.
    pub version: &'static str,
}

#[derive(Default)]
pub struct Service {
    pub hosts: BTreeMap<String, Host>,
    /// What the guard of this service routes to beyond health (its filters).
    pub view: View,
    /// Answers reach the protection threshold: Nacos lists every instance
    /// healthy, so health is unknown and the guard routes by the rest.
    protected: bool,
    /// Endpoint → when it stopped being usable (absent while usable).
    stopped: BTreeMap<String, u64>,
    /// When its last instance was deregistered, each time.
    emptied: Vec<u64>,
    /// Instances whose process is dead, listed or not: their connections fail.
    dead: BTreeSet<String>,
}

impl Service {
    /// Whether the guard may route to `endpoint`: listed enabled and weighted,
    /// healthy unless the protection threshold hides health, and in its view.
    fn usable_host(&self, endpoint: &str, host: &Host) -> bool {
        host.enabled
            && host.weight > 0.0
            && (host.healthy || self.protected)
            && self.view.admits(endpoint, host.version)
    }

    fn is_usable(&self, endpoint: &str) -> bool {
        self.hosts
            .get(endpoint)
            .is_some_and(|host| self.usable_host(endpoint, host))
    }

    /// `None` while `endpoint` is usable; else since when it is not (0: never was).
    pub fn unusable_since(&self, endpoint: &str) -> Option<u64> {
        if self.is_usable(endpoint) {
            return None;
        }
        Some(self.stopped.get(endpoint).copied().unwrap_or(0))
    }

    /// Whether its last instance was deregistered at `since` or later: the
    /// plugin then polls once more before it takes the empty list.
    pub fn emptied_since(&self, since: u64) -> bool {
        self.emptied.last().is_some_and(|at| *at >= since)
    }

    /// Whether a request routed to `endpoint` fails: its process is dead.
    pub fn is_dead(&self, endpoint: &str) -> bool {
        self.dead.contains(endpoint)
    }

    pub fn usable(&self) -> impl Iterator<Item = (&String, &Host)> {
        self.hosts
            .iter()
            .filter(|(endpoint, host)| self.usable_host(endpoint, host))
    }

    fn change(&mut self, endpoint: &str, host: Option<Host>, now: u64) {
        let was = self.is_usable(endpoint);
        match host {
            Some(host) => self.hosts.insert(endpoint.to_string(), host),
            None => self.hosts.remove(endpoint),
        };
        self.note_usable(endpoint, was, now);
        if host.is_none() && self.hosts.is_empty() {
            self.emptied.push(now);
        }
    }

    fn note_usable(&mut self, endpoint: &str, was: bool, now: u64) {
        let is = self.is_usable(endpoint);
        if was && !is {
            self.stopped.insert(endpoint.to_string(), now);
        }
        if is {
            self.stopped.remove(endpoint);
        }
    }

    /// The service's answers reach the protection threshold, or leave it: the
    /// unhealthy instances are usable while they do.
    pub fn set_protected(&mut self, protected: bool, now: u64) {
        let endpoints: Vec<String> = self.hosts.keys().cloned().collect();
        let was: Vec<bool> = endpoints.iter().map(|e| self.is_usable(e)).collect();
        self.protected = protected;
        for (endpoint, was) in endpoints.iter().zip(was) {
            self.note_usable(endpoint, was, now);
        }
    }

    /// The usable instances as a mask of their address numbers.
    pub fn usable_mask(&self) -> u64 {
        self.usable()
            .map(|(endpoint, _)| 1u64 << (super::views::endpoint_number(endpoint) % 64))
            .fold(0, |mask, bit| mask | bit)
    }

    /// The v1 list answer, hosts in a stable order so that the same instances
    /// give the same bytes (unless `ref_time` stamps each answer, as Nacos does).
    pub fn body(&self, name: &str, ref_time: Option<u64>) -> Vec<u8> {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(endpoint, host)| {
                let (ip, port) = endpoint.split_once(':').unwrap_or((endpoint, "80"));
                let described = if self.view.described {
                    format!(
                        r#","clusterName":"{}","metadata":{{"version":"{}"}}"#,
                        cluster_of(endpoint),
                        host.version
                    )
                } else {
                    String::new()
                };
                format!(
                    r#"{{"ip":"{ip}","port":{port},"weight":{},"healthy":{},"enabled":{}{described}}}"#,
                    host.weight,
                    host.healthy || self.protected,
                    host.enabled
                )
            })
            .collect();
        let ref_time = ref_time.map_or(String::new(), |t| format!(r#","lastRefTime":{t}"#));
        let protection = if self.protected {
            r#","reachProtectionThreshold":true"#
        } else {
            ""
        };
        format!(
            r#"{{"name":"{name}","hosts":[{}]{ref_time}{protection}}}"#,
            hosts.join(",")
        )
        .into_bytes()
    }
}

/// A flap of one instance, to undo: what it was before, and what the flap
/// made it (`None`: nothing to undo).
#[derive(Debug, Clone, Default)]
pub struct Flap {
    pub service: usize,
    pub endpoint: String,
    before: Option<Host>,
    during: Option<Host>,
}

pub struct Registry {
    pub services: Vec<Service>,
    /// Token → when Nacos stops accepting it (simulation time).
    tokens: BTreeMap<String, u64>,
    issued: u64,
}

/// Per mille of registry changes that empty a service.
const EMPTY_PER_MILLE: u64 = 200;

const WEIGHTS: [f64; 6] = [0.0, 0.5, 1.0, 1.0, 2.0, 3.0];

impl Registry {
    pub fn new(services: usize, rng: &mut Rng) -> Self {
        let mut registry = Self {
            services: (0..services).map(|_| Service::default()).collect(),
            tokens: BTreeMap::new(),
            issued: 0,
        };
        for (s, service) in registry.services.iter_mut().enumerate() {
            for n in 1..=rng.between(0, 4) {
                let endpoint = format!("10.0.{s}.{n}:80");
                let host = Host {
                    weight: rng.pick(&WEIGHTS[1..]),
                    healthy: !rng.chance(100),
                    enabled: true,
                    version: first_version(&endpoint),
                };
                service.change(&endpoint, Some(host), 0);
            }
        }
        registry
    }

    /// One random change to one service at `now`: which, and what it did.
    pub fn churn(&mut self, rng: &mut Rng, now: u64) -> (usize, String) {
        let s = rng.below(self.services.len() as u64) as usize;
        let service = &mut self.services[s];
        // Every instance of the service deregistered at once: the empty list that
        // Higress's Nacos client ignores, which this plugin exists to obey.
        if !service.hosts.is_empty() && rng.chance(EMPTY_PER_MILLE) {
            return (s, self.empty(s, now));
        }
        let endpoint = format!("10.0.{s}.{}:80", rng.between(1, 6));
        let host = service.hosts.get(&endpoint).copied();
        let (what, new) = match (host, rng.below(5)) {
            (None, _) => (
                "register",
                Some(Host {
                    weight: rng.pick(&WEIGHTS[1..]),
                    healthy: true,
                    enabled: true,
                    version: first_version(&endpoint),
                }),
            ),
            (Some(_), 0 | 1) => ("deregister", None),
            (Some(host), 2) => (
                "weight",
                Some(Host {
                    weight: rng.pick(&WEIGHTS),
                    ..host
                }),
            ),
            (Some(host), 3) => (
                "health",
                Some(Host {
                    healthy: !host.healthy,
                    ..host
                }),
            ),
            (Some(host), _) => (
                "enabled",
                Some(Host {
                    enabled: !host.enabled,
                    ..host
                }),
            ),
        };
        if what == "register" {
            // A new process: whatever died at that address before is gone.
            service.dead.remove(&endpoint);
        }
        service.change(&endpoint, new, now);
        (s, format!("{what} s{s} {endpoint} -> {new:?}"))
    }

    /// The views the guards of the services route by.
    pub fn set_views(&mut self, views: &[View]) {
        for (service, view) in self.services.iter_mut().zip(views) {
            service.view = view.clone();
            service.stopped.clear();
        }
    }

    /// From a generator of its own: service `s`'s answers reach the protection
    /// threshold or leave it, or an instance's `version` changes; what it did.
    pub fn relabel(&mut self, rng: &mut Rng, now: u64) -> (usize, String) {
        let s = rng.below(self.services.len() as u64) as usize;
        let service = &mut self.services[s];
        if rng.chance(300) {
            let protected = !service.protected;
            service.set_protected(protected, now);
            return (s, format!("s{s} protection threshold reached: {protected}"));
        }
        let endpoint = format!("10.0.{s}.{}:80", rng.between(1, 6));
        let Some(host) = service.hosts.get(&endpoint).copied() else {
            return (s, format!("s{s} {endpoint} not listed: no metadata change"));
        };
        let version = VERSIONS[usize::from(host.version == VERSIONS[0])];
        service.change(&endpoint, Some(Host { version, ..host }), now);
        (s, format!("s{s} {endpoint} metadata version {version}"))
    }

    /// A brief flap of a service: an instance registers that deregisters soon
    /// after (`blip`), or a healthy one turns unhealthy and back (a missed
    /// health check). What it did, and the undoing ([`Registry::settle`]).
    pub fn flap(&mut self, rng: &mut Rng, now: u64) -> (String, Flap) {
        let s = rng.below(self.services.len() as u64) as usize;
        self.flap_of(rng, s, now)
    }

    /// A brief flap of service `s`, as [`Registry::flap`].
    pub fn flap_of(&mut self, rng: &mut Rng, s: usize, now: u64) -> (String, Flap) {
        let Some(service) = self.services.get_mut(s) else {
            return (String::new(), Flap::default());
        };
        let healthy: Vec<String> = service
            .hosts
            .iter()
            .filter(|(_, host)| host.healthy)
            .map(|(endpoint, _)| endpoint.clone())
            .collect();
        if healthy.is_empty() || rng.chance(800) {
            return self.blip(s, now);
        }
        let endpoint = healthy[rng.below(healthy.len() as u64) as usize].clone();
        let Some(host) = service.hosts.get(&endpoint).copied() else {
            return (String::new(), Flap::default());
        };
        let during = Host {
            healthy: false,
            ..host
        };
        service.change(&endpoint, Some(during), now);
        let what = format!("s{s} {endpoint} flaps to {during:?}");
        let undo = Flap {
            service: s,
            endpoint,
            before: Some(host),
            during: Some(during),
        };
        (what, undo)
    }

    /// An instance of service `s` registers that deregisters soon after (a
    /// process that crashes on start): churn uses addresses 1 to 6, 7 is the
    /// flaps' own. What it did, and the undoing.
    fn blip(&mut self, s: usize, now: u64) -> (String, Flap) {
        let Some(service) = self.services.get_mut(s) else {
            return (String::new(), Flap::default());
        };
        let endpoint = format!("10.0.{s}.7:80");
        let during = Host {
            weight: 1.0,
            healthy: true,
            enabled: true,
            version: first_version(&endpoint),
        };
        let before = service.hosts.get(&endpoint).copied();
        service.change(&endpoint, Some(during), now);
        let what = format!("s{s} {endpoint} flaps to {during:?}");
        let undo = Flap {
            service: s,
            endpoint,
            before,
            during: Some(during),
        };
        (what, undo)
    }

    /// Undo `flap` at `now` unless a later change of its instance came first;
    /// whether it did.
    pub fn settle(&mut self, flap: &Flap, now: u64) -> bool {
        let Some(service) = self.services.get_mut(flap.service) else {
            return false;
        };
        if flap.during.is_none() || service.hosts.get(&flap.endpoint).copied() != flap.during {
            return false;
        }
        service.change(&flap.endpoint, flap.before, now);
        true
    }

    /// Deregister every instance of service `s` at `now`; says what it did.
    pub fn empty(&mut self, s: usize, now: u64) -> String {
        let Some(service) = self.services.get_mut(s) else {
            return String::new();
        };
        let endpoints: Vec<String> = service.hosts.keys().cloned().collect();
        for endpoint in &endpoints {
            service.change(endpoint, None, now);
        }
        format!("deregister every instance of s{s}: {endpoints:?}")
    }

    /// The process of a usable instance of service `s` dies while Nacos still
    /// lists it; which, if any.
    pub fn die(&mut self, s: usize, rng: &mut Rng) -> Option<String> {
        let service = self.services.get_mut(s)?;
        let alive: Vec<String> = service
            .usable()
            .map(|(endpoint, _)| endpoint.clone())
            .filter(|endpoint| !service.dead.contains(endpoint))
            .collect();
        if alive.is_empty() {
            return None;
        }
        let endpoint = alive[rng.below(alive.len() as u64) as usize].clone();
        service.dead.insert(endpoint.clone());
        Some(endpoint)
    }

    /// A dead process of service `s` starts again (the same address); which.
    pub fn revive(&mut self, s: usize, rng: &mut Rng) -> Option<String> {
        let service = self.services.get_mut(s)?;
        let dead: Vec<String> = service.dead.iter().cloned().collect();
        if dead.is_empty() {
            return None;
        }
        let endpoint = dead[rng.below(dead.len() as u64) as usize].clone();
        service.dead.remove(&endpoint);
        Some(endpoint)
    }

    /// Every dead process starts again.
    pub fn revive_all(&mut self) {
        for service in &mut self.services {
            service.dead.clear();
        }
    }

    /// Nacos learns that `endpoint` of service `s` died (its heartbeats stopped,
    /// or a health check failed): it lists it unhealthy, if it still lists it
    /// and it is still dead.
    pub fn learn_dead(&mut self, s: usize, endpoint: &str, now: u64) -> bool {
        let Some(service) = self.services.get_mut(s) else {
            return false;
        };
        let Some(host) = service.hosts.get(endpoint).copied() else {
            return false;
        };
        if !service.dead.contains(endpoint) || !host.healthy {
            return false;
        }
        let host = Host {
            healthy: false,
            ..host
        };
        service.change(endpoint, Some(host), now);
        true
    }

    pub fn issue_token(&mut self, ttl_ms: u64, now: u64) -> String {
        self.issued += 1;
        let token = format!("tok{}", self.issued);
        self.tokens.insert(token.clone(), now + ttl_ms);
        token
    }

    /// Nacos forgets every token early (a restart, a revocation).
    pub fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }

    pub fn accepts(&self, token: Option<&str>, now: u64) -> bool {
        token
            .and_then(|token| self.tokens.get(token))
            .is_some_and(|expires| now < *expires)
    }
}
