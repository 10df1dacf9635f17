#!/usr/bin/env bash
# Proxy benchmark (issue 5): 1,000 concurrent clients streaming different chunk ranges from one
# proxy over loopback, from a warm cache.
#   - a master and a proxy (`serve --role proxy`) on 127.0.0.1, fresh data directories;
#   - one artifact published to the master (the corpus' largest file by default: biome-patch's
#     new version, ~100 MB = ~1,500 leaves of 64 KiB);
#   - every chunk URL of 4 leaves (256 KiB) is fetched once through the proxy (warm cache);
#   - wrk with 1,000 connections on 2 threads for 20 s, each request a random 256 KiB chunk;
# and prints aggregate throughput, latency percentiles (wrk measures request to last byte, an
# upper bound of time to first byte), errors, and the proxy's peak RSS (VmHWM).
#
#   bench/proxy_bench.sh [FILE]    (default bench/corpus/biome-patch/new)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
file=${1:-bench/corpus/biome-patch/new}
ds=${DELTASTREAM:-build/src/cli/deltastream}
[[ -f "$file" ]] || { echo "proxy_bench: $file missing (bench/fetch_corpus.sh)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "proxy_bench: wrk missing (scripts/install-deps.sh --bench)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/proxy_bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start() {  # name args...
  local name=$1; shift
  "$ds" serve --data-dir "$work/$name" --listen 127.0.0.1:0 --port-file "$work/$name.port" "$@" \
    2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do [[ -s "$work/$name.port" ]] && break; sleep 0.1; done
  [[ -s "$work/$name.port" ]] || { cat "$work/$name.log" >&2; exit 1; }
}
start master
master="http://$(cat "$work/master.port")"
"$ds" publish -q --server "$master" --token-file "$work/master/admin.token" \
  --artifact bench --version 1.0.0 "$file"
start proxy --role proxy --upstream "$master" --cache-max-mib 4096
proxy_pid=${pids[-1]}
proxy="http://$(cat "$work/proxy.port")"

sha=$(sha256sum "$file" | cut -d' ' -f1)
size=$(stat -c %s "$file")
leaf=65536
leaves=$(( (size + leaf - 1) / leaf ))
per=4
chunks=$(( (leaves + per - 1) / per ))
# Warm the cache: every 4-leaf chunk once.
t0=$(date +%s.%N)
for ((c = 0; c < chunks; c++)); do
  first=$((c * per)); last=$((first + per - 1)); ((last < leaves)) || last=$((leaves - 1))
  echo "url = \"$proxy/v1/chunks/$sha/$first-$last\""
  echo "output = /dev/null"
done >"$work/curl.cfg"
curl -fsS --parallel --parallel-max 16 -K "$work/curl.cfg"
t1=$(date +%s.%N)

cat >"$work/chunks.lua" <<LUA
math.randomseed(os.time())
local n, per, leaves = $chunks, $per, $leaves
request = function()
  local c = math.random(0, n - 1)
  local first = c * per
  local last = math.min(first + per - 1, leaves - 1)
  return wrk.format("GET", "/v1/chunks/$sha/" .. first .. "-" .. last)
end
LUA
wrk -t2 -c1000 -d20s --timeout 10s --latency -s "$work/chunks.lua" "$proxy" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
# Time to first byte under that load: one more client sampling random chunks while wrk runs.
sleep 2
for ((k = 0; k < 200; k++)); do
  c=$((RANDOM % chunks)); first=$((c * per)); last=$((first + per - 1)); ((last < leaves)) || last=$((leaves - 1))
  curl -fsS -o /dev/null -w '%{time_starttransfer}\n' "$proxy/v1/chunks/$sha/$first-$last"
done >"$work/ttfb.txt"
wait "$wrk_pid"
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$proxy_pid/status")
metrics=$(curl -fsS "$proxy/metrics")

python3 - "$work/wrk.txt" "$rss_kib" "$size" "$chunks" "$(echo "$t1 - $t0" | bc -l)" "$work/ttfb.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rss_kib, size, chunks, warm_s = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
tr = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", t)
mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[tr.group(2)]
bps = float(tr.group(1)) * mult
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else (v * 1000 if u == "s" else v)
ttfb = sorted(float(x) * 1000 for x in open(sys.argv[6]).read().split())
tp = lambda q: ttfb[min(len(ttfb) - 1, int(q * len(ttfb)))]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: (.*)", t)
print("## deltastream proxy benchmark\n")
print("- 1,000 connections (wrk -t2 -c1000 -d20s), random 256 KiB chunks (4 leaves) of a %d B artifact (%d chunks), warm cache; 2 CPUs shared by wrk and the proxy\n" % (size, chunks))
print("| measurement | value | target |")
print("|---|---:|---:|")
print("| warm-up: every chunk once through the proxy (cold, from the master) | %.2f s |  |" % warm_s)
print("| aggregate throughput | %.2f GB/s (%.0f MB/s) | >= 1 GB/s |" % (bps / 1e9, bps / 1e6))
print("| requests/s | %.0f |  |" % rps)
print("| latency to last byte p50 / p90 / p99 | %.1f / %.1f / %.1f ms | p99 TTFB <= 50 ms |" % (pct(50), pct(90), pct(99)))
print("| time to first byte under load (%d samples) p50 / p90 / p99 | %.1f / %.1f / %.1f ms | p99 <= 50 ms |" % (len(ttfb), tp(0.5), tp(0.9), tp(0.99)))
print("| non-2xx responses, socket errors | %s, %s |  |" % (errs.group(1) if errs else "0", sock.group(1) if sock else "none"))
print("| proxy peak RSS (VmHWM) | %.0f MiB | <= 512 MiB |" % (rss_kib / 1024))
PY
echo
echo "proxy counters:"
grep -E '^ds_proxy_(hits|misses|upstream_fetches)' <<<"$metrics" || true
