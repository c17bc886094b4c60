-- Cache work recorded in the batch transaction: one row per Redis key to refresh from the
-- committed row. Rows are deleted once Redis has the change, so a crash between commit and
-- Redis leaves the work here, not a stale cache. Work belongs to the consumer group whose batch
-- recorded it, so each deployment's drainer applies its own work to its own Redis.
CREATE TABLE cache_outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group text   NOT NULL,
    tenant_id      uuid   NOT NULL,
    kind       text   NOT NULL,
    key_id     text   NOT NULL,
    version    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cache_outbox_pending ON cache_outbox (consumer_group, tenant_id, id);

ALTER TABLE cache_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_outbox FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON cache_outbox
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

-- UPDATE only for the row locks (FOR UPDATE SKIP LOCKED) that let drains run side by side.
GRANT SELECT, INSERT, UPDATE, DELETE ON cache_outbox TO tenantstream_worker;

-- The recovery drainer must find which tenants have cache work older than min_age without a
-- tenant context. This function reveals tenant ids only (no rows); it runs as the migration
-- owner, which bypasses RLS, and only the worker may call it. It pages by tenant id, so every
-- tenant's leftover work is reached however many tenants have fresh work queued.
CREATE FUNCTION cache_outbox_pending_tenants(
    group_id text, min_age interval, after_tenant uuid, max_tenants int)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    SELECT DISTINCT tenant_id FROM cache_outbox
     WHERE consumer_group = group_id
       AND created_at < now() - min_age
       AND (after_tenant IS NULL OR tenant_id > after_tenant)
     ORDER BY tenant_id
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION cache_outbox_pending_tenants(text, interval, uuid, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cache_outbox_pending_tenants(text, interval, uuid, int)
    TO tenantstream_worker;
