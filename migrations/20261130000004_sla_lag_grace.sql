-- A lag violation is published 5 s after its window closes, not at once: a batch that read the
-- clock inside the window may commit a little after it closed (or run on a worker whose clock
-- is a little behind), and its late events must be in the published count and worst lag. The
-- grace covers a batch's commit and ordinary clock skew between workers; a batch later than
-- that only updates the stored row.

CREATE OR REPLACE FUNCTION record_processing_lag(
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
