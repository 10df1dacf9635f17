// Hashes: SHA-256 (OpenSSL) for identity and integrity, CRC32C for framing checksums.
//
// Thread-safety: Sha256 objects are single-threaded; the free functions are thread-safe.
#ifndef DELTASTREAM_COMMON_HASH_H_
#define DELTASTREAM_COMMON_HASH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/bytes.h"

namespace ds {

using Sha256Digest = std::array<uint8_t, 32>;

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(ByteView data);
  // Returns the digest; the object is reset for reuse.
  Sha256Digest Finish();

  static Sha256Digest Of(ByteView data);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string ToHex(ByteView bytes);
inline std::string ToHex(const Sha256Digest& d) { return ToHex(ByteView(d.data(), d.size())); }
// Decodes exactly out.size() bytes from 2 * out.size() hex digits (either case); false otherwise.
bool DecodeHex(std::string_view hex, std::span<uint8_t> out);

// CRC-32C (Castagnoli). |crc| chains calls: Crc32c(b, Crc32c(a)) == Crc32c(a ++ b).
uint32_t Crc32c(ByteView data, uint32_t crc = 0);

}  // namespace ds

#endif  // DELTASTREAM_COMMON_HASH_H_
