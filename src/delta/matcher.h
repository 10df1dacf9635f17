// The copy/diff matcher (generator only): splits a range of the new file into "copy from old with
// a byte-wise difference, then literal bytes" operations, bsdiff-style.
//
// Exact matches come from the suffix array (or a hash index); each is then extended forwards and
// backwards while the extension keeps more than half of its bytes equal, so that code whose
// embedded addresses shifted still lands in one copy whose difference bytes are mostly zero.
//
// Thread-safety: pure functions over immutable inputs.
#ifndef DELTASTREAM_DELTA_MATCHER_H_
#define DELTASTREAM_DELTA_MATCHER_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "delta/hash_index.h"
#include "delta/suffix_array.h"

namespace ds::delta {

// new[out, out + copy_len) = old[old_pos, +copy_len) + diff; then lit_len literal bytes.
struct CopyOp {
  uint64_t old_pos = 0;
  uint64_t copy_len = 0;
  uint64_t lit_len = 0;
};

struct MatchOptions {
  // An exact match must beat the current alignment by this many bytes to start a new copy.
  uint64_t min_gain = 8;
};

// Ops covering new[begin, end) exactly, in order.
std::vector<CopyOp> MatchRange(const SuffixArray& sa, ByteView neu, uint64_t begin, uint64_t end,
                               const MatchOptions& options = {});
// The same through a hash index (cheaper to build, matches of HashIndex::kMinMatch bytes up).
std::vector<CopyOp> MatchRange(const HashIndex& index, ByteView neu, uint64_t begin, uint64_t end,
                               const MatchOptions& options = {});

// Drops copies that cost more than they save: a short copy that jumps away from the alignment
// in force costs two far offsets in the control stream, which can exceed what its bytes would
// cost as literals (|literal_cost| compressed bytes per literal byte: ~0.3 for text, ~0.7 for
// machine code). Such copies become literals of the operation before them.
void PruneCopies(std::vector<CopyOp>* ops, uint64_t begin, double literal_cost);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_MATCHER_H_
