//! DescribeGroups (key 15), v0..=6: state, protocol and members of each
//! group. Member metadata and assignments are shown only while a group is
//! stable, as in Kafka. An unknown group is "Dead" with no error before
//! v6, and GROUP_ID_NOT_FOUND from v6 (KIP-1043).

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::describe_groups_response::{
    DescribedGroup, DescribedGroupMember,
};
use rill_protocol::kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::str_bytes;
use crate::server::Broker;

/// What anyone may do to a group with no authorizer (KIP-430): every
/// operation of Kafka's `AclEntry.supportedOperations(GROUP)` — READ,
/// DELETE, DESCRIBE, and since Kafka 3.9 (group configs) DESCRIBE_CONFIGS
/// and ALTER_CONFIGS — as a bit field of `AclOperation` codes 3, 6, 8, 10
/// and 11.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11);
/// "Not asked for" on the wire.
const OPERATIONS_NOT_ASKED: i32 = i32::MIN;

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let operations = if request.include_authorized_operations {
        GROUP_OPERATIONS
    } else {
        OPERATIONS_NOT_ASKED
    };
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            // A group answered with an error keeps "not asked for": Kafka
            // gives operations only to groups it describes.
            let base = DescribedGroup::default()
                .with_authorized_operations(OPERATIONS_NOT_ASKED)
                .with_group_state(str_bytes(""))
                .with_protocol_type(str_bytes(""))
                .with_protocol_data(str_bytes(""));
            if group_id.is_empty() {
                return base
                    .with_group_id(group_id)
                    .with_error_code(ResponseError::InvalidGroupId.code());
            }
            match broker.groups.describe(&broker.replicas, group_id.as_str()) {
                Err(kind) => base.with_group_id(group_id).with_error_code(kind.code()),
                Ok(None) if version >= 6 => base
                    .with_group_id(group_id.clone())
                    .with_group_state(str_bytes("Dead"))
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes(format!(
                        "group {} not found",
                        group_id.as_str()
                    )))),
                Ok(None) => base
                    .with_group_id(group_id)
                    .with_authorized_operations(operations)
                    .with_group_state(str_bytes("Dead")),
                Ok(Some(described)) => base
                    .with_group_id(group_id)
                    .with_authorized_operations(operations)
                    .with_group_state(str_bytes(described.state))
                    .with_protocol_type(str_bytes(described.protocol_type))
                    .with_protocol_data(str_bytes(described.protocol))
                    .with_members(
                        described
                            .members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(m.member_id))
                                    .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                    .with_client_id(str_bytes(m.client_id))
                                    .with_client_host(str_bytes(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
