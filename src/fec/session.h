// Sans-IO sessions of the UDP carrier: UdpSender (proxy side) and UdpReceiver (agent side).
//
// Neither touches a socket or a clock. The caller feeds received datagrams and the current time
// (microseconds on any monotonic clock), takes the datagrams the session wants sent, and calls
// back at NextTimeout(). The usage contract is in fec.h; the wire protocol and the state machines
// in docs/PROTOCOL.md ("UDP carrier").
//
// Thread-safety: none; each session is driven by one thread (or under one lock).
#ifndef DELTASTREAM_FEC_SESSION_H_
#define DELTASTREAM_FEC_SESSION_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/status.h"
#include "fec/packet.h"
#include "fec/rate_control.h"
#include "fec/reed_solomon.h"

namespace ds::fec {

inline constexpr Micros kNever = std::numeric_limits<Micros>::max();

// One chunk of the object as the chunk map describes it (normally one leaf): where it is and
// what it must hash to. Both ends build the same list for a session (e.g. leaves first..last).
struct ChunkSpec {
  uint64_t offset = 0;
  uint32_t length = 0;
  Sha256Digest sha256{};
};

// Agreed over HTTP(S) when the agent asks for the UDP carrier.
struct SessionParams {
  uint64_t session_id = 0;
  SessionKey key{};
  std::string token;  // 1..kMaxTokenSize bytes; the agent proves itself with it in HELLO.
};

// Opaque peer address (e.g. the bytes of a sockaddr); compared for equality only.
using PeerAddress = std::string;

struct OutDatagram {
  Bytes bytes;
  PeerAddress to;
};

// ---------------------------------------------------------------------------------------------
// Sender (server side).

struct SenderConfig {
  RateConfig rate;
  size_t max_datagram = kMaxDatagramSize;
  Micros idle_timeout_us = 10'000'000;  // No authenticated datagram for this long: failed.
  // Anti-amplification: to an address not yet proven reachable, at most this many times the
  // bytes received from it.
  int amplification_factor = 3;
  // Target K when losses come in bursts or above 12 % (more symbols average them out).
  int bursty_block_symbols = 200;
  // Target K otherwise (two 64 KiB leaves make K = 112).
  int block_symbols = 120;
};

// Reads |out.size()| bytes of the object at |offset| (a proxy: from its cache file).
using ReadFn = std::function<Status(uint64_t offset, std::span<uint8_t> out)>;

struct SenderStats {
  uint64_t datagrams_sent = 0;
  uint64_t bytes_sent = 0;  // All datagram bytes.
  uint64_t source_symbols_sent = 0;
  uint64_t repair_symbols_sent = 0;
  uint64_t source_bytes_sent = 0;  // Symbol payload bytes.
  uint64_t repair_bytes_sent = 0;
  uint64_t need_more_requests = 0;  // Answered.
  uint64_t need_more_symbols = 0;   // Repair symbols sent to answer them.
  uint64_t repeated_esis = 0;       // Repair ids reused because a block ran out of fresh ones.
  uint64_t probes = 0;              // Tail-loss probes.
  uint64_t blocks = 0;
  uint64_t dropped_datagrams = 0;  // Forged, replayed, malformed or unexpected.
};

class UdpSender {
 public:
  enum class State { kAwaitHello, kValidating, kSending, kDone, kFailed };

  // |chunks| are sent in order; each must fit one block (at most 200 symbols of the datagram
  // size: 235 KB at the default; kUnsupported otherwise). |read| is called once per chunk, when
  // its block starts. kInvalidArgument for an empty token or a zero-length chunk.
  static Result<std::unique_ptr<UdpSender>> Create(SessionParams params,
                                                   std::vector<ChunkSpec> chunks, ReadFn read,
                                                   SenderConfig config = {});

  // A datagram arrived from |from|. OK when it was accepted; otherwise why it was dropped
  // (kUnauthenticated: forged / other key / other session / bad token; kProtocol: malformed,
  // replayed, or unexpected here). A dropped datagram never changes the session.
  Status OnDatagram(Micros now, ByteView datagram, const PeerAddress& from);

  // The next datagram to send now, or nullopt when pacing, the inflight cap, the receiver's
  // window or the handshake holds it back. Call until nullopt after every OnDatagram and timer.
  std::optional<OutDatagram> Poll(Micros now);

  // When to call Poll next although nothing arrived (kNever: only on input).
  Micros NextTimeout(Micros now) const;

  State state() const { return state_; }
  bool done() const { return state_ == State::kDone; }
  // Why the session failed (kFailed): kUnavailable (idle timeout), kDigestMismatch (the source
  // bytes do not match the chunk map), an I/O error from |read|, or the agent's CLOSE code.
  const Status& error() const { return error_; }
  const SenderStats& stats() const { return stats_; }
  const RateController& controller() const { return rate_; }

 private:
  struct Block {
    uint64_t id = 0;
    uint32_t chunks = 0;
    int k = 0;
    size_t sym = 0;
    int planned = 0;     // K + R of the first burst.
    int next_esi = 0;    // Next id of the first burst, then the next fresh repair id.
    int burst_left = 0;  // Symbols of the first burst not sent yet.
    Bytes source;        // k * sym bytes (zero-padded).
    std::map<int, Bytes> repair;
    Micros last_need_response = 0;
  };
  UdpSender(SessionParams params, std::vector<ChunkSpec> chunks, ReadFn read, SenderConfig config);
  Status HandleFeedback(Micros now, const Feedback& fb, uint64_t pn);
  void HandleBlockAck(Micros now, const BlockAck& ack);
  Status StartBlock(Micros now);
  OutDatagram DataDatagram(Micros now, Block& b, int esi);
  Bytes Seal(PacketType type, ByteView body);
  void Fail(Status s);
  bool AllAcked() const { return next_chunk_ == chunks_.size() && blocks_.empty(); }
  int ChooseChunks() const;

  SessionParams params_;
  std::vector<ChunkSpec> chunks_;
  ReadFn read_;
  SenderConfig config_;
  ReedSolomon rs_;
  RateController rate_;

  State state_ = State::kAwaitHello;
  Status error_;
  SenderStats stats_;
  uint64_t next_pn_ = 0;
  ReplayWindow replay_;
  Micros last_rx_ = 0;
  bool started_ = false;

  // Path validation.
  Cookie cookie_{};
  PeerAddress peer_;  // Validated (DATA goes here).
  bool have_peer_ = false;
  PeerAddress candidate_;  // Being validated.
  uint64_t candidate_rx_ = 0, candidate_tx_ = 0;
  int challenge_pending_ = 0;  // CHALLENGE copies still to send.
  uint64_t hello_pn_ = 0;

  // Blocks.
  std::map<uint64_t, Block> blocks_;  // Unacknowledged, by id.
  uint64_t next_chunk_ = 0;           // First chunk not in a block yet.
  uint64_t window_end_ = 0;           // Receiver accepts blocks ending at or before this.
  double repair_credit_ = 0;
  std::deque<std::pair<uint64_t, int>> need_queue_;  // (block, symbols) to send first.
  uint64_t last_fb_pn_ = 0;
  bool have_fb_ = false;
  int close_to_send_ = 0;
  uint16_t close_code_ = 0;
  // Tail-loss probe: with blocks unacknowledged and nothing else to send, one fresh repair
  // symbol of the oldest block after ProbeInterval() (doubling until the agent answers).
  Micros last_send_ = 0;
  int probes_ = 0;
  Micros ProbeInterval() const;
};

// ---------------------------------------------------------------------------------------------
// Receiver (agent side).

struct ReceiverConfig {
  uint64_t window_chunks = 256;             // Chunks past the next undelivered one held at most.
  Micros hello_interval_us = 250'000;       // HELLO retransmission (doubles each time).
  Micros handshake_timeout_us = 3'000'000;  // No CHALLENGE by then: UDP blocked, use HTTP.
  Micros stall_timeout_us = 3'000'000;      // No DATA for this long: stalled, use HTTP.
  Micros feedback_min_us = 2'000;           // Feedback every srtt / 4, clamped to these.
  Micros feedback_max_us = 25'000;
};

// Receives verified bytes in order: chunks [first_chunk, first_chunk + chunk_count) of the
// session's list, concatenated. The view lives during the call only. A non-OK status fails the
// session (a CLOSE with that code is sent).
using DeliverFn = std::function<Status(uint64_t first_chunk, uint64_t chunk_count, ByteView bytes)>;

struct ReceiverStats {
  uint64_t datagrams_received = 0;  // Accepted.
  uint64_t bytes_received = 0;
  uint64_t dropped_datagrams = 0;  // Forged, replayed, malformed, out of window.
  uint64_t symbols_received = 0;
  uint64_t useless_symbols = 0;  // Duplicates or for finished blocks.
  uint64_t blocks_decoded = 0;
  uint64_t need_more_sent = 0;
  uint64_t feedback_sent = 0;
  uint64_t bytes_sent = 0;
};

class UdpReceiver {
 public:
  enum class State { kHandshake, kReceiving, kDone, kFailed };

  // |chunks| as the sender has them; |deliver| gets them in order. kInvalidArgument for an empty
  // or long token.
  static Result<std::unique_ptr<UdpReceiver>> Create(SessionParams params,
                                                     std::vector<ChunkSpec> chunks,
                                                     DeliverFn deliver, ReceiverConfig config = {});

  // A datagram arrived (from the server's address; the caller drops others). OK if accepted;
  // otherwise why it was dropped (kUnauthenticated, kProtocol as for the sender). A failure of
  // |deliver| or a block that fails its hash fails the session (state() == kFailed).
  Status OnDatagram(Micros now, ByteView datagram);

  // The next datagram to send to the server now (HELLO, ECHO, FEEDBACK, BLOCK_ACK, CLOSE), or
  // nullopt. Call until nullopt after Start, every OnDatagram and every timer.
  std::optional<Bytes> Poll(Micros now);
  Micros NextTimeout(Micros now) const;

  State state() const { return state_; }
  bool done() const { return state_ == State::kDone; }
  // Chunks [0, next_chunk()) were delivered: where an HTTP fallback resumes.
  uint64_t next_chunk() const { return next_chunk_; }
  // kUnavailable when UDP seems blocked (no CHALLENGE) or the session stalled; kDigestMismatch;
  // the deliver callback's error; the sender's CLOSE code.
  const Status& error() const { return error_; }
  const ReceiverStats& stats() const { return stats_; }

 private:
  struct RxBlock {
    uint32_t chunks = 0;
    uint64_t bytes = 0;
    int k = 0;
    int planned = 0;
    size_t sym = 0;
    std::vector<uint8_t> esis;  // Ids of the symbols held, in storage order.
    Bytes symbols;              // k * sym.
    std::vector<bool> have;     // By ESI.
    uint64_t first_pn = 0, last_pn = 0;
    Micros last_time = 0;
    Micros last_need = 0;
    bool requested = false;
  };
  UdpReceiver(SessionParams params, std::vector<ChunkSpec> chunks, DeliverFn deliver,
              ReceiverConfig config);
  Status HandleData(Micros now, const Data& d, uint64_t pn, size_t datagram_size);
  Status DecodeBlock(uint64_t id, RxBlock& b);
  Status DeliverReady();
  Bytes Seal(PacketType type, ByteView body);
  void Fail(Status s);
  Micros FeedbackInterval() const;
  Micros RttHint() const;
  std::vector<NeedMore> ShortBlocks(Micros now);
  Bytes MakeFeedback(Micros now);
  Bytes MakeBlockAck(Micros now, bool with_need_more);

  SessionParams params_;
  std::vector<ChunkSpec> chunks_;
  std::vector<uint64_t> chunk_prefix_;  // Bytes before chunk i (size n + 1).
  DeliverFn deliver_;
  ReceiverConfig config_;
  ReedSolomon rs_;

  State state_ = State::kHandshake;
  Status error_;
  ReceiverStats stats_;
  uint64_t next_pn_ = 0;
  ReplayWindow replay_;

  // Handshake.
  bool started_ = false;
  Micros start_time_ = 0;
  Micros next_hello_ = 0;
  Micros hello_interval_ = 0;
  std::map<uint64_t, Micros> hello_times_;  // HELLO pn -> sent at (RTT sample).
  bool echo_pending_ = false;
  int hello_copy_ = 0, echo_copy_ = 0;  // Copies of the current HELLO / ECHO already sent.
  Cookie cookie_{};
  Micros handshake_rtt_ = 0;

  // Data.
  std::map<uint64_t, RxBlock> active_;  // Being received, by id.
  std::map<uint64_t, Bytes> ready_;     // Decoded and verified, waiting for order.
  std::map<uint64_t, uint32_t> ready_chunks_;
  uint64_t next_chunk_ = 0;
  Micros last_data_ = 0;
  uint32_t rtt_hint_ = 0;
  uint64_t newest_block_ = 0;           // Highest block id seen,
  uint64_t newest_block_first_pn_ = 0;  // and the first packet number seen for it.
  bool any_block_ = false;

  // Feedback state.
  bool any_packet_ = false;
  uint64_t largest_pn_ = 0;
  Micros largest_time_ = 0;
  uint64_t received_packets_ = 0, received_bytes_ = 0;
  uint64_t fb_largest_ = 0, fb_received_ = 0;  // At the last feedback.
  bool fb_any_ = false;
  double loss_ = 0, burst_ = 1;
  uint64_t rate_bytes_ = 0;  // Since last feedback.
  double rate_ = 0;
  std::vector<DelaySample> samples_;  // Since last feedback.
  Micros last_fb_ = 0;
  bool ack_pending_ = false;
  Micros last_ack_ = 0;
  int close_to_send_ = 0;
  uint16_t close_code_ = 0;
};

}  // namespace ds::fec

#endif  // DELTASTREAM_FEC_SESSION_H_
