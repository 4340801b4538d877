//! Parsing one request frame into its header and typed body.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use crate::versions::{SupportedApi, SUPPORTED_APIS};

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub api_version: i16,
    pub body: RequestKind,
    /// Bytes left in the frame after the body. Kafka ignores them (its
    /// `AbstractRequest.parseRequest` never checks that the buffer was used
    /// up), so rill answers such a request too; the count is here so that the
    /// broker can log it.
    pub trailing_bytes: usize,
}

/// Why a frame is not a request rill can answer. The broker's reaction, as
/// Kafka's, is given per variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The header cannot be read (too short, a bad client id). Close the
    /// connection: there is no correlation id to answer with.
    #[error("unreadable request header: {reason}")]
    HeaderUnreadable { reason: String },
    /// The API key is not one the protocol defines. Kafka closes the
    /// connection ("Unknown API key"); so does rill.
    #[error("unknown API key {api_key} (version {api_version})")]
    UnknownApiKey { api_key: i16, api_version: i16 },
    /// The API is not in the supported-version table, or the version is outside
    /// its range. The header was read, so the correlation id is known.
    ///
    /// For ApiVersions the broker must answer: Kafka treats an ApiVersions
    /// request at a version it does not know as v0 without parsing its body,
    /// and replies with a v0 ApiVersionsResponse carrying UNSUPPORTED_VERSION
    /// (35) and the ApiVersions range it supports
    /// ([`crate::encode_api_versions_unsupported`]). For every other API Kafka
    /// closes the connection (clients learn the versions from ApiVersions
    /// first); so should the broker.
    #[error("{api_key:?} version {api_version} is not supported")]
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    /// The body does not decode at the version in the header. Close the
    /// connection with a log line, as Kafka does (`InvalidRequestException`).
    #[error("malformed {api_key:?} v{api_version} request body: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        reason: String,
    },
}

/// Parses one frame (without its size prefix) into a [`Request`].
///
/// The body is decoded only for an API and version in [`SUPPORTED_APIS`], so
/// the header's version, not the body's contents, decides which decoder runs.
pub fn parse_request(frame: Bytes) -> Result<Request, RequestError> {
    parse_request_with(frame, SUPPORTED_APIS)
}

/// [`parse_request`] against another version table; for tests of APIs the
/// broker does not implement yet. Any table is safe to pass: the body
/// decoders check every declared length against the bytes left (the crate
/// doc's "Hostile lengths").
pub fn parse_request_with(
    frame: Bytes,
    supported_apis: &[SupportedApi],
) -> Result<Request, RequestError> {
    // Every header version begins with the API key and version; they decide the
    // header version, so they are read before the header itself.
    let Some(&[key_hi, key_lo, version_hi, version_lo]) = frame.first_chunk::<4>() else {
        return Err(RequestError::HeaderUnreadable {
            reason: format!("frame of {} bytes is shorter than a header", frame.len()),
        });
    };
    let raw_api_key = i16::from_be_bytes([key_hi, key_lo]);
    let api_version = i16::from_be_bytes([version_hi, version_lo]);
    let api_key = ApiKey::try_from(raw_api_key).map_err(|()| RequestError::UnknownApiKey {
        api_key: raw_api_key,
        api_version,
    })?;

    let mut buf = frame;
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|error| {
        RequestError::HeaderUnreadable {
            reason: format!("{api_key:?} v{api_version} header v{header_version}: {error:#}"),
        }
    })?;
    assert_eq!(header.request_api_key, raw_api_key);
    assert_eq!(header.request_api_version, api_version);
    let correlation_id = header.correlation_id;

    let is_supported = supported_apis
        .iter()
        .any(|api| api.key == api_key && (api.min..=api.max).contains(&api_version));
    if !is_supported {
        return Err(RequestError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }

    let body = RequestKind::decode(api_key, &mut buf, api_version).map_err(|error| {
        RequestError::Malformed {
            api_key,
            api_version,
            correlation_id,
            reason: format!("{error:#}"),
        }
    })?;
    Ok(Request {
        header,
        api_key,
        api_version,
        body,
        trailing_bytes: buf.remaining(),
    })
}
