// Shared helpers for the deltastream tests: data generators, temp dirs, patch surgery.
#ifndef DELTASTREAM_TESTS_SUPPORT_TEST_UTIL_H_
#define DELTASTREAM_TESTS_SUPPORT_TEST_UTIL_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/delta.h"
#include "delta/patch_format.h"

namespace ds {

// gtest printers, found by ADL: "patch_checksum (23)" instead of raw bytes.
inline void PrintTo(ErrorCode code, std::ostream* os) {
  *os << ErrorCodeName(code) << " (" << static_cast<int>(code) << ")";
}
inline void PrintTo(const Status& status, std::ostream* os) { *os << status.ToString(); }

}  // namespace ds

namespace ds::testing {

// How many bytes of |needle| text[at...] shares from the start (for longest-match checks).
inline uint64_t CommonPrefix(ByteView text, uint64_t at, ByteView needle) {
  uint64_t l = 0;
  while (at + l < text.size() && l < needle.size() && text[at + l] == needle[l]) ++l;
  return l;
}

// The longest prefix of |needle| found anywhere in |text|, by trying every position.
inline uint64_t BruteLongestMatch(ByteView text, ByteView needle) {
  uint64_t best = 0;
  for (uint64_t i = 0; i < text.size(); ++i) {
    const uint64_t l = CommonPrefix(text, i, needle);
    if (l > best) best = l;
  }
  return best;
}

inline ErrorCode CodeOf(const Status& s) { return s.code(); }
template <typename T>
ErrorCode CodeOf(const Result<T>& r) {
  return r.status().code();
}

// Deterministic pseudo-random bytes.
Bytes RandomBytes(size_t n, uint64_t seed);

// Lines of pseudo-English text, about |n| bytes.
Bytes TextBytes(size_t n, uint64_t seed);

inline Bytes ToBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// The directory (in the build tree, created on demand) that holds every TempDir.
std::string TempRoot();

// A fresh directory under the build tree (same filesystem as the build), removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }
  // Names of the entries in the directory, sorted.
  std::vector<std::string> List() const;

 private:
  std::string path_;
};

// Writes |data| to |path| (plain, non-atomic; test setup only). Fails the test on error.
void WriteFileOrDie(const std::string& path, ByteView data);
Bytes ReadFileOrDie(const std::string& path);

// A patch taken apart: the parsed header and each segment's header, payload and position.
struct RawSegment {
  delta::SegmentHeader header;
  Bytes payload;
  size_t offset = 0;        // Where the segment starts in the patch.
  size_t header_bytes = 0;  // Length of its header including the CRC.
};
struct RawPatch {
  delta::FileHeader header;
  size_t header_bytes = 0;
  std::vector<RawSegment> segments;
};

// Splits a well-formed patch. Fails the test (and returns an empty patch) on malformed input.
RawPatch SplitPatch(ByteView patch);
// Serialises |patch| with fresh checksums (payload_length is taken from the payload size).
Bytes JoinPatch(const RawPatch& patch);

// A header that is valid for rebuilding |neu| from |old| with segments of at most |max_output|
// bytes; max_segment_payload is |max_output| and max_ref_window 0.
delta::FileHeader HeaderFor(ByteView old, ByteView neu, uint64_t max_output);
// A stored segment for neu[offset, offset + length).
RawSegment StoredSegment(ByteView neu, uint64_t offset, uint64_t length);
// A whole patch of stored segments of |segment_size| bytes.
RawPatch StoredPatch(ByteView old, ByteView neu, uint64_t segment_size);

// One entry of the copydiff control stream. The encoding below mirrors the applier's current
// layout (docs/FORMAT.md: position relative to the end of the last copy, copy length, literal
// length, all varints; old_delta is ignored for entries without a copy); it is
// the only place in the tests that knows that layout, so update it here if the layout changes.
struct ControlEntry {
  int64_t old_delta = 0;
  uint64_t copy_len = 0;
  uint64_t lit_len = 0;
};
Bytes EncodeControl(const std::vector<ControlEntry>& entries);
// A kCopyDiff payload whose three streams are stored raw (codec kStored).
Bytes StoredCopyDiffPayload(ByteView control, ByteView diff, ByteView literals);

// Segments of a valid patch by method (via InspectPatch); "ref" counts zstdref and lzmaref.
struct MethodCounts {
  uint64_t stored = 0, copydiff = 0, ref = 0, other = 0;
  uint64_t total() const { return stored + copydiff + ref + other; }
};
MethodCounts CountMethods(ByteView patch);

// A magicless zstd frame of |data|, optionally compressed against |prefix|.
Bytes ZstdMagiclessFrame(ByteView data, ByteView prefix = {}, int level = 3);

// Applies |patch| pushing it in pieces whose sizes cycle through |chunks| (all > 0).
Result<Bytes> ApplyInChunks(ByteView old, ByteView patch, const std::vector<size_t>& chunks,
                            const delta::ApplyLimits& limits = {});

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_SUPPORT_TEST_UTIL_H_
