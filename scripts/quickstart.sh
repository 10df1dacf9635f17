#!/usr/bin/env bash
# The main job, end to end on this machine with embedded defaults (SQLite + local files,
# everything on localhost): installs what is missing, builds deltastream, starts the master
# repository (`deltastream serve`) on a free local port with a fresh data directory, publishes two
# real versions of a real binary (esbuild 0.28.1 -> 0.28.2 from the npm registry), waits for the
# master to make the delta, verifies the signed release metadata with the pinned public key,
# starts a proxy in front of the master, and has the device agent (deltastream-agent) update a
# copy of the old version through the proxy: verified chunked delta stream, apply, result checked
# against the signed SHA-256, atomic install — driven by the deployment service: the agent
# enrols (`deltastream-agent run`), a deployment to the new version is created
# (`deltastream deploy create`), the agent takes the instruction, updates and reports; the
# dashboard's URL is printed to watch it. Checks the installed file byte for byte and prints
# sizes, ratios and times.
#
#   scripts/quickstart.sh [PAIR_ID]   (any id from bench/corpus.tsv; default esbuild-patch)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pair=${1:-esbuild-patch}

scripts/install-deps.sh --bench
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build deltastream deltastream-agent

# Fetch just this pair with the benchmark's own fetcher.
table=$(mktemp)
work=$(mktemp -d)
server_pid=
proxy_pid=
cleanup() {
  for pid in $proxy_pid $server_pid; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
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
# Versions are published as SemVer (docs/API.md): a Debian version's "~" (3.0.20-1~deb12u2)
# becomes "." (3.0.20-1.deb12u2), which orders the pair the same way.
old_version=${old_version//\~/.}
new_version=${new_version//\~/.}

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
delta_id=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); d=[d for d in m["deltas"] if d["from"]==sys.argv[2] and d["to"]==sys.argv[3]]; print(d[0]["id"] if d else "")' "$work/metadata.json" "$old_version" "$new_version")
[[ -n "$delta_id" ]] || { echo "quickstart: the master made no delta (see $work/server.log)" >&2; exit 1; }

# A proxy in front of the master, and a device (the agent) holding the old version.
"$ds" serve --role proxy --upstream "$server" --data-dir "$work/proxy" --listen 127.0.0.1:0 \
  --port-file "$work/proxy.port" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do [[ -s "$work/proxy.port" ]] && break; sleep 0.1; done
[[ -s "$work/proxy.port" ]] || { cat "$work/proxy.log" >&2; exit 1; }
proxy="http://$(cat "$work/proxy.port")"
echo "proxy:  $proxy"
mkdir -p "$work/device"
cp "$old" "$work/device/$pair"
agent=(build/src/agent/deltastream-agent --proxy "$proxy" --public-key-file "$work/data/keys/signing.pub"
       --state-dir "$work/agent-state" --artifact "$pair=$work/device/$pair")
"${agent[@]}" check
# The deployment service runs in the master's process: the device enrols and reports its
# inventory, then a deployment of the new version to it is created.
run=(run --once --deploy-url "$server" --enroll-token "$(cat "$work/data/enroll.token")"
     --device-id quickstart-device --label site=local)
"${agent[@]}" --json "${run[@]}" >/dev/null
deployment=$("$ds" deploy create "${client[@]}" --artifact "$pair" --version "$new_version" \
  --device quickstart-device --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "deployment $deployment: dashboard $server/dashboard?token=$(cat "$work/data/admin.token")"
t3=$(now)
# The first wave starts once its deltas are ready (pre-warming); the agent then takes it.
for _ in $(seq 30); do
  "${agent[@]}" --json "${run[@]}" >>"$work/agent.jsonl"
  cmp -s "$work/device/$pair" "$new" && break
  sleep 1
done
t4=$(now)
"$ds" deploy show "${client[@]}" "$deployment" --json >"$work/deployment.json"
[[ "$(sha256sum "$work/device/$pair" | cut -d' ' -f1)" == "$new_sha" ]]
cmp "$work/device/$pair" "$new"
"${agent[@]}" status >/dev/null
zstd -q -19 --long=27 -c "$new" >"$work/full.zst"

old_size=$(stat -c %s "$old")
new_size=$(stat -c %s "$new")
# What the device reported to the deployment service (its final event).
read -r state route patch_size < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
dev = [x for x in d["devices"] if x["device_id"] == "quickstart-device"][0]
print(d["state"], dev["result"], dev["bytes"])' "$work/deployment.json")
[[ "$state" == finished && "$route" == delta ]] ||
  { echo "quickstart: deployment $state, device result $route" >&2; exit 1; }
full_size=$(stat -c %s "$work/full.zst")
echo
echo "pair              $pair ($(cat "bench/corpus/$pair/SOURCE"))"
printf 'old               %12d B\n' "$old_size"
printf 'new               %12d B\n' "$new_size"
printf 'full, zstd -19    %12d B  (%.2f%% of new)\n' "$full_size" \
  "$(echo "100 * $full_size / $new_size" | bc -l)"
printf 'delta fetched     %12d B  (%.2f%% of new, %.1fx smaller than the full download)\n' \
  "$patch_size" "$(echo "100 * $patch_size / $new_size" | bc -l)" \
  "$(echo "$full_size / $patch_size" | bc -l)"
printf 'publish old       %12.2f s\n' "$(echo "$t1 - $t0" | bc -l)"
printf 'publish new+delta %12.2f s  (upload, then the master makes and verifies the delta)\n' \
  "$(echo "$t2 - $t1" | bc -l)"
printf 'agent update      %12.2f s  (deployment instruction, then via the proxy: signed metadata,\n' \
  "$(echo "$t4 - $t3" | bc -l)"
echo '                                 verified chunks, apply, result = signed SHA-256, atomic'
echo '                                 install, events reported to the deployment service)'
echo "deployment        $deployment: $state ($server/dashboard while the server runs)"
echo
curl -fsS -o "$work/patch" "$proxy/v1/deltas/$delta_id/data"
"$ds" inspect "$work/patch"
