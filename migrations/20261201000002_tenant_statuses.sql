-- The status of each of a set of tenants, in one round trip: each id is looked up under its own
-- context, as the worker would look it up, so RLS still decides. Tenants not in `tenants` are
-- left out, so the ids it returns are the registered ones: it serves the tenant health API's
-- statuses and the strict-tenant check both, and replaces registered_tenants, which did the
-- latter alone with the same loop.
CREATE FUNCTION tenant_statuses(tenant_ids uuid[])
    RETURNS TABLE (tenant_id uuid, status text)
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    id uuid;
BEGIN
    FOREACH id IN ARRAY coalesce(tenant_ids, '{}') LOOP
        PERFORM set_config('app.tenant_id', id::text, true);
        RETURN QUERY SELECT t.tenant_id, t.status FROM tenants t WHERE t.tenant_id = id;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

REVOKE ALL ON FUNCTION tenant_statuses(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_statuses(uuid[]) TO tenantstream_worker;

DROP FUNCTION registered_tenants(uuid[]);
