// Fuzzes VcdiffApplier with a patch pushed in random-size chunks; split runs must agree.
#include <cstddef>
#include <cstdint>
#include <optional>

#include "delta/delta.h"
#include "delta/vcdiff.h"
#include "fuzz_util.h"

namespace {

using ds::ByteView;
using ds::Status;
using ds::delta::ApplyLimits;

constexpr uint64_t kOutputCap = 8ull << 20;
// ApplyInput flag bit (besides kApplyTightLimits): the applier gets no old file at all.
constexpr uint8_t kVcdiffNoSource = 1 << 2;

struct Run {
  Status status;
  ds::Bytes output;
  uint64_t windows_done = 0;
};

Run ApplyChunked(const ds::fuzz::ApplyInput& in, const ApplyLimits& limits, bool chunked) {
  std::optional<ds::delta::MemoryOldSource> src;
  if (!(in.flags & kVcdiffNoSource)) src.emplace(in.old_bytes);
  ds::fuzz::CappedSink sink(kOutputCap);
  ds::delta::VcdiffApplier applier(src ? &*src : nullptr, &sink, limits);
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
  }
  FUZZ_CHECK(applier.output_bytes() == sink.bytes.size());
  run.windows_done = applier.windows_done();
  run.output = std::move(sink.bytes);
  return run;
}

}  // namespace

// Input layout: ApplyInput (fuzz_util.h), flags kApplyTightLimits and kVcdiffNoSource.
// Properties: chunked and one-piece runs agree on status, windows and output; errors are sticky;
// a patch the applier accepts, InspectVcdiff accepts with the same windows and target size, and
// ApplyPatch (format dispatch) rebuilds the same bytes.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ds::fuzz::ApplyInput in;
  if (!ds::fuzz::ParseApplyInput(ByteView(data, size), &in)) return 0;
  ApplyLimits limits;
  if (in.flags & ds::fuzz::kApplyTightLimits) {
    limits.max_segment_output = 4096;
    limits.max_segment_payload = 4096;
  } else {
    limits.max_segment_output = 1 << 20;
    limits.max_segment_payload = 1 << 20;
  }
  const Run chunked = ApplyChunked(in, limits, true);
  const Run whole = ApplyChunked(in, limits, false);
  // The result does not depend on how the patch was split.
  FUZZ_CHECK(chunked.status.code() == whole.status.code());
  FUZZ_CHECK(chunked.windows_done == whole.windows_done);
  FUZZ_CHECK(chunked.output == whole.output);
  if (whole.status.ok()) {
    ds::Result<ds::delta::VcdiffInfo> info = ds::delta::InspectVcdiff(in.patch);
    FUZZ_CHECK(info.ok());
    FUZZ_CHECK(info->windows.size() == whole.windows_done);
    FUZZ_CHECK(info->target_size == whole.output.size());
    FUZZ_CHECK(info->patch_size == in.patch.size());
    if (!(in.flags & kVcdiffNoSource) && whole.output.size() <= (1 << 20)) {
      ds::Result<ds::Bytes> again = ds::delta::ApplyPatch(in.old_bytes, in.patch, limits);
      FUZZ_CHECK(again.ok());
      FUZZ_CHECK(*again == whole.output);
    }
  }
  return 0;
}
