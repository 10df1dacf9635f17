#include "delta/hash_index.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace ds::delta {
namespace {

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Bytes that a and b share from the start, at most |n|.
uint64_t CommonPrefix(const uint8_t* a, const uint8_t* b, uint64_t n) {
  uint64_t i = 0;
  while (i + 8 <= n) {
    const uint64_t x = Load64(a + i) ^ Load64(b + i);
    if (x != 0) return i + static_cast<uint64_t>(std::countr_zero(x) / 8);
    i += 8;
  }
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

uint32_t HashIndex::Hash(const uint8_t* p) const {
  return static_cast<uint32_t>((Load64(p) * 0x9E3779B97F4A7C15ull) >> shift_);
}

Result<HashIndex> HashIndex::Build(ByteView text) {
  if (text.size() >= (uint64_t{1} << 32) - 1) {
    return Error(ErrorCode::kResourceLimit, "hash index: text of 4 GiB or more");
  }
  HashIndex h;
  h.text_ = text;
  if (text.size() < kMinMatch) return h;
  // Between half as many heads as positions and as many, 2^10 at least, 2^22 (16 MiB) at most.
  const int bits = std::clamp(static_cast<int>(std::bit_width(text.size())) - 1, 10, 22);
  h.shift_ = 64 - bits;
  h.head_.assign(size_t{1} << bits, 0);
  const uint64_t last = text.size() - kMinMatch;
  h.next_.resize(last + 1);
  const uint8_t* t = text.data();
  for (uint64_t i = 0; i <= last; ++i) {
    // Inside a run of one byte value only the run's first position is chained: from there the
    // match is the longest run the text has to offer (the later positions would fill the chain
    // with shorter and shorter matches).
    if (i > 0 && Load64(t + i) == Load64(t + i - 1)) {
      h.next_[i] = 0;
      continue;
    }
    uint32_t& head = h.head_[h.Hash(t + i)];
    h.next_[i] = head;
    head = static_cast<uint32_t>(i + 1);
  }
  return h;
}

uint64_t HashIndex::LongestMatch(ByteView needle, uint64_t* pos) const {
  *pos = 0;
  if (needle.size() < kMinMatch || head_.empty()) return 0;
  const uint8_t* t = text_.data();
  const uint64_t n = text_.size();
  const uint64_t first = Load64(needle.data());
  uint64_t best = 0;
  uint32_t link = head_[Hash(needle.data())];
  for (int depth = 0; link != 0 && depth < kMaxChain; ++depth) {
    const uint64_t p = link - 1;
    link = next_[p];
    if (Load64(t + p) != first) continue;
    const uint64_t limit = std::min<uint64_t>(needle.size(), n - p);
    const uint64_t len =
        kMinMatch + CommonPrefix(t + p + kMinMatch, needle.data() + kMinMatch, limit - kMinMatch);
    if (len > best) {
      best = len;
      *pos = p;
      if (len >= kGoodMatch || len == needle.size()) break;
    }
  }
  return best;
}

}  // namespace ds::delta
