-- write_order_batch with less work per tenant (issue 10: throughput at 5,000 tenants). Same
-- parameters, same results, same effects, and still every row under its own tenant's context;
-- see migration 20261130000001_sla.sql for what the parameters and the deadline rules mean.
--
-- At 5,000 tenants a 1,000-event batch holds about 900 tenants, so the fixed cost of each
-- tenant's statements, not the rows, decides throughput: mostly the executor starting up their
-- plans (profiled with perf: a third of the time in ExecutorStart, a quarter in hash joins built
-- for one or two rows). The previous version ran, per tenant, one statement of four data-modifying
-- parts and four hash joins, most of them for deadlines that tenants without a policy never have.
-- Now, per tenant:
--   * the context is set by an assignment (no SELECT through the executor);
--   * the tenant is inserted only when it is missing (a lookup starts up cheaper than an insert);
--   * one statement upserts the orders and queues their cache work, its results kept in arrays
--     and returned once at the end;
--   * the deadline statement runs only for a tenant whose orders were written and that has
--     deadlines to register (its effective policy has some) or to clear (the written orders
--     have pending ones). Its effects are those of the previous version's `met` and
--     `registered` parts, on the same rows: the written orders, their furthest status reached in
--     the batch and the last lifecycle status that starts transitions.
CREATE OR REPLACE FUNCTION write_order_batch(
    group_id text, outbox_kind text, register_unknown boolean,
    tenant_ids uuid[], firsts int[], lasts int[],
    order_ids text[], versions int8[], statuses text[], customer_ids text[], currencies text[],
    totals int8[], item_lists text[], occurred_ms int8[], event_ids uuid[],
    applied_ids int8[], applied_firsts int[], applied_lasts int[],
    track_sla boolean, default_policy jsonb,
    reached_statuses text[], start_statuses text[], start_occurred_ms int8[])
    RETURNS TABLE (outbox_id bigint, tenant uuid, key_id text, version bigint, value text)
    LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    t int;
    f int;
    l int;
    tid uuid;
    context text;
    pol jsonb;
    pol_version bigint;
    deadlines jsonb;
    -- The tenant's written orders (one statement's results)...
    w_outbox int8[];
    w_orders text[];
    w_versions int8[];
    w_statuses text[];
    w_values text[];
    -- ...and every tenant's, returned at the end.
    all_outbox int8[] := '{}';
    all_tenants uuid[] := '{}';
    all_orders text[] := '{}';
    all_versions int8[] := '{}';
    all_values text[] := '{}';
BEGIN
    FOR t IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        f := firsts[t];
        l := lasts[t];
        tid := tenant_ids[t];
        context := set_config('app.tenant_id', tid::text, true);
        IF register_unknown AND NOT EXISTS (SELECT FROM tenants WHERE tenant_id = tid) THEN
            INSERT INTO tenants (tenant_id) VALUES (tid) ON CONFLICT (tenant_id) DO NOTHING;
        END IF;
        IF applied_firsts[t] <= applied_lasts[t] THEN
            DELETE FROM cache_outbox
             WHERE id = ANY(applied_ids[applied_firsts[t]:applied_lasts[t]]);
        END IF;
        WITH upserted AS (
            INSERT INTO orders AS o (tenant_id, order_id, version, status, customer_id, currency,
                                     total_cents, items, occurred_at, last_event_id, updated_at)
            SELECT tid, i.order_id, i.version, i.status, i.customer_id, i.currency,
                   i.total_cents, i.items::jsonb, to_timestamp(i.occurred_ms / 1000.0),
                   i.event_id, now()
              FROM UNNEST(order_ids[f:l], versions[f:l], statuses[f:l], customer_ids[f:l],
                          currencies[f:l], totals[f:l], item_lists[f:l], occurred_ms[f:l],
                          event_ids[f:l])
                   AS i(order_id, version, status, customer_id, currency, total_cents,
                        items, occurred_ms, event_id)
            ON CONFLICT (tenant_id, order_id) DO UPDATE
               SET version = EXCLUDED.version, status = EXCLUDED.status,
                   customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
                   total_cents = EXCLUDED.total_cents, items = EXCLUDED.items,
                   occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                   updated_at = now()
             WHERE o.version < EXCLUDED.version
            RETURNING o.order_id, o.version, o.status, order_cache_json(o) AS value
        ),
        queued AS (
            INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
            SELECT group_id, tid, outbox_kind, u.order_id, u.version FROM upserted u
            RETURNING cache_outbox.id, cache_outbox.key_id
        )
        SELECT array_agg(q.id), array_agg(u.order_id), array_agg(u.version),
               array_agg(u.status), array_agg(u.value)
          INTO w_outbox, w_orders, w_versions, w_statuses, w_values
          FROM upserted u JOIN queued q ON q.key_id = u.order_id;
        -- Every event was stale: nothing to return, no deadline to keep.
        CONTINUE WHEN w_orders IS NULL;
        all_outbox := all_outbox || w_outbox;
        all_tenants := all_tenants || array_fill(tid, ARRAY[cardinality(w_orders)]);
        all_orders := all_orders || w_orders;
        all_versions := all_versions || w_versions;
        all_values := all_values || w_values;
        -- Without tracking (replay) deadlines are still cleared, never registered.
        deadlines := '{}';
        IF track_sla THEN
            SELECT p.value, p.version INTO pol, pol_version
              FROM sla_policies p
             WHERE p.tenant_id = tid AND p.key = 'default' AND p.value IS NOT NULL;
            IF NOT FOUND THEN
                pol := default_policy;
                pol_version := 0;
            END IF;
            deadlines := coalesce(pol -> 'deadlines_ms', '{}');
        END IF;
        IF deadlines = '{}' THEN
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM sla_deadlines d WHERE d.tenant_id = tid AND d.order_id = ANY(w_orders));
        END IF;
        -- Met: the furthest status the order's events of this batch reached (an UPDATED or
        -- CANCELLED newest event hides no CONFIRMED before it) reaches the target. Registered:
        -- the transitions the order's last lifecycle status of the batch starts, from that
        -- event's occurred_at, whose target the batch has not reached. So the two never
        -- touch the same row, and how Kafka cut the batches changes nothing.
        WITH written AS (
            SELECT w.order_id, w.status, i.reached, i.start, i.start_ms
              FROM UNNEST(w_orders, w_statuses) AS w(order_id, status)
              JOIN UNNEST(order_ids[f:l], reached_statuses[f:l], start_statuses[f:l],
                          start_occurred_ms[f:l]) AS i(order_id, reached, start, start_ms)
                ON i.order_id = w.order_id
        ),
        met AS (
            DELETE FROM sla_deadlines d USING written w
             WHERE d.tenant_id = tid AND d.order_id = w.order_id
               AND sla_status_rank(lower(split_part(d.transition, '->', 2)))
                   <= greatest(sla_status_rank(w.status), sla_status_rank(w.reached))
        )
        INSERT INTO sla_deadlines (tenant_id, order_id, transition, started_at, due_at,
                                   threshold_ms, policy_version)
        SELECT tid, w.order_id, p.key, to_timestamp(w.start_ms / 1000.0),
               to_timestamp(w.start_ms / 1000.0) + p.value::bigint * interval '1 millisecond',
               p.value::bigint, pol_version
          FROM written w CROSS JOIN jsonb_each_text(deadlines) p
         WHERE lower(split_part(p.key, '->', 1)) = w.start
           AND sla_status_rank(w.start) <= 3
           AND sla_status_rank(lower(split_part(p.key, '->', 2)))
               BETWEEN greatest(sla_status_rank(w.start), sla_status_rank(w.reached)) + 1
                   AND 4
        ON CONFLICT (tenant_id, order_id, transition) DO NOTHING;
    END LOOP;
    -- No tenant's context outlives the call.
    context := set_config('app.tenant_id', '', true);
    RETURN QUERY
    SELECT * FROM UNNEST(all_outbox, all_tenants, all_orders, all_versions, all_values);
END
$$;
