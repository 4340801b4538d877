//! The primitive types of Kafka's coordinator record schemas (the
//! `__consumer_offsets` and `__transaction_state` keys and values): big-
//! endian integers, i16- and varint-length strings, i32-length bytes.
//! Readers check every length against the bytes left and return
//! [`Malformed`], which each schema's own error takes in (`From`).

use bytes::{Buf, BufMut, Bytes};

/// Why a primitive could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    // Ids, topics and member ids are bounded by the request they came in
    // (an i16-length string on the wire), so this is a bug if it fires.
    assert!(
        s.len() <= i16::MAX as usize,
        "string too long for the record"
    );
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

pub fn put_nullable_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

pub fn put_compact_string(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= i16::MAX as usize,
        "string too long for the record"
    );
    put_uvarint(out, s.len() as u32 + 1);
    out.put_slice(s.as_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    assert!(
        b.len() <= i32::MAX as usize,
        "bytes too long for the record"
    );
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

pub fn put_uvarint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

pub fn get_i8(buf: &mut &[u8]) -> Result<i8, Malformed> {
    if buf.remaining() < 1 {
        return Err(Malformed("truncated"));
    }
    Ok(buf.get_i8())
}

pub fn get_i16(buf: &mut &[u8]) -> Result<i16, Malformed> {
    if buf.remaining() < 2 {
        return Err(Malformed("truncated"));
    }
    Ok(buf.get_i16())
}

pub fn get_i32(buf: &mut &[u8]) -> Result<i32, Malformed> {
    if buf.remaining() < 4 {
        return Err(Malformed("truncated"));
    }
    Ok(buf.get_i32())
}

pub fn get_i64(buf: &mut &[u8]) -> Result<i64, Malformed> {
    if buf.remaining() < 8 {
        return Err(Malformed("truncated"));
    }
    Ok(buf.get_i64())
}

/// An unsigned varint of at most 32 bits, as Kafka's `readUnsignedVarint`.
pub fn get_uvarint(buf: &mut &[u8]) -> Result<u32, Malformed> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        if buf.is_empty() {
            return Err(Malformed("truncated"));
        }
        let byte = buf.get_u8();
        // The fifth byte may only carry the top four bits.
        if shift == 28 && byte > 0x0f {
            return Err(Malformed("varint too long"));
        }
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("varint too long"))
}

/// The next `len` bytes.
pub fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < len {
        return Err(Malformed("length beyond the record"));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn utf8(bytes: &[u8]) -> Result<String, Malformed> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
}

pub fn get_nullable_string(buf: &mut &[u8]) -> Result<Option<String>, Malformed> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    utf8(take(buf, len as usize)?).map(Some)
}

pub fn get_string(buf: &mut &[u8]) -> Result<String, Malformed> {
    get_nullable_string(buf)?.ok_or(Malformed("null where a string must be"))
}

pub fn get_compact_string(buf: &mut &[u8]) -> Result<String, Malformed> {
    let len = get_uvarint(buf)?;
    if len == 0 {
        return Err(Malformed("null where a string must be"));
    }
    utf8(take(buf, (len - 1) as usize)?)
}

/// i32-length bytes; a null (negative length) reads as empty.
pub fn get_bytes(buf: &mut &[u8]) -> Result<Bytes, Malformed> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    Ok(Bytes::copy_from_slice(take(buf, len as usize)?))
}
