// fec::ReedSolomon: every erasure pattern up to R for small K, random patterns up to K = 200,
// fresh repair ids ("need more"), and refusals of bad shapes.
#include "fec/reed_solomon.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

namespace ds::fec {
namespace {

struct Block {
  int k;
  size_t len;
  std::vector<std::vector<uint8_t>> source;
};

Block MakeBlock(int k, size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Block b{k, len, {}};
  for (int j = 0; j < k; ++j) {
    std::vector<uint8_t> s(len);
    for (auto& x : s) x = static_cast<uint8_t>(rng());
    b.source.push_back(std::move(s));
  }
  return b;
}

// Symbols with ids |esis| of block |b| (sources copied, repairs encoded).
std::vector<std::vector<uint8_t>> Symbols(ReedSolomon& rs, const Block& b,
                                          const std::vector<uint8_t>& esis) {
  std::vector<const uint8_t*> src;
  for (const auto& s : b.source) src.push_back(s.data());
  std::vector<uint8_t> repair_ids;
  for (uint8_t e : esis) {
    if (e >= b.k) repair_ids.push_back(e);
  }
  std::vector<std::vector<uint8_t>> repair(repair_ids.size(), std::vector<uint8_t>(b.len));
  std::vector<uint8_t*> out;
  for (auto& r : repair) out.push_back(r.data());
  EXPECT_TRUE(rs.Encode(b.k, src, repair_ids, out, b.len).ok());
  std::vector<std::vector<uint8_t>> symbols;
  size_t ri = 0;
  for (uint8_t e : esis) symbols.push_back(e < b.k ? b.source[e] : repair[ri++]);
  return symbols;
}

bool Decodes(ReedSolomon& rs, const Block& b, const std::vector<uint8_t>& esis) {
  const auto symbols = Symbols(rs, b, esis);
  std::vector<const uint8_t*> in;
  for (const auto& s : symbols) in.push_back(s.data());
  std::vector<std::vector<uint8_t>> out(b.k, std::vector<uint8_t>(b.len, 0xEE));
  std::vector<uint8_t*> outp;
  for (auto& o : out) outp.push_back(o.data());
  const Status st = rs.Decode(b.k, esis, in, outp, b.len);
  if (!st.ok()) {
    ADD_FAILURE() << st.ToString();
    return false;
  }
  return out == b.source;
}

TEST(ReedSolomonTest, RecoversFromEveryErasurePatternUpToR) {
  ReedSolomon rs;
  int patterns = 0;
  for (int k = 1; k <= 8; ++k) {
    for (int r = 0; r <= 4; ++r) {
      const Block b = MakeBlock(k, 37, k * 10 + r);
      const int n = k + r;
      // Every subset of size k of the n symbols (= every erasure pattern of n - k symbols).
      for (uint32_t mask = 0; mask < (1u << n); ++mask) {
        if (__builtin_popcount(mask) != k) continue;
        std::vector<uint8_t> esis;
        for (int i = 0; i < n; ++i) {
          if (mask & (1u << i)) esis.push_back(static_cast<uint8_t>(i));
        }
        ASSERT_TRUE(Decodes(rs, b, esis)) << "k=" << k << " r=" << r << " mask=" << mask;
        ++patterns;
      }
    }
  }
  EXPECT_GT(patterns, 1000);
}

TEST(ReedSolomonTest, RecoversRandomPatternsUpToK200) {
  ReedSolomon rs;
  std::mt19937 rng(99);
  for (int trial = 0; trial < 60; ++trial) {
    const int k = 1 + static_cast<int>(rng() % 200);
    const int r = static_cast<int>(rng() % std::min(60, 255 - k + 1));
    const size_t len = 1 + rng() % 1200;
    const Block b = MakeBlock(k, len, trial);
    std::vector<uint8_t> all(k + r);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<uint8_t> esis(all.begin(), all.begin() + k);
    ASSERT_TRUE(Decodes(rs, b, esis)) << "k=" << k << " r=" << r;
  }
}

TEST(ReedSolomonTest, FreshRepairIdsAfterTheFirstBurstDecode) {
  // A block sent as 0..k+r-1 lost more than r symbols; the sender answers with ids past k+r.
  ReedSolomon rs;
  const int k = 120, r = 10;
  const Block b = MakeBlock(k, 1100, 5);
  std::vector<uint8_t> esis;
  for (int i = 20; i < k + r; ++i) esis.push_back(static_cast<uint8_t>(i));  // 20 lost
  for (int i = k + r; static_cast<int>(esis.size()) < k; ++i)
    esis.push_back(static_cast<uint8_t>(i));
  EXPECT_TRUE(Decodes(rs, b, esis));
  // Only repair symbols, the highest ids.
  std::vector<uint8_t> top;
  for (int i = 254; static_cast<int>(top.size()) < k; --i) top.push_back(static_cast<uint8_t>(i));
  EXPECT_TRUE(Decodes(rs, b, top));
}

TEST(ReedSolomonTest, SystematicRowsAreIdentity) {
  ReedSolomon rs;
  for (int j = 0; j < 5; ++j) {
    for (int i = 0; i < 5; ++i) EXPECT_EQ(rs.Coefficient(5, i, j), i == j ? 1 : 0);
  }
}

TEST(ReedSolomonTest, EncodeCacheGivesSameSymbols) {
  ReedSolomon rs;
  const Block b = MakeBlock(50, 300, 8);
  const std::vector<uint8_t> esis = {50, 51, 77};
  const auto first = Symbols(rs, b, esis);
  for (int i = 0; i < 40; ++i) (void)Symbols(rs, b, {static_cast<uint8_t>(60 + i)});  // evict
  EXPECT_EQ(Symbols(rs, b, esis), first);
}

TEST(ReedSolomonTest, RejectsBadShapes) {
  ReedSolomon rs;
  const Block b = MakeBlock(4, 16, 1);
  std::vector<const uint8_t*> src;
  for (const auto& s : b.source) src.push_back(s.data());
  std::vector<uint8_t> buf(16);
  std::vector<uint8_t*> out = {buf.data()};
  const std::vector<uint8_t> source_id = {2};  // Not a repair id.
  EXPECT_EQ(rs.Encode(4, src, source_id, out, 16).code(), ErrorCode::kInvalidArgument);
  const std::vector<uint8_t> too_high = {255};
  EXPECT_EQ(rs.Encode(4, src, too_high, out, 16).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(rs.Encode(0, {}, {}, {}, 16).code(), ErrorCode::kInvalidArgument);
  // Decode: repeated id, wrong count.
  std::vector<std::vector<uint8_t>> outs(4, std::vector<uint8_t>(16));
  std::vector<uint8_t*> outp;
  for (auto& o : outs) outp.push_back(o.data());
  const std::vector<uint8_t> repeated = {0, 1, 5, 5};
  EXPECT_EQ(rs.Decode(4, repeated, src, outp, 16).code(), ErrorCode::kInvalidArgument);
  const std::vector<uint8_t> three = {0, 1, 2};
  EXPECT_EQ(rs.Decode(4, three, std::span(src).first(3), outp, 16).code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds::fec
