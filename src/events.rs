//! The event types of `schemas/`, as Rust values, and the field rules the schemas cannot say.
//!
//! Validation happens once, right after decoding; an event that fails it is dead-lettered with
//! code `invalid_field` and the field named in the reason.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `io.tenantstream.OrderEvent` (schemas/order_event.avsc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: String,
    pub tenant_id: String,
    pub order_id: String,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: OrderEventType,
    /// Milliseconds since the Unix epoch (timestamp-millis).
    pub occurred_at: i64,
    pub customer_id: String,
    pub currency: String,
    pub total_cents: i64,
    pub items: Vec<LineItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderEventType {
    Created,
    Updated,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderEventType {
    /// The order status this event leaves the order in (stored in `orders.status`).
    pub fn status(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub category_id: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// An order event whose fields passed validation, with its ids parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidOrder {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub event: OrderEvent,
}

/// Why a decoded event is unusable: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, InvalidField> {
    Uuid::parse_str(value).map_err(|_| invalid(field, format!("{value:?} is not a UUID")))
}

impl OrderEvent {
    /// Applies the rules Avro cannot express: ids are UUIDs, ISO 4217 currency, no negative
    /// amounts or quantities.
    pub fn validate(self) -> Result<ValidOrder, InvalidField> {
        self.reject_nul_bytes()?;
        let event_id = parse_uuid("event_id", &self.event_id)?;
        let tenant_id = parse_uuid("tenant_id", &self.tenant_id)?;
        if self.order_id.trim().is_empty() || self.order_id.len() > 200 {
            return Err(invalid("order_id", "must be 1 to 200 characters"));
        }
        check_version_and_time(self.version, self.occurred_at)?;
        if self.customer_id.trim().is_empty() {
            return Err(invalid("customer_id", "must not be empty"));
        }
        if !is_iso4217(&self.currency) {
            return Err(invalid(
                "currency",
                format!("{:?} is not an ISO 4217 code", self.currency),
            ));
        }
        if self.total_cents < 0 {
            return Err(invalid(
                "total_cents",
                format!("{} is negative", self.total_cents),
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            if item.quantity < 0 {
                return Err(invalid(
                    format!("items[{i}].quantity"),
                    format!("{} is negative", item.quantity),
                ));
            }
            if item.unit_price_cents < 0 {
                return Err(invalid(
                    format!("items[{i}].unit_price_cents"),
                    format!("{} is negative", item.unit_price_cents),
                ));
            }
            if item.sku.is_empty() {
                return Err(invalid(format!("items[{i}].sku"), "must not be empty"));
            }
        }
        Ok(ValidOrder {
            event_id,
            tenant_id,
            event: self,
        })
    }
}

impl OrderEvent {
    /// Postgres text and jsonb cannot hold U+0000; such an event could never be written.
    fn reject_nul_bytes(&self) -> Result<(), InvalidField> {
        let mut fields = vec![
            ("order_id".to_owned(), &self.order_id),
            ("customer_id".to_owned(), &self.customer_id),
        ];
        for (i, item) in self.items.iter().enumerate() {
            fields.push((format!("items[{i}].sku"), &item.sku));
            fields.push((format!("items[{i}].category_id"), &item.category_id));
        }
        match fields.into_iter().find(|(_, v)| v.contains('\0')) {
            Some((field, _)) => Err(invalid(field, "contains a NUL character")),
            None => Ok(()),
        }
    }
}

/// `io.tenantstream.ConfigChangeEvent` (schemas/config_change.avsc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigChangeEvent {
    pub event_id: String,
    pub scope: ConfigScope,
    pub tenant_id: Option<String>,
    pub kind: ConfigKind,
    pub key: String,
    /// JSON text; `None` deletes the entry.
    pub value: Option<String>,
    pub version: i64,
    /// Milliseconds since the Unix epoch (timestamp-millis).
    pub occurred_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfigScope {
    Tenant,
    Global,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfigKind {
    TenantProfile,
    Setting,
    SlaPolicy,
    Category,
}

/// What a configuration change is about, with its ids parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigTarget {
    /// The tenant's profile (one per tenant).
    Profile { tenant: Uuid },
    /// One per-tenant key/value entry (a setting or an SLA policy).
    Entry {
        tenant: Uuid,
        map: TenantMap,
        key: String,
    },
    /// One category of the shared reference data.
    Category { id: String },
}

impl ConfigTarget {
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Self::Profile { tenant } | Self::Entry { tenant, .. } => Some(*tenant),
            Self::Category { .. } => None,
        }
    }
}

/// The per-tenant key/value maps: each is a Postgres table and a Redis hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantMap {
    Settings,
    SlaPolicies,
}

impl TenantMap {
    /// The name used for it in `cache_outbox.kind` and in Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            Self::Settings => "config",
            Self::SlaPolicies => "sla",
        }
    }
}

/// A configuration change whose fields passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig {
    pub event_id: Uuid,
    pub target: ConfigTarget,
    pub version: i64,
    pub occurred_at: i64,
    /// Normalised JSON text; `None` deletes the entry.
    pub value: Option<String>,
}

/// The JSON of a TENANT_PROFILE value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantProfile {
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

/// The JSON of an SLA_POLICY value: how late an event may be processed, and how long an order
/// may take from one status to the next (keys `FROM->TO`, e.g. `CREATED->CONFIRMED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicy {
    pub lag_threshold_ms: u64,
    #[serde(default)]
    pub deadlines_ms: std::collections::BTreeMap<String, u64>,
}

impl SlaPolicy {
    fn check(&self) -> Result<(), String> {
        if self.lag_threshold_ms == 0 || self.lag_threshold_ms > MAX_VERSION as u64 {
            return Err("lag_threshold_ms must be between 1 and 2^53".into());
        }
        for (transition, ms) in &self.deadlines_ms {
            let parsed = transition.split_once("->").and_then(|(from, to)| {
                let from: OrderEventType = serde_json::from_value(from.into()).ok()?;
                let to: OrderEventType = serde_json::from_value(to.into()).ok()?;
                (from != to).then_some(())
            });
            if parsed.is_none() {
                return Err(format!(
                    "deadlines_ms key {transition:?} is not FROM->TO of two different order \
                     event types (e.g. CREATED->CONFIRMED)"
                ));
            }
            if *ms == 0 || *ms > MAX_VERSION as u64 {
                return Err(format!(
                    "deadlines_ms[{transition:?}] must be between 1 and 2^53"
                ));
            }
        }
        Ok(())
    }
}

/// Largest accepted configuration value, in bytes of JSON.
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;

impl ConfigChangeEvent {
    /// Applies the rules Avro cannot express: scope and tenant agree, the kind fits the scope,
    /// values are JSON of the kind's shape.
    pub fn validate(self) -> Result<ValidConfig, InvalidField> {
        let event_id = parse_uuid("event_id", &self.event_id)?;
        let tenant = match (self.scope, &self.tenant_id) {
            (ConfigScope::Tenant, Some(id)) => Some(parse_uuid("tenant_id", id)?),
            (ConfigScope::Tenant, None) => {
                return Err(invalid("tenant_id", "must be set when scope is TENANT"))
            }
            (ConfigScope::Global, Some(_)) => {
                return Err(invalid("tenant_id", "must be null when scope is GLOBAL"))
            }
            (ConfigScope::Global, None) => None,
        };
        if self.key.is_empty() || self.key.len() > 200 || self.key.contains('\0') {
            return Err(invalid("key", "must be 1 to 200 characters without NUL"));
        }
        check_version_and_time(self.version, self.occurred_at)?;
        if self.version < 1 {
            // 0 is the version of "no profile yet" (tenants.profile_version).
            return Err(invalid("version", "must be at least 1"));
        }
        let target = match (self.kind, tenant) {
            (ConfigKind::Category, None) => ConfigTarget::Category { id: self.key },
            (ConfigKind::Category, Some(_)) => {
                return Err(invalid(
                    "scope",
                    "CATEGORY is shared data: scope must be GLOBAL",
                ))
            }
            (_, None) => {
                return Err(invalid(
                    "scope",
                    format!("{:?} is per tenant: scope must be TENANT", self.kind),
                ))
            }
            (ConfigKind::TenantProfile, Some(tenant)) => ConfigTarget::Profile { tenant },
            (ConfigKind::Setting, Some(tenant)) => ConfigTarget::Entry {
                tenant,
                map: TenantMap::Settings,
                key: self.key,
            },
            (ConfigKind::SlaPolicy, Some(tenant)) => ConfigTarget::Entry {
                tenant,
                map: TenantMap::SlaPolicies,
                key: self.key,
            },
        };
        let value = match self.value {
            None if matches!(target, ConfigTarget::Profile { .. }) => {
                return Err(invalid(
                    "value",
                    "a tenant profile cannot be deleted; set its status to \"suspended\"",
                ))
            }
            None => None,
            Some(text) => Some(normalise_value(self.kind, &text)?),
        };
        Ok(ValidConfig {
            event_id,
            target,
            version: self.version,
            occurred_at: self.occurred_at,
            value,
        })
    }
}

/// Parses the value as JSON, checks the kind's shape, and returns compact JSON text.
fn normalise_value(kind: ConfigKind, text: &str) -> Result<String, InvalidField> {
    if text.len() > MAX_CONFIG_VALUE_BYTES {
        return Err(invalid(
            "value",
            format!(
                "{} bytes is over the {MAX_CONFIG_VALUE_BYTES}-byte limit",
                text.len()
            ),
        ));
    }
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid("value", format!("is not JSON: {e}")))?;
    if json_has_nul(&json) {
        return Err(invalid("value", "contains a NUL character"));
    }
    let shape = |e: serde_json::Error| invalid("value", e.to_string());
    match kind {
        ConfigKind::TenantProfile => {
            let profile: TenantProfile = serde_json::from_value(json.clone()).map_err(shape)?;
            if profile.name.trim().is_empty() || profile.name.len() > 200 {
                return Err(invalid("value.name", "must be 1 to 200 characters"));
            }
            if profile.tier.trim().is_empty() || profile.tier.len() > 50 {
                return Err(invalid("value.tier", "must be 1 to 50 characters"));
            }
        }
        ConfigKind::SlaPolicy => {
            let policy: SlaPolicy = serde_json::from_value(json.clone()).map_err(shape)?;
            policy.check().map_err(|reason| invalid("value", reason))?;
        }
        ConfigKind::Category if !json.is_object() => {
            return Err(invalid("value", "a category must be a JSON object"))
        }
        ConfigKind::Category | ConfigKind::Setting => {}
    }
    Ok(json.to_string())
}

/// Postgres jsonb cannot hold U+0000, which JSON text can spell as `\u0000`.
fn json_has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v))
        }
        _ => false,
    }
}

fn check_version_and_time(version: i64, occurred_at: i64) -> Result<(), InvalidField> {
    if !(0..=MAX_VERSION).contains(&version) {
        return Err(invalid(
            "version",
            format!(
                "{version} is outside 0..=2^53 (cache version checks compare exactly only up to 2^53)"
            ),
        ));
    }
    if !(0..=MAX_OCCURRED_AT_MS).contains(&occurred_at) {
        return Err(invalid(
            "occurred_at",
            format!("{occurred_at} ms is not between 1970 and 9999"),
        ));
    }
    Ok(())
}

/// An event type of one topic: its wire shape (following its reader schema) and its valid form.
pub trait Event: Sized + Send + Sync {
    /// The serde shape of the reader schema.
    type Wire: serde::de::DeserializeOwned;
    /// The reader schema's file in the schemas folder.
    const SCHEMA_FILE: &'static str;

    fn validate(wire: Self::Wire) -> Result<Self, InvalidField>;

    /// The tenant whose rows the event writes (`None`: shared data).
    fn tenant(&self) -> Option<Uuid>;

    /// Whether the event itself makes its tenant a registered one (a profile does).
    fn registers_tenant(&self) -> bool;

    /// When the event happened (ms since the Unix epoch), for end-to-end latency.
    fn occurred_at(&self) -> i64;

    /// The cached value the event changes.
    fn cache_ref(&self) -> crate::sink::CacheRef;
}

/// The tenants of `events` that must already be registered (strict tenants): those that no
/// event among them registers itself. Sorted, each once.
pub fn unregistered_tenants<'a, E: Event + 'a>(
    events: impl IntoIterator<Item = &'a E>,
) -> Vec<Uuid> {
    let events: Vec<&E> = events.into_iter().collect();
    let registering: std::collections::HashSet<Uuid> = events
        .iter()
        .filter(|e| e.registers_tenant())
        .filter_map(|e| e.tenant())
        .collect();
    let mut tenants: Vec<Uuid> = events
        .iter()
        .filter_map(|e| e.tenant())
        .filter(|t| !registering.contains(t))
        .collect();
    tenants.sort();
    tenants.dedup();
    tenants
}

impl Event for ValidOrder {
    type Wire = OrderEvent;
    const SCHEMA_FILE: &'static str = "order_event.avsc";

    fn validate(wire: OrderEvent) -> Result<Self, InvalidField> {
        wire.validate()
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }

    fn registers_tenant(&self) -> bool {
        false
    }

    fn occurred_at(&self) -> i64 {
        self.event.occurred_at
    }

    fn cache_ref(&self) -> crate::sink::CacheRef {
        crate::sink::CacheRef::Order {
            tenant: self.tenant_id,
            order_id: self.event.order_id.clone(),
        }
    }
}

impl Event for ValidConfig {
    type Wire = ConfigChangeEvent;
    const SCHEMA_FILE: &'static str = "config_change.avsc";

    fn validate(wire: ConfigChangeEvent) -> Result<Self, InvalidField> {
        wire.validate()
    }

    fn tenant(&self) -> Option<Uuid> {
        self.target.tenant()
    }

    fn registers_tenant(&self) -> bool {
        matches!(self.target, ConfigTarget::Profile { .. })
    }

    fn occurred_at(&self) -> i64 {
        self.occurred_at
    }

    fn cache_ref(&self) -> crate::sink::CacheRef {
        crate::sink::CacheRef::Config(self.target.clone())
    }
}

/// Versions above 2^53 lose precision in Redis' Lua numbers, where cache writes are compared.
pub const MAX_VERSION: i64 = 1 << 53;

/// 9999-12-31T23:59:59.999Z: Postgres timestamps hold no later time.
const MAX_OCCURRED_AT_MS: i64 = 253_402_300_799_999;

/// Active ISO 4217 alphabetic codes.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

pub fn is_iso4217(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

/// A valid example event (fixed ids), for tests and examples.
pub fn sample_order() -> OrderEvent {
    OrderEvent {
        event_id: "0b7c6f4e-8f7a-4c61-9d0e-2f3b1a0c9d11".into(),
        tenant_id: "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b".into(),
        order_id: "o-1".into(),
        version: 1,
        event_type: OrderEventType::Created,
        occurred_at: 1_700_000_000_000,
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        total_cents: 1200,
        items: vec![LineItem {
            sku: "sku-1".into(),
            category_id: "cat-1".into(),
            quantity: 2,
            unit_price_cents: 600,
        }],
    }
}

/// A valid example configuration change (a setting of the sample order's tenant).
pub fn sample_config() -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: "5a0e3c1d-2b4f-4d6a-9e8f-7a6b5c4d3e2f".into(),
        scope: ConfigScope::Tenant,
        tenant_id: Some(sample_order().tenant_id),
        kind: ConfigKind::Setting,
        key: "checkout.max_items".into(),
        value: Some("{\"limit\": 50}".into()),
        version: 1,
        occurred_at: 1_700_000_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_list_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(is_iso4217("EUR") && !is_iso4217("XYZ") && !is_iso4217("eur"));
    }

    #[test]
    fn valid_event_passes() {
        assert!(sample_order().validate().is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = fn(&mut OrderEvent);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.tenant_id = "not-a-uuid".into(), "tenant_id"),
            (|e| e.event_id = "".into(), "event_id"),
            (|e| e.currency = "XYZ".into(), "currency"),
            (|e| e.items[0].quantity = -1, "items[0].quantity"),
            (|e| e.total_cents = -5, "total_cents"),
            (|e| e.order_id = " ".into(), "order_id"),
            (|e| e.occurred_at = i64::MAX, "occurred_at"),
            (|e| e.occurred_at = -1, "occurred_at"),
            (|e| e.version = MAX_VERSION + 1, "version"),
        ];
        for (mutate, field) in cases {
            let mut e = sample_order();
            mutate(&mut e);
            assert_eq!(e.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn config_rules_name_their_field() {
        type Mutation = fn(&mut ConfigChangeEvent);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.tenant_id = None, "tenant_id"),
            (|e| e.scope = ConfigScope::Global, "tenant_id"),
            (|e| e.kind = ConfigKind::Category, "scope"),
            (|e| e.key = String::new(), "key"),
            (|e| e.value = Some("{not json".into()), "value"),
            (|e| e.value = Some("\"a\\u0000b\"".into()), "value"),
            (|e| e.version = -1, "version"),
            (|e| e.version = 0, "version"),
            (
                |e| {
                    e.kind = ConfigKind::TenantProfile;
                    e.value = None;
                },
                "value",
            ),
            (
                |e| {
                    e.kind = ConfigKind::TenantProfile;
                    e.value = Some(r#"{"name":"A","tier":"gold","status":"gone"}"#.into());
                },
                "value",
            ),
            (
                |e| {
                    e.kind = ConfigKind::SlaPolicy;
                    e.value = Some(
                        r#"{"lag_threshold_ms":10,"deadlines_ms":{"CREATED->NOPE":5}}"#.into(),
                    );
                },
                "value",
            ),
            (
                |e| {
                    e.scope = ConfigScope::Global;
                    e.tenant_id = None;
                    e.kind = ConfigKind::Category;
                    e.value = Some("[1]".into());
                },
                "value",
            ),
        ];
        for (mutate, field) in cases {
            let mut e = sample_config();
            mutate(&mut e);
            let err = e.clone().validate().unwrap_err();
            assert_eq!(err.field, field, "{e:?}: {err}");
        }
    }

    #[test]
    fn config_values_are_normalised_and_targets_parsed() {
        let valid = sample_config().validate().unwrap();
        assert_eq!(valid.value.as_deref(), Some(r#"{"limit":50}"#));
        assert!(matches!(
            valid.target,
            ConfigTarget::Entry { map: TenantMap::Settings, ref key, .. } if key == "checkout.max_items"
        ));
        let mut policy = sample_config();
        policy.kind = ConfigKind::SlaPolicy;
        policy.value = Some(
            r#"{"lag_threshold_ms":60000,"deadlines_ms":{"CREATED->CONFIRMED":3600000}}"#.into(),
        );
        assert!(policy.validate().is_ok());
        let mut delete = sample_config();
        delete.value = None;
        assert_eq!(delete.validate().unwrap().value, None);
    }
}
