// deltastream UDP carrier with forward error correction (docs/PROTOCOL.md, "UDP carrier").
//
// Public header of ds_fec. Three layers, usable separately:
//   - fec::ReedSolomon (reed_solomon.h): systematic Cauchy RS over GF(2^8) with ISA-L.
//   - packets (packet.h): the wire format, authenticated with a per-session key (libsodium);
//     one Parse*/Serialize* per packet type, OpenDatagram / SealDatagram / PeekHeader.
//   - sessions (session.h): UdpSender (proxy) and UdpReceiver (agent), sans-IO: no sockets, no
//     clocks; time is an explicit argument in microseconds of any monotonic clock.
//
// Integration, proxy side (sender), one UdpSender per session:
//   1. On "open stream with UDP carrier" (HTTPS), pick a random session id, 32-byte key and
//      token (randombytes_buf), answer them with the UDP port, and build the chunk list the agent
//      asked for (ChunkSpec per leaf: offset, length, SHA-256 from the chunk map). Create:
//        auto s = fec::UdpSender::Create({id, key, token}, chunks, read_fn);
//      read_fn(offset, out) fills |out| from the object (cache file); it is called when a block
//      starts, and the sender checks every chunk against its SHA-256 (kDigestMismatch).
//   2. One UDP socket for all sessions: route each datagram by fec::PeekHeader(d)->session_id
//      (unknown ids: drop), then s->OnDatagram(now, d, from_address_bytes). Its Status says why
//      a datagram was dropped (log at debug level, never act on it).
//   3. After every OnDatagram and whenever the timer fires:
//        while (auto out = s->Poll(now)) sendto(out->to, out->bytes);
//        arm_timer(s->NextTimeout(now));   // kNever: no timer, wait for datagrams
//      The sender paces itself: Poll returns nullopt until the next packet may leave, and
//      NextTimeout says when. It sends nothing to an address before that address echoed the
//      CHALLENGE cookie, except CHALLENGEs within 3x the bytes received from it.
//   4. s->done(): every block acknowledged, drop the session. s->state() == kFailed: drop it
//      too (s->error(): kUnavailable idle, kDigestMismatch, read error, the agent's CLOSE code).
//
// Integration, agent side (receiver):
//   1. Get {session id, key, token, port} over HTTPS; build the same chunk list from the chunk
//      map (the leaves still missing, in order). Create:
//        auto r = fec::UdpReceiver::Create({id, key, token}, chunks, deliver);
//      deliver(first_chunk, count, bytes) receives verified chunks in order (positions in the
//      list); feed them to the applier. Returning an error fails the session.
//   2. A connected UDP socket to the server. Loop:
//        while (auto out = r->Poll(now)) send(*out);
//        wait for a datagram or r->NextTimeout(now); on a datagram: r->OnDatagram(now, d);
//   3. r->done(): everything delivered (keep polling a few RTTs if convenient: it answers late
//      DATA with acks so the server finishes promptly). r->state() == kFailed: fall back to
//      the HTTP carrier from chunk r->next_chunk(); r->error() is kUnavailable when UDP is
//      blocked (no CHALLENGE within ReceiverConfig::handshake_timeout_us) or the session
//      stalled (no DATA within stall_timeout_us).
//
// Thread-safety: see each header; sessions are single-threaded objects.
#ifndef DELTASTREAM_FEC_FEC_H_
#define DELTASTREAM_FEC_FEC_H_

#include "fec/packet.h"
#include "fec/rate_control.h"
#include "fec/reed_solomon.h"
#include "fec/session.h"

#endif  // DELTASTREAM_FEC_FEC_H_
