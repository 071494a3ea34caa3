//! A simulated Nacos: services whose instances register, deregister, change
//! weight and flip health, and the tokens it handed out. It remembers since when
//! each instance stopped being usable, which is what the invariants judge by.

use std::collections::BTreeMap;

use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
}

impl Host {
    pub fn usable(&self) -> bool {
        self.healthy && self.enabled && self.weight > 0.0
    }
}

#[derive(Default)]
pub struct Service {
    pub hosts: BTreeMap<String, Host>,
    /// Endpoint → when it stopped being usable (absent while usable).
    stopped: BTreeMap<String, u64>,
    /// When its last instance was deregistered, each time.
    emptied: Vec<u64>,
}

impl Service {
    /// `None` while `endpoint` is usable; else since when it is not (0: never was).
    pub fn unusable_since(&self, endpoint: &str) -> Option<u64> {
        if self.hosts.get(endpoint).is_some_and(Host::usable) {
            return None;
        }
        Some(self.stopped.get(endpoint).copied().unwrap_or(0))
    }

    /// Whether its last instance was deregistered at `since` or later: the
    /// plugin then polls once more before it takes the empty list.
    pub fn emptied_since(&self, since: u64) -> bool {
        self.emptied.last().is_some_and(|at| *at >= since)
    }

    pub fn usable(&self) -> impl Iterator<Item = (&String, &Host)> {
        self.hosts.iter().filter(|(_, host)| host.usable())
    }

    fn change(&mut self, endpoint: &str, host: Option<Host>, now: u64) {
        let was = self.hosts.get(endpoint).is_some_and(Host::usable);
        match host {
            Some(host) => self.hosts.insert(endpoint.to_string(), host),
            None => self.hosts.remove(endpoint),
        };
        let is = self.hosts.get(endpoint).is_some_and(Host::usable);
        if was && !is {
            self.stopped.insert(endpoint.to_string(), now);
        }
        if is {
            self.stopped.remove(endpoint);
        }
        if host.is_none() && self.hosts.is_empty() {
            self.emptied.push(now);
        }
    }

    /// The v1 list answer, hosts in a stable order so that the same instances
    /// give the same bytes (unless `ref_time` stamps each answer, as Nacos does).
    pub fn body(&self, name: &str, ref_time: Option<u64>) -> Vec<u8> {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(endpoint, host)| {
                let (ip, port) = endpoint.split_once(':').unwrap_or((endpoint, "80"));
                format!(
                    r#"{{"ip":"{ip}","port":{port},"weight":{},"healthy":{},"enabled":{}}}"#,
                    host.weight, host.healthy, host.enabled
                )
            })
            .collect();
        let ref_time = ref_time.map_or(String::new(), |t| format!(r#","lastRefTime":{t}"#));
        format!(
            r#"{{"name":"{name}","hosts":[{}]{ref_time}}}"#,
            hosts.join(",")
        )
        .into_bytes()
    }
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
                let host = Host {
                    weight: rng.pick(&WEIGHTS[1..]),
                    healthy: !rng.chance(100),
                    enabled: true,
                };
                service.change(&format!("10.0.{s}.{n}:80"), Some(host), 0);
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
        service.change(&endpoint, new, now);
        (s, format!("{what} s{s} {endpoint} -> {new:?}"))
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
