-- Configuration-change events (schemas/config_change.avsc).
--
-- Per-tenant entries (settings, SLA policies) and the tenant profile are tenant-owned: RLS as on
-- orders, written under the tenant's context with the same version guard. A deleted entry keeps
-- its row with value NULL (a tombstone) so that an older event cannot bring it back.
-- Categories are shared reference data: no tenant_id, readable by everyone, written by the worker.

-- The profile's version guard: a profile event updates the row only when newer.
ALTER TABLE tenants ADD COLUMN profile_version bigint NOT NULL DEFAULT 0;

CREATE TABLE tenant_settings (
    tenant_id     uuid   NOT NULL REFERENCES tenants (tenant_id),
    key           text   NOT NULL,
    value         jsonb,
    version       bigint NOT NULL,
    occurred_at   timestamptz NOT NULL,
    last_event_id uuid   NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE sla_policies (
    tenant_id     uuid   NOT NULL REFERENCES tenants (tenant_id),
    key           text   NOT NULL,
    value         jsonb,
    version       bigint NOT NULL,
    occurred_at   timestamptz NOT NULL,
    last_event_id uuid   NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

ALTER TABLE tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_settings
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

ALTER TABLE sla_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sla_policies
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

GRANT SELECT, INSERT, UPDATE ON tenant_settings, sla_policies TO tenantstream_worker;

CREATE TABLE categories (
    category_id   text   PRIMARY KEY,
    value         jsonb,
    version       bigint NOT NULL,
    occurred_at   timestamptz NOT NULL,
    last_event_id uuid   NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every role (so every tenant context of every API service) reads; only the worker writes.
GRANT SELECT ON categories TO PUBLIC;
GRANT INSERT, UPDATE ON categories TO tenantstream_worker;

-- Cache work for shared keys, recorded in the batch transaction like cache_outbox's.
CREATE TABLE shared_cache_outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group text   NOT NULL,
    kind           text   NOT NULL,
    key_id         text   NOT NULL,
    version        bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX shared_cache_outbox_pending ON shared_cache_outbox (consumer_group, id);

GRANT SELECT, INSERT, UPDATE, DELETE ON shared_cache_outbox TO tenantstream_worker;

-- The cache values, in one place: the batch statements return them for rows they write, and
-- the drainer and `replay` read them for rows whose cache work they redo.
CREATE FUNCTION tenant_profile_json(t tenants) RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT json_build_object(
        'tenant_id', t.tenant_id, 'name', t.name, 'tier', t.tier, 'status', t.status,
        'version', t.profile_version, 'updated_at', t.updated_at)::text
$$;
