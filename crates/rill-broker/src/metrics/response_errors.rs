//! The error codes in an answer, for `rill_request_errors_total`: every
//! non-zero code at every level the API's answer has one (the whole
//! request, a topic, a partition, a group, a config resource), as Kafka's
//! `AbstractResponse.errorCounts` counts them. Fetch answers are counted
//! from their own type (`Metrics::fetch_answer`).

use rill_protocol::kafka_protocol::messages::ResponseKind;

/// Calls `f` with every error code in `body` (zeros included; the caller
/// skips them).
pub(super) fn for_each_code(body: &ResponseKind, mut f: impl FnMut(i16)) {
    match body {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| f(p.error_code)),
        ResponseKind::Fetch(r) => {
            f(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| f(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        ResponseKind::Metadata(r) => {
            f(r.error_code);
            for topic in &r.topics {
                f(topic.error_code);
                topic.partitions.iter().for_each(|p| f(p.error_code));
            }
        }
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            // v0..=7 answer one group (top level), v8+ a list of groups.
            f(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| f(p.error_code));
            for group in &r.groups {
                f(group.error_code);
                group
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| f(p.error_code));
            }
        }
        ResponseKind::FindCoordinator(r) => {
            // v0..=3 answer one key (top level), v4+ a list of them.
            f(r.error_code);
            r.coordinators.iter().for_each(|c| f(c.error_code));
        }
        ResponseKind::JoinGroup(r) => f(r.error_code),
        ResponseKind::Heartbeat(r) => f(r.error_code),
        ResponseKind::LeaveGroup(r) => {
            f(r.error_code);
            r.members.iter().for_each(|m| f(m.error_code));
        }
        ResponseKind::SyncGroup(r) => f(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| f(g.error_code)),
        ResponseKind::ListGroups(r) => f(r.error_code),
        ResponseKind::ApiVersions(r) => f(r.error_code),
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| f(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| f(t.error_code)),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        ResponseKind::InitProducerId(r) => f(r.error_code),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        ResponseKind::DescribeConfigs(r) => r.results.iter().for_each(|c| f(c.error_code)),
        ResponseKind::AlterConfigs(r) => r.responses.iter().for_each(|c| f(c.error_code)),
        ResponseKind::CreatePartitions(r) => r.results.iter().for_each(|t| f(t.error_code)),
        ResponseKind::DeleteGroups(r) => r.results.iter().for_each(|g| f(g.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().for_each(|c| f(c.error_code))
        }
        ResponseKind::OffsetDelete(r) => {
            f(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| f(p.error_code));
        }
        ResponseKind::DescribeCluster(r) => f(r.error_code),
        // APIs rill does not answer: nothing to count. A new handler adds
        // its arm here (the table in docs/metrics.md says which count).
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use rill_protocol::kafka_protocol::messages::{MetadataResponse, ProduceResponse};

    fn codes(body: &ResponseKind) -> Vec<i16> {
        let mut codes = Vec::new();
        for_each_code(body, |c| codes.push(c));
        codes
    }

    #[test]
    fn every_partition_of_a_produce_answer_is_seen() {
        let body = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(vec![
                PartitionProduceResponse::default().with_error_code(3),
                PartitionProduceResponse::default(),
                PartitionProduceResponse::default().with_error_code(3),
            ]),
        ]));
        assert_eq!(codes(&body), [3, 0, 3]);
    }

    #[test]
    fn apis_without_codes_count_nothing() {
        let body = ResponseKind::Metadata(MetadataResponse::default());
        assert_eq!(codes(&body), [0]);
    }
}
