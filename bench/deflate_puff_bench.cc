// Deflate puffs on real gzip files: speed of Puff/Huff and whether the round trip is exact, and
// (with --pair OLD NEW) how much smaller byte-level deltas get on puffs than on the raw files.
//
//   deflate_puff_bench FILE.gz...  [--pair OLD.tgz NEW.tgz]
//
// Table per file: compressed size, inflated size, puff size, Puff and Huff speed (MB/s of
// deflate bytes, best of 5 runs, thread CPU time), exact round trip. The pair section runs
// xdelta3 -9 -D (-D: no automatic gunzip of gzip inputs), bsdiff and zstd -19 --patch-from (those
// that are installed) on the raw files, on the puffs and, for reference, on the inflated contents.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "delta/deflate_puff.h"

namespace {

using ds::Bytes;
using ds::ByteView;
using ds::delta::GzipMember;

bool ReadFile(const std::string& path, Bytes* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

bool WriteFile(const std::string& path, ByteView data) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return static_cast<bool>(f);
}

// CPU time of this thread: steadier than wall time on a shared machine.
double CpuNow() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Analysis {
  bool ok = false;
  std::string error;
  uint64_t compressed = 0, deflate = 0, inflated = 0, puff_size = 0;
  double puff_mbps = 0, huff_mbps = 0;
  bool exact = false;
  Bytes puffs;    // The members' puffs, concatenated.
  Bytes content;  // The members' contents, concatenated.
};

Analysis Analyze(const Bytes& file) {
  Analysis a;
  a.compressed = file.size();
  auto members = ds::delta::ParseGzip(file);
  if (!members.ok()) {
    a.error = members.status().ToString();
    return a;
  }
  double best_puff = 1e30, best_huff = 1e30;
  std::vector<Bytes> puffs;
  for (int rep = 0; rep < 5; ++rep) {
    puffs.clear();
    double t0 = CpuNow();
    for (const GzipMember& m : *members) {
      auto p = ds::delta::Puff(ByteView(file).subspan(m.deflate_offset, m.deflate_size));
      if (!p.ok()) {
        a.error = p.status().ToString();
        return a;
      }
      puffs.push_back(std::move(p->puff));
    }
    best_puff = std::min(best_puff, CpuNow() - t0);
    a.exact = true;
    t0 = CpuNow();
    for (size_t i = 0; i < puffs.size(); ++i) {
      auto h = ds::delta::Huff(puffs[i]);
      const GzipMember& m = (*members)[i];
      const ByteView orig = ByteView(file).subspan(m.deflate_offset, m.deflate_size);
      a.exact = a.exact && h.ok() && std::equal(h->begin(), h->end(), orig.begin(), orig.end());
    }
    best_huff = std::min(best_huff, CpuNow() - t0);
  }
  for (size_t i = 0; i < puffs.size(); ++i) {
    a.deflate += (*members)[i].deflate_size;
    a.inflated += (*members)[i].inflated_size;
    a.puffs.insert(a.puffs.end(), puffs[i].begin(), puffs[i].end());
    auto c = ds::delta::InflatePuff(puffs[i]);
    if (c.ok()) a.content.insert(a.content.end(), c->begin(), c->end());
  }
  a.puff_size = a.puffs.size();
  a.puff_mbps = static_cast<double>(a.deflate) / best_puff / 1e6;
  a.huff_mbps = static_cast<double>(a.deflate) / best_huff / 1e6;
  a.ok = true;
  return a;
}

bool Have(const std::string& tool) {
  return std::system(("command -v " + tool + " >/dev/null 2>&1").c_str()) == 0;
}

// Size of the file a delta command wrote, or -1 when it failed.
long long RunDelta(const std::string& cmd, const std::string& out) {
  std::filesystem::remove(out);
  if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) return -1;
  std::error_code ec;
  const auto size = std::filesystem::file_size(out, ec);
  return ec ? -1 : static_cast<long long>(size);
}

void Pair(const std::string& old_path, const std::string& new_path) {
  Bytes old_file, new_file;
  if (!ReadFile(old_path, &old_file) || !ReadFile(new_path, &new_file)) {
    std::printf("cannot read the pair\n");
    return;
  }
  const Analysis a = Analyze(old_file), b = Analyze(new_file);
  if (!a.ok || !b.ok) {
    std::printf("pair: %s\n", (a.ok ? b.error : a.error).c_str());
    return;
  }
  char tmpl[] = "/tmp/deflate_puff_bench.XXXXXX";
  if (!mkdtemp(tmpl)) return;
  const std::string dir = tmpl;
  struct Kind {
    const char* name;
    std::string old_path, new_path;
  };
  std::vector<Kind> kinds = {{"raw", old_path, new_path},
                             {"puff", dir + "/old.puff", dir + "/new.puff"},
                             {"inflated", dir + "/old.raw", dir + "/new.raw"}};
  WriteFile(kinds[1].old_path, a.puffs);
  WriteFile(kinds[1].new_path, b.puffs);
  WriteFile(kinds[2].old_path, a.content);
  WriteFile(kinds[2].new_path, b.content);
  std::printf("\npair %s -> %s (new: %llu compressed, %llu puff, %llu inflated bytes)\n",
              old_path.c_str(), new_path.c_str(), static_cast<unsigned long long>(b.compressed),
              static_cast<unsigned long long>(b.puff_size),
              static_cast<unsigned long long>(b.inflated));
  std::printf("%-28s %14s %14s %14s\n", "delta tool", "raw", "puff", "inflated");
  struct Tool {
    const char* label;
    const char* binary;
    std::string (*cmd)(const std::string& o, const std::string& n, const std::string& out);
  };
  const Tool tools[] = {
      {"xdelta3 -9 -D -e -s", "xdelta3",
       [](const std::string& o, const std::string& n, const std::string& out) {
         return "xdelta3 -9 -D -f -e -s '" + o + "' '" + n + "' '" + out + "'";
       }},
      {"bsdiff", "bsdiff",
       [](const std::string& o, const std::string& n, const std::string& out) {
         return "bsdiff '" + o + "' '" + n + "' '" + out + "'";
       }},
      {"zstd -19 --patch-from", "zstd",
       [](const std::string& o, const std::string& n, const std::string& out) {
         return "zstd -q -f -19 --long=27 --patch-from='" + o + "' '" + n + "' -o '" + out + "'";
       }},
  };
  for (const Tool& t : tools) {
    if (!Have(t.binary)) {
      std::printf("%-28s %14s\n", t.label, "(not installed)");
      continue;
    }
    std::printf("%-28s", t.label);
    for (const Kind& k : kinds) {
      const long long size =
          RunDelta(t.cmd(k.old_path, k.new_path, dir + "/patch"), dir + "/patch");
      if (size < 0) {
        std::printf(" %14s", "failed");
      } else {
        std::printf(" %14lld", size);
      }
      std::fflush(stdout);
    }
    std::printf("\n");
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  std::string pair_old, pair_new;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--pair" && i + 2 < argc) {
      pair_old = argv[++i];
      pair_new = argv[++i];
    } else {
      files.push_back(arg);
    }
  }
  if (files.empty() && pair_old.empty()) {
    std::fprintf(stderr, "usage: %s FILE.gz... [--pair OLD.tgz NEW.tgz]\n", argv[0]);
    return 2;
  }
  if (!files.empty()) {
    std::printf("%-40s %12s %12s %12s %10s %10s %6s\n", "file", "compressed", "inflated", "puff",
                "puff MB/s", "huff MB/s", "exact");
  }
  for (const std::string& path : files) {
    Bytes file;
    if (!ReadFile(path, &file)) {
      std::printf("%-40s cannot read\n", path.c_str());
      continue;
    }
    const Analysis a = Analyze(file);
    if (!a.ok) {
      std::printf("%-40s error: %s\n", path.c_str(), a.error.c_str());
      continue;
    }
    std::printf("%-40s %12llu %12llu %12llu %10.1f %10.1f %6s\n", path.c_str(),
                static_cast<unsigned long long>(a.compressed),
                static_cast<unsigned long long>(a.inflated),
                static_cast<unsigned long long>(a.puff_size), a.puff_mbps, a.huff_mbps,
                a.exact ? "yes" : "NO");
  }
  if (!pair_old.empty()) Pair(pair_old, pair_new);
  return 0;
}
