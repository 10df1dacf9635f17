#!/usr/bin/env bash
# Fetches the benchmark corpus: real version pairs of published artifacts, listed in
# bench/corpus.tsv (one row per pair), from the npm registry and Debian's archive.
#
#   bench/fetch_corpus.sh [DIR]          (DIR defaults to bench/corpus, which git ignores;
#                                         CORPUS_TSV=FILE reads another table)
#
# For each pair it writes
#   DIR/<id>/old      the old file (extracted from the old package, or the package itself)
#   DIR/<id>/new      the new file
#   DIR/<id>/SOURCE   one line saying what was fetched (and any version substitution)
# Downloaded packages are kept in DIR/.downloads/ so pairs sharing a package fetch it once.
#
# Idempotent: a pair whose old, new and SOURCE all exist is skipped. A pair that cannot be
# fetched prints a warning and is skipped; the others still run. Exit status is 0 when
# every pair is present at the end, 1 otherwise.
#
# Debian keeps only current versions in its archive. When a requested .deb version is not
# offered any more, the nearest available pair is used instead (see pick_deb_versions),
# and the substitution is printed and recorded in SOURCE.
#
# Needs: npm, apt-get, apt-cache, dpkg-deb, dpkg, tar.
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
corpus_tsv=${CORPUS_TSV:-$bench_dir/corpus.tsv}  # override for testing
dir=${1:-$bench_dir/corpus}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
downloads="$dir/.downloads"
mkdir -p "$downloads"

# A scratch area for this run, removed on exit.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fetch_corpus.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

log()  { printf 'fetch_corpus: %s\n' "$*"; }
warn() { printf 'fetch_corpus: WARNING: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------
# npm
# ---------------------------------------------------------------------------------------

# npm_tgz NAME VERSION -> prints the path of the package's .tgz (downloaded once).
npm_tgz() {
  local name=$1 version=$2
  # Cache file name: "@scope/name" 1.0 -> npm-scope-name-1.0.tgz.
  local flat=${name#@}
  local cached="$downloads/npm-${flat//\//-}-$version.tgz"
  if [[ ! -s "$cached" ]]; then
    local tmp="$scratch/npm.$$.$RANDOM"
    mkdir -p "$tmp"
    # `npm pack` writes <name>-<version>.tgz into the current dir and prints its file name.
    local file
    if ! file=$(cd "$tmp" && npm pack --loglevel=error "$name@$version" 2>"$tmp/err" | tail -n 1); then
      warn "npm pack $name@$version failed: $(grep -m 2 'npm error' "$tmp/err" | tr '\n' ' ')"
      return 1
    fi
    if [[ -z "$file" || ! -s "$tmp/$file" ]]; then
      warn "npm pack $name@$version produced no file"
      return 1
    fi
    mv "$tmp/$file" "$cached.part"
    mv "$cached.part" "$cached"
    rm -rf "$tmp"
  fi
  printf '%s\n' "$cached"
}

# npm_member TGZ MEMBER OUT -> extracts one file of the .tgz to OUT.
npm_member() {
  local tgz=$1 member=$2 out=$3
  local tmp="$scratch/x.$$.$RANDOM"
  mkdir -p "$tmp"
  if ! tar -xzf "$tgz" -C "$tmp" "$member" 2>"$tmp.err"; then
    warn "$member not found in $(basename "$tgz"): $(head -n 2 "$tmp.err" | tr '\n' ' ')"
    return 1
  fi
  cp --dereference "$tmp/$member" "$out"
  rm -rf "$tmp" "$tmp.err"
}

# ---------------------------------------------------------------------------------------
# Debian
# ---------------------------------------------------------------------------------------

# Runs `apt-get update` at most once per run, and only when a look-up needs it. A marker
# file (not a variable) records it, because callers run inside $(...) subshells.
apt_marker="$scratch/apt-updated"
apt_update_once() {
  if [[ ! -e $apt_marker ]]; then
    log "apt-get update" >&2
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2 || warn "apt-get update failed; using the package lists as they are"
    touch "$apt_marker"
  fi
}

# deb_versions PKG -> prints the versions the archive offers, oldest first.
deb_versions() {
  local pkg=$1 v sorted=()
  local -a vs
  mapfile -t vs < <(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u)
  if ((${#vs[@]} == 0)) && [[ ! -e $apt_marker ]]; then
    apt_update_once
    mapfile -t vs < <(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u)
  fi
  # Insertion sort with Debian's own version comparison (the lists are a handful long).
  for v in "${vs[@]}"; do
    local i=${#sorted[@]}
    sorted+=("$v")
    while ((i > 0)) && dpkg --compare-versions "${sorted[i-1]}" gt "$v"; do
      sorted[i]=${sorted[i-1]}
      ((i--)) || true
    done
    sorted[i]=$v
  done
  if ((${#sorted[@]} > 0)); then printf '%s\n' "${sorted[@]}"; fi
}

# pick_deb_versions PKG OLD NEW -> prints "OLD' NEW'" to use, or fails.
#   A requested version that is offered is kept. Otherwise:
#   new' = the oldest offered version >= NEW, else the newest offered version, but never
#          the oldest offered one (something must be older than it);
#   old' = OLD if offered and older than new', else the newest offered version older
#          than new' (the nearest step below the new side).
pick_deb_versions() {
  local pkg=$1 old=$2 new=$3 v
  local -a avail
  mapfile -t avail < <(deb_versions "$pkg")
  if ((${#avail[@]} < 2)); then
    warn "Debian offers ${#avail[@]} version(s) of $pkg (${avail[*]:-none}); need two"
    return 1
  fi
  local has_old=0 has_new=0
  for v in "${avail[@]}"; do
    [[ $v == "$old" ]] && has_old=1
    [[ $v == "$new" ]] && has_new=1
  done

  local new2=$new
  if ((has_new == 0)); then
    new2=${avail[-1]}
    for v in "${avail[@]}"; do
      if dpkg --compare-versions "$v" ge "$new"; then new2=$v; break; fi
    done
    if [[ $new2 == "${avail[0]}" ]]; then new2=${avail[1]}; fi
  fi
  local old2=""
  if ((has_old == 1)) && dpkg --compare-versions "$old" lt "$new2"; then
    old2=$old
  else
    for v in "${avail[@]}"; do
      if dpkg --compare-versions "$v" lt "$new2"; then old2=$v; fi
    done
  fi
  if [[ -z $old2 ]]; then
    warn "no offered version of $pkg is older than $new2 (offered: ${avail[*]})"
    return 1
  fi
  printf '%s %s\n' "$old2" "$new2"
}

# deb_file PKG VERSION -> prints the path of the .deb (downloaded once).
deb_file() {
  local pkg=$1 version=$2
  local cached="$downloads/deb-$pkg-${version//[:~\/]/_}.deb"
  if [[ ! -s "$cached" ]]; then
    local tmp="$scratch/deb.$$.$RANDOM"
    mkdir -p "$tmp"
    # apt's download sandbox user must be able to write here (we may run as root).
    chmod 777 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq "$pkg=$version") >"$tmp.log" 2>&1; then
      apt_update_once
      if ! (cd "$tmp" && apt-get download -qq "$pkg=$version") >"$tmp.log" 2>&1; then
        warn "apt-get download $pkg=$version failed: $(grep -E '^E:' "$tmp.log" | head -n 2 | tr '\n' ' ')"
        return 1
      fi
    fi
    local f
    f=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n 1)
    if [[ -z $f ]]; then
      warn "apt-get download $pkg=$version produced no .deb"
      return 1
    fi
    mv "$f" "$cached.part"
    mv "$cached.part" "$cached"
    rm -rf "$tmp" "$tmp.log"
  fi
  printf '%s\n' "$cached"
}

# deb_member DEB PATH OUT -> extracts one file of the .deb's data to OUT.
deb_member() {
  local deb=$1 member=$2 out=$3
  local tmp="$scratch/x.$$.$RANDOM"
  mkdir -p "$tmp"
  dpkg-deb -x "$deb" "$tmp"
  local path="$tmp/$member"
  # Resolve a symlink inside the extracted tree (relative links only; absolute ones are
  # re-rooted at the extraction dir).
  local hops=0
  while [[ -L $path ]] && ((hops++ < 10)); do
    local target
    target=$(readlink "$path")
    if [[ $target == /* ]]; then path="$tmp$target"; else path="$(dirname "$path")/$target"; fi
  done
  if [[ ! -f $path ]]; then
    warn "$member not found in $(basename "$deb")"
    rm -rf "$tmp"
    return 1
  fi
  cp "$path" "$out"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------
# One pair
# ---------------------------------------------------------------------------------------

# fetch_pair ID SOURCE PACKAGE OLD NEW OLD_FILE NEW_FILE
fetch_pair() {
  local id=$1 src=$2 pkg=$3 old=$4 new=$5 old_file=$6 new_file=$7
  local out="$dir/$id"
  [[ $new_file == "=" ]] && new_file=$old_file

  if [[ -s "$out/old" && -s "$out/new" && -s "$out/SOURCE" ]]; then
    log "$id: present, skipped"
    return 0
  fi

  # Build into a staging dir and move it into place only when complete.
  local stage="$scratch/stage-$id"
  rm -rf "$stage"
  mkdir -p "$stage"
  local note="" what
  case $src in
    npm)
      local old_tgz new_tgz
      old_tgz=$(npm_tgz "$pkg" "$old") || return 1
      new_tgz=$(npm_tgz "$pkg" "$new") || return 1
      if [[ $old_file == "@archive" ]]; then
        cp "$old_tgz" "$stage/old"
        cp "$new_tgz" "$stage/new"
        what="the .tgz itself"
      else
        npm_member "$old_tgz" "$old_file" "$stage/old" || return 1
        npm_member "$new_tgz" "$new_file" "$stage/new" || return 1
        what=$old_file
        [[ $new_file != "$old_file" ]] && what="$old_file -> $new_file"
      fi
      ;;
    deb)
      local picked old2 new2
      picked=$(pick_deb_versions "$pkg" "$old" "$new") || return 1
      read -r old2 new2 <<<"$picked"
      if [[ $old2 != "$old" || $new2 != "$new" ]]; then
        note=" (substituted: requested $old -> $new, not both offered by Debian)"
        log "$id: SUBSTITUTION: Debian does not offer $pkg $old -> $new; using $old2 -> $new2"
      fi
      old=$old2 new=$new2
      local old_deb new_deb
      old_deb=$(deb_file "$pkg" "$old") || return 1
      new_deb=$(deb_file "$pkg" "$new") || return 1
      if [[ $old_file == "@archive" ]]; then
        cp "$old_deb" "$stage/old"
        cp "$new_deb" "$stage/new"
        what="the .deb itself"
      else
        deb_member "$old_deb" "$old_file" "$stage/old" || return 1
        deb_member "$new_deb" "$new_file" "$stage/new" || return 1
        what=$old_file
        [[ $new_file != "$old_file" ]] && what="$old_file -> $new_file"
      fi
      ;;
    *)
      warn "$id: unknown source '$src'"
      return 1
      ;;
  esac

  # The function runs in an `if` context where `set -e` is off: check the result explicitly.
  if [[ ! -s "$stage/old" || ! -s "$stage/new" ]]; then
    warn "$id: extraction produced an empty or missing file"
    return 1
  fi
  printf '%s %s %s -> %s: %s%s\n' "$src" "$pkg" "$old" "$new" "$what" "$note" >"$stage/SOURCE"
  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  mv "$stage" "$out"
  log "$id: $(cat "$out/SOURCE") [old $(stat -c %s "$out/old") B, new $(stat -c %s "$out/new") B]"
}

# ---------------------------------------------------------------------------------------
# Main: every row of corpus.tsv
# ---------------------------------------------------------------------------------------

failed=()
total=0
# The table is read on fd 3 so that npm/apt-get cannot swallow it from stdin.
while IFS=$'\t' read -r -u 3 id kind src pkg old new old_file new_file; do
  # Skip comments, blank lines and the header row.
  [[ -z $id || $id == \#* || $id == "id" ]] && continue
  : "$kind"  # the kind column is only used by corpus_bench.py
  total=$((total + 1))
  if ! fetch_pair "$id" "$src" "$pkg" "$old" "$new" "$old_file" "$new_file"; then
    warn "$id: skipped ($src $pkg $old -> $new could not be fetched)"
    failed+=("$id")
  fi
done 3<"$corpus_tsv"

if ((${#failed[@]} > 0)); then
  warn "${#failed[@]} of $total pairs missing: ${failed[*]}"
  exit 1
fi
log "all $total pairs present in $dir"
