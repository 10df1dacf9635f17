// Tests ByteReader/ByteWriter: LE integers, cursor-keeping short reads, varint limits, zig-zag.
#include "common/byte_reader.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "common/byte_writer.h"

namespace ds {
namespace {

TEST(ByteReaderTest, ReadsLittleEndianIntegers) {
  const Bytes data = {0x01, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12, 0xef,
                      0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01};
  ByteReader r(data);
  uint8_t u8;
  uint16_t u16;
  uint32_t u32;
  uint64_t u64;
  ASSERT_TRUE(r.ReadU8(&u8));
  ASSERT_TRUE(r.ReadU16Le(&u16));
  ASSERT_TRUE(r.ReadU32Le(&u32));
  ASSERT_TRUE(r.ReadU64Le(&u64));
  EXPECT_EQ(u8, 0x01);
  EXPECT_EQ(u16, 0x1234);
  EXPECT_EQ(u32, 0x12345678u);
  EXPECT_EQ(u64, 0x0123456789abcdefull);
  EXPECT_TRUE(r.empty());
  EXPECT_EQ(r.position(), data.size());
}

TEST(ByteReaderTest, WriterAndReaderAgree) {
  Bytes buf;
  ByteWriter w(&buf);
  w.WriteU8(0xfe);
  w.WriteU16Le(0xbeef);
  w.WriteU32Le(0xdeadbeef);
  w.WriteU64Le(0xfedcba9876543210ull);
  EXPECT_EQ(w.size(), 15u);
  ByteReader r(buf);
  uint8_t a;
  uint16_t b;
  uint32_t c;
  uint64_t d;
  ASSERT_TRUE(r.ReadU8(&a) && r.ReadU16Le(&b) && r.ReadU32Le(&c) && r.ReadU64Le(&d));
  EXPECT_EQ(a, 0xfe);
  EXPECT_EQ(b, 0xbeef);
  EXPECT_EQ(c, 0xdeadbeefu);
  EXPECT_EQ(d, 0xfedcba9876543210ull);
}

TEST(ByteReaderTest, EmptyInputFailsEveryRead) {
  ByteReader r(ByteView{});
  uint8_t u8;
  uint64_t u64;
  int64_t i64;
  ByteView view;
  EXPECT_TRUE(r.empty());
  EXPECT_FALSE(r.ReadU8(&u8));
  EXPECT_FALSE(r.ReadU64Le(&u64));
  EXPECT_FALSE(r.ReadVarint(&u64));
  EXPECT_FALSE(r.ReadSignedVarint(&i64));
  EXPECT_FALSE(r.ReadView(1, &view));
  EXPECT_TRUE(r.ReadView(0, &view));
  EXPECT_TRUE(view.empty());
  EXPECT_TRUE(r.Skip(0));
  EXPECT_EQ(r.position(), 0u);
}

TEST(ByteReaderTest, ShortFixedReadLeavesCursorAndValue) {
  const Bytes data = {1, 2, 3, 4, 5, 6, 7};
  ByteReader r(data);
  ASSERT_TRUE(r.Skip(1));
  uint64_t u64 = 99;
  EXPECT_FALSE(r.ReadU64Le(&u64));
  EXPECT_EQ(u64, 99u);
  EXPECT_EQ(r.position(), 1u);
  uint32_t u32 = 99;
  ASSERT_TRUE(r.Skip(3));
  EXPECT_FALSE(r.ReadU32Le(&u32));
  EXPECT_EQ(u32, 99u);
  EXPECT_EQ(r.position(), 4u);
  uint16_t u16 = 0;
  EXPECT_TRUE(r.ReadU16Le(&u16));
  EXPECT_EQ(u16, 0x0605);
}

TEST(ByteReaderTest, ShortViewIntoAndSkipLeaveCursor) {
  const Bytes data = {1, 2, 3, 4};
  ByteReader r(data);
  ASSERT_TRUE(r.Skip(1));
  ByteView view;
  uint8_t dst[8] = {};
  EXPECT_FALSE(r.ReadView(4, &view));
  EXPECT_FALSE(r.ReadInto(dst, 4));
  EXPECT_FALSE(r.Skip(4));
  EXPECT_EQ(r.position(), 1u);
  EXPECT_EQ(r.remaining(), 3u);
  ASSERT_TRUE(r.ReadView(2, &view));
  EXPECT_EQ(view.size(), 2u);
  EXPECT_EQ(view[0], 2);
  EXPECT_EQ(view.data(), data.data() + 1) << "views borrow the reader's buffer";
  ASSERT_TRUE(r.ReadInto(dst, 1));
  EXPECT_EQ(dst[0], 4);
  EXPECT_TRUE(r.Rest().empty());
}

TEST(ByteReaderTest, RestIsTheUnreadTail) {
  const Bytes data = {9, 8, 7};
  ByteReader r(data);
  ASSERT_TRUE(r.Skip(1));
  ByteView rest = r.Rest();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0], 8);
  EXPECT_EQ(r.position(), 1u) << "Rest does not consume";
}

TEST(ByteReaderTest, VarintKnownEncodings) {
  struct Case {
    Bytes bytes;
    uint64_t value;
  };
  const std::vector<Case> cases = {
      {{0x00}, 0},
      {{0x01}, 1},
      {{0x7f}, 127},
      {{0x80, 0x01}, 128},
      {{0xac, 0x02}, 300},
      {{0xff, 0xff, 0x03}, 65535},
      {{0xff, 0xff, 0xff, 0xff, 0x0f}, 0xffffffffull},
      {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, UINT64_MAX},
      {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 1ull << 63},
  };
  for (const Case& c : cases) {
    ByteReader r(c.bytes);
    uint64_t v = 0;
    ASSERT_TRUE(r.ReadVarint(&v)) << c.value;
    EXPECT_EQ(v, c.value);
    EXPECT_EQ(r.position(), c.bytes.size());
    Bytes written;
    ByteWriter(&written).WriteVarint(c.value);
    EXPECT_EQ(written, c.bytes) << c.value;
    EXPECT_EQ(VarintSize(c.value), c.bytes.size()) << c.value;
  }
}

TEST(ByteReaderTest, VarintTruncatedLeavesCursor) {
  const Bytes data = {0x05, 0x80, 0x80};  // A complete varint, then one missing its end.
  ByteReader r(data);
  uint64_t v = 0;
  ASSERT_TRUE(r.ReadVarint(&v));
  EXPECT_EQ(v, 5u);
  v = 77;
  EXPECT_FALSE(r.ReadVarint(&v));
  EXPECT_EQ(v, 77u);
  EXPECT_EQ(r.position(), 1u);
}

TEST(ByteReaderTest, VarintTenthByteOverflowingRejected) {
  // Ten bytes whose last one carries bits above 2^63.
  for (uint8_t last : {0x02, 0x03, 0x7f}) {
    Bytes data(9, 0xff);
    data.push_back(last);
    ByteReader r(data);
    uint64_t v = 0;
    EXPECT_FALSE(r.ReadVarint(&v)) << "last byte " << int{last};
    EXPECT_EQ(r.position(), 0u);
  }
}

TEST(ByteReaderTest, VarintLongerThanTenBytesRejected) {
  // 10 continuation bytes: never terminates within the limit, even with bytes to spare.
  Bytes data(10, 0x80);
  data.push_back(0x00);
  ByteReader r(data);
  uint64_t v = 0;
  EXPECT_FALSE(r.ReadVarint(&v));
  EXPECT_EQ(r.position(), 0u);
  // A terminating byte with the continuation bit set in position 10 is also rejected.
  Bytes ten(9, 0x80);
  ten.push_back(0x81);
  ten.push_back(0x00);
  ByteReader r2(ten);
  EXPECT_FALSE(r2.ReadVarint(&v));
  EXPECT_EQ(r2.position(), 0u);
}

TEST(ByteReaderTest, VarintRoundTripsAcrossMagnitudes) {
  Bytes buf;
  ByteWriter w(&buf);
  std::vector<uint64_t> values;
  for (int bits = 0; bits < 64; ++bits) {
    const uint64_t p = 1ull << bits;
    for (uint64_t v : {p - 1, p, p + 1}) values.push_back(v);
  }
  values.push_back(UINT64_MAX);
  size_t expected_size = 0;
  for (uint64_t v : values) {
    w.WriteVarint(v);
    expected_size += VarintSize(v);
  }
  EXPECT_EQ(buf.size(), expected_size);
  ByteReader r(buf);
  for (uint64_t v : values) {
    uint64_t got = 0;
    ASSERT_TRUE(r.ReadVarint(&got)) << v;
    EXPECT_EQ(got, v);
  }
  EXPECT_TRUE(r.empty());
}

TEST(ByteReaderTest, ZigZagKnownEncodings) {
  struct Case {
    int64_t value;
    uint64_t zigzag;
  };
  const Case cases[] = {
      {0, 0},
      {-1, 1},
      {1, 2},
      {-2, 3},
      {2, 4},
      {-64, 127},
      {64, 128},
      {std::numeric_limits<int64_t>::max(), UINT64_MAX - 1},
      {std::numeric_limits<int64_t>::min(), UINT64_MAX},
  };
  for (const Case& c : cases) {
    Bytes signed_buf, unsigned_buf;
    ByteWriter(&signed_buf).WriteSignedVarint(c.value);
    ByteWriter(&unsigned_buf).WriteVarint(c.zigzag);
    EXPECT_EQ(signed_buf, unsigned_buf) << c.value;
    ByteReader r(signed_buf);
    int64_t got = 0;
    ASSERT_TRUE(r.ReadSignedVarint(&got)) << c.value;
    EXPECT_EQ(got, c.value);
    EXPECT_TRUE(r.empty());
  }
}

TEST(ByteReaderTest, SignedVarintFailureLeavesCursor) {
  const Bytes data = {0xff};
  ByteReader r(data);
  int64_t v = 5;
  EXPECT_FALSE(r.ReadSignedVarint(&v));
  EXPECT_EQ(v, 5);
  EXPECT_EQ(r.position(), 0u);
}

TEST(CheckedAddTest, DetectsOverflow) {
  uint64_t out = 0;
  EXPECT_TRUE(CheckedAddU64(1, 2, &out));
  EXPECT_EQ(out, 3u);
  EXPECT_TRUE(CheckedAddU64(UINT64_MAX, 0, &out));
  EXPECT_EQ(out, UINT64_MAX);
  EXPECT_FALSE(CheckedAddU64(UINT64_MAX, 1, &out));
  EXPECT_FALSE(CheckedAddU64(1ull << 63, 1ull << 63, &out));
}

}  // namespace
}  // namespace ds
