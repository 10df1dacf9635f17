// ByteReader: the only way untrusted bytes are decoded.
//
// A cursor over a borrowed ByteView. Every Read* returns false on a short or malformed read and
// then leaves the cursor where it was, so a caller can tell "need more bytes" from success.
// Integers are little-endian; varints are LEB128 (at most 10 bytes, values below 2^64; an
// over-long encoding such as 80 00 is accepted as the value it spells).
//
// Thread-safety: none; a reader is used by one thread.
#ifndef DELTASTREAM_COMMON_BYTE_READER_H_
#define DELTASTREAM_COMMON_BYTE_READER_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/bytes.h"

namespace ds {

class ByteReader {
 public:
  // |data| must outlive the reader and every view it returns.
  explicit ByteReader(ByteView data) : data_(data) {}

  size_t remaining() const { return data_.size() - pos_; }
  size_t position() const { return pos_; }
  bool empty() const { return remaining() == 0; }

  bool ReadU8(uint8_t* v) {
    if (remaining() < 1) return false;
    *v = data_[pos_++];
    return true;
  }
  bool ReadU16Le(uint16_t* v) { return ReadLe(v); }
  bool ReadU32Le(uint32_t* v) { return ReadLe(v); }
  bool ReadU64Le(uint64_t* v) { return ReadLe(v); }

  // Unsigned LEB128. Fails on truncation, on more than 10 bytes, or on a value above 2^64-1.
  bool ReadVarint(uint64_t* v);
  // Zig-zag encoded signed varint.
  bool ReadSignedVarint(int64_t* v);

  // A view of the next |n| bytes (into the reader's buffer).
  bool ReadView(size_t n, ByteView* out) {
    if (remaining() < n) return false;
    *out = data_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool ReadInto(void* dst, size_t n) {
    if (remaining() < n) return false;
    if (n) std::memcpy(dst, data_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool Skip(size_t n) {
    if (remaining() < n) return false;
    pos_ += n;
    return true;
  }
  ByteView Rest() const { return data_.subspan(pos_); }

 private:
  template <typename T>
  bool ReadLe(T* v) {
    if (remaining() < sizeof(T)) return false;
    T out = 0;
    for (size_t i = 0; i < sizeof(T); ++i) out |= static_cast<T>(data_[pos_ + i]) << (8 * i);
    *v = out;
    pos_ += sizeof(T);
    return true;
  }

  ByteView data_;
  size_t pos_ = 0;
};

// Checked arithmetic for offsets and lengths read from untrusted input.
inline bool CheckedAddU64(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

}  // namespace ds

#endif  // DELTASTREAM_COMMON_BYTE_READER_H_
