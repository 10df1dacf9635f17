// UDP carrier packets: round trips of every type, truncation, trailing bytes, tampering with
// every byte, other keys and sessions, and the replay window.
#include "fec/packet.h"

#include <gtest/gtest.h>

namespace ds::fec {
namespace {

SessionKey Key(uint8_t seed) {
  SessionKey k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(seed + i * 13);
  return k;
}

constexpr uint64_t kSession = 0xABCDEF0123456789ull;

struct Sample {
  PacketType type;
  Bytes body;
};

std::vector<Sample> Samples() {
  static const Bytes symbol(1100, 0x5A);
  Hello hello{"token-123", 40};
  Challenge ch;
  ch.cookie.fill(7);
  ch.hello_pn = 300;
  Echo echo;
  echo.cookie.fill(9);
  echo.window_end = 1234;
  Data data;
  data.block = 70000;
  data.chunks = 2;
  data.k = 112;
  data.esi = 130;
  data.planned = 127;
  data.rtt_hint_us = 40500;
  data.symbol = symbol;
  Feedback fb;
  fb.largest_pn = 1u << 20;
  fb.ack_delay_us = 1500;
  fb.received_packets = 99999;
  fb.received_bytes = 123456789;
  fb.loss_ppm = 100000;
  fb.delivery_rate = 2'500'000;
  fb.burst_x16 = 40;
  fb.window_end = 512;
  for (int i = 0; i < 64; ++i) fb.blocks.push_back({static_cast<uint64_t>(i * 2), uint8_t(i)});
  for (int i = 0; i < 32; ++i) fb.samples.push_back({uint64_t(1000 + i), uint64_t(5'000'000 + i)});
  BlockAck ack;
  ack.done_below = 88;
  for (int i = 0; i < 128; ++i) ack.done.push_back(4'000'000'000ull + i);
  for (int i = 0; i < 64; ++i) ack.need_more.push_back({uint64_t(90 + i), uint8_t(1 + i)});
  return {{PacketType::kHello, SerializeHello(hello)},
          {PacketType::kChallenge, SerializeChallenge(ch)},
          {PacketType::kEcho, SerializeEcho(echo)},
          {PacketType::kData, SerializeData(data)},
          {PacketType::kFeedback, SerializeFeedback(fb)},
          {PacketType::kBlockAck, SerializeBlockAck(ack)},
          {PacketType::kClose, SerializeClose(Close{59})}};
}

// Parses |body| as |type| and serializes it back.
Result<Bytes> Reparse(PacketType type, ByteView body) {
  switch (type) {
    case PacketType::kHello: {
      DS_ASSIGN_OR_RETURN(Hello p, ParseHello(body));
      return SerializeHello(p);
    }
    case PacketType::kChallenge: {
      DS_ASSIGN_OR_RETURN(Challenge p, ParseChallenge(body));
      return SerializeChallenge(p);
    }
    case PacketType::kEcho: {
      DS_ASSIGN_OR_RETURN(Echo p, ParseEcho(body));
      return SerializeEcho(p);
    }
    case PacketType::kData: {
      DS_ASSIGN_OR_RETURN(Data p, ParseData(body));
      return SerializeData(p);
    }
    case PacketType::kFeedback: {
      DS_ASSIGN_OR_RETURN(Feedback p, ParseFeedback(body));
      return SerializeFeedback(p);
    }
    case PacketType::kBlockAck: {
      DS_ASSIGN_OR_RETURN(BlockAck p, ParseBlockAck(body));
      return SerializeBlockAck(p);
    }
    case PacketType::kClose: {
      DS_ASSIGN_OR_RETURN(Close p, ParseClose(body));
      return SerializeClose(p);
    }
  }
  return Error(ErrorCode::kInternal, "type");
}

TEST(FecPacketTest, EveryTypeRoundTripsThroughSealAndOpen) {
  const SessionKey key = Key(1);
  uint64_t pn = 5;
  for (const Sample& s : Samples()) {
    const Bytes dg = SealDatagram(Header{s.type, kSession, pn}, s.body, key);
    EXPECT_LE(dg.size(), kMaxDatagramSize) << static_cast<int>(s.type);
    Result<Opened> o = OpenDatagram(dg, kSession, key);
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    EXPECT_EQ(o->header.type, s.type);
    EXPECT_EQ(o->header.packet_number, pn);
    Result<Bytes> again = Reparse(s.type, o->body);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(*again, s.body);
    Result<Header> peek = PeekHeader(dg);
    ASSERT_TRUE(peek.ok());
    EXPECT_EQ(peek->session_id, kSession);
    ++pn;
  }
}

TEST(FecPacketTest, TruncatedAndTrailingBodiesAreRejected) {
  for (const Sample& s : Samples()) {
    // DATA's symbol is "the rest": only cutting into the fields fails.
    const size_t min_ok = s.type == PacketType::kData ? 10 : s.body.size();
    for (size_t n = 0; n < min_ok; ++n) {
      Result<Bytes> r = Reparse(s.type, ByteView(s.body).first(n));
      if (s.type == PacketType::kData && r.ok()) continue;
      EXPECT_FALSE(r.ok()) << static_cast<int>(s.type) << " len " << n;
      if (!r.ok()) {
        EXPECT_EQ(r.status().code(), ErrorCode::kProtocol);
      }
    }
    if (s.type == PacketType::kData) continue;
    Bytes longer = s.body;
    longer.push_back(0);
    EXPECT_EQ(Reparse(s.type, longer).status().code(), ErrorCode::kProtocol);
  }
}

TEST(FecPacketTest, OutOfRangeFieldsAreRejected) {
  Bytes hello = SerializeHello(Hello{"x", 3});
  hello.back() = 1;  // Padding must be zero.
  EXPECT_EQ(ParseHello(hello).status().code(), ErrorCode::kProtocol);
  EXPECT_FALSE(ParseHello(SerializeHello(Hello{std::string(65, 'a'), 0})).ok());
  EXPECT_FALSE(ParseHello(SerializeHello(Hello{"", 0})).ok());
  Data d;
  static const Bytes sym(10, 1);
  d.symbol = sym;
  d.chunks = 1;
  d.k = 5;
  d.planned = 4;  // Fewer than k.
  EXPECT_FALSE(ParseData(SerializeData(d)).ok());
  d.planned = 5;
  d.esi = 255;
  EXPECT_FALSE(ParseData(SerializeData(d)).ok());
  d.esi = 0;
  d.chunks = 0;
  EXPECT_FALSE(ParseData(SerializeData(d)).ok());
  Feedback fb;
  fb.blocks.resize(kMaxFeedbackBlocks + 1);
  EXPECT_FALSE(ParseFeedback(SerializeFeedback(fb)).ok());
  fb.blocks.clear();
  fb.loss_ppm = 1000001;
  EXPECT_FALSE(ParseFeedback(SerializeFeedback(fb)).ok());
  BlockAck ack;
  ack.need_more.push_back({1, 0});  // Needs at least one.
  EXPECT_FALSE(ParseBlockAck(SerializeBlockAck(ack)).ok());
}

TEST(FecPacketTest, EveryTamperedByteIsRejected) {
  const SessionKey key = Key(2);
  for (const Sample& s : Samples()) {
    const Bytes dg = SealDatagram(Header{s.type, kSession, 77}, s.body, key);
    for (size_t i = 0; i < dg.size(); ++i) {
      Bytes bad = dg;
      bad[i] ^= 0x01;
      Result<Opened> o = OpenDatagram(bad, kSession, key);
      ASSERT_FALSE(o.ok()) << "byte " << i;
      // Header bytes may fail the format checks first; everything else fails the tag.
      if (i >= 4) {
        EXPECT_EQ(o.status().code(), ErrorCode::kUnauthenticated) << "byte " << i;
      }
    }
  }
}

TEST(FecPacketTest, OtherKeyOrSessionIsRejected) {
  const Bytes body = SerializeClose(Close{0});
  const Bytes dg = SealDatagram(Header{PacketType::kClose, kSession, 1}, body, Key(3));
  EXPECT_EQ(OpenDatagram(dg, kSession, Key(4)).status().code(), ErrorCode::kUnauthenticated);
  EXPECT_EQ(OpenDatagram(dg, kSession + 1, Key(3)).status().code(), ErrorCode::kUnauthenticated);
  // The same key under another session id: the id is inside the tag too.
  const Bytes other = SealDatagram(Header{PacketType::kClose, kSession + 1, 1}, body, Key(3));
  Bytes spliced = other;
  for (int i = 0; i < 8; ++i) spliced[4 + i] = dg[4 + i];
  EXPECT_EQ(OpenDatagram(spliced, kSession, Key(3)).status().code(), ErrorCode::kUnauthenticated);
  // Truncated to nothing but a tag, or over the size limit.
  EXPECT_EQ(OpenDatagram(ByteView(dg).first(kHeaderSize + kTagSize - 1), kSession, Key(3))
                .status()
                .code(),
            ErrorCode::kProtocol);
  Bytes huge(kMaxDatagramSize + 1, 0);
  std::copy(dg.begin(), dg.begin() + kHeaderSize, huge.begin());
  EXPECT_EQ(PeekHeader(huge).status().code(), ErrorCode::kProtocol);
  Bytes wrong_magic = dg;
  wrong_magic[0] = 0;
  EXPECT_EQ(PeekHeader(wrong_magic).status().code(), ErrorCode::kProtocol);
}

TEST(ReplayWindowTest, AcceptsEachNumberOnceWithinTheWindow) {
  ReplayWindow w;
  EXPECT_TRUE(w.Accept(10));
  EXPECT_FALSE(w.Accept(10));
  EXPECT_TRUE(w.Accept(5));  // Reordered, inside the window.
  EXPECT_FALSE(w.Accept(5));
  EXPECT_TRUE(w.Accept(2000));
  EXPECT_FALSE(w.Accept(10));  // Now older than the window.
  EXPECT_TRUE(w.Accept(2000 - ReplayWindow::kSize + 1));
  EXPECT_FALSE(w.Accept(2000 - ReplayWindow::kSize));
  EXPECT_TRUE(w.Accept(1999));
  EXPECT_FALSE(w.WouldAccept(1999));
  EXPECT_TRUE(w.WouldAccept(2001));
  // A big jump clears the history.
  EXPECT_TRUE(w.Accept(1'000'000));
  EXPECT_TRUE(w.Accept(999'999));
  EXPECT_FALSE(w.Accept(2000));
}

}  // namespace
}  // namespace ds::fec
