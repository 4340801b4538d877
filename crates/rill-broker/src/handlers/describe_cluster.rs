//! DescribeCluster (key 60), v0–v2: the cluster id, the controller and the
//! brokers, from this node's metadata image (the Java admin client's
//! `describeCluster` uses it instead of Metadata when the broker has it).
//!
//! As Kafka (`AuthHelper.computeDescribeClusterResponse`): a broker
//! answers only for endpoint type BROKER (1); CONTROLLER (2) is
//! MISMATCHED_ENDPOINT_TYPE and any other UNSUPPORTED_ENDPOINT_TYPE
//! (INVALID_REQUEST in v0, which cannot carry the type). Fenced brokers
//! are listed only when v2's `include_fenced_brokers` asks for them.

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use rill_protocol::kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse,
};

use super::str_bytes;
use crate::server::Broker;

const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

/// Kafka's "authorized operations were not asked for" value.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Every operation on the cluster resource (Kafka's `AclEntry
/// .supportedOperations(CLUSTER)`: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE) as a bit field of
/// `AclOperation` codes. rill has no authoriser yet, so all are allowed.
pub(crate) const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub fn handle(
    broker: &Broker,
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    if request.endpoint_type != ENDPOINT_TYPE_BROKER {
        let (error, message) = if request.endpoint_type == ENDPOINT_TYPE_CONTROLLER {
            (
                ResponseError::MismatchedEndpointType,
                "the request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER".to_string(),
            )
        } else {
            (
                ResponseError::UnsupportedEndpointType,
                format!("unsupported endpoint type {}", request.endpoint_type),
            )
        };
        let error = if version == 0 {
            ResponseError::InvalidRequest
        } else {
            error
        };
        return DescribeClusterResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(message)));
    }
    let image = broker.controller.image();
    let brokers: Vec<DescribeClusterBroker> = image
        .brokers()
        .filter(|b| !b.fenced || request.include_fenced_brokers)
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(str_bytes))
                .with_is_fenced(b.fenced)
        })
        .collect();
    let controller_id = broker.controller_id_for_clients();
    DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_TYPE_BROKER)
        .with_cluster_id(str_bytes(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(controller_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS_ALL
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        })
}
