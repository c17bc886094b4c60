-- The status of each of a set of tenants, for the worker's tenant health API, in one round trip:
-- each id is looked up under its own context, as the worker would look it up, so RLS still
-- decides (the same shape as registered_tenants). Tenants not in `tenants` are left out.
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
