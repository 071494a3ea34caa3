//! Reading the answer of Higress's `proxy_get_upstream_hosts`: a proxy-wasm
//! serialized map of `ip:port` to a JSON description with `health_status`
//! (`Healthy`, `Degraded` or `Unhealthy`; Higress's own `ai-load-balancer` reads
//! it so: higress-group/higress
//! plugins/wasm-go/extensions/ai-load-balancer/global_least_request/lb_policy.go).
//!
//! Layout: u32 count, then a (key length, value length) u32 pair per entry, then
//! each key and each value followed by a NUL byte; all little-endian
//! (higress-group/proxy-wasm-cpp-host src/exports.cc `get_upstream_hosts`).

/// The hosts Envoy would send an override to: every host but those it marks
/// `Unhealthy`. Envoy honours an override only for a host whose status is in the
/// cluster's `override_host_status` (default UNKNOWN, HEALTHY, DEGRADED:
/// higress-group/envoy source/common/upstream/host_utility.cc `selectOverrideHost`),
/// so an override to an Unhealthy host is dropped (or, strict, answered 503). A
/// value that is not the expected JSON says nothing about health: the host counts.
/// Empty when the bytes are malformed.
pub fn routable_endpoints(bytes: &[u8]) -> Vec<String> {
    parse(bytes)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, value)| !is_unhealthy(value))
        .map(|(key, _)| key)
        .collect()
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

fn parse(bytes: &[u8]) -> Option<Vec<(String, &[u8])>> {
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
        entries.push((String::from_utf8_lossy(key).into_owned(), value));
    }
    Some(entries)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let chunk: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
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

    #[test]
    fn keys_are_read_in_order() {
        let bytes = serialize(&[
            ("10.0.0.1:80", r#"{"health_status":"Healthy"}"#),
            ("10.0.0.2:80", ""),
        ]);
        assert_eq!(
            routable_endpoints(&bytes),
            vec!["10.0.0.1:80", "10.0.0.2:80"]
        );
        assert!(routable_endpoints(&serialize(&[])).is_empty());
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
            routable_endpoints(&bytes),
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
            let _ = routable_endpoints(&good[..cut]);
        }
        assert!(routable_endpoints(&good[..good.len() - 5]).is_empty());
        assert!(routable_endpoints(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(routable_endpoints(&[]).is_empty());
    }
}
