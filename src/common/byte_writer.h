// ByteWriter: appends little-endian integers, varints and bytes to a growing buffer.
//
// Thread-safety: none.
#ifndef DELTASTREAM_COMMON_BYTE_WRITER_H_
#define DELTASTREAM_COMMON_BYTE_WRITER_H_

#include <cstdint>

#include "common/bytes.h"

namespace ds {

class ByteWriter {
 public:
  // Appends to |out|, which must outlive the writer.
  explicit ByteWriter(Bytes* out) : out_(out) {}

  void WriteU8(uint8_t v) { out_->push_back(v); }
  void WriteU16Le(uint16_t v) { WriteLe(v); }
  void WriteU32Le(uint32_t v) { WriteLe(v); }
  void WriteU64Le(uint64_t v) { WriteLe(v); }
  void WriteVarint(uint64_t v) {
    while (v >= 0x80) {
      out_->push_back(static_cast<uint8_t>(v) | 0x80);
      v >>= 7;
    }
    out_->push_back(static_cast<uint8_t>(v));
  }
  void WriteSignedVarint(int64_t v) {
    WriteVarint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63));
  }
  void WriteBytes(ByteView b) { out_->insert(out_->end(), b.begin(), b.end()); }
  size_t size() const { return out_->size(); }

 private:
  template <typename T>
  void WriteLe(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_->push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  Bytes* out_;
};

// Number of bytes WriteVarint(v) appends.
inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

}  // namespace ds

#endif  // DELTASTREAM_COMMON_BYTE_WRITER_H_
