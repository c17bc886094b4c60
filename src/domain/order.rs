//! Order events (`schemas/order_event.avsc`): the wire shape and its valid form.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cached::CacheRef;
use super::event::Event;

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

impl Event for ValidOrder {
    type Wire = OrderEvent;
    const SCHEMA_FILE: &'static str = "order_event.avsc";

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }

    fn registers_tenant(&self) -> bool {
        false
    }

    fn occurred_at(&self) -> i64 {
        self.event.occurred_at
    }

    fn cache_ref(&self) -> CacheRef {
        CacheRef::Order {
            tenant: self.tenant_id,
            order_id: self.event.order_id.clone(),
        }
    }
}
