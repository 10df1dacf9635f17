#include "delta/lzma_replay.h"

#include <lzma.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "common/hash.h"
#include "delta/deflate_puff.h"

namespace ds::delta {
namespace {

constexpr uint32_t kTop = 1u << 24;
constexpr uint16_t kProbInit = 1 << 10;
constexpr int kEndPosModelIndex = 14;
constexpr int kNumFullDistances = 128;
constexpr uint32_t kMaxDist = (1u << 24) - 1;  // Largest dist (distance - 1) a token holds.
constexpr uint32_t kMaxLenCode = 271;          // Lengths 2..273.
constexpr size_t kXzHeaderSize = 12;

constexpr uint8_t kTokLiteral = 0x00;
constexpr uint8_t kTokMatch = 0x01;
constexpr uint8_t kTokShortRep = 0x02;
constexpr uint8_t kTokRep0 = 0x03;
constexpr uint8_t kTokLongLen = 0x08;

Status Bad(ErrorCode code, const char* what) {
  return Error(code, std::string(code == ErrorCode::kPatchMalformed ? "malformed xz replay form: "
                                                                    : "unsupported .xz stream: ") +
                         what);
}

struct LenModel {
  uint16_t choice;
  uint16_t choice2;
  uint16_t low[16][8];
  uint16_t mid[16][8];
  uint16_t high[256];
};

// The adaptive probabilities of one LZMA coder (identical on both sides) and its state.
struct Model {
  struct Fixed {
    uint16_t is_match[12][16];
    uint16_t is_rep[12];
    uint16_t is_rep_g0[12];
    uint16_t is_rep_g1[12];
    uint16_t is_rep_g2[12];
    uint16_t is_rep0_long[12][16];
    uint16_t pos_slot[4][64];
    uint16_t spec_pos[kNumFullDistances - kEndPosModelIndex];
    uint16_t align[16];
    LenModel len;
    LenModel rep_len;
  } p;
  std::vector<uint16_t> literal;
  uint32_t lc = 3, lp = 0, pb = 2;
  uint32_t state = 0;
  uint32_t reps[4] = {0, 0, 0, 0};
  bool ready = false;

  void Reset() {
    static_assert(sizeof(Fixed) % sizeof(uint16_t) == 0);
    std::fill_n(reinterpret_cast<uint16_t*>(&p), sizeof(Fixed) / sizeof(uint16_t), kProbInit);
    literal.assign(size_t{0x300} << (lc + lp), kProbInit);
    state = 0;
    reps[0] = reps[1] = reps[2] = reps[3] = 0;
    ready = true;
  }
  // From an LZMA properties byte; false when out of range for LZMA2 (lc + lp <= 4, pb <= 4).
  bool SetProps(uint8_t props) {
    if (props >= 9 * 5 * 5) return false;
    const uint32_t c = props % 9, l = (props / 9) % 5, b = props / 45;
    if (c + l > 4 || b > 4) return false;
    lc = c;
    lp = l;
    pb = b;
    return true;
  }
  uint16_t* LiteralProbs(uint64_t pos, uint8_t prev) {
    const uint64_t ctx = ((pos & ((1u << lp) - 1)) << lc) + (prev >> (8 - lc));
    return literal.data() + 0x300 * ctx;
  }
  void AfterLiteral() { state = state < 4 ? 0 : (state < 10 ? state - 3 : state - 6); }
  void AfterMatch() { state = state < 7 ? 7 : 10; }
  void AfterRep() { state = state < 7 ? 8 : 11; }
  void AfterShortRep() { state = state < 7 ? 9 : 11; }
};

class RangeDecoder {
 public:
  bool Init(ByteView in) {
    in_ = in;
    if (in.size() < 5 || in[0] != 0) return false;
    code_ = uint32_t{in[1]} << 24 | uint32_t{in[2]} << 16 | uint32_t{in[3]} << 8 | in[4];
    range_ = 0xFFFFFFFF;
    pos_ = 5;
    return true;
  }
  uint32_t Bit(uint16_t* prob) {
    const uint32_t bound = (range_ >> 11) * *prob;
    uint32_t bit;
    if (code_ < bound) {
      range_ = bound;
      *prob += ((1 << 11) - *prob) >> 5;
      bit = 0;
    } else {
      range_ -= bound;
      code_ -= bound;
      *prob -= *prob >> 5;
      bit = 1;
    }
    Normalize();
    return bit;
  }
  uint32_t Direct(int n) {
    uint32_t r = 0;
    while (n-- > 0) {
      range_ >>= 1;
      uint32_t bit = 0;
      if (code_ >= range_) {
        code_ -= range_;
        bit = 1;
      }
      r = (r << 1) | bit;
      Normalize();
    }
    return r;
  }
  uint32_t Tree(uint16_t* probs, int bits) {
    uint32_t m = 1;
    for (int i = 0; i < bits; ++i) m = (m << 1) | Bit(&probs[m]);
    return m - (1u << bits);
  }
  // Reverse bit tree whose node m is probs[offset + m].
  uint32_t ReverseTree(uint16_t* probs, int64_t offset, int bits) {
    uint32_t m = 1, sym = 0;
    for (int i = 0; i < bits; ++i) {
      const uint32_t b = Bit(&probs[offset + m]);
      m = (m << 1) | b;
      sym |= b << i;
    }
    return sym;
  }
  // A valid chunk ends exactly where its range coder's flush does.
  bool Finished() const { return !overrun_ && pos_ == in_.size() && code_ == 0; }
  bool overrun() const { return overrun_; }

 private:
  void Normalize() {
    if (range_ < kTop) {
      range_ <<= 8;
      code_ = (code_ << 8) | Next();
    }
  }
  uint8_t Next() {
    if (pos_ < in_.size()) return in_[pos_++];
    overrun_ = true;
    return 0;
  }
  ByteView in_;
  size_t pos_ = 0;
  uint32_t code_ = 0;
  uint32_t range_ = 0;
  bool overrun_ = false;
};

class RangeEncoder {
 public:
  explicit RangeEncoder(Bytes* out) : out_(out) {}
  [[gnu::always_inline]] void Bit(uint16_t* prob, uint32_t bit) {
    const uint32_t bound = (range_ >> 11) * *prob;
    if (bit == 0) {
      range_ = bound;
      *prob += ((1 << 11) - *prob) >> 5;
    } else {
      low_ += bound;
      range_ -= bound;
      *prob -= *prob >> 5;
    }
    if (range_ < kTop) {
      range_ <<= 8;
      ShiftLow();
    }
  }
  void Direct(uint32_t value, int n) {
    while (n-- > 0) {
      range_ >>= 1;
      if ((value >> n) & 1) low_ += range_;
      if (range_ < kTop) {
        range_ <<= 8;
        ShiftLow();
      }
    }
  }
  void Tree(uint16_t* probs, int bits, uint32_t sym) {
    uint32_t m = 1;
    for (int i = bits - 1; i >= 0; --i) {
      const uint32_t b = (sym >> i) & 1;
      Bit(&probs[m], b);
      m = (m << 1) | b;
    }
  }
  void ReverseTree(uint16_t* probs, int64_t offset, int bits, uint32_t sym) {
    uint32_t m = 1;
    for (int i = 0; i < bits; ++i) {
      const uint32_t b = (sym >> i) & 1;
      Bit(&probs[offset + m], b);
      m = (m << 1) | b;
    }
  }
  void Flush() {
    for (int i = 0; i < 5; ++i) ShiftLow();
  }

 private:
  void ShiftLow() {
    if (static_cast<uint32_t>(low_) < 0xFF000000u || (low_ >> 32) != 0) {
      const uint8_t carry = static_cast<uint8_t>(low_ >> 32);
      uint8_t temp = cache_;
      do {
        out_->push_back(static_cast<uint8_t>(temp + carry));
        temp = 0xFF;
      } while (--cache_size_ != 0);
      cache_ = static_cast<uint8_t>(low_ >> 24);
    }
    ++cache_size_;
    low_ = (low_ & 0x00FFFFFF) << 8;
  }
  Bytes* out_;
  uint64_t low_ = 0;
  uint32_t range_ = 0xFFFFFFFF;
  uint8_t cache_ = 0;
  uint64_t cache_size_ = 1;
};

[[gnu::always_inline]] inline uint32_t DecodeLen(RangeDecoder& rc, LenModel& m,
                                                 uint32_t pos_state) {
  if (rc.Bit(&m.choice) == 0) return rc.Tree(m.low[pos_state], 3);
  if (rc.Bit(&m.choice2) == 0) return 8 + rc.Tree(m.mid[pos_state], 3);
  return 16 + rc.Tree(m.high, 8);
}

void EncodeLen(RangeEncoder& rc, LenModel& m, uint32_t pos_state, uint32_t len_code) {
  if (len_code < 8) {
    rc.Bit(&m.choice, 0);
    rc.Tree(m.low[pos_state], 3, len_code);
  } else if (len_code < 16) {
    rc.Bit(&m.choice, 1);
    rc.Bit(&m.choice2, 0);
    rc.Tree(m.mid[pos_state], 3, len_code - 8);
  } else {
    rc.Bit(&m.choice, 1);
    rc.Bit(&m.choice2, 1);
    rc.Tree(m.high, 8, len_code - 16);
  }
}

[[gnu::always_inline]] inline uint32_t DecodeDist(RangeDecoder& rc, Model& m, uint32_t len_code) {
  const uint32_t slot = rc.Tree(m.p.pos_slot[std::min<uint32_t>(len_code, 3)], 6);
  if (slot < 4) return slot;
  const int direct = static_cast<int>(slot >> 1) - 1;
  uint32_t dist = (2 | (slot & 1)) << direct;
  if (slot < kEndPosModelIndex) {
    return dist + rc.ReverseTree(m.p.spec_pos, int64_t{dist} - slot - 1, direct);
  }
  dist += rc.Direct(direct - 4) << 4;
  return dist + rc.ReverseTree(m.p.align, 0, 4);
}

void EncodeDist(RangeEncoder& rc, Model& m, uint32_t len_code, uint32_t dist) {
  uint32_t slot;
  if (dist < 4) {
    slot = dist;
  } else {
    const int top = 31 - __builtin_clz(dist);  // >= 2
    slot = (static_cast<uint32_t>(top) << 1) | ((dist >> (top - 1)) & 1);
  }
  rc.Tree(m.p.pos_slot[std::min<uint32_t>(len_code, 3)], 6, slot);
  if (slot < 4) return;
  const int direct = static_cast<int>(slot >> 1) - 1;
  const uint32_t base = (2 | (slot & 1)) << direct;
  const uint32_t rest = dist - base;
  if (slot < kEndPosModelIndex) {
    rc.ReverseTree(m.p.spec_pos, int64_t{base} - slot - 1, direct, rest);
    return;
  }
  rc.Direct(rest >> 4, direct - 4);
  rc.ReverseTree(m.p.align, 0, 4, rest & 15);
}

uint32_t DictSize(uint8_t d) {
  if (d >= 40) return 0xFFFFFFFF;
  return (2u | (d & 1u)) << (d / 2 + 11);
}

// An LZMA2 chunk's header (RFC-less; see the xz file format's LZMA2 description).
struct ChunkHeader {
  uint8_t control = 0;
  uint32_t unpacked = 0;  // Content bytes the chunk holds.
  uint32_t packed = 0;    // Payload bytes (== unpacked for uncompressed chunks).
  uint8_t props = 0;
  bool lzma() const { return control >= 0x80; }
  uint32_t reset() const { return lzma() ? (control >> 5) & 3 : 0; }
};

// What the chunk walk keeps between chunks of one LZMA2 stream (one .xz block).
struct Lzma2State {
  Model model;
  uint64_t dict_start = 0;  // Content offset of the last dictionary reset.
  uint32_t dict_size = 0;
  bool need_dict_reset = true;
  bool need_props = true;
};

// Applies a chunk header's resets to |s| (same rules as liblzma's LZMA2 decoder). |content_pos|
// is where the chunk's content starts.
bool StartChunk(const ChunkHeader& h, uint64_t content_pos, Lzma2State* s) {
  const bool dict_reset = h.control == 1 || h.reset() == 3;
  if (dict_reset) {
    s->dict_start = content_pos;
    s->need_dict_reset = false;
    // As liblzma: after a dictionary reset the next LZMA chunk must state its properties.
    s->need_props = true;
  } else if (s->need_dict_reset) {
    return false;
  }
  if (!h.lzma()) return true;
  if (h.reset() >= 2) {
    if (!s->model.SetProps(h.props)) return false;
    s->need_props = false;
  } else if (s->need_props) {
    return false;
  }
  if (h.reset() >= 1) {
    s->model.Reset();
  } else if (!s->model.ready) {
    return false;
  }
  return true;
}

uint32_t Le32(const uint8_t* p) {
  return p[0] | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

// Whether |field| (4 bytes, little-endian) is the CRC32 of |covered|.
bool Crc32Matches(ByteView covered, const uint8_t* field) {
  return lzma_crc32(covered.data(), covered.size(), 0) == Le32(field);
}

// Whether |value| is the integrity check |check| of |content|.
bool CheckMatches(uint32_t check, ByteView content, ByteView value) {
  switch (check) {
    case 0:
      return true;
    case 1:
      return Crc32Matches(content, value.data());
    case 4: {
      const uint64_t crc = lzma_crc64(content.data(), content.size(), 0);
      for (int i = 0; i < 8; ++i) {
        if (value[i] != static_cast<uint8_t>(crc >> (8 * i))) return false;
      }
      return true;
    }
    case 10: {
      const Sha256Digest d = Sha256::Of(content);
      return std::memcmp(d.data(), value.data(), d.size()) == 0;
    }
  }
  return false;
}

// Walks one .xz stream (or a replay form's frame, where chunk payloads are absent), handing its
// container bytes and LZMA2 chunks to |sink|:
//   static constexpr bool kVerify    check CRC32s, integrity checks, sizes and the index, as
//                                     liblzma's decoder does (a frame is copied as it is: the
//                                     applier checks what it rebuilds as a whole)
//   uint64_t ContentSize()           content so far
//   ByteView Content(uint64_t from)  content from |from| on (kVerify only)
//   Status Container(ByteView bytes)
//   Status BlockStart(uint32_t dict_size)
//   Status Chunk(const ChunkHeader& h, ByteReader& r)   (reads the payload in stream mode)
template <typename Sink>
Status WalkXz(ByteReader& r, ErrorCode bad, Sink& sink) {
  ByteView v;
  if (!r.ReadView(kXzHeaderSize, &v)) return Bad(bad, "truncated stream header");
  static constexpr uint8_t kMagic[6] = {0xFD, '7', 'z', 'X', 'Z', 0x00};
  if (std::memcmp(v.data(), kMagic, 6) != 0) return Bad(bad, "no .xz magic");
  if (v[6] != 0 || (v[7] & 0xF0) != 0) return Bad(bad, "unknown stream flags");
  const uint32_t check = v[7] & 0x0F;
  const size_t check_size = check == 0 ? 0 : size_t{4} << ((check - 1) / 3);
  if constexpr (Sink::kVerify) {
    if (check != 0 && check != 1 && check != 4 && check != 10) {
      return Bad(bad, "integrity check type not supported");
    }
    if (!Crc32Matches(v.subspan(6, 2), v.data() + 8)) return Bad(bad, "stream header CRC32");
  }
  const uint8_t stream_flags = v[7];
  DS_RETURN_IF_ERROR(sink.Container(v));
  // (unpadded size, uncompressed size) of each block, for the index.
  std::vector<std::pair<uint64_t, uint64_t>> sizes;
  for (;;) {
    uint8_t first;
    {
      ByteReader peek = r;
      if (!peek.ReadU8(&first)) return Bad(bad, "truncated block");
    }
    if (first == 0) break;  // Index indicator.
    if (!r.ReadView((size_t{first} + 1) * 4, &v)) return Bad(bad, "truncated block header");
    const uint8_t flags = v[1];
    if ((flags & 0x3C) != 0 || (flags & 3) != 0) return Bad(bad, "not a single-filter block");
    ByteReader hr(v.subspan(2, v.size() - 6));
    uint64_t ignored, id, props_size;
    uint8_t props;
    if (((flags & 0x40) && !hr.ReadVarint(&ignored)) ||
        ((flags & 0x80) && !hr.ReadVarint(&ignored)) || !hr.ReadVarint(&id) ||
        !hr.ReadVarint(&props_size) || !hr.ReadU8(&props)) {
      return Bad(bad, "malformed block header");
    }
    if (id != 0x21 || props_size != 1 || props > 40) return Bad(bad, "filter is not LZMA2");
    uint64_t declared_packed = 0, declared_unpacked = 0;
    if constexpr (Sink::kVerify) {
      ByteReader sr(v.subspan(2, v.size() - 6));
      if (((flags & 0x40) && (!sr.ReadVarint(&declared_packed) || declared_packed == 0)) ||
          ((flags & 0x80) && !sr.ReadVarint(&declared_unpacked))) {
        return Bad(bad, "malformed block header");
      }
      for (size_t i = 2 + sr.position() + 3; i < v.size() - 4; ++i) {
        if (v[i] != 0) return Bad(bad, "block header padding not zero");
      }
      if (!Crc32Matches(v.first(v.size() - 4), v.data() + v.size() - 4)) {
        return Bad(bad, "block header CRC32");
      }
    }
    const size_t block_header_size = v.size();
    const uint64_t block_content_start = sink.ContentSize();
    DS_RETURN_IF_ERROR(sink.Container(v));
    DS_RETURN_IF_ERROR(sink.BlockStart(DictSize(props)));
    uint64_t data_size = 0;
    for (;;) {
      uint8_t control;
      {
        ByteReader peek = r;
        if (!peek.ReadU8(&control)) return Bad(bad, "truncated LZMA2 data");
      }
      size_t header_size = 1;
      if (control == 1 || control == 2) {
        header_size = 3;
      } else if (control >= 0x80) {
        header_size = ((control >> 5) & 3) >= 2 ? 6 : 5;
      } else if (control != 0) {
        return Bad(bad, "invalid LZMA2 control byte");
      }
      if (!r.ReadView(header_size, &v)) return Bad(bad, "truncated LZMA2 chunk header");
      DS_RETURN_IF_ERROR(sink.Container(v));
      data_size += header_size;
      if (control == 0) break;
      ChunkHeader h;
      h.control = control;
      const uint32_t size_field = uint32_t{v[1]} << 8 | v[2];
      if (h.lzma()) {
        h.unpacked = ((uint32_t{control} & 0x1F) << 16) + size_field + 1;
        h.packed = (uint32_t{v[3]} << 8 | v[4]) + 1;
        if (header_size == 6) h.props = v[5];
      } else {
        h.unpacked = h.packed = size_field + 1;
      }
      DS_RETURN_IF_ERROR(sink.Chunk(h, r));
      data_size += h.packed;
    }
    const size_t pad = (4 - data_size % 4) % 4;
    if (!r.ReadView(pad + check_size, &v)) return Bad(bad, "truncated block padding or check");
    const uint64_t unpacked = sink.ContentSize() - block_content_start;
    if constexpr (Sink::kVerify) {
      if (((flags & 0x40) && declared_packed != data_size) ||
          ((flags & 0x80) && declared_unpacked != unpacked)) {
        return Bad(bad, "block sizes differ from its header");
      }
      for (size_t i = 0; i < pad; ++i) {
        if (v[i] != 0) return Bad(bad, "block padding not zero");
      }
      if (!CheckMatches(check, sink.Content(block_content_start), v.subspan(pad))) {
        return Bad(bad, "integrity check of a block");
      }
    }
    DS_RETURN_IF_ERROR(sink.Container(v));
    sizes.emplace_back(block_header_size + data_size + check_size, unpacked);
  }
  // Index: indicator, record count, records (unpadded size, uncompressed size), padding, CRC32;
  // then the stream footer.
  const size_t index_start = r.position();
  ByteReader ir = r;
  uint8_t indicator;
  uint64_t records;
  if (!ir.ReadU8(&indicator) || !ir.ReadVarint(&records) || records != sizes.size()) {
    return Bad(bad, "malformed index");
  }
  for (uint64_t i = 0; i < records; ++i) {
    uint64_t unpadded, uncompressed;
    if (!ir.ReadVarint(&unpadded) || !ir.ReadVarint(&uncompressed)) {
      return Bad(bad, "malformed index");
    }
    if (Sink::kVerify && (unpadded != sizes[i].first || uncompressed != sizes[i].second)) {
      return Bad(bad, "index differs from the blocks");
    }
  }
  const size_t index_size = ir.position() - index_start;
  const size_t padded = index_size + (4 - index_size % 4) % 4;
  const size_t total = padded + 4 + kXzHeaderSize;
  if (!r.ReadView(total, &v)) return Bad(bad, "truncated index or footer");
  if (v[total - 2] != 'Y' || v[total - 1] != 'Z') return Bad(bad, "no stream footer");
  if constexpr (Sink::kVerify) {
    const uint8_t* footer = v.data() + padded + 4;
    for (size_t i = index_size; i < padded; ++i) {
      if (v[i] != 0) return Bad(bad, "index padding not zero");
    }
    if (!Crc32Matches(v.first(padded), v.data() + padded) ||
        !Crc32Matches(ByteView(footer + 4, 6), footer) ||
        Le32(footer + 4) != (padded + 4) / 4 - 1 || footer[8] != 0 || footer[9] != stream_flags) {
      return Bad(bad, "index or stream footer does not check");
    }
  }
  return sink.Container(v);
}

// A deflate stream inside the content that the form holds as its puff.
struct InnerStream {
  uint64_t offset = 0;  // In the content.
  uint64_t deflate_length = 0;
  Bytes puff;
};

constexpr uint64_t kMinInnerDeflate = 64;
// The puffs of one form's inner streams, at most (a constant, so that the applier derives from an
// old stream the very form the generator did; the caller's bound applies to the whole form).
constexpr uint64_t kMaxInnerPuffs = 64ull << 20;
constexpr size_t kTarBlock = 512;

// A tar header's octal number field (digits, then NUL or space; leading spaces allowed).
bool TarOctal(const uint8_t* f, size_t n, uint64_t* v) {
  size_t i = 0;
  while (i < n && f[i] == ' ') ++i;
  *v = 0;
  size_t digits = 0;
  for (; i < n && f[i] >= '0' && f[i] <= '7'; ++i, ++digits) {
    if (*v >> 60) return false;
    *v = *v * 8 + (f[i] - '0');
  }
  return digits > 0 && (i == n || f[i] == 0 || f[i] == ' ');
}

// The gzip'd files of a tar archive (.deb data.tar, source tarballs: changelog.gz, man pages):
// every regular file whose data is exactly a sequence of gzip members gives their deflate streams
// of at least kMinInnerDeflate bytes, with their puffs, as long as the puffs fit in |budget|.
// The walk stops at the end-of-archive block or at the first header that does not check
// (ustar/GNU headers with octal sizes; a content that is not a tar gives nothing).
std::vector<InnerStream> FindInnerDeflate(ByteView content, uint64_t budget) {
  std::vector<InnerStream> out;
  uint64_t pos = 0, spent = 0;
  while (pos + kTarBlock <= content.size()) {
    const uint8_t* h = content.data() + pos;
    uint64_t stored, size;
    if (!TarOctal(h + 148, 8, &stored) || !TarOctal(h + 124, 12, &size)) break;
    uint64_t sum = 0;
    for (size_t i = 0; i < kTarBlock; ++i) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    if (sum != stored) break;
    const uint64_t data = pos + kTarBlock;
    if (size > content.size() - data) break;
    const uint8_t type = h[156];
    if ((type == '0' || type == 0) && size >= kMinInnerDeflate && content[data] == 0x1f &&
        content[data + 1] == 0x8b) {
      PuffLimits limits;
      limits.max_puff = budget - spent;
      Result<std::vector<GzipMember>> members =
          ParseGzip(content.subspan(data, size), limits, /*keep_puffs=*/true);
      if (members.ok()) {
        for (GzipMember& m : *members) {
          if (m.deflate_size < kMinInnerDeflate || m.puff.size() > budget - spent) continue;
          spent += m.puff.size();
          out.push_back({data + m.deflate_offset, m.deflate_size, std::move(m.puff)});
        }
      }
    }
    pos = data + (size + kTarBlock - 1) / kTarBlock * kTarBlock;
  }
  return out;
}

// Stream -> form.
class Decoder {
 public:
  static constexpr bool kVerify = true;
  explicit Decoder(uint64_t max_content) : max_content_(max_content) {}

  uint64_t ContentSize() const { return content_.size(); }
  ByteView Content(uint64_t from) const { return ByteView(content_).subspan(from); }
  Status Container(ByteView v) {
    frame_.insert(frame_.end(), v.begin(), v.end());
    return Status::Ok();
  }
  Status BlockStart(uint32_t dict_size) {
    s_ = Lzma2State{};
    s_.dict_size = dict_size;
    return Status::Ok();
  }
  Status Chunk(const ChunkHeader& h, ByteReader& r) {
    ByteView payload;
    if (!r.ReadView(h.packed, &payload)) return Bad(kBad, "truncated LZMA2 chunk");
    if (content_.size() + h.unpacked > max_content_) {
      return Error(ErrorCode::kResourceLimit, "xz content larger than allowed");
    }
    if (!StartChunk(h, content_.size(), &s_)) return Bad(kBad, "LZMA2 chunk without its resets");
    if (!h.lzma()) {
      content_.insert(content_.end(), payload.begin(), payload.end());
      return Status::Ok();
    }
    return DecodeChunk(h, payload);
  }

  Result<ReplayForm> Finish(uint64_t stream_size) {
    std::vector<InnerStream> inner = FindInnerDeflate(content_, kMaxInnerPuffs);
    Bytes table;
    ByteWriter t(&table);
    t.WriteVarint(inner.size());
    uint64_t expanded = content_.size(), prev = 0;
    for (const InnerStream& s : inner) {
      t.WriteVarint(s.offset - prev);
      t.WriteVarint(s.deflate_length);
      t.WriteVarint(s.puff.size());
      prev = s.offset + s.deflate_length;
      expanded = expanded - s.deflate_length + s.puff.size();
    }
    ReplayForm f;
    f.stream_size = stream_size;
    f.form.reserve(32 + table.size() + expanded + frame_.size() + parse_.size());
    ByteWriter w(&f.form);
    w.WriteBytes(ByteView(reinterpret_cast<const uint8_t*>("DSXR"), 4));
    w.WriteU8(kReplayFormVersion);
    w.WriteVarint(expanded);
    w.WriteVarint(frame_.size());
    w.WriteBytes(table);
    prev = 0;
    for (const InnerStream& s : inner) {
      w.WriteBytes(ByteView(content_).subspan(prev, s.offset - prev));
      w.WriteBytes(s.puff);
      prev = s.offset + s.deflate_length;
    }
    w.WriteBytes(ByteView(content_).subspan(prev));
    w.WriteBytes(frame_);
    w.WriteBytes(parse_);
    if (f.form.size() > max_content_) {
      return Error(ErrorCode::kResourceLimit, "xz replay form larger than allowed");
    }
    f.content = std::move(content_);
    return f;
  }

 private:
  static constexpr ErrorCode kBad = ErrorCode::kInvalidArgument;

  Status DecodeChunk(const ChunkHeader& h, ByteView payload) {
    RangeDecoder rc;
    if (!rc.Init(payload)) return Bad(kBad, "bad range coder start");
    Model& m = s_.model;
    const uint64_t end = content_.size() + h.unpacked;
    if (content_.capacity() < end) {  // Room for the whole chunk (grown geometrically).
      content_.reserve(
          std::max<uint64_t>(end, std::min<uint64_t>(2 * content_.capacity(), max_content_)));
    }
    const uint32_t pb_mask = (1u << m.pb) - 1;
    while (content_.size() < end) {
      const uint64_t pos = content_.size() - s_.dict_start;
      const uint32_t ps = static_cast<uint32_t>(pos) & pb_mask;
      const uint32_t st = m.state;
      if (rc.Bit(&m.p.is_match[st][ps]) == 0) {
        const uint8_t prev = pos == 0 ? 0 : content_.back();
        uint16_t* probs = m.LiteralProbs(pos, prev);
        uint32_t sym = 1;
        if (st >= 7) {
          if (m.reps[0] >= pos) return Bad(kBad, "matched literal before the block");
          uint32_t match_byte = content_[content_.size() - m.reps[0] - 1];
          while (sym < 0x100) {
            const uint32_t match_bit = (match_byte >> 7) & 1;
            match_byte <<= 1;
            const uint32_t bit = rc.Bit(&probs[((1 + match_bit) << 8) + sym]);
            sym = (sym << 1) | bit;
            if (bit != match_bit) break;
          }
        }
        while (sym < 0x100) sym = (sym << 1) | rc.Bit(&probs[sym]);
        content_.push_back(static_cast<uint8_t>(sym));
        parse_.push_back(kTokLiteral);
        m.AfterLiteral();
      } else {
        uint32_t len_code;
        if (rc.Bit(&m.p.is_rep[st]) == 0) {
          len_code = DecodeLen(rc, m.p.len, ps);
          const uint32_t dist = DecodeDist(rc, m, len_code);
          if (dist >= pos || dist >= s_.dict_size || dist > kMaxDist) {
            return Bad(kBad, "match distance out of range");
          }
          m.reps[3] = m.reps[2];
          m.reps[2] = m.reps[1];
          m.reps[1] = m.reps[0];
          m.reps[0] = dist;
          m.AfterMatch();
          parse_.push_back(kTokMatch | (len_code >= 256 ? kTokLongLen : 0));
          parse_.push_back(static_cast<uint8_t>(len_code));
          parse_.push_back(static_cast<uint8_t>(dist));
          parse_.push_back(static_cast<uint8_t>(dist >> 8));
          parse_.push_back(static_cast<uint8_t>(dist >> 16));
        } else {
          uint32_t k = 0;
          if (rc.Bit(&m.p.is_rep_g0[st]) == 0) {
            if (rc.Bit(&m.p.is_rep0_long[st][ps]) == 0) {
              if (m.reps[0] >= pos) return Bad(kBad, "short rep before the block");
              content_.push_back(content_[content_.size() - m.reps[0] - 1]);
              parse_.push_back(kTokShortRep);
              m.AfterShortRep();
              if (rc.overrun()) return Bad(kBad, "truncated LZMA2 chunk");
              continue;
            }
          } else if (rc.Bit(&m.p.is_rep_g1[st]) == 0) {
            k = 1;
          } else {
            k = rc.Bit(&m.p.is_rep_g2[st]) == 0 ? 2 : 3;
          }
          const uint32_t dist = m.reps[k];
          for (uint32_t i = k; i > 0; --i) m.reps[i] = m.reps[i - 1];
          m.reps[0] = dist;
          len_code = DecodeLen(rc, m.p.rep_len, ps);
          m.AfterRep();
          if (dist >= pos) return Bad(kBad, "rep match before the block");
          parse_.push_back(static_cast<uint8_t>((kTokRep0 + k) | (len_code >= 256 ? 8 : 0)));
          parse_.push_back(static_cast<uint8_t>(len_code));
        }
        const uint64_t len = len_code + 2;
        if (len > end - content_.size()) return Bad(kBad, "match crosses its chunk");
        // Byte by byte when the match overlaps itself (a distance shorter than its length).
        const size_t at = content_.size(), from = at - m.reps[0] - 1;
        content_.resize(at + len);
        uint8_t* c = content_.data();
        if (from + len <= at) {
          std::memcpy(c + at, c + from, len);
        } else {
          for (uint64_t i = 0; i < len; ++i) c[at + i] = c[from + i];
        }
      }
      if (rc.overrun()) return Bad(kBad, "truncated LZMA2 chunk");
    }
    if (!rc.Finished()) return Bad(kBad, "LZMA2 chunk does not end where its size says");
    return Status::Ok();
  }

  uint64_t max_content_;
  Lzma2State s_;
  Bytes content_, frame_, parse_;
};

// Form -> stream.
class Encoder {
 public:
  static constexpr bool kVerify = false;
  Encoder(ByteView content, ByteView parse, ByteView expected)
      : content_(content), parse_(parse), expected_(expected) {}

  uint64_t ContentSize() const { return cpos_; }
  ByteView Content(uint64_t from) const { return content_.subspan(from, cpos_ - from); }

  Status Container(ByteView v) { return Emit(v); }
  Status BlockStart(uint32_t dict_size) {
    s_ = Lzma2State{};
    s_.dict_size = dict_size;
    return Status::Ok();
  }
  Status Chunk(const ChunkHeader& h, ByteReader&) {
    if (h.unpacked > content_.size() - cpos_) return Bad(kBad, "content shorter than its chunks");
    if (!StartChunk(h, cpos_, &s_)) return Bad(kBad, "LZMA2 chunk without its resets");
    if (!h.lzma()) {
      DS_RETURN_IF_ERROR(Emit(content_.subspan(cpos_, h.unpacked)));
      cpos_ += h.unpacked;
      return Status::Ok();
    }
    const size_t start = out_.size();
    DS_RETURN_IF_ERROR(EncodeChunk(h));
    if (out_.size() - start != h.packed) return Bad(kBad, "chunk codes to another size");
    return Check(start);
  }

  Status Finish() {
    if (cpos_ != content_.size() || !parse_.empty()) {
      return Bad(kBad, "content or parse longer than the chunks");
    }
    if (!expected_.empty() && out_.size() != expected_.size()) {
      return Error(ErrorCode::kPatchOutputMismatch, "xz stream shorter than the expected");
    }
    return Status::Ok();
  }
  Bytes Take() { return std::move(out_); }

 private:
  static constexpr ErrorCode kBad = ErrorCode::kPatchMalformed;

  Status Emit(ByteView v) {
    const size_t start = out_.size();
    out_.insert(out_.end(), v.begin(), v.end());
    return Check(start);
  }
  Status Check(size_t start) {
    if (expected_.empty()) return Status::Ok();
    if (out_.size() > expected_.size() ||
        std::memcmp(out_.data() + start, expected_.data() + start, out_.size() - start) != 0) {
      return Error(ErrorCode::kPatchOutputMismatch, "xz stream differs from the expected");
    }
    return Status::Ok();
  }

  Status EncodeChunk(const ChunkHeader& h) {
    RangeEncoder rc(&out_);
    Model& m = s_.model;
    const uint64_t end = cpos_ + h.unpacked;
    const uint32_t pb_mask = (1u << m.pb) - 1;
    const uint8_t* data = content_.data();
    while (cpos_ < end) {
      const uint64_t pos = cpos_ - s_.dict_start;
      const uint32_t ps = static_cast<uint32_t>(pos) & pb_mask;
      const uint32_t st = m.state;
      uint8_t tok;
      if (!parse_.ReadU8(&tok)) return Bad(kBad, "parse shorter than the content");
      if (tok == kTokLiteral) {
        rc.Bit(&m.p.is_match[st][ps], 0);
        const uint8_t prev = pos == 0 ? 0 : data[cpos_ - 1];
        uint16_t* probs = m.LiteralProbs(pos, prev);
        const uint32_t byte = data[cpos_];
        uint32_t sym = 1;
        int i = 7;
        if (st >= 7) {
          if (m.reps[0] >= pos) return Bad(kBad, "matched literal before the block");
          uint32_t match_byte = data[cpos_ - m.reps[0] - 1];
          for (; i >= 0; --i) {
            const uint32_t match_bit = (match_byte >> i) & 1;
            const uint32_t bit = (byte >> i) & 1;
            rc.Bit(&probs[((1 + match_bit) << 8) + sym], bit);
            sym = (sym << 1) | bit;
            if (bit != match_bit) {
              --i;
              break;
            }
          }
        }
        for (; i >= 0; --i) {
          const uint32_t bit = (byte >> i) & 1;
          rc.Bit(&probs[sym], bit);
          sym = (sym << 1) | bit;
        }
        m.AfterLiteral();
        ++cpos_;
        continue;
      }
      rc.Bit(&m.p.is_match[st][ps], 1);
      if (tok == kTokShortRep) {
        if (m.reps[0] >= pos) return Bad(kBad, "short rep before the block");
        rc.Bit(&m.p.is_rep[st], 1);
        rc.Bit(&m.p.is_rep_g0[st], 0);
        rc.Bit(&m.p.is_rep0_long[st][ps], 0);
        m.AfterShortRep();
        ++cpos_;
        continue;
      }
      const uint8_t kind = tok & 0x07;
      // Left: a match or a rep match, with or without the long-length bit.
      if ((tok & ~uint8_t{0x0F}) != 0 || kind == kTokLiteral || kind == kTokShortRep ||
          kind > kTokRep0 + 3) {
        return Bad(kBad, "unknown token");
      }
      uint8_t low;
      if (!parse_.ReadU8(&low)) return Bad(kBad, "truncated token");
      const uint32_t len_code = low + ((tok & kTokLongLen) ? 256u : 0u);
      if (len_code > kMaxLenCode) return Bad(kBad, "match length out of range");
      if (kind == kTokMatch) {
        uint8_t d[3];
        if (!parse_.ReadInto(d, 3)) return Bad(kBad, "truncated token");
        const uint32_t dist = d[0] | uint32_t{d[1]} << 8 | uint32_t{d[2]} << 16;
        if (dist >= pos || dist >= s_.dict_size) return Bad(kBad, "match distance out of range");
        rc.Bit(&m.p.is_rep[st], 0);
        EncodeLen(rc, m.p.len, ps, len_code);
        EncodeDist(rc, m, len_code, dist);
        m.reps[3] = m.reps[2];
        m.reps[2] = m.reps[1];
        m.reps[1] = m.reps[0];
        m.reps[0] = dist;
        m.AfterMatch();
      } else {
        const uint32_t k = kind - kTokRep0;
        rc.Bit(&m.p.is_rep[st], 1);
        if (k == 0) {
          rc.Bit(&m.p.is_rep_g0[st], 0);
          rc.Bit(&m.p.is_rep0_long[st][ps], 1);
        } else {
          rc.Bit(&m.p.is_rep_g0[st], 1);
          if (k == 1) {
            rc.Bit(&m.p.is_rep_g1[st], 0);
          } else {
            rc.Bit(&m.p.is_rep_g1[st], 1);
            rc.Bit(&m.p.is_rep_g2[st], k == 2 ? 0 : 1);
          }
        }
        const uint32_t dist = m.reps[k];
        for (uint32_t i = k; i > 0; --i) m.reps[i] = m.reps[i - 1];
        m.reps[0] = dist;
        if (dist >= pos) return Bad(kBad, "rep match before the block");
        EncodeLen(rc, m.p.rep_len, ps, len_code);
        m.AfterRep();
      }
      const uint64_t len = len_code + 2;
      if (len > end - cpos_) return Bad(kBad, "match crosses its chunk");
      cpos_ += len;
    }
    rc.Flush();
    return Status::Ok();
  }

  ByteView content_;
  ByteReader parse_;
  ByteView expected_;
  uint64_t cpos_ = 0;
  Lzma2State s_;
  Bytes out_;
};

struct InnerRef {
  uint64_t offset = 0;  // In the content.
  uint64_t deflate_length = 0;
  uint64_t form_offset = 0;  // Of its puff, in the form.
  uint64_t puff_length = 0;
};

struct FormParts {
  ByteView expanded;  // The content with inner deflate streams as puffs.
  uint64_t expanded_offset = 0;
  ByteView frame, parse;
  std::vector<InnerRef> inner;
};

Result<FormParts> SplitForm(ByteView form) {
  const Status bad = Bad(ErrorCode::kPatchMalformed, "truncated or inconsistent header");
  ByteReader r(form);
  ByteView magic;
  uint8_t version;
  uint64_t expanded_len, frame_len, count;
  if (!r.ReadView(4, &magic) || std::memcmp(magic.data(), "DSXR", 4) != 0 || !r.ReadU8(&version)) {
    return Bad(ErrorCode::kPatchMalformed, "no DSXR magic");
  }
  if (version != kReplayFormVersion) return Bad(ErrorCode::kPatchMalformed, "unknown version");
  if (!r.ReadVarint(&expanded_len) || !r.ReadVarint(&frame_len) || !r.ReadVarint(&count) ||
      count > r.remaining() / 3) {
    return bad;
  }
  FormParts parts;
  parts.inner.resize(count);
  uint64_t content_pos = 0, expanded_pos = 0;
  for (InnerRef& in : parts.inner) {
    uint64_t gap;
    if (!r.ReadVarint(&gap) || !r.ReadVarint(&in.deflate_length) ||
        !r.ReadVarint(&in.puff_length) || in.deflate_length == 0) {
      return bad;
    }
    // Within the expanded content (expanded_pos <= expanded_len holds throughout).
    if (gap > expanded_len - expanded_pos || in.puff_length > expanded_len - expanded_pos - gap ||
        in.deflate_length > (1ull << 40)) {
      return bad;
    }
    in.offset = content_pos + gap;
    in.form_offset = expanded_pos + gap;  // Relative to the expanded content for now.
    content_pos = in.offset + in.deflate_length;
    expanded_pos = in.form_offset + in.puff_length;
  }
  parts.expanded_offset = r.position();
  if (expanded_len > r.remaining() || !r.ReadView(expanded_len, &parts.expanded) ||
      frame_len > r.remaining() || !r.ReadView(frame_len, &parts.frame)) {
    return bad;
  }
  for (InnerRef& in : parts.inner) in.form_offset += parts.expanded_offset;
  r.ReadView(r.remaining(), &parts.parse);
  return parts;
}

// The content a form's expanded content stands for: every inner puff huffed back.
Result<Bytes> ExpandContent(ByteView form, const FormParts& parts) {
  if (parts.inner.empty()) return Bytes(parts.expanded.begin(), parts.expanded.end());
  Bytes content;
  content.reserve(parts.expanded.size());
  uint64_t pos = parts.expanded_offset;
  for (const InnerRef& in : parts.inner) {
    content.insert(content.end(), form.begin() + pos, form.begin() + in.form_offset);
    DS_ASSIGN_OR_RETURN(Bytes deflate, Huff(form.subspan(in.form_offset, in.puff_length)));
    if (deflate.size() != in.deflate_length) {
      return Bad(ErrorCode::kPatchMalformed, "an inner puff codes to another length");
    }
    content.insert(content.end(), deflate.begin(), deflate.end());
    pos = in.form_offset + in.puff_length;
  }
  const uint64_t end = parts.expanded_offset + parts.expanded.size();
  content.insert(content.end(), form.begin() + pos, form.begin() + end);
  return content;
}

// Form -> where its tokens are (walks the frame for the chunks' sizes), each handed to a callback
// with its content position moved into the form's expanded content (past the inner streams' puffs).
class TokenIndexer {
 public:
  static constexpr bool kVerify = false;
  TokenIndexer(ByteView form, const FormParts& parts,
               const std::function<void(const ReplayToken&)>& fn)
      : parse_(parts.parse),
        base_(static_cast<uint64_t>(parts.parse.data() - form.data())),
        inner_(parts.inner),
        shift_(static_cast<int64_t>(parts.expanded_offset)),
        fn_(fn) {}

  uint64_t ContentSize() const { return cpos_; }
  ByteView Content(uint64_t) const { return {}; }
  Status Container(ByteView) { return Status::Ok(); }
  Status BlockStart(uint32_t) { return Status::Ok(); }
  Status Chunk(const ChunkHeader& h, ByteReader&) {
    const uint64_t end = cpos_ + h.unpacked;
    if (!h.lzma()) {
      cpos_ = end;
      return Status::Ok();
    }
    while (cpos_ < end) {
      const uint64_t at = parse_.position();
      uint8_t tok, low = 0;
      if (!parse_.ReadU8(&tok)) return Bad(kBad, "parse shorter than the content");
      uint64_t len = 1;
      const uint64_t bytes = ReplayTokenBytes(tok);
      if (bytes > 1) {
        if (!parse_.ReadU8(&low) || !parse_.Skip(bytes - 2)) return Bad(kBad, "truncated token");
        len = low + ((tok & kTokLongLen) ? 256u : 0u) + 2;
      }
      // Tokens come in content order, so the inner stream in force only moves forward.
      while (k_ < inner_.size() && cpos_ >= inner_[k_].offset + inner_[k_].deflate_length) {
        shift_ += static_cast<int64_t>(inner_[k_].puff_length) -
                  static_cast<int64_t>(inner_[k_].deflate_length);
        ++k_;
      }
      ReplayToken t;
      t.mapped = k_ == inner_.size() || cpos_ < inner_[k_].offset;
      t.content_pos = static_cast<uint64_t>(static_cast<int64_t>(cpos_) + shift_);
      t.form_offset = base_ + at;
      fn_(t);
      cpos_ += len;
    }
    if (cpos_ != end) return Bad(kBad, "match crosses its chunk");
    return Status::Ok();
  }

 private:
  static constexpr ErrorCode kBad = ErrorCode::kPatchMalformed;
  ByteReader parse_;
  uint64_t base_;
  const std::vector<InnerRef>& inner_;
  size_t k_ = 0;
  int64_t shift_;
  const std::function<void(const ReplayToken&)>& fn_;
  uint64_t cpos_ = 0;
};

}  // namespace

Result<ReplayForm> XzToReplayForm(ByteView stream, uint64_t max_content) {
  ByteReader r(stream);
  Decoder d(max_content);
  DS_RETURN_IF_ERROR(WalkXz(r, ErrorCode::kInvalidArgument, d));
  return d.Finish(r.position());
}

Result<Bytes> XzFromReplayForm(ByteView form, ByteView expected) {
  DS_ASSIGN_OR_RETURN(FormParts parts, SplitForm(form));
  // Without inner streams the expanded content is the content itself.
  Bytes rebuilt;
  if (!parts.inner.empty()) {
    DS_ASSIGN_OR_RETURN(rebuilt, ExpandContent(form, parts));
  }
  Encoder e(parts.inner.empty() ? parts.expanded : ByteView(rebuilt), parts.parse, expected);
  ByteReader r(parts.frame);
  DS_RETURN_IF_ERROR(WalkXz(r, ErrorCode::kPatchMalformed, e));
  if (!r.empty()) return Bad(ErrorCode::kPatchMalformed, "bytes after the stream footer");
  DS_RETURN_IF_ERROR(e.Finish());
  return e.Take();
}

Result<ReplayFormLayout> ReplayFormSections(ByteView form) {
  DS_ASSIGN_OR_RETURN(FormParts parts, SplitForm(form));
  ReplayFormLayout l;
  l.content_offset = parts.expanded_offset;
  l.content_length = parts.expanded.size();
  l.frame_offset = static_cast<uint64_t>(parts.frame.data() - form.data());
  l.frame_length = parts.frame.size();
  l.parse_offset = static_cast<uint64_t>(parts.parse.data() - form.data());
  l.parse_length = parts.parse.size();
  return l;
}

Status ForEachReplayToken(ByteView form, const std::function<void(const ReplayToken&)>& fn) {
  DS_ASSIGN_OR_RETURN(FormParts parts, SplitForm(form));
  TokenIndexer t(form, parts, fn);
  ByteReader r(parts.frame);
  return WalkXz(r, ErrorCode::kPatchMalformed, t);
}

Result<Bytes> ReplayFormContent(ByteView form) {
  DS_ASSIGN_OR_RETURN(FormParts parts, SplitForm(form));
  return ExpandContent(form, parts);
}

}  // namespace ds::delta
