// Archives the recompression tests build themselves: ustar tars and zlib gzip members. Header
// only, for tests that link zlib (ZLIB::ZLIB).
#ifndef DELTASTREAM_TESTS_SUPPORT_ARCHIVE_UTIL_H_
#define DELTASTREAM_TESTS_SUPPORT_ARCHIVE_UTIL_H_

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/bytes.h"

namespace ds::testing {

// A ustar archive of (name, content) members, as tar(1) lays them out, with the two zero blocks
// that end it.
inline Bytes Tar(const std::vector<std::pair<std::string, Bytes>>& members) {
  Bytes out;
  for (const auto& [name, data] : members) {
    uint8_t h[512] = {};
    std::snprintf(reinterpret_cast<char*>(h), 100, "%s", name.c_str());
    std::snprintf(reinterpret_cast<char*>(h + 100), 8, "%07o", 0644);
    std::snprintf(reinterpret_cast<char*>(h + 108), 8, "%07o", 0);
    std::snprintf(reinterpret_cast<char*>(h + 116), 8, "%07o", 0);
    std::snprintf(reinterpret_cast<char*>(h + 124), 12, "%011o",
                  static_cast<unsigned>(data.size()));
    std::snprintf(reinterpret_cast<char*>(h + 136), 12, "%011o", 1700000000u);
    h[156] = '0';
    std::memcpy(h + 257,
                "ustar\0"
                "00",
                8);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (uint8_t b : h) sum += b;
    std::snprintf(reinterpret_cast<char*>(h + 148), 8, "%06o", sum);
    out.insert(out.end(), h, h + 512);
    out.insert(out.end(), data.begin(), data.end());
    out.resize((out.size() + 511) / 512 * 512);
  }
  out.resize(out.size() + 1024);
  return out;
}

// A gzip member written by zlib at |level|.
inline Bytes Gzip(ByteView data, int level) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&z, data.size()) + 64);
  z.next_in = const_cast<Bytef*>(data.data());
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_SUPPORT_ARCHIVE_UTIL_H_
