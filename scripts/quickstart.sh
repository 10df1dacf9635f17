#!/usr/bin/env bash
# The main job, end to end on this machine: installs what is missing, builds deltastream, fetches
# two real versions of a real binary (esbuild 0.28.1 -> 0.28.2 from the npm registry), makes a
# patch, applies it, verifies the result byte for byte and prints sizes, ratios and times.
#
#   scripts/quickstart.sh [PAIR_ID]   (any id from bench/corpus.tsv; default esbuild-patch)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pair=${1:-esbuild-patch}

scripts/install-deps.sh --bench
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build deltastream

# Fetch just this pair with the benchmark's own fetcher.
table=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$table" "$work"' EXIT
awk -F'\t' -v id="$pair" '/^#/ || $1 == id' bench/corpus.tsv >"$table"
if ! grep -q "^$pair	" "$table"; then
  echo "quickstart: unknown pair '$pair' (see bench/corpus.tsv)" >&2
  exit 1
fi
CORPUS_TSV="$table" bench/fetch_corpus.sh bench/corpus >/dev/null
old=bench/corpus/$pair/old
new=bench/corpus/$pair/new
ds=build/src/cli/deltastream

now() { date +%s.%N; }
t0=$(now)
"$ds" diff "$old" "$new" -o "$work/patch.dsp"
t1=$(now)
"$ds" apply "$old" "$work/patch.dsp" -o "$work/rebuilt"
t2=$(now)
cmp "$work/rebuilt" "$new"
zstd -q -19 --long=27 -c "$new" >"$work/full.zst"

old_size=$(stat -c %s "$old")
new_size=$(stat -c %s "$new")
patch_size=$(stat -c %s "$work/patch.dsp")
full_size=$(stat -c %s "$work/full.zst")
echo
echo "pair            $pair ($(cat "bench/corpus/$pair/SOURCE"))"
printf 'old             %12d B\n' "$old_size"
printf 'new             %12d B\n' "$new_size"
printf 'full, zstd -19  %12d B  (%.2f%% of new)\n' "$full_size" \
  "$(echo "100 * $full_size / $new_size" | bc -l)"
printf 'patch           %12d B  (%.2f%% of new, %.1fx smaller than the full download)\n' \
  "$patch_size" "$(echo "100 * $patch_size / $new_size" | bc -l)" \
  "$(echo "$full_size / $patch_size" | bc -l)"
printf 'diff time       %12.2f s\n' "$(echo "$t1 - $t0" | bc -l)"
printf 'apply time      %12.2f s  (SHA-256 of old and new verified; output identical)\n' \
  "$(echo "$t2 - $t1" | bc -l)"
echo
"$ds" inspect "$work/patch.dsp"
