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
  sa.BuildBuckets();
  return sa;
}

// Counts the suffixes by their first two bytes. The one-byte suffix (the text's last byte x)
// sorts just before the suffixes starting with x then 0x00.
void SuffixArray::BuildBuckets() {
  const uint64_t n = text_.size();
  if (n < 2) return;
  const uint8_t* t = text_.data();
  bucket_.assign(65537, 0);
  for (uint64_t i = 0; i + 1 < n; ++i) ++bucket_[(uint32_t{t[i]} << 8 | t[i + 1]) + 1];
  ++bucket_[(uint32_t{t[n - 1]} << 8) + 1];  // Counted in the group it precedes.
  for (size_t k = 1; k < bucket_.size(); ++k) bucket_[k] += bucket_[k - 1];
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
  // The bounds: the needle's two-byte bucket when it has one (every suffix strictly inside shares
  // those two bytes with the needle), else the whole array.
  int64_t first = 0, end = static_cast<int64_t>(sa.size());
  uint64_t shared = 0;
  if (needle.size() >= 2 && !bucket_.empty()) {
    const uint32_t k = uint32_t{needle[0]} << 8 | needle[1];
    const int64_t b = static_cast<int64_t>(bucket_[k]), e = static_cast<int64_t>(bucket_[k + 1]);
    // The one-byte suffix counted at the start of bucket x00 shares one byte only.
    const int64_t skip = n >= 1 && needle[1] == 0 && t[n - 1] == needle[0] ? 1 : 0;
    if (b + skip < e) {
      first = b + skip;
      end = e;
      shared = 2;
    }
  }
  int64_t lo = first - 1, hi = end;
  uint64_t lo_lcp = shared, hi_lcp = shared;
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
  const bool lo_ok = lo >= first, hi_ok = hi < end;
  if (hi_ok && (!lo_ok || hi_lcp >= lo_lcp)) {
    if (hi_lcp > 0) *pos = static_cast<uint64_t>(sa[hi]);
    return hi_lcp;
  }
  if (lo_ok && lo_lcp > 0) {
    *pos = static_cast<uint64_t>(sa[lo]);
    return lo_lcp;
  }
  return 0;
}

}  // namespace ds::delta
