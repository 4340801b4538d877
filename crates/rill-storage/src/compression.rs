//! The compression codecs of magic v2 record batches, in the exact stream
//! formats Kafka clients put on the wire.
//!
//! A batch's attributes name the codec; everything after the 61-byte header
//! is then one compressed stream holding the records back to back:
//!
//! - gzip: a gzip stream (RFC 1952). Concatenated members are accepted, as
//!   Java's `GZIPInputStream` accepts them.
//! - snappy: the Java client writes the xerial (snappy-java) framing, a
//!   16-byte stream header followed by length-prefixed raw snappy blocks,
//!   while librdkafka writes a single raw snappy block. Both are decoded; the
//!   xerial framing is what [`compress`] writes.
//! - lz4: the standard LZ4 frame format, independent blocks of at most
//!   64 KiB, which is what the Java client's `KafkaLZ4BlockOutputStream`
//!   writes.
//! - zstd: a zstd frame.
//!
//! Decompression never trusts the input: every codec stops reading one byte
//! past the caller's limit, and snappy's declared block lengths are checked
//! against the limit before anything is allocated, so a decompression bomb or
//! a lying length field costs memory in proportion to `limit`, plus each
//! decoder's bounded working space (lz4 blocks of at most 8 MiB, a zstd
//! window of at most 128 MiB, zstd's default cap, which Java's zstd-jni
//! shares).

use std::io::{self, Read, Write};

use crate::batch::Compression;
use crate::error::CorruptBatch;

/// The first eight bytes of a snappy-java (xerial) stream. A raw snappy block
/// cannot start with them: they would declare a length of 10626 bytes and
/// then begin with a back-reference, which is invalid before any output.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic, then the stream format's version and its minimum compatible
/// version, both big-endian i32.
const XERIAL_HEADER_LEN: usize = 16;
/// The version snappy-java writes, and the oldest version that reads it.
const XERIAL_VERSION: i32 = 1;
const XERIAL_COMPATIBLE_VERSION: i32 = 1;
/// snappy-java's default block size, which the Java client uses.
const XERIAL_BLOCK_SIZE: usize = 32 * 1024;

/// zstd's default level, which is also Kafka's default
/// (`compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;

/// Compresses `raw` into the stream format Kafka uses for `codec`.
/// [`Compression::None`] returns a copy.
///
/// # Panics
///
/// Never in practice. The encoders write into a `Vec`, which cannot fail, and
/// the only input an encoder refuses is a single snappy block over 4 GiB,
/// which the 32 KiB xerial blocks rule out. Those impossible errors panic
/// rather than being handed to every caller to ignore.
pub fn compress(codec: Compression, raw: &[u8]) -> Vec<u8> {
    let compressed = match codec {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => gzip_compress(raw),
        Compression::Snappy => xerial_compress(raw),
        Compression::Lz4 => lz4_compress(raw),
        Compression::Zstd => zstd::stream::encode_all(raw, ZSTD_LEVEL),
    };
    match compressed {
        Ok(bytes) => bytes,
        Err(error) => panic!("{codec:?} compression into memory failed: {error}"),
    }
}

/// Decompresses a batch's records section. Output longer than `limit` bytes
/// is an error, detected after producing at most `limit + 1` bytes.
pub fn decompress(
    codec: Compression,
    compressed: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CorruptBatch> {
    match codec {
        Compression::None => {
            if compressed.len() > limit {
                return Err(over_limit(codec, limit));
            }
            Ok(compressed.to_vec())
        }
        Compression::Gzip => {
            read_limited(codec, flate2::read::MultiGzDecoder::new(compressed), limit)
        }
        Compression::Snappy => {
            if compressed.starts_with(&XERIAL_MAGIC) {
                xerial_decompress(compressed, limit)
            } else {
                let mut out = Vec::new();
                snappy_block_decompress(compressed, limit, &mut out)?;
                Ok(out)
            }
        }
        Compression::Lz4 => {
            read_limited(codec, lz4_flex::frame::FrameDecoder::new(compressed), limit)
        }
        Compression::Zstd => {
            // `with_buffer` reads the slice directly instead of copying it
            // through a `BufReader`. The decoder's window is capped by zstd's
            // default maximum window (2^27 bytes), so a frame cannot make it
            // allocate more than that however large a window it declares.
            let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|e| failed(codec, e))?;
            read_limited(codec, decoder, limit)
        }
    }
}

fn gzip_compress(raw: &[u8]) -> io::Result<Vec<u8>> {
    // Level 6 is both flate2's and java.util.zip's default.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(raw)?;
    encoder.finish()
}

fn lz4_compress(raw: &[u8]) -> io::Result<Vec<u8>> {
    // Pin the frame parameters to the ones the Java client writes rather than
    // lz4_flex's automatic block size, so that every Kafka reader, including
    // old ones, accepts what we write.
    let info = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max64KB)
        .block_mode(lz4_flex::frame::BlockMode::Independent);
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    encoder.write_all(raw)?;
    encoder.finish().map_err(io::Error::other)
}

fn xerial_compress(raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + snap::raw::max_compress_len(raw.len()));
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_COMPATIBLE_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    let mut block = vec![0; snap::raw::max_compress_len(XERIAL_BLOCK_SIZE)];
    for chunk in raw.chunks(XERIAL_BLOCK_SIZE) {
        let len = encoder
            .compress(chunk, &mut block)
            .map_err(io::Error::other)?;
        // A compressed 32 KiB block is far below 2 GiB, so the length fits.
        let len_field = i32::try_from(len).map_err(io::Error::other)?;
        out.extend_from_slice(&len_field.to_be_bytes());
        out.extend_from_slice(&block[..len]);
    }
    Ok(out)
}

/// Decodes the snappy-java framing: the stream header, then blocks each
/// prefixed by its compressed length as a big-endian i32.
fn xerial_decompress(compressed: &[u8], limit: usize) -> Result<Vec<u8>, CorruptBatch> {
    let codec = Compression::Snappy;
    if compressed.len() < XERIAL_HEADER_LEN {
        return Err(malformed(codec, "xerial stream header is truncated"));
    }
    // The version fields are not checked: snappy-java has only ever written
    // version 1 and librdkafka ignores them, so checking them could only
    // refuse a stream whose blocks decode fine.
    let mut rest = &compressed[XERIAL_HEADER_LEN..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        // Recent snappy-java releases read concatenated streams, whose later
        // headers appear where a block length would be. Their magic reads as
        // a negative length, so it cannot be mistaken for a real block, and
        // skipping it costs nothing.
        if rest.starts_with(&XERIAL_MAGIC) {
            if rest.len() < XERIAL_HEADER_LEN {
                return Err(malformed(codec, "xerial stream header is truncated"));
            }
            rest = &rest[XERIAL_HEADER_LEN..];
            continue;
        }
        let Some((len_field, after)) = rest.split_first_chunk::<4>() else {
            return Err(malformed(codec, "xerial block length is truncated"));
        };
        let block_len = usize::try_from(i32::from_be_bytes(*len_field))
            .map_err(|_| malformed(codec, "xerial block length is negative"))?;
        if block_len > after.len() {
            return Err(malformed(
                codec,
                &format!(
                    "xerial block of {block_len} bytes overruns the {} left",
                    after.len()
                ),
            ));
        }
        let (block, tail) = after.split_at(block_len);
        snappy_block_decompress(block, limit, &mut out)?;
        rest = tail;
    }
    Ok(out)
}

/// The most bytes one byte of a raw snappy block can decompress to. No
/// element of a block writes more than 64 bytes, and the shortest that
/// writes 64 is a 3-byte copy, so a block of `n` bytes holds at most
/// `64 * n / 3` bytes of output.
const SNAPPY_EXPANSION_MAX: usize = 22;

/// Appends one raw snappy block to `out`. The block's declared length is
/// checked, before the output grows, against what the block's own size
/// could produce and against what `limit` leaves, so a block that lies
/// about its length cannot force a large allocation: the decoder fills a
/// buffer of the declared length, and without the first check a block of
/// a few bytes could make every caller allocate `limit` bytes (256 MiB
/// for the produce path's key check on compacted topics).
fn snappy_block_decompress(
    block: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), CorruptBatch> {
    let codec = Compression::Snappy;
    let len = snap::raw::decompress_len(block).map_err(|e| failed(codec, e))?;
    if len > block.len().saturating_mul(SNAPPY_EXPANSION_MAX) {
        return Err(malformed(
            codec,
            &format!(
                "a block of {} bytes declares {len} bytes, more than it can hold",
                block.len()
            ),
        ));
    }
    if len > limit.saturating_sub(out.len()) {
        return Err(over_limit(codec, limit));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| failed(codec, e))?;
    out.truncate(start + written);
    Ok(())
}

/// Reads a decompressing stream to its end, but never more than one byte past
/// `limit`, which is enough to tell that the limit was exceeded.
fn read_limited(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, CorruptBatch> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| failed(codec, e))?;
    if out.len() > limit {
        return Err(over_limit(codec, limit));
    }
    Ok(out)
}

fn over_limit(codec: Compression, limit: usize) -> CorruptBatch {
    malformed(
        codec,
        &format!("records decompress to more than the {limit}-byte limit"),
    )
}

fn failed(codec: Compression, error: impl std::fmt::Display) -> CorruptBatch {
    malformed(codec, &format!("decompression failed: {error}"))
}

fn malformed(codec: Compression, what: &str) -> CorruptBatch {
    CorruptBatch::MalformedRecords(format!("{codec:?}: {what}"))
}

// Tests unwrap freely: a panic there is a failed test, which is what it should be.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CODECS: [Compression; 5] = Compression::ALL;

    /// Varied but compressible data, spanning several xerial and lz4 blocks.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    fn is_malformed(result: Result<Vec<u8>, CorruptBatch>) -> bool {
        matches!(result, Err(CorruptBatch::MalformedRecords(_)))
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in CODECS {
            for len in [0, 1, 100, XERIAL_BLOCK_SIZE, XERIAL_BLOCK_SIZE + 1, 200_000] {
                let raw = sample(len);
                let compressed = compress(codec, &raw);
                assert_eq!(
                    decompress(codec, &compressed, len).unwrap(),
                    raw,
                    "{codec:?} {len}"
                );
            }
        }
    }

    #[test]
    fn formats_start_with_their_magic() {
        let raw = sample(1000);
        assert_eq!(compress(Compression::Gzip, &raw)[..2], [0x1f, 0x8b]);
        assert_eq!(
            compress(Compression::Lz4, &raw)[..4],
            [0x04, 0x22, 0x4d, 0x18]
        );
        assert_eq!(
            compress(Compression::Zstd, &raw)[..4],
            [0x28, 0xb5, 0x2f, 0xfd]
        );
        let snappy = compress(Compression::Snappy, &raw);
        assert_eq!(snappy[..8], XERIAL_MAGIC);
        assert_eq!(snappy[8..16], [0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn xerial_blocks_hold_at_most_32_kib() {
        let raw = sample(3 * XERIAL_BLOCK_SIZE + 5);
        let snappy = compress(Compression::Snappy, &raw);
        let mut rest = &snappy[XERIAL_HEADER_LEN..];
        let mut lens = Vec::new();
        while !rest.is_empty() {
            let len = i32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let block = &rest[4..4 + len];
            lens.push(snap::raw::decompress_len(block).unwrap());
            rest = &rest[4 + len..];
        }
        assert_eq!(
            lens,
            [XERIAL_BLOCK_SIZE, XERIAL_BLOCK_SIZE, XERIAL_BLOCK_SIZE, 5]
        );
    }

    #[test]
    fn raw_snappy_decodes() {
        // librdkafka sends one raw snappy block with no framing.
        let raw = sample(100_000);
        let block = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &block, raw.len()).unwrap(),
            raw
        );
    }

    #[test]
    fn hand_framed_xerial_decodes() {
        // Framed by hand, two blocks, as snappy-java would write them.
        let (first, second) = (sample(40_000), b"tail".to_vec());
        let mut stream = XERIAL_MAGIC.to_vec();
        stream.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for part in [&first, &second] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            stream.extend_from_slice(&(block.len() as i32).to_be_bytes());
            stream.extend_from_slice(&block);
        }
        let expected = [first, second].concat();
        assert_eq!(
            decompress(Compression::Snappy, &stream, usize::MAX).unwrap(),
            expected
        );

        // A second stream header in the middle is skipped, as snappy-java does.
        let doubled = [&stream[..], &stream[..]].concat();
        let twice = [&expected[..], &expected[..]].concat();
        assert_eq!(
            decompress(Compression::Snappy, &doubled, usize::MAX).unwrap(),
            twice
        );

        // A header alone is an empty stream.
        assert!(decompress(Compression::Snappy, &stream[..16], 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn damaged_xerial_is_refused() {
        let stream = compress(Compression::Snappy, &sample(1000));
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &stream[..12],
            10_000
        )));
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &stream[..18],
            10_000
        )));
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &stream[..stream.len() - 1],
            10_000
        )));
        let mut negative = stream.clone();
        negative[16..20].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &negative,
            10_000
        )));
    }

    #[test]
    fn output_beyond_the_limit_is_refused_for_every_codec() {
        let raw = vec![0u8; 1 << 20];
        for codec in CODECS {
            let compressed = compress(codec, &raw);
            assert!(
                is_malformed(decompress(codec, &compressed, 1000)),
                "{codec:?}"
            );
            assert!(
                is_malformed(decompress(codec, &compressed, raw.len() - 1)),
                "{codec:?}"
            );
            assert_eq!(
                decompress(codec, &compressed, raw.len()).unwrap().len(),
                raw.len()
            );
        }
    }

    #[test]
    fn a_bomb_is_refused() {
        // 64 MiB of zeros compress to a few hundred KiB at most.
        let raw = vec![0u8; 64 << 20];
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let compressed = compress(codec, &raw);
            assert!(compressed.len() < raw.len() / 100, "{codec:?}");
            assert!(
                is_malformed(decompress(codec, &compressed, 1024)),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        // An endless stream: this returns only because reading stops at
        // limit + 1 bytes instead of running to the end.
        assert!(is_malformed(read_limited(
            Compression::Gzip,
            io::repeat(0),
            1024
        )));
        let mut counting = Counting {
            inner: io::repeat(7),
            read: 0,
        };
        assert!(is_malformed(read_limited(
            Compression::Gzip,
            &mut counting,
            100
        )));
        assert_eq!(counting.read, 101);
    }

    /// A reader that counts the bytes taken from it.
    struct Counting<R> {
        inner: R,
        read: usize,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn zstd_windows_beyond_the_default_cap_are_refused() {
        // A frame declaring a 256 MiB window would make the decoder reserve
        // that much whatever the limit; zstd's default cap refuses it.
        let frame = |window_log| {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            encoder.window_log(window_log).unwrap();
            encoder.write_all(b"tiny").unwrap();
            encoder.finish().unwrap()
        };
        assert_eq!(
            decompress(Compression::Zstd, &frame(27), 1 << 20).unwrap(),
            b"tiny"
        );
        let refused = decompress(Compression::Zstd, &frame(28), 1 << 20);
        assert!(format!("{refused:?}").contains("memory"), "{refused:?}");
    }

    #[test]
    fn a_lying_snappy_length_is_refused_before_allocating() {
        // A raw block that claims 4 GiB - 1 bytes, alone and inside xerial framing.
        let block = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00];
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &block,
            1 << 20
        )));
        let mut stream = compress(Compression::Snappy, b"");
        stream.extend_from_slice(&(block.len() as i32).to_be_bytes());
        stream.extend_from_slice(&block);
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &stream,
            1 << 20
        )));
        // A block declaring more than its bytes can hold is refused whatever
        // the limit: 6 bytes declaring 200 MiB (a fuzz finding; each such
        // batch made the produce path allocate and zero the declared size).
        let mut lying = Vec::new();
        let mut declared = 200_u32 << 20;
        while declared >= 0x80 {
            lying.push(declared as u8 | 0x80);
            declared >>= 7;
        }
        lying.push(declared as u8);
        lying.extend_from_slice(&[0x00, b'x']);
        let refused = decompress(Compression::Snappy, &lying, 256 << 20);
        assert!(
            format!("{refused:?}").contains("more than it can hold"),
            "{refused:?}"
        );
        // The most a block can expand is allowed: 3-byte copies of 64 bytes.
        let dense = snap::raw::Encoder::new()
            .compress_vec(&vec![7_u8; 64 * 1024])
            .unwrap();
        assert!(dense.len() * 21 < 64 * 1024, "{} bytes", dense.len());
        let expanded = decompress(Compression::Snappy, &dense, 1 << 20).unwrap();
        assert_eq!(expanded.len(), 64 * 1024);
        // The limit covers all blocks together, not each one.
        let two = compress(Compression::Snappy, &sample(2 * XERIAL_BLOCK_SIZE));
        assert!(is_malformed(decompress(
            Compression::Snappy,
            &two,
            XERIAL_BLOCK_SIZE + 1
        )));
    }

    #[test]
    fn garbage_is_refused() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                is_malformed(decompress(codec, b"not compressed at all", 1000)),
                "{codec:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            codec in 0usize..5,
            xerial_prefix in any::<bool>(),
            limit in 0usize..100_000,
        ) {
            let input = if xerial_prefix {
                [&XERIAL_MAGIC[..], &bytes[..]].concat()
            } else {
                bytes
            };
            let _ = decompress(CODECS[codec], &input, limit);
        }

        #[test]
        fn damaged_streams_never_panic(
            raw in prop::collection::vec(any::<u8>(), 0..2048),
            codec in 0usize..5,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut compressed = compress(CODECS[codec], &raw);
            if !compressed.is_empty() {
                for (at, byte) in flips {
                    let at = at % compressed.len();
                    compressed[at] ^= byte;
                }
            }
            let _ = decompress(CODECS[codec], &compressed, 4096);
        }
    }
}
