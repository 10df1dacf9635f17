// .xz streams as "replay forms" (DSPF 1.4 transform xz-replay): a byte-oriented, bit-exact
// representation of one .xz stream whose LZMA2 data is spelled out as the decoded content plus the
// encoder's decisions, so that the stream can be rebuilt without re-compressing.
//
// LZMA's range coder turns a sequence of decisions (literal, match of length L at distance D,
// short rep, rep match k of length L) into bits deterministically: given the same decisions over
// the same content, any LZMA encoder writes the same bytes. XzToReplayForm() decodes a stream and
// records every decision; XzFromReplayForm() codes them again. Nothing searches for matches on the
// way back, so rebuilding costs about what decoding costs (no 94 MiB match finder as liblzma's
// xz -6 encoder needs, no proof by re-compressing at generation time), and it works for any
// encoder's LZMA2 stream (xz at any preset, -e, multi-threaded, 7-Zip, ...).
//
// Replay form (version 1; integers little-endian, varints LEB128; also in docs/FORMAT.md):
//
//   form    := "DSXR" version:u8(=1) expanded_len:varint frame_len:varint
//              inner_count:varint inner[inner_count] expanded[expanded_len] frame[frame_len] parse
//   inner   := gap:varint deflate_len:varint puff_len:varint
//              a deflate stream of the content held as its puff (deflate_puff.h): it starts |gap|
//              content bytes after the end of the previous one
//   expanded := the content, with each inner deflate stream replaced by its puff
//   frame   := the .xz stream with the payload of every LZMA2 chunk removed (stream header, block
//              headers, LZMA2 chunk headers, the end-of-LZMA2 byte, block padding and check,
//              index, stream footer, all verbatim)
//   parse   := token*        (one per LZMA decision, in stream order)
//   token   := 0x00                              literal (the byte is the content's)
//            | 0x01|h len:u8 dist:u24            match of length 2+len+256h at distance dist+1
//            | 0x02                              short rep (rep0, length 1)
//            | (0x03+k)|h len:u8                 rep match k (0..3) of length 2+len+256h
//   h       := 0x08 when the length is 258 or more, else 0
//
// The content of uncompressed LZMA2 chunks is in the content too (their tokens are absent).
// Lengths are 2..273 and distances at most the block's dictionary size and below 2^24; a match
// never crosses the end of a chunk. Inner streams: when the content is a tar archive, every
// regular file whose data is exactly a sequence of gzip members (a .deb's changelog.gz and man
// pages) contributes its members' deflate streams of 64 bytes or more, as long as their puffs
// total at most 64 MiB — so that a changed gzip'd file inside a .tar.xz costs what its content
// change costs, not its whole compressed size. The rule is deterministic: the applier derives the
// same form from the old stream.
//
// What is refused (kInvalidArgument, from XzToReplayForm; those streams stay with the byte diff):
// anything that is not a valid single .xz stream (CRC32s of the headers, index and footer, the
// blocks' integrity checks, sizes and index records are verified as liblzma does), filters other
// than one LZMA2 filter, LZMA2 chunks that do not decode to their declared sizes, a match reaching
// before the block or across its chunk, distances of 2^24 or more. XzFromReplayForm() checks the
// same rules on the form (it is untrusted: kPatchMalformed) and with |expected| compares as it goes
// (kPatchOutputMismatch at the first differing byte).
//
// Work and memory are linear: both directions are O(content + stream): ~40 MB/s of content each
// way on one core; coding holds the form, the content (rebuilt from it when it has inner puffs),
// the stream and ~30 KB of model state — no dictionary, no match finder.
//
// Thread-safety: plain functions.
#ifndef DELTASTREAM_DELTA_LZMA_REPLAY_H_
#define DELTASTREAM_DELTA_LZMA_REPLAY_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::delta {

inline constexpr uint8_t kReplayFormVersion = 1;

// Bytes of the parse token whose first byte is |tok|: 5 for a match, 2 for a rep match, 1 for a
// literal or a short rep (the token grammar below).
inline constexpr uint64_t ReplayTokenBytes(uint8_t tok) {
  const uint8_t kind = tok & 0x07;
  return kind == 0x01 ? 5 : (kind >= 0x03 ? 2 : 1);
}

struct ReplayForm {
  Bytes form;
  uint64_t stream_size = 0;  // Bytes of the input the .xz stream occupies.
  Bytes content;             // Its decoded content.
};

// Decodes the one .xz stream at the start of |stream| (bytes after it are ignored) into its
// replay form. kResourceLimit when its content exceeds |max_content|.
Result<ReplayForm> XzToReplayForm(ByteView stream, uint64_t max_content);

// The exact .xz stream a replay form was made from. |form| is untrusted. With |expected| not
// empty, stops at the first byte that differs from it (kPatchOutputMismatch).
Result<Bytes> XzFromReplayForm(ByteView form, ByteView expected = {});

// Where the parts of a replay form are (offsets into the form); kPatchMalformed when its header
// is not valid.
struct ReplayFormLayout {
  uint64_t content_offset = 0, content_length = 0;
  uint64_t frame_offset = 0, frame_length = 0;
  uint64_t parse_offset = 0, parse_length = 0;
};
Result<ReplayFormLayout> ReplayFormSections(ByteView form);

// Where each token of a replay form's parse starts: in the form's content section (increasing;
// |mapped| is false for tokens inside an inner deflate stream, which the form holds as a puff) and
// in the form, for a generator that aligns two parses through their contents. |fn| is called for
// each token in order, as the walk finds it (nothing is collected: a parse has millions of tokens).
struct ReplayToken {
  uint64_t content_pos = 0;  // Offset in the form (of the content section's byte).
  uint64_t form_offset = 0;
  bool mapped = true;
};
Status ForEachReplayToken(ByteView form, const std::function<void(const ReplayToken&)>& fn);

// The decoded content of the stream a replay form stands for (inner puffs huffed back).
Result<Bytes> ReplayFormContent(ByteView form);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_LZMA_REPLAY_H_
