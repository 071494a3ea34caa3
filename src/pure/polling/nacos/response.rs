//! Parsing Nacos answers. An answer is either a complete instance list (possibly
//! empty: that is the truth) or an error; there is no half-answer.

use std::fmt;

use serde_json::Value;

use super::ApiVersion;
use crate::pure::json;
use crate::pure::registry::endpoint;
use crate::pure::registry::instance::{Instance, InstanceSet};

/// Answers larger than this are refused unread: a thousand instances with rich
/// metadata stay far below it, and wasm memory does not grow without bound.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why an answer was not taken as the service's instance list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// No answer at all: timeout, reset, no upstream.
    NoAnswer,
    /// HTTP status other than 2xx.
    Status(u16),
    TooLarge(usize),
    /// Not JSON, truncated, or JSON of another shape.
    Malformed(String),
    /// The v3 envelope's `code` was not 0.
    Refused {
        code: i64,
        message: String,
    },
    /// The list had hosts but none with a usable address.
    NoValidHost,
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAnswer => write!(f, "no answer (timeout, reset or no upstream)"),
            Self::Status(status) => write!(f, "HTTP status {status}"),
            Self::TooLarge(size) => write!(f, "answer of {size} bytes exceeds {MAX_ANSWER_BYTES}"),
            Self::Malformed(reason) => write!(f, "malformed answer: {reason}"),
            Self::Refused { code, message } => write!(f, "refused with code {code}: {message}"),
            Self::NoValidHost => write!(f, "every listed host has an invalid address"),
        }
    }
}

/// Nacos's `ServiceInfo`: the v1 list answer, and the list a gRPC subscription
/// answer or push carries (`push::messages`). One shape, so one reader.
pub(crate) struct RawServiceInfo {
    pub name: Option<String>,
    pub group_name: Option<String>,
    pub clusters: Option<String>,
    pub hosts: Option<Vec<RawHost>>,
    pub reach_protection_threshold: bool,
}

impl RawServiceInfo {
    /// Every field read, the hosts too, so a host of the wrong shape makes the whole
    /// answer malformed rather than being skipped.
    pub(crate) fn read(value: &Value) -> Result<Self, String> {
        let info = json::object(value, "service info")?;
        Ok(Self {
            name: json::string(info, "name")?,
            group_name: json::string(info, "groupName")?,
            clusters: json::string(info, "clusters")?,
            hosts: read_hosts(json::array(info, "hosts")?)?,
            reach_protection_threshold: json::bool_or(info, "reachProtectionThreshold", false)?,
        })
    }

    /// Its instances; a list without `hosts` is malformed, an empty one is the truth.
    pub(crate) fn instances(self) -> Result<InstanceSet, AnswerError> {
        match self.hosts {
            Some(hosts) => instance_set(hosts, self.reach_protection_threshold),
            None => Err(AnswerError::Malformed("missing field `hosts`".into())),
        }
    }
}

/// One entry of a `hosts` (v1, gRPC) or `data` (v3) array, with Nacos's defaults
/// for what it leaves out.
pub(crate) struct RawHost {
    ip: String,
    port: i64,
    weight: f64,
    healthy: bool,
    enabled: bool,
    cluster_name: Option<String>,
    /// The string-valued entries only, in key order.
    metadata: Vec<(String, String)>,
}

impl RawHost {
    fn read(value: &Value) -> Result<Self, String> {
        let host = json::object(value, "host")?;
        Ok(Self {
            ip: json::str_or_empty(host, "ip")?.to_string(),
            port: json::int_or(host, "port", 0)?,
            weight: json::float_or(host, "weight", 1.0)?,
            healthy: json::bool_or(host, "healthy", true)?,
            enabled: json::bool_or(host, "enabled", true)?,
            cluster_name: json::string(host, "clusterName")?,
            metadata: json::object_field(host, "metadata")?
                .into_iter()
                .flatten()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect(),
        })
    }
}

fn read_hosts(hosts: Option<&Vec<Value>>) -> Result<Option<Vec<RawHost>>, String> {
    hosts
        .map(|hosts| hosts.iter().map(RawHost::read).collect())
        .transpose()
}

/// Parse an instance-list answer given its HTTP status and body.
pub fn parse_instance_list(
    api: ApiVersion,
    status: u16,
    body: &[u8],
) -> Result<InstanceSet, AnswerError> {
    if !(200..300).contains(&status) {
        return Err(AnswerError::Status(status));
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(body.len()));
    }
    let value = json::parse(body).map_err(AnswerError::Malformed)?;
    let (hosts, protection_reached) = match api {
        ApiVersion::V1 => {
            return RawServiceInfo::read(&value)
                .map_err(AnswerError::Malformed)?
                .instances();
        }
        ApiVersion::V3 => {
            let (code, message, data) = read_v3(&value).map_err(AnswerError::Malformed)?;
            if code != 0 {
                return Err(AnswerError::Refused {
                    code,
                    message: message.unwrap_or_default(),
                });
            }
            let hosts =
                data.ok_or_else(|| AnswerError::Malformed("missing field `data`".into()))?;
            (hosts, false)
        }
    };
    instance_set(hosts, protection_reached)
}

/// The v3 envelope: `code`, `message`, and the hosts as `data`, read whether or not
/// `code` says the answer is good.
type V3List = (i64, Option<String>, Option<Vec<RawHost>>);

fn read_v3(value: &Value) -> Result<V3List, String> {
    let list = json::object(value, "answer")?;
    let code = json::int(list, "code")?.ok_or("missing field `code`")?;
    Ok((
        code,
        json::string(list, "message")?,
        read_hosts(json::array(list, "data")?)?,
    ))
}

/// The instances of a listed `hosts` array, the same for every API: hosts without a
/// usable address are dropped, and so are repeats of an address.
pub(crate) fn instance_set(
    hosts: Vec<RawHost>,
    protection_reached: bool,
) -> Result<InstanceSet, AnswerError> {
    let listed = hosts.len();
    let mut instances: Vec<Instance> = Vec::with_capacity(listed);
    for host in hosts {
        let Some(endpoint) = endpoint::from_parts(&host.ip, host.port) else {
            continue;
        };
        // A registry that lists one address twice gets one instance, the first.
        if instances.iter().any(|known| known.endpoint == endpoint) {
            continue;
        }
        instances.push(Instance {
            endpoint,
            weight: host.weight,
            healthy: host.healthy,
            enabled: host.enabled,
            cluster: host.cluster_name.unwrap_or_else(|| "DEFAULT".to_string()),
            metadata: host.metadata,
        });
    }
    if listed > 0 && instances.is_empty() {
        return Err(AnswerError::NoValidHost);
    }
    Ok(InstanceSet {
        instances,
        protection_reached,
    })
}

/// A login answer: the token and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginGrant {
    pub access_token: String,
    pub ttl_seconds: u64,
}

struct RawGrant {
    access_token: Option<String>,
    token_ttl: Option<u64>,
    data: Option<Box<RawGrant>>,
}

impl RawGrant {
    /// Nested `data` is read to any depth, as a grant of the same shape.
    fn read(value: &Value) -> Result<Self, String> {
        let grant = json::object(value, "login answer")?;
        Ok(Self {
            access_token: json::string(grant, "accessToken")?,
            token_ttl: json::uint(grant, "tokenTtl")?,
            data: json::present(grant, "data")
                .map(|data| Self::read(data).map(Box::new))
                .transpose()?,
        })
    }
}

/// Parse a login answer, flat (`{accessToken, tokenTtl}`) or wrapped in `data`.
pub fn parse_login(status: u16, body: &[u8]) -> Result<LoginGrant, AnswerError> {
    if !(200..300).contains(&status) {
        return Err(AnswerError::Status(status));
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(body.len()));
    }
    let raw = json::parse(body)
        .and_then(|value| RawGrant::read(&value))
        .map_err(AnswerError::Malformed)?;
    let raw = match raw {
        RawGrant {
            access_token: None,
            data: Some(inner),
            ..
        } => *inner,
        flat => flat,
    };
    match (raw.access_token, raw.token_ttl) {
        (Some(access_token), Some(ttl_seconds)) if !access_token.is_empty() => Ok(LoginGrant {
            access_token,
            ttl_seconds,
        }),
        _ => Err(AnswerError::Malformed(
            "login answer lacks `accessToken` or `tokenTtl`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const NACOS_V1: &str = r#"{"name":"DEFAULT_GROUP@@demo","groupName":"DEFAULT_GROUP",
        "clusters":"","cacheMillis":10000,"hosts":[
        {"instanceId":"10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@demo","ip":"10.0.0.1","port":8080,
         "weight":2.0,"healthy":true,"enabled":true,"ephemeral":false,"clusterName":"DEFAULT",
         "serviceName":"DEFAULT_GROUP@@demo","metadata":{"zone":"a","n":"1"},
         "instanceHeartBeatInterval":5000,"ipDeleteTimeout":30000,"instanceHeartBeatTimeOut":15000},
        {"ip":"10.0.0.2","port":8080,"weight":1.0,"healthy":false,"enabled":true,
         "ephemeral":false,"clusterName":"B","metadata":{}}],
        "lastRefTime":1700000000000,"checksum":"","allIPs":false,"reachProtectionThreshold":false,
        "valid":true}"#;

    // r-nacos leaves out several fields and spells metadata values as strings only.
    const RNACOS_V1: &str = r#"{"name":"DEFAULT_GROUP@@demo","clusters":"","cacheMillis":10000,
        "hosts":[{"ip":"127.0.0.1","port":18080,"weight":1.0,"healthy":true,"enabled":true,
        "ephemeral":false,"clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@demo",
        "metadata":{}}],"lastRefTime":1700000000000,"checksum":"","allIPs":false,
        "reachProtectionThreshold":false}"#;

    #[test]
    fn nacos_v1_answer_gives_every_instance_with_its_fields() {
        let set = parse_instance_list(ApiVersion::V1, 200, NACOS_V1.as_bytes()).unwrap();
        assert!(!set.protection_reached);
        assert_eq!(set.instances.len(), 2);
        let first = &set.instances[0];
        assert_eq!(first.endpoint, "10.0.0.1:8080");
        assert_eq!(first.weight, 2.0);
        assert_eq!(first.cluster, "DEFAULT");
        assert_eq!(
            first.metadata,
            vec![
                ("n".to_string(), "1".to_string()),
                ("zone".to_string(), "a".to_string())
            ]
        );
        assert!(!set.instances[1].healthy);
        assert_eq!(set.instances[1].cluster, "B");
    }

    #[test]
    fn rnacos_v1_answer_parses() {
        let set = parse_instance_list(ApiVersion::V1, 200, RNACOS_V1.as_bytes()).unwrap();
        assert_eq!(set.instances.len(), 1);
        assert_eq!(set.instances[0].endpoint, "127.0.0.1:18080");
    }

    #[test]
    fn empty_host_list_is_an_answer_not_an_error() {
        let set = parse_instance_list(ApiVersion::V1, 200, br#"{"hosts":[]}"#).unwrap();
        assert!(set.instances.is_empty());
    }

    #[test]
    fn missing_optional_fields_take_nacos_defaults() {
        let set = parse_instance_list(
            ApiVersion::V1,
            200,
            br#"{"hosts":[{"ip":"::1","port":80}]}"#,
        )
        .unwrap();
        let only = &set.instances[0];
        assert_eq!(only.endpoint, "[::1]:80");
        assert_eq!((only.weight, only.healthy, only.enabled), (1.0, true, true));
        assert_eq!(only.cluster, "DEFAULT");
    }

    #[test]
    fn protection_flag_is_read() {
        let set = parse_instance_list(
            ApiVersion::V1,
            200,
            br#"{"hosts":[],"reachProtectionThreshold":true}"#,
        )
        .unwrap();
        assert!(set.protection_reached);
    }

    #[test]
    fn invalid_and_duplicate_hosts_are_dropped() {
        let body = br#"{"hosts":[
            {"ip":"10.0.0.1","port":80,"weight":1},
            {"ip":"10.0.0.1","port":80,"weight":5},
            {"ip":"not-an-ip","port":80},
            {"ip":"10.0.0.2","port":70000},
            {"ip":"10.0.0.3","port":0}]}"#;
        let set = parse_instance_list(ApiVersion::V1, 200, body).unwrap();
        assert_eq!(set.instances.len(), 1);
        assert_eq!(set.instances[0].weight, 1.0);
    }

    #[test]
    fn a_list_of_only_invalid_hosts_is_an_error_not_an_empty_service() {
        let body = br#"{"hosts":[{"ip":"999.1.1.1","port":80}]}"#;
        assert_eq!(
            parse_instance_list(ApiVersion::V1, 200, body),
            Err(AnswerError::NoValidHost)
        );
    }

    #[test]
    fn errors_are_not_empty_lists() {
        let cases: [(u16, &[u8]); 8] = [
            (500, b"server error"),
            (403, b"unknown user!"),
            (410, br#"{"hosts":[]}"#),
            (200, b"<html><body>hello</body></html>"),
            (200, br#"{"hosts":[{"ip":"10.0.0.1","port":80}"#),
            (200, br#"{"name":"demo"}"#),
            (200, br#"{"hosts":{"ip":"10.0.0.1"}}"#),
            (200, b""),
        ];
        for (status, body) in cases {
            assert!(
                parse_instance_list(ApiVersion::V1, status, body).is_err(),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn oversized_answer_is_refused() {
        let body = vec![b' '; MAX_ANSWER_BYTES + 1];
        assert_eq!(
            parse_instance_list(ApiVersion::V1, 200, &body),
            Err(AnswerError::TooLarge(MAX_ANSWER_BYTES + 1))
        );
    }

    #[test]
    fn v3_envelope_is_unwrapped_and_its_errors_kept() {
        let ok = br#"{"code":0,"message":"success","data":[{"ip":"10.0.0.9","port":9,
            "weight":1.0,"healthy":true,"enabled":true,"ephemeral":false,"clusterName":"DEFAULT",
            "serviceName":"demo","metadata":{}}]}"#;
        let set = parse_instance_list(ApiVersion::V3, 200, ok).unwrap();
        assert_eq!(set.instances[0].endpoint, "10.0.0.9:9");
        assert_eq!(
            parse_instance_list(
                ApiVersion::V3,
                200,
                br#"{"code":20004,"message":"no such"}"#
            ),
            Err(AnswerError::Refused {
                code: 20004,
                message: "no such".into()
            })
        );
        assert!(parse_instance_list(ApiVersion::V3, 200, br#"{"code":0}"#).is_err());
        let empty = parse_instance_list(ApiVersion::V3, 200, br#"{"code":0,"data":[]}"#);
        assert!(empty.unwrap().instances.is_empty());
    }

    #[test]
    fn login_answer_flat_or_wrapped() {
        let flat = br#"{"accessToken":"abc","tokenTtl":18000,"globalAdmin":true}"#;
        assert_eq!(
            parse_login(200, flat),
            Ok(LoginGrant {
                access_token: "abc".into(),
                ttl_seconds: 18000
            })
        );
        let wrapped = br#"{"code":0,"data":{"accessToken":"xyz","tokenTtl":5}}"#;
        assert_eq!(parse_login(200, wrapped).unwrap().access_token, "xyz");
    }

    #[test]
    fn login_failures_are_errors() {
        assert_eq!(
            parse_login(403, b"unknown user!"),
            Err(AnswerError::Status(403))
        );
        assert!(parse_login(200, br#"{"accessToken":"","tokenTtl":5}"#).is_err());
        assert!(parse_login(200, br#"{"tokenTtl":5}"#).is_err());
        assert!(parse_login(200, b"not json").is_err());
    }
}
