// HashIndex: longest-match queries against an old text through hash chains (generator only).
//
// A cheaper index than the suffix array for large texts whose matches are long and many: built in
// one pass (4 bytes per text byte for the links, plus at most 16 MiB of chain heads), where
// suffix-sorting costs about five times as long. A query walks the positions whose first
// kMinMatch bytes hash like the needle's, nearest the end of the text first (inside a run of one
// byte value, only the run's start), and keeps the longest match among the first kMaxChain of
// them (stopping early at kGoodMatch bytes), so a match shorter than kMinMatch bytes is never
// found and a long one is not always the longest — what a bsdiff-style matcher needs, since it
// only acts on matches that beat the alignment in force by several bytes and re-probes inside a
// long match.
//
// Thread-safety: immutable after Build(); LongestMatch may be called from many threads.
#ifndef DELTASTREAM_DELTA_HASH_INDEX_H_
#define DELTASTREAM_DELTA_HASH_INDEX_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

class HashIndex {
 public:
  static constexpr uint64_t kMinMatch = 8;
  static constexpr int kMaxChain = 32;
  static constexpr uint64_t kGoodMatch = 1024;

  // |text| must outlive the index; kResourceLimit at 4 GiB and above (32-bit links).
  static Result<HashIndex> Build(ByteView text);

  // Length of the longest prefix of |needle| found (0 when none of kMinMatch bytes is); |*pos| is
  // where (0 when none).
  uint64_t LongestMatch(ByteView needle, uint64_t* pos) const;
  ByteView text() const { return text_; }

 private:
  uint32_t Hash(const uint8_t* p) const;

  ByteView text_;
  int shift_ = 64;
  std::vector<uint32_t> head_;  // Per hash: 1 + the last position with it (0: none).
  std::vector<uint32_t> next_;  // Per position: 1 + the previous position with its hash.
};

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_HASH_INDEX_H_
