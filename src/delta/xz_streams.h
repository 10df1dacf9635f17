// Finding .xz streams the xz transform can rebuild (generator only): a whole .xz file, or the .xz
// members of an ar archive (Debian packages: control.tar.xz, data.tar.xz), with the liblzma
// settings that reproduce each one exactly.
//
// Offsets and sizes come from untrusted bytes and are checked against the file; anything that
// does not parse, decode or reproduce is simply not returned (the byte diff takes it).
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_XZ_STREAMS_H_
#define DELTASTREAM_DELTA_XZ_STREAMS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/xz_rebuild.h"

namespace ds::delta {

struct XzStream {
  std::string name;  // Pairs new with old: "xz" (the whole file) or "ar:<member name>".
  uint64_t offset = 0;
  uint64_t length = 0;
  Bytes form;     // The replay form (lzma_replay.h).
  Bytes content;  // The decoded content: old streams, and new ones rebuilt by liblzma.
  // New streams (FindXzStreams' |prove|): true when a liblzma preset reproduces the stream within
  // the encoder memory allowed (|params|), false when it is rebuilt from its replay form.
  bool reencode = false;
  XzParams params;
};

struct XzStreamLimits {
  uint64_t min_length = 512;
  uint64_t max_content = 16u << 20;  // Bounds the replay form too.
  // Streams are rebuilt by compressing their content again with liblzma when a preset whose
  // encoder needs at most this much memory reproduces them (proving costs a compression), from
  // their replay forms otherwise (proving costs a decode). 0 (as GenerateOptions): replay forms
  // only.
  uint64_t max_encoder_memory = 0;
  uint64_t max_streams = 16;
};

// The settings that reproduce |stream| (one .xz stream whose content is |content|) exactly: the
// presets whose dictionary matches the block header, normal then extreme, with the single- or
// multi-threaded encoder as the block headers say. kUnsupported when none does.
Result<XzParams> FindXzParams(ByteView stream, ByteView content);

// The .xz streams of |file|, sorted by offset, each with its replay form and content. With |prove|
// each is known to be rebuilt exactly (streams that are not are dropped): with liblzma settings
// (reencode) or because its replay form codes back to it; without, the streams are only decoded
// (old files).
std::vector<XzStream> FindXzStreams(ByteView file, bool prove, const XzStreamLimits& limits = {});

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_XZ_STREAMS_H_
