// Public API of the delta engine's generator (server side only; never linked into the agent).
//
// GeneratePatch matches the whole new file against the whole old file with a suffix array, cuts
// the new file into segments, and for each segment keeps the smallest of:
//   copydiff - bsdiff-style copies with byte-wise differences plus literals, control/diff/literal
//              streams each compressed by zstd or LZMA2 (sparse ones in zero-run form);
//   zstdref  - zstd with a window of the old file as its prefix (like `zstd --patch-from`);
//   lzmaref  - LZMA2 with the old file as preset dictionary (small files; best on text);
//   stored   - the bytes themselves (never worse than shipping the file).
// Files up to 1 MiB are also tried as one whole-file reference segment, larger ones that changed
// a lot (or text with many new pieces) as one LZMA2 reference segment per thread, each with the
// old stretch it comes from; the smallest plan wins.
//
// Memory: old (n) + new (m) + suffix array (4n, 8n above 2 GiB) + per worker thread one segment's
// streams (~4 x segment_size) and zstd's working state (level dependent, ~100-400 MiB at 19-22).
//
// Thread-safety: GeneratePatch may be called concurrently; it runs its own worker threads.
#ifndef DELTASTREAM_DELTA_DELTA_GEN_H_
#define DELTASTREAM_DELTA_DELTA_GEN_H_

#include <cstdint>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

struct GenerateOptions {
  // New bytes per segment: the unit of streaming verification and resume.
  uint64_t segment_size = 4ull << 20;
  // Files whose new size is at most this are also tried as a single segment.
  uint64_t whole_file_limit = 16ull << 20;
  // Largest old window a zstdref segment may reference (the applier holds it in memory).
  uint64_t max_ref_window = 32ull << 20;
  // Old window per segment for zstdref trials in segmented patches.
  uint64_t segment_ref_window = 8ull << 20;
  // zstd levels for the copydiff streams and for zstdref segments (1-22).
  int stream_level = 19;
  int ref_level = 22;
  // Try zstdref segments at all.
  bool try_zstd_ref = true;
  // Try the executable transforms (branch filters) on ELF files; kept per segment when smaller.
  bool try_transforms = true;
  // Try the recompression transforms: deflate streams of gzip and zip files diffed as puffs, and
  // .xz streams (whole files, .deb members) diffed on their content, both rebuilt bit-exactly;
  // the patch is kept when smaller than the plain one.
  bool try_recompress = true;
  // Largest decoded form (puff or xz content, old or new) of a stream these transforms take on;
  // the applier holds two of them and the stream.
  uint64_t max_decoded = 16ull << 20;
  // How .xz streams are rebuilt: by compressing their content again with the liblzma preset
  // proven to reproduce them (transform xz: the smallest patches, but the device runs liblzma's
  // encoder, ~94 MiB at xz -6, and proving costs a compression) when that preset's encoder needs
  // at most this much memory; otherwise from their replay forms (transform xz-replay: content
  // plus the encoder's decisions, coded again on the device without a match finder, for any
  // LZMA2 encoder; larger patches). 0 (the default): replay forms only, so that every device can
  // apply the patch in bounded memory whatever liblzma it has.
  uint64_t max_encoder_memory = 0;
  // Worker threads; 0 = one per core.
  int threads = 0;
};

struct GenerateStats {
  uint64_t segments = 0;
  uint64_t stored_segments = 0;
  uint64_t copydiff_segments = 0;
  uint64_t ref_segments = 0;  // zstdref + lzmaref
  uint64_t copy_ops = 0;
  double unmatched_fraction = -1;  // Sampled share of new pieces absent from old (-1: not taken).
  // Executable transforms: segments that use one, and the bytes they saved over the same
  // segments' plain encoding (as estimated by the generator); time spent trying them.
  uint64_t transform_segments = 0;
  uint64_t transform_saved_bytes = 0;
  double transform_seconds = 0;
  // Recompression transforms (deflate, xz): segments that use them, the bytes they saved over the
  // plain encoding of the same streams, and the time spent on them (finding, decoding, proving,
  // matching and encoding streams).
  uint64_t recompress_segments = 0;
  uint64_t recompress_saved_bytes = 0;
  double recompress_seconds = 0;
  // Whole-file reference candidates of the plain patch made beside a recompression plan that were
  // given up once they passed the plan's bound (they could not have been chosen).
  uint64_t ref_trials_given_up = 0;
  double suffix_sort_seconds = 0;
  double match_seconds = 0;
  double total_seconds = 0;
};

// Makes a patch that rebuilds |neu| from |old|.
Result<Bytes> GeneratePatch(ByteView old, ByteView neu, const GenerateOptions& options = {},
                            GenerateStats* stats = nullptr);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_DELTA_GEN_H_
