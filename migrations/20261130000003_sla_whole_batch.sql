-- Deadlines follow every event of a batch, not only each order's newest one.
--
-- A batch writes each order once, from its newest event. Deadlines were worked out from that
-- event's status alone, so the way Kafka cut the batches changed the outcome: CREATED and
-- UPDATED in one batch registered no CREATED->CONFIRMED (a violation lost), and CONFIRMED then
-- UPDATED cleared nothing (a false violation). Now the client also sends, per written order,
-- the furthest status its events of the batch reached (`reached_statuses`) and its last
-- lifecycle status with that event's occurred_at (`start_statuses`, `start_occurred_ms`):
-- clearing uses the furthest, registering the last. And replay (track_sla false) now clears
-- the deadlines it meets, registering none, so that a replay ahead of a lagging worker leaves
-- no met deadline to fire.

DROP FUNCTION write_order_batch(text, text, boolean, uuid[], int[], int[], text[], int8[],
    text[], text[], text[], int8[], text[], int8[], uuid[], int8[], int[], int[], boolean, jsonb);

CREATE FUNCTION write_order_batch(
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
    pol jsonb;
    pol_version bigint;
    deadlines jsonb;
BEGIN
    FOR t IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        f := firsts[t];
        l := lasts[t];
        PERFORM set_config('app.tenant_id', tenant_ids[t]::text, true);
        IF register_unknown THEN
            INSERT INTO tenants (tenant_id) VALUES (tenant_ids[t])
            ON CONFLICT (tenant_id) DO NOTHING;
        END IF;
        IF applied_firsts[t] <= applied_lasts[t] THEN
            DELETE FROM cache_outbox
             WHERE id = ANY(applied_ids[applied_firsts[t]:applied_lasts[t]]);
        END IF;
        -- Without tracking (replay) deadlines are still cleared, never registered.
        deadlines := '{}';
        IF track_sla THEN
            SELECT p.value, p.version INTO pol, pol_version
              FROM sla_policies p
             WHERE p.tenant_id = tenant_ids[t] AND p.key = 'default' AND p.value IS NOT NULL;
            IF NOT FOUND THEN
                pol := default_policy;
                pol_version := 0;
            END IF;
            deadlines := coalesce(pol -> 'deadlines_ms', '{}');
        END IF;
        RETURN QUERY
        WITH input AS (
            SELECT * FROM UNNEST(order_ids[f:l], versions[f:l], statuses[f:l], customer_ids[f:l],
                                 currencies[f:l], totals[f:l], item_lists[f:l], occurred_ms[f:l],
                                 event_ids[f:l], reached_statuses[f:l], start_statuses[f:l],
                                 start_occurred_ms[f:l])
                   AS i(order_id, version, status, customer_id, currency, total_cents,
                        items, occurred_ms, event_id, reached, start, start_ms)
        ),
        upserted AS (
            INSERT INTO orders AS o (tenant_id, order_id, version, status, customer_id, currency,
                                     total_cents, items, occurred_at, last_event_id, updated_at)
            SELECT tenant_ids[t], i.order_id, i.version, i.status, i.customer_id, i.currency,
                   i.total_cents, i.items::jsonb, to_timestamp(i.occurred_ms / 1000.0),
                   i.event_id, now()
              FROM input i
            ON CONFLICT (tenant_id, order_id) DO UPDATE
               SET version = EXCLUDED.version, status = EXCLUDED.status,
                   customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
                   total_cents = EXCLUDED.total_cents, items = EXCLUDED.items,
                   occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                   updated_at = now()
             WHERE o.version < EXCLUDED.version
            RETURNING o.order_id, o.version, o.status, o.occurred_at,
                      order_cache_json(o) AS value
        ),
        queued AS (
            INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
            SELECT group_id, tenant_ids[t], outbox_kind, u.order_id, u.version FROM upserted u
            RETURNING cache_outbox.id, cache_outbox.key_id
        ),
        -- Met: the furthest status the order's events of this batch reached (an UPDATED or
        -- CANCELLED newest event hides no CONFIRMED before it) reaches the target. Registered:
        -- the transitions the order's last lifecycle status of the batch starts, from that
        -- event's occurred_at, whose target the batch has not reached. So the two never
        -- touch the same row, and how Kafka cut the batches changes nothing.
        met AS (
            DELETE FROM sla_deadlines d USING upserted u JOIN input i ON i.order_id = u.order_id
             WHERE d.tenant_id = tenant_ids[t] AND d.order_id = u.order_id
               AND sla_status_rank(lower(split_part(d.transition, '->', 2)))
                   <= greatest(sla_status_rank(u.status), sla_status_rank(i.reached))
        ),
        registered AS (
            INSERT INTO sla_deadlines (tenant_id, order_id, transition, started_at, due_at,
                                       threshold_ms, policy_version)
            SELECT tenant_ids[t], u.order_id, p.key, to_timestamp(i.start_ms / 1000.0),
                   to_timestamp(i.start_ms / 1000.0) + p.value::bigint * interval '1 millisecond',
                   p.value::bigint, pol_version
              FROM upserted u JOIN input i ON i.order_id = u.order_id
                   CROSS JOIN jsonb_each_text(deadlines) p
             WHERE lower(split_part(p.key, '->', 1)) = i.start
               AND sla_status_rank(i.start) <= 3
               AND sla_status_rank(lower(split_part(p.key, '->', 2)))
                   BETWEEN greatest(sla_status_rank(i.start), sla_status_rank(i.reached)) + 1
                       AND 4
            ON CONFLICT (tenant_id, order_id, transition) DO NOTHING
        )
        SELECT q.id, tenant_ids[t], u.order_id, u.version, u.value
          FROM upserted u JOIN queued q ON q.key_id = u.order_id;
    END LOOP;
    -- No tenant's context outlives the call.
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

REVOKE ALL ON FUNCTION write_order_batch(text, text, boolean, uuid[], int[], int[], text[], int8[],
    text[], text[], text[], int8[], text[], int8[], uuid[], int8[], int[], int[], boolean, jsonb,
    text[], text[], int8[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION write_order_batch(text, text, boolean, uuid[], int[], int[], text[],
    int8[], text[], text[], text[], int8[], text[], int8[], uuid[], int8[], int[], int[], boolean,
    jsonb, text[], text[], int8[]) TO tenantstream_worker;
