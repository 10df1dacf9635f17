// The apply engine's throughput on the real corpus, in process: each pair's patch applied from
// memory to memory (old hash checked, every segment's CRC and the new file's SHA-256 verified,
// exactly as the CLI and the agent do, but without file I/O and fsync), against zstd's own
// --patch-from decoder (libzstd, old file as prefix, level-19 long-range patch) in the same run.
// Prints a Markdown table; the corpus benchmark (corpus_bench.py) measures the CLIs end to end.
//
//   apply_corpus_bench [--corpus DIR] [--patch-dir DIR] [--reps N] [--only id,id] [--generic]
//
// --generic: our patches without transforms (what `diff --no-transforms` makes).
// Patches are made once per pair (ours: GeneratePatch with the CLI's defaults; zstd: level 19,
// long matching, window covering old + new) and kept in --patch-dir (default
// /tmp/ds-apply-corpus) as <id>.dspf / <id>.zst, keyed by the pair's sizes; delete them after
// changing the generator. Times are the best of --reps runs (default 5).
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "delta/delta.h"
#include "delta/delta_gen.h"

namespace {

namespace fs = std::filesystem;
using ds::Bytes;
using ds::ByteView;
using Clock = std::chrono::steady_clock;

Bytes ReadAll(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

bool WriteAll(const fs::path& p, ByteView b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return static_cast<bool>(f);
}

// Writes into a buffer sized for the whole output (no reallocation inside the timed part).
class FixedSink : public ds::delta::OutputSink {
 public:
  explicit FixedSink(Bytes* buf) : buf_(buf) {}
  ds::Status Write(ByteView data) override {
    if (data.size() > buf_->size() - pos_) {
      return ds::Error(ds::ErrorCode::kInternal, "output larger than the new file");
    }
    std::memcpy(buf_->data() + pos_, data.data(), data.size());
    pos_ += data.size();
    return ds::Status::Ok();
  }
  size_t pos() const { return pos_; }

 private:
  Bytes* buf_;
  size_t pos_ = 0;
};

int WindowLogFor(uint64_t bytes) {
  int l = 10;
  while ((1ull << l) < bytes && l < ZSTD_WINDOWLOG_MAX_64) ++l;
  return l;
}

Bytes ZstdPatchFrom(ByteView old, ByteView neu) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 19);
  ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, WindowLogFor(old.size() + neu.size()));
  ZSTD_CCtx_setParameter(c, ZSTD_c_enableLongDistanceMatching, 1);
  ZSTD_CCtx_refPrefix(c, old.data(), old.size());
  Bytes out(ZSTD_compressBound(neu.size()));
  const size_t n = ZSTD_compress2(c, out.data(), out.size(), neu.data(), neu.size());
  ZSTD_freeCCtx(c);
  out.resize(ZSTD_isError(n) ? 0 : n);
  return out;
}

struct Row {
  std::string id;
  uint64_t new_size = 0, ours_patch = 0, zstd_patch = 0;
  double ours_s = -1, zstd_s = -1;
  std::string note;
};

std::string Commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

double Mbps(uint64_t bytes, double s) { return s > 0 ? bytes / s / 1e6 : 0; }

}  // namespace

int main(int argc, char** argv) {
  fs::path corpus = "bench/corpus", patch_dir = "/tmp/ds-apply-corpus";
  int reps = 5;
  bool generic = false;
  std::set<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--corpus" && has_value) {
      corpus = argv[++i];
    } else if (a == "--patch-dir" && has_value) {
      patch_dir = argv[++i];
    } else if (a == "--reps" && has_value) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--generic") {
      generic = true;
    } else if (a == "--only" && has_value) {
      std::stringstream ss(argv[++i]);
      for (std::string id; std::getline(ss, id, ',');) only.insert(id);
    } else {
      std::fprintf(stderr,
                   "usage: apply_corpus_bench [--corpus DIR] [--patch-dir DIR] [--reps N] "
                   "[--only id,id] [--generic]\n");
      return 2;
    }
  }
  fs::create_directories(patch_dir);
  std::vector<fs::path> pairs;
  for (const auto& e : fs::directory_iterator(corpus)) {
    if (e.is_directory() && fs::exists(e.path() / "old") && fs::exists(e.path() / "new") &&
        (only.empty() || only.count(e.path().filename().string()))) {
      pairs.push_back(e.path());
    }
  }
  std::sort(pairs.begin(), pairs.end());
  if (pairs.empty()) {
    std::fprintf(stderr, "no pairs under %s (run bench/fetch_corpus.sh)\n", corpus.c_str());
    return 1;
  }

  std::vector<Row> rows;
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  for (const fs::path& dir : pairs) {
    Row r;
    r.id = dir.filename().string();
    const Bytes old = ReadAll(dir / "old"), neu = ReadAll(dir / "new");
    r.new_size = neu.size();
    const std::string key =
        r.id + "." + std::to_string(old.size()) + "." + std::to_string(neu.size());
    const fs::path ours_path = patch_dir / (key + (generic ? ".generic.dspf" : ".dspf"));
    const fs::path zstd_path = patch_dir / (key + ".zst");
    if (!fs::exists(ours_path)) {
      std::fprintf(stderr, "%s: generating our patch\n", r.id.c_str());
      ds::delta::GenerateOptions options;
      options.try_transforms = options.try_recompress = !generic;
      auto p = ds::delta::GeneratePatch(old, neu, options);
      if (!p.ok() || !WriteAll(ours_path, *p)) {
        std::fprintf(stderr, "%s: %s\n", r.id.c_str(),
                     p.ok() ? "write failed" : p.status().ToString().c_str());
        return 1;
      }
    }
    if (!fs::exists(zstd_path)) {
      std::fprintf(stderr, "%s: generating the zstd --patch-from patch\n", r.id.c_str());
      const Bytes z = ZstdPatchFrom(old, neu);
      if (z.empty() || !WriteAll(zstd_path, z)) return 1;
    }
    const Bytes ours = ReadAll(ours_path), zst = ReadAll(zstd_path);
    r.ours_patch = ours.size();
    r.zstd_patch = zst.size();
    Bytes out(neu.size());

    for (int k = 0; k < reps; ++k) {
      std::memset(out.data(), 0, out.size());
      const auto t = Clock::now();
      ds::delta::MemoryOldSource src(old);
      FixedSink sink(&out);
      ds::delta::PatchApplier applier(&src, &sink);
      ds::Status s = applier.Write(ours);
      if (s.ok()) s = applier.Finish();
      const double secs = std::chrono::duration<double>(Clock::now() - t).count();
      if (!s.ok() || sink.pos() != neu.size() || out != neu) {
        r.note = "ours FAILED: " + s.ToString();
        break;
      }
      if (r.ours_s < 0 || secs < r.ours_s) r.ours_s = secs;
    }
    for (int k = 0; k < reps; ++k) {
      std::memset(out.data(), 0, out.size());
      const auto t = Clock::now();
      ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
      ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX_64);
      ZSTD_DCtx_refPrefix(dctx, old.data(), old.size());
      const size_t n = ZSTD_decompressDCtx(dctx, out.data(), out.size(), zst.data(), zst.size());
      const double secs = std::chrono::duration<double>(Clock::now() - t).count();
      if (ZSTD_isError(n) || n != neu.size() || out != neu) {
        r.note += " zstd FAILED";
        break;
      }
      if (r.zstd_s < 0 || secs < r.zstd_s) r.zstd_s = secs;
    }
    std::fprintf(stderr, "%s: ours %.1f ms, zstd %.1f ms\n", r.id.c_str(), r.ours_s * 1e3,
                 r.zstd_s * 1e3);
    rows.push_back(r);
  }
  ZSTD_freeDCtx(dctx);

  std::printf(
      "| pair | new bytes | ours patch B | ours apply ms | ours MB/s | zstd-19 patch B | zstd "
      "apply "
      "ms | zstd MB/s | ours time / zstd |\n|:---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  uint64_t total = 0;
  double ours_total = 0, zstd_total = 0, log_ratio = 0;
  int n = 0;
  for (const Row& r : rows) {
    std::printf("| %s | %s | %s | %.1f | %.0f | %s | %.1f | %.0f | %.2f |%s\n", r.id.c_str(),
                Commas(r.new_size).c_str(), Commas(r.ours_patch).c_str(), r.ours_s * 1e3,
                Mbps(r.new_size, r.ours_s), Commas(r.zstd_patch).c_str(), r.zstd_s * 1e3,
                Mbps(r.new_size, r.zstd_s), r.zstd_s > 0 ? r.ours_s / r.zstd_s : 0,
                r.note.empty() ? "" : (" " + r.note).c_str());
    if (r.ours_s > 0 && r.zstd_s > 0) {
      total += r.new_size;
      ours_total += r.ours_s;
      zstd_total += r.zstd_s;
      log_ratio += std::log(r.ours_s / r.zstd_s);
      ++n;
    }
  }
  if (n > 0) {
    std::printf(
        "\n- ours: %.0f MB/s over the corpus (%s new bytes in %.3f s); zstd --patch-from: %.0f "
        "MB/s\n- ours time / zstd time, geometric mean over %d pairs: %.2f\n",
        Mbps(total, ours_total), Commas(total).c_str(), ours_total, Mbps(total, zstd_total), n,
        std::exp(log_ratio / n));
  }
  return 0;
}
