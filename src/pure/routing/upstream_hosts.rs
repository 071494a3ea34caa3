//! Reading the answer of Higress's `proxy_get_upstream_hosts`: a proxy-wasm
//! serialized map of `ip:port` to a JSON description with `health_status`
//! (`Healthy`, `Degraded` or `Unhealthy`; Higress's own `ai-load-balancer` reads
//! it so: higress-group/higress
//! plugins/wasm-go/extensions/ai-load-balancer/global_least_request/lb_policy.go).
//!
//! Layout: u32 count, then a (key length, value length) u32 pair per entry, then
//! each key and each value followed by a NUL byte; all little-endian
//! (higress-group/proxy-wasm-cpp-host src/exports.cc `get_upstream_hosts`).

use crate::pure::hashing::stable_hash;

/// The hosts Envoy would send an override to: every host but those it marks
/// `Unhealthy`. Envoy honours an override only for a host whose status is in the
/// cluster's `override_host_status` (default UNKNOWN, HEALTHY, DEGRADED:
/// higress-group/envoy source/common/upstream/host_utility.cc `selectOverrideHost`),
/// so an override to an Unhealthy host is dropped (or, strict, answered 503). A
/// value that is not the expected JSON says nothing about health: the host counts.
///
/// Kept as the sorted hashes of their `ip:port`: read once per cluster per tick
/// with no allocation per host, and asked in O(log n) per request, where a list of
/// strings cost each request a scan. Two addresses whose 64-bit hashes collide
/// would both count as known, which only ranks one instance first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutableHosts {
    sorted: Vec<u64>,
    /// A hash of the hosts: the same hosts, the same number, so what a guard
    /// worked out from one list holds for the next until it changes.
    generation: u64,
}

impl RoutableHosts {
    /// The hosts in a `proxy_get_upstream_hosts` answer; none when it is malformed.
    pub fn read(bytes: &[u8]) -> Self {
        let sorted: Vec<u64> = parse(bytes)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, value)| !is_unhealthy(value))
            .map(|(key, _)| stable_hash(key))
            .collect();
        Self::from_hashes(sorted)
    }

    /// Hosts named directly, for tests.
    #[cfg(test)]
    pub fn of(endpoints: &[&str]) -> Self {
        Self::from_hashes(
            endpoints
                .iter()
                .map(|endpoint| stable_hash(endpoint.as_bytes()))
                .collect(),
        )
    }

    fn from_hashes(mut sorted: Vec<u64>) -> Self {
        sorted.sort_unstable();
        let generation = sorted.iter().fold(sorted.len() as u64, |hash, host| {
            (hash ^ host).wrapping_mul(0x0100_0000_01b3)
        });
        Self { sorted, generation }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn contains(&self, endpoint: &str) -> bool {
        self.sorted
            .binary_search(&stable_hash(endpoint.as_bytes()))
            .is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// Whether the host's JSON says `"health_status": "Unhealthy"`. A scan, not a
/// JSON parser: the value is Envoy's own flat object, and a full parse here costs
/// the module several KB for one field.
fn is_unhealthy(value: &[u8]) -> bool {
    const KEY: &[u8] = b"\"health_status\"";
    // Nearly every host is Healthy or Degraded: no `U` at all, nothing to search.
    if !value.contains(&b'U') {
        return false;
    }
    let Some(at) = value.windows(KEY.len()).position(|window| window == KEY) else {
        return false;
    };
    let rest = value.get(at + KEY.len()..).unwrap_or_default();
    let rest = trim_start(rest);
    let Some(rest) = rest.strip_prefix(b":") else {
        return false;
    };
    trim_start(rest).starts_with(b"\"Unhealthy\"")
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    bytes.get(skip..).unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    // Each entry needs at least 8 bytes of lengths and 2 NULs: a count beyond that
    // is a lie, and must not size an allocation.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for entry in 0..count {
        let lengths_at = 4 + entry * 8;
        let key_len = usize::try_from(read_u32(bytes, lengths_at)?).ok()?;
        let value_len = usize::try_from(read_u32(bytes, lengths_at + 4)?).ok()?;
        let key = bytes.get(data..data.checked_add(key_len)?)?;
        data = data.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
        entries.push((key, value));
    }
    Some(entries)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let chunk: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(chunk))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::test;

    /// A `proxy_get_upstream_hosts` answer naming `pairs`, as the host hands it.
    pub(crate) fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (key, value) in pairs {
            bytes.extend((key.len() as u32).to_le_bytes());
            bytes.extend((value.len() as u32).to_le_bytes());
        }
        for (key, value) in pairs {
            bytes.extend(key.as_bytes());
            bytes.push(0);
            bytes.extend(value.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    fn routable(bytes: &[u8], candidates: &[&str]) -> Vec<String> {
        let hosts = RoutableHosts::read(bytes);
        candidates
            .iter()
            .filter(|endpoint| hosts.contains(endpoint))
            .map(|endpoint| endpoint.to_string())
            .collect()
    }

    const SEVEN: [&str; 7] = [
        "10.0.0.1:80",
        "10.0.0.2:80",
        "10.0.0.3:80",
        "10.0.0.4:80",
        "10.0.0.5:80",
        "10.0.0.6:80",
        "10.0.0.7:80",
    ];

    #[test]
    fn every_listed_key_is_known_and_nothing_else() {
        let bytes = serialize(&[
            ("10.0.0.1:80", r#"{"health_status":"Healthy"}"#),
            ("10.0.0.2:80", ""),
        ]);
        assert_eq!(routable(&bytes, &SEVEN), vec!["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(!RoutableHosts::read(&bytes).contains("10.0.0.1:8"));
        assert!(RoutableHosts::read(&serialize(&[])).is_empty());
    }

    #[test]
    fn a_thousand_hosts_are_all_found() {
        let keys: Vec<String> = (0..1000)
            .map(|i| format!("10.1.{}.{}:8080", i / 256, i % 256))
            .collect();
        let pairs: Vec<(&str, &str)> = keys
            .iter()
            .map(|key| (key.as_str(), r#"{"health_status":"Healthy"}"#))
            .collect();
        let hosts = RoutableHosts::read(&serialize(&pairs));
        assert!(keys.iter().all(|key| hosts.contains(key)));
        assert!(!hosts.contains("10.1.4.0:8080"));
    }

    #[test]
    fn unhealthy_hosts_are_not_routable() {
        let bytes = serialize(&[
            ("10.0.0.1:80", r#"{"health_status":"Healthy","weight":1}"#),
            ("10.0.0.2:80", r#"{"health_status":"Unhealthy"}"#),
            ("10.0.0.3:80", r#"{"health_status":"Degraded"}"#),
            ("10.0.0.4:80", "not json"),
            ("10.0.0.5:80", r#"{"weight":1}"#),
            ("10.0.0.6:80", r#"{ "health_status" : "Unhealthy" }"#),
            (
                "10.0.0.7:80",
                r#"{"health_status":"Healthy","note":"Unhealthy"}"#,
            ),
        ]);
        assert_eq!(
            routable(&bytes, &SEVEN),
            vec![
                "10.0.0.1:80",
                "10.0.0.3:80",
                "10.0.0.4:80",
                "10.0.0.5:80",
                "10.0.0.7:80"
            ]
        );
    }

    #[test]
    fn malformed_maps_give_nothing_and_never_panic() {
        let good = serialize(&[("10.0.0.1:80", r#"{"health_status":"Healthy"}"#)]);
        for cut in 0..good.len() {
            let _ = RoutableHosts::read(&good[..cut]);
        }
        assert!(RoutableHosts::read(&good[..good.len() - 5]).is_empty());
        assert!(RoutableHosts::read(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(RoutableHosts::read(&[]).is_empty());
    }
}
