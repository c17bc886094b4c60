-- The cache value of an order, in one place: the batch statement returns it for rows it writes,
-- and the recovery drainer reads it for rows whose cache work was left behind.
CREATE FUNCTION order_cache_json(o orders) RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT json_build_object(
        'tenant_id', o.tenant_id, 'order_id', o.order_id, 'version', o.version,
        'status', o.status, 'customer_id', o.customer_id, 'currency', o.currency,
        'total_cents', o.total_cents, 'items', o.items,
        'occurred_at', o.occurred_at, 'updated_at', o.updated_at)::text
$$;
