//! A push too large to read (over `MAX_ANSWER_BYTES`): only its first bytes are
//! read, enough to answer it. Unanswered, Java pushes it again every few seconds
//! for ever (`naming/.../push/v2/task/PushExecuteTask.java` re-adds a failed
//! push task), 4 MiB each time.
//!
//! Both servers write the request's small fields before `serviceInfo` (Java's
//! Jackson writes a superclass's fields first: `requestId`, then
//! `namespace`, `serviceName`, `groupName`; r-nacos's serde writes them in
//! declaration order, the same), so they are in the head.

/// How many bytes of an oversized message are read.
pub const HEAD_BYTES: usize = 4096;

/// What the head of an oversized `NotifySubscriberRequest` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedNotify {
    pub request_id: String,
    /// Group and name, where the head has them.
    pub service: Option<(String, String)>,
}

/// The push an oversized message's `head` starts, if it is one with a `requestId`.
pub fn read_head(head: &[u8]) -> Option<OversizedNotify> {
    let head = String::from_utf8_lossy(head);
    if !head.contains("NotifySubscriberRequest") {
        return None;
    }
    let request_id = string_field(&head, "requestId")?;
    let service = string_field(&head, "groupName").zip(string_field(&head, "serviceName"));
    Some(OversizedNotify {
        request_id,
        service,
    })
}

/// The value of the first `"name":"value"` in `text`, if it is whole and has no
/// escape in it (the fields read here never need one).
fn string_field(text: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let start = text.find(&key)? + key.len();
    let rest = text.get(start..)?;
    let end = rest.find('"')?;
    let value = rest.get(..end)?;
    (!value.contains('\\')).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::push::wire::{self, Payload};
    use crate::testing::test;

    fn head_of(json: &str) -> Vec<u8> {
        let mut bytes = wire::encode(&Payload {
            message_type: "NotifySubscriberRequest".into(),
            headers: Vec::new(),
            body: json.as_bytes().to_vec(),
        });
        bytes.truncate(HEAD_BYTES);
        bytes
    }

    #[test]
    fn the_head_of_a_huge_push_names_its_request_and_service() {
        let hosts = r#"{"ip":"10.0.0.1","port":80},"#.repeat(200_000);
        let json = format!(
            r#"{{"requestId":"17","headers":{{}},"namespace":"public","serviceName":"demo",
                "groupName":"DEFAULT_GROUP","serviceInfo":{{"hosts":[{hosts}]}}}}"#
        );
        assert_eq!(
            read_head(&head_of(&json)),
            Some(OversizedNotify {
                request_id: "17".into(),
                service: Some(("DEFAULT_GROUP".into(), "demo".into())),
            })
        );
    }

    #[test]
    fn other_messages_or_heads_without_an_id_give_nothing() {
        assert_eq!(read_head(b"garbage"), None);
        assert_eq!(read_head(&head_of(r#"{"serviceName":"demo"}"#)), None);
        let cut = head_of(r#"{"requestId":"1"#);
        assert_eq!(read_head(&cut), None, "a value cut off is not read");
        let found = read_head(&head_of(r#"{"requestId":"1","hosts":[]}"#));
        assert_eq!(found.map(|n| n.service), Some(None));
    }
}
