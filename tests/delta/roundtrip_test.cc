// Tests GeneratePatch + ApplyPatch round trips over structured edits, edge sizes and option sets.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::RandomBytes;
using testing::TextBytes;

struct Pair {
  Bytes old_bytes, new_bytes;
};

// --- Structured edits -------------------------------------------------------------------------

Pair Insertions(size_t n, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{RandomBytes(n, seed), {}};
  p.new_bytes = p.old_bytes;
  for (int i = 0; i < count; ++i) {
    const Bytes ins = RandomBytes(1 + rng() % 500, rng());
    const size_t at = rng() % (p.new_bytes.size() + 1);
    p.new_bytes.insert(p.new_bytes.begin() + at, ins.begin(), ins.end());
  }
  return p;
}

Pair Deletions(size_t n, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{RandomBytes(n, seed), {}};
  p.new_bytes = p.old_bytes;
  for (int i = 0; i < count && !p.new_bytes.empty(); ++i) {
    const size_t at = rng() % p.new_bytes.size();
    const size_t len = std::min<size_t>(1 + rng() % 2000, p.new_bytes.size() - at);
    p.new_bytes.erase(p.new_bytes.begin() + at, p.new_bytes.begin() + at + len);
  }
  return p;
}

Pair BlockMoves(size_t n, size_t block, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{RandomBytes(n, seed), {}};
  std::vector<size_t> order(n / block);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t b : order) {
    p.new_bytes.insert(p.new_bytes.end(), p.old_bytes.begin() + b * block,
                       p.old_bytes.begin() + (b + 1) * block);
  }
  return p;
}

Pair RepeatedBlocks(uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{RandomBytes(64 << 10, seed), {}};
  for (int i = 0; i < 40; ++i) {
    const size_t at = (rng() % 16) * 4096;
    p.new_bytes.insert(p.new_bytes.end(), p.old_bytes.begin() + at,
                       p.old_bytes.begin() + at + 4096);
    if (i % 7 == 0) p.new_bytes.push_back(static_cast<uint8_t>(rng()));
  }
  return p;
}

Pair ByteFlips(size_t n, size_t every, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{RandomBytes(n, seed), {}};
  p.new_bytes = p.old_bytes;
  for (size_t i = rng() % every; i < n; i += 1 + rng() % (2 * every)) {
    p.new_bytes[i] ^= static_cast<uint8_t>(1 + rng() % 255);
  }
  return p;
}

// Random "code" with 4-byte little-endian pointers; in the new version every pointer moved by
// a constant (as after inserting a function) and a block of code was inserted.
Pair ExecutableLike(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const size_t n = 192 << 10;
  Pair p;
  p.old_bytes = RandomBytes(n, seed);
  std::vector<size_t> pointers;
  for (size_t at = 16; at + 4 <= n; at += 8 + rng() % 24) {
    const uint32_t target = 0x400000 + static_cast<uint32_t>(rng() % n);
    for (int k = 0; k < 4; ++k) p.old_bytes[at + k] = static_cast<uint8_t>(target >> (8 * k));
    pointers.push_back(at);
  }
  p.new_bytes = p.old_bytes;
  for (size_t at : pointers) {
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= static_cast<uint32_t>(p.new_bytes[at + k]) << (8 * k);
    v += 0x1a40;
    for (int k = 0; k < 4; ++k) p.new_bytes[at + k] = static_cast<uint8_t>(v >> (8 * k));
  }
  const Bytes inserted = RandomBytes(0x1a40, seed + 1);
  p.new_bytes.insert(p.new_bytes.begin() + n / 3, inserted.begin(), inserted.end());
  return p;
}

Pair TextEdits(uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pair p{TextBytes(150 << 10, seed), {}};
  std::string text(p.old_bytes.begin(), p.old_bytes.end());
  for (int i = 0; i < 30; ++i) {
    const size_t at = text.find('\n', rng() % text.size());
    if (at == std::string::npos) continue;
    if (i % 3 == 0) {
      text.erase(at, std::min<size_t>(text.size() - at, 40 + rng() % 200));
    } else {
      text.insert(at + 1, "inserted line " + std::to_string(rng()) + " with new words\n");
    }
  }
  p.new_bytes.assign(text.begin(), text.end());
  return p;
}

Pair Concat(Bytes a, Bytes b) { return Pair{std::move(a), std::move(b)}; }

// --- Cases ------------------------------------------------------------------------------------

struct DataCase {
  const char* name;
  std::function<Pair()> make;
};

const std::vector<DataCase>& DataCases() {
  static const std::vector<DataCase> cases = {
      {"Insertions", [] { return Insertions(100 << 10, 20, 1); }},
      {"Deletions", [] { return Deletions(100 << 10, 20, 2); }},
      {"BlockMoves", [] { return BlockMoves(128 << 10, 4096, 3); }},
      {"SmallBlockMoves", [] { return BlockMoves(64 << 10, 100, 4); }},
      {"RepeatedBlocks", [] { return RepeatedBlocks(5); }},
      {"SparseByteFlips", [] { return ByteFlips(128 << 10, 4000, 6); }},
      {"DenseByteFlips", [] { return ByteFlips(64 << 10, 8, 7); }},
      {"ExecutableLike", [] { return ExecutableLike(8); }},
      {"TextEdits", [] { return TextEdits(9); }},
      {"Unrelated", [] { return Concat(RandomBytes(50 << 10, 10), RandomBytes(60 << 10, 11)); }},
      {"EmptyOld", [] { return Concat({}, RandomBytes(20 << 10, 12)); }},
      {"EmptyOldTextNew", [] { return Concat({}, TextBytes(20 << 10, 12)); }},
      {"EmptyNew", [] { return Concat(RandomBytes(20 << 10, 13), {}); }},
      {"BothEmpty", [] { return Concat({}, {}); }},
      {"Identical",
       [] {
         Bytes b = RandomBytes(64 << 10, 14);
         return Concat(b, b);
       }},
      {"OneByteFilesDiffer", [] { return Concat({0x61}, {0x62}); }},
      {"OneByteFilesSame", [] { return Concat({0x61}, {0x61}); }},
      {"OneByteOldLargeNew", [] { return Concat({0x00}, RandomBytes(9000, 15)); }},
      {"LargeOldOneByteNew", [] { return Concat(RandomBytes(9000, 16), {0x7f}); }},
      {"OldMuchLarger",
       [] {
         Bytes old_bytes = RandomBytes(512 << 10, 17);
         Bytes neu(old_bytes.begin() + 300000, old_bytes.begin() + 302000);
         neu.push_back(1);
         return Concat(std::move(old_bytes), std::move(neu));
       }},
      {"OldMuchSmaller",
       [] {
         Bytes old_bytes = RandomBytes(1000, 18);
         Bytes neu;
         for (int i = 0; i < 150; ++i) {
           neu.insert(neu.end(), old_bytes.begin() + i, old_bytes.end());
           neu.push_back(static_cast<uint8_t>(i));
         }
         return Concat(std::move(old_bytes), std::move(neu));
       }},
      {"ZerosWithChanges",
       [] {
         Bytes old_bytes(200 << 10, 0), neu(210 << 10, 0);
         for (size_t i = 0; i < neu.size(); i += 5000) neu[i] = static_cast<uint8_t>(i);
         return Concat(std::move(old_bytes), std::move(neu));
       }},
      {"PeriodicPattern",
       [] {
         Bytes old_bytes, neu;
         for (int i = 0; i < 60000; ++i) old_bytes.push_back("abcab"[i % 5]);
         for (int i = 0; i < 70000; ++i) neu.push_back("abcabd"[i % 6]);
         return Concat(std::move(old_bytes), std::move(neu));
       }},
      {"ExactlyTwoSegments", [] { return ByteFlips(8192, 1000, 19); }},
      {"OneByteOverSegment", [] { return ByteFlips(4097, 1000, 20); }},
      {"OneByteUnderSegment", [] { return ByteFlips(4095, 1000, 21); }},
      {"ManySegments", [] { return Insertions(300 << 10, 40, 22); }},
  };
  return cases;
}

struct OptionsCase {
  const char* name;
  GenerateOptions options;
};

GenerateOptions Fast() {
  GenerateOptions o;
  o.stream_level = 1;
  o.ref_level = 1;
  return o;
}

const std::vector<OptionsCase>& OptionCases() {
  static const std::vector<OptionsCase> cases = [] {
    std::vector<OptionsCase> v;
    v.push_back({"Default", GenerateOptions()});
    v.push_back({"Fast", Fast()});
    GenerateOptions seg = Fast();  // Per-segment matching and zstdref trials.
    seg.segment_size = 4096;
    seg.whole_file_limit = 4096;
    seg.segment_ref_window = 16 << 10;
    v.push_back({"Segmented", seg});
    GenerateOptions seg_whole = Fast();  // Whole-file match split into segments + whole trials.
    seg_whole.segment_size = 4096;
    v.push_back({"SegmentedWithWholeFileTrials", seg_whole});
    GenerateOptions no_ref = seg;
    no_ref.try_zstd_ref = false;
    no_ref.threads = 1;
    v.push_back({"NoZstdRefOneThread", no_ref});
    GenerateOptions two = seg;
    two.threads = 2;
    two.stream_level = 3;
    two.ref_level = 3;
    v.push_back({"TwoThreads", two});
    GenerateOptions tiny = Fast();  // Segments smaller than most edits.
    tiny.segment_size = 512;
    tiny.whole_file_limit = 0;
    tiny.segment_ref_window = 4096;
    v.push_back({"TinySegments", tiny});
    return v;
  }();
  return cases;
}

// Upper bound for any patch: the file stored, plus framing (header ~100 bytes, ~40 per segment).
uint64_t StoredBound(uint64_t new_size, uint64_t segments) {
  return new_size + 160 + 48 * segments;
}

class RoundTripTest : public ::testing::TestWithParam<std::tuple<size_t, size_t>> {};

TEST_P(RoundTripTest, ApplyRebuildsNew) {
  const DataCase& data = DataCases()[std::get<0>(GetParam())];
  const OptionsCase& opts = OptionCases()[std::get<1>(GetParam())];
  const Pair p = data.make();
  GenerateStats stats;
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, opts.options, &stats);
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  Result<Bytes> rebuilt = ApplyPatch(p.old_bytes, *patch);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  ASSERT_EQ(rebuilt->size(), p.new_bytes.size());
  EXPECT_TRUE(*rebuilt == p.new_bytes) << "rebuilt bytes differ";
  const testing::MethodCounts counts = testing::CountMethods(*patch);
  EXPECT_EQ(counts.total(), stats.segments);
  EXPECT_EQ(counts.stored, stats.stored_segments);
  EXPECT_EQ(counts.copydiff, stats.copydiff_segments);
  EXPECT_EQ(counts.other, 0u);
  EXPECT_LE(patch->size(), StoredBound(p.new_bytes.size(), stats.segments))
      << "patch larger than storing the file";
  if (p.new_bytes.empty()) {
    EXPECT_EQ(stats.segments, 0u);
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<size_t, size_t>>& info) {
  return std::string(DataCases()[std::get<0>(info.param)].name) + "_" +
         OptionCases()[std::get<1>(info.param)].name;
}

INSTANTIATE_TEST_SUITE_P(AllCases, RoundTripTest,
                         ::testing::Combine(::testing::Range<size_t>(0, DataCases().size()),
                                            ::testing::Range<size_t>(0, OptionCases().size())),
                         CaseName);

// --- Size and behaviour checks ---------------------------------------------------------------

TEST(RoundTripSizeTest, IdenticalMegabyteGivesTinyPatch) {
  const Bytes data = RandomBytes(1 << 20, 30);
  Result<Bytes> patch = GeneratePatch(data, data);
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  EXPECT_LT(patch->size(), 200u);
  Result<Bytes> rebuilt = ApplyPatch(data, *patch);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == data);
}

TEST(RoundTripSizeTest, IdenticalMegabyteSegmentedStaysSmall) {
  const Bytes data = RandomBytes(1 << 20, 31);
  GenerateOptions o = Fast();
  o.segment_size = 64 << 10;
  o.whole_file_limit = 0;
  GenerateStats stats;
  Result<Bytes> patch = GeneratePatch(data, data, o, &stats);
  ASSERT_TRUE(patch.ok());
  EXPECT_GE(stats.segments, 16u);
  EXPECT_LT(patch->size(), 200u + stats.segments * 64);
  EXPECT_EQ(stats.stored_segments, 0u);
  Result<Bytes> rebuilt = ApplyPatch(data, *patch);
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_TRUE(*rebuilt == data);
}

TEST(RoundTripSizeTest, SparseEditsGiveSmallPatch) {
  const Pair p = ByteFlips(256 << 10, 5000, 32);
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, Fast());
  ASSERT_TRUE(patch.ok());
  EXPECT_LT(patch->size(), 4096u) << "about 50 flipped bytes in 256 KiB";
}

TEST(RoundTripSizeTest, ShiftedPointersCompressWell) {
  const Pair p = ExecutableLike(33);
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, GenerateOptions());
  ASSERT_TRUE(patch.ok());
  // The inserted block (6.5 KiB random) dominates; the pointer shifts must cost little.
  EXPECT_LT(patch->size(), 0x1a40u + (16u << 10)) << "new is " << p.new_bytes.size() << " bytes";
}

TEST(RoundTripSizeTest, UnrelatedDataFallsBackToStored) {
  const Bytes old_bytes = RandomBytes(30000, 34), neu = RandomBytes(30000, 35);
  GenerateStats stats;
  Result<Bytes> patch = GeneratePatch(old_bytes, neu, Fast(), &stats);
  ASSERT_TRUE(patch.ok());
  EXPECT_EQ(stats.stored_segments, stats.segments);
  EXPECT_LE(patch->size(), neu.size() + 200);
}

// New larger than several default (4 MiB) segments, with the default levels; whole-file trials
// are disabled so that the segmented path is what gets applied.
TEST(RoundTripLargeTest, SeveralDefaultSegments) {
  std::mt19937_64 rng(36);
  const Bytes old_bytes = RandomBytes(9 << 20, 36);
  Bytes neu = old_bytes;
  for (int i = 0; i < 200; ++i) neu[rng() % neu.size()] ^= 0x5a;
  const Bytes ins = TextBytes(100000, 37);
  neu.insert(neu.begin() + (5 << 20), ins.begin(), ins.end());
  GenerateOptions o;
  o.whole_file_limit = 0;
  GenerateStats stats;
  Result<Bytes> patch = GeneratePatch(old_bytes, neu, o, &stats);
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  EXPECT_GE(stats.segments, 3u);
  EXPECT_LT(patch->size(), 64u << 10);
  Result<PatchInfo> info = InspectPatch(*patch);
  ASSERT_TRUE(info.ok());
  EXPECT_LE(info->header.max_segment_output, o.segment_size);
  Result<Bytes> rebuilt = ApplyPatch(old_bytes, *patch);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == neu);
}

// With more than one thread and a new file above 1 MiB, the generator rounds the segment count
// up to a multiple of the thread count and then shares the file out evenly. These sizes make the
// rounded-up count one too many for the even share: the last segment is empty (1025 x 1024 =
// 1049600) or starts past the end (1049599). Every segment must still be non-empty and in range.
Pair RoundingCase(size_t n) {
  Pair p{RandomBytes(n, 50), {}};
  p.new_bytes = p.old_bytes;
  p.new_bytes[5000] ^= 1;
  return p;
}

GenerateOptions RoundingOptions() {
  GenerateOptions o = Fast();
  o.segment_size = 1024;
  o.whole_file_limit = 0;
  o.try_zstd_ref = false;
  o.threads = 2;
  return o;
}

TEST(GenerateSegmentsTest, ThreadRoundedSegmentCountLeavesNoEmptySegment) {
  const Pair p = RoundingCase(1049600);
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, RoundingOptions());
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  Result<PatchInfo> info = InspectPatch(*patch);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  Result<Bytes> rebuilt = ApplyPatch(p.old_bytes, *patch);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == p.new_bytes);
}

TEST(GenerateSegmentsTest, ThreadRoundedSegmentCountNeverStartsPastEnd) {
  const Pair p = RoundingCase(1049599);
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, RoundingOptions());
  ASSERT_TRUE(patch.ok()) << patch.status().ToString();
  Result<Bytes> rebuilt = ApplyPatch(p.old_bytes, *patch);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == p.new_bytes);
}

TEST(GenerateOptionsTest, InvalidOptionsRejected) {
  const Bytes a = RandomBytes(100, 40);
  GenerateOptions o;
  o.segment_size = 0;
  EXPECT_EQ(testing::CodeOf(GeneratePatch(a, a, o)), ErrorCode::kInvalidArgument);
  o = GenerateOptions();
  o.stream_level = 0;
  EXPECT_EQ(testing::CodeOf(GeneratePatch(a, a, o)), ErrorCode::kInvalidArgument);
  o = GenerateOptions();
  o.ref_level = 23;
  EXPECT_EQ(testing::CodeOf(GeneratePatch(a, a, o)), ErrorCode::kInvalidArgument);
}

TEST(GenerateOptionsTest, SameInputGivesSamePatchForAnyThreadCount) {
  const Pair p = Insertions(200 << 10, 10, 41);
  GenerateOptions o = Fast();
  o.segment_size = 8192;
  o.whole_file_limit = 0;
  o.threads = 1;
  Result<Bytes> one = GeneratePatch(p.old_bytes, p.new_bytes, o);
  o.threads = 2;
  Result<Bytes> two = GeneratePatch(p.old_bytes, p.new_bytes, o);
  Result<Bytes> again = GeneratePatch(p.old_bytes, p.new_bytes, o);
  ASSERT_TRUE(one.ok() && two.ok() && again.ok());
  EXPECT_TRUE(*one == *two);
  EXPECT_TRUE(*two == *again);
}

TEST(GenerateOptionsTest, StatsDescribeThePatch) {
  const Pair p = Insertions(100 << 10, 5, 42);
  GenerateOptions o = Fast();
  o.segment_size = 16 << 10;
  o.whole_file_limit = 0;
  GenerateStats stats;
  Result<Bytes> patch = GeneratePatch(p.old_bytes, p.new_bytes, o, &stats);
  ASSERT_TRUE(patch.ok());
  const uint64_t min_segments = (p.new_bytes.size() + o.segment_size - 1) / o.segment_size;
  EXPECT_GE(stats.segments, min_segments);
  EXPECT_GT(stats.copydiff_segments, 0u);
  EXPECT_GT(stats.copy_ops, 0u);
  EXPECT_GE(stats.total_seconds, 0.0);
  Result<PatchInfo> info = InspectPatch(*patch);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->header.segment_count, stats.segments);
  EXPECT_LE(info->header.max_segment_output, o.segment_size);
  EXPECT_EQ(info->header.new_sha256, Sha256::Of(p.new_bytes));
  EXPECT_EQ(info->header.old_sha256, Sha256::Of(p.old_bytes));
}

TEST(ZeroRunStreams, SparseDiffsUseThemAndRoundTrip) {
  // 1 MiB of "code" whose new version changes one byte in 64 (relocated addresses): the diff
  // stream is mostly zeros, coded in zero-run form, and the patch says DSPF 1.3.
  const Bytes old = RandomBytes(1 << 20, 9);
  Bytes neu = old;
  for (size_t i = 0; i < neu.size(); i += 64) neu[i] = static_cast<uint8_t>(neu[i] + 3);
  GenerateOptions opt;
  opt.try_zstd_ref = false;
  Result<Bytes> patch = GeneratePatch(old, neu, opt);
  ASSERT_TRUE(patch.ok());
  Result<PatchInfo> info = InspectPatch(*patch);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->header.minor, 3);
  EXPECT_TRUE(UsesZeroRunStreams(*info));
  EXPECT_LT(patch->size(), 16384u * 3);  // 16,384 changed bytes.
  Result<Bytes> out = ApplyPatch(old, *patch);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu);
}

}  // namespace
}  // namespace ds::delta
