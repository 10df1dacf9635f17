// Deflate puffs: bit-exact round trips over zlib, gzip(1) and Node output, hostile deflate
// streams and puffs, and the reason puffs exist (two similar files give similar puffs).
#include "delta/deflate_puff.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "support/test_util.h"

namespace ds::delta {
namespace {

using ds::testing::RandomBytes;
using ds::testing::TempDir;
using ds::testing::TextBytes;

struct ZParams {
  int level = 6;
  int window_bits = 15;
  int mem_level = 8;
  int strategy = Z_DEFAULT_STRATEGY;
};

// Raw deflate of |data| with zlib. |flushes| lists (offset, flush mode) pairs: input up to the
// offset is fed, then deflate() is called with that flush mode.
Bytes ZDeflate(ByteView data, const ZParams& p,
               const std::vector<std::pair<size_t, int>>& flushes = {}) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, p.level, Z_DEFLATED, -p.window_bits, p.mem_level, p.strategy), Z_OK);
  Bytes out(deflateBound(&z, data.size()) + 64 + 16 * flushes.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  size_t fed = 0;
  auto feed = [&](size_t upto, int mode) {
    z.next_in = const_cast<Bytef*>(data.data() + fed);
    z.avail_in = static_cast<uInt>(upto - fed);
    fed = upto;
    const int rc = deflate(&z, mode);
    EXPECT_TRUE(rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR) << rc;
    EXPECT_EQ(z.avail_in, 0u);
  };
  for (const auto& [at, mode] : flushes) feed(at, mode);
  z.next_in = const_cast<Bytef*>(data.data() + fed);
  z.avail_in = static_cast<uInt>(data.size() - fed);
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

Bytes ZInflateRaw(ByteView deflate) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, -15), Z_OK);
  Bytes out;
  Bytes buf(1 << 16);
  z.next_in = const_cast<Bytef*>(deflate.data());
  z.avail_in = static_cast<uInt>(deflate.size());
  int rc;
  do {
    z.next_out = buf.data();
    z.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&z, Z_NO_FLUSH);
    out.insert(out.end(), buf.begin(), buf.begin() + (buf.size() - z.avail_out));
  } while (rc == Z_OK);
  EXPECT_EQ(rc, Z_STREAM_END);
  inflateEnd(&z);
  return out;
}

uint32_t Crc32(ByteView data) {
  return static_cast<uint32_t>(crc32(0, data.data(), static_cast<uInt>(data.size())));
}

// Puff, Huff, InflatePuff on one stream that holds |content|.
void ExpectRoundTrip(ByteView deflate, ByteView content, const std::string& what) {
  SCOPED_TRACE(what);
  Bytes inflated;
  Result<Puffed> p = Puff(deflate, {}, &inflated);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->deflate_size, deflate.size());
  EXPECT_EQ(p->inflated_size, content.size());
  EXPECT_TRUE(inflated == Bytes(content.begin(), content.end()));
  Result<Bytes> h = Huff(p->puff);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_TRUE(*h == Bytes(deflate.begin(), deflate.end())) << "huff differs";
  Result<Bytes> i = InflatePuff(p->puff);
  ASSERT_TRUE(i.ok()) << i.status().ToString();
  EXPECT_TRUE(*i == Bytes(content.begin(), content.end())) << "inflate differs";
  // Puffing without content gives the same puff.
  Result<Puffed> q = Puff(deflate);
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(q->puff == p->puff);
}

std::vector<std::pair<std::string, Bytes>> Inputs() {
  Bytes repetitive;
  for (int i = 0; i < 50000; ++i) repetitive.push_back(static_cast<uint8_t>("abcabcabd"[i % 9]));
  Bytes zeros(300000, 0);
  Bytes mixed = TextBytes(100000, 7);
  const Bytes rnd = RandomBytes(40000, 8);
  mixed.insert(mixed.begin() + 50000, rnd.begin(), rnd.end());
  return {{"empty", {}},
          {"one", {'x'}},
          {"text", TextBytes(200000, 1)},
          {"random", RandomBytes(150000, 2)},
          {"repetitive", repetitive},
          {"zeros", zeros},
          {"mixed", mixed}};
}

TEST(DeflatePuff, ZlibLevels) {
  for (const auto& [name, data] : Inputs()) {
    for (int level = 0; level <= 9; ++level) {
      ZParams p;
      p.level = level;
      const Bytes d = ZDeflate(data, p);
      ExpectRoundTrip(d, data, name + " level " + std::to_string(level));
      EXPECT_TRUE(ZInflateRaw(d) == data);
    }
  }
}

TEST(DeflatePuff, ZlibStrategiesMemLevelsWindows) {
  const Bytes text = TextBytes(300000, 3);
  for (int strategy : {Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED}) {
    for (int level : {1, 6, 9}) {
      ZParams p;
      p.level = level;
      p.strategy = strategy;
      ExpectRoundTrip(ZDeflate(text, p), text,
                      "strategy " + std::to_string(strategy) + " level " + std::to_string(level));
    }
  }
  for (int mem : {1, 9}) {
    for (int level : {1, 9}) {
      ZParams p;
      p.level = level;
      p.mem_level = mem;
      ExpectRoundTrip(ZDeflate(text, p), text, "memLevel " + std::to_string(mem));
    }
  }
  for (int wbits = 9; wbits <= 15; ++wbits) {
    ZParams p;
    p.level = 9;
    p.window_bits = wbits;
    ExpectRoundTrip(ZDeflate(text, p), text, "windowBits " + std::to_string(wbits));
  }
}

TEST(DeflatePuff, FlushesMakeEmptyAndOddBlocks) {
  const Bytes text = TextBytes(120000, 4);
  for (int level : {0, 1, 9}) {
    ZParams p;
    p.level = level;
    const Bytes d = ZDeflate(text, p,
                             {{1000, Z_SYNC_FLUSH},
                              {1000, Z_SYNC_FLUSH},
                              {5000, Z_FULL_FLUSH},
                              {5001, Z_PARTIAL_FLUSH},
                              {7000, Z_BLOCK},
                              {60000, Z_FULL_FLUSH},
                              {120000, Z_SYNC_FLUSH}});
    ExpectRoundTrip(d, text, "flushes level " + std::to_string(level));
  }
}

TEST(DeflatePuff, SmallInputsAllLevels) {
  for (size_t n = 0; n < 40; ++n) {
    const Bytes data = TextBytes(n, n);
    for (int level = 0; level <= 9; ++level) {
      ZParams p;
      p.level = level;
      ExpectRoundTrip(ZDeflate(data, p), data, "n " + std::to_string(n));
    }
  }
}

TEST(DeflatePuff, LiteralRunsAreRawBytes) {
  // Huffman-only: the whole content is literals, so the puff holds it verbatim.
  const Bytes text = TextBytes(5000, 5);
  ZParams p;
  p.strategy = Z_HUFFMAN_ONLY;
  Result<Puffed> r = Puff(ZDeflate(text, p));
  ASSERT_TRUE(r.ok());
  const auto it = std::search(r->puff.begin(), r->puff.end(), text.begin(), text.begin() + 4000);
  EXPECT_NE(it, r->puff.end());
}

// Runs a shell command; returns false when it fails.
bool Sh(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }
bool HaveTool(const std::string& tool) { return Sh("command -v " + tool + " >/dev/null 2>&1"); }

void ExpectGzipFile(ByteView file, const std::vector<Bytes>& contents, const std::string& what) {
  SCOPED_TRACE(what);
  Result<std::vector<GzipMember>> members = ParseGzip(file, {}, true);
  ASSERT_TRUE(members.ok()) << members.status().ToString();
  ASSERT_EQ(members->size(), contents.size());
  uint64_t pos = 0;
  for (size_t i = 0; i < contents.size(); ++i) {
    const GzipMember& m = (*members)[i];
    EXPECT_EQ(m.offset, pos);
    pos = m.end;
    const ByteView deflate = file.subspan(m.deflate_offset, m.deflate_size);
    Result<Bytes> h = Huff(m.puff);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_TRUE(*h == Bytes(deflate.begin(), deflate.end()));
    Result<Bytes> c = InflatePuff(m.puff);
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(*c == contents[i]);
    EXPECT_EQ(m.crc32, Crc32(contents[i]));
    EXPECT_EQ(m.isize, static_cast<uint32_t>(contents[i].size()));
  }
  EXPECT_EQ(pos, file.size());
}

TEST(DeflatePuff, GzipBinary) {
  if (!HaveTool("gzip")) GTEST_SKIP() << "no gzip binary";
  TempDir dir;
  const Bytes text = TextBytes(400000, 11);
  ds::testing::WriteFileOrDie(dir.Join("in"), text);
  for (const char* level : {"-1", "-6", "-9"}) {
    const std::string out = dir.Join(std::string("out") + level + ".gz");
    ASSERT_TRUE(Sh("gzip -c " + std::string(level) + " " + dir.Join("in") + " > " + out));
    ExpectGzipFile(ds::testing::ReadFileOrDie(out), {text}, std::string("gzip ") + level);
  }
}

// A gzip member written by zlib with every optional header field.
Bytes ZGzipMember(ByteView data, int level, bool all_fields) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
  gz_header h{};
  char name[] = "file.txt", comment[] = "a comment";
  Bytef extra[] = {'A', 'B', 2, 0, 'x', 'y'};
  if (all_fields) {
    h.name = reinterpret_cast<Bytef*>(name);
    h.comment = reinterpret_cast<Bytef*>(comment);
    h.extra = extra;
    h.extra_len = sizeof(extra);
    h.hcrc = 1;
    h.time = 12345;
    EXPECT_EQ(deflateSetHeader(&z, &h), Z_OK);
  }
  Bytes out(deflateBound(&z, data.size()) + 128);
  z.next_in = const_cast<Bytef*>(data.data());
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

TEST(DeflatePuff, MultiMemberGzip) {
  const Bytes a = TextBytes(70000, 12), b = RandomBytes(5000, 13), c;
  Bytes file = ZGzipMember(a, 9, true);
  const Bytes m2 = ZGzipMember(b, 1, false), m3 = ZGzipMember(c, 6, true);
  file.insert(file.end(), m2.begin(), m2.end());
  file.insert(file.end(), m3.begin(), m3.end());
  ExpectGzipFile(file, {a, b, c}, "three members");
  // Trailing garbage, a bad ISIZE, a truncated member, an empty file.
  Bytes junk = file;
  junk.push_back(0);
  EXPECT_EQ(ds::testing::CodeOf(ParseGzip(junk)), ErrorCode::kInvalidArgument);
  Bytes bad_isize = file;
  const size_t m2_end = file.size() - m3.size();
  bad_isize[m2_end - 1] ^= 1;  // The top byte of the second member's ISIZE.
  EXPECT_EQ(ds::testing::CodeOf(ParseGzip(bad_isize)), ErrorCode::kInvalidArgument);
  for (size_t cut : {size_t{1}, size_t{9}, size_t{20}, file.size() - 1}) {
    EXPECT_FALSE(ParseGzip(ByteView(file).first(cut)).ok()) << cut;
  }
  EXPECT_FALSE(ParseGzip({}).ok());
}

TEST(DeflatePuff, NodeZlib) {
  if (!HaveTool("node")) GTEST_SKIP() << "no node binary";
  TempDir dir;
  const Bytes text = TextBytes(300000, 14);
  ds::testing::WriteFileOrDie(dir.Join("in"), text);
  for (int level : {1, 9}) {
    const std::string out = dir.Join("node" + std::to_string(level) + ".gz");
    const std::string js = "const z=require('zlib'),f=require('fs');f.writeFileSync('" + out +
                           "',z.gzipSync(f.readFileSync('" + dir.Join("in") +
                           "'),{level:" + std::to_string(level) + "}))";
    ASSERT_TRUE(Sh("node -e \"" + js + "\""));
    ExpectGzipFile(ds::testing::ReadFileOrDie(out), {text}, "node level " + std::to_string(level));
  }
}

// LSB-first bit writer for hand-made streams; Huffman codes go MSB first as in RFC 1951.
class Bits {
 public:
  Bits& Put(uint32_t v, int n) {
    for (int i = 0; i < n; ++i) PutBit((v >> i) & 1);
    return *this;
  }
  Bits& Code(uint32_t code, int n) {
    for (int i = n - 1; i >= 0; --i) PutBit((code >> i) & 1);
    return *this;
  }
  Bytes bytes() const { return out_; }

 private:
  void PutBit(int b) {
    if (n_ % 8 == 0) out_.push_back(0);
    out_.back() |= static_cast<uint8_t>(b << (n_ % 8));
    ++n_;
  }
  Bytes out_;
  size_t n_ = 0;
};

// Fixed-code literal/length symbol.
Bits& FixedSym(Bits& b, int sym) {
  if (sym < 144) return b.Code(0x30 + sym, 8);
  if (sym < 256) return b.Code(0x190 + sym - 144, 9);
  if (sym < 280) return b.Code(sym - 256, 7);
  return b.Code(0xC0 + sym - 280, 8);
}

ErrorCode PuffCode(ByteView d) { return ds::testing::CodeOf(Puff(d)); }

TEST(DeflatePuff, CraftedInvalidStreams) {
  {  // Stored block with NLEN != ~LEN.
    const Bytes d = {0x01, 0x03, 0x00, 0xFC, 0xFE, 'a', 'b', 'c'};
    EXPECT_EQ(PuffCode(d), ErrorCode::kInvalidArgument);
    const Bytes ok = {0x01, 0x03, 0x00, 0xFC, 0xFF, 'a', 'b', 'c'};
    ExpectRoundTrip(ok, AsBytes("abc"), "stored abc");
  }
  EXPECT_EQ(PuffCode(Bytes{0x07}), ErrorCode::kInvalidArgument);  // BTYPE 3.
  {  // A copy before anything was written.
    Bits b;
    b.Put(1, 1).Put(1, 2);
    FixedSym(b, 257).Code(0, 5);
    FixedSym(b, 256);
    EXPECT_EQ(PuffCode(b.bytes()), ErrorCode::kInvalidArgument);
  }
  for (int sym : {286, 287}) {  // Literal/length symbols 286 and 287.
    Bits b;
    b.Put(1, 1).Put(1, 2);
    FixedSym(b, 'a');
    FixedSym(b, sym).Code(0, 5);
    FixedSym(b, 256);
    EXPECT_EQ(PuffCode(b.bytes()), ErrorCode::kInvalidArgument) << sym;
  }
  for (int dist : {30, 31}) {  // Distance codes 30 and 31.
    Bits b;
    b.Put(1, 1).Put(1, 2);
    FixedSym(b, 'a');
    FixedSym(b, 257).Code(static_cast<uint32_t>(dist), 5);
    FixedSym(b, 256);
    EXPECT_EQ(PuffCode(b.bytes()), ErrorCode::kInvalidArgument) << dist;
  }
  {  // Length 258 coded as symbol 284 + 31: valid for zlib, kept bit-exact.
    Bits b;
    b.Put(1, 1).Put(1, 2);
    FixedSym(b, 'z');
    FixedSym(b, 284).Put(31, 5).Code(0, 5);
    FixedSym(b, 256);
    const Bytes d = b.bytes();
    const Bytes content(259, 'z');
    EXPECT_TRUE(ZInflateRaw(d) == content);
    ExpectRoundTrip(d, content, "284+31");
  }
}

// A final dynamic block: HLIT = |hlit|, HDIST = |hdist|, a code-length code giving symbols 1, 2,
// 17 and 18 two bits each (complete; canonical codes 00, 01, 10, 11), then the code-length
// symbols |syms| as (symbol, extra bits), then one 0 bit (end-of-block when symbol 256 has the
// only, 1-bit, literal/length code).
Bytes DynamicBlock(int hlit, int hdist, const std::vector<std::pair<int, int>>& syms) {
  Bits b;
  b.Put(1, 1).Put(2, 2).Put(static_cast<uint32_t>(hlit), 5).Put(static_cast<uint32_t>(hdist), 5);
  b.Put(14, 4);  // HCLEN + 4 = 18 lengths: up to symbol 1 in the permuted order.
  const int cl_len[18] = {0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2};
  for (int v : cl_len) b.Put(static_cast<uint32_t>(v), 3);
  for (const auto& [sym, extra] : syms) {
    if (sym == 1) b.Code(0, 2);
    if (sym == 2) b.Code(1, 2);
    if (sym == 17) b.Code(2, 2).Put(static_cast<uint32_t>(extra), 3);
    if (sym == 18) b.Code(3, 2).Put(static_cast<uint32_t>(extra), 7);
  }
  b.Code(0, 1);
  return b.bytes();
}

TEST(DeflatePuff, CraftedCodes) {
  // 258 lengths of 1: over-subscribed literal/length code.
  const std::vector<std::pair<int, int>> ones(258, {1, 0});
  EXPECT_EQ(PuffCode(DynamicBlock(0, 0, ones)), ErrorCode::kInvalidArgument);
  // Only end-of-block (length 1) and one distance code of length 1: allowed, as zlib does.
  const Bytes d = DynamicBlock(0, 0, {{18, 127}, {18, 107}, {1, 0}, {1, 0}});
  EXPECT_TRUE(ZInflateRaw(d).empty());
  ExpectRoundTrip(d, {}, "eob only");
  // Incomplete literal/length code: literal 0 and end-of-block, two bits each.
  EXPECT_EQ(PuffCode(DynamicBlock(0, 0, {{2, 0}, {18, 127}, {18, 106}, {2, 0}, {1, 0}})),
            ErrorCode::kInvalidArgument);
  // Over-subscribed distance code: three codes of length 1.
  EXPECT_EQ(PuffCode(DynamicBlock(0, 2, {{18, 127}, {18, 107}, {1, 0}, {1, 0}, {1, 0}, {1, 0}})),
            ErrorCode::kInvalidArgument);
  // Repeats past the declared lengths.
  EXPECT_EQ(PuffCode(DynamicBlock(0, 0, {{18, 127}, {18, 127}})), ErrorCode::kInvalidArgument);
  // Symbol 256 without a code.
  EXPECT_EQ(PuffCode(DynamicBlock(0, 0, {{18, 127}, {18, 108}, {1, 0}})),
            ErrorCode::kInvalidArgument);
  // HLIT 30 (287 codes).
  EXPECT_EQ(PuffCode(DynamicBlock(30, 0, {{18, 127}, {18, 107}, {1, 0}, {1, 0}})),
            ErrorCode::kInvalidArgument);
}

// The same zlib stream behind 0..23 empty fixed blocks (10 bits each): every bit alignment and
// reader refill phase for its dynamic headers (19 code-length-code lengths take 57 bits).
TEST(DeflatePuff, BitAlignments) {
  const Bytes text = TextBytes(30000, 23);
  ZParams p;
  p.level = 9;
  const Bytes d = ZDeflate(text, p);
  for (int k = 0; k < 24; ++k) {
    Bits b;
    for (int i = 0; i < k; ++i) b.Put(0, 1).Put(1, 2).Code(0, 7);
    for (uint8_t byte : d) b.Put(byte, 8);
    const Bytes s = b.bytes();
    Bytes content;
    Result<Puffed> r = Puff(s, {}, &content);
    ASSERT_TRUE(r.ok()) << k << ": " << r.status().ToString();
    EXPECT_TRUE(content == text) << k;
    Result<Bytes> h = Huff(r->puff);
    ASSERT_TRUE(h.ok()) << k;
    EXPECT_TRUE(*h == Bytes(s.begin(), s.begin() + static_cast<ptrdiff_t>(r->deflate_size))) << k;
  }
}

TEST(DeflatePuff, TruncationsAndBitFlips) {
  const Bytes text = TextBytes(3000, 21);
  for (int level : {0, 1, 9}) {
    ZParams p;
    p.level = level;
    const Bytes d = ZDeflate(text, p);
    for (size_t n = 0; n < d.size(); ++n) {
      Result<Puffed> r = Puff(ByteView(d).first(n));
      EXPECT_FALSE(r.ok()) << "prefix " << n << " of " << d.size();
      if (!r.ok()) {
        EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
      }
    }
    std::mt19937 rng(static_cast<uint32_t>(level));
    for (int i = 0; i < 2000; ++i) {
      Bytes f = d;
      const size_t bit = rng() % (f.size() * 8);
      f[bit / 8] ^= static_cast<uint8_t>(1 << (bit % 8));
      Result<Puffed> r = Puff(f);
      if (!r.ok()) continue;
      Result<Bytes> h = Huff(r->puff);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      EXPECT_TRUE(*h == Bytes(f.begin(), f.begin() + static_cast<ptrdiff_t>(r->deflate_size)));
    }
  }
}

TEST(DeflatePuff, Limits) {
  const Bytes zeros(1 << 20, 0);
  ZParams p;
  p.level = 9;
  const Bytes d = ZDeflate(zeros, p);
  PuffLimits small;
  small.max_inflated = 1000;
  EXPECT_EQ(ds::testing::CodeOf(Puff(d, small)), ErrorCode::kResourceLimit);
  small = {};
  small.max_puff = 1000;
  EXPECT_EQ(ds::testing::CodeOf(Puff(d, small)), ErrorCode::kResourceLimit);
  Result<Puffed> r = Puff(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(ds::testing::CodeOf(InflatePuff(r->puff, 1000)), ErrorCode::kResourceLimit);
}

TEST(DeflatePuff, GarbagePuffs) {
  const Bytes text = TextBytes(20000, 22);
  ZParams p;
  p.level = 6;
  const Bytes d = ZDeflate(text, p, {{10000, Z_SYNC_FLUSH}});
  Result<Puffed> r = Puff(d);
  ASSERT_TRUE(r.ok());
  const Bytes& puff = r->puff;
  // Every prefix is malformed.
  for (size_t n = 0; n < puff.size(); n += (n < 400 ? 1 : 37)) {
    EXPECT_EQ(ds::testing::CodeOf(Huff(ByteView(puff).first(n))), ErrorCode::kPatchMalformed) << n;
    EXPECT_FALSE(InflatePuff(ByteView(puff).first(n)).ok());
  }
  Bytes extra = puff;
  extra.push_back(0);
  EXPECT_EQ(ds::testing::CodeOf(Huff(extra)), ErrorCode::kPatchMalformed);
  // Random mutations: never crash; Huff and InflatePuff agree on success; a successful Huff
  // output is valid deflate that puffs back to a stream Huff reproduces.
  std::mt19937 rng(5);
  int huffed = 0;
  for (int i = 0; i < 3000; ++i) {
    Bytes f = puff;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) f[5 + rng() % (f.size() - 5)] = static_cast<uint8_t>(rng());
    Result<Bytes> h = Huff(f);
    Result<Bytes> c = InflatePuff(f);
    ASSERT_EQ(h.ok(), c.ok()) << i;
    if (!h.ok()) continue;
    ++huffed;
    Bytes content;
    Result<Puffed> again = Puff(*h, {}, &content);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_TRUE(content == *c);
    EXPECT_TRUE(ZInflateRaw(*h) == *c);
  }
  EXPECT_GT(huffed, 0);
  for (uint64_t seed = 0; seed < 300; ++seed) {
    Bytes g = RandomBytes(1 + seed * 7, seed);
    if (seed % 2) g.insert(g.begin(), {'D', 'S', 'P', 'U', 1});
    Result<Bytes> h = Huff(g);
    if (h.ok()) {
      EXPECT_TRUE(Puff(*h).ok());
    }
  }
}

// Fraction of the 32-byte aligned chunks of |b| that occur anywhere in |a|.
double SharedChunks(ByteView a, ByteView b) {
  constexpr size_t kChunk = 32;
  if (a.size() < kChunk || b.size() < kChunk) return 0;
  auto hash = [](const uint8_t* p) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < kChunk; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  };
  std::vector<uint64_t> all;
  all.reserve(a.size());
  for (size_t i = 0; i + kChunk <= a.size(); ++i) all.push_back(hash(a.data() + i));
  std::sort(all.begin(), all.end());
  size_t found = 0, total = 0;
  for (size_t i = 0; i + kChunk <= b.size(); i += kChunk, ++total) {
    found += std::binary_search(all.begin(), all.end(), hash(b.data() + i));
  }
  return static_cast<double>(found) / static_cast<double>(total);
}

TEST(DeflatePuff, SmallEditKeepsPuffsAlike) {
  const Bytes old_text = TextBytes(2 << 20, 31);
  Bytes new_text = old_text;
  const std::string ins = "an inserted phrase ";
  new_text.insert(new_text.begin() + 3000, ins.begin(), ins.end());
  ZParams p;
  p.level = 9;
  const Bytes old_d = ZDeflate(old_text, p), new_d = ZDeflate(new_text, p);
  Result<Puffed> old_p = Puff(old_d), new_p = Puff(new_d);
  ASSERT_TRUE(old_p.ok() && new_p.ok());
  const double raw = SharedChunks(old_d, new_d);
  const double puffed = SharedChunks(old_p->puff, new_p->puff);
  std::printf(
      "deflate %zu -> %zu bytes, puff %zu -> %zu bytes; shared 32-byte chunks: "
      "deflate %.1f%%, puff %.1f%%\n",
      old_d.size(), new_d.size(), old_p->puff.size(), new_p->puff.size(), raw * 100, puffed * 100);
  EXPECT_LT(raw, 0.05);
  EXPECT_GT(puffed, 0.90);
}

}  // namespace
}  // namespace ds::delta
