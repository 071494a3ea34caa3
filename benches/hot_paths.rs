//! Native micro-benchmarks of the functions on the request path and the poll
//! path: `cargo bench --no-default-features --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nacos_instance_guard::pure::config::{DeregisteredPolicy, StalePolicy};
use nacos_instance_guard::pure::polling::nacos::response::parse_instance_list;
use nacos_instance_guard::pure::polling::nacos::ApiVersion;
use nacos_instance_guard::pure::registry::instance::InstanceFilter;
use nacos_instance_guard::pure::registry::snapshot::{Freshness, Snapshot};
use nacos_instance_guard::pure::routing::decision::{decide, Candidates, Policies, RequestView};
use nacos_instance_guard::pure::routing::selection::WeightedRoundRobin;

/// A Nacos v1 answer with `count` instances shaped like real ones.
fn answer(count: usize) -> String {
    let hosts: Vec<String> = (0..count)
        .map(|i| {
            format!(
                r#"{{"instanceId":"10.0.{a}.{b}#8080#DEFAULT#DEFAULT_GROUP@@demo","ip":"10.0.{a}.{b}",
                "port":8080,"weight":{w}.0,"healthy":true,"enabled":true,"ephemeral":false,
                "clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@demo",
                "metadata":{{"zone":"z{z}","version":"1.2.3"}},"instanceHeartBeatInterval":5000,
                "ipDeleteTimeout":30000,"instanceHeartBeatTimeOut":15000}}"#,
                a = i / 250,
                b = i % 250 + 1,
                w = i % 5 + 1,
                z = i % 3
            )
        })
        .collect();
    format!(
        r#"{{"name":"DEFAULT_GROUP@@demo","groupName":"DEFAULT_GROUP","clusters":"",
        "cacheMillis":10000,"hosts":[{}],"lastRefTime":1700000000000,"checksum":"",
        "allIPs":false,"reachProtectionThreshold":false,"valid":true}}"#,
        hosts.join(",")
    )
}

fn candidates(count: usize) -> Candidates {
    let set =
        parse_instance_list(ApiVersion::V1, 200, answer(count).as_bytes()).unwrap_or_default();
    let mut snapshot = Snapshot::default();
    snapshot.accept(set, 0);
    let mut candidates = Candidates::default();
    candidates.refresh(&snapshot, &InstanceFilter::default());
    candidates
}

const POLICIES: Policies = Policies {
    on_stale: StalePolicy::FailOpen,
    on_deregistered: DeregisteredPolicy::Reroute,
};

fn benches(c: &mut Criterion) {
    let body = answer(100);
    c.bench_function("parse a 100-instance v1 answer", |b| {
        b.iter(|| parse_instance_list(ApiVersion::V1, 200, black_box(body.as_bytes())))
    });

    for count in [10, 100] {
        let mut picker = WeightedRoundRobin::default();
        picker.reset((0..count).map(|i| (i % 5 + 1) as f64));
        c.bench_function(&format!("weighted pick among {count}"), |b| {
            b.iter(|| black_box(picker.pick()))
        });

        let mut prepared = candidates(count);
        c.bench_function(&format!("decide among {count} instances"), |b| {
            b.iter(|| {
                matches!(
                    decide(
                        &mut prepared,
                        Freshness::Fresh,
                        POLICIES,
                        RequestView::default()
                    ),
                    nacos_instance_guard::pure::routing::decision::Decision::Route { .. }
                )
            })
        });
        let pin = RequestView {
            pin: Some("10.0.0.5:8080"),
            known: None,
        };
        c.bench_function(&format!("decide a pinned request among {count}"), |b| {
            b.iter(|| {
                matches!(
                    decide(&mut prepared, Freshness::Fresh, POLICIES, black_box(pin)),
                    nacos_instance_guard::pure::routing::decision::Decision::Route { .. }
                )
            })
        });
    }
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
