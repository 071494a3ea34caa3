//! What the polling VM publishes in shared data for the other VMs: each
//! service's snapshot and each server's token, under keys that carry the plugin
//! name and a hash of the configuration.

use serde::{Deserialize, Serialize};

use crate::pure::registry::instance::InstanceSet;

pub fn lease_key(prefix: &str) -> String {
    format!("{prefix}.lease")
}

/// Grows each time the polling VM publishes anything; followers read only this
/// key per tick, and the rest only when it moved.
pub fn generation_key(prefix: &str) -> String {
    format!("{prefix}.generation")
}

pub fn vm_counter_key(prefix: &str) -> String {
    format!("{prefix}.vms")
}

pub fn snapshot_key(prefix: &str, target: usize) -> String {
    format!("{prefix}.snapshot.{target}")
}

pub fn token_key(prefix: &str, server: usize) -> String {
    format!("{prefix}.token.{server}")
}

pub fn key_prefix(config_hash: u64) -> String {
    format!("nacos-instance-guard.{config_hash:016x}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedSnapshot {
    pub version: u64,
    pub fetched_at_ms: u64,
    pub set: InstanceSet,
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

pub fn decode_counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::registry::instance::instance;
    use crate::testing::test;

    #[test]
    fn snapshots_and_tokens_round_trip() {
        let snapshot = PublishedSnapshot {
            version: 3,
            fetched_at_ms: 99,
            set: InstanceSet {
                instances: vec![instance("10.0.0.1:80", 2.5)],
                protection_reached: true,
            },
        };
        let bytes = encode(&snapshot).unwrap();
        assert_eq!(decode::<PublishedSnapshot>(&bytes), Some(snapshot));
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
    fn keys_carry_the_plugin_name_and_config_hash() {
        let prefix = key_prefix(0xabc);
        assert_eq!(prefix, "nacos-instance-guard.0000000000000abc");
        assert_eq!(
            snapshot_key(&prefix, 2),
            "nacos-instance-guard.0000000000000abc.snapshot.2"
        );
        assert_ne!(lease_key(&prefix), generation_key(&prefix));
    }

    #[test]
    fn counters_default_to_zero() {
        assert_eq!(decode_counter(Some(b"17")), 17);
        assert_eq!(decode_counter(Some(b"x")), 0);
        assert_eq!(decode_counter(None), 0);
    }
}
