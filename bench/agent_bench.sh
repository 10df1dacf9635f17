#!/usr/bin/env bash
# Agent benchmark: deltastream-agent over a shaped link, delta against full download, and the
# adaptive chunk controller across a bandwidth step (docs/PROTOCOL.md, "Agent: adaptive chunk
# controller"). Needs root (network namespaces, tc).
#
#   - a lab like tests/support/netlab.cc: namespaces dsbench-s (master) and dsbench-c (agent),
#     one veth pair (10.201.0.1/30 - 10.201.0.2), GSO off (gso_max_segs 1), tc tbf on both ends
#     (burst = 5 ms of traffic, at least 4 x 1514 B; limit = burst + 50 ms, at least 10 frames);
#   - a master (`deltastream serve`) in dsbench-s; corpus pairs published as <pair> 1.0.0 (old)
#     and 2.0.0 (new) with --wait, so the master has made the delta;
#   - per pair at $MBIT Mbit/s (default 10): the agent's delta update (old installed), the agent's
#     full download (nothing installed) and a plain `curl` of the new version's blob (what an
#     updater without deltas would fetch); wall times, bytes fetched, results checked with cmp;
#   - a bandwidth step: synthetic versions (40 MiB random; the new one with 256 random 128 KiB
#     blocks, ~34 MB delta) as artifact `stepbench`; the agent starts at 50 Mbit/s and the link
#     drops to 5 Mbit/s once $STEP_AT (default 0.65) of the delta has arrived (~4 s at 50, ~19 s
#     at 5 Mbit/s). The agent's JSON
#     progress events are drawn with gnuplot to docs/agent_step.svg and docs/agent_step.png.
#
#   bench/agent_bench.sh [PAIR...]   (default: esbuild-patch lightningcss-minor babel-min-patch)
#   env: MBIT=10 STEP_FROM=50 STEP_TO=5 STEP_AT=0.65 KEEP=1 (keep the work directory)
#        DELTASTREAM=build/src/cli/deltastream DELTASTREAM_AGENT=build/src/agent/deltastream-agent
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ds=$(realpath "${DELTASTREAM:-build/src/cli/deltastream}")
agent=$(realpath "${DELTASTREAM_AGENT:-build/src/agent/deltastream-agent}")
pairs=("$@")
((${#pairs[@]})) || pairs=(esbuild-patch lightningcss-minor babel-min-patch)
mbit=${MBIT:-10}
step_from=${STEP_FROM:-50}
step_to=${STEP_TO:-5}
step_at=${STEP_AT:-0.65}
svg=docs/agent_step.svg
png=docs/agent_step.png

die() { echo "agent_bench: $*" >&2; exit 1; }
((EUID == 0)) || die "needs root (network namespaces, tc)"
for t in ip tc curl python3 gnuplot cmp; do
  command -v "$t" >/dev/null || die "$t missing (scripts/install-deps.sh --bench)"
done
[[ -x "$ds" && -x "$agent" ]] || die "build first: ninja -C build deltastream deltastream-agent"
for p in "${pairs[@]}"; do
  [[ -f bench/corpus/$p/old && -f bench/corpus/$p/new ]] ||
    die "bench/corpus/$p missing (bench/fetch_corpus.sh)"
done

ns_s=dsbench-s ns_c=dsbench-c
dev_s=veth-srv dev_c=veth-cli
ip_s=10.201.0.1 ip_c=10.201.0.2
for ns in $ns_s $ns_c; do
  if [[ -e /var/run/netns/$ns ]]; then
    [[ -z "$(ip netns pids $ns)" ]] || die "namespace $ns is in use (another agent_bench run?)"
    ip netns del $ns  # A leftover of a run that was killed.
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/agent_bench.XXXXXX")
made_ns=()
cleanup() {
  local rc=$? ns pids
  trap - EXIT INT TERM
  for ns in "${made_ns[@]}"; do
    for _ in $(seq 100); do
      pids=$(ip netns pids "$ns" 2>/dev/null) || break
      [[ -n "$pids" ]] || break
      kill -9 $pids 2>/dev/null || true
      sleep 0.05
    done
    ip netns del "$ns" 2>/dev/null || echo "agent_bench: could not delete namespace $ns" >&2
  done
  if [[ -n "${KEEP:-}" ]]; then echo "agent_bench: work directory kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The lab ------------------------------------------------------------------------------------
for ns in $ns_s $ns_c; do ip netns add $ns; made_ns+=($ns); done
ip link add $dev_s netns $ns_s type veth peer name $dev_c netns $ns_c
for end in "$ns_s $dev_s $ip_s" "$ns_c $dev_c $ip_c"; do
  read -r ns dev addr <<<"$end"
  ip -n "$ns" addr add "$addr/30" dev "$dev"
  # One wire packet per skb, so that tbf meters frames, not 64 KiB GSO super-packets.
  ip -n "$ns" link set dev "$dev" gso_max_segs 1
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$dev" up
done
# tbf on both ends, the parameters of NetLab::SetBandwidth.
shape() {  # MBIT
  local rate burst limit
  read -r rate burst limit < <(awk -v m="$1" 'BEGIN {
    bps = m * 1e6 / 8; f = 1514
    b = bps * 0.005; if (b < 4 * f) b = 4 * f
    l = bps * 0.050; if (l < 10 * f) l = 10 * f
    r = m * 1e6; if (r < 8) r = 8
    printf "%.0f %d %d\n", r, int(b), int(b) + int(l) }')
  tc -n $ns_s qdisc replace dev $dev_s root tbf rate "${rate}bit" burst "$burst" limit "$limit"
  tc -n $ns_c qdisc replace dev $dev_c root tbf rate "${rate}bit" burst "$burst" limit "$limit"
}
shape "$mbit"
now() { date +%s.%N; }
in_s() { ip netns exec $ns_s "$@"; }
in_c() { ip netns exec $ns_c "$@"; }

# --- The master and the published versions -----------------------------------------------------
# Synthetic versions for the step run: random, so that the delta is the changed blocks.
python3 - "$work/step-old" "$work/step-new" <<'PY'
import random, sys
size, blocks, block = 40 << 20, 256, 128 << 10
r = random.Random(7)
data = bytearray(r.randbytes(size))
open(sys.argv[1], "wb").write(data)
step = size // blocks
for k in range(blocks):
    at = step * k + r.randrange(step - block)
    data[at:at + block] = r.randbytes(block)
open(sys.argv[2], "wb").write(data)
PY

in_s "$ds" serve --data-dir "$work/data" --listen $ip_s:0 --port-file "$work/port" \
  2>"$work/server.log" &
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || { cat "$work/server.log" >&2; die "the master did not start"; }
url="http://$(cat "$work/port")"
pub="$work/data/keys/signing.pub"
client=(--server "$url" --token-file "$work/data/admin.token")
echo "master: $url in namespace $ns_s; agent in $ns_c; link $mbit Mbit/s (tbf, both directions)"

declare -A old_of new_of
for p in "${pairs[@]}"; do old_of[$p]=bench/corpus/$p/old; new_of[$p]=bench/corpus/$p/new; done
old_of[stepbench]=$work/step-old
new_of[stepbench]=$work/step-new
t0=$(now)
for a in stepbench "${pairs[@]}"; do
  in_s "$ds" publish -q "${client[@]}" --artifact "$a" --version 1.0.0 "${old_of[$a]}"
done
# The new versions; the master makes the deltas one after the other (one job worker, 2 threads).
pub_pids=()
for a in stepbench "${pairs[@]}"; do
  in_s "$ds" publish "${client[@]}" --artifact "$a" --version 2.0.0 "${new_of[$a]}" --wait \
    --wait-seconds 600 >"$work/publish-$a.log" 2>&1 &
  pub_pids+=($!)
done
for k in "${!pub_pids[@]}"; do
  wait "${pub_pids[$k]}" || { cat "$work/publish-"*.log >&2; die "publish failed"; }
done
printf 'published %d artifacts and made their deltas in %.1f s\n' $((${#pairs[@]} + 1)) \
  "$(echo "$(now) - $t0" | bc -l)"

# Signed metadata: the new version's blob and the delta 1.0.0 -> 2.0.0 (empty if none).
meta() {  # ARTIFACT -> "sha256 size delta_length"
  in_s "$ds" metadata "${client[@]}" --public-key "$pub" "$1" >"$work/meta-$1.json" 2>>"$work/meta.log"
  python3 - "$work/meta-$1.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
v = [v for v in m["versions"] if v["version"] == "2.0.0"][0]
d = [d for d in m["deltas"] if d["from"] == "1.0.0" and d["to"] == "2.0.0"]
print(v["sha256"], v["length"], d[0]["length"] if d else "")
PY
}

run_agent() {  # DIR ARTIFACT [extra agent args...]: JSON lines to DIR/agent.jsonl
  local dir=$1 a=$2; shift 2
  in_c "$agent" --proxy "$url" --public-key-file "$pub" --state-dir "$dir/state" \
    --artifact "$a=$dir/installed" --json "$@" update >"$dir/agent.jsonl" 2>"$dir/agent.err"
}
rx() { in_c cat /sys/class/net/$dev_c/statistics/rx_bytes; }  # Received by the client's end.
result_field() {  # JSONL FIELD: the final result's field
  python3 -c 'import json,sys
r=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print([e for e in r if e.get("event")=="result"][-1][sys.argv[2]])' "$1" "$2"
}

# --- Delta vs full, per pair -------------------------------------------------------------------
# Other work on the machine skews the times: say how busy it was.
echo "load average before the measurements: $(cut -d' ' -f1-3 /proc/loadavg)"
rows=()
for p in "${pairs[@]}"; do
  read -r sha size dlen < <(meta "$p")
  [[ -n "$dlen" ]] || die "$p: the master made no delta (see $work/server.log)"
  # (a) delta: the old version installed.
  d=$work/run/$p/delta; mkdir -p "$d"; cp "${old_of[$p]}" "$d/installed"
  r0=$(rx); ta=$(now); run_agent "$d" "$p" || { cat "$d/agent.err" >&2; die "$p: delta update failed"; }; tb=$(now)
  drx=$(($(rx) - r0))
  cmp -s "$d/installed" "${new_of[$p]}" || die "$p: delta update installed the wrong bytes"
  [[ "$(result_field "$d/agent.jsonl" route)" == delta ]] || die "$p: the agent did not take the delta route"
  dfetched=$(result_field "$d/agent.jsonl" bytes_fetched)
  dwall=$(echo "$tb - $ta" | bc -l)
  # (b) full: nothing installed.
  f=$work/run/$p/full; mkdir -p "$f"
  r0=$(rx); ta=$(now); run_agent "$f" "$p" || { cat "$f/agent.err" >&2; die "$p: full update failed"; }; tb=$(now)
  frx=$(($(rx) - r0))
  cmp -s "$f/installed" "${new_of[$p]}" || die "$p: full update installed the wrong bytes"
  froute=$(result_field "$f/agent.jsonl" route)
  ffetched=$(result_field "$f/agent.jsonl" bytes_fetched)
  fwall=$(echo "$tb - $ta" | bc -l)
  # (c) plain HTTP download of the new version.
  r0=$(rx); ta=$(now); in_c curl -fsS -o "$work/run/$p/curl" "$url/v1/blobs/$sha"; tb=$(now)
  crx=$(($(rx) - r0))
  cmp -s "$work/run/$p/curl" "${new_of[$p]}" || die "$p: curl fetched the wrong bytes"
  cwall=$(echo "$tb - $ta" | bc -l)
  rm -f "$work/run/$p/curl" "$f/installed"
  rows+=("$p $size $dlen $dfetched $ffetched $froute $dwall $fwall $cwall $drx $frx")
  printf '  %s: delta %.2f s (%d B received), full (agent, %s) %.2f s (%d B), curl %.2f s (%d B)\n' \
    "$p" "$dwall" "$drx" "$froute" "$fwall" "$frx" "$cwall" "$crx"
done

group() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }  # 1234567 -> 1,234,567
echo
echo "Delta vs full at $mbit Mbit/s: wall seconds of the whole command in the client namespace;"
echo "fetched = the agent's bytes_fetched; rx = bytes received by the client's interface (headers too)"
echo
echo "| pair | new size B | delta B | delta: fetched / rx B | full: fetched / rx B | delta s | full (agent) s | full (curl) s | delta/full | delta/curl |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${rows[@]}"; do
  read -r p size dlen dfetched ffetched froute dwall fwall cwall drx frx <<<"$r"
  LC_NUMERIC=C printf '| %s | %s | %s | %s / %s | %s / %s%s | %.2f | %.2f | %.2f | %.3f | %.3f |\n' "$p" \
    "$(group "$size")" "$(group "$dlen")" "$(group "$dfetched")" "$(group "$drx")" \
    "$(group "$ffetched")" "$(group "$frx")" "$([[ $froute == full ]] || echo " ($froute)")" \
    "$dwall" "$fwall" "$cwall" "$(echo "$dwall / $fwall" | bc -l)" "$(echo "$dwall / $cwall" | bc -l)"
done

# --- Bandwidth step ---------------------------------------------------------------------------
read -r sha size dlen < <(meta stepbench)
[[ -n "$dlen" ]] || die "stepbench: the master made no delta (see $work/server.log)"
echo
echo "Bandwidth step: stepbench, $size B new, delta $dlen B; $step_from Mbit/s, then $step_to Mbit/s" \
  "after $step_at of the delta"
s=$work/run/stepbench; mkdir -p "$s"; cp "$work/step-old" "$s/installed"
shape "$step_from"
run_agent "$s" stepbench &
agent_pid=$!
# Poll the progress events; the agent's clock (t) is mapped to ours by the earliest sighting.
offset= t_step= last=
while kill -0 "$agent_pid" 2>/dev/null; do
  line=$(grep '"event":"progress"' "$s/agent.jsonl" 2>/dev/null | tail -n 1 || true)
  if [[ -n "$line" && "$line" != "$last" ]]; then
    last=$line
    [[ $line =~ \"t\":([0-9.e+-]+) ]] && at=${BASH_REMATCH[1]}
    o=$(echo "$(now) - $at" | bc -l)
    if [[ -z "$offset" ]] || (($(echo "$o < $offset" | bc -l))); then offset=$o; fi
    [[ $line =~ \"done\":([0-9]+) ]] && done_b=${BASH_REMATCH[1]}
    [[ $line =~ \"total\":([0-9]+) ]] && total_b=${BASH_REMATCH[1]}
    if [[ -z "$t_step" ]] && (($(echo "$done_b >= $step_at * $total_b" | bc -l))); then
      shape "$step_to"
      t_step=$(now)
    fi
  fi
  sleep 0.05
done
wait "$agent_pid" || { cat "$s/agent.err" >&2; die "stepbench: update failed"; }
[[ -n "$t_step" ]] || die "stepbench: finished before the step"
echo "  load average after the step run: $(cut -d' ' -f1-3 /proc/loadavg)"
cmp -s "$s/installed" "$work/step-new" || die "stepbench: installed the wrong bytes"
[[ "$(result_field "$s/agent.jsonl" route)" == delta ]] || die "stepbench: not the delta route"
step_t=$(echo "$t_step - $offset" | bc -l)
shape "$mbit"

# Chart data: the controller's estimate, the goodput measured from `done` over 1 s, the chunk.
python3 - "$s/agent.jsonl" "$work/step.dat" "$work/capacity.dat" "$step_t" "$step_from" "$step_to" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
pr = [e for e in ev if e.get("event") == "progress"]
t_step, hi, lo = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
end = [e["t"] for e in ev if e.get("event") == "verified"] or [pr[-1]["t"]]
with open(sys.argv[2], "w") as out:
    out.write("# t rate_mbit goodput_mbit chunk_kib in_flight rtt_ms done\n")
    j = 0
    for i, e in enumerate(pr):
        while pr[j]["t"] < e["t"] - 1.0:
            j += 1
        k = j if j < i else max(i - 1, 0)
        dt = e["t"] - pr[k]["t"]
        good = (e["done"] - pr[k]["done"]) * 8 / 1e6 / dt if dt > 0 else float("nan")
        out.write("%.3f %.3f %.3f %.1f %d %.1f %d\n" % (e["t"], e["rate"] * 8 / 1e6, good,
                  e["chunk_size"] / 1024, e["in_flight"], e["rtt"] * 1000, e["done"]))
with open(sys.argv[3], "w") as out:
    out.write("0 %g\n%.3f %g\n%.3f %g\n%.3f %g\n" % (hi, t_step, hi, t_step, lo, end[0], lo))

# A few numbers for the text.
def avg(a, b, key):
    xs = [e for e in pr if a <= e["t"] < b]
    return sum(key(e) for e in xs) / len(xs) if xs else float("nan")
first = pr[0]["t"]
pre = [e for e in pr if e["t"] < t_step]
post = [e for e in pr if e["t"] >= t_step]
done_at = lambda t: max([e["done"] for e in pr if e["t"] <= t] or [0])
print("  step at t = %.2f s (agent clock); download ended at t = %.2f s" % (t_step, end[0]))
if pre:
    t1 = max(first, t_step - 2)
    print("  before the step (t %.1f-%.1f s): goodput %.1f Mbit/s, estimate %.1f Mbit/s, chunk %s KiB, in flight %s" % (
        t1, t_step, (done_at(t_step) - done_at(t1)) * 8 / 1e6 / (t_step - t1),
        avg(t1, t_step, lambda e: e["rate"]) * 8 / 1e6,
        sorted({int(e["chunk_size"] / 1024) for e in pre if e["t"] >= t1}),
        sorted({e["in_flight"] for e in pre if e["t"] >= t1})))
# When the estimate and the chunk size settled after the step.
settle = None
for i, e in enumerate(post):
    if all(abs(x["rate"] * 8 / 1e6 - lo) <= 0.25 * lo for x in post[i:]):
        settle = e["t"]; break
print("  estimate within +-25 %% of %g Mbit/s for good from %s" % (
    lo, "t = %.2f s (%.2f s after the step)" % (settle, settle - t_step) if settle else "never"))
final_chunk = post[-1]["chunk_size"] if post else 0
cs = next((e["t"] for e in post if e["chunk_size"] == final_chunk), None)
if post:
    print("  chunk size after the step: %s KiB; the final %d KiB from t = %.2f s (%.2f s after the step)" % (
        [int(c) for c in dict.fromkeys(e["chunk_size"] / 1024 for e in post)], final_chunk / 1024,
        cs, cs - t_step))
    print("  goodput after the step: %.2f Mbit/s (%.0f %% of %g)" % (
        (pr[-1]["done"] - done_at(t_step)) * 8 / 1e6 / (pr[-1]["t"] - t_step),
        100 * (pr[-1]["done"] - done_at(t_step)) * 8 / 1e6 / (pr[-1]["t"] - t_step) / lo, lo))
PY

plot() {  # TERMINAL OUTPUT
  gnuplot <<GP
set terminal $1
set output "$2"
set title "deltastream-agent, $(printf %.1f "$(echo "$dlen / 1000000" | bc -l)") MB delta: link ${step_from} -> ${step_to} Mbit/s (tbf) at t = $(printf %.1f "$step_t") s"
set xrange [0:*]
set autoscale xfixmax
set xlabel "time since the agent started (s)"
set ylabel "Mbit/s"
set y2label "chunk size (KiB, log scale)"
set yrange [0:$(echo "$step_from * 1.3" | bc -l)]
set logscale y2 2
set y2range [32:32768]
set y2tics ("64" 64, "256" 256, "1024" 1024, "4096" 4096, "16384" 16384) nomirror
set ytics nomirror
set grid xtics ytics
set key top right box opaque
plot "$work/capacity.dat" using 1:2 with lines lw 3 lc rgb "#888888" title "link capacity (tbf)", \
     "$work/step.dat" using 1:3 with lines lw 1.5 lc rgb "#1f77b4" title "goodput (verified bytes, 1 s window)", \
     "$work/step.dat" using 1:2 with lines lw 2 lc rgb "#d62728" title "controller throughput estimate", \
     "$work/step.dat" using 1:4 axes x1y2 with steps lw 2 lc rgb "#2ca02c" title "chunk size (right axis)"
GP
}
plot "svg size 960,540 dynamic font 'sans,13' background rgb 'white'" "$svg"
plot "pngcairo size 1280,720 font 'sans,12' background rgb 'white'" "$png"
echo "chart: $svg and $png (data: the agent's --json progress events)"
