//! What VMs keep in Envoy's process-wide shared data, and how it is encoded.
//!
//! - Per configuration (keys carry a hash of it): the lease, the poller's
//!   heartbeat (each service's content stamp and health, one small binary value
//!   rewritten at most once per tick), and each server's token.
//! - Per service, whatever the configuration: its content, rewritten only when it
//!   changes, and when it was last confirmed. A configuration edit makes a new
//!   configuration with new keys, and it starts from these instead of nothing.

use serde::{Deserialize, Serialize};

use crate::pure::registry::instance::InstanceSet;
use crate::pure::registry::snapshot::Health;

const PLUGIN: &str = "nacos-instance-guard";

/// FNV-1a: VMs share state only with VMs of the same configuration, and a
/// service's content only with guards that ask Nacos the same question.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The gateway clock's last reading, shared by every configuration.
pub fn clock_key() -> String {
    format!("{PLUGIN}.clock")
}

/// Learned services, one cluster name a line, in the order they were learned.
pub fn encode_learned(clusters: &[String]) -> Vec<u8> {
    clusters.join("\n").into_bytes()
}

pub fn decode_learned(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// Keys of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKeys {
    prefix: String,
}

impl ConfigKeys {
    pub fn new(config: &[u8]) -> Self {
        Self {
            prefix: format!("{PLUGIN}.{:016x}", stable_hash(config)),
        }
    }

    pub fn lease(&self) -> String {
        format!("{}.lease", self.prefix)
    }

    pub fn heartbeat(&self) -> String {
        format!("{}.heartbeat", self.prefix)
    }

    pub fn token(&self, server: usize) -> String {
        format!("{}.token.{server}", self.prefix)
    }

    /// The clusters whose services VMs learned from traffic.
    pub fn learned(&self) -> String {
        format!("{}.learned", self.prefix)
    }

    /// When a learned service last carried a request, by any VM.
    pub fn touched(&self, service: u64) -> String {
        format!("{}.touched.{service:016x}", self.prefix)
    }
}

/// Keys of one service as one server is asked about it; `question` is everything
/// that shapes the answer (server, account, namespace, group, name, clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKeys {
    id: u64,
    content: String,
    confirmed: String,
}

impl ServiceKeys {
    pub fn new(question: &str) -> Self {
        let id = stable_hash(question.as_bytes());
        let content = format!("{PLUGIN}.service.{id:016x}");
        Self {
            id,
            confirmed: format!("{content}.confirmed"),
            content,
        }
    }

    /// The service's number in heartbeats.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn content(&self) -> &str {
        &self.content
    }

    pub fn confirmed(&self) -> &str {
        &self.confirmed
    }
}

/// A service's content: `<stamp>\n<json>`, so that a writer can tell whether what
/// is stored is newer than what it holds without decoding the list.
pub fn encode_content(stamp: u64, set: &InstanceSet) -> Option<Vec<u8>> {
    let mut bytes = format!("{stamp}\n").into_bytes();
    serde_json::to_writer(&mut bytes, set).ok()?;
    Some(bytes)
}

pub fn content_stamp(bytes: &[u8]) -> Option<u64> {
    let end = bytes.iter().position(|b| *b == b'\n')?;
    std::str::from_utf8(bytes.get(..end)?).ok()?.parse().ok()
}

pub fn decode_content(bytes: &[u8]) -> Option<(u64, InstanceSet)> {
    let stamp = content_stamp(bytes)?;
    let start = bytes.iter().position(|b| *b == b'\n')? + 1;
    let set = serde_json::from_slice(bytes.get(start..)?).ok()?;
    Some((stamp, set))
}

/// Each service's [`Health`] under its [`ServiceKeys::id`], 32 bytes apiece
/// (little-endian: id, content stamp, confirmed at, failing since or 0): a
/// thousand services are 32 KB that followers read without parsing text, and
/// VMs that learned services in different orders still agree on which is which.
pub fn encode_heartbeat(health: impl Iterator<Item = (u64, Health)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (id, h) in health {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&h.content_stamp.to_le_bytes());
        bytes.extend_from_slice(&h.confirmed_at_ms.to_le_bytes());
        bytes.extend_from_slice(&h.failing_since_ms.unwrap_or(0).to_le_bytes());
    }
    bytes
}

pub fn decode_heartbeat(bytes: &[u8]) -> impl Iterator<Item = (u64, Health)> + '_ {
    bytes.chunks_exact(32).map(|chunk| {
        let word = |at: usize| {
            chunk
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let health = Health {
            content_stamp: word(8),
            confirmed_at_ms: word(16),
            failing_since_ms: Some(word(24)).filter(|since| *since != 0),
        };
        (word(0), health)
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedToken {
    pub token: String,
    pub refresh_at_ms: u64,
    pub expires_at_ms: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(value).ok()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

pub fn decode_number(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::registry::instance::instance;
    use crate::testing::test;

    #[test]
    fn content_and_tokens_round_trip() {
        let set = InstanceSet {
            instances: vec![instance("10.0.0.1:80", 2.5)],
            protection_reached: true,
        };
        let bytes = encode_content(99, &set).unwrap();
        assert_eq!(content_stamp(&bytes), Some(99));
        assert_eq!(decode_content(&bytes), Some((99, set)));
        assert_eq!(decode_content(b"12\nnot json"), None);
        assert_eq!(content_stamp(b"no stamp"), None);
        let token = PublishedToken {
            token: "t".into(),
            refresh_at_ms: 1,
            expires_at_ms: 2,
        };
        assert_eq!(
            decode::<PublishedToken>(&encode(&token).unwrap()),
            Some(token)
        );
        assert_eq!(decode::<PublishedToken>(b"garbage"), None);
    }

    #[test]
    fn heartbeats_round_trip_and_ignore_a_torn_tail() {
        let health = [
            Health {
                content_stamp: 1,
                confirmed_at_ms: 2,
                failing_since_ms: None,
            },
            Health {
                content_stamp: u64::MAX,
                confirmed_at_ms: 7,
                failing_since_ms: Some(9),
            },
        ];
        let entries = [(7, health[0]), (u64::MAX, health[1])];
        let mut bytes = encode_heartbeat(entries.iter().copied());
        assert_eq!(bytes.len(), 64);
        bytes.push(1);
        assert_eq!(decode_heartbeat(&bytes).collect::<Vec<_>>(), entries);
    }

    #[test]
    fn keys_carry_the_plugin_name_and_what_they_belong_to() {
        let keys = ConfigKeys::new(b"{}");
        assert!(keys.lease().starts_with("nacos-instance-guard."));
        assert_ne!(keys.lease(), ConfigKeys::new(b"{\"a\":1}").lease());
        assert_ne!(keys.heartbeat(), keys.lease());
        let service = ServiceKeys::new("nacos|public|DEFAULT_GROUP|demo");
        assert!(service
            .content()
            .starts_with("nacos-instance-guard.service."));
        assert_ne!(
            service,
            ServiceKeys::new("nacos|public|DEFAULT_GROUP|other")
        );
        assert_eq!(decode_number(Some(b"17")), Some(17));
        assert_eq!(decode_number(Some(b"x")), None);
    }
}
