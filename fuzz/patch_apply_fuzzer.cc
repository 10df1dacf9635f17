// Fuzzes PatchApplier with a patch pushed in random-size chunks; split runs must agree.
#include <cstddef>
#include <cstdint>

#include "common/hash.h"
#include "delta/delta.h"
#include "fuzz_util.h"

namespace {

using ds::ByteView;
using ds::Status;
using ds::delta::ApplyLimits;

constexpr uint64_t kOutputCap = 8ull << 20;

struct Run {
  Status status;
  ds::Bytes output;
  uint64_t segments_done = 0;
};

Run ApplyChunked(const ds::fuzz::ApplyInput& in, const ApplyLimits& limits, bool chunked) {
  ds::delta::MemoryOldSource src(in.old_bytes);
  ds::fuzz::CappedSink sink(kOutputCap);
  ds::delta::PatchApplier applier(&src, &sink, limits);
  Run run;
  uint32_t rng = 0x9e3779b9u ^ in.chunk_seed;
  size_t pos = 0;
  while (pos < in.patch.size() && run.status.ok()) {
    const size_t left = in.patch.size() - pos;
    const size_t n = chunked ? ds::fuzz::NextPieceSize(&rng, left) : left;
    run.status = applier.Write(in.patch.subspan(pos, n));
    pos += n;
  }
  if (run.status.ok()) run.status = applier.Finish();
  // After an error every call repeats it.
  if (!run.status.ok()) {
    FUZZ_CHECK(applier.Finish().code() == run.status.code());
    FUZZ_CHECK(applier.Write(in.patch.first(in.patch.empty() ? 0 : 1)).code() == run.status.code());
  } else {
    FUZZ_CHECK(applier.header_parsed());
    FUZZ_CHECK(applier.output_bytes() == applier.header().new_size);
    FUZZ_CHECK(applier.segments_done() == applier.header().segment_count);
    FUZZ_CHECK(ds::Sha256::Of(sink.bytes) == applier.header().new_sha256);
  }
  run.segments_done = applier.segments_done();
  run.output = std::move(sink.bytes);
  return run;
}

}  // namespace

// Input layout: ApplyInput (fuzz_util.h). Properties: chunked and one-piece runs agree on status,
// segments and output; errors are sticky; success means the output matches the header's size and
// SHA-256 and that InspectPatch accepts the patch with the same segment count.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ds::fuzz::ApplyInput in;
  if (!ds::fuzz::ParseApplyInput(ByteView(data, size), &in)) return 0;
  ApplyLimits limits;
  limits.verify_old_hash = (in.flags & ds::fuzz::kApplyVerifyOldHash) != 0;
  if (in.flags & ds::fuzz::kApplyTightLimits) {
    limits.max_segment_output = 4096;
    limits.max_segment_payload = 4096;
    limits.max_ref_window = 4096;
    limits.max_decoded = 4096;
    limits.max_encoder_memory = 4 << 20;
  } else {
    limits.max_segment_output = 1 << 20;
    limits.max_segment_payload = 1 << 20;
    limits.max_ref_window = 1 << 20;
    limits.max_decoded = 1 << 20;
    // xz presets 0-1 (a few MiB each): fuzzing must not start encoders of hundreds of MiB.
    limits.max_encoder_memory = 16 << 20;
  }
  const Run chunked = ApplyChunked(in, limits, true);
  const Run whole = ApplyChunked(in, limits, false);
  // The result does not depend on how the patch was split.
  FUZZ_CHECK(chunked.status.code() == whole.status.code());
  FUZZ_CHECK(chunked.segments_done == whole.segments_done);
  FUZZ_CHECK(chunked.output == whole.output);
  if (whole.status.ok()) {
    // Whatever the applier accepts, the inspector accepts with the same shape.
    ds::Result<ds::delta::PatchInfo> info = ds::delta::InspectPatch(in.patch);
    FUZZ_CHECK(info.ok());
    FUZZ_CHECK(info->segments.size() == whole.segments_done);
    FUZZ_CHECK(info->header.new_size == whole.output.size());
  }
  return 0;
}
