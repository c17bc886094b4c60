-- Tenants. A tenant first seen in an order event is registered as 'provisional'; its profile
-- (a later configuration event) makes it 'active' or 'suspended'.
CREATE TABLE tenants (
    tenant_id  uuid PRIMARY KEY,
    status     text NOT NULL DEFAULT 'provisional'
               CHECK (status IN ('provisional', 'active', 'suspended')),
    name       text,
    tier       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;

-- A missing or empty app.tenant_id yields NULL, which matches no row: no context, no rows.
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));

GRANT SELECT, INSERT, UPDATE ON tenants TO tenantstream_worker;
