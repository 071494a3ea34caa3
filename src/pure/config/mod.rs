//! The plugin's configuration: one JSON object as Higress delivers it, global
//! fields plus `_rules_`, validated completely before anything runs.

mod fields;

use std::fmt;

use serde_json::{Map, Value};

pub use fields::ConfigError;
use fields::Fields;

use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::polling::nacos::ApiVersion;
use crate::pure::registry::instance::InstanceFilter;
use crate::pure::routing::cluster_name;
use crate::pure::routing::nacos_cluster::{as_label, NacosNames};
use crate::pure::routing::rules::Matcher;

pub const DEFAULT_ROUTING_HEADER: &str = "x-gateway-destination-endpoint";
pub const DEFAULT_PIN_HEADER: &str = "x-nacos-instance";
/// Read by an ORIGINAL_DST cluster with `use_http_header`; a client must never set it.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

/// `refreshIntervalMs` when unset, and the interval of a plugin that guards nothing.
pub const DEFAULT_REFRESH_MS: u64 = 1000;
const MIN_REFRESH_MS: u64 = 100;
const MAX_REFRESH_MS: u64 = 600_000;
const MAX_STALE_MS: u64 = 86_400_000;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// While pushes arrive, a poll this often still checks that none was missed.
const DEFAULT_SAFETY_INTERVAL_MS: u64 = 30_000;
const MIN_SAFETY_INTERVAL_MS: u64 = 1_000;

const SETTING_KEYS: &[&str] = &[
    "nacos",
    "service",
    "refreshIntervalMs",
    "maxStaleMs",
    "onStale",
    "routing",
    "routingHeader",
    "pinHeader",
    "onDeregistered",
    "rejectStatus",
    "enabled",
];
const RULE_MATCH_KEYS: &[&str] = &[
    "_match_route_",
    "_match_domain_",
    "_match_service_",
    "_match_route_prefix_",
];
const RULES_KEY: &str = "_rules_";
const AUTO_KEY: &str = "guardNacosRoutes";
const DEFAULT_IDLE_MS: u64 = 600_000;
const DEFAULT_MAX_LEARNED: u64 = 256;

/// What the artifact that parses the configuration can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Built with the Higress host imports (`plugin.wasm`).
    pub higress_routing: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One Nacos server as the gateway reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NacosServer {
    /// Envoy cluster to dispatch to.
    pub cluster: String,
    pub authority: String,
    pub api: ApiVersion,
    pub credentials: Option<Credentials>,
    pub timeout_ms: u64,
    /// `push`: subscribe over Nacos 2.x gRPC instead of polling at every interval.
    pub push: Option<PushSettings>,
}

/// `nacos.push`: the server pushes every change over one gRPC stream; polls
/// continue at `safety_interval_ms` while the stream is up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PushSettings {
    /// The Envoy cluster of the server's gRPC port (HTTP/2), HTTP port + 1000.
    pub grpc_cluster: String,
    /// `:authority` of the gRPC calls, derived as `nacos.authority` is.
    pub grpc_authority: String,
    pub safety_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StalePolicy {
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeregisteredPolicy {
    Reroute,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Higress's `proxy_set_upstream_override_host`.
    Higress,
    /// Set this request header to `ip:port`.
    Header(String),
}

/// Everything one guarded route needs.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    pub server: NacosServer,
    pub service: ServiceKey,
    pub filter: InstanceFilter,
    pub refresh_interval_ms: u64,
    pub max_stale_ms: u64,
    pub on_stale: StalePolicy,
    pub routing: Routing,
    pub pin_header: String,
    pub on_deregistered: DeregisteredPolicy,
    pub reject_status: u32,
}

/// What the plugin does for the requests a rule (or the global config) selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Guard(Box<GuardSettings>),
    /// `enabled: false`: leave the request alone.
    Disabled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `None` when the global fields are only defaults for the rules (no `service`).
    pub global: Option<Scope>,
    pub rules: Vec<(Matcher, Scope)>,
    /// `guardNacosRoutes`: guard every request routed to a cluster Higress made
    /// for a Nacos service, learning the service from the cluster name.
    pub auto: Option<AutoGuard>,
}

/// The global settings of `guardNacosRoutes`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoGuard {
    /// The guard settings of a learned service; its `service` is filled in per
    /// cluster, `service.name` here is a placeholder.
    pub template: GuardSettings,
    pub names: NacosNames,
    /// A learned service with no request for this long is no longer polled.
    pub idle_ms: u64,
    pub max_services: usize,
}

impl PluginConfig {
    /// Every guard, global first, then rules in order.
    pub fn guards(&self) -> impl Iterator<Item = &GuardSettings> {
        self.global
            .iter()
            .chain(self.rules.iter().map(|(_, scope)| scope))
            .filter_map(|scope| match scope {
                Scope::Guard(settings) => Some(settings.as_ref()),
                Scope::Disabled => None,
            })
            .chain(self.auto.iter().map(|auto| &auto.template))
    }

    /// Header names that only the plugin may set; removed from every request first.
    pub fn protected_headers(&self) -> Vec<String> {
        let mut names = vec![
            DEFAULT_ROUTING_HEADER.to_string(),
            ORIGINAL_DST_HEADER.to_string(),
        ];
        for guard in self.guards() {
            if let Routing::Header(name) = &guard.routing {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }
}

/// Parse and validate the configuration Higress (or Envoy) hands the plugin.
/// An empty configuration is an empty object: no global guard, no rules.
pub fn parse(json: &[u8], capabilities: Capabilities) -> Result<PluginConfig, ConfigError> {
    let root: Value = if json.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(json).map_err(|error| ConfigError {
            field: "(root)".into(),
            reason: format!("not valid JSON: {error}"),
        })?
    };
    let Value::Object(root) = root else {
        return Err(ConfigError {
            field: "(root)".into(),
            reason: "expected a JSON object".into(),
        });
    };
    let mut global = root;
    let rules = global.remove(RULES_KEY);
    let auto = global.remove(AUTO_KEY);
    let global = Value::Object(global);
    let global_fields = Fields::new("", &global)?;
    global_fields.deny_unknown(&[SETTING_KEYS, &[RULES_KEY, AUTO_KEY]].concat())?;
    let global_scope = parse_scope(&global_fields, capabilities, false)?;
    let auto = auto
        .map(|auto| parse_auto(&auto, &global, global_scope.is_some(), capabilities))
        .transpose()?;

    let mut parsed_rules = Vec::new();
    if let Some(rules) = rules {
        let Value::Array(rules) = rules else {
            return Err(ConfigError {
                field: RULES_KEY.into(),
                reason: "expected a list of rules".into(),
            });
        };
        for (index, rule) in rules.iter().enumerate() {
            let path = format!("{RULES_KEY}[{index}]");
            parsed_rules.push(parse_rule(&path, rule, &global, capabilities)?);
        }
    }
    Ok(PluginConfig {
        global: global_scope,
        rules: parsed_rules,
        auto,
    })
}

fn parse_rule(
    path: &str,
    rule: &Value,
    global: &Value,
    capabilities: Capabilities,
) -> Result<(Matcher, Scope), ConfigError> {
    let rule_fields = Fields::new(path, rule)?;
    rule_fields.deny_unknown(&[SETTING_KEYS, RULE_MATCH_KEYS].concat())?;
    let list = |key| rule_fields.string_list(key).map(Option::unwrap_or_default);
    let matcher = Matcher::from_keys(
        list("_match_route_")?,
        list("_match_domain_")?,
        list("_match_service_")?,
        list("_match_route_prefix_")?,
    )
    .ok_or_else(|| ConfigError {
        field: path.to_string(),
        reason: format!("a rule needs one of {}", RULE_MATCH_KEYS.join(", ")),
    })?;

    // A rule's fields override the global ones key by key; `nacos` and `service`
    // are replaced whole, never mixed field by field.
    let mut merged = match global {
        Value::Object(global) => global.clone(),
        _ => Map::new(),
    };
    if let Value::Object(own) = rule {
        for (key, value) in own {
            if !RULE_MATCH_KEYS.contains(&key.as_str()) {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    let merged = Value::Object(merged);
    let scope = parse_scope(&Fields::new(path, &merged)?, capabilities, true)?;
    // `parse_scope` with `required` always gives a scope; this keeps it total.
    let scope = scope.unwrap_or(Scope::Disabled);
    Ok((matcher, scope))
}

/// Parse the settings of one scope. With `required` false (the global object), a
/// scope without `service` is only a set of defaults and yields `None`.
fn parse_scope(
    fields: &Fields<'_>,
    capabilities: Capabilities,
    required: bool,
) -> Result<Option<Scope>, ConfigError> {
    let enabled = fields.boolean("enabled")?.unwrap_or(true);
    let nacos = fields
        .object("nacos")?
        .as_ref()
        .map(parse_nacos)
        .transpose()?;
    let service = fields.object("service")?;
    let parsed_service = service.as_ref().map(parse_service).transpose()?;
    let refresh_interval_ms = fields
        .integer_in(
            "refreshIntervalMs",
            MIN_REFRESH_MS..=MAX_REFRESH_MS,
            "milliseconds",
        )?
        .unwrap_or(DEFAULT_REFRESH_MS);
    let max_stale_ms = fields
        .integer_in("maxStaleMs", 0..=MAX_STALE_MS, "milliseconds")?
        .unwrap_or(30_000);
    let on_stale = fields
        .choice(
            "onStale",
            &[
                ("fail_open", StalePolicy::FailOpen),
                ("fail_closed", StalePolicy::FailClosed),
            ],
        )?
        .unwrap_or(StalePolicy::FailOpen);
    let routing = parse_routing(fields, capabilities)?;
    let pin_header = header_name(fields, "pinHeader")?.unwrap_or_else(|| DEFAULT_PIN_HEADER.into());
    let on_deregistered = fields
        .choice(
            "onDeregistered",
            &[
                ("reroute", DeregisteredPolicy::Reroute),
                ("reject", DeregisteredPolicy::Reject),
            ],
        )?
        .unwrap_or(DeregisteredPolicy::Reroute);
    let reject_status = fields
        .integer_in("rejectStatus", 400..=599, "an HTTP status")?
        .map_or(503, |status| u32::try_from(status).unwrap_or(503));

    if !enabled {
        return Ok(Some(Scope::Disabled));
    }
    if !required && !fields.has("service") {
        return Ok(None);
    }
    let (Some((server, namespace_id)), Some((name, group, filter))) = (nacos, parsed_service)
    else {
        let missing = if fields.has("nacos") {
            "service"
        } else {
            "nacos"
        };
        return Err(fields.error(missing, "required where the guard is enabled"));
    };
    // Nacos 3's v3 client API fills a blank `clusterName` with `DEFAULT`
    // (`InstanceListForm.fillDefaultValue()` in alibaba/nacos) and lists only that
    // cluster; the plugin would take the narrowed list as the truth and reject
    // every request to a service whose instances live in a named cluster.
    if server.api == ApiVersion::V3 && filter.clusters.is_empty() {
        return Err(fields.error(
            "service.clusters",
            "required with nacos.apiVersion v3: Nacos 3 lists only the DEFAULT cluster \
             when none is named; list the clusters the service's instances use \
             (e.g. [\"DEFAULT\"])",
        ));
    }
    let service = ServiceKey {
        namespace_id,
        group,
        name,
    };
    Ok(Some(Scope::Guard(Box::new(GuardSettings {
        server,
        service,
        filter,
        refresh_interval_ms,
        max_stale_ms,
        on_stale,
        routing,
        pin_header,
        on_deregistered,
        reject_status,
    }))))
}

fn parse_auto(
    auto: &Value,
    global: &Value,
    global_guards: bool,
    capabilities: Capabilities,
) -> Result<AutoGuard, ConfigError> {
    let fields = Fields::new(AUTO_KEY, auto)?;
    fields.deny_unknown(&["groups", "namespaces", "idleMs", "maxServices"])?;
    let error = |reason: &str| ConfigError {
        field: AUTO_KEY.into(),
        reason: reason.into(),
    };
    if global_guards {
        return Err(error(
            "a global `service` or `enabled` already applies to every request no rule \
             matches; guard learned services or one global service, not both",
        ));
    }
    let names = NacosNames {
        groups: fields.string_list("groups")?.unwrap_or_default(),
        namespaces: fields.string_map("namespaces")?.unwrap_or_default(),
    };
    let mut labels: Vec<String> = names
        .namespaces
        .iter()
        .map(|(label, _)| as_label(label))
        .collect();
    labels.sort();
    if labels
        .windows(2)
        .any(|pair| matches!(pair, [a, b] if a == b))
    {
        return Err(fields.error(
            "namespaces",
            "two labels read the same once `_` is written `-`, as Higress writes them",
        ));
    }
    let idle_ms = fields
        .integer_in("idleMs", 1_000..=MAX_STALE_MS, "milliseconds")?
        .unwrap_or(DEFAULT_IDLE_MS);
    let max_services = fields
        .integer_in("maxServices", 1..=10_000, "services")?
        .unwrap_or(DEFAULT_MAX_LEARNED);
    // The global settings with a placeholder service are what every learned
    // service is guarded with.
    let mut template = match global {
        Value::Object(global) => global.clone(),
        _ => Map::new(),
    };
    template.insert("service".into(), serde_json::json!({"name": "*"}));
    let template = Value::Object(template);
    let Some(Scope::Guard(settings)) =
        parse_scope(&Fields::new("", &template)?, capabilities, true).map_err(|mut error| {
            if error.field == "service.clusters" {
                error.field = "nacos.apiVersion".into();
                error.reason = "guardNacosRoutes needs v1: a learned service's clusters are \
                                unknown, and Nacos 3's v3 API lists only DEFAULT without them"
                    .into();
            }
            error
        })?
    else {
        return Err(error("needs a global `nacos`"));
    };
    Ok(AutoGuard {
        template: *settings,
        names,
        idle_ms,
        max_services: usize::try_from(max_services).unwrap_or(usize::MAX),
    })
}

/// The server, and the namespace its services are looked up in.
fn parse_nacos(nacos: &Fields<'_>) -> Result<(NacosServer, String), ConfigError> {
    nacos.deny_unknown(&[
        "cluster",
        "authority",
        "apiVersion",
        "namespaceId",
        "username",
        "password",
        "timeoutMs",
        "push",
    ])?;
    let cluster = nacos
        .non_empty_string("cluster")?
        .ok_or_else(|| nacos.error("cluster", "required: the Envoy cluster of the Nacos server"))?;
    let authority = nacos
        .non_empty_string("authority")?
        .unwrap_or_else(|| default_authority(&cluster));
    let api = nacos
        .choice(
            "apiVersion",
            &[("v1", ApiVersion::V1), ("v3", ApiVersion::V3)],
        )?
        .unwrap_or(ApiVersion::V1);
    let namespace_id = nacos
        .non_empty_string("namespaceId")?
        .unwrap_or_else(|| "public".into());
    let credentials = match (
        nacos.non_empty_string("username")?,
        nacos.string("password")?,
    ) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        (Some(_), None) => return Err(nacos.error("password", "required when username is set")),
        (None, Some(_)) => return Err(nacos.error("username", "required when password is set")),
    };
    let timeout_ms = nacos
        .integer_in("timeoutMs", 1..=MAX_TIMEOUT_MS, "milliseconds")?
        .unwrap_or(2000);
    let push = nacos.object("push")?.as_ref().map(parse_push).transpose()?;
    let server = NacosServer {
        cluster,
        authority,
        api,
        credentials,
        timeout_ms,
        push,
    };
    Ok((server, namespace_id))
}

fn parse_push(push: &Fields<'_>) -> Result<PushSettings, ConfigError> {
    push.deny_unknown(&["grpcCluster", "safetyIntervalMs"])?;
    let grpc_cluster = push.non_empty_string("grpcCluster")?.ok_or_else(|| {
        push.error(
            "grpcCluster",
            "required: the Envoy cluster (HTTP/2) of the Nacos gRPC port, usually the HTTP port + 1000",
        )
    })?;
    let safety_interval_ms = push
        .integer_in(
            "safetyIntervalMs",
            MIN_SAFETY_INTERVAL_MS..=MAX_REFRESH_MS,
            "milliseconds",
        )?
        .unwrap_or(DEFAULT_SAFETY_INTERVAL_MS);
    Ok(PushSettings {
        grpc_authority: default_authority(&grpc_cluster),
        grpc_cluster,
        safety_interval_ms,
    })
}

/// `outbound|8848||nacos.dns` → `nacos.dns`; any other cluster name is used as is.
fn default_authority(cluster: &str) -> String {
    match cluster_name::parse(cluster) {
        Some(name) if !name.host.is_empty() => name.host.to_string(),
        _ => cluster.to_string(),
    }
}

fn parse_service(service: &Fields<'_>) -> Result<(String, String, InstanceFilter), ConfigError> {
    service.deny_unknown(&["name", "group", "clusters", "metadata"])?;
    let name = service
        .non_empty_string("name")?
        .ok_or_else(|| service.error("name", "required where the guard is enabled"))?;
    let group = service
        .non_empty_string("group")?
        .unwrap_or_else(|| "DEFAULT_GROUP".into());
    let filter = InstanceFilter {
        clusters: service.string_list("clusters")?.unwrap_or_default(),
        metadata: service.string_map("metadata")?.unwrap_or_default(),
    };
    Ok((name, group, filter))
}

fn parse_routing(fields: &Fields<'_>, capabilities: Capabilities) -> Result<Routing, ConfigError> {
    #[derive(Clone, Copy)]
    enum Mode {
        Higress,
        Header,
    }
    let default = if capabilities.higress_routing {
        Mode::Higress
    } else {
        Mode::Header
    };
    let mode = fields
        .choice(
            "routing",
            &[("higress", Mode::Higress), ("header", Mode::Header)],
        )?
        .unwrap_or(default);
    let header = header_name(fields, "routingHeader")?;
    match mode {
        Mode::Higress if !capabilities.higress_routing => Err(fields.error(
            "routing",
            "`higress` needs the Higress build of the plugin (plugin.wasm); \
             this build is for upstream Envoy, use `header`",
        )),
        Mode::Higress => Ok(Routing::Higress),
        Mode::Header => Ok(Routing::Header(
            header.unwrap_or_else(|| DEFAULT_ROUTING_HEADER.into()),
        )),
    }
}

/// An HTTP header name (RFC 9110 token), lowercased as Envoy keeps them.
fn header_name(fields: &Fields<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(name) = fields.string(key)? else {
        return Ok(None);
    };
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if is_token {
        Ok(Some(name.to_ascii_lowercase()))
    } else {
        Err(fields.error(key, format!("\"{name}\" is not a valid HTTP header name")))
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;
