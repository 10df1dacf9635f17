// Deflate "puffs": a byte-oriented, bit-exact representation of a raw deflate stream (RFC 1951).
//
// A deflate stream is a bit stream; one inserted byte near the start of the content changes
// every compressed bit after it, so byte-level deltas between two compressed files are useless.
// Puff() decodes a stream into a puff, which keeps every choice the encoder made (block
// boundaries, block types, Huffman headers exactly as coded, padding bits, the literal/copy
// sequence) but spells them byte-aligned: literals appear as runs of raw bytes and copies as
// fixed-size records, so content that did not change stays byte-identical in the puff. Huff()
// turns a puff back into exactly the original deflate bytes; no re-compression is involved, so
// this works for any encoder (zlib, Node, 7-Zip, ...), unlike re-deflating with zlib.
//
// Puff format (version 1; all integers little-endian; also in docs/FORMAT.md):
//
//   puff    := "DSPU" version:u8(=1) block* trailer
//   block   := tag:u8 body          tag = BFINAL | BTYPE << 1, BTYPE 0..2 (tag 0..5)
//   body    := stored | fixed | dynamic
//   stored  := pad:u8 len:u16 data[len]        (pad: the bits skipped to reach the byte
//                                               boundary before LEN, LSB first; NLEN = ~LEN)
//   fixed   := record* eob
//   dynamic := hlit:u8 hdist:u8 hclen:u8 cl[hclen+4]:u8 clsym* record* eob
//              hlit = HLIT (0..29), hdist = HDIST (0..29), hclen = HCLEN (0..15) as coded;
//              cl[i] (0..7) = code-length-code lengths in the order they were coded;
//              clsym = one byte per code-length symbol as coded: 0..15 a length, 16..19 symbol
//              16 with extra bits 0..3, 20..27 symbol 17 with extra 0..7, 28..155 symbol 18
//              with extra 0..127; exactly as many as fill HLIT+257 + HDIST+1 lengths.
//   record  := 0x00..0x7E byte[tag+1]          literal run of 1..127 bytes
//            | 0x7F varint(n-128) byte[n]      literal run of n >= 128 bytes (LEB128)
//            | 0x80 len-3:u8 dist-1:u16        copy (the usual length symbol)
//            | 0x81 dist-1:u16                 copy of 258 bytes coded as symbol 284 + 31
//   eob     := 0x82                            end of block (symbol 256)
//   trailer := pad:u8                          the bits after the final block up to the
//                                              byte boundary
//
// Puff() writes literal runs as long as possible (never two runs in a row). What is refused,
// because it is invalid deflate or could not be re-encoded bit-exactly: BTYPE 3, NLEN != ~LEN,
// HLIT > 29 or HDIST > 29, over-subscribed codes, incomplete codes (except, as zlib allows, a
// literal/length or distance code with a single code of length 1, and a distance code with no
// codes at all), a code-length code that is incomplete, a repeat (16) with nothing before it or
// repeats past the declared lengths, no code for end-of-block, literal/length symbols 286/287,
// distance symbols 30/31, distances before the start of the stream, truncated input. Huff()
// checks the same rules on the puff (plus: every literal, length and distance it must write has
// a code, pad values fit their bit count, nothing follows the trailer).
//
// Errors: kInvalidArgument (malformed or truncated deflate / gzip), kPatchMalformed (malformed
// puff), kResourceLimit (a PuffLimits bound exceeded).
//
// Work and memory are linear: Puff() is O(input + puff) and never materialises the inflated
// content unless asked to; a puff is at most 16 * (deflate bytes) + 16 bytes long (a copy
// record is 4 bytes and takes at least 2 bits), and limits.max_puff caps it further.
// Huff() is O(puff) and writes at most about 1.9 bytes per puff byte.
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_DEFLATE_PUFF_H_
#define DELTASTREAM_DELTA_DEFLATE_PUFF_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

inline constexpr uint8_t kPuffVersion = 1;

struct PuffLimits {
  // The inflated content of one stream (kResourceLimit beyond).
  uint64_t max_inflated = uint64_t{1} << 30;
  // The puff of one stream (kResourceLimit beyond).
  uint64_t max_puff = uint64_t{1} << 30;
};

struct Puffed {
  Bytes puff;
  uint64_t deflate_size = 0;   // Bytes of the input the stream occupies (incl. final padding).
  uint64_t inflated_size = 0;  // Size of the decompressed content.
};

// Decodes the raw deflate stream at the start of |deflate| (bytes after it are ignored). With
// |content| non-null, the inflated bytes are also stored there (replacing its contents).
Result<Puffed> Puff(ByteView deflate, const PuffLimits& limits = {}, Bytes* content = nullptr);

// The exact deflate bytes a puff was made from. |puff| is untrusted.
Result<Bytes> Huff(ByteView puff);

// The inflated content of a puff (kResourceLimit beyond |max_inflated| bytes). Fails exactly
// when Huff() would fail on the same puff, or on the limit.
Result<Bytes> InflatePuff(ByteView puff, uint64_t max_inflated = PuffLimits{}.max_inflated);

// One member of a gzip file (RFC 1952). Offsets are into the file.
struct GzipMember {
  uint64_t offset = 0;          // Start of the member (the 1f 8b magic).
  uint64_t deflate_offset = 0;  // Start of the raw deflate stream (after the header).
  uint64_t deflate_size = 0;
  uint64_t end = 0;  // One past the 8-byte trailer.
  uint8_t flags = 0;
  uint32_t mtime = 0;
  uint8_t xfl = 0;
  uint8_t os = 0;
  uint32_t crc32 = 0;  // From the trailer (not verified here).
  uint32_t isize = 0;  // From the trailer; checked against the inflated size mod 2^32.
  uint64_t inflated_size = 0;
  Bytes puff;  // The puff of the deflate stream when ParseGzip was asked to keep it.
};

// The members of a gzip file, in order; the file must be exactly a sequence of members (no
// trailing bytes). Header fields FEXTRA/FNAME/FCOMMENT/FHCRC are skipped (FHCRC not verified);
// reserved flag bits and methods other than 8 are refused (kInvalidArgument), as is an empty file.
// |limits| apply to each member.
Result<std::vector<GzipMember>> ParseGzip(ByteView file, const PuffLimits& limits = {},
                                          bool keep_puffs = false);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_DEFLATE_PUFF_H_
