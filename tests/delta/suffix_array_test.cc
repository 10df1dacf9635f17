// SuffixArray::LongestMatch against a brute-force longest match, on texts small enough to check
// every needle: small alphabets (deep two-byte buckets, long repeats), zero bytes (the one-byte
// suffix that sorts at the start of a bucket), needles of one and two bytes, absent prefixes.
#include "delta/suffix_array.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "support/test_util.h"

namespace ds::delta {
namespace {

using ds::testing::BruteLongestMatch;
using ds::testing::CommonPrefix;

// Checks one needle: the length is the brute-force maximum and the position has it.
void ExpectLongest(const SuffixArray& sa, const Bytes& text, const Bytes& needle) {
  uint64_t pos = 99;
  const uint64_t len = sa.LongestMatch(needle, &pos);
  const uint64_t want = BruteLongestMatch(text, needle);
  ASSERT_EQ(len, want) << "text " << text.size() << " B, needle " << needle.size() << " B";
  if (len > 0) {
    ASSERT_LT(pos, text.size());
    EXPECT_EQ(CommonPrefix(text, pos, needle), len);
  } else {
    EXPECT_EQ(pos, 0u);
  }
}

Bytes RandomBytes(std::mt19937_64& rng, size_t n, const std::vector<uint8_t>& alphabet) {
  Bytes b(n);
  for (uint8_t& c : b) c = alphabet[rng() % alphabet.size()];
  return b;
}

TEST(SuffixArrayTest, MatchesBruteForceOnSmallAlphabets) {
  std::mt19937_64 rng(7);
  const std::vector<std::vector<uint8_t>> alphabets = {
      {0, 1}, {0, 'a'}, {'a', 'b', 'c', 0}, {0, 1, 2, 3, 0xff}};
  int needles = 0;
  for (const auto& alphabet : alphabets) {
    for (size_t n : {1, 2, 3, 5, 17, 64, 300}) {
      for (int round = 0; round < 6; ++round) {
        const Bytes text = RandomBytes(rng, n, alphabet);
        Result<SuffixArray> sa = SuffixArray::Build(text);
        ASSERT_TRUE(sa.ok());
        for (int k = 0; k < 40; ++k) {
          Bytes needle;
          if (k % 3 == 0) {
            needle = RandomBytes(rng, 1 + rng() % 12, alphabet);  // Often absent.
          } else {
            // A piece of the text (up to its end), sometimes with one byte changed or more after.
            const size_t at = rng() % n;
            const size_t len = 1 + rng() % (n - at);
            needle.assign(text.begin() + at, text.begin() + at + len);
            if (k % 3 == 1) needle[rng() % needle.size()] ^= 1;
            if (rng() % 2) needle.push_back(alphabet[rng() % alphabet.size()]);
          }
          ExpectLongest(*sa, text, needle);
          ++needles;
        }
      }
    }
  }
  EXPECT_GT(needles, 6000);
}

TEST(SuffixArrayTest, OneByteSuffixAtTheStartOfItsBucket) {
  // The last byte 'x' alone sorts just before every suffix starting "x\0": a needle "x\0..."
  // must find the longer suffixes inside the bucket, or only the one byte when there are none.
  for (const std::string& s : {std::string("x\0yx\0zx", 7), std::string("abx", 3),
                               std::string("x\0x", 3), std::string("\0\0\0x", 4)}) {
    const Bytes text(s.begin(), s.end());
    Result<SuffixArray> sa = SuffixArray::Build(text);
    ASSERT_TRUE(sa.ok());
    for (const std::string& n :
         {std::string("x\0z", 3), std::string("x\0y", 3), std::string("x\0", 2),
          std::string("x", 1), std::string("x\x01", 2), std::string("\0x", 2),
          std::string("\0\0\0\0", 4), std::string("q", 1)}) {
      ExpectLongest(*sa, text, Bytes(n.begin(), n.end()));
    }
  }
}

TEST(SuffixArrayTest, EmptyTextAndEmptyNeedle) {
  const Bytes empty;
  Result<SuffixArray> sa = SuffixArray::Build(empty);
  ASSERT_TRUE(sa.ok());
  uint64_t pos = 5;
  EXPECT_EQ(sa->LongestMatch(Bytes{1, 2}, &pos), 0u);
  EXPECT_EQ(pos, 0u);
  const Bytes text = {1, 2, 3};
  Result<SuffixArray> sa2 = SuffixArray::Build(text);
  ASSERT_TRUE(sa2.ok());
  EXPECT_EQ(sa2->LongestMatch(ByteView(), &pos), 0u);
}

TEST(SuffixArrayTest, FullByteRangeText) {
  // Every two-byte bucket populated or empty at random; needles from the text and outside it.
  std::mt19937_64 rng(11);
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  const Bytes text = RandomBytes(rng, 4000, all);
  Result<SuffixArray> sa = SuffixArray::Build(text);
  ASSERT_TRUE(sa.ok());
  for (int k = 0; k < 2000; ++k) {
    const size_t at = rng() % text.size();
    const size_t len = 1 + rng() % std::min<size_t>(40, text.size() - at);
    Bytes needle(text.begin() + at, text.begin() + at + len);
    if (k % 2) needle = RandomBytes(rng, 1 + rng() % 6, all);
    ExpectLongest(*sa, text, needle);
  }
}

}  // namespace
}  // namespace ds::delta
