//! Every metadata command and every rejection, applied to an image without
//! Raft; and property tests of determinism and of snapshots.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rill_controller::state::{
    PARTITIONS_PER_TOPIC_MAX, PRODUCER_ID_BLOCK_SIZE, PRODUCER_ID_BLOCK_SIZE_MAX,
    REPLICATION_FACTOR_MAX,
};
use rill_controller::{
    apply, check, ApplyOutcome, ConfigResource, MetadataCommand, MetadataError, MetadataImage,
};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn register(node_id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        node_id,
        incarnation_id: Uuid::from_u128(node_id as u128),
        directory_id: Uuid::nil(),
        host: format!("broker-{node_id}"),
        port: 9092,
        rack: None,
    }
}

fn create(name: &str, topic_id: Uuid, partitions: i32, replication_factor: i16) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.to_string(),
        topic_id,
        partitions,
        replication_factor,
        configs: BTreeMap::new(),
        assignments: None,
    }
}

fn configs(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An image with brokers 1..=n registered and unfenced.
fn image_with_brokers(n: i32) -> MetadataImage {
    let mut image = MetadataImage::default();
    for node_id in 1..=n {
        apply(&mut image, &register(node_id)).unwrap();
        apply(
            &mut image,
            &MetadataCommand::UnfenceBroker {
                node_id,
                broker_epoch: 1,
            },
        )
        .unwrap();
    }
    image
}

/// Applies a command that must be rejected and checks that nothing changed.
fn reject(image: &mut MetadataImage, command: MetadataCommand) -> MetadataError {
    let before = image.clone();
    let error = apply(image, &command).unwrap_err();
    assert_eq!(*image, before, "a rejected command changed the image");
    assert_eq!(check(image, &command), Err(error.clone()));
    error
}

#[test]
fn register_broker_and_register_again() {
    let mut image = MetadataImage::default();
    assert_eq!(
        apply(&mut image, &register(1)).unwrap(),
        ApplyOutcome::BrokerRegistered {
            node_id: 1,
            broker_epoch: 1
        }
    );
    let again = MetadataCommand::RegisterBroker {
        node_id: 1,
        incarnation_id: Uuid::from_u128(99),
        directory_id: Uuid::nil(),
        host: "elsewhere".into(),
        port: 19092,
        rack: Some("r1".into()),
    };
    assert_eq!(
        apply(&mut image, &again).unwrap(),
        ApplyOutcome::BrokerRegistered {
            node_id: 1,
            broker_epoch: 2
        }
    );
    let broker = image.broker(1).unwrap();
    assert_eq!(
        (broker.host.as_str(), broker.port, broker.rack.as_deref()),
        ("elsewhere", 19092, Some("r1"))
    );
    assert_eq!(image.brokers().count(), 1);
}

#[test]
fn register_broker_rejections() {
    let mut image = MetadataImage::default();
    for command in [
        MetadataCommand::RegisterBroker {
            node_id: -1,
            incarnation_id: Uuid::nil(),
            directory_id: Uuid::nil(),
            host: "h".into(),
            port: 1,
            rack: None,
        },
        MetadataCommand::RegisterBroker {
            node_id: 1,
            incarnation_id: Uuid::nil(),
            directory_id: Uuid::nil(),
            host: "".into(),
            port: 1,
            rack: None,
        },
        MetadataCommand::RegisterBroker {
            node_id: 1,
            incarnation_id: Uuid::nil(),
            directory_id: Uuid::nil(),
            host: "h".into(),
            port: 0,
            rack: None,
        },
    ] {
        assert!(matches!(
            reject(&mut image, command),
            MetadataError::InvalidRequest(_)
        ));
    }
}

#[test]
fn create_topic_assigns_replicas_and_leaders() {
    let mut image = image_with_brokers(3);
    let command = MetadataCommand::CreateTopic {
        name: "orders".into(),
        topic_id: id(7),
        partitions: 6,
        replication_factor: 2,
        configs: configs(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]),
        assignments: None,
    };
    assert_eq!(
        apply(&mut image, &command).unwrap(),
        ApplyOutcome::TopicCreated {
            topic_id: id(7),
            partitions: 6
        }
    );
    image.assert_consistent();
    let topic = image.topic("orders").unwrap();
    assert_eq!(image.topic_by_id(&id(7)).unwrap(), topic);
    assert_eq!(topic.partitions.len(), 6);
    assert_eq!(
        topic.configs,
        configs(&[("retention.ms", "1000"), ("cleanup.policy", "compact")])
    );
    let mut leaders = BTreeMap::new();
    for partition in &topic.partitions {
        assert_eq!(partition.replicas.len(), 2);
        assert_ne!(partition.replicas[0], partition.replicas[1]);
        assert_eq!(partition.leader, partition.replicas[0]);
        // Every replica of a new (empty) partition is in sync.
        assert_eq!(partition.isr, partition.replicas);
        assert_eq!(partition.leader_epoch, 0);
        *leaders.entry(partition.leader).or_insert(0) += 1;
    }
    // Round-robin placement spreads leadership evenly.
    assert_eq!(leaders.values().collect::<Vec<_>>(), vec![&2, &2, &2]);
    assert!(topic.partition(5).is_some());
    assert!(topic.partition(6).is_none());
    assert!(topic.partition(-1).is_none());
    assert_eq!(
        image.topic_names().collect::<Vec<_>>(),
        vec![("orders", &id(7))]
    );
}

#[test]
fn create_topic_with_explicit_assignments() {
    let mut image = image_with_brokers(3);
    let command = MetadataCommand::CreateTopic {
        name: "placed".into(),
        topic_id: id(1),
        partitions: 2,
        replication_factor: 2,
        configs: BTreeMap::new(),
        assignments: Some(vec![vec![3, 1], vec![2, 3]]),
    };
    apply(&mut image, &command).unwrap();
    let topic = image.topic("placed").unwrap();
    assert_eq!(topic.partitions[0].replicas, vec![3, 1]);
    assert_eq!(topic.partitions[0].leader, 3);
    assert_eq!(topic.partitions[1].replicas, vec![2, 3]);
}

#[test]
fn create_topic_rejections() {
    let mut image = image_with_brokers(1);
    apply(&mut image, &create("taken", id(1), 1, 1)).unwrap();
    apply(&mut image, &create("a.b", id(2), 1, 1)).unwrap();

    assert_eq!(
        reject(&mut image, create("taken", id(3), 1, 1)),
        MetadataError::TopicAlreadyExists("taken".into())
    );
    for name in [
        "",
        ".",
        "..",
        "has space",
        "ümlaut",
        &"x".repeat(250),
        "a_b",
    ] {
        let error = reject(&mut image, create(name, id(3), 1, 1));
        assert!(
            matches!(error, MetadataError::InvalidTopic(_)),
            "{name:?}: {error}"
        );
    }
    // The longest valid name is fine.
    apply(&mut image, &create(&"x".repeat(249), id(4), 1, 1)).unwrap();
    // Topic ids: not nil, not reused.
    assert!(matches!(
        reject(&mut image, create("fresh", Uuid::nil(), 1, 1)),
        MetadataError::InvalidTopic(_)
    ));
    assert!(matches!(
        reject(&mut image, create("fresh", id(1), 1, 1)),
        MetadataError::InvalidTopic(_)
    ));

    for partitions in [0, -1, i32::MIN, PARTITIONS_PER_TOPIC_MAX + 1, i32::MAX] {
        let error = reject(&mut image, create("fresh", id(5), partitions, 1));
        assert!(
            matches!(error, MetadataError::InvalidPartitions(_)),
            "{partitions}"
        );
    }
    for replication_factor in [0, -1, 2, REPLICATION_FACTOR_MAX + 1, i16::MAX] {
        let error = reject(&mut image, create("fresh", id(5), 1, replication_factor));
        assert!(
            matches!(error, MetadataError::InvalidReplicationFactor(_)),
            "{replication_factor}"
        );
    }
    // No brokers at all: even replication factor 1 is too many.
    let mut empty = MetadataImage::default();
    assert!(matches!(
        reject(&mut empty, create("fresh", id(5), 1, 1)),
        MetadataError::InvalidReplicationFactor(_)
    ));

    let bad_configs = MetadataCommand::CreateTopic {
        name: "fresh".into(),
        topic_id: id(5),
        partitions: 1,
        replication_factor: 1,
        configs: configs(&[("retention.ms", "forever")]),
        assignments: None,
    };
    let error = reject(&mut image, bad_configs);
    assert!(matches!(error, MetadataError::InvalidConfig(_)));
    let unknown_config = MetadataCommand::CreateTopic {
        name: "fresh".into(),
        topic_id: id(5),
        partitions: 1,
        replication_factor: 1,
        configs: configs(&[("no.such.thing", "1")]),
        assignments: None,
    };
    assert!(matches!(
        reject(&mut image, unknown_config),
        MetadataError::InvalidConfig(_)
    ));
}

#[test]
fn create_topic_assignment_rejections() {
    let mut image = image_with_brokers(2);
    let with =
        |partitions, replication_factor, assignments: Vec<Vec<i32>>| MetadataCommand::CreateTopic {
            name: "placed".into(),
            topic_id: id(1),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
            assignments: Some(assignments),
        };
    for command in [
        with(2, 1, vec![vec![1]]),    // too few lists
        with(1, 2, vec![vec![1]]),    // list shorter than the factor
        with(1, 2, vec![vec![1, 1]]), // a replica twice
        with(1, 1, vec![vec![9]]),    // an unregistered broker
    ] {
        let error = reject(&mut image, command);
        assert!(
            matches!(error, MetadataError::InvalidReplicaAssignment(_)),
            "{error}"
        );
    }
}

#[test]
fn delete_topic() {
    let mut image = image_with_brokers(1);
    apply(&mut image, &create("doomed", id(1), 3, 1)).unwrap();
    apply(&mut image, &create("kept", id(2), 1, 1)).unwrap();
    assert_eq!(
        apply(
            &mut image,
            &MetadataCommand::DeleteTopic { topic_id: id(1) }
        )
        .unwrap(),
        ApplyOutcome::TopicDeleted {
            topic_id: id(1),
            name: "doomed".into()
        }
    );
    image.assert_consistent();
    assert!(image.topic("doomed").is_none());
    assert!(image.topic_by_id(&id(1)).is_none());
    assert_eq!(image.topic_count(), 1);
    // The name can be used again, with a new id.
    apply(&mut image, &create("doomed", id(3), 1, 1)).unwrap();
    assert_eq!(image.topic("doomed").unwrap().topic_id, id(3));
}

#[test]
fn delete_unknown_topic_is_rejected() {
    let mut image = image_with_brokers(1);
    let error = reject(&mut image, MetadataCommand::DeleteTopic { topic_id: id(9) });
    assert_eq!(error, MetadataError::UnknownTopicId(id(9)));
}

#[test]
fn create_partitions() {
    let mut image = image_with_brokers(2);
    apply(&mut image, &create("grow", id(1), 2, 2)).unwrap();
    let before = image.topic("grow").unwrap().partitions.clone();
    let command = MetadataCommand::CreatePartitions {
        topic_id: id(1),
        new_total: 5,
        assignments: None,
    };
    assert_eq!(
        apply(&mut image, &command).unwrap(),
        ApplyOutcome::PartitionsCreated {
            topic_id: id(1),
            total: 5
        }
    );
    image.assert_consistent();
    let topic = image.topic("grow").unwrap();
    assert_eq!(topic.partitions.len(), 5);
    assert_eq!(
        topic.partitions[..2],
        before[..],
        "existing partitions are untouched"
    );
    assert!(topic.partitions.iter().all(|p| p.replicas.len() == 2));

    let explicit = MetadataCommand::CreatePartitions {
        topic_id: id(1),
        new_total: 6,
        assignments: Some(vec![vec![2, 1]]),
    };
    apply(&mut image, &explicit).unwrap();
    assert_eq!(
        image.topic("grow").unwrap().partitions[5].replicas,
        vec![2, 1]
    );
}

#[test]
fn create_partitions_rejections() {
    let mut image = image_with_brokers(1);
    apply(&mut image, &create("grow", id(1), 3, 1)).unwrap();
    let grow = |topic_id, new_total| MetadataCommand::CreatePartitions {
        topic_id,
        new_total,
        assignments: None,
    };
    assert_eq!(
        reject(&mut image, grow(id(2), 4)),
        MetadataError::UnknownTopicId(id(2))
    );
    for new_total in [3, 2, 0, -1, PARTITIONS_PER_TOPIC_MAX + 1] {
        assert!(
            matches!(
                reject(&mut image, grow(id(1), new_total)),
                MetadataError::InvalidPartitions(_)
            ),
            "{new_total}"
        );
    }
    let wrong_count = MetadataCommand::CreatePartitions {
        topic_id: id(1),
        new_total: 5,
        assignments: Some(vec![vec![1]]),
    };
    assert!(matches!(
        reject(&mut image, wrong_count),
        MetadataError::InvalidReplicaAssignment(_)
    ));
}

#[test]
fn alter_topic_configs() {
    let mut image = image_with_brokers(1);
    apply(&mut image, &create("t", id(1), 1, 1)).unwrap();
    let alter = |set: &[(&str, &str)], delete: &[&str]| MetadataCommand::AlterConfigs {
        resource: ConfigResource::Topic("t".into()),
        set: configs(set),
        delete: delete.iter().map(|k| k.to_string()).collect(),
    };
    assert_eq!(
        apply(
            &mut image,
            &alter(&[("retention.ms", "5"), ("segment.bytes", "1024")], &[])
        )
        .unwrap(),
        ApplyOutcome::ConfigsAltered
    );
    assert_eq!(
        image.topic("t").unwrap().configs,
        configs(&[("retention.ms", "5"), ("segment.bytes", "1024")])
    );
    apply(
        &mut image,
        &alter(
            &[("retention.ms", "6")],
            &["segment.bytes", "cleanup.policy"],
        ),
    )
    .unwrap();
    assert_eq!(
        image.topic("t").unwrap().configs,
        configs(&[("retention.ms", "6")])
    );

    assert_eq!(
        reject(
            &mut image,
            MetadataCommand::AlterConfigs {
                resource: ConfigResource::Topic("nope".into()),
                set: configs(&[("retention.ms", "5")]),
                delete: BTreeSet::new(),
            }
        ),
        MetadataError::UnknownTopicOrPartition("nope".into())
    );
    assert!(matches!(
        reject(&mut image, alter(&[("retention.ms", "x")], &[])),
        MetadataError::InvalidConfig(_)
    ));
    assert!(matches!(
        reject(&mut image, alter(&[], &["bogus"])),
        MetadataError::InvalidConfig(_)
    ));
    assert!(matches!(
        reject(
            &mut image,
            alter(&[("retention.ms", "1")], &["retention.ms"])
        ),
        MetadataError::InvalidRequest(_)
    ));
}

#[test]
fn alter_broker_configs() {
    let mut image = image_with_brokers(1);
    let alter = |set: &[(&str, &str)], delete: &[&str]| MetadataCommand::AlterConfigs {
        resource: ConfigResource::Broker(1),
        set: configs(set),
        delete: delete.iter().map(|k| k.to_string()).collect(),
    };
    apply(&mut image, &alter(&[("log.retention.ms", "100")], &[])).unwrap();
    assert_eq!(
        image.broker_configs(1),
        Some(&configs(&[("log.retention.ms", "100")]))
    );
    apply(&mut image, &alter(&[], &["log.retention.ms"])).unwrap();
    assert_eq!(image.broker_configs(1), None);
    assert!(matches!(
        reject(&mut image, alter(&[("", "1")], &[])),
        MetadataError::InvalidConfig(_)
    ));
    assert!(matches!(
        reject(
            &mut image,
            MetadataCommand::AlterConfigs {
                resource: ConfigResource::Broker(-5),
                set: BTreeMap::new(),
                delete: BTreeSet::new(),
            }
        ),
        MetadataError::InvalidRequest(_)
    ));
}

#[test]
fn images_and_commands_round_trip_through_json() {
    let mut image = image_with_brokers(2);
    let command = MetadataCommand::CreateTopic {
        name: "t".into(),
        topic_id: id(99),
        partitions: 3,
        replication_factor: 2,
        configs: configs(&[("retention.ms", "5")]),
        assignments: None,
    };
    apply(&mut image, &command).unwrap();
    image.advance_to(7);
    let json = serde_json::to_string(&image).unwrap();
    let back: MetadataImage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, image);
    assert_eq!(back.version, 8);
    let json = serde_json::to_string(&command).unwrap();
    assert_eq!(
        serde_json::from_str::<MetadataCommand>(&json).unwrap(),
        command
    );
    // A stored image with an invalid topic name is refused, not trusted.
    let tampered = serde_json::to_string(&image)
        .unwrap()
        .replace("\"name\":\"t\"", "\"name\":\"..\"");
    assert!(serde_json::from_str::<MetadataImage>(&tampered).is_err());
}

fn allocate(node_id: i32, count: i32) -> MetadataCommand {
    MetadataCommand::AllocateProducerIds { node_id, count }
}

#[test]
fn producer_id_blocks_follow_each_other_across_brokers() {
    let mut image = image_with_brokers(2);
    assert_eq!(image.next_producer_id(), 0);
    assert_eq!(
        apply(&mut image, &allocate(1, PRODUCER_ID_BLOCK_SIZE)).unwrap(),
        ApplyOutcome::ProducerIdsAllocated {
            first: 0,
            count: PRODUCER_ID_BLOCK_SIZE
        }
    );
    assert_eq!(
        apply(&mut image, &allocate(2, PRODUCER_ID_BLOCK_SIZE)).unwrap(),
        ApplyOutcome::ProducerIdsAllocated {
            first: 1000,
            count: PRODUCER_ID_BLOCK_SIZE
        }
    );
    assert_eq!(
        apply(&mut image, &allocate(1, 1)).unwrap(),
        ApplyOutcome::ProducerIdsAllocated {
            first: 2000,
            count: 1
        }
    );
    assert_eq!(image.next_producer_id(), 2001);
    image.assert_consistent();
}

#[test]
fn producer_id_allocation_rejections() {
    let mut image = image_with_brokers(1);
    assert_eq!(
        reject(&mut image, allocate(7, PRODUCER_ID_BLOCK_SIZE)),
        MetadataError::BrokerIdNotRegistered(7)
    );
    for count in [0, -1, PRODUCER_ID_BLOCK_SIZE_MAX + 1] {
        assert!(matches!(
            reject(&mut image, allocate(1, count)),
            MetadataError::InvalidRequest(_)
        ));
    }
    // Up to the last id an i64 holds, then no further.
    let mut json = serde_json::to_value(&image).unwrap();
    json["next_producer_id"] = serde_json::json!(i64::MAX - 10);
    let mut image: MetadataImage = serde_json::from_value(json).unwrap();
    assert_eq!(
        apply(&mut image, &allocate(1, 10)).unwrap(),
        ApplyOutcome::ProducerIdsAllocated {
            first: i64::MAX - 10,
            count: 10
        }
    );
    let error = reject(&mut image, allocate(1, 1));
    assert!(matches!(error, MetadataError::UnknownServerError(_)));
}

#[test]
fn snapshots_from_before_producer_ids_load_with_none_handed_out() {
    let mut image = image_with_brokers(1);
    let mut json = serde_json::to_value(&image).unwrap();
    json.as_object_mut().unwrap().remove("next_producer_id");
    let old: MetadataImage = serde_json::from_value(json).unwrap();
    assert_eq!(old, image);
    assert_eq!(old.next_producer_id(), 0);
    apply(&mut image, &allocate(1, 5)).unwrap();
    let back: MetadataImage = serde_json::from_slice(&serde_json::to_vec(&image).unwrap()).unwrap();
    assert_eq!(back.next_producer_id(), 5);
}

// ---- property tests ----

fn arb_command() -> impl Strategy<Value = MetadataCommand> {
    // Small domains, so that commands hit existing topics and collide.
    let name =
        prop::sample::select(vec!["a", "b", "c", "a.b", "a_b", "", ".."]).prop_map(String::from);
    let topic_id = (0u128..6).prop_map(Uuid::from_u128);
    let config = prop::sample::select(vec![
        ("retention.ms", "100"),
        ("retention.ms", "-7"),
        ("segment.bytes", "1048576"),
        ("cleanup.policy", "compact"),
        ("bogus", "1"),
    ]);
    let configs = prop::collection::btree_map(
        config.prop_map(|(k, v)| (k.to_string(), v.to_string())),
        Just(()),
        0..3,
    )
    .prop_map(|m| m.into_keys().collect::<BTreeMap<String, String>>());
    let assignments = prop::option::weighted(
        0.2,
        prop::collection::vec(prop::collection::vec(0i32..5, 1..3), 1..4),
    );
    prop_oneof![
        (0i32..5, prop::option::of(Just("r".to_string()))).prop_map(|(node_id, rack)| {
            MetadataCommand::RegisterBroker {
                node_id,
                incarnation_id: Uuid::nil(),
                directory_id: Uuid::nil(),
                host: format!("h{node_id}"),
                port: 9092,
                rack,
            }
        }),
        (
            name.clone(),
            topic_id.clone(),
            -1i32..5,
            -1i16..4,
            configs.clone(),
            assignments.clone()
        )
            .prop_map(
                |(name, topic_id, partitions, replication_factor, configs, assignments)| {
                    MetadataCommand::CreateTopic {
                        name,
                        topic_id,
                        partitions,
                        replication_factor,
                        configs,
                        assignments,
                    }
                }
            ),
        topic_id
            .clone()
            .prop_map(|topic_id| MetadataCommand::DeleteTopic { topic_id }),
        (
            topic_id.clone(),
            0i32..3,
            0i32..5,
            0i32..3,
            0i32..4,
            prop::collection::vec(0i32..5, 1..4)
        )
            .prop_map(
                |(topic_id, partition, leader, leader_epoch, partition_epoch, isr)| {
                    MetadataCommand::AlterPartition {
                        topic_id,
                        partition,
                        leader,
                        leader_epoch,
                        partition_epoch,
                        isr,
                    }
                }
            ),
        prop::collection::vec(
            (
                name.clone(),
                0i32..3,
                prop::option::of(prop::collection::vec(0i32..5, 1..4))
            ),
            1..3
        )
        .prop_map(|reassignments| MetadataCommand::AlterPartitionReassignments { reassignments }),
        (topic_id, 0i32..8, assignments).prop_map(|(topic_id, new_total, assignments)| {
            MetadataCommand::CreatePartitions {
                topic_id,
                new_total,
                assignments,
            }
        }),
        (
            name,
            configs,
            prop::collection::btree_set(
                prop::sample::select(vec!["retention.ms".to_string(), "bogus".to_string()]),
                0..2
            )
        )
            .prop_map(|(name, set, delete)| MetadataCommand::AlterConfigs {
                resource: ConfigResource::Topic(name),
                set,
                delete,
            }),
        (
            0i32..5,
            prop::sample::select(vec![0, 1, PRODUCER_ID_BLOCK_SIZE])
        )
            .prop_map(|(node_id, count)| MetadataCommand::AllocateProducerIds { node_id, count }),
        // Broker lifecycle: elections must keep every leader in the ISR and
        // unfenced (checked by `assert_consistent` after every command).
        (0i32..5, 1i64..4, 0u8..3).prop_map(|(node_id, broker_epoch, kind)| match kind {
            0 => MetadataCommand::FenceBroker {
                node_id,
                broker_epoch,
            },
            1 => MetadataCommand::UnfenceBroker {
                node_id,
                broker_epoch,
            },
            _ => MetadataCommand::ControlledShutdown {
                node_id,
                broker_epoch,
            },
        }),
    ]
}

/// Applies commands the way the Raft state machine does: each at its log
/// index, keeping every outcome.
fn run(
    image: &mut MetadataImage,
    first_index: u64,
    commands: &[MetadataCommand],
) -> Vec<Result<ApplyOutcome, MetadataError>> {
    commands
        .iter()
        .enumerate()
        .map(|(i, command)| {
            image.advance_to(first_index + i as u64);
            let outcome = apply(image, command);
            image.assert_consistent();
            outcome
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The same log gives the same image and the same outcomes, every time.
    #[test]
    fn applying_a_log_is_deterministic(commands in prop::collection::vec(arb_command(), 0..60)) {
        let mut first = MetadataImage::default();
        let mut second = MetadataImage::default();
        let first_outcomes = run(&mut first, 0, &commands);
        let second_outcomes = run(&mut second, 0, &commands);
        prop_assert_eq!(&first_outcomes, &second_outcomes);
        prop_assert_eq!(&first, &second);
        // Equal down to the bytes that a snapshot would hold.
        prop_assert_eq!(serde_json::to_vec(&first).unwrap(), serde_json::to_vec(&second).unwrap());
    }

    /// Snapshot at any point, restore, continue: the same as never stopping.
    #[test]
    fn snapshot_restore_continue_equals_continuing(
        commands in prop::collection::vec(arb_command(), 0..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(commands.len() + 1);
        let mut direct = MetadataImage::default();
        let direct_outcomes = run(&mut direct, 0, &commands);

        let mut before = MetadataImage::default();
        let mut outcomes = run(&mut before, 0, &commands[..cut]);
        let snapshot = serde_json::to_vec(&before).unwrap();
        let mut restored: MetadataImage = serde_json::from_slice(&snapshot).unwrap();
        prop_assert_eq!(&restored, &before);
        outcomes.extend(run(&mut restored, cut as u64, &commands[cut..]));

        prop_assert_eq!(&outcomes, &direct_outcomes);
        prop_assert_eq!(&restored, &direct);
    }
}

/// Fencing the leader moves leadership to the next in-sync, unfenced
/// replica with a higher epoch. Replicas that leave an ISR below
/// `min.insync.replicas` become eligible leader replicas (KIP-966): when no
/// ISR member can lead, one of them does, cleanly; an ISR back at the
/// minimum empties the ELR. With neither, the partition has no leader until
/// an in-sync replica returns, unless unclean election is allowed.
#[test]
fn fencing_elects_from_the_isr_then_the_elr() {
    let mut image = image_with_brokers(3);
    let topic_id = Uuid::from_u128(7);
    apply(
        &mut image,
        &MetadataCommand::CreateTopic {
            name: "t".into(),
            topic_id,
            partitions: 1,
            replication_factor: 3,
            configs: configs(&[("min.insync.replicas", "2")]),
            assignments: Some(vec![vec![1, 2, 3]]),
        },
    )
    .unwrap();
    let partition = |image: &MetadataImage| image.topic("t").unwrap().partitions[0].clone();
    assert_eq!(partition(&image).isr, vec![1, 2, 3]);
    let fence = |image: &mut MetadataImage, node_id| {
        apply(
            image,
            &MetadataCommand::FenceBroker {
                node_id,
                broker_epoch: 1,
            },
        )
        .unwrap();
        image.assert_consistent();
        partition(image)
    };

    // The leader goes: the next in-sync replica leads; at the minimum, no ELR.
    let p = fence(&mut image, 1);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone(), p.leader_epoch),
        (2, vec![2, 3], vec![], 1)
    );
    // Below the minimum: the replica that left is eligible.
    let p = fence(&mut image, 3);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone()),
        (2, vec![2], vec![3])
    );
    // The last in-sync replica goes: no leader, the ISR keeps it.
    let p = fence(&mut image, 2);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone(), p.leader_epoch),
        (-1, vec![2], vec![3], 2)
    );

    // A stale epoch changes nothing.
    let before = image.clone();
    assert!(matches!(
        apply(
            &mut image,
            &MetadataCommand::UnfenceBroker {
                node_id: 3,
                broker_epoch: 9
            }
        ),
        Err(MetadataError::StaleBrokerEpoch { .. })
    ));
    assert_eq!(image, before);

    // Broker 1 (out of both) returns: still no leader. Broker 3 (eligible)
    // returns: it leads cleanly, and the ISR member it replaced is eligible.
    apply(
        &mut image,
        &MetadataCommand::UnfenceBroker {
            node_id: 1,
            broker_epoch: 1,
        },
    )
    .unwrap();
    assert_eq!(partition(&image).leader, -1);
    apply(
        &mut image,
        &MetadataCommand::UnfenceBroker {
            node_id: 3,
            broker_epoch: 1,
        },
    )
    .unwrap();
    let p = partition(&image);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone(), p.leader_epoch),
        (3, vec![3], vec![2], 3)
    );
    assert!(p.partition_epoch > before.topic("t").unwrap().partitions[0].partition_epoch);
    image.assert_consistent();

    // The leader takes broker 1 back into the ISR: at the minimum again,
    // the ELR empties.
    apply(
        &mut image,
        &MetadataCommand::AlterPartition {
            topic_id,
            partition: 0,
            leader: 3,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![1, 3],
        },
    )
    .unwrap();
    let p = partition(&image);
    assert_eq!((p.isr.clone(), p.elr.clone()), (vec![1, 3], vec![]));
    // A fenced replica may not join; a stale partition epoch is refused.
    assert!(matches!(
        apply(
            &mut image,
            &MetadataCommand::AlterPartition {
                topic_id,
                partition: 0,
                leader: 3,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![1, 2, 3],
            },
        ),
        Err(MetadataError::IneligibleReplica(_))
    ));
    assert!(matches!(
        apply(
            &mut image,
            &MetadataCommand::AlterPartition {
                topic_id,
                partition: 0,
                leader: 3,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch - 1,
                isr: vec![3],
            },
        ),
        Err(MetadataError::InvalidUpdateVersion(_))
    ));

    // With unclean election allowed, an out-of-sync replica takes over and
    // becomes the whole ISR.
    apply(
        &mut image,
        &MetadataCommand::AlterConfigs {
            resource: ConfigResource::Topic("t".into()),
            set: configs(&[("unclean.leader.election.enable", "true")]),
            delete: Default::default(),
        },
    )
    .unwrap();
    fence(&mut image, 1);
    let p = fence(&mut image, 3);
    assert_eq!((p.leader, p.isr.clone()), (-1, vec![3]));
    apply(&mut image, &register(2)).unwrap();
    apply(
        &mut image,
        &MetadataCommand::UnfenceBroker {
            node_id: 2,
            broker_epoch: 2,
        },
    )
    .unwrap();
    let p = partition(&image);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone()),
        (2, vec![2], vec![]),
        "unclean"
    );
    image.assert_consistent();
}

/// Replicas are placed on unfenced brokers only, and the replication
/// factor is checked against them.
#[test]
fn placement_skips_fenced_brokers() {
    let mut image = image_with_brokers(3);
    apply(
        &mut image,
        &MetadataCommand::FenceBroker {
            node_id: 2,
            broker_epoch: 1,
        },
    )
    .unwrap();
    assert!(matches!(
        reject(&mut image, create("t3", Uuid::from_u128(1), 1, 3)),
        MetadataError::InvalidReplicationFactor(_)
    ));
    apply(&mut image, &create("t2", Uuid::from_u128(2), 8, 2)).unwrap();
    let topic = image.topic("t2").unwrap();
    assert!(topic.partitions.iter().all(|p| !p.replicas.contains(&2)));
}

/// With racks, replicas of a partition go to different racks while there
/// are racks to spare, and leaders still spread over every broker.
#[test]
fn placement_is_rack_aware() {
    let mut image = MetadataImage::default();
    for (node_id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")] {
        apply(
            &mut image,
            &MetadataCommand::RegisterBroker {
                node_id,
                incarnation_id: Uuid::nil(),
                directory_id: Uuid::nil(),
                host: format!("h{node_id}"),
                port: 9092,
                rack: Some(rack.to_string()),
            },
        )
        .unwrap();
        apply(
            &mut image,
            &MetadataCommand::UnfenceBroker {
                node_id,
                broker_epoch: 1,
            },
        )
        .unwrap();
    }
    let rack_of = |id: i32| image.broker(id).unwrap().rack.clone().unwrap();
    for (rf, racks_each) in [(2, 2), (3, 3), (4, 3), (5, 3)] {
        let name = format!("t{rf}");
        let mut next = image.clone();
        apply(
            &mut next,
            &create(&name, Uuid::from_u128(rf as u128 + 100), 10, rf),
        )
        .unwrap();
        let topic = next.topic(&name).unwrap();
        let mut leaders = BTreeMap::new();
        for partition in &topic.partitions {
            let racks: BTreeSet<String> = partition.replicas.iter().map(|r| rack_of(*r)).collect();
            assert_eq!(racks.len(), racks_each, "rf {rf}: {:?}", partition.replicas);
            let distinct: BTreeSet<_> = partition.replicas.iter().collect();
            assert_eq!(distinct.len(), rf as usize);
            *leaders.entry(partition.leader).or_insert(0) += 1;
        }
        assert_eq!(
            leaders.len(),
            5,
            "rf {rf}: every broker leads some partition"
        );
    }
}

/// A reassignment adds the target replicas, completes once they are all in
/// the ISR (removing the others and moving the leader off a removed
/// replica), and a cancellation puts the original replicas back.
#[test]
fn reassignments_complete_when_the_targets_are_in_sync_and_cancel() {
    let mut image = image_with_brokers(4);
    let topic_id = Uuid::from_u128(9);
    apply(
        &mut image,
        &MetadataCommand::CreateTopic {
            name: "r".into(),
            topic_id,
            partitions: 2,
            replication_factor: 1,
            configs: BTreeMap::new(),
            assignments: Some(vec![vec![1], vec![2]]),
        },
    )
    .unwrap();
    let partition =
        |image: &MetadataImage, i: usize| image.topic("r").unwrap().partitions[i].clone();
    let reassign = |image: &mut MetadataImage, list: Vec<(String, i32, Option<Vec<i32>>)>| {
        let outcome = apply(
            image,
            &MetadataCommand::AlterPartitionReassignments {
                reassignments: list,
            },
        )
        .unwrap();
        image.assert_consistent();
        match outcome {
            ApplyOutcome::ReassignmentsAltered { results } => results,
            other => panic!("{other:?}"),
        }
    };
    let alter = |image: &mut MetadataImage, index: i32, isr: Vec<i32>| {
        let p = image.topic("r").unwrap().partitions[index as usize].clone();
        apply(
            image,
            &MetadataCommand::AlterPartition {
                topic_id,
                partition: index,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            },
        )
        .unwrap();
        image.assert_consistent();
    };

    // RF 1 -> 3 on partition 0: the new replicas are added, not yet in sync.
    let results = reassign(&mut image, vec![("r".into(), 0, Some(vec![1, 3, 4]))]);
    assert_eq!(results, vec![("r".into(), 0, None)]);
    let p = partition(&image, 0);
    assert_eq!(
        (p.replicas.clone(), p.adding.clone(), p.removing.clone()),
        (vec![1, 3, 4], vec![3, 4], vec![])
    );
    assert_eq!(p.isr, vec![1]);
    // One catches up: still going. Both: done.
    alter(&mut image, 0, vec![1, 3]);
    assert!(partition(&image, 0).is_reassigning());
    alter(&mut image, 0, vec![1, 3, 4]);
    let p = partition(&image, 0);
    assert!(!p.is_reassigning());
    assert_eq!(
        (p.replicas.clone(), p.isr.clone(), p.leader),
        (vec![1, 3, 4], vec![1, 3, 4], 1)
    );

    // Move partition 0 off its leader: once 2 is in sync, 1 goes and 3 leads.
    reassign(&mut image, vec![("r".into(), 0, Some(vec![3, 4, 2]))]);
    let p = partition(&image, 0);
    assert_eq!((p.adding.clone(), p.removing.clone()), (vec![2], vec![1]));
    let epoch = p.leader_epoch;
    alter(&mut image, 0, vec![1, 2, 3, 4]);
    let p = partition(&image, 0);
    assert_eq!((p.replicas.clone(), p.leader), (vec![3, 4, 2], 3));
    assert!(!p.isr.contains(&1) && p.leader_epoch > epoch);

    // Cancel: partition 1's move to 4 goes back to [2]; nothing to cancel
    // on partition 0; unknown partitions and bad targets are named.
    reassign(&mut image, vec![("r".into(), 1, Some(vec![4]))]);
    assert!(partition(&image, 1).is_reassigning());
    let results = reassign(
        &mut image,
        vec![
            ("r".into(), 1, None),
            ("r".into(), 0, None),
            ("r".into(), 7, Some(vec![1])),
            ("r".into(), 0, Some(vec![1, 1])),
            ("r".into(), 0, Some(vec![9])),
        ],
    );
    assert!(results[0].2.is_none(), "{results:?}");
    assert!(matches!(
        results[1].2,
        Some(MetadataError::NoReassignmentInProgress(_))
    ));
    assert!(matches!(
        results[2].2,
        Some(MetadataError::UnknownTopicOrPartition(_))
    ));
    assert!(matches!(
        results[3].2,
        Some(MetadataError::InvalidReplicaAssignment(_))
    ));
    assert!(matches!(
        results[4].2,
        Some(MetadataError::InvalidReplicaAssignment(_))
    ));
    let p = partition(&image, 1);
    assert_eq!(
        (
            p.replicas.clone(),
            p.isr.clone(),
            p.leader,
            p.is_reassigning()
        ),
        (vec![2], vec![2], 2, false)
    );
}

/// Automatic preferred-leader election picks, for each unfenced broker
/// leading more than 10 % too few of the partitions it is preferred for,
/// those it is in sync for.
#[test]
fn imbalanced_partitions_go_back_to_in_sync_preferred_leaders() {
    let mut image = image_with_brokers(3);
    apply(
        &mut image,
        &MetadataCommand::CreateTopic {
            name: "b".into(),
            topic_id: Uuid::from_u128(11),
            partitions: 3,
            replication_factor: 3,
            configs: BTreeMap::new(),
            assignments: Some(vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]),
        },
    )
    .unwrap();
    assert!(rill_controller::state::imbalanced_partitions(&image, 10).is_empty());
    // Broker 1 goes: its partition moves to 2; back, it is not yet in sync.
    apply(
        &mut image,
        &MetadataCommand::FenceBroker {
            node_id: 1,
            broker_epoch: 1,
        },
    )
    .unwrap();
    apply(
        &mut image,
        &MetadataCommand::UnfenceBroker {
            node_id: 1,
            broker_epoch: 1,
        },
    )
    .unwrap();
    let p = image.topic("b").unwrap().partitions[0].clone();
    assert_eq!(p.leader, 2);
    assert!(
        rill_controller::state::imbalanced_partitions(&image, 10).is_empty(),
        "not in sync"
    );
    // In sync again: it is owed its partition.
    apply(
        &mut image,
        &MetadataCommand::AlterPartition {
            topic_id: Uuid::from_u128(11),
            partition: 0,
            leader: 2,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![1, 2, 3],
        },
    )
    .unwrap();
    assert_eq!(
        rill_controller::state::imbalanced_partitions(&image, 10),
        vec![("b".to_string(), 0)]
    );
    // One of its ten partitions elsewhere is within 10 %: nothing to move.
    assert!(rill_controller::state::imbalanced_partitions(&image, 100).is_empty());
}
