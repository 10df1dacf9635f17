// VCDIFF (RFC 3284) building blocks shared by the encoder and the decoder: constants, the
// big-endian base-128 integers, the default instruction code table, the address cache, and the
// Adler-32 checksum of xdelta3's window-checksum extension. docs/VCDIFF.md says which parts of
// the RFC and of xdelta3's extensions deltastream reads and writes.
//
// Thread-safety: plain functions and values; an AddressCache belongs to one coder.
#ifndef DELTASTREAM_DELTA_VCDIFF_FORMAT_H_
#define DELTASTREAM_DELTA_VCDIFF_FORMAT_H_

#include <array>
#include <cstdint>
#include <vector>

#include "common/byte_reader.h"
#include "common/bytes.h"

namespace ds::delta::vcdiff {

// "VCD" with the high bits set, then version 0.
inline constexpr std::array<uint8_t, 4> kMagic = {0xD6, 0xC3, 0xC4, 0x00};

// Hdr_Indicator bits.
inline constexpr uint8_t kHdrSecondary =
    0x01;  // VCD_DECOMPRESS: a secondary compressor id follows.
inline constexpr uint8_t kHdrCodeTable = 0x02;  // VCD_CODETABLE: an application code table follows.
inline constexpr uint8_t kHdrAppHeader = 0x04;  // xdelta3's VCD_APPHEADER: length + bytes follow.

// Win_Indicator bits.
inline constexpr uint8_t kWinSource = 0x01;   // VCD_SOURCE: the window copies from the source.
inline constexpr uint8_t kWinTarget = 0x02;   // VCD_TARGET: it copies from earlier target data.
inline constexpr uint8_t kWinAdler32 = 0x04;  // xdelta3: an Adler-32 of the target window follows.

// Delta_Indicator bits: which sections are secondary-compressed.
inline constexpr uint8_t kDeltaData = 0x01;
inline constexpr uint8_t kDeltaInst = 0x02;
inline constexpr uint8_t kDeltaAddr = 0x04;

// Secondary compressor ids as xdelta3 writes them.
inline constexpr uint8_t kSecondaryDjw = 1;
inline constexpr uint8_t kSecondaryLzma = 2;
inline constexpr uint8_t kSecondaryFgk = 16;
// A readable name for a secondary compressor id ("djw (static Huffman)", "unknown").
const char* SecondaryName(uint8_t id);

// Instruction types.
enum InstType : uint8_t { kNoop = 0, kAdd = 1, kRun = 2, kCopy = 3 };

// One code-table entry: up to two instructions. size 0 means "the size follows as an integer".
struct CodeEntry {
  uint8_t type1 = kNoop, size1 = 0, mode1 = 0;
  uint8_t type2 = kNoop, size2 = 0, mode2 = 0;
};
using CodeTable = std::array<CodeEntry, 256>;

// The RFC 3284 section 5.6 default table (near cache 4, same cache 3).
const CodeTable& DefaultCodeTable();
// The table in the RFC's 1536-byte string form (all type1, all type2, all size1, ...), which an
// application-defined table is delta-coded against (RFC 3284 section 7).
Bytes CodeTableToBytes(const CodeTable& table);
// The inverse; false unless |bytes| has 1536 bytes.
bool CodeTableFromBytes(ByteView bytes, CodeTable* table);

inline constexpr uint32_t kDefaultNearSize = 4;
inline constexpr uint32_t kDefaultSameSize = 3;

// VCDIFF integers: base 128, most significant digit first, high bit = "more digits follow".
// Read fails on truncation or on a value that does not fit in 64 bits.
bool ReadInt(ByteReader* r, uint64_t* v);
void WriteInt(Bytes* out, uint64_t v);
size_t IntSize(uint64_t v);

// The address cache of RFC 3284 section 5.1-5.4.
class AddressCache {
 public:
  AddressCache(uint32_t near_size = kDefaultNearSize, uint32_t same_size = kDefaultSameSize);
  void Reset();
  uint32_t near_size() const { return static_cast<uint32_t>(near_.size()); }
  uint32_t same_size() const { return same_size_; }
  // Modes: 0 self, 1 here, 2..2+near-1 near, then same.
  uint32_t mode_count() const { return 2 + near_size() + same_size_; }

  // Encoder: picks the cheapest mode for |addr| at |here| (addr < here), appends its encoding to
  // |addrs| (an integer, or a single byte for same modes), updates the cache, returns the mode.
  uint8_t Encode(uint64_t addr, uint64_t here, Bytes* addrs);
  // Encoder cost estimate without side effects: bytes the address would take.
  size_t Cost(uint64_t addr, uint64_t here) const;

  // The near slots and the next one to be replaced, and whether |addr| is in the same cache
  // (for encoders that track the near cache along several candidate paths).
  const std::vector<uint64_t>& near_slots() const { return near_; }
  uint32_t next_slot() const { return next_slot_; }
  bool SameHit(uint64_t addr) const { return !same_.empty() && same_[addr % same_.size()] == addr; }

  // Decoder: reads an address in |mode| from |addrs|; false if the section is short or the mode
  // is unknown. The caller checks addr < here. Updates the cache on success.
  bool Decode(uint8_t mode, uint64_t here, ByteReader* addrs, uint64_t* addr);

 private:
  void Update(uint64_t addr);
  std::vector<uint64_t> near_;
  std::vector<uint64_t> same_;
  uint32_t same_size_;
  uint32_t next_slot_ = 0;
};

// Adler-32 (zlib's definition, initial value 1), updated incrementally.
uint32_t Adler32(uint32_t adler, ByteView data);

}  // namespace ds::delta::vcdiff

#endif  // DELTASTREAM_DELTA_VCDIFF_FORMAT_H_
