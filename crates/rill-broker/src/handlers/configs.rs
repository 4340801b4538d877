//! Config resources, shared by DescribeConfigs, AlterConfigs,
//! IncrementalAlterConfigs and CreateTopics: which configs a topic or a
//! broker has, their values, and where each value comes from.
//!
//! A topic config's value comes from, in this order (Kafka's
//! `ConfigHelper.createTopicConfigEntry`): the topic itself
//! (TOPIC_CONFIG), a dynamic config of this broker (DYNAMIC_BROKER_CONFIG,
//! set by AlterConfigs on the broker), the cluster-wide dynamic default
//! (DYNAMIC_DEFAULT_BROKER_CONFIG, set by AlterConfigs on the broker
//! resource with the empty name), the broker's start-up settings
//! (STATIC_BROKER_CONFIG, when they differ from rill's defaults), or
//! Kafka's default (DEFAULT_CONFIG). The values are the ones the partition
//! log uses: `topic_config::log_config` applies the same layers, from
//! [`dynamic_broker_configs_in_force`].
//!
//! Every other dynamic broker config Kafka has
//! (`rill_controller::broker_config`: listener SSL and SASL settings,
//! thread pools, `log.cleaner.*`, …) is stored the same way and listed
//! with the same sources once set; rill applies none of them yet (the
//! README lists what it applies).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rill_controller::broker_config::{self, Scope, CLUSTER_DEFAULT_NODE_ID};
use rill_controller::config::{self, ConfigType};
use rill_controller::{ConfigResource, MetadataCommand, MetadataImage};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_storage::LogConfig;
use rill_types::{NodeId, TopicName};

use super::{sync_metadata, KafkaError};
use crate::config::BrokerConfig;
use crate::errors::{controller_error, metadata_error};
use crate::server::Broker;
use crate::topic_config::log_config_value;

/// Kafka's `ConfigResource.Type` ids.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
pub const RESOURCE_BROKER_LOGGER: i8 = 8;
pub const RESOURCE_CLIENT_METRICS: i8 = 16;
pub const RESOURCE_GROUP: i8 = 32;

/// Kafka's `DescribeConfigsResponse.ConfigSource` ids.
pub const SOURCE_TOPIC_CONFIG: i8 = 1;
pub const SOURCE_DYNAMIC_BROKER_CONFIG: i8 = 2;
pub const SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
pub const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
pub const SOURCE_DEFAULT_CONFIG: i8 = 5;

/// Kafka's `AlterConfigOp.OpType` ids (IncrementalAlterConfigs).
pub const OP_SET: i8 = 0;
pub const OP_DELETE: i8 = 1;
pub const OP_APPEND: i8 = 2;
pub const OP_SUBTRACT: i8 = 3;

/// Kafka's `DescribeConfigsResponse.ConfigType` id of a config type.
pub fn config_type_id(config_type: ConfigType) -> i8 {
    match config_type {
        ConfigType::Boolean => 1,
        ConfigType::String => 2,
        ConfigType::Int => 3,
        ConfigType::Long => 5,
        ConfigType::Double => 6,
        ConfigType::List => 7,
    }
}

/// One place a config's value can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub name: String,
    /// `None`: null, Kafka's value of a config that has none.
    pub value: Option<String>,
    pub source: i8,
}

/// One config of a resource, as DescribeConfigs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None`: null, Kafka's value of a config that has none.
    pub value: Option<String>,
    pub source: i8,
    pub read_only: bool,
    /// A password: DescribeConfigs shows no value (Kafka's
    /// `is_sensitive`).
    pub sensitive: bool,
    pub config_type: ConfigType,
    /// Every place the value could come from, the one in force first.
    pub synonyms: Vec<Synonym>,
}

impl ConfigEntry {
    /// An entry whose value and source are those of its first synonym.
    fn from_synonyms(
        name: &str,
        config_type: ConfigType,
        read_only: bool,
        synonyms: Vec<Synonym>,
    ) -> Self {
        assert!(!synonyms.is_empty(), "{name} has no value at all");
        ConfigEntry {
            name: name.to_string(),
            value: synonyms[0].value.clone(),
            source: synonyms[0].source,
            read_only,
            sensitive: false,
            config_type,
            synonyms,
        }
    }
}

/// The dynamic broker configs in force on broker `node_id`: the
/// cluster-wide defaults, overridden by the broker's own.
pub fn dynamic_broker_configs_in_force(
    image: &MetadataImage,
    node_id: NodeId,
) -> BTreeMap<String, String> {
    let mut configs = image
        .broker_configs(CLUSTER_DEFAULT_NODE_ID)
        .cloned()
        .unwrap_or_default();
    if let Some(own) = image.broker_configs(node_id) {
        configs.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    configs
}

/// The dynamic layers of broker config `name` on broker `node_id`, the one
/// in force first: the broker's own value, then the cluster-wide default.
fn dynamic_synonyms(image: &MetadataImage, node_id: NodeId, name: &str) -> Vec<Synonym> {
    [
        (node_id, SOURCE_DYNAMIC_BROKER_CONFIG),
        (
            CLUSTER_DEFAULT_NODE_ID,
            SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG,
        ),
    ]
    .into_iter()
    .filter_map(|(id, source)| {
        let value = image.broker_configs(id)?.get(name)?;
        Some(synonym(name, value.clone(), source))
    })
    .collect()
}

/// Every topic config Kafka has, for a topic whose own configs are
/// `topic_configs`, as this broker would apply them.
pub fn topic_entries(
    broker: &Broker,
    image: &MetadataImage,
    topic_configs: &BTreeMap<String, String>,
) -> Vec<ConfigEntry> {
    let node_id = broker.config.node_id;
    config::topic_configs()
        .map(|def| {
            let mut synonyms = Vec::new();
            if let Some(value) = topic_configs.get(def.name) {
                synonyms.push(synonym(def.name, value.clone(), SOURCE_TOPIC_CONFIG));
            }
            if let Some(broker_name) = def.broker_synonym {
                synonyms.extend(dynamic_synonyms(image, node_id, broker_name));
                if let Some(value) = static_topic_default(&broker.config, def.name) {
                    synonyms.push(synonym(broker_name, value, SOURCE_STATIC_BROKER_CONFIG));
                }
                synonyms.push(synonym(
                    broker_name,
                    def.default.to_string(),
                    SOURCE_DEFAULT_CONFIG,
                ));
            }
            if synonyms.is_empty() {
                // A config with no broker-level default, not set on the
                // topic: Kafka lists no synonym and says DEFAULT_CONFIG.
                return ConfigEntry {
                    name: def.name.to_string(),
                    value: Some(def.default.to_string()),
                    source: SOURCE_DEFAULT_CONFIG,
                    read_only: false,
                    sensitive: false,
                    config_type: def.config_type,
                    synonyms,
                };
            }
            ConfigEntry::from_synonyms(def.name, def.config_type, false, synonyms)
        })
        .collect()
}

/// The broker's start-up value of a topic config's default, when it
/// differs from rill's (and Kafka's) default.
fn static_topic_default(config: &BrokerConfig, name: &str) -> Option<String> {
    let value = log_config_value(&config.log_defaults, name)?;
    (Some(&value) != log_config_value(&LogConfig::default(), name).as_ref()).then_some(value)
}

fn synonym(name: &str, value: String, source: i8) -> Synonym {
    Synonym {
        name: name.to_string(),
        value: Some(value),
        source,
    }
}

/// A broker setting that is read at start-up only.
struct StaticSetting {
    name: &'static str,
    config_type: ConfigType,
    value: fn(&BrokerConfig) -> String,
}

/// The broker settings rill has, under their Kafka names, other than the
/// dynamic ones (`rill_controller::config::dynamic_broker_configs`).
const STATIC_SETTINGS: &[StaticSetting] = &[
    StaticSetting {
        name: "advertised.listeners",
        config_type: ConfigType::String,
        value: |c| {
            let (host, port) = c.advertised();
            format!("PLAINTEXT://{host}:{port}")
        },
    },
    StaticSetting {
        name: "auto.create.topics.enable",
        config_type: ConfigType::Boolean,
        value: |c| c.auto_create_topics_enable.to_string(),
    },
    StaticSetting {
        name: "broker.id",
        config_type: ConfigType::Int,
        value: |c| c.node_id.to_string(),
    },
    StaticSetting {
        name: "default.replication.factor",
        config_type: ConfigType::Int,
        value: |c| c.default_replication_factor.to_string(),
    },
    StaticSetting {
        name: "fetch.max.bytes",
        config_type: ConfigType::Int,
        value: |c| c.fetch_bytes_max.to_string(),
    },
    StaticSetting {
        name: "listeners",
        config_type: ConfigType::String,
        value: |c| format!("PLAINTEXT://{}", c.kafka_addr),
    },
    StaticSetting {
        name: "log.dirs",
        config_type: ConfigType::String,
        value: |c| c.data_dir.display().to_string(),
    },
    StaticSetting {
        name: "log.retention.check.interval.ms",
        config_type: ConfigType::Long,
        value: |c| c.log_cleanup_interval.as_millis().to_string(),
    },
    StaticSetting {
        name: "max.connections",
        config_type: ConfigType::Int,
        value: |c| c.connections_max.to_string(),
    },
    StaticSetting {
        name: "node.id",
        config_type: ConfigType::Int,
        value: |c| c.node_id.to_string(),
    },
    StaticSetting {
        name: "num.partitions",
        config_type: ConfigType::Int,
        value: |c| c.num_partitions.to_string(),
    },
    StaticSetting {
        name: "socket.request.max.bytes",
        config_type: ConfigType::Int,
        value: |c| c.request_bytes_max.to_string(),
    },
];

/// This broker's settings, sorted by name: the ones it reads at start-up,
/// the broker synonyms of topic configs (`log.retention.ms`, …), and every
/// other dynamic broker config set on it or as the cluster-wide default.
/// A start-up setting Kafka may change at run time (`max.connections`)
/// lists its dynamic values first.
pub fn broker_entries(broker: &Broker, image: &MetadataImage) -> Vec<ConfigEntry> {
    let config = &broker.config;
    let node_id = config.node_id;
    let defaults = BrokerConfig::default();
    let mut entries: Vec<ConfigEntry> = STATIC_SETTINGS
        .iter()
        .map(|setting| {
            let value = (setting.value)(config);
            let default = (setting.value)(&defaults);
            let mut synonyms = dynamic_synonyms(image, node_id, setting.name);
            if value != default {
                synonyms.push(synonym(setting.name, value, SOURCE_STATIC_BROKER_CONFIG));
            }
            synonyms.push(synonym(setting.name, default, SOURCE_DEFAULT_CONFIG));
            let read_only = broker_config::lookup(setting.name).is_err();
            ConfigEntry::from_synonyms(setting.name, setting.config_type, read_only, synonyms)
        })
        .collect();
    for (broker_name, topic_name) in config::dynamic_broker_configs() {
        let def = config::topic_config(topic_name).expect("dynamic configs are topic configs");
        let mut synonyms = dynamic_synonyms(image, node_id, broker_name);
        if let Some(value) = static_topic_default(config, topic_name) {
            synonyms.push(synonym(broker_name, value, SOURCE_STATIC_BROKER_CONFIG));
        }
        synonyms.push(synonym(
            broker_name,
            def.default.to_string(),
            SOURCE_DEFAULT_CONFIG,
        ));
        entries.push(ConfigEntry::from_synonyms(
            broker_name,
            def.config_type,
            false,
            synonyms,
        ));
    }
    // Kafka's other dynamic configs, with Kafka's defaults: rill has no
    // start-up value of its own for them. Clients check a name against
    // this list before they ask to change it (kafka-python).
    let mut listed: BTreeSet<String> = entries.iter().map(|entry| entry.name.clone()).collect();
    for (name, def) in broker_config::broker_wide() {
        if listed.contains(name) {
            continue;
        }
        let mut synonyms = dynamic_synonyms(image, node_id, name);
        synonyms.push(Synonym {
            name: name.to_string(),
            value: def.default.map(str::to_string),
            source: SOURCE_DEFAULT_CONFIG,
        });
        let mut entry = ConfigEntry::from_synonyms(name, def.config_type, false, synonyms);
        entry.sensitive = def.sensitive;
        entries.push(entry);
        listed.insert(name.to_string());
    }
    // Listener settings (`listener.name.plaintext.ssl.keystore.location`):
    // listed once set.
    let set_names: BTreeSet<&String> = [node_id, CLUSTER_DEFAULT_NODE_ID]
        .into_iter()
        .filter_map(|id| image.broker_configs(id))
        .flat_map(|configs| configs.keys())
        .filter(|name| !listed.contains(*name))
        .collect();
    for name in set_names {
        let Ok(def) = broker_config::lookup(name) else {
            continue;
        };
        let synonyms = dynamic_synonyms(image, node_id, name);
        let mut entry = ConfigEntry::from_synonyms(name, def.config_type, false, synonyms);
        entry.sensitive = def.sensitive;
        entries.push(entry);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// The cluster-wide dynamic defaults (the broker resource with the empty
/// name), as Kafka lists them: only the configs set at that level, each
/// with that one source.
pub fn cluster_default_entries(image: &MetadataImage) -> Vec<ConfigEntry> {
    let Some(configs) = image.broker_configs(CLUSTER_DEFAULT_NODE_ID) else {
        return Vec::new();
    };
    configs
        .iter()
        .filter_map(|(name, value)| {
            let (config_type, sensitive) = match config::dynamic_broker_config_topic_synonym(name) {
                Some(topic_name) => (config::topic_config(topic_name)?.config_type, false),
                None => {
                    let def = broker_config::lookup(name).ok()?;
                    (def.config_type, def.sensitive)
                }
            };
            let synonyms = vec![synonym(
                name,
                value.clone(),
                SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG,
            )];
            let mut entry = ConfigEntry::from_synonyms(name, config_type, false, synonyms);
            entry.sensitive = sensitive;
            Some(entry)
        })
        .collect()
}

/// Checks a topic resource's name: empty is INVALID_REQUEST (Kafka has no
/// default topic resource), a name that is not a valid topic name is
/// INVALID_TOPIC_EXCEPTION.
pub fn check_topic_name(name: &str) -> Result<(), KafkaError> {
    if name.is_empty() {
        return Err(KafkaError::with_message(
            ResponseError::InvalidRequest,
            "Default topic resources are not allowed.",
        ));
    }
    TopicName::new(name).map(|_| ()).map_err(|error| {
        KafkaError::with_message(ResponseError::InvalidTopicException, error.to_string())
    })
}

/// Parses a broker resource's name, which must be this node's id (Kafka's
/// `ConfigAdminManager.validateResourceNameIsCurrentNodeId`).
pub fn check_broker_name(broker: &Broker, name: &str) -> Result<NodeId, KafkaError> {
    let node_id = broker.config.node_id;
    let Ok(id) = name.parse::<NodeId>() else {
        return Err(KafkaError::with_message(
            ResponseError::InvalidRequest,
            format!("Broker id must be an integer, but it is: {name}"),
        ));
    };
    if id != node_id {
        return Err(KafkaError::with_message(
            ResponseError::InvalidRequest,
            format!("Unexpected broker id, expected {node_id}, but received {name}"),
        ));
    }
    Ok(id)
}

/// The error for a resource type rill does not describe or alter.
pub fn unsupported_resource_type(resource_type: i8) -> KafkaError {
    let message = match resource_type {
        RESOURCE_BROKER_LOGGER => {
            "broker logger levels (resource type 8) cannot be read or changed through the Kafka protocol on rill".to_string()
        }
        RESOURCE_CLIENT_METRICS => "client metrics configs (resource type 16) are not supported".to_string(),
        RESOURCE_GROUP => "group configs (resource type 32) are not supported".to_string(),
        other => format!("unknown resource type {other}"),
    };
    KafkaError::with_message(ResponseError::InvalidRequest, message)
}

/// What an AlterConfigs or IncrementalAlterConfigs request asks of one
/// resource.
#[derive(Debug)]
pub struct AlterResource {
    pub resource_type: i8,
    pub name: String,
    pub change: Change,
}

#[derive(Debug)]
pub enum Change {
    /// AlterConfigs: these become the resource's whole set of configs;
    /// every config not named is reset to its default.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (name, operation, value) per config.
    Incremental(Vec<(String, i8, Option<String>)>),
}

impl Change {
    fn names(&self) -> Vec<&str> {
        match self {
            Change::Replace(configs) => configs.iter().map(|(name, _)| name.as_str()).collect(),
            Change::Incremental(ops) => ops.iter().map(|(name, _, _)| name.as_str()).collect(),
        }
    }
}

/// Applies (or, with `validate_only`, checks) the config changes of an
/// AlterConfigs or IncrementalAlterConfigs request, one result per
/// resource in request order. Each resource is one controller command,
/// so a resource changes whole or not at all.
pub async fn alter(
    broker: &Arc<Broker>,
    resources: Vec<AlterResource>,
    validate_only: bool,
) -> Vec<Result<(), KafkaError>> {
    // A resource named twice is an error for every mention (Kafka's
    // "Each resource must appear at most once.").
    let mut mentions: HashMap<(i8, &str), usize> = HashMap::new();
    for resource in &resources {
        *mentions
            .entry((resource.resource_type, resource.name.as_str()))
            .or_default() += 1;
    }
    let duplicated: Vec<bool> = resources
        .iter()
        .map(|r| mentions[&(r.resource_type, r.name.as_str())] > 1)
        .collect();

    let mut results = Vec::with_capacity(resources.len());
    let mut committed = false;
    for (resource, duplicated) in resources.iter().zip(duplicated) {
        let result = if duplicated {
            Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                "Each resource must appear at most once.",
            ))
        } else {
            match command_for(broker, resource) {
                Ok(command) if validate_only => {
                    rill_controller::check(&broker.controller.image(), &command).map_err(
                        |rejection| {
                            let (code, message) = metadata_error(&rejection);
                            KafkaError {
                                code,
                                message: Some(message),
                            }
                        },
                    )
                }
                Ok(command) => match broker.controller.submit(command).await {
                    Ok(_) => {
                        committed = true;
                        Ok(())
                    }
                    Err(error) => {
                        let (code, message) = controller_error(&error);
                        Err(KafkaError {
                            code,
                            message: Some(message),
                        })
                    }
                },
                Err(error) => Err(error),
            }
        };
        results.push(result);
    }
    if committed {
        // The logs get their new configs before the client hears back.
        sync_metadata(broker).await;
    }
    results
}

/// The controller command that makes one resource's change, checked as
/// far as the broker can: names, null values, operations and types.
/// Values are checked by the controller. Messages a client shows its user
/// are in Kafka's own words.
fn command_for(broker: &Broker, resource: &AlterResource) -> Result<MetadataCommand, KafkaError> {
    let invalid_request =
        |message: String| KafkaError::with_message(ResponseError::InvalidRequest, message);
    let names = resource.change.names();
    let distinct: BTreeSet<&str> = names.iter().copied().collect();
    if distinct.len() != names.len() {
        return Err(invalid_request(
            "Error due to duplicate config keys".to_string(),
        ));
    }
    let null_values: Vec<&str> = match &resource.change {
        Change::Replace(configs) => configs
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.as_str())
            .collect(),
        Change::Incremental(ops) => ops
            .iter()
            .filter(|(_, op, value)| *op != OP_DELETE && value.is_none())
            .map(|(name, _, _)| name.as_str())
            .collect(),
    };
    if !null_values.is_empty() {
        return Err(invalid_request(format!(
            "Null value not supported for : {}",
            null_values.join(", ")
        )));
    }

    let image = broker.controller.image();
    let (target, current) = match resource.resource_type {
        RESOURCE_TOPIC => {
            check_topic_name(&resource.name)?;
            let Some(topic) = image.topic(&resource.name) else {
                return Err(KafkaError::with_message(
                    ResponseError::UnknownTopicOrPartition,
                    format!("The topic '{}' does not exist.", resource.name),
                ));
            };
            (
                ConfigResource::Topic(resource.name.clone()),
                topic.configs.clone(),
            )
        }
        RESOURCE_BROKER => {
            // The empty name is the cluster-wide default; any other name
            // must be this node's id.
            let node_id = if resource.name.is_empty() {
                CLUSTER_DEFAULT_NODE_ID
            } else {
                check_broker_name(broker, &resource.name)?
            };
            check_dynamic_broker_configs(&resource.change, node_id == CLUSTER_DEFAULT_NODE_ID)?;
            (
                ConfigResource::Broker(node_id),
                image.broker_configs(node_id).cloned().unwrap_or_default(),
            )
        }
        other => return Err(unsupported_resource_type(other)),
    };

    let mut set = BTreeMap::new();
    let mut delete = BTreeSet::new();
    match &resource.change {
        Change::Replace(configs) => {
            for (name, value) in configs {
                set.insert(name.clone(), value.clone().expect("checked above"));
            }
            delete.extend(current.keys().filter(|k| !set.contains_key(*k)).cloned());
        }
        Change::Incremental(ops) => {
            for (name, op, value) in ops {
                match *op {
                    OP_SET => {
                        set.insert(name.clone(), value.clone().expect("checked above"));
                    }
                    OP_DELETE => {
                        delete.insert(name.clone());
                    }
                    OP_APPEND | OP_SUBTRACT => {
                        let value = value.as_deref().expect("checked above");
                        let list = list_op(broker, &target, &current, name, *op, value)?;
                        set.insert(name.clone(), list);
                    }
                    other => {
                        return Err(invalid_request(format!("Unknown operations type {other}")));
                    }
                }
            }
        }
    }
    if let ConfigResource::Broker(_) = target {
        check_dynamic_broker_values(&set)?;
    }
    Ok(MetadataCommand::AlterConfigs {
        resource: target,
        set,
        delete,
    })
}

/// Checks the names a change sets on a broker resource as Kafka's
/// `DynamicBrokerConfig.validateConfigs` does: each must be a dynamic
/// broker config, settable at the level asked for (the values are
/// [`check_dynamic_broker_values`]). Kafka answers every such refusal with
/// INVALID_REQUEST, not INVALID_CONFIG (`ConfigAdminManager`,
/// KAFKA-13609), and so does rill.
fn check_dynamic_broker_configs(change: &Change, cluster_default: bool) -> Result<(), KafkaError> {
    let invalid_request =
        |message: String| KafkaError::with_message(ResponseError::InvalidRequest, message);
    let mut per_broker = Vec::new();
    for name in set_names(change) {
        if config::dynamic_broker_config_topic_synonym(name).is_some() {
            continue;
        }
        let def = broker_config::lookup(name).map_err(invalid_request)?;
        if def.scope == Scope::PerBroker {
            per_broker.push(name);
        }
    }
    if cluster_default && !per_broker.is_empty() {
        return Err(invalid_request(format!(
            "Cannot update these configs at default cluster level, broker id must be specified: {}",
            per_broker.join(", ")
        )));
    }
    Ok(())
}

/// Checks the values a change leaves set on a broker resource (after
/// APPEND and SUBTRACT), INVALID_REQUEST as Kafka for a bad one.
fn check_dynamic_broker_values(set: &BTreeMap<String, String>) -> Result<(), KafkaError> {
    for (name, value) in set {
        config::validate_broker_config(name, value).map_err(|error| {
            KafkaError::with_message(ResponseError::InvalidRequest, refusal_message(error))
        })?;
    }
    Ok(())
}

/// A controller config refusal's own words, without the variant's
/// "invalid config: " prefix (the answer's code says that already).
fn refusal_message(error: rill_controller::MetadataError) -> String {
    match error {
        rill_controller::MetadataError::InvalidConfig(message) => message,
        other => other.to_string(),
    }
}

/// The names a change gives a value to (the ones a read-only config must
/// not be among; deleting one is harmless).
fn set_names(change: &Change) -> Vec<&str> {
    match change {
        Change::Replace(configs) => configs.iter().map(|(name, _)| name.as_str()).collect(),
        Change::Incremental(ops) => ops
            .iter()
            .filter(|(_, op, _)| *op != OP_DELETE)
            .map(|(name, _, _)| name.as_str())
            .collect(),
    }
}

/// APPEND or SUBTRACT on a list config: the new value, from the current
/// one or, when unset, the default (Kafka's
/// `ConfigurationControlManager.getParts`).
fn list_op(
    broker: &Broker,
    target: &ConfigResource,
    current: &BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: &str,
) -> Result<String, KafkaError> {
    let op_name = if op == OP_APPEND {
        "APPEND"
    } else {
        "SUBTRACT"
    };
    let (config_type, default) = match target {
        ConfigResource::Topic(_) => match config::topic_config(name) {
            Some(def) => (def.config_type, def.default.to_string()),
            None => {
                return Err(KafkaError::with_message(
                    ResponseError::InvalidConfig,
                    format!("unknown topic config name: {name}"),
                ))
            }
        },
        ConfigResource::Broker(_) => match config::dynamic_broker_config_topic_synonym(name) {
            Some(topic_name) => {
                let def = config::topic_config(topic_name).expect("a topic config");
                let default = log_config_value(&broker.config.log_defaults, topic_name)
                    .unwrap_or_else(|| def.default.to_string());
                (def.config_type, default)
            }
            // rill has no value of its own for the other dynamic configs:
            // a list starts empty.
            None => match broker_config::lookup(name) {
                Ok(def) => (def.config_type, String::new()),
                Err(message) => {
                    return Err(KafkaError::with_message(
                        ResponseError::InvalidRequest,
                        message,
                    ))
                }
            },
        },
    };
    if config_type != ConfigType::List {
        return Err(KafkaError::with_message(
            ResponseError::InvalidConfig,
            format!("Can't {op_name} to key {name} because its type is not LIST."),
        ));
    }
    let base = current.get(name).cloned().unwrap_or(default);
    let mut items: Vec<String> = base
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if op == OP_APPEND {
            if !items.iter().any(|existing| existing == item) {
                items.push(item.to_string());
            }
        } else {
            items.retain(|existing| existing != item);
        }
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rill_controller::config;
    use rill_storage::LogConfig;

    use crate::config::BrokerConfig;
    use crate::topic_config::{log_config, log_config_value};

    /// The defaults DescribeConfigs reports are the ones the log uses.
    #[test]
    fn kafka_defaults_agree_with_the_log_defaults() {
        let defaults = LogConfig::default();
        assert_eq!(BrokerConfig::default().log_defaults, defaults);
        let mut honoured = 0;
        for def in config::topic_configs() {
            if let Some(value) = log_config_value(&defaults, def.name) {
                assert_eq!(value, def.default, "{}", def.name);
                honoured += 1;
            }
        }
        assert_eq!(honoured, 13);
        let all: BTreeMap<String, String> = config::topic_configs()
            .map(|def| (def.name.to_string(), def.default.to_string()))
            .collect();
        assert_eq!(log_config(&defaults, &all), defaults);
    }

    /// The dynamic `log.*` broker configs rill applies: those whose topic
    /// config the log (or, for min.insync.replicas, the replica) honours.
    /// The README lists the same set.
    #[test]
    fn dynamic_broker_configs_applied() {
        let applied: Vec<&str> = config::dynamic_broker_configs()
            .filter(|(_, topic_name)| {
                *topic_name == "min.insync.replicas"
                    || log_config_value(&LogConfig::default(), topic_name).is_some()
            })
            .map(|(broker_name, _)| broker_name)
            .collect();
        assert_eq!(
            applied,
            [
                "log.cleanup.policy",
                "log.cleaner.delete.retention.ms",
                "log.index.interval.bytes",
                "log.cleaner.max.compaction.lag.ms",
                "message.max.bytes",
                "log.message.timestamp.type",
                "log.cleaner.min.cleanable.ratio",
                "log.cleaner.min.compaction.lag.ms",
                "min.insync.replicas",
                "log.retention.bytes",
                "log.retention.ms",
                "log.segment.bytes",
                "log.index.size.max.bytes",
                "log.roll.ms",
            ]
        );
    }

    #[test]
    fn log_config_values_round_trip() {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            segment_ms: 1000,
            retention_ms: -1,
            retention_bytes: 12345,
            cleanup_policy: rill_storage::CleanupPolicy::COMPACT,
            timestamp_type: rill_storage::TimestampType::LogAppendTime,
            min_cleanable_dirty_ratio: 0.01,
            min_compaction_lag_ms: 5,
            max_compaction_lag_ms: 100,
            ..LogConfig::default()
        };
        let values: BTreeMap<String, String> = config::topic_config_names()
            .filter_map(|name| log_config_value(&config, name).map(|v| (name.to_string(), v)))
            .collect();
        assert_eq!(log_config(&LogConfig::default(), &values), config);
    }
}
