// A deterministic lossy channel for the UDP carrier's tests (simulated time, seeded RNG): random
// or bursty (Gilbert-Elliott) loss, a token-bucket-like bottleneck (rate + byte-limited FIFO
// queue, tail drop, like tc tbf) and a one-way propagation delay. Plus a driver that runs a
// UdpSender and a UdpReceiver against each other through two such channels.
#ifndef DELTASTREAM_TESTS_FEC_LOSSY_CHANNEL_H_
#define DELTASTREAM_TESTS_FEC_LOSSY_CHANNEL_H_

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "fec/fec.h"

namespace ds::fec::testing {

struct ChannelConfig {
  double loss = 0;                 // Independent loss probability (good state).
  double burst_enter = 0;          // Gilbert-Elliott: P(good -> bad) per packet.
  double burst_exit = 1;           // P(bad -> good) per packet.
  double burst_loss = 1;           // Loss probability in the bad state.
  bool loss_before_queue = false;  // Where the loss sits relative to the bottleneck.
  uint64_t rate_bps = 0;           // Bottleneck bits/s; 0 = no bottleneck.
  uint64_t queue_bytes = 0;        // Bottleneck FIFO limit (tail drop).
  Micros delay_us = 0;             // One-way propagation delay.
  uint64_t seed = 1;
};

class LossyChannel {
 public:
  explicit LossyChannel(const ChannelConfig& c) : c_(c), rng_(c.seed) {}

  void Send(Micros now, Bytes d) {
    ++sent_;
    if (c_.loss_before_queue && Lose()) return;
    Micros depart = now;
    if (c_.rate_bps) {
      const Micros start = std::max(now, link_free_);
      const uint64_t backlog = (start - now) * c_.rate_bps / 8 / 1'000'000;
      if (c_.queue_bytes && backlog + d.size() > c_.queue_bytes) {
        ++queue_drops_;
        return;
      }
      link_free_ = start + d.size() * 8 * 1'000'000 / c_.rate_bps;
      depart = link_free_;
      max_backlog_ = std::max(max_backlog_, backlog);
    }
    if (!c_.loss_before_queue && Lose()) return;
    in_flight_.emplace_back(depart + c_.delay_us, std::move(d));
  }
  std::optional<Micros> NextArrival() const {
    if (in_flight_.empty()) return std::nullopt;
    return in_flight_.front().first;
  }
  std::optional<Bytes> Pop(Micros now) {
    if (in_flight_.empty() || in_flight_.front().first > now) return std::nullopt;
    Bytes d = std::move(in_flight_.front().second);
    in_flight_.pop_front();
    return d;
  }
  uint64_t sent() const { return sent_; }
  uint64_t lost() const { return lost_; }
  uint64_t queue_drops() const { return queue_drops_; }
  void set_config(const ChannelConfig& c) { c_ = c; }

 private:
  bool Lose() {
    if (c_.burst_enter > 0) {
      if (bad_) {
        if (u_(rng_) < c_.burst_exit) bad_ = false;
      } else if (u_(rng_) < c_.burst_enter) {
        bad_ = true;
      }
    }
    const double p = bad_ ? c_.burst_loss : c_.loss;
    if (u_(rng_) < p) {
      ++lost_;
      return true;
    }
    return false;
  }

  ChannelConfig c_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> u_{0.0, 1.0};
  bool bad_ = false;
  Micros link_free_ = 0;
  uint64_t max_backlog_ = 0;
  uint64_t sent_ = 0, lost_ = 0, queue_drops_ = 0;
  std::deque<std::pair<Micros, Bytes>> in_flight_;
};

inline Bytes RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) b[i + j] = static_cast<uint8_t>(v >> (8 * j));
  }
  return b;
}

// Chunk list of |object| in leaves of |leaf| bytes (last one short), as a chunk map gives it.
inline std::vector<ChunkSpec> Chunks(const Bytes& object, size_t leaf) {
  std::vector<ChunkSpec> out;
  for (size_t off = 0; off < object.size(); off += leaf) {
    const size_t len = std::min(leaf, object.size() - off);
    out.push_back(
        {off, static_cast<uint32_t>(len), Sha256::Of(ByteView(object.data() + off, len))});
  }
  return out;
}

inline SessionParams TestParams() {
  SessionParams p;
  p.session_id = 0x1122334455667788ull;
  for (size_t i = 0; i < p.key.size(); ++i) p.key[i] = static_cast<uint8_t>(i * 7 + 1);
  p.token = "test-token-0123456789";
  return p;
}

struct TransferOptions {
  ChannelConfig forward;
  ChannelConfig reverse;
  size_t leaf = 64 << 10;
  Micros limit_us = 120'000'000;
  // Sender statistics are also snapshotted this long after the first DATA, for steady-state
  // figures (after startup).
  Micros steady_from_us = 1'000'000;
  SenderConfig sender;
  ReceiverConfig receiver;
  // Called with every datagram before it enters a channel; may inject extra ones (attacks).
  std::function<void(Micros, const Bytes&, bool to_agent, std::vector<Bytes>* extra)> tap;
  // Datagrams to the server for which this returns true are dropped before the channel.
  std::function<bool(const Bytes&)> drop_reverse;
  // Alters what the sender reads (a corrupt cache file).
  std::function<void(uint64_t offset, std::span<uint8_t> out)> corrupt_read;
  // Replaces the applier's answer for a delivery (a failing applier).
  std::function<Status(uint64_t first_chunk)> deliver_status;
  // Lets a test change the channels mid-transfer.
  std::function<void(Micros, LossyChannel*, LossyChannel*)> at_time;
};

struct TransferResult {
  Bytes delivered;
  bool receiver_done = false, sender_done = false;
  Status receiver_error, sender_error;
  UdpReceiver::State receiver_state{};
  uint64_t next_chunk = 0;
  Micros first_data_us = 0, finished_us = 0, end_us = 0;
  SenderStats sender;
  SenderStats sender_at_steady;  // Snapshot at TransferOptions::steady_from_us.
  ReceiverStats receiver;
  uint64_t object_size = 0;
  uint64_t queue_drops = 0, channel_losses = 0;
  uint64_t forward_datagrams = 0;
  uint64_t iterations = 0;  // Driver loop turns: bounded when no timer spins.
  double loss_estimate = 0, base_loss = 0;
  uint64_t bottleneck_rate = 0;
  Micros min_rtt_us = 0;
  // Fraction of the datagrams entering the forward channel that its loss model dropped.
  double channel_loss_rate = 0;
  // Goodput: object bits / (last delivery - start), Mbit/s.
  double goodput_mbps() const {
    return finished_us ? object_size * 8.0 / static_cast<double>(finished_us) : 0;
  }
  // Repair symbol bytes per source symbol byte after the snapshot (steady state).
  double steady_repair_overhead() const {
    const uint64_t src = sender.source_bytes_sent - sender_at_steady.source_bytes_sent;
    return src ? static_cast<double>(sender.repair_bytes_sent -
                                     sender_at_steady.repair_bytes_sent) /
                     src
               : repair_overhead();
  }
  // Repair symbol bytes per source symbol byte, whole transfer.
  double repair_overhead() const {
    return sender.source_bytes_sent
               ? static_cast<double>(sender.repair_bytes_sent) / sender.source_bytes_sent
               : 0;
  }
};

inline TransferResult RunTransfer(const Bytes& object, const TransferOptions& o) {
  TransferResult res;
  res.object_size = object.size();
  const std::vector<ChunkSpec> chunks = Chunks(object, o.leaf);
  const SessionParams params = TestParams();
  auto sender = UdpSender::Create(
      params, chunks,
      [&](uint64_t off, std::span<uint8_t> out) {
        if (off > object.size() || out.size() > object.size() - off) {
          return Error(ErrorCode::kIoError, "read past end");
        }
        std::copy_n(object.begin() + off, out.size(), out.begin());
        if (o.corrupt_read) o.corrupt_read(off, out);
        return Status::Ok();
      },
      o.sender);
  Micros now = 0;
  auto receiver = UdpReceiver::Create(
      params, chunks,
      [&](uint64_t first, uint64_t count, ByteView bytes) {
        if (o.deliver_status) DS_RETURN_IF_ERROR(o.deliver_status(first));
        if (first != 0 && res.delivered.size() != chunks[first].offset) {
          return Error(ErrorCode::kInternal, "out of order delivery");
        }
        res.delivered.insert(res.delivered.end(), bytes.begin(), bytes.end());
        res.finished_us = now;
        return Status::Ok();
      },
      o.receiver);
  if (!sender.ok() || !receiver.ok()) return res;
  UdpSender& s = **sender;
  UdpReceiver& r = **receiver;
  LossyChannel fwd(o.forward), rev(o.reverse);
  const PeerAddress agent = "agent:4242";
  uint64_t iterations = 0;
  bool snapped = false;
  while (now <= o.limit_us && ++iterations < 50'000'000) {
    if (!snapped && res.first_data_us && now >= res.first_data_us + o.steady_from_us) {
      res.sender_at_steady = s.stats();
      snapped = true;
    }
    if (o.at_time) o.at_time(now, &fwd, &rev);
    while (auto d = r.Poll(now)) {
      std::vector<Bytes> extra;
      if (o.tap) o.tap(now, *d, false, &extra);
      if (o.drop_reverse && o.drop_reverse(*d)) continue;
      rev.Send(now, std::move(*d));
      for (Bytes& e : extra) rev.Send(now, std::move(e));
    }
    while (auto d = s.Poll(now)) {
      if (d->to != agent) continue;
      if (!res.first_data_us) res.first_data_us = now;
      ++res.forward_datagrams;
      std::vector<Bytes> extra;
      if (o.tap) o.tap(now, d->bytes, true, &extra);
      fwd.Send(now, std::move(d->bytes));
      for (Bytes& e : extra) fwd.Send(now, std::move(e));
    }
    const bool r_end =
        r.state() == UdpReceiver::State::kDone || r.state() == UdpReceiver::State::kFailed;
    const bool s_end =
        s.state() == UdpSender::State::kDone || s.state() == UdpSender::State::kFailed;
    if (r_end && s_end && !fwd.NextArrival() && !rev.NextArrival()) break;
    Micros next = std::min(s.NextTimeout(now), r.NextTimeout(now));
    if (auto a = fwd.NextArrival()) next = std::min(next, *a);
    if (auto a = rev.NextArrival()) next = std::min(next, *a);
    if (next == kNever) break;
    now = std::max(next, now + 1);
    while (auto d = fwd.Pop(now)) (void)r.OnDatagram(now, *d);
    while (auto d = rev.Pop(now)) (void)s.OnDatagram(now, *d, agent);
  }
  res.end_us = now;
  res.iterations = iterations;
  res.receiver_done = r.done();
  res.sender_done = s.done();
  res.receiver_error = r.error();
  res.sender_error = s.error();
  res.receiver_state = r.state();
  res.next_chunk = r.next_chunk();
  res.sender = s.stats();
  res.loss_estimate = s.controller().loss();
  res.base_loss = s.controller().base_loss();
  res.bottleneck_rate = s.controller().bottleneck_rate();
  res.min_rtt_us = s.controller().min_rtt_us();
  res.receiver = r.stats();
  res.queue_drops = fwd.queue_drops();
  res.channel_losses = fwd.lost();
  res.channel_loss_rate = fwd.sent() ? static_cast<double>(fwd.lost()) / fwd.sent() : 0;
  return res;
}

}  // namespace ds::fec::testing

#endif  // DELTASTREAM_TESTS_FEC_LOSSY_CHANNEL_H_
