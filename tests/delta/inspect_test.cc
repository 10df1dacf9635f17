// Tests InspectPatch: segment descriptions and framing/order/checksum errors without the old file.
#include <gtest/gtest.h>

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
  GenerateStats stats;
  GenerateOptions options;
};

const Fixture& MixedPatch() {
  static const Fixture f = [] {
    Fixture x;
    const Bytes random_old = RandomBytes(8192, 2);
    x.old_bytes = testing::TextBytes(12000, 1);
    x.old_bytes.insert(x.old_bytes.end(), random_old.begin(), random_old.end());
    x.new_bytes = testing::TextBytes(4096, 3);
    x.new_bytes.insert(x.new_bytes.end(), random_old.begin(), random_old.end());
    x.new_bytes[5000] ^= 1;
    const Bytes fresh = RandomBytes(4096, 4);  // Parts are multiples of the segment size.
    x.new_bytes.insert(x.new_bytes.end(), fresh.begin(), fresh.end());
    x.options.segment_size = 4096;
    x.options.whole_file_limit = 0;
    x.options.segment_ref_window = 8192;
    x.options.stream_level = 3;
    x.options.ref_level = 3;
    Result<Bytes> p = GeneratePatch(x.old_bytes, x.new_bytes, x.options, &x.stats);
    EXPECT_TRUE(p.ok());
    x.patch = std::move(p).value();
    return x;
  }();
  return f;
}

TEST(InspectPatchTest, DescribesHeader) {
  const Fixture& f = MixedPatch();
  Result<PatchInfo> info = InspectPatch(f.patch);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  const FileHeader& h = info->header;
  EXPECT_EQ(h.major, kFormatMajor);
  // No transform used: written as a 1.0 patch, or 1.3 when a stream is in zero-run form.
  EXPECT_EQ(h.minor, UsesZeroRunStreams(*info) ? 3 : 0);
  EXPECT_EQ(h.algorithm, Algorithm::kGeneric);
  EXPECT_EQ(h.old_size, f.old_bytes.size());
  EXPECT_EQ(h.new_size, f.new_bytes.size());
  EXPECT_EQ(h.old_sha256, Sha256::Of(f.old_bytes));
  EXPECT_EQ(h.new_sha256, Sha256::Of(f.new_bytes));
  EXPECT_EQ(h.segment_count, f.stats.segments);
  EXPECT_LE(h.max_segment_output, f.options.segment_size);
  EXPECT_GE(h.segment_count, (f.new_bytes.size() - 1) / f.options.segment_size + 1);
  EXPECT_EQ(info->patch_size, f.patch.size());
  EXPECT_GT(info->header_size, 70u);
}

TEST(InspectPatchTest, DescribesSegments) {
  const Fixture& f = MixedPatch();
  Result<PatchInfo> info = InspectPatch(f.patch);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->segments.size(), f.stats.segments);
  uint64_t expected_offset = 0, max_payload = 0, max_ref = 0;
  size_t expected_patch_offset = info->header_size;
  uint64_t methods[256] = {};
  for (const SegmentInfo& s : info->segments) {
    EXPECT_EQ(s.header.new_offset, expected_offset);
    EXPECT_GT(s.header.new_length, 0u);
    EXPECT_LE(s.header.new_length, info->header.max_segment_output);
    EXPECT_EQ(s.header.output_crc32c,
              Crc32c(ByteView(f.new_bytes).subspan(s.header.new_offset, s.header.new_length)));
    EXPECT_EQ(s.patch_offset, expected_patch_offset) << "segments are back to back";
    ++methods[static_cast<int>(s.header.method)];
    if (s.header.method == Method::kCopyDiff) {
      EXPECT_LE(s.stream_raw[kDiffStream] + s.stream_raw[kLiteralStream], s.header.new_length);
      uint64_t encoded = 0;
      for (int k = 0; k < 3; ++k) {
        EXPECT_LE(s.stream_encoded[k], s.stream_raw[k]) << "compression never expands a stream";
        encoded += s.stream_encoded[k];
      }
      EXPECT_LT(encoded, s.header.payload_length);
    }
    if (s.header.method == Method::kZstdRef || s.header.method == Method::kLzmaRef) {
      EXPECT_GT(s.ref_length, 0u);
      EXPECT_LE(s.ref_offset + s.ref_length, f.old_bytes.size());
      max_ref = std::max(max_ref, s.ref_length);
    }
    max_payload = std::max(max_payload, s.header.payload_length);
    expected_offset += s.header.new_length;
    // The next segment follows this one's payload; header size is between 1+8+4 and 270 bytes.
    expected_patch_offset = s.patch_offset;
    const auto next = &s + 1;
    if (next != info->segments.data() + info->segments.size()) {
      const size_t gap = next->patch_offset - s.patch_offset - s.header.payload_length;
      EXPECT_GE(gap, 13u);
      EXPECT_LE(gap, 270u);
      expected_patch_offset = next->patch_offset;
    }
  }
  EXPECT_EQ(expected_offset, f.new_bytes.size());
  EXPECT_EQ(max_payload, info->header.max_segment_payload);
  EXPECT_EQ(max_ref, info->header.max_ref_window);
  const uint64_t ref =
      methods[static_cast<int>(Method::kZstdRef)] + methods[static_cast<int>(Method::kLzmaRef)];
  EXPECT_EQ(methods[static_cast<int>(Method::kStored)], f.stats.stored_segments);
  EXPECT_EQ(methods[static_cast<int>(Method::kCopyDiff)], f.stats.copydiff_segments);
  EXPECT_EQ(methods[static_cast<int>(Method::kStored)] +
                methods[static_cast<int>(Method::kCopyDiff)] + ref,
            f.stats.segments);
  EXPECT_GT(methods[static_cast<int>(Method::kStored)], 0u);
  EXPECT_GT(methods[static_cast<int>(Method::kCopyDiff)], 0u);
  EXPECT_GT(ref, 0u);
}

TEST(InspectPatchTest, EmptyResultHasNoSegments) {
  const Bytes old_bytes = RandomBytes(10, 1);
  Result<Bytes> p = GeneratePatch(old_bytes, {});
  ASSERT_TRUE(p.ok());
  Result<PatchInfo> info = InspectPatch(*p);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_TRUE(info->segments.empty());
  EXPECT_EQ(info->header.new_size, 0u);
  EXPECT_EQ(info->header_size, p->size());
}

TEST(InspectPatchTest, BadMagic) {
  Bytes p = MixedPatch().patch;
  p[0] = 'X';
  EXPECT_EQ(CodeOf(InspectPatch(p)), ErrorCode::kPatchBadMagic);
  EXPECT_EQ(CodeOf(InspectPatch(testing::ToBytes("not a patch at all"))),
            ErrorCode::kPatchBadMagic);
}

TEST(InspectPatchTest, EmptyInputIsTruncated) {
  EXPECT_EQ(CodeOf(InspectPatch(ByteView{})), ErrorCode::kPatchTruncated);
}

TEST(InspectPatchTest, HeaderChecksumMismatch) {
  Bytes p = MixedPatch().patch;
  p[20] ^= 1;
  EXPECT_EQ(CodeOf(InspectPatch(p)), ErrorCode::kPatchChecksum);
}

TEST(InspectPatchTest, SegmentChecksumMismatch) {
  const Fixture& f = MixedPatch();
  Result<PatchInfo> info = InspectPatch(f.patch);
  ASSERT_TRUE(info.ok());
  for (size_t i = 0; i < info->segments.size(); ++i) {
    // The last payload byte of segment i.
    const size_t end =
        i + 1 < info->segments.size() ? info->segments[i + 1].patch_offset : f.patch.size();
    Bytes p = f.patch;
    p[end - 1] ^= 0x40;
    EXPECT_EQ(CodeOf(InspectPatch(p)), ErrorCode::kPatchChecksum) << "segment " << i;
  }
}

TEST(InspectPatchTest, EveryPayloadByteFlipIsChecksumMismatch) {
  const Fixture& f = MixedPatch();
  const RawPatch raw = testing::SplitPatch(f.patch);
  for (const auto& seg : raw.segments) {
    const size_t start = seg.offset + seg.header_bytes;
    for (size_t i = start - 4; i < start + seg.payload.size(); i += 7) {
      Bytes p = f.patch;
      p[i] ^= 0x08;
      ASSERT_EQ(CodeOf(InspectPatch(p)), ErrorCode::kPatchChecksum) << "byte " << i;
    }
  }
}

TEST(InspectPatchTest, TruncatedAtEveryLength) {
  const Fixture& f = MixedPatch();
  for (size_t len = 0; len < f.patch.size(); ++len) {
    ASSERT_EQ(CodeOf(InspectPatch(ByteView(f.patch).first(len))), ErrorCode::kPatchTruncated)
        << "length " << len;
  }
}

TEST(InspectPatchTest, TrailingData) {
  Bytes p = MixedPatch().patch;
  p.push_back(0);
  EXPECT_EQ(CodeOf(InspectPatch(p)), ErrorCode::kPatchTrailingData);
}

TEST(InspectPatchTest, SegmentGap) {
  const Bytes old_bytes = RandomBytes(100, 1), neu = RandomBytes(300, 2);
  RawPatch p = testing::StoredPatch(old_bytes, neu, 100);
  p.segments[1] = testing::StoredSegment(neu, 101, 99);
  EXPECT_EQ(CodeOf(InspectPatch(testing::JoinPatch(p))), ErrorCode::kPatchSegmentOrder);
}

TEST(InspectPatchTest, SegmentsAboveDeclaredMaximaAreMalformed) {
  const Bytes old_bytes = RandomBytes(100, 1), neu = RandomBytes(300, 2);
  RawPatch p = testing::StoredPatch(old_bytes, neu, 100);
  p.header.max_segment_payload = 99;
  EXPECT_EQ(CodeOf(InspectPatch(testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
}

TEST(InspectPatchTest, UnknownMethod) {
  const Bytes old_bytes = RandomBytes(100, 1), neu = RandomBytes(300, 2);
  RawPatch p = testing::StoredPatch(old_bytes, neu, 100);
  p.segments[2].header.method = static_cast<Method>(9);
  EXPECT_EQ(CodeOf(InspectPatch(testing::JoinPatch(p))), ErrorCode::kPatchUnknownMethod);
}

TEST(InspectPatchTest, MalformedCopyDiffPayload) {
  const Bytes old_bytes = RandomBytes(100, 1), neu = RandomBytes(300, 2);
  RawPatch p = testing::StoredPatch(old_bytes, neu, 100);
  p.segments[1].header.method = Method::kCopyDiff;
  p.segments[1].payload.resize(3);  // Stream table cut short.
  EXPECT_EQ(CodeOf(InspectPatch(testing::JoinPatch(p))), ErrorCode::kPatchMalformed);
}

// Inspect does not rebuild the output, so it cannot see a wrong output CRC; apply does.
TEST(InspectPatchTest, OutputCrcNotCheckedWithoutOldFile) {
  const Bytes old_bytes = RandomBytes(100, 1), neu = RandomBytes(300, 2);
  RawPatch p = testing::StoredPatch(old_bytes, neu, 100);
  p.segments[1].header.output_crc32c ^= 1;
  const Bytes patch = testing::JoinPatch(p);
  EXPECT_TRUE(InspectPatch(patch).ok());
  EXPECT_EQ(CodeOf(ApplyPatch(old_bytes, patch)), ErrorCode::kPatchOutputMismatch);
}

TEST(InspectPatchTest, AgreesWithApplierOnEveryByteFlip) {
  // Inspect checks every checksum the applier checks before decoding, so whenever inspect
  // accepts a damaged patch the applier must still produce the right bytes or fail.
  const Fixture& f = MixedPatch();
  for (size_t i = 0; i < f.patch.size(); i += 5) {
    Bytes p = f.patch;
    p[i] ^= 0x21;
    const bool inspect_ok = InspectPatch(p).ok();
    Result<Bytes> out = ApplyPatch(f.old_bytes, p);
    if (out.ok()) {
      ASSERT_TRUE(*out == f.new_bytes) << "byte " << i;
      EXPECT_TRUE(inspect_ok) << "applier accepted what inspect rejected, byte " << i;
    }
  }
}

}  // namespace
}  // namespace ds::delta
