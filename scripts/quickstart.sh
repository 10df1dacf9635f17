#!/usr/bin/env bash
# The main job, end to end on this machine with embedded defaults (SQLite + local files,
# everything on localhost): installs what is missing, builds deltastream, starts the master
# repository (`deltastream serve`) on a free local port with a fresh data directory, publishes two
# real versions of a real binary (esbuild 0.28.1 -> 0.28.2 from the npm registry), waits for the
# master to make the delta, verifies the signed release metadata with the pinned public key,
# downloads the delta, applies it to the old version, checks the result against the signed
# SHA-256 and byte for byte, and prints sizes, ratios and times.
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
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$table" "$work"
}
trap cleanup EXIT
awk -F'\t' -v id="$pair" '/^#/ || $1 == id' bench/corpus.tsv >"$table"
if ! grep -q "^$pair	" "$table"; then
  echo "quickstart: unknown pair '$pair' (see bench/corpus.tsv)" >&2
  exit 1
fi
CORPUS_TSV="$table" bench/fetch_corpus.sh bench/corpus >/dev/null
old=bench/corpus/$pair/old
new=bench/corpus/$pair/new
ds=build/src/cli/deltastream
read -r old_version new_version < <(awk -F'\t' -v id="$pair" '$1 == id {print $5, $6}' "$table")

now() { date +%s.%N; }
# The master on a free port; its first start creates the signing key and an admin token.
"$ds" serve --data-dir "$work/data" --listen 127.0.0.1:0 --port-file "$work/port" \
  2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || { cat "$work/server.log" >&2; exit 1; }
server="http://$(cat "$work/port")"
client=(--server "$server" --token-file "$work/data/admin.token")
echo "master: $server (data $work/data)"

t0=$(now)
"$ds" publish "${client[@]}" --artifact "$pair" --version "$old_version" "$old"
t1=$(now)
"$ds" publish "${client[@]}" --artifact "$pair" --version "$new_version" "$new" --wait
t2=$(now)
"$ds" versions "${client[@]}" "$pair"

# The device's side: verify the signed metadata with the pinned key, then fetch and apply.
"$ds" metadata "${client[@]}" "$pair" --public-key "$work/data/keys/signing.pub" \
  >"$work/metadata.json"
new_sha=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print([v["sha256"] for v in m["versions"] if v["version"]==sys.argv[2]][0])' "$work/metadata.json" "$new_version")
delta_url=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); d=[d for d in m["deltas"] if d["from"]==sys.argv[2] and d["to"]==sys.argv[3]]; print("/v1/deltas/%d/data" % d[0]["id"] if d else "")' "$work/metadata.json" "$old_version" "$new_version")
[[ -n "$delta_url" ]] || { echo "quickstart: the master made no delta (see $work/server.log)" >&2; exit 1; }
t3=$(now)
curl -fsS -o "$work/patch" "$server$delta_url"
"$ds" apply "$old" "$work/patch" -o "$work/rebuilt"
t4=$(now)
[[ "$(sha256sum "$work/rebuilt" | cut -d' ' -f1)" == "$new_sha" ]]
cmp "$work/rebuilt" "$new"
zstd -q -19 --long=27 -c "$new" >"$work/full.zst"

old_size=$(stat -c %s "$old")
new_size=$(stat -c %s "$new")
patch_size=$(stat -c %s "$work/patch")
full_size=$(stat -c %s "$work/full.zst")
echo
echo "pair              $pair ($(cat "bench/corpus/$pair/SOURCE"))"
printf 'old               %12d B\n' "$old_size"
printf 'new               %12d B\n' "$new_size"
printf 'full, zstd -19    %12d B  (%.2f%% of new)\n' "$full_size" \
  "$(echo "100 * $full_size / $new_size" | bc -l)"
printf 'delta             %12d B  (%.2f%% of new, %.1fx smaller than the full download)\n' \
  "$patch_size" "$(echo "100 * $patch_size / $new_size" | bc -l)" \
  "$(echo "$full_size / $patch_size" | bc -l)"
printf 'publish old       %12.2f s\n' "$(echo "$t1 - $t0" | bc -l)"
printf 'publish new+delta %12.2f s  (upload, then the master makes and verifies the delta)\n' \
  "$(echo "$t2 - $t1" | bc -l)"
printf 'fetch+apply       %12.2f s  (signed metadata verified; result matches its signed SHA-256)\n' \
  "$(echo "$t4 - $t3" | bc -l)"
echo
"$ds" inspect "$work/patch"
