// The recompression transforms (DSPF 1.2, 1.4) through the real generator and applier. deflate:
// gzip'd tars and zip files diffed on their puffs and rebuilt bit-exactly; archives made with zlib
// in the test and with the real gzip, node and zip tools. xz: .xz files and Debian packages (ar
// with .xz members) diffed on their content and rebuilt with the proven liblzma settings, or
// (xz-replay, the default) diffed on their replay forms and coded again from them; made with
// liblzma in the test and with the real xz and dpkg-deb. Hostile segments of every kind.
#include <gtest/gtest.h>
#include <lzma.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "delta/deflate_puff.h"
#include "delta/deflate_streams.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "delta/lzma_replay.h"
#include "delta/xz_rebuild.h"
#include "delta/xz_streams.h"
#include "support/archive_util.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using ds::testing::CodeOf;
using ds::testing::Gzip;
using ds::testing::JoinPatch;
using ds::testing::RandomBytes;
using ds::testing::RawPatch;
using ds::testing::SplitPatch;
using ds::testing::Tar;
using ds::testing::TempDir;
using ds::testing::TextBytes;

bool Sh(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }
bool HaveTool(const std::string& tool) { return Sh("command -v " + tool + " >/dev/null 2>&1"); }

// Source-like text: lines of identifiers from the file's own vocabulary and a few keywords, so
// that (as in real packages) most repeats are inside a file.
Bytes SourceLike(size_t n, uint64_t seed) {
  static constexpr const char* kKeywords[] = {"const", "function", "return", "if", "=", "{", "}"};
  const Bytes noise = RandomBytes(64 * 8, seed);
  std::vector<std::string> vocab;
  for (size_t w = 0; w < 64; ++w) {
    std::string id;
    for (size_t k = 0; k < 8; ++k) id.push_back(static_cast<char>('a' + noise[w * 8 + k] % 26));
    vocab.push_back(id);
  }
  const Bytes pick = RandomBytes(n, seed + 1);
  Bytes out;
  for (size_t i = 0; out.size() < n; ++i) {
    const std::string word =
        pick[i] % 4 == 0 ? std::string(kKeywords[pick[i] / 4 % 7]) : vocab[pick[i] % vocab.size()];
    out.insert(out.end(), word.begin(), word.end());
    out.push_back(pick[i] % 9 == 0 ? '\n' : ' ');
  }
  out.resize(n);
  return out;
}

// Two versions of a package: 40 text files; in the new one a few lines change in two files, one
// file is added, one removed, and two swap places in the archive.
struct Package {
  Bytes old_tar, new_tar;
};
Package MakePackage() {
  std::vector<std::pair<std::string, Bytes>> files;
  for (int i = 0; i < 40; ++i) {
    files.emplace_back("package/lib/file" + std::to_string(i) + ".js",
                       SourceLike(6000 + 1500 * (i % 7), 100 + i));
  }
  Package p;
  p.old_tar = Tar(files);
  files[3].second[100] ^= 0x20;
  const Bytes insert = ds::testing::ToBytes("// a new line of code in this version\n");
  files[17].second.insert(files[17].second.begin() + 2000, insert.begin(), insert.end());
  files.erase(files.begin() + 25);
  files.emplace_back("package/lib/added.js", SourceLike(3000, 999));
  std::swap(files[5], files[30]);
  p.new_tar = Tar(files);
  return p;
}

struct Outcome {
  Bytes patch;
  uint64_t plain_size = 0;  // The patch without the deflate transform.
  GenerateStats stats;
};

// Generates with and without the transform, checks both apply to |neu| (in one piece and in
// small pieces, as a stream), and returns them.
Outcome RoundTrip(const Bytes& old, const Bytes& neu, const GenerateOptions& options = {}) {
  Outcome o;
  Result<Bytes> patch = GeneratePatch(old, neu, options, &o.stats);
  EXPECT_TRUE(patch.ok()) << patch.status().ToString();
  if (!patch.ok()) return o;
  o.patch = std::move(patch).value();
  GenerateOptions plain;
  plain.try_recompress = false;
  Result<Bytes> p2 = GeneratePatch(old, neu, plain);
  EXPECT_TRUE(p2.ok());
  if (p2.ok()) o.plain_size = p2->size();
  Result<Bytes> out = ApplyPatch(old, o.patch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(out.ok() && *out == neu);
  Result<Bytes> chunked = ds::testing::ApplyInChunks(old, o.patch, {1, 7, 4096, 65536});
  EXPECT_TRUE(chunked.ok() && *chunked == neu);
  EXPECT_LE(o.patch.size(), o.plain_size) << "never larger than the plain patch";
  return o;
}

uint64_t DeflateSegments(ByteView patch) {
  Result<PatchInfo> info = InspectPatch(patch);
  EXPECT_TRUE(info.ok());
  if (!info.ok()) return 0;
  uint64_t n = 0;
  for (const SegmentInfo& s : info->segments) n += s.header.transform == Transform::kDeflate;
  return n;
}

TEST(DeflateTransform, TgzAtEveryZlibLevel) {
  const Package p = MakePackage();
  for (int level : {1, 6, 9}) {
    SCOPED_TRACE("zlib level " + std::to_string(level));
    const Bytes old = Gzip(p.old_tar, level), neu = Gzip(p.new_tar, level);
    const Outcome o = RoundTrip(old, neu);
    EXPECT_EQ(DeflateSegments(o.patch), 1u);
    EXPECT_EQ(o.stats.recompress_segments, 1u);
    EXPECT_GT(o.stats.recompress_saved_bytes, 0u);
    // The content changed by a few KB: the patch is a small fraction of the plain one.
    EXPECT_LT(o.patch.size() * 6, o.plain_size) << o.patch.size() << " vs " << o.plain_size;
    EXPECT_LT(o.patch.size(), 12000u);
    Result<PatchInfo> info = InspectPatch(o.patch);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->header.minor, UsesZeroRunStreams(*info) ? 3 : 2);
    EXPECT_TRUE(info->header.flags & kFlagRecompress);
    EXPECT_EQ(info->header.recompress_saved, o.stats.recompress_saved_bytes);
  }
}

TEST(DeflateTransform, DifferentLevelsOnEachSide) {
  // The old package compressed at 9, the new at 1: the puffs differ in every copy record, but
  // the literal content is shared, and the stream is still rebuilt exactly.
  const Package p = MakePackage();
  const Outcome o = RoundTrip(Gzip(p.old_tar, 9), Gzip(p.new_tar, 1));
  EXPECT_LE(o.patch.size(), o.plain_size);
}

TEST(DeflateTransform, MovedMembersDiffAgainstTheirOldSelves) {
  // Only the order of members changes: every member is found where it was in the old puff.
  std::vector<std::pair<std::string, Bytes>> files;
  for (int i = 0; i < 24; ++i) {
    files.emplace_back("m" + std::to_string(i), SourceLike(9000, 300 + i));
  }
  const Bytes old = Gzip(Tar(files), 6);
  std::reverse(files.begin(), files.end());
  const Bytes neu = Gzip(Tar(files), 6);
  const Outcome o = RoundTrip(old, neu);
  EXPECT_EQ(DeflateSegments(o.patch), 1u);
  // Each moved member costs its new neighbours' block headers and cross-member copies only.
  EXPECT_LT(o.patch.size() * 3, o.plain_size) << o.patch.size() << " vs " << o.plain_size;
}

TEST(DeflateTransform, GzipAndNodeTools) {
  const Package p = MakePackage();
  TempDir dir;
  ds::testing::WriteFileOrDie(dir.Join("old.tar"), p.old_tar);
  ds::testing::WriteFileOrDie(dir.Join("new.tar"), p.new_tar);
  int ran = 0;
  if (HaveTool("gzip")) {
    for (const char* level : {"-1", "-9"}) {
      SCOPED_TRACE(std::string("gzip ") + level);
      for (const char* v : {"old", "new"}) {
        ASSERT_TRUE(Sh(std::string("gzip -n -c ") + level + " " +
                       dir.Join(std::string(v) + ".tar") + " > " +
                       dir.Join(std::string(v) + ".tgz")));
      }
      const Outcome o = RoundTrip(ds::testing::ReadFileOrDie(dir.Join("old.tgz")),
                                  ds::testing::ReadFileOrDie(dir.Join("new.tgz")));
      EXPECT_EQ(DeflateSegments(o.patch), 1u);
      ++ran;
    }
  }
  if (HaveTool("node")) {
    for (const char* v : {"old", "new"}) {
      const std::string js = "const z=require('zlib'),f=require('fs');f.writeFileSync('" +
                             dir.Join(std::string(v) + ".ngz") + "',z.gzipSync(f.readFileSync('" +
                             dir.Join(std::string(v) + ".tar") + "'),{level:9}))";
      ASSERT_TRUE(Sh("node -e \"" + js + "\""));
    }
    const Outcome o = RoundTrip(ds::testing::ReadFileOrDie(dir.Join("old.ngz")),
                                ds::testing::ReadFileOrDie(dir.Join("new.ngz")));
    EXPECT_EQ(DeflateSegments(o.patch), 1u);
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "neither gzip nor node is installed";
}

TEST(DeflateTransform, MultiMemberGzipPairsByIndex) {
  const Bytes a = TextBytes(50000, 1), b = TextBytes(40000, 2);
  Bytes b2 = b;
  b2[20000] ^= 1;
  Bytes old = Gzip(a, 6), neu = Gzip(a, 6);
  const Bytes ob = Gzip(b, 6), nb = Gzip(b2, 6);
  old.insert(old.end(), ob.begin(), ob.end());
  neu.insert(neu.end(), nb.begin(), nb.end());
  const Outcome o = RoundTrip(old, neu);
  EXPECT_GE(DeflateSegments(o.patch), 1u);
}

TEST(DeflateTransform, ZipEntriesPairByName) {
  if (!HaveTool("zip")) GTEST_SKIP() << "no zip binary";
  TempDir dir;
  Package p;
  for (const char* v : {"old", "new"}) {
    const std::string root = dir.Join(v);
    ASSERT_TRUE(Sh("mkdir -p " + root + "/classes"));
    for (int i = 0; i < 12; ++i) {
      Bytes data = TextBytes(20000 + 1000 * i, 500 + i);
      if (std::string(v) == "new" && i % 5 == 0) data[1000 + i] ^= 0x11;
      ds::testing::WriteFileOrDie(root + "/classes/C" + std::to_string(i) + ".txt", data);
    }
    if (std::string(v) == "new") {
      ds::testing::WriteFileOrDie(root + "/classes/New.txt", TextBytes(8000, 77));
    }
    // -X: no extra attributes; the new archive lists its files in another order.
    const std::string order = std::string(v) == "old" ? "ls classes" : "ls -r classes";
    ASSERT_TRUE(Sh("cd " + root + " && " + order + " | sed 's|^|classes/|' | zip -q -X -9 -@ " +
                   dir.Join(std::string(v) + ".zip")));
  }
  const Bytes old = ds::testing::ReadFileOrDie(dir.Join("old.zip"));
  const Bytes neu = ds::testing::ReadFileOrDie(dir.Join("new.zip"));
  EXPECT_GE(FindDeflateStreams(neu).size(), 12u);
  const Outcome o = RoundTrip(old, neu);
  // The entries that changed (0, 5, 10); unchanged ones are cheaper as plain copies.
  EXPECT_GE(DeflateSegments(o.patch), 3u);
  EXPECT_LT(o.patch.size() * 5, o.plain_size) << o.patch.size() << " vs " << o.plain_size;
  // unzip agrees that the rebuilt archive is the new one (it is byte-identical already).
  Result<Bytes> out = ApplyPatch(old, o.patch);
  ASSERT_TRUE(out.ok());
  ds::testing::WriteFileOrDie(dir.Join("rebuilt.zip"), *out);
  if (HaveTool("unzip")) {
    EXPECT_TRUE(Sh("unzip -tq " + dir.Join("rebuilt.zip") + " >/dev/null"));
  }
}

TEST(DeflateTransform, NotDeflateOrUnrelatedIsPlain) {
  // Random content: nothing to gain in puff space, and the plain patch is kept.
  const Bytes old = Gzip(RandomBytes(200000, 5), 6), neu = Gzip(RandomBytes(200000, 6), 6);
  const Outcome o = RoundTrip(old, neu);
  EXPECT_EQ(DeflateSegments(o.patch), 0u);
  // A file that starts like gzip but is not: no streams, diffed as bytes.
  Bytes fake = Gzip(TextBytes(100000, 7), 6);
  Bytes fake2 = fake;
  fake[30] ^= 0xFF;
  fake2[31] ^= 0xFF;
  RoundTrip(fake, fake2);
  // A zip whose central directory points outside the file yields no streams.
  Bytes zip = {'P', 'K', 3, 4};
  zip.resize(64);
  const uint8_t eocd[22] = {'P', 'K', 5, 6, 0, 0,    0,    0, 1, 0, 1,
                            0,   46,  0, 0, 0, 0xF0, 0xFF, 0, 0, 0, 0};
  zip.insert(zip.end(), eocd, eocd + sizeof(eocd));
  EXPECT_TRUE(FindDeflateStreams(zip).empty());
}

// A recompression patch taken apart, for the hostile cases below: |seg_| is its segment with
// transform |kind|.
class RecompressHostileTest : public ::testing::Test {
 protected:
  void Build(Bytes old, Bytes neu, Transform kind, const GenerateOptions& options = {}) {
    old_ = std::move(old);
    neu_ = std::move(neu);
    Result<Bytes> patch = GeneratePatch(old_, neu_, options);
    ASSERT_TRUE(patch.ok());
    raw_ = SplitPatch(*patch);
    for (size_t i = 0; i < raw_.segments.size(); ++i) {
      if (raw_.segments[i].header.transform == kind) seg_ = i;
    }
    ASSERT_NE(seg_, SIZE_MAX);
  }
  ErrorCode Apply(const RawPatch& p, const ApplyLimits& limits = {}) {
    return CodeOf(ApplyPatch(old_, JoinPatch(p), limits));
  }
  SegmentHeader& seg(RawPatch& p) { return p.segments[seg_].header; }

  Bytes old_, neu_;
  RawPatch raw_;
  size_t seg_ = SIZE_MAX;
};

class DeflateHostileTest : public RecompressHostileTest {
 protected:
  void SetUp() override {
    const Package p = MakePackage();
    Build(Gzip(p.old_tar, 6), Gzip(p.new_tar, 6), Transform::kDeflate);
  }
};

TEST_F(DeflateHostileTest, IntactPatchApplies) { EXPECT_EQ(Apply(raw_), ErrorCode::kOk); }

TEST_F(DeflateHostileTest, SegmentWithoutTheFlagIsMalformed) {
  RawPatch p = raw_;
  p.header.flags &= ~kFlagRecompress;
  p.header.max_decoded = 0;
  p.header.recompress_saved = 0;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(InspectPatch(JoinPatch(p))), ErrorCode::kPatchMalformed);
}

TEST_F(DeflateHostileTest, DeflateFieldsWithoutTheFlagAreMalformed) {
  // The writer leaves the fields out without the flag, so this is the validator's own check.
  RawPatch p = raw_;
  p.header.flags &= ~kFlagRecompress;
  EXPECT_EQ(CodeOf(ValidateFileHeader(p.header)), ErrorCode::kPatchMalformed);
}

TEST_F(DeflateHostileTest, OldStreamElsewhereIsMalformed) {
  for (int64_t shift : {-1, 1, 4}) {
    RawPatch p = raw_;
    seg(p).old_offset += shift;
    EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed) << shift;
  }
  RawPatch p = raw_;
  seg(p).old_length -= 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_length = old_.size();  // Runs past the end of the old file.
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(InspectPatch(JoinPatch(p))), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_length = 0;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(DeflateHostileTest, PuffLengthsThatLieAreRefused) {
  RawPatch p = raw_;
  seg(p).old_decoded_length += 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).decoded_length += 1;  // The method's streams no longer add up.
  const ErrorCode c = Apply(p);
  EXPECT_TRUE(c == ErrorCode::kPatchMalformed || c == ErrorCode::kPatchDecompress)
      << static_cast<int>(c);
  p = raw_;
  seg(p).decoded_length = p.header.max_decoded + 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).decoded_length = 0;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(DeflateHostileTest, ApplierRefusesPuffsAboveItsLimit) {
  ApplyLimits limits;
  limits.max_decoded = raw_.header.max_decoded - 1;
  EXPECT_EQ(Apply(raw_, limits), ErrorCode::kResourceLimit);
}

TEST_F(DeflateHostileTest, AStoredPuffThatIsNotAPuffIsMalformed) {
  RawPatch p = raw_;
  SegmentHeader& h = seg(p);
  h.method = Method::kStored;
  p.segments[seg_].payload = RandomBytes(h.decoded_length, 9);
  p.header.max_segment_payload = std::max<uint64_t>(p.header.max_segment_payload, h.decoded_length);
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(DeflateHostileTest, AValidPuffOfOtherBytesFailsTheOutputCheck) {
  // A stored deflate segment whose puff is well formed but re-encodes to something else.
  RawPatch p = raw_;
  SegmentHeader& h = seg(p);
  const Bytes other = Gzip(TextBytes(300000, 42), 6);
  Result<std::vector<GzipMember>> m = ParseGzip(other, {}, true);
  ASSERT_TRUE(m.ok());
  Bytes puff = (*m)[0].puff;
  h.method = Method::kStored;
  h.decoded_length = puff.size();
  p.header.max_decoded = std::max(p.header.max_decoded, h.decoded_length);
  p.header.max_segment_payload = std::max<uint64_t>(p.header.max_segment_payload, puff.size());
  p.segments[seg_].payload = std::move(puff);
  EXPECT_EQ(Apply(p), ErrorCode::kPatchOutputMismatch);
}

TEST_F(DeflateHostileTest, WrongOldFileIsWrongBase) {
  Bytes other = old_;
  other[other.size() / 2] ^= 1;
  EXPECT_EQ(CodeOf(ApplyPatch(other, JoinPatch(raw_))), ErrorCode::kPatchWrongBase);
}

TEST_F(DeflateHostileTest, EveryTruncationFailsCleanly) {
  const Bytes patch = JoinPatch(raw_);
  for (size_t cut = 0; cut < patch.size(); cut += std::max<size_t>(1, patch.size() / 97)) {
    const ErrorCode c = CodeOf(ApplyPatch(old_, ByteView(patch).first(cut)));
    EXPECT_NE(c, ErrorCode::kOk) << cut;
    EXPECT_NE(c, ErrorCode::kInternal) << cut;
  }
}

// ---- xz -------------------------------------------------------------------------------------

// An .xz stream of |data| made by liblzma: the single-threaded encoder (threads 0) or the
// multi-threaded one, as xz -T and dpkg-deb use it.
Bytes Xz(ByteView data, uint32_t preset, uint32_t threads = 0,
         lzma_check check = LZMA_CHECK_CRC64) {
  lzma_stream s = LZMA_STREAM_INIT;
  if (threads == 0) {
    EXPECT_EQ(lzma_easy_encoder(&s, preset, check), LZMA_OK);
  } else {
    lzma_mt mt{};
    mt.threads = threads;
    mt.preset = preset;
    mt.check = check;
    EXPECT_EQ(lzma_stream_encoder_mt(&s, &mt), LZMA_OK);
  }
  Bytes out(lzma_stream_buffer_bound(data.size()));
  s.next_in = data.data();
  s.avail_in = data.size();
  s.next_out = out.data();
  s.avail_out = out.size();
  EXPECT_EQ(lzma_code(&s, LZMA_FINISH), LZMA_STREAM_END);
  out.resize(out.size() - s.avail_out);
  lzma_end(&s);
  return out;
}

// An ar archive (as in a .deb) of (name, data) members.
Bytes Ar(const std::vector<std::pair<std::string, Bytes>>& members) {
  Bytes out = ds::testing::ToBytes("!<arch>\n");
  for (const auto& [name, data] : members) {
    char h[61];
    std::snprintf(h, sizeof(h), "%-16s%-12u%-6u%-6u%-8o%-10zu`\n", name.c_str(), 1700000000u, 0u,
                  0u, 0100644u, data.size());
    out.insert(out.end(), h, h + 60);
    out.insert(out.end(), data.begin(), data.end());
    if (data.size() & 1) out.push_back('\n');
  }
  return out;
}

uint64_t XzSegments(ByteView patch, Transform kind = Transform::kXz) {
  Result<PatchInfo> info = InspectPatch(patch);
  EXPECT_TRUE(info.ok());
  if (!info.ok()) return 0;
  uint64_t n = 0;
  for (const SegmentInfo& s : info->segments) n += s.header.transform == kind;
  return n;
}

// The generator allowed to rebuild .xz streams with liblzma (transform xz), as the devices can
// afford xz -6's encoder; the default is replay forms only (transform xz-replay).
GenerateOptions Reencode() {
  GenerateOptions o;
  o.max_encoder_memory = 128ull << 20;
  return o;
}

TEST(XzTransform, WholeXzFilesAtSeveralSettings) {
  const Package p = MakePackage();
  struct Setting {
    uint32_t preset, threads;
    lzma_check check;
  };
  for (const bool reencode : {true, false}) {
    for (const Setting& st : {Setting{6, 0, LZMA_CHECK_CRC64}, Setting{6, 2, LZMA_CHECK_CRC64},
                              Setting{1, 0, LZMA_CHECK_CRC32},
                              Setting{6 | LZMA_PRESET_EXTREME, 2, LZMA_CHECK_SHA256}}) {
      SCOPED_TRACE("preset " + std::to_string(st.preset & 0xF) + " threads " +
                   std::to_string(st.threads) + (reencode ? " re-encoded" : " replayed"));
      const Bytes old = Xz(p.old_tar, st.preset, st.threads, st.check);
      const Bytes neu = Xz(p.new_tar, st.preset, st.threads, st.check);
      const Outcome o = RoundTrip(old, neu, reencode ? Reencode() : GenerateOptions{});
      EXPECT_EQ(XzSegments(o.patch, reencode ? Transform::kXz : Transform::kXzReplay), 1u);
      EXPECT_LT(o.patch.size() * (reencode ? 6 : 3), o.plain_size)
          << o.patch.size() << " vs " << o.plain_size;
      Result<PatchInfo> info = InspectPatch(o.patch);
      ASSERT_TRUE(info.ok());
      // A replay patch needs no encoder on the device.
      EXPECT_EQ(info->header.max_encoder_memory > 0, reencode);
      EXPECT_EQ(info->header.minor == 4, !reencode);
    }
  }
}

TEST(XzTransform, DebLikeArchivePairsMembersByName) {
  const Package p = MakePackage();
  const Bytes control_old = Tar({{"./control", ds::testing::ToBytes("Package: x\nVersion: 1\n")}});
  const Bytes control_new = Tar({{"./control", ds::testing::ToBytes("Package: x\nVersion: 2\n")}});
  const Bytes old = Ar({{"debian-binary", ds::testing::ToBytes("2.0\n")},
                        {"control.tar.xz", Xz(control_old, 6, 2)},
                        {"data.tar.xz", Xz(p.old_tar, 6, 2)}});
  // The new package also lists its members in another order.
  const Bytes neu = Ar({{"debian-binary", ds::testing::ToBytes("2.0\n")},
                        {"data.tar.xz", Xz(p.new_tar, 6, 2)},
                        {"control.tar.xz", Xz(control_new, 6, 2)}});
  for (const bool reencode : {true, false}) {
    const Outcome o = RoundTrip(old, neu, reencode ? Reencode() : GenerateOptions{});
    EXPECT_GE(XzSegments(o.patch, reencode ? Transform::kXz : Transform::kXzReplay), 1u);
    EXPECT_LT(o.patch.size() * (reencode ? 6 : 3), o.plain_size)
        << o.patch.size() << " vs " << o.plain_size;
  }
}

TEST(XzTransform, RealXzAndDpkgDeb) {
  const Package p = MakePackage();
  TempDir dir;
  int ran = 0;
  if (HaveTool("xz")) {
    ds::testing::WriteFileOrDie(dir.Join("old.tar"), p.old_tar);
    ds::testing::WriteFileOrDie(dir.Join("new.tar"), p.new_tar);
    for (const char* flags : {"-6", "-6 -T2", "-6e -T2", "-2"}) {
      SCOPED_TRACE(std::string("xz ") + flags);
      for (const char* v : {"old", "new"}) {
        ASSERT_TRUE(Sh(std::string("xz -c ") + flags + " " + dir.Join(std::string(v) + ".tar") +
                       " > " + dir.Join(std::string(v) + ".txz")));
      }
      for (const bool reencode : {true, false}) {
        const Outcome o = RoundTrip(ds::testing::ReadFileOrDie(dir.Join("old.txz")),
                                    ds::testing::ReadFileOrDie(dir.Join("new.txz")),
                                    reencode ? Reencode() : GenerateOptions{});
        EXPECT_EQ(XzSegments(o.patch, reencode ? Transform::kXz : Transform::kXzReplay), 1u);
      }
      ++ran;
    }
  }
  if (HaveTool("dpkg-deb")) {
    // Two real packages; dpkg-deb compresses control.tar and data.tar with liblzma.
    for (const char* v : {"1.0", "1.1"}) {
      const std::string root = dir.Join(std::string("pkg-") + v);
      ASSERT_TRUE(Sh("mkdir -p " + root + "/DEBIAN " + root + "/usr/lib/demo"));
      ds::testing::WriteFileOrDie(
          root + "/DEBIAN/control",
          ds::testing::ToBytes(std::string("Package: demo\nVersion: ") + v +
                               "\nArchitecture: all\nMaintainer: t <t@example.com>\n"
                               "Description: test\n"));
      ds::testing::WriteFileOrDie(root + "/usr/lib/demo/data.tar",
                                  std::string(v) == "1.0" ? p.old_tar : p.new_tar);
      ASSERT_TRUE(Sh("SOURCE_DATE_EPOCH=1700000000 dpkg-deb --root-owner-group -Zxz --build " +
                     root + " " + dir.Join(std::string("demo_") + v + ".deb") + " >/dev/null"));
    }
    for (const bool reencode : {true, false}) {
      const Outcome o = RoundTrip(ds::testing::ReadFileOrDie(dir.Join("demo_1.0.deb")),
                                  ds::testing::ReadFileOrDie(dir.Join("demo_1.1.deb")),
                                  reencode ? Reencode() : GenerateOptions{});
      EXPECT_GE(XzSegments(o.patch, reencode ? Transform::kXz : Transform::kXzReplay), 1u);
      EXPECT_LT(o.patch.size() * (reencode ? 4 : 2), o.plain_size)
          << o.patch.size() << " vs " << o.plain_size;
    }
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "neither xz nor dpkg-deb is installed";
}

TEST(XzTransform, StreamsNoPresetReproducesAreDiffedAsBytes) {
  const Package p = MakePackage();
  // A dictionary no preset has, and a BCJ filter before LZMA2.
  auto custom = [](ByteView data, bool bcj) {
    lzma_options_lzma opt{};
    EXPECT_FALSE(lzma_lzma_preset(&opt, 6));
    if (!bcj) opt.dict_size = 3u << 20;
    lzma_filter filters[3];
    int n = 0;
    if (bcj) filters[n++] = {LZMA_FILTER_X86, nullptr};
    filters[n++] = {LZMA_FILTER_LZMA2, &opt};
    filters[n] = {LZMA_VLI_UNKNOWN, nullptr};
    Bytes out(lzma_stream_buffer_bound(data.size()));
    size_t pos = 0;
    EXPECT_EQ(lzma_stream_buffer_encode(filters, LZMA_CHECK_CRC64, nullptr, data.data(),
                                        data.size(), out.data(), &pos, out.size()),
              LZMA_OK);
    out.resize(pos);
    return out;
  };
  for (bool bcj : {false, true}) {
    SCOPED_TRACE(bcj ? "x86 BCJ + LZMA2" : "LZMA2 with a 3 MiB dictionary");
    const Bytes neu = custom(p.new_tar, bcj);
    EXPECT_FALSE(FindXzParams(neu, p.new_tar).ok());
    const Outcome o = RoundTrip(custom(p.old_tar, bcj), neu, Reencode());
    EXPECT_EQ(XzSegments(o.patch), 0u);
    // Replay forms take any LZMA2 stream; streams with other filters stay bytes.
    EXPECT_EQ(XzSegments(o.patch, Transform::kXzReplay), bcj ? 0u : 1u);
  }
}

TEST(XzTransform, SettingsAboveTheMemoryBoundAreReplayed) {
  // xz -9 needs ~670 MiB to compress: provable, but above what the generator was told the
  // devices afford, so liblzma does not rebuild it; its replay form does.
  const Package p = MakePackage();
  const Bytes neu = Xz(p.new_tar, 9);
  Result<XzParams> params = FindXzParams(neu, p.new_tar);
  ASSERT_TRUE(params.ok());
  EXPECT_GT(XzEncoderMemory(*params, p.new_tar.size()), Reencode().max_encoder_memory);
  const Outcome o = RoundTrip(Xz(p.old_tar, 9), neu, Reencode());
  EXPECT_EQ(XzSegments(o.patch), 0u);
  EXPECT_EQ(XzSegments(o.patch, Transform::kXzReplay), 1u);
  Result<PatchInfo> info = InspectPatch(o.patch);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->header.max_encoder_memory, 0u);
}

TEST(XzTransform, EncoderRebuildsWithSmallBuffers) {
  // Settings proven with the default 24 MiB block size rebuild small content exactly while the
  // encoder's buffers are sized to the content.
  const Bytes content = TextBytes(300000, 3);
  const Bytes stream = Xz(content, 6, 2);
  Result<XzParams> p = FindXzParams(stream, content);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->block_size, 24u << 20);
  Result<Bytes> again = XzEncode(content, *p);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*again == stream);
  XzParams big = *p;
  EXPECT_LT(XzEncoderMemory(*p, content.size()), XzEncoderMemory(big, 24u << 20));
}

class XzHostileTest : public RecompressHostileTest {
 protected:
  void SetUp() override {
    const Package p = MakePackage();
    Build(Xz(p.old_tar, 6), Xz(p.new_tar, 6), Transform::kXz, Reencode());
  }
};

TEST_F(XzHostileTest, IntactPatchApplies) { EXPECT_EQ(Apply(raw_), ErrorCode::kOk); }

TEST_F(XzHostileTest, BadSettingsAreMalformed) {
  RawPatch p = raw_;
  seg(p).xz_preset = 10;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).xz_check = 7;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).xz_block_size = uint64_t{1} << 50;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(XzHostileTest, OtherSettingsFailTheOutputCheck) {
  RawPatch p = raw_;
  seg(p).xz_preset = 2;  // Valid, cheaper, but not what made the stream.
  EXPECT_EQ(Apply(p), ErrorCode::kPatchOutputMismatch);
  p = raw_;
  seg(p).xz_check = LZMA_CHECK_CRC32;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchOutputMismatch);
}

TEST_F(XzHostileTest, EncoderMemoryAboveTheHeaderOrTheLimit) {
  RawPatch p = raw_;
  seg(p).xz_preset = 9;  // Needs more than the header declares.
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  ApplyLimits limits;
  limits.max_encoder_memory = raw_.header.max_encoder_memory - 1;
  EXPECT_EQ(Apply(raw_, limits), ErrorCode::kResourceLimit);
}

TEST_F(XzHostileTest, OldStreamThatLiesIsMalformed) {
  RawPatch p = raw_;
  seg(p).old_offset += 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_length -= 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_decoded_length -= 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(XzHostileTest, DecoderRefusesCorruptStreams) {
  Bytes bad = neu_;
  bad[bad.size() / 2] ^= 0x40;
  EXPECT_FALSE(XzDecode(bad, 1 << 30).ok());
  EXPECT_EQ(CodeOf(XzDecode(neu_, 1000)), ErrorCode::kResourceLimit);
  EXPECT_FALSE(XzDecode(ByteView(neu_).first(neu_.size() - 1), 1 << 30).ok());
}

// ---- xz-replay -------------------------------------------------------------------------------

class XzReplayHostileTest : public RecompressHostileTest {
 protected:
  void SetUp() override {
    const Package p = MakePackage();
    Build(Xz(p.old_tar, 6), Xz(p.new_tar, 6), Transform::kXzReplay);
  }
  // Makes the replay segment a stored one whose payload is |form|.
  void StoreForm(RawPatch& p, Bytes form) {
    SegmentHeader& h = seg(p);
    h.method = Method::kStored;
    h.decoded_length = form.size();
    p.header.max_decoded = std::max(p.header.max_decoded, h.decoded_length);
    p.header.max_segment_payload = std::max<uint64_t>(p.header.max_segment_payload, form.size());
    p.segments[seg_].payload = std::move(form);
  }
};

TEST_F(XzReplayHostileTest, IntactPatchAppliesWithoutAnEncoder) {
  EXPECT_EQ(raw_.header.max_encoder_memory, 0u);
  ApplyLimits limits;
  limits.max_encoder_memory = 0;
  EXPECT_EQ(Apply(raw_, limits), ErrorCode::kOk);
}

TEST_F(XzReplayHostileTest, OldStreamThatLiesIsMalformed) {
  for (int64_t shift : {-1, 1, 4}) {
    RawPatch p = raw_;
    seg(p).old_offset += shift;
    EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed) << shift;
  }
  RawPatch p = raw_;
  seg(p).old_length -= 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_decoded_length -= 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
  p = raw_;
  seg(p).old_decoded_length = p.header.max_decoded + 1;
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(XzReplayHostileTest, TheRealFormStoredApplies) {
  // The new stream's own replay form, stored: the applier codes it back to the stream.
  Result<ReplayForm> f = XzToReplayForm(neu_, 1 << 30);
  ASSERT_TRUE(f.ok());
  RawPatch p = raw_;
  StoreForm(p, f->form);
  EXPECT_EQ(Apply(p), ErrorCode::kOk);
}

TEST_F(XzReplayHostileTest, AStoredFormThatIsNotAFormIsMalformed) {
  RawPatch p = raw_;
  StoreForm(p, RandomBytes(seg(p).decoded_length, 9));
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(XzReplayHostileTest, AValidFormOfOtherBytesFailsTheOutputCheck) {
  Result<ReplayForm> f = XzToReplayForm(Xz(TextBytes(300000, 42), 6), 1 << 30);
  ASSERT_TRUE(f.ok());
  RawPatch p = raw_;
  StoreForm(p, f->form);
  EXPECT_EQ(Apply(p), ErrorCode::kPatchOutputMismatch);
}

TEST_F(XzReplayHostileTest, ALyingFormFailsCleanly) {
  // Bytes of the real form changed anywhere (header, content, frame, parse): refused as malformed
  // or caught by the output check, never a wrong result, never a crash.
  Result<ReplayForm> f = XzToReplayForm(neu_, 1 << 30);
  ASSERT_TRUE(f.ok());
  const Bytes noise = RandomBytes(64, 77);
  for (size_t k = 0; k < 64; ++k) {
    Bytes form = f->form;
    const size_t at = k < 16 ? k : (form.size() / 64) * k + noise[k];
    form[at % form.size()] ^= static_cast<uint8_t>(noise[k] | 1);
    RawPatch p = raw_;
    StoreForm(p, std::move(form));
    // (Content bytes that only matches cover are not read when coding: the stream, checked
    // whole by the applier, is then right all the same.)
    const ErrorCode c = Apply(p);
    EXPECT_TRUE(c == ErrorCode::kOk || c == ErrorCode::kPatchMalformed ||
                c == ErrorCode::kPatchOutputMismatch)
        << at << ": " << static_cast<int>(c);
  }
}

TEST_F(XzReplayHostileTest, EveryTruncationFailsCleanly) {
  const Bytes patch = JoinPatch(raw_);
  for (size_t cut = 0; cut < patch.size(); cut += std::max<size_t>(1, patch.size() / 97)) {
    const ErrorCode c = CodeOf(ApplyPatch(old_, ByteView(patch).first(cut)));
    EXPECT_NE(c, ErrorCode::kOk) << cut;
    EXPECT_NE(c, ErrorCode::kInternal) << cut;
  }
}

// A tar with a gzip'd file (a .deb's changelog.gz, man pages) inside an .xz: the gzip member is
// diffed on its puff inside the replay form, so a small change in it costs a small patch.
TEST(XzReplayTransform, GzipFilesInsideTheTarAreDiffedOnTheirPuffs) {
  const Package p = MakePackage();
  Bytes log_old = SourceLike(200000, 5);
  Bytes log_new = log_old;
  const Bytes entry = ds::testing::ToBytes("  * New upstream release; a short changelog entry.\n");
  log_new.insert(log_new.begin(), entry.begin(), entry.end());
  const Bytes gz_new = Gzip(log_new, 9);
  auto tar = [&](const Bytes& base_tar, const Bytes& gz) {
    // The package's files and the gzip'd changelog, as one archive.
    Bytes t = Tar({{"usr/share/doc/demo/changelog.gz", gz}});
    t.resize(t.size() - 1024);  // Drop the end-of-archive blocks; the package's tar follows.
    t.insert(t.end(), base_tar.begin(), base_tar.end());
    return t;
  };
  const Bytes gz_old = Gzip(log_old, 9);
  const Bytes old = Xz(tar(p.old_tar, gz_old), 6);
  const Outcome same_log = RoundTrip(old, Xz(tar(p.new_tar, gz_old), 6));
  const Outcome o = RoundTrip(old, Xz(tar(p.new_tar, gz_new), 6));
  EXPECT_EQ(XzSegments(o.patch, Transform::kXzReplay), 1u);
  // The changelog's deflate bytes all differ after the new entry; its puff barely does: what the
  // new entry adds to the patch is a small part of the gzip'd file.
  ASSERT_GE(o.patch.size(), same_log.patch.size());
  EXPECT_LT((o.patch.size() - same_log.patch.size()) * 8, gz_new.size())
      << o.patch.size() << " - " << same_log.patch.size() << " vs " << gz_new.size();
}

// Counts the chunks of a raw LZMA2 stream that reset the dictionary, walking its chunk headers
// to the end marker, which must be its last byte (-1 when the walk does not end there).
int Lzma2DictionaryResets(ByteView s) {
  int resets = 0;
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = s[i];
    if (c == 0x00) return i + 1 == s.size() ? resets : -1;
    if (c == 0x01 || c == 0x02) {  // Uncompressed chunk (0x01 resets the dictionary).
      if (i + 3 > s.size()) return -1;
      resets += c == 0x01;
      i += 3 + ((size_t{s[i + 1]} << 8 | s[i + 2]) + 1);
    } else if (c >= 0x80) {  // LZMA chunk; 0xE0..0xFF reset the dictionary and carry props.
      if (i + 5 > s.size()) return -1;
      resets += c >= 0xE0;
      const size_t packed = (size_t{s[i + 3]} << 8 | s[i + 4]) + 1;
      i += 5 + (c >= 0xC0 ? 1 : 0) + packed;
    } else {
      return -1;
    }
  }
  return -1;
}

// The LZMA2 dictionary resets in the literal stream of |patch|'s xz-replay segment (which must
// hold over 1 MiB of LZMA2-coded literals).
int LiteralStreamResets(const Bytes& patch) {
  Result<PatchInfo> info = InspectPatch(patch);
  EXPECT_TRUE(info.ok());
  if (!info.ok()) return -1;
  const SegmentInfo* seg = nullptr;
  size_t index = 0;
  for (size_t k = 0; k < info->segments.size(); ++k) {
    if (info->segments[k].header.transform == Transform::kXzReplay) {
      seg = &info->segments[k];
      index = k;
    }
  }
  EXPECT_NE(seg, nullptr);
  if (seg == nullptr) return -1;
  EXPECT_GE(seg->stream_raw[2], 1u << 20);
  EXPECT_EQ(seg->stream_codec[2], StreamCodec::kLzma2);
  // The literal stream is the last bytes of the segment's payload.
  const uint64_t seg_end =
      index + 1 < info->segments.size() ? info->segments[index + 1].patch_offset : patch.size();
  const ByteView lit =
      ByteView(patch).subspan(seg_end - seg->stream_encoded[2], seg->stream_encoded[2]);
  return Lzma2DictionaryResets(lit);
}

TEST(XzReplayTransform, LargeStreamsAreCodedInHalves) {
  // A form over 4 MiB (its streams are coded at once) whose literal stream is over 1 MiB (1.5 MB
  // of new source). Without whole-file reference candidates in the plain patch beside the plan,
  // that stream's LZMA2 is two halves, the second starting with a dictionary reset, and applies
  // as one stream.
  const Bytes base = SourceLike(3u << 20, 21);
  Bytes grown = base;
  const Bytes added = SourceLike(1500000, 77);
  grown.insert(grown.begin() + (1u << 20), added.begin(), added.end());
  GenerateOptions no_ref;
  no_ref.try_zstd_ref = false;
  const Outcome halves = RoundTrip(Xz(base, 1), Xz(grown, 1), no_ref);
  ASSERT_EQ(XzSegments(halves.patch, Transform::kXzReplay), 1u);
  EXPECT_EQ(LiteralStreamResets(halves.patch), 2);
  EXPECT_EQ(halves.stats.ref_trials_given_up, 0u);
  // With them (the default: the new file is compressed, so the plain patch tries zstd with the
  // old file as its dictionary), that candidate waits for the plan's bound and runs beside the
  // streams' coding, which keeps the stream whole.
  const Outcome whole = RoundTrip(Xz(base, 1), Xz(grown, 1));
  ASSERT_EQ(XzSegments(whole.patch, Transform::kXzReplay), 1u);
  EXPECT_EQ(LiteralStreamResets(whole.patch), 1);
}

TEST(XzReplayTransform, PlainCandidatesGiveUpPastThePlansBound) {
  // An edit near the start of a compressed file: its compressed bytes differ from there on, so
  // the plain patch's whole-file candidates (LZMA2 and zstd with the old file as dictionary, the
  // file being under 1 MiB) cost about the whole file, far past the plan's bound: both are given
  // up, and the patch is still never larger than the plain one (RoundTrip checks).
  const Bytes base = SourceLike(1500000, 31);
  Bytes edited = base;
  edited[10000] ^= 0x20;
  const Bytes old_xz = Xz(base, 6), new_xz = Xz(edited, 6);
  ASSERT_LT(new_xz.size(), 1u << 20);
  const Outcome o = RoundTrip(old_xz, new_xz);
  ASSERT_EQ(XzSegments(o.patch, Transform::kXzReplay), 1u);
  EXPECT_EQ(o.stats.ref_trials_given_up, 2u);
  EXPECT_LT(o.patch.size() * 2, o.plain_size);
}

}  // namespace
}  // namespace ds::delta
