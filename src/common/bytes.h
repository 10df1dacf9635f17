// Byte buffers and views shared by every component.
#ifndef DELTASTREAM_COMMON_BYTES_H_
#define DELTASTREAM_COMMON_BYTES_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace ds {

// A non-owning view. The owner must outlive every view of it.
using ByteView = std::span<const uint8_t>;
using Bytes = std::vector<uint8_t>;

inline ByteView AsBytes(std::string_view s) {
  return ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace ds

#endif  // DELTASTREAM_COMMON_BYTES_H_
