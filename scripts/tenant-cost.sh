#!/usr/bin/env bash
# The Postgres cost of one tenant of a batch and of one row, in write_order_batch as the worker
# role (benches/tenant_cost.sql explains how): what decides throughput at many tenants (issue 10),
# measured in seconds rather than in a noisy end-to-end run. Everything it writes is rolled back.
#
#   scripts/tenant-cost.sh                        # write_order_batch, 100 tenants, 20 calls, 3 passes
#   TENANTS=500 CALLS=10 PASSES=5 scripts/tenant-cost.sh
#   scripts/tenant-cost.sh candidate.sql my_write_order_batch
#       # times a candidate: the file creates it (same parameters as write_order_batch) inside
#       # the rolled-back transaction, so nothing of it stays
#
# Database: TENANTSTREAM_ADMIN_DATABASE_URL (the owner's URL; default
# postgres://postgres@127.0.0.1:5432/tenantstream_tenant_cost), created and migrated first.
set -euo pipefail
cd "$(dirname "$0")/.."

url=${TENANTSTREAM_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tenantstream_tenant_cost}
candidate=${1:-}
function=${2:-write_order_batch}
if [[ -n "$candidate" && ! -f "$candidate" ]]; then
    echo "tenant-cost: $candidate: no such file (the SQL that creates the candidate function)" >&2
    exit 2
fi
if [[ -n "$candidate" && $# -lt 2 ]]; then
    echo "tenant-cost: name the candidate function after its file: $0 $candidate FUNCTION" >&2
    exit 2
fi
for knob in TENANTS CALLS PASSES; do
    if [[ -n "${!knob:-}" && ! "${!knob}" =~ ^[0-9]+$ ]]; then
        echo "tenant-cost: $knob=${!knob} is not a whole number" >&2
        exit 2
    fi
done

cargo run --release --quiet -- migrate --admin-database-url "$url"
{
    echo "BEGIN;"
    cat benches/tenant_cost.sql
    [[ -n "$candidate" ]] && cat "$candidate"
    echo "SET LOCAL ROLE tenantstream_worker;"
    echo "SELECT * FROM pg_temp.tenant_cost('$function', ${TENANTS:-100}, ${CALLS:-20}, ${PASSES:-3});"
    echo "ROLLBACK;"
} | psql "$url" -X -q -v ON_ERROR_STOP=1
