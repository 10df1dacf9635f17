// The executable transforms (DSPF 1.1 segment transforms, src/delta/branch_filter.h, elf.h):
// the filters are exact inverses piece by piece, the ELF reader survives hostile headers, and
// patches between two real builds of a C program (compiled here with g++) are smaller with the
// transform and rebuild the new binary exactly however the patch is split.
#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <ostream>
#include <random>
#include <string>

#include "common/byte_writer.h"
#include "delta/branch_filter.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "delta/elf.h"
#include "support/process_util.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;

// Random bytes with many branch opcodes in them.
Bytes CodeLikeBytes(size_t n, uint64_t seed) {
  Bytes b = testing::RandomBytes(n, seed);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 6 < n; i += 1 + rng() % 12) {
    switch (rng() % 4) {
      case 0:
        b[i] = 0xE8;
        break;
      case 1:
        b[i] = 0xE9;
        break;
      case 2:
        b[i] = 0x0F;
        b[i + 1] = 0x80 | (rng() & 15);
        break;
      default:
        b[i + 3] = 0x94;
        break;  // An AArch64 BL's top byte (little-endian word).
    }
  }
  return b;
}

TEST(BranchFilterTest, InverseUndoesForwardForBothMachines) {
  const Bytes data = CodeLikeBytes(300000, 1);
  const std::vector<CodeRegion> regions = {
      {100, 70000, 0x401000}, {70100, 3, 0x500000}, {80000, 200000, 0xffffffff00000003ull}};
  ASSERT_TRUE(ValidateCodeRegions(regions, data.size()).ok());
  for (Transform t : {Transform::kX86Branch, Transform::kArm64Branch}) {
    Bytes f = data;
    ApplyBranchFilter(t, regions, 0, f, true);
    EXPECT_NE(f, data) << TransformName(t);
    // Outside the regions nothing changes.
    EXPECT_TRUE(std::equal(f.begin(), f.begin() + 100, data.begin()));
    EXPECT_TRUE(std::equal(f.begin() + 280000, f.end(), data.begin() + 280000));
    ApplyBranchFilter(t, regions, 0, f, false);
    EXPECT_EQ(f, data) << TransformName(t);
  }
}

TEST(BranchFilterTest, WholeBlocksGiveTheWholeFileResult) {
  // The applier filters the old file block by block; the generator filters it whole.
  const Bytes data = CodeLikeBytes(5 * kFilterBlockSize + 1234, 2);
  const std::vector<CodeRegion> regions = {{17, 3 * kFilterBlockSize, 0x1000},
                                           {4 * kFilterBlockSize - 5, kFilterBlockSize, 77}};
  for (Transform t : {Transform::kX86Branch, Transform::kArm64Branch}) {
    Bytes whole = data;
    ApplyBranchFilter(t, regions, 0, whole, true);
    Bytes blocks = data;
    for (uint64_t at = 0; at < blocks.size(); at += kFilterBlockSize) {
      const size_t n = std::min<uint64_t>(kFilterBlockSize, blocks.size() - at);
      ApplyBranchFilter(t, regions, at, std::span<uint8_t>(blocks.data() + at, n), true);
    }
    EXPECT_EQ(whole, blocks);
  }
}

TEST(BranchFilterTest, PartOfABlockFromItsStartMatchesTheWholeBlock) {
  // The applier filters a short jump's bytes alone: the block's start up to the bytes it needs
  // plus kFilterLookahead, converting only from the jump's first byte. Those bytes must be what
  // the whole block's filtering gives, with and without an address map.
  // Also a block of calls whose operands are calls (all 0xE8): a scan started off an
  // instruction boundary never finds the same instructions again.
  for (const Bytes& data :
       {CodeLikeBytes(3 * kFilterBlockSize, 4), Bytes(3 * kFilterBlockSize, 0xE8)}) {
    const std::vector<CodeRegion> regions = {
        {10, kFilterBlockSize + 5000, 0x401000},
        {kFilterBlockSize + 6000, 2 * kFilterBlockSize - 9000, 0x600000}};
    const std::vector<CodeRegion> new_regions = {{10, 3 * kFilterBlockSize - 100, 0x401100}};
    const TargetMap map(regions, new_regions, {{0, 3 * kFilterBlockSize - 200, 64}});
    std::mt19937_64 rng(5);
    for (Transform t : {Transform::kX86Branch, Transform::kArm64Branch}) {
      for (const TargetMap* m : {static_cast<const TargetMap*>(nullptr), &map}) {
        Bytes whole = data;
        for (uint64_t at = 0; at < whole.size(); at += kFilterBlockSize) {
          ApplyBranchFilter(t, regions, at, std::span<uint8_t>(whole.data() + at, kFilterBlockSize),
                            true, m);
        }
        for (int k = 0; k < 3000; ++k) {
          const uint64_t pos = rng() % data.size();
          const uint64_t start = pos / kFilterBlockSize * kFilterBlockSize;
          const uint64_t len = std::min<uint64_t>(1 + rng() % 300, start + kFilterBlockSize - pos);
          const uint64_t end = std::min(start + kFilterBlockSize, pos + len + kFilterLookahead);
          // From the block's start, and from its last sync point kSyncSlack bytes before |pos|.
          const std::vector<uint32_t> sync =
              ScanSyncPoints(t, regions, start, ByteView(data).subspan(start, kFilterBlockSize));
          ASSERT_EQ(sync.size(), kFilterBlockSize / kSyncStep);
          uint64_t synced = start;
          if (pos >= start + kSyncSlack) synced += sync[(pos - kSyncSlack - start) / kSyncStep];
          ASSERT_LE(synced, pos);
          for (uint64_t from : {start, synced}) {
            Bytes part(data.begin() + static_cast<long>(from),
                       data.begin() + static_cast<long>(end));
            ApplyBranchFilter(t, regions, from, part, true, m, pos);
            ASSERT_TRUE(std::equal(part.begin() + static_cast<long>(pos - from),
                                   part.begin() + static_cast<long>(pos - from + len),
                                   whole.begin() + static_cast<long>(pos)))
                << TransformName(t) << " map " << (m != nullptr) << " at " << pos << " +" << len
                << " from " << from;
          }
        }
      }
    }
  }
}

TEST(BranchFilterTest, SegmentCutsAreInvertedPieceByPiece) {
  // A new file filtered per segment (any cut points) is restored by the inverse per segment.
  const Bytes data = CodeLikeBytes(200000, 3);
  const std::vector<CodeRegion> regions = {{0, data.size(), 0x400000}};
  for (uint64_t seg : {1u, 5u, 4095u, 70001u}) {
    Bytes f = data;
    for (uint64_t at = 0; at < f.size(); at += seg) {
      const size_t n = std::min<uint64_t>(seg, f.size() - at);
      ApplyBranchFilter(Transform::kX86Branch, regions, at, std::span<uint8_t>(f.data() + at, n),
                        true);
    }
    for (uint64_t at = 0; at < f.size(); at += seg) {
      const size_t n = std::min<uint64_t>(seg, f.size() - at);
      ApplyBranchFilter(Transform::kX86Branch, regions, at, std::span<uint8_t>(f.data() + at, n),
                        false);
    }
    EXPECT_EQ(f, data) << "segment size " << seg;
  }
}

TEST(BranchFilterTest, SameTargetGivesSameBytes) {
  // Two calls to one target from different places become identical after the filter.
  Bytes code(64, 0x90);
  auto put_call = [&](size_t at, uint32_t target) {
    code[at] = 0xE8;
    const uint32_t rel = target - static_cast<uint32_t>(0x1000 + at + 5);
    std::memcpy(code.data() + at + 1, &rel, 4);
  };
  put_call(3, 0x2345);
  put_call(40, 0x2345);
  ApplyBranchFilter(Transform::kX86Branch, {{0, code.size(), 0x1000}}, 0, code, true);
  EXPECT_TRUE(std::equal(code.begin() + 3, code.begin() + 8, code.begin() + 40));
}

// The old -> new address translation, by plain searches over the whole tables: what
// TargetMap::Translate must give, whatever index it keeps (patches made before the index must
// filter the old file the same way).
uint64_t ReferenceTranslate(const std::vector<CodeRegion>& old_regions,
                            const std::vector<CodeRegion>& new_regions,
                            const std::vector<AddressRun>& runs, uint64_t target, uint64_t site) {
  auto map = [&](uint64_t addr, uint64_t* out) {
    const CodeRegion* r = nullptr;
    for (const CodeRegion& c : old_regions) {
      if (c.vaddr <= addr && (r == nullptr || c.vaddr > r->vaddr)) r = &c;
    }
    if (r == nullptr || addr - r->vaddr >= r->length) return false;
    const uint64_t off = r->offset + (addr - r->vaddr);
    const AddressRun* run = nullptr;
    for (const AddressRun& a : runs) {
      if (a.old_offset <= off) run = &a;
    }
    if (run == nullptr || off - run->old_offset >= run->length) return false;
    const uint64_t new_off = off + static_cast<uint64_t>(run->delta);
    const CodeRegion* n = nullptr;
    for (const CodeRegion& c : new_regions) {
      if (c.offset <= new_off) n = &c;
    }
    if (n == nullptr || new_off - n->offset >= n->length) return false;
    *out = n->vaddr + (new_off - n->offset);
    return true;
  };
  uint64_t out;
  if (map(target, &out)) return out;
  if (map(site, &out)) return target + (out - site);
  return target;
}

TEST(BranchFilterTest, TargetMapMatchesPlainSearches) {
  std::mt19937_64 rng(77);
  for (int round = 0; round < 40; ++round) {
    // Old and new code regions, and runs of old offsets that moved, sorted and disjoint: dense
    // (many runs per 4 KiB) in some rounds, sparse and far apart (large files) in others.
    const uint64_t scale = round % 3 == 0 ? 1 : (round % 3 == 1 ? 64 : 4096);
    std::vector<CodeRegion> old_regions = {{0x1000, 0x40000 * scale, 0x401000, true},
                                           {0x1000 + 0x40000 * scale, 0x8000, 0x900000, true}};
    std::vector<CodeRegion> new_regions = {{0x1000, 0x41000 * scale, 0x401000, true},
                                           {0x2000 + 0x41000 * scale, 0x9000, 0x980000, true}};
    std::vector<AddressRun> runs;
    uint64_t pos = rng() % 64;
    const size_t count = 1 + rng() % 3000;
    for (size_t i = 0; i < count; ++i) {
      const uint64_t len = 1 + rng() % (64 * scale);
      runs.push_back({pos, len, static_cast<int64_t>(rng() % 8192) - 4096});
      pos += len + rng() % (128 * scale);
    }
    const TargetMap map(old_regions, new_regions, runs);
    for (int q = 0; q < 3000; ++q) {
      const uint64_t target = 0x400000 + rng() % (pos + 0x10000);
      const uint64_t site = 0x400000 + rng() % (pos + 0x10000);
      ASSERT_EQ(map.Translate(target, site),
                ReferenceTranslate(old_regions, new_regions, runs, target, site))
          << "round " << round << " target " << target << " site " << site;
    }
  }
}

TEST(BranchFilterTest, RejectsBadRegions) {
  EXPECT_EQ(CodeOf(ValidateCodeRegions({{0, 0, 0}}, 10)), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ValidateCodeRegions({{5, 6, 0}}, 10)), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ValidateCodeRegions({{0, 5, 0}, {4, 2, 0}}, 10)), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ValidateCodeRegions({{~0ull, 2, 0}}, 10)), ErrorCode::kPatchMalformed);
  std::vector<CodeRegion> many;
  for (uint64_t i = 0; i <= kMaxCodeRegions; ++i) many.push_back({i, 1, 0});
  EXPECT_EQ(CodeOf(ValidateCodeRegions(many, 1000)), ErrorCode::kPatchMalformed);
  EXPECT_TRUE(ValidateCodeRegions({{0, 5, 0}, {5, 5, 9}}, 10).ok());
}

// A C program with many small functions calling each other; |variant| 1 inserts a function in
// the middle and changes a constant, so most code after it moves. |freestanding|: no libc (for
// the cross-compiled AArch64 build, linked with -nostdlib).
std::string ProgramSource(int variant, int functions, bool freestanding = false) {
  std::string s = freestanding ? "" : "#include <stdio.h>\n#include <string.h>\n";
  s += "volatile int sink = 1;\nint table[64] = {1, 2, 3};\n";
  for (int i = 0; i < functions; ++i) {
    if (variant == 1 && i == functions / 3) {
      s += "__attribute__((noinline)) int inserted(int x) { int a = x; for (int k = 0; k < x; "
           "++k) { a = a * 31 + k; if (a & 64) sink = a; else ";
      s += freestanding ? "table[k & 63] = a;" : "printf(\"%d\\n\", a);";
      s += " } return a ^ 0x5a5a; }\n";
    }
    s += "__attribute__((noinline)) int f" + std::to_string(i) + "(int x) {\n";
    s += "  if (x <= 0) return " + std::to_string(i * 7 + (variant == 1 && i == functions / 2)) +
         ";\n";
    if (i > 0) {
      s += "  int y = f" + std::to_string(i - 1) + "(x - 1);\n";
      s += "  if (y & 1) y += f" + std::to_string(i / 2) + "(x - 2);\n";
      s += "  if (y & 2) sink = f" + std::to_string(i / 3) + "(x - 3);\n";
      s += "  if (y & 4) y ^= f" + std::to_string((i * 7) / 8) + "(x - 4);\n";
      s += "  table[" + std::to_string(i % 64) + "] += y;\n";
    } else {
      s += "  int y = x;\n";
    }
    if (variant == 1 && i == functions / 3 + 1) s += "  y += inserted(x);\n";
    s += "  return y * " + std::to_string(3 + i % 5) + " + " +
         (freestanding ? std::to_string(i % 13) : "(int)strlen(\"s" + std::to_string(i) + "\")") +
         ";\n}\n";
  }
  if (freestanding) {
    s += "void _start(void) { sink = f" + std::to_string(functions - 1) + "(sink); for (;;) {} }\n";
  } else {
    s += "int main(int argc, char** argv) { return f" + std::to_string(functions - 1) +
         "(argc) & 0x7f; }\n";
  }
  return s;
}

struct Builds {
  Bytes old_bin, new_bin;
  bool ok = false;
};

// Compiles both versions with |compiler| (as C) into |dir|.
Builds CompileTwoVersions(const testing::TempDir& dir, const std::string& flags,
                          const std::string& compiler = "g++ -x c", bool freestanding = false,
                          int functions = 500) {
  Builds b;
  for (int v = 0; v < 2; ++v) {
    const std::string src = dir.Join("prog" + std::to_string(v) + ".c");
    const std::string bin = dir.Join("prog" + std::to_string(v));
    testing::WriteFileOrDie(src, AsBytes(ProgramSource(v, functions, freestanding)));
    const std::string cmd =
        compiler + " " + flags + " -o " + bin + " " + src + " 2>" + dir.Join("cc.log");
    if (std::system(cmd.c_str()) != 0) return b;
    (v == 0 ? b.old_bin : b.new_bin) = testing::ReadFileOrDie(bin);
  }
  b.ok = true;
  return b;
}

GenerateOptions PlainCopyDiffOptions(bool transforms) {
  GenerateOptions o;
  o.try_zstd_ref = false;  // Compare the copy/diff encodings themselves.
  o.try_transforms = transforms;
  o.segment_size = 64 << 10;
  o.threads = 2;
  return o;
}

uint64_t TransformSegments(ByteView patch, Transform t) {
  Result<PatchInfo> info = InspectPatch(patch);
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  if (!info.ok()) return 0;
  uint64_t n = 0;
  for (const SegmentInfo& s : info->segments) n += s.header.transform == t;
  return n;
}

// Compiler flags, and whether the transform must win on that build. It does where code moved
// and references kept their targets (-O0/-O1/-Os PIE: calls and RIP-relative data); non-PIE
// builds address data with absolute immediates (not transformed) and -O2 clones and reorders
// functions when a constant changes, so there it need only never lose.
struct BuildCase {
  std::string flags;
  bool must_win;
};
void PrintTo(const BuildCase& c, std::ostream* os) { *os << c.flags; }
class CompiledElfTest : public ::testing::TestWithParam<BuildCase> {};

TEST_P(CompiledElfTest, TransformedPatchIsSmallerAndRoundTrips) {
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, GetParam().flags);
  ASSERT_TRUE(b.ok) << "g++ failed: "
                    << std::string(testing::ReadFileOrDie(dir.Join("cc.log")).begin(),
                                   testing::ReadFileOrDie(dir.Join("cc.log")).end());
  Result<ElfCode> code = ParseElfCode(b.new_bin);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(code->machine, kElfMachineX86_64);
  ASSERT_FALSE(code->regions.empty());
  EXPECT_TRUE(ValidateCodeRegions(code->regions, b.new_bin.size()).ok());

  GenerateStats plain_stats, tr_stats;
  Result<Bytes> plain =
      GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(false), &plain_stats);
  Result<Bytes> tr = GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(true), &tr_stats);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  ASSERT_TRUE(tr.ok()) << tr.status().ToString();
  std::printf("binary %zu -> %zu B: plain patch %zu B, transformed %zu B (%" PRIu64
              " segments, saved %" PRIu64 " B)\n",
              b.old_bin.size(), b.new_bin.size(), plain->size(), tr->size(),
              tr_stats.transform_segments, tr_stats.transform_saved_bytes);
  EXPECT_LE(tr->size(), plain->size());
  EXPECT_EQ(plain_stats.transform_segments, 0u);
  if (GetParam().must_win) {
    EXPECT_LT(tr->size(), plain->size());
    EXPECT_GT(tr_stats.transform_segments, 0u);
    EXPECT_GT(tr_stats.transform_saved_bytes, 0u);
    EXPECT_GT(TransformSegments(*tr, Transform::kX86Branch), 0u);
  }
  Result<PatchInfo> info = InspectPatch(*tr);
  ASSERT_TRUE(info.ok());
  if (tr_stats.transform_segments > 0) {
    EXPECT_EQ(info->header.flags, kFlagCodeRegions);
    EXPECT_EQ(info->header.minor, UsesZeroRunStreams(*info) ? 3 : 1);
    EXPECT_EQ(info->header.new_regions, code->regions);
    EXPECT_EQ(info->header.transform_saved, tr_stats.transform_saved_bytes);
  } else {
    EXPECT_EQ(info->header.flags, 0u);
  }
  // Without transforms a patch stays readable by 1.0 readers: no flags.
  Result<PatchInfo> plain_info = InspectPatch(*plain);
  ASSERT_TRUE(plain_info.ok());
  EXPECT_EQ(plain_info->header.flags, 0u);

  Result<Bytes> out = ApplyPatch(b.old_bin, *tr);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == b.new_bin);
  // Split-input invariance.
  for (const std::vector<size_t>& chunks :
       std::vector<std::vector<size_t>>{{1}, {7, 3, 1000}, {4096}, {65537}}) {
    Result<Bytes> split = testing::ApplyInChunks(b.old_bin, *tr, chunks);
    ASSERT_TRUE(split.ok()) << split.status().ToString();
    EXPECT_TRUE(*split == b.new_bin);
  }
  // Given whole, later transformed segments are rebuilt ahead on other threads, sharing the
  // filtered old blocks; without the look-ahead the main path rebuilds each. Same bytes.
  for (uint64_t lookahead : {ApplyLimits{}.lookahead_memory, uint64_t{0}}) {
    MemoryOldSource src(b.old_bin);
    VectorSink sink;
    ApplyLimits limits;
    limits.lookahead_memory = lookahead;
    PatchApplier applier(&src, &sink, limits);
    Status s = applier.Write(*tr);
    if (s.ok()) s = applier.Finish();
    ASSERT_TRUE(s.ok()) << s.ToString() << " lookahead " << lookahead;
    EXPECT_TRUE(sink.bytes == b.new_bin) << "lookahead " << lookahead;
  }
  // Default options (every candidate): never larger than without the transform, and exact.
  GenerateOptions d;
  d.threads = 2;
  Result<Bytes> full = GeneratePatch(b.old_bin, b.new_bin, d);
  d.try_transforms = false;
  Result<Bytes> full_plain = GeneratePatch(b.old_bin, b.new_bin, d);
  ASSERT_TRUE(full.ok() && full_plain.ok());
  EXPECT_LE(full->size(), full_plain->size());
  Result<Bytes> full_out = ApplyPatch(b.old_bin, *full);
  ASSERT_TRUE(full_out.ok()) << full_out.status().ToString();
  EXPECT_TRUE(*full_out == b.new_bin);
}

INSTANTIATE_TEST_SUITE_P(Flags, CompiledElfTest,
                         ::testing::Values(BuildCase{"-O0", true}, BuildCase{"-O1", true},
                                           BuildCase{"-Os", true},
                                           BuildCase{"-O0 -no-pie -fno-pie", false},
                                           BuildCase{"-O2 -fno-inline", false}));

TEST(CompiledElfTest, FileApplyStreamsWithTransform) {
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, "-Os");
  ASSERT_TRUE(b.ok);
  Result<Bytes> tr = GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(true));
  ASSERT_TRUE(tr.ok());
  ASSERT_GT(TransformSegments(*tr, Transform::kX86Branch), 0u);
  testing::WriteFileOrDie(dir.Join("old"), b.old_bin);
  testing::WriteFileOrDie(dir.Join("patch"), *tr);
  ASSERT_TRUE(ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("new")).ok());
  EXPECT_TRUE(testing::ReadFileOrDie(dir.Join("new")) == b.new_bin);
  // A damaged transformed segment is caught by its checksum, nothing is written.
  Bytes bad = *tr;
  bad[bad.size() - 3] ^= 0x40;
  testing::WriteFileOrDie(dir.Join("bad"), bad);
  EXPECT_FALSE(ApplyPatchFile(dir.Join("old"), dir.Join("bad"), dir.Join("new2")).ok());
}

TEST(CompiledElfTest, LargeTransformedSegmentsApply) {
  // Segments of more than 512 KiB of code: the applier undoes the filter on two threads, split
  // at a filter block boundary. The result must be the new binary, byte for byte.
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, "-O0", "g++ -x c", false, 6000);
  ASSERT_TRUE(b.ok);
  GenerateOptions opt;
  opt.try_zstd_ref = false;
  Result<Bytes> tr = GeneratePatch(b.old_bin, b.new_bin, opt);
  ASSERT_TRUE(tr.ok());
  Result<PatchInfo> info = InspectPatch(*tr);
  ASSERT_TRUE(info.ok());
  uint64_t large = 0;
  for (const SegmentInfo& seg : info->segments) {
    large += seg.header.transform == Transform::kX86Branch && seg.header.new_length > (1u << 19);
  }
  ASSERT_GT(large, 0u) << "no transformed segment above 512 KiB; binary " << b.new_bin.size();
  testing::WriteFileOrDie(dir.Join("old"), b.old_bin);
  testing::WriteFileOrDie(dir.Join("patch"), *tr);
  ASSERT_TRUE(ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("new")).ok());
  EXPECT_TRUE(testing::ReadFileOrDie(dir.Join("new")) == b.new_bin);
}

// The transformed patch of |b| (segments of transform |t|) is smaller than the plain one and
// applies exactly, however its bytes arrive.
void ExpectTransformWins(const Builds& b, Transform t, const std::string& label) {
  GenerateStats plain_stats, tr_stats;
  Result<Bytes> plain =
      GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(false), &plain_stats);
  Result<Bytes> tr = GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(true), &tr_stats);
  ASSERT_TRUE(plain.ok() && tr.ok());
  std::printf("%s %zu -> %zu B: plain patch %zu B, transformed %zu B (%" PRIu64 " segments)\n",
              label.c_str(), b.old_bin.size(), b.new_bin.size(), plain->size(), tr->size(),
              tr_stats.transform_segments);
  EXPECT_LT(tr->size(), plain->size());
  EXPECT_GT(TransformSegments(*tr, t), 0u);
  for (const std::vector<size_t>& chunks :
       std::vector<std::vector<size_t>>{{1}, {333}, {1 << 20}}) {
    Result<Bytes> out = testing::ApplyInChunks(b.old_bin, *tr, chunks);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_TRUE(*out == b.new_bin);
  }
}

// AArch64, cross-compiled with clang and lld when they are installed (skipped otherwise).
TEST(CompiledElfTest, Arm64TransformRoundTrips) {
  if (std::system("command -v clang >/dev/null 2>&1 && command -v ld.lld >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "clang or ld.lld not installed";
  }
  testing::TempDir dir;
  const Builds b =
      CompileTwoVersions(dir, "-O2 -fno-inline -nostdlib -static -fuse-ld=lld",
                         "clang --target=aarch64-linux-gnu -x c", /*freestanding=*/true);
  if (!b.ok) GTEST_SKIP() << "clang cannot build for aarch64 here";
  Result<ElfCode> code = ParseElfCode(b.new_bin);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(code->machine, kElfMachineAarch64);
  EXPECT_EQ(TransformForMachine(code->machine), Transform::kArm64Branch);
  ExpectTransformWins(b, Transform::kArm64Branch, "aarch64 ELF");
}

// --- Hostile ELF input -------------------------------------------------------------------

void Put16(Bytes* b, size_t at, uint16_t v) { std::memcpy(b->data() + at, &v, 2); }
void Put64(Bytes* b, size_t at, uint64_t v) { std::memcpy(b->data() + at, &v, 8); }

// The readers' promises on |file| (ELF or PE): regions a patch header accepts, or a clean error.
void ExpectReadable(const Bytes& file) {
  Result<ElfCode> code = ParseExecutableCode(file);
  if (code.ok()) {
    EXPECT_TRUE(ValidateCodeRegions(code->regions, file.size()).ok());
  } else {
    EXPECT_TRUE(CodeOf(code) == ErrorCode::kUnsupported ||
                CodeOf(code) == ErrorCode::kInvalidArgument);
  }
}

// ExpectReadable, and patches to and from |file| still round-trip.
void ExpectSafe(const Bytes& file, const Bytes& other) {
  ExpectReadable(file);
  GenerateOptions o = PlainCopyDiffOptions(true);
  for (int dir = 0; dir < 2; ++dir) {
    const Bytes& a = dir ? file : other;
    const Bytes& b = dir ? other : file;
    Result<Bytes> p = GeneratePatch(a, b, o);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    Result<Bytes> out = ApplyPatch(a, *p);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_TRUE(*out == b);
  }
}

TEST(HostileElfTest, MalformedHeadersAreSafe) {
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, "-O2");
  ASSERT_TRUE(b.ok);
  const Bytes& good = b.new_bin;
  uint64_t shoff;
  uint16_t shnum;
  std::memcpy(&shoff, good.data() + 0x28, 8);
  std::memcpy(&shnum, good.data() + 0x3C, 2);
  ASSERT_GT(shnum, 2);
  std::vector<Bytes> bad;
  bad.push_back(Bytes(good.begin(), good.begin() + 40));  // Truncated header.
  bad.push_back(Bytes(good.begin(), good.begin() + 64));  // Header only.
  {
    Bytes x = good;
    Put64(&x, 0x28, ~0ull - 10);
    bad.push_back(x);
  }  // shoff overflows.
  {
    Bytes x = good;
    Put64(&x, 0x28, good.size() - 10);
    bad.push_back(x);
  }  // shoff near end.
  {
    Bytes x = good;
    Put16(&x, 0x3A, 8);
    bad.push_back(x);
  }  // shentsize too small.
  {
    Bytes x = good;
    Put16(&x, 0x3C, 0xFFFF);
    bad.push_back(x);
  }  // shnum past the file.
  {
    Bytes x = good;
    Put16(&x, 0x3C, 0);
    bad.push_back(x);
  }  // Extended count from section 0.
  {
    Bytes x = good;
    Put64(&x, 0x20, ~0ull);
    Put64(&x, 0x28, 0);
    bad.push_back(x);
  }  // phoff.
  {
    // Every section executable, at bogus or overlapping offsets and absurd sizes.
    Bytes x = good;
    for (uint16_t i = 0; i < shnum; ++i) {
      const size_t sh = shoff + 64ull * i;
      Put64(&x, sh + 8, 0x6);                           // flags: ALLOC | EXECINSTR
      std::memcpy(x.data() + sh + 4, "\x01\0\0\0", 4);  // PROGBITS
      Put64(&x, sh + 24, i % 3 == 0 ? ~0ull - i : 100 + i * 3);
      Put64(&x, sh + 32, i % 2 ? ~0ull / 2 : 5000 + i);
    }
    bad.push_back(x);
  }
  {
    Bytes x = good;
    x[4] = 1;  // ELF32: not supported, plain bytes.
    bad.push_back(x);
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    ExpectSafe(bad[i], b.old_bin);
  }
}

TEST(HostileElfTest, RandomMutationsNeverEscapeTheFile) {
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, "-O1");
  ASSERT_TRUE(b.ok);
  std::mt19937_64 rng(5);
  const Bytes head(b.new_bin.begin(), b.new_bin.begin() + 64);
  uint64_t shoff;
  std::memcpy(&shoff, b.new_bin.data() + 0x28, 8);
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes x = b.new_bin;
    const int flips = 1 + rng() % 8;
    for (int k = 0; k < flips; ++k) {
      // Mostly in the ELF header and the section table.
      const size_t at = rng() % 2 ? rng() % 64 : shoff + rng() % (x.size() - shoff);
      x[at] = static_cast<uint8_t>(rng());
    }
    if (rng() % 4 == 0) x.resize(rng() % x.size());
    Result<ElfCode> code = ParseElfCode(x);
    if (code.ok()) ASSERT_TRUE(ValidateCodeRegions(code->regions, x.size()).ok());
  }
}

// --- PE images (Windows .exe / .dll) ------------------------------------------------------

void Put32(Bytes* b, size_t at, uint32_t v) { std::memcpy(b->data() + at, &v, 4); }

// A PE32+ image laid out by hand: DOS header, "PE\0\0" at 0x80, COFF header, a 240-byte optional
// header with ImageBase 0x140000000, and three sections: .text (code, raw 0x400 + 0x600, virtual
// size 0x5F0 at RVA 0x1000), .data (0xA00 + 0x200 at RVA 0x2000) and .bss (no raw data).
Bytes HandMadePe(uint16_t machine) {
  Bytes b(0xC00, 0);
  b[0] = 'M';
  b[1] = 'Z';
  Put32(&b, 0x3C, 0x80);
  Put32(&b, 0x80, 0x00004550);
  Put16(&b, 0x84, machine);
  Put16(&b, 0x86, 3);                    // Sections.
  Put16(&b, 0x94, 240);                  // SizeOfOptionalHeader.
  Put16(&b, 0x98, 0x020B);               // PE32+.
  Put64(&b, 0x98 + 24, 0x140000000ull);  // ImageBase.
  const size_t sec = 0x98 + 240;
  auto section = [&](size_t i, const char* name, uint32_t vsize, uint32_t rva, uint32_t raw,
                     uint32_t ptr, uint32_t flags) {
    const size_t at = sec + 40 * i;
    std::memcpy(b.data() + at, name, std::strlen(name));
    Put32(&b, at + 8, vsize);
    Put32(&b, at + 12, rva);
    Put32(&b, at + 16, raw);
    Put32(&b, at + 20, ptr);
    Put32(&b, at + 36, flags);
  };
  section(0, ".text", 0x5F0, 0x1000, 0x600, 0x400, 0x60000020);
  section(1, ".data", 0x180, 0x2000, 0x200, 0xA00, 0xC0000040);
  section(2, ".bss", 0x1000, 0x3000, 0, 0, 0xC0000080);
  return b;
}

TEST(PeReaderTest, FindsTheSectionsOfAnImage) {
  const Bytes pe = HandMadePe(0x8664);
  Result<ElfCode> code = ParsePeCode(pe);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(code->machine, kElfMachineX86_64);
  ASSERT_EQ(code->regions.size(), 2u);
  EXPECT_EQ(code->regions[0], (CodeRegion{0x400, 0x5F0, 0x140001000ull, true}));
  EXPECT_EQ(code->regions[1], (CodeRegion{0xA00, 0x180, 0x140002000ull, false}));
  EXPECT_TRUE(ValidateCodeRegions(code->regions, pe.size()).ok());
  // ParseExecutableCode tells the formats apart; other machines are read but get no transform.
  Result<ElfCode> any = ParseExecutableCode(pe);
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->regions, code->regions);
  EXPECT_EQ(ParsePeCode(HandMadePe(0xAA64))->machine, kElfMachineAarch64);
  EXPECT_EQ(ParsePeCode(HandMadePe(0x014C))->machine, kElfMachineI386);
  EXPECT_EQ(TransformForMachine(ParsePeCode(HandMadePe(0x01C4))->machine), Transform::kNone);
  // PE32: a 32-bit ImageBase at offset 28 of the optional header.
  Bytes pe32 = HandMadePe(0x014C);
  Put16(&pe32, 0x98, 0x010B);
  Put64(&pe32, 0x98 + 24, 0);
  Put32(&pe32, 0x98 + 28, 0x00400000);
  Result<ElfCode> c32 = ParsePeCode(pe32);
  ASSERT_TRUE(c32.ok());
  EXPECT_EQ(c32->regions[0].vaddr, 0x401000u);
  EXPECT_EQ(CodeOf(ParseExecutableCode(testing::RandomBytes(100, 3))), ErrorCode::kUnsupported);
}

TEST(PeReaderTest, MalformedHeadersAreSafe) {
  const Bytes good = HandMadePe(0x8664);
  struct Case {
    const char* what;
    Bytes file;
    ErrorCode code;  // kOk: parses (to regions a header accepts).
  };
  std::vector<Case> cases;
  auto truncated = [&](const char* what, size_t n, ErrorCode code) {
    cases.push_back({what, Bytes(good.begin(), good.begin() + n), code});
  };
  // |good| with a 16- or 32-bit field at |at| set to |v|.
  auto edited = [&](const char* what, size_t at, uint32_t v, int bits, ErrorCode code) {
    Bytes x = good;
    if (bits == 16) Put16(&x, at, static_cast<uint16_t>(v));
    if (bits == 32) Put32(&x, at, v);
    cases.push_back({what, std::move(x), code});
  };
  truncated("MZ only", 2, ErrorCode::kInvalidArgument);
  truncated("no PE header", 0x60, ErrorCode::kUnsupported);
  truncated("optional header truncated", 0xA0, ErrorCode::kInvalidArgument);
  edited("PE offset past the end", 0x3C, 0xFFFFFFF0u, 32, ErrorCode::kUnsupported);
  edited("bad signature", 0x80, 0x00584550, 32, ErrorCode::kUnsupported);
  edited("optional header too short", 0x94, 8, 16, ErrorCode::kInvalidArgument);
  edited("unknown optional magic", 0x98, 0x1234, 16, ErrorCode::kUnsupported);
  edited("section count past the file", 0x86, 0xFFFF, 16, ErrorCode::kOk);
  edited("section table past the file", 0x94, 0xFFF0, 16, ErrorCode::kOk);
  edited("section data past the file", 0x98 + 240 + 20, 0xFFFFFF00u, 32, ErrorCode::kOk);
  edited("overlapping sections", 0x98 + 240 + 40 + 20, 0x500, 32,
         ErrorCode::kOk);  // .data in .text.
  for (const Case& c : cases) {
    Result<ElfCode> code = ParseExecutableCode(c.file);
    EXPECT_EQ(CodeOf(code), c.code) << c.what;
    if (code.ok()) EXPECT_TRUE(ValidateCodeRegions(code->regions, c.file.size()).ok()) << c.what;
    ExpectSafe(c.file, good);
  }
  // Random damage to the headers and the section table.
  std::mt19937_64 rng(9);
  for (int iter = 0; iter < 5000; ++iter) {
    Bytes x = good;
    const int flips = 1 + rng() % 6;
    for (int k = 0; k < flips; ++k) x[rng() % (0x98 + 240 + 120)] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) x.resize(rng() % x.size());
    ExpectReadable(x);
  }
}

// Two versions of the test program as Windows executables (PE32+), built freestanding with clang
// and lld-link when they are installed (skipped otherwise).
class CompiledPeTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CompiledPeTest, TransformedPatchIsSmallerAndRoundTrips) {
  if (std::system("command -v clang >/dev/null 2>&1 && command -v lld-link >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "clang or lld-link not installed";
  }
  const std::string target = GetParam();
  testing::TempDir dir;
  const Builds b =
      CompileTwoVersions(dir,
                         "-O1 -fno-inline -nostdlib -ffreestanding -fuse-ld=lld -Wl,/entry:_start "
                         "-Wl,/subsystem:console",
                         "clang --target=" + target + " -x c", /*freestanding=*/true);
  if (!b.ok) GTEST_SKIP() << "clang cannot build for " << target << " here";
  Result<ElfCode> code = ParseExecutableCode(b.new_bin);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  const bool arm = target.rfind("aarch64", 0) == 0;
  EXPECT_EQ(code->machine, arm ? kElfMachineAarch64 : kElfMachineX86_64);
  EXPECT_TRUE(code->has_code());
  ExpectTransformWins(b, arm ? Transform::kArm64Branch : Transform::kX86Branch, target + " PE");
}

INSTANTIATE_TEST_SUITE_P(Targets, CompiledPeTest,
                         ::testing::Values("x86_64-pc-windows-msvc", "aarch64-pc-windows-msvc"));

// --- Crafted transformed patches ---------------------------------------------------------

TEST(TransformPatchTest, HostileRegionTablesAreMalformed) {
  testing::TempDir dir;
  const Builds b = CompileTwoVersions(dir, "-Os");
  ASSERT_TRUE(b.ok);
  Result<Bytes> tr = GeneratePatch(b.old_bin, b.new_bin, PlainCopyDiffOptions(true));
  ASSERT_TRUE(tr.ok());
  testing::RawPatch raw = testing::SplitPatch(*tr);
  ASSERT_FALSE(raw.header.new_regions.empty());
  {
    testing::RawPatch p = raw;
    p.header.new_regions.back().length = b.new_bin.size();  // Past the end.
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
    EXPECT_EQ(CodeOf(InspectPatch(testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
  }
  {
    testing::RawPatch p = raw;
    p.header.old_regions.push_back(p.header.old_regions.front());  // Unsorted, overlapping.
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
  }
  ASSERT_FALSE(raw.header.address_map.empty());
  {
    testing::RawPatch p = raw;
    p.header.address_map.push_back({b.old_bin.size() - 1, 5, 0});  // Past the old file.
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
  }
  {
    testing::RawPatch p = raw;
    p.header.address_map.back().delta = static_cast<int64_t>(b.new_bin.size());  // Image outside.
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
  }
  {
    // Tables that fail their checksum.
    Bytes bad = *tr;
    Result<PatchInfo> info = InspectPatch(bad);
    ASSERT_TRUE(info.ok());
    bad[info->header_size - 2] ^= 1;
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, bad)), ErrorCode::kPatchChecksum);
  }
  {
    testing::RawPatch p = raw;
    p.header.flags = 4;  // Unknown flag.
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
  }
  {
    testing::RawPatch p = raw;
    for (auto& s : p.segments) {
      if (s.header.transform != Transform::kNone)
        s.header.transform = static_cast<Transform>(kMaxTransform + 1);
    }
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))), ErrorCode::kPatchUnknownMethod);
  }
  {
    // Wrong regions that still validate: the rebuilt bytes fail their checksum.
    testing::RawPatch p = raw;
    for (CodeRegion& r : p.header.new_regions) r.vaddr += 16;
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))),
              ErrorCode::kPatchOutputMismatch);
  }
  {
    // A transformed segment read as untransformed fails too.
    testing::RawPatch p = raw;
    for (auto& s : p.segments) s.header.transform = Transform::kNone;
    EXPECT_EQ(CodeOf(ApplyPatch(b.old_bin, testing::JoinPatch(p))),
              ErrorCode::kPatchOutputMismatch);
  }
}

}  // namespace
}  // namespace ds::delta
