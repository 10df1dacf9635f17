// Public API of the delta engine's apply side: streaming patch application and inspection.
//
// This header and the `ds_delta_apply` library are all a device needs; the generator lives in
// delta_gen.h / `ds_delta_gen`, which the agent never links.
//
// Applying is push-based: feed the patch with Write() in pieces of any size, then Finish(). The
// result does not depend on where the pieces split. Memory is bounded by the per-segment sizes
// the patch declares in its header, which are checked against ApplyLimits before any segment is
// decoded; the old file is read with positional reads through a small window, never loaded whole.
//
// Thread-safety: a PatchApplier is used by one thread at a time.
#ifndef DELTASTREAM_DELTA_DELTA_H_
#define DELTASTREAM_DELTA_DELTA_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/patch_format.h"

namespace ds {
class RandomAccessFile;
}

namespace ds::delta {

// Random access to the old (base) version.
class OldSource {
 public:
  virtual ~OldSource() = default;
  virtual uint64_t size() const = 0;
  // Fills |out| from |offset|. REQUIRES: offset + out.size() <= size().
  virtual Status ReadAt(uint64_t offset, std::span<uint8_t> out) const = 0;
  // True when ReadAt may be called from two threads at once; the applier then checks the old
  // file's SHA-256 on a second thread while the first segment is being rebuilt.
  virtual bool concurrent_reads() const { return false; }
  // True when a read costs no more than copying the bytes (the source is in memory): the applier
  // then reads exactly what it needs instead of buffering windows.
  virtual bool cheap_reads() const { return false; }
};

// An OldSource over bytes in memory; |data| must outlive it.
class MemoryOldSource : public OldSource {
 public:
  explicit MemoryOldSource(ByteView data) : data_(data) {}
  uint64_t size() const override { return data_.size(); }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override;
  bool concurrent_reads() const override { return true; }
  bool cheap_reads() const override { return true; }

 private:
  ByteView data_;
};

// An OldSource over a file read with pread; |file| must outlive it.
class FileOldSource : public OldSource {
 public:
  explicit FileOldSource(const RandomAccessFile* file) : file_(file) {}
  uint64_t size() const override;
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override;
  bool concurrent_reads() const override { return true; }  // pread.

 private:
  const RandomAccessFile* file_;
};

// Where rebuilt bytes go, in order.
class OutputSink {
 public:
  virtual ~OutputSink() = default;
  virtual Status Write(ByteView data) = 0;
  // Fills |out| with bytes this sink received earlier, from |offset| in the output. VCDIFF
  // windows that copy from earlier target data (VCD_TARGET) need it; DSPF patches never do.
  // REQUIRES: offset + out.size() <= bytes written so far. The default refuses (kUnsupported).
  virtual Status ReadBack(uint64_t offset, std::span<uint8_t> out);
};

class VectorSink : public OutputSink {
 public:
  Status Write(ByteView data) override {
    bytes.insert(bytes.end(), data.begin(), data.end());
    return Status::Ok();
  }
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) override;
  Bytes bytes;
};

// What an applier is willing to spend. A patch declaring more is refused with kResourceLimit.
struct ApplyLimits {
  uint64_t max_segment_output = 64ull << 20;
  uint64_t max_segment_payload = 96ull << 20;
  uint64_t max_ref_window = 64ull << 20;
  // Largest decoded form (puff or xz content, old or new) of a recompression segment (DSPF 1.2);
  // such a segment holds both and the re-encoded stream.
  uint64_t max_decoded = 64ull << 20;
  // Most memory the xz encoder of an xz segment may need (DSPF 1.2; liblzma's estimate).
  uint64_t max_encoder_memory = 128ull << 20;
  // Hash the whole old file before the first segment (kPatchWrongBase on mismatch). Leave on
  // unless the caller has verified the old file's SHA-256 itself.
  bool verify_old_hash = true;
  // Most memory the applier spends on rebuilding later segments ahead (on other threads) while
  // the current one is rebuilt; 0 turns the look-ahead off.
  uint64_t lookahead_memory = 32ull << 20;
};

// Where a PatchApplier stood between two segments: enough for a later applier of the same patch,
// over the same old file and an output sink already holding |output_bytes|, to continue.
struct ApplyCheckpoint {
  uint64_t patch_offset = 0;  // Patch bytes consumed (the next segment starts here).
  uint64_t segments_done = 0;
  uint64_t output_bytes = 0;
};

class PatchApplier {
 public:
  // |old| and |out| must outlive the applier.
  PatchApplier(const OldSource* old, OutputSink* out, ApplyLimits limits = {});
  ~PatchApplier();
  PatchApplier(const PatchApplier&) = delete;
  PatchApplier& operator=(const PatchApplier&) = delete;

  // Consumes the next bytes of the patch. After an error every later call returns that error.
  Status Write(ByteView data);
  // Succeeds only when the whole patch was consumed and the output's size and SHA-256 match the
  // header. Errors: kPatchTruncated, kPatchResultMismatch, or the earlier Write error.
  Status Finish();

  // Called after each completed segment, once its output was written to the sink; an error
  // from it stops the applier with that error.
  void SetCheckpointCallback(std::function<Status(const ApplyCheckpoint&)> fn);
  // Patch bytes the file header takes. REQUIRES: header_parsed().
  uint64_t header_size() const;
  // Continues from |cp| (made by an earlier applier of the same patch): call after writing
  // exactly the patch's first header_size() bytes, then write the patch from cp.patch_offset.
  // The sink must already hold the first cp.output_bytes of the output. Finish() then checks the
  // output size but not its SHA-256 (this applier did not see all of it): the caller checks
  // the whole output. kInvalidArgument when |cp| does not fit the patch or the state.
  Status ResumeAt(const ApplyCheckpoint& cp);

  bool header_parsed() const;
  // REQUIRES: header_parsed().
  const FileHeader& header() const;
  uint64_t segments_done() const;
  uint64_t output_bytes() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Applies |patch| to |old| in memory (tests, small artifacts).
Result<Bytes> ApplyPatch(ByteView old, ByteView patch, const ApplyLimits& limits = {});

// Streams |patch_path| onto |old_path|, writing |out_path| atomically: |out_path| is replaced only
// by a complete file whose SHA-256 matches the patch header; on any error it is left untouched.
// The new file gets the old file's permission bits. |out_path| may equal |old_path|.
Status ApplyPatchFile(const std::string& old_path, const std::string& patch_path,
                      const std::string& out_path, const ApplyLimits& limits = {});

struct SegmentInfo {
  SegmentHeader header;
  uint64_t patch_offset = 0;  // Where the segment starts in the patch.
  // kZstdRef / kLzmaRef: the reference window in the old file.
  uint64_t ref_offset = 0;
  uint64_t ref_length = 0;
  // kCopyDiff: raw and encoded sizes of the control, diff and literal streams.
  uint64_t stream_raw[3] = {0, 0, 0};
  uint64_t stream_encoded[3] = {0, 0, 0};
  StreamCodec stream_codec[3] = {StreamCodec::kStored, StreamCodec::kStored, StreamCodec::kStored};
  // Streams coded in zero-run form (DSPF 1.3), and that form's length.
  bool stream_zero_run[3] = {false, false, false};
  uint64_t stream_form[3] = {0, 0, 0};
};

struct PatchInfo {
  FileHeader header;
  uint64_t header_size = 0;
  uint64_t patch_size = 0;
  std::vector<SegmentInfo> segments;
};

// Walks a whole patch without the old file: checks framing, order and every checksum except the
// rebuilt-output ones, and describes each segment.
Result<PatchInfo> InspectPatch(ByteView patch);
// True when a copydiff stream of the patch is coded in zero-run form (a DSPF 1.3 feature).
bool UsesZeroRunStreams(const PatchInfo& info);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_DELTA_H_
