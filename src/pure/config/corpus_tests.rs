//! The configuration corpus that `spec.yaml`'s schema is checked against
//! (`tests/packaging/config_corpus.json`, read by `tests/packaging/test_schema.py`):
//! the real parser must give every case the verdict the corpus states, fail on the
//! field it names, and fill in the defaults the corpus (and so the schema) lists.

use serde_json::{json, Value};

use super::{parse, ApiVersion, Capabilities, DeregisteredPolicy, Routing, StalePolicy};
use crate::testing::test;

const CORPUS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/packaging/config_corpus.json"
));

fn corpus() -> Value {
    serde_json::from_str(CORPUS).expect("the corpus is JSON")
}

fn capabilities(case: &Value) -> Capabilities {
    let higress_routing = match case.get("build").and_then(Value::as_str) {
        None | Some("higress") => true,
        Some("envoy") => false,
        Some(other) => panic!("unknown build {other:?}"),
    };
    Capabilities { higress_routing }
}

fn input(case: &Value) -> Vec<u8> {
    match (case.get("raw"), case.get("config")) {
        (Some(Value::String(raw)), None) => raw.clone().into_bytes(),
        (None, Some(config)) => serde_json::to_vec(config).unwrap(),
        _ => panic!("a case has either `raw` text or a `config`: {case}"),
    }
}

#[test]
fn the_parser_gives_every_corpus_case_its_stated_verdict() {
    let corpus = corpus();
    let cases = corpus["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "the corpus lost cases: {}", cases.len());
    let mut wrong = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("every case has a name");
        let valid = case["valid"].as_bool().expect("every case has a verdict");
        let result = parse(&input(case), capabilities(case));
        match (&result, valid, case.get("field").and_then(Value::as_str)) {
            (Ok(_), true, None) => {}
            (Err(error), false, Some(field)) if error.field == field => {}
            (Err(error), false, Some(field)) => wrong.push(format!(
                "{name}: refused, but for `{}` ({}), not `{field}`",
                error.field, error.reason
            )),
            (_, false, None) => wrong.push(format!("{name}: an invalid case must name its field")),
            (_, true, Some(_)) => wrong.push(format!("{name}: a valid case names no field")),
            (Ok(_), false, _) => wrong.push(format!("{name}: corpus says invalid, parser accepts")),
            (Err(error), true, _) => {
                wrong.push(format!("{name}: corpus says valid, parser: {error}"))
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_parser_fills_in_the_defaults_the_corpus_lists() {
    let minimal = br#"{"nacos":{"cluster":"c"},"service":{"name":"demo"}}"#;
    let settings = |higress_routing| {
        let config = parse(minimal, Capabilities { higress_routing }).unwrap();
        match config.global {
            Some(super::Scope::Guard(settings)) => *settings,
            other => panic!("expected a global guard, got {other:?}"),
        }
    };
    let higress = settings(true);
    let with_push =
        br#"{"nacos":{"cluster":"c","push":{"grpcCluster":"g"}},"service":{"name":"demo"}}"#;
    let pushed = match parse(
        with_push,
        Capabilities {
            higress_routing: true,
        },
    )
    .unwrap()
    .global
    {
        Some(super::Scope::Guard(settings)) => settings.server.push.unwrap(),
        other => panic!("expected a global guard, got {other:?}"),
    };
    let Routing::Header(routing_header) = settings(false).routing else {
        panic!("plugin-envoy.wasm routes by header");
    };
    let actual = json!({
        "refreshIntervalMs": higress.refresh_interval_ms,
        "maxStaleMs": higress.max_stale_ms,
        "onStale": match higress.on_stale {
            StalePolicy::FailOpen => "fail_open",
            StalePolicy::FailClosed => "fail_closed",
        },
        "routing": match higress.routing {
            Routing::Higress => "higress",
            Routing::Header(_) => "header",
        },
        "routingHeader": routing_header,
        "pinHeader": higress.pin_header,
        "onDeregistered": match higress.on_deregistered {
            DeregisteredPolicy::Reroute => "reroute",
            DeregisteredPolicy::Reject => "reject",
        },
        "rejectStatus": higress.reject_status,
        "avoidFailedMs": higress.avoid.avoid_ms,
        "maxAvoidedPercent": higress.avoid.max_avoided_percent,
        // A configuration without `enabled` guards: the scope is a guard.
        "enabled": true,
        "nacos.apiVersion": match higress.server.api {
            ApiVersion::V1 => "v1",
            ApiVersion::V3 => "v3",
        },
        "nacos.namespaceId": higress.service.namespace_id,
        "nacos.timeoutMs": higress.server.timeout_ms,
        "nacos.push.safetyIntervalMs": pushed.safety_interval_ms,
        "service.group": higress.service.group,
    });
    assert_eq!(corpus()["defaults"], actual);
}
