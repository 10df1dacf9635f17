// UDP carrier packets (docs/PROTOCOL.md, "UDP carrier"): one fixed header, a type-specific body
// and a 16-byte authentication tag (HMAC-SHA-512/256 with the per-session key, truncated).
//
//   u8 magic 0xD5 | u8 version 1 | u8 type | u8 flags (0) | u64 session id | u64 packet number
//   | body ... | 16-byte tag over everything before it
//
// OpenDatagram checks the header and the tag (constant time) before a body parser sees a byte;
// each body type has one Parse* behind ByteReader and one Serialize*. Errors: kProtocol (59) for
// a malformed, truncated or unknown packet; kUnauthenticated (51) for a wrong session id or a
// tag that does not verify (forged, or another key).
//
// Thread-safety: free functions; ReplayWindow is a value used by one thread.
#ifndef DELTASTREAM_FEC_PACKET_H_
#define DELTASTREAM_FEC_PACKET_H_

#include <array>
#include <bitset>
#include <cstdint>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::fec {

inline constexpr uint8_t kMagic = 0xD5;
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderSize = 20;
inline constexpr size_t kTagSize = 16;
inline constexpr size_t kKeySize = 32;
inline constexpr size_t kCookieSize = 16;
inline constexpr size_t kMaxTokenSize = 64;
// Largest datagram either side sends (fits an IPv6 minimum MTU of 1280 with IP + UDP headers).
inline constexpr size_t kMaxDatagramSize = 1232;
// A HELLO is padded to this size so that the server's 3x anti-amplification budget covers its
// CHALLENGE (and a retransmission) comfortably.
inline constexpr size_t kHelloPaddedSize = 1200;
// HELLO, CHALLENGE and ECHO go out this many times back to back: on a lossy path a lost
// handshake packet costs a retransmission interval (several round trips), a copy costs bytes.
inline constexpr int kHandshakeCopies = 2;
// Bounds on the lists carried by FEEDBACK and BLOCK_ACK.
inline constexpr size_t kMaxFeedbackBlocks = 64;
inline constexpr size_t kMaxDelaySamples = 32;
inline constexpr size_t kMaxAckedBlocks = 128;
inline constexpr size_t kMaxNeedMore = 64;

using SessionKey = std::array<uint8_t, kKeySize>;
using Cookie = std::array<uint8_t, kCookieSize>;

enum class PacketType : uint8_t {
  kHello = 1,      // agent -> server
  kChallenge = 2,  // server -> agent
  kEcho = 3,       // agent -> server
  kData = 4,       // server -> agent
  kFeedback = 5,   // agent -> server
  kBlockAck = 6,   // agent -> server
  kClose = 7,      // either way
};

struct Header {
  PacketType type = PacketType::kHello;
  uint64_t session_id = 0;
  uint64_t packet_number = 0;
};

struct Hello {
  std::string token;     // 1..kMaxTokenSize bytes, from the HTTP answer.
  uint16_t padding = 0;  // Zero bytes that follow (anti-amplification padding).
};

struct Challenge {
  Cookie cookie{};
  uint64_t hello_pn = 0;  // Packet number of the HELLO answered (the agent's first RTT sample).
};

struct Echo {
  Cookie cookie{};
  uint64_t window_end = 0;  // First chunk position the receiver will not accept yet.
};

struct Data {
  uint64_t block = 0;        // Block id = position of its first chunk in the session's list.
  uint8_t chunks = 0;        // Chunks in the block (1..255).
  uint8_t k = 0;             // Source symbols (1..254).
  uint8_t esi = 0;           // This symbol's id (0..254).
  uint8_t planned = 0;       // K + R of the block's first burst (k..255).
  uint32_t rtt_hint_us = 0;  // The sender's smoothed RTT (the receiver's feedback clock).
  ByteView symbol;           // Into the datagram; 1..kMaxDatagramSize bytes.
};

struct BlockCount {
  uint64_t block = 0;
  uint8_t received = 0;  // Distinct symbols held.
};
struct DelaySample {
  uint64_t packet_number = 0;
  uint64_t receive_time_us = 0;  // Receiver's clock.
};
struct Feedback {
  uint64_t largest_pn = 0;           // Highest packet number received from the sender.
  uint64_t ack_delay_us = 0;         // Time from receiving largest_pn to sending this.
  uint64_t received_packets = 0;     // Cumulative count of sender packets received.
  uint64_t received_bytes = 0;       // Cumulative datagram bytes received.
  uint32_t loss_ppm = 0;             // Receiver's recent loss estimate, parts per million.
  uint64_t delivery_rate = 0;        // Receiver's recent receive rate, bytes per second.
  uint32_t burst_x16 = 0;            // Mean loss run length x 16 (16 = isolated losses).
  uint64_t window_end = 0;           // First chunk position not accepted yet (flow control).
  std::vector<BlockCount> blocks;    // Active blocks (<= kMaxFeedbackBlocks).
  std::vector<DelaySample> samples;  // <= kMaxDelaySamples.
};

struct NeedMore {
  uint64_t block = 0;
  uint8_t needed = 0;  // Symbols still missing to reach K (1..254).
};
struct BlockAck {
  uint64_t done_below = 0;          // Every block starting before this position is done.
  std::vector<uint64_t> done;       // Finished blocks at or past done_below.
  std::vector<NeedMore> need_more;  // Blocks short of symbols.
};

struct Close {
  uint16_t code = 0;  // ErrorCode; 0 = transfer complete.
};

// Header of |datagram| without verifying anything (a proxy routes by session id with it).
// kProtocol when it is too short or has another magic/version/type.
Result<Header> PeekHeader(ByteView datagram);

struct Opened {
  Header header;
  ByteView body;  // Into the datagram.
};
// Checks the header, that the session id is |session_id| and the tag under |key|. kProtocol,
// kUnauthenticated.
Result<Opened> OpenDatagram(ByteView datagram, uint64_t session_id, const SessionKey& key);
// Header + |body| + tag.
Bytes SealDatagram(const Header& header, ByteView body, const SessionKey& key);

// One parser per body (kProtocol on anything malformed, including trailing bytes) and the
// matching serializer.
Result<Hello> ParseHello(ByteView body);
Result<Challenge> ParseChallenge(ByteView body);
Result<Echo> ParseEcho(ByteView body);
Result<Data> ParseData(ByteView body);
Result<Feedback> ParseFeedback(ByteView body);
Result<BlockAck> ParseBlockAck(ByteView body);
Result<Close> ParseClose(ByteView body);
Bytes SerializeHello(const Hello& p);
Bytes SerializeChallenge(const Challenge& p);
Bytes SerializeEcho(const Echo& p);
Bytes SerializeData(const Data& p);
Bytes SerializeFeedback(const Feedback& p);
Bytes SerializeBlockAck(const BlockAck& p);
Bytes SerializeClose(const Close& p);
// Bytes a DATA datagram adds around its symbol at most (header, fields, tag).
inline constexpr size_t kDataOverhead = kHeaderSize + 10 + 4 + 5 + 2 + kTagSize;

// Sliding replay window over authenticated packet numbers: accepts each number once, and nothing
// older than kSize below the highest seen. Update only after the tag verified, or a forger could
// move the window.
class ReplayWindow {
 public:
  static constexpr uint64_t kSize = 1024;
  // True if |pn| is new (and records it).
  bool Accept(uint64_t pn);
  // True if |pn| would be accepted (no change).
  bool WouldAccept(uint64_t pn) const;
  uint64_t highest() const { return highest_; }
  bool any() const { return any_; }

 private:
  bool any_ = false;
  uint64_t highest_ = 0;
  std::bitset<kSize> seen_;  // bit (pn % kSize) for pn in (highest - kSize, highest].
};

}  // namespace ds::fec

#endif  // DELTASTREAM_FEC_PACKET_H_
