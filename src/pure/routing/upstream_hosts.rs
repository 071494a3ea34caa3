//! Reading the answer of Higress's `proxy_get_upstream_hosts`: a proxy-wasm
//! serialized map of `ip:port` to a JSON description. Only the keys matter here.
//!
//! Layout: u32 count, then a (key length, value length) u32 pair per entry, then
//! each key and each value followed by a NUL byte; all little-endian.

/// The `ip:port` keys of a serialized map; empty when the bytes are malformed.
pub fn endpoints(bytes: &[u8]) -> Vec<String> {
    parse(bytes).unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Option<Vec<String>> {
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    // Each entry needs at least 8 bytes of lengths and 2 NULs: a count beyond that
    // is a lie, and must not size an allocation.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut keys = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for entry in 0..count {
        let lengths_at = 4 + entry * 8;
        let key_len = usize::try_from(read_u32(bytes, lengths_at)?).ok()?;
        let value_len = usize::try_from(read_u32(bytes, lengths_at + 4)?).ok()?;
        let key = bytes.get(data..data.checked_add(key_len)?)?;
        keys.push(String::from_utf8_lossy(key).into_owned());
        data = data.checked_add(key_len)?.checked_add(1)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
    }
    Some(keys)
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
        assert_eq!(endpoints(&bytes), vec!["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(endpoints(&serialize(&[])).is_empty());
    }

    #[test]
    fn malformed_maps_give_nothing_and_never_panic() {
        let good = serialize(&[("10.0.0.1:80", "{}")]);
        for cut in 0..good.len() {
            let _ = endpoints(&good[..cut]);
        }
        assert!(endpoints(&good[..good.len() - 5]).is_empty());
        assert!(endpoints(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(endpoints(&[]).is_empty());
    }
}
