// Shared by the UDP carrier fuzzers and the seed generator (fuzz/make_seeds.cc): the session
// the receiver fuzzer plays against, and its input layout.
#ifndef DELTASTREAM_FUZZ_FEC_FUZZ_UTIL_H_
#define DELTASTREAM_FUZZ_FEC_FUZZ_UTIL_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "fec/fec.h"

namespace ds::fuzz {

// fec_receiver_fuzzer input: records until the input ends, each
//   [u8 time step ms][u8 packet number step][u8 type][u16 LE length][length bytes]
// type 1..7: the bytes are a body, sealed with the session key under the running packet number
// (a step of 0 repeats the previous number: a replay); type 0: the bytes are a raw datagram;
// other types: a body sealed with a wrong key.
inline constexpr size_t kFecRecordHeader = 5;

inline fec::SessionParams FecFuzzParams() {
  fec::SessionParams p;
  p.session_id = 0x0123456789ABCDEFull;
  for (size_t i = 0; i < p.key.size(); ++i) p.key[i] = static_cast<uint8_t>(0xA0 + i);
  p.token = "fuzz-token";
  return p;
}

// The object the receiver expects: chunks of 4096, 4096 and 1000 bytes.
inline Bytes FecFuzzObject() {
  Bytes b(4096 + 4096 + 1000);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 31 + 7 + (i >> 9));
  return b;
}

inline std::vector<fec::ChunkSpec> FecFuzzChunks(const Bytes& object) {
  std::vector<fec::ChunkSpec> out;
  const uint32_t lens[] = {4096, 4096, 1000};
  uint64_t off = 0;
  for (uint32_t len : lens) {
    out.push_back({off, len, Sha256::Of(ByteView(object.data() + off, len))});
    off += len;
  }
  return out;
}

inline void AppendFecRecord(Bytes* out, uint8_t time_ms, uint8_t pn_step, uint8_t type,
                            ByteView bytes) {
  out->push_back(time_ms);
  out->push_back(pn_step);
  out->push_back(type);
  out->push_back(static_cast<uint8_t>(bytes.size()));
  out->push_back(static_cast<uint8_t>(bytes.size() >> 8));
  out->insert(out->end(), bytes.begin(), bytes.end());
}

}  // namespace ds::fuzz

#endif  // DELTASTREAM_FUZZ_FEC_FUZZ_UTIL_H_
