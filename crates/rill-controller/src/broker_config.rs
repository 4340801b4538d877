//! Kafka's dynamic broker configs other than the `log.*` topic defaults
//! (those are `config::dynamic_broker_configs`): the names AlterConfigs and
//! IncrementalAlterConfigs accept on a broker resource, the type of each,
//! and the level it may be set at. The list is Kafka's
//! `DynamicBrokerConfig.AllDynamicConfigs` (listener SSL and SASL settings,
//! connection limits, thread pools, the log cleaner, remote storage,
//! producer state, metrics reporters, config providers, the group and share
//! coordinators' buffers), with `PerBrokerConfigs` for the level.
//!
//! A dynamic broker config is set on one broker (the resource named by its
//! node id) or as the cluster-wide default (the resource with the empty
//! name), which every broker uses where it has no value of its own. Kafka
//! refuses, at the default level, the settings that only make sense per
//! broker (a keystore path, the SASL mechanisms of a listener), and the
//! SSL keystore and truststore settings without a listener prefix
//! (`listener.name.<listener>.ssl.keystore.location`).
//!
//! The controller stores every one of them; which of them the broker
//! applies is the broker's business (rill's README lists them).

use rill_types::NodeId;

use crate::config::{validate_value, ConfigType, Kind};
use crate::state::MetadataError;

/// The node id under which the controller stores the cluster-wide default
/// broker configs (Kafka's broker resource with the empty name). No broker
/// has it: node ids are not negative.
pub const CLUSTER_DEFAULT_NODE_ID: NodeId = -1;

/// Where a dynamic broker config may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On one broker only (Kafka's `PerBrokerConfigs`): not as the
    /// cluster-wide default.
    PerBroker,
    /// On one broker or as the cluster-wide default.
    ClusterWide,
}

/// Whether a config may, or must, carry a `listener.name.<listener>.`
/// prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// A broker-wide setting only.
    None,
    /// Broker-wide, or for one listener.
    Allowed,
    /// For one listener only (Kafka's `DynamicSecurityConfigs`, the SSL
    /// key and trust stores).
    Required,
}

/// One dynamic broker config.
#[derive(Debug, Clone, Copy)]
struct Setting {
    name: &'static str,
    kind: Kind,
    /// Kafka's default value; `None` for null (no value).
    default: Option<&'static str>,
    scope: Scope,
    prefix: Prefix,
    /// A password (Kafka's `ConfigDef.Type.PASSWORD`): DescribeConfigs
    /// shows no value.
    sensitive: bool,
}

const fn setting(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    scope: Scope,
    prefix: Prefix,
) -> Setting {
    Setting {
        name,
        kind,
        default,
        scope,
        prefix,
        sensitive: false,
    }
}

const fn password(name: &'static str, prefix: Prefix) -> Setting {
    Setting {
        name,
        kind: Kind::Any,
        default: None,
        scope: Scope::PerBroker,
        prefix,
        sensitive: true,
    }
}

use Prefix::{Allowed, Required};
use Scope::{ClusterWide, PerBroker};

/// Kafka's dynamic broker configs, other than the `log.*` topic defaults,
/// sorted by name.
const SETTINGS: &[Setting] = &[
    setting(
        "background.threads",
        Kind::Int(1),
        Some("10"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "config.providers",
        Kind::AnyList,
        Some(""),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "follower.fetch.last.tiered.offset.enable",
        Kind::Bool,
        Some("false"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "group.coordinator.cached.buffer.max.bytes",
        Kind::Int(524_288),
        Some("1048588"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "listener.security.protocol.map",
        Kind::Any,
        Some("SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT"),
        PerBroker,
        Allowed,
    ),
    setting(
        "listeners",
        Kind::AnyList,
        Some("PLAINTEXT://:9092"),
        PerBroker,
        Allowed,
    ),
    setting(
        "log.cleaner.backoff.ms",
        Kind::Long(0),
        Some("15000"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "log.cleaner.dedupe.buffer.size",
        Kind::Long(0),
        Some("134217728"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "log.cleaner.io.buffer.load.factor",
        Kind::Double(0.0, f64::MAX),
        Some("0.9"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "log.cleaner.io.buffer.size",
        Kind::Int(0),
        Some("524288"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "log.cleaner.io.max.bytes.per.second",
        Kind::Double(f64::MIN, f64::MAX),
        Some("1.7976931348623157E308"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "log.cleaner.threads",
        Kind::Int(0),
        Some("1"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "max.connection.creation.rate",
        Kind::Int(0),
        Some("2147483647"),
        ClusterWide,
        Allowed,
    ),
    setting(
        "max.connections",
        Kind::Int(0),
        Some("2147483647"),
        ClusterWide,
        Allowed,
    ),
    setting(
        "max.connections.per.ip",
        Kind::Int(0),
        Some("2147483647"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "max.connections.per.ip.overrides",
        Kind::Any,
        Some(""),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "metric.reporters",
        Kind::AnyList,
        Some("org.apache.kafka.common.metrics.JmxReporter"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "num.io.threads",
        Kind::Int(1),
        Some("8"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "num.network.threads",
        Kind::Int(1),
        Some("3"),
        ClusterWide,
        Allowed,
    ),
    setting(
        "num.recovery.threads.per.data.dir",
        Kind::Int(1),
        Some("2"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "num.replica.fetchers",
        Kind::Int(1),
        Some("1"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "principal.builder.class",
        Kind::Any,
        Some("org.apache.kafka.common.security.authenticator.DefaultKafkaPrincipalBuilder"),
        PerBroker,
        Allowed,
    ),
    setting(
        "producer.id.expiration.ms",
        Kind::Int(1),
        Some("86400000"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.fetch.max.wait.ms",
        Kind::Int(1),
        Some("500"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.list.offsets.request.timeout.ms",
        Kind::Long(1),
        Some("30000"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.index.file.cache.total.size.bytes",
        Kind::Long(1),
        Some("1073741824"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.manager.copier.thread.pool.size",
        Kind::Int(1),
        Some("10"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.manager.copy.max.bytes.per.second",
        Kind::Long(1),
        Some("9223372036854775807"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.manager.expiration.thread.pool.size",
        Kind::Int(1),
        Some("10"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.manager.fetch.max.bytes.per.second",
        Kind::Long(1),
        Some("9223372036854775807"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.manager.follower.thread.pool.size",
        Kind::Int(1),
        Some("2"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "remote.log.reader.threads",
        Kind::Int(1),
        Some("10"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "sasl.enabled.mechanisms",
        Kind::AnyList,
        Some("GSSAPI"),
        PerBroker,
        Allowed,
    ),
    password("sasl.jaas.config", Allowed),
    setting(
        "sasl.kerberos.kinit.cmd",
        Kind::Any,
        Some("/usr/bin/kinit"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.kerberos.min.time.before.relogin",
        Kind::Long(i64::MIN),
        Some("60000"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.kerberos.principal.to.local.rules",
        Kind::AnyList,
        Some("DEFAULT"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.kerberos.service.name",
        Kind::Any,
        None,
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.kerberos.ticket.renew.jitter",
        Kind::Double(f64::MIN, f64::MAX),
        Some("0.05"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.kerberos.ticket.renew.window.factor",
        Kind::Double(f64::MIN, f64::MAX),
        Some("0.8"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.login.refresh.buffer.seconds",
        Kind::IntIn(0, 3600),
        Some("300"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.login.refresh.min.period.seconds",
        Kind::IntIn(0, 900),
        Some("60"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.login.refresh.window.factor",
        Kind::Double(0.5, 1.0),
        Some("0.8"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.login.refresh.window.jitter",
        Kind::Double(0.0, 0.25),
        Some("0.05"),
        PerBroker,
        Allowed,
    ),
    setting(
        "sasl.mechanism.inter.broker.protocol",
        Kind::Any,
        Some("GSSAPI"),
        PerBroker,
        Allowed,
    ),
    setting(
        "share.coordinator.cached.buffer.max.bytes",
        Kind::Int(524_288),
        Some("1048588"),
        ClusterWide,
        Prefix::None,
    ),
    setting(
        "ssl.cipher.suites",
        Kind::AnyList,
        Some(""),
        PerBroker,
        Allowed,
    ),
    setting(
        "ssl.client.auth",
        Kind::OneOf(&["required", "requested", "none"]),
        Some("none"),
        PerBroker,
        Allowed,
    ),
    setting(
        "ssl.enabled.protocols",
        Kind::AnyList,
        Some("TLSv1.2,TLSv1.3"),
        PerBroker,
        Allowed,
    ),
    setting(
        "ssl.endpoint.identification.algorithm",
        Kind::Any,
        Some("https"),
        PerBroker,
        Allowed,
    ),
    setting(
        "ssl.engine.factory.class",
        Kind::Any,
        None,
        PerBroker,
        Allowed,
    ),
    password("ssl.key.password", Required),
    setting(
        "ssl.keymanager.algorithm",
        Kind::Any,
        Some("SunX509"),
        PerBroker,
        Allowed,
    ),
    password("ssl.keystore.certificate.chain", Required),
    password("ssl.keystore.key", Required),
    setting(
        "ssl.keystore.location",
        Kind::Any,
        None,
        PerBroker,
        Required,
    ),
    password("ssl.keystore.password", Required),
    setting(
        "ssl.keystore.type",
        Kind::Any,
        Some("JKS"),
        PerBroker,
        Required,
    ),
    setting(
        "ssl.protocol",
        Kind::Any,
        Some("TLSv1.3"),
        PerBroker,
        Allowed,
    ),
    setting("ssl.provider", Kind::Any, None, PerBroker, Allowed),
    setting(
        "ssl.secure.random.implementation",
        Kind::Any,
        None,
        PerBroker,
        Allowed,
    ),
    setting(
        "ssl.trustmanager.algorithm",
        Kind::Any,
        Some("PKIX"),
        PerBroker,
        Allowed,
    ),
    password("ssl.truststore.certificates", Required),
    setting(
        "ssl.truststore.location",
        Kind::Any,
        None,
        PerBroker,
        Required,
    ),
    password("ssl.truststore.password", Required),
    setting(
        "ssl.truststore.type",
        Kind::Any,
        Some("JKS"),
        PerBroker,
        Required,
    ),
    setting(
        "transaction.partition.verification.enable",
        Kind::Bool,
        Some("true"),
        ClusterWide,
        Prefix::None,
    ),
];

/// The SASL settings a listener sets per mechanism
/// (`listener.name.<listener>.<mechanism>.sasl.jaas.config`; Kafka's
/// `ListenerMechanismConfigs`).
const MECHANISM_SETTINGS: &[(&str, Kind)] = &[
    ("connections.max.reauth.ms", Kind::Long(i64::MIN)),
    ("sasl.jaas.config", Kind::Any),
    ("sasl.login.callback.handler.class", Kind::Any),
    ("sasl.login.class", Kind::Any),
    ("sasl.server.callback.handler.class", Kind::Any),
];

/// What a dynamic broker config is, once its listener prefix is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicBrokerConfig {
    pub config_type: ConfigType,
    /// Kafka's default value (`None`: null, or a listener's own setting,
    /// which has no default of its own).
    pub default: Option<&'static str>,
    pub scope: Scope,
    pub sensitive: bool,
}

fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS
        .binary_search_by(|setting| setting.name.cmp(name))
        .ok()
        .map(|i| &SETTINGS[i])
}

/// The setting a name stands for, with its kind: a plain name, or
/// `listener.name.<listener>.<setting>` for a setting a listener may set,
/// or `listener.name.<listener>.<mechanism>.<setting>` for a SASL
/// mechanism's setting. `Err` says why the name is refused.
fn resolve(name: &str) -> Result<(Kind, DynamicBrokerConfig), String> {
    let Some(rest) = name.strip_prefix("listener.name.") else {
        let Some(setting) = find(name) else {
            return Err(format!("Cannot update these configs dynamically: {name}"));
        };
        if setting.prefix == Required {
            return Err(format!(
                "These security configs can be dynamically updated only per-listener using the listener prefix: {name}"
            ));
        }
        return Ok((setting.kind, describe(setting)));
    };
    let unknown = || format!("{name} is not a listener config that can be updated dynamically");
    let Some((listener, base)) = rest.split_once('.') else {
        return Err(unknown());
    };
    if listener.is_empty() {
        return Err(unknown());
    }
    if let Some(setting) = find(base).filter(|setting| setting.prefix != Prefix::None) {
        let config = DynamicBrokerConfig {
            default: None,
            ..describe(setting)
        };
        return Ok((setting.kind, config));
    }
    // `<mechanism>.<setting>`: the mechanism's name may itself hold dots
    // only in theory; Kafka matches the setting at the end of the name.
    MECHANISM_SETTINGS
        .iter()
        .find(|(setting, _)| {
            base.strip_suffix(setting)
                .and_then(|mechanism| mechanism.strip_suffix('.'))
                .is_some_and(|mechanism| !mechanism.is_empty())
        })
        .map(|(setting, kind)| {
            (
                *kind,
                DynamicBrokerConfig {
                    config_type: kind.config_type(),
                    default: None,
                    scope: PerBroker,
                    sensitive: *setting == "sasl.jaas.config",
                },
            )
        })
        .ok_or_else(unknown)
}

fn describe(setting: &Setting) -> DynamicBrokerConfig {
    DynamicBrokerConfig {
        config_type: setting.kind.config_type(),
        default: setting.default,
        scope: setting.scope,
        sensitive: setting.sensitive,
    }
}

/// The dynamic broker config called `name` (other than a `log.*` topic
/// default), if Kafka has one; `Err` says, in Kafka's words, why the name
/// cannot be changed at run time.
pub fn lookup(name: &str) -> Result<DynamicBrokerConfig, String> {
    resolve(name).map(|(_, config)| config)
}

/// Checks a value for the dynamic broker config `name` (other than a
/// `log.*` topic default): the name must be one, the value of its type.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let (kind, _) = resolve(name)?;
    validate_value(name, kind, value).map_err(|error| match error {
        MetadataError::InvalidConfig(message) => message,
        other => other.to_string(),
    })
}

/// Kafka's dynamic broker configs other than the `log.*` topic defaults,
/// without listener prefixes, sorted by name: the ones DescribeConfigs
/// lists for a broker whether set or not. The listener-only ones (the SSL
/// key and trust stores) are listed only once set for a listener.
pub fn broker_wide() -> impl Iterator<Item = (&'static str, DynamicBrokerConfig)> {
    SETTINGS
        .iter()
        .filter(|setting| setting.prefix != Required)
        .map(|setting| (setting.name, describe(setting)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(SETTINGS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn defaults_are_valid_values() {
        for setting in SETTINGS {
            if let Some(default) = setting.default {
                assert_eq!(
                    validate_value(setting.name, setting.kind, default),
                    Ok(()),
                    "{}",
                    setting.name
                );
            }
        }
    }

    #[test]
    fn accepts_kafkas_dynamic_broker_configs() {
        for (name, value) in [
            ("sasl.kerberos.min.time.before.relogin", "60000"),
            ("log.cleaner.threads", "2"),
            ("num.io.threads", "16"),
            ("num.network.threads", "4"),
            ("num.replica.fetchers", "2"),
            ("max.connections", "1000"),
            ("max.connections.per.ip.overrides", "127.0.0.1:10"),
            ("ssl.client.auth", "required"),
            ("listener.name.plaintext.ssl.keystore.location", "/k.jks"),
            (
                "listener.name.sasl_ssl.plain.sasl.jaas.config",
                "x required;",
            ),
            ("listener.name.plaintext.max.connections", "10"),
        ] {
            assert_eq!(validate(name, value), Ok(()), "{name}={value}");
        }
        assert_eq!(lookup("log.cleaner.threads").unwrap().scope, ClusterWide);
        assert_eq!(
            lookup("sasl.kerberos.min.time.before.relogin")
                .unwrap()
                .scope,
            PerBroker
        );
        assert!(
            lookup("listener.name.x.ssl.key.password")
                .unwrap()
                .sensitive
        );
    }

    #[test]
    fn refuses_what_kafka_refuses() {
        for (name, value) in [
            // Read at start-up only.
            ("broker.id", "2"),
            ("log.dirs", "/tmp"),
            ("num.partitions", "3"),
            ("log.roll.hours", "1"),
            // Only per listener.
            ("ssl.keystore.location", "/k.jks"),
            ("ssl.truststore.password", "secret"),
            // A listener prefix on a setting no listener has.
            ("listener.name.plaintext.num.io.threads", "4"),
            ("listener.name..ssl.keystore.location", "/k.jks"),
            // Wrong types and bounds.
            ("log.cleaner.threads", "many"),
            ("num.io.threads", "0"),
            ("ssl.client.auth", "always"),
            ("sasl.login.refresh.window.jitter", "0.5"),
        ] {
            assert!(validate(name, value).is_err(), "{name}={value}");
        }
        assert_eq!(
            validate("log.cleaner.threads", "many"),
            Err(
                "invalid value \"many\" for configuration log.cleaner.threads: expected a 32-bit integer"
                    .to_string()
            )
        );
    }
}
