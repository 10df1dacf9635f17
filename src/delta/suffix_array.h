// SuffixArray: longest-match queries against the old file (generator only).
//
// Built with libdivsufsort (32-bit indices below 2 GiB, the 64-bit variant above), so memory is
// 4 bytes per old byte (8 above 2 GiB) on top of the text itself, which it borrows, plus a 512 KiB
// table of where each two-byte prefix starts.
//
// Thread-safety: immutable after Build(); LongestMatch may be called from many threads.
#ifndef DELTASTREAM_DELTA_SUFFIX_ARRAY_H_
#define DELTASTREAM_DELTA_SUFFIX_ARRAY_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

class SuffixArray {
 public:
  // |text| must outlive the suffix array.
  static Result<SuffixArray> Build(ByteView text);

  // Length of the longest prefix of |needle| that occurs in the text; |*pos| is where.
  // Returns 0 (and *pos = 0) when the text is empty or no byte matches.
  uint64_t LongestMatch(ByteView needle, uint64_t* pos) const;

  ByteView text() const { return text_; }

 private:
  template <typename Idx>
  uint64_t Search(const std::vector<Idx>& sa, ByteView needle, uint64_t* pos) const;
  void BuildBuckets();

  ByteView text_;
  std::vector<int32_t> sa32_;
  std::vector<int64_t> sa64_;
  // bucket_[k]: where the suffixes starting with the two bytes k (big-endian) begin in the suffix
  // array; bucket_[k + 1] is where they end. A search starts inside its needle's bucket, ~16
  // fewer steps of the binary search (each a cache miss on large texts). Empty below 2 bytes.
  std::vector<uint64_t> bucket_;
};

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_SUFFIX_ARRAY_H_
