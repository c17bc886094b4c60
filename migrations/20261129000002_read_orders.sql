-- The current rows of many tenants' orders in one round trip (replay, and the drainer of cache
-- work left behind). As for write_order_batch: the client sends the order ids grouped by
-- tenant, tenant i's at positions firsts[i]..lasts[i]; for each tenant the function sets the
-- transaction-local context and reads that tenant's rows, so row-level security applies to
-- every read under the context just set. It runs as its caller (SECURITY INVOKER) and clears
-- the context at the end. Returns one row per order found: tenant, order, version, cache value.
CREATE FUNCTION read_orders(tenant_ids uuid[], firsts int[], lasts int[], order_ids text[])
    RETURNS TABLE (tenant uuid, order_id text, version bigint, value text)
    LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    t int;
BEGIN
    FOR t IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        PERFORM set_config('app.tenant_id', tenant_ids[t]::text, true);
        RETURN QUERY
        SELECT o.tenant_id, o.order_id, o.version, order_cache_json(o)
          FROM orders o
         WHERE o.tenant_id = tenant_ids[t]
           AND o.order_id = ANY(order_ids[firsts[t]:lasts[t]]);
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

REVOKE ALL ON FUNCTION read_orders(uuid[], int[], int[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION read_orders(uuid[], int[], int[], text[]) TO tenantstream_worker;
