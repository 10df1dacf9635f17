#!/usr/bin/env bash
# Runs the whole test suite: installs missing packages, builds the libFuzzer targets with clang
# and runs each briefly, then builds (g++, Release with debug info) and runs every ctest test
# (unit, integration, corpus replays of the fuzzers, the slow > 4 GiB test).
#
#   scripts/test.sh                 everything
#   FUZZ_SECONDS=0 scripts/test.sh  skip the live fuzzing step
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
jobs=$(nproc)

# Live fuzzing first (clang build), so that ctest's summary is the last thing printed.
fuzz_seconds=${FUZZ_SECONDS:-20}
if [[ "$fuzz_seconds" != 0 ]]; then
  fuzz/run_fuzzers.sh "$fuzz_seconds"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 1200
