// VCDIFF (RFC 3284) encoder (server side only; never linked into the agent).
//
// The encoder sees the whole old file through the same suffix array as GeneratePatch, rather
// than the sliding source window of xdelta3, and parses each target window optimally over blocks
// of 4 KiB (shortest path over positions, as LZMA's encoder does), choosing among: copies that
// continue one of the recent alignments with the old file, the longest match anywhere in the old
// file, copies of earlier bytes of the same window (addresses past the source segment), runs, and
// literal adds. Costs are the encoded sizes under the default code table and the address cache.
// Each window's source segment is the span of old bytes it copies, anywhere in the old file.
//
// Output decodes with `xdelta3 -d -s OLD` and with deltastream's own VcdiffApplier. By default it
// is plain RFC 3284 plus xdelta3's Adler-32 window checksum; `secondary_lzma` adds xdelta3's lzma
// secondary compression of the three sections (xdelta3-compatible, not plain RFC 3284).
//
// Memory: old + new + the suffix array (4 bytes per old byte) + per thread one window's sections.
//
// Thread-safety: EncodeVcdiff may be called concurrently; it runs its own worker threads.
#ifndef DELTASTREAM_DELTA_VCDIFF_GEN_H_
#define DELTASTREAM_DELTA_VCDIFF_GEN_H_

#include <cstdint>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

struct VcdiffEncodeOptions {
  // Target bytes per window. xdelta3 decodes windows of at most 16 MiB.
  uint64_t window_size = 8ull << 20;
  // Write xdelta3's Adler-32 of each target window (VCD_ADLER32, Win_Indicator bit 2). Decoders
  // that follow RFC 3284 to the letter reject unknown indicator bits; turn off for them.
  bool adler32 = true;
  // xdelta3's lzma secondary compression of each section, when it makes the section smaller.
  bool secondary_lzma = false;
  // Worker threads; 0 = one per core.
  int threads = 0;
};

struct VcdiffEncodeStats {
  uint64_t windows = 0;
  uint64_t adds = 0, add_bytes = 0;
  uint64_t copies = 0, copy_bytes = 0, target_copies = 0;
  uint64_t runs = 0;
  uint64_t data_bytes = 0, inst_bytes = 0, addr_bytes = 0;  // Sections before secondary coding.
  double suffix_sort_seconds = 0;
  double total_seconds = 0;
};

// Encodes |neu| as a VCDIFF delta against |old|.
Result<Bytes> EncodeVcdiff(ByteView old, ByteView neu, const VcdiffEncodeOptions& options = {},
                           VcdiffEncodeStats* stats = nullptr);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_VCDIFF_GEN_H_
