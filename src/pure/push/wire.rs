//! The protobuf of Nacos's gRPC `Payload`, by hand: three small messages do not
//! justify a protobuf crate in a Wasm module that must stay small. Envoy does the
//! gRPC framing, so these are the bare message bytes.
//!
//! ```text
//! message Payload  { Metadata metadata = 2; google.protobuf.Any body = 3; }
//! message Metadata { string type = 3; map<string,string> headers = 7; string clientIp = 8; }
//! message Any      { string type_url = 1; bytes value = 2; }
//! ```
//!
//! Decoding takes any input without panicking: unknown fields of every wire type are
//! skipped, and the nesting is fixed (Payload → Metadata → header entry, Payload →
//! Any), so there is no recursion to bound.

use std::fmt;

/// One message on either gRPC method: its Nacos type, headers and JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    /// `metadata.type`, the simple name of the Java class (`SubscribeServiceRequest`).
    pub message_type: String,
    /// `metadata.headers`; servers read the access token from here.
    pub headers: Vec<(String, String)>,
    /// `body.value`: the JSON of the message named by `message_type`.
    pub body: Vec<u8>,
}

/// Why bytes were not a `Payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end inside a field.
    Truncated,
    /// A varint longer than ten bytes or beyond 64 bits.
    OverlongVarint,
    /// A known field came with another wire type, or a wire type protobuf lacks
    /// (groups, 3 and 4, are refused too: proto3 has none).
    WireType { field: u64, wire_type: u8 },
    /// A string field that is not UTF-8.
    BadUtf8,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "protobuf truncated"),
            Self::OverlongVarint => write!(f, "protobuf varint too long"),
            Self::WireType { field, wire_type } => {
                write!(f, "protobuf field {field} has wire type {wire_type}")
            }
            Self::BadUtf8 => write!(f, "protobuf string is not UTF-8"),
        }
    }
}

/// The bytes of `payload`, as the Java client writes them minus `clientIp`, which
/// servers do not need.
pub fn encode(payload: &Payload) -> Vec<u8> {
    let mut metadata = Vec::new();
    put(&mut metadata, 3, payload.message_type.as_bytes());
    for (key, value) in &payload.headers {
        let mut entry = Vec::new();
        put(&mut entry, 1, key.as_bytes());
        put(&mut entry, 2, value.as_bytes());
        put(&mut metadata, 7, &entry);
    }
    let mut any = Vec::new();
    put(&mut any, 2, &payload.body);
    let mut out = Vec::with_capacity(metadata.len() + any.len() + 8);
    put(&mut out, 2, &metadata);
    put(&mut out, 3, &any);
    out
}

/// The `Payload` in `bytes`. A repeated message field merges as protobuf says: its
/// last string wins, its map entries add up.
pub fn decode(bytes: &[u8]) -> Result<Payload, WireError> {
    let mut payload = Payload::default();
    for_each_field(bytes, |number, field| match number {
        2 => for_each_field(delimited(number, field)?, |number, field| match number {
            3 => {
                payload.message_type = text(delimited(number, field)?)?;
                Ok(())
            }
            7 => {
                let (mut key, mut value) = (String::new(), String::new());
                for_each_field(delimited(number, field)?, |number, field| {
                    match number {
                        1 => key = text(delimited(number, field)?)?,
                        2 => value = text(delimited(number, field)?)?,
                        _ => {}
                    }
                    Ok(())
                })?;
                payload.headers.push((key, value));
                Ok(())
            }
            _ => Ok(()),
        }),
        3 => for_each_field(delimited(number, field)?, |number, field| {
            if number == 2 {
                payload.body = delimited(number, field)?.to_vec();
            }
            Ok(())
        }),
        _ => Ok(()),
    })?;
    Ok(payload)
}

/// A field's value: only length-delimited ones are kept, the rest are skipped.
enum Field<'a> {
    Delimited(&'a [u8]),
    Other(u8),
}

/// Append length-delimited field `number` holding `data`.
pub(crate) fn put(out: &mut Vec<u8>, number: u64, data: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn delimited(number: u64, field: Field<'_>) -> Result<&[u8], WireError> {
    match field {
        Field::Delimited(data) => Ok(data),
        Field::Other(wire_type) => Err(WireError::WireType {
            field: number,
            wire_type,
        }),
    }
}

fn text(data: &[u8]) -> Result<String, WireError> {
    String::from_utf8(data.to_vec()).map_err(|_| WireError::BadUtf8)
}

/// Calls `visit` with the number and value of each field of one message.
fn for_each_field<'a>(
    mut rest: &'a [u8],
    mut visit: impl FnMut(u64, Field<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        let skip = match wire_type {
            0 => {
                varint(&mut rest)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut rest)?).map_err(|_| WireError::Truncated)?,
            5 => 4,
            _ => 0,
        };
        if number == 0 || !matches!(wire_type, 0 | 1 | 2 | 5) {
            return Err(WireError::WireType {
                field: number,
                wire_type,
            });
        }
        let (value, after) = rest.split_at_checked(skip).ok_or(WireError::Truncated)?;
        rest = after;
        visit(
            number,
            match wire_type {
                2 => Field::Delimited(value),
                _ => Field::Other(wire_type),
            },
        )?;
    }
    Ok(())
}

/// Reads a varint off the front of `rest`.
fn varint(rest: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, after) = rest.split_first().ok_or(WireError::Truncated)?;
        *rest = after;
        // The tenth byte holds bit 63 only; anything more does not fit in 64 bits.
        if shift == 63 && byte > 1 {
            return Err(WireError::OverlongVarint);
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError::OverlongVarint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn sample() -> Payload {
        Payload {
            message_type: "SubscribeServiceRequest".into(),
            headers: vec![
                ("accessToken".into(), "tök€n".into()),
                ("app".into(), String::new()),
            ],
            body: br#"{"serviceName":"demo"}"#.to_vec(),
        }
    }

    #[test]
    fn encode_then_decode_gives_the_payload_back() {
        assert_eq!(decode(&encode(&sample())), Ok(sample()));
        assert_eq!(decode(&encode(&Payload::default())), Ok(Payload::default()));
        let big = Payload {
            body: vec![b'x'; 70_000],
            ..sample()
        };
        assert_eq!(decode(&encode(&big)), Ok(big));
    }

    #[test]
    fn encoding_is_the_protobuf_layout() {
        let bytes = encode(&Payload {
            message_type: "T".into(),
            headers: vec![("k".into(), "v".into())],
            body: b"{}".to_vec(),
        });
        // Payload.metadata(2){type(3)="T", headers(7){1:"k",2:"v"}}, Payload.body(3){value(2)="{}"}
        assert_eq!(
            bytes,
            [
                0x12, 11, 0x1a, 1, b'T', 0x3a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x1a, 4, 0x12, 2,
                b'{', b'}'
            ]
        );
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut bytes = Vec::new();
        bytes.extend([0x08, 0x96, 0x01]); // field 1, varint 150
        bytes.extend([0x09, 1, 2, 3, 4, 5, 6, 7, 8]); // field 1, 64-bit
        bytes.extend([0x0d, 1, 2, 3, 4]); // field 1, 32-bit
        bytes.extend([0x0a, 2, 0xff, 0xfe]); // field 1, bytes (not UTF-8: never read)
        let metadata_extra = [0x40, 1, 0x42, 1, b'x', 0x45, 0, 0, 0, 0]; // clientIp and more
        bytes.extend(encode(&sample()));
        bytes.extend([0x12, metadata_extra.len() as u8]);
        bytes.extend(metadata_extra);
        bytes.extend([0x1a, 5, 0x0a, 3, b'u', b'r', b'l']); // Any.type_url
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample());
        // Fields are optional, so a cut between the two fields is a payload without body.
        let metadata_end = 2 + usize::from(bytes[1]);
        for end in (1..bytes.len()).filter(|&end| end != metadata_end) {
            assert!(decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let without_body = decode(&bytes[..metadata_end]).unwrap();
        assert_eq!(
            (without_body.body.len(), without_body.headers.len()),
            (0, 2)
        );
        assert_eq!(decode(&[0x12, 5, 0x1a]), Err(WireError::Truncated));
        assert_eq!(decode(&[0x12]), Err(WireError::Truncated));
        assert_eq!(decode(&[0x80]), Err(WireError::Truncated));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(WireError::OverlongVarint)
        );
        assert_eq!(
            decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(WireError::OverlongVarint)
        );
        // The largest varint still reads.
        let max = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(decode(&max), Ok(Payload::default()));
        let group = decode(&[0x0b]);
        assert_eq!(
            group,
            Err(WireError::WireType {
                field: 1,
                wire_type: 3
            })
        );
        assert!(decode(&[0x00, 0x00]).is_err(), "field number 0");
        assert!(decode(&[0x10, 0x01]).is_err(), "metadata as a varint");
        assert_eq!(decode(&[0x12, 3, 0x1a, 1, 0xff]), Err(WireError::BadUtf8));
        let huge_length = [0x12, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode(&huge_length), Err(WireError::Truncated));
        assert!(decode(b"{\"json\": true}").is_err());
    }

    #[test]
    fn empty_input_is_an_empty_payload() {
        assert_eq!(decode(&[]), Ok(Payload::default()));
    }
}
