//! The configuration's JSON as derived types: every field by its name in the
//! JSON (camelCase, and Higress's `_rules_` and `_match_*_`), unknown fields
//! refused, `null` read as absent (the crate's one rule, `pure::json`). Only shapes
//! and types are checked here; required fields, ranges, blank strings and what
//! fields mean together are checked by the validation in `super`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

use super::{DeregisteredPolicy, StalePolicy};
use crate::pure::json::objects_only;
use crate::pure::polling::nacos::ApiVersion;

/// The settings a scope (the global object, or one rule) may carry. A rule's
/// settings lie over the global ones field by field ([`Settings::over`]).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub nacos: Option<RawNacos>,
    pub service: Option<RawService>,
    pub refresh_interval_ms: Option<Whole>,
    pub max_stale_ms: Option<Whole>,
    pub on_stale: Option<StalePolicy>,
    pub routing: Option<RoutingMode>,
    pub routing_header: Option<String>,
    pub pin_header: Option<String>,
    pub on_deregistered: Option<DeregisteredPolicy>,
    pub reject_status: Option<Whole>,
    pub avoid_failed_ms: Option<Whole>,
    pub max_avoided_percent: Option<Whole>,
    pub enabled: Option<bool>,
}

impl Settings {
    /// These settings over `base`: each field set here replaces `base`'s, `nacos` and
    /// `service` whole, never mixed field by field; a field left out (or `null`)
    /// is `base`'s.
    pub fn over(self, base: &Settings) -> Settings {
        Settings {
            nacos: self.nacos.or_else(|| base.nacos.clone()),
            service: self.service.or_else(|| base.service.clone()),
            refresh_interval_ms: self.refresh_interval_ms.or(base.refresh_interval_ms),
            max_stale_ms: self.max_stale_ms.or(base.max_stale_ms),
            on_stale: self.on_stale.or(base.on_stale),
            routing: self.routing.or(base.routing),
            routing_header: self.routing_header.or_else(|| base.routing_header.clone()),
            pin_header: self.pin_header.or_else(|| base.pin_header.clone()),
            on_deregistered: self.on_deregistered.or(base.on_deregistered),
            reject_status: self.reject_status.or(base.reject_status),
            avoid_failed_ms: self.avoid_failed_ms.or(base.avoid_failed_ms),
            max_avoided_percent: self.max_avoided_percent.or(base.max_avoided_percent),
            enabled: self.enabled.or(base.enabled),
        }
    }
}

/// Declares a struct of the [`Settings`] fields and `$own` fields, read with
/// unknown fields refused, and `split` into its settings and its own fields. The
/// global object and a rule share the settings but neither may carry the other's
/// own fields, which `#[serde(flatten)]` (not usable with `deny_unknown_fields`)
/// cannot say.
macro_rules! scope_object {
    ($(#[$meta:meta])* $name:ident { $($(#[$own_meta:meta])* $own:ident: $own_type:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            nacos: Option<RawNacos>,
            service: Option<RawService>,
            refresh_interval_ms: Option<Whole>,
            max_stale_ms: Option<Whole>,
            on_stale: Option<StalePolicy>,
            routing: Option<RoutingMode>,
            routing_header: Option<String>,
            pin_header: Option<String>,
            on_deregistered: Option<DeregisteredPolicy>,
            reject_status: Option<Whole>,
            avoid_failed_ms: Option<Whole>,
            max_avoided_percent: Option<Whole>,
            enabled: Option<bool>,
            $($(#[$own_meta])* $own: $own_type,)*
        }

        impl $name {
            /// Its settings, and its own fields in the order declared.
            pub fn split(self) -> (Settings, ($($own_type,)*)) {
                let settings = Settings {
                    nacos: self.nacos,
                    service: self.service,
                    refresh_interval_ms: self.refresh_interval_ms,
                    max_stale_ms: self.max_stale_ms,
                    on_stale: self.on_stale,
                    routing: self.routing,
                    routing_header: self.routing_header,
                    pin_header: self.pin_header,
                    on_deregistered: self.on_deregistered,
                    reject_status: self.reject_status,
                    avoid_failed_ms: self.avoid_failed_ms,
                    max_avoided_percent: self.max_avoided_percent,
                    enabled: self.enabled,
                };
                (settings, ($(self.$own,)*))
            }
        }
    };
}

scope_object! {
    /// The whole configuration: the global settings, the rules, `guardNacosRoutes`.
    RawConfig {
        #[serde(rename = "_rules_")]
        rules: Option<Vec<RawRule>>,
        guard_nacos_routes: Option<RawAuto>,
    }
}

scope_object! {
    /// One of `_rules_`: what it matches, and the settings it changes.
    RawRule {
        #[serde(rename = "_match_route_")]
        match_route: Option<Vec<String>>,
        #[serde(rename = "_match_domain_")]
        match_domain: Option<Vec<String>>,
        #[serde(rename = "_match_service_")]
        match_service: Option<Vec<String>>,
        #[serde(rename = "_match_route_prefix_")]
        match_route_prefix: Option<Vec<String>>,
    }
}

/// `nacos`: one server and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct RawNacos {
    pub cluster: Option<String>,
    pub authority: Option<String>,
    pub api_version: Option<ApiVersion>,
    pub namespace_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout_ms: Option<Whole>,
    pub push: Option<RawPush>,
}

/// `nacos.push`.
#[derive(Debug, Clone, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPush {
    pub grpc_cluster: Option<String>,
    pub safety_interval_ms: Option<Whole>,
}

/// `service`: the Nacos service a scope guards, and which of its instances.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub group: Option<String>,
    pub clusters: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `guardNacosRoutes`.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAuto {
    pub groups: Option<Vec<String>>,
    pub namespaces: Option<BTreeMap<String, String>>,
    pub idle_ms: Option<Whole>,
    pub max_services: Option<Whole>,
}

objects_only!(RawConfig, RawRule, RawNacos, RawPush, RawService, RawAuto);

/// `routing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    Higress,
    Header,
}

/// A JSON number that is a whole number from 0 up (`2000.0` is not one); its range
/// is checked by the validation, which knows the field's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number;
        impl Visitor<'_> for Number {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Whole, E> {
                Ok(Whole(number))
            }
        }
        deserializer.deserialize_u64(Number)
    }
}

/// Implements `Deserialize` for an enum read from one of a fixed set of JSON
/// strings, and from nothing else.
macro_rules! words {
    ($name:ty { $($word:literal => $value:expr,)+ }) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(Words(&[$(($word, $value)),+]))
            }
        }
    };
}

words!(StalePolicy {
    "fail_open" => StalePolicy::FailOpen,
    "fail_closed" => StalePolicy::FailClosed,
});
words!(DeregisteredPolicy {
    "reroute" => DeregisteredPolicy::Reroute,
    "reject" => DeregisteredPolicy::Reject,
});
words!(ApiVersion {
    "v1" => ApiVersion::V1,
    "v3" => ApiVersion::V3,
});
words!(RoutingMode {
    "higress" => RoutingMode::Higress,
    "header" => RoutingMode::Header,
});

/// The visitor of [`words!`]: the value of each word.
struct Words<T: 'static>(&'static [(&'static str, T)]);

impl<T: Copy> Visitor<'_> for Words<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of ")?;
        for (index, (word, _)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(word)?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        self.0
            .iter()
            .find(|(word, _)| *word == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}
