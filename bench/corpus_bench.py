#!/usr/bin/env python3
"""Benchmark deltastream against peer delta tools on the real-artifact corpus.

The corpus is fetched by bench/fetch_corpus.sh (pairs listed in bench/corpus.tsv); each
pair is a directory holding `old` and `new`. For every pair present this script runs, one
tool at a time (never in parallel, since timings matter):

    ours     deltastream diff OLD NEW -o P                 / deltastream apply OLD P -o OUT
    xdelta3  xdelta3 -e -9 -S lzma -D -B N -s OLD NEW P    / xdelta3 -d -D -B N -s OLD P OUT
    bsdiff   bsdiff OLD NEW P                              / bspatch OLD OUT P
    zstd-19  zstd -19 --long=31 --patch-from=OLD NEW -o P  / zstd -d --long=31 --patch-from=OLD P -o OUT
    zstd-22  zstd --ultra -22 --long=31 --patch-from=...   / same decode

(N = the power of two >= max(old size, 16 MiB); if xdelta3 lacks LZMA it runs with its
default secondary compressor and is labelled "xdelta3(no-lzma)"), each under
`/usr/bin/time -f '%e %M %U %S'` for its peak RSS and CPU time; checks that the applied output is
byte-identical to NEW; and prints one Markdown table plus summary lines.

Elapsed seconds are taken by this script with a monotonic clock around the
/usr/bin/time process (millisecond resolution, ~1 ms of fork/exec overhead included)
rather than time's %e (10 ms resolution). Peak RSS is time's %M. CPU seconds (%U + %S)
are kept in the --json dump and the cache (gen_cpu_s, apply_cpu_s).

Peer results are slow to redo (bsdiff on a 100 MB file takes minutes), so they are cached
in <corpus>/peer-cache.json keyed by (tool command, pair, old size, new size); a rerun then
only measures ours. --no-cache ignores the cache (results are still written back).
--skip-peers NAME,.. (or "all") never runs those peers; their cached results, if any, are
still shown.

--vcdiff plain|lzma benchmarks our VCDIFF output instead, against xdelta3 in the same setting:
plain = `deltastream diff --format vcdiff` vs `xdelta3 -e -9 -S none`, lzma = with
`--vcdiff-lzma` vs `xdelta3 -e -9 -S lzma` (both with -D -B N as above).

Other processes (a build, a fuzzer) sharing the CPUs inflate timings. For each command the
script records how many CPUs' worth of other work ran meanwhile, flags noisy measurements in
the report header, and with --wait-idle S waits up to S seconds for a quiet machine before
each command.

Transforms (DSPF 1.1 branch, 1.2 deflate and xz, 1.4 xz-replay): for each patch of ours the table shows which segment transforms it
used and the bytes the generator says they saved ("ours transform", read from the patch header
and segment headers). --ours-generic CMD adds a second run of ours with another command (for
example a wrapper that turns transforms off, or an older build), shown as "ours-generic" with
its own columns and summary lines (ours / ours-generic size and generation time); it is not a
peer.

Usage:
    bench/corpus_bench.py [--corpus DIR] [--deltastream PATH] [--only id,id] [--ours-generic CMD]
                          [--skip-peers name,..|all] [--skip-ours] [--no-cache]
                          [--wait-idle SECONDS] [--out results.md] [--json results.json]
                          [--timeout SECONDS] [--workdir DIR] [--vcdiff plain|lzma]

Python 3 standard library only.
"""

import argparse
import csv
import datetime
import filecmp
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
CORPUS_TSV = os.path.join(BENCH_DIR, "corpus.tsv")
GNU_TIME = "/usr/bin/time"
MIB = 1024 * 1024
# A measurement during which other processes used more CPUs than this is flagged as noisy.
# Only steps of at least NOISY_MIN_S seconds are judged: /proc/stat counts in 10 ms ticks,
# so for shorter ones a single tick of any other process looks like a busy CPU.
NOISY_OTHERS = 0.5
NOISY_MIN_S = 1.0


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------

def read_corpus_table(path):
    """Returns the rows of corpus.tsv as dicts (id, kind, source, package, old, new, ...)."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------

def xdelta3_window(old_size):
    """xdelta3's -B (source window) for a source of old_size bytes.

    xdelta3 rounds -B up to a power of two and accepts 512 KiB .. 2 GiB. We want the whole
    source in one window (so matches anywhere in OLD are found) and at least 16 MiB, so we
    pass the power of two >= max(old_size, 16 MiB), capped at xdelta3's 2 GiB maximum.
    """
    want = max(old_size, 16 * MIB)
    window = 1 << (want - 1).bit_length()
    return min(window, 1 << 31)


def xdelta3_has_lzma():
    """True if this xdelta3 was built with the LZMA secondary compressor."""
    with tempfile.TemporaryDirectory() as d:
        src, tgt = os.path.join(d, "s"), os.path.join(d, "t")
        with open(src, "wb") as f:
            f.write(bytes(range(256)) * 64)
        with open(tgt, "wb") as f:
            f.write(bytes(range(256)) * 63 + b"x")
        try:
            r = subprocess.run(["xdelta3", "-e", "-S", "lzma", "-s", src, tgt, os.path.join(d, "p")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return True  # xdelta3 missing: keep the normal label; its runs will show err
        return r.returncode == 0


class Tool:
    """A delta tool: how to make a patch and how to apply it.

    encode(old, new, patch, old_size) and decode(old, patch, out, old_size) return argv
    lists. `signature` names the exact command line (it is part of the cache key, so a
    change of flags invalidates cached results).
    """

    def __init__(self, name, signature, encode, decode, peer=True):
        self.name = name
        self.signature = signature
        self.encode = encode
        self.decode = decode
        self.peer = peer


def make_tools(deltastream, ours_generic=None):
    ours = Tool(
        "ours", "deltastream",
        lambda o, n, p, _: [deltastream, "diff", o, n, "-o", p],
        lambda o, p, out, _: [deltastream, "apply", o, p, "-o", out],
        peer=False)
    extra = []
    if ours_generic:
        extra.append(Tool(
            "ours-generic", ours_generic,
            lambda o, n, p, _: [ours_generic, "diff", o, n, "-o", p],
            lambda o, p, out, _: [ours_generic, "apply", o, p, "-o", out],
            peer=False))

    # -D: do not decompress compressed inputs (.tgz/.deb) behind our back. It is needed on
    # decode too: there xdelta3 would otherwise gunzip a .tgz *source* before using it,
    # and the patch (made against the raw bytes) fails its checksum.
    if xdelta3_has_lzma():
        xd_name, xd_sec = "xdelta3", ["-S", "lzma"]
    else:
        xd_name, xd_sec = "xdelta3(no-lzma)", []  # default secondary compressor
    xdelta = Tool(
        xd_name, "xdelta3 -e -9 %s -D -B pow2>=max(old,16MiB) / -d -D" % " ".join(xd_sec),
        lambda o, n, p, s: ["xdelta3", "-e", "-9", *xd_sec, "-D", "-B", str(xdelta3_window(s)),
                            "-s", o, n, p],
        lambda o, p, out, s: ["xdelta3", "-d", "-D", "-B", str(xdelta3_window(s)), "-s", o, p, out])

    bsdiff = Tool(
        "bsdiff", "bsdiff",
        lambda o, n, p, _: ["bsdiff", o, n, p],
        lambda o, p, out, _: ["bspatch", o, out, p])

    def zstd_tool(name, level_flags):
        return Tool(
            name, "zstd %s --long=31 --patch-from" % " ".join(level_flags),
            lambda o, n, p, _: ["zstd", "-q", "-f", *level_flags, "--long=31",
                                "--patch-from=" + o, n, "-o", p],
            # --long=31 on decode allows the 2 GiB window the encoder may have used.
            lambda o, p, out, _: ["zstd", "-q", "-f", "-d", "--long=31",
                                  "--patch-from=" + o, p, "-o", out])

    return [ours] + extra + [xdelta, bsdiff, zstd_tool("zstd-19", ["-19"]),
                             zstd_tool("zstd-22", ["--ultra", "-22"])]


TRANSFORM_NAMES = {1: "x86-branch", 2: "arm64-branch", 3: "deflate", 4: "xz", 5: "xz-replay"}


def _varint(buf, pos):
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def dspf_transforms(path):
    """Which segment transforms a DSPF patch uses: "name k/n seg, saved B" or "-" (none), or
    None when the file is not a DSPF patch (docs/FORMAT.md; only headers are read)."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] != b"DSPF":
        return None
    try:
        header_len, pos = _varint(buf, 6)
        end = pos + header_len
        pos += 1  # algorithm
        flags, pos = _varint(buf, pos)
        _, pos = _varint(buf, pos)  # old_size
        pos += 32
        _, pos = _varint(buf, pos)  # new_size
        pos += 32
        count, pos = _varint(buf, pos)
        for _ in range(3):
            _, pos = _varint(buf, pos)
        saved = {}
        tables_len = 0
        if flags & 1:
            tables_len, pos = _varint(buf, pos)
            pos += 4  # tables_crc
        if flags & 2:  # 1.2 recompress: max_decoded, max_encoder_memory, recompress_saved
            _, pos = _varint(buf, pos)
            _, pos = _varint(buf, pos)
            saved[3], pos = _varint(buf, pos)
            saved[4] = saved[5] = saved[3]
        if flags & 1:
            t = end
            for _ in range(2):  # old and new regions
                n, t = _varint(buf, t)
                for _ in range(4 * n):
                    _, t = _varint(buf, t)
            runs, t = _varint(buf, t)
            for _ in range(3 * runs):
                _, t = _varint(buf, t)
            saved[1] = saved[2] = _varint(buf, t)[0]
            end += tables_len
        used = {}
        pos = end
        for _ in range(count):
            seg_len, p = _varint(buf, pos)
            fields_end = p + seg_len
            _, p = _varint(buf, p)  # new_offset
            _, p = _varint(buf, p)  # new_length
            transform = buf[p + 1]
            p += 2
            payload_len, p = _varint(buf, p)
            if transform:
                used[transform] = used.get(transform, 0) + 1
            pos = fields_end + 4 + payload_len
    except (ValueError, IndexError):
        return "?"
    if not used:
        return "-"
    return "; ".join("%s %d/%d seg, saved %s B" % (TRANSFORM_NAMES.get(t, str(t)), k, count,
                                                  "{:,}".format(saved.get(t, 0)))
                     for t, k in sorted(used.items()))


def make_vcdiff_tools(deltastream, variant):
    """Ours as VCDIFF against xdelta3 in the same secondary-compression setting.

    plain: `deltastream diff --format vcdiff` (RFC 3284 + Adler-32) vs `xdelta3 -9 -S none`;
    lzma:  `... --vcdiff-lzma` (xdelta3's lzma secondary sections) vs `xdelta3 -9 -S lzma`.
    Ours is applied with `deltastream apply`; the tests prove that xdelta3 -d decodes it too.
    """
    extra = ["--vcdiff-lzma"] if variant == "lzma" else []
    sec = "lzma" if variant == "lzma" else "none"
    ours = Tool(
        "ours", "deltastream diff --format vcdiff " + " ".join(extra),
        lambda o, n, p, _: [deltastream, "diff", "--format", "vcdiff", *extra, o, n, "-o", p],
        lambda o, p, out, _: [deltastream, "apply", o, p, "-o", out],
        peer=False)
    xdelta = Tool(
        "xdelta3-S" + sec, "xdelta3 -e -9 -S %s -D -B pow2>=max(old,16MiB) / -d -D" % sec,
        lambda o, n, p, s: ["xdelta3", "-e", "-9", "-S", sec, "-D", "-B", str(xdelta3_window(s)),
                            "-s", o, n, p],
        lambda o, p, out, s: ["xdelta3", "-d", "-D", "-B", str(xdelta3_window(s)), "-s", o, p, out])
    return [ours, xdelta]


def tool_versions():
    """One line naming the versions of the peer tools (for the report header)."""
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    # "*** Zstandard CLI (64-bit) v1.5.4, by ..." -> "Zstandard CLI (64-bit) v1.5.4"
    zstd = first_line(["zstd", "--version"]).replace("*", "").split(",")[0].strip()
    # "Xdelta version 3.0.11, Copyright ..." -> "Xdelta version 3.0.11"
    xd = first_line(["xdelta3", "-V"]).split(",")[0]
    bs = first_line(["dpkg-query", "-W", "-f=bsdiff ${Version}", "bsdiff"])
    return "%s; %s; %s" % (xd, bs, zstd)


# --------------------------------------------------------------------------------------
# Running one command
# --------------------------------------------------------------------------------------

class CommandError(Exception):
    pass


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds():
    """CPU seconds spent busy so far by the whole machine (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK  # user..steal; guest is counted in user


def children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_busy(seconds=1.0):
    """CPUs' worth of work done by other processes over the next `seconds` (0 = idle)."""
    b0 = cpu_busy_seconds()
    time.sleep(seconds)
    b1 = cpu_busy_seconds()
    if b0 is None or b1 is None:
        return 0.0
    return max(0.0, (b1 - b0) / seconds)


def wait_until_idle(max_wait, threshold=0.25):
    """Waits up to max_wait seconds for other processes to use < threshold CPUs.

    Returns the last measured busy level (CPUs). Used by --wait-idle so that peers and ours
    are timed on a quiet machine even when a build or a fuzzer shares it.
    """
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    busy = others_busy()
    announced = False
    while busy >= threshold and time.monotonic() < deadline:
        if not announced:
            print(" (waiting for idle CPU: %.2f busy)" % busy, end="", file=sys.stderr, flush=True)
            announced = True
        busy = others_busy(5.0)
    return busy


def run_timed(argv, workdir, timeout):
    """Runs argv under GNU time in workdir. Returns (seconds, peak_kib, cpu_s, others).

    `others` is how many CPUs' worth of work *other* processes did while the command ran
    (machine busy time minus the command's own CPU time, over wall time): above ~1 on a
    2-CPU host they competed with the measured tool, and its timings are inflated.

    Raises CommandError (with a short reason) if the command cannot start, exits
    non-zero, is killed, or runs past `timeout` seconds.
    """
    timefile = os.path.join(workdir, ".time")
    errfile = os.path.join(workdir, ".stderr")
    # %e elapsed s, %M peak RSS KiB, %U + %S CPU s (user + system; less sensitive than
    # wall time to other processes competing for the CPUs).
    full = [GNU_TIME, "-f", "%e %M %U %S", "-o", timefile, *argv]
    with open(errfile, "wb") as err:
        busy0, own0 = cpu_busy_seconds(), children_cpu_seconds()
        start = time.perf_counter()
        try:
            # Own process group, so a timeout kills the tool and not just `time`.
            proc = subprocess.Popen(full, cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        except OSError as e:
            raise CommandError("cannot run %s: %s" % (GNU_TIME, e))
        # A blocking wait, so the end is seen at once: Popen.wait(timeout=...) polls with
        # sleeps of up to 50 ms, which would add that much to every measurement. The
        # timeout is enforced by a timer that kills the process group.
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            rc = proc.wait()
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - start
        if timed_out.is_set():
            raise CommandError("timeout after %d s" % timeout)
        busy1, own1 = cpu_busy_seconds(), children_cpu_seconds()
    others = 0.0
    if busy0 is not None and busy1 is not None and elapsed > 0:
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed)

    with open(errfile, "rb") as f:
        stderr = f.read().decode("utf-8", "replace").strip()
    try:
        with open(timefile) as f:
            time_lines = [line.strip() for line in f if line.strip()]
    except OSError:
        time_lines = []

    if rc != 0:
        # GNU time exits 127 when the program was not found, 126 when not executable.
        reason = " / ".join(stderr.splitlines()[-2:]) if stderr else "exit status %d" % rc
        if time_lines and time_lines[0].startswith("Command terminated by signal"):
            reason = time_lines[0]
        raise CommandError("%s: %s" % (os.path.basename(argv[0]), reason[:200]))
    try:
        _e, m_str, u_str, s_str = time_lines[-1].split()
        return elapsed, int(m_str), round(float(u_str) + float(s_str), 2), round(others, 2)
    except (IndexError, ValueError):
        raise CommandError("cannot parse %s output: %r" % (GNU_TIME, time_lines))


def bench_tool(tool, old, new, workdir, timeout, wait_idle=0):
    """Makes a patch of old->new with `tool`, applies it, and checks the result.

    Returns a result dict: status is "ok", "FAIL" (applied output differs from NEW) or
    "err" (a command failed; `error` says why).
    """
    old_size = os.path.getsize(old)
    patch = os.path.join(workdir, "patch")
    out = os.path.join(workdir, "out")
    # gen_others/apply_others: CPUs used by other processes during each step (see
    # run_timed); cached peer results keep them, so skewed timings can be spotted later.
    res = {"status": "err"}
    step = "make patch"
    try:
        wait_until_idle(wait_idle)
        gen_s, gen_kib, gen_cpu, gen_o = run_timed(tool.encode(old, new, patch, old_size), workdir, timeout)
        res.update(gen_s=gen_s, gen_kib=gen_kib, gen_cpu_s=gen_cpu, gen_others=gen_o)
        if not os.path.isfile(patch):
            raise CommandError("no patch file written")
        res["patch_bytes"] = os.path.getsize(patch)
        if not tool.peer:
            res["transforms"] = dspf_transforms(patch)
        step = "apply patch"
        wait_until_idle(wait_idle)
        app_s, app_kib, app_cpu, app_o = run_timed(tool.decode(old, patch, out, old_size), workdir, timeout)
        res.update(apply_s=app_s, apply_kib=app_kib, apply_cpu_s=app_cpu, apply_others=app_o)
        if not os.path.isfile(out):
            raise CommandError("no output file written")
        res["status"] = "ok" if filecmp.cmp(out, new, shallow=False) else "FAIL"
        if res["status"] == "FAIL":
            res["error"] = "applied output differs from NEW"
    except CommandError as e:
        res["error"] = "%s: %s" % (step, e)
    return res


# --------------------------------------------------------------------------------------
# Peer-result cache
# --------------------------------------------------------------------------------------

class PeerCache:
    """JSON file of peer results keyed by tool command, pair and file sizes."""

    def __init__(self, path):
        self.path = path
        self.data = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError) as e:
                print("corpus_bench: ignoring unreadable cache %s: %s" % (path, e), file=sys.stderr)

    @staticmethod
    def key(tool, pair_id, old_size, new_size):
        return "%s|%s|%d|%d" % (tool.signature, pair_id, old_size, new_size)

    def get(self, key):
        return self.data.get(key)

    def put(self, key, result):
        self.data[key] = result
        # Written after every result (atomically) so an interrupted run keeps its progress.
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def fmt_s(x):
    return "%.3f" % x if x < 10 else "%.2f" % x


def fmt_mib(kib):
    return "%.1f" % (kib / 1024)


def tool_cells(res):
    """The five table cells of one tool on one pair."""
    if res is None:
        return ["skip"] * 5
    if res["status"] == "err":
        return ["err"] * 5
    cells = ["{:,}".format(res["patch_bytes"]), fmt_s(res["gen_s"]), fmt_mib(res["gen_kib"]),
             fmt_s(res["apply_s"]), fmt_mib(res["apply_kib"])]
    if res["status"] == "FAIL":
        cells[0] = "FAIL"
    return cells


def compare_ours(results, tools):
    """(ratio, best peer name) of ours vs. the smallest correct peer patch, or Nones."""
    peers = [(results[t.name]["patch_bytes"], t.name) for t in tools
             if t.peer and results.get(t.name) and results[t.name]["status"] == "ok"]
    ours = results.get("ours")
    if not peers or not ours or ours["status"] != "ok":
        return None, (min(peers)[1] if peers else None)
    best_bytes, best_name = min(peers)
    return ours["patch_bytes"] / best_bytes, best_name


def render(pairs, all_results, tools, header_lines):
    """The Markdown report: header lines, the per-pair table, the summary lines."""
    lines = list(header_lines) + [""]
    head = ["pair", "kind", "new bytes"]
    for t in tools:
        head += ["%s patch B" % t.name, "%s gen s" % t.name, "%s gen MiB" % t.name,
                 "%s apply s" % t.name, "%s apply MiB" % t.name]
    head += ["ours/best peer", "best peer", "ours apply MB/s", "ours transform"]
    lines.append("| " + " | ".join(head) + " |")
    # The alignment row: text columns (pair, kind, best peer) left, numbers right.
    align = [":---", ":---"] + ["---:"] * (len(head) - 2)
    align[-3] = ":---"
    align[-1] = ":---"
    lines.append("|" + "|".join(align) + "|")

    ratios, exe_ratios, max_ratio = [], [], None
    per_tool_pct = {t.name: [] for t in tools}
    ours_new_bytes = ours_apply_s = 0.0
    for pair in pairs:
        res = all_results[pair["id"]]
        row = [pair["id"], pair["kind"], "{:,}".format(pair["new_size"])]
        for t in tools:
            row += tool_cells(res.get(t.name))
            r = res.get(t.name)
            if r and r["status"] == "ok":
                per_tool_pct[t.name].append(r["patch_bytes"] / pair["new_size"])
        ratio, best = compare_ours(res, tools)
        ours = res.get("ours")
        mbps = "-"
        if ours and ours["status"] == "ok":
            ours_new_bytes += pair["new_size"]
            ours_apply_s += ours["apply_s"]
            mbps = "%.0f" % (pair["new_size"] / 1e6 / max(ours["apply_s"], 1e-6))
        if ratio is not None:
            ratios.append(ratio)
            if pair["kind"] == "exe":
                exe_ratios.append(ratio)
            if max_ratio is None or ratio > max_ratio[0]:
                max_ratio = (ratio, pair["id"])
        row += ["%.3f" % ratio if ratio is not None else "-", best or "-", mbps,
                (ours or {}).get("transforms") or "-"]
        lines.append("| " + " | ".join(row) + " |")

    def gm(values):
        g = geomean(values)
        return "%.3f (%d pairs)" % (g, len(values)) if g is not None else "n/a"

    lines.append("")
    lines.append("- ours / smallest peer patch, geometric mean over all pairs: " + gm(ratios))
    lines.append("- ours / smallest peer patch, geometric mean over exe pairs: " + gm(exe_ratios))
    lines.append("- ours / smallest peer patch, max: " +
                 ("%.3f (%s)" % max_ratio if max_ratio else "n/a"))
    if any(t.name == "ours-generic" for t in tools):
        size_r, time_r, worst = [], [], None
        for pair in pairs:
            res = all_results[pair["id"]]
            a, b = res.get("ours"), res.get("ours-generic")
            if a and b and a["status"] == "ok" and b["status"] == "ok":
                r = a["patch_bytes"] / b["patch_bytes"]
                size_r.append(r)
                time_r.append(a["gen_s"] / max(b["gen_s"], 1e-6))
                if worst is None or r > worst[0]:
                    worst = (r, pair["id"])
        lines.append("- ours / ours-generic patch, geometric mean: %s; max: %s" % (
            gm(size_r), "%.3f (%s)" % worst if worst else "n/a"))
        lines.append("- ours / ours-generic generation time, geometric mean: %s; max: %s" % (
            gm(time_r), "%.2f" % max(time_r) if time_r else "n/a"))
    for t in tools:
        g = geomean(per_tool_pct[t.name])
        lines.append("- %s patch / new size, geometric mean: %s" % (
            t.name, "%.3f%% (%d of %d pairs)" % (100 * g, len(per_tool_pct[t.name]), len(pairs))
            if g is not None else "n/a"))
    if ours_apply_s > 0:
        lines.append("- ours apply throughput: %.1f MB/s (%.1f MB of new files in %.2f s)" % (
            ours_new_bytes / 1e6 / ours_apply_s, ours_new_bytes / 1e6, ours_apply_s))
    else:
        lines.append("- ours apply throughput: n/a")

    # Errors and failures, so a cell that says err/FAIL can be explained.
    notes = []
    for pair in pairs:
        for t in tools:
            r = all_results[pair["id"]].get(t.name)
            if r and r["status"] != "ok":
                notes.append("  - %s on %s: %s: %s" % (t.name, pair["id"], r["status"], r.get("error", "")))
    if notes:
        lines.append("- errors:")
        lines += notes
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(BENCH_DIR, "corpus"),
                    help="corpus dir written by fetch_corpus.sh (default: bench/corpus)")
    ap.add_argument("--deltastream", default=os.path.join(REPO_ROOT, "build", "src", "cli", "deltastream"),
                    help="our CLI (default: build/src/cli/deltastream in the repo)")
    ap.add_argument("--ours-generic", default=None, metavar="CMD",
                    help="also run ours with CMD (same diff/apply interface), e.g. without transforms")
    ap.add_argument("--only", help="comma-separated pair ids to run (default: all present)")
    ap.add_argument("--skip-peers", default="",
                    help="comma-separated peers not to run (xdelta3,bsdiff,zstd-19,zstd-22) or 'all'; "
                         "cached results are still shown")
    ap.add_argument("--skip-ours", action="store_true",
                    help="do not run deltastream (e.g. to fill the peer cache only)")
    ap.add_argument("--no-cache", action="store_true", help="do not use cached peer results")
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--json", help="also write all raw results here")
    ap.add_argument("--timeout", type=float, default=3600, help="per-command timeout, seconds (default 3600)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each command wait up to SECONDS for other processes to leave the "
                         "CPUs idle (< 0.25 CPU busy); default 0 = do not wait")
    ap.add_argument("--vcdiff", choices=["plain", "lzma"],
                    help="benchmark our VCDIFF output instead: plain (vs xdelta3 -9 -S none) or "
                         "lzma (--vcdiff-lzma vs xdelta3 -9 -S lzma)")
    ap.add_argument("--workdir", default=None, help="where temporary patches go (default: system temp)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="make our patches N times, our tools taking turns, and report the median "
                         "generation time (a machine whose speed drifts skews single runs)")
    args = ap.parse_args()

    if not os.access(GNU_TIME, os.X_OK):
        sys.exit("corpus_bench: %s (GNU time) is required" % GNU_TIME)
    corpus = os.path.abspath(args.corpus)
    deltastream = os.path.abspath(args.deltastream)
    tools = make_vcdiff_tools(deltastream, args.vcdiff) if args.vcdiff else make_tools(deltastream, args.ours_generic)
    peer_names = [t.name for t in tools if t.peer]

    skip = {s.strip() for s in args.skip_peers.split(",") if s.strip()}
    if "all" in skip:
        skip = set(peer_names)
    unknown = skip - set(peer_names) - {"xdelta3"} - {"xdelta3-S" + v for v in ("none", "lzma")}  # "xdelta3" also names the no-lzma variant
    if unknown:
        sys.exit("corpus_bench: unknown peer(s) %s; peers are %s" % (", ".join(sorted(unknown)), ", ".join(peer_names)))
    if "xdelta3" in skip:
        skip |= {t.name for t in tools if t.name.startswith("xdelta3")}

    # The pairs to run: corpus.tsv order, present on disk, optionally filtered by --only.
    table = read_corpus_table(CORPUS_TSV)
    known = {row["id"] for row in table}
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if only:
        bad = [i for i in only if i not in known]
        if bad:
            sys.exit("corpus_bench: unknown pair id(s): %s" % ", ".join(bad))
    pairs = []
    for row in table:
        if only and row["id"] not in only:
            continue
        d = os.path.join(corpus, row["id"])
        old, new = os.path.join(d, "old"), os.path.join(d, "new")
        if not (os.path.isfile(old) and os.path.isfile(new)):
            print("corpus_bench: %s not in %s (run bench/fetch_corpus.sh); skipped" % (row["id"], corpus),
                  file=sys.stderr)
            continue
        source = ""
        if os.path.isfile(os.path.join(d, "SOURCE")):
            with open(os.path.join(d, "SOURCE")) as f:
                source = f.readline().strip()
        pairs.append(dict(id=row["id"], kind=row["kind"], old=old, new=new, source=source,
                          old_size=os.path.getsize(old), new_size=os.path.getsize(new)))
    if not pairs:
        sys.exit("corpus_bench: no pairs to run in %s" % corpus)

    if not args.skip_ours and not os.access(deltastream, os.X_OK):
        print("corpus_bench: WARNING: %s is not an executable; ours will show err" % deltastream,
              file=sys.stderr)

    cache = PeerCache(os.path.join(corpus, "peer-cache.json"))
    all_results = {}
    n_runs = len(pairs) * len(tools)
    i = 0
    for pair in pairs:
        all_results[pair["id"]] = res = {}
        # Read both files once so that the first tool does not pay for a cold page cache.
        for path in (pair["old"], pair["new"]):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        for tool in tools:
            i += 1
            key = PeerCache.key(tool, pair["id"], pair["old_size"], pair["new_size"])
            cached = cache.get(key) if tool.peer and not args.no_cache else None
            if not tool.peer and args.skip_ours:
                res[tool.name] = None
                print("[%d/%d] %-18s %-16s skipped" % (i, n_runs, pair["id"], tool.name), file=sys.stderr)
                continue
            if tool.peer and (cached is not None or tool.name in skip):
                res[tool.name] = cached  # None (shown as "skip") if skipped and not cached
                how = "cached" if cached is not None else "skipped"
                print("[%d/%d] %-18s %-16s %s" % (i, n_runs, pair["id"], tool.name, how), file=sys.stderr)
                continue
            print("[%d/%d] %-18s %-16s ..." % (i, n_runs, pair["id"], tool.name), end="", file=sys.stderr, flush=True)
            workdir = tempfile.mkdtemp(prefix="corpus_bench.", dir=args.workdir)
            try:
                r = bench_tool(tool, pair["old"], pair["new"], workdir, args.timeout, args.wait_idle)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            res[tool.name] = r
            if r["status"] == "err":
                print(" err: %s" % r.get("error"), file=sys.stderr)
            else:
                print(" %s %d B, gen %.2f s, apply %.2f s (others used %.2f / %.2f CPUs)" % (
                    r["status"], r["patch_bytes"], r["gen_s"], r["apply_s"], r["gen_others"], r["apply_others"]),
                    file=sys.stderr)
            # Errors are not cached (they may be transient or fixed later); ok/FAIL are.
            if tool.peer and r["status"] != "err":
                cache.put(key, r)
        # --repeat: more generation runs of our tools, taking turns, and the median kept.
        ours = [t for t in tools if not t.peer and res.get(t.name) and res[t.name]["status"] == "ok"]
        for t in ours:
            res[t.name]["gen_s_runs"] = [res[t.name]["gen_s"]]
        for _ in range(max(0, args.repeat - 1)):
            for t in ours:
                workdir = tempfile.mkdtemp(prefix="corpus_bench.", dir=args.workdir)
                try:
                    wait_until_idle(args.wait_idle)
                    patch = os.path.join(workdir, "patch")
                    gen_s = run_timed(t.encode(pair["old"], pair["new"], patch, pair["old_size"]),
                                      workdir, args.timeout)[0]
                    res[t.name]["gen_s_runs"].append(gen_s)
                except CommandError as e:
                    print("corpus_bench: repeat of %s on %s failed: %s" % (t.name, pair["id"], e),
                          file=sys.stderr)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
        for t in ours:
            runs = sorted(res[t.name]["gen_s_runs"])
            if len(runs) > 1:
                res[t.name]["gen_s"] = runs[len(runs) // 2] if len(runs) % 2 else (
                    runs[len(runs) // 2 - 1] + runs[len(runs) // 2]) / 2
                print("    %-18s %-16s gen median %.3f s of %d runs (%.3f-%.3f)" % (
                    pair["id"], t.name, res[t.name]["gen_s"], len(runs), runs[0], runs[-1]),
                    file=sys.stderr)

    header = [
        "## deltastream corpus benchmark" + (" (VCDIFF, %s)" % args.vcdiff if args.vcdiff else ""),
        "",
        "- date: %s; host: %d CPUs" % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), os.cpu_count() or 0),
        "- ours: `%s`" % deltastream,
        "- peers: %s" % tool_versions(),
        "- commands: " + "; ".join("%s = `%s`" % (t.name, t.signature) for t in tools if t.peer),
        "- times: wall seconds, one tool at a time%s; MiB: peak RSS (GNU time %%M); "
        "patch B = patch bytes; FAIL = applied output differs from new; err = command failed; "
        "skip = not run (--skip-peers) and not cached" % (
            "; ours' generation: median of %d runs, our tools taking turns" % args.repeat
            if args.repeat > 1 else ""),
    ]
    # How much other processes competed with the measurements (cached ones included).
    noisy = []
    for pid, res in all_results.items():
        for name, r in res.items():
            for step in ("gen", "apply"):
                o = (r or {}).get(step + "_others")
                if o is not None and o > NOISY_OTHERS and r.get(step + "_s", 0) >= NOISY_MIN_S:
                    noisy.append((o, "%s %s %s" % (name, pid, step)))
    if noisy:
        noisy.sort(reverse=True)
        shown = ", ".join("%s: %.2f" % (what, o) for o, what in noisy[:8])
        header.append("- WARNING: other processes used > %.1f CPU during %d measurement(s) of >= %g s "
                      "(%s%s); their times are inflated. Rerun on an idle machine (--wait-idle, --no-cache)."
                      % (NOISY_OTHERS, len(noisy), NOISY_MIN_S, shown, ", ..." if len(noisy) > 8 else ""))
    else:
        header.append("- other processes used <= %.1f CPU during every measurement of >= %g s "
                      "(peer results without that record, from older caches, are not judged)"
                      % (NOISY_OTHERS, NOISY_MIN_S))
    subs = [p for p in pairs if "substituted" in p["source"]]
    for p in subs:
        header.append("- %s: %s" % (p["id"], p["source"]))
    report = render(pairs, all_results, tools, header)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pairs": pairs, "results": all_results}, f, indent=1)


if __name__ == "__main__":
    main()
