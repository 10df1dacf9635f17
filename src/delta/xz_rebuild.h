// Rebuilding .xz streams exactly (DSPF 1.2 transform "xz"): decode a stream to its content, and
// compress content again with recorded liblzma settings. Unlike deflate, LZMA's output cannot be
// spelled out byte-aligned cheaply, so the generator instead proves, by compressing the content
// again, that a liblzma preset reproduces the stream bit for bit (FindXzParams, xz_streams.h), and
// records it;
// the applier compresses the new content with it. Streams made by other encoders, or with
// settings no preset reproduces (filters other than LZMA2, custom dictionaries), are left to the
// byte diff.
//
// Work and memory: decoding is linear in the content; encoding costs what liblzma's encoder costs
// at that preset (XzEncoderMemory: ~95-110 MiB at presets 6-7; less below), which is why patches
// declare it in their header and appliers refuse what they cannot afford.
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_XZ_REBUILD_H_
#define DELTASTREAM_DELTA_XZ_REBUILD_H_

#include <cstdint>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

struct XzParams {
  uint8_t preset = 6;  // Level 0-9 in bits 0-3; bit 7 = LZMA_PRESET_EXTREME.
  uint8_t check = 4;   // lzma_check id: 0 none, 1 CRC32, 4 CRC64, 10 SHA-256.
  // 0: the single-threaded stream encoder (block headers without sizes). Otherwise the
  // multi-threaded encoder's block size (block headers with sizes), as xz -T2 or dpkg-deb write.
  uint64_t block_size = 0;
  bool operator==(const XzParams&) const = default;
};

// kPatchMalformed unless |p| names a preset, check and block size liblzma supports.
Status ValidateXzParams(const XzParams& p);

// The memory liblzma says its encoder needs for |p| on |content_size| bytes of content.
uint64_t XzEncoderMemory(const XzParams& p, uint64_t content_size);

// Decodes the one .xz stream at the start of |stream| (trailing bytes are allowed and reported
// through |consumed|). kInvalidArgument when it is not a valid .xz stream, kResourceLimit when
// its content exceeds |max_content| bytes.
Result<Bytes> XzDecode(ByteView stream, uint64_t max_content, uint64_t* consumed = nullptr);

// Compresses |content| with |p| into one .xz stream. |expected|, when not empty, is what the
// output should be: encoding stops with kPatchOutputMismatch at the first byte that differs or
// when the output grows past it, so that a wrong guess costs little.
Result<Bytes> XzEncode(ByteView content, const XzParams& p, ByteView expected = {});

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_XZ_REBUILD_H_
