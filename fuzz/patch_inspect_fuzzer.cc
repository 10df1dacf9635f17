// Fuzzes InspectPatch: no crash, self-consistent results, never stricter than the applier.
#include <cstddef>
#include <cstdint>

#include "delta/delta.h"
#include "delta/patch_format.h"
#include "fuzz_util.h"

// Properties: an accepted patch is self-consistent (contiguous segments covering new_size, within
// the declared maxima and the input); the applier, on a zero-filled old file of the declared size
// with the hash check off, never accepts a patch the inspector rejects.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ds::ByteView patch(data, size);
  ds::Result<ds::delta::PatchInfo> info = ds::delta::InspectPatch(patch);
  if (info.ok()) {
    const ds::delta::PatchInfo& p = *info;
    FUZZ_CHECK(p.patch_size == size);
    FUZZ_CHECK(p.header_size > 0 && p.header_size <= size);
    FUZZ_CHECK(p.segments.size() == p.header.segment_count);
    uint64_t new_offset = 0, patch_offset = p.header_size;
    for (const ds::delta::SegmentInfo& s : p.segments) {
      FUZZ_CHECK(s.header.new_offset == new_offset);
      FUZZ_CHECK(s.header.new_length > 0);
      FUZZ_CHECK(s.header.new_length <= p.header.max_segment_output);
      FUZZ_CHECK(s.header.payload_length <= p.header.max_segment_payload);
      FUZZ_CHECK(s.patch_offset >= patch_offset);
      FUZZ_CHECK(s.patch_offset + s.header.payload_length <= size);
      new_offset += s.header.new_length;
      patch_offset = s.patch_offset + s.header.payload_length;
    }
    FUZZ_CHECK(new_offset == p.header.new_size);
  }

  // Differential check against the applier, when the declared old file is small.
  ds::delta::FileHeader header;
  size_t consumed = 0;
  if (!ds::delta::ParseFileHeader(patch, &header, &consumed).ok() || consumed == 0) return 0;
  if (header.old_size > (1 << 20)) return 0;
  const ds::Bytes old_bytes(header.old_size, 0);
  ds::delta::ApplyLimits limits;
  limits.verify_old_hash = false;
  limits.max_segment_output = 1 << 20;
  limits.max_segment_payload = 1 << 20;
  limits.max_ref_window = 1 << 20;
  ds::delta::MemoryOldSource src(old_bytes);
  ds::fuzz::CappedSink sink(8 << 20);
  ds::delta::PatchApplier applier(&src, &sink, limits);
  ds::Status s = applier.Write(patch);
  if (s.ok()) s = applier.Finish();
  if (s.ok()) FUZZ_CHECK(info.ok());
  return 0;
}
