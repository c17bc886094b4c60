//! The two wire framings of an Avro body:
//! - Confluent: `0x00`, a 4-byte big-endian schema id, the body;
//! - Avro single-object encoding: `0xC3 0x01`, the 8-byte CRC-64-AVRO (Rabin) fingerprint of
//!   the writer schema (little-endian), the body.

use super::DecodeError;

/// Magic byte of the Confluent framing.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// Marker of Avro single-object encoding.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// Which writer schema a framed value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterRef {
    /// A Confluent schema id.
    Id(u32),
    /// A CRC-64-AVRO fingerprint.
    Fingerprint([u8; 8]),
}

/// Splits a message value into the writer schema it names and its Avro body.
pub fn unframe(payload: &[u8]) -> Result<(WriterRef, &[u8]), DecodeError> {
    match payload {
        [CONFLUENT_MAGIC, a, b, c, d, body @ ..] => {
            Ok((WriterRef::Id(u32::from_be_bytes([*a, *b, *c, *d])), body))
        }
        [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => {
            let fingerprint: [u8; 8] = rest[..8].try_into().expect("8 bytes");
            Ok((WriterRef::Fingerprint(fingerprint), &rest[8..]))
        }
        [] => Err(DecodeError::Undecodable("empty message value".into())),
        [CONFLUENT_MAGIC, ..] => Err(DecodeError::Undecodable(format!(
            "{} bytes: too short for the 5-byte Confluent header",
            payload.len()
        ))),
        [0xC3, 0x01, ..] => Err(DecodeError::Undecodable(format!(
            "{} bytes: too short for the 10-byte single-object header",
            payload.len()
        ))),
        [first, ..] => Err(DecodeError::Undecodable(format!(
            "unknown framing: first byte 0x{first:02x} is neither 0x00 (Confluent) nor 0xc3 (single-object)"
        ))),
    }
}

/// Frames an Avro body with the Confluent header.
pub fn frame_confluent(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Frames an Avro body with the single-object header.
pub fn frame_single_object(fingerprint: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&SINGLE_OBJECT_MARKER);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(body);
    out
}
