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
//! kafka-protocol 0.18 decodes an array by reading its declared length and
//! calling `Vec::with_capacity(length)` before reading any element
//! (`protocol::types::Array` and `CompactArray`). A body of a few dozen bytes
//! can declare 2^31 (or, compact, 2^32 − 2) elements; multiplied by the
//! element size that is a request for hundreds of gigabytes, which the
//! allocator refuses, and Rust aborts the process on a refused allocation.
//! Kafka's own generated readers refuse any array longer than the bytes left
//! ("Tried to allocate a collection of size …"); kafka-protocol does not.
//! Strings and byte fields are safe: their length is checked against the
//! bytes left before anything is allocated.
//!
//! The guard here is the version table: a body is decoded only for a row of
//! [`SUPPORTED_APIS`]. The APIs in it today (ApiVersions) have no arrays in
//! their requests, so no client bytes reach an unchecked allocation. **Before
//! adding an API whose request has arrays** (nearly all of them: Metadata,
//! Produce, Fetch, …) the decoding must be made safe first, by a fix in
//! kafka-protocol (check each declared length against the bytes left, as
//! Kafka does) or by a length check in this crate; the tests
//! `tests/hostile_lengths.rs` show the problem and will fail when a vulnerable
//! API is added to the table.

pub mod fetch;
pub mod frame;
pub mod request;
pub mod response;
pub mod versions;

pub use fetch::{
    encode_fetch_response, FetchPartitionOut, FetchResponseOut, FetchTopicOut, FramePart,
    RecordSource, FETCH_VERSIONS,
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
