//! Parsing Nacos answers. An answer is either a complete instance list (possibly
//! empty: that is the truth) or an error; there is no half-answer.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::ApiVersion;
use crate::pure::json::{self, objects_only};
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
/// answer or push carries (`push::messages`). One shape, so one reader. Every field
/// is read, the hosts too, so a host of the wrong shape makes the whole answer
/// malformed rather than being skipped; fields it does not know are ignored.
#[derive(Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub(crate) struct RawServiceInfo {
    pub name: Option<String>,
    pub group_name: Option<String>,
    pub clusters: Option<String>,
    pub hosts: Option<Vec<RawHost>>,
    pub reach_protection_threshold: Option<bool>,
}

impl RawServiceInfo {
    /// Its instances; a list without `hosts` is malformed, an empty one is the truth.
    pub(crate) fn instances(self) -> Result<InstanceSet, AnswerError> {
        match self.hosts {
            Some(hosts) => instance_set(hosts, self.reach_protection_threshold.unwrap_or(false)),
            None => Err(AnswerError::Malformed("missing field `hosts`".into())),
        }
    }
}

/// One entry of a `hosts` (v1, gRPC) or `data` (v3) array; what it leaves out takes
/// Nacos's defaults in [`instance_set`].
#[derive(Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub(crate) struct RawHost {
    ip: Option<String>,
    port: Option<i64>,
    weight: Option<f64>,
    healthy: Option<bool>,
    enabled: Option<bool>,
    cluster_name: Option<String>,
    metadata: Option<TextEntries>,
}

/// The v3 envelope: `code`, `message`, and the hosts as `data`, read whether or not
/// `code` says the answer is good.
#[derive(Deserialize)]
#[serde(remote = "Self")]
struct V3List {
    code: Option<i64>,
    message: Option<String>,
    data: Option<Vec<RawHost>>,
}

objects_only!(RawServiceInfo, RawHost, V3List, RawGrant);

/// A metadata object: its string-valued entries, in key order (a key listed twice
/// counts once, the last time). Values of other types are skipped, not refused:
/// Nacos keeps metadata as strings, and the filter compares strings.
struct TextEntries(Vec<(String, String)>);

impl<'de> Deserialize<'de> for TextEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = TextEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextEntries, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((key, TextOrNot(value))) = map.next_entry::<String, TextOrNot>()? {
                    entries.insert(key, value);
                }
                Ok(TextEntries(
                    entries
                        .into_iter()
                        .filter_map(|(key, value)| Some((key, value?)))
                        .collect(),
                ))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// Any JSON value, kept only if it is a string.
struct TextOrNot(Option<String>);

impl<'de> Deserialize<'de> for TextOrNot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = TextOrNot;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TextOrNot, E> {
                Ok(TextOrNot(Some(text.to_string())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<TextOrNot, E> {
                Ok(TextOrNot(Some(text)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextOrNot, E> {
                Ok(TextOrNot(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextOrNot, E> {
                Ok(TextOrNot(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextOrNot, E> {
                Ok(TextOrNot(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextOrNot, E> {
                Ok(TextOrNot(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextOrNot, E> {
                Ok(TextOrNot(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TextOrNot, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| TextOrNot(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TextOrNot, A::Error> {
                IgnoredAny.visit_map(map).map(|_| TextOrNot(None))
            }
        }
        deserializer.deserialize_any(Any)
    }
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
    match api {
        ApiVersion::V1 => json::read::<RawServiceInfo>(body)
            .map_err(AnswerError::Malformed)?
            .instances(),
        ApiVersion::V3 => {
            let list = json::read::<V3List>(body).map_err(AnswerError::Malformed)?;
            let code = list
                .code
                .ok_or_else(|| AnswerError::Malformed("missing field `code`".into()))?;
            if code != 0 {
                return Err(AnswerError::Refused {
                    code,
                    message: list.message.unwrap_or_default(),
                });
            }
            let hosts = list
                .data
                .ok_or_else(|| AnswerError::Malformed("missing field `data`".into()))?;
            // The v3 API has no protection flag.
            instance_set(hosts, false)
        }
    }
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
        let ip = host.ip.as_deref().unwrap_or_default();
        let Some(endpoint) = endpoint::from_parts(ip, host.port.unwrap_or(0)) else {
            continue;
        };
        // A registry that lists one address twice gets one instance, the first.
        if instances.iter().any(|known| known.endpoint == endpoint) {
            continue;
        }
        instances.push(Instance {
            endpoint,
            weight: host.weight.unwrap_or(1.0),
            healthy: host.healthy.unwrap_or(true),
            enabled: host.enabled.unwrap_or(true),
            cluster: host.cluster_name.unwrap_or_else(|| "DEFAULT".to_string()),
            metadata: host.metadata.map(|entries| entries.0).unwrap_or_default(),
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

/// A login answer as Nacos writes it; a nested `data` is read to any depth, as a
/// grant of the same shape.
#[derive(Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
struct RawGrant {
    access_token: Option<String>,
    token_ttl: Option<u64>,
    data: Option<Box<RawGrant>>,
}

/// Parse a login answer, flat (`{accessToken, tokenTtl}`) or wrapped in `data`.
pub fn parse_login(status: u16, body: &[u8]) -> Result<LoginGrant, AnswerError> {
    if !(200..300).contains(&status) {
        return Err(AnswerError::Status(status));
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(body.len()));
    }
    let raw = json::read::<RawGrant>(body).map_err(AnswerError::Malformed)?;
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

    #[test]
    fn a_null_field_reads_as_if_it_were_left_out() {
        let null =
            br#"{"name":null,"groupName":null,"clusters":null,"reachProtectionThreshold":null,
            "hosts":[{"ip":"10.0.0.1","port":80,"weight":null,"healthy":null,"enabled":null,
            "clusterName":null,"metadata":null}]}"#;
        let absent = br#"{"hosts":[{"ip":"10.0.0.1","port":80}]}"#;
        let read = parse_instance_list(ApiVersion::V1, 200, null).unwrap();
        assert_eq!(
            read,
            parse_instance_list(ApiVersion::V1, 200, absent).unwrap()
        );
        let only = &read.instances[0];
        assert_eq!((only.weight, only.healthy, only.enabled), (1.0, true, true));
        assert_eq!(only.cluster, "DEFAULT");
        // Without an address a host is unusable, whether its fields are null or absent.
        let no_port = br#"{"hosts":[{"ip":"10.0.0.1","port":null}]}"#;
        assert_eq!(
            parse_instance_list(ApiVersion::V1, 200, no_port),
            Err(AnswerError::NoValidHost)
        );
        // A null list is no list: malformed, never an empty service.
        assert_eq!(
            parse_instance_list(ApiVersion::V1, 200, br#"{"hosts":null}"#),
            Err(AnswerError::Malformed("missing field `hosts`".into()))
        );
        assert_eq!(
            parse_instance_list(ApiVersion::V3, 200, br#"{"code":null,"data":[]}"#),
            Err(AnswerError::Malformed("missing field `code`".into()))
        );
        assert_eq!(
            parse_instance_list(ApiVersion::V3, 200, br#"{"code":0,"data":null}"#),
            Err(AnswerError::Malformed("missing field `data`".into()))
        );
        // A null item of the list is a host of the wrong type.
        assert!(matches!(
            parse_instance_list(ApiVersion::V1, 200, br#"{"hosts":[null]}"#),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_fields_of_any_shape_are_ignored() {
        let body = br#"{"future":{"deep":[1,{"x":null}]},"hosts":[{"ip":"10.0.0.1","port":80,
            "extra":[true,{"y":"z"}],"weight":3,"ipDeleteTimeout":30000}],"dom":"demo"}"#;
        let set = parse_instance_list(ApiVersion::V1, 200, body).unwrap();
        assert_eq!(set.instances[0].endpoint, "10.0.0.1:80");
        assert_eq!(set.instances[0].weight, 3.0);
        let v3 = br#"{"code":0,"message":null,"traceId":"t","data":[{"ip":"10.0.0.2","port":1,"new":{}}]}"#;
        assert_eq!(
            parse_instance_list(ApiVersion::V3, 200, v3)
                .unwrap()
                .instances[0]
                .endpoint,
            "10.0.0.2:1"
        );
    }

    #[test]
    fn metadata_keeps_its_string_entries_in_key_order() {
        let body = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"metadata":{"z":"1","n":2,
            "o":{"a":"b"},"l":["c"],"nil":null,"b":true,"a":"x","f":1.5}}]}"#;
        let set = parse_instance_list(ApiVersion::V1, 200, body).unwrap();
        assert_eq!(
            set.instances[0].metadata,
            vec![
                ("a".to_string(), "x".to_string()),
                ("z".to_string(), "1".to_string())
            ]
        );
        for metadata in ["[]", "\"zone=a\"", "1"] {
            let body =
                format!(r#"{{"hosts":[{{"ip":"10.0.0.1","port":80,"metadata":{metadata}}}]}}"#);
            assert!(
                parse_instance_list(ApiVersion::V1, 200, body.as_bytes()).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn a_field_of_another_type_makes_the_whole_answer_malformed() {
        for host in [
            r#"{"ip":1,"port":80}"#,
            r#"{"ip":"10.0.0.1","port":"80"}"#,
            r#"{"ip":"10.0.0.1","port":80.5}"#,
            r#"{"ip":"10.0.0.1","port":80,"weight":"1"}"#,
            r#"{"ip":"10.0.0.1","port":80,"healthy":"true"}"#,
            r#"{"ip":"10.0.0.1","port":80,"enabled":1}"#,
            r#"{"ip":"10.0.0.1","port":80,"clusterName":[]}"#,
            r#"["10.0.0.1",80]"#,
        ] {
            // Beside a good host, so the bad one cannot simply be dropped.
            let body = format!(r#"{{"hosts":[{{"ip":"10.0.0.9","port":1}},{host}]}}"#);
            assert!(
                matches!(
                    parse_instance_list(ApiVersion::V1, 200, body.as_bytes()),
                    Err(AnswerError::Malformed(_))
                ),
                "{body}"
            );
        }
        for body in [
            r#"{"hosts":[],"reachProtectionThreshold":"true"}"#,
            r#"{"hosts":[],"name":1}"#,
            r#"[[]]"#,
        ] {
            assert!(
                parse_instance_list(ApiVersion::V1, 200, body.as_bytes()).is_err(),
                "{body}"
            );
        }
        assert!(parse_instance_list(ApiVersion::V3, 200, br#"{"code":"0","data":[]}"#).is_err());
        assert!(parse_instance_list(ApiVersion::V3, 200, br#"[0,null,[]]"#).is_err());
    }

    #[test]
    fn login_answer_null_fields_are_absent() {
        let flat_with_null_data = br#"{"accessToken":"abc","tokenTtl":5,"data":null}"#;
        assert_eq!(
            parse_login(200, flat_with_null_data).unwrap().access_token,
            "abc"
        );
        let wrapped =
            br#"{"accessToken":null,"data":{"data":{"accessToken":"deep","tokenTtl":7}}}"#;
        assert!(parse_login(200, wrapped).is_err(), "one level of data only");
        let wrapped = br#"{"accessToken":null,"data":{"accessToken":"in","tokenTtl":7,"x":[]}}"#;
        assert_eq!(parse_login(200, wrapped).unwrap().ttl_seconds, 7);
        assert!(parse_login(200, br#"{"accessToken":"abc","tokenTtl":null}"#).is_err());
        assert!(parse_login(200, br#"{"accessToken":"abc","tokenTtl":-1}"#).is_err());
        assert!(parse_login(200, br#"["abc",5]"#).is_err());
    }

    #[test]
    fn a_large_answer_below_the_limit_is_read() {
        // 6,000 instances with metadata: about 1.2 MB, under a third of the limit.
        let host = |i: usize| {
            format!(
                r#"{{"ip":"10.{}.{}.1","port":8080,"weight":1.0,"healthy":true,"enabled":true,
                "clusterName":"DEFAULT","metadata":{{"zone":"zone-{i}","version":"v{i}","owner":"team-{i}"}},
                "instanceId":"10.{}.{}.1#8080#DEFAULT#DEFAULT_GROUP@@demo"}}"#,
                i / 250,
                i % 250,
                i / 250,
                i % 250
            )
        };
        let hosts: Vec<String> = (0..6_000).map(host).collect();
        let body = format!(r#"{{"hosts":[{}]}}"#, hosts.join(","));
        assert!(body.len() > 1_100_000 && body.len() < MAX_ANSWER_BYTES);
        let set = parse_instance_list(ApiVersion::V1, 200, body.as_bytes()).unwrap();
        assert_eq!(set.instances.len(), 6_000);
    }
}
