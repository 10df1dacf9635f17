// UdpSender: handshake (HELLO -> CHALLENGE -> ECHO), blocks, pacing, repair, acks.
#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fec/session.h"

namespace ds::fec {
namespace {

// A chunk must leave room for repair in its block.
constexpr int kMaxChunkSymbols = 200;
// Room kept under 255 for need-more symbols after the first burst.
constexpr int kNeedMoreHeadroom = 12;

bool TokenEquals(const std::string& a, const std::string& b) {
  return a.size() == b.size() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

Result<std::unique_ptr<UdpSender>> UdpSender::Create(SessionParams params,
                                                     std::vector<ChunkSpec> chunks, ReadFn read,
                                                     SenderConfig config) {
  if (sodium_init() < 0) return Error(ErrorCode::kInternal, "libsodium init failed");
  if (params.token.empty() || params.token.size() > kMaxTokenSize) {
    return Error(ErrorCode::kInvalidArgument, "session token must be 1..64 bytes");
  }
  if (config.max_datagram > kMaxDatagramSize || config.max_datagram < kDataOverhead + 64) {
    return Error(ErrorCode::kInvalidArgument, "max_datagram out of range");
  }
  if (chunks.size() > UINT32_MAX) return Error(ErrorCode::kResourceLimit, "too many chunks");
  const size_t max_sym = config.max_datagram - kDataOverhead;
  for (const ChunkSpec& c : chunks) {
    if (c.length == 0) return Error(ErrorCode::kInvalidArgument, "empty chunk");
    if ((c.length + max_sym - 1) / max_sym > static_cast<size_t>(kMaxChunkSymbols)) {
      return Error(ErrorCode::kUnsupported, "chunk too large for one FEC block");
    }
  }
  return std::unique_ptr<UdpSender>(
      new UdpSender(std::move(params), std::move(chunks), std::move(read), config));
}

UdpSender::UdpSender(SessionParams params, std::vector<ChunkSpec> chunks, ReadFn read,
                     SenderConfig config)
    : params_(std::move(params)),
      chunks_(std::move(chunks)),
      read_(std::move(read)),
      config_(config),
      rate_(config.rate) {
  randombytes_buf(cookie_.data(), cookie_.size());
}

Bytes UdpSender::Seal(PacketType type, ByteView body) {
  return SealDatagram(Header{type, params_.session_id, next_pn_++}, body, params_.key);
}

void UdpSender::Fail(Status s) {
  if (state_ == State::kDone || state_ == State::kFailed) return;
  error_ = std::move(s);
  state_ = State::kFailed;
  close_code_ = static_cast<uint16_t>(error_.code());
  close_to_send_ = have_peer_ ? 2 : 0;
}

Status UdpSender::OnDatagram(Micros now, ByteView datagram, const PeerAddress& from) {
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
  // Parse before recording the packet number: a malformed packet changes nothing.
  Status st;
  switch (h.type) {
    case PacketType::kHello: {
      Result<Hello> p = ParseHello(opened->body);
      if (!p.ok()) return drop(p.status());
      if (!TokenEquals(p->token, params_.token)) {
        return drop(Error(ErrorCode::kUnauthenticated, "bad session token"));
      }
      replay_.Accept(h.packet_number);
      last_rx_ = now;
      if (state_ == State::kDone || state_ == State::kFailed) return Status::Ok();
      if (have_peer_ && from == peer_) return Status::Ok();  // A late duplicate.
      if (from != candidate_) {
        candidate_ = from;
        candidate_rx_ = candidate_tx_ = 0;
      }
      candidate_rx_ += datagram.size();
      hello_pn_ = h.packet_number;
      challenge_pending_ = kHandshakeCopies;
      if (state_ == State::kAwaitHello) state_ = State::kValidating;
      return Status::Ok();
    }
    case PacketType::kEcho: {
      Result<Echo> p = ParseEcho(opened->body);
      if (!p.ok()) return drop(p.status());
      if (sodium_memcmp(p->cookie.data(), cookie_.data(), kCookieSize) != 0) {
        return drop(Error(ErrorCode::kUnauthenticated, "ECHO cookie mismatch"));
      }
      replay_.Accept(h.packet_number);
      last_rx_ = now;
      if (from == candidate_ && !(have_peer_ && from == peer_)) {
        peer_ = from;
        have_peer_ = true;
        challenge_pending_ = 0;
        window_end_ = std::max(window_end_, p->window_end);
        if (state_ == State::kValidating || state_ == State::kAwaitHello) {
          state_ = State::kSending;
        }
      }
      return Status::Ok();
    }
    case PacketType::kFeedback: {
      Result<Feedback> p = ParseFeedback(opened->body);
      if (!p.ok()) return drop(p.status());
      replay_.Accept(h.packet_number);
      last_rx_ = now;
      if (!have_peer_) return Status::Ok();
      if (from != peer_ && from != candidate_) {  // The agent's address changed: re-validate.
        candidate_ = from;
        candidate_rx_ = datagram.size();
        candidate_tx_ = 0;
        challenge_pending_ = kHandshakeCopies;
      }
      return HandleFeedback(now, *p, h.packet_number);
    }
    case PacketType::kBlockAck: {
      Result<BlockAck> p = ParseBlockAck(opened->body);
      if (!p.ok()) return drop(p.status());
      replay_.Accept(h.packet_number);
      last_rx_ = now;
      if (state_ == State::kSending) HandleBlockAck(now, *p);
      return Status::Ok();
    }
    case PacketType::kClose: {
      Result<Close> p = ParseClose(opened->body);
      if (!p.ok()) return drop(p.status());
      replay_.Accept(h.packet_number);
      last_rx_ = now;
      if (state_ == State::kDone || state_ == State::kFailed) return Status::Ok();
      if (p->code == 0 && state_ == State::kSending) {
        // The agent has every chunk.
        blocks_.clear();
        need_queue_.clear();
        next_chunk_ = chunks_.size();
        state_ = State::kDone;
      } else {
        error_ = Error(p->code == 0 ? ErrorCode::kProtocol : static_cast<ErrorCode>(p->code),
                       "agent closed the UDP session");
        state_ = State::kFailed;
      }
      return Status::Ok();
    }
    case PacketType::kChallenge:
    case PacketType::kData:
      return drop(Error(ErrorCode::kProtocol, "server-to-agent packet sent to the server"));
  }
  return drop(Error(ErrorCode::kProtocol, "unknown packet"));
}

Status UdpSender::HandleFeedback(Micros now, const Feedback& fb, uint64_t pn) {
  if (fb.largest_pn >= next_pn_) return Error(ErrorCode::kProtocol, "FEEDBACK acks unsent packets");
  window_end_ = std::max(window_end_, std::min<uint64_t>(fb.window_end, chunks_.size()));
  if (have_fb_ && pn < last_fb_pn_) return Status::Ok();  // Reordered: older news.
  have_fb_ = true;
  last_fb_pn_ = pn;
  rate_.OnFeedback(now, fb);
  probes_ = 0;
  return Status::Ok();
}

void UdpSender::HandleBlockAck(Micros now, const BlockAck& ack) {
  while (!blocks_.empty() && blocks_.begin()->first < ack.done_below) {
    blocks_.erase(blocks_.begin());
  }
  for (uint64_t id : ack.done) blocks_.erase(id);
  std::erase_if(need_queue_, [&](const auto& e) { return !blocks_.count(e.first); });
  for (const NeedMore& m : ack.need_more) {
    auto it = blocks_.find(m.block);
    if (it == blocks_.end()) continue;
    Block& b = it->second;
    // A request sent before our last answer could arrive is a duplicate.
    if (b.last_need_response != 0 && now - b.last_need_response < rate_.srtt_us() / 2) continue;
    if (b.burst_left > 0) continue;  // The first burst is still going out.
    b.last_need_response = now;
    const double r = rate_.RepairRatio(b.k);
    const int n = std::min<int>(254, m.needed + static_cast<int>(std::lround(m.needed * r)));
    need_queue_.emplace_back(m.block, n);
    ++stats_.need_more_requests;
  }
  if (AllAcked() && state_ == State::kSending) {
    state_ = State::kDone;
    close_code_ = 0;
    close_to_send_ = 2;
  }
}

int UdpSender::ChooseChunks() const {
  const size_t max_sym = config_.max_datagram - kDataOverhead;
  const double r = rate_.RepairRatio(config_.block_symbols);
  // Bursty or heavy loss: larger blocks, so one burst or an unlucky run is a smaller share of
  // a block (the spread of losses per block grows only as the square root of its size).
  const bool large = rate_.burst() >= 2.0 || rate_.loss() > 0.12;
  int target = large ? config_.bursty_block_symbols : config_.block_symbols;
  const int cap = static_cast<int>((kMaxSymbolsPerBlock - kNeedMoreHeadroom) / (1 + r));
  target = std::clamp(std::min(target, cap), 1, kMaxChunkSymbols);
  uint64_t bytes = 0;
  int n = 0;
  while (next_chunk_ + n < chunks_.size() && next_chunk_ + n < window_end_ && n < 255) {
    const uint64_t more = bytes + chunks_[next_chunk_ + n].length;
    if (n > 0 && (more + max_sym - 1) / max_sym > static_cast<uint64_t>(target)) break;
    bytes = more;
    ++n;
  }
  return n;
}

Status UdpSender::StartBlock(Micros now) {
  const int n = ChooseChunks();
  if (n == 0) return Status::Ok();
  Block b;
  b.id = next_chunk_;
  b.chunks = static_cast<uint32_t>(n);
  uint64_t bytes = 0;
  for (int i = 0; i < n; ++i) bytes += chunks_[next_chunk_ + i].length;
  const size_t max_sym = config_.max_datagram - kDataOverhead;
  b.k = static_cast<int>((bytes + max_sym - 1) / max_sym);
  b.sym = static_cast<size_t>((bytes + b.k - 1) / b.k);
  b.source.assign(static_cast<size_t>(b.k) * b.sym, 0);
  uint64_t at = 0;
  for (int i = 0; i < n; ++i) {
    const ChunkSpec& c = chunks_[next_chunk_ + i];
    std::span<uint8_t> out(b.source.data() + at, c.length);
    DS_RETURN_IF_ERROR(read_(c.offset, out).WithContext("reading chunk for UDP"));
    if (Sha256::Of(out) != c.sha256) {
      return Error(ErrorCode::kDigestMismatch,
                   "chunk " + std::to_string(next_chunk_ + i) + " does not match the chunk map");
    }
    at += c.length;
  }
  repair_credit_ += rate_.RepairRatio(b.k) * b.k;
  int r = static_cast<int>(repair_credit_);
  repair_credit_ -= r;
  r = std::clamp(r, 0, kMaxSymbolsPerBlock - kNeedMoreHeadroom - b.k);
  b.planned = b.k + r;
  b.burst_left = b.planned;
  next_chunk_ += n;
  ++stats_.blocks;
  blocks_.emplace(b.id, std::move(b));
  return Status::Ok();
}

OutDatagram UdpSender::DataDatagram(Micros now, Block& b, int esi) {
  ByteView symbol;
  if (esi < b.k) {
    symbol = ByteView(b.source.data() + static_cast<size_t>(esi) * b.sym, b.sym);
    ++stats_.source_symbols_sent;
    stats_.source_bytes_sent += b.sym;
  } else {
    auto it = b.repair.find(esi);
    if (it == b.repair.end()) {
      // Encode a run of ids at once: the rest of the first burst, or this one.
      const int last = esi < b.planned ? b.planned : esi + 1;
      std::vector<uint8_t> esis;
      std::vector<Bytes> bufs;
      for (int e = esi; e < last; ++e) {
        if (!b.repair.count(e)) esis.push_back(static_cast<uint8_t>(e));
      }
      std::vector<const uint8_t*> src(b.k);
      for (int j = 0; j < b.k; ++j) src[j] = b.source.data() + static_cast<size_t>(j) * b.sym;
      std::vector<uint8_t*> out;
      for (uint8_t e : esis) {
        Bytes& buf = b.repair[e];
        buf.assign(b.sym, 0);
        out.push_back(buf.data());
      }
      // Shapes are valid by construction; an error here would be a bug.
      Status st = rs_.Encode(b.k, src, esis, out, b.sym);
      if (!st.ok()) Fail(st);
      it = b.repair.find(esi);
    }
    symbol = it->second;
    ++stats_.repair_symbols_sent;
    stats_.repair_bytes_sent += b.sym;
  }
  Data d;
  d.block = b.id;
  d.chunks = static_cast<uint8_t>(b.chunks);
  d.k = static_cast<uint8_t>(b.k);
  d.esi = static_cast<uint8_t>(esi);
  d.planned = static_cast<uint8_t>(b.planned);
  d.rtt_hint_us = static_cast<uint32_t>(std::min<Micros>(rate_.srtt_us(), UINT32_MAX));
  d.symbol = symbol;
  const uint64_t pn = next_pn_;
  Bytes dg = Seal(PacketType::kData, SerializeData(d));
  if (esi >= b.k && b.repair.size() > 64) b.repair.erase(esi);  // Bound memory for old ids.
  rate_.OnSent(now, pn, dg.size());
  return OutDatagram{std::move(dg), peer_};
}

std::optional<OutDatagram> UdpSender::Poll(Micros now) {
  auto count = [&](OutDatagram d) {
    last_send_ = now;
    ++stats_.datagrams_sent;
    stats_.bytes_sent += d.bytes.size();
    return std::optional<OutDatagram>(std::move(d));
  };
  if (!started_) {
    started_ = true;
    last_rx_ = now;
  }
  if (state_ != State::kDone && state_ != State::kFailed &&
      now - last_rx_ > config_.idle_timeout_us) {
    Fail(Error(ErrorCode::kUnavailable, "UDP session idle: no datagram from the agent"));
  }
  if (close_to_send_ > 0 && have_peer_) {
    --close_to_send_;
    return count({Seal(PacketType::kClose, SerializeClose(Close{close_code_})), peer_});
  }
  if (state_ == State::kDone || state_ == State::kFailed) return std::nullopt;
  if (challenge_pending_ > 0) {
    Challenge c{cookie_, hello_pn_};
    Bytes dg = Seal(PacketType::kChallenge, SerializeChallenge(c));
    --challenge_pending_;
    // Anti-amplification: never more than 3x what the address sent before it proved itself.
    if (candidate_tx_ + dg.size() <=
        static_cast<uint64_t>(config_.amplification_factor) * candidate_rx_) {
      candidate_tx_ += dg.size();
      return count({std::move(dg), candidate_});
    }
  }
  if (state_ != State::kSending || !have_peer_) return std::nullopt;
  if (AllAcked()) {  // Nothing to send at all (an empty chunk list).
    state_ = State::kDone;
    close_code_ = 0;
    close_to_send_ = 2;
    return Poll(now);
  }
  if (now < rate_.NextSendTime() || !rate_.InflightAllows()) return std::nullopt;
  while (!need_queue_.empty()) {
    auto& [id, left] = need_queue_.front();
    auto it = blocks_.find(id);
    if (it == blocks_.end() || left <= 0) {
      need_queue_.pop_front();
      continue;
    }
    Block& b = it->second;
    int esi = b.next_esi;
    if (esi > kMaxEsi) {
      // Out of fresh ids: cycle through repair ids again (the receiver may have lost them).
      esi = b.k + (esi - kMaxEsi - 1) % (kMaxSymbolsPerBlock - b.k);
      ++stats_.repeated_esis;
    }
    ++b.next_esi;
    ++stats_.need_more_symbols;
    if (--left == 0) need_queue_.pop_front();
    return count(DataDatagram(now, b, esi));
  }
  // The first burst of the newest block, else a new block.
  if (!blocks_.empty()) {
    Block& b = blocks_.rbegin()->second;
    if (b.burst_left > 0) {
      --b.burst_left;
      return count(DataDatagram(now, b, b.next_esi++));
    }
  }
  if (next_chunk_ < chunks_.size() && next_chunk_ < window_end_) {
    Status st = StartBlock(now);
    if (!st.ok()) {
      Fail(st);
      return Poll(now);
    }
    Block& b = blocks_.rbegin()->second;
    --b.burst_left;
    return count(DataDatagram(now, b, b.next_esi++));
  }
  if (!blocks_.empty() && now >= last_send_ + ProbeInterval()) {
    Block& b = blocks_.begin()->second;
    if (b.burst_left == 0) {
      ++probes_;
      ++stats_.probes;
      int esi = b.next_esi++;
      if (esi > kMaxEsi) esi = b.k + (esi - kMaxEsi - 1) % (kMaxSymbolsPerBlock - b.k);
      return count(DataDatagram(now, b, esi));
    }
  }
  return std::nullopt;
}

Micros UdpSender::ProbeInterval() const {
  const Micros base = std::max<Micros>(2 * rate_.srtt_us(), 20'000);
  return base << std::min(probes_, 8);
}

Micros UdpSender::NextTimeout(Micros now) const {
  if (state_ == State::kDone) return close_to_send_ > 0 ? now : kNever;
  if (state_ == State::kFailed) return close_to_send_ > 0 && have_peer_ ? now : kNever;
  Micros t = last_rx_ + config_.idle_timeout_us + 1;
  if (challenge_pending_ > 0) return now;
  if (state_ == State::kSending && rate_.InflightAllows()) {
    const bool work = !need_queue_.empty() ||
                      (!blocks_.empty() && blocks_.rbegin()->second.burst_left > 0) ||
                      (next_chunk_ < chunks_.size() && next_chunk_ < window_end_);
    if (work) t = std::min(t, std::max(now, rate_.NextSendTime()));
    // The tail probe obeys pacing and the inflight cap like any packet (no busy timer).
    if (!blocks_.empty() && blocks_.begin()->second.burst_left == 0) {
      t = std::min(t, std::max({now, rate_.NextSendTime(), last_send_ + ProbeInterval()}));
    }
  }
  return t;
}

}  // namespace ds::fec
