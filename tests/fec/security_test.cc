// UDP carrier sessions under attack: forged, replayed and misdirected datagrams are dropped,
// never decoded; the server never amplifies toward an unproven address; a corrupt source or a
// failing applier ends both sides cleanly.
#include <gtest/gtest.h>

#include <map>

#include "tests/fec/lossy_channel.h"

namespace ds::fec {
namespace {

using testing::Chunks;
using testing::RandomBytes;
using testing::RunTransfer;
using testing::TestParams;
using testing::TransferOptions;
using testing::TransferResult;

// A sender and a receiver wired back to back (no loss), stepping in 1 ms ticks.
struct Pair {
  explicit Pair(const Bytes& obj) : object(obj) {
    const auto chunks = Chunks(object, 64 << 10);
    sender = UdpSender::Create(TestParams(), chunks, [this](uint64_t off, std::span<uint8_t> out) {
               std::copy_n(object.begin() + off, out.size(), out.begin());
               return Status::Ok();
             }).value();
    receiver = UdpReceiver::Create(TestParams(), chunks, [this](uint64_t, uint64_t, ByteView b) {
                 delivered.insert(delivered.end(), b.begin(), b.end());
                 return Status::Ok();
               }).value();
  }
  // One exchange at |now|; returns the datagrams each way (and delivers them).
  void Step(Micros now) {
    while (auto d = receiver->Poll(now)) {
      to_server.push_back(*d);
      (void)sender->OnDatagram(now, *d, agent_address);
    }
    while (auto d = sender->Poll(now)) {
      to_agent.push_back(d->bytes);
      destinations[d->to] += 1;
      if (PeekHeader(d->bytes)->type == PacketType::kData) data_to[d->to] += 1;
      (void)receiver->OnDatagram(now, d->bytes);
    }
  }
  PeerAddress agent_address = "agent";
  std::map<PeerAddress, int> destinations, data_to;
  Bytes object, delivered;
  std::unique_ptr<UdpSender> sender;
  std::unique_ptr<UdpReceiver> receiver;
  std::vector<Bytes> to_server, to_agent;
};

const Bytes* FirstOfType(const std::vector<Bytes>& v, PacketType t) {
  for (const Bytes& d : v) {
    if (PeekHeader(d).ok() && PeekHeader(d)->type == t) return &d;
  }
  return nullptr;
}

TEST(FecSecurityTest, ReceiverDropsForgedAndReplayedData) {
  Pair p(RandomBytes(1 << 20, 1));
  for (Micros t = 0; t < 20'000 && !FirstOfType(p.to_agent, PacketType::kData); t += 1000) {
    p.Step(t);
  }
  const Bytes* data = FirstOfType(p.to_agent, PacketType::kData);
  ASSERT_NE(data, nullptr);
  const ReceiverStats before = p.receiver->stats();
  // Replay: accepted once already.
  EXPECT_EQ(p.receiver->OnDatagram(30'000, *data).code(), ErrorCode::kProtocol);
  // Tampered tag, payload, packet number.
  for (size_t at : {data->size() - 1, data->size() / 2, size_t{12}}) {
    Bytes bad = *data;
    bad[at] ^= 0x80;
    EXPECT_EQ(p.receiver->OnDatagram(30'000, bad).code(), ErrorCode::kUnauthenticated) << at;
  }
  // Well-formed DATA with a fresh packet number under another key, or for another session.
  Result<Opened> o = OpenDatagram(*data, TestParams().session_id, TestParams().key);
  ASSERT_TRUE(o.ok());
  SessionKey other_key = TestParams().key;
  other_key[0] ^= 1;
  const Bytes body(o->body.begin(), o->body.end());
  EXPECT_EQ(p.receiver
                ->OnDatagram(30'000, SealDatagram(Header{PacketType::kData, TestParams().session_id,
                                                         900'000},
                                                  body, other_key))
                .code(),
            ErrorCode::kUnauthenticated);
  EXPECT_EQ(p.receiver
                ->OnDatagram(30'000, SealDatagram(Header{PacketType::kData,
                                                         TestParams().session_id + 1, 900'001},
                                                  body, TestParams().key))
                .code(),
            ErrorCode::kUnauthenticated);
  // Nothing of it counted as a symbol.
  EXPECT_EQ(p.receiver->stats().symbols_received, before.symbols_received);
  EXPECT_EQ(p.receiver->stats().dropped_datagrams, before.dropped_datagrams + 6);
  // An agent-to-server type sent to the agent.
  EXPECT_EQ(p.receiver
                ->OnDatagram(30'000, SealDatagram(Header{PacketType::kFeedback,
                                                         TestParams().session_id, 900'002},
                                                  SerializeFeedback(Feedback{}), TestParams().key))
                .code(),
            ErrorCode::kProtocol);
  // The transfer still completes.
  for (Micros t = 31'000; t < 10'000'000 && !p.receiver->done(); t += 1000) p.Step(t);
  EXPECT_TRUE(p.receiver->done());
  EXPECT_TRUE(p.delivered == p.object);
}

TEST(FecSecurityTest, SenderDropsForgedHelloAndReplayedFeedback) {
  Pair p(RandomBytes(512 << 10, 2));
  for (Micros t = 0; t < 200'000; t += 1000) p.Step(t);
  const Bytes* fb = FirstOfType(p.to_server, PacketType::kFeedback);
  const Bytes* echo = FirstOfType(p.to_server, PacketType::kEcho);
  ASSERT_NE(fb, nullptr);
  ASSERT_NE(echo, nullptr);
  EXPECT_EQ(p.sender->OnDatagram(300'000, *fb, "agent").code(), ErrorCode::kProtocol);
  EXPECT_EQ(p.sender->OnDatagram(300'000, *echo, "agent").code(), ErrorCode::kProtocol);
  // A HELLO with the right key but a wrong token, and one under a wrong key.
  Hello h{"wrong-token", 0};
  EXPECT_EQ(
      p.sender
          ->OnDatagram(300'000,
                       SealDatagram(Header{PacketType::kHello, TestParams().session_id, 800'000},
                                    SerializeHello(h), TestParams().key),
                       "agent")
          .code(),
      ErrorCode::kUnauthenticated);
  SessionKey other = TestParams().key;
  other[31] ^= 4;
  h.token = TestParams().token;
  EXPECT_EQ(
      p.sender
          ->OnDatagram(300'000,
                       SealDatagram(Header{PacketType::kHello, TestParams().session_id, 800'001},
                                    SerializeHello(h), other),
                       "attacker")
          .code(),
      ErrorCode::kUnauthenticated);
  // A forged ECHO (wrong cookie) from another address does not move the session there.
  Echo e;
  e.cookie.fill(0x42);
  EXPECT_EQ(
      p.sender
          ->OnDatagram(300'000,
                       SealDatagram(Header{PacketType::kEcho, TestParams().session_id, 800'002},
                                    SerializeEcho(e), TestParams().key),
                       "attacker")
          .code(),
      ErrorCode::kUnauthenticated);
  for (Micros t = 301'000; t < 10'000'000 && !p.receiver->done(); t += 1000) {
    p.Step(t);
  }
  EXPECT_TRUE(p.delivered == p.object);
}

TEST(FecSecurityTest, TransferCompletesUnderInjectedForgeriesAndReplays) {
  TransferOptions o;
  o.forward.rate_bps = 20'000'000;
  o.forward.queue_bytes = 125'000;
  o.forward.delay_us = 10'000;
  o.forward.loss = 0.05;
  o.reverse.delay_us = 10'000;
  std::vector<Bytes> seen_fwd, seen_rev;
  uint64_t injected_fwd = 0;
  o.tap = [&](Micros, const Bytes& d, bool to_agent, std::vector<Bytes>* extra) {
    std::vector<Bytes>& seen = to_agent ? seen_fwd : seen_rev;
    seen.push_back(d);
    if (seen.size() % 7 == 0) {
      Bytes forged = d;
      forged[forged.size() / 2] ^= 0xFF;  // Body or tag byte: fails the tag.
      extra->push_back(std::move(forged));
      extra->push_back(seen[seen.size() / 2]);  // A replay of an older datagram.
      if (to_agent) injected_fwd += 2;
    }
  };
  const Bytes object = RandomBytes(2 << 20, 3);
  const TransferResult r = RunTransfer(object, o);
  ASSERT_TRUE(r.receiver_done) << r.receiver_error.ToString();
  EXPECT_TRUE(r.delivered == object);
  // Every injected datagram that got through the lossy channel was dropped (the channel may
  // have lost some; none was accepted: accepted = what the sender sent and arrived).
  EXPECT_GT(r.receiver.dropped_datagrams, injected_fwd / 2);
  EXPECT_LE(r.receiver.datagrams_received, r.forward_datagrams);
  EXPECT_GT(r.sender.dropped_datagrams, 0u);
}

TEST(FecSecurityTest, AgentAddressChangeIsRevalidatedThenFollowed) {
  Pair p(RandomBytes(8 << 20, 9));
  Micros t = 0;
  for (; t < 10'000 || p.data_to["agent"] < 50; t += 1000) p.Step(t);
  ASSERT_FALSE(p.receiver->done());
  // NAT rebinding: the agent's datagrams now come from another address.
  p.agent_address = "agent-rebound";
  for (; t < 10'000'000 && !p.receiver->done(); t += 1000) p.Step(t);
  EXPECT_TRUE(p.receiver->done());
  EXPECT_TRUE(p.delivered == p.object);
  EXPECT_GT(p.data_to["agent-rebound"], 0);
}

TEST(FecSecurityTest, NoAmplificationTowardUnprovenAddress) {
  const Bytes object = RandomBytes(1 << 20, 4);
  auto sender = UdpSender::Create(TestParams(), Chunks(object, 64 << 10),
                                  [&](uint64_t off, std::span<uint8_t> out) {
                                    std::copy_n(object.begin() + off, out.size(), out.begin());
                                    return Status::Ok();
                                  })
                    .value();
  // A key holder spoofs the victim's address: small (unpadded) and padded HELLOs, no ECHO.
  std::map<PeerAddress, uint64_t> in, out;
  uint64_t pn = 0;
  for (int i = 0; i < 50; ++i) {
    Hello h{TestParams().token, static_cast<uint16_t>(i % 2 ? 0 : 1100)};
    const Bytes dg = SealDatagram(Header{PacketType::kHello, TestParams().session_id, pn++},
                                  SerializeHello(h), TestParams().key);
    in["victim"] += dg.size();
    ASSERT_TRUE(sender->OnDatagram(i * 1000, dg, "victim").ok());
    const Micros start = static_cast<Micros>(i) * 1000;
    for (Micros t = start; t < start + 1000; t += 100) {
      while (auto d = sender->Poll(t)) {
        out[d->to] += d->bytes.size();
        EXPECT_EQ(PeekHeader(d->bytes)->type, PacketType::kChallenge);
      }
    }
    EXPECT_LE(out["victim"], 3 * in["victim"]) << "after HELLO " << i;
  }
  EXPECT_GT(out["victim"], 0u);
  EXPECT_EQ(sender->state(), UdpSender::State::kValidating);
  EXPECT_EQ(sender->stats().source_symbols_sent, 0u);
}

TEST(FecSecurityTest, BeforeTheEchoTheSenderSendsAtMostThreeTimesItsInput) {
  // The agent's ECHOs never arrive: the sender must stay within 3x of what reached it.
  TransferOptions o;
  o.forward.delay_us = 5'000;
  o.reverse.delay_us = 5'000;
  uint64_t to_server = 0, to_agent = 0;
  o.receiver.stall_timeout_us = 2'000'000;
  // The reverse path delivers HELLOs only.
  o.tap = [&](Micros, const Bytes& d, bool forward, std::vector<Bytes>*) {
    if (!forward && PeekHeader(d)->type == PacketType::kHello) to_server += d.size();
    if (forward) to_agent += d.size();
  };
  o.drop_reverse = [](const Bytes& d) { return PeekHeader(d)->type != PacketType::kHello; };
  const Bytes object = RandomBytes(256 << 10, 5);
  const TransferResult r = RunTransfer(object, o);
  EXPECT_FALSE(r.receiver_done);
  EXPECT_GT(to_server, 0u);
  EXPECT_GT(to_agent, 0u);  // CHALLENGEs
  EXPECT_LE(to_agent, 3 * to_server);
  EXPECT_EQ(r.sender.source_symbols_sent + r.sender.repair_symbols_sent, 0u);
}

TEST(FecSecurityTest, CorruptSourceFailsBothSidesWithDigestMismatch) {
  TransferOptions o;
  o.forward.delay_us = 5'000;
  o.reverse.delay_us = 5'000;
  o.corrupt_read = [](uint64_t off, std::span<uint8_t> out) {
    if (off == 3 * (64 << 10)) out[100] ^= 1;
  };
  const Bytes object = RandomBytes(1 << 20, 6);
  const TransferResult r = RunTransfer(object, o);
  EXPECT_EQ(r.sender_error.code(), ErrorCode::kDigestMismatch);
  EXPECT_EQ(r.receiver_state, UdpReceiver::State::kFailed);
  EXPECT_EQ(r.receiver_error.code(), ErrorCode::kDigestMismatch);
  // Only verified chunks before the bad one were delivered.
  EXPECT_LE(r.next_chunk, 3u);
  EXPECT_TRUE(std::equal(r.delivered.begin(), r.delivered.end(), object.begin()));
}

TEST(FecSecurityTest, FailingApplierClosesTheSession) {
  TransferOptions o;
  o.forward.delay_us = 5'000;
  o.reverse.delay_us = 5'000;
  o.deliver_status = [](uint64_t first) {
    return first >= 4 ? Error(ErrorCode::kNoSpace, "disk full") : Status::Ok();
  };
  const Bytes object = RandomBytes(2 << 20, 7);
  const TransferResult r = RunTransfer(object, o);
  EXPECT_EQ(r.receiver_error.code(), ErrorCode::kNoSpace);
  EXPECT_EQ(r.sender_error.code(), ErrorCode::kNoSpace);
  EXPECT_FALSE(r.sender_done);
}

}  // namespace
}  // namespace ds::fec
