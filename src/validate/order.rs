//! Rules of order events: ids are UUIDs, ISO 4217 currency, no negative amounts or
//! quantities, no NUL characters.

use super::{check_version_and_time, invalid, is_iso4217, parse_uuid, InvalidField};
use crate::domain::{OrderEvent, ValidOrder};

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

    /// Postgres text and jsonb cannot hold U+0000; such an event could never be written.
    /// (Checked without allocating: it runs for every event.)
    fn reject_nul_bytes(&self) -> Result<(), InvalidField> {
        let nul = |v: &str| v.contains('\0');
        if nul(&self.order_id) {
            return Err(invalid("order_id", "contains a NUL character"));
        }
        if nul(&self.customer_id) {
            return Err(invalid("customer_id", "contains a NUL character"));
        }
        for (i, item) in self.items.iter().enumerate() {
            for (name, value) in [("sku", &item.sku), ("category_id", &item.category_id)] {
                if nul(value) {
                    return Err(invalid(
                        format!("items[{i}].{name}"),
                        "contains a NUL character",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{sample_order, OrderEvent};
    use crate::validate::MAX_VERSION;

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
