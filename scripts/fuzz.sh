#!/usr/bin/env bash
# A longer run of the decode + validate property tests (tests/integration/fuzz_decode.rs) than
# the suite's 256 cases per property. Usage: scripts/fuzz.sh [cases per property, default 100000].
# A failure prints the smallest input proptest found; add it to tests/data/bad (make_corpus.py)
# with the code it must get, then fix the code.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
echo "== decode + validate properties, ${cases} cases each"
PROPTEST_CASES="$cases" cargo test --test integration -- fuzz_decode --test-threads 3
