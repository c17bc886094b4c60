-- The size and age of a consumer group's cache outbox, for the worker's gauges. The worker's
-- role sees one tenant's outbox rows at a time (RLS), so this counts as the migration owner; it
-- reveals a count and an age only, and only the worker may call it. The age is by Postgres's
-- clock: created_at is the start of the transaction that queued the row.
CREATE FUNCTION cache_outbox_state(group_id text, OUT queued_rows bigint, OUT oldest_ms bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    WITH queued AS (
        SELECT created_at FROM cache_outbox WHERE consumer_group = group_id
        UNION ALL
        SELECT created_at FROM shared_cache_outbox WHERE consumer_group = group_id
    )
    SELECT count(*),
           coalesce((extract(epoch FROM now() - min(created_at)) * 1000)::bigint, 0)
      FROM queued
$$;

REVOKE ALL ON FUNCTION cache_outbox_state(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cache_outbox_state(text) TO tenantstream_worker;
