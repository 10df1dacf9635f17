// Tests that PatchApplier output does not depend on how the patch is split across Write calls.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;
using testing::RandomBytes;

struct Fixture {
  Bytes old_bytes, new_bytes, patch;
};

// A patch with many segments of all three methods (stored, copydiff, zstdref).
const Fixture& MixedPatch() {
  static const Fixture f = [] {
    Fixture x;
    x.old_bytes = testing::TextBytes(40 << 10, 1);
    const Bytes random_old = RandomBytes(20 << 10, 2);
    x.old_bytes.insert(x.old_bytes.end(), random_old.begin(), random_old.end());
    x.new_bytes = testing::TextBytes(30 << 10, 3);  // Text with another word order: zstdref.
    x.new_bytes.insert(x.new_bytes.end(), random_old.begin(), random_old.end());  // copydiff
    x.new_bytes[x.new_bytes.size() - 100] ^= 1;
    const Bytes fresh = RandomBytes(9000, 4);  // stored
    x.new_bytes.insert(x.new_bytes.end(), fresh.begin(), fresh.end());
    GenerateOptions o;
    o.segment_size = 4096;
    o.whole_file_limit = 0;
    o.segment_ref_window = 16 << 10;
    o.stream_level = 3;
    o.ref_level = 3;
    Result<Bytes> p = GeneratePatch(x.old_bytes, x.new_bytes, o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    x.patch = std::move(p).value();
    const testing::MethodCounts counts = testing::CountMethods(x.patch);
    EXPECT_GT(counts.stored, 0u);
    EXPECT_GT(counts.copydiff, 0u);
    EXPECT_GT(counts.ref, 0u);
    return x;
  }();
  return f;
}

// Feeds |f.patch| with the given piece sizes (0 means an empty write) into a fresh applier.
Result<Bytes> ApplyWithPieces(const Fixture& f, const std::vector<size_t>& pieces) {
  MemoryOldSource src(f.old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  size_t pos = 0;
  for (size_t n : pieces) {
    n = std::min(n, f.patch.size() - pos);
    DS_RETURN_IF_ERROR(applier.Write(ByteView(f.patch).subspan(pos, n)));
    pos += n;
  }
  if (pos != f.patch.size()) return Error(ErrorCode::kInternal, "pieces do not cover the patch");
  DS_RETURN_IF_ERROR(applier.Finish());
  return std::move(sink.bytes);
}

TEST(PatchSplitTest, WholePatchInOneWrite) {
  const Fixture& f = MixedPatch();
  Result<Bytes> out = ApplyWithPieces(f, {f.patch.size()});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
}

TEST(PatchSplitTest, OneByteWrites) {
  const Fixture& f = MixedPatch();
  Result<Bytes> out = testing::ApplyInChunks(f.old_bytes, f.patch, {1});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
}

TEST(PatchSplitTest, RandomSplitPoints) {
  const Fixture& f = MixedPatch();
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<size_t> pieces;
    size_t total = 0;
    while (total < f.patch.size()) {
      // Mostly small pieces (header-sized), sometimes empty, sometimes large.
      size_t n;
      switch (rng() % 4) {
        case 0:
          n = rng() % 4;
          break;
        case 1:
          n = rng() % 40;
          break;
        case 2:
          n = rng() % 700;
          break;
        default:
          n = rng() % 8000;
          break;
      }
      pieces.push_back(n);
      total += n;
    }
    Result<Bytes> out = ApplyWithPieces(f, pieces);
    ASSERT_TRUE(out.ok()) << "trial " << trial << ": " << out.status().ToString();
    ASSERT_TRUE(*out == f.new_bytes) << "trial " << trial;
  }
}

TEST(PatchSplitTest, SplitAtEveryPosition) {
  const Fixture& f = MixedPatch();
  for (size_t split = 0; split <= f.patch.size(); ++split) {
    Result<Bytes> out = ApplyWithPieces(f, {split, f.patch.size() - split});
    ASSERT_TRUE(out.ok()) << "split " << split << ": " << out.status().ToString();
    ASSERT_TRUE(*out == f.new_bytes) << "split " << split;
  }
}

TEST(PatchSplitTest, EmptyWritesAreHarmless) {
  const Fixture& f = MixedPatch();
  std::vector<size_t> pieces;
  for (size_t i = 0; i < f.patch.size(); i += 13) {
    pieces.push_back(0);
    pieces.push_back(13);
  }
  pieces.push_back(0);
  Result<Bytes> out = ApplyWithPieces(f, pieces);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
}

// A sink that records every Write, to check segments arrive in order and whole.
class RecordingSink : public OutputSink {
 public:
  Status Write(ByteView data) override {
    writes.push_back(data.size());
    bytes.insert(bytes.end(), data.begin(), data.end());
    return Status::Ok();
  }
  std::vector<size_t> writes;
  Bytes bytes;
};

TEST(PatchSplitTest, SinkReceivesOneWritePerSegmentInOrder) {
  const Fixture& f = MixedPatch();
  Result<PatchInfo> info = InspectPatch(f.patch);
  ASSERT_TRUE(info.ok());
  MemoryOldSource src(f.old_bytes);
  RecordingSink sink;
  PatchApplier applier(&src, &sink);
  EXPECT_FALSE(applier.header_parsed());
  ASSERT_TRUE(applier.Write(ByteView(f.patch).first(info->header_size)).ok());
  EXPECT_TRUE(applier.header_parsed());
  EXPECT_EQ(applier.header().new_size, f.new_bytes.size());
  EXPECT_EQ(applier.segments_done(), 0u);
  // Segment by segment: progress advances exactly at segment ends.
  for (size_t i = 0; i < info->segments.size(); ++i) {
    const size_t begin = info->segments[i].patch_offset;
    const size_t end =
        i + 1 < info->segments.size() ? info->segments[i + 1].patch_offset : f.patch.size();
    ASSERT_TRUE(applier.Write(ByteView(f.patch).subspan(begin, end - begin - 1)).ok());
    EXPECT_EQ(applier.segments_done(), i);
    ASSERT_TRUE(applier.Write(ByteView(f.patch).subspan(end - 1, 1)).ok());
    EXPECT_EQ(applier.segments_done(), i + 1);
    EXPECT_EQ(applier.output_bytes(),
              info->segments[i].header.new_offset + info->segments[i].header.new_length);
  }
  ASSERT_TRUE(applier.Finish().ok());
  ASSERT_EQ(sink.writes.size(), info->segments.size());
  for (size_t i = 0; i < sink.writes.size(); ++i) {
    EXPECT_EQ(sink.writes[i], info->segments[i].header.new_length);
  }
  EXPECT_TRUE(sink.bytes == f.new_bytes);
}

TEST(PatchSplitTest, VectorSinkMatchesApplyPatch) {
  const Fixture& f = MixedPatch();
  MemoryOldSource src(f.old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  ASSERT_TRUE(applier.Write(f.patch).ok());
  ASSERT_TRUE(applier.Finish().ok());
  Result<Bytes> direct = ApplyPatch(f.old_bytes, f.patch);
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE(sink.bytes == *direct);
  EXPECT_TRUE(sink.bytes == f.new_bytes);
}

class FailingSink : public OutputSink {
 public:
  explicit FailingSink(int fail_at) : fail_at_(fail_at) {}
  Status Write(ByteView data) override {
    if (++calls_ == fail_at_) return Error(ErrorCode::kNoSpace, "disk full");
    return Status::Ok();
  }

 private:
  int fail_at_;
  int calls_ = 0;
};

TEST(PatchSplitTest, SinkErrorIsReturnedAndSticky) {
  const Fixture& f = MixedPatch();
  MemoryOldSource src(f.old_bytes);
  FailingSink sink(3);
  PatchApplier applier(&src, &sink);
  Status s = Status::Ok();
  size_t pos = 0;
  for (; pos < f.patch.size() && s.ok(); pos += 100) {
    s = applier.Write(ByteView(f.patch).subspan(pos, std::min<size_t>(100, f.patch.size() - pos)));
  }
  EXPECT_EQ(CodeOf(s), ErrorCode::kNoSpace);
  EXPECT_EQ(applier.segments_done(), 2u);
  // Every later call reports the same error, even with valid bytes.
  EXPECT_EQ(CodeOf(applier.Write(ByteView(f.patch).subspan(pos, 1))), ErrorCode::kNoSpace);
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kNoSpace);
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kNoSpace);
}

class FailingOldSource : public OldSource {
 public:
  explicit FailingOldSource(ByteView data) : inner_(data) {}
  uint64_t size() const override { return inner_.size(); }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    if (++reads_ > allowed_) return Error(ErrorCode::kIoError, "device read error");
    return inner_.ReadAt(offset, out);
  }
  void Allow(int n) { allowed_ = n; }

 private:
  MemoryOldSource inner_;
  mutable int reads_ = 0;
  int allowed_ = 0;
};

TEST(PatchSplitTest, OldReadErrorIsReturned) {
  const Fixture& f = MixedPatch();
  FailingOldSource src(f.old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  EXPECT_EQ(CodeOf(applier.Write(f.patch)), ErrorCode::kIoError);
  EXPECT_EQ(CodeOf(applier.Finish()), ErrorCode::kIoError);
}

TEST(PatchSplitTest, OldReadErrorAfterHashCheckIsReturned) {
  const Fixture& f = MixedPatch();
  FailingOldSource src(f.old_bytes);
  src.Allow(1);  // The whole old file (< 1 MiB) is hashed in one read.
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  EXPECT_EQ(CodeOf(applier.Write(f.patch)), ErrorCode::kIoError);
  EXPECT_LT(sink.bytes.size(), f.new_bytes.size());
}

TEST(PatchSplitTest, FinishTwiceAfterSuccess) {
  const Fixture& f = MixedPatch();
  MemoryOldSource src(f.old_bytes);
  VectorSink sink;
  PatchApplier applier(&src, &sink);
  ASSERT_TRUE(applier.Write(f.patch).ok());
  ASSERT_TRUE(applier.Finish().ok());
  EXPECT_EQ(CodeOf(applier.Write(ByteView(f.patch).first(1))), ErrorCode::kPatchTrailingData);
}

TEST(PatchSplitTest, SkippingOldHashCheckStillRebuilds) {
  const Fixture& f = MixedPatch();
  ApplyLimits limits;
  limits.verify_old_hash = false;
  Result<Bytes> out = ApplyPatch(f.old_bytes, f.patch, limits);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(*out == f.new_bytes);
}

}  // namespace
}  // namespace ds::delta

namespace ds::delta {
namespace {

// An applier continued from another applier's checkpoint rebuilds the same file.
TEST(ApplyCheckpointTest, ResumesFromEveryCheckpoint) {
  const Bytes old_data = testing::RandomBytes(1 << 20, 21);
  Bytes new_data = old_data;
  for (size_t i = 0; i < new_data.size(); i += 50000) new_data[i] ^= 0x5a;
  GenerateOptions options;
  options.segment_size = 128 << 10;
  options.whole_file_limit = 0;
  Result<Bytes> patch = GeneratePatch(old_data, new_data, options);
  ASSERT_TRUE(patch.ok());
  MemoryOldSource old(old_data);

  std::vector<ApplyCheckpoint> checkpoints;
  VectorSink full;
  PatchApplier first(&old, &full);
  first.SetCheckpointCallback([&](const ApplyCheckpoint& cp) {
    EXPECT_EQ(cp.output_bytes, full.bytes.size());  // Called after the output was written.
    checkpoints.push_back(cp);
    return Status::Ok();
  });
  // Odd piece sizes: checkpoints do not depend on where writes split.
  for (size_t pos = 0; pos < patch->size(); pos += 7777) {
    ASSERT_TRUE(
        first.Write(ByteView(*patch).subspan(pos, std::min<size_t>(7777, patch->size() - pos)))
            .ok());
  }
  ASSERT_TRUE(first.Finish().ok());
  ASSERT_EQ(full.bytes, new_data);
  ASSERT_GE(checkpoints.size(), 4u);
  const uint64_t header = first.header_size();

  for (const ApplyCheckpoint& cp : checkpoints) {
    if (cp.segments_done == first.header().segment_count) continue;  // The end is no resume.
    SCOPED_TRACE(cp.segments_done);
    VectorSink out;
    out.bytes.assign(new_data.begin(), new_data.begin() + cp.output_bytes);
    PatchApplier again(&old, &out);
    ASSERT_TRUE(again.Write(ByteView(*patch).first(header)).ok());
    ASSERT_TRUE(again.ResumeAt(cp).ok());
    ASSERT_TRUE(again.Write(ByteView(*patch).subspan(cp.patch_offset)).ok());
    ASSERT_TRUE(again.Finish().ok());
    EXPECT_EQ(out.bytes, new_data);
  }

  // A checkpoint that does not fit is refused.
  VectorSink out;
  PatchApplier wrong(&old, &out);
  ASSERT_TRUE(wrong.Write(ByteView(*patch).first(header)).ok());
  ApplyCheckpoint bad = checkpoints[0];
  bad.segments_done = first.header().segment_count;
  EXPECT_EQ(wrong.ResumeAt(bad).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(wrong.ResumeAt({header, 1, 10}).code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds::delta
