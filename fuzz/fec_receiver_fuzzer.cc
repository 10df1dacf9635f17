// Fuzzes fec::UdpReceiver with datagrams sealed under the session's key (so the fuzzer reaches
// the decoder, the reorder buffer and the state machine, not just the tag check), replays, raw
// bytes and wrong keys. Whatever arrives, what is delivered is a prefix of the expected object
// in order, and the receiver's own datagrams are well-formed.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "fec_fuzz_util.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fec = ds::fec;
  static const ds::Bytes object = ds::fuzz::FecFuzzObject();
  static const std::vector<fec::ChunkSpec> chunks = ds::fuzz::FecFuzzChunks(object);
  const fec::SessionParams params = ds::fuzz::FecFuzzParams();
  ds::Bytes delivered;
  uint64_t next_first = 0;
  fec::ReceiverConfig config;
  config.window_chunks = 2;  // Blocks beyond it are refused; the seeds' blocks fit.
  auto created = fec::UdpReceiver::Create(
      params, chunks,
      [&](uint64_t first, uint64_t count, ds::ByteView bytes) {
        FUZZ_CHECK(first == next_first && count >= 1 && first + count <= chunks.size());
        next_first += count;
        delivered.insert(delivered.end(), bytes.begin(), bytes.end());
        return ds::Status::Ok();
      },
      config);
  FUZZ_CHECK(created.ok());
  fec::UdpReceiver& r = **created;
  fec::SessionKey wrong = params.key;
  wrong[0] ^= 1;
  fec::Micros now = 1'000'000;
  uint64_t pn = 0;
  auto drain = [&] {
    for (int i = 0; i < 64; ++i) {
      std::optional<ds::Bytes> out = r.Poll(now);
      if (!out) break;
      ds::Result<fec::Opened> o = fec::OpenDatagram(*out, params.session_id, params.key);
      FUZZ_CHECK(o.ok());
    }
  };
  drain();
  size_t at = 0;
  while (size - at >= ds::fuzz::kFecRecordHeader) {
    const uint8_t step_ms = data[at], pn_step = data[at + 1], type = data[at + 2];
    size_t len = ds::fuzz::LoadU16(data + at + 3);
    at += ds::fuzz::kFecRecordHeader;
    len = std::min(len, size - at);
    const ds::ByteView bytes(data + at, len);
    at += len;
    now += step_ms * 1000u;
    pn += pn_step;
    if (type == 0) {
      (void)r.OnDatagram(now, bytes);
    } else {
      const auto t = static_cast<fec::PacketType>(type >= 1 && type <= 7 ? type : 4);
      const fec::SessionKey& key = type <= 7 ? params.key : wrong;
      (void)r.OnDatagram(now, fec::SealDatagram(fec::Header{t, params.session_id, pn}, bytes, key));
    }
    drain();
    if (r.NextTimeout(now) != fec::kNever && r.NextTimeout(now) < now + 5'000'000) {
      now = std::max(now, r.NextTimeout(now));
      drain();
    }
  }
  FUZZ_CHECK(delivered.size() <= object.size());
  FUZZ_CHECK(std::equal(delivered.begin(), delivered.end(), object.begin()));
  if (r.done()) FUZZ_CHECK(delivered == object);
  if (std::getenv("FEC_FUZZ_VERBOSE")) {
    std::fprintf(stderr, "delivered %zu of %zu bytes, state %d\n", delivered.size(), object.size(),
                 static_cast<int>(r.state()));
  }
  return 0;
}
