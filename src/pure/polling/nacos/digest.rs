//! A digest of a list answer that leaves out the time Nacos stamps on it, so that
//! an answer that did not change can be recognised without being parsed.
//!
//! Nacos stamps each list answer with the time it was made: r-nacos 0.8.8 sets
//! `lastRefTime` and `checksum` to the current milliseconds (two answers of an
//! unchanged service a second apart differ only there), and Java Nacos builds
//! each list answer as a new `ServiceInfo` with
//! `setLastRefTime(System.currentTimeMillis())` (repository alibaba/nacos,
//! `ServiceUtil.doSelectInstances` in
//! `naming/src/main/java/com/alibaba/nacos/naming/utils/ServiceUtil.java`, which
//! `InstanceOperatorClientImpl.listInstance` in
//! `naming/src/main/java/com/alibaba/nacos/naming/core/InstanceOperatorClientImpl.java`
//! calls for the list). A hash of the whole body therefore never repeats.

use crate::pure::hashing::{hash_piece, WORD_HASH_START};

/// The members where Nacos stamps the time of an answer.
const STAMPS: [&[u8]; 2] = [b"lastRefTime", b"checksum"];

/// A 64-bit hash of an answer, except the values of members named `lastRefTime` or
/// `checksum` that are not inside any JSON array; their names and colons are
/// hashed, so `{"lastRefTime":1}` and `{"checksum":1}` differ. The hash only
/// compares one answer of a service with its last good one in this VM: it is
/// not stored or shared, so it may change between versions.
///
/// Why this is safe: instances always sit inside an array (`hosts: [...]` in v1,
/// `data: [...]` in v3), so everything the parser reads about them, metadata
/// included (even a metadata key named `lastRefTime`), is hashed byte for byte.
/// Outside arrays the parser reads only `name`, `groupName`, `clusters`, `hosts`
/// and `reachProtectionThreshold` (v1) or `code`, `message` and `data` (v3)
/// (`response::parse_instance_list`), never `lastRefTime` or `checksum`. So two
/// JSON bodies with equal digests parse to the same result.
///
/// No panic on any bytes. Strings are read with their escapes; a skipped value is a string, an object or array (to its matching
/// bracket) or a run of number and literal characters. Malformed input gets some
/// deterministic digest: a body malformed only inside a stamp's value (which
/// Nacos does not send) digests as the well-formed body with another value
/// there, so it would be taken as that body again rather than refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerDigest {
    hash: u64,
    len: usize,
    /// Where the stamps' values were, when every one is a number or a string
    /// without escapes; `None` if one was anything else.
    stamps: Option<Vec<(usize, usize)>>,
}

impl AnswerDigest {
    /// Scans `body` for its stamps, byte by byte.
    pub fn of(body: &[u8]) -> Self {
        let mut stamps = Some(Vec::new());
        let mut at = 0;
        // Arrays open at `at`; brackets in strings and in skipped values do not count.
        let mut arrays: usize = 0;
        while let Some(&byte) = body.get(at) {
            match byte {
                b'"' => {
                    let end = string_end(body, at);
                    let stamp = arrays == 0 && is_stamp(body.get(at..end).unwrap_or_default());
                    at = end;
                    if let Some(value) = value_after_colon(body, end).filter(|_| stamp) {
                        at = value_end(body, value);
                        if let Some(spans) =
                            stamps.as_mut().filter(|_| simple_value(body, value, at))
                        {
                            spans.push((value, at));
                        } else {
                            stamps = None;
                        }
                    }
                    continue;
                }
                b'[' => arrays = arrays.saturating_add(1),
                b']' => arrays = arrays.saturating_sub(1),
                _ => {}
            }
            at += 1;
        }
        let hash = match &stamps {
            Some(spans) => hash_around(body, spans),
            // Not recognisable without a scan: the whole body, so only the same
            // bytes match.
            None => hash_piece(WORD_HASH_START, body),
        };
        Self {
            hash,
            len: body.len(),
            stamps,
        }
    }

    /// `body` is this answer again but for the values of its stamps. Checked
    /// where this answer had its stamps, without a scan: Nacos's stamps keep
    /// their width (milliseconds since 1970), so an unchanged service answers
    /// with the same length and the same bytes around them. That is exact: the
    /// bytes around are the same (by the hash) and each new value is again a
    /// number or a plain string ending where the old one did, so a scan would
    /// find the same members in the same places.
    pub fn matches(&self, body: &[u8]) -> bool {
        let Some(spans) = &self.stamps else {
            return body.len() == self.len && hash_piece(WORD_HASH_START, body) == self.hash;
        };
        body.len() == self.len
            && spans
                .iter()
                .all(|&(start, end)| simple_value(body, start, end))
            && hash_around(body, spans) == self.hash
    }
}

/// The hash of `body` but the values at `spans` (in order, not overlapping).
fn hash_around(body: &[u8], spans: &[(usize, usize)]) -> u64 {
    let mut hash = WORD_HASH_START;
    let mut hashed = 0;
    for &(start, end) in spans {
        hash = hash_piece(hash, body.get(hashed..start).unwrap_or_default());
        hashed = end;
    }
    hash_piece(hash, body.get(hashed..).unwrap_or_default())
}

/// `body[start..end]` is a whole value a scan reads the same way whatever its
/// content: a run of number and literal characters, or a string without escapes.
fn simple_value(body: &[u8], start: usize, end: usize) -> bool {
    let Some(value) = body.get(start..end).filter(|value| !value.is_empty()) else {
        return false;
    };
    match value.strip_prefix(b"\"") {
        Some(inner) => inner
            .strip_suffix(b"\"")
            .is_some_and(|inner| !inner.iter().any(|byte| matches!(byte, b'"' | b'\\'))),
        None => value.iter().all(|byte| is_literal(*byte)),
    }
}

fn is_literal(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.')
}

/// `string` (with its quotes) names a stamp.
fn is_stamp(string: &[u8]) -> bool {
    string
        .strip_prefix(b"\"")
        .and_then(|inner| inner.strip_suffix(b"\""))
        .is_some_and(|name| STAMPS.contains(&name))
}

/// Just past the string opening at `open`, or the end of `body` if it never closes.
fn string_end(body: &[u8], open: usize) -> usize {
    let mut at = open + 1;
    loop {
        match body.get(at) {
            None => return body.len(),
            Some(b'\\') => at += 2,
            Some(b'"') => return at + 1,
            Some(_) => at += 1,
        }
    }
}

fn skip_space(body: &[u8], mut at: usize) -> usize {
    while body
        .get(at)
        .is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// Where the value starts if a colon follows `at` (the string before was a key).
fn value_after_colon(body: &[u8], at: usize) -> Option<usize> {
    let colon = skip_space(body, at);
    (body.get(colon) == Some(&b':')).then(|| skip_space(body, colon + 1))
}

/// Just past the value starting at `start`; `start` itself if none starts there.
fn value_end(body: &[u8], start: usize) -> usize {
    match body.get(start) {
        Some(b'"') => string_end(body, start),
        Some(b'{' | b'[') => container_end(body, start),
        _ => {
            let mut at = start;
            while body.get(at).is_some_and(|byte| is_literal(*byte)) {
                at += 1;
            }
            at
        }
    }
}

/// Just past the bracket closing the object or array opening at `open`, or the
/// end of `body`.
fn container_end(body: &[u8], open: usize) -> usize {
    let mut depth: usize = 0;
    let mut at = open;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'"' => {
                at = string_end(body, at);
                continue;
            }
            b'{' | b'[' => depth = depth.saturating_add(1),
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return at + 1;
                }
            }
            _ => {}
        }
        at += 1;
    }
    body.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::polling::nacos::response::parse_instance_list;
    use crate::pure::polling::nacos::ApiVersion;
    use crate::testing::test;

    /// What the earlier, scan-only digest compared: the hash around the stamps.
    fn answer_digest(body: &[u8]) -> u64 {
        AnswerDigest::of(body).hash
    }

    /// Two answers of r-nacos 0.8.8 for one unchanged service, a second apart.
    const RNACOS_FIRST: &str = r#"{"name":"DEFAULT_GROUP@@svc-1","clusters":"","cacheMillis":10000,"hosts":[{"service":"DEFAULT_GROUP@@svc-1","ip":"10.0.0.3","port":8080,"clusterName":"DEFAULT","weight":1.0,"healthy":true,"instanceId":"10.0.0.3#8080","metadata":{},"marked":true,"enabled":true,"serviceName":"DEFAULT_GROUP@@svc-1","ephemeral":false},{"service":"DEFAULT_GROUP@@svc-1","ip":"10.0.0.1","port":8080,"clusterName":"DEFAULT","weight":1.0,"healthy":true,"instanceId":"10.0.0.1#8080","metadata":{},"marked":true,"enabled":true,"serviceName":"DEFAULT_GROUP@@svc-1","ephemeral":false}],"lastRefTime":1795983932100,"checksum":"1795983932100","useSpecifiedURL":false,"env":"","protectThreshold":null,"reachLocalSiteCallThreshold":null,"dom":"svc-1","metadata":null}"#;
    const RNACOS_SECOND: &str = r#"{"name":"DEFAULT_GROUP@@svc-1","clusters":"","cacheMillis":10000,"hosts":[{"service":"DEFAULT_GROUP@@svc-1","ip":"10.0.0.3","port":8080,"clusterName":"DEFAULT","weight":1.0,"healthy":true,"instanceId":"10.0.0.3#8080","metadata":{},"marked":true,"enabled":true,"serviceName":"DEFAULT_GROUP@@svc-1","ephemeral":false},{"service":"DEFAULT_GROUP@@svc-1","ip":"10.0.0.1","port":8080,"clusterName":"DEFAULT","weight":1.0,"healthy":true,"instanceId":"10.0.0.1#8080","metadata":{},"marked":true,"enabled":true,"serviceName":"DEFAULT_GROUP@@svc-1","ephemeral":false}],"lastRefTime":1795983933211,"checksum":"1795983933211","useSpecifiedURL":false,"env":"","protectThreshold":null,"reachLocalSiteCallThreshold":null,"dom":"svc-1","metadata":null}"#;

    fn digest(body: &str) -> u64 {
        answer_digest(body.as_bytes())
    }

    #[test]
    fn rnacos_answers_of_an_unchanged_service_digest_equal() {
        assert_ne!(
            hash_piece(WORD_HASH_START, RNACOS_FIRST.as_bytes()),
            hash_piece(WORD_HASH_START, RNACOS_SECOND.as_bytes())
        );
        assert_eq!(digest(RNACOS_FIRST), digest(RNACOS_SECOND));
        assert_eq!(
            parse_instance_list(ApiVersion::V1, 200, RNACOS_FIRST.as_bytes()),
            parse_instance_list(ApiVersion::V1, 200, RNACOS_SECOND.as_bytes())
        );
    }

    #[test]
    fn an_unchanged_service_is_recognised_where_its_stamps_were() {
        let last = AnswerDigest::of(RNACOS_FIRST.as_bytes());
        assert!(last.matches(RNACOS_SECOND.as_bytes()));
        assert!(last.matches(RNACOS_FIRST.as_bytes()));
        let moved = RNACOS_SECOND.replace("10.0.0.1", "10.0.0.2");
        assert!(!last.matches(moved.as_bytes()), "a host changed");
        let quoted = RNACOS_SECOND.replace(
            "\"checksum\":\"1795983933211\"",
            "\"checksum\":\"17959839\\\"211\"",
        );
        assert_eq!(quoted.len(), RNACOS_SECOND.len());
        assert!(
            !last.matches(quoted.as_bytes()),
            "a stamp that is no longer plain"
        );
        let wider = RNACOS_SECOND.replace("1795983933211", "17959839332110");
        assert!(
            !last.matches(wider.as_bytes()),
            "another width: scanned again"
        );
        assert_eq!(
            AnswerDigest::of(wider.as_bytes()).hash,
            last.hash,
            "though the scan finds the same answer"
        );
    }

    #[test]
    fn an_answer_with_a_stamp_that_is_not_plain_matches_only_its_own_bytes() {
        // A stamp with an escape cannot be checked in place: the digest keeps the
        // whole body, and a changed host of the same length must not pass as
        // unchanged (it would keep routing to the host that left).
        let odd = RNACOS_FIRST.replace(
            "\"checksum\":\"1795983932100\"",
            "\"checksum\":\"17959839\\\"100\"",
        );
        let last = AnswerDigest::of(odd.as_bytes());
        assert!(last.matches(odd.as_bytes()), "the same bytes again");
        let moved = odd.replace("10.0.0.1", "10.0.0.2");
        assert_eq!(moved.len(), odd.len());
        assert!(!last.matches(moved.as_bytes()), "a host changed");
    }

    #[test]
    fn a_changed_host_changes_the_digest() {
        let changes = [
            ("\"ip\":\"10.0.0.3\"", "\"ip\":\"10.0.0.4\""),
            ("\"port\":8080", "\"port\":8081"),
            ("\"weight\":1.0", "\"weight\":2.0"),
            ("\"healthy\":true", "\"healthy\":false"),
            ("\"enabled\":true", "\"enabled\":false"),
            ("\"clusterName\":\"DEFAULT\"", "\"clusterName\":\"B\""),
            ("\"metadata\":{}", "\"metadata\":{\"zone\":\"a\"}"),
        ];
        for (from, to) in changes {
            let changed = RNACOS_SECOND.replacen(from, to, 1);
            assert_ne!(changed, RNACOS_SECOND);
            assert_ne!(digest(&changed), digest(RNACOS_FIRST), "{to}");
        }
        let zone = |value: &str| {
            RNACOS_FIRST.replacen(
                "\"metadata\":{}",
                &format!("\"metadata\":{{\"zone\":\"{value}\"}}"),
                1,
            )
        };
        assert_ne!(digest(&zone("a")), digest(&zone("b")));
    }

    #[test]
    fn stamps_inside_hosts_are_hashed() {
        for name in ["lastRefTime", "checksum"] {
            let with = |value: &str| {
                RNACOS_FIRST.replacen(
                    "\"metadata\":{}",
                    &format!("\"metadata\":{{\"{name}\":\"{value}\"}}"),
                    1,
                )
            };
            assert_ne!(digest(&with("1")), digest(&with("2")), "{name}");
        }
        assert_ne!(
            answer_digest(br#"{"hosts":[{"ip":"10.0.0.1","port":80,"lastRefTime":1}]}"#),
            answer_digest(br#"{"hosts":[{"ip":"10.0.0.1","port":80,"lastRefTime":2}]}"#)
        );
    }

    #[test]
    fn v3_answers_hash_their_hosts_and_leave_out_stamps() {
        // The shape the v3 parser reads: the hosts are the `data` array.
        let v3 = |ip: &str, stamp: u64| {
            format!(
                r#"{{"code":0,"message":"success","data":[{{"ip":"{ip}","port":9,"weight":1.0,
                "healthy":true,"enabled":true,"metadata":{{"lastRefTime":"{stamp}"}}}}]}}"#
            )
        };
        assert!(parse_instance_list(ApiVersion::V3, 200, v3("10.0.0.9", 1).as_bytes()).is_ok());
        assert_ne!(digest(&v3("10.0.0.9", 1)), digest(&v3("10.0.0.8", 1)));
        assert_ne!(digest(&v3("10.0.0.9", 1)), digest(&v3("10.0.0.9", 2)));
        // `data` as a service info, stamped inside an object that is not in an array.
        let wrapped = |ip: &str, stamp: u64| {
            format!(
                r#"{{"code":0,"message":"success","data":{{"name":"demo","lastRefTime":{stamp},
                "checksum":"{stamp}","hosts":[{{"ip":"{ip}","port":9}}]}}}}"#
            )
        };
        assert_eq!(
            digest(&wrapped("10.0.0.9", 1)),
            digest(&wrapped("10.0.0.9", 22))
        );
        assert_ne!(
            digest(&wrapped("10.0.0.9", 1)),
            digest(&wrapped("10.0.0.8", 1))
        );
    }

    #[test]
    fn only_the_value_of_a_stamp_is_left_out() {
        assert_ne!(
            answer_digest(br#"{"lastRefTime":1}"#),
            answer_digest(br#"{"checksum":1}"#)
        );
        assert_eq!(
            answer_digest(br#"{"lastRefTime" : 1 ,"hosts":[]}"#),
            answer_digest(br#"{"lastRefTime" : 22 ,"hosts":[]}"#),
            "spaces around the colon"
        );
        assert_ne!(
            answer_digest(br#"{"lastRefTime" : 1 ,"hosts":[]}"#),
            answer_digest(br#"{"lastRefTime": 1 ,"hosts":[]}"#),
            "the spaces are hashed"
        );
        assert_eq!(
            answer_digest(br#"{"checksum":"12","hosts":[1]}"#),
            answer_digest(br#"{"checksum":"345","hosts":[1]}"#),
            "string values"
        );
        assert_ne!(
            answer_digest(br#"{"checksum":"12","hosts":[1]}"#),
            answer_digest(br#"{"checksum":"3\"4\\","hosts":[1]}"#),
            "a stamp with escapes is not plain: the whole body is compared"
        );
        assert_ne!(
            answer_digest(br#"{"checksum":{"a":[1,"]"]},"hosts":[1]}"#),
            answer_digest(br#"{"checksum":[{"b":"}"}],"hosts":[1]}"#),
            "nested values are not plain: the whole body is compared"
        );
        assert_ne!(
            answer_digest(br#"{"checksum":{"a":[1,"]"]},"hosts":[1]}"#),
            answer_digest(br#"{"checksum":{"a":[1,"]"]},"hosts":[2]}"#),
            "what follows a nested value is hashed"
        );
        assert_ne!(
            answer_digest(br#"{"lastRefTime":1}"#),
            answer_digest(br#"{"lastRefTime":1}  "#),
            "what follows a number is hashed"
        );
    }

    #[test]
    fn stamp_names_elsewhere_are_hashed() {
        let pairs: [(&[u8], &[u8]); 5] = [
            // Keys that merely contain a stamp's name.
            (br#"{"lastRefTimeX":1}"#, br#"{"lastRefTimeX":2}"#),
            (br#"{"xchecksum":1}"#, br#"{"xchecksum":2}"#),
            // A stamp's name as a value: the next member's value is not its value.
            (
                br#"{"name":"lastRefTime","hosts":[1]}"#,
                br#"{"name":"lastRefTime","hosts":[2]}"#,
            ),
            // Stamp text inside a string value.
            (
                br#"{"clusters":"\"lastRefTime\":1","hosts":[]}"#,
                br#"{"clusters":"\"lastRefTime\":2","hosts":[]}"#,
            ),
            (
                br#"{"clusters":"a\"b","lastRefTime":1}"#,
                br#"{"clusters":"a\"c","lastRefTime":1}"#,
            ),
        ];
        for (one, other) in pairs {
            assert_ne!(
                answer_digest(one),
                answer_digest(other),
                "{}",
                String::from_utf8_lossy(one)
            );
        }
        // A string ending in an escaped backslash ends there: the key after it is a stamp.
        assert_eq!(
            answer_digest(br#"{"clusters":"a\\","lastRefTime":1}"#),
            answer_digest(br#"{"clusters":"a\\","lastRefTime":2}"#)
        );
    }

    #[test]
    fn a_body_without_stamps_digests_as_its_bytes() {
        let body = br#"{"hosts":[{"ip":"10.0.0.1","port":80,"metadata":{"a":"[\"{"}}]}"#;
        assert_eq!(answer_digest(body), hash_piece(WORD_HASH_START, body));
    }

    #[test]
    fn truncated_and_malformed_bodies_digest_without_panic() {
        let body = RNACOS_FIRST.as_bytes();
        let stamp = RNACOS_FIRST.find("\"lastRefTime\":").unwrap() + "\"lastRefTime\":".len();
        for end in 0..=body.len() {
            let prefix = &body[..end];
            let digest = answer_digest(prefix);
            if end < stamp {
                assert_eq!(
                    digest,
                    hash_piece(WORD_HASH_START, prefix),
                    "prefix of {end} bytes"
                );
            }
        }
        let malformed: [&[u8]; 12] = [
            b"\"",
            b"\"\\",
            b"{\"lastRefTime\"",
            b"{\"lastRefTime\":",
            b"{\"lastRefTime\":\"\\",
            b"{\"checksum\":{[",
            b"{\"checksum\":}}]]",
            b"]]]]{\"checksum\":1}",
            b"{\"checksum\"::::",
            b"{\"checksum\":,\"checksum\":,",
            b"\xff\xfe\"lastRefTime\"\x00:\x80",
            b"[[[[[[[[\"checksum\":1",
        ];
        for bytes in malformed {
            let _ = answer_digest(bytes);
        }
    }
}
