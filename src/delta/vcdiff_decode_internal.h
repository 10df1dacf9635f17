// VCDIFF decoder internals shared by the streaming decoder (vcdiff_decoder.cc) and the inspector
// (vcdiff_inspect.cc): the file-header and window-header parsers. Not part of the public API.
//
// Both parsers work on a buffer that may hold only a prefix of the structure: they return OK with
// *consumed = 0 when more bytes are needed, an error as soon as the bytes present are invalid.
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_VCDIFF_DECODE_INTERNAL_H_
#define DELTASTREAM_DELTA_VCDIFF_DECODE_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/delta.h"
#include "delta/vcdiff_format.h"

namespace ds::delta::vcdiff {

// Caps on header parts that are buffered whole (kResourceLimit above them).
inline constexpr uint64_t kMaxAppHeader = 64 << 10;
inline constexpr uint64_t kMaxCodeTableData = 64 << 10;
// Memory the xz decoder of an lzma secondary section may use (xdelta3 -9 needs about 65 MiB).
inline constexpr uint64_t kLzmaMemLimit = 128 << 20;
// Win_Indicator, two segment integers, the delta length, the target length, Delta_Indicator,
// three section lengths and the Adler-32.
inline constexpr size_t kMaxWindowHeader = 1 + 2 * 10 + 10 + 10 + 1 + 3 * 10 + 4;

struct FileHeader {
  uint8_t indicator = 0;     // Hdr_Indicator.
  uint8_t secondary_id = 0;  // 0 unless VCD_DECOMPRESS.
  bool custom_table = false;
  uint32_t near_size = kDefaultNearSize;
  uint32_t same_size = kDefaultSameSize;
  CodeTable table{};  // The default table or the decoded application-defined one.
  Bytes app_header;
  size_t size = 0;  // Bytes of the header in the patch.
};

// Parses the VCDIFF file header at the start of |buf|, decoding an application-defined code
// table. When |buf| is a valid but incomplete prefix, returns OK with *consumed = 0 and sets
// *need to the buffer size worth retrying with. Errors: kPatchBadMagic, kPatchVersion,
// kPatchMalformed, kPatchUnknownMethod (unknown secondary id), kResourceLimit, and the window
// decoding errors of the code table's delta.
Status ParseFileHeader(ByteView buf, FileHeader* header, size_t* consumed, size_t* need);

struct WindowHeader {
  uint8_t win_indicator = 0;
  uint64_t segment_length = 0, segment_offset = 0;  // With VCD_SOURCE or VCD_TARGET.
  uint64_t delta_length = 0;                        // As stored.
  uint64_t target_length = 0;
  uint8_t delta_indicator = 0;
  uint64_t data_length = 0, inst_length = 0, addr_length = 0;
  bool has_adler32 = false;
  uint32_t adler32 = 0;
  size_t header_size = 0;  // Bytes from Win_Indicator to the start of the data section.

  // The data, instruction and address sections together (checked not to overflow).
  uint64_t body_length() const { return data_length + inst_length + addr_length; }
};

// Parses a window header (everything before the data section) at the start of |buf|; *consumed
// = 0 when more bytes are needed. Checks indicator bits and that the delta encoding length
// matches its parts. With |limits|, a delta encoding above max_segment_payload or a target
// window above max_segment_output is kResourceLimit, reported as soon as the field is read.
Status ParseWindowHeader(ByteView buf, const ApplyLimits* limits, WindowHeader* window,
                         size_t* consumed);

}  // namespace ds::delta::vcdiff

#endif  // DELTASTREAM_DELTA_VCDIFF_DECODE_INTERNAL_H_
