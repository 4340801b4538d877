//! Encoding a response as a whole frame: size prefix, response header, body.

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::frame::{finish_frame, start_frame, FrameError};
use crate::versions::api_versions_unsupported_response;

/// Why a response could not be encoded. Each is a broker bug (a body that does
/// not exist at the requested version, a field too long for its wire type),
/// never something a client caused; nothing is left in the output buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode {api_key:?} v{api_version} response: {reason}")]
    Body {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The response header version for `api_key` at `api_version`.
///
/// ApiVersions responses always use header v0, even at flexible versions
/// (v3+), because a client that does not yet know the broker's versions must
/// be able to read the header (KIP-511). kafka-protocol's table says the same;
/// the special case is written out so it does not depend on that.
pub fn response_header_version(api_key: ApiKey, api_version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    }
}

/// Appends to `dst` one whole response frame: size prefix, the response
/// header for `api_key` at `api_version`, and `body` encoded at `api_version`.
///
/// `body` must be the response type of `api_key`; the caller answers with the
/// version and correlation id of the request.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let frame_at = dst.len();
    let start = start_frame(dst);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(dst, response_header_version(api_key, api_version))
        .and_then(|()| body.encode(dst, api_version));
    if let Err(error) = encoded {
        dst.truncate(frame_at);
        return Err(EncodeError::Body {
            api_key,
            api_version,
            reason: format!("{error:#}"),
        });
    }
    Ok(finish_frame(dst, start)?)
}

/// Appends to `dst` Kafka's answer to an ApiVersions request at a version the
/// broker does not support: a v0 response with UNSUPPORTED_VERSION and the
/// supported ApiVersions range (see
/// [`crate::RequestError::UnsupportedVersion`]).
pub fn encode_api_versions_unsupported(
    correlation_id: i32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let body = ResponseKind::ApiVersions(api_versions_unsupported_response());
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body, dst)
}
