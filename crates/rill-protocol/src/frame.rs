//! Size-prefixed frames: every Kafka request and response is a 4-byte
//! big-endian signed size followed by that many bytes.

use bytes::{BufMut, BytesMut};

/// Length of the size prefix in front of every frame.
pub const SIZE_PREFIX_LEN: usize = 4;

/// The default upper bound on a request frame, Kafka's
/// `socket.request.max.bytes` default (100 MiB).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

/// Why a frame cannot be read or written. Every variant on the read side means
/// the connection must be closed: the stream can no longer be trusted to be
/// aligned on frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {size} is negative")]
    NegativeSize { size: i32 },
    #[error("frame size {size} exceeds the limit of {request_bytes_max} bytes")]
    TooLarge {
        size: usize,
        request_bytes_max: usize,
    },
    #[error("frame payload of {size} bytes does not fit a 4-byte size prefix")]
    PayloadTooLarge { size: usize },
}

/// Takes one whole frame off the front of `buf`, without its size prefix.
///
/// Returns `Ok(None)` while the frame is incomplete: the caller reads more
/// bytes into `buf` and calls again. The size is checked against
/// `request_bytes_max` before anything is allocated or reserved, so a client
/// cannot make the broker reserve memory by sending only a size prefix.
///
/// A zero-length frame is a complete (empty) frame, as in Kafka; it fails
/// later, in [`crate::parse_request`], because it has no header.
pub fn decode_frame(
    buf: &mut BytesMut,
    request_bytes_max: usize,
) -> Result<Option<BytesMut>, FrameError> {
    let Some(prefix) = buf.first_chunk::<SIZE_PREFIX_LEN>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    let size = usize::try_from(size).map_err(|_| FrameError::NegativeSize { size })?;
    if size > request_bytes_max {
        return Err(FrameError::TooLarge {
            size,
            request_bytes_max,
        });
    }
    if buf.len() - SIZE_PREFIX_LEN < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(SIZE_PREFIX_LEN + size);
    let payload = frame.split_off(SIZE_PREFIX_LEN);
    assert_eq!(payload.len(), size);
    Ok(Some(payload))
}

/// Where a frame started in a buffer, returned by [`start_frame`] and consumed
/// by [`finish_frame`].
#[derive(Debug)]
#[must_use = "a started frame must be finished to fill in its size"]
pub struct FrameStart {
    prefix_at: usize,
}

/// Reserves the size prefix of a new frame at the end of `dst`. Write the
/// payload after it, then call [`finish_frame`].
pub fn start_frame(dst: &mut BytesMut) -> FrameStart {
    let prefix_at = dst.len();
    dst.put_i32(0);
    FrameStart { prefix_at }
}

/// Fills in the size prefix of the frame begun by `start`: everything written
/// to `dst` after the prefix is the payload. On error the partial frame is
/// removed from `dst`.
pub fn finish_frame(dst: &mut BytesMut, start: FrameStart) -> Result<(), FrameError> {
    let payload_at = start.prefix_at + SIZE_PREFIX_LEN;
    assert!(dst.len() >= payload_at, "finish_frame without start_frame");
    let size = dst.len() - payload_at;
    let Ok(size_prefix) = i32::try_from(size) else {
        dst.truncate(start.prefix_at);
        return Err(FrameError::PayloadTooLarge { size });
    };
    dst[start.prefix_at..payload_at].copy_from_slice(&size_prefix.to_be_bytes());
    Ok(())
}

/// Appends `payload` to `dst` as one frame, size prefix first.
pub fn encode_frame(payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = start_frame(dst);
    dst.reserve(payload.len());
    dst.put_slice(payload);
    finish_frame(dst, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(payload, &mut buf).unwrap();
        buf
    }

    #[test]
    fn whole_frame_is_returned_without_prefix() {
        let mut buf = framed(b"hello");
        buf.extend_from_slice(b"\x00\x00");
        let frame = decode_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&frame[..], b"hello");
        // The start of the next frame stays in the buffer.
        assert_eq!(&buf[..], b"\x00\x00");
        assert_eq!(decode_frame(&mut buf, 100).unwrap(), None);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let mut stream = framed(b"first frame");
        stream.extend_from_slice(&framed(b""));
        stream.extend_from_slice(&framed(b"third"));
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(chunk);
                while let Some(frame) = decode_frame(&mut buf, 100).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, [&b"first frame"[..], b"", b"third"], "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn fed_one_byte_at_a_time() {
        let stream = framed(b"byte by byte");
        let mut buf = BytesMut::new();
        for (i, byte) in stream.iter().enumerate() {
            buf.put_u8(*byte);
            let frame = decode_frame(&mut buf, 100).unwrap();
            if i + 1 < stream.len() {
                assert_eq!(frame, None, "frame complete too early, at byte {i}");
            } else {
                assert_eq!(&frame.unwrap()[..], b"byte by byte");
            }
        }
    }

    #[test]
    fn oversize_prefix_is_rejected_before_the_body_arrives() {
        let mut buf = BytesMut::from(&101_i32.to_be_bytes()[..]);
        let capacity_before = buf.capacity();
        assert_eq!(
            decode_frame(&mut buf, 100),
            Err(FrameError::TooLarge {
                size: 101,
                request_bytes_max: 100
            })
        );
        assert_eq!(buf.capacity(), capacity_before, "nothing was reserved");
        // Exactly at the limit is allowed.
        let mut buf = BytesMut::from(&100_i32.to_be_bytes()[..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(None));
    }

    #[test]
    fn maximal_prefix_against_the_default_limit() {
        let mut buf = BytesMut::from(&i32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            decode_frame(&mut buf, REQUEST_BYTES_MAX_DEFAULT),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn negative_prefix_is_rejected() {
        for size in [-1_i32, i32::MIN] {
            let mut buf = BytesMut::from(&size.to_be_bytes()[..]);
            assert_eq!(
                decode_frame(&mut buf, REQUEST_BYTES_MAX_DEFAULT),
                Err(FrameError::NegativeSize { size })
            );
        }
    }

    #[test]
    fn zero_length_frame_is_an_empty_frame() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(Some(BytesMut::new())));
        assert!(buf.is_empty());
    }

    #[test]
    fn short_prefix_is_incomplete() {
        for len in 0..SIZE_PREFIX_LEN {
            let mut buf = BytesMut::from(&[0xff_u8; 3][..len]);
            assert_eq!(decode_frame(&mut buf, 100), Ok(None));
            assert_eq!(buf.len(), len);
        }
    }

    #[test]
    fn start_and_finish_fill_in_the_size() {
        let mut buf = BytesMut::from(&b"earlier"[..]);
        let start = start_frame(&mut buf);
        buf.put_slice(b"abc");
        finish_frame(&mut buf, start).unwrap();
        assert_eq!(&buf[..], b"earlier\x00\x00\x00\x03abc");
    }
}
