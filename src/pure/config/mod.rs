//! The plugin's configuration: one JSON object as Higress delivers it, global
//! fields plus `_rules_`, validated completely before anything runs. It is read
//! into the derived types of `raw` (shapes and types, unknown fields refused,
//! every error naming its field's path), then validated here over those values.

mod raw;

use std::fmt;

use raw::{RawAuto, RawConfig, RawNacos, RawPush, RawRule, RawService, RoutingMode, Settings};

use crate::pure::json;
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::polling::nacos::ApiVersion;
use crate::pure::registry::instance::InstanceFilter;
use crate::pure::routing::avoidance::AvoidPolicy;
use crate::pure::routing::cluster_name;
use crate::pure::routing::nacos_cluster::{as_label, is_nacos_group, NacosNames};
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
/// How long an instance that failed a routed request is skipped: Envoy's
/// `base_ejection_time`, and longer than Nacos takes to mark a dead ephemeral
/// instance unhealthy (15–20 s), so its clients see one failure, not two.
const DEFAULT_AVOID_MS: u64 = 30_000;
const MAX_AVOID_MS: u64 = 600_000;
const DEFAULT_MAX_AVOIDED_PERCENT: u64 = 50;
/// While pushes arrive, a poll this often still checks that none was missed.
const DEFAULT_SAFETY_INTERVAL_MS: u64 = 60_000;
const MIN_SAFETY_INTERVAL_MS: u64 = 1_000;

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

/// A configuration the plugin refuses, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `_rules_[1].nacos.timeoutMs`; `(root)` for the whole.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl From<json::Misread> for ConfigError {
    fn from(misread: json::Misread) -> Self {
        if misread.not_json {
            return Self {
                field: "(root)".into(),
                reason: format!("not valid JSON: {}", misread.reason),
            };
        }
        Self {
            field: if misread.path.is_empty() {
                "(root)".into()
            } else {
                misread.path
            },
            reason: misread.reason,
        }
    }
}

/// The path of field `key` of the object at `base` (`""` for the root).
fn path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn error(base: &str, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: path(base, key),
        reason: reason.into(),
    }
}

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
    /// `avoidFailedMs` and `maxAvoidedPercent`: instances that fail a routed request.
    pub avoid: AvoidPolicy,
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
    let root = if json.iter().all(u8::is_ascii_whitespace) {
        RawConfig::default()
    } else {
        json::read_at_path::<RawConfig>(json)?
    };
    let (global, (rules, auto)) = root.split();
    let global_scope = parse_scope(&global, "", capabilities, false)?;
    let auto = auto
        .map(|auto| parse_auto(auto, &global, global_scope.is_some(), capabilities))
        .transpose()?;
    let rules = rules
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, rule)| {
            parse_rule(
                &format!("{RULES_KEY}[{index}]"),
                rule,
                &global,
                capabilities,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(PluginConfig {
        global: global_scope,
        rules,
        auto,
    })
}

fn parse_rule(
    base: &str,
    rule: RawRule,
    global: &Settings,
    capabilities: Capabilities,
) -> Result<(Matcher, Scope), ConfigError> {
    let (own, (routes, domains, services, route_prefixes)) = rule.split();
    let list = |key, list: Option<Vec<String>>| non_blank(base, key, list.unwrap_or_default());
    let matcher = Matcher::from_keys(
        list("_match_route_", routes)?,
        list("_match_domain_", domains)?,
        list("_match_service_", services)?,
        list("_match_route_prefix_", route_prefixes)?,
    )
    .ok_or_else(|| ConfigError {
        field: base.to_string(),
        reason: format!("a rule needs one of {}", RULE_MATCH_KEYS.join(", ")),
    })?;
    // A rule's fields override the global ones key by key; `nacos` and `service`
    // are replaced whole, never mixed field by field.
    let scope = parse_scope(&own.over(global), base, capabilities, true)?;
    // `parse_scope` with `required` always gives a scope; this keeps it total.
    let scope = scope.unwrap_or(Scope::Disabled);
    Ok((matcher, scope))
}

/// Validate the settings of one scope, at `base`. With `required` false (the
/// global object), a scope without `service` is only a set of defaults and yields
/// `None`.
fn parse_scope(
    settings: &Settings,
    base: &str,
    capabilities: Capabilities,
    required: bool,
) -> Result<Option<Scope>, ConfigError> {
    let enabled = settings.enabled.unwrap_or(true);
    let nacos = settings
        .nacos
        .as_ref()
        .map(|nacos| parse_nacos(nacos, &path(base, "nacos")))
        .transpose()?;
    let service = settings
        .service
        .as_ref()
        .map(|service| parse_service(service, &path(base, "service")))
        .transpose()?;
    let refresh_interval_ms = in_range(
        base,
        "refreshIntervalMs",
        settings.refresh_interval_ms,
        MIN_REFRESH_MS..=MAX_REFRESH_MS,
        "milliseconds",
    )?
    .unwrap_or(DEFAULT_REFRESH_MS);
    let max_stale_ms = in_range(
        base,
        "maxStaleMs",
        settings.max_stale_ms,
        0..=MAX_STALE_MS,
        "milliseconds",
    )?
    .unwrap_or(30_000);
    let on_stale = settings.on_stale.unwrap_or(StalePolicy::FailOpen);
    let routing = parse_routing(settings, base, capabilities)?;
    let pin_header = header_name(base, "pinHeader", settings.pin_header.as_deref())?
        .unwrap_or_else(|| DEFAULT_PIN_HEADER.into());
    let on_deregistered = settings
        .on_deregistered
        .unwrap_or(DeregisteredPolicy::Reroute);
    let reject_status = in_range(
        base,
        "rejectStatus",
        settings.reject_status,
        400..=599,
        "an HTTP status",
    )?
    .map_or(503, |status| u32::try_from(status).unwrap_or(503));
    let avoid = AvoidPolicy {
        avoid_ms: in_range(
            base,
            "avoidFailedMs",
            settings.avoid_failed_ms,
            0..=MAX_AVOID_MS,
            "milliseconds",
        )?
        .unwrap_or(DEFAULT_AVOID_MS),
        max_avoided_percent: in_range(
            base,
            "maxAvoidedPercent",
            settings.max_avoided_percent,
            0..=100,
            "percent",
        )?
        .unwrap_or(DEFAULT_MAX_AVOIDED_PERCENT),
    };

    if !enabled {
        return Ok(Some(Scope::Disabled));
    }
    if !required && settings.service.is_none() {
        return Ok(None);
    }
    let (Some((server, namespace_id)), Some((name, group, filter))) = (nacos, service) else {
        let missing = if settings.nacos.is_some() {
            "service"
        } else {
            "nacos"
        };
        return Err(error(base, missing, "required where the guard is enabled"));
    };
    // Nacos 3's v3 client API fills a blank `clusterName` with `DEFAULT`
    // (`InstanceListForm.fillDefaultValue()` in alibaba/nacos) and lists only that
    // cluster; the plugin would take the narrowed list as the truth and reject
    // every request to a service whose instances live in a named cluster.
    if server.api == ApiVersion::V3 && filter.clusters.is_empty() {
        return Err(error(
            base,
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
        avoid,
    }))))
}

fn parse_auto(
    auto: RawAuto,
    global: &Settings,
    global_guards: bool,
    capabilities: Capabilities,
) -> Result<AutoGuard, ConfigError> {
    if global_guards {
        return Err(error(
            "",
            AUTO_KEY,
            "a global `service` or `enabled` already applies to every request no rule \
             matches; guard learned services or one global service, not both",
        ));
    }
    let names = NacosNames {
        groups: nacos_groups(AUTO_KEY, "groups", auto.groups.unwrap_or_default())?,
        namespaces: auto.namespaces.unwrap_or_default().into_iter().collect(),
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
        return Err(error(
            AUTO_KEY,
            "namespaces",
            "two labels read the same once `_` is written `-`, as Higress writes them",
        ));
    }
    let idle_ms = in_range(
        AUTO_KEY,
        "idleMs",
        auto.idle_ms,
        1_000..=MAX_STALE_MS,
        "milliseconds",
    )?
    .unwrap_or(DEFAULT_IDLE_MS);
    let max_services = in_range(
        AUTO_KEY,
        "maxServices",
        auto.max_services,
        1..=10_000,
        "services",
    )?
    .unwrap_or(DEFAULT_MAX_LEARNED);
    // The global settings with a placeholder service are what every learned
    // service is guarded with.
    let template = Settings {
        service: Some(RawService {
            name: Some("*".into()),
            ..RawService::default()
        }),
        ..global.clone()
    };
    let Some(Scope::Guard(settings)) =
        parse_scope(&template, "", capabilities, true).map_err(|mut error| {
            if error.field == "service.clusters" {
                error.field = "nacos.apiVersion".into();
                error.reason = "guardNacosRoutes needs v1: a learned service's clusters are \
                                unknown, and Nacos 3's v3 API lists only DEFAULT without them"
                    .into();
            }
            error
        })?
    else {
        return Err(error("", AUTO_KEY, "needs a global `nacos`"));
    };
    Ok(AutoGuard {
        template: *settings,
        names,
        idle_ms,
        max_services: usize::try_from(max_services).unwrap_or(usize::MAX),
    })
}

/// The server, and the namespace its services are looked up in.
fn parse_nacos(nacos: &RawNacos, base: &str) -> Result<(NacosServer, String), ConfigError> {
    let cluster = non_empty(base, "cluster", &nacos.cluster)?.ok_or_else(|| {
        error(
            base,
            "cluster",
            "required: the Envoy cluster of the Nacos server",
        )
    })?;
    let authority = non_empty(base, "authority", &nacos.authority)?
        .unwrap_or_else(|| default_authority(&cluster));
    let api = nacos.api_version.unwrap_or(ApiVersion::V1);
    let namespace_id =
        non_empty(base, "namespaceId", &nacos.namespace_id)?.unwrap_or_else(|| "public".into());
    let credentials = match (
        non_empty(base, "username", &nacos.username)?,
        nacos.password.clone(),
    ) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        (Some(_), None) => return Err(error(base, "password", "required when username is set")),
        (None, Some(_)) => return Err(error(base, "username", "required when password is set")),
    };
    let timeout_ms = in_range(
        base,
        "timeoutMs",
        nacos.timeout_ms,
        1..=MAX_TIMEOUT_MS,
        "milliseconds",
    )?
    .unwrap_or(2000);
    let push = nacos
        .push
        .as_ref()
        .map(|push| parse_push(push, &path(base, "push")))
        .transpose()?;
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

fn parse_push(push: &RawPush, base: &str) -> Result<PushSettings, ConfigError> {
    let grpc_cluster = non_empty(base, "grpcCluster", &push.grpc_cluster)?.ok_or_else(|| {
        error(
            base,
            "grpcCluster",
            "required: the Envoy cluster (HTTP/2) of the Nacos gRPC port, usually the HTTP port + 1000",
        )
    })?;
    let safety_interval_ms = in_range(
        base,
        "safetyIntervalMs",
        push.safety_interval_ms,
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

fn parse_service(
    service: &RawService,
    base: &str,
) -> Result<(String, String, InstanceFilter), ConfigError> {
    let name = non_empty(base, "name", &service.name)?
        .ok_or_else(|| error(base, "name", "required where the guard is enabled"))?;
    let group = non_empty(base, "group", &service.group)?.unwrap_or_else(|| "DEFAULT_GROUP".into());
    if !is_nacos_group(&group) {
        return Err(error(base, "group", NOT_A_GROUP));
    }
    let filter = InstanceFilter {
        clusters: non_blank(
            base,
            "clusters",
            service.clusters.clone().unwrap_or_default(),
        )?,
        // In key order, as the map keeps them.
        metadata: service
            .metadata
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    Ok((name, group, filter))
}

fn parse_routing(
    settings: &Settings,
    base: &str,
    capabilities: Capabilities,
) -> Result<Routing, ConfigError> {
    let default = if capabilities.higress_routing {
        RoutingMode::Higress
    } else {
        RoutingMode::Header
    };
    let mode = settings.routing.unwrap_or(default);
    let header = header_name(base, "routingHeader", settings.routing_header.as_deref())?;
    match mode {
        RoutingMode::Higress if !capabilities.higress_routing => Err(error(
            base,
            "routing",
            "`higress` needs the Higress build of the plugin (plugin.wasm); \
             this build is for upstream Envoy, use `header`",
        )),
        RoutingMode::Higress => Ok(Routing::Higress),
        RoutingMode::Header => Ok(Routing::Header(
            header.unwrap_or_else(|| DEFAULT_ROUTING_HEADER.into()),
        )),
    }
}

/// A string that must not be empty or blank where it is set.
fn non_empty(base: &str, key: &str, text: &Option<String>) -> Result<Option<String>, ConfigError> {
    match text {
        Some(text) if text.trim().is_empty() => Err(error(base, key, "must not be empty")),
        other => Ok(other.clone()),
    }
}

/// A list of strings none of which is empty or blank; the error names the item.
fn non_blank(base: &str, key: &str, items: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match items.iter().position(|item| item.trim().is_empty()) {
        Some(index) => Err(ConfigError {
            field: format!("{}[{index}]", path(base, key)),
            reason: "expected a non-empty string".into(),
        }),
        None => Ok(items),
    }
}

const NOT_A_GROUP: &str =
    "not a group name Nacos accepts: letters, digits and `-_:.`, at most 128 characters";

/// Group names, each one Nacos accepts.
fn nacos_groups(base: &str, key: &str, groups: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match groups.iter().position(|group| !is_nacos_group(group)) {
        Some(index) => Err(ConfigError {
            field: format!("{}[{index}]", path(base, key)),
            reason: NOT_A_GROUP.into(),
        }),
        None => Ok(groups),
    }
}

/// A whole number within `range`; `unit` words the error (e.g. "milliseconds").
fn in_range(
    base: &str,
    key: &str,
    value: Option<raw::Whole>,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<Option<u64>, ConfigError> {
    match value {
        None => Ok(None),
        Some(raw::Whole(number)) if range.contains(&number) => Ok(Some(number)),
        Some(raw::Whole(number)) => Err(error(
            base,
            key,
            format!(
                "expected a whole number of {unit} from {} to {}, got {number}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// An HTTP header name (RFC 9110 token), lowercased as Envoy keeps them.
fn header_name(base: &str, key: &str, name: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if is_token {
        Ok(Some(name.to_ascii_lowercase()))
    } else {
        Err(error(
            base,
            key,
            format!("\"{name}\" is not a valid HTTP header name"),
        ))
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;
