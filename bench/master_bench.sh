#!/usr/bin/env bash
# Master repository benchmark (issue 4): starts `deltastream serve` on localhost with a fresh data
# directory and measures
#   1. publish throughput: upload + store (hash, fsync, rename) + catalog of a ~100 MB artifact;
#   2. publish -> deltas ready: publishing the corpus' largest pair's new version with --wait
#      (delta job: suffix sort, match, encode, verify by applying; plus the zstd -19 size);
#   3. metadata reads under load: wrk, 256 connections, 2 threads, 10 s each on the signed metadata
#      and on "latest" (requests/s and latency percentiles incl. p99).
#
#   bench/master_bench.sh [PAIR_ID]   (default biome-patch, the largest pair; needs the corpus:
#                                      bench/fetch_corpus.sh) — prints a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pair=${1:-biome-patch}
ds=${DELTASTREAM:-build/src/cli/deltastream}
old=bench/corpus/$pair/old
new=bench/corpus/$pair/new
[[ -f "$old" && -f "$new" ]] || { echo "master_bench: $pair not in bench/corpus (run bench/fetch_corpus.sh)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "master_bench: wrk missing (scripts/install-deps.sh --bench)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/master_bench.XXXXXX")
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$ds" serve --data-dir "$work/data" --listen 127.0.0.1:0 --port-file "$work/port" \
  --job-workers 1 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || { cat "$work/server.log" >&2; exit 1; }
server="http://$(cat "$work/port")"
client=(--server "$server" --token-file "$work/data/admin.token" -q)

now() { date +%s.%N; }
old_size=$(stat -c %s "$old")
new_size=$(stat -c %s "$new")
cat "$old" "$new" >/dev/null  # warm the page cache: measure the server, not the source disk

t0=$(now)
"$ds" publish "${client[@]}" --artifact "$pair" --version 1.0.0 "$old"
t1=$(now)
"$ds" publish "${client[@]}" --artifact "$pair" --version 1.0.1 "$new" --wait --wait-seconds 3600
t2=$(now)
jobs_json=$("$ds" jobs --server "$server" --json)
publish_s=$(echo "$t1 - $t0" | bc -l)
ready_s=$(echo "$t2 - $t1" | bc -l)
delta_line=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1])["jobs"][0]; print(j["status"], j["size"], j["gen_seconds"])' "$jobs_json")

wrk_run() {  # path -> "req/s p50 p90 p99"
  wrk -t2 -c256 -d10s --latency "$server$1" >"$work/wrk.txt" 2>&1
  python3 - "$work/wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else (v * 1000 if u == "s" else v)
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: (.*)", t)
print("%s %.2f %.2f %.2f %s %s" % (rps, pct(50), pct(90), pct(99),
      errs.group(1) if errs else "0", (sock.group(1).replace(" ", "") if sock else "none")))
PY
}
read -r m_rps m_p50 m_p90 m_p99 m_err m_sock < <(wrk_run "/v1/artifacts/$pair/metadata")
read -r l_rps l_p50 l_p90 l_p99 l_err l_sock < <(wrk_run "/v1/artifacts/$pair/latest")

echo "## deltastream master benchmark"
echo
echo "- date: $(date '+%Y-%m-%d %H:%M'); host: $(nproc) CPUs; pair: $pair ($(cat "bench/corpus/$pair/SOURCE" 2>/dev/null || echo '?'))"
echo "- server: \`deltastream serve\` on 127.0.0.1, fresh data directory on $(df -h "$work" | awk 'NR==2 {print $1}'), 1 job worker"
echo
echo "| measurement | value |"
echo "|---|---:|"
printf '| publish %s (%d B): time | %.2f s |\n' 1.0.0 "$old_size" "$publish_s"
printf '| publish throughput | %.0f MB/s |\n' "$(echo "$old_size / $publish_s / 1000000" | bc -l)"
printf '| publish %s (%d B) until its delta is ready | %.2f s |\n' 1.0.1 "$new_size" "$ready_s"
read -r d_status d_size d_gen <<<"$delta_line"
printf '| delta job: status, patch size, generation time | %s, %d B, %.2f s |\n' "$d_status" "$d_size" "$d_gen"
printf '| signed metadata, 256 connections: requests/s | %.0f |\n' "$m_rps"
printf '| signed metadata: latency p50 / p90 / p99 | %.2f / %.2f / %.2f ms |\n' "$m_p50" "$m_p90" "$m_p99"
printf '| signed metadata: non-2xx responses, socket errors | %s, %s |\n' "$m_err" "$m_sock"
printf '| latest version, 256 connections: requests/s | %.0f |\n' "$l_rps"
printf '| latest version: latency p50 / p90 / p99 | %.2f / %.2f / %.2f ms |\n' "$l_p50" "$l_p90" "$l_p99"
printf '| latest version: non-2xx responses, socket errors | %s, %s |\n' "$l_err" "$l_sock"
