#!/usr/bin/env bash
# Installs the Debian 12 packages deltastream needs to build, test and benchmark.
# Idempotent: only packages that are missing are installed. Uses sudo when not root.
#   scripts/install-deps.sh           build + test dependencies
#   scripts/install-deps.sh --bench   also the peer tools the benchmark compares against
set -euo pipefail

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config
  # libraries
  libzstd-dev liblzma-dev libdivsufsort-dev libssl-dev libcli11-dev
  # servers and clients: HTTP (Beast), catalog (SQLite), signatures (Ed25519), JSON, logging
  libboost1.81-dev libcurl4-openssl-dev libsqlitecpp-dev libsqlite3-dev libsodium-dev
  nlohmann-json3-dev
  # UDP carrier: Reed-Solomon erasure coding (ISA-L); semantic diff: deflate streams (zlib)
  libisal-dev zlib1g-dev
  # tests, fuzzing, benchmarks (the VCDIFF tests check interop with the real xdelta3)
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev xdelta3
  # the deflate transform tests make archives with the real tools (gzip and tar are essential)
  zip
  # an HTTP cache in front of a proxy (tests/cli/proxy_nginx_test.cc runs the real nginx)
  nginx-light
  # network lab for the agent tests: namespaces and tc shaping (iproute2), packet loss (nftables)
  iproute2 nftables
  # the deployment dashboard's test drives a real headless browser (playwright-core from npm, below)
  chromium
)
bench_packages=(bsdiff zstd time curl ca-certificates bc python3 wrk gnuplot-nox)

if [[ "${1:-}" == "--bench" ]]; then
  packages+=("${bench_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The benchmark fetches npm packages with `npm pack`; install Debian's npm only if no npm exists
# (NodeSource-style installs already ship one and conflict with Debian's).
if [[ "${1:-}" == "--bench" ]] && ! command -v npm >/dev/null; then
  missing+=(npm)
fi

# The dashboard test's npm packages (web/package-lock.json, pinned) go to web/node_modules, once.
# Node and npm: Debian's npm (which brings nodejs) unless an npm is already there.
if ! command -v npm >/dev/null && [[ ! " ${missing[*]} " == *" npm "* ]]; then
  missing+=(npm)
fi
web_deps() {
  local web
  web="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/web"
  if [[ ! -d "$web/node_modules/playwright-core" ]]; then
    echo "install-deps: npm ci in $web"
    (cd "$web" && npm ci --no-audit --no-fund)
  fi
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  web_deps
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
web_deps
