// Tests SHA-256 (FIPS 180-2 vectors, incremental) and CRC32C (known vectors, model, chaining).
#include "common/hash.h"

#include <gtest/gtest.h>

#include <string>

#include "support/test_util.h"

namespace ds {
namespace {

std::string Sha256Hex(std::string_view s) { return ToHex(Sha256::Of(AsBytes(s))); }

TEST(Sha256Test, EmptyString) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, Abc) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, TwoBlockMessage) {
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, MillionAsIncremental) {
  Sha256 h;
  const std::string chunk(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.Update(AsBytes(chunk));
  EXPECT_EQ(ToHex(h.Finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShotForAnySplit) {
  const Bytes data = testing::RandomBytes(1000, 1);
  const Sha256Digest expected = Sha256::Of(data);
  for (size_t split : {0, 1, 63, 64, 65, 500, 999, 1000}) {
    Sha256 h;
    h.Update(ByteView(data).first(split));
    h.Update(ByteView{});
    h.Update(ByteView(data).subspan(split));
    EXPECT_EQ(h.Finish(), expected) << "split at " << split;
  }
}

TEST(Sha256Test, FinishResetsForReuse) {
  Sha256 h;
  h.Update(AsBytes("something else"));
  (void)h.Finish();
  h.Update(AsBytes("abc"));
  EXPECT_EQ(ToHex(h.Finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(h.Finish()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(ToHexTest, LowercaseTwoDigitsPerByte) {
  const Bytes data = {0x00, 0x0f, 0xa5, 0xff};
  EXPECT_EQ(ToHex(data), "000fa5ff");
  EXPECT_EQ(ToHex(ByteView{}), "");
}

// Bit-at-a-time CRC-32C, the textbook definition, as an independent model.
uint32_t ReferenceCrc32c(ByteView data, uint32_t crc = 0) {
  crc = ~crc;
  for (uint8_t b : data) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32cTest, CheckValue) { EXPECT_EQ(Crc32c(AsBytes("123456789")), 0xE3069283u); }

TEST(Crc32cTest, EmptyIsZeroAndKeepsChain) {
  EXPECT_EQ(Crc32c(ByteView{}), 0u);
  EXPECT_EQ(Crc32c(ByteView{}, 0x12345678u), 0x12345678u);
}

TEST(Crc32cTest, Rfc3720Vectors) {
  EXPECT_EQ(Crc32c(Bytes(32, 0x00)), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(Bytes(32, 0xff)), 0x62A8AB43u);
  Bytes up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  EXPECT_EQ(Crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(down), 0x113FDB5Cu);
}

TEST(Crc32cTest, MatchesReferenceAtEveryLengthAndAlignment) {
  const Bytes data = testing::RandomBytes(300, 7);
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t len = 0; offset + len <= 200; ++len) {
      const ByteView v = ByteView(data).subspan(offset, len);
      ASSERT_EQ(Crc32c(v), ReferenceCrc32c(v)) << "offset " << offset << " len " << len;
    }
  }
}

TEST(Crc32cTest, ChainedEqualsWhole) {
  const Bytes data = testing::RandomBytes(4099, 3);
  const uint32_t whole = Crc32c(data);
  for (size_t split : {0, 1, 7, 8, 9, 1000, 4098, 4099}) {
    const ByteView v(data);
    EXPECT_EQ(Crc32c(v.subspan(split), Crc32c(v.first(split))), whole) << "split " << split;
  }
  // Three pieces, as a segment checksum is built (header, then payload).
  const ByteView v(data);
  EXPECT_EQ(Crc32c(v.subspan(300), Crc32c(v.subspan(100, 200), Crc32c(v.first(100)))), whole);
}

TEST(Crc32cTest, ChainedCheckValue) {
  EXPECT_EQ(Crc32c(AsBytes("56789"), Crc32c(AsBytes("1234"))), 0xE3069283u);
}

TEST(Crc32cTest, SingleBitFlipChangesChecksum) {
  Bytes data = testing::RandomBytes(64, 5);
  const uint32_t before = Crc32c(data);
  for (size_t bit = 0; bit < data.size() * 8; ++bit) {
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_NE(Crc32c(data), before) << "bit " << bit;
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
}

}  // namespace
}  // namespace ds

namespace ds {
namespace {

TEST(DecodeHexTest, RoundTripsAndRefusesBadInput) {
  const Bytes raw = {0x00, 0x7f, 0xa5, 0xff};
  std::array<uint8_t, 4> out{};
  ASSERT_TRUE(DecodeHex(ToHex(raw), out));
  EXPECT_TRUE(std::equal(out.begin(), out.end(), raw.begin()));
  EXPECT_TRUE(DecodeHex("007FA5FF", out));     // Either case.
  EXPECT_FALSE(DecodeHex("007fa5f", out));     // Odd length.
  EXPECT_FALSE(DecodeHex("007fa5ff00", out));  // Too long for |out|.
  EXPECT_FALSE(DecodeHex("007fa5fg", out));    // Not a digit.
}

}  // namespace
}  // namespace ds
