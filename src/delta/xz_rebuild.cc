#include "delta/xz_rebuild.h"

#include <lzma.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace ds::delta {
namespace {

constexpr uint64_t kMaxBlockSize = uint64_t{1} << 40;

uint32_t Preset(const XzParams& p) {
  return (p.preset & 0x0F) | ((p.preset & 0x80) ? LZMA_PRESET_EXTREME : 0);
}

// Bytes of an .xz multibyte integer.
int VliLength(uint64_t v) {
  int n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

// The block size the multi-threaded encoder is run with. Content that fits in one block gives the
// same single block for any block size whose bounds take as many header bytes (the encoder
// reserves block header room from the block size and its compressed-size bound), so the buffers
// are sized to the content, grown only to the next header-size boundary.
uint64_t EffectiveBlockSize(const XzParams& p, uint64_t content_size) {
  const uint64_t bs = p.block_size;
  uint64_t eff = std::max<uint64_t>(1, std::min(bs, content_size));
  while (eff < bs &&
         (VliLength(eff) < VliLength(bs) ||
          VliLength(lzma_block_buffer_bound(eff)) < VliLength(lzma_block_buffer_bound(bs)))) {
    eff = std::min(bs, std::max(eff + 1, uint64_t{1} << (7 * VliLength(eff))));
  }
  return eff;
}

lzma_mt MtOptions(const XzParams& p, uint64_t content_size) {
  lzma_mt mt{};
  mt.threads = 1;
  mt.block_size = EffectiveBlockSize(p, content_size);
  mt.preset = Preset(p);
  mt.check = static_cast<lzma_check>(p.check);
  return mt;
}

}  // namespace

Status ValidateXzParams(const XzParams& p) {
  if ((p.preset & 0x7F) > 9) return Error(ErrorCode::kPatchMalformed, "xz preset out of range");
  if (p.check != LZMA_CHECK_NONE && p.check != LZMA_CHECK_CRC32 && p.check != LZMA_CHECK_CRC64 &&
      p.check != LZMA_CHECK_SHA256) {
    return Error(ErrorCode::kPatchMalformed, "unknown xz check " + std::to_string(p.check));
  }
  if (p.block_size > kMaxBlockSize) {
    return Error(ErrorCode::kPatchMalformed, "xz block size out of range");
  }
  return Status::Ok();
}

uint64_t XzEncoderMemory(const XzParams& p, uint64_t content_size) {
  if (p.block_size == 0) return lzma_easy_encoder_memusage(Preset(p));
  const lzma_mt mt = MtOptions(p, content_size);
  return lzma_stream_encoder_mt_memusage(&mt);
}

Result<Bytes> XzDecode(ByteView stream, uint64_t max_content, uint64_t* consumed) {
  lzma_stream s = LZMA_STREAM_INIT;
  // Single stream: stop at its end (LZMA_CONCATENATED unset); check the integrity check.
  if (lzma_stream_decoder(&s, UINT64_MAX, 0) != LZMA_OK) {
    return Error(ErrorCode::kResourceLimit, "cannot start the xz decoder");
  }
  Bytes out(std::min<uint64_t>(max_content, 1 << 20));
  s.next_in = stream.data();
  s.avail_in = stream.size();
  s.next_out = out.data();
  s.avail_out = out.size();
  lzma_ret rc = LZMA_OK;
  while (rc == LZMA_OK) {
    if (s.avail_out == 0) {
      if (out.size() >= max_content) {
        // Full: the stream is done only if nothing more comes out.
        uint8_t probe;
        s.next_out = &probe;
        s.avail_out = 1;
        rc = lzma_code(&s, LZMA_FINISH);
        if (s.avail_out == 0) {
          lzma_end(&s);
          return Error(ErrorCode::kResourceLimit, "xz content larger than allowed");
        }
        break;
      }
      const size_t used = out.size();
      out.resize(std::min<uint64_t>(max_content, used * 2));
      s.next_out = out.data() + used;
      s.avail_out = out.size() - used;
    }
    rc = lzma_code(&s, LZMA_FINISH);
  }
  const uint64_t produced = s.total_out, used_in = s.total_in;
  lzma_end(&s);
  if (rc != LZMA_STREAM_END) {
    return Error(ErrorCode::kInvalidArgument,
                 "not a valid .xz stream (liblzma " + std::to_string(static_cast<int>(rc)) + ")");
  }
  out.resize(produced);
  if (consumed != nullptr) *consumed = used_in;
  return out;
}

Result<Bytes> XzEncode(ByteView content, const XzParams& p, ByteView expected) {
  DS_RETURN_IF_ERROR(ValidateXzParams(p));
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_ret rc;
  if (p.block_size == 0) {
    rc = lzma_easy_encoder(&s, Preset(p), static_cast<lzma_check>(p.check));
  } else {
    const lzma_mt mt = MtOptions(p, content.size());
    rc = lzma_stream_encoder_mt(&s, &mt);
  }
  if (rc != LZMA_OK) {
    return Error(ErrorCode::kResourceLimit, "cannot start the xz encoder (liblzma " +
                                                std::to_string(static_cast<int>(rc)) + ")");
  }
  s.next_in = content.data();
  s.avail_in = content.size();
  if (!expected.empty()) {
    // Compared piece by piece, so that a wrong guess stops at its first differing output.
    Bytes piece(64 << 10);
    uint64_t pos = 0;
    for (;;) {
      s.next_out = piece.data();
      s.avail_out = piece.size();
      rc = lzma_code(&s, LZMA_FINISH);
      const size_t n = piece.size() - s.avail_out;
      if (n > expected.size() - pos || std::memcmp(piece.data(), expected.data() + pos, n) != 0) {
        lzma_end(&s);
        return Error(ErrorCode::kPatchOutputMismatch, "xz output differs from the expected");
      }
      pos += n;
      if (rc == LZMA_STREAM_END) break;
      if (rc != LZMA_OK) {
        lzma_end(&s);
        return Error(ErrorCode::kResourceLimit,
                     "xz encoder failed (liblzma " + std::to_string(static_cast<int>(rc)) + ")");
      }
    }
    lzma_end(&s);
    if (pos != expected.size()) {
      return Error(ErrorCode::kPatchOutputMismatch, "xz output shorter than the expected");
    }
    return Bytes(expected.begin(), expected.end());
  }
  Bytes out(lzma_stream_buffer_bound(content.size()));
  s.next_out = out.data();
  s.avail_out = out.size();
  rc = lzma_code(&s, LZMA_FINISH);
  const size_t produced = out.size() - s.avail_out;
  lzma_end(&s);
  if (rc != LZMA_STREAM_END) {
    return Error(ErrorCode::kResourceLimit,
                 "xz encoder failed (liblzma " + std::to_string(static_cast<int>(rc)) + ")");
  }
  out.resize(produced);
  return out;
}

}  // namespace ds::delta
