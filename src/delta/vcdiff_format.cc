#include "delta/vcdiff_format.h"

#include <algorithm>

namespace ds::delta::vcdiff {

const char* SecondaryName(uint8_t id) {
  switch (id) {
    case kSecondaryDjw:
      return "djw (xdelta3 static Huffman)";
    case kSecondaryLzma:
      return "lzma";
    case kSecondaryFgk:
      return "fgk (xdelta3 adaptive Huffman)";
    default:
      return "unknown";
  }
}

namespace {

CodeTable BuildDefaultTable() {
  CodeTable t{};
  size_t i = 0;
  t[i++] = {kRun, 0, 0, kNoop, 0, 0};
  for (uint8_t size = 0; size <= 17; ++size) t[i++] = {kAdd, size, 0, kNoop, 0, 0};
  for (uint8_t mode = 0; mode < 9; ++mode) {
    t[i++] = {kCopy, 0, mode, kNoop, 0, 0};
    for (uint8_t size = 4; size <= 18; ++size) t[i++] = {kCopy, size, mode, kNoop, 0, 0};
  }
  for (uint8_t mode = 0; mode < 6; ++mode) {
    for (uint8_t add = 1; add <= 4; ++add) {
      for (uint8_t copy = 4; copy <= 6; ++copy) t[i++] = {kAdd, add, 0, kCopy, copy, mode};
    }
  }
  for (uint8_t mode = 6; mode < 9; ++mode) {
    for (uint8_t add = 1; add <= 4; ++add) t[i++] = {kAdd, add, 0, kCopy, 4, mode};
  }
  for (uint8_t mode = 0; mode < 9; ++mode) t[i++] = {kCopy, 4, mode, kAdd, 1, 0};
  return t;  // i == 256
}

}  // namespace

const CodeTable& DefaultCodeTable() {
  static const CodeTable table = BuildDefaultTable();
  return table;
}

Bytes CodeTableToBytes(const CodeTable& table) {
  Bytes out(6 * 256);
  for (size_t i = 0; i < 256; ++i) {
    out[i] = table[i].type1;
    out[256 + i] = table[i].type2;
    out[512 + i] = table[i].size1;
    out[768 + i] = table[i].size2;
    out[1024 + i] = table[i].mode1;
    out[1280 + i] = table[i].mode2;
  }
  return out;
}

bool CodeTableFromBytes(ByteView bytes, CodeTable* table) {
  if (bytes.size() != 6 * 256) return false;
  for (size_t i = 0; i < 256; ++i) {
    (*table)[i] = {bytes[i],       bytes[512 + i], bytes[1024 + i],
                   bytes[256 + i], bytes[768 + i], bytes[1280 + i]};
  }
  return true;
}

bool ReadInt(ByteReader* r, uint64_t* v) {
  const ByteView rest = r->Rest();
  uint64_t value = 0;
  for (size_t i = 0; i < rest.size() && i < 10; ++i) {
    if (value >> 57) return false;  // Another digit would overflow 64 bits.
    value = (value << 7) | (rest[i] & 0x7F);
    if (!(rest[i] & 0x80)) {
      *v = value;
      return r->Skip(i + 1);
    }
  }
  return false;
}

void WriteInt(Bytes* out, uint64_t v) {
  uint8_t buf[10];
  size_t n = 0;
  buf[n++] = v & 0x7F;
  v >>= 7;
  while (v) {
    buf[n++] = static_cast<uint8_t>(v & 0x7F) | 0x80;
    v >>= 7;
  }
  while (n) out->push_back(buf[--n]);
}

size_t IntSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

AddressCache::AddressCache(uint32_t near_size, uint32_t same_size)
    : near_(near_size, 0), same_(static_cast<size_t>(same_size) * 256, 0), same_size_(same_size) {}

void AddressCache::Reset() {
  std::fill(near_.begin(), near_.end(), 0);
  std::fill(same_.begin(), same_.end(), 0);
  next_slot_ = 0;
}

void AddressCache::Update(uint64_t addr) {
  if (!near_.empty()) {
    near_[next_slot_] = addr;
    next_slot_ = (next_slot_ + 1) % near_.size();
  }
  if (!same_.empty()) same_[addr % same_.size()] = addr;
}

namespace {
struct Choice {
  uint8_t mode = 0;
  size_t cost = 0;
  uint64_t value = 0;  // Integer to write, or the byte for a same mode.
  bool is_byte = false;
};

Choice Choose(const std::vector<uint64_t>& near, const std::vector<uint64_t>& same, uint64_t addr,
              uint64_t here) {
  Choice best{0, IntSize(addr), addr, false};
  if (!same.empty() && same[addr % same.size()] == addr) {
    const uint64_t slot = addr % same.size();
    return Choice{static_cast<uint8_t>(2 + near.size() + slot / 256), 1, slot % 256, true};
  }
  const uint64_t d = here - addr;
  if (IntSize(d) < best.cost) best = {1, IntSize(d), d, false};
  for (size_t i = 0; i < near.size(); ++i) {
    if (addr >= near[i]) {
      const uint64_t n = addr - near[i];
      if (IntSize(n) < best.cost) best = {static_cast<uint8_t>(2 + i), IntSize(n), n, false};
    }
  }
  return best;
}

}  // namespace

uint8_t AddressCache::Encode(uint64_t addr, uint64_t here, Bytes* addrs) {
  const Choice c = Choose(near_, same_, addr, here);
  if (c.is_byte) {
    addrs->push_back(static_cast<uint8_t>(c.value));
  } else {
    WriteInt(addrs, c.value);
  }
  Update(addr);
  return c.mode;
}

size_t AddressCache::Cost(uint64_t addr, uint64_t here) const {
  return Choose(near_, same_, addr, here).cost;
}

bool AddressCache::Decode(uint8_t mode, uint64_t here, ByteReader* addrs, uint64_t* addr) {
  uint64_t a;
  if (mode == 0) {
    if (!ReadInt(addrs, &a)) return false;
  } else if (mode == 1) {
    uint64_t d;
    if (!ReadInt(addrs, &d) || d > here) return false;
    a = here - d;
  } else if (mode < 2 + near_.size()) {
    uint64_t d;
    if (!ReadInt(addrs, &d)) return false;
    if (!CheckedAddU64(near_[mode - 2], d, &a)) return false;
  } else if (mode < mode_count()) {
    uint8_t b;
    if (!addrs->ReadU8(&b)) return false;
    a = same_[(mode - 2 - near_.size()) * 256 + b];
  } else {
    return false;
  }
  Update(a);
  *addr = a;
  return true;
}

uint32_t Adler32(uint32_t adler, ByteView data) {
  constexpr uint32_t kBase = 65521;
  constexpr size_t kNmax = 5552;  // Largest n with 255n(n+1)/2 + (n+1)(kBase-1) < 2^32.
  uint32_t a = adler & 0xFFFF, b = adler >> 16;
  size_t i = 0;
  while (i < data.size()) {
    const size_t end = std::min(data.size(), i + kNmax);
    for (; i < end; ++i) {
      a += data[i];
      b += a;
    }
    a %= kBase;
    b %= kBase;
  }
  return (b << 16) | a;
}

}  // namespace ds::delta::vcdiff
