#!/usr/bin/env bash
# UDP carrier benchmark (issue 7): goodput of the UDP carrier (FEC), our HTTP carrier and curl
# fetching the same full artifact from a proxy over a 20 Mbit/s tbf link with random loss, plus the
# UDP repair overhead. Needs root (network namespaces, tc, nft).
#
#   - namespaces dsudp-s (master + proxy with --udp-port 0) and dsudp-c (agent, curl), one veth
#     pair (10.202.0.1/30 - 10.202.0.2), GSO off, tc tbf $MBIT both ways (NetLab's parameters);
#   - loss: an nft prerouting rule `numgen random mod 10000 < N drop` on each end (both directions);
#   - per loss in $LOSSES: (a) the agent's first install over UDP, (b) the same over HTTP,
#     (c) curl of the blob from the proxy; wall times, results checked with cmp. Goodput = object
#     bytes x 8 / seconds. Repair = proxy's ds_proxy_udp_repair_bytes / source_bytes per UDP run.
#
#   bench/udp_bench.sh     env: MBIT=20 SIZE_MIB=16 LOSSES="0 1 5 10 20"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ds=$(realpath build/src/cli/deltastream)
agent=$(realpath build/src/agent/deltastream-agent)
mbit=${MBIT:-20}
size_mib=${SIZE_MIB:-16}
losses=${LOSSES:-"0 1 5 10 20"}
((EUID == 0)) || { echo "udp_bench: needs root" >&2; exit 1; }
ns_s=dsudp-s ns_c=dsudp-c dev_s=vudp-s dev_c=vudp-c ip_s=10.202.0.1 ip_c=10.202.0.2
work=$(mktemp -d "${TMPDIR:-/tmp}/udp_bench.XXXXXX")
cleanup() {
  for ns in $ns_s $ns_c; do
    pids=$(ip netns pids $ns 2>/dev/null || true)
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for ns in $ns_s $ns_c; do ip netns del $ns 2>/dev/null || true; ip netns add $ns; done
ip link add $dev_s netns $ns_s type veth peer name $dev_c netns $ns_c
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
echo "link $mbit Mbit/s (tbf both ways), object $bytes B, proxy $proxy (UDP carrier on)"
printf '| loss | UDP Mbit/s | HTTP Mbit/s | curl Mbit/s | UDP / HTTP | UDP repair | UDP fell back |\n'
printf '|---:|---:|---:|---:|---:|---:|---|\n'
for loss in $losses; do
  set_loss "$loss"
  src0=$(metric ds_proxy_udp_source_bytes_total); rep0=$(metric ds_proxy_udp_repair_bytes_total)
  t0=$(now); run_agent udp; t1=$(now)
  fell=$(grep -c '"event":"fallback"' "$work/agent-udp.jsonl" || true)
  sleep 0.3
  src1=$(metric ds_proxy_udp_source_bytes_total); rep1=$(metric ds_proxy_udp_repair_bytes_total)
  t2=$(now); run_agent http; t3=$(now)
  t4=$(now); timeout 900 ip netns exec $ns_c curl -fsS -o "$work/curl.out" "$proxy/v1/blobs/$sha"; t5=$(now)
  cmp -s "$work/curl.out" "$work/app"
  awk -v b="$bytes" -v l="$loss" -v u="$(echo "$t1 - $t0" | bc -l)" -v h="$(echo "$t3 - $t2" | bc -l)" \
      -v c="$(echo "$t5 - $t4" | bc -l)" -v s="$((src1 - src0))" -v r="$((rep1 - rep0))" -v f="$fell" \
    'BEGIN { gu = b * 8 / u / 1e6; gh = b * 8 / h / 1e6; gc = b * 8 / c / 1e6
             printf "| %s %% | %.2f | %.2f | %.2f | %.2fx | %.1f %% | %s |\n", l, gu, gh, gc, gu / gh,
                    (s > 0 ? 100 * r / s : 0), (f > 0 ? "yes" : "no") }'
done
