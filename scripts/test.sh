#!/usr/bin/env bash
# Runs the whole test suite against real services, starting what is missing:
# PostgreSQL and Redis (if down), a tansu Kafka broker on 127.0.0.1:9092 (installed once) and
# Debian's prometheus package (prometheus, promtool; installed once). promtool checks and unit-tests
# the alert rules in deploy/prometheus/ before cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_redis
ensure_tansu
ensure_prometheus

echo "== cargo doc (warnings are errors: a stale intra-doc link fails the suite)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
echo "== cargo clippy (warnings are errors; the release build alone, then with the tests)"
cargo clippy --quiet -- -D warnings
cargo clippy --all-targets --quiet -- -D warnings
echo "== promtool check rules, test rules, check config (deploy/prometheus/)"
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules_test.yml
promtool check config deploy/prometheus/prometheus.yml

export TENANTSTREAM_TEST_BROKERS="127.0.0.1:${TANSU_PORT}"
echo "== cargo test (Postgres 127.0.0.1:5432, Redis 127.0.0.1:6379, tansu ${TENANTSTREAM_TEST_BROKERS})"
log=$(mktemp)
# The tests run in a session of their own, writing to a file that is followed here: a process a
# failed test left behind (a server it started, say) can then neither keep this script's output
# open nor outlive the suite, because the whole session is stopped when cargo ends.
# (setsid does not fork here: a script runs without job control, so $! is the session.)
setsid cargo test -- --test-threads 4 >"$log" 2>&1 &
tests=$!
# An interrupted run stops the tests too (they are out of reach of the terminal's Ctrl-C).
trap 'kill -- -"$tests" 2>/dev/null || true' EXIT INT TERM
tail -n +1 -f --pid="$tests" "$log" &
follower=$!
set +e
wait "$tests"
status=$?
set -e
wait "$follower"
kill -- -"$tests" 2>/dev/null || true
# One closing line for the whole suite.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
exit "$status"
