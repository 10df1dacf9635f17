#include "delta/deflate_puff.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "common/byte_reader.h"

namespace ds::delta {
namespace {

constexpr uint8_t kMagic[4] = {'D', 'S', 'P', 'U'};
constexpr size_t kHeaderSize = 5;
constexpr int kMaxBits = 15;
constexpr int kMaxLitCodes = 288;  // Including the fixed code's 286/287.
constexpr int kMaxDistCodes = 32;  // Including the fixed code's 30/31.
constexpr int kNumClCodes = 19;

// Record tags inside a Huffman block.
constexpr uint8_t kLongRun = 0x7F;
constexpr uint8_t kCopy = 0x80;
constexpr uint8_t kCopy284 = 0x81;
constexpr uint8_t kEndOfBlock = 0x82;
constexpr size_t kMaxShortRun = 127;

constexpr uint8_t kClOrder[kNumClCodes] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                           11, 4,  12, 3, 13, 2, 14, 1, 15};
constexpr uint16_t kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                   2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                    33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                    1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

Status BadDeflate(const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "deflate: " + what);
}
Status BadPuff(const std::string& what) {
  return Error(ErrorCode::kPatchMalformed, "puff: " + what);
}

// Which incomplete codes are acceptable (see the header comment).
enum class CodeKind { kCodeLengths, kLitLen, kDist };

// Checks a set of code lengths (each 0..15). Returns an empty string when usable, else why not.
const char* CheckLengths(const uint8_t* lengths, int n, CodeKind kind) {
  int count[kMaxBits + 1] = {};
  for (int i = 0; i < n; ++i) ++count[lengths[i]];
  int used = n - count[0];
  int left = 1;
  for (int len = 1; len <= kMaxBits; ++len) {
    left <<= 1;
    left -= count[len];
    if (left < 0) return "over-subscribed code";
  }
  if (left == 0) return "";
  if (kind == CodeKind::kCodeLengths) return "incomplete code-length code";
  if (used == 1 && count[1] == 1) return "";  // A single code of length 1.
  if (kind == CodeKind::kDist && used == 0) return "";
  return "incomplete code";
}

// Reverses the low |n| bits of |v|.
inline uint32_t Reverse(uint32_t v, int n) {
  uint32_t r = 0;
  for (int i = 0; i < n; ++i) {
    r = (r << 1) | (v & 1);
    v >>= 1;
  }
  return r;
}

// Canonical codes (bit-reversed, ready to emit LSB first) of a valid set of lengths.
void CanonicalCodes(const uint8_t* lengths, int n, uint16_t* codes) {
  int count[kMaxBits + 1] = {};
  for (int i = 0; i < n; ++i) ++count[lengths[i]];
  count[0] = 0;
  uint32_t next[kMaxBits + 2] = {};
  uint32_t code = 0;
  for (int len = 1; len <= kMaxBits; ++len) {
    code = (code + count[len - 1]) << 1;
    next[len] = code;
  }
  for (int i = 0; i < n; ++i) {
    const int len = lengths[i];
    codes[i] = len ? static_cast<uint16_t>(Reverse(next[len]++, len)) : 0;
  }
}

// A table-driven decoder: codes up to kFastBits long resolve with one lookup; longer (and
// invalid) codes take a canonical bit-by-bit walk over the remaining bits.
class Decoder {
 public:
  static constexpr int kFastBits = 10;

  // REQUIRES: CheckLengths accepted |lengths|.
  void Build(const uint8_t* lengths, int n) {
    std::memset(count_, 0, sizeof(count_));
    for (int i = 0; i < n; ++i) ++count_[lengths[i]];
    count_[0] = 0;
    uint16_t offs[kMaxBits + 2];
    offs[1] = 0;
    for (int len = 1; len <= kMaxBits; ++len) offs[len + 1] = offs[len] + count_[len];
    for (int i = 0; i < n; ++i) {
      if (lengths[i]) symbols_[offs[lengths[i]]++] = static_cast<uint16_t>(i);
    }
    std::memset(fast_, 0, sizeof(fast_));
    uint16_t codes[kMaxLitCodes];
    CanonicalCodes(lengths, n, codes);
    for (int i = 0; i < n; ++i) {
      const int len = lengths[i];
      if (len == 0 || len > kFastBits) continue;
      const uint16_t entry = static_cast<uint16_t>(i << 4 | len);
      for (uint32_t j = codes[i]; j < (1u << kFastBits); j += 1u << len) fast_[j] = entry;
    }
    // The canonical walk's state after kFastBits bits without a match.
    slow_first_ = 0;
    slow_index_ = 0;
    for (int len = 1; len <= kFastBits; ++len) {
      slow_index_ += count_[len];
      slow_first_ = (slow_first_ + count_[len]) << 1;
    }
  }

  // Decodes one symbol from the low bits of |bits| (at least 15 valid bits). Returns the symbol
  // and sets *len to its code length, or returns -1 for a bit pattern that is no code.
  int Decode(uint64_t bits, int* len) const {
    const uint16_t e = fast_[bits & ((1u << kFastBits) - 1)];
    if (e) {
      *len = e & 15;
      return e >> 4;
    }
    // Canonical walk, resumed after the first kFastBits bits (no code that short matched).
    uint32_t v = static_cast<uint32_t>(bits & 0xFFFF);  // Reversed: the code's first bit on top.
    v = ((v >> 1) & 0x5555) | ((v & 0x5555) << 1);
    v = ((v >> 2) & 0x3333) | ((v & 0x3333) << 2);
    v = ((v >> 4) & 0x0F0F) | ((v & 0x0F0F) << 4);
    v = ((v >> 8) & 0x00FF) | ((v & 0x00FF) << 8);
    int code = static_cast<int>(v >> (16 - kFastBits)) << 1;
    int first = slow_first_, index = slow_index_;
    bits >>= kFastBits;
    for (int l = kFastBits + 1; l <= kMaxBits; ++l) {
      code |= static_cast<int>(bits & 1);
      bits >>= 1;
      const int c = count_[l];
      if (code - c < first) {
        *len = l;
        return symbols_[index + (code - first)];
      }
      index += c;
      first = (first + c) << 1;
      code <<= 1;
    }
    return -1;
  }

 private:
  uint16_t fast_[1 << kFastBits];
  int slow_first_ = 0, slow_index_ = 0;
  uint16_t count_[kMaxBits + 1];
  uint16_t symbols_[kMaxLitCodes];
};

struct FixedCodes {
  uint8_t lit[kMaxLitCodes];
  uint8_t dist[kMaxDistCodes];
  Decoder lit_dec, dist_dec;
  uint16_t lit_codes[kMaxLitCodes];
  uint16_t dist_codes[kMaxDistCodes];
  FixedCodes() {
    for (int i = 0; i < kMaxLitCodes; ++i) lit[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    for (int i = 0; i < kMaxDistCodes; ++i) dist[i] = 5;
    lit_dec.Build(lit, kMaxLitCodes);
    dist_dec.Build(dist, kMaxDistCodes);
    CanonicalCodes(lit, kMaxLitCodes, lit_codes);
    CanonicalCodes(dist, kMaxDistCodes, dist_codes);
  }
};
const FixedCodes& Fixed() {
  static const FixedCodes* const fixed = new FixedCodes();
  return *fixed;
}

// Length (3..258) -> length symbol index (0..28), with symbol 285 for 258.
struct LengthSymbols {
  uint8_t sym[259];
  LengthSymbols() {
    for (int i = 0; i < 28; ++i) {
      for (int l = kLenBase[i]; l < kLenBase[i] + (1 << kLenExtra[i]) && l < 258; ++l) sym[l] = i;
    }
    sym[258] = 28;
  }
};
const LengthSymbols& LenSyms() {
  static const LengthSymbols* const t = new LengthSymbols();
  return *t;
}

inline int DistSymbol(uint32_t dist) {
  const uint32_t d = dist - 1;
  if (d < 4) return static_cast<int>(d);
  const int top = 31 - __builtin_clz(d);
  return 2 * top + static_cast<int>((d >> (top - 1)) & 1);
}

inline uint64_t Load64Le(const uint8_t* p) {
  uint64_t v = 0;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, 8);
  } else {
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  }
  return v;
}

// LSB-first bit reader over the deflate input. Reads past the end yield zero bits and are
// counted, so callers check Overrun() after decoding instead of before every read.
class BitIn {
 public:
  explicit BitIn(ByteView in) : begin_(in.data()), p_(in.data()), end_(in.data() + in.size()) {}

  // Afterwards at least 56 bits are buffered.
  void Refill() {
    if (end_ - p_ >= 8) {
      buf_ |= Load64Le(p_) << cnt_;
      p_ += (63 - cnt_) >> 3;
      cnt_ |= 56;
      return;
    }
    while (cnt_ <= 56) {
      uint64_t b = 0;
      if (p_ < end_) {
        b = *p_++;
      } else {
        over_bits_ += 8;
      }
      buf_ |= b << cnt_;
      cnt_ += 8;
    }
  }
  uint64_t bits() const { return buf_; }
  uint32_t Take(int n) {
    const uint32_t v = static_cast<uint32_t>(buf_ & ((uint64_t{1} << n) - 1));
    Drop(n);
    return v;
  }
  void Drop(int n) {
    buf_ >>= n;
    cnt_ -= n;
  }
  // Restarts at byte |offset| of the input (REQUIRES: offset <= input size).
  void SeekByte(size_t offset) {
    p_ = begin_ + offset;
    buf_ = 0;
    cnt_ = 0;
    over_bits_ = 0;
  }
  // Bits were consumed beyond the end of the input.
  bool Overrun() const { return cnt_ < over_bits_; }
  uint64_t consumed_bits() const {
    return static_cast<uint64_t>(p_ - begin_) * 8 + over_bits_ - static_cast<uint64_t>(cnt_);
  }

 private:
  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  uint64_t buf_ = 0;
  int cnt_ = 0;
  int over_bits_ = 0;
};

// Growing output buffer with unchecked appends after an explicit Ensure().
class Out {
 public:
  explicit Out(size_t reserve) : buf_(reserve < 64 ? 64 : reserve) {}
  bool Room(size_t n) const { return buf_.size() - pos_ >= n; }
  void Ensure(size_t n) {
    if (!Room(n)) Grow(n, 0);
  }
  // Grows to at least pos + n; to |hint| (at most 16 times the current size) when larger.
  void Grow(size_t n, size_t hint) {
    size_t want = std::max(buf_.size() * 2, pos_ + n);
    want = std::max(want, std::min(hint, buf_.size() * 16));
    buf_.resize(want);
  }
  void Put(uint8_t b) { buf_[pos_++] = b; }
  void PutU16(uint32_t v) {
    buf_[pos_++] = static_cast<uint8_t>(v);
    buf_[pos_++] = static_cast<uint8_t>(v >> 8);
  }
  uint8_t* at(size_t i) { return buf_.data() + i; }
  size_t size() const { return pos_; }
  size_t capacity() const { return buf_.size(); }
  void SetSize(size_t pos) { pos_ = pos; }
  void Advance(size_t n) { pos_ += n; }
  Bytes Finish() {
    buf_.resize(pos_);
    return std::move(buf_);
  }

 private:
  Bytes buf_;
  size_t pos_ = 0;
};

class Puffer {
 public:
  Puffer(ByteView in, const PuffLimits& limits, Bytes* content)
      // Small to start with: ParseGzip passes the whole rest of a file, most of which may belong
      // to later members.
      : in_(in),
        br_(in),
        out_(std::min<size_t>(in.size() * 2, 64 << 10)),
        limits_(limits),
        content_(content) {}

  Result<Puffed> Run() {
    out_.Ensure(kHeaderSize);
    for (uint8_t m : kMagic) out_.Put(m);
    out_.Put(kPuffVersion);
    bool final = false;
    while (!final) {
      br_.Refill();
      final = br_.Take(1);
      const uint32_t type = br_.Take(2);
      if (br_.Overrun()) return BadDeflate("truncated block header");
      out_.Ensure(1);
      out_.Put(static_cast<uint8_t>(final | type << 1));
      if (type == 0) {
        DS_RETURN_IF_ERROR(Stored());
      } else if (type == 1) {
        DS_RETURN_IF_ERROR(Codes(Fixed().lit_dec, Fixed().dist_dec, kMaxLitCodes, kMaxDistCodes));
      } else if (type == 2) {
        DS_RETURN_IF_ERROR(Dynamic());
      } else {
        return BadDeflate("reserved block type 3");
      }
      if (out_.size() > limits_.max_puff) return Error(ErrorCode::kResourceLimit, "puff too big");
    }
    const int pad = static_cast<int>((8 - br_.consumed_bits() % 8) % 8);
    br_.Refill();
    out_.Ensure(1);
    out_.Put(static_cast<uint8_t>(br_.Take(pad)));
    if (br_.Overrun()) return BadDeflate("truncated final byte");
    Puffed r;
    r.deflate_size = br_.consumed_bits() / 8;
    r.inflated_size = produced_;
    r.puff = out_.Finish();
    return r;
  }

 private:
  Status Stored() {
    const int pad = static_cast<int>((8 - br_.consumed_bits() % 8) % 8);
    br_.Refill();
    const uint32_t pad_bits = br_.Take(pad);
    const uint32_t len = br_.Take(16);
    const uint32_t nlen = br_.Take(16);
    if (br_.Overrun()) return BadDeflate("truncated stored block header");
    if ((len ^ 0xFFFF) != nlen) return BadDeflate("stored block NLEN is not ~LEN");
    // The reader is byte aligned now; the buffered bytes come first.
    const uint64_t at = br_.consumed_bits() / 8;
    if (in_.size() - at < len) return BadDeflate("truncated stored block");
    if (len > limits_.max_inflated - produced_) {
      return Error(ErrorCode::kResourceLimit, "inflated size above the limit");
    }
    out_.Ensure(3 + len);
    out_.Put(static_cast<uint8_t>(pad_bits));
    out_.PutU16(len);
    if (len) std::memcpy(out_.at(out_.size()), in_.data() + at, len);
    out_.Advance(len);
    if (content_ && len) content_->insert(content_->end(), in_.data() + at, in_.data() + at + len);
    produced_ += len;
    // Skip the data: drop what is buffered and restart the reader after it.
    br_.SeekByte(at + len);
    return Status::Ok();
  }

  Status Dynamic() {
    br_.Refill();
    const uint32_t hlit = br_.Take(5), hdist = br_.Take(5), hclen = br_.Take(4);
    if (br_.Overrun()) return BadDeflate("truncated dynamic header");
    if (hlit > 29 || hdist > 29) return BadDeflate("too many length or distance codes");
    out_.Ensure(3 + 19 + 320);
    out_.Put(static_cast<uint8_t>(hlit));
    out_.Put(static_cast<uint8_t>(hdist));
    out_.Put(static_cast<uint8_t>(hclen));
    uint8_t cl[kNumClCodes] = {};
    for (uint32_t i = 0; i < hclen + 4; ++i) {
      br_.Refill();  // Up to 57 bits in all: more than one refill guarantees.
      const uint8_t v = static_cast<uint8_t>(br_.Take(3));
      cl[kClOrder[i]] = v;
      out_.Put(v);
    }
    if (br_.Overrun()) return BadDeflate("truncated dynamic header");
    if (const char* why = CheckLengths(cl, kNumClCodes, CodeKind::kCodeLengths); *why) {
      return BadDeflate(why);
    }
    Decoder cl_dec;
    cl_dec.Build(cl, kNumClCodes);
    const int nlit = static_cast<int>(hlit) + 257, ndist = static_cast<int>(hdist) + 1;
    const int total = nlit + ndist;
    uint8_t lengths[kMaxLitCodes + kMaxDistCodes];
    int n = 0;
    while (n < total) {
      br_.Refill();
      int len = 0;
      const int sym = cl_dec.Decode(br_.bits(), &len);
      if (sym < 0) return BadDeflate("invalid code-length code");
      br_.Drop(len);
      if (sym < 16) {
        lengths[n++] = static_cast<uint8_t>(sym);
        out_.Put(static_cast<uint8_t>(sym));
        continue;
      }
      int rep;
      uint8_t value = 0;
      if (sym == 16) {
        if (n == 0) return BadDeflate("repeat with no previous length");
        value = lengths[n - 1];
        const uint32_t extra = br_.Take(2);
        rep = 3 + static_cast<int>(extra);
        out_.Put(static_cast<uint8_t>(16 + extra));
      } else if (sym == 17) {
        const uint32_t extra = br_.Take(3);
        rep = 3 + static_cast<int>(extra);
        out_.Put(static_cast<uint8_t>(20 + extra));
      } else {
        const uint32_t extra = br_.Take(7);
        rep = 11 + static_cast<int>(extra);
        out_.Put(static_cast<uint8_t>(28 + extra));
      }
      if (rep > total - n) return BadDeflate("code lengths repeat past the end");
      std::memset(lengths + n, value, static_cast<size_t>(rep));
      n += rep;
    }
    if (br_.Overrun()) return BadDeflate("truncated code lengths");
    if (lengths[256] == 0) return BadDeflate("no code for end-of-block");
    if (const char* why = CheckLengths(lengths, nlit, CodeKind::kLitLen); *why) {
      return BadDeflate(std::string("literal/length: ") + why);
    }
    if (const char* why = CheckLengths(lengths + nlit, ndist, CodeKind::kDist); *why) {
      return BadDeflate(std::string("distance: ") + why);
    }
    lit_dec_.Build(lengths, nlit);
    dist_dec_.Build(lengths + nlit, ndist);
    return Codes(lit_dec_, dist_dec_, nlit, ndist);
  }

  // Closes a literal run of |run_len| bytes whose header byte is at |start| in |o|, where the
  // run ends at |pos|; returns the new end. REQUIRES: 10 bytes of room after pos.
  static size_t CloseRun(uint8_t* o, size_t start, uint64_t run_len, size_t pos) {
    if (run_len <= kMaxShortRun) {
      o[start] = static_cast<uint8_t>(run_len - 1);
      return pos;
    }
    uint8_t v[10];
    size_t k = 0;
    uint64_t x = run_len - (kMaxShortRun + 1);
    do {
      v[k] = static_cast<uint8_t>(x & 0x7F);
      x >>= 7;
      if (x) v[k] |= 0x80;
      ++k;
    } while (x);
    std::memmove(o + start + 1 + k, o + start + 1, run_len);
    o[start] = kLongRun;
    std::memcpy(o + start + 1, v, k);
    return pos + k;
  }

  Status Codes(const Decoder& lit, const Decoder& dist, int nlit, int ndist) {
    return content_ ? CodesImpl<true>(lit, dist, nlit, ndist)
                    : CodesImpl<false>(lit, dist, nlit, ndist);
  }

  // The hot loop keeps its state in locals: stores through uint8_t* may alias any member, so
  // members would be reloaded after every byte written.
  template <bool kContent>
  Status CodesImpl(const Decoder& lit, const Decoder& dist, int nlit, int ndist) {
    const uint64_t max_inflated = limits_.max_inflated;
    const uint64_t max_puff = limits_.max_puff;
    Bytes* const content = content_;
    BitIn br = br_;
    uint64_t produced = produced_;
    size_t pos = out_.size(), cap = out_.capacity();
    uint8_t* o = out_.at(0);
    size_t run_start = 0;
    uint64_t run_len = 0;
    for (;;) {
      br.Refill();
      if (cap - pos < 32) {
        out_.SetSize(pos);
        GrowOut(br);
        o = out_.at(0);
        cap = out_.capacity();
      }
      int len = 0;
      const int sym = lit.Decode(br.bits(), &len);
      if (sym < 0) {
        if (br.Overrun()) return BadDeflate("truncated block");
        return BadDeflate("invalid literal/length code");
      }
      br.Drop(len);
      if (sym < 256) {
        if (br.Overrun()) return BadDeflate("truncated block");
        if (run_len == 0) run_start = pos++;
        o[pos++] = static_cast<uint8_t>(sym);
        ++run_len;
        if constexpr (kContent) content->push_back(static_cast<uint8_t>(sym));
        if (++produced > max_inflated || pos > max_puff) return TooBig();
        continue;
      }
      if (run_len) {
        pos = CloseRun(o, run_start, run_len, pos);
        run_len = 0;
      }
      if (sym == 256) {
        if (br.Overrun()) return BadDeflate("truncated block");
        o[pos++] = kEndOfBlock;
        br_ = br;
        produced_ = produced;
        out_.SetSize(pos);
        return Status::Ok();
      }
      if (sym >= 286 || sym >= nlit) return BadDeflate("invalid literal/length symbol");
      const int li = sym - 257;
      const uint32_t length = kLenBase[li] + br.Take(kLenExtra[li]);
      int dlen = 0;
      const int dsym = dist.Decode(br.bits(), &dlen);
      if (dsym < 0 || dsym >= 30 || dsym >= ndist) {
        if (br.Overrun()) return BadDeflate("truncated block");
        return BadDeflate("invalid distance code");
      }
      br.Drop(dlen);
      const uint32_t distance = kDistBase[dsym] + br.Take(kDistExtra[dsym]);
      if (br.Overrun()) return BadDeflate("truncated block");
      if (distance > produced) return BadDeflate("distance before the start of the stream");
      if (length == 258 && li == 27) {
        o[pos++] = kCopy284;
      } else {
        o[pos++] = kCopy;
        o[pos++] = static_cast<uint8_t>(length - 3);
      }
      o[pos++] = static_cast<uint8_t>(distance - 1);
      o[pos++] = static_cast<uint8_t>((distance - 1) >> 8);
      if (length > max_inflated - produced || pos > max_puff) return TooBig();
      if constexpr (kContent) {
        const size_t from = content->size() - distance;
        for (uint32_t i = 0; i < length; ++i) content->push_back((*content)[from + i]);
      }
      produced += length;
    }
  }

  // Grows the puff buffer towards its projected final size (from the input consumed so far).
  void GrowOut(const BitIn& br) {
    const uint64_t consumed = br.consumed_bits() / 8 + 1;
    const double projected = static_cast<double>(out_.size()) * static_cast<double>(in_.size()) /
                             static_cast<double>(consumed) * 1.05;
    out_.Grow(16, static_cast<size_t>(std::min(projected, 1e15)));
  }

  Status TooBig() {
    return Error(ErrorCode::kResourceLimit, "inflated size or puff size above the limit");
  }

  ByteView in_;
  BitIn br_;
  Out out_;
  PuffLimits limits_;
  Bytes* content_;
  uint64_t produced_ = 0;
  Decoder lit_dec_, dist_dec_;
};

inline void Store64Le(uint8_t* p, uint64_t v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, 8);
  } else {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

// Walks a puff, checking every rule Huff() needs, and either writes the deflate bits (kInflate
// false) or the inflated content (kInflate true). Both modes count the deflate bits, so pad
// values are checked alike and InflatePuff fails exactly where Huff fails.
template <bool kInflate>
class Unpuffer {
 public:
  Unpuffer(ByteView puff, uint64_t max_inflated)
      : r_(puff),
        out_(kInflate ? std::min<uint64_t>(puff.size() * uint64_t{4}, max_inflated) + 64
                      : puff.size() + 64),
        max_(max_inflated) {}

  Result<Bytes> Run() {
    uint8_t magic[4], version;
    if (!r_.ReadInto(magic, 4) || std::memcmp(magic, kMagic, 4) != 0) return BadPuff("bad magic");
    if (!r_.ReadU8(&version) || version != kPuffVersion) return BadPuff("unknown version");
    bool final = false;
    while (!final) {
      uint8_t tag;
      if (!r_.ReadU8(&tag)) return BadPuff("truncated before a block");
      if (tag > 5) return BadPuff("bad block tag");
      final = tag & 1;
      const int type = tag >> 1;
      PutBits(tag & 1, 1);
      PutBits(static_cast<uint32_t>(type), 2);
      if (type == 0) {
        DS_RETURN_IF_ERROR(Stored());
        continue;
      }
      if (type == 1) {
        const FixedCodes& f = Fixed();
        SetCodes(f.lit, kMaxLitCodes, f.dist, kMaxDistCodes, f.lit_codes, f.dist_codes);
      } else {
        DS_RETURN_IF_ERROR(Dynamic());
      }
      DS_RETURN_IF_ERROR(Records());
    }
    uint8_t pad;
    if (!r_.ReadU8(&pad)) return BadPuff("missing trailer");
    DS_RETURN_IF_ERROR(PutPad(pad));
    if (!r_.empty()) return BadPuff("bytes after the trailer");
    return out_.Finish();
  }

 private:
  uint64_t BitPos() const { return kInflate ? bitpos_ : out_.size() * uint64_t{8} + cnt_; }

  // Outside the record loop. Keeps fewer than 8 bits pending. REQUIRES: n <= 16.
  void PutBits(uint32_t v, int n) {
    if constexpr (kInflate) {
      bitpos_ += static_cast<uint64_t>(n);
    } else {
      out_.Ensure(4);
      acc_ |= static_cast<uint64_t>(v) << cnt_;
      cnt_ += n;
      while (cnt_ >= 8) {
        out_.Put(static_cast<uint8_t>(acc_));
        acc_ >>= 8;
        cnt_ -= 8;
      }
    }
  }

  // The padding bits up to the next byte boundary.
  Status PutPad(uint8_t pad) {
    const int n = static_cast<int>((8 - BitPos() % 8) % 8);
    if (pad >> n) return BadPuff("padding value does not fit its bits");
    PutBits(pad, n);
    return Status::Ok();
  }

  Status Produced(uint64_t n) {
    if (n > max_ - produced_) {
      return Error(ErrorCode::kResourceLimit, "inflated size above the limit");
    }
    produced_ += n;
    return Status::Ok();
  }

  Status Stored() {
    uint8_t pad;
    uint16_t len;
    if (!r_.ReadU8(&pad) || !r_.ReadU16Le(&len)) return BadPuff("truncated stored block");
    DS_RETURN_IF_ERROR(PutPad(pad));
    PutBits(len, 16);
    PutBits(len ^ 0xFFFFu, 16);
    ByteView data;
    if (!r_.ReadView(len, &data)) return BadPuff("truncated stored data");
    DS_RETURN_IF_ERROR(Produced(len));
    if constexpr (kInflate) bitpos_ += uint64_t{8} * len;
    out_.Ensure(len);
    if (len) std::memcpy(out_.at(out_.size()), data.data(), len);
    out_.Advance(len);
    return Status::Ok();
  }

  void SetCodes(const uint8_t* lit, int nlit, const uint8_t* dist, int ndist,
                const uint16_t* lit_codes, const uint16_t* dist_codes) {
    nlit_ = nlit;
    ndist_ = ndist;
    for (int i = 0; i < kMaxLitCodes; ++i) {
      lit_[i] = i < nlit && lit[i] ? static_cast<uint32_t>(lit_codes[i] | lit[i] << 16) : 0;
    }
    for (int i = 0; i < kMaxDistCodes; ++i) {
      dist_[i] = i < ndist && dist[i] ? static_cast<uint32_t>(dist_codes[i] | dist[i] << 16) : 0;
    }
    // Length -> its symbol's code followed by the extra bits, with the bit count in the top byte
    // (0: the symbol has no code).
    const LengthSymbols& ls = LenSyms();
    for (uint32_t len = 3; len <= 258; ++len) {
      const int li = ls.sym[len];
      const uint32_t e = lit_[257 + li];
      if (!e) {
        len_[len] = 0;
        continue;
      }
      const uint32_t code_len = e >> 16;
      len_[len] =
          (e & 0xFFFF) | (len - kLenBase[li]) << code_len | (code_len + kLenExtra[li]) << 24;
    }
  }

  Status Dynamic() {
    uint8_t hlit, hdist, hclen;
    if (!r_.ReadU8(&hlit) || !r_.ReadU8(&hdist) || !r_.ReadU8(&hclen)) {
      return BadPuff("truncated dynamic header");
    }
    if (hlit > 29 || hdist > 29 || hclen > 15) return BadPuff("bad HLIT, HDIST or HCLEN");
    PutBits(hlit, 5);
    PutBits(hdist, 5);
    PutBits(hclen, 4);
    uint8_t cl[kNumClCodes] = {};
    for (int i = 0; i < hclen + 4; ++i) {
      uint8_t v;
      if (!r_.ReadU8(&v)) return BadPuff("truncated dynamic header");
      if (v > 7) return BadPuff("bad code-length code length");
      cl[kClOrder[i]] = v;
      PutBits(v, 3);
    }
    if (const char* why = CheckLengths(cl, kNumClCodes, CodeKind::kCodeLengths); *why) {
      return BadPuff(why);
    }
    uint16_t cl_codes[kNumClCodes];
    CanonicalCodes(cl, kNumClCodes, cl_codes);
    const int nlit = hlit + 257, ndist = hdist + 1, total = nlit + ndist;
    uint8_t lengths[kMaxLitCodes + kMaxDistCodes];
    int n = 0;
    while (n < total) {
      uint8_t s;
      if (!r_.ReadU8(&s)) return BadPuff("truncated code lengths");
      int sym, extra_bits = 0, rep = 1;
      uint32_t extra = 0;
      uint8_t value = s;
      if (s < 16) {
        sym = s;
      } else if (s < 20) {
        if (n == 0) return BadPuff("repeat with no previous length");
        sym = 16, extra = s - 16u, extra_bits = 2, rep = 3 + static_cast<int>(extra);
        value = lengths[n - 1];
      } else if (s < 28) {
        sym = 17, extra = s - 20u, extra_bits = 3, rep = 3 + static_cast<int>(extra), value = 0;
      } else if (s < 156) {
        sym = 18, extra = s - 28u, extra_bits = 7, rep = 11 + static_cast<int>(extra), value = 0;
      } else {
        return BadPuff("bad code-length symbol");
      }
      if (cl[sym] == 0) return BadPuff("code-length symbol without a code");
      if (rep > total - n) return BadPuff("code lengths repeat past the end");
      PutBits(cl_codes[sym], cl[sym]);
      PutBits(extra, extra_bits);
      std::memset(lengths + n, value, static_cast<size_t>(rep));
      n += rep;
    }
    if (lengths[256] == 0) return BadPuff("no code for end-of-block");
    if (const char* why = CheckLengths(lengths, nlit, CodeKind::kLitLen); *why) {
      return BadPuff(std::string("literal/length: ") + why);
    }
    if (const char* why = CheckLengths(lengths + nlit, ndist, CodeKind::kDist); *why) {
      return BadPuff(std::string("distance: ") + why);
    }
    uint16_t lit_codes[kMaxLitCodes], dist_codes[kMaxDistCodes];
    CanonicalCodes(lengths, nlit, lit_codes);
    CanonicalCodes(lengths + nlit, ndist, dist_codes);
    SetCodes(lengths, nlit, lengths + nlit, ndist, lit_codes, dist_codes);
    return Status::Ok();
  }

  // The records of one Huffman block up to its end-of-block. The state lives in locals in the
  // loop (stores through uint8_t* could alias members).
  Status Records() {
    uint64_t acc = acc_, bitpos = bitpos_, produced = produced_;
    int cnt = cnt_;
    size_t pos = out_.size(), cap = out_.capacity();
    uint8_t* o = out_.at(0);
    const uint64_t max = max_;
    auto reserve = [&](size_t n) {
      if (cap - pos < n) {
        out_.SetSize(pos);
        out_.Grow(n, 0);
        o = out_.at(0);
        cap = out_.capacity();
      }
    };
    // Encoding: appends |n| <= 56 - 7 bits, then writes out the whole bytes.
    auto put = [&](uint64_t v, int n) {
      acc |= v << cnt;
      cnt += n;
      Store64Le(o + pos, acc);
      pos += static_cast<size_t>(cnt >> 3);
      acc >>= cnt & 56;
      cnt &= 7;
    };
    for (;;) {
      uint8_t t;
      if (!r_.ReadU8(&t)) return BadPuff("truncated block");
      if (t <= kLongRun) {
        uint64_t n = t + 1u;
        if (t == kLongRun) {
          uint64_t more;
          if (!r_.ReadVarint(&more) || more > r_.remaining()) return BadPuff("bad literal run");
          n = more + kMaxShortRun + 1;
        }
        ByteView lits;
        if (!r_.ReadView(n, &lits)) return BadPuff("truncated literal run");
        if (n > max - produced) return TooMuch();
        produced += n;
        if constexpr (kInflate) {
          reserve(n);
          for (uint8_t b : lits) {
            const uint32_t e = lit_[b];
            if (!e) return BadPuff("literal without a code");
            bitpos += e >> 16;
          }
          std::memcpy(o + pos, lits.data(), n);
          pos += n;
        } else {
          reserve(2 * n + 16);
          for (uint8_t b : lits) {
            const uint32_t e = lit_[b];
            if (!e) return BadPuff("literal without a code");
            put(e & 0xFFFF, static_cast<int>(e >> 16));
          }
        }
        continue;
      }
      if (t == kEndOfBlock) {
        const uint32_t e = lit_[256];
        if constexpr (kInflate) {
          bitpos += e >> 16;
        } else {
          reserve(16);
          put(e & 0xFFFF, static_cast<int>(e >> 16));
        }
        acc_ = acc, cnt_ = cnt, bitpos_ = bitpos, produced_ = produced;
        out_.SetSize(pos);
        return Status::Ok();
      }
      uint32_t length, len_code;
      if (t == kCopy) {
        uint8_t l3;
        if (!r_.ReadU8(&l3)) return BadPuff("truncated copy");
        length = l3 + 3u;
        len_code = len_[length];
      } else if (t == kCopy284) {
        length = 258;
        const uint32_t e = lit_[284];
        len_code = e ? (e & 0xFFFF) | 31u << (e >> 16) | ((e >> 16) + 5) << 24 : 0;
      } else {
        return BadPuff("bad record tag");
      }
      uint16_t d1;
      if (!r_.ReadU16Le(&d1)) return BadPuff("truncated copy");
      const uint32_t distance = d1 + 1u;
      if (distance > 32768) return BadPuff("distance above 32768");
      if (distance > produced) return BadPuff("distance before the start of the stream");
      if (!len_code) return BadPuff("length without a code");
      const int ds = DistSymbol(distance);
      const uint32_t de = dist_[ds];
      if (!de) return BadPuff("distance without a code");
      if (length > max - produced) return TooMuch();
      produced += length;
      const int dcode_len = static_cast<int>(de >> 16);
      if constexpr (kInflate) {
        bitpos += (len_code >> 24) + dcode_len + kDistExtra[ds];
        reserve(length);
        const uint8_t* from = o + pos - distance;
        for (uint32_t i = 0; i < length; ++i) o[pos + i] = from[i];
        pos += length;
      } else {
        reserve(16);
        const uint64_t dbits = (de & 0xFFFF) | uint64_t{distance - kDistBase[ds]} << dcode_len;
        const int len_bits = static_cast<int>(len_code >> 24);
        put((len_code & 0xFFFFFF) | dbits << len_bits, len_bits + dcode_len + kDistExtra[ds]);
      }
    }
  }

  Status TooMuch() { return Error(ErrorCode::kResourceLimit, "inflated size above the limit"); }

  ByteReader r_;
  Out out_;
  uint64_t max_;
  uint64_t produced_ = 0;
  uint64_t bitpos_ = 0;  // kInflate: the deflate bits so far.
  uint64_t acc_ = 0;     // Encoding: pending bits (fewer than 8 between records).
  int cnt_ = 0;
  int nlit_ = 0, ndist_ = 0;
  uint32_t lit_[kMaxLitCodes] = {};  // code | length << 16; 0: no code.
  uint32_t dist_[kMaxDistCodes] = {};
  uint32_t len_[259] = {};  // See SetCodes.
};

}  // namespace

Result<Puffed> Puff(ByteView deflate, const PuffLimits& limits, Bytes* content) {
  if (content) content->clear();
  Puffer p(deflate, limits, content);
  return p.Run();
}

Result<Bytes> Huff(ByteView puff) {
  Unpuffer<false> u(puff, UINT64_MAX);
  return u.Run();
}

Result<Bytes> InflatePuff(ByteView puff, uint64_t max_inflated) {
  Unpuffer<true> u(puff, max_inflated);
  return u.Run();
}

Result<std::vector<GzipMember>> ParseGzip(ByteView file, const PuffLimits& limits,
                                          bool keep_puffs) {
  if (file.empty()) return Error(ErrorCode::kInvalidArgument, "gzip: empty file");
  std::vector<GzipMember> members;
  uint64_t pos = 0;
  while (pos < file.size()) {
    const std::string where = "gzip member " + std::to_string(members.size()) + ": ";
    auto bad = [&](const char* what) { return Error(ErrorCode::kInvalidArgument, where + what); };
    ByteReader r(file.subspan(pos));
    GzipMember m;
    m.offset = pos;
    uint8_t id1, id2, cm;
    if (!r.ReadU8(&id1) || !r.ReadU8(&id2) || !r.ReadU8(&cm) || !r.ReadU8(&m.flags) ||
        !r.ReadU32Le(&m.mtime) || !r.ReadU8(&m.xfl) || !r.ReadU8(&m.os)) {
      return bad("truncated header");
    }
    if (id1 != 0x1f || id2 != 0x8b) return bad("bad magic");
    if (cm != 8) return bad("compression method is not deflate");
    if (m.flags & 0xE0) return bad("reserved flag bits set");
    if (m.flags & 4) {  // FEXTRA
      uint16_t xlen;
      if (!r.ReadU16Le(&xlen) || !r.Skip(xlen)) return bad("truncated extra field");
    }
    for (uint8_t flag : {uint8_t{8}, uint8_t{16}}) {  // FNAME, FCOMMENT: zero-terminated.
      if (!(m.flags & flag)) continue;
      const ByteView rest = r.Rest();
      const void* nul = rest.empty() ? nullptr : std::memchr(rest.data(), 0, rest.size());
      if (!nul) return bad("unterminated name or comment");
      r.Skip(static_cast<size_t>(static_cast<const uint8_t*>(nul) - rest.data()) + 1);
    }
    if ((m.flags & 2) && !r.Skip(2)) return bad("truncated header CRC");  // FHCRC
    m.deflate_offset = pos + r.position();
    Result<Puffed> p = Puff(file.subspan(m.deflate_offset), limits);
    if (!p.ok()) return p.status().WithContext(where);
    m.deflate_size = p->deflate_size;
    m.inflated_size = p->inflated_size;
    ByteReader t(file.subspan(m.deflate_offset + m.deflate_size));
    if (!t.ReadU32Le(&m.crc32) || !t.ReadU32Le(&m.isize)) return bad("truncated trailer");
    if (m.isize != static_cast<uint32_t>(m.inflated_size)) {
      return bad("ISIZE does not match the inflated size");
    }
    m.end = m.deflate_offset + m.deflate_size + 8;
    if (keep_puffs) m.puff = std::move(p->puff);
    members.push_back(std::move(m));
    pos = members.back().end;
  }
  return members;
}

}  // namespace ds::delta
