//! What `guardNacosRoutes` costs at its bound (issue 24, defect 4): a new
//! poller's first tick, which takes every service in the learned list, a
//! request that learns one more service when the list is nearly full, and the
//! learning VM's next tick, and the poller's next tick, which takes what the
//! request handed in into the list:
//! `cargo bench --no-default-features --bench learned`. The shared data, the
//! outbox and the metrics are the smallest that do what Envoy's do.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nacos_instance_guard::engine::{
    Engine, Metrics, Outbox, OutgoingCall, RequestHost, SharedStore,
};
use nacos_instance_guard::pure::config::{parse, Capabilities, PluginConfig};
use nacos_instance_guard::pure::routing::rules::RequestFacts;
use nacos_instance_guard::pure::routing::upstream_hosts::RoutableHosts;
use nacos_instance_guard::pure::sharing::published::{encode_learned, ConfigKeys};

const SERVICES: usize = 10_000;
/// A gateway clock of today, as Envoy's is: no service was requested since 0.
const NOW_MS: u64 = 1_764_900_000_000;
const CONFIG: &str = r#"{"nacos":{"cluster":"nacos"},"guardNacosRoutes":{"maxServices":10000}}"#;

#[derive(Clone, Default)]
struct Store(BTreeMap<String, (Vec<u8>, u32)>);

impl SharedStore for Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.0.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let current = self.0.get(key).map(|(_, version)| *version);
        if cas.is_some_and(|cas| current != Some(cas)) {
            return false;
        }
        self.0
            .insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        true
    }
}

/// Sends nothing anywhere; every call gets a fresh token.
#[derive(Default)]
struct Calls(u32);

impl Outbox for Calls {
    fn dispatch(&mut self, _call: OutgoingCall<'_>) -> Result<u32, String> {
        self.dispatch_token()
    }
    fn grpc_call(&mut self, _: &[u8], _: &[u8], _: u64) -> Result<u32, String> {
        self.dispatch_token()
    }
    fn grpc_open(&mut self, _: &[u8]) -> Result<u32, String> {
        self.dispatch_token()
    }
    fn grpc_send(&mut self, _: u32, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn grpc_finish(&mut self, _: u32, _: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
    fn grpc_close(&mut self, _: u32) {}
}

impl Calls {
    fn dispatch_token(&mut self) -> Result<u32, String> {
        self.0 += 1;
        Ok(self.0)
    }
}

/// Counters that count nothing, as a host without stats would.
struct NoMetrics;

impl Metrics for NoMetrics {
    fn define_counter(&mut self, _: &str) -> Option<u32> {
        None
    }
    fn define_gauge(&mut self, _: &str) -> Option<u32> {
        None
    }
    fn add(&mut self, _: u32, _: u64) {}
    fn record(&mut self, _: u32, _: u64) {}
}

struct ToCluster(String);

impl RequestFacts for ToCluster {
    fn route_name(&mut self) -> Option<&str> {
        Some("r")
    }
    fn authority(&mut self) -> Option<&str> {
        None
    }
    fn cluster_name(&mut self) -> Option<&str> {
        Some(&self.0)
    }
}

impl RequestHost for ToCluster {
    fn header(&mut self, _: &str) -> Option<String> {
        None
    }
    fn upstream_hosts(&mut self) -> Option<&RoutableHosts> {
        None
    }
}

fn host(index: usize) -> String {
    format!("svc-{index}.DEFAULT-GROUP.public.nacos")
}

/// The key of the learned list: named by the `guardNacosRoutes` settings, it
/// is found where an engine writes it after learning a service.
fn learned_key(config: &PluginConfig) -> Option<String> {
    let mut store = Store::default();
    let mut engine = engine(config, &mut store, 3);
    let mut request = ToCluster(format!("outbound|8080||{}", host(0)));
    engine.on_request(NOW_MS, &mut request, &mut NoMetrics, &mut store);
    // The first tick seeds the lease, the second takes it and lists what the
    // request handed in.
    for now in [NOW_MS, NOW_MS + 10] {
        engine.on_tick(now, &mut Calls::default(), &mut NoMetrics, &mut store);
    }
    store.0.into_keys().find(|key| key.ends_with(".learned"))
}

/// Shared data holding a learned list of `count` services.
fn store_with(key: &str, count: usize) -> Store {
    let mut store = Store::default();
    let hosts: Vec<String> = (0..count).map(host).collect();
    store.set(key, &encode_learned(&hosts), None);
    store
}

fn engine(config: &PluginConfig, store: &mut Store, vm_id: u64) -> Engine {
    let mut engine = Engine::new(config, &mut NoMetrics, vm_id);
    engine.share(
        ConfigKeys::new(CONFIG.as_bytes()),
        vm_id,
        store,
        &mut NoMetrics,
    );
    engine
}

fn benches(c: &mut Criterion) {
    let envoy = Capabilities {
        higress_routing: false,
    };
    let Ok(config) = parse(CONFIG.as_bytes(), envoy) else {
        eprintln!("the benchmark's configuration does not parse");
        return;
    };
    let Some(key) = learned_key(&config) else {
        eprintln!("no engine wrote the learned list");
        return;
    };
    let full = store_with(&key, SERVICES);
    let mut group = c.benchmark_group("guardNacosRoutes at 10,000 services");
    group.sample_size(10);
    group.bench_function(
        "a new poller's first tick takes every listed service",
        |b| {
            b.iter_batched(
                || {
                    let mut store = full.clone();
                    let mut engine = engine(&config, &mut store, 7);
                    // The first tick finds no lease and seeds a vacant one.
                    engine.on_tick(
                        NOW_MS - 1_000,
                        &mut Calls::default(),
                        &mut NoMetrics,
                        &mut store,
                    );
                    (engine, store)
                },
                |(mut engine, mut store)| {
                    engine.on_tick(NOW_MS, &mut Calls::default(), &mut NoMetrics, &mut store);
                    assert!(engine.is_poller());
                    black_box(engine.guards_anything())
                },
                BatchSize::PerIteration,
            )
        },
    );
    let nearly_full = store_with(&key, SERVICES - 1);
    group.bench_function("a request learns the 10,000th service", |b| {
        b.iter_batched(
            || {
                let mut store = nearly_full.clone();
                (engine(&config, &mut store, 9), store)
            },
            |(mut engine, mut store)| {
                let mut request = ToCluster(format!("outbound|8080||{}", host(SERVICES)));
                let action = engine.on_request(NOW_MS, &mut request, &mut NoMetrics, &mut store);
                black_box(format!("{action:?}"))
            },
            BatchSize::PerIteration,
        )
    });
    // The learning VM's next tick looks for what it listed.
    group.bench_function(
        "a follower's next tick looks for the 10,000th service it learned",
        |b| {
            b.iter_batched(
                || {
                    let mut store = nearly_full.clone();
                    let mut poller = engine(&config, &mut store, 5);
                    poller.on_tick(
                        NOW_MS - 20,
                        &mut Calls::default(),
                        &mut NoMetrics,
                        &mut store,
                    );
                    poller.on_tick(
                        NOW_MS - 10,
                        &mut Calls::default(),
                        &mut NoMetrics,
                        &mut store,
                    );
                    let mut follower = engine(&config, &mut store, 9);
                    follower.on_tick(
                        NOW_MS - 10,
                        &mut Calls::default(),
                        &mut NoMetrics,
                        &mut store,
                    );
                    let mut request = ToCluster(format!("outbound|8080||{}", host(SERVICES)));
                    follower.on_request(NOW_MS, &mut request, &mut NoMetrics, &mut store);
                    (follower, store)
                },
                |(mut follower, mut store)| {
                    follower.on_tick(NOW_MS, &mut Calls::default(), &mut NoMetrics, &mut store);
                    assert!(!follower.is_poller());
                    black_box(store.0.len())
                },
                BatchSize::PerIteration,
            )
        },
    );
    // The poller's next tick takes what a follower's request handed in into
    // the list: the list's bytes move here, once per tick, not per request.
    group.bench_function(
        "the poller's next tick lists the 10,000th service a request handed in",
        |b| {
            b.iter_batched(
                || {
                    let mut store = nearly_full.clone();
                    let mut poller = engine(&config, &mut store, 5);
                    for now in [NOW_MS - 20, NOW_MS - 10] {
                        poller.on_tick(now, &mut Calls::default(), &mut NoMetrics, &mut store);
                    }
                    let mut follower = engine(&config, &mut store, 9);
                    let mut request = ToCluster(format!("outbound|8080||{}", host(SERVICES)));
                    follower.on_request(NOW_MS, &mut request, &mut NoMetrics, &mut store);
                    (poller, store)
                },
                |(mut poller, mut store)| {
                    poller.on_tick(NOW_MS, &mut Calls::default(), &mut NoMetrics, &mut store);
                    assert!(poller.is_poller());
                    black_box(store.0.len())
                },
                BatchSize::PerIteration,
            )
        },
    );
    group.finish();
}

criterion_group!(learned, benches);
criterion_main!(learned);
