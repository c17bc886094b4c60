#!/usr/bin/env bash
# The long reliability soak (README "Reliability"): 200,000 order messages over 500 tenants plus
# their configuration changes, produced over 4 minutes into librdkafka's mock cluster while three
# workers drain them and the soak SIGKILLs workers 12 times, makes one leave and join again, and
# restarts Postgres (as a crash), Redis and the broker; then the end state is compared with the
# traffic's oracle. Runs once under each rebalance protocol (eager, then cooperative). The suite
# runs the same soak, shorter. Everything runs on loopback: Postgres and Redis are servers of the
# soak's own on free ports, the broker lives in the test process.
#
# Knobs (environment): SOAK_EVENTS, SOAK_TENANTS, SOAK_SECONDS, SOAK_KILLS, SOAK_PARTITIONS;
# an argument `eager` or `cooperative` runs one protocol only.
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_EVENTS=${SOAK_EVENTS:-200000}
export SOAK_TENANTS=${SOAK_TENANTS:-500}
export SOAK_SECONDS=${SOAK_SECONDS:-240}
export SOAK_KILLS=${SOAK_KILLS:-12}
export SOAK_PARTITIONS=${SOAK_PARTITIONS:-24}

case "${1:-both}" in
    both) filter="soak::" ;;
    eager | cooperative) filter="soak::soak_with_faults_under_the_$1_protocol" ;;
    *) echo "usage: scripts/soak.sh [eager|cooperative]" >&2; exit 2 ;;
esac

echo "== soak: $SOAK_EVENTS order messages, $SOAK_TENANTS tenants, ${SOAK_SECONDS} s of production, $SOAK_KILLS SIGKILLs, $SOAK_PARTITIONS partitions"
# One soak at a time: they would share two cores. --nocapture shows each soak's summary line.
cargo test --test integration -- --test-threads 1 --nocapture "$filter"
