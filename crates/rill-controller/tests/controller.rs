//! The controller end to end: openraft with the file-backed log and state
//! machine, restarted from the same directory.

use std::collections::BTreeMap;
use std::sync::Arc;

use rill_controller::{
    ApplyOutcome, ConfigResource, Controller, ControllerError, ControllerOptions, MetadataCommand,
    MetadataError,
};
use uuid::Uuid;

fn register(node_id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        node_id,
        incarnation_id: Uuid::from_u128(node_id as u128),
        directory_id: Uuid::nil(),
        host: "127.0.0.1".into(),
        port: 9092,
        rack: None,
    }
}

/// A registered broker starts fenced; this is what its first heartbeat
/// after catching up does.
fn unfence(node_id: i32, broker_epoch: i64) -> MetadataCommand {
    MetadataCommand::UnfenceBroker {
        node_id,
        broker_epoch,
    }
}

/// Registers broker `node_id` and unfences it, so that it takes replicas.
async fn register_unfenced(controller: &Controller, node_id: i32) -> anyhow::Result<()> {
    let ApplyOutcome::BrokerRegistered { broker_epoch, .. } =
        controller.submit(register(node_id)).await?
    else {
        anyhow::bail!("registration did not register");
    };
    controller.submit(unfence(node_id, broker_epoch)).await?;
    Ok(())
}

fn create(name: &str, topic_id: u128, partitions: i32) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.into(),
        topic_id: Uuid::from_u128(topic_id),
        partitions,
        replication_factor: 1,
        configs: BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]),
        assignments: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    assert_eq!(controller.image().topic_count(), 0);
    register_unfenced(&controller, 1).await?;
    let outcome = controller.submit(create("orders", 1, 3)).await?;
    assert_eq!(
        outcome,
        ApplyOutcome::TopicCreated {
            topic_id: Uuid::from_u128(1),
            partitions: 3
        }
    );
    controller.submit(create("payments", 2, 1)).await?;
    controller
        .submit(MetadataCommand::DeleteTopic {
            topic_id: Uuid::from_u128(2),
        })
        .await?;
    controller
        .submit(MetadataCommand::CreatePartitions {
            topic_id: Uuid::from_u128(1),
            new_total: 4,
            assignments: None,
        })
        .await?;
    let before = controller.image();
    assert_eq!(before.topic("orders").unwrap().partitions.len(), 4);
    assert!(before.topic("payments").is_none());
    controller.shutdown().await?;
    drop(controller);

    let controller = Controller::open(dir.path(), 1).await?;
    let after = controller.image();
    // The version is at least as far as before (a restarted leader may
    // append a blank entry of a new term) and everything else is the same.
    assert!(after.version >= before.version);
    assert_eq!(after.topic("orders"), before.topic("orders"));
    assert_eq!(after.topic("payments"), None);
    assert_eq!(after.broker(1), before.broker(1));
    // And it keeps working.
    controller.submit(create("later", 3, 1)).await?;
    assert!(controller.image().topic("later").is_some());
    controller.shutdown().await?;
    Ok(())
}

/// Producer ids are never handed out twice, whether the controller restarts
/// from its log alone or from a snapshot plus the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_id_blocks_are_unique_across_restarts() -> anyhow::Result<()> {
    let allocate = MetadataCommand::AllocateProducerIds {
        node_id: 1,
        count: 1000,
    };
    let dir = tempfile::tempdir()?;
    let mut firsts = Vec::new();
    for round in 0..3 {
        let controller = Controller::open(dir.path(), 1).await?;
        if round == 0 {
            register_unfenced(&controller, 1).await?;
        }
        for _ in 0..2 {
            match controller.submit(allocate.clone()).await? {
                ApplyOutcome::ProducerIdsAllocated { first, count } => {
                    assert_eq!(count, 1000);
                    firsts.push(first);
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        if round == 1 {
            controller.snapshot().await?;
        }
        controller.shutdown().await?;
    }
    assert_eq!(firsts, vec![0, 1000, 2000, 3000, 4000, 5000]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_commands_change_nothing_and_say_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    // No broker is registered yet: replication factor 1 is too many.
    let error = controller.submit(create("early", 1, 1)).await.unwrap_err();
    assert!(matches!(
        error,
        ControllerError::Rejected(MetadataError::InvalidReplicationFactor(_))
    ));
    register_unfenced(&controller, 1).await?;
    controller.submit(create("t", 1, 1)).await?;
    let error = controller.submit(create("t", 2, 1)).await.unwrap_err();
    assert!(matches!(
        error,
        ControllerError::Rejected(MetadataError::TopicAlreadyExists(_))
    ));
    let error = controller
        .submit(MetadataCommand::AlterConfigs {
            resource: ConfigResource::Topic("t".into()),
            set: BTreeMap::from([("segment.bytes".to_string(), "1".to_string())]),
            delete: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        ControllerError::Rejected(MetadataError::InvalidConfig(_))
    ));
    assert_eq!(controller.image().topic_count(), 1);
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    register_unfenced(&controller, 1).await?;
    for i in 0..20 {
        controller
            .submit(create(&format!("topic-{i}"), i + 1, 2))
            .await?;
    }
    controller.snapshot().await?;
    assert!(dir.path().join("snapshot.json").exists());
    // Some more after the snapshot, which only the log has.
    controller.submit(create("after-snapshot", 100, 1)).await?;
    let before = controller.image();
    controller.shutdown().await?;
    drop(controller);

    let controller = Controller::open(dir.path(), 1).await?;
    let after = controller.image();
    assert_eq!(after.topic_count(), 21);
    for (name, _) in before.topic_names() {
        assert_eq!(after.topic(name), before.topic(name), "{name}");
    }
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_snapshots_purge_the_log_and_restart_from_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ControllerOptions {
        snapshot_logs_since_last: 10,
        snapshot_logs_to_keep: 2,
        ..ControllerOptions::default()
    };
    let controller = Controller::open_with(dir.path(), 1, options.clone(), None).await?;
    register_unfenced(&controller, 1).await?;
    for i in 0..40 {
        controller
            .submit(create(&format!("t{i}"), i + 1, 1))
            .await?;
    }
    let before = controller.image();
    controller.shutdown().await?;
    drop(controller);
    let entries = std::fs::read_dir(dir.path().join("log"))?.count();
    assert!(
        entries < 30,
        "{entries} log files left; the log was not purged"
    );
    assert!(dir.path().join("purged.json").exists());

    let controller = Controller::open_with(dir.path(), 1, options, None).await?;
    assert_eq!(controller.image().topic_count(), 40);
    for (name, _) in before.topic_names() {
        assert_eq!(controller.image().topic(name), before.topic(name));
    }
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_all_apply_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Arc::new(Controller::open(dir.path(), 1).await?);
    register_unfenced(&controller, 1).await?;
    let mut tasks = Vec::new();
    for i in 0..50u128 {
        let controller = controller.clone();
        tasks.push(tokio::spawn(async move {
            controller.submit(create(&format!("c{i}"), i + 1, 1)).await
        }));
    }
    // The same name from many proposers: exactly one wins.
    for i in 0..10u128 {
        let controller = controller.clone();
        tasks.push(tokio::spawn(async move {
            controller.submit(create("contested", 1000 + i, 1)).await
        }));
    }
    let mut created = 0;
    let mut already_exists = 0;
    for task in tasks {
        match task.await? {
            Ok(ApplyOutcome::TopicCreated { .. }) => created += 1,
            Err(ControllerError::Rejected(MetadataError::TopicAlreadyExists(_))) => {
                already_exists += 1
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((created, already_exists), (51, 9));
    assert_eq!(controller.image().topic_count(), 51);
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_committed_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    let mut images = controller.subscribe();
    images.borrow_and_update();
    register_unfenced(&controller, 1).await?;
    images.changed().await?;
    assert!(images.borrow_and_update().broker(1).is_some());
    controller.submit(create("watched", 1, 1)).await?;
    images.changed().await?;
    let image = images.borrow_and_update().clone();
    assert!(image.topic("watched").is_some());
    assert_eq!(image.version, controller.image().version);
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = Controller::open(dir.path(), -1).await.unwrap_err();
    assert!(matches!(error, ControllerError::InvalidNodeId(-1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_cuts_what_an_interrupted_append_left() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    register_unfenced(&controller, 1).await?;
    controller.submit(create("kept", 1, 2)).await?;
    let before = controller.image();
    controller.shutdown().await?;
    drop(controller);

    // What a crash in the middle of an append can leave behind: a
    // temporary file, a torn entry after the last one, and an entry after a
    // gap. None of them was reported flushed.
    let log = dir.path().join("log");
    let mut indexes: Vec<u64> = std::fs::read_dir(&log)?
        .map(|e| {
            e.unwrap().file_name().to_string_lossy()[..20]
                .parse()
                .unwrap()
        })
        .collect();
    indexes.sort_unstable();
    let last = *indexes.last().unwrap();
    let last_bytes = std::fs::read(log.join(format!("{last:020}.json")))?;
    std::fs::write(
        log.join(format!("{:020}.json.tmp", last + 1)),
        b"{\"log_id\"",
    )?;
    std::fs::write(
        log.join(format!("{:020}.json", last + 1)),
        &last_bytes[..last_bytes.len() / 2],
    )?;
    std::fs::write(log.join(format!("{:020}.json", last + 3)), &last_bytes)?;

    let controller = Controller::open(dir.path(), 1).await?;
    assert_eq!(controller.image().topic("kept"), before.topic("kept"));
    controller.submit(create("more", 2, 1)).await?;
    assert_eq!(controller.image().topic_count(), 2);
    controller.shutdown().await?;
    drop(controller);
    let controller = Controller::open(dir.path(), 1).await?;
    assert_eq!(controller.image().topic_count(), 2);
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_id_cannot_open_the_data_dir() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    controller.shutdown().await?;
    drop(controller);
    let error = Controller::open(dir.path(), 2).await.unwrap_err();
    assert!(
        matches!(error, ControllerError::NotAVoter { node_id: 2, .. }),
        "{error}"
    );
    // The rightful node still can.
    let controller = Controller::open(dir.path(), 1).await?;
    controller.shutdown().await?;
    Ok(())
}

/// The image the controller publishes is what applying the same commands
/// directly gives, across a snapshot and restarts: the state is a function
/// of the commands alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_the_pure_replay_of_the_commands() -> anyhow::Result<()> {
    let commands = vec![
        create("too-early", 1, 1), // rejected: no brokers
        register(1),
        unfence(1, 1),
        register(2),
        unfence(2, 1),
        create("a", 2, 3),
        create("a", 3, 1), // rejected: exists
        create("b", 4, 2),
        MetadataCommand::CreatePartitions {
            topic_id: Uuid::from_u128(2),
            new_total: 5,
            assignments: None,
        },
        MetadataCommand::AlterConfigs {
            resource: ConfigResource::Topic("b".into()),
            set: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
            delete: ["retention.ms".to_string()].into(),
        },
        MetadataCommand::DeleteTopic {
            topic_id: Uuid::from_u128(4),
        },
        MetadataCommand::DeleteTopic {
            topic_id: Uuid::from_u128(4),
        }, // rejected: gone
        register(1),
        unfence(1, 2),
        create("b", 5, 4),
    ];
    let mut expected = rill_controller::MetadataImage::default();
    let expected_outcomes: Vec<_> = commands
        .iter()
        .map(|c| rill_controller::apply(&mut expected, c))
        .collect();

    let dir = tempfile::tempdir()?;
    let mut outcomes = Vec::new();
    for (round, chunk) in commands.chunks(4).enumerate() {
        let controller = Controller::open(dir.path(), 1).await?;
        for command in chunk {
            outcomes.push(match controller.submit(command.clone()).await {
                Ok(outcome) => Ok(outcome),
                Err(ControllerError::Rejected(e)) => Err(e),
                Err(e) => return Err(e.into()),
            });
        }
        if round == 1 {
            controller.snapshot().await?;
        }
        controller.shutdown().await?;
    }
    assert_eq!(outcomes, expected_outcomes);

    let controller = Controller::open(dir.path(), 1).await?;
    let image = controller.image();
    assert!(image.topics().eq(expected.topics()));
    assert!(image.topic_names().eq(expected.topic_names()));
    // A registration records the log position it was applied at (the
    // broker must catch up to it before it is unfenced); Raft's own entries
    // (blank entries of new terms, the membership) move that position,
    // which the pure replay does not have. Everything else is equal.
    let without_position = |b: &rill_controller::BrokerRegistration| {
        let mut b = b.clone();
        b.registered_version = 0;
        b
    };
    assert!(image
        .brokers()
        .map(without_position)
        .eq(expected.brokers().map(without_position)));
    controller.shutdown().await?;
    Ok(())
}

/// A 4 MiB tmpfs on a temporary dir, unmounted when dropped; `None` (and a
/// "skipped" line) when the test cannot mount one (it needs root).
struct SmallFilesystem(Option<tempfile::TempDir>);

impl SmallFilesystem {
    fn mount() -> Option<SmallFilesystem> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            println!("skipped: needs root to mount a tmpfs");
            return None;
        }
        Some(SmallFilesystem(Some(dir)))
    }

    fn path(&self) -> &std::path::Path {
        self.0.as_ref().expect("mounted").path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join(name)).expect("create a filler");
        let chunk = vec![0xaau8; 4096];
        while file.write(&chunk).is_ok_and(|n| n > 0) {}
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let ok = std::process::Command::new("umount")
                .arg(dir.path())
                .status()
                .is_ok_and(|status| status.success());
            if !ok {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(dir.path())
                    .status();
            }
        }
    }
}

/// openraft stops for good after a failed log write; on a full disk the
/// controller must refuse changes before that, open again, and take
/// changes once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_and_the_controller_goes_on_once_space_is_freed(
) -> anyhow::Result<()> {
    let Some(fs) = SmallFilesystem::mount() else {
        return Ok(());
    };
    let dir = fs.path().join("controller");
    let controller = Controller::open(&dir, 1).await?;
    register_unfenced(&controller, 1).await?;
    fs.fill("filler");

    let refused = controller.submit(create("orders", 1, 1)).await;
    assert!(
        matches!(refused, Err(ControllerError::NoSpace { .. })),
        "{refused:?}"
    );
    assert_eq!(controller.image().topic_count(), 0);
    controller.shutdown().await?;

    // It opens again on the full disk, and still refuses.
    let controller = Controller::open(&dir, 1).await?;
    let refused = controller.submit(create("orders", 1, 1)).await;
    assert!(
        matches!(refused, Err(ControllerError::NoSpace { .. })),
        "{refused:?}"
    );

    std::fs::remove_file(fs.path().join("filler"))?;
    controller.submit(create("orders", 1, 1)).await?;
    assert_eq!(controller.image().topic_count(), 1);
    controller.shutdown().await?;
    Ok(())
}

/// A command too large for a frame to the followers is refused before it
/// is proposed: written to the leader's log, it could never be replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_too_large_for_the_log_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = Controller::open(dir.path(), 1).await?;
    register_unfenced(&controller, 1).await?;
    let before = controller.image().version;
    let huge = MetadataCommand::CreateTopic {
        name: "huge".into(),
        topic_id: Uuid::from_u128(9),
        partitions: 1,
        replication_factor: 1,
        configs: BTreeMap::from([("x".to_string(), "a".repeat(3 << 20))]),
        assignments: None,
    };
    assert!(matches!(
        controller.submit(huge).await,
        Err(ControllerError::Rejected(MetadataError::InvalidRequest(_)))
    ));
    assert_eq!(controller.image().version, before, "nothing was proposed");
    controller.shutdown().await?;
    Ok(())
}

/// The active controller fences a broker whose heartbeats stop for its
/// session timeout — but not for a gap in which the controller itself was
/// not running (paused or starved): then every session starts afresh.
/// (Found by rill-chaos: a SIGSTOPped active controller, resumed, fenced
/// every broker at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_are_fenced_for_their_silence_not_the_controllers() -> anyhow::Result<()> {
    use rill_controller::raft::rpc::{BrokerHeartbeat, BrokerRegistrationRequest};
    use rill_types::ManualClock;
    use std::time::Duration;

    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = ControllerOptions {
        broker_session_timeout: Some(Duration::from_secs(2)),
        clock: clock.clone(),
        ..ControllerOptions::default()
    };
    let controller = Controller::open_with(dir.path(), 1, options, None).await?;
    // A broker of another process (node 2): node 1's own broker is never
    // fenced by its own controller.
    let broker_epoch = controller
        .register_broker(BrokerRegistrationRequest {
            node_id: 2,
            incarnation_id: Uuid::from_u128(2),
            directory_id: Uuid::from_u128(2),
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
        })
        .await?;
    let heartbeat = |version| BrokerHeartbeat {
        node_id: 2,
        broker_epoch,
        metadata_version: version,
        want_shut_down: false,
    };
    let answer = controller
        .heartbeat(
            heartbeat(controller.image().version),
            Duration::from_secs(5),
        )
        .await?;
    assert!(!answer.fenced);
    let fenced = |c: &Controller| c.image().broker(2).is_some_and(|b| b.fenced);

    // The controller "pauses" for 10 s: nobody could be heard meanwhile.
    clock.advance_ms(10_000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !fenced(&controller),
        "fenced for the controller's own pause"
    );

    // Now the broker is silent while the controller runs: fenced once its
    // 2 s session has passed.
    for _ in 0..20 {
        clock.advance_ms(200);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if fenced(&controller) {
            break;
        }
    }
    assert!(fenced(&controller), "a silent broker was not fenced");
    controller.shutdown().await?;
    Ok(())
}
