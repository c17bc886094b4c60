//! The key layout (README "Redis read contract"): `t:{<tenant_id>}:g<generation>:order:<id>`,
//! `…:profile`, `…:config`, `…:sla`, `…:versions`, and `ref:{category}:g<generation>:cat:<id>`,
//! `…:ids`, `…:versions`; outside generations, `t:{<tenant_id>}:sla_violations:<YYYY-MM-DD>`.
//! The braces are a Redis Cluster hash tag, so a keyspace's keys share a
//! slot; bumping the keyspace's `…:gen` counter retires all of them at once.

use uuid::Uuid;

use crate::domain::{Keyspace, TenantMap};

impl Keyspace {
    fn prefix(&self) -> String {
        match self {
            Self::Tenant(tenant) => format!("t:{{{tenant}}}"),
            Self::Reference => "ref:{category}".to_owned(),
        }
    }

    /// The keyspace's current generation (absent: 0). Never expires.
    pub fn generation_key(&self) -> String {
        format!("{}:gen", self.prefix())
    }

    /// The profile version that last bumped the generation. Never expires.
    pub(super) fn bumped_for_key(&self) -> String {
        format!("{}:gen:bumped_for", self.prefix())
    }

    /// A key of generation `generation`: `t:{<tenant>}:g<generation>:<suffix>`.
    pub fn key(&self, generation: i64, suffix: &str) -> String {
        format!("{}:g{generation}:{suffix}", self.prefix())
    }
}

/// The cache key of one order in generation `generation`.
pub fn order_key(tenant: &Uuid, generation: i64, order_id: &str) -> String {
    Keyspace::Tenant(*tenant).key(generation, &format!("order:{order_id}"))
}

/// The pattern of every order key of `tenant` in generation `generation`.
pub fn order_key_pattern(tenant: &Uuid, generation: i64) -> String {
    Keyspace::Tenant(*tenant).key(generation, "order:*")
}

/// The cache key of `tenant`'s profile in generation `generation`.
pub fn profile_key(tenant: &Uuid, generation: i64) -> String {
    Keyspace::Tenant(*tenant).key(generation, "profile")
}

/// The hash of `tenant`'s entries of `map` in generation `generation`.
pub fn entries_key(tenant: &Uuid, map: TenantMap, generation: i64) -> String {
    Keyspace::Tenant(*tenant).key(generation, map.name())
}

/// The set of `tenant`'s SLA violation ids of one UTC day (`YYYY-MM-DD`): its size is the day's
/// count. Outside the generations: a rebuild of the cache does not forget violations.
pub fn violations_key(tenant: &Uuid, day: &str) -> String {
    format!(
        "{}:sla_violations:{day}",
        Keyspace::Tenant(*tenant).prefix()
    )
}

/// The cache key of one category in generation `generation` (its own prefix, so no id can
/// collide with the keyspace's `versions` or `ids`).
pub fn category_key(generation: i64, id: &str) -> String {
    Keyspace::Reference.key(generation, &format!("cat:{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";

    #[test]
    fn keys_of_a_keyspace_share_its_hash_tag_and_name_their_generation() {
        let tenant = Uuid::parse_str(TENANT).unwrap();
        assert_eq!(
            order_key(&tenant, 3, "o-1"),
            format!("t:{{{TENANT}}}:g3:order:o-1")
        );
        let space = Keyspace::Tenant(tenant);
        assert_eq!(space.generation_key(), format!("t:{{{TENANT}}}:gen"));
        assert_eq!(space.key(0, "config"), format!("t:{{{TENANT}}}:g0:config"));
        assert_eq!(category_key(2, "ids"), "ref:{category}:g2:cat:ids");
        assert_eq!(Keyspace::Reference.generation_key(), "ref:{category}:gen");
        assert_eq!(
            violations_key(&tenant, "2026-11-29"),
            format!("t:{{{TENANT}}}:sla_violations:2026-11-29")
        );
    }
}
