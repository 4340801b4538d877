//! Following the metadata image: which `__consumer_offsets` partitions
//! this node coordinates, reading a partition back into groups when it
//! becomes their leader, and forgetting the offsets of deleted topics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rill_controller::{MetadataImage, TopicId};
use rill_storage::{records as storage_records, txn};
use tracing::{debug, info, warn};

use super::records::{self, GroupValue, RecordKey};
use super::state::{Committed, Group};
use super::txn::{LoadedTxns, PendingTxnOffset};
use super::{partition_for, GroupCoordinator, Load, State, Writes, OFFSETS_TOPIC};
use crate::replica::{Partition, ReplicaManager};

impl GroupCoordinator {
    /// Follows the metadata: starts loading the `__consumer_offsets`
    /// partitions this node now leads, and forgets the groups of those it
    /// no longer does (their waiting members are answered NOT_COORDINATOR).
    pub fn on_image(self: &Arc<Self>, image: &MetadataImage, replicas: &ReplicaManager) {
        let topic = image.topic(OFFSETS_TOPIC);
        let count = topic.map_or(0, |t| t.partitions.len() as i32);
        let led: HashSet<i32> = topic
            .map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leader == self.node_id)
                    .map(|(i, _)| i as i32)
                    .collect()
            })
            .unwrap_or_default();
        let mut to_load = Vec::new();
        let topic_ids: HashMap<String, TopicId> = image
            .topic_names()
            .map(|(name, id)| (name.to_string(), *id))
            .collect();
        {
            let mut state = self.lock();
            state.partition_count = count;
            if state.topic_ids != topic_ids {
                let gone: HashSet<String> = state
                    .topic_ids
                    .iter()
                    .filter(|(name, id)| topic_ids.get(*name) != Some(*id))
                    .map(|(name, _)| name.clone())
                    .collect();
                state.topic_ids = topic_ids;
                if !gone.is_empty() {
                    self.forget_topics(&mut state, replicas, &gone);
                }
            }
            let lost: Vec<i32> = state
                .owned
                .keys()
                .copied()
                .filter(|p| !led.contains(p))
                .collect();
            for partition in lost {
                state.owned.remove(&partition);
                for pending in state.pending_txn.values_mut() {
                    pending.retain(|p| p.offsets_partition != partition);
                }
                state.pending_txn.retain(|_, pending| !pending.is_empty());
                state
                    .groups
                    .retain(|id, _| count > 0 && partition_for(id, count) != partition);
                info!(
                    partition,
                    "no longer coordinating the groups of __consumer_offsets partition"
                );
            }
            if count == 0 {
                state.groups.clear();
            }
            for &partition in &led {
                if state.owned.contains_key(&partition) {
                    continue;
                }
                let Some(replica) = replicas.get(OFFSETS_TOPIC, partition) else {
                    continue;
                };
                if replica.log.log_end_offset() == 0 {
                    // Nothing to read (the topic was just made): loaded
                    // here, under the lock, so that whichever caller of
                    // `on_image` gets here first — the FindCoordinator that
                    // made the topic, or the metadata follower — nobody
                    // sees it loading, and that FindCoordinator sends its
                    // client to a coordinator that is ready. (Loading it
                    // outside the lock let the other caller answer while
                    // the load was still under way: a JoinGroup right
                    // after got COORDINATOR_LOAD_IN_PROGRESS.)
                    state.owned.insert(partition, Load::Loaded);
                    debug!(partition, "loaded empty __consumer_offsets partition");
                    continue;
                }
                state.owned.insert(partition, Load::Loading);
                to_load.push((partition, replica));
            }
        }
        for (partition, replica) in to_load {
            let coordinator = Arc::clone(self);
            self.runtime
                .spawn_blocking(move || coordinator.load(partition, &replica));
        }
    }

    /// Removes every group's committed offsets of deleted topics, with
    /// tombstones written in the background.
    fn forget_topics(&self, state: &mut State, replicas: &ReplicaManager, gone: &HashSet<String>) {
        let count = state.partition_count;
        if count <= 0 {
            return;
        }
        let mut by_partition: HashMap<i32, Writes> = HashMap::new();
        for group in state.groups.values_mut() {
            let removed: Vec<(String, i32)> = group
                .offsets
                .keys()
                .filter(|(topic, _)| gone.contains(topic))
                .cloned()
                .collect();
            for (topic, index) in removed {
                group.offsets.remove(&(topic.clone(), index));
                by_partition
                    .entry(partition_for(&group.id, count))
                    .or_default()
                    .push((
                        records::encode_key(&RecordKey::Offset {
                            group: group.id.clone(),
                            topic,
                            partition: index,
                        }),
                        None,
                    ));
            }
        }
        for (partition, writes) in by_partition {
            info!(
                partition,
                offsets = writes.len(),
                "removing committed offsets of deleted topics"
            );
            let appended = self.append(replicas, partition, &writes);
            self.runtime.spawn(async move {
                if let Err(code) = Self::durable(appended).await {
                    warn!(code, "writing tombstones for deleted topics failed");
                }
            });
        }
    }

    /// Reads a `__consumer_offsets` partition back into groups. Blocking.
    pub(super) fn load(&self, partition: i32, replica: &Partition) {
        let started = std::time::Instant::now();
        let mut values: HashMap<String, Option<GroupValue>> = HashMap::new();
        let mut offsets: HashMap<String, HashMap<(String, i32), Committed>> = HashMap::new();
        let mut records = 0u64;
        let mut txns = LoadedTxns::default();
        // See `Partition::read_whole_log`: to the log end.
        let read = replica.read_whole_log(|header, bytes| {
            if header.is_control() {
                // A transaction's marker: its offsets count, or not.
                match txn::parse_marker(bytes) {
                    Ok(Some(marker)) => {
                        let commit = marker.control_type == txn::ControlType::Commit;
                        for done in txns.marker(header.producer_id, commit) {
                            let group_offsets = offsets.entry(done.group).or_default();
                            let key = (done.topic, done.partition);
                            if group_offsets
                                .get(&key)
                                .is_none_or(|c| c.record_offset < done.committed.record_offset)
                            {
                                group_offsets.insert(key, done.committed);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        warn!(partition, offset = header.base_offset, %error, "unreadable marker in __consumer_offsets; skipped")
                    }
                }
                return;
            }
            let decoded = match storage_records::decode_records(bytes) {
                Ok(decoded) => decoded,
                Err(error) => {
                    warn!(partition, offset = header.base_offset, %error, "unreadable batch in __consumer_offsets; skipped");
                    return;
                }
            };
            for record in decoded {
                records += 1;
                let record_offset = header.base_offset + i64::from(record.offset_delta);
                let Some(key) = record.key.as_deref() else {
                    continue;
                };
                let key = match records::decode_key(key) {
                    Ok(key) => key,
                    Err(error) => {
                        warn!(partition, offset = record_offset, %error, "skipped");
                        continue;
                    }
                };
                match key {
                    RecordKey::Offset {
                        group,
                        topic,
                        partition: index,
                    } if header.is_transactional() => {
                        // Pending until the transaction's marker.
                        match record.value.as_deref().map(records::decode_offset) {
                            Some(Ok(value)) => txns.offset(
                                header.producer_id,
                                PendingTxnOffset {
                                    offsets_partition: partition,
                                    group,
                                    topic,
                                    partition: index,
                                    committed: Committed {
                                        value,
                                        record_offset,
                                    },
                                },
                            ),
                            None => {}
                            Some(Err(error)) => {
                                warn!(partition, offset = record_offset, %error, "skipped")
                            }
                        }
                    }
                    RecordKey::Offset {
                        group,
                        topic,
                        partition: index,
                    } => {
                        let group_offsets = offsets.entry(group).or_default();
                        match record.value.as_deref().map(records::decode_offset) {
                            None => {
                                group_offsets.remove(&(topic, index));
                            }
                            Some(Ok(value)) => {
                                group_offsets.insert(
                                    (topic, index),
                                    Committed {
                                        value,
                                        record_offset,
                                    },
                                );
                            }
                            Some(Err(error)) => {
                                warn!(partition, offset = record_offset, %error, "skipped")
                            }
                        }
                    }
                    RecordKey::Group { group } => {
                        match record.value.as_deref().map(records::decode_group) {
                            None => {
                                values.insert(group, None);
                            }
                            Some(Ok(value)) => {
                                values.insert(group, Some(value));
                            }
                            Some(Err(error)) => {
                                warn!(partition, offset = record_offset, %error, "skipped")
                            }
                        }
                    }
                }
            }
        });
        if let Err(error) = read {
            warn!(partition, %error, "reading __consumer_offsets failed; loading what was read");
        }
        let now = self.now();
        let mut loaded: HashMap<String, Group> = HashMap::new();
        for (id, value) in values {
            if let Some(value) = value {
                loaded.insert(id.clone(), Group::restore(id, value, &self.config, now));
            }
        }
        for (id, group_offsets) in offsets {
            if group_offsets.is_empty() {
                continue;
            }
            let group = loaded
                .entry(id.clone())
                .or_insert_with(|| Group::new(id, &self.config, now));
            group.offsets = group_offsets;
        }
        let mut state = self.lock();
        if state.owned.get(&partition) != Some(&Load::Loading) {
            return;
        }
        let groups = loaded.len();
        state.groups.extend(loaded);
        // Offsets of transactions still open at the log end.
        for (producer_id, pending) in txns.pending {
            state
                .pending_txn
                .entry(producer_id)
                .or_default()
                .extend(pending);
        }
        state.owned.insert(partition, Load::Loaded);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if records > 0 {
            info!(
                partition,
                groups, records, elapsed_ms, "loaded __consumer_offsets partition"
            );
        } else {
            debug!(
                partition,
                elapsed_ms, "loaded empty __consumer_offsets partition"
            );
        }
    }
}
