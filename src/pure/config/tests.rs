use super::*;
use crate::testing::test;

const ENVOY: Capabilities = Capabilities {
    higress_routing: false,
};
const HIGRESS: Capabilities = Capabilities {
    higress_routing: true,
};

fn guard(scope: &Scope) -> &GuardSettings {
    match scope {
        Scope::Guard(settings) => settings,
        Scope::Disabled => panic!("expected a guard"),
    }
}

const FULL: &str = r#"{
    "nacos": {"cluster": "outbound|8848||nacos.dns", "namespaceId": "dev",
              "username": "nacos", "password": "secret", "timeoutMs": 500, "apiVersion": "v3"},
    "refreshIntervalMs": 200, "maxStaleMs": 5000, "onStale": "fail_closed",
    "pinHeader": "X-Pin", "onDeregistered": "reject", "rejectStatus": 502,
    "_rules_": [
        {"_match_route_": ["default/demo"],
         "service": {"name": "demo", "group": "G", "clusters": ["A"], "metadata": {"zone": "a"}}},
        {"_match_domain_": ["*.example.com"], "service": {"name": "web"},
         "routing": "header", "routingHeader": "X-Dest", "nacos": {"cluster": "other"}},
        {"_match_route_": ["default/legacy"], "enabled": false}
    ]
}"#;

#[test]
fn defaults_fill_every_optional_field() {
    let config = parse(
        br#"{"nacos":{"cluster":"outbound|8848||nacos.dns"},"service":{"name":"demo"}}"#,
        ENVOY,
    )
    .unwrap();
    let settings = guard(config.global.as_ref().unwrap());
    assert_eq!(settings.server.authority, "nacos.dns");
    assert_eq!(settings.server.api, ApiVersion::V1);
    assert_eq!(settings.server.timeout_ms, 2000);
    assert_eq!(settings.server.credentials, None);
    assert_eq!(settings.service.namespace_id, "public");
    assert_eq!(settings.service.group, "DEFAULT_GROUP");
    assert_eq!(settings.filter, InstanceFilter::default());
    assert_eq!(settings.refresh_interval_ms, 1000);
    assert_eq!(settings.max_stale_ms, 30_000);
    assert_eq!(settings.on_stale, StalePolicy::FailOpen);
    assert_eq!(
        settings.routing,
        Routing::Header(DEFAULT_ROUTING_HEADER.into())
    );
    assert_eq!(settings.pin_header, DEFAULT_PIN_HEADER);
    assert_eq!(settings.on_deregistered, DeregisteredPolicy::Reroute);
    assert_eq!(settings.reject_status, 503);
    assert_eq!(settings.avoid.avoid_ms, 30_000);
    assert_eq!(settings.avoid.max_avoided_percent, 50);
    assert!(config.rules.is_empty());
}

#[test]
fn rules_inherit_global_fields_and_override_them_key_by_key() {
    let config = parse(FULL.as_bytes(), HIGRESS).unwrap();
    assert_eq!(config.global, None, "global has no service: defaults only");
    assert_eq!(config.rules.len(), 3);

    let demo = guard(&config.rules[0].1);
    assert_eq!(
        config.rules[0].0,
        Matcher::Route(vec!["default/demo".into()])
    );
    assert_eq!(demo.server.cluster, "outbound|8848||nacos.dns");
    assert_eq!(demo.server.api, ApiVersion::V3);
    assert_eq!(demo.server.timeout_ms, 500);
    assert_eq!(demo.server.credentials.as_ref().unwrap().username, "nacos");
    assert_eq!(demo.service.namespace_id, "dev");
    assert_eq!(demo.service.group, "G");
    assert_eq!(demo.filter.clusters, vec!["A".to_string()]);
    assert_eq!(
        demo.filter.metadata,
        vec![("zone".to_string(), "a".to_string())]
    );
    assert_eq!(demo.refresh_interval_ms, 200);
    assert_eq!(demo.on_stale, StalePolicy::FailClosed);
    assert_eq!(
        demo.routing,
        Routing::Higress,
        "Higress build routes with the import"
    );
    assert_eq!(demo.pin_header, "x-pin");
    assert_eq!(demo.on_deregistered, DeregisteredPolicy::Reject);
    assert_eq!(demo.reject_status, 502);

    let web = guard(&config.rules[1].1);
    assert_eq!(web.server.cluster, "other", "nacos replaced whole");
    assert_eq!(web.server.credentials, None);
    assert_eq!(web.service.namespace_id, "public");
    assert_eq!(web.routing, Routing::Header("x-dest".into()));

    assert_eq!(config.rules[2].1, Scope::Disabled);
    assert_eq!(
        config.protected_headers(),
        vec![
            DEFAULT_ROUTING_HEADER.to_string(),
            ORIGINAL_DST_HEADER.to_string(),
            "x-dest".to_string()
        ]
    );
}

#[test]
fn empty_configuration_guards_nothing() {
    for empty in ["", "  ", "{}"] {
        let config = parse(empty.as_bytes(), ENVOY).unwrap();
        assert_eq!(config.global, None);
        assert!(config.rules.is_empty());
    }
}

#[test]
fn global_enabled_false_disables_by_default() {
    let config = parse(br#"{"enabled": false}"#, ENVOY).unwrap();
    assert_eq!(config.global, Some(Scope::Disabled));
}

#[test]
fn credentials_never_show_in_debug_output() {
    let config = parse(FULL.as_bytes(), HIGRESS).unwrap();
    let text = format!("{config:?}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("<redacted>"));
}

/// Each bad configuration must be refused, naming the field at fault.
#[test]
fn bad_configurations_are_refused_with_the_field_named() {
    let base = r#""nacos":{"cluster":"c"},"service":{"name":"demo"}"#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "(root)", "not valid JSON"),
        ("[1,2]".into(), "(root)", "expected an object"),
        (
            format!(r#"{{{base},"refreshIntervalMS":5}}"#),
            "refreshIntervalMS",
            "unknown field",
        ),
        (
            format!(r#"{{{base},"refreshIntervalMs":"1s"}}"#),
            "refreshIntervalMs",
            "whole number",
        ),
        (
            format!(r#"{{{base},"refreshIntervalMs":10}}"#),
            "refreshIntervalMs",
            "from 100",
        ),
        (
            format!(r#"{{{base},"refreshIntervalMs":1.5}}"#),
            "refreshIntervalMs",
            "whole number",
        ),
        (
            format!(r#"{{{base},"avoidFailedMs":600001}}"#),
            "avoidFailedMs",
            "from 0 to 600000",
        ),
        (
            format!(r#"{{{base},"maxAvoidedPercent":101}}"#),
            "maxAvoidedPercent",
            "percent from 0 to 100",
        ),
        (
            format!(r#"{{{base},"maxStaleMs":-1}}"#),
            "maxStaleMs",
            "whole number",
        ),
        (
            format!(r#"{{{base},"onStale":"open"}}"#),
            "onStale",
            "fail_open, fail_closed",
        ),
        (
            format!(r#"{{{base},"onDeregistered":1}}"#),
            "onDeregistered",
            "expected one of reroute, reject",
        ),
        (
            format!(r#"{{{base},"rejectStatus":200}}"#),
            "rejectStatus",
            "from 400 to 599",
        ),
        (
            format!(r#"{{{base},"enabled":"yes"}}"#),
            "enabled",
            "expected a boolean",
        ),
        (
            format!(r#"{{{base},"routing":"higress"}}"#),
            "routing",
            "Higress build",
        ),
        (
            format!(r#"{{{base},"routing":"dns"}}"#),
            "routing",
            "higress, header",
        ),
        (
            format!(r#"{{{base},"routingHeader":"bad header"}}"#),
            "routingHeader",
            "not a valid",
        ),
        (
            format!(r#"{{{base},"pinHeader":""}}"#),
            "pinHeader",
            "not a valid",
        ),
        (r#"{"service":{"name":"demo"}}"#.into(), "nacos", "required"),
        (
            r#"{"nacos":{"cluster":"c"},"service":{}}"#.into(),
            "service.name",
            "required",
        ),
        (
            r#"{"nacos":{"cluster":"c"},"service":{"name":" "}}"#.into(),
            "service.name",
            "empty",
        ),
        (
            r#"{"nacos":{},"service":{"name":"d"}}"#.into(),
            "nacos.cluster",
            "required",
        ),
        (
            r#"{"nacos":"c","service":{"name":"d"}}"#.into(),
            "nacos",
            "expected an object",
        ),
        (
            r#"{"nacos":{"cluster":"c","username":"u"},"service":{"name":"d"}}"#.into(),
            "nacos.password",
            "required when username",
        ),
        (
            r#"{"nacos":{"cluster":"c","password":"p"},"service":{"name":"d"}}"#.into(),
            "nacos.username",
            "required when password",
        ),
        (
            r#"{"nacos":{"cluster":"c","timeoutMs":0},"service":{"name":"d"}}"#.into(),
            "nacos.timeoutMs",
            "from 1",
        ),
        (
            r#"{"nacos":{"cluster":"c","apiVersion":"v2"},"service":{"name":"d"}}"#.into(),
            "nacos.apiVersion",
            "v1, v3",
        ),
        (
            r#"{"nacos":{"cluster":"c","apiVersion":"v3"},"service":{"name":"d"}}"#.into(),
            "service.clusters",
            "only the DEFAULT cluster",
        ),
        (
            r#"{"nacos":{"cluster":"c","host":"h"},"service":{"name":"d"}}"#.into(),
            "nacos.host",
            "unknown field",
        ),
        (
            r#"{"nacos":{"cluster":"c"},"service":{"name":"d","clusters":"A"}}"#.into(),
            "service.clusters",
            "expected a sequence",
        ),
        (
            r#"{"nacos":{"cluster":"c"},"service":{"name":"d","clusters":["A",""]}}"#.into(),
            "service.clusters[1]",
            "non-empty string",
        ),
        (
            r#"{"nacos":{"cluster":"c"},"service":{"name":"d","metadata":{"v":2}}}"#.into(),
            "service.metadata.v",
            "expected a string",
        ),
        (r#"{"_rules_":{}}"#.into(), "_rules_", "expected a sequence"),
        (
            r#"{"_rules_":[{"service":{"name":"d"}}]}"#.into(),
            "_rules_[0]",
            "a rule needs one of",
        ),
        (
            r#"{"_rules_":[{"_match_route_":["r"],"service":{"name":"d"}}]}"#.into(),
            "_rules_[0].nacos",
            "required",
        ),
        (
            r#"{"_rules_":[{"_match_route_":"r","enabled":false}]}"#.into(),
            "_rules_[0]._match_route_",
            "expected a sequence",
        ),
        (
            format!(r#"{{{base},"_rules_":[{{"_match_route_":["r"],"rejectStatus":99}}]}}"#),
            "_rules_[0].rejectStatus",
            "from 400",
        ),
        (
            format!(r#"{{{base},"_rules_":[{{"_match_route_":["r"],"extra":1}}]}}"#),
            "_rules_[0].extra",
            "unknown field",
        ),
    ];
    for (json, field, reason) in cases {
        let error = parse(json.as_bytes(), ENVOY).expect_err(&json);
        assert_eq!(error.field, field, "{json}: {error}");
        assert!(error.reason.contains(reason), "{json}: {error}");
        assert!(error.to_string().contains(field), "{error}");
    }
}

#[test]
fn a_disabled_rule_needs_no_nacos_or_service() {
    let config = parse(
        br#"{"_rules_":[{"_match_route_prefix_":["x"],"enabled":false}]}"#,
        ENVOY,
    )
    .unwrap();
    assert_eq!(config.rules[0].1, Scope::Disabled);
    assert_eq!(config.guards().count(), 0);
}

#[test]
fn default_authority_is_the_fqdn_of_a_higress_cluster_name() {
    assert_eq!(default_authority("outbound|8848||nacos.dns"), "nacos.dns");
    assert_eq!(default_authority("nacos_cluster"), "nacos_cluster");
    assert_eq!(default_authority("outbound|8848||"), "outbound|8848||");
}

#[test]
fn a_null_field_reads_as_if_it_were_left_out_at_every_depth() {
    let with_nulls = br#"{
        "nacos": {"cluster": "c", "authority": null, "apiVersion": null, "namespaceId": null,
                  "username": null, "password": null, "timeoutMs": null,
                  "push": {"grpcCluster": "g", "safetyIntervalMs": null}},
        "service": {"name": "d", "group": null, "clusters": null, "metadata": null},
        "refreshIntervalMs": null, "maxStaleMs": null, "onStale": null, "routing": null,
        "routingHeader": null, "pinHeader": null, "onDeregistered": null,
        "rejectStatus": null, "enabled": null, "_rules_": null, "guardNacosRoutes": null}"#;
    let without = br#"{"nacos": {"cluster": "c", "push": {"grpcCluster": "g"}},
        "service": {"name": "d"}}"#;
    assert_eq!(
        parse(with_nulls, HIGRESS).unwrap(),
        parse(without, HIGRESS).unwrap()
    );
    let auto_nulls = br#"{"nacos": {"cluster": "c"}, "guardNacosRoutes":
        {"groups": null, "namespaces": null, "idleMs": null, "maxServices": null}}"#;
    let auto = parse(auto_nulls, HIGRESS).unwrap().auto.unwrap();
    assert_eq!(
        auto,
        parse(
            br#"{"nacos": {"cluster": "c"}, "guardNacosRoutes": {}}"#,
            HIGRESS
        )
        .unwrap()
        .auto
        .unwrap()
    );
    assert_eq!((auto.idle_ms, auto.max_services), (600_000, 256));
}

#[test]
fn a_null_rule_field_inherits_the_global_one_as_a_left_out_one_does() {
    let config = parse(
        br#"{"nacos": {"cluster": "c"}, "maxStaleMs": 7000, "service": {"name": "g"},
            "_rules_": [{"_match_route_": ["r"], "maxStaleMs": null, "nacos": null,
                         "service": {"name": "d"}}]}"#,
        HIGRESS,
    )
    .unwrap();
    let rule = guard(&config.rules[0].1);
    assert_eq!(rule.max_stale_ms, 7000);
    assert_eq!(rule.server.cluster, "c");
    assert_eq!(rule.service.name, "d");
}

#[test]
fn null_in_a_list_or_as_a_map_value_is_a_wrong_type_not_an_absent_one() {
    for (json, field) in [
        (
            r#"{"service": {"name": "d", "clusters": ["A", null]}}"#,
            "service.clusters[1]",
        ),
        (
            r#"{"service": {"name": "d", "metadata": {"zone": null}}}"#,
            "service.metadata.zone",
        ),
        (r#"{"_rules_": [null]}"#, "_rules_[0]"),
    ] {
        let error = parse(json.as_bytes(), HIGRESS).unwrap_err();
        assert_eq!(error.field, field, "{json}");
        assert!(error.reason.starts_with("invalid type: null"), "{error}");
    }
}

#[test]
fn unknown_fields_are_refused_with_their_path_at_every_depth() {
    for (json, field) in [
        (
            r#"{"nacos": {"cluster": "c", "push": {"grpcCluster": "g", "grpc": 1}}}"#,
            "nacos.push.grpc",
        ),
        (
            r#"{"_rules_": [{"_match_route_": ["a"]},
                {"_match_route_": ["b"], "service": {"name": "d", "namespace": "x"}}]}"#,
            "_rules_[1].service.namespace",
        ),
        (
            r#"{"_rules_": [{"_match_route_": ["a"], "_rules_": []}]}"#,
            "_rules_[0]._rules_",
        ),
        (
            r#"{"guardNacosRoutes": {"idle": 1}}"#,
            "guardNacosRoutes.idle",
        ),
        (r#"{"_match_domain_": ["x"]}"#, "_match_domain_"),
        (r#"{"Nacos": {}}"#, "Nacos"),
    ] {
        let error = parse(json.as_bytes(), HIGRESS).unwrap_err();
        assert_eq!(error.field, field, "{json}");
        let key = field.rsplit('.').next().unwrap();
        assert!(
            error
                .reason
                .starts_with(&format!("unknown field `{key}`, expected")),
            "{error}"
        );
    }
}

#[test]
fn values_of_another_type_are_refused_with_their_path_and_what_was_expected() {
    for (json, field, reason) in [
        (
            r#"{"_rules_": [{"_match_route_": ["a"]}, {"_match_route_": ["b"],
                "nacos": {"cluster": "c", "timeoutMs": "5"}}]}"#,
            "_rules_[1].nacos.timeoutMs",
            r#"invalid type: string "5", expected a whole number"#,
        ),
        (
            r#"{"_rules_": [{"_match_service_": ["s", 7]}]}"#,
            "_rules_[0]._match_service_[1]",
            "invalid type: integer `7`, expected a string",
        ),
        (
            r#"{"guardNacosRoutes": {"namespaces": {"dev": 1}}}"#,
            "guardNacosRoutes.namespaces.dev",
            "invalid type: integer `1`, expected a string",
        ),
        (
            r#"{"guardNacosRoutes": {"groups": "G"}}"#,
            "guardNacosRoutes.groups",
            r#"invalid type: string "G", expected a sequence"#,
        ),
        (
            r#"{"nacos": {"cluster": "c", "apiVersion": 3}}"#,
            "nacos.apiVersion",
            "invalid type: integer `3`, expected one of v1, v3",
        ),
        // A word is read from a string only, not from serde's other spellings of an enum.
        (
            r#"{"onStale": {"fail_open": null}}"#,
            "onStale",
            "invalid type: map, expected one of fail_open, fail_closed",
        ),
        (
            r#"{"nacos": ["c"]}"#,
            "nacos",
            "invalid type: sequence, expected an object",
        ),
        (
            r#"{"maxStaleMs": 1e3}"#,
            "maxStaleMs",
            "invalid type: floating point `1000.0`, expected a whole number",
        ),
        (
            r#"{"refreshIntervalMs": true}"#,
            "refreshIntervalMs",
            "invalid type: boolean `true`, expected a whole number",
        ),
    ] {
        let error = parse(json.as_bytes(), HIGRESS).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.as_str()),
            (field, reason),
            "{json}"
        );
    }
}

#[test]
fn a_field_given_twice_is_refused_and_trailing_text_is_not_json() {
    let error = parse(br#"{"nacos": {"cluster": "a", "cluster": "b"}}"#, HIGRESS).unwrap_err();
    assert_eq!(error.field, "nacos");
    assert_eq!(error.reason, "duplicate field `cluster`");
    let error = parse(br#"{} {}"#, HIGRESS).unwrap_err();
    assert_eq!(error.field, "(root)");
    assert!(
        error
            .reason
            .starts_with("not valid JSON: trailing characters"),
        "{error}"
    );
}

#[test]
fn group_names_nacos_refuses_are_refused_with_their_field() {
    // alibaba/nacos common/src/main/java/com/alibaba/nacos/common/paramcheck/
    // ParamCheckRule.java: `[a-zA-Z0-9-_:.]`, at most 128 characters.
    let long = "G".repeat(129);
    for (json, field) in [
        (
            r#"{"nacos": {"cluster": "c"}, "service": {"name": "s", "group": "a b"}}"#.to_string(),
            "service.group",
        ),
        (
            format!(
                r#"{{"nacos": {{"cluster": "c"}}, "service": {{"name": "s", "group": "{long}"}}}}"#
            ),
            "service.group",
        ),
        (
            r#"{"nacos": {"cluster": "c"}, "guardNacosRoutes": {"groups": ["OK", "a@b"]}}"#
                .to_string(),
            "guardNacosRoutes.groups[1]",
        ),
    ] {
        let error = parse(json.as_bytes(), ENVOY).unwrap_err();
        assert_eq!(error.field, field, "{json}");
        assert!(error.reason.contains("Nacos accepts"), "{error:?}");
    }
    let dotted = r#"{"nacos": {"cluster": "c"}, "service": {"name": "s", "group": "com.acme:v1"}}"#;
    assert!(parse(dotted.as_bytes(), ENVOY).is_ok());
}
