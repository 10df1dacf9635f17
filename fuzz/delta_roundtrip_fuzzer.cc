// Fuzzes GeneratePatch + ApplyPatch: every generated patch must rebuild the new file exactly.
#include <cstddef>
#include <cstdint>

#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "fuzz_util.h"

// Input layout: RoundTripFlags (fuzz_util.h); new is the tail, or the tail run as an edit script
// over old. Properties: GeneratePatch succeeds, ApplyPatch rebuilds new exactly, InspectPatch
// agrees, segments respect segment_size, and the patch is never much larger than storing new.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ds;
  if (size < fuzz::kRoundTripPrefixLen) return 0;
  const uint8_t flags = data[0];
  size_t old_len = fuzz::LoadU16(data + 1);
  ByteView rest(data + fuzz::kRoundTripPrefixLen, size - fuzz::kRoundTripPrefixLen);
  if (old_len > rest.size()) old_len = rest.size();
  const ByteView old_bytes = rest.first(old_len);
  const ByteView tail = rest.subspan(old_len);
  const Bytes neu = (flags & fuzz::kRoundTripEditScript) ? fuzz::RunEditScript(old_bytes, tail)
                                                         : Bytes(tail.begin(), tail.end());

  delta::GenerateOptions options;
  options.segment_size = 128ull << (flags & fuzz::kRoundTripSegmentShiftMask);
  options.whole_file_limit = (flags & fuzz::kRoundTripSmallWholeLimit) ? 0 : 64 << 10;
  options.segment_ref_window = 4096;
  options.max_ref_window = 64 << 10;
  options.try_zstd_ref = (flags & fuzz::kRoundTripZstdRef) != 0;
  options.stream_level = options.ref_level = (flags & fuzz::kRoundTripLevel3) ? 3 : 1;
  options.threads = 1;

  delta::GenerateStats stats;
  Result<Bytes> patch = delta::GeneratePatch(old_bytes, neu, options, &stats);
  if (!patch.ok()) {
    std::fprintf(stderr, "GeneratePatch failed: %s\n", patch.status().ToString().c_str());
    std::abort();
  }
  Result<Bytes> rebuilt = delta::ApplyPatch(old_bytes, *patch);
  if (!rebuilt.ok()) {
    std::fprintf(stderr, "ApplyPatch failed: %s\n", rebuilt.status().ToString().c_str());
    std::abort();
  }
  FUZZ_CHECK(*rebuilt == neu);
  Result<delta::PatchInfo> info = delta::InspectPatch(*patch);
  FUZZ_CHECK(info.ok());
  FUZZ_CHECK(info->segments.size() == stats.segments);
  // Segments respect segment_size, except a whole-file segment and deflate segments (one whole
  // deflate stream each).
  for (const delta::SegmentInfo& seg : info->segments) {
    FUZZ_CHECK(seg.header.new_length <= options.segment_size || info->segments.size() == 1 ||
               seg.header.transform == delta::Transform::kDeflate);
  }
  // Never much worse than shipping the file: header ~100 bytes, segment framing ~50 bytes.
  FUZZ_CHECK(patch->size() <= neu.size() + 160 + 48 * stats.segments);
  return 0;
}
