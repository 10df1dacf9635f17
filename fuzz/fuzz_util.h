// Helpers shared by the fuzzers and the seed generator: input layouts, checks, a capped sink.
#ifndef DELTASTREAM_FUZZ_FUZZ_UTIL_H_
#define DELTASTREAM_FUZZ_FUZZ_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/delta.h"

// Aborts (so libFuzzer and the regression driver report a crash) when |cond| is false, even in
// NDEBUG builds.
#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace ds::fuzz {

// Reads a little-endian u16 at |p|.
inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// patch_apply_fuzzer input: [flags u8][old_len u16 LE][chunk_seed u8][old][patch].
// old_len is clamped to the bytes available.
inline constexpr size_t kApplyPrefixLen = 4;
enum ApplyFlags : uint8_t {
  kApplyVerifyOldHash = 1 << 0,  // Leave the old-file hash check on.
  kApplyTightLimits = 1 << 1,    // Small ApplyLimits, to reach kResourceLimit paths.
};
struct ApplyInput {
  uint8_t flags = 0;
  uint8_t chunk_seed = 0;
  ByteView old_bytes;
  ByteView patch;
};
inline bool ParseApplyInput(ByteView data, ApplyInput* in) {
  if (data.size() < kApplyPrefixLen) return false;
  in->flags = data[0];
  size_t old_len = LoadU16(data.data() + 1);
  in->chunk_seed = data[3];
  data = data.subspan(kApplyPrefixLen);
  if (old_len > data.size()) old_len = data.size();
  in->old_bytes = data.first(old_len);
  in->patch = data.subspan(old_len);
  return true;
}
inline Bytes MakeApplyInput(uint8_t flags, uint8_t chunk_seed, ByteView old_bytes, ByteView patch) {
  Bytes out;
  out.reserve(kApplyPrefixLen + old_bytes.size() + patch.size());
  out.push_back(flags);
  out.push_back(static_cast<uint8_t>(old_bytes.size()));
  out.push_back(static_cast<uint8_t>(old_bytes.size() >> 8));
  out.push_back(chunk_seed);
  out.insert(out.end(), old_bytes.begin(), old_bytes.end());
  out.insert(out.end(), patch.begin(), patch.end());
  return out;
}

// delta_roundtrip_fuzzer input: [flags u8][old_len u16 LE][old][tail]. The new file is the tail
// itself, or (kRoundTripEditScript) the result of running the tail as an edit script over old.
inline constexpr size_t kRoundTripPrefixLen = 3;
enum RoundTripFlags : uint8_t {
  kRoundTripSegmentShiftMask = 0x07,   // segment_size = 128 << (flags & 7).
  kRoundTripZstdRef = 1 << 3,          // try_zstd_ref.
  kRoundTripEditScript = 1 << 4,       // The tail is an edit script, not the new bytes.
  kRoundTripSmallWholeLimit = 1 << 5,  // whole_file_limit = 0: only the segmented plan.
  kRoundTripLevel3 = 1 << 6,           // Levels 3 instead of 1.
};
inline Bytes MakeRoundTripInput(uint8_t flags, ByteView old_bytes, ByteView tail) {
  Bytes out;
  out.reserve(kRoundTripPrefixLen + old_bytes.size() + tail.size());
  out.push_back(flags);
  out.push_back(static_cast<uint8_t>(old_bytes.size()));
  out.push_back(static_cast<uint8_t>(old_bytes.size() >> 8));
  out.insert(out.end(), old_bytes.begin(), old_bytes.end());
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

// Edit script ops (one byte each, then operands), applied until the script ends:
//   0 copy:    off u16, len u8    -> append old[off % |old|, +len+1) (clipped to old's end)
//   1 insert:  n u8, n bytes      -> append the bytes
//   2 flip:    off u16, len u8    -> like copy, then xor the last appended byte with 0x5a
//   3 repeat:  back u16, len u8   -> append len+1 bytes starting |back|+1 bytes before the end
// Op bytes above 3 use op % 4. The new file is capped at kMaxEditedSize.
inline constexpr size_t kMaxEditedSize = 256 << 10;
inline Bytes RunEditScript(ByteView old_bytes, ByteView script) {
  Bytes out;
  size_t i = 0;
  auto need = [&](size_t n) { return i + n <= script.size(); };
  while (i < script.size() && out.size() < kMaxEditedSize) {
    const uint8_t op = script[i++] % 4;
    if (op == 1) {
      if (!need(1)) break;
      const size_t n = script[i++];
      const size_t take = n < script.size() - i ? n : script.size() - i;
      out.insert(out.end(), script.begin() + i, script.begin() + i + take);
      i += take;
      continue;
    }
    if (!need(3)) break;
    const size_t a = LoadU16(script.data() + i);
    const size_t len = static_cast<size_t>(script[i + 2]) + 1;
    i += 3;
    if (op == 3) {
      if (out.empty()) continue;
      const size_t back = a % out.size() + 1;
      const size_t start = out.size() - back;
      for (size_t k = 0; k < len; ++k) out.push_back(out[start + k]);  // May overlap: RLE.
      continue;
    }
    if (old_bytes.empty()) continue;
    const size_t off = a % old_bytes.size();
    const size_t n = len < old_bytes.size() - off ? len : old_bytes.size() - off;
    out.insert(out.end(), old_bytes.begin() + off, old_bytes.begin() + off + n);
    if (op == 2) out.back() ^= 0x5a;
  }
  return out;
}

// An OutputSink that keeps the bytes and fails once more than |cap| bytes were written, so a
// tiny hostile patch cannot make one fuzz input run for long. Reading back (VCDIFF VCD_TARGET)
// outside what was written is a decoder bug and aborts.
class CappedSink : public delta::OutputSink {
 public:
  explicit CappedSink(uint64_t cap) : cap_(cap) {}
  Status Write(ByteView data) override {
    if (data.size() > cap_ - bytes.size()) return Error(ErrorCode::kResourceLimit, "fuzz cap");
    bytes.insert(bytes.end(), data.begin(), data.end());
    return Status::Ok();
  }
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) override {
    FUZZ_CHECK(offset <= bytes.size() && out.size() <= bytes.size() - offset);
    if (!out.empty()) std::memcpy(out.data(), bytes.data() + offset, out.size());
    return Status::Ok();
  }
  Bytes bytes;

 private:
  uint64_t cap_;
};

// The size of the next piece of a patch pushed in pieces: mostly tiny (inside headers),
// sometimes empty, sometimes large; at most |left|. |rng| is the caller's generator state.
inline size_t NextPieceSize(uint32_t* rng, size_t left) {
  *rng = *rng * 1664525u + 1013904223u;
  const uint32_t r = *rng >> 16;
  const size_t n = (r & 3) == 0 ? 0 : (r & 3) == 1 ? 1 + (r >> 2) % 8 : 1 + (r >> 2) % 512;
  return n < left ? n : left;
}

}  // namespace ds::fuzz

#endif  // DELTASTREAM_FUZZ_FUZZ_UTIL_H_
