//! The Kafka wire protocol for rill: bytes in, typed values out, and back.
//!
//! The message types and their codecs come from the `kafka-protocol` crate,
//! generated from Kafka's own schemas; this crate adds what sits around them:
//! framing with a size limit, reading the header to choose the body decoder,
//! the table of APIs and versions rill answers, and encoding responses with the
//! right header.
//!
//! # Layout
//! - [`frame`]: [`decode_frame`] takes one size-prefixed frame off a read
//!   buffer (an incomplete frame is `Ok(None)`, a negative or oversize prefix
//!   is an error found before anything is allocated); [`encode_frame`],
//!   [`start_frame`]/[`finish_frame`] write one.
//! - [`request`]: [`parse_request`] turns a frame into a [`Request`] (header,
//!   API key, version, typed body), or a [`RequestError`] that tells the
//!   broker whether to answer or close the connection.
//! - [`response`]: [`encode_response`] writes a whole response frame with the
//!   header version Kafka uses (always v0 for ApiVersions).
//! - [`fetch`]: [`encode_fetch_response`], the zero-copy Fetch writer: the
//!   response encoded around holes where each partition's records go, for
//!   the broker to fill with `sendfile`.
//! - [`versions`]: [`SUPPORTED_APIS`], the supported-version table, and the
//!   ApiVersions response bodies built from it.
//!
//! **Architecture Invariant:** this crate does no I/O and keeps no state. Record
//! batches inside requests stay raw bytes: nothing here decompresses them.
//!
//! # What the broker does with each error
//! As Apache Kafka does (`SocketServer`, `RequestContext.parseRequest`,
//! `ApiKeys.isVersionEnabled`, `ApiVersionsRequest.getErrorResponse`):
//! - [`FrameError`]: close the connection. Kafka's `NetworkReceive` does the
//!   same for a negative size or one over `socket.request.max.bytes`.
//! - [`RequestError::HeaderUnreadable`], [`RequestError::UnknownApiKey`],
//!   [`RequestError::Malformed`]: close the connection with a log line
//!   (Kafka throws `InvalidRequestException` and closes the channel).
//! - [`RequestError::UnsupportedVersion`] for ApiVersions: answer with a v0
//!   ApiVersionsResponse, error UNSUPPORTED_VERSION (35) and the ApiVersions
//!   range ([`encode_api_versions_unsupported`]); for any other API: close the
//!   connection (Kafka's "Received request for api with key … and unsupported
//!   version").
//! - Bytes after a decoded body are ignored, as Kafka ignores them; the count
//!   is in [`Request::trailing_bytes`].
//!
//! # Hostile lengths
//! A request declares the length of each array, string and byte field before
//! its contents, and a client can declare any length. kafka-protocol 0.18.0 as
//! published reserves an array's declared length (`Vec::with_capacity`)
//! before reading any element, so a body of a few dozen bytes could declare
//! 2^31 (or, compact, 2^32 − 2) elements, ask for hundreds of gigabytes, and
//! abort the process when the allocator refused.
//!
//! rill builds kafka-protocol from `vendor/kafka-protocol` (through
//! `[patch.crates-io]` in the workspace `Cargo.toml`), patched as Kafka's own
//! generated readers behave: a declared collection length larger than the
//! bytes left in the buffer is an error ("Tried to allocate a collection of
//! size …, but there are only … bytes remaining"), found before anything is
//! allocated, and the body is [`RequestError::Malformed`]. The patch also
//! reserves at most 1 MiB ahead of the elements, since a length that passes
//! the check can still be as large as the frame. Strings and byte fields were
//! already safe: their length is checked against the bytes left before they
//! are read. What changed, and why, is in `vendor/kafka-protocol/PATCHES.md`.
//!
//! So every API and version kafka-protocol knows can be decoded from client
//! bytes, whatever their declared lengths; `tests/hostile_lengths.rs` proves
//! it for all of them (and aborts if the patch is lost, for example by an
//! upgrade of kafka-protocol that does not carry it). The version table
//! decides what rill answers, not what is safe to decode.

pub mod fetch;
pub mod frame;
pub mod request;
pub mod response;
pub mod versions;

pub use fetch::{
    encode_fetch_response, FetchPartitionOut, FetchResponseOut, FetchTopicOut, FramePart,
    NodeEndpointOut, RecordSource, FETCH_VERSIONS,
};
pub use frame::{
    decode_frame, encode_frame, finish_frame, start_frame, FrameError, FrameStart,
    REQUEST_BYTES_MAX_DEFAULT, SIZE_PREFIX_LEN,
};
pub use request::{parse_request, parse_request_with, Request, RequestError};
pub use response::{
    encode_api_versions_unsupported, encode_response, response_header_version, EncodeError,
};
pub use versions::{
    api_versions_response, api_versions_unsupported_response, supported, SupportedApi,
    SUPPORTED_APIS,
};

/// The kafka-protocol crate this one is built on, so that callers use the same
/// version of its message types.
pub use kafka_protocol;
