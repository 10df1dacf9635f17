// Reversible branch filters for executable code (segment transforms 1 and 2, docs/FORMAT.md).
//
// A filter rewrites the relative targets of branch instructions inside code regions into
// absolute ones, so that calls to the same function stay byte-equal when code between them moves.
// Both files are filtered before matching (generator); the applier reads the old file through the
// forward filter and runs the inverse filter on each rebuilt segment.
//
// The filter works on *pieces*: the intersections of a code region, a 64 KiB block of the file
// (aligned to file offset 0) and the range being filtered. Decisions inside a piece depend only
// on bytes of that piece, so filtering a whole file, a block or a segment gives the same bytes as
// long as the ranges are unions of pieces: the old file is always filtered in whole blocks, a new
// segment as one range (its own boundaries cut pieces too).
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_BRANCH_FILTER_H_
#define DELTASTREAM_DELTA_BRANCH_FILTER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "delta/patch_format.h"

namespace ds::delta {

inline constexpr uint64_t kFilterBlockSize = 64 << 10;

// Where the branch targets of the old file are in the new one: an old absolute target address
// is turned into a file offset through the old code regions, moved by the address map run that
// holds it, and turned back into an address through the new code regions.
class TargetMap {
 public:
  TargetMap() = default;
  // The inputs must be valid (ValidateCodeRegions; runs sorted and disjoint, as the header
  // parser ensures).
  TargetMap(std::vector<CodeRegion> old_regions, std::vector<CodeRegion> new_regions,
            std::vector<AddressRun> runs);
  // Where |old_target|, referenced from the instruction ending at |old_site|, is in the new
  // file. A target the map does not know (often not a branch at all, but bytes that looked like
  // one) moves with the instruction instead, so that it keeps its relative form.
  uint64_t Translate(uint64_t old_target, uint64_t old_site) const;
  bool empty() const { return runs_.empty(); }

 private:
  bool Map(uint64_t old_addr, uint64_t* new_addr) const;

  std::vector<CodeRegion> old_by_vaddr_;
  std::vector<CodeRegion> new_regions_;
  std::vector<AddressRun> runs_;
  // Runs by old offset, coarsely: page p (old offsets from p << page_shift_ on) starts its
  // search at run_page_[p], the last run starting at or before the page (at most 2^16 pages).
  std::vector<uint32_t> run_page_;
  int page_shift_ = 0;
};

// Applies transform |t| (kNone: nothing) to |data|, which holds the file bytes
// [file_pos, file_pos + data.size()). |encode| true: relative -> absolute; false: the inverse.
// |regions| must satisfy ValidateCodeRegions. With |map| (old file, encode only), each
// absolute target is also translated to where it is in the new file: the filtered old file then
// matches the filtered new file wherever code and its targets moved as the map says. (That
// direction needs no inverse: the applier only ever filters the old file forwards.)
// |convert_from| (a file offset): instructions that end at or before it are found but left as
// they are, for a caller that needs only the bytes from there on (the scan must still start at
// the filter block's start to find the same instruction boundaries). Bytes near the end of
// |data| are filtered as if the file ended there: a caller filtering part of a block keeps
// kFilterLookahead bytes beyond what it uses.
inline constexpr uint64_t kFilterLookahead = 16;
void ApplyBranchFilter(Transform t, const std::vector<CodeRegion>& regions, uint64_t file_pos,
                       std::span<uint8_t> data, bool encode, const TargetMap* map = nullptr,
                       uint64_t convert_from = 0);

// Where a filter may start inside the filter block at |block_start| (holding |block|, the file's
// bytes) and find the same instructions as a scan from the block's start: entry k is, for the
// offset k * kSyncStep of the block, the first position at or after it where the scan of its
// code piece looks for an instruction (the piece's end when none), or the offset itself outside
// code. Block-relative. Filtering old[s, ...) from such an s, with convert_from at least
// kSyncSlack bytes after it, gives the bytes from convert_from on exactly as the whole block.
inline constexpr uint64_t kSyncStep = 1024;
inline constexpr uint64_t kSyncSlack = 32;  // > the longest converted instruction (13 bytes).
std::vector<uint32_t> ScanSyncPoints(Transform t, const std::vector<CodeRegion>& regions,
                                     uint64_t block_start, ByteView block);

// Sorted by offset, non-empty, non-overlapping, inside a file of |file_size| bytes, at most
// kMaxCodeRegions. kPatchMalformed otherwise.
Status ValidateCodeRegions(const std::vector<CodeRegion>& regions, uint64_t file_size);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_BRANCH_FILTER_H_
