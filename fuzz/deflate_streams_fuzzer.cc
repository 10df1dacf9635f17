// Fuzzes the container scanners of the recompression transforms: gzip and zip framing
// (src/delta/deflate_streams.h), .xz and ar framing (src/delta/xz_streams.h), read from arbitrary
// bytes.
//
// Properties: FindDeflateStreams and FindXzStreams never crash and never fail; every stream they
// return lies inside the input, streams are sorted and disjoint, within the limits; each puff
// re-encodes to exactly the stream's bytes, and each xz stream's content decodes again from its
// bytes. The input is scanned as it is and with "PK\3\4" and "!<arch>\n" put in front, so that the
// zip and ar parsers get past their signature checks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "delta/deflate_puff.h"
#include "delta/deflate_streams.h"
#include "delta/lzma_replay.h"
#include "delta/xz_rebuild.h"
#include "delta/xz_streams.h"
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

void CheckXz(ds::ByteView file) {
  ds::delta::XzStreamLimits limits;
  limits.min_length = 1;
  limits.max_content = 1 << 20;
  limits.max_streams = 16;
  // Replay forms only: proving one is coding it again (cheap); proving liblzma settings
  // compresses with encoders of up to ~100 MiB, too slow per input.
  limits.max_encoder_memory = 0;
  for (const bool prove : {false, true}) {
    const std::vector<ds::delta::XzStream> streams = ds::delta::FindXzStreams(file, prove, limits);
    FUZZ_CHECK(streams.size() <= limits.max_streams);
    uint64_t prev_end = 0;
    for (const ds::delta::XzStream& s : streams) {
      FUZZ_CHECK(s.offset >= prev_end && s.offset <= file.size() &&
                 s.length <= file.size() - s.offset && s.length >= limits.min_length);
      FUZZ_CHECK(s.form.size() <= limits.max_content && !s.reencode);
      prev_end = s.offset + s.length;
      const ds::ByteView stream = file.subspan(s.offset, s.length);
      // What the replay decoder accepts, liblzma decodes to the same content.
      uint64_t consumed = 0;
      ds::Result<ds::Bytes> lz = ds::delta::XzDecode(stream, limits.max_content, &consumed);
      FUZZ_CHECK(lz.ok() && consumed == s.length && *lz == s.content);
      ds::Result<ds::Bytes> content = ds::delta::ReplayFormContent(s.form);
      FUZZ_CHECK(content.ok() && *content == s.content);
      if (prove) {
        // A proven replay form codes back to its stream.
        ds::Result<ds::Bytes> back = ds::delta::XzFromReplayForm(s.form);
        FUZZ_CHECK(back.ok() && back->size() == s.length &&
                   std::memcmp(back->data(), stream.data(), s.length) == 0);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ds::ByteView input(data, size);
  Check(input);
  ds::Bytes zip = {'P', 'K', 3, 4};
  zip.insert(zip.end(), data, data + size);
  Check(zip);
  CheckXz(input);
  ds::Bytes ar = {'!', '<', 'a', 'r', 'c', 'h', '>', '\n'};
  ar.insert(ar.end(), data, data + size);
  CheckXz(ar);
  return 0;
}
