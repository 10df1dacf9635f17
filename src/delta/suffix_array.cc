#include "delta/suffix_array.h"

#include <divsufsort.h>
#include <divsufsort64.h>

#include <algorithm>
#include <limits>

namespace ds::delta {
namespace {

// Length of the common prefix of a[from..] and b[from..].
inline uint64_t CommonPrefix(const uint8_t* a, uint64_t a_len, const uint8_t* b, uint64_t b_len,
                             uint64_t from) {
  const uint64_t n = std::min(a_len, b_len);
  uint64_t i = from;
  while (i + 8 <= n) {
    uint64_t x, y;
    __builtin_memcpy(&x, a + i, 8);
    __builtin_memcpy(&y, b + i, 8);
    if (x != y) return i + (__builtin_ctzll(x ^ y) >> 3);
    i += 8;
  }
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

Result<SuffixArray> SuffixArray::Build(ByteView text) {
  SuffixArray sa;
  sa.text_ = text;
  if (text.empty()) return sa;
  if (text.size() < static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    sa.sa32_.resize(text.size());
    if (divsufsort(text.data(), sa.sa32_.data(), static_cast<saidx_t>(text.size())) != 0) {
      return Error(ErrorCode::kInternal, "divsufsort failed");
    }
  } else {
    sa.sa64_.resize(text.size());
    if (divsufsort64(text.data(), sa.sa64_.data(), static_cast<saidx64_t>(text.size())) != 0) {
      return Error(ErrorCode::kInternal, "divsufsort64 failed");
    }
  }
  return sa;
}

uint64_t SuffixArray::LongestMatch(ByteView needle, uint64_t* pos) const {
  *pos = 0;
  if (text_.empty() || needle.empty()) return 0;
  return sa64_.empty() ? Search(sa32_, needle, pos) : Search(sa64_, needle, pos);
}

// Binary search for the insertion point of |needle| among the sorted suffixes. The suffix sharing
// the longest prefix with |needle| is one of the two neighbours of that point. Comparisons start
// after min(lcp(lo), lcp(hi)) bytes, which both bounds already share with the needle.
template <typename Idx>
uint64_t SuffixArray::Search(const std::vector<Idx>& sa, ByteView needle, uint64_t* pos) const {
  const uint8_t* t = text_.data();
  const uint64_t n = text_.size();
  int64_t lo = -1, hi = static_cast<int64_t>(sa.size());
  uint64_t lo_lcp = 0, hi_lcp = 0;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    const uint64_t s = static_cast<uint64_t>(sa[mid]);
    const uint64_t l =
        CommonPrefix(t + s, n - s, needle.data(), needle.size(), std::min(lo_lcp, hi_lcp));
    if (l == needle.size()) {
      hi = mid;
      hi_lcp = l;
      break;  // Whole needle found: it cannot get longer.
    }
    if (s + l == n || t[s + l] < needle[l]) {
      lo = mid;
      lo_lcp = l;
    } else {
      hi = mid;
      hi_lcp = l;
    }
  }
  const bool lo_ok = lo >= 0, hi_ok = hi < static_cast<int64_t>(sa.size());
  if (hi_ok && (!lo_ok || hi_lcp >= lo_lcp)) {
    *pos = static_cast<uint64_t>(sa[hi]);
    return hi_lcp;
  }
  if (lo_ok) {
    *pos = static_cast<uint64_t>(sa[lo]);
    return lo_lcp;
  }
  return 0;
}

}  // namespace ds::delta
