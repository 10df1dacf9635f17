// Tests the VCDIFF (RFC 3284) decoder: interop with the real xdelta3, hand-made patches that reach
// every feature (VCD_TARGET, RUN, overlapping COPY, all address modes, an application-defined
// code table, Adler-32, size-0 instructions), malformed input, truncation and byte flips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "delta/delta.h"
#include "delta/vcdiff.h"
#include "delta/vcdiff_format.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;
using testing::RandomBytes;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::TextBytes;
using testing::WriteFileOrDie;

constexpr const char* kXdelta3 = "/usr/bin/xdelta3";

// ---------------------------------------------------------------------------------------------
// Running xdelta3.

// Encodes |neu| against |old| (no source when |old| is null) with `xdelta3 -e -f FLAGS`.
Bytes Xdelta3Encode(const Bytes* old, const Bytes& neu, const std::string& flags) {
  // Deliberately a failure, not a skip: the interop tests are the point of this suite.
  EXPECT_TRUE(std::filesystem::exists(kXdelta3))
      << kXdelta3 << " is missing; run scripts/install-deps.sh (Debian package xdelta3)";
  TempDir dir;
  const std::string new_path = dir.Join("new"), out_path = dir.Join("out");
  WriteFileOrDie(new_path, neu);
  std::string cmd = std::string(kXdelta3) + " -e -f " + flags;
  if (old != nullptr) {
    WriteFileOrDie(dir.Join("old"), *old);
    cmd += " -s '" + dir.Join("old") + "'";
  }
  cmd += " '" + new_path + "' '" + out_path + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  if (rc != 0) return {};
  return ReadFileOrDie(out_path);
}

// ---------------------------------------------------------------------------------------------
// Decoding every way: in memory, through ApplyPatch's dispatch, pushed in odd pieces, from files.

// Pushes |patch| into a VcdiffApplier in pieces whose sizes cycle through |chunks|.
Result<Bytes> ApplyVcdiffInChunks(const Bytes* old, ByteView patch,
                                  const std::vector<size_t>& chunks, ApplyLimits limits = {}) {
  std::optional<MemoryOldSource> src;
  if (old != nullptr) src.emplace(*old);
  VectorSink sink;
  VcdiffApplier applier(src ? &*src : nullptr, &sink, limits);
  size_t pos = 0, i = 0;
  while (pos < patch.size()) {
    const size_t n = std::min(chunks[i++ % chunks.size()], patch.size() - pos);
    DS_RETURN_IF_ERROR(applier.Write(patch.subspan(pos, n)));
    pos += n;
  }
  DS_RETURN_IF_ERROR(applier.Finish());
  EXPECT_EQ(applier.output_bytes(), sink.bytes.size());
  return std::move(sink.bytes);
}

void ExpectDecodesEverywhere(const Bytes& old, const Bytes& patch, const Bytes& expected) {
  ASSERT_FALSE(patch.empty());
  ASSERT_EQ(DetectPatchFormat(patch), PatchFormat::kVcdiff);
  Result<Bytes> r = ApplyVcdiff(old, patch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(*r == expected) << "ApplyVcdiff output differs";
  r = ApplyPatch(old, patch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(*r == expected) << "ApplyPatch output differs";
  r = ApplyVcdiffInChunks(&old, patch, {1, 7, 3, 4096 + 3, 13, 65536 + 17});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(*r == expected) << "chunked output differs";

  TempDir dir;
  WriteFileOrDie(dir.Join("old"), old);
  WriteFileOrDie(dir.Join("patch"), patch);
  ASSERT_TRUE(ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("new")).ok());
  EXPECT_TRUE(ReadFileOrDie(dir.Join("new")) == expected) << "ApplyPatchFile output differs";

  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->target_size, expected.size());
  EXPECT_EQ(info->patch_size, patch.size());
}

// Old and new versions with edits, an insertion, a deletion and a moved block.
void EditedPair(size_t n, uint64_t seed, bool text, Bytes* old, Bytes* neu) {
  *old = text ? TextBytes(n, seed) : RandomBytes(n, seed);
  const size_t q = n / 4;
  neu->assign(old->begin(), old->begin() + q);
  const Bytes fresh = RandomBytes(n / 50 + 1, seed + 1);
  neu->insert(neu->end(), fresh.begin(), fresh.end());
  neu->insert(neu->end(), old->begin() + 3 * q, old->end());                // Moved forward.
  neu->insert(neu->end(), old->begin() + q + q / 2, old->begin() + 3 * q);  // Middle part.
  for (size_t i = 100; i < neu->size(); i += n / 10 + 7) (*neu)[i] ^= 0x5A;
}

// ---------------------------------------------------------------------------------------------
// Interop with xdelta3.

TEST(VcdiffXdelta3Test, Xdelta3IsInstalled) {
  ASSERT_TRUE(std::filesystem::exists(kXdelta3))
      << kXdelta3 << " is missing; run scripts/install-deps.sh (Debian package xdelta3)";
}

TEST(VcdiffXdelta3Test, RandomDataEveryCompressionSetting) {
  Bytes old, neu;
  EditedPair(300 << 10, 1, false, &old, &neu);
  for (const std::string flags : {"-S none", "", "-9", "-0", "-S lzma", "-S lzma -9", "-S none -n",
                                  "-S none -N", "-S none -A"}) {
    SCOPED_TRACE("xdelta3 " + flags);
    const Bytes patch = Xdelta3Encode(&old, neu, flags);
    ExpectDecodesEverywhere(old, patch, neu);
  }
}

TEST(VcdiffXdelta3Test, StructuredTextWithLzmaSections) {
  Bytes old, neu;
  EditedPair(2 << 20, 2, true, &old, &neu);
  for (const std::string flags : {"-S lzma", "-S lzma -9", "-S none -9"}) {
    SCOPED_TRACE("xdelta3 " + flags);
    const Bytes patch = Xdelta3Encode(&old, neu, flags);
    if (flags.find("lzma") != std::string::npos) {
      Result<VcdiffInfo> info = InspectVcdiff(patch);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->secondary_id, vcdiff::kSecondaryLzma);
      bool compressed = false;
      for (const VcdiffWindowInfo& w : info->windows) compressed |= w.delta_indicator != 0;
      EXPECT_TRUE(compressed) << "xdelta3 compressed no section; the test proves little";
    }
    ExpectDecodesEverywhere(old, patch, neu);
  }
}

TEST(VcdiffXdelta3Test, EmptyFiles) {
  const Bytes some = TextBytes(5000, 3), empty;
  for (const std::string flags : {"-S none", "-S lzma"}) {
    SCOPED_TRACE(flags);
    ExpectDecodesEverywhere(some, Xdelta3Encode(&some, empty, flags), empty);
    ExpectDecodesEverywhere(empty, Xdelta3Encode(&empty, some, flags), some);
    ExpectDecodesEverywhere(empty, Xdelta3Encode(&empty, empty, flags), empty);
  }
}

TEST(VcdiffXdelta3Test, LargeDataManyWindows) {
  Bytes old, neu;
  EditedPair(20 << 20, 4, false, &old, &neu);
  const std::string big_source = "-B " + std::to_string(old.size());
  for (const std::string& flags : {"-S none " + big_source, big_source}) {
    SCOPED_TRACE("xdelta3 " + flags);
    const Bytes patch = Xdelta3Encode(&old, neu, flags);
    Result<VcdiffInfo> info = InspectVcdiff(patch);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_GE(info->windows.size(), 3u);
    ExpectDecodesEverywhere(old, patch, neu);
  }
}

TEST(VcdiffXdelta3Test, LargeTextLzmaAcrossWindows) {
  // Each section type's lzma stream runs across windows (see SecondaryStream in the decoder).
  Bytes old, neu;
  EditedPair(18 << 20, 5, true, &old, &neu);
  const Bytes patch = Xdelta3Encode(&old, neu, "-S lzma -B " + std::to_string(old.size()));
  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok());
  size_t compressed_windows = 0;
  for (const VcdiffWindowInfo& w : info->windows) compressed_windows += w.delta_indicator != 0;
  EXPECT_GE(compressed_windows, 2u);
  ExpectDecodesEverywhere(old, patch, neu);
}

TEST(VcdiffXdelta3Test, NoSource) {
  Bytes neu = TextBytes(200 << 10, 6);
  const Bytes rep = RandomBytes(3000, 7);
  for (int i = 0; i < 10; ++i) neu.insert(neu.end(), rep.begin(), rep.end());
  for (const std::string flags : {"-S none", "-S lzma"}) {
    SCOPED_TRACE(flags);
    const Bytes patch = Xdelta3Encode(nullptr, neu, flags);
    Result<VcdiffInfo> info = InspectVcdiff(patch);
    ASSERT_TRUE(info.ok());
    for (const VcdiffWindowInfo& w : info->windows) {
      EXPECT_EQ(w.win_indicator & (vcdiff::kWinSource | vcdiff::kWinTarget), 0);
    }
    ExpectDecodesEverywhere(RandomBytes(100, 8), patch, neu);
    // Without any old file at all.
    Result<Bytes> r = ApplyVcdiffInChunks(nullptr, patch, {5, 999});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(*r == neu);
  }
}

TEST(VcdiffXdelta3Test, HuffmanSecondaryIsRefusedByName) {
  // Fresh text: big, compressible ADD data, which xdelta3 compresses.
  const Bytes old = RandomBytes(3000, 9), neu = TextBytes(200 << 10, 9);
  for (const std::string name : {"djw", "fgk"}) {
    SCOPED_TRACE(name);
    const Bytes patch = Xdelta3Encode(&old, neu, "-S " + name);
    Result<Bytes> r = ApplyVcdiff(old, patch);
    EXPECT_EQ(CodeOf(r), ErrorCode::kPatchUnknownMethod);
    EXPECT_NE(r.status().message().find(name), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("-S lzma"), std::string::npos);
    r = ApplyVcdiffInChunks(&old, patch, {11});
    EXPECT_EQ(CodeOf(r), ErrorCode::kPatchUnknownMethod);
    // The inspector describes it without decoding.
    EXPECT_TRUE(InspectVcdiff(patch).ok());
  }
}

TEST(VcdiffXdelta3Test, HuffmanDeclaredButUnusedDecodes) {
  // Small random data does not compress: xdelta3 declares djw/fgk in the header but stores
  // every section as is.
  const Bytes old = RandomBytes(3000, 10);
  Bytes neu(old.begin(), old.begin() + 2000);
  const Bytes fresh = RandomBytes(500, 11);
  neu.insert(neu.end(), fresh.begin(), fresh.end());
  for (const std::string name : {"djw", "fgk"}) {
    SCOPED_TRACE(name);
    const Bytes patch = Xdelta3Encode(&old, neu, "-S " + name);
    Result<VcdiffInfo> info = InspectVcdiff(patch);
    ASSERT_TRUE(info.ok());
    ASSERT_NE(info->secondary_id, 0);
    for (const VcdiffWindowInfo& w : info->windows) ASSERT_EQ(w.delta_indicator, 0);
    ExpectDecodesEverywhere(old, patch, neu);
  }
}

TEST(VcdiffXdelta3Test, InspectDescribesXdelta3Patch) {
  Bytes old, neu;
  EditedPair(50 << 10, 11, false, &old, &neu);
  const Bytes patch = Xdelta3Encode(&old, neu, "-S none");
  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->hdr_indicator, vcdiff::kHdrAppHeader);
  EXPECT_EQ(info->secondary_id, 0);
  EXPECT_FALSE(info->custom_code_table);
  const std::string app(info->app_header.begin(), info->app_header.end());
  EXPECT_NE(app.find("new"), std::string::npos) << app;
  ASSERT_EQ(info->windows.size(), 1u);
  const VcdiffWindowInfo& w = info->windows[0];
  EXPECT_EQ(w.win_indicator, vcdiff::kWinSource | vcdiff::kWinAdler32);
  EXPECT_EQ(w.patch_offset, info->header_size);
  EXPECT_EQ(w.target_length, neu.size());
  EXPECT_TRUE(w.has_adler32);
  EXPECT_EQ(w.adler32, vcdiff::Adler32(1, neu));

  // The CLI prints it (and refuses nothing).
  TempDir dir;
  WriteFileOrDie(dir.Join("p.vcdiff"), patch);
  EXPECT_TRUE(cli::RunInspect({dir.Join("p.vcdiff")}).ok());
}

// ---------------------------------------------------------------------------------------------
// A test-local VCDIFF writer, independent of the library's encoder.

void PutInt(Bytes* out, uint64_t v) {
  uint8_t digits[10];
  int n = 0;
  do {
    digits[n++] = v & 0x7F;
    v >>= 7;
  } while (v);
  while (n > 1) out->push_back(digits[--n] | 0x80);
  out->push_back(digits[0]);
}

size_t IntLen(uint64_t v) {
  Bytes b;
  PutInt(&b, v);
  return b.size();
}

uint32_t ReferenceAdler32(ByteView data) {
  uint32_t a = 1, b = 0;
  for (uint8_t c : data) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

Bytes FileHeaderBytes(uint8_t indicator = 0, ByteView rest = {}) {
  Bytes out = {0xD6, 0xC3, 0xC4, 0x00, indicator};
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

struct WindowSpec {
  uint8_t win_indicator = 0;
  uint64_t segment_length = 0, segment_offset = 0;
  uint64_t target_length = 0;
  uint8_t delta_indicator = 0;
  Bytes data, inst, addr;
  std::optional<uint32_t> adler32;       // Written (with VCD_ADLER32) when set.
  std::optional<uint64_t> delta_length;  // Overrides the computed length.
};

Bytes WindowBytes(const WindowSpec& w) {
  Bytes out;
  out.push_back(w.win_indicator | (w.adler32 ? vcdiff::kWinAdler32 : 0));
  if (w.win_indicator & (vcdiff::kWinSource | vcdiff::kWinTarget)) {
    PutInt(&out, w.segment_length);
    PutInt(&out, w.segment_offset);
  }
  const uint64_t delta_length = IntLen(w.target_length) + 1 + IntLen(w.data.size()) +
                                IntLen(w.inst.size()) + IntLen(w.addr.size()) +
                                (w.adler32 ? 4 : 0) + w.data.size() + w.inst.size() + w.addr.size();
  PutInt(&out, w.delta_length.value_or(delta_length));
  PutInt(&out, w.target_length);
  out.push_back(w.delta_indicator);
  PutInt(&out, w.data.size());
  PutInt(&out, w.inst.size());
  PutInt(&out, w.addr.size());
  if (w.adler32) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(*w.adler32 >> s));
  }
  out.insert(out.end(), w.data.begin(), w.data.end());
  out.insert(out.end(), w.inst.begin(), w.inst.end());
  out.insert(out.end(), w.addr.begin(), w.addr.end());
  return out;
}

// Builds one window's sections and, alongside, the bytes it must decode to (byte by byte, the
// RFC's semantics). Address modes are chosen by the caller; the builder keeps its own model of
// the address cache to encode them.
class WindowBuilder {
 public:
  // |segment| is the window's source or target segment (empty for none).
  explicit WindowBuilder(Bytes segment, uint32_t near_size = 4, uint32_t same_size = 3)
      : segment_(std::move(segment)), near_(near_size, 0), same_(same_size * 256, 0) {}

  // Default-table opcodes: ADD size 1..17 is 1 + size, ADD with explicit size is 1.
  void Add(ByteView bytes, bool explicit_size, std::optional<uint8_t> opcode = {}) {
    const bool sized = !explicit_size && bytes.size() >= 1 && bytes.size() <= 17;
    inst.push_back(opcode.value_or(sized ? static_cast<uint8_t>(1 + bytes.size()) : 1));
    if (!sized) PutInt(&inst, bytes.size());
    data.insert(data.end(), bytes.begin(), bytes.end());
    target.insert(target.end(), bytes.begin(), bytes.end());
  }
  // Opcode 0: RUN with explicit size.
  void Run(uint8_t b, size_t n) {
    inst.push_back(0);
    PutInt(&inst, n);
    data.push_back(b);
    target.insert(target.end(), n, b);
  }
  // Default-table opcodes: COPY mode m is 19 + 16m with explicit size, 19 + 16m + (size - 3)
  // for sizes 4..18.
  void Copy(uint64_t addr, size_t n, uint8_t mode, bool explicit_size = true,
            std::optional<uint8_t> opcode = {}) {
    const bool sized = !explicit_size && n >= 4 && n <= 18;
    inst.push_back(opcode.value_or(static_cast<uint8_t>(19 + 16 * mode + (sized ? n - 3 : 0))));
    if (!sized) PutInt(&inst, n);
    EncodeAddress(addr, mode);
    for (size_t k = 0; k < n; ++k) {
      const uint64_t p = addr + k;
      target.push_back(p < segment_.size() ? segment_[p] : target[p - segment_.size()]);
    }
  }
  uint64_t here() const { return segment_.size() + target.size(); }
  const std::vector<uint64_t>& near() const { return near_; }

  WindowSpec Spec(uint8_t win_indicator, uint64_t segment_offset, bool adler = true) const {
    WindowSpec w;
    w.win_indicator = win_indicator;
    w.segment_length = segment_.size();
    w.segment_offset = segment_offset;
    w.target_length = target.size();
    w.data = data;
    w.inst = inst;
    w.addr = addr_;
    if (adler) w.adler32 = ReferenceAdler32(target);
    return w;
  }

  Bytes data, inst, target;

 private:
  void EncodeAddress(uint64_t addr, uint8_t mode) {
    const uint64_t h = here();
    ASSERT_LT(addr, h);
    if (mode == 0) {
      PutInt(&addr_, addr);
    } else if (mode == 1) {
      PutInt(&addr_, h - addr);
    } else if (mode < 2 + near_.size()) {
      ASSERT_GE(addr, near_[mode - 2]) << "near mode " << int{mode};
      PutInt(&addr_, addr - near_[mode - 2]);
    } else {
      const size_t slot = addr % same_.size();
      ASSERT_EQ(slot / 256, mode - 2 - near_.size()) << "same mode " << int{mode};
      ASSERT_EQ(same_[slot], addr) << "same mode " << int{mode} << " misses";
      addr_.push_back(static_cast<uint8_t>(slot % 256));
    }
    if (!near_.empty()) {
      near_[next_] = addr;
      next_ = (next_ + 1) % near_.size();
    }
    if (!same_.empty()) same_[addr % same_.size()] = addr;
  }

  Bytes segment_;
  std::vector<uint64_t> near_, same_;
  size_t next_ = 0;
  Bytes addr_;
};

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A window over a 1 KiB source that uses every default address mode, RUN, ADD (sized and
// explicit), COPY (sized and explicit), a copy spanning source and target, and overlapping
// copies within the target.
struct AllModes {
  Bytes old = RandomBytes(1024, 42);
  Bytes patch, expected;
  AllModes() {
    WindowBuilder b(old);
    b.Copy(0, 4, 0, false);    // self, sized opcode.      near[0] = 0
    b.Copy(10, 5, 1);          // here.                     near[1] = 10
    b.Copy(12, 4, 2);          // near slot 0 (0).          near[2] = 12
    b.Copy(13, 4, 3, false);   // near slot 1 (10).         near[3] = 13
    b.Copy(20, 9, 4);          // near slot 2 (12).         near[0] = 20
    b.Copy(30, 6, 5);          // near slot 3 (13).         near[1] = 30
    b.Copy(10, 4, 6);          // same, group 0: addr 10.
    b.Copy(300, 7, 0);         // Seeds same group 1.
    b.Copy(300, 8, 7);         // same, group 1.
    b.Copy(600, 5, 0);         // Seeds same group 2.
    b.Copy(600, 4, 8, false);  // same, group 2, sized.
    b.Run('z', 7);
    b.Add(AsBytes(std::string_view("hello")), true);  // size-0 ADD, size from the inst section.
    b.Add(AsBytes(std::string_view("xy")), false);
    const uint64_t t = b.here();
    b.Copy(t - 3, 10, 0);         // Overlapping: period 3.
    b.Copy(b.here() - 1, 20, 1);  // Period 1 (a run made by COPY).
    b.Copy(1020, 12, 0);          // Spans the end of the source into the target window.
    b.Copy(1024 + 2, 30, 0);      // From the start of the target window.
    expected = b.target;
    patch = Concat({FileHeaderBytes(), WindowBytes(b.Spec(vcdiff::kWinSource, 0))});
  }
};

TEST(VcdiffCraftedTest, EveryAddressModeRunAddAndOverlappingCopies) {
  AllModes m;
  ExpectDecodesEverywhere(m.old, m.patch, m.expected);
  // Byte at a time.
  Result<Bytes> r = ApplyVcdiffInChunks(&m.old, m.patch, {1});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(*r == m.expected);
}

TEST(VcdiffCraftedTest, SourceSegmentOffsetIsHonoured) {
  const Bytes old = RandomBytes(5000, 43);
  const Bytes segment(old.begin() + 3000, old.begin() + 4000);
  WindowBuilder b(segment);
  b.Copy(0, 100, 0);
  b.Copy(500, 200, 0);
  b.Copy(999, 1, 0);
  const Bytes patch = Concat({FileHeaderBytes(), WindowBytes(b.Spec(vcdiff::kWinSource, 3000))});
  ExpectDecodesEverywhere(old, patch, b.target);
}

TEST(VcdiffCraftedTest, VcdTargetWindowsReadEarlierOutput) {
  // Windows 1a and 1b: 700 KiB each, so that after them AtomicFileWriter holds the first in its
  // temporary file and the second in its buffer. Window 2 copies from a target segment across
  // that boundary; window 3 from window 2's output.
  const Bytes text = TextBytes(1400 << 10, 44);
  WindowBuilder w1a({}), w1b({});
  w1a.Add(ByteView(text).first(700 << 10), true);
  w1b.Add(ByteView(text).subspan(700 << 10), true);
  WindowBuilder w1({});  // Just the expected output of 1a + 1b.
  w1.target = text;
  const uint64_t seg_off = (700 << 10) - 1000, seg_len = 5000;
  const Bytes seg2(w1.target.begin() + seg_off, w1.target.begin() + seg_off + seg_len);
  WindowBuilder w2(seg2);
  w2.Copy(0, 2000, 0);
  w2.Copy(4000, 1000, 0);
  w2.Add(AsBytes(std::string_view("--")), false);
  w2.Copy(seg_len + 10, 50, 1);  // Within window 2's own output.
  w2.Copy(1, 4999, 0);
  Bytes before = w1.target;
  before.insert(before.end(), w2.target.begin(), w2.target.end());
  const uint64_t seg3_off = w1.target.size() + 100;
  const Bytes seg3(before.begin() + seg3_off, before.begin() + seg3_off + 64);
  WindowBuilder w3(seg3);
  w3.Copy(0, 64, 0);
  w3.Copy(64, 100, 0);  // Overlapping within window 3.
  const Bytes patch =
      Concat({FileHeaderBytes(), WindowBytes(w1a.Spec(0, 0)), WindowBytes(w1b.Spec(0, 0, false)),
              WindowBytes(w2.Spec(vcdiff::kWinTarget, seg_off)),
              WindowBytes(w3.Spec(vcdiff::kWinTarget, seg3_off))});
  Bytes expected = before;
  expected.insert(expected.end(), w3.target.begin(), w3.target.end());
  ExpectDecodesEverywhere({}, patch, expected);

  // A sink that cannot read back refuses clearly.
  class WriteOnlySink : public OutputSink {
   public:
    Status Write(ByteView) override { return Status::Ok(); }
  } write_only;
  VcdiffApplier applier(nullptr, &write_only);
  Status s = applier.Write(patch);
  EXPECT_EQ(s.code(), ErrorCode::kUnsupported) << s.ToString();
  EXPECT_NE(s.message().find("VCD_TARGET"), std::string::npos);
}

TEST(VcdiffCraftedTest, Adler32GoodBadAndAbsent) {
  AllModes m;
  ASSERT_EQ(vcdiff::Adler32(1, m.expected), ReferenceAdler32(m.expected));
  WindowBuilder b(m.old);
  b.Copy(5, 100, 0);
  b.Run(1, 1000);
  WindowSpec spec = b.Spec(vcdiff::kWinSource, 0);
  EXPECT_TRUE(ApplyVcdiff(m.old, Concat({FileHeaderBytes(), WindowBytes(spec)})).ok());
  spec.adler32 = *spec.adler32 ^ 0x00010000;
  Result<Bytes> r = ApplyVcdiff(m.old, Concat({FileHeaderBytes(), WindowBytes(spec)}));
  EXPECT_EQ(CodeOf(r), ErrorCode::kPatchOutputMismatch) << r.status().ToString();
  spec.adler32.reset();
  r = ApplyVcdiff(m.old, Concat({FileHeaderBytes(), WindowBytes(spec)}));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r == b.target);
  // With the checksum the wrong old file is caught; without it, it is not (VCDIFF has no base
  // hash).
  Bytes other_old = m.old;
  other_old[50] ^= 1;
  spec.adler32 = ReferenceAdler32(b.target);
  EXPECT_EQ(CodeOf(ApplyVcdiff(other_old, Concat({FileHeaderBytes(), WindowBytes(spec)}))),
            ErrorCode::kPatchOutputMismatch);
}

// The default table with entries |a| and |b| swapped, and that table's header data (RFC 3284
// section 7): near and same sizes, then windows rebuilding its string from the default string.
struct SwappedTable {
  vcdiff::CodeTable table = vcdiff::DefaultCodeTable();
  Bytes code_table_data;  // Length-prefixed, as it follows Hdr_Indicator.
  SwappedTable(uint8_t a, uint8_t b, uint8_t near_size, uint8_t same_size,
               bool embedded_header = false, size_t truncate = 0) {
    std::swap(table[a], table[b]);
    const Bytes from = vcdiff::CodeTableToBytes(vcdiff::DefaultCodeTable());
    const Bytes to = vcdiff::CodeTableToBytes(table);
    // Two windows: the first half against the source, the second from the first half's output
    // (VCD_TARGET) and ADDs, so both segment kinds are exercised.
    WindowBuilder w1(from);
    size_t i = 0;
    while (i < 768) {
      size_t j = i;
      while (j < 768 && to[j] == from[j]) ++j;
      if (j - i >= 4) {
        w1.Copy(i, j - i, 0);
        i = j;
      } else {
        w1.Add(ByteView(to).subspan(i, 1), false);
        ++i;
      }
    }
    const Bytes seg(to.begin(), to.begin() + 768);
    WindowBuilder w2(seg);
    w2.Add(ByteView(to).subspan(768, 768 - truncate), true);
    Bytes delta;
    if (embedded_header) delta = FileHeaderBytes();
    const Bytes win1 = WindowBytes(w1.Spec(vcdiff::kWinSource, 0));
    const Bytes win2 = WindowBytes(w2.Spec(vcdiff::kWinTarget, 0, false));
    delta.insert(delta.end(), win1.begin(), win1.end());
    delta.insert(delta.end(), win2.begin(), win2.end());
    PutInt(&code_table_data, delta.size() + 2);
    code_table_data.push_back(near_size);
    code_table_data.push_back(same_size);
    code_table_data.insert(code_table_data.end(), delta.begin(), delta.end());
  }
};

TEST(VcdiffCraftedTest, ApplicationDefinedCodeTable) {
  for (const bool embedded : {false, true}) {
    SCOPED_TRACE(embedded);
    const SwappedTable t(2, 19, 2, 1, embedded);
    const Bytes old = RandomBytes(2000, 46);
    WindowBuilder b(old, 2, 1);
    b.Copy(100, 50, 0, true, 2);                       // Opcode 2 is now COPY mode 0.
    b.Add(AsBytes(std::string_view("Q")), false, 19);  // Opcode 19 is now ADD 1 (sized).
    b.Copy(120, 30, 2, true, 19 + 16 * 2);             // COPY mode 2 = near slot 0 (100).
    b.Copy(100, 10, 4, true, 19 + 16 * 4);             // COPY mode 4 = same (cache of 256).
    b.Copy(b.here() - 5, 4, 1, false);                 // Sized COPY mode 1, size 4.
    b.Copy(130, 8, 2, true, 19 + 16 * 2);              // Near slot 0 (100, from the same copy).
    b.Copy(b.here() - 1, 6, 3, true, 19 + 16 * 3);     // Near slot 1 (the here-mode address).
    const Bytes patch = Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, t.code_table_data),
                                WindowBytes(b.Spec(vcdiff::kWinSource, 0))});
    ExpectDecodesEverywhere(old, patch, b.target);

    // The same window under the default table does not decode to the same bytes.
    const Bytes plain = Concat({FileHeaderBytes(), WindowBytes(b.Spec(vcdiff::kWinSource, 0))});
    Result<Bytes> r = ApplyVcdiff(old, plain);
    EXPECT_TRUE(!r.ok() || *r != b.target);

    // Mode 5 does not exist with near 2 + same 1 caches.
    WindowBuilder bad(old, 2, 1);
    bad.inst = {static_cast<uint8_t>(19 + 16 * 5), 4};
    bad.target.assign(4, 0);
    WindowSpec spec = bad.Spec(vcdiff::kWinSource, 0, false);
    spec.addr = {0};
    r = ApplyVcdiff(old, Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, t.code_table_data),
                                 WindowBytes(spec)}));
    EXPECT_EQ(CodeOf(r), ErrorCode::kPatchMalformed) << r.status().ToString();
  }
}

TEST(VcdiffCraftedTest, BadCodeTables) {
  const Bytes old = RandomBytes(100, 47);
  const Bytes window = WindowBytes(WindowSpec{});  // Empty window.
  // Rebuilds 1535 bytes instead of 1536.
  SwappedTable short_table(2, 19, 4, 3, false, 1);
  Result<Bytes> r = ApplyVcdiff(
      old, Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, short_table.code_table_data), window}));
  EXPECT_EQ(CodeOf(r), ErrorCode::kPatchMalformed) << r.status().ToString();
  // An entry with instruction type 9.
  {
    vcdiff::CodeTable table = vcdiff::DefaultCodeTable();
    table[7].type1 = 9;
    WindowBuilder w({});
    w.Add(vcdiff::CodeTableToBytes(table), true);
    Bytes data;
    const Bytes win = WindowBytes(w.Spec(0, 0));
    PutInt(&data, win.size() + 2);
    data.push_back(4);
    data.push_back(3);
    data.insert(data.end(), win.begin(), win.end());
    r = ApplyVcdiff(old, Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, data), window}));
    EXPECT_EQ(CodeOf(r), ErrorCode::kPatchMalformed) << r.status().ToString();
  }
  // Cache sizes that leave no room for the modes.
  SwappedTable big_caches(2, 19, 200, 100);
  r = ApplyVcdiff(
      old, Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, big_caches.code_table_data), window}));
  EXPECT_EQ(CodeOf(r), ErrorCode::kPatchMalformed) << r.status().ToString();
  // Huge code table length.
  Bytes huge;
  PutInt(&huge, 1ull << 40);
  r = ApplyVcdiff(old, Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, huge)}));
  EXPECT_EQ(CodeOf(r), ErrorCode::kResourceLimit) << r.status().ToString();
}

TEST(VcdiffCraftedTest, AppHeaderAndEmptyPatch) {
  Bytes app;
  PutInt(&app, 5);
  const Bytes name = {'a', '/', '/', 'b', '/'};
  app.insert(app.end(), name.begin(), name.end());
  WindowBuilder b({});
  b.Run(7, 10);
  const Bytes patch =
      Concat({FileHeaderBytes(vcdiff::kHdrAppHeader, app), WindowBytes(b.Spec(0, 0))});
  ExpectDecodesEverywhere({}, patch, b.target);
  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->app_header == name);
  // A header without windows is an empty target.
  Result<Bytes> r = ApplyVcdiff({}, FileHeaderBytes());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

// ---------------------------------------------------------------------------------------------
// Malformed input.

class VcdiffMalformedTest : public ::testing::Test {
 protected:
  ErrorCode Apply(const Bytes& patch, ApplyLimits limits = {}) {
    const ErrorCode whole = CodeOf(ApplyVcdiff(old_, patch, limits));
    // The error does not depend on how the patch is split.
    EXPECT_EQ(CodeOf(ApplyVcdiffInChunks(&old_, patch, {1, 2, 5}, limits)), whole);
    return whole;
  }
  Bytes Patch(const WindowSpec& w, uint8_t hdr = 0, ByteView hdr_rest = {}) {
    return Concat({FileHeaderBytes(hdr, hdr_rest), WindowBytes(w)});
  }
  WindowSpec Good() {
    WindowBuilder b(old_);
    b.Copy(10, 20, 0);
    b.Add(AsBytes(std::string_view("abc")), false);
    return b.Spec(vcdiff::kWinSource, 0);
  }

  Bytes old_ = RandomBytes(256, 48);
};

TEST_F(VcdiffMalformedTest, GoodBaseline) { EXPECT_EQ(Apply(Patch(Good())), ErrorCode::kOk); }

TEST_F(VcdiffMalformedTest, HeaderErrors) {
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC5, 0x00, 0x00}), ErrorCode::kPatchBadMagic);
  EXPECT_EQ(Apply({'X'}), ErrorCode::kPatchBadMagic);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x01, 0x00}), ErrorCode::kPatchVersion);
  EXPECT_EQ(CodeOf(ApplyPatch(old_, Bytes{0xD6, 0xC3, 0xC4, 0x01, 0x00})),
            ErrorCode::kPatchVersion);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x00, 0x08}), ErrorCode::kPatchMalformed);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x00, 0x01, 7}), ErrorCode::kPatchUnknownMethod);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x00, 0x01, 0}), ErrorCode::kPatchUnknownMethod);
  EXPECT_EQ(Apply({}), ErrorCode::kPatchTruncated);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4}), ErrorCode::kPatchTruncated);
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x00, 0x04, 0x05, 'a'}), ErrorCode::kPatchTruncated);
  // An over-long integer (more than 64 bits).
  EXPECT_EQ(Apply({0xD6, 0xC3, 0xC4, 0x00, 0x04, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                   0xFF, 0x7F}),
            ErrorCode::kPatchMalformed);
  Bytes big_app;
  PutInt(&big_app, 1ull << 50);
  EXPECT_EQ(Apply(FileHeaderBytes(vcdiff::kHdrAppHeader, big_app)), ErrorCode::kResourceLimit);
}

TEST_F(VcdiffMalformedTest, WindowIndicators) {
  WindowSpec w = Good();
  w.win_indicator = 0x08 | vcdiff::kWinSource;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w.win_indicator = vcdiff::kWinSource | vcdiff::kWinTarget;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.delta_indicator = 0x08;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  // A compressed section while the header names no secondary compressor.
  w.delta_indicator = vcdiff::kDeltaAddr;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  // ... or names djw.
  EXPECT_EQ(Apply(Patch(w, vcdiff::kHdrSecondary, Bytes{vcdiff::kSecondaryDjw})),
            ErrorCode::kPatchUnknownMethod);
  // Declared djw, nothing compressed: fine.
  EXPECT_EQ(Apply(Patch(Good(), vcdiff::kHdrSecondary, Bytes{vcdiff::kSecondaryFgk})),
            ErrorCode::kOk);
}

TEST_F(VcdiffMalformedTest, LengthsThatDoNotAddUp) {
  WindowSpec w = Good();
  w.delta_length = 1;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.target_length += 1;  // Instructions produce one byte less.
  w.adler32.reset();
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.target_length -= 1;  // Instructions produce one byte more.
  w.adler32.reset();
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.data.push_back(0);  // Leftover data.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.addr.push_back(0);  // Leftover address.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.data.pop_back();  // ADD reads past the data section.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.addr.clear();  // COPY without its address.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.inst = {19};  // COPY with explicit size, but the size is missing.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.inst = {0, 0x85};  // RUN whose size integer is cut.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w = Good();
  w.inst = {0};  // RUN without a byte in the data section.
  w.data.clear();
  PutInt(&w.inst, 5);
  w.target_length = 5;
  w.adler32.reset();
  w.addr.clear();
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
}

TEST_F(VcdiffMalformedTest, AddressesOutOfRange) {
  WindowSpec w = Good();
  w.addr.clear();
  PutInt(&w.addr, old_.size());  // Self mode: the first target byte, not yet produced.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  w.addr.clear();
  PutInt(&w.addr, 1ull << 62);
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  // Here mode reaching before address 0.
  w = Good();
  w.inst = {static_cast<uint8_t>(19 + 16), 20, 4};  // COPY mode 1 size 20, then ADD 3.
  w.addr.clear();
  PutInt(&w.addr, old_.size() + 1);
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  // Near mode overflowing 64 bits.
  w.inst = {static_cast<uint8_t>(19 + 32), 20, 4};
  w.addr.clear();
  PutInt(&w.addr, ~0ull);
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
  // Same mode returning 0 when there is no source: address 0 is not before here = 0.
  WindowBuilder b({});
  WindowSpec t = b.Spec(0, 0, false);
  t.inst = {static_cast<uint8_t>(19 + 16 * 6), 4};
  t.addr = {0};
  t.target_length = 4;
  EXPECT_EQ(Apply(Patch(t)), ErrorCode::kPatchMalformed);
}

TEST_F(VcdiffMalformedTest, SegmentsOutOfRange) {
  WindowSpec w = Good();
  w.segment_offset = 1;  // Segment [1, 257) of a 256-byte file.
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchWrongBase);
  w = Good();
  w.segment_length = 1ull << 60;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchWrongBase);
  w.segment_offset = ~0ull;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);  // offset + length overflows.
  // No old file at all.
  VectorSink sink;
  VcdiffApplier applier(nullptr, &sink);
  EXPECT_EQ(applier.Write(Patch(Good())).code(), ErrorCode::kPatchWrongBase);
  // VCD_TARGET before any output.
  w = Good();
  w.win_indicator = vcdiff::kWinTarget;
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kPatchMalformed);
}

TEST_F(VcdiffMalformedTest, HugeDeclaredSizesAreRefusedWithoutAllocating) {
  WindowSpec w = Good();
  w.target_length = 1ull << 40;
  w.adler32.reset();
  EXPECT_EQ(Apply(Patch(w)), ErrorCode::kResourceLimit);
  // Only a window header claiming a huge delta encoding: refused at once, not truncated.
  Bytes head = FileHeaderBytes();
  head.push_back(0);
  PutInt(&head, 1ull << 50);
  VectorSink sink;
  VcdiffApplier applier(nullptr, &sink);
  EXPECT_EQ(applier.Write(head).code(), ErrorCode::kResourceLimit);
  // Tight limits.
  ApplyLimits tight;
  tight.max_segment_output = 10;
  EXPECT_EQ(Apply(Patch(Good()), tight), ErrorCode::kResourceLimit);
  tight = {};
  tight.max_segment_payload = 10;
  EXPECT_EQ(Apply(Patch(Good()), tight), ErrorCode::kResourceLimit);
}

TEST_F(VcdiffMalformedTest, TrailingBytesAreAWindow) {
  const Bytes good = Patch(Good());
  Bytes p = good;
  p.push_back(0x00);  // A window indicator, then nothing.
  EXPECT_EQ(Apply(p), ErrorCode::kPatchTruncated);
  p = good;
  p.push_back(0xFF);
  EXPECT_EQ(Apply(p), ErrorCode::kPatchMalformed);
}

TEST_F(VcdiffMalformedTest, CorruptLzmaSections) {
  Bytes old, neu;
  EditedPair(200 << 10, 12, true, &old, &neu);
  const Bytes patch = Xdelta3Encode(&old, neu, "-S lzma");
  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->windows.size(), 1u);
  const VcdiffWindowInfo& w = info->windows[0];
  ASSERT_TRUE(w.delta_indicator & vcdiff::kDeltaData);
  // The data section starts right after the Adler-32: the decompressed size, then the xz magic.
  const size_t data_start = patch.size() - w.data_length - w.inst_length - w.addr_length;
  const Bytes xz_magic = {0xFD, '7', 'z', 'X', 'Z', 0x00};
  const auto found = std::search(patch.begin() + data_start, patch.begin() + data_start + 16,
                                 xz_magic.begin(), xz_magic.end());
  ASSERT_NE(found, patch.begin() + data_start + 16);
  const size_t magic = found - patch.begin();
  Bytes bad = patch;
  bad[magic + 1] ^= 0xFF;  // Breaks the xz magic.
  EXPECT_EQ(CodeOf(ApplyVcdiff(old, bad)), ErrorCode::kPatchDecompress);
  // The last digit of the decompressed size.
  ASSERT_TRUE(patch[magic - 1] > 0 && patch[magic - 1] < 0x7F);
  bad = patch;
  bad[magic - 1] += 1;  // Declares one byte more than the stream holds.
  EXPECT_EQ(CodeOf(ApplyVcdiff(old, bad)), ErrorCode::kPatchDecompress);
  bad = patch;
  bad[magic - 1] -= 1;  // One byte less.
  EXPECT_EQ(CodeOf(ApplyVcdiff(old, bad)), ErrorCode::kPatchDecompress);
  bad = patch;
  bad[data_start + w.data_length - 3] ^= 0x40;  // Inside the compressed data.
  EXPECT_NE(CodeOf(ApplyVcdiff(old, bad)), ErrorCode::kOk);
}

// Every prefix of a valid patch: an error (kPatchTruncated inside a window), or, exactly at a
// window boundary, the output so far.
void CheckEveryPrefix(const Bytes& old, const Bytes& patch, const Bytes& expected) {
  Result<VcdiffInfo> info = InspectVcdiff(patch);
  ASSERT_TRUE(info.ok());
  std::vector<std::pair<size_t, uint64_t>> boundaries = {{info->header_size, 0}};
  for (const VcdiffWindowInfo& w : info->windows) {
    boundaries.push_back({0, w.target_offset + w.target_length});
  }
  for (size_t i = 1; i < info->windows.size(); ++i) {
    boundaries[i].first = info->windows[i].patch_offset;
  }
  boundaries.back().first = patch.size();
  for (size_t n = 0; n < patch.size(); ++n) {
    const ByteView prefix(patch.data(), n);
    Result<Bytes> r = ApplyVcdiff(old, prefix);
    const auto at = std::find_if(boundaries.begin(), boundaries.end(),
                                 [n](const auto& b) { return b.first == n; });
    if (at == boundaries.end()) {
      EXPECT_EQ(CodeOf(r), ErrorCode::kPatchTruncated) << "prefix " << n;
    } else {
      ASSERT_TRUE(r.ok()) << "prefix " << n << ": " << r.status().ToString();
      EXPECT_TRUE(*r == Bytes(expected.begin(), expected.begin() + at->second));
    }
  }
}

TEST(VcdiffTruncationTest, EveryPrefixOfCraftedPatch) {
  AllModes m;
  CheckEveryPrefix(m.old, m.patch, m.expected);
}

TEST(VcdiffTruncationTest, EveryPrefixOfMultiWindowPatch) {
  WindowBuilder w1({});
  w1.Add(AsBytes(std::string_view("first window ")), true);
  w1.Run('-', 30);
  WindowBuilder w2(w1.target);
  w2.Copy(0, 13, 0);
  w2.Copy(5, 20, 1);
  Bytes expected = w1.target;
  expected.insert(expected.end(), w2.target.begin(), w2.target.end());
  const Bytes patch = Concat(
      {FileHeaderBytes(), WindowBytes(w1.Spec(0, 0)), WindowBytes(w2.Spec(vcdiff::kWinTarget, 0))});
  ExpectDecodesEverywhere({}, patch, expected);
  CheckEveryPrefix({}, patch, expected);
}

TEST(VcdiffTruncationTest, EveryPrefixOfXdelta3LzmaPatch) {
  Bytes old, neu;
  EditedPair(20 << 10, 13, true, &old, &neu);
  const Bytes patch = Xdelta3Encode(&old, neu, "-S lzma");
  CheckEveryPrefix(old, patch, neu);
}

// Random byte flips never crash or hang; whatever decodes is consistent across splits.
void FlipBytes(const Bytes& old, const Bytes& patch, int rounds, uint64_t seed) {
  std::mt19937_64 rng(seed);
  ApplyLimits limits;
  limits.max_segment_output = 1 << 20;
  limits.max_segment_payload = 1 << 20;
  for (int i = 0; i < rounds; ++i) {
    Bytes p = patch;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    Result<Bytes> whole = ApplyVcdiff(old, p, limits);
    Result<Bytes> chunked = ApplyVcdiffInChunks(&old, p, {1 + rng() % 64}, limits);
    ASSERT_EQ(CodeOf(whole), CodeOf(chunked)) << "round " << i;
    if (whole.ok()) {
      ASSERT_TRUE(*whole == *chunked);
      Result<VcdiffInfo> info = InspectVcdiff(p);
      ASSERT_TRUE(info.ok()) << info.status().ToString();
      EXPECT_EQ(info->target_size, whole->size());
    }
  }
}

TEST(VcdiffFlipTest, CraftedPatch) {
  AllModes m;
  FlipBytes(m.old, m.patch, 3000, 1);
}

TEST(VcdiffFlipTest, Xdelta3Patches) {
  Bytes old, neu;
  EditedPair(30 << 10, 14, true, &old, &neu);
  FlipBytes(old, Xdelta3Encode(&old, neu, "-S none"), 1500, 2);
  FlipBytes(old, Xdelta3Encode(&old, neu, "-S lzma"), 1500, 3);
}

TEST(VcdiffFlipTest, CodeTablePatch) {
  const SwappedTable t(2, 19, 2, 1);
  const Bytes old = RandomBytes(300, 49);
  WindowBuilder b(old, 2, 1);
  b.Copy(100, 50, 0, true, 2);
  b.Add(AsBytes(std::string_view("Q")), false, 19);
  const Bytes patch = Concat({FileHeaderBytes(vcdiff::kHdrCodeTable, t.code_table_data),
                              WindowBytes(b.Spec(vcdiff::kWinSource, 0))});
  ASSERT_TRUE(ApplyVcdiff(old, patch).ok());
  FlipBytes(old, patch, 1000, 4);
}

// ---------------------------------------------------------------------------------------------
// ApplyPatchFile is atomic for VCDIFF too.

TEST(VcdiffApplyFileTest, DestinationUntouchedOnError) {
  AllModes m;
  TempDir dir;
  WriteFileOrDie(dir.Join("old"), m.old);
  WriteFileOrDie(dir.Join("dest"), AsBytes(std::string_view("precious")));
  Bytes bad = m.patch;
  bad.back() ^= 1;  // The last address byte: wrong output (or a bad address).
  WriteFileOrDie(dir.Join("patch"), bad);
  Status s = ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("dest"));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(ReadFileOrDie(dir.Join("dest")) == testing::ToBytes("precious"));
  // Truncated.
  WriteFileOrDie(dir.Join("patch"), ByteView(m.patch).first(m.patch.size() - 1));
  EXPECT_EQ(ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("dest")).code(),
            ErrorCode::kPatchTruncated);
  EXPECT_TRUE(ReadFileOrDie(dir.Join("dest")) == testing::ToBytes("precious"));
  EXPECT_EQ(dir.List(), (std::vector<std::string>{"dest", "old", "patch"}));
  // In place: the old file is replaced only on success.
  WriteFileOrDie(dir.Join("patch"), m.patch);
  ASSERT_TRUE(ApplyPatchFile(dir.Join("old"), dir.Join("patch"), dir.Join("old")).ok());
  EXPECT_TRUE(ReadFileOrDie(dir.Join("old")) == m.expected);
}

}  // namespace
}  // namespace ds::delta
