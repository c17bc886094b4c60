-- The worker's own login role: owns nothing, no BYPASSRLS, so every tenant-owned table's
-- row-level security applies to it. Migrations run as the owner (a superuser or a role with
-- BYPASSRLS); set the worker's password with ALTER ROLE outside migrations.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantstream_worker') THEN
        CREATE ROLE tenantstream_worker LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO tenantstream_worker;
