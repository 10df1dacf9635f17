// Finding the raw deflate streams inside container files (generator only): the members of a gzip
// file (.gz, .tgz) and the deflated entries of a zip file (.zip, .jar, .apk, ...), so that the
// generator can diff them as puffs (deflate_puff.h, DSPF transform "deflate").
//
// Every offset and length comes from untrusted bytes and is read through ByteReader and checked
// against the file; a file that is not a well-formed gzip or zip yields no streams (never an
// error): it is then simply diffed as bytes. Each stream returned has been puffed, and its puff
// re-encodes to exactly the stream's bytes (checked here), so the applier can rebuild it.
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_DEFLATE_STREAMS_H_
#define DELTASTREAM_DELTA_DEFLATE_STREAMS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/bytes.h"

namespace ds::delta {

struct DeflateStream {
  // What pairs a new stream with an old one: "gzip:<member index>" or "zip:<entry name>".
  std::string name;
  uint64_t offset = 0;  // The raw deflate stream, in the file.
  uint64_t length = 0;
  Bytes puff;  // Its puff.
};

struct DeflateStreamLimits {
  uint64_t min_length = 512;             // Shorter streams are not worth a segment of their own.
  uint64_t max_puff = 16u << 20;         // Longer puffs are left out (apply memory).
  uint64_t max_streams = 4096;           // At most this many, the longest first.
  uint64_t max_total_puff = 256u << 20;  // Puffs held at once (generator memory).
};

// The deflate streams of |file| that qualify, sorted by offset, disjoint.
std::vector<DeflateStream> FindDeflateStreams(ByteView file,
                                              const DeflateStreamLimits& limits = {});

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_DEFLATE_STREAMS_H_
