// HashIndex::LongestMatch against a brute-force longest match: exact where no hash chain can pass
// kMaxChain positions (texts of fewer than kMaxChain + kMinMatch bytes, without runs of more than
// kMinMatch equal bytes, of which only the start is chained); elsewhere every answer must be a
// real match no longer than the longest, and long matches must be found. MatchRange through the
// index must cover its range with copies that point into the old text.
#include "delta/hash_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "delta/matcher.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using ds::testing::BruteLongestMatch;
using ds::testing::CommonPrefix;

// Whether |text| has |n| equal bytes in a row.
bool HasRun(const Bytes& text, size_t n) {
  size_t run = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    run = i > 0 && text[i] == text[i - 1] ? run + 1 : 1;
    if (run >= n) return true;
  }
  return false;
}

Bytes RandomBytes(std::mt19937_64& rng, size_t n, int alphabet) {
  Bytes b(n);
  for (uint8_t& c : b) c = static_cast<uint8_t>(rng() % alphabet);
  return b;
}

// A needle from |text| at a random place, sometimes with a byte changed or one more at its end.
Bytes PieceOf(std::mt19937_64& rng, const Bytes& text, int alphabet) {
  const size_t at = rng() % text.size();
  const size_t len = 1 + rng() % (text.size() - at);
  Bytes needle(text.begin() + at, text.begin() + at + len);
  if (rng() % 3 == 0) needle[rng() % needle.size()] ^= 1;
  if (rng() % 2) needle.push_back(static_cast<uint8_t>(rng() % alphabet));
  return needle;
}

TEST(HashIndexTest, ExactOnTextsNoChainCanOverflow) {
  std::mt19937_64 rng(11);
  int checked = 0, found = 0;
  for (int alphabet : {2, 3, 256}) {
    for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{16}, size_t{33},
                     HashIndex::kMaxChain + HashIndex::kMinMatch - 1}) {
      for (int round = 0; round < 30; ++round) {
        const Bytes text = RandomBytes(rng, n, alphabet);
        if (HasRun(text, HashIndex::kMinMatch + 1)) continue;  // Only a run's start is chained.
        Result<HashIndex> index = HashIndex::Build(text);
        ASSERT_TRUE(index.ok());
        for (int k = 0; k < 30; ++k) {
          const Bytes needle = k % 4 == 0 ? RandomBytes(rng, 1 + rng() % 20, alphabet)
                                          : PieceOf(rng, text, alphabet);
          uint64_t pos = 99;
          const uint64_t len = index->LongestMatch(needle, &pos);
          const uint64_t want = BruteLongestMatch(text, needle);
          if (want < HashIndex::kMinMatch) {
            ASSERT_EQ(len, 0u) << "text " << n << " B";
            ASSERT_EQ(pos, 0u);
          } else {
            ASSERT_EQ(len, want);
            ASSERT_EQ(CommonPrefix(text, pos, needle), len);
            ++found;
          }
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 5000);
  EXPECT_GT(found, 1000);
}

TEST(HashIndexTest, AnswersAreRealMatchesOnLargeRepetitiveTexts) {
  std::mt19937_64 rng(12);
  for (int alphabet : {2, 4, 256}) {
    const Bytes text = RandomBytes(rng, 20000, alphabet);
    Result<HashIndex> index = HashIndex::Build(text);
    ASSERT_TRUE(index.ok());
    for (int k = 0; k < 300; ++k) {
      const Bytes needle = PieceOf(rng, text, alphabet);
      uint64_t pos = 0;
      const uint64_t len = index->LongestMatch(needle, &pos);
      const uint64_t want = BruteLongestMatch(text, needle);
      ASSERT_LE(len, want);
      if (len > 0) {
        ASSERT_GE(len, HashIndex::kMinMatch);
        ASSERT_EQ(CommonPrefix(text, pos, needle), len);
      }
      // On random bytes a needle's 8-byte prefix has a short chain: its longest match is found.
      if (alphabet == 256 && want >= HashIndex::kMinMatch) {
        ASSERT_EQ(len, want);
      }
    }
  }
}

TEST(HashIndexTest, LongRunsStopAtAGoodMatch) {
  const Bytes zeros(1 << 20, 0);
  Result<HashIndex> index = HashIndex::Build(zeros);
  ASSERT_TRUE(index.ok());
  const Bytes needle(1 << 16, 0);
  uint64_t pos = 0;
  const uint64_t len = index->LongestMatch(needle, &pos);
  EXPECT_GE(len, HashIndex::kGoodMatch);
  EXPECT_LE(pos + len, zeros.size());
}

TEST(HashIndexTest, TinyAndEmptyTexts) {
  for (size_t n : {0, 1, 7}) {
    const Bytes text(n, 'x');
    Result<HashIndex> index = HashIndex::Build(text);
    ASSERT_TRUE(index.ok());
    uint64_t pos = 5;
    EXPECT_EQ(index->LongestMatch(Bytes(16, 'x'), &pos), 0u);
    EXPECT_EQ(pos, 0u);
  }
}

// A binary-like old text and a new one with small edits and an insertion: the hash-indexed
// matcher covers the range exactly, every copy lies in the old text, and nearly every byte is
// copied (as the suffix array's matcher does).
TEST(HashIndexTest, MatcherCoversEditedTextWithFewLiterals) {
  std::mt19937_64 rng(13);
  Bytes old = RandomBytes(rng, 200000, 256);
  for (size_t i = 0; i < old.size(); i += 64) std::fill_n(old.begin() + i, 8, 0);  // Padding.
  Bytes neu = old;
  for (int k = 0; k < 200; ++k) neu[rng() % neu.size()] ^= 0x5a;
  const Bytes inserted = RandomBytes(rng, 3000, 256);
  neu.insert(neu.begin() + 100000, inserted.begin(), inserted.end());
  Result<HashIndex> index = HashIndex::Build(old);
  Result<SuffixArray> sa = SuffixArray::Build(old);
  ASSERT_TRUE(index.ok());
  ASSERT_TRUE(sa.ok());
  uint64_t literals[2] = {0, 0};
  for (int which = 0; which < 2; ++which) {
    const std::vector<CopyOp> ops =
        which == 0 ? MatchRange(*index, neu, 0, neu.size()) : MatchRange(*sa, neu, 0, neu.size());
    uint64_t covered = 0;
    for (const CopyOp& op : ops) {
      if (op.copy_len > 0) {
        ASSERT_LE(op.old_pos + op.copy_len, old.size());
      }
      covered += op.copy_len + op.lit_len;
      literals[which] += op.lit_len;
    }
    ASSERT_EQ(covered, neu.size());
  }
  EXPECT_LE(literals[0], inserted.size() + 512);
  EXPECT_LE(literals[0], literals[1] + 256);
}

}  // namespace
}  // namespace ds::delta
