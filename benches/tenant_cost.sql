-- The Postgres cost of one tenant of a batch, apart from the cost of its rows (issue 10: at
-- 5,000 tenants each tenant of a batch costs statements under its own context, whatever its
-- rows). `scripts/tenant-cost.sh` runs it; the suite runs a short version (tests/integration/
-- tenant_cost.rs).
--
-- pg_temp.tenant_cost(fn, tenants, calls, passes) times `calls` calls of `fn` (a function with
-- the parameters of write_order_batch; default write_order_batch itself) with `tenants` tenants
-- of 2 new orders each ("wide"), and `calls` calls with a tenth of the tenants and 20 new orders
-- each ("narrow"): the same rows, ten times fewer tenants. Passes alternate which goes first.
-- So, per pass, with wide and narrow in ms:
--   tenant_us = (wide - narrow) * 1000 / (calls * 0.9 * tenants)
--   row_us    = (narrow * 1000 - tenant_us * calls * 0.1 * tenants) / (calls * 2 * tenants)
-- Every call writes new orders only, of known tenants (registered by a first, untimed call),
-- with SLA tracking on, no policy and no applied cache work to delete: the live worker's calls
-- without their deletes of applied outbox rows and their updates of existing orders. row_us
-- also counts building the call's arrays here (the worker builds them in Rust) and the call's
-- own overhead. rows_written counts from the start of the first pass.
-- `fn` is resolved by to_regproc, so a candidate created in pg_temp is named pg_temp.NAME.
-- Each call must return every order it sends, or the function fails, so a timing is never that
-- of a call that wrote nothing.
--
-- Call it as the worker role, in a transaction that is rolled back:
--   BEGIN; <this file>; SET LOCAL ROLE tenantstream_worker;
--   SELECT * FROM pg_temp.tenant_cost(); ROLLBACK;
CREATE FUNCTION pg_temp.tenant_cost(
    fn text DEFAULT 'write_order_batch', tenants int DEFAULT 100, calls int DEFAULT 20,
    passes int DEFAULT 3)
    RETURNS TABLE (pass int, wide_ms numeric, narrow_ms numeric, tenant_us numeric,
                   row_us numeric, rows_written bigint)
    LANGUAGE plpgsql
AS $$
DECLARE
    narrow_tenants int := tenants / 10;
    pool uuid[] := ARRAY(SELECT md5('tenant-cost-' || t)::uuid FROM generate_series(1, tenants) t);
    orders_sent int := 0;
    started timestamptz;
    wide float8;
    narrow float8;
    written bigint := 0;
BEGIN
    IF tenants < 10 OR tenants % 10 <> 0 OR calls < 1 OR passes < 1 THEN
        RAISE EXCEPTION 'tenant_cost: tenants must be a multiple of 10, calls and passes at '
            'least 1 (got %, %, %)', tenants, calls, passes;
    END IF;
    IF to_regproc(fn) IS NULL THEN
        RAISE EXCEPTION 'tenant_cost: no function named % (or more than one)', fn;
    END IF;
    -- Registers the tenants (untimed): the worker's tenants are known after their first batch.
    PERFORM pg_temp.tenant_cost_call(fn, pool, 1, orders_sent);
    orders_sent := orders_sent + tenants;
    FOR r IN 1 .. passes LOOP
        -- Odd passes time wide calls first, even ones narrow calls first: the tables grow.
        FOR shape IN 1 .. 2 LOOP
            started := clock_timestamp();
            FOR c IN 1 .. calls LOOP
                IF (shape + r) % 2 = 0 THEN
                    written := written + pg_temp.tenant_cost_call(fn, pool, 2, orders_sent);
                    orders_sent := orders_sent + 2 * tenants;
                ELSE
                    written := written
                        + pg_temp.tenant_cost_call(fn, pool[1:narrow_tenants], 20, orders_sent);
                    orders_sent := orders_sent + 20 * narrow_tenants;
                END IF;
            END LOOP;
            IF (shape + r) % 2 = 0 THEN
                wide := extract(epoch FROM clock_timestamp() - started) * 1000;
            ELSE
                narrow := extract(epoch FROM clock_timestamp() - started) * 1000;
            END IF;
        END LOOP;
        pass := r;
        wide_ms := round(wide::numeric, 1);
        narrow_ms := round(narrow::numeric, 1);
        tenant_us := round(((wide - narrow) * 1000
                            / (calls * (tenants - narrow_tenants)))::numeric, 1);
        row_us := round(((narrow * 1000 - tenant_us::float8 * calls * narrow_tenants)
                         / (calls * 20 * narrow_tenants))::numeric, 1);
        rows_written := written;
        RETURN NEXT;
    END LOOP;
END
$$;

-- One call of `fn` for `pool`'s tenants, `per_tenant` new orders each (ids after `first_order`):
-- returns how many of the orders sent it returned as written, and fails unless that is all.
CREATE FUNCTION pg_temp.tenant_cost_call(fn text, pool uuid[], per_tenant int, first_order int)
    RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    k int := cardinality(pool);
    n int := k * per_tenant;
    now_ms int8 := (extract(epoch FROM now()) * 1000)::int8;
    written bigint;
BEGIN
    EXECUTE format(
        'SELECT count(DISTINCT w.key_id) FILTER (WHERE w.key_id = ANY($6))
           FROM %s($1, $2, true, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                   $14, $15, $16, $17, true, NULL::jsonb, $8, $8, $13) AS w', to_regproc(fn))
    INTO written
    USING
        'tenant-cost', 'order', pool,
        ARRAY(SELECT (t - 1) * per_tenant + 1 FROM generate_series(1, k) t),
        ARRAY(SELECT t * per_tenant FROM generate_series(1, k) t),
        ARRAY(SELECT 'tenant-cost-' || (first_order + i) FROM generate_series(1, n) i),
        array_fill(1::int8, ARRAY[n]),
        array_fill('created'::text, ARRAY[n]),
        array_fill('customer-1'::text, ARRAY[n]),
        array_fill('EUR'::text, ARRAY[n]),
        array_fill(1234::int8, ARRAY[n]),
        array_fill('[{"sku":"SKU-1","quantity":2,"unit_price_cents":617}]'::text, ARRAY[n]),
        array_fill(now_ms, ARRAY[n]),
        ARRAY(SELECT gen_random_uuid() FROM generate_series(1, n)),
        '{}'::int8[], array_fill(1, ARRAY[k]), array_fill(0, ARRAY[k]);
    IF written <> n THEN
        RAISE EXCEPTION 'tenant_cost: % returned % of the % new orders sent as written',
            fn, written, n;
    END IF;
    RETURN written;
END
$$;
