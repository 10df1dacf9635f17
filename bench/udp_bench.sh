#!/usr/bin/env bash
# UDP carrier benchmark (issue 7): goodput of the UDP carrier (FEC), our HTTP carrier and curl
# fetching the same full artifact from a proxy over a 20 Mbit/s tbf link with random loss, plus the
# UDP repair overhead. Needs root (network namespaces, tc, nft).
#
#   - namespaces dsudp-s (master + proxy with --udp-port 0) and dsudp-c (agent, curl), one veth
#     pair (10.202.0.1/30 - 10.202.0.2), GSO off, tc tbf $MBIT both ways (NetLab's parameters);
#   - loss: an nft prerouting rule `numgen random mod 10000 < N drop` on each end (both directions);
#   - per loss in $LOSSES: (a) the agent's first install over UDP, (b) the same over HTTP,
#     (c) curl of the blob from the proxy; results checked with cmp. Goodput = object bytes x 8 /
#     seconds of the transfer: for the two agent carriers from the agent's "plan" event (metadata
#     fetched and verified, the carrier starts: session request, handshake and startup count) to
#     the event where all bytes are in (its --json events), for curl its wall time; the agent
#     runs' whole wall times (process start, metadata over TCP, install) are shown too. Repair =
#     proxy's ds_proxy_udp_repair_bytes / source_bytes per UDP run.
#
#   - TCP congestion control in both namespaces: TCP_CC (default cubic, Debian's default; this
#     machine's host default may be bbr, which does not back off on random loss);
#   - DELAY_MS > 0: a third namespace dsudp-m between the two runs build/bench/delay_bridge, which
#     holds every frame DELAY_MS each way (netem is not available): RTT + 2 x DELAY_MS;
#   - the goodput vs loss chart is drawn with gnuplot to docs/udp_goodput.svg and .png (CHART=0:
#     table only).
#
#   bench/udp_bench.sh     env: MBIT=20 SIZE_MIB=32 LOSSES="0 1 5 10 20" DELAY_MS=0 TCP_CC=cubic
#                               CHART=1 CARRIERS="udp http curl" KEEP= (set: keep the logs)
#                          (the chart goes to docs/udp_goodput[_rtt<N>ms].{svg,png})
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ds=$(realpath build/src/cli/deltastream)
agent=$(realpath build/src/agent/deltastream-agent)
mbit=${MBIT:-20}
size_mib=${SIZE_MIB:-32}
losses=${LOSSES:-"0 1 5 10 20"}
delay_ms=${DELAY_MS:-0}
tcp_cc=${TCP_CC:-cubic}
bridge=$(realpath build/bench/delay_bridge)
((EUID == 0)) || { echo "udp_bench: needs root" >&2; exit 1; }
ns_s=dsudp-s ns_c=dsudp-c ns_m=dsudp-m dev_s=vudp-s dev_c=vudp-c ip_s=10.202.0.1 ip_c=10.202.0.2
work=$(mktemp -d "${TMPDIR:-/tmp}/udp_bench.XXXXXX")
# A namespace may only pick an algorithm the host allows: add TCP_CC for the run if needed.
allowed0=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
restore_allowed=0
cleanup() {
  ((restore_allowed == 0)) || sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed0"
  for ns in $ns_s $ns_c $ns_m; do
    pids=$(ip netns pids $ns 2>/dev/null || true)
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
  done
  if [[ -n ${KEEP:-} ]]; then echo "udp_bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
for ns in $ns_s $ns_c $ns_m; do ip netns del $ns 2>/dev/null || true; done
if ! grep -qw -- "$tcp_cc" <<<"$allowed0"; then
  restore_allowed=1
  sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed0 $tcp_cc"
fi
for ns in $ns_s $ns_c; do
  ip netns add $ns
  ip netns exec $ns sysctl -qw net.ipv4.tcp_congestion_control="$tcp_cc"
done
delayed=$(awk -v d="$delay_ms" 'BEGIN { print (d > 0) ? 1 : 0 }')
if ((delayed)); then
  [[ -x "$bridge" ]] || { echo "udp_bench: $bridge missing (ninja -C build delay_bridge)" >&2; exit 1; }
  ip netns add $ns_m
  ip link add $dev_s netns $ns_s type veth peer name vudp-ms netns $ns_m
  ip link add $dev_c netns $ns_c type veth peer name vudp-mc netns $ns_m
  for dev in vudp-ms vudp-mc; do ip -n $ns_m link set dev $dev up; done
else
  ip link add $dev_s netns $ns_s type veth peer name $dev_c netns $ns_c
fi
for end in "$ns_s $dev_s $ip_s" "$ns_c $dev_c $ip_c"; do
  read -r ns dev addr <<<"$end"
  ip -n "$ns" addr add "$addr/30" dev "$dev"
  ip -n "$ns" link set dev "$dev" gso_max_segs 1
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$dev" up
done
read -r rate burst limit < <(awk -v m="$mbit" 'BEGIN { bps = m * 1e6 / 8; f = 1514
  b = bps * 0.005; if (b < 4 * f) b = 4 * f; l = bps * 0.050; if (l < 10 * f) l = 10 * f
  printf "%.0f %d %d\n", m * 1e6, int(b), int(b) + int(l) }')
for end in "$ns_s $dev_s" "$ns_c $dev_c"; do
  read -r ns dev <<<"$end"
  tc -n "$ns" qdisc replace dev "$dev" root tbf rate "${rate}bit" burst "$burst" limit "$limit"
done
if ((delayed)); then
  (ip netns exec $ns_m "$bridge" vudp-ms vudp-mc "$delay_ms" 2>"$work/bridge.log" &)
  sleep 0.2
fi
set_loss() {  # PERCENT
  local n
  n=$(awk -v p="$1" 'BEGIN { printf "%d", p * 100 }')
  for end in "$ns_s $dev_s" "$ns_c $dev_c"; do
    read -r ns dev <<<"$end"
    { echo "table inet dsudp"; echo "delete table inet dsudp"
      if ((n > 0)); then
        printf 'table inet dsudp {\n chain loss {\n  type filter hook prerouting priority -300; policy accept;\n'
        printf '  iifname "%s" numgen random mod 10000 < %d drop\n }\n}\n' "$dev" "$n"
      fi; } | ip netns exec "$ns" nft -f -
  done
}
now() { date +%s.%N; }
in_s() { ip netns exec $ns_s "$@"; }
in_c() { ip netns exec $ns_c "$@"; }

head -c $((size_mib << 20)) /dev/urandom >"$work/app"
in_s "$ds" serve --data-dir "$work/m" --listen $ip_s:0 --port-file "$work/m.port" 2>"$work/m.log" &
for _ in $(seq 100); do [[ -s "$work/m.port" ]] && break; sleep 0.1; done
master="http://$(cat "$work/m.port")"
in_s "$ds" publish -q --server "$master" --token-file "$work/m/admin.token" --artifact app \
  --version 1.0.0 "$work/app"
in_s "$ds" serve --role proxy --upstream "$master" --udp-port 0 --data-dir "$work/p" \
  --listen $ip_s:0 --port-file "$work/p.port" 2>"$work/p.log" &
for _ in $(seq 100); do [[ -s "$work/p.port" ]] && break; sleep 0.1; done
proxy="http://$(cat "$work/p.port")"
sha=$(sha256sum "$work/app" | cut -d' ' -f1)
in_c curl -fsS -o /dev/null "$proxy/v1/blobs/$sha"  # Warm the proxy's cache.
metric() { in_c curl -fsS "$proxy/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
bytes=$(stat -c %s "$work/app")
run_agent() {  # CARRIER
  rm -rf "$work/state" "$work/inst"
  timeout 900 ip netns exec $ns_c "$agent" --proxy "$proxy" --public-key-file "$work/m/keys/signing.pub" \
    --state-dir "$work/state" --artifact "app=$work/inst" --carrier "$1" --json update \
    >"$work/agent-$1.jsonl" 2>&1
  cmp -s "$work/inst" "$work/app"
}
# Seconds from the agent's "plan" event to the first event with every byte in (FILE: --json).
transfer_secs() {
  python3 - "$1" <<'PY'
import json, sys
plan = done = None
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    e = json.loads(line)
    if e.get("event") == "plan" and plan is None:
        plan = e["t"]
    elif plan is not None and done is None and e.get("total") and e.get("done") == e.get("total"):
        done = e["t"]
print("%.6f" % (done - plan) if plan is not None and done is not None and done > plan else "0")
PY
}
# Round trip: the TCP handshake time of a request to the proxy.
rtt=$(in_c curl -fsS -o /dev/null -w '%{time_connect}' "$proxy/metrics" | awk '{ printf "%.1f", $1 * 1000 }')
echo "link $mbit Mbit/s (tbf both ways), RTT ${rtt} ms (delay stage ${delay_ms} ms each way), TCP $tcp_cc, object $bytes B, proxy $proxy (UDP carrier on)"
printf '| loss | UDP Mbit/s | HTTP Mbit/s | curl Mbit/s | UDP / HTTP | UDP repair | UDP fell back | agent runs UDP / HTTP Mbit/s |\n'
printf '|---:|---:|---:|---:|---:|---:|---|---:|\n'
for loss in $losses; do
  set_loss "$loss"
  src0=$(metric ds_proxy_udp_source_bytes_total); rep0=$(metric ds_proxy_udp_repair_bytes_total)
  # A run that fails (TCP stalled past the server's 30 s idle timeout, a wrong result) is shown
  # as "failed" and the others go on.
  ok_u=1 ok_h=1 ok_c=1
  carriers=${CARRIERS:-udp http curl}
  t0=$(now); run_agent udp || ok_u=0; t1=$(now)
  fell=$(grep -c '"event":"fallback"' "$work/agent-udp.jsonl" || true)
  sleep 0.3
  src1=$(metric ds_proxy_udp_source_bytes_total); rep1=$(metric ds_proxy_udp_repair_bytes_total)
  t2=$(now)
  if [[ " $carriers " == *" http "* ]]; then run_agent http || ok_h=0; else ok_h=2; fi
  t3=$(now); t4=$(now)
  if [[ " $carriers " == *" curl "* ]]; then
    timeout 900 ip netns exec $ns_c curl -fsS -o "$work/curl.out" "$proxy/v1/blobs/$sha" || ok_c=0
    cmp -s "$work/curl.out" "$work/app" || ok_c=0
  else
    ok_c=2  # Skipped.
  fi
  t5=$(now)
  tu=0 th=0
  ((ok_u == 1)) && tu=$(transfer_secs "$work/agent-udp.jsonl")
  ((ok_h == 1)) && th=$(transfer_secs "$work/agent-http.jsonl")
  awk -v b="$bytes" -v l="$loss" -v u="$(echo "$t1 - $t0" | bc -l)" -v h="$(echo "$t3 - $t2" | bc -l)" \
      -v tu="$tu" -v th="$th" \
      -v c="$(echo "$t5 - $t4" | bc -l)" -v s="$((src1 - src0))" -v r="$((rep1 - rep0))" -v f="$fell" \
    -v dat="$work/goodput.dat" -v ou="$ok_u" -v oh="$ok_h" -v oc="$ok_c" \
    'function show(ok, g) {
       if (ok == 2) return "skipped"
       return ok ? sprintf("%.2f", g) : sprintf("failed after %.0f s", b * 8 / g / 1e6) }
     function num(ok, g) { return ok == 1 ? sprintf("%.3f", g) : "NaN" }
     BEGIN { wu = b * 8 / u / 1e6; wh = b * 8 / h / 1e6; gc = b * 8 / c / 1e6
             # Transfer goodput; the wall time when the events lack what is needed.
             gu = tu > 0 ? b * 8 / tu / 1e6 : wu; gh = th > 0 ? b * 8 / th / 1e6 : wh
             ratio = (ou == 1 && oh == 1) ? sprintf("%.2fx", gu / gh) : "-"
             printf "| %s %% | %s | %s | %s | %s | %.1f %% | %s | %s / %s |\n", l, show(ou, gu),
                    show(oh, gh), show(oc, gc), ratio, (s > 0 ? 100 * r / s : 0),
                    (f > 0 ? "yes" : "no"), show(ou, wu), show(oh, wh)
             printf "%s %s %s %s %.2f\n", l, num(ou, gu), num(oh, gh), num(oc, gc),
                    (s > 0 ? 100 * r / s : 0) >> dat }'
done

[[ ${CHART:-1} == 1 ]] || exit 0
command -v gnuplot >/dev/null || { echo "udp_bench: gnuplot missing, no chart" >&2; exit 0; }
target=$(echo "0.85 * $mbit * 0.9" | bc -l)  # The issue's goodput target at 10 % loss.
plot() {  # TERMINAL OUTPUT
  gnuplot <<GP
set terminal $1
set output "$2"
set title "Goodput vs random loss: $size_mib MiB over a $mbit Mbit/s tbf link, RTT $rtt ms, TCP $tcp_cc (loss both ways)"
set xlabel "random packet loss (%)"
set ylabel "goodput (Mbit/s)"
set y2label "UDP repair bytes (% of data)"
set xrange [*:*]
set offsets 0.6, 0.6, 0, 0
set yrange [0:$mbit * 1.1]
set y2range [0:50]
set ytics nomirror
set y2tics nomirror
set grid xtics ytics
set key at graph 0.98, graph 0.5 right box opaque
set label 1 sprintf(" target at 10 %%: %.1f", $target) at 10, $target point pt 2 ps 2 lc rgb "#000000" left
plot $mbit * (1 - x / 100.0) with lines dt 2 lw 1.5 lc rgb "#888888" title "link x (1 - loss)", \
     "$work/goodput.dat" using 1:2 with linespoints lw 2.5 pt 7 lc rgb "#d62728" title "UDP carrier (FEC)", \
     "$work/goodput.dat" using 1:3 with linespoints lw 2 pt 5 lc rgb "#1f77b4" title "HTTP carrier", \
     "$work/goodput.dat" using 1:4 with linespoints lw 2 pt 9 lc rgb "#2ca02c" title "curl", \
     "$work/goodput.dat" using 1:5 axes x1y2 with impulses lw 6 lc rgb "#ffbb78" title "UDP repair (right axis)"
GP
}
chart=docs/udp_goodput
((delayed)) && chart=docs/udp_goodput_rtt$(awk -v d="$delay_ms" 'BEGIN { printf "%d", 2 * d }')ms
[[ $tcp_cc == cubic ]] || chart=${chart}_$tcp_cc
plot "svg size 960,540 dynamic font 'sans,13' background rgb 'white'" $chart.svg
plot "pngcairo size 1280,720 font 'sans,12' background rgb 'white'" $chart.png
echo "chart: $chart.svg and $chart.png"
