// Fuzzes the container scanner of the deflate transform (src/delta/deflate_streams.h): gzip and
// zip framing read from arbitrary bytes.
//
// Properties: FindDeflateStreams never crashes and never fails; every stream it returns lies
// inside the input, streams are sorted and disjoint, within the limits, and each puff re-encodes
// to exactly the stream's bytes. The input is scanned as it is and, so that the zip parser gets
// past its signature checks, with "PK\3\4" put in front.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "delta/deflate_puff.h"
#include "delta/deflate_streams.h"
#include "fuzz_util.h"

namespace {

void Check(ds::ByteView file) {
  ds::delta::DeflateStreamLimits limits;
  limits.min_length = 1;
  limits.max_puff = 1 << 20;
  limits.max_streams = 64;
  const std::vector<ds::delta::DeflateStream> streams = ds::delta::FindDeflateStreams(file, limits);
  FUZZ_CHECK(streams.size() <= limits.max_streams);
  uint64_t prev_end = 0;
  for (const ds::delta::DeflateStream& s : streams) {
    FUZZ_CHECK(s.length >= limits.min_length);
    FUZZ_CHECK(s.offset >= prev_end && s.offset <= file.size() &&
               s.length <= file.size() - s.offset);
    FUZZ_CHECK(s.puff.size() <= limits.max_puff);
    prev_end = s.offset + s.length;
    ds::Result<ds::Bytes> back = ds::delta::Huff(s.puff);
    FUZZ_CHECK(back.ok() && back->size() == s.length &&
               std::memcmp(back->data(), file.data() + s.offset, s.length) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ds::ByteView input(data, size);
  Check(input);
  ds::Bytes zip = {'P', 'K', 3, 4};
  zip.insert(zip.end(), data, data + size);
  Check(zip);
  return 0;
}
