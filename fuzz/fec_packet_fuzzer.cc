// Fuzzes the UDP carrier's packet parsers (src/fec/packet.h): the header and tag check, and one
// parser per body type. No crash, no large allocation; what parses serializes to bytes that
// parse to the same serialization.
#include <cstddef>
#include <cstdint>

#include "fec/packet.h"
#include "fuzz_util.h"

namespace {

using ds::Bytes;
using ds::ByteView;
namespace fec = ds::fec;

template <typename T, typename P, typename S>
void RoundTrip(ByteView body, P parse, S serialize) {
  ds::Result<T> r = parse(body);
  if (!r.ok()) {
    FUZZ_CHECK(r.status().code() == ds::ErrorCode::kProtocol);
    return;
  }
  const Bytes once = serialize(*r);
  ds::Result<T> again = parse(once);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(serialize(*again) == once);
  FUZZ_CHECK(once.size() <= body.size());  // Canonical encodings are never longer.
}

}  // namespace

// Input: selector byte (mod 8); 0 = a whole datagram (PeekHeader, OpenDatagram under a fixed
// key, then the body parser its type names), 1..7 = the body parser of that packet type.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  ByteView rest(data + 1, size - 1);
  int selector = data[0] % 8;
  if (selector == 0) {
    fec::SessionKey key;
    for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i);
    ds::Result<fec::Header> h = fec::PeekHeader(rest);
    ds::Result<fec::Opened> o = fec::OpenDatagram(rest, h.ok() ? h->session_id : 0, key);
    if (!h.ok()) {
      FUZZ_CHECK(!o.ok());
      return 0;
    }
    if (o.ok()) {
      // Only a datagram sealed with the key opens; sealing again reproduces it.
      const Bytes again = fec::SealDatagram(o->header, o->body, key);
      FUZZ_CHECK(again.size() == rest.size() &&
                 std::equal(again.begin(), again.end(), rest.begin()));
      selector = static_cast<int>(o->header.type);
      rest = o->body;
    } else {
      FUZZ_CHECK(o.status().code() == ds::ErrorCode::kUnauthenticated);
      selector = static_cast<int>(h->type);
      rest = rest.subspan(fec::kHeaderSize, rest.size() - fec::kHeaderSize - fec::kTagSize);
    }
  }
  switch (selector) {
    case 1:
      RoundTrip<fec::Hello>(rest, fec::ParseHello, fec::SerializeHello);
      break;
    case 2:
      RoundTrip<fec::Challenge>(rest, fec::ParseChallenge, fec::SerializeChallenge);
      break;
    case 3:
      RoundTrip<fec::Echo>(rest, fec::ParseEcho, fec::SerializeEcho);
      break;
    case 4: {
      ds::Result<fec::Data> d = fec::ParseData(rest);
      if (d.ok()) {
        FUZZ_CHECK(!d->symbol.empty() && d->k >= 1 && d->planned >= d->k && d->chunks >= 1);
        const Bytes once = fec::SerializeData(*d);
        ds::Result<fec::Data> again = fec::ParseData(once);
        FUZZ_CHECK(again.ok() && fec::SerializeData(*again) == once);
      }
      break;
    }
    case 5:
      RoundTrip<fec::Feedback>(rest, fec::ParseFeedback, fec::SerializeFeedback);
      break;
    case 6:
      RoundTrip<fec::BlockAck>(rest, fec::ParseBlockAck, fec::SerializeBlockAck);
      break;
    case 7:
      RoundTrip<fec::Close>(rest, fec::ParseClose, fec::SerializeClose);
      break;
  }
  return 0;
}
