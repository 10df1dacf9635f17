// The deltastream patch format (DSPF), shared by the writer and the reader.
// docs/FORMAT.md is the field-by-field specification; keep the two in step.
//
//   patch    := file_header segment*
//   file_header := "DSPF" major:u8 minor:u8 header_len:varint fields... crc32c:u32
//   segment  := seg_len:varint seg_fields... crc32c:u32 payload[payload_length]
//
// Each segment rebuilds new[new_offset, new_offset + new_length); segments are consecutive and
// decode independently of each other, so a patch can be applied while it streams in, checked
// piece by piece, and resumed at any segment boundary.
//
// Thread-safety: plain functions and values.
#ifndef DELTASTREAM_DELTA_PATCH_FORMAT_H_
#define DELTASTREAM_DELTA_PATCH_FORMAT_H_

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/status.h"

namespace ds::delta {

inline constexpr std::array<uint8_t, 4> kPatchMagic = {'D', 'S', 'P', 'F'};
inline constexpr uint8_t kFormatMajor = 1;
inline constexpr uint8_t kFormatMinor = 4;

// FileHeader::flags bits. A reader refuses bits it does not know (1.0 readers refuse them all).
// kFlagCodeRegions (1.1): the header carries the code region tables of the branch transforms.
inline constexpr uint64_t kFlagCodeRegions = 1;
// kFlagRecompress (1.2): some segments use a recompression transform (deflate, xz); the header
// carries max_decoded, max_encoder_memory and recompress_saved.
inline constexpr uint64_t kFlagRecompress = 2;
inline constexpr uint64_t kKnownHeaderFlags = kFlagCodeRegions | kFlagRecompress;

// Bounds on the framing itself (not on the data), so that a hostile patch cannot make the reader
// buffer an unbounded header.
inline constexpr uint64_t kMaxFileHeaderLen = 4096;
inline constexpr uint64_t kMaxSegmentHeaderLen = 256;
// Bytes after the magic that are enough to know the header length: major, minor, 10-byte varint.
inline constexpr size_t kFileHeaderPrefixLen = 4 + 2 + 10;

// Which generator family made the patch (informational; methods are per segment).
enum class Algorithm : uint8_t {
  kGeneric = 1,  // Suffix-array copy+diff / zstd reference matching (this engine).
};

// How a segment's payload rebuilds its range. Values are format constants.
enum class Method : uint8_t {
  kStored = 0,    // payload is the new bytes.
  kCopyDiff = 1,  // control/diff/literal streams (bsdiff-like), each zstd-compressed or stored.
  kZstdRef = 2,   // a magicless zstd frame compressed with old[ref_offset, +ref_length) as prefix.
  kLzmaRef = 3,   // a raw LZMA2 stream with old[ref_offset, +ref_length) as preset dictionary.
};

// The LZMA2 dictionary of a kLzmaRef segment: reference plus output, at least LZMA's minimum.
uint64_t LzmaRefDictSize(uint64_t ref_length, uint64_t new_length);

// A reversible transform of a segment (docs/FORMAT.md, "Transforms"): the method rebuilds the
// new range in the transformed space, reading the old file through the same transform, and the
// applier runs the inverse over the rebuilt bytes. Values are format constants.
enum class Transform : uint8_t {
  kNone = 0,
  kX86Branch = 1,    // x86/x86-64 rel32 call/jmp/jcc targets made absolute (branch_filter.h).
  kArm64Branch = 2,  // AArch64 B/BL imm26 targets made absolute.
  // 1.2: the segment's range is one raw deflate stream, rebuilt from its puff (deflate_puff.h);
  // the method works on puffs: it reads the puff of an old deflate stream and produces the new
  // puff, which the applier re-encodes bit-exactly.
  kDeflate = 3,
  // 1.2: the segment's range is one .xz stream, rebuilt by compressing its content again with
  // the liblzma settings the generator proved reproduce it (xz_rebuild.h); the method reads the
  // content of an old .xz stream and produces the new content.
  kXz = 4,
  // 1.4: the segment's range is one .xz stream, rebuilt from its replay form (lzma_replay.h): its
  // content plus every decision of its LZMA2 encoder, coded again without searching for matches
  // (no encoder memory, any encoder); the method reads the replay form of an old .xz stream and
  // produces the new one.
  kXzReplay = 5,
};
inline constexpr uint8_t kMaxTransform = 5;
inline bool IsRecompressTransform(Transform t) {
  return t == Transform::kDeflate || t == Transform::kXz || t == Transform::kXzReplay;
}
const char* TransformName(Transform t);

// A range of a file loaded at virtual address |vaddr|: machine code (filtered by the branch
// transforms) or data (only used to follow references into it).
struct CodeRegion {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t vaddr = 0;
  bool code = true;
  bool operator==(const CodeRegion&) const = default;
};
inline constexpr size_t kMaxCodeRegions = 64;

// A run of the old file that reappears in the new file at old_offset + delta (file offsets). The
// address map of a transformed patch tells where branch targets of the old file moved to.
struct AddressRun {
  uint64_t old_offset = 0;
  uint64_t length = 0;
  int64_t delta = 0;
  bool operator==(const AddressRun&) const = default;
};
inline constexpr size_t kMaxAddressRuns = 1 << 18;
// The transform tables that follow a 1.1 header with kFlagCodeRegions are at most this long.
inline constexpr uint64_t kMaxTablesLen = 4 << 20;

const char* MethodName(Method m);

struct FileHeader {
  uint8_t major = kFormatMajor;
  uint8_t minor = kFormatMinor;
  Algorithm algorithm = Algorithm::kGeneric;
  uint64_t flags = 0;  // kFlag* bits; 0 in version 1.0.
  uint64_t old_size = 0;
  Sha256Digest old_sha256{};
  uint64_t new_size = 0;
  Sha256Digest new_sha256{};
  uint64_t segment_count = 0;
  // Upper bounds over all segments, so an applier can refuse a patch it cannot afford before it
  // starts: largest new_length, largest payload_length, largest zstd reference window.
  uint64_t max_segment_output = 0;
  uint64_t max_segment_payload = 0;
  uint64_t max_ref_window = 0;
  // 1.1, present iff flags & kFlagCodeRegions (the "transform tables" after the header): the
  // code regions of the old and new files the branch transforms work on, where old code moved
  // to, and the generator's estimate of the bytes the transforms saved (informational).
  std::vector<CodeRegion> old_regions;
  std::vector<CodeRegion> new_regions;
  std::vector<AddressRun> address_map;
  uint64_t transform_saved = 0;
  // 1.2, present iff flags & kFlagRecompress: the largest decoded form (a deflate puff or xz
  // content, old or new) any recompression segment holds while it is applied; the most memory
  // the xz encoder of any xz segment needs (liblzma's estimate; 0 without xz segments); the
  // generator's estimate of the bytes the recompression transforms saved (informational).
  uint64_t max_decoded = 0;
  uint64_t max_encoder_memory = 0;
  uint64_t recompress_saved = 0;
};

struct SegmentHeader {
  uint64_t new_offset = 0;
  uint64_t new_length = 0;
  Method method = Method::kStored;
  Transform transform = Transform::kNone;
  uint64_t payload_length = 0;
  uint32_t output_crc32c = 0;  // CRC32C of the rebuilt new bytes of this segment.
  // Transforms kDeflate and kXz only (written after output_crc32c): the old stream
  // old[old_offset, +old_length) whose decoded form (puff or content, old_decoded_length bytes)
  // the method reads as its old file, and the length of the new decoded form it produces.
  uint64_t old_offset = 0;
  uint64_t old_length = 0;
  uint64_t old_decoded_length = 0;
  uint64_t decoded_length = 0;
  // kXz only: liblzma preset (level 0-9, bit 7 = extreme), integrity check id, and block size of
  // the multi-threaded encoder (0: the single-threaded stream encoder).
  uint8_t xz_preset = 0;
  uint8_t xz_check = 0;
  uint64_t xz_block_size = 0;
};

// Serialises |h| (with its checksum, and its transform tables when it has kFlagCodeRegions).
void WriteFileHeader(const FileHeader& h, Bytes* out);

// Parses a file header (and its transform tables, which |*consumed| then includes) from the front
// of |buf|. On success sets |*consumed|. When |buf| is a
// prefix too short to decide, returns OK with |*consumed| == 0 (feed more bytes). Errors:
// kPatchBadMagic, kPatchVersion, kPatchChecksum, kPatchMalformed.
Status ParseFileHeader(ByteView buf, FileHeader* h, size_t* consumed);

// Serialises a segment header followed by its payload. The segment checksum covers both.
void WriteSegment(const SegmentHeader& s, ByteView payload, Bytes* out);

// Parses a segment header (not the payload). On success |*consumed| is the header's length and
// |*crc_state| the running CRC over the header that the payload must continue; the stored CRC is
// returned in |*stored_crc|. Same "need more" convention as ParseFileHeader.
Status ParseSegmentHeader(ByteView buf, SegmentHeader* s, size_t* consumed, uint32_t* crc_state,
                          uint32_t* stored_crc);

// kCopyDiff payload: for each of the control, diff and literal streams a codec byte and a
// (raw_len, encoded_len) varint pair (plus form_len when the stream is in zero-run form), then the
// three encoded streams back to back.
enum CopyDiffStream { kControlStream = 0, kDiffStream = 1, kLiteralStream = 2 };
enum class StreamCodec : uint8_t {
  kStored = 0,  // encoded_len == raw_len, the bytes as they are.
  kZstd = 1,    // a magicless zstd frame (no checksum, size or dictionary id).
  kLzma2 = 2,   // a raw LZMA2 stream; the decoder's dictionary is raw_len bytes.
};
const char* StreamCodecName(StreamCodec c);
// Codec byte bit (DSPF 1.3): the codec decodes to the stream's zero-run form (form_len bytes),
// which expands to the raw_len bytes of the stream. Other high bits are unknown codecs.
inline constexpr uint8_t kCodecZeroRun = 0x10;

// Zero-run form: pairs (varint zeros, varint count, count bytes) — |zeros| zero bytes, then
// |count| bytes as they are — until the form ends; no pair is (0, 0). Sparse streams (the diff
// stream of code that barely changed is mostly zeros) shrink 5-20x before entropy coding, which
// then costs a fraction of the time.
void ZeroRunEncode(ByteView raw, Bytes* form);
// Expands |form| into exactly |out| (whose size is raw_len). kPatchMalformed when the form is
// truncated, holds an empty pair, or does not fill |out| exactly.
Status ZeroRunDecode(ByteView form, std::span<uint8_t> out);
// Checks |form| as ZeroRunDecode would for a stream of |raw_len| bytes, without expanding it.
Status ZeroRunCheck(ByteView form, uint64_t raw_len);

// Control entries: (varint where, varint copy_len, varint lit_len). |where| locates a copy in the
// old file relative to one of two bases: bit 0 clear, the end of the last copy; bit 0 set, the
// end of the copy before it, moved on by the output produced since (to return to an alignment
// after a short copy from elsewhere). The remaining bits are the zig-zag signed distance from
// the base. Entries without a copy have where == 0.
struct CopyAnchor {
  int64_t old_end = 0;   // Where the copy ended in the old file.
  uint64_t new_end = 0;  // Where it ended in the segment's output.
};
inline uint64_t EncodeCopyWhere(int64_t delta, bool from_before_last) {
  const uint64_t zz = (static_cast<uint64_t>(delta) << 1) ^ static_cast<uint64_t>(delta >> 63);
  return (zz << 1) | (from_before_last ? 1 : 0);
}
inline int64_t DecodeCopyDelta(uint64_t where) {
  const uint64_t zz = where >> 1;
  return static_cast<int64_t>(zz >> 1) ^ -static_cast<int64_t>(zz & 1);
}
// REQUIRES: out_pos >= before_last.new_end (anchors come from earlier output).
inline int64_t ResolveCopyBase(uint64_t where, const CopyAnchor& last,
                               const CopyAnchor& before_last, uint64_t out_pos) {
  if ((where & 1) == 0) return last.old_end;
  return before_last.old_end + static_cast<int64_t>(out_pos - before_last.new_end);
}
struct CopyDiffLayout {
  StreamCodec codec[3] = {StreamCodec::kStored, StreamCodec::kStored, StreamCodec::kStored};
  uint64_t raw_len[3] = {0, 0, 0};
  // Zero-run form (kCodecZeroRun): the codec decodes to form_len bytes, 0 < form_len < raw_len.
  bool zero_run[3] = {false, false, false};
  uint64_t form_len[3] = {0, 0, 0};
  ByteView encoded[3];
};
void WriteCopyDiffPayload(const CopyDiffLayout& layout, Bytes* out);
// Splits |payload| (borrowed by the views in |out|). kPatchMalformed on bad framing,
// kPatchUnknownMethod on an unknown codec.
Status ParseCopyDiffPayload(ByteView payload, CopyDiffLayout* out);

// kZstdRef / kLzmaRef payload: ref_offset varint, ref_length varint, then the zstd frame or the
// LZMA2 stream.
struct ZstdRefLayout {
  uint64_t ref_offset = 0;
  uint64_t ref_length = 0;
  ByteView frame;
};
void WriteZstdRefPayload(uint64_t ref_offset, uint64_t ref_length, ByteView frame, Bytes* out);
Status ParseZstdRefPayload(ByteView payload, ZstdRefLayout* out);

// Checks a parsed header against itself (sizes, counts, bounds). kPatchMalformed on failure.
Status ValidateFileHeader(const FileHeader& h);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_PATCH_FORMAT_H_
