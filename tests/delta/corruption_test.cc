// Tests PatchApplier on damaged real patches: magic, version, truncation, checksums, base, flips.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;
using testing::RandomBytes;
using testing::RawPatch;

struct Fixture {
  Bytes old_bytes, new_bytes, patch;
  RawPatch raw;
};

// A small patch with one segment of each method: a reference segment (reordered text), copydiff
// (random bytes with a flip) and stored (fresh random bytes). The three parts have the segment
// size, so they stay one per segment however the generator balances segment lengths.
const Fixture& SmallPatch() {
  static const Fixture f = [] {
    Fixture x;
    const Bytes text = testing::TextBytes(6000, 1);
    const Bytes random_old = RandomBytes(2048, 2);
    x.old_bytes = text;
    x.old_bytes.insert(x.old_bytes.end(), random_old.begin(), random_old.end());
    x.new_bytes = testing::TextBytes(2048, 3);
    x.new_bytes.insert(x.new_bytes.end(), random_old.begin(), random_old.end());
    x.new_bytes[2048 + 1000] ^= 0x40;
    const Bytes fresh = RandomBytes(2048, 4);
    x.new_bytes.insert(x.new_bytes.end(), fresh.begin(), fresh.end());
    GenerateOptions o;
    o.segment_size = 2048;
    o.whole_file_limit = 0;
    o.segment_ref_window = 8192;
    o.stream_level = 3;
    o.ref_level = 3;
    Result<Bytes> p = GeneratePatch(x.old_bytes, x.new_bytes, o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    x.patch = std::move(p).value();
    x.raw = testing::SplitPatch(x.patch);
    EXPECT_EQ(x.raw.segments.size(), 3u);
    const testing::MethodCounts counts = testing::CountMethods(x.patch);
    EXPECT_EQ(counts.ref, 1u);
    EXPECT_EQ(counts.copydiff, 1u);
    EXPECT_EQ(counts.stored, 1u);
    return x;
  }();
  return f;
}

Result<Bytes> Apply(ByteView patch, const ApplyLimits& limits = {}) {
  return ApplyPatch(SmallPatch().old_bytes, patch, limits);
}

TEST(PatchApplierTest, IntactPatchApplies) {
  const Fixture& f = SmallPatch();
  Result<Bytes> out = Apply(f.patch);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
  EXPECT_TRUE(testing::JoinPatch(f.raw) == f.patch) << "SplitPatch/JoinPatch must round-trip";
}

TEST(PatchApplierTest, BadMagic) {
  const Fixture& f = SmallPatch();
  for (size_t i = 0; i < 4; ++i) {
    Bytes p = f.patch;
    p[i] ^= 0x20;
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchBadMagic) << "byte " << i;
  }
}

TEST(PatchApplierTest, BadMagicDetectedFromFirstByte) {
  MemoryOldSource src(SmallPatch().old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  const uint8_t first[] = {'P'};
  EXPECT_EQ(CodeOf(applier.Write(first)), ErrorCode::kPatchBadMagic);
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchBadMagic);
}

TEST(PatchApplierTest, OtherFileFormatsAreBadMagic) {
  const Bytes zip = {'P', 'K', 3, 4, 20, 0, 0, 0, 8, 0};
  const Bytes gzip = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
  const Bytes bsdiff = testing::ToBytes("BSDIFF40........................");
  for (const Bytes& p : {zip, gzip, bsdiff}) {
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchBadMagic);
  }
}

TEST(PatchApplierTest, EmptyPatchIsTruncated) {
  EXPECT_EQ(CodeOf(Apply(ByteView{})), ErrorCode::kPatchTruncated);
}

TEST(PatchApplierTest, UnsupportedMajorVersion) {
  const Fixture& f = SmallPatch();
  for (uint8_t major : {0, 2, 255}) {
    Bytes p = f.patch;
    p[4] = major;
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchVersion) << "major " << int{major};
  }
}

TEST(PatchApplierTest, UnsupportedMajorVersionWithValidChecksum) {
  RawPatch raw = SmallPatch().raw;
  raw.header.major = 2;
  EXPECT_EQ(CodeOf(Apply(testing::JoinPatch(raw))), ErrorCode::kPatchVersion);
}

// A later minor version may append header fields; this reader must skip them.
TEST(PatchApplierTest, NewerMinorVersionWithExtraHeaderFieldsAccepted) {
  const Fixture& f = SmallPatch();
  ByteReader r(f.patch);
  uint64_t len = 0;
  ASSERT_TRUE(r.Skip(6) && r.ReadVarint(&len));
  const size_t fields_start = r.position();
  Bytes fields(f.patch.begin() + fields_start, f.patch.begin() + fields_start + len - 4);
  fields.insert(fields.end(), {0x05, 0xAA, 0xBB, 0xCC});  // Unknown future fields.
  Bytes p = {'D', 'S', 'P', 'F', kFormatMajor, kFormatMinor + 1};
  ByteWriter w(&p);
  w.WriteVarint(fields.size() + 4);
  w.WriteBytes(fields);
  w.WriteU32Le(Crc32c(p));
  p.insert(p.end(), f.patch.begin() + f.raw.header_bytes, f.patch.end());
  Result<Bytes> out = Apply(p);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
}

// Applies every prefix of the patch in [begin, end) and expects kPatchTruncated from Finish.
void ExpectTruncatedPrefixes(size_t begin, size_t end) {
  const Fixture& f = SmallPatch();
  ASSERT_LT(begin, end);
  for (size_t len = begin; len < end; ++len) {
    MemoryOldSource src(f.old_bytes);
    VectorSink sink;
    PatchApplier applier(&src, &sink);
    Status w = applier.Write(ByteView(f.patch).first(len));
    ASSERT_TRUE(w.ok()) << "prefix " << len << ": " << w.ToString();
    ASSERT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchTruncated) << "prefix " << len;
    // The convenience API agrees.
    ASSERT_EQ(CodeOf(Apply(ByteView(f.patch).first(len))), ErrorCode::kPatchTruncated);
  }
}

TEST(PatchApplierTest, TruncatedHeader) {
  ExpectTruncatedPrefixes(0, SmallPatch().raw.header_bytes);
}

TEST(PatchApplierTest, TruncatedSegment) {
  for (const auto& seg : SmallPatch().raw.segments) {
    ExpectTruncatedPrefixes(seg.offset, seg.offset + seg.header_bytes);
  }
}

TEST(PatchApplierTest, TruncatedPayload) {
  for (const auto& seg : SmallPatch().raw.segments) {
    const size_t start = seg.offset + seg.header_bytes;
    ExpectTruncatedPrefixes(start, start + seg.payload.size());
  }
}

TEST(PatchApplierTest, TruncatedFedByteByByte) {
  const Fixture& f = SmallPatch();
  for (size_t len : {size_t{1}, f.raw.header_bytes - 1, f.raw.header_bytes + 1,
                     f.raw.segments[1].offset + 3, f.patch.size() - 1}) {
    Result<Bytes> out = testing::ApplyInChunks(f.old_bytes, ByteView(f.patch).first(len), {1});
    EXPECT_EQ(CodeOf(out), ErrorCode::kPatchTruncated) << "prefix " << len;
  }
}

TEST(PatchApplierTest, HeaderChecksumMismatch) {
  const Fixture& f = SmallPatch();
  ByteReader r(f.patch);
  uint64_t len = 0;
  ASSERT_TRUE(r.Skip(6) && r.ReadVarint(&len));
  // Every byte from the minor version on (fields and the CRC itself), except the length varint.
  for (size_t i = 5; i < f.raw.header_bytes; ++i) {
    if (i >= 6 && i < r.position()) continue;
    Bytes p = f.patch;
    p[i] ^= 0x01;
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchChecksum) << "byte " << i;
  }
}

TEST(PatchApplierTest, SegmentChecksumMismatch) {
  const Fixture& f = SmallPatch();
  for (size_t s = 0; s < f.raw.segments.size(); ++s) {
    const auto& seg = f.raw.segments[s];
    const size_t payload_start = seg.offset + seg.header_bytes;
    // The stored CRC (last 4 header bytes) and every payload byte.
    for (size_t i = payload_start - 4; i < payload_start + seg.payload.size(); ++i) {
      Bytes p = f.patch;
      p[i] ^= 0x80;
      ASSERT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchChecksum) << "segment " << s << " byte " << i;
    }
  }
}

TEST(PatchApplierTest, SegmentOutputCrcFieldFlipIsChecksumMismatch) {
  const Fixture& f = SmallPatch();
  for (const auto& seg : f.raw.segments) {
    // output_crc32c is the last field, just before the segment CRC.
    const size_t field = seg.offset + seg.header_bytes - 8;
    Bytes p = f.patch;
    p[field] ^= 0x01;
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchChecksum);
  }
}

TEST(PatchApplierTest, SegmentHeaderFieldFlipIsAnError) {
  const Fixture& f = SmallPatch();
  for (const auto& seg : f.raw.segments) {
    for (size_t i = seg.offset; i < seg.offset + seg.header_bytes - 4; ++i) {
      for (uint8_t mask : {0x01, 0x02, 0x80}) {
        Bytes p = f.patch;
        p[i] ^= mask;
        EXPECT_FALSE(Apply(p).ok()) << "byte " << i << " mask " << int{mask};
      }
    }
  }
}

TEST(PatchApplierTest, WrongBaseSize) {
  const Fixture& f = SmallPatch();
  Bytes longer = f.old_bytes;
  longer.push_back(0);
  Bytes shorter(f.old_bytes.begin(), f.old_bytes.end() - 1);
  for (const Bytes& old_bytes : {longer, shorter, Bytes()}) {
    EXPECT_EQ(CodeOf(ApplyPatch(old_bytes, f.patch)), ErrorCode::kPatchWrongBase);
    ApplyLimits no_hash;
    no_hash.verify_old_hash = false;
    EXPECT_EQ(CodeOf(ApplyPatch(old_bytes, f.patch, no_hash)), ErrorCode::kPatchWrongBase)
        << "the size is checked even without hashing";
  }
}

TEST(PatchApplierTest, WrongBaseHash) {
  const Fixture& f = SmallPatch();
  for (size_t at : {size_t{0}, f.old_bytes.size() / 2, f.old_bytes.size() - 1}) {
    Bytes old_bytes = f.old_bytes;
    old_bytes[at] ^= 1;
    MemoryOldSource src(old_bytes);
    VectorSink sink;
    PatchApplier applier(&src, &sink);
    EXPECT_EQ(CodeOf(applier.Write(f.patch)), ErrorCode::kPatchWrongBase) << "byte " << at;
    EXPECT_TRUE(sink.bytes.empty()) << "nothing may be written for a wrong base";
    EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchWrongBase);
  }
}

TEST(PatchApplierTest, CorruptStreamsOfALaterSegmentFailTheSameWhateverTheSplit) {
  // Segment k+1's streams are decoded ahead while segment k is rebuilt when the caller's bytes
  // hold it whole. Streams that do not decode (under a valid checksum, so the look-ahead does
  // decode them) must fail with the same error, after the same segments, as without look-ahead.
  const Bytes old_bytes = RandomBytes(3 << 20, 31);
  Bytes neu = old_bytes;
  // Enough changes that the patch stays multi-segment (small patches become one segment).
  const Bytes noise = RandomBytes(neu.size() / 29 + 1, 32);
  for (size_t i = 0; i < neu.size(); i += 29) neu[i] = noise[i / 29];
  GenerateOptions opt;
  opt.segment_size = 512 << 10;
  opt.try_zstd_ref = false;
  Result<Bytes> patch = GeneratePatch(old_bytes, neu, opt);
  ASSERT_TRUE(patch.ok());
  testing::RawPatch raw = testing::SplitPatch(*patch);
  ASSERT_GE(raw.segments.size(), 4u);
  const ByteView good(*patch);
  // The last bytes of segment 3's payload (its literal or diff stream) scrambled.
  Bytes& payload = raw.segments[2].payload;
  for (size_t i = payload.size() - 8; i < payload.size(); ++i) payload[i] ^= 0x5C;
  const Bytes bad = testing::JoinPatch(raw);
  ErrorCode codes[2];
  uint64_t done[2];
  int k = 0;
  for (size_t step : {bad.size(), size_t{4096}}) {
    MemoryOldSource src(old_bytes);
    VectorSink sink;
    PatchApplier applier(&src, &sink);
    Status s;
    for (size_t pos = 0; pos < bad.size() && s.ok(); pos += step) {
      s = applier.Write(ByteView(bad).subspan(pos, std::min(step, bad.size() - pos)));
    }
    if (s.ok()) s = applier.Finish();
    codes[k] = CodeOf(s);
    done[k] = applier.segments_done();
    EXPECT_NE(codes[k], ErrorCode::kOk) << "step " << step;
    EXPECT_EQ(done[k], 2u) << "step " << step;
    EXPECT_TRUE(std::equal(sink.bytes.begin(), sink.bytes.end(), neu.begin()));
    ++k;
  }
  EXPECT_EQ(codes[0], codes[1]);
  // The intact patch applies, whole.
  Result<Bytes> out = ApplyPatch(old_bytes, good);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu);
}

TEST(PatchApplierTest, ReferenceSegmentsRebuiltAheadFailTheSameWhateverTheSplit) {
  // Reference segments (an old window as dictionary) of an untransformed range are rebuilt ahead,
  // on other threads, when the caller's bytes hold them whole. A stream that does not decode must
  // fail as it does without look-ahead, and the intact patch gives the same bytes whether it
  // arrives whole, in pieces, or with the look-ahead turned off.
  const Bytes old_bytes = testing::TextBytes(768 << 10, 41);
  Bytes neu = testing::TextBytes(768 << 10, 42);  // Same words, other sentences: all references.
  GenerateOptions opt;
  opt.segment_size = 96 << 10;
  opt.whole_file_limit = 0;
  opt.segment_ref_window = 256 << 10;
  Result<Bytes> patch = GeneratePatch(old_bytes, neu, opt);
  ASSERT_TRUE(patch.ok());
  RawPatch raw = testing::SplitPatch(*patch);
  ASSERT_GE(raw.segments.size(), 6u);
  for (size_t i = 0; i < 4; ++i) {
    const Method m = raw.segments[i].header.method;
    ASSERT_TRUE(m == Method::kLzmaRef || m == Method::kZstdRef) << "segment " << i + 1;
  }
  auto apply = [&](ByteView p, size_t step, uint64_t lookahead, uint64_t* done) {
    MemoryOldSource src(old_bytes);
    VectorSink sink;
    ApplyLimits limits;
    limits.lookahead_memory = lookahead;
    PatchApplier applier(&src, &sink, limits);
    Status s;
    for (size_t pos = 0; pos < p.size() && s.ok(); pos += step) {
      s = applier.Write(p.subspan(pos, std::min(step, p.size() - pos)));
    }
    if (s.ok()) s = applier.Finish();
    *done = applier.segments_done();
    return std::make_pair(CodeOf(s), std::move(sink.bytes));
  };
  const uint64_t kOn = ApplyLimits{}.lookahead_memory;
  for (size_t step : {patch->size(), size_t{4096}, size_t{1}}) {
    for (uint64_t lookahead : {kOn, uint64_t{0}}) {
      uint64_t done = 0;
      auto [code, bytes] = apply(*patch, step, lookahead, &done);
      EXPECT_EQ(code, ErrorCode::kOk) << "step " << step << " lookahead " << lookahead;
      EXPECT_TRUE(bytes == neu) << "step " << step << " lookahead " << lookahead;
    }
  }
  // The end of segment 3's frame scrambled (the checksum recomputed, so the look-ahead decodes it).
  Bytes& payload = raw.segments[2].payload;
  for (size_t i = payload.size() - 8; i < payload.size(); ++i) payload[i] ^= 0x5C;
  const Bytes bad = testing::JoinPatch(raw);
  for (size_t step : {bad.size(), size_t{4096}}) {
    for (uint64_t lookahead : {kOn, uint64_t{0}}) {
      uint64_t done = 0;
      auto [code, bytes] = apply(bad, step, lookahead, &done);
      EXPECT_EQ(code, ErrorCode::kPatchDecompress) << "step " << step << " lookahead " << lookahead;
      EXPECT_EQ(done, 2u) << "step " << step << " lookahead " << lookahead;
      EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), neu.begin()));
    }
  }
}

TEST(PatchApplierTest, WrongBaseHashCheckedBesideTheFirstSegment) {
  // Above 1 MiB the old file is hashed on a second thread while the first segment is rebuilt:
  // still nothing reaches the sink, whether the patch arrives whole or a byte at a time.
  const Bytes old_bytes = RandomBytes(3 << 20, 21);
  Bytes neu = old_bytes;
  for (size_t i = 0; i < neu.size(); i += 4096) neu[i] ^= 0x5A;
  GenerateOptions opt;
  opt.segment_size = 1 << 20;
  Result<Bytes> patch = GeneratePatch(old_bytes, neu, opt);
  ASSERT_TRUE(patch.ok());
  for (size_t at : {size_t{0}, old_bytes.size() - 1}) {
    Bytes wrong = old_bytes;
    wrong[at] ^= 1;
    for (size_t step : {patch->size(), size_t{1}}) {
      MemoryOldSource src(wrong);
      VectorSink sink;
      PatchApplier applier(&src, &sink);
      Status s;
      for (size_t pos = 0; pos < patch->size() && s.ok(); pos += step) {
        s = applier.Write(ByteView(*patch).subspan(pos, std::min(step, patch->size() - pos)));
      }
      if (s.ok()) s = applier.Finish();
      EXPECT_EQ(CodeOf(s), ErrorCode::kPatchWrongBase) << "byte " << at << " step " << step;
      EXPECT_TRUE(sink.bytes.empty()) << "nothing may be written for a wrong base";
      EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchWrongBase);
    }
  }
  // The right base still applies, in any split.
  Result<Bytes> out = ApplyPatch(old_bytes, *patch);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu);
}

TEST(PatchApplierTest, WrongBaseWithoutHashCheckCaughtByOutputCrc) {
  const Fixture& f = SmallPatch();
  // A byte of the random block, which the copydiff segment copies.
  Bytes old_bytes = f.old_bytes;
  old_bytes[6000 + 500] ^= 1;
  ApplyLimits no_hash;
  no_hash.verify_old_hash = false;
  EXPECT_EQ(CodeOf(ApplyPatch(old_bytes, f.patch, no_hash)), ErrorCode::kPatchOutputMismatch);
  // A byte of the text, which the zstdref segment references: never a silent success.
  old_bytes = f.old_bytes;
  for (size_t i = 0; i < 6000; i += 7) old_bytes[i] ^= 0x11;
  EXPECT_FALSE(ApplyPatch(old_bytes, f.patch, no_hash).ok());
}

TEST(PatchApplierTest, TrailingData) {
  const Fixture& f = SmallPatch();
  Bytes p = f.patch;
  p.push_back(0);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchTrailingData);
  p = f.patch;
  p.insert(p.end(), f.patch.begin(), f.patch.end());
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchTrailingData);
}

TEST(PatchApplierTest, TrailingDataInLaterWrite) {
  const Fixture& f = SmallPatch();
  MemoryOldSource src(f.old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  ASSERT_TRUE(applier.Write(f.patch).ok());
  const uint8_t extra[] = {0};
  EXPECT_EQ(CodeOf(applier.Write(extra)), ErrorCode::kPatchTrailingData);
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchTrailingData);
}

TEST(PatchApplierTest, TrailingDataAfterEmptyResult) {
  const Bytes old_bytes = RandomBytes(100, 5);
  Result<Bytes> p = GeneratePatch(old_bytes, Bytes());
  ASSERT_TRUE(p.ok());
  Result<Bytes> empty = ApplyPatch(old_bytes, *p);
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->empty());
  p->push_back(1);
  EXPECT_EQ(CodeOf(ApplyPatch(old_bytes, *p)), ErrorCode::kPatchTrailingData);
}

TEST(PatchApplierTest, PatchExceedsApplyLimits) {
  const Fixture& f = SmallPatch();
  const FileHeader& h = f.raw.header;
  ASSERT_GT(h.max_ref_window, 0u);
  ApplyLimits limits;
  limits.max_segment_output = h.max_segment_output - 1;
  EXPECT_EQ(CodeOf(Apply(f.patch, limits)), ErrorCode::kResourceLimit);
  limits = ApplyLimits();
  limits.max_segment_payload = h.max_segment_payload - 1;
  EXPECT_EQ(CodeOf(Apply(f.patch, limits)), ErrorCode::kResourceLimit);
  limits = ApplyLimits();
  limits.max_ref_window = h.max_ref_window - 1;
  EXPECT_EQ(CodeOf(Apply(f.patch, limits)), ErrorCode::kResourceLimit);
  limits.max_segment_output = h.max_segment_output;
  limits.max_segment_payload = h.max_segment_payload;
  limits.max_ref_window = h.max_ref_window;
  EXPECT_TRUE(Apply(f.patch, limits).ok()) << "limits equal to the maxima are enough";
}

// A real copydiff patch whose header is rewritten to declare a shorter old file (with that
// file's hash): its copies now reach past the old file's end. Independent of the copydiff layout.
TEST(PatchApplierTest, CopyPastEndOfShorterOld) {
  const Bytes old_bytes = RandomBytes(4096, 6);
  Bytes neu = old_bytes;
  neu[100] ^= 1;
  GenerateOptions o;
  o.try_zstd_ref = false;
  o.stream_level = 1;
  Result<Bytes> p = GeneratePatch(old_bytes, neu, o);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(testing::CountMethods(*p).copydiff, 1u);
  ASSERT_TRUE(ApplyPatch(old_bytes, *p).ok());
  const Bytes shorter(old_bytes.begin(), old_bytes.end() - 96);
  RawPatch raw = testing::SplitPatch(*p);
  raw.header.old_size = shorter.size();
  raw.header.old_sha256 = Sha256::Of(shorter);
  raw.header.max_ref_window = 0;
  EXPECT_EQ(CodeOf(ApplyPatch(shorter, testing::JoinPatch(raw))), ErrorCode::kPatchMalformed);
}

TEST(PatchApplierTest, ResultShaMismatchInRealPatch) {
  RawPatch raw = SmallPatch().raw;
  raw.header.new_sha256[31] ^= 1;
  EXPECT_EQ(CodeOf(Apply(testing::JoinPatch(raw))), ErrorCode::kPatchResultMismatch);
}

// A flip anywhere must give an error or, if the byte does not matter, the right output; never
// wrong bytes with an OK status, and never a crash.
TEST(PatchApplierTest, ByteFlipAtEveryPositionNeverYieldsWrongOutput) {
  const Fixture& f = SmallPatch();
  int errors = 0, harmless = 0;
  for (size_t i = 0; i < f.patch.size(); ++i) {
    for (uint8_t mask : {0x01, 0x10, 0x80, 0xff}) {
      Bytes p = f.patch;
      p[i] ^= mask;
      Result<Bytes> out = Apply(p);
      if (out.ok()) {
        ASSERT_TRUE(*out == f.new_bytes)
            << "byte " << i << " mask " << int{mask} << ": OK status with wrong output";
        ++harmless;
      } else {
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0);
  EXPECT_LT(harmless, errors / 100 + 1) << "almost every flip should be detected";
}

TEST(PatchApplierTest, ByteFlipWhileStreamingNeverYieldsWrongOutput) {
  const Fixture& f = SmallPatch();
  for (size_t i = 0; i < f.patch.size(); i += 3) {
    Bytes p = f.patch;
    p[i] ^= 0x04;
    Result<Bytes> out = testing::ApplyInChunks(f.old_bytes, p, {1, 7, 64, 3});
    if (out.ok()) {
      ASSERT_TRUE(*out == f.new_bytes) << "byte " << i;
    }
  }
}

}  // namespace
}  // namespace ds::delta
