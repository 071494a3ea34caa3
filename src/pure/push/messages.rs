//! The Nacos 2.x gRPC messages this plugin sends and reads: JSON bodies inside a
//! [`Payload`], named by `metadata.type` (the Java class's simple name).
//!
//! Field names were checked against alibaba/nacos (`api/src/main/java/com/alibaba/nacos/api/`
//! `remote/request/{Request,ServerCheckRequest,ConnectionSetupRequest}.java`,
//! `remote/response/Response.java`, `naming/remote/request/{SubscribeServiceRequest,`
//! `NotifySubscriberRequest}.java`, and `common/.../remote/client/grpc/GrpcUtils.java`)
//! and r-nacos 0.8.8 (`src/grpc/api_model.rs`, `src/grpc/server.rs`,
//! `src/grpc/bistream_manage.rs`, `src/grpc/handler/{mod,naming_subscribe_service}.rs`),
//! and against the bytes r-nacos 0.8.8 really sent (`captured/`, made by `capture.py`).
//!
//! The access token travels in the Payload's metadata headers: r-nacos reads it only
//! there (`server.rs` `fill_token_session`; a token only in the JSON `headers` was
//! refused with 403 in the capture), and the Java server lays the metadata headers
//! over the JSON ones (`GrpcUtils.parse`), while its client sends them in the
//! metadata only. It is put in the JSON `headers` too, which costs nothing.

use std::fmt;

use serde::Deserialize;

use super::wire::{self, Payload, WireError};
use crate::pure::json::{self, objects_only, quoted};
use crate::pure::polling::nacos::request::ServiceKey;
use crate::pure::polling::nacos::response::{AnswerError, RawServiceInfo, MAX_ANSWER_BYTES};
use crate::pure::registry::instance::InstanceSet;

/// What a subscribe answer or a push says about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub group: String,
    /// The clusters the server filtered on, comma-joined; empty for all.
    pub clusters: String,
    /// The instances, read by the same rules as the v1 list answer: an empty list is
    /// an empty service; a list without `hosts`, or of only unusable hosts, is an error.
    pub list: Result<InstanceSet, AnswerError>,
}

/// What the server sends on the bi-stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The service changed; answer with [`notify_ack`].
    Notify {
        request_id: String,
        service: ServiceInfo,
    },
    /// The server asks whether the client lives; answer with [`detection_ack`] or the
    /// server closes the stream (r-nacos: 3 s after asking).
    Detection { request_id: String },
    /// The server wants the client to connect again (to itself or elsewhere).
    /// Answer with [`reset_ack`] first: Java waits up to 3 s for it before it
    /// closes the connection (`core/.../remote/ConnectionManager.java`,
    /// `loadSingle`). `None` when the body named no request.
    Reset { request_id: Option<String> },
    /// Any other message, by its type; the plugin has nothing to do with it.
    Other(String),
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    Wire(WireError),
    /// Not JSON, JSON of another shape, a required field missing, or too large.
    Malformed(String),
    /// An answer of another type than the request asks for.
    WrongType {
        expected: &'static str,
        got: String,
    },
    /// The server said no: `ErrorResponse`, or a `resultCode` other than 200. The code
    /// is `errorCode` where the server set one (301: connection unregistered, 403:
    /// unknown user), else `resultCode`.
    Refused {
        code: i64,
        message: String,
    },
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(error) => error.fmt(f),
            Self::Malformed(reason) => write!(f, "malformed message: {reason}"),
            Self::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
            Self::Refused { code, message } => write!(f, "refused with code {code}: {message}"),
        }
    }
}

impl From<WireError> for PushError {
    fn from(error: WireError) -> Self {
        Self::Wire(error)
    }
}

/// The fields of every message read here; each message has a few of them. Every
/// one is read, `serviceInfo` with its hosts too, so a message with any of them of
/// the wrong type is malformed as a whole; fields it does not know are ignored.
#[derive(Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
struct Body {
    result_code: Option<i64>,
    error_code: Option<i64>,
    message: Option<String>,
    request_id: Option<String>,
    connection_id: Option<String>,
    service_info: Option<RawServiceInfo>,
}

objects_only!(Body);

/// The unary `ServerCheckRequest`, which gives the connection's id.
pub fn server_check() -> Vec<u8> {
    request(
        "ServerCheckRequest",
        None,
        r#"{"requestId":"","headers":{},"module":"internal"}"#.into(),
    )
}

/// The connection id of a `ServerCheckResponse`.
pub fn read_server_check(bytes: &[u8]) -> Result<String, PushError> {
    required(
        answer(bytes, "ServerCheckResponse")?.connection_id,
        "connectionId",
    )
}

/// The unary `HealthCheckRequest`, the link's keepalive, as the Java client
/// sends it every 5 s (`common/.../remote/client/RpcClient.java`). Unlike
/// `ServerCheckRequest`, both servers answer it only on a registered
/// connection (Java: `core/.../remote/grpc/GrpcRequestAcceptor.java`; r-nacos:
/// `ignore_active_err` in `src/grpc/handler/mod.rs`), and Java counts it as the
/// connection's activity, so it spares the idle connection a `ClientDetectionRequest`.
pub fn health_check() -> Vec<u8> {
    request(
        "HealthCheckRequest",
        None,
        r#"{"requestId":"","headers":{},"module":"internal"}"#.into(),
    )
}

/// Whether a `HealthCheckResponse` says the connection is registered and well.
pub fn read_health_check(bytes: &[u8]) -> Result<(), PushError> {
    answer(bytes, "HealthCheckResponse").map(|_| ())
}

/// The first message on the bi-stream. `clientVersion` is `name:vVERSION` because both
/// servers split it at the colon (r-nacos `ClientVersion::from_string`); the labels
/// are the ones the Java naming client sends.
pub fn connection_setup(namespace: &str) -> Vec<u8> {
    request(
        "ConnectionSetupRequest",
        None,
        format!(
            r#"{{"requestId":"","headers":{{}},"module":"internal","clientVersion":"{}","tenant":{},"labels":{{"source":"sdk","module":"naming"}}}}"#,
            concat!("nacos-instance-guard:v", env!("CARGO_PKG_VERSION")),
            quoted(namespace)
        ),
    )
}

/// The unary `SubscribeServiceRequest` for `service`. It must travel on the HTTP/2
/// connection of an open bi-stream: servers know a client by its connection and
/// refuse it otherwise (301, "Connection is unregistered.").
pub fn subscribe(
    service: &ServiceKey,
    clusters: &[String],
    access_token: Option<&str>,
    request_id: &str,
) -> Vec<u8> {
    let headers = access_token.map_or(String::new(), |token| {
        format!(r#""accessToken":{}"#, quoted(token))
    });
    request(
        "SubscribeServiceRequest",
        access_token,
        format!(
            r#"{{"requestId":{},"headers":{{{headers}}},"module":"naming","namespace":{},"serviceName":{},"groupName":{},"clusters":{},"subscribe":true}}"#,
            quoted(request_id),
            quoted(&service.namespace_id),
            quoted(&service.name),
            quoted(&service.group),
            quoted(&clusters.join(",")),
        ),
    )
}

/// The service as a `SubscribeServiceResponse` lists it.
pub fn read_subscribe_answer(bytes: &[u8]) -> Result<ServiceInfo, PushError> {
    service_info(answer(bytes, "SubscribeServiceResponse")?.service_info)
}

/// One message the server sent on the bi-stream.
pub fn read_stream_message(bytes: &[u8]) -> Result<ServerMessage, PushError> {
    let payload = wire::decode(bytes)?;
    match payload.message_type.as_str() {
        "NotifySubscriberRequest" => {
            let body = parse(&payload.body)?;
            Ok(ServerMessage::Notify {
                request_id: required(body.request_id, "requestId")?,
                service: service_info(body.service_info)?,
            })
        }
        "ClientDetectionRequest" => Ok(ServerMessage::Detection {
            request_id: required(parse(&payload.body)?.request_id, "requestId")?,
        }),
        "ConnectResetRequest" => Ok(ServerMessage::Reset {
            request_id: parse(&payload.body).ok().and_then(|body| body.request_id),
        }),
        _ => Ok(ServerMessage::Other(payload.message_type)),
    }
}

/// The answer to a push, on the bi-stream; the server matches it by `request_id`.
pub fn notify_ack(request_id: &str) -> Vec<u8> {
    ack("NotifySubscriberResponse", request_id)
}

/// The answer to a `ClientDetectionRequest`, on the bi-stream.
pub fn detection_ack(request_id: &str) -> Vec<u8> {
    ack("ClientDetectionResponse", request_id)
}

/// The answer to a `ConnectResetRequest`, on the bi-stream.
pub fn reset_ack(request_id: &str) -> Vec<u8> {
    ack("ConnectResetResponse", request_id)
}

fn ack(message_type: &str, request_id: &str) -> Vec<u8> {
    request(
        message_type,
        None,
        format!(
            r#"{{"requestId":{},"resultCode":200,"errorCode":0,"message":""}}"#,
            quoted(request_id)
        ),
    )
}

fn request(message_type: &str, access_token: Option<&str>, body: String) -> Vec<u8> {
    wire::encode(&Payload {
        message_type: message_type.to_string(),
        headers: access_token
            .map(|token| ("accessToken".to_string(), token.to_string()))
            .into_iter()
            .collect(),
        body: body.into_bytes(),
    })
}

/// The body of an answer of type `expected`, refused ones as errors.
fn answer(bytes: &[u8], expected: &'static str) -> Result<Body, PushError> {
    let payload = wire::decode(bytes)?;
    if payload.message_type != expected && payload.message_type != "ErrorResponse" {
        return Err(PushError::WrongType {
            expected,
            got: payload.message_type,
        });
    }
    let body = parse(&payload.body)?;
    if payload.message_type != expected || body.result_code != Some(200) {
        return Err(PushError::Refused {
            code: body
                .error_code
                .filter(|&code| code != 0)
                .or(body.result_code)
                .unwrap_or_default(),
            message: body.message.unwrap_or_default(),
        });
    }
    Ok(body)
}

fn parse(json: &[u8]) -> Result<Body, PushError> {
    if json.len() > MAX_ANSWER_BYTES {
        return Err(PushError::Malformed(format!(
            "{} bytes exceed {MAX_ANSWER_BYTES}",
            json.len()
        )));
    }
    json::read::<Body>(json).map_err(PushError::Malformed)
}

fn required<T>(field: Option<T>, name: &str) -> Result<T, PushError> {
    field.ok_or_else(|| PushError::Malformed(format!("missing `{name}`")))
}

fn service_info(raw: Option<RawServiceInfo>) -> Result<ServiceInfo, PushError> {
    let mut raw = required(raw, "serviceInfo")?;
    let full_name = raw.name.take().unwrap_or_default();
    // Nacos may name the service `group@@name`, as its v1 list answer does.
    let (group, name) = full_name.split_once("@@").unwrap_or(("", &full_name));
    Ok(ServiceInfo {
        group: raw
            .group_name
            .take()
            .filter(|group| !group.is_empty())
            .unwrap_or_else(|| group.to_string()),
        name: name.to_string(),
        clusters: raw.clusters.take().unwrap_or_default(),
        list: raw.instances(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde_json::json;

    const SERVER_CHECK: &[u8] = include_bytes!("captured/server_check.bin");
    const SUBSCRIBE_ONE_HOST: &[u8] = include_bytes!("captured/subscribe_one_host.bin");
    const SUBSCRIBE_UNREGISTERED: &[u8] = include_bytes!("captured/subscribe_unregistered.bin");
    const SUBSCRIBE_NO_TOKEN: &[u8] = include_bytes!("captured/subscribe_no_token.bin");
    const NOTIFY_TWO_HOSTS: &[u8] = include_bytes!("captured/notify_two_hosts.bin");
    const NOTIFY_EMPTY: &[u8] = include_bytes!("captured/notify_empty.bin");
    const DETECTION: &[u8] = include_bytes!("captured/detection.bin");

    fn body_of(bytes: &[u8]) -> (String, serde_json::Value) {
        let payload = wire::decode(bytes).unwrap();
        (
            payload.message_type,
            serde_json::from_slice(&payload.body).unwrap(),
        )
    }

    fn message(message_type: &str, body: &str) -> Vec<u8> {
        wire::encode(&Payload {
            message_type: message_type.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn server_check_gives_the_connection_id() {
        assert_eq!(
            read_server_check(SERVER_CHECK).unwrap(),
            "1_127.0.0.1:58414"
        );
        let (kind, body) = body_of(&server_check());
        assert_eq!(kind, "ServerCheckRequest");
        assert_eq!(body["module"], "internal");
    }

    #[test]
    fn subscribe_answer_lists_the_registered_host() {
        let service = read_subscribe_answer(SUBSCRIBE_ONE_HOST).unwrap();
        assert_eq!(
            (service.name.as_str(), service.group.as_str()),
            ("demo", "DEFAULT_GROUP")
        );
        let set = service.list.unwrap();
        assert_eq!(set.instances.len(), 1);
        assert_eq!(set.instances[0].endpoint, "127.0.0.1:60119");
        assert!(set.instances[0].healthy);
    }

    #[test]
    fn refused_subscribe_answers_are_errors_with_code_and_message() {
        assert_eq!(
            read_subscribe_answer(SUBSCRIBE_UNREGISTERED),
            Err(PushError::Refused {
                code: 301,
                message: "Connection is unregistered.".into()
            })
        );
        let no_token = read_subscribe_answer(SUBSCRIBE_NO_TOKEN).unwrap_err();
        assert_eq!(no_token.to_string(), "refused with code 403: unknown user!");
        let failed = message(
            "SubscribeServiceResponse",
            r#"{"resultCode":500,"errorCode":0,"message":"naming handler result type is error"}"#,
        );
        assert!(matches!(
            read_subscribe_answer(&failed),
            Err(PushError::Refused { code: 500, .. })
        ));
    }

    #[test]
    fn pushes_carry_the_whole_list_and_an_empty_one_is_an_empty_set() {
        let ServerMessage::Notify {
            request_id,
            service,
        } = read_stream_message(NOTIFY_TWO_HOSTS).unwrap()
        else {
            panic!("not a push")
        };
        assert_eq!(request_id, "2");
        let endpoints: Vec<_> = service
            .list
            .unwrap()
            .instances
            .into_iter()
            .map(|instance| instance.endpoint)
            .collect();
        assert_eq!(endpoints, ["127.0.0.1:60119", "127.0.0.1:53299"]);

        let ServerMessage::Notify {
            request_id,
            service,
        } = read_stream_message(NOTIFY_EMPTY).unwrap()
        else {
            panic!("not a push")
        };
        assert_eq!(request_id, "4");
        assert_eq!(service.name, "demo");
        assert_eq!(service.list, Ok(InstanceSet::default()));
    }

    #[test]
    fn a_push_without_hosts_or_with_only_bad_hosts_is_not_an_empty_service() {
        let no_hosts = message(
            "NotifySubscriberRequest",
            r#"{"requestId":"9","serviceInfo":{"name":"demo"}}"#,
        );
        let Ok(ServerMessage::Notify { service, .. }) = read_stream_message(&no_hosts) else {
            panic!("not a push")
        };
        assert!(service.list.is_err());
        let bad_hosts = message(
            "NotifySubscriberRequest",
            r#"{"requestId":"9","serviceInfo":{"hosts":[{"ip":"x","port":1}]}}"#,
        );
        let Ok(ServerMessage::Notify { service, .. }) = read_stream_message(&bad_hosts) else {
            panic!("not a push")
        };
        assert_eq!(service.list, Err(AnswerError::NoValidHost));
        for body in [
            r#"{"requestId":"9"}"#,
            r#"{"serviceInfo":{"hosts":[]}}"#,
            "[",
            "",
        ] {
            let bytes = message("NotifySubscriberRequest", body);
            assert!(read_stream_message(&bytes).is_err(), "{body}");
        }
    }

    #[test]
    fn a_grouped_name_is_split() {
        let bytes = message(
            "NotifySubscriberRequest",
            r#"{"requestId":"1","serviceInfo":{"name":"G@@demo","clusters":"A,B","hosts":[],
                "reachProtectionThreshold":true}}"#,
        );
        let Ok(ServerMessage::Notify { service, .. }) = read_stream_message(&bytes) else {
            panic!("not a push")
        };
        assert_eq!(
            (service.group.as_str(), service.name.as_str()),
            ("G", "demo")
        );
        assert_eq!(service.clusters, "A,B");
        assert!(service.list.unwrap().protection_reached);
    }

    #[test]
    fn detection_reset_and_others_are_told_apart() {
        assert_eq!(
            read_stream_message(DETECTION),
            Ok(ServerMessage::Detection {
                request_id: "5".into()
            })
        );
        assert_eq!(
            read_stream_message(&message("ConnectResetRequest", "{}")),
            Ok(ServerMessage::Reset { request_id: None })
        );
        assert_eq!(
            read_stream_message(&message("SetupAckRequest", "not json")),
            Ok(ServerMessage::Other("SetupAckRequest".into()))
        );
        assert!(read_stream_message(&message("ClientDetectionRequest", "{}")).is_err());
    }

    #[test]
    fn answers_of_another_type_or_bytes_are_errors() {
        assert!(matches!(
            read_server_check(SUBSCRIBE_ONE_HOST),
            Err(PushError::WrongType { .. })
        ));
        assert!(matches!(
            read_subscribe_answer(NOTIFY_EMPTY),
            Err(PushError::WrongType { .. })
        ));
        assert!(matches!(
            read_subscribe_answer(&SUBSCRIBE_ONE_HOST[..40]),
            Err(PushError::Wire(_))
        ));
        assert!(matches!(
            read_stream_message(&NOTIFY_EMPTY[..NOTIFY_EMPTY.len() - 1]),
            Err(PushError::Wire(WireError::Truncated))
        ));
        let server_check_without_id = message("ServerCheckResponse", r#"{"resultCode":200}"#);
        assert!(read_server_check(&server_check_without_id).is_err());
    }

    #[test]
    fn subscribe_carries_the_service_and_the_token_in_both_header_maps() {
        let service = ServiceKey {
            namespace_id: "ns".into(),
            group: "G".into(),
            name: "demo".into(),
        };
        let bytes = subscribe(&service, &["A".into(), "B".into()], Some("tok"), "r1");
        let payload = wire::decode(&bytes).unwrap();
        assert_eq!(payload.message_type, "SubscribeServiceRequest");
        assert_eq!(
            payload.headers,
            [("accessToken".to_string(), "tok".to_string())]
        );
        let body: serde_json::Value = serde_json::from_slice(&payload.body).unwrap();
        assert_eq!(
            body,
            json!({"requestId": "r1", "headers": {"accessToken": "tok"}, "module": "naming",
                "namespace": "ns", "serviceName": "demo", "groupName": "G", "clusters": "A,B",
                "subscribe": true})
        );
        let anonymous = wire::decode(&subscribe(&service, &[], None, "r2")).unwrap();
        assert!(anonymous.headers.is_empty());
        let body: serde_json::Value = serde_json::from_slice(&anonymous.body).unwrap();
        assert_eq!(
            (&body["headers"], &body["clusters"]),
            (&json!({}), &json!(""))
        );
    }

    #[test]
    fn setup_and_acks_are_what_servers_expect() {
        let (kind, body) = body_of(&connection_setup("ns"));
        assert_eq!(kind, "ConnectionSetupRequest");
        assert_eq!(body["tenant"], "ns");
        assert_eq!(body["labels"], json!({"source": "sdk", "module": "naming"}));
        let version = body["clientVersion"].as_str().unwrap();
        assert!(version.starts_with("nacos-instance-guard:v"), "{version}");
        for (bytes, kind_wanted) in [
            (notify_ack("7"), "NotifySubscriberResponse"),
            (detection_ack("7"), "ClientDetectionResponse"),
        ] {
            let (kind, body) = body_of(&bytes);
            assert_eq!(kind, kind_wanted);
            assert_eq!(
                (&body["requestId"], &body["resultCode"]),
                (&json!("7"), &json!(200))
            );
        }
    }

    #[test]
    fn null_fields_are_absent_and_unknown_fields_ignored() {
        let server_check = message(
            "ServerCheckResponse",
            r#"{"resultCode":200,"errorCode":null,"message":null,"connectionId":"c1",
                "requestId":null,"serviceInfo":null,"future":{"a":[1,null]}}"#,
        );
        assert_eq!(read_server_check(&server_check).unwrap(), "c1");
        let no_id = message(
            "ServerCheckResponse",
            r#"{"resultCode":200,"connectionId":null}"#,
        );
        assert_eq!(
            read_server_check(&no_id),
            Err(PushError::Malformed("missing `connectionId`".into()))
        );
        let null_service = message(
            "NotifySubscriberRequest",
            r#"{"requestId":"3","serviceInfo":null}"#,
        );
        assert_eq!(
            read_stream_message(&null_service),
            Err(PushError::Malformed("missing `serviceInfo`".into()))
        );
        let null_code = message(
            "SubscribeServiceResponse",
            r#"{"resultCode":null,"message":"no code"}"#,
        );
        assert_eq!(
            read_subscribe_answer(&null_code),
            Err(PushError::Refused {
                code: 0,
                message: "no code".into()
            })
        );
    }

    #[test]
    fn a_body_field_of_another_type_or_a_body_not_an_object_is_malformed() {
        for body in [
            r#"{"requestId":3,"serviceInfo":{"hosts":[]}}"#,
            r#"{"requestId":"3","serviceInfo":[]}"#,
            r#"{"requestId":"3","serviceInfo":{"hosts":[{"ip":"10.0.0.1","port":"80"}]}}"#,
            r#"["3",{"hosts":[]}]"#,
            "null",
        ] {
            let bytes = message("NotifySubscriberRequest", body);
            assert!(
                matches!(read_stream_message(&bytes), Err(PushError::Malformed(_))),
                "{body}"
            );
        }
        let wrong_code = message(
            "ServerCheckResponse",
            r#"{"resultCode":"200","connectionId":"c"}"#,
        );
        assert!(matches!(
            read_server_check(&wrong_code),
            Err(PushError::Malformed(_))
        ));
    }
}
