// VCDIFF (RFC 3284) on the apply side: a streaming decoder, whole-patch inspection, and format
// detection. deltastream reads every RFC 3284 feature (VCD_SOURCE / VCD_TARGET windows, the
// default and application-defined code tables, the address cache) plus xdelta3's extensions
// (application header, Adler-32 window checksum, lzma secondary compression). xdelta3's djw and
// fgk secondary compressors have no maintained library and are refused by name.
// docs/VCDIFF.md is the description of what is read and written.
//
// Memory is bounded by one window: its delta encoding (<= ApplyLimits::max_segment_payload) and
// its target (<= ApplyLimits::max_segment_output), checked before the window's body is buffered.
// Source bytes are read from the OldSource with positional reads; VCD_TARGET windows read earlier
// output back through OutputSink::ReadBack.
//
// Thread-safety: a VcdiffApplier is used by one thread at a time.
#ifndef DELTASTREAM_DELTA_VCDIFF_H_
#define DELTASTREAM_DELTA_VCDIFF_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/delta.h"

namespace ds::delta {

enum class PatchFormat { kUnknown, kDspf, kVcdiff };
// Looks at the first bytes of a patch (4 are enough).
PatchFormat DetectPatchFormat(ByteView prefix);
const char* PatchFormatName(PatchFormat f);

class VcdiffApplier {
 public:
  // |old| may be null when the patch has no VCD_SOURCE window (kPatchWrongBase otherwise).
  // |old| and |out| must outlive the applier.
  VcdiffApplier(const OldSource* old, OutputSink* out, ApplyLimits limits = {});
  ~VcdiffApplier();
  VcdiffApplier(const VcdiffApplier&) = delete;
  VcdiffApplier& operator=(const VcdiffApplier&) = delete;

  // Consumes the next bytes of the patch; any split gives the same result. After an error every
  // later call returns that error.
  Status Write(ByteView data);
  // Succeeds only at a window boundary after the header (kPatchTruncated otherwise).
  Status Finish();

  uint64_t windows_done() const;
  uint64_t output_bytes() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Applies a VCDIFF patch in memory.
Result<Bytes> ApplyVcdiff(ByteView old, ByteView patch, const ApplyLimits& limits = {});

struct VcdiffWindowInfo {
  uint64_t patch_offset = 0;    // Where the window starts in the patch.
  uint8_t win_indicator = 0;    // VCD_SOURCE / VCD_TARGET / VCD_ADLER32 bits.
  uint64_t segment_offset = 0;  // Source or target segment copied from, if any.
  uint64_t segment_length = 0;
  uint64_t target_offset = 0;  // Where the window's output starts in the target.
  uint64_t target_length = 0;
  uint8_t delta_indicator = 0;  // Which sections are secondary-compressed.
  uint64_t data_length = 0, inst_length = 0, addr_length = 0;  // As stored.
  bool has_adler32 = false;
  uint32_t adler32 = 0;
};

struct VcdiffInfo {
  uint8_t hdr_indicator = 0;
  uint8_t secondary_id = 0;  // 0 when none.
  bool custom_code_table = false;
  Bytes app_header;  // xdelta3's application header (file names), if present.
  uint64_t header_size = 0;
  uint64_t patch_size = 0;
  uint64_t target_size = 0;
  std::vector<VcdiffWindowInfo> windows;
};

// Walks a whole VCDIFF patch without the source: checks framing and section lengths.
Result<VcdiffInfo> InspectVcdiff(ByteView patch);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_VCDIFF_H_
