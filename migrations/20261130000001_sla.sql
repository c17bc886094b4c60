-- The SLA engine: deadlines registered with the orders that start them, violations stored once
-- under a deterministic id, and an outbox from which they are published to `sla-violations`.
--
-- A tenant's effective policy is its SLA_POLICY entry `default` (other keys are ignored), else
-- the worker's global default (a parameter; NULL: none), whose version is 0. A deadline keeps
-- the threshold and policy version it was registered with: a policy change applies to
-- deadlines registered after it commits.
--
-- Order statuses have a rank: created 1, confirmed 2, shipped 3, delivered 4, and cancelled
-- ends every wait. Only forward transitions between ranked statuses get deadlines
-- (CREATED->CONFIRMED, CONFIRMED->SHIPPED, CREATED->DELIVERED, …). Writing an order in status S
-- clears its deadlines whose target S reaches (rank(S) >= rank(target), or S cancelled): the
-- transition itself, a later status arriving first (SHIPPED before CONFIRMED), or a
-- cancellation. `updated` neither starts nor ends a wait.

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE FUNCTION sla_status_rank(status text) RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE status WHEN 'created' THEN 1 WHEN 'confirmed' THEN 2 WHEN 'shipped' THEN 3
                       WHEN 'delivered' THEN 4 WHEN 'cancelled' THEN 100 END
$$;

-- The id of a violation: UUIDv5 in the namespace below over `tenant/kind/subject`, where the
-- subject is `order_id/FROM->TO` for DEADLINE_MISSED and the window's start (ms since the epoch)
-- for PROCESSING_LAG. The worker's `domain::sla::violation_id` computes the same.
CREATE FUNCTION sla_violation_id(tenant uuid, kind text, subject text) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT uuid_generate_v5('3d0c5b8e-7f4a-4f1e-9b2d-6a8c1e5f7a90',
                            tenant::text || '/' || kind || '/' || subject)
$$;

-- Pending deadlines: one row per (order, transition) not yet met. A deadline that is met or
-- fires is deleted (a fired one becomes a violation); the violation's id keeps a deadline that
-- is registered again from firing twice.
CREATE TABLE sla_deadlines (
    tenant_id      uuid   NOT NULL REFERENCES tenants (tenant_id),
    order_id       text   NOT NULL,
    transition     text   NOT NULL,
    -- occurred_at of the event that put the order in the transition's first status.
    started_at     timestamptz NOT NULL,
    due_at         timestamptz NOT NULL,
    threshold_ms   bigint NOT NULL,
    policy_version bigint NOT NULL,
    PRIMARY KEY (tenant_id, order_id, transition)
);

-- The timer's query: the earliest due deadlines of every tenant.
CREATE INDEX sla_deadlines_due ON sla_deadlines (due_at);

CREATE TABLE sla_violations (
    violation_id   uuid   PRIMARY KEY,
    tenant_id      uuid   NOT NULL REFERENCES tenants (tenant_id),
    order_id       text,
    kind           text   NOT NULL CHECK (kind IN ('DEADLINE_MISSED', 'PROCESSING_LAG')),
    transition     text,
    threshold_ms   bigint NOT NULL,
    observed_ms    bigint NOT NULL,
    event_count    bigint NOT NULL,
    policy_version bigint NOT NULL,
    detected_at    timestamptz NOT NULL
);

CREATE INDEX sla_violations_tenant ON sla_violations (tenant_id, detected_at);

ALTER TABLE sla_deadlines ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_deadlines FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sla_deadlines
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

ALTER TABLE sla_violations ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_violations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sla_violations
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

GRANT SELECT, INSERT, DELETE ON sla_deadlines TO tenantstream_worker;
GRANT SELECT, INSERT, UPDATE ON sla_violations TO tenantstream_worker;

-- Violations to publish. Ids only (no tenant data but the tenant's id, like consumer_offsets),
-- so the publisher finds work across tenants without a context; it reads each violation under
-- its tenant's context. A row is claimed with a lease (a crashed publisher's rows come back
-- when it ends), marked published once the broker acknowledged, and deleted once Redis also
-- counted it. A lag violation is published 5 s after its window has closed (publish_after).
CREATE TABLE sla_outbox (
    violation_id  uuid   PRIMARY KEY,
    tenant_id     uuid   NOT NULL,
    publish_after timestamptz NOT NULL,
    lease_until   timestamptz,
    published     boolean NOT NULL DEFAULT false
);

CREATE INDEX sla_outbox_due ON sla_outbox (publish_after);

GRANT SELECT, INSERT, UPDATE, DELETE ON sla_outbox TO tenantstream_worker;

-- PROCESSING_LAG for a batch's order events, tenant by tenant under each tenant's context, in
-- one round trip: tenant i's events' occurred_at (ms) are at occurred_ms[firsts[i]..lasts[i]].
-- An event is late when now_ms - occurred_at > the tenant's lag_threshold_ms. A tenant's late
-- events of one window (window_ms, aligned to the epoch) make one violation: created by the
-- first late batch, counted up and its worst lag raised by the next ones, published 5 s after
-- the window has closed (a batch that read the clock inside the window may commit a little
-- later, or run on a worker whose clock is a little behind: its events still make the published
-- figures). Returns, per tenant with late events, the violation and whether this call created
-- it.
CREATE FUNCTION record_processing_lag(
    tenant_ids uuid[], firsts int[], lasts int[], occurred_ms int8[],
    now_ms int8, window_ms int8, default_policy jsonb)
    RETURNS TABLE (violation_id uuid, tenant uuid, created boolean)
    LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    t int;
    tid uuid;
    pol jsonb;
    pol_version bigint;
    threshold bigint;
    late bigint;
    worst bigint;
    window_start bigint := now_ms - now_ms % window_ms;
    vid uuid;
    inserted boolean;
BEGIN
    FOR t IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        tid := tenant_ids[t];
        PERFORM set_config('app.tenant_id', tid::text, true);
        SELECT p.value, p.version INTO pol, pol_version
          FROM sla_policies p
         WHERE p.tenant_id = tid AND p.key = 'default' AND p.value IS NOT NULL;
        IF NOT FOUND THEN
            pol := default_policy;
            pol_version := 0;
        END IF;
        threshold := (pol ->> 'lag_threshold_ms')::bigint;
        CONTINUE WHEN threshold IS NULL;
        SELECT count(*), max(now_ms - o) INTO late, worst
          FROM unnest(occurred_ms[firsts[t]:lasts[t]]) o
         WHERE now_ms - o > threshold;
        CONTINUE WHEN late = 0;
        vid := sla_violation_id(tid, 'PROCESSING_LAG', window_start::text);
        INSERT INTO sla_violations AS v (violation_id, tenant_id, kind, threshold_ms, observed_ms,
                                         event_count, policy_version, detected_at)
        VALUES (vid, tid, 'PROCESSING_LAG', threshold, worst, late, pol_version,
                to_timestamp(now_ms / 1000.0))
        ON CONFLICT (violation_id) DO UPDATE
           SET event_count = v.event_count + EXCLUDED.event_count,
               observed_ms = greatest(v.observed_ms, EXCLUDED.observed_ms)
        RETURNING (xmax = 0) INTO inserted;
        INSERT INTO sla_outbox (violation_id, tenant_id, publish_after)
        VALUES (vid, tid, to_timestamp((window_start + window_ms + 5000) / 1000.0))
        ON CONFLICT (violation_id) DO NOTHING;
        violation_id := vid;
        tenant := tid;
        created := inserted;
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

-- The timer: turns up to max_rows deadlines due at now_ms (earliest first) into violations
-- and queues them for publishing, in one statement. Deadlines locked by another worker's timer
-- are skipped (FOR UPDATE SKIP LOCKED), so timers run side by side and each deadline fires
-- once. It works across tenants, so it runs as the migration owner (SECURITY DEFINER): it takes
-- only a time and a limit, returns only counts, and writes each violation with the tenant of
-- its deadline. Returns the deadlines fired and the violations created (fewer when a
-- violation with the same id exists already).
CREATE FUNCTION fire_due_deadlines(now_ms int8, max_rows int, OUT fired bigint, OUT created bigint)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    WITH due AS (
        SELECT tenant_id, order_id, transition FROM sla_deadlines
         WHERE due_at <= to_timestamp(now_ms / 1000.0)
         ORDER BY due_at
         LIMIT max_rows
           FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
        DELETE FROM sla_deadlines d USING due
         WHERE d.tenant_id = due.tenant_id AND d.order_id = due.order_id
           AND d.transition = due.transition
        RETURNING d.*
    ),
    stored AS (
        INSERT INTO sla_violations (violation_id, tenant_id, order_id, kind, transition,
                                    threshold_ms, observed_ms, event_count, policy_version,
                                    detected_at)
        SELECT sla_violation_id(c.tenant_id, 'DEADLINE_MISSED', c.order_id || '/' || c.transition),
               c.tenant_id, c.order_id, 'DEADLINE_MISSED', c.transition, c.threshold_ms,
               now_ms - (extract(epoch FROM c.started_at) * 1000)::bigint, 1, c.policy_version,
               to_timestamp(now_ms / 1000.0)
          FROM claimed c
        ON CONFLICT (violation_id) DO NOTHING
        RETURNING violation_id, tenant_id
    ),
    queued AS (
        INSERT INTO sla_outbox (violation_id, tenant_id, publish_after)
        SELECT violation_id, tenant_id, to_timestamp(now_ms / 1000.0) FROM stored
        ON CONFLICT (violation_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM claimed), (SELECT count(*) FROM queued)
$$;

REVOKE ALL ON FUNCTION fire_due_deadlines(int8, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fire_due_deadlines(int8, int) TO tenantstream_worker;

-- The timer's health without a tenant context (counts only, so the owner's, like the timer):
-- deadlines pending, how long the oldest due one is overdue (0: none), and the outbox's depth
-- and how long its oldest publishable row has waited.
CREATE FUNCTION sla_state(now_ms int8, OUT deadlines_pending bigint, OUT oldest_overdue_ms bigint,
                          OUT outbox_depth bigint, OUT oldest_outbox_ms bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    SELECT (SELECT count(*) FROM sla_deadlines),
           greatest(0, coalesce(now_ms - (SELECT (extract(epoch FROM min(due_at)) * 1000)::bigint
                                             FROM sla_deadlines), 0)),
           (SELECT count(*) FROM sla_outbox),
           greatest(0, coalesce(now_ms - (SELECT (extract(epoch FROM min(publish_after)) * 1000)::bigint
                                             FROM sla_outbox), 0))
$$;

REVOKE ALL ON FUNCTION sla_state(int8) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sla_state(int8) TO tenantstream_worker;

-- The publisher's claim: up to max_rows outbox rows due at now_ms and not leased, leased for
-- lease_ms, returned with their violations, each read under its tenant's context.
CREATE FUNCTION claim_sla_violations(now_ms int8, lease_ms int8, max_rows int)
    RETURNS TABLE (violation_id uuid, tenant_id uuid, order_id text, kind text, transition text,
                   threshold_ms bigint, observed_ms bigint, event_count bigint,
                   policy_version bigint, detected_ms bigint, published boolean)
    LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    now_at timestamptz := to_timestamp(now_ms / 1000.0);
    tenants uuid[];
    ids uuid[];
    t uuid;
BEGIN
    WITH claimed AS (
        UPDATE sla_outbox o SET lease_until = now_at + lease_ms * interval '1 millisecond'
         WHERE o.violation_id IN (
               SELECT d.violation_id FROM sla_outbox d
                WHERE d.publish_after <= now_at
                  AND (d.lease_until IS NULL OR d.lease_until <= now_at)
                ORDER BY d.publish_after
                LIMIT max_rows
                  FOR UPDATE SKIP LOCKED)
        RETURNING o.tenant_id, o.violation_id
    )
    SELECT array_agg(c.tenant_id), array_agg(c.violation_id) INTO tenants, ids FROM claimed c;
    FOR t IN SELECT DISTINCT u FROM unnest(tenants) u LOOP
        PERFORM set_config('app.tenant_id', t::text, true);
        RETURN QUERY
        SELECT v.violation_id, v.tenant_id, v.order_id, v.kind, v.transition, v.threshold_ms,
               v.observed_ms, v.event_count, v.policy_version,
               (extract(epoch FROM v.detected_at) * 1000)::bigint, o.published
          FROM sla_violations v JOIN sla_outbox o ON o.violation_id = v.violation_id
         WHERE v.violation_id = ANY(ARRAY(
               SELECT c.id FROM unnest(tenants, ids) AS c(tenant, id) WHERE c.tenant = t));
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

REVOKE ALL ON FUNCTION record_processing_lag(uuid[], int[], int[], int8[], int8, int8, jsonb),
    claim_sla_violations(int8, int8, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION record_processing_lag(uuid[], int[], int[], int8[], int8, int8, jsonb),
    claim_sla_violations(int8, int8, int) TO tenantstream_worker;

-- write_order_batch, now also keeping each order's deadlines (when track_sla: the live
-- worker; replay only clears the deadlines its orders meet, registering none, so that a replay
-- ahead of a lagging worker leaves no met deadline to fire). A batch writes each order once,
-- from its newest event, but its deadlines follow all of its events in the batch, so that how
-- Kafka cut the batches changes nothing: the client sends, per written order, the furthest
-- status its events of the batch reached (`reached_statuses`: clears the deadlines whose target
-- it reaches) and its last lifecycle status with that event's occurred_at (`start_statuses`,
-- `start_occurred_ms`: registers the transitions it starts that the batch has not reached, with
-- the effective policy's threshold and version; an existing deadline is kept). Without them
-- CREATED then UPDATED in one batch would register nothing, and CONFIRMED then UPDATED clear
-- nothing.
--
-- The effective policy is read inline in both functions: a SQL function (not inlined by
-- plpgsql) cost about 55 µs per tenant, the query itself about 4 µs. Measured as the worker
-- role on 2,000 tenants of one order each: write_order_batch about 185 µs per tenant with
-- deadlines, 140 µs without; record_processing_lag about 10 µs.
DROP FUNCTION write_order_batch(text, text, boolean, uuid[], int[], int[], text[], int8[],
    text[], text[], text[], int8[], text[], int8[], uuid[], int8[], int[], int[]);

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
