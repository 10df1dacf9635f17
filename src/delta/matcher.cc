#include "delta/matcher.h"

#include <algorithm>
#include <type_traits>

namespace ds::delta {
namespace {

// Sparse probing: after 2^kMissShift probes without finding a new alignment of kUsefulMatch bytes
// the step grows by one, up to kMaxStep.
constexpr int64_t kUsefulMatch = 16;
constexpr int kMissShift = 8;
constexpr int64_t kMaxStep = 8;

template <typename Index>
std::vector<CopyOp> MatchWith(const Index& sa, ByteView neu, uint64_t begin, uint64_t end,
                              const MatchOptions& options) {
  const ByteView old = sa.text();
  const int64_t n = static_cast<int64_t>(old.size());
  const int64_t e = static_cast<int64_t>(end);
  const uint8_t* o = old.data();
  const uint8_t* w = neu.data();
  // Does new[i] equal old[i + offset]?
  auto same_at = [&](int64_t i, int64_t offset) {
    const int64_t j = i + offset;
    return j >= 0 && j < n && o[j] == w[i];
  };

  std::vector<CopyOp> ops;
  int64_t scan = static_cast<int64_t>(begin);
  int64_t len = 0;
  int64_t pos = 0;
  // The alignment in force: the previous copy started at last_scan in new, last_pos in old.
  int64_t last_scan = scan;
  int64_t last_pos = n > 0 ? std::min<int64_t>(scan, n - 1) : 0;
  int64_t last_offset = last_pos - last_scan;

  // Probes since the last one that found a useful new alignment. In regions where nothing useful
  // matches (new or incompressible data) or where the alignment in force explains what the
  // suffix array finds about as well (tables of shifted addresses: relocations, unwind tables),
  // probing grows ever more sparse: a long match missed at one position is still found from a
  // later probe inside it and then recovered by the backward extension below.
  int64_t misses = 0;
  while (scan < e) {
    int64_t old_score = 0;  // Bytes of new[scan, scan+len) that the current alignment matches.
    scan += len;
    int64_t scored_to = scan;
    for (int64_t step = 1; scan < e; scan += step) {
      uint64_t p;
      len = static_cast<int64_t>(
          sa.LongestMatch(ByteView(w + scan, static_cast<size_t>(e - scan)), &p));
      pos = static_cast<int64_t>(p);
      if constexpr (std::is_same_v<Index, HashIndex>) {
        // Below the index's shortest match: the alignment in force's own match, which the suffix
        // array would have found as a continuation.
        if (len < static_cast<int64_t>(HashIndex::kMinMatch)) {
          int64_t k = 0;
          while (scan + k < e && same_at(scan + k, last_offset)) ++k;
          if (k > len) {
            len = k;
            pos = scan + last_offset;
          }
        }
      }
      for (; scored_to < scan + len; ++scored_to) old_score += same_at(scored_to, last_offset);
      // Take the new match when the current alignment explains it no worse (a continuation), or
      // when it beats the alignment clearly.
      if ((len == old_score && len != 0) ||
          len > old_score + static_cast<int64_t>(options.min_gain)) {
        break;
      }
      ++misses;
      step = std::min<int64_t>(1 + (misses >> kMissShift), kMaxStep);
      step = std::min(step, e - scan);
      // Drop the positions stepped over from the alignment's score.
      for (int64_t j = scan; j < scan + step; ++j) {
        if (j < scored_to && same_at(j, last_offset)) --old_score;
      }
      if (scored_to < scan + step) scored_to = scan + step;
    }
    if (len >= kUsefulMatch && len > old_score + static_cast<int64_t>(options.min_gain)) misses = 0;
    if (len == old_score && scan != e) continue;

    // Extend the previous alignment forwards from last_scan: keep the prefix where matches
    // outnumber mismatches by the most.
    int64_t len_f = 0;
    {
      int64_t matches = 0, best = 0;
      for (int64_t i = 0; last_scan + i < scan && last_pos + i < n;) {
        matches += o[last_pos + i] == w[last_scan + i];
        ++i;
        if (matches * 2 - i > best * 2 - len_f) {
          best = matches;
          len_f = i;
        }
      }
    }
    // Extend the new match backwards the same way.
    int64_t len_b = 0;
    if (scan < e) {
      int64_t matches = 0, best = 0;
      for (int64_t i = 1; scan >= last_scan + i && pos >= i; ++i) {
        matches += o[pos - i] == w[scan - i];
        if (matches * 2 - i > best * 2 - len_b) {
          best = matches;
          len_b = i;
        }
      }
    }
    // Where the two extensions overlap, split at the point that keeps the most matches.
    if (last_scan + len_f > scan - len_b) {
      const int64_t overlap = (last_scan + len_f) - (scan - len_b);
      int64_t score = 0, best = 0, split = 0;
      for (int64_t i = 0; i < overlap; ++i) {
        score += w[last_scan + len_f - overlap + i] == o[last_pos + len_f - overlap + i];
        score -= w[scan - len_b + i] == o[pos - len_b + i];
        if (score > best) {
          best = score;
          split = i + 1;
        }
      }
      len_f += split - overlap;
      len_b -= split;
    }

    const int64_t lit = (scan - len_b) - (last_scan + len_f);
    if (len_f > 0 || lit > 0) {
      ops.push_back(CopyOp{static_cast<uint64_t>(len_f > 0 ? last_pos : 0),
                           static_cast<uint64_t>(len_f), static_cast<uint64_t>(lit)});
    }
    last_scan = scan - len_b;
    last_pos = pos - len_b;
    last_offset = pos - scan;
  }
  return ops;
}

}  // namespace

std::vector<CopyOp> MatchRange(const SuffixArray& sa, ByteView neu, uint64_t begin, uint64_t end,
                               const MatchOptions& options) {
  return MatchWith(sa, neu, begin, end, options);
}

std::vector<CopyOp> MatchRange(const HashIndex& index, ByteView neu, uint64_t begin, uint64_t end,
                               const MatchOptions& options) {
  return MatchWith(index, neu, begin, end, options);
}

void PruneCopies(std::vector<CopyOp>* ops, uint64_t begin, double literal_cost) {
  auto varint_size = [](int64_t v) {
    uint64_t z = (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
    int n = 1;
    while (z >= 0x80) {
      z >>= 7;
      ++n;
    }
    return n;
  };
  std::vector<CopyOp> out;
  out.reserve(ops->size());
  uint64_t new_pos = begin;
  int64_t offset = 0;  // old_pos - new_pos of the alignment in force.
  bool have_alignment = false;
  for (const CopyOp& op : *ops) {
    const int64_t op_offset = static_cast<int64_t>(op.old_pos) - static_cast<int64_t>(new_pos);
    if (op.copy_len > 0 && have_alignment && op_offset != offset && !out.empty()) {
      const double jump_cost = 2.0 * varint_size(op_offset - offset) + 2;
      if (static_cast<double>(op.copy_len) * literal_cost < jump_cost) {
        out.back().lit_len += op.copy_len + op.lit_len;
        new_pos += op.copy_len + op.lit_len;
        continue;
      }
    }
    if (op.copy_len > 0) {
      offset = op_offset;
      have_alignment = true;
    }
    out.push_back(op);
    new_pos += op.copy_len + op.lit_len;
  }
  *ops = std::move(out);
}

}  // namespace ds::delta
