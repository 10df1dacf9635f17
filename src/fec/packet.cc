#include "fec/packet.h"

#include <sodium.h>

#include <cstring>

#include "common/byte_reader.h"
#include "common/byte_writer.h"

namespace ds::fec {
namespace {

Status Malformed(const char* what) {
  return Error(ErrorCode::kProtocol, std::string("udp packet: ") + what);
}

bool ValidType(uint8_t t) { return t >= 1 && t <= 7; }

void Tag(const SessionKey& key, ByteView data, uint8_t out[kTagSize]) {
  // The keyed state (inner and outer pads absorbed) is cached per thread for the last key: a
  // session seals and opens thousands of datagrams under one key.
  thread_local SessionKey cached_key{};
  thread_local crypto_auth_hmacsha512256_state keyed;
  thread_local bool have_keyed = false;
  if (!have_keyed || sodium_memcmp(cached_key.data(), key.data(), key.size()) != 0) {
    crypto_auth_hmacsha512256_init(&keyed, key.data(), key.size());
    cached_key = key;
    have_keyed = true;
  }
  uint8_t full[crypto_auth_hmacsha512256_BYTES];
  crypto_auth_hmacsha512256_state st = keyed;
  crypto_auth_hmacsha512256_update(&st, data.data(), data.size());
  crypto_auth_hmacsha512256_final(&st, full);
  std::memcpy(out, full, kTagSize);
}

bool ReadVarintMax(ByteReader* r, uint64_t max, uint64_t* v) {
  return r->ReadVarint(v) && *v <= max;
}

}  // namespace

Result<Header> PeekHeader(ByteView datagram) {
  ByteReader r(datagram);
  uint8_t magic = 0, version = 0, type = 0, flags = 0;
  Header h;
  if (!r.ReadU8(&magic) || !r.ReadU8(&version) || !r.ReadU8(&type) || !r.ReadU8(&flags) ||
      !r.ReadU64Le(&h.session_id) || !r.ReadU64Le(&h.packet_number)) {
    return Malformed("shorter than a header");
  }
  if (magic != kMagic) return Malformed("bad magic");
  if (version != kVersion) return Malformed("unsupported version");
  if (!ValidType(type)) return Malformed("unknown type");
  if (flags != 0) return Malformed("reserved flags set");
  if (datagram.size() < kHeaderSize + kTagSize) return Malformed("no tag");
  if (datagram.size() > kMaxDatagramSize) return Malformed("datagram too large");
  h.type = static_cast<PacketType>(type);
  return h;
}

Result<Opened> OpenDatagram(ByteView datagram, uint64_t session_id, const SessionKey& key) {
  DS_ASSIGN_OR_RETURN(Header h, PeekHeader(datagram));
  if (h.session_id != session_id) return Error(ErrorCode::kUnauthenticated, "other session");
  const size_t signed_len = datagram.size() - kTagSize;
  uint8_t tag[kTagSize];
  Tag(key, datagram.first(signed_len), tag);
  if (sodium_memcmp(tag, datagram.data() + signed_len, kTagSize) != 0) {
    return Error(ErrorCode::kUnauthenticated, "udp packet: bad authentication tag");
  }
  return Opened{h, datagram.subspan(kHeaderSize, signed_len - kHeaderSize)};
}

Bytes SealDatagram(const Header& header, ByteView body, const SessionKey& key) {
  Bytes out;
  out.reserve(kHeaderSize + body.size() + kTagSize);
  ByteWriter w(&out);
  w.WriteU8(kMagic);
  w.WriteU8(kVersion);
  w.WriteU8(static_cast<uint8_t>(header.type));
  w.WriteU8(0);
  w.WriteU64Le(header.session_id);
  w.WriteU64Le(header.packet_number);
  w.WriteBytes(body);
  uint8_t tag[kTagSize];
  Tag(key, out, tag);
  w.WriteBytes(ByteView(tag, kTagSize));
  return out;
}

// HELLO: u8 token length (1..64), token, u16 padding length, padding (zeros).
Result<Hello> ParseHello(ByteView body) {
  ByteReader r(body);
  uint8_t n = 0;
  ByteView token, pad;
  Hello p;
  if (!r.ReadU8(&n) || n == 0 || n > kMaxTokenSize || !r.ReadView(n, &token) ||
      !r.ReadU16Le(&p.padding) || !r.ReadView(p.padding, &pad) || !r.empty()) {
    return Malformed("bad HELLO");
  }
  for (uint8_t b : pad) {
    if (b != 0) return Malformed("HELLO padding not zero");
  }
  p.token.assign(reinterpret_cast<const char*>(token.data()), token.size());
  return p;
}
Bytes SerializeHello(const Hello& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteU8(static_cast<uint8_t>(p.token.size()));
  w.WriteBytes(AsBytes(p.token));
  w.WriteU16Le(p.padding);
  out.resize(out.size() + p.padding, 0);
  return out;
}

// CHALLENGE: 16-byte cookie, varint HELLO packet number.
Result<Challenge> ParseChallenge(ByteView body) {
  ByteReader r(body);
  Challenge p;
  if (!r.ReadInto(p.cookie.data(), kCookieSize) || !r.ReadVarint(&p.hello_pn) || !r.empty()) {
    return Malformed("bad CHALLENGE");
  }
  return p;
}
Bytes SerializeChallenge(const Challenge& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteBytes(p.cookie);
  w.WriteVarint(p.hello_pn);
  return out;
}

// ECHO: 16-byte cookie, varint window end.
Result<Echo> ParseEcho(ByteView body) {
  ByteReader r(body);
  Echo p;
  if (!r.ReadInto(p.cookie.data(), kCookieSize) || !ReadVarintMax(&r, UINT32_MAX, &p.window_end) ||
      !r.empty()) {
    return Malformed("bad ECHO");
  }
  return p;
}
Bytes SerializeEcho(const Echo& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteBytes(p.cookie);
  w.WriteVarint(p.window_end);
  return out;
}

// DATA: varint block, u8 chunks, u8 k, u8 esi, u8 planned, varint rtt hint, symbol (the rest).
Result<Data> ParseData(ByteView body) {
  ByteReader r(body);
  Data p;
  uint64_t rtt = 0;
  if (!ReadVarintMax(&r, UINT32_MAX, &p.block) || !r.ReadU8(&p.chunks) || !r.ReadU8(&p.k) ||
      !r.ReadU8(&p.esi) || !r.ReadU8(&p.planned) || !ReadVarintMax(&r, UINT32_MAX, &rtt)) {
    return Malformed("bad DATA");
  }
  p.rtt_hint_us = static_cast<uint32_t>(rtt);
  if (p.chunks == 0 || p.k == 0 || p.k > 254 || p.esi > 254 || p.planned < p.k) {
    return Malformed("DATA block shape out of range");
  }
  p.symbol = r.Rest();
  if (p.symbol.empty()) return Malformed("DATA without symbol");
  return p;
}
Bytes SerializeData(const Data& p) {
  Bytes out;
  out.reserve(24 + p.symbol.size());
  ByteWriter w(&out);
  w.WriteVarint(p.block);
  w.WriteU8(p.chunks);
  w.WriteU8(p.k);
  w.WriteU8(p.esi);
  w.WriteU8(p.planned);
  w.WriteVarint(p.rtt_hint_us);
  w.WriteBytes(p.symbol);
  return out;
}

// FEEDBACK: varints largest pn, ack delay, received packets, received bytes, loss ppm, delivery
// rate, burst x16, window end; varint n + n x (varint block, u8 count); varint m + m x (varint
// pn, varint receive time).
Result<Feedback> ParseFeedback(ByteView body) {
  ByteReader r(body);
  Feedback p;
  uint64_t loss = 0, burst = 0, n = 0;
  if (!r.ReadVarint(&p.largest_pn) || !r.ReadVarint(&p.ack_delay_us) ||
      !r.ReadVarint(&p.received_packets) || !r.ReadVarint(&p.received_bytes) ||
      !ReadVarintMax(&r, 1000000, &loss) || !r.ReadVarint(&p.delivery_rate) ||
      !ReadVarintMax(&r, UINT32_MAX, &burst) || !ReadVarintMax(&r, UINT32_MAX, &p.window_end) ||
      !ReadVarintMax(&r, kMaxFeedbackBlocks, &n)) {
    return Malformed("bad FEEDBACK");
  }
  p.loss_ppm = static_cast<uint32_t>(loss);
  p.burst_x16 = static_cast<uint32_t>(burst);
  p.blocks.resize(n);
  for (BlockCount& b : p.blocks) {
    if (!ReadVarintMax(&r, UINT32_MAX, &b.block) || !r.ReadU8(&b.received)) {
      return Malformed("bad FEEDBACK block");
    }
  }
  if (!ReadVarintMax(&r, kMaxDelaySamples, &n)) return Malformed("bad FEEDBACK samples");
  p.samples.resize(n);
  for (DelaySample& s : p.samples) {
    if (!r.ReadVarint(&s.packet_number) || !r.ReadVarint(&s.receive_time_us)) {
      return Malformed("bad FEEDBACK sample");
    }
  }
  if (!r.empty()) return Malformed("FEEDBACK trailing bytes");
  return p;
}
Bytes SerializeFeedback(const Feedback& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteVarint(p.largest_pn);
  w.WriteVarint(p.ack_delay_us);
  w.WriteVarint(p.received_packets);
  w.WriteVarint(p.received_bytes);
  w.WriteVarint(p.loss_ppm);
  w.WriteVarint(p.delivery_rate);
  w.WriteVarint(p.burst_x16);
  w.WriteVarint(p.window_end);
  w.WriteVarint(p.blocks.size());
  for (const BlockCount& b : p.blocks) {
    w.WriteVarint(b.block);
    w.WriteU8(b.received);
  }
  w.WriteVarint(p.samples.size());
  for (const DelaySample& s : p.samples) {
    w.WriteVarint(s.packet_number);
    w.WriteVarint(s.receive_time_us);
  }
  return out;
}

// BLOCK_ACK: varint done_below; varint n + n x varint block; varint m + m x (varint block, u8
// needed).
Result<BlockAck> ParseBlockAck(ByteView body) {
  ByteReader r(body);
  BlockAck p;
  uint64_t n = 0;
  if (!ReadVarintMax(&r, UINT32_MAX, &p.done_below) || !ReadVarintMax(&r, kMaxAckedBlocks, &n)) {
    return Malformed("bad BLOCK_ACK");
  }
  p.done.resize(n);
  for (uint64_t& b : p.done) {
    if (!ReadVarintMax(&r, UINT32_MAX, &b)) return Malformed("bad BLOCK_ACK block");
  }
  if (!ReadVarintMax(&r, kMaxNeedMore, &n)) return Malformed("bad BLOCK_ACK need list");
  p.need_more.resize(n);
  for (NeedMore& m : p.need_more) {
    if (!ReadVarintMax(&r, UINT32_MAX, &m.block) || !r.ReadU8(&m.needed) || m.needed == 0 ||
        m.needed > 254) {
      return Malformed("bad BLOCK_ACK need entry");
    }
  }
  if (!r.empty()) return Malformed("BLOCK_ACK trailing bytes");
  return p;
}
Bytes SerializeBlockAck(const BlockAck& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteVarint(p.done_below);
  w.WriteVarint(p.done.size());
  for (uint64_t b : p.done) w.WriteVarint(b);
  w.WriteVarint(p.need_more.size());
  for (const NeedMore& m : p.need_more) {
    w.WriteVarint(m.block);
    w.WriteU8(m.needed);
  }
  return out;
}

// CLOSE: u16 code.
Result<Close> ParseClose(ByteView body) {
  ByteReader r(body);
  Close p;
  if (!r.ReadU16Le(&p.code) || !r.empty()) return Malformed("bad CLOSE");
  return p;
}
Bytes SerializeClose(const Close& p) {
  Bytes out;
  ByteWriter w(&out);
  w.WriteU16Le(p.code);
  return out;
}

bool ReplayWindow::WouldAccept(uint64_t pn) const {
  if (!any_ || pn > highest_) return true;
  if (highest_ - pn >= kSize) return false;
  return !seen_[pn % kSize];
}

bool ReplayWindow::Accept(uint64_t pn) {
  if (!WouldAccept(pn)) return false;
  if (!any_) {
    any_ = true;
    highest_ = pn;
    seen_.reset();
  } else if (pn > highest_) {
    const uint64_t shift = pn - highest_;
    if (shift >= kSize) {
      seen_.reset();
    } else {
      for (uint64_t q = highest_ + 1; q <= pn; ++q) seen_[q % kSize] = false;
    }
    highest_ = pn;
  }
  seen_[pn % kSize] = true;
  return true;
}

}  // namespace ds::fec
