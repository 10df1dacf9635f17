#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan, coverage on the libraries) and runs each
# for SECONDS (default 30). Exits non-zero if any fuzzer crashes, leaks, hangs or runs out of
# memory; the crashing input is left in $BUILD_DIR/fuzz-artifacts/<fuzzer>/.
#
#   fuzz/run_fuzzers.sh [SECONDS]
#
# Environment: BUILD_DIR (default: build-fuzz at the top), FUZZERS (space-separated subset),
# JOBS (ninja parallelism, default 2). New inputs go to $BUILD_DIR/fuzz-work/<fuzzer>/; the
# committed seeds in fuzz/corpus/<fuzzer>/ are read, never written.
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
all_fuzzers="patch_apply_fuzzer patch_inspect_fuzzer delta_roundtrip_fuzzer vcdiff_apply_fuzzer stream_parse_fuzzer"
all_fuzzers="$all_fuzzers elf_parse_fuzzer"
all_fuzzers+=" fec_packet_fuzzer fec_receiver_fuzzer deflate_puff_fuzzer deflate_streams_fuzzer"
all_fuzzers+=" lzma_replay_fuzzer"
read -r -a fuzzers <<<"${FUZZERS:-$all_fuzzers}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DDS_FUZZ=ON \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" -j"${JOBS:-2}" "${fuzzers[@]}"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
status=0
for fuzzer in "${fuzzers[@]}"; do
  work="$build/fuzz-work/$fuzzer"
  artifacts="$build/fuzz-artifacts/$fuzzer/"
  log="$build/fuzz-logs/$fuzzer.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  echo "== $fuzzer: ${seconds}s (log $log)"
  rc=0
  "$build/fuzz/$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 \
    -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts" \
    "$work" "$root/fuzz/corpus/$fuzzer" >"$log" 2>&1 || rc=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  if [[ $rc -eq 0 ]]; then
    echo "   ok: ${runs:-?} inputs, corpus $(find "$work" -type f | wc -l) new files"
  else
    status=1
    echo "   FAILED (exit $rc); artifacts in $artifacts:"
    ls -1 "$artifacts" | sed 's/^/     /'
    grep -E -m1 -A30 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|FUZZ_CHECK' \
      "$log" || tail -n 40 "$log"
  fi
done
exit $status
