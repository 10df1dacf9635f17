// UdpReceiver: handshake, symbol collection, decoding, verification, in-order delivery,
// feedback and need-more requests, stall detection.
#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fec/session.h"

namespace ds::fec {
namespace {

constexpr Micros kKeepaliveUs = 100'000;
constexpr size_t kMaxStoredSamples = 512;

}  // namespace

Result<std::unique_ptr<UdpReceiver>> UdpReceiver::Create(SessionParams params,
                                                         std::vector<ChunkSpec> chunks,
                                                         DeliverFn deliver, ReceiverConfig config) {
  if (sodium_init() < 0) return Error(ErrorCode::kInternal, "libsodium init failed");
  if (params.token.empty() || params.token.size() > kMaxTokenSize) {
    return Error(ErrorCode::kInvalidArgument, "session token must be 1..64 bytes");
  }
  if (chunks.size() > UINT32_MAX) return Error(ErrorCode::kResourceLimit, "too many chunks");
  if (config.window_chunks == 0) return Error(ErrorCode::kInvalidArgument, "empty window");
  return std::unique_ptr<UdpReceiver>(
      new UdpReceiver(std::move(params), std::move(chunks), std::move(deliver), config));
}

UdpReceiver::UdpReceiver(SessionParams params, std::vector<ChunkSpec> chunks, DeliverFn deliver,
                         ReceiverConfig config)
    : params_(std::move(params)),
      chunks_(std::move(chunks)),
      deliver_(std::move(deliver)),
      config_(config) {
  chunk_prefix_.resize(chunks_.size() + 1, 0);
  for (size_t i = 0; i < chunks_.size(); ++i) {
    chunk_prefix_[i + 1] = chunk_prefix_[i] + chunks_[i].length;
  }
  if (chunks_.empty()) state_ = State::kDone;
}

Bytes UdpReceiver::Seal(PacketType type, ByteView body) {
  Bytes b = SealDatagram(Header{type, params_.session_id, next_pn_++}, body, params_.key);
  stats_.bytes_sent += b.size();
  return b;
}

void UdpReceiver::Fail(Status s) {
  if (state_ == State::kDone || state_ == State::kFailed) return;
  error_ = std::move(s);
  close_code_ = static_cast<uint16_t>(error_.code());
  close_to_send_ = state_ == State::kReceiving ? 2 : 0;
  state_ = State::kFailed;
  active_.clear();
  ready_.clear();
  ready_chunks_.clear();
}

Micros UdpReceiver::RttHint() const {
  if (rtt_hint_) return rtt_hint_;
  if (handshake_rtt_) return handshake_rtt_;
  return 100'000;
}

Micros UdpReceiver::FeedbackInterval() const {
  return std::clamp<Micros>(RttHint() / 4, config_.feedback_min_us, config_.feedback_max_us);
}

Status UdpReceiver::OnDatagram(Micros now, ByteView datagram) {
  auto drop = [&](Status s) {
    ++stats_.dropped_datagrams;
    return s;
  };
  Result<Opened> opened = OpenDatagram(datagram, params_.session_id, params_.key);
  if (!opened.ok()) return drop(opened.status());
  const Header& h = opened->header;
  if (!replay_.WouldAccept(h.packet_number)) {
    return drop(Error(ErrorCode::kProtocol, "replayed or too old packet"));
  }
  std::optional<Challenge> challenge;
  std::optional<Data> data;
  std::optional<Close> close;
  switch (h.type) {
    case PacketType::kChallenge: {
      Result<Challenge> p = ParseChallenge(opened->body);
      if (!p.ok()) return drop(p.status());
      challenge = *p;
      break;
    }
    case PacketType::kData: {
      Result<Data> p = ParseData(opened->body);
      if (!p.ok()) return drop(p.status());
      data = *p;
      break;
    }
    case PacketType::kClose: {
      Result<Close> p = ParseClose(opened->body);
      if (!p.ok()) return drop(p.status());
      close = *p;
      break;
    }
    default:
      return drop(Error(ErrorCode::kProtocol, "agent-to-server packet sent to the agent"));
  }
  replay_.Accept(h.packet_number);
  ++stats_.datagrams_received;
  stats_.bytes_received += datagram.size();
  // Receive accounting for FEEDBACK (every authenticated server packet counts).
  if (!any_packet_ || h.packet_number > largest_pn_) {
    if (any_packet_ && h.packet_number > largest_pn_ + 1) {
      const double gap = static_cast<double>(h.packet_number - largest_pn_ - 1);
      burst_ = 0.9 * burst_ + 0.1 * std::min(gap, 64.0);
    }
    any_packet_ = true;
    largest_pn_ = h.packet_number;
    largest_time_ = now;
  }
  ++received_packets_;
  received_bytes_ += datagram.size();
  rate_bytes_ += datagram.size();
  if (samples_.size() < kMaxStoredSamples) samples_.push_back({h.packet_number, now});

  if (challenge) {
    if (state_ == State::kHandshake) {
      auto it = hello_times_.find(challenge->hello_pn);
      if (it != hello_times_.end()) handshake_rtt_ = std::max<Micros>(now - it->second, 1);
      cookie_ = challenge->cookie;
      state_ = State::kReceiving;
      echo_pending_ = true;
      last_data_ = now;
      last_fb_ = now;
      hello_interval_ = config_.hello_interval_us;
      next_hello_ = now + hello_interval_;
    } else if (state_ == State::kReceiving) {
      // Our ECHO was lost, or our address changed (NAT rebinding) and the server re-validates.
      cookie_ = challenge->cookie;
      echo_pending_ = true;
    }
    return Status::Ok();
  }
  if (close) {
    if (state_ == State::kDone || state_ == State::kFailed) return Status::Ok();
    if (close->code == 0) {
      Fail(Error(ErrorCode::kProtocol, "server closed the UDP session before the end"));
    } else {
      Fail(Error(static_cast<ErrorCode>(close->code), "server closed the UDP session"));
    }
    close_to_send_ = 0;
    return Status::Ok();
  }
  // DATA.
  if (state_ == State::kDone) {
    ++stats_.useless_symbols;
    ack_pending_ = true;
    return Status::Ok();
  }
  if (state_ != State::kReceiving) {
    return drop(Error(ErrorCode::kProtocol, "DATA outside the receiving state"));
  }
  Status st = HandleData(now, *data, h.packet_number, datagram.size());
  if (!st.ok() && st.code() == ErrorCode::kProtocol) ++stats_.dropped_datagrams;
  return st;
}

Status UdpReceiver::HandleData(Micros now, const Data& d, uint64_t pn, size_t datagram_size) {
  last_data_ = now;
  if (d.rtt_hint_us) rtt_hint_ = d.rtt_hint_us;
  const uint64_t n = chunks_.size();
  if (d.block >= n || d.chunks > n - d.block) {
    return Error(ErrorCode::kProtocol, "DATA block outside the chunk list");
  }
  const uint64_t end = d.block + d.chunks;
  ++stats_.symbols_received;
  if (end <= next_chunk_ || ready_.count(d.block)) {
    ++stats_.useless_symbols;
    ack_pending_ = true;  // The sender missed our ack.
    return Status::Ok();
  }
  if (d.block < next_chunk_) return Error(ErrorCode::kProtocol, "DATA block overlaps delivered");
  if (end > next_chunk_ + config_.window_chunks) {
    return Error(ErrorCode::kProtocol, "DATA block beyond the receive window");
  }
  const uint64_t bytes = chunk_prefix_[end] - chunk_prefix_[d.block];
  const size_t sym = d.symbol.size();
  if (static_cast<uint64_t>(d.k) * sym < bytes || static_cast<uint64_t>(d.k - 1) * sym >= bytes) {
    return Error(ErrorCode::kProtocol, "DATA block shape does not match its chunks");
  }
  auto it = active_.find(d.block);
  if (it == active_.end()) {
    // A new block may not overlap another one.
    auto overlaps = [&](uint64_t id, uint64_t chunks) { return id < end && d.block < id + chunks; };
    auto next = active_.lower_bound(d.block);
    if (next != active_.end() && overlaps(next->first, next->second.chunks)) {
      return Error(ErrorCode::kProtocol, "DATA block overlaps another");
    }
    if (next != active_.begin() &&
        overlaps(std::prev(next)->first, std::prev(next)->second.chunks)) {
      return Error(ErrorCode::kProtocol, "DATA block overlaps another");
    }
    auto rnext = ready_chunks_.lower_bound(d.block);
    if (rnext != ready_chunks_.end() && overlaps(rnext->first, rnext->second)) {
      return Error(ErrorCode::kProtocol, "DATA block overlaps another");
    }
    if (rnext != ready_chunks_.begin() &&
        overlaps(std::prev(rnext)->first, std::prev(rnext)->second)) {
      return Error(ErrorCode::kProtocol, "DATA block overlaps another");
    }
    RxBlock b;
    b.chunks = d.chunks;
    b.bytes = bytes;
    b.k = d.k;
    b.planned = d.planned;
    b.sym = sym;
    b.symbols.resize(static_cast<size_t>(d.k) * sym);
    b.have.assign(kMaxSymbolsPerBlock, false);
    b.first_pn = pn;
    it = active_.emplace(d.block, std::move(b)).first;
    if (!any_block_ || d.block > newest_block_) {
      newest_block_ = d.block;
      newest_block_first_pn_ = pn;
      any_block_ = true;
    }
  } else if (it->second.chunks != d.chunks || it->second.k != d.k || it->second.sym != sym) {
    return Error(ErrorCode::kProtocol, "DATA shape differs from the block's earlier symbols");
  }
  RxBlock& b = it->second;
  b.last_pn = std::max(b.last_pn, pn);
  b.last_time = now;
  if (b.have[d.esi]) {
    ++stats_.useless_symbols;
    return Status::Ok();
  }
  b.have[d.esi] = true;
  std::memcpy(b.symbols.data() + b.esis.size() * sym, d.symbol.data(), sym);
  b.esis.push_back(d.esi);
  if (b.esis.size() < static_cast<size_t>(b.k)) return Status::Ok();
  const uint64_t id = it->first;
  Status st = DecodeBlock(id, b);
  active_.erase(id);
  if (!st.ok()) {
    Fail(st);
    return st;
  }
  ++stats_.blocks_decoded;
  ack_pending_ = true;
  st = DeliverReady();
  if (!st.ok()) Fail(st);
  return st;
}

Status UdpReceiver::DecodeBlock(uint64_t id, RxBlock& b) {
  Bytes out(static_cast<size_t>(b.k) * b.sym);
  std::vector<const uint8_t*> in(b.k);
  std::vector<uint8_t*> outp(b.k);
  for (int i = 0; i < b.k; ++i) {
    in[i] = b.symbols.data() + static_cast<size_t>(i) * b.sym;
    outp[i] = out.data() + static_cast<size_t>(i) * b.sym;
  }
  DS_RETURN_IF_ERROR(rs_.Decode(b.k, b.esis, in, outp, b.sym));
  // Padding past the block's bytes must decode to zeros, and every chunk to its hash.
  for (size_t i = b.bytes; i < out.size(); ++i) {
    if (out[i] != 0) return Error(ErrorCode::kDigestMismatch, "FEC block padding not zero");
  }
  out.resize(b.bytes);
  uint64_t at = 0;
  for (uint32_t c = 0; c < b.chunks; ++c) {
    const ChunkSpec& spec = chunks_[id + c];
    if (Sha256::Of(ByteView(out.data() + at, spec.length)) != spec.sha256) {
      return Error(ErrorCode::kDigestMismatch,
                   "chunk " + std::to_string(id + c) + " rebuilt over UDP fails its hash");
    }
    at += spec.length;
  }
  ready_chunks_[id] = b.chunks;
  ready_[id] = std::move(out);
  return Status::Ok();
}

Status UdpReceiver::DeliverReady() {
  while (!ready_.empty() && ready_.begin()->first == next_chunk_) {
    auto it = ready_.begin();
    const uint32_t chunks = ready_chunks_[it->first];
    DS_RETURN_IF_ERROR(deliver_(it->first, chunks, it->second));
    next_chunk_ += chunks;
    ready_chunks_.erase(it->first);
    ready_.erase(it);
  }
  if (next_chunk_ == chunks_.size() && state_ == State::kReceiving) {
    state_ = State::kDone;
    ack_pending_ = true;
    close_code_ = 0;
    close_to_send_ = 2;
  }
  return Status::Ok();
}

std::vector<NeedMore> UdpReceiver::ShortBlocks(Micros now) {
  std::vector<NeedMore> out;
  const Micros quiet = std::max<Micros>(RttHint() / 2, 10'000);
  const Micros again = std::max<Micros>(RttHint() * 3 / 2, 10'000);
  for (auto& [id, b] : active_) {
    if (out.size() >= kMaxNeedMore) break;
    const bool passed = any_block_ && newest_block_ > id && newest_block_first_pn_ > b.last_pn + 2;
    const bool silent = now - b.last_time > quiet;
    if (!passed && !silent) continue;
    if (b.requested && now - b.last_need < again) continue;
    b.requested = true;
    b.last_need = now;
    out.push_back(NeedMore{id, static_cast<uint8_t>(b.k - static_cast<int>(b.esis.size()))});
  }
  stats_.need_more_sent += out.size();
  return out;
}

Bytes UdpReceiver::MakeFeedback(Micros now) {
  Feedback fb;
  fb.largest_pn = largest_pn_;
  fb.ack_delay_us = now - largest_time_;
  fb.received_packets = received_packets_;
  fb.received_bytes = received_bytes_;
  const uint64_t expected = fb_any_ ? largest_pn_ - fb_largest_ : largest_pn_ + 1;
  const uint64_t got = received_packets_ - fb_received_;
  if (expected >= 8) {
    const double l = got >= expected ? 0.0 : 1.0 - static_cast<double>(got) / expected;
    loss_ = fb_any_ ? 0.75 * loss_ + 0.25 * l : l;
  }
  fb.loss_ppm = static_cast<uint32_t>(std::clamp(loss_, 0.0, 1.0) * 1e6);
  if (now > last_fb_) {
    const double r = static_cast<double>(rate_bytes_) * 1e6 / static_cast<double>(now - last_fb_);
    rate_ = rate_ == 0 ? r : 0.75 * rate_ + 0.25 * r;
  }
  fb.delivery_rate = static_cast<uint64_t>(rate_);
  fb.burst_x16 = static_cast<uint32_t>(std::max(1.0, burst_) * 16);
  fb.window_end = std::min<uint64_t>(chunks_.size(), next_chunk_ + config_.window_chunks);
  for (const auto& [id, b] : active_) {
    if (fb.blocks.size() >= kMaxFeedbackBlocks) break;
    fb.blocks.push_back(BlockCount{id, static_cast<uint8_t>(std::min<size_t>(b.esis.size(), 255))});
  }
  // Up to kMaxDelaySamples receive times spread over the interval.
  const size_t ns = samples_.size();
  const size_t take = std::min(ns, kMaxDelaySamples);
  for (size_t i = 0; i < take; ++i) fb.samples.push_back(samples_[i * ns / take]);
  samples_.clear();
  last_fb_ = now;
  fb_largest_ = largest_pn_;
  fb_received_ = received_packets_;
  fb_any_ = true;
  rate_bytes_ = 0;
  ++stats_.feedback_sent;
  return Seal(PacketType::kFeedback, SerializeFeedback(fb));
}

Bytes UdpReceiver::MakeBlockAck(Micros now, bool with_need_more) {
  BlockAck ack;
  ack.done_below = next_chunk_;
  for (const auto& [id, bytes] : ready_) {
    if (ack.done.size() >= kMaxAckedBlocks) break;
    ack.done.push_back(id);
  }
  if (with_need_more && state_ == State::kReceiving) ack.need_more = ShortBlocks(now);
  last_ack_ = now;
  return Seal(PacketType::kBlockAck, SerializeBlockAck(ack));
}

std::optional<Bytes> UdpReceiver::Poll(Micros now) {
  if (!started_) {
    started_ = true;
    start_time_ = now;
    next_hello_ = now;
    hello_interval_ = config_.hello_interval_us;
    last_data_ = now;
  }
  if (state_ == State::kHandshake && now - start_time_ >= config_.handshake_timeout_us) {
    Fail(Error(ErrorCode::kUnavailable, "no answer over UDP (blocked?): use the HTTP carrier"));
  }
  if (state_ == State::kReceiving && now - last_data_ >= config_.stall_timeout_us) {
    Fail(Error(ErrorCode::kUnavailable, "UDP session stalled: use the HTTP carrier"));
  }
  if (state_ == State::kFailed || state_ == State::kDone) {
    if (ack_pending_ && state_ == State::kDone && now - last_ack_ >= FeedbackInterval()) {
      ack_pending_ = false;
      return MakeBlockAck(now, false);
    }
    if (close_to_send_ > 0) {
      --close_to_send_;
      return Seal(PacketType::kClose, SerializeClose(Close{close_code_}));
    }
    return std::nullopt;
  }
  if (state_ == State::kHandshake) {
    if (now < next_hello_) return std::nullopt;
    Hello hello;
    hello.token = params_.token;
    const size_t unpadded = kHeaderSize + 1 + hello.token.size() + 2 + kTagSize;
    hello.padding = static_cast<uint16_t>(kHelloPaddedSize - unpadded);
    hello_times_[next_pn_] = now;
    if (++hello_copy_ >= kHandshakeCopies) {  // The copies go back to back, then a pause.
      hello_copy_ = 0;
      next_hello_ = now + hello_interval_;
      hello_interval_ *= 2;
    }
    return Seal(PacketType::kHello, SerializeHello(hello));
  }
  // Receiving.
  if (!any_block_ && now >= next_hello_) {  // No DATA yet: the ECHO may be lost.
    echo_pending_ = true;
    next_hello_ = now + hello_interval_;
    hello_interval_ *= 2;
  }
  if (echo_pending_) {
    if (++echo_copy_ >= kHandshakeCopies) {
      echo_copy_ = 0;
      echo_pending_ = false;
    }
    Echo e{cookie_, std::min<uint64_t>(chunks_.size(), next_chunk_ + config_.window_chunks)};
    return Seal(PacketType::kEcho, SerializeEcho(e));
  }
  const bool fb_due =
      now >= last_fb_ + FeedbackInterval() &&
      (received_packets_ != fb_received_ || !active_.empty() || now >= last_fb_ + kKeepaliveUs);
  if (fb_due) {
    ack_pending_ = true;  // The BLOCK_ACK follows on the next Poll.
    return MakeFeedback(now);
  }
  if (ack_pending_) {
    ack_pending_ = false;
    return MakeBlockAck(now, true);
  }
  return std::nullopt;
}

Micros UdpReceiver::NextTimeout(Micros now) const {
  if (!started_) return now;
  if (state_ == State::kFailed || state_ == State::kDone) {
    if (close_to_send_ > 0) return now;
    if (ack_pending_ && state_ == State::kDone)
      return std::max(now, last_ack_ + FeedbackInterval());
    return kNever;
  }
  if (state_ == State::kHandshake) {
    return std::min(next_hello_, start_time_ + config_.handshake_timeout_us);
  }
  if (echo_pending_ || ack_pending_) return now;
  Micros t = last_data_ + config_.stall_timeout_us;
  if (!any_block_) t = std::min(t, next_hello_);
  const bool news = received_packets_ != fb_received_ || !active_.empty();
  t = std::min(t, last_fb_ + (news ? FeedbackInterval() : kKeepaliveUs));
  return std::max(t, now);
}

}  // namespace ds::fec
