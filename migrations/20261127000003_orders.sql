-- Current state of each order: one row per (tenant, order), guarded by version so that an
-- older or repeated event never overwrites a newer row.
CREATE TABLE orders (
    tenant_id     uuid   NOT NULL REFERENCES tenants (tenant_id),
    order_id      text   NOT NULL,
    version       bigint NOT NULL,
    status        text   NOT NULL,
    customer_id   text   NOT NULL,
    currency      text   NOT NULL,
    total_cents   bigint NOT NULL,
    items         jsonb  NOT NULL,
    occurred_at   timestamptz NOT NULL,
    last_event_id uuid   NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, order_id)
);

ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON orders
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

GRANT SELECT, INSERT, UPDATE ON orders TO tenantstream_worker;
