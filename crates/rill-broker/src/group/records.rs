//! The records the group coordinator keeps in `__consumer_offsets`, in
//! Kafka's own formats, so that Kafka's tools (the offsets-topic message
//! formatter, `kafka-dump-log --offsets-decoder`) read rill's topic and a
//! topic copied from Kafka loads here.
//!
//! Keys start with a version: 0 and 1 are a committed offset
//! (`OffsetCommitKey`: group, topic, partition), 2 is a group's metadata
//! (`GroupMetadataKey`: group). A null value is a tombstone. rill writes
//! `OffsetCommitValue` v3 (offset, leader epoch, metadata, commit
//! timestamp) and `GroupMetadataValue` v3, and reads every version Kafka
//! has written since 0.9 (v0..=3 of both; the flexible v4 offset value is
//! read too).
//!
//! Decoding never panics: a record that does not parse is an error the
//! loader logs and skips, as Kafka's does.

use bytes::{BufMut, Bytes};

use crate::record_codec::{
    get_bytes, get_compact_string, get_i16, get_i32, get_i64, get_nullable_string, get_string,
    put_bytes, put_nullable_string, put_string, Malformed,
};

/// What a key says the record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when the committer did not know it.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// A group's metadata as stored: what survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable __consumer_offsets record: {0}")]
pub struct Undecodable(pub &'static str);

impl From<Malformed> for Undecodable {
    fn from(malformed: Malformed) -> Self {
        Self(malformed.0)
    }
}

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

pub fn encode_key(key: &RecordKey) -> Vec<u8> {
    let mut out = Vec::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            out.put_i16(OFFSET_KEY_VERSION);
            put_string(&mut out, group);
            put_string(&mut out, topic);
            out.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            out.put_i16(GROUP_KEY_VERSION);
            put_string(&mut out, group);
        }
    }
    out
}

pub fn encode_offset(value: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(OFFSET_VALUE_VERSION);
    out.put_i64(value.offset);
    out.put_i32(value.leader_epoch);
    put_string(&mut out, &value.metadata);
    out.put_i64(value.commit_timestamp);
    out
}

pub fn encode_group(value: &GroupValue) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &value.protocol_type);
    out.put_i32(value.generation);
    put_nullable_string(&mut out, value.protocol.as_deref());
    put_nullable_string(&mut out, value.leader.as_deref());
    out.put_i64(value.current_state_timestamp);
    out.put_i32(value.members.len() as i32);
    for member in &value.members {
        put_string(&mut out, &member.member_id);
        put_nullable_string(&mut out, member.group_instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &member.subscription);
        put_bytes(&mut out, &member.assignment);
    }
    out
}

pub fn decode_key(mut buf: &[u8]) -> Result<RecordKey, Undecodable> {
    let version = get_i16(&mut buf)?;
    let key = match version {
        0 | 1 => RecordKey::Offset {
            group: get_string(&mut buf)?,
            topic: get_string(&mut buf)?,
            partition: get_i32(&mut buf)?,
        },
        2 => RecordKey::Group {
            group: get_string(&mut buf)?,
        },
        _ => return Err(Undecodable("unknown key version")),
    };
    Ok(key)
}

pub fn decode_offset(mut buf: &[u8]) -> Result<OffsetValue, Undecodable> {
    let version = get_i16(&mut buf)?;
    let value = match version {
        // v0: offset, metadata, timestamp.
        0 => OffsetValue {
            offset: get_i64(&mut buf)?,
            leader_epoch: -1,
            metadata: get_string(&mut buf)?,
            commit_timestamp: get_i64(&mut buf)?,
        },
        // v1 adds an expire timestamp after the commit timestamp; v2 drops it.
        1 | 2 => {
            let offset = get_i64(&mut buf)?;
            let metadata = get_string(&mut buf)?;
            let commit_timestamp = get_i64(&mut buf)?;
            if version == 1 {
                get_i64(&mut buf)?;
            }
            OffsetValue {
                offset,
                leader_epoch: -1,
                metadata,
                commit_timestamp,
            }
        }
        // v3 adds the leader epoch; v4 is v3 in the flexible encoding.
        3 => OffsetValue {
            offset: get_i64(&mut buf)?,
            leader_epoch: get_i32(&mut buf)?,
            metadata: get_string(&mut buf)?,
            commit_timestamp: get_i64(&mut buf)?,
        },
        4 => OffsetValue {
            offset: get_i64(&mut buf)?,
            leader_epoch: get_i32(&mut buf)?,
            metadata: get_compact_string(&mut buf)?,
            commit_timestamp: get_i64(&mut buf)?,
        },
        _ => return Err(Undecodable("unknown offset value version")),
    };
    Ok(value)
}

pub fn decode_group(mut buf: &[u8]) -> Result<GroupValue, Undecodable> {
    let version = get_i16(&mut buf)?;
    if !(0..=3).contains(&version) {
        return Err(Undecodable("unknown group value version"));
    }
    let protocol_type = get_string(&mut buf)?;
    let generation = get_i32(&mut buf)?;
    let protocol = get_nullable_string(&mut buf)?;
    let leader = get_nullable_string(&mut buf)?;
    let current_state_timestamp = if version >= 2 { get_i64(&mut buf)? } else { -1 };
    let count = get_i32(&mut buf)?;
    // Each member takes at least 26 bytes; the count cannot claim more.
    if count < 0 || count as usize > buf.len() / 26 {
        return Err(Undecodable("member count beyond the record"));
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let member_id = get_string(&mut buf)?;
        let group_instance_id = if version >= 3 {
            get_nullable_string(&mut buf)?
        } else {
            None
        };
        let client_id = get_string(&mut buf)?;
        let client_host = get_string(&mut buf)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(&mut buf)? } else { -1 };
        let session_timeout_ms = get_i32(&mut buf)?;
        let subscription = get_bytes(&mut buf)?;
        let assignment = get_bytes(&mut buf)?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            // v0 had no rebalance timeout; Kafka took the session timeout.
            rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let keys = [
            RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
            },
            RecordKey::Group { group: "g2".into() },
        ];
        for key in keys {
            assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
        }
        let offset = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp: 1_700_000_000_000,
        };
        assert_eq!(decode_offset(&encode_offset(&offset)).unwrap(), offset);
        let group = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 9,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(decode_group(&encode_group(&group)).unwrap(), group);
    }

    /// The bytes Kafka 3.x writes for an OffsetCommitKey v1 and an
    /// OffsetCommitValue v3, spelled out from the schema.
    #[test]
    fn offset_record_matches_kafka_layout() {
        let key = encode_key(&RecordKey::Offset {
            group: "ab".into(),
            topic: "t".into(),
            partition: 1,
        });
        assert_eq!(key, [0, 1, 0, 2, b'a', b'b', 0, 1, b't', 0, 0, 0, 1]);
        let value = encode_offset(&OffsetValue {
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: 2,
        });
        assert_eq!(
            value,
            [0, 3, 0, 0, 0, 0, 0, 0, 0, 5, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs: [&[u8]; 7] = [
            &[],
            &[0],
            &[0, 9],
            &[0, 1, 0, 50, b'a'],
            &[0, 2, 255, 255],
            &[0, 3, 0, 0, 0, 0, 0, 0, 0, 5],
            &[
                0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
            ],
        ];
        for input in inputs {
            let _ = decode_key(input);
            let _ = decode_offset(input);
            let _ = decode_group(input);
        }
        assert!(decode_group(&[
            0, 3, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0
        ])
        .is_err());
        // A v4 (flexible) offset value: compact metadata string "x".
        let v4 = [
            0, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 2, b'x', 0, 0, 0, 0, 0, 0, 0, 3, 0,
        ];
        assert_eq!(
            decode_offset(&v4).unwrap(),
            OffsetValue {
                offset: 7,
                leader_epoch: 1,
                metadata: "x".into(),
                commit_timestamp: 3
            }
        );
    }
}
