// PatchApplier: the push-based, bounded-memory patch decoder.
//
// States: file header -> (segment header -> payload)* -> done. Header bytes are collected in a
// small buffer (bounded by the format's maximum header lengths); a payload is collected whole,
// bounded by the header's declared maximum, which was checked against ApplyLimits. Each segment
// is checked (CRC over header and payload), decoded into one output buffer, checked again
// (output CRC), hashed into the running SHA-256 and handed to the sink.
#define ZSTD_STATIC_LINKING_ONLY
#include <lzma.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/byte_reader.h"
#include "common/fs.h"
#include "common/hash.h"
#include "delta/branch_filter.h"
#include "delta/deflate_puff.h"
#include "delta/delta.h"
#include "delta/lzma_replay.h"
#include "delta/vcdiff.h"
#include "delta/xz_rebuild.h"

namespace ds::delta {

Status MemoryOldSource::ReadAt(uint64_t offset, std::span<uint8_t> out) const {
  uint64_t end;
  if (!CheckedAddU64(offset, out.size(), &end) || end > data_.size()) {
    return Error(ErrorCode::kInternal, "old read out of range");
  }
  if (!out.empty()) std::memcpy(out.data(), data_.data() + offset, out.size());
  return Status::Ok();
}

Status OutputSink::ReadBack(uint64_t offset, std::span<uint8_t> out) {
  return Error(ErrorCode::kUnsupported,
               "this output sink cannot read back earlier output (a VCDIFF VCD_TARGET window "
               "needs it)");
}

Status VectorSink::ReadBack(uint64_t offset, std::span<uint8_t> out) {
  uint64_t end;
  if (!CheckedAddU64(offset, out.size(), &end) || end > bytes.size()) {
    return Error(ErrorCode::kInternal, "read back past the output");
  }
  if (!out.empty()) std::memcpy(out.data(), bytes.data() + offset, out.size());
  return Status::Ok();
}

uint64_t FileOldSource::size() const { return file_->size(); }

Status FileOldSource::ReadAt(uint64_t offset, std::span<uint8_t> out) const {
  return file_->ReadAt(offset, out);
}

namespace {

constexpr size_t kOldWindowSize = 64 << 10;
constexpr size_t kJumpWindowSize = 4 << 10;
constexpr size_t kDirectReadSize = 4 << 10;
constexpr size_t kHashChunkSize = 1 << 20;

// dst[i] += d[i]: the buffers never overlap (the output and a decoded stream), which lets the
// compiler vectorise the loop without run-time alias checks.
void AddBytes(uint8_t* __restrict dst, const uint8_t* __restrict d, size_t n) {
#pragma GCC ivdep
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(dst[i] + d[i]);
}

// Serves the copies' reads of the old file. Copies mostly walk through the old file, broken by
// short copies from elsewhere (an instruction or string that moved): the walk is served from a
// 64 KiB window, a jump from a small window of its own, so that neither evicts the other and a
// jump costs a few KiB of reading rather than 64. Sources in memory are read directly.
class OldWindowReader {
 public:
  explicit OldWindowReader(const OldSource* src) : src_(src) {}

  // REQUIRES: pos + out.size() <= src->size() (checked by the caller).
  Status Read(uint64_t pos, std::span<uint8_t> out) {
    if (src_->cheap_reads()) return src_->ReadAt(pos, out);
    while (!out.empty()) {
      if (Serve(walk_, pos, out) || Serve(jump_, pos, out)) continue;
      if (out.size() >= kDirectReadSize) return src_->ReadAt(pos, out);
      // Ahead of the walk (or before any): the walk moves on; elsewhere it is a jump.
      const bool walk =
          walk_.data.empty() || (pos >= walk_.start && pos - walk_.start < 2 * kOldWindowSize);
      Window& w = walk ? walk_ : jump_;
      const uint64_t n =
          std::min<uint64_t>(walk ? kOldWindowSize : kJumpWindowSize, src_->size() - pos);
      w.data.resize(n);
      w.start = pos;
      DS_RETURN_IF_ERROR(src_->ReadAt(pos, w.data));
    }
    return Status::Ok();
  }

 private:
  struct Window {
    uint64_t start = 0;
    Bytes data;
  };
  // Copies what |w| holds of [pos, +out) and advances both; false when it holds nothing of it.
  static bool Serve(const Window& w, uint64_t& pos, std::span<uint8_t>& out) {
    if (pos < w.start || pos - w.start >= w.data.size()) return false;
    const size_t off = pos - w.start;
    const size_t n = std::min(out.size(), w.data.size() - off);
    std::memcpy(out.data(), w.data.data() + off, n);
    out = out.subspan(n);
    pos += n;
    return true;
  }

  const OldSource* src_;
  Window walk_, jump_;
};

Status DecodeZstd(ZSTD_DCtx* dctx, ByteView frame, ByteView prefix, std::span<uint8_t> out) {
  ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
  ZSTD_DCtx_setParameter(dctx, ZSTD_d_format, ZSTD_f_zstd1_magicless);
  ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX);
  if (!prefix.empty()) {
    const size_t rc = ZSTD_DCtx_refPrefix(dctx, prefix.data(), prefix.size());
    if (ZSTD_isError(rc)) return Error(ErrorCode::kPatchDecompress, ZSTD_getErrorName(rc));
  }
  const size_t n = ZSTD_decompressDCtx(dctx, out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) {
    return Error(ErrorCode::kPatchDecompress, std::string("zstd: ") + ZSTD_getErrorName(n));
  }
  if (n != out.size()) {
    return Error(ErrorCode::kPatchDecompress, "zstd stream decoded to " + std::to_string(n) +
                                                  " bytes, expected " + std::to_string(out.size()));
  }
  return Status::Ok();
}

// Decodes a raw LZMA2 stream into exactly |out|. The dictionary never needs to exceed the output.
Status DecodeLzma2(ByteView src, std::span<uint8_t> out) {
  lzma_options_lzma opt{};
  if (lzma_lzma_preset(&opt, 0)) return Error(ErrorCode::kInternal, "lzma preset");
  opt.dict_size = std::max<uint32_t>(LZMA_DICT_SIZE_MIN,
                                     static_cast<uint32_t>(std::min<size_t>(out.size(), 1u << 30)));
  lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
  size_t in_pos = 0, out_pos = 0;
  const lzma_ret rc = lzma_raw_buffer_decode(filters, nullptr, src.data(), &in_pos, src.size(),
                                             out.data(), &out_pos, out.size());
  if (rc != LZMA_OK && rc != LZMA_STREAM_END) {
    return Error(ErrorCode::kPatchDecompress,
                 "lzma2 stream is corrupt (" + std::to_string(static_cast<int>(rc)) + ")");
  }
  if (in_pos != src.size() || out_pos != out.size()) {
    return Error(ErrorCode::kPatchDecompress, "lzma2 stream decoded to the wrong length");
  }
  return Status::Ok();
}

// Decodes a raw LZMA2 stream whose dictionary starts with |*ref| into exactly |out|. The decoder
// copies the reference into its dictionary at init, so |*ref| is released before decoding.
Status DecodeLzmaRef(ByteView src, Bytes* ref, uint64_t new_length, std::span<uint8_t> out) {
  const uint64_t dict = LzmaRefDictSize(ref->size(), new_length);
  if (dict > (1ull << 31)) return Error(ErrorCode::kResourceLimit, "lzma dictionary too large");
  lzma_options_lzma opt{};
  if (lzma_lzma_preset(&opt, 0)) return Error(ErrorCode::kInternal, "lzma preset");
  opt.dict_size = static_cast<uint32_t>(dict);
  opt.preset_dict = ref->empty() ? nullptr : ref->data();
  opt.preset_dict_size = static_cast<uint32_t>(ref->size());
  lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
  lzma_stream strm = LZMA_STREAM_INIT;
  if (lzma_raw_decoder(&strm, filters) != LZMA_OK) {
    return Error(ErrorCode::kResourceLimit, "cannot start the lzma decoder");
  }
  Bytes().swap(*ref);
  strm.next_in = src.data();
  strm.avail_in = src.size();
  strm.next_out = out.data();
  strm.avail_out = out.size();
  lzma_ret rc = lzma_code(&strm, LZMA_FINISH);
  // A full output buffer can stop the decoder just before the stream's end marker.
  if (rc == LZMA_OK && strm.avail_out == 0 && strm.avail_in > 0) rc = lzma_code(&strm, LZMA_FINISH);
  const bool complete = strm.avail_in == 0 && strm.avail_out == 0;
  lzma_end(&strm);
  if ((rc != LZMA_OK && rc != LZMA_STREAM_END) || !complete) {
    return Error(ErrorCode::kPatchDecompress,
                 "lzma2 reference stream is corrupt or has the wrong length");
  }
  return Status::Ok();
}

// This applier holds a control stream whole: it refuses (resource_limit) one longer than its
// segment's output plus this much. Our generator's are 1-2 % of the output.
constexpr uint64_t kControlSlack = 64 << 10;

// Each control entry yields at least one byte and takes at most three 10-byte varints; beyond
// what the format allows, a stream is malformed, beyond what this applier holds, too costly.
Status CheckStreamSizes(const CopyDiffLayout& layout, uint64_t n) {
  if (layout.raw_len[kDiffStream] > n || layout.raw_len[kLiteralStream] > n ||
      layout.raw_len[kControlStream] > 30 * n) {
    return Error(ErrorCode::kPatchMalformed, "copydiff streams larger than their segment");
  }
  if (layout.raw_len[kControlStream] > n + kControlSlack) {
    return Error(ErrorCode::kResourceLimit,
                 "control stream of " + std::to_string(layout.raw_len[kControlStream]) +
                     " bytes for a segment of " + std::to_string(n) +
                     " (this applier holds at most the output's length + 64 KiB)");
  }
  return Status::Ok();
}

// A copydiff segment's streams, decoded. The diff stream may stay in zero-run form (checked):
// the copies then skip its zeros instead of adding them.
struct StreamViews {
  ByteView ctrl, lit;
  ByteView diff;  // The diff stream, or its zero-run form when diff_form.
  bool diff_form = false;
  uint64_t diff_len = 0;  // The diff stream's length (raw_len).
};

// Decodes the three streams of a copydiff payload into buffers of its own.
class StreamDecoder {
 public:
  StreamDecoder() = default;
  StreamDecoder(const StreamDecoder&) = delete;
  StreamDecoder& operator=(const StreamDecoder&) = delete;
  ~StreamDecoder() {
    ZSTD_freeDCtx(dctx_[0]);
    ZSTD_freeDCtx(dctx_[1]);
  }

  // Decodes the streams (or takes them from the payload when stored as they are). The diff
  // stream decodes on a second thread while this one decodes the other two, when both sides have
  // enough to do (LZMA2 decodes at ~50-100 MB/s: it is most of a plain apply's time).
  Status Decode(const CopyDiffLayout& layout, StreamViews* out) {
    out->diff_len = layout.raw_len[kDiffStream];
    out->diff_form = layout.zero_run[kDiffStream];
    const size_t others =
        layout.encoded[kControlStream].size() + layout.encoded[kLiteralStream].size();
    Status diff_status;
    std::thread t;
    if (layout.codec[kDiffStream] == StreamCodec::kStored ||
        layout.encoded[kDiffStream].size() < kParallelDecodeMin || others < kParallelDecodeMin) {
      DS_RETURN_IF_ERROR(DecodeOne(layout, kDiffStream, 0, &out->diff));
    } else {
      t = std::thread([&] { diff_status = DecodeOne(layout, kDiffStream, 1, &out->diff); });
    }
    Status s = DecodeOne(layout, kControlStream, 0, &out->ctrl);
    if (s.ok()) s = DecodeOne(layout, kLiteralStream, 0, &out->lit);
    if (t.joinable()) t.join();
    DS_RETURN_IF_ERROR(s);
    return diff_status;
  }

 private:
  static constexpr size_t kParallelDecodeMin = 16 << 10;

  // Stream |i| (into bufs_[i] when compressed, through forms_[i] when in zero-run form; the diff
  // stream's form is only checked, not expanded), zstd frames with dctx_[ctx].
  Status DecodeOne(const CopyDiffLayout& layout, int i, int ctx, ByteView* out) {
    ByteView decoded = layout.encoded[i];
    Bytes* target = layout.zero_run[i] ? &forms_[i] : &bufs_[i];
    if (layout.codec[i] != StreamCodec::kStored) {
      target->resize(layout.zero_run[i] ? layout.form_len[i] : layout.raw_len[i]);
      if (layout.codec[i] == StreamCodec::kZstd) {
        if (dctx_[ctx] == nullptr) dctx_[ctx] = ZSTD_createDCtx();
        DS_RETURN_IF_ERROR(DecodeZstd(dctx_[ctx], layout.encoded[i], {}, *target));
      } else {
        DS_RETURN_IF_ERROR(DecodeLzma2(layout.encoded[i], *target));
      }
      decoded = *target;
    }
    if (layout.zero_run[i] && i == kDiffStream) {
      DS_RETURN_IF_ERROR(ZeroRunCheck(decoded, layout.raw_len[i]));
    } else if (layout.zero_run[i]) {
      bufs_[i].resize(layout.raw_len[i]);
      DS_RETURN_IF_ERROR(ZeroRunDecode(decoded, bufs_[i]));
      decoded = bufs_[i];
    }
    *out = decoded;
    return Status::Ok();
  }

  Bytes bufs_[3], forms_[3];
  ZSTD_DCtx* dctx_[2] = {nullptr, nullptr};  // One per decoding thread.
};

// Adds the diff stream to the copies' bytes piece by piece, in order: the stream as it is, or
// its zero-run form (checked whole by ZeroRunCheck first), whose zeros are skipped.
class DiffAdder {
 public:
  explicit DiffAdder(const StreamViews& v) : data_(v.diff), form_(v.diff_form) {}

  // dst[0, n) += the next n bytes of the stream. REQUIRES: that many are left.
  void Add(uint8_t* dst, uint64_t n) {
    if (!form_) {
      AddBytes(dst, data_.data() + pos_, n);
      pos_ += n;
      return;
    }
    while (n > 0) {
      if (zeros_ == 0 && count_ == 0) NextPair();
      const uint64_t z = std::min(zeros_, n);
      dst += z;
      n -= z;
      zeros_ -= z;
      const uint64_t c = std::min(count_, n);
      AddBytes(dst, data_.data() + pos_, c);
      pos_ += c;
      dst += c;
      n -= c;
      count_ -= c;
    }
  }

 private:
  // The form was checked: a pair is there, and its bytes.
  void NextPair() {
    ByteReader r(data_.subspan(pos_));
    r.ReadVarint(&zeros_);
    r.ReadVarint(&count_);
    pos_ = data_.size() - r.remaining();
  }

  ByteView data_;
  bool form_;
  size_t pos_ = 0;                  // In data_.
  uint64_t zeros_ = 0, count_ = 0;  // Left of the current pair.
};

// Filtered blocks of the old file and their sync points, shared by the rebuilders of segments
// being rebuilt at once (neighbouring segments copy from the same old areas): a block is filtered
// once however many segments need it, while it stays among the kSlots used last. A rebuilder pins
// the few blocks it works in; a pinned slot is never refilled, so its bytes are read unlocked. The
// slots' buffers are allocated once (blocks freed and allocated by different threads would spread
// over the allocator's per-thread arenas).
class FilterCache {
 public:
  static constexpr size_t kSlots = 96;            // 64 KiB each: 6 MiB.
  static constexpr size_t kMaxSyncBlocks = 4096;  // 256 B each: 1 MiB.
  using Sync = std::shared_ptr<const std::vector<uint32_t>>;

  // The slot holding block |start| filtered by |t|, pinned; -1 when none does.
  int Find(uint64_t start, Transform t) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (s.ready && s.start == start && s.transform == t) {
        s.used = ++clock_;
        ++s.pins;
        return static_cast<int>(i);
      }
    }
    return -1;
  }
  // The least recently used unpinned slot, pinned and emptied, for the caller to fill (data())
  // and Publish. REQUIRES: fewer than kSlots pins held.
  int Claim() {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* victim = nullptr;
    for (Slot& s : slots_) {
      if (s.pins == 0 && (victim == nullptr || s.used < victim->used)) victim = &s;
    }
    victim->ready = false;
    victim->pins = 1;
    victim->used = ++clock_;
    return static_cast<int>(victim - slots_.data());
  }
  void Publish(int i, uint64_t start, Transform t) {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[i].start = start;
    slots_[i].transform = t;
    slots_[i].ready = true;
  }
  void Release(int i) {
    std::lock_guard<std::mutex> lock(mu_);
    --slots_[i].pins;
  }
  // A pinned slot's bytes.
  Bytes& data(int i) { return slots_[i].data; }

  Sync GetSync(uint64_t start, Transform t) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sync_.find(start);
    return it != sync_.end() && it->second.first == t ? it->second.second : nullptr;
  }
  void PutSync(uint64_t start, Transform t, Sync points) {
    std::lock_guard<std::mutex> lock(mu_);
    if (sync_.size() >= kMaxSyncBlocks) sync_.clear();
    sync_.insert_or_assign(start, std::make_pair(t, std::move(points)));
  }

 private:
  struct Slot {
    uint64_t start = UINT64_MAX;
    Transform transform = Transform::kNone;
    bool ready = false;
    int pins = 0;
    uint64_t used = 0;
    Bytes data;
  };
  std::mutex mu_;
  std::vector<Slot> slots_ = std::vector<Slot>(kSlots);
  uint64_t clock_ = 0;
  std::unordered_map<uint64_t, std::pair<Transform, Sync>> sync_;  // By block start.
};

// Rebuilds a segment's bytes from the old file: the old file as the segment's transform sees it
// (as it is; branch-filtered, through a small cache of filtered blocks; or a recompression
// segment's decoded old stream), a copydiff segment's streams, and its copy loop. The applier has
// one for the segment at hand and one per look-ahead slot, so that later segments are rebuilt on
// other threads; each keeps its own caches (the old source takes concurrent reads).
class SegmentRebuilder {
 public:
  // |old_regions| and |map| (the header's transform tables) must outlive the rebuilder and not
  // change while it works.
  SegmentRebuilder(const OldSource* old, const std::vector<CodeRegion>* old_regions,
                   const TargetMap* map, FilterCache* cache)
      : old_(old), old_regions_(old_regions), map_(map), reader_(old), cache_(cache) {}
  SegmentRebuilder(const SegmentRebuilder&) = delete;
  SegmentRebuilder& operator=(const SegmentRebuilder&) = delete;
  ~SegmentRebuilder() {
    for (const PinnedBlock& p : pins_) {
      if (p.slot >= 0) cache_->Release(p.slot);
    }
    ZSTD_freeDCtx(dctx_);
  }

  // Filtered blocks a rebuilder holds pinned in the shared cache at most.
  static constexpr size_t kPins = 4;

  // Parses and decodes the copydiff |payload| and rebuilds its |out.size()| bytes (still
  // transformed if |t| is a transform). |decoded_old|: the old stream's decoded form for a
  // recompression segment.
  Status CopyDiff(ByteView payload, Transform t, ByteView decoded_old, std::span<uint8_t> out) {
    CopyDiffLayout layout;
    DS_RETURN_IF_ERROR(ParseCopyDiffPayload(payload, &layout));
    DS_RETURN_IF_ERROR(CheckStreamSizes(layout, out.size()));
    StreamViews views;
    DS_RETURN_IF_ERROR(streams_.Decode(layout, &views));
    return Copies(views, t, decoded_old, out);
  }

  // Rebuilds a reference segment's |out.size()| bytes (still transformed if |t| is a transform)
  // from its |payload|: an LZMA2 or zstd stream (|method|) whose dictionary is an old window of at
  // most |max_window| bytes, read as ReadOld does.
  Status Ref(ByteView payload, Method method, Transform t, ByteView decoded_old,
             uint64_t max_window, std::span<uint8_t> out) {
    ZstdRefLayout layout;
    DS_RETURN_IF_ERROR(ParseZstdRefPayload(payload, &layout));
    const uint64_t old_size = IsRecompressTransform(t) ? decoded_old.size() : old_->size();
    uint64_t end;
    if (layout.ref_length > max_window ||
        !CheckedAddU64(layout.ref_offset, layout.ref_length, &end) || end > old_size) {
      return Error(ErrorCode::kPatchMalformed, "reference window out of range");
    }
    ref_buf_.resize(layout.ref_length);
    DS_RETURN_IF_ERROR(ReadOld(t, decoded_old, layout.ref_offset, ref_buf_));
    if (method == Method::kLzmaRef) {
      return DecodeLzmaRef(layout.frame, &ref_buf_, out.size(), out);  // Releases ref_buf_.
    }
    if (dctx_ == nullptr && (dctx_ = ZSTD_createDCtx()) == nullptr) {
      return Error(ErrorCode::kResourceLimit, "cannot start the zstd decoder");
    }
    return DecodeZstd(dctx_, layout.frame, ref_buf_, out);
  }

  // Rebuilds |out| from streams already decoded.
  Status Copies(const StreamViews& views, Transform t, ByteView decoded_old,
                std::span<uint8_t> out) {
    const ByteView ctrl = views.ctrl, lit = views.lit;
    const uint64_t diff_len = views.diff_len;
    DiffAdder diff(views);
    const uint64_t n = out.size();
    ByteReader cr(ctrl);
    uint64_t out_pos = 0, diff_pos = 0, lit_pos = 0;
    const uint64_t old_size = IsRecompressTransform(t) ? decoded_old.size() : old_->size();
    // Branch-filtered old code is read in old-file order, a batch of copies at a time: copies
    // write disjoint ranges, and in that order each filter block is filtered once per batch
    // instead of whenever the copies come back to it.
    const bool in_old_order = t == Transform::kX86Branch || t == Transform::kArm64Branch;
    batch_.clear();
    // Where the last two copies ended, in old and in this segment's output (docs/FORMAT.md).
    CopyAnchor last, before_last;
    while (!cr.empty()) {
      uint64_t where, copy_len, lit_len;
      if (!cr.ReadVarint(&where) || !cr.ReadVarint(&copy_len) || !cr.ReadVarint(&lit_len)) {
        return Error(ErrorCode::kPatchMalformed, "control stream truncated");
      }
      if (copy_len == 0 && lit_len == 0) {
        return Error(ErrorCode::kPatchMalformed, "empty control entry");
      }
      if (copy_len == 0 && where != 0) {
        return Error(ErrorCode::kPatchMalformed, "copy position without a copy");
      }
      uint64_t seg_end;
      if (copy_len > n || lit_len > n || !CheckedAddU64(out_pos, copy_len + lit_len, &seg_end) ||
          seg_end > n) {
        return Error(ErrorCode::kPatchMalformed, "control entry overruns its segment");
      }
      if (copy_len > diff_len - diff_pos || lit_len > lit.size() - lit_pos) {
        return Error(ErrorCode::kPatchMalformed, "control entry overruns a data stream");
      }
      if (copy_len > 0) {
        const int64_t base = ResolveCopyBase(where, last, before_last, out_pos);
        const int64_t delta = DecodeCopyDelta(where);
        int64_t old_pos;
        uint64_t old_end;
        if (__builtin_add_overflow(base, delta, &old_pos) || old_pos < 0 ||
            !CheckedAddU64(static_cast<uint64_t>(old_pos), copy_len, &old_end) ||
            old_end > old_size) {
          return Error(ErrorCode::kPatchMalformed, "copy reads outside the old file");
        }
        if (in_old_order) {
          batch_.push_back(PendingCopy{static_cast<uint64_t>(old_pos), out_pos, copy_len});
          if (batch_.size() == kCopyBatch) DS_RETURN_IF_ERROR(CopyBatch(t, out, diff));
        } else {
          uint8_t* dst = out.data() + out_pos;
          DS_RETURN_IF_ERROR(ReadOld(t, decoded_old, old_pos, std::span<uint8_t>(dst, copy_len)));
          diff.Add(dst, copy_len);
        }
        out_pos += copy_len;
        diff_pos += copy_len;
        before_last = last;
        last = CopyAnchor{static_cast<int64_t>(old_end), out_pos};
      }
      if (lit_len > 0) {
        std::memcpy(out.data() + out_pos, lit.data() + lit_pos, lit_len);
        out_pos += lit_len;
        lit_pos += lit_len;
      }
    }
    if (in_old_order) DS_RETURN_IF_ERROR(CopyBatch(t, out, diff));
    if (out_pos != n || diff_pos != diff_len || lit_pos != lit.size()) {
      return Error(ErrorCode::kPatchMalformed, "copydiff streams do not add up to the segment");
    }
    return Status::Ok();
  }

  // How ReadOld serves a read of branch-filtered code that no cached block holds: by the walk
  // heuristic, or as the caller knows best (whole block, or the read's own bytes when short).
  enum class ReadMode { kAuto, kWhole, kPart };

  // Reads the old file as a segment with transform |t| sees it. REQUIRES: in range.
  Status ReadOld(Transform t, ByteView decoded_old, uint64_t pos, std::span<uint8_t> out,
                 ReadMode mode = ReadMode::kAuto) {
    if (t == Transform::kNone) return reader_.Read(pos, out);
    if (IsRecompressTransform(t)) {
      if (!out.empty()) std::memcpy(out.data(), decoded_old.data() + pos, out.size());
      return Status::Ok();
    }
    // Transformed: whole filter blocks, filtered, kept in the shared cache (copies alternate
    // between a few old areas; refiltering a block on every switch is slow) and pinned here
    // while used. A short copy from elsewhere (a jump: not the block the copies walk through, nor
    // the next one, nor the last jump's) from a block nobody filtered filters only what it needs:
    // the scan from the block's last sync point before it only finds instruction boundaries
    // (fast), and only its own branches are translated.
    while (!out.empty()) {
      const uint64_t block = pos / kFilterBlockSize;
      const uint64_t start = block * kFilterBlockSize;
      int slot = Pinned(start, t);
      if (slot < 0 && (slot = cache_->Find(start, t)) >= 0) Pin(start, t, slot);
      const bool walk =
          mode == ReadMode::kAuto
              ? block == walk_block_ || block == walk_block_ + 1 || block == jump_block_
              : mode == ReadMode::kWhole;
      if (slot < 0 && !walk && out.size() < kFilterBlockSize / 4) {
        jump_block_ = block;
        const uint64_t block_end = std::min<uint64_t>(start + kFilterBlockSize, old_->size());
        const uint64_t need_end = pos + out.size();  // Inside the block: out is short.
        if (need_end <= block_end) {
          // The scan starts at the block's last sync point at least kSyncSlack bytes before.
          uint64_t from = start;
          if (pos >= start + kSyncSlack) {
            FilterCache::Sync sync;
            DS_RETURN_IF_ERROR(SyncPoints(t, start, block_end, &sync));
            from = start + (*sync)[(pos - kSyncSlack - start) / kSyncStep];
          }
          jump_buf_.resize(std::min(block_end, need_end + kFilterLookahead) - from);
          DS_RETURN_IF_ERROR(old_->ReadAt(from, jump_buf_));
          ApplyBranchFilter(t, *old_regions_, from, jump_buf_, true, map_, pos);
          std::memcpy(out.data(), jump_buf_.data() + (pos - from), out.size());
          return Status::Ok();
        }
      }
      if (walk) walk_block_ = block;
      if (slot < 0) {
        slot = cache_->Claim();
        Bytes& fresh = cache_->data(slot);
        fresh.resize(std::min<uint64_t>(kFilterBlockSize, old_->size() - start));
        if (Status read = old_->ReadAt(start, fresh); !read.ok()) {
          cache_->Release(slot);
          return read;
        }
        ApplyBranchFilter(t, *old_regions_, start, fresh, true, map_);
        cache_->Publish(slot, start, t);
        Pin(start, t, slot);
      }
      const Bytes& data = cache_->data(slot);
      const size_t off = static_cast<size_t>(pos - start);
      const size_t n = std::min<size_t>(out.size(), data.size() - off);
      std::memcpy(out.data(), data.data() + off, n);
      out = out.subspan(n);
      pos += n;
    }
    return Status::Ok();
  }

 private:
  // The sync points of the old filter block [start, end) (ScanSyncPoints), kept in the shared
  // cache for later jumps into it.
  Status SyncPoints(Transform t, uint64_t start, uint64_t end, FilterCache::Sync* out) {
    *out = cache_->GetSync(start, t);
    if (*out != nullptr) return Status::Ok();
    jump_buf_.resize(end - start);
    DS_RETURN_IF_ERROR(old_->ReadAt(start, jump_buf_));
    *out = std::make_shared<const std::vector<uint32_t>>(
        ScanSyncPoints(t, *old_regions_, start, jump_buf_));
    cache_->PutSync(start, t, *out);
    return Status::Ok();
  }

  // Makes the batched copies: the old bytes in old-file order, then the diff stream added in
  // stream order.
  Status CopyBatch(Transform t, std::span<uint8_t> out, DiffAdder& diff) {
    sorted_.assign(batch_.begin(), batch_.end());
    std::sort(sorted_.begin(), sorted_.end(),
              [](const PendingCopy& a, const PendingCopy& b) { return a.old_pos < b.old_pos; });
    // Per filter block, the copies starting in it: filtered whole when they need enough of it,
    // else each copy filters only its own bytes (from the block's nearest sync point).
    for (size_t i = 0; i < sorted_.size();) {
      const uint64_t block = sorted_[i].old_pos / kFilterBlockSize;
      size_t j = i;
      uint64_t cost = 0;
      for (; j < sorted_.size() && sorted_[j].old_pos / kFilterBlockSize == block; ++j) {
        cost += sorted_[j].len + kPartCost;
      }
      const ReadMode mode = cost >= kFilterBlockSize / 4 ? ReadMode::kWhole : ReadMode::kPart;
      for (; i < j; ++i) {
        const PendingCopy& c = sorted_[i];
        DS_RETURN_IF_ERROR(ReadOld(t, {}, c.old_pos, out.subspan(c.out_pos, c.len), mode));
      }
    }
    for (const PendingCopy& c : batch_) diff.Add(out.data() + c.out_pos, c.len);
    batch_.clear();
    return Status::Ok();
  }

  // The slots of the few blocks this rebuilder used last, held without asking the shared cache
  // (-1: none).
  int Pinned(uint64_t start, Transform t) const {
    for (const PinnedBlock& p : pins_) {
      if (p.slot >= 0 && p.start == start && p.transform == t) return p.slot;
    }
    return -1;
  }
  // Pins |slot| (already pinned for this rebuilder by Find or Claim), releasing the oldest pin.
  void Pin(uint64_t start, Transform t, int slot) {
    PinnedBlock& p = pins_[next_pin_];
    if (p.slot >= 0) cache_->Release(p.slot);
    p = PinnedBlock{start, t, slot};
    next_pin_ = (next_pin_ + 1) % pins_.size();
  }

  const OldSource* old_;
  const std::vector<CodeRegion>* old_regions_;
  const TargetMap* map_;
  OldWindowReader reader_;
  StreamDecoder streams_;
  Bytes ref_buf_;              // A reference segment's old window.
  ZSTD_DCtx* dctx_ = nullptr;  // For zstd reference segments.
  FilterCache* cache_;
  struct PinnedBlock {
    uint64_t start = UINT64_MAX;
    Transform transform = Transform::kNone;
    int slot = -1;
  };
  std::array<PinnedBlock, kPins> pins_;
  size_t next_pin_ = 0;
  // The filter block the copies walk through, and the last short jump's (see ReadOld).
  uint64_t walk_block_ = UINT64_MAX - 1, jump_block_ = UINT64_MAX;
  Bytes jump_buf_;
  // Copies of a transformed segment waiting to be made in old-file order (Copies).
  struct PendingCopy {
    uint64_t old_pos, out_pos, len;
  };
  static constexpr size_t kCopyBatch = 1 << 15;  // 768 KiB, and as much sorted.
  // What filtering a short read on its own costs beyond its bytes (the scan from a sync point).
  static constexpr uint64_t kPartCost = 768;
  std::vector<PendingCopy> batch_, sorted_;
};

}  // namespace

class PatchApplier::Impl {
 public:
  Impl(const OldSource* old, OutputSink* out, ApplyLimits limits)
      : old_(old),
        out_(out),
        limits_(limits),
        rb_(old, &header_.old_regions, &target_map_, &filter_cache_) {}
  ~Impl() {
    if (old_hash_thread_.joinable()) old_hash_thread_.join();
    AwaitNewHash();
    DropPrefetch();
  }

  Status Write(ByteView data) {
    if (!failure_.ok()) return failure_;
    Status s = Consume(data);
    DropPrefetch();  // It reads |data|, which the caller may reuse after this call.
    if (!s.ok()) {
      // A wrong base explains everything after it: it wins over a segment's error.
      Status base = AwaitOldHash();
      failure_ = base.ok() ? s : base;
    }
    return failure_;
  }

  Status Finish() {
    if (!failure_.ok()) return failure_;
    failure_ = AwaitOldHash();
    if (!failure_.ok()) return failure_;
    if (state_ != State::kDone) {
      failure_ = Error(ErrorCode::kPatchTruncated,
                       state_ == State::kFileHeader
                           ? std::string("patch ended inside its header")
                           : "patch ended in segment " + std::to_string(segments_done_ + 1) +
                                 " of " + std::to_string(header_.segment_count));
      return failure_;
    }
    AwaitNewHash();
    if (output_bytes_ != header_.new_size || (!resumed_ && sha_.Finish() != header_.new_sha256)) {
      failure_ = Error(ErrorCode::kPatchResultMismatch, "rebuilt file does not match its SHA-256");
      return failure_;
    }
    state_ = State::kFinished;
    return Status::Ok();
  }

  bool header_parsed() const { return state_ != State::kFileHeader; }
  const FileHeader& header() const { return header_; }
  uint64_t header_size() const { return header_len_; }
  void SetCheckpointCallback(std::function<Status(const ApplyCheckpoint&)> fn) {
    checkpoint_ = std::move(fn);
  }
  Status ResumeAt(const ApplyCheckpoint& cp) {
    if (!failure_.ok()) return failure_;
    if (state_ != State::kSegmentHeader || !head_.empty() || segments_done_ != 0 ||
        patch_offset_ != header_len_) {
      return Error(ErrorCode::kInvalidArgument, "resume right after the patch header only");
    }
    if (cp.segments_done == 0 || cp.segments_done >= header_.segment_count ||
        cp.output_bytes == 0 || cp.output_bytes >= header_.new_size ||
        cp.patch_offset <= header_len_) {
      return Error(ErrorCode::kInvalidArgument, "checkpoint does not fit this patch");
    }
    segments_done_ = cp.segments_done;
    output_bytes_ = cp.output_bytes;
    patch_offset_ = cp.patch_offset;
    resumed_ = true;
    return Status::Ok();
  }
  uint64_t segments_done() const { return segments_done_; }
  uint64_t output_bytes() const { return output_bytes_; }

 private:
  enum class State { kFileHeader, kSegmentHeader, kPayload, kDone, kFinished };

  Status Consume(ByteView data) {
    while (!data.empty()) {
      switch (state_) {
        case State::kFileHeader:
        case State::kSegmentHeader: {
          const size_t limit = (state_ == State::kFileHeader
                                    ? kFileHeaderPrefixLen + kMaxFileHeaderLen + kMaxTablesLen
                                    : 10 + kMaxSegmentHeaderLen + 4);
          const size_t before = head_.size();
          // Header bytes go in small steps: a header with transform tables may be long, and the
          // bytes after it are not to be copied here.
          const size_t take = std::min({data.size(), limit - before, size_t{64} << 10});
          head_.insert(head_.end(), data.begin(), data.begin() + take);
          size_t consumed = 0;
          if (state_ == State::kFileHeader) {
            DS_RETURN_IF_ERROR(ParseFileHeader(head_, &header_, &consumed));
            if (consumed > 0) header_len_ = consumed;
            if (consumed > 0) DS_RETURN_IF_ERROR(StartPatch());
          } else {
            DS_RETURN_IF_ERROR(
                ParseSegmentHeader(head_, &seg_, &consumed, &seg_crc_, &seg_stored_crc_));
            if (consumed > 0) DS_RETURN_IF_ERROR(StartSegment());
          }
          if (consumed == 0) {
            if (head_.size() >= limit) return Error(ErrorCode::kInternal, "header not parsed");
            data = data.subspan(take);
            patch_offset_ += take;
            continue;
          }
          // The bytes buffered before this call were not enough, so consumed > before.
          data = data.subspan(consumed - before);
          patch_offset_ += consumed - before;
          head_.clear();
          if (head_.capacity() > (64u << 10)) head_.shrink_to_fit();
          break;
        }
        case State::kPayload: {
          const size_t take =
              std::min<uint64_t>(data.size(), seg_.payload_length - payload_.size());
          payload_.insert(payload_.end(), data.begin(), data.begin() + take);
          data = data.subspan(take);
          patch_offset_ += take;
          if (payload_.size() == seg_.payload_length) {
            TakePrefetch(PayloadStart());
            StartPrefetch(data, patch_offset_);
            DS_RETURN_IF_ERROR(FinishSegment());
            if (checkpoint_ && state_ == State::kSegmentHeader) {
              DS_RETURN_IF_ERROR(checkpoint_({patch_offset_, segments_done_, output_bytes_}));
            }
          }
          break;
        }
        case State::kDone:
        case State::kFinished:
          return Error(ErrorCode::kPatchTrailingData, "bytes after the last segment");
      }
    }
    return Status::Ok();
  }

  Status StartPatch() {
    target_map_ = TargetMap(header_.old_regions, header_.new_regions, header_.address_map);
    if (header_.old_size != old_->size()) {
      return Error(ErrorCode::kPatchWrongBase, "old file is " + std::to_string(old_->size()) +
                                                   " bytes, patch expects " +
                                                   std::to_string(header_.old_size));
    }
    if (header_.max_segment_output > limits_.max_segment_output ||
        header_.max_segment_payload > limits_.max_segment_payload ||
        header_.max_ref_window > limits_.max_ref_window ||
        header_.max_decoded > limits_.max_decoded ||
        header_.max_encoder_memory > limits_.max_encoder_memory) {
      return Error(ErrorCode::kResourceLimit, "patch needs more memory per segment than allowed");
    }
    if (limits_.verify_old_hash) {
      old_hash_pending_ = true;
      if (old_->concurrent_reads() && old_->size() >= kBackgroundHashMin) {
        // Hashed beside the first segment's work; nothing reaches the sink before it is checked.
        old_hash_thread_ = std::thread([this] { old_hash_status_ = HashOld(&old_digest_); });
      } else {
        old_hash_status_ = HashOld(&old_digest_);
        DS_RETURN_IF_ERROR(AwaitOldHash());
      }
    }
    state_ = header_.segment_count == 0 ? State::kDone : State::kSegmentHeader;
    return Status::Ok();
  }

  Status HashOld(Sha256Digest* digest) const {
    Sha256 h;
    Bytes buf(std::min<uint64_t>(kHashChunkSize, old_->size()));
    for (uint64_t pos = 0; pos < old_->size(); pos += buf.size()) {
      const size_t n = std::min<uint64_t>(buf.size(), old_->size() - pos);
      DS_RETURN_IF_ERROR(old_->ReadAt(pos, std::span<uint8_t>(buf.data(), n)));
      h.Update(ByteView(buf.data(), n));
    }
    *digest = h.Finish();
    return Status::Ok();
  }

  // Adds output_ to the new file's SHA-256: large segments on a second thread while the next one
  // is rebuilt (output_ is handed over; sha_ is only touched by one thread at a time).
  void HashNew() {
    AwaitNewHash();
    if (output_.size() < kBackgroundHashMin) {
      sha_.Update(output_);
      return;
    }
    std::swap(output_, hashing_);
    new_hash_thread_ = std::thread([this] { sha_.Update(hashing_); });
  }
  void AwaitNewHash() {
    if (new_hash_thread_.joinable()) new_hash_thread_.join();
  }

  // The old file's hash check, once: waits for the background hash if there is one.
  Status AwaitOldHash() {
    if (!old_hash_pending_) return Status::Ok();
    if (old_hash_thread_.joinable()) old_hash_thread_.join();
    old_hash_pending_ = false;
    DS_RETURN_IF_ERROR(old_hash_status_);
    if (old_digest_ != header_.old_sha256) {
      return Error(ErrorCode::kPatchWrongBase, "old file's SHA-256 differs from the patch's base");
    }
    return Status::Ok();
  }

  Status StartSegment() {
    const uint64_t index = segments_done_ + 1;
    const std::string where = "segment " + std::to_string(index);
    if (seg_.new_offset != output_bytes_) {
      return Error(ErrorCode::kPatchSegmentOrder,
                   where + " starts at " + std::to_string(seg_.new_offset) + ", expected " +
                       std::to_string(output_bytes_));
    }
    if (seg_.new_length == 0 || seg_.new_length > header_.max_segment_output) {
      return Error(ErrorCode::kPatchMalformed,
                   where + " has length " + std::to_string(seg_.new_length));
    }
    uint64_t end;
    if (!CheckedAddU64(seg_.new_offset, seg_.new_length, &end) || end > header_.new_size) {
      return Error(ErrorCode::kPatchSegmentOrder, where + " runs past the end of the result");
    }
    const bool last = index == header_.segment_count;
    if (last != (end == header_.new_size)) {
      return Error(ErrorCode::kPatchSegmentOrder,
                   where + (last ? " is last but the result is incomplete"
                                 : " completes the result but more segments are declared"));
    }
    if ((seg_.transform == Transform::kX86Branch || seg_.transform == Transform::kArm64Branch) &&
        !(header_.flags & kFlagCodeRegions)) {
      return Error(ErrorCode::kPatchMalformed, where + " has a transform but the patch no tables");
    }
    if (IsRecompressTransform(seg_.transform)) {
      DS_RETURN_IF_ERROR(CheckRecompressSegment(where));
    }
    if (seg_.payload_length > header_.max_segment_payload) {
      return Error(ErrorCode::kPatchMalformed, where + " payload exceeds the declared maximum");
    }
    payload_.clear();
    payload_.reserve(seg_.payload_length);
    state_ = State::kPayload;
    if (seg_.payload_length == 0) return FinishSegment();
    return Status::Ok();
  }

  Status FinishSegment() {
    const std::string where = "segment " + std::to_string(segments_done_ + 1);
    if (Crc32c(payload_, seg_crc_) != seg_stored_crc_) {
      return Error(ErrorCode::kPatchChecksum, where + " checksum mismatch");
    }
    const bool recompress = IsRecompressTransform(seg_.transform);
    if (ready_offset_ == PayloadStart() && !recompress && ready_out_.size() == seg_.new_length) {
      std::swap(output_, ready_out_);  // Rebuilt (and unfiltered) ahead, on another thread.
      ready_offset_ = kNoPrefetch;
    } else {
      DS_RETURN_IF_ERROR(RebuildSegment(where, recompress));
    }
    if (Crc32c(output_) != seg_.output_crc32c) {
      return Error(ErrorCode::kPatchOutputMismatch, where + " rebuilt bytes fail their checksum");
    }
    DS_RETURN_IF_ERROR(AwaitOldHash());
    DS_RETURN_IF_ERROR(out_->Write(output_));
    HashNew();
    output_bytes_ += seg_.new_length;
    ++segments_done_;
    state_ = segments_done_ == header_.segment_count ? State::kDone : State::kSegmentHeader;
    return Status::Ok();
  }

  // The current segment's bytes into output_, by its method and transform.
  Status RebuildSegment(const std::string& where, bool recompress) {
    ready_offset_ = kNoPrefetch;
    if (recompress) DS_RETURN_IF_ERROR(LoadOldDecoded().WithContext(where));
    // A recompression segment's method produces the new decoded form; any other the new bytes.
    const uint64_t method_length = recompress ? seg_.decoded_length : seg_.new_length;
    output_.resize(method_length);
    Status s;
    switch (seg_.method) {
      case Method::kStored:
        if (payload_.size() != method_length) {
          s = Error(ErrorCode::kPatchMalformed, "stored payload length differs from its range");
        } else {
          std::memcpy(output_.data(), payload_.data(), payload_.size());
        }
        break;
      case Method::kCopyDiff:
        s = rb_.CopyDiff(payload_, seg_.transform, old_decoded_, output_);
        break;
      case Method::kZstdRef:
      case Method::kLzmaRef:
        s = DecodeRef();
        break;
    }
    if (!s.ok()) return s.WithContext(where);
    // The method rebuilt the transformed bytes; undo the transform (docs/FORMAT.md).
    if (recompress) {
      Result<Bytes> stream = seg_.transform == Transform::kDeflate ? Huff(output_)
                             : seg_.transform == Transform::kXzReplay
                                 ? XzFromReplayForm(output_)
                                 : XzEncode(output_, SegmentXzParams());
      if (!stream.ok()) {
        return stream.status().WithContext(
            where + (seg_.transform == Transform::kDeflate    ? " (new puff)"
                     : seg_.transform == Transform::kXzReplay ? " (new xz replay form)"
                                                              : " (xz re-encoding)"));
      }
      if (stream->size() != seg_.new_length) {
        return Error(ErrorCode::kPatchOutputMismatch,
                     where + " re-encodes to " + std::to_string(stream->size()) +
                         " bytes, expected " + std::to_string(seg_.new_length));
      }
      output_ = std::move(stream).value();
    } else {
      Unfilter(seg_.transform, header_.new_regions, seg_.new_offset, output_);
    }
    return Status::Ok();
  }

  // Undoes branch transform |t| on |out|, the new bytes from |start| on. Filter blocks are
  // independent (the scan restarts at each), so a large segment is split at a block boundary and
  // done on two threads.
  static void Unfilter(Transform t, const std::vector<CodeRegion>& regions, uint64_t start,
                       std::span<uint8_t> out) {
    if (t != Transform::kX86Branch && t != Transform::kArm64Branch) return;
    const uint64_t mid = (start + out.size() / 2) / kFilterBlockSize * kFilterBlockSize;
    if (out.size() < kParallelUnfilterMin || mid <= start) {
      ApplyBranchFilter(t, regions, start, out, false);
      return;
    }
    std::thread th([&] { ApplyBranchFilter(t, regions, start, out.first(mid - start), false); });
    ApplyBranchFilter(t, regions, mid, out.subspan(mid - start), false);
    th.join();
  }

  // Patch offset of the current segment's payload. REQUIRES: the payload is complete.
  uint64_t PayloadStart() const { return patch_offset_ - payload_.size(); }

  // Starts rebuilding the next kPrefetchDepth segments after the current one, each on a thread of
  // its own, when |rest| (the caller's bytes from patch offset |rest_offset| on) holds them whole:
  // a patch read from a file arrives in 4 MiB pieces, so later segments' streams are decoded (LZMA2
  // is most of a plain apply's time), their copies made from the old file (filtering it is most of
  // a transformed one's) and their transform undone while this one is finished, and both cores
  // stay busy. Copydiff and reference segments, when the old file takes concurrent reads; not
  // recompression segments, and no more than ApplyLimits::lookahead_memory in all. A segment that
  // fails ahead is rebuilt again by the main path, which reports the failure as if nothing had
  // been rebuilt ahead.
  void StartPrefetch(ByteView rest, uint64_t rest_offset) {
    if (!old_->concurrent_reads()) return;
    size_t pos = 0;
    for (size_t ahead = 0; ahead < kPrefetchDepth; ++ahead) {
      SegmentHeader h;
      size_t consumed = 0;
      uint32_t crc = 0, stored = 0;
      const ByteView at = rest.subspan(pos);
      if (!ParseSegmentHeader(at, &h, &consumed, &crc, &stored).ok() || consumed == 0) return;
      if (h.payload_length > header_.max_segment_payload ||
          h.payload_length > at.size() - consumed) {
        return;
      }
      const uint64_t payload_offset = rest_offset + pos + consumed;
      const ByteView payload = at.subspan(consumed, h.payload_length);
      pos += consumed + h.payload_length;
      const uint64_t memory = PrefetchMemory(h, payload);
      if (memory == 0) continue;
      Prefetch* free_slot = nullptr;
      bool started = false;
      uint64_t in_flight = 0;
      for (Prefetch& pf : pf_) {
        if (pf.payload_offset == payload_offset) started = true;
        if (pf.payload_offset == kNoPrefetch && free_slot == nullptr) free_slot = &pf;
        if (pf.payload_offset != kNoPrefetch) in_flight += pf.memory;
      }
      if (started) continue;
      if (free_slot == nullptr || in_flight + memory > limits_.lookahead_memory) return;
      if (Crc32c(payload, crc) != stored) continue;
      Prefetch& pf = *free_slot;
      pf.payload_offset = payload_offset;
      pf.memory = memory;
      if (pf.rb == nullptr) {
        pf.rb = std::make_unique<SegmentRebuilder>(old_, &header_.old_regions, &target_map_,
                                                   &filter_cache_);
      }
      pf.thread = std::thread([this, &pf, payload, h] {
        pf.out.resize(h.new_length);
        pf.status =
            h.method == Method::kCopyDiff
                ? pf.rb->CopyDiff(payload, h.transform, {}, pf.out)
                : pf.rb->Ref(payload, h.method, h.transform, {}, header_.max_ref_window, pf.out);
        if (pf.status.ok()) Unfilter(h.transform, header_.new_regions, h.new_offset, pf.out);
      });
    }
  }

  // The memory a look-ahead of the segment with header |h| and |payload| holds (0: not rebuilt
  // ahead): its streams and output, the filtered blocks it pins for a transformed one; the
  // reference, the output and LZMA2's dictionary holding both for a reference segment.
  uint64_t PrefetchMemory(const SegmentHeader& h, ByteView payload) const {
    if (h.new_length == 0 || h.new_length > header_.max_segment_output ||
        IsRecompressTransform(h.transform)) {
      return 0;
    }
    const bool branch =
        h.transform == Transform::kX86Branch || h.transform == Transform::kArm64Branch;
    if (branch && !(header_.flags & kFlagCodeRegions)) return 0;
    const uint64_t filter_cache = branch ? 4 * kFilterBlockSize : 0;  // Its pins.
    if (h.method == Method::kCopyDiff) {
      // The output, and each decoded stream (and LZMA2's dictionary while it decodes; a zero-run
      // form is expanded but for the diff stream's). A hostile stream table that claims huge
      // streams is left to the main path, which refuses it or decodes it alone.
      CopyDiffLayout layout;
      if (h.new_length > kPrefetchMaxOutput || !ParseCopyDiffPayload(payload, &layout).ok() ||
          !CheckStreamSizes(layout, h.new_length).ok()) {
        return 0;
      }
      uint64_t m = h.new_length + filter_cache;
      for (int i = 0; i < 3; ++i) {
        const uint64_t decoded = layout.zero_run[i] ? layout.form_len[i] : layout.raw_len[i];
        if (layout.codec[i] != StreamCodec::kStored) {
          m += decoded * (layout.codec[i] == StreamCodec::kLzma2 ? 2 : 1);
        }
        if (layout.zero_run[i] && i != kDiffStream) m += layout.raw_len[i];
      }
      return m;
    }
    if (h.method != Method::kLzmaRef && h.method != Method::kZstdRef) return 0;
    ZstdRefLayout layout;
    if (!ParseZstdRefPayload(payload, &layout).ok() || layout.ref_length > header_.max_ref_window) {
      return 0;
    }
    return filter_cache +
           (h.method == Method::kZstdRef
                ? layout.ref_length + h.new_length
                : layout.ref_length + LzmaRefDictSize(layout.ref_length, h.new_length) +
                      h.new_length);
  }

  // Hands the output rebuilt ahead for the payload at |payload_start| to FinishSegment; look-
  // aheads of earlier payloads (none, unless a segment failed) are dropped, later ones run on.
  void TakePrefetch(uint64_t payload_start) {
    for (Prefetch& pf : pf_) {
      if (pf.payload_offset == kNoPrefetch || pf.payload_offset > payload_start) continue;
      pf.thread.join();
      if (pf.payload_offset == payload_start && pf.status.ok()) {
        std::swap(ready_out_, pf.out);
        ready_offset_ = payload_start;
      }
      pf.payload_offset = kNoPrefetch;
    }
  }

  void DropPrefetch() {
    for (Prefetch& pf : pf_) {
      if (pf.thread.joinable()) pf.thread.join();
      pf.payload_offset = kNoPrefetch;
    }
    ready_offset_ = kNoPrefetch;
  }

  Status DecodeRef() {
    const uint64_t max_window =
        IsRecompressTransform(seg_.transform) ? header_.max_decoded : header_.max_ref_window;
    return rb_.Ref(payload_, seg_.method, seg_.transform, old_decoded_, max_window, output_);
  }

  XzParams SegmentXzParams() const {
    return XzParams{seg_.xz_preset, seg_.xz_check, seg_.xz_block_size};
  }

  // The fields of a recompression segment, checked against the header and the old file.
  Status CheckRecompressSegment(const std::string& where) const {
    if (!(header_.flags & kFlagRecompress)) {
      return Error(ErrorCode::kPatchMalformed,
                   where + " recompresses but the patch lacks the recompress flag");
    }
    uint64_t end;
    if (seg_.old_length == 0 || !CheckedAddU64(seg_.old_offset, seg_.old_length, &end) ||
        end > old_->size()) {
      return Error(ErrorCode::kPatchMalformed, where + " names an old stream outside the old file");
    }
    if (seg_.decoded_length == 0 || seg_.decoded_length > header_.max_decoded ||
        seg_.old_decoded_length == 0 || seg_.old_decoded_length > header_.max_decoded) {
      return Error(ErrorCode::kPatchMalformed,
                   where + " decoded lengths exceed the declared maximum");
    }
    if (seg_.transform == Transform::kXz) {
      DS_RETURN_IF_ERROR(ValidateXzParams(SegmentXzParams()).WithContext(where));
      // The header declares what the encoder needs, so that an applier can refuse up front.
      if (XzEncoderMemory(SegmentXzParams(), seg_.decoded_length) > header_.max_encoder_memory) {
        return Error(ErrorCode::kPatchMalformed,
                     where + " needs more encoder memory than the header declares");
      }
    }
    return Status::Ok();
  }

  // Decodes the old stream of the current segment (puff or xz content) into old_decoded_ (kept
  // for the next segment that names the same stream the same way).
  Status LoadOldDecoded() {
    if (old_decoded_valid_ && old_decoded_offset_ == seg_.old_offset &&
        old_decoded_stream_length_ == seg_.old_length && old_decoded_kind_ == seg_.transform) {
      return Status::Ok();
    }
    old_decoded_valid_ = false;
    Bytes stream(seg_.old_length);
    DS_RETURN_IF_ERROR(old_->ReadAt(seg_.old_offset, stream));
    Status bad;
    if (seg_.transform == Transform::kDeflate) {
      PuffLimits limits;
      limits.max_puff = seg_.old_decoded_length;
      Result<Puffed> p = Puff(stream, limits);
      if (!p.ok()) {
        bad = p.status();
      } else if (p->deflate_size != seg_.old_length || p->puff.size() != seg_.old_decoded_length) {
        bad = Error(ErrorCode::kPatchMalformed, "lengths differ");
      } else {
        old_decoded_ = std::move(p->puff);
      }
    } else if (seg_.transform == Transform::kXzReplay) {
      Result<ReplayForm> f = XzToReplayForm(stream, seg_.old_decoded_length);
      if (!f.ok()) {
        bad = f.status();
      } else if (f->stream_size != seg_.old_length || f->form.size() != seg_.old_decoded_length) {
        bad = Error(ErrorCode::kPatchMalformed, "lengths differ");
      } else {
        old_decoded_ = std::move(f->form);
      }
    } else {
      uint64_t consumed = 0;
      Result<Bytes> c = XzDecode(stream, seg_.old_decoded_length, &consumed);
      if (!c.ok()) {
        bad = c.status();
      } else if (consumed != seg_.old_length || c->size() != seg_.old_decoded_length) {
        bad = Error(ErrorCode::kPatchMalformed, "lengths differ");
      } else {
        old_decoded_ = std::move(c).value();
      }
    }
    if (!bad.ok()) {
      return Error(ErrorCode::kPatchMalformed, "old[" + std::to_string(seg_.old_offset) + ", +" +
                                                   std::to_string(seg_.old_length) +
                                                   ") is not the " + TransformName(seg_.transform) +
                                                   " stream the patch describes: " + bad.message());
    }
    old_decoded_offset_ = seg_.old_offset;
    old_decoded_stream_length_ = seg_.old_length;
    old_decoded_kind_ = seg_.transform;
    old_decoded_valid_ = true;
    return Status::Ok();
  }

  const OldSource* old_;
  OutputSink* out_;
  ApplyLimits limits_;

  State state_ = State::kFileHeader;
  Status failure_;
  FileHeader header_;
  SegmentHeader seg_;
  uint32_t seg_crc_ = 0, seg_stored_crc_ = 0;
  Bytes head_, payload_, output_;
  TargetMap target_map_;      // From the header's transform tables.
  FilterCache filter_cache_;  // Shared by rb_ and the look-ahead's rebuilders.
  SegmentRebuilder rb_;       // For the segment at hand when it was not rebuilt ahead.
  // Later segments rebuilt ahead (StartPrefetch), and the payload offset of the segment whose
  // output ready_out_ already holds (TakePrefetch).
  static constexpr uint64_t kNoPrefetch = UINT64_MAX;
  static constexpr uint64_t kPrefetchMaxOutput = 4 << 20;
  static constexpr size_t kPrefetchDepth = 2;
  struct Prefetch {
    uint64_t payload_offset = kNoPrefetch;  // Patch offset of the segment's payload.
    uint64_t memory = 0;                    // What it holds (PrefetchMemory).
    Status status;
    std::unique_ptr<SegmentRebuilder> rb;  // Its own caches, kept for its next segment.
    Bytes out;                             // The segment's bytes, transform undone.
    std::thread thread;
  };
  std::array<Prefetch, kPrefetchDepth> pf_;
  // FilterCache::Claim needs an unpinned slot whatever the rebuilders (rb_ and pf_) hold.
  static_assert(FilterCache::kSlots > SegmentRebuilder::kPins * (kPrefetchDepth + 1));
  uint64_t ready_offset_ = kNoPrefetch;
  Bytes ready_out_;  // The output of the segment at ready_offset_, rebuilt ahead.
  static constexpr size_t kParallelUnfilterMin = 512 << 10;
  // Recompression segments: the decoded form of the old stream last named.
  Bytes old_decoded_;
  uint64_t old_decoded_offset_ = 0, old_decoded_stream_length_ = 0;
  Transform old_decoded_kind_ = Transform::kNone;
  bool old_decoded_valid_ = false;
  uint64_t segments_done_ = 0;
  uint64_t output_bytes_ = 0;
  uint64_t patch_offset_ = 0;  // Patch bytes consumed.
  uint64_t header_len_ = 0;
  bool resumed_ = false;  // Started from a checkpoint: the output hash is the caller's.
  std::function<Status(const ApplyCheckpoint&)> checkpoint_;
  Sha256 sha_;
  Bytes hashing_;  // A segment's output being hashed on new_hash_thread_.
  std::thread new_hash_thread_;
  // The old file's hash check (ApplyLimits::verify_old_hash), possibly on a second thread.
  static constexpr uint64_t kBackgroundHashMin = 1 << 20;
  bool old_hash_pending_ = false;
  std::thread old_hash_thread_;
  Status old_hash_status_;
  Sha256Digest old_digest_{};
};

PatchApplier::PatchApplier(const OldSource* old, OutputSink* out, ApplyLimits limits)
    : impl_(std::make_unique<Impl>(old, out, limits)) {}
PatchApplier::~PatchApplier() = default;
Status PatchApplier::Write(ByteView data) { return impl_->Write(data); }
Status PatchApplier::Finish() { return impl_->Finish(); }
bool PatchApplier::header_parsed() const { return impl_->header_parsed(); }
uint64_t PatchApplier::header_size() const { return impl_->header_size(); }
void PatchApplier::SetCheckpointCallback(std::function<Status(const ApplyCheckpoint&)> fn) {
  impl_->SetCheckpointCallback(std::move(fn));
}
Status PatchApplier::ResumeAt(const ApplyCheckpoint& cp) { return impl_->ResumeAt(cp); }
const FileHeader& PatchApplier::header() const { return impl_->header(); }
uint64_t PatchApplier::segments_done() const { return impl_->segments_done(); }
uint64_t PatchApplier::output_bytes() const { return impl_->output_bytes(); }

Result<Bytes> ApplyPatch(ByteView old, ByteView patch, const ApplyLimits& limits) {
  if (DetectPatchFormat(patch) == PatchFormat::kVcdiff) return ApplyVcdiff(old, patch, limits);
  MemoryOldSource src(old);
  VectorSink sink;
  PatchApplier applier(&src, &sink, limits);
  DS_RETURN_IF_ERROR(applier.Write(patch));
  DS_RETURN_IF_ERROR(applier.Finish());
  return std::move(sink.bytes);
}

namespace {

class AtomicFileSink : public OutputSink {
 public:
  explicit AtomicFileSink(AtomicFileWriter* w) : w_(w) {}
  Status Write(ByteView data) override { return w_->Append(data); }
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) override {
    return w_->ReadBack(offset, out);
  }

 private:
  AtomicFileWriter* w_;
};

// Feeds |file| to |write| in pieces of at most 1 MiB.
template <typename WriteFn>
// Pieces of 4 MiB: the applier rebuilds later segments ahead when a piece holds them whole.
Status StreamFile(const RandomAccessFile& file, WriteFn write) {
  Bytes buf(std::min<uint64_t>(4 << 20, std::max<uint64_t>(file.size(), 1)));
  for (uint64_t pos = 0; pos < file.size(); pos += buf.size()) {
    const size_t n = std::min<uint64_t>(buf.size(), file.size() - pos);
    std::span<uint8_t> chunk(buf.data(), n);
    DS_RETURN_IF_ERROR(file.ReadAt(pos, chunk));
    DS_RETURN_IF_ERROR(write(ByteView(chunk)));
  }
  return Status::Ok();
}

}  // namespace

Status ApplyPatchFile(const std::string& old_path, const std::string& patch_path,
                      const std::string& out_path, const ApplyLimits& limits) {
  DS_ASSIGN_OR_RETURN(auto old_file, RandomAccessFile::Open(old_path));
  DS_ASSIGN_OR_RETURN(auto patch_file, RandomAccessFile::Open(patch_path));
  DS_ASSIGN_OR_RETURN(mode_t mode, FileMode(old_path));
  DS_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Create(out_path, mode));
  FileOldSource src(old_file.get());
  AtomicFileSink sink(writer.get());
  uint8_t magic[4] = {};
  const size_t magic_len = std::min<uint64_t>(sizeof(magic), patch_file->size());
  DS_RETURN_IF_ERROR(patch_file->ReadAt(0, std::span<uint8_t>(magic, magic_len)));
  if (DetectPatchFormat(ByteView(magic, magic_len)) == PatchFormat::kVcdiff) {
    // No whole-file hash: each window's Adler-32 (when the encoder wrote one) is the check.
    VcdiffApplier applier(&src, &sink, limits);
    DS_RETURN_IF_ERROR(
        StreamFile(*patch_file, [&](ByteView chunk) { return applier.Write(chunk); }));
    DS_RETURN_IF_ERROR(applier.Finish());
    return writer->Commit();
  }
  PatchApplier applier(&src, &sink, limits);
  DS_RETURN_IF_ERROR(StreamFile(*patch_file, [&](ByteView chunk) { return applier.Write(chunk); }));
  DS_RETURN_IF_ERROR(applier.Finish());
  return writer->Commit();
}

}  // namespace ds::delta
