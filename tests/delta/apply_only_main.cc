// A device-like program linked against ds_delta_apply alone: builds a stored patch and applies it.
#include <cstdio>
#include <string_view>

#include "common/hash.h"
#include "delta/delta.h"
#include "delta/patch_format.h"

int main() {
  using namespace ds;
  const std::string_view old_text = "the old version";
  const std::string_view new_text = "the new version, a little longer";
  const ByteView old_bytes = AsBytes(old_text), new_bytes = AsBytes(new_text);

  delta::FileHeader header;
  header.old_size = old_bytes.size();
  header.old_sha256 = Sha256::Of(old_bytes);
  header.new_size = new_bytes.size();
  header.new_sha256 = Sha256::Of(new_bytes);
  header.segment_count = 1;
  header.max_segment_output = new_bytes.size();
  header.max_segment_payload = new_bytes.size();
  delta::SegmentHeader seg;
  seg.new_length = new_bytes.size();
  seg.method = delta::Method::kStored;
  seg.output_crc32c = Crc32c(new_bytes);

  Bytes patch;
  delta::WriteFileHeader(header, &patch);
  delta::WriteSegment(seg, new_bytes, &patch);
  Result<Bytes> rebuilt = delta::ApplyPatch(old_bytes, patch);
  if (!rebuilt.ok()) {
    std::fprintf(stderr, "apply failed: %s\n", rebuilt.status().ToString().c_str());
    return 1;
  }
  if (*rebuilt != Bytes(new_bytes.begin(), new_bytes.end())) {
    std::fprintf(stderr, "apply produced the wrong bytes\n");
    return 1;
  }
  std::printf("applied a %zu-byte patch with the apply-only library\n", patch.size());
  return 0;
}
