// Tests the VCDIFF encoder: every patch it writes must decode to the same bytes with the real
// xdelta3 (`xdelta3 -d`) and with deltastream's own decoder, for random, structured, text and
// real data (tests/data), across window boundaries, with a source larger than 64 MiB, and with
// each option. Also checks that seeing the whole source pays off against xdelta3 on data where
// it must.
#include <gtest/gtest.h>
#include <zstd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "delta/vcdiff.h"
#include "delta/vcdiff_format.h"
#include "delta/vcdiff_gen.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::RandomBytes;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::TextBytes;
using testing::WriteFileOrDie;

constexpr const char* kXdelta3 = "/usr/bin/xdelta3";

// Decodes |patch| with `xdelta3 -d -s OLD`; fails the test if xdelta3 fails.
Bytes Xdelta3Decode(const Bytes& old, const Bytes& patch) {
  EXPECT_TRUE(std::filesystem::exists(kXdelta3))
      << kXdelta3 << " is missing; run scripts/install-deps.sh (Debian package xdelta3)";
  TempDir dir;
  WriteFileOrDie(dir.Join("old"), old);
  WriteFileOrDie(dir.Join("patch"), patch);
  const std::string cmd = std::string(kXdelta3) + " -d -f -s '" + dir.Join("old") + "' '" +
                          dir.Join("patch") + "' '" + dir.Join("out") + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  if (rc != 0) return {};
  return ReadFileOrDie(dir.Join("out"));
}

// Size of `xdelta3 -e -9 -S none -B <old size>` for the pair.
size_t Xdelta3Size(const Bytes& old, const Bytes& neu) {
  TempDir dir;
  WriteFileOrDie(dir.Join("old"), old);
  WriteFileOrDie(dir.Join("new"), neu);
  const uint64_t b = std::max<uint64_t>(old.size(), 1 << 19);
  const std::string cmd = std::string(kXdelta3) + " -e -9 -S none -f -B " + std::to_string(b) +
                          " -s '" + dir.Join("old") + "' '" + dir.Join("new") + "' '" +
                          dir.Join("out") + "' 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return ReadFileOrDie(dir.Join("out")).size();
}

// Encodes, then decodes with xdelta3 and with ours (in memory and pushed in odd pieces).
Bytes RoundTrip(const Bytes& old, const Bytes& neu, const VcdiffEncodeOptions& options = {}) {
  VcdiffEncodeStats stats;
  Result<Bytes> patch = EncodeVcdiff(old, neu, options, &stats);
  EXPECT_TRUE(patch.ok()) << patch.status().ToString();
  if (!patch.ok()) return {};
  EXPECT_EQ(DetectPatchFormat(*patch), PatchFormat::kVcdiff);
  EXPECT_EQ(Xdelta3Decode(old, *patch), neu) << "xdelta3 -d disagrees";
  Result<Bytes> ours = ApplyVcdiff(old, *patch);
  EXPECT_TRUE(ours.ok()) << ours.status().ToString();
  if (ours.ok()) {
    EXPECT_EQ(*ours, neu) << "our decoder disagrees";
  }
  MemoryOldSource src(old);
  VectorSink sink;
  VcdiffApplier applier(&src, &sink);
  Status s;
  for (size_t pos = 0, k = 0; pos < patch->size() && s.ok(); ++k) {
    const size_t n = std::min<size_t>(patch->size() - pos, 1 + (k * 7919) % 4093);
    s = applier.Write(ByteView(*patch).subspan(pos, n));
    pos += n;
  }
  if (s.ok()) s = applier.Finish();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(sink.bytes, neu) << "our streaming decoder disagrees";
  return *patch;
}

// |base| with scattered byte changes, insertions, deletions and a moved block.
Bytes Edit(const Bytes& base, uint64_t seed, int edits) {
  Bytes out = base;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int e = 0; e < edits && !out.empty(); ++e) {
    const size_t at = next() % out.size();
    switch (next() % 4) {
      case 0:
        out[at] ^= static_cast<uint8_t>(1 + next() % 255);
        break;
      case 1: {
        const Bytes ins = RandomBytes(1 + next() % 40, next());
        out.insert(out.begin() + static_cast<ptrdiff_t>(at), ins.begin(), ins.end());
        break;
      }
      case 2:
        out.erase(out.begin() + static_cast<ptrdiff_t>(at),
                  out.begin() + static_cast<ptrdiff_t>(std::min(out.size(), at + 1 + next() % 40)));
        break;
      default: {
        const size_t len = std::min<size_t>(out.size() - at, 1 + next() % 4096);
        Bytes block(out.begin() + static_cast<ptrdiff_t>(at),
                    out.begin() + static_cast<ptrdiff_t>(at + len));
        out.erase(out.begin() + static_cast<ptrdiff_t>(at),
                  out.begin() + static_cast<ptrdiff_t>(at + len));
        const size_t to = out.empty() ? 0 : next() % out.size();
        out.insert(out.begin() + static_cast<ptrdiff_t>(to), block.begin(), block.end());
      }
    }
  }
  return out;
}

// Machine-code-like data: records whose embedded 32-bit "addresses" all shift in the new
// version, as when code moves; most bytes match but every record has a changed word.
void ShiftedRecords(size_t records, Bytes* old, Bytes* neu) {
  const Bytes body = RandomBytes(records * 24, 77);
  for (size_t r = 0; r < records; ++r) {
    for (int k = 0; k < 2; ++k) {
      Bytes* out = k ? neu : old;
      out->insert(out->end(), body.begin() + static_cast<ptrdiff_t>(r * 24),
                  body.begin() + static_cast<ptrdiff_t>(r * 24 + 20));
      const uint32_t addr = static_cast<uint32_t>(r * 4096 + (k ? 0x230 : 0));
      for (int b = 0; b < 4; ++b) out->push_back(static_cast<uint8_t>(addr >> (8 * b)));
    }
  }
}

Bytes Unzstd(const std::string& name) {
  const Bytes packed = ReadFileOrDie(std::string(DS_TEST_DATA_DIR) + "/" + name);
  const unsigned long long size = ZSTD_getFrameContentSize(packed.data(), packed.size());
  EXPECT_NE(size, ZSTD_CONTENTSIZE_ERROR) << name;
  EXPECT_NE(size, ZSTD_CONTENTSIZE_UNKNOWN) << name;
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) return {};
  Bytes out(size);
  const size_t n = ZSTD_decompress(out.data(), out.size(), packed.data(), packed.size());
  EXPECT_FALSE(ZSTD_isError(n)) << name;
  return out;
}

TEST(VcdiffEncodeTest, Xdelta3IsInstalled) {
  EXPECT_TRUE(std::filesystem::exists(kXdelta3))
      << kXdelta3 << " is missing; run scripts/install-deps.sh (Debian package xdelta3)";
}

TEST(VcdiffEncodeTest, EdgeCases) {
  const Bytes data = RandomBytes(10000, 1);
  RoundTrip({}, {});
  RoundTrip(data, {});
  RoundTrip({}, data);
  RoundTrip(data, data);
  RoundTrip(data, Bytes{0x42});
  RoundTrip(Bytes{0x42}, data);
  RoundTrip(Bytes(5000, 0), Bytes(70000, 0));  // Runs and self-overlapping copies.
  RoundTrip(RandomBytes(3, 2), RandomBytes(3, 3));
}

TEST(VcdiffEncodeTest, RandomDataWithEdits) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    const Bytes old = RandomBytes(300000 + seed * 1234, seed);
    RoundTrip(old, Edit(old, seed, 50 * static_cast<int>(seed)));
  }
}

TEST(VcdiffEncodeTest, TextWithEdits) {
  const Bytes old = TextBytes(400000, 5);
  RoundTrip(old, Edit(old, 9, 300));
}

TEST(VcdiffEncodeTest, RepeatsWithinTheNewFileUseTargetCopies) {
  // New content that is absent from old but repeats inside new: only copies of earlier target
  // bytes can make it smaller than the content.
  const Bytes old = RandomBytes(50000, 6);
  Bytes neu = old;
  const Bytes fresh = RandomBytes(3000, 7);
  for (int k = 0; k < 20; ++k) neu.insert(neu.end(), fresh.begin(), fresh.end());
  VcdiffEncodeStats stats;
  Result<Bytes> patch = EncodeVcdiff(old, neu, {}, &stats);
  ASSERT_TRUE(patch.ok());
  EXPECT_GT(stats.target_copies, 0u);
  EXPECT_LT(patch->size(), 3000u + 1000u);
  RoundTrip(old, neu);
}

TEST(VcdiffEncodeTest, ShiftedAddressesLikeRelinkedCode) {
  Bytes old, neu;
  ShiftedRecords(20000, &old, &neu);
  RoundTrip(old, neu);
}

TEST(VcdiffEncodeTest, ManyWindows) {
  const Bytes old = RandomBytes(1 << 20, 8);
  const Bytes neu = Edit(old, 10, 200);
  VcdiffEncodeOptions small;
  small.window_size = 4096;  // Copies never cross a window; the source segment moves.
  RoundTrip(old, neu, small);
  small.window_size = 1;
  RoundTrip(RandomBytes(3000, 11), RandomBytes(300, 12), small);
}

TEST(VcdiffEncodeTest, MoreThan16MiBMakesSeveralDefaultWindows) {
  const Bytes old = RandomBytes(20 << 20, 13);
  const Bytes neu = Edit(old, 14, 500);
  VcdiffEncodeStats stats;
  ASSERT_TRUE(EncodeVcdiff(old, neu, {}, &stats).ok());
  EXPECT_GE(stats.windows, 3u);
  RoundTrip(old, neu);
}

TEST(VcdiffEncodeTest, SourceLargerThan64MiB) {
  // New = old's last 4 MiB, then its first 4 MiB, then a middle piece, each edited: every window
  // copies from far apart in a 72 MiB source, past xdelta3's default 64 MiB source window.
  const Bytes old = RandomBytes(72 << 20, 15);
  Bytes neu;
  const size_t piece = 4 << 20;
  neu.insert(neu.end(), old.end() - static_cast<ptrdiff_t>(piece), old.end());
  neu.insert(neu.end(), old.begin(), old.begin() + static_cast<ptrdiff_t>(piece));
  neu.insert(neu.end(), old.begin() + (40 << 20), old.begin() + (40 << 20) + piece);
  neu = Edit(neu, 16, 100);
  const Bytes patch = RoundTrip(old, neu);
  EXPECT_LT(patch.size(), neu.size() / 100);
}

TEST(VcdiffEncodeTest, Options) {
  const Bytes old = TextBytes(200000, 17);
  const Bytes neu = Edit(old, 18, 200);
  VcdiffEncodeOptions plain;
  plain.adler32 = false;
  const Bytes p = RoundTrip(old, neu, plain);
  Result<VcdiffInfo> info = InspectVcdiff(p);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->hdr_indicator, 0);
  for (const VcdiffWindowInfo& w : info->windows) {
    EXPECT_FALSE(w.has_adler32);
    EXPECT_EQ(w.win_indicator & ~vcdiff::kWinSource, 0);
  }
  VcdiffEncodeOptions lzma;
  lzma.secondary_lzma = true;
  const Bytes q = RoundTrip(old, neu, lzma);
  info = InspectVcdiff(q);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->secondary_id, vcdiff::kSecondaryLzma);
  ASSERT_FALSE(info->windows.empty());
  EXPECT_NE(info->windows[0].delta_indicator, 0);
  EXPECT_TRUE(info->windows[0].has_adler32);
  EXPECT_LT(q.size(), p.size());

  VcdiffEncodeOptions bad;
  bad.window_size = (16 << 20) + 1;
  EXPECT_EQ(EncodeVcdiff(old, neu, bad).status().code(), ErrorCode::kInvalidArgument);
}

TEST(VcdiffEncodeTest, RealSharedObjectPair) {
  const Bytes old = Unzstd("parcel-watcher-2.5.4.node.zst");
  const Bytes neu = Unzstd("parcel-watcher-2.5.6.node.zst");
  ASSERT_GT(old.size(), 400000u);
  const Bytes patch = RoundTrip(old, neu);
  VcdiffEncodeOptions lzma;
  lzma.secondary_lzma = true;
  RoundTrip(old, neu, lzma);
  // Deterministic sizes, not timings: the whole-source parse must not lose to xdelta3.
  EXPECT_LT(patch.size(), Xdelta3Size(old, neu));
}

TEST(VcdiffEncodeTest, RealJsonPair) {
  const Bytes old = Unzstd("mime-db-1.53.0.json.zst");
  const Bytes neu = Unzstd("mime-db-1.54.0.json.zst");
  ASSERT_GT(old.size(), 100000u);
  const Bytes patch = RoundTrip(old, neu);
  EXPECT_LT(patch.size(), Xdelta3Size(old, neu));
}

TEST(VcdiffEncodeTest, WholeSourceBeatsXdelta3OnFarMoves) {
  // Blocks moved far apart in a 24 MiB source: a sliding source window loses them.
  const Bytes old = RandomBytes(24 << 20, 19);
  Bytes neu;
  for (int k = 5; k >= 0; --k) {
    neu.insert(neu.end(), old.begin() + (k << 22), old.begin() + (k << 22) + (1 << 20));
  }
  const Bytes patch = RoundTrip(old, neu);
  EXPECT_LT(patch.size(), 1000u);
}

}  // namespace
}  // namespace ds::delta
