// xz replay forms on real .xz streams against liblzma: decoding a stream to its replay form and
// coding the form back (what the device does to rebuild a .deb's data.tar.xz under transform
// xz-replay) next to liblzma decoding it and liblzma re-compressing its content with the preset
// that reproduces it (what transform xz does), and the memory each needs.
//
//   xz_replay_bench FILE...     (.xz files, or .deb / ar archives: their .xz members)
//
// Table per stream: stream and content size, form size, MB/s of content (best of 5, process CPU
// time) for liblzma's decoder, our replay decoder (XzToReplayForm), our replay coder
// (XzFromReplayForm, checked against the stream), and liblzma's encoder at the proven preset
// (skipped with "-" when no preset reproduces the stream), plus liblzma's encoder memory for it.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "delta/lzma_replay.h"
#include "delta/xz_rebuild.h"
#include "delta/xz_streams.h"

namespace {

using ds::Bytes;
using ds::ByteView;

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Best of 5 runs of |f| (returns false when |f| does).
template <typename F>
bool Best(F f, double* seconds) {
  *seconds = 1e30;
  for (int i = 0; i < 5; ++i) {
    const double t0 = CpuSeconds();
    if (!f()) return false;
    *seconds = std::min(*seconds, CpuSeconds() - t0);
  }
  return true;
}

std::string Rate(uint64_t bytes, double seconds, bool ok) {
  if (!ok) return "-";
  char b[32];
  std::snprintf(b, sizeof(b), "%.1f", static_cast<double>(bytes) / seconds / 1e6);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE...\n", argv[0]);
    return 2;
  }
  std::printf(
      "| stream | xz B | content B | form B | liblzma decode MB/s | replay decode MB/s | "
      "replay code MB/s | liblzma encode MB/s | preset | liblzma encoder MiB |\n");
  std::printf("|:--|--:|--:|--:|--:|--:|--:|--:|:--|--:|\n");
  int status = 0;
  for (int a = 1; a < argc; ++a) {
    std::ifstream f(argv[a], std::ios::binary);
    const Bytes file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ds::delta::XzStreamLimits limits;
    limits.max_content = 1ull << 30;
    limits.max_encoder_memory = 0;
    for (const ds::delta::XzStream& s : ds::delta::FindXzStreams(file, false, limits)) {
      const ByteView stream = ByteView(file).subspan(s.offset, s.length);
      const uint64_t n = s.content.size();
      double t_lz = 0, t_dec = 0, t_enc = 0, t_lzenc = 0;
      const bool ok_lz =
          Best([&] { return ds::delta::XzDecode(stream, limits.max_content).ok(); }, &t_lz);
      const bool ok_dec =
          Best([&] { return ds::delta::XzToReplayForm(stream, limits.max_content).ok(); }, &t_dec);
      const bool ok_enc =
          Best([&] { return ds::delta::XzFromReplayForm(s.form, stream).ok(); }, &t_enc);
      ds::Result<ds::delta::XzParams> p = ds::delta::FindXzParams(stream, s.content);
      bool ok_lzenc = false;
      std::string preset = "-", memory = "-";
      if (p.ok()) {
        ok_lzenc = Best([&] { return ds::delta::XzEncode(s.content, *p, stream).ok(); }, &t_lzenc);
        preset = std::to_string(p->preset & 0x0F) + ((p->preset & 0x80) ? "e" : "") +
                 (p->block_size ? " mt" : "");
        memory = std::to_string(ds::delta::XzEncoderMemory(*p, n) >> 20);
      }
      if (!ok_dec || !ok_enc) status = 1;
      std::printf("| %s %s | %zu | %zu | %zu | %s | %s | %s | %s | %s | %s |\n", argv[a],
                  s.name.c_str(), static_cast<size_t>(s.length), static_cast<size_t>(n),
                  s.form.size(), Rate(n, t_lz, ok_lz).c_str(), Rate(n, t_dec, ok_dec).c_str(),
                  Rate(n, t_enc, ok_enc).c_str(), Rate(n, t_lzenc, ok_lzenc).c_str(),
                  preset.c_str(), memory.c_str());
    }
  }
  return status;
}
