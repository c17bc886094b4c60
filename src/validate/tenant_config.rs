//! Rules of configuration changes: scope and tenant agree, the kind fits the scope, values are
//! JSON of the kind's shape, at most [`MAX_CONFIG_VALUE_BYTES`], without NUL characters.

use super::{check_version_and_time, invalid, parse_uuid, InvalidField, MAX_VERSION};
use crate::domain::{
    ConfigChangeEvent, ConfigKind, ConfigScope, ConfigTarget, SlaPolicy, TenantMap, TenantProfile,
    Transition, ValidConfig,
};

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
    let stored = jsonb_text_len(&json);
    if stored > MAX_CONFIG_VALUE_BYTES {
        return Err(invalid(
            "value",
            format!(
                "stored as jsonb it takes up to {stored} bytes (numbers are written out in full), \
                 over the {MAX_CONFIG_VALUE_BYTES}-byte limit"
            ),
        ));
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
            check_sla_policy(&policy).map_err(|reason| invalid("value", reason))?;
        }
        ConfigKind::Category if !json.is_object() => {
            return Err(invalid("value", "a category must be a JSON object"))
        }
        ConfigKind::Category | ConfigKind::Setting => {}
    }
    Ok(json.to_string())
}

/// A policy given as JSON text (the worker's global default): the same rules as an SLA_POLICY
/// entry. Returns the policy as JSON, or why it is not one.
pub fn parse_sla_policy(text: &str) -> Result<serde_json::Value, String> {
    let policy: SlaPolicy = serde_json::from_str(text).map_err(|e| {
        format!("{e}; expected {{\"lag_threshold_ms\": …, \"deadlines_ms\": {{\"CREATED->CONFIRMED\": …}}}} or none")
    })?;
    check_sla_policy(&policy)?;
    Ok(serde_json::to_value(policy).expect("a policy is JSON"))
}

/// Positive milliseconds (up to 2^53), transitions that step forward in an order's life.
fn check_sla_policy(policy: &SlaPolicy) -> Result<(), String> {
    if policy.lag_threshold_ms == 0 || policy.lag_threshold_ms > MAX_VERSION as u64 {
        return Err("lag_threshold_ms must be between 1 and 2^53".into());
    }
    for (transition, ms) in &policy.deadlines_ms {
        if Transition::parse(transition).is_none() {
            return Err(format!(
                "deadlines_ms key {transition:?} is not FROM->TO with TO after FROM in \
                 CREATED, CONFIRMED, SHIPPED, DELIVERED (e.g. CREATED->CONFIRMED)"
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

/// An upper bound of the length of Postgres' text of `value` as jsonb, which is what is stored,
/// returned and cached: `", "` and `": "` between elements, and numbers without an exponent
/// (`1e300` is 301 digits there).
fn jsonb_text_len(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    let separators = |n: usize| 2 * n.saturating_sub(1);
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => {
            let text = n.to_string();
            let exponent = text
                .split_once(['e', 'E'])
                .and_then(|(_, e)| e.parse::<i64>().ok())
                .map_or(0, |e| e.unsigned_abs() as usize);
            text.len() + exponent + 2
        }
        Value::String(s) => quoted_len(s),
        Value::Array(items) => {
            2 + separators(items.len()) + items.iter().map(jsonb_text_len).sum::<usize>()
        }
        Value::Object(map) => {
            let entries: usize = map
                .iter()
                .map(|(k, v)| quoted_len(k) + 2 + jsonb_text_len(v))
                .sum();
            2 + separators(map.len()) + entries
        }
    }
}

/// The length of `s` as a JSON string (quotes and escapes included).
fn quoted_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() * 6 + 2, |quoted| quoted.len())
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

#[cfg(test)]
mod tests {
    use crate::domain::{
        sample_config, ConfigChangeEvent, ConfigKind, ConfigScope, ConfigTarget, TenantMap,
    };

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
    fn values_are_bounded_by_their_size_as_stored_not_as_sent() {
        use super::{jsonb_text_len, MAX_CONFIG_VALUE_BYTES};
        for text in [
            r#"{"a": [1, 2.5, -3e-2, "x\"y"], "b": null}"#,
            "[]",
            "{}",
            "true",
        ] {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(jsonb_text_len(&json) >= text.len(), "{text}");
        }
        // 6 bytes sent per number, 303 stored: 300 numbers are 1.8 kB sent, 91 kB stored.
        let numbers = vec!["1e300"; 300].join(",");
        let mut e = sample_config();
        e.value = Some(format!(r#"{{"limit":[{numbers}]}}"#));
        assert!(e.value.as_ref().unwrap().len() < MAX_CONFIG_VALUE_BYTES / 10);
        let err = e.validate().unwrap_err();
        assert_eq!(err.field, "value");
        assert!(err.reason.contains("stored as jsonb"), "{err}");
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
