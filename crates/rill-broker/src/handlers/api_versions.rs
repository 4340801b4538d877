//! ApiVersions (key 18): the APIs and versions this broker answers, from
//! the table in `rill_protocol::versions`.

use rill_protocol::kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

pub fn handle(_version: i16, _request: ApiVersionsRequest) -> ApiVersionsResponse {
    rill_protocol::api_versions_response()
}
