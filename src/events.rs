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
        if !(0..=MAX_VERSION).contains(&self.version) {
            return Err(invalid(
                "version",
                format!(
                    "{} is outside 0..=2^53 (cache version checks compare exactly only up to 2^53)",
                    self.version
                ),
            ));
        }
        if !(0..=MAX_OCCURRED_AT_MS).contains(&self.occurred_at) {
            return Err(invalid(
                "occurred_at",
                format!("{} ms is not between 1970 and 9999", self.occurred_at),
            ));
        }
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
}
