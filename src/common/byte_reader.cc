#include "common/byte_reader.h"

namespace ds {

bool ByteReader::ReadVarint(uint64_t* v) {
  uint64_t out = 0;
  for (size_t i = 0; i < 10; ++i) {
    if (pos_ + i >= data_.size()) return false;
    const uint8_t b = data_[pos_ + i];
    if (i == 9 && b > 1) return false;  // Would overflow 64 bits.
    out |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) {
      pos_ += i + 1;
      *v = out;
      return true;
    }
  }
  return false;
}

bool ByteReader::ReadSignedVarint(int64_t* v) {
  uint64_t u;
  if (!ReadVarint(&u)) return false;
  *v = static_cast<int64_t>(u >> 1) ^ -static_cast<int64_t>(u & 1);
  return true;
}

}  // namespace ds
