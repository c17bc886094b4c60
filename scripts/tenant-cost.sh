#!/usr/bin/env bash
# The Postgres cost of one tenant of a batch and of one row, in write_order_batch as the worker
# role (benches/tenant_cost.sql explains how): what decides throughput at many tenants (issue 10),
# measured in a few seconds, with a median over passes steadier than a drain. The rows it writes
# are rolled back (the cache outbox's id sequence still advances); it vacuums the tables it
# writes first, so that earlier runs' dead rows do not slow it.
#
#   scripts/tenant-cost.sh                 # write_order_batch, 100 tenants, 20 calls, 3 passes
#   TENANTS=50 CALLS=10 PASSES=5 scripts/tenant-cost.sh
#       # TENANTS: a multiple of 10; the worker's calls hold at most 100 tenants
#   scripts/tenant-cost.sh candidate.sql my_write_order_batch
#       # times a candidate: the file creates it (same parameters and columns as
#       # write_order_batch) inside the rolled-back transaction, so nothing of it stays;
#       # one created in pg_temp is named pg_temp.my_write_order_batch
#
# Database: TENANTSTREAM_ADMIN_DATABASE_URL (the owner's URL, a superuser or a member of
# tenantstream_worker; default postgres://postgres@127.0.0.1:5432/tenantstream_tenant_cost),
# created and migrated first by the release binary (built if needed).
set -euo pipefail

candidate=""
if [[ $# -gt 0 ]]; then
    if [[ ! -f "$1" ]]; then
        echo "tenant-cost: $1: no such file (the SQL that creates the candidate function)" >&2
        exit 2
    fi
    if [[ -z "${2:-}" ]]; then
        echo "tenant-cost: name the candidate function after its file: $0 $1 FUNCTION" >&2
        exit 2
    fi
    candidate=$(realpath -- "$1")
fi
function=${2:-write_order_batch}
for knob in TENANTS CALLS PASSES; do
    if [[ -n "${!knob:-}" && ! "${!knob}" =~ ^[0-9]{1,4}$ ]]; then
        echo "tenant-cost: $knob=${!knob} is not a whole number below 10,000" >&2
        exit 2
    fi
done
cd "$(dirname "$0")/.."

url=${TENANTSTREAM_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tenantstream_tenant_cost}
cargo run --release --quiet -- migrate --admin-database-url "$url"
psql "$url" -X -q -v ON_ERROR_STOP=1 -c "VACUUM orders, cache_outbox, tenants, sla_deadlines"
{
    echo "BEGIN;"
    cat benches/tenant_cost.sql
    if [[ -n "$candidate" ]]; then
        cat "$candidate"
    fi
    echo "SET LOCAL ROLE tenantstream_worker;"
    echo "SELECT * FROM pg_temp.tenant_cost(:'fn', :tenants, :calls, :passes);"
    echo "ROLLBACK;"
} | psql "$url" -X -q -v ON_ERROR_STOP=1 -v fn="$function" -v tenants="${TENANTS:-100}" \
    -v calls="${CALLS:-20}" -v passes="${PASSES:-3}"
