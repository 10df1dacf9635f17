// Tests PatchApplier on hand-built patches with valid checksums that break one semantic rule each.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/patch_format.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;
using testing::ControlEntry;
using testing::EncodeControl;
using testing::JoinPatch;
using testing::RandomBytes;
using testing::RawPatch;
using testing::RawSegment;
using testing::StoredCopyDiffPayload;
using testing::ZstdMagiclessFrame;

// A copydiff layout with three stored streams (codecs can then be changed per stream).
CopyDiffLayout CopyDiffOf(ByteView control, ByteView diff, ByteView literals) {
  CopyDiffLayout layout;
  const ByteView streams[3] = {control, diff, literals};
  for (int i = 0; i < 3; ++i) {
    layout.codec[i] = StreamCodec::kStored;
    layout.raw_len[i] = streams[i].size();
    layout.encoded[i] = streams[i];
  }
  return layout;
}

Bytes PayloadOf(const CopyDiffLayout& layout) {
  Bytes out;
  WriteCopyDiffPayload(layout, &out);
  return out;
}

class CraftedPatchTest : public ::testing::Test {
 protected:
  Result<Bytes> Apply(const RawPatch& p, const ApplyLimits& limits = {}) {
    return ApplyPatch(old_, JoinPatch(p), limits);
  }
  Result<Bytes> Apply(ByteView patch) { return ApplyPatch(old_, patch); }

  // A one-segment patch rebuilding neu_ from old_ with the given method and payload.
  RawPatch OneSegment(Method method, Bytes payload) {
    RawPatch p;
    p.header = testing::HeaderFor(old_, neu_, neu_.size());
    p.header.max_segment_payload = std::max<uint64_t>(payload.size(), 1);
    p.header.max_ref_window = old_.size();
    RawSegment seg;
    seg.header.new_offset = 0;
    seg.header.new_length = neu_.size();
    seg.header.method = method;
    seg.header.output_crc32c = Crc32c(neu_);
    seg.payload = std::move(payload);
    p.segments.push_back(std::move(seg));
    return p;
  }

  // A copydiff segment with raw streams: copy old_[10, 110) with zero diffs, then neu_'s tail.
  RawPatch ValidCopyDiff() {
    neu_.assign(old_.begin() + 10, old_.begin() + 110);
    const Bytes tail = testing::ToBytes("literal tail");
    neu_.insert(neu_.end(), tail.begin(), tail.end());
    const Bytes control = EncodeControl({{10, 100, tail.size()}});
    return OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(100, 0), tail));
  }

  Bytes old_ = RandomBytes(4096, 1);
  Bytes neu_ = RandomBytes(3000, 2);
};

// --- File header ------------------------------------------------------------------------------

TEST_F(CraftedPatchTest, StoredPatchApplies) {
  Result<Bytes> out = Apply(testing::StoredPatch(old_, neu_, 1000));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(CraftedPatchTest, AbsurdMaxSegmentOutputIsResourceLimit) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.new_size = 1ull << 50;
  p.header.max_segment_output = 1ull << 50;
  p.header.segment_count = 3;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kResourceLimit);
}

TEST_F(CraftedPatchTest, AbsurdMaxSegmentPayloadIsResourceLimit) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_segment_payload = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kResourceLimit);
}

TEST_F(CraftedPatchTest, AbsurdMaxRefWindowIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_ref_window = old_.size() + 1;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  p.header.max_ref_window = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, AbsurdNewSizeWithinLimitsIsStreamedNotAllocated) {
  // 2^40 result bytes in 2^20 segments of 1 MiB: within the per-segment limits, so the applier
  // starts, and must fail as truncated without reserving anything near the total.
  RawPatch p;
  p.header = testing::HeaderFor(old_, neu_, 1 << 20);
  p.header.new_size = 1ull << 40;
  p.header.segment_count = 1ull << 20;
  p.header.max_segment_output = 1 << 20;
  p.header.max_segment_payload = 1 << 20;
  const Bytes big = RandomBytes(1 << 20, 3);
  p.segments.push_back(testing::StoredSegment(big, 0, big.size()));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchTruncated);
}

TEST_F(CraftedPatchTest, MaxSegmentOutputAboveNewSizeIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_segment_output = neu_.size() + 1;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, ZeroMaxSegmentOutputIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_segment_output = 0;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, MoreSegmentsThanBytesIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.segment_count = neu_.size() + 1;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  p.header.segment_count = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, SegmentsCannotCoverResultIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.segment_count = 2;  // 2 x 1000 < 3000.
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, NoSegmentsForNonEmptyResultIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.segment_count = 0;
  p.segments.clear();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, SegmentsForEmptyResultIsMalformed) {
  neu_.clear();
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.segment_count = 1;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, UnknownHeaderFlagsAreMalformed) {
  // Bit 0 (code_regions) is known since 1.1, bit 1 (deflate) since 1.2; the next bits are not.
  for (uint64_t flag : {uint64_t{4}, uint64_t{8}, uint64_t{1} << 40}) {
    RawPatch p = testing::StoredPatch(old_, neu_, 1000);
    p.header.flags = flag;
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed) << flag;
  }
}

TEST_F(CraftedPatchTest, CodeRegionFlagWithEmptyTablesApplies) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.flags = kFlagCodeRegions;
  Result<Bytes> out = ApplyPatch(old_, JoinPatch(p));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(CraftedPatchTest, TransformWithoutTablesIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[2].header.transform = Transform::kX86Branch;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(InspectPatch(JoinPatch(p))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, UnknownAlgorithmIsUnknownMethod) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.algorithm = static_cast<Algorithm>(2);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod);
}

// Builds "DSPF" 1.0, a header length varint given as raw bytes, then |body| and a valid CRC.
Bytes HeaderWithLength(const Bytes& length_varint, const Bytes& body) {
  Bytes out(kPatchMagic.begin(), kPatchMagic.end());
  out.push_back(kFormatMajor);
  out.push_back(kFormatMinor);
  out.insert(out.end(), length_varint.begin(), length_varint.end());
  out.insert(out.end(), body.begin(), body.end());
  ByteWriter(&out).WriteU32Le(Crc32c(out));
  return out;
}

TEST_F(CraftedPatchTest, HeaderLengthAboveMaximumIsMalformed) {
  Bytes len;
  ByteWriter(&len).WriteVarint(kMaxFileHeaderLen + 1);
  EXPECT_EQ(CodeOf(Apply(HeaderWithLength(len, Bytes(kMaxFileHeaderLen - 3, 0)))),
            ErrorCode::kPatchMalformed);
  len.clear();
  ByteWriter(&len).WriteVarint(std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(CodeOf(Apply(HeaderWithLength(len, {}))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, HeaderLengthBelowChecksumSizeIsMalformed) {
  EXPECT_EQ(CodeOf(Apply(HeaderWithLength({3}, {}))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, HeaderLengthVarintTooLongIsMalformed) {
  EXPECT_EQ(CodeOf(Apply(HeaderWithLength(Bytes(12, 0x80), {}))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, HeaderFieldsTruncatedIsMalformed) {
  // A valid CRC over a body too short to hold the fields.
  EXPECT_EQ(CodeOf(Apply(HeaderWithLength({4 + 3}, {1, 0, 0}))), ErrorCode::kPatchMalformed);
}

// --- Segment framing --------------------------------------------------------------------------

TEST_F(CraftedPatchTest, SegmentGap) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[1] = testing::StoredSegment(neu_, 1001, 999);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, OverlappingSegments) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[1] = testing::StoredSegment(neu_, 999, 1000);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, SegmentsOutOfOrder) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  std::swap(p.segments[0], p.segments[1]);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, SegmentRunsPastResult) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  Bytes longer = neu_;
  longer.push_back(0);
  p.segments[2] = testing::StoredSegment(longer, 2000, 1001);
  p.header.max_segment_output = 1001;
  p.header.max_segment_payload = 1001;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, SegmentOffsetOverflow) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[0].header.new_offset = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, LastSegmentLeavesResultIncomplete) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.segment_count = 2;
  p.header.max_segment_output = 2000;
  p.segments.pop_back();  // Segments cover 2000 of 3000 bytes.
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, ResultCompleteBeforeLastDeclaredSegment) {
  RawPatch p = testing::StoredPatch(old_, neu_, 3000);
  p.header.segment_count = 2;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchSegmentOrder);
}

TEST_F(CraftedPatchTest, ZeroLengthSegmentIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  RawSegment empty;
  empty.header.new_offset = 1000;
  p.segments.insert(p.segments.begin() + 1, empty);
  p.header.segment_count = 4;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, SegmentLongerThanDeclaredMaximumIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_segment_output = 999;
  p.header.segment_count = 4;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, PayloadLargerThanDeclaredMaximumIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.max_segment_payload = 999;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, SegmentHeaderLengthAboveMaximumIsMalformed) {
  Bytes patch;
  WriteFileHeader(testing::HeaderFor(old_, neu_, neu_.size()), &patch);
  ByteWriter(&patch).WriteVarint(kMaxSegmentHeaderLen + 1);
  patch.resize(patch.size() + 400, 0);
  EXPECT_EQ(CodeOf(Apply(patch)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, SegmentHeaderFieldsTruncatedIsMalformed) {
  Bytes patch;
  WriteFileHeader(testing::HeaderFor(old_, neu_, neu_.size()), &patch);
  const size_t start = patch.size();
  ByteWriter w(&patch);
  w.WriteVarint(2);  // Two field bytes: not enough for the fields.
  w.WriteU8(0);
  w.WriteU8(0x10);
  w.WriteU32Le(Crc32c(ByteView(patch).subspan(start)));
  EXPECT_EQ(CodeOf(Apply(patch)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, StoredPayloadLengthDiffersFromRangeIsMalformed) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[1].payload.pop_back();
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, UnknownMethod) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[1].header.method = static_cast<Method>(200);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod);
  p.segments[1].header.method = static_cast<Method>(255);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod);
}

TEST_F(CraftedPatchTest, UnknownTransform) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[2].header.transform = static_cast<Transform>(kMaxTransform + 1);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod);
}

TEST_F(CraftedPatchTest, OutputCrcMismatch) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.segments[1].header.output_crc32c ^= 1;
  MemoryOldSource src(old_);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  EXPECT_EQ(CodeOf(applier.Write(JoinPatch(p))), ErrorCode::kPatchOutputMismatch);
  EXPECT_EQ(sink.bytes.size(), 1000u) << "the bad segment must not reach the sink";
}

TEST_F(CraftedPatchTest, ResultShaMismatch) {
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  p.header.new_sha256[0] ^= 1;
  MemoryOldSource src(old_);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  ASSERT_TRUE(applier.Write(JoinPatch(p)).ok()) << "segments are valid; only the total is wrong";
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kPatchResultMismatch);
}

TEST_F(CraftedPatchTest, EmptyResultWithWrongShaIsResultMismatch) {
  neu_.clear();
  RawPatch p = testing::StoredPatch(old_, neu_, 1000);
  ASSERT_TRUE(Apply(p).ok());
  p.header.new_sha256 = Sha256::Of(old_);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchResultMismatch);
}

// --- Copydiff payloads ------------------------------------------------------------------------

TEST_F(CraftedPatchTest, CraftedCopyDiffApplies) {
  // Guards the control-stream helper: if this fails, update testing::EncodeControl.
  Result<Bytes> out = Apply(ValidCopyDiff());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(CraftedPatchTest, CopyDiffWithDifferencesApplies) {
  neu_.assign(old_.begin(), old_.begin() + 64);
  Bytes diff(64, 0);
  for (size_t i = 0; i < 64; i += 5) {
    diff[i] = static_cast<uint8_t>(i + 1);
    neu_[i] = static_cast<uint8_t>(neu_[i] + diff[i]);
  }
  const Bytes control = EncodeControl({{0, 64, 0}});
  Result<Bytes> out =
      Apply(OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, diff, {})));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(CraftedPatchTest, CopyOutOfRange) {
  neu_ = Bytes(20, 0);
  const Bytes control = EncodeControl({{static_cast<int64_t>(old_.size()) - 10, 20, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(20), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyStartsPastOldEnd) {
  neu_ = Bytes(1, 0);
  const Bytes control = EncodeControl({{static_cast<int64_t>(old_.size()) + 5, 1, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(1), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyNegativeOffset) {
  neu_ = Bytes(10, 0);
  const Bytes control = EncodeControl({{-1, 10, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(10), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyOffsetOverflow) {
  neu_ = Bytes(20, 0);
  const int64_t max = std::numeric_limits<int64_t>::max();
  const Bytes control = EncodeControl({{100, 10, 0}, {max, 10, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(20), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  const Bytes control2 = EncodeControl({{std::numeric_limits<int64_t>::min(), 10, 0}});
  const RawPatch p2 = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control2, Bytes(20), {}));
  EXPECT_EQ(CodeOf(Apply(p2)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyLengthOverflow) {
  neu_ = Bytes(10, 0);
  const Bytes control = EncodeControl({{0, std::numeric_limits<uint64_t>::max(), 11}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(10), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  const Bytes control2 = EncodeControl({{0, 5, std::numeric_limits<uint64_t>::max() - 2}});
  const RawPatch p2 = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control2, Bytes(5), {}));
  EXPECT_EQ(CodeOf(Apply(p2)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, ControlEntryOverrunsSegment) {
  neu_ = Bytes(10, 0);
  const Bytes control = EncodeControl({{0, 10, 0}, {0, 1, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(10), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, ControlEntryOverrunsDiffStream) {
  neu_ = Bytes(10, 0);
  const Bytes control = EncodeControl({{0, 10, 0}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, Bytes(9), {}));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, ControlEntryOverrunsLiteralStream) {
  neu_ = Bytes(10, 0);
  const Bytes control = EncodeControl({{0, 0, 10}});
  const RawPatch p = OneSegment(Method::kCopyDiff, StoredCopyDiffPayload(control, {}, Bytes(9)));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffStreamsDoNotAddUp) {
  RawPatch p = ValidCopyDiff();
  // Valid control, but an unused extra literal byte.
  const Bytes control = EncodeControl({{10, 100, 12}});
  Bytes lit = testing::ToBytes("literal tail!");
  p.segments[0].payload = StoredCopyDiffPayload(control, Bytes(100, 0), lit);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
  // Control ends before the segment is full.
  const Bytes short_control = EncodeControl({{10, 100, 0}});
  p.segments[0].payload = StoredCopyDiffPayload(short_control, Bytes(100, 0), {});
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, EmptyControlEntryIsMalformed) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{0, 0, 0}, {10, 100, 12}});
  p.segments[0].payload =
      StoredCopyDiffPayload(control, Bytes(100, 0), testing::ToBytes("literal tail"));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, TruncatedControlStreamIsMalformed) {
  RawPatch p = ValidCopyDiff();
  Bytes control = EncodeControl({{10, 100, 12}});
  control.push_back(0x80);  // A varint that never ends.
  p.segments[0].payload =
      StoredCopyDiffPayload(control, Bytes(100, 0), testing::ToBytes("literal tail"));
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffStreamTableTruncatedIsMalformed) {
  RawPatch p = ValidCopyDiff();
  p.segments[0].payload = {0x00, 0x05};  // Stored codec, raw length 5, no encoded length.
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffStoredStreamLengthMismatchIsMalformed) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  CopyDiffLayout layout = CopyDiffOf(control, Bytes(100, 0), lit);
  layout.raw_len[kDiffStream] = 101;  // Stored, yet encoded (100) != raw (101).
  p.segments[0].payload = PayloadOf(layout);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffCompressedStreamNotSmallerThanRawIsMalformed) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  CopyDiffLayout layout = CopyDiffOf(control, Bytes(100, 0), lit);
  layout.codec[kDiffStream] = StreamCodec::kZstd;  // A "compressed" stream as long as its raw.
  p.segments[0].payload = PayloadOf(layout);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffUnknownStreamCodec) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  for (uint8_t codec : {200, 255}) {
    CopyDiffLayout layout = CopyDiffOf(control, Bytes(100, 0), lit);
    layout.codec[kLiteralStream] = static_cast<StreamCodec>(codec);
    p.segments[0].payload = PayloadOf(layout);
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod) << "codec " << int{codec};
  }
}
// --- Zero-run streams (DSPF 1.3) ----------------------------------------------------------------

TEST(ZeroRunForm, RoundTripsEdgeCases) {
  Bytes sparse(5000, 0);
  for (size_t i = 7; i < sparse.size(); i += 97) sparse[i] = static_cast<uint8_t>(i | 1);
  Bytes dense = RandomBytes(300, 3);
  for (auto& b : dense) b |= 1;
  const std::vector<Bytes> cases = {{},        {0},   {5},    Bytes(1000, 0), {0, 0, 9, 9, 0},
                                    {9, 0, 9}, dense, sparse, Bytes(3, 7)};
  for (const Bytes& raw : cases) {
    Bytes form;
    ZeroRunEncode(raw, &form);
    Bytes back(raw.size(), 0xEE);
    ASSERT_TRUE(ZeroRunDecode(form, back).ok()) << raw.size();
    EXPECT_TRUE(back == raw) << raw.size();
  }
  Bytes form;
  ZeroRunEncode(sparse, &form);
  EXPECT_LT(form.size() * 10, sparse.size());  // 52 runs of one byte in 5,000.
}

TEST(ZeroRunForm, HostileFormsAreMalformed) {
  Bytes out(10);
  const std::vector<Bytes> bad = {
      {0x03},                          // Truncated pair.
      {0x80},                          // Truncated varint.
      {0x00, 0x00},                    // Empty pair.
      {0x0B, 0x00},                    // 11 zeros into 10 bytes.
      {0x05, 0x06, 1, 2, 3, 4, 5, 6},  // 5 + 6 bytes into 10.
      {0x02, 0x03, 1, 2},              // Count says 3 bytes, the form holds 2.
      {0x04, 0x01, 7},                 // Fills 5 of 10 bytes.
      {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x01, 0x01},  // 2^64-1 zeros.
  };
  for (const Bytes& form : bad) {
    EXPECT_EQ(ZeroRunDecode(form, out).code(), ErrorCode::kPatchMalformed) << ToHex(form);
  }
}

// ValidCopyDiff's diff stream, coded in zero-run form (stored or zstd).
class ZeroRunPatchTest : public CraftedPatchTest {
 protected:
  RawPatch WithDiff(const std::function<void(CopyDiffLayout&)>& edit = {}) {
    neu_.assign(old_.begin(), old_.begin() + 600);
    diff_.assign(600, 0);
    for (size_t i = 3; i < 600; i += 41) {
      diff_[i] = 0x10;  // Repeating pairs: the form compresses.
      neu_[i] = static_cast<uint8_t>(neu_[i] + diff_[i]);
    }
    control_ = EncodeControl({{0, 600, 0}});
    ZeroRunEncode(diff_, &form_);
    CopyDiffLayout layout = CopyDiffOf(control_, diff_, {});
    layout.zero_run[kDiffStream] = true;
    layout.form_len[kDiffStream] = form_.size();
    layout.encoded[kDiffStream] = form_;
    if (edit) edit(layout);
    return OneSegment(Method::kCopyDiff, PayloadOf(layout));
  }
  Bytes diff_, control_, form_, frame_;
};

TEST_F(ZeroRunPatchTest, StoredFormApplies) {
  Result<Bytes> out = Apply(WithDiff());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(ZeroRunPatchTest, CompressedFormApplies) {
  Result<Bytes> out = Apply(WithDiff([&](CopyDiffLayout& l) {
    frame_ = ZstdMagiclessFrame(form_);
    ASSERT_LT(frame_.size(), form_.size());
    l.codec[kDiffStream] = StreamCodec::kZstd;
    l.encoded[kDiffStream] = frame_;
  }));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(ZeroRunPatchTest, FormNotShorterThanStreamIsMalformed) {
  for (uint64_t form_len : {uint64_t{0}, uint64_t{600}, uint64_t{601}}) {
    RawPatch p = WithDiff([&](CopyDiffLayout& l) { l.form_len[kDiffStream] = form_len; });
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed) << form_len;
  }
}

TEST_F(ZeroRunPatchTest, StoredFormLengthMismatchIsMalformed) {
  RawPatch p = WithDiff([&](CopyDiffLayout& l) { l.form_len[kDiffStream] += 1; });
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(ZeroRunPatchTest, FormExpandingPastItsStreamIsMalformed) {
  // The form describes 601 bytes where the stream table says 600.
  RawPatch p = WithDiff([&](CopyDiffLayout& l) {
    Bytes longer = diff_;
    longer.push_back(0);
    form_.clear();
    ZeroRunEncode(longer, &form_);
    l.form_len[kDiffStream] = form_.size();
    l.encoded[kDiffStream] = form_;
  });
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(ZeroRunPatchTest, FormShortOfItsStreamIsMalformed) {
  RawPatch p = WithDiff([&](CopyDiffLayout& l) { l.raw_len[kDiffStream] = 700; });
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(ZeroRunPatchTest, UnknownCodecBitsAreUnknownMethod) {
  RawPatch p = WithDiff();
  Bytes& payload = p.segments[0].payload;
  // Payload: control's table entry (codec, raw, encoded), then the diff's codec byte.
  ByteReader r(payload);
  uint8_t codec;
  uint64_t v;
  ASSERT_TRUE(r.ReadU8(&codec) && r.ReadVarint(&v) && r.ReadVarint(&v));
  const size_t at = r.position();
  ASSERT_EQ(payload[at], kCodecZeroRun);
  for (uint8_t bits : {0x20, 0x40, 0x80}) {
    payload[at] = static_cast<uint8_t>(kCodecZeroRun | bits);
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchUnknownMethod) << int{bits};
  }
}

TEST_F(CraftedPatchTest, CopyDiffStreamOverrunsPayloadIsMalformed) {
  RawPatch p = ValidCopyDiff();
  p.segments[0].payload.resize(p.segments[0].payload.size() - 1);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, BytesAfterCopyDiffStreamsAreMalformed) {
  RawPatch p = ValidCopyDiff();
  p.segments[0].payload.push_back(0);
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, CopyDiffStreamsLargerThanSegmentAreMalformed) {
  neu_ = Bytes(10, 0);
  // Declared raw sizes far above the segment, with a tiny "compressed" body: rejected before
  // anything is decompressed or allocated.
  for (StreamCodec codec : {StreamCodec::kZstd, StreamCodec::kLzma2}) {
    for (int stream : {kControlStream, kDiffStream, kLiteralStream}) {
      const Bytes body = {0x00};
      CopyDiffLayout layout = CopyDiffOf({}, {}, {});
      layout.codec[stream] = codec;
      layout.raw_len[stream] = 1ull << 40;
      layout.encoded[stream] = body;
      EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kCopyDiff, PayloadOf(layout)))),
                ErrorCode::kPatchMalformed)
          << "stream " << stream;
    }
  }
}

TEST_F(CraftedPatchTest, ControlStreamLongerThanTheApplierHoldsIsResourceLimit) {
  // Within the format's 30 bytes per output byte, but longer than the output + 64 KiB that this
  // applier holds: refused before anything is decompressed or allocated.
  neu_ = RandomBytes(4000, 5);
  for (StreamCodec codec : {StreamCodec::kZstd, StreamCodec::kLzma2}) {
    const Bytes body = {0x00};
    CopyDiffLayout layout = CopyDiffOf({}, {}, {});
    layout.codec[kControlStream] = codec;
    layout.raw_len[kControlStream] = neu_.size() + (64 << 10) + 1;
    layout.encoded[kControlStream] = body;
    EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kCopyDiff, PayloadOf(layout)))),
              ErrorCode::kResourceLimit);
  }
}

TEST_F(CraftedPatchTest, GarbageZstdStreamIsDecompressError) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const Bytes garbage = RandomBytes(10 + 8 * seed, 9 + seed);  // Fewer bytes than the raw 100.
    CopyDiffLayout layout = CopyDiffOf(control, garbage, lit);
    layout.codec[kDiffStream] = StreamCodec::kZstd;
    layout.raw_len[kDiffStream] = 100;
    p.segments[0].payload = PayloadOf(layout);
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchDecompress) << "seed " << seed;
  }
}

TEST_F(CraftedPatchTest, GarbageLzma2StreamIsDecompressError) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const Bytes garbage = RandomBytes(10 + 8 * seed, 29 + seed);
    CopyDiffLayout layout = CopyDiffOf(control, garbage, lit);
    layout.codec[kDiffStream] = StreamCodec::kLzma2;
    layout.raw_len[kDiffStream] = 100;
    p.segments[0].payload = PayloadOf(layout);
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchDecompress) << "seed " << seed;
  }
}

TEST_F(CraftedPatchTest, ZstdStreamOfWrongSizeIsDecompressError) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes lit = testing::ToBytes("literal tail");
  for (size_t actual : {99, 101}) {
    // A valid frame whose content is shorter or longer than the declared 100 raw bytes.
    const Bytes frame = ZstdMagiclessFrame(Bytes(actual, 0));
    ASSERT_LT(frame.size(), 100u);
    CopyDiffLayout layout = CopyDiffOf(control, frame, lit);
    layout.codec[kDiffStream] = StreamCodec::kZstd;
    layout.raw_len[kDiffStream] = 100;
    p.segments[0].payload = PayloadOf(layout);
    EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchDecompress) << actual;
  }
}

TEST_F(CraftedPatchTest, ZstdCompressedStreamApplies) {
  RawPatch p = ValidCopyDiff();
  const Bytes control = EncodeControl({{10, 100, 12}});
  const Bytes frame = ZstdMagiclessFrame(Bytes(100, 0));
  const Bytes lit = testing::ToBytes("literal tail");
  CopyDiffLayout layout = CopyDiffOf(control, frame, lit);
  layout.codec[kDiffStream] = StreamCodec::kZstd;
  layout.raw_len[kDiffStream] = 100;
  p.segments[0].payload = PayloadOf(layout);
  Result<Bytes> out = Apply(p);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

// --- Zstdref payloads -------------------------------------------------------------------------

TEST_F(CraftedPatchTest, CraftedZstdRefApplies) {
  neu_.assign(old_.begin() + 500, old_.begin() + 1500);
  neu_.push_back(42);
  const Bytes frame = ZstdMagiclessFrame(neu_, ByteView(old_).subspan(400, 2000));
  Bytes payload;
  WriteZstdRefPayload(400, 2000, frame, &payload);
  Result<Bytes> out = Apply(OneSegment(Method::kZstdRef, payload));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == neu_);
}

TEST_F(CraftedPatchTest, ZstdRefWindowOutOfRange) {
  const Bytes frame = ZstdMagiclessFrame(neu_, ByteView(old_).subspan(100, 1000));
  const struct {
    uint64_t offset, length;
  } windows[] = {
      {old_.size() - 999, 1000},                  // Ends one byte past the old file.
      {old_.size() + 1, 0},                       // Starts past the end.
      {std::numeric_limits<uint64_t>::max(), 2},  // Offset + length overflows.
      {1, std::numeric_limits<uint64_t>::max()},  // Absurd length.
  };
  for (const auto& w : windows) {
    Bytes payload;
    WriteZstdRefPayload(w.offset, w.length, frame, &payload);
    EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, payload))), ErrorCode::kPatchMalformed)
        << w.offset << "+" << w.length;
  }
}

TEST_F(CraftedPatchTest, ZstdRefWindowAboveDeclaredMaximum) {
  const Bytes frame = ZstdMagiclessFrame(neu_, ByteView(old_).subspan(0, 1000));
  Bytes payload;
  WriteZstdRefPayload(0, 1000, frame, &payload);
  RawPatch p = OneSegment(Method::kZstdRef, payload);
  p.header.max_ref_window = 999;
  EXPECT_EQ(CodeOf(Apply(p)), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, ZstdRefPayloadTruncatedIsMalformed) {
  EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, {0x80}))), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, {0x01}))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, GarbageZstdFrame) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Bytes payload;
    WriteZstdRefPayload(0, 100, RandomBytes(1 + seed * 13, 100 + seed), &payload);
    EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, payload))), ErrorCode::kPatchDecompress)
        << "seed " << seed;
  }
}

TEST_F(CraftedPatchTest, GarbageLzmaRefStream) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Bytes payload;
    WriteZstdRefPayload(0, 100, RandomBytes(1 + seed * 13, 200 + seed), &payload);
    EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kLzmaRef, payload))), ErrorCode::kPatchDecompress)
        << "seed " << seed;
  }
}

TEST_F(CraftedPatchTest, LzmaRefWindowOutOfRange) {
  Bytes payload;
  WriteZstdRefPayload(old_.size() - 10, 11, RandomBytes(20, 3), &payload);
  EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kLzmaRef, payload))), ErrorCode::kPatchMalformed);
}

TEST_F(CraftedPatchTest, EmptyZstdFrameIsDecompressError) {
  Bytes payload;
  WriteZstdRefPayload(0, 100, {}, &payload);
  EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, payload))), ErrorCode::kPatchDecompress);
}

TEST_F(CraftedPatchTest, ZstdFrameWithMagicIsDecompressError) {
  // A standard frame (with magic number) where a magicless one is required.
  Bytes frame = ZstdMagiclessFrame(neu_);
  Bytes with_magic = {0x28, 0xb5, 0x2f, 0xfd};
  with_magic.insert(with_magic.end(), frame.begin(), frame.end());
  Bytes payload;
  WriteZstdRefPayload(0, 0, with_magic, &payload);
  EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, payload))), ErrorCode::kPatchDecompress);
}

TEST_F(CraftedPatchTest, ZstdFrameOfWrongLengthIsDecompressError) {
  for (size_t len : {neu_.size() - 1, neu_.size() + 1}) {
    Bytes content = neu_;
    content.resize(len, 7);
    Bytes payload;
    WriteZstdRefPayload(0, 0, ZstdMagiclessFrame(content), &payload);
    EXPECT_EQ(CodeOf(Apply(OneSegment(Method::kZstdRef, payload))), ErrorCode::kPatchDecompress)
        << "content " << len << " for a " << neu_.size() << "-byte segment";
  }
}

TEST_F(CraftedPatchTest, ZstdRefAgainstWrongWindowNeverSucceeds) {
  neu_.assign(old_.begin() + 500, old_.begin() + 1500);
  const Bytes frame = ZstdMagiclessFrame(neu_, ByteView(old_).subspan(400, 2000));
  Bytes payload;
  WriteZstdRefPayload(401, 2000, frame, &payload);  // Shifted by one byte.
  EXPECT_FALSE(Apply(OneSegment(Method::kZstdRef, payload)).ok());
}

}  // namespace
}  // namespace ds::delta
